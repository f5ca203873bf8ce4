"""``model = "random:full"`` / ``"random:tiny"``: FramePack's architectures with random weights, for
measuring the daemon itself (several workers, dispatch) on a machine that has no weights.

Speed does not depend on weight values. ``random:full`` builds the full-size set (13B transformer,
8B Llama, CLIP-L, SigLIP, HunyuanVideo VAE: about 42 GB) directly on the worker's device, never on
disk; ``random:tiny`` is the tiny family's encoders with a random tiny transformer and VAE (for the
CPU tests of the same path), built and placed by ``random_models.load_random`` exactly as
``load_components`` places real weights (tier choice, ``accelerate``, the compiled decoder).

The videos are noise. So that they are never taken for a real model's, the identity every manifest
and checkpoint records says ``"random_weights": true``, and the supervisor, the worker and ``fploopd
doctor`` say so too. Only the daemon's workers and ``fploopd bench`` accept these names; the
one-shot commands refuse them (``sources.places_for``).

Torch-free, and importing no other engine module: the settings validate the name with
``check_name``.
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
