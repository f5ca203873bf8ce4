"""Seed policy: which seeds a job's generations use. The daemon decides them at claim time and the
one-shot commands before their run, both from here; nothing here loads a model."""

from __future__ import annotations

import secrets

from fploopd.spec import JobSpec


def pick_seeds(spec: JobSpec) -> list[int]:
    """Seeds for ``spec.count`` generations, decided once and recorded before any work.

    A given seed is used for the first generation; further ones are random unless the user asked
    for consecutive seeds.
    """
    if spec.seed is None:
        return [secrets.randbits(63) for _ in range(spec.count)]
    if spec.consecutive_seeds:
        return [spec.seed + i for i in range(spec.count)]
    return [spec.seed] + [secrets.randbits(63) for _ in range(spec.count - 1)]
