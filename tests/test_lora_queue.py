"""The queue's LoRA affinity: a worker takes the job whose LoRAs it has merged among jobs of equal
priority, never across priorities, and the oldest job is passed over a bounded number of times."""

from __future__ import annotations

from pathlib import Path

import pytest

from fploopd.daemon.journal import CHOICES, Journal
from fploopd.daemon.loras import MAX_PASSES, LoraAffinity, lora_set

STYLE = [{"file": "style.safetensors", "scale": 0.8}]
OTHER = [{"file": "other.safetensors", "scale": 1.0}]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / ".fploopd" / "journal.sqlite3", "test")


def add(journal: Journal, job_id: str, loras: list[dict], priority: int = 0, at: float = 0.0) -> None:
    journal.open_claim(job_id, job_id, {"moves": []})
    spec = {"prompt": "", "loras": loras}
    journal.close_claim(job_id, name=job_id, pipeline="loop", spec=spec, seeds=[1], inputs=[], priority=priority)
    journal.db.execute("UPDATE jobs SET created_at = ? WHERE id = ?", (at, job_id))  # a fixed age order


def take(journal: Journal, affinity: LoraAffinity, merged: list[dict]) -> str:
    job = journal.claim_next("w", choose=lambda jobs: affinity.choose(jobs, lora_set({"loras": merged})))
    assert job is not None and job.state == "running"
    return job.id


def test_a_worker_prefers_its_merged_set_within_a_priority_but_never_across(journal: Journal) -> None:
    add(journal, "plain", [], at=1)
    add(journal, "styled", STYLE, at=2)
    add(journal, "other", OTHER, priority=1, at=3)
    add(journal, "styled-urgent", STYLE, priority=1, at=4)
    affinity = LoraAffinity()
    # Priority 1 first; among it, the worker with STYLE merged takes the STYLE job, younger as it is.
    assert take(journal, affinity, STYLE) == "styled-urgent"
    assert take(journal, affinity, STYLE) == "other"  # nothing of priority 1 left with STYLE
    assert take(journal, affinity, STYLE) == "styled"
    assert take(journal, affinity, STYLE) == "plain"
    assert journal.claim_next("w", choose=lambda jobs: affinity.choose(jobs, ())) is None


def test_the_oldest_job_is_passed_over_a_bounded_number_of_times(journal: Journal) -> None:
    add(journal, "head", OTHER, at=0)
    for i in range(MAX_PASSES + 3):
        add(journal, f"styled-{i}", STYLE, at=1 + i)
    affinity = LoraAffinity()
    order = [take(journal, affinity, STYLE) for _ in range(MAX_PASSES + 1)]
    assert order == [*(f"styled-{i}" for i in range(MAX_PASSES)), "head"]


def test_without_a_preference_the_order_is_priority_then_age(journal: Journal) -> None:
    add(journal, "a", STYLE, at=1)
    add(journal, "b", [], at=2)
    assert [take(journal, LoraAffinity(), []) for _ in range(2)] == ["b", "a"]  # [] is a set too: the base weights
    add(journal, "c", STYLE, at=3)
    add(journal, "d", [], at=4)
    assert [journal.claim_next("w").id for _ in range(2)] == ["c", "d"]  # type: ignore[union-attr]


def test_lora_set_reads_the_recorded_spec() -> None:
    assert lora_set({"loras": STYLE}) == (("style.safetensors", 0.8),)
    assert lora_set({}) == lora_set({"loras": []}) == ()


def test_a_worker_takes_only_the_jobs_it_can_run_whatever_their_priority(journal: Journal) -> None:
    """A device group takes no LoRA job while a one-GPU worker can: it goes down the queue to the
    first job it can run, and leaves the others for the worker that can."""
    add(journal, "styled-urgent", STYLE, priority=5, at=1)
    add(journal, "styled", STYLE, at=2)
    add(journal, "plain", [], at=3)
    plain_only = lambda job: not lora_set(job.spec or {})
    job = journal.claim_next("group", eligible=plain_only)
    assert job is not None and job.id == "plain"
    assert journal.claim_next("group", eligible=plain_only) is None  # nothing it can run: nothing claimed
    assert {j.id: j.state for j in journal.jobs()} == {"styled-urgent": "queued", "styled": "queued", "plain": "running"}
    assert take(journal, LoraAffinity(), []) == "styled-urgent"  # a one-GPU worker: priority first, as ever


def test_a_worker_finds_a_job_it_can_run_behind_a_page_of_ones_it_cannot(journal: Journal) -> None:
    for i in range(CHOICES + 3):  # more LoRA jobs than one read of the queue holds
        add(journal, f"styled-{i}", STYLE, at=i)
    add(journal, "plain", [], at=CHOICES + 10)
    plain_only = lambda job: not lora_set(job.spec or {})
    job = journal.claim_next("group", eligible=plain_only)
    assert job is not None and job.id == "plain"
    assert journal.claim_next("group", eligible=plain_only) is None
    assert sum(j.state == "queued" for j in journal.jobs()) == CHOICES + 3
