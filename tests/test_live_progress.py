"""The pieces of live progress that need no daemon: the ETA's arithmetic, section timing, the live
preview writer, and the web address check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fploopd.daemon.livepreview import LivePreview
from fploopd.daemon.progressfiles import Track, steps_left
from fploopd.daemon.settings import Settings, SettingsError
from fploopd.web.server import web_address


def test_steps_left_counts_this_section_later_sections_and_generations() -> None:
    p = {"phase": "sample", "generation": 1, "generations": 2, "section": 2, "sections": 3, "step": 5, "steps": 25}
    assert steps_left(p) == 20 + 25 + 3 * 25
    assert steps_left({**p, "generation": 2, "section": 3, "step": 25}) == 0
    assert steps_left({"phase": "decode", "done": 1, "total": 4}) is None


def test_track_times_steps_and_sections() -> None:
    track = Track()
    report = {"phase": "sample", "generation": 1, "section": 1, "sections": 2, "steps": 4}
    assert track.observe({**report, "step": 0}, now=10.0) is None
    track.observe({**report, "step": 1}, now=12.0)
    track.observe({**report, "step": 3}, now=16.0)  # two steps in 4 s: reports may skip
    assert track.step_s() == pytest.approx(2.0)
    finished = track.observe({**report, "section": 2, "step": 0}, now=19.0)
    assert finished == pytest.approx(9.0)  # section 1 ran from 10 s to 19 s
    assert track.observe({"phase": "decode", "done": 0, "total": 3}, now=25.0) == pytest.approx(6.0)


def test_live_preview_draws_every_section_even_when_they_come_faster_than_it_writes(tmp_path: Path) -> None:
    target = tmp_path / "progress" / "job.webp"
    preview = LivePreview(target, min_interval_s=60.0)  # only the first write and the last may happen
    for section in range(1, 4):
        preview.add(section, 3, 1, torch.randn(1, 16, 2, 8, 12))
    preview.close()
    with Image.open(target) as im:
        assert im.format == "WEBP" and im.n_frames == 6 and im.size == (12 * 6, 8 * 6)  # small latents are enlarged
    assert sorted(p.name for p in target.parent.iterdir()) == ["job.webp"]  # no temporary file left


def test_web_address_is_loopback_unless_a_token_is_set() -> None:
    assert web_address(Settings(http="127.0.0.1:8787")).port == 8787
    assert web_address(Settings(http="[::1]:0")).host == "::1"
    assert web_address(Settings(http="localhost:80")).loopback
    with pytest.raises(SettingsError, match="http_token"):
        web_address(Settings(http="0.0.0.0:8787"))
    assert web_address(Settings(http="0.0.0.0:8787", http_token="t")).token == "t"
    with pytest.raises(SettingsError, match="HOST:PORT"):
        web_address(Settings(http="8787"))
