"""The small commands, as a user types them: init, status, doctor."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from daemon_util import fploopd, make_root

from fploopd.daemon.journal import Journal


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


def doctor(root: Path, *flags: str) -> tuple[int, dict[str, dict[str, str]]]:
    result = fploopd("doctor", "--json", *flags, root=root)
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)}


def test_doctor_checks_the_model_the_roots_settings_name(tmp_path: Path) -> None:
    root = make_root(tmp_path)  # fploopd.toml says model = "tiny"
    code, checks = doctor(root)
    assert checks["models"]["status"] == "ok" and "model tiny" in checks["models"]["detail"]
    assert checks["settings"]["status"] == "ok" and str(root / "fploopd.toml") in checks["settings"]["detail"]
    empty = tmp_path / "weights"
    empty.mkdir()
    (root / "fploopd.toml").write_text(f'model = {json.dumps(str(empty))}\ndevice = "cpu"\n')
    code, checks = doctor(root)
    assert code == 1 and checks["models"]["status"] == "fail"
    assert "missing" in checks["models"]["detail"] and "hf download lllyasviel/FramePackI2V_HY" in checks["models"]["fix"]
    (root / "fploopd.toml").write_text("model = tiny\n")  # not TOML: the daemon would refuse to start
    code, checks = doctor(root, "--model", "tiny")
    assert code == 1 and checks["settings"]["status"] == "fail" and "not valid TOML" in checks["settings"]["detail"]
    assert checks["models"]["status"] == "ok"  # the rest is still checked


def test_doctor_checks_that_claims_and_deliveries_can_rename(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    root = make_root(tmp_path)
    if not other.is_dir() or os.stat(other).st_dev == os.stat(root).st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    code, checks = doctor(root)
    assert checks["one file system"]["status"] == "ok"
    elsewhere = Path(tempfile.mkdtemp(dir=other))
    try:
        work = root / ".fploopd" / "work"
        work.parent.mkdir(exist_ok=True)
        work.symlink_to(elsewhere, target_is_directory=True)  # the work dirs on another disk
        code, checks = doctor(root)
        fs = checks["one file system"]
        assert code == 1 and fs["status"] == "fail" and ".fploopd/work" in fs["detail"] and "one file system" in fs["fix"]
    finally:
        shutil.rmtree(elsewhere)


def test_doctor_checks_the_journal_read_only(tmp_path: Path) -> None:
    root = make_root(tmp_path, journal="")  # the SQLite file (also under FPLOOPD_TEST_JOURNAL=pg)
    code, checks = doctor(root)
    assert checks["journal"]["status"] == "ok" and "no journal yet" in checks["journal"]["detail"]
    journal = root / ".fploopd" / "journal.sqlite3"
    Journal(journal, "test").close()
    before = journal.read_bytes()
    code, checks = doctor(root)
    assert checks["journal"]["status"] == "ok" and "quick_check ok" in checks["journal"]["detail"]
    assert journal.read_bytes() == before
    journal.write_bytes(b"not a database at all" * 100)
    code, checks = doctor(root)
    assert code == 1 and checks["journal"]["status"] == "fail" and "damaged" in checks["journal"]["detail"]
    assert f"fploopd journal recover --root {root}" in checks["journal"]["fix"]
    journal.unlink()
    (root / "failed" / "old").mkdir()
    (root / "failed" / "old" / "error.json").write_text('{"job": "j1", "kind": "input", "error": "x"}')
    code, checks = doctor(root)  # lost: the root shows it had one
    assert code == 1 and checks["journal"]["status"] == "fail" and "missing" in checks["journal"]["detail"]
    assert "fploopd journal recover" in checks["journal"]["fix"]


def test_doctor_counts_the_loras_and_names_a_missing_lora_dir(tmp_path: Path) -> None:
    from fploopd.daemon import doctor
    from fploopd.daemon.rootinit import init_root
    from fploopd.daemon.settings import Settings

    init_root(tmp_path)
    (tmp_path / "loras" / "a.safetensors").write_bytes(b"x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "b.safetensors").write_bytes(b"x")
    settings = Settings(root=tmp_path, model="tiny", device="cpu", lora_dirs=("mine", "gone"))
    loras = [c for c in doctor.run_checks(settings) if c.name == "loras"]
    assert [(c.status, c.detail) for c in loras] == [
        ("fail", f"lora_dirs: {tmp_path / 'gone'} is not a folder"),
        ("ok", "2 LoRA file(s) in loras/, mine/, gone/"),
    ]
