"""Our FramePack transformer forward over a loaded diffusers ``HunyuanVideoFramepackTransformer3DModel``.

``TransformerRunner(transformer, options, weights=...)(**kwargs)`` computes the same function as
``transformer(**kwargs, return_dict=False)[0]`` with the modules and weights of ``transformer``
(nothing is copied), but shaped for speed:

- the text is cropped to its mask on the host before anything runs, so the block stack has no
  data-dependent shapes and no ``.item()`` inside compiled regions (diffusers crops with a tensor
  index inside its forward, which breaks ``torch.compile``);
- the token refiner runs on the cropped text (its masked attention over 512 tokens gives the same
  values on the kept tokens);
- rope tables and the embedded 1x/2x/4x history, which depend only on indices, sizes and the section's
  context latents, are computed once per section;
- the 40 single blocks work on one concatenated sequence instead of splitting and re-joining it in
  every block;
- each block is a plain function of its module and its prepared weights (``blocks``), compiled
  once for all blocks of its kind (``compile``), with the attention kernel, FP8 and the GELU
  epilogue chosen by ``options.RunnerOptions`` and fused / FP8 weights from
  ``weights.PreparedWeights``, without touching the stock forward (the benchmark's baseline stays
  diffusers' own code);
- optional TeaCache, as FramePack does it, with separate state per CFG branch;
- low-VRAM through an ``offloader`` (``streaming.BlockStreamer``); a transformer under diffusers'
  group offloading hooks is run through its stock forward instead (same function, no TeaCache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from loguru import logger
from torch import Tensor, nn

from fploopd.engine.blocks import EAGER_BLOCKS, BlockFns
from fploopd.engine.compile import compiled_blocks
from fploopd.engine.options import RunnerOptions
from fploopd.engine.weights import NO_WEIGHTS, BlockWeights, PreparedWeights

if TYPE_CHECKING:
    from fploopd.engine.compile_ahead import CompileAhead

# FramePack's TeaCache rescale polynomial (numpy.poly1d order: highest power first).
TEACACHE_COEFFS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)


def teacache_rescale(x: float) -> float:
    """FramePack's polynomial, evaluated highest power first like numpy.poly1d."""
    out = 0.0
    for c in TEACACHE_COEFFS:
        out = out * x + c
    return out


class Offloader(Protocol):
    """Runs ``fn(block, state)`` over ``blocks`` whose weights it brings in (``streaming.BlockStreamer``)."""

    def run(self, blocks: Sequence[nn.Module], fn: Callable[[nn.Module, Any], Any], state: Any) -> Any: ...


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


@dataclass
class BranchState:
    """TeaCache state of one CFG branch within a section (public for runners that override
    ``_teacache_decide``, as ``context_parallel`` does)."""

    step: int = 0
    accumulated: float = 0.0
    prev_modulated: Tensor | None = None
    prev_residual: Tensor | None = None


@dataclass
class RunnerStats:
    forwards: int = 0
    computed: int = 0  # forwards that ran the block stack
    skipped: int = 0  # forwards that reused the TeaCache residual
    block_calls: int = 0  # individual block invocations (double + single)
    history: list[tuple[str, int, bool]] = field(default_factory=list)  # (branch, step, computed)


@dataclass
class SectionConstants:
    """Per-section constants: rope tables of the packed latent stream and the embedded history
    (public for runners that override ``_run_blocks``, as ``context_parallel`` does)."""

    cos: Tensor
    sin: Tensor
    history: Tensor | None  # embedded [4x | 2x | clean] tokens, or None
    keepalive: list[Tensor | None] = field(default_factory=list)  # the keyed context tensors


class TransformerRunner:
    """FramePack forward over a diffusers ``HunyuanVideoFramepackTransformer3DModel``.

    ``options``: attention kernel, compile, FP8, GELU epilogue, TeaCache (``accel.optimize``
    decides them for a device). ``weights``: fused projections and FP8 weights prepared for this
    transformer (``accel.optimize`` or ``weights.PreparedWeights``); ``None``: the modules' own.
    ``offloader``: an object with ``run(blocks, fn, state) -> state`` (``streaming.BlockStreamer``)
    for low-VRAM mode; ``None`` when the blocks are resident. ``ahead``: a worker's
    ``compile_ahead.CompileAhead``: compiled block calls wait for its helper, eager until then.
    """

    def __init__(
        self,
        transformer: nn.Module,
        options: RunnerOptions | None = None,
        *,
        weights: PreparedWeights | None = None,
        offloader: Offloader | None = None,
        ahead: CompileAhead | None = None,
        cache_size: int = 4,
    ) -> None:
        if weights is not None and weights.transformer is not transformer:
            raise ValueError("the prepared weights belong to another transformer")
        self.transformer = transformer
        self.options = options if options is not None else RunnerOptions()
        self.weights = weights
        self.offloader = offloader
        self.ahead = ahead
        self._cache_size = cache_size
        self._prepared: OrderedDict[tuple, SectionConstants] = OrderedDict()
        self._branches: dict[str, BranchState] = {}
        self._host = _HostValues()
        self.num_steps: int | None = None
        self.stats = RunnerStats()
        self._blocks: BlockFns | None = None
        self._warned_hooks = False

    @property
    def teacache_threshold(self) -> float | None:
        return self.options.teacache_threshold

    # -- section life cycle -------------------------------------------------------------------

    def reset(self, num_steps: int) -> None:
        """Start of a section: clear step caches (TeaCache state, prepared rope/history, host copies)."""
        self.num_steps = num_steps
        self._branches.clear()
        self._prepared.clear()
        self._host.clear()

    @property
    def block_fns(self) -> BlockFns:
        if self._blocks is None:
            if not self.options.compile:
                self._blocks = EAGER_BLOCKS
            elif self.ahead is not None:  # eager until the helper has compiled each call
                self._blocks = self.ahead.blocks(compiled_blocks(self.options.compile_mode))
            else:
                self._blocks = compiled_blocks(self.options.compile_mode)
        return self._blocks

    def _block_weights(self, block: nn.Module) -> BlockWeights:
        return NO_WEIGHTS if self.weights is None else self.weights.of(block)

    # -- forward ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_attention_mask: Tensor | None,
        pooled_projections: Tensor,
        image_embeds: Tensor,
        indices_latents: Tensor,
        guidance: Tensor | None = None,
        latents_clean: Tensor | None = None,
        indices_latents_clean: Tensor | None = None,
        latents_history_2x: Tensor | None = None,
        indices_latents_history_2x: Tensor | None = None,
        latents_history_4x: Tensor | None = None,
        indices_latents_history_4x: Tensor | None = None,
        *,
        text_lengths: list[int] | None = None,
        branch: str = "pos",
        **_: Any,
    ) -> Tensor:
        batch = hidden_states.shape[0]
        if text_lengths is None:
            text_lengths = self._text_lengths(encoder_attention_mask, encoder_hidden_states)
        context = {
            "latents_clean": latents_clean,
            "indices_latents_clean": indices_latents_clean,
            "latents_history_2x": latents_history_2x,
            "indices_latents_history_2x": indices_latents_history_2x,
            "latents_history_4x": latents_history_4x,
            "indices_latents_history_4x": indices_latents_history_4x,
        }
        if batch == 1:
            return self._forward_one(
                hidden_states, timestep, encoder_hidden_states, text_lengths[0], pooled_projections,
                image_embeds, indices_latents, guidance, context, branch,
            )
        # Batch > 1: per-sample batch-1 runs equal diffusers' masked attention (masked keys carry no
        # weight; masked text queries never reach the output), without any mask.
        outs = []
        for i in range(batch):
            ctx_i = {k: (v[i : i + 1] if (v is not None and k.startswith("latents")) else v) for k, v in context.items()}
            outs.append(
                self._forward_one(
                    hidden_states[i : i + 1], _row(timestep, i), encoder_hidden_states[i : i + 1],
                    text_lengths[i], pooled_projections[i : i + 1], image_embeds[i : i + 1],
                    indices_latents, _row(guidance, i), ctx_i, f"{branch}/{i}",
                )
            )
        return torch.cat(outs, dim=0)

    def _forward_one(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        text: Tensor,
        text_length: int,
        pooled: Tensor,
        image_embeds: Tensor,
        indices_latents: Tensor,
        guidance: Tensor | None,
        context: dict[str, Tensor | None],
        branch: str,
    ) -> Tensor:
        t = self.transformer
        _, _, frames, height, width = hidden_states.shape
        p, p_t = t.config.patch_size, t.config.patch_size_t
        post_f, post_h, post_w = frames // p_t, height // p, width // p
        n_window = post_f * post_h * post_w

        prep = self._prepare(hidden_states, indices_latents, context, height, width)
        x = t.x_embedder(hidden_states)
        if prep.history is not None:
            x = torch.cat([prep.history, x], dim=1)

        temb, _ = t.time_text_embed(timestep, pooled, guidance)
        cond = t.image_projection(image_embeds)
        if text_length > 0:
            # Token refiner on the kept text only (equal to its masked run over the padded 512).
            refined = t.context_embedder(text[:, :text_length], timestep, None)
            cond = torch.cat([cond, refined], dim=1)

        x = self._blocks_with_cache(x, cond, temb, prep, branch)

        x = x[:, -n_window:]
        x = t.norm_out(x, temb)
        x = t.proj_out(x)
        x = x.reshape(1, post_f, post_h, post_w, -1, p_t, p, p)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    # -- pieces -----------------------------------------------------------------------------------

    def _prepare(
        self,
        hidden_states: Tensor,
        indices_latents: Tensor,
        context: dict[str, Tensor | None],
        height: int,
        width: int,
    ) -> SectionConstants:
        """Rope tables and the embedded history, cached on indices, sizes and the context tensors'
        identity and version (the cache keeps the tensors alive, so their memory cannot be reused
        by new tensors while the entry exists)."""
        latents = [context[k] for k in ("latents_clean", "latents_history_2x", "latents_history_4x")]
        indices = [
            context[k] for k in ("indices_latents_clean", "indices_latents_history_2x", "indices_latents_history_4x")
        ]
        key = (
            hidden_states.device,
            hidden_states.dtype,
            height,
            width,
            self._index_key(indices_latents),
            tuple(self._index_key(i) for i in indices),
            tuple((id(lat), lat._version, tuple(lat.shape)) if lat is not None else None for lat in latents),
        )
        hit = self._prepared.get(key)
        if hit is not None:
            self._prepared.move_to_end(key)
            return hit

        t = self.transformer
        device = hidden_states.device
        post_h, post_w = height // t.config.patch_size, width // t.config.patch_size
        cos, sin = t.rope(frame_indices=indices_latents, height=height, width=width, device=device)
        clean, h2, h4 = t.clean_x_embedder(*latents) if t.clean_x_embedder is not None else (None, None, None)
        parts: list[Tensor] = []
        for tokens, idx, kernel in ((clean, indices[0], None), (h2, indices[1], (2, 2, 2)), (h4, indices[2], (4, 4, 4))):
            if tokens is None or idx is None:
                continue
            rc, rs = t.rope(frame_indices=idx, height=height, width=width, device=device)
            if kernel is not None:
                rc, rs = t._pad_rotary_emb((rc, rs), post_h, post_w, kernel)
            cos, sin = torch.cat([rc, cos], dim=0), torch.cat([rs, sin], dim=0)
            parts.insert(0, tokens)
        history = torch.cat(parts, dim=1) if parts else None
        prep = SectionConstants(cos=cos, sin=sin, history=history, keepalive=latents)
        self._prepared[key] = prep
        while len(self._prepared) > self._cache_size:
            self._prepared.popitem(last=False)
        return prep

    def _blocks_with_cache(self, x: Tensor, cond: Tensor, temb: Tensor, prep: SectionConstants, branch: str) -> Tensor:
        self.stats.forwards += 1
        if not self.teacache_threshold:
            self.stats.computed += 1
            return self._run_blocks(x, cond, temb, prep)

        state = self._branches.setdefault(branch, BranchState())
        if self.num_steps is None:
            logger.warning("TransformerRunner: TeaCache without reset(num_steps); only the first step is forced")
            self.num_steps = 0
        modulated = self.transformer.transformer_blocks[0].norm1(x, emb=temb)[0]
        compute = self._teacache_decide(state, modulated)
        state.prev_modulated = modulated
        self.stats.history.append((branch, state.step, compute))
        state.step += 1
        if state.step == self.num_steps:
            state.step = 0

        if not compute:
            self.stats.skipped += 1
            return x + state.prev_residual
        self.stats.computed += 1
        out = self._run_blocks(x, cond, temb, prep)
        state.prev_residual = out - x
        return out

    def _teacache_decide(self, state: BranchState, modulated: Tensor) -> bool:
        """Whether this step runs the blocks (else it reuses the branch's residual)."""
        last = (self.num_steps or 0) - 1
        if state.step == 0 or state.step == last or state.prev_residual is None or (
            state.prev_modulated is not None and state.prev_modulated.shape != modulated.shape
        ):
            state.accumulated = 0.0
            return True
        prev = state.prev_modulated
        rel = ((modulated - prev).abs().mean() / prev.abs().mean()).float().cpu().item()
        state.accumulated += teacache_rescale(rel)
        compute = state.accumulated >= self.teacache_threshold
        if compute:
            state.accumulated = 0.0
        return compute

    def _run_blocks(
        self, x: Tensor, cond: Tensor, temb: Tensor, prep: SectionConstants, attention: str | None = None
    ) -> Tensor:
        """The block stack; ``attention``: a kernel name in place of the options' (context parallel)."""
        t = self.transformer
        double_fn, single_fn = self.block_fns
        o, cos, sin, weights_of = self.options, prep.cos, prep.sin, self._block_weights
        backend, fp8, epilogue = attention or o.attention, o.fp8, o.gelu_epilogue
        n_latent = x.shape[1]

        def run_double(block: nn.Module, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return double_fn(block, weights_of(block), state[0], state[1], temb, cos, sin, backend, fp8, epilogue)

        def run_single(block: nn.Module, joined: Tensor) -> Tensor:
            return single_fn(block, weights_of(block), joined, temb, cos, sin, n_latent, backend, fp8, epilogue)

        self.stats.block_calls += len(t.transformer_blocks) + len(t.single_transformer_blocks)
        if self.offloader is not None:
            x, cond = self.offloader.run(t.transformer_blocks, run_double, (x, cond))
            joined = self.offloader.run(t.single_transformer_blocks, run_single, torch.cat([x, cond], dim=1))
        else:
            for block in t.transformer_blocks:
                x, cond = run_double(block, (x, cond))
            joined = torch.cat([x, cond], dim=1)
            for block in t.single_transformer_blocks:
                joined = run_single(block, joined)
        return joined[:, :n_latent]

    # -- host copies of small tensors ---------------------------------------------------------------

    def _text_lengths(self, mask: Tensor | None, text: Tensor) -> list[int]:
        """Kept text tokens per sample: one host read of the mask (a prefix of ones, as FramePack makes)."""
        if mask is None:
            return [text.shape[1]] * text.shape[0]
        return list(self._host.get(mask, lambda m: tuple(int(v) for v in m.sum(dim=1).tolist())))

    def _index_key(self, idx: Tensor | None) -> tuple[int, ...] | None:
        if idx is None:
            return None
        return self._host.get(idx, lambda t: tuple(int(v) for v in t.reshape(-1).tolist()))


class _HostValues:
    """Host copies of small index/mask tensors, remembered by identity and version so that the
    steps of a section read each one from the device once (each read is a device sync)."""

    def __init__(self, size: int = 64) -> None:
        self._entries: OrderedDict[int, tuple[Tensor, int, tuple[int, ...]]] = OrderedDict()
        self._size = size

    def get(self, t: Tensor, fn: Callable[[Tensor], tuple[int, ...]]) -> tuple[int, ...]:
        hit = self._entries.get(id(t))
        if hit is not None and hit[0] is t and hit[1] == t._version:
            return hit[2]
        values = fn(t)
        self._entries[id(t)] = (t, t._version, values)  # keeps t alive: its id cannot be reused
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return values

    def clear(self) -> None:
        self._entries.clear()


def context_kwargs(
    clean: Tensor | None, i_clean: Tensor | None, h2: Tensor | None, i_h2: Tensor | None, h4: Tensor | None, i_h4: Tensor | None
) -> dict[str, Tensor | None]:
    return {
        "latents_clean": clean,
        "indices_latents_clean": i_clean,
        "latents_history_2x": h2,
        "indices_latents_history_2x": i_h2,
        "latents_history_4x": h4,
        "indices_latents_history_4x": i_h4,
    }


def _row(t: Tensor | None, i: int) -> Tensor | None:
    if t is None or t.ndim == 0 or t.shape[0] == 1:
        return t
    return t[i : i + 1]


def count_flops(tokens_latent: int, tokens_context: int, cfg: dict[str, Any]) -> float:
    """Matmul FLOPs of one forward's block stack (the rest is < 1%): linears plus attention."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n = tokens_latent + tokens_context
    mlp = cfg.get("mlp_ratio", 4.0)
    linear_double = 2 * (tokens_latent + tokens_context) * d * d * (4 + 2 * mlp)
    linear_single = 2 * n * d * d * (3 + mlp + (1 + mlp))
    attn = 4 * n * n * d
    return cfg["num_layers"] * (linear_double + attn) + cfg["num_single_layers"] * (linear_single + attn)


__all__ = [
    "TEACACHE_COEFFS",
    "BranchState",
    "Offloader",
    "RunnerStats",
    "SectionConstants",
    "TransformerRunner",
    "context_kwargs",
    "count_flops",
    "teacache_rescale",
]
