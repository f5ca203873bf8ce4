"""The tiny family: real layouts, structurally real configs, deterministic bytes, atomic builds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fploopd.engine import tiny
from fploopd.engine.encode import PROMPT_TEMPLATE
from fploopd.engine.sources import COMPONENTS, check_component, component_dir

HV = "hunyuanvideo-community/HunyuanVideo"


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def read_config(root: Path, name: str) -> dict:
    return json.loads((component_dir(root, name) / "config.json").read_text())


def test_a_second_build_is_byte_identical(tiny_root: Path, tmp_path: Path) -> None:
    tiny.build_tiny(tmp_path / "again")
    first, second = file_hashes(tiny_root), file_hashes(tmp_path / "again")
    assert len(first) > 20
    assert first == second


def test_every_component_is_complete_in_the_real_layout(tiny_root: Path) -> None:
    expected = {
        "transformer": "lllyasviel/FramePackI2V_HY",
        "transformer_f1": "lllyasviel/FramePack_F1_I2V_HY_20250503",
        "text_encoder": f"{HV}/text_encoder",
        "tokenizer": f"{HV}/tokenizer",
        "text_encoder_2": f"{HV}/text_encoder_2",
        "tokenizer_2": f"{HV}/tokenizer_2",
        "vae": f"{HV}/vae",
        "image_encoder": "lllyasviel/flux_redux_bfl/image_encoder",
        "feature_extractor": "lllyasviel/flux_redux_bfl/feature_extractor",
    }
    assert set(expected) == set(COMPONENTS)
    for name, rel in expected.items():
        folder = tiny_root / rel
        assert check_component(folder, COMPONENTS[name].kind) is None, name
    assert {p.name for p in (tiny_root / HV / "tokenizer_2").iterdir()} >= {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    # Sharded like the real transformer, so the shard checks and the sharded loader get exercised.
    transformer = tiny_root / expected["transformer"]
    index = json.loads((transformer / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2


def test_configs_are_structurally_framepack(tiny_root: Path) -> None:
    t = read_config(tiny_root, "transformer")
    llama, clip = read_config(tiny_root, "text_encoder"), read_config(tiny_root, "text_encoder_2")
    siglip, vae = read_config(tiny_root, "image_encoder"), read_config(tiny_root, "vae")
    assert t["_class_name"] == "HunyuanVideoFramepackTransformer3DModel"
    assert (t["has_image_proj"], t["has_clean_x_embedder"], t["guidance_embeds"]) == (True, True, True)
    assert (t["in_channels"], t["out_channels"], t["patch_size"], t["patch_size_t"]) == (16, 16, 2, 1)
    assert sum(t["rope_axes_dim"]) == t["attention_head_dim"]
    assert t["text_embed_dim"] == llama["hidden_size"]
    assert t["pooled_projection_dim"] == clip["hidden_size"]
    assert t["image_proj_dim"] == siglip["hidden_size"]
    assert llama["architectures"] == ["LlamaModel"] and llama["num_hidden_layers"] >= 4
    assert clip["architectures"] == ["CLIPTextModel"] and clip["max_position_embeddings"] == 77
    assert vae["_class_name"] == "AutoencoderKLHunyuanVideo"
    assert (vae["latent_channels"], len(vae["block_out_channels"]), vae["scaling_factor"]) == (16, 4, 0.476986)
    assert (vae["spatial_compression_ratio"], vae["temporal_compression_ratio"]) == (8, 4)
    assert read_config(tiny_root, "transformer_f1") == t
    # The F1 transformer is another model (another seed), not a copy.
    f1_files = file_hashes(component_dir(tiny_root, "transformer_f1"))
    i2v_files = file_hashes(component_dir(tiny_root, "transformer"))
    assert f1_files["config.json"] == i2v_files["config.json"]
    assert f1_files != i2v_files


def test_llama_tokenizer_behaves_like_llama_3(tiny_root: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_root / HV / "tokenizer")
    for special in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert len(tok(special, add_special_tokens=False).input_ids) == 1, special
    ids = tok("a cat, walking.").input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok.pad_token is not None
    # Each template word is one token, as in Llama 3, so FramePack's crop_start of 95 holds.
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    assert len(tok(prefix).input_ids) == 95
    padded = tok(PROMPT_TEMPLATE.format("zebra ü 日本"), max_length=128, padding="max_length", truncation=True)
    assert len(padded.input_ids) == 128 and 95 < sum(padded.attention_mask) < 128
    assert tok.decode(tok("zebra ü 日本", add_special_tokens=False).input_ids) == "zebra ü 日本"  # byte-level: any text


def test_clip_tokenizer_loads_as_clip(tiny_root: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_root / HV / "tokenizer_2")
    assert tok.model_max_length == 77
    ids = tok("The girl DANCES", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert tok.convert_ids_to_tokens(ids[:5]) == ["<|startoftext|>", "the</w>", "girl</w>", "dances</w>", "<|endoftext|>"]


def test_vae_decodes_random_latents_to_sane_pixels(tiny_root: Path) -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_root / HV / "vae", torch_dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        pixels = vae.decode(torch.randn(1, 16, 2, 8, 8, generator=gen)).sample
        latent = vae.encode(pixels[:, :, :1].clamp(-1, 1)).latent_dist.mode()
    assert pixels.shape == (1, 3, 5, 64, 64)  # 4x temporal (4T-3), 8x spatial
    assert torch.isfinite(pixels).all()
    assert 0.05 < pixels.std().item() and pixels.abs().max().item() < 4
    assert latent.shape == (1, 16, 1, 8, 8) and torch.isfinite(latent).all()


def test_ensure_tiny_reuses_a_complete_family(tiny_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "build_tiny", lambda dest: pytest.fail("rebuilt a complete family"))
    assert tiny.ensure_tiny(tiny_root.parent) == tiny_root
    assert tiny_root.name == f"tiny-v{tiny.TINY_VERSION}"


def copy_build(tiny_root: Path):
    """A stand-in for build_tiny that copies the session's family (fast)."""

    def build(dest: Path) -> None:
        shutil.copytree(tiny_root, dest, dirs_exist_ok=True)

    return build


def test_a_crashed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(dest: Path) -> None:
        (dest / "half").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "build_tiny", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        tiny.ensure_tiny(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_builds_leftovers_are_cleaned_up_later(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / f".{tiny.TINY_DIR_NAME}.dead.part"
    fresh = tmp_path / f".{tiny.TINY_DIR_NAME}.running.part"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "half").write_text("x")
    hour_ago = old.stat().st_mtime - tiny.STALE_BUILD_S - 1
    os.utime(old, (hour_ago, hour_ago))
    monkeypatch.setattr(tiny, "build_tiny", copy_build(tiny_root))
    tiny.ensure_tiny(tmp_path)
    assert not old.exists() and fresh.exists()  # another process may still be building into it


def test_an_incomplete_family_is_moved_aside_and_rebuilt(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / tiny.TINY_DIR_NAME
    shutil.copytree(tiny_root, broken)
    victim = component_dir(broken, "vae") / "diffusion_pytorch_model.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated: the manifest's size no longer matches
    monkeypatch.setattr(tiny, "build_tiny", copy_build(tiny_root))
    assert tiny.ensure_tiny(tmp_path) == broken
    assert file_hashes(broken) == file_hashes(tiny_root)
    aside = [p for p in tmp_path.iterdir() if ".broken." in p.name]
    assert len(aside) == 1 and (aside[0] / tiny.TINY_DIR_NAME).is_dir()


def test_losing_a_build_race_keeps_the_winner(tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def racing_build(dest: Path) -> None:
        shutil.copytree(tiny_root, tmp_path / tiny.TINY_DIR_NAME)  # another process finishes first
        copy_build(tiny_root)(dest)

    monkeypatch.setattr(tiny, "build_tiny", racing_build)
    assert tiny.ensure_tiny(tmp_path) == tmp_path / tiny.TINY_DIR_NAME
    assert [p.name for p in tmp_path.iterdir()] == [tiny.TINY_DIR_NAME]  # our temporary build is gone


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny.sys, "platform", "linux")
    monkeypatch.setenv("FPLOOPD_CACHE", str(tmp_path / "explicit"))
    assert tiny.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FPLOOPD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiny.default_cache_dir() == tmp_path / "xdg" / "fploopd"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tiny.default_cache_dir() == tmp_path / "home" / ".cache" / "fploopd"
    monkeypatch.setattr(tiny.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert tiny.default_cache_dir() == tmp_path / "local" / "fploopd"
