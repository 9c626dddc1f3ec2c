"""One typed settings object for the whole deployment.

Sources, later wins: built-in defaults < a TOML file (``--config`` or ``RELOOP_CONFIG``) <
environment variables ``RELOOP_<SECTION>__<FIELD>`` (e.g. ``RELOOP_KAFKA__BROKER``,
``RELOOP_WORKER__WEB_PORT``). Values from the environment are parsed as TOML scalars, so
``RELOOP_ERROR_MEMORY__TABLES=96`` is an int and ``RELOOP_KAFKA__SSL=true`` a bool. Every
field is type- and range-checked at load; a rejected value raises :class:`SettingsError`
whose message names where the value came from (the env var, or the file, line and key).

>>> s = load_settings(env={"RELOOP_KAFKA__BROKER": "kafka://k1:9092", "RELOOP_ERROR_MEMORY__TABLES": "96"})
>>> s.kafka.broker, s.error_memory.tables
('kafka://k1:9092', 96)
>>> try:
...     load_settings(env={"RELOOP_WORKER__WEB_PORT": "99999"})
... except ValueError as exc:
...     print(exc)
invalid setting from RELOOP_WORKER__WEB_PORT=99999: web_port must be in 0..65535, got 99999
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import msgspec

from reloop.models.features import FeatureSpec
from reloop.models.config import ModelConfig, TrainConfig
from reloop.state.error_memory.memory import ErrorMemoryConfig
from reloop.processors.trainer import TrainerConfig
from reloop.state.media.memory import MediaMemoryConfig
from reloop.state.schemas.cache import SchemaCacheConfig
from reloop.streams.validation import Limits

ENV_PREFIX = "RELOOP_"


class SettingsError(ValueError):
    """A settings value was rejected; the message names its source (env var or file:line key)."""


def _require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok`` (messages start with the field's name, so
    :func:`load_settings` can tell which source the value came from)."""
    if not ok:
        raise ValueError(message)


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the broker is and how to talk to it.

    Attributes:
        broker: ``embedded`` (start the bundled Tansu broker on a free loopback port) or
            ``kafka://host:port[,host:port]`` for a real cluster.
        topic_prefix: prepended to every catalog topic name (e.g. ``prod.``).
        group_id: consumer group of the workers' hot-topic consumer.
        partitions: partitions of each user-keyed topic (``requests``, ``recommendations``,
            ``interactions``, ``media``, ``errors``, ``memory``, ``changelog``) that ``reloop
            topics create`` makes, and the user partitions replay routes events to. A group
            uses at most this many workers (one more has no partition to consume): size it
            for the largest group planned, since Kafka cannot re-key a topic's history. Topics
            that exist keep their count; a worker reads the counts from the cluster and exits
            with an error if the co-partitioned topics disagree.
        security_protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
        sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*).
        sasl_username / sasl_password: SASL credentials (prefer env vars for the password).
        ssl_cafile / ssl_certfile / ssl_keyfile: PEM paths for TLS.
        session_timeout_s / rebalance_timeout_s: group membership timeouts, seconds.
        group_instance_id: static membership id of this worker in the group (e.g. the pod
            name); a worker that restarts under the same id within ``session_timeout_s`` gets its
            partitions back without a rebalance. Empty = dynamic membership.
        fetch_max_records: most records per ``getmany`` call of the hot consumers.
        idle_fetch_wait_ms: fetch wait (ms) of the consumers off the latency path: the
            worker's replica consumer (``memory``, ``errors``, ``schemas``) and changelog
            consumer, and the trainer's ``errors`` consumer. A broker holds a fetch for up to
            this long when nothing new is there (the embedded one for its whole length), so it
            bounds how stale the error-memory replica and the schema cache can be, and a short
            one makes the broker spin (measured: 6 idle consumers cost it 24% of a core at
            10 ms, 5% at 100 ms). The latency path (the worker's input consumer) keeps 10 ms.
        connect_give_up_s: ``reloop worker`` waits this long (seconds) at start for the broker
            to answer metadata and have the catalog's topics, retrying with backoff, then exits
            with code 1 and a one-line message (0 = one attempt only).
        connect_backoff_initial_s / connect_backoff_max_s: first delay between start-up
            attempts and its cap, seconds (the delay doubles per attempt, +-20% jitter).
    """

    broker: str = "embedded"
    topic_prefix: str = ""
    group_id: str = "reloop-worker"
    partitions: int = 4
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
    idle_fetch_wait_ms: int = 100
    connect_give_up_s: float = 60.0
    connect_backoff_initial_s: float = 0.25
    connect_backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        host = r"(\[[0-9a-fA-F:.]+\]|[^\s/,:\[\]]+)(:\d{1,5})?"
        _require(self.broker == "embedded" or re.fullmatch(rf"kafka://{host}(,{host})*", self.broker) is not None,
                 f"broker must be 'embedded' or kafka://host:port[,host:port], got {self.broker!r}")
        _require(1 <= self.partitions <= 10_000, f"partitions must be in [1, 10000], got {self.partitions}")
        _require(self.fetch_max_records >= 1, f"fetch_max_records must be >= 1, got {self.fetch_max_records}")
        _require(0 <= self.idle_fetch_wait_ms <= 60_000,
                 f"idle_fetch_wait_ms must be in [0, 60000], got {self.idle_fetch_wait_ms}")
        _require(self.session_timeout_s > 0 and self.rebalance_timeout_s > 0,
                 "session_timeout_s and rebalance_timeout_s must be > 0")
        if self.connect_give_up_s < 0:
            raise ValueError(f"kafka.connect_give_up_s must be >= 0, got {self.connect_give_up_s}")
        if not 0 < self.connect_backoff_initial_s <= self.connect_backoff_max_s:
            raise ValueError("kafka.connect_backoff_initial_s must be > 0 and <= kafka.connect_backoff_max_s "
                             f"(got {self.connect_backoff_initial_s} and {self.connect_backoff_max_s})")


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The worker process.

    Attributes:
        data_dir: where snapshots, the model registry and reports live.
        web_port: HTTP port for metrics, health and the status page (0 = pick a free one;
            the worker prints the port it picked).
        web_bind: the address the web server listens on: ``127.0.0.1`` (loopback only, the
            default, what ``reloop run`` uses) or ``0.0.0.0`` / ``::`` (every interface: what
            ``infra/`` sets so probes and Prometheus can reach it).
        web_token: bearer token for the endpoints that expose a user's data or internals
            (``/memory/{user}``, ``/state``): with a token they answer only requests carrying
            ``Authorization: Bearer <token>``; without one they answer loopback clients only
            (403 to anyone else). ``/health``, ``/ready``, ``/metrics``, ``/status`` and the
            status page stay open (aggregates, no per-user data). Prefer the env var
            (``RELOOP_WORKER__WEB_TOKEN``, a k8s Secret) to a file.
        web_faust_internals: serve Faust's own ``/router/`` and ``/table/`` endpoints (cluster
            topology, table contents). Off by default; ReLoop does not use them.
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
        checkpoint_in_child: a forked child (copy-on-write) encodes and writes each periodic
            input checkpoint, so the event loop pays the fork (milliseconds), not the encoding
            (0.2-0.7 s at 60k pending predictions, during which no request is served).
            Ignored where ``os.fork`` does not exist; the checkpoint at stop is written in-process.
        crash_threshold: process crashes (native code, OOM kill) inside one input batch before
            its records are processed one at a time, and of one record before it is
            dead-lettered unprocessed, so a poison record cannot crash-loop the worker.
        ort_threads: onnxruntime intra-op threads per scorer.
        metrics_window: events per point of the rolling AUC / log-loss series.
        compensation: ``error_memory`` (ReLoop2 sketch) or ``none`` (slow model only).
        media_features: keep per-user media memories and give their features to the model.
        schema_cache: distil error schemata from ``errors`` and publish them and their alerts.
        schema_in_child: the distilling worker runs its schema cache in a child process, so
            the cache's ticks do not hold the GIL the serving loop needs
            (:mod:`reloop.processors.schema_child`); false: on the replica thread.
        rekey_window: recent labelled samples re-keyed into the error memory when the model
            changes (0 = reset the memory, as the ReLoop2 paper does).
    """

    data_dir: str = "var"
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    web_token: str | None = None
    web_faust_internals: bool = False
    attribution_window_s: float = 60.0
    pending_limit: int = 1_000_000
    snapshot_every_s: float = 10.0
    replica_snapshot_every_s: float = 60.0
    journal_fsync: bool = False
    checkpoint_in_child: bool = True
    crash_threshold: int = 2
    ort_threads: int = 1
    metrics_window: int = 1000
    compensation: Literal["error_memory", "none"] = "error_memory"
    rekey_window: int = 20_000
    media_features: bool = True
    schema_cache: bool = True
    schema_in_child: bool = True

    def __post_init__(self) -> None:
        _require(0 <= self.web_port <= 65535, f"web_port must be in 0..65535, got {self.web_port}")
        try:
            ipaddress.ip_address(self.web_bind)
        except ValueError:
            raise ValueError(f"web_bind must be an IP address (127.0.0.1, 0.0.0.0, ::), got {self.web_bind!r}") from None
        _require(self.web_token is None or len(self.web_token) >= 8,
                 "web_token must be at least 8 characters (or unset)")
        _require(self.attribution_window_s > 0, f"attribution_window_s must be > 0, got {self.attribution_window_s}")
        _require(self.pending_limit >= 1, f"pending_limit must be >= 1, got {self.pending_limit}")
        _require(self.snapshot_every_s > 0, f"snapshot_every_s must be > 0, got {self.snapshot_every_s}")
        _require(self.replica_snapshot_every_s > 0,
                 f"replica_snapshot_every_s must be > 0, got {self.replica_snapshot_every_s}")
        _require(self.ort_threads >= 1, f"ort_threads must be >= 1, got {self.ort_threads}")
        _require(self.metrics_window >= 1, f"metrics_window must be >= 1, got {self.metrics_window}")
        _require(self.rekey_window >= 0, f"rekey_window must be >= 0, got {self.rekey_window}")


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

    def __post_init__(self) -> None:
        _require(0.0 <= self.warmup < 1.0, f"warmup must be in [0, 1), got {self.warmup}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.retrain_every >= 0, f"retrain_every must be >= 0, got {self.retrain_every}")
        _require(self.retrain_window >= 1, f"retrain_window must be >= 1, got {self.retrain_window}")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of ReLoop's configuration (see each section's docstring).

    >>> s = Settings().with_overrides(error_memory={"lam": 0.5})
    >>> s.error_memory.lam, s.kafka.topic_prefix == Settings().kafka.topic_prefix
    (0.5, True)
    """

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
        """A copy with some fields replaced, e.g. ``s.with_overrides(kafka={"broker": b})``.

        Raises:
            SettingsError: a replaced value is rejected (message names ``section.field``).
        """
        data = msgspec.to_builtins(self)
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        sources = {(sec, f): f"{sec}.{f}={v!r}" for sec, vals in sections.items() for f, v in vals.items()}
        return _convert(data, sources)


def _parse_scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _source_of(message: str, sources: Mapping[tuple[str, str], str]) -> tuple[str, str]:
    """(where the offending value came from, the message without msgspec's ``$.path``)."""
    m = _AT.match(message)
    msg, path = (m.group("msg"), m.group("path") or "") if m else (message, "")
    parts = [p for p in path.split(".") if p]
    field = None
    if len(parts) >= 2:
        section, field = parts[0], parts[1]
    elif len(parts) == 1:  # a struct's own check: its message starts with the field's name
        section = parts[0]
        unknown = re.search(r"unknown field `([^`]+)`", msg)
        first = unknown.group(1) if unknown else re.split(r"[\s(]", msg.strip(), maxsplit=1)[0]
        field = first if (section, first) in sources else None
    else:  # a check across sections names its fields as section.field
        unknown = re.search(r"unknown field `([^`]+)`", msg)
        section = unknown.group(1) if unknown else ""
        named = [v for (sec, f), v in sources.items() if f"{sec}.{f}" in msg]
        if named and not unknown:
            return ", ".join(named), msg
    where = [v for (sec, f), v in sources.items() if sec == section and (field is None or f == field)]
    name = f"{section}.{field}" if field else section or "settings"
    if not where:
        return f"{name} (default)", msg
    if field is None and len(where) > 1:
        return f"{name} (one of {', '.join(where)})", msg
    return where[0], msg if field is None or msg.startswith(field) else f"{field}: {msg}"


def _convert(data: dict[str, Any], sources: Mapping[tuple[str, str], str]) -> "Settings":
    try:
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        where, msg = _source_of(str(exc), sources)
        raise SettingsError(f"invalid setting from {where}: {msg}") from None


def _toml_sources(path: str | os.PathLike[str], data: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """``(section, field) -> "FILE:LINE [section] field"`` for every key of a settings file."""
    lines = Path(path).read_text().splitlines()
    out: dict[tuple[str, str], str] = {}
    for section, values in data.items():
        if not isinstance(values, Mapping):
            out[(section, "")] = f"{path} key {section}"
            continue
        header = next((i for i, ln in enumerate(lines) if re.match(rf"\s*\[\s*{re.escape(section)}\s*\]", ln)), -1)
        for field in values:
            n = next((i for i in range(header + 1, len(lines))
                      if re.match(rf"\s*{re.escape(field)}\s*=", lines[i])), None)
            at = f":{n + 1}" if n is not None else ""
            out[(section, field)] = f"{path}{at} [{section}] {field}"
    return out


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from defaults, an optional TOML file and the environment.

    >>> load_settings(env={"RELOOP_ERROR_MEMORY__BITS": "12"}).error_memory.bits
    12
    >>> load_settings(env={"RELOOP_ERROR_MEMORY__BITS": "99"})
    Traceback (most recent call last):
    ...
    reloop.ops.settings.SettingsError: invalid setting from RELOOP_ERROR_MEMORY__BITS=99: bits must be in [1, 24]

    Raises:
        SettingsError: (a ``ValueError``) a field has the wrong type, an out-of-range value or
            an unknown name; the message names the env var, or the file, line and key.
    """
    env = os.environ if env is None else env
    path = path or env.get(f"{ENV_PREFIX}CONFIG")
    data: dict[str, Any] = {}
    sources: dict[tuple[str, str], str] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SettingsError(f"settings file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None
        sources.update(_toml_sources(path, data))
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, field = name[len(ENV_PREFIX):].lower().partition("__")
        section_data = data.setdefault(section, {})
        if not isinstance(section_data, dict):
            raise SettingsError(f"invalid setting from {name}: {section} is not a section")
        section_data[field] = _parse_scalar(value)
        sources[(section, field)] = f"{name}={value}"
    return _convert(data, sources)


def settings_markdown() -> str:
    """docs/configuration.md: every section, field, default and env var, from the code."""
    import inspect

    out = ["# Configuration", "",
           "Generated by `python -m reloop.ops.settings > docs/configuration.md` from `ops/settings.py`.",
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
