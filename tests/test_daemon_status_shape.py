"""``fploopd status --json`` is a contract: the keys and value types of a job's view in each state
stay as they were, whatever the daemon keeps inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fploopd.daemon import deliver, outcomes
from fploopd.daemon.control import job_view
from fploopd.daemon.journal import Journal
from fploopd.daemon.layout import Layout
from fploopd.daemon.settings import Settings
from fploopd.errors import InputError


def shape(value: Any) -> Any:
    """Keys and value types, recursively (a list by its first item)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def _new(journal: Journal, layout: Layout, name: str) -> str:
    job_id = f"id-{name}"
    layout.inputs_dir(job_id).mkdir(parents=True)
    (layout.inputs_dir(job_id) / f"{name}.json").write_text("{}")
    inputs = [{"field": "sidecar", "name": f"{name}.json", "source": f"inbox/{name}.json", "size": 2, "sha256": "ab"}]
    journal.open_claim(job_id, name, {"moves": []})
    journal.close_claim(job_id, name=name, pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=inputs)
    return job_id


def _views(root: Path) -> dict[str, dict[str, Any]]:
    """A job in each state (and a queued one waiting for its retry), as status shows them."""
    layout = Layout(root)
    journal = Journal(layout.journal, "test")
    settings = Settings(root=root, max_attempts=3, backoff_base_s=600)
    _new(journal, layout, "queued")
    running = journal.get(_new(journal, layout, "running"))
    journal.transition(running.id, "running", worker="w")
    journal.set_progress(running.id, {"phase": "sample", "section": 1, "step": 2})
    for name in ("done", "failed", "cancelled", "retrying"):
        journal.transition(_new(journal, layout, name), "running", worker="w")
    done = journal.get("done")
    layout.out_dir(done.id).mkdir(parents=True)
    (layout.out_dir(done.id) / "done.mp4").write_bytes(b"mp4")
    outcomes.finished(done, layout, journal, {"outputs": [{"file": "done.mp4", "kind": "mp4", "size": 3}], "timings": {}}, "tiny")
    error = InputError("the image is too large", field="image", file="failed.png")
    outcomes.failed(journal.get("failed"), layout, journal, error.record())
    journal.request_cancel("id-cancelled")
    outcomes.stopped(journal.get("cancelled"), layout, journal)
    outcomes.retry_or_fail(
        journal.get("retrying"), layout, journal, settings, error.record()
    )
    deliver.settle_all(layout, journal)
    views = {job.name: job_view(job, layout) for job in journal.jobs()}
    journal.close()
    return views


# What status showed of each state before the journal held typed values (keys in this order).
QUEUED = {
    "id": "str",
    "name": "str",
    "pipeline": "str",
    "state": "str",
    "attempts": "int",
    "failures": "int",
    "progress": "NoneType",
    "error": "NoneType",
    "outputs": [],
    "priority": "int",
    "seeds": ["int"],
    "inputs": [{"field": "str", "name": "str", "size": "int", "sha256": "str"}],
    "location": {"inputs": "str", "outputs": "NoneType"},
    "delivered": "bool",
    "cancel_requested": "bool",
    "worker": "NoneType",
    "next_attempt_at": "NoneType",
    "created_at": "str",
    "updated_at": "str",
    "started_at": "NoneType",
    "finished_at": "NoneType",
    "hooks": [],
}
STARTED = {**QUEUED, "started_at": "str"}
ENDED = {**STARTED, "finished_at": "str"}
FULL_ERROR = {"kind": "str", "error": "str", "field": "str", "file": "str"}
EXPECTED = {
    "queued": QUEUED,
    "running": {**STARTED, "progress": {"phase": "str", "section": "int", "step": "int"}, "worker": "str"},
    "done": {
        **ENDED,
        "progress": {"phase": "str"},
        "outputs": [{"file": "str", "kind": "str", "size": "int", "path": "str"}],
        "location": {"inputs": "str", "outputs": "str"},
    },
    "failed": {**ENDED, "error": FULL_ERROR},
    "cancelled": {**ENDED, "error": {"kind": "str", "error": "str"}},
    "retrying": {**STARTED, "error": FULL_ERROR, "next_attempt_at": "str"},
}


def test_status_json_keeps_its_shape_in_every_state(tmp_path: Path) -> None:
    views = _views(tmp_path)
    assert {name: shape(json.loads(json.dumps(v))) for name, v in views.items()} == EXPECTED
    assert {name: shape(v) for name, v in views.items()} == EXPECTED  # plain values, no enum or record inside
    assert all(list(v) == list(QUEUED) for v in views.values())
    assert {name: v["state"] for name, v in views.items() if name != "retrying"} == {name: name for name in views if name != "retrying"}
    assert views["failed"]["error"] == {"kind": "input", "error": "the image is too large", "field": "image", "file": "failed.png"}
