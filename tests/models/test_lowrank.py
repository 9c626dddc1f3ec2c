"""The low-rank cross architecture (issue 14): layer maths, ONNX parity, bundles, old bundles, gates."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from reloop.models.bundle import load_bundle, load_scorer, save_bundle
from reloop.models.checks import CheckConfig, validate_candidate
from reloop.models.ctr import (LEGACY_MODEL_CONFIG, CrossLayer, CTRModel, LowRankCrossLayer, ModelConfig,
                        config_from_meta, same_architecture)
from reloop.models.export import ParityError, check_parity, export_onnx
from reloop.models.fit import FittedModel, fit_model
from reloop.models.features import FeatureSpec
from reloop.models.scorer import OnnxScorer
from reloop.models.train import TrainConfig, predict, train_model

from .synthetic import FAST_TRAIN, SMALL_MODEL, Dataset

FULL_SMALL = msgspec.structs.replace(SMALL_MODEL, cross="full", wide=False, structure="parallel")
#: ``model_config`` keys that bundles written before issue 14 hold.
OLD_KEYS = {"emb_dim", "hidden_dim", "cross_layers", "deep_sizes", "dense_clip", "seed"}


@pytest.fixture(scope="module")
def full_trained(dataset: Dataset) -> tuple[CTRModel, dict]:
    return train_model(dataset.tokens, dataset.dense, dataset.labels, dataset.spec,
                       config=FAST_TRAIN, model_config=FULL_SMALL)


def test_lowrank_layer_is_a_full_layer_with_a_factored_weight() -> None:
    torch.manual_seed(0)
    low = LowRankCrossLayer(24, 4)
    full = CrossLayer(24)
    with torch.no_grad():
        full.linear.weight.copy_(low.up.weight @ low.down.weight)
        full.linear.bias.copy_(low.up.bias)
    x0, x = torch.randn(10, 24), torch.randn(10, 24)
    torch.testing.assert_close(low(x0, x), full(x0, x), rtol=1e-5, atol=1e-5)
    assert torch.linalg.matrix_rank(full.linear.weight) == 4


def test_lowrank_model_is_smaller_and_selectable() -> None:
    spec = FeatureSpec(n_buckets=64, max_tokens=4, dense_names=("x",))
    d = 4 * SMALL_MODEL.emb_dim + 1
    low, full = CTRModel(spec, SMALL_MODEL), CTRModel(spec, FULL_SMALL)
    assert SMALL_MODEL.cross == "lowrank" and ModelConfig().cross == "lowrank"
    assert all(isinstance(layer, LowRankCrossLayer) for layer in low.cross)
    assert all(isinstance(layer, CrossLayer) for layer in full.cross)
    r = SMALL_MODEL.cross_rank
    n_cross = {name: sum(p.numel() for p in m.cross.parameters()) for name, m in (("low", low), ("full", full))}
    assert n_cross == {"low": 2 * (2 * d * r + d), "full": 2 * (d * d + d)}
    with pytest.raises(ValueError):
        ModelConfig(cross="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ModelConfig(cross_rank=0)


def test_old_metadata_means_full_rank() -> None:
    old = {k: v for k, v in msgspec.to_builtins(LEGACY_MODEL_CONFIG).items() if k in OLD_KEYS}
    assert config_from_meta(old) == LEGACY_MODEL_CONFIG
    assert config_from_meta(msgspec.to_builtins(ModelConfig())) == ModelConfig()
    assert same_architecture(ModelConfig(seed=1), ModelConfig(seed=2))
    assert not same_architecture(ModelConfig(), LEGACY_MODEL_CONFIG)


VARIANTS = {
    "fixture": None,
    "full": FULL_SMALL,
    "lowrank_parallel_plain": msgspec.structs.replace(SMALL_MODEL, wide=False, structure="parallel"),
    "lowrank_stacked_wide": msgspec.structs.replace(SMALL_MODEL, wide=True, structure="stacked"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_parity_and_scorer(variant: str, trained: tuple[CTRModel, dict],
                                  full_trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    config = VARIANTS[variant]
    if config is None:
        model, metrics = trained
    elif config == FULL_SMALL:
        model, metrics = full_trained
    else:
        model, metrics = train_model(dataset.tokens, dataset.dense, dataset.labels, dataset.spec,
                                     config=FAST_TRAIN, model_config=config)
    assert metrics["holdout_auc"] > 0.7
    if model.config.wide:
        assert model.wide is not None and model.wide.weight.abs().max() > 0 and not model.wide.weight[0].any()
    blob = export_onnx(model)
    for batch in (1, 7, 256):
        assert check_parity(model, blob, dataset.tokens[:batch], dataset.dense[:batch], atol=1e-5) <= 1e-5
    scorer = OnnxScorer(blob, version=variant)
    prob, hidden = scorer.score(dataset.tokens[:300], dataset.dense[:300])
    prob_t, hidden_t = predict(model, dataset.tokens[:300], dataset.dense[:300])
    np.testing.assert_allclose(prob, prob_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hidden, hidden_t, atol=1e-5, rtol=0)
    import onnx

    meta = {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}
    assert config_from_meta(msgspec.json.decode(meta["reloop.model_config"])) == model.config


def test_export_refuses_a_non_zero_padding_row(trained: tuple[CTRModel, dict]) -> None:
    model, _ = trained
    tampered = CTRModel(model.spec, model.config)
    tampered.load_state_dict(model.state_dict())
    with torch.no_grad():
        tampered.embedding.weight[0].fill_(0.1)
    with pytest.raises(ValueError, match="padding"):
        export_onnx(tampered)


def test_lowrank_bundle_round_trip(tmp_path: Path, trained: tuple[CTRModel, dict], onnx_bytes: bytes,
                                   dataset: Dataset) -> None:
    model, metrics = trained
    bundle = save_bundle(tmp_path / "v1", onnx_bytes, model.spec, version="v1", model=model, metrics=metrics)
    raw = msgspec.json.decode((bundle.path / "meta.json").read_bytes())
    assert raw["model_config"]["cross"] == "lowrank" and raw["model_config"]["cross_rank"] == SMALL_MODEL.cross_rank
    assert {"wide", "structure"} <= set(raw["model_config"])
    restored = load_bundle(bundle.path).load_torch_model()
    assert restored.config == model.config and isinstance(restored.cross[0], LowRankCrossLayer)
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)
    prob, _ = load_scorer(bundle.path).score(dataset.tokens[:64], dataset.dense[:64])
    np.testing.assert_allclose(prob, predict(restored, dataset.tokens[:64], dataset.dense[:64])[0], atol=1e-5, rtol=0)


def _as_old_bundle(path: Path) -> None:
    """Rewrite meta.json as code before issue 14 wrote it: no ``cross``/``cross_rank`` keys."""
    meta = msgspec.json.decode((path / "meta.json").read_bytes())
    meta["model_config"] = {k: v for k, v in meta["model_config"].items() if k in OLD_KEYS}
    (path / "meta.json").write_bytes(msgspec.json.encode(meta))


def test_old_full_rank_bundle_loads_serves_and_warm_starts(tmp_path: Path, full_trained: tuple[CTRModel, dict],
                                                           dataset: Dataset) -> None:
    model, metrics = full_trained
    # The pre-issue-14 graph multiplied the embeddings by a padding mask; with a zero padding
    # row, an old graph and today's export of the same weights serve the same numbers.
    blob = export_onnx(model)
    bundle = save_bundle(tmp_path / "v1", blob, model.spec, version="v1", model=model, metrics=metrics)
    _as_old_bundle(bundle.path)
    old = load_bundle(bundle.path)
    assert "cross" not in old.meta.model_config
    restored = old.load_torch_model()
    assert restored.config == model.config and isinstance(restored.cross[0], CrossLayer)
    prob, hidden = old.load_scorer().score(dataset.tokens[:64], dataset.dense[:64])
    prob_t, hidden_t = predict(model, dataset.tokens[:64], dataset.dense[:64])
    np.testing.assert_allclose(prob, prob_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hidden, hidden_t, atol=1e-5, rtol=0)
    child, child_metrics = train_model(dataset.tokens[:1000], dataset.dense[:1000], dataset.labels[:1000],
                                       dataset.spec, config=TrainConfig(epochs=1, holdout_fraction=0.2), init=restored)
    assert child_metrics["warm_start"] and child.config.cross == "full"


def test_fit_changes_architecture_with_a_cold_start(full_trained: tuple[CTRModel, dict], dataset: Dataset,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    parent, _ = full_trained
    with caplog.at_level(logging.INFO, logger="reloop.fit"):
        fitted = fit_model(dataset.rows[:3000], dataset.labels[:3000], feature_defaults=dataset.spec,
                           model_config=SMALL_MODEL, train_config=TrainConfig(epochs=1, holdout_fraction=0.2),
                           version="v2", init=parent)
    assert any(r.message == "architecture_changed" for r in caplog.records)
    assert fitted.model.config == SMALL_MODEL and fitted.spec == parent.spec
    assert fitted.metrics["architecture_changed"] and not fitted.metrics["warm_start"]
    assert fitted.metrics["epochs"] == TrainConfig().epochs  # a cold start's passes, not the warm one
    assert fitted.metrics["parity_max_abs_diff"] <= 1e-5


def test_gates_on_a_lowrank_candidate_against_a_full_rank_serving_model(
        trained: tuple[CTRModel, dict], onnx_bytes: bytes, full_trained: tuple[CTRModel, dict],
        dataset: Dataset) -> None:
    model, _ = trained
    full, _ = full_trained
    serving = OnnxScorer(export_onnx(full), version="v1")
    candidate = FittedModel("v2", model.spec, model, onnx_bytes, OnnxScorer(onnx_bytes, version="v2"))
    held = slice(4800, 6000)  # the fixtures' holdout rows (holdout_fraction 0.2)
    report = validate_candidate(candidate, dataset.rows[held], dataset.labels[held], serving,
                                CheckConfig(max_auc_drop=0.02, max_logloss_increase=0.02))
    assert report.passed, report.reasons
    assert report.parity_max_abs_diff <= 1e-5
    assert report.candidate is not None and report.serving is not None
    assert report.candidate.auc > 0.7 and abs(report.candidate.auc - report.serving.auc) < 0.02
    # A candidate whose graph is not its torch model fails parity and is not scored further.
    tampered = CTRModel(model.spec, model.config)
    tampered.load_state_dict(model.state_dict())
    with torch.no_grad():
        tampered.cross[0].up.bias.add_(0.3)
    bad = FittedModel("v3", model.spec, tampered, onnx_bytes, candidate.scorer)
    report = validate_candidate(bad, dataset.rows[held], dataset.labels[held], serving)
    assert not report.passed and report.reasons[0].startswith("parity") and report.candidate is None
    with pytest.raises(ParityError):
        check_parity(tampered, onnx_bytes, dataset.tokens[:16], dataset.dense[:16])


def test_large_batch_session_scores_the_same(onnx_bytes: bytes, dataset: Dataset) -> None:
    single = OnnxScorer(onnx_bytes, version="v1", large_batch_threads=1)
    split = OnnxScorer(onnx_bytes, version="v1", large_batch_threads=2, large_batch_rows=64)
    assert single._large_session is None and split._large_session is not None
    for n in (1, 63, 64, 500):
        p1, h1 = single.score(dataset.tokens[:n], dataset.dense[:n])
        p2, h2 = split.score(dataset.tokens[:n], dataset.dense[:n])
        np.testing.assert_allclose(p2, p1, atol=1e-6, rtol=0)
        np.testing.assert_allclose(h2, h1, atol=1e-6, rtol=0)
