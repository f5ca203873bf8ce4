"""LoRA files: formats mapped onto the real module names, exact merges and switches, clear refusals."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fploopd.bench.inputs import section_kwargs, tiny_spec
from fploopd.engine.lora import (
    LinearIndex,
    LoraError,
    LoraPatch,
    ResolvedLora,
    load_lora,
    lora_from_tensors,
    resolve_lora,
)
from fploopd.engine.lora_merge import LoraState, ScaledLora
from fploopd.engine.lora_testdata import (
    FORMATS,
    block_linears,
    hunyuan_modules,
    musubi_keys,
    tiny_transformer_meta,
    write_tiny_lora,
)
from fploopd.engine.random_models import FULL_TRANSFORMER, build_transformer
from fploopd.engine.tiny import TRANSFORMER as TINY_TRANSFORMER
from fploopd.engine.weights import FUSED_QKV, PreparedWeights
from fploopd.errors import InputError


def _meta_tensors(keys_and_shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in keys_and_shapes.items()}


def _resolved(path: Path, model: nn.Module) -> ResolvedLora:
    return resolve_lora(load_lora(path), model)


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_identical(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


# --- the full-size architecture ------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_meta() -> nn.Module:
    return tiny_transformer_meta(FULL_TRANSFORMER)


def test_every_key_of_a_full_coverage_musubi_lora_maps_onto_the_full_size_transformer(full_meta: nn.Module) -> None:
    linears = block_linears(full_meta, include_norms=True)
    assert len(linears) == 20 * 14 + 40 * 6  # every Linear of the 60 blocks, the norms' too
    keys = musubi_keys(linears)
    shapes: dict[str, tuple[int, ...]] = {}
    for module, (out, inp) in linears.items():
        name = "lora_unet_" + module.replace(".", "_")
        shapes |= {f"{name}.lora_down.weight": (32, inp), f"{name}.lora_up.weight": (out, 32), f"{name}.alpha": ()}
    assert sorted(shapes) == sorted(keys)
    lora = lora_from_tensors("full.safetensors", _meta_tensors(shapes))
    resolved = resolve_lora(lora, full_meta)
    assert set(resolved.patches) == set(linears)  # each key to its own module, none left over
    assert lora.format.describe() == "musubi-tuner/kohya LoRA (FramePack names)"
    assert resolved.rank == 32


def test_hunyuan_names_split_onto_the_full_size_transformer(full_meta: nn.Module) -> None:
    modules = hunyuan_modules(full_meta)
    refiner = {
        "txt_in_individual_token_refiner_blocks_1_self_attn_qkv": (3 * 3072, 3072),
        "txt_in_individual_token_refiner_blocks_1_mlp_fc1": (4 * 3072, 3072),
        "txt_in_input_embedder": (3072, 4096),
        "final_layer_adaLN_modulation_1": (2 * 3072, 3072),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (out, inp) in {**modules, **refiner}.items():
        shapes |= {f"diffusion_model.{name}.lora_A.weight": (16, inp), f"diffusion_model.{name}.lora_B.weight": (out, 16)}
    resolved = resolve_lora(lora_from_tensors("hv.safetensors", _meta_tensors(shapes)), full_meta)
    assert resolved.format.naming == "hunyuanvideo"
    # double: q, k, v, out, ff x2, for both streams = 12 each; single: q, k, v, mlp, out = 5 each
    assert len(resolved.patches) == 20 * 12 + 40 * 5 + 3 + 1 + 1 + 1
    assert resolved.patches["single_transformer_blocks.7.proj_mlp"].shape == (4 * 3072, 3072)
    assert "context_embedder.token_refiner.refiner_blocks.1.attn.to_v" in resolved.patches
    assert "norm_out.linear" in resolved.patches


# --- the tiny model: formats, merge math, switching -------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    for fmt in FORMATS:
        write_tiny_lora(folder / f"{fmt}.safetensors", fmt, seed=7)
    write_tiny_lora(folder / "musubi-b.safetensors", "musubi", seed=8, rank=2, alpha=None)
    return folder


def test_each_format_is_recognised_and_writes_the_same_bytes_again(lora_dir: Path, tmp_path: Path) -> None:
    expected = {
        "musubi": "musubi-tuner/kohya LoRA (FramePack names)",
        "diffusers": "diffusers/diffusion-pipe LoRA (FramePack names)",
        "hunyuan": "musubi-tuner/kohya LoRA (HunyuanVideo names)",
        "loha": "musubi-tuner/kohya LoHa (FramePack names)",
        "lokr": "musubi-tuner/kohya LoKr (FramePack names)",
    }
    model = tiny_transformer_meta()
    for fmt, described in expected.items():
        lora = load_lora(lora_dir / f"{fmt}.safetensors")
        assert lora.format.describe() == described
        assert len(resolve_lora(lora, model).patches) == len(block_linears(model))
        again = write_tiny_lora(tmp_path / f"{fmt}.safetensors", fmt, seed=7)
        assert load_lora(again).sha256 == lora.sha256  # deterministic test material


def _functional_delta_hooks(model: nn.Module, lora: ResolvedLora, scale: float) -> list:
    """The LoRA applied as its training code runs it: beside each Linear, not merged into it."""
    modules = dict(model.named_modules())
    handles = []
    for path, patch in lora.patches.items():
        def hook(_m: nn.Module, args: tuple, out: Tensor, patch=patch) -> Tensor:
            x = args[0]
            if isinstance(patch, LoraPatch):
                r = patch.down.shape[0]
                ratio = 1.0 if patch.alpha is None else patch.alpha / r
                return out + scale * ratio * ((x @ patch.down.T) @ patch.up.T)
            return out + scale * torch.nn.functional.linear(x, patch.delta(x.device))

        handles.append(modules[path].register_forward_hook(hook))
    return handles


@pytest.mark.parametrize("fmt", ["musubi", "loha", "lokr"])
def test_merged_forward_equals_unmerged_forward_plus_the_lora(lora_dir: Path, fmt: str) -> None:
    model = build_transformer("tiny", "cpu", torch.float32, seed=11)
    lora = _resolved(lora_dir / f"{fmt}.safetensors", model)
    kwargs = section_kwargs(tiny_spec(TINY_TRANSFORMER), "cpu", torch.float32, seed=3, sigma=0.7)
    with torch.no_grad():
        plain = model(**kwargs, return_dict=False)[0]
        handles = _functional_delta_hooks(model, lora, 0.7)
        reference = model(**kwargs, return_dict=False)[0]
        for h in handles:
            h.remove()
        LoraState(model).apply([ScaledLora(lora, 0.7)])
        merged = model(**kwargs, return_dict=False)[0]
    assert (reference - plain).abs().max() > 1e-2 * plain.abs().max()  # the LoRA changes the output
    assert ((merged - reference).abs().max() / reference.abs().max()).item() < 1e-5


def test_switching_sets_is_bit_identical_to_a_fresh_merge(lora_dir: Path) -> None:
    model = build_transformer("tiny", "cpu", torch.bfloat16, seed=5)
    base = _weights(model)
    a = _resolved(lora_dir / "musubi.safetensors", model)
    b_all = load_file(str(lora_dir / "musubi-b.safetensors"))
    b = resolve_lora(lora_from_tensors("b", {k: v for k, v in b_all.items() if "single_transformer" in k}), model)
    c = _resolved(lora_dir / "loha.safetensors", model)
    set_a = [ScaledLora(a, 0.8)]

    fresh = build_transformer("tiny", "cpu", torch.bfloat16, seed=5)
    LoraState(fresh).apply(set_a)
    merged_a = _weights(fresh)
    assert any(not torch.equal(merged_a[k], base[k]) for k in base)

    state = LoraState(model)
    for step in ([ScaledLora(b, 1.0)], set_a, [ScaledLora(a, 0.8), ScaledLora(c, -0.5)], [], set_a, [ScaledLora(b, 0.3)]):
        state.apply(step)
        state.apply(set_a)
        _assert_bit_identical(_weights(model), merged_a)
    state.apply([])
    _assert_bit_identical(_weights(model), base)
    assert state.identity() == []
    assert state.base_bytes == sum(base[p + ".weight"].numel() * 2 for p in a.patches)  # only the touched weights


def test_the_hunyuan_split_merges_like_the_same_lora_in_musubi_names(lora_dir: Path) -> None:
    hv = load_file(str(lora_dir / "hunyuan.safetensors"))
    hidden, mlp = 32, 128  # the tiny transformer's sizes, written out: an independent split
    rows = {"q": slice(0, hidden), "k": slice(hidden, 2 * hidden), "v": slice(2 * hidden, 3 * hidden)}
    musubi: dict[str, Tensor] = {}

    def put(name: str, down: Tensor, up: Tensor, alpha: Tensor) -> None:
        key = "lora_unet_" + name
        musubi.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": alpha})

    def parts(hv_name: str) -> tuple[Tensor, Tensor, Tensor]:
        key = "lora_unet_" + hv_name
        return hv[f"{key}.lora_down.weight"], hv[f"{key}.lora_up.weight"], hv[f"{key}.alpha"]

    for i in range(2):
        d = f"transformer_blocks_{i}_"
        down, up, alpha = parts(f"double_blocks_{i}_img_attn_qkv")
        for n, r in rows.items():
            put(f"{d}attn_to_{n}", down, up[r], alpha)
        down, up, alpha = parts(f"double_blocks_{i}_txt_attn_qkv")
        for n, r in rows.items():
            put(f"{d}attn_add_{n}_proj", down, up[r], alpha)
        for hv_name, name in (
            ("img_attn_proj", "attn_to_out_0"), ("img_mlp_fc1", "ff_net_0_proj"), ("img_mlp_fc2", "ff_net_2"),
            ("txt_attn_proj", "attn_to_add_out"), ("txt_mlp_fc1", "ff_context_net_0_proj"),
            ("txt_mlp_fc2", "ff_context_net_2"),
        ):
            put(d + name, *parts(f"double_blocks_{i}_{hv_name}"))
        s = f"single_transformer_blocks_{i}_"
        down, up, alpha = parts(f"single_blocks_{i}_linear1")
        assert up.shape[0] == 3 * hidden + mlp
        for n, r in rows.items():
            put(f"{s}attn_to_{n}", down, up[r], alpha)
        put(f"{s}proj_mlp", down, up[3 * hidden :], alpha)
        put(f"{s}proj_out", *parts(f"single_blocks_{i}_linear2"))

    merged = []
    for tensors in (hv, musubi):
        model = build_transformer("tiny", "cpu", torch.bfloat16, seed=5)
        LoraState(model).apply([ScaledLora(resolve_lora(lora_from_tensors("x", tensors), model), 1.0)])
        merged.append(_weights(model))
    _assert_bit_identical(*merged)


def test_a_merge_reaches_the_fused_projections(lora_dir: Path) -> None:
    model = build_transformer("tiny", "cpu", torch.bfloat16, seed=5)
    weights = PreparedWeights(model)
    weights.fuse()
    LoraState(model).apply([ScaledLora(_resolved(lora_dir / "musubi.safetensors", model), 1.0)])
    block = model.transformer_blocks[0]
    fused, _ = weights.of(block).fused[FUSED_QKV]
    assert torch.equal(fused, torch.cat([block.attn.to_q.weight, block.attn.to_k.weight, block.attn.to_v.weight]))
    assert fused.data_ptr() == block.attn.to_q.weight.data_ptr()  # still views: written in place


# --- refusals ------------------------------------------------------------------------------------------


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert info.value.field == "loras"
    return str(info.value)


def test_a_key_that_matches_no_module_is_listed(lora_dir: Path) -> None:
    tensors = load_file(str(lora_dir / "musubi.safetensors"))
    extra = {
        "lora_unet_transformer_blocks_9_attn_to_q.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_transformer_blocks_9_attn_to_q.lora_up.weight": torch.zeros(32, 4),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(32, 4),
    }
    msg = _error(resolve_lora, lora_from_tensors("extra.safetensors", tensors | extra), tiny_transformer_meta())
    assert "extra.safetensors" in msg and "2 key(s) match no module" in msg
    assert "lora_unet_transformer_blocks_9_attn_to_q.lora_up.weight" in msg
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in msg


def test_a_wrong_shape_names_the_key_and_both_shapes(lora_dir: Path) -> None:
    tensors = load_file(str(lora_dir / "musubi.safetensors"))
    key = "lora_unet_transformer_blocks_1_ff_net_2"
    tensors[f"{key}.lora_down.weight"] = torch.zeros(4, 100)
    tensors[f"{key}.lora_up.weight"] = torch.zeros(32, 4)
    msg = _error(resolve_lora, lora_from_tensors("shape.safetensors", tensors), tiny_transformer_meta())
    assert key in msg and "[32, 100]" in msg and "transformer_blocks.1.ff.net.2 is [32, 128]" in msg


class _Touch:
    """A pickle that creates a file when loaded: the harm a .pt LoRA can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["style.pt", "style.ckpt", "style.bin", "renamed.safetensors"])
def test_pickle_files_are_refused_without_being_run(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "ran"
    (tmp_path / name).write_bytes(pickle.dumps({"w": _Touch(marker)}, protocol=4))
    msg = _error(load_lora, tmp_path / name)
    assert "pickle" in msg and name in msg
    assert not marker.exists()


def test_a_torch_zip_renamed_to_safetensors_is_refused(tmp_path: Path) -> None:
    torch.save({"x": torch.zeros(2)}, tmp_path / "zip.safetensors")
    assert "pickle" in _error(load_lora, tmp_path / "zip.safetensors")


def test_bounds_on_size_rank_and_scale(lora_dir: Path, tmp_path: Path) -> None:
    path = lora_dir / "musubi.safetensors"
    assert "more than the" in _error(load_lora, path, max_bytes=1000)
    assert "rank 4" in _error(load_lora, path, max_rank=2)
    model = tiny_transformer_meta()
    lora = resolve_lora(load_lora(path), model)
    assert "scale 50" in _error(LoraState(build_transformer("tiny", "cpu", torch.float32)).apply, [ScaledLora(lora, 50.0)])
    save_file({"x.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    assert "no known LoRA format" in _error(load_lora, tmp_path / "other.safetensors")


def test_unsupported_kinds_are_named(lora_dir: Path) -> None:
    tensors = load_file(str(lora_dir / "musubi.safetensors"))
    tensors["lora_unet_transformer_blocks_0_attn_to_q.dora_scale"] = torch.ones(1, 32)
    assert "DoRA" in _error(lora_from_tensors, "dora.safetensors", tensors)
    bad = load_file(str(lora_dir / "musubi.safetensors"))
    bad["lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight"][0, 0] = float("nan")
    assert "NaN" in _error(lora_from_tensors, "nan.safetensors", bad)


def test_the_index_knows_every_linear_by_its_underscored_name() -> None:
    index = LinearIndex.of(tiny_transformer_meta())
    assert index.by_id["transformer_blocks_0_ff_net_0_proj"] == "transformer_blocks.0.ff.net.0.proj"
    assert index.by_id["single_transformer_blocks_1_proj_mlp"] == "single_transformer_blocks.1.proj_mlp"
    assert issubclass(LoraError, InputError)


def test_the_final_modulation_swaps_shift_and_scale_as_diffusers_stores_them() -> None:
    down, up = torch.randn(2, 32), torch.randn(64, 2)
    tensors = {"diffusion_model.final_layer.adaLN_modulation.1.lora_A.weight": down,
               "diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight": up}
    patch = resolve_lora(lora_from_tensors("final.safetensors", tensors), tiny_transformer_meta()).patches["norm_out.linear"]
    assert isinstance(patch, LoraPatch)
    assert torch.equal(patch.up, torch.cat([up[32:], up[:32]])) and torch.equal(patch.down, down)


def test_base_weights_read_back_from_the_model_files_switch_exactly_too(lora_dir: Path, tmp_path: Path) -> None:
    from fploopd.engine.lora_merge import safetensors_base_source
    from fploopd.engine.tiny import TRANSFORMER_SHARD_SIZE

    model = build_transformer("tiny", "cpu", torch.bfloat16, seed=5)
    model.save_pretrained(tmp_path / "transformer", safe_serialization=True, max_shard_size=TRANSFORMER_SHARD_SIZE)
    base = _weights(model)
    a = _resolved(lora_dir / "musubi.safetensors", model)
    c = _resolved(lora_dir / "lokr.safetensors", model)
    copies = build_transformer("tiny", "cpu", torch.bfloat16, seed=5)
    LoraState(copies).apply([ScaledLora(a, 0.6)])
    state = LoraState(model, base_source=safetensors_base_source(tmp_path / "transformer"))
    for step in ([ScaledLora(c, 1.0)], [ScaledLora(a, 0.6)], [], [ScaledLora(a, 0.6)]):
        state.apply(step)
    _assert_bit_identical(_weights(model), _weights(copies))
    assert state.base_bytes == 0
    state.apply([])
    _assert_bit_identical(_weights(model), base)
