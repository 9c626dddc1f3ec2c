"""The worker: a Faust app hosting the hot-path batch consumers, the model agent and the web.

``reloop worker`` runs :func:`run_worker`. Faust provides the application (lifecycle, the web
server with ``/metrics``, ``/health``, ``/ready``, ``/status`` and the live status page at ``/``
and ``/ui``), and an agent on the low-rate ``models`` topic; the hot topics are read by
:class:`reloop.processors.hot_path.HotPath`, a service inside the app (see DESIGN.md for why).

Before Faust starts, :func:`wait_for_broker` probes the cluster (bootstrap, metadata, the
catalog's topics) with exponential backoff, logging ``broker_unreachable`` (or
``topics_missing``) per failed attempt, and gives up after
``kafka.connect_give_up_s`` with :class:`BrokerUnreachable` (``reloop worker`` then exits 1
with a one-line message), so Faust never hangs on an absent broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import faust

from reloop.models.bundle import CorruptModelError
from reloop.models.registry import ModelRegistry
from reloop.ops.broker import free_port
from reloop.ops.kafka import (COPARTITIONED, NotCopartitioned, check_copartitioned, client_kwargs, partition_counts,
                              topic_name)
from reloop.ops.settings import KafkaSettings, Settings
from reloop.ops.status_page import status_page
from reloop.ops.web_access import DigestCache, SizesCache, advertised_host, status_url, web_access_denied
from reloop.ops.serving import make_compensation
from reloop.processors.feedback import FeedbackCore
from reloop.processors.hot_path import HotPath
from reloop.processors.media import MediaCore
from reloop.processors.metrics import VARIANTS, OnlineMetrics
from reloop.processors.schema_child import SchemaCoreChild
from reloop.processors.schemas import SchemaCore
from reloop.processors.pending import PendingStore
from reloop.processors.telemetry import WorkerTelemetry
from reloop.streams.codec import InvalidEvent, decode_event
from reloop.streams.events import ModelAnnouncement
from reloop.streams.topics import CATALOG

log = logging.getLogger("reloop.worker")


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _counter_totals(telemetry: WorkerTelemetry) -> dict[str, dict[str, float]]:
    """Counter values by label from the worker's Prometheus registry, e.g.
    ``{"events_in": {"requests": 120.0}, "dead_letters": {...}}``. Collects those three
    counters alone: the whole registry (the stage histograms' buckets) cost ~1 ms per
    ``/status`` on the event loop, which a dashboard polls."""
    out: dict[str, dict[str, float]] = {}
    for key, counter in (("events_in", telemetry.events_in), ("events_out", telemetry.events_out),
                         ("dead_letters", telemetry.dead_letters)):
        values = out[key] = {}
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    values[sample.labels.get("topic", "")] = sample.value
    return out


def build_app(settings: Settings) -> tuple[faust.App, HotPath]:
    """Create the Faust app and its hot-path service for ``settings``."""
    ks = settings.kafka
    ws = settings.worker
    web_port = ws.web_port or free_port()  # 0 = any free port (printed at start)
    app = faust.App(
        f"{ks.group_id}-app", broker=ks.broker, store="memory://", web_port=web_port,
        web_bind=ws.web_bind, web_host=advertised_host(ws.web_bind),
        web_router_enabled=ws.web_faust_internals, web_tables_enabled=ws.web_faust_internals,
        broker_session_timeout=ks.session_timeout_s,
        broker_rebalance_timeout=ks.rebalance_timeout_s, consumer_auto_offset_reset="earliest",
        producer_acks=-1, topic_allow_declare=False, topic_disable_leader=True,
        broker_credentials=_faust_credentials(settings), datadir=str(Path(settings.worker.data_dir) / "faust"),
    )
    log.info("web_port", extra={"port": web_port, "bind": ws.web_bind, "status_page": status_url(ws.web_bind, web_port)})
    telemetry = WorkerTelemetry()
    metrics = OnlineMetrics(window=settings.worker.metrics_window)
    feedback = FeedbackCore(PendingStore(settings.worker.attribution_window_s, settings.worker.pending_limit),
                            metrics)
    topics = {t.name: topic_name(ks, t.name) for t in CATALOG}
    hot = HotPath(client=client_kwargs(ks), topics=topics, group_id=ks.group_id, limits=settings.limits,
                  feedback=feedback, telemetry=telemetry,
                  compensation_factory=lambda sc: make_compensation(settings, sc),
                  fetch_max_records=ks.fetch_max_records, idle_fetch_wait_ms=ks.idle_fetch_wait_ms,
                  session_timeout_ms=int(ks.session_timeout_s * 1000),
                  rebalance_timeout_ms=int(ks.rebalance_timeout_s * 1000),
                  group_instance_id=ks.group_instance_id or None,
                  snapshot_path=Path(settings.worker.data_dir) / "snapshots" / "error_memory.npz",
                  snapshot_every_s=settings.worker.snapshot_every_s,
                  replica_snapshot_every_s=settings.worker.replica_snapshot_every_s,
                  journal_fsync=settings.worker.journal_fsync, crash_threshold=settings.worker.crash_threshold,
                  checkpoint_in_child=settings.worker.checkpoint_in_child,
                  media=MediaCore(settings.media) if settings.worker.media_features else None,
                  error_memory=settings.error_memory if settings.worker.compensation != "none" else None,
                  schema_core=_schema_core(settings))
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
        except Exception as exc:  # noqa: BLE001 - poison-pill rule: a bad model is refused, never fatal
            log.error("model_refused", extra={"version": version, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"})
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

    # Registered before Faust's own blueprints (applied when the server starts), so this view,
    # not Faust's placeholder index ({"status": "OK"}), answers "/" (aiohttp: first match wins).
    @app.page("/")
    async def index(web: Any, request: Any) -> Any:
        return web.bytes(status_page(), content_type="text/html")  # <meta charset="utf-8"> in the page

    @app.page("/ui")
    async def ui(web: Any, request: Any) -> Any:
        return web.bytes(status_page(), content_type="text/html")  # <meta charset="utf-8"> in the page

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = hot.scoring is not None and hot.inputs_ready
        return web.json({"ready": ok, "model_version": hot.scoring.model_version if hot.scoring else None},
                        status=200 if ok else 503)

    sizes_cache = SizesCache(memory_sizes, max_age_s=10.0)

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        summary = hot.tasks.metrics.summary()
        for v in VARIANTS:
            for m in ("auc", "logloss"):
                val = summary[f"{m}_{v}"]
                if math.isfinite(val):
                    telemetry.online.labels(m, v).set(val)
        for name, size in (await sizes_cache.get(hot)).items():
            telemetry.memory_bytes.labels(name).set(size)
        telemetry.pending.set(hot.tasks.pending_count)
        return web.bytes(telemetry.render(), content_type="text/plain; version=0.0.4")

    @app.page("/memory/{user_id}")
    async def media_memory(web: Any, request: Any, user_id: str) -> Any:
        """One user's media memory: private (token, or loopback clients when no token is set)."""
        denied = web_access_denied(ws.web_token, request.remote, request.headers.get("Authorization"))
        if denied:
            return web.json({"error": denied}, status=403)
        if hot.media is None:
            return web.json({"error": "media memory disabled"}, status=404)
        return web.json(hot.media.describe(user_id))

    state_cache = DigestCache()

    @app.page("/state")
    async def state_digest(web: Any, request: Any) -> Any:
        """Fingerprint of the replica: sha256 over the sketch arrays, computed in a thread
        (~0.2 s at 100 MB), shared by concurrent callers and cached until the state changes."""
        denied = web_access_denied(ws.web_token, request.remote, request.headers.get("Authorization"))
        if denied:
            return web.json({"error": denied}, status=403)
        applied, digest = await state_cache.get(hot)
        return web.json({"errors_applied": applied["errors"], "memory_applied": applied["memory"],
                         "error_memory_digest": digest})

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        live = hot.tasks.metrics  # replaced on recovery: always read it through the hot path
        summary = {k: _finite(v) for k, v in live.summary().items()}
        series = [{k: _finite(v) for k, v in p.items()} for p in live.series[-300:]]
        # the cluster's figures, from the one worker that reads ``errors`` (a former one's are
        # stale), read in the replica thread that updates them
        cluster = None
        if hot.replica.quality is not None and hot.is_leader:
            with contextlib.suppress(RuntimeError):  # the replica thread is shut down: stopping
                cluster = await asyncio.get_running_loop().run_in_executor(
                    hot.replica_thread, lambda: hot.replica.quality.view())  # type: ignore[union-attr]
        if cluster is not None:
            cluster = {"summary": {k: _finite(v) for k, v in cluster["summary"].items()},
                       "series": [{k: _finite(v) for k, v in p.items()} for p in cluster["series"]]}
        return web.json({
            "model_version": hot.scoring.model_version if hot.scoring else None,
            "pending": hot.tasks.pending_count, "unattributed": hot.tasks.unattributed,
            "duplicates_skipped": hot.duplicates_skipped,
            "errors_applied": hot.errors_applied, "memory_applied": hot.memory_applied,
            "summary": summary, "series": series, "cluster_quality": cluster,
            "error_memory": {"rekeyed": getattr(hot.compensation, "rekeyed", 0)},
            # what scoring matches requests against now: the distilled cache's schemata on the
            # elected worker, the ones read from ``schemas`` on the others (they arrive late)
            "schemas_matched": list(hot.scoring.schemas.cache.matcher.ids)
            if hot.scoring is not None and hot.scoring.schemas is not None else [],
            "counters": _counter_totals(telemetry),
        })

    return app, hot


async def memory_sizes(hot: HotPath) -> dict[str, int]:
    """Bytes held by each memory of the worker (cheap: array sizes, no copies). The input side
    is read on the event loop (which alone changes it); the replica side (error memory, schema
    cache, reorder buffer) in the replica thread, between two polls' applies, since that thread
    changes it."""
    out = input_sizes(hot)
    try:
        out.update(await asyncio.get_running_loop().run_in_executor(hot.replica_thread, replica_sizes, hot))
    except RuntimeError:  # the replica thread is shut down: the worker is stopping
        pass
    return out


def _schema_core(settings: Settings) -> SchemaCore | SchemaCoreChild | None:
    """The worker's schema cache: in a child process by default (``worker.schema_in_child``)."""
    if not settings.worker.schema_cache:
        return None
    return SchemaCoreChild(settings.schemas) if settings.worker.schema_in_child else SchemaCore(settings.schemas)


def _nbytes(obj: Any) -> int:
    n = obj.nbytes  # a property on some memories, a method on others
    return int(n() if callable(n) else n)


def input_sizes(hot: HotPath) -> dict[str, int]:
    """Bytes of the input-side state: media memories, pending predictions, orphan clicks and
    resolved ids (sampled, approximate: Python objects). Call on the event loop."""
    out: dict[str, int] = {}
    if hot.media is not None:
        mem = hot.media.memory
        out["media_memory"] = sum(mem.nbytes_user(u) for u in mem.users) + int(mem.items.table.nbytes)
    out["pending"] = hot.tasks.approx_nbytes()
    return out


def replica_sizes(hot: HotPath) -> dict[str, int]:
    """Bytes of the replica side: the error-memory sketch, the schema cache and the error
    records its reorder buffer holds. Call in ``hot.replica_thread``."""
    out: dict[str, int] = {}
    sketch = getattr(hot.compensation, "memory", None)
    if sketch is not None and hasattr(sketch, "nbytes"):
        out["error_memory"] = _nbytes(sketch)
    if hot.schema_core is not None:
        out["schema_cache"] = _nbytes(hot.schema_core.cache)
    reorder = hot.replica.reorder
    if reorder is not None:  # error records held for the schema cache's event-time order
        out["schema_reorder"] = reorder.approx_nbytes()
    return out


def _faust_credentials(settings: Settings) -> Any:
    ks = settings.kafka
    if ks.security_protocol == "PLAINTEXT":
        return None
    from reloop.ops.kafka import ssl_context

    if ks.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=ks.sasl_username, password=ks.sasl_password,
                                     mechanism=ks.sasl_mechanism, ssl_context=ssl_context(ks))
    return faust.SSLCredentials(ssl_context(ks))


class BrokerUnreachable(ConnectionError):
    """The cluster did not answer (or lacked the catalog's topics) within ``connect_give_up_s``,
    or its co-partitioned topics disagree on their partition counts (at once: that does not
    heal by waiting)."""


async def _probe(ks: KafkaSettings, timeout_s: float) -> set[str]:
    """One attempt: bootstrap and list the cluster's topics (raises on any failure).

    Raises:
        NotCopartitioned: the co-partitioned topics exist with different partition counts.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client_kwargs(ks), request_timeout_ms=max(500, int(timeout_s * 1000)))
    try:
        await admin.start()
        names = set(await admin.list_topics())
        wanted = [n for n in (topic_name(ks, t) for t in COPARTITIONED) if n in names]
        check_copartitioned(await partition_counts(admin, wanted), ks.topic_prefix)
        return names
    finally:
        await admin.close()


async def wait_for_broker(ks: KafkaSettings) -> int:
    """Block until the cluster answers metadata and has every catalog topic.

    Attempts are spaced by exponential backoff: ``connect_backoff_initial_s``, doubling up to
    ``connect_backoff_max_s`` (x0.8-1.2 jitter so replicas do not retry in lockstep), each
    attempt bounded by the time left, within [2 s, 5 s]. Every failed attempt logs ``broker_unreachable``
    (or ``topics_missing``) with the attempt number and the next delay in seconds.

    Returns:
        The number of attempts it took.

    Raises:
        BrokerUnreachable: still failing ``connect_give_up_s`` seconds after the first attempt,
            or at once when the co-partitioned topics disagree on their partition counts.
    """
    bootstrap = client_kwargs(ks)["bootstrap_servers"]
    wanted = {topic_name(ks, t.name) for t in CATALOG}
    t0 = time.monotonic()
    deadline = t0 + ks.connect_give_up_s
    delay = ks.connect_backoff_initial_s
    aiokafka_log = logging.getLogger("aiokafka")
    attempt = 0
    while True:
        attempt += 1
        level = aiokafka_log.level
        aiokafka_log.setLevel(logging.CRITICAL)  # its connection errors repeat what our event says
        try:
            timeout = max(2.0, min(5.0, deadline - time.monotonic()))
            missing = sorted(wanted - await asyncio.wait_for(_probe(ks, timeout), timeout))
            reason = f"topics missing: {', '.join(missing)} (run `reloop topics create`)" if missing else ""
        except NotCopartitioned as exc:  # not "not yet": the topics must be recreated
            raise BrokerUnreachable(f"broker {bootstrap}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - every other failure of the probe means "not yet"
            text, kind = str(exc), type(exc).__name__
            missing, reason = [], text if text.startswith(kind) else f"{kind}: {text}" if text else kind
        finally:
            aiokafka_log.setLevel(level)
        if not reason:
            log.info("broker_reachable", extra={"bootstrap": bootstrap, "attempts": attempt,
                                                "waited_s": round(time.monotonic() - t0, 3)})
            return attempt
        left = deadline - time.monotonic()
        if left <= 0:
            what = "has not got the catalog's topics" if missing else "unreachable"
            raise BrokerUnreachable(f"broker {bootstrap} {what} after {ks.connect_give_up_s:g} s and {attempt} "
                                    f"attempt(s); giving up (kafka.connect_give_up_s). Last error: {reason}")
        sleep_s = min(delay * random.uniform(0.8, 1.2), left)
        log.warning("topics_missing" if missing else "broker_unreachable",
                    extra={"bootstrap": bootstrap, "attempt": attempt, "next_delay_s": round(sleep_s, 3),
                           "give_up_in_s": round(left, 3), "reason": reason[:300]})
        await asyncio.sleep(sleep_s)
        delay = min(delay * 2, ks.connect_backoff_max_s)


def run_worker(settings: Settings, loglevel: str = "INFO") -> None:
    """Run one worker until SIGINT/SIGTERM (blocking).

    Raises:
        SystemExit: (code 1, one-line message) the broker stayed unreachable for
            ``kafka.connect_give_up_s`` seconds; Faust is never started then.
    """
    from faust.worker import Worker
    from mode.utils.loops import get_event_loop

    # The hot path allocates many short-lived objects; a larger first generation keeps the
    # cyclic GC from scanning the (large, long-lived) pending store on every few batches.
    gc.set_threshold(50_000, 20, 50)
    app, _ = build_app(settings)
    loop = get_event_loop()  # the loop Faust's worker will run on
    try:
        loop.run_until_complete(wait_for_broker(settings.kafka))
    except BrokerUnreachable as exc:
        log.info("broker_give_up", extra={"reason": str(exc)})  # the one-line exit message says it on stderr
        raise SystemExit(f"reloop worker: {exc}") from None
    # KeyboardInterrupt while waiting propagates: `reloop` prints one line and exits 130
    port = app.conf.web_port  # the port picked when worker.web_port is 0
    print(f"reloop worker: web on {settings.worker.web_bind}:{port}, status page "
          f"{status_url(settings.worker.web_bind, port)}", file=sys.stderr, flush=True)
    # Keep ReLoop's JSON log lines (reloop.ops.logging_setup) instead of mode's text format.
    worker = _bounded_stop_worker(Worker, settings.kafka.connect_give_up_s)(
        app, loglevel=loglevel, override_logging=False, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        # Faust has stopped and the final snapshots are on disk; skip the interpreter's teardown
        # of a large heap (seconds, measured), so a stop fits reloop run's 10 s.
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        log.info("worker_exit", extra={"code": code})
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _bounded_stop_worker(worker_cls: Any, give_up_s: float) -> Any:
    """``worker_cls`` (Faust's Worker) that exits within ``give_up_s`` seconds (at least 1) of
    SIGINT/SIGTERM: Faust's orderly stop (final snapshots, leaving the group, flushing the
    producer) waits on the broker, and with the broker gone it never ends. A daemon timer,
    armed by the first signal, logs ``shutdown_forced`` and exits with code 1 if the orderly
    stop has not finished by then; the state on disk is then that of a crash (the last
    snapshots plus the journal), which a restart recovers."""
    import threading

    limit = max(1.0, give_up_s * 0.9)

    def force_exit() -> None:
        log.error("shutdown_forced", extra={"after_s": limit, "why": "orderly stop did not finish (broker gone?)"})
        for h in logging.getLogger().handlers:
            h.flush()
        os._exit(1)

    class BoundedStopWorker(worker_cls):  # type: ignore[misc, valid-type]
        def _schedule_shutdown(self, signal: Any) -> None:
            if not self._signal_stop_time:
                timer = threading.Timer(limit, force_exit)
                timer.daemon = True
                timer.start()
                log.info("shutdown_started", extra={"signal": getattr(signal, "name", str(signal)),
                                                    "exit_within_s": limit})
            super()._schedule_shutdown(signal)

        async def _sentinel_task(self) -> None:  # mode sleeps 1 s here before closing the loop
            await asyncio.sleep(0)

    return BoundedStopWorker
