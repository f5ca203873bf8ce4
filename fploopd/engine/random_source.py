"""``model = "random:full"`` / ``"random:tiny"``: FramePack's architectures with random weights, for
measuring the daemon itself (several workers, dispatch) on a machine that has no weights.

Speed does not depend on weight values. ``random:full`` builds the full-size set (13B transformer,
8B Llama, CLIP-L, SigLIP, HunyuanVideo VAE: about 42 GB) directly on the worker's device, never on
disk; ``random:tiny`` is the tiny family's encoders with a random tiny transformer and VAE (for the
CPU tests of the same path). Either is then placed by ``components.placed_components``, exactly as
``load_components`` places real weights (tier choice, ``accelerate``, the compiled decoder).

The videos are noise. So that they are never taken for a real model's, the identity every manifest
and checkpoint records says ``"random_weights": true``, and the supervisor, the worker and ``fploopd
doctor`` say so too. Only the daemon's workers and ``fploopd bench`` accept these names; the
one-shot commands refuse them (``sources.places_for``).

Torch-free at import: the settings validate the name with ``check_name``.
"""

from __future__ import annotations

import hashlib
from typing import Any

PREFIX = "random:"
SIZES = ("full", "tiny")
NAMES = tuple(PREFIX + s for s in SIZES)
WARNING = "random weights for benchmarks: every video is noise, not FramePack's"


def is_random(model: object) -> bool:
    return str(model).startswith(PREFIX)


def check_name(model: str) -> str:
    """``model`` itself when it is one of ``NAMES``; ValueError naming them otherwise."""
    if model not in NAMES:
        raise ValueError(f"{model!r} is no random model: use {' or '.join(NAMES)} (random weights, benchmarks only)")
    return model


def random_identity(model: str) -> dict[str, Any]:
    """What manifests and checkpoints record: plainly not a real model."""
    digest = hashlib.sha256(f"fploopd {model} seed 0".encode()).hexdigest()
    return {"source": model, "random_weights": True, "variant": "i2v", "sha256": digest, "note": WARNING}


def load_random(model: str, device: str, *, vram: str = "auto", fp8: bool = False, compile_vae: bool = False) -> Any:
    """The model set ``model`` names, built on ``device`` and placed as a worker places real weights."""
    import torch

    from fploopd.engine import random_models
    from fploopd.engine.components import encoder_dtype, placed_components, resolve_device

    size = check_name(model)[len(PREFIX):]
    dev = resolve_device(device)
    transformer = random_models.build_transformer(size, dev, torch.bfloat16)
    vae = random_models.build_vae(size, dev, encoder_dtype(dev))
    if size == "full":
        built = random_models.random_components(transformer, vae, dev)
    else:  # the tiny family's encoders and tokenizers (from disk, loaded on the CPU: nothing placed twice)
        built = random_models.components("tiny", "cpu")
        built.transformer, built.vae = transformer, vae
    names = ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae", "image_encoder",
             "feature_extractor")  # fmt: skip
    return placed_components({n: getattr(built, n) for n in names}, dev, random_identity(model), vram=vram, fp8=fp8,
                             compile_vae=compile_vae)  # fmt: skip
