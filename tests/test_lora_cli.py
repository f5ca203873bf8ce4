"""LoRAs on the one-shot commands: ``--lora FILE[:SCALE]`` gives exactly the latents of a model whose
transformer files hold the same LoRA merged by hand (issue 12's check), and what it records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fploopd.cli import build_parser, main
from fploopd.commands.oneshot import lora_option, spec_from_args
from fploopd.engine.lora_testdata import write_tiny_lora
from fploopd.engine.sources import resolve

TINY = ["--device", "cpu"]
QUICK = ["--resolution", "64", "--window", "2", "--steps", "2", "--main-sections", "2", "--seed", "5", "--no-decode"]
SCALE = 0.7


@pytest.fixture
def image(tmp_path: Path) -> Path:
    y, x = np.mgrid[0:64, 0:64]
    path = tmp_path / "cat.png"
    Image.fromarray(np.stack([x * 4 % 256, y * 3 % 256, (x * y) % 256], -1).astype(np.uint8)).save(path)
    return path


def merge_by_hand(lora: Path, folder: Path, scale: float) -> int:
    """Rewrite the transformer's safetensors in ``folder`` with the musubi LoRA merged into them,
    straight from the file's keys: W = bf16(W + scale * alpha/r * up @ down), in float32. Returns
    the number of weights changed."""
    tensors = load_file(str(lora))
    changed = 0
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            meta = f.metadata()
        weights = load_file(str(shard))
        for key in list(weights):
            stem = "lora_unet_" + key.removesuffix(".weight").replace(".", "_")
            if not key.endswith(".weight") or f"{stem}.lora_down.weight" not in tensors:
                continue
            down, up = tensors[f"{stem}.lora_down.weight"].float(), tensors[f"{stem}.lora_up.weight"].float()
            alpha = float(tensors[f"{stem}.alpha"])
            delta = (up @ down) * (alpha / down.shape[0])
            base = weights[key].to(torch.bfloat16).float()  # as the model loads it
            weights[key] = torch.add(base, delta, alpha=scale).to(torch.bfloat16)
            changed += 1
        save_file(weights, str(shard), metadata=meta)
    return changed


def latents_of(out: Path) -> dict[str, torch.Tensor]:
    (path,) = [p for p in out.glob("*.safetensors")]
    return load_file(str(path))


def test_lora_option_matches_the_same_lora_merged_into_the_model_files(tiny_root: Path, image: Path, tmp_path: Path, capsys) -> None:
    lora = write_tiny_lora(tmp_path / "style.safetensors", "musubi", seed=7, rank=4, alpha=2.0)
    merged_root = tmp_path / "merged-model"
    shutil.copytree(tiny_root, merged_root)
    transformer = resolve(merged_root).transformer
    assert merge_by_hand(lora, transformer, SCALE) == sum(k.endswith(".lora_down.weight") for k in load_file(str(lora)))

    with_lora, merged, plain = tmp_path / "with-lora", tmp_path / "merged", tmp_path / "plain"
    assert main(["loop", str(image), "--model", "tiny", "--lora", f"{lora}:{SCALE}", "--out", str(with_lora), *QUICK, *TINY]) == 0
    assert main(["loop", str(image), "--model", str(merged_root), "--out", str(merged), *QUICK, *TINY]) == 0
    assert main(["loop", str(image), "--model", "tiny", "--out", str(plain), *QUICK, *TINY]) == 0
    a, b, c = latents_of(with_lora), latents_of(merged), latents_of(plain)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["main"], c["main"])  # the LoRA did something

    # Recorded: the manifest's model identity and the latent file's header name the LoRA.
    (manifest,) = with_lora.glob("*_manifest.json")
    model = json.loads(manifest.read_text())["model"]
    from fploopd.engine.lora import load_lora

    entry = {"name": "style.safetensors", "sha256": load_lora(lora).sha256, "scale": SCALE}
    assert model["loras"] == [entry]
    assert json.loads(manifest.read_text())["spec"]["loras"] == [{"file": "style.safetensors", "scale": SCALE}]
    (latent,) = with_lora.glob("*.safetensors")
    with safe_open(str(latent), framework="pt") as f:
        assert json.loads(f.metadata()["model"])["loras"] == [entry]
    (plain_manifest,) = plain.glob("*_manifest.json")
    assert "loras" not in json.loads(plain_manifest.read_text())["model"]

    # Decoding a latent file needs no LoRA.
    capsys.readouterr()
    assert main(["decode", str(latent), "--model", "tiny", "--device", "cpu", "--out", str(tmp_path / "dec")]) == 0
    assert any((tmp_path / "dec").glob("*.mp4"))


def test_pickle_loras_are_refused_with_the_reason_before_any_model_loads(image: Path, capsys) -> None:
    for name in ("style.pt", "style.ckpt"):
        assert main(["loop", str(image), "--lora", f"/any/where/{name}:0.5", "--model", "/no/such/model"]) == 2
        err = capsys.readouterr().err
        assert f"--lora: {name}: .{name.split('.')[1]} files are Python pickles" in err and "runs any code" in err


def test_a_renamed_pickle_is_refused_too(image: Path, tmp_path: Path, capsys) -> None:
    fake = tmp_path / "style.safetensors"
    torch.save({"x": torch.zeros(2)}, fake)
    assert main(["loop", str(image), "--lora", str(fake), "--model", "/no/such/model", "--out", str(tmp_path / "o")]) == 2
    assert "pickle" in capsys.readouterr().err


def test_lora_option_forms(tmp_path: Path) -> None:
    assert lora_option("a.safetensors") == (Path("a.safetensors"), 1.0)
    assert lora_option("/x/a.safetensors:0.7") == (Path("/x/a.safetensors"), 0.7)
    assert lora_option("/x/a:b.safetensors") == (Path("/x/a:b.safetensors"), 1.0)
    assert lora_option("/x/a.safetensors:-1.5") == (Path("/x/a.safetensors"), -1.5)


def test_lora_options_replace_the_profiles_loras(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "styled.json").write_text(json.dumps({"loras": [{"file": "house.safetensors", "scale": 0.5}]}))
    base = ["loop", "cat.png", "--root", str(tmp_path), "--profile", "styled"]
    spec = spec_from_args(build_parser().parse_args(base), "loop")
    assert [(e.file, e.scale) for e in spec.loras] == [("house.safetensors", 0.5)]
    args = build_parser().parse_args([*base, "--lora", "/a/one.safetensors", "--lora", "two.safetensors:2"])
    spec = spec_from_args(args, "loop")
    assert [(e.file, e.scale) for e in spec.loras] == [("one.safetensors", 1.0), ("two.safetensors", 2.0)]
