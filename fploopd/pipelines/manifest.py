"""``manifest.json``: what a job made, from what, with which settings and model, and how long it took.

One shape for daemon jobs and one-shot commands, so a tool reading manifests never has to care
which made the files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fploopd import __version__
from fploopd.fsutil import sha256_file, write_json_atomic
from fploopd.pipelines.results import OutputFile

MANIFEST_FILE = "manifest.json"
INPUT_KEYS = ("name", "field", "size", "sha256")


def build_manifest(
    *,
    job_id: str | None,
    name: str,
    pipeline: str | None,
    spec: dict[str, Any],
    seeds: list[int],
    model: dict[str, Any] | str | None,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    timings: dict[str, float],
    attempts: int,
    created_at: float | None,
    finished_at: float | None,
) -> dict[str, Any]:
    """The manifest's fields, in their order. ``inputs`` keep only name, field, size and sha256;
    times are seconds since the epoch, written as UTC ISO 8601. ``job_id`` is None outside the daemon."""
    return {
        "job": job_id,
        "name": name,
        "pipeline": pipeline,
        "spec": spec,
        "seeds": list(seeds),
        "model": model,
        "inputs": [{k: i.get(k) for k in INPUT_KEYS} for i in inputs],
        "outputs": outputs,
        "timings": timings,
        "attempts": attempts,
        "created_at": iso_time(created_at),
        "finished_at": iso_time(finished_at),
        "fploopd": __version__,
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any], filename: str = MANIFEST_FILE) -> Path:
    """Write it atomically (temporary file, fsync, rename, fsync of the folder); returns its path."""
    path = Path(out_dir) / filename
    write_json_atomic(path, manifest)
    return path


def iso_time(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def input_entry(field: str, path: Path) -> dict[str, Any]:
    """An input as the manifest lists it: its file name, the spec field it fills, size and sha256."""
    path = Path(path)
    return {"name": path.name, "field": field, "size": path.stat().st_size, "sha256": sha256_file(path)}


def output_entry(output: OutputFile, out_dir: Path) -> dict[str, Any]:
    """An output as the manifest (and ``status --json``) lists it: its path relative to ``out_dir``."""
    return {
        "file": Path(output.path).relative_to(out_dir).as_posix(),
        "kind": output.kind,
        "seed": output.seed,
        "frames": output.frames,
        "fps": output.fps,
        "duration_s": output.duration_s,
    }
