"""Loading the components: FramePack's dtypes, working forwards, the VRAM policy, a stable identity."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fploopd.engine import components as comp
from fploopd.engine.components import load_components, model_identity, resolve_device
from fploopd.engine.encode import PROMPT_TEMPLATE
from fploopd.engine.sources import component_dir, resolve
from fploopd.errors import FploopdError, ModelError


def transformer_inputs(c: Any, size: int = 8, window: int = 2) -> dict[str, Any]:
    """One FramePack section's transformer call at a (size*8)^2 bucket, random conditioning."""
    g = torch.Generator().manual_seed(0)
    cfg = c.transformer.config

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    idx = torch.arange(0, 1 + window + 1 + 2 + 16)
    return {
        "hidden_states": rnd(1, 16, window, size, size),
        "timestep": torch.tensor([900.0]),
        "encoder_hidden_states": rnd(1, 7, cfg.text_embed_dim),
        "encoder_attention_mask": torch.ones(1, 7, dtype=torch.bool),
        "pooled_projections": rnd(1, cfg.pooled_projection_dim),
        "image_embeds": rnd(1, 16, cfg.image_proj_dim),
        "indices_latents": idx[1 : 1 + window],
        "guidance": torch.tensor([10000.0]),
        "latents_clean": rnd(1, 16, 2, size, size),
        "indices_latents_clean": torch.tensor([0, 1 + window]),
        "latents_history_2x": rnd(1, 16, 2, size, size),
        "indices_latents_history_2x": idx[window + 2 : window + 4],
        "latents_history_4x": rnd(1, 16, 16, size, size),
        "indices_latents_history_4x": idx[window + 4 :],
        "return_dict": False,
    }


def llama_hidden(c: Any, prompt: str) -> torch.Tensor:
    tokens = c.tokenizer(PROMPT_TEMPLATE.format(prompt), return_tensors="pt")
    out = c.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True)
    return out.hidden_states[-3]


def test_tiny_loads_with_framepack_dtypes_on_cpu(tiny_components: Any) -> None:
    c = tiny_components
    assert c.device == torch.device("cpu") and c.vram == "high" and c.variant == "i2v"
    assert c.transformer.dtype == torch.bfloat16 == c.transformer_dtype
    for name in ("text_encoder", "text_encoder_2", "vae", "image_encoder"):
        assert getattr(c, name).dtype == torch.float32, name
    assert c.dtype == torch.float32
    assert comp.encoder_dtype(torch.device("cuda")) == torch.float16
    assert type(c.transformer).__name__ == "HunyuanVideoFramepackTransformer3DModel"
    assert type(c.vae).__name__ == "AutoencoderKLHunyuanVideo"
    assert type(c.tokenizer_2).__name__ == "CLIPTokenizer"
    assert c.feature_extractor.size == {"height": 32, "width": 32}
    assert not any(p.requires_grad for p in c.transformer.parameters())
    assert not c.transformer.training and not c.text_encoder.training


def test_a_jobs_runner_takes_the_workers_options_and_the_jobs_teacache(tiny_components: Any) -> None:
    c = tiny_components
    runner = c.runner(teacache_threshold=0.15)
    assert runner.transformer is c.transformer and runner.weights is c.weights and runner.offloader is c.streamer
    assert runner.options == c.runner_options.with_teacache(0.15)
    assert runner.options.attention == "sdpa" and not runner.options.compile  # the CPU: nothing optimised
    assert c.runner(teacache_threshold=0).teacache_threshold is None  # 0: TeaCache off
    assert c.runner_options.teacache_threshold is None  # a job's threshold stays with its runner


def test_every_model_runs_a_forward(tiny_components: Any) -> None:
    c = tiny_components
    with torch.no_grad():
        hidden = llama_hidden(c, "a cat walks")
        assert hidden.shape[:2] == (1, 95 + 3 + 1) and hidden.shape[2] == c.transformer.config.text_embed_dim
        clip_ids = c.tokenizer_2(["a cat walks"], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        pooled = c.text_encoder_2(clip_ids.input_ids).pooler_output
        assert pooled.shape == (1, c.transformer.config.pooled_projection_dim)
        image = np.random.default_rng(0).integers(0, 256, (80, 64, 3), dtype=np.uint8)
        pixels = c.feature_extractor.preprocess(images=image, return_tensors="pt").pixel_values
        embeds = c.image_encoder(pixel_values=pixels).last_hidden_state
        assert embeds.shape == (1, 16, c.transformer.config.image_proj_dim)
        latent = c.vae.encode(torch.zeros(1, 3, 1, 64, 64)).latent_dist.mode()
        assert latent.shape == (1, 16, 1, 8, 8)
        assert c.vae.decode(torch.zeros(1, 16, 2, 8, 8)).sample.shape == (1, 3, 5, 64, 64)
        out = c.transformer(**transformer_inputs(c))[0]
    assert out.shape == (1, 16, 2, 8, 8) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all() and out.float().std() > 0.01
    for t in (hidden, pooled, embeds):
        assert torch.isfinite(t).all() and t.std() > 0.01


def test_identity_is_stable_and_tracks_the_files(tiny_root: Path, tiny_components: Any, tmp_path: Path) -> None:
    paths = resolve("tiny")
    ident = model_identity(paths)
    assert ident == tiny_components.identity == model_identity(resolve("tiny"))
    assert ident["variant"] == "i2v" and "tiny" in ident["source"]
    assert set(ident["components"]) == {"transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae", "image_encoder", "feature_extractor"}
    copy = tmp_path / "copy"
    shutil.copytree(tiny_root, copy)
    copied = model_identity(resolve(copy))
    assert copied["sha256"] == ident["sha256"]  # same files elsewhere: same fingerprint
    assert copied["components"]["vae"]["path"] != ident["components"]["vae"]["path"]
    config = component_dir(copy, "vae") / "config.json"
    config.write_text(config.read_text().replace('"layers_per_block": 0', '"layers_per_block": 2'))
    changed = model_identity(resolve(copy))
    assert changed["components"]["vae"]["sha256"] != ident["components"]["vae"]["sha256"]
    assert changed["components"]["text_encoder"] == copied["components"]["text_encoder"]
    f1 = model_identity(paths, "f1")
    assert f1["components"]["transformer"]["sha256"] != ident["components"]["transformer"]["sha256"]


def test_hf_blob_names_stand_in_for_hashing_big_weights(tmp_path: Path) -> None:
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"\0" * (comp._HASH_CONTENT_MAX + 1))
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "model.safetensors").symlink_to(blob)
    first = comp.folder_fingerprint(snap)
    blob.rename(tmp_path / "blobs" / ("cd" * 32))
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(tmp_path / "blobs" / ("cd" * 32))
    assert comp.folder_fingerprint(snap) != first  # same size, other blob: another file


def test_f1_variant_loads_the_f1_transformer(tiny_root: Path, tiny_components: Any) -> None:
    paths = resolve("tiny")
    f1 = load_components(paths, device="cpu", variant="f1")
    assert f1.variant == "f1" and f1.identity["variant"] == "f1"
    with torch.no_grad():
        a = tiny_components.transformer(**transformer_inputs(tiny_components))[0]
        b = f1.transformer(**transformer_inputs(f1))[0]
    assert a.shape == b.shape and not torch.equal(a, b)
    with pytest.raises(ModelError, match="F1 transformer"):
        load_components(dataclasses.replace(paths, transformer_f1=None), device="cpu", variant="f1")
    with pytest.raises(ValueError, match="variant"):
        load_components(paths, device="cpu", variant="t2v")


def test_group_offloading_hooks_keep_the_outputs(tiny_root: Path, tiny_components: Any) -> None:
    """Low mode's hooks, exercised on CPU: the block-level wiring must not change any result."""
    paths = resolve("tiny")
    fresh = load_components(paths, device="cpu")
    cpu = torch.device("cpu")
    comp._group_offload(fresh.transformer, cpu, use_stream=False, low_cpu_mem_usage=False)
    comp._group_offload(fresh.text_encoder, cpu, use_stream=False, low_cpu_mem_usage=True)
    with torch.no_grad():
        assert torch.equal(fresh.transformer(**transformer_inputs(fresh))[0], tiny_components.transformer(**transformer_inputs(tiny_components))[0])
        assert torch.equal(llama_hidden(fresh, "a dog"), llama_hidden(tiny_components, "a dog"))


def test_on_device_is_a_no_op_on_cpu_and_in_high_mode(tiny_components: Any) -> None:
    c = tiny_components
    low = dataclasses.replace(c, vram="low")
    for bundle in (c, low):
        with bundle.on_device(c.vae, c.image_encoder):
            assert c.vae.device == torch.device("cpu")
        assert c.vae.device == torch.device("cpu")


def test_low_mode_on_cpu_places_nothing(tiny_root: Path) -> None:
    c = load_components(resolve("tiny"), device="cpu", vram="low")
    assert c.vram == "high" and c.offloaded == frozenset()
    assert not c.vae.use_tiling


def test_devices() -> None:
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(FploopdError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(FploopdError, match="one worker per device"):
        resolve_device("cuda:0,cuda:1")
    with pytest.raises(FploopdError, match="unknown device"):
        resolve_device("gpu7")


def test_damaged_files_are_a_model_error_naming_the_component(tiny_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_root, copy)
    (component_dir(copy, "image_encoder") / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ModelError, match=r"could not load image_encoder from .*image_encoder"):
        load_components(resolve(copy), device="cpu")


def test_prompt_embeddings_are_cached_by_prompt(tiny_components: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fploopd.engine import encode

    c = tiny_components
    c.prompt_cache.clear()
    calls: list[int] = []
    hook = c.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        first = encode.encode_prompt(c, "a cat walks")
        again = encode.encode_prompt(c, "a cat walks")
        assert again is first and len(calls) == 1  # the 8B Llama runs once per prompt
        fresh = encode._encode_prompt(c, "a cat walks")
        assert torch.equal(fresh.llama, first.llama) and torch.equal(fresh.pooler, first.pooler)
        other = encode.encode_prompt(c, "a dog runs")
        assert len(calls) == 3 and not torch.equal(other.llama, first.llama)

        monkeypatch.setattr(encode, "PROMPT_CACHE_SIZE", 2)
        encode.encode_prompt(c, "a cat walks")  # most recently used again
        encode.encode_prompt(c, "a bird sings")  # evicts "a dog runs", the least recently used
        assert list(c.prompt_cache) == ["a cat walks", "a bird sings"]
    finally:
        hook.remove()
        c.prompt_cache.clear()
