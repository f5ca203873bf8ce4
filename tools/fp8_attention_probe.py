"""Probe: cuDNN's FP8 SDPA (cudnn-frontend ``sdpa_fp8``) at FramePack's 640-bucket attention shape.

Not used by fploopd yet: it measures whether FP8 attention (the half of a forward that FP8 linears
leave untouched) is worth integrating. Prints the time and the deviation from bf16 cuDNN SDPA.
Needs the ``nvidia-cudnn-frontend`` wheel; run on a Hopper GPU.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.nn.functional as F


def timed(fn, n: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = x.abs().amax().float().clamp(min=1e-12)
    scale = 448.0 / amax
    x8 = (x.float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    return x8, (1.0 / scale).reshape(1, 1, 1, 1).contiguous()


def main() -> dict:
    import cudnn

    dev = torch.device("cuda")
    b, h, s, d = 1, 24, 19169, 128
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn((b, s, h, d), generator=g, device=dev, dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qt, kt, vt)
    out = {"shape": [b, h, s, d], "bf16_sdpa_ms": timed(lambda: F.scaled_dot_product_attention(qt, kt, vt))}
    flops = 4 * b * h * s * s * d
    out["bf16_tflops"] = flops / out["bf16_sdpa_ms"] / 1e9

    (q8, dq), (k8, dk), (v8, dv) = quant(q), quant(k), quant(v)
    one = torch.ones(1, 1, 1, 1, device=dev)
    descale_s, scale_s = one / 448.0, one * 448.0
    dims, strides = [b, h, s, d], [s * h * d, d, h * d, 1]  # (B, S, H, D) memory, as the model has it
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    for o_type in ("BFLOAT16", "FP8_E4M3"):
        try:
            graph = cudnn.pygraph(
                io_data_type=cudnn.data_type.FP8_E4M3,
                intermediate_data_type=cudnn.data_type.FLOAT,
                compute_data_type=cudnn.data_type.FLOAT,
                handle=handle,
            )
            Q = graph.tensor(name="Q", dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3)
            K = graph.tensor(name="K", dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3)
            V = graph.tensor(name="V", dim=dims, stride=strides, data_type=cudnn.data_type.FP8_E4M3)

            def scalar(name: str, graph=graph):
                return graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)

            DQ, DK, DV, DS, SS, SO = (scalar(n) for n in ("dq", "dk", "dv", "ds", "ss", "so"))
            O, _stats, AS, AO = graph.sdpa_fp8(
                Q, K, V, DQ, DK, DV, DS, SS, SO, is_inference=True, attn_scale=1.0 / math.sqrt(d), name="sdpa_fp8"
            )
            O.set_output(True).set_dim(dims).set_stride(strides).set_data_type(getattr(cudnn.data_type, o_type))
            AS.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
            AO.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
            graph.validate()
            graph.build_operation_graph()
            graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            graph.check_support()
            graph.build_plans()
            ws = torch.empty(graph.get_workspace_size(), device=dev, dtype=torch.uint8)
            o_dtype = torch.bfloat16 if o_type == "BFLOAT16" else torch.float8_e4m3fn
            o = torch.empty((b, s, h, d), device=dev, dtype=o_dtype)
            amax_s, amax_o = torch.zeros(1, 1, 1, 1, device=dev), torch.zeros(1, 1, 1, 1, device=dev)
            scale_o = one if o_type == "BFLOAT16" else one * 448.0 / 1.5  # |O| <= max|v| ~ 5
            pack = {Q: q8, K: k8, V: v8, DQ: dq, DK: dk, DV: dv, DS: descale_s, SS: scale_s, SO: scale_o,
                    O: o, AS: amax_s, AO: amax_o}

            def run(graph=graph, pack=pack, ws=ws) -> None:
                graph.execute(pack, ws, handle=handle)

            ms = timed(run)
            got = o.float() / (1.0 if o_type == "BFLOAT16" else scale_o)
            rel = ((got.transpose(1, 2) - ref.float()).norm() / ref.float().norm()).item()
            out[f"fp8_{o_type}_ms"] = ms
            out[f"fp8_{o_type}_tflops"] = flops / ms / 1e9
            out[f"fp8_{o_type}_rel_err"] = rel
            out[f"fp8_{o_type}_quant_ms"] = timed(lambda: (quant(q), quant(k), quant(v)))
        except Exception as exc:  # noqa: BLE001 - report and try the next output type
            out[f"fp8_{o_type}_error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    return out


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=1))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f, indent=1)
    os._exit(0)
