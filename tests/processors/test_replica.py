"""Replica snapshots: a crash between the two files' renames never mixes generations."""

from __future__ import annotations

import os

import numpy as np
import pytest

from processors.replica import _matching_snapshots, previous, write_files


def gen(offset: int, tag: float) -> dict[str, np.ndarray]:
    return {"errors_partitions": np.array([0]), "errors_offsets": np.array([offset]), "x": np.array([tag])}


def test_newest_common_generation_is_chosen_after_a_torn_pair(tmp_path):
    em, sc = tmp_path / "error_memory.npz", tmp_path / "schema_cache.npz"
    write_files({sc: gen(10, 1.0), em: gen(10, 2.0)})
    write_files({sc: gen(20, 3.0), em: gen(20, 4.0)})
    assert {k: float(v["x"][0]) for k, v in _matching_snapshots({"e": em, "s": sc}).items()} == {"e": 4.0, "s": 3.0}
    # crash after the schema cache's new file, before the error memory's: one generation apart
    os.replace(sc, previous(sc))
    write_files({sc: gen(30, 5.0)})
    got = _matching_snapshots({"e": em, "s": sc})
    assert {k: int(v["errors_offsets"][0]) for k, v in got.items()} == {"e": 20, "s": 20}


def test_no_common_generation_is_an_error(tmp_path):
    em, sc = tmp_path / "error_memory.npz", tmp_path / "schema_cache.npz"
    write_files({sc: gen(10, 1.0), em: gen(99, 2.0)})
    with pytest.raises(ValueError, match="no generation common"):
        _matching_snapshots({"e": em, "s": sc})
