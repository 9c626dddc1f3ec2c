"""Configuration of the slow model and of its training, without torch.

:class:`ModelConfig` (architecture, :mod:`reloop.models.ctr`) and :class:`TrainConfig`
(optimisation, :mod:`reloop.models.train`) are sections of :class:`reloop.ops.settings.Settings`;
they live here so that the settings, the worker and replay import without torch, which only
training and export need (the ``train`` extra).

>>> ModelConfig().cross, TrainConfig().epochs
('lowrank', 3)
>>> same_architecture(ModelConfig(seed=1), ModelConfig(seed=2))
True
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["CrossKind", "LEGACY_MODEL_CONFIG", "ModelConfig", "TrainConfig", "config_from_meta", "same_architecture"]

#: Cross-layer kinds (``ModelConfig.cross``).
CrossKind = Literal["full", "lowrank"]


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Architecture hyper-parameters of :class:`CTRModel`.

    Attributes:
        emb_dim: embedding width per token ``E``.
        hidden_dim: width ``H`` of the exposed hidden layer.
        cross_layers: number of DCN-v2 cross layers.
        cross: ``"full"`` (``(d, d)`` weight per layer, the architecture before issue 14) or
            ``"lowrank"`` (``U V`` with inner rank ``cross_rank``).
        cross_rank: inner rank ``r`` of a low-rank cross layer (ignored for ``"full"``).
        structure: ``"parallel"`` (deep tower on ``x0`` beside the cross stack, both feeding
            the hidden layer) or ``"stacked"`` (deep tower on the cross stack's output, DCN-v2's
            stacked form; the hidden layer sees only the deep output, so it is much cheaper).
        wide: add a first-order term to the logit: one learned scalar per hashed token
            (``Embedding(n_buckets, 1)``, padding row 0 zero, initialised to zero), summed
            over the row's tokens, as in wide & deep models.
        deep_sizes: widths of the deep MLP tower.
        dense_clip: standardised dense values are clamped to ``[-dense_clip, dense_clip]``.
        seed: seed for weight initialisation (``torch.manual_seed``).
    """

    emb_dim: int = 16
    hidden_dim: int = 64
    cross_layers: int = 2
    deep_sizes: tuple[int, ...] = (32,)
    dense_clip: float = 8.0
    seed: int = 0
    cross: CrossKind = "lowrank"
    cross_rank: int = 16
    wide: bool = True
    structure: Literal["parallel", "stacked"] = "parallel"

    def __post_init__(self) -> None:
        if self.cross not in ("full", "lowrank"):
            raise ValueError(f"cross must be 'full' or 'lowrank', got {self.cross!r}")
        if self.structure not in ("parallel", "stacked"):
            raise ValueError(f"structure must be 'parallel' or 'stacked', got {self.structure!r}")
        if self.cross_rank < 1 or self.emb_dim < 1 or self.hidden_dim < 1 or self.cross_layers < 0:
            raise ValueError("cross_rank, emb_dim and hidden_dim must be >= 1 and cross_layers >= 0")


#: The architecture every model had before issue 14: two full-rank cross layers. Bundles whose
#: ``model_config`` has no ``cross`` key were written with it (:func:`config_from_meta`).
LEGACY_MODEL_CONFIG = ModelConfig(emb_dim=16, hidden_dim=64, cross_layers=2, deep_sizes=(128, 64), cross="full",
                                  wide=False, structure="parallel")


def same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    """True if weights of ``a`` fit ``b`` and mean the same (every field but ``seed`` equal)."""
    return msgspec.structs.replace(a, seed=0) == msgspec.structs.replace(b, seed=0)


def config_from_meta(data: dict) -> ModelConfig:
    """The :class:`ModelConfig` of a stored model from its JSON object (bundle or ONNX metadata).

    Metadata written before the ``cross`` field existed describes full-rank cross layers, so a
    missing ``cross`` key means ``"full"``, a missing ``wide`` key no wide term and a missing
    ``structure`` key ``"parallel"`` (not today's defaults). Raises ``msgspec.ValidationError``.
    """
    data = dict(data)
    data.setdefault("cross", "full")
    data.setdefault("wide", False)
    data.setdefault("structure", "parallel")
    return msgspec.convert(data, type=ModelConfig)


class TrainConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Optimisation settings.

    Attributes:
        epochs: passes over the training part of the window (0 = evaluate only).
        batch_size: rows per step.
        lr: Adam / SparseAdam learning rate.
        weight_decay: L2 on non-embedding weights.
        seed: shuffle seed.
        holdout_fraction: the last fraction of the (time-ordered) rows held out for metrics.
        num_threads: torch intra-op threads during training.
    """

    epochs: int = 3
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-6
    seed: int = 0
    holdout_fraction: float = 0.1
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.num_threads < 1:
            raise ValueError("epochs >= 0, batch_size >= 1 and num_threads >= 1 are required")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
