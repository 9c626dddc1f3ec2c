"""A schema cache in a child process (reloop.processors.schema_child) is the in-process
SchemaCore to its callers: the same messages, snapshot, schemata and matches; a restore or a
reset in its place; no process until there is something to distil; a child that dies stops
the replica instead of dead-lettering records."""

from __future__ import annotations

import os
import signal

import msgspec
import numpy as np
import pytest

from reloop.processors.replica import ErrorsReplica
from reloop.processors.compensation import NoCompensation
from reloop.processors.schema_child import SchemaChildGone, SchemaCoreChild
from reloop.processors.schemas import SchemaCore
from reloop.processors.telemetry import WorkerTelemetry
from reloop.state.schemas.cache import SchemaCacheConfig
from reloop.streams.validation import Limits
from tests.processors.test_schema_core import _run, faulty  # noqa: F401 - the fixture

CFG = SchemaCacheConfig(half_life_s=5.0)


def _assert_same_state(a, b, ticks: bool = True) -> None:  # type: ignore[no-untyped-def]
    sa, sb = a.snapshot(), b.snapshot()
    assert sa.keys() == sb.keys()
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)
    enc = msgspec.json.encode
    assert enc(a.schemas(include_resolved=True)) == enc(b.schemas(include_resolved=True))
    assert a.records_in == b.records_in
    assert a.cache.ticks == b.cache.ticks or not ticks  # counted since built or restored


def _matches(core, records):  # type: ignore[no-untyped-def]
    ids, shift = core.cache.matcher.match_rows([r.features for r in records], "v1")
    return ids, shift.tolist()


def test_child_gives_the_in_process_outputs_state_and_matches(faulty) -> None:  # noqa: F811
    _, records = faulty
    local, child = SchemaCore(CFG), SchemaCoreChild(CFG)
    try:
        enc = msgspec.json.encode
        active_seen = 0
        for lo in range(0, 40_000, 2_500):
            batch = records[lo:lo + 2_500]
            assert enc(local.on_batch(batch)) == enc(child.on_batch(batch))
            assert _matches(local, records[:400]) == _matches(child, records[:400])
            active_seen = max(active_seen, len(child.schemas()))
        assert active_seen > 0  # the faults were promoted: matches were compared on real schemata
        _assert_same_state(local, child)
        assert child.cache.tick_seconds > 0.0 and child.cache.nbytes > 0
        # an idle stream's advance, in the child too
        end = records[39_999].ts + 3600.0
        assert enc(local.advance(end)) == enc(child.advance(end))
        _assert_same_state(local, child)
    finally:
        child.close()


def test_restored_and_fresh_replace_the_childs_cache(faulty) -> None:  # noqa: F811
    _, records = faulty
    head = SchemaCore(CFG)
    _run(head, records[:30_000], batch=1234)
    child = SchemaCoreChild(CFG)
    try:
        assert child.restored(head.snapshot()) is child and child.records_in == 30_000
        # restored and snapshotted, nothing distilled: no child process (a worker that is not
        # elected never starts one)
        assert child._proc is None  # noqa: SLF001
        _assert_same_state(head, child, ticks=False)
        child.start()  # elected: the child starts, with the restored state
        assert child._proc is not None  # noqa: SLF001
        _assert_same_state(head, child, ticks=False)
        whole = SchemaCore(CFG)
        _run(whole, records[:30_000], batch=5000)
        tail_local = _run(whole, records[30_000:], batch=3000)
        tail_child = _run(child, records[30_000:], batch=3000)
        assert msgspec.json.encode(tail_local) == msgspec.json.encode(tail_child)
        _assert_same_state(whole, child, ticks=False)
        assert child._proc is not None  # noqa: SLF001
        assert child.fresh() is child
        _assert_same_state(SchemaCore(CFG), child, ticks=False)
    finally:
        child.close()


def test_a_failed_call_raises_and_a_dead_child_stops_the_replica(faulty) -> None:  # noqa: F811
    _, records = faulty
    child = SchemaCoreChild(CFG)
    try:
        assert child.on_batch(records[:100]) == ([], [])  # the first batch starts the child
        with pytest.raises(ValueError, match="unknown call"):  # the child's exception, raised here
            child._call("no_such_call")  # noqa: SLF001 - the error path of any call
        with pytest.raises(ValueError):  # a malformed snapshot: as SchemaCore.restore raises it
            child.restored({"no": np.zeros(1)})
        assert child.on_batch(records[100:200]) == ([], [])  # the child lives on after an error
        replica = ErrorsReplica(NoCompensation(), child, Limits(), WorkerTelemetry())
        os.kill(child._proc.pid, signal.SIGKILL)  # noqa: SLF001
        child._proc.wait(10)  # noqa: SLF001

        with pytest.raises(SchemaChildGone):  # the replica's poison-pill rule does not apply
            replica._isolated(child.on_batch, records[:100], "schema_cache")  # noqa: SLF001
        assert replica.outbox == [] and replica.telemetry.dead_letters.labels("errors")._value.get() == 0
    finally:
        child.close()
