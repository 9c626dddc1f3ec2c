"""Long-term media memory of one user: a bounded store of compressed clips (MemOS units).

``capacity_clips`` rows per user, both modalities together (tagged). A closed clip (from
:mod:`reloop.state.media.short_term`) is compressed to a key (normalised mean frame) plus, only
where the key does not cover its frames (some frame below ``slot_min_cos``), up to
``slots_per_clip`` slot vectors (spherical k-means). Every row is a MemOS-style memory unit:
provenance (the last ``provenance_cap`` source segment ids and distinct item ids), version
(+1 per write), lifecycle state, usage count, first / last write and last use times (event
time). Write policy (``update_rule``):

* ``merge``: the clip is inserted; if no row is free, first the most similar pair of
  non-flash rows (by key cosine) is merged, weighted by frame counts (counts added,
  provenance concatenated, version ``max + 1``, state ``merged``; the two rows' finest
  vectors are kept side by side as slots while they fit, blended beyond, see
  :func:`reloop.state.media.kernels.merge_vectors`). The ``flash_clips`` most recently written
  rows (SCM's flash memory) are never merged.
* ``titans``: surprise ``s = 1 - max cos(key, keys)`` drives a momentum ``S <- eta S +
  theta s`` and a write strength ``w = min(1, S)``; every write first decays all row
  strengths by ``1 - alpha`` (the forgetting gate). A clip whose nearest row has cosine
  ``>= titans_absorb_cos`` is absorbed into it (vectors move by ``w`` towards the clip,
  strength ``+= w``); otherwise it is inserted with strength 1, and a full memory merges
  its most similar non-flash pair weighted by *strength* instead of counts.

Lifecycle (event time, per user; checked before each write and at the end of each batch,
so results do not depend on batch cuts): ``activated`` on insert, ``merged`` after a merge
or absorb, ``archived`` when neither written nor retrieved for ``archive_after_s`` (still
retrievable; a retrieval re-activates it), ``expired`` after ``expire_after_s`` (no longer
retrievable; its row is reused by the next insert).
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np

from reloop.state.media.kernels import compress_clip, merge_vectors, most_similar_pair
from reloop.state.media.config import ACTIVATED, ARCHIVED, EXPIRED, FREE, MERGED, MediaMemoryConfig
from reloop.state.media.short_term import ShortTermBuffers

__all__ = ["ROW_LISTS", "UserMediaMemory", "id_rows", "union_recent"]


def union_recent(old: Sequence[str], new: Sequence[str], cap: int, distinct: bool) -> list[str]:
    """``old + new`` (without repeats when ``distinct``; a repeat moves to the end), last ``cap``."""
    if distinct:
        seen = set(new)
        merged = [x for x in old if x not in seen] + list(dict.fromkeys(new))
    else:
        merged = [*old, *new]
    return merged[-cap:]


#: the per-row id lists (an empty row is ``()``); the open clips' lists stay lists
ROW_LISTS = ("sources", "items")


def id_rows(rows: Sequence[list[str]]) -> list[list[str] | tuple[()]]:
    """Per-row id lists as a memory holds them: an empty row as the shared ``()`` (the
    others are kept as they are, not copied).

    >>> id_rows([["a"], [], ["b", "c"]])
    [['a'], (), ['b', 'c']]
    """
    return [ids if ids else () for ids in rows]


class UserMediaMemory(ShortTermBuffers):
    """One user's memory: two short-term buffers (video, audio) and ``C`` long-term rows.

    Arrays (``C = capacity_clips``, ``S = slots_per_clip``, ``F = max_clip_frames``):
    ``keys (C, d)``, ``slots (C, S, d)``, ``strength (C,)`` float32; ``n_slots (C,) int32``
    (slots in use: 0 = the key alone); ``counts`` (frames integrated), ``usage``
    (retrievals), ``write_seq`` (order of last write) ``(C,) int64``; ``first_ts``,
    ``last_ts`` (writes), ``used_ts`` (retrievals) ``(C,) float64`` event seconds;
    ``modality``, ``state``, ``version`` ``(C,) int32``; the open clips of
    :class:`reloop.state.media.short_term.ShortTermBuffers`. Lists: ``sources``/``items`` per row
    (an empty row holds ``()``, see :func:`id_rows`).
    """

    ARRAYS = ("keys", "slots", "n_slots", "strength", "counts", "usage", "write_seq", "first_ts", "last_ts",
              "used_ts", "modality", "state", "version", "open_frames", "open_ts", "open_len")
    LISTS = ("sources", "items", "open_sources", "open_items")
    SCALARS = ("seq", "surprise", "next_check_ts", "frames_seen", "clips_closed", "merges", "absorbed", "expired")

    def __init__(self, cfg: MediaMemoryConfig) -> None:
        self.cfg = cfg
        C, S, d = cfg.capacity_clips, cfg.slots_per_clip, cfg.dim
        self.keys = np.zeros((C, d), np.float32)
        self.slots = np.zeros((C, S, d), np.float32)
        self.n_slots = np.zeros(C, np.int32)
        self.strength = np.zeros(C, np.float32)
        self.counts, self.usage, self.write_seq = (np.zeros(C, np.int64) for _ in range(3))
        self.first_ts, self.last_ts, self.used_ts = (np.zeros(C, np.float64) for _ in range(3))
        self.modality, self.state, self.version = (np.zeros(C, np.int32) for _ in range(3))
        self._init_short_term()
        # an empty row holds the shared empty tuple, not a list of its own: 2 * C fewer
        # GC-tracked containers per user (every full collection walks them all)
        self.sources: list[list[str] | tuple[()]] = [()] * C
        self.items: list[list[str] | tuple[()]] = [()] * C
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

    def stored_vectors(self) -> int:
        """Embedding vectors held: live keys, their slots in use, and open-clip frames."""
        live = self.live()
        return int(live.sum() + self.n_slots[live].sum() + self.open_len.sum())

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
        closes = self.close_clips(modality, frames, ts, sources, items)
        for pos, mod, clip, clip_ts, clip_src, clip_items in closes:
            key, slots, n = compress_clip(clip, cfg.slots_per_clip, cfg.kmeans_iters, cfg.slot_min_cos)
            self.write(key, slots, n, clip.shape[0], float(clip_ts[0]), float(clip_ts[-1]), mod, clip_src,
                       [i for i in clip_items if i is not None], now=float(ts[pos]))
        self.frames_seen += frames.shape[0]
        self.clips_closed += len(closes)
        self.sweep(float(ts.max()))
        return len(closes)

    def write(self, key: np.ndarray, slots: np.ndarray, n_slots: int, count: int, t0: float, t1: float, mod: int,
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
                self._merge_vectors_into(row, 1.0 - w, key, slots, n_slots, w)
                self._combine(row, count, t0, t1, mod, sources, items, 0, t1, self.seq)
                self.strength[row] += w
                self.absorbed += 1
                return row
        row = self._free_row()
        self.keys[row], self.slots[row], self.n_slots[row], self.strength[row] = key, slots, n_slots, 1.0
        self.counts[row], self.usage[row], self.write_seq[row] = count, 0, self.seq
        self.first_ts[row], self.last_ts[row], self.used_ts[row] = t0, t1, t1
        self.modality[row], self.state[row], self.version[row] = mod, ACTIVATED, 1
        self.sources[row] = sources[-cfg.provenance_cap:] or ()
        self.items[row] = list(dict.fromkeys(items))[-cfg.provenance_cap:] or ()
        self.next_check_ts = min(self.next_check_ts, t1 + cfg.archive_after_s)
        return row

    def _merge_vectors_into(self, row: int, w_row: float, key: np.ndarray, slots: np.ndarray, n_slots: int,
                            w: float) -> None:
        self.keys[row], self.slots[row], self.n_slots[row] = merge_vectors(
            self.keys[row], self.slots[row], int(self.n_slots[row]), w_row, key, slots, n_slots, w,
            self.cfg.slot_min_cos)

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
        self.sources[row] = union_recent(self.sources[row], sources, cap, distinct=False) or ()
        self.items[row] = union_recent(self.items[row], items, cap, distinct=True) or ()

    def _free_row(self) -> int:
        """A free or expired row; when none, merges the most similar non-flash pair first."""
        free = np.flatnonzero((self.state == FREE) | (self.state == EXPIRED))
        if free.size:
            return int(free[0])
        live = self.live()
        a, b, _ = most_similar_pair(self.keys, live & ~self.flash(live))
        weights = self.strength if self.cfg.update_rule == "titans" else self.counts
        wa, wb = float(weights[a]), float(weights[b])
        self._merge_vectors_into(a, wa, self.keys[b], self.slots[b], int(self.n_slots[b]), wb)
        self.version[a] = max(self.version[a], self.version[b])  # _combine adds 1
        self._combine(a, int(self.counts[b]), float(self.first_ts[b]), float(self.last_ts[b]), int(self.modality[b]),
                      self.sources[b], self.items[b], int(self.usage[b]), float(self.used_ts[b]),
                      int(self.write_seq[b]))
        if self.cfg.update_rule == "titans":
            self.strength[a] = wa + wb
        self.state[b], self.sources[b], self.items[b] = FREE, (), ()
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
            self.state[row], self.sources[row], self.items[row] = EXPIRED, (), ()
            self.expired += 1
        cold = live & ~gone & (self.state != ARCHIVED) & (age >= cfg.archive_after_s)
        self.state[cold] = ARCHIVED
        live = self.live()
        warm = live & (self.state != ARCHIVED)
        touch = np.maximum(self.last_ts, self.used_ts)
        self.next_check_ts = min(float(touch[warm].min()) + cfg.archive_after_s if warm.any() else math.inf,
                                 float(touch[live].min()) + cfg.expire_after_s if live.any() else math.inf)

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
