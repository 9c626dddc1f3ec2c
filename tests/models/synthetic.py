"""A small synthetic CTR problem shared by the slow-model tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reloop.models.ctr import ModelConfig
from reloop.models.features import FeatureEncoder, FeatureSpec, Row
from reloop.models.train import TrainConfig

SMALL_MODEL = ModelConfig(emb_dim=8, hidden_dim=16, cross_layers=2, deep_sizes=(32, 16), seed=3)
FAST_TRAIN = TrainConfig(epochs=3, batch_size=128, lr=5e-3, holdout_fraction=0.2, seed=1)


@dataclass(frozen=True)
class Dataset:
    rows: list[Row]
    labels: np.ndarray  # (n,) int64
    tokens: np.ndarray  # (n, T) int64
    dense: np.ndarray  # (n, D) float32
    spec: FeatureSpec


def make_dataset(n: int, *, seed: int = 0, with_dense: bool = True, n_buckets: int = 2**12) -> Dataset:
    """Logistic ground truth over user/item biases, one categorical and (optionally) a dense feature."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(1234)  # same world for every seed
    user_bias = truth.normal(size=200) * 1.5
    item_bias = truth.normal(size=100) * 1.5
    rows: list[Row] = []
    labels = np.zeros(n, dtype=np.int64)
    users = rng.integers(0, 200, n)
    items = rng.integers(0, 100, n)
    for k in range(n):
        u, i = int(users[k]), int(items[k])
        x = float(rng.normal() * 10.0 + 50.0)
        colour = ("red", "green", "blue")[i % 3]
        z = user_bias[u] + item_bias[i] + (1.0 if colour == "red" else -0.5)
        features: dict[str, str | float] = {"colour": colour, "device": "ios" if u % 2 else "android"}
        if with_dense:
            features["price"] = x
            z += (x - 50.0) / 10.0
        labels[k] = int(rng.random() < 1.0 / (1.0 + np.exp(-z)))
        rows.append((f"u{u}", f"i{i}", features))
    spec = FeatureSpec.infer(rows, n_buckets=n_buckets, max_tokens=8)
    tokens, dense = FeatureEncoder(spec).encode(rows)
    return Dataset(rows=rows, labels=labels, tokens=tokens, dense=dense, spec=spec)
