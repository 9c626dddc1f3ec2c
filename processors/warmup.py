"""Compile the numba kernels before a worker consumes, off its event loop.

A kernel is compiled the first time it is called (or loaded from numba's on-disk cache next to
its module, once some process has compiled it). On a fresh checkout, that first call would
otherwise happen inside the first batch that needs it, on the event loop: seconds during which
the worker answers nothing, not even ``/health`` (measured: over 10 s for the media kernels on
the loaded 2-core machine). :func:`warm_up` drives throwaway copies of the media memory, the
error memory and the schema cache through their kernels on a few synthetic events; the worker
runs it in a thread at start, before it reports ready.

The error memory's kernels (hashing, read, and the write of a decoded ``memory`` batch, whose
arrays are read-only views: a signature of its own) and the schema cache's ring kernels (only
reached once a candidate schema is evaluated, hence the biased synthetic errors) were left out
before 2026-12-07: each was compiled, or loaded from the disk cache (~50 ms of CPU with the
GIL held, each), inside the first batch that needed it, i.e. in the replica thread while the
worker was consuming.
"""

from __future__ import annotations

import time

import numpy as np

import msgspec

from reloop.processors.error_memory import memory_batches
from reloop.processors.media import MediaCore
from reloop.processors.schemas import SchemaCore
from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig
from reloop.state.media.memory import MediaMemoryConfig
from reloop.state.schemas.config import SchemaCacheConfig
from reloop.streams.events import Candidate, ErrorRecord, MediaEvent, RecommendationRequest, pack_codes
from reloop.streams.memory_batch import decode_batch

__all__ = ["warm_up", "warm_error_memory"]


def warm_error_memory(config: ErrorMemoryConfig, n: int = 64) -> None:
    """Run the error memory's kernels as serving and the replica call them: hash ``(n, 8)``
    float32 hidden vectors, write one ``memory`` batch encoded and decoded as on the wire, and
    read the sketch (throwaway sketch of at most 2**6 buckets per table: the kernels'
    signatures do not depend on sizes).

    >>> warm_error_memory(ErrorMemoryConfig(bits=12, tables=4))
    """
    small = msgspec.structs.replace(config, bits=min(config.bits, 6))
    mem = ErrorMemory(8, small)
    rng = np.random.default_rng(0)
    codes = mem.codes(rng.standard_normal((n, 8)).astype(np.float32))
    recs = [ErrorRecord(error_id=f"w{i}", user_id="warmup", item_id=f"i{i % 8}", ts=1.0 + i, label=i % 2,
                        base_pred=0.3, comp_pred=0.3, model_version="warmup", codes=pack_codes(codes[i]))
            for i in range(n)]
    for raw in memory_batches(recs, small.tables, small.write_sample):
        b = decode_batch(raw)  # as ErrorMemoryCompensation.apply_memory_batch writes it
        keys = b.keys_array()
        mem.write(b.codes_array().view(np.int32), b.y_array(), b.p_array(), b.ts_array(), keys,
                  sampled=keys is None)
    mem.compensate(np.full(n, 0.3), codes, float(n))  # reads the sketch once it holds a write


def warm_up(media: MediaMemoryConfig | None, schemas: SchemaCacheConfig | None, n: int = 64,
            error_memory: ErrorMemoryConfig | None = None) -> float:
    """Run the kernels once on ``n`` synthetic events each (throwaway state); returns seconds.

    >>> warm_up(None, None)
    0.0
    """
    if media is None and schemas is None and error_memory is None:
        return 0.0
    t0 = time.perf_counter()
    if error_memory is not None:
        warm_error_memory(error_memory, n)
    rng = np.random.default_rng(0)
    if media is not None:
        core = MediaCore(media)
        events = [MediaEvent(user_id="warmup", ts=1.0 + i, modality="video", segment_id=f"s{i // 4}",
                             item_id=f"i{i % 8}", embedding=rng.standard_normal(media.dim).tolist())
                  for i in range(n)]
        core.on_batch(events)
        req = RecommendationRequest(request_id="warmup", user_id="warmup", ts=float(n + 1),
                                    candidates=[Candidate(item_id=f"i{j}") for j in range(8)])
        core.features_for_requests([req])
    if schemas is not None:
        cache = SchemaCore(schemas)
        recs = [ErrorRecord(error_id=f"w{i}", user_id="warmup", item_id=f"i{i % 8}", ts=1.0 + i,
                            label=int(i % 3 == 0), base_pred=0.3, comp_pred=0.3, model_version="warmup",
                            features={"segment": f"s{i % 2}", "genre": f"g{i % 4}"}) for i in range(n)]
        cache.on_batch(recs)
        # 2048 errors over 10 s, under-predicted on segment=s0 (inside genre=g0): candidates in
        # two columns, so the overlap check's ring kernels run (RecentRecords.explained)
        cache = SchemaCore(schemas)
        cache.on_batch([ErrorRecord(error_id=f"x{i}", user_id="warmup", item_id=f"i{i % 8}", ts=1.0 + i * 0.005,
                                    label=int(i % 8 == 0), base_pred=0.05 if i % 4 == 0 else 0.3, comp_pred=0.3,
                                    model_version="warmup", features={"segment": f"s{i % 4}", "genre": f"g{i % 2}"})
                        for i in range(2048)])
    return time.perf_counter() - t0
