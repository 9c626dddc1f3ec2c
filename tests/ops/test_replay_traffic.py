"""Replay of recorded traffic (the input topics' own JSON) through the worker's step: routing,
batch cuts, admission (duplicates, reused ids, bad lines), the CLI, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
from aiokafka.partitioner import DefaultPartitioner

from reloop.models.registry import ModelRegistry
from reloop.ops.cli import main as cli_main
from reloop.ops.replay import ReplayEngine, fitted_from_scorer, iter_topic_events
from reloop.ops.replay_engine import cut_batches, cut_runs, route_events
from reloop.ops.serving import compensation_factory
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.streams.codec import encode
from reloop.streams.events import Interaction, MediaEvent, RecommendationRequest


def traffic(n: int = 60, seed: int = 5) -> list:
    sim = Simulator(SimConfig(seed=seed, n_users=30, n_items=150, requests_per_s=2.0, candidates_per_request=6))
    return list(sim.events(n))


def test_events_go_to_the_partition_the_kafka_producer_picks() -> None:
    events = traffic(20)
    default = DefaultPartitioner()
    for parts in (1, 4, 7):
        for group, ev in zip(route_events(events, parts), events):
            assert len(group) == 1
            assert group[0].partition == default(ev.user_id.encode(), list(range(parts)), list(range(parts)))
            assert group[0].raw == encode(ev)


def test_an_unlinked_interaction_becomes_a_request_and_its_feedback_in_one_batch() -> None:
    its = [Interaction(user_id=f"u{i}", item_id="a", ts=float(i), label=i % 2) for i in range(5)]
    groups = list(route_events(its, 4, seq0=10))
    assert [[r.logical for r in g] for g in groups] == [["requests", "interactions"]] * 5
    req = msgspec.json.decode(groups[0][0].raw)
    fb = msgspec.json.decode(groups[0][1].raw)
    assert req["request_id"] == fb["request_id"] == "log-10" and groups[0][0].partition == groups[0][1].partition
    batches = list(cut_batches(iter(groups), 2))
    assert [len(b) for b in batches] == [4, 4, 2]  # pairs never split


def test_runs_hold_one_topic_partition_each() -> None:
    groups = list(route_events(traffic(30), 4))
    runs = list(cut_runs(iter(groups), 3))
    assert sum(len(r) for r in runs) == sum(len(g) for g in groups)
    for r in runs:
        assert 1 <= len(r) <= 3 and len({(x.logical, x.partition) for x in r}) == 1
    flat = [x for g in groups for x in g]
    assert [x for r in runs for x in r] == flat  # order kept


def test_traffic_replay_admits_like_the_worker_and_is_deterministic(settings, small_model) -> None:
    events = traffic()
    req = next(e for e in events if isinstance(e, RecommendationRequest))
    reused = msgspec.structs.replace(req, ts=req.ts + 0.5, candidates=req.candidates[:2])
    i = events.index(req)
    # a byte-identical copy (dropped, no second recommendation) and a reused id (dead letter)
    stream = events[:i + 1] + [req, reused] + events[i + 1:]
    s = settings.with_overrides(replay={"batch_size": 16}, worker={"attribution_window_s": 5.0})
    engine = ReplayEngine(s, compensation_factory(s))
    a = engine.run_stream(iter(stream), small_model, keep_outputs=True)
    b = engine.run_stream(iter(stream), small_model)
    n_req = sum(isinstance(e, RecommendationRequest) for e in events)
    assert a.report["recommendations"] == len(a.recommendations) == n_req
    assert a.report["duplicates"] == 1 and a.report["dead_letters"] == 1
    assert a.state.dead_letters[0][1].startswith("request id reused")
    assert a.report["media_events"] == sum(isinstance(e, MediaEvent) for e in events) > 0
    assert a.report["scored"] > 0 and a.report["digests"] == b.report["digests"]
    np.testing.assert_array_equal(a.compensated, b.compensated)
    assert set(a.report["digests"]) == {"error_memory", "media", "schema_cache"}
    assert a.state.media.events_seen > 0  # media reached the media memory
    # error records resolved by clicks or closed windows, each with its prediction
    assert len(a.labels) == len(a.base) == len(a.user_ids) == len(a.errors)
    assert {e.label for e in a.errors} <= {0, 1}


def test_cli_replays_recorded_topics(tmp_path: Path, small_model) -> None:
    registry = ModelRegistry(tmp_path / "data" / "models")
    registry.register(small_model)
    events = traffic(40)
    log = tmp_path / "traffic.jsonl"
    lines = [encode(e) for e in events]
    lines.insert(3, b'{"type":"request","user_id":"u"}')  # does not decode: an invalid line
    log.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "report.json"
    cfg = tmp_path / "small.toml"
    cfg.write_text('[features]\nn_buckets = 16384\nmax_tokens = 12\n[worker]\nattribution_window_s = 5.0\n')
    assert cli_main(["--config", str(cfg), "replay", str(log), "--format", "topics", "--model",
                     str(registry.path(small_model.version)), "--partitions", "2", "--report", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["invalid_lines"] == 1 and rep["partitions"] == 2
    assert rep["events"] == len(events) and rep["recommendations"] == sum(
        isinstance(e, RecommendationRequest) for e in events)
    assert rep["scored"] > 0 and rep["model_version"] == small_model.version
    # without --model: the current version of the registry in worker.data_dir
    cfg.write_text(cfg.read_text() + f'data_dir = "{tmp_path / "data"}"\n')
    assert cli_main(["--config", str(cfg), "replay", str(log), "--format", "topics", "--report", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["partitions"] == 4 and again["recommendations"] == rep["recommendations"]
    invalid: list = []
    assert len(list(iter_topic_events(str(log), Settings().limits, invalid))) == len(events) and len(invalid) == 1


def test_a_scorer_alone_is_enough_to_replay(settings, small_model) -> None:
    fitted = fitted_from_scorer(small_model.scorer)
    res = ReplayEngine(settings, compensation_factory(settings)).run_stream(iter(traffic(20)), fitted)
    assert res.report["model_version"] == small_model.version and res.report["recommendations"] > 0


def test_an_interaction_log_streams_from_a_generator_as_from_a_list(settings, small_log, small_model) -> None:
    from reloop.ops.logs import LoadedLog

    events = small_log[4000:5200]
    engine = ReplayEngine(settings.with_overrides(replay={"warmup": 0.25}), compensation_factory(settings))
    listed = engine.run(LoadedLog(events, [], "list"), fitted=small_model)
    streamed = engine.run_warm((e for e in events), listed.report["warmup_events"], fitted=small_model)
    np.testing.assert_array_equal(listed.compensated, streamed.compensated)
    assert listed.report["digests"] == streamed.report["digests"]
    assert streamed.report["events"] == len(events) and streamed.report["scored"] == listed.report["scored"] > 0
