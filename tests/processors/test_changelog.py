"""The changelog core: a partition rebuilt from its records equals the task that wrote them,
at every batch boundary, and a batch cut off mid-produce never counts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from reloop.testing.chaos import pending_view
from reloop.processors.changelog import changed_records, install_media, key_partition, repair_records, restore
from reloop.processors.media import MediaCore
from reloop.state.media.memory import MediaMemory, MediaMemoryConfig, UserMediaMemory
from reloop.state.media.snapshot import user_digest, user_from_bytes, user_to_bytes
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending
from reloop.processors.tasks import FeedbackTasks
from reloop.streams.events import Candidate, Interaction, MediaEvent, RecommendationRequest

DIM = 32


def _batches(seed: int, n: int = 60) -> list[tuple[list[Pending], list[Interaction], float]]:
    """Seeded batches for partition 0: scored candidates, clicks (some before their request:
    orphans; some twice: duplicates; some late) and the batch's event time."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for b in range(n):
        t += rng.uniform(0.5, 2.0)
        pend = [Pending(f"r{b}", f"i{k}", "u1", t, 0.5, 0.5, "v1", b"", {}) for k in range(rng.randint(1, 4))]
        clicks = []
        for _ in range(rng.randint(0, 3)):
            rb = rng.randint(max(0, b - 5), b + 1)  # b+1: its request comes next batch (orphan)
            clicks.append(Interaction(user_id="u1", item_id=f"i{rng.randint(0, 3)}", ts=t, label=1,
                                      request_id=f"r{rb}"))
        out.append((pend, clicks, t))
    return out


def _run(tasks: FeedbackTasks, batch, log: list) -> None:
    pend, clicks, t = batch
    times = tasks.stream_times(0, [t] if pend else [], [c.ts for c in clicks])
    tasks.apply(0, pend, clicks, times)
    log.extend(changed_records(tasks, 0, {"requests": 1, "interactions": 1}, "w"))


def test_restore_equals_the_writer_at_every_batch():
    tasks = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    tasks.enable_tracking()
    log: list = []
    for batch in _batches(1):
        _run(tasks, batch, log)
        got = restore(0, log, 5.0, 1_000_000)
        assert got.meta is not None and not got.tail_keys
        mirror = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
        mirror.install(0, got.core, got.meta.max_ts, got.meta.seq)
        assert pending_view(mirror) == pending_view(tasks)
    assert all(key_partition(k) == 0 for k, _ in log)
    assert any(v is None for _, v in log)  # resolved requests and claimed orphans are tombstoned
    # a click on a request whose record is current writes its labels only (a small record)
    labs = [len(v) for k, v in log if k.startswith(b"0/lab:") and v is not None]
    reqs = [len(v) for k, v in log if k.startswith(b"0/req:") and v is not None]
    assert labs and max(labs) < min(reqs)


def test_restored_task_continues_like_the_original():
    batches = _batches(2)
    a = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    a.enable_tracking()
    log: list = []
    errors_a = []
    for i, batch in enumerate(batches):
        pend, clicks, t = batch
        errors_a += a.apply(0, pend, clicks, a.stream_times(0, [t], [c.ts for c in clicks]))
        log.extend(changed_records(a, 0, {}, "w"))
        if i == 29:
            half = list(log)
    got = restore(0, half, 5.0, 1_000_000)
    b = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    b.install(0, got.core, got.meta.max_ts, got.meta.seq)
    first = [e for e in errors_a]
    errors_b = []
    for pend, clicks, t in batches[30:]:
        errors_b += b.apply(0, pend, clicks, b.stream_times(0, [t], [c.ts for c in clicks]))
    n_first = len(first) - len(errors_b)
    assert [(e.error_id, e.label) for e in first[n_first:]] == [(e.error_id, e.label) for e in errors_b]
    assert pending_view(a) == pending_view(b)


def test_records_after_the_last_meta_are_ignored_and_repaired():
    tasks = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    tasks.enable_tracking()
    log: list = []
    batches = _batches(3)
    for batch in batches[:20]:
        _run(tasks, batch, log)
    before = pending_view(tasks)
    cut: list = []
    _run(tasks, batches[20], cut)
    torn = log + cut[:-1]  # the batch's records landed, its meta did not
    got = restore(0, torn, 5.0, 1_000_000)
    mirror = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    mirror.install(0, got.core, got.meta.max_ts, got.meta.seq)
    assert pending_view(mirror) == before
    assert sorted(got.tail_keys) == sorted(k for k, _ in cut[:-1])
    # the new owner re-writes the torn keys from its state (then a meta): a later restore of
    # the whole log, torn batch included, gives the restored state again
    fixed = torn + repair_records(0, got.core.pending, got.tail_keys) + \
        changed_records(mirror, 0, {}, "w2")
    again = restore(0, fixed, 5.0, 1_000_000)
    m2 = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    m2.install(0, again.core, again.meta.max_ts, again.meta.seq)
    assert pending_view(m2) == before


# ---- media memories in the changelog ---------------------------------------------------------

def _media_batches(seed: int, n: int = 30) -> list[tuple[list[MediaEvent], list[RecommendationRequest]]]:
    """Seeded batches for partition 0: media frames of a few users (some with items), then
    requests of the same users (a retrieval touches their memories: usage, last use)."""
    rng = np.random.default_rng(seed)
    out, t = [], 0.0
    for b in range(n):
        events, reqs = [], []
        for _ in range(int(rng.integers(0, 12))):
            t += float(rng.uniform(0.1, 2.0))
            events.append(MediaEvent(user_id=f"u{rng.integers(0, 4)}", ts=t, modality=("video", "audio")[b % 2],
                                     segment_id=f"s{b}-{len(events)}", embedding=rng.normal(size=DIM).tolist(),
                                     item_id=f"i{rng.integers(0, 6)}" if rng.random() < 0.5 else None))
        for k in range(int(rng.integers(0, 3))):
            reqs.append(RecommendationRequest(request_id=f"r{b}-{k}", user_id=f"u{rng.integers(0, 5)}", ts=t,
                                              candidates=[Candidate(item_id=f"i{j}") for j in range(4)]))
        out.append((events, reqs))
    return out


def _digests(memory: MediaMemory) -> dict[str, str]:
    return {u: user_digest(m) for u, m in memory.users.items()}


def _media_run(tasks: FeedbackTasks, core: MediaCore, batch, log: list) -> None:
    events, reqs = batch
    core.on_batch(events)
    core.features_for_requests(reqs)
    log.extend(changed_records(tasks, 0, {"media": 1}, "w", (core.memory, core.take_dirty())))


def test_media_memories_restore_like_the_writer_at_every_batch():
    cfg = MediaMemoryConfig(dim=DIM)
    tasks = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    tasks.enable_tracking()
    core, log = MediaCore(cfg), []
    for batch in _media_batches(4):
        _media_run(tasks, core, batch, log)
        got = restore(0, log, 5.0, 1_000_000)
        other = MediaMemory(cfg)
        other.users["u0"] = UserMediaMemory(cfg)  # a stale copy (an old owner's) is replaced
        install_media(other, got.media, stale=list(other.users))
        assert _digests(other) == _digests(core.memory)
    assert core.memory.users and any(k.startswith(b"0/media:") for k, _ in log)
    # a delta: the users a batch changed, not every user every time
    media_keys = [k for k, _ in log if k.startswith(b"0/media:")]
    assert len(media_keys) < len(core.memory.users) * len(_media_batches(4))


def test_a_restored_media_memory_continues_like_the_original():
    cfg = MediaMemoryConfig(dim=DIM)
    batches = _media_batches(5)
    tasks = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    tasks.enable_tracking()
    a, log = MediaCore(cfg), []
    for batch in batches[:15]:
        _media_run(tasks, a, batch, log)
    b = MediaCore(cfg)
    b.memory.items = a.memory.items  # the item table is worker-wide, not a partition's (not in the changelog)
    install_media(b.memory, restore(0, log, 5.0, 1_000_000).media, stale=[])
    for events, reqs in batches[15:]:
        for core in (a, b):
            core.on_batch(events)
            if core is a:
                fa = a.features_for_requests(reqs)
            else:
                fb = b.features_for_requests(reqs)
        np.testing.assert_array_equal(fa, fb)
    assert _digests(a.memory) == _digests(b.memory)


def test_torn_media_records_are_ignored_and_repaired():
    cfg = MediaMemoryConfig(dim=DIM)
    batches = _media_batches(6)
    tasks = FeedbackTasks(window_s=5.0, limit=1_000_000, metrics=OnlineMetrics(window=10))
    tasks.enable_tracking()
    core, log = MediaCore(cfg), []
    for batch in batches[:10]:
        _media_run(tasks, core, batch, log)
    before = _digests(core.memory)
    cut: list = []
    _media_run(tasks, core, batches[10], cut)
    assert any(k.startswith(b"0/media:") for k, _ in cut[:-1])
    torn = log + cut[:-1]
    got = restore(0, torn, 5.0, 1_000_000)
    mirror = MediaMemory(cfg)
    install_media(mirror, got.media, stale=[])
    assert _digests(mirror) == before
    fixed = torn + repair_records(0, got.core.pending, got.tail_keys, mirror)
    again = MediaMemory(cfg)
    install_media(again, restore(0, fixed + [cut[-1]], 5.0, 1_000_000).media, stale=[])
    assert _digests(again) == before


def test_user_record_round_trip_and_validation():
    cfg = MediaMemoryConfig(dim=DIM)
    core = MediaCore(cfg)
    for events, _ in _media_batches(7)[:8]:
        core.on_batch(events)
    for user, mem in core.memory.users.items():
        back = user_from_bytes(user_to_bytes(mem), cfg)
        assert user_digest(back) == user_digest(mem)
    with pytest.raises(ValueError):
        user_from_bytes(b"not zlib", cfg)
    with pytest.raises(ValueError):
        user_from_bytes(user_to_bytes(next(iter(core.memory.users.values()))), MediaMemoryConfig(dim=DIM, capacity_clips=8))


def test_a_request_resolved_within_its_batch_writes_no_tombstone():
    """A request registered and resolved in one batch (a replayed one-candidate request with
    its label) never had a ``req`` record: only its ``res`` record is written. One that was
    written while pending is tombstoned when it resolves. A restore equals the writer."""
    tasks = FeedbackTasks(window_s=5.0, limit=1_000, metrics=OnlineMetrics(window=10))
    tasks.enable_tracking()
    log: list = []
    p1 = Pending("r1", "i1", "u1", 1.0, 0.5, 0.5, "v1", b"", {})
    p2 = Pending("r2", "i2", "u1", 1.0, 0.5, 0.5, "v1", b"", {})
    click1 = Interaction(user_id="u1", item_id="i1", ts=1.5, label=1, request_id="r1")
    tasks.apply(0, [p1, p2], [click1], tasks.stream_times(0, [1.0], [1.5]), [("r1", 11), ("r2", 22)])
    first = changed_records(tasks, 0, {}, "w")
    keys = [k for k, _ in first]
    assert b"0/req:r1" not in keys and b"0/lab:r1" not in keys and b"0/res:r1" in keys
    assert (b"0/req:r2", None) not in first and any(k == b"0/req:r2" and v for k, v in first)
    log += first
    click2 = Interaction(user_id="u1", item_id="i2", ts=2.0, label=0, request_id="r2")
    tasks.apply(0, [], [click2], tasks.stream_times(0, [], [2.0]))
    second = changed_records(tasks, 0, {}, "w")
    assert (b"0/req:r2", None) in second and (b"0/lab:r2", None) in second
    log += second
    got = restore(0, log, 5.0, 1_000)
    mirror = FeedbackTasks(window_s=5.0, limit=1_000, metrics=OnlineMetrics(window=10))
    mirror.install(0, got.core, got.meta.max_ts, got.meta.seq)
    assert pending_view(mirror) == pending_view(tasks)
    assert got.core.pending.digest_of("r1") == tasks.digest_of(0, "r1")
