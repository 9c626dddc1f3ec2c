"""Checkpoints of the worker's state, and the duplicate filter of the ``errors`` replica.

Two independent halves, each consistent with the offsets it records (DESIGN.md: at-least-once
delivery, effectively-once state):

- **input side** (:class:`InputCheckpoint`): the feedback tasks (pending predictions, orphans,
  stream times, online metrics), the media memory and the input offsets they include, in one
  atomic ``inputs.npz``, plus the :class:`~reloop.processors.journal.InputJournal` of the batches
  processed since. Recovery = load the file, re-apply the journal;
- **replica side** (``error_memory.npz`` / ``schema_cache.npz``, written by the hot path): the
  error-memory sketch and the schema cache with the ``errors`` offsets they include and the
  :class:`RecentIds` filter, so a restored replica applies every record exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import msgspec
import numpy as np

from reloop.processors.changelog import decode_meta, key_partition
from reloop.processors.journal import InputJournal, JournalEntry
from reloop.processors.media import MediaCore
from reloop.processors.outputs import Output
from reloop.processors.tasks import FeedbackTasks
from reloop.state.snapshots import read_npz
from reloop.streams.codec import decode_event
from reloop.streams.events import Interaction, MediaEvent, RecommendationRequest
from reloop.streams.validation import Limits

log = logging.getLogger("reloop.checkpoint")



class RecentIds:
    """The last ``capacity`` error ids applied per ``errors`` partition (a duplicate filter).

    A worker that crashed after producing a batch's error records but before committing its
    input offsets produces them again on restart (byte-identical copies, right after the
    originals in each partition). A replica skips a record whose id it applied recently.

    >>> r = RecentIds(capacity=2)
    >>> [r.first_time(0, i) for i in ("a", "b", "a", "c", "a")]
    [True, True, False, True, True]
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._order: dict[int, deque[str]] = {}
        self._seen: dict[int, set[str]] = {}

    def first_time(self, partition: int, error_id: str) -> bool:
        """Record ``error_id`` in ``partition``; False if it was among the last ``capacity``."""
        seen = self._seen.setdefault(partition, set())
        if error_id in seen:
            return False
        order = self._order.setdefault(partition, deque())
        order.append(error_id)
        seen.add(error_id)
        if len(order) > self.capacity:
            seen.discard(order.popleft())
        return True

    def to_arrays(self) -> dict[str, np.ndarray]:
        parts = sorted(self._order)
        ids = [i for p in parts for i in self._order[p]]
        return {"recent_partitions": np.array([p for p in parts for _ in self._order[p]], np.int64),
                "recent_ids": np.array(ids, dtype=np.str_) if ids else np.zeros(0, "<U1")}

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        self._order, self._seen = {}, {}
        for p, i in zip(snap.get("recent_partitions", np.zeros(0, np.int64)).tolist(),
                        snap.get("recent_ids", np.zeros(0, "<U1")).tolist()):
            self.first_time(int(p), str(i))


@dataclass
class Recovered:
    """What :meth:`InputCheckpoint.recover` rebuilt."""

    tasks: FeedbackTasks
    media: MediaCore | None
    positions: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset per input
    resend: list[Output] = field(default_factory=list)  # outputs that may not have been produced
    entries: int = 0  # journal entries re-applied


class InputCheckpoint:
    """Writes and recovers the input-side state (see the module docstring).

    Args:
        directory: the worker's snapshot directory (``inputs.npz`` and ``journal/``).
        limits: validation limits, to decode journaled events.
        fsync: fsync every journal entry (survives a machine crash, not only a process crash).
    """

    def __init__(self, directory: Path, limits: Limits, fsync: bool = False) -> None:
        self.path = directory / "inputs.npz"
        self.limits = limits
        self.journal = InputJournal(directory / "journal", fsync=fsync)

    def collect(self, tasks: FeedbackTasks, media: MediaCore | None, positions: dict[tuple[str, int], int],
                resend: Sequence[Output] = ()) -> tuple[int, dict[str, np.ndarray]]:
        """Rotate the journal and copy the state now (between batches): returns the journal
        segment the checkpoint does not include and the arrays to write (safe in a thread)."""
        seq = self.journal.rotate()
        return seq, self.arrays(seq, tasks, media, positions, resend)

    def arrays(self, seq: int, tasks: FeedbackTasks, media: MediaCore | None,
               positions: dict[tuple[str, int], int], resend: Sequence[Output] = ()) -> dict[str, np.ndarray]:
        """The checkpoint's arrays of the state as it is, which includes the journal up to
        segment ``seq`` (:meth:`InputJournal.rotate`'s answer when the state was this)."""
        keys = sorted(positions)
        arrays = {
            "feedback": np.frombuffer(tasks.to_state(), np.uint8).copy(),
            "journal_seq": np.array(seq, np.int64),
            "position_topics": np.array([t for t, _ in keys], dtype=np.str_) if keys else np.zeros(0, "<U1"),
            "position_partitions": np.array([p for _, p in keys], np.int64),
            "position_offsets": np.array([positions[k] for k in keys], np.int64),
            "resend": np.frombuffer(msgspec.msgpack.encode(list(resend)), np.uint8).copy(),
        }
        if media is not None:
            arrays.update({f"media.{k}": v for k, v in media.snapshot().items()})
        return arrays

    def recover(self, tasks: FeedbackTasks, media: MediaCore | None) -> Recovered:
        """Load ``inputs.npz`` (if any) and re-apply the journal after it."""
        out = Recovered(tasks, media)
        first_seq = 0
        if self.path.exists():
            snap = read_npz(self.path)
            out.tasks = FeedbackTasks.from_state(snap["feedback"].tobytes())
            if media is not None:
                media_arrays = {k[6:]: v for k, v in snap.items() if k.startswith("media.")}
                if media_arrays:
                    out.media = MediaCore.restore(media_arrays)
            out.positions = {(str(t), int(p)): int(o) for t, p, o in zip(
                snap["position_topics"].tolist(), snap["position_partitions"].tolist(),
                snap["position_offsets"].tolist())}
            out.resend = [tuple(o) for o in msgspec.msgpack.decode(snap["resend"].tobytes(),  # type: ignore[misc]
                                                                   type=list[tuple[str, bytes | None, bytes | None]])]
            first_seq = int(snap["journal_seq"])
        for _, entry in self.journal.entries(first_seq):
            self.apply(entry, out)
            out.resend = list(entry.outputs)  # only the last entry can be unproduced
            out.entries += 1
        return out

    def apply(self, entry: JournalEntry, into: Recovered) -> None:
        """Re-apply one journaled batch (the same calls, in the same order, as when it ran)."""
        if into.media is not None:
            if entry.media:
                into.media.on_batch([decode_event(raw, MediaEvent, self.limits) for raw in entry.media])
            if entry.requests:  # scoring's retrievals (usage counts, last use)
                into.media.features_for_requests(
                    [decode_event(raw, RecommendationRequest, self.limits) for raw in entry.requests])
        for d in entry.tasks:
            into.tasks.apply(d.partition, d.pending,
                             [decode_event(raw, Interaction, self.limits) for raw in d.interactions], d.max_ts,
                             d.digests)
        for topic, partition, offset in entry.offsets:
            into.positions[(topic, partition)] = offset
        for _, key, value in entry.outputs:  # the batch's changelog metas: its sequence numbers
            if key is not None and key.endswith(b"/meta") and (meta := decode_meta(value)) is not None:
                into.tasks.changelog_seq[key_partition(key)] = meta.seq


#: Seconds a checkpoint child may take before SIGALRM ends it (a write takes about a second;
#: the worker's stop waits for the child, so a stuck one must not hold the stop for long).
CHILD_LIMIT_S = 30


class ChildFailed(RuntimeError):
    """A checkpoint child (:func:`write_in_child`) ended without writing."""


def write_in_child(write: Callable[[], None], limit_s: int = CHILD_LIMIT_S) -> int:
    """Fork; the child runs ``write()`` on its copy-on-write image of this process as it is
    now, then exits (status 0: written). Returns the child's pid (:func:`wait_child`).

    The fork costs milliseconds however large the state (page tables, not pages, are copied;
    measured 4-15 ms for a 1.3 GB process): the caller goes on at once while the child encodes
    and writes, which on the event loop took 0.2-0.7 s per checkpoint under ``reloop run``.
    The child runs no event loop, thread pool or Kafka client and ends with ``os._exit`` (no
    atexit handlers, no flush of buffers inherited from the parent). It ignores SIGINT and
    SIGTERM: a terminal's Ctrl-C reaches the whole process group, and the parent's stop waits
    for the write (well under a second) before it writes its final checkpoint, so the two never
    race and no half-written temporary file is left. On Linux it is killed if its parent dies
    (``PR_SET_PDEATHSIG``), so an orphan never replaces a checkpoint that a restarted worker
    wrote after it, and SIGALRM ends it after ``limit_s`` seconds (whole seconds).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x")
    >>> wait_child(write_in_child(lambda: open(path, "w").write("written")))
    >>> open(path).read()
    'written'
    """
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1  # the child
    try:
        try:
            signal.set_wakeup_fd(-1)  # the parent's event loop listens on it
        except ValueError:  # forked from a thread other than the main one: none was set here
            pass
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        _die_with_parent()
        if os.getppid() != parent:  # it died before the line above took effect
            return  # finally: exit 1
        signal.alarm(limit_s)  # a child stuck (e.g. on a lock another thread held at the fork) ends
        write()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported through the exit status
        with contextlib.suppress(Exception):
            os.write(2, f"reloop checkpoint child: {type(exc).__name__}: {exc}\n".encode()[:2000])
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
    nothing elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def wait_child(pid: int) -> None:
    """Block until checkpoint child ``pid`` ends.

    Raises:
        ChildFailed: it did not exit with status 0 (its write failed, or a signal ended it).
    """
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise ChildFailed(f"checkpoint child {pid} ended by signal {os.WTERMSIG(status)}")
    if os.waitstatus_to_exitcode(status) != 0:
        raise ChildFailed(f"checkpoint child {pid} exited with {os.waitstatus_to_exitcode(status)}")
