"""Inspect and re-drive dead letters (``reloop dlq show|replay``).

``show`` reads the ``dlq`` topic from the beginning and prints each letter's source
(topic/partition/offset), reason and a preview of the original bytes. ``replay`` produces the
original bytes back to their source topics, e.g. after a producer or a limit was fixed; an
event that is still invalid simply becomes a new dead letter. ``--topic T`` (a catalog name)
limits both to the letters from topic ``T``.
"""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from reloop.ops.kafka import client_kwargs, make_producer, topic_name
from reloop.ops.settings import Settings
from reloop.streams.codec import InvalidEvent, decode_event, original_bytes
from reloop.streams.events import DeadLetter


async def read_dead_letters(settings: Settings, idle_s: float = 1.0) -> list[DeadLetter]:
    """Every dead letter on the ``dlq`` topic, oldest first (stops after ``idle_s`` of silence)."""
    name = topic_name(settings.kafka, "dlq")
    c = AIOKafkaConsumer(**client_kwargs(settings.kafka), group_id=None, enable_auto_commit=False)
    try:
        await c.start()  # inside the try: a failed start is stopped too (no "Unclosed" warning)
        parts = c.partitions_for_topic(name)
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(name) or set()
        tps = [TopicPartition(name, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        out: list[DeadLetter] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = await c.getmany(timeout_ms=200)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        out.append(decode_event(m.value, DeadLetter))
                    except InvalidEvent:
                        continue
                last = time.monotonic()
        return out
    finally:
        await c.stop()


def only_from(letters: list[DeadLetter], settings: Settings, topic: str | None) -> list[DeadLetter]:
    """The letters whose source is catalog topic ``topic`` (all when None).

    Raises:
        ValueError: ``topic`` is not a catalog topic name.
    """
    if topic is None:
        return letters
    from reloop.streams.topics import TOPICS

    if topic not in TOPICS:
        raise ValueError(f"unknown topic {topic!r} (catalog topics: {', '.join(TOPICS)})")
    name = topic_name(settings.kafka, topic)
    return [dl for dl in letters if dl.source_topic == name]


def format_letters(letters: list[DeadLetter], limit: int) -> str:
    """One line per letter (the newest ``limit``): source, reason, original preview."""
    lines = []
    for dl in letters[-limit:]:
        raw = original_bytes(dl)
        preview = raw[:60].decode("utf-8", "replace").replace("\n", " ")
        lines.append(f"{dl.source_topic}[{dl.partition}]@{dl.offset}  {dl.error[:100]}  | {preview!r}"
                     f"{' ...' if len(raw) > 60 else ''} ({len(raw)} bytes)")
    return "\n".join(lines) if lines else "(no dead letters)"


async def redrive(settings: Settings, letters: list[DeadLetter], only_topic: str | None = None) -> int:
    """Produce the letters' original bytes back to their source topics; returns how many.

    Raises:
        ValueError: ``only_topic`` is not a catalog topic name.
    """
    letters = only_from(letters, settings, only_topic)
    p = make_producer(settings.kafka)
    n = 0
    try:
        await p.start()
        for dl in letters:
            await p.send_and_wait(dl.source_topic, original_bytes(dl), key=dl.key.encode() if dl.key else None)
            n += 1
    finally:
        await p.stop()
    return n
