"""Replay: log readers, the prequential protocol, determinism, the report."""

from __future__ import annotations

import json

import numpy as np

from reloop.ops.cli import main as cli_main
from reloop.ops.logs import read_jsonl, read_movielens
from reloop.ops.replay import ReplayEngine
from reloop.ops.serving import compensation_factory
from reloop.streams.codec import encode
from reloop.streams.events import Interaction
from reloop.streams.validation import Limits


def write_log(path, events, bad_lines=()):
    lines = [encode(e).decode() for e in events]
    for at, text in bad_lines:
        lines.insert(at, text)
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_reader_reports_bad_lines_and_keeps_extra_fields(tmp_path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join([
        '{"type": "interaction", "ts": 2.0, "user_id": "1", "item_id": "9", "label": 1, "age": "24", "score": 3}',
        '{"type": "interaction", "ts": 1.0, "user_id": "1", "item_id": "8", "label": 7}',
        "not json",
        '{"type": "media", "ts": 1.5, "user_id": "1", "modality": "video", "segment_id": "s", "embedding": [0.1]}',
    ]) + "\n")
    loaded = read_jsonl(p, Limits(media_dim=1))
    assert [n for n, _ in loaded.invalid] == [2, 3]
    assert [type(e).__name__ for e in loaded.events] == ["MediaEvent", "Interaction"]  # sorted by ts
    assert loaded.interactions[0].features == {"age": "24", "score": 3.0}


def test_movielens_u_data(tmp_path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t5\t100\n2\t11\t2\t50\nbad line\n")
    loaded = read_movielens(tmp_path / "u.data")
    assert [(e.user_id, e.label) for e in loaded.interactions] == [("2", 0), ("1", 1)]
    assert len(loaded.invalid) == 1


def test_replay_is_deterministic_and_compensation_moves_scores(settings, small_log, small_model) -> None:
    from reloop.ops.logs import LoadedLog

    log = LoadedLog([e for e in small_log if isinstance(e, Interaction)][4000:6000], [], "sim")
    engine = ReplayEngine(settings, compensation_factory(settings))
    a = engine.run(log, fitted=small_model)
    b = engine.run(log, fitted=small_model)
    np.testing.assert_array_equal(a.compensated, b.compensated)
    assert a.report["scored"] == len(a.labels) == 1600
    assert not np.array_equal(a.base, a.compensated)
    # what the replica would publish is counted and drained, not held for the whole log
    assert a.state.replica.outbox == [] and a.report["schema_updates"] == a.state.published.get("schemas", 0)
    assert a.report["alerts"] == len(a.state.alerts) == b.report["alerts"]
    # the schema cache's ticks: as many as it evaluated, with the CPU time they took
    assert a.report["schema_ticks"] == a.state.replica.schema_core.cache.ticks == b.report["schema_ticks"] > 0
    assert a.report["schema_tick_seconds"] > 0.0
    st = a.state
    st.replica.outbox += [("alerts", "an alert"), ("schemas", "an update")]
    st.apply_errors([])
    assert st.replica.outbox == [] and st.alerts[-1] == "an alert"
    assert (st.published["alerts"], st.published["schemas"]) == (a.report["alerts"] + 1, a.report["schema_updates"] + 1)
    base_only = ReplayEngine(settings.with_overrides(worker={"compensation": "none"})).run(log, fitted=small_model)
    np.testing.assert_array_equal(base_only.base, a.base)
    np.testing.assert_array_equal(base_only.compensated, base_only.base)
    no_cache = ReplayEngine(settings.with_overrides(worker={"schema_cache": False})).run(log, fitted=small_model)
    assert (no_cache.report["schema_ticks"], no_cache.report["schema_tick_seconds"]) == (0, 0.0)


def test_cli_replay_writes_report(tmp_path, small_log) -> None:
    p = tmp_path / "log.jsonl"
    write_log(p, [e for e in small_log if isinstance(e, Interaction)][:3000], bad_lines=[(5, "{oops")])
    out = tmp_path / "report.json"
    env_small = ["--config", str(tmp_path / "small.toml")]
    (tmp_path / "small.toml").write_text('[features]\nn_buckets = 16384\n[train]\nepochs = 1\n')
    assert cli_main([*env_small, "replay", str(p), "--format", "jsonl", "--report", str(out)]) == 0
    rep = json.loads(out.read_text())
    for key in ("events", "auc_base", "auc_compensated", "logloss_base", "logloss_compensated", "events_per_s", "series"):
        assert key in rep
    assert rep["invalid_lines"] == 1 and rep["events"] == 3000 and rep["scored"] == 2400
    assert 0.5 < rep["auc_base"] <= 1.0
