"""``reloop models list|show|promote|rollback`` and ``reloop train``.

    reloop models list [--json]              versions, current marker, status, lineage, metrics
    reloop models show VERSION               one version's metadata, files verified (exit 1 if corrupt)
    reloop models promote VERSION            verify, make current, announce on ``models``
    reloop models rollback                   promote the current version's parent (or the newest
                                             older loadable version) and announce it
    reloop train                             the trainer process (see :mod:`ops.trainer`)

``ops/cli.py`` registers these with :func:`add_models_commands` and :func:`add_train_command`;
``python -m ops.models_cli ...`` runs them standalone. The registry is
``<data_dir>/models`` (``--data-dir`` or ``worker.data_dir``). Announcing needs a broker
(``--broker kafka://host:port`` or ``RELOOP_KAFKA__BROKER``); without one, promote/rollback
change ``CURRENT`` and say that nothing was announced (workers load ``CURRENT`` when they
start). ``--no-announce`` skips the announcement on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import asdict
from typing import Any, Callable

import msgspec

from models.bundle import CorruptModelError
from models.registry import ModelRegistry, VersionInfo
from ops.settings import Settings, load_settings

__all__ = ["add_models_commands", "add_train_command", "run", "main"]

log = logging.getLogger("reloop.models_cli")

SettingsFromArgs = Callable[[argparse.Namespace], Settings]


def _default_settings(args: argparse.Namespace) -> Settings:
    s = load_settings(getattr(args, "config", None))
    over: dict[str, dict[str, Any]] = {}
    if getattr(args, "broker", None):
        over["kafka"] = {"broker": args.broker}
    if getattr(args, "data_dir", None):
        over["worker"] = {"data_dir": args.data_dir}
    return s.with_overrides(**over) if over else s


def _registry(settings: Settings) -> ModelRegistry:
    from ops.trainer import registry_root

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
    info = _registry(settings).info(args.version, verify=True)
    print(msgspec.json.format(msgspec.json.encode(asdict(info)), indent=2).decode())
    return 0 if info.status == "ok" else 1


async def _announce(settings: Settings, registry: ModelRegistry, version: str) -> str:
    from ops.kafka import make_producer, topic_name
    from streams.codec import encode

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
        topic = asyncio.run(_announce(settings, registry, version))
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
    from ops.trainer import run_trainer

    if settings.kafka.broker == "embedded":
        print("reloop train needs --broker kafka://host:port (or RELOOP_KAFKA__BROKER)", file=sys.stderr)
        return 2
    return run_trainer(settings, progress=False if args.no_progress else None)


def _wrap(fn: Callable[[argparse.Namespace, Settings], int],
          settings_from_args: SettingsFromArgs) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args, settings_from_args(args))
        except (CorruptModelError, FileNotFoundError, ValueError) as exc:
            print(f"reloop {args.command}: {exc}", file=sys.stderr)
            return 2
    return run


def _location_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory holding the registry (<data_dir>/models)")
    p.add_argument("--broker", help="kafka://host:port[,host:port] for announcements (default: settings)")


def add_models_commands(subparsers: Any, settings_from_args: SettingsFromArgs | None = None) -> None:
    """Register ``models list|show|promote|rollback`` on ``subparsers`` (from ``add_subparsers``)."""
    resolve = settings_from_args or _default_settings
    models = subparsers.add_parser("models", help="model registry: list, show, promote, rollback")
    sub = models.add_subparsers(dest="models_command", required=True)
    ls = sub.add_parser("list", help="registered versions (* = current)")
    _location_opts(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--verify", action="store_true", help="read and checksum every file")
    ls.set_defaults(func=_wrap(cmd_list, resolve))
    sh = sub.add_parser("show", help="one version's metadata (files verified; exit 1 if corrupt)")
    sh.add_argument("version")
    _location_opts(sh)
    sh.set_defaults(func=_wrap(cmd_show, resolve))
    pr = sub.add_parser("promote", help="verify VERSION, make it current and announce it")
    pr.add_argument("version")
    _location_opts(pr)
    pr.add_argument("--no-announce", action="store_true", help="only change CURRENT")
    pr.set_defaults(func=_wrap(cmd_promote, resolve))
    rb = sub.add_parser("rollback", help="promote the current version's parent (or previous) and announce it")
    _location_opts(rb)
    rb.add_argument("--no-announce", action="store_true", help="only change CURRENT")
    rb.set_defaults(func=_wrap(cmd_rollback, resolve))


def add_train_command(subparsers: Any, settings_from_args: SettingsFromArgs | None = None) -> None:
    """Register ``train`` (the trainer process) on ``subparsers``."""
    resolve = settings_from_args or _default_settings
    tr = subparsers.add_parser("train", help="the trainer: window, drift/schedule retrains, checks, announce")
    _location_opts(tr)
    tr.add_argument("--web-port", type=int, help=argparse.SUPPRESS)  # accepted for symmetry with worker
    tr.add_argument("--no-progress", action="store_true", help="no live progress view even on a terminal")
    tr.set_defaults(func=_wrap(cmd_train, resolve))


def run(argv: list[str]) -> int:
    """Parse ``argv`` with the full ``reloop`` parser and run the command (no logging setup:
    for tests and embedding)."""
    from ops.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # kept for ``python -m ops.models_cli ...``; same as ``reloop ...``
    from ops.cli import main

    sys.exit(main())
