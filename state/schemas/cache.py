"""CORRECT-style error-schema cache: where the slow model keeps failing, distilled online.

A *schema* is a statistical error pattern: a conjunction of one or two predicates
(``genre=horror``, ``age_bucket=18-24 & device=tv``, ``model_version=v7``, ``code[0]=17`` -- a
hidden-space region of the error memory) where the mean residual ``y - p`` differs
significantly from comparable traffic.

Candidates: each error record adds to all its single predicates and (``pairs``) to all pairs
of them, in a weighted Space-Saving summary of ``capacity`` slots (:mod:`reloop.state.schemas.kernels`)
holding decayed count, residual sum, squared-residual sum, label sum and prediction sum.
Weights use *forward decay* as :mod:`reloop.state.error_memory.memory` does (``w = exp((ts - t0) / T)``,
``T = half_life_s / ln 2``, landmark ``t0`` on a ``100 T`` grid set by the largest event time),
so the summary stays additive. Eviction: a new pattern takes the slot with the smallest
``(Space-Saving count, slot)``. The last ``recent_window`` records are kept too (examples,
model versions, overlap checks).

Decisions are taken at *ticks*, event-time grid points ``k * eval_every_s``: just before the
first record that moves the clock (largest event time seen) past one, and on ``advance``.
State and decisions therefore do not depend on how the stream is cut into batches: records
are applied in segments between ticks and landmark moves, and unused predicate ids are freed
at ticks only, so a sequence gives bit-identical state however it is split (tested). The
order of the sequence does matter (Space-Saving eviction, which records a tick sees): the
worker feeds it in event-time order (:mod:`reloop.processors.reorder`). At a tick
(:func:`reloop.state.schemas.kernels.select_schemata`), a single is tested (Welch z) against the
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
are active; schemata rank by impact ``|gap| * support``. A second, short *shift* window
(``shift_half_life_s``) feeds the prediction-shift screen (:mod:`reloop.state.schemas.shift`): a
pattern whose predictions jumped while its residual moved the other way (a broken input) is
promoted on that window's residual test before the main window catches up.

Reads: :meth:`SchemaCache.match` / :attr:`SchemaCache.matcher` (:mod:`reloop.state.schemas.match`)
for the scoring path; persistence in :mod:`reloop.state.schemas.snapshot`.

Not thread-safe: one writer; reads between writes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import msgspec
import numpy as np

from reloop.state.schemas.kernels import (F_OWN, FAST, FIRST, LAST, N_GLOBAL, N_STATS, OWN, SUM_P, SUM_R, SUM_R2, SUM_Y,
                                   index_size, lookup_slots, rebuild_index, space_saving_update, split_key)
from reloop.state.schemas.recent import RecentRecords
from reloop.state.schemas.select import Thresholds, select_schemata
from reloop.state.schemas.shift import shift_screen
from reloop.state.schemas.vocab import PredicateVocab
from reloop.state.schemas.config import SchemaCacheConfig
from reloop.state.schemas.match import SchemaMatcher
from reloop.state.schemas.snapshot import config_of, restore_into, snapshot_of
from reloop.state.schemas.types import Schema, SchemaChange, schema_id_of
from reloop.state.snapshots import check_config, read_npz, write_npz_atomic
from reloop.streams.events import ErrorRecord

__all__ = ["Schema", "SchemaCache", "SchemaCacheConfig", "SchemaChange", "SchemaMatcher", "schema_id_of"]

log = logging.getLogger("reloop.schemas")
_LANDMARK_SPAN = 100.0  # landmark grid step, in units of T


class SchemaCache:
    """Online cache of error schemata over :class:`~reloop.streams.events.ErrorRecord` streams."""

    def __init__(self, config: SchemaCacheConfig | None = None) -> None:
        self.config = cfg = config or SchemaCacheConfig()
        self._decay_time_s = cfg.half_life_s / math.log(2.0)
        self._fast_time_s = cfg.shift_half_life_s / math.log(2.0) if cfg.shift_half_life_s > 0 else 0.0
        self.landmark_fast: float | None = None  # t0f of the shift window, event-time s
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
        self._matcher = SchemaMatcher([], cfg.bias_prior, cfg.max_logit_bias)
        self.rejected = 0  # records with non-finite or out-of-range fields
        self.ticks, self.tick_seconds = 0, 0.0  # evaluations, their CPU time (s, this thread); not state

    # ------------------------------------------------------------------ writes

    def on_batch(self, records: Sequence[ErrorRecord]) -> list[SchemaChange]:
        """Apply error records (in order); returns the changes of the ticks they crossed.

        The records are applied in segments cut where the clock (largest event time seen)
        crosses a tick or a landmark grid line, each segment encoded, weighted and applied
        with the same landmark whatever the batch it came in: the state after a sequence is
        bit-identical however the sequence is split into calls (tested).
        """
        if not records:
            return []
        n = len(records)
        y = np.fromiter((r.label for r in records), np.float64, n)
        if self.config.residual == "base":
            p = np.fromiter((r.base_pred for r in records), np.float64, n)
        else:
            p = np.fromiter((r.comp_pred for r in records), np.float64, n)
        ts = np.fromiter((r.ts for r in records), np.float64, n)
        ok = np.isfinite(ts) & (p >= 0.0) & (p <= 1.0) & ((y == 0.0) | (y == 1.0))
        if not ok.all():
            self.rejected += int(n - ok.sum())
            log.warning("schema_records_rejected", extra={"count": int(n - ok.sum())})
            records = [r for r, keep in zip(records, ok.tolist()) if keep]
            y, p, ts = y[ok], p[ok], ts[ok]
            if not records:
                return []
        step = self.config.eval_every_s
        clock = np.maximum.accumulate(ts)
        if math.isfinite(self.max_ts):
            clock = np.maximum(clock, self.max_ts)
        ticks = np.floor(clock / step)
        first = math.floor(self.max_ts / step) if math.isfinite(self.max_ts) else ticks[0]
        tick_at = set(np.flatnonzero(ticks > np.concatenate(([first], ticks[:-1]))).tolist())
        cuts = set(tick_at)
        spans = [_LANDMARK_SPAN * self._decay_time_s] + ([_LANDMARK_SPAN * self._fast_time_s]
                                                         if self._fast_time_s else [])
        for span in spans:  # landmark moves: weights of a segment all use the same landmark
            cells = np.floor(clock / span)
            before = math.floor(self.max_ts / span) if math.isfinite(self.max_ts) else cells[0]
            cuts.update(np.flatnonzero(cells > np.concatenate(([before], cells[:-1]))).tolist())
        changes: list[SchemaChange] = []
        start = 0
        for j in sorted(cuts):
            self._apply(records[start:j], y[start:j], p[start:j], ts[start:j])
            if j in tick_at:
                changes += self._tick(float(ticks[j]) * step)
            start = j
        self._apply(records[start:], y[start:], p[start:], ts[start:])
        return changes

    def _tick(self, now: float) -> list[SchemaChange]:
        """Decide at tick ``now`` (event time, s), then free predicate ids nothing uses any
        more when the vocabulary is half full (at ticks only: batching must not matter)."""
        t0 = time.thread_time()
        changes = self._evaluate(now)
        if self.vocab.live >= self.vocab.max_predicates // 2:
            freed = self.vocab.collect(self._referenced())
            self._recent.forget(freed)  # recent records must not match a recycled id
        self.ticks, self.tick_seconds = self.ticks + 1, self.tick_seconds + time.thread_time() - t0
        return changes

    def advance(self, now: float) -> list[SchemaChange]:
        """Move the clock to event time ``now`` (s) without records; evaluates a crossed tick."""
        step = self.config.eval_every_s
        if not math.isfinite(self.max_ts) or math.floor(now / step) <= math.floor(self.max_ts / step):
            return []
        self._move_landmark(now)
        return self._tick(math.floor(now / step) * step)

    def _apply(self, records: Sequence[ErrorRecord], y: np.ndarray, p: np.ndarray, ts: np.ndarray) -> None:
        if not records:
            return
        pids = self.vocab.encode(records)
        ids = [r.error_id for r in records]
        self._move_landmark(float(ts.max()))
        w = np.exp((ts - self.landmark) / self._decay_time_s)
        wf = np.exp((ts - self.landmark_fast) / self._fast_time_s) if self._fast_time_s else np.zeros_like(w)
        space_saving_update(np.ascontiguousarray(pids[:, self._first_col:]), self._pairable, w, wf, y - p,
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
        if self._fast_time_s:  # the shift window's landmark, on its own (finer) grid
            span_f = _LANDMARK_SPAN * self._fast_time_s
            new_f = math.floor(self.max_ts / span_f) * span_f
            if self.landmark_fast is not None and new_f > self.landmark_fast:
                self._stats[:, FAST] *= math.exp(-(new_f - self.landmark_fast) / self._fast_time_s)
            if self.landmark_fast is None or new_f > self.landmark_fast:
                self.landmark_fast = new_f

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
        self._cooling = {k: t for k, t in self._cooling.items() if now - t < cfg.cooldown_s}
        if not self._active and self._below_support(stats, scale, now):
            return []  # nothing active and nothing can be chosen: the tests would change nothing
        support = stats[:, OWN] * scale
        th = Thresholds(self.promotion_threshold(int((support >= cfg.min_support).sum())), cfg.z_retire,
                        cfg.min_support, cfg.retire_support, cfg.min_effect, cfg.max_schemata, cfg.var_floor,
                        cfg.explained_fraction)
        active = np.isin(keys, np.fromiter(self._active, np.int64, len(self._active)))
        blocked = np.isin(keys, np.fromiter(self._cooling, np.int64, len(self._cooling)))
        memo: dict = {}

        key_of = keys.tolist()

        def explained(checks: list[tuple[int, list[int], float, bool]]) -> list[int]:
            slot_of = {key_of[o]: o for _, others, _, _ in checks for o in others}
            by = self._recent.explained_many(
                [(key_of[s], [key_of[o] for o in others], gap, cfg.explained_fraction * (0.5 if is_active else 1.0))
                 for s, others, gap, is_active in checks], self.vocab.col_arr, now, self._decay_time_s, memo)
            return [slot_of.get(b, -1) for b in by]

        def lookup(q: np.ndarray) -> np.ndarray:
            return lookup_slots(q, self._keys, self._index, self._shift)

        screen = None
        if self._fast_time_s and self.landmark_fast is not None:
            scale_f = math.exp(min(-(now - self.landmark_fast) / self._fast_time_s, 300.0))
            screen = shift_screen(stats, keys, self.vocab.col_arr, lookup, scale_f, active,
                                  min_support=cfg.min_support, retire_support=cfg.retire_support,
                                  min_effect=cfg.min_effect, shift_z=cfg.shift_z, shift_alpha=cfg.shift_alpha,
                                  shift_z_min=cfg.shift_z_min, z_retire=cfg.z_retire, var_floor=cfg.var_floor,
                                  label_z=self.promotion_threshold if cfg.label_shift else None, scale=scale,
                                  fast_min_support=cfg.min_support * cfg.shift_half_life_s / cfg.half_life_s)
        chosen, why = select_schemata(stats[:, [OWN, SUM_R, SUM_R2]], keys, self.vocab.col_arr, lookup,
                                      scale, active, th, explained, blocked, screen)
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
                                                       "z": z, "gap": gap, "event_ts": now})
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
                                               "reason": schema.reason, "event_ts": now})
        self._active = kept
        self._reindex()
        return changes

    def _below_support(self, stats: np.ndarray, scale: float, now: float) -> bool:
        """No tracked pattern has ``min_support`` decayed records on the main window, nor on the
        fast one (the shift screen's floor): none can be a candidate (sparse or idle traffic)."""
        if float(stats[:, OWN].max()) * scale >= self.config.min_support:
            return False
        if not self._fast_time_s or self.landmark_fast is None:
            return True
        scale_f = math.exp(min(-(now - self.landmark_fast) / self._fast_time_s, 300.0))
        return float(stats[:, F_OWN].max()) * scale_f < self.config.min_support

    def _signature(self, key: int) -> list[str]:
        return sorted(self.vocab.strings[pid] for pid in split_key(key))

    def _reindex(self) -> None:
        self._matcher = SchemaMatcher(self.schemas(), self.config.bias_prior, self.config.max_logit_bias)

    # ------------------------------------------------------------------ reads

    def schemas(self, include_resolved: bool = False) -> list[Schema]:
        """Active schemata by decreasing impact (then recently resolved ones, newest first)."""
        active = sorted(self._active.values(), key=lambda s: (-s.impact, s.schema_id))
        return active + (self._history[::-1] if include_resolved else [])

    @property
    def matcher(self) -> SchemaMatcher:
        """Column-wise matcher over the active schemata (rebuilt at every decision tick)."""
        return self._matcher

    def match(self, features: Mapping[str, str | float], model_version: str,
              codes: Sequence[int] = ()) -> list[Schema]:
        """Active schemata whose every predicate holds for this sample, by decreasing impact."""
        c = np.asarray([list(codes)], dtype=np.int64) if len(codes) else None
        hit = self._matcher.matrix([features], model_version, c)[0]
        return [s for s, h in zip(self._matcher.schemata, hit.tolist()) if h]

    def bias_for(self, features: Mapping[str, str | float], model_version: str, codes: Sequence[int] = ()) -> float:
        """Additive correction to ``p`` (probability units) from the matching schemata.

        ``sum_j calibration_gap_j * n_j / (n_j + bias_prior)`` over matching schemata, skipping
        one whose signature is contained in another matching one (the more specific wins);
        clipped to [-1, 1]. The scorer applies the logit form instead
        (:class:`reloop.state.schemas.match.SchemaMatcher`).
        """
        return self._matcher.prob_bias(features, model_version, codes)

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
        """Plain arrays (text as 0-d str arrays of JSON); no pickle. See :mod:`reloop.state.schemas.snapshot`."""
        return snapshot_of(self)

    @classmethod
    def restore(cls, snap: Mapping[str, np.ndarray], config: SchemaCacheConfig | None = None) -> SchemaCache:
        """Rebuild a cache from :meth:`snapshot` output; ValueError if it is malformed.

        ``config``: the configuration the caller expects; a snapshot taken under another is
        refused (ValueError naming the fields, :func:`reloop.state.snapshots.check_config`).
        """
        found = config_of(snap)
        check_config(config, found, "schema-cache")
        return restore_into(cls(found), snap)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`snapshot` to ``path`` as ``.npz``, atomically (see :mod:`reloop.state.snapshots`)."""
        write_npz_atomic(path, self.snapshot())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SchemaCache:
        """Read a cache written by :meth:`save` (``allow_pickle=False``)."""
        return cls.restore(read_npz(path))
