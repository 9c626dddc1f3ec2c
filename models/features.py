"""Feature encoding for the slow model: hashed categorical tokens plus dense columns.

A row is ``(user_id, item_id, features)`` where ``features`` maps a feature name to a
categorical value (``str``) or a dense value (``float``/``int``), as carried by the events in
:mod:`reloop.streams.events` (the caller merges request-level and candidate-level features).

Tokens
    ``"user_id=<u>"``, ``"item_id=<i>"``, then one ``"name=value"`` per categorical feature in
    ascending order of ``name``; the list is truncated to ``max_tokens`` (so the alphabetically
    last categoricals are dropped first; user and item always survive) and right-padded with
    ``0``. A token string is hashed with ``zlib.crc32`` of its UTF-8 bytes, which is stable
    across processes, machines and Python versions (unlike ``hash()``):
    ``id = crc32(token) % (n_buckets - 1) + 1``, so ids lie in ``[1, n_buckets)`` and ``0`` is
    reserved for padding.

Dense
    One float32 column per name in ``dense_names`` (in that order). A missing name, or a name
    whose value in this row is a ``str``, gives ``0.0``; a ``str`` value is then encoded as a
    categorical token instead. Numeric features not listed in ``dense_names`` are ignored.

The ONNX model always has at least one dense input column (``FeatureSpec.dense_width``): when
``dense_names`` is empty the encoder returns ``(n, 0)`` and the model/scorer add one constant
zero column themselves, so no tensor ever has a zero-sized feature axis.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

import msgspec
import numpy as np

__all__ = ["FeatureSpec", "FeatureEncoder", "Row", "token_id", "check_inputs", "pad_dense", "DEFAULT_CACHE_SIZE"]

#: One input row: ``(user_id, item_id, features)``.
Row = tuple[str, str, Mapping[str, Union[str, float]]]

#: Default bound on the token-id cache (entries); the cache is cleared when it is full.
DEFAULT_CACHE_SIZE = 200_000


class FeatureSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What the model's inputs are: hash space, token budget and dense column names.

    Attributes:
        n_buckets: size of the hashed id space (embedding rows), including padding id 0.
        max_tokens: tokens per row ``T`` (user + item + categoricals), padded/truncated.
        dense_names: names of the dense (numeric) input columns, in column order.
    """

    n_buckets: int = 2**18
    max_tokens: int = 16
    dense_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {self.n_buckets}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2 (user and item), got {self.max_tokens}")
        if len(set(self.dense_names)) != len(self.dense_names):
            raise ValueError(f"dense_names has duplicates: {self.dense_names}")

    @property
    def n_dense(self) -> int:
        """Number of real dense columns ``D`` (may be 0)."""
        return len(self.dense_names)

    @property
    def dense_width(self) -> int:
        """Width of the model's dense input: ``max(1, D)`` (a zero pad column when D == 0)."""
        return max(1, len(self.dense_names))

    @classmethod
    def infer(
        cls,
        rows: Iterable[Row],
        *,
        n_buckets: int = 2**18,
        max_tokens: int = 16,
    ) -> FeatureSpec:
        """Build a spec whose ``dense_names`` are the sorted names of numeric features in ``rows``.

        A feature counts as numeric if it has an ``int``/``float`` (not ``bool``) value in at
        least one row.
        """
        numeric: set[str] = set()
        for _user, _item, features in rows:
            for name, value in features.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    numeric.add(name)
        return cls(n_buckets=n_buckets, max_tokens=max_tokens, dense_names=tuple(sorted(numeric)))


def token_id(token: str, n_buckets: int) -> int:
    """Stable id of one token string in ``[1, n_buckets)``: ``crc32(utf8) % (n_buckets-1) + 1``."""
    return zlib.crc32(token.encode("utf-8")) % (n_buckets - 1) + 1


class FeatureEncoder:
    """Turns rows into ``(tokens, dense)`` arrays for :class:`reloop.models.ctr.CTRModel`.

    Token ids are memoised: ``user_id`` and ``item_id`` values in one dict each (keyed by the
    id string), other categoricals in a dict keyed by the ``(name, value)`` pair; together they
    are bounded to ``cache_size`` entries (all cleared when full), so re-encoding the same
    users/items/features is a dict lookup. Not thread-safe (the caches are mutated); use one
    encoder per thread.
    """

    def __init__(self, spec: FeatureSpec, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.spec = spec
        self._cache_size = int(cache_size)
        self._cache: dict[tuple[str, str], int] = {}
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._dense_index: dict[str, int] = {name: j for j, name in enumerate(spec.dense_names)}

    @property
    def cache_len(self) -> int:
        """Number of memoised token ids."""
        return len(self._cache) + len(self._users) + len(self._items)

    def _hash(self, name: str, value: str) -> int:
        return zlib.crc32(f"{name}={value}".encode("utf-8")) % (self.spec.n_buckets - 1) + 1

    def _id(self, name: str, value: str) -> int:
        key = (name, value)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        self._make_room()
        tid = self._cache[key] = self._hash(name, value)
        return tid

    def _make_room(self) -> None:
        """Clear every cache when together they hold ``cache_size`` entries."""
        if self.cache_len >= self._cache_size:
            for c in (self._cache, self._users, self._items):
                c.clear()

    def _id_of(self, cache: dict[str, int], name: str, value: str) -> int:
        """Id of ``name=value`` memoised in the per-field ``cache`` (user or item ids)."""
        self._make_room()
        tid = cache[value] = self._hash(name, value)
        return tid

    def encode(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray]:
        """Encode rows.

        Args:
            rows: ``(user_id, item_id, features)`` triples.

        Returns:
            ``tokens``: ``(n, T)`` int64, ids in ``[0, n_buckets)``, 0 = padding (only at the
            end of a row); ``dense``: ``(n, D)`` float32 with ``D = len(dense_names)``.
        """
        spec = self.spec
        width = spec.max_tokens
        n_dense = spec.n_dense
        dense_index = self._dense_index
        cache, users, items = self._cache, self._users, self._items
        lookup, lookup_of = self._id, self._id_of
        n = len(rows)
        flat_tokens: list[int] = [0] * (n * width)
        flat_dense: list[float] = [0.0] * (n * n_dense)
        for r, (user_id, item_id, features) in enumerate(rows):
            ids = [users.get(user_id) or lookup_of(users, "user_id", user_id),
                   items.get(item_id) or lookup_of(items, "item_id", item_id)]
            if features:
                # One pass over the dict: dense values go straight to their column, the
                # (name, value) pairs of categoricals are collected and only they are sorted
                # (names are unique, so sorting the pairs sorts by name); the pair is the
                # cache key as is.
                base = r * n_dense
                cats = []
                for pair in features.items():
                    value = pair[1]
                    vt = type(value)
                    if vt is float:
                        if n_dense:
                            j = dense_index.get(pair[0])
                            if j is not None:
                                flat_dense[base + j] = value
                    elif vt is str or isinstance(value, str):
                        cats.append(pair)
                    elif value is not None and n_dense:
                        j = dense_index.get(pair[0])
                        if j is not None:
                            flat_dense[base + j] = float(value)
                if cats:
                    cats.sort()
                    for pair in cats:
                        ids.append(cache.get(pair) or lookup(pair[0], pair[1]))
            off = r * width
            if len(ids) >= width:
                flat_tokens[off:off + width] = ids[:width]
            else:
                flat_tokens[off:off + len(ids)] = ids
        tokens = np.array(flat_tokens, dtype=np.int64).reshape(n, width)
        dense = np.array(flat_dense, dtype=np.float32).reshape(n, n_dense)
        return tokens, dense


def check_inputs(
    tokens: np.ndarray, dense: np.ndarray, spec: FeatureSpec, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise model inputs.

    Returns ``tokens`` ``(n, T)`` int64 and ``dense`` ``(n, D)`` float32 (contiguous).

    Raises:
        ValueError: on a wrong shape or a token id outside ``[0, n_buckets)``.
    """
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    if tokens.ndim != 2 or tokens.shape[1] != spec.max_tokens:
        raise ValueError(f"tokens must be (n, {spec.max_tokens}), got {tokens.shape}")
    if dense.ndim != 2 or dense.shape[0] != tokens.shape[0] or dense.shape[1] not in (spec.n_dense, spec.dense_width):
        raise ValueError(f"dense must be ({tokens.shape[0]}, {spec.n_dense}), got {dense.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= spec.n_buckets):
        raise ValueError(f"token ids must lie in [0, {spec.n_buckets})")
    if labels is not None and np.asarray(labels).reshape(-1).shape[0] != tokens.shape[0]:
        raise ValueError(f"labels must have {tokens.shape[0]} values")
    return tokens, dense


def pad_dense(dense: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """``(n, D)`` -> ``(n, dense_width)`` float32: adds the constant zero column when ``D == 0``."""
    if dense.shape[1] == spec.dense_width:
        return dense
    return np.zeros((dense.shape[0], spec.dense_width), dtype=np.float32)
