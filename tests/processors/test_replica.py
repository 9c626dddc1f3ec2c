"""Replica snapshots: a crash between the two files' renames never mixes generations."""

from __future__ import annotations

import os

import msgspec
import numpy as np
import pytest

from reloop.processors.replica import _matching_snapshots, previous, write_files


def gen(offset: int, tag: float) -> dict[str, np.ndarray]:
    return {"errors_partitions": np.array([0]), "errors_offsets": np.array([offset]), "x": np.array([tag])}


def test_newest_common_generation_is_chosen_after_a_torn_pair(tmp_path):
    em, sc = tmp_path / "error_memory.npz", tmp_path / "schema_cache.npz"
    write_files({sc: gen(10, 1.0), em: gen(10, 2.0)})
    write_files({sc: gen(20, 3.0), em: gen(20, 4.0)})
    assert {k: float(v["x"][0]) for k, v in _matching_snapshots({"e": em, "s": sc}).items()} == {"e": 4.0, "s": 3.0}
    # crash after the schema cache's new file, before the error memory's: one generation apart
    os.replace(sc, previous(sc))
    write_files({sc: gen(30, 5.0)})
    got = _matching_snapshots({"e": em, "s": sc})
    assert {k: int(v["errors_offsets"][0]) for k, v in got.items()} == {"e": 20, "s": 20}


def test_no_common_generation_is_an_error(tmp_path):
    em, sc = tmp_path / "error_memory.npz", tmp_path / "schema_cache.npz"
    write_files({sc: gen(10, 1.0), em: gen(99, 2.0)})
    with pytest.raises(ValueError, match="no generation common"):
        _matching_snapshots({"e": em, "s": sc})


# ------------------------------------------------------------------ the schema cache's input order

from collections import namedtuple  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reloop.processors.compensation import NoCompensation  # noqa: E402
from reloop.processors.metrics import OnlineMetrics  # noqa: E402
from reloop.processors.reorder import EventTimeReorder  # noqa: E402
from reloop.processors.replica import ErrorsReplica  # noqa: E402
from reloop.processors.schemas import SchemaCore  # noqa: E402
from reloop.processors.telemetry import WorkerTelemetry  # noqa: E402
from reloop.state.schemas.cache import SchemaCacheConfig  # noqa: E402
from reloop.streams.codec import encode  # noqa: E402
from reloop.streams.events import ErrorRecord  # noqa: E402
from reloop.streams.validation import Limits  # noqa: E402

TP = namedtuple("TP", "topic partition")
Msg = namedtuple("Msg", "offset value")
T0 = 1_700_000_000.0
PARTS = 4
# small cache: promotes within a few hundred records, evicts (capacity), recycles predicate ids
CFG = SchemaCacheConfig(capacity=64, max_predicates=136, min_support=15.0, retire_support=5.0, z_min=2.0, z_retire=1.5,
                        half_life_s=2.0, shift_half_life_s=0.5, eval_every_s=0.1, recent_window=64,
                        publish_every_s=0.5, cooldown_s=1.0, hold_s=1.0, reorder_partitions=PARTS)


def partition_logs(seed: int, n: int, late_every: int = 7, late_s: float = 1.5) -> dict[int, list[ErrorRecord]]:
    """Per partition, records in that partition's order: mostly increasing event time, every
    ``late_every``-th one ``late_s`` behind (like the positives of a closed attribution window),
    genre g1 failing (label 0 at p ~0.4)."""
    rng = np.random.default_rng(seed)
    logs: dict[int, list[ErrorRecord]] = {}
    for p in range(PARTS):
        t, out = T0 + rng.uniform(0, 0.05), []
        for i in range(n):
            t += rng.exponential(0.01)
            ts = t - late_s * rng.uniform(0.5, 1.0) if i % late_every == late_every - 1 else t
            g = f"g{rng.integers(0, 4)}"
            pred = float(rng.uniform(0.1, 0.5))
            label = int(rng.random() < (0.02 if g == "g1" else pred))
            out.append(ErrorRecord(error_id=f"p{p}-{i}", user_id=f"u{p}", item_id="i", ts=float(ts), label=label,
                                   base_pred=pred, comp_pred=pred, model_version="v1",
                                   features={"genre": g, "device": f"d{rng.integers(0, 3)}",
                                             "x": f"x{rng.integers(0, 400)}"}))
        logs[p] = out
    return logs


def polls(logs: dict[int, list[ErrorRecord]], draw: list[tuple[int, int]], dup_every: int = 0) -> list[dict]:
    """The partitions' messages as a sequence of polls: ``draw`` says, per poll, which
    partition goes first and how many messages each partition gives (cycled). ``dup_every``:
    every so many records of a partition, a copy of an earlier one at a later offset (a
    crashed producer's re-send)."""
    msgs = {p: [] for p in logs}
    for p, recs in logs.items():
        for i, r in enumerate(recs):
            msgs[p].append(encode(r))
            if dup_every and i % dup_every == dup_every - 1:
                msgs[p].append(encode(recs[i - 1]))
    pos, out, k = {p: 0 for p in logs}, [], 0
    while any(pos[p] < len(msgs[p]) for p in logs):
        first, size = draw[k % len(draw)]
        k += 1
        batch = {}
        for p in [(first + j) % PARTS for j in range(PARTS)]:
            take = msgs[p][pos[p]:pos[p] + size + p]
            if take:
                batch[TP("errors", p)] = [Msg(pos[p] + j, v) for j, v in enumerate(take)]
                pos[p] += len(take)
        out.append(batch)
    return out


class Recording(NoCompensation):
    """Identity compensation that remembers what it was given."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def apply_errors(self, records):
        self.seen += [r.error_id for r in records]
        return len(records)


def replica(cfg: SchemaCacheConfig = CFG) -> ErrorsReplica:
    return ErrorsReplica(Recording(), SchemaCore(cfg), Limits(), WorkerTelemetry(), quality_window=50)


def cache_arrays(r: ErrorsReplica, tmp_path) -> dict[str, np.ndarray]:
    files = r.collect_snapshot(tmp_path / "error_memory.npz")
    return files[tmp_path / "schema_cache.npz"]


def assert_same_arrays(x: dict[str, np.ndarray], y: dict[str, np.ndarray], skip=()) -> None:
    assert x.keys() == y.keys()
    for name in x:
        if name not in skip:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


LOGS = partition_logs(1, 150)
DRAWS = st.lists(st.tuples(st.integers(0, PARTS - 1), st.integers(0, 30)), min_size=1, max_size=12).filter(
    lambda d: any(s > 0 for _, s in d))


@settings(max_examples=25, deadline=None)
@given(a=DRAWS, b=DRAWS)
def test_schema_cache_does_not_depend_on_interleaving_or_batching(a, b, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("il")
    snaps, outs = [], []
    for draw in (a, b):
        r = replica()
        for batch in polls(LOGS, draw):
            r.apply_batch(batch)
        snaps.append(cache_arrays(r, tmp))
        outs.append(msgspec.json.encode(r.outbox))
        assert r.reorder.clamped > 0 and r.reorder.overtaken == r.reorder.forced == 0
    # one log: the same offsets, and the same cache + buffer, bit for bit (the cluster quality
    # is measured in arrival order: its counts and histogram AUC are the same, not its bytes)
    assert_same_arrays(*snaps, skip=("quality",))
    assert outs[0] == outs[1]
    qa, qb = (OnlineMetrics.from_state(s["quality"].tobytes()).summary() for s in snaps)
    assert (qa["labelled"], qa["positives"], qa["auc_base"], qa["auc_compensated"]) == \
        (qb["labelled"], qb["positives"], qb["auc_base"], qb["auc_compensated"])
    core = SchemaCore.restore(snaps[0])
    assert core.records_in + len(snaps[0]["reorder_keys"]) == PARTS * 150


def test_the_fixture_is_not_trivial(tmp_path):
    r = replica()
    for batch in polls(LOGS, [(0, 7), (2, 3)]):
        r.apply_batch(batch)
    assert r.schema_core.records_in > 500 and r.reorder.held < 100
    assert any(s.signature == ["genre=g1"] for s in r.schema_core.schemas(include_resolved=True))
    assert int(r.schema_core.cache._meta[1]) > 0  # Space-Saving evicted: order matters there
    assert r.schema_core.cache.vocab.free or r.schema_core.cache.vocab.dropped


def test_one_partition_ahead_changed_the_cache_without_the_buffer(tmp_path):
    """The bug this buffer fixes: fed in arrival order, two interleavings of one log differ."""
    finals = []
    for draw in ([(0, 30)], [(3, 2), (1, 9)]):
        core = SchemaCore(CFG)
        for batch in polls(LOGS, draw):
            core.on_batch([msgspec.json.decode(m.value, type=ErrorRecord)
                           for msgs in batch.values() for m in msgs])
        finals.append(core.snapshot())
    assert any(not np.array_equal(finals[0][k], finals[1][k]) for k in ("stats", "keys", "scalars"))


@settings(max_examples=15, deadline=None)
@given(draw=DRAWS, cut=st.integers(1, 40), redeliver=st.integers(0, 20))
def test_snapshot_restore_mid_stream_is_exact_and_skips_duplicates(draw, cut, redeliver, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rs")
    batches = polls(LOGS, draw, dup_every=9)
    cut = min(cut, len(batches) - 1)
    straight = replica()
    for batch in batches:
        straight.apply_batch(batch)
    first = replica()
    for batch in batches[:cut]:
        first.apply_batch(batch)
    write_files(first.collect_snapshot(tmp / "error_memory.npz"))
    second = replica()
    second.restore(tmp / "error_memory.npz", None, lambda s: None)
    assert second.reorder.held == first.reorder.held
    # the consumer resumes a little before the snapshot's offsets: redelivered, skipped by offset
    again = {tp: [m for m in msgs if m.offset >= second.applied.get(tp.partition, 0) - redeliver]
             for tp, msgs in batches[cut - 1].items()}
    second.apply_batch(again)
    for batch in batches[cut:]:
        second.apply_batch(batch)
    assert_same_arrays(cache_arrays(straight, tmp), cache_arrays(second, tmp))  # the cluster quality's too
    labels = {r.error_id: r.label for log in LOGS.values() for r in log}
    assert straight.quality.view()["summary"]["labelled"] == len(labels)  # each error id once
    assert straight.quality.view()["summary"]["positives"] == sum(labels.values())
    assert straight.duplicates_skipped == PARTS * (150 // 9)
    assert first.duplicates_skipped + second.duplicates_skipped == straight.duplicates_skipped
    assert msgspec.json.encode(first.outbox + second.outbox) == msgspec.json.encode(straight.outbox)


def test_error_memory_gets_every_record_at_once():
    # the errors-fed error memory (memory_topic=False): producers that write no memory batches
    r = ErrorsReplica(Recording(), SchemaCore(CFG), Limits(), WorkerTelemetry(), memory_topic=False)
    batch = polls(LOGS, [(0, 20)])[0]
    r.apply_batch(batch)
    assert len(r.compensation.seen) == sum(len(m) for m in batch.values())
    assert r.schema_core.records_in < len(r.compensation.seen)  # the cache waits for the slowest
    assert r.schema_core.records_in + r.reorder.held == len(r.compensation.seen)
    fed_by_memory = replica()  # the default: the error memory reads the memory topic instead
    assert fed_by_memory.apply_batch(batch) == 0 and fed_by_memory.compensation.seen == []




def test_snapshot_without_the_buffer_still_restores(tmp_path):
    r = replica()
    for batch in polls(LOGS, [(1, 11)])[:5]:
        r.apply_batch(batch)
    files = r.collect_snapshot(tmp_path / "error_memory.npz")
    old = {k: v for k, v in files[tmp_path / "schema_cache.npz"].items() if not k.startswith("reorder_")}
    write_files({tmp_path / "schema_cache.npz": old})
    back = replica()
    back.restore(tmp_path / "error_memory.npz", None, lambda s: None)
    assert back.schema_core.records_in == r.schema_core.records_in and back.reorder.held == 0
    assert back.applied == r.applied
    for batch in polls(LOGS, [(1, 11)])[5:]:
        back.apply_batch(batch)
    assert back.schema_core.records_in + back.reorder.held == PARTS * 150 - r.reorder.held


def test_reorder_waits_for_every_errors_partition_the_cluster_has(tmp_path):
    """The worker tells the replica how many ``errors`` partitions the cluster has (not the
    catalog's default): a partition with no record yet holds the others' records back, also
    in a buffer restored from a snapshot taken before the topic had that many."""
    cfg = msgspec.structs.replace(CFG, reorder_partitions=0)  # 0: the cluster's count
    r = replica(cfg)
    assert r.reorder.expected == set(range(4))  # the catalog's default until told
    r.expect_partitions(PARTS + 1)
    assert r.reorder.expected == set(range(PARTS + 1))
    for batch in polls(LOGS, [(0, 40)])[:3]:
        r.apply_batch(batch)
    assert r.schema_core.records_in == 0 and r.reorder.held > 0  # partition PARTS has said nothing
    r.apply_batch({TP("errors", PARTS): [Msg(0, encode(rec("q0", T0 + 0.5)))]})
    assert r.schema_core.records_in > 0

    old = replica(cfg)  # a snapshot of a buffer that knew 4 partitions
    old.apply_batch(polls(LOGS, [(0, 40)])[0])
    write_files(old.collect_snapshot(tmp_path / "error_memory.npz"))
    back = ErrorsReplica(Recording(), SchemaCore(cfg), Limits(), WorkerTelemetry(), errors_partitions=PARTS + 1)
    back.restore(tmp_path / "error_memory.npz", None, lambda s: None)
    assert back.reorder.expected == set(range(PARTS + 1))


# ------------------------------------------------------------------ EventTimeReorder alone


def rec(i: str, ts: float) -> ErrorRecord:
    return ErrorRecord(error_id=i, user_id="u", item_id="i", ts=ts, label=0, base_pred=0.1, comp_pred=0.1,
                       model_version="v1")


@settings(max_examples=60, deadline=None)
@given(data=st.data(), lateness=st.sampled_from([0.0, 0.5, 2.0]))
def test_released_sequence_is_the_sorted_set_when_lateness_is_bounded(data, lateness):
    # per partition: increasing times with some records up to `lateness` behind the newest
    logs = {}
    for p in range(3):
        steps = data.draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=25))
        back = data.draw(st.lists(st.floats(0.0, 0.99 * lateness), min_size=len(steps), max_size=len(steps)))
        t, seq = 0.0, []
        for j, (s, b) in enumerate(zip(steps, back)):
            t += s
            seq.append(rec(f"{p}-{j}", round(max(0.0, t - b), 3)))
        logs[p] = seq
    order = data.draw(st.permutations([p for p in logs for _ in logs[p]]))  # arrival interleaving
    r, out, pos = EventTimeReorder(range(3), lateness_s=lateness, idle_s=0.0), [], dict.fromkeys(logs, 0)
    for p in order:
        r.push(p, logs[p][pos[p]:pos[p] + 1])
        pos[p] += 1
        if data.draw(st.booleans()):
            out += r.pop_ready()
    out += r.pop_ready()
    assert r.clamped == r.overtaken == r.forced == 0
    released = [(x.ts, x.error_id) for x in out]
    assert released == sorted(released)
    end = min(max(x.ts for x in seq) for seq in logs.values()) - lateness
    assert {x.error_id for x in out} == {x.error_id for seq in logs.values() for x in seq if x.ts < end}


def test_waits_for_every_partition_then_idle_and_max_held_escape():
    r = EventTimeReorder(range(3), idle_s=10.0)
    r.push(0, [rec("a", 1.0), rec("b", 2.0)])
    r.push(1, [rec("c", 1.5)])
    assert r.pop_ready() == [] and r.held == 3  # partition 2 not seen yet
    r.push(2, [rec("d", 1.2)])
    assert [x.error_id for x in r.pop_ready()] == ["a"]  # frontier: min(2.0, 1.5, 1.2) = 1.2
    r.push(0, [rec("e", 20.0)])  # partitions 1 and 2 now lag by more than idle_s
    assert [x.error_id for x in r.pop_ready()] == ["d", "c", "b"] and r.forced == 0
    r.push(2, [rec("f", 1.8)])  # it comes back below what was released: keyed at the maximum
    assert r.overtaken == 1 and [x.error_id for x in r.pop_ready()] == ["f"]
    held = EventTimeReorder(range(2), idle_s=0.0, max_held=3)
    held.push(0, [rec(f"g{i}", 21.0 + i) for i in range(6)])  # partition 1 never comes
    assert [x.error_id for x in held.pop_ready()] == ["g0", "g1", "g2"] and held.forced == 3 and held.held == 3


def test_reorder_snapshot_round_trip():
    r = EventTimeReorder(range(2), lateness_s=1.0)
    r.push(0, [rec("a", 5.0), rec("b", 3.0), rec("c", 6.0)])
    r.push(1, [rec("d", 4.0)])
    back = EventTimeReorder.from_arrays(r.to_arrays(), lambda raw: msgspec.json.decode(raw, type=ErrorRecord))
    assert_same_arrays(r.to_arrays(), back.to_arrays())
    r.push(1, [rec("e", 9.0)])
    back.push(1, [rec("e", 9.0)])
    assert [x.error_id for x in r.pop_ready()] == [x.error_id for x in back.pop_ready()] == ["b", "d"]  # b: clamped to 5 - 1
    with pytest.raises(ValueError):
        EventTimeReorder.from_arrays({k: v for k, v in r.to_arrays().items() if k != "reorder_keys"},
                                     lambda raw: msgspec.json.decode(raw, type=ErrorRecord))
