"""outbox/latest/<channel>.<ext>: always the newest delivered loop of its channel, replaced by one
rename, so a reader that opens it at any moment gets a whole file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from daemon_util import SMALL, Daemon, drop, image_bytes, jobs, make_root, outbox_jobs, wait_for, write_atomic

from fploopd.media import write_mp4

# Opens the slot again and again until told to stop, and writes down the SHA-256 of every whole
# read: each one must be a loop the daemon delivered, never a part of one.
READER = """
import hashlib, json, sys, time
from pathlib import Path
slot, stop, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
seen = []
while not stop.exists():
    try:
        with open(slot, "rb") as f:
            seen.append(hashlib.sha256(f.read()).hexdigest())
    except FileNotFoundError:
        pass  # before the first delivery
    time.sleep(0.002)  # hundreds of opens a second, without taking a core from the daemon
out.write_text(json.dumps(seen))
"""


def _done(root: Path, names: set[str]) -> bool:
    return {j["name"] for j in jobs(root) if j["state"] == "done" and j["delivered_at"]} >= names


def test_a_reader_of_the_slot_never_sees_a_partial_file(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    slot, stop, seen = root / "outbox" / "latest" / "loop.mp4", tmp_path / "stop", tmp_path / "seen.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(slot), str(stop), str(seen)])
    daemon = Daemon(root)
    names = [f"clip{i}" for i in range(3)]
    try:
        for i, name in enumerate(names):  # one after the other, so the slot is replaced under the reader
            drop(root, name, {"prompt": "", **SMALL, "seed": i}, media=image_bytes(i))
            wait_for(lambda n=name: _done(root, {n}), 150, f"{name} delivered")
    finally:
        stop.touch()
        assert reader.wait(timeout=60) == 0
        assert daemon.stop() == 0, daemon.output()[-3000:]

    delivered = {
        hashlib.sha256((root / "outbox" / n / f"{n}_{i}_1loop.mp4").read_bytes()).hexdigest(): n for i, n in enumerate(names)
    }
    reads = json.loads(seen.read_text())
    assert reads and set(reads) <= set(delivered), "the reader saw a file that is no delivered loop"
    assert len(set(reads)) >= 2  # it did read across replacements
    assert delivered[hashlib.sha256(slot.read_bytes()).hexdigest()] == names[-1]
    assert [p.name for p in slot.parent.iterdir()] == ["loop.mp4"]  # no temporary file left behind


def drop_connect(root: Path, stem: str, sidecar: dict) -> None:
    """Two short videos (a head and a tail), then the sidecar, into inbox/connect/."""
    folder = root / "inbox" / "connect"
    for part, shade in (("head", 60), ("tail", 180)):
        frames = np.full((24, 64, 96, 3), shade, np.uint8)
        frames[:, 10:40, 20 : 50 + shade // 10] = 255 - shade
        write_mp4(folder / f".{stem}_{part}.tmp.mp4", frames, 30)
        (folder / f".{stem}_{part}.tmp.mp4").rename(folder / f"{stem}_{part}.mp4")
    write_atomic(folder / f"{stem}.json", json.dumps(sidecar).encode())


def test_channels_kinds_connect_and_a_job_called_latest(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    drop(root, "latest", {"prompt": "", **SMALL, "seed": 5, "channel": "stream", "outputs": ["mp4", "webp"]}, media=image_bytes(3))
    daemon = Daemon(root)
    try:
        wait_for(lambda: _done(root, {"latest-2"}), 150, "the job delivered")
        drop(root, "still", {"prompt": "", **SMALL, "seed": 6, "decode": False}, media=image_bytes(4))  # latents only
        drop_connect(root, "join", {"prompt": "", "resolution": 128, "window": 2, "steps": 2, "seed": 8})
        wait_for(lambda: _done(root, {"still", "join"}), 150, "the latent-only and the connect job delivered")
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    assert outbox_jobs(root) == ["join", "latest-2", "still"]  # outbox/latest/ is the slots' folder, never a job's
    job = root / "outbox" / "latest-2"
    latest = root / "outbox" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["connect.mp4", "stream.mp4", "stream.webp"]  # none for latents
    assert (latest / "stream.mp4").read_bytes() == (job / "latest-2_5_1loop.mp4").read_bytes()
    assert (latest / "stream.webp").read_bytes() == (job / "latest-2_5_1loop.webp").read_bytes()
    assert (latest / "connect.mp4").read_bytes() == (root / "outbox" / "join" / "join_8_connect.mp4").read_bytes()
