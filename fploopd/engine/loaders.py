"""Small helpers around transformers' and diffusers' loading, shared by ``components`` (which loads
the weights) and ``tiny`` (which saves the tiny family). Nothing heavy is imported before use: the
weight lookup imports ``tiny``, and the daemon's supervisor looks up weights without loading torch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def hf_loader(class_name: str, dtype: torch.dtype | None = None) -> Callable[[Path], Any]:
    """``from_pretrained`` of the transformers class ``class_name``, in ``dtype`` when given."""

    def load(path: Path) -> Any:
        import transformers

        cls = getattr(transformers, class_name)
        return cls.from_pretrained(path) if dtype is None else cls.from_pretrained(path, dtype=dtype)

    return load


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No diffusers/transformers progress bars inside (a bar per small file is noise); restored after."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    was = (df_logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled())
    df_logging.disable_progress_bar()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            df_logging.enable_progress_bar()
        if was[1]:
            hf_logging.enable_progress_bar()
