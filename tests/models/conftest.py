"""Shared fixtures for the slow-model tests: a synthetic dataset, a trained model, its ONNX bytes."""

from __future__ import annotations

import pytest

from reloop.models.ctr import CTRModel
from reloop.models.train import train_model

from .synthetic import FAST_TRAIN, SMALL_MODEL, Dataset, make_dataset


@pytest.fixture(scope="session")
def dataset() -> Dataset:
    return make_dataset(6000, seed=0)


@pytest.fixture(scope="session")
def trained(dataset: Dataset) -> tuple[CTRModel, dict]:
    return train_model(dataset.tokens, dataset.dense, dataset.labels, dataset.spec,
                       config=FAST_TRAIN, model_config=SMALL_MODEL)


@pytest.fixture(scope="session")
def onnx_bytes(trained: tuple[CTRModel, dict]) -> bytes:
    from reloop.models.export import export_onnx

    model, _ = trained
    return export_onnx(model, model.spec)
