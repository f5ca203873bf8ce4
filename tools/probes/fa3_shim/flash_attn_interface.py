"""FlashAttention 3's ``flash_attn_interface.flash_attn_func`` over the FA3 build that vLLM's wheel ships.

A measuring aid for GPU machines where FA3's Hopper sources cannot be built. vLLM's wheel carries
FA3 (``vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so``, built on torch's stable ABI); this module loads
that library from ``$FA3_SO`` and exposes the one function fploopd calls, with FA3's own signature,
so the ``fa3``/``fa3_fp8`` attention backends run unchanged. Put this folder on ``PYTHONPATH``.
Users install FlashAttention 3 itself (``hopper/`` of flash-attention), not this.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

_spec = importlib.util.spec_from_file_location("_vllm_fa3_C", os.environ["FA3_SO"])
assert _spec is not None and _spec.loader is not None
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))  # registers torch.ops._vllm_fa3_C


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float | None = None, causal: bool = False,
                    q_descale: Tensor | None = None, k_descale: Tensor | None = None,
                    v_descale: Tensor | None = None) -> Tensor:
    """Dense attention on (B, S, H, D); bf16/fp16, or e4m3 with (B, H) float32 descales (bf16 out)."""
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    b, s, h, d = q.shape
    cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)  # vLLM's build is varlen-only
    q, k, v = (t.reshape(b * s, h, d) for t in (q, k, v))
    out, *_ = torch.ops._vllm_fa3_C.fwd(
        q, k, v, None, None, None, None, cu, cu, None, None, None, s, s, None, None, None,
        None, None, None, q_descale, k_descale, v_descale, softmax_scale, causal, -1, -1, 0.0, True,
        None, 1, None, 0, None, 1, 0, None)
    return out.reshape(b, s, h, -1)
