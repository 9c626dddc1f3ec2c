"""Numba kernels of the media memory, each beside a plain-numpy reference.

Six operations on unit-norm ``float32`` embeddings (zero rows allowed: their cosine with
anything is 0):

* :func:`segment_stream` -- where the open clip closes in a stream of frames (novelty and
  length rules of IXC2.5-OmniLive's short-term memory);
* :func:`compress_clip` -- a clip's frames -> one key (normalised mean) plus ``S`` slot
  vectors (spherical k-means seeded by temporal chunks);
* :func:`merge_vectors` -- weighted union of two clip memories (key and matched slots);
* :func:`most_similar_pair` -- the pair of eligible clips whose keys are closest (the merge
  search of the long-term store);
* :func:`topk_cosine` -- retrieval: top-``k`` keys by cosine per query plus the
  softmax(``cos / tau``)-weighted cosine over those ``k``;
* :func:`media_features` -- the serving features of candidates against one user's memory
  (retrieval over clip keys and open clips, slot / flash maxima, recency) in one call.

The ``*_ref`` functions are the specification; the tests check the kernels against them.
Dot products are accumulated in float64 in both (sequentially in the kernels, by BLAS in the
references), so cosines agree to ~1e-12 and selections (argmax, top-k, boundaries) are equal
unless two candidates tie within that tolerance. Ties are broken towards the lower index.

All kernels are ``nogil`` and serial: one user's memory is at most a few dozen clips of a few
dozen floats, where thread start-up would cost more than it saves.

Plain helpers of :mod:`state.media_memory` live at the end: :func:`union_recent` (capped
provenance lists), :func:`pack_ids` / :func:`unpack_ids` (id lists as plain arrays for
snapshots) and :class:`ItemContent` (the item content table).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Sequence

import numpy as np
from numba import njit

__all__ = [
    "ItemContent", "N_FEATURES", "media_features", "media_features_ref", "pack_ids", "union_recent", "unpack_ids",
    "compress_clip", "compress_clip_ref", "merge_vectors", "merge_vectors_ref",
    "most_similar_pair", "most_similar_pair_ref", "segment_stream", "segment_stream_ref",
    "topk_cosine", "topk_cosine_ref", "unit_rows",
]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` -> ``(n, d) float32`` C-contiguous rows of unit L2 norm (zero rows stay 0)."""
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    out = np.divide(x64, norms[:, None], out=np.zeros_like(x64), where=norms[:, None] > 0.0)
    return np.ascontiguousarray(out, dtype=np.float32)


@njit(cache=True, nogil=True, inline="always")
def _dot(a: np.ndarray, b: np.ndarray) -> float:
    acc = 0.0
    for t in range(a.shape[0]):
        acc += np.float64(a[t]) * np.float64(b[t])
    return acc


@njit(cache=True, nogil=True, inline="always")
def _normalise_into(acc: np.ndarray, out: np.ndarray) -> None:
    norm = np.sqrt(_dot(acc, acc))
    for t in range(acc.shape[0]):
        out[t] = acc[t] / norm if norm > 0.0 else 0.0


# --------------------------------------------------------------------------- segmentation


@njit(cache=True, nogil=True)
def _segment_stream_kernel(frames: np.ndarray, open_len: int, min_frames: int,
                           max_frames: int, novelty_cos: float) -> np.ndarray:
    n = frames.shape[0]
    cuts = np.empty((n + 1, 2), dtype=np.int64)
    n_cuts = 0
    length = open_len
    for i in range(open_len, n):
        if length >= min_frames and i > 0 and _dot(frames[i - 1], frames[i]) <= novelty_cos:
            cuts[n_cuts, 0] = i  # novelty: the open clip closes before frame i
            cuts[n_cuts, 1] = i
            n_cuts += 1
            length = 0
        length += 1
        if length >= max_frames:
            cuts[n_cuts, 0] = i + 1  # length: the clip closes after frame i
            cuts[n_cuts, 1] = i
            n_cuts += 1
            length = 0
    return cuts[:n_cuts].copy()


def segment_stream(frames: np.ndarray, open_len: int, min_frames: int, max_frames: int,
                   novelty_cos: float) -> np.ndarray:
    """Clip boundaries in a frame stream whose first ``open_len`` frames are the open clip.

    Rule, applied to each new frame ``i >= open_len`` in order: if the open clip has at
    least ``min_frames`` frames and ``cos(frame[i-1], frame[i]) <= novelty_cos``, the clip
    closes before frame ``i``; frame ``i`` is then appended and, if the clip now has
    ``max_frames`` frames, it closes after frame ``i``.

    Args:
        frames: ``(n, d) float32`` unit rows: the open clip's frames, then the new ones.
        open_len: frames of the open clip at the front of ``frames`` (``< max_frames``).
        min_frames, max_frames: clip length bounds (``1 <= min <= max``).
        novelty_cos: a boundary needs consecutive cosine ``<=`` this.

    Returns:
        ``(k, 2) int64``: per closed clip, its end position (exclusive, increasing) and the
        frame whose arrival closed it (``i`` for both rules). Clip ``j`` is
        ``frames[end[j-1]:end[j]]`` (from 0 for the first); frames after the last end form
        the new open clip.
    """
    return _segment_stream_kernel(np.ascontiguousarray(frames, np.float32), int(open_len),
                                  int(min_frames), int(max_frames), float(novelty_cos))


def segment_stream_ref(frames: np.ndarray, open_len: int, min_frames: int, max_frames: int,
                       novelty_cos: float) -> np.ndarray:
    """Numpy reference of :func:`segment_stream` (cosines by ``einsum`` in float64)."""
    f64 = np.asarray(frames, dtype=np.float64)
    cos = np.concatenate(([np.inf], np.einsum("ij,ij->i", f64[:-1], f64[1:])))
    cuts: list[tuple[int, int]] = []
    length = open_len
    for i in range(open_len, f64.shape[0]):
        if length >= min_frames and cos[i] <= novelty_cos:
            cuts.append((i, i))
            length = 0
        length += 1
        if length >= max_frames:
            cuts.append((i + 1, i))
            length = 0
    return np.array(cuts, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------- compression


@njit(cache=True, nogil=True)
def _compress_clip_kernel(frames: np.ndarray, n_slots: int, iters: int) -> tuple[np.ndarray, np.ndarray]:
    m, d = frames.shape
    acc = np.zeros(d, dtype=np.float64)
    for i in range(m):
        for t in range(d):
            acc[t] += frames[i, t]
    key = np.empty(d, dtype=np.float32)
    _normalise_into(acc, key)
    slots = np.empty((n_slots, d), dtype=np.float32)
    for s in range(n_slots):  # seed: mean of the s-th temporal chunk
        lo = (s * m) // n_slots
        hi = max(((s + 1) * m) // n_slots, lo + 1)
        lo = min(lo, m - 1)
        hi = min(hi, m)
        acc[:] = 0.0
        for i in range(lo, hi):
            for t in range(d):
                acc[t] += frames[i, t]
        _normalise_into(acc, slots[s])
    assign = np.zeros(m, dtype=np.int64)
    sums = np.zeros((n_slots, d), dtype=np.float64)
    sizes = np.zeros(n_slots, dtype=np.int64)
    for _ in range(iters):
        for i in range(m):  # assign to the most similar slot (lowest index on ties)
            best, best_cos = 0, -np.inf
            for s in range(n_slots):
                c = _dot(frames[i], slots[s])
                if c > best_cos:
                    best, best_cos = s, c
            assign[i] = best
        sums[:] = 0.0
        sizes[:] = 0
        for i in range(m):
            sizes[assign[i]] += 1
            for t in range(d):
                sums[assign[i], t] += frames[i, t]
        for s in range(n_slots):
            if sizes[s] > 0:  # an empty cluster keeps its previous centre
                _normalise_into(sums[s], slots[s])
    return key, slots


def compress_clip(frames: np.ndarray, n_slots: int, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Compress a clip into a key and ``n_slots`` slot vectors.

    ``key`` is the normalised mean frame. Slots are spherical k-means centres: slot ``s``
    starts as the normalised mean of the ``s``-th of ``n_slots`` equal temporal chunks
    (for 2 slots: first half, second half; a chunk of a too-short clip reuses a frame), then
    ``iters`` Lloyd rounds assign each frame to its most similar slot and re-centre (an
    empty slot keeps its centre). Deterministic.

    Args:
        frames: ``(m, d) float32`` unit rows, ``m >= 1``.

    Returns:
        ``key (d,) float32`` and ``slots (n_slots, d) float32``, unit rows.
    """
    return _compress_clip_kernel(np.ascontiguousarray(frames, np.float32), int(n_slots), int(iters))


def compress_clip_ref(frames: np.ndarray, n_slots: int, iters: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference of :func:`compress_clip`."""
    f64 = np.asarray(frames, dtype=np.float64)
    m = f64.shape[0]
    key = unit_rows(f64.sum(axis=0)[None, :])[0]
    slots = np.empty((n_slots, f64.shape[1]), dtype=np.float32)
    for s in range(n_slots):
        lo = (s * m) // n_slots
        hi = min(max(((s + 1) * m) // n_slots, lo + 1), m)
        lo = min(lo, m - 1)
        slots[s] = unit_rows(f64[lo:hi].sum(axis=0)[None, :])[0]
    for _ in range(iters):
        assign = np.argmax(f64 @ slots.astype(np.float64).T, axis=1)
        for s in range(n_slots):
            if np.any(assign == s):
                slots[s] = unit_rows(f64[assign == s].sum(axis=0)[None, :])[0]
    return key, slots


# --------------------------------------------------------------------------- merge


@njit(cache=True, nogil=True)
def _merge_vectors_kernel(key_a: np.ndarray, slots_a: np.ndarray, w_a: float, key_b: np.ndarray,
                          slots_b: np.ndarray, w_b: float) -> tuple[np.ndarray, np.ndarray]:
    n_slots, d = slots_a.shape
    acc = np.empty(d, dtype=np.float64)
    for t in range(d):
        acc[t] = w_a * key_a[t] + w_b * key_b[t]
    key = np.empty(d, dtype=np.float32)
    _normalise_into(acc, key)
    # greedy matching: repeatedly take the most similar (a-slot, b-slot) pair still free
    used_a = np.zeros(n_slots, dtype=np.bool_)
    used_b = np.zeros(n_slots, dtype=np.bool_)
    slots = np.empty((n_slots, d), dtype=np.float32)
    for _ in range(n_slots):
        best_i, best_j, best_cos = -1, -1, -np.inf
        for i in range(n_slots):
            if used_a[i]:
                continue
            for j in range(n_slots):
                if not used_b[j]:
                    c = _dot(slots_a[i], slots_b[j])
                    if c > best_cos:
                        best_i, best_j, best_cos = i, j, c
        used_a[best_i] = True
        used_b[best_j] = True
        for t in range(d):
            acc[t] = w_a * slots_a[best_i, t] + w_b * slots_b[best_j, t]
        _normalise_into(acc, slots[best_i])
    return key, slots


def merge_vectors(key_a: np.ndarray, slots_a: np.ndarray, w_a: float, key_b: np.ndarray,
                  slots_b: np.ndarray, w_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted union of two clip memories.

    ``key = unit(w_a key_a + w_b key_b)``. Slots are matched greedily (the most similar
    free (a, b) pair first, ties to the lower a then b index) and each matched pair becomes
    ``unit(w_a slot_a + w_b slot_b)`` in slot a's position.

    Args:
        key_a, key_b: ``(d,) float32`` unit keys; slots_a, slots_b: ``(S, d) float32``.
        w_a, w_b: non-negative weights (counts for the merge rule, ``1 - w`` and ``w`` for
            a Titans write of strength ``w``).

    Returns:
        ``key (d,) float32``, ``slots (S, d) float32``.
    """
    return _merge_vectors_kernel(key_a, slots_a, float(w_a), key_b, slots_b, float(w_b))


def merge_vectors_ref(key_a: np.ndarray, slots_a: np.ndarray, w_a: float, key_b: np.ndarray,
                      slots_b: np.ndarray, w_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference of :func:`merge_vectors`."""
    a64, b64 = slots_a.astype(np.float64), slots_b.astype(np.float64)
    key = unit_rows((w_a * key_a.astype(np.float64) + w_b * key_b.astype(np.float64))[None, :])[0]
    sim = a64 @ b64.T
    slots = np.empty_like(slots_a, dtype=np.float32)
    for _ in range(slots_a.shape[0]):
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        slots[i] = unit_rows((w_a * a64[i] + w_b * b64[j])[None, :])[0]
        sim[i, :] = -np.inf
        sim[:, j] = -np.inf
    return key, slots


# --------------------------------------------------------------------------- merge search


@njit(cache=True, nogil=True)
def _most_similar_pair_kernel(keys: np.ndarray, eligible: np.ndarray) -> tuple[int, int, float]:
    best_a, best_b, best_cos = -1, -1, -np.inf
    n = keys.shape[0]
    for a in range(n):
        if not eligible[a]:
            continue
        for b in range(a + 1, n):
            if eligible[b]:
                c = _dot(keys[a], keys[b])
                if c > best_cos:
                    best_a, best_b, best_cos = a, b, c
    return best_a, best_b, best_cos


def most_similar_pair(keys: np.ndarray, eligible: np.ndarray) -> tuple[int, int, float]:
    """The eligible pair ``a < b`` with the largest key cosine (ties: lowest ``(a, b)``).

    Args:
        keys: ``(C, d) float32`` unit rows; eligible: ``(C,) bool``.

    Returns:
        ``(a, b, cos)``; ``(-1, -1, -inf)`` when fewer than two rows are eligible.
    """
    a, b, c = _most_similar_pair_kernel(keys, np.ascontiguousarray(eligible, np.bool_))
    return int(a), int(b), float(c)


def most_similar_pair_ref(keys: np.ndarray, eligible: np.ndarray) -> tuple[int, int, float]:
    """Numpy reference of :func:`most_similar_pair` (row-major scan of the upper triangle)."""
    k64 = keys.astype(np.float64)
    sim = k64 @ k64.T
    mask = np.triu(np.outer(eligible, eligible), k=1)
    if not mask.any():
        return -1, -1, float("-inf")
    flat = np.where(mask, sim, -np.inf).ravel()
    a, b = divmod(int(np.argmax(flat)), keys.shape[0])
    return a, b, float(flat[a * keys.shape[0] + b])


# --------------------------------------------------------------------------- retrieval


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


def topk_cosine_ref(queries: np.ndarray, keys: np.ndarray, k: int,
                    tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`topk_cosine` (stable sort: lower index first on ties)."""
    n, m = queries.shape[0], keys.shape[0]
    sim = queries.astype(np.float64) @ keys.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    top = min(k, m)
    idx = np.full((n, k), -1, dtype=np.int64)
    cos = np.zeros((n, k), dtype=np.float64)
    idx[:, :top] = order
    cos[:, :top] = np.take_along_axis(sim, order, axis=1)
    if top == 0:
        return idx, cos, np.zeros(n)
    w = np.exp((cos[:, :top] - cos[:, :1]) / tau)
    return idx, cos, (w * cos[:, :top]).sum(axis=1) / w.sum(axis=1)


# --------------------------------------------------------------------------- serving features

N_FEATURES = 7  # columns of media_features (see state.media_memory.FEATURE_NAMES)


@njit(cache=True, nogil=True)
def _media_features_kernel(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, live: np.ndarray,
                           write_seq: np.ndarray, n_flash: int, last_ts: np.ndarray, counts: np.ndarray,
                           open_frames: np.ndarray, open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float,
                           now: float, recency_scale_s: float) -> tuple[np.ndarray, np.ndarray]:
    n, d = q.shape
    n_rows, n_slots = slots.shape[0], slots.shape[1]
    flash = np.zeros(n_rows, dtype=np.bool_)
    for _ in range(n_flash):  # the n_flash live rows with the largest write_seq (lowest row on ties)
        best = -1
        for r in range(n_rows):
            if live[r] and not flash[r] and (best < 0 or write_seq[r] > write_seq[best]):
                best = r
        if best >= 0:
            flash[best] = True
    n_live = 0
    for r in range(n_rows):
        n_live += live[r]
    n_units = n_live + (open_len[0] > 0) + (open_len[1] > 0)
    n_open = open_len[0] + open_len[1]
    # columns of the bank: units (live keys, open-clip keys), live slots, open frames
    width = n_units + n_live * n_slots + n_open
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
            for s in range(n_slots):
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


def media_features(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, live: np.ndarray, write_seq: np.ndarray,
                   n_flash: int, last_ts: np.ndarray, counts: np.ndarray, open_frames: np.ndarray,
                   open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float, now: float,
                   recency_scale_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Serving features of ``n`` candidate embeddings against one user's memory.

    Retrievable *units* are the live rows (in row order) and each non-empty open clip (video
    then audio), keyed by its normalised mean frame. Flash rows are the ``n_flash`` live rows
    with the largest ``write_seq`` (lower row first on ties).

    Args:
        q: ``(n, d)`` candidate embeddings (normalised here; a zero row gives a zero row).
        keys ``(C, d)``, slots ``(C, S, d)`` float32 unit rows; live ``(C,) bool``;
        write_seq ``(C,) int64``; last_ts ``(C,) float64`` seconds; counts ``(C,) int64``;
        open_frames ``(2, F, d) float32``, open_len ``(2,) int64``, open_ts ``(2, F) float64``.
        k, tau: retrieval depth and softmax temperature; now, recency_scale_s: seconds.

    Returns:
        ``features (n, 7) float64`` -- max key cosine, softmax-weighted cosine over the top
        ``k``, recency of the best unit, max cosine to any live slot or open frame, max
        cosine to flash keys/slots or open frames, ``log1p(frames)`` of the best unit, known
        flag -- and ``hits (n, k) int64``: the top-``k`` units, best first, as a row index,
        ``C + modality`` for an open clip, or -1.
    """
    return _media_features_kernel(np.ascontiguousarray(q, np.float32), keys, slots, live, write_seq, int(n_flash),
                                  last_ts, counts, open_frames, open_len, open_ts, int(k), float(tau), float(now),
                                  float(recency_scale_s))


def media_features_ref(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, live: np.ndarray, write_seq: np.ndarray,
                       n_flash: int, last_ts: np.ndarray, counts: np.ndarray, open_frames: np.ndarray,
                       open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float, now: float,
                       recency_scale_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference of :func:`media_features`."""
    n, C, d = q.shape[0], keys.shape[0], keys.shape[1]
    rows = np.flatnonzero(live)
    flash = rows[np.argsort(-write_seq[rows], kind="stable")[:n_flash]]
    mods = [m for m in (0, 1) if open_len[m]]
    opens = [open_frames[m, : open_len[m]] for m in mods]
    open_frames_all = np.concatenate(opens) if opens else np.zeros((0, d), np.float32)
    unit_id = np.concatenate((rows, [C + m for m in mods])).astype(np.int64)
    unit_key = np.concatenate([keys[rows], unit_rows(np.array([f.astype(np.float64).sum(axis=0) for f in opens])
                                                     .reshape(-1, d))])
    unit_ts = np.concatenate((last_ts[rows], [open_ts[m, open_len[m] - 1] for m in mods]))
    unit_count = np.concatenate((counts[rows], open_len[mods])).astype(np.float64)
    slot_bank = np.concatenate((slots[rows].reshape(-1, d), open_frames_all)).astype(np.float64)
    flash_bank = np.concatenate((keys[flash], slots[flash].reshape(-1, d), open_frames_all)).astype(np.float64)
    out = np.zeros((n, N_FEATURES))
    hits = np.full((n, k), -1, dtype=np.int64)
    qn = unit_rows(q)
    known = qn.any(axis=1) & (unit_id.size > 0)
    if not known.any():
        return out, hits
    qk = qn[known]
    idx, cos, soft = topk_cosine_ref(qk, unit_key, k, tau)
    top = idx[:, 0]
    out[known, 0] = cos[:, 0]
    out[known, 1] = soft
    out[known, 2] = np.exp(-np.maximum(now - unit_ts[top], 0.0) / recency_scale_s)
    out[known, 3] = (qk.astype(np.float64) @ slot_bank.T).max(axis=1)
    out[known, 4] = (qk.astype(np.float64) @ flash_bank.T).max(axis=1) if flash_bank.shape[0] else 0.0
    out[known, 5] = np.log1p(unit_count[top])
    out[known, 6] = 1.0
    hits[known] = np.where(idx >= 0, unit_id[np.maximum(idx, 0)], -1)
    return out, hits


# --------------------------------------------------------------------------- helpers


def union_recent(old: list[str], new: list[str], cap: int, distinct: bool) -> list[str]:
    """``old + new`` (without repeats when ``distinct``; a repeat moves to the end), last ``cap``."""
    if distinct:
        seen = set(new)
        merged = [x for x in old if x not in seen] + list(dict.fromkeys(new))
    else:
        merged = old + new
    return merged[-cap:]


def pack_ids(per_user: list[list[list[str | None]]], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack the first ``n_users`` users' id lists (``rows`` lists each) into plain arrays.

    Returns ``ids`` (flat str array, ``None`` stored as ``""``, which no valid id is) and
    ``lens (n_users, rows) int64``.
    """
    users = per_user[:n_users]
    rows = len(per_user[0]) if per_user else 0
    flat = ["" if i is None else i for lists in users for ids in lists for i in ids]
    lens = np.array([[len(ids) for ids in lists] for lists in users], dtype=np.int64).reshape(n_users, rows)
    return np.array(flat, dtype=str), lens


def unpack_ids(ids: np.ndarray, lens: np.ndarray) -> list[list[list[str | None]]]:
    """Inverse of :func:`pack_ids`."""
    flat = [None if i == "" else str(i) for i in ids.tolist()]
    out, pos = [], 0
    for row_lens in np.asarray(lens).tolist():
        lists = []
        for n in row_lens:
            lists.append(flat[pos:pos + n])
            pos += n
        out.append(lists)
    if pos != len(flat):
        raise ValueError(f"packed ids hold {len(flat)} ids, lengths say {pos}")
    return out


class ItemContent:
    """Bounded LRU map ``item_id -> latest content embedding``, learned from media events.

    Rows live in one ``(capacity, d) float32`` table (unit rows); a read or write moves the
    item to the most-recently-used end; past ``capacity`` the least recently used is evicted.
    """

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim, self.capacity = int(dim), int(capacity)
        self.table = np.zeros((0, self.dim), dtype=np.float32)  # grows by doubling up to capacity
        self.rows: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def update(self, item_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Store ``(n, d) float32`` unit ``embeddings`` for ``item_ids`` (later rows win)."""
        rows = self.rows
        for item_id, vec in zip(item_ids, embeddings):
            row = rows.get(item_id)
            if row is not None:
                rows.move_to_end(item_id)
            elif len(rows) < self.capacity:
                row = len(rows)
                if row >= self.table.shape[0]:
                    grown = np.zeros((min(self.capacity, max(64, 2 * row)), self.dim), np.float32)
                    grown[:row] = self.table[:row]
                    self.table = grown
                rows[item_id] = row
            else:
                _, row = rows.popitem(last=False)
                rows[item_id] = row
            self.table[row] = vec

    def lookup(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(n, d) float32`` embeddings (zero rows when unknown) and ``(n,) bool`` known flags."""
        rows = self.rows
        idx = np.fromiter((rows.get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
        known = idx >= 0
        for item_id, ok in zip(item_ids, known.tolist()):
            if ok:
                rows.move_to_end(item_id)
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        out[known] = self.table[idx[known]]
        return out, known

    @property
    def nbytes(self) -> int:
        """Bytes of the table plus the id map (strings included)."""
        return int(self.table.nbytes + sys.getsizeof(self.rows) + sum(sys.getsizeof(k) for k in self.rows))

    def snapshot(self) -> dict[str, np.ndarray]:
        """``item_ids`` (str, LRU order, oldest first) and ``item_vectors (n, d) float32``."""
        ids = list(self.rows)
        vectors = self.table[np.array([self.rows[i] for i in ids], dtype=np.int64)].reshape(len(ids), self.dim)
        return {"item_ids": np.array(ids, dtype=str), "item_vectors": vectors}

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        """Replace the contents with a :meth:`snapshot`."""
        self.table = np.zeros((0, self.dim), dtype=np.float32)
        self.rows = OrderedDict()
        ids = [str(i) for i in np.asarray(snap["item_ids"]).tolist()]
        self.update(ids, np.asarray(snap["item_vectors"], np.float32).reshape(len(ids), self.dim))
