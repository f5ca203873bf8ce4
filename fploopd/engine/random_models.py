"""FramePack's architectures with random weights, for the bench and ``model = "random:..."``
(``random_source``): the tiny family, or the full-size models.

Speed does not depend on weight values, so the full-size models are made without any download:
parameters are created in the target dtype on the target device and initialised there. The tiny
size is the tiny family (``engine/tiny.py``): its configs for a transformer or VAE built in memory,
its files on disk, loaded by ``load_components``, where a whole model set is wanted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fploopd.engine import tiny
from fploopd.engine.components import Components, encoder_dtype, load_components, placed_components, resolve_device
from fploopd.engine.loaders import hf_loader
from fploopd.engine.random_source import PREFIX, check_name, random_identity
from fploopd.engine.sources import resolve

FULL_TRANSFORMER: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": True,
    "text_embed_dim": 4096,
    "pooled_projection_dim": 768,
    "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
    "image_condition_type": None,
    "has_image_proj": True,
    "image_proj_dim": 1152,
    "has_clean_x_embedder": True,
}

# The tiny family's transformer config, for the tests that build it in memory.

# HunyuanVideo's VAE is diffusers' default AutoencoderKLHunyuanVideo config.
FULL_VAE: dict[str, Any] = {}

# Llama 3 8B as HunyuanVideo's text encoder (LlamaModel), CLIP-L text, SigLIP so400m/14 at 384.
FULL_LLAMA: dict[str, Any] = {
    "vocab_size": 128320,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
}
FULL_CLIP: dict[str, Any] = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                             "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                             "projection_dim": 768}
FULL_SIGLIP: dict[str, Any] = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                               "num_attention_heads": 16, "image_size": 384, "patch_size": 14}


@contextlib.contextmanager
def _build_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype`` on ``device`` (no fp32 host copy of 13B weights)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _finish(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    stray = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point() and t.dtype != dtype]
    if stray or any(t.device != device for t in model.parameters()):
        model = model.to(device=device, dtype=dtype)
    return model.eval().requires_grad_(False)


def transformer_config(size: str) -> dict[str, Any]:
    """``size``: "tiny" (the tiny family's) or "full"."""
    return FULL_TRANSFORMER if size == "full" else tiny.TRANSFORMER


def build_transformer(
    size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> nn.Module:
    """``size``: "tiny" or "full"; random weights from ``seed`` (reproducible on one device)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    device = torch.device(device)
    torch.manual_seed(seed)
    with _build_on(device, dtype):
        model = HunyuanVideoFramepackTransformer3DModel(**transformer_config(size))
    return _finish(model, device, dtype)


def build_vae(size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    from diffusers import AutoencoderKLHunyuanVideo

    device = torch.device(device)
    torch.manual_seed(seed)
    with _build_on(device, dtype):
        model = AutoencoderKLHunyuanVideo(**(FULL_VAE if size == "full" else tiny.VAE))
    return _finish(model, device, dtype)


def components(size: str, device: torch.device | str, transformer: Any = None, vae: Any = None) -> Components:
    """A whole model set: the tiny family as ``load_components`` loads it, or the full-size set with
    random weights around ``transformer`` and ``vae`` (either may be None where a stage needs only
    the encoders)."""
    if size == "full":
        return random_components(transformer, vae, device)
    return load_components(resolve("tiny"), device=str(device))


def random_components(transformer: Any, vae: Any, device: torch.device | str) -> Components:
    """A full-size ``Components`` with random weights around an already built transformer and VAE.

    Tokenizers carry no weights: the tiny family's are used (their ids fit the full vocabularies, and
    the template's 95 tokens are cropped as from the real one's), and the SigLIP preprocessor is the
    real one's configuration (384 px). Speed does not depend on either.
    """
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        LlamaConfig,
        LlamaModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    device = torch.device(device)
    dtype = encoder_dtype(device)
    torch.manual_seed(0)
    with _build_on(device, dtype):
        llama = LlamaModel(LlamaConfig(**FULL_LLAMA))
        clip = CLIPTextModel(CLIPTextConfig(**FULL_CLIP))
        siglip = SiglipVisionModel(SiglipVisionConfig(**FULL_SIGLIP))
    tiny_paths = resolve("tiny")
    size = FULL_SIGLIP["image_size"]
    return Components(
        transformer=transformer,
        text_encoder=_finish(llama, device, dtype),
        tokenizer=hf_loader("AutoTokenizer")(tiny_paths.tokenizer),
        text_encoder_2=_finish(clip, device, dtype),
        tokenizer_2=hf_loader("CLIPTokenizer")(tiny_paths.tokenizer_2),
        vae=vae,
        image_encoder=_finish(siglip, device, dtype),
        feature_extractor=SiglipImageProcessor(size={"height": size, "width": size}),
        device=device,
        vram="high",
        identity={"source": "full-random", "note": "random weights; tokenizers from the tiny family"},
    )


def load_random(model: str, device: str, *, vram: str = "auto", fp8: bool = False, compile_vae: bool = False) -> Any:
    """The model set ``model`` (``random_source.NAMES``) names, built on ``device`` and placed as a
    worker places real weights."""
    size = check_name(model)[len(PREFIX):]
    dev = resolve_device(device)
    transformer = build_transformer(size, dev, torch.bfloat16)
    vae = build_vae(size, dev, encoder_dtype(dev))
    if size == "full":
        built = random_components(transformer, vae, dev)
    else:  # the tiny family's encoders and tokenizers (from disk, loaded on the CPU: nothing placed twice)
        built = components("tiny", "cpu")
        built.transformer, built.vae = transformer, vae
    names = ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae", "image_encoder",
             "feature_extractor")  # fmt: skip
    return placed_components({n: getattr(built, n) for n in names}, dev, random_identity(model), vram=vram, fp8=fp8,
                             compile_vae=compile_vae)  # fmt: skip
