"""reloop: the command line.

  reloop run [--events N | --duration S | --forever]   the main job on the embedded broker
  reloop worker [--broker kafka://host:9092]           one worker (real deployments)
  reloop replay LOG... | --broker ... [--compare A.toml B.toml]   a log through the worker's step
  reloop topics create|list [--broker ...]             the catalog's topics on a cluster
  reloop simulate --requests N --out log.jsonl [--labelled]
  reloop memory show USER [--data-dir DIR]             a user's media memory (worker snapshot)
  reloop schemas [--all] [--json] [--data-dir DIR]     the error-schema cache (worker snapshot)
  reloop dlq show|replay [--topic T] --broker ...      inspect / re-drive dead letters
  reloop train [--broker kafka://host:9092]            the trainer (one per model registry)
  reloop train --from-log LOG [--broker ...]           cold start: train, register, announce v1
  reloop models list|show V|promote V|rollback         the model registry

Every command takes --config FILE (TOML) and --log-level, before or after the command name,
and honours RELOOP_<SECTION>__<FIELD> env vars; --broker overrides kafka.broker (also
RELOOP_KAFKA__BROKER). Errors are one line on stderr and a non-zero exit (2: bad input or
settings, 1: failure at run time, 130: interrupted).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable

from reloop.ops.cli_support import (CliError, ReloopParser, VersionAction, expected_errors, one_line,
                              quiet_broken_pipe)

if TYPE_CHECKING:  # the CLI imports torch-heavy modules only inside the commands
    from reloop.ops.settings import Settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Catalog topics whose dead letters can be re-driven (streams/topics.py; kept literal so that
#: ``reloop --help`` imports nothing; tests/ops/test_cli_errors.py checks it against the catalog).
SOURCE_TOPICS = ("requests", "interactions", "media", "errors", "memory", "changelog", "recommendations",
                 "schemas", "alerts", "models")


def _settings(args: argparse.Namespace) -> "Settings":
    """Settings from --config / env, with this command's --broker, --data-dir, --web-port."""
    from reloop.ops.settings import load_settings

    s = load_settings(getattr(args, "config", None))
    over: dict[str, dict[str, Any]] = {}
    if getattr(args, "broker", None):
        over["kafka"] = {"broker": args.broker}
    if getattr(args, "data_dir", None):
        over["worker"] = {"data_dir": args.data_dir}
    if getattr(args, "web_port", None) is not None:
        over.setdefault("worker", {})["web_port"] = args.web_port
    try:
        return s.with_overrides(**over) if over else s
    except ValueError as exc:  # name the option, not the field it sets
        text = str(exc)
        for field, flag in (("kafka.broker=", "--broker "), ("worker.data_dir=", "--data-dir "),
                            ("worker.web_port=", "--web-port ")):
            text = text.replace(field, flag)
        raise CliError(text) from None


def _need_broker(settings: "Settings", what: str) -> None:
    if settings.kafka.broker == "embedded":
        raise CliError(f"{what} needs --broker kafka://host:port (or RELOOP_KAFKA__BROKER)")


def cmd_worker(args: argparse.Namespace) -> int:
    from reloop.ops.worker import run_worker

    settings = _settings(args)
    if settings.kafka.broker == "embedded":
        raise CliError("needs --broker kafka://host:port (or RELOOP_KAFKA__BROKER); "
                       "use `reloop run` for the embedded broker")
    run_worker(settings, loglevel=args.log_level)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    import asyncio

    if args.action == "list":  # the catalog itself: no settings, no torch
        from reloop.streams.topics import markdown_table

        print(markdown_table())
        return 0
    from reloop.ops.kafka import create_topics

    settings = _settings(args)
    if args.partitions is not None:
        if args.partitions < 1:
            raise CliError(f"--partitions must be >= 1, got {args.partitions}")
        settings = settings.with_overrides(kafka={"partitions": args.partitions})
    _need_broker(settings, "topics create")
    created = asyncio.run(create_topics(settings.kafka))
    print(f"created {len(created)} topic(s): {', '.join(created) or '(all existed)'}"
          + (f"; user-partitioned ones with {settings.kafka.partitions} partitions" if created else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from reloop.ops.main_job import MainJobOptions, run_main_job

    settings = _settings(args)
    opts = MainJobOptions(events=args.events, duration_s=args.duration, forever=args.forever,
                          report_path=args.report, seed=args.seed,
                          offered_rps=args.rate, trainer=args.trainer)
    return asyncio.run(run_main_job(settings, opts))


def _worker_snapshot(args: argparse.Namespace, name: str) -> dict:
    """Arrays of a worker's snapshot file ``name`` under ``--data-dir``."""
    from pathlib import Path

    from reloop.state.snapshots import read_npz

    data_dir = _settings(args).worker.data_dir
    path = Path(data_dir) / "snapshots" / name
    if not path.exists():
        raise CliError(f"no snapshot at {path} (has a worker run with --data-dir {data_dir}?)")
    return read_npz(path)


def cmd_memory(args: argparse.Namespace) -> int:
    import json

    from reloop.processors.media import MediaCore

    snap = _worker_snapshot(args, "inputs.npz")  # the input-side checkpoint holds the media memory
    media = {k.removeprefix("media."): v for k, v in snap.items() if k.startswith("media.")}
    if not media:
        raise CliError("the worker's checkpoint holds no media memory (worker.media_features off?)")
    core = MediaCore.restore(media)
    if args.user not in core.memory.users:
        raise CliError(f"user {args.user!r} has no media memory ({len(core.memory.users)} users known)", code=1)
    print(json.dumps(core.describe(args.user), indent=2, default=str))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    import json

    import msgspec

    from reloop.processors.schemas import SchemaCore, format_table

    snap = _worker_snapshot(args, "schema_cache.npz")
    rows = SchemaCore.restore(snap).schemas(include_resolved=args.all)
    if args.json:
        print(json.dumps(msgspec.to_builtins(rows), indent=2))
    else:
        print(format_table(rows, include_resolved=args.all))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio

    from reloop.ops.dlq import format_letters, only_from, read_dead_letters, redrive

    settings = _settings(args)
    _need_broker(settings, "dlq")
    letters = only_from(asyncio.run(read_dead_letters(settings)), settings, args.topic)
    if args.action == "show":
        print(format_letters(letters, args.limit))
        return 0
    n = asyncio.run(redrive(settings, letters))
    print(f"re-drove {n} dead letter(s) to their source topics")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from reloop.ops.simulator import SimConfig, Simulator, write_jsonl

    settings = _settings(args)
    sim = Simulator(SimConfig(seed=args.seed, media_dim=settings.limits.media_dim))
    events = sim.labelled_log(args.requests) if args.labelled else sim.events(args.requests)
    n = write_jsonl(events, args.out)
    print(f"wrote {n} events to {args.out}")
    return 0


# ---- parser: one function per subcommand, so each can change without touching the others ----

def common_opts(sp: argparse.ArgumentParser) -> None:
    """--config and --log-level, accepted after the command name too (default: the top level's)."""
    sp.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file (default: $RELOOP_CONFIG)")
    sp.add_argument("--log-level", default=argparse.SUPPRESS, type=str.upper, choices=LOG_LEVELS,
                    help="log level of the JSON log lines on stderr (default: WARNING)")


def kafka_opts(sp: argparse.ArgumentParser, web: bool = True) -> None:
    """--broker and --data-dir (and --web-port for the commands that serve HTTP)."""
    sp.add_argument("--broker", help="kafka://host:port[,host:port] (default: settings kafka.broker)")
    sp.add_argument("--data-dir", help="directory of snapshots, the model registry and reports "
                                       "(default: settings worker.data_dir)")
    if web:
        sp.add_argument("--web-port", type=int, help="worker HTTP port; 0 picks a free one and prints it "
                                                     "(default: settings worker.web_port)")


def data_dir_opt(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data-dir", help="the worker's data directory (default: settings worker.data_dir)")


def add_run(sub: Any) -> None:
    r = sub.add_parser("run", help="the main job: embedded broker + worker + simulator traffic",
                       description="The whole loop on one machine, end to end, through a real broker.")
    common_opts(r)
    kafka_opts(r)
    r.add_argument("--events", type=int, default=None, help="requests to drive (default 20000)")
    r.add_argument("--duration", type=float, default=None, help="stop after S seconds of traffic")
    r.add_argument("--forever", action="store_true", help="keep serving after the traffic ends")
    r.add_argument("--report", default="reports/run.json", help="JSON report path (default: %(default)s)")
    r.add_argument("--seed", type=int, default=7, help="simulator seed (default: %(default)s)")
    r.add_argument("--rate", type=float, default=150.0, help="offered load, requests/s (wall clock)")
    r.add_argument("--trainer", action=argparse.BooleanOptionalAction, default=True,
                   help="start the trainer next to the worker (--no-trainer: v1 serves throughout)")
    r.set_defaults(func=cmd_run)


def add_worker(sub: Any) -> None:
    w = sub.add_parser("worker", help="run one worker against a broker",
                       description="One worker process against a Kafka cluster (one per core).")
    common_opts(w)
    kafka_opts(w)
    w.set_defaults(func=cmd_worker)


def add_replay(sub: Any) -> None:
    from reloop.ops.replay_cli import add_replay as add

    add(sub, common_opts)


def add_topics(sub: Any) -> None:
    t = sub.add_parser("topics", help="topic catalog", description="List the topic catalog or create it on a cluster.")
    t.add_argument("action", choices=("create", "list"), help="create: on --broker (idempotent); list: print the table")
    common_opts(t)
    t.add_argument("--broker", help="kafka://host:port[,host:port] (default: settings kafka.broker)")
    t.add_argument("--partitions", type=int, default=None,
                   help="create: partitions of each user-partitioned topic, the most workers one group can "
                        "use (default: settings kafka.partitions, 4); existing topics keep theirs")
    t.set_defaults(func=cmd_topics)


def add_memory(sub: Any) -> None:
    m = sub.add_parser("memory", help="inspect a worker's media memory (from its snapshot)",
                       description="A user's media memory, read from a worker's snapshot in --data-dir.")
    m.add_argument("action", choices=("show",), help="show: print the user's memory as JSON")
    m.add_argument("user", help="user id")
    common_opts(m)
    data_dir_opt(m)
    m.set_defaults(func=cmd_memory)


def add_schemas(sub: Any) -> None:
    sc = sub.add_parser("schemas", help="list a worker's error-schema cache (from its snapshot)",
                        description="The error-schema cache, read from a worker's snapshot in --data-dir.")
    common_opts(sc)
    data_dir_opt(sc)
    sc.add_argument("--all", action="store_true", help="include resolved schemata")
    sc.add_argument("--json", action="store_true", help="machine-readable output")
    sc.set_defaults(func=cmd_schemas)


def add_dlq(sub: Any) -> None:
    d = sub.add_parser("dlq", help="inspect or re-drive dead letters",
                       description="Read the dlq topic; show letters or produce their original bytes again.")
    d.add_argument("action", choices=("show", "replay"), help="show: print letters; replay: re-drive them")
    common_opts(d)
    d.add_argument("--broker", help="kafka://host:port[,host:port] (default: settings kafka.broker)")
    d.add_argument("--limit", type=int, default=50, help="show: newest N letters (default: %(default)s)")
    d.add_argument("--topic", choices=SOURCE_TOPICS, metavar="TOPIC",
                   help=f"only letters from this catalog topic ({', '.join(SOURCE_TOPICS)})")
    d.set_defaults(func=cmd_dlq)


def add_simulate(sub: Any) -> None:
    s = sub.add_parser("simulate", help="write a simulator log", description="Write a simulator log as JSONL.")
    common_opts(s)
    s.add_argument("--requests", type=int, default=2000, help="requests to simulate (default: %(default)s)")
    s.add_argument("--out", required=True, help="output path (JSONL)")
    s.add_argument("--labelled", action="store_true",
                   help="prequential form (every impression labelled): what replay and train --from-log read")
    s.add_argument("--seed", type=int, default=0, help="simulator seed (default: %(default)s)")
    s.set_defaults(func=cmd_simulate)


def build_parser() -> argparse.ArgumentParser:
    """The ``reloop`` parser (cheap: nothing heavy is imported until a command runs)."""
    from reloop.ops.models_cli import add_models_commands, add_train_command

    p = ReloopParser(prog="reloop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=VersionAction, help="print the version and exit")
    p.add_argument("--config", help="TOML settings file (default: $RELOOP_CONFIG)")
    p.add_argument("--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS,
                   help="log level of the JSON log lines on stderr (default: WARNING)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_run, add_worker, add_replay, add_topics, add_memory, add_schemas, add_dlq):
        add(sub)
    add_models_commands(sub, _settings, common_opts)
    add_train_command(sub, _settings, common_opts)
    add_simulate(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``reloop``; returns the exit code. Never ends in a traceback unless --log-level DEBUG:
    errors are one line on stderr, Ctrl-C exits 130 with a one-line note, a closed stdout pipe
    (``reloop topics list | head``) exits 141 quietly."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while parsing or importing, before a command's own handler
        print("reloop: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from reloop.ops.logging_setup import setup_logging

    setup_logging(args.log_level)
    one_shot = args.command not in ("worker", "run") and not (args.command == "train" and not args.from_log)
    if one_shot and args.log_level not in ("DEBUG", "INFO"):
        import logging  # a one-shot command's own one-line error already says what aiokafka would log

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print(f"reloop {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - the one place where errors become one line
        if args.log_level == "DEBUG":
            raise
        if isinstance(exc, expected_errors()):
            code = (exc.code if isinstance(exc, CliError)
                    else 2 if isinstance(exc, (ValueError, FileNotFoundError)) else 1)
            print(f"reloop {args.command}: {one_line(exc)}", file=sys.stderr)
            return code
        print(f"reloop {args.command}: unexpected {type(exc).__name__}: {one_line(exc)} "
              "(run with --log-level DEBUG for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
