"""One transformer forward on several devices: Ulysses sequence (context) parallel attention.

P ranks of a ``torch.distributed`` group (NCCL on CUDA, gloo on the CPU) each hold the whole
transformer. The latent stream (history + window, about 18,400 tokens at 640) is cut into P
contiguous shards of ``shard_sizes`` (uneven allowed, nothing padded into attention); the
conditioning tokens (image + text, about 769) stay whole on every rank (4% duplicated work).
Everything per token (the rope tables, the blocks' norms, GEMMs and MLPs) runs on the rank's shard;
modulation (``temb``) is per sample. Around each attention (``UlyssesAttention``):

1. one all-to-all turns the shard's latent q/k/v [n_r tokens, H heads] into [all N tokens, H/P heads];
2. the rank takes its H/P heads of the conditioning q/k/v and attends over N + M tokens;
3. one all-to-all sends each rank its latent tokens back with all H heads, and, appended to each
   rank's part, this rank's heads of the conditioning output (every rank's conditioning stream
   goes on whole).

The communication sits inside the opaque ``attention.attention_op`` (a registered kernel whose
``run`` is a ``UlyssesAttention``), so the compiled block functions are unchanged: they see a kernel
name. After the blocks the shards' hidden states are gathered (``gather_tokens``), so TeaCache and
the output head run on the whole sequence exactly as on one device (the gather is about 113 MB of
bf16 a forward at 640: well under a millisecond over NVLink).

Driving it: rank 0 (the leader) runs jobs as a one-device worker does; its runner sends each
``reset`` and each forward's inputs to the followers (a header over a pipe, then the tensors by
broadcast), which run ``ContextParallelRunner.serve`` until told to stop. Headers go over pipes, not
collectives, so a follower can wait for hours between jobs without a collective timing out.
TeaCache: the skip decision is made on the leader and broadcast (one scalar a forward), so every
rank takes the same path through the collectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fploopd.engine.attention import KERNELS, AttentionKernel, get_kernel, register
from fploopd.engine.forward import BranchState, SectionConstants, TransformerRunner
from fploopd.engine.options import RunnerOptions
from fploopd.engine.weights import PreparedWeights


def shard_sizes(tokens: int, parts: int) -> list[int]:
    """Contiguous shard lengths of ``tokens`` over ``parts`` ranks, the first ones one longer."""
    if tokens < parts:
        raise ValueError(f"{tokens} latent tokens cannot be split over {parts} devices")
    base, extra = divmod(tokens, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def check_heads(heads: int, parts: int) -> None:
    """Heads are split across ranks: P must divide them (24 heads: P in 1, 2, 3, 4, 6, 8)."""
    if heads % parts:
        choices = ", ".join(str(p) for p in range(1, heads + 1) if heads % p == 0)
        raise ValueError(
            f"a device group of {parts} cannot split the transformer's {heads} attention heads evenly; "
            f"use a group of {choices} devices"
        )


@dataclass
class UlyssesAttention:
    """Attention of one rank's [latent shard ; conditioning] tokens (B, n_r + M, H, D) with kernel
    ``kernel`` on its H/P heads over all N + M tokens; returns (B, n_r + M, H, D) like the kernel.
    ``splits``: every rank's latent shard length (N in all), set by the runner before each forward.

    Registered once as an attention kernel (``ulysses_kernel``) whose name the compiled blocks carry
    as a constant; the splits are read when the opaque op runs, so a new section geometry (another
    history length, another bucket) costs no recompilation."""

    kernel: str
    rank: int
    size: int
    group: Any = None  # None: the default (world) group
    splits: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"ulysses[{self.kernel}|{self.rank}/{self.size}]"

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        size, rank, splits = self.size, self.rank, self.splits
        if len(splits) != size:
            raise RuntimeError(f"{self.name}: the runner set no shard sizes for this forward")
        b, s, heads, d = q.shape
        if b != 1:  # the runner runs the blocks one sample at a time (TransformerRunner.__call__)
            raise ValueError(f"{self.name}: a batch of 1 is expected, not {b}")
        n = splits[rank]
        m = s - n
        h = heads // size
        total = sum(splits)
        # 1. latent q|k|v [n, H] -> [N, H/P]: one all-to-all, chunk p (heads p*h..) to rank p. The
        # send buffer is made in one copy; the receive buffer holds q|k|v interleaved per token,
        # with room after the latent tokens for this rank's heads of the conditioning, so the
        # kernel takes strided views of it instead of three concatenated copies.
        send = torch.stack([t[0, :n].view(n, size, h, d).transpose(0, 1) for t in (q, k, v)], 2)  # (P, n, 3, h, D)
        qkv = q.new_empty((1, total + m, 3, h, d))
        dist.all_to_all_single(qkv[0, :total], send.view(size * n, 3, h, d), list(splits), [n] * size,
                               group=self.group)  # fmt: skip
        heads_r = slice(rank * h, (rank + 1) * h)
        qkv[0, total:] = torch.stack([t[0, n:, heads_r] for t in (q, k, v)], 1)
        # 2. attention over all latent tokens and the whole conditioning, this rank's heads.
        out = get_kernel(self.kernel).run(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # (1, N + M, h, D)
        # 3. back: rank j gets its shard's tokens and this rank's conditioning output, h heads each.
        o_lat, o_cond = out[0, :total], out[0, total:]
        parts: list[Tensor] = []
        start = 0
        for length in splits:
            parts += [o_lat[start : start + length], o_cond]
            start += length
        recv = out.new_empty((size, n + m, h, d))
        send_sizes = [length + m for length in splits]  # rank j: its shard and our conditioning
        dist.all_to_all_single(recv.view(size * (n + m), h, d), torch.cat(parts), [n + m] * size, send_sizes,
                               group=self.group)  # fmt: skip
        return recv.transpose(0, 1).reshape(1, n + m, heads, d)


def ulysses_kernel(kernel: str, rank: int, size: int, group: Any = None) -> UlyssesAttention:
    """The registered ``UlyssesAttention`` of this kernel and rank (registered on first use)."""
    att = UlyssesAttention(kernel, rank, size, group)
    hit = KERNELS.get(att.name)
    if hit is not None and isinstance(hit.run, UlyssesAttention):
        return hit.run
    register(AttentionKernel(att.name, att, lambda _d: False, timed=False))
    return att


def gather_tokens(local: Tensor, splits: Sequence[int], group: Any = None) -> Tensor:
    """Every rank's (B, n_r, C) shard joined along the tokens, on every rank (padded only for the
    gather's equal-size buffers)."""
    longest = max(splits)
    padded = local
    if local.shape[1] < longest:
        pad = local.new_zeros((local.shape[0], longest - local.shape[1], *local.shape[2:]))
        padded = torch.cat([local, pad], 1)
    bufs = [torch.empty_like(padded) for _ in splits]
    dist.all_gather(bufs, padded.contiguous(), group=group)
    return torch.cat([buf[:, :length] for buf, length in zip(bufs, splits)], 1)


# ---------------------------------------------------------------------------------------------
# Leader -> followers: headers over pipes, tensors by broadcast
# ---------------------------------------------------------------------------------------------


@dataclass
class GroupLink:
    """This rank's view of the group: rank 0 holds a pipe to every follower, a follower one to rank 0."""

    rank: int
    size: int
    device: torch.device
    pipes: list[Connection]  # leader: one per follower; follower: [the leader's]
    group: Any = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def send(self, header: tuple) -> None:
        for pipe in self.pipes:
            pipe.send(header)

    def recv(self) -> tuple:
        return self.pipes[0].recv()

    def send_tensors(self, tensors: Sequence[Tensor]) -> None:
        for t in tensors:
            dist.broadcast(_wire(t).to(self.device).contiguous(), src=0, group=self.group)

    def recv_tensors(self, specs: Sequence[tuple[tuple[int, ...], torch.dtype]]) -> list[Tensor]:
        out = []
        for shape, dtype in specs:
            buf = torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype, device=self.device)
            dist.broadcast(buf, src=0, group=self.group)
            out.append(buf.bool() if dtype == torch.bool else buf)
        return out

    def flag(self, value: bool) -> bool:
        """The leader's ``value`` on every rank."""
        t = torch.tensor([1 if value else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(t, src=0, group=self.group)
        return bool(t.item())

    def stop(self) -> None:
        """Leader: tell the followers to return from ``serve``."""
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except (BrokenPipeError, OSError):
                pass


def _wire(t: Tensor) -> Tensor:
    return t.to(torch.uint8) if t.dtype == torch.bool else t  # gloo has no bool


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[Tensor]]:
    """A forward's keywords as a header (values, tensor shapes and dtypes) and the tensors in order."""
    header: dict[str, Any] = {}
    tensors: list[Tensor] = []
    for key, value in kwargs.items():
        if isinstance(value, Tensor):
            header[key] = ("tensor", tuple(value.shape), value.dtype)
            tensors.append(value)
        else:
            header[key] = ("value", value)
    return header, tensors


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------


class ContextParallelRunner(TransformerRunner):
    """``TransformerRunner`` whose block stack runs on this rank's shard of the latent tokens.

    The leader calls it like any runner (``reset``, then keyword forwards) and it sends the same to
    the followers; a follower calls ``serve()``. Every rank returns the whole output."""

    def __init__(
        self, transformer: nn.Module, options: RunnerOptions | None, *, weights: PreparedWeights | None, link: GroupLink
    ) -> None:
        super().__init__(transformer, options, weights=weights)
        check_heads(transformer.config.num_attention_heads, link.size)
        self.link = link

    # -- leader ----------------------------------------------------------------------------------

    def reset(self, num_steps: int) -> None:
        if self.link.leader:
            self.link.send(("reset", num_steps, self.options))
        super().reset(num_steps)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if args:
            raise TypeError("a context-parallel runner takes keyword arguments only")
        if self.link.leader:
            header, tensors = _split_kwargs(kwargs)
            self.link.send(("forward", header))
            self.link.send_tensors(tensors)
        return super().__call__(**kwargs)

    # -- follower --------------------------------------------------------------------------------

    def serve(self) -> None:
        """Follower: run what the leader sends until it says stop (or is gone)."""
        while True:
            try:
                msg = self.link.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "stop":
                return
            if msg[0] == "reset":
                self.options = msg[2]
                super().reset(msg[1])
            elif msg[0] == "forward":
                header = msg[1]
                specs = [(v[1], v[2]) for v in header.values() if v[0] == "tensor"]
                received = iter(self.link.recv_tensors(specs))
                kwargs = {k: next(received) if v[0] == "tensor" else v[1] for k, v in header.items()}
                super().__call__(**kwargs)

    # -- every rank ------------------------------------------------------------------------------

    def _teacache_decide(self, state: BranchState, modulated: Tensor) -> bool:
        return self.link.flag(super()._teacache_decide(state, modulated))

    def _run_blocks(
        self, x: Tensor, cond: Tensor, temb: Tensor, prep: SectionConstants, attention: str | None = None
    ) -> Tensor:
        link = self.link
        splits = shard_sizes(x.shape[1], link.size)
        lo = sum(splits[: link.rank])
        hi = lo + splits[link.rank]
        att = ulysses_kernel(self.options.attention, link.rank, link.size, link.group)
        att.splits = tuple(splits)
        local = dataclasses.replace(prep, cos=prep.cos[lo:hi], sin=prep.sin[lo:hi])
        out = super()._run_blocks(x[:, lo:hi], cond, temb, local, attention=att.name)
        return gather_tokens(out, splits, link.group)


__all__ = [
    "ContextParallelRunner",
    "GroupLink",
    "UlyssesAttention",
    "check_heads",
    "gather_tokens",
    "shard_sizes",
    "ulysses_kernel",
]
