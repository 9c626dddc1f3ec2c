"""Media memory on the simulator: compression, bounded size, retrieval agreement, speed, AUC lift.

Stream: ``reloop.ops.simulator`` labelled log with a media effect (``media_weight``: a candidate's
click logit gains ``media_weight * max cos(content, last media_history watched items)``).
Each simulated watch is expanded into ``--frames-per-watch`` encoder frames (the item's
noisy content embedding plus ``--frame-noise`` per-dimension jitter, renormalised, same
timestamp), as an upstream video/audio encoder emits several segments per watch; ``1``
keeps the simulator's one event per watch.

For each update rule (``merge``, ``titans``) the bench reports:

* ``compression``: raw segment floats ingested / floats stored (long-term keys + the slots in
  use of live rows, plus open-clip frames: :meth:`UserMediaMemory.stored_vectors` times ``d``),
  pooled over all users at the end of the stream; also pooled over the users whose memory is
  full, by history length (``compression_by_history``, the per-history-length curve), and
  against the allocated arrays (``C (1 + S)`` vectors plus open-clip buffers) for full users;
* ``bytes_per_user``: :meth:`MediaMemory.nbytes_user` of the heaviest users as their history
  grows (checkpoints) and the mean over users whose long-term memory is full;
* ``recall_at_5``: agreement with an uncompressed full-history memory. For a user and a
  query item (its content embedding), the reference ranks the user's *distinct watched
  items* by their best frame's cosine to the query and keeps the top 5; the compressed
  memory retrieves its top 5 units by key cosine (long-term clips, and open clips by their
  mean frame) and returns the items their provenance remembers (up to ``provenance_cap``
  distinct items per clip). Recall = |top 5 in retrieved items| / 5, averaged over users
  with at least 5 distinct items and ``--queries`` random known query items each;
  ``max_cos_abs_err`` is the mean |media_max_cos - full-history max cosine|;
* ``events_per_s``: media events through ``MediaCore.on_batch`` (batches of ``--batch``,
  one thread, excluding JSON decode);
* ``auc``: the slow model (``reloop.models.fit.fit_model``, default settings) fitted on the first
  ``--warmup`` of the interactions and scored on the rest, without media features, with
  the memory's features, and with an oracle feature (the simulator's true media term). Media
  features of a request use exactly the media events before it in the log.

``--steady-state`` keeps the stream but spreads it over 30 users (instead of 300), so every
user's history is long enough for the long-term memory to fill: the steady-state figures.

Usage::

    PYTHONPATH=. python bench/media_memory.py --json reports/media.json
    PYTHONPATH=. python bench/media_memory.py --steady-state --json reports/media_steady.json
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict, deque

import msgspec
import numpy as np

from reloop.models.features import FeatureEncoder
from reloop.models.fit import fit_model
from reloop.models.metrics import auc
from reloop.ops.settings import Settings
from reloop.ops.simulator import SimConfig, Simulator
from reloop.processors.media import FEATURE_NAMES, MediaCore
from reloop.state.media.kernels import unit_rows
from reloop.state.media.memory import MediaMemoryConfig, UserMediaMemory
from reloop.streams.events import Interaction, MediaEvent


def expand_frames(events: list, frames: int, noise: float, seed: int) -> list:
    """Replace each media event by ``frames`` jittered copies (segment ids ``<id>.<k>``)."""
    if frames <= 1:
        return events
    rng = np.random.default_rng(seed)
    out = []
    for ev in events:
        if not isinstance(ev, MediaEvent):
            out.append(ev)
            continue
        base = np.asarray(ev.embedding)
        vecs = unit_rows(base + noise * rng.standard_normal((frames, base.size))).astype(np.float64)
        out.extend(msgspec.structs.replace(ev, segment_id=f"{ev.segment_id}.{k}", embedding=np.round(v, 6).tolist())
                   for k, v in enumerate(vecs))
    return out


def log_segments(events: list) -> list[tuple[list[MediaEvent], list[Interaction]]]:
    """The log as alternating (media run, interaction run of one request) pairs, in order."""
    out: list[tuple[list[MediaEvent], list[Interaction]]] = []
    media: list[MediaEvent] = []
    run: list[Interaction] = []
    for ev in events:
        if isinstance(ev, MediaEvent):
            if run:
                out.append((media, run))
                media, run = [], []
            media.append(ev)
        elif isinstance(ev, Interaction):
            if run and (run[0].user_id, run[0].ts) != (ev.user_id, ev.ts):
                out.append((media, run))
                media, run = [], []
            run.append(ev)
    if media or run:
        out.append((media, run))
    return out


def compile_kernels(segments: list, cfg: MediaMemoryConfig) -> None:
    """Compile / load every numba kernel (segmentation, compression, merges, features) untimed."""
    tiny = MediaCore(msgspec.structs.replace(cfg, capacity_clips=2, flash_clips=0))  # merges at the third clip
    media = [m for run, _ in segments for m in run][:2000]
    tiny.on_batch(media)
    user = media[0].user_id
    tiny.memory.features_for_items(user, [m.item_id for m in media[:20] if m.item_id], media[-1].ts, touch=False)


def run_memory(segments: list, cfg: MediaMemoryConfig, batch: int, sim: Simulator) -> dict:
    """One prequential pass: ingest media (timed), then features of each request's candidates."""
    compile_kernels(segments, cfg)
    core, memory = MediaCore(cfg), None
    memory = core.memory
    n_total = sum(len(media) for media, _ in segments)
    feats, oracle = [], []
    recent: dict[str, deque] = defaultdict(lambda: deque(maxlen=sim.config.media_history))
    content = sim.world.content
    ingest_s, n_media, checkpoint, curve = 0.0, 0, n_total / 10, []
    features_s, n_requests = 0.0, 0
    for media, run in segments:
        for lo in range(0, len(media), batch):
            t0 = time.perf_counter()
            core.on_batch(media[lo:lo + batch])
            ingest_s += time.perf_counter() - t0
        n_media += len(media)
        for m in media:
            if m.item_id is not None and ("." not in m.segment_id or m.segment_id.endswith(".0")):
                recent[m.user_id].append(int(m.item_id[1:]))  # one entry per watch
        if n_media >= checkpoint:
            checkpoint += n_total / 10
            heavy = sorted(memory.users, key=lambda u: -memory.users[u].frames_seen)[:3]
            curve.append({"media_events": n_media, "users": [
                {"user": u, "frames_seen": memory.users[u].frames_seen, "nbytes": memory.nbytes_user(u),
                 "stored_vectors": memory.users[u].stored_vectors()}
                for u in heavy]})
        if run:
            t0 = time.perf_counter()
            feats.append(memory.features_for_items(run[0].user_id, [it.item_id for it in run], run[0].ts))
            features_s += time.perf_counter() - t0
            n_requests += 1
            hist = list(recent[run[0].user_id])
            cand = np.array([int(it.item_id[1:]) for it in run])
            oracle.append((content[cand] @ content[hist].T).max(axis=1) if hist else np.zeros(len(run)))
    return {"core": core, "events_per_s_prequential": n_media / ingest_s, "n_media": n_media, "curve": curve,
            "features_us_per_request": 1e6 * features_s / max(n_requests, 1),
            "feats": np.concatenate(feats), "oracle": np.concatenate(oracle).astype(np.float32)}


def ingest_throughput(segments: list, cfg: MediaMemoryConfig, batch: int, repeats: int = 3) -> float:
    """Media events/s through ``MediaCore.on_batch`` in batches of ``batch`` (best of ``repeats``)."""
    media = [m for run, _ in segments for m in run]
    compile_kernels(segments, cfg)
    best = 0.0
    for _ in range(repeats):
        core = MediaCore(cfg)
        t0 = time.perf_counter()
        for lo in range(0, len(media), batch):
            core.on_batch(media[lo:lo + batch])
        best = max(best, len(media) / (time.perf_counter() - t0))
    return best


HISTORY_EDGES = (0, 128, 256, 512, 1024, 2048, 4096, 8192, 1 << 60)


def compression_and_size(core: MediaCore) -> dict:
    """Raw floats ingested / floats stored, over all users and by history length; bytes per user.

    Stored floats are the embedding vectors a user's memory holds (live keys, the slots in
    use, open-clip frames) times ``d``: :meth:`UserMediaMemory.stored_vectors`. Arrays are
    allocated at full size (``C (1 + S)`` vectors plus the open-clip buffers), so
    ``compression_vs_allocated`` also divides by that bound for users whose memory is full.
    """
    memory, cfg = core.memory, core.config
    allocated = cfg.capacity_clips * (1 + cfg.slots_per_clip) + 2 * (cfg.max_clip_frames - 1)
    raw = stored = raw_full = stored_full = 0
    full_bytes, all_bytes = [], []
    for user_id, mem in memory.users.items():
        live = int(mem.live().sum())
        user_raw, user_stored = mem.frames_seen, mem.stored_vectors()
        raw, stored = raw + user_raw, stored + user_stored
        all_bytes.append(memory.nbytes_user(user_id))
        if live == cfg.capacity_clips:
            full_bytes.append(all_bytes[-1])
            raw_full, stored_full = raw_full + user_raw, stored_full + user_stored
    by_history = {}
    for lo, hi in zip(HISTORY_EDGES, HISTORY_EDGES[1:]):
        users = [m for m in memory.users.values() if lo <= m.frames_seen < hi]
        if users:
            ratios = [m.frames_seen / m.stored_vectors() for m in users]
            by_history[f"frames[{lo},{hi if hi < 1 << 60 else 'inf'})"] = {
                "users": len(users), "compression_median": float(np.median(ratios)),
                "compression_pooled": sum(m.frames_seen for m in users) / sum(m.stored_vectors() for m in users),
                "stored_vectors_median": float(np.median([m.stored_vectors() for m in users])),
                "bytes_median": float(np.median([m.nbytes() for m in users]))}
    live_rows = [m.live() for m in memory.users.values()]
    slots_hist = np.bincount(np.concatenate([m.n_slots[lv] for m, lv in zip(memory.users.values(), live_rows)]),
                             minlength=cfg.slots_per_clip + 1) if live_rows else np.zeros(1, np.int64)
    return {"compression_by_history": by_history, "raw_floats": raw * cfg.dim, "stored_floats": stored * cfg.dim,
            "compression": raw / max(stored, 1), "compression_full_users": raw_full / max(stored_full, 1),
            "compression_vs_allocated_full_users": raw_full / max(allocated * len(full_bytes), 1),
            "allocated_vectors_per_user": allocated, "live_rows_by_slots_in_use": slots_hist.tolist(),
            "users": len(memory.users), "users_full": len(full_bytes),
            "bytes_per_full_user_mean": float(np.mean(full_bytes)) if full_bytes else None,
            "bytes_per_user_max": int(max(all_bytes)) if all_bytes else 0}


def retrieval_agreement(core: MediaCore, segments: list, n_queries: int, seed: int) -> dict:
    """Recall@5 of the full-history best-matching items among the compressed memory's retrieval."""
    memory = core.memory
    frames: dict[str, list[np.ndarray]] = defaultdict(list)
    items: dict[str, list[str]] = defaultdict(list)
    for media, _ in segments:
        for m in media:
            if m.item_id is not None:
                frames[m.user_id].append(np.asarray(m.embedding, np.float32))
                items[m.user_id].append(m.item_id)
    rng = np.random.default_rng(seed)
    known = list(memory.items.rows)
    buckets: dict[str, list[float]] = defaultdict(list)
    errors, slot_errors = [], []
    for user_id in sorted(frames):
        distinct = sorted(set(items[user_id]))
        if len(distinct) < 5 or user_id not in memory.users:
            continue
        query_ids = [known[j] for j in rng.choice(len(known), n_queries, replace=False)]
        q, _ = memory.items.lookup(query_ids)
        sims = unit_rows(np.stack(frames[user_id])) @ q.T  # (frames, queries)
        code = {item: j for j, item in enumerate(distinct)}
        per_item = np.full((len(distinct), n_queries), -np.inf)
        np.maximum.at(per_item, [code[i] for i in items[user_id]], sims)
        top5 = np.argsort(-per_item, axis=0, kind="stable")[:5].T  # (queries, 5)
        got = memory.retrieve_items(user_id, q, k=5)
        recalls = [len({distinct[j] for j in row} & set(g)) / 5 for row, g in zip(top5, got)]
        watches = len(items[user_id]) // max(1, _frames_per_watch(items[user_id]))
        bucket = "watches<50" if watches < 50 else "watches<200" if watches < 200 else "watches>=200"
        buckets[bucket].extend(recalls)
        buckets["all"].extend(recalls)
        f = memory.features(user_id, q, now=float("inf"), touch=False)
        errors.extend(np.abs(f[:, 0] - per_item.max(axis=0)).tolist())
        slot_errors.extend(np.abs(f[:, 3] - per_item.max(axis=0)).tolist())
    out = {f"recall_at_5[{k}]": float(np.mean(v)) for k, v in sorted(buckets.items())}
    out.update({f"users[{k}]": len(v) // n_queries for k, v in sorted(buckets.items())})
    out["max_cos_abs_err"] = float(np.mean(errors))
    out["slot_max_cos_abs_err"] = float(np.mean(slot_errors))
    return out


def _frames_per_watch(item_seq: list[str]) -> int:
    """Typical run length of one item in a user's frame sequence (1 for one frame per watch)."""
    runs = 1 + sum(a != b for a, b in zip(item_seq, item_seq[1:]))
    return max(1, round(len(item_seq) / runs))


def fit_and_score(interactions: list[Interaction], extra: dict[str, np.ndarray], warmup: float,
                  settings: Settings) -> dict:
    """AUC on the post-warm-up interactions of a model fitted with ``extra`` dense features."""
    names = list(extra)
    cols = np.stack([extra[n] for n in names], axis=1).tolist() if names else [[]] * len(interactions)
    rows = [(it.user_id, it.item_id, {**it.features, **dict(zip(names, c))}) for it, c in zip(interactions, cols)]
    labels = np.array([it.label for it in interactions], np.float32)
    n_warm = int(len(rows) * warmup)
    t0 = time.perf_counter()
    fitted = fit_model(rows[:n_warm], labels[:n_warm], feature_defaults=settings.features,
                       model_config=settings.model, train_config=settings.train, version="bench")
    tokens, dense = FeatureEncoder(fitted.spec).encode(rows[n_warm:])
    p, _ = fitted.scorer.score(tokens, dense)
    return {"auc": auc(labels[n_warm:], p), "dense": list(fitted.spec.dense_names),
            "fit_s": time.perf_counter() - t0, "scored": len(rows) - n_warm}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--users", type=int, default=None, help="default 300, or 30 with --steady-state")
    ap.add_argument("--steady-state", action="store_true",
                    help="few users with long histories (30 by default), so every memory has filled")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--media-per-request", type=float, default=4.0)
    ap.add_argument("--media-weight", type=float, default=2.0)
    ap.add_argument("--frames-per-watch", type=int, default=8)
    ap.add_argument("--frame-noise", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=1000, help="media events per MediaCore.on_batch")
    ap.add_argument("--warmup", type=float, default=0.3)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", default="merge,titans", help="update rules to compare, comma-separated")
    ap.add_argument("--slot-min-cos", type=float, default=None,
                    help="override MediaMemoryConfig.slot_min_cos (above 1: every row keeps its slots)")
    ap.add_argument("--no-auc", action="store_true", help="skip the model fits (memory figures only)")
    args = ap.parse_args(argv)
    if args.users is None:
        args.users = 30 if args.steady_state else 300

    sim_cfg = SimConfig(seed=args.seed, n_users=args.users, n_items=args.items, media_weight=args.media_weight,
                        media_per_request=args.media_per_request, shift_at=None)
    sim = Simulator(sim_cfg)
    events = expand_frames(list(sim.labelled_log(args.requests)), args.frames_per_watch, args.frame_noise,
                           args.seed)
    segments = log_segments(events)
    interactions = [it for _, run in segments for it in run]
    settings = Settings()
    max_id = max(len(s) for media, _ in segments for m in media for s in (m.segment_id, m.item_id or ""))
    report: dict = {"config": {**vars(args), "sim": msgspec.to_builtins(sim_cfg)},
                    "platform": {"python": platform.python_version(), "machine": platform.machine()},
                    "media_events": sum(len(m) for m, _ in segments), "interactions": len(interactions),
                    "rules": {}}
    if not args.no_auc:
        report["auc_without_media"] = fit_and_score(interactions, {}, args.warmup, settings)
    overrides = {} if args.slot_min_cos is None else {"slot_min_cos": args.slot_min_cos}
    for rule in args.rules.split(","):
        cfg = MediaMemoryConfig(dim=sim_cfg.media_dim, update_rule=rule, **overrides)
        run = run_memory(segments, cfg, args.batch, sim)
        res = {"memory_config": msgspec.to_builtins(cfg),
               "events_per_s": ingest_throughput(segments, cfg, args.batch),
               "events_per_s_prequential": run["events_per_s_prequential"],
               "features_us_per_request": run["features_us_per_request"],
               "nbytes_bound_per_user": UserMediaMemory.nbytes_bound(cfg, id_chars=max_id),
               **compression_and_size(run["core"]), "bytes_curve": run["curve"],
               **retrieval_agreement(run["core"], segments, args.queries, args.seed)}
        if not args.no_auc:
            res["auc_with_media"] = fit_and_score(
                interactions, {n: run["feats"][:, j] for j, n in enumerate(FEATURE_NAMES)}, args.warmup, settings)
            if "auc_oracle_media_term" not in report:
                report["auc_oracle_media_term"] = fit_and_score(interactions, {"oracle_media": run["oracle"]},
                                                                args.warmup, settings)
        report["rules"][rule] = res
    print_table(report)
    if args.json:
        from reloop.ops.replay import write_report
        write_report(report, args.json)
    return report


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(f"media memory bench: {report['media_events']} media events ({cfg['frames_per_watch']} frames/watch), "
          f"{report['interactions']} interactions, {cfg['users']} users" + (" [steady state]" if cfg["steady_state"]
                                                                           else ""))
    if "auc_without_media" in report:
        print(f"AUC without media features: {report['auc_without_media']['auc']:.4f}   "
              f"oracle media term: {report['auc_oracle_media_term']['auc']:.4f}")
    header = ("rule", "events/s", "compress", "(full users)", "B/user(full)", "B/user max", "recall@5",
              "maxcos err", "AUC media")
    print("{:<7} {:>9} {:>9} {:>12} {:>13} {:>11} {:>9} {:>10} {:>10}".format(*header))
    for rule, r in report["rules"].items():
        auc_media = r["auc_with_media"]["auc"] if "auc_with_media" in r else float("nan")
        print("{:<7} {:>9.0f} {:>8.1f}x {:>11.1f}x {:>13.0f} {:>11d} {:>9.3f} {:>10.4f} {:>10.4f}".format(
            rule, r["events_per_s"], r["compression"], r["compression_full_users"], r["bytes_per_full_user_mean"] or 0,
            r["bytes_per_user_max"], r["recall_at_5[all]"], r["max_cos_abs_err"], auc_media))
        print(f"        full users: {r['users_full']}/{r['users']}, compression vs allocated arrays "
              f"{r['compression_vs_allocated_full_users']:.1f}x; live rows by slots in use: "
              f"{r['live_rows_by_slots_in_use']}")
        buckets = {k: round(v, 3) for k, v in r.items() if k.startswith(("recall_at_5[w", "users["))}
        print(f"        recall by history: {buckets}")
        comp = {k: (v["users"], round(v["compression_pooled"], 1), round(v["compression_median"], 1),
                    int(v["bytes_median"])) for k, v in r["compression_by_history"].items()}
        print(f"        (users, pooled compression, median compression, median bytes) by frames seen: {comp}")
        print(f"        events/s with the log's small batches (media between two requests): "
              f"{r['events_per_s_prequential']:.0f}; features: {r['features_us_per_request']:.0f} us/request "
              f"({cfg['sim']['candidates_per_request']} candidates); bytes bound per user: "
              f"{r['nbytes_bound_per_user']}")
        heavy = r["bytes_curve"][-1]["users"][0]["user"] if r["bytes_curve"] else None
        line = [(c["users"][0]["frames_seen"], c["users"][0]["stored_vectors"], c["users"][0]["nbytes"])
                for c in r["bytes_curve"] if c["users"] and c["users"][0]["user"] == heavy]
        print(f"        heaviest user {heavy} (frames seen, stored vectors, bytes): {line}")


if __name__ == "__main__":
    main()
