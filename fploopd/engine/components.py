"""Load the FramePack components and place them on a device under a VRAM policy.

Dtypes follow FramePack: the transformer always runs in bf16 (its linears in FP8 in the FP8 tiers);
the text encoders, VAE and SigLIP in fp16 on an accelerator and fp32 on CPU. On a GPU the placement
is a VRAM tier (``tiers``: chosen from free memory, or named, or within a GiB budget):

- ``bf16-resident`` (``vram`` "high" before tiers): every model resident on the device.
- the others (``vram`` "low" before tiers was ``bf16-streamed``): the transformer's blocks are
  laid out by ``streaming.place_blocks`` (FP8 copies resident, or some blocks streamed from pinned
  host memory); the Llama text encoder (16 GB) is group-offloaded block by block (diffusers hooks
  move each block in just before it runs); CLIP, SigLIP and the VAE wait on the CPU and move in only
  for their phase (``Components.on_device``); VAE tiling and slicing are on, as FramePack does in low
  VRAM, unless the tier has room for the compiled untiled decode (the VAE then stays).

On CPU nothing is offloaded.

LoRAs are merged into the transformer's weights (``Components.apply_loras``), never applied per
step; ``lora_state`` switches between sets exactly, reading base weights back from the
transformer's own files.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from loguru import logger

from fploopd.engine.accel import optimize
from fploopd.engine.compile_ahead import CompileAhead
from fploopd.engine.cuda_env import prefer_expandable_segments
from fploopd.engine.forward import TransformerRunner
from fploopd.engine.fp8 import block_fp8_linears, fp8_supported
from fploopd.engine.layout import COMPONENTS
from fploopd.engine.loaders import hf_loader, quiet_progress
from fploopd.engine.lora import LoraFile, ResolvedLora, check_scale, load_lora, resolve_lora
from fploopd.engine.lora_merge import LoraState, MergeStats, ScaledLora, safetensors_base_source, set_identity
from fploopd.engine.options import RunnerOptions
from fploopd.engine.sources import ModelPaths
from fploopd.engine.streaming import BlockParking, BlockStreamer, park_resident, place_blocks, refresh_fp8
from fploopd.engine.tiers import FULL_SIZE, ModelSizes, TierChoice, choose_tier, parse_vram
from fploopd.engine.vae_accel import VaeAccel
from fploopd.engine.weights import PreparedWeights
from fploopd.errors import FploopdError, ModelError

GB = 10**9
GiB = 2**30
VARIANTS = ("i2v", "f1")
# Components that low mode group-offloads; the others move whole (on_device).
GROUP_OFFLOADED = ("text_encoder",)  # the transformer streams through streaming.BlockStreamer instead
MODEL_NAMES = ("transformer", "text_encoder", "text_encoder_2", "vae", "image_encoder")
_HASH_CONTENT_MAX = 1 << 20  # files up to 1 MiB are hashed whole; bigger ones by name and size
_BLOB = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Components:
    """Every model FramePack needs, on one device, with how they are placed."""

    transformer: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any
    tokenizer_2: Any
    vae: Any
    image_encoder: Any
    feature_extractor: Any
    device: torch.device
    vram: str  # "high" (bf16-resident, or any placement on the CPU) | "low" (the other tiers: encoders visit)
    identity: dict[str, Any]
    variant: str = "i2v"
    offloaded: frozenset[str] = field(default_factory=frozenset)  # names under group-offload hooks
    # Streamed tiers: streams the transformer's blocks from pinned host memory.
    streamer: BlockStreamer | None = None
    # Tiers that park their resident blocks on the host for the VAE decode (``tier.park_for_decode``).
    parking: BlockParking | None = None
    fp8: bool = False  # FP8 matmuls in the transformer (the FP8 tiers, or --fp8 in bf16-resident)
    tier: TierChoice | None = None  # the VRAM tier on a GPU (None on the CPU)
    compile_vae: bool = False  # compile the VAE decoder (high mode on a GPU): for long-lived workers
    accel: dict[str, Any] = field(default_factory=dict)  # what accel.optimize applied, for manifests
    # How the transformer runs (accel.optimize's choice on a GPU; plain eager SDPA elsewhere) and
    # the weights prepared for it (fused projections, FP8), owned here rather than by the modules.
    runner_options: RunnerOptions = field(default_factory=RunnerOptions)
    weights: PreparedWeights | None = None
    vae_accel: VaeAccel | None = None  # the VAE decoder's compile, switched on in high mode on a GPU
    # A worker's compile helper (compile_ahead): compiled calls run eagerly until it has made them.
    compile_ahead: CompileAhead | None = None
    # Prompt embeddings by prompt (encode.encode_prompt): queues repeat prompts, and in low mode
    # each encode streams the 8B Llama through the GPU.
    prompt_cache: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    # The LoRA set merged into the transformer now, and how to get back to the base weights.
    lora_state: LoraState | None = None
    base_identity: dict[str, Any] | None = None  # ``identity`` without the LoRA set (set on first apply)
    _resolved: dict[str, ResolvedLora] = field(default_factory=dict)  # sha256 -> the active set's LoRAs

    @property
    def transformer_dtype(self) -> torch.dtype:
        return torch.bfloat16

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the text encoders, the VAE and SigLIP (fp16 on an accelerator, fp32 on CPU)."""
        return encoder_dtype(self.device)

    def runner(self, *, teacache_threshold: float | None = None) -> TransformerRunner:
        """The transformer callable for one job: this worker's options and prepared weights, the
        job's TeaCache threshold (None or 0: off)."""
        return TransformerRunner(
            self.transformer,
            self.runner_options.with_teacache(teacache_threshold),
            weights=self.weights,
            offloader=self.streamer,
            ahead=self.compile_ahead,
        )

    def apply_loras(self, loras: Sequence[tuple[LoraFile | Path | str, float]]) -> MergeStats:
        """Make the transformer's weights base + ``loras`` (file or path, scale), whatever set was
        merged before (``[]``: the base weights, bit for bit). ``identity`` then names the set
        (each LoRA's name, sha256 and scale), so checkpoints, latent files and manifests record it;
        without LoRAs it is exactly the identity of the plain model.

        - FP8: the FP8 copies are made from the bf16 weights, so they are made again after a change,
          at the same granularity.
        - Compiled blocks take the weights as arguments (graph inputs, not constants): a merge in
          place and new FP8 tensors of the same shapes need no recompilation.
        - Streamed tiers: between runs the streamed blocks' parameters are their pinned host copies,
          so the merge writes there and the next run streams the merged weights; in the FP8 tiers
          the linears' bf16 weights live on the host, and their FP8 copies (resident or streamed)
          are made again from them.
        Call it between runs only, never while a run is sampling."""
        if self.lora_state is None:
            raise FploopdError("these components were loaded without a LoRA state (load them with load_components)")
        entries = [ScaledLora(self._resolve(lora), check_scale(_lora_name(lora), scale)) for lora, scale in loras]
        stats = self.lora_state.apply(entries)
        self._resolved = {e.lora.sha256: e.lora for e in entries}  # keep the merged set: a repeat is free
        if stats.rewritten:
            self._refresh_fp8()
            if self.parking is not None:
                self.parking.save()
        if self.base_identity is None:
            self.base_identity = dict(self.identity)
        self.identity = identity_with_loras(self.base_identity, set_identity(entries))
        return stats

    def _resolve(self, lora: LoraFile | Path | str) -> ResolvedLora:
        """The LoRA mapped onto this transformer; the same object for a file of the active set, so
        that applying the same set again changes nothing."""
        assert self.lora_state is not None
        file = lora if isinstance(lora, LoraFile) else load_lora(lora)
        known = self._resolved.get(file.sha256)
        if known is not None and file.sha256:
            return known
        return resolve_lora(file, self.lora_state.index)

    def _refresh_fp8(self) -> None:
        if self.tier is not None and not self.tier.resident_everything:
            if self.weights is not None:
                refresh_fp8(self.transformer, self.device, self.weights, self.streamer)
            return
        weights = self.weights
        if weights is not None and weights.fp8_granularity is not None:
            granularity = weights.fp8_granularity
            weights.remove_fp8()
            weights.quantize_fp8(granularity)

    def room_for_decode(self) -> contextlib.AbstractContextManager[None]:
        """The resident blocks off the GPU for a decode, where the tier parks them (else nothing)."""
        return self.parking.parked() if self.parking is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def on_device(self, *modules: torch.nn.Module) -> Iterator[None]:
        """Have ``modules`` on the device for a phase; in low mode move them back to the CPU after.

        A no-op in high mode, on CPU, and for group-offloaded models (their hooks do the moving).
        Nesting is fine: only the call that moved a module moves it back. A tier with room for it
        keeps the VAE resident.
        """
        if self.vram != "low" or self.device.type == "cpu":
            yield
            return
        hooked = {id(getattr(self, n)) for n in self.offloaded}
        if self.tier is not None and self.tier.vae_resident:
            hooked.add(id(self.vae))
        moved = [m for m in modules if id(m) not in hooked and _module_device(m) != self.device]
        if self.device.type == "cuda":
            # The streamed blocks' buffers stay cached in block-sized pieces: give them back, so
            # that a phase's larger tensors (a decode's) find room under a tight budget.
            torch.cuda.empty_cache()
        for m in moved:
            m.to(self.device)
        try:
            yield
        finally:
            for m in moved:
                m.to("cpu")
            if moved and self.device.type == "cuda":
                torch.cuda.empty_cache()


def identity_with_loras(identity: dict[str, Any], loras: list[dict[str, object]]) -> dict[str, Any]:
    """A model identity with the LoRA set merged into it (``loras`` key); exactly ``identity``
    without one, so that checkpoints and manifests of LoRA-less jobs stay as they were."""
    plain = {k: v for k, v in identity.items() if k != "loras"}
    return {**plain, "loras": loras} if loras else plain


def _lora_name(lora: LoraFile | Path | str) -> str:
    return lora.name if isinstance(lora, LoraFile) else Path(lora).name


def encoder_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "cpu" else torch.float16


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = the first CUDA GPU if there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if "," in device:
        raise FploopdError(f"one device per model set, got {device!r}; the daemon starts one worker per device")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise FploopdError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cpu":
        return torch.device("cpu")  # cpu:N names one of several CPU workers (tests, benches); one CPU device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FploopdError(f"device {device!r} asked for, but torch sees no CUDA GPU; use --device cpu or fix the driver")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FploopdError(f"device {device!r} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def model_sizes(models: dict[str, Any]) -> ModelSizes:
    """What the tiers place, counted on the loaded modules (the working memory is the full-size
    figure at the 640 bucket: activations depend on the video size, not on the weights)."""
    t = models["transformer"]

    def fp8_bytes(block: torch.nn.Module) -> int:
        return _module_bytes(block) - sum(lin.weight.numel() * (lin.weight.element_size() - 1) for _, lin in block_fp8_linears(block))

    doubles, singles = list(t.transformer_blocks), list(t.single_transformer_blocks)
    blocks = sum(_module_bytes(b) for b in doubles + singles)
    llama = models["text_encoder"]
    return ModelSizes(
        double_bf16=max((_module_bytes(b) for b in doubles), default=0),
        double_fp8=max((fp8_bytes(b) for b in doubles), default=0),
        doubles=len(doubles),
        single_bf16=max((_module_bytes(b) for b in singles), default=0),
        single_fp8=max((fp8_bytes(b) for b in singles), default=0),
        singles=len(singles),
        transformer_rest=_module_bytes(t) - blocks,
        text_encoder=_module_bytes(llama),
        text_encoder_visit=max([_module_bytes(m) for m in _groups(llama)], default=0),
        small_encoders=_module_bytes(models["text_encoder_2"]) + _module_bytes(models["image_encoder"]),
        vae=_module_bytes(models["vae"]),
        work=FULL_SIZE.work,
        decode_work=FULL_SIZE.decode_work,
        untiled_decode=FULL_SIZE.untiled_decode,
    )


def _groups(module: torch.nn.Module) -> list[torch.nn.Module]:
    """What block-level group offloading moves at once: each layer of a layer list, each other child."""
    out: list[torch.nn.Module] = []
    for child in module.children():
        out += list(child) if isinstance(child, torch.nn.ModuleList) else [child]
    return out


def gpu_tier(device: torch.device, vram: str | float, sizes: ModelSizes, *, fp8: bool = False, held: int = 0) -> TierChoice:
    """The tier for ``device`` now: its free memory (plus ``held``, bytes our models already take
    there) and compute capability, the user's ``vram``, and the host memory available with the
    models loaded (for parking blocks during the decode)."""
    free, _ = torch.cuda.mem_get_info(device)
    return choose_tier(free + held, torch.cuda.get_device_capability(device), parse_vram(vram), sizes, prefer_fp8=fp8,
                       host_free=psutil.virtual_memory().available)  # fmt: skip


def load_components(
    paths: ModelPaths,
    device: str = "auto",
    vram: str = "auto",
    variant: str = "i2v",
    *,
    fp8: bool = False,
    compile_vae: bool = False,
) -> Components:
    """Load every component with the same ``from_pretrained`` calls as FramePack, then place them.

    ``compile_vae``: compile the VAE decoder on a GPU in high mode (about 1.9x faster decodes after
    a compile of about a minute per new shape: worth it in a worker that lives for many jobs)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    parse_vram(vram)  # a bad value fails before minutes of loading
    prefer_expandable_segments()  # one-shot commands: before the first CUDA allocation
    transformer_path = paths.transformer if variant == "i2v" else paths.transformer_f1
    if transformer_path is None:
        raise ModelError(
            f"the F1 transformer ({COMPONENTS['transformer_f1'].repo}) was not found in {paths.source}; "
            "put it beside the other weights or use the i2v variant",
            field="model",
        )
    dev = resolve_device(device)
    low = encoder_dtype(dev)
    with quiet_progress():
        models = {
            "transformer": _load("transformer", transformer_path, _transformer_loader()),
            "text_encoder": _load("text_encoder", paths.text_encoder, hf_loader("LlamaModel", low)),
            "tokenizer": _load("tokenizer", paths.tokenizer, hf_loader("AutoTokenizer")),
            "text_encoder_2": _load("text_encoder_2", paths.text_encoder_2, hf_loader("CLIPTextModel", low)),
            "tokenizer_2": _load("tokenizer_2", paths.tokenizer_2, hf_loader("CLIPTokenizer")),
            "vae": _load("vae", paths.vae, _vae_loader(low)),
            "image_encoder": _load("image_encoder", paths.image_encoder, hf_loader("SiglipVisionModel", low)),
            "feature_extractor": _load("feature_extractor", paths.feature_extractor, _feature_extractor_loader()),
        }
    # Before placement and FP8: the state reads base weights back from the files just loaded.
    lora_state = _lora_state(models["transformer"], transformer_path, dev)
    return placed_components(models, dev, model_identity(paths, variant), vram=vram, variant=variant, fp8=fp8,
                             compile_vae=compile_vae, lora_state=lora_state)  # fmt: skip


def placed_components(
    models: dict[str, Any],
    device: str | torch.device,
    identity: dict[str, Any],
    *,
    vram: str = "auto",
    variant: str = "i2v",
    fp8: bool = False,
    compile_vae: bool = False,
    lora_state: LoraState | None = None,
) -> Components:
    """``models`` (``load_components``' dict: loaded from files, or built elsewhere such as the
    benchmarks' random weights) placed on ``device`` as a worker places them: the VRAM tier chosen
    from the card, then ``place`` (``accelerate`` and the compiled decoder when resident).
    ``lora_state``: None = base weights copied on a first LoRA (no files to read them back from)."""
    dev = resolve_device(device)
    for name in MODEL_NAMES:
        models[name].eval().requires_grad_(False)
    tier = None
    if dev.type == "cuda":  # the worker's first line: which tier, and why
        # Models already on the card (built there) are memory the placement may use.
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        held = sum(_module_bytes(models[n]) for n in MODEL_NAMES if _module_device(models[n]) == torch.device("cuda", index))
        tier = gpu_tier(dev, vram, model_sizes(models), fp8=fp8, held=held)
        logger.info("{}: VRAM tier {}", dev, tier.summary())
        fp8 = tier.fp8 or (fp8 and fp8_supported(dev))
    elif parse_vram(vram).tier not in (None, "bf16-resident"):
        logger.info("vram = {} has no effect on {}: nothing is offloaded", vram, dev)
    if lora_state is None:
        lora_state = LoraState(models["transformer"], device=dev if dev.type == "cuda" else None)
    if fp8:  # changes the results: part of what a manifest and a checkpoint belong to
        identity = {**identity, "fp8": True}
    mode = "high" if tier is None or tier.resident_everything else "low"
    components = Components(
        **models, device=dev, vram=mode, identity=identity, variant=variant, fp8=fp8, compile_vae=compile_vae,
        lora_state=lora_state, tier=tier,
    )
    place(components)
    return components


def _lora_state(transformer: torch.nn.Module, folder: Path, device: torch.device) -> LoraState:
    """Deltas computed on the GPU when there is one; base weights read back from the transformer's
    safetensors files (no host copies: 18 GB saved at full size), or copied when the folder has
    none (a transformer saved as .bin)."""
    from safetensors import SafetensorError

    where = device if device.type == "cuda" else None
    try:
        source = safetensors_base_source(folder)
    except (OSError, KeyError, ValueError, SafetensorError) as exc:
        logger.info("LoRA base weights will be copied on first use ({} has no readable safetensors: {})", folder, exc)
        return LoraState(transformer, device=where)
    return LoraState(transformer, device=where, base_source=source)


def place(components: Components, *, use_stream: bool | None = None) -> None:
    """Put the models where ``components.tier`` says (``vram`` "low" without a tier: every block
    streamed in bf16, as the low mode before tiers)."""
    dev = components.device
    if components.vram == "high" or dev.type == "cpu":
        for name in MODEL_NAMES:
            getattr(components, name).to(dev)
        if dev.type == "cuda":
            accelerate(components)
        return
    place_tier(components, components.tier or ALL_STREAMED, use_stream=use_stream)


# ``vram = "low"`` without a chosen tier: every block streamed in bf16, the VAE tiled.
ALL_STREAMED = TierChoice("bf16-streamed", "every block streamed", 0, 0, untiled_decode=False, vae_resident=False)


def place_tier(components: Components, tier: TierChoice, *, use_stream: bool | None = None) -> None:
    """Lay ``components`` out for ``tier`` (any but ``bf16-resident``), from wherever the models are:
    loaded on the CPU, resident, or in a tier that keeps more on the GPU (tiers only go down). Runs
    on the CPU too, where nothing overlaps and nothing is pinned: the tests and the bench's CPU run
    take every tier's code path there."""
    dev = components.device
    stream = dev.type == "cuda" if use_stream is None else use_stream
    components.tier, components.vram = tier, "low"
    # Attention kernel and compile as in bf16-resident, decided before the blocks move (FP8 here
    # would quantise a bf16 transformer that need not fit: place_blocks does it block by block).
    acc = optimize(components.transformer, device=dev, fp8=False, weights=components.weights,
                   attention=components.accel.get("attention", "auto"))  # an earlier placement's timed choice
    # The transformer runs every step: resident blocks in place, the others streamed from pinned
    # memory, the next ones prefetched while the current computes. An earlier layout's streamer goes
    # first: its host copies are freed block by block as the new ones are made (one set at a time).
    components.streamer = components.parking = None
    components.streamer = place_blocks(
        components.transformer, dev, weights=acc.weights, fp8_granularity="row" if tier.fp8 else None,
        resident=(tier.resident_doubles, tier.resident_singles),
    )
    if tier.park_for_decode:
        components.parking = park_resident(components.transformer, dev, acc.weights, components.streamer)
    components.weights = acc.weights
    components.runner_options = acc.options.replace(fp8=tier.fp8)
    components.accel = {**acc.applied, "fp8": tier.fp8, "tier": tier.tier,
                        "streamed_blocks": components.streamer.blocks if components.streamer else 0,
                        "parked_gb": round(components.parking.bytes / 1e9, 2) if components.parking else 0}
    if tier.fp8 != components.fp8:
        components.fp8 = tier.fp8
        components.identity = {**{k: v for k, v in components.identity.items() if k != "fp8"},
                               **({"fp8": True} if tier.fp8 else {})}
    # CLIP and SigLIP visit the GPU to encode; the Llama runs once per prompt, block by block:
    # pinned on the fly rather than holding 16 GB pinned.
    components.text_encoder_2.to("cpu")
    components.image_encoder.to("cpu")
    if "text_encoder" not in components.offloaded:
        components.text_encoder.to("cpu")
        _group_offload(components.text_encoder, dev, use_stream=stream, low_cpu_mem_usage=True)
    components.offloaded = frozenset(GROUP_OFFLOADED)
    # Whole frames where there is room, else strips of one shape sized to the room (vae_tiles); the
    # decoder compiled either way. (diffusers' tiled decode cut a 640 section into tiles of four
    # shapes: about 11 s of a 48 s job on an H100 eagerly, 17 s more compiled, docs/benchmarks.md.)
    vae = components.vae
    vae.to(dev if tier.vae_resident else "cpu")
    vae.disable_tiling()
    vae.disable_slicing()
    components.vae_accel = components.vae_accel or VaeAccel(vae)
    room = None if tier.untiled_decode else tier.decode_room
    components.accel["vae"] = components.vae_accel.apply(dev, compile=components.compile_vae, room=room)
    components.accel["vae"].update(resident=tier.vae_resident, room_gib=None if room is None else round(room / 2**30, 2))
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def accelerate(
    components: Components, *, weights: PreparedWeights | None = None, vae_accel: VaeAccel | None = None
) -> None:
    """High mode on a GPU: the attention kernel timed on it, regional compile of the blocks
    (compiled lazily), FP8 weights when ``components.fp8``, the VAE decoder compiled when
    ``components.compile_vae``. ``weights`` / ``vae_accel``: ones the caller already holds for
    these models (a compiled decoder is kept, not compiled again)."""
    dev = components.device
    acc = optimize(components.transformer, device=dev, fp8=components.fp8, weights=weights)
    components.runner_options, components.weights, components.accel = acc.options, acc.weights, acc.applied
    components.vae_accel = vae_accel if vae_accel is not None else VaeAccel(components.vae)
    components.accel["vae"] = components.vae_accel.apply(dev, compile=components.compile_vae)


def _group_offload(module: torch.nn.Module, device: torch.device, *, use_stream: bool, low_cpu_mem_usage: bool) -> None:
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=use_stream,
        low_cpu_mem_usage=low_cpu_mem_usage and use_stream,
    )


# --- loading ----------------------------------------------------------------------------------


def _load(name: str, path: Path, loader: Callable[[Path], Any]) -> Any:
    start = time.perf_counter()
    try:
        obj = loader(path)
    except Exception as exc:  # loaders raise many kinds (safetensors, json, torch); all mean "bad files"
        raise ModelError(
            f"could not load {name} from {path}: {type(exc).__name__}: {exc}. The files may be damaged, partial, or "
            f"not {COMPONENTS[name].hub_path}; replace them (fploopd models shows where each was found)",
            field="model",
        ) from exc
    logger.debug("loaded {} from {} in {:.2f}s", name, path, time.perf_counter() - start)
    return obj


def _transformer_loader() -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        from diffusers import HunyuanVideoFramepackTransformer3DModel

        return HunyuanVideoFramepackTransformer3DModel.from_pretrained(path, torch_dtype=torch.bfloat16)

    return load


def _vae_loader(dtype: torch.dtype) -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        from diffusers import AutoencoderKLHunyuanVideo

        return AutoencoderKLHunyuanVideo.from_pretrained(path, torch_dtype=dtype)

    return load


def _feature_extractor_loader() -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        # FramePack preprocesses with the PIL-based SigLIP processor; transformers 5 makes the
        # torchvision one the default, which resizes slightly differently. Keep the PIL one.
        try:
            from transformers import SiglipImageProcessorPil as Processor
        except ImportError:  # transformers 4.x: the PIL one is the default
            from transformers import SiglipImageProcessor as Processor
        return Processor.from_pretrained(path)

    return load


# --- identity ---------------------------------------------------------------------------------


def model_identity(paths: ModelPaths, variant: str = "i2v") -> dict[str, Any]:
    """What a manifest records about the weights: source, and per component its folder and a
    fingerprint of its files (stable across loads and copies; weights by their HF blob hash where
    the HF cache gives one, by name and size when too big to hash)."""
    comps: dict[str, dict[str, str]] = {}
    for name in ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae", "image_encoder", "feature_extractor"):
        source = "transformer_f1" if name == "transformer" and variant == "f1" else name
        path = paths.path(source)
        assert path is not None  # load_components checked the F1 case
        comps[name] = {"repo": COMPONENTS[source].hub_path, "path": str(path), "sha256": folder_fingerprint(path)}
    overall = hashlib.sha256("".join(f"{n}={c['sha256']};" for n, c in comps.items()).encode()).hexdigest()
    return {"source": paths.source, "variant": variant, "sha256": overall, "components": comps}


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if size <= _HASH_CONTENT_MAX:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_symlink() and _BLOB.match(path.resolve().name):
            digest = path.resolve().name  # HF cache blobs of LFS files are named by their sha256
        else:
            digest = f"size={size}"
        h.update(f"{path.name}\0{digest}\n".encode())
    return h.hexdigest()


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
