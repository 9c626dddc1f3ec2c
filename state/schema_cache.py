"""CORRECT-style error-schema cache: where the slow model keeps failing, distilled online.

A *schema* is a statistical error pattern: a conjunction of one or two predicates
(``genre=horror``, ``age_bucket=18-24 & device=tv``, ``model_version=v7``, ``code[0]=17`` -- a
hidden-space region of the error memory) where the mean residual ``y - p`` differs
significantly from comparable traffic.

Candidates: each error record adds to all its single predicates and (``pairs``) to all pairs
of them, in a weighted Space-Saving summary of ``capacity`` slots (:mod:`state._schema_kernels`)
holding decayed count, residual sum, squared-residual sum, label sum and prediction sum.
Weights use *forward decay* as :mod:`state.error_memory` does (``w = exp((ts - t0) / T)``,
``T = half_life_s / ln 2``, landmark ``t0`` on a ``100 T`` grid set by the largest event time),
so the summary stays additive. Eviction: a new pattern takes the slot with the smallest
``(Space-Saving count, slot)``. The last ``recent_window`` records are kept too (examples,
model versions, overlap checks).

Decisions are taken at *ticks*, event-time grid points ``k * eval_every_s``: just before the
first record that moves the clock (largest event time seen) past one, and on ``advance``.
State and decisions therefore do not depend on how the stream is cut into batches (up to
float rounding when a landmark move falls inside a batch). At a tick
(:func:`state._schema_kernels.select_schemata`), a single is tested (Welch z) against the
other values of its column, a pair against the rest of each parent; patterns are chosen
greedily, and a pattern is promoted when it has ``min_support``, ``|z| >=`` the Bonferroni
threshold ``max(z_min, Phi^-1(1 - alpha / 2m))`` (``m`` patterns with ``min_support``),
``|gap| >= min_effect`` and its own mean error is at least ``min_effect`` that way, unless it
is explained: a single by its chosen child pairs (``age_bucket=55+`` when only ``55+ &
tv`` fails), any pattern by chosen schemata of other columns whose records carry its excess
(``segment=s1`` when its heavy users are the failing ``55+ & tv``). An active schema stays
while it passes the looser retire thresholds (``retire_support``, ``z_retire``, half the
effect), and has passed the promotion ones within ``hold_s``: hysteresis. A schema not
chosen is *resolved* (reason ``support``, ``significance``, ``weak``, ``untracked``, ``evicted``
or ``explained by ...``) and cannot come back for ``cooldown_s``. At most ``max_schemata``
are active; schemata rank by impact ``|gap| * support``.

Not thread-safe: one writer; reads between writes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Literal

import msgspec
import numpy as np

from state._schema_kernels import (FIRST, LAST, N_GLOBAL, N_STATS, OWN, SUM_P, SUM_R, SUM_R2, SUM_Y,
                                   PredicateVocab, RecentRecords, Thresholds, index_size, lookup_slots,
                                   rebuild_index, select_schemata, space_saving_update, split_key)
from state.snapshots import read_npz, write_npz_atomic
from streams.events import ErrorRecord

__all__ = ["Schema", "SchemaCache", "SchemaCacheConfig", "SchemaChange", "schema_id_of"]

log = logging.getLogger("reloop.schemas")
SNAPSHOT_FORMAT = 1
_LANDMARK_SPAN = 100.0  # landmark grid step, in units of T


class SchemaCacheConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Configuration of a :class:`SchemaCache` (validated on construction and decode).

    Attributes:
        capacity: candidate patterns tracked (Space-Saving slots, >= 2), ~90 bytes each.
        max_schemata: most active schemata at once (>= 1); weakest beyond are dropped.
        min_support: decayed records a pattern needs to be promoted.
        retire_support: below this decayed support an active schema is resolved
            (``<= min_support``: hysteresis).
        alpha: family-wise probability of a false promotion per evaluation; the promotion
            threshold is Bonferroni over the patterns tested, ``Phi^-1(1 - alpha / 2m)``.
        z_min: floor of the promotion threshold (guards small ``m`` and non-normal tails).
        z_retire: an active schema is resolved when ``|z|`` falls below this (< promotion).
        min_effect: ``|calibration_gap|`` and same-signed slice mean error (probability units)
            needed to promote; half of it to stay active.
        half_life_s: event-time seconds after which a record weighs half. Shorter windows
            detect faster (fewer affected events before the old, clean history is outweighed)
            and resolve faster, but need ``rate * half_life_s / ln 2 >= min_support``.
        eval_every_s: event-time seconds between evaluation ticks.
        features: names of the categorical features used as predicates; None = every
            ``str``-valued feature seen (up to ``max_features`` names). Dense features never
            are predicates.
        model_version_predicate: use ``model_version=<v>`` as a predicate.
        code_tables: error-memory codes used as predicates ``code[k]=<bucket>``, k < this.
        pairs: also track conjunctions of two predicates.
        pair_codes: let code predicates take part in pairs (many more candidates).
        max_features: feature-name columns when ``features`` is None.
        max_predicates: live ``name=value`` predicates at most (>= 2 capacity + 8); when full,
            those no tracked pattern or schema uses are freed, and if none is, new values are
            ignored until the next batch.
        residual: ``base`` (slow model, ``y - base_pred``) or ``compensated`` (``comp_pred``).
        max_examples: example error ids kept per schema.
        recent_window: recent records kept (predicate ids, residual, time, error id; ~150
            bytes each) for examples, model versions and the overlap check.
        explained_fraction: a pattern overlapping chosen schemata of other columns is
            explained when, without their records, less than this fraction of its recent
            excess error is left; a single is explained by its chosen child pairs when less
            than half of it (and no significant rest) is left. Active schemata: half of these.
        publish_every_s: an active schema yields an ``updated`` change at most this often.
        cooldown_s: a resolved schema cannot be promoted again for this many event seconds
            (stops flapping while a fault's statistics decay).
        hold_s: an active schema that has not passed the promotion thresholds (only the
            retire ones) for this many event seconds is resolved (reason ``weak``).
        bias_prior: shrinkage of :meth:`SchemaCache.bias_for`: weight ``n / (n + prior)``.
        var_floor: lower bound of residual variances in the z statistic.
    """

    capacity: int = 4096
    max_schemata: int = 32
    min_support: float = 200.0
    retire_support: float = 50.0
    alpha: float = 1e-3
    z_min: float = 4.0
    z_retire: float = 2.5
    min_effect: float = 0.02
    half_life_s: float = 10.0
    eval_every_s: float = 0.25
    features: tuple[str, ...] | None = None
    model_version_predicate: bool = True
    code_tables: int = 0
    pairs: bool = True
    pair_codes: bool = False
    max_features: int = 16
    max_predicates: int = 65536
    residual: Literal["base", "compensated"] = "base"
    max_examples: int = 8
    recent_window: int = 16384
    explained_fraction: float = 0.5
    publish_every_s: float = 30.0
    cooldown_s: float = 30.0
    hold_s: float = 15.0
    bias_prior: float = 100.0
    var_floor: float = 1e-4

    def __post_init__(self) -> None:
        pos = ("half_life_s", "eval_every_s", "alpha", "z_min", "var_floor")
        checks = [(self.capacity >= 2, "capacity must be >= 2"),
                  (self.max_schemata >= 1, "max_schemata must be >= 1"),
                  (0.0 <= self.retire_support <= self.min_support, "need 0 <= retire_support <= min_support"),
                  (self.alpha < 1.0, "alpha must be < 1"),
                  (0.0 <= self.z_retire <= self.z_min, "need 0 <= z_retire <= z_min"),
                  (self.min_effect >= 0.0 and self.bias_prior >= 0.0, "min_effect, bias_prior must be >= 0"),
                  (self.code_tables >= 0 and self.max_features >= 1, "code_tables >= 0, max_features >= 1"),
                  (self.max_predicates >= 2 * self.capacity + 8, "max_predicates must be >= 2 capacity + 8"),
                  (self.max_examples >= 0 and self.recent_window >= 1, "bad example settings"),
                  (0.0 <= self.explained_fraction <= 1.0, "explained_fraction must be in [0, 1]"),
                  (min(self.publish_every_s, self.cooldown_s, self.hold_s) >= 0.0, "negative publish/cooldown/hold"),
                  *((math.isfinite(getattr(self, a)) and getattr(self, a) > 0, f"{a} must be > 0") for a in pos)]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Schema(msgspec.Struct, frozen=True, kw_only=True):
    """One error schema (immutable; every change is a new object).

    Attributes:
        schema_id: 16 hex chars of blake2b of the signature (stable across runs/replicas).
        signature: sorted predicates ``name=value``, one or two.
        direction: ``over`` (the model predicts too high here) or ``under``.
        mean_error: decayed mean of ``y - p`` in the slice (probability units).
        calibration_gap: ``mean_error`` minus the mean error of comparable traffic (a
            single: the other values of its column; a pair: the rest of a parent).
        observed_rate / predicted_rate: decayed means of ``y`` and ``p`` in the slice.
        support: decayed number of error records in the slice.
        z: Welch z of the gap (single: against its column's other values; pair: the weaker
            of the tests against each parent's rest).
        impact: ``|calibration_gap| * support``, the decayed number of excess errors; the
            ranking of schemata (largest first).
        first_seen: event time (s) it was promoted; last_seen: time of its latest record;
        tracked_since: time from which its statistics are exact (candidate slot taken).
        model_versions: model versions seen among its recent records.
        example_error_ids: recent error ids in the slice that err in ``direction``.
        state: ``active`` or ``resolved``; reason: why it was resolved.
    """

    schema_id: str
    signature: list[str]
    direction: Literal["over", "under"]
    mean_error: float
    calibration_gap: float
    observed_rate: float
    predicted_rate: float
    support: float
    z: float
    impact: float
    first_seen: float
    last_seen: float
    tracked_since: float
    model_versions: list[str] = []
    example_error_ids: list[str] = []
    state: Literal["active", "resolved"] = "active"
    reason: str = ""


class SchemaChange(msgspec.Struct, frozen=True, kw_only=True):
    """A decision taken at evaluation tick ``ts`` (event time, s)."""

    kind: Literal["promoted", "updated", "resolved"]
    ts: float
    schema: Schema


def schema_id_of(signature: Sequence[str]) -> str:
    """Stable id of a signature: blake2b (8 bytes) of the sorted predicates joined by `` & ``."""
    text = " & ".join(sorted(signature)).encode("utf-8")
    return hashlib.blake2b(text, digest_size=8).hexdigest()


class SchemaCache:
    """Online cache of error schemata over :class:`~streams.events.ErrorRecord` streams."""

    def __init__(self, config: SchemaCacheConfig | None = None) -> None:
        self.config = cfg = config or SchemaCacheConfig()
        self._decay_time_s = cfg.half_life_s / math.log(2.0)
        size = index_size(cfg.capacity)
        self._shift = 64 - (size.bit_length() - 1)
        self._keys = np.full(cfg.capacity, -1, np.int64)
        self._stats = np.zeros((cfg.capacity, N_STATS))
        self._times = np.zeros((cfg.capacity, 2))
        self._heap = np.zeros(cfg.capacity, np.int32)
        self._heap_pos = np.zeros(cfg.capacity, np.int32)
        self._index = np.full(size, -1, np.int32)
        self._meta = np.zeros(2, np.int64)  # slots used, evictions
        self._glob = np.zeros(N_GLOBAL)
        self.landmark: float | None = None  # t0, event-time s
        self.max_ts = -math.inf  # the clock: largest event time seen, s
        self.vocab = PredicateVocab(code_tables=cfg.code_tables, features=cfg.features,
                                    max_features=cfg.max_features, max_predicates=cfg.max_predicates)
        width = self.vocab.width
        self._first_col = 0 if cfg.model_version_predicate else 1
        pairable = np.full(width, cfg.pairs)
        pairable[1:1 + cfg.code_tables] = cfg.pairs and cfg.pair_codes
        self._pairable = np.ascontiguousarray(pairable[self._first_col:])
        self._recent = RecentRecords(cfg.recent_window, width)
        self._active: dict[int, Schema] = {}  # pattern key -> schema
        self._history: list[Schema] = []  # recently resolved, newest last
        self._published: dict[str, float] = {}  # schema id -> last change time
        self._cooling: dict[int, float] = {}  # pattern key -> event time it was resolved
        self._strong: dict[int, float] = {}  # active pattern key -> last time it passed promotion
        self._by_pred: dict[str, list[Schema]] = {}
        self.rejected = 0  # records with non-finite or out-of-range fields

    # ------------------------------------------------------------------ writes

    def on_batch(self, records: Sequence[ErrorRecord]) -> list[SchemaChange]:
        """Apply error records (in order); returns the changes of the ticks they crossed."""
        if not records:
            return []
        n = len(records)
        pids = self.vocab.encode(records, self._referenced)
        self._recent.forget(self.vocab.freed)  # recent records must not match a recycled id
        y = np.fromiter((r.label for r in records), np.float64, n)
        if self.config.residual == "base":
            p = np.fromiter((r.base_pred for r in records), np.float64, n)
        else:
            p = np.fromiter((r.comp_pred for r in records), np.float64, n)
        ts = np.fromiter((r.ts for r in records), np.float64, n)
        ids = [r.error_id for r in records]
        ok = np.isfinite(ts) & (p >= 0.0) & (p <= 1.0) & ((y == 0.0) | (y == 1.0))
        if not ok.all():
            self.rejected += int(n - ok.sum())
            log.warning("schema_records_rejected", extra={"count": int(n - ok.sum())})
            pids, y, p, ts = pids[ok], y[ok], p[ok], ts[ok]
            ids = [e for e, keep in zip(ids, ok.tolist()) if keep]
            if not ids:
                return []
        step = self.config.eval_every_s
        clock = np.maximum.accumulate(ts)
        if math.isfinite(self.max_ts):
            clock = np.maximum(clock, self.max_ts)
        ticks = np.floor(clock / step)
        first = math.floor(self.max_ts / step) if math.isfinite(self.max_ts) else ticks[0]
        cuts = np.flatnonzero(ticks > np.concatenate(([first], ticks[:-1]))).tolist()
        changes: list[SchemaChange] = []
        start = 0
        for j in cuts:
            self._apply(pids[start:j], y[start:j], p[start:j], ts[start:j], ids[start:j])
            changes += self._evaluate(float(ticks[j]) * step)
            start = j
        self._apply(pids[start:], y[start:], p[start:], ts[start:], ids[start:])
        return changes

    def advance(self, now: float) -> list[SchemaChange]:
        """Move the clock to event time ``now`` (s) without records; evaluates a crossed tick."""
        step = self.config.eval_every_s
        if not math.isfinite(self.max_ts) or math.floor(now / step) <= math.floor(self.max_ts / step):
            return []
        self._move_landmark(now)
        return self._evaluate(math.floor(now / step) * step)

    def _apply(self, pids: np.ndarray, y: np.ndarray, p: np.ndarray, ts: np.ndarray, ids: list[str]) -> None:
        if not ids:
            return
        self._move_landmark(float(ts.max()))
        w = np.exp((ts - self.landmark) / self._decay_time_s)
        space_saving_update(np.ascontiguousarray(pids[:, self._first_col:]), self._pairable, w, y - p,
                            y, p, ts, self._keys, self._stats, self._times, self._heap, self._heap_pos,
                            self._index, self._meta, self._glob, self._shift)
        self._recent.append(pids, y - p, ts, ids)

    def _move_landmark(self, ts_max: float) -> None:
        self.max_ts = max(self.max_ts, ts_max)
        span = _LANDMARK_SPAN * self._decay_time_s
        new = math.floor(self.max_ts / span) * span
        if self.landmark is not None and new > self.landmark:
            factor = math.exp(-(new - self.landmark) / self._decay_time_s)
            self._stats *= factor
            self._glob *= factor
            self._rebuild()
        if self.landmark is None or new > self.landmark:
            self.landmark = new

    def _rebuild(self) -> None:
        rebuild_index(self._keys, self._stats, int(self._meta[0]), self._index, self._heap, self._heap_pos,
                      self._shift)

    def _referenced(self) -> np.ndarray:
        keys = self._keys[: int(self._meta[0])]
        active = np.fromiter(self._active, np.int64, len(self._active))
        both = np.concatenate((keys, active))
        return np.concatenate((both >> 32, both & 0xFFFFFFFF))

    # ------------------------------------------------------------------ decisions

    def promotion_threshold(self, tested: int) -> float:
        """|z| needed to promote when ``tested`` patterns have ``min_support`` (Bonferroni)."""
        cfg = self.config
        return max(cfg.z_min, NormalDist().inv_cdf(1.0 - cfg.alpha / (2.0 * max(1, tested))))

    def _evaluate(self, now: float) -> list[SchemaChange]:
        cfg, n_used = self.config, int(self._meta[0])
        if self.landmark is None or n_used == 0:
            return []
        scale = math.exp(min(-(now - self.landmark) / self._decay_time_s, 300.0))
        stats, keys = self._stats[:n_used], self._keys[:n_used]
        support = stats[:, OWN] * scale
        th = Thresholds(self.promotion_threshold(int((support >= cfg.min_support).sum())), cfg.z_retire,
                        cfg.min_support, cfg.retire_support, cfg.min_effect, cfg.max_schemata, cfg.var_floor,
                        cfg.explained_fraction)
        active = np.isin(keys, np.fromiter(self._active, np.int64, len(self._active)))
        self._cooling = {k: t for k, t in self._cooling.items() if now - t < cfg.cooldown_s}
        blocked = np.isin(keys, np.fromiter(self._cooling, np.int64, len(self._cooling)))
        memo: dict = {}

        def explained(s: int, others: list[int], gap: float, is_active: bool) -> int:
            frac = cfg.explained_fraction * (0.5 if is_active else 1.0)
            slot_of = {int(keys[o]): o for o in others}
            by = self._recent.explained(int(keys[s]), list(slot_of), gap, frac, self.vocab.col_arr, now,
                                        self._decay_time_s, memo)
            return slot_of.get(by, -1)

        chosen, why = select_schemata(stats[:, [OWN, SUM_R, SUM_R2]], keys, self.vocab.col_arr,
                                      lambda q: lookup_slots(q, self._keys, self._index, self._shift),
                                      scale, active, th, explained, blocked)
        reasons = {int(keys[s]): (r if isinstance(r, str) else "explained by " + " & ".join(
            self._signature(int(keys[r])))) for s, r in why.items()}
        changes: list[SchemaChange] = []
        kept: dict[int, Schema] = {}
        for s, z, gap, strong in chosen:
            key = int(keys[s])
            old = self._active.get(key)
            if strong or old is None:
                self._strong[key] = now
            elif now - self._strong.get(key, now) > cfg.hold_s:
                reasons[key] = "weak"
                continue
            signature = old.signature if old else self._signature(key)
            st = self._stats[s]
            schema = Schema(
                schema_id=old.schema_id if old else schema_id_of(signature), signature=signature,
                direction="over" if gap < 0 else "under", mean_error=float(st[SUM_R] / st[OWN]),
                calibration_gap=gap, observed_rate=float(st[SUM_Y] / st[OWN]),
                predicted_rate=float(st[SUM_P] / st[OWN]), support=float(support[s]), z=z,
                impact=abs(gap) * float(support[s]),
                first_seen=old.first_seen if old else now, last_seen=float(self._times[s, LAST]),
                tracked_since=float(self._times[s, FIRST]), model_versions=old.model_versions if old else [],
                example_error_ids=old.example_error_ids if old else [])
            if old is None or now - self._published.get(schema.schema_id, -math.inf) >= cfg.publish_every_s:
                examples, version_ids = self._recent.examples(key, schema.direction, cfg.max_examples)
                versions = {self.vocab.strings[v].partition("=")[2] for v in version_ids}
                schema = msgspec.structs.replace(
                    schema, example_error_ids=examples or schema.example_error_ids,
                    model_versions=sorted(set(schema.model_versions) | versions)[-8:])
                self._published[schema.schema_id] = now
                changes.append(SchemaChange(kind="updated" if old else "promoted", ts=now, schema=schema))
                if old is None:
                    log.info("schema_promoted", extra={"schema_id": schema.schema_id, "signature": signature,
                                                       "z": z, "gap": gap, "ts": now})
            kept[key] = schema
        for key, old in self._active.items():
            if key in kept:
                continue
            schema = msgspec.structs.replace(old, state="resolved", reason=reasons.get(key, "untracked"))
            self._published.pop(old.schema_id, None)
            self._strong.pop(key, None)
            self._cooling[key] = now
            self._history = [*self._history, schema][-cfg.max_schemata:]
            changes.append(SchemaChange(kind="resolved", ts=now, schema=schema))
            log.info("schema_resolved", extra={"schema_id": old.schema_id, "signature": old.signature,
                                               "reason": schema.reason, "ts": now})
        self._active = kept
        self._reindex()
        return changes

    def _signature(self, key: int) -> list[str]:
        return sorted(self.vocab.strings[pid] for pid in split_key(key))

    def _reindex(self) -> None:
        self._by_pred = {}
        for schema in self._active.values():
            for pred in schema.signature:
                self._by_pred.setdefault(pred, []).append(schema)

    # ------------------------------------------------------------------ reads

    def schemas(self, include_resolved: bool = False) -> list[Schema]:
        """Active schemata by decreasing impact (then recently resolved ones, newest first)."""
        active = sorted(self._active.values(), key=lambda s: (-s.impact, s.schema_id))
        return active + (self._history[::-1] if include_resolved else [])

    def match(self, features: Mapping[str, str | float], model_version: str,
              codes: Sequence[int] = ()) -> list[Schema]:
        """Active schemata whose every predicate holds for this sample, by decreasing impact."""
        preds = [f"model_version={model_version}", *(f"{k}={v}" for k, v in features.items() if isinstance(v, str)),
                 *(f"code[{k}]={c}" for k, c in enumerate(codes[: self.config.code_tables]))]
        hits: dict[str, int] = {}
        found: dict[str, Schema] = {}
        for pred in preds:
            for schema in self._by_pred.get(pred, ()):
                hits[schema.schema_id] = hits.get(schema.schema_id, 0) + 1
                found[schema.schema_id] = schema
        out = [s for sid, s in found.items() if hits[sid] == len(s.signature)]
        return sorted(out, key=lambda s: (-s.impact, s.schema_id))

    def bias_for(self, features: Mapping[str, str | float], model_version: str, codes: Sequence[int] = ()) -> float:
        """Additive correction to ``p`` (probability units) from the matching schemata.

        ``sum_j calibration_gap_j * n_j / (n_j + bias_prior)`` over matching schemata, skipping
        one whose signature is contained in another matching one (the more specific wins);
        clipped to [-1, 1]. Meant for samples whose error-memory buckets are cold.
        """
        matched = self.match(features, model_version, codes)
        sets = [set(s.signature) for s in matched]
        total = sum(s.calibration_gap * s.support / (s.support + self.config.bias_prior)
                    for s, sig in zip(matched, sets) if not any(sig < other for other in sets))
        return float(min(1.0, max(-1.0, total)))

    @property
    def nbytes(self) -> int:
        """Bytes held: arrays exactly, Python strings/containers approximately (getsizeof)."""
        arrays = (self._keys, self._stats, self._times, self._heap, self._heap_pos, self._index,
                  self._meta, self._glob, self.vocab.col_arr)
        objects = [self.vocab.strings, self.vocab.cols, *self.vocab.by_col]
        size = sum(a.nbytes for a in arrays) + sum(sys.getsizeof(o) for o in objects) + self._recent.nbytes
        size += sum(sys.getsizeof(s) for s in self.vocab.strings)
        return int(size + len(msgspec.json.encode([*self._active.values(), *self._history])))

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        """Plain arrays (text as 0-d str arrays of JSON); no pickle. See :meth:`restore`."""
        n_used = int(self._meta[0])
        text = {"config": self.config, "vocab": self.vocab.state(), "ring_ids": self._recent.ids,
                "active": list(self._active.items()), "history": self._history, "published": self._published,
                "cooling": list(self._cooling.items()), "strong": list(self._strong.items())}
        arrays = {"keys": self._keys[:n_used], "stats": self._stats[:n_used], "times": self._times[:n_used],
                  "meta": self._meta, "glob": self._glob, **self._recent.arrays()}
        scalars = [SNAPSHOT_FORMAT, math.nan if self.landmark is None else self.landmark, self.max_ts,
                   self._recent.count, self.rejected]
        return {"scalars": np.array(scalars, np.float64), **{k: v.copy() for k, v in arrays.items()},
                **{k: np.array(msgspec.json.encode(v).decode()) for k, v in text.items()}}

    @classmethod
    def restore(cls, snap: Mapping[str, np.ndarray]) -> SchemaCache:
        """Rebuild a cache from :meth:`snapshot` output; ValueError if it is malformed."""
        try:
            fmt, landmark, max_ts, ring_n, rejected = np.asarray(snap["scalars"], np.float64).tolist()
            if int(fmt) != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported schema-cache snapshot format {fmt}")
            text = {k: msgspec.json.decode(str(np.asarray(snap[k])[()]))
                    for k in ("vocab", "ring_ids", "active", "history", "published", "cooling", "strong")}
            cache = cls(msgspec.json.decode(str(np.asarray(snap["config"])[()]), type=SchemaCacheConfig))
            n_used = int(np.asarray(snap["meta"])[0])
            for name in ("keys", "stats", "times"):
                getattr(cache, f"_{name}")[:n_used] = snap[name]
            for name in ("meta", "glob"):
                getattr(cache, f"_{name}")[...] = snap[name]
            for name, arr in cache._recent.arrays().items():
                arr[...] = snap[name]
            cache.vocab.load_state(text["vocab"])
            cache._active = {int(k): msgspec.convert(v, Schema) for k, v in text["active"]}
            cache._history = [msgspec.convert(v, Schema) for v in text["history"]]
        except (KeyError, TypeError, ValueError, IndexError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"bad schema-cache snapshot: {exc}") from exc
        if len(text["ring_ids"]) != cache.config.recent_window:
            raise ValueError("bad schema-cache snapshot: example ring has the wrong size")
        cache._recent.ids, cache._published = list(text["ring_ids"]), dict(text["published"])
        cache._cooling = {int(k): float(t) for k, t in text["cooling"]}
        cache._strong = {int(k): float(t) for k, t in text["strong"]}
        cache.landmark = None if math.isnan(landmark) else landmark
        cache.max_ts, cache._recent.count, cache.rejected = max_ts, int(ring_n), int(rejected)
        cache._rebuild()
        cache._reindex()
        return cache

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`snapshot` to ``path`` as ``.npz``, atomically (see :mod:`state.snapshots`)."""
        write_npz_atomic(path, self.snapshot())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SchemaCache:
        """Read a cache written by :meth:`save` (``allow_pickle=False``)."""
        return cls.restore(read_npz(path))
