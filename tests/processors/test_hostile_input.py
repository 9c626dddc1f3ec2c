"""Hostile input (issue 17): what one producer sends cannot stop, poison or leak the pipeline.

Unit level; the same rules through the broker are in tests/integration/test_poison_pill_broker.py.
"""

from __future__ import annotations

from collections import namedtuple

import msgspec
import pytest

from reloop.processors.admission import DUPLICATE, Admission
from reloop.processors.compensation import NoCompensation
from reloop.processors.feedback import error_record
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore, Resolved, request_digest
from reloop.processors.replica import ErrorsReplica
from reloop.processors.scoring import model_features, unique_candidates
from reloop.processors.tasks import FeedbackTasks
from reloop.processors.telemetry import WorkerTelemetry
from reloop.streams.codec import InvalidEvent, dead_letter, decode_event, encode, original_bytes
from reloop.streams.events import (Candidate, ErrorRecord, Interaction, RecommendationRequest, error_id_for)
from reloop.streams.validation import Limits, check_limits

NOW = 1_700_000_000.0
TP = namedtuple("TP", "topic partition")
Msg = namedtuple("Msg", "topic partition offset key value")


def nested(depth: int) -> bytes:
    return (b'{"type":"interaction","user_id":"u","item_id":"i","ts":1.0,"label":1,"x":'
            + b"[" * depth + b"]" * depth + b"}")


def test_deeply_nested_value_is_an_invalid_event_not_a_crash():
    with pytest.raises(InvalidEvent, match="RecursionError"):
        decode_event(nested(1000), Interaction, Limits())
    # shallow nesting in an unknown field is still fine
    assert decode_event(nested(3), Interaction, Limits()).user_id == "u"


@pytest.mark.parametrize("ts,ok", [(NOW, True), (NOW + 3599, True), (NOW + 3601, False), (3.25e10, False)])
def test_event_time_ahead_of_the_wall_clock_is_rejected(ts, ok):
    ev = Interaction(user_id="u", item_id="i", ts=ts, label=1)
    assert (check_limits(ev, Limits(), now=NOW) is None) == ok
    assert check_limits(ev, Limits(max_future_s=0), now=NOW) is None  # 0 = no bound


def test_error_record_label_time_is_bounded_too():
    rec = ErrorRecord(error_id="1:r:i", user_id="u", item_id="i", ts=NOW, label=1, base_pred=0.5,
                      comp_pred=0.5, model_version="v1", label_ts=3.25e10)
    assert "ahead of the wall clock" in check_limits(rec, Limits(), now=NOW)


def test_error_ids_do_not_collide():
    assert error_id_for("col:x", "y") != error_id_for("col", "x:y")
    assert error_id_for("a", "b:c") != error_id_for("a:b", "c")


def test_derived_records_of_valid_inputs_are_valid():
    """64 request features, 64 candidate features and the media features: the error record
    the pipeline makes of them decodes (the replica and the trainer use the same decoder)."""
    feats = {f"r{i:02d}": "x" * 256 for i in range(64)} | {f"c{i:02d}": 1.0 for i in range(64)} \
        | {f"media_{i}": 0.5 for i in range(32)}
    p = Pending("r" * 256, "i" * 256, "u" * 256, NOW, 0.5, 0.5, "v1", b"\x01\x00\x00\x00", feats)
    raw = encode(error_record(Resolved(p, 1, NOW + 3.0)))
    rec = decode_event(raw, ErrorRecord, Limits(max_event_bytes=1 << 20), )
    assert rec.ts == NOW and rec.label_ts == NOW + 3.0 and len(rec.features) == 160


def test_error_records_keep_only_the_features_the_model_reads():
    feats = {f"f{i:03d}": "v" for i in range(200)} | {"d": 1.0, "ignored_dense": 2.0}
    kept = model_features(feats, (14, ("d",)))
    assert sorted(kept) == ["d"] + [f"f{i:03d}" for i in range(14)]
    assert model_features({"a": "x"}, (14, ())) == {"a": "x"}


def test_duplicate_candidates_are_collapsed():
    r = RecommendationRequest(request_id="r", user_id="u", ts=NOW,
                              candidates=[Candidate(item_id="a")] * 1000 + [Candidate(item_id="b")])
    assert [c.item_id for c in unique_candidates(r).candidates] == ["a", "b"]


def tasks(window: float = 60.0, limit: int = 1000) -> FeedbackTasks:
    return FeedbackTasks(window_s=window, limit=limit, metrics=OnlineMetrics(window=10))


def request(rid: str, user: str, ts: float, items: list[str]) -> RecommendationRequest:
    return RecommendationRequest(request_id=rid, user_id=user, ts=ts, candidates=[Candidate(item_id=i) for i in items])


def admit(adm: Admission, partition: int, r: RecommendationRequest):
    return adm.request(partition, r, encode(r))


def pendings(r: RecommendationRequest) -> list[Pending]:
    return [Pending(r.request_id, c.item_id, r.user_id, r.ts, 0.2, 0.2, "v1", b"", {}) for c in r.candidates]


def test_request_ids_reused_with_other_content_are_rejected_and_copies_are_duplicates():
    t = tasks()
    adm = Admission(t)
    r = request("r1", "u1", NOW, ["a", "b"])
    got, why = admit(adm, 0, r)
    assert got is r and why is None
    t.apply(0, pendings(r), [], {"requests": NOW}, [("r1", request_digest(encode(r)))])
    adm.begin_batch(t)
    assert admit(adm, 0, r) == (None, DUPLICATE)
    # the same id, user, time and candidates with other features: not a copy
    changed = msgspec.structs.replace(r, features={"hx": "changed"})
    assert admit(adm, 0, changed)[1].startswith("request id reused")
    _, why = admit(adm, 0, request("r1", "u2", NOW, ["c"]))
    assert why.startswith("request id reused")
    assert admit(adm, 1, request("r1", "u2", NOW, ["c"]))[1] is None  # another partition's ids


def test_a_request_older_than_a_window_behind_its_partitions_newest_is_late():
    t = tasks(window=60.0)
    t.apply(0, [], [], {"requests": NOW})
    adm = Admission(t)
    assert admit(adm, 0, request("old", "u", NOW - 61, ["a"]))[1].startswith("late request")
    assert admit(adm, 0, request("ts0", "u", 0.0, ["a"]))[1].startswith("late request")
    assert admit(adm, 0, request("ok", "u", NOW - 30, ["a"]))[1] is None
    assert admit(adm, 1, request("other", "u", 0.0, ["a"]))[1] is None  # partition 1 has no time yet


def test_lateness_does_not_depend_on_where_batches_are_cut():
    """The running maximum covers requests admitted earlier in the same batch."""
    one = Admission(tasks(window=60.0))
    got = [admit(one, 0, request(rid, "u", ts, ["a"]))[1] for rid, ts in [("a", NOW), ("b", 0.0), ("c", NOW + 1)]]
    assert got[0] is None and got[1].startswith("late request") and got[2] is None


def test_orphans_with_any_characters_in_their_ids_expire():
    s = PendingStore(window_s=10.0)
    for k, rid in enumerate(["a\x00b", "\x00", "x:y", "7:z", "plain"]):
        s.park_orphan(Interaction(user_id="u", item_id=f"i\x00{k}", ts=100.0, label=1, request_id=rid))
    restored = PendingStore.from_state(s.to_state())
    assert len(list(s.advance(111.0))) == 5 and s.orphan_count == 0
    assert len(list(restored.advance(111.0))) == 5 and restored.orphan_count == 0


def test_checkpoints_with_nul_joined_orphan_ids_still_expire():
    s = PendingStore(window_s=10.0)
    s.park_orphan(Interaction(user_id="u", item_id="i1", ts=100.0, label=1, request_id="r1"))
    st = msgspec.msgpack.decode(s.to_state())
    st[7] = [[110.0, 1, "r1\x00i1"]]  # deadlines as written before 2026-12-07
    old = PendingStore.from_state(msgspec.msgpack.encode(st[:8]))
    assert [o.item_id for o in old.advance(111.0)] == ["i1"]


def test_one_pending_limit_per_worker_covers_orphans_and_every_partition():
    t = tasks(window=1000.0, limit=50)
    forced = []
    for part in range(4):
        r = request(f"r{part}", "u", NOW + part, [f"i{j}" for j in range(20)])
        forced += t.apply(part, pendings(r), [Interaction(user_id="u", item_id="x", ts=NOW, label=1,
                                                          request_id=f"o{part}")], {"requests": NOW + part})
        assert t.held <= 50
    # earliest deadlines first, whatever the partition: r0 (t0+1000, before the orphans of equal
    # deadline), then the four orphans (t0+1000), then r1 (t0+1001): r2 and r3 stay
    assert t.held == t.pending_count == 40 and t.orphan_count == 0
    assert sorted({e.error_id.split(":")[1] for e in forced}) == ["r0", "r1"]
    assert all(e.label == 0 for e in forced) and t.unattributed == 4


def test_a_dead_letter_fits_a_1mb_broker_whatever_the_input():
    big = b"{" + b"x" * 7_000_000
    letter = dead_letter(big, "payload too big", topic="requests", partition=0, offset=1, key=b"k" * 5000)
    assert len(encode(letter)) < 1_048_588
    assert letter.truncated and letter.original_size == len(big) and len(letter.original_sha256) == 64
    assert original_bytes(letter) == big[:len(original_bytes(letter))]


def test_replica_dead_letters_bad_records_and_survives_nested_ones():
    rep = ErrorsReplica(NoCompensation(), None, Limits(), WorkerTelemetry())
    good = ErrorRecord(error_id="1:r:i", user_id="u", item_id="i", ts=NOW, label=1, base_pred=0.5,
                       comp_pred=0.5, model_version="v1")
    bad_nested = encode(good)[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    future = encode(msgspec.structs.replace(good, error_id="1:r:j", ts=3.25e10))
    msgs = [Msg("errors", 0, 0, b"u", encode(good)), Msg("errors", 0, 1, b"u", bad_nested),
            Msg("errors", 0, 2, b"u", future)]
    rep.apply_batch({TP("errors", 0): msgs})
    letters = [m for t, m in rep.outbox if t == "dlq"]
    assert [d.offset for d in letters] == [1, 2]
    assert letters[0].error.startswith("RecursionError") and "ahead of the wall clock" in letters[1].error
    assert letters[1].original_sha256 and letters[1].source_topic == "errors"
    assert rep.applied == {0: 3}


class _Boom(NoCompensation):
    def apply_errors(self, records):
        if any(r.item_id == "poison" for r in records):
            raise ZeroDivisionError("boom")
        return len(records)


def test_replica_isolates_a_record_its_memory_cannot_apply():
    rep = ErrorsReplica(_Boom(), None, Limits(), WorkerTelemetry(), memory_topic=False)
    recs = [ErrorRecord(error_id=f"1:r:{i}", user_id="u", item_id=i, ts=NOW, label=1, base_pred=0.5,
                        comp_pred=0.5, model_version="v1") for i in ("a", "poison", "b")]
    stored = rep.apply_batch({TP("errors", 0): [Msg("errors", 0, k, b"u", encode(r)) for k, r in enumerate(recs)]})
    assert stored == 2 and rep.applied == {0: 3}


def test_memory_batches_with_hostile_values_are_rejected():
    """A producer writing the ``memory`` topic directly cannot push far-future times, labels
    outside 0/1 or predictions outside [0, 1] into every replica's error memory."""
    import numpy as np

    from reloop.streams.memory_batch import InvalidMemoryBatch, decode_batch, encode_rows

    def raw(y=(0.0, 1.0), p=(0.2, 0.3), ts=(NOW, NOW)) -> bytes:
        return encode_rows(error_ids=["a", "b"], codes=np.zeros((2, 4), np.uint32), y=np.array(y), p=np.array(p),
                           ts=np.array(ts), versions=["v1", "v1"], rows=[("u", "i", {}), ("u", "j", {})])

    assert decode_batch(raw(), max_ts=NOW + 3600).n == 2
    for bad in (dict(ts=(NOW, 3.25e10)), dict(y=(0.0, 7.0)), dict(p=(0.2, 1e300)), dict(ts=(-5.0, NOW))):
        with pytest.raises(InvalidMemoryBatch):
            decode_batch(raw(**bad), max_ts=NOW + 3600)
