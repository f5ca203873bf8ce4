"""Progress outside sampling: encode, decode and write count their work; a finished job says "done"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fploopd.media import write_mp4
from fploopd.pipelines import run_job
from fploopd.pipelines.progress import Progress, progress_text
from fploopd.spec import JobSpec

QUICK = {"prompt": "waves", "resolution": 64, "window": 2, "steps": 2}


@pytest.fixture
def image(tmp_path) -> Path:
    y, x = np.mgrid[0:64, 0:80]
    path = tmp_path / "in.png"
    Image.fromarray(np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def run(spec: JobSpec, inputs: dict[str, Path], components, tmp_path: Path, seeds: list[int]) -> list[dict]:
    """Every report of one job, as the daemon stores them (``dataclasses.asdict``)."""
    reports: list[dict] = []
    run_job(spec, inputs, tmp_path / "out", name="job", seeds=seeds, components=components,
            work_dir=tmp_path / "work", progress=lambda p: reports.append(dataclasses.asdict(p)))  # fmt: skip
    return reports


def counts(reports: list[dict], phase: str, generation: int = 1) -> list[tuple[int, int, str]]:
    return [(r["done"], r["total"], r["unit"]) for r in reports if r["phase"] == phase and r["generation"] == generation]


def assert_counts_up_to_the_total(seen: list[tuple[int, int, str]], unit: str) -> None:
    assert seen, "no reports"
    total = seen[-1][1]
    assert total > 0 and seen[-1] == (total, total, unit)
    assert [d for d, _, _ in seen] == list(range(total + 1))  # 0 when it starts, then each unit once
    assert {t for _, t, _ in seen} == {total}


def test_a_loop_job_counts_encoders_decode_windows_and_files_then_says_done(tiny_components, image, tmp_path):
    spec = JobSpec(**QUICK, pipeline="loop", main_sections=2, connection_sections=1, loop_count=2, outputs=["mp4", "webp"])
    reports = run(spec, {"image": image}, tiny_components, tmp_path, [3])
    assert_counts_up_to_the_total(counts(reports, "encode"), "encoders")
    assert_counts_up_to_the_total(counts(reports, "decode"), "windows")
    assert counts(reports, "write")[-1] == (3, 3, "files")  # the 1-loop mp4 and webp, the N-loop mp4
    assert_counts_up_to_the_total(counts(reports, "write"), "files")
    assert [r["phase"] for r in reports][-1] == "done" and reports[-1]["done"] == reports[-1]["total"] == 3
    # The order of phases, and the sampler's reports as they were.
    phases = [r["phase"] for r in reports]
    firsts = sorted(set(phases), key=phases.index)
    assert firsts == ["encode", "sample", "decode", "write", "done"]
    last_sample = [r for r in reports if r["phase"] == "sample"][-1]
    assert (last_sample["section"], last_sample["sections"], last_sample["step"], last_sample["steps"]) == (3, 3, 2, 2)


def test_each_generation_counts_its_own_decode_and_files(tiny_components, image, tmp_path):
    spec = JobSpec(**QUICK, pipeline="i2v", main_sections=2, count=2)
    reports = run(spec, {"image": image}, tiny_components, tmp_path, [1, 2])
    for g in (1, 2):
        assert_counts_up_to_the_total(counts(reports, "decode", g), "windows")
        assert counts(reports, "write", g) == [(0, 1, "files"), (1, 1, "files")]
    assert reports[-1]["phase"] == "done" and reports[-1]["total"] == 2


def test_latent_only_counts_its_two_files(tiny_components, image, tmp_path):
    spec = JobSpec(**QUICK, pipeline="loop", main_sections=2, decode=False)
    reports = run(spec, {"image": image}, tiny_components, tmp_path, [5])
    assert counts(reports, "decode") == []
    assert counts(reports, "write") == [(0, 2, "files"), (1, 2, "files"), (2, 2, "files")]

    # `fploopd decode` of that file reports its decode and files the same way.
    from fploopd.pipelines.decode import decode_loop_file

    later: list[dict] = []
    decode_loop_file(tmp_path / "out" / "job_5_latent.safetensors", tmp_path / "decoded", tiny_components,
                     progress=lambda p: later.append(dataclasses.asdict(p)))  # fmt: skip
    assert_counts_up_to_the_total(counts(later, "decode"), "windows")
    assert counts(later, "write")[-1] == (1, 1, "files")  # loop_count 1: the 1-loop mp4 alone


def test_a_video2loop_job_reports_decode_and_write(tiny_components, tmp_path):
    video = tmp_path / "clip.mp4"
    write_mp4(video, np.random.default_rng(0).integers(0, 255, (24, 64, 64, 3), dtype=np.uint8), 30)
    spec = JobSpec(**QUICK, pipeline="video2loop", loop_count=3)
    reports = run(spec, {"video": video}, tiny_components, tmp_path, [8])
    assert_counts_up_to_the_total(counts(reports, "encode"), "encoders")
    assert_counts_up_to_the_total(counts(reports, "decode"), "windows")
    assert counts(reports, "write")[-1] == (2, 2, "files")
    assert reports[-1]["phase"] == "done"


def test_progress_text_is_one_line_for_every_phase():
    def text(p: Progress) -> str:
        return progress_text(dataclasses.asdict(p))

    assert text(Progress("sample", 1, 1, 2, 3, 5, 25)) == "sample section 2/3 step 5/25"
    assert text(Progress("sample", 1, 1, 2, 3)) == "sample section 2/3"
    assert text(Progress("decode", done=3, total=8, unit="windows")) == "decode 3/8 windows"
    assert text(Progress("write", 2, 3, done=1, total=2, unit="files")) == "write 1/2 files (generation 2/3)"
    assert text(Progress("encode", done=0, total=3, unit="encoders")) == "encode 0/3 encoders"
    assert text(Progress("done", done=2, total=2, unit="files")) == "done"
    assert progress_text(None) == progress_text({}) == "starting"
    # A report stored by an older fploopd, without the counters.
    assert progress_text({"phase": "encode", "generation": 1, "generations": 1, "section": 0, "sections": 0}) == "encode"
