"""The kernels a worker's feedback path calls, driven without Kafka (for the warm-up test,
``test_warmup_coverage.py``): a fitted model scores one-candidate requests with the error
memory, their interactions resolve them, the error records go through ``memory`` batches into
the sketch and into a schema cache."""

from __future__ import annotations

import tempfile
from typing import Any


def run(settings: Any) -> None:
    from reloop.ops.replay import fit_initial_model
    from reloop.ops.serving import make_compensation
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.processors.metrics import OnlineMetrics
    from reloop.processors.pending import PendingStore
    from reloop.processors.prequential import as_feedback, as_request
    from reloop.processors.schemas import SchemaCore
    from reloop.processors.scoring import ScoringCore
    from reloop.processors.feedback import FeedbackCore
    from reloop.streams.events import Interaction
    from reloop.streams.memory_batch import decode_batch

    with tempfile.TemporaryDirectory() as tmp:
        s = settings.with_overrides(worker={"data_dir": tmp}, train={"epochs": 1, "batch_size": 256})
        log = [e for e in Simulator(SimConfig(seed=5)).labelled_log(450) if isinstance(e, Interaction)]
        warm, live = log[:3000], log[3000:9000]
        fitted = fit_initial_model(warm, s)
        comp = make_compensation(s, fitted.scorer)
        scoring = ScoringCore(fitted.scorer, comp)
        feedback = FeedbackCore(PendingStore(30.0), OnlineMetrics(window=200))
        schemas = SchemaCore(s.schemas)
        for lo in range(0, len(live), 2000):
            part = live[lo:lo + 2000]
            _, pending = scoring.score([as_request(it, lo + j) for j, it in enumerate(part)])
            errors = feedback.on_scored(pending) + feedback.on_batch([as_feedback(it, lo + j) for j, it in enumerate(part)])
            for raw in comp.memory_records(errors):
                comp.apply_memory_batch(decode_batch(raw))
            schemas.on_batch(errors)
