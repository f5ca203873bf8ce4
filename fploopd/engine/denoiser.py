"""The transformer as core's ``denoise(x, sigma) -> x0`` callable.

FramePack's flow-matching wrapper: the model predicts a velocity ``v`` at ``timestep = sigma*1000``,
``x0 = x - v*sigma``; real CFG ``neg + cfg*(pos - neg)`` with std-rescale, the negative pass skipped
at cfg 1; distilled guidance passed as ``guidance*1000``. Latents stay float32 between steps; the
model sees them in its own dtype, and x0 is computed from that rounded input, as FramePack does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from fploopd.core.sampler import Denoise
from fploopd.engine.encode import PromptEmbeds


class TransformerFn(Protocol):
    """The transformer with diffusers' keyword arguments; ``branch`` names the CFG pass (for caches)."""

    def reset(self, num_steps: int) -> None: ...

    def __call__(self, *, branch: str = "pos", **kwargs: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Guidance:
    distilled: float = 10.0
    cfg: float = 1.0
    rescale: float = 0.0


def prompt_kwargs(prompt: PromptEmbeds, guidance: float, device: torch.device, dtype: torch.dtype) -> dict:
    p = prompt.to(device, dtype)
    return {
        "encoder_hidden_states": p.llama,
        "encoder_attention_mask": p.mask,
        "pooled_projections": p.pooler,
        "guidance": torch.tensor([guidance * 1000.0], device=device).to(dtype),
    }


def rescale_cfg(pred_cfg: torch.Tensor, pred_pos: torch.Tensor, rescale: float) -> torch.Tensor:
    """Match the guided prediction's std to the positive one's (Lin et al. 2023), by ``rescale``."""
    if rescale == 0:
        return pred_cfg
    dims = list(range(1, pred_pos.ndim))
    rescaled = pred_cfg * (pred_pos.std(dim=dims, keepdim=True) / pred_cfg.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1.0 - rescale) * pred_cfg


def make_denoise(
    model: TransformerFn,
    *,
    positive: dict[str, torch.Tensor],
    negative: dict[str, torch.Tensor] | None,
    context: dict[str, torch.Tensor],
    guidance: Guidance,
    dtype: torch.dtype = torch.bfloat16,
) -> Denoise:
    """``positive``/``negative``: ``prompt_kwargs``; ``context``: image embeds, indices and clean latents."""
    if guidance.cfg != 1.0 and negative is None:
        raise ValueError("cfg != 1 needs a negative prompt conditioning")

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.float()
        hidden = x.to(dtype)
        timestep = (sigma * 1000.0).to(dtype)
        pos = model(branch="pos", hidden_states=hidden, timestep=timestep, **positive, **context).float()
        if guidance.cfg == 1.0:
            neg = torch.zeros_like(pos)
        else:
            neg = model(branch="neg", hidden_states=hidden, timestep=timestep, **negative, **context).float()
        pred = rescale_cfg(neg + guidance.cfg * (pos - neg), pos, guidance.rescale)
        x0 = hidden.float() - pred * sigma.view(-1, *([1] * (x.ndim - 1)))
        return x0.to(x.dtype)

    return denoise


class StockTransformer:
    """diffusers' own forward, for reference runs and as the baseline."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    def reset(self, num_steps: int) -> None:
        pass

    def __call__(self, *, branch: str = "pos", **kwargs: torch.Tensor) -> torch.Tensor:
        return self.transformer(**kwargs, return_dict=False)[0]
