"""Prometheus metrics of one worker (own registry, so several workers can share a process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WorkerTelemetry:
    """Counters, gauges and histograms exported on ``/metrics``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_in = Counter("reloop_events_in", "Events consumed", ["topic"], registry=r)
        self.events_out = Counter("reloop_events_out", "Events produced", ["topic"], registry=r)
        self.dead_letters = Counter("reloop_dead_letters", "Inputs sent to the DLQ", ["topic"], registry=r)
        self.duplicates = Counter("reloop_duplicates", "Byte-identical copies of inputs already applied "
                                  "(not processed again)", ["topic"], registry=r)
        self.batch_seconds = Histogram("reloop_batch_seconds", "Processing time of one polled batch",
                                       ["path"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "reloop_stage_seconds", "Seconds of one input batch per stage: fetch (the poll that returned it), "
            "queueing (its oldest request's age when processing starts; batches with requests only), "
            "decode (decode, validate, admit), "
            "cores (media, scoring, feedback), of which model (features + onnxruntime) and compensation "
            "(error memory + schemata), journal (encode outputs, write-ahead), produce (until acknowledged), "
            "commit; and checkpoint: collecting the input checkpoint on the event loop, between two batches "
            "(every worker.snapshot_every_s, not per batch)", ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge("reloop_consumer_lag", "Records behind the high watermark",
                                  ["topic"], registry=r)
        self.pending = Gauge("reloop_pending_predictions", "Predictions awaiting feedback", registry=r)
        self.memory_bytes = Gauge("reloop_memory_bytes", "Bytes held by a memory", ["memory"], registry=r)
        self.online = Gauge("reloop_online_metric", "Cumulative online quality", ["metric", "variant"],
                            registry=r)
        self.model_info = Gauge("reloop_model_info", "Serving model version (value 1)", ["version"],
                                registry=r)
        self.model_swaps = Counter("reloop_model_swaps", "Model versions swapped in", registry=r)
        self.schema_ticks = Gauge("reloop_schema_ticks", "Evaluation ticks of this worker's schema cache "
                                  "(the distilling worker's), since it was built or restored", registry=r)
        self.schema_tick_seconds = Gauge("reloop_schema_tick_seconds", "CPU seconds of those ticks (of the "
                                         "thread that ran them)", registry=r)

    def stages(self) -> "StageClock":
        """A clock that observes the stages of one batch into :attr:`stage_seconds`."""
        return StageClock(self.stage_seconds)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)


class StageClock:
    """Laps of one batch: :meth:`lap` observes the seconds since the previous lap (or since the
    clock was made) under a stage name; :meth:`observe` records a duration measured elsewhere."""

    def __init__(self, hist: Histogram) -> None:
        self.hist = hist
        self.t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.hist.labels(stage).observe(now - self.t)
        self.t = now

    def observe(self, stage: str, seconds: float) -> None:
        self.hist.labels(stage).observe(max(0.0, seconds))
