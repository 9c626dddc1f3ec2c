"""Feature hashing and encoding."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from reloop.models.features import FeatureEncoder, FeatureSpec, check_inputs, pad_dense, token_id

SPEC = FeatureSpec(n_buckets=1000, max_tokens=6, dense_names=("age", "price"))


def crc_id(token: str, n_buckets: int = 1000) -> int:
    return zlib.crc32(token.encode("utf-8")) % (n_buckets - 1) + 1


def test_token_ids_follow_the_documented_crc32_rule() -> None:
    tokens, _ = FeatureEncoder(SPEC).encode([("u1", "i9", {"colour": "red", "brand": "acme"})])
    expected = [crc_id("user_id=u1"), crc_id("item_id=i9"), crc_id("brand=acme"), crc_id("colour=red"), 0, 0]
    assert tokens.tolist() == [expected]
    assert token_id("colour=red", 1000) == crc_id("colour=red")


def test_hashing_is_stable_across_processes_and_hash_seeds() -> None:
    rows = [("user-ü", "item/7", {"colour": "red", "price": 3.5}), ("u2", "i2", {})]
    here = FeatureEncoder(SPEC).encode(rows)[0].tolist()
    code = (
        "from reloop.models.features import FeatureEncoder, FeatureSpec\n"
        "spec = FeatureSpec(n_buckets=1000, max_tokens=6, dense_names=('age', 'price'))\n"
        f"print(FeatureEncoder(spec).encode({rows!r})[0].tolist())\n"
    )
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert out.stdout.strip() == str(here)


def test_same_input_same_ids_and_distinct_names_mostly_distinct_ids() -> None:
    spec = FeatureSpec(n_buckets=2**18, max_tokens=3)
    encoder = FeatureEncoder(spec)
    rows = [("u", "i", {f"name{k}": "x"}) for k in range(500)]
    first, _ = encoder.encode(rows)
    again, _ = FeatureEncoder(spec).encode(rows)
    np.testing.assert_array_equal(first, again)
    ids = first[:, 2]
    assert len(set(ids.tolist())) >= 495  # 500 names into 262k buckets: collisions are rare
    assert np.all((ids >= 1) & (ids < spec.n_buckets))


def test_padding_only_at_the_end_and_truncation_keeps_user_item_and_first_names() -> None:
    encoder = FeatureEncoder(SPEC)
    many = {f"f{k:02d}": f"v{k}" for k in range(10)}
    tokens, _ = encoder.encode([("u", "i", {}), ("u", "i", {"b": "1", "a": "2"}), ("u", "i", many)])
    assert tokens.shape == (3, SPEC.max_tokens) and tokens.dtype == np.int64
    for row in tokens:
        nonzero = np.flatnonzero(row)
        assert nonzero.tolist() == list(range(len(nonzero)))  # a prefix: no holes, pad at the end
    assert tokens[0].tolist() == [crc_id("user_id=u"), crc_id("item_id=i"), 0, 0, 0, 0]
    assert tokens[1, 2:4].tolist() == [crc_id("a=2"), crc_id("b=1")]  # sorted by name
    assert tokens[2].tolist() == [crc_id("user_id=u"), crc_id("item_id=i")] + [crc_id(f"f{k:02d}=v{k}") for k in range(4)]


def test_dense_columns_missing_values_and_str_in_dense_name() -> None:
    rows = [
        ("u", "i", {"price": 2.5, "age": 40.0, "ignored": 7.0}),
        ("u", "i", {"price": 1.0}),
        ("u", "i", {"age": "unknown", "price": 3}),
    ]
    tokens, dense = FeatureEncoder(SPEC).encode(rows)
    assert dense.dtype == np.float32 and dense.shape == (3, 2)
    np.testing.assert_array_equal(dense, [[40.0, 2.5], [0.0, 1.0], [0.0, 3.0]])
    assert tokens[0].tolist()[2:] == [0, 0, 0, 0]  # numeric features are not tokens
    assert tokens[2, 2] == crc_id("age=unknown")  # a str value under a dense name is categorical


def test_infer_lists_numeric_names_sorted() -> None:
    rows = [("u", "i", {"z": 1.0, "colour": "red"}), ("u", "i", {"a": 2, "flag": True, "colour": 3.0})]
    spec = FeatureSpec.infer(rows, n_buckets=64, max_tokens=4)
    assert spec == FeatureSpec(n_buckets=64, max_tokens=4, dense_names=("a", "colour", "z"))


def test_cache_is_bounded_and_does_not_change_results() -> None:
    bounded = FeatureEncoder(SPEC, cache_size=10)
    rows = [(f"u{k}", f"i{k}", {"c": f"v{k}"}) for k in range(100)]
    tokens, _ = bounded.encode(rows)
    assert bounded.cache_len <= 10
    np.testing.assert_array_equal(tokens, FeatureEncoder(SPEC).encode(rows)[0])


def test_empty_batch_and_no_dense_columns() -> None:
    tokens, dense = FeatureEncoder(SPEC).encode([])
    assert tokens.shape == (0, 6) and dense.shape == (0, 2)
    spec0 = FeatureSpec(n_buckets=100, max_tokens=4)
    tokens, dense = FeatureEncoder(spec0).encode([("u", "i", {"x": 1.0})])
    assert dense.shape == (1, 0) and spec0.dense_width == 1
    assert pad_dense(dense, spec0).tolist() == [[0.0]]


def test_check_inputs_rejects_bad_shapes_and_ids() -> None:
    with pytest.raises(ValueError):
        check_inputs(np.zeros((2, 5), np.int64), np.zeros((2, 2), np.float32), SPEC)
    with pytest.raises(ValueError):
        check_inputs(np.full((2, 6), 1000, np.int64), np.zeros((2, 2), np.float32), SPEC)
    with pytest.raises(ValueError):
        check_inputs(np.zeros((2, 6), np.int64), np.zeros((3, 2), np.float32), SPEC)


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        FeatureSpec(n_buckets=1)
    with pytest.raises(ValueError):
        FeatureSpec(dense_names=("a", "a"))


def _reference_encode(rows: list, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """The module docstring's rule, written plainly (one token string at a time, no caches)."""
    tokens = np.zeros((len(rows), spec.max_tokens), np.int64)
    dense = np.zeros((len(rows), spec.n_dense), np.float32)
    for r, (user, item, feats) in enumerate(rows):
        names = [f"user_id={user}", f"item_id={item}"]
        names += [f"{k}={feats[k]}" for k in sorted(feats) if isinstance(feats[k], str)]
        ids = [token_id(t, spec.n_buckets) for t in names][: spec.max_tokens]
        tokens[r, : len(ids)] = ids
        for j, name in enumerate(spec.dense_names):
            v = feats.get(name)
            if v is not None and not isinstance(v, str):
                dense[r, j] = float(v)
    return tokens, dense


@pytest.mark.parametrize("cache_size", [3, 1000])
def test_encoder_equals_the_plain_reference_on_mixed_rows(cache_size: int) -> None:
    rng = np.random.default_rng(11)
    spec = FeatureSpec(n_buckets=5000, max_tokens=5, dense_names=("d1", "d0", "cat_or_num"))
    kinds = [lambda: f"s{rng.integers(4)}", lambda: float(rng.normal()), lambda: int(rng.integers(9)),
             lambda: bool(rng.integers(2)), lambda: np.float64(rng.normal())]
    rows = []
    for _ in range(300):
        names = rng.choice(["d0", "d1", "cat_or_num", "z", "a", "m", "b2", "c"], size=rng.integers(0, 8), replace=False)
        rows.append((f"u{rng.integers(20)}", f"i{rng.integers(30)}",
                     {str(n): kinds[rng.integers(len(kinds))]() for n in names}))
    encoder = FeatureEncoder(spec, cache_size=cache_size)
    for _ in range(2):  # cold and warm caches
        tokens, dense = encoder.encode(rows)
        ref_tokens, ref_dense = _reference_encode(rows, spec)
        np.testing.assert_array_equal(tokens, ref_tokens)
        np.testing.assert_array_equal(dense, ref_dense)
        assert encoder.cache_len <= cache_size
