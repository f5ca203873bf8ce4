"""Latent files: a generation's latents plus everything needed to decode them later.

safetensors with the effective job spec in the header, so decoding needs no settings re-entered and
no file-name parsing. Pickle (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) is refused: loading it can run
arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fploopd.errors import InputError
from fploopd.fsutil import atomic_path
from fploopd.spec import JobSpec

FORMAT = "fploopd.latent"
VERSION = "1"
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}


def save_latents(path: Path, tensors: dict[str, torch.Tensor], spec: JobSpec, *, seed: int, name: str, model: dict) -> None:
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.model_dump_json(),
        "seed": str(seed),
        "name": name,
        "model": json.dumps(model, sort_keys=True, default=str),
    }
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_latents(path: Path) -> tuple[dict[str, torch.Tensor], JobSpec, int, str]:
    """Returns (tensors, spec, seed, name); every problem is an InputError naming the file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"{path.name} is a pickle file; fploopd reads latents only from .safetensors files "
            "(pickle can run arbitrary code when loaded)",
            file=path.name,
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path.name} is not a readable safetensors latent file: {exc}", file=path.name) from exc
    if meta.get("format") != FORMAT:
        raise InputError(f"{path.name} is a safetensors file but not an fploopd latent file", file=path.name)
    if meta.get("version") != VERSION:
        raise InputError(f"{path.name} has latent format version {meta.get('version')}; this fploopd reads {VERSION}", file=path.name)
    try:
        spec = JobSpec.model_validate_json(meta.get("spec", ""))
    except ValidationError as exc:
        raise InputError(f"{path.name} carries settings this fploopd cannot use: {exc}", file=path.name) from exc
    return tensors, spec, int(meta["seed"]), meta["name"]
