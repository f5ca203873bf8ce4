"""``torch.compile`` for the engine: regional compilation of the block functions, and a guard that
falls back to eager code when the compiler fails.

One graph per block kind, shared by all 60 blocks (block modules and their prepared weights are
arguments, so dynamo lifts their tensors as graph inputs); it fuses norms, modulation, rope and
residuals around the GEMMs. CUDA graphs are not used: a forward is ~0.7-0.95 s of ~1000 large
kernels and the profile shows the GPU busy 99% of it (docs/perf-notes.md).
"""

from __future__ import annotations

import copyreg
import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from loguru import logger

from fploopd.engine.blocks import BlockFns, double_block, single_block


def has_triton() -> bool:
    """Whether inductor can generate GPU code here (so compiling is worth it)."""
    return importlib.util.find_spec("triton") is not None


def configure_dynamo() -> None:
    import torch._dynamo

    # inductor's cache key pickles the tensors' memory formats, which pickle as the global
    # "torch.contiguous_format" found through the first module in sys.modules holding ``torch``:
    # the key then depends on import order, and a compile helper's graphs (compile_ahead) never
    # match the worker's. Pickled by name through a function of ours, the key is the same in both.
    copyreg.pickle(torch.memory_format, _reduce_memory_format)
    cfg = torch._dynamo.config
    # One entry per (block kind, attention kernel, fp8, text length); the default limit of 8 is
    # reached by a benchmark that tries every variant in one process.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 64))


def _reduce_memory_format(fmt: torch.memory_format) -> tuple[Callable[[str], torch.memory_format], tuple[str]]:
    return memory_format_named, (str(fmt).removeprefix("torch."),)


def memory_format_named(name: str) -> torch.memory_format:
    """``torch.<name>`` for a memory format's name (what pickles of memory formats call)."""
    value = getattr(torch, name)
    if not isinstance(value, torch.memory_format):
        raise TypeError(f"torch.{name} is not a memory format")
    return value


@functools.cache
def compiled_blocks(mode: str | None = None) -> BlockFns:
    """The block functions under torch.compile, created once per process (per mode) and shared by
    runners. ``mode``: torch.compile's (e.g. "max-autotune-no-cudagraphs", which lets inductor fuse
    elementwise epilogues into Triton GEMMs)."""
    configure_dynamo()
    return torch.compile(double_block, mode=mode), torch.compile(single_block, mode=mode)


def guarded(eager: Callable[..., Any], compiled: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``compiled``, falling back to ``eager`` for good after its first failure: an unattended
    worker should lose speed, not jobs, when the compiler meets a shape it cannot handle."""
    failed = False

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler error: run eagerly instead
                failed = True
                logger.warning("compiled {} failed ({}: {}); running it eagerly from now on", what,
                               type(exc).__name__, str(exc)[:200])
        return eager(*args, **kwargs)

    return call


__all__ = ["compiled_blocks", "configure_dynamo", "guarded", "has_triton"]
