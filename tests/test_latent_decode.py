"""Decode later: a latent-only loop job, decoded afterwards, equals decoding at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fploopd.cli import main
from fploopd.errors import InputError
from fploopd.media import load_image, probe_video
from fploopd.media.limits import MediaLimits
from fploopd.pipelines import loop, run_job
from fploopd.pipelines.common import encode_conditioning, make_model, prepare_image
from fploopd.pipelines.decode import decode_loop_file, read_loop_latents
from fploopd.pipelines.latentfile import save_latents
from fploopd.spec import JobSpec

SPEC = JobSpec(prompt="tide", pipeline="loop", resolution=64, window=2, main_sections=2, connection_sections=1,
               steps=2, loop_count=2, decode=False)  # fmt: skip
SEED = 21


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    y, x = np.mgrid[0:64, 0:64]
    path = tmp_path_factory.mktemp("img") / "tide.png"
    Image.fromarray(np.stack([x * 3 % 256, y * 3 % 256, (x + y) % 256], -1).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def latent_file(tiny_components, image_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("latent")
    result = run_job(SPEC, {"image": image_file}, folder / "out", name="tide", seeds=[SEED],
                     components=tiny_components, work_dir=folder / "work")  # fmt: skip
    kinds = {o.kind: o.path for o in result.outputs}
    assert set(kinds) == {"latent", "preview"}
    assert kinds["latent"].name == f"tide_{SEED}_latent.safetensors"
    return kinds["latent"]


def test_decode_later_equals_decoding_at_once(tiny_components, image_file, latent_file, tmp_path):
    start = prepare_image(tiny_components, load_image(image_file, MediaLimits()), SPEC.resolution)
    cond = encode_conditioning(tiny_components, SPEC.prompt, SPEC.negative_prompt, SPEC, start.pixels)
    latents = loop.generate_latents(tiny_components, make_model(tiny_components, SPEC), cond, start, SPEC, SEED)
    direct = loop.decode(tiny_components, latents)

    frames, outputs = decode_loop_file(latent_file, tmp_path, tiny_components)
    assert frames.shape == direct.shape and torch.equal(frames, direct)
    by_kind = {o.kind: o for o in outputs}
    count = 4 * SPEC.window * (SPEC.main_sections + SPEC.connection_sections)
    assert by_kind["1loop"].path == tmp_path / f"tide_{SEED}_1loop.mp4"
    assert by_kind["loop"].path == tmp_path / f"tide_{SEED}_loop_2.mp4"
    assert probe_video(by_kind["1loop"].path, MediaLimits()).frames == count == frames.shape[2]
    assert probe_video(by_kind["loop"].path, MediaLimits()).frames == 2 * count


def test_decode_command_writes_the_loop(tiny_root, latent_file, tmp_path, capsys):
    code = main(["decode", str(latent_file), "--out", str(tmp_path / "o"), "--model", "tiny", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "o" / f"tide_{SEED}_1loop.mp4") in printed
    assert (tmp_path / "o" / f"tide_{SEED}_loop_2.mp4").is_file()


def test_pickle_files_are_refused_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "old_loop.pt"
    torch.save({"main": torch.zeros(1)}, bad)
    with pytest.raises(InputError) as err:
        read_loop_latents(bad)
    assert err.value.file == "old_loop.pt" and "pickle" in err.value.message
    # The command says the same, before any model is loaded.
    assert main(["decode", str(bad), "--model", "no-such-folder"]) == 2
    assert "old_loop.pt" in capsys.readouterr().err


def test_only_loop_latents_with_sound_shapes_are_decoded(tmp_path):
    spec = SPEC.model_copy(update={"pipeline": "i2v", "decode": True})
    save_latents(tmp_path / "a.safetensors", {"video": torch.zeros(1, 16, 4, 2, 2)}, spec, seed=1, name="a", model={})
    with pytest.raises(InputError, match="only loop latent files") as err:
        read_loop_latents(tmp_path / "a.safetensors")
    assert err.value.file == "a.safetensors"
    tensors = {"main": torch.zeros(1, 16, 3, 2, 2), "connection": torch.zeros(1, 16, 2, 2, 2)}
    save_latents(tmp_path / "b.safetensors", tensors, SPEC, seed=1, name="b", model={})
    with pytest.raises(InputError, match="'main' has shape"):
        read_loop_latents(tmp_path / "b.safetensors")
    tensors = {"main": torch.zeros(1, 16, 4, 2, 2), "connection": torch.zeros(1, 16, 2, 2, 2)}
    save_latents(tmp_path / "c.safetensors", tensors, SPEC, seed=1, name="../escape", model={})
    with pytest.raises(InputError, match="not a plain file name"):
        read_loop_latents(tmp_path / "c.safetensors")
