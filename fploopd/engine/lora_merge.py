"""Merging LoRAs into the transformer's weights, and switching between sets exactly.

A LoRA is merged, never applied per step: ``W = cast(W_base + sum_i scale_i * delta_i)``, each
``delta_i = (alpha / r) * up @ down`` (or a LyCORIS delta), summed in float32 and cast to the
weight's dtype once. The forward pass is then the plain one: no cost per step.

``LoraState`` owns the switching. The first time it touches a Linear it keeps a CPU copy of that
weight as loaded; every ``apply`` rebuilds each touched weight from that copy. So applying sets
A -> B -> A gives weights bit-identical to a fresh load plus ``apply(A)``, however often it
switches, and modules only the old set touched go back to their exact base values.

Order, for the caller (``components`` / the worker):

1. load the transformer (bf16), 2. ``LoraState(transformer).apply(set)``, 3. then FP8 and compile:
   ``PreparedWeights.quantize_fp8`` copies the (merged) bf16 weights, so after a later ``apply`` the
   caller re-makes them (``weights.remove_fp8(); weights.quantize_fp8(granularity)``). Fused
   projections need nothing: the fused linears' weights are views of the fused storage and are
   written in place. ``torch.compile``'d blocks read the weights as tensors: an in-place change
   does not recompile.
4. Low-VRAM mode: between runs the streamed blocks' parameters are the pinned host copies, so the
   merge writes there (pass ``device=`` a GPU to compute the deltas there).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from torch import Tensor, nn

from fploopd.engine.lora import MAX_ABS_SCALE, LinearIndex, ResolvedLora, check_scale
from fploopd.errors import InputError
from fploopd.lorafiles import FIELD
from fploopd.spec import MAX_LORAS as SPEC_MAX_LORAS

MAX_LORAS = SPEC_MAX_LORAS  # per job (the spec's bound): more is almost surely a mistake


@dataclass(frozen=True)
class ScaledLora:
    """One LoRA of a set, at its strength."""

    lora: ResolvedLora
    scale: float = 1.0

    def identity(self) -> dict[str, object]:
        return self.lora.identity(self.scale)


@dataclass(frozen=True)
class MergeStats:
    """What an ``apply`` did: modules rewritten, of them restored to base only, and seconds taken."""

    rewritten: int
    restored: int
    seconds: float


def set_identity(loras: Sequence[ScaledLora]) -> list[dict[str, object]]:
    """The set as manifests and checkpoint keys record it: name, sha256 and scale of each, in order."""
    return [entry.identity() for entry in loras]


class LoraState:
    """The LoRA set merged into ``model`` now, and the base weights to rebuild from.

    ``device``: where deltas are computed (default: each weight's own device). Keep it the same for
    the life of the state: results are bit-identical only for the same arithmetic.
    ``base_source``: reads a module's base weight by its path (``safetensors_base_source``: from
    the transformer's own files, memory-mapped) instead of keeping CPU copies. A full-coverage LoRA
    touches about 9 B of the full-size model's 13 B parameters: copies cost about 18 GB of host
    memory, the files nothing."""

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str | None = None,
        base_source: Callable[[str], Tensor] | None = None,
    ) -> None:
        self.model = model
        self.device = None if device is None else torch.device(device)
        self.base_source = base_source
        self.index = LinearIndex.of(model)
        self._linears: dict[str, nn.Linear] = {p: m for p, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._base: dict[str, Tensor] = {}  # module path -> its weight as loaded, on the CPU
        self._merged: set[str] = set()  # modules whose weight holds a delta now
        self.active: tuple[ScaledLora, ...] = ()

    @property
    def base_bytes(self) -> int:
        """Host memory held for restoring base weights."""
        return sum(t.numel() * t.element_size() for t in self._base.values())

    def identity(self) -> list[dict[str, object]]:
        return set_identity(self.active)

    @torch.no_grad()
    def apply(self, loras: Sequence[ScaledLora]) -> MergeStats:
        """Make the model's weights base + ``loras`` (``[]``: back to base), whatever was merged before."""
        start = time.perf_counter()
        loras = tuple(loras)
        _check_set(loras, self.index)
        if self._same(loras):
            return MergeStats(0, 0, 0.0)
        targets = {path for entry in loras for path in entry.lora.patches}
        restored = 0
        for path in sorted(self._merged | targets):
            self._write(path, [e for e in loras if path in e.lora.patches])
            restored += path not in targets
        self._merged = targets
        self.active = loras
        stats = MergeStats(len(self._merged) + restored, restored, time.perf_counter() - start)
        logger.info(
            "LoRA set {} merged: {} weights rewritten, {} restored, {:.2f} s",
            [f"{e.lora.name}:{e.scale:g}" for e in loras] or "none",
            stats.rewritten,
            stats.restored,
            stats.seconds,
        )
        return stats

    def _same(self, loras: tuple[ScaledLora, ...]) -> bool:
        return [(id(e.lora), e.scale) for e in loras] == [(id(e.lora), e.scale) for e in self.active]

    def _write(self, path: str, entries: list[ScaledLora]) -> None:
        """weight = cast(base + sum of the entries' scaled deltas), computed in float32."""
        weight = self._linears[path].weight
        base = self._base_of(path, weight)
        if not entries:
            weight.data.copy_(base)
            return
        device = self.device or weight.device
        # Move, then widen on the device: ``.to(cuda, float32)`` of a CPU tensor widens on the CPU
        # and sends twice the bytes (13 s against a few for a full-size switch on an H200).
        total = base.to(device, copy=True).to(torch.float32)
        for entry in entries:
            total.add_(entry.lora.patches[path].delta(device), alpha=entry.scale)
        weight.data.copy_(total.to(weight.dtype))

    def _base_of(self, path: str, weight: Tensor) -> Tensor:
        if self.base_source is not None:
            base = self.base_source(path)
            if base.shape != weight.shape:
                raise ValueError(f"the base weight of {path} read back is {tuple(base.shape)}, not {tuple(weight.shape)}")
            return base.to(weight.dtype)  # as the loader cast it
        base = self._base.get(path)
        if base is None:
            base = weight.detach().to("cpu", copy=True)
            self._base[path] = base
        return base


def safetensors_base_source(folder: Path | str) -> Callable[[str], Tensor]:
    """Base weights read from a diffusers model folder (one file, or shards with an index), so that
    a ``LoraState`` needs no copies. The files must be the ones the model was loaded from."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    else:
        single = folder / "diffusion_pytorch_model.safetensors"
        with safe_open(str(single), framework="pt") as f:
            weight_map = dict.fromkeys(f.keys(), single.name)

    def read(path: str) -> Tensor:
        key = f"{path}.weight"
        with safe_open(str(folder / weight_map[key]), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    return read


def _check_set(loras: tuple[ScaledLora, ...], index: LinearIndex) -> None:
    if len(loras) > MAX_LORAS:
        raise InputError(f"at most {MAX_LORAS} LoRAs per job, got {len(loras)}", field=FIELD)
    for entry in loras:
        check_scale(entry.lora.name, entry.scale)
        stray = [p for p in entry.lora.patches if p not in index.shapes]
        if stray:  # resolved against another model
            raise ValueError(f"LoRA {entry.lora.name} was resolved for another transformer (no module {stray[0]})")


__all__ = ["MAX_ABS_SCALE", "MAX_LORAS", "LoraState", "MergeStats", "ScaledLora", "safetensors_base_source", "set_identity"]
