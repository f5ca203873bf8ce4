"""[obs] and [[hooks]] in fploopd.toml: validated like every setting, nothing reaches another machine
unless the toml says so; a journal from before hooks does not fire them for old deliveries."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from fploopd.daemon import hookstore
from fploopd.daemon.journal import SCHEMA_VERSION, Journal
from fploopd.daemon.settings import Settings, SettingsError, load_settings


def settings_with(tmp_path: Path, toml: str, env: dict[str, str] | None = None) -> Settings:
    (tmp_path / "fploopd.toml").write_text(toml)
    return load_settings(tmp_path, env=env or {})


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('[[hooks]]\nurl = "http://example.com/in"', "allow_remote = true"),
        ('[[hooks]]\nurl = "http://10.0.0.5/in"', "reaches another machine"),
        ('[obs]\nurl = "ws://192.168.1.20:4455"', "reaches another machine"),
        ('[[hooks]]\nrun = ["x"]\nurl = "http://127.0.0.1/in"', "not both"),
        ("[[hooks]]\non = [\"done\"]", "neither"),
        ('[[hooks]]\nrun = ["x", "{manfest}"]', "unknown placeholder {manfest}"),
        ('[[hooks]]\nrun = ["x"]\ntimeout = 5', "timeout"),
        ('[[hooks]]\nrun = ["x"]\non = ["finished"]', "hooks.0.on"),
        ('[[hooks]]\nname = "a"\nrun = ["x"]\n[[hooks]]\nname = "a"\nrun = ["y"]', "two hooks are named 'a'"),
        ('[obs]\ninputs = { "bad.name" = "Loop" }', "obs.inputs"),
        ('[obs]\npasword = "x"', "pasword"),
    ],
)
def test_bad_hook_and_obs_settings_are_refused_with_the_reason(tmp_path: Path, toml: str, says: str) -> None:
    with pytest.raises(SettingsError) as exc:
        settings_with(tmp_path, toml)
    assert says in exc.value.message


def test_remote_only_when_the_toml_says_so_and_the_password_from_the_environment(tmp_path: Path) -> None:
    settings = settings_with(
        tmp_path,
        '[obs]\nurl = "ws://10.0.0.7:4456"\nallow_remote = true\ninputs = { loop = "Loop" }\n'
        '[[hooks]]\nurl = "https://assets.example.com/in"\nallow_remote = true\nsecret = "s3"\npipeline = "loop"\n',
        env={"FPLOOPD_OBS_PASSWORD": "hunter2"},
    )
    assert (settings.obs.host, settings.obs.port, settings.obs.password) == ("10.0.0.7", 4456, "hunter2")
    (hook,) = settings.hooks
    assert hook.pipeline == ("loop",) and hook.on == ("done",)
    assert "hunter2" not in repr(settings) and "s3" not in repr(settings)  # logs never show secrets
    assert hook.matches("done", "loop", "loop") and not hook.matches("done", "connect", "connect")
    assert not hook.matches("failed", "loop", "loop")


def test_a_journal_from_before_hooks_does_not_fire_them_for_old_deliveries(tmp_path: Path) -> None:
    path = tmp_path / ".fploopd" / "journal.sqlite3"
    journal = Journal(path, "test")
    journal.open_claim("old", "old", {"moves": []})
    journal.close_claim("old", name="old", pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=[])
    journal.db.execute("UPDATE jobs SET state = 'done', delivered_at = 1000.0 WHERE id = 'old'")
    journal.db.executescript("DROP TABLE hook_runs; DROP TABLE hook_rounds; PRAGMA user_version = 2;")  # as version 2 left it
    journal.close()

    journal = Journal(path, "test")  # the migration to 3
    assert journal.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION  # migrated through 3
    assert hookstore.unplanned(journal) == []
    journal.open_claim("new", "new", {"moves": []})
    journal.close_claim("new", name="new", pipeline="loop", spec={"prompt": ""}, seeds=[1], inputs=[])
    journal.db.execute("UPDATE jobs SET state = 'done', delivered_at = ? WHERE id = 'new'", (time.time(),))
    assert [j.name for j in hookstore.unplanned(journal)] == ["new"]
    journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT job_id, delivered_at FROM hook_rounds").fetchall() == [("old", 1000.0)]
