"""Where the VAE decode of one section spends its time, and what a compiled or untiled decode gives.

The full-size HunyuanVideo VAE (random weights, fp16) decodes 18 latents at the 640 bucket, as
``fploopd bench``'s ``vae.decode_section`` does. Variants: stock (diffusers' framewise decode, 6
overlapping 5-latent tiles, blended), ``torch.compile`` of the decoder, channels-last + compile, and
one untiled pass over all 18 latents (another output: no tile blending). Usage:
``python3 -m tools.probes.vae_decode [--out F.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fploopd.bench.timing import deviation, measure, peak_gib, reset_peak
from fploopd.engine.random_models import build_vae


def families(vae: torch.nn.Module, z: torch.Tensor) -> dict[str, float]:
    """Device ms of one decode by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        vae.decode(z)
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():
        name = e.key.lower()
        if "conv" in name or "xmma" in name or "implicit" in name or "cutlass" in name or "sm90" in name:
            fam = "conv"
        elif "norm" in name:
            fam = "group_norm"
        elif "pad" in name or "copy" in name or "cat" in name:
            fam = "pad_copy"
        elif "triton" in name:
            fam = "fused_triton"
        else:
            fam = "other"
        out[fam] = out.get(fam, 0.0) + e.device_time_total / 1e3
    return {k: round(v, 1) for k, v in sorted(out.items())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dev = torch.device("cuda")
    vae = build_vae("full", dev, torch.float16)
    g = torch.Generator().manual_seed(1)
    z = torch.randn((1, 16, 18, 80, 80), generator=g).to(dev, torch.float16)
    rows: dict[str, dict] = {}

    def run(name: str, fn, ref: torch.Tensor | None) -> torch.Tensor:
        reset_peak(dev)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        m = measure(fn, dev, repeats=args.repeats, warmup=0)
        rows[name] = {"median_s": m.median, "first_s": first, "peak_gib": peak_gib(dev),
                      "frames": int(m.value.shape[2])}
        if ref is not None:
            rows[name]["max_abs_dev"], rows[name]["mean_abs_dev"] = deviation(m.value, ref)
        print(name, rows[name], flush=True)
        return m.value

    with torch.inference_mode():
        decode = lambda: vae.decode(z).sample
        ref = run("stock", decode, None)
        rows["stock"]["families_ms"] = families(vae, z)
        print("stock families", rows["stock"]["families_ms"], flush=True)
        torch.backends.cudnn.benchmark = True
        run("stock_cudnn_benchmark", decode, ref)

        plain = vae.decoder
        vae.decoder = torch.compile(plain)
        try:
            run("compiled", decode, ref)
            rows["compiled"]["families_ms"] = families(vae, z)
            print("compiled families", rows["compiled"]["families_ms"], flush=True)
        except Exception as exc:  # noqa: BLE001
            rows["compiled"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        try:
            vae.to(memory_format=torch.channels_last_3d)
            vae.decoder = torch.compile(plain)
            run("compiled_channels_last", lambda: vae.decode(z.contiguous(memory_format=torch.channels_last_3d)).sample, ref)
        except Exception as exc:  # noqa: BLE001
            rows["compiled_channels_last"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        vae.to(memory_format=torch.contiguous_format)
        vae.decoder = plain

        vae.use_framewise_decoding = False
        try:
            run("untiled", decode, ref)
        except Exception as exc:  # noqa: BLE001
            rows["untiled"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        vae.use_framewise_decoding = True

    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}  decode 18 latents at 640x640, fp16")
    for name, r in rows.items():
        print(f"{name:26s} {r}")
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
