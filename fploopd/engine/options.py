"""What a ``forward.TransformerRunner`` runs with, as one frozen value.

``accel.optimize`` decides the options for a device and returns them; a job adds its TeaCache
threshold with ``with_teacache``. Nothing is read back from the modules or from module globals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fploopd.engine.attention import ATTENTION_BACKENDS


@dataclass(frozen=True)
class RunnerOptions:
    """``attention``: a kernel name of ``attention.KERNELS``. ``compile``: the block functions under
    torch.compile (``compile_mode``: torch.compile's mode, None for its default). ``fp8``: the FP8
    weights of the runner's ``PreparedWeights`` where there are some. ``gelu_epilogue``: on CUDA in
    bf16, the MLP GELU as a GEMM epilogue and the single blocks' out projection without the concat
    (``blocks.linear_gelu``, ``blocks.joint_out``). ``teacache_threshold``: None (or 0)
    skips nothing; FramePack uses 0.15."""

    attention: str = "sdpa"
    compile: bool = False
    compile_mode: str | None = None
    fp8: bool = False
    gelu_epilogue: bool = True
    teacache_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, not {self.attention!r}")
        if not self.teacache_threshold:  # `fploopd bench --teacache 0` means off, as None does
            object.__setattr__(self, "teacache_threshold", None)

    def with_teacache(self, threshold: float | None) -> RunnerOptions:
        return dataclasses.replace(self, teacache_threshold=threshold)

    def replace(self, **changes: object) -> RunnerOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


__all__ = ["RunnerOptions"]
