"""Compile the numba kernels before a worker consumes, off its event loop.

A kernel is compiled the first time it is called (or loaded from numba's on-disk cache next to
its module, once some process has compiled it). On a fresh checkout, that first call would
otherwise happen inside the first batch that needs it, on the event loop: seconds during which
the worker answers nothing, not even ``/health`` (measured: over 10 s for the media kernels on
the loaded 2-core machine). :func:`warm_up` drives throwaway copies of the media memory and
the schema cache through their kernels on a few synthetic events; the worker runs it in a
thread at start, before it reports ready.
"""

from __future__ import annotations

import time

import numpy as np

from reloop.processors.media import MediaCore
from reloop.processors.schemas import SchemaCore
from reloop.state.media.memory import MediaMemoryConfig
from reloop.state.schemas.config import SchemaCacheConfig
from reloop.streams.events import Candidate, ErrorRecord, MediaEvent, RecommendationRequest

__all__ = ["warm_up"]


def warm_up(media: MediaMemoryConfig | None, schemas: SchemaCacheConfig | None, n: int = 64) -> float:
    """Run the kernels once on ``n`` synthetic events each (throwaway state); returns seconds.

    >>> warm_up(None, None)
    0.0
    """
    if media is None and schemas is None:
        return 0.0
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0
