"""Names from what users drop: file names shown as text, and job names that are valid UTF-8 and fit
every file and folder name the daemon derives from them.

A job's name is its sidecar's stem (docs/design.md §2). It becomes folder names (``outbox/<name>/``),
output file names (``<name>_<seed>_loop_<N>.mp4``) and a journal column, so it must be valid text
and short enough; a stem that is not gets a rejection at intake, and its failed job a shortened
name (``job_name_for``).
"""

from __future__ import annotations

import hashlib
import os
import re

NAME_MAX = 255  # bytes in one file name: ext4, XFS, Btrfs, ZFS, APFS (NTFS: 255 UTF-16 units, never fewer bytes' worth)

# The longest names made from a job name J, in bytes (seeds are at most 2**63 - 1: 19 digits):
#   unique_name may add "-99999"                                              J' = J + 6
#   latent-only output  J'_<seed>_latent.safetensors     = J' + 1 + 19 + 7 + 12 = J' + 39
#   written as .<that>.<8 random>.part (atomic_path)      = 39 + 1 + 1 + 8 + 5   = J' + 54
#   (others are shorter: .<J'_seed_connect.webp>.<8>.part.webp J' + 53, _loop_100.mp4's J' + 52,
#   png folders' temporary .<J'_seed_connect_png>.<8>.part J' + 47, progress/.<J'>.webp.<8>.part.png J' + 24)
#   delivery folders: J'-<10 hex id>, and on a conflict -<10 hex id>-<unix time> more = J' + 33
# So J + 6 + 54 <= 255: J <= 195. Adding an output kind or suffix: check this sum.
LONGEST_DERIVED_EXTRA = 6 + 54
MAX_STEM_BYTES = NAME_MAX - LONGEST_DERIVED_EXTRA
_HASH_CHARS = 8

# C0 controls and DEL: legal in POSIX names, but they garble logs, terminals and status pages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display(name: str) -> str:
    """``name`` as valid UTF-8 text for messages: undecodable bytes and controls as ``\\xe9``."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def is_text(name: str) -> bool:
    """Whether ``name`` (as os.listdir gives it) is valid UTF-8 without control characters."""
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not _CONTROL.search(name)


def stem_problem(stem: str) -> str | None:
    """Why ``stem`` cannot be a job name (a sentence that follows the file's name), or None."""
    raw = os.fsencode(stem)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "the file name is not valid UTF-8 text (undecodable bytes are shown as \\xNN); rename the drop's files"
    if _CONTROL.search(stem):
        return "the file name holds control characters (shown as \\xNN); rename the drop's files"
    if len(raw) > MAX_STEM_BYTES:
        return (
            f"the name is {len(raw)} bytes, at most {MAX_STEM_BYTES} (the job's output file names add up to "
            f"{LONGEST_DERIVED_EXTRA} bytes more, and a file name holds {NAME_MAX}); rename the drop's files shorter"
        )
    return None


def job_name_for(stem: str) -> str:
    """The stem itself when it can be a job name; else, deterministically, a cleaned prefix of it
    plus a short hash of its bytes (``caf_-1a2b3c4d``), so a rejected drop still gets a folder."""
    if stem_problem(stem) is None:
        return stem
    raw = os.fsencode(stem)
    text = _CONTROL.sub("_", raw.decode("utf-8", "replace").replace("\ufffd", "_"))
    prefix = _cut(text, MAX_STEM_BYTES - 1 - _HASH_CHARS)
    digest = hashlib.sha256(raw).hexdigest()[:_HASH_CHARS]
    return f"{prefix}-{digest}" if prefix else digest


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits ``max_bytes`` of UTF-8, never half a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
