"""Library log records as plain lines on the stderr of the moment (looked up per record, so a test runner that swaps
``sys.stderr`` gets them, and a closed earlier stream is never written to)."""

from __future__ import annotations

import logging

import typer


class StderrLines(logging.Handler):
    """``typer.echo(message, err=True)`` per record."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


def log_to_stderr(name: str) -> None:
    """Print the INFO+ records of logger ``name`` on stderr, once (no propagation: a library such as
    onnxruntime.quantization configures the root logger, which would print each line twice)."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, StderrLines) for h in logger.handlers):
        handler = StderrLines()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
