"""The one-shot commands: options generated from JobSpec, sidecar-identical validation, runs on tiny."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fploopd.cli import build_parser, main
from fploopd.commands.oneshot import NOT_OPTIONS, WORK_FOLDER, ProgressBar, render, seeds_for, spec_from_args
from fploopd.media import probe_video, write_mp4
from fploopd.media.limits import MediaLimits
from fploopd.pipelines.progress import Progress
from fploopd.spec import JobSpec

TINY = ["--model", "tiny", "--device", "cpu"]
QUICK = ["--resolution", "64", "--window", "2", "--steps", "2"]


@pytest.fixture
def image(tmp_path) -> Path:
    y, x = np.mgrid[0:64, 0:64]
    path = tmp_path / "cat.png"
    Image.fromarray(np.stack([x * 4 % 256, y * 4 % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", ["generate", "loop", "connect", "video2loop"])
def test_every_sidecar_field_is_an_option(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    dests = {a.dest for a in sub._actions}
    fields = set(JobSpec.model_fields) - NOT_OPTIONS
    assert {f"spec_{f}" for f in fields} <= dests
    assert not any(d.startswith("spec_") and d[5:] in NOT_OPTIONS for d in dests)


@pytest.mark.parametrize(
    ("command", "pipeline", "unused"),
    [
        ("generate", "i2v", {"--loop-count", "--connection-sections", "--padding-sections", "--decode"}),
        ("connect", "connect", {"--loop-count", "--main-sections", "--padding-sections", "--decode"}),
        ("video2loop", "video2loop", {"--main-sections", "--padding-sections", "--decode"}),
        ("loop", "loop", set()),
    ],
)
def test_help_offers_only_the_options_the_pipeline_uses(command, pipeline, unused, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = {word.rstrip(",") for word in capsys.readouterr().out.split() if word.startswith("--")}
    assert not shown & unused
    assert {"--prompt", "--steps", "--window", "--outputs"} <= shown
    if command == "loop":
        assert {"--loop-count", "--main-sections", "--connection-sections", "--padding-sections", "--decode"} <= shown


def test_an_option_the_pipeline_does_not_use_is_refused_by_name(image, tmp_path, capsys):
    # Before any model loads, and before the inputs are looked at.
    argv = ["--out", str(tmp_path / "o"), "--model", "/no/such/model"]
    assert main(["generate", str(image), "--loop-count", "3", *argv]) == 2
    err = capsys.readouterr().err
    assert "--loop-count is not used by the i2v pipeline (it applies to loop, video2loop)" in err
    assert "/no/such" not in err
    assert main(["connect", "h.mp4", "t.mp4", "--main-sections", "2", "--padding_sections", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert "--main-sections is not used by the connect pipeline" in err and "--padding-sections is not used" in err
    assert main(["video2loop", "v.mp4", "--no-decode", *argv]) == 2
    assert "--no-decode is not used by the video2loop pipeline (it applies to loop)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_options_become_the_spec_a_sidecar_would_give(tmp_path):
    args = parse("loop", "x.png", "--root", str(tmp_path), "--prompt", "rain", "--main-sections", "3",
                 "--connection_sections", "2", "--outputs", "mp4,webp", "--teacache", "0.2", "--no-decode",
                 "--seed", "5", "--cfg", "2", "--tags", "a,b")  # fmt: skip
    spec = spec_from_args(args, "loop")
    assert spec.pipeline == "loop" and spec.prompt == "rain"
    assert (spec.main_sections, spec.connection_sections, spec.seed) == (3, 2, 5)
    assert spec.outputs == ["mp4", "webp"] and spec.teacache == 0.2 and spec.decode is False
    assert spec.cfg == 2.0 and spec.tags == ["a", "b"]
    # Not given = the profile's value, then the spec default (FramePack's).
    assert spec.steps == 25 and spec.window == 9 and spec.image is None
    assert spec_from_args(parse("loop", "x.png", "--teacache", "on"), "loop").teacache is True
    assert spec_from_args(parse("generate", "x.png", "--sections", "4"), "i2v").main_sections == 4


def test_a_profile_applies_and_options_override_it(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "mine.json").write_text('{"steps": 7, "window": 3}')
    spec = spec_from_args(parse("loop", "x.png", "--root", str(tmp_path), "--profile", "mine", "--window", "5"), "loop")
    assert (spec.steps, spec.window, spec.profile) == (7, 5, "mine")
    fast = spec_from_args(parse("loop", "x.png", "--root", str(tmp_path), "--profile", "fast"), "loop")
    assert fast.steps == 16  # the shipped preset


def test_bad_values_fail_like_a_sidecar_before_any_model_loads(image, capsys):
    # A model folder that does not exist would be the error if the model were loaded first.
    code = main(["loop", str(image), "--steps", "500", "--model", "/no/such/model"])
    err = capsys.readouterr().err
    assert code == 2
    assert "steps" in err and "100" in err and "500" in err and "--steps" in err and "/no/such" not in err
    assert main(["loop", str(image), "--outputs", "mp4,avi"]) == 2
    assert "outputs" in capsys.readouterr().err
    assert main(["loop", str(image.with_name("missing.png"))]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["loop", str(image), "--name", "../up"]) == 2
    assert main(["generate", str(image), "--no-decode"]) == 2
    assert "--no-decode is not used by the i2v pipeline (it applies to loop)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own error for a non-number
        main(["loop", str(image), "--steps", "many"])


def test_render_shows_phase_section_step_and_elapsed():
    line = render(Progress("sample", 1, 1, 2, 4, 6, 10), 75.2)  # 16 of 40 steps
    assert line.split() == ["sample", "section", "2/4", "step", "6/10", "[" + "#" * 8 + "." * 12 + "]", "1:15"]
    assert render(Progress("decode", 2, 3), 3).split() == ["[2/3]", "decode", "0:03"]
    assert render(Progress("decode", 1, 1, done=3, total=8, unit="windows"), 3).split() == ["decode", "3/8", "windows", "0:03"]


def test_progress_bar_writes_a_line_per_section_when_not_a_terminal():
    out = io.StringIO()
    bar = ProgressBar(out, clock=lambda: 0.0)
    bar(Progress("encode"))
    for section in (1, 2):
        for step in range(4):
            bar(Progress("sample", 1, 1, section, 2, step, 3))
    bar(Progress("decode"))
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["encode", "sample", "sample", "decode"]
    assert "section 2/2" in lines[2]


def test_progress_bar_redraws_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = ProgressBar(out, clock=lambda: 0.0)
    for step in range(3):
        bar(Progress("sample", 1, 1, 1, 1, step, 2))
    bar.close()
    assert out.getvalue().count("\r") == 3 and out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_seeds_are_kept_for_a_resumed_run(image, tmp_path):
    spec = JobSpec(prompt="", pipeline="loop", count=2)
    first = seeds_for(spec, {"image": image}, tmp_path / "w")
    assert seeds_for(spec, {"image": image}, tmp_path / "w") == first  # random seeds, recorded
    other = spec.model_copy(update={"steps": 3})
    assert seeds_for(other, {"image": image}, tmp_path / "w") != first  # another job: new seeds


def test_generate_writes_an_h264_clip_of_framepacks_length(tiny_root, image, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", str(image), "--prompt", "a cat", "--sections", "2", "--seed", "9", "--out", str(out),
                 *QUICK, *TINY])  # fmt: skip
    assert code == 0
    path = out / "cat_9.mp4"
    assert capsys.readouterr().out.split() == [str(path)]
    info = probe_video(path, MediaLimits())
    latents = 2 * 2 + 1  # sections x window, plus the start image's latent
    assert (info.codec, info.fps, info.frames) == ("h264", 30, 4 * latents - 3)
    assert not (out / WORK_FOLDER).exists()  # checkpoints only; removed once done


def test_loop_writes_the_1loop_and_the_n_loop(tiny_root, image, tmp_path, capsys):
    code = main(["loop", str(image), "--main-sections", "2", "--connection-sections", "1", "--loop-count", "3",
                 "--seed", "4", "--name", "purr", "--out", str(tmp_path), *QUICK, *TINY])  # fmt: skip
    assert code == 0
    one, many = tmp_path / "purr_4_1loop.mp4", tmp_path / "purr_4_loop_3.mp4"
    assert capsys.readouterr().out.split() == [str(one), str(many)]
    frames = 4 * 2 * (2 + 1)
    assert probe_video(one, MediaLimits()).frames == frames
    assert probe_video(many, MediaLimits()).frames == 3 * frames


def test_connect_command_names_a_too_short_input(tiny_root, tmp_path, capsys):
    head, tail = tmp_path / "head.mp4", tmp_path / "tail.mp4"
    write_mp4(head, np.zeros((10, 64, 64, 3), np.uint8), 30)
    write_mp4(tail, np.zeros((30, 64, 64, 3), np.uint8), 30)
    assert main(["connect", str(head), str(tail), "--out", str(tmp_path / "o"), *QUICK, *TINY]) == 2
    err = capsys.readouterr().err
    assert "head.mp4 has 10 frames at 30 fps" in err and "at least 16 frames" in err
    assert not (tmp_path / "o" / WORK_FOLDER).exists()  # the input's fault: nothing to resume


def test_an_interrupted_run_keeps_its_work_and_the_rerun_resumes(tiny_root, image, tmp_path, monkeypatch, capsys):
    from fploopd.pipelines import common

    argv = ["generate", str(image), "--sections", "2", "--out", str(tmp_path), *QUICK, *TINY]  # a random seed
    real = common.drive_sections
    sections_run = []

    def interrupted(sections, initial, step, **kw):
        def counted(k, history, generator):
            if k == 1 and not sections_run.count("stopped"):
                sections_run.append("stopped")
                raise KeyboardInterrupt  # Ctrl-C in the second section
            sections_run.append(k)
            return step(k, history, generator)

        return real(sections, initial, counted, **kw)

    monkeypatch.setattr("fploopd.pipelines.i2v.drive_sections", interrupted)
    assert main(argv) == 130
    work = tmp_path / WORK_FOLDER / "cat"
    assert (work / "seeds.json").is_file() and any(work.glob("checkpoint-*.safetensors"))
    assert "run the same command again" in capsys.readouterr().err
    assert main(argv) == 0
    assert sections_run == [0, "stopped", 1]  # the re-run did only the second section
    (path,) = capsys.readouterr().out.split()
    assert Path(path).is_file() and not (tmp_path / WORK_FOLDER).exists()


def test_a_one_shot_loop_writes_a_manifest_like_a_daemon_job(tiny_root, image, tmp_path):
    import hashlib
    import json
    import subprocess
    import sys

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "fploopd", "loop", str(image), "--main-sections", "2", "--loop-count", "2",
            "--seed", "6", "--out", str(out), *QUICK, *TINY]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "cat_6_manifest.json").read_text())
    assert list(manifest) == ["job", "name", "pipeline", "spec", "seeds", "model", "inputs", "outputs", "timings",
                              "attempts", "created_at", "finished_at", "fploopd"]  # fmt: skip
    assert manifest["job"] is None and manifest["name"] == "cat" and manifest["pipeline"] == "loop"
    assert manifest["seeds"] == [6] and manifest["attempts"] == 0
    assert manifest["spec"]["loop_count"] == 2 and manifest["spec"]["main_sections"] == 2
    assert manifest["model"]["components"]["vae"]["sha256"]  # the model's identity
    assert manifest["inputs"] == [{"name": "cat.png", "field": "image", "size": image.stat().st_size,
                                   "sha256": hashlib.sha256(image.read_bytes()).hexdigest()}]  # fmt: skip
    frames = 4 * 2 * (2 + 1)
    assert manifest["outputs"] == [
        {"file": "cat_6_1loop.mp4", "kind": "1loop", "seed": 6, "frames": frames, "fps": 30, "duration_s": frames / 30},
        {"file": "cat_6_loop_2.mp4", "kind": "loop", "seed": 6, "frames": 2 * frames, "fps": 30,
         "duration_s": 2 * frames / 30},
    ]  # fmt: skip
    for o in manifest["outputs"]:
        assert probe_video(out / o["file"], MediaLimits()).frames == o["frames"]
    t = manifest["timings"]
    assert set(t) == {"load_s", "run_s", "total_s"} and t["load_s"] > 0 and t["run_s"] > 0
    assert t["total_s"] >= t["load_s"] + t["run_s"] - 0.002  # each rounded to 1 ms
    assert manifest["created_at"] <= manifest["finished_at"] and manifest["fploopd"]
    assert done.stdout.split() == [str(out / "cat_6_1loop.mp4"), str(out / "cat_6_loop_2.mp4")]
    assert "model load" in done.stderr and "cat_6_manifest.json" in done.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_resumed_one_shot_run_counts_the_interrupted_try(tiny_root, image, tmp_path, monkeypatch, capsys):
    import json

    from fploopd.pipelines import common

    argv = ["generate", str(image), "--sections", "2", "--seed", "2", "--out", str(tmp_path), *QUICK, *TINY]
    real = common.drive_sections
    stopped = []

    def interrupted(sections, initial, step, **kw):
        def once(k, history, generator):
            if k == 1 and not stopped:
                stopped.append(k)
                raise KeyboardInterrupt
            return step(k, history, generator)

        return real(sections, initial, once, **kw)

    monkeypatch.setattr("fploopd.pipelines.i2v.drive_sections", interrupted)
    assert main(argv) == 130
    assert not list(tmp_path.glob("*manifest.json"))  # only a finished job has one
    assert main(argv) == 0
    assert json.loads((tmp_path / "cat_2_manifest.json").read_text())["attempts"] == 1
