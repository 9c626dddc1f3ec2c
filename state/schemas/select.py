"""Schema decisions: the Welch z statistic and the greedy choice of schemata at a tick.

:func:`two_sample_z` is the test every decision uses; :func:`select_schemata` chooses the
schemata among the tracked patterns (see :mod:`reloop.state.schemas.cache` for the rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from reloop.state.schemas import kernels
from reloop.state.schemas.kernels import welch_z

__all__ = ["Explainer", "Screen", "Thresholds", "select_schemata", "two_sample_z"]


def two_sample_z(a: np.ndarray, b: np.ndarray, scale: float, var_floor: float,
                 min_count: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Welch z of the mean residual of group ``a`` minus that of the disjoint group ``b``.

    ``a``, ``b``: ``(..., 3)`` landmark-weighted ``(OWN, SUM_R, SUM_R2)``; ``scale`` turns
    weights into decayed record counts ``n``. ``z = (m_a - m_b) / sqrt(v_a/n_a + v_b/n_b)``,
    ``v = max(weighted variance, var_floor)``; 0 where a group has fewer than ``min_count``
    decayed records (e.g. the rest of a pattern that covers all the traffic is only float
    rounding). The decayed count is a conservative sample size (the effective size of
    decayed records is larger). Returns ``(z, m_a - m_b)``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if kernels.USE_KERNELS and a.ndim == 2 and a.shape == b.shape and a.shape[1] == 3:
        return welch_z(a, b, scale, var_floor, min_count)  # numba, one pass, same bits
    n_a, n_b = a[..., 0] * scale, b[..., 0] * scale
    ok = (n_a >= min_count) & (n_b >= min_count)
    own_a = np.where(ok, a[..., 0], 1.0)
    own_b = np.where(ok, b[..., 0], 1.0)
    m_a, m_b = a[..., 1] / own_a, b[..., 1] / own_b
    v_a = np.maximum(a[..., 2] / own_a - m_a * m_a, var_floor)
    v_b = np.maximum(b[..., 2] / own_b - m_b * m_b, var_floor)
    se = np.sqrt(v_a / np.where(ok, n_a, 1.0) + v_b / np.where(ok, n_b, 1.0))
    diff = np.where(ok, m_a - m_b, 0.0)
    return np.where(ok, diff / se, 0.0), diff


class Thresholds(NamedTuple):
    """Decision thresholds of one evaluation (see ``SchemaCacheConfig``)."""

    z_new: float
    z_retire: float
    min_support: float
    retire_support: float
    min_effect: float
    max_schemata: int
    var_floor: float
    explained_fraction: float


class Screen(NamedTuple):
    """Patterns that passed the prediction-shift screen (:mod:`reloop.state.schemas.shift`).

    ``screened`` ``(n,) bool``; ``z``, ``gap`` ``(n,)``: the fast-window test of each pattern;
    ``theta``: the |z| it had to reach (one for all, or ``(n,)``); ``label``: ``(n,) bool``, the
    screened ones that passed on a label shift (their predictions did not move): unlike a broken
    input they must still pass the child-pair check (a single whose chosen child pairs explain
    it is not chosen).
    """

    screened: np.ndarray
    z: np.ndarray
    gap: np.ndarray
    theta: float | np.ndarray
    label: np.ndarray | None = None


#: ``explained([(slot, others, gap, active), ...]) -> [slot of the chosen schema that explains
#: it, or -1, ...]``: independent checks on one state, answered together.
Explainer = Callable[[list[tuple[int, list[int], float, bool]]], list[int]]


def select_schemata(tri: np.ndarray, keys: np.ndarray, cols: np.ndarray,
                    lookup: Callable[[np.ndarray], np.ndarray], scale: float, active: np.ndarray,
                    th: Thresholds, explained: Explainer, blocked: np.ndarray | None = None,
                    screen: Screen | None = None,
                    ) -> tuple[list[tuple[int, float, float, bool]], dict[int, str | int]]:
    """Greedy choice of the schemata among ``n`` tracked patterns (see the cache docstring).

    Tests (Welch z, :func:`two_sample_z`): a single ``S`` (``genre=drama``) against the
    other values of its column minus the chosen ones and the chosen pairs inside them (a
    fault on one value does not make its siblings look wrong); a pair against the rest of
    each parent (``P`` vs ``a - P``, ``b - P``), keeping the weaker test (0 when the two
    disagree in sign). A single is explained by its chosen child pairs when, without them,
    less than half ``explained_fraction`` of its gap is left or the rest is not significant
    (``|z| < z_retire``; active: a quarter and ``z_retire / 2``). A candidate's own mean
    error must also be at least the effect threshold in the gap's direction (the slice errs,
    not only its comparison traffic). Each round adds the pattern with the largest ``|z|``
    that passes its thresholds (active ones: the retire thresholds, half the fraction) and
    that ``explained`` does not attribute to the chosen ones; then drops earlier choices
    that the new one explains.

    Args:
        tri: ``(n, 3)`` landmark-weighted ``(OWN, SUM_R, SUM_R2)`` per slot.
        keys: ``(n,) int64`` pattern keys.
        cols: column of each predicate id (an int array indexable by ids).
        lookup: pattern keys ``(q,) int64`` -> slots ``(q,)`` (-1 = untracked).
        scale: decay factor from the landmark to now; active: ``(n,) bool``.
        explained: the overlap check (the cache runs it on its recent records).
        blocked: ``(n,) bool``, patterns that may not be promoted now (cooling down).
        screen: patterns whose predictions shifted and whose fast-window residual confirms
            it: candidates (and strong) even when the main-window test does not pass yet;
            ranked by their fast ``|z|`` scaled to the main threshold.

    Returns:
        ``[(slot, z, gap, strong)]`` (the chosen, by decreasing impact ``|gap| * support``;
        ``strong``: it passes the promotion thresholds, not only the retire ones), and for
        each active slot not chosen a reason: a string, or the slot of the chosen schema
        that explains it.
    """
    n = tri.shape[0]
    pair = keys >= (1 << 32)
    p1 = np.where(pair, keys >> 32, keys)
    p2 = np.where(pair, keys & 0xFFFFFFFF, 0)
    col = np.asarray(cols)[p1]
    theta = np.where(active, th.z_retire, th.z_new)
    effect = np.where(active, th.min_effect / 2, th.min_effect)
    frac = np.where(active, th.explained_fraction / 2, th.explained_fraction)
    ok_support = tri[:, 0] * scale >= np.where(active, th.retire_support, th.min_support)
    mean_error = tri[:, 1] / np.maximum(tri[:, 0], 1e-300)
    parents = np.full((n, 2), -1, dtype=np.int64)
    z_pair, gap_pair = np.zeros(n), np.zeros(n)
    pairs = np.flatnonzero(pair)
    if pairs.size:  # static: each pair against the rest of each parent
        parents[pairs] = lookup(np.concatenate((p1[pairs], p2[pairs]))).reshape(2, -1).T
        par = parents[pairs]
        za, ga = two_sample_z(tri[pairs], tri[par[:, 0]] - tri[pairs], scale, th.var_floor)
        zb, gb = two_sample_z(tri[pairs], tri[par[:, 1]] - tri[pairs], scale, th.var_floor)
        weaker_a = np.abs(za) <= np.abs(zb)
        agree = (par >= 0).all(axis=1) & (np.sign(za) == np.sign(zb))
        z_pair[pairs] = np.where(agree, np.where(weaker_a, za, zb), 0.0)
        gap_pair[pairs] = np.where(agree, np.where(weaker_a, ga, gb), 0.0)
    singles = np.flatnonzero(~pair)
    col_tot = np.zeros((int(col.max()) + 1 if n else 1, 3))
    np.add.at(col_tot, col[singles], tri[singles])
    chosen: list[int] = []
    at_choice: dict[int, tuple[float, float]] = {}
    done = np.zeros(n, dtype=bool) if blocked is None else blocked & ~active
    reasons: dict[int, str | int] = {}
    z = gap = np.zeros(n)
    screened = np.zeros(n, dtype=bool) if screen is None else screen.screened
    bypass = screened if screen is None or screen.label is None else screened & ~screen.label
    while len(chosen) < th.max_schemata:
        z_full, gap_full, z, gap = _single_tests(tri, col, pair, parents, col_tot, chosen, scale, th.var_floor)
        z_full, gap_full = np.where(pair, z_pair, z_full), np.where(pair, gap_pair, gap_full)
        # a single whose chosen child pairs leave no significant error in the rest of it is
        # explained by them
        own_ok = pair | bypass | ((gap * np.sign(gap_full) >= frac / 2 * np.abs(gap_full))
                                    & (z * np.sign(z_full) >= np.where(active, th.z_retire / 2, th.z_retire)))
        z, gap = z_full, gap_full
        for s in [s for s in chosen if not own_ok[s]]:
            chosen.remove(s)
            reasons[s] = next((c for c in chosen if pair[c] and s in parents[c]), "significance")
        erring = mean_error * np.sign(gap) >= effect  # the slice itself errs, not just its rest
        passes = ok_support & own_ok & erring & (np.abs(z) >= theta) & (np.abs(gap) >= effect)
        fast = screened & ~passes & own_ok
        if screen is not None:  # passed the shift screen only: its fast-window test stands in
            z = np.where(fast, screen.z, z)
            gap = np.where(fast, screen.gap, gap)
        rank = np.where(fast, np.abs(z) * theta / (screen.theta if screen is not None else 1.0), np.abs(z))
        cand = np.flatnonzero(~done & (passes | fast))
        pick = -1
        for s in cand[np.lexsort((keys[cand], -rank[cand]))].tolist():
            by = explained([(s, chosen, float(gap[s]), bool(active[s]))])[0] if chosen else -1
            done[s] = True
            if by < 0:
                pick = s
                break
            reasons[s] = by
        if pick < 0:
            break
        chosen.append(pick)
        at_choice[pick] = (float(z[pick]), float(gap[pick]))
        _drop_explained(chosen, chosen[:-1], at_choice, active, explained, reasons)
    for s in np.flatnonzero(active & ~np.isin(np.arange(n), chosen)).tolist():
        if s in reasons:
            continue
        if pair[s] and (parents[s] < 0).any():
            reasons[s] = "untracked parent"
        elif not ok_support[s]:
            reasons[s] = "support"
        elif len(chosen) >= th.max_schemata and abs(z[s]) >= theta[s] and abs(gap[s]) >= effect[s]:
            reasons[s] = "evicted"
        elif pair[s] and abs(z_pair[s]) < theta[s] and abs(gap_pair[s]) > 0:
            za = [abs(float(two_sample_z(tri[s], tri[q] - tri[s], scale, th.var_floor)[0])) for q in parents[s]]
            reasons[s] = int(parents[s][int(np.argmin(za))])
        else:
            reasons[s] = "significance"
    z_full, gap_full, _, _ = _single_tests(tri, col, pair, parents, col_tot, chosen, scale, th.var_floor)
    z_full, gap_full = np.where(pair, z_pair, z_full), np.where(pair, gap_pair, gap_full)
    strong = ((np.abs(z_full) >= th.z_new) & (np.abs(gap_full) >= th.min_effect) & (tri[:, 0] * scale >= th.min_support)
              & (mean_error * np.sign(gap_full) >= th.min_effect))
    if screen is not None:  # screened and not strong on the main window: report the fast test
        fast = screen.screened & ~strong
        z_full, gap_full = np.where(fast, screen.z, z_full), np.where(fast, screen.gap, gap_full)
        strong |= screen.screened
    final = {s: (float(z_full[s]), float(gap_full[s]), bool(strong[s])) for s in chosen}
    order = sorted(chosen, key=lambda s: (-abs(final[s][1]) * tri[s, 0], int(keys[s])))
    return [(s, *final[s]) for s in order], reasons


def _drop_explained(chosen: list[int], earlier: list[int], at_choice: dict[int, tuple[float, float]],
                    active: np.ndarray, explained: Explainer, reasons: dict[int, str | int]) -> None:
    """Drop from ``chosen`` each of ``earlier`` (in order) that the others chosen at that point
    explain. One batch of checks answers all of them; after a drop, the rest are asked again
    against the smaller set: the same answers as asking one at a time."""
    while earlier:
        answers = explained([(s, [c for c in chosen if c != s], at_choice[s][1], bool(active[s])) for s in earlier])
        dropped = next((i for i, by in enumerate(answers) if by >= 0), None)
        if dropped is None:
            return
        s = earlier[dropped]
        chosen.remove(s)
        reasons[s] = answers[dropped]
        earlier = earlier[dropped + 1:]


def _single_tests(tri: np.ndarray, col: np.ndarray, pair: np.ndarray, parents: np.ndarray, col_tot: np.ndarray,
                  chosen: list[int], scale: float, var_floor: float) -> tuple[np.ndarray, ...]:
    """z and gap of every single against the rest of its column, given the chosen set.

    The rest is the column's other values minus the chosen ones and minus the chosen pairs
    inside them. Returns ``(z_full, gap_full, z_own, gap_own)``: *own* also removes the
    chosen child pairs from the single itself (what is left of it once they are explained).
    """
    if kernels.USE_KERNELS:  # numba, one call, same bits as the numpy form below
        return tuple(kernels.single_tests(tri, col, pair, parents, col_tot, chosen, scale, var_floor))
    n_cols = col_tot.shape[0]
    is_chosen = np.zeros(tri.shape[0], dtype=bool)
    is_chosen[chosen] = True
    col_out = np.zeros((n_cols, 3))  # chosen singles, and chosen pairs inside unchosen values
    kids = np.zeros_like(tri)  # chosen child pairs of each single
    mine = np.zeros_like(tri)  # the part of col_out inside the single itself
    for s in chosen:
        if not pair[s]:
            col_out[col[s]] += tri[s]
            mine[s] += tri[s]
        elif (parents[s] >= 0).all():
            for a in parents[s]:
                kids[a] += tri[s]
                if not is_chosen[a]:
                    col_out[col[a]] += tri[s]
                    mine[a] += tri[s]
    rest = col_tot[col] - tri - (col_out[col] - mine)
    z_full, gap_full = two_sample_z(tri, rest, scale, var_floor)
    z_own, gap_own = two_sample_z(tri - kids, rest, scale, var_floor)
    return z_full, gap_full, z_own, gap_own
