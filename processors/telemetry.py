"""Prometheus metrics of one worker (own registry, so several workers can share a process)."""

from __future__ import annotations

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
        self.consumer_lag = Gauge("reloop_consumer_lag", "Records behind the high watermark",
                                  ["topic"], registry=r)
        self.pending = Gauge("reloop_pending_predictions", "Predictions awaiting feedback", registry=r)
        self.memory_bytes = Gauge("reloop_memory_bytes", "Bytes held by a memory", ["memory"], registry=r)
        self.online = Gauge("reloop_online_metric", "Cumulative online quality", ["metric", "variant"],
                            registry=r)
        self.model_info = Gauge("reloop_model_info", "Serving model version (value 1)", ["version"],
                                registry=r)
        self.model_swaps = Counter("reloop_model_swaps", "Model versions swapped in", registry=r)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)
