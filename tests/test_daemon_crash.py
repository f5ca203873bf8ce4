"""Crashes for real: FPLOOPD_TEST_CRASH_AT makes the daemon SIGKILL its own process group at a
chosen point (during the claim, during a section, during delivery). Each chain crashes the same
root again and again at later points; after every crash each input is in exactly one place, and
the final clean run delivers each job exactly once. (test_intake.py covers every claim and
delivery step in-process as well.)"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemon_util import (
    SMALL,
    assert_each_input_once,
    drop,
    env,
    image_bytes,
    jobs,
    make_root,
    outbox_jobs,
    run_once,
    status_is_true,
)

CHAINS = {
    # "bad" sorts first: the first claim crash hits the rejected drop, the second the good one.
    "claim-section-delivery": ["claim:after_first_move", "run:section2", "deliver:after_journal", "deliver:after_move1"],
    "claim-commit-delivery": ["claim:after_journal", "claim:after_commit", "deliver:before_journal", "deliver:after_move2"],
}


@pytest.mark.parametrize("chain", CHAINS)
def test_crashes_then_a_restart_deliver_exactly_once(tmp_path: Path, chain: str) -> None:
    root = make_root(tmp_path)
    dropped = drop(root, "cat", {"prompt": "", **SMALL, "seed": 3}, media=image_bytes())
    dropped.update(drop(root, "bad", {"promt": "", **SMALL}, media=image_bytes(5)))
    for point in CHAINS[chain]:
        crashed = run_once(root, env(FPLOOPD_TEST_CRASH_AT=point))
        assert crashed.returncode == -signal.SIGKILL, (point, crashed.stderr[-3000:])
        assert f"test crash at {point}" in crashed.stderr
        assert_each_input_once(root, dropped)  # right after each crash: nothing lost, nothing doubled
        assert len(outbox_jobs(root)) <= 1
        if point == "run:section2":
            (job,) = [j for j in jobs(root) if j["name"] == "cat"]
            assert job["state"] == "running"
            assert any((root / ".fploopd" / "work" / job["id"] / "state").iterdir())  # section 1's checkpoint

    restarted = run_once(root)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert outbox_jobs(root) == ["cat"]
    # preview.webp: the live preview joins the outputs before the job is recorded done, so crashes
    # around the delivery keep it (a run that resumes after its last section keeps the earlier one).
    assert sorted(p.name for p in (root / "outbox" / "cat").iterdir()) == ["cat_3_1loop.mp4", "cat_3_loop_2.mp4", "manifest.json", "preview.webp"]
    assert assert_each_input_once(root, dropped) == {
        "cat.json": "archive/cat/cat.json",
        "cat.png": "archive/cat/cat.png",
        "bad.json": "failed/bad/bad.json",
        "bad.png": "failed/bad/bad.png",
    }
    views = {v["name"]: v for v in status_is_true(root)}
    assert set(views) == {"cat", "bad"}
    assert views["cat"]["state"] == "done" and views["bad"]["state"] == "failed" and views["bad"]["error"]["field"] == "promt"
    assert views["cat"]["attempts"] == 1  # one interrupted attempt (a section, or the end before "done")
    assert all(v["delivered"] for v in views.values())
