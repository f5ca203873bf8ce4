"""``fploopd decode FILE``: decode a latent-only loop file (``decode: false``) into its videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from fploopd.cli import add_model_options, add_root_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="turn a loop's latent file (<name>_<seed>_latent.safetensors) into its videos")
    p.add_argument("file", type=Path, metavar="FILE", help="the .safetensors latent file")
    add_root_option(p)
    add_model_options(p)
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: the current folder)")
    p.add_argument("--name", help="output name (default: the job name stored in the file)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import time

    from loguru import logger

    from fploopd.commands.oneshot import ProgressBar, check_name, load_model
    from fploopd.pipelines.decode import decode_loop_file, read_loop_latents

    started = time.monotonic()
    if args.name is not None:
        check_name(args.name)
    read_loop_latents(args.file)  # a bad file fails here, before the model loads
    components = load_model(args)
    loaded = time.monotonic()
    bar = ProgressBar()
    try:
        _, outputs = decode_loop_file(args.file, Path(args.out).absolute(), components, name=args.name, progress=bar)
    finally:
        bar.close()
    done = time.monotonic()
    logger.info("decoded {} in {:.1f} s (model load {:.1f} s, decode and write {:.1f} s)",
                Path(args.file).name, done - started, loaded - started, done - loaded)  # fmt: skip
    for output in outputs:
        print(output.path)
    return 0
