"""Numba kernels of the schema cache's decisions at a tick (the test stage): Welch z tests.

* :func:`welch_z` -- :func:`reloop.state.schemas.select.two_sample_z` on ``(n, 3)`` rows in one
  pass (its numpy body is the specification);
* :func:`single_tests` -- a selection round's single-predicate tests
  (:func:`reloop.state.schemas.select._single_tests`, whose numpy form is the specification);
* :func:`vs_rest` -- the shift screen's tests (:func:`reloop.state.schemas.shift._vs_rest`, same).

Each runs the same IEEE operations in the same order as its numpy specification, so the
results are bit-identical (tests: ``tests/state/test_schema_single_tests.py`` and the whole-run
comparisons of ``tests/state/test_schema_eval_kernels.py``); the numpy forms run when
:data:`reloop.state.schemas.kernels.USE_KERNELS` is False. All release the GIL.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["single_tests", "vs_rest", "welch_z"]


@njit(cache=True, nogil=True)
def _welch_row(a0, a1, a2, b0, b1, b2, scale, var_floor, min_count):  # pragma: no cover - numba
    """``(z, diff)`` of one row pair, the IEEE operations of ``two_sample_z`` in its order."""
    n_a, n_b = a0 * scale, b0 * scale
    ok = (n_a >= min_count) & (n_b >= min_count)
    own_a, own_b = (a0, b0) if ok else (1.0, 1.0)
    m_a, m_b = a1 / own_a, b1 / own_b
    v_a, v_b = a2 / own_a - m_a * m_a, b2 / own_b - m_b * m_b
    v_a = v_a if v_a >= var_floor or v_a != v_a else var_floor  # np.maximum (NaN stays)
    v_b = v_b if v_b >= var_floor or v_b != v_b else var_floor
    se = math.sqrt(v_a / (n_a if ok else 1.0) + v_b / (n_b if ok else 1.0))
    d = m_a - m_b if ok else 0.0
    return (d / se if ok else 0.0), d


@njit(cache=True, nogil=True)
def _welch_kernel(a, b, scale, var_floor, min_count, z, diff):  # pragma: no cover - numba
    for i in range(a.shape[0]):
        z[i], diff[i] = _welch_row(a[i, 0], a[i, 1], a[i, 2], b[i, 0], b[i, 1], b[i, 2], scale, var_floor, min_count)


def welch_z(a: np.ndarray, b: np.ndarray, scale: float, var_floor: float,
            min_count: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reloop.state.schemas.select.two_sample_z` of ``(n, 3)`` float64 rows ``a``, ``b``
    in one pass (GIL released); the same IEEE operations per element, so bit-identical."""
    z, diff = np.empty(a.shape[0]), np.empty(a.shape[0])
    _welch_kernel(a, b, float(scale), float(var_floor), float(min_count), z, diff)
    return z, diff


@njit(cache=True, nogil=True)
def _add_row(dst, i, src, s):  # pragma: no cover - numba
    for j in range(3):
        dst[i, j] += src[s, j]


@njit(cache=True, nogil=True)
def _single_tests_kernel(tri, col, pair, parents, chosen, col_tot, scale, var_floor, out):  # pragma: no cover
    n = tri.shape[0]
    is_chosen = np.zeros(n, np.bool_)
    for s in chosen:
        is_chosen[s] = True
    col_out = np.zeros((col_tot.shape[0], 3))  # chosen singles, and chosen pairs inside unchosen values
    kids = np.zeros((n, 3))  # chosen child pairs of each single
    mine = np.zeros((n, 3))  # the part of col_out inside the single itself
    for s in chosen:  # in the numpy form's order: the same float sums
        if not pair[s]:
            _add_row(col_out, col[s], tri, s)
            _add_row(mine, s, tri, s)
        elif parents[s, 0] >= 0 and parents[s, 1] >= 0:
            for t in range(2):
                a = parents[s, t]
                _add_row(kids, a, tri, s)
                if not is_chosen[a]:
                    _add_row(col_out, col[a], tri, s)
                    _add_row(mine, a, tri, s)
    for i in range(n):
        c = col[i]
        r0 = (col_tot[c, 0] - tri[i, 0]) - (col_out[c, 0] - mine[i, 0])
        r1 = (col_tot[c, 1] - tri[i, 1]) - (col_out[c, 1] - mine[i, 1])
        r2 = (col_tot[c, 2] - tri[i, 2]) - (col_out[c, 2] - mine[i, 2])
        out[0, i], out[1, i] = _welch_row(tri[i, 0], tri[i, 1], tri[i, 2], r0, r1, r2, scale, var_floor, 2.0)
        out[2, i], out[3, i] = _welch_row(tri[i, 0] - kids[i, 0], tri[i, 1] - kids[i, 1], tri[i, 2] - kids[i, 2],
                                          r0, r1, r2, scale, var_floor, 2.0)


def single_tests(tri: np.ndarray, col: np.ndarray, pair: np.ndarray, parents: np.ndarray, col_tot: np.ndarray,
                 chosen: list[int], scale: float, var_floor: float) -> np.ndarray:
    """A selection round's single tests (:func:`reloop.state.schemas.select._single_tests`, whose
    numpy form is the specification and runs when ``kernels.USE_KERNELS`` is False) in one
    call: the chosen patterns' parts of each column's rest (``col_out``, ``mine``, ``kids``, summed
    in the order of ``chosen``), then ``rest = col_tot[col] - tri - (col_out[col] - mine)`` per
    row and the Welch tests ``(tri, rest)`` and ``(tri - kids, rest)``; bit for bit. Returns
    ``(4, n)`` rows ``z_full, gap_full, z_own, gap_own``. ``tri``: ``(n, 3)``; ``col``, ``pair``:
    ``(n,)``; ``parents``: ``(n, 2)`` slots (-1 untracked); ``col_tot``: ``(C, 3)``."""
    out = np.empty((4, tri.shape[0]))
    _single_tests_kernel(np.ascontiguousarray(tri), np.ascontiguousarray(col, np.int64), np.ascontiguousarray(pair),
                         np.ascontiguousarray(parents, np.int64), np.array(chosen, np.int64), col_tot, float(scale),
                         float(var_floor), out)
    return out


@njit(cache=True, nogil=True)
def _vs_rest_kernel(tri, pair, col, par, n_cols, scale, var_floor, z, gap):  # pragma: no cover - numba
    n = tri.shape[0]
    col_tot = np.zeros((n_cols, 3))
    for i in range(n):  # np.add.at: the singles in slot order
        if not pair[i]:
            for j in range(3):
                col_tot[col[i], j] += tri[i, j]
    for i in range(n):
        c = col[i]
        z[i], gap[i] = _welch_row(tri[i, 0], tri[i, 1], tri[i, 2], col_tot[c, 0] - tri[i, 0], col_tot[c, 1] - tri[i, 1],
                                  col_tot[c, 2] - tri[i, 2], scale, var_floor, 2.0)
    q = 0
    for i in range(n):  # a pair: the weaker of its tests against each parent's rest, 0 if they disagree
        if not pair[i]:
            continue
        a, b = par[q, 0], par[q, 1]
        q += 1
        za, ga = _welch_row(tri[i, 0], tri[i, 1], tri[i, 2], tri[a, 0] - tri[i, 0], tri[a, 1] - tri[i, 1],
                            tri[a, 2] - tri[i, 2], scale, var_floor, 2.0)
        zb, gb = _welch_row(tri[i, 0], tri[i, 1], tri[i, 2], tri[b, 0] - tri[i, 0], tri[b, 1] - tri[i, 1],
                            tri[b, 2] - tri[i, 2], scale, var_floor, 2.0)
        if a >= 0 and b >= 0 and np.sign(za) == np.sign(zb):
            z[i], gap[i] = (za, ga) if abs(za) <= abs(zb) else (zb, gb)
        else:
            z[i], gap[i] = 0.0, 0.0


def vs_rest(tri: np.ndarray, pair: np.ndarray, col: np.ndarray, par: np.ndarray | None, scale: float,
            var_floor: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reloop.state.schemas.shift._vs_rest` in one pass (its numpy form is the
    specification, run when ``kernels.USE_KERNELS`` is False): the column totals of the singles
    (in slot order, as ``np.add.at``), every pattern against the rest of its column, then each
    pair the weaker of its tests against its parents' rests (``par`` ``(n_pairs, 2)`` slots in
    pair order, -1 untracked: ``tri[-1]`` is read as numpy's fancy index reads it, then zeroed).
    ``tri`` ``(n, 3)``; returns ``(z, gap)``, bit for bit."""
    n = tri.shape[0]
    z, gap = np.empty(n), np.empty(n)
    n_cols = int(col.max()) + 1 if col.size else 1
    parents = np.zeros((0, 2), np.int64) if par is None else np.ascontiguousarray(par, np.int64)
    _vs_rest_kernel(np.ascontiguousarray(tri, np.float64), np.ascontiguousarray(pair), np.ascontiguousarray(col, np.int64),
                    parents, n_cols, float(scale), float(var_floor), z, gap)
    return z, gap
