"""The distilling worker's schema cache, run in a child process (``worker.schema_in_child``).

A schema-cache tick is mostly Python (the greedy choice, its tests, the examples), and on the
replica thread it held the GIL the event loop needs to serve: at 300 requests/s with feedback
flowing, the worker's latency p50 doubled with the schema cache on (docs/operations.md). In a
child process the ticks take a core of their own, and the replica thread waits on a socket
(no GIL held) while the child applies a batch.

:class:`SchemaCoreChild` is a :class:`~reloop.processors.schemas.SchemaCore` to its callers
(:class:`~reloop.processors.replica.ErrorsReplica`, scoring, the web pages): the same verbs
(:meth:`on_batch`, :meth:`advance`, :meth:`snapshot`, :meth:`restored`, :meth:`fresh`,
:meth:`schemas`), the same outputs in the same order, and the same snapshot arrays; the
child runs a plain :class:`SchemaCore`. Its ``cache`` is a :class:`CacheView`: what the
parent reads between calls (the matcher scoring uses, the config, tick counters, the
schemata), refreshed from each reply. The matcher is rebuilt in the parent from the child's
active schemata whenever the child's was rebuilt: :class:`SchemaMatcher` is a pure function
of that list, so both match alike.

No process runs until the worker is elected to distil (:meth:`start`) or the first batch to
distil comes: until then the (empty or restored) cache is held in process, so a worker that
is not elected starts none (a child takes ~180 MB: numba's compiled kernels). Records cross
the socket as msgpack (msgspec), replies and exceptions as pickles: an exception the child's
cache raises is raised again in the parent, so the replica treats it as it would in process.
One call at a time (a lock): the replica thread applies and snapshots; the web pages read the
view. The child ignores SIGINT (a terminal's Ctrl-C reaches the whole process group; the
worker stops it) and ends when the worker's end of the socket closes, also when the worker is
SIGKILLed. If the child dies, the next call raises :class:`SchemaChildGone`, which the replica
does not isolate: the worker stops, and restarts from its snapshots like any crashed worker.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

import msgspec
import numpy as np

from reloop.processors.schemas import SchemaAlert, SchemaCore, SchemaUpdate
from reloop.state.schemas.cache import SchemaCacheConfig
from reloop.state.schemas.match import SchemaMatcher
from reloop.state.schemas.types import Schema
from reloop.streams.events import ErrorRecord

__all__ = ["CacheView", "SchemaChildError", "SchemaChildGone", "SchemaCoreChild"]

log = logging.getLogger("reloop.schema_child")


class SchemaChildGone(RuntimeError):
    """The child process died (or was stopped); its cache is lost with it."""


class SchemaChildError(RuntimeError):
    """The child's cache raised an exception that could not be pickled (its type and message)."""


class CacheView:
    """What the parent reads of the child's :class:`~reloop.state.schemas.cache.SchemaCache`.

    Attributes:
        config: the cache's configuration.
        matcher: the matcher over the active schemata, as the child's (rebuilt when it is).
        ticks, tick_seconds: the child's evaluation ticks and their CPU seconds (thread time).
    """

    def __init__(self, config: SchemaCacheConfig, call: Callable[[str], Any]) -> None:
        self.config = config
        self.matcher = SchemaMatcher([], config.bias_prior, config.max_logit_bias)
        self.ticks = 0
        self.tick_seconds = 0.0
        self._call = call
        self._active: list[Schema] = []
        self._resolved: list[Schema] = []

    def schemas(self, include_resolved: bool = False) -> list[Schema]:
        """Active schemata by decreasing impact (then recently resolved ones, newest first)."""
        return self._active + (self._resolved if include_resolved else [])

    @property
    def nbytes(self) -> int:
        """The child's cache size in bytes, asked of the child (a call: not on the serving loop)."""
        return int(self._call("nbytes"))

    def update(self, ticks: int, tick_seconds: float, schemata: tuple | None) -> None:
        """Take the child's cache state (:func:`_state`)."""
        self.ticks, self.tick_seconds = ticks, tick_seconds
        if schemata is not None:
            self._active, self._resolved = schemata
            self.matcher = SchemaMatcher(self._active, self.config.bias_prior, self.config.max_logit_bias)


class SchemaCoreChild:
    """A :class:`SchemaCore` in a child process (module doc).

    Args:
        config: the cache configuration (defaults if None).

    >>> core = SchemaCoreChild(SchemaCacheConfig())
    >>> core.on_batch([])
    ([], [])
    >>> sorted(core.snapshot()) == sorted(SchemaCore(SchemaCacheConfig()).snapshot())
    True
    >>> core.close()
    """

    def __init__(self, config: SchemaCacheConfig | None = None) -> None:
        config = config if config is not None else SchemaCacheConfig()
        self.cache = CacheView(config, self._call)
        self.records_in = 0
        self._lock = threading.Lock()
        self._encode = msgspec.msgpack.Encoder().encode
        # until the election (or the first batch) the cache is an empty or restored one held
        # here: a worker that never distils starts no child
        self._idle: SchemaCore | None = SchemaCore(config)
        self._sent: list[Any] = [None]
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def _start(self) -> None:
        """Start the child with the idle core's state (under the lock)."""
        assert self._idle is not None
        # a fresh interpreter (no fork of a threaded asyncio worker, no re-import of __main__);
        # the child's end of the socket lives only in the child: its death is our EOF
        ours, theirs = socket.socketpair()
        with theirs:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        self._conn = Connection(ours.detach())
        self._conn.send((self.cache.config, self._idle.snapshot()))
        self._idle = None
        log.info("schema_child_started", extra={"pid": self._proc.pid})

    def start(self) -> None:
        """Start the child now (the worker was elected to distil), so that it has warmed up when
        the first batch comes; no-op once started."""
        with self._lock:
            if self._conn is None and self._idle is not None:
                self._start()

    def _call(self, op: str, arg: Any = None) -> Any:
        with self._lock:
            if self._conn is None and self._idle is not None:
                if op not in ("on_batch", "advance"):  # nothing distilled yet: no child needed
                    self._idle, out = _apply(self._idle, op, arg)
                    self._take(_state(self._idle, self._sent))
                    return out
                self._start()
            if self._conn is None or self._proc is None:
                raise SchemaChildGone("schema-cache child closed")
            try:
                self._conn.send((op, arg))
                status, out, state = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise SchemaChildGone(f"schema-cache child {self._proc.pid} is gone "
                                      f"(exit code {self._proc.poll()}): {type(exc).__name__}") from None
            self._take(state)
        if status != "ok":
            raise out
        return out

    def _take(self, state: tuple) -> None:
        """The child core's counter and cache state, as of its last call (:func:`_state`)."""
        self.records_in = state[0]
        self.cache.update(*state[1:])

    def on_batch(self, records: Sequence[ErrorRecord]) -> tuple[list[SchemaUpdate], list[SchemaAlert]]:
        """:meth:`SchemaCore.on_batch` in the child."""
        return self._call("on_batch", self._encode(records))

    def advance(self, watermark: float) -> tuple[list[SchemaUpdate], list[SchemaAlert]]:
        """:meth:`SchemaCore.advance` in the child."""
        return self._call("advance", float(watermark))

    def schemas(self, include_resolved: bool = False) -> list[Schema]:
        """The child's schemata as of the last call."""
        return self.cache.schemas(include_resolved)

    def snapshot(self) -> dict[str, np.ndarray]:
        """:meth:`SchemaCore.snapshot` of the child's core."""
        return self._call("snapshot")

    def restored(self, snap: dict[str, np.ndarray]) -> SchemaCoreChild:
        """This core with the child's cache restored from ``snap`` (:meth:`SchemaCore.restore`)."""
        self.cache.config = self._call("restore", snap)
        return self

    def fresh(self) -> SchemaCoreChild:
        """This core with the child's cache emptied (same configuration)."""
        self._call("fresh", self.cache.config)
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """End the child, if it started (it exits when its socket closes); idempotent."""
        with self._lock:
            self._idle = None
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout_s)

    def __repr__(self) -> str:
        if self._proc is None:
            return "SchemaCoreChild(not started)"
        return f"SchemaCoreChild(pid={self._proc.pid}, exit code={self._proc.poll()})"


def _state(core: SchemaCore, sent: list[Any]) -> tuple:
    """The core's counter and the view's fields; the schemata only when the child's matcher was
    rebuilt since ``sent[0]``."""
    cache = core.cache
    schemata = None
    if cache.matcher is not sent[0]:
        sent[0] = cache.matcher
        active = cache.schemas()
        schemata = (active, cache.schemas(include_resolved=True)[len(active):])
    return core.records_in, cache.ticks, cache.tick_seconds, schemata


def _apply(core: SchemaCore, op: str, arg: Any) -> tuple[SchemaCore, Any]:
    """One call on ``core``: (the core after it, the call's result)."""
    if op == "on_batch":
        return core, core.on_batch(_decode_records(arg))
    if op == "advance":
        return core, core.advance(arg)
    if op == "snapshot":
        return core, core.snapshot()
    if op == "nbytes":
        return core, core.cache.nbytes
    if op == "restore":
        core = SchemaCore.restore(arg)
        return core, core.cache.config
    if op == "fresh":
        return SchemaCore(arg), None
    raise ValueError(f"unknown call {op!r}")


_decode_records = msgspec.msgpack.Decoder(list[ErrorRecord]).decode


def _serve(conn: Connection) -> None:
    """The child: apply each call to one :class:`SchemaCore` until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker stops us (its socket closes)
    from reloop.processors.warmup import warm_up

    try:
        config, snap = conn.recv()
    except (EOFError, OSError):
        return
    warm_up(None, config)  # the kernels compiled (or loaded) before the first batch waits on them
    core = SchemaCore.restore(snap)
    sent: list[Any] = [None]
    while True:
        try:
            op, arg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            core, out = _apply(core, op, arg)
            reply: tuple = ("ok", out, _state(core, sent))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent
            reply = ("error", exc, _state(core, sent))
        try:
            try:
                conn.send(reply)
            except (EOFError, OSError):
                raise
            except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
                exc = reply[1]
                conn.send(("error", SchemaChildError(f"{type(exc).__name__}: {str(exc)[:500]}"), reply[2]))
        except (EOFError, OSError):
            return


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
