"""Deterministic LoRA files for the tiny transformer, in each format users bring.

Written by the project's own code with the tiny model's real module names (read from the model built
on the ``meta`` device: no weights needed), for the tests and the demo. Same seed, same bytes.

Formats (``FORMATS``): "musubi" (musubi-tuner FramePack: ``lora_unet_...lora_down.weight`` + alpha),
"diffusers" (``transformer....lora_A.weight``, no alpha), "hunyuan" (musubi keys with HunyuanVideo
module names: fused ``img_attn_qkv``, ``linear1`` ...), "loha" and "lokr" (LyCORIS, musubi keys).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fploopd.engine import tiny

FORMATS = ("musubi", "diffusers", "hunyuan", "loha", "lokr")
BLOCK_STACKS = ("transformer_blocks.", "single_transformer_blocks.")


def tiny_transformer_meta(config: dict[str, Any] | None = None) -> nn.Module:
    """The transformer's structure, without weights (``config``: the tiny family's by default)."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    with torch.device("meta"):
        return HunyuanVideoFramepackTransformer3DModel(**(config or tiny.TRANSFORMER))


def block_linears(model: nn.Module, *, include_norms: bool = False) -> dict[str, tuple[int, int]]:
    """{module path: (out, in)} of the Linear modules in the blocks, as musubi-tuner's FramePack LoRA
    targets them (its default leaves out modules with "norm" in the name)."""
    return {
        path: (m.out_features, m.in_features)
        for path, m in model.named_modules()
        if isinstance(m, nn.Linear) and path.startswith(BLOCK_STACKS) and (include_norms or "norm" not in path)
    }


def write_tiny_lora(
    path: Path | str,
    fmt: str = "musubi",
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float | None = 2.0,
    dtype: torch.dtype = torch.float32,
    include_norms: bool = False,
) -> Path:
    """Write a LoRA in format ``fmt`` covering the tiny transformer's block linears; returns ``path``.

    ``alpha``: written where the format has it (None: no alpha key, i.e. alpha = rank)."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    gen = torch.Generator().manual_seed(seed)
    model = tiny_transformer_meta()
    if fmt == "hunyuan":
        tensors = hunyuan_tensors(model, gen, rank=rank, alpha=alpha)
    else:
        writer = _WRITERS[fmt]
        tensors = {}
        for module, shape in block_linears(model, include_norms=include_norms).items():
            tensors.update(writer(module, shape, gen, rank, alpha))
    path = Path(path)
    save_file({k: v.to(dtype).contiguous() for k, v in sorted(tensors.items())}, str(path), metadata={"format": "pt"})
    return path


def random_musubi_lora(
    model: nn.Module,
    *,
    rank: int = 32,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    include_norms: bool = True,
) -> dict[str, Tensor]:
    """A musubi-format LoRA covering every Linear of every block of ``model`` (any size; built on
    ``device``, no file): the bench's full-size rank-32 LoRA. Same seed, same values on one device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors: dict[str, Tensor] = {}
    for module, (out, inp) in block_linears(model, include_norms=include_norms).items():
        name = _musubi_name(module)
        down = torch.randn(rank, inp, generator=gen, device=device).mul_(1 / math.sqrt(inp))
        up = torch.randn(out, rank, generator=gen, device=device).mul_(0.2 / math.sqrt(rank))
        tensors[f"{name}.lora_down.weight"] = down.to(dtype)
        tensors[f"{name}.lora_up.weight"] = up.to(dtype)
        tensors[f"{name}.alpha"] = torch.tensor(float(rank), device=device)
    return tensors


def _randn(gen: torch.Generator, *shape: int, std: float) -> Tensor:
    return torch.randn(*shape, generator=gen) * std


def _alpha(alpha: float | None) -> dict[str, Tensor]:
    return {} if alpha is None else {"alpha": torch.tensor(float(alpha))}


def _musubi_name(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


def _lora_pair(shape: tuple[int, int], gen: torch.Generator, rank: int) -> tuple[Tensor, Tensor]:
    out, inp = shape
    return _randn(gen, rank, inp, std=1 / math.sqrt(inp)), _randn(gen, out, rank, std=0.2 / math.sqrt(rank))


def _musubi(module: str, shape: tuple[int, int], gen: torch.Generator, rank: int, alpha: float | None) -> dict[str, Tensor]:
    down, up = _lora_pair(shape, gen, rank)
    name = _musubi_name(module)
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up} | {
        f"{name}.{k}": v for k, v in _alpha(alpha).items()
    }


def _diffusers(module: str, shape: tuple[int, int], gen: torch.Generator, rank: int, alpha: float | None) -> dict[str, Tensor]:
    down, up = _lora_pair(shape, gen, rank)
    return {f"transformer.{module}.lora_A.weight": down, f"transformer.{module}.lora_B.weight": up}


def _loha(module: str, shape: tuple[int, int], gen: torch.Generator, rank: int, alpha: float | None) -> dict[str, Tensor]:
    out, inp = shape
    name = _musubi_name(module)
    t = {
        "hada_w1_a": _randn(gen, out, rank, std=0.5 / math.sqrt(rank)),
        "hada_w1_b": _randn(gen, rank, inp, std=1 / math.sqrt(inp)),
        "hada_w2_a": _randn(gen, out, rank, std=0.5 / math.sqrt(rank)),
        "hada_w2_b": _randn(gen, rank, inp, std=1.0),
    } | _alpha(alpha)
    return {f"{name}.{k}": v for k, v in t.items()}


def factor_pair(n: int) -> tuple[int, int]:
    """``n = a * b`` with ``a <= b`` as close as possible (LoKr's Kronecker factor sizes)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


def _lokr(module: str, shape: tuple[int, int], gen: torch.Generator, rank: int, alpha: float | None) -> dict[str, Tensor]:
    (o1, o2), (i1, i2) = factor_pair(shape[0]), factor_pair(shape[1])
    name = _musubi_name(module)
    t = {
        "lokr_w1": _randn(gen, o1, i1, std=0.5),
        "lokr_w2_a": _randn(gen, o2, rank, std=0.5 / math.sqrt(rank)),
        "lokr_w2_b": _randn(gen, rank, i2, std=1 / math.sqrt(i2)),
    } | _alpha(alpha)
    return {f"{name}.{k}": v for k, v in t.items()}


_WRITERS: dict[str, Callable[[str, tuple[int, int], torch.Generator, int, float | None], dict[str, Tensor]]] = {
    "musubi": _musubi,
    "diffusers": _diffusers,
    "loha": _loha,
    "lokr": _lokr,
}


def hunyuan_modules(model: nn.Module) -> dict[str, tuple[int, int]]:
    """HunyuanVideo's own (fused) block linears for ``model``'s sizes: {underscored name: (out, in)}."""
    cfg = model.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    mlp = int(hidden * cfg.mlp_ratio)
    out: dict[str, tuple[int, int]] = {}
    for i in range(cfg.num_layers):
        for stream in ("img", "txt"):
            out[f"double_blocks_{i}_{stream}_attn_qkv"] = (3 * hidden, hidden)
            out[f"double_blocks_{i}_{stream}_attn_proj"] = (hidden, hidden)
            out[f"double_blocks_{i}_{stream}_mlp_fc1"] = (mlp, hidden)
            out[f"double_blocks_{i}_{stream}_mlp_fc2"] = (hidden, mlp)
    for i in range(cfg.num_single_layers):
        out[f"single_blocks_{i}_linear1"] = (3 * hidden + mlp, hidden)
        out[f"single_blocks_{i}_linear2"] = (hidden, hidden + mlp)
    return out


def hunyuan_tensors(model: nn.Module, gen: torch.Generator, *, rank: int, alpha: float | None) -> dict[str, Tensor]:
    """A musubi-style LoRA with HunyuanVideo module names (as trained on HunyuanVideo)."""
    tensors: dict[str, Tensor] = {}
    for name, shape in hunyuan_modules(model).items():
        down, up = _lora_pair(shape, gen, rank)
        key = "lora_unet_" + name
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors.update({f"{key}.{k}": v for k, v in _alpha(alpha).items()})
    return tensors


def musubi_keys(modules: Iterable[str]) -> list[str]:
    """The key names of a musubi-tuner LoRA over ``modules`` (for key-coverage checks)."""
    return [f"{_musubi_name(m)}.{s}" for m in modules for s in ("lora_down.weight", "lora_up.weight", "alpha")]


__all__ = [
    "FORMATS",
    "block_linears",
    "factor_pair",
    "hunyuan_modules",
    "hunyuan_tensors",
    "musubi_keys",
    "tiny_transformer_meta",
    "write_tiny_lora",
]
