"""The ``memory`` topic's record: a batch of error-memory writes in a compact binary form.

The per-record JSON ``errors`` topic costs a replica ~20 us per record to read back (decode,
validate, build objects); every worker applies every write of the cluster, so that cost
capped the cluster at one core's worth of records. A :class:`MemoryBatch` carries the rows a
worker wrote for one scored batch (one user partition) as arrays, so a replica's cost per row
is a few numpy operations and the sketch kernel's:

========== ==================== =====================================================
field       wire form            meaning
========== ==================== =====================================================
``codes``   ``(n, K) <u4``       error-memory bucket of each row in each table
``y``       ``(n,) <f8``         label
``p``       ``(n,) <f8``         base prediction (the slow model's)
``ts``      ``(n,) <f8``         event time of the prediction, seconds
``version`` ``(n,) <u2``         index into ``versions`` (model versions that scored)
``keys``    ``(n,) <u8``         ``stable_key(error_id)`` (only when sampled, else empty)
``rows``    msgpack              ``[(user_id, item_id, features), ...]``: read only to re-key
                                 rows under a new model (rare); never on the write path
========== ==================== =====================================================

The envelope is msgpack (one small struct, arrays as ``bin``), so a record decodes with one
call; ``batch_id`` (16 bytes of blake2b over the rows' error ids) identifies the batch, so a
replica drops the byte-identical copy a crashed worker produces again on restart.

``sample`` is the write rate the producer applied (``error_memory.write_sample``, the
cluster-wide write budget): rows whose key hashes above it were not sent at all.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import msgspec
import numpy as np

__all__ = ["MEMORY_BATCH_FORMAT", "MAX_ROWS", "MemoryBatch", "InvalidMemoryBatch", "decode_batch", "encode_rows"]

MEMORY_BATCH_FORMAT = 1
#: Rows per record at most: 4,096 rows x 64 codes ~ 1.2 MB, under the producer's request limit.
MAX_ROWS = 4096

_CODE = np.dtype("<u4")
_F8 = np.dtype("<f8")
_U2 = np.dtype("<u2")
_U8 = np.dtype("<u8")


class InvalidMemoryBatch(ValueError):
    """A ``memory`` record that is not a well-formed :class:`MemoryBatch`."""


class MemoryBatch(msgspec.Struct, array_like=True, frozen=True):
    """One ``memory`` record (wire form; use :func:`decode_batch` to get checked arrays)."""

    format: int
    batch_id: bytes
    n: int
    k: int
    sample: float
    versions: list[str]
    version: bytes
    codes: bytes
    y: bytes
    p: bytes
    ts: bytes
    keys: bytes
    rows: bytes

    # ---- arrays (views of the record's bytes, no copies) ----------------------------------
    def codes_array(self) -> np.ndarray:
        """``(n, K) uint32`` bucket codes."""
        return np.frombuffer(self.codes, _CODE).reshape(self.n, self.k)

    def y_array(self) -> np.ndarray:
        return np.frombuffer(self.y, _F8)

    def p_array(self) -> np.ndarray:
        return np.frombuffer(self.p, _F8)

    def ts_array(self) -> np.ndarray:
        return np.frombuffer(self.ts, _F8)

    def version_array(self) -> np.ndarray:
        """``(n,) uint16`` index of each row's model version in :attr:`versions`."""
        return np.frombuffer(self.version, _U2)

    def keys_array(self) -> np.ndarray | None:
        """``(n,) uint64`` per-row keys, or None when the batch was not sampled."""
        return np.frombuffer(self.keys, _U8) if self.keys else None

    def row_list(self) -> list[tuple[str, str, dict]]:
        """``(user_id, item_id, features)`` per row (decodes the msgpack part: re-keying only)."""
        return [tuple(r) for r in msgspec.msgpack.decode(self.rows)]  # type: ignore[misc]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(MemoryBatch)


def batch_id(error_ids: Sequence[str]) -> bytes:
    """16-byte identity of a batch: blake2b over its error ids (NUL-separated, in order)."""
    return hashlib.blake2b("\0".join(error_ids).encode("utf-8"), digest_size=16).digest()


def encode_rows(*, error_ids: Sequence[str], codes: np.ndarray, y: np.ndarray, p: np.ndarray, ts: np.ndarray,
                versions: Sequence[str], rows: Sequence[tuple[str, str, dict]],
                keys: np.ndarray | None = None, sample: float = 1.0) -> bytes:
    """Wire bytes of one batch of ``n`` rows (n <= :data:`MAX_ROWS`).

    Args:
        error_ids: ``n`` error ids (the batch's identity is their hash).
        codes: ``(n, K)`` integer codes in ``[0, 2**32)``.
        y, p, ts: ``(n,)`` labels, base predictions, event times (s).
        versions: ``n`` model version strings (stored as a table + per-row index).
        rows: ``n`` ``(user_id, item_id, features)`` for re-keying.
        keys: ``(n,) uint64`` stable keys (sent when the producer sampled; None = not sent).
        sample: the write rate the producer applied, in (0, 1].
    """
    n = len(error_ids)
    c = np.ascontiguousarray(codes, dtype=_CODE)
    if c.ndim != 2 or c.shape[0] != n:
        raise ValueError(f"codes must be ({n}, K), got {c.shape}")
    table: dict[str, int] = {}
    index = np.fromiter((table.setdefault(v, len(table)) for v in versions), _U2, n)
    return _ENCODER.encode(MemoryBatch(
        MEMORY_BATCH_FORMAT, batch_id(error_ids), n, int(c.shape[1]), float(sample), list(table),
        index.tobytes(), c.tobytes(), np.ascontiguousarray(y, _F8).tobytes(),
        np.ascontiguousarray(p, _F8).tobytes(), np.ascontiguousarray(ts, _F8).tobytes(),
        b"" if keys is None else np.ascontiguousarray(keys, _U8).tobytes(),
        _ENCODER.encode(list(rows))))


def decode_batch(raw: bytes, max_ts: float | None = None) -> MemoryBatch:
    """Decode and check one ``memory`` record (sizes, value ranges, version indices).

    Args:
        max_ts: latest event time a row may carry (the event-time policy: the wall clock plus
            ``limits.max_future_s``); None = unchecked.

    Raises:
        InvalidMemoryBatch: anything malformed (the caller dead-letters or skips it).
    """
    try:
        b = _DECODER.decode(raw)
    except Exception as exc:  # noqa: BLE001 - any failure on one record is that record's fault
        raise InvalidMemoryBatch(f"undecodable memory batch: {type(exc).__name__}: {str(exc)[:300]}") from None
    if b.format != MEMORY_BATCH_FORMAT:
        raise InvalidMemoryBatch(f"unsupported memory batch format {b.format}")
    n, k = b.n, b.k
    if not (0 <= n <= 1 << 20 and 0 <= k <= 4096 and 0.0 < b.sample <= 1.0 and len(b.batch_id) == 16):
        raise InvalidMemoryBatch(f"bad header: n={n} k={k} sample={b.sample}")
    sizes = {"codes": (len(b.codes), 4 * n * k), "y": (len(b.y), 8 * n), "p": (len(b.p), 8 * n),
             "ts": (len(b.ts), 8 * n), "version": (len(b.version), 2 * n)}
    if b.keys:
        sizes["keys"] = (len(b.keys), 8 * n)
    bad = [name for name, (got, want) in sizes.items() if got != want]
    if bad:
        raise InvalidMemoryBatch(f"wrong array sizes for {bad} (n={n}, k={k})")
    if n and (not b.versions or int(b.version_array().max()) >= len(b.versions)):
        raise InvalidMemoryBatch("row version index out of range")
    y, p, ts = b.y_array(), b.p_array(), b.ts_array()
    if not (np.isfinite(y).all() and np.isfinite(p).all() and np.isfinite(ts).all()):
        raise InvalidMemoryBatch("non-finite label, prediction or time")
    if n and not (((y == 0.0) | (y == 1.0)).all() and p.min() >= 0.0 and p.max() <= 1.0 and ts.min() >= 0.0):
        raise InvalidMemoryBatch("label not 0/1, prediction outside [0, 1] or negative time")
    if n and max_ts is not None and float(ts.max()) > max_ts:
        raise InvalidMemoryBatch(f"event time {float(ts.max())} is ahead of the wall clock (limit {max_ts:.0f})")
    return b
