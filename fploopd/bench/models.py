"""Architectures for benchmarks: the real configs, built with random weights straight on the device.

Speed does not depend on weight values, so the full-size models are made without any download:
parameters are created in the target dtype on the target device and initialised there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fploopd.engine import tiny

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

TINY_TRANSFORMER: dict[str, Any] = {
    **FULL_TRANSFORMER,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 2,
    "num_single_layers": 2,
    "num_refiner_layers": 1,
    "text_embed_dim": 32,
    "pooled_projection_dim": 32,
    "image_proj_dim": 32,
    "rope_axes_dim": (4, 6, 6),
}

# HunyuanVideo's VAE is diffusers' default AutoencoderKLHunyuanVideo config.
FULL_VAE: dict[str, Any] = {}
TINY_VAE: dict[str, Any] = tiny.VAE  # the tiny family's VAE: the one the CPU tests and the demo run

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
TINY_LLAMA: dict[str, Any] = {**FULL_LLAMA, "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}
FULL_CLIP: dict[str, Any] = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                             "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
                             "projection_dim": 768}
TINY_CLIP: dict[str, Any] = {**FULL_CLIP, "vocab_size": 512, "hidden_size": 32, "intermediate_size": 64,
                             "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 32,
                             "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
FULL_SIGLIP: dict[str, Any] = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                               "num_attention_heads": 16, "image_size": 384, "patch_size": 14}
TINY_SIGLIP: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                               "num_attention_heads": 2, "image_size": 56, "patch_size": 14}


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


def build_transformer(
    size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> nn.Module:
    """``size``: "tiny" or "full"; random weights from ``seed`` (reproducible on one device)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    device = torch.device(device)
    torch.manual_seed(seed)
    with _build_on(device, dtype):
        model = HunyuanVideoFramepackTransformer3DModel(**(FULL_TRANSFORMER if size == "full" else TINY_TRANSFORMER))
    return _finish(model, device, dtype)


def build_vae(size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    from diffusers import AutoencoderKLHunyuanVideo

    device = torch.device(device)
    torch.manual_seed(seed)
    with _build_on(device, dtype):
        model = AutoencoderKLHunyuanVideo(**(FULL_VAE if size == "full" else TINY_VAE))
    return _finish(model, device, dtype)


def build_text_encoders(size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    device = torch.device(device)
    torch.manual_seed(seed)
    with _build_on(device, dtype):
        llama = LlamaModel(LlamaConfig(**(FULL_LLAMA if size == "full" else TINY_LLAMA)))
        clip = CLIPTextModel(CLIPTextConfig(**(FULL_CLIP if size == "full" else TINY_CLIP)))
    return _finish(llama, device, dtype), _finish(clip, device, dtype)


def build_image_encoder(size: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    device = torch.device(device)
    torch.manual_seed(seed)
    with _build_on(device, dtype):
        model = SiglipVisionModel(SiglipVisionConfig(**(FULL_SIGLIP if size == "full" else TINY_SIGLIP)))
    return _finish(model, device, dtype)


def random_components(transformer: nn.Module, vae: nn.Module, device: torch.device | str) -> Any:
    """A full-size ``Components`` with random weights around an already built transformer and VAE.

    Tokenizers carry no weights: the tiny family's are used (their ids fit the full vocabularies), and
    the SigLIP preprocessor is the real one's configuration (384 px). Speed does not depend on either.
    """
    from transformers import SiglipImageProcessor

    from fploopd.engine.components import Components, _hf_loader, encoder_dtype
    from fploopd.engine.sources import resolve

    device = torch.device(device)
    dtype = encoder_dtype(device)
    llama, clip = build_text_encoders("full", device, dtype)
    siglip = build_image_encoder("full", device, dtype)
    tiny = resolve("tiny")
    size = siglip.config.image_size
    return Components(
        transformer=transformer,
        text_encoder=llama,
        tokenizer=_hf_loader("AutoTokenizer")(tiny.tokenizer),
        text_encoder_2=clip,
        tokenizer_2=_hf_loader("CLIPTokenizer")(tiny.tokenizer_2),
        vae=vae,
        image_encoder=siglip,
        feature_extractor=SiglipImageProcessor(size={"height": size, "width": size}),
        device=device,
        vram="high",
        identity={"source": "full-random", "note": "random weights; tokenizers from the tiny family"},
    )
