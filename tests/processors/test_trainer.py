"""TrainerCore (schedule + drift), the retrain cycle and its gates.

``drift_world()`` is shared with tests/integration/test_model_lifecycle.py: a simulator world
with a strong abrupt shift (segment s1's genre affinities flip), a model v1 trained on the
pre-shift warm-up, and v1's error records on the rest of the stream, shifted and not.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import pytest
import torch

from reloop.models.export import export_onnx
from reloop.models.features import FeatureEncoder
from reloop.models.fit import FittedModel
from reloop.models.registry import ModelRegistry
from reloop.models.scorer import OnnxScorer
from reloop.ops.replay import fit_initial_model
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.retrain import gate_and_register, retrain_once
from reloop.processors.trainer import EventTimeMerge, TrainerConfig, TrainerCore
from reloop.state.sample_window import Sample, sample_from_error
from reloop.streams.events import ErrorRecord, Interaction
from tests.conftest import SMALL

N_REQUESTS, WARM_ROWS = 800, 5000  # 20 candidates per request; shift at request 480


@dataclass(frozen=True)
class DriftWorld:
    settings: Settings
    v1: FittedModel
    shift_ts: float
    shifted: list[ErrorRecord]  # v1's records after the warm-up, with the shift
    steady: list[ErrorRecord]  # the same stream without the shift


def _records(model: FittedModel, rows: list[Interaction], tag: str) -> list[ErrorRecord]:
    tokens, dense = FeatureEncoder(model.spec).encode([(e.user_id, e.item_id, e.features) for e in rows])
    probs, _ = model.scorer.score(tokens, dense)
    return [ErrorRecord(error_id=f"{tag}{i}:{e.item_id}", user_id=e.user_id, item_id=e.item_id, ts=e.ts,
                        label=e.label, base_pred=float(p), comp_pred=float(p), model_version=model.version,
                        features=e.features) for i, (e, p) in enumerate(zip(rows, probs))]


@functools.lru_cache(maxsize=None)
def drift_world() -> DriftWorld:
    settings = Settings().with_overrides(**{**SMALL, "train": {"epochs": 4, "batch_size": 256, "lr": 5e-3}})

    def log(shift_at: float | None) -> tuple[Simulator, list[Interaction]]:
        sim = Simulator(SimConfig(seed=5, n_users=300, n_items=200, genre_scale=3.5, shift_at=shift_at))
        return sim, [e for e in sim.labelled_log(N_REQUESTS) if isinstance(e, Interaction)]

    sim, shifted = log(0.6)
    _, steady = log(None)
    v1 = fit_initial_model(shifted[:WARM_ROWS], settings, version="v1")
    shift_ts = sim.shift_ts(N_REQUESTS)
    assert shift_ts is not None
    return DriftWorld(settings, v1, shift_ts, _records(v1, shifted[WARM_ROWS:], "s"),
                      _records(v1, steady[WARM_ROWS:], "t"))


def feed(core: TrainerCore, records: list[ErrorRecord], batch: int = 256) -> list:
    decisions = []
    for lo in range(0, len(records), batch):
        d = core.on_batch(records[lo:lo + batch])
        if d is not None:
            decisions.append(d)
            core.on_retrain_failed()  # pretend it ran; the cooldown starts again
    return decisions


def synthetic(n: int, ts0: float = 0.0, version: str = "v1", dt: float = 1.0) -> list[ErrorRecord]:
    return [ErrorRecord(error_id=f"x{ts0}-{i}", user_id="u", item_id="i", ts=ts0 + i * dt, label=i % 2,
                        base_pred=0.5, comp_pred=0.5, model_version=version) for i in range(n)]


# ---- policy ---------------------------------------------------------------------------------

def test_schedule_by_samples_with_min_window_and_cooldown():
    cfg = TrainerConfig(drift_detector="none", min_samples=300, retrain_every_samples=500, min_samples_between=100)
    core = TrainerCore(cfg, serving_version="v1")
    assert core.on_batch(synthetic(499)) is None
    d = core.on_batch(synthetic(1, ts0=499))
    assert d is not None and (d.reason, d.new_samples, d.event_ts) == ("samples", 500, 499.0)
    assert core.on_batch([]) == d, "still due until the shell reports the retrain"
    core.on_retrained("v2")
    assert core.serving_version == "v2" and core.on_batch(synthetic(499, ts0=500)) is None
    assert core.on_batch(synthetic(1, ts0=999)).reason == "samples"


def test_schedule_by_event_time():
    cfg = TrainerConfig(drift_detector="none", min_samples=10, retrain_every_samples=0, retrain_every_s=100.0,
                        min_samples_between=50)
    core = TrainerCore(cfg, serving_version="v1")
    assert core.on_batch(synthetic(40, ts0=0.0, dt=5.0)) is None  # 195 s but only 40 new samples
    d = core.on_batch(synthetic(10, ts0=200.0))
    assert d is not None and d.reason == "time" and d.detail["seconds"] == 209.0
    core.on_retrained("v2")
    assert core.on_batch(synthetic(60, ts0=210.0)) is None  # 59 s of event time since the retrain


def test_initial_model_and_a_failed_attempt_waits_for_new_samples():
    cfg = TrainerConfig(drift_detector="none", min_samples=100, min_samples_between=50)
    core = TrainerCore(cfg, serving_version=None, window_samples=80)
    assert core.on_batch(synthetic(10)) is None
    assert core.on_batch(synthetic(10, ts0=10)).reason == "initial"
    core.on_retrain_failed()
    assert core.on_batch(synthetic(49, ts0=20)) is None
    assert core.on_batch(synthetic(1, ts0=69)).reason == "initial"


# ---- drift on the simulator's shifted stream -------------------------------------------------

def test_drifted_stream_triggers_a_drift_retrain_and_a_steady_one_does_not():
    w = drift_world()
    cfg = TrainerConfig(retrain_every_samples=0, min_samples=1000, min_samples_between=500,
                        drift_settle_samples=500)
    decisions = feed(TrainerCore(cfg, "v1", window_samples=WARM_ROWS), w.shifted)
    assert decisions, "the shift was not detected"
    first = decisions[0]
    assert first.reason == "drift"
    assert w.shift_ts <= first.event_ts <= w.shift_ts + 20.0, (first.event_ts - w.shift_ts)
    assert first.detail["loss_after"] > first.detail["loss_before"]
    assert feed(TrainerCore(cfg, "v1", window_samples=WARM_ROWS), w.steady) == [], "false drift alarm"


def test_drift_detection_does_not_depend_on_batch_cuts():
    w = drift_world()
    cfg = TrainerConfig(retrain_every_samples=0, min_samples=1000, min_samples_between=0, drift_settle_samples=0)
    alarms = []
    for batch in (1000, 97):
        core = TrainerCore(cfg, "v1", window_samples=WARM_ROWS)
        d = next(iter(feed(core, w.shifted, batch)), None)
        assert d is not None
        alarms.append(d.detail)
    assert alarms[0] == alarms[1]


def test_only_the_serving_versions_records_feed_the_detector():
    w = drift_world()
    cfg = TrainerConfig(retrain_every_samples=0, min_samples=1000, min_samples_between=0, drift_settle_samples=0)
    assert feed(TrainerCore(cfg, "v2", window_samples=WARM_ROWS), w.shifted) == []


# ---- the retrain cycle and its gates ------------------------------------------------------------

@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "models")
    reg.register(drift_world().v1)
    return reg


def window_after_shift(n: int = 4000) -> list[Sample]:
    w = drift_world()
    return sorted((sample_from_error(r) for r in w.shifted[-n:]), key=lambda s: s.ts)


CHECKED = TrainerConfig(min_samples=1000, holdout_fraction=0.2, min_holdout_rows=100)


def test_retrain_warm_starts_passes_the_gates_and_registers(registry):
    samples = window_after_shift()
    out = retrain_once(samples, registry, drift_world().settings, CHECKED, trigger="drift")
    assert out.accepted, out.reasons
    assert (out.version, out.parent_version, registry.current()) == ("v2", "v1", "v2")
    info = registry.info("v2", verify=True)
    assert info.parent_version == "v1" and (info.window_start, info.window_end) == out.window
    assert out.window == (samples[0].ts, samples[-1].ts)
    m = info.metrics
    assert m["warm_start"] is True and m["trigger"] == "drift" and m["check_passed"] is True
    assert m["check_parity_max_abs_diff"] < 1e-5 and m["check_serving_version"] == "v1"
    assert m["check_candidate_rows"] == 800 == m["holdout_rows"]
    # trained on post-shift data, the new model beats the stale one on the newest rows
    assert m["check_candidate_logloss"] < m["check_serving_logloss"]
    assert set(out.seconds) >= {"fit", "checks", "register", "total"}


def sabotaged(model_src: FittedModel, how: str, version: str = "v2") -> FittedModel:
    model = copy.deepcopy(model_src.model)
    with torch.no_grad():
        if how == "bias":
            model.output.bias += 4.0  # every probability pushed towards 1
        else:
            model.output.weight.neg_()
            model.output.bias.neg_()  # the ranking is turned upside down
    onnx = export_onnx(model, exporter="torchscript")
    return FittedModel(version, model.spec, model, onnx, OnnxScorer(onnx, version=version, spec=model.spec),
                       dict(model_src.metrics))


@pytest.mark.parametrize("how, reason", [("bias", "log loss"), ("flip", "AUC")])
def test_sabotaged_weight_fails_the_holdout_check_and_is_not_served(registry, how, reason):
    w = drift_world()
    serving = registry.load("v1").load_scorer()
    out = gate_and_register(sabotaged(w.v1, how), window_after_shift(), registry, CHECKED,
                            serving_version="v1", serving=serving, trigger="samples")
    assert not out.accepted and out.version is None
    assert any(reason in r for r in out.reasons), out.reasons
    assert out.metrics["check_parity_max_abs_diff"] < 1e-5, "the export itself was faithful"
    assert registry.versions() == ["v1"] and registry.current() == "v1"


def test_parity_mismatch_is_rejected(registry):
    w = drift_world()
    bad = sabotaged(w.v1, "bias")
    bad = FittedModel("v2", bad.spec, bad.model, w.v1.onnx_bytes, w.v1.scorer, {})  # ONNX of another model
    out = gate_and_register(bad, window_after_shift(), registry, CHECKED, serving_version="v1",
                            serving=registry.load("v1").load_scorer())
    assert not out.accepted and out.reasons[0].startswith("parity:")
    assert registry.versions() == ["v1"]


def test_too_small_a_window_is_not_trained(registry):
    out = retrain_once(window_after_shift(500), registry, drift_world().settings, CHECKED)
    assert not out.accepted and "min_samples" in out.reasons[0] and registry.versions() == ["v1"]


# ---- event-time merge of partitions ---------------------------------------------------------------

def test_event_time_merge_releases_in_ts_order_up_to_the_slowest_lagging_partition():
    m = EventTimeMerge(max_buffered=100)
    p0 = synthetic(10, ts0=0.0)  # ts 0..9
    p1 = synthetic(10, ts0=0.5)  # ts 0.5..9.5
    m.add(0, list(enumerate(p0)), 10)
    assert m.release(lagging={1}) == []  # nothing known of partition 1 yet: hold everything
    m.add(1, list(enumerate(p1[:4])), 4)  # partition 1 read up to ts 3.5 and still lagging
    out = m.release(lagging={1})
    assert [r.ts for r in out] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert m.commit_offsets() == {0: 4, 1: 4}  # partition 0's first held-back record is offset 4
    m.add(1, [(i, r) for i, r in enumerate(p1) if i >= 4], 10)
    out = m.release(lagging=set())  # both at their end: everything goes, in event time
    assert [r.ts for r in out] == sorted(r.ts for r in p0[4:] + p1[4:])
    assert m.buffered() == 0 and m.commit_offsets() == {0: 10, 1: 10}


def test_event_time_merge_bounds_what_it_holds_back():
    m = EventTimeMerge(max_buffered=5)
    m.add(0, list(enumerate(synthetic(8, ts0=0.0))), 8)
    out = m.release(lagging={1})  # partition 1 never answers: the valve releases the oldest
    assert [r.ts for r in out] == [0.0, 1.0, 2.0] and m.buffered() == 5
    assert m.commit_offsets() == {0: 3}


def test_a_corrupt_serving_version_is_replaced_by_its_parent_as_warm_start_and_yardstick(registry):
    registry.register(sabotaged(drift_world().v1, "bias"), parent="v1")  # v2: current, then damaged
    (registry.path("v2") / "model.onnx").write_bytes(b"not a model")
    out = retrain_once(window_after_shift(2000), registry, drift_world().settings, CHECKED)
    assert out.accepted and out.parent_version == "v1" and out.version == "v3", out.reasons
    assert registry.info("v3").metrics["check_serving_version"] == "v1"
