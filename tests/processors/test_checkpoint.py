"""Input-side recovery: journal framing, state round trips, and journal replay equivalence.

The property that crash recovery rests on: restoring a checkpoint taken after batch k and
re-applying the journal of batches k+1..n gives exactly the state of a run that applied
batches 1..n without stopping, wherever k falls and however the journal was cut.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from reloop.processors.checkpoint import InputCheckpoint, RecentIds, Recovered
from reloop.processors.journal import InputJournal, JournalEntry, TaskDelta
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore
from reloop.processors.tasks import FeedbackTasks
from reloop.streams.codec import encode
from reloop.streams.events import Interaction
from reloop.streams.validation import Limits


def make_batches(seed: int, n_batches: int = 30, parts: int = 3) -> list[JournalEntry]:
    """Random batches of scored candidates and clicks over several partitions (time-ordered
    per partition, clicks a few seconds after their request, some orphans, duplicates)."""
    rng = random.Random(seed)
    t = {p: 1000.0 for p in range(parts)}
    offsets = {p: 0 for p in range(parts)}
    out, seen = [], []
    for b in range(n_batches):
        deltas = []
        for p in sorted(rng.sample(range(parts), rng.randint(1, parts))):
            pending, inters, req_ts, int_ts = [], [], [], []
            for r in range(rng.randint(0, 4)):
                t[p] += rng.uniform(0.5, 5.0)
                rid = f"r{b}-{p}-{r}"
                for c in range(3):
                    pending.append(Pending(rid, f"i{c}", f"u{p}", t[p], rng.random(), rng.random(), "v1",
                                           (rng.randrange(64), rng.randrange(64)), {"g": f"x{c}"}))
                req_ts.append(t[p])
                seen.append((rid, t[p]))
            for rid, ts in rng.sample(seen, min(len(seen), rng.randint(0, 5))):
                it = Interaction(user_id="u", item_id=f"i{rng.randrange(3)}", ts=max(ts + rng.uniform(0, 3), t[p]),
                                 label=1, request_id=rid)
                inters.append(it)
                int_ts.append(it.ts)
            offsets[p] += 1
            times = {"requests": max(req_ts, default=t[p]), "interactions": max(int_ts, default=t[p] - 40)}
            deltas.append(TaskDelta(p, pending, [encode(i) for i in inters], times))
        out.append(JournalEntry([("requests", p, offsets[p]) for p in range(parts)], [], [], deltas,
                                [("errors", None, b"x%d" % b)]))
    return out


def fresh() -> Recovered:
    return Recovered(FeedbackTasks(30.0, 1_000_000, OnlineMetrics(window=50)), None)


def run(entries: list[JournalEntry], ck: InputCheckpoint, into: Recovered) -> list[list]:
    """Apply entries like the worker, returning each batch's error records."""
    errors = []
    for e in entries:
        before = into.tasks.metrics.count
        ck.apply(e, into)
        errors.append(into.tasks.metrics.count - before)
    return errors


def state_of(r: Recovered) -> tuple:
    m = r.tasks.metrics
    return (r.tasks.to_state(), m.summary()["rolling_auc_base"], m.count, r.positions)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_checkpoint_plus_journal_equals_uninterrupted(tmp_path, seed):
    entries = make_batches(seed)
    reference = fresh()
    run(entries, InputCheckpoint(tmp_path / "ref", Limits()), reference)

    ck = InputCheckpoint(tmp_path / "w", Limits())
    live = fresh()
    k = random.Random(seed).randrange(1, len(entries) - 1)
    for i, e in enumerate(entries):
        ck.apply(e, live)
        ck.journal.append(e)
        if i == k:  # checkpoint after batch k
            from reloop.state.snapshots import write_npz_atomic
            seq, arrays = ck.collect(live.tasks, None, live.positions)
            write_npz_atomic(ck.path, arrays)
            ck.journal.delete_before(seq)
    ck.journal.close()
    recovered = InputCheckpoint(tmp_path / "w", Limits()).recover(fresh().tasks, None)
    assert recovered.entries == len(entries) - k - 1
    assert recovered.resend == list(entries[-1].outputs)
    assert state_of(recovered) == state_of(reference)
    # and it goes on identically
    more = make_batches(seed + 100, n_batches=5)
    ck2 = InputCheckpoint(tmp_path / "x", Limits())
    run(more, ck2, recovered)
    run(more, ck2, reference)
    assert state_of(recovered) == state_of(reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_checkpoint_written_by_a_child_is_the_state_at_the_fork(tmp_path, seed):
    """The worker's periodic checkpoint: a forked child encodes and writes it while the parent
    goes on applying batches; the file must hold the state at the fork, byte for byte what
    the parent would have collected then, and recover like an in-process checkpoint."""
    from reloop.processors.checkpoint import wait_child, write_in_child
    from reloop.state.snapshots import read_npz, write_npz_atomic

    entries = make_batches(seed)
    reference = fresh()
    run(entries, InputCheckpoint(tmp_path / "ref", Limits()), reference)
    ck = InputCheckpoint(tmp_path / "w", Limits())
    live = fresh()
    k = random.Random(seed).randrange(1, len(entries) - 5)
    pid = seq = expected = None
    for i, e in enumerate(entries):
        ck.apply(e, live)
        ck.journal.append(e)
        if i == k:
            seq = ck.journal.rotate()
            expected = ck.arrays(seq, live.tasks, None, live.positions)
            pid = write_in_child(lambda: write_npz_atomic(ck.path, ck.arrays(seq, live.tasks, None, live.positions)))
    wait_child(pid)  # after the parent applied the remaining batches
    ck.journal.delete_before(seq)
    ck.journal.close()
    written = read_npz(ck.path)
    assert sorted(written) == sorted(expected)
    for name, arr in expected.items():
        assert written[name].dtype == arr.dtype and written[name].tobytes() == arr.tobytes(), name
    recovered = InputCheckpoint(tmp_path / "w", Limits()).recover(fresh().tasks, None)
    assert recovered.entries == len(entries) - k - 1
    assert state_of(recovered) == state_of(reference)


def test_a_failed_child_write_is_reported(tmp_path):
    from reloop.processors.checkpoint import ChildFailed, wait_child, write_in_child

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(ChildFailed, match="exited with 1"):
        wait_child(write_in_child(fail))
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_child_finishes_its_write_through_ctrl_c_and_sigterm(tmp_path):
    """Ctrl-C reaches the whole process group: the child still writes (the parent's stop
    waits for it), instead of dying and leaving a temporary file behind."""
    import os
    import signal

    from reloop.processors.checkpoint import wait_child, write_in_child
    from reloop.state.snapshots import write_npz_atomic

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def write() -> None:
        os.write(ready_w, b"r")  # its signal dispositions are set: signal it now
        os.read(go_r, 1)  # blocks until the parent has signalled it
        write_npz_atomic(tmp_path / "inputs.npz", {"x": np.arange(3)})

    pid = write_in_child(write)
    assert os.read(ready_r, 1) == b"r"
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    os.write(go_w, b"g")
    wait_child(pid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.npz"]
    for fd in (ready_r, ready_w, go_r, go_w):
        os.close(fd)


def test_a_stuck_checkpoint_child_is_ended_by_its_time_limit():
    """A child that never finishes (e.g. a lock another thread held at the fork) must not hold
    the worker's stop, which waits for it."""
    import os

    from reloop.processors.checkpoint import ChildFailed, wait_child, write_in_child

    r, w = os.pipe()
    with pytest.raises(ChildFailed, match="signal 14"):  # SIGALRM
        wait_child(write_in_child(lambda: os.read(r, 1), limit_s=1))
    os.close(r)
    os.close(w)


def test_a_checkpoint_child_dies_with_its_parent(tmp_path):
    """A worker SIGKILLed mid-checkpoint takes its child with it: an orphan must not replace
    a checkpoint written later by the restarted worker."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys\n"
        "from reloop.processors.checkpoint import write_in_child\n"
        "r, w = os.pipe()\n"
        "pid = write_in_child(lambda: os.read(r, 1))\n"  # the child blocks until its parent writes
        "print(pid, flush=True)\n"
        "sys.stdin.read()\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=30)

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1][0] not in "ZX"  # a zombie has exited
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the condition, not synchronising on time
    assert not alive(child), f"checkpoint child {child} outlived its SIGKILLed parent"


def test_torn_tail_is_dropped_and_appends_continue(tmp_path):
    j = InputJournal(tmp_path)
    entries = make_batches(5, n_batches=4)
    for e in entries:
        j.append(e)
    j.close()
    seg = tmp_path / "journal-00000000.log"
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])  # crash in the middle of the last write
    j2 = InputJournal(tmp_path)
    got = [e for _, e in j2.entries(0)]
    assert got == entries[:3]
    assert seg.stat().st_size < len(data) - 7  # truncated back to the last whole frame
    j2.append(entries[3])
    assert [e for _, e in InputJournal(tmp_path).entries(0)] == entries


def test_corrupt_frame_stops_the_segment(tmp_path):
    j = InputJournal(tmp_path)
    for e in make_batches(6, n_batches=3):
        j.append(e)
    j.close()
    seg = tmp_path / "journal-00000000.log"
    data = bytearray(seg.read_bytes())
    data[20] ^= 0xFF  # flip a byte inside the first payload
    seg.write_bytes(bytes(data))
    assert list(InputJournal(tmp_path).entries(0)) == []


def test_pending_store_round_trip_resolves_identically():
    s = PendingStore(window_s=10.0)
    for r in range(5):
        for c in range(3):
            s.add(Pending(f"r{r}", f"i{c}", "u", 100.0 + r, 0.1 * c, 0.2, "v1", (c,), {"a": 1.5}))
    s.label("r1", "i0", 1, 102.0)
    s.park_orphan(Interaction(user_id="u", item_id="i9", ts=101.0, label=1, request_id="rX"))
    list(s.advance(110.5))
    clone = PendingStore.from_state(s.to_state())
    assert len(clone) == len(s) and clone.orphan_count == s.orphan_count
    a, b = list(s.drain()), list(clone.drain())
    assert a == b and len(a) > 0


def test_metrics_round_trip_keeps_rolling_auc_and_series():
    rng = np.random.default_rng(0)
    m = OnlineMetrics(window=64)
    for _ in range(7):
        y = rng.integers(0, 2, 40)
        m.update(y, rng.random(40), rng.random(40), np.arange(40.0))
    clone = OnlineMetrics.from_state(m.to_state())
    assert clone.summary() == m.summary() and clone.series == m.series
    y = rng.integers(0, 2, 30)
    pb, pc = rng.random(30), rng.random(30)
    m.update(y, pb, pc, np.arange(30.0))
    clone.update(y, pb, pc, np.arange(30.0))
    assert clone.summary() == m.summary() and clone.series == m.series


def test_recent_ids_round_trip_and_bound():
    r = RecentIds(capacity=3)
    for i in "abcd":
        assert r.first_time(1, i)
    assert not r.first_time(1, "d") and r.first_time(1, "a")  # "a" fell out of the window
    assert r.first_time(2, "d")  # per partition
    clone = RecentIds(capacity=3)
    clone.restore(r.to_arrays())
    assert [clone.first_time(1, i) for i in "bcdae"] == [r.first_time(1, i) for i in "bcdae"]
