"""The small commands, as a user types them: init, status, doctor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from daemon_util import fploopd


def test_init_is_idempotent_and_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "r"
    first = fploopd("init", root=root)
    assert first.returncode == 0, first.stderr
    for folder in ("inbox/loop", "inbox/connect", "inbox/video2loop", "outbox", "failed", "archive", "profiles"):
        assert (root / folder).is_dir()
    assert sorted(p.name for p in (root / "profiles").glob("*.json")) == ["default.json", "fast.json", "quality.json"]
    assert "# model = " in (root / "fploopd.toml").read_text()
    (root / "fploopd.toml").write_text('model = "tiny"\n')
    (root / "profiles" / "fast.json").write_text('{"steps": 3}')
    second = fploopd("init", root=root)
    assert second.returncode == 0 and "nothing to create" in second.stdout
    assert (root / "fploopd.toml").read_text() == 'model = "tiny"\n'
    assert (root / "profiles" / "fast.json").read_text() == '{"steps": 3}'
    assert (root / "fploopd.toml").stat().st_mode & 0o044 == 0o044  # readable by the group and others, like any file


def test_status_of_a_root_without_jobs(tmp_path: Path) -> None:
    assert json.loads(fploopd("status", "--json", root=tmp_path).stdout) == []
    assert "no jobs yet" in fploopd("status", root=tmp_path).stdout
    missing = fploopd("cancel", "nope", root=tmp_path)
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr


def test_doctor_says_what_to_fix(tmp_path: Path) -> None:
    result = fploopd("doctor", "--json", "--model", "tiny", "--device", "cpu", root=tmp_path / "absent")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert result.returncode == 1 and checks["root"]["status"] == "fail" and "fploopd init" in checks["root"]["fix"]
    assert checks["python"]["status"] == "ok" and checks["encoder libx264"]["status"] == "ok"


def test_doctor_reports_the_kernel_cache_and_warns_when_it_is_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fploopd.daemon import doctor
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.settings import Settings

    layout = Layout(tmp_path)
    for folder, n in ((layout.compile_cache / "fxgraph" / "ab", 3), (layout.attention_cache, 1)):
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"k{i}.bin").write_bytes(bytes(2**20))
    settings = Settings(root=tmp_path, model="tiny", device="cpu")
    cache = next(c for c in doctor.run_checks(settings) if c.name == "kernel cache")
    assert cache.status == "ok" and cache.detail.startswith("0.00 GiB") and str(layout.caches) in cache.detail
    monkeypatch.setattr(doctor, "CACHE_WARN_GIB", 3.5 / 1024)  # 4 MiB written, 3.5 MiB allowed
    cache = next(c for c in doctor.run_checks(settings) if c.name == "kernel cache")
    assert cache.status == "warn" and f"delete {layout.caches}" in cache.fix
