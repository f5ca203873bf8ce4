"""Poison input must never stop the queue (issue 10): whatever a drop holds, it fails as its own
fault with a clear error.json, the scan goes on and the other drops are not held up.

Real files in a real root; Intake and the claim are called directly (the supervisor's part), except
one end-to-end run of ``fploopd run --once``. Permission and file-system cases use real conditions:
a daemon without the capability to bypass permissions (setpriv), a tmpfs mount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_util import (
    PY,
    SMALL,
    Clock,
    assert_each_input_once,
    drop,
    image_bytes,
    make_root,
    outbox_jobs,
    run_once,
    status_is_true,
    tmpfs,
)
from loguru import logger

from fploopd.daemon import deliver
from fploopd.daemon.intake import CLAIM_RETRY_S, MAX_MESSAGE_CHARS, Intake
from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.names import MAX_STEM_BYTES, NAME_MAX, job_name_for
from fploopd.daemon.settings import Settings

UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
GOOD = {"prompt": "a test", **SMALL}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


@pytest.fixture
def logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["level"].name + " " + m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)


def make_intake(root: Path, clock: Clock | None = None, **settings: Any) -> Intake:
    values = {"settle_s": 0.0, "grace_s": 600.0, **settings}
    return Intake(Settings(root=root, **values), Layout(root), clock or Clock())


def loop_dir(root: Path) -> Path:
    return root / "inbox" / "loop"


def write(path: Path | bytes, data: bytes) -> None:
    """A file by str or bytes path (bytes: names that are not UTF-8)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def process(root: Path, intake: Intake | None = None) -> tuple[Intake, Journal, list[Any]]:
    """One scan, every ready drop claimed, deliveries settled: what one supervisor tick does."""
    intake = intake or make_intake(root)
    layout = Layout(root)
    journal = Journal(layout.journal, "test")
    result = intake.scan()
    jobs = [intake.claim(d, journal) for d in result.ready]
    deliver.settle_all(layout, journal)
    return intake, journal, jobs


def rejected(root: Path, name: str) -> dict[str, Any]:
    """The error.json of failed/<name>/, checked to be an input error."""
    error = json.loads((root / "failed" / name / "error.json").read_text())
    assert error["kind"] == "input", error
    return error


def reject_one(root: Path, stem: str, content: bytes) -> dict[str, Any]:
    write(loop_dir(root) / f"{stem}.json", content)
    write(loop_dir(root) / f"{stem}.png", b"png")
    _, journal, jobs = process(root)
    (job,) = jobs
    assert job is not None and job.state == "failed" and journal.open_claims() == []
    assert sorted(os.listdir(root / "failed" / stem)) == sorted(["error.json", f"{stem}.json", f"{stem}.png"])
    assert (root / "failed" / stem / f"{stem}.json").read_bytes() == content  # untouched
    error = rejected(root, stem)
    assert error["file"] == f"{stem}.json" and f"{stem}.json" in error["error"]
    return error


# --- the content of a sidecar ------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"[" * 3000 + b"]" * 3000, b'{"a":' * 2000 + b"1" + b"}" * 2000])
def test_a_sidecar_nested_thousands_deep_is_rejected(root: Path, content: bytes) -> None:
    assert len(content) < 16 * 1024
    error = reject_one(root, "deep", content)
    assert "nested too deeply" in error["error"]


def test_a_sidecar_nested_less_deep_but_beyond_the_limit_is_rejected(root: Path) -> None:
    content = b'{"prompt": "", "tags": ' + b"[" * 200 + b"]" * 200 + b"}"
    assert "nested too deeply" in reject_one(root, "deep", content)["error"]


@pytest.mark.parametrize("number", [b"9" * 5000, b"-" + b"1" * 100, b"1e999", b"NaN", b"-Infinity"])
def test_a_number_with_thousands_of_digits_or_no_value_is_rejected(root: Path, number: bytes) -> None:
    error = reject_one(root, "big", b'{"prompt": "", "seed": ' + number + b"}")
    assert "number" in error["error"] and len(error["error"]) < 200


@pytest.mark.parametrize(
    ("value", "what"),
    [("a\x00b", "U+0000"), ("bell\x07", "U+0007"), ("\x1b[2J", "U+001B"), ("caf\udce9", "surrogate")],
)
def test_control_characters_and_broken_escapes_in_values_are_rejected(root: Path, value: str, what: str) -> None:
    content = json.dumps({"prompt": value}).encode()  # json escapes them: valid JSON text
    error = reject_one(root, "ctl", content)
    assert what in error["error"] and error["field"] == "prompt"


def test_a_control_character_in_a_key_or_a_media_name_is_rejected(root: Path) -> None:
    error = reject_one(root, "ctl", json.dumps({"prompt": "", "image": "ctl\x00.png"}).encode())
    assert "U+0000" in error["error"] and error["field"] == "image"


def test_a_nul_in_a_key_is_rejected(root: Path) -> None:
    error = reject_one(root, "ctl", json.dumps({"prompt": "", "x\x00y": 1}).encode())
    assert "U+0000" in error["error"] and "\x00" not in json.dumps(error, ensure_ascii=False)


def test_huge_strings_give_a_short_error(root: Path) -> None:
    error = reject_one(root, "huge", json.dumps({"prompt": "", "negative_prompt": "x" * 60_000}).encode())
    assert error["field"] == "negative_prompt" and len(error["error"]) <= MAX_MESSAGE_CHARS + 10


def test_many_keys_give_a_short_error(root: Path) -> None:
    content = json.dumps({"prompt": "", **{f"key{i}": i for i in range(3000)}}).encode()
    error = reject_one(root, "many", content)
    assert "3000 unknown keys" in error["error"] and len(error["error"]) < 400


def test_a_list_as_pipeline_in_the_bare_inbox_is_rejected(root: Path) -> None:
    write(root / "inbox" / "odd.json", json.dumps({"prompt": "", "pipeline": ["loop"]}).encode())
    _, _, (job,) = process(root)
    assert job.state == "failed" and rejected(root, "odd")["field"] == "pipeline"


def test_a_bad_profile_fails_the_drop_that_asks_for_it_and_odd_profile_names_stay_out_of_messages(root: Path) -> None:
    write(root / "profiles" / "deep.json", b"[" * 3000 + b"]" * 3000)
    write(os.fsencode(root / "profiles") + b"/\xff.json", b"{}")
    drop(root, "a", {"prompt": "", "profile": "deep"}, media=b"png")
    drop(root, "b", {"prompt": "", "profile": "nope"}, media=b"png")
    _, _, jobs = process(root)
    assert [j.state for j in jobs] == ["failed", "failed"]
    assert "profiles/deep.json: nested too deeply" in rejected(root, "a")["error"]
    error = rejected(root, "b")["error"]
    assert "no profile 'nope'" in error and "\udcff" not in error and "\\x" not in error


# --- names -------------------------------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_rejected_with_its_files_untouched(root: Path) -> None:
    folder = os.fsencode(loop_dir(root))
    write(folder + b"/caf\xe9.json", b'{"prompt": "p"}')
    write(folder + b"/caf\xe9.png", b"png")
    _, journal, (job,) = process(root)
    assert job.state == "failed" and job.name == job_name_for(os.fsdecode(b"caf\xe9"))
    job.name.encode("utf-8")  # valid text: a folder name, output names, the journal
    (failed,) = os.listdir(root / "failed")
    assert failed == job.name
    files = sorted(os.listdir(os.fsencode(root / "failed" / failed)))
    assert files == [b"caf\xe9.json", b"caf\xe9.png", b"error.json"]  # the original byte names
    error = rejected(root, failed)
    assert error["file"] == "caf\\xe9.json" and "caf\\xe9.json" in error["error"] and "UTF-8" in error["error"]
    assert os.listdir(loop_dir(root)) == []
    assert [j.name for j in journal.jobs()] == [job.name]


def test_a_name_with_a_newline_is_rejected_and_shown_escaped(root: Path) -> None:
    write(loop_dir(root) / "two\nlines.json", b'{"prompt": "p"}')
    _, _, (job,) = process(root)
    (failed,) = os.listdir(root / "failed")
    assert "\n" not in failed and job.state == "failed"
    assert rejected(root, failed)["file"] == "two\\x0alines.json"


def test_the_longest_names_made_from_the_longest_stem_fit(tmp_path: Path) -> None:
    """The arithmetic of names.MAX_STEM_BYTES, checked on a real file system: the longest name of
    each kind the daemon derives from a job name, made for real."""
    stem = "é" * (MAX_STEM_BYTES // 2) + "x" * (MAX_STEM_BYTES % 2)
    assert len(stem.encode()) == MAX_STEM_BYTES
    job = f"{stem}-99999"  # unique_name's largest suffix
    seed = str(2**63 - 1)
    # (output name, the suffix its writer gives atomic_path)
    outputs = [(f"{job}_{seed}_latent.safetensors", ""), (f"{job}_{seed}_loop_100.mp4", ".mp4"), (f"{job}_{seed}_connect.webp", ".webp")]
    for target, suffix in outputs:
        fd, name = tempfile.mkstemp(prefix=f".{target}.", suffix=".part" + suffix, dir=tmp_path)
        os.close(fd)
        assert len(os.fsencode(Path(name).name)) <= NAME_MAX
        (tmp_path / target).write_bytes(b"")
    (tmp_path / f"{job}-0123456789-0123456789-{2**32}").mkdir()  # delivery's conflict name
    with pytest.raises(OSError):  # the limit is real: one byte more does not fit
        (tmp_path / ("x" * (NAME_MAX + 1))).write_bytes(b"")


def test_a_name_too_long_for_its_outputs_is_rejected_and_its_failed_folder_fits(root: Path) -> None:
    ok, long = "a" * MAX_STEM_BYTES, "b" * (MAX_STEM_BYTES + 40)
    for stem in (ok, long):
        write(loop_dir(root) / f"{stem}.json", json.dumps(GOOD).encode())
        write(loop_dir(root) / f"{stem}.png", b"png")
    _, _, jobs = process(root)
    by_state = {j.state: j for j in jobs}
    assert by_state["queued"].name == ok
    failed = by_state["failed"]
    assert failed.name == job_name_for(long) and len(failed.name.encode()) <= MAX_STEM_BYTES
    assert failed.name.startswith("b" * 100)
    assert sorted(os.listdir(root / "failed" / failed.name)) == sorted(["error.json", f"{long}.json", f"{long}.png"])
    error = rejected(root, failed.name)
    assert f"name is {MAX_STEM_BYTES + 40} bytes, at most {MAX_STEM_BYTES}" in error["error"]
    assert error["file"] == f"{long}.json"


def test_a_media_name_longer_than_a_file_name_can_be_is_rejected_at_once(root: Path) -> None:
    error = reject_one(root, "m", json.dumps({"prompt": "", "image": "é" * 200 + ".png"}).encode())
    assert error["field"] == "image" and "longer than a file name" in error["error"]


# --- what the sidecar is -----------------------------------------------------------------------


def test_a_fifo_named_json_is_rejected_at_once_without_blocking(root: Path) -> None:
    os.mkfifo(loop_dir(root) / "pipe.json")
    drop(root, "good", GOOD, media=b"png")
    _, _, jobs = process(root)
    assert sorted((j.name, j.state) for j in jobs) == [("good", "queued"), ("pipe", "failed")]
    assert "FIFO" in rejected(root, "pipe")["error"]
    assert (root / "failed" / "pipe" / "pipe.json").is_fifo()


def test_a_fifo_as_media_is_rejected(root: Path) -> None:
    os.mkfifo(loop_dir(root) / "pipe.png")
    write(loop_dir(root) / "pipe.json", b'{"prompt": ""}')
    _, _, (job,) = process(root)
    assert job.state == "failed" and "FIFO" in rejected(root, "pipe")["error"]
    assert (loop_dir(root) / "pipe.png").is_fifo()  # not the drop's to take: it was never a file


def test_a_folder_named_json_is_left_alone_and_said_once(root: Path, logs: list[str]) -> None:
    (loop_dir(root) / "x.json").mkdir()
    (loop_dir(root) / "x.json" / "inside.png").write_bytes(b"png")
    intake = make_intake(root)
    for _ in range(3):
        result = intake.scan()
        assert result.ready == [] and result.waiting == []
    assert (loop_dir(root) / "x.json" / "inside.png").read_bytes() == b"png"
    assert len([line for line in logs if "x.json" in line]) == 1


def test_a_symlink_sidecar_is_rejected_and_moved_as_a_link(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(GOOD))
    os.symlink(target, loop_dir(root) / "link.json")
    _, _, (job,) = process(root)
    assert job.state == "failed" and "symbolic link" in rejected(root, "link")["error"]
    assert (root / "failed" / "link" / "link.json").is_symlink() and target.read_text() == json.dumps(GOOD)


class VanishingIntake(Intake):
    """Removes a file right after the scan listed it: the race with a user deleting their drop."""

    def __init__(self, *args: Any, victim: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.victim = victim

    def _examine(self, sidecar: Path, pipeline: str | None) -> Any:
        victim = sidecar.parent / self.victim
        if self.victim.endswith(".json") and victim.exists():
            victim.unlink()
        return super()._examine(sidecar, pipeline)

    def _check_media(self, sidecar: Path, fld: str, path: Path) -> None:
        if path.name == self.victim and path.exists():
            path.unlink()
        super()._check_media(sidecar, fld, path)


def test_a_sidecar_that_vanishes_after_listing_is_forgotten(root: Path) -> None:
    drop(root, "gone", GOOD, media=b"png")
    intake = VanishingIntake(Settings(root=root, settle_s=0), Layout(root), Clock(), victim="gone.json")
    result = intake.scan()
    assert result.ready == [] and result.waiting == []
    assert os.listdir(loop_dir(root)) == ["gone.png"]


def test_media_that_vanishes_while_being_checked_makes_the_drop_wait(root: Path) -> None:
    drop(root, "cat", GOOD, media=b"png")
    intake = VanishingIntake(Settings(root=root, settle_s=0), Layout(root), Clock(), victim="cat.png")
    (waiting,) = intake.scan().waiting
    assert "disappeared" in waiting.reason
    assert intake.scan().waiting[0].reason.startswith("waiting for image file cat")


# --- permissions: a daemon that cannot bypass them ---------------------------------------------

# Runs in a child process under setpriv: scan, claim what is ready, settle, scan again; prints JSON.
_UNPRIVILEGED_TICK = """
import json, sys
from pathlib import Path
from fploopd.daemon import deliver
from fploopd.daemon.intake import Intake
from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import Settings
root = Path(sys.argv[1])
intake = Intake(Settings(root=root, settle_s=0), Layout(root))
journal = Journal(Layout(root).journal, "test")
out = {"claimed": [], "failed_claims": 0, "waiting": []}
for drop in intake.scan().ready:
    job = intake.claim(drop, journal)
    if job is None:
        out["failed_claims"] += 1
    else:
        out["claimed"].append([job.name, job.state])
deliver.settle_all(Layout(root), journal)
for _ in range(3):  # more scans: the failed claim waits, said once
    out["waiting"] = [w.__dict__ for w in intake.scan().waiting]
out["claims_left"] = len(journal.open_claims())
print(json.dumps(out))
"""


def run_unprivileged(root: Path) -> tuple[dict[str, Any], str]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run a daemon that cannot bypass file permissions")
    proc = subprocess.run(
        [*UNPRIVILEGED, PY, "-c", _UNPRIVILEGED_TICK, str(root)], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_an_unreadable_sidecar_fails_at_once_with_the_reason(root: Path) -> None:
    drop(root, "secret", GOOD, media=b"png")
    os.chmod(loop_dir(root) / "secret.json", 0)
    out, _ = run_unprivileged(root)
    assert out["claimed"] == [["secret", "failed"]] and out["waiting"] == []
    error = rejected(root, "secret")
    assert "permission denied" in error["error"] and error["file"] == "secret.json"
    assert sorted(os.listdir(root / "failed" / "secret")) == ["error.json", "secret.json", "secret.png"]


def test_unreadable_media_fails_at_once_with_the_reason(root: Path) -> None:
    drop(root, "secret", GOOD, media=b"png")
    os.chmod(loop_dir(root) / "secret.png", 0)
    out, _ = run_unprivileged(root)
    assert out["claimed"] == [["secret", "failed"]]
    error = rejected(root, "secret")
    assert "permission denied" in error["error"] and error["file"] == "secret.png" and error["field"] == "image"


def test_an_inbox_folder_that_cannot_be_listed_does_not_stop_the_others(root: Path) -> None:
    drop(root, "cat", GOOD, media=b"png")  # stays: its folder cannot be read
    connect = root / "inbox" / "connect"
    for name in ("bridge_head.mp4", "bridge_tail.mp4"):
        (connect / name).write_bytes(b"video")
    (connect / "bridge.json").write_text(json.dumps({"prompt": ""}))
    os.chmod(loop_dir(root), 0)
    try:
        out, stderr = run_unprivileged(root)
    finally:
        os.chmod(loop_dir(root), 0o755)
    assert out["claimed"] == [["bridge", "queued"]]
    assert stderr.count("cannot list inbox/loop/") == 1, stderr
    assert sorted(os.listdir(loop_dir(root))) == ["cat.json", "cat.png"]


def test_a_claim_from_an_inbox_the_daemon_cannot_write_is_undone_and_said_once(root: Path) -> None:
    drop(root, "cat", GOOD, media=b"png")
    os.chmod(loop_dir(root), 0o555)  # root-owned; the daemon below cannot override it
    try:
        out, stderr = run_unprivileged(root)
    finally:
        os.chmod(loop_dir(root), 0o755)
    assert out["claimed"] == [] and out["failed_claims"] == 1 and out["claims_left"] == 0
    (waiting,) = out["waiting"]
    assert waiting["sidecar"] == "inbox/loop/cat.json" and waiting["reason"].startswith("claim failed: ")
    assert "permission denied" in waiting["reason"] and "write permission on inbox/loop/" in waiting["reason"]
    assert stderr.count("claim failed") == 1, stderr
    assert sorted(os.listdir(loop_dir(root))) == ["cat.json", "cat.png"]
    assert list((root / ".fploopd" / "work").iterdir()) == []  # no empty work dir left behind
    journal = Journal(Layout(root).journal, "test")
    assert journal.open_claims() == [] and journal.jobs() == []
    _, _, (job,) = process(root)  # the inbox writable again: claimed as the one job it is
    assert job.name == "cat" and job.state == "queued"


# --- claims across file systems ----------------------------------------------------------------


@pytest.fixture
def tmpfs_inbox(root: Path) -> Iterator[Path]:
    """inbox/loop/ on a small tmpfs of its own: another file system than .fploopd/."""
    with tmpfs(loop_dir(root), "20m") as folder:
        yield folder


def test_a_claim_across_file_systems_is_undone_said_once_and_retried_later(root: Path, tmpfs_inbox: Path, logs: list[str]) -> None:
    drop(root, "cat", GOOD, media=b"png")
    clock = Clock()
    intake = make_intake(root, clock)
    layout = Layout(root)
    journal = Journal(layout.journal, "test")
    (ready,) = intake.scan().ready
    assert intake.claim(ready, journal) is None
    assert journal.open_claims() == [] and journal.jobs() == [] and list(layout.work.iterdir()) == []
    for _ in range(5):  # later scans: it waits with the reason, and is not claimed again yet
        clock.t += 5
        result = intake.scan()
        assert result.ready == []
        (waiting,) = result.waiting
        assert waiting.blocked and "same file system as the root's .fploopd/ folder" in waiting.reason
    errors = [line for line in logs if line.startswith("ERROR")]
    assert len(errors) == 1 and "inbox/loop/cat.json" in errors[0] and "same file system" in errors[0]
    clock.t += CLAIM_RETRY_S
    (again,) = intake.scan().ready  # due again
    assert intake.claim(again, journal) is None
    assert len([line for line in logs if line.startswith("ERROR")]) == 1  # the same reason: not said again
    assert intake.scan().ready == []
    (tmpfs_inbox / "cat.json").write_text(json.dumps({**GOOD, "seed": 1}))  # the user changed it
    assert len(intake.scan().ready) == 1
    assert sorted(os.listdir(tmpfs_inbox)) == ["cat.json", "cat.png"] and journal.open_claims() == []


def test_a_move_failing_after_the_first_leaves_the_claim_recorded_without_raising(root: Path, tmp_path: Path) -> None:
    drop(root, "cat", GOOD, media=b"png")
    media = loop_dir(root) / "cat.png"
    outside = tmp_path / "bound.png"
    outside.write_bytes(b"png")
    # A file bind-mounted over the media: renaming a mount point fails (EBUSY), the sidecar moved first.
    mounted = subprocess.run(["mount", "--bind", str(outside), str(media)], check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        intake = make_intake(root)
        journal = Journal(Layout(root).journal, "test")
        (ready,) = intake.scan().ready
        assert intake.claim(ready, journal) is None
        (claim_row,) = journal.open_claims()  # recovery at the next start finishes it
        assert claim_row[1] == "cat" and not (loop_dir(root) / "cat.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(media)], check=True)


# --- fuzz: any name, any bytes ------------------------------------------------------------------


# --- end to end --------------------------------------------------------------------------------


def test_run_once_delivers_the_good_fails_the_hostile_and_exits(tmp_path: Path) -> None:
    root = make_root(tmp_path, grace_s=1.0)
    png = image_bytes()
    dropped: dict[str, bytes] = {}
    dropped.update(drop(root, "good1", {**GOOD, "seed": 1}, media=png))
    dropped.update(drop(root, "good2", {**GOOD, "seed": 2}, media=image_bytes(3)))
    inbox = loop_dir(root)
    hostile = {  # sidecar file name -> content
        "deep.json": b"[" * 3000 + b"]" * 3000,
        "bignum.json": b'{"prompt": "", "seed": ' + b"7" * 5000 + b"}",
        "nul.json": json.dumps({"prompt": "a\x00b", **SMALL}).encode(),
        "many.json": json.dumps({"prompt": "", **{f"k{i}": i for i in range(3000)}}).encode(),
        "n" * (MAX_STEM_BYTES + 20) + ".json": json.dumps(GOOD).encode(),
    }
    for name, content in hostile.items():
        write(inbox / name, content)
        dropped[name] = content
    write(os.fsencode(inbox) + b"/caf\xe9.json", json.dumps(GOOD).encode())
    write(os.fsencode(inbox) + b"/caf\xe9.png", png)
    os.mkfifo(inbox / "pipe.json")
    result = run_once(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert outbox_jobs(root) == ["good1", "good2"]
    assert assert_each_input_once(root, {k: v for k, v in dropped.items() if k.startswith("good")})
    failed = sorted(os.listdir(root / "failed"))
    assert len(failed) == len(hostile) + 2, failed
    for folder in failed:
        error = rejected(root, folder)
        assert error["file"] and error["file"] in error["error"], error
    assert (root / "failed" / "deep" / "deep.json").read_bytes() == hostile["deep.json"]
    assert (root / "failed" / "pipe" / "pipe.json").is_fifo()
    (cafe,) = [f for f in failed if f.startswith("caf")]
    assert sorted(os.listdir(os.fsencode(root / "failed" / cafe))) == [b"caf\xe9.json", b"caf\xe9.png", b"error.json"]
    assert os.listdir(inbox) == []
    views = status_is_true(root)  # no phantom job: one per drop, each where it should be
    assert sorted(v["state"] for v in views) == ["done"] * 2 + ["failed"] * (len(hostile) + 2)
    assert all(v["attempts"] == 0 for v in views)
    work = {p.name for p in (root / ".fploopd" / "work").iterdir()}
    assert work <= {v["id"] for v in views if v["state"] == "failed"}  # kept for `fploopd retry`, none unknown
