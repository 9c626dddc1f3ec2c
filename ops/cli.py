"""``reloop``: the command line.

    reloop run [--events N | --duration S | --forever]   the main job on the embedded broker
    reloop worker [--broker kafka://host:9092]           one worker (real deployments)
    reloop replay PATH --format jsonl|movielens --report OUT.json
    reloop topics create|list [--broker ...]             the catalog's topics on a cluster
    reloop simulate --requests N --out log.jsonl [--labelled]
    reloop memory show USER [--data-dir DIR]              a user's media memory (worker snapshot)
    reloop schemas [--all] [--json] [--data-dir DIR]     the error-schema cache (worker snapshot)
    reloop dlq show|replay [--topic T] --broker ...      inspect / re-drive dead letters
    reloop train [--broker kafka://host:9092]            the trainer (one per model registry)
    reloop models list|show V|promote V|rollback          the model registry

Every command takes ``--config FILE`` (TOML) and honours ``RELOOP_<SECTION>__<FIELD>`` env
vars; ``--broker`` overrides ``kafka.broker`` (also ``RELOOP_KAFKA__BROKER``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from ops.logging_setup import setup_logging
from ops.settings import Settings, load_settings

log = logging.getLogger("reloop.cli")


def _settings(args: argparse.Namespace) -> Settings:
    s = load_settings(args.config)
    over: dict[str, dict] = {}
    if getattr(args, "broker", None):
        over["kafka"] = {"broker": args.broker}
    if getattr(args, "data_dir", None):
        over["worker"] = {"data_dir": args.data_dir}
    if getattr(args, "web_port", None) is not None:
        over.setdefault("worker", {})["web_port"] = args.web_port
    return s.with_overrides(**over) if over else s


def cmd_replay(args: argparse.Namespace) -> int:
    from ops.logs import read_log
    from ops.replay import ReplayEngine, write_report
    from ops.serving import compensation_factory

    settings = _settings(args)
    if args.warmup is not None:
        settings = settings.with_overrides(replay={"warmup": args.warmup})
    loaded = read_log(args.path, args.format, settings.limits)
    for n, reason in loaded.invalid[:5]:
        log.warning("invalid_line", extra={"line": n, "reason": reason})
    factory = None if args.no_compensation else compensation_factory(settings)
    result = ReplayEngine(settings, factory).run(loaded, progress=True)
    rep = result.report
    if args.report:
        write_report(rep, args.report)
    keys = ("events", "scored", "invalid_lines", "auc_base", "auc_compensated", "logloss_base",
            "logloss_compensated", "events_per_s")
    print(json.dumps({k: rep[k] for k in keys}, indent=2))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ops.worker import run_worker

    settings = _settings(args)
    if settings.kafka.broker == "embedded":
        print("reloop worker needs --broker kafka://host:port (or RELOOP_KAFKA__BROKER); "
              "use `reloop run` for the embedded broker", file=sys.stderr)
        return 2
    run_worker(settings, loglevel=args.log_level)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from ops.kafka import create_topics
    from streams.topics import markdown_table

    settings = _settings(args)
    if args.action == "list":
        print(markdown_table())
        return 0
    if settings.kafka.broker == "embedded":
        print("reloop topics create needs --broker kafka://host:port", file=sys.stderr)
        return 2
    created = asyncio.run(create_topics(settings.kafka))
    print(f"created {len(created)} topic(s): {', '.join(created) or '(all existed)'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ops.main_job import MainJobOptions, run_main_job

    settings = _settings(args)
    opts = MainJobOptions(events=args.events, duration_s=args.duration, forever=args.forever,
                          report_path=args.report, seed=args.seed,
                          offered_rps=args.rate)
    return asyncio.run(run_main_job(settings, opts))


def _worker_snapshot(args: argparse.Namespace, name: str) -> dict | None:
    """Arrays of a worker's snapshot file ``name`` under ``--data-dir``; None (and a message) if absent."""
    from pathlib import Path

    from state.snapshots import read_npz

    data_dir = _settings(args).worker.data_dir
    path = Path(data_dir) / "snapshots" / name
    if not path.exists():
        print(f"no snapshot at {path} (has a worker run with --data-dir {data_dir}?)", file=sys.stderr)
        return None
    return read_npz(path)


def cmd_memory(args: argparse.Namespace) -> int:
    from processors.media import MediaCore

    snap = _worker_snapshot(args, "inputs.npz")  # the input-side checkpoint holds the media memory
    if snap is None:
        return 2
    media = {k.removeprefix("media."): v for k, v in snap.items() if k.startswith("media.")}
    if not media:
        print("the worker's checkpoint holds no media memory (worker.media_features off?)", file=sys.stderr)
        return 2
    core = MediaCore.restore(media)
    if args.user not in core.memory.users:
        print(f"user {args.user!r} has no media memory ({len(core.memory.users)} users known)", file=sys.stderr)
        return 1
    print(json.dumps(core.describe(args.user), indent=2, default=str))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    import msgspec

    from processors.schemas import SchemaCore, format_table

    snap = _worker_snapshot(args, "schema_cache.npz")
    if snap is None:
        return 2
    rows = SchemaCore.restore(snap).schemas(include_resolved=args.all)
    if args.json:
        print(json.dumps(msgspec.to_builtins(rows), indent=2))
    else:
        print(format_table(rows, include_resolved=args.all))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from ops.dlq import format_letters, read_dead_letters, redrive

    settings = _settings(args)
    if settings.kafka.broker == "embedded":
        print("reloop dlq needs --broker kafka://host:port", file=sys.stderr)
        return 2
    letters = asyncio.run(read_dead_letters(settings))
    if args.action == "show":
        print(format_letters(letters, args.limit))
        return 0
    n = asyncio.run(redrive(settings, letters, args.topic))
    print(f"re-drove {n} dead letter(s) to their source topics")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from ops.simulator import SimConfig, Simulator, write_jsonl

    settings = _settings(args)
    sim = Simulator(SimConfig(seed=args.seed, media_dim=settings.limits.media_dim))
    events = sim.labelled_log(args.requests) if args.labelled else sim.events(args.requests)
    n = write_jsonl(events, args.out)
    print(f"wrote {n} events to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reloop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML settings file (default: $RELOOP_CONFIG)")
    p.add_argument("--log-level", default="WARNING")
    sub = p.add_subparsers(dest="command", required=True)

    def kafka_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--broker", help="kafka://host:port[,host:port] (default: settings)")
        sp.add_argument("--data-dir", help="snapshots, model registry, reports")
        sp.add_argument("--web-port", type=int, help="worker HTTP port")

    r = sub.add_parser("run", help="the main job: embedded broker + worker + simulator traffic")
    kafka_opts(r)
    r.add_argument("--events", type=int, default=None, help="requests to drive (default 20000)")
    r.add_argument("--duration", type=float, default=None, help="stop after S seconds of traffic")
    r.add_argument("--forever", action="store_true", help="keep serving after the traffic ends")
    r.add_argument("--report", default="reports/run.json")
    r.add_argument("--seed", type=int, default=7)
    r.add_argument("--rate", type=float, default=150.0, help="offered load, requests/s (wall clock)")
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="run one worker against a broker")
    kafka_opts(w)
    w.set_defaults(func=cmd_worker)

    rp = sub.add_parser("replay", help="replay a log through the cores without Kafka")
    rp.add_argument("path")
    rp.add_argument("--format", choices=("jsonl", "movielens"), default="jsonl")
    rp.add_argument("--report", help="write the JSON report here")
    rp.add_argument("--warmup", type=float, default=None, help="leading fraction used for training")
    rp.add_argument("--no-compensation", action="store_true", help="slow model only")
    rp.set_defaults(func=cmd_replay)

    t = sub.add_parser("topics", help="topic catalog")
    t.add_argument("action", choices=("create", "list"))
    kafka_opts(t)
    t.set_defaults(func=cmd_topics)

    m = sub.add_parser("memory", help="inspect a worker's media memory (from its snapshot)")
    m.add_argument("action", choices=("show",))
    m.add_argument("user")
    kafka_opts(m)
    m.set_defaults(func=cmd_memory)

    sc = sub.add_parser("schemas", help="list a worker's error-schema cache (from its snapshot)")
    sc.add_argument("--all", action="store_true", help="include resolved schemata")
    sc.add_argument("--json", action="store_true")
    kafka_opts(sc)
    sc.set_defaults(func=cmd_schemas)

    d = sub.add_parser("dlq", help="inspect or re-drive dead letters")
    d.add_argument("action", choices=("show", "replay"))
    d.add_argument("--limit", type=int, default=50, help="show: newest N letters")
    d.add_argument("--topic", help="replay: only letters from this catalog topic (e.g. requests)")
    kafka_opts(d)
    d.set_defaults(func=cmd_dlq)

    from ops.models_cli import add_models_commands, add_train_command

    add_models_commands(sub, _settings)
    add_train_command(sub, _settings)

    s = sub.add_parser("simulate", help="write a simulator log")
    s.add_argument("--requests", type=int, default=2000)
    s.add_argument("--out", required=True)
    s.add_argument("--labelled", action="store_true", help="prequential form for replay")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_simulate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"reloop {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
