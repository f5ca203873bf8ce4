"""Conditioning as FramePack computes it: prompt, image, buckets and the VAE.

Text: HunyuanVideo's Llama template, the third-to-last hidden state with the template cropped off,
padded to 512 tokens with a mask, plus the CLIP-L pooler of the bare prompt. Image: nearest bucket,
Lanczos resize and center crop, SigLIP's last hidden state. VAE latents are scaled by the VAE's
scaling factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from fploopd.engine.template import PROMPT_TEMPLATE

if TYPE_CHECKING:
    from fploopd.engine.components import Components

MAX_PROMPT_TOKENS = 256
TEXT_LENGTH = 512
CLIP_LENGTH = 77

# FramePack's 640 family, (height, width); other resolutions scale these 14 aspect ratios.
BUCKETS_640: tuple[tuple[int, int], ...] = (
    (416, 960), (448, 864), (480, 832), (512, 768), (544, 704), (576, 672), (608, 640),
    (640, 608), (672, 576), (704, 544), (768, 512), (832, 480), (864, 448), (960, 416),
)  # fmt: skip


@dataclass(frozen=True)
class PromptEmbeds:
    llama: torch.Tensor  # (1, 512, D)
    mask: torch.Tensor  # (1, 512) bool
    pooler: torch.Tensor  # (1, D_clip)

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    def zeros(self) -> PromptEmbeds:
        """FramePack's negative conditioning at cfg 1: zeros with the positive's mask."""
        return PromptEmbeds(torch.zeros_like(self.llama), self.mask.clone(), torch.zeros_like(self.pooler))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeds:
        return PromptEmbeds(self.llama.to(device, dtype), self.mask.to(device), self.pooler.to(device, dtype))


def buckets(resolution: int = 640) -> tuple[tuple[int, int], ...]:
    """The 14 buckets of a family, sides rounded to multiples of 16 (FramePack's own at 640)."""
    if resolution == 640:
        return BUCKETS_640
    scale = resolution / 640

    def side(v: int) -> int:
        return max(16, round(v * scale / 16) * 16)

    return tuple((side(h), side(w)) for h, w in BUCKETS_640)


def find_bucket(height: int, width: int, resolution: int = 640) -> tuple[int, int]:
    """Smallest aspect mismatch ``|h*bw - w*bh|``; ties go to the later bucket, as in FramePack."""
    best, best_metric = BUCKETS_640[0], float("inf")
    for bh, bw in buckets(resolution):
        metric = abs(height * bw - width * bh)
        if metric <= best_metric:
            best, best_metric = (bh, bw), metric
    return best


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Cover-resize with Lanczos then crop the middle, exactly as FramePack does."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil = Image.fromarray(image)
    scale = max(width / pil.width, height / pil.height)
    rw, rh = round(pil.width * scale), round(pil.height * scale)
    resized = pil.resize((rw, rh), Image.LANCZOS)
    left, top = (rw - width) / 2, (rh - height) / 2
    return np.array(resized.crop((left, top, left + width, top + height)))


def prompt_crop_start(tokenizer) -> int:
    """Tokens of the template before the user's text (95 for HunyuanVideo's Llama tokenizer)."""
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    return len(tokenizer(prefix, add_special_tokens=True)["input_ids"])


PROMPT_CACHE_SIZE = 16  # a few MB each


def encode_prompt(components: Components, prompt: str) -> PromptEmbeds:
    """Llama 3 hidden states (cropped, padded to 512) and the CLIP pooler for ``prompt``, remembered
    per ``components`` for the last ``PROMPT_CACHE_SIZE`` prompts."""
    cache = components.prompt_cache
    hit = cache.get(prompt)
    if hit is not None:
        cache.move_to_end(prompt)
        return hit
    embeds = _encode_prompt(components, prompt)
    cache[prompt] = embeds
    while len(cache) > PROMPT_CACHE_SIZE:
        cache.popitem(last=False)
    return embeds


@torch.no_grad()
def _encode_prompt(components: Components, prompt: str) -> PromptEmbeds:
    tokenizer, llama = components.tokenizer, components.text_encoder
    crop = prompt_crop_start(tokenizer)
    tokens = tokenizer(
        [PROMPT_TEMPLATE.format(prompt)],
        padding="max_length",
        max_length=MAX_PROMPT_TOKENS + crop,
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    ids = tokens.input_ids.to(llama.device)
    attention = tokens.attention_mask.to(llama.device)
    length = int(attention.sum())
    hidden = llama(input_ids=ids, attention_mask=attention, output_hidden_states=True).hidden_states[-3]
    vec = hidden[:, crop:length]
    vec, mask = crop_or_pad(vec, TEXT_LENGTH)

    clip_ids = components.tokenizer_2(
        [prompt], padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    pooler = components.text_encoder_2(clip_ids.to(components.text_encoder_2.device)).pooler_output
    return PromptEmbeds(vec, mask, pooler)


def crop_or_pad(x: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, F, C) -> (B, length, C) zero-padded, with a bool mask of the real tokens."""
    b, f, c = x.shape
    if f >= length:
        return x[:, :length], torch.ones((b, length), dtype=torch.bool, device=x.device)
    y = torch.zeros((b, length, c), dtype=x.dtype, device=x.device)
    y[:, :f] = x
    mask = torch.zeros((b, length), dtype=torch.bool, device=x.device)
    mask[:, :f] = True
    return y, mask


@torch.no_grad()
def encode_image(components: Components, image: np.ndarray) -> torch.Tensor:
    """SigLIP last hidden state of a uint8 (H, W, 3) image."""
    encoder = components.image_encoder
    inputs = components.feature_extractor.preprocess(images=image, return_tensors="pt")
    inputs = inputs.to(device=encoder.device, dtype=encoder.dtype)
    return encoder(**inputs).last_hidden_state


@torch.no_grad()
def vae_encode(components: Components, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> scaled latents (float32, on the CPU).

    The distribution's mean, not a sample: FramePack samples without a seed, which makes its own
    runs irreproducible; the mean is what a seeded, resumable job needs.
    """
    vae = components.vae
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return (dist.mode() * vae.config.scaling_factor).float().cpu()


@torch.no_grad()
def vae_decode(components: Components, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> (B, 3, 4T-3, H, W) pixels in [-1, 1], on the CPU in the VAE's dtype.

    Frames stay in the VAE's dtype (fp16 on a GPU), as in FramePack: long loops hold hundreds of
    full-size frames in memory while they are blended.
    """
    vae = components.vae
    z = (latents / vae.config.scaling_factor).to(device=vae.device, dtype=vae.dtype)
    frames = components.vae_accel.decode(z) if components.vae_accel is not None else vae.decode(z).sample
    return frames.contiguous().cpu()
