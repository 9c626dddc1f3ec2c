"""Fuzzing the input topics through the broker: every bad event is a dead letter, none stops
the worker, and the valid events interleaved with them are all answered.

Hypothesis generates 1,200 bad events across ``requests``, ``interactions`` and ``media``:
random bytes, truncated JSON, wrong types, out-of-range numbers, non-finite tokens, huge
strings, wrong embedding sizes, unknown event versions and unknown event types.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.webclient import wait_ready
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import Candidate, DeadLetter, Interaction, MediaEvent, Recommendation, RecommendationRequest
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N_BAD = 1200
VALID = {
    "requests": RecommendationRequest(request_id="ok", user_id="u1", ts=10.0,
                                      candidates=[Candidate(item_id="i1", features={"genre": "x"})]),
    "interactions": Interaction(user_id="u1", item_id="i1", ts=10.0, label=1, request_id="ok"),
    "media": MediaEvent(user_id="u1", ts=10.0, modality="video", segment_id="s", embedding=[0.1] * 32),
}


def _mutate(topic: str, field: str, value: object) -> bytes:
    obj = msgspec.to_builtins(VALID[topic])
    obj[field] = value
    return msgspec.json.encode(obj)


def bad_event(topic: str) -> st.SearchStrategy[bytes]:
    valid = encode(VALID[topic])
    fields = sorted(msgspec.to_builtins(VALID[topic]))
    required = [f for f in fields if f not in ("schema_version", "features", "kind", "value", "item_id")]
    wrong = st.one_of(st.text(max_size=5).map(lambda s: "x" + s), st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())
    return st.one_of(
        st.binary(min_size=1, max_size=200).filter(lambda b: not b.strip().startswith(b"{")),
        st.integers(1, len(valid) - 1).map(lambda n: valid[:n]),                     # truncated JSON
        st.tuples(st.sampled_from(["ts"] + (["label"] if topic == "interactions" else [])), wrong)
          .map(lambda fv: _mutate(topic, fv[0], fv[1])),                            # wrong types
        st.sampled_from(required).map(lambda f: msgspec.json.encode(
            {k: v for k, v in msgspec.to_builtins(VALID[topic]).items() if k != f})),  # missing key
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999"]).map(
            lambda tok: valid.replace(b'"ts":10.0', b'"ts":' + tok)),                  # non-finite
        st.integers(-10**6, -1).map(lambda n: _mutate(topic, "ts", n)),              # out of range
        st.integers(300, 2000).map(lambda n: _mutate(topic, "user_id", "u" * n)),   # huge id
        st.integers(2, 99).map(lambda v: _mutate(topic, "schema_version", v)),      # unknown version
        st.sampled_from(["click", "purchase", "request2"]).map(lambda t: _mutate(topic, "type", t)),
        *([st.integers(0, 64).filter(lambda n: n != 32).map(lambda n: _mutate("media", "embedding", [0.5] * n))]
          if topic == "media" else []),
    )


TOPICS = ("requests", "interactions", "media")
bad_events = st.lists(st.sampled_from(TOPICS).flatmap(lambda t: st.tuples(st.just(t), bad_event(t))),
                      min_size=N_BAD, max_size=N_BAD)


@hsettings(max_examples=1, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(bad=bad_events)
def test_fuzzed_inputs_become_dead_letters(kafka_settings, small_model, tmp_path, bad) -> None:
    asyncio.run(_run(kafka_settings, small_model, tmp_path, bad))


async def _run(s, small_model, tmp_path: Path, bad: list[tuple[str, bytes]]) -> None:
    for _, raw in bad:  # the generator itself must only make invalid events
        with pytest.raises(Exception):
            decode_event(raw, None, s.limits)
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "fuzz.log")
    try:
        await wait_ready(w.port, 120.0, w.proc)
        valid_ids = []
        for topic in TOPICS:
            mixed: list[bytes] = []
            for j, (t, raw) in enumerate(b for b in bad if b[0] == topic):
                mixed.append(raw)
                if topic == "requests" and j % 100 == 0:
                    rid = f"ok-{j}"
                    valid_ids.append(rid)
                    mixed.append(encode(msgspec.structs.replace(VALID["requests"], request_id=rid)))
            await produce(s, topic, mixed, keys=[b"u1"] * len(mixed))
        letters = [decode_event(m.value, DeadLetter)
                   for m in await consume_until(s, "dlq", lambda m: len(m) >= N_BAD, timeout_s=120)]
        recs = {decode_event(m.value, Recommendation).request_id
                for m in await consume_until(s, "recommendations", lambda m: len(m) >= len(valid_ids))}
        assert w.proc.poll() is None, "the worker stopped on bad input"
    finally:
        assert w.stop() == 0, w.log_tail()
    assert len(letters) == N_BAD
    got = sorted((dl.source_topic.split(".")[-1], base64.b64decode(dl.original)) for dl in letters)
    assert got == sorted(bad)
    assert all(dl.error and dl.offset >= 0 for dl in letters)
    assert recs == set(valid_ids)


async def test_dlq_show_and_replay(kafka_settings, small_model, tmp_path) -> None:
    """``reloop dlq show`` lists a dead letter; ``replay`` re-drives it (still invalid: a new letter)."""
    import os
    import subprocess
    import sys

    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "dlq.log")
    env = {**os.environ, "RELOOP_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix}
    cli = [sys.executable, "-m", "reloop.ops.cli"]
    try:
        await wait_ready(w.port, 120.0, w.proc)
        await produce(s, "interactions", [b'{"type":"interaction","oops":1}'], keys=[b"u9"])
        await consume_until(s, "dlq", lambda m: len(m) >= 1)
        shown = await asyncio.to_thread(subprocess.run, [*cli, "dlq", "show", "--broker", s.kafka.broker],
                                        capture_output=True, text=True, env=env, check=True)
        assert "interactions" in shown.stdout and "oops" in shown.stdout
        replayed = await asyncio.to_thread(subprocess.run, [*cli, "dlq", "replay", "--topic", "interactions",
                                                            "--broker", s.kafka.broker],
                                           capture_output=True, text=True, env=env, check=True)
        assert "re-drove 1" in replayed.stdout
        letters = await consume_until(s, "dlq", lambda m: len(m) >= 2)
    finally:
        assert w.stop() == 0, w.log_tail()
    assert {base64.b64decode(decode_event(m.value, DeadLetter).original) for m in letters} == \
        {b'{"type":"interaction","oops":1}'}
