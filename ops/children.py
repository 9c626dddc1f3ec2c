"""The main job's children (``reloop worker``, ``reloop train``): the effective settings in
their environment (:func:`settings_env`), spawning (:func:`spawn_child`), ordered shutdown
(:func:`stop_children`), and running uninterruptible work in a daemon thread
(:func:`in_daemon_thread`)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

from reloop.ops.settings import Settings

log = logging.getLogger("reloop.children")


def _toml_value(value: Any) -> str | None:
    """``value`` as a TOML scalar, array or inline table (what ``load_settings`` parses from an
    env var); None for values TOML cannot hold (None).

    >>> _toml_value(True), _toml_value(0.5), _toml_value("a\\"b"), _toml_value([1, "x"]), _toml_value({"k": 2})
    ('true', '0.5', '"a\\\\"b"', '[1, "x"]', '{k = 2}')
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        items = [_toml_value(v) for v in value]
        return None if any(i is None for i in items) else "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(value, dict):
        items = {k: _toml_value(v) for k, v in value.items()}
        if any(v is None for v in items.values()):
            return None
        return "{" + ", ".join(f"{json.dumps(k) if not k.isidentifier() else k} = {v}" for k, v in items.items()) + "}"
    return None


def settings_env(settings: Settings) -> dict[str, str]:
    """``RELOOP_<SECTION>__<FIELD>`` env vars for every field of ``settings`` that differs from the
    built-in defaults, so a child process (``reloop worker``, ``reloop train``) loads the same
    effective settings as its parent, whatever mix of ``--config``, env vars and overrides
    made them (env vars win over a config file in the child too).

    >>> from reloop.ops.settings import load_settings
    >>> env = settings_env(Settings().with_overrides(trainer={"min_samples": 5}, worker={"data_dir": "d"}))
    >>> sorted(env.items())
    [('RELOOP_TRAINER__MIN_SAMPLES', '5'), ('RELOOP_WORKER__DATA_DIR', '"d"')]
    >>> load_settings(env=env).trainer.min_samples
    5
    """
    ours = msgspec.to_builtins(settings)
    defaults = msgspec.to_builtins(Settings())
    out: dict[str, str] = {}
    for section, values in ours.items():
        for name, value in values.items():
            if defaults.get(section, {}).get(name, object()) == value:
                continue
            text = _toml_value(value)
            if text is not None:
                out[f"RELOOP_{section.upper()}__{name.upper()}"] = text
    return out


def _child_setup(niceness: int) -> Callable[[], None]:
    def setup() -> None:  # runs in the child between fork and exec
        """Die with the parent (Linux ``PR_SET_PDEATHSIG``: SIGTERM when the parent exits)."""
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        except OSError:
            pass
        if niceness:
            os.nice(niceness)
    return setup


def reloop_cmd(command: str, settings: Settings, *extra: str) -> list[str]:
    """``python -m reloop.ops.cli --log-level INFO <command> --broker ... --data-dir ... <extra>``."""
    return [sys.executable, "-m", "reloop.ops.cli", "--log-level", "INFO", command, "--broker", settings.kafka.broker,
            "--data-dir", settings.worker.data_dir, *extra]


def spawn_child(cmd: list[str], log_path: Path, settings: Settings, niceness: int = 0) -> subprocess.Popen[bytes]:
    """Start a child of the main job with the effective settings in its environment.

    The child gets its own process group, so a terminal's Ctrl-C (SIGINT to the foreground
    group) reaches only the main job, which stops its children in order (worker and trainer
    before the broker they need to shut down cleanly); it dies with the main job (SIGTERM on
    the parent's death). Output goes to ``log_path``; ``niceness`` lowers its CPU priority
    (the trainer's, so a retrain does not take cores from serving). Call from the main thread:
    the death signal follows the thread that forked.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings_env(settings)}
    with open(log_path, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                process_group=0, preexec_fn=_child_setup(niceness))


async def stop_children(children: dict[str, subprocess.Popen[bytes]], timeout_s: float,
                        sig: int = signal.SIGTERM) -> dict[str, int | None]:
    """Send ``sig`` to every live child at once, wait up to ``timeout_s`` seconds for all, then
    SIGKILL the ones left (logged ``child_killed``). Returns each child's exit code (negative:
    killed by that signal), without blocking the event loop."""
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in children.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    for name, proc in children.items():
        if proc.poll() is None:
            log.warning("child_killed", extra={"child": name, "pid": proc.pid, "after_s": timeout_s})
            proc.kill()
            proc.wait()
    return {name: p.returncode for name, p in children.items()}


class Abandoned(Exception):
    """``stop`` was set before the work in :func:`in_daemon_thread` finished."""


async def in_daemon_thread(fn: Callable[[], Any], stop: asyncio.Event | None = None) -> Any:
    """Await ``fn()`` run in a new daemon thread (torch training that cannot be interrupted);
    unlike ``asyncio.to_thread``, an interrupted program does not wait for it at exit.

    Raises:
        Abandoned: ``stop`` was set first (the thread runs on, to die with the process).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            # bound now: the name ``exc`` is unset when the except block ends, before the loop runs this
            loop.call_soon_threadsafe(lambda err=exc: fut.done() or fut.set_exception(err))
        else:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))

    threading.Thread(target=target, name=getattr(fn, "__name__", "work"), daemon=True).start()
    if stop is None:
        return await fut
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({fut, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not fut.done():
        fut.cancel()
        raise Abandoned
    return fut.result()
