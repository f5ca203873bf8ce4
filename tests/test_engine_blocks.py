"""The block functions take everything as arguments: one compiled graph serves every block of a kind,
with or without prepared weights, and nothing is read from module globals."""

from __future__ import annotations

import pytest
import torch

from fploopd.engine.blocks import double_block, single_block
from fploopd.engine.random_models import build_transformer
from fploopd.engine.weights import NO_WEIGHTS, PreparedWeights


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_transformer("tiny", "cpu", torch.float32, seed=5)


def _inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    cfg = model.config
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    g = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(1, 12, dim, generator=g),
        "context": torch.randn(1, 5, dim, generator=g),
        "temb": torch.randn(1, dim, generator=g),
        "cos": torch.randn(12, cfg.attention_head_dim, generator=g),
        "sin": torch.randn(12, cfg.attention_head_dim, generator=g),
    }


def _run(model: torch.nn.Module, fns: tuple, weights: PreparedWeights | None, fp8: bool) -> torch.Tensor:
    """The block stack as the runner drives it, with ``fns`` as the block functions."""
    double_fn, single_fn = fns
    x = _inputs(model)
    h, c = x["hidden"], x["context"]
    for block in model.transformer_blocks:
        w = NO_WEIGHTS if weights is None else weights.of(block)
        h, c = double_fn(block, w, h, c, x["temb"], x["cos"], x["sin"], "sdpa", fp8, True)
    joined = torch.cat([h, c], dim=1)
    for block in model.single_transformer_blocks:
        w = NO_WEIGHTS if weights is None else weights.of(block)
        joined = single_fn(block, w, joined, x["temb"], x["cos"], x["sin"], 12, "sdpa", fp8, True)
    return joined


@pytest.mark.parametrize("prepare", ["none", "fp8", "fused_fp8"])
def test_one_graph_per_block_kind(model: torch.nn.Module, prepare: str) -> None:
    weights = None if prepare == "none" else PreparedWeights(model)
    if prepare == "fused_fp8":
        weights.fuse()
    if weights is not None:
        weights.quantize_fp8("row")
    fp8 = weights is not None
    graphs: list[str] = []

    def counting(gm: torch.fx.GraphModule, _inputs: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    compiled = (torch.compile(double_block, backend=counting), torch.compile(single_block, backend=counting))
    try:
        with torch.no_grad():
            eager = _run(model, (double_block, single_block), weights, fp8)
            out = _run(model, compiled, weights, fp8)
    finally:
        if weights is not None:
            weights.unfuse()
            weights.remove_fp8()
        torch._dynamo.reset()
    assert len(model.transformer_blocks) > 1 and len(model.single_transformer_blocks) > 1
    assert len(graphs) == 2  # one per block kind, shared by every block with its own weights
    assert torch.equal(out, eager)
