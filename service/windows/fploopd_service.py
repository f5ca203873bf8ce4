"""fploopd as a Windows service (pywin32), around the same entry point as `fploopd run`.

Needs pywin32 in the same Python as fploopd (``pip install pywin32``, then, as Administrator,
``python -m pywin32_postinstall -install``). From an Administrator prompt:

    python fploopd_service.py configure --root \\\\nas\\video\\fploopd   (the root, as a UNC path)
    python fploopd_service.py --username .\\fploopd --password **** --startup auto install
    python fploopd_service.py start
    python fploopd_service.py stop        (warm: the running job checkpoints at its next step)
    python fploopd_service.py remove
    python fploopd_service.py debug       (run in this console; Ctrl-C to stop)

Use UNC paths (\\\\server\\share\\...), never mapped drive letters: a service runs in its own logon
session and cannot see the drives mapped in yours. Run it as an account that may read and write
the share (LocalSystem usually may not). Logs: ROOT\\.fploopd\\logs\\fploopd.log and the Event Log.
Settings: ROOT\\fploopd.toml, as for `fploopd run`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import servicemanager
    import win32event
    import win32service
    import win32serviceutil
except ImportError:  # pragma: no cover - pywin32 exists only on Windows
    sys.exit("fploopd_service.py needs pywin32 on Windows: pip install pywin32")

SERVICE_NAME = "fploopd"
ROOT_OPTION = "root"
STOP_WAIT_HINT_MS = 300_000  # the running job stops at its next sampling step; allow for a slow one


class FploopdService(win32serviceutil.ServiceFramework):
    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = "fploopd (FramePack loops from a watch folder)"
    _svc_description_ = "Makes seamless loop videos with FramePack from files dropped into an inbox folder."

    def __init__(self, args: list[str]) -> None:
        super().__init__(args)
        self.supervisor = None
        self.stop_requested = win32event.CreateEvent(None, 0, 0, None)

    def SvcStop(self) -> None:  # noqa: N802 - pywin32's name
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_WAIT_HINT_MS)
        win32event.SetEvent(self.stop_requested)
        if self.supervisor is not None:
            self.supervisor.request_stop()  # the same as a first SIGTERM: a warm stop

    def SvcDoRun(self) -> None:  # noqa: N802 - pywin32's name
        import multiprocessing

        # Inside the service, sys.executable is pythonservice.exe: spawned workers need python.exe.
        multiprocessing.set_executable(os.path.join(sys.exec_prefix, "python.exe"))
        from fploopd.daemon.layout import Layout
        from fploopd.daemon.settings import load_settings
        from fploopd.daemon.supervisor import run_daemon
        from fploopd.logs import configure_logging

        root = win32serviceutil.GetServiceCustomOption(SERVICE_NAME, ROOT_OPTION) or os.environ.get("FPLOOPD_ROOT")
        if not root:
            servicemanager.LogErrorMsg("fploopd: no root configured; run `fploopd_service.py configure --root \\\\server\\share\\fploopd`")
            return
        settings = load_settings(Path(root))
        configure_logging(level=settings.log_level, log_dir=Layout(settings.root).logs)
        servicemanager.LogInfoMsg(f"fploopd: starting on {settings.root}")

        def keep(supervisor: object) -> None:
            self.supervisor = supervisor
            if win32event.WaitForSingleObject(self.stop_requested, 0) == win32event.WAIT_OBJECT_0:
                supervisor.request_stop()  # type: ignore[attr-defined] - stopped while starting

        code = run_daemon(settings, install_signals=False, started=keep)
        servicemanager.LogInfoMsg(f"fploopd: stopped (exit {code})")


def configure(argv: list[str]) -> None:
    """``configure --root PATH``: store the root in the service's registry parameters."""
    if len(argv) != 2 or argv[0] != "--root":
        sys.exit("usage: fploopd_service.py configure --root \\\\server\\share\\fploopd")
    root = argv[1]
    if len(root) >= 2 and root[1] == ":" and not root.upper().startswith("C:"):
        print(f"warning: {root} looks like a mapped drive; services cannot see those, use a UNC path")
    win32serviceutil.SetServiceCustomOption(SERVICE_NAME, ROOT_OPTION, root)
    print(f"fploopd service root: {root}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "configure":
        configure(sys.argv[2:])
    elif len(sys.argv) == 1:
        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(FploopdService)
        servicemanager.StartServiceCtrlDispatcher()
    else:
        win32serviceutil.HandleCommandLine(FploopdService)
