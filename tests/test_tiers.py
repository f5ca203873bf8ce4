"""VRAM tiers: the choice (a pure function of free bytes, compute capability and the request, with
fake device properties) and each tier's placement on the tiny model on the CPU, where the streamer
runs without a side stream: a streamed tier computes exactly what the resident tier of its dtype
computes, FP8 drifts within its known bounds, and LoRA merges reach the FP8 copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from fploopd.daemon.settings import SettingsError, load_settings
from fploopd.engine.components import Components, load_components, model_sizes, place_tier
from fploopd.engine.lora_testdata import write_tiny_lora
from fploopd.engine.sources import resolve
from fploopd.engine.tiers import (
    FULL_SIZE,
    TIERS,
    TierChoice,
    choose_tier,
    need_bytes,
    normalize_vram,
    parse_vram,
    resident_blocks,
    spread,
)
from fploopd.engine.vae_tiles import strip_count
from tests.test_components import transformer_inputs

GiB = 2**30
HOPPER, ADA, AMPERE, TURING = (9, 0), (8, 9), (8, 6), (7, 5)


# --- the choice --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free_gib", "tier"),
    [(80, "bf16-resident"), (64, "bf16-resident"), (48, "fp8-resident"), (24, "fp8-resident"),
     (16, "fp8-streamed"), (12, "fp8-streamed"), (8, "fp8-streamed"), (6, "fp8-streamed")],
)
def test_auto_picks_the_fastest_tier_that_fits_on_an_fp8_card(free_gib: int, tier: str) -> None:
    choice = choose_tier(free_gib * GiB, HOPPER)
    assert choice.tier == tier, choice.reason
    assert choice.usable < free_gib * GiB  # a margin is kept back
    assert "run out of memory" not in choice.reason
    assert f"{free_gib:.1f} GiB free" in choice.reason


def test_streamed_tiers_keep_as_many_blocks_as_fit_and_fewer_with_less_memory() -> None:
    kept = [choose_tier(g * GiB, HOPPER) for g in (6, 8, 12, 16)]
    counts = [(c.resident_doubles, c.resident_singles) for c in kept]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    for c in kept:  # what stays plus the streaming buffers fits what was planned with
        blocks = c.resident_doubles * FULL_SIZE.double_fp8 + c.resident_singles * FULL_SIZE.single_fp8
        assert need_bytes("fp8-streamed", FULL_SIZE) + blocks <= c.usable
        assert f"{c.resident_doubles}/20 double" in c.reason
    c24, c48 = choose_tier(24 * GiB, HOPPER), choose_tier(48 * GiB, HOPPER)
    assert not c24.untiled_decode and c24.vae_resident  # strips where room is short
    # The decode may use what the plan set aside for it and what the weights leave (the VAE aside).
    spare = c24.usable - c24.need
    assert c24.decode_room == FULL_SIZE.decode_work + spare - FULL_SIZE.vae > FULL_SIZE.decode_work
    assert all(c.decode_room == FULL_SIZE.decode_work for c in kept)
    assert strip_count(5, 80, 80, c24.decode_room) < strip_count(5, 80, 80, kept[0].decode_room)
    assert c48.untiled_decode and c48.vae_resident
    assert not any(c.vae_resident or c.untiled_decode for c in kept)  # streamed tiers spend the room on blocks


@pytest.mark.parametrize("capability", [AMPERE, TURING, None])
def test_no_fp8_tiers_without_fp8_tensor_cores_and_it_says_so(capability: Any) -> None:
    for free_gib, tier in ((80, "bf16-resident"), (24, "bf16-streamed"), (8, "bf16-streamed")):
        choice = choose_tier(free_gib * GiB, capability)
        assert choice.tier == tier and not choice.fp8
        if tier != "bf16-resident":
            assert "no FP8 tensor cores" in choice.reason
    asked = choose_tier(24 * GiB, capability, "fp8-resident")
    assert asked.tier == "bf16-streamed" and "fp8-resident asked for" in asked.reason
    assert choose_tier(24 * GiB, ADA).tier == "fp8-resident"  # Ada has them


def test_a_budget_caps_the_choice_and_a_named_tier_is_kept() -> None:
    capped = choose_tier(80 * GiB, HOPPER, "12")
    assert capped.tier == "fp8-streamed"
    assert "a 12.0 GiB budget (80.0 GiB free)" in capped.reason
    assert (capped.resident_doubles, capped.resident_singles) == (
        choose_tier(12 * GiB, HOPPER).resident_doubles, choose_tier(12 * GiB, HOPPER).resident_singles)
    assert choose_tier(8 * GiB, HOPPER, "64GiB").tier == "fp8-streamed"  # the budget never adds memory
    named = choose_tier(80 * GiB, HOPPER, "fp8-streamed")
    assert named.tier == "fp8-streamed" and "asked for" in named.reason
    assert (named.resident_doubles, named.resident_singles) == (20, 40)  # every block fits: none streams
    low = choose_tier(80 * GiB, HOPPER, "low")
    assert low.tier == "bf16-streamed"
    risky = choose_tier(8 * GiB, HOPPER, "bf16-resident")
    assert risky.tier == "bf16-resident" and "may run out of memory" in risky.reason
    assert choose_tier(60 * GiB, HOPPER, prefer_fp8=True).tier == "fp8-resident"  # the fp8 setting


@pytest.mark.parametrize(
    ("budget", "parks", "untiled"),
    [(48, False, True), (24, True, True), (16, True, False), (12, True, False), (8, True, False), (6, False, False)],
)
def test_tight_tiers_park_their_blocks_for_the_decode_where_the_host_can_pin_them(budget: int, parks: bool, untiled: bool) -> None:
    roomy = choose_tier(141 * GiB, HOPPER, f"{budget}GiB", host_free=200 * GiB)
    assert (roomy.park_for_decode, roomy.untiled_decode) == (parks, untiled), roomy.reason
    unparked = choose_tier(141 * GiB, HOPPER, f"{budget}GiB")  # host memory unknown: never parked
    assert not unparked.park_for_decode
    assert dataclasses.replace(roomy, park_for_decode=False, untiled_decode=unparked.untiled_decode,
                               decode_room=unparked.decode_room, reason=unparked.reason) == unparked  # fmt: skip
    if parks:
        # Everything but the transformer's rest and the VAE is the decode's, and it needs fewer strips.
        assert roomy.decode_room == roomy.usable - FULL_SIZE.transformer_rest - FULL_SIZE.vae
        assert strip_count(5, 80, 80, roomy.decode_room) < strip_count(5, 80, 80, unparked.decode_room)
        assert "wait in pinned host memory during the decode" in roomy.reason
        blocks = (roomy.resident_doubles * FULL_SIZE.double_fp8 + roomy.resident_singles * FULL_SIZE.single_fp8)
        short = choose_tier(141 * GiB, HOPPER, f"{budget}GiB", host_free=blocks + 3 * GiB)
        assert not short.park_for_decode and short.decode_room == unparked.decode_room
        assert short.reason.endswith(f"parking the blocks for it needs {blocks / GiB:.1f} GiB of pinned host memory and "
                                     f"4.0 GiB left over, {(blocks + 3 * GiB) / GiB:.1f} GiB is free")  # fmt: skip


def test_parse_vram_forms_and_errors() -> None:
    assert parse_vram("auto").tier is None and parse_vram("auto").budget is None
    assert parse_vram("high").tier == "bf16-resident" and parse_vram("LOW").tier == "bf16-streamed"
    for tier in TIERS:
        assert normalize_vram(tier) == tier
    assert parse_vram(12).budget == parse_vram("12").budget == parse_vram("12GiB").budget == 12 * GiB
    assert normalize_vram(7.5) == "7.5GiB" and normalize_vram("7.5 gib") == "7.5GiB"
    for bad in ("medium", "0", -3, "12TB", True, "nan"):
        with pytest.raises(ValueError, match="vram"):
            parse_vram(bad)


def test_spread_and_resident_blocks() -> None:
    assert spread(0, 4) == [False] * 4 and spread(4, 4) == [True] * 4
    marks = spread(3, 12)
    assert sum(marks) == 3 and marks.index(True) >= 3  # spread out, not bunched at the start
    assert resident_blocks(0, 10, 20, 5, 40) == (0, 0)
    d, s = resident_blocks(10**9, 10, 20, 5, 40)
    assert (d, s) == (20, 40)
    d, s = resident_blocks(250, 10, 20, 5, 40)  # 250 of the 400 bytes: the same fraction of each stack
    assert d == 12 and s == 26 and d * 10 + s * 5 <= 250


def test_full_size_constants_match_the_architecture() -> None:
    """FULL_SIZE counted again on the meta device (no memory): the choice's numbers are the model's."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from fploopd.engine.fp8 import block_fp8_linears
    from fploopd.engine.random_models import FULL_TRANSFORMER

    with torch.device("meta"):
        t = HunyuanVideoFramepackTransformer3DModel(**FULL_TRANSFORMER).to(torch.bfloat16)

    def size(m: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in [*m.parameters(), *m.buffers()])

    def fp8(m: torch.nn.Module) -> int:
        return size(m) - sum(lin.weight.numel() for _, lin in block_fp8_linears(m))

    assert (len(t.transformer_blocks), len(t.single_transformer_blocks)) == (FULL_SIZE.doubles, FULL_SIZE.singles)
    assert size(t.transformer_blocks[0]) == FULL_SIZE.double_bf16 and fp8(t.transformer_blocks[0]) == FULL_SIZE.double_fp8
    assert size(t.single_transformer_blocks[0]) == FULL_SIZE.single_bf16
    assert fp8(t.single_transformer_blocks[0]) == FULL_SIZE.single_fp8
    blocks = sum(size(b) for b in [*t.transformer_blocks, *t.single_transformer_blocks])
    assert size(t) - blocks == FULL_SIZE.transformer_rest


def test_settings_take_a_tier_or_a_budget(tmp_path: Path) -> None:
    assert load_settings(tmp_path, env={}).vram == "auto"
    assert load_settings(tmp_path, env={"FPLOOPD_VRAM": "12"}).vram == "12GiB"
    assert load_settings(tmp_path, {"vram": "high"}, env={}).vram == "bf16-resident"
    (tmp_path / "fploopd.toml").write_text('vram = 16\n')
    assert load_settings(tmp_path, env={}).vram == "16GiB"
    (tmp_path / "fploopd.toml").write_text('vram = "fp8-streamed"\n')
    assert load_settings(tmp_path, env={}).vram == "fp8-streamed"
    (tmp_path / "fploopd.toml").write_text('vram = "medium"\n')
    with pytest.raises(SettingsError, match="vram") as err:
        load_settings(tmp_path, env={})
    assert err.value.record().field == "vram"


# --- placements on the tiny model (CPU) --------------------------------------------------------------


def tiny_tier(c: Components, tier: str, keep: float) -> TierChoice:
    """``tier`` laid out for the tiny model, ``keep`` of each stack's blocks resident."""
    t = c.transformer
    d, s = len(t.transformer_blocks), len(t.single_transformer_blocks)
    return TierChoice(tier, "test", 0, 0, round(keep * d), round(keep * s), untiled_decode=False,
                      vae_resident=tier == "fp8-resident")


def forward(c: Components) -> torch.Tensor:
    kwargs = {k: v for k, v in transformer_inputs(c).items() if k != "return_dict"}
    with torch.no_grad():
        return c.runner()(**kwargs).float()


@pytest.fixture
def fresh(tiny_root: Path) -> Components:
    return load_components(resolve("tiny"), device="cpu")


def test_model_sizes_of_the_tiny_family(tiny_components: Any) -> None:
    sizes = model_sizes({n: getattr(tiny_components, n) for n in ("transformer", "text_encoder", "text_encoder_2", "vae", "image_encoder")})
    assert 0 < sizes.double_fp8 < sizes.double_bf16 and 0 < sizes.single_fp8 < sizes.single_bf16
    assert sizes.doubles == len(tiny_components.transformer.transformer_blocks)
    assert 0 < sizes.text_encoder_visit < sizes.text_encoder
    assert choose_tier(8 * GiB, HOPPER, "auto", sizes).tier == "bf16-resident"  # tiny fits anywhere


def test_streamed_tiers_compute_what_the_resident_tier_of_their_dtype_computes(tiny_root: Path) -> None:
    outs: dict[str, torch.Tensor] = {}
    for tier, keep in (("bf16-streamed", 0.0), ("bf16-streamed", 0.5), ("fp8-resident", 1.0),
                       ("fp8-streamed", 0.5), ("fp8-streamed", 0.0)):
        c = load_components(resolve("tiny"), device="cpu")
        if not outs:
            outs["bf16"] = forward(c)
        place_tier(c, tiny_tier(c, tier, keep))
        blocks = len(c.transformer.transformer_blocks) + len(c.transformer.single_transformer_blocks)
        streamed = c.streamer.blocks if c.streamer else 0
        assert streamed == blocks - (c.tier.resident_doubles + c.tier.resident_singles)
        assert c.runner_options.fp8 == c.fp8 == c.tier.fp8 and c.identity.get("fp8", False) == c.tier.fp8
        assert c.offloaded == frozenset({"text_encoder"})
        assert not c.vae.use_tiling and c.vae_accel is not None and c.vae_accel.room == c.tier.decode_room  # strips
        outs[f"{tier}:{keep}"] = forward(c)
        if c.streamer is not None:  # between runs a streamed block's tensors are its host copies
            block = next(b for b in c.transformer.single_transformer_blocks if c.streamer.streams(b))
            assert all(p.data.data_ptr() in {s.host.data_ptr() for s in c.streamer._slots[id(block)]}
                       for p in block.norm.parameters())
    bf16, fp8 = outs["bf16"], outs["fp8-resident:1.0"]
    assert torch.equal(outs["bf16-streamed:0.0"], bf16) and torch.equal(outs["bf16-streamed:0.5"], bf16)
    assert torch.equal(outs["fp8-streamed:0.5"], fp8) and torch.equal(outs["fp8-streamed:0.0"], fp8)
    drift = ((fp8 - bf16).norm() / bf16.norm()).item()
    assert 0 < drift < 0.1, drift  # FP8 moves the output, within its known drift


def test_lora_merges_reach_the_fp8_copies_resident_and_streamed(tiny_root: Path, tmp_path: Path) -> None:
    lora = write_tiny_lora(tmp_path / "a.safetensors", "musubi", seed=1)
    outs: dict[str, list[torch.Tensor]] = {}
    for tier, keep in (("fp8-resident", 1.0), ("fp8-streamed", 0.5)):
        c = load_components(resolve("tiny"), device="cpu")
        place_tier(c, tiny_tier(c, tier, keep))
        base = forward(c)
        c.apply_loras([(lora, 0.8)])
        merged = forward(c)
        c.apply_loras([])
        outs[tier] = [base, merged, forward(c)]
        assert not torch.equal(base, merged)  # the FP8 copies were made again from the merged weights
        assert torch.equal(outs[tier][2], base)  # and back to the base exactly
    assert all(torch.equal(a, b) for a, b in zip(outs["fp8-resident"], outs["fp8-streamed"]))


def test_host_bytes_of_each_tier_and_the_doctors_host_memory_check() -> None:
    from fploopd.daemon.doctor import host_memory_check
    from fploopd.engine.tiers import host_bytes

    GB = 10**9
    h200 = choose_tier(141 * GiB, HOPPER)
    parked_24 = choose_tier(141 * GiB, HOPPER, "24GiB", host_free=200 * GiB)
    unparked_24 = choose_tier(141 * GiB, HOPPER, "24GiB")
    old_card = choose_tier(10 * GiB, AMPERE)
    # Loading reads every model into host memory first: no tier takes less.
    assert host_bytes(h200) == host_bytes(unparked_24) == FULL_SIZE.resident_bytes
    # FP8 linears' bf16 masters (18.1 GB), the Llama and small encoders, and every FP8 block pinned.
    assert host_bytes(parked_24) == 2 * (FULL_SIZE.blocks(False) - FULL_SIZE.blocks(True)) + FULL_SIZE.blocks(True) + \
        FULL_SIZE.text_encoder + FULL_SIZE.small_encoders
    assert 50 * GB < host_bytes(parked_24) < 53 * GB
    assert old_card.tier == "bf16-streamed" and FULL_SIZE.resident_bytes <= host_bytes(old_card) < 45 * GB
    roomy = host_memory_check(128 * GiB, [parked_24, parked_24])
    assert roomy.status == "ok" and roomy.detail.startswith("128 GiB; the workers' models take about 95 GiB")
    short = host_memory_check(32 * GiB, [parked_24])
    assert short.status == "warn" and "expect swapping" in short.detail and "fewer workers" in short.fix


def test_doctor_says_which_tier_and_why(tmp_path: Path) -> None:
    from fploopd.daemon.doctor import tier_choice, vram_tier_check

    auto = load_settings(tmp_path, env={})
    old_card = vram_tier_check("cuda:0", tier_choice(7 * GiB, AMPERE, auto), auto)
    assert old_card.status == "ok" and old_card.detail.startswith("bf16-streamed: ")
    assert "no FP8 tensor cores" in old_card.detail
    card_24 = vram_tier_check("cuda:0", tier_choice(23 * GiB, ADA, auto), auto)
    assert card_24.status == "ok" and card_24.detail.startswith("fp8-resident: 23.0 GiB free")
    high = load_settings(tmp_path, {"vram": "high"}, env={})
    forced = vram_tier_check("cuda:1", tier_choice(8 * GiB, HOPPER, high), high)
    assert forced.status == "warn" and "run out of memory" in forced.detail and forced.fix
    # Whether a new worker's first job waits for the compiler (engine/compile_ahead.py).
    assert card_24.detail.endswith("; a new worker's first job waits for the compiler "
                                   "(0.0 GiB for it beside the VRAM tier, 4 GiB needed)")  # fmt: skip
    h200 = vram_tier_check("cuda:0", tier_choice(140 * GiB, HOPPER, auto), auto)
    assert h200.detail.startswith("bf16-resident: ")
    assert h200.detail.endswith("; a new worker's first job runs while a helper process compiles (in 68.5 GiB)")
    no_helper = load_settings(tmp_path, {"compile_ahead": False}, env={})
    off = vram_tier_check("cuda:0", tier_choice(140 * GiB, HOPPER, no_helper), no_helper)
    assert off.detail.endswith("; compile_ahead is off: a new worker's first job waits for the compiler")


def test_parked_blocks_give_their_memory_to_the_decode_and_come_back_merged(tiny_root: Path, tmp_path: Path) -> None:
    lora = write_tiny_lora(tmp_path / "a.safetensors", "musubi", seed=1)
    c = load_components(resolve("tiny"), device="cpu")
    place_tier(c, dataclasses.replace(tiny_tier(c, "fp8-streamed", 0.5), park_for_decode=True))
    assert c.parking is not None and c.parking.bytes > 0 and c.accel["parked_gb"] >= 0
    resident = next(b for b in c.transformer.single_transformer_blocks if not c.streamer.streams(b))
    norm = next(resident.norm.parameters())
    base = forward(c)
    c.apply_loras([(lora, 0.8)])
    merged = forward(c)
    assert not torch.equal(base, merged)
    before = norm.data

    def layouts() -> list[tuple[Any, ...]]:
        return [(n, i, t.shape, t.stride(), t.dtype) for n, pair in c.weights.of(resident).fp8.items() for i, t in enumerate(pair)]

    fp8_layouts = layouts()
    with c.room_for_decode():
        assert c.parking.is_parked and norm.data is not before  # the block reads its host copy
        assert torch.equal(forward(c), merged)  # the copies were saved after the merge
        with c.room_for_decode():  # nesting parks once
            pass
        assert c.parking.is_parked
    assert not c.parking.is_parked and norm.data is not before and torch.equal(norm.data, before)
    # Back in the same layout: compiled blocks guard on strides (a (1, n) row scale's are (1, 1)),
    # and another layout would compile them again.
    assert layouts() == fp8_layouts and any(st == (1, 1) for *_, st, _ in fp8_layouts)
    streamed = next(b for b in c.transformer.single_transformer_blocks if c.streamer.streams(b))
    assert [(t.shape, t.stride()) for pair in c.weights.of(streamed).fp8.values() for t in pair] == \
        [(t.shape, t.stride()) for pair in c.weights.of(resident).fp8.values() for t in pair]
    assert torch.equal(forward(c), merged)
    c.apply_loras([])
    assert torch.equal(forward(c), base)
    with c.room_for_decode():
        assert torch.equal(forward(c), base)


def test_a_decode_with_parked_blocks_makes_the_frames_of_one_without(tiny_root: Path) -> None:
    from fploopd.core.assemble import linear_plan
    from fploopd.pipelines.common import decode_with_plan

    latents = torch.randn(1, 16, 7, 8, 8, generator=torch.Generator().manual_seed(3))
    frames, seen = {}, {}
    for park in (False, True):
        c = load_components(resolve("tiny"), device="cpu")
        place_tier(c, dataclasses.replace(tiny_tier(c, "fp8-resident", 1.0), park_for_decode=park))
        assert (c.parking is not None) == park and c.streamer is None
        seen[park] = []
        parking, record = c.parking, seen[park].append
        c.vae.decoder.register_forward_pre_hook(lambda *_, p=parking, r=record: r(p is not None and p.is_parked))
        frames[park] = decode_with_plan(c, latents, linear_plan([3, 4], 2))
        assert c.parking is None or not c.parking.is_parked  # back after the decode
    assert seen[True] and all(seen[True]) and not any(seen[False])
    assert torch.equal(frames[True], frames[False])


def test_a_host_arena_holds_its_copies_in_one_allocation_of_their_own_size() -> None:
    from fploopd.engine.streaming import HostArena

    sources = [torch.randn(3, 5), torch.arange(7, dtype=torch.int8), torch.ones(66, dtype=torch.bfloat16)]
    arena = HostArena(sources, pin=False)
    assert arena.bytes == 3 * HostArena.ALIGN  # each rounded to the alignment, not to a power of two
    assert len({t.untyped_storage().data_ptr() for t in arena.tensors}) == 1
    for host, src in zip(arena.tensors, sources):
        assert host.dtype == src.dtype and torch.equal(host, src) and host.data_ptr() != src.data_ptr()


def test_streamed_and_unparked_weights_are_ordinary_tensors_inside_inference_mode(tiny_root: Path) -> None:
    # Compiled blocks guard on dispatch keys: inference tensors among the weights of some blocks
    # made a second pair of block graphs for them (docs/benchmarks.md, sixth pass).
    c = load_components(resolve("tiny"), device="cpu")
    place_tier(c, dataclasses.replace(tiny_tier(c, "fp8-streamed", 0.5), park_for_decode=True))
    blocks = list(c.transformer.transformer_blocks)
    assert any(c.streamer.streams(b) for b in blocks) and not all(c.streamer.streams(b) for b in blocks)
    seen: list[tuple[bool, Any]] = []

    def run(block: torch.nn.Module, state: None) -> None:
        w8 = c.weights.of(block).fp8["ff.net.2"][0]
        seen.append((w8.is_inference(), str(torch._C._dispatch_keys(w8))))

    with torch.inference_mode():
        c.streamer.run(blocks, run, None)
        with c.room_for_decode():
            pass
    assert len(seen) == len(blocks) and len(set(seen)) == 1 and not seen[0][0]
    assert not any(t.is_inference() for b in blocks for pair in c.weights.of(b).fp8.values() for t in pair)
    assert not any(p.is_inference() for p in blocks[0].parameters())


def test_streamed_and_parked_blocks_run_the_resident_blocks_compiled_graphs(tiny_root: Path) -> None:
    """The real guard check: one compiled graph per block kind serves resident, streamed and
    unparked blocks, job after job (inductor's C++ backend on the CPU)."""
    import torch._dynamo

    from fploopd.bench.e2e import compile_counters

    c = load_components(resolve("tiny"), device="cpu")
    place_tier(c, dataclasses.replace(tiny_tier(c, "fp8-streamed", 0.5), park_for_decode=True))
    c.runner_options = c.runner_options.replace(compile=True)
    torch._dynamo.reset()
    try:
        before = compile_counters()["unique_graphs"]
        outs = []
        for _ in range(3):  # a forward, then the decode's parking, as jobs go
            outs.append(forward(c))
            with c.room_for_decode():
                pass
        assert compile_counters()["unique_graphs"] - before == 2  # one double-block and one single-block graph
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])
    finally:
        torch._dynamo.reset()
