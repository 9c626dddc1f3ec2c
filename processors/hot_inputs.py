"""The hot path's input side: decode, validate and admit each polled record, the outputs
that are not the cores' (dead letters, binary ``memory`` batches), and the consumer lag. A mixin of
:class:`reloop.processors.hot_path.HotPath` (see :mod:`reloop.processors.admission`, :mod:`reloop.processors.step`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from aiokafka import TopicPartition

from reloop.processors.admission import DUPLICATE
from reloop.processors.crash_guard import fault_point
from reloop.processors.outputs import Output
from reloop.processors.step import INPUT_KINDS, Admitted, admit_one, memory_records
from reloop.streams.codec import dead_letter, encode
from reloop.streams.events import ErrorRecord

log = logging.getLogger("reloop.hot_path")

__all__ = ["HotPathInputs", "INPUT_KINDS"]


class HotPathInputs:
    """Input-side methods of the hot path (mixin; module doc)."""

    # attributes provided by HotPath
    admission: Any
    tasks: Any
    guard: Any
    limits: Any
    telemetry: Any
    topics: dict[str, str]
    compensation: Any
    _by_topic: dict[str, str]
    consumer: Any
    positions: dict[tuple[str, int], int]

    def _update_lag(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Set the consumer-lag gauge per input topic: high watermark minus position, summed over
        the assigned partitions."""
        assert self.consumer is not None
        lag: dict[str, int] = {}
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            pos = self.positions.get((tp.topic, tp.partition))
            if hw is not None and pos is not None:
                lag[self._by_topic[tp.topic]] = lag.get(self._by_topic[tp.topic], 0) + max(0, hw - pos)
        for name, n in lag.items():
            self.telemetry.consumer_lag.labels(name).set(n)

    def _reject(self, outputs: list[Output]) -> Callable[[Admitted, str], None]:
        return lambda one, reason: outputs.append(self._dead_letter(one.msg, one.logical, reason))

    def _mark(self, one: Admitted) -> None:
        if self.guard is not None:
            self.guard.begin({(one.msg.topic, one.partition): (one.msg.offset, one.msg.offset)})
        fault_point([one])

    def _admit(self, batch: dict[TopicPartition, list[Any]], outputs: list[Output]) -> list[Admitted]:
        """Decode, validate and admit every record (:mod:`reloop.processors.admission`); the rejected
        ones become dead letters in ``outputs``, byte-identical request copies are counted."""
        admission = self.admission
        admission.begin_batch(self.tasks)
        admitted: list[Admitted] = []
        add = admitted.append
        limits = self.limits
        guard = self.guard if self.guard is not None and self.guard.active else None  # inactive: no poison
        for tp, msgs in batch.items():
            logical = self._by_topic[tp.topic]
            part = tp.partition
            is_request = logical == "requests"
            self.telemetry.events_in.labels(logical).inc(len(msgs))
            for m in msgs:
                raw = m.value or b""
                if guard is not None and guard.is_poison((tp.topic, tp.partition), m.offset):
                    n = guard.crashes((tp.topic, tp.partition), m.offset)
                    log.error("poison_record_skipped", extra={"topic": tp.topic, "partition": tp.partition,
                                                              "offset": m.offset, "crashes": n})
                    outputs.append(self._dead_letter(m, logical, f"crashed the worker {n} times while "
                                                                 "being processed: skipped"))
                    continue
                ev, reason = admit_one(admission, logical, part, raw, limits)
                if ev is None:
                    if reason == DUPLICATE:
                        self.telemetry.duplicates.labels(logical).inc()
                    else:
                        outputs.append(self._dead_letter(m, logical, reason or "rejected"))
                    continue
                add(Admitted(logical, part, raw, ev, m, admission.digest(part, ev.request_id) if is_request else None))
        return admitted

    def _memory_outputs(self, part: int, errors: Sequence[ErrorRecord]) -> list[Output]:
        """The binary ``memory`` records of one partition's error records (keyed by the input
        partition; journaled with the other outputs, so a resend is byte-identical)."""
        key = str(part).encode()
        return [(self.topics["memory"], key, raw) for raw in memory_records(self.compensation, errors)]

    def _dead_letter(self, msg: Any, logical: str, reason: str) -> Output:
        self.telemetry.dead_letters.labels(logical).inc()
        log.warning("dead_letter", extra={"topic": msg.topic, "partition": msg.partition,
                                          "offset": msg.offset, "reason": reason[:200]})
        letter = dead_letter(msg.value, reason, topic=msg.topic, partition=msg.partition,
                             offset=msg.offset, key=msg.key)
        return (self.topics["dlq"], msg.key, encode(letter))
