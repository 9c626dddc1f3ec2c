"""Offline replay: the worker's batch step fed from a log, without Kafka.

Replay runs what a worker runs (:mod:`reloop.ops.replay_engine`): each micro-batch is
admitted, stepped by :func:`reloop.processors.step.run_step` and its error records applied
through an :class:`~reloop.processors.replica.ErrorsReplica` (error memory, reorder buffer,
schema cache) before the next batch is scored. Two kinds of log:

* **recorded traffic** (``--format topics``): the workers' own input topics as JSON lines,
  requests with their candidate lists, interactions carrying ``request_id``, media events,
  each line one event as :mod:`reloop.streams.codec` encodes it;
* **interaction logs** (``jsonl``, ``movielens``): each labelled interaction without a request
  becomes a one-candidate request plus that interaction (prequential: scored, then learned
  from, in the same batch). The first ``replay.warmup`` fraction of the interactions trains
  the initial model and is not scored.

Events go to user partitions as the producer would route them (``--partitions``, default
``kafka.partitions``). ``reloop replay PATH --format F --report OUT.json`` runs it (docs/replay.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from itertools import chain
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import msgspec
import numpy as np

from reloop.models.fit import FittedModel, fit_model
from reloop.ops.logs import LoadedLog
from reloop.ops.replay_engine import Routed, route_batches
from reloop.ops.replay_run import EngineRun, ReplayResult, progress_bar, steady_gc
from reloop.ops.settings import Settings
from reloop.processors.compensation import Compensation
from reloop.processors.media import MediaCore, annotate_log
from reloop.processors.warmup import warm_up
from reloop.streams.codec import InvalidEvent, decode_event
from reloop.streams.events import Event, Interaction, MediaEvent
from reloop.streams.validation import Limits

log = logging.getLogger("reloop.replay")

#: Builds the compensation for a fitted model (e.g. an error memory sized to its hidden dim).
CompensationFactory = Callable[[FittedModel], Compensation]


def iter_topic_events(path: str, limits: Limits, invalid: list[tuple[int, str]] | None = None) -> Iterator[Event]:
    """Recorded traffic: one event per line in its topic's own JSON (streaming, file order).
    Lines that do not decode are skipped and appended to ``invalid`` as ``(line, reason)``."""
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield decode_event(line.rstrip(b"\r\n"), None, limits)
            except InvalidEvent as exc:
                if invalid is not None:
                    invalid.append((lineno, str(exc)))


def split_warmup(interactions: list[Interaction], fraction: float) -> tuple[list[Interaction], list[Interaction]]:
    """The leading ``fraction`` (at least one event) and the rest."""
    n = max(1, int(round(len(interactions) * fraction)))
    return interactions[:n], interactions[n:]


def fit_initial_model(warm: Sequence[Interaction], settings: Settings, version: str = "v1") -> FittedModel:
    """Train, export and parity-check the initial slow model on labelled interactions."""
    rows = [(it.user_id, it.item_id, it.features) for it in warm]
    labels = np.fromiter((it.label for it in warm), np.float32, len(warm))
    return fit_model(rows, labels, feature_defaults=settings.features, model_config=settings.model,
                     train_config=settings.train, version=version)


def fitted_from_scorer(scorer: Any) -> FittedModel:
    """A served model known only by its scorer (e.g. a bundle from the registry): enough for
    :meth:`ReplayEngine.run_stream` (no torch model, so no retraining from it)."""
    return FittedModel(version=scorer.version, spec=scorer.spec, model=None, onnx_bytes=b"",  # type: ignore[arg-type]
                       scorer=scorer, metrics={})


def check_labelled(loaded: LoadedLog, interactions: Sequence[Interaction]) -> None:
    """Refuse a log replay cannot score: fewer than 2 interactions, or labels of one kind only
    (e.g. a log of clicks without their impressions: AUC and calibration need both).

    Raises:
        ValueError: naming the log, what it holds and how to get a labelled one.
    """
    positives = sum(it.label for it in interactions)
    if len(interactions) >= 2 and 0 < positives < len(interactions):
        return
    what = (f"{len(interactions)} interaction(s), {positives} positive and {len(interactions) - positives} "
            f"negative, and {len(loaded.invalid)} line(s) that are not valid interactions or media events")
    raise ValueError(f"log {loaded.source!r} has {what}: replay needs labelled interactions of both kinds "
                     "(every impression with label 0 or 1, e.g. `reloop simulate --labelled`)")


class ReplayEngine:
    """Replays logs through the worker's step (module doc).

    Args:
        settings: the deployment settings (replay, worker, model, memories).
        compensation_factory: builds the compensation (identity when None).
        partitions: user partitions events are routed to (default: ``kafka.partitions``, as
            ``reloop topics create`` makes them); given, it also sets ``kafka.partitions``, so
            the replica's ``errors`` and ``memory`` partitions agree with it.
    """

    def __init__(self, settings: Settings, compensation_factory: CompensationFactory | None = None,
                 partitions: int | None = None) -> None:
        if partitions is not None and partitions != settings.kafka.partitions:
            settings = settings.with_overrides(kafka={"partitions": partitions})
        self.settings = settings
        self.compensation_factory = compensation_factory
        self.partitions = settings.kafka.partitions

    def run(self, loaded: LoadedLog, *, progress: bool = False, fitted: FittedModel | None = None,
            model_cache: dict[str, FittedModel] | None = None, keep_outputs: bool = False) -> ReplayResult:
        """Replay an interaction log: fit on the warm-up part, then stream the rest.

        With ``replay.retrain_every = N`` the slow model is retrained (warm start) after every
        N scored interactions on the last ``retrain_window`` of them and swapped in between
        batches; the compensation is told (reset or re-key). ``model_cache`` (version -> model)
        lets several runs over the same log share their retrained models.
        """
        return run_many({"": self}, loaded, progress=progress, fitted=fitted, model_cache=model_cache,
                        keep_outputs=keep_outputs)[""]

    def run_warm(self, events: Iterable[Event], n_warm: int, *, source: str = "", progress: bool = False,
                 fitted: FittedModel | None = None, model_cache: dict[str, FittedModel] | None = None,
                 keep_outputs: bool = False, total: int | None = None) -> ReplayResult:
        """Replay a stream of an interaction log: its first ``n_warm`` interactions (held in
        memory, with the media events among them) fit the initial model unless ``fitted`` (or
        ``model_cache["v1"]``) is given and are not scored; the rest streams through
        :meth:`run_stream` in constant memory. Media events before the cut still reach the
        media memory."""
        return run_warm_many({"": self}, events, n_warm, source=source, progress=progress, fitted=fitted,
                             model_cache=model_cache, keep_outputs=keep_outputs, total=total)[""]

    def run_stream(self, events: Iterable[Event], fitted: FittedModel, *, source: str = "", progress: bool = False,
                   seq0: int = 0, model_cache: dict[str, FittedModel] | None = None, keep_outputs: bool = False,
                   batches: Iterable[Sequence[Routed]] | None = None, total: int | None = None,
                   scorer: Any = None) -> ReplayResult:
        """Replay ``events`` (any iterable, consumed once, in order) with ``fitted``'s model
        (or ``scorer``, e.g. the one a worker loads from the registry).

        ``batches`` replaces the default cut (``replay.batch_size`` events per batch) with
        explicit batches of routed records (e.g. :func:`~reloop.ops.replay_engine.cut_runs`).
        """
        return run_stream_many({"": self}, events, fitted, source=source, progress=progress, seq0=seq0,
                               model_cache=model_cache, keep_outputs=keep_outputs, batches=batches, total=total,
                               scorer=scorer)[""]

    def _retrain(self, current: FittedModel, window: Sequence[Interaction], version: str,
                 cache: dict[str, FittedModel]) -> FittedModel:
        if version not in cache:
            rows = [(it.user_id, it.item_id, it.features) for it in window]
            labels = np.fromiter((it.label for it in window), np.float32, len(window))
            cache[version] = fit_model(rows, labels, feature_defaults=self.settings.features,
                                       model_config=self.settings.model, train_config=self.settings.train,
                                       version=version, init=current.model)
        return cache[version]


def run_many(engines: Mapping[str, ReplayEngine], loaded: LoadedLog, *, progress: bool = False,
             fitted: FittedModel | None = None, model_cache: dict[str, FittedModel] | None = None,
             keep_outputs: bool = False,
             share: Callable[[FittedModel], FittedModel] | None = None) -> dict[str, ReplayResult]:
    """:meth:`ReplayEngine.run` for several engines in one pass over ``loaded`` (the first
    engine's ``replay.warmup`` cuts the warm-up; ``share``: :func:`run_warm_many`)."""
    first = next(iter(engines.values()))
    interactions = loaded.interactions
    check_labelled(loaded, interactions)
    n_warm = max(1, int(round(len(interactions) * first.settings.replay.warmup)))
    out = run_warm_many(engines, iter(loaded.events), n_warm, source=loaded.source, progress=progress,
                        fitted=fitted, model_cache=model_cache, keep_outputs=keep_outputs,
                        total=len(loaded.events) - n_warm, share=share)
    for res in out.values():
        res.report.update({"events": len(loaded.events), "interactions": len(interactions),
                           "invalid_lines": len(loaded.invalid),
                           "invalid_examples": [{"line": n, "reason": r} for n, r in loaded.invalid[:20]]})
    return out


def run_warm_many(engines: Mapping[str, ReplayEngine], events: Iterable[Event], n_warm: int, *,
                  source: str = "", progress: bool = False, fitted: FittedModel | None = None,
                  model_cache: dict[str, FittedModel] | None = None, keep_outputs: bool = False,
                  total: int | None = None,
                  share: Callable[[FittedModel], FittedModel] | None = None) -> dict[str, ReplayResult]:
    """:meth:`ReplayEngine.run_warm` for several engines in one pass over ``events`` (the
    first engine's settings fit the initial model; see :func:`run_stream_many`). ``share``
    wraps the initial model once it is known (e.g. a scorer that remembers its outputs)."""
    first = next(iter(engines.values()))
    it = iter(events)
    warm_events: list[Event] = []
    seen = 0
    while seen < n_warm:
        e = next(it, None)
        if e is None:
            break
        warm_events.append(e)
        seen += isinstance(e, Interaction)
    t_fit = time.perf_counter()
    cache = model_cache if model_cache is not None else {}
    settings = first.settings
    if fitted is None and "v1" not in cache:
        warm = (annotate_log(MediaCore(settings.media), warm_events)
                if settings.worker.media_features and any(isinstance(e, MediaEvent) for e in warm_events)
                else [e for e in warm_events if isinstance(e, Interaction)])
        cache["v1"] = fit_initial_model(warm, settings)
        del warm
    fitted = fitted or cache["v1"]
    if share is not None:
        fitted = cache["v1"] = share(fitted)
    cache.setdefault("v1", fitted)
    fit_s = time.perf_counter() - t_fit
    # only the warm-up's media events go on (held by the chain until replayed); the rest of
    # the warm-up is released here, not kept for the whole replay
    stream = chain([e for e in warm_events if isinstance(e, MediaEvent)], it)
    del warm_events
    out = run_stream_many(engines, stream, fitted, source=source, progress=progress, seq0=seen,
                          model_cache=cache, keep_outputs=keep_outputs, total=total)
    for res in out.values():
        res.report.update({"events": res.report["events"] + seen,
                           "interactions": res.report["interactions"] + seen,
                           "warmup_events": seen, "fit_seconds": fit_s})
    return out


def run_stream_many(engines: Mapping[str, ReplayEngine], events: Iterable[Event], fitted: FittedModel, *,
                    source: str = "", progress: bool = False, seq0: int = 0,
                    model_cache: dict[str, FittedModel] | None = None, keep_outputs: bool = False,
                    batches: Iterable[Sequence[Routed]] | None = None, total: int | None = None,
                    scorer: Any = None) -> dict[str, ReplayResult]:
    """:meth:`ReplayEngine.run_stream` for several engines (name -> engine) in one pass:
    the log is read, decoded, routed and cut once, and each batch is stepped by every
    engine in turn (their own cores, replica and retrained models; ``model_cache`` shares
    the retrained models). The engines must agree on partitions and replay settings (a
    comparison differs in compensation only). ``events_per_s`` of each result counts the
    shared reading time plus that engine's own step time."""
    first = next(iter(engines.values()))
    cfg = first.settings.replay
    if scorer is not None:  # the same model opened another way (e.g. as a worker opens it)
        fitted = dataclasses.replace(fitted, scorer=scorer)
    ws = first.settings.worker  # compile the kernels first, as a worker does before it consumes
    kernels_s = warm_up(first.settings.media if ws.media_features else None,
                        first.settings.schemas if ws.schema_cache else None)
    counts = {"requests": 0, "interactions": 0, "media": 0}
    window: deque[Interaction] = deque(maxlen=cfg.retrain_window)
    cache = model_cache if model_cache is not None else {}
    runs = {name: EngineRun(engine, fitted, cache, window, keep_outputs) for name, engine in engines.items()}

    def counted(evs: Iterable[Event]) -> Iterator[Event]:
        n_inter = n_media = n_other = 0
        keep = window.append if cfg.retrain_every else None
        try:
            for e in evs:
                cls = e.__class__
                if cls is Interaction or (cls is not MediaEvent and isinstance(e, Interaction)):
                    n_inter += 1
                    if keep is not None and e.request_id is None:
                        keep(e)
                elif cls is MediaEvent or isinstance(e, MediaEvent):
                    n_media += 1
                else:
                    n_other += 1
                yield e
        finally:
            counts["interactions"] += n_inter
            counts["media"] += n_media
            counts["requests"] += n_other

    if batches is None:
        batches = route_batches(counted(events), first.partitions, seq0, cfg.batch_size)
    t0 = time.perf_counter()
    with steady_gc(), progress_bar(progress, total) as advance:
        for batch in batches:
            for run in runs.values():
                run.feed(batch)
            advance(len(batch))
    elapsed = time.perf_counter() - t0
    shared = elapsed - sum(r.seconds for r in runs.values())
    return {name: run.result(source, counts, shared + run.seconds, kernels_s) for name, run in runs.items()}


def write_report(report: dict, path: str) -> None:
    """Write a report as indented JSON (NaN becomes null)."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    clean = msgspec.json.decode(msgspec.json.encode(report))  # NaN -> null
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(clean), indent=2) + b"\n")
