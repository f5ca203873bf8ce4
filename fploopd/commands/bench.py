"""``fploopd bench``: performance figures as JSON (and a Markdown table on stdout)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from fploopd.cli import add_root_option
from fploopd.spec import TEACACHE_DEFAULT_THRESHOLD


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="performance figures as JSON",
        description="Time the transformer, a 25-step section, the VAE and the encoders against diffusers' "
        "stock code in one run, and write the figures as JSON.",
    )
    add_root_option(p)
    p.add_argument("--model", default="tiny", help="'tiny', 'full-random' (full-size, random weights, built on "
                   "the device; no download) or a diffusers transformer folder (default: tiny)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON file to write")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per figure after warm-up (default 5; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before each figure (default 2; tiny 1)")
    p.add_argument("--section-repeats", type=int, default=1, help="timed 25-step sections per variant (default 1)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps of the section figure and of the workers "
                   "and tiers stages' full-size loop jobs (default 25; 2 fills a compile cache for a later run)")
    p.add_argument("--quick", action="store_true", help="one warm-up and one timed run of everything")
    p.add_argument("--stages", default="all", help="comma list of text,transformer,vae,section,lora,lowvram,e2e,tiers,"
                   "workers,context-parallel (default all: every stage but tiers, workers and context-parallel)")
    p.add_argument("--attention", default="auto", help="attention kernel for our runner (default: timed choice)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--no-fp8", action="store_true", help="skip the FP8 variants")
    p.add_argument("--compile-mode", default=None, help="also time torch.compile in this mode "
                   "(e.g. max-autotune-no-cudagraphs; slow to compile)")
    p.add_argument("--teacache", type=float, default=TEACACHE_DEFAULT_THRESHOLD, help="TeaCache threshold of the TeaCache section figure")
    p.add_argument("--no-compile-ahead", action="store_true",
                   help="e2e: compile on first use in the job's process, as workers did before the compile helper")
    p.add_argument("--low-vram-gib", type=float, default=8.0, help="GPU memory limit of the low-VRAM figure (0: no low-VRAM loop job in e2e)")
    p.add_argument("--tier-budgets", default="all", help="the tiers stage's budgets, largest first: a comma list of "
                   "GiB and 'unlimited' (default all: unlimited,48,24,16,12,8,6)")
    p.add_argument("--workers", default="1,2,4", help="the workers stage's worker counts, smallest first "
                   "(default 1,2,4; one GPU each)")
    p.add_argument("--jobs-per-worker", type=int, default=2, help="the workers stage's measured loop jobs per worker (default 2)")
    p.add_argument("--workers-timeout", type=float, default=900.0, help="the workers stage's limit per worker count, in seconds")
    p.add_argument("--compile-cache", type=Path, default=None, help="the workers stage's compile cache folder, kept "
                   "between runs (default: a fresh one, shared by the counts of this run)")
    p.add_argument("--cp-devices", default="1,2,4", help="the context-parallel stage's device counts, a comma "
                   "list starting with 1 (default 1,2,4)")
    p.set_defaults(handler=run)


def p_defaults() -> dict[str, object]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = parser.parse_args(["bench"])
    return vars(sub)


def _command_line(args: argparse.Namespace, defaults: dict[str, object]) -> str:
    """The command as typed, up to option order: every option that differs from its default."""
    words = ["fploopd", "bench"]
    for key, value in vars(args).items():
        if key in ("handler", "command", "root", "log_level") or value == defaults.get(key):
            continue
        flag = "--" + key.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)


def _budgets(text: str) -> tuple[float | None, ...]:
    from fploopd.bench.tiers import parse_budgets
    from fploopd.errors import InputError

    try:
        budgets = parse_budgets(text)
    except ValueError:
        raise InputError(f"--tier-budgets takes GiB numbers and 'unlimited', not {text!r}", field="--tier-budgets") from None
    if not budgets or any(b is not None and b <= 0 for b in budgets):
        raise InputError(f"--tier-budgets needs positive GiB numbers, not {text!r}", field="--tier-budgets")
    return budgets


def _counts(text: str, flag: str, *, from_one: bool = False) -> tuple[int, ...]:
    """A comma list of counts from 1 to 64 (``from_one``: starting with 1, the baseline)."""
    from fploopd.errors import InputError

    try:
        counts = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        counts = ()
    if not counts or any(c < 1 or c > 64 for c in counts) or (from_one and counts[0] != 1):
        first = " starting with 1" if from_one else ""
        raise InputError(f"{flag} takes a comma list of counts from 1 to 64{first}, such as 1,2,4, not {text!r}",
                         field=flag)  # fmt: skip
    return counts


def run(args: argparse.Namespace) -> int:
    from fploopd.engine.cuda_env import prefer_expandable_segments

    prefer_expandable_segments()  # as a worker runs (the tier table was measured with it)
    import torch

    from fploopd.bench.report import table
    from fploopd.bench.run import DEFAULT_STAGES, STAGES, BenchConfig, run_bench
    from fploopd.errors import InputError

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("no CUDA device is available", field="--device")
    stages = DEFAULT_STAGES if args.stages == "all" else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise InputError(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}", field="--stages")
    if args.model not in ("tiny", "full-random") and not Path(args.model).is_dir():
        raise InputError(f"--model must be tiny, full-random or a folder, not {args.model!r}", field="--model")
    cfg = BenchConfig(
        model=args.model,
        device=device,
        out=args.out,
        repeats=args.repeats if args.repeats is not None else (2 if args.model == "tiny" else 5),
        warmup=args.warmup if args.warmup is not None else (1 if args.model == "tiny" else 2),
        quick=args.quick,
        steps=args.steps,
        stages=stages,
        attention=args.attention,
        compile=False if args.no_compile else None,
        fp8=False if args.no_fp8 else None,
        teacache=args.teacache,
        low_vram_gib=args.low_vram_gib,
        compile_ahead=not args.no_compile_ahead,
        section_repeats=args.section_repeats,
        compile_mode=args.compile_mode,
        tier_budgets=_budgets(args.tier_budgets),
        worker_counts=_counts(args.workers, "--workers"),
        jobs_per_worker=max(1, args.jobs_per_worker),
        workers_timeout_s=args.workers_timeout,
        compile_cache=args.compile_cache.absolute() if args.compile_cache else None,
        cp_devices=_counts(args.cp_devices, "--cp-devices", from_one=True),
        command=_command_line(args, p_defaults()),
    )
    doc = run_bench(cfg)
    print(table(doc))
    return 1 if doc["errors"] and not doc["results"] else 0
