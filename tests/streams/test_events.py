"""Events: round trips, strict validation with readable reasons, schema files in sync."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from reloop.streams.codec import InvalidEvent, dead_letter, decode_event, encode, original_bytes
from reloop.streams.events import (Candidate, ErrorRecord, Interaction, MediaEvent, RecommendationRequest)
from reloop.streams.schemas import event_schemas
from reloop.streams.topics import CATALOG, TOPICS, USER_KEYED
from reloop.streams.validation import Limits

LIMITS = Limits(media_dim=4, max_candidates=3, max_event_bytes=2000)


def test_round_trip_every_kind() -> None:
    evs = [RecommendationRequest(request_id="r", user_id="u", ts=1.0, candidates=[Candidate(item_id="i")]),
           Interaction(user_id="u", item_id="i", ts=2.0, label=1, request_id="r", features={"g": "x", "d": 0.5}),
           MediaEvent(user_id="u", ts=3.0, modality="audio", segment_id="s", embedding=[0.1, 0.2, 0.3, 0.4]),
           ErrorRecord(error_id="r:i", user_id="u", item_id="i", ts=4.0, label=0, base_pred=0.2,
                       comp_pred=0.3, model_version="v1", codes=[1, 2])]
    for ev in evs:
        assert decode_event(encode(ev), None, LIMITS) == ev
        assert decode_event(encode(ev), type(ev), LIMITS) == ev


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "malformed"),
    (b'{"type":"interaction","user_id":"u","item_id":"i","ts":1,"label":2}', "label"),
    (b'{"type":"interaction","user_id":"u","item_id":"i","ts":"now","label":1}', "ts"),
    (b'{"type":"interaction","user_id":"u","ts":1,"label":1}', "item_id"),
    (b'{"type":"interaction","user_id":"u","item_id":"i","ts":1,"label":1,"features":{"x":1e999}}', "range"),
    (b'{"type":"interaction","user_id":"u","item_id":"i","ts":1,"label":1,"value":NaN}', "malformed"),
    (b'{"type":"interaction","schema_version":2,"user_id":"u","item_id":"i","ts":1,"label":1}', "schema_version"),
    (b'{"type":"media","user_id":"u","ts":1,"modality":"video","segment_id":"s","embedding":[1,2]}', "length 2"),
    (b'{"type":"media","user_id":"u","ts":1,"modality":"smell","segment_id":"s","embedding":[1,2,3,4]}', "modality"),
    (b'{"type":"request","request_id":"r","user_id":"u","ts":1,"candidates":[{"item_id":"a"},{"item_id":"b"},'
     b'{"item_id":"c"},{"item_id":"d"}]}', "exceed"),
    (b'{"type":"interaction","user_id":"' + b"u" * 3000 + b'","item_id":"i","ts":1,"label":1}', "exceeds limit"),
])
def test_invalid_events_have_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        decode_event(raw, None, LIMITS)
    assert reason in str(exc.value)


@hsettings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(raw: bytes) -> None:
    try:
        decode_event(raw, Interaction, LIMITS)
    except InvalidEvent:
        pass


def test_dead_letter_keeps_original_bytes_and_source() -> None:
    dl = dead_letter(b"\xff\x00bad", "why", topic="requests", partition=2, offset=17, key=b"u1", now=5.0)
    back = decode_event(encode(dl))
    assert original_bytes(back) == b"\xff\x00bad"
    assert (back.source_topic, back.partition, back.offset, back.error, back.key) == ("requests", 2, 17, "why", "u1")


def test_schema_files_match_the_code() -> None:
    folder = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    for tag, schema in event_schemas().items():
        assert json.loads((folder / f"{tag}.schema.json").read_text()) == json.loads(json.dumps(schema)), \
            f"docs/schemas/{tag}.schema.json is stale: run `make schemas`"


def test_catalog_co_partitions_user_keyed_topics() -> None:
    assert len({TOPICS[t].partitions for t in USER_KEYED}) == 1
    assert all(TOPICS[t].key == "user_id" for t in USER_KEYED)
    assert {t.name for t in CATALOG if t.compacted} == {"schemas", "models", "changelog"}
    assert TOPICS["models"].config()["cleanup.policy"] == "compact"
    # the changelog is co-partitioned with the inputs: partition p holds input partition p's state
    assert TOPICS["changelog"].partitions == TOPICS["requests"].partitions
    assert msgspec.json.decode(msgspec.json.encode(TOPICS["dlq"])) ["retention_ms"] > TOPICS["requests"].retention_ms


def test_codes_travel_packed_and_lists_are_still_read() -> None:
    from reloop.streams.events import pack_codes

    packed = ErrorRecord(error_id="r:i", user_id="u", item_id="i", ts=1.0, label=0, base_pred=0.2,
                         comp_pred=0.3, model_version="v1", codes=pack_codes([5, 65535, 2**24]))
    raw = encode(packed)
    assert b"[5," not in raw  # base64, not a JSON array
    back = decode_event(raw, ErrorRecord)
    assert back.code_array().tolist() == [5, 65535, 2**24] and back.n_codes == 3
    doc = json.loads(raw)
    legacy = decode_event(json.dumps({**doc, "codes": [5, 65535, 2**24]}).encode(), ErrorRecord)
    assert legacy.code_array().tolist() == [5, 65535, 2**24] and legacy.n_codes == 3
    with pytest.raises(InvalidEvent, match="whole number of uint32"):
        decode_event(json.dumps({**doc, "codes": "AAAAAAAA"}).encode(), ErrorRecord)  # 6 bytes
    with pytest.raises(ValueError):
        pack_codes([-1])
