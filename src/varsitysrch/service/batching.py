"""Bounded work queues of the service: decoding uploads, and embedding them in micro-batches.

Both run on threads of their own, never on the request thread pool, so ``/healthz``,
``/metrics``, thumbnails and search by id stay fast whatever uploads do.  Both are bounded:
a job that does not fit is refused at once with :class:`Overloaded` (the service answers
503 with ``Retry-After``), so memory stays bounded (at most ``limit`` uploads held per
stage) and a client never waits behind an unbounded backlog.

:class:`MicroBatcher` embeds the queries that arrive together in one inference call: the
worker takes the first waiting query, then waits up to ``window_s`` for more (never past
``max_batch``, and only while more are being decoded), and runs them as one batch.  Whether
that raises throughput depends on how much cheaper per image a batch is on the machine;
``benchmarks/load_service.py`` measures it against ``max_batch=1`` in one run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


class Overloaded(Exception):
    """A bounded queue is full: answer 503 now rather than queue without bound."""

    def __init__(self, stage: str, limit: int) -> None:
        super().__init__(f"the service is busy ({stage} queue full: {limit} jobs); retry in a moment")
        self.stage = stage
        self.limit = limit


def _take_slots(slots: threading.BoundedSemaphore, n: int, stage: str, limit: int) -> None:
    """Acquire ``n`` slots without waiting, or none (:class:`Overloaded`)."""
    for taken in range(n):
        if not slots.acquire(blocking=False):
            for _ in range(taken):
                slots.release()
            raise Overloaded(stage, limit)


class BoundedPool:
    """A thread pool that holds at most ``limit`` jobs (running + waiting); more are refused."""

    def __init__(self, workers: int, limit: int, name: str) -> None:
        if workers < 1 or limit < workers:
            raise ValueError(f"{name}: need workers >= 1 and limit >= workers; got {workers}, {limit}")
        self.name = name
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"varsitysrch-{name}")
        self._depth = 0
        self._lock = threading.Lock()
        #: jobs started in the pool since it was made (what ran here, not on a request thread)
        self.started = 0

    @property
    def depth(self) -> int:
        return self._depth

    def reserve(self, n: int = 1) -> None:
        """Take ``n`` slots at once, or none (:class:`Overloaded`)."""
        _take_slots(self._slots, n, self.name, self.limit)
        with self._lock:
            self._depth += n

    def release(self, n: int = 1) -> None:
        """Give back ``n`` slots taken by :meth:`reserve` and not used by :meth:`run_reserved`."""
        for _ in range(n):
            self._release()

    def run_reserved(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn`` in a slot taken by :meth:`reserve`; the slot is freed when it ends."""
        try:
            fut = self._pool.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        with self._lock:
            self.started += 1
        fut.add_done_callback(lambda _: self._release())
        return fut

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        self.reserve()
        return self.run_reserved(fn, *args)

    def _release(self) -> None:
        with self._lock:
            self._depth -= 1
        self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class MicroBatcher:
    """Embeds queued ``uint8 [S, S, 3]`` images together: ``submit`` returns a future vector.

    Args:
        embed: ``uint8 [N, S, S, 3] -> float32 [N, dim]`` (an :class:`~varsitysrch.Embedder`'s).
        max_batch: largest batch (1 = per-request inference).
        window_s: how long the worker waits for more queries after the first one.
        limit: queries held (waiting + being embedded) before :class:`Overloaded`.
        observe: called with (batch size, seconds) after each batch.
        upcoming: how many queries are on their way (being decoded); the worker waits for more
            only while this is > 0, so a lone query never pays the window (default: always wait).
    """

    def __init__(
        self,
        embed: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 8,
        window_s: float = 0.005,
        limit: int = 64,
        observe: Callable[[int, float], None] | None = None,
        upcoming: Callable[[], int] = lambda: 1,
    ) -> None:
        if max_batch < 1 or window_s < 0 or limit < max_batch:
            raise ValueError(
                "need max_batch >= 1, window_s >= 0, limit >= max_batch; "
                f"got {max_batch}, {window_s}, {limit}"
            )
        self._embed = embed
        self.max_batch = max_batch
        self.window_s = window_s
        self.limit = limit
        self._observe = observe
        self._upcoming = upcoming
        self._queue: queue.Queue[tuple[np.ndarray, Future[np.ndarray]] | None] = queue.Queue()
        self._slots = threading.BoundedSemaphore(limit)
        self._depth = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: images embedded since the batcher was made (every view of every query counts once)
        self.embedded = 0

    @property
    def depth(self) -> int:
        return self._depth

    def submit(self, image: np.ndarray) -> Future[np.ndarray]:
        return self.submit_many([image])[0]

    def submit_many(self, images: list[np.ndarray]) -> list[Future[np.ndarray]]:
        """Queue several images at once (all, or none: :class:`Overloaded`)."""
        taken = len(images)
        _take_slots(self._slots, taken, "embed", self.limit)
        with self._lock:
            if self._closed:
                for _ in range(taken):
                    self._slots.release()
                raise Overloaded("embed", self.limit)
            self._depth += taken
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="varsitysrch-embed", daemon=True)
                self._thread.start()
        futs: list[Future[np.ndarray]] = []
        for im in images:
            f: Future[np.ndarray] = Future()
            futs.append(f)
            self._queue.put((im, f))
        return futs

    def _take(self) -> list[tuple[np.ndarray, Future[np.ndarray]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0 or self._upcoming() <= 0:
                    break  # the window is over, or nothing is on its way: run now
                try:
                    item = self._queue.get(timeout=min(left, 0.001))
                except queue.Empty:
                    continue
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            futs = [f for _, f in batch]
            try:
                t0 = time.perf_counter()
                out = self._embed(np.stack([im for im, _ in batch]))
                with self._lock:
                    self.embedded += len(batch)
                if self._observe is not None:
                    self._observe(len(batch), time.perf_counter() - t0)
                for f, v in zip(futs, out, strict=True):
                    f.set_result(v)
            except BaseException as exc:  # every waiting request gets the error, the worker goes on
                log.exception("embedding a batch of %d failed", len(batch))
                for f in futs:
                    if not f.done():
                        f.set_exception(exc)
            finally:
                with self._lock:
                    self._depth -= len(batch)
                for _ in batch:
                    self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            started = self._thread is not None
        if started:
            self._queue.put(None)
