"""Fit a slow model end to end: infer features, train, export ONNX, check parity, load.

This is the one entry point the replay engine, the main job and (later) the trainer use, so
every served model has passed the same export and parity checks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import msgspec
import numpy as np

from reloop.models.config import ModelConfig, TrainConfig, same_architecture
from reloop.models.features import FeatureEncoder, FeatureSpec, Row
from reloop.models.scorer import OnnxScorer

if TYPE_CHECKING:  # torch (the ``train`` extra) is imported by fit_model only
    from reloop.models.ctr import CTRModel

log = logging.getLogger("reloop.fit")


@dataclass
class FittedModel:
    """A trained, exported and parity-checked model version.

    Attributes:
        version: version label, e.g. ``v1``.
        spec: the feature spec it was trained with.
        model: the torch model (for warm starts and re-keying).
        onnx_bytes: the exported graph that ``scorer`` serves.
        scorer: onnxruntime scorer of ``onnx_bytes``.
        metrics: holdout metrics of training plus ``parity_max_abs_diff`` and timings (s).
    """

    version: str
    spec: FeatureSpec
    model: CTRModel
    onnx_bytes: bytes
    scorer: OnnxScorer
    metrics: dict[str, Any] = field(default_factory=dict)


def _training() -> tuple[Any, Any, Any]:
    """``train_model``, ``export_onnx``, ``check_parity``: the torch part (the ``train`` extra),
    imported on use; without torch, a ModuleNotFoundError that says how to install it."""
    from reloop.models.export import check_parity, export_onnx
    from reloop.models.train import train_model

    return train_model, export_onnx, check_parity


def fit_model(rows: Sequence[Row], labels: np.ndarray, *, feature_defaults: FeatureSpec,
              model_config: ModelConfig, train_config: TrainConfig, version: str,
              init: CTRModel | None = None, ort_threads: int = 1) -> FittedModel:
    """Train on time-ordered ``rows`` with ``labels`` (n,) {0,1} and return the served form.

    Dense feature names are inferred from the rows (numeric values) unless ``init`` is given,
    in which case its spec is kept so the warm start stays shape-compatible. If ``init`` has
    another architecture than ``model_config`` (seed aside), the candidate is trained from
    scratch instead of warm-started (``architecture_changed`` log), for at least
    ``TrainConfig().epochs`` passes.

    Raises:
        reloop.models.export.ParityError: torch and onnxruntime disagree by more than 1e-5.
    """
    train_model, export_onnx, check_parity = _training()
    t0 = time.perf_counter()
    architecture_changed = False
    spec = init.spec if init is not None else FeatureSpec.infer(
        rows, n_buckets=feature_defaults.n_buckets, max_tokens=feature_defaults.max_tokens)
    if init is not None and not same_architecture(init.config, model_config):
        # The settings name another architecture than the parent's (e.g. a registry of
        # full-rank models after the low-rank default): weights cannot carry over, so the
        # configured architecture is trained from scratch on the window, with the parent's
        # feature spec and at least a cold start's epochs. The gates still compare it with the
        # serving model, which keeps serving if the candidate is worse.
        log.info("architecture_changed", extra={"version": version, "parent_config": msgspec.to_builtins(init.config),
                                                "config": msgspec.to_builtins(model_config)})
        init, architecture_changed = None, True
        train_config = msgspec.structs.replace(train_config, epochs=max(train_config.epochs, TrainConfig().epochs))
    tokens, dense = FeatureEncoder(spec).encode(rows)
    model, metrics = train_model(tokens, dense, np.asarray(labels, np.float32), spec,
                                 config=train_config, model_config=model_config, init=init)
    model.fit_hidden_center(tokens, dense)
    t_train = time.perf_counter() - t0
    onnx_bytes = export_onnx(model, spec)
    probe = slice(max(0, len(rows) - 512), len(rows))
    diff = check_parity(model, onnx_bytes, tokens[probe], dense[probe])
    scorer = OnnxScorer(onnx_bytes, version=version, spec=spec, intra_op_num_threads=ort_threads)
    metrics = {**metrics, "parity_max_abs_diff": float(diff), "train_seconds": t_train,
               "fit_seconds": time.perf_counter() - t0, "train_rows": len(rows),
               "architecture_changed": architecture_changed}
    log.info("model_fitted", extra={"version": version, **{k: v for k, v in metrics.items()
                                                            if isinstance(v, (int, float))}})
    return FittedModel(version, spec, model, onnx_bytes, scorer, metrics)
