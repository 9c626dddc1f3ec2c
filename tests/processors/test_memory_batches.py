"""The binary ``memory`` path: codec, the same sketch as ``errors`` records, duplicates, snapshots."""

from __future__ import annotations

from collections import namedtuple

import msgspec
import numpy as np
import pytest

from reloop.processors.compensation import NoCompensation
from reloop.processors.error_memory import ErrorMemoryCompensation, memory_batches
from reloop.processors.replica import ErrorsReplica
from reloop.processors.telemetry import WorkerTelemetry
from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig, key_uniforms, stable_keys
from reloop.streams.events import ErrorRecord, pack_codes
from reloop.streams.memory_batch import MAX_ROWS, InvalidMemoryBatch, MemoryBatch, decode_batch, encode_rows
from reloop.streams.validation import Limits

CFG = ErrorMemoryConfig(tables=8, bits=6, half_life_s=86400.0)
TP = namedtuple("TP", "topic partition")
Msg = namedtuple("Msg", "offset value")


def compensation(scorer, cfg: ErrorMemoryConfig = CFG, rekey_window: int = 100) -> ErrorMemoryCompensation:
    return ErrorMemoryCompensation(ErrorMemory(scorer.hidden_dim, cfg), scorer, rekey_window=rekey_window)


def records(comp: ErrorMemoryCompensation, n: int, seed: int = 0, version: str | None = None) -> list[ErrorRecord]:
    """n records scored by ``comp``'s model, with the packed codes serving computed."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{rng.integers(9)}", f"i{rng.integers(20)}", {"genre": f"g{rng.integers(3)}"}) for _ in range(n)]
    p, hidden = comp.scorer.score(*comp.encoder.encode(rows))
    codes = comp.memory.codes(hidden)
    return [ErrorRecord(error_id=f"s{seed}r{j}:{item}", user_id=user, item_id=item, ts=1000.0 + j,
                        label=int(rng.integers(2)), base_pred=float(p[j]), comp_pred=float(p[j]),
                        model_version=version or comp.model_version, codes=pack_codes(codes[j]), features=feats)
            for j, (user, item, feats) in enumerate(rows)]


def state(comp: ErrorMemoryCompensation) -> np.ndarray:
    return np.stack([comp.memory.counts, comp.memory.sum_y, comp.memory.sum_p])


def test_codec_round_trip_and_views() -> None:
    codes = np.arange(12, dtype=np.uint32).reshape(3, 4)
    raw = encode_rows(error_ids=["a", "b", "c"], codes=codes, y=[1, 0, 1], p=[0.1, 0.2, 0.3], ts=[5.0, 6.0, 7.0],
                      versions=["v1", "v2", "v1"], rows=[("u", "i", {"g": "x"})] * 3)
    b = decode_batch(raw)
    np.testing.assert_array_equal(b.codes_array(), codes)
    assert b.y_array().tolist() == [1.0, 0.0, 1.0] and b.ts_array().tolist() == [5.0, 6.0, 7.0]
    assert [b.versions[i] for i in b.version_array()] == ["v1", "v2", "v1"]
    assert b.keys_array() is None and b.row_list()[0] == ("u", "i", {"g": "x"})
    assert decode_batch(raw).batch_id == b.batch_id != decode_batch(encode_rows(
        error_ids=["a", "b", "d"], codes=codes, y=[1, 0, 1], p=[0.1, 0.2, 0.3], ts=[5.0, 6.0, 7.0],
        versions=["v1"] * 3, rows=[("u", "i", {})] * 3)).batch_id


@pytest.mark.parametrize("mutate", [
    lambda f: f[:-3],  # truncated
    lambda f: b"\x00" + f,
    lambda f: msgspec.msgpack.encode([1, b"x" * 16, 3, 4, 1.0, ["v"], b"\0" * 6, b"\0" * 47, b"", b"", b"", b"", b""]),
    lambda f: msgspec.msgpack.encode([1, b"x" * 16, 1, 1, 1.0, ["v"], b"\5\0", b"\0" * 4, b"\0" * 8, b"\0" * 8,
                                      b"\0" * 8, b"", msgspec.msgpack.encode([])]),  # version index 5 of 1
    lambda f: msgspec.msgpack.encode([1, b"x" * 16, 1, 1, 1.0, ["v"], b"\0\0", b"\0" * 4,
                                      np.array([np.nan]).tobytes(), b"\0" * 8, b"\0" * 8, b"",
                                      msgspec.msgpack.encode([])]),  # NaN label
    lambda f: msgspec.msgpack.encode([2] + list(msgspec.msgpack.decode(f))[1:]),  # unknown format
])
def test_malformed_batches_are_rejected(mutate) -> None:
    good = encode_rows(error_ids=["a"], codes=np.zeros((1, 1)), y=[1], p=[0.5], ts=[1.0], versions=["v"],
                       rows=[("u", "i", {})])
    with pytest.raises(InvalidMemoryBatch):
        decode_batch(mutate(good))


def test_binary_batches_write_the_same_sketch_as_error_records(small_model) -> None:
    comp = compensation(small_model.scorer)
    recs = records(comp, 300)
    via_errors = compensation(small_model.scorer)
    via_errors.apply_errors(recs)
    for lo in range(0, 300, 70):  # the same rows in the same order: bit-identical
        for raw in memory_batches(recs[lo:lo + 70], CFG.tables):
            assert comp.apply_memory_batch(decode_batch(raw)) > 0
    np.testing.assert_array_equal(state(comp), state(via_errors))
    assert comp.rekeyed == 0


def test_write_budget_samples_rows_at_the_producer_as_the_replica_would(small_model) -> None:
    cfg = msgspec.structs.replace(CFG, write_sample=0.3)
    comp = compensation(small_model.scorer, cfg)
    recs = records(comp, 400)
    (raw,) = memory_batches(recs, cfg.tables, cfg.write_sample)
    b = decode_batch(raw)
    keep = key_uniforms(stable_keys(r.error_id for r in recs)) < 0.3
    assert b.n == int(keep.sum()) and 0.2 * 400 < b.n < 0.4 * 400
    assert comp.apply_memory_batch(b) == b.n
    via_errors = compensation(small_model.scorer, cfg)
    via_errors.apply_errors(recs)  # the replica-side sampling of the same keys
    np.testing.assert_array_equal(state(comp), state(via_errors))


def test_rows_of_another_model_are_rekeyed_and_a_swap_rekeys_the_window(small_model) -> None:
    comp = compensation(small_model.scorer, rekey_window=150)
    ref = compensation(small_model.scorer, rekey_window=150)
    recs = records(comp, 100) + records(comp, 100, seed=1, version="old")
    for raw in memory_batches(recs, CFG.tables):
        comp.apply_memory_batch(decode_batch(raw))
    ref.apply_errors(recs)
    assert comp.rekeyed == ref.rekeyed == 100
    np.testing.assert_allclose(state(comp), state(ref), rtol=1e-12)
    comp.on_model_change(small_model.scorer)
    ref.on_model_change(small_model.scorer)  # both re-key their last 150 rows
    assert comp.rekeyed == ref.rekeyed == 250
    np.testing.assert_allclose(state(comp), state(ref), rtol=1e-12)


def test_large_batches_are_split_under_the_record_limit(small_model) -> None:
    comp = compensation(small_model.scorer)
    recs = records(comp, 50) * (MAX_ROWS // 50 + 2)  # ids repeat: not a concern of the codec
    raws = memory_batches(recs, CFG.tables)
    assert [decode_batch(r).n for r in raws] == [MAX_ROWS, len(recs) - MAX_ROWS]


def replica(scorer) -> ErrorsReplica:
    return ErrorsReplica(compensation(scorer), None, Limits(), WorkerTelemetry())


def test_replica_skips_redelivered_offsets_copies_and_malformed_records(small_model, tmp_path) -> None:
    comp = compensation(small_model.scorer)
    raws = [memory_batches(records(comp, 40, seed=s), CFG.tables)[0] for s in range(4)]
    once = replica(small_model.scorer)
    once.apply_memory({TP("memory", 0): [Msg(i, r) for i, r in enumerate(raws)]})
    twice = replica(small_model.scorer)
    # partition 0: the first two, then a crashed producer's copy of the second plus a bad record
    twice.apply_memory({TP("memory", 0): [Msg(0, raws[0]), Msg(1, raws[1])]})
    twice.apply_memory({TP("memory", 0): [Msg(1, raws[1]), Msg(2, raws[1]), Msg(3, b"junk"),
                                          Msg(4, raws[2]), Msg(5, raws[3])]})
    assert twice.duplicates_skipped == 1 and twice.memory_invalid == 1 and twice.memory_applied == {0: 6}
    np.testing.assert_array_equal(state(twice.compensation), state(once.compensation))
    # snapshot with the memory offsets and the batch-id filter; restore resumes after them
    from reloop.processors.replica import write_files
    path = tmp_path / "error_memory.npz"
    write_files(twice.collect_snapshot(path))
    back = ErrorsReplica(compensation(small_model.scorer), None, Limits(), WorkerTelemetry())
    back.restore(path, small_model.scorer, lambda s: compensation(s))
    assert back.memory_applied == {0: 6}
    back.apply_memory({TP("memory", 0): [Msg(6, raws[3])]})  # a copy after the snapshot
    assert back.duplicates_skipped == 1
    np.testing.assert_array_equal(state(back.compensation), state(once.compensation))


def test_snapshot_without_memory_offsets_is_rebuilt(small_model, tmp_path) -> None:
    r = replica(small_model.scorer)
    r.compensation.apply_errors(records(r.compensation, 20))
    path = tmp_path / "error_memory.npz"
    files = r.collect_snapshot(path)
    for k in [k for k in files[path] if k.startswith("memory_")]:
        del files[path][k]  # the format before the memory topic
    from reloop.processors.replica import write_files
    write_files(files)
    back = replica(small_model.scorer)
    back.restore(path, small_model.scorer, lambda s: compensation(s))
    assert back.memory_applied == {} and float(back.compensation.memory.counts.sum()) == 0.0


def test_no_compensation_ignores_batches() -> None:
    raw = encode_rows(error_ids=["a"], codes=np.zeros((1, 2)), y=[1], p=[0.5], ts=[1.0], versions=["v"],
                      rows=[("u", "i", {})])
    assert NoCompensation().apply_memory_batch(decode_batch(raw)) == 0
    assert isinstance(msgspec.msgpack.decode(raw, type=MemoryBatch), MemoryBatch)
