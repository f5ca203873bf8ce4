"""The two frame representations and the converters between them.

- numpy uint8 ``(T, H, W, 3)`` RGB: what files are read into and written from;
- torch float ``(C, T, H, W)`` in [-1, 1]: what the VAE takes and gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: the supervisor reads media without loading torch
    import torch


def check_frames(frames: np.ndarray) -> None:
    """Raise ValueError unless ``frames`` is a non-empty uint8 (T, H, W, 3) array."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {dtype} {shape}")
    if min(frames.shape[:3]) == 0:
        raise ValueError(f"frames must not be empty, got shape {frames.shape}")


def frames_to_tensor(frames: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1] (float32 unless ``dtype``)."""
    import torch

    check_frames(frames)
    # A copy when read-only (PIL/PyAV buffers): torch warns on non-writable arrays.
    t = torch.from_numpy(frames if frames.flags.writeable and frames.flags.c_contiguous else np.array(frames)).permute(3, 0, 1, 2)
    return (t.to(torch.float32) / 127.5 - 1.0).to(dtype or torch.float32)


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] (or (1, 3, T, H, W)) -> uint8 (T, H, W, 3); values clamped.

    Rounds to the nearest level (FramePack truncates), so frames -> tensor -> frames is exact.
    """
    import torch

    if video.ndim == 5 and video.shape[0] == 1:
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be (3, T, H, W) or (1, 3, T, H, W), got {tuple(video.shape)}")
    x = ((video.detach().to("cpu", torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()
