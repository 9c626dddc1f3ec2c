"""ONNX export of :class:`~reloop.models.ctr.CTRModel` and the torch/onnxruntime parity check.

The exported graph has

- inputs ``tokens`` int64 ``[batch, T]`` and ``dense`` float32 ``[batch, W]`` with
  ``W = spec.dense_width = max(1, D)`` (when ``D == 0`` the caller feeds one zero column;
  :class:`~reloop.models.scorer.OnnxScorer` does that itself);
- outputs ``prob`` float32 ``[batch]`` and ``hidden`` float32 ``[batch, H]``;
- a dynamic ``batch`` axis, opset :data:`OPSET`;
- ``metadata_props``: ``reloop.feature_spec`` (JSON of the :class:`FeatureSpec`),
  ``reloop.model_config`` (JSON of the :class:`ModelConfig`), ``reloop.hidden_dim`` and
  ``reloop.exporter``, so a model file describes its own inputs.

Exporter: the default is torch's ``torch.export``-based ("dynamo") exporter, the maintained
path since torch 2.9 (the TorchScript exporter is deprecated). On this model it yields the
same bytes for the same weights (checked by a test). ``exporter="torchscript"`` selects the
legacy tracer, kept as an escape hatch: it exports ~5x faster (0.5 s vs 2.5-5 s for the
default-size model on 2 cores) but is deprecated. The first dynamo export in a process also
pays a one-off ~2 s import of ``torch._dynamo``.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from typing import Literal

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
try:
    import torch
except ModuleNotFoundError as exc:  # torch is the ``train`` extra: the worker and replay scoring run without it
    raise ModuleNotFoundError("training and ONNX export need torch: pip install 'reloop[train]'", name="torch") from exc

from reloop.models.ctr import CTRModel
from reloop.models.features import FeatureSpec, check_inputs, pad_dense
from reloop.models.scorer import SPEC_METADATA_KEY, make_session_options

__all__ = ["export_onnx", "check_parity", "ParityError", "OPSET", "INPUT_NAMES", "OUTPUT_NAMES", "Exporter"]

logger = logging.getLogger(__name__)


def _not_about_torchvision(record: logging.LogRecord) -> bool:
    return "torchvision" not in record.getMessage()


def quiet_onnx_exporter() -> None:
    """Drop torch's ONNX exporter warnings about torchvision ops (``torchvision is not
    installed. Skipping torchvision::nms`` ...): the models use none of them. A filter on that
    logger, so it holds even when torch's logging setup resets levels at its first export;
    :func:`export_onnx` installs it (once)."""
    target = logging.getLogger("torch.onnx._internal.exporter._registration")
    if _not_about_torchvision not in target.filters:
        target.addFilter(_not_about_torchvision)

#: ONNX opset of exported models.
OPSET = 20
INPUT_NAMES = ("tokens", "dense")
OUTPUT_NAMES = ("prob", "hidden")
Exporter = Literal["dynamo", "torchscript"]

_EXAMPLE_BATCH = 3  # > 1 so torch.export does not specialise the batch axis


class ParityError(RuntimeError):
    """The ONNX model's outputs differ from the torch model's by more than the tolerance."""


def _example_inputs(spec: FeatureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, spec.n_buckets, (_EXAMPLE_BATCH, spec.max_tokens), generator=generator)
    dense = torch.randn(_EXAMPLE_BATCH, spec.dense_width, generator=generator)
    return tokens, dense


def _export_dynamo(model: CTRModel, example: tuple[torch.Tensor, torch.Tensor]) -> onnx.ModelProto:
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model,
        example,
        dynamo=True,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch}, {0: batch}),
        opset_version=OPSET,
        verbose=False,
    )
    return program.model_proto


def _export_torchscript(model: CTRModel, example: tuple[torch.Tensor, torch.Tensor]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    torch.onnx.export(
        model,
        example,
        buffer,
        dynamo=False,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes=axes,
        opset_version=OPSET,
    )
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(model: CTRModel, spec: FeatureSpec | None = None, *, exporter: Exporter = "dynamo") -> bytes:
    """Serialise ``model`` to ONNX bytes (see module docstring for the graph's contract).

    Args:
        model: trained model; it is not modified (a copy in eval mode is exported).
        spec: feature spec the model was trained with; must equal ``model.spec`` if given.
        exporter: ``"dynamo"`` (default) or ``"torchscript"``.

    Raises:
        ValueError: if ``spec`` differs from ``model.spec``, or the padding row 0 of the
            embedding is not zero (the graph relies on it instead of masking padding).
    """
    if spec is not None and spec != model.spec:
        raise ValueError(f"spec {spec} does not match the model's {model.spec}")
    spec = model.spec
    if any(table.weight[0].detach().abs().max() != 0 for table in model.sparse_tables()):
        raise ValueError("embedding row 0 (padding) must be zero: the graph has no padding mask")
    frozen = copy.deepcopy(model).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    example = _example_inputs(spec)
    quiet_onnx_exporter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            proto = _export_dynamo(frozen, example)
        elif exporter == "torchscript":
            proto = _export_torchscript(frozen, example)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    _check_signature(proto, spec, model.hidden_dim)
    metadata = {
        SPEC_METADATA_KEY: msgspec.json.encode(spec).decode(),
        "reloop.model_config": msgspec.json.encode(model.config).decode(),
        "reloop.hidden_dim": str(model.hidden_dim),
        "reloop.exporter": exporter,
    }
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString(deterministic=True)
    logger.info("exported ONNX model with %s exporter: %d bytes", exporter, len(data))
    return data


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_signature(proto: onnx.ModelProto, spec: FeatureSpec, hidden_dim: int) -> None:
    inputs = {i.name: i for i in proto.graph.input}
    outputs = {o.name: o for o in proto.graph.output}
    if set(inputs) != set(INPUT_NAMES) or set(outputs) != set(OUTPUT_NAMES):
        raise RuntimeError(f"unexpected ONNX signature: inputs {list(inputs)}, outputs {list(outputs)}")
    expected = {
        "tokens": (onnx.TensorProto.INT64, [spec.max_tokens]),
        "dense": (onnx.TensorProto.FLOAT, [spec.dense_width]),
        "prob": (onnx.TensorProto.FLOAT, []),
        "hidden": (onnx.TensorProto.FLOAT, [hidden_dim]),
    }
    for name, info in {**inputs, **outputs}.items():
        elem_type, tail = expected[name]
        dims = _dims(info)
        if info.type.tensor_type.elem_type != elem_type or dims[1:] != tail or isinstance(dims[0], int):
            raise RuntimeError(f"ONNX {name!r} has type {info.type.tensor_type.elem_type} dims {dims}")


@torch.no_grad()
def check_parity(
    model: CTRModel,
    onnx_bytes: bytes,
    tokens: np.ndarray,
    dense: np.ndarray,
    atol: float = 1e-5,
) -> float:
    """Max absolute difference between torch and onnxruntime over ``prob`` and ``hidden``.

    onnxruntime runs with the serving session options (:func:`reloop.models.scorer.make_session_options`,
    ``ORT_ENABLE_ALL``), so the check covers the fused graph that will actually be served.

    Args:
        model: the torch model that was exported.
        onnx_bytes: its ONNX serialisation.
        tokens: ``(n, T)`` int64 probe rows (use real rows from the window).
        dense: ``(n, D)`` float32 probe rows.
        atol: tolerance.

    Raises:
        ParityError: if the difference exceeds ``atol`` or the outputs are not finite.
    """
    tokens, dense = check_inputs(tokens, dense, model.spec)
    dense = pad_dense(dense, model.spec)
    if tokens.shape[0] == 0:
        raise ValueError("parity needs at least one probe row")
    was_training = model.training
    model.eval()
    try:
        prob_t, hidden_t = model(torch.from_numpy(tokens), torch.from_numpy(dense))
    finally:
        model.train(was_training)
    session = ort.InferenceSession(onnx_bytes, sess_options=make_session_options(1), providers=["CPUExecutionProvider"])
    prob_o, hidden_o = session.run(list(OUTPUT_NAMES), {"tokens": tokens, "dense": dense})
    if prob_o.shape != tuple(prob_t.shape) or hidden_o.shape != tuple(hidden_t.shape):
        raise ParityError(f"shape mismatch: onnx {prob_o.shape}/{hidden_o.shape}, torch {tuple(prob_t.shape)}/{tuple(hidden_t.shape)}")
    if not (np.all(np.isfinite(prob_o)) and np.all(np.isfinite(hidden_o))):
        raise ParityError("onnxruntime produced non-finite outputs")
    diff = max(
        float(np.max(np.abs(prob_o - prob_t.numpy()))),
        float(np.max(np.abs(hidden_o - hidden_t.numpy()))) if hidden_o.size else 0.0,
    )
    if not diff <= atol:
        raise ParityError(f"torch/onnx max abs diff {diff:.3e} exceeds atol {atol:.1e}")
    return diff
