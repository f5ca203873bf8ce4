"""FlashAttention 4's Hopper kernel (``flash_attn.cute``, flash-attn-4) against cuDNN SDPA at the
FramePack 640-bucket attention shape, on its own and between GEMMs (the clocks a forward runs at).

Prints a table; with ``--out F.json`` writes the figures. Needs a Hopper GPU and flash-attn-4 with
its CuTe DSL wheels (nvidia-cutlass-dsl). Usage: ``python3 -m tools.probes.fa4_attention``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from fploopd.bench.timing import kernel_ms

SHAPE = (1, 18400 + 729 + 40, 24, 128)  # (B, S, H, D): FramePack's full context at 640x640
Attn = Callable[[Tensor, Tensor, Tensor], Tensor]


def cudnn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def fa4(**opts: object) -> Attn:
    from flash_attn.cute.interface import _flash_attn_fwd

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _flash_attn_fwd(q, k, v, **opts)[0]

    return run


def rel_error(fn: Attn, seqlen: int, seed: int) -> float:
    """‖out − ref‖ / ‖ref‖ against float64 math on fresh random inputs."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn((1, seqlen, 24, 128), generator=gen, device="cuda", dtype=torch.bfloat16) * 2
               for _ in range(3))
    ref = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    out = torch.full_like(q, float("nan"))
    out.copy_(fn(q, k, v))
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out.double() - ref).norm() / ref.norm()).item()


def timed(fn: Attn, sets: list[tuple[Tensor, Tensor, Tensor]], reps: int, load: Callable[[], None] | None) -> float:
    """Median ms of ``fn`` over ``reps`` calls rotating input sets; ``load`` runs between calls."""
    rotation = itertools.cycle(sets)
    for s in sets:
        fn(*s)
    return kernel_ms(lambda: fn(*next(rotation)), repeats=reps, warmup=0, between=load)


def input_sets(n: int = 3) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``n`` random bf16 (q, k, v) sets of ``SHAPE``, rotated through so no call hits a warm L2."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    return [tuple(torch.randn(SHAPE, generator=gen, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            for _ in range(n)]


def gemm_load() -> Callable[[], None]:
    """About 2.9 ms of GEMM, as a block runs between two attentions (the clocks a forward runs at)."""
    x = torch.randn((SHAPE[1], 3072), device="cuda", dtype=torch.bfloat16)
    w = torch.randn((3072 * 4, 3072), device="cuda", dtype=torch.bfloat16)

    def gemms() -> None:
        for _ in range(3):
            F.linear(x, w)

    return gemms


def write_rows(path: str, flops: float, rows: dict) -> None:
    with open(path, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": SHAPE,
                   "flops": flops, "rows": rows}, f, indent=1)


def setup() -> tuple[argparse.Namespace, float, list[tuple[Tensor, Tensor, Tensor]], Callable[[], None]]:
    """The attention probes' start: ``--reps`` and ``--out``, the FLOPs of one call at ``SHAPE``,
    the input sets and the GEMM load."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out")
    return parser.parse_args(), 4 * SHAPE[1] ** 2 * SHAPE[2] * SHAPE[3], input_sets(), gemm_load()


def main() -> int:
    args, flops, sets, gemms = setup()

    variants: dict[str, Attn] = {"cudnn_sdpa": cudnn, "fa4_default": fa4()}
    for tile in ((128, 176), (128, 192), (128, 160), (128, 144), (192, 128), (128, 112)):
        variants[f"fa4_{tile[0]}x{tile[1]}"] = fa4(tile_mn=tile)
    variants["fa4_128x128_no_rs"] = fa4(tile_mn=(128, 128), mma_pv_is_rs=False)
    variants["fa4_128x176_no_rs"] = fa4(tile_mn=(128, 176), mma_pv_is_rs=False)
    variants["fa4_128x128_no_overlap"] = fa4(tile_mn=(128, 128), intra_wg_overlap=False)

    rows: dict[str, dict[str, float | str]] = {}
    ref_full = cudnn(*sets[0]).float()
    for name, fn in variants.items():
        t0 = time.perf_counter()
        try:
            errs = [rel_error(fn, n, seed) for seed, n in enumerate((1000, 4097, 9000))]
            first = time.perf_counter() - t0
            dev = (fn(*sets[0]).float() - ref_full).abs().max().item()
            alone = timed(fn, sets, args.reps, None)
            loaded = timed(fn, sets, args.reps, gemms)
            rows[name] = {"ms": alone, "ms_between_gemms": loaded, "tflops": flops / alone / 1e9,
                          "tflops_between_gemms": flops / loaded / 1e9, "rel_err_max": max(errs),
                          "max_abs_vs_cudnn": dev, "first_s": first}
        except Exception as exc:  # noqa: BLE001 - a config the kernel does not support
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(name, rows[name], flush=True)

    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}  shape {SHAPE}  {flops:.3e} FLOP")
    print(f"{'variant':28s} {'ms':>7s} {'TF/s':>6s} {'ms@gemm':>8s} {'TF/s':>6s} {'rel err':>9s} {'vs cudnn':>9s}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:28s} {r['error'][:90]}")
            continue
        print(f"{name:28s} {r['ms']:7.3f} {r['tflops']:6.0f} {r['ms_between_gemms']:8.3f} "
              f"{r['tflops_between_gemms']:6.0f} {r['rel_err_max']:9.2e} {r['max_abs_vs_cudnn']:9.2e}")
    if args.out:
        write_rows(args.out, flops, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
