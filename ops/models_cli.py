"""``reloop models list|show|promote|rollback`` and ``reloop train``.

    reloop models list [--json]              versions, current marker, status, lineage, metrics
    reloop models show VERSION               one version's metadata, files verified (exit 1 if corrupt)
    reloop models promote VERSION            verify, make current, announce on ``models``
    reloop models rollback                   promote the current version's parent (or the newest
                                             older loadable version) and announce it
    reloop train                             the trainer process (see ops/trainer.py)
    reloop train --from-log LOG              cold start: train v1 from a recorded log, register and
                                             announce it (see ops/cold_start.py), then exit

``ops/cli.py`` registers these with :func:`add_models_commands` and :func:`add_train_command`;
``python -m reloop.ops.models_cli ...`` runs them standalone. The registry is
``<data_dir>/models`` (``--data-dir`` or ``worker.data_dir``). Announcing needs a broker
(``--broker kafka://host:port`` or ``RELOOP_KAFKA__BROKER``); without one, promote/rollback
change ``CURRENT`` and say that nothing was announced (workers load ``CURRENT`` when they
start). ``--no-announce`` skips the announcement on purpose.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # imported inside the commands: torch is too slow for `reloop --help`
    from reloop.models.registry import ModelRegistry, VersionInfo
    from reloop.ops.settings import Settings

__all__ = ["add_models_commands", "add_train_command", "run", "main"]

log = logging.getLogger("reloop.models_cli")

SettingsFromArgs = Callable[[argparse.Namespace], "Settings"]
ParserHook = Callable[[argparse.ArgumentParser], None]


def _default_settings(args: argparse.Namespace) -> Settings:
    from reloop.ops.settings import load_settings

    s = load_settings(getattr(args, "config", None))
    over: dict[str, dict[str, Any]] = {}
    if getattr(args, "broker", None):
        over["kafka"] = {"broker": args.broker}
    if getattr(args, "data_dir", None):
        over["worker"] = {"data_dir": args.data_dir}
    return s.with_overrides(**over) if over else s


def _registry(settings: Settings) -> ModelRegistry:
    from reloop.models.registry import ModelRegistry
    from reloop.ops.retrain import registry_root

    return ModelRegistry(registry_root(settings))


def _iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts is not None else "-"


def _num(metrics: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{v:.4f}"
    return "-"


def _row(info: VersionInfo) -> list[str]:
    m = info.metrics
    window = f"{_iso(info.window_start)} .. {_iso(info.window_end)}" if info.window_start is not None else "-"
    return [("* " if info.current else "  ") + info.version, info.status, _iso(info.created_ts),
            info.parent_version or "-", window, str(m.get("train_rows", "-")),
            _num(m, "check_candidate_auc", "holdout_auc"), _num(m, "check_candidate_logloss", "holdout_logloss"),
            str(m.get("trigger", "-"))]


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    import msgspec

    infos = _registry(settings).list_versions(verify=args.verify)
    if args.json:
        print(msgspec.json.encode([asdict(i) for i in infos]).decode())
        return 0
    if not infos:
        print(f"no model versions in {_registry(settings).root}")
        return 0
    _print_table([_row(i) for i in infos],
                 ["VERSION", "STATUS", "CREATED (UTC)", "PARENT", "WINDOW (UTC)", "TRAIN ROWS", "AUC", "LOGLOSS",
                  "TRIGGER"])
    for i in infos:
        if i.error:
            print(f"{i.version}: {i.error}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    import msgspec

    registry = _registry(settings)
    if not registry.path(args.version).exists():
        known = ", ".join(i.version for i in registry.list_versions()) or "none"
        print(f"reloop models show: {args.version} is not registered in {registry.root} (registered: {known})",
              file=sys.stderr)
        return 1
    info = registry.info(args.version, verify=True)
    print(msgspec.json.format(msgspec.json.encode(asdict(info)), indent=2).decode())
    return 0 if info.status == "ok" else 1


async def announce_version(settings: Settings, registry: ModelRegistry, version: str) -> str:
    """Produce ``version``'s announcement on the compacted ``models`` topic; returns the topic."""
    from reloop.ops.kafka import make_producer, topic_name
    from reloop.streams.codec import encode

    topic = topic_name(settings.kafka, "models")
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        await producer.send_and_wait(topic, encode(registry.announcement(version)), key=b"current")
    finally:
        await producer.stop()
    log.info("model_announced", extra={"version": version, "topic": topic})
    return topic


def _promoted(args: argparse.Namespace, settings: Settings, registry: ModelRegistry, version: str) -> int:
    if args.no_announce:
        print(f"{version} is current (not announced: --no-announce)")
    elif settings.kafka.broker == "embedded":
        print(f"{version} is current; NOT announced: no broker configured (use --broker kafka://host:port); "
              "workers load it when they restart", file=sys.stderr)
    else:
        import asyncio

        topic = asyncio.run(announce_version(settings, registry, version))
        print(f"{version} is current and announced on {topic}")
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(settings)
    registry.promote(args.version)
    return _promoted(args, settings, registry, args.version)


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(settings)
    before = registry.current()
    target = registry.rollback()
    print(f"rolled back from {before} to {target}")
    return _promoted(args, settings, registry, target)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_log:
        return cmd_cold_start(args, settings)
    from reloop.ops.trainer import run_trainer

    if settings.kafka.broker == "embedded":
        print("reloop train needs --broker kafka://host:port (or RELOOP_KAFKA__BROKER)", file=sys.stderr)
        return 2
    return run_trainer(settings, progress=False if args.no_progress else None)


def cmd_cold_start(args: argparse.Namespace, settings: Settings) -> int:
    """``reloop train --from-log LOG``: the first model of an empty registry (ops/cold_start.py)."""
    from reloop.ops.cold_start import cold_start

    announce = not args.no_announce and settings.kafka.broker != "embedded"
    result = cold_start(settings, args.from_log, args.format, min_auc=args.min_auc, announce_it=announce)
    what = (f"trained {result.version} on {result.rows} labelled interaction(s) of {args.from_log}"
            f" ({result.invalid_lines} invalid line(s) skipped), registered it as current"
            if result.trained else f"the registry already serves {result.version}; nothing trained")
    if result.announced_on:
        print(f"{what}; announced on {result.announced_on}")
    elif args.no_announce:
        print(f"{what}; not announced (--no-announce)")
    else:
        print(f"{what}; NOT announced: no broker configured (use --broker kafka://host:port); "
              "workers load it when they start")
    return 0


def _wrap(fn: Callable[[argparse.Namespace, Settings], int],
          settings_from_args: SettingsFromArgs) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from reloop.models.bundle import CorruptModelError

        try:
            return fn(args, settings_from_args(args))
        except (CorruptModelError, FileNotFoundError, ValueError) as exc:
            print(f"reloop {args.command}: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
    return run


def _location_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory holding the registry (<data_dir>/models)")
    p.add_argument("--broker", help="kafka://host:port[,host:port] for announcements (default: settings)")


def add_models_commands(subparsers: Any, settings_from_args: SettingsFromArgs | None = None,
                        common_opts: ParserHook | None = None) -> None:
    """Register ``models list|show|promote|rollback`` on ``subparsers`` (from ``add_subparsers``);
    ``common_opts`` adds the options every command takes (``--config``, ``--log-level``)."""
    resolve = settings_from_args or _default_settings
    hook = common_opts or (lambda p: None)
    models = subparsers.add_parser("models", help="model registry: list, show, promote, rollback",
                                   description="The model registry in <data_dir>/models.")
    hook(models)
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="registered versions (* = current)")
    hook(ls)
    _location_opts(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--verify", action="store_true", help="read and checksum every file")
    ls.set_defaults(func=_wrap(cmd_list, resolve))
    sh = sub.add_parser("show", help="one version's metadata (files verified; exit 1 if corrupt)")
    sh.add_argument("version", help="a registered version, e.g. v3")
    hook(sh)
    _location_opts(sh)
    sh.set_defaults(func=_wrap(cmd_show, resolve))
    pr = sub.add_parser("promote", help="verify VERSION, make it current and announce it")
    pr.add_argument("version", help="a registered version, e.g. v3")
    hook(pr)
    _location_opts(pr)
    pr.add_argument("--no-announce", action="store_true", help="only change CURRENT")
    pr.set_defaults(func=_wrap(cmd_promote, resolve))
    rb = sub.add_parser("rollback", help="promote the current version's parent (or previous) and announce it")
    hook(rb)
    _location_opts(rb)
    rb.add_argument("--no-announce", action="store_true", help="only change CURRENT")
    rb.set_defaults(func=_wrap(cmd_rollback, resolve))


def add_train_command(subparsers: Any, settings_from_args: SettingsFromArgs | None = None,
                      common_opts: ParserHook | None = None) -> None:
    """Register ``train`` (the trainer process, or ``--from-log`` cold start) on ``subparsers``."""
    resolve = settings_from_args or _default_settings
    tr = subparsers.add_parser(
        "train", help="the trainer: window, drift/schedule retrains, checks, announce",
        description="Run the trainer (one per registry) or, with --from-log, train the first model and exit.")
    (common_opts or (lambda p: None))(tr)
    _location_opts(tr)
    tr.add_argument("--no-progress", action="store_true", help="no live progress view even on a terminal")
    tr.add_argument("--from-log", metavar="LOG",
                    help="cold start: train v1 on this recorded log of labelled interactions, register it "
                         "and announce it, then exit (does nothing if the registry already serves a version)")
    tr.add_argument("--format", choices=("jsonl", "movielens"), default="jsonl",
                    help="--from-log: the log's format (default: jsonl)")
    tr.add_argument("--min-auc", type=float, default=0.5,
                    help="--from-log: refuse a first model whose holdout AUC is below this (default: 0.5)")
    tr.add_argument("--no-announce", action="store_true", help="--from-log: register only, announce nothing")
    tr.set_defaults(func=_wrap(cmd_train, resolve))


def run(argv: list[str]) -> int:
    """Parse ``argv`` with the full ``reloop`` parser and run the command (no logging setup:
    for tests and embedding)."""
    from reloop.ops.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # kept for ``python -m reloop.ops.models_cli ...``; same as ``reloop ...``
    from reloop.ops.cli import main

    sys.exit(main())
