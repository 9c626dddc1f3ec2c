"""The hot path's state side: checkpoints, replica snapshots, recovery, and where each input
partition starts when the group assigns it (see :mod:`processors.hot_path`, docs/guarantees.md).

A mixin of :class:`processors.hot_path.HotPath`: plain methods on its attributes (``tasks``,
``media``, ``positions``, ``checkpoint``, ``replica``, ``snapshot_path``), kept apart so the
shell's module holds the consume/produce loop and this one what is persisted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import ConsumerRebalanceListener

from processors.replica import write_files
from state.snapshots import write_npz_atomic

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathState", "SeekToCheckpoint"]


class HotPathState:
    """Snapshot, checkpoint and recovery methods of the hot path (mixin; module doc)."""

    # attributes provided by HotPath
    tasks: Any
    media: Any
    positions: dict[tuple[str, int], int]
    checkpoint: Any
    replica: Any
    snapshot_path: Path | None
    _inflight: list[Any]
    _resend: list[Any]
    _checkpoint_busy: bool
    _last_checkpoint: float

    def collect_snapshot(self, reuse_buffers: bool = False) -> dict[Path, dict[str, np.ndarray]]:
        """Copies of the replica side (see :meth:`ErrorsReplica.collect_snapshot`)."""
        return {} if self.snapshot_path is None else self.replica.collect_snapshot(self.snapshot_path, reuse_buffers)

    def save_snapshot(self) -> None:
        """Collect and write the replica side now (blocking)."""
        write_files(self.collect_snapshot())

    def _recover_inputs(self) -> None:
        """Input side: ``inputs.npz`` + the journal since (see :mod:`processors.checkpoint`)."""
        assert self.checkpoint is not None
        rec = self.checkpoint.recover(self.tasks, self.media)
        self.tasks, self.media, self.positions, self._resend = rec.tasks, rec.media, rec.positions, rec.resend
        if rec.positions or rec.entries:
            log.info("inputs_recovered", extra={"journal_entries": rec.entries, "pending": self.tasks.pending_count,
                                                "positions": {f"{t}:{p}": o for (t, p), o in rec.positions.items()},
                                                "resend": len(rec.resend)})

    def _start_checkpoint(self) -> None:
        """Collect the input side now (between batches) and write it off the event loop; the
        journal segments it includes are deleted once the file is durable."""
        assert self.checkpoint is not None
        ck = self.checkpoint
        seq, arrays = ck.collect(self.tasks, self.media, self.positions, self._inflight)
        self._checkpoint_busy = True
        self._last_checkpoint = time.monotonic()

        def done(fut: asyncio.Future[None]) -> None:
            self._checkpoint_busy = False
            if fut.exception() is None:
                ck.journal.delete_before(seq)
            else:
                log.error("checkpoint_failed", extra={"reason": str(fut.exception())})

        fut = asyncio.get_running_loop().run_in_executor(None, write_npz_atomic, ck.path, arrays)
        fut.add_done_callback(done)

    def save_checkpoint(self) -> None:
        """Write the input-side checkpoint now (blocking; at stop)."""
        if self.checkpoint is None:
            return
        seq, arrays = self.checkpoint.collect(self.tasks, self.media, self.positions, self._inflight)
        write_npz_atomic(self.checkpoint.path, arrays)
        self.checkpoint.journal.delete_before(seq)
        self.checkpoint.journal.close()


class SeekToCheckpoint(ConsumerRebalanceListener):
    """On assignment, start each input partition where the recovered state ends (the group's
    committed offset can be behind it: the journal is written before the commit)."""

    def __init__(self, hot: Any) -> None:
        self.hot = hot

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        consumer = self.hot.consumer
        assert consumer is not None
        for tp in assigned:
            pos = self.hot.positions.get((tp.topic, tp.partition))
            if pos is not None:
                consumer.seek(tp, pos)
        requests = self.hot.topics["requests"]
        self.hot.is_leader = any(tp.topic == requests and tp.partition == 0 for tp in assigned)
        self.hot.inputs_ready = True  # /ready: the group has given this worker its partitions
        log.info("inputs_assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
                                           "leader": self.hot.is_leader})
