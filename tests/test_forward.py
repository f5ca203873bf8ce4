"""TransformerRunner computes diffusers' FramePack forward; TeaCache skips as FramePack does."""

from __future__ import annotations

import os

import pytest
import torch

from fploopd.bench.inputs import section_kwargs, tiny_spec
from fploopd.engine import accel
from fploopd.engine import attention as attention_mod
from fploopd.engine.attention import attention_candidates, fa4_would_help
from fploopd.engine.blocks import joint_out, linear_gelu
from fploopd.engine.compile import guarded
from fploopd.engine.forward import TransformerRunner, teacache_rescale
from fploopd.engine.fp8 import fp8_linears
from fploopd.engine.options import RunnerOptions
from fploopd.engine.random_models import build_transformer
from fploopd.engine.tiny import TRANSFORMER as TINY_TRANSFORMER
from fploopd.engine.vae_accel import VaeAccel
from fploopd.engine.weights import PreparedWeights

SDPA = RunnerOptions(attention="sdpa")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_transformer("tiny", "cpu", torch.float32, seed=1234)


def _inputs(seed: int = 0, sigma: float = 0.7) -> dict[str, torch.Tensor]:
    return section_kwargs(tiny_spec(TINY_TRANSFORMER), "cpu", torch.float32, seed=seed, sigma=sigma)


def _stock(model: torch.nn.Module, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_equals_diffusers_forward(model: torch.nn.Module) -> None:
    runner = TransformerRunner(model, RunnerOptions(attention="sdpa", compile=False, fp8=False))
    runner.reset(2)
    for seed in (0, 1):  # fresh inputs each time; the second call also exercises the caches
        kwargs = _inputs(seed)
        ref = _stock(model, kwargs)
        out = runner(**kwargs)
        assert out.shape == ref.shape == kwargs["hidden_states"].shape
        assert ref.abs().mean() > 1e-2  # the tiny random model gives non-trivial outputs
        assert _rel(out, ref) < 2e-6


def test_cached_rope_and_history_reused(model: torch.nn.Module) -> None:
    runner = TransformerRunner(model, SDPA)
    kwargs = _inputs(3)
    runner.reset(3)
    first = runner(**kwargs)
    kwargs2 = {**kwargs, "hidden_states": torch.randn_like(kwargs["hidden_states"])}
    runner(**kwargs2)
    assert len(runner._prepared) == 1  # same indices and context tensors: one entry
    kwargs["latents_clean"].mul_(2.0)  # an in-place change must not hit the stale entry
    changed = runner(**kwargs)
    assert len(runner._prepared) == 2
    assert _rel(changed, _stock(model, kwargs)) < 2e-6
    assert not torch.allclose(changed, first)


def test_batch_two_with_different_text_lengths(model: torch.nn.Module) -> None:
    a, b = _inputs(4), _inputs(5)
    b["encoder_attention_mask"][:, 3:] = False
    b["encoder_hidden_states"][:, 3:] = 0
    batched = {
        k: (torch.cat([a[k], b[k]]) if not k.startswith("indices") and k not in ("timestep", "guidance") else a[k])
        for k in a
    }
    batched["timestep"] = torch.cat([a["timestep"], b["timestep"]])
    batched["guidance"] = torch.cat([a["guidance"], b["guidance"]])
    ref = _stock(model, batched)
    out = TransformerRunner(model, SDPA)(**batched)
    assert _rel(out, ref) < 2e-6


def _run_section(runner: TransformerRunner, steps: int) -> None:
    kwargs = _inputs(6)
    runner.reset(steps)
    for i in range(steps):
        sigma = 1.0 - i / steps
        kwargs["timestep"] = torch.tensor([sigma * 1000.0])
        kwargs["hidden_states"] = kwargs["hidden_states"] * 0.97  # a slowly changing latent, as in sampling
        runner(**kwargs, branch="pos")


def test_teacache_high_threshold_skips_but_computes_first_and_last(model: torch.nn.Module) -> None:
    steps = 6
    runner = TransformerRunner(model, SDPA.with_teacache(1e9))
    blocks = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    _run_section(runner, steps)
    computed = [c for _, _, c in runner.stats.history]
    assert computed[0] and computed[-1]
    assert not any(computed[1:-1])
    assert runner.stats.skipped == steps - 2
    assert runner.stats.block_calls == 2 * blocks
    # a new section starts computing again
    _run_section(runner, steps)
    assert runner.stats.block_calls == 4 * blocks


def test_teacache_zero_threshold_skips_nothing(model: torch.nn.Module) -> None:
    for threshold in (0.0, None):
        runner = TransformerRunner(model, SDPA.with_teacache(threshold))
        _run_section(runner, 5)
        assert runner.stats.skipped == 0
        assert runner.stats.computed == 5
        assert runner.stats.block_calls == 5 * (len(model.transformer_blocks) + len(model.single_transformer_blocks))


def test_teacache_skip_reuses_residual_and_branches_are_separate(model: torch.nn.Module) -> None:
    runner = TransformerRunner(model, SDPA.with_teacache(1e9))
    kwargs = _inputs(7)
    runner.reset(3)
    ref = runner(**kwargs, branch="pos")
    # an identical second call within the step budget is skipped and returns the same output
    again = runner(**kwargs, branch="pos")
    assert runner.stats.skipped == 1
    assert _rel(again, ref) < 1e-6
    # the negative branch has its own state: its first call computes
    runner(**kwargs, branch="neg")
    assert runner.stats.history[-1] == ("neg", 0, True)


def test_teacache_polynomial_matches_numpy_order() -> None:
    x = 0.3
    coeffs = [7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02]
    expected = sum(c * x ** (len(coeffs) - 1 - i) for i, c in enumerate(coeffs))
    assert teacache_rescale(x) == pytest.approx(expected)


def _attributes(model: torch.nn.Module) -> dict[str, list[str]]:
    """Every module's own attribute names: what preparing weights must leave as it was."""
    return {name: sorted(vars(mod)) for name, mod in model.named_modules()}


def test_fp8_linears_close_to_bf16(model: torch.nn.Module) -> None:
    kwargs = _inputs(8)
    ref = _stock(model, kwargs)
    before = _attributes(model)
    weights = PreparedWeights(model)
    n = weights.quantize_fp8()
    try:
        assert n == len(fp8_linears(model)) > 0
        assert _attributes(model) == before  # the FP8 weights live in the PreparedWeights
        out = TransformerRunner(model, SDPA.replace(fp8=True), weights=weights)(**kwargs)
        dev = ((out - ref).norm() / ref.norm()).item()
        assert 0 < dev < 0.15  # e4m3 rounding through 4 blocks; finite and close
    finally:
        weights.remove_fp8()
    assert _rel(TransformerRunner(model, SDPA, weights=weights)(**kwargs), ref) < 2e-6
    assert _attributes(model) == before


def test_fused_projections_same_function(model: torch.nn.Module) -> None:
    kwargs = _inputs(11)
    ref = _stock(model, kwargs)
    before = _attributes(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weights = PreparedWeights(model)
    assert weights.fuse() == 2 * len(model.transformer_blocks) + len(model.single_transformer_blocks)
    try:
        assert _rel(TransformerRunner(model, SDPA, weights=weights)(**kwargs), ref) < 2e-6
        assert _rel(_stock(model, kwargs), ref) < 1e-7  # the stock forward sees the same weights (views)
        for granularity in ("row", "tensor"):
            weights.quantize_fp8(granularity)
            out = TransformerRunner(model, SDPA.replace(fp8=True), weights=weights)(**kwargs)
            assert 0 < ((out - ref).norm() / ref.norm()).item() < 0.15
            weights.remove_fp8()
    finally:
        weights.unfuse()
    assert _rel(TransformerRunner(model, SDPA, weights=weights)(**kwargs), ref) < 2e-6
    assert _attributes(model) == before
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())


def test_weights_of_another_transformer_are_refused(model: torch.nn.Module) -> None:
    other = build_transformer("tiny", "cpu", torch.float32, seed=7)
    with pytest.raises(ValueError, match="another transformer"):
        TransformerRunner(model, SDPA, weights=PreparedWeights(other))


def test_optimize_on_cpu_records_choices(model: torch.nn.Module) -> None:
    before = _attributes(model)
    acc = accel.optimize(model, device="cpu")
    applied = acc.applied
    assert applied["attention"] == "sdpa" and applied["compile"] is False and applied["fp8"] is False
    runner = TransformerRunner(model, acc.options, weights=acc.weights)
    assert (runner.options.attention, runner.options.compile, runner.options.fp8) == ("sdpa", False, False)
    assert _attributes(model) == before  # nothing recorded on the modules


def test_runner_options_are_checked_and_frozen() -> None:
    with pytest.raises(ValueError, match="attention must be one of"):
        RunnerOptions(attention="auto")
    opts = RunnerOptions()
    with pytest.raises(AttributeError):
        opts.fp8 = True  # type: ignore[misc]
    assert opts.with_teacache(0.0).teacache_threshold is None  # 0 and None both mean off
    assert opts.with_teacache(0.15).teacache_threshold == 0.15 and opts.teacache_threshold is None


@pytest.mark.skipif(not os.environ.get("FPLOOPD_TEST_COMPILE"), reason="slow: set FPLOOPD_TEST_COMPILE=1")
def test_compiled_blocks_match(model: torch.nn.Module) -> None:
    kwargs = _inputs(9)
    ref = _stock(model, kwargs)
    runner = TransformerRunner(model, RunnerOptions(attention="sdpa", compile=True))
    assert _rel(runner(**kwargs), ref) < 1e-5
    assert _rel(runner(**_inputs(10)), _stock(model, _inputs(10))) < 1e-5


def test_fp8_attention_plumbing(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cuDNN FP8 path's scales, checked with a reference kernel in its place (no cuDNN on CPU)."""
    from fploopd.engine.attention import attention

    def reference_sdpa_fp8(q8, k8, v8, dq, dk, dv):  # type: ignore[no-untyped-def]
        o = attention(q8.float() * dq, k8.float() * dk, v8.float() * dv, "math")
        return torch.clamp(o / dv, -448, 448).to(torch.float8_e4m3fn)

    monkeypatch.setattr(attention_mod, "sdpa_fp8", reference_sdpa_fp8)
    kwargs = _inputs(12)
    ref = _stock(model, kwargs)
    out = TransformerRunner(model, RunnerOptions(attention="cudnn_fp8"))(**kwargs)
    assert 0 < ((out - ref).norm() / ref.norm()).item() < 0.15


def test_attention_candidates_name_fa4_only_where_it_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert attention_candidates(torch.device("cpu")) == ["sdpa"]
    assert not fa4_would_help("cpu")
    installed = {"flash_attn.cute"}
    monkeypatch.setattr(attention_mod, "_has_module", lambda name: name in installed)
    names = attention_candidates(torch.device("cuda"))
    assert "fa4" in names and "flash_attn" not in names  # FA4's namespace package is not FA2/FA3
    installed.add("flash_attn_interface")
    assert {"fa4", "flash_attn"} <= set(attention_candidates(torch.device("cuda")))
    assert attention_candidates(torch.device("cuda"))[:4] == ["cudnn", "flash", "efficient", "sdpa"]
    assert "sage" not in names  # lossy: only when asked for


def test_has_module_is_false_for_a_dotted_name_without_its_parent() -> None:
    assert attention_mod._has_module("torch.nn")
    assert not attention_mod._has_module("no_such_package_fploopd.cute")


def test_guarded_compile_falls_back_to_eager_for_good() -> None:
    calls: list[str] = []

    def eager(x: int) -> int:
        calls.append("eager")
        return x + 1

    def broken(x: int) -> int:
        calls.append("compiled")
        raise RuntimeError("inductor could not lower this shape")

    fn = guarded(eager, broken, "test module")
    assert fn(1) == 2 and fn(2) == 3
    assert calls == ["compiled", "eager", "eager"]  # the broken path is tried once, then left alone

    working = guarded(eager, lambda x: x * 10, "test module")
    assert working(3) == 30


def test_vae_accel_is_a_no_op_on_cpu() -> None:
    from fploopd.engine.random_models import build_vae

    vae = build_vae("tiny", "cpu", torch.float32)
    z = torch.randn(1, vae.config.latent_channels, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = vae.decode(z).sample
        vae_accel = VaeAccel(vae)
        assert vae_accel.apply("cpu", compile=True) == {"compile": False, "strips": False}
        assert "forward" not in vae.decoder.__dict__
        assert torch.equal(vae.decode(z).sample, ref)
        vae_accel.restore()
        assert torch.equal(vae.decode(z).sample, ref)


def test_linear_gelu_is_the_tanh_gelu_on_cpu() -> None:
    # _addmm_activation's GELU is tanh on CUDA but erf on the CPU: the epilogue must stay CUDA-only.
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(16, 24), torch.randn(2, 5, 16) * 3
    with torch.no_grad():
        out = linear_gelu(lin, x)
        tanh = torch.nn.functional.gelu(lin(x), approximate="tanh")
        erf = torch.nn.functional.gelu(lin(x))
    assert out.shape == (2, 5, 24)
    assert (out - tanh).abs().max() < 1e-6
    assert (tanh - erf).abs().max() > 1e-4  # the two GELUs differ at these inputs


def test_joint_out_equals_the_projection_of_the_concat() -> None:
    torch.manual_seed(0)
    lin, a, m = torch.nn.Linear(8 + 32, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 32)
    with torch.no_grad():
        ref = lin(torch.cat([a, m], dim=-1))
        split = joint_out(lin, a, m)
        whole = joint_out(lin, a, m, epilogue=False)
    assert split.shape == ref.shape == (2, 7, 8)
    assert _rel(split, ref) < 1e-6
    assert torch.equal(whole, ref)
