"""Numba kernels of the media memory's write path, each specified by a numpy reference.

* :func:`segment_stream` -- where the open clip closes in a stream of frames (novelty and
  length rules of IXC2.5-OmniLive's short-term memory);
* :func:`compress_clip` -- a clip's frames -> one key (normalised mean) plus, only when the
  key does not cover the frames, ``S`` slot vectors (spherical k-means seeded by temporal
  chunks);
* :func:`merge_vectors` -- weighted union of two memory rows (key, and their finest vectors
  kept side by side while they fit in ``S`` slots, matched and blended beyond);
* :func:`most_similar_pair` -- the pair of eligible rows whose keys are closest (the merge
  search of the long-term store).

The serving kernels (:func:`topk_cosine`, :func:`media_features`) live in
:mod:`reloop.state.media.retrieval`; the references in :mod:`reloop.state.media.reference` (re-exported here
for the tests' convenience). Embeddings are unit-norm ``float32`` rows (zero rows allowed:
their cosine with anything is 0); dot products are accumulated in float64. All kernels are
``nogil`` and serial: one user's memory is a few dozen rows of a few dozen floats, where
thread start-up would cost more than it saves.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from reloop.state.media.jit import dot as _dot
from reloop.state.media.jit import normalise_into as _normalise_into
from reloop.state.media.reference import (compress_clip_ref, merge_vectors_ref, most_similar_pair_ref, segment_stream_ref,
                                unit_rows)
from reloop.state.media.retrieval import media_features, topk_cosine

__all__ = ["ALWAYS_SLOTS", "compress_clip", "compress_clip_ref", "media_features", "merge_vectors", "merge_vectors_ref",
           "most_similar_pair", "most_similar_pair_ref", "segment_stream", "segment_stream_ref", "topk_cosine",
           "unit_rows"]

#: ``slot_min_cos`` that keeps every row's ``S`` slots (no cosine exceeds it).
ALWAYS_SLOTS = 2.0


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


# --------------------------------------------------------------------------- compression


@njit(cache=True, nogil=True)
def _compress_clip_kernel(frames: np.ndarray, n_slots: int, iters: int,
                          slot_min_cos: float) -> tuple[np.ndarray, np.ndarray, int]:
    m, d = frames.shape
    acc = np.zeros(d, dtype=np.float64)
    for i in range(m):
        for t in range(d):
            acc[t] += frames[i, t]
    key = np.empty(d, dtype=np.float32)
    _normalise_into(acc, key)
    slots = np.zeros((n_slots, d), dtype=np.float32)
    covered = True
    for i in range(m):
        if _dot(frames[i], key) < slot_min_cos:
            covered = False
            break
    if covered:
        return key, slots, 0
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
    return key, slots, n_slots


def compress_clip(frames: np.ndarray, n_slots: int, iters: int = 4,
                  slot_min_cos: float = ALWAYS_SLOTS) -> tuple[np.ndarray, np.ndarray, int]:
    """Compress a clip into a key and, when the key does not cover it, ``n_slots`` slot vectors.

    ``key`` is the normalised mean frame. If every frame has cosine ``>= slot_min_cos``
    with the key, the key alone represents the clip (zero slots returned, count 0).
    Otherwise slots are spherical k-means centres: slot ``s`` starts as the normalised mean
    of the ``s``-th of ``n_slots`` equal temporal chunks (for 2 slots: first half, second
    half; a chunk of a too-short clip reuses a frame), then ``iters`` Lloyd rounds assign
    each frame to its most similar slot and re-centre (an empty slot keeps its centre).
    Deterministic.

    Args:
        frames: ``(m, d) float32`` unit rows, ``m >= 1``.
        slot_min_cos: coverage threshold; the default (2.0) always keeps the slots.

    Returns:
        ``key (d,) float32``, ``slots (n_slots, d) float32`` (unit rows, or zeros) and the
        number of slots kept (0 or ``n_slots``).
    """
    key, slots, n = _compress_clip_kernel(np.ascontiguousarray(frames, np.float32), int(n_slots), int(iters),
                                          float(slot_min_cos))
    return key, slots, int(n)


# --------------------------------------------------------------------------- merge


@njit(cache=True, nogil=True)
def _merge_vectors_kernel(key_a: np.ndarray, slots_a: np.ndarray, n_a: int, w_a: float, key_b: np.ndarray,
                          slots_b: np.ndarray, n_b: int, w_b: float,
                          slot_min_cos: float) -> tuple[np.ndarray, np.ndarray, int]:
    n_max, d = slots_a.shape
    fa = slots_a[:n_a] if n_a > 0 else key_a.reshape(1, d)
    fb = slots_b[:n_b] if n_b > 0 else key_b.reshape(1, d)
    la, lb = fa.shape[0], fb.shape[0]
    acc = np.empty(d, dtype=np.float64)
    for t in range(d):
        acc[t] = w_a * key_a[t] + w_b * key_b[t]
    key = np.empty(d, dtype=np.float32)
    _normalise_into(acc, key)
    n_fine = la + lb if la + lb <= n_max else max(la, lb)
    fine = np.zeros((n_fine, d), dtype=np.float32)
    fine[:la] = fa
    if la + lb <= n_max:  # both fit: keep every vector as it is
        fine[la:] = fb
    else:  # greedy matching: repeatedly blend the most similar (a, b) pair still free
        used_a = np.zeros(la, dtype=np.bool_)
        used_b = np.zeros(lb, dtype=np.bool_)
        for _ in range(min(la, lb)):
            best_i, best_j, best_cos = -1, -1, -np.inf
            for i in range(la):
                if used_a[i]:
                    continue
                for j in range(lb):
                    if not used_b[j]:
                        c = _dot(fa[i], fb[j])
                        if c > best_cos:
                            best_i, best_j, best_cos = i, j, c
            used_a[best_i] = True
            used_b[best_j] = True
            for t in range(d):
                acc[t] = w_a * fa[best_i, t] + w_b * fb[best_j, t]
            _normalise_into(acc, fine[best_i])
        pos = la
        for j in range(lb):  # b's unmatched vectors (only when b had more), in order
            if not used_b[j]:
                fine[pos] = fb[j]
                pos += 1
    slots = np.zeros((n_max, d), dtype=np.float32)
    covered = True
    for i in range(n_fine):
        if _dot(fine[i], key) < slot_min_cos:
            covered = False
            break
    if covered:
        return key, slots, 0
    slots[:n_fine] = fine
    return key, slots, n_fine


def merge_vectors(key_a: np.ndarray, slots_a: np.ndarray, n_a: int, w_a: float, key_b: np.ndarray,
                  slots_b: np.ndarray, n_b: int, w_b: float,
                  slot_min_cos: float = ALWAYS_SLOTS) -> tuple[np.ndarray, np.ndarray, int]:
    """Weighted union of two memory rows.

    ``key = unit(w_a key_a + w_b key_b)``. Each row's *finest vectors* are its ``n`` slots,
    or its key when ``n == 0``. If both rows' fit in ``S`` slots they are kept side by
    side (a's, then b's); otherwise they are matched greedily (the most similar free
    (a, b) pair first, ties to the lower a then b index), each pair becomes ``unit(w_a
    v_a + w_b v_b)`` in a's position and b's unmatched vectors follow in order. If every
    resulting vector has cosine ``>= slot_min_cos`` with the key, the row keeps the key
    alone. With ``n_a == n_b == S`` this is the plain slot-matching merge.

    Args:
        key_a, key_b: ``(d,) float32`` unit keys; slots_a, slots_b: ``(S, d) float32``;
        n_a, n_b: slots in use (``0..S``); w_a, w_b: non-negative weights (counts for the
            merge rule, ``1 - w`` and ``w`` for a Titans write of strength ``w``);
        slot_min_cos: coverage threshold (the default keeps every slot).

    Returns:
        ``key (d,) float32``, ``slots (S, d) float32`` (unused rows zero), slots in use.
    """
    key, slots, n = _merge_vectors_kernel(key_a, slots_a, int(n_a), float(w_a), key_b, slots_b, int(n_b),
                                          float(w_b), float(slot_min_cos))
    return key, slots, int(n)


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
