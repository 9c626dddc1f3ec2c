"""The ReLoop2 error memory: an LSH sketch of recent errors (``memory``), its numba kernels
beside their numpy references (``kernels``), and the exact-kNN baseline (``knn``).

Public names: :class:`ErrorMemory` with its :class:`ErrorMemoryConfig` (snapshot/restore per
:class:`reloop.state.snapshots.Snapshottable`), :class:`ExactKnnMemory` (the exact baseline),
:func:`apply_compensation`, :func:`stable_key` / :func:`stable_keys` (per-record write keys).

>>> from reloop.state.error_memory import ErrorMemory, ErrorMemoryConfig
>>> ErrorMemory(4, ErrorMemoryConfig(tables=2, bits=3)).n_buckets
8
"""

from reloop.state.error_memory.knn import ExactKnnMemory
from reloop.state.error_memory.memory import (ErrorMemory, ErrorMemoryConfig, apply_compensation, stable_key,
                                              stable_keys)

__all__ = ["ErrorMemory", "ErrorMemoryConfig", "ExactKnnMemory", "apply_compensation", "stable_key", "stable_keys"]
