"""FP8 attention kernels at FramePack's 640-bucket attention shape: a Triton kernel of ours
(``tools/probes/fp8_attention_triton.py``, several tile configurations) and FlashAttention 3's FP8 forward,
against FA3's bf16 forward and cuDNN SDPA; alone and between GEMMs, with the error of each against
float64 math.

FP8 inputs are quantised per (batch, head), the descales FA3 takes; ``smooth`` first subtracts each
head's mean key (softmax does not change when every score of a row moves by the same amount, and
the keys of a DiT share a large common part that would otherwise eat the e4m3 range). Needs a
Hopper GPU and Triton; FA3 rows need ``flash_attn_interface`` (``tools/probes/fa3_shim`` on machines
without it). Usage: ``python3 -m tools.probes.fp8_attention_kernels [--out F.json]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tools.probes import fp8_attention_triton as fp8_attention
from tools.probes.fa4_attention import SHAPE, Attn, cudnn, setup, timed, write_rows

CONFIGS = [fp8_attention.KernelConfig(128, 128, w, st, ws) for w, st, ws in
           ((8, 3, False), (8, 3, True), (4, 3, True), (8, 2, True), (4, 2, True))]

def fa3(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn_interface import flash_attn_func

    return flash_attn_func(q, k, v)


def fa3_fp8(smooth: bool) -> Attn:
    from flash_attn_interface import flash_attn_func

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if smooth:
            k = k - k.mean(dim=1, keepdim=True)
        (q8, dq), (k8, dk), (v8, dv) = (fp8_attention.quantize_heads(t) for t in (q, k, v))
        return flash_attn_func(q8, k8, v8, q_descale=dq, k_descale=dk, v_descale=dv)

    return run


def kernel_only(q: Tensor, k: Tensor, v: Tensor) -> Callable:
    from flash_attn_interface import flash_attn_func

    (q8, dq), (k8, dk), (v8, dv) = (fp8_attention.quantize_heads(t) for t in (q, k, v))
    return lambda *_: flash_attn_func(q8, k8, v8, q_descale=dq, k_descale=dk, v_descale=dv)


def cname(c: fp8_attention.KernelConfig) -> str:
    return f"triton_fp8_{c.block_m}x{c.block_n}_w{c.num_warps}_s{c.num_stages}" + ("_ws" if c.warp_specialize else "")


def triton_fp8(config: fp8_attention.KernelConfig) -> Attn:
    return lambda q, k, v: fp8_attention.fp8_attention(q, k, v, config)


def triton_kernel_only(q: Tensor, k: Tensor, v: Tensor, config: fp8_attention.KernelConfig) -> Callable:
    args = fp8_attention.quantize(q, k, v)
    return lambda *_: fp8_attention.attention_fp8(*args, config=config)


def rel_error(fn: Attn, seqlen: int, seed: int, scale: float, offset: float) -> float:
    """‖out − ref‖ / ‖ref‖ against float64 on random inputs; ``scale`` sharpens the softmax and
    ``offset`` adds a key component shared by all tokens, as DiT keys have."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn((1, seqlen, 24, 128), generator=gen, device="cuda") for _ in range(3))
    q, v = (q * scale).bfloat16(), v.bfloat16()
    k = (k * scale + offset * torch.randn((1, 1, 24, 128), generator=gen, device="cuda")).bfloat16()
    ref = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    out = fn(q, k, v).double()
    return ((out - ref).norm() / ref.norm()).item()


def main() -> int:
    args, flops, sets, gemms = setup()

    variants: dict[str, Attn] = {"cudnn_sdpa": cudnn}
    for c in CONFIGS:
        variants[cname(c)] = triton_fp8(c)
    variants.update({"fa3_bf16": fa3, "fa3_fp8": fa3_fp8(False), "fa3_fp8_smooth": fa3_fp8(True)})
    cases = {"s1": (1.0, 0.0), "s2": (2.0, 0.0), "s2_offset4": (2.0, 4.0)}
    rows: dict[str, dict[str, float | str]] = {}
    ref_full = cudnn(*sets[0]).float()
    for name, fn in variants.items():
        t0 = time.perf_counter()
        try:
            row: dict[str, float | str] = {}
            if not name.endswith("_kernel"):
                for case, (scale, offset) in cases.items():
                    row[f"rel_err_{case}"] = max(rel_error(fn, n, seed, scale, offset)
                                                 for seed, n in enumerate((1000, 4097, 9000)))
                row["max_abs_vs_cudnn"] = (fn(*sets[0]).float() - ref_full).abs().max().item()
            row["first_s"] = time.perf_counter() - t0
            row["ms"] = timed(fn, sets, args.reps, None)
            row["ms_between_gemms"] = timed(fn, sets, args.reps, gemms)
            row["tflops"] = flops / row["ms"] / 1e9
            row["tflops_between_gemms"] = flops / row["ms_between_gemms"] / 1e9
            rows[name] = row
        except Exception as exc:  # noqa: BLE001 - a build without this kernel
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        print(name, rows[name], flush=True)

    best = min((r["ms"], n) for n, r in rows.items() if n.startswith("triton") and "ms" in r)[1]
    config = next(c for c in CONFIGS if cname(c) == best)
    for name, fn in ((best + "_kernel", triton_kernel_only(*sets[0], config)), ("fa3_fp8_kernel", kernel_only(*sets[0]))):
        try:
            ms, loaded = timed(fn, sets, args.reps, None), timed(fn, sets, args.reps, gemms)
            rows[name] = {"ms": ms, "ms_between_gemms": loaded, "tflops": flops / ms / 1e9,
                          "tflops_between_gemms": flops / loaded / 1e9}
        except Exception as exc:  # noqa: BLE001
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        print(name, rows[name], flush=True)

    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}  shape {SHAPE}  {flops:.3e} FLOP")
    for name, r in rows.items():
        print(f"{name:18s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.out:
        write_rows(args.out, flops, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
