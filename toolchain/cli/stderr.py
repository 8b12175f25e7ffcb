"""Library log records as plain lines on the stderr of the moment (looked up per record, so a test runner that swaps
``sys.stderr`` gets them, and a closed earlier stream is never written to), for the length of one command."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import typer


class StderrLines(logging.Handler):
    """``typer.echo(message, err=True)`` per record."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


@contextmanager
def logs_on_stderr(name: str) -> Iterator[None]:
    """Print the INFO+ records of logger ``name`` (and its children) on stderr while the block runs, once each (no
    propagation: a library such as onnxruntime.quantization configures the root logger, which would print each line
    twice); the logger's level, propagation and handlers are restored afterwards, so a library caller in the same
    process (a test, a notebook) sees the logger as it was."""
    logger = logging.getLogger(name)
    handler = StderrLines()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
