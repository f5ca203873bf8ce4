"""Size limits for media the daemon reads: a dropped file must not exhaust memory, disk or time.

The values come from the daemon's settings or the command line and are passed down explicitly;
nothing here is read from the environment at import.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, fields
from pathlib import Path

from fploopd.errors import InputError

MPX = 1_000_000
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class MediaLimits:
    max_image_pixels: int = 64 * MPX
    max_image_bytes: int = 256 * MIB
    max_video_seconds: float = 600.0
    max_video_frames: int = 36_000  # 600 s at 60 fps
    max_video_pixels: int = 4096 * 4096  # per frame
    max_video_bytes: int = 8 * GIB
    # Decoded RGB frames one read may hold in memory (frames x height x width x 3).
    max_decoded_bytes: int = 8 * GIB

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"MediaLimits.{f.name} must be positive, got {getattr(self, f.name)!r}")


def mpx(pixels: float, *, limit: bool = False) -> str:
    """Pixels as megapixels for messages: a size as "400.0 Mpx", a round limit as "64 Mpx"; small ones in px."""
    if pixels < MPX // 10:
        return f"{pixels:.0f} px"
    if limit and pixels % MPX == 0:
        return f"{pixels // MPX:.0f} Mpx"
    return f"{pixels / MPX:.1f} Mpx"


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_file(path: Path, max_bytes: int) -> int:
    """Refuse a missing, non-regular, empty or oversized file before any parser sees it; return its size."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path.name} does not exist", file=path.name) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path.name} is not a regular file", file=path.name)
    if st.st_size == 0:
        raise InputError(f"{path.name} is empty", file=path.name)
    if st.st_size > max_bytes:
        raise InputError(
            f"{path.name} is {human_bytes(st.st_size)}; the limit is {human_bytes(max_bytes)}", file=path.name
        )
    return st.st_size
