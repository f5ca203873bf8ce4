import math

import pytest
import torch

from fploopd.core.schedule import context_length, flow_sigmas, flux_mu


def test_mu_is_linear_through_framepacks_points_and_capped():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)
    assert flux_mu(2176) == pytest.approx((0.5 + 1.15) / 2)
    assert flux_mu(10**6) == pytest.approx(math.log(7.0))


def test_every_640_bucket_hits_the_cap():
    # 640x640 at window 9: 9 * 80 * 80 / 4 = 14400 tokens; the smallest bucket area is 416x960.
    for h, w in [(416, 960), (640, 608), (960, 416)]:
        assert flux_mu(context_length(9, h // 8, w // 8)) == pytest.approx(math.log(7.0))


@pytest.mark.parametrize("steps", [1, 2, 5, 25])
def test_sigmas_follow_the_shifted_line(steps):
    sigmas = flow_sigmas(steps, 4096)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    mu = 1.15
    for i, s in enumerate(sigmas[1:-1].tolist(), start=1):
        t = 1 - i / steps
        assert s == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / t - 1), rel=1e-6)


def test_shift_overrides_mu():
    sigmas = flow_sigmas(4, 10**6, shift=3.0)
    t = 0.5
    assert sigmas[2].item() == pytest.approx(3.0 / (3.0 + 1 / t - 1), rel=1e-6)


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0, 256)
