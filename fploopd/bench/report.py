"""How bench figures are named and printed: kernel families, the GPU's name, log lines, the table."""

from __future__ import annotations

import platform
from typing import Any

import torch


def kernel_family(kernel: str) -> str:
    k = kernel.lower()
    if any(x in k for x in ("fmha", "flash", "cudnn", "attn", "attention", "sdpa")):
        return "attention"
    if any(x in k for x in ("gemm", "cutlass", "xmma", "nvjet", "matmul", "sm90_", "scaled_mm", "f8f8")):
        return "gemm"
    if k.startswith("triton") or "triton" in k:
        return "fused_elementwise"
    if "conv" in k:
        return "conv"
    return "other"


def gpu_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def short(row: dict[str, Any]) -> str:
    parts = []
    for k in ("median_s", "vs_baseline", "peak_gib", "max_abs_dev"):
        v = row.get(k)
        if v is not None:
            parts.append(f"{k}={v:.4g}")
    if row.get("note"):
        parts.append(str(row["note"]))
    return " ".join(parts)


def table(doc: dict[str, Any]) -> str:
    """A Markdown table of a bench document."""
    lines = [
        f"GPU: {doc['gpu']}, torch {doc['torch']}, model {doc['model']}, bucket {doc['bucket']}, window {doc['window']}",
        "",
        "| figure | median s | min s | max s | peak GiB | vs baseline | max abs dev | mean abs dev |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for name, r in doc["results"].items():
        lines.append(
            f"| {name} | {fmt(r['median_s'], '.4f')} | {fmt(r['min_s'], '.4f')} | {fmt(r['max_s'], '.4f')} | "
            f"{fmt(r['peak_gib'], '.1f')} | {fmt(r['vs_baseline'], '.3f')} | {fmt(r['max_abs_dev'], '.3g')} | "
            f"{fmt(r['mean_abs_dev'], '.3g')} |"
        )
    return "\n".join(lines)
