"""Cold start on a real cluster: ``reloop train --from-log LOG`` trains the first model.

An empty cluster cannot bootstrap itself: workers serve nothing until a model exists, and the
trainer learns only from error records, which only serving workers produce. So the first
version comes from a recorded log of labelled interactions (your previous system's
impressions and clicks in ReLoop's JSONL form, a ``reloop simulate --labelled`` log, or a
MovieLens directory):

1. read the log (:func:`reloop.ops.logs.read_log`; invalid lines are counted and skipped) and, when
   it has media events and ``worker.media_features`` is on, merge the media-memory features
   into each interaction exactly as the worker and the replay engine do;
2. train, export to ONNX and check torch/onnxruntime parity (:func:`reloop.ops.replay.fit_initial_model`,
   the same function ``reloop run`` and ``reloop replay`` use), then refuse a model whose
   holdout AUC is below ``min_auc`` (no better than chance);
3. register it as ``v1`` in ``<data_dir>/models`` and make it current;
4. announce it on the ``models`` topic, so running workers load it at once (workers started
   later load ``CURRENT`` from the registry).

Idempotent, so it can run in a Job that is retried: if the registry already serves a
version, nothing is trained and that version is announced again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from reloop.ops.settings import Settings

log = logging.getLogger("reloop.cold_start")

#: Fewest labelled interactions (with both labels present) a first model is trained on.
MIN_ROWS = 200


class ColdStartError(ValueError):
    """The log cannot give a first model (no labels, one class, too few rows, poor holdout)."""


@dataclass
class ColdStartResult:
    """What ``train --from-log`` did: ``version`` serving, whether it was ``trained`` now (False:
    the registry already served it), the rows it learnt from, its metrics, the topic announced on."""

    version: str
    trained: bool
    rows: int = 0
    invalid_lines: int = 0
    metrics: dict | None = None
    announced_on: str | None = None


def load_training_rows(path: str, fmt: str, settings: Settings) -> tuple[list, int]:
    """The log's labelled interactions (media features merged) and its count of invalid lines.

    Raises:
        ColdStartError: fewer than :data:`MIN_ROWS` labelled interactions, or one class only.
        FileNotFoundError: ``path`` does not exist.
    """
    from reloop.ops.logs import read_log
    from reloop.processors.media import MediaCore, annotate_log
    from reloop.streams.events import MediaEvent

    if not Path(path).exists():
        raise FileNotFoundError(f"log {path} not found")
    loaded = read_log(path, fmt, settings.limits)
    has_media = any(isinstance(e, MediaEvent) for e in loaded.events)
    rows = (annotate_log(MediaCore(settings.media), loaded.events) if settings.worker.media_features and has_media
            else loaded.interactions)
    positives = sum(1 for r in rows if r.label)
    if len(rows) < MIN_ROWS or positives == 0 or positives == len(rows):
        raise ColdStartError(
            f"log {path} has {len(rows)} labelled interaction(s) ({positives} positive, "
            f"{len(loaded.invalid)} invalid line(s)); a first model needs >= {MIN_ROWS} with both labels "
            "(record impressions as well as clicks, e.g. `reloop simulate --labelled`)")
    return rows, len(loaded.invalid)


async def announce(settings: Settings, version: str) -> str:
    """Produce ``version``'s announcement on the compacted ``models`` topic; returns the topic
    (the same announcement as ``reloop models promote``)."""
    from reloop.models.registry import ModelRegistry
    from reloop.ops.models_cli import announce_version
    from reloop.ops.retrain import registry_root

    return await announce_version(settings, ModelRegistry(registry_root(settings)), version)


def cold_start(settings: Settings, path: str, fmt: str = "jsonl", *, min_auc: float = 0.5,
               announce_it: bool = True) -> ColdStartResult:
    """Train, register and announce the first model from the log at ``path`` (see module doc).

    Raises:
        ColdStartError: the log has too few labelled rows, or the model's holdout AUC is
            below ``min_auc``; nothing is registered then.
    """
    from reloop.models.registry import ModelRegistry
    from reloop.ops.replay import fit_initial_model
    from reloop.ops.retrain import registry_root

    registry = ModelRegistry(registry_root(settings))
    current = registry.current()
    if current is not None:
        log.info("cold_start_skipped", extra={"current": current, "registry": str(registry.root)})
        topic = asyncio.run(announce(settings, current)) if announce_it else None
        return ColdStartResult(version=current, trained=False, announced_on=topic)
    rows, invalid = load_training_rows(path, fmt, settings)
    version = "v1"
    while registry.path(version).exists():  # a registered but never promoted version: keep it, take the next
        version = f"v{int(version[1:]) + 1}"
    fitted = fit_initial_model(rows, settings, version=version)
    auc = fitted.metrics.get("holdout_auc")
    if isinstance(auc, float) and math.isfinite(auc) and auc < min_auc:
        raise ColdStartError(f"the model trained on {path} has holdout AUC {auc:.4f} < {min_auc} "
                             "(--min-auc); not registered")
    registry.register(fitted, window=(rows[0].ts, rows[-1].ts))
    log.info("cold_start_registered", extra={"version": version, "rows": len(rows), "holdout_auc": auc})
    topic = asyncio.run(announce(settings, version)) if announce_it else None
    return ColdStartResult(version=version, trained=True, rows=len(rows), invalid_lines=invalid,
                           metrics=dict(fitted.metrics), announced_on=topic)
