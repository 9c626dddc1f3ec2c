"""CTR model shapes, training quality, determinism and warm start; metric helpers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from reloop.models.ctr import CTRModel, ModelConfig
from reloop.models.features import FeatureSpec
from reloop.models.metrics import auc, logloss
from reloop.models.train import TrainConfig, predict, train_model

from .synthetic import FAST_TRAIN, SMALL_MODEL, Dataset, make_dataset


def test_forward_shapes_and_range() -> None:
    spec = FeatureSpec(n_buckets=128, max_tokens=5, dense_names=("a", "b", "c"))
    model = CTRModel(spec, SMALL_MODEL).eval()
    tokens = torch.randint(1, 128, (7, 5))
    prob, hidden = model(tokens, torch.randn(7, 3))
    assert prob.shape == (7,) and hidden.shape == (7, SMALL_MODEL.hidden_dim) and model.hidden_dim == 16
    assert prob.dtype == torch.float32 and bool(((prob > 0) & (prob < 1)).all())
    assert bool((hidden >= 0).all())  # ReLU output


def test_padding_contributes_nothing(trained: tuple[CTRModel, dict]) -> None:
    spec = FeatureSpec(n_buckets=64, max_tokens=4)
    model = CTRModel(spec, SMALL_MODEL).eval()
    assert not model.embedding.weight[0].any()  # padding row 0 is zero from the start
    tokens = torch.tensor([[5, 9, 0, 0], [3, 0, 0, 0]])
    dense = torch.zeros(2, 0)
    prob, hidden = model(tokens, dense)
    with torch.no_grad():
        model.embedding.weight[0].fill_(3.0)  # the graph has no mask: the zero row is the guarantee
    assert not torch.equal(model(tokens, dense)[0], prob)
    # Training (SparseAdam on the table, padding_idx=0) keeps the row at zero.
    trained_model, _ = trained
    assert not trained_model.embedding.weight[0].any()


def test_no_dense_features_accepts_zero_or_one_column() -> None:
    spec = FeatureSpec(n_buckets=64, max_tokens=4)
    model = CTRModel(spec, SMALL_MODEL).eval()
    tokens = torch.randint(0, 64, (3, 4))
    p0, h0 = model(tokens, torch.zeros(3, 0))
    p1, h1 = model(tokens, torch.zeros(3, 1))
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    torch.testing.assert_close(h0, h1, rtol=0, atol=0)


def test_same_seed_same_init_and_global_rng_untouched() -> None:
    spec = FeatureSpec(n_buckets=64, max_tokens=4)
    torch.manual_seed(99)
    expected_next = torch.rand(1)
    torch.manual_seed(99)
    a, b = CTRModel(spec, SMALL_MODEL), CTRModel(spec, SMALL_MODEL)
    assert torch.equal(torch.rand(1), expected_next)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_training_learns_a_separable_problem(trained: tuple[CTRModel, dict]) -> None:
    _, metrics = trained
    assert metrics["holdout_auc"] > 0.75, metrics
    assert metrics["holdout_logloss"] < metrics["initial_holdout_logloss"] - 0.05
    assert metrics["train_rows"] == 4800 and metrics["holdout_rows"] == 1200
    losses = metrics["train_loss_per_epoch"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_standardisation_is_fitted_on_the_training_rows(trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    model, _ = trained
    train_dense = dataset.dense[:4800]
    np.testing.assert_allclose(model.dense_mean.numpy(), train_dense.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.dense_std.numpy(), train_dense.std(axis=0), rtol=1e-4)


def test_training_is_deterministic(dataset: Dataset) -> None:
    config = TrainConfig(epochs=1, batch_size=256, holdout_fraction=0.2, seed=5)
    sub = slice(0, 2000)
    args = (dataset.tokens[sub], dataset.dense[sub], dataset.labels[sub], dataset.spec)
    a, ma = train_model(*args, config=config, model_config=SMALL_MODEL)
    b, mb = train_model(*args, config=config, model_config=SMALL_MODEL)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert ma["holdout_logloss"] == mb["holdout_logloss"]


def test_warm_start_copies_weights_without_touching_the_parent(trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    parent, _ = trained
    snapshot = {k: v.clone() for k, v in parent.state_dict().items()}
    child, metrics = train_model(dataset.tokens, dataset.dense, dataset.labels, dataset.spec,
                                 config=TrainConfig(epochs=0, holdout_fraction=0.2), init=parent)
    assert metrics["warm_start"] and metrics["steps"] == 0
    for name, value in parent.state_dict().items():
        assert torch.equal(value, snapshot[name])
        assert torch.equal(child.state_dict()[name], value)
    assert child is not parent


def test_warm_start_continues_without_a_loss_jump(trained: tuple[CTRModel, dict]) -> None:
    parent, parent_metrics = trained
    fresh_window = make_dataset(3000, seed=7)  # new traffic from the same world
    config = TrainConfig(epochs=1, batch_size=128, lr=1e-3, holdout_fraction=0.2, seed=2)
    args = (fresh_window.tokens, fresh_window.dense, fresh_window.labels, parent.spec)
    child, warm = train_model(*args, config=config, init=parent)
    _, cold = train_model(*args, config=config, model_config=SMALL_MODEL)
    parent_prob, _ = predict(parent, fresh_window.tokens[2400:], fresh_window.dense[2400:])
    assert warm["initial_holdout_logloss"] == pytest.approx(logloss(fresh_window.labels[2400:], parent_prob), abs=1e-9)
    # The first warm epoch is about as good as the parent's last one, far better than a cold start.
    assert warm["train_loss_per_epoch"][0] < parent_metrics["train_loss_per_epoch"][-1] + 0.05
    assert warm["train_loss_per_epoch"][0] < cold["train_loss_per_epoch"][0] - 0.05
    assert warm["holdout_logloss"] < warm["initial_holdout_logloss"] + 0.02
    assert warm["holdout_auc"] > cold["holdout_auc"]


def test_warm_start_rejects_another_spec_or_architecture(trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    parent, _ = trained
    other = FeatureSpec(n_buckets=2**12, max_tokens=8)
    with pytest.raises(ValueError):
        train_model(dataset.tokens, np.zeros((len(dataset.tokens), 0), np.float32), dataset.labels, other, init=parent)
    with pytest.raises(ValueError):
        train_model(dataset.tokens, dataset.dense, dataset.labels, dataset.spec, init=parent,
                    model_config=ModelConfig(emb_dim=4, hidden_dim=16, deep_sizes=(32, 16)))


def test_training_without_dense_features() -> None:
    data = make_dataset(2000, seed=3, with_dense=False)
    assert data.spec.dense_names == () and data.dense.shape == (2000, 0)
    model, metrics = train_model(data.tokens, data.dense, data.labels, data.spec,
                                 config=FAST_TRAIN, model_config=SMALL_MODEL)
    assert metrics["holdout_auc"] > 0.65
    prob, hidden = predict(model, data.tokens[:5], data.dense[:5])
    assert prob.shape == (5,) and prob.dtype == np.float64 and hidden.shape == (5, 16)


def test_bad_labels_are_rejected(dataset: Dataset) -> None:
    with pytest.raises(ValueError):
        train_model(dataset.tokens[:10], dataset.dense[:10], np.full(10, 2), dataset.spec)


def _pairwise_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pair_counting_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.round(rng.random(200), 1)  # many ties
    assert auc(y, p) == pytest.approx(_pairwise_auc(y, p), abs=1e-12)
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_logloss_known_values_and_clipping() -> None:
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2.0))
    assert logloss([1], [0.0]) == pytest.approx(-np.log(1e-7))
    assert np.isnan(logloss([], []))
