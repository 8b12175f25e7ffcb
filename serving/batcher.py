"""An asyncio dynamic batcher in front of one model (``Classifier.run``): images from concurrent requests share one
model call.

``submit(arrays, deadline)`` queues a request's preprocessed images [3, H, W] and waits for their (logits row, embedding
row). One loop takes the oldest queued image and, while other requests are still being decoded (inside ``incoming()``),
waits at most ``max_wait_s`` for more (up to ``max_batch`` images, in arrival order): a lone request never waits,
concurrent ones share a call. It then drops images whose request is gone or past its deadline, and runs the rest as ONE
``run(np.stack(images))`` call in a model thread (the runtime runs an int8 model image by image inside that call, so a
neighbour never changes an answer). ``model_threads`` calls run at once at most (ONNX Runtime's ``Run`` is thread-safe;
each call uses the session's intra-op threads); while they run, the next batch gathers.

Bounded: at most ``max_queue`` images wait; a request that would pass it is refused at once with ``QueueFull`` (the
server answers 503 + Retry-After) instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` images."""


class DeadlinePassed(Exception):
    """A request's time budget ran out before its images reached the model."""


@dataclass
class _Item:
    array: np.ndarray
    deadline: float  # time.monotonic()
    future: asyncio.Future = field(repr=False)


RunFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
ObserveFn = Callable[[int, float], None]  # (images in the call, seconds)


class Batcher:
    def __init__(self, run: RunFn, *, max_batch: int, max_wait_s: float, max_queue: int,
                 observe: ObserveFn | None = None, model_threads: int = 1) -> None:
        if model_threads < 1:
            raise ValueError(f"model_threads {model_threads}: expected >= 1")
        self.run, self.max_batch, self.max_wait_s, self.max_queue = run, max_batch, max_wait_s, max_queue
        self.observe = observe or (lambda n, s: None)
        self.queue: deque[_Item] = deque()
        self.wakeup = asyncio.Event()
        self.model_threads = model_threads
        self.model_pool = ThreadPoolExecutor(model_threads, thread_name_prefix="model")
        self.task: asyncio.Task | None = None
        self.calls: set[asyncio.Task] = set()  # model calls in flight
        self.incoming_requests = 0

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Around a request's decoding: the batch being gathered waits (``max_wait_s`` at most) for it."""
        self.incoming_requests += 1
        try:
            yield
        finally:
            self.incoming_requests -= 1
            self.wakeup.set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.gather(*self.calls, return_exceptions=True)  # calls in flight answer their requests
        for item in self.queue:
            if not item.future.done():
                item.future.set_exception(DeadlinePassed("the server is stopping"))
        self.queue.clear()
        self.model_pool.shutdown(wait=True)

    @property
    def queued(self) -> int:
        return len(self.queue)

    async def submit(self, arrays: list[np.ndarray], deadline: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """(logits row, embedding row) of each array, in order; ``QueueFull`` at once when the queue cannot take
        them, ``DeadlinePassed`` when ``deadline`` (monotonic) comes first."""
        if len(self.queue) + len(arrays) > self.max_queue:
            raise QueueFull(f"{len(self.queue)} images queued, at most {self.max_queue}")
        loop = asyncio.get_running_loop()
        items = [_Item(a, deadline, loop.create_future()) for a in arrays]
        self.queue.extend(items)
        self.wakeup.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)),
                                               max(0.0, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            raise DeadlinePassed("time budget spent waiting for the model") from None
        finally:
            for i in items:  # a request that left (timeout, client gone) frees its queue places
                if not i.future.done():
                    i.future.cancel()

    def _take(self) -> list[_Item]:
        batch, now = [], time.monotonic()
        while self.queue and len(batch) < self.max_batch:
            item = self.queue.popleft()
            if item.future.done():
                continue
            if item.deadline <= now:
                item.future.set_exception(DeadlinePassed("time budget spent waiting for the model"))
                continue
            batch.append(item)
        return batch

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self.model_threads)
        while True:
            await slots.acquire()  # a model thread is free: gather its batch
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            first = time.monotonic()
            while (len(self.queue) < self.max_batch and self.incoming_requests > 0
                   and time.monotonic() - first < self.max_wait_s):
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), self.max_wait_s - (time.monotonic() - first))
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                slots.release()
                continue
            call = asyncio.get_running_loop().create_task(self._call(batch))
            self.calls.add(call)
            call.add_done_callback(lambda t: (self.calls.discard(t), slots.release()))

    async def _call(self, batch: list[_Item]) -> None:
        """One model call on ``batch``; its rows (or its error) go to the batch's requests."""
        t0 = time.perf_counter()
        try:
            logits, emb = await asyncio.get_running_loop().run_in_executor(
                self.model_pool, self.run, np.stack([i.array for i in batch]))
        except Exception as e:  # noqa: BLE001 -- the model's error goes to every request of the batch
            for i in batch:
                if not i.future.done():
                    i.future.set_exception(e)
            return
        self.observe(len(batch), time.perf_counter() - t0)
        for k, i in enumerate(batch):
            if not i.future.done():
                i.future.set_result((logits[k], emb[k]))
