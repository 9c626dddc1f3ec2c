"""Model bundles on disk: atomic save, verified load, corruption refused, warm start."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from reloop.models.bundle import CorruptModelError, load_bundle, load_scorer, save_bundle
from reloop.models.ctr import CTRModel
from reloop.models.train import TrainConfig, predict, train_model

from .synthetic import Dataset


@pytest.fixture()
def bundle_dir(tmp_path: Path, onnx_bytes: bytes, trained: tuple[CTRModel, dict]) -> Path:
    model, metrics = trained
    target = tmp_path / "models" / "v1"
    save_bundle(target, onnx_bytes, model.spec, version="v1", model=model, metrics=metrics,
                window_start=1000.0, window_end=2000.0, created_ts=1234.5)
    return target


def test_round_trip(bundle_dir: Path, onnx_bytes: bytes, trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    model, metrics = trained
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["v1"]  # no temp dir left behind
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["meta.json", "model.onnx", "model.pt"]
    bundle = load_bundle(bundle_dir)
    meta = bundle.meta
    assert (meta.version, meta.parent_version, meta.window_start, meta.window_end, meta.created_ts) == ("v1", None, 1000.0, 2000.0, 1234.5)
    assert meta.feature_spec == model.spec and meta.onnx_size == len(onnx_bytes)
    assert meta.metrics["holdout_auc"] == pytest.approx(metrics["holdout_auc"])
    assert msgspec.json.decode((bundle_dir / "meta.json").read_bytes())["onnx_sha256"] == meta.onnx_sha256
    scorer = load_scorer(bundle_dir)
    assert scorer.version == "v1"
    prob, hidden = scorer.score(dataset.tokens[:50], dataset.dense[:50])
    prob_t, hidden_t = predict(model, dataset.tokens[:50], dataset.dense[:50])
    np.testing.assert_allclose(prob, prob_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hidden, hidden_t, atol=1e-5, rtol=0)
    restored = bundle.load_torch_model()
    assert restored.config == model.config
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)


def test_versions_are_immutable(bundle_dir: Path, onnx_bytes: bytes, trained: tuple[CTRModel, dict]) -> None:
    model, _ = trained
    with pytest.raises(FileExistsError):
        save_bundle(bundle_dir, onnx_bytes, model.spec, version="v1", model=model)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "empty"])
def test_damaged_onnx_is_refused(bundle_dir: Path, damage: str) -> None:
    path = bundle_dir / "model.onnx"
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"")
    with pytest.raises(CorruptModelError, match="model.onnx"):
        load_scorer(bundle_dir)


def test_bad_or_missing_metadata_is_refused(bundle_dir: Path) -> None:
    meta = bundle_dir / "meta.json"
    meta.write_bytes(b'{"version": "v1"')
    with pytest.raises(CorruptModelError, match="meta.json"):
        load_scorer(bundle_dir)
    meta.unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        load_scorer(bundle_dir)
    with pytest.raises(CorruptModelError):
        load_scorer(bundle_dir.parent / "nope")


def test_damaged_state_dict_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / "model.pt"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptModelError, match="model.pt"):
        load_bundle(bundle_dir).load_torch_model()


def test_serving_only_bundle_and_warm_start_from_disk(
    tmp_path: Path, onnx_bytes: bytes, bundle_dir: Path, trained: tuple[CTRModel, dict], dataset: Dataset
) -> None:
    model, _ = trained
    serving_only = save_bundle(tmp_path / "v0", onnx_bytes, model.spec, version="v0", model_config=model.config)
    assert serving_only.meta.state_sha256 is None and serving_only.meta.model_config["emb_dim"] == 8
    with pytest.raises(CorruptModelError, match="no model.pt"):
        serving_only.load_torch_model()
    parent = load_bundle(bundle_dir).load_torch_model()
    child, metrics = train_model(dataset.tokens[:1000], dataset.dense[:1000], dataset.labels[:1000], dataset.spec,
                                 config=TrainConfig(epochs=1, holdout_fraction=0.2), init=parent)
    assert metrics["warm_start"]
    child_bundle = save_bundle(tmp_path / "v2", onnx_bytes, child.spec, version="v2", model=child, parent_version="v1")
    assert load_bundle(child_bundle.path).meta.parent_version == "v1"
