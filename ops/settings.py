"""One typed settings object for the whole deployment.

Sources, later wins: built-in defaults < a TOML file (``--config`` or ``RELOOP_CONFIG``) <
environment variables ``RELOOP_<SECTION>__<FIELD>`` (e.g. ``RELOOP_KAFKA__BROKER``,
``RELOOP_WORKER__WEB_PORT``). Values from the environment are parsed as TOML scalars, so
``RELOOP_ERROR_MEMORY__TABLES=96`` is an int and ``RELOOP_KAFKA__SSL=true`` a bool. Every
field is type-checked; a wrong type fails at start with the field's path in the message.

>>> s = load_settings(env={"RELOOP_KAFKA__BROKER": "kafka://k1:9092", "RELOOP_LIMITS__MEDIA_DIM": "16"})
>>> s.kafka.broker, s.limits.media_dim
('kafka://k1:9092', 16)
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import msgspec

from models.features import FeatureSpec
from models.ctr import ModelConfig
from models.train import TrainConfig
from state.error_memory import ErrorMemoryConfig
from processors.trainer import TrainerConfig
from state.media_memory import MediaMemoryConfig
from state.schema_cache import SchemaCacheConfig
from streams.validation import Limits

ENV_PREFIX = "RELOOP_"


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the broker is and how to talk to it.

    Attributes:
        broker: ``embedded`` (start the bundled Tansu broker on a free loopback port) or
            ``kafka://host:port[,host:port]`` for a real cluster.
        topic_prefix: prepended to every catalog topic name (e.g. ``prod.``).
        group_id: consumer group of the workers' hot-topic consumer.
        security_protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
        sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*).
        sasl_username / sasl_password: SASL credentials (prefer env vars for the password).
        ssl_cafile / ssl_certfile / ssl_keyfile: PEM paths for TLS.
        session_timeout_s / rebalance_timeout_s: group membership timeouts, seconds.
        group_instance_id: static membership id of this worker in the group (e.g. the pod
            name); a worker that restarts under the same id within ``session_timeout_s`` gets its
            partitions back without a rebalance. Empty = dynamic membership.
        fetch_max_records: most records per ``getmany`` call of the hot consumers.
        connect_give_up_s: ``reloop worker`` waits this long (seconds) at start for the broker
            to answer metadata and have the catalog's topics, retrying with backoff, then exits
            with code 1 and a one-line message (0 = one attempt only).
        connect_backoff_initial_s / connect_backoff_max_s: first delay between start-up
            attempts and its cap, seconds (the delay doubles per attempt, +-20% jitter).
    """

    broker: str = "embedded"
    topic_prefix: str = ""
    group_id: str = "reloop-worker"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_s: float = 6.0
    rebalance_timeout_s: float = 6.0
    group_instance_id: str = ""
    fetch_max_records: int = 5000
    connect_give_up_s: float = 60.0
    connect_backoff_initial_s: float = 0.25
    connect_backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.connect_give_up_s < 0:
            raise ValueError(f"kafka.connect_give_up_s must be >= 0, got {self.connect_give_up_s}")
        if not 0 < self.connect_backoff_initial_s <= self.connect_backoff_max_s:
            raise ValueError("kafka.connect_backoff_initial_s must be > 0 and <= kafka.connect_backoff_max_s "
                             f"(got {self.connect_backoff_initial_s} and {self.connect_backoff_max_s})")


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The worker process.

    Attributes:
        data_dir: where snapshots, the model registry and reports live.
        web_port: HTTP port for metrics, health and the status page (0 = pick a free one).
        attribution_window_s: event-time seconds after a request during which feedback is
            joined to it; unlabelled impressions become negatives when it closes.
        pending_limit: most pending predictions kept per worker (oldest expire first).
        snapshot_every_s: wall-clock seconds between input checkpoints (pending predictions,
            media memory, positions); the input journal holds the batches in between, so
            this bounds the journal replayed at a restart.
        replica_snapshot_every_s: wall-clock seconds between snapshots of the ``errors``
            replica (error memory, ~100 MB at the default sketch size, and schema cache); a
            restart re-reads ``errors`` after the snapshot's offsets, so this bounds that
            replay (docs/operations.md: why it is longer than ``snapshot_every_s``).
        journal_fsync: fsync every input-journal entry (survives a machine crash, not only a
            process crash, at one disk sync per batch).
        crash_threshold: process crashes (native code, OOM kill) inside one input batch before
            its records are processed one at a time, and of one record before it is
            dead-lettered unprocessed, so a poison record cannot crash-loop the worker.
        ort_threads: onnxruntime intra-op threads per scorer.
        metrics_window: events per point of the rolling AUC / log-loss series.
        compensation: ``error_memory`` (ReLoop2 sketch) or ``none`` (slow model only).
        media_features: keep per-user media memories and give their features to the model.
        schema_cache: distil error schemata from ``errors`` and publish them and their alerts.
        rekey_window: recent labelled samples re-keyed into the error memory when the model
            changes (0 = reset the memory, as the ReLoop2 paper does).
    """

    data_dir: str = "var"
    web_port: int = 6066
    attribution_window_s: float = 60.0
    pending_limit: int = 1_000_000
    snapshot_every_s: float = 10.0
    replica_snapshot_every_s: float = 60.0
    journal_fsync: bool = False
    crash_threshold: int = 2
    ort_threads: int = 1
    metrics_window: int = 1000
    compensation: Literal["error_memory", "none"] = "error_memory"
    rekey_window: int = 20_000
    media_features: bool = True
    schema_cache: bool = True


class ReplaySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The offline replay engine.

    Attributes:
        warmup: leading fraction of the log that trains the initial model (not scored).
        batch_size: events per micro-batch (a batch is scored before its feedback applies).
        retrain_every: retrain the slow model every N scored events (0 = frozen model).
        retrain_window: most recent labelled events a retrain learns from.
    """

    warmup: float = 0.2
    batch_size: int = 256
    retrain_every: int = 0
    retrain_window: int = 20_000


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of ReLoop's configuration (see each section's docstring)."""

    kafka: KafkaSettings = KafkaSettings()
    worker: WorkerSettings = WorkerSettings()
    replay: ReplaySettings = ReplaySettings()
    limits: Limits = Limits()
    features: FeatureSpec = FeatureSpec()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    error_memory: ErrorMemoryConfig = ErrorMemoryConfig()
    media: MediaMemoryConfig = MediaMemoryConfig()
    trainer: TrainerConfig = TrainerConfig()
    schemas: SchemaCacheConfig = SchemaCacheConfig()

    def __post_init__(self) -> None:
        if self.media.dim != self.limits.media_dim:
            raise ValueError(f"media.dim ({self.media.dim}) must equal limits.media_dim ({self.limits.media_dim})")

    def with_overrides(self, **sections: Mapping[str, Any]) -> "Settings":
        """A copy with some fields replaced, e.g. ``s.with_overrides(kafka={"broker": b})``."""
        data = msgspec.to_builtins(self)
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return msgspec.convert(data, Settings)


def _parse_scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from defaults, an optional TOML file and the environment.

    Raises:
        ValueError: a field has the wrong type or an unknown name (message names it).
    """
    env = os.environ if env is None else env
    path = path or env.get(f"{ENV_PREFIX}CONFIG")
    data: dict[str, Any] = {}
    if path:
        data = tomllib.loads(Path(path).read_text())
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, field = name[len(ENV_PREFIX):].lower().partition("__")
        data.setdefault(section, {})[field] = _parse_scalar(value)
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid settings: {exc}") from None


def settings_markdown() -> str:
    """docs/configuration.md: every section, field, default and env var, from the code."""
    import inspect

    out = ["# Configuration", "",
           "Generated by `python -m ops.settings > docs/configuration.md` from `ops/settings.py`.",
           "Sources, later wins: defaults < TOML file (`--config` / `RELOOP_CONFIG`) < env vars.", ""]
    for section, default in msgspec.structs.asdict(Settings()).items():
        out += [f"## `[{section}]`", "", inspect.cleandoc(type(default).__doc__ or ""), "",
                "| field | default | env var |", "|---|---|---|"]
        for name, value in msgspec.structs.asdict(default).items():
            out.append(f"| `{name}` | `{value!r}` | `RELOOP_{section.upper()}__{name.upper()}` |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(settings_markdown())
