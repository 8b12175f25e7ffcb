"""Progress of a pass over a dataset split: a bar on a terminal, and a line every N batches in logs.

On a terminal (stderr is a tty) a transient rich bar shows ``what``, done/total and the time left. Elsewhere (CI logs,
``2> file``, a pipe) nothing can redraw, so the logger ``clip_debias.progress`` gets one line per ``every`` batches
and one at the end: ``decompose waterbirds/train: 640/4800 images (13%), batch 10/75, 12.3 s``. ``every`` defaults to
a tenth of the batches, so a pass logs about ten lines whatever its length, and also whenever ``SECONDS`` have passed
since the last line (a long pass over a large split never goes quiet for minutes). ``Heartbeat`` is the same
time-based line for work whose total is unknown until it ends (reading a metadata file). The CLI prints that logger's
records on stderr (``toolchain.cli.stderr``); a library caller attaches its own handler or none.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

log = logging.getLogger("clip_debias.progress")

LOG_LINES = 10  # about this many lines per pass when the bar is off
SECONDS = 5.0  # and a line at least this often while a pass or a read goes on


class Heartbeat:
    """``tick(count)`` per item; logs ``what: COUNT UNIT so far, T s`` on ``logger`` when ``SECONDS`` have passed
    since the start or the last line (nothing for work shorter than that)."""

    def __init__(self, what: str, unit: str, logger: logging.Logger = log, seconds: float | None = None) -> None:
        self.what, self.unit, self.logger = what, unit, logger
        self.seconds = SECONDS if seconds is None else seconds
        self._t0 = self._last = time.perf_counter()
        self._calls = 0

    def due(self) -> bool:
        """Whether ``seconds`` have passed since the last line (the clock is read once per 1,024 calls)."""
        self._calls += 1
        if self._calls & 1023:
            return False
        now = time.perf_counter()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True

    def tick(self, count: int) -> None:
        if self.due():
            self.logger.info("%s: %s %s so far, %.1f s", self.what, f"{count:,}", self.unit,
                             time.perf_counter() - self._t0)


class Progress:
    """``with Progress("verify waterbirds/test", total_images, n_batches) as p: ... p.advance(n_images)`` once per
    batch. ``enabled=False`` shows and logs nothing; ``console``: the rich console of the bar (default: stderr)."""

    def __init__(self, what: str, total: int, batches: int, *, unit: str = "images", enabled: bool = True,
                 console: Any = None, every: int | None = None) -> None:
        self.what, self.total, self.batches, self.unit, self.enabled = what, total, max(batches, 1), unit, enabled
        self.every = every or max(1, math.ceil(self.batches / LOG_LINES))
        self.done = self.batch = 0
        self._console = console
        self._bar: Any = None
        self._task: Any = None
        self._t0 = self._last = time.perf_counter()

    def __enter__(self) -> "Progress":
        self._t0 = self._last = time.perf_counter()
        if not self.enabled:
            return self
        from rich.console import Console

        console = self._console or Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self._bar = Bar(TextColumn(self.what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def advance(self, n: int) -> None:
        """One batch of ``n`` items done."""
        self.done += n
        self.batch += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.advance(self._task, n)
        elif self.batch % self.every == 0 or self.batch == self.batches or \
                time.perf_counter() - self._last >= SECONDS:
            self._last = time.perf_counter()
            log.info(self.line())

    def line(self) -> str:
        """``what: done/total unit (pct%), batch b/B, seconds``; no batch count when a batch is one item (e.g. an
        epoch: it would repeat the count)."""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        batch = f", batch {self.batch}/{self.batches}" if self.batches != self.total else ""
        return f"{self.what}: {self.done}/{self.total} {self.unit}{pct}{batch}, {time.perf_counter() - self._t0:.1f} s"

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
