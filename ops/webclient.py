"""Tiny HTTP client for a worker's web endpoints (readiness, status)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import aiohttp


async def get_json(port: int, path: str, host: str = "127.0.0.1", timeout_s: float = 10.0) -> Any:
    """GET ``http://host:port{path}`` and decode JSON (raises on connection errors)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async with s.get(f"http://{host}:{port}{path}") as r:
            return await r.json(content_type=None)


async def get_text(port: int, path: str, host: str = "127.0.0.1", timeout_s: float = 10.0) -> str:
    """GET ``http://host:port{path}`` as text (e.g. ``/metrics``)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async with s.get(f"http://{host}:{port}{path}") as r:
            return await r.text()


async def wait_ready(port: int, timeout_s: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``/ready`` until it answers ``{"ready": true}``.

    Raises:
        RuntimeError: ``proc`` exited first.
        TimeoutError: not ready within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} before it was ready")
        try:
            last = await get_json(port, "/ready", timeout_s=2.0)
            if last.get("ready"):
                return
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise TimeoutError(f"worker on port {port} not ready after {timeout_s}s (last answer: {last})")
