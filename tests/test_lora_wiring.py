"""LoRAs wired into the engine and the pipelines: Components.apply_loras, the identity a job records,
and the checkpoint key (real tiny model, real files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fploopd.engine.components import load_components
from fploopd.engine.lora import load_lora
from fploopd.engine.lora_testdata import write_tiny_lora
from fploopd.engine.sources import resolve
from fploopd.engine.weights import PreparedWeights
from fploopd.errors import FploopdError
from fploopd.pipelines.context import JobContext
from fploopd.spec import JobSpec


def transformer_state(c: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in c.transformer.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def loras(tmp_path: Path) -> dict[str, Path]:
    return {
        "a": write_tiny_lora(tmp_path / "a.safetensors", "musubi", seed=1),
        "b": write_tiny_lora(tmp_path / "b.safetensors", "diffusers", seed=2),
        "h": write_tiny_lora(tmp_path / "h.safetensors", "hunyuan", seed=3),
    }


@pytest.fixture
def fresh(tiny_root: Path) -> Any:
    """The tiny family, loaded for this test alone (these tests change its weights)."""
    return load_components(resolve("tiny"), device="cpu")


def test_switching_sets_is_exact_and_reads_base_weights_from_the_files(tiny_root: Path, fresh: Any, loras: dict[str, Path]) -> None:
    base = transformer_state(fresh)
    assert fresh.lora_state is not None and fresh.lora_state.base_source is not None  # no host copies
    fresh.apply_loras([(loras["a"], 0.7)])
    merged_a = transformer_state(fresh)
    assert not same_state(merged_a, base)

    for _ in range(3):  # A -> B+H -> A, again and again
        fresh.apply_loras([(loras["b"], -0.5), (load_lora(loras["h"]), 1.3)])
        fresh.apply_loras([(loras["a"], 0.7)])
    assert same_state(transformer_state(fresh), merged_a)

    other = load_components(resolve("tiny"), device="cpu")
    other.apply_loras([(loras["a"], 0.7)])  # a fresh load plus A
    assert same_state(transformer_state(other), merged_a)

    fresh.apply_loras([])
    assert same_state(transformer_state(fresh), base)


def test_the_identity_names_each_lora_and_is_the_plain_one_without(fresh: Any, loras: dict[str, Path]) -> None:
    plain = dict(fresh.identity)
    fresh.apply_loras([(loras["a"], 0.7), (loras["b"], 1.0)])
    a, b = load_lora(loras["a"]), load_lora(loras["b"])
    assert fresh.identity == {
        **plain,
        "loras": [
            {"name": "a.safetensors", "sha256": a.sha256, "scale": 0.7},
            {"name": "b.safetensors", "sha256": b.sha256, "scale": 1.0},
        ],
    }
    fresh.apply_loras([])
    assert fresh.identity == plain and "loras" not in fresh.identity


def test_the_same_set_again_rewrites_nothing(fresh: Any, loras: dict[str, Path]) -> None:
    first = fresh.apply_loras([(loras["a"], 0.7)])
    again = fresh.apply_loras([(loras["a"], 0.7)])
    assert first.rewritten > 0 and again.rewritten == 0
    assert fresh.apply_loras([(loras["a"], 0.8)]).rewritten == first.rewritten  # another scale is another set


def test_fp8_weights_are_made_again_from_the_merged_weights(fresh: Any, loras: dict[str, Path]) -> None:
    from fploopd.engine.fp8 import quantize_weight

    weights = PreparedWeights(fresh.transformer)
    weights.fuse()
    weights.quantize_fp8("row")
    fresh.weights = weights
    block = fresh.transformer.transformer_blocks[0]
    before = [t.clone() for t in weights.of(block).fp8["attn.to_q"]]
    fresh.apply_loras([(loras["a"], 1.0)])
    assert weights.fp8_granularity == "row"
    bw = weights.of(block)
    # What quantising the merged weights afresh gives, for a plain linear and a fused projection.
    expected = quantize_weight(block.attn.to_q.weight, "row")
    assert not torch.equal(bw.fp8["attn.to_q"][0].float(), before[0].float())
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(bw.fp8["attn.to_q"], expected))
    fused = quantize_weight(bw.fused["qkv"][0], "row")
    assert all(torch.equal(a.float(), b.float()) for a, b in zip(bw.fused_fp8["qkv"], fused))
    assert torch.equal(bw.fused["qkv"][0][: block.attn.to_q.out_features], block.attn.to_q.weight)  # merged in place


def checkpoint_key(components: Any, spec: JobSpec, tmp_path: Path) -> str:
    ctx = JobContext(spec=spec, inputs={}, out_dir=tmp_path, name="x", components=components, work_dir=tmp_path)
    return ctx.checkpoint(7).key


def test_the_checkpoint_key_names_the_lora_set(fresh: Any, loras: dict[str, Path], tmp_path: Path) -> None:
    from fploopd.engine.sections import fingerprint

    plain_spec = JobSpec(prompt="a cat", pipeline="loop")
    plain = checkpoint_key(fresh, plain_spec, tmp_path)
    # As before the loras field existed: settings without it, the plain model identity.
    settings = {k: v for k, v in plain_spec.latent_settings().items() if k != "loras"}
    assert plain == fingerprint(settings=settings, seed=7, inputs={}, model=fresh.identity)

    spec = JobSpec(prompt="a cat", pipeline="loop", loras=[{"file": "a.safetensors", "scale": 0.7}])
    fresh.apply_loras([(loras["a"], 0.7)])
    with_a = checkpoint_key(fresh, spec, tmp_path)
    fresh.apply_loras([(loras["a"], 0.6)])
    spec_06 = JobSpec(prompt="a cat", pipeline="loop", loras=[{"file": "a.safetensors", "scale": 0.6}])
    with_a06 = checkpoint_key(fresh, spec_06, tmp_path)
    # Same name and scale, other content: the sha256 in the identity tells them apart.
    write_tiny_lora(loras["a"], "musubi", seed=9)
    fresh.apply_loras([(loras["a"], 0.7)])
    with_other_a = checkpoint_key(fresh, spec, tmp_path)
    fresh.apply_loras([])
    assert checkpoint_key(fresh, plain_spec, tmp_path) == plain
    assert len({plain, with_a, with_a06, with_other_a}) == 4


def test_run_job_refuses_loras_the_caller_did_not_resolve(tiny_components: Any, tmp_path: Path) -> None:
    from fploopd.pipelines import run_job

    spec = JobSpec(prompt="", pipeline="loop", loras=[{"file": "a.safetensors", "scale": 0.7}])
    with pytest.raises(FploopdError, match="names 1 LoRA"):
        run_job(spec, {}, tmp_path / "out", name="x", seeds=[1], components=tiny_components, work_dir=tmp_path / "w")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"file": "style.ckpt"}, "pickle"),
        ({"file": "style.pt", "scale": 1.0}, "pickle"),
        ({"file": "../style.safetensors"}, "pattern"),
        ({"file": "style.safetensors", "scale": 10.5}, "less than or equal"),
        ({"file": "style.gguf"}, "only .safetensors LoRA files are accepted, not .gguf"),
    ],
)
def test_the_spec_field_is_bounded(entry: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        JobSpec(prompt="", loras=[entry])


def test_at_most_max_loras() -> None:
    from pydantic import ValidationError

    from fploopd.engine.lora_merge import MAX_LORAS

    JobSpec(prompt="", loras=[{"file": f"{i}.safetensors"} for i in range(MAX_LORAS)])
    with pytest.raises(ValidationError, match=f"at most {MAX_LORAS}"):
        JobSpec(prompt="", loras=[{"file": f"{i}.safetensors"} for i in range(MAX_LORAS + 1)])
