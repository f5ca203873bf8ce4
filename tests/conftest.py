"""Shared fixtures. The tiny model family is built once per session into pytest's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def fploopd_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FPLOOPD_CACHE for the whole session (subprocesses inherit it): tests never touch ~/.cache."""
    cache = tmp_path_factory.mktemp("fploopd-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FPLOOPD_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_root(fploopd_cache: Path) -> Path:
    """The tiny family's root (what ``resolve("tiny")`` finds)."""
    from fploopd.engine.tiny import ensure_tiny

    return ensure_tiny(fploopd_cache)


@pytest.fixture(scope="session")
def tiny_components(tiny_root: Path) -> Any:
    """The tiny family loaded on CPU, shared by the session: do not modify its models."""
    from fploopd.engine.components import load_components
    from fploopd.engine.sources import resolve

    return load_components(resolve("tiny"), device="cpu")


@pytest.fixture(scope="session")
def pg_server() -> Any:
    """A throwaway PostgreSQL server (tests/pg_util.py); each test makes its own database in it."""
    import pg_util

    return pg_util.shared()
