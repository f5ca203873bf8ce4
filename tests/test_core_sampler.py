import math

import pytest
import torch

from fploopd.core.sampler import sample_unipc
from fploopd.core.schedule import flow_sigmas


class Counting:
    """A denoiser from a closed form, recording what the sampler asked."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        self.calls.append((x.clone(), sigma.clone()))
        return self.fn(x, sigma)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 10, 25])
def test_one_model_call_per_step_and_never_at_zero(variant, steps):
    model = Counting(lambda x, s: 0.5 * x)
    x = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    sigmas = flow_sigmas(steps, 1024)
    sample_unipc(model, x, sigmas, variant=variant)
    assert len(model.calls) == steps
    assert [c[1][0].item() for c in model.calls] == sigmas[:-1].tolist()


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_constant_prediction_stays_on_the_straight_flow_path(variant):
    # If the model always predicts the same clean sample c, the flow ODE's solution is the straight
    # line x(sigma) = (1 - sigma) c + sigma noise, and UniPC's exponential integrator is exact on it.
    g = torch.Generator().manual_seed(1)
    c, noise = torch.randn(1, 3, 2, 4, 4, generator=g), torch.randn(1, 3, 2, 4, 4, generator=g)
    model = Counting(lambda x, s: c.clone())
    sigmas = flow_sigmas(12, 4096)
    out = sample_unipc(model, noise.clone(), sigmas, variant=variant)
    for x, s in model.calls:
        torch.testing.assert_close(x, (1 - s[0]) * c + s[0] * noise, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, c)


def test_two_steps_by_hand():
    # steps=2: first order; x1 = (s1/s0) x - expm1(-h) m0 with h = log(s0/s1); result = model(x1, s1).
    sigmas = flow_sigmas(2, 4096)
    s0, s1 = sigmas[0].item(), sigmas[1].item()
    model = Counting(lambda x, s: torch.tanh(x) * (1 + s.view(-1, 1, 1, 1, 1)))
    x = torch.randn(1, 2, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    out = sample_unipc(model, x.clone(), sigmas)
    m0 = torch.tanh(x) * (1 + s0)
    x1 = (s1 / s0) * x - math.expm1(-math.log(s0 / s1)) * m0
    torch.testing.assert_close(model.calls[1][0], x1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, torch.tanh(x1) * (1 + s1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_converges_to_the_exact_ode_solution(variant):
    # Model x0 = x (1 - sigma) gives dx/dsigma = (x - x0) / sigma = x, so x(s) = x(1) e^(s - 1).
    x = torch.randn(1, 2, 1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errors = []
    for steps in (16, 32, 64):
        sigmas = flow_sigmas(steps, 256).double()
        out = sample_unipc(lambda x, s: x * (1 - s.view(-1, 1, 1, 1, 1)), x.clone(), sigmas, variant=variant)
        s_last = sigmas[-2].item()
        exact = x * math.exp(s_last - 1) * (1 - s_last)
        errors.append((out - exact).abs().max().item())
    assert errors[-1] < 1e-3
    assert errors[0] > 3 * errors[1] > 9 * errors[2]


def test_callback_sees_every_step_and_can_stop_sampling():
    seen = []

    def callback(d):
        seen.append(d["i"])
        if d["i"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sample_unipc(lambda x, s: x * 0.9, torch.ones(1, 1, 1, 1, 1), flow_sigmas(10, 256), callback=callback)
    assert seen == [0, 1, 2, 3]


def test_bad_variant_is_refused():
    with pytest.raises(ValueError, match="bh1"):
        sample_unipc(lambda x, s: x, torch.ones(1, 1, 1, 1, 1), flow_sigmas(3, 256), variant="bh3")
