"""TrainerCore: when to retrain the slow model (schedule and drift). Pure: no I/O, no clocks.

The trainer shell (:mod:`reloop.ops.trainer`) feeds every batch of *new* error records (after the
window's dedupe) to :meth:`TrainerCore.on_batch`, which returns a :class:`RetrainDecision` when
a retrain is due, else None. Triggers, checked after each batch:

- ``initial``: no model is serving yet and ``min_samples`` samples have arrived;
- ``drift``: a river drift detector (ADWIN by default, or Page-Hinkley) watching the serving
  model's online log loss raised an alarm *upwards* (loss got worse), and
  ``drift_settle_samples`` samples have arrived since the sample that raised it, so the window
  holds post-shift data;
- ``samples``: ``retrain_every_samples`` samples since the last retrain;
- ``time``: ``retrain_every_s`` seconds of *event time* since the last retrain (event time keeps
  the core deterministic and replayable; an idle stream brings no new data anyway).

Every trigger also needs ``min_samples_between`` new samples since the last retrain
(cooldown). The detector input is the mean log loss of consecutive chunks of
``drift_chunk`` samples of the serving version (records scored by another version are not
fed), so detection does not depend on how the stream is cut into batches and costs one
detector update per chunk. Decisions are evaluated at the end of a batch.

The shell calls :meth:`TrainerCore.on_retrained` after a successful retrain (new serving
version, counters and detector reset) or :meth:`TrainerCore.on_retrain_failed` after a
rejected or failed one (counters reset, so a failing retrain is not retried on every batch).

:class:`EventTimeMerge` (also pure) turns the partitions of ``errors`` into one stream in
event-time order before it reaches the core: the detector needs time order, and a consumer
reading a backlog gets one partition after another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import msgspec
import numpy as np

from reloop.streams.events import ErrorRecord

__all__ = ["TrainerConfig", "RetrainDecision", "DriftMonitor", "TrainerCore", "RetrainReason", "EventTimeMerge"]

RetrainReason = Literal["initial", "drift", "samples", "time"]

#: Predictions are clipped to ``[eps, 1 - eps]`` before the per-sample log loss (nats).
_LOSS_EPS = 1e-4


class TrainerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[trainer]`` settings section (``RELOOP_TRAINER__<FIELD>``).

    Attributes:
        group_id: consumer group of the trainer on the ``errors`` topic.
        window_max_samples: training window size, samples (count retention).
        window_max_age_s: event-time seconds of history kept (age retention).
        segment_max_samples: window segment size, lines.
        min_samples: fewest samples in the window to train on.
        min_samples_between: cooldown, new samples needed after a retrain for any trigger.
        retrain_every_samples: schedule by count (0 = off).
        retrain_every_s: schedule by event time, seconds (0 = off).
        drift_detector: ``adwin``, ``page_hinkley`` or ``none``.
        drift_chunk: samples averaged into one detector input (ADWIN: small, e.g. 10, since it
            needs hundreds of inputs to decide; Page-Hinkley: larger, e.g. 100, to tame noise).
        drift_delta: ADWIN's confidence ``delta`` (smaller = fewer false alarms, later alarms).
        drift_ph_delta: Page-Hinkley's tolerated change of the chunk-mean log loss (nats).
        drift_ph_threshold: Page-Hinkley's alarm threshold (cumulative nats of chunk means).
        drift_settle_samples: samples to wait after a drift alarm before retraining.
        holdout_fraction: last (newest) fraction of the window held out for the checks.
        max_auc_drop: reject a candidate whose holdout AUC is below the serving model's by more.
        max_logloss_increase: reject a candidate whose holdout log loss exceeds the serving
            model's by more (nats).
        parity_atol: torch vs onnxruntime max abs difference allowed.
        min_holdout_rows: reject a candidate checked on fewer held-out rows.
        train_threads: torch intra-op threads while training.
        warm_epochs: passes over the window when warm-starting from the serving model (the
            parent has already seen most of the window; more passes overfit it); a cold start
            (no serving model) uses ``train.epochs``.
        poll_max_records: most records per ``getmany`` of the trainer's consumer.
        merge_max_buffered: most records the event-time merge holds back (:class:`EventTimeMerge`);
            a partition holding more than a quarter of it is paused.
    """

    group_id: str = "reloop-trainer"
    window_max_samples: int = 50_000
    window_max_age_s: float = 7 * 86400.0
    segment_max_samples: int = 10_000
    min_samples: int = 2_000
    min_samples_between: int = 1_000
    retrain_every_samples: int = 20_000
    retrain_every_s: float = 0.0
    drift_detector: Literal["adwin", "page_hinkley", "none"] = "adwin"
    drift_chunk: int = 10
    drift_delta: float = 0.002
    drift_ph_delta: float = 0.01
    drift_ph_threshold: float = 1.0
    drift_settle_samples: int = 1_000
    holdout_fraction: float = 0.1
    max_auc_drop: float = 0.005
    max_logloss_increase: float = 0.005
    parity_atol: float = 1e-5
    min_holdout_rows: int = 100
    train_threads: int = 1
    warm_epochs: int = 1
    poll_max_records: int = 5000
    merge_max_buffered: int = 20_000

    def __post_init__(self) -> None:
        if self.window_max_samples < 1 or self.min_samples < 1 or self.drift_chunk < 1:
            raise ValueError("window_max_samples, min_samples and drift_chunk must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.retrain_every_samples < 0 or self.retrain_every_s < 0 or self.min_samples_between < 0:
            raise ValueError("retrain_every_samples, retrain_every_s and min_samples_between must be >= 0")


@dataclass(frozen=True)
class RetrainDecision:
    """A retrain is due.

    Attributes:
        reason: which trigger fired (``drift`` wins over the schedule when both are due).
        new_samples: samples (of any version) since the last retrain.
        samples_total: samples seen by the core since it started.
        event_ts: newest event time seen, unix seconds.
        detail: trigger specifics, e.g. the log loss before/after a drift alarm.
    """

    reason: RetrainReason
    new_samples: int
    samples_total: int
    event_ts: float
    detail: dict[str, Any] = field(default_factory=dict)


class DriftMonitor:
    """A river drift detector on the chunk-mean log loss; alarms only when the loss rises.

    Args:
        kind: ``adwin`` or ``page_hinkley`` (Page-Hinkley runs in ``mode="up"``).
        chunk: samples per detector input.
        delta: ADWIN's confidence or Page-Hinkley's tolerated change (see :class:`TrainerConfig`).
        threshold: Page-Hinkley's alarm threshold (unused by ADWIN).
    """

    def __init__(self, kind: str, chunk: int, delta: float, threshold: float = 1.0) -> None:
        self.kind, self.chunk, self.delta, self.threshold = kind, chunk, delta, threshold
        self._sum = 0.0
        self._n = 0
        self.chunks = 0
        self.alarms = 0
        self.baseline = float("nan")  # mean chunk loss since the last reset (or alarm)
        self._base_sum = 0.0
        self._base_n = 0
        self._detector = self._make()

    def _make(self) -> Any:
        from river import drift

        if self.kind == "adwin":
            return drift.ADWIN(delta=self.delta)
        if self.kind == "page_hinkley":
            return drift.PageHinkley(min_instances=10, delta=self.delta, threshold=self.threshold, mode="up")
        raise ValueError(f"unknown drift detector {self.kind!r}")

    def reset(self) -> None:
        """Forget everything (new serving model)."""
        self._sum, self._n, self._base_sum, self._base_n = 0.0, 0, 0.0, 0
        self.baseline = float("nan")
        self._detector = self._make()

    def update(self, losses: np.ndarray) -> dict[str, float] | None:
        """Add per-sample losses ``(n,)`` (nats); returns details of the first alarm where the loss
        rose (``after``: how many of ``losses`` came after the sample that completed its chunk)."""
        alarm: dict[str, float] | None = None
        n = len(losses)
        for i, value in enumerate(losses.tolist()):
            self._sum += value
            self._n += 1
            if self._n < self.chunk:
                continue
            mean = self._sum / self._n
            self._sum, self._n = 0.0, 0
            self.chunks += 1
            before = self._estimate()
            self._detector.update(mean)
            if self._detector.drift_detected:
                after = self._estimate() if self.kind == "adwin" else mean
                if after > before:  # ADWIN also fires when the loss drops: not a reason to retrain
                    self.alarms += 1
                    if alarm is None:
                        alarm = {"loss_before": before, "loss_after": after, "chunks": float(self.chunks),
                                 "after": float(n - i - 1)}
                self._base_sum, self._base_n = 0.0, 0
            self._base_sum += mean
            self._base_n += 1
            self.baseline = self._base_sum / self._base_n
        return alarm

    def _estimate(self) -> float:
        if self.kind == "adwin":
            return float(self._detector.estimation)
        return self.baseline


class TrainerCore:
    """Decides when to retrain (see module docstring).

    Args:
        config: trainer settings.
        serving_version: the model currently served (None: nothing yet, the first decision is
            ``initial`` once ``min_samples`` samples are available).
        window_samples: samples already in the window (e.g. after a restart).
    """

    def __init__(self, config: TrainerConfig, serving_version: str | None = None,
                 window_samples: int = 0) -> None:
        self.config = config
        self.serving_version = serving_version
        self.window_samples = min(window_samples, config.window_max_samples)
        self.samples_total = 0
        self.new_samples = 0
        self.newest_ts = float("-inf")
        self.last_retrain_ts: float | None = None
        self.pending_drift: dict[str, float] | None = None
        self._since_alarm = 0
        self.attempts = 0  # retrains finished (accepted or not)
        self.drift: DriftMonitor | None = None
        if config.drift_detector != "none":
            ph = config.drift_detector == "page_hinkley"
            self.drift = DriftMonitor(config.drift_detector, config.drift_chunk,
                                      config.drift_ph_delta if ph else config.drift_delta, config.drift_ph_threshold)

    def on_batch(self, records: Sequence[ErrorRecord]) -> RetrainDecision | None:
        """Account for new labelled records; returns a decision when a retrain is due."""
        cfg = self.config
        n = len(records)
        if n:
            self.samples_total += n
            self.new_samples += n
            self.window_samples = min(self.window_samples + n, cfg.window_max_samples)
            self.newest_ts = max(self.newest_ts, max(r.ts for r in records))
            if self.last_retrain_ts is None:
                self.last_retrain_ts = min(r.ts for r in records)
            if self.pending_drift is not None:
                self._since_alarm += n
            if self.drift is not None:
                self._feed_drift(records)
        return self._decide()

    def _feed_drift(self, records: Sequence[ErrorRecord]) -> None:
        assert self.drift is not None
        mine = [r for r in records if self.serving_version is None or r.model_version == self.serving_version]
        if not mine:
            return
        y = np.fromiter((r.label for r in mine), np.float64, len(mine))
        p = np.clip(np.fromiter((r.base_pred for r in mine), np.float64, len(mine)), _LOSS_EPS, 1 - _LOSS_EPS)
        alarm = self.drift.update(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)))
        if alarm is not None and self.pending_drift is None:
            self._since_alarm = int(alarm.pop("after"))  # samples of this batch after the alarm
            self.pending_drift = alarm

    def _decide(self) -> RetrainDecision | None:
        cfg = self.config
        if self.window_samples < cfg.min_samples:
            return None
        cooled = self.new_samples >= max(cfg.min_samples_between, 1)
        if self.serving_version is None:
            return self._decision("initial", {}) if (self.attempts == 0 or cooled) else None
        if not cooled:
            return None
        if self.pending_drift is not None and self._since_alarm >= cfg.drift_settle_samples:
            return self._decision("drift", dict(self.pending_drift))
        if cfg.retrain_every_samples and self.new_samples >= cfg.retrain_every_samples:
            return self._decision("samples", {})
        if (cfg.retrain_every_s and self.last_retrain_ts is not None
                and self.newest_ts - self.last_retrain_ts >= cfg.retrain_every_s):
            return self._decision("time", {"seconds": self.newest_ts - self.last_retrain_ts})
        return None

    def _decision(self, reason: RetrainReason, detail: dict[str, Any]) -> RetrainDecision:
        ts = self.newest_ts if math.isfinite(self.newest_ts) else 0.0
        return RetrainDecision(reason, self.new_samples, self.samples_total, ts, detail)

    def on_retrained(self, version: str) -> None:
        """This trainer's new version is serving: reset counters and the drift detector."""
        self._reset()
        self.on_model_change(version)

    def on_model_change(self, version: str | None) -> None:
        """Another version serves (e.g. promoted or rolled back by hand): watch its loss afresh."""
        if version == self.serving_version:
            return
        self.serving_version = version
        self.pending_drift = None
        self._since_alarm = 0
        if self.drift is not None:
            self.drift.reset()

    def on_retrain_failed(self) -> None:
        """The retrain was rejected or failed: wait for a fresh cooldown before the next one."""
        self._reset()

    def _reset(self) -> None:
        self.attempts += 1
        self.new_samples = 0
        self.pending_drift = None
        self._since_alarm = 0
        if math.isfinite(self.newest_ts):
            self.last_retrain_ts = self.newest_ts

    def status(self) -> dict[str, Any]:
        """Counters for progress displays and logs."""
        return {"serving_version": self.serving_version, "window_samples": self.window_samples,
                "new_samples": self.new_samples, "samples_total": self.samples_total,
                "drift_pending": self.pending_drift is not None,
                "drift_alarms": self.drift.alarms if self.drift else 0,
                "drift_baseline_logloss": self.drift.baseline if self.drift else float("nan")}


class EventTimeMerge:
    """Merges the partitions of a topic into one stream in (approximate) event-time order.

    A consumer reading a backlog gets one partition's records after another; the drift detector
    needs them in event time. Records are buffered per partition and released in ``ts`` order up
    to the *watermark*: the smallest, over partitions that still have unread records, of the
    newest ``ts`` seen in that partition (partitions at their end do not hold the merge back).
    When more than ``max_buffered`` records wait, the oldest are released anyway.

    Offsets: :meth:`commit_offsets` gives, per partition, the first offset not yet released, so
    committing it never skips a held-back record (records released beyond it are redelivered
    after a crash and dropped by the window's dedupe).
    """

    def __init__(self, max_buffered: int = 20_000) -> None:
        self.max_buffered = max_buffered
        self._buffers: dict[int, list[tuple[float, int, ErrorRecord]]] = {}  # partition -> (ts, offset, rec)
        self._newest: dict[int, float] = {}
        self._next_offset: dict[int, int] = {}

    def add(self, partition: int, records: Sequence[tuple[int, ErrorRecord]], next_offset: int) -> None:
        """Buffer ``(offset, record)`` pairs of one partition; ``next_offset`` = last offset + 1."""
        buf = self._buffers.setdefault(partition, [])
        buf.extend((r.ts, off, r) for off, r in records)
        if records:
            self._newest[partition] = max(self._newest.get(partition, float("-inf")),
                                          max(r.ts for _, r in records))
        self._next_offset[partition] = max(self._next_offset.get(partition, 0), next_offset)

    def buffered(self, partition: int | None = None) -> int:
        """Records held back (in ``partition``, or in all)."""
        if partition is not None:
            return len(self._buffers.get(partition, ()))
        return sum(len(b) for b in self._buffers.values())

    def next_offset(self, partition: int) -> int | None:
        """One past the last offset added for ``partition`` (None if nothing was added)."""
        return self._next_offset.get(partition)

    def release(self, lagging: set[int]) -> list[ErrorRecord]:
        """Records up to the watermark, oldest first. ``lagging``: partitions with unread records."""
        bounds = [self._newest.get(p, float("-inf")) for p in lagging]
        watermark = min(bounds) if bounds else float("inf")
        out: list[tuple[float, int, ErrorRecord]] = []
        for p, buf in self._buffers.items():
            keep = [x for x in buf if x[0] > watermark]
            out.extend(x for x in buf if x[0] <= watermark)
            self._buffers[p] = keep
        excess = self.buffered() - self.max_buffered
        if excess > 0:
            rest = sorted((x[0], x[1], p) for p, buf in self._buffers.items() for x in buf)[:excess]
            cut = {(p, off) for _, off, p in rest}
            for p, buf in self._buffers.items():
                out.extend(x for x in buf if (p, x[1]) in cut)
                self._buffers[p] = [x for x in buf if (p, x[1]) not in cut]
        out.sort(key=lambda x: x[0])
        return [x[2] for x in out]

    def commit_offsets(self) -> dict[int, int]:
        """Per partition, the offset to commit: the first record still held, else the next offset."""
        out = {}
        for p, nxt in self._next_offset.items():
            buf = self._buffers.get(p)
            out[p] = min(off for _, off, _ in buf) if buf else nxt
        return out
