"""Decode later: turn a latent-only loop file (``decode: false``) into its videos.

The file carries its job spec, seed and name, so nothing is re-entered and nothing is parsed from
file names; the outputs get the names and kinds the job would have written had it decoded at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from loguru import logger

from fploopd.errors import InputError
from fploopd.pipelines import loop
from fploopd.pipelines.latentfile import load_latents
from fploopd.pipelines.progress import Progress, Reporter
from fploopd.pipelines.results import OutputFile
from fploopd.pipelines.writers import Destination, write_loop
from fploopd.spec import JobSpec, is_bare_name

if TYPE_CHECKING:
    from fploopd.engine.components import Components

LOOP_KEYS = {"main", "connection"}


def read_loop_latents(path: Path) -> tuple[loop.LoopLatents, JobSpec, int, str]:
    """(latents, spec, seed, name) of a loop latent file; a file that is not one is an InputError."""
    path = Path(path)
    tensors, spec, seed, name = load_latents(path)
    if spec.pipeline != "loop" or set(tensors) != LOOP_KEYS:
        raise InputError(
            f"{path.name} holds {spec.pipeline} latents ({', '.join(sorted(tensors))}); "
            "only loop latent files (main, connection) can be decoded later",
            file=path.name,
        )
    main, connection, window = tensors["main"], tensors["connection"], spec.window
    for key, t in (("main", main), ("connection", connection)):
        if t.ndim != 5 or t.shape[0] != 1 or t.shape[2] == 0 or t.shape[2] % window:
            raise InputError(
                f"{path.name}: tensor {key!r} has shape {tuple(t.shape)}; expected (1, C, k*{window}, h, w) "
                f"for window {window}",
                file=path.name,
            )
    if main.shape[1] != connection.shape[1] or main.shape[3:] != connection.shape[3:]:
        raise InputError(f"{path.name}: main and connection latents differ in channels or size", file=path.name)
    if not is_bare_name(name):  # it becomes part of output paths: never a folder or a hidden name
        raise InputError(f"{path.name}: stored job name {name!r} is not a plain file name", file=path.name)
    return loop.LoopLatents(main.float(), connection.float(), window), spec, seed, name


def vae_fingerprint(model: object) -> str | None:
    """The VAE's fingerprint in a model identity (``components.identity`` or a file's record)."""
    try:
        return model["components"]["vae"]["sha256"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None


def stored_model(path: Path) -> object:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        try:
            return json.loads((f.metadata() or {}).get("model", "null"))
        except ValueError:
            return None


def decode_loop_file(
    path: Path,
    out_dir: Path,
    components: Components,
    *,
    name: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> tuple[torch.Tensor, list[OutputFile]]:
    """Decode ``path`` and write its 1-loop (every kind its spec asks for) and N-loop into ``out_dir``.

    Returns the decoded frames (1, 3, T, H, W) and the files written. ``name`` overrides the job name
    stored in the file; ``progress`` gets the decode's windows and the files as they are done.
    """
    reporter = Reporter(progress)

    latents, spec, seed, stored_name = read_loop_latents(path)
    made_by, decoder = vae_fingerprint(stored_model(path)), vae_fingerprint(components.identity)
    if made_by and decoder and made_by != decoder:
        # Another VAE gives garbage, not an error: say so where the user will look.
        logger.warning(
            "{} was made with another VAE than the one decoding it; the video may be garbage", Path(path).name
        )
    frames = loop.decode(components, latents, reporter)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return frames, write_loop(Destination(out_dir, name or stored_name, spec), frames, seed, reporter)
