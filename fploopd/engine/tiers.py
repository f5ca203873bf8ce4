"""VRAM tiers: where the models live on a GPU of a given size, chosen from its free memory.

Fastest first:

- ``bf16-resident``: every model on the GPU in its run dtype (about 61 GB free needed at full size);
- ``fp8-resident``: the transformer's block linears as FP8 (e4m3) copies on the GPU, their bf16
  weights on the host; the text encoders and SigLIP visit the GPU only to encode (the 8B Llama
  streamed layer by layer), the VAE only to decode (compiled, in strips of one shape unless there
  is room for whole frames: ``vae_tiles``). Where the host has memory to spare, the blocks leave
  the GPU for the decode (``park_for_decode``: pinned host copies, one copy back after it), so that
  it has the room of whole frames, or of fewer strips;
- ``fp8-streamed``: as ``fp8-resident``, but only as many FP8 blocks as fit stay on the GPU, spread
  evenly through the stack; the others stream from pinned host memory one block ahead of use;
- ``bf16-streamed``: the same with bf16 blocks (cards without FP8 tensor cores: before Ada).

A pure function of the free bytes, the compute capability and the user's request (``auto``, a tier,
or a GiB budget), so that it is tested on the CPU and the worker, ``fploopd doctor`` and the bench
all say the same. No torch import here: the supervisor and ``doctor`` read it without a GPU.
FP8 moves outputs beyond bf16 rounding (docs/perf-notes.md: about 0.08 max abs deviation of a
25-step section's latents, against 0.07 between two bf16 kernels); the streamed tiers compute
exactly what the resident tier of the same dtype computes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

GB = 10**9
GiB = 2**30
MiB = 2**20

TIERS = ("bf16-resident", "fp8-resident", "fp8-streamed", "bf16-streamed")
ALIASES = {"high": "bf16-resident", "low": "bf16-streamed"}  # the two modes before tiers
FP8_TIERS = ("fp8-resident", "fp8-streamed")
STREAMED_TIERS = ("fp8-streamed", "bf16-streamed")
FP8_CAPABILITY = (8, 9)  # Ada, Hopper, Blackwell: FP8 tensor cores
# Free memory kept back from the choice: other programs on a desktop card, the CUDA context's
# growth, allocator fragmentation.
MARGIN_FRACTION = 0.06
MARGIN_MIN = 384 * MiB
# Everything resident needs the weights plus room for activations and an untiled compiled VAE
# decode: FramePack's own "more than 60 GB free" rule, 1.4x the full-size weights.
HIGH_VRAM_FACTOR = 1.4
# Streamed blocks on the GPU at once: ``prefetch`` ahead, the one running, the one being released.
STREAM_PREFETCH = 2
STREAM_IN_FLIGHT = STREAM_PREFETCH + 2
# Parking the resident blocks for the decode (pinned host copies) pays when it gives the decode at
# least this much more room (fewer strips), and leaves this much host memory to everything else.
PARK_GAIN = 1.5
HOST_MARGIN = 4 * GiB
MAX_BUDGET_GIB = 4096


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of what a tier places, for one model set at its run dtypes."""

    double_bf16: int  # one double-stream block in bf16
    double_fp8: int  # the same block with its linears (all but the modulation) in e4m3
    doubles: int  # how many
    single_bf16: int
    single_fp8: int
    singles: int
    transformer_rest: int  # embedders, token refiner, output: always on the GPU
    text_encoder: int  # the Llama (streamed layer by layer outside bf16-resident)
    text_encoder_visit: int  # its largest group on the GPU at once (the embedding table)
    small_encoders: int  # CLIP text + SigLIP, moved in whole to encode
    vae: int
    work: int  # activations of a section at the 640 bucket (beside the streamed blocks in flight)
    decode_work: int  # the stock tiled VAE decode of a 640 section (the VAE itself aside)
    untiled_decode: int  # extra for the compiled untiled VAE decode

    def blocks(self, fp8: bool) -> int:
        d, s = (self.double_fp8, self.single_fp8) if fp8 else (self.double_bf16, self.single_bf16)
        return self.doubles * d + self.singles * s

    @property
    def resident_bytes(self) -> int:
        """Every model resident at its run dtype (``bf16-resident``)."""
        return self.blocks(False) + self.transformer_rest + self.text_encoder + self.small_encoders + self.vae

    def visiting(self, in_flight: int = 0) -> int:
        """On the GPU besides the resident blocks outside ``bf16-resident``: the transformer's rest
        and the largest phase: a Llama group, CLIP + SigLIP, sampling (``in_flight`` streamed blocks
        and the activations) or the tiled decode (the VAE and its working memory)."""
        phases = (self.text_encoder_visit, self.small_encoders, in_flight + self.work, self.vae + self.decode_work)
        return self.transformer_rest + max(phases)


# FramePack's full-size set (counted on the meta device, tests/test_tiers.py checks it): HunyuanVideo
# transformer 13B (20 double + 40 single blocks), Llama 3 8B fp16, CLIP-L, SigLIP so400m, VAE fp16.
FULL_SIZE = ModelSizes(
    double_bf16=679_662_592,
    double_fp8=453_170_176,
    doubles=20,
    single_bf16=283_183_616,
    single_fp8=169_937_408,
    singles=40,
    transformer_rest=828_033_152,
    text_encoder=16 * GB,
    text_encoder_visit=int(1.1 * GB),  # embed_tokens: 128,320 x 4,096 fp16
    small_encoders=int(0.9 * GB) + int(0.25 * GB),
    vae=int(0.5 * GB),
    work=int(1.5 * GiB),  # the low mode peaked at 5.07 GiB with 3.6 GB of it weights (docs/benchmarks.md)
    # Measured on an H100 (docs/bench-h100-tiers-*.json): peaks 3.8-4.3 GiB above the resident
    # weights at 24 and 16 GiB, the decode's phase; a 12 GiB budget planned without it ran out.
    decode_work=4 * GiB,
    untiled_decode=10 * GiB,
)


@dataclass(frozen=True)
class VramRequest:
    """What the user asked for: ``auto``, one tier, or a budget in bytes (``auto`` within it)."""

    tier: str | None = None
    budget: int | None = None

    @property
    def text(self) -> str:
        if self.tier:
            return self.tier
        return f"{self.budget / GiB:g}GiB" if self.budget else "auto"


_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gib|gb|g)?\s*$", re.IGNORECASE)


def parse_vram(value: object) -> VramRequest:
    """``auto``, a tier name, ``high``/``low`` (the former modes), or a GiB budget (``12``,
    ``"12"``, ``"12GiB"``). Raises ValueError with the accepted forms."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _budget(float(value), value)
    text = str(value).strip().lower()
    if text == "auto":
        return VramRequest()
    if text in ALIASES:
        return VramRequest(tier=ALIASES[text])
    if text in TIERS:
        return VramRequest(tier=text)
    match = _BUDGET.match(text)
    if match:
        return _budget(float(match.group(1)), value)
    raise ValueError(_vram_help(value))


def normalize_vram(value: object) -> str:
    """The setting's canonical text (``"auto"``, a tier name, ``"12GiB"``), or ValueError."""
    return parse_vram(value).text


def _budget(gib: float, raw: object) -> VramRequest:
    if not (0 < gib <= MAX_BUDGET_GIB) or not math.isfinite(gib):
        raise ValueError(f"a vram budget is a number of GiB between 0 and {MAX_BUDGET_GIB}, not {raw!r}")
    return VramRequest(budget=int(gib * GiB))


def _vram_help(value: object) -> str:
    return (f"vram must be auto, one of {', '.join(TIERS)} (or high / low), or a budget in GiB such as 12, "
            f"not {value!r}")


@dataclass(frozen=True)
class TierChoice:
    """A tier and how it is laid out: which blocks stay on the GPU, and why it was chosen."""

    tier: str
    reason: str
    usable: int  # bytes the choice planned with (free or budget, less the margin)
    need: int  # bytes the tier needs at the least (streamed: with no block resident)
    resident_doubles: int = 0  # streamed tiers: blocks kept on the GPU (the rest stream)
    resident_singles: int = 0
    untiled_decode: bool = True  # room for the untiled VAE decode (else in strips; compiled either way on a GPU)
    vae_resident: bool = True  # the VAE (0.5 GB) stays on the GPU (else it visits to encode and decode)
    decode_room: int = FULL_SIZE.decode_work  # bytes a decode in strips may use (vae_tiles sizes the strips)
    park_for_decode: bool = False  # the resident blocks leave the GPU for the decode (pinned host copies)
    spare: int = 0  # bytes left over beside the tier's own plan (a compile helper may use them)

    @property
    def fp8(self) -> bool:
        return self.tier in FP8_TIERS

    @property
    def streamed(self) -> bool:
        return self.tier in STREAMED_TIERS

    @property
    def resident_everything(self) -> bool:
        return self.tier == "bf16-resident"

    def summary(self) -> str:
        return f"{self.tier}: {self.reason}"


def margin(free: int) -> int:
    return max(MARGIN_MIN, int(free * MARGIN_FRACTION))


def need_bytes(tier: str, sizes: ModelSizes) -> int:
    """The least memory ``tier`` runs in (streamed tiers: no block resident)."""
    if tier == "bf16-resident":
        return int(sizes.resident_bytes * HIGH_VRAM_FACTOR)
    fp8 = tier in FP8_TIERS
    if tier == "fp8-resident":
        return sizes.blocks(True) + sizes.visiting()
    largest = max(sizes.double_fp8, sizes.single_fp8) if fp8 else max(sizes.double_bf16, sizes.single_bf16)
    return sizes.visiting(STREAM_IN_FLIGHT * largest)


def choose_tier(
    free: int,
    capability: tuple[int, int] | None,
    request: VramRequest | str = "auto",
    sizes: ModelSizes = FULL_SIZE,
    *,
    prefer_fp8: bool = False,
    host_free: int | None = None,
) -> TierChoice:
    """The fastest tier that fits ``free`` bytes (or the request's budget, if smaller) with a
    margin; a named tier as asked, laid out for that memory. ``capability``: the GPU's (major,
    minor), None for no GPU. ``prefer_fp8`` (the ``fp8`` setting): FP8 also where bf16 would fit.
    ``host_free``: host memory available now (None: unknown), for pinned copies of parked blocks."""
    if isinstance(request, str):
        request = parse_vram(request)
    has_fp8 = capability is not None and tuple(capability) >= FP8_CAPABILITY
    room = free if request.budget is None else min(free, request.budget)
    usable = max(0, room - margin(room))
    where = (f"{_gib(free)} free" if request.budget is None or request.budget >= free
             else f"a {_gib(request.budget)} budget ({_gib(free)} free)")
    notes: list[str] = []
    if request.tier is not None:
        tier = request.tier
        if tier in FP8_TIERS and not has_fp8:
            fallback = "bf16-resident" if tier == "fp8-resident" and usable >= need_bytes("bf16-resident", sizes) else "bf16-streamed"
            notes.append(f"{tier} asked for, but {_cap(capability)} has no FP8 tensor cores (compute capability "
                         f"8.9 or newer): {fallback} instead")
            tier = fallback
        else:
            notes.append("asked for in the vram setting")
        if usable < need_bytes(tier, sizes) and not tier.endswith("streamed"):
            notes.append(f"it needs about {_gib(need_bytes(tier, sizes))} and {where} leaves {_gib(usable)}: "
                         "it may run out of memory")
        return _layout(tier, sizes, usable, f"{where}; " + "; ".join(notes), host_free, upgrade=False)
    order = ["bf16-resident", "fp8-resident", "fp8-streamed", "bf16-streamed"]
    if prefer_fp8 and has_fp8:
        order.remove("bf16-resident")
        order.insert(1, "bf16-resident")
    if not has_fp8:
        order = [t for t in order if t not in FP8_TIERS]
        notes.append(f"{_cap(capability)} has no FP8 tensor cores (compute capability 8.9 or newer): no FP8 tiers")
    for tier in order:
        need = need_bytes(tier, sizes)
        if usable >= need or tier == order[-1]:
            skipped = [t for t in order[: order.index(tier)]]
            why = f"{where}, {_gib(usable)} usable after a {_gib(margin(room))} margin"
            if skipped:
                why += "; " + ", ".join(f"{t} needs {_gib(need_bytes(t, sizes))}" for t in skipped)
            if usable < need:
                why += f"; even {tier} needs about {_gib(need)}: it may run out of memory"
            return _layout(tier, sizes, usable, "; ".join([why, *notes]), host_free)
    raise AssertionError("unreachable")


def _layout(tier: str, sizes: ModelSizes, usable: int, reason: str, host_free: int | None = None, *,
            upgrade: bool = True) -> TierChoice:
    """``tier`` laid out in ``usable`` bytes; ``upgrade``: fp8-streamed with every block kept is
    fp8-resident (a named tier keeps its name). ``host_free``: see ``choose_tier``."""
    need = need_bytes(tier, sizes)
    if tier == "bf16-resident":
        return TierChoice(tier, reason, usable, need, sizes.doubles, sizes.singles, untiled_decode=True,
                          spare=max(0, usable - need))
    spare = usable - need
    fp8 = tier in FP8_TIERS
    if tier == "fp8-resident":
        vae_resident = spare >= sizes.vae
        room = sizes.decode_work + max(0, spare - (sizes.vae if vae_resident else 0))
        untiled = spare >= sizes.untiled_decode
        left = spare - (sizes.vae if vae_resident else 0) - sizes.untiled_decode if untiled else 0
        choice = TierChoice(tier, reason, usable, need, sizes.doubles, sizes.singles, untiled_decode=untiled,
                            vae_resident=vae_resident, decode_room=room, spare=max(0, left))
        return choice if untiled else _with_parking(choice, sizes, sizes.blocks(True), host_free)
    d_bytes, s_bytes = (sizes.double_fp8, sizes.single_fp8) if fp8 else (sizes.double_bf16, sizes.single_bf16)
    doubles, singles = resident_blocks(max(0, spare), d_bytes, sizes.doubles, s_bytes, sizes.singles)
    if doubles == sizes.doubles and singles == sizes.singles and fp8 and upgrade:
        return _layout("fp8-resident", sizes, usable, reason, host_free)
    kept = f"{doubles}/{sizes.doubles} double and {singles}/{sizes.singles} single blocks stay on the GPU"
    choice = TierChoice(tier, f"{reason}; {kept}", usable, need, doubles, singles, untiled_decode=False,
                        vae_resident=False, decode_room=sizes.decode_work)
    return _with_parking(choice, sizes, doubles * d_bytes + singles * s_bytes, host_free)


def _with_parking(choice: TierChoice, sizes: ModelSizes, resident: int, host_free: int | None) -> TierChoice:
    """``choice`` with its ``resident`` bytes of blocks parked on the host for the decode, where
    that gives the decode ``PARK_GAIN`` times the room and the host can pin them."""
    if host_free is None or resident <= 0:
        return choice
    room = choice.usable - sizes.transformer_rest - sizes.vae  # all a decode needs besides its work
    if room < PARK_GAIN * choice.decode_room:
        return choice
    if host_free < resident + HOST_MARGIN:
        return dataclasses.replace(choice, reason=(
            f"{choice.reason}; the decode in strips: parking the blocks for it needs {_gib(resident)} of pinned "
            f"host memory and {_gib(HOST_MARGIN)} left over, {_gib(host_free)} is free"))
    untiled = room >= sizes.decode_work + sizes.untiled_decode
    decode = "whole frames" if untiled else f"strips in {_gib(room)}"
    return dataclasses.replace(
        choice, park_for_decode=True, untiled_decode=untiled, decode_room=room,
        reason=f"{choice.reason}; the blocks ({_gib(resident)}) wait in pinned host memory during the decode: {decode}")


def host_bytes(choice: TierChoice, sizes: ModelSizes = FULL_SIZE) -> int:
    """Host memory one worker's models take in ``choice``: the larger of loading (every model is
    read into host memory before it is placed) and the placed layout (FP8 linears' bf16 masters,
    streamed and parked blocks, the encoders that visit the GPU)."""
    if choice.tier == "bf16-resident":
        return sizes.resident_bytes
    fp8 = choice.fp8
    double, single = (sizes.double_fp8, sizes.single_fp8) if fp8 else (sizes.double_bf16, sizes.single_bf16)
    kept = choice.resident_doubles * double + choice.resident_singles * single
    pinned = sizes.blocks(fp8) - kept + (kept if choice.park_for_decode else 0)
    masters = 2 * (sizes.blocks(False) - sizes.blocks(True)) if fp8 else 0  # bf16 linears: twice their FP8 bytes
    visiting = sizes.text_encoder + sizes.small_encoders + (0 if choice.vae_resident else sizes.vae)
    return max(sizes.resident_bytes, masters + pinned + visiting)


def resident_blocks(spare: int, double: int, doubles: int, single: int, singles: int) -> tuple[int, int]:
    """How many blocks of each stack fit in ``spare`` bytes, the same fraction of each stack (so
    that streamed blocks are spread through the whole forward and their copies overlap compute)."""
    total = doubles * double + singles * single
    if total <= 0:
        return doubles, singles
    fraction = min(1.0, spare / total)
    d = min(doubles, int(fraction * doubles))
    s = min(singles, int((spare - d * double) // single)) if single else singles
    return d, max(0, min(singles, s))


def spread(kept: int, count: int) -> list[bool]:
    """``kept`` of ``count`` positions marked, spread evenly (a streamed block always has resident
    ones around it where possible)."""
    if kept <= 0:
        return [False] * count
    return [(i + 1) * kept // count > i * kept // count for i in range(count)]


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _cap(capability: tuple[int, int] | None) -> str:
    return "no CUDA GPU" if capability is None else f"this GPU (compute capability {capability[0]}.{capability[1]})"


__all__ = [
    "ALIASES",
    "FP8_TIERS",
    "FULL_SIZE",
    "HOST_MARGIN",
    "STREAMED_TIERS",
    "TIERS",
    "ModelSizes",
    "TierChoice",
    "VramRequest",
    "choose_tier",
    "host_bytes",
    "need_bytes",
    "normalize_vram",
    "parse_vram",
    "resident_blocks",
    "spread",
]
