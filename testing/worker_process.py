"""A ``reloop worker`` child process for tests, benches and chaos runs (:class:`WorkerProcess`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from reloop.ops.broker import free_port
from reloop.ops.settings import Settings


class WorkerProcess:
    """Start ``python -m reloop.ops.cli worker`` for ``settings`` with its own web port and log file.

    ``env`` adds environment variables (e.g. ``RELOOP_WORKER__SNAPSHOT_EVERY_S``); the topic
    prefix, group, broker and data dir always come from ``settings``.
    """

    def __init__(self, settings: Settings, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}),
                    "RELOOP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
                    "RELOOP_KAFKA__GROUP_ID": settings.kafka.group_id}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reloop.ops.cli", "--log-level", "INFO", "worker", "--broker", settings.kafka.broker,
             "--data-dir", settings.worker.data_dir, "--web-port", str(self.port)],
            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=full_env)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the worker's log (for a failed assertion's message)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait (SIGKILL after 30 s); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
