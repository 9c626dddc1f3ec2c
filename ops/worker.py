"""The worker: a Faust app hosting the hot-path batch consumers, the model agent and the web.

``reloop worker`` runs :func:`run_worker`. Faust provides the application (lifecycle, the web
server with ``/metrics``, ``/health``, ``/ready``, ``/status``), and an agent on the low-rate
``models`` topic; the hot topics are read by :class:`processors.hot_path.HotPath`, a service
inside the app (see DESIGN.md for why).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from pathlib import Path
from typing import Any

import faust

from models.bundle import CorruptModelError
from models.registry import ModelRegistry
from ops.kafka import client_kwargs, topic_name
from ops.settings import Settings
from ops.serving import make_compensation
from processors.feedback import FeedbackCore
from processors.hot_path import HotPath
from processors.media import MediaCore
from processors.metrics import VARIANTS, OnlineMetrics
from processors.schemas import SchemaCore
from processors.pending import PendingStore
from processors.telemetry import WorkerTelemetry
from streams.codec import InvalidEvent, decode_event
from streams.events import ModelAnnouncement
from streams.topics import CATALOG

log = logging.getLogger("reloop.worker")


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def build_app(settings: Settings) -> tuple[faust.App, HotPath]:
    """Create the Faust app and its hot-path service for ``settings``."""
    ks = settings.kafka
    app = faust.App(
        f"{ks.group_id}-app", broker=ks.broker, store="memory://", web_port=settings.worker.web_port,
        web_host="127.0.0.1", broker_session_timeout=ks.session_timeout_s,
        broker_rebalance_timeout=ks.rebalance_timeout_s, consumer_auto_offset_reset="earliest",
        producer_acks=-1, topic_allow_declare=False, topic_disable_leader=True,
        broker_credentials=_faust_credentials(settings), datadir=str(Path(settings.worker.data_dir) / "faust"),
    )
    telemetry = WorkerTelemetry()
    metrics = OnlineMetrics(window=settings.worker.metrics_window)
    feedback = FeedbackCore(PendingStore(settings.worker.attribution_window_s, settings.worker.pending_limit),
                            metrics)
    topics = {t.name: topic_name(ks, t.name) for t in CATALOG}
    hot = HotPath(client=client_kwargs(ks), topics=topics, group_id=ks.group_id, limits=settings.limits,
                  feedback=feedback, telemetry=telemetry,
                  compensation_factory=lambda sc: make_compensation(settings, sc),
                  fetch_max_records=ks.fetch_max_records,
                  session_timeout_ms=int(ks.session_timeout_s * 1000),
                  rebalance_timeout_ms=int(ks.rebalance_timeout_s * 1000),
                  snapshot_path=Path(settings.worker.data_dir) / "snapshots" / "error_memory.npz",
                  snapshot_every_s=settings.worker.snapshot_every_s,
                  media=MediaCore(settings.media) if settings.worker.media_features else None,
                  schema_core=SchemaCore(settings.schemas) if settings.worker.schema_cache else None)
    registry = ModelRegistry(Path(settings.worker.data_dir) / "models")
    models_topic = app.topic(topics["models"], value_serializer="raw", key_serializer="raw")

    async def load_version(version: str, expected_sha256: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        try:
            bundle = await loop.run_in_executor(None, registry.load, version)
            if expected_sha256 is not None and bundle.meta.onnx_sha256 != expected_sha256:
                raise CorruptModelError(f"{version}: registry sha256 {bundle.meta.onnx_sha256[:12]} differs "
                                        f"from the announced {expected_sha256[:12]}")
            scorer = await loop.run_in_executor(
                None, lambda: bundle.load_scorer(intra_op_num_threads=settings.worker.ort_threads))
        except (CorruptModelError, FileNotFoundError, ValueError) as exc:
            log.error("model_refused", extra={"version": version, "reason": str(exc)})
            return
        hot.install_model(scorer)
        log.info("model_loaded", extra={"version": version})

    @app.task
    async def load_current_model() -> None:
        await app.add_runtime_dependency(hot)
        version = registry.current()
        if version is not None:
            await load_version(version)
        else:
            log.warning("no_model_yet", extra={"registry": str(registry.root)})

    @app.agent(models_topic)
    async def on_model_announcement(stream: Any) -> None:
        async for raw in stream:
            try:
                ann = decode_event(raw, ModelAnnouncement)
            except InvalidEvent as exc:
                log.error("bad_model_announcement", extra={"reason": str(exc)})
                continue
            current = hot.scoring.model_version if hot.scoring else None
            if ann.version != current:
                await load_version(ann.version, ann.sha256)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = hot.scoring is not None and hot.inputs_ready
        return web.json({"ready": ok, "model_version": hot.scoring.model_version if hot.scoring else None},
                        status=200 if ok else 503)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        summary = metrics.summary()
        for v in VARIANTS:
            for m in ("auc", "logloss"):
                val = summary[f"{m}_{v}"]
                if math.isfinite(val):
                    telemetry.online.labels(m, v).set(val)
        return web.bytes(telemetry.render(), content_type="text/plain; version=0.0.4")

    @app.page("/memory/{user_id}")
    async def media_memory(web: Any, request: Any, user_id: str) -> Any:
        if hot.media is None:
            return web.json({"error": "media memory disabled"}, status=404)
        return web.json(hot.media.describe(user_id))

    @app.page("/state")
    async def state_digest(web: Any, request: Any) -> Any:
        """Fingerprint of the replica (sha256 over the sketch arrays: ~0.2 s at 100 MB)."""
        return web.json({"errors_applied": hot.errors_applied, "error_memory_digest": hot.compensation.digest()})

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        summary = {k: _finite(v) for k, v in metrics.summary().items()}
        series = [{k: _finite(v) for k, v in p.items()} for p in metrics.series[-300:]]
        return web.json({
            "model_version": hot.scoring.model_version if hot.scoring else None,
            "pending": len(feedback.pending), "unattributed": feedback.unattributed,
            "errors_applied": hot.errors_applied, "summary": summary, "series": series,
            "error_memory": {"rekeyed": getattr(hot.compensation, "rekeyed", 0)},
        })

    return app, hot


def _faust_credentials(settings: Settings) -> Any:
    ks = settings.kafka
    if ks.security_protocol == "PLAINTEXT":
        return None
    from ops.kafka import ssl_context

    if ks.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=ks.sasl_username, password=ks.sasl_password,
                                     mechanism=ks.sasl_mechanism, ssl_context=ssl_context(ks))
    return faust.SSLCredentials(ssl_context(ks))


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run one worker until SIGINT/SIGTERM (blocking)."""
    from faust.worker import Worker

    # The hot path allocates many short-lived objects; a larger first generation keeps the
    # cyclic GC from scanning the (large, long-lived) pending store on every few batches.
    gc.set_threshold(50_000, 20, 50)
    app, _ = build_app(settings)
    # Keep ReLoop's JSON log lines (ops.logging_setup) instead of mode's text format.
    Worker(app, loglevel=loglevel, override_logging=False, redirect_stdouts=False).execute_from_commandline()
