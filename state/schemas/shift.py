"""The prediction-shift screen: fast promotion of slices whose inputs broke.

A broken feature (a client stops sending ``genre``; a feature stuck at a default) changes
the model's *predictions* on a slice at once, while the labels go on as before. Residual
tests see it slowly: the residual's noise is Bernoulli (sd ~0.35 at CTR 0.15), and the main
window mixes the new errors with the slice's clean history. The predictions themselves are
far less noisy, so their jump is visible within a few hundred records.

Per tracked pattern, on the short *shift* window (sums ``F_*`` of :mod:`reloop.state.schemas.kernels`,
half-life ``shift_half_life_s``) and the main window:

* prediction shift ``z_p = (mean_f(p) - mean(p)) / sqrt(var_f(p) / n_f)``, fast mean
  against the main-window mean of the same slice;
* fast residual test ``z_f``, ``gap_f``: Welch z of the slice against the rest of its column
  (singles) or the weaker of the tests against each parent's rest (pairs), fast window.

A pattern passes the screen when ``n_f >= min_support``, ``|z_p| >= shift_z``, the residual
moved *against* the predictions (``sign(gap_f) = -sign(z_p)``: the model moved, the labels
did not), ``|z_f| >= max(shift_z_min, Phi^-1(1 - shift_alpha / 2m))`` with ``m`` the patterns
whose predictions shifted (Bonferroni over the screened family only), ``|gap_f| >=
min_effect`` and the slice's own fast mean error is at least ``min_effect`` that way (an
active schema: looser thresholds, see :func:`shift_screen`); a pair
whose parent single passes is left to the main test (the broadest broken slice is promoted). Under
stationary traffic ``|z_p|`` stays small (max 2.5-3.1 over the clean stretches of two bench
seeds, single predicates, 2 s half-life), so the screen rarely opens, and when it does a residual test still
has to confirm.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import NormalDist

import numpy as np

from reloop.state.schemas import kernels
from reloop.state.schemas.kernels import F_OWN, F_SUM_P, F_SUM_P2, F_SUM_R, F_SUM_R2, OWN, SUM_P, SUM_R, SUM_R2
from reloop.state.schemas.select import Screen, two_sample_z

__all__ = ["shift_screen"]


def shift_screen(stats: np.ndarray, keys: np.ndarray, cols: np.ndarray, lookup: Callable[[np.ndarray], np.ndarray],
                 scale_f: float, active: np.ndarray, *, min_support: float, retire_support: float, min_effect: float,
                 shift_z: float, shift_alpha: float, shift_z_min: float, z_retire: float, var_floor: float,
                 label_z: Callable[[int], float] | None = None, scale: float = 1.0,
                 fast_min_support: float = 0.0) -> Screen:
    """The screen over ``n`` tracked patterns.

    Args:
        stats: ``(n, N_STATS)`` slot statistics (landmark weights; main and fast windows).
        keys: ``(n,) int64`` pattern keys; cols: column of each predicate id.
        lookup: pattern keys -> slots (-1 = untracked), for the parents of pairs.
        scale_f: decay factor of the fast window from its landmark to now.
        active: ``(n,) bool``, patterns that are active schemata: they stay screened on looser
            thresholds (hysteresis, as the main test: ``retire_support``, ``|z_p| >= shift_z / 2``,
            ``|z_f| >= z_retire``, half the effect).
        min_support .. var_floor: thresholds (see :class:`reloop.state.schemas.config.SchemaCacheConfig`).
        label_z: the *label-shift* path (None = off): ``label_z(m)`` is the main test's
            promotion threshold for ``m`` tested patterns. A pattern that is not an active
            schema, has ``min_support`` decayed records on the main window (decay factor
            ``scale``: a history to differ from) and ``fast_min_support`` on the fast one, and
            whose fast residual test reaches ``label_z(m_f)`` (``m_f``: the patterns with that
            fast support, Bonferroni over them) while its main-window test agrees in sign with
            ``|z| >= z_retire``, with the same effect rules, passes too: the labels moved and
            the main window's clean history would hide it for seconds more.
    """
    pair = keys >= (1 << 32)
    p1 = np.where(pair, keys >> 32, keys)
    col = np.asarray(cols)[p1]
    pairs = np.flatnonzero(pair)
    par = lookup(np.concatenate((p1[pairs], keys[pairs] & 0xFFFFFFFF))).reshape(2, -1).T if pairs.size else None
    z, gap = _vs_rest(stats[:, [F_OWN, F_SUM_R, F_SUM_R2]], pair, col, par, scale_f, var_floor)
    n_f = stats[:, F_OWN] * scale_f
    own_f = np.maximum(stats[:, F_OWN], 1e-300)
    mean_p_f = stats[:, F_SUM_P] / own_f
    var_p_f = np.maximum(stats[:, F_SUM_P2] / own_f - mean_p_f * mean_p_f, var_floor)
    mean_p = stats[:, SUM_P] / np.maximum(stats[:, OWN], 1e-300)
    z_p = np.where(n_f >= 2.0, (mean_p_f - mean_p) / np.sqrt(var_p_f / np.maximum(n_f, 1.0)), 0.0)
    moved = np.sign(gap) == -np.sign(z_p)
    shifted = (n_f >= min_support) & (np.abs(z_p) >= shift_z) & moved
    theta = max(shift_z_min, NormalDist().inv_cdf(1.0 - shift_alpha / (2.0 * max(1, int(shifted.sum())))))
    mean_r_f = stats[:, F_SUM_R] / own_f
    effect = np.where(active, min_effect / 2, min_effect)
    shifted = np.where(active, (n_f >= retire_support) & (np.abs(z_p) >= shift_z / 2) & moved, shifted)
    erring = (np.abs(gap) >= effect) & (mean_r_f * np.sign(gap) >= effect)
    thetas = np.full(keys.shape[0], theta)
    screened = shifted & (np.abs(z) >= np.where(active, min(z_retire, theta), theta)) & erring
    label = np.zeros_like(screened)
    if label_z is not None:  # labels moved, predictions did not: the fast residual test at the main threshold
        z_m, _ = _vs_rest(stats[:, [OWN, SUM_R, SUM_R2]], pair, col, par, scale, var_floor)
        tested = (n_f >= fast_min_support) & (stats[:, OWN] * scale >= min_support)
        theta_l = label_z(int(tested.sum()))
        label = (~active & ~screened & tested & (np.abs(z) >= theta_l) & erring
                 & (np.sign(z_m) == np.sign(z)) & (np.abs(z_m) >= z_retire))
        screened |= label
        thetas[label] = theta_l
    if pairs.size:  # the broadest broken slice: a pair inside a screened single is left to the main test
        parent_hit = np.where(par >= 0, screened[np.maximum(par, 0)], False).any(axis=1)
        screened[pairs] &= ~parent_hit
    return Screen(screened, z, gap, thetas, label & screened)


def _vs_rest(tri: np.ndarray, pair: np.ndarray, col: np.ndarray, par: np.ndarray | None, scale: float,
             var_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Welch ``(z, gap)`` of each pattern on one window: a single against the rest of its
    column, a pair the weaker of its tests against each parent's rest (0 when they disagree in
    sign or a parent is untracked). ``tri``: ``(n, 3)`` ``(OWN, SUM_R, SUM_R2)``; ``par``: the
    parents' slots of the pairs ``(n_pairs, 2)``."""
    if kernels.USE_KERNELS and (par is not None or not pair.any()):
        return kernels.vs_rest(tri, pair, col, par, scale, var_floor)  # numba, one pass, same bits
    singles = np.flatnonzero(~pair)
    col_tot = np.zeros((int(col.max()) + 1 if col.size else 1, 3))
    np.add.at(col_tot, col[singles], tri[singles])
    z, gap = two_sample_z(tri, col_tot[col] - tri, scale, var_floor)
    pairs = np.flatnonzero(pair)
    if par is not None and pairs.size:
        za, ga = two_sample_z(tri[pairs], tri[par[:, 0]] - tri[pairs], scale, var_floor)
        zb, gb = two_sample_z(tri[pairs], tri[par[:, 1]] - tri[pairs], scale, var_floor)
        weaker_a = np.abs(za) <= np.abs(zb)
        agree = (par >= 0).all(axis=1) & (np.sign(za) == np.sign(zb))
        z[pairs] = np.where(agree, np.where(weaker_a, za, zb), 0.0)
        gap[pairs] = np.where(agree, np.where(weaker_a, ga, gb), 0.0)
    return z, gap
