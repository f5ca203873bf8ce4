"""LoRA files: read them safely, recognise their format from the keys, map them onto the transformer.

Users bring LoRAs from musubi-tuner, diffusion-pipe, ComfyUI and LyCORIS. Whatever the format, a file
becomes one internal form, a ``ResolvedLora``: {diffusers module path (``transformer_blocks.3.attn.to_q``)
-> patch}, where a patch is a LoRA pair (down [r, in], up [out, r], alpha or None) or a LyCORIS
factorisation (LoHa, LoKr) that yields its delta weight. ``lora_merge`` merges them into the weights.

Formats (``detect_format``, from the keys alone):

- musubi-tuner / kohya: ``lora_unet_<module path with "." as "_">.lora_down.weight``, ``.lora_up.weight``,
  ``.alpha``. The underscore is ambiguous, so the path is found through the model's own Linear
  modules (``LinearIndex``), never guessed.
- diffusers / diffusion-pipe / PEFT: ``transformer.`` or ``diffusion_model.`` + dotted module path +
  ``.lora_A.weight`` / ``.lora_B.weight`` (alpha: none, i.e. alpha = r, unless an ``.alpha`` is there).
- HunyuanVideo module names (``double_blocks.N.img_attn_qkv``, ``single_blocks.N.linear1``, the text
  refiner ``txt_in....``) in either key style: fused q|k|v and q|k|v|mlp are split into diffusers'
  modules, the down matrix shared and the up matrix split by rows (as musubi-tuner's
  ``convert_hunyuan_to_framepack`` and diffusers' HunyuanVideo LoRA conversion do).
- LyCORIS LoHa (``hada_w1_a`` ...) and LoKr (``lokr_w1`` ...): their delta weight is computed at merge.

Only ``.safetensors``: pickle files (``.pt``, ``.ckpt``, ``.bin``) run code when loaded and are refused.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from fploopd.lorafiles import MAX_LORA_BYTES, LoraError, check_lora_file
from fploopd.spec import MAX_LORA_SCALE

DEFAULT_MAX_BYTES = MAX_LORA_BYTES
DEFAULT_MAX_RANK = 512
MAX_ABS_SCALE = MAX_LORA_SCALE  # the spec's bound: musubi and FramePackLoop users stay within about +-2
_LIST_MAX = 12  # unmatched keys named in an error message

# Tensor roles by key suffix. Longest first, so "lora_down.weight" wins over "weight".
_ROLES: dict[str, str] = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "alpha": "alpha",
    "hada_w1_a": "hada_w1_a",
    "hada_w1_b": "hada_w1_b",
    "hada_w2_a": "hada_w2_a",
    "hada_w2_b": "hada_w2_b",
    "lokr_w1": "lokr_w1",
    "lokr_w1_a": "lokr_w1_a",
    "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2",
    "lokr_w2_a": "lokr_w2_a",
    "lokr_w2_b": "lokr_w2_b",
}
# Known but not mergeable here: named in the error so the user knows what they have.
_REFUSED_ROLES: dict[str, str] = {
    "dora_scale": "DoRA (weight-decomposed LoRA)",
    "hada_t1": "LoHa with Tucker (convolution) factors",
    "hada_t2": "LoHa with Tucker (convolution) factors",
    "lokr_t2": "LoKr with Tucker (convolution) factors",
    "lora_mid.weight": "LoCon with a middle (convolution) factor",
    "lora_A.bias": "LoRA with bias terms",
    "lora_B.bias": "LoRA with bias terms",
    "diff": "full weight difference (LyCORIS 'full')",
    "diff_b": "full bias difference (LyCORIS 'full')",
}
_SUFFIXES = sorted([*_ROLES, *_REFUSED_ROLES], key=len, reverse=True)
# Key prefixes: underscored (kohya/musubi) or dotted (diffusers, diffusion-pipe, ComfyUI, PEFT).
_UNDERSCORED_PREFIX = "lora_unet_"
_DOTTED_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.", "model.diffusion_model.")
# First parts of HunyuanVideo's own module names (never FramePack/diffusers ones).
_HUNYUAN_ROOTS = ("double_blocks_", "single_blocks_", "txt_in_", "time_in_", "guidance_in_", "vector_in_", "final_layer_")


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraFormat:
    """What a file is: key ``style`` ("musubi" | "diffusers" | "plain"), module ``naming``
    ("framepack" | "hunyuanvideo"), and the ``kinds`` of patch in it ("lora", "loha", "lokr")."""

    style: str
    naming: str
    kinds: tuple[str, ...]

    def describe(self) -> str:
        styles = {"musubi": "musubi-tuner/kohya", "diffusers": "diffusers/diffusion-pipe", "plain": "unprefixed"}
        kinds = "+".join({"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}[k] for k in self.kinds)
        names = "HunyuanVideo names" if self.naming == "hunyuanvideo" else "FramePack names"
        return f"{styles[self.style]} {kinds} ({names})"


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as read: its identity and its tensors grouped by the module they patch.

    ``groups``: {module id (the module path with "." as "_", prefix removed): {role: tensor}}."""

    name: str
    sha256: str
    size: int
    format: LoraFormat
    groups: dict[str, dict[str, Tensor]]
    keys: dict[str, str]  # module id -> one of its original keys, for messages

    @property
    def rank(self) -> int:
        return max((_group_rank(g) for g in self.groups.values()), default=0)


def load_lora(path: Path | str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_rank: int = DEFAULT_MAX_RANK) -> LoraFile:
    """Read a ``.safetensors`` LoRA (never unpickling anything), check its bounds, group its tensors.

    Refuses pickle files with the reason, files over ``max_bytes``, ranks over ``max_rank``, and
    tensors that are not finite floating point."""
    path = Path(path)
    size = check_lora_file(path, max_bytes)
    tensors = _read_tensors(path)
    return lora_from_tensors(path.name, tensors, sha256=_sha256(path), size=size, max_rank=max_rank)


def lora_from_tensors(
    name: str, tensors: Mapping[str, Tensor], *, sha256: str = "", size: int = 0, max_rank: int = DEFAULT_MAX_RANK
) -> LoraFile:
    """Group and check ``tensors`` (a LoRA file's contents, or the same built in memory)."""
    if not tensors:
        raise LoraError(name, "holds no tensors")
    fmt = detect_format(name, tensors.keys())
    groups, keys = _group(name, tensors)
    for mid, group in groups.items():
        _check_group(name, keys[mid], group)
        rank = _group_rank(group)
        if rank > max_rank:
            raise LoraError(name, f"rank {rank} at {keys[mid]} is above the limit of {max_rank}")
    return LoraFile(name=name, sha256=sha256, size=size, format=fmt, groups=groups, keys=keys)


def _read_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraError(path.name, f"is not a readable safetensors file ({exc})") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- keys ------------------------------------------------------------------------------------------


def _split_key(key: str) -> tuple[str, str, str] | None:
    """``key`` -> (key style, module id, suffix), or None when no known suffix ends it."""
    suffix = next((s for s in _SUFFIXES if key.endswith("." + s)), None)
    if suffix is None:
        return None
    module = key[: -len(suffix) - 1]
    if module.startswith(_UNDERSCORED_PREFIX):
        style, module = "musubi", module[len(_UNDERSCORED_PREFIX) :]
    else:
        style = "plain"
        for prefix in _DOTTED_PREFIXES:
            if module.startswith(prefix):
                style, module = "diffusers", module[len(prefix) :]
                break
    return style, module.replace(".", "_"), suffix


def detect_format(name: str, keys: Iterable[str]) -> LoraFormat:
    """The file's format from its keys. Unknown keys, mixed key styles and formats this engine cannot
    merge (DoRA, Tucker factors, ...) are errors that name them."""
    styles: set[str] = set()
    kinds: set[str] = set()
    naming = "framepack"
    unknown: list[str] = []
    for key in keys:
        parts = _split_key(key)
        if parts is None:
            unknown.append(key)
            continue
        style, mid, suffix = parts
        if suffix in _REFUSED_ROLES:
            raise LoraError(name, f"is a {_REFUSED_ROLES[suffix]} file (key {key}); it cannot be merged here")
        styles.add(style)
        role = _ROLES[suffix]
        if role != "alpha":
            kinds.add("loha" if role.startswith("hada") else "lokr" if role.startswith("lokr") else "lora")
        if mid.startswith(_HUNYUAN_ROOTS):
            naming = "hunyuanvideo"
    if unknown:
        raise LoraError(name, f"has keys of no known LoRA format: {_listing(unknown)}")
    if not kinds:
        raise LoraError(name, "holds only alpha values, no LoRA weights")
    # Stray unprefixed keys beside prefixed ones (a text encoder's "lora_te1_...") fail at resolve,
    # where they are listed as matching no module.
    style = next((s for s in ("musubi", "diffusers") if s in styles), "plain")
    return LoraFormat(style=style, naming=naming, kinds=tuple(k for k in ("lora", "loha", "lokr") if k in kinds))


def _group(name: str, tensors: Mapping[str, Tensor]) -> tuple[dict[str, dict[str, Tensor]], dict[str, str]]:
    groups: dict[str, dict[str, Tensor]] = {}
    keys: dict[str, str] = {}
    for key, tensor in tensors.items():
        parts = _split_key(key)
        assert parts is not None  # detect_format refused the rest
        _, mid, suffix = parts
        role = _ROLES[suffix]
        group = groups.setdefault(mid, {})
        if role in group:
            raise LoraError(name, f"has two {suffix} tensors for the same module ({keys[mid]} and {key})")
        group[role] = tensor
        if role != "alpha" or mid not in keys:
            keys[mid] = key
    return groups, keys


_PATCH_ROLES = {
    "lora": ({"down", "up"}, set()),
    "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}, set()),
    "lokr": (set(), {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}),
}


def _group_kind(group: Mapping[str, Tensor]) -> str:
    roles = set(group) - {"alpha"}
    if roles & {"down", "up"}:
        return "lora"
    return "loha" if any(r.startswith("hada") for r in roles) else "lokr"


def _check_group(name: str, key: str, group: Mapping[str, Tensor]) -> None:
    """Complete, of one kind, 2-D, finite floating point."""
    kind = _group_kind(group)
    roles = set(group) - {"alpha"}
    required, allowed = _PATCH_ROLES[kind]
    if kind == "lokr":
        has_w1 = "lokr_w1" in roles or {"lokr_w1_a", "lokr_w1_b"} <= roles
        has_w2 = "lokr_w2" in roles or {"lokr_w2_a", "lokr_w2_b"} <= roles
        complete, stray = has_w1 and has_w2, roles - allowed
    else:
        complete, stray = required <= roles, roles - required
    if stray:
        raise LoraError(name, f"mixes LoRA kinds for one module at {key} ({', '.join(sorted(roles))})")
    if not complete:
        raise LoraError(name, f"misses part of the {kind} weights at {key} (has {', '.join(sorted(roles))})")
    for role, t in group.items():
        if not t.is_floating_point():
            raise LoraError(name, f"{role} at {key} is {t.dtype}, not floating point")
        if role == "alpha":
            if t.numel() != 1:
                raise LoraError(name, f"alpha at {key} has {t.numel()} values, not one")
        elif t.dim() != 2:
            raise LoraError(name, f"{role} at {key} has shape {tuple(t.shape)}; only Linear (2-D) weights are supported")
        if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise LoraError(name, f"{role} at {key} holds NaN or infinite values")


def _group_rank(group: Mapping[str, Tensor]) -> int:
    kind = _group_kind(group)
    if kind == "lora":
        return int(group["down"].shape[0])
    if kind == "loha":
        return int(group["hada_w1_b"].shape[0])
    return _lokr_dim(group)


def _lokr_dim(group: Mapping[str, Tensor]) -> int:
    """LoKr's rank: the inner size of its low-rank factor; for full factors musubi-tuner's
    ``max(w2.shape)`` (then alpha/dim is 1 unless alpha says otherwise)."""
    if "lokr_w2_a" in group:
        return int(group["lokr_w2_a"].shape[1])
    if "lokr_w1_a" in group:
        return int(group["lokr_w1_a"].shape[1])
    return int(max(group["lokr_w2"].shape))


def _listing(items: Iterable[str]) -> str:
    items = sorted(items)
    shown = ", ".join(items[:_LIST_MAX])
    return f"{shown} and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else shown


# --- patches -----------------------------------------------------------------------------------------


def _alpha(group: Mapping[str, Tensor]) -> float | None:
    return float(group["alpha"].item()) if "alpha" in group and group["alpha"].device.type != "meta" else None


@dataclass(frozen=True)
class LoraPatch:
    """delta = (alpha / r) * up @ down; no alpha means alpha = r."""

    down: Tensor  # [r, in]
    up: Tensor  # [out, r]
    alpha: float | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.up.shape[0]), int(self.down.shape[1])

    def delta(self, device: torch.device) -> Tensor:
        r = self.down.shape[0]
        scale = 1.0 if self.alpha is None else self.alpha / r
        up = self.up.to(device, torch.float32)
        down = self.down.to(device, torch.float32)
        return (up @ down).mul_(scale)

    def rows(self, index: Tensor | slice) -> LoraPatch:
        """The patch of some output rows only (the down matrix is shared)."""
        return LoraPatch(self.down, self.up[index], self.alpha)


@dataclass(frozen=True)
class LohaPatch:
    """LyCORIS LoHa: delta = (alpha / r) * (w1_a @ w1_b) * (w2_a @ w2_b) (element-wise product)."""

    w1_a: Tensor
    w1_b: Tensor
    w2_a: Tensor
    w2_b: Tensor
    alpha: float | None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.w1_a.shape[0]), int(self.w1_b.shape[1])

    def delta(self, device: torch.device) -> Tensor:
        f = [t.to(device, torch.float32) for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b)]
        r = self.w1_b.shape[0]
        scale = 1.0 if self.alpha is None else self.alpha / r
        return ((f[0] @ f[1]) * (f[2] @ f[3])).mul_(scale)

    def rows(self, index: Tensor | slice) -> LohaPatch:
        return LohaPatch(self.w1_a[index], self.w1_b, self.w2_a[index], self.w2_b, self.alpha)


@dataclass(frozen=True)
class LokrPatch:
    """LyCORIS LoKr: delta = (alpha / dim) * kron(w1, w2), each factor full or a low-rank product."""

    w1: tuple[Tensor, ...]  # (w1,) or (w1_a, w1_b)
    w2: tuple[Tensor, ...]
    dim: int
    alpha: float | None
    row_index: Tensor | slice | None = None  # a part of the rows only (a split fused projection)

    @property
    def shape(self) -> tuple[int, int]:
        rows = self.w1[0].shape[0] * self.w2[0].shape[0]
        if self.row_index is not None:
            rows = len(range(rows)[self.row_index]) if isinstance(self.row_index, slice) else len(self.row_index)
        return int(rows), int(self.w1[-1].shape[1] * self.w2[-1].shape[1])

    def delta(self, device: torch.device) -> Tensor:
        w1, w2 = (_product(f, device) for f in (self.w1, self.w2))
        scale = 1.0 if self.alpha is None else self.alpha / self.dim
        full = torch.kron(w1, w2).mul_(scale)
        return full if self.row_index is None else full[self.row_index].contiguous()

    def rows(self, index: Tensor | slice) -> LokrPatch:
        if self.row_index is not None:
            raise ValueError("rows of rows")  # never: a fused layer is split once
        return LokrPatch(self.w1, self.w2, self.dim, self.alpha, index)


def _product(factors: tuple[Tensor, ...], device: torch.device) -> Tensor:
    mats = [t.to(device, torch.float32) for t in factors]
    return mats[0] if len(mats) == 1 else mats[0] @ mats[1]


Patch = LoraPatch | LohaPatch | LokrPatch


def _patch(group: Mapping[str, Tensor]) -> Patch:
    kind, alpha = _group_kind(group), _alpha(group)
    if kind == "lora":
        return LoraPatch(group["down"], group["up"], alpha)
    if kind == "loha":
        return LohaPatch(group["hada_w1_a"], group["hada_w1_b"], group["hada_w2_a"], group["hada_w2_b"], alpha)
    w1 = (group["lokr_w1"],) if "lokr_w1" in group else (group["lokr_w1_a"], group["lokr_w1_b"])
    w2 = (group["lokr_w2"],) if "lokr_w2" in group else (group["lokr_w2_a"], group["lokr_w2_b"])
    return LokrPatch(w1, w2, _lokr_dim(group), alpha)


# --- module lookup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearIndex:
    """The transformer's Linear modules: dotted path -> (out, in), and underscored id -> dotted path.

    Built from the model itself (works on the ``meta`` device), so an underscored musubi name is
    resolved against real module names only."""

    shapes: dict[str, tuple[int, int]]
    by_id: dict[str, str] = field(repr=False)

    @classmethod
    def of(cls, model: nn.Module) -> LinearIndex:
        shapes: dict[str, tuple[int, int]] = {}
        by_id: dict[str, str] = {}
        for path, module in model.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            mid = path.replace(".", "_")
            if mid in by_id:  # two modules one underscored name: no file could tell them apart
                raise ValueError(f"modules {by_id[mid]} and {path} have the same underscored name {mid}")
            by_id[mid] = path
            shapes[path] = (module.out_features, module.in_features)
        return cls(shapes=shapes, by_id=by_id)


# HunyuanVideo (original) module names, underscored, -> diffusers FramePack paths. A list of several
# targets is a fused projection, split by rows in that order; "swap" marks the final layer's
# modulation, whose (shift, scale) halves diffusers stores as (scale, shift).
_HV_DOUBLE = {
    "img_mod_linear": ["norm1.linear"],
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "img_attn_proj": ["attn.to_out.0"],
    "img_mlp_fc1": ["ff.net.0.proj"],
    "img_mlp_fc2": ["ff.net.2"],
    "txt_mod_linear": ["norm1_context.linear"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "txt_attn_proj": ["attn.to_add_out"],
    "txt_mlp_fc1": ["ff_context.net.0.proj"],
    "txt_mlp_fc2": ["ff_context.net.2"],
}
_HV_SINGLE = {
    "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    "linear2": ["proj_out"],
    "modulation_linear": ["norm.linear"],
}
_HV_REFINER = {
    "self_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "self_attn_proj": ["attn.to_out.0"],
    "mlp_fc1": ["ff.net.0.proj"],
    "mlp_fc2": ["ff.net.2"],
    "adaLN_modulation_1": ["norm_out.linear"],
}
_HV_FIXED = {
    "txt_in_input_embedder": "context_embedder.proj_in",
    "txt_in_t_embedder_mlp_0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in_t_embedder_mlp_2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in_c_embedder_linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in_c_embedder_linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "time_in_mlp_0": "time_text_embed.timestep_embedder.linear_1",
    "time_in_mlp_2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in_mlp_0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_mlp_2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
_HV_SWAPPED = {"final_layer_adaLN_modulation_1"}
_HV_BLOCK = re.compile(r"^(double_blocks|single_blocks|txt_in_individual_token_refiner_blocks)_(\d+)_(.+)$")
_HV_STACKS = {
    "double_blocks": ("transformer_blocks", _HV_DOUBLE),
    "single_blocks": ("single_transformer_blocks", _HV_SINGLE),
    "txt_in_individual_token_refiner_blocks": ("context_embedder.token_refiner.refiner_blocks", _HV_REFINER),
}


def hunyuan_targets(mid: str) -> list[str] | None:
    """The diffusers module paths a HunyuanVideo module id maps to (several: a fused projection,
    in row order), or None when it is no HunyuanVideo name."""
    if mid in _HV_FIXED:
        return [_HV_FIXED[mid]]
    m = _HV_BLOCK.match(mid)
    if m is None:
        return None
    stack, table = _HV_STACKS[m.group(1)]
    names = table.get(m.group(3))
    return None if names is None else [f"{stack}.{m.group(2)}.{n}" for n in names]


def module_targets(mid: str, index: LinearIndex) -> list[str] | None:
    """The module path(s) that the module id ``mid`` of a file patches, or None if none matches."""
    if mid in index.by_id:
        return [index.by_id[mid]]
    targets = hunyuan_targets(mid)
    if targets is None or not all(t in index.shapes for t in targets):
        return None
    return targets


# --- resolving a file onto a model ---------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA file mapped onto one transformer: {module path: patch}, plus the file's identity."""

    name: str
    sha256: str
    format: LoraFormat
    rank: int
    patches: dict[str, Patch]

    def identity(self, scale: float) -> dict[str, object]:
        """What manifests and checkpoint keys record about this LoRA at ``scale``."""
        return {"name": self.name, "sha256": self.sha256, "scale": float(scale)}


def resolve_lora(lora: LoraFile, index: LinearIndex | nn.Module) -> ResolvedLora:
    """Map every group of ``lora`` onto the Linear modules of the model behind ``index``.

    A group that matches no module is an error listing all such keys (a silently dropped key is the
    classic "my LoRA does nothing"); a shape mismatch names the key and both shapes."""
    if isinstance(index, nn.Module):
        index = LinearIndex.of(index)
    patches: dict[str, Patch] = {}
    unmatched: list[str] = []
    for mid, group in lora.groups.items():
        targets = module_targets(mid, index)
        if targets is None:
            unmatched.append(lora.keys[mid])
            continue
        for path, patch in _split(lora, mid, _patch(group), targets, index):
            _check_shape(lora.name, lora.keys[mid], path, patch, index.shapes[path])
            if path in patches:
                raise LoraError(lora.name, f"patches {path} twice (again at {lora.keys[mid]})")
            patches[path] = patch
    if unmatched:
        raise LoraError(
            lora.name,
            f"{len(unmatched)} key(s) match no module of the FramePack transformer "
            f"(a LoRA for another model, or for a text encoder?): {_listing(unmatched)}",
        )
    return ResolvedLora(name=lora.name, sha256=lora.sha256, format=lora.format, rank=lora.rank, patches=patches)


def _split(lora: LoraFile, mid: str, patch: Patch, targets: list[str], index: LinearIndex) -> list[tuple[str, Patch]]:
    """One patch per target: a fused projection's rows cut at the targets' output sizes."""
    if mid in _HV_SWAPPED:  # (shift, scale) -> (scale, shift)
        half = patch.shape[0] // 2
        order = torch.cat([torch.arange(half, 2 * half), torch.arange(0, half)])
        return [(targets[0], patch.rows(order))]
    if len(targets) == 1:
        return [(targets[0], patch)]
    sizes = [index.shapes[t][0] for t in targets]
    if patch.shape[0] != sum(sizes):
        raise LoraError(
            lora.name,
            f"{lora.keys[mid]} has {patch.shape[0]} output rows; the fused layer it patches ({', '.join(targets)}) "
            f"has {sum(sizes)}",
        )
    out, start = [], 0
    for target, n in zip(targets, sizes, strict=True):
        out.append((target, patch.rows(slice(start, start + n))))
        start += n
    return out


def _check_shape(name: str, key: str, path: str, patch: Patch, weight: tuple[int, int]) -> None:
    if isinstance(patch, LoraPatch) and patch.down.shape[0] != patch.up.shape[1]:
        raise LoraError(
            name, f"{key}: down {tuple(patch.down.shape)} and up {tuple(patch.up.shape)} disagree on the rank"
        )
    if isinstance(patch, LohaPatch) and (patch.w1_a.shape[1] != patch.w1_b.shape[0] or patch.w2_a.shape[1] != patch.w2_b.shape[0]):
        raise LoraError(name, f"{key}: LoHa factors disagree on the rank")
    if patch.shape != weight:
        raise LoraError(
            name, f"{key} makes a [{patch.shape[0]}, {patch.shape[1]}] change but {path} is [{weight[0]}, {weight[1]}]"
        )


def check_scale(name: str, scale: float) -> float:
    """A LoRA's strength: finite, within +-MAX_ABS_SCALE."""
    if not math.isfinite(scale) or abs(scale) > MAX_ABS_SCALE:
        raise LoraError(name, f"scale {scale} is outside -{MAX_ABS_SCALE:g}..{MAX_ABS_SCALE:g}")
    return float(scale)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RANK",
    "MAX_ABS_SCALE",
    "LinearIndex",
    "LohaPatch",
    "LokrPatch",
    "LoraError",
    "LoraFile",
    "LoraFormat",
    "LoraPatch",
    "Patch",
    "ResolvedLora",
    "check_scale",
    "detect_format",
    "hunyuan_targets",
    "load_lora",
    "lora_from_tensors",
    "module_targets",
    "resolve_lora",
]
