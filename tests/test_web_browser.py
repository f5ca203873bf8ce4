"""The web page and status.html in a real browser: Debian's Chromium, headless, driven by Playwright
(never a downloaded browser). The daemon runs for real on the tiny model with ``--http``; the job is
submitted through the page's form, its progress bar followed to done, its loop played."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from daemon_util import SMALL, Daemon, env, image_bytes, jobs, make_root, wait_for
from web_util import free_port, reachable

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("FPLOOPD_TEST_SCREENSHOTS", "/tmp/fploopd-screenshots"))

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() or shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")


@pytest.fixture
def browser(tmp_path: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1600, "height": 1000}, color_scheme="dark",
        )
        try:
            yield context
        finally:
            context.close()


def test_submit_watch_and_play_in_chromium(tmp_path: Path, browser) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    root = make_root(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    image = tmp_path / "sunset.png"
    image.write_bytes(image_bytes(4))
    daemon = Daemon(root, "--http", f"127.0.0.1:{port}", environ=env(FPLOOPD_TEST_STEP_DELAY_S="0.5"))
    try:
        wait_for(lambda: (r := reachable(base + "healthz")) is not None and r.status == 200, 120, "a healthy daemon")
        page = browser.new_page()
        page.goto(base)
        page.set_input_files("#media", str(image))
        page.fill("textarea[name=prompt]", "the sun sets slowly over the sea")
        page.fill("input[name=seed]", "11")
        page.click("details summary")
        page.fill("textarea[name=settings]", json.dumps(SMALL))
        page.screenshot(path=str(SHOTS / "1-form.png"))
        page.click("#submit-button")
        page.wait_for_selector("#submit-result.ok", timeout=30_000)
        assert "sunset" in page.inner_text("#submit-result")

        # While it runs: a live card with a progress bar (and, after a section, the preview).
        page.wait_for_selector('.card.live[data-job="sunset"] .bar[data-state="running"]', timeout=120_000)
        page.wait_for_selector('.card.live[data-job="sunset"] img.preview', timeout=60_000)
        page.screenshot(path=str(SHOTS / "2-running.png"))

        # Done: the bar is full, and the loop plays.
        page.wait_for_selector('.done-card[data-job="sunset"] .bar[data-state="done"]', timeout=180_000)
        assert page.get_attribute('.done-card[data-job="sunset"] .bar', "aria-valuenow") == "100"
        page.wait_for_function('() => { const v = document.querySelector(\'video[data-job="sunset"]\'); return v && v.readyState >= 2; }', timeout=60_000)
        page.screenshot(path=str(SHOTS / "3-done.png"))
        (job,) = jobs(root)
        assert job["state"] == "done" and job["spec"]["prompt"] == "the sun sets slowly over the sea" and job["seeds"] == [11]

        # status.html, opened from the disk as someone on the share would: it lists the job.
        wait_for(lambda: (root / "status.html").is_file() and 'data-state="done"' in (root / "status.html").read_text(), 30, "status.html")
        disk = browser.new_page()
        disk.goto((root / "status.html").as_uri())
        row = disk.locator('#finished tr.job[data-state="done"]')
        assert row.count() == 1 and "sunset" in row.inner_text()
        disk.screenshot(path=str(SHOTS / "4-status-html.png"))
    finally:
        daemon.stop()
