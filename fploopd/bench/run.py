"""``fploopd bench``: every figure in one process, the baseline measured beside each variant.

Stages (each guarded: a failing one records its error and the rest go on; the JSON is rewritten
after every stage so an interrupted run keeps what it measured):

- ``text``: prompt encoding (Llama 8B hidden_states[-3] + CLIP-L pooler) and SigLIP image encoding;
- ``transformer``: one forward, diffusers' stock code (baseline) against our runner, eager and
  compiled, per attention kernel, bf16 and FP8, with deviations from the baseline's output;
- ``vae``: VAE encode of the start image, decode of one section (2 windows, as FramePack's soft
  append decodes), stock against ``vae_accel.VaeAccel``;
- ``section``: a 25-step section through ``engine.sections.sample_section`` (FramePack's UniPC) plus
  its decode: baseline (stock forward + stock decode) against ours (bf16, FP8, TeaCache);
- ``lora``: merging a rank-32 musubi LoRA covering every Linear of every block (random values,
  built on the device), switching between two such sets and back to the base weights, and our
  section with a merged LoRA against the same section without (a merged LoRA costs nothing per
  step: the ratio should be 1);
- ``lowvram``: our section with the blocks streamed from pinned host memory, the process held to
  8 GiB of GPU memory, as a ratio to our high-VRAM section;
- ``e2e``: a loop job (main 1, connection 1) through the pipelines (``bench.e2e``), in a child
  process when other stages ran first;
- ``tiers`` (only when named: about 10 minutes at full size): the loop job under each VRAM budget
  in the tier it gets (``bench.tiers``); run it alone, in a process of its own;
- ``workers`` (only when named): loop jobs per hour with 1, 2, 4 workers through the real daemon
  (``fploopd run`` on random full-size weights; ``bench.workers``), its supervisor's CPU time and
  dispatch gaps. It starts daemons and touches no GPU itself.
"""

from __future__ import annotations

import datetime
import importlib.util
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from fploopd.bench import inputs as binputs
from fploopd.bench.report import gpu_name, kernel_family, short
from fploopd.bench.timing import (
    Measurement,
    deviation,
    free,
    measure,
    peak_gib,
    reset_peak,
    sync,
)
from fploopd.engine import random_models as models
from fploopd.spec import TEACACHE_DEFAULT_THRESHOLD

STAGES = ("text", "transformer", "vae", "section", "lora", "lowvram", "e2e", "tiers", "workers", "context-parallel")
DEFAULT_STAGES = STAGES[:-3]  # "all": every stage but tiers, workers and context-parallel
LORA_RANK = 32
# A prompt of about FramePack's length: the Llama runs over the template and 256 padded tokens either way.
BENCH_PROMPT = (
    "A lighthouse on a cliff in a storm at night, waves crashing on the rocks below, rain blown sideways "
    "by the wind, the beam sweeping slowly across low clouds, a seamless loop"
)
KEYS = ("median_s", "min_s", "max_s", "peak_gib", "vs_baseline", "max_abs_dev", "mean_abs_dev")


@dataclass
class BenchConfig:
    model: str = "tiny"  # tiny | full-random | PATH (a diffusers transformer folder)
    device: str = "cpu"
    out: Path = Path("bench.json")
    repeats: int = 5
    warmup: int = 2
    quick: bool = False
    steps: int = 25
    stages: tuple[str, ...] = DEFAULT_STAGES
    tier_budgets: tuple[float | None, ...] = (None, 48, 24, 16, 12, 8, 6)  # GiB; None: unlimited
    cp_devices: tuple[int, ...] = (1, 2, 4)  # the context-parallel stage's device counts
    attention: str = "auto"
    compile: bool | None = None
    fp8: bool | None = None  # None: measure FP8 where the GPU supports it
    teacache: float = TEACACHE_DEFAULT_THRESHOLD
    low_vram_gib: float = 8.0
    compile_ahead: bool = True  # e2e: a worker's compile helper (the daemon's default), or compile on first use
    section_repeats: int = 1
    compile_mode: str | None = None  # also time torch.compile in this mode (e.g. max-autotune-no-cudagraphs)
    command: str = ""
    # The workers stage: worker counts (smallest first: the 1-worker figure is the baseline), measured
    # loop jobs per worker, a deadline per count, a compile cache kept between runs (None: a fresh one).
    worker_counts: tuple[int, ...] = (1, 2, 4)
    jobs_per_worker: int = 2
    workers_timeout_s: float = 900.0
    compile_cache: Path | None = None

    @property
    def size(self) -> str:
        return "tiny" if self.model == "tiny" else "full"


@dataclass
class State:
    transformer: Any = None
    vae: Any = None
    spec: binputs.InputSpec | None = None
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    baseline_out: torch.Tensor | None = None
    best_bf16: dict[str, Any] | None = None  # runner options of the fastest bf16 variant
    best_fp8: dict[str, Any] | None = None
    best_fp8_attn: dict[str, Any] | None = None
    section_latents: dict[str, torch.Tensor] = field(default_factory=dict)
    applied: dict[str, Any] = field(default_factory=dict)
    weights: Any = None  # the transformer's PreparedWeights (fused projections, FP8)
    vae_accel: Any = None  # the VAE's VaeAccel (its compiled decoder is made once)
    fused: bool = False  # weights state: projections fused
    fp8_granularity: str | None = None  # weights state: FP8 weights present, of this granularity


class Bench:
    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.vae_dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.notes: list[str] = []
        self.profiles: dict[str, Any] = {}
        self.st = State()
        self.started = time.perf_counter()

    # -- bookkeeping ---------------------------------------------------------------------------------

    def record(
        self,
        name: str,
        m: Measurement | None,
        *,
        baseline: str | None = None,
        dev: tuple[float | None, float | None] = (None, None),
        **extra: Any,
    ) -> None:
        row: dict[str, Any] = dict.fromkeys(KEYS)
        if m is not None:
            row.update(median_s=m.median, min_s=min(m.times), max_s=max(m.times), peak_gib=m.peak_gib)
            row["repeats"] = len(m.times)
            base = self.results.get(baseline) if baseline else None
            if baseline == name:
                row["vs_baseline"] = 1.0
            elif base and base.get("median_s"):
                row["vs_baseline"] = m.median / base["median_s"]
        row["max_abs_dev"], row["mean_abs_dev"] = dev
        row.update(extra)
        self.results[name] = row
        logger.info("bench {}: {}", name, short(row))
        self.write()  # an interrupted run keeps every figure it measured

    def document(self) -> dict[str, Any]:
        spec = self.st.spec or self._spec()
        cfg = models.transformer_config(self.cfg.size)
        from fploopd.engine.forward import count_flops

        latent_tokens, cond_tokens = binputs.token_counts(spec)
        return {
            "gpu": gpu_name(self.device),
            "torch": torch.__version__,
            "model": self.cfg.model,
            "bucket": spec.bucket,
            "window": spec.window,
            "results": self.results,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.cfg.command,
            "python": platform.python_version(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "steps": self.cfg.steps,
            "tokens": {"latent": latent_tokens, "conditioning": cond_tokens},
            "flops_per_forward": count_flops(latent_tokens, cond_tokens, cfg),
            "applied": self.st.applied,
            "profile": self.profiles,
            "notes": self.notes,
            "errors": self.errors,
            "wall_s": time.perf_counter() - self.started,
        }

    def write(self) -> None:
        from fploopd.fsutil import write_json_atomic

        self.cfg.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.cfg.out, self.document())

    def run(self) -> dict[str, Any]:
        stages: dict[str, Callable[[], None]] = {
            "text": self.stage_text,
            "transformer": self.stage_transformer,
            "vae": self.stage_vae,
            "section": self.stage_section,
            "lora": self.stage_lora,
            "lowvram": self.stage_lowvram,
            "e2e": self.stage_e2e,
            "tiers": self.stage_tiers,
            "workers": self.stage_workers,
            "context-parallel": self.stage_context_parallel,
        }
        for name in STAGES:
            if name not in self.cfg.stages:
                continue
            t0 = time.perf_counter()
            try:
                stages[name]()
            except Exception as exc:  # noqa: BLE001  # keep measuring the other stages; the JSON says what broke
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                logger.error("bench stage {} failed: {}\n{}", name, exc, traceback.format_exc())
            logger.info("bench stage {} took {:.1f} s", name, time.perf_counter() - t0)
            self.write()
        return self.document()

    # -- helpers ----------------------------------------------------------------------------------------

    def _reps(self, heavy: bool = False) -> tuple[int, int]:
        if self.cfg.quick:
            return 1, 1
        if heavy:
            return self.cfg.section_repeats, 0
        return self.cfg.repeats, self.cfg.warmup

    def _ensure_transformer(self) -> None:
        if self.st.transformer is not None:
            return
        t0 = time.perf_counter()
        if self.cfg.model in ("tiny", "full-random"):
            self.st.transformer = models.build_transformer(self.cfg.size, self.device, self.dtype)
            label = "load.transformer_random_build"
        else:
            from diffusers import HunyuanVideoFramepackTransformer3DModel

            path = Path(self.cfg.model)
            path = path / "transformer" if (path / "transformer").is_dir() else path
            self.st.transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(
                path, torch_dtype=self.dtype
            ).to(self.device).eval()
            label = "load.transformer_from_disk"
        sync(self.device)
        self.record(label, Measurement([time.perf_counter() - t0], peak_gib(self.device)))
        self.st.spec = self._spec_for(self.st.transformer.config)
        self.st.kwargs = binputs.section_kwargs(self.st.spec, self.device, self.dtype, seed=0)

    def drop_models(self) -> None:
        """Release the models and the tensors of earlier stages (kept: what the JSON reports)."""
        self.st = State(spec=self.st.spec, applied=self.st.applied)
        free(self.device)

    def _ensure_vae(self) -> None:
        if self.st.vae is None:
            t0 = time.perf_counter()
            self.st.vae = models.build_vae(self.cfg.size, self.device, self.vae_dtype)
            sync(self.device)
            self.record("load.vae_random_build", Measurement([time.perf_counter() - t0], peak_gib(self.device)))

    def weights(self) -> Any:
        """The shared transformer's ``PreparedWeights``, made on first use."""
        from fploopd.engine.weights import PreparedWeights

        if self.st.weights is None:
            self.st.weights = PreparedWeights(self.st.transformer)
        return self.st.weights

    def vae_accel(self) -> Any:
        """The shared VAE's ``VaeAccel``, made on first use."""
        from fploopd.engine.vae_accel import VaeAccel

        if self.st.vae_accel is None:
            self.st.vae_accel = VaeAccel(self.st.vae)
        return self.st.vae_accel

    def _runner(self, **opts: Any) -> Any:
        """A runner for ``opts``; weight-level options (``fuse``, ``fp8_granularity``) are prepared in
        the shared transformer's weights first; ``offloader`` goes to the runner; the rest are its
        ``RunnerOptions``."""
        from fploopd.engine.forward import TransformerRunner
        from fploopd.engine.options import RunnerOptions

        t, weights = self.st.transformer, self.weights()
        opts = dict(opts)
        fuse, granularity = bool(opts.pop("fuse", False)), opts.pop("fp8_granularity", "row")
        offloader = opts.pop("offloader", None)
        if fuse != self.st.fused:
            weights.fuse() if fuse else weights.unfuse()
            self.st.fused, self.st.fp8_granularity = fuse, None
        if opts.get("fp8") and self.st.fp8_granularity != granularity:
            t0 = time.perf_counter()
            n = weights.quantize_fp8(granularity)
            sync(self.device)
            self.record(f"load.fp8_quantize_{granularity}", Measurement([time.perf_counter() - t0], peak_gib(self.device)),
                        linears=n)
            self.st.fp8_granularity = granularity
        return TransformerRunner(t, RunnerOptions(**opts), weights=weights, offloader=offloader)

    # -- stages -----------------------------------------------------------------------------------------

    def stage_text(self) -> None:
        """The prompt and the start image through ``encode``, as a job encodes them: the Llama over the
        template and the prompt padded to 256 tokens, CLIP-L, then SigLIP on the preprocessed image."""
        import numpy as np

        from fploopd.engine.encode import encode_image, encode_prompt

        dev = self.device
        t0 = time.perf_counter()
        comps = models.components(self.cfg.size, dev)
        sync(dev)
        self.record("load.text_encoders_random_build", Measurement([time.perf_counter() - t0], peak_gib(dev)))

        def encode() -> Any:
            comps.prompt_cache.clear()  # encode_prompt remembers prompts; time the encoding
            return encode_prompt(comps, BENCH_PROMPT)

        reps, warm = self._reps()
        m = measure(encode, dev, repeats=reps, warmup=warm)
        self.record("prompt_encode", m, tokens=m.value.tokens)
        image = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
        m = measure(lambda: encode_image(comps, image), dev, repeats=reps, warmup=warm)
        self.record("image_encode", m, tokens=list(m.value.shape))
        comps = m = None
        free(dev)

    def stage_transformer(self) -> None:
        from fploopd.engine import accel
        from fploopd.engine.attention import cudnn_fp8_available, fa4_would_help
        from fploopd.engine.fp8 import fp8_supported

        self._ensure_transformer()
        t, kw, dev = self.st.transformer, self.st.kwargs, self.device
        reps, warm = self._reps()

        with torch.inference_mode():
            base = measure(lambda: t(**kw, return_dict=False)[0], dev, repeats=reps, warmup=warm)
        self.st.baseline_out = base.value
        self.record("forward.baseline", base, baseline="forward.baseline", note="diffusers stock forward, default SDPA")
        del base

        # What optimize() would pick on this device (attention timed; compile if Triton is there).
        applied = accel.optimize(t, device=dev, compile=self.cfg.compile, fp8=False, fuse=False,
                                 attention=self.cfg.attention).applied
        self.st.applied = {k: v for k, v in applied.items() if k != "notes"}
        if fa4_would_help(dev) and "fa4" not in applied.get("attention_ms", {}):
            self.notes.append("flash-attn-4 is not installed: FlashAttention 4 was not timed (pip install "
                              "'fploopd[fa4]'; on an H200 it made the compiled forward 0.71x instead of about 0.77x)")
            logger.warning("bench: {}", self.notes[-1])
        attn, comp = applied["attention"], applied["compile"]
        mode = "compiled" if comp else "eager"
        bf16: list[tuple[str, dict[str, Any]]] = [("forward.ours_eager_sdpa", {"attention": "sdpa", "compile": False})]
        if attn != "sdpa":
            bf16.append((f"forward.ours_eager_{attn}", {"attention": attn, "compile": False}))
        if comp:
            bf16.append((f"forward.ours_compiled_{attn}", {"attention": attn, "compile": True}))
        bf16.append((f"forward.ours_{mode}_{attn}_fused", {"attention": attn, "compile": comp, "fuse": True}))
        best = self._run_forward_variants(bf16)
        self.st.best_bf16 = best

        fp8_ok = self.cfg.fp8 is not False and (fp8_supported(dev) or dev.type == "cpu")
        if fp8_ok and best is not None:
            fuse = bool(best.get("fuse"))
            tag = f"forward.ours_{mode}_{attn}{'_fused' if fuse else ''}_fp8"
            fp8 = [(tag, dict(best, fp8=True, fp8_granularity="row")),
                   (tag + "_tensorwise", dict(best, fp8=True, fp8_granularity="tensor"))]
            if dev.type == "cuda" and importlib.util.find_spec("sageattention"):
                fp8.append((tag.replace(f"_{attn}", "_sage"), dict(best, attention="sage", fp8=True, fp8_granularity="row")))
            self.st.best_fp8 = self._run_forward_variants(fp8)
            if dev.type == "cuda" and cudnn_fp8_available():
                # FP8 attention (cuDNN) on top: lossy, kept apart from the FP8-linears figure.
                fp8_attn = dict(best, attention="cudnn_fp8", fp8=True, fp8_granularity="row")
                self.st.best_fp8_attn = self._run_forward_variants(
                    [(f"forward.ours_{mode}_cudnn_fp8attn{'_fused' if fuse else ''}_fp8", fp8_attn)]
                )
        if comp and self.cfg.compile_mode:
            opts = {"attention": attn, "compile": True, "compile_mode": self.cfg.compile_mode}
            self._run_forward_variants([(f"forward.ours_compiled_{self.cfg.compile_mode}_{attn}", opts)])
        if dev.type == "cuda":
            for label, opts in (("bf16", self.st.best_bf16), ("fp8", self.st.best_fp8)):
                if opts is not None:
                    try:
                        self.profiles[label] = self._profile(opts)
                    except Exception as exc:  # noqa: BLE001
                        self.errors[f"profile.{label}"] = f"{type(exc).__name__}: {exc}"

    def _run_forward_variants(self, variants: list[tuple[str, dict[str, Any]]]) -> dict[str, Any] | None:
        """Time each variant against the baseline's output; return the fastest one's options."""
        kw, dev = self.st.kwargs, self.device
        reps, warm = self._reps()
        best: tuple[float, dict[str, Any]] | None = None
        for name, opts in variants:
            try:
                t0 = time.perf_counter()
                runner = self._runner(**opts)
                setup = time.perf_counter() - t0
                runner.reset(reps + warm + 1)
                t0 = time.perf_counter()
                runner(**kw)  # first call: compile / cuDNN plans, reported separately
                sync(dev)
                first = time.perf_counter() - t0
                m = measure(lambda r=runner: r(**kw), dev, repeats=reps, warmup=max(0, warm - 1))
                self.record(name, m, baseline="forward.baseline", dev=deviation(m.value, self.st.baseline_out),
                            first_call_s=first, setup_s=setup, options=opts)
                if best is None or m.median < best[0]:
                    best = (m.median, opts)
                del m, runner
            except Exception as exc:  # noqa: BLE001
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                logger.error("bench {} failed: {}\n{}", name, exc, traceback.format_exc())
            free(dev)
        return best[1] if best else None

    def _profile(self, opts: dict[str, Any]) -> dict[str, Any]:
        """Device time of one forward by kernel family (GEMM, attention, fused Triton, other)."""
        from torch.profiler import ProfilerActivity, profile

        runner = self._runner(**opts)
        runner(**self.st.kwargs)
        sync(self.device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner(**self.st.kwargs)
            sync(self.device)
        rows = []
        for e in prof.key_averages():
            us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
            if us > 0 and not e.key.startswith(("aten::", "ProfilerStep", "cuda")):
                rows.append((e.key, us / 1e3, e.count))
        families: dict[str, float] = {}
        for key, ms, _ in rows:
            families[kernel_family(key)] = families.get(kernel_family(key), 0.0) + ms
        rows.sort(key=lambda r: -r[1])
        out = {"options": opts, "families_ms": families, "total_ms": sum(families.values()),
               "top": [[k[:120], round(ms, 3), n] for k, ms, n in rows[:20]]}
        logger.info("profile {}: {}", opts, {k: round(v, 1) for k, v in families.items()})
        return out

    def stage_vae(self) -> None:
        self._ensure_vae()
        vae, dev, spec = self.st.vae, self.device, self.st.spec or self._spec()
        reps, warm = self._reps()
        g = torch.Generator().manual_seed(1)
        image = torch.rand((1, 3, 1, spec.latent_h * 8, spec.latent_w * 8), generator=g).mul(2).sub(1)
        image = image.to(dev, self.vae_dtype)
        latents = torch.randn((1, 16, 2 * spec.window, spec.latent_h, spec.latent_w), generator=g).to(dev, self.vae_dtype)
        torch.backends.cudnn.benchmark = False
        with torch.inference_mode():
            enc = measure(lambda: vae.encode(image).latent_dist.mode(), dev, repeats=reps, warmup=warm)
            self.record("vae.encode_image", enc)
            base = measure(lambda: vae.decode(latents).sample, dev, repeats=max(1, reps // 2), warmup=1)
            self.record("vae.decode_section.baseline", base, baseline="vae.decode_section.baseline",
                        frames=int(base.value.shape[2]), note="stock diffusers decode, cudnn.benchmark off")
            t0 = time.perf_counter()
            applied = self.vae_accel().apply(dev, compile=self.cfg.compile)
            _ = vae.decode(latents).sample  # first decode: compiles (reported, not timed)
            sync(dev)
            first = time.perf_counter() - t0
            ours = measure(lambda: vae.decode(latents).sample, dev, repeats=max(1, reps // 2), warmup=1)
            self.vae_accel().restore()
            self.record("vae.decode_section.ours", ours, baseline="vae.decode_section.baseline",
                        dev=deviation(ours.value, base.value), applied=applied, first_call_s=first,
                        note="compiled decoder, channels-last weights" if applied["compile"] else "stock decode")
        del enc, base, ours
        free(dev)

    def _spec(self) -> binputs.InputSpec:
        self.st.spec = self._spec_for(models.transformer_config(self.cfg.size))
        return self.st.spec

    def _spec_for(self, config: Any) -> binputs.InputSpec:
        return binputs.full_spec() if self.cfg.size == "full" else binputs.tiny_spec(config)

    def _section(self, model: Any, *, optimized_decode: bool) -> torch.Tensor:
        """One 25-step section with FramePack's sampler plus the decode of its two windows (stock,
        or as ``VaeAccel`` makes it)."""
        from fploopd.core.plan import inverted_section
        from fploopd.engine.denoiser import Guidance
        from fploopd.engine.sections import Conditioning, SectionContext, sample_section

        kw, spec = self.st.kwargs, self.st.spec
        positive = {k: kw[k] for k in ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "guidance")}
        cond = Conditioning(positive=positive, negative=None, image_embeds=kw["image_embeds"])
        ctx = SectionContext(
            indices=inverted_section(spec.blank, spec.window),
            clean=kw["latents_clean"].float(),
            history_2x=kw["latents_history_2x"].float(),
            history_4x=kw["latents_history_4x"].float(),
        )
        gen = torch.Generator().manual_seed(31337)
        latents = sample_section(
            model, cond, ctx, latent_size=(spec.latent_h, spec.latent_w), steps=self.cfg.steps,
            generator=gen, guidance=Guidance(), device=self.device, dtype=self.dtype,
        )
        vae = self.st.vae
        if optimized_decode:
            self.vae_accel().apply(self.device, compile=self.cfg.compile)
        z = torch.cat([latents, kw["latents_history_4x"][:, :, : spec.window].float().cpu()], dim=2)
        z = (z / vae.config.scaling_factor).to(self.device, vae.dtype)
        with torch.inference_mode():
            _ = vae.decode(z).sample
        self.vae_accel().restore()
        return latents

    def _warm_section(self, model: Any, *, optimized_decode: bool) -> None:
        """One forward and one decode of the section's shapes, untimed: compiling and kernel plans
        stay out of the single timed section also when this stage runs alone (``--stages section``)."""
        spec, vae = self.st.spec, self.st.vae
        model.reset(self.cfg.steps)
        with torch.inference_mode():
            model(**self.st.kwargs)
            if optimized_decode:
                self.vae_accel().apply(self.device, compile=self.cfg.compile)
            z = torch.randn((1, 16, 2 * spec.window, spec.latent_h, spec.latent_w), generator=torch.Generator().manual_seed(2))
            _ = vae.decode(z.to(self.device, vae.dtype)).sample
            self.vae_accel().restore()
        sync(self.device)

    def stage_section(self) -> None:
        from fploopd.engine.denoiser import StockTransformer
        from fploopd.engine.forward import RunnerStats
        from fploopd.engine.fp8 import fp8_supported

        self._ensure_transformer()
        self._ensure_vae()
        dev = self.device
        reps, warm = self._reps(heavy=True)
        stock = StockTransformer(self.st.transformer)
        self._warm_section(stock, optimized_decode=False)
        base = measure(lambda: self._section(stock, optimized_decode=False), dev, repeats=reps, warmup=warm)
        ref = base.value
        self.record("section.baseline", base, baseline="section.baseline",
                    note=f"{self.cfg.steps} stock forwards (UniPC) + stock decode of 2 windows")
        best = self._best_bf16()
        variants: list[tuple[str, dict[str, Any]]] = [
            ("section.ours_bf16", dict(best, fp8=False)),
            ("section.ours_bf16_teacache", dict(best, fp8=False, teacache_threshold=self.cfg.teacache)),
        ]
        if self.st.best_fp8 is None and self.cfg.fp8 is not False and (fp8_supported(dev) or dev.type == "cpu"):
            self.st.best_fp8 = dict(best, fp8=True, fp8_granularity="row")
        if self.st.best_fp8 is not None:
            variants.append(("section.ours_fp8", dict(self.st.best_fp8)))
        if self.st.best_fp8_attn is not None:
            variants.append(("section.ours_fp8_fp8attn", dict(self.st.best_fp8_attn)))
        for name, opts in variants:
            try:
                runner = self._runner(**opts)
                self._warm_section(runner, optimized_decode=True)
                runner.stats = RunnerStats()
                m = measure(lambda r=runner: self._section(r, optimized_decode=True), dev, repeats=reps, warmup=warm)
                self.record(name, m, baseline="section.baseline", dev=deviation(m.value, ref), options=opts,
                            forwards_computed=runner.stats.computed, forwards_skipped=runner.stats.skipped)
                self.st.section_latents[name] = m.value
            except Exception as exc:  # noqa: BLE001
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                logger.error("bench {} failed: {}\n{}", name, exc, traceback.format_exc())
            free(dev)

    def stage_lora(self) -> None:
        """LoRA merge and switch times on this model, and a section with a merged LoRA against one
        without (same options, same code path as ``stage_section``)."""
        from fploopd.engine.lora_merge import LoraState, ScaledLora

        self._ensure_transformer()
        self._ensure_vae()
        dev, t = self.device, self.st.transformer
        a, b = (self._bench_lora(seed) for seed in (1, 2))
        state = LoraState(t, device=dev if dev.type == "cuda" else None, base_source=self._lora_base_source())
        base_from = "files" if state.base_source is not None else "host copies"
        sync(dev)
        for name, loras in (("lora.merge_first", [a]), ("lora.switch_a_to_b", [b]), ("lora.switch_b_to_a", [a]),
                            ("lora.merge_two", [a, b]), ("lora.restore_base", [])):  # fmt: skip
            t0 = time.perf_counter()
            stats = state.apply([ScaledLora(x, 0.8) for x in loras])
            sync(dev)
            self.record(name, Measurement([time.perf_counter() - t0], peak_gib(dev)), rewritten=stats.rewritten,
                        restored=stats.restored, rank=LORA_RANK, modules=len(a.patches), base_from=base_from)  # fmt: skip
        opts = dict(self._best_bf16(), fp8=False)
        reps, warm = self._reps(heavy=True)
        for name, loras in (("section.lora_none", []), ("section.lora_merged", [a])):
            state.apply([ScaledLora(x, 0.8) for x in loras])
            graphs = _compiled_graphs()
            runner = self._runner(**opts)
            self._warm_section(runner, optimized_decode=True)
            m = measure(lambda r=runner: self._section(r, optimized_decode=True), dev, repeats=reps, warmup=warm)
            # Compiled blocks take the weights as arguments: a merge in place compiles nothing new.
            self.record(name, m, baseline="section.lora_none", options=opts, graphs_compiled=_compiled_graphs() - graphs,
                        note="the same section with the LoRA merged; vs_baseline 1.0 = no per-step cost")  # fmt: skip
            del runner, m
            free(dev)
        state.apply([])  # the later stages time the base weights
        del a, b, state
        free(dev)

    def _bench_lora(self, seed: int) -> Any:
        from fploopd.engine.lora import lora_from_tensors, resolve_lora
        from fploopd.engine.lora_testdata import random_musubi_lora

        tensors = random_musubi_lora(self.st.transformer, rank=LORA_RANK, seed=seed, device=self.device)
        lora = lora_from_tensors(f"bench-{seed}.safetensors", tensors, sha256=f"bench-{seed}")
        return resolve_lora(lora, self.st.transformer)

    def _lora_base_source(self) -> Any:
        """A model from disk: base weights read back from its files, as a worker does; a random
        model has no files, so the state keeps host copies of the touched weights."""
        from fploopd.engine.lora_merge import safetensors_base_source

        if self.cfg.model in ("tiny", "full-random"):
            return None
        path = Path(self.cfg.model)
        return safetensors_base_source(path / "transformer" if (path / "transformer").is_dir() else path)

    def stage_lowvram(self) -> None:
        from fploopd.engine.streaming import enable_low_vram

        dev = self.device
        if dev.type != "cuda":
            self.record("section.ours_low_vram", None, note="low-VRAM mode needs a CUDA device")
            return
        self._ensure_transformer()
        self._ensure_vae()
        t = self.st.transformer
        self.weights().remove_fp8()
        self.st.fp8_granularity = None
        self.st.baseline_out = None
        free(dev)
        opts = dict(self._best_bf16(), fp8=False)
        if "section.ours_bf16" not in self.results:  # the high-VRAM reference, same options, same run
            reps, warm = self._reps(heavy=True)
            runner = self._runner(**opts)
            runner(**self.st.kwargs)  # compile / plans outside the timing
            m = measure(lambda: self._section(runner, optimized_decode=True), dev, repeats=reps, warmup=warm)
            again = self._section(runner, optimized_decode=True)  # run-to-run noise of the reference
            self.record("section.ours_bf16", m, baseline="section.baseline", options=opts,
                        repeat_max_abs_dev=deviation(again, m.value)[0])
            self.st.section_latents["section.ours_bf16"] = m.value
            del runner, m
            free(dev)
        t0 = time.perf_counter()
        streamer = enable_low_vram(t, dev, prefetch=2, weights=self.weights())
        sync(dev)
        free(dev)
        setup = time.perf_counter() - t0
        total = torch.cuda.get_device_properties(dev).total_memory
        limit = self.cfg.low_vram_gib * 2**30
        resident = torch.cuda.memory_allocated(dev) / 2**30
        self.st.vae.enable_tiling()
        opts["fuse"] = False  # streamed blocks run their plain linears (enable_low_vram unfused them)
        self.st.fused = False
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(limit / total, index)
        try:
            reps, warm = self._reps(heavy=True)
            runner = self._runner(offloader=streamer, **opts)
            reset_peak(dev)
            # Low mode's decode is the stock tiled one, as load_components' low mode runs it.
            m = measure(lambda: self._section(runner, optimized_decode=False), dev, repeats=reps, warmup=warm)
            high = self.results.get("section.ours_bf16", {}).get("median_s")
            ref = self.st.section_latents.get("section.ours_bf16")
            self.record("section.ours_low_vram", m, baseline="section.baseline", dev=deviation(m.value, ref),
                        vs_high_vram=(m.median / high) if high else None, limit_gib=self.cfg.low_vram_gib,
                        setup_s=setup, resident_gib_before=resident, streamed_gb_per_forward=streamer.bytes_per_pass / 1e9,
                        options=opts, note="blocks streamed from pinned host memory; VAE tiled; dev vs section.ours_bf16")
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
            self.st.vae.disable_tiling()

    def _best_bf16(self) -> dict[str, Any]:
        """The transformer stage's fastest bf16 options, or what ``accel.optimize`` would choose."""
        if self.st.best_bf16 is None:
            from fploopd.engine import accel

            t = self.st.transformer
            applied = accel.optimize(
                t, device=self.device, compile=self.cfg.compile, fp8=False, attention=self.cfg.attention
            ).applied
            self.st.applied = self.st.applied or {k: v for k, v in applied.items() if k != "notes"}
            self.st.best_bf16 = {"attention": applied["attention"], "compile": applied["compile"]}
        return self.st.best_bf16

    def stage_e2e(self) -> None:
        from fploopd.bench.e2e import run_e2e, run_e2e_apart

        if set(self.cfg.stages) - {"e2e"}:
            run_e2e_apart(self)  # a worker's first job needs a fresh process
        else:
            run_e2e(self)


    def stage_tiers(self) -> None:
        from fploopd.bench.tiers import run_tiers

        if set(self.cfg.stages) - {"tiers"}:
            self.notes.append("tiers ran after other stages in one process: their compiled graphs and memory stayed")
        run_tiers(self)

    def stage_workers(self) -> None:
        from fploopd.bench.workers import run_workers

        run_workers(self)

    def stage_context_parallel(self) -> None:
        from fploopd.bench.context_parallel import run_context_parallel

        if set(self.cfg.stages) - {"context-parallel"}:
            self.notes.append("context-parallel ran after other stages in one process: their graphs and memory stayed")
        run_context_parallel(self)


def _compiled_graphs() -> int:
    """Graphs torch.compile has made so far in this process (0 where it never ran)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return 0
    return int(counters["stats"]["unique_graphs"])


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    logger.info("bench: {} on {} (stages {})", cfg.model, cfg.device, ",".join(cfg.stages))
    doc = Bench(cfg).run()
    logger.info("bench written to {}", cfg.out)
    return doc


if __name__ == "__main__":  # pragma: no cover - convenience
    sys.exit("use: fploopd bench")
