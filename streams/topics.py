"""The topic catalog: every topic ReLoop reads or writes, with key, partitions and retention.

The same catalog creates topics (``reloop topics create``), configures consumers, and renders
the table in docs/topics.md (``python -m reloop.streams.topics``).

>>> TOPICS["requests"].partitions == TOPICS["interactions"].partitions == TOPICS["media"].partitions
True
>>> TOPICS["models"].compacted
True
>>> TOPICS["changelog"].partitions == TOPICS["requests"].partitions and TOPICS["changelog"].compacted
True
>>> TOPICS["requests"].count(16), TOPICS["models"].count(16)
(16, 1)
"""

from __future__ import annotations

import msgspec

DAY_MS = 24 * 3600 * 1000


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One topic: logical ``name`` (before the deployment prefix), key, layout, retention."""

    name: str
    key: str
    carries: str
    partitions: int
    retention_ms: int = 7 * DAY_MS
    compacted: bool = False
    hot: bool = False  # read in batches by aiokafka consumers, not by a Faust agent
    #: partitioned like the inputs: one partition per user partition (``kafka.partitions``);
    #: ``partitions`` is then the default count
    user_partitioned: bool = False

    def count(self, user_partitions: int = 0) -> int:
        """Partitions to create: ``user_partitions`` (``kafka.partitions``) for a
        user-partitioned topic when given, else :attr:`partitions`."""
        return user_partitions if self.user_partitioned and user_partitions > 0 else self.partitions

    def full_name(self, prefix: str = "") -> str:
        """Topic name on the cluster, e.g. ``reloop.requests`` for prefix ``reloop.``."""
        return f"{prefix}{self.name}"

    def config(self) -> dict[str, str]:
        """Kafka topic configs for creation."""
        cfg = {"retention.ms": str(self.retention_ms)}
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        return cfg


#: Default partition count of the user-partitioned topics (``kafka.partitions`` sets it per
#: deployment): the most workers one group can use.
USER_PARTITIONS = 4

CATALOG: tuple[TopicSpec, ...] = (
    TopicSpec(name="requests", key="user_id", partitions=USER_PARTITIONS, user_partitioned=True, hot=True,
              carries="recommendation request: user, context features, candidate items"),
    TopicSpec(name="recommendations", key="user_id", partitions=USER_PARTITIONS, user_partitioned=True,
              carries="ranked response: base and compensated score per item, model version, evidence"),
    TopicSpec(name="interactions", key="user_id", partitions=USER_PARTITIONS, user_partitioned=True, hot=True,
              carries="labelled feedback (impression/click/rating/dwell) linked by request_id + item_id"),
    TopicSpec(name="media", key="user_id", partitions=USER_PARTITIONS, user_partitioned=True, hot=True,
              carries="video/audio segment embeddings from upstream encoders"),
    TopicSpec(name="errors", key="any", partitions=USER_PARTITIONS, user_partitioned=True, hot=True,
              carries="error records (JSON, one per record): trainer, schema cache, outside consumers"),
    TopicSpec(name="memory", key="user partition", partitions=USER_PARTITIONS, user_partitioned=True, hot=True, retention_ms=7 * DAY_MS,
              carries="error-memory writes, one binary batch per scored batch; every scorer replica "
                      "consumes all partitions"),
    TopicSpec(name="changelog", key="<partition>/<kind>:<id>", partitions=USER_PARTITIONS, user_partitioned=True, compacted=True,
              hot=True, carries="input-side state per user partition (pending requests, resolved ids, "
                                "orphan clicks, stream times and offsets): restored by a partition's next owner"),
    TopicSpec(name="schemas", key="schema_id", partitions=1, compacted=True,
              carries="error-schema cache updates"),
    TopicSpec(name="alerts", key="schema_id", partitions=1, carries="schema alerts (new, resolved)"),
    TopicSpec(name="models", key='"current"', partitions=1, compacted=True,
              carries="model announcements: version, path, checksum, metrics"),
    TopicSpec(name="dlq", key="source key", partitions=1, retention_ms=30 * DAY_MS,
              carries="dead letters: original bytes, source topic/partition/offset, reason, time"),
)

TOPICS: dict[str, TopicSpec] = {t.name: t for t in CATALOG}

#: Topics co-partitioned by user_id: partition i of each lands on the same worker.
USER_KEYED = ("requests", "interactions", "media")


def markdown_table() -> str:
    """The catalog as a Markdown table (used in docs/topics.md)."""
    rows = ["| topic | key | partitions | retention | compacted | read by | carries |",
            "|---|---|---|---|---|---|---|"]
    for t in CATALOG:
        days = t.retention_ms / DAY_MS
        reader = "batch consumer" if t.hot else "Faust agent / clients"
        parts = f"`kafka.partitions` ({t.partitions})" if t.user_partitioned else str(t.partitions)
        rows.append(f"| `{t.name}` | {t.key} | {parts} | {days:g} d | {'yes' if t.compacted else 'no'} "
                    f"| {reader} | {t.carries} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
