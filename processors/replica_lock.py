"""Many readers or one writer: the replica thread writes the error-memory sketch while the
event loop reads it (:class:`GuardedCompensation`, over a :class:`ReadWriteLock`); see
:mod:`reloop.processors.hot_replica`. Re-exported by :mod:`reloop.processors.replica`."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from reloop.processors.compensation import Compensation

__all__ = ["GuardedCompensation", "ReadWriteLock"]


class ReadWriteLock:
    """Many readers or one writer (threads), phase-fair: a waiting writer goes before readers
    that arrive after it, and the readers waiting when a writer ends go before the next writer;
    so neither back-to-back reads nor back-to-back writes starve the other side (a read waits
    for at most one write). Readers: scoring's compensation reads (event loop), snapshot copies
    and digests; writers: sketch writes (replica thread), a model change."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0  # inside
        self._writer = False  # inside
        self._waiting_readers = 0
        self._waiting_writers = 0
        self._readers_turn = False  # a writer ended while readers waited: they go next

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._waiting_readers += 1
            while self._writer or (self._waiting_writers and not self._readers_turn):
                self._cond.wait()
            self._waiting_readers -= 1
            self._readers += 1
            if not self._waiting_readers:
                self._readers_turn = False
                self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers or self._readers_turn:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._readers_turn = self._waiting_readers > 0
                self._cond.notify_all()


class GuardedCompensation:
    """A compensation replica written by the replica thread while the event loop reads it.

    Every call that changes the sketch (``apply_memory_batch``, ``apply_errors``,
    ``on_model_change``, ``restore``) holds :attr:`lock` for writing; ``compensate``,
    ``snapshot`` and ``digest`` hold it for reading. So a read never sees a batch half
    written: in particular not the landmark rescale of :meth:`ErrorMemory.write`, which
    multiplies every bucket and then moves the landmark (a read in between would weigh the
    buckets with the wrong decay, and could mix a rescaled count with an unrescaled label
    sum). A read waits for at most one memory batch's write (one numba call, ``nogil``, plus
    its numpy preparation: well under a millisecond at ~100 rows); reads do not wait for
    each other. Everything else is delegated unguarded (counters, ``memory`` for benches).
    """

    _WRITES = ("apply_memory_batch", "apply_errors", "on_model_change", "restore")
    _READS = ("compensate", "snapshot", "digest")

    def __init__(self, inner: Compensation, lock: ReadWriteLock | None = None) -> None:
        self.inner = inner
        self.lock = lock or ReadWriteLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in self._WRITES or name in self._READS:
            guard = self.lock.write if name in self._WRITES else self.lock.read

            def guarded(*args: Any, **kwargs: Any) -> Any:
                with guard():
                    return attr(*args, **kwargs)
            return guarded
        return attr
