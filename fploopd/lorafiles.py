"""LoRA files before torch sees them: which names are accepted, where a name is found, and whether
a file is a safetensors file at all (not a renamed pickle) and within the size bound.

Torch-free, so the daemon's intake can refuse a bad LoRA at once, in the supervisor, with the same
words as the worker's full check (``engine.lora.load_lora``, which starts with these checks).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from fploopd.errors import InputError

FIELD = "loras"
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
MAX_LORA_BYTES = 4 * 2**30  # a full-coverage rank-128 FramePack LoRA in bf16 is about 2.4 GB
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


class LoraError(InputError):
    """A LoRA file that cannot be used: says which file and why."""

    def __init__(self, file: str, problem: str) -> None:
        super().__init__(f"LoRA {file}: {problem}", field=FIELD, file=file)


class LoraMissing(LoraError):
    """No LoRA folder has the file (yet: it may still be on its way)."""


def suffix_problem(name: str) -> str | None:
    """Why a file name is not accepted as a LoRA (pickles run code when loaded), or None."""
    suffix = Path(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return (
            f"{suffix} files are Python pickles, and loading a pickle runs any code inside it; "
            "only .safetensors LoRAs are accepted (convert it with a trusted tool first)"
        )
    if suffix != SAFETENSORS_SUFFIX:
        return f"only .safetensors LoRA files are accepted, not {suffix or 'a file without suffix'}"
    return None


def check_lora_file(path: Path, max_bytes: int = MAX_LORA_BYTES) -> int:
    """Refuse what is not a safetensors file within ``max_bytes`` (by name, kind and first bytes);
    returns its size. Reads 9 bytes: cheap enough for every drop at intake."""
    if (problem := suffix_problem(path.name)) is not None:
        raise LoraError(path.name, problem)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise LoraError(path.name, "is not a regular file")
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise LoraError(path.name, f"cannot be read ({exc.strerror or exc})") from None
    if st.st_size > max_bytes:
        raise LoraError(path.name, f"is {st.st_size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB allowed")
    # A safetensors file starts with its JSON header's length (8 bytes, little-endian), then "{".
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if 0 < header_len <= min(st.st_size - 8, MAX_HEADER_BYTES) and head[8:9] == b"{":
        return st.st_size
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        raise LoraError(path.name, "is a Python pickle (a renamed .pt/.ckpt), which runs code when loaded; refused")
    raise LoraError(path.name, "is not a safetensors file (its header is missing or damaged)")


def find_lora(name: str, folders: Sequence[Path]) -> Path:
    """The file ``name`` (a bare name) in the first of ``folders`` that has it.

    A link is followed only to a file inside one of ``folders``: the root's ``loras/`` is often on a
    share, and a link there must not make the daemon read any file of the machine."""
    if (problem := suffix_problem(name)) is not None:
        raise LoraError(name, problem)
    for folder in folders:
        candidate = folder / name
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LoraError(name, f"cannot be read in {folder} ({exc.strerror or exc})") from None
        if is_link and not _inside(candidate.resolve(), folders):
            raise LoraError(
                name,
                f"{candidate} links to {candidate.resolve()}, outside the LoRA folders; "
                "add that folder to lora_dirs in fploopd.toml instead of linking to it",
            )
        return candidate
    where = ", ".join(str(f) for f in folders)
    raise LoraMissing(name, f"not found in the LoRA folders ({where})")


def _inside(path: Path, folders: Sequence[Path]) -> bool:
    return any(path.is_relative_to(f.resolve()) for f in folders)


__all__ = [
    "FIELD",
    "MAX_LORA_BYTES",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIX",
    "LoraError",
    "LoraMissing",
    "check_lora_file",
    "find_lora",
    "suffix_problem",
]
