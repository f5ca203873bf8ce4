"""Settings, sd_notify, the root lock: the service glue, unit by unit."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from daemon_util import Daemon, make_root, run_once, wait_for

from fploopd.daemon.service import Notifier, RootLock
from fploopd.daemon.settings import SETTINGS_TEMPLATE, Settings, SettingsError, load_settings


def test_settings_precedence_file_env_flags(tmp_path: Path) -> None:
    (tmp_path / "fploopd.toml").write_text('model = "tiny"\nsettle_s = 1.5\npoll = false\n[limits]\nmax_image_bytes = 1000\n')
    s = load_settings(tmp_path, env={})
    assert (s.model, s.settle_s, s.poll, s.limits.max_image_bytes) == ("tiny", 1.5, False, 1000)
    s = load_settings(tmp_path, env={"FPLOOPD_SETTLE_S": "2.5", "FPLOOPD_POLL": "true", "FPLOOPD_ROOT": "/elsewhere"})
    assert (s.settle_s, s.poll, s.root) == (2.5, True, tmp_path.absolute())
    s = load_settings(tmp_path, {"settle_s": 0.1, "model": None}, env={"FPLOOPD_SETTLE_S": "2.5"})
    assert (s.settle_s, s.model) == (0.1, "tiny")


def test_the_template_is_valid_and_all_defaults(tmp_path: Path) -> None:
    (tmp_path / "fploopd.toml").write_text(SETTINGS_TEMPLATE)
    assert load_settings(tmp_path, env={}) == Settings(root=tmp_path.absolute())


@pytest.mark.parametrize(
    ("text", "field"),
    [("modle = 'tiny'\n", "modle"), ("settle_s = -1\n", "settle_s"), ("[limits]\nmax_image_bytes = 0\n", "limits"), ("x = \n", None)],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, text: str, field: str | None) -> None:
    (tmp_path / "fploopd.toml").write_text(text)
    with pytest.raises(SettingsError) as exc:
        load_settings(tmp_path, env={})
    assert exc.value.file == str(tmp_path / "fploopd.toml")
    if field:
        assert exc.value.field == field and field in exc.value.message


def test_devices() -> None:
    assert Settings(device="cpu").devices() == ["cpu"]
    assert Settings(device="cuda").devices() == ["cuda:0"]
    assert Settings(device="cuda:0, cuda:1").devices() == ["cuda:0", "cuda:1"]
    assert Settings(device="auto").devices()[0] in ("cpu", "cuda:0")


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_datagrams(tmp_path: Path, abstract: bool) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"\0fploopd-test-{os.getpid()}" if abstract else str(tmp_path / "notify")
    server.bind(address)
    server.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": "@" + address[1:] if abstract else address, "WATCHDOG_USEC": "2000000"})
    assert n.watchdog_s == 1.0
    n.ready("watching")
    n.status("job cat: sample section 1/2")
    n.status("job cat: sample section 1/2")  # unchanged: not sent again
    n.status("job cat: sample section 2/2")  # too soon after the last: not sent
    n.beat()
    n.stopping("stopping")
    got = [server.recv(4096).decode() for _ in range(4)]
    assert got[0].startswith("READY=1\nSTATUS=watching\nMAINPID=")
    assert got[1:] == ["STATUS=job cat: sample section 1/2", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]
    server.close()


def test_notifier_is_silent_outside_systemd_and_for_other_pids() -> None:
    Notifier({}).ready("x")  # no socket: nothing happens
    assert Notifier({"NOTIFY_SOCKET": "/nowhere", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def test_one_lock_per_root(tmp_path: Path) -> None:
    a, b = RootLock(tmp_path / "daemon.lock"), RootLock(tmp_path / "daemon.lock")
    assert a.acquire()
    assert not b.acquire() and b.holder() == str(os.getpid())
    a.release()
    assert b.acquire()
    b.release()


def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(tmp_path: Path) -> None:
    root = make_root(tmp_path, journal="")  # one daemon per root: the single-host lock
    lock_file = root / ".fploopd" / "daemon.lock"
    daemon = Daemon(root)
    try:
        wait_for(lambda: "fploopd watching" in daemon.output() or daemon.proc.poll() is not None, 60, "the daemon to start")
        assert daemon.proc.poll() is None, daemon.output()
        assert lock_file.read_text().strip() == str(daemon.proc.pid)  # shown for people
        lock_file.unlink()
        second = run_once(root)
        assert second.returncode == 2 and "another fploopd daemon" in second.stderr, second.stderr
    finally:
        assert daemon.stop() == 0
    again = run_once(root)  # the OS released the lock with the daemon: nothing stale is left
    assert again.returncode == 0, again.stderr


def test_workers_load_models_with_the_compile_vae_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fploopd.daemon.worker import load_models
    from fploopd.engine import components

    seen: dict = {}
    monkeypatch.setattr(components, "load_components", lambda paths, device, **kw: seen.update(kw, device=device))
    (tmp_path / "fploopd.toml").write_text('model = "tiny"\ncompile_vae = false\n')
    load_models(load_settings(tmp_path, env={}), "cpu")
    assert seen["compile_vae"] is False and seen["device"] == "cpu"
    load_models(load_settings(tmp_path, env={"FPLOOPD_COMPILE_VAE": "true"}), "cpu")
    assert seen["compile_vae"] is True
    assert Settings().compile_vae is True  # the daemon's long-lived workers compile by default


def test_workers_keep_compiled_kernels_under_the_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from fploopd.daemon.layout import Layout
    from fploopd.daemon.worker import use_compile_cache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    use_compile_cache(Layout(tmp_path))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / ".fploopd" / "cache" / "torch")
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / ".fploopd" / "cache" / "flash_attn_cute")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")  # an operator's choice wins
    use_compile_cache(Layout(tmp_path))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"


def _start_a_helper() -> None:
    """A worker's body that starts a process of its own, as the compile helper is started."""
    import multiprocessing

    helper = multiprocessing.get_context("spawn").Process(target=int)
    helper.start()
    helper.join()
    raise SystemExit(helper.exitcode)


def test_a_worker_may_start_processes_of_its_own() -> None:
    # A daemonic worker could not: its first job with a compile helper failed with "daemonic
    # processes are not allowed to have children" on every GPU.
    import multiprocessing

    from fploopd.daemon.workerpool import spawn_worker

    worker = spawn_worker(multiprocessing.get_context("spawn"), _start_a_helper, (), "fploopd-worker-test")
    worker.join(timeout=120)
    assert worker.exitcode == 0


class _Helper:
    """Stands in for ``CompileAhead``: records that the worker took its reports."""

    def __init__(self) -> None:
        self.polled = threading.Event()

    def poll(self) -> None:
        self.polled.set()


def test_an_idle_worker_takes_its_compile_helpers_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The warm mark is written when the helper's last report is taken. A worker that took them only
    # at its next job's start left the cache unmarked however long it waited (the bench waited 6
    # minutes for it on 4 x H200 in vain).
    import multiprocessing
    import signal
    import types

    from fploopd.daemon import messages as m
    from fploopd.daemon import worker as worker_module

    helper = _Helper()
    components = types.SimpleNamespace(compile_ahead=helper, identity="stub")
    monkeypatch.setattr(worker_module, "load_models", lambda settings, device, name=None: components)
    parent, child = multiprocessing.Pipe()

    def stop_once_polled() -> None:
        helper.polled.wait(timeout=30)
        parent.send(m.Exit())

    stopper = threading.Thread(target=stop_once_polled, daemon=True)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    settings = load_settings(tmp_path, env={"FPLOOPD_COMPILE_AHEAD": "false"})
    stopper.start()
    try:
        assert worker_module.Worker(settings, "cpu", child).serve() == 0
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        stopper.join(timeout=60)
    assert helper.polled.is_set()
    assert isinstance(parent.recv(), m.Ready)
    # Its heartbeat stopped with it: nothing writes to the pipe once it is closed (its descriptor
    # would be another file's by then).
    assert not any(t.name == "heartbeat" and t.is_alive() for t in threading.enumerate())
    parent.close()
    child.close()
