"""Helpers for tests that run a real worker process against the embedded broker."""

from __future__ import annotations

import time
from typing import Any, Callable

import msgspec
from aiokafka import AIOKafkaConsumer

from reloop.ops.kafka import client_kwargs, topic_name
from reloop.ops.settings import Settings
from reloop.streams.codec import encode


async def produce(settings: Settings, topic: str, values: list[bytes | msgspec.Struct],
                  keys: list[bytes] | None = None, partitions: list[int] | None = None) -> None:
    """Produce values (events are encoded) to a catalog topic and wait for the acks
    (``partitions``: explicit partition per value instead of the key's)."""
    from reloop.ops.kafka import make_producer

    p = make_producer(settings.kafka, max_request_size=16 << 20)
    await p.start()
    try:
        futs = []
        for i, v in enumerate(values):
            raw = v if isinstance(v, bytes) else encode(v)
            key = keys[i] if keys else (getattr(v, "user_id", "k").encode() if not isinstance(v, bytes) else b"k")
            futs.append(await p.send(topic_name(settings.kafka, topic), raw, key=key,
                                     partition=partitions[i] if partitions else None))
        for f in futs:
            await f
    finally:
        await p.stop()


async def consume_until(settings: Settings, topic: str, done: Callable[[list[Any]], bool],
                        timeout_s: float = 60.0) -> list[Any]:
    """Read a topic from the beginning until ``done(messages)`` holds; fail on timeout."""
    c = AIOKafkaConsumer(topic_name(settings.kafka, topic), **client_kwargs(settings.kafka), group_id=None,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         fetch_max_wait_ms=10)  # the broker holds an empty fetch for the whole wait
    await c.start()
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(got):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: condition not met after {timeout_s}s with {len(got)} messages")
            batch = await c.getmany(timeout_ms=200)
            for msgs in batch.values():
                got.extend(msgs)
    finally:
        await c.stop()
    return got


async def poll_until(fetch: Callable[[], Any], cond: Callable[[Any], bool], timeout_s: float = 60.0,
                     what: str = "condition") -> Any:
    """Await ``fetch()`` repeatedly until ``cond(result)``; fail with the last result on timeout."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await fetch()
        if cond(last):
            return last
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} not met after {timeout_s}s; last: {last}")


def log_events(text: str, name: str) -> list[dict]:
    """The structured (JSON) log records named ``name`` in a worker's log text."""
    import json

    out = []
    for line in text.splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == name:
                out.append(rec)
    return out


def named_workers(settings: Settings, model: Any, tmp_path: Any, names: tuple[str, ...]) -> list[Any]:
    """One worker process per name on ``settings``' topics and group, each with its own data
    dir (``tmp_path / name``, ``model`` registered there) and log (``tmp_path / name.log``)."""
    from pathlib import Path

    from reloop.models.registry import ModelRegistry
    from tests.conftest import WorkerProcess

    workers = []
    for name in names:
        ws = settings.with_overrides(worker={"data_dir": str(tmp_path / name)})
        ModelRegistry(Path(ws.worker.data_dir) / "models").register(model)
        workers.append(WorkerProcess(ws, tmp_path / f"{name}.log"))
    return workers
