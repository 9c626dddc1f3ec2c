"""Who may read what on a worker's web server, and the cached answers that keep it cheap.

- :func:`web_access_denied`: the rule for the private endpoints (``/memory/{user}``,
  ``/state``): with ``worker.web_token`` set, a request must carry
  ``Authorization: Bearer <token>``; without a token, only loopback clients are answered.
- :class:`DigestCache`: ``/state``'s error-memory fingerprint, hashed in a thread (never on
  the event loop), shared by concurrent callers and reused until the replica changes.
- :class:`SizesCache`: ``/metrics``' memory sizes, recomputed at most every ``max_age_s``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
import time
from typing import Any, Awaitable, Callable


def is_loopback(remote: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else or None.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("10.0.0.5"), is_loopback(None)
    (True, True, False, False)
    """
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool((mapped or addr).is_loopback)


def web_access_denied(token: str | None, remote: str | None, authorization: str | None) -> str | None:
    """Why a request to a private endpoint is refused, or None if it may be answered.

    >>> web_access_denied(None, "127.0.0.1", None) is None
    True
    >>> web_access_denied(None, "10.1.2.3", None)
    'loopback clients only (set worker.web_token to allow others with a bearer token)'
    >>> web_access_denied("s3cret-token", "127.0.0.1", "Bearer s3cret-token") is None
    True
    >>> web_access_denied("s3cret-token", "127.0.0.1", None)
    'missing or wrong bearer token (Authorization: Bearer <worker.web_token>)'
    """
    if token is None:
        if is_loopback(remote):
            return None
        return "loopback clients only (set worker.web_token to allow others with a bearer token)"
    given = (authorization or "").removeprefix("Bearer ").strip()
    if authorization and authorization.startswith("Bearer ") and hmac.compare_digest(given.encode(), token.encode()):
        return None
    return "missing or wrong bearer token (Authorization: Bearer <worker.web_token>)"


def advertised_host(bind: str) -> str:
    """The host name Faust advertises (``web_host``): the bind address if it is a specific
    one, else this machine's host name (bind 0.0.0.0 / ::)."""
    return socket.gethostname() if ipaddress.ip_address(bind).is_unspecified else bind


def status_url(bind: str, port: int) -> str:
    """The status page URL a human on this machine can open.

    >>> status_url("0.0.0.0", 6066), status_url("::1", 80)
    ('http://127.0.0.1:6066/', 'http://[::1]:80/')
    """
    addr = ipaddress.ip_address(bind)
    host = "127.0.0.1" if addr.is_unspecified else (f"[{bind}]" if addr.version == 6 else bind)
    return f"http://{host}:{port}/"


class DigestCache:
    """The replica's ``({"errors": errors_applied, "memory": memory_applied}, digest)``, hashed
    off the event loop.

    The digest is keyed by what changes the error memory (``memory`` batches and ``errors``
    records applied per partition, the serving model, the compensation object); concurrent requests await one computation. The
    event loop (which applies writes) keeps running while a thread hashes, so a write landing
    mid-hash could tear the fingerprint: the key is read again afterwards and the hash redone
    (up to ``retries`` times) until it is stable; an unsettled answer is not cached.
    """

    def __init__(self, retries: int = 3) -> None:
        self.retries = retries
        self._key: Any = None
        self._value: tuple[dict[str, dict[int, int]], str] | None = None
        self._inflight: asyncio.Future[tuple[dict[str, dict[int, int]], str]] | None = None

    @staticmethod
    def _state_key(hot: Any) -> Any:
        version = hot.scoring.model_version if hot.scoring else None
        return (tuple(sorted(hot.errors_applied.items())), tuple(sorted(hot.memory_applied.items())), version,
                id(hot.compensation))

    async def get(self, hot: Any) -> tuple[dict[str, dict[int, int]], str]:
        """The current ``({"errors": ..., "memory": ...}, digest)`` of ``hot`` (a :class:`HotPath`)."""
        key = self._state_key(hot)
        if self._value is not None and key == self._key:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._compute(hot))
            self._inflight.add_done_callback(lambda _: setattr(self, "_inflight", None))
        return await asyncio.shield(self._inflight)

    async def _compute(self, hot: Any) -> tuple[dict[str, dict[int, int]], str]:
        loop = asyncio.get_running_loop()
        for _ in range(self.retries):
            key, applied = self._state_key(hot), {"errors": dict(hot.errors_applied),
                                                  "memory": dict(hot.memory_applied)}
            digest = await loop.run_in_executor(None, hot.compensation.digest)
            if self._state_key(hot) == key:
                self._key, self._value = key, (applied, digest)
                return applied, digest
        return applied, digest


class SizesCache:
    """``await sizes_of(hot)`` (bytes per memory) recomputed at most every ``max_age_s`` seconds."""

    def __init__(self, sizes_of: Callable[[Any], Awaitable[dict[str, int]]], max_age_s: float = 10.0) -> None:
        self.sizes_of = sizes_of
        self.max_age_s = max_age_s
        self._at = -float("inf")
        self._value: dict[str, int] = {}

    async def get(self, hot: Any) -> dict[str, int]:
        now = time.monotonic()
        if now - self._at >= self.max_age_s:
            self._value, self._at = await self.sizes_of(hot), now
        return self._value
