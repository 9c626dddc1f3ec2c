"""Hostile producers against a live worker (issue 17), through the broker.

One worker gets, interleaved with valid traffic: a 1,000-level nested message on each input
topic, events from a far-future clock (year 3000) and from ts 0, a request id reused with
other content, a byte-identical copy of a request, 999 copies of one candidate, and a
request at the feature limit (60 request features) whose error records also carry the media
features the worker merges in. It must keep serving, dead-letter exactly the hostile events
with their reasons, answer each valid request once, and apply its own error records.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from reloop.models.registry import ModelRegistry
from reloop.ops.kafka import create_topics
from reloop.ops.webclient import wait_ready
from reloop.processors.crash_guard import FAULT_ENV
from reloop.streams.codec import decode_event, encode, original_bytes
from reloop.streams.events import (Candidate, DeadLetter, ErrorRecord, Interaction, Recommendation,
                            RecommendationRequest, error_id_for)
from tests.conftest import WorkerProcess
from tests.integration.helpers import consume_until, produce

pytestmark = [pytest.mark.broker, pytest.mark.slow]

T = 1_700_000_000.0
KEY = b"u1"  # every event on one user, so on one partition of each topic


def req(rid: str, ts: float, items: list[str], **features: str) -> RecommendationRequest:
    return RecommendationRequest(request_id=rid, user_id="u1", ts=ts, features=features,
                                 candidates=[Candidate(item_id=i, features={"genre": "x"}) for i in items])


def nested(kind: str) -> bytes:
    base = {"request": encode(req("nest", T, ["a"])), "interaction": encode(
        Interaction(user_id="u1", item_id="a", ts=T, label=1, request_id="nest"))}[kind]
    return base[:-1] + b',"extra":' + b"[" * 1000 + b"]" * 1000 + b"}"


async def test_hostile_producer_cannot_stop_or_poison_a_worker(kafka_settings, small_model, tmp_path: Path) -> None:
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    w = WorkerProcess(s, tmp_path / "worker.log")
    wide = req("wide", T, ["a", "b", "c"], **{f"f{i:02d}": "v" for i in range(60)})
    dup = req("dup", T + 1, ["a", "b"])
    hostile_requests = [nested("request"), encode(req("future", 3.25e10, ["a"])),
                        encode(req("dup", T + 1, ["z"])),  # reused id, other content
                        ]
    try:
        await wait_ready(w.port, 120.0, w.proc)
        await produce(s, "requests", [wide, dup, encode(dup), *hostile_requests,
                                      req("many", T + 2, ["a"] * 999 + ["b"])], keys=[KEY] * 7)
        await produce(s, "interactions", [nested("interaction"),
                                          Interaction(user_id="u1", item_id="b", ts=T + 5, label=1, request_id="wide"),
                                          Interaction(user_id="u1", item_id="a", ts=3.25e10, label=1, request_id="x")],
                      keys=[KEY] * 3)
        # later traffic on the same partition moves its stream time past the first window
        # (SMALL settings: 30 s) and must be served as usual; ts 0 is late by then
        await produce(s, "interactions", [Interaction(user_id="u1", item_id="a", ts=T + 100, label=0,
                                                      request_id="after")], keys=[KEY])
        await produce(s, "requests", [req("after", T + 100, ["a"]), req("zero", 0.0, ["a"])], keys=[KEY] * 2)
        letters = [decode_event(m.value, DeadLetter)
                   for m in await consume_until(s, "dlq", lambda m: len(m) >= 6, timeout_s=120)]
        recs = [decode_event(m.value, Recommendation) for m in
                await consume_until(s, "recommendations", lambda m: len(m) >= 4, timeout_s=120)]
        errs = [decode_event(m.value, ErrorRecord) for m in
                await consume_until(s, "errors", lambda m: len(m) >= 8, timeout_s=120)]
        assert w.proc.poll() is None, "the worker stopped on hostile input"
    finally:
        assert w.stop() == 0, w.log_tail()
    reasons = sorted((dl.source_topic.split(".")[-1], dl.error.split(":")[0].split(" ")[0]) for dl in letters)
    assert reasons == sorted([("requests", "RecursionError"), ("interactions", "RecursionError"),
                              ("requests", "event"), ("interactions", "event"), ("requests", "request"),
                              ("requests", "late")]), [dl.error for dl in letters]
    by_id = {}
    for r in recs:
        by_id.setdefault(r.request_id, []).append(r)
    assert sorted(by_id) == ["after", "dup", "many", "wide"]
    assert all(len(v) == 1 for v in by_id.values()), "a byte-identical copy was answered twice"
    assert [i.item_id for i in by_id["many"][0].items] in (["a", "b"], ["b", "a"])
    assert sorted(e.error_id for e in errs) == sorted(error_id_for(r, i) for r, i in [
        ("wide", "a"), ("wide", "b"), ("wide", "c"), ("dup", "a"), ("dup", "b"), ("many", "a"), ("many", "b"),
        ("after", "a")])  # "after": its one candidate labelled (an orphan click), so resolved at once
    wide_errs = [e for e in errs if e.error_id.startswith(error_id_for("wide", ""))]
    assert sorted((e.item_id, e.label) for e in wide_errs) == [("a", 0), ("b", 1), ("c", 0)]
    assert all(e.ts == T and e.schema_version == 2 for e in wide_errs)
    assert [e.label_ts for e in wide_errs if e.label == 1] == [T + 5]
    assert not any(dl.source_topic.endswith("errors") for dl in letters), "the worker rejected its own records"
    log = w.log_text()
    assert "bad_error_record" not in log and "batch_failed" not in log


async def test_a_record_that_crashes_the_process_is_skipped_after_the_threshold(kafka_settings, small_model,
                                                                             tmp_path: Path) -> None:
    """A request that kills the worker process outright (fault injection: ``os._exit`` where a
    native crash would be) makes every restart crash again at the same offset, unless the
    crash guard isolates it and, at the threshold, dead-letters it unprocessed."""
    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    await produce(s, "requests", [req("ok1", T, ["a"]), req("boom", T + 1, ["a"]), req("ok2", T + 2, ["a"])],
                  keys=[KEY] * 3)
    env = {FAULT_ENV: "boom", "RELOOP_WORKER__CRASH_THRESHOLD": "1"}
    exit_codes = []
    for attempt in range(4):
        w = WorkerProcess(s, tmp_path / f"worker{attempt}.log", env)
        try:
            letters = await consume_until(s, "dlq", lambda m: bool(m) or w.proc.poll() is not None, timeout_s=120)
            if w.proc.poll() is not None:
                exit_codes.append(w.proc.returncode)
                continue
            recs = await consume_until(s, "recommendations", lambda m: len(m) >= 2, timeout_s=120)
            assert w.proc.poll() is None
        finally:
            w.stop()
        break
    # threshold 1: the batch crashed once (then one record at a time), the record crashed once
    # alone (then skipped); if a poll delivered it alone, its first crash already counts alone
    assert exit_codes in ([86], [86, 86]), exit_codes
    [letter] = [decode_event(m.value, DeadLetter) for m in letters]
    assert "crashed the worker 1 times" in letter.error
    assert decode_event(original_bytes(letter), RecommendationRequest).request_id == "boom"
    assert sorted(decode_event(m.value, Recommendation).request_id for m in recs) == ["ok1", "ok2"]

