"""The model being served, and its replacement without a restart.

A :class:`Generation` is everything one model needs to answer queries: the
:class:`~varsitysrch.Searcher`, its ids, and the embedder with its micro-batcher.  A request
takes ``holder.current`` once and uses only that generation, so it is answered by one model
from start to end.  When the model file or the CSV changes (``update``, a new ``train``, a
copy: detected by size, mtime and inode, checked every ``interval`` seconds, or at once by
``POST /admin/reload``), the new generation is loaded completely on the watcher's thread
and then swapped in with one assignment; until then the old one answers, and a model that
fails to load (for instance a CSV that does not match it yet) leaves the old one serving and
is tried again when the files change again.  The embedder and its batcher are kept when the
extractor is the same, so a reload costs no new ONNX session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import stat_stamp
from .batching import MicroBatcher

log = logging.getLogger(__name__)

Stamp = tuple[int, ...]


def file_stamp(*paths: Path | None) -> Stamp:
    """What says the model (or CSV) file changed: :func:`varsitysrch._io.stat_stamp`."""
    return stat_stamp(*paths)


@dataclass(frozen=True)
class Generation:
    number: int
    searcher: Any  # varsitysrch.Searcher
    ids: tuple[str, ...]
    id_set: frozenset[str]
    embedder: Any | None  # varsitysrch._extractors.Embedder, None: search by id only
    batcher: MicroBatcher | None
    stamp: Stamp

    @property
    def k(self) -> int:
        return int(self.searcher.k)


class ModelHolder:
    """Loads generations of one model (file + optional CSV) and swaps them atomically."""

    def __init__(
        self,
        model: Path,
        csv: Path | None,
        *,
        make_searcher: Callable[[], Any],
        make_embedder: Callable[[Any], Any],
        make_batcher: Callable[[Any], MicroBatcher],
        on_reload: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.model = model
        self.csv = csv
        self._make_searcher = make_searcher
        self._make_embedder = make_embedder
        self._make_batcher = make_batcher
        self._on_reload = on_reload
        self._lock = threading.Lock()  # one load at a time
        self._failed: Stamp | None = None
        self.last_error: str | None = None
        self.current = self._load(1, None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, number: int, old: Generation | None) -> Generation:
        stamp = file_stamp(self.model, self.csv)
        searcher = self._make_searcher()
        ex = searcher.extractor
        embedder = batcher = None
        if ex is not None:
            if old is not None and old.embedder is not None and old.embedder.extractor == ex:
                embedder, batcher = old.embedder, old.batcher
            else:
                embedder = self._make_embedder(ex)
                size = ex.input_size  # warm up: the first run of an ONNX session is slow
                embedder.embed(np.full((1, size, size, 3), 255, np.uint8))
                batcher = self._make_batcher(embedder)
        ids = tuple(searcher.ids)
        return Generation(number, searcher, ids, frozenset(ids), embedder, batcher, stamp)

    def changed(self) -> bool:
        return file_stamp(self.model, self.csv) != self.current.stamp

    def reload_if_changed(self) -> bool:
        """Load and swap in the model if its files changed; ``True`` if a new one is served."""
        with self._lock:
            stamp = file_stamp(self.model, self.csv)
            if stamp == self.current.stamp or stamp == self._failed:
                return False
            old = self.current
            try:
                new = self._load(old.number + 1, old)
            except Exception as exc:  # keep serving the old model; retry when the files change again
                self._failed = stamp
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("model reload failed, still serving generation %d: %s", old.number, exc)
                self._on_reload("error")
                return False
            self.current = new  # the swap: one assignment, requests already running keep `old`
            self._failed = None
            self.last_error = None
            if old.batcher is not None and old.batcher is not new.batcher:
                old.batcher.close()  # its queued queries still finish
            log.info("serving model generation %d (%d images)", new.number, len(new.ids))
            self._on_reload("ok")
            return True

    # ------------------------------------------------------------ watcher
    def start(self, interval: float) -> None:
        if interval <= 0 or self._thread is not None:
            return
        self._stop.clear()

        def watch() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reload_if_changed()
                except Exception:  # pragma: no cover - never let the watcher die
                    log.exception("model watcher")

        self._thread = threading.Thread(target=watch, name="varsitysrch-model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
