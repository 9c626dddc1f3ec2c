"""Numba kernels of the error-memory sketch, each beside a plain-numpy reference.

Three operations on a RACE-style sketch of ``K`` tables x ``2**L`` buckets:

* :func:`simhash_codes` -- SimHash bucket index of each hidden vector in each table;
* :func:`sketch_write` -- add weighted (count, label, base prediction) into buckets, in place;
* :func:`sketch_read` -- per query, the softmax-weighted neighbour label / prediction means
  and the mean decayed count (evidence) over its ``K`` buckets.

The ``*_ref`` functions are the specification; the tests check the kernels against them.

Exactness contract
------------------
* ``simhash_codes`` is **bit-identical** to its reference. Both accumulate each projection
  in float32 with one rounded multiply and one rounded add per feature, sequentially over
  the ``d`` features. The kernel loops over features outside and projections inside (an
  axpy), which LLVM vectorises without reassociating any sum; numba compiles without
  fastmath, so LLVM neither reorders nor contracts ``x * w + acc`` into a fused
  multiply-add (the tests would catch a platform where it did).
* ``sketch_write`` is **bit-identical**: every bucket receives its contributions in the same
  (record) order in both (``np.add.at`` is unbuffered and applies indices in order).
* ``sketch_read`` agrees to **1e-12 relative**, not bitwise: numpy reduces along an axis with
  pairwise summation and uses its own SIMD ``exp``/``log``, whereas the kernel sums the ``K``
  terms sequentially and calls libm; each differs by a few ulp.

All kernels are ``nogil`` and serial (``parallel=False``): request batches are ~100 rows and
the target machine has 2 cores, where thread start-up would cost more than it saves.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "simhash_codes",
    "simhash_codes_ref",
    "simhash_codes_t",
    "sketch_read",
    "sketch_read_ref",
    "sketch_write",
    "sketch_write_ref",
    "transpose_planes",
]


# --------------------------------------------------------------------------- SimHash codes


@njit(cache=True, nogil=True)
def _simhash_codes_kernel(h: np.ndarray, planes_t: np.ndarray, n_bits: int) -> np.ndarray:
    n, d = h.shape
    m = planes_t.shape[1]
    n_tables = m // n_bits
    codes = np.empty((n, n_tables), dtype=np.int32)
    acc = np.empty(m, dtype=np.float32)
    for i in range(n):
        acc[:] = 0.0
        for t in range(d):  # axpy over all K*L projections: vectorised, order kept
            x = h[i, t]
            for c in range(m):
                acc[c] += x * planes_t[t, c]
        for k in range(n_tables):
            code = 0
            for j in range(n_bits):
                if acc[k * n_bits + j] > 0.0:
                    code |= 1 << j
            codes[i, k] = code
    return codes


def transpose_planes(planes: np.ndarray) -> np.ndarray:
    """``(K, L, d) float32`` planes -> ``(d, K*L) float32`` C-contiguous (kernel layout)."""
    n_tables, n_bits, d = planes.shape
    return np.ascontiguousarray(planes.reshape(n_tables * n_bits, d).T, dtype=np.float32)


def simhash_codes_t(h: np.ndarray, planes_t: np.ndarray, n_bits: int) -> np.ndarray:
    """:func:`simhash_codes` on pre-transposed planes (see :func:`transpose_planes`)."""
    return _simhash_codes_kernel(h, planes_t, n_bits)


def simhash_codes(h: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """SimHash bucket codes: bit ``j`` of table ``k`` is ``h . planes[k, j] > 0``.

    The dot product is accumulated in float32, sequentially over the ``d`` features.

    Args:
        h: ``(n, d) float32`` hidden representations (C-contiguous).
        planes: ``(K, L, d) float32`` random hyperplane normals.

    Returns:
        ``(n, K) int32`` codes in ``[0, 2**L)``.
    """
    return _simhash_codes_kernel(h, transpose_planes(planes), planes.shape[1])


def simhash_codes_ref(h: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Numpy reference of :func:`simhash_codes` (same float32 ops in the same order)."""
    n, d = h.shape
    n_tables, n_bits, _ = planes.shape
    h32 = h.astype(np.float32)
    planes32 = planes.astype(np.float32)
    proj = np.zeros((n, n_tables, n_bits), dtype=np.float32)
    for t in range(d):  # sequential over features, like the kernel
        proj += h32[:, t, None, None] * planes32[None, :, :, t]
    bits = (proj > 0.0).astype(np.int64)
    weights = np.left_shift(np.int64(1), np.arange(n_bits, dtype=np.int64))
    return (bits * weights).sum(axis=2).astype(np.int32)


# --------------------------------------------------------------------------- write


@njit(cache=True, nogil=True)
def _sketch_write_kernel(
    codes: np.ndarray,
    weights: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    buckets: np.ndarray,
) -> None:
    # Table by table, records inside: one table's buckets (2**16 x 24 B = 1.5 MB at the
    # default size) stay in cache while its n updates land, instead of 64 tables' worth of
    # random lines per record. A bucket's three sums are adjacent (one cache line) and the
    # block is C-contiguous: numba indexes it without strides (2.3x the same loop over three
    # strided views, measured at 2**16 buckets). Each bucket still receives its contributions
    # in record order (bit-identical to the reference).
    n, n_tables = codes.shape
    wy = np.empty(n, dtype=np.float64)
    wp = np.empty(n, dtype=np.float64)
    for i in range(n):
        wy[i] = weights[i] * y[i]
        wp[i] = weights[i] * p[i]
    col = np.empty(n, dtype=np.int64)
    for k in range(n_tables):
        for i in range(n):  # gather the table's column first: sequential reads of codes
            col[i] = codes[i, k]
        table = buckets[k]
        for i in range(n):
            b = col[i]
            table[b, 0] += weights[i]
            table[b, 1] += wy[i]
            table[b, 2] += wp[i]


def sketch_write(
    codes: np.ndarray,
    weights: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    buckets: np.ndarray,
) -> None:
    """Add records into the sketch in place.

    For each record ``i`` and table ``k``, bucket ``b = codes[i, k]`` gets ``count += w``,
    ``sum_y += w * y``, ``sum_p += w * p`` with ``w = weights[i]``.

    Args:
        codes: ``(n, K) int32`` bucket codes, each in ``[0, 2**L)`` (not checked here).
        weights: ``(n,) float64`` forward-decay weights.
        y: ``(n,) float64`` labels.
        p: ``(n,) float64`` base predictions.
        buckets: ``(K, 2**L, 3) float64`` C-contiguous sketch block (count, sum_y, sum_p per
            bucket), updated in place.
    """
    _check_block(buckets)
    _sketch_write_kernel(codes, weights, y, p, buckets)


def _check_block(buckets: np.ndarray) -> None:
    if buckets.ndim != 3 or buckets.shape[2] != 3 or buckets.dtype != np.float64 \
            or not buckets.flags.c_contiguous:
        raise ValueError(f"sketch block must be C-contiguous float64 (K, B, 3), got {buckets.dtype} "
                         f"{buckets.shape}")


def sketch_write_ref(
    codes: np.ndarray,
    weights: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    buckets: np.ndarray,
) -> None:
    """Numpy reference of :func:`sketch_write` (``np.add.at``, record order per bucket)."""
    wy = weights * y
    wp = weights * p
    for k in range(codes.shape[1]):
        np.add.at(buckets[k, :, 0], codes[:, k], weights)
        np.add.at(buckets[k, :, 1], codes[:, k], wy)
        np.add.at(buckets[k, :, 2], codes[:, k], wp)


# --------------------------------------------------------------------------- read


@njit(cache=True, nogil=True)
def _sketch_read_kernel(
    codes: np.ndarray,
    buckets: np.ndarray,
    scale: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, n_tables = codes.shape
    y_bar = np.zeros(n, dtype=np.float64)
    p_bar = np.zeros(n, dtype=np.float64)
    evidence = np.zeros(n, dtype=np.float64)
    decayed = np.empty(n_tables, dtype=np.float64)
    inv_tau = 1.0 / tau
    for i in range(n):
        # pass 1: decayed counts, evidence, largest decayed count
        total = 0.0
        c_max = 0.0
        for k in range(n_tables):
            c = buckets[k, codes[i, k], 0] * scale
            decayed[k] = c
            if c > 0.0:
                total += c
                if c > c_max:
                    c_max = c
        evidence[i] = total / n_tables
        if c_max <= 0.0:
            continue
        # pass 2: softmax over log(c) / tau, i.e. weights (c / c_max) ** (1 / tau)
        w_sum = 0.0
        wy_sum = 0.0
        wp_sum = 0.0
        for k in range(n_tables):
            c = decayed[k]
            if c > 0.0:
                if inv_tau == 1.0:
                    w = c / c_max
                else:
                    w = np.exp(np.log(c / c_max) * inv_tau)
                b = codes[i, k]
                c_raw = buckets[k, b, 0]
                w_sum += w
                wy_sum += w * (buckets[k, b, 1] / c_raw)
                wp_sum += w * (buckets[k, b, 2] / c_raw)
        y_bar[i] = wy_sum / w_sum
        p_bar[i] = wp_sum / w_sum
    return y_bar, p_bar, evidence


def sketch_read(
    codes: np.ndarray,
    buckets: np.ndarray,
    scale: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the ``K`` buckets of each query and pool them.

    A bucket is non-empty when its decayed count ``c_k = counts * scale`` is ``> 0``. Its
    neighbour estimates are ``y_k = sum_y / counts`` and ``p_k = sum_p / counts`` (the decay
    scale cancels), pooled with weights ``exp(log(c_k) / tau) = c_k ** (1 / tau)`` normalised
    over the non-empty buckets (computed relative to the largest for stability).

    Args:
        codes: ``(n, K) int32`` query codes, each in ``[0, 2**L)`` (not checked here).
        buckets: ``(K, 2**L, 3) float64`` C-contiguous sketch block (count, sum_y, sum_p;
            landmark-weighted).
        scale: decay from the landmark to the query time, ``exp(-(now - t0) / T)``.
        tau: softmax temperature (> 0).

    Returns:
        ``(y_bar, p_bar, evidence)``, each ``(n,) float64``. ``evidence`` is the mean
        decayed count over the ``K`` buckets (empty ones count 0); where it is 0, ``y_bar``
        and ``p_bar`` are 0 and carry no information.
    """
    _check_block(buckets)
    return _sketch_read_kernel(codes, buckets, float(scale), float(tau))


def sketch_read_ref(
    codes: np.ndarray,
    buckets: np.ndarray,
    scale: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Numpy reference of :func:`sketch_read` (agrees to 1e-12 relative)."""
    counts, sum_y, sum_p = buckets[:, :, 0], buckets[:, :, 1], buckets[:, :, 2]
    n_tables = codes.shape[1]
    table = np.arange(n_tables)[None, :]
    c_raw = counts[table, codes]  # (n, K)
    c = c_raw * scale
    nonempty = c > 0.0
    evidence = np.where(nonempty, c, 0.0).sum(axis=1) / n_tables
    safe_c = np.where(nonempty, c, 1.0)
    log_c = np.where(nonempty, np.log(safe_c), -np.inf)
    max_log = log_c.max(axis=1, keepdims=True)
    any_nonempty = nonempty.any(axis=1)
    max_log = np.where(any_nonempty[:, None], max_log, 0.0)
    w = np.where(nonempty, np.exp((log_c - max_log) / tau), 0.0)
    safe_raw = np.where(nonempty, c_raw, 1.0)
    y_k = sum_y[table, codes] / safe_raw
    p_k = sum_p[table, codes] / safe_raw
    w_sum = w.sum(axis=1)
    safe_w_sum = np.where(any_nonempty, w_sum, 1.0)
    y_bar = np.where(any_nonempty, (w * y_k).sum(axis=1) / safe_w_sum, 0.0)
    p_bar = np.where(any_nonempty, (w * p_k).sum(axis=1) / safe_w_sum, 0.0)
    return y_bar, p_bar, evidence

