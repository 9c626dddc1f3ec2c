"""The Kafka I/O floor of the feedback path, for ``bench/throughput.py``.

The feedback path moves five records through Kafka per logged interaction: it reads the
request and the interaction, writes a recommendation and an error record, and reads the
error record back from ``errors`` (every worker applies every error record). Raw aiokafka
consumption only reads two. :func:`io_floor` does exactly that I/O and nothing else, in
this process, the way the worker does it (one ``getmany`` loop over the inputs, outputs
produced per partition batch with ``acks=all`` and awaited per polled batch, a concurrent
``errors`` reader), with the minimum of work per record: decode + validate each input, look
up the request's features for its interaction (the join), encode a one-item recommendation
and an error record of the worker's wire form (packed codes, the candidate's features),
decode + validate each error record read back. No scoring, no state, no journal.

Its events/s is the ceiling for any implementation of this path on aiokafka in one process;
``worker / floor`` says how much of that the worker's actual processing costs.

``read_back="memory"`` is the I/O of the current design for a worker that does not distil
the schema cache: the error records still go to ``errors`` (JSON, for the trainer and outside
consumers), and the error-memory writes also go out as one binary ``memory`` record per
polled batch and partition, which is what the worker reads back (and decodes), not the JSON.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from reloop.ops.kafka import make_producer, topic_name
from reloop.ops.settings import Settings
from reloop.processors.error_memory import memory_batches
from reloop.processors.outputs import KeyPartitioner, produce_batched
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import (CODE_DTYPE, ErrorRecord, Features, Interaction, Recommendation,
                            RecommendationRequest, ScoredItem)
from reloop.streams.memory_batch import decode_batch

TAKE = 5000  # records per getmany, as the worker's fetch_max_records


async def io_floor(inputs: Settings, outputs: Settings, n_pairs: int, tables: int,
                   consumer_factory: Any, read_back: bool | str = True) -> tuple[float, float]:
    """(records/s, records per CPU-second of this process) of the feedback path's I/O alone.

    Args:
        inputs: settings naming the pre-filled ``requests`` + ``interactions`` topics
            (``n_pairs`` of each, one-candidate requests linked to their interactions).
        outputs: settings naming fresh ``recommendations`` / ``errors`` topics (not the
            worker's: its replica would read these records).
        tables: error-memory codes per record (``error_memory.tables``).
        consumer_factory: ``(settings, logical topics, **kw) -> started consumer`` assigned
            every partition (``bench/throughput.assigned_consumer``).
        read_back: read the error records back (False: the I/O of a design where a worker
            applied its own error records without reading them from ``errors``; ``"memory"``:
            also write binary ``memory`` batches and read those back instead of the JSON).

    Records = requests + interactions read (2 per pair), timed from the first input fetch
    until every error record has been read back and decoded (or acknowledged).
    """
    limits = inputs.limits
    src = await consumer_factory(inputs, ["requests", "interactions"], fetch_max_wait_ms=10)
    await src.seek_to_beginning()
    binary = read_back == "memory"
    back = await consumer_factory(outputs, ["memory" if binary else "errors"], fetch_max_wait_ms=10)
    await back.seek_to_beginning()
    producer = make_producer(outputs.kafka)
    await producer.start()
    partitioner = KeyPartitioner()
    kinds = {topic_name(inputs.kafka, "requests"): RecommendationRequest,
             topic_name(inputs.kafka, "interactions"): Interaction}
    t_recs, t_errs = topic_name(outputs.kafka, "recommendations"), topic_name(outputs.kafka, "errors")
    t_mem = topic_name(outputs.kafka, "memory")
    codes = np.arange(tables, dtype=CODE_DTYPE).tobytes()
    features: dict[str, Features] = {}  # request_id -> the candidate's features (the join)
    n_read = 0 if read_back else n_pairs

    async def read_errors() -> None:
        nonlocal n_read
        while n_read < n_pairs:
            batch = await back.getmany(timeout_ms=100, max_records=TAKE)
            for msgs in batch.values():
                if binary:
                    n_read += sum(decode_batch(m.value).n for m in msgs)
                    continue
                for m in msgs:
                    decode_event(m.value, ErrorRecord, limits)
                n_read += len(msgs)

    reader = asyncio.create_task(read_errors())
    n, t0, c0 = 0, 0.0, 0.0
    try:
        while n < 2 * n_pairs:
            batch = await src.getmany(timeout_ms=100, max_records=TAKE)
            if batch and not n:
                t0, c0 = time.perf_counter(), time.process_time()
            out = []
            for tp, msgs in batch.items():
                kind = kinds[tp.topic]
                errs: list[ErrorRecord] = []
                for m in msgs:
                    ev = decode_event(m.value, kind, limits)
                    key = ev.user_id.encode()
                    if kind is RecommendationRequest:
                        cand = ev.candidates[0]
                        features[ev.request_id] = cand.features
                        out.append((t_recs, key, encode(Recommendation(
                            request_id=ev.request_id, user_id=ev.user_id, ts=ev.ts, model_version="floor",
                            items=[ScoredItem(item_id=cand.item_id, base_score=0.5, score=0.5)]))))
                    else:
                        err = ErrorRecord(
                            error_id=f"{ev.request_id}:{ev.item_id}", user_id=ev.user_id, item_id=ev.item_id,
                            ts=ev.ts, label=ev.label, base_pred=0.5, comp_pred=0.5, model_version="floor",
                            codes=codes, features=features.pop(ev.request_id or "", {}))
                        out.append((t_errs, key, encode(err)))
                        errs.append(err)
                if binary and errs:
                    key = str(tp.partition).encode()
                    out += [(t_mem, key, raw) for raw in memory_batches(errs, tables)]
                n += len(msgs)
            if out:
                await produce_batched(producer, out, partitioner)
        await asyncio.wait_for(reader, timeout=120)
        return 2 * n_pairs / (time.perf_counter() - t0), 2 * n_pairs / (time.process_time() - c0)
    finally:
        reader.cancel()
        await producer.stop()
        await src.stop()
        await back.stop()
