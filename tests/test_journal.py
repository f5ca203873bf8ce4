"""The journal: the state machine, atomic claims of the next job, backoff."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from fploopd.daemon.journal import TRANSITIONS, IllegalTransition, JobState, Journal
from fploopd.daemon.plan import DeliveryPlan
from fploopd.daemon.settings import Settings
from fploopd.errors import ErrorRecord, InputError


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / ".fploopd" / "journal.sqlite3", "test")


def add(journal: Journal, job_id: str, name: str | None = None, priority: int = 0) -> None:
    journal.open_claim(job_id, name or job_id, {"moves": []})
    journal.close_claim(job_id, name=name or job_id, pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=[], priority=priority)


def test_pragmas(journal: Journal) -> None:
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_state_machine_is_exactly_the_contract() -> None:
    assert TRANSITIONS == {
        ("queued", "running"),
        ("queued", "cancelled"),
        ("running", "done"),
        ("running", "failed"),
        ("running", "cancelled"),
        ("running", "queued"),
        ("failed", "queued"),
        ("cancelled", "queued"),
    }


def test_legal_path_and_events(journal: Journal) -> None:
    add(journal, "a")
    job = journal.claim_next("w")
    assert job is not None and job.state == "running" and job.worker == "w" and job.started_at is not None
    job = journal.transition("a", "done", expect="running", outputs=[{"file": "x.mp4"}])
    assert job.state == "done" and job.finished_at is not None and job.outputs == [{"file": "x.mp4"}]
    assert [e["what"] for e in journal.events("a")] == ["claim", "queued", "running", "done"]


@pytest.mark.parametrize(
    ("path", "illegal"),
    [([], "done"), ([], "failed"), (["running", "done"], "queued"), (["running", "done"], "running"), (["cancelled"], "running")],
)
def test_illegal_transitions_raise(journal: Journal, path: list[str], illegal: str) -> None:
    add(journal, "a")
    for state in path:
        journal.transition("a", state)
    with pytest.raises(IllegalTransition):
        journal.transition("a", illegal)
    assert journal.get("a").state == (path[-1] if path else "queued")


def test_expect_narrows(journal: Journal) -> None:
    add(journal, "a")
    with pytest.raises(IllegalTransition):
        journal.transition("a", "cancelled", expect="running")


def test_retry_of_failed(journal: Journal) -> None:
    add(journal, "a")
    journal.transition("a", "running")
    journal.transition("a", "failed", error=ErrorRecord("error", "x"))
    assert journal.transition("a", "queued", attempts=0, error=None).state == "queued"


def test_claim_next_by_priority_then_age_and_not_before_due(journal: Journal) -> None:
    add(journal, "old")
    time.sleep(0.01)
    add(journal, "new")
    time.sleep(0.01)
    add(journal, "urgent", priority=5)
    journal.db.execute("UPDATE jobs SET next_attempt_at = ? WHERE id = 'old'", (time.time() + 60,))
    order = [journal.claim_next("w").id, journal.claim_next("w").id]  # type: ignore[union-attr]
    assert order == ["urgent", "new"]
    assert journal.claim_next("w") is None  # "old" is not due yet


def test_claim_next_is_atomic_across_connections(journal: Journal, tmp_path: Path) -> None:
    for i in range(20):
        add(journal, f"j{i}")
    other = Journal(journal.path, "other")
    got: list[str] = []
    while True:
        a, b = journal.claim_next("a"), other.claim_next("b")
        got += [j.id for j in (a, b) if j is not None]
        if a is None and b is None:
            break
    assert sorted(got) == sorted(f"j{i}" for i in range(20))


def test_cancel_flag_blocks_the_claim(journal: Journal) -> None:
    add(journal, "a")
    journal.request_cancel("a")
    assert journal.claim_next("w") is None


def test_names_are_unique_case_insensitively(journal: Journal) -> None:
    add(journal, "a", name="Cat")
    assert journal.name_taken("cat") and journal.name_taken("CAT")
    journal.open_claim("b", "dog", {"moves": []})
    assert journal.name_taken("Dog")
    with pytest.raises(sqlite3.IntegrityError):
        add(journal, "c", name="CAT")


def test_get_by_id_or_name(journal: Journal) -> None:
    add(journal, "abc", name="cat")
    assert journal.get("cat").id == "abc" and journal.get("abc").name == "cat"
    with pytest.raises(KeyError):
        journal.get("nope")


def test_new_delivery_plan_is_pending_until_settled(journal: Journal) -> None:
    add(journal, "a")
    journal.transition("a", "running")
    journal.transition("a", "done", delivery=DeliveryPlan(moves=()))
    assert [j.id for j in journal.pending_moves()] == ["a"]
    journal.mark_delivered("a")
    assert journal.pending_moves() == []


def test_backoff_is_exponential_and_capped() -> None:
    s = Settings(backoff_base_s=10, backoff_max_s=100)
    assert [s.backoff_s(n) for n in range(7)] == [0, 10, 20, 40, 80, 100, 100]


# Delivery plans and errors as older versions stored them (dicts in JSON columns): they load typed,
# and write back exactly as they were.
OLD_ROWS = {
    "rejected": (
        "failed",
        {"kind": "input", "error": "no such field", "field": "promt", "file": "cat.json"},
        {
            "write": {
                "path": ".fploopd/work/rejected/inputs/error.json",
                "json": {"job": "rejected", "kind": "input", "error": "no such field", "field": "promt", "file": "cat.json"},
            },
            "moves": [{"src": ".fploopd/work/rejected/inputs", "dst": "failed/cat"}],
            "cleanup": False,
        },
    ),
    "done": (  # a done job's moves in the order of a recovered one: outbox first
        "done",
        None,
        {"moves": [{"src": ".fploopd/work/done/out", "dst": "outbox/dog"}, {"src": ".fploopd/work/done/inputs", "dst": "archive/dog"}], "cleanup": True},
    ),
    "retried": (
        "queued",
        {"kind": "interrupted", "error": "the daemon stopped"},
        {
            "moves": [
                {"src": "failed/eel", "dst": ".fploopd/work/retried/inputs"},
                {"src": ".fploopd/work/retried/inputs/error.json", "dst": ".fploopd/work/retried/errors/1-error.json"},
            ],
            "cleanup": False,
            "rehash": True,
        },
    ),
}


def test_rows_written_before_typed_plans_and_errors_load_and_write_back_the_same(journal: Journal) -> None:
    for job_id, (state, error, delivery) in OLD_ROWS.items():
        journal.db.execute(
            "INSERT INTO jobs (id, name, inputs, state, error, delivery, created_at, updated_at) VALUES (?, ?, '[]', ?, ?, ?, 1, 2)",
            (job_id, job_id, state, None if error is None else json.dumps(error), json.dumps(delivery)),
        )
    for job_id, (state, error, delivery) in OLD_ROWS.items():
        job = journal.get(job_id)
        assert job.state is JobState(state) and isinstance(job.delivery, DeliveryPlan)
        assert (job.error.to_json() if job.error is not None else None) == error
        assert job.delivery.to_json() == delivery
        journal.set_delivery(job_id, job.delivery)  # written back through the journal: the same JSON
        stored = journal.db.execute("SELECT delivery FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        assert json.loads(stored) == delivery
    assert journal.get("done").delivery.delivered_to("archive") == "archive/dog"
    assert journal.get("rejected").delivery.write.error == ErrorRecord("input", "no such field", field="promt", file="cat.json")


def test_a_state_is_its_string_wherever_it_is_read(journal: Journal) -> None:
    assert [str(s) for s in JobState] == ["queued", "running", "done", "failed", "cancelled"]
    assert f"{JobState.DONE}" == "done" and json.dumps({"state": JobState.DONE}) == '{"state": "done"}'
    add(journal, "a")
    journal.transition("a", JobState.RUNNING)
    journal.transition("a", JobState.DONE, expect=JobState.RUNNING)
    assert journal.db.execute("SELECT state, typeof(state) FROM jobs").fetchone()[:] == ("done", "text")
    assert [e["what"] for e in journal.events("a")] == ["claim", "queued", "running", "done"]
    assert journal.get("a").state is JobState.DONE and journal.jobs((JobState.DONE,))[0].id == "a"


def test_error_record_keeps_error_json_shape() -> None:
    bare = ErrorRecord("error", "x")
    assert bare.to_json() == {"kind": "error", "error": "x"} and ErrorRecord.from_json(bare.to_json()) == bare
    full = InputError("bad", field="seed", file="a.json").record()
    assert list(full.to_json()) == ["kind", "error", "field", "file"] and ErrorRecord.from_json(full.to_json()) == full
