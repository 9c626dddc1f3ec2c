"""Per-user short-to-long media memory (IXC2.5-OmniLive, SCM, MemOS, Titans), bounded.

Short-term: per user and modality, the frames (unit segment embeddings) of the *open clip*.
A clip closes, once it has ``min_clip_frames``, on novelty (consecutive cosine ``<=
novelty_cos``) and always at ``max_clip_frames`` (see :func:`state._media_kernels.
segment_stream`). A closed clip is compressed to a key (normalised mean frame) and
``slots_per_clip`` slot vectors (spherical k-means seeded by temporal chunks).

Long-term: ``capacity_clips`` clip rows per user, both modalities together (tagged). Every
row is a MemOS-style memory unit: provenance (the last ``provenance_cap`` source segment ids
and distinct item ids), version (+1 per write), lifecycle state, usage count, first / last
write and last use times (event time). Write policy (``update_rule``):

* ``merge``: the clip is inserted; if no row is free, first the most similar pair of
  non-flash rows (by key cosine) is merged, weighted by frame counts (counts added,
  provenance concatenated, version ``max + 1``, state ``merged``). The ``flash_clips`` most
  recently written rows (SCM's flash memory) are never merged.
* ``titans``: surprise ``s = 1 - max cos(key, keys)`` drives a momentum ``S <- eta S +
  theta s`` and a write strength ``w = min(1, S)``; every write first decays all row
  strengths by ``1 - alpha`` (the forgetting gate). A clip whose nearest row has cosine
  ``>= titans_absorb_cos`` is absorbed into it (vectors move by ``w`` towards the clip,
  strength ``+= w``); otherwise it is inserted with strength 1, and a full memory merges
  its most similar non-flash pair weighted by *strength* (recent and surprising content
  weighs more) instead of counts.

Lifecycle (event time, per user; checked before each write and at the end of each batch,
so results do not depend on batch cuts): ``activated`` on insert, ``merged`` after a merge
or absorb, ``archived`` when neither written nor retrieved for ``archive_after_s``
(still retrievable by relevance; a retrieval re-activates it), ``expired`` after
``expire_after_s`` (no longer retrievable; its row is reused by the next insert).

Serving (:meth:`MediaMemory.features`): candidates' content embeddings (learned from media
events carrying ``item_id``, :class:`ItemContent`) are matched against the user's clip keys
and open clips; see :data:`FEATURE_NAMES`. Memory per user is bounded: fixed-size arrays
plus capped id lists (:meth:`UserMediaMemory.nbytes_bound`).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Literal, Sequence

import msgspec
import numpy as np

from state._media_kernels import (ItemContent, compress_clip, media_features, merge_vectors, most_similar_pair,
                                  pack_ids, segment_stream, union_recent, unit_rows, unpack_ids)
from streams.events import MediaEvent

__all__ = ["FEATURE_NAMES", "ItemContent", "MediaMemory", "MediaMemoryConfig", "UserMediaMemory"]

log = logging.getLogger("reloop.media")

SNAPSHOT_FORMAT = 1
MODALITIES: tuple[str, ...] = ("video", "audio", "mixed")  # modality codes 0, 1, 2 (merged rows)
STATES: tuple[str, ...] = ("free", "activated", "merged", "archived", "expired")  # state codes
FREE, ACTIVATED, MERGED, ARCHIVED, EXPIRED = range(5)
#: Columns of :meth:`MediaMemory.features`, in order.
FEATURE_NAMES: tuple[str, ...] = ("media_max_cos", "media_soft_cos", "media_recency", "media_slot_max_cos",
                                  "media_flash_max_cos", "media_log_count", "media_known")


def _finite_or_none(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MediaMemoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of a :class:`MediaMemory` (validated on construction and decode).

    Attributes:
        dim: segment embedding width ``d``; must equal ``Limits.media_dim`` (default 32).
        min_clip_frames: a clip never closes on novelty before it has this many frames.
        max_clip_frames: a clip always closes when it has this many frames.
        novelty_cos: consecutive-frame cosine at or below which an open clip closes.
        slots_per_clip: slot vectors ``S`` kept per clip besides its key.
        kmeans_iters: Lloyd rounds of the slot clustering.
        capacity_clips: long-term rows ``C`` per user (the memory bound).
        flash_clips: most recently written rows that are never merged (SCM flash memory).
        retrieval_top_k: clips pooled by ``media_soft_cos``; also the ones whose usage counts.
        retrieval_tau: softmax temperature over cosines (dimensionless, > 0).
        recency_scale_s: ``media_recency = exp(-(now - last_ts) / recency_scale_s)``, seconds.
        archive_after_s: event seconds without a write or retrieval before a row is archived.
        expire_after_s: event seconds without a write or retrieval before a row expires.
        provenance_cap: most source segment ids (and distinct item ids) kept per row.
        item_capacity: most items in the :class:`ItemContent` table (LRU beyond).
        update_rule: ``merge`` (insert + count-weighted merges) or ``titans`` (surprise-gated).
        titans_momentum: ``eta``, carry-over of past surprise in ``S <- eta S + theta s``.
        titans_lr: ``theta``, weight of the momentary surprise ``s = 1 - max cos``.
        titans_forget: ``alpha``, strength decay per write (the forgetting gate), in [0, 1).
        titans_absorb_cos: a clip this close (key cosine) to a row is absorbed into it.
    """

    dim: int = 32
    min_clip_frames: int = 3
    max_clip_frames: int = 16
    novelty_cos: float = 0.9
    slots_per_clip: int = 2
    kmeans_iters: int = 4
    capacity_clips: int = 32
    flash_clips: int = 4
    retrieval_top_k: int = 4
    retrieval_tau: float = 0.1
    recency_scale_s: float = 3600.0
    archive_after_s: float = 7 * 86400.0
    expire_after_s: float = 90 * 86400.0
    provenance_cap: int = 16
    item_capacity: int = 100_000
    update_rule: Literal["merge", "titans"] = "merge"
    titans_momentum: float = 0.5
    titans_lr: float = 1.0
    titans_forget: float = 0.02
    titans_absorb_cos: float = 0.9

    def __post_init__(self) -> None:
        checks = [
            (self.dim >= 1, "dim must be >= 1"),
            (1 <= self.min_clip_frames <= self.max_clip_frames, "need 1 <= min_clip_frames <= max_clip_frames"),
            (-1.0 <= self.novelty_cos <= 1.0, "novelty_cos must be in [-1, 1]"),
            (self.slots_per_clip >= 1 and self.kmeans_iters >= 0, "slots_per_clip >= 1, kmeans_iters >= 0"),
            (self.flash_clips >= 0 and self.capacity_clips >= self.flash_clips + 2,
             "need capacity_clips >= flash_clips + 2 (a mergeable pair must exist)"),
            (self.retrieval_top_k >= 1 and self.retrieval_tau > 0.0, "retrieval_top_k >= 1, retrieval_tau > 0"),
            (self.recency_scale_s > 0.0, "recency_scale_s must be > 0"),
            (0.0 < self.archive_after_s <= self.expire_after_s, "need 0 < archive_after_s <= expire_after_s"),
            (self.provenance_cap >= 1 and self.item_capacity >= 1, "provenance_cap, item_capacity >= 1"),
            (self.titans_momentum >= 0.0 and self.titans_lr >= 0.0, "titans_momentum, titans_lr >= 0"),
            (0.0 <= self.titans_forget < 1.0, "titans_forget must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class UserMediaMemory:
    """One user's memory: two short-term buffers (video, audio) and ``C`` long-term rows.

    Arrays (``C = capacity_clips``, ``S = slots_per_clip``, ``F = max_clip_frames``):
    ``keys (C, d)``, ``slots (C, S, d)``, ``strength (C,)`` float32; ``counts`` (frames
    integrated), ``usage`` (retrievals), ``write_seq`` (order of last write) ``(C,) int64``;
    ``first_ts``, ``last_ts`` (writes), ``used_ts`` (retrievals) ``(C,) float64`` event
    seconds; ``modality``, ``state``, ``version`` ``(C,) int32``; open clips
    ``open_frames (2, F, d) float32``, ``open_ts (2, F) float64``, ``open_len (2,) int64``.
    Lists: ``sources``/``items`` per row, ``open_sources``/``open_items`` per modality.
    """

    ARRAYS = ("keys", "slots", "strength", "counts", "usage", "write_seq", "first_ts", "last_ts", "used_ts",
              "modality", "state", "version", "open_frames", "open_ts", "open_len")
    LISTS = ("sources", "items", "open_sources", "open_items")
    SCALARS = ("seq", "surprise", "next_check_ts", "frames_seen", "clips_closed", "merges", "absorbed", "expired")

    def __init__(self, cfg: MediaMemoryConfig) -> None:
        self.cfg = cfg
        C, S, F, d = cfg.capacity_clips, cfg.slots_per_clip, cfg.max_clip_frames, cfg.dim
        self.keys = np.zeros((C, d), np.float32)
        self.slots = np.zeros((C, S, d), np.float32)
        self.strength = np.zeros(C, np.float32)
        self.counts, self.usage, self.write_seq = (np.zeros(C, np.int64) for _ in range(3))
        self.first_ts, self.last_ts, self.used_ts = (np.zeros(C, np.float64) for _ in range(3))
        self.modality, self.state, self.version = (np.zeros(C, np.int32) for _ in range(3))
        self.open_frames = np.zeros((2, F, d), np.float32)
        self.open_ts = np.zeros((2, F), np.float64)
        self.open_len = np.zeros(2, np.int64)
        self.sources: list[list[str]] = [[] for _ in range(C)]
        self.items: list[list[str]] = [[] for _ in range(C)]
        self.open_sources: list[list[str]] = [[], []]
        self.open_items: list[list[str | None]] = [[], []]
        self.seq = 0  # writes so far (source of write_seq)
        self.surprise = 0.0  # Titans surprise momentum S
        self.next_check_ts = math.inf  # no row can archive before this event time
        self.frames_seen = self.clips_closed = self.merges = self.absorbed = self.expired = 0

    # ------------------------------------------------------------------ views

    def live(self) -> np.ndarray:
        """``(C,) bool``: rows that hold a retrievable memory (activated, merged, archived)."""
        return (self.state >= ACTIVATED) & (self.state <= ARCHIVED)

    def flash(self, live: np.ndarray) -> np.ndarray:
        """``(C,) bool``: the ``flash_clips`` live rows written most recently."""
        out = np.zeros_like(live)
        rows = np.flatnonzero(live)
        out[rows[np.argsort(-self.write_seq[rows], kind="stable")[: self.cfg.flash_clips]]] = True
        return out

    def is_empty(self) -> bool:
        return not self.live().any() and not self.open_len.any()

    # ------------------------------------------------------------------ write path

    def ingest(self, modality: np.ndarray, frames: np.ndarray, ts: np.ndarray, sources: list[str],
               items: list[str | None]) -> int:
        """Append one user's frames (in event order) and write the clips they close.

        Args:
            modality: ``(g,) int`` codes (0 video, 1 audio); frames: ``(g, d) float32`` unit
                rows; ts: ``(g,) float64`` event seconds; sources/items: ``g`` ids.

        Returns:
            Clips closed (written to long-term memory).
        """
        cfg = self.cfg
        closes: list[tuple[int, int, np.ndarray, np.ndarray, list[str], list[str | None]]] = []
        n_audio = int(modality.sum())
        if n_audio in (0, len(modality)):  # one modality: no split needed
            splits = [(int(n_audio > 0), np.arange(len(modality)), frames, ts, sources, items)]
        else:
            splits = []
            for mod in (0, 1):
                sel = np.flatnonzero(modality == mod)
                picked = sel.tolist()
                splits.append((mod, sel, frames[sel], ts[sel], [sources[i] for i in picked],
                               [items[i] for i in picked]))
        for mod, sel, mod_frames, mod_ts, mod_src, mod_items in splits:
            n_open = int(self.open_len[mod])
            seq_frames = np.concatenate((self.open_frames[mod, :n_open], mod_frames))
            seq_ts = np.concatenate((self.open_ts[mod, :n_open], mod_ts))
            seq_src = self.open_sources[mod] + mod_src
            seq_items = self.open_items[mod] + mod_items
            start = 0
            for end, trigger in segment_stream(seq_frames, n_open, cfg.min_clip_frames, cfg.max_clip_frames,
                                               cfg.novelty_cos).tolist():
                closes.append((int(sel[trigger - n_open]), mod, seq_frames[start:end], seq_ts[start:end],
                               seq_src[start:end], seq_items[start:end]))
                start = end
            rest = seq_frames.shape[0] - start
            self.open_frames[mod, :rest] = seq_frames[start:]
            self.open_frames[mod, rest:n_open] = 0.0  # canonical state, whatever the batch cuts
            self.open_ts[mod, :rest] = seq_ts[start:]
            self.open_ts[mod, rest:n_open] = 0.0
            self.open_len[mod] = rest
            self.open_sources[mod], self.open_items[mod] = seq_src[start:], seq_items[start:]
        if len(splits) > 1:
            closes.sort(key=lambda c: c[0])  # write in the order the closing frames arrived
        for pos, mod, clip, clip_ts, clip_src, clip_items in closes:
            key, slots = compress_clip(clip, cfg.slots_per_clip, cfg.kmeans_iters)
            self.write(key, slots, clip.shape[0], float(clip_ts[0]), float(clip_ts[-1]), mod, clip_src,
                       [i for i in clip_items if i is not None], now=float(ts[pos]))
        self.frames_seen += frames.shape[0]
        self.clips_closed += len(closes)
        self.sweep(float(ts.max()))
        return len(closes)

    def write(self, key: np.ndarray, slots: np.ndarray, count: int, t0: float, t1: float, mod: int,
              sources: list[str], items: list[str], now: float) -> int:
        """Write one compressed clip by the configured rule; returns the row it went to."""
        cfg = self.cfg
        self.sweep(now)
        self.seq += 1
        if cfg.update_rule == "titans":
            live = np.flatnonzero(self.live())
            sims = self.keys[live] @ key if live.size else np.zeros(0, np.float32)
            best = int(np.argmax(sims)) if live.size else -1
            best_cos = float(sims[best]) if live.size else -1.0
            self.surprise = cfg.titans_momentum * self.surprise + cfg.titans_lr * min(1.0, max(0.0, 1.0 - best_cos))
            w = min(1.0, self.surprise)
            self.strength[live] *= 1.0 - cfg.titans_forget
            if live.size and best_cos >= cfg.titans_absorb_cos:
                row = int(live[best])
                self.keys[row], self.slots[row] = merge_vectors(self.keys[row], self.slots[row], 1.0 - w, key, slots, w)
                self._combine(row, count, t0, t1, mod, sources, items, 0, t1, self.seq)
                self.strength[row] += w
                self.absorbed += 1
                return row
        row = self._free_row()
        self.keys[row], self.slots[row], self.strength[row] = key, slots, 1.0
        self.counts[row], self.usage[row], self.write_seq[row] = count, 0, self.seq
        self.first_ts[row], self.last_ts[row], self.used_ts[row] = t0, t1, t1
        self.modality[row], self.state[row], self.version[row] = mod, ACTIVATED, 1
        self.sources[row] = sources[-cfg.provenance_cap:]
        self.items[row] = list(dict.fromkeys(items))[-cfg.provenance_cap:]
        self.next_check_ts = min(self.next_check_ts, t1 + cfg.archive_after_s)
        return row

    def _combine(self, row: int, count: int, t0: float, t1: float, mod: int, sources: list[str],
                 items: list[str], usage: int, used_ts: float, seq: int) -> None:
        """Fold another memory unit's metadata into ``row`` (vectors already merged)."""
        cap = self.cfg.provenance_cap
        self.counts[row] += count
        self.usage[row] += usage
        self.first_ts[row] = min(self.first_ts[row], t0)
        self.last_ts[row] = max(self.last_ts[row], t1)
        self.used_ts[row] = max(self.used_ts[row], used_ts)
        self.modality[row] = self.modality[row] if self.modality[row] == mod else 2
        self.state[row], self.version[row] = MERGED, self.version[row] + 1
        self.write_seq[row] = max(int(self.write_seq[row]), seq)
        self.sources[row] = union_recent(self.sources[row], sources, cap, distinct=False)
        self.items[row] = union_recent(self.items[row], items, cap, distinct=True)

    def _free_row(self) -> int:
        """A free or expired row; when none, merges the most similar non-flash pair first."""
        free = np.flatnonzero((self.state == FREE) | (self.state == EXPIRED))
        if free.size:
            return int(free[0])
        live = self.live()
        a, b, _ = most_similar_pair(self.keys, live & ~self.flash(live))
        weights = self.strength if self.cfg.update_rule == "titans" else self.counts
        wa, wb = float(weights[a]), float(weights[b])
        self.keys[a], self.slots[a] = merge_vectors(self.keys[a], self.slots[a], wa, self.keys[b], self.slots[b], wb)
        self.version[a] = max(self.version[a], self.version[b])  # _combine adds 1
        self._combine(a, int(self.counts[b]), float(self.first_ts[b]), float(self.last_ts[b]), int(self.modality[b]),
                      self.sources[b], self.items[b], int(self.usage[b]), float(self.used_ts[b]), int(self.write_seq[b]))
        if self.cfg.update_rule == "titans":
            self.strength[a] = wa + wb
        self.state[b], self.sources[b], self.items[b] = FREE, [], []
        self.merges += 1
        return b

    def sweep(self, now: float) -> None:
        """Apply the lifecycle by age at event time ``now`` (seconds); see the module doc."""
        cfg = self.cfg
        if now < self.next_check_ts:
            return
        live = self.live()
        age = now - np.maximum(self.last_ts, self.used_ts)
        gone = live & (age >= cfg.expire_after_s)
        for row in np.flatnonzero(gone).tolist():
            self.state[row], self.sources[row], self.items[row] = EXPIRED, [], []
            self.expired += 1
        cold = live & ~gone & (self.state != ARCHIVED) & (age >= cfg.archive_after_s)
        self.state[cold] = ARCHIVED
        live = self.live()
        warm = live & (self.state != ARCHIVED)
        touch = np.maximum(self.last_ts, self.used_ts)
        self.next_check_ts = min(float(touch[warm].min()) + cfg.archive_after_s if warm.any() else math.inf,
                                 float(touch[live].min()) + cfg.expire_after_s if live.any() else math.inf)

    def drop_idle_open_clips(self, now: float) -> None:
        """Forget open clips whose last frame is ``expire_after_s`` older than ``now``."""
        for mod in (0, 1):
            n = int(self.open_len[mod])
            if n and now - self.open_ts[mod, n - 1] >= self.cfg.expire_after_s:
                self.open_frames[mod, :n], self.open_ts[mod, :n] = 0.0, 0.0
                self.open_len[mod], self.open_sources[mod], self.open_items[mod] = 0, [], []

    # ------------------------------------------------------------------ size

    @classmethod
    def nbytes_bound(cls, cfg: MediaMemoryConfig, id_chars: int = 64) -> int:
        """Upper bound of :meth:`nbytes` when every id has at most ``id_chars`` ASCII characters."""
        arrays = sum(getattr(cls(cfg), name).nbytes for name in cls.ARRAYS) + sys.getsizeof(cls(cfg))
        per_id = sys.getsizeof("x" * id_chars)
        row_lists = 2 * cfg.capacity_clips * (sys.getsizeof([None] * cfg.provenance_cap) + cfg.provenance_cap * per_id)
        open_lists = 4 * (sys.getsizeof([None] * cfg.max_clip_frames) + cfg.max_clip_frames * per_id)
        return int(arrays + row_lists + open_lists)

    def nbytes(self) -> int:
        """Bytes held: arrays plus provenance lists and their strings."""
        total = sum(getattr(self, name).nbytes for name in self.ARRAYS) + sys.getsizeof(self)
        for name in self.LISTS:
            for ids in getattr(self, name):
                total += sys.getsizeof(ids) + sum(sys.getsizeof(i) for i in ids if i is not None)
        return int(total)


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
            self.items.update([good[i].item_id for i in with_item], frames[with_item])  # type: ignore[misc]
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
        out, hits = self._retrieve(mem, q, cfg.retrieval_top_k, now)
        if touch:
            hit = hits[(hits >= 0) & (hits < cfg.capacity_clips)]  # long-term rows (not open clips)
            np.add.at(mem.usage, hit, 1)
            np.maximum.at(mem.used_ts, hit, now)
            mem.state[hit[mem.state[hit] == ARCHIVED]] = ACTIVATED
        return out.astype(np.float32)

    def _retrieve(self, mem: UserMediaMemory, q: np.ndarray, k: int, now: float) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        return media_features(q, mem.keys, mem.slots, mem.live(), mem.write_seq, cfg.flash_clips, mem.last_ts,
                              mem.counts, mem.open_frames, mem.open_len, mem.open_ts, k, cfg.retrieval_tau, now,
                              cfg.recency_scale_s)

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
            "flash": bool(flash[r]), "frames": int(mem.counts[r]), "version": int(mem.version[r]),
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
            "nbytes": mem.nbytes(), "update_rule": self.config.update_rule,
        }

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, np.ndarray]:
        """Named numpy arrays, no objects (``np.savez`` / ``np.load(allow_pickle=False)`` safe).

        Config JSON and ids as str arrays; per-user arrays and counters stacked on a leading
        user axis (order of ``users``); id lists packed as ``<name>_ids`` (flat) plus
        ``<name>_lens`` ``(U, rows) int64``; the item table in LRU order.
        """
        mems = list(self.users.values())
        stack = mems or [UserMediaMemory(self.config)]  # keeps shapes and dtypes when empty
        snap = {"format": np.array(SNAPSHOT_FORMAT), "config": np.array(msgspec.json.encode(self.config).decode()),
                "users": np.array(list(self.users), dtype=str), "rejected": np.array(self.rejected),
                **self.items.snapshot()}
        for name in UserMediaMemory.ARRAYS:
            snap[name] = np.stack([getattr(m, name) for m in stack])[: len(mems)]
        for name in UserMediaMemory.LISTS:
            snap[f"{name}_ids"], snap[f"{name}_lens"] = pack_ids([getattr(m, name) for m in stack], len(mems))
        for name in UserMediaMemory.SCALARS:
            snap[name] = np.array([getattr(m, name) for m in mems], dtype=type(getattr(stack[0], name)))
        return snap

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> MediaMemory:
        """Rebuild a memory from :meth:`snapshot` output (ValueError if malformed)."""
        try:
            if int(snap["format"]) != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported media-memory snapshot format {int(snap['format'])}")
            config = msgspec.json.decode(str(snap["config"][()]), type=MediaMemoryConfig)
            memory = cls(config)
            memory.rejected = int(snap["rejected"])
            memory.items.restore(snap)
            users = [str(u) for u in snap["users"]]
            lists = {name: unpack_ids(snap[f"{name}_ids"], snap[f"{name}_lens"]) for name in UserMediaMemory.LISTS}
            for u, user_id in enumerate(users):
                mem = UserMediaMemory(config)
                for name in UserMediaMemory.ARRAYS:
                    arr, current = np.asarray(snap[name][u]), getattr(mem, name)
                    if arr.shape != current.shape:
                        raise ValueError(f"{name} of {user_id!r} has shape {arr.shape}, want {current.shape}")
                    setattr(mem, name, arr.astype(current.dtype, copy=True))
                for name in UserMediaMemory.LISTS:
                    setattr(mem, name, lists[name][u])
                for name in UserMediaMemory.SCALARS:
                    setattr(mem, name, type(getattr(mem, name))(snap[name][u]))
                memory.users[user_id] = mem
        except (KeyError, IndexError, msgspec.ValidationError) as exc:
            raise ValueError(f"malformed media-memory snapshot: {exc!r}") from exc
        log.info("media_memory_restored", extra={"users": len(memory.users), "items": len(memory.items)})
        return memory
