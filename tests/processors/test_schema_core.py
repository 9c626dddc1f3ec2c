"""Tests of SchemaCore (reloop.processors.schemas) and the simulator's fault injection feeding it."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from reloop.ops.simulator import FaultSpec, SimConfig, Simulator
from reloop.processors.schemas import SchemaAlert, SchemaCore, SchemaUpdate, describe, format_table, latest, topic_key
from reloop.state.schemas.cache import SchemaCacheConfig
from reloop.streams.events import ErrorRecord, Interaction

N_REQUESTS = 3000  # x 20 candidates, 50 requests/s: 60 s of event time


def _oracle_records(sim: Simulator, n_requests: int) -> list[ErrorRecord]:
    """Error records of a model that knows the fault-free world exactly (``true_ctr``) but
    falls back to a 0.5 prior when a candidate's genre is missing."""
    rows = [e for e in sim.labelled_log(n_requests) if isinstance(e, Interaction)]
    per = sim.config.candidates_per_request
    out = []
    for k in range(0, len(rows), per):
        group = rows[k:k + per]
        p = sim.true_ctr(group[0].user_id, [r.item_id for r in group])
        for j, (r, pj) in enumerate(zip(group, p.tolist())):
            pred = pj if "genre" in r.features else 0.5
            out.append(ErrorRecord(error_id=f"r{k // per}:{j}", user_id=r.user_id, item_id=r.item_id, ts=r.ts,
                                   label=r.label, base_pred=pred, comp_pred=pred, model_version="v1",
                                   features=r.features))
    return out


def _run(core: SchemaCore, records: list[ErrorRecord], batch: int = 2000):
    updates, alerts = [], []
    for lo in range(0, len(records), batch):
        u, a = core.on_batch(records[lo:lo + batch])
        updates += u
        alerts += a
    return updates, alerts


@pytest.fixture(scope="module")
def faulty() -> tuple[list[dict], list[ErrorRecord]]:
    faults = (FaultSpec(kind="ctr_collapse", where={"genre": "comedy"}, start_frac=0.1, end_frac=0.3),
              FaultSpec(kind="broken_feature", where={"device": "tv"}, start_frac=0.45, end_frac=0.6))
    sim = Simulator(SimConfig(seed=4, shift_at=None, faults=faults))
    return sim.faults(N_REQUESTS), _oracle_records(sim, N_REQUESTS)


def test_simulator_fault_ground_truth(faulty) -> None:
    truth, records = faulty
    assert [f["signature"] for f in truth] == [["genre=comedy"], ["device=tv"]]
    assert [(f["start_index"], f["end_index"]) for f in truth] == [(300, 900), (1350, 1800)]
    ts = np.array([r.ts for r in records])
    for f in truth:
        assert ts.min() < f["start_ts"] < f["end_ts"] < ts.max()
    collapse, broken = truth
    comedy = [r for r in records if r.features.get("genre") == "comedy"]
    during = [r.label for r in comedy if collapse["start_ts"] <= r.ts < collapse["end_ts"]]
    before = [r.label for r in comedy if r.ts < collapse["start_ts"]]
    assert np.mean(during) < 0.2 * np.mean(before)
    tv = [r for r in records if r.features["device"] == "tv"]
    assert all(("genre" in r.features) != (broken["start_ts"] <= r.ts < broken["end_ts"]) for r in tv)
    clean = Simulator(SimConfig(seed=4, shift_at=None))
    assert clean.faults(N_REQUESTS) == []


def test_core_alerts_on_each_injected_fault_and_resolves_it(faulty) -> None:
    truth, records = faulty
    core = SchemaCore(SchemaCacheConfig(half_life_s=5.0))
    updates, alerts = _run(core, records)
    more = core.advance(records[-1].ts + 60.0)  # then the stream goes quiet
    updates, alerts = updates + more[0], alerts + more[1]
    new = [a for a in alerts if a.kind == "new"]
    for f in truth:
        hits = [a for a in new if f["start_ts"] <= a.ts < f["end_ts"]]
        assert hits and hits[0].signature == f["signature"], (f["signature"], [a.signature for a in new])
        assert hits[0].direction == "over"
        resolved = [a for a in alerts if a.kind == "resolved" and a.schema_id == hits[0].schema_id]
        assert resolved and f["end_ts"] <= resolved[0].ts < f["end_ts"] + 30.0
    assert all(a.ts >= truth[0]["start_ts"] for a in new)  # nothing before the first fault
    assert {u.change for u in updates} >= {"promoted", "resolved"}
    for a in alerts:
        assert a.alert_id.startswith(a.schema_id) and topic_key(a) == a.schema_id.encode()
    first = new[0]
    assert "over-predicting by" in first.description and "genre=comedy" in first.description
    assert "since 20" in first.description and "z=" in first.description


def test_messages_round_trip_with_type_tags(faulty) -> None:
    _, records = faulty
    updates, alerts = _run(SchemaCore(SchemaCacheConfig(half_life_s=5.0)), records[:40_000])
    assert updates and alerts
    for msg, kind, tag in ((updates[0], SchemaUpdate, "schema_update"), (alerts[0], SchemaAlert, "schema_alert")):
        raw = msgspec.json.encode(msg)
        assert msgspec.json.decode(raw)["type"] == tag
        assert msgspec.json.decode(raw, type=kind) == msg
    view = latest(updates)
    assert set(view) == {u.schema_id for u in updates}
    table = format_table(list(view.values()), include_resolved=True)
    assert table.splitlines()[0].startswith("schema_id") and len(table.splitlines()) == len(view) + 1


def test_snapshot_restore_and_batching_do_not_change_the_output(faulty) -> None:
    _, records = faulty
    cfg = SchemaCacheConfig(half_life_s=5.0)
    whole = _run(SchemaCore(cfg), records, batch=5000)
    first = SchemaCore(cfg)
    head = _run(first, records[:30_000], batch=1234)
    resumed = SchemaCore.restore(first.snapshot())
    assert resumed.records_in == 30_000
    tail = _run(resumed, records[30_000:], batch=3000)
    enc = msgspec.json.encode
    assert enc(head[0] + tail[0]) == enc(whole[0]) and enc(head[1] + tail[1]) == enc(whole[1])
    # not only the messages: the state is bit-identical however the sequence was split
    other = SchemaCore(cfg)
    _run(other, records, batch=777)
    for core in (resumed, other):
        a, b = whole_core_snapshot(cfg, records), core.snapshot()
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def whole_core_snapshot(cfg: SchemaCacheConfig, records: list[ErrorRecord]) -> dict[str, np.ndarray]:
    core = SchemaCore(cfg)
    core.on_batch(records)
    return core.snapshot()


def test_describe_resolved_and_idle_advance(faulty) -> None:
    truth, records = faulty
    core = SchemaCore(SchemaCacheConfig(half_life_s=5.0))
    cut = next(i for i, r in enumerate(records) if r.ts >= truth[0]["end_ts"] - 1.0)
    _run(core, records[:cut])
    assert [s.signature for s in core.schemas()] == [["genre=comedy"]]
    updates, alerts = core.advance(records[cut - 1].ts + 120.0)  # the stream goes quiet
    assert [a.kind for a in alerts] == ["resolved"] and updates[0].state == "resolved"
    text = describe(core.schemas(include_resolved=True)[0], "resolved", alerts[0].ts)
    assert text.startswith("resolved: no longer over-predicting on genre=comedy")
