"""The journal's two stores: the same records and transitions on SQLite and on PostgreSQL, leases and
fencing, `fploopd journal migrate`, and doctor's checks of where the journal lives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pg_util
import pytest
from daemon_util import env, fploopd, make_root, wait_for

from fploopd.daemon.claim import Drop, claim_record, finish_stale_claims, first_move
from fploopd.daemon.journal import CHOICES, IllegalTransition, JobState, Journal, LeaseLost
from fploopd.daemon.journalcheck import fs_type, is_network
from fploopd.daemon.layout import Layout
from fploopd.daemon.pgjournal import PgJournal
from fploopd.errors import InputError


@pytest.fixture(params=["sqlite", "postgresql"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Journal:
    if request.param == "sqlite":
        j = Journal(tmp_path / ".fploopd" / "journal.sqlite3", "test", host="a", lease_s=5)
    else:
        j = PgJournal(request.getfixturevalue("pg_server").new_database(), "test", host="a", lease_s=5)
    yield j
    j.close()


def add(journal: Journal, job_id: str, name: str, priority: int = 0) -> None:
    src = f"inbox/loop/{name}.json"
    journal.open_claim(job_id, name, {"moves": [{"field": "sidecar", "src": src, "dst": f".fploopd/work/{job_id}/inputs/{name}.json"}]})
    journal.close_claim(job_id, name=name, pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=[], priority=priority)


def test_both_stores_keep_the_same_records_and_transitions(journal: Journal) -> None:
    add(journal, "1", "Cat")
    add(journal, "2", "dog", priority=5)
    assert journal.get("cat").id == "1" and journal.name_taken("CAT")  # names are case-insensitive
    job = journal.claim_next("w")
    assert job is not None and (job.id, job.state, job.fence, job.host) == ("2", JobState.RUNNING, 1, "a")
    with pytest.raises(IllegalTransition):
        journal.transition("1", JobState.DONE)  # queued -> done is not in the contract
    journal.transition("2", JobState.DONE, expect=JobState.RUNNING, fence=1, outputs=[{"file": "x.mp4"}])
    assert journal.get("2").lease_until is None and journal.get("2").outputs == [{"file": "x.mp4"}]
    assert [e["what"] for e in journal.events("2")] == ["claim", "queued", "running", "done"]
    journal.set_daemon("workers", {"cpu": {"state": "ready"}})
    journal.set_daemon("workers", {"cpu": {"state": "busy"}})
    assert journal.daemon_state() == {"workers": {"cpu": {"state": "busy"}}}
    journal.set_waiting([{"sidecar": "inbox/a.json"}, {"sidecar": "inbox/a.json"}])
    assert journal.waiting() == [{"sidecar": "inbox/a.json"}]


def test_an_eligible_job_is_found_past_a_page_of_others(journal: Journal) -> None:
    for i in range(CHOICES + 2):
        add(journal, f"s{i:03d}", f"styled-{i}")
    add(journal, "z-plain", "plain")  # last in the queue, whatever the clock's resolution
    job = journal.claim_next("group", eligible=lambda j: j.name == "plain")
    assert job is not None and job.id == "z-plain" and job.state == JobState.RUNNING
    assert journal.claim_next("group", eligible=lambda j: j.name == "plain") is None


def test_a_lost_lease_fences_the_run_out(journal: Journal) -> None:
    add(journal, "1", "cat")
    job = journal.claim_next("w")
    assert job is not None and journal.renew([("1", 1)]) == []
    (requeued,) = journal.expire_leases(now=time.time() + 60)  # the host stopped renewing
    assert requeued.state is JobState.QUEUED and requeued.attempts == 1 and requeued.error.kind == "interrupted"
    again = journal.claim_next("w2")
    assert again is not None and again.fence == 2
    assert journal.renew([("1", 1)]) == ["1"] and not journal.holds("1", 1) and journal.holds("1", 2)
    with pytest.raises(LeaseLost):  # the first run's late result
        journal.transition("1", JobState.DONE, expect=JobState.RUNNING, fence=1)
    assert journal.transition("1", JobState.DONE, expect=JobState.RUNNING, fence=2).state is JobState.DONE


def test_migrate_moves_a_sqlite_journal_to_postgresql(tmp_path: Path, pg_server: pg_util.PgServer) -> None:
    root = make_root(tmp_path, journal="")
    journal = Journal(root / ".fploopd" / "journal.sqlite3", "test")
    add(journal, "1", "cat")
    add(journal, "2", "dog")
    journal.claim_next("w")
    journal.close()
    url = pg_server.new_database()
    result = fploopd("journal", "migrate", "--to", url, root=root)
    assert result.returncode == 0, result.stderr
    assert "moved 2 jobs, 5 events" in result.stdout
    assert not (root / ".fploopd" / "journal.sqlite3").exists()
    assert list((root / ".fploopd").glob("journal.sqlite3.migrated-*"))  # kept, aside
    shown = fploopd("status", "--json", "--journal", url, root=root)
    assert shown.returncode == 0, shown.stderr
    assert sorted((v["name"], v["state"]) for v in json.loads(shown.stdout)) == [("cat", "running"), ("dog", "queued")]
    pg = PgJournal(url, "test", host="b")
    add(pg, "3", "eel")  # the numbering of events goes on
    assert pg.events("3")[0]["what"] == "claim" and len(pg_util.rows(url, "SELECT seq FROM events")) == 7
    pg.close()
    again = fploopd("journal", "migrate", "--to", url, root=root)
    assert again.returncode != 0  # nothing left to move, and the target is not empty


def test_doctor_checks_a_postgresql_journal(tmp_path: Path, pg_server: pg_util.PgServer) -> None:
    url = pg_server.new_database()
    PgJournal(url, "test", host="a").close()  # the schema made
    root = make_root(tmp_path, journal=url)
    result = fploopd("doctor", "--json", root=root, environ=env())
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["journal"]["status"] == "ok" and "PostgreSQL" in checks["journal"]["detail"]
    assert checks["journal schema"]["status"] == "ok" and checks["clock skew"]["status"] == "ok"
    gone = fploopd("doctor", "--json", "--journal", "postgresql://fploopd@/nosuchdb?host=/nonexistent", root=root)
    checks = {c["name"]: c for c in json.loads(gone.stdout)}
    assert checks["journal"]["status"] == "fail" and gone.returncode != 0


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/share rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 22 0:36 / /mnt/smb\\040box rw,relatime shared:21 - cifs //nas/box rw
42 40 8:2 / /mnt/share/local rw,relatime shared:22 - ext4 /dev/sdb1 rw
"""


def test_the_file_system_under_a_path_is_found_in_mountinfo() -> None:
    assert fs_type(Path("/mnt/share/fploopd/.fploopd"), MOUNTINFO) == "nfs4"
    assert fs_type(Path("/mnt/smb box/root"), MOUNTINFO) == "cifs"
    assert fs_type(Path("/mnt/share/local/root"), MOUNTINFO) == "ext4"  # the longest mount point wins
    assert fs_type(Path("/mnt/shared"), MOUNTINFO) == "ext4"  # a prefix of a name is not a parent
    assert is_network("nfs4") and is_network("cifs") and is_network("fuse.sshfs") and not is_network("ext4")


def test_a_claim_left_halfway_by_a_dead_host_is_finished_by_another(tmp_path: Path, pg_server: pg_util.PgServer) -> None:
    url = pg_server.new_database()
    root = make_root(tmp_path, journal=url)
    layout = Layout(root)
    sidecar, media = root / "inbox" / "loop" / "half.json", root / "inbox" / "loop" / "half.png"
    sidecar.write_text("{not json")
    media.write_bytes(b"the picture")
    host_a = PgJournal(url, "a", host="a", lease_s=0.5)
    drop = Drop(sidecar=sidecar, error=InputError("half.json is not JSON", file="half.json"), extra=(media,), pipeline="loop")
    record = claim_record(drop, layout, "halfjob")
    host_a.open_claim("halfjob", "half", record)
    first_move(record, layout, host_a, "halfjob")  # the sidecar moved; then host a dies
    host_a.close()
    host_b = PgJournal(url, "b", host="b", lease_s=0.5)
    (job,) = wait_for(lambda: finish_stale_claims(layout, host_b), 10, "the stale claim taken over")
    assert job.state is JobState.FAILED and sorted(i["name"] for i in job.inputs) == ["half.json", "half.png"]
    assert host_b.open_claims() == [] and not sidecar.exists() and not media.exists()
    assert (layout.inputs_dir("halfjob") / "half.png").read_bytes() == b"the picture"
    assert finish_stale_claims(layout, host_b) == []
    host_b.close()
