"""The tiny model family: FramePack's architecture at toy sizes, random weights, built offline.

Tests and the demo run the real loading and inference code on it, so it is saved in exactly the
folder layouts and formats of the real weights (see ``layout.COMPONENTS``). Every build with the
same library versions gives byte-identical files: fixed seeds, fixed configs, tokenizers trained
deterministically from a fixed corpus. Bump ``TINY_VERSION`` whenever the files would change.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loguru import logger

from fploopd.engine.layout import COMPONENTS, component_dir
from fploopd.engine.loaders import quiet_progress
from fploopd.engine.template import PROMPT_TEMPLATE

TINY_VERSION = 3
TINY_DIR_NAME = f"tiny-v{TINY_VERSION}"
MANIFEST_NAME = "fploopd-tiny.json"  # written last; its presence marks a complete family
STALE_BUILD_S = 3600

# Sizes. Each width is distinct so that a conditioning wired into the wrong slot fails loudly.
LLAMA_HIDDEN = 40  # = transformer text_embed_dim
LLAMA_LAYERS = 4  # hidden_states[-3] must be a real intermediate layer
CLIP_HIDDEN = 24  # = transformer pooled_projection_dim
SIGLIP_HIDDEN = 48  # = transformer image_proj_dim
SIGLIP_IMAGE = 32
TRANSFORMER = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    # Two blocks of each kind: code that shares work between the blocks of a kind (one compiled graph
    # per kind, streaming a block while the one before runs) meets a second block.
    "num_layers": 2,
    "num_single_layers": 2,
    "num_refiner_layers": 1,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": True,
    "text_embed_dim": LLAMA_HIDDEN,
    "pooled_projection_dim": CLIP_HIDDEN,
    "rope_theta": 256.0,
    "rope_axes_dim": (4, 6, 6),  # sums to attention_head_dim
    "image_condition_type": None,
    "has_image_proj": True,
    "image_proj_dim": SIGLIP_HIDDEN,
    "has_clean_x_embedder": True,
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    # Four blocks keep the real 8x spatial / 4x temporal compression. 16 channels, not fewer: on CPU
    # PyTorch sends thinner 3-D convolutions to its slow native kernel, which costs more time.
    "block_out_channels": (16, 16, 16, 16),
    # No extra resnets: on a 2-core CPU the VAE decode dominates a tiny run (this halves it).
    "layers_per_block": 0,
    "norm_num_groups": 4,
    "scaling_factor": 0.476986,
    "spatial_compression_ratio": 8,
    "temporal_compression_ratio": 4,
    "mid_block_add_attention": True,
}
VAE_OUT_SCALE = 0.5
# The real transformer is sharded; so is the tiny one, so the shard checks and loader are exercised.
TRANSFORMER_SHARD_SIZE = "200KB"
SEEDS = {
    "text_encoder": 1001,
    "text_encoder_2": 1002,
    "vae": 1003,
    "image_encoder": 1004,
    "transformer": 1005,
    "transformer_f1": 1006,
}

# The Llama tokenizer is trained on HunyuanVideo's prompt template (template.PROMPT_TEMPLATE: so the
# template's word tokens come out as in Llama 3 and FramePack's crop_start of 95 holds) plus a few
# prompt words.
EXTRA_CORPUS = (
    "The girl dances gracefully, with clear movements, full of charm. "
    "The man dances energetically, leaping mid-air with fluid arm swings and quick footwork. "
    "A cat walks slowly through the garden, the wind moves the leaves, a seamless loop."
)
LLAMA_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_BOS = "<|begin_of_text|>"
LLAMA_EOS = "<|eot_id|>"
LLAMA_PAD = "<|finetune_right_pad_id|>"
LLAMA_SPECIALS = (LLAMA_BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", LLAMA_EOS, LLAMA_PAD)
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_MAX_LENGTH = 77


def default_cache_dir() -> Path:
    """``$FPLOOPD_CACHE``, else the user cache folder (XDG on Unix, LOCALAPPDATA on Windows)."""
    if os.environ.get("FPLOOPD_CACHE"):
        return Path(os.environ["FPLOOPD_CACHE"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "fploopd"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fploopd"


def ensure_tiny(cache_dir: Path | None = None) -> Path:
    """Return the tiny family's root, building it first if needed.

    The build goes into a temporary folder beside the target and is renamed into place, so a
    crashed build never leaves a half family and two concurrent builds leave one whole one.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / TINY_DIR_NAME
    if _is_complete(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(cache)
    if target.exists():
        # Damaged since its build (renames are atomic): move it aside, keep it for a look.
        aside = Path(tempfile.mkdtemp(prefix=f".{TINY_DIR_NAME}.broken.", dir=cache))
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            os.replace(target, aside / TINY_DIR_NAME)
        logger.warning("tiny model family at {} was incomplete; moved to {} and rebuilding", target, aside)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_DIR_NAME}.", suffix=".part", dir=cache))
    try:
        logger.info("building the tiny model family in {}", target)
        build_tiny(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared with a service user
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise
            logger.debug("another process finished the tiny family first; using it")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_builds(cache: Path) -> None:
    """Temporary folders of builds killed mid-way (a build takes seconds; an hour-old one is dead)."""
    for stale in cache.glob(f".{TINY_DIR_NAME}.*.part"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_BUILD_S:
                shutil.rmtree(stale)


def _is_complete(root: Path) -> bool:
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        files: dict[str, dict[str, Any]] = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    # Sizes only: hashing on every start would cost more than the check is worth.
    return all((root / rel).is_file() and (root / rel).stat().st_size == meta["size"] for rel, meta in files.items())


def build_tiny(dest: Path) -> None:
    """Build the whole tiny family under ``dest`` (created if missing) in the real layouts."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    llama_tok = _llama_tokenizer()
    clip_vocab, clip_merges = _clip_vocab_and_merges()
    _save_llama_tokenizer(llama_tok, component_dir(dest, "tokenizer"))
    _save_clip_tokenizer(clip_vocab, clip_merges, component_dir(dest, "tokenizer_2"))
    _save_feature_extractor(component_dir(dest, "feature_extractor"))
    _save_text_encoder(llama_tok, component_dir(dest, "text_encoder"))
    _save_text_encoder_2(clip_vocab, component_dir(dest, "text_encoder_2"))
    _save_image_encoder(component_dir(dest, "image_encoder"))
    _save_vae(component_dir(dest, "vae"))
    _save_transformer(component_dir(dest, "transformer"), SEEDS["transformer"])
    _save_transformer(component_dir(dest, "transformer_f1"), SEEDS["transformer_f1"])
    _write_manifest(dest)


# --- tokenizers -------------------------------------------------------------------------------


def _learn_bpe(words: list[list[str]]) -> list[tuple[str, str]]:
    """Plain BPE until every word is one symbol; ties go to the smallest pair, so it is deterministic.

    (The ``tokenizers`` trainer breaks ties differently from run to run.)
    """
    counts: Counter[tuple[str, ...]] = Counter(tuple(w) for w in words if w)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in counts.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, n in counts.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        counts = merged


def _llama_tokenizer() -> Any:
    """A byte-level BPE with Llama 3's pre-tokenizer and special tokens, BOS added in front."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    # Learn from the text between special tokens, as the real tokenizer sees it.
    specials = "|".join(re.escape(s) for s in LLAMA_SPECIALS)
    text = [part for part in re.split(specials, PROMPT_TEMPLATE.replace("{}", "") + EXTRA_CORPUS) if part]
    words = [list(piece) for part in text for piece, _ in pre.pre_tokenize_str(part)]
    merges = _learn_bpe(words)
    tokens = _unique(list(_bytes_to_unicode().values()) + [a + b for a, b in merges])
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(LLAMA_SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_BOS} $A",
        pair=f"{LLAMA_BOS} $A {LLAMA_BOS} $B",
        special_tokens=[(LLAMA_BOS, tok.token_to_id(LLAMA_BOS))],
    )
    return tok


def _unique(tokens: list[str]) -> list[str]:
    """Drop repeats, keeping first places (two merges may make the same string)."""
    return list(dict.fromkeys(tokens))


def _save_llama_tokenizer(tok: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    added = {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in LLAMA_SPECIALS
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": added,
            "bos_token": LLAMA_BOS,
            "clean_up_tokenization_spaces": False,
            "eos_token": LLAMA_EOS,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 131072,
            "pad_token": LLAMA_PAD,
            "padding_side": "right",
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": LLAMA_BOS, "eos_token": LLAMA_EOS, "pad_token": LLAMA_PAD},
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map, in its canonical order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary order: bytes, bytes + '</w>', one token per merge, then the two specials."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    text = norm.normalize_str(re.sub(r"<\|[a-z_]+\|>", " ", PROMPT_TEMPLATE.replace("{}", "")) + " " + EXTRA_CORPUS)
    words = [list(piece[:-1]) + [piece[-1] + "</w>"] for piece, _ in pre.pre_tokenize_str(text)]
    merges = _learn_bpe(words)
    chars = list(_bytes_to_unicode().values())
    tokens = _unique(chars + [c + "</w>" for c in chars] + [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS])
    return {t: i for i, t in enumerate(tokens)}, merges


def _save_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "bos_token": CLIP_BOS,
            "clean_up_tokenization_spaces": False,
            "do_lower_case": True,
            "eos_token": CLIP_EOS,
            "errors": "replace",
            "model_max_length": CLIP_MAX_LENGTH,
            "pad_token": CLIP_EOS,
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": CLIP_EOS,
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "pad_token": CLIP_EOS, "unk_token": CLIP_EOS},
    )


def _save_feature_extractor(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # The real flux_redux_bfl preprocessor config, at the tiny image size.
    _write_json(
        folder / "preprocessor_config.json",
        {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "processor_class": "SiglipProcessor",
            "resample": 3,
            "rescale_factor": 1 / 255,
            "size": {"height": SIGLIP_IMAGE, "width": SIGLIP_IMAGE},
        },
    )


# --- models -----------------------------------------------------------------------------------


def _save_text_encoder(tok: Any, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=LLAMA_HIDDEN,
        intermediate_size=2 * LLAMA_HIDDEN,
        num_hidden_layers=LLAMA_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=LLAMA_HIDDEN // 4,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        initializer_range=0.2,  # hidden states of order one, as a trained model's are
        bos_token_id=tok.token_to_id(LLAMA_BOS),
        eos_token_id=tok.token_to_id(LLAMA_EOS),
        pad_token_id=tok.token_to_id(LLAMA_PAD),
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEEDS["text_encoder"])
    model = LlamaModel(config)
    _save_hf(model.half(), folder)


def _save_text_encoder_2(vocab: dict[str, int], folder: Path) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=CLIP_HIDDEN,
        intermediate_size=2 * CLIP_HIDDEN,
        projection_dim=CLIP_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        initializer_factor=1.0,
        bos_token_id=vocab[CLIP_BOS],
        eos_token_id=vocab[CLIP_EOS],
        pad_token_id=vocab[CLIP_EOS],
    )
    torch.manual_seed(SEEDS["text_encoder_2"])
    model = CLIPTextModel(config)
    _save_hf(model.half(), folder)


def _save_image_encoder(folder: Path) -> None:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=SIGLIP_HIDDEN,
        intermediate_size=2 * SIGLIP_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIGLIP_IMAGE,
        patch_size=8,
    )
    torch.manual_seed(SEEDS["image_encoder"])
    model = SiglipVisionModel(config)
    _save_hf(model.half(), folder)


def _save_vae(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(SEEDS["vae"])
    model = AutoencoderKLHunyuanVideo(**VAE)
    with torch.no_grad():  # bring decoded pixels into about [-1, 1], like a trained VAE's
        model.decoder.conv_out.conv.weight.mul_(VAE_OUT_SCALE)
    # .half(), not .to(dtype): diffusers' to() warns about fp32 modules even when there are none
    model.half().save_pretrained(folder, safe_serialization=True)


def _save_transformer(folder: Path, seed: int) -> None:
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoFramepackTransformer3DModel(**TRANSFORMER)
    model.bfloat16().save_pretrained(folder, safe_serialization=True, max_shard_size=TRANSFORMER_SHARD_SIZE)


def _save_hf(model: Any, folder: Path) -> None:
    with quiet_progress():
        model.save_pretrained(folder)


# --- files ------------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_manifest(dest: Path) -> None:
    files = {}
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        rel = path.relative_to(dest).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    _write_json(dest / MANIFEST_NAME, {"version": TINY_VERSION, "components": sorted(COMPONENTS), "files": files})
