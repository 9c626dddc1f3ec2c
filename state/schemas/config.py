"""Configuration of the error-schema cache (:class:`SchemaCacheConfig`)."""

from __future__ import annotations

import math
from typing import Literal

import msgspec

__all__ = ["SchemaCacheConfig"]


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
        shift_half_life_s: half-life of the short *shift* window (0 = no shift screen). A
            pattern whose mean prediction on it jumped (``|z| >= shift_z``) while its residual
            moved the other way is promoted on that window's residual test (see
            :mod:`reloop.state.schemas.shift`): fast detection of broken inputs.
        shift_z: |z| of the prediction shift (fast vs main window mean) that opens the screen.
        shift_alpha: family-wise error of the screened residual test (Bonferroni over the
            patterns whose predictions shifted).
        shift_z_min: floor of that test's |z| threshold.
        label_shift: also screen *label* shifts (predictions steady, residual moved): a
            pattern with ``min_support`` on the main window and ``min_support *
            shift_half_life_s / half_life_s`` decayed records on the fast one, whose fast-window
            residual test reaches the promotion threshold (Bonferroni over the patterns with
            that fast support) and whose main-window test agrees at ``|z| >= z_retire``, is a
            candidate before the main window's clean history is outweighed (needs the shift
            window; :mod:`reloop.state.schemas.shift`).
        features: names of the categorical features used as predicates; None = every
            ``str``-valued feature seen (up to ``max_features`` names). Dense features never
            are predicates.
        model_version_predicate: use ``model_version=<v>`` as a predicate.
        code_tables: error-memory codes used as predicates ``code[k]=<bucket>``, k < this.
        pairs: also track conjunctions of two predicates.
        pair_codes: let code predicates take part in pairs (many more candidates).
        max_features: feature-name columns when ``features`` is None.
        max_predicates: live ``name=value`` predicates at most (>= 2 capacity + 8); at an
            evaluation tick with at least half of them live, those no tracked pattern or
            schema uses are freed; when full, new values are ignored until then.
        residual: ``base`` (slow model, ``y - base_pred``) or ``compensated`` (``comp_pred``).
        max_examples: example error ids kept per schema.
        recent_window: recent records kept (predicate ids, residual, time, error id; ~150
            bytes each) for examples, model versions and the overlap check (at most 2**22).
        explained_fraction: a pattern overlapping chosen schemata of other columns is
            explained when, without their records, less than this fraction of its recent
            excess error is left; a single is explained by its chosen child pairs when less
            than half of it (and no significant rest) is left. Active schemata: half of these.
        publish_every_s: an active schema yields an ``updated`` change at most this often.
        cooldown_s: a resolved schema cannot be promoted again for this many event seconds
            (stops flapping while a fault's statistics decay).
        hold_s: an active schema that has not passed the promotion thresholds (only the
            retire ones) for this many event seconds is resolved (reason ``weak``).
        bias_prior: shrinkage of the schema-level bias, in decayed records: a schema of
            support ``n`` applies ``n / (n + prior)`` of its correction.
        bias_when_cold: ``ScoringCore`` applies the schema-level bias (a logit shift, see
            :mod:`reloop.state.schemas.match`) to candidates whose error-memory evidence is below
            ``cold_evidence``; recommendations carry matching schema ids either way.
        cold_evidence: evidence (mean decayed error-memory bucket count, as in
            ``ScoredItem.evidence``) below which a candidate is cold (>= 0).
        max_logit_bias: bound of one candidate's total schema logit shift (> 0).
        var_floor: lower bound of residual variances in the z statistic.
        reorder_lateness_s: the worker feeds the cache through an event-time reorder buffer
            (:mod:`reloop.processors.reorder`): records up to this many event seconds behind their
            ``errors`` partition's newest are ordered by their own time, later ones where their
            partition's order puts them; also the delay added before release (>= 0). Records
            carry their prediction's time (error records v2), so a partition is in time order
            except after a request that resolved before its window closed (every candidate
            labelled), which runs ahead by less than ``worker.attribution_window_s``: 0 keeps
            the main job's stream (clicks only) unclamped; set it to that window (+ one batch)
            when clients send impressions, to make the order a function of the set alone.
        reorder_idle_s: an ``errors`` partition lagging the leading one by more than this
            many event seconds is not waited for (0 = always wait; then the order never
            depends on arrival, but a dead partition stops the cache until ``reorder_max_held``).
        reorder_max_held: most records the reorder buffer holds; beyond, the oldest are
            released (~1-2 KB each).
        reorder_partitions: ``errors`` partitions to wait for (0 = the cluster's count, as the worker
            reads it; replay: ``kafka.partitions``).
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
    shift_half_life_s: float = 2.0
    shift_z: float = 6.0
    shift_alpha: float = 0.01
    shift_z_min: float = 3.0
    label_shift: bool = True
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
    bias_when_cold: bool = True
    cold_evidence: float = 1.0
    max_logit_bias: float = 3.0
    var_floor: float = 1e-4
    reorder_lateness_s: float = 0.0
    reorder_idle_s: float = 300.0
    reorder_max_held: int = 100_000
    reorder_partitions: int = 0

    def __post_init__(self) -> None:
        pos = ("half_life_s", "eval_every_s", "alpha", "z_min", "var_floor", "max_logit_bias")
        checks = [(self.capacity >= 2, "capacity must be >= 2"),
                  (self.max_schemata >= 1, "max_schemata must be >= 1"),
                  (0.0 <= self.retire_support <= self.min_support, "need 0 <= retire_support <= min_support"),
                  (self.alpha < 1.0, "alpha must be < 1"),
                  (0.0 <= self.z_retire <= self.z_min, "need 0 <= z_retire <= z_min"),
                  (min(self.min_effect, self.bias_prior, self.cold_evidence) >= 0.0,
                   "min_effect, bias_prior, cold_evidence must be >= 0"),
                  (self.code_tables >= 0 and self.max_features >= 1, "code_tables >= 0, max_features >= 1"),
                  (self.max_predicates >= 2 * self.capacity + 8, "max_predicates must be >= 2 capacity + 8"),
                  (self.max_examples >= 0 and 1 <= self.recent_window <= 1 << 22,
                   "need max_examples >= 0 and 1 <= recent_window <= 2**22 (the overlap sums' fixed point)"),
                  (0.0 <= self.explained_fraction <= 1.0, "explained_fraction must be in [0, 1]"),
                  (self.shift_half_life_s == 0.0 or 0.0 < self.shift_half_life_s < self.half_life_s,
                   "need 0 <= shift_half_life_s < half_life_s"),
                  (0.0 < self.shift_alpha < 1.0 and self.shift_z > 0.0 and self.shift_z_min >= 0.0,
                   "need 0 < shift_alpha < 1, shift_z > 0, shift_z_min >= 0"),
                  (min(self.publish_every_s, self.cooldown_s, self.hold_s) >= 0.0, "negative publish/cooldown/hold"),
                  (min(self.reorder_lateness_s, self.reorder_idle_s) >= 0.0 and self.reorder_max_held >= 1
                   and self.reorder_partitions >= 0,
                   "need reorder_lateness_s, reorder_idle_s, reorder_partitions >= 0, reorder_max_held >= 1"),
                  *((math.isfinite(getattr(self, a)) and getattr(self, a) > 0, f"{a} must be > 0") for a in pos)]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
