"""Crash-recovery trials: the same log through a worker that is never killed and through one
that is SIGKILLed at points chosen by a seed, then their outputs and state compared.

One trial (:func:`run_trial`):

1. the simulator's live traffic (requests with candidates, clicks, media) for ``requests``
   requests, plus a two-step *flush* per partition far in the future (so every attribution
   window of the log closes, and the ``errors`` partitions move on; :func:`traffic`), is
   produced to two topic prefixes, A and B;
2. worker A consumes A's topics uninterrupted; worker B consumes B's topics in chunks, and is
   killed with SIGKILL while processing at ``kills`` points (seeded: a fraction of the
   requests answered), then restarted on the same data dir;
3. once both have resolved every request and applied every error record, both stop (SIGTERM,
   final snapshots) and :func:`compare` checks what the guarantee promises (docs/guarantees.md).

Used by ``tests/integration/test_crash_recovery.py`` and ``bench/chaos.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer

from reloop.ops.kafka import client_kwargs, create_topics, make_producer, topic_name
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.ops.webclient import get_json, wait_ready
from reloop.testing.worker_process import WorkerProcess
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.reorder import EventTimeReorder
from reloop.processors.tasks import FeedbackTasks
from reloop.state.snapshots import read_npz
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import Candidate, ErrorRecord, Interaction, MediaEvent, Recommendation, RecommendationRequest
from reloop.streams.topics import USER_PARTITIONS

log = logging.getLogger("reloop.chaos")


@dataclass
class TrialResult:
    """Outcome of one trial: each named check and whether it held, plus figures."""

    seed: int
    checks: dict[str, bool] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


#: Error records the flush adds per partition (its first request's two candidates).
FLUSH_ERRORS = 2
#: Event seconds from the log's end to the first flush, and between the two flushes: longer
#: than any attribution window used here, shorter than half the reorder buffer's ``idle_s``
#: (300 s), so no ``errors`` partition is ever left behind as idle.
FLUSH_GAP_S = 120.0


def flush_user(partition: int) -> str:
    """A user id (``flush-<partition>-<k>``) that Kafka's default partitioner puts in
    ``partition``: the flush's error records (keyed by user) then land in the ``errors``
    partition of the same number, so every ``errors`` partition is written by one task only
    (co-partitioning), as with real users."""
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(USER_PARTITIONS))
    return next(u for k in range(10_000) if DefaultPartitioner()((u := f"flush-{partition}-{k}").encode(), parts,
                                                                  parts) == partition)


def traffic(sim_config: SimConfig, requests: int) -> list[Any]:
    """The log: simulator traffic (time-ordered) plus, per partition, two flush requests
    :data:`FLUSH_GAP_S` apart, each with two candidates of which one is clicked at once.

    The first flush moves the partition's stream time past every window of the log, which
    closes them (in deadline order); the second closes the first's window, so every ``errors``
    partition then has records past the log and the schema cache's reorder buffer releases
    the whole log. A flush request is never resolved by its click alone (one candidate stays
    unlabelled): a request resolved by a click is emitted *before* the windows the same batch
    closes, so which closes follow it would depend on how the worker batched (and they would
    be a flush gap late on their ``errors`` partition: see docs/guarantees.md).
    """
    events = list(Simulator(sim_config).events(requests))
    end = max(e.ts for e in events) + FLUSH_GAP_S
    for step, suffix in ((0, ""), (1, "-b")):
        for p in range(USER_PARTITIONS):
            rid, ts = f"flush-{p}{suffix}", end + FLUSH_GAP_S * step
            events.append(RecommendationRequest(request_id=rid, user_id=flush_user(p), ts=ts,
                                                candidates=[Candidate(item_id="flush"), Candidate(item_id="flush2")]))
            events.append(Interaction(user_id=flush_user(p), item_id="flush", ts=ts, label=1, request_id=rid))
    return events


_TOPIC = {RecommendationRequest: "requests", Interaction: "interactions", MediaEvent: "media"}


class TrialLog(NamedTuple):
    """A trial's traffic: ``events`` (with the flush events), its ``requests``, how many error
    ids a worker must produce from it (``n_errors``), and ``cuts``: event indices splitting it
    into ``chunks`` parts with equal numbers of requests (``cuts[0] = 0``, ``cuts[-1] = len``)."""

    events: list[Any]
    requests: list[RecommendationRequest]
    n_errors: int
    cuts: list[int]


def trial_log(sim_config: SimConfig, requests: int, chunks: int) -> TrialLog:
    """The traffic of one chaos or rebalance trial, cut into ``chunks`` parts (see :class:`TrialLog`)."""
    events = traffic(sim_config, requests)
    reqs = [e for e in events if isinstance(e, RecommendationRequest)]
    n_err = sum(len(r.candidates) for r in reqs if not r.request_id.startswith("flush-")) + \
        FLUSH_ERRORS * USER_PARTITIONS
    at = [i for i, e in enumerate(events) if isinstance(e, RecommendationRequest)]
    k = chunks - 1
    cuts = [0] + [at[(i + 1) * len(at) // (k + 1)] for i in range(k)] + [len(events)]
    return TrialLog(events, reqs, n_err, cuts)


async def produce_log(settings: Settings, events: list[Any]) -> None:
    """Produce ``events`` in order, keyed by user (flush events to their own partition)."""
    p = make_producer(settings.kafka, max_request_size=16 << 20)
    await p.start()
    try:
        futs = []
        for ev in events:
            part = int(ev.user_id.split("-")[1]) if ev.user_id.startswith("flush-") else None
            futs.append(await p.send(topic_name(settings.kafka, _TOPIC[type(ev)]), encode(ev),
                                     key=ev.user_id.encode(), partition=part))
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def read_topic(settings: Settings, name: str) -> list[Any]:
    """Every record of a topic (all partitions) up to its current end."""
    c = AIOKafkaConsumer(**client_kwargs(settings.kafka), group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=10)  # reads to the end: no 500 ms holds
    await c.start()
    try:
        from aiokafka import TopicPartition

        topic = topic_name(settings.kafka, name)
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        end = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        out: list[Any] = []
        while True:
            positions = [await c.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps)):
                break
            for msgs in (await c.getmany(timeout_ms=200)).values():
                out.extend(msgs)
        return out
    finally:
        await c.stop()


async def _answered(settings: Settings) -> int:
    """Distinct requests answered on the recommendations topic."""
    return len({msgspec.json.decode(m.value)["request_id"] for m in await read_topic(settings, "recommendations")})


async def _wait_done(settings: Settings, worker: WorkerProcess, n_requests: int, n_errors: int,
                     timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        answered = await _answered(settings)
        errs = await read_topic(settings, "errors")
        ids = len({msgspec.json.decode(m.value)["error_id"] for m in errs})
        errs_total = len(errs)
        st = await get_json(worker.port, "/state")
        applied = sum(st["errors_applied"].values())
        memory_behind = len(await read_topic(settings, "memory")) - sum(st.get("memory_applied", {}).values())
        if answered >= n_requests and ids >= n_errors and applied >= errs_total and memory_behind <= 0:
            return
        if time.monotonic() > deadline or worker.proc.poll() is not None:
            raise TimeoutError(f"not done: answered {answered}/{n_requests}, error ids {ids}/{n_errors}, "
                               f"applied {applied}/{errs_total}, worker exit {worker.proc.poll()}")
        await asyncio.sleep(0.2)


async def run_trial(a: Settings, b: Settings, seed: int, workdir: Path, env: dict[str, str], *,
                    sim_config: SimConfig, requests: int = 300, kills: int = 3,
                    timeout_s: float = 240.0) -> TrialResult:
    """One trial (module docstring). ``a``/``b``: settings with distinct topic prefixes, groups
    and data dirs, each with the model registered; ``env``: extra worker environment."""
    rng = random.Random(seed)
    # B's log goes in as kills+1 chunks with equal numbers of requests; kill i lands while the
    # worker is busy with chunk i, after a seeded fraction of that chunk's requests is answered
    events, reqs, n_err, cuts = trial_log(sim_config, requests, kills + 1)
    n_req = len(reqs)
    for s in (a, b):
        await create_topics(s.kafka)
    fractions = [rng.uniform(0.2, 0.8) for _ in range(kills)]
    await produce_log(a, events)
    wa = WorkerProcess(a, workdir / "a.log", env)
    wb = WorkerProcess(b, workdir / "b.log", env)
    result = TrialResult(seed, details={"kill_fractions": fractions, "events": len(events), "requests": n_req})
    try:
        await wait_ready(wa.port, 120.0, wa.proc)
        await wait_ready(wb.port, 120.0, wb.proc)
        answered = 0
        for i, f in enumerate(fractions):
            chunk = events[cuts[i]:cuts[i + 1]]
            await produce_log(b, chunk)
            target = answered + max(1, int(f * sum(isinstance(e, RecommendationRequest) for e in chunk)))
            deadline = time.monotonic() + timeout_s
            while await _answered(b) < target:
                if time.monotonic() > deadline or wb.proc.poll() is not None:
                    raise TimeoutError(f"kill point {i}: {target} requests not answered")
                await asyncio.sleep(0.02)
            wb.stop(signal.SIGKILL)
            answered = await _answered(b)
            wb = WorkerProcess(b, workdir / "b.log", env)
            await wait_ready(wb.port, 120.0, wb.proc)
        await produce_log(b, events[cuts[-2]:])
        await _wait_done(a, wa, n_req, n_err, timeout_s)
        await _wait_done(b, wb, n_req, n_err, timeout_s)
        result.details["recovered_logs"] = wb.log_text().count("inputs_recovered")
    finally:
        code_a, code_b = wa.stop(), wb.stop()
    result.checks["clean_stop"] = code_a == 0 and code_b == 0
    await compare(a, b, reqs, result)
    return result


def _same(x: Any, y: Any, path: str) -> str | None:
    """The first difference between two plain-state objects (None if identical)."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        ok = isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.shape == y.shape and \
            np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        return None if ok else path
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return f"{path} keys"
        return next((d for k in x if (d := _same(x[k], y[k], f"{path}[{k!r}]"))), None)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return f"{path} length"
        return next((d for i, (u, v) in enumerate(zip(x, y)) if (d := _same(u, v, f"{path}[{i}]"))), None)
    if hasattr(x, "__dict__") and type(x) is type(y) and not isinstance(x, type):
        return _same(vars(x), vars(y), path)
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return None
    return None if x == y else path


#: Per-clip counters of *reads* (scoring's retrievals). They record which requests saw a clip,
#: and requests and media are separate topics whose interleaving the consumer's polls decide,
#: so two runs of one log differ there even without a crash. Excluded from the A-vs-B check;
#: recovery itself restores them (the journal replays scoring's retrievals).
RETRIEVAL_COUNTERS = frozenset({"usage", "used_ts"})


def media_equal(ia: dict[str, np.ndarray], ib: dict[str, np.ndarray]) -> tuple[bool, str | None]:
    """Whether two media snapshots hold the same memories: per user, every array and counter
    bit-identical (but :data:`RETRIEVAL_COUNTERS`); per item, the same content vector. (Row order of the users and items tables
    follows arrival order across partitions, which batching changes, so rows are matched by id.)"""
    from reloop.processors.media import MediaCore

    def core(snap: dict[str, np.ndarray]) -> MediaCore | None:
        arrays = {k[6:]: v for k, v in snap.items() if k.startswith("media.")}
        return MediaCore.restore(arrays) if arrays else None

    ma, mb = core(ia), core(ib)
    if ma is None or mb is None:
        return ma is mb, "missing"
    def contents(core: MediaCore) -> dict[str, dict[str, Any]]:
        return {u: {k: v for k, v in vars(m).items() if k not in RETRIEVAL_COUNTERS}
                for u, m in core.memory.users.items()}

    diff = _same(contents(ma), contents(mb), "users")
    if diff is None:
        ta, tb = ma.memory.items, mb.memory.items
        diff = _same({k: ta.table[r] for k, r in ta.rows.items()}, {k: tb.table[r] for k, r in tb.rows.items()},
                     "items")
    return diff is None, diff


def pending_view(tasks: FeedbackTasks) -> dict[int, tuple]:
    """What a task's pending store holds, independent of insertion order: the pending
    predictions (but their compensated score) and their labels, the orphans, the stream time
    and the counters."""
    out = {}
    for p, core in tasks.tasks.items():
        st = core.pending
        # comp_pred: what the asynchronous error-memory replica said at scoring (not compared)
        out[p] = (sorted((rid, r.deadline, sorted((i, x._replace(comp_pred=0.0)) for i, x in r.items.items()),
                          sorted(r.labels.items()))
                         for rid, r in st._requests.items()),  # noqa: SLF001
                  sorted(st._orphans), st.watermark,  # noqa: SLF001
                  # clicks not attributed: how each is named (duplicate, late, unattributed)
                  # can depend on when its request was forgotten, their number cannot
                  core.unattributed + core.duplicates + core.late,
                  tasks.max_ts.get(p))
    return out


def _state(settings: Settings) -> dict[str, dict[str, np.ndarray]]:
    d = Path(settings.worker.data_dir) / "snapshots"
    return {name: read_npz(d / name) for name in ("inputs.npz", "error_memory.npz", "schema_cache.npz")
            if (d / name).exists()}


async def compare(a: Settings, b: Settings, requests: list[RecommendationRequest], result: TrialResult) -> None:
    """The checks of one trial (see docs/guarantees.md for why each is exact or toleranced)."""
    c = result.checks
    recs_b = await read_topic(b, "recommendations")
    by_id: dict[str, set[bytes]] = {}
    for m in recs_b:
        by_id.setdefault(msgspec.json.decode(m.value, type=Recommendation).request_id, set()).add(m.value)
    c["every_request_answered"] = {r.request_id for r in requests} <= set(by_id)
    c["duplicates_identical"] = all(len(v) == 1 for v in by_id.values())
    result.details["duplicate_recommendations"] = len(recs_b) - len(by_id)

    def records(msgs: list[Any]) -> dict[str, ErrorRecord]:
        return {r.error_id: r for r in (msgspec.json.decode(m.value, type=ErrorRecord) for m in msgs)}

    errs_a, errs_b_msgs = await read_topic(a, "errors"), await read_topic(b, "errors")
    ra, rb = records(errs_a), records(errs_b_msgs)
    by_err: dict[str, set[bytes]] = {}
    for m in errs_b_msgs:
        by_err.setdefault(msgspec.json.decode(m.value, type=ErrorRecord).error_id, set()).add(m.value)
    c["error_duplicates_identical"] = all(len(v) == 1 for v in by_err.values())
    result.details["duplicate_error_records"] = len(errs_b_msgs) - len(by_err)
    c["same_error_ids"] = set(ra) == set(rb)
    key = lambda r: (r.label, r.ts, r.base_pred, tuple(r.codes), r.model_version)  # noqa: E731
    c["same_labels_and_base_predictions"] = c["same_error_ids"] and all(key(ra[i]) == key(rb[i]) for i in ra)

    sa, sb = _state(a), _state(b)
    ia, ib = sa["inputs.npz"], sb["inputs.npz"]
    c["media_memory_bit_identical"], result.details["media_difference"] = media_equal(ia, ib)
    fa = FeedbackTasks.from_state(ia["feedback"].tobytes())
    fb = FeedbackTasks.from_state(ib["feedback"].tobytes())
    c["same_pending"] = pending_view(fa) == pending_view(fb)
    ma, mb = fa.metrics.summary(), fb.metrics.summary()
    c["same_labelled_count_and_base_auc"] = (ma["labelled"] == mb["labelled"] and ma["auc_base"] == mb["auc_base"]
                                             and ma["positives"] == mb["positives"])
    if "error_memory.npz" in sa:
        ea, eb = sa["error_memory.npz"], sb["error_memory.npz"]
        c["error_memory_equal_rtol_1e-9"] = all(
            np.allclose(ea[n], eb[n], rtol=1e-9, atol=1e-9) for n in ("counts", "sum_y", "sum_p"))
        result.details["error_memory_max_abs_diff"] = max(float(np.abs(ea[n] - eb[n]).max())
                                                          for n in ("counts", "sum_y", "sum_p"))
    if "schema_cache.npz" in sa:
        compare_schema_caches(sa["schema_cache.npz"], sb["schema_cache.npz"], len(ra), result)


#: Arrays of a schema-cache snapshot not compared bit for bit: the replica's input position
#: (B's ``errors`` log holds duplicates at other offsets) and the wire bytes of the records
#: held in the reorder buffer (they carry ``comp_pred``, which depends on the asynchronous
#: error-memory replica at scoring time; the held records are compared by id, key and
#: partition instead).
_NOT_BITWISE = frozenset({"errors_partitions", "errors_offsets", "recent_partitions", "recent_ids",
                          "reorder_data", "reorder_lengths", "quality"})


def _reorder(snap: dict[str, np.ndarray]) -> EventTimeReorder | None:
    """The reorder buffer saved in a schema-cache snapshot (None for the format without one)."""
    if "reorder_scalars" not in snap:
        return None
    return EventTimeReorder.from_arrays(snap, lambda raw: decode_event(raw, ErrorRecord))


def compare_schema_caches(qa_snap: dict[str, np.ndarray], qb_snap: dict[str, np.ndarray], n_records: int,
                          result: TrialResult) -> None:
    """The schema cache is fed through an event-time reorder buffer (processors/reorder.py), so
    A and B, which read the same records, must hold the same cache and the same buffer, bit
    for bit, and so the same schemata (docs/guarantees.md)."""
    from reloop.processors.schemas import SchemaCore

    c = result.checks
    qa, qb = SchemaCore.restore(qa_snap), SchemaCore.restore(qb_snap)
    ra, rb = _reorder(qa_snap), _reorder(qb_snap)
    held_a, held_b = (ra.held if ra else 0), (rb.held if rb else 0)
    c["schema_cache_same_records"] = qa.records_in + held_a == qb.records_in + held_b == n_records
    c["schema_cache_same_schemata"] = (msgspec.json.encode(qa.schemas(include_resolved=True))
                                       == msgspec.json.encode(qb.schemas(include_resolved=True)))
    diff = _same({k: v for k, v in qa_snap.items() if k not in _NOT_BITWISE},
                 {k: v for k, v in qb_snap.items() if k not in _NOT_BITWISE}, "schema_cache")
    if diff is None and (ra.held_ids() if ra else []) != (rb.held_ids() if rb else []):
        diff = "held record ids"
    c["schema_cache_bit_identical"] = diff is None
    if "quality" in qa_snap or "quality" in qb_snap:  # measured in arrival order: counts and base AUC agree
        sa_, sb_ = (OnlineMetrics.from_state(q["quality"].tobytes()).summary() if "quality" in q else None
                    for q in (qa_snap, qb_snap))
        c["same_cluster_quality"] = sa_ is not None and sb_ is not None and \
            all(sa_[k] == sb_[k] for k in ("labelled", "positives", "auc_base")) and \
            math.isclose(sa_["logloss_base"], sb_["logloss_base"], rel_tol=1e-9)
    result.details.update(schema_cache_difference=diff, schema_cache_records_in=[qa.records_in, qb.records_in],
                          schema_cache_held=[held_a, held_b],
                          schema_reorder_clamped=[r.clamped if r else None for r in (ra, rb)],
                          schemata=[len(qa.schemas(include_resolved=True)), len(qb.schemas(include_resolved=True))])
