"""The compile helper process (``compile_ahead``): the calls it repeats, described, and the process
that repeats them through torch.compile on modules of its own, so that their graphs land in the
compile cache a worker shares with it.

A call is described by what a graph depends on, not by its values: each tensor's shape, strides,
storage offset and dtype, the other arguments' values, and the grad mode it runs under. The helper
builds one block of each kind and a VAE from the worker's configs (random weights, prepared the
same way) and calls its compiled functions on random tensors of those descriptions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import Tensor, nn

from fploopd.engine.compile import compiled_blocks
from fploopd.engine.vae_accel import compile_decoder
from fploopd.engine.weights import PreparedWeights
from fploopd.procutil import die_with_parent

TARGETS = ("double_block", "single_block", "vae_decoder")
IDLE_EXIT_S = 300.0  # a helper with nothing to compile gives its memory back


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument as a graph sees it: its values do not matter to the compiler."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: str


ArgSpec = TensorSpec | str | bool | int | float | None


@dataclass(frozen=True)
class CallSpec:
    """One call of a compiled function, as the helper must repeat it."""

    target: str  # one of TARGETS
    args: tuple[ArgSpec, ...]  # the arguments after the module ones (a block and its weights)
    grad_mode: str  # "inference" | "no_grad" | "grad": tensors and graphs differ between them


def describe(target: str, args: tuple[Any, ...], layout: torch.memory_format | None = None) -> CallSpec:
    """``args`` of a call of ``target`` as a ``CallSpec``; ``layout``: describe tensors as the
    compiled path will pass them (converted to that memory format)."""
    return CallSpec(target, tuple(_arg_spec(a, layout) for a in args), _grad_mode())


def _arg_spec(value: Any, layout: torch.memory_format | None) -> ArgSpec:
    if isinstance(value, Tensor):
        if layout is not None:
            shape = tuple(value.shape)
            stride = tuple(torch.empty(shape, device="meta").contiguous(memory_format=layout).stride())
            return TensorSpec(shape, stride, 0, dtype_name(value.dtype))
        return TensorSpec(tuple(value.shape), tuple(value.stride()), value.storage_offset(), dtype_name(value.dtype))
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"cannot describe a {type(value).__name__} argument for the compile helper")


def _grad_mode() -> str:
    if torch.is_inference_mode_enabled():
        return "inference"
    return "grad" if torch.is_grad_enabled() else "no_grad"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def materialize(spec: TensorSpec, device: torch.device | str) -> Tensor:
    """A tensor matching ``spec`` (shape, strides, storage offset, dtype) with random values."""
    dtype = getattr(torch, spec.dtype)
    span = 1 + sum((n - 1) * s for n, s in zip(spec.shape, spec.stride, strict=True)) if all(spec.shape) else 0
    base = torch.empty(spec.offset + span, dtype=dtype, device=device)
    if dtype.is_floating_point:
        base.normal_()
    else:
        base.zero_()
    return base.as_strided(spec.shape, spec.stride, spec.offset)


@dataclass(frozen=True)
class HelperSetup:
    """What the helper builds to repeat the worker's calls: the models' classes and configs, how
    the worker prepared the blocks' weights, the device and the memory the helper may use."""

    device: str
    room: int | None  # bytes of GPU memory (None: no cap, the CPU)
    transformer_class: str  # "module:QualName"
    transformer_config: dict[str, Any]
    transformer_dtype: str
    transformer_requires_grad: bool
    fused: bool
    fp8_granularity: str | None
    compile_mode: str | None
    vae_class: str | None = None
    vae_config: dict[str, Any] | None = None
    vae_dtype: str = "float16"
    vae_requires_grad: bool = False
    idle_exit_s: float = IDLE_EXIT_S

    def targets(self) -> set[str]:
        """The functions a worker of this setup compiles (``TARGETS``)."""
        return {"double_block", "single_block"} | ({"vae_decoder"} if self.vae_class is not None else set())


def helper_main(setup: HelperSetup, conn: Connection) -> None:
    """The helper: repeat each described call through torch.compile, report it ready or failed."""
    die_with_parent()
    device = torch.device(setup.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if setup.room is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, setup.room / total), device)
    targets = _Targets(setup, device)
    while conn.poll(setup.idle_exit_s):
        try:
            spec = conn.recv()
        except EOFError:
            return
        if spec is None:
            return
        try:
            targets.call(spec)
            conn.send(("ready", spec))
        except Exception as exc:  # noqa: BLE001 - reported: the worker compiles this call itself
            conn.send(("failed", spec, f"{type(exc).__name__}: {str(exc)[:300]}"))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()


class _Targets:
    """The helper's compiled functions and the modules they are called with, built on first use."""

    def __init__(self, setup: HelperSetup, device: torch.device) -> None:
        self.setup, self.device = setup, device
        self._blocks: tuple[Any, ...] | None = None
        self._decoder: Callable[..., Any] | None = None

    def call(self, spec: CallSpec) -> None:
        fn, leading = self._target(spec.target)
        with _grad_context(spec.grad_mode):
            args = [materialize(a, self.device) if isinstance(a, TensorSpec) else a for a in spec.args]
            fn(*leading, *args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _target(self, target: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if target == "vae_decoder":
            return self._vae_decoder(), ()
        double_fn, single_fn, double, single, weights = self._block_set()
        if target == "double_block":
            return double_fn, (double, weights.of(double))
        return single_fn, (single, weights.of(single))

    def _block_set(self) -> tuple[Any, ...]:
        if self._blocks is None:
            s = self.setup
            config = {**s.transformer_config, "num_layers": 1, "num_single_layers": 1}
            model = _build(s.transformer_class, config, self.device, s.transformer_dtype, s.transformer_requires_grad)
            weights = PreparedWeights(model)
            if s.fused:
                weights.fuse()
            if s.fp8_granularity is not None:
                weights.quantize_fp8(s.fp8_granularity)
            double_fn, single_fn = compiled_blocks(s.compile_mode)
            self._blocks = (
                double_fn,
                single_fn,
                model.transformer_blocks[0],
                model.single_transformer_blocks[0],
                weights,
            )
        return self._blocks

    def _vae_decoder(self) -> Callable[..., Any]:
        if self._decoder is None:
            s = self.setup
            if s.vae_class is None or s.vae_config is None:
                raise ValueError("this worker does not compile its VAE decoder")
            vae = _build(s.vae_class, s.vae_config, self.device, s.vae_dtype, s.vae_requires_grad)
            vae.to(memory_format=torch.channels_last_3d)  # as vae_accel lays out a compiled decoder
            self._decoder = compile_decoder(vae.decoder)
        return self._decoder


def _grad_context(mode: str) -> Any:
    if mode == "inference":
        return torch.inference_mode()
    return torch.no_grad() if mode == "no_grad" else torch.enable_grad()


def _build(class_path: str, config: dict[str, Any], device: torch.device, dtype: str, requires_grad: bool) -> nn.Module:
    module_name, _, qualname = class_path.partition(":")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    with torch.device(device):
        model = cls.from_config(config)
    return model.to(dtype=getattr(torch, dtype)).eval().requires_grad_(requires_grad)


__all__ = ["IDLE_EXIT_S", "TARGETS", "CallSpec", "HelperSetup", "TensorSpec", "describe", "dtype_name", "helper_main",
           "materialize"]  # fmt: skip
