"""``reloop train``: the trainer process (one per registry).

The trainer consumes ``errors`` with its own consumer group (``trainer.group_id``; aiokafka
``getmany``), turns each error record into a labelled sample in the durable
:class:`~reloop.state.sample_window.SampleWindow` (``<data_dir>/window``), asks
:class:`~reloop.processors.trainer.TrainerCore` whether a retrain is due (schedule or drift) and, if
so, runs :func:`reloop.ops.retrain.retrain_once` in a thread (fit warm-started from the
serving version, export, gates, atomic register: see :mod:`reloop.ops.retrain`), then announces
an accepted version on the compacted ``models`` topic (key ``current``). A rejected candidate
is never written, promoted or announced: the serving model stays.

Event-time order matters to the drift detector, and a backlog (e.g. after a restart) is read
partition by partition. So polled records go through
:class:`~reloop.processors.trainer.EventTimeMerge`: buffered per partition and released in event-time
order up to the slowest lagging partition's progress (a partition with too much buffered is
paused), and only offsets of released records are committed.

Offsets are committed only after the window is flushed (fsync), so a crash loses no sample
and redelivered records are dropped by the window's dedupe. Consumption pauses during a
retrain (the records wait in Kafka). At most one trainer runs per registry:
:class:`~reloop.models.registry.RegistryLock` (``flock`` on ``<registry>/trainer.lock``) is taken at
start and a second trainer exits with code 3. On start the trainer re-announces ``CURRENT``,
so a version registered just before a crash is still announced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, NoReturn

from reloop.models.bundle import CorruptModelError
from reloop.models.registry import ModelRegistry, RegistryLock, RegistryLocked
from reloop.ops.children import Abandoned, in_daemon_thread
from reloop.ops.kafka import client_kwargs, make_producer, topic_name
from reloop.ops.retrain import RetrainOutcome, load_serving, open_window, registry_root, retrain_once, trainer_config
from reloop.ops.settings import Settings
from reloop.processors.trainer import EventTimeMerge, RetrainDecision, TrainerConfig, TrainerCore
from reloop.state.sample_window import SampleWindow, sample_from_error
from reloop.streams.codec import InvalidEvent, decode_event, encode
from reloop.streams.events import ErrorRecord, ModelAnnouncement

__all__ = ["Trainer", "run_trainer"]

log = logging.getLogger("reloop.trainer")


class Trainer:
    """The trainer's streaming shell (see module docstring); :meth:`run` until ``stop`` is set.

    Args:
        settings: deployment settings (``kafka``, ``worker.data_dir``, ``features``, ``model``,
            ``train`` and the ``trainer`` section).
        config: trainer settings (default: ``settings.trainer``).
        on_outcome: called with every :class:`RetrainOutcome` (tests, progress display).
    """

    def __init__(self, settings: Settings, config: TrainerConfig | None = None,
                 on_outcome: Callable[[RetrainOutcome], None] | None = None) -> None:
        self.settings = settings
        self.config = config or trainer_config(settings)
        self.registry = ModelRegistry(registry_root(settings))
        self.on_outcome = on_outcome
        self.outcomes: list[RetrainOutcome] = []
        self.records_in = 0
        self.invalid = 0
        self.window: SampleWindow | None = None
        self.core: TrainerCore | None = None
        self.merge = EventTimeMerge(self.config.merge_max_buffered)
        self.abandoned = False  # a stop arrived during a retrain (left to die with the process)

    async def run(self, stop: asyncio.Event, progress: Callable[[Trainer], None] | None = None) -> None:
        """Consume, window, decide, retrain, announce until ``stop`` is set.

        Raises:
            RegistryLocked: another trainer holds the registry.
        """
        from aiokafka import AIOKafkaConsumer

        ks, cfg = self.settings.kafka, self.config
        with RegistryLock(self.registry.root):
            self.window = window = open_window(self.settings, cfg)
            self.core = core = TrainerCore(cfg, self.registry.current(), len(window))
            consumer = AIOKafkaConsumer(topic_name(ks, "errors"), **client_kwargs(ks), group_id=cfg.group_id,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        fetch_max_wait_ms=ks.idle_fetch_wait_ms)  # off the latency path
            producer = make_producer(ks)
            await producer.start()
            await consumer.start()
            log.info("trainer_started", extra={"group": cfg.group_id, "window": len(window),
                                               "serving": core.serving_version, "registry": str(self.registry.root)})
            try:
                if core.serving_version is not None:
                    await self._announce(producer, core.serving_version, unless_last=True)
                    await self._warm_exporter(stop)
                decision = core.on_batch([])
                while not stop.is_set() and not self.abandoned:
                    if decision is not None:
                        await self._retrain(decision, producer, stop)
                        if self.abandoned:
                            break
                    decision = await self._poll(consumer)
                    if progress is not None:
                        progress(self)
            finally:
                await consumer.stop()
                await producer.stop()
                window.close()
                log.info("trainer_stopped", extra={"records_in": self.records_in, "retrains": len(self.outcomes)})

    async def _warm_exporter(self, stop: asyncio.Event) -> None:
        """One throw-away ONNX export of the serving model before consuming. The first export in
        a process imports and sets up torch's dynamo exporter: ~18 s of a 27 s retrain on the
        loaded 2-core machine (measured), which would otherwise delay the first retrain."""
        from reloop.models.export import export_onnx

        t0 = time.perf_counter()
        try:
            _, model, _ = load_serving(self.registry)
            if model is not None:
                await in_daemon_thread(lambda: export_onnx(model), stop)
        except Abandoned:
            self.abandoned = True
            return
        except Exception:  # noqa: BLE001 - only a warm-up: the retrain reports real failures
            log.exception("exporter_warmup_failed")
            return
        log.info("exporter_warmed", extra={"seconds": round(time.perf_counter() - t0, 3)})

    async def _poll(self, consumer: Any) -> RetrainDecision | None:
        """One ``getmany``: decode, merge partitions in event time, window, flush, commit, decide."""
        from aiokafka import TopicPartition

        assert self.window is not None and self.core is not None
        batch = await consumer.getmany(timeout_ms=200, max_records=self.config.poll_max_records)
        for tp, msgs in batch.items():
            decoded: list[tuple[int, ErrorRecord]] = []
            for m in msgs:
                try:
                    decoded.append((m.offset, decode_event(m.value or b"", ErrorRecord, self.settings.limits)))
                except InvalidEvent as exc:
                    self.invalid += 1
                    log.warning("bad_error_record", extra={"partition": m.partition, "offset": m.offset,
                                                           "reason": str(exc)[:200]})
            self.merge.add(tp.partition, decoded, msgs[-1].offset + 1 if msgs else 0)
        lagging: set[int] = set()
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None or await consumer.position(tp) < high:
                lagging.add(tp.partition)
            if self.merge.buffered(tp.partition) > self.config.merge_max_buffered // 4:
                consumer.pause(tp)
            else:
                consumer.resume(tp)
        records = self.merge.release(lagging)
        if not records:
            return None
        self.records_in += len(records)
        accepted = {s.sample_id for s in self.window.add(sample_from_error(r) for r in records)}
        self.window.flush()
        topic = topic_name(self.settings.kafka, "errors")
        await consumer.commit({TopicPartition(topic, p): off for p, off in self.merge.commit_offsets().items()})
        current = self.registry.current()
        if current is not None:
            self.core.on_model_change(current)
        return self.core.on_batch([r for r in records if r.error_id in accepted])

    async def _retrain(self, decision: RetrainDecision, producer: Any, stop: asyncio.Event) -> None:
        assert self.window is not None and self.core is not None
        log.info("retrain_due", extra={"reason": decision.reason, "new_samples": decision.new_samples,
                                       "event_ts": decision.event_ts, **decision.detail})
        samples = self.window.samples()
        try:
            # torch work that cannot be interrupted: a stop must not wait for it (reloop run stops
            # within 10 s of Ctrl-C); run_trainer exits without joining the thread. Registration
            # is atomic: at worst a version registered just before the exit is current but not
            # announced, and the next trainer re-announces CURRENT when it starts.
            outcome = await in_daemon_thread(lambda: retrain_once(
                samples, self.registry, self.settings, self.config, trigger=decision.reason), stop)
        except Abandoned:
            self.abandoned = True
            log.info("retrain_abandoned", extra={"reason": decision.reason, "why": "stop requested"})
            return
        except Exception:  # noqa: BLE001 - a failed retrain must not stop the trainer
            log.exception("retrain_failed", extra={"reason": decision.reason})
            self.core.on_retrain_failed()
            return
        self.outcomes.append(outcome)
        if outcome.accepted and outcome.version is not None:
            self.core.on_retrained(outcome.version)
            await self._announce(producer, outcome.version)
        else:
            self.core.on_retrain_failed()
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _announce(self, producer: Any, version: str, unless_last: bool = False) -> None:
        """Announce ``version`` on ``models``; ``unless_last``: not if the topic's last
        announcement already names it with the same sha256 (a start re-announcing ``CURRENT``
        made a worker that was loading it swap it for itself)."""
        try:
            ann = self.registry.announcement(version)
        except (CorruptModelError, ValueError) as exc:
            log.error("announce_refused", extra={"version": version, "reason": str(exc)})
            return
        if unless_last:
            last = await self._last_announcement()
            if last is not None and (last.version, last.sha256) == (ann.version, ann.sha256):
                log.info("model_already_announced", extra={"version": version})
                return
        await producer.send_and_wait(topic_name(self.settings.kafka, "models"), encode(ann), key=b"current")
        log.info("model_announced", extra={"version": version, "sha256": ann.sha256})


    async def _last_announcement(self) -> ModelAnnouncement | None:
        """The last valid announcement on ``models`` (None: empty, unreadable or invalid)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from reloop.processors.hot_restore import changelog_tail

        ks = self.settings.kafka
        c = AIOKafkaConsumer(**client_kwargs(ks), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=10)
        await c.start()
        try:
            _, last = await changelog_tail(c, TopicPartition(topic_name(ks, "models"), 0), timeout_s=10.0)
            return decode_event(last.value, ModelAnnouncement) if last is not None else None
        except (TimeoutError, InvalidEvent) as exc:
            log.info("last_announcement_unread", extra={"reason": str(exc)[:200]})
            return None
        finally:
            await c.stop()


class _Progress:
    """A rich live view of the trainer (window fill, samples to the next retrain, last outcome)."""

    def __init__(self, config: TrainerConfig) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.config = config
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), transient=True)
        self.window_task = self.bar.add_task("window", total=config.window_max_samples, info="")
        every = config.retrain_every_samples or config.window_max_samples
        self.next_task = self.bar.add_task("next retrain", total=every, info="")
        self.bar.start()

    def __call__(self, trainer: Trainer) -> None:
        core = trainer.core
        if core is None or trainer.window is None:
            return
        status = core.status()
        last = trainer.outcomes[-1] if trainer.outcomes else None
        last_text = (f"last: {last.candidate_version} {'accepted' if last.accepted else 'rejected'} "
                     f"({last.trigger})") if last else "last: -"
        self.bar.update(self.window_task, completed=len(trainer.window),
                        info=f"serving {status['serving_version'] or '-'}")
        self.bar.update(self.next_task, completed=min(status["new_samples"], self.bar.tasks[1].total or 1),
                        info=f"drift {'ALARM' if status['drift_pending'] else 'ok'} "
                             f"(alarms {status['drift_alarms']}); {last_text}")

    def stop(self) -> None:
        self.bar.stop()


def run_trainer(settings: Settings, *, progress: bool | None = None) -> NoReturn:
    """Run the trainer until SIGINT/SIGTERM (blocking), then end the process with its exit code
    (3: another trainer holds the registry).

    ``progress`` shows a rich live view; by default when stderr is a terminal.
    """
    config = trainer_config(settings)
    show = sys.stderr.isatty() if progress is None else progress

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        view = _Progress(config) if show else None
        try:
            await trainer.run(stop, progress=view)
        except RegistryLocked as exc:
            print(f"reloop train: {exc}", file=sys.stderr)
            return 3
        finally:
            if view is not None:
                view.stop()
        return 0

    trainer = Trainer(settings, config)
    code = asyncio.run(main())
    # The window is flushed and its offsets committed. Exit now: do not wait for an abandoned
    # retrain's daemon thread, nor for the interpreter's teardown of torch (seconds, measured).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
