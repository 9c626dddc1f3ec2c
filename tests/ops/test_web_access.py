"""The worker's private-endpoint rule and the /state digest cache (off the event loop, shared)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from reloop.ops.web_access import DigestCache, SizesCache, is_loopback, status_url, web_access_denied


@pytest.mark.parametrize("remote,ok", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
                                       ("::ffff:127.0.0.1", True), ("10.0.0.7", False), ("192.168.1.2", False),
                                       ("::ffff:10.0.0.7", False), (None, False), ("garbage", False)])
def test_without_token_only_loopback(remote, ok):
    assert is_loopback(remote) is ok
    assert (web_access_denied(None, remote, None) is None) is ok


@pytest.mark.parametrize("auth,ok", [(None, False), ("Bearer abcdefgh1", True), ("Bearer abcdefgh2", False),
                                     ("abcdefgh1", False), ("Basic abcdefgh1", False), ("Bearer ", False)])
def test_with_token_everyone_needs_it(auth, ok):
    for remote in ("127.0.0.1", "10.0.0.7"):
        assert (web_access_denied("abcdefgh1", remote, auth) is None) is ok


def test_status_url():
    assert status_url("127.0.0.1", 6066) == "http://127.0.0.1:6066/"
    assert status_url("0.0.0.0", 6066) == "http://127.0.0.1:6066/"
    assert status_url("::", 1) == "http://127.0.0.1:1/"


class FakeHot:
    """The attributes of a HotPath that DigestCache reads; digest() records its thread."""

    def __init__(self) -> None:
        self.errors_applied = {0: 5}
        self.memory_applied: dict[int, int] = {}
        self.scoring = SimpleNamespace(model_version="v1")
        self.calls: list[int] = []
        self.release = threading.Event()
        self.compensation = SimpleNamespace(digest=self._digest)

    def _digest(self) -> str:
        self.calls.append(threading.get_ident())
        self.release.wait(30)
        return f"d{sum(self.errors_applied.values())}"


async def test_digest_is_computed_once_off_the_loop_and_cached():
    hot = FakeHot()
    cache = DigestCache()
    loop_thread = threading.get_ident()
    waiters = [asyncio.ensure_future(cache.get(hot)) for _ in range(20)]
    # the loop keeps running while the digest is being computed
    for _ in range(100):
        await asyncio.sleep(0)
        if hot.calls:
            break
    assert not any(w.done() for w in waiters)
    hot.release.set()
    results = await asyncio.gather(*waiters)
    assert results == [(applied({0: 5}), "d5")] * 20
    assert len(hot.calls) == 1 and hot.calls[0] != loop_thread
    assert await cache.get(hot) == (applied({0: 5}), "d5") and len(hot.calls) == 1  # cached
    hot.errors_applied = {0: 7}
    assert await cache.get(hot) == (applied({0: 7}), "d7") and len(hot.calls) == 2  # state changed: recomputed
    hot.memory_applied = {1: 3}  # a binary memory batch applied: the error memory changed too
    assert await cache.get(hot) == (applied({0: 7}, {1: 3}), "d7") and len(hot.calls) == 3


def applied(errors: dict[int, int], memory: dict[int, int] | None = None) -> dict[str, dict[int, int]]:
    return {"errors": errors, "memory": memory or {}}


async def test_digest_torn_by_a_write_is_redone():
    hot = FakeHot()
    hot.release.set()
    original = hot._digest
    writes = iter([{0: 6}])

    def digest_with_a_write() -> str:
        out = original()
        nxt = next(writes, None)
        if nxt is not None:
            hot.errors_applied = nxt  # a write landed while hashing
        return out

    hot.compensation = SimpleNamespace(digest=digest_with_a_write)
    assert await DigestCache().get(hot) == (applied({0: 6}), "d6")
    assert len(hot.calls) == 2


async def test_sizes_cache_bounds_recomputation():
    n = []

    async def sizes(hot):
        n.append(1)
        return {"x": len(n)}

    cache = SizesCache(sizes, max_age_s=3600)
    assert await cache.get(None) == {"x": 1} and await cache.get(None) == {"x": 1} and len(n) == 1
    cache.max_age_s = 0.0
    assert await cache.get(None) == {"x": 2}
