"""Fuzzing the intake path (issue 10): any file names (bytes), any sidecar bytes, real files in a
real root. The property: ``Intake.scan`` never raises, every sidecar ends up ready (to claim, or
rejected) or waiting with a reason, ``Intake.claim`` never raises, and every job name is valid
UTF-8 that fits the names derived from it. Bounded and derandomized: the same examples each run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fploopd.daemon import deliver
from fploopd.daemon.intake import Intake
from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout, is_temporary_name
from fploopd.daemon.names import MAX_STEM_BYTES, display
from fploopd.daemon.rootinit import init_root
from fploopd.daemon.settings import Settings
from fploopd.spec import JobSpec

FOLDERS = ("inbox", "inbox/loop", "inbox/connect", "inbox/video2loop")
KEYS = [*JobSpec.model_fields, "promt", "x"]

# Stems: arbitrary bytes (mostly not UTF-8), or text with odd characters; up to what a file name holds.
_stem_bytes = st.binary(min_size=1, max_size=250)
_stem_text = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=80).map(
    lambda s: s.encode("utf-8")[:250]
)
stems = st.one_of(_stem_bytes, _stem_text).filter(lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b".."))

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_json_value = st.recursive(
    _json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12
)
_sidecar_object = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), _json_value, max_size=6)
_hostile_text = st.sampled_from(
    [
        b"[" * 3000 + b"]" * 3000,
        b'{"prompt": "", "seed": ' + b"9" * 5000 + b"}",
        b'{"prompt": NaN}',
        b'{"prompt": "\\ud800"}',
        b'{"prompt": "a\\u0000b"}',
        b"\xef\xbb\xbf{}",
        b"",
    ]
)
sidecar_bytes = st.one_of(
    st.binary(max_size=300),
    _hostile_text,
    _sidecar_object.map(lambda o: json.dumps(o, allow_nan=True).encode()),
    _sidecar_object.map(lambda o: json.dumps({"prompt": "p", **o}).encode()),
)
drops = st.lists(
    st.tuples(st.sampled_from(FOLDERS), stems, sidecar_bytes, st.sampled_from(["none", "png", "fifo", "folder"])),
    min_size=1,
    max_size=3,
)


# fsync is what takes time here (the journal, durable renames), and the property is not about
# durability: use a memory file system where there is one.
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def make(path: bytes, kind: str, data: bytes = b"png") -> None:
    if os.path.lexists(path):
        return
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        os.mkdir(path)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)


def seed_root(root: Path, examples: list[tuple[str, bytes, bytes, str]]) -> dict[bytes, str]:
    """Write the drops; returns each sidecar that the scan should see (path bytes -> its folder)."""
    sidecars: dict[bytes, str] = {}
    for folder, stem, content, media in examples:
        base = os.fsencode(root / folder) + b"/" + stem
        if media != "none":
            make(base + b".png", media)
        sidecar = base + b".json"
        if os.path.lexists(sidecar):
            continue
        make(sidecar, "file", content)
        if not is_temporary_name(os.fsdecode(stem + b".json")):
            sidecars[sidecar] = folder
    return sidecars


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(drops)
def test_any_names_and_bytes_end_ready_rejected_or_waiting(examples: list[Any]) -> None:
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as tmp:
        root = Path(tmp)
        init_root(root)
        sidecars = seed_root(root, examples)
        layout = Layout(root)
        intake = Intake(Settings(root=root, settle_s=0, grace_s=600), layout)
        result = intake.scan()  # must not raise
        ready = {os.fsencode(d.sidecar) for d in result.ready}
        waiting = {w.sidecar for w in result.waiting}
        assert all(w.reason for w in result.waiting)
        for sidecar in sidecars:
            shown = display(layout.rel(Path(os.fsdecode(sidecar))))
            assert (sidecar in ready) != (shown in waiting), shown  # exactly one of the two
        journal = Journal(layout.journal, "test")
        try:
            for drop in result.ready:
                job = intake.claim(drop, journal)  # must not raise
                assert job is not None
                job.name.encode("utf-8")
                assert len(job.name.encode("utf-8")) <= MAX_STEM_BYTES + len("-99999")
            assert journal.open_claims() == []
            deliver.settle_all(layout, journal)
            for job in journal.jobs():
                assert job.state in ("queued", "failed")
                if job.state == "failed":
                    error = json.loads((root / "failed" / job.name / "error.json").read_text())
                    assert error["kind"] == "input" and error["error"] and error.get("file"), error
        finally:
            journal.close()
