"""Media memory: configuration, codes of the per-row metadata, feature names.

One place for the constants every media module shares: :class:`MediaMemoryConfig` (the
``[media]`` settings section), the modality and lifecycle codes stored in the
``modality`` / ``state`` arrays of a user's memory (MemOS-style metadata), the column names
of the serving features, and the snapshot format number.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

__all__ = ["ACTIVATED", "ARCHIVED", "EXPIRED", "FEATURE_NAMES", "FREE", "MERGED", "MODALITIES",
           "MediaMemoryConfig", "SNAPSHOT_FORMAT", "STATES"]

#: Version of :meth:`reloop.state.media.memory.MediaMemory.snapshot`. Format 1 (every live row held
#: ``slots_per_clip`` slots, no ``n_slots`` array) is still read; see :mod:`reloop.state.media.snapshot`.
SNAPSHOT_FORMAT = 2
MODALITIES: tuple[str, ...] = ("video", "audio", "mixed")  # modality codes 0, 1, 2 (merged rows)
STATES: tuple[str, ...] = ("free", "activated", "merged", "archived", "expired")  # state codes
FREE, ACTIVATED, MERGED, ARCHIVED, EXPIRED = range(5)
#: Columns of :meth:`reloop.state.media.memory.MediaMemory.features`, in order.
FEATURE_NAMES: tuple[str, ...] = ("media_max_cos", "media_soft_cos", "media_recency", "media_slot_max_cos",
                                  "media_flash_max_cos", "media_log_count", "media_known")


class MediaMemoryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of a :class:`MediaMemory` (validated on construction and decode).

    Attributes:
        dim: segment embedding width ``d``; must equal ``Limits.media_dim`` (default 32).
        min_clip_frames: a clip never closes on novelty before it has this many frames.
        max_clip_frames: a clip always closes when it has this many frames.
        novelty_cos: consecutive-frame cosine at or below which an open clip closes.
        slots_per_clip: most slot vectors ``S`` a row keeps besides its key.
        slot_min_cos: a row keeps slots only where its key does not cover its content: a
            clip whose every frame has cosine ``>= slot_min_cos`` with the key (a merged row
            whose every part does) stores the key alone; above 1, every row keeps ``S`` slots.
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
    slot_min_cos: float = 0.95
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
            (math.isfinite(self.slot_min_cos) and self.slot_min_cos >= -1.0,
             "slot_min_cos must be finite and >= -1 (above 1: every row keeps its slots)"),
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
