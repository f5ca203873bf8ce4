"""The transformer's inputs for one FramePack section, at the benchmark's sizes.

Original (inverted anti-drifting) layout: ``[1 pre | blank | window | 1 post | 2 (2x) | 16 (4x)]``,
clean latents = pre + post, 2x history of 2 latents, 4x history of 16, 40 text tokens of 512,
729 SigLIP tokens, distilled guidance 10 (x1000), all in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fploopd.core.plan import SectionIndices, inverted_section


@dataclass(frozen=True)
class InputSpec:
    latent_h: int = 80  # 640x640 bucket
    latent_w: int = 80
    window: int = 9
    blank: int = 9  # padding 1 x window
    text_tokens: int = 40
    text_length: int = 512
    text_dim: int = 4096
    pooled_dim: int = 768
    image_tokens: int = 729
    image_dim: int = 1152
    channels: int = 16

    @property
    def indices(self) -> SectionIndices:
        return inverted_section(self.blank, self.window)

    @property
    def bucket(self) -> str:
        return f"{self.latent_h * 8}x{self.latent_w * 8}"


def full_spec() -> InputSpec:
    return InputSpec()


def tiny_spec(cfg: dict) -> InputSpec:
    return InputSpec(latent_h=4, latent_w=4, window=3, blank=3, text_tokens=7, text_length=12,
                     text_dim=cfg["text_embed_dim"], pooled_dim=cfg["pooled_projection_dim"],
                     image_tokens=5, image_dim=cfg["image_proj_dim"])


def section_kwargs(spec: InputSpec, device: torch.device | str, dtype: torch.dtype, seed: int = 0, sigma: float = 0.7) -> dict[str, Tensor]:
    """Every keyword of the transformer's forward; random values from a CPU generator (so the same
    seed gives the same inputs on any device), never zeros (they can run faster than real data)."""
    g = torch.Generator().manual_seed(seed)
    idx = spec.indices
    c, h, w = spec.channels, spec.latent_h, spec.latent_w

    def rnd(*shape: int) -> Tensor:
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype)

    mask = torch.zeros(1, spec.text_length, dtype=torch.bool)
    mask[:, : spec.text_tokens] = True
    text = rnd(1, spec.text_length, spec.text_dim)
    text[:, spec.text_tokens :] = 0  # FramePack pads with zeros
    out = {
        "hidden_states": rnd(1, c, spec.window, h, w),
        "timestep": torch.tensor([sigma * 1000.0]).to(device=device, dtype=dtype),
        "encoder_hidden_states": text,
        "encoder_attention_mask": mask.to(device),
        "pooled_projections": rnd(1, spec.pooled_dim),
        "image_embeds": rnd(1, spec.image_tokens, spec.image_dim),
        "guidance": torch.tensor([10000.0]).to(device=device, dtype=dtype),
        "latents_clean": rnd(1, c, len(idx.clean), h, w),
        "latents_history_2x": rnd(1, c, len(idx.history_2x), h, w),
        "latents_history_4x": rnd(1, c, len(idx.history_4x), h, w),
    }
    out.update({k: v.to(device) for k, v in idx.tensors().items()})
    return out


def token_counts(spec: InputSpec) -> tuple[int, int]:
    """(latent-stream tokens, conditioning tokens) of one forward, for the FLOP count."""
    idx = spec.indices
    hp, wp = spec.latent_h // 2, spec.latent_w // 2
    ceil = lambda a, b: -(-a // b)
    latent = (spec.window + len(idx.clean)) * hp * wp
    latent += ceil(len(idx.history_2x), 2) * ceil(hp, 2) * ceil(wp, 2)
    latent += ceil(len(idx.history_4x), 4) * ceil(hp, 4) * ceil(wp, 4)
    return latent, spec.image_tokens + spec.text_tokens
