"""``reloop replay``: a recorded log, or a range of the input topics, through the worker's step.

    reloop replay LOG [LOG ...] [--format auto|jsonl|parquet|movielens|topics] [--report OUT.json]
    reloop replay --broker kafka://host:9092 --topic-prefix prod. --since T0 --until T1 [--model DIR]
    reloop replay LOG --format movielens --compare A.toml B.toml ...      (docs/experiments.md)

Two kinds of input (docs/replay.md):

- **Interaction logs** (``jsonl``/``parquet`` files of labelled interactions, MovieLens): each
  interaction becomes a one-candidate request and its label. The initial model is fitted on
  the leading ``--warmup`` fraction of the log (counted in a quick pre-pass over the files;
  ``--warmup-events N`` skips it), which is not scored. Files stream in constant memory.
- **Recorded traffic** (``--format topics`` files in the topics' own JSON, or ``--broker``):
  requests with their candidates, interactions and media, as the workers consumed them, served
  by ``--model`` or the registry's current version.

This module only parses flags (``reloop --help`` stays light); the work is in
:mod:`reloop.ops.replay`, :mod:`reloop.ops.log_readers`, :mod:`reloop.ops.kafka_source` and
:mod:`reloop.ops.compare_run`.
"""

from __future__ import annotations

import argparse
import itertools
import os
from typing import Any

from reloop.ops.cli_support import CliError

__all__ = ["add_replay", "add_source_args", "add_compare_args", "cmd_replay", "count_records",
           "open_interaction_log"]


def add_replay(sub: Any, common_opts: Any) -> None:
    """The ``replay`` subcommand and its flags."""
    rp = sub.add_parser("replay", help="replay a log or a topic range through the worker's step",
                        description="Replay a recorded log (files or a broker's input topics) through the "
                                    "worker's batch step (admission, scoring, feedback, error memory, schema "
                                    "cache, media memory).")
    common_opts(rp)
    rp.add_argument("paths", nargs="*", metavar="LOG",
                    help="JSONL (.gz, .zst) or Parquet files sorted by event time, a MovieLens directory, "
                         "or nothing with --broker")
    rp.add_argument("--format", choices=("auto", "jsonl", "parquet", "movielens", "topics"), default="auto",
                    help="auto: by file suffix; jsonl/parquet: interaction log (reloop simulate --labelled); "
                         "movielens; topics: recorded traffic, the input topics' own JSON (default: auto)")
    rp.add_argument("--report", help="write the JSON report here")
    rp.add_argument("--warmup", type=float, default=None,
                    help="leading fraction of an interaction log that fits the initial model (default: "
                         "settings replay.warmup)")
    rp.add_argument("--warmup-events", type=int, default=None,
                    help="fit on this many leading interactions instead (no counting pre-pass)")
    rp.add_argument("--no-compensation", action="store_true", help="slow model only")
    rp.add_argument("--partitions", type=int, default=None,
                    help="user partitions events are routed to by user_id (default: settings kafka.partitions)")
    rp.add_argument("--model", help="recorded traffic: the model bundle directory to serve "
                                    "(default: the registry's current version in worker.data_dir)")
    add_source_args(rp)
    add_compare_args(rp)
    rp.set_defaults(func=cmd_replay)


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """The replay source flags: Kafka, reorder window, progress."""
    have = parser._option_string_actions  # noqa: SLF001 - do not add --broker twice
    g = parser.add_argument_group("source")
    if "--broker" not in have:
        g.add_argument("--broker", help="read the input topics from this broker (kafka://host:port) "
                                        "instead of files")
    g.add_argument("--topic-prefix", help="topic prefix on the broker (default: settings kafka.topic_prefix)")
    g.add_argument("--topics", default="requests,interactions,media",
                   help="input topics to replay, comma-separated (default: requests,interactions,media)")
    g.add_argument("--since", help="first event time: epoch seconds or ISO 8601 (UTC if no zone)")
    g.add_argument("--until", help="end event time (exclusive): epoch seconds or ISO 8601")
    g.add_argument("--offsets", help="per-partition offset range START:END (END exclusive, either may be empty)")
    g.add_argument("--reorder-s", type=float, default=0.0,
                   help="reorder events up to this many event-time seconds late (default 0: an unsorted "
                        "log is an error naming its file and line)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--max-examples", type=int, default=20, help="invalid lines kept as examples (default 20)")


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    """``reloop replay`` flags of a comparison (run by :func:`reloop.ops.compare_run.cmd_compare`)."""
    g = parser.add_argument_group("comparison")
    g.add_argument("--compare", nargs="+", metavar="CONFIG.toml",
                   help="replay once per settings file and compare them (the first is the reference)")
    g.add_argument("--bootstrap", type=int, default=200, help="user-bootstrap resamples (default 200)")
    g.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    g.add_argument("--windows", type=int, default=40, help="points of the rolling metrics (default 40)")
    g.add_argument("--plot", help="SVG of the rolling metrics (default: the report's path with .svg)")


def count_records(paths: list[str]) -> int:
    """Records in the files (JSONL lines, decompressed; Parquet rows from the footer): the
    pre-pass that places an interaction log's warm-up fraction without decoding it."""
    from reloop.ops.log_readers import detect_format, open_decompressed

    total = 0
    for path in paths:
        if detect_format(path) == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
            continue
        with open(path, "rb") as raw:
            fh = open_decompressed(path, raw)
            while chunk := fh.read(1 << 20):
                total += chunk.count(b"\n")
    return total


def cmd_replay(args: argparse.Namespace) -> int:
    import json
    import logging

    import msgspec

    from reloop.ops.cli import _settings
    from reloop.ops.replay import ReplayEngine, write_report
    from reloop.ops.serving import compensation_factory

    # the reorder buffer warns each time it releases past an idle partition: in a worker a rare
    # event, in a replay of a sparse log (MovieLens: one rating per ~200 s) one line per batch
    logging.getLogger("reloop.reorder").setLevel(logging.ERROR)
    if not args.paths and not args.broker:
        raise CliError("replay needs a log (LOG ...) or --broker kafka://host:port")
    if args.format == "auto" and len(args.paths) == 1 and os.path.isdir(args.paths[0]):
        args.format = "movielens"  # a directory is a MovieLens dataset (GroupLens or RecBole files)
    if args.compare:
        from reloop.ops.compare_run import cmd_compare

        if args.broker or len(args.paths) != 1:
            raise CliError("--compare replays one log file (or MovieLens directory)")
        args.path = args.paths[0]
        args.format = "jsonl" if args.format == "auto" else args.format
        return cmd_compare(args)
    settings = _settings(args)
    if args.warmup is not None:
        settings = settings.with_overrides(replay={"warmup": args.warmup})
    if args.no_compensation:
        settings = settings.with_overrides(worker={"compensation": "none"})
    if args.partitions is not None and args.partitions < 1:
        raise CliError(f"--partitions must be >= 1, got {args.partitions}")
    engine = ReplayEngine(settings, compensation_factory(settings), **(
        {"partitions": args.partitions} if args.partitions else {}))
    source = ", ".join(args.paths) or f"{args.broker} {args.topic_prefix or settings.kafka.topic_prefix}*"
    stream = None
    if args.format == "topics" or args.broker:
        from reloop.ops.kafka_source import open_source
        from reloop.ops.replay import fitted_from_scorer

        fitted = fitted_from_scorer(_replay_scorer(args, settings))
        stream = open_source(args, settings)
        result = engine.run_stream(stream, fitted, source=source)
    elif args.format == "movielens":
        from reloop.ops.logs import read_log

        loaded = read_log(args.paths[0], "movielens", settings.limits)
        result = engine.run(loaded, progress=not args.quiet)
    else:
        result, stream = _replay_interaction_log(args, settings, engine, source)
    rep = result.report
    if stream is not None:
        s = stream.stats
        rep.update({"invalid_lines": s.invalid, "invalid_examples": s.as_dict()["invalid_examples"],
                    "lines": s.lines, "reordered": s.reordered})
    if args.report:
        write_report(rep, args.report)
    keys = ("events", "scored", "invalid_lines", "dead_letters", "auc_base", "auc_compensated", "logloss_base",
            "logloss_compensated", "events_per_s")
    clean = msgspec.json.decode(msgspec.json.encode({k: rep.get(k) for k in keys}))  # NaN -> null: valid JSON
    print(json.dumps(clean, indent=2))
    return 0


def _replay_interaction_log(args: argparse.Namespace, settings: Any, engine: Any, source: str) -> tuple[Any, Any]:
    """Stream an interaction log: fit on its leading part (checked to hold both labels), score
    the rest. Returns (result, the event stream)."""
    n_warm, events, stream = open_interaction_log(args, settings, source)
    return engine.run_warm(events, n_warm, source=source), stream


def open_interaction_log(args: argparse.Namespace, settings: Any, source: str) -> tuple[int, Any, Any]:
    """An interaction log opened for streaming: ``(n_warm, events, stream)``, where ``n_warm``
    is the warm-up's interactions (``--warmup-events``, else the ``replay.warmup`` fraction of
    the records counted in a pre-pass), ``events`` every event from the first on, and
    ``stream`` the source (its ``stats`` count invalid lines). The warm-up is read first and
    checked to hold both labels (:func:`reloop.ops.replay.check_labelled`)."""
    from reloop.ops.kafka_source import open_source
    from reloop.ops.logs import LoadedLog
    from reloop.ops.replay import check_labelled
    from reloop.streams.events import Interaction

    if getattr(args, "warmup_events", None) is not None and args.warmup_events < 1:
        raise CliError(f"--warmup-events must be >= 1, got {args.warmup_events}")
    n_warm = getattr(args, "warmup_events", None) or max(
        1, int(round(count_records(args.paths) * settings.replay.warmup)))
    stream = open_source(args, settings)
    prefix, n = [], 0
    for ev in stream:
        prefix.append(ev)
        n += isinstance(ev, Interaction)
        if n >= n_warm:
            break
    invalid = [(line, reason) for _, line, reason in stream.stats.examples]
    check_labelled(LoadedLog(prefix, invalid, source), [e for e in prefix if isinstance(e, Interaction)])
    return n_warm, itertools.chain(prefix, stream), stream


def _replay_scorer(args: argparse.Namespace, settings: Any) -> Any:
    """The model a traffic replay serves: ``--model`` (a bundle directory), else the current
    version of the worker's registry (what a worker started with these settings serves)."""
    from pathlib import Path

    from reloop.models.bundle import load_scorer
    from reloop.models.registry import ModelRegistry

    threads = settings.worker.ort_threads
    if args.model:
        return load_scorer(args.model, intra_op_num_threads=threads)
    registry = ModelRegistry(Path(settings.worker.data_dir) / "models")
    if registry.current() is None:
        raise CliError(f"recorded traffic needs a model: --model BUNDLE_DIR, or a current version in {registry.root}")
    return registry.load().load_scorer(intra_op_num_threads=threads)
