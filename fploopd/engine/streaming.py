"""The transformer's blocks outside the ``bf16-resident`` tier (``tiers``): FP8 copies of their
linears made block by block on the GPU, and blocks that stream from pinned host memory one block
ahead of use on a side stream (``BlockStreamer``, the runner's ``offloader``), and the resident
blocks' pinned host copies that let a tight tier hand their memory to the VAE decode
(``BlockParking``).

``place_blocks`` lays the blocks out for a tier: each block either stays on the GPU or streams; with
FP8 its linears' bf16 weights stay on the host (the master copies that LoRA merges write into) and
their e4m3 copies, in ``weights.PreparedWeights``, are what stays or streams. Everything else of the
transformer (embedders, refiner, output: about 0.8 GB at full size) is on the GPU.

On the CPU the same code runs without a side stream or pinned memory, so that the layouts are
tested without a GPU.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from loguru import logger
from torch import Tensor, nn

from fploopd.engine.fp8 import Fp8Weight, block_fp8_linears, quantize_weight
from fploopd.engine.tiers import spread
from fploopd.engine.weights import STACKS, BlockWeights, PreparedWeights


@dataclass
class _Slot:
    """One tensor a streamed block needs on the GPU while it runs: its host copy and how to put a
    tensor (the GPU copy, or the host copy back) where the block function reads it."""

    host: Tensor
    assign: Callable[[Tensor], None]
    current: Callable[[], Tensor]  # what the block reads now


class BlockStreamer:
    """Copies each streamed block's tensors to the GPU on a side stream ``prefetch`` streamed blocks
    ahead of its use; a block's GPU copies are released as soon as it has run. At most
    ``prefetch + 2`` streamed blocks are on the GPU at once (~0.7 GB each in bf16 at full size, 0.45 GB
    with FP8 linears). Blocks never ``add``-ed stay where they are (resident) and are run in place."""

    def __init__(self, device: torch.device | str, prefetch: int = 2) -> None:
        self.device = torch.device(device)
        self.prefetch = max(1, prefetch)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._slots: dict[int, list[_Slot]] = {}
        self._fp8: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}  # host FP8 copies by block and linear
        self.bytes_per_pass = 0

    def streams(self, block: nn.Module) -> bool:
        return id(block) in self._slots

    @property
    def blocks(self) -> int:
        return len(self._slots)

    def add(self, block: nn.Module, tensors: Sequence[Tensor], fp8: dict[str, Fp8Weight] | None = None) -> None:
        """Stream ``block``: ``tensors`` (its parameters and buffers that the block functions read)
        and its FP8 weights ``fp8`` (a ``BlockWeights.fp8``, updated in place) move to pinned host
        memory (one ``HostArena`` per block) and come to the GPU only while the block runs."""
        fp8 = fp8 if fp8 is not None else {}
        slots = _host_slots(tensors, fp8, pin=self.device.type == "cuda")
        fp8_hosts = iter(slot.host for slot in slots[len(tensors) :])  # each linear's (weight, scale) in turn
        for slot in slots:
            slot.assign(slot.host)
        self._slots[id(block)] = slots
        self._fp8[id(block)] = {name: (next(fp8_hosts), next(fp8_hosts)) for name in fp8}
        self.bytes_per_pass += sum(s.host.numel() * s.host.element_size() for s in slots)

    def update_fp8(self, block: nn.Module, name: str, q: Fp8Weight) -> None:
        """New FP8 values for a streamed block's linear (after a LoRA merge), written into its host copy."""
        hw, hs = self._fp8[id(block)][name]
        hw.copy_(q[0])
        hs.copy_(q[1])

    def _load(self, block: nn.Module) -> torch.cuda.Event | None:
        # Ordinary tensors even inside the forward's inference mode, like the resident blocks'
        # weights: compiled blocks guard on the dispatch keys, and inference tensors made a second
        # pair of block graphs for the streamed blocks.
        with torch.inference_mode(False):
            return self._copy_in(block)

    def _copy_in(self, block: nn.Module) -> torch.cuda.Event | None:
        if self.stream is None:  # CPU: a plain copy, nothing to overlap
            for slot in self._slots[id(block)]:
                slot.assign(slot.host.clone())
            return None
        with torch.cuda.stream(self.stream):
            for slot in self._slots[id(block)]:
                slot.assign(slot.host.to(self.device, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def _release(self, block: nn.Module, gpu: list[Tensor], compute: torch.cuda.Stream | None) -> None:
        if compute is not None:
            for t in gpu:
                t.record_stream(compute)  # memory returns to the pool only once compute is past it
        for slot in self._slots[id(block)]:
            slot.assign(slot.host)

    def run(self, blocks: Sequence[nn.Module], fn: Callable[[nn.Module, Any], Any], state: Any) -> Any:
        cuda = self.stream is not None
        compute = torch.cuda.current_stream(self.device) if cuda else None
        upcoming = deque(i for i, b in enumerate(blocks) if self.streams(b))
        ready: dict[int, torch.cuda.Event | None] = {}
        done: deque[torch.cuda.Event] = deque()
        for i, block in enumerate(blocks):
            # Keep the copy stream ``prefetch`` streamed blocks ahead, across resident ones.
            while upcoming and len(ready) <= self.prefetch:
                j = upcoming.popleft()
                ready[j] = self._load(blocks[j])
            if not self.streams(block):
                state = fn(block, state)
                continue
            event = ready.pop(i)
            if compute is not None and event is not None:
                compute.wait_event(event)
            gpu = [slot.current() for slot in self._slots[id(block)]]  # tied to compute on release
            state = fn(block, state)
            if compute is not None:
                finished = torch.cuda.Event()
                finished.record(compute)
                done.append(finished)
            self._release(block, gpu, compute)
            if len(done) > self.prefetch:
                done.popleft().synchronize()  # back-pressure: keep the host from running ahead
        return state

    def restore(self) -> None:
        """Put every streamed block back on the GPU for good (leaving a streamed tier)."""
        for slots in self._slots.values():
            for slot in slots:
                slot.assign(slot.host.to(self.device))
        self._slots.clear()
        self._fp8.clear()


class BlockParking:
    """Pinned host copies of the resident blocks' GPU tensors, so that the phase that needs the most
    memory besides sampling, the VAE decode, can have theirs: inside ``parked()`` the blocks read
    their host copies and their GPU memory is free; after it one host-to-device pass of ``bytes``
    (about 0.3 s for the full-size FP8 blocks at 55 GB/s, 0.65 s over a desktop's PCIe 4.0) brings
    them back. Costs ``bytes`` of pinned host memory for as long as the tier lasts (the tier is
    chosen only where the host has that to spare: ``tiers.choose_tier``'s ``host_free``)."""

    def __init__(self, device: torch.device | str, blocks: Sequence[tuple[Sequence[Tensor], dict[str, Fp8Weight]]]) -> None:
        """``blocks``: per resident block, the tensors it reads on the GPU (parameters, buffers)
        and its FP8 weights (a ``BlockWeights.fp8``, whose entries are replaced when parked)."""
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        self._slots = [slot for tensors, fp8 in blocks for slot in _host_slots(tensors, fp8, pin=pin)]
        self.bytes = sum(_span(s.host) * s.host.element_size() for s in self._slots)
        self.is_parked = False

    def save(self) -> None:
        """Copy the GPU tensors into their host copies again (after a LoRA merge rewrote them)."""
        assert not self.is_parked, "save() while parked would copy the host copies onto themselves"
        for slot in self._slots:
            slot.host.copy_(slot.current())

    @contextlib.contextmanager
    def parked(self) -> Iterator[None]:
        """The blocks on their host copies (GPU memory released) inside; back on the GPU after."""
        if self.is_parked or not self._slots:
            yield
            return
        for slot in self._slots:
            slot.assign(slot.host)
        self.is_parked = True
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            yield
        finally:
            with torch.inference_mode(False):  # ordinary tensors, as they were (see BlockStreamer._load)
                self._unpark()
            self.is_parked = False

    def _unpark(self) -> None:
        for slot in self._slots:
            # A clone on the CPU: the block must never share storage with its host copy.
            slot.assign(slot.host.to(self.device, non_blocking=True) if self.device.type == "cuda" else slot.host.clone())


class HostArena:
    """Host copies of many tensors in one allocation, page-locked in place for a GPU
    (``cudaHostRegister``). torch's pinned allocator rounds each tensor up to a power of two, up to
    1.9x the bytes of these weights (a single block's 66 MB linear takes 128 MB); one registered
    allocation takes what the tensors take."""

    ALIGN = 512  # bytes: every dtype's alignment, and the copy engines'

    def __init__(self, tensors: Sequence[Tensor], *, pin: bool) -> None:
        sizes = [_span(t) * t.element_size() for t in tensors]
        starts, total = [], 0
        for size in sizes:
            starts.append(total)
            total += -(-size // self.ALIGN) * self.ALIGN
        self._memory = torch.empty(total, dtype=torch.uint8)
        self.bytes = total
        if pin and total > 0:
            _register(self._memory)
        # Each copy keeps its tensor's strides: compiled graphs guard on them (a row-scale tensor's
        # are not the contiguous ones), so a copy in another layout would compile them again.
        self.tensors = [self._memory[start : start + size].view(t.dtype).as_strided(t.shape, t.stride())
                        for t, start, size in zip(tensors, starts, sizes)]  # fmt: skip
        for host, t in zip(self.tensors, tensors):
            host.copy_(t)


def _span(t: Tensor) -> int:
    """Elements from a tensor's first to its last, as its strides lay them out."""
    return 0 if t.numel() == 0 else 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))


_REFUSED: list[int] = []  # page-locking refused in this process (warned once)


def _register(memory: Tensor) -> None:
    """Page-lock ``memory`` for fast asynchronous copies; unlocked when it is freed. Where the driver
    refuses (e.g. past the locked-memory limit) it stays pageable: a warning, slower copies."""
    cudart = torch.cuda.cudart()
    ptr = memory.data_ptr()
    err = cudart.cudaHostRegister(ptr, memory.numel(), 0)
    if int(err) != 0:
        if not _REFUSED:
            logger.warning("could not page-lock {:.2f} GB of host memory (CUDA error {}): host copies stay pageable, "
                           "and copies to the GPU are slower", memory.numel() / 1e9, int(err))
        _REFUSED.append(int(err))
        return
    weakref.finalize(memory.untyped_storage(), cudart.cudaHostUnregister, ptr)


def _host_slots(tensors: Sequence[Tensor], fp8: dict[str, Fp8Weight], *, pin: bool) -> list[_Slot]:
    """Slots for a block's ``tensors``, then for each FP8 linear's weight and scale in turn, their
    host copies in one ``HostArena``."""
    accesses = [_param_access(t) for t in tensors] + [_fp8_access(fp8, name, i) for name in fp8 for i in (0, 1)]
    arena = HostArena([current() for _, current in accesses], pin=pin)
    return [_Slot(host, assign, current) for host, (assign, current) in zip(arena.tensors, accesses)]


def _param_access(t: Tensor) -> tuple[Callable[[Tensor], None], Callable[[], Tensor]]:
    def assign(value: Tensor) -> None:
        t.data = value

    return assign, lambda: t.data


def _fp8_access(fp8: dict[str, Fp8Weight], name: str, index: int) -> tuple[Callable[[Tensor], None], Callable[[], Tensor]]:
    def assign(value: Tensor) -> None:
        pair = list(fp8[name])
        pair[index] = value
        fp8[name] = (pair[0], pair[1])

    return assign, lambda: fp8[name][index]


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _stacks(transformer: nn.Module) -> list[nn.ModuleList]:
    return [getattr(transformer, s) for s in STACKS]


@torch.no_grad()
def place_blocks(
    transformer: nn.Module,
    device: torch.device | str,
    *,
    weights: PreparedWeights,
    fp8_granularity: str | None,
    resident: tuple[int, int],
    prefetch: int = 2,
) -> BlockStreamer | None:
    """Lay the blocks out for a tier: ``resident`` (double, single) blocks stay on ``device``,
    spread evenly through each stack, the rest stream; ``fp8_granularity`` (None: bf16): FP8
    copies of the linears are made on ``device`` block by block (a full bf16 transformer need never
    fit) and their bf16 weights go to (or stay in) host memory. Returns the streamer, or None when
    every block stays. The rest of the transformer moves to ``device``."""
    device = torch.device(device)
    t0 = time.perf_counter()
    weights.unfuse()  # fused projections would stay resident beside the streamed blocks
    weights.remove_fp8()
    stacks = _stacks(transformer)
    masks = [spread(resident[0], len(stacks[0])), spread(resident[1], len(stacks[1]))]
    streamer = BlockStreamer(device, prefetch) if not all(all(m) for m in masks) else None
    for stack, mask in zip(stacks, masks):
        for block, keep in zip(stack, mask):
            _place_block(block, weights.of(block), device, fp8_granularity, None if keep else streamer)
    weights.fp8_granularity = fp8_granularity
    for name, child in transformer.named_children():
        if name not in STACKS:
            child.to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    kept = sum(sum(m) for m in masks)
    logger.info(
        "transformer blocks: {} of {} on the GPU{}, {}{} ({:.1f} s)",
        kept, sum(len(m) for m in masks), f", {streamer.blocks} streamed" if streamer else "",
        f"FP8 ({fp8_granularity}) linears" if fp8_granularity else "bf16",
        f", {streamer.bytes_per_pass / 1e9:.1f} GB per forward from pinned host memory" if streamer else "",
        time.perf_counter() - t0,
    )
    return streamer


def _place_block(
    block: nn.Module, bw: BlockWeights, device: torch.device, granularity: str | None, streamer: BlockStreamer | None
) -> None:
    if granularity is not None:
        for name, lin in block_fp8_linears(block):
            host = lin.weight.data if lin.weight.device.type == "cpu" else lin.weight.data.to("cpu")
            bw.fp8[name] = quantize_weight(lin.weight.data.to(device), granularity)
            lin.weight.data = host  # the bf16 master: LoRA merges write here, FP8 is made from it
    rest = _gpu_tensors(block, fp8=granularity is not None)
    if streamer is None:
        for t in rest:
            t.data = t.data.to(device)
    else:
        streamer.add(block, rest, bw.fp8 if granularity is not None else None)


def _gpu_tensors(block: nn.Module, *, fp8: bool) -> list[Tensor]:
    """The parameters and buffers ``block`` reads on the GPU: with ``fp8``, all but its FP8
    linears' bf16 weights (the masters, which stay on the host)."""
    masters = {id(lin.weight) for _, lin in block_fp8_linears(block)} if fp8 else set()
    return [t for t in _tensors(block) if id(t) not in masters]


@torch.no_grad()
def park_resident(transformer: nn.Module, device: torch.device | str, weights: PreparedWeights,
                  streamer: BlockStreamer | None) -> BlockParking:
    """Host copies of every block that ``streamer`` does not stream (their FP8 weights and the
    tensors they read on the GPU; the bf16 masters of FP8 linears are on the host already)."""
    t0 = time.perf_counter()
    blocks = []
    for stack in _stacks(transformer):
        for block in stack:
            if streamer is not None and streamer.streams(block):
                continue
            fp8 = weights.of(block).fp8
            blocks.append((_gpu_tensors(block, fp8=bool(fp8)), fp8))
    parking = BlockParking(device, blocks)
    logger.info("resident blocks parked in pinned host memory during the VAE decode: {:.1f} GB ({:.1f} s)",
                parking.bytes / 1e9, time.perf_counter() - t0)
    return parking


@torch.no_grad()
def refresh_fp8(transformer: nn.Module, device: torch.device | str, weights: PreparedWeights,
                streamer: BlockStreamer | None) -> None:
    """FP8 copies made again from the host bf16 masters (after a LoRA merge rewrote them), into
    the same places: resident blocks' on the GPU, streamed blocks' host copies in place."""
    granularity = weights.fp8_granularity
    if granularity is None:
        return
    device = torch.device(device)
    for stack in _stacks(transformer):
        for block in stack:
            bw = weights.of(block)
            for name, lin in block_fp8_linears(block):
                q = quantize_weight(lin.weight.data.to(device), granularity)
                if streamer is not None and streamer.streams(block):
                    streamer.update_fp8(block, name, q)
                else:
                    bw.fp8[name] = q


def enable_low_vram(
    transformer: nn.Module, device: torch.device | str, prefetch: int = 2, weights: PreparedWeights | None = None
) -> BlockStreamer:
    """Every block streamed in bf16 (the ``bf16-streamed`` tier with no block kept): the former
    low-VRAM mode, kept for the bench's ``lowvram`` stage."""
    streamer = place_blocks(transformer, device, weights=weights or PreparedWeights(transformer),
                            fp8_granularity=None, resident=(0, 0), prefetch=prefetch)
    assert streamer is not None
    return streamer


__all__ = ["BlockParking", "BlockStreamer", "HostArena", "enable_low_vram", "park_resident", "place_blocks", "refresh_fp8"]
