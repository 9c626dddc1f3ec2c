"""Training of the slow model on a time-ordered window, with optional warm start.

Training is separate from export and scoring: :func:`train_model` returns a torch
:class:`~reloop.models.ctr.CTRModel` and a metrics dict; :mod:`reloop.models.export` turns it into ONNX and
:mod:`reloop.models.bundle` stores it. A retrain warm-starts by passing the parent model as ``init``.

Optimisation: Adam on binary cross-entropy over logits. The embedding table is updated with
``SparseAdam`` (only the rows of the batch move, and a step costs O(batch) rather than
O(n_buckets)); the rest uses ``Adam`` with L2 ``weight_decay``. Embeddings get no weight decay:
with Adam, L2 on a hashed table would shrink every untouched row by ~lr per step.

Determinism: weights are initialised from ``ModelConfig.seed``; the shuffle uses a
``torch.Generator`` seeded with ``TrainConfig.seed``; torch runs on ``num_threads`` intra-op
threads (restored afterwards). Same inputs + configs + thread count -> bitwise-equal weights.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
try:
    import torch
except ModuleNotFoundError as exc:  # torch is the ``train`` extra: the worker and replay scoring run without it
    raise ModuleNotFoundError("training and ONNX export need torch: pip install 'reloop[train]'", name="torch") from exc
import torch.nn.functional as F

from reloop.models.config import TrainConfig  # torch-free; re-exported here for callers
from reloop.models.ctr import CTRModel, ModelConfig, same_architecture
from reloop.models.features import FeatureSpec, check_inputs
from reloop.models.metrics import auc, logloss

__all__ = ["TrainConfig", "train_model", "predict"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: CTRModel, tokens: np.ndarray, dense: np.ndarray, *, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Torch inference: probabilities ``(n,)`` float64 and hidden ``(n, H)`` float32."""
    tokens, dense = check_inputs(tokens, dense, model.spec)
    was_training = model.training
    model.eval()
    probs: list[np.ndarray] = []
    hidden: list[np.ndarray] = []
    try:
        for start in range(0, tokens.shape[0], batch_size):
            p, h = model(torch.from_numpy(tokens[start : start + batch_size]), torch.from_numpy(dense[start : start + batch_size]))
            probs.append(p.numpy().astype(np.float64))
            hidden.append(h.numpy())
    finally:
        model.train(was_training)
    if not probs:
        return np.zeros(0, dtype=np.float64), np.zeros((0, model.hidden_dim), dtype=np.float32)
    return np.concatenate(probs), np.concatenate(hidden)


def _holdout_metrics(model: CTRModel, tokens: np.ndarray, dense: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if labels.shape[0] == 0:
        return {"auc": float("nan"), "logloss": float("nan")}
    probs, _ = predict(model, tokens, dense)
    return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}


def train_model(
    tokens: np.ndarray,
    dense: np.ndarray,
    labels: np.ndarray,
    spec: FeatureSpec,
    *,
    config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    init: CTRModel | None = None,
) -> tuple[CTRModel, dict[str, Any]]:
    """Train (or warm-start) a :class:`CTRModel` on a time-ordered window.

    Args:
        tokens: ``(n, T)`` int64 token ids, rows in event-time order.
        dense: ``(n, D)`` float32 raw dense values.
        labels: ``(n,)`` in {0, 1}.
        spec: feature spec the inputs were encoded with.
        config: optimisation settings (default :class:`TrainConfig`).
        model_config: architecture for a fresh model; with ``init`` it defaults to
            ``init.config`` and must describe the same architecture.
        init: parent model to warm start from; its weights and dense standardisation are copied
            (the parent is not modified) and training continues from them with a fresh optimiser.

    Returns:
        ``(model, metrics)`` with the model in eval mode. ``metrics`` holds ``holdout_auc``,
        ``holdout_logloss`` (nan without holdout rows or with one class), ``initial_holdout_logloss``
        (before any step: the parent's loss when warm starting), ``holdout_base_rate``,
        ``train_rows``, ``holdout_rows``, ``epochs``, ``steps``, ``train_loss_per_epoch``
        (mean BCE per epoch), ``train_seconds`` (wall clock) and ``warm_start``.
    """
    config = config if config is not None else TrainConfig()
    tokens, dense = check_inputs(tokens, dense, spec, labels)
    y = np.asarray(labels).reshape(-1).astype(np.float32)
    if y.size and not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("labels must be 0 or 1")
    if dense.shape[1] != spec.n_dense:
        raise ValueError(f"dense must have {spec.n_dense} columns, got {dense.shape[1]}")

    n = tokens.shape[0]
    n_holdout = int(round(n * config.holdout_fraction))
    n_train = n - n_holdout
    if init is not None:
        if init.spec != spec:
            raise ValueError(f"warm start needs the parent's spec: {init.spec} != {spec}")
        model_config = model_config if model_config is not None else init.config
        if not same_architecture(model_config, init.config):
            raise ValueError(f"warm start needs the parent's architecture: {model_config} != {init.config}")
    model_config = model_config if model_config is not None else ModelConfig()

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        model = CTRModel(spec, model_config)
        if init is not None:
            model.copy_from(init)
        else:
            model.fit_standardisation(dense[:n_train])
        hold_tokens, hold_dense, hold_y = tokens[n_train:], dense[n_train:], y[n_train:]
        initial = _holdout_metrics(model, hold_tokens, hold_dense, hold_y)

        tables = model.sparse_tables()
        embedding_params = [table.weight for table in tables]
        sparse_ids = {id(p) for p in embedding_params}
        other_params = [p for p in model.parameters() if id(p) not in sparse_ids]
        sparse_opt = torch.optim.SparseAdam(embedding_params, lr=config.lr)
        dense_opt = torch.optim.Adam(other_params, lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed)
        train_tokens = torch.from_numpy(tokens[:n_train])
        train_dense = torch.from_numpy(dense[:n_train])
        train_y = torch.from_numpy(y[:n_train])

        for table in tables:
            table.sparse = True
        model.train()
        epoch_losses: list[float] = []
        steps = 0
        try:
            for epoch in range(config.epochs if n_train else 0):
                order = torch.randperm(n_train, generator=generator)
                total, seen = 0.0, 0
                for start in range(0, n_train, config.batch_size):
                    idx = order[start : start + config.batch_size]
                    logits, _ = model.logits_and_hidden(train_tokens[idx], train_dense[idx])
                    loss = F.binary_cross_entropy_with_logits(logits, train_y[idx])
                    sparse_opt.zero_grad(set_to_none=True)
                    dense_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    sparse_opt.step()
                    dense_opt.step()
                    steps += 1
                    total += float(loss.detach()) * idx.shape[0]
                    seen += idx.shape[0]
                epoch_losses.append(total / max(seen, 1))
                logger.debug("epoch %d: train logloss %.5f", epoch, epoch_losses[-1])
        finally:
            for table in tables:
                table.sparse = False
            model.eval()
        final = _holdout_metrics(model, hold_tokens, hold_dense, hold_y)
    finally:
        torch.set_num_threads(previous_threads)

    metrics: dict[str, Any] = {
        "holdout_auc": final["auc"],
        "holdout_logloss": final["logloss"],
        "initial_holdout_logloss": initial["logloss"],
        "holdout_base_rate": float(hold_y.mean()) if hold_y.size else float("nan"),
        "train_rows": int(n_train),
        "holdout_rows": int(n_holdout),
        "epochs": int(config.epochs),
        "steps": int(steps),
        "train_loss_per_epoch": epoch_losses,
        "train_seconds": time.perf_counter() - started,
        "warm_start": init is not None,
    }
    logger.info(
        "trained on %d rows (%d held out) in %.2fs: holdout auc %.4f logloss %.4f",
        n_train, n_holdout, metrics["train_seconds"], final["auc"], final["logloss"],
    )
    return model, metrics
