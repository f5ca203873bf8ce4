"""Weights the runner uses in place of the transformer's own: fused projections and FP8 copies.

``PreparedWeights`` belongs to one transformer and is handed to ``forward.TransformerRunner``; the
diffusers modules get no attributes. Fusing makes the fused linears' own weights views into the
fused storage (no memory added, the stock forward sees the same values); ``unfuse`` and
``remove_fp8`` drop what was prepared and leave the modules as they were.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fploopd.engine.fp8 import Fp8Weight, block_fp8_linears, check_granularity, quantize_weight

# Names of the fused projections in a block's ``BlockWeights.fused``: "qkv": latent stream q|k|v;
# "added_qkv": context q|k|v (double blocks); "qkvm" (single blocks): q|k|v|mlp-in, all four read
# the same normalised input.
FUSED_QKV = "qkv"
FUSED_ADDED_QKV = "added_qkv"
FUSED_QKVM = "qkvm"
STACKS = ("transformer_blocks", "single_transformer_blocks")

FusedWeight = tuple[Tensor, Tensor | None]  # (weight, bias)


@dataclass
class BlockWeights:
    """One block's prepared weights, by the names the block functions ask for. An argument of the
    (compiled) block functions: its tensors are graph inputs, so one graph serves every block."""

    fp8: dict[str, Fp8Weight] = field(default_factory=dict)  # by linear name in the block: "attn.to_q"
    fused: dict[str, FusedWeight] = field(default_factory=dict)  # by FUSED_* name
    fused_fp8: dict[str, Fp8Weight] = field(default_factory=dict)  # FP8 form of ``fused``


# Blocks with nothing prepared (a runner without ``PreparedWeights``).
NO_WEIGHTS = BlockWeights()


class PreparedWeights:
    """Fused projections and FP8 weights for the blocks of ``transformer``."""

    def __init__(self, transformer: nn.Module) -> None:
        self.transformer = transformer
        self._blocks: dict[int, BlockWeights] = {id(b): BlockWeights() for b in self._all_blocks()}
        self.fused = False
        self.fp8_granularity: str | None = None  # "row" | "tensor" once quantised

    def _all_blocks(self) -> Iterator[nn.Module]:
        for stack in STACKS:
            yield from getattr(self.transformer, stack)

    def of(self, block: nn.Module) -> BlockWeights:
        """The prepared weights of ``block`` (one of this transformer's blocks)."""
        return self._blocks[id(block)]

    # -- fused projections ------------------------------------------------------------------------

    def _fused_groups(self) -> Iterator[tuple[nn.Module, str, tuple[nn.Linear, ...]]]:
        for block in self.transformer.transformer_blocks:
            a = block.attn
            yield block, FUSED_QKV, (a.to_q, a.to_k, a.to_v)
            yield block, FUSED_ADDED_QKV, (a.add_q_proj, a.add_k_proj, a.add_v_proj)
        for block in self.transformer.single_transformer_blocks:
            a = block.attn
            yield block, FUSED_QKVM, (a.to_q, a.to_k, a.to_v, block.proj_mlp)

    def fuse(self) -> int:
        """Fuse q|k|v (both streams of the double blocks) and q|k|v|mlp-in (single blocks): fewer,
        wider GEMMs that read their input once. Do it after the model is on its device (``.to()``
        would copy the views apart). FP8 forms of the fused weights come with the next
        ``quantize_fp8``."""
        count = 0
        for block, name, linears in self._fused_groups():
            self.of(block).fused[name] = _fuse(linears)
            count += 1
        self.fused = True
        return count

    def unfuse(self) -> None:
        """Back to one GEMM per linear (their weights stay views of the fused storage: same values,
        same memory)."""
        for bw in self._blocks.values():
            bw.fused.clear()
            bw.fused_fp8.clear()
        self.fused = False

    # -- FP8 --------------------------------------------------------------------------------------

    @torch.no_grad()
    def quantize_fp8(self, granularity: str = "row") -> int:
        """e4m3 weights beside each linear's bf16 weight (and beside fused projections); returns
        the number of linears. The bf16 weights stay (the stock forward and the non-FP8 path still
        use them)."""
        check_granularity(granularity)
        count = 0
        for block in self._all_blocks():
            bw = self.of(block)
            for name, lin in block_fp8_linears(block):
                bw.fp8[name] = quantize_weight(lin.weight, granularity)
                count += 1
        self._quantize_fused(granularity)
        self.fp8_granularity = granularity
        return count

    def _quantize_fused(self, granularity: str) -> None:
        for bw in self._blocks.values():
            for name, (weight, _) in bw.fused.items():
                bw.fused_fp8[name] = quantize_weight(weight, granularity)

    def remove_fp8(self) -> None:
        for bw in self._blocks.values():
            bw.fp8.clear()
            bw.fused_fp8.clear()
        self.fp8_granularity = None


@torch.no_grad()
def _fuse(linears: Sequence[nn.Linear]) -> FusedWeight:
    """One weight for ``linears`` that read the same input; their own weights become views into it,
    so no memory is added and the stock forward keeps working."""
    weight = torch.cat([lin.weight for lin in linears], dim=0)
    bias = torch.cat([lin.bias for lin in linears], dim=0) if all(lin.bias is not None for lin in linears) else None
    row = 0
    for lin in linears:
        n = lin.out_features
        lin.weight.data = weight[row : row + n]
        if bias is not None:
            lin.bias.data = bias[row : row + n]
        row += n
    return weight, bias


__all__ = ["FUSED_ADDED_QKV", "FUSED_QKV", "FUSED_QKVM", "NO_WEIGHTS", "BlockWeights", "PreparedWeights"]
