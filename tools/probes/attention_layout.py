"""Time SDPA at FramePack's 640-bucket size for the q/k/v layouts a forward can hand it.

The forward's projections write (B, S, H, D); SDPA wants (B, H, S, D). Is a strided view as fast
as a contiguous copy for each backend? Usage, from the repository root:
``python3 -m tools.probes.attention_layout``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fploopd.bench.timing import kernel_ms

B, S, H, D = 1, 19169, 24, 128
FLOPS = 4 * B * H * S * S * D


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    x = torch.randn(B, S, 3 * H * D, device=dev, dtype=torch.bfloat16)
    q_bshd, k_bshd, v_bshd = (t.unflatten(2, (H, D)) for t in x.split(H * D, dim=-1))  # projection outputs
    layouts = {
        "strided view of (B,S,H,D) slices": lambda: [t.transpose(1, 2) for t in (q_bshd, k_bshd, v_bshd)],
        "contiguous (B,S,H,D) then view": lambda: [t.contiguous().transpose(1, 2) for t in (q_bshd, k_bshd, v_bshd)],
        "contiguous (B,H,S,D) copy": lambda: [t.transpose(1, 2).contiguous() for t in (q_bshd, k_bshd, v_bshd)],
    }
    print(torch.cuda.get_device_name(), torch.__version__, "cudnn", torch.backends.cudnn.version())
    print(f"{'layout':38s} {'backend':8s} {'ms':>7s} {'TFLOP/s':>8s}  (layout prep included / excluded)")
    for name, make in layouts.items():
        q, k, v = make()
        for backend, kernel in (("default", None), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            def run(q=q, k=k, v=v, kernel=kernel):
                if kernel is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(kernel):
                    return F.scaled_dot_product_attention(q, k, v)

            def run_with_prep(make=make, kernel=kernel):
                qq, kk, vv = make()
                if kernel is None:
                    return F.scaled_dot_product_attention(qq, kk, vv)
                with sdpa_kernel(kernel):
                    return F.scaled_dot_product_attention(qq, kk, vv)

            try:
                ms, ms_prep = kernel_ms(run, repeats=30, warmup=5), kernel_ms(run_with_prep, repeats=30, warmup=5)
                print(f"{name:38s} {backend:8s} {ms:7.3f} {FLOPS / ms / 1e9:8.1f}  prep incl. {ms_prep:7.3f}")
            except RuntimeError as exc:
                print(f"{name:38s} {backend:8s} failed: {str(exc)[:80]}")


if __name__ == "__main__":
    main()
