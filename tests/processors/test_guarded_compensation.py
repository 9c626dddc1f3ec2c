"""GuardedCompensation: the replica thread writes the sketch while the event loop reads it; a
read must see every memory batch wholly or not at all (issue 14: the replica apply runs off the
event loop). Real ErrorMemory and numba kernels; no sleeps: the writer runs until done."""

from __future__ import annotations

import threading

import numpy as np

from reloop.processors.replica import GuardedCompensation, ReadWriteLock
from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig

# T = half_life / ln 2 = 5 s and batches STEP_S = 40 s apart: the landmark (grid of 100 T = 500 s)
# moves, rescaling every bucket, about every 12 batches; min_evidence 0: any evidence shows
CFG = ErrorMemoryConfig(tables=16, bits=14, half_life_s=5.0 * float(np.log(2.0)), min_evidence=0.0)
STEP_S = 40.0
T0 = 1600.0


class _Sketch:
    """The two calls of a compensation replica the guard is about, on a real ErrorMemory."""

    def __init__(self) -> None:
        self.memory = ErrorMemory(8, CFG)
        self.batches = 0

    def apply_memory_batch(self, batch: tuple[np.ndarray, ...]) -> int:
        self.batches += 1
        return self.memory.write(*batch)

    def compensate(self, p: np.ndarray, codes: np.ndarray, now: float) -> bytes:
        comp, evidence = self.memory.compensate(p, codes, now)
        return comp.tobytes() + evidence.tobytes()


def _batches(n: int = 24, rows: int = 20_000) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(7)
    out = []
    for k in range(n):
        codes = rng.integers(0, 1 << CFG.bits, size=(rows, CFG.tables), dtype=np.int32)
        y = (rng.random(rows) < 0.3).astype(np.float64)
        p = rng.random(rows)
        ts = np.full(rows, T0 + STEP_S * k)
        out.append((codes, y, p, ts))
    return out


def test_reads_never_see_a_batch_half_written():
    batches = _batches()
    rng = np.random.default_rng(8)
    q_codes = batches[-1][0][:64].copy()  # buckets every batch writes to
    q_p = rng.random(64)
    now = T0 + STEP_S * (len(batches) - 1)

    reference = _Sketch()  # the state after each whole batch, read the same way
    allowed = {reference.compensate(q_p, q_codes, now)}
    for b in batches:
        reference.apply_memory_batch(b)
        allowed.add(reference.compensate(q_p, q_codes, now))

    guarded = GuardedCompensation(_Sketch())
    done = threading.Event()

    reading = threading.Event()

    def writer() -> None:
        try:
            reading.wait(30)
            for b in batches:
                guarded.apply_memory_batch(b)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    reads = []
    while not done.is_set():
        reads.append(guarded.compensate(q_p, q_codes, now))
        reading.set()
    t.join()
    reads.append(guarded.compensate(q_p, q_codes, now))
    assert guarded.batches == len(batches)  # unguarded attributes are delegated
    assert reads[-1] == reference.compensate(q_p, q_codes, now)
    bad = [i for i, r in enumerate(reads) if r not in allowed]
    assert not bad, f"{len(bad)} of {len(reads)} reads saw a batch half written"
    assert len(set(reads)) > 2, f"the {len(reads)} reads did not overlap the writes"


def test_read_write_lock_excludes_writers_and_admits_readers_together():
    lock = ReadWriteLock()
    with lock.read():
        with lock.read():  # readers share
            pass
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def reader() -> None:
        with lock.read():
            inside.set()
            release.wait(30)
            order.append("read")

    def writer() -> None:
        with lock.write():
            order.append("write")

    r = threading.Thread(target=reader)
    r.start()
    assert inside.wait(30)
    w = threading.Thread(target=writer)
    w.start()
    w.join(0.2)  # the writer is held while the reader is inside (not a sync: only checked below)
    release.set()
    r.join(30)
    w.join(30)
    assert order == ["read", "write"]


def test_the_guard_is_transparent_to_what_a_batch_produces(settings, small_model, small_log) -> None:
    """A worker's replica wraps its error memory in the guard; its batches must still send their
    ``memory`` records (a type check on the wrapper once sent none: no worker ever compensated)."""
    from reloop.ops.serving import make_compensation
    from reloop.processors.step import memory_records
    from reloop.streams.events import Interaction
    from tests.integration.test_error_memory_replica import error_records

    comp = make_compensation(settings, small_model.scorer)
    records = error_records(small_model, [e for e in small_log if isinstance(e, Interaction)][:60])
    plain = memory_records(comp, records)
    assert plain, "the error memory's own records: the comparison below would be empty"
    assert memory_records(GuardedCompensation(comp), records) == plain
