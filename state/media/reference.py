"""Plain-numpy references of the media-memory kernels (the specification the kernels must meet).

Each ``*_ref`` function here is the readable definition of the numba kernel of the same name
without the suffix (:mod:`reloop.state.media.kernels`, :mod:`reloop.state.media.retrieval`); the tests
check every kernel against its reference. Cosines are computed in float64 (by BLAS here,
sequentially in the kernels), so they agree to ~1e-12 and selections (argmax, top-k,
boundaries, the key-only test) are equal unless two candidates tie within that tolerance.
Ties are broken towards the lower index.

:func:`unit_rows` (row normalisation) is used by both sides and by the memory itself.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compress_clip_ref", "fine_vectors", "media_features_ref", "merge_vectors_ref", "most_similar_pair_ref",
           "segment_stream_ref", "topk_cosine_ref", "unit_rows"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``(n, d)`` -> ``(n, d) float32`` C-contiguous rows of unit L2 norm (zero rows stay 0)."""
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    out = np.divide(x64, norms[:, None], out=np.zeros_like(x64), where=norms[:, None] > 0.0)
    return np.ascontiguousarray(out, dtype=np.float32)


def fine_vectors(key: np.ndarray, slots: np.ndarray, n_slots: int) -> np.ndarray:
    """A row's finest vectors: its ``n_slots`` slots, or its key alone when it keeps none."""
    return slots[:n_slots] if n_slots > 0 else key[None, :]


def segment_stream_ref(frames: np.ndarray, open_len: int, min_frames: int, max_frames: int,
                       novelty_cos: float) -> np.ndarray:
    """Reference of :func:`reloop.state.media.kernels.segment_stream` (cosines by ``einsum``)."""
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


def compress_clip_ref(frames: np.ndarray, n_slots: int, iters: int = 4,
                      slot_min_cos: float = 2.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference of :func:`reloop.state.media.kernels.compress_clip`."""
    f64 = np.asarray(frames, dtype=np.float64)
    m = f64.shape[0]
    key = unit_rows(f64.sum(axis=0)[None, :])[0]
    slots = np.zeros((n_slots, f64.shape[1]), dtype=np.float32)
    if (f64 @ key.astype(np.float64)).min() >= slot_min_cos:
        return key, slots, 0
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
    return key, slots, n_slots


def merge_vectors_ref(key_a: np.ndarray, slots_a: np.ndarray, n_a: int, w_a: float, key_b: np.ndarray,
                      slots_b: np.ndarray, n_b: int, w_b: float,
                      slot_min_cos: float = 2.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference of :func:`reloop.state.media.kernels.merge_vectors`."""
    fa = fine_vectors(key_a, slots_a, n_a).astype(np.float64)
    fb = fine_vectors(key_b, slots_b, n_b).astype(np.float64)
    n_max, d = slots_a.shape
    key = unit_rows((w_a * key_a.astype(np.float64) + w_b * key_b.astype(np.float64))[None, :])[0]
    if fa.shape[0] + fb.shape[0] <= n_max:
        fine = np.concatenate((fa, fb)).astype(np.float32)
    else:
        fine = np.zeros((max(fa.shape[0], fb.shape[0]), d), dtype=np.float32)
        fine[: fa.shape[0]] = fa
        sim = fa @ fb.T
        used_b = np.zeros(fb.shape[0], dtype=bool)
        for _ in range(min(fa.shape[0], fb.shape[0])):
            i, j = np.unravel_index(np.argmax(sim), sim.shape)
            fine[i] = unit_rows((w_a * fa[i] + w_b * fb[j])[None, :])[0]
            used_b[j] = True
            sim[i, :] = -np.inf
            sim[:, j] = -np.inf
        rest = fb[~used_b] if fb.shape[0] > fa.shape[0] else np.zeros((0, d))
        fine[fa.shape[0]:] = rest
    slots = np.zeros_like(slots_a, dtype=np.float32)
    if (fine.astype(np.float64) @ key.astype(np.float64)).min() >= slot_min_cos:
        return key, slots, 0
    slots[: fine.shape[0]] = fine
    return key, slots, fine.shape[0]


def most_similar_pair_ref(keys: np.ndarray, eligible: np.ndarray) -> tuple[int, int, float]:
    """Reference of :func:`reloop.state.media.kernels.most_similar_pair` (row-major upper triangle)."""
    k64 = keys.astype(np.float64)
    sim = k64 @ k64.T
    mask = np.triu(np.outer(eligible, eligible), k=1)
    if not mask.any():
        return -1, -1, float("-inf")
    flat = np.where(mask, sim, -np.inf).ravel()
    a, b = divmod(int(np.argmax(flat)), keys.shape[0])
    return a, b, float(flat[a * keys.shape[0] + b])


def topk_cosine_ref(queries: np.ndarray, keys: np.ndarray, k: int,
                    tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference of :func:`reloop.state.media.retrieval.topk_cosine` (stable sort: lower index first)."""
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


def media_features_ref(q: np.ndarray, keys: np.ndarray, slots: np.ndarray, n_slots: np.ndarray, live: np.ndarray,
                       write_seq: np.ndarray, n_flash: int, last_ts: np.ndarray, counts: np.ndarray,
                       open_frames: np.ndarray, open_len: np.ndarray, open_ts: np.ndarray, k: int, tau: float,
                       now: float, recency_scale_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference of :func:`reloop.state.media.retrieval.media_features`."""
    n, C, d = q.shape[0], keys.shape[0], keys.shape[1]
    n_features = 7
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
    fine = [fine_vectors(keys[r], slots[r], int(n_slots[r])) for r in rows]
    fine_flash = [fine_vectors(keys[r], slots[r], int(n_slots[r])) for r in flash]
    slot_bank = np.concatenate(fine + [open_frames_all]).astype(np.float64)
    flash_bank = np.concatenate([keys[flash]] + fine_flash + [open_frames_all]).astype(np.float64)
    out = np.zeros((n, n_features))
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
