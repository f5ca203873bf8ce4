"""The transformer's GEMM shapes at the 640 bucket: cuBLAS bf16 against ``torch._scaled_mm`` in e4m3
with row-wise scales (what ``PreparedWeights.quantize_fp8`` uses) and with tensor-wise scales, GEMM alone
(operands already quantised). Prints each shape's TFLOP/s and the per-forward total in ms.
Usage: ``python3 -m tools.probes.fp8_gemm [--out F.json]``.
"""

# ruff: noqa: B023 - each lambda runs inside its own loop iteration
from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fploopd.bench.timing import kernel_ms

# (M, K, N, calls per forward): 20 double blocks (image stream 18,400 tokens, text 769), 40 single
# blocks (19,169 tokens; q, k, v, the MLP in, and the joint out projection 3072 + 12288 -> 3072).
SHAPES = [(18400, 3072, 3072, 80), (18400, 3072, 12288, 20), (18400, 12288, 3072, 20),
          (769, 3072, 3072, 80), (769, 3072, 12288, 20), (769, 12288, 3072, 20),
          (19169, 3072, 3072, 120), (19169, 3072, 12288, 40), (19169, 15360, 3072, 40)]


def timed(fn: Callable[[], object]) -> float:
    """Median ms of ``fn`` over 20 calls."""
    return kernel_ms(fn, repeats=20)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    rows, totals = [], {"bf16": 0.0, "fp8_row": 0.0, "fp8_tensor": 0.0}
    for m, k, n, calls in SHAPES:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        x8, w8 = x.to(torch.float8_e4m3fn), (w * 50).to(torch.float8_e4m3fn)
        sa_row, sb_row = torch.rand(m, 1, device="cuda") + 0.5, torch.rand(1, n, device="cuda") + 0.5
        one = torch.ones((), device="cuda")
        fns = {
            "bf16": lambda: F.linear(x, w),
            "fp8_row": lambda: torch._scaled_mm(x8, w8.t(), scale_a=sa_row, scale_b=sb_row,
                                                out_dtype=torch.bfloat16, use_fast_accum=True),
            "fp8_tensor": lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one,
                                                   out_dtype=torch.bfloat16, use_fast_accum=True),
        }
        row = {"m": m, "k": k, "n": n, "calls": calls}
        for name, fn in fns.items():
            ms = timed(fn)
            row[name + "_ms"], row[name + "_tflops"] = ms, 2 * m * k * n / ms / 1e9
            totals[name] += ms * calls
        rows.append(row)
        print(row, flush=True)
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}")
    print("per-forward GEMM ms: " + "  ".join(f"{k}={v:.1f}" for k, v in totals.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows,
                       "per_forward_ms": totals}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
