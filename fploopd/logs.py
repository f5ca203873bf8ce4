"""Logging: loguru, configured once by the entry point; stdlib logging routed into it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from loguru import logger

_FORMAT = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> {extra[job]: <12} {message}"


class _InterceptHandler(logging.Handler):
    """Sends records of libraries that use stdlib logging (diffusers, transformers) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(
    level: str = "INFO", log_dir: Path | None = None, filename: str = "fploopd.log", tag: str = "-"
) -> None:
    """Stderr always; a rotating file under ``log_dir`` when given (the daemon's ``.fploopd/logs``).

    Both follow ``level``: DEBUG lines reach the file only when DEBUG is asked for (``--log-level``,
    ``FPLOOPD_LOG_LEVEL`` or ``log_level`` in fploopd.toml), so the file stays readable and small.

    ``tag`` fills the job column outside a job (a worker process names its device there). Each
    process needs its own ``filename``: two processes must not rotate one file.
    """
    logger.remove()
    logger.configure(extra={"job": tag})
    logger.add(sys.stderr, level=level.upper(), format=_FORMAT, colorize=None)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        logger.add(
            log_dir / filename,
            level=level.upper(),
            format=_FORMAT,
            rotation="20 MB",
            retention=10,
            colorize=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
