"""A real OBS Studio (Debian's obs-studio, obs-websocket 5), driven only by fploopd: after each
delivery its media source plays the newest loop. OBS runs headless under Xvfb inside a private
network namespace with only loopback (tests/obs/run-with-obs): it reaches for the internet when it
starts. The test runs itself again inside that harness; `.ci/run` installs OBS."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_util import SMALL, Daemon, drop, fploopd, image_bytes, jobs, make_root, wait_for
from PIL import Image, ImageStat

HARNESS = Path(__file__).parent / "obs" / "run-with-obs"
INSIDE = "OBS_WS_URL" in os.environ
INPUT = "Loop"


def _free_display() -> str:
    """An X display number no other Xvfb on this machine uses (the X socket folder is shared)."""
    for n in range(77, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return str(n)
    pytest.fail("no free X display number")


def _run_inside_obs() -> None:
    missing = [tool for tool in ("obs", "Xvfb", "unshare", "ip") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"OBS cannot run here ({', '.join(missing)} missing; .ci/run installs obs-studio and xvfb)")
    if os.geteuid() != 0:
        pytest.skip("the OBS harness needs root (a private network namespace)")
    test = f"{Path(__file__).resolve()}::test_a_real_obs_plays_each_new_loop"
    result = subprocess.run(
        [str(HARNESS), sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
        env={**os.environ, "OBS_DISPLAY": _free_display()},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-3000:]  # it ran, not skipped


def _client() -> Any:
    import obsws_python as obs

    port = int(os.environ["OBS_WS_URL"].rsplit(":", 1)[1])
    return obs.ReqClient(host="127.0.0.1", port=port, password=os.environ.get("OBS_WS_PASSWORD", ""), timeout=5)


def _delivered(root: Path, name: str) -> Path:
    (job,) = wait_for(lambda: [j for j in jobs(root) if j["name"] == name and j["state"] == "done" and j["delivered_at"]], 150, f"{name} delivered")
    return root / "outbox" / name / next(o["file"] for o in job["outputs"] if o["kind"] == "1loop")


def _plays(cl: Any, path: Path) -> bool:
    """OBS's input has ``path`` as its file and plays it."""
    settings = cl.get_input_settings(INPUT).input_settings
    return settings.get("local_file") == str(path) and cl.get_media_input_status(INPUT).media_state == "OBS_MEDIA_STATE_PLAYING"


def _not_blank(cl: Any) -> bool:
    data = cl.get_source_screenshot(INPUT, "png", 160, 96, -1).image_data
    image = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB")
    return max(ImageStat.Stat(image).stddev) > 2.0  # the loop's shapes, not one flat colour


def test_a_real_obs_plays_each_new_loop(tmp_path: Path) -> None:
    if not INSIDE:
        _run_inside_obs()
        return
    cl = _client()
    cl.create_scene("Stream")
    cl.set_current_program_scene("Stream")
    cl.create_input("Stream", INPUT, "ffmpeg_source", {"local_file": "", "looping": False}, True)

    root = make_root(tmp_path)
    with open(root / "fploopd.toml", "a") as f:
        f.write(f'\n[obs]\nurl = "{os.environ["OBS_WS_URL"]}"\ninputs = {{ loop = "{INPUT}" }}\n')
    doctor = fploopd("doctor", "--json", root=root)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert checks["obs"]["status"] == "ok" and "OBS 29" in checks["obs"]["detail"], checks.get("obs")
    assert checks[f"obs input {INPUT}"]["status"] == "ok", checks[f"obs input {INPUT}"]

    daemon = Daemon(root)
    try:
        drop(root, "first", {"prompt": "", **SMALL, "seed": 1}, media=image_bytes(1))
        first = _delivered(root, "first")
        wait_for(lambda: _plays(cl, first), 60, "OBS playing the first loop")
        assert cl.get_input_settings(INPUT).input_settings["looping"] is True
        wait_for(lambda: _not_blank(cl), 30, "a screenshot of the input that is not blank")

        drop(root, "second", {"prompt": "", **SMALL, "seed": 2}, media=image_bytes(7))
        second = _delivered(root, "second")
        wait_for(lambda: _plays(cl, second), 60, "OBS playing the second loop")
        wait_for(lambda: _not_blank(cl), 30, "a screenshot of the second loop that is not blank")
        assert (root / "outbox" / "latest" / "loop.mp4").read_bytes() == second.read_bytes()
    finally:
        assert daemon.stop() == 0, daemon.output()[-3000:]
    assert "OBS input 'Loop' now plays first_1_1loop.mp4" in daemon.output()

    # Pointed elsewhere by hand, `fploopd obs test` brings the newest loop back.
    cl.set_input_settings(INPUT, {"local_file": str(first)}, True)
    shown = fploopd("obs", "test", root=root)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"now plays {second}" in shown.stdout
    wait_for(lambda: _plays(cl, second), 60, "OBS playing the second loop again")
