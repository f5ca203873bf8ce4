"""A/B of ``RunnerOptions.gelu_epilogue`` on the full-size transformer (random weights, 640 bucket):
the compiled bf16 forward with the MLP GELU as a cuBLASLt epilogue and the single blocks' out
projection split in two (no concat), against the same forward with a separate GELU pass and the
concat; diffusers' stock forward as the baseline, in the same run. Rounds alternate A and B so
clock drift under the power cap lands on both. Usage: ``python3 -m tools.probes.gelu_epilogue
[--attention sdpa|fa4] [--out F.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from fploopd.bench import inputs
from fploopd.bench.report import kernel_family
from fploopd.bench.timing import deviation, measure
from fploopd.engine import random_models as models
from fploopd.engine.forward import TransformerRunner
from fploopd.engine.options import RunnerOptions


def top_kernels(fn, n: int = 12) -> list[list]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.device_time_total > 0 and not e.key.startswith(("aten::", "cuda"))]
    families: dict[str, float] = {}
    for key, ms, _ in rows:
        families[kernel_family(key)] = families.get(kernel_family(key), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return [families, [[k[:100], round(ms, 2), c] for k, ms, c in rows[:n]]]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    dev = torch.device("cuda")
    t = models.build_transformer("full", dev, torch.bfloat16)
    kw = inputs.section_kwargs(inputs.full_spec(), dev, torch.bfloat16, seed=0)
    options = RunnerOptions(attention=args.attention, compile=True)
    runners = {flag: TransformerRunner(t, options.replace(gelu_epilogue=flag)) for flag in (False, True)}
    with torch.inference_mode():
        base = measure(lambda: t(**kw, return_dict=False)[0], dev, repeats=5, warmup=1)
        times: dict[str, list[float]] = {"separate": [], "epilogue": []}
        outs, profiles = {}, {}
        for r in range(args.rounds):
            for name, flag in (("separate", False), ("epilogue", True)):
                m = measure(lambda f=flag: runners[f](**kw), dev, repeats=5, warmup=1 if r else 2)
                times[name] += m.times
                outs[name] = m.value
                print(name, r, [round(x, 4) for x in m.times], flush=True)
        for name, flag in (("separate", False), ("epilogue", True)):
            profiles[name] = top_kernels(lambda f=flag: runners[f](**kw))
    b = statistics.median(base.times)
    doc = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "attention": args.attention,
           "baseline_s": b, "results": {}}
    for name, ts in times.items():
        mx, mean = deviation(outs[name], base.value)
        doc["results"][name] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                                "vs_baseline": statistics.median(ts) / b, "max_abs_dev": mx, "mean_abs_dev": mean,
                                "profile_ms": profiles[name][0], "top": profiles[name][1]}
    mx, mean = deviation(outs["epilogue"], outs["separate"])
    doc["epilogue_vs_separate"] = {"max_abs_dev": mx, "mean_abs_dev": mean}
    print(json.dumps(doc, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
