"""The numpy <-> torch frame converters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fploopd.media import frames_to_tensor, resize_center_crop, tensor_to_frames


def test_round_trip_is_exact() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    video = frames_to_tensor(frames)
    assert video.shape == (3, 5, 6, 7) and video.dtype == torch.float32
    assert video.min() == -1.0 and video.max() == 1.0
    assert torch.equal(video[:, 2, 3, 4], torch.from_numpy(frames[2, 3, 4]).float() / 127.5 - 1)
    assert np.array_equal(tensor_to_frames(video), frames)
    half = tensor_to_frames(video[None].to(torch.bfloat16))  # batched, low precision: within one level
    assert np.abs(half.astype(int) - frames).max() <= 1


def test_out_of_range_values_are_clamped_and_shapes_checked() -> None:
    video = torch.tensor([-3.0, 0.0, 3.0]).view(1, 3, 1, 1).expand(3, 3, 1, 1)
    assert tensor_to_frames(video)[:, 0, 0, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError):
        tensor_to_frames(torch.zeros(4, 2, 2, 2))
    with pytest.raises(ValueError):
        frames_to_tensor(np.zeros((2, 2, 3), np.uint8))


def test_resize_center_crop_covers_then_crops() -> None:
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # the middle half is white
    out = resize_center_crop(image, 20, 20)
    assert out.shape == (20, 20, 3)
    assert out.min() > 200  # only the middle survives the crop
