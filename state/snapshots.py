"""Atomic snapshot files: named numpy arrays in an ``.npz``, never pickled.

A snapshot is written to a temporary file in the target's directory, fsynced and renamed over
the target, so a crash leaves either the old snapshot or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np


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
