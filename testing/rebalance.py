"""Rebalance trials: one log through one uninterrupted worker (A) and through a consumer group of
workers (B) that join, leave (SIGTERM), are lost for good (SIGKILL) and restart while traffic
flows; then B's outputs and state are compared with A's (docs/guarantees.md).

A *script* is a list of :class:`Step`: before step i, the i-th chunk of B's log is produced;
the step runs once a fraction of that chunk's requests is answered. Actions:

* ``add``: start a new worker (its own data dir);
* ``stop``: SIGTERM a running worker (it stays down);
* ``kill``: SIGKILL a running worker, never restarted (a node lost);
* ``restart``: SIGKILL a running worker and start it again on the same data dir;
* ``roll``: SIGTERM a running worker and start it again on the same data dir (a rolling deploy).

The checks (:func:`compare_group`): every request answered; B's error records have the same
ids, labels, base predictions and codes as A's; B's state, rebuilt from its ``changelog``
topic, holds the same pending predictions, orphans, stream times and counters as A's final
checkpoint; optionally (``identical_copies``) every output B produced twice is byte-identical.

Used by ``tests/integration/test_rebalance_broker.py`` and ``bench/rebalance.py``.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgspec

from reloop.models.registry import ModelRegistry
from reloop.testing.chaos import TrialResult, _answered, _wait_done, pending_view, produce_log, read_topic, \
    trial_log
from reloop.ops.kafka import create_topics
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig
from reloop.ops.webclient import get_json, wait_ready
from reloop.testing.worker_process import WorkerProcess
from reloop.processors.changelog import restore
from reloop.processors.media import MediaCore
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.tasks import FeedbackTasks
from reloop.state.media.snapshot import user_digest, user_from_bytes
from reloop.state.snapshots import read_npz
from reloop.streams.events import ErrorRecord, Recommendation, RecommendationRequest

__all__ = ["Step", "run_group_trial", "random_script", "compare_group"]


@dataclass(frozen=True)
class Step:
    """One membership change: ``action`` (module doc) on worker ``worker`` once ``fraction`` of
    the current chunk's requests is answered."""

    action: str
    worker: int
    fraction: float = 0.5


def random_script(seed: int, steps: int = 4, max_workers: int = 3) -> tuple[int, list[Step]]:
    """A seeded membership sequence over up to ``max_workers`` workers: returns the number of
    workers running at the start and the steps. Always at least one worker keeps running."""
    rng = random.Random(seed)
    initial = rng.randint(1, max_workers - 1)
    running, down, nxt = list(range(initial)), [], initial
    out: list[Step] = []
    for _ in range(steps):
        options = ["restart"] + (["add"] if len(running) < max_workers and nxt < max_workers else []) + \
            (["stop", "kill"] if len(running) > 1 else [])
        action = rng.choice(options)
        if action == "add":
            w = nxt
            nxt += 1
            running.append(w)
        else:
            w = rng.choice(running)
            if action in ("stop", "kill"):
                running.remove(w)
                down.append(w)
        out.append(Step(action, w, rng.uniform(0.2, 0.8)))
    return initial, out


def _group_member(b: Settings, workdir: Path, i: int, small_model: Any) -> Settings:
    s = b.with_overrides(worker={"data_dir": str(workdir / f"b{i}")})
    d = Path(s.worker.data_dir) / "models"
    if small_model is not None and not d.exists():
        ModelRegistry(d).register(small_model)
    return s


async def run_group_trial(a: Settings, b: Settings, seed: int, workdir: Path, env: dict[str, str], *,
                          sim_config: SimConfig, initial: int, script: list[Step], model: Any,
                          requests: int = 300, timeout_s: float = 240.0,
                          identical_copies: bool = True,
                          member_env: Callable[[int], dict[str, str]] | None = None) -> TrialResult:
    """One trial (module doc). ``a``: the reference worker's settings (its own prefix, group and
    data dir, model registered); ``b``: the group's prefix and group id (data dirs are made per
    member under ``workdir``); ``model``: the model bundle each new member registers;
    ``member_env(i)``: extra environment of member i (e.g. its static group instance id)."""
    k = len(script)
    events, reqs, n_err, cuts = trial_log(sim_config, requests, k + 1)
    n_req = len(reqs)
    for s in (a, b):
        await create_topics(s.kafka)
    await produce_log(a, events)
    wa = WorkerProcess(a, workdir / "a.log", env)
    members: dict[int, WorkerProcess] = {}
    result = TrialResult(seed, details={"script": [(s.action, s.worker, round(s.fraction, 3)) for s in script],
                                        "initial": initial, "requests": n_req})

    def start(i: int) -> WorkerProcess:
        extra = member_env(i) if member_env is not None else {}
        w = WorkerProcess(_group_member(b, workdir, i, model), workdir / f"b{i}.log", {**env, **extra})
        members[i] = w
        return w

    try:
        for i in range(initial):
            start(i)
        await wait_ready(wa.port, 120.0, wa.proc)
        for w in list(members.values()):
            await wait_ready(w.port, 120.0, w.proc)
        answered = 0
        for i, step in enumerate(script):
            chunk = events[cuts[i]:cuts[i + 1]]
            await produce_log(b, chunk)
            target = answered + max(1, int(step.fraction * sum(isinstance(e, RecommendationRequest) for e in chunk)))
            deadline = time.monotonic() + timeout_s
            while await _answered(b) < target:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"step {i}: {target} requests not answered")
                await asyncio.sleep(0.05)
            result.details.setdefault("step_times", []).append(time.time())
            # a static member that rejoins waits on some brokers until its old session expires
            ready_s = 120.0 + 2 * b.kafka.session_timeout_s
            if step.action == "add":
                await wait_ready(start(step.worker).port, ready_s, members[step.worker].proc)
            elif step.action == "stop":
                members.pop(step.worker).stop(signal.SIGTERM)
            elif step.action == "kill":
                members.pop(step.worker).stop(signal.SIGKILL)
            elif step.action in ("restart", "roll"):
                members.pop(step.worker).stop(signal.SIGKILL if step.action == "restart" else signal.SIGTERM)
                await wait_ready(start(step.worker).port, ready_s, members[step.worker].proc)
            answered = await _answered(b)
        await produce_log(b, events[cuts[-2]:] if k else events)
        await _wait_done(a, wa, n_req, n_err, timeout_s)
        await _wait_group(b, n_req, n_err, timeout_s)
        result.details["restores"] = _restores(workdir)
        qa = await cluster_quality([wa], n_err, min(timeout_s, 60.0))
        qb = await cluster_quality(list(members.values()), n_err, min(timeout_s, 60.0))
        result.details["cluster_quality"] = [qa, qb]
        # measured from ``errors`` by the one reading it: whoever moved, B's figures are A's
        # (the base predictions are the same; the compensated ones depend on replica timing)
        result.checks["same_cluster_quality"] = qa is not None and qb is not None and \
            all(qa[k] == qb[k] for k in ("labelled", "positives", "auc_base")) and \
            math.isclose(qa["logloss_base"], qb["logloss_base"], rel_tol=1e-9)  # summed in arrival order
    finally:
        code_a = wa.stop()
        codes = [w.stop() for w in members.values()]
    result.checks["clean_stop"] = code_a == 0 and all(c == 0 for c in codes)
    result.details["exit_codes"] = [code_a, *codes]
    await compare_group(a, b, reqs, result, identical_copies,
                        live_dirs=[workdir / f"b{i}" for i in members])
    return result


async def cluster_quality(workers: list[WorkerProcess], n_errors: int, timeout_s: float) -> dict[str, Any] | None:
    """The ``cluster_quality`` summary of the one worker of ``workers`` that publishes it (the
    elected one), once it has measured ``n_errors`` records; None after ``timeout_s`` (the
    reorder buffer may hold the last records for ``schemas.reorder_idle_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [q["summary"] for q in [(await get_json(w.port, "/status")).get("cluster_quality")
                                         for w in workers] if q is not None]
        if len(found) == 1 and found[0]["labelled"] >= n_errors:
            return found[0]
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.1)


async def _wait_group(b: Settings, n_requests: int, n_errors: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        answered = await _answered(b)
        ids = len({msgspec.json.decode(m.value)["error_id"] for m in await read_topic(b, "errors")})
        if answered >= n_requests and ids >= n_errors:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"group not done: answered {answered}/{n_requests}, error ids {ids}/{n_errors}")
        await asyncio.sleep(0.2)


def _restores(workdir: Path) -> list[dict[str, Any]]:
    """Every ``changelog_restored`` log line of the group's workers."""
    out = []
    for path in sorted(workdir.glob("b*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"changelog_restored"' in line:
                try:
                    out.append(msgspec.json.decode(line))
                except msgspec.DecodeError:
                    pass
    return out


async def changelog_tasks(settings: Settings, window_s: float, media: dict[str, bytes] | None = None,
                          sizes: dict[str, int] | None = None) -> FeedbackTasks:
    """Every user partition's task rebuilt from the ``changelog`` topic (as a new owner would);
    ``media`` (if given) receives every user's media record from it, ``sizes`` the records and
    bytes (key + value) of each kind written (``req``, ``res``, ``orph``, ``media``, ``meta``:
    one per batch and partition), before compaction."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from reloop.ops.kafka import client_kwargs, topic_name
    from reloop.processors.hot_restore import changelog_read, changelog_tail

    tasks = FeedbackTasks(window_s, 1_000_000, OnlineMetrics())
    c = AIOKafkaConsumer(**client_kwargs(settings.kafka), group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=10)  # reads to the end: no 500 ms holds
    await c.start()
    try:
        for p in range(settings.kafka.partitions):
            tp = TopicPartition(topic_name(settings.kafka, "changelog"), p)
            end, _ = await changelog_tail(c, tp)
            records = await changelog_read(c, tp, end) if end else []
            r = restore(p, records, window_s, 1_000_000)
            for k, v in records if sizes is not None else ():
                kind = k.split(b"/", 1)[1].split(b":", 1)[0].decode()
                sizes[kind] = sizes.get(kind, 0) + len(k) + (len(v) if v is not None else 0)
                sizes[kind + "_records"] = sizes.get(kind + "_records", 0) + 1
            if r.records:
                tasks.install(p, r.core, r.meta.max_ts if r.meta else {}, r.meta.seq if r.meta else 0)
            if media is not None:
                media.update(r.media)
    finally:
        await c.stop()
    return tasks


def media_digests(snap: dict[str, Any]) -> dict[str, str]:
    """user -> digest of its media memory's write path (:func:`reloop.state.media.snapshot.user_digest`
    without retrieval touches, which depend on batching) in a worker's ``inputs.npz`` checkpoint
    ({} without media)."""
    arrays = {k[6:]: v for k, v in snap.items() if k.startswith("media.")}
    if not arrays:
        return {}
    core = MediaCore.restore(arrays)
    return {u: user_digest(m, touches=False) for u, m in core.memory.users.items()}


async def compare_group(a: Settings, b: Settings, requests: list[RecommendationRequest], result: TrialResult,
                        identical_copies: bool = True, live_dirs: list[Path] | None = None) -> None:
    """The checks of one group trial (module doc). ``live_dirs``: data dirs of the group members
    still running at the end (stopped cleanly, so their checkpoints are final): each one's media
    memory must equal A's for every user it holds."""
    c = result.checks
    recs_b = await read_topic(b, "recommendations")
    by_id: dict[str, set[bytes]] = {}
    for m in recs_b:
        by_id.setdefault(msgspec.json.decode(m.value, type=Recommendation).request_id, set()).add(m.value)
    c["every_request_answered"] = {r.request_id for r in requests} <= set(by_id)
    result.details["duplicate_recommendations"] = len(recs_b) - len(by_id)
    errs_a, errs_b = await read_topic(a, "errors"), await read_topic(b, "errors")
    ra = {r.error_id: r for r in (msgspec.json.decode(m.value, type=ErrorRecord) for m in errs_a)}
    rb = {r.error_id: r for r in (msgspec.json.decode(m.value, type=ErrorRecord) for m in errs_b)}
    by_err: dict[str, set[bytes]] = {}
    for m in errs_b:
        by_err.setdefault(msgspec.json.decode(m.value, type=ErrorRecord).error_id, set()).add(m.value)
    result.details["duplicate_error_records"] = len(errs_b) - len(by_err)
    result.details["error_records"] = [len(ra), len(rb)]
    if identical_copies:
        c["duplicates_identical"] = all(len(v) == 1 for v in by_id.values())
        c["error_duplicates_identical"] = all(len(v) == 1 for v in by_err.values())
    c["same_error_ids"] = set(ra) == set(rb)
    result.details["missing_error_ids"] = len(set(ra) - set(rb))
    key = lambda r: (r.label, r.ts, r.base_pred, tuple(r.codes), r.model_version)  # noqa: E731
    c["same_labels_and_base_predictions"] = c["same_error_ids"] and all(key(ra[i]) == key(rb[i]) for i in ra)
    snap = read_npz(Path(a.worker.data_dir) / "snapshots" / "inputs.npz")
    fa = FeedbackTasks.from_state(snap["feedback"].tobytes())
    media_b: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    fb = await changelog_tasks(b, fa.window_s, media_b, sizes)
    result.details["changelog_sizes"] = sizes
    media_a = media_digests(snap)
    if media_a:  # media memories: the changelog's (every partition's last writer) and each live member's
        cfg = MediaCore.restore({k[6:]: v for k, v in snap.items() if k.startswith("media.")}).config
        from_log = {u: user_digest(user_from_bytes(raw, cfg), touches=False) for u, raw in media_b.items()}
        c["same_media_from_changelog"] = from_log == media_a
        result.details["media_users"] = [len(media_a), len(from_log)]
        if from_log != media_a:
            result.details["media_differs"] = sorted(u for u in set(media_a) | set(from_log)
                                                     if media_a.get(u) != from_log.get(u))[:20]
        held = []
        for d in live_dirs or []:
            path = d / "snapshots" / "inputs.npz"
            mine = media_digests(read_npz(path)) if path.exists() else {}
            held.append(len(mine))
            c[f"media_of_{d.name}_equals_reference"] = bool(mine) and all(media_a.get(u) == g
                                                                             for u, g in mine.items())
        result.details["media_users_held"] = held
    va, vb = pending_view(fa), pending_view(fb)
    c["same_pending_from_changelog"] = va == vb
    if va != vb:
        result.details["pending_differs"] = sorted(p for p in set(va) | set(vb) if va.get(p) != vb.get(p))
