"""Log files follow the chosen level: no DEBUG lines in .fploopd/logs unless DEBUG is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from daemon_util import drop, env, image_bytes, make_root, outbox_jobs, run_once

SNIPPET = """
import sys
from pathlib import Path
from loguru import logger
from fploopd.logs import configure_logging
configure_logging(sys.argv[1], Path(sys.argv[2]))
logger.debug("a debug line")
logger.info("an info line")
logger.warning("a warning line")
"""


def log_lines(folder: Path) -> list[str]:
    return [line for f in sorted(folder.glob("*.log")) for line in f.read_text().splitlines()]


def levels(lines: list[str]) -> set[str]:
    return {line.split()[2] for line in lines if len(line.split()) > 2}


def test_a_daemon_at_info_writes_no_debug_lines_to_its_log_files(tiny_root, tmp_path):
    # Loading the model and writing videos log at DEBUG: a real job exercises both.
    root = make_root(tmp_path, log_level="INFO")
    drop(root, "calm", media=image_bytes(1))
    done = run_once(root, environ=env(FPLOOPD_CACHE=os.environ["FPLOOPD_CACHE"]))
    assert done.returncode == 0, done.stderr
    assert outbox_jobs(root) == ["calm"]
    logs = root / ".fploopd" / "logs"
    assert {p.name for p in logs.glob("*.log")} >= {"fploopd.log", "worker-cpu.log"}
    lines = log_lines(logs)
    assert "INFO" in levels(lines)
    assert "DEBUG" not in levels(lines), [line for line in lines if " DEBUG " in line][:3]


def test_the_file_follows_the_level_both_ways(tmp_path):
    for level in ("DEBUG", "INFO", "WARNING"):
        folder = tmp_path / level
        subprocess.run([sys.executable, "-c", SNIPPET, level, str(folder)], check=True, capture_output=True)
        text = (folder / "fploopd.log").read_text()
        assert ("a debug line" in text) == (level == "DEBUG")
        assert ("an info line" in text) == (level != "WARNING")
        assert "a warning line" in text
