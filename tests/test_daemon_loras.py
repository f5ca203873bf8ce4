"""LoRAs through the daemon: sidecars and profiles name files in ``loras/`` (or ``lora_dirs``), the
worker merges them, and every bad LoRA fails its drop with a clear error, the inputs kept in failed/.
One daemon run carries all the cases (the tiny model on the CPU)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from daemon_util import (
    SMALL,
    assert_each_input_once,
    drop,
    image_bytes,
    make_root,
    outbox_jobs,
    run_once,
    status_is_true,
)
from safetensors.torch import load_file, save_file

from fploopd.cli import main
from fploopd.engine.lora import load_lora
from fploopd.engine.lora_testdata import write_tiny_lora

SEED = 5
QUICK = {**SMALL, "seed": SEED, "decode": False}


def latents(folder: Path) -> dict[str, torch.Tensor]:
    (path,) = folder.glob("*.safetensors")
    return load_file(str(path))


def tampered_lora(source: Path, path: Path, *, extra: dict[str, torch.Tensor] | None = None, wrong_shape: bool = False) -> Path:
    """A copy of ``source`` with keys that match no module added, or one down matrix one column wider."""
    tensors = load_file(str(source))
    if wrong_shape:
        key = min(k for k in tensors if k.endswith(".lora_down.weight"))
        tensors[key] = torch.cat([tensors[key], tensors[key][:, :1]], dim=1).contiguous()
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


def test_loras_from_sidecars_profiles_and_lora_dirs_and_every_bad_one_fails_clearly(tmp_path: Path) -> None:
    extra_dir = tmp_path / "musubi-output"
    extra_dir.mkdir()
    root = make_root(tmp_path, grace_s=1.0, lora_dirs=[str(extra_dir)])
    loras = root / "loras"
    style = write_tiny_lora(loras / "style.safetensors", "musubi", seed=7)
    write_tiny_lora(extra_dir / "extra.safetensors", "diffusers", seed=8)
    (root / "profiles" / "styled.json").write_text(json.dumps({"loras": [{"file": "extra.safetensors", "scale": 0.5}]}))
    unmatched = {
        "lora_unet_transformer_blocks_99_attn_to_q.lora_down.weight": torch.zeros(4, 8),
        "lora_unet_transformer_blocks_99_attn_to_q.lora_up.weight": torch.zeros(8, 4),
    }
    tampered_lora(style, loras / "other_model.safetensors", extra=unmatched)
    tampered_lora(style, loras / "wrong_shape.safetensors", wrong_shape=True)
    (loras / "evil.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    outside = write_tiny_lora(tmp_path / "outside.safetensors", "musubi", seed=9)
    os.symlink(outside, loras / "linked.safetensors")
    lora_files = {p.name: p.read_bytes() for p in (*loras.iterdir(), *extra_dir.iterdir()) if not p.is_symlink()}

    def with_loras(*entries: dict) -> dict:
        return {"prompt": "a red ball", **QUICK, "loras": list(entries)}

    png = image_bytes()
    good = {
        "styled": with_loras({"file": "style.safetensors", "scale": 0.7}),
        "profiled": {"prompt": "a red ball", **QUICK, "profile": "styled"},
        "cleared": {"prompt": "a red ball", **QUICK, "profile": "styled", "loras": []},
    }
    bad = {  # stem: (sidecar, expected file, words of the error)
        "missing": (with_loras({"file": "never.safetensors"}), "never.safetensors", "LoRA never.safetensors (looked for in loras/"),
        "pickled": (with_loras({"file": "style.pt"}), "pickled.json", ".pt files are Python pickles"),
        "renamed": (with_loras({"file": "evil.safetensors"}), "evil.safetensors", "is a Python pickle (a renamed .pt/.ckpt)"),
        "escape": (with_loras({"file": "../style.safetensors"}), "escape.json", "loras"),
        "linked": (with_loras({"file": "linked.safetensors"}), "linked.safetensors", "outside the LoRA folders"),
        "strong": (with_loras({"file": "style.safetensors", "scale": 11}), "strong.json", "less than or equal to 10"),
        "unmatched": (
            with_loras({"file": "other_model.safetensors"}),
            "other_model.safetensors",
            "match no module of the FramePack transformer (a LoRA for another model, or for a text encoder?): lora_unet_transformer_blocks_99_attn_to_q",
        ),
        "shape": (with_loras({"file": "wrong_shape.safetensors"}), "wrong_shape.safetensors", "makes a [32, 33] change but single_transformer_blocks.0.attn.to_k is [32, 32]"),
    }
    dropped: dict[str, bytes] = {}
    for stem, sidecar in {**good, **{k: v[0] for k, v in bad.items()}}.items():
        dropped.update(drop(root, stem, sidecar, media=png))

    result = run_once(root, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

    assert outbox_jobs(root) == sorted(good)
    assert sorted(p.name for p in (root / "failed").iterdir()) == sorted(bad)
    where = assert_each_input_once(root, dropped)
    assert all(where[f"{stem}.json"].startswith("failed/") and where[f"{stem}.png"].startswith("failed/") for stem in bad), where
    for stem, (_, file, words) in bad.items():
        error = json.loads((root / "failed" / stem / "error.json").read_text())
        assert error["kind"] == "input" and error["field"] == "loras" and error["file"] == file, (stem, error)
        assert words in error["error"], (stem, error)
    # The LoRA files themselves are the user's library: never moved or changed.
    assert {p.name: p.read_bytes() for p in (*loras.iterdir(), *extra_dir.iterdir()) if not p.is_symlink()} == lora_files
    states = {j["name"]: (j["state"], j["attempts"]) for j in status_is_true(root)}
    # Bad files are found at intake; what only the model can tell (keys, shapes) fails the one try.
    assert states == {
        **{n: ("done", 0) for n in good},
        **{n: ("failed", 1 if n in ("unmatched", "shape") else 0) for n in bad},
    }, states

    # Recorded: each LoRA's name, sha256 and scale; the profile's list, and a sidecar's [] replacing it.
    def recorded(stem: str) -> dict:
        manifest = json.loads((root / "outbox" / stem / "manifest.json").read_text())
        return {"spec": manifest["spec"].get("loras"), "model": manifest["model"].get("loras")}

    assert recorded("styled") == {
        "spec": [{"file": "style.safetensors", "scale": 0.7}],
        "model": [{"name": "style.safetensors", "sha256": load_lora(style).sha256, "scale": 0.7}],
    }
    assert recorded("profiled")["model"] == [
        {"name": "extra.safetensors", "sha256": load_lora(extra_dir / "extra.safetensors").sha256, "scale": 0.5}
    ]
    assert recorded("cleared") == {"spec": [], "model": None}

    # The daemon's merge is the one-shot command's: the same latents as `fploopd loop --lora`.
    one_shot = tmp_path / "one-shot"
    image = tmp_path / "styled.png"
    image.write_bytes(png)
    args = ["loop", str(image), "--prompt", "a red ball", "--lora", f"{style}:0.7", "--out", str(one_shot)]
    args += ["--resolution", "128", "--window", "2", "--steps", "2", "--main-sections", "2", "--connection-sections", "1"]
    args += ["--seed", str(SEED), "--no-decode", "--model", "tiny", "--device", "cpu"]
    assert main(args) == 0
    daemon, direct = latents(root / "outbox" / "styled"), latents(one_shot)
    assert daemon.keys() == direct.keys() and all(torch.equal(daemon[k], direct[k]) for k in daemon)
    assert not torch.equal(daemon["main"], latents(root / "outbox" / "cleared")["main"])  # the LoRA did something


def test_lora_folders_are_the_roots_then_lora_dirs_from_the_toml_or_the_environment(tmp_path: Path) -> None:
    from fploopd.daemon.layout import Layout
    from fploopd.daemon.loras import lora_folders
    from fploopd.daemon.settings import load_settings

    root = tmp_path / "root"
    root.mkdir()
    (root / "fploopd.toml").write_text('lora_dirs = ["mine", "/srv/loras"]\n')
    settings = load_settings(root, env={})
    assert lora_folders(settings, Layout(root)) == [root / "loras", root / "mine", Path("/srv/loras")]
    settings = load_settings(root, env={"FPLOOPD_LORA_DIRS": os.pathsep.join(["/a", "/b"])})
    assert lora_folders(settings, Layout(root))[1:] == [Path("/a"), Path("/b")]
