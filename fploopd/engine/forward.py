"""Our FramePack transformer forward over a loaded diffusers ``HunyuanVideoFramepackTransformer3DModel``.

``TransformerRunner(transformer)(**kwargs)`` computes the same function as
``transformer(**kwargs, return_dict=False)[0]`` with the modules and weights of ``transformer`` (nothing
is copied), but shaped for speed:

- the text is cropped to its mask on the host before anything runs, so the block stack has no
  data-dependent shapes and no ``.item()`` inside compiled regions (diffusers crops with a tensor
  index inside its forward, which breaks ``torch.compile``);
- the token refiner runs on the cropped text (its masked attention over 512 tokens gives the same
  values on the kept tokens);
- rope tables and the embedded 1x/2x/4x history, which depend only on indices, sizes and the section's
  context latents, are computed once per section;
- the 40 single blocks work on one concatenated sequence instead of splitting and re-joining it in
  every block;
- each block is a plain function of its module, so ``accel`` can compile it once for all blocks of its
  kind, pick the attention kernel, and swap linears for FP8 ones without touching the stock forward
  (the benchmark's baseline stays diffusers' own code);
- optional TeaCache, as FramePack does it, with separate state per CFG branch;
- attention through ``engine.attention.attend`` (an opaque custom op over any SDPA kernel,
  FlashAttention 4, SageAttention, or cuDNN's FP8 attention with its quantisation traced);
- low-VRAM through an ``offloader`` (``accel.BlockStreamer``); a transformer under diffusers' group
  offloading hooks is run through its stock forward instead (same function, no TeaCache).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from loguru import logger
from torch import Tensor, nn

from fploopd.engine.attention import ATTENTION_BACKENDS, attend

# FramePack's TeaCache rescale polynomial (numpy.poly1d order: highest power first).
TEACACHE_COEFFS = (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02)
TEACACHE_DEFAULT = 0.15
# bf16 MLPs on CUDA: GELU as a GEMM epilogue and the single blocks' out projection without the concat
# (``linear_gelu``, ``joint_out``). A switch for A/B runs (tools/gelu_epilogue_probe.py).
GELU_EPILOGUE = True

# Attribute on an nn.Linear that holds its FP8 weights: (w8 [out, in] e4m3, scale fp32 of shape
# [1, out] (per output channel; activations then get per-token scales) or [] (per tensor)).
FP8_ATTR = "_fploopd_fp8"
# Attributes on an attention module / single block holding fused projections set up by
# ``accel.fuse_projections``: (weight, bias), the original linears' weights being views into it;
# the ``*_fp8`` twin holds its FP8 form. "qkv": latent stream q|k|v; "added_qkv": context q|k|v;
# "qkvm" (single blocks): q|k|v|mlp-in, all four read the same normalised input.
FUSED_QKV = "_fploopd_qkv"
FUSED_ADDED_QKV = "_fploopd_added_qkv"
FUSED_QKVM = "_fploopd_qkvm"
# Attribute on the transformer where accel.optimize records what it applied (read by "auto" options).
ACCEL_ATTR = "_fploopd_accel"

def teacache_rescale(x: float) -> float:
    """FramePack's polynomial, evaluated highest power first like numpy.poly1d."""
    out = 0.0
    for c in TEACACHE_COEFFS:
        out = out * x + c
    return out


# ---------------------------------------------------------------------------------------------
# Primitive ops (kept free of host syncs: they run inside compiled regions)
# ---------------------------------------------------------------------------------------------


def fp8_linear(x: Tensor, w8: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear`` with e4m3 operands: per-row (token) dynamic activation scales, per-output-channel
    weight scales quantised once; accumulates in fp32 on the tensor cores, returns ``x.dtype``."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if w_scale.numel() == 1:  # per-tensor scales (cuBLASLt's FP8 GEMM)
        amax = x2.abs().amax().float()
    else:  # per-token x per-channel (CUTLASS rowwise FP8 GEMM)
        amax = x2.abs().amax(dim=1, keepdim=True).float()
    x_scale = torch.clamp(amax, min=1e-12) / 448.0
    x8 = torch.clamp(x2.float() / x_scale, -448.0, 448.0).to(torch.float8_e4m3fn)
    out = torch._scaled_mm(
        x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype, use_fast_accum=x.is_cuda
    )
    if bias is not None:
        out = out + bias  # outside the GEMM: every PyTorch build accepts it; compile fuses it
    return out.reshape(*shape[:-1], out.shape[-1])


def linear(lin: nn.Linear, x: Tensor, fp8: bool) -> Tensor:
    if fp8:
        q = getattr(lin, FP8_ATTR, None)
        if q is not None:
            return fp8_linear(x, q[0], q[1], lin.bias)
    return F.linear(x, lin.weight, lin.bias)


def fused_linear(module: nn.Module, attr: str, x: Tensor, fp8: bool) -> Tensor | None:
    """One GEMM for the projections fused under ``attr`` (None when they are not fused)."""
    fused = getattr(module, attr, None)
    if fused is None:
        return None
    weight, bias = fused
    if fp8:
        q = getattr(module, attr + "_fp8", None)
        if q is not None:
            return fp8_linear(x, q[0], q[1], bias)
    return F.linear(x, weight, bias)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """diffusers' ``apply_rotary_emb(x, (cos, sin), sequence_dim=1)`` for x of shape (B, S, H, D)."""
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos + x_rotated.float() * sin).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Blocks: the math of diffusers' HunyuanVideoTransformerBlock / SingleTransformerBlock and
# HunyuanVideoAttnProcessor2_0, written as functions of the block module
# ---------------------------------------------------------------------------------------------


def _qkv(
    attn: nn.Module, x: Tensor, fp8: bool, added: bool = False, fused: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, S, H, D) after the qk norms; ``fused``: the q|k|v output of a fused GEMM."""
    if added:
        lins, norms = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj), (attn.norm_added_q, attn.norm_added_k)
    else:
        lins, norms = (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k)
    if fused is None:
        fused = fused_linear(attn, FUSED_ADDED_QKV if added else FUSED_QKV, x, fp8)
    if fused is not None:
        sizes = [lin.out_features for lin in lins]
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in fused[..., : sum(sizes)].split(sizes, dim=-1))
    else:
        q, k, v = (linear(lin, x, fp8).unflatten(2, (attn.heads, -1)) for lin in lins)
    if norms[0] is not None:
        q = norms[0](q)
    if norms[1] is not None:
        k = norms[1](k)
    return q, k, v


def double_block(
    block: nn.Module,
    hidden: Tensor,
    context: Tensor,
    temb: Tensor,
    cos: Tensor,
    sin: Tensor,
    backend: str,
    fp8: bool,
) -> tuple[Tensor, Tensor]:
    """One dual-stream block; ``hidden`` is the latent stream (all of it gets rope), ``context`` the
    image+text conditioning stream."""
    n = hidden.shape[1]
    shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = block.norm1.linear(F.silu(temb)).chunk(6, dim=1)
    c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context.linear(
        F.silu(temb)
    ).chunk(6, dim=1)
    x = block.norm1.norm(hidden) * (1 + scale[:, None]) + shift[:, None]
    c = block.norm1_context.norm(context) * (1 + c_scale[:, None]) + c_shift[:, None]

    attn = block.attn
    q, k, v = _qkv(attn, x, fp8)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    cq, ck, cv = _qkv(attn, c, fp8, added=True)
    out = attend(torch.cat([q, cq], 1), torch.cat([k, ck], 1), torch.cat([v, cv], 1), backend)
    out = out.flatten(2, 3).to(q.dtype)
    a = linear(attn.to_out[0], out[:, :n], fp8)
    ca = linear(attn.to_add_out, out[:, n:], fp8)

    hidden = hidden + a * gate.unsqueeze(1)
    context = context + ca * c_gate.unsqueeze(1)
    x = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    c = block.norm2_context(context) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    x = _feed_forward(block.ff, x, fp8)
    c = _feed_forward(block.ff_context, c, fp8)
    hidden = hidden + gate_mlp.unsqueeze(1) * x
    context = context + c_gate_mlp.unsqueeze(1) * c
    return hidden, context


def linear_gelu(lin: nn.Linear, x: Tensor, fp8: bool) -> Tensor:
    """``gelu(lin(x), approximate="tanh")``. In bf16 on CUDA one cuBLASLt GEMM with a GELU epilogue
    (``_addmm_activation``, which inductor leaves whole): it saves a read and a write of the 4x-wide
    MLP activations. Not on the CPU, where that op's GELU is the exact (erf) one. FP8 keeps the
    separate GELU, which compile fuses into the next quantisation."""
    if GELU_EPILOGUE and x.is_cuda and not fp8 and lin.bias is not None:
        x2 = x.reshape(-1, x.shape[-1])
        return torch._addmm_activation(lin.bias, x2, lin.weight.t(), use_gelu=True).view(*x.shape[:-1], -1)
    return F.gelu(linear(lin, x, fp8), approximate="tanh")


def joint_out(lin: nn.Linear, a: Tensor, m: Tensor, fp8: bool) -> Tensor:
    """``lin(cat([a, m], -1))``; unless FP8 (whose per-token scales span the whole row), as two
    GEMMs over the column halves of the weight, so the (tokens x 15,360) concatenation is never
    written. Switched with ``GELU_EPILOGUE``: the two change the same MLP path together."""
    if not GELU_EPILOGUE or fp8:
        return linear(lin, torch.cat([a, m], dim=-1), fp8)
    ka = a.shape[-1]
    out = F.linear(a, lin.weight[:, :ka], lin.bias)
    m2 = m.reshape(-1, m.shape[-1])
    return torch.addmm(out.reshape(-1, out.shape[-1]), m2, lin.weight[:, ka:].t()).view(out.shape)


def _feed_forward(ff: nn.Module, x: Tensor, fp8: bool) -> Tensor:
    act = ff.net[0]  # diffusers GELU(proj, approximate="tanh"); net[1] is dropout (identity in eval)
    return linear(ff.net[2], linear_gelu(act.proj, x, fp8), fp8)


def single_block(
    block: nn.Module,
    x: Tensor,
    temb: Tensor,
    cos: Tensor,
    sin: Tensor,
    n_latent: int,
    backend: str,
    fp8: bool,
) -> Tensor:
    """One single-stream block on the joined sequence ``[latent (n_latent, with rope) | conditioning]``."""
    shift, scale, gate = block.norm.linear(F.silu(temb)).chunk(3, dim=1)
    nx = block.norm.norm(x) * (1 + scale[:, None]) + shift[:, None]
    attn = block.attn
    fused = fused_linear(block, FUSED_QKVM, nx, fp8)
    if fused is not None:
        mlp = block.act_mlp(fused[..., -block.proj_mlp.out_features :])
    else:
        mlp = linear_gelu(block.proj_mlp, nx, fp8)
    q, k, v = _qkv(attn, nx, fp8, fused=fused)
    q = torch.cat([apply_rope(q[:, :n_latent], cos, sin), q[:, n_latent:]], dim=1)
    k = torch.cat([apply_rope(k[:, :n_latent], cos, sin), k[:, n_latent:]], dim=1)
    out = attend(q, k, v, backend).flatten(2, 3).to(q.dtype)

    out = gate.unsqueeze(1) * joint_out(block.proj_out, out, mlp, fp8)
    return out + x


BlockFns = tuple[Callable[..., tuple[Tensor, Tensor]], Callable[..., Tensor]]
EAGER_BLOCKS: BlockFns = (double_block, single_block)


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


@dataclass
class _BranchState:
    """TeaCache state of one CFG branch within a section."""

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
class _Prepared:
    """Per-section constants: rope tables of the packed latent stream and the embedded history."""

    cos: Tensor
    sin: Tensor
    history: Tensor | None  # embedded [4x | 2x | clean] tokens, or None
    keepalive: list[Tensor | None] = field(default_factory=list)  # the keyed context tensors


class TransformerRunner:
    """FramePack forward over a diffusers ``HunyuanVideoFramepackTransformer3DModel``.

    ``attention``: one of ``ATTENTION_BACKENDS`` or ``"auto"`` (what ``accel.optimize`` chose, else
    ``"sdpa"``). ``compile`` / ``fp8``: ``None`` follows ``accel.optimize``; ``True``/``False`` force.
    ``teacache_threshold``: ``None`` or 0 disables skipping; FramePack uses 0.15.
    ``offloader``: an object with ``run(blocks, fn, state) -> state`` (``accel.BlockStreamer``) for
    low-VRAM mode; ``None`` when the blocks are resident.
    """

    def __init__(
        self,
        transformer: nn.Module,
        *,
        teacache_threshold: float | None = None,
        attention: str = "auto",
        compile: bool | None = None,
        fp8: bool | None = None,
        offloader: Any = None,
        cache_size: int = 4,
        compile_mode: str | None = None,
    ) -> None:
        self.transformer = transformer
        applied: dict[str, Any] = getattr(transformer, ACCEL_ATTR, {}) or {}
        self.attention = applied.get("attention", "sdpa") if attention == "auto" else attention
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS} or 'auto', not {attention!r}")
        self.compile = bool(applied.get("compile", False)) if compile is None else compile
        self.fp8 = bool(applied.get("fp8", False)) if fp8 is None else fp8
        self.compile_mode = compile_mode if compile_mode is not None else applied.get("compile_mode")
        self.teacache_threshold = teacache_threshold or None
        self.offloader = offloader
        self._cache_size = cache_size
        self._prepared: OrderedDict[tuple, _Prepared] = OrderedDict()
        self._branches: dict[str, _BranchState] = {}
        self.num_steps: int | None = None
        self.stats = RunnerStats()
        self._blocks: BlockFns | None = None
        self._warned_hooks = False

    # -- section life cycle -------------------------------------------------------------------

    def reset(self, num_steps: int) -> None:
        """Start of a section: clear step caches (TeaCache state, prepared rope/history)."""
        self.num_steps = num_steps
        self._branches.clear()
        self._prepared.clear()
        _HOST.clear()

    @property
    def block_fns(self) -> BlockFns:
        if self._blocks is None:
            if self.compile:
                from fploopd.engine.accel import compiled_blocks

                self._blocks = compiled_blocks(self.compile_mode)
            else:
                self._blocks = EAGER_BLOCKS
        return self._blocks

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
        if self.offloader is None and _has_diffusers_hooks(self.transformer):
            # diffusers' group offloading moves weights from hooks on the modules' forwards, which
            # our block functions bypass: run the stock forward instead (same function, no TeaCache).
            # accel.enable_low_vram + offloader= is the fast low-VRAM path.
            if self.teacache_threshold and not self._warned_hooks:
                logger.warning("TransformerRunner: diffusers offload hooks found; TeaCache and our kernels are off")
            self._warned_hooks = True
            self.stats.forwards += 1
            self.stats.computed += 1
            return self.transformer(
                hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, pooled_projections=pooled_projections,
                image_embeds=image_embeds, indices_latents=indices_latents, guidance=guidance,
                return_dict=False, **context_kwargs(
                    latents_clean, indices_latents_clean, latents_history_2x, indices_latents_history_2x,
                    latents_history_4x, indices_latents_history_4x),
            )[0]
        batch = hidden_states.shape[0]
        if text_lengths is None:
            text_lengths = _text_lengths(encoder_attention_mask, encoder_hidden_states)
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
    ) -> _Prepared:
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
            _index_key(indices_latents),
            tuple(_index_key(i) for i in indices),
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
        prep = _Prepared(cos=cos, sin=sin, history=history, keepalive=latents)
        self._prepared[key] = prep
        while len(self._prepared) > self._cache_size:
            self._prepared.popitem(last=False)
        return prep

    def _blocks_with_cache(self, x: Tensor, cond: Tensor, temb: Tensor, prep: _Prepared, branch: str) -> Tensor:
        self.stats.forwards += 1
        if not self.teacache_threshold:
            self.stats.computed += 1
            return self._run_blocks(x, cond, temb, prep)

        state = self._branches.setdefault(branch, _BranchState())
        if self.num_steps is None:
            logger.warning("TransformerRunner: TeaCache without reset(num_steps); only the first step is forced")
            self.num_steps = 0
        modulated = self.transformer.transformer_blocks[0].norm1(x, emb=temb)[0]
        last = self.num_steps - 1
        if state.step == 0 or state.step == last or state.prev_residual is None or (
            state.prev_modulated is not None and state.prev_modulated.shape != modulated.shape
        ):
            compute = True
            state.accumulated = 0.0
        else:
            prev = state.prev_modulated
            rel = ((modulated - prev).abs().mean() / prev.abs().mean()).float().cpu().item()
            state.accumulated += teacache_rescale(rel)
            compute = state.accumulated >= self.teacache_threshold
            if compute:
                state.accumulated = 0.0
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

    def _run_blocks(self, x: Tensor, cond: Tensor, temb: Tensor, prep: _Prepared) -> Tensor:
        t = self.transformer
        double_fn, single_fn = self.block_fns
        backend, fp8, cos, sin = self.attention, self.fp8, prep.cos, prep.sin
        n_latent = x.shape[1]

        def run_double(block: nn.Module, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return double_fn(block, state[0], state[1], temb, cos, sin, backend, fp8)

        def run_single(block: nn.Module, joined: Tensor) -> Tensor:
            return single_fn(block, joined, temb, cos, sin, n_latent, backend, fp8)

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


_HOST = _HostValues()


def _has_diffusers_hooks(transformer: nn.Module) -> bool:
    blocks = getattr(transformer, "transformer_blocks", None)
    return hasattr(transformer, "_diffusers_hook") or bool(blocks) and hasattr(blocks[0], "_diffusers_hook")


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


def _text_lengths(mask: Tensor | None, text: Tensor) -> list[int]:
    """Kept text tokens per sample: one host read of the mask (a prefix of ones, as FramePack makes)."""
    if mask is None:
        return [text.shape[1]] * text.shape[0]
    return list(_HOST.get(mask, lambda m: tuple(int(v) for v in m.sum(dim=1).tolist())))


def _index_key(idx: Tensor | None) -> tuple[int, ...] | None:
    if idx is None:
        return None
    return _HOST.get(idx, lambda t: tuple(int(v) for v in t.reshape(-1).tolist()))


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
    "ATTENTION_BACKENDS",
    "TEACACHE_COEFFS",
    "TEACACHE_DEFAULT",
    "TransformerRunner",
    "count_flops",
    "double_block",
    "fp8_linear",
    "single_block",
    "teacache_rescale",
]
