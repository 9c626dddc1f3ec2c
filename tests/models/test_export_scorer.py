"""ONNX export, torch/onnxruntime parity and the onnxruntime scorer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from reloop.models.ctr import CTRModel
from reloop.models.export import OPSET, ParityError, check_parity, export_onnx
from reloop.models.features import FeatureEncoder, FeatureSpec
from reloop.models.scorer import OnnxScorer
from reloop.models.train import TrainConfig, predict, train_model

from .synthetic import SMALL_MODEL, Dataset, make_dataset


def test_graph_signature_and_metadata(onnx_bytes: bytes, trained: tuple[CTRModel, dict]) -> None:
    model, _ = trained
    proto = onnx.load_from_string(onnx_bytes)
    dims = {
        v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in list(proto.graph.input) + list(proto.graph.output)
    }
    assert dims == {
        "tokens": (onnx.TensorProto.INT64, ["batch", 8]),
        "dense": (onnx.TensorProto.FLOAT, ["batch", 1]),
        "prob": (onnx.TensorProto.FLOAT, ["batch"]),
        "hidden": (onnx.TensorProto.FLOAT, ["batch", 16]),
    }
    assert proto.opset_import[0].version == OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["reloop.hidden_dim"] == "16" and meta["reloop.exporter"] == "dynamo"
    assert model.spec.dense_names == ("price",)


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_parity_across_batch_sizes(onnx_bytes: bytes, trained: tuple[CTRModel, dict], dataset: Dataset, batch: int) -> None:
    model, _ = trained
    rows = slice(100, 100 + batch)
    diff = check_parity(model, onnx_bytes, dataset.tokens[rows], dataset.dense[rows], atol=1e-5)
    assert 0.0 <= diff <= 1e-5


def test_export_is_deterministic_and_leaves_the_model_alone(onnx_bytes: bytes, trained: tuple[CTRModel, dict]) -> None:
    model, _ = trained
    model.train()
    try:
        assert export_onnx(model) == onnx_bytes
        assert model.training
    finally:
        model.eval()


def test_parity_check_catches_a_diverged_model(onnx_bytes: bytes, trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    model, _ = trained
    tampered = CTRModel(model.spec, model.config)
    tampered.load_state_dict(model.state_dict())
    with torch.no_grad():
        tampered.output.bias.add_(0.5)
    with pytest.raises(ParityError):
        check_parity(tampered, onnx_bytes, dataset.tokens[:16], dataset.dense[:16])


def test_export_rejects_a_foreign_spec(trained: tuple[CTRModel, dict]) -> None:
    model, _ = trained
    with pytest.raises(ValueError):
        export_onnx(model, FeatureSpec(n_buckets=16, max_tokens=2))


def test_scorer_matches_torch(onnx_bytes: bytes, trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    model, _ = trained
    scorer = OnnxScorer(onnx_bytes, version="v1")
    assert scorer.version == "v1" and scorer.spec == model.spec and scorer.hidden_dim == 16
    prob, hidden = scorer.score(dataset.tokens[:300], dataset.dense[:300])
    assert prob.dtype == np.float64 and prob.shape == (300,)
    assert hidden.dtype == np.float32 and hidden.shape == (300, 16)
    prob_t, hidden_t = predict(model, dataset.tokens[:300], dataset.dense[:300])
    np.testing.assert_allclose(prob, prob_t, atol=1e-5, rtol=0)
    np.testing.assert_allclose(hidden, hidden_t, atol=1e-5, rtol=0)
    # Row results do not depend on how a stream is cut into batches.
    one_by_one = np.concatenate([scorer.score(dataset.tokens[i : i + 1], dataset.dense[i : i + 1])[0] for i in range(20)])
    np.testing.assert_allclose(one_by_one, prob[:20], atol=1e-6, rtol=0)


def test_scorer_on_encoder_output_and_edge_cases(onnx_bytes: bytes, dataset: Dataset) -> None:
    scorer = OnnxScorer(onnx_bytes, version="v1", spec=dataset.spec, intra_op_num_threads=2)
    tokens, dense = FeatureEncoder(scorer.spec).encode([("u1", "i1", {"colour": "red", "price": 55.0})])
    prob, hidden = scorer.score(tokens, dense)
    assert prob.shape == (1,) and 0.0 < prob[0] < 1.0
    empty_prob, empty_hidden = scorer.score(tokens[:0], dense[:0])
    assert empty_prob.shape == (0,) and empty_hidden.shape == (0, 16)
    with pytest.raises(ValueError):
        scorer.score(np.full_like(tokens, dataset.spec.n_buckets), dense)
    with pytest.raises(ValueError):
        scorer.score(tokens, np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError):
        OnnxScorer(onnx_bytes, version="v1", spec=FeatureSpec(n_buckets=2**12, max_tokens=8))


def test_no_dense_features_end_to_end() -> None:
    data = make_dataset(1500, seed=11, with_dense=False)
    model, _ = train_model(data.tokens, data.dense, data.labels, data.spec,
                           config=TrainConfig(epochs=1, holdout_fraction=0.2), model_config=SMALL_MODEL)
    blob = export_onnx(model, data.spec)
    proto = onnx.load_from_string(blob)
    assert [d.dim_value for d in proto.graph.input[1].type.tensor_type.shape.dim][1:] == [1]
    for batch in (1, 7, 256):
        assert check_parity(model, blob, data.tokens[:batch], data.dense[:batch]) <= 1e-5
    scorer = OnnxScorer(blob, version="nodense")
    prob, _ = scorer.score(data.tokens[:9], data.dense[:9])  # (n, 0) dense is padded by the scorer
    np.testing.assert_allclose(prob, predict(model, data.tokens[:9], data.dense[:9])[0], atol=1e-5, rtol=0)
    prob_padded, _ = scorer.score(data.tokens[:9], np.zeros((9, 1), np.float32))
    np.testing.assert_array_equal(prob, prob_padded)


def test_torchscript_exporter_escape_hatch(trained: tuple[CTRModel, dict], dataset: Dataset) -> None:
    model, _ = trained
    blob = export_onnx(model, exporter="torchscript")
    assert check_parity(model, blob, dataset.tokens[:64], dataset.dense[:64]) <= 1e-5
    assert OnnxScorer(blob, version="ts").spec == model.spec


def test_first_export_in_a_process_prints_no_torchvision_warnings() -> None:
    """torch's exporter logs one warning per torchvision op it cannot register (``torchvision is
    not installed. Skipping torchvision::nms`` ...) at a process's first export: every
    ``reloop replay`` and ``reloop run`` printed them. A fresh process, so the first export is
    this one."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from tests.models.synthetic import SMALL_MODEL, make_dataset\n"
            "from reloop.models.train import TrainConfig, train_model\n"
            "from reloop.models.export import export_onnx\n"
            "d = make_dataset(300, seed=3)\n"
            "m, _ = train_model(d.tokens, d.dense, d.labels, d.spec, config=TrainConfig(epochs=1), "
            "model_config=SMALL_MODEL)\n"
            "print(len(export_onnx(m, d.spec)) > 0)\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
    assert "torchvision" not in out.stderr, out.stderr[-2000:]
