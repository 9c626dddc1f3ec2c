"""Comparing configurations on one log: metrics, the user bootstrap, the refusal of configs that
cannot share base scores, the SVG, and a real multi-config replay (torch + onnxruntime)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from reloop.models.metrics import auc as ref_auc
from reloop.models.metrics import logloss as ref_logloss
from reloop.ops.compare import (METRICS, bootstrap_metrics, check_comparable, format_table, point_metrics,
                                rolling_metrics)
from reloop.ops.compare_plot import PANELS, rolling_svg
from reloop.ops.cli import main as cli_main
from reloop.ops.compare_run import run_compare
from reloop.ops.logs import LoadedLog
from reloop.ops.settings import Settings
from reloop.streams.events import Interaction


def _data(n: int = 3000, users: int = 60, seed: int = 1):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    # scores rounded to 2 decimals so ties occur, labels correlated with scores and users
    p = np.round(rng.uniform(0.02, 0.98, n), 2)
    y = (rng.uniform(size=n) < 0.5 * p + 0.3 * (u % 3 == 0)).astype(np.int64)
    return y, p, np.array([f"user{x}" for x in u])


def _brute(y, p, users) -> dict[str, float]:
    """The definitions of ops/compare.py written the slow, obvious way."""
    num = den = 0.0
    for user in np.unique(users):
        m = users == user
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * ref_auc(y[m], p[m])
            den += m.sum()
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    bins = np.minimum((pc * 10).astype(int), 9)
    ece = sum(abs(pc[bins == b].mean() - y[bins == b].mean()) * (bins == b).sum() for b in range(10)
              if (bins == b).any()) / len(y)
    return {"auc": ref_auc(y, p), "gauc": num / den, "logloss": ref_logloss(y, p),
            "calib": pc.sum() / y.sum(), "ece": ece}


def test_metrics_match_their_definitions_with_ties() -> None:
    y, p, users = _data()
    got, want = point_metrics(y, p, users), _brute(y, p, users)
    for m in METRICS:
        assert got[m] == pytest.approx(want[m], rel=1e-9, abs=1e-12), m


def test_user_weights_equal_replicating_the_users() -> None:
    """The bootstrap weighs a user drawn k times by k: the same as copying its events k times."""
    from reloop.ops.compare import _Prepared, user_index

    y, p, users = _data(800, 25, seed=2)
    idx, n_users = user_index(users)
    mult = np.random.default_rng(5).integers(0, 4, n_users).astype(np.float64)
    weighted = _Prepared(y, p, idx, n_users).metrics(mult)
    rep = np.repeat(np.arange(len(y)), mult[idx].astype(int))
    # copies of a user are distinct users in a bootstrap sample: give each copy its own id
    copy_no = np.concatenate([np.arange(int(mult[idx][i])) for i in range(len(y))])
    copied = point_metrics(y[rep], p[rep], np.char.add(users[rep], copy_no.astype(str)))
    for m in METRICS:
        assert weighted[m] == pytest.approx(copied[m], rel=1e-9), m


def test_bootstrap_is_seeded_paired_and_brackets_the_estimate() -> None:
    y, p, users = _data()
    rng = np.random.default_rng(9)
    better = np.clip(p + 0.2 * (y - p) + rng.normal(0, 0.02, len(p)), 0.01, 0.99)
    preds = {"off": p, "same": p.copy(), "better": better}
    a, da = bootstrap_metrics(y, preds, users, resamples=60, seed=3)
    b, _ = bootstrap_metrics(y, preds, users, resamples=60, seed=3)
    c, _ = bootstrap_metrics(y, preds, users, resamples=60, seed=4)
    assert a == b and a != c
    for m in METRICS:
        assert a["off"][m].lo <= a["off"][m].value <= a["off"][m].hi, m
        assert a["off"][m].lo < a["off"][m].hi, m
        assert da["same"][m].lo == da["same"][m].hi == da["same"][m].value == 0.0  # paired: identical => 0
    assert set(da) == {"same", "better"}
    assert da["better"]["auc"].lo > 0 and da["better"]["logloss"].hi < 0
    table = format_table(a, da, "off")
    assert table.count("\n") == 1 + 3 + 2 and "| better - off |" in table


def test_rolling_windows_cover_the_events_in_time_order() -> None:
    y, p, users = _data(1000)
    ts = np.arange(1000.0) * 60
    pts = rolling_metrics(y, {"a": p, "b": 1 - p}, ts, windows=7, users=users, resamples=30)
    assert len(pts) == 7 and sum(q["n"] for q in pts) == 1000
    assert all(q1["ts_first"] > q0["ts_last"] for q0, q1 in zip(pts, pts[1:]))
    assert pts[0]["a"]["auc"] == pytest.approx(ref_auc(y[:142], p[:142]))
    assert list(pts[0]["delta"]) == ["b"]  # the reference has no delta
    d = pts[0]["delta"]["b"]["auc"]
    assert d["value"] == pytest.approx(ref_auc(y[:142], 1 - p[:142]) - ref_auc(y[:142], p[:142]))
    assert d["lo"] <= d["value"] <= d["hi"] < 0


def test_svg_is_well_formed_with_lines_and_bands() -> None:
    y, p, users = _data(500)
    preds = {"off": p, "lam<0.4>": np.clip(p + 0.05, 0, 1)}
    pts = rolling_metrics(y, preds, 8.8e8 + np.arange(500.0) * 3600, windows=9, users=users, resamples=20)
    svg = rolling_svg(pts, ["off", "lam<0.4>"], title="a & b")
    root = ET.fromstring(svg)  # raises on malformed XML (names are escaped)
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    values = sum(kind == "value" for _, kind, _ in PANELS)
    assert len(lines) == 2 * values + (len(PANELS) - values)  # the reference is the zero line in deltas
    assert all(len(pl.get("points").split()) == len(pts) for pl in lines)
    assert len(root.findall("{http://www.w3.org/2000/svg}polygon")) == len(PANELS) - values
    assert "1997-" in svg  # event-time axis in UTC dates


def test_configs_that_change_the_base_model_are_refused() -> None:
    base = Settings()
    lam = base.with_overrides(error_memory={"lam": 0.3}, worker={"compensation": "error_memory"})
    off = base.with_overrides(worker={"compensation": "none"})
    check_comparable({"off": off, "lam": lam})  # compensation settings may differ
    with pytest.raises(ValueError) as exc:
        check_comparable({"off": off, "lam": lam, "big": lam.with_overrides(model={"hidden_dim": 48})})
    msg = str(exc.value)
    assert "\n" not in msg and "'off' and 'big' differ in model.hidden_dim" in msg
    with pytest.raises(ValueError, match="replay.warmup"):
        check_comparable({"a": base, "b": base.with_overrides(replay={"warmup": 0.5})})


def _log(small_log, lo: int, hi: int) -> LoadedLog:
    return LoadedLog([e for e in small_log if isinstance(e, Interaction)][lo:hi], [], "sim")


def test_run_compare_shares_base_scores_and_off_is_the_base(settings, small_log, small_model) -> None:
    configs = {"off": settings.with_overrides(worker={"compensation": "none"}),
               "lam_a": settings.with_overrides(error_memory={"lam": 0.4}),
               "lam_b": settings.with_overrides(error_memory={"lam": 1.0})}
    rep = run_compare(_log(small_log, 4000, 6000), configs, resamples=30, seed=1, windows=5, fitted=small_model)
    sharing = rep.meta["sharing"]
    assert sharing["base_max_abs_diff"] == 0.0
    assert sharing["base_batches_scored"] > 0 and sharing["base_batches_reused"] == 2 * sharing["base_batches_scored"]
    assert rep.meta["scored"] == 1600 and rep.reference == "off" and list(rep.deltas) == ["lam_a", "lam_b"]
    assert rep.metrics["lam_a"]["auc"].value != rep.metrics["off"]["auc"].value  # compensation acted
    j = json.loads(json.dumps(rep.to_json()))
    assert j["bootstrap"] == {"unit": "user", "resamples": 30, "seed": 1, "level": 0.95, "interval": "percentile"}
    assert len(j["rolling"]) == 5 and set(j["metrics"]) == set(configs)


def test_one_pass_equals_one_replay_per_config(settings, small_log, small_model) -> None:
    """Stepping every configuration on each batch in turn changes nothing: each one's
    predictions, error-memory digest and counts equal its own replay alone."""
    from reloop.ops.compare_run import replay_configs
    from reloop.ops.replay import ReplayEngine
    from reloop.ops.serving import compensation_factory

    loaded = _log(small_log, 4000, 5500)
    configs = {"off": settings.with_overrides(worker={"compensation": "none"}),
               "lam": settings.with_overrides(error_memory={"lam": 0.7})}
    runs, facts = replay_configs(loaded, configs, fitted=small_model)
    assert facts["one_pass"] and set(facts["seconds"]) == {"fit", "replay"}
    for name, s in configs.items():
        alone = ReplayEngine(s, compensation_factory(s)).run(loaded, fitted=small_model)
        np.testing.assert_array_equal(runs[name].compensated, alone.compensated)
        np.testing.assert_array_equal(runs[name].labels, alone.labels)
        assert runs[name].report["digests"] == alone.report["digests"]
        assert runs[name].report["scored"] == alone.report["scored"] > 0


def test_cli_compare_writes_json_and_svg_and_refuses_model_changes(tmp_path, small_log, capsys) -> None:
    from reloop.streams.codec import encode

    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(encode(e).decode() for e in _log(small_log, 0, 2500).events) + "\n")
    small = '[features]\nn_buckets = 16384\n[train]\nepochs = 1\n'
    (tmp_path / "off.toml").write_text(small + '[worker]\ncompensation = "none"\n')
    (tmp_path / "lam.toml").write_text(small + '[error_memory]\nlam = 0.5\n')
    (tmp_path / "wide.toml").write_text('[features]\nn_buckets = 32768\n[train]\nepochs = 1\n')
    out = tmp_path / "cmp" / "report.json"
    # through the real command line: the log file is streamed once for both configurations
    assert cli_main(["replay", str(log), "--compare", str(tmp_path / "off.toml"), str(tmp_path / "lam.toml"),
                     "--bootstrap", "20", "--windows", "6", "--report", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["reference"] == "off" and set(rep["deltas"]) == {"lam"} and rep["scored"] == 2000
    assert rep["sharing"]["one_pass"] and rep["sharing"]["base_batches_reused"] == rep["sharing"]["base_batches_scored"]
    assert rep["config_files"] == {"off": str(tmp_path / "off.toml"), "lam": str(tmp_path / "lam.toml")}
    ET.fromstring(out.with_suffix(".svg").read_text())
    printed = capsys.readouterr().out
    assert "| lam - off |" in printed and "20 user-bootstrap resamples" in printed
    assert cli_main(["replay", str(log), "--compare", str(tmp_path / "off.toml"), str(tmp_path / "wide.toml")]) == 2
    assert "features.n_buckets" in capsys.readouterr().err
    assert cli_main(["replay", str(log), "--compare", str(tmp_path / "off.toml"), "--windows", "0"]) == 2
    assert "--windows" in capsys.readouterr().err


def test_shared_scorer_reuses_exact_outputs_of_its_latest_batches(small_log, small_model) -> None:
    from reloop.models.features import FeatureEncoder
    from reloop.ops.compare_run import _SharedScorer

    its = [e for e in small_log if isinstance(e, Interaction)][:300]
    tokens, dense = FeatureEncoder(small_model.scorer.spec).encode([(i.user_id, i.item_id, i.features) for i in its])
    want_p, want_h = small_model.scorer.score(tokens, dense)
    shared = _SharedScorer(small_model.scorer, keep=2)
    assert shared.hidden_dim == small_model.scorer.hidden_dim  # everything else is the scorer's
    p1, h1 = shared.score(tokens, dense)
    p1[:] = -1.0  # a caller's changes do not reach the memo
    p2, h2 = shared.score(tokens, dense)
    np.testing.assert_array_equal(p2, want_p)
    np.testing.assert_array_equal(h2, want_h)
    assert (shared.misses, shared.hits) == (1, 1)
    shared.score(tokens[:10], dense[:10])  # other inputs: scored, not served from the memo
    shared.score(tokens[:20], dense[:20])  # a third batch: the oldest (the full one) is forgotten
    assert shared.misses == 3 and len(shared._memo) == 2
    p3, _ = shared.score(tokens, dense)
    np.testing.assert_array_equal(p3, want_p)
    assert (shared.misses, shared.hits) == (4, 1)
