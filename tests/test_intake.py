"""Intake: stability across scans, temporary names, the grace period, naming, claims and their
recovery after a crash at each step (simulated in-process here; test_daemon_crash.py does it for real)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from daemon_util import Clock

from fploopd.daemon import claim as claim_mod
from fploopd.daemon import deliver
from fploopd.daemon.claim import adopt_orphans, claim, recover_claims, unique_name
from fploopd.daemon.intake import Intake, Stability
from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout, is_temporary_name
from fploopd.daemon.rootinit import init_root
from fploopd.daemon.settings import Settings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    init_root(tmp_path)
    return tmp_path


def make_intake(root: Path, clock: Clock, **kw: float) -> Intake:
    return Intake(Settings(root=root, settle_s=kw.get("settle_s", 3.0), grace_s=kw.get("grace_s", 600.0)), Layout(root), clock)


def drop(root: Path, stem: str = "cat", sidecar: dict | None = None, media: bytes | None = b"png") -> Path:
    folder = root / "inbox" / "loop"
    if media is not None:
        (folder / f"{stem}.png").write_bytes(media)
    (folder / f"{stem}.json").write_text(json.dumps(sidecar if sidecar is not None else {"prompt": "p"}))
    return folder


@pytest.mark.parametrize("name", ["a.part", "a.PNG.tmp", "x.crdownload", "~lock.json", ".hidden.json", ".x.json.abc.part"])
def test_temporary_names(name: str) -> None:
    assert is_temporary_name(name)


def test_regular_names_are_not_temporary() -> None:
    assert not is_temporary_name("cat.json") and not is_temporary_name("my~cat.png")


def test_stability_needs_an_unchanged_settle_window(tmp_path: Path) -> None:
    clock = Clock()
    st = Stability(3.0, clock)
    f = tmp_path / "f"
    f.write_bytes(b"a")
    assert not st.settled(f)
    clock.t += 2
    assert not st.settled(f)
    with open(f, "ab") as h:  # still being written: the window starts again
        h.write(b"b")
    clock.t += 2
    assert not st.settled(f)
    clock.t += 3.1
    assert st.settled(f)


def test_nothing_is_ready_before_settling_and_temp_names_are_ignored(root: Path) -> None:
    clock = Clock()
    intake = make_intake(root, clock)
    folder = drop(root)
    (folder / "dog.json.part").write_text("{}")
    (folder / "~x.json").write_text("{}")
    assert intake.scan().ready == []
    clock.t += 3.5
    ready = intake.scan().ready
    assert [d.sidecar.name for d in ready] == ["cat.json"] and ready[0].media == {"image": folder / "cat.png"}


def test_media_still_growing_is_not_ready(root: Path) -> None:
    clock = Clock()
    intake = make_intake(root, clock)
    folder = drop(root)
    for _ in range(5):
        clock.t += 2.0
        with open(folder / "cat.png", "ab") as h:
            h.write(b"more")
        assert intake.scan().ready == []
    clock.t += 3.5
    assert len(intake.scan().ready) == 1


def test_missing_media_waits_for_the_grace_period_then_fails_naming_it(root: Path) -> None:
    clock = Clock()
    intake = make_intake(root, clock, settle_s=0, grace_s=60)
    drop(root, sidecar={"prompt": "", "image": "later.png"}, media=None)
    result = intake.scan()
    (waiting,) = result.waiting
    assert result.ready == [] and waiting.reason == "waiting for image file later.png (up to 60 s)"
    assert (waiting.sidecar, waiting.name, waiting.pipeline) == ("inbox/loop/cat.json", "cat", "loop")
    clock.t += 30
    assert intake.scan().waiting[0].since == waiting.since  # first seen waiting, not last
    clock.t += 61
    (d,) = intake.scan().ready
    assert d.error is not None and d.error.file == "later.png" and d.error.field == "image"


def test_bad_sidecar_is_ready_at_once_as_a_rejection_with_its_media(root: Path) -> None:
    clock = Clock()
    intake = make_intake(root, clock, settle_s=0)
    folder = drop(root, sidecar={"promt": "x"})
    (d,) = intake.scan().ready
    assert d.error is not None and d.error.field == "promt" and d.extra == (folder / "cat.png",)


def test_unique_names(root: Path) -> None:
    layout = Layout(root)
    journal = Journal(layout.journal, "test")
    assert unique_name("cat", layout, journal) == "cat"
    (layout.outbox / "cat").mkdir()
    (layout.failed / "cat-2").mkdir()
    journal.open_claim("x", "CAT-3", {"moves": []})
    (layout.archive / "cat-4").mkdir()
    assert unique_name("cat", layout, journal) == "cat-5"


# --- claims and recovery ----------------------------------------------------------------------


class Crash(Exception):
    pass


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Raise Crash at ``point``, once: the recovery that follows is another process."""
    fired: list[str] = []

    def crashpoint(name: str) -> None:
        if name == point and not fired:
            fired.append(name)
            raise Crash(name)

    monkeypatch.setattr(claim_mod, "crashpoint", crashpoint)
    monkeypatch.setattr(deliver, "crashpoint", crashpoint)


def where_is(root: Path, name: str) -> list[str]:
    """Every place a file called ``name`` is, outside the journal."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(name) if "profiles" not in p.parts)


def ready_drop(root: Path, clock: Clock) -> object:
    intake = make_intake(root, clock, settle_s=0)
    (d,) = intake.scan().ready
    return d


@pytest.mark.parametrize("point", ["claim:after_journal", "claim:after_first_move", "claim:after_moves", "claim:after_commit"])
def test_a_crash_during_the_claim_is_finished_by_recovery(root: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    layout = Layout(root)
    drop(root)
    d = ready_drop(root, Clock())
    crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        claim(d, layout, Journal(layout.journal, "supervisor"))  # type: ignore[arg-type]
    journal = Journal(layout.journal, "supervisor")  # a new process after the crash
    recover_claims(layout, journal)
    (job,) = journal.jobs()
    assert job.state == "queued" and job.name == "cat" and {i["name"] for i in job.inputs} == {"cat.json", "cat.png"}
    for name in ("cat.json", "cat.png"):
        assert where_is(root, name) == [f".fploopd/work/{job.id}/inputs/{name}"]
    assert journal.open_claims() == []


def test_a_file_dropped_again_after_a_crash_mid_claim_stays_in_the_inbox(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = Layout(root)
    drop(root)
    d = ready_drop(root, Clock())
    crash_at(monkeypatch, "claim:after_first_move")
    with pytest.raises(Crash):
        claim(d, layout, Journal(layout.journal, "supervisor"))  # type: ignore[arg-type]
    (root / "inbox/loop/cat.json").write_text("{}")  # the user drops a new sidecar of that name
    journal = Journal(layout.journal, "supervisor")
    (job,) = recover_claims(layout, journal)
    assert (root / "inbox/loop/cat.json").read_text() == "{}"
    assert json.loads((layout.inputs_dir(job.id) / "cat.json").read_text()) == {"prompt": "p"}


def test_rejected_drop_is_delivered_to_failed_with_error_json(root: Path) -> None:
    layout = Layout(root)
    drop(root, sidecar={"promt": "x"})
    original = (root / "inbox/loop/cat.json").read_bytes()
    d = ready_drop(root, Clock())
    journal = Journal(layout.journal, "supervisor")
    job = claim(d, layout, journal)  # type: ignore[arg-type]
    assert job.state == "failed"
    deliver.settle_all(layout, journal)
    assert (layout.failed / "cat" / "cat.json").read_bytes() == original
    assert (layout.failed / "cat" / "cat.png").read_bytes() == b"png"
    error = json.loads((layout.failed / "cat" / "error.json").read_text())
    assert error == {"job": job.id, "kind": "input", "error": error["error"], "field": "promt", "file": "cat.json"}
    assert journal.pending_moves() == []


def _done_job(root: Path) -> tuple[Layout, Journal, str]:
    layout = Layout(root)
    drop(root)
    journal = Journal(layout.journal, "supervisor")
    job = claim(ready_drop(root, Clock()), layout, journal)  # type: ignore[arg-type]
    journal.claim_next("w")
    out = layout.out_dir(job.id)
    out.mkdir(parents=True)
    (out / "cat_1_1loop.mp4").write_bytes(b"video")
    (layout.checkpoint_dir(job.id)).mkdir(parents=True)
    (layout.checkpoint_dir(job.id) / "checkpoint-1.safetensors").write_bytes(b"ckpt")
    journal.transition(job.id, "done", delivery=deliver.plan_done(layout, job.id, job.name))
    return layout, journal, job.id


@pytest.mark.parametrize("point", ["deliver:after_move1", "deliver:after_move2"])
def test_a_crash_mid_delivery_is_finished_exactly_once(root: Path, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    layout, journal, job_id = _done_job(root)
    crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        deliver.settle_all(layout, journal)
    journal = Journal(layout.journal, "supervisor")
    assert deliver.settle_all(layout, journal) == 1
    assert deliver.settle_all(layout, journal) == 0  # done once, and recorded
    assert sorted(os.listdir(layout.outbox)) == ["cat"] and sorted(os.listdir(layout.archive)) == ["cat"]
    assert (layout.outbox / "cat" / "cat_1_1loop.mp4").read_bytes() == b"video"
    assert sorted(os.listdir(layout.archive / "cat")) == ["cat.json", "cat.png"]
    assert not layout.job_dir(job_id).exists()  # the checkpoints went with the delivery


def test_delivery_never_overwrites_a_folder_made_since(root: Path) -> None:
    layout, journal, _job_id = _done_job(root)
    (layout.outbox / "cat").mkdir()
    (layout.outbox / "cat" / "mine.txt").write_text("user")
    deliver.settle_all(layout, journal)
    assert (layout.outbox / "cat" / "mine.txt").read_text() == "user"
    (other,) = [p for p in layout.outbox.iterdir() if p.name != "cat"]
    assert (other / "cat_1_1loop.mp4").read_bytes() == b"video"


def test_orphan_work_dir_is_recovered_to_failed(root: Path) -> None:
    layout = Layout(root)
    inputs = layout.inputs_dir("deadbeef00")
    inputs.mkdir(parents=True)
    (inputs / "lost.json").write_text('{"prompt": ""}')
    (inputs / "lost.png").write_bytes(b"png")
    journal = Journal(layout.journal, "supervisor")
    (job,) = adopt_orphans(layout, journal)
    deliver.settle_all(layout, journal)
    assert job.state == "failed" and job.name == "lost"
    assert sorted(os.listdir(layout.failed / "lost")) == ["error.json", "lost.json", "lost.png"]
    assert "no journal record" in json.loads((layout.failed / "lost" / "error.json").read_text())["error"]
