"""Per-user short-to-long media memory (IXC2.5-OmniLive, SCM, MemOS, Titans), bounded.

:class:`MediaMemory` holds every user's :class:`UserMediaMemory` (keyed by ``user_id``) and
the item content table, and is the one entry point of the media memory:

* write: :meth:`MediaMemory.on_batch` -- frames go to the user's short-term buffers
  (:mod:`reloop.state.media.short_term`: open clips, segmentation by novelty / length); closed clips
  are compressed and written to the bounded long-term store (:mod:`reloop.state.media.store`: key
  plus slots only where needed, merge / Titans update rule, MemOS metadata, lifecycle);
* read: :meth:`MediaMemory.features` -- candidates' content embeddings (learned from media
  events carrying ``item_id``, :class:`ItemContent`) are matched against the user's clip
  keys, finest vectors and open clips (:mod:`reloop.state.media.retrieval`); see
  :data:`FEATURE_NAMES`;
* persistence: :meth:`MediaMemory.snapshot` / :meth:`MediaMemory.restore`
  (:mod:`reloop.state.media.snapshot`, plain arrays).

Configuration and codes: :mod:`reloop.state.media.config`. Memory per user is bounded: fixed-size
arrays plus capped id lists (:meth:`UserMediaMemory.nbytes_bound`).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from reloop.state.media.reference import unit_rows
from reloop.state.media.retrieval import media_features, serve_features
from reloop.state.media.config import (ACTIVATED, ARCHIVED, EXPIRED, FEATURE_NAMES, FREE, MERGED, MODALITIES,
                                SNAPSHOT_FORMAT, STATES, MediaMemoryConfig)
from reloop.state.media.items import ItemContent
from reloop.state.media.snapshot import restore_memory, snapshot_memory
from reloop.state.media.store import UserMediaMemory
from reloop.state.snapshots import check_config
from reloop.streams.events import MediaEvent

__all__ = ["ACTIVATED", "ARCHIVED", "EXPIRED", "FEATURE_NAMES", "FREE", "ItemContent", "MERGED", "MODALITIES",
           "MediaMemory", "MediaMemoryConfig", "SNAPSHOT_FORMAT", "STATES", "UserMediaMemory"]

log = logging.getLogger("reloop.media")


def _finite_or_none(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MediaMemory:
    """All users' media memories (``user_id -> UserMediaMemory``) plus the item content table.

    Not thread-safe: one writer, reads between writes. Only event time is used.
    """

    def __init__(self, config: MediaMemoryConfig) -> None:
        self.config = config
        self.users: dict[str, UserMediaMemory] = {}
        self.items = ItemContent(config.dim, config.item_capacity)
        self.rejected = 0  # events dropped for a wrong embedding length

    def on_batch(self, events: Sequence[MediaEvent]) -> int:
        """Ingest media events (any users, event order within a user); returns events accepted.

        Frames are normalised, items with an ``item_id`` update the content table, each
        user's frames go through segmentation / compression / long-term writes in order.
        Events whose embedding length is not ``dim`` are dropped with a warning.
        """
        dim = self.config.dim
        good = [e for e in events if len(e.embedding) == dim]
        if len(good) != len(events):
            self.rejected += len(events) - len(good)
            log.warning("media_events_rejected", extra={"count": len(events) - len(good), "dim": dim})
        if not good:
            return 0
        frames = unit_rows(np.array([e.embedding for e in good], dtype=np.float32).reshape(len(good), dim))
        ts = np.fromiter((e.ts for e in good), np.float64, len(good))
        modality = np.fromiter((e.modality == "audio" for e in good), np.int64, len(good))
        groups: dict[str, list[int]] = {}
        with_item: list[int] = []
        for i, e in enumerate(good):
            groups.setdefault(e.user_id, []).append(i)
            if e.item_id is not None:
                with_item.append(i)
        if with_item:
            self.items.update([good[i].item_id for i in with_item], frames[with_item],  # type: ignore[misc]
                              ts[with_item], [good[i].segment_id for i in with_item])
        closed = 0
        for user_id, idx in groups.items():
            mem = self.users.get(user_id)
            if mem is None:
                mem = self.users[user_id] = UserMediaMemory(self.config)
            sel = np.array(idx, dtype=np.int64)
            closed += mem.ingest(modality[sel], frames[sel], ts[sel], [good[i].segment_id for i in idx],
                                 [good[i].item_id for i in idx])
        log.debug("media_batch", extra={"events": len(good), "users": len(groups), "clips_closed": closed})
        return len(good)

    def sweep(self, now: float) -> int:
        """Lifecycle of every user at event time ``now`` (e.g. the watermark, on a timer).

        Also forgets open clips idle for ``expire_after_s`` and drops users left empty;
        returns how many users were dropped. (Ingest ages only the rows of the users in its
        batch, before each write and at the batch's last event time, which keeps its results
        independent of batch cuts; open clips are left to this timer for the same reason.)
        """
        dropped = []
        for user_id, mem in self.users.items():
            mem.sweep(now)
            mem.drop_idle_open_clips(now)
            if mem.is_empty():
                dropped.append(user_id)
        for user_id in dropped:
            del self.users[user_id]
        return len(dropped)

    # ------------------------------------------------------------------ features

    def features(self, user_id: str, candidates: np.ndarray, now: float, *, touch: bool = True) -> np.ndarray:
        """Media features of candidate content embeddings for one user.

        Args:
            candidates: ``(n, d)`` content embeddings (a zero row = unknown content).
            now: event time of the request, seconds.
            touch: count the retrieval (usage, last use; re-activates archived rows).

        Returns:
            ``(n, len(FEATURE_NAMES)) float32``: max cosine to the user's clip keys (an open
            clip counts, keyed by its mean frame), softmax(``tau``)-weighted cosine over the top ``k``,
            ``exp(-(now - last_ts) / recency_scale_s)`` of the best match, max cosine to any
            slot (or open frame), max cosine to the flash rows (keys, slots) and open frames,
            ``log1p(frames)`` of the best match, and ``media_known`` (1 where the user has a
            memory and the candidate a non-zero embedding). All zeros where ``media_known`` is 0.
        """
        cfg = self.config
        q = np.asarray(candidates, np.float32).reshape(-1, cfg.dim)
        mem = self.users.get(user_id)
        if mem is None:
            return np.zeros((q.shape[0], len(FEATURE_NAMES)), dtype=np.float32)
        return self.serve(mem, q, now, touch)

    def serve(self, mem: UserMediaMemory, q: np.ndarray, now: float, touch: bool = True) -> np.ndarray:
        """:meth:`features` of ``(n, d) float32`` content embeddings ``q`` against one user's
        memory ``mem``, in one kernel call (:func:`reloop.state.media.retrieval.serve_features`:
        live rows, retrieval and the usage touch together)."""
        cfg = self.config
        return serve_features(q, mem.keys, mem.slots, mem.n_slots, mem.state, mem.write_seq, cfg.flash_clips,
                              mem.last_ts, mem.counts, mem.open_frames, mem.open_len, mem.open_ts,
                              cfg.retrieval_top_k, cfg.retrieval_tau, now, cfg.recency_scale_s, mem.usage,
                              mem.used_ts, touch)

    def _retrieve(self, mem: UserMediaMemory, q: np.ndarray, k: int, now: float) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        return media_features(q, mem.keys, mem.slots, mem.n_slots, mem.live(), mem.write_seq, cfg.flash_clips,
                              mem.last_ts, mem.counts, mem.open_frames, mem.open_len, mem.open_ts, k,
                              cfg.retrieval_tau, now, cfg.recency_scale_s)

    def features_for_items(self, user_id: str, item_ids: Sequence[str], now: float, *,
                           touch: bool = True) -> np.ndarray:
        """:meth:`features` of items by id (content from :attr:`items`; unknown -> zero row)."""
        emb, _known = self.items.lookup(item_ids)
        return self.features(user_id, emb, now, touch=touch)

    def retrieve_items(self, user_id: str, queries: np.ndarray, k: int | None = None) -> list[list[str]]:
        """Item ids remembered by the top-``k`` units (clips, open clips) per query; no side effects."""
        q = np.asarray(queries, np.float32).reshape(-1, self.config.dim)
        mem = self.users.get(user_id)
        if mem is None:
            return [[] for _ in range(q.shape[0])]
        _, hits = self._retrieve(mem, q, k or self.config.retrieval_top_k, now=0.0)
        units = mem.items + [[i for i in mem.open_items[m] if i is not None] for m in (0, 1)]
        return [list(dict.fromkeys(i for u in row if u >= 0 for i in units[u])) for row in hits.tolist()]

    # ------------------------------------------------------------------ introspection

    def nbytes_user(self, user_id: str) -> int:
        """Bytes held for one user (0 if unknown); bounded by the configuration."""
        mem = self.users.get(user_id)
        return 0 if mem is None else mem.nbytes()

    def describe(self, user_id: str) -> dict:
        """Human-readable state of one user's memory (for ``reloop memory show USER``)."""
        mem = self.users.get(user_id)
        if mem is None:
            return {"user_id": user_id, "known": False}
        live = mem.live()
        flash = mem.flash(live)
        clips = [{
            "row": r, "state": STATES[mem.state[r]], "modality": MODALITIES[mem.modality[r]],
            "flash": bool(flash[r]), "frames": int(mem.counts[r]), "slots": int(mem.n_slots[r]),
            "version": int(mem.version[r]),
            "usage": int(mem.usage[r]), "strength": round(float(mem.strength[r]), 4),
            "first_ts": float(mem.first_ts[r]), "last_ts": float(mem.last_ts[r]), "used_ts": float(mem.used_ts[r]),
            "sources": list(mem.sources[r]), "items": list(mem.items[r]),
        } for r in np.flatnonzero(mem.state != FREE).tolist()]
        return {
            "user_id": user_id, "known": True, "capacity_clips": self.config.capacity_clips,
            "live_clips": int(live.sum()), "clips": clips,
            "open": {MODALITIES[m]: {"frames": int(mem.open_len[m]), "sources": list(mem.open_sources[m])}
                     for m in (0, 1)},
            "stats": {name: _finite_or_none(getattr(mem, name)) for name in UserMediaMemory.SCALARS},
            "stored_vectors": mem.stored_vectors(), "nbytes": mem.nbytes(), "update_rule": self.config.update_rule,
        }

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        """Named numpy arrays, no objects (``np.savez`` / ``np.load(allow_pickle=False)`` safe).

        Layout: :mod:`reloop.state.media.snapshot`.
        """
        return snapshot_memory(self)

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray], config: MediaMemoryConfig | None = None) -> MediaMemory:
        """Rebuild a memory from :meth:`snapshot` output (ValueError if malformed).

        ``config``: the configuration the caller expects; a snapshot taken under another is
        refused (ValueError naming the fields, :func:`reloop.state.snapshots.check_config`).
        """
        memory = restore_memory(cls, snap)
        check_config(config, memory.config, "media-memory")
        log.info("media_memory_restored", extra={"users": len(memory.users), "items": len(memory.items)})
        return memory
