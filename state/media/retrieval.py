"""Numba kernels of the media memory's read path: top-k retrieval and the serving features.

* :func:`topk_cosine` -- top-``k`` keys by cosine per query plus the softmax(``cos / tau``)-
  weighted cosine over those ``k``;
* :func:`media_features` -- the serving features of candidates against one user's memory
  (retrieval over clip keys and open clips, finest-vector / flash maxima, recency) in one
  call.

References: :func:`reloop.state.media.reference.topk_cosine_ref`, :func:`reloop.state.media.reference.
media_features_ref`. Dot products accumulate in float64; ties go to the lower index.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from reloop.state.media.jit import dot as _dot
from reloop.state.media.jit import normalise_into as _normalise_into

from reloop.state.media.config import ACTIVATED, ARCHIVED

__all__ = ["N_FEATURES", "media_features", "serve_features", "topk_cosine"]

@njit(cache=True, nogil=True)
def _topk_cosine_kernel(queries: np.ndarray, keys: np.ndarray, k: int,
                        tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = queries.shape[0]
    m = keys.shape[0]
    idx = np.full((n, k), -1, dtype=np.int64)
    cos = np.zeros((n, k), dtype=np.float64)
    soft = np.zeros(n, dtype=np.float64)
    best = np.empty(k, dtype=np.float64)
    for i in range(n):
        best[:] = -np.inf
        for r in range(m):
            c = _dot(queries[i], keys[r])
            if c > best[k - 1]:  # insertion keeps the earlier (lower) index first on ties
                pos = k - 1
                while pos > 0 and best[pos - 1] < c:
                    best[pos] = best[pos - 1]
                    idx[i, pos] = idx[i, pos - 1]
                    pos -= 1
                best[pos] = c
                idx[i, pos] = r
        top = min(k, m)
        w_sum = 0.0
        wc_sum = 0.0
        for j in range(top):
            cos[i, j] = best[j]
            w = np.exp((best[j] - best[0]) / tau)
            w_sum += w
            wc_sum += w * best[j]
        if top > 0:
            soft[i] = wc_sum / w_sum
    return idx, cos, soft


def topk_cosine(queries: np.ndarray, keys: np.ndarray, k: int,
                tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` keys per query by cosine, best first, and their softmax-weighted cosine.

    Args:
        queries: ``(n, d) float32`` unit rows; keys: ``(m, d) float32`` unit rows.
        k: neighbours per query (>= 1); tau: softmax temperature (> 0).

    Returns:
        ``idx (n, k) int64`` (``-1`` past ``m``), ``cos (n, k) float64`` (0 past ``m``) and
        ``soft (n,) float64 = sum_j w_j cos_j / sum_j w_j`` with ``w_j = exp(cos_j / tau)``
        over the ``min(k, m)`` neighbours (0 when ``m == 0``).
    """
    return _topk_cosine_kernel(np.ascontiguousarray(queries, np.float32),
                               np.ascontiguousarray(keys, np.float32), int(k), float(tau))


N_FEATURES = 7  # columns of media_features (see reloop.state.media.memory.FEATURE_NAMES)


@njit(cache=True, nogil=True)
def _media_features_kernel(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, row_slots: np.ndarray, live: np.ndarray,
                           write_seq: np.ndarray, n_flash: int, last_ts: np.ndarray, counts: np.ndarray,
                           open_frames: np.ndarray, open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float,
                           now: float, recency_scale_s: float) -> tuple[np.ndarray, np.ndarray]:
    n, d = q.shape
    n_rows = slots.shape[0]
    flash = np.zeros(n_rows, dtype=np.bool_)
    for _ in range(n_flash):  # the n_flash live rows with the largest write_seq (lowest row on ties)
        best = -1
        for r in range(n_rows):
            if live[r] and not flash[r] and (best < 0 or write_seq[r] > write_seq[best]):
                best = r
        if best >= 0:
            flash[best] = True
    n_live, n_fine = 0, 0
    for r in range(n_rows):
        if live[r]:
            n_live += 1
            n_fine += max(row_slots[r], 1)  # a row without slots is its own finest vector
    n_units = n_live + (open_len[0] > 0) + (open_len[1] > 0)
    n_open = open_len[0] + open_len[1]
    # columns of the bank: units (live keys, open-clip keys), live finest vectors, open frames
    width = n_units + n_fine + n_open
    bank_t = np.empty((d, width), dtype=np.float64)  # transposed: the dot loops vectorise over columns
    in_flash = np.zeros(width, dtype=np.bool_)
    unit_id = np.empty(n_units, dtype=np.int64)  # row, or n_rows + modality for an open clip
    unit_ts = np.empty(n_units, dtype=np.float64)
    unit_count = np.empty(n_units, dtype=np.float64)
    acc = np.zeros(d, dtype=np.float64)
    key = np.empty(d, dtype=np.float32)
    u, col = 0, n_units
    for r in range(n_rows):
        if live[r]:
            unit_id[u], unit_ts[u], unit_count[u], in_flash[u] = r, last_ts[r], counts[r], flash[r]
            for t in range(d):
                bank_t[t, u] = keys[r, t]
            if row_slots[r] == 0:
                in_flash[col] = flash[r]
                for t in range(d):
                    bank_t[t, col] = keys[r, t]
                col += 1
            for s in range(row_slots[r]):
                in_flash[col] = flash[r]
                for t in range(d):
                    bank_t[t, col] = slots[r, s, t]
                col += 1
            u += 1
    for m in range(2):
        if open_len[m] > 0:
            acc[:] = 0.0
            for f in range(open_len[m]):
                in_flash[col] = True
                for t in range(d):
                    acc[t] += open_frames[m, f, t]
                    bank_t[t, col] = open_frames[m, f, t]
                col += 1
            _normalise_into(acc, key)
            for t in range(d):
                bank_t[t, u] = key[t]
            unit_id[u], unit_ts[u], unit_count[u] = n_rows + m, open_ts[m, open_len[m] - 1], open_len[m]
            u += 1
    out = np.zeros((n, N_FEATURES), dtype=np.float64)
    hits = np.full((n, k), -1, dtype=np.int64)
    best_cos = np.empty(k, dtype=np.float64)
    best_unit = np.empty(k, dtype=np.int64)
    qi = np.empty(d, dtype=np.float32)
    sims = np.empty(width, dtype=np.float64)
    for i in range(n):
        for t in range(d):
            acc[t] = q[i, t]
        if n_units == 0 or _dot(acc, acc) == 0.0:
            continue  # empty memory or unknown content: all zeros
        _normalise_into(acc, qi)
        sims[:] = 0.0
        for t in range(d):  # axpy over columns: each dot still summed in feature order
            x = np.float64(qi[t])
            for j in range(width):
                sims[j] += x * bank_t[t, j]
        best_cos[:] = -np.inf
        best_unit[:] = -1
        for j in range(n_units):
            c = sims[j]
            if c > best_cos[k - 1]:
                pos = k - 1
                while pos > 0 and best_cos[pos - 1] < c:
                    best_cos[pos], best_unit[pos] = best_cos[pos - 1], best_unit[pos - 1]
                    pos -= 1
                best_cos[pos], best_unit[pos] = c, j
        w_sum, wc_sum = 0.0, 0.0
        for j in range(min(k, n_units)):
            w = np.exp((best_cos[j] - best_cos[0]) / tau)
            w_sum += w
            wc_sum += w * best_cos[j]
            hits[i, j] = unit_id[best_unit[j]]
        slot_max, flash_max = -np.inf, -np.inf
        for j in range(width):
            if j >= n_units:
                slot_max = max(slot_max, sims[j])
            if in_flash[j]:
                flash_max = max(flash_max, sims[j])
        top = best_unit[0]
        out[i, 0] = best_cos[0]
        out[i, 1] = wc_sum / w_sum
        out[i, 2] = np.exp(-max(now - unit_ts[top], 0.0) / recency_scale_s)
        out[i, 3] = slot_max
        out[i, 4] = flash_max if flash_max > -np.inf else 0.0
        out[i, 5] = np.log1p(unit_count[top])
        out[i, 6] = 1.0
    return out, hits


def media_features(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, n_slots: np.ndarray, live: np.ndarray,
                   write_seq: np.ndarray, n_flash: int, last_ts: np.ndarray, counts: np.ndarray,
                   open_frames: np.ndarray, open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float,
                   now: float, recency_scale_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Serving features of ``n`` candidate embeddings against one user's memory.

    Retrievable *units* are the live rows (in row order) and each non-empty open clip (video
    then audio), keyed by its normalised mean frame. A row's *finest vectors* are its
    ``n_slots`` slots, or its key when it keeps none. Flash rows are the ``n_flash`` live
    rows with the largest ``write_seq`` (lower row first on ties).

    Args:
        q: ``(n, d)`` candidate embeddings (normalised here; a zero row gives a zero row).
        keys ``(C, d)``, slots ``(C, S, d)`` float32 unit rows; n_slots ``(C,) int32``
        slots in use; live ``(C,) bool``; write_seq ``(C,) int64``; last_ts ``(C,) float64``
        seconds; counts ``(C,) int64``; open_frames ``(2, F, d) float32``, open_len ``(2,)
        int64``, open_ts ``(2, F) float64``.
        k, tau: retrieval depth and softmax temperature; now, recency_scale_s: seconds.

    Returns:
        ``features (n, 7) float64`` -- max key cosine, softmax-weighted cosine over the top
        ``k``, recency of the best unit, max cosine to any live finest vector or open frame,
        max cosine to flash keys / finest vectors or open frames, ``log1p(frames)`` of the
        best unit, known flag -- and ``hits (n, k) int64``: the top-``k`` units, best first,
        as a row index, ``C + modality`` for an open clip, or -1.
    """
    return _media_features_kernel(np.ascontiguousarray(q, np.float32), keys, slots, n_slots, live, write_seq,
                                  int(n_flash), last_ts, counts, open_frames, open_len, open_ts, int(k), float(tau),
                                  float(now), float(recency_scale_s))


@njit(cache=True, nogil=True)
def _serve_kernel(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, row_slots: np.ndarray, state: np.ndarray,
                  write_seq: np.ndarray, n_flash: int, last_ts: np.ndarray, counts: np.ndarray,
                  open_frames: np.ndarray, open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float, now: float,
                  recency_scale_s: float, usage: np.ndarray, used_ts: np.ndarray, touch: bool) -> np.ndarray:
    n_rows = state.shape[0]
    live = np.empty(n_rows, dtype=np.bool_)
    for r in range(n_rows):
        live[r] = ACTIVATED <= state[r] <= ARCHIVED
    out, hits = _media_features_kernel(q, keys, slots, row_slots, live, write_seq, n_flash, last_ts, counts,
                                       open_frames, open_len, open_ts, k, tau, now, recency_scale_s)
    if touch:
        for i in range(hits.shape[0]):
            for j in range(hits.shape[1]):
                h = hits[i, j]
                if 0 <= h < n_rows:  # a long-term row (not an open clip)
                    usage[h] += 1
                    if now > used_ts[h]:
                        used_ts[h] = now
                    if state[h] == ARCHIVED:
                        state[h] = ACTIVATED
    return out.astype(np.float32)


def serve_features(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, n_slots: np.ndarray, state: np.ndarray,
                   write_seq: np.ndarray, n_flash: int, last_ts: np.ndarray, counts: np.ndarray,
                   open_frames: np.ndarray, open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float,
                   now: float, recency_scale_s: float, usage: np.ndarray, used_ts: np.ndarray,
                   touch: bool) -> np.ndarray:
    """:func:`media_features` as serving reads them, in one kernel call: live rows taken from
    ``state (C,) int32`` (activated, merged or archived), and with ``touch`` the retrieval
    counted in place on the long-term rows among the hits (``usage (C,) int64`` += 1 per
    hit, ``used_ts (C,) float64`` raised to ``now``, an archived row re-activated in
    ``state``). Returns the ``(n, 7) float32`` features (float64 cast once)."""
    return _serve_kernel(np.ascontiguousarray(q, np.float32), keys, slots, n_slots, state, write_seq, int(n_flash),
                         last_ts, counts, open_frames, open_len, open_ts, int(k), float(tau), float(now),
                         float(recency_scale_s), usage, used_ts, bool(touch))
