"""Sampling one planned section, and the checkpoint that lets a job resume between sections.

A job draws all its noise from one CPU generator seeded once and consumed by its sections in order,
so a checkpoint must hold the generator's state with the latents: restoring both makes the rest of
the job identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from safetensors.torch import load_file, save_file

from fploopd.core.plan import SectionIndices
from fploopd.core.sampler import sample_unipc
from fploopd.core.schedule import context_length, flow_sigmas
from fploopd.engine.denoiser import Guidance, TransformerFn, make_denoise
from fploopd.fsutil import atomic_path

LATENT_CHANNELS = 16


@dataclass(frozen=True)
class Conditioning:
    """What every section of a generation shares: prompt kwargs (``prompt_kwargs``) and image embeds."""

    positive: dict[str, torch.Tensor]
    negative: dict[str, torch.Tensor] | None
    image_embeds: torch.Tensor


@dataclass(frozen=True)
class SectionContext:
    """One section's layout and its clean context latents (float32, any device)."""

    indices: SectionIndices
    clean: torch.Tensor
    history_2x: torch.Tensor
    history_4x: torch.Tensor

    def kwargs(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {k: v.to(device) for k, v in self.indices.tensors().items()}
        out["latents_clean"] = self.clean.to(device, dtype)
        out["latents_history_2x"] = self.history_2x.to(device, dtype)
        out["latents_history_4x"] = self.history_4x.to(device, dtype)
        return out


def sample_section(
    model: TransformerFn,
    cond: Conditioning,
    context: SectionContext,
    *,
    latent_size: tuple[int, int],
    steps: int,
    generator: torch.Generator,
    guidance: Guidance,
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Denoise one window; returns its latents, float32 on the CPU.

    Noise comes from ``generator`` (a CPU generator) exactly as FramePack draws it, so the same seed
    gives the same noise whatever the device. ``on_step(i)`` runs after step ``i`` (0-based) and may
    raise to cancel.
    """
    window = len(context.indices.latents)
    h, w = latent_size
    noise = torch.randn((1, LATENT_CHANNELS, window, h, w), generator=generator, device=generator.device)
    sigmas = flow_sigmas(steps, context_length(window, h, w)).to(device)
    kwargs = context.kwargs(device, dtype)
    kwargs["image_embeds"] = cond.image_embeds.to(device, dtype)
    denoise = make_denoise(
        model, positive=cond.positive, negative=cond.negative, context=kwargs, guidance=guidance, dtype=dtype
    )
    model.reset(steps)
    callback = None if on_step is None else (lambda d: on_step(d["i"]))
    latents = sample_unipc(denoise, noise.to(device=device, dtype=torch.float32), sigmas, callback=callback)
    return latents.float().cpu()


def fingerprint(**parts: object) -> str:
    """A short stable hash of what a checkpoint belongs to (settings, seed, input hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class SectionState:
    """Progress of one generation: sections done, its latents so far, and the generator."""

    done: int
    tensors: dict[str, torch.Tensor]
    rng_state: torch.Tensor


class Checkpoint:
    """A safetensors file rewritten atomically after each section (never pickle)."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = Path(path)
        self.key = key

    def load(self) -> SectionState | None:
        if not self.path.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != self.key:
            logger.warning("checkpoint {} belongs to other settings; starting this generation afresh", self.path)
            return None
        tensors = load_file(str(self.path))
        rng_state = tensors.pop("rng_state")
        return SectionState(int(meta["done"]), tensors, rng_state)

    def save(self, state: SectionState) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
        tensors["rng_state"] = state.rng_state
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": self.key, "done": str(state.done)})
