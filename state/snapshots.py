"""The snapshot/restore contract of every memory, and atomic snapshot files.

Every memory (:class:`~reloop.state.error_memory.memory.ErrorMemory`,
:class:`~reloop.state.media.memory.MediaMemory`,
:class:`~reloop.state.schemas.cache.SchemaCache`) implements :class:`Snapshottable`:
``snapshot()`` returns named plain numpy arrays (numbers, or ``str`` arrays of JSON; never
``object`` arrays, so ``np.load(allow_pickle=False)`` reads them), and the classmethod
``restore(arrays, config=None)`` rebuilds an equal memory. Given a ``config``, ``restore``
refuses (``ValueError`` naming the differing fields) a snapshot taken under another
configuration, so a worker never serves from a memory shaped by settings it was not given.
The conformance suite is ``tests/state/test_memory_contract.py``.

A snapshot file is written to a temporary file in the target's directory, fsynced and
renamed over the target, so a crash leaves either the old snapshot or the new one, never
half of one.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "snap.npz")
>>> write_npz_atomic(path, {"counts": np.arange(3.0), "config": np.array('{"bits": 4}')})
>>> arrays = read_npz(path)
>>> arrays["counts"].tolist(), str(arrays["config"])
([0.0, 1.0, 2.0], '{"bits": 4}')
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any, Protocol, Self, runtime_checkable

import msgspec
import numpy as np

__all__ = ["Snapshottable", "check_config", "is_plain", "read_npz", "write_npz_atomic"]


@runtime_checkable
class Snapshottable(Protocol):
    """What every memory implements: plain-array snapshots and a validated restore.

    ``snapshot()`` -> ``dict[str, np.ndarray]`` (copies; no ``object`` dtype).
    ``restore(arrays, config=None)`` (a classmethod) -> a memory whose reads equal the
    snapshotted one's; ``ValueError`` if the arrays are malformed or, with ``config``, were
    taken under a different configuration.

    >>> from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig
    >>> isinstance(ErrorMemory(4, ErrorMemoryConfig(tables=2, bits=3)), Snapshottable)
    True
    """

    config: Any

    def snapshot(self) -> dict[str, np.ndarray]: ...

    @classmethod
    def restore(cls, arrays: Mapping[str, np.ndarray], config: Any = None) -> Self: ...


def check_config(expected: msgspec.Struct | None, found: msgspec.Struct, what: str) -> None:
    """Refuse a snapshot whose configuration ``found`` differs from ``expected``.

    Does nothing when ``expected`` is None (restore under the snapshot's own configuration).
    The ``ValueError`` names each differing field with both values.

    >>> from reloop.state.error_memory.memory import ErrorMemoryConfig
    >>> check_config(ErrorMemoryConfig(bits=8), ErrorMemoryConfig(bits=8), "error-memory")
    >>> check_config(ErrorMemoryConfig(bits=8), ErrorMemoryConfig(bits=12), "error-memory")
    Traceback (most recent call last):
    ...
    ValueError: error-memory snapshot was taken with another config: bits=12 in the snapshot, bits=8 expected
    """
    if expected is None or expected == found:
        return
    if type(expected) is not type(found):
        raise ValueError(f"{what} snapshot config is a {type(found).__name__}, "
                         f"expected a {type(expected).__name__}")
    want, got = msgspec.structs.asdict(expected), msgspec.structs.asdict(found)
    diffs = [f"{k}={got[k]!r} in the snapshot, {k}={want[k]!r} expected" for k in want if want[k] != got[k]]
    raise ValueError(f"{what} snapshot was taken with another config: " + "; ".join(diffs))


def is_plain(arrays: Mapping[str, np.ndarray]) -> bool:
    """True if ``arrays`` is a snapshot of plain arrays: str keys, numpy arrays, no objects.

    >>> is_plain({"a": np.zeros(2), "b": np.array("{}")})
    True
    >>> is_plain({"a": np.array([{}], dtype=object)})
    False
    """
    return all(isinstance(k, str) and isinstance(v, np.ndarray) and not v.dtype.hasobject
               for k, v in arrays.items())


def write_npz_atomic(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (tmp file + fsync + ``os.replace``)."""
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a snapshot written by :func:`write_npz_atomic` (``allow_pickle=False``)."""
    with np.load(os.fspath(path), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
