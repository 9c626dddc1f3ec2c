"""Kafka client plumbing shared by the worker, the driver and the CLI.

Every aiokafka client is built from :class:`reloop.ops.settings.KafkaSettings` through
:func:`client_kwargs`, so TLS/SASL apply everywhere at once. Topic names come from the
catalog plus the configured prefix.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from reloop.ops.broker import bootstrap_servers
from reloop.ops.settings import KafkaSettings
from reloop.streams.topics import CATALOG, TOPICS, TopicSpec

log = logging.getLogger("reloop.kafka")


def topic_name(settings: KafkaSettings, name: str) -> str:
    """Full cluster name of catalog topic ``name``."""
    return TOPICS[name].full_name(settings.topic_prefix)


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """TLS context for SSL / SASL_SSL, else None."""
    if "SSL" not in settings.security_protocol:
        return None
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return ctx


def client_kwargs(settings: KafkaSettings, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection kwargs for any aiokafka client (bootstrap, TLS, SASL)."""
    kw: dict[str, Any] = {
        "bootstrap_servers": bootstrap or bootstrap_servers(settings.broker),
        "security_protocol": settings.security_protocol,
    }
    ctx = ssl_context(settings)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if settings.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=settings.sasl_mechanism,
                  sasl_plain_username=settings.sasl_username,
                  sasl_plain_password=settings.sasl_password)
    return kw


def make_producer(settings: KafkaSettings, **extra: Any) -> AIOKafkaProducer:
    """An at-least-once producer (acks=all; the embedded broker refuses idempotence)."""
    kw = client_kwargs(settings)
    kw.update(acks="all", linger_ms=2, max_batch_size=1 << 20, request_timeout_ms=30000)
    kw.update(extra)
    return AIOKafkaProducer(**kw)


async def create_topics(settings: KafkaSettings, specs: tuple[TopicSpec, ...] = CATALOG) -> list[str]:
    """Create the catalog's topics (idempotent; the user-partitioned ones with
    ``settings.partitions`` partitions); returns the names that were created. A topic that
    exists keeps its partitions (:func:`check_copartitioned` finds a mismatch)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    created: list[str] = []
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        new = [NewTopic(name=t.full_name(settings.topic_prefix), num_partitions=t.count(settings.partitions),
                        replication_factor=1, topic_configs=t.config())
               for t in specs if t.full_name(settings.topic_prefix) not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            created = [t.name for t in new]
        log.info("topics_ready", extra={"topics_created": created})
    finally:
        await admin.close()
    return created


#: Topics whose partition ``i`` must hold the same users (the inputs) or the state of input
#: partition ``i`` (``changelog``, written to the partition its key names).
COPARTITIONED = ("requests", "interactions", "media", "changelog")


class NotCopartitioned(ValueError):
    """The co-partitioned topics have different partition counts (not transient: a worker
    cannot run on them)."""


def check_copartitioned(counts: dict[str, int], prefix: str = "") -> int:
    """The user partition count of a cluster, from its topics' partition counts (cluster name
    -> partitions; topics not there are skipped).

    Raises:
        NotCopartitioned: the topics of :data:`COPARTITIONED` disagree.

    >>> check_copartitioned({"requests": 8, "interactions": 8, "media": 8, "changelog": 8})
    8
    >>> check_copartitioned({"requests": 8, "interactions": 4})
    Traceback (most recent call last):
    ...
    reloop.ops.kafka.NotCopartitioned: topics requests, ... must have equal partition counts ..., got interactions: 4, requests: 8
    """
    got = {t: counts[TOPICS[t].full_name(prefix)] for t in COPARTITIONED if TOPICS[t].full_name(prefix) in counts}
    if len(set(got.values())) > 1:
        listed = ", ".join(f"{TOPICS[t].full_name(prefix)}: {n}" for t, n in sorted(got.items()))
        raise NotCopartitioned(f"topics requests, interactions, media and changelog must have equal partition "
                               f"counts (partition i of each holds the same users), got {listed}")
    return next(iter(got.values()), 0)


async def partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Cluster topic name -> its partition count, for those of ``names`` that exist."""
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)
            if t.get("error_code", 0) == 0 and t["partitions"]}
