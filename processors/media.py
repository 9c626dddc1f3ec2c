"""MediaCore: per-user media memory fed from ``media``, served to scoring as features.

Pure, synchronous and batch-first (no Kafka, no clocks): the worker and the replay engine
feed it the same events and get the same state. Ordering rule: **media events are applied
before the requests that follow them** -- the worker applies a polled batch's media events
before scoring its requests; replay (:func:`annotate_log`) gives each logged interaction the
features of exactly the media events before it in the log. Each request's features use its
own event time ``ts``.

Serving: :meth:`MediaCore.features_for_requests` returns one ``(n_candidates, F) float32``
row per candidate of the flattened requests (the order ``ScoringCore.score`` builds its
rows in), columns :data:`reloop.state.media.memory.FEATURE_NAMES`; :meth:`MediaCore.merge_into_rows`
merges them into the rows' feature dicts, where ``FeatureSpec.infer`` picks them up as dense
model inputs. A candidate whose content embedding was never seen on ``media`` (the item
content table is learned from media events carrying ``item_id``) gets zeros and
``media_known = 0``.
"""

from __future__ import annotations

from typing import Sequence

import msgspec
import numpy as np

from reloop.state.media.memory import FEATURE_NAMES, MediaMemory, MediaMemoryConfig
from reloop.streams.events import Event, Interaction, MediaEvent, RecommendationRequest

__all__ = ["FEATURE_NAMES", "MediaCore", "annotate_log"]

Row = tuple[str, str, dict]


class MediaCore:
    """The media-memory job's core.

    Args:
        config: memory configuration (``dim`` must equal ``Limits.media_dim``).
        memory: an existing memory (e.g. restored from a snapshot); a new one when None.
    """

    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __init__(self, config: MediaMemoryConfig, memory: MediaMemory | None = None) -> None:
        self.memory = memory if memory is not None else MediaMemory(config)
        self.events_seen = 0
        # users whose memory may have changed since :meth:`take_dirty` (media events, or a
        # retrieval's usage touch); the changelog writes them (bounded by the users known)
        self.dirty: set[str] = set()

    def take_dirty(self) -> set[str]:
        """The users changed since the last call (and forget them)."""
        out, self.dirty = self.dirty, set()
        return out

    @property
    def config(self) -> MediaMemoryConfig:
        return self.memory.config

    def on_batch(self, events: Sequence[MediaEvent]) -> None:
        """Ingest a batch of media events (event order per user)."""
        if events:
            self.events_seen += self.memory.on_batch(events)
            self.dirty.update(e.user_id for e in events)

    def features_for_requests(self, requests: Sequence[RecommendationRequest]) -> np.ndarray:
        """``(sum of candidates, F) float32`` media features, requests' candidates flattened in order.

        Counts as a retrieval (usage counts, last use) like scoring does.
        """
        flat = [c.item_id for r in requests for c in r.candidates]
        out = np.zeros((len(flat), len(FEATURE_NAMES)), dtype=np.float32)
        if not flat:
            return out
        # one content lookup for the batch (same LRU touches, in the same order, as one per
        # request); users without a memory keep zero rows, as features() would give them
        emb, _known = self.memory.items.lookup(flat)
        users = self.memory.users
        serve, dirty = self.memory.serve, self.dirty
        lo = 0
        for r in requests:
            hi = lo + len(r.candidates)
            mem = users.get(r.user_id)
            if mem is not None:
                out[lo:hi] = serve(mem, emb[lo:hi], r.ts)
                dirty.add(r.user_id)
            lo = hi
        return out

    def merge_into_rows(self, requests: Sequence[RecommendationRequest], rows: list[Row], *,
                        in_place: bool = False) -> list[Row]:
        """``rows`` (one per flattened candidate) with the media features added to each dict
        (``in_place``: into the rows' own dicts, which the caller owns; ``rows`` is returned)."""
        values = self.features_for_requests(requests).tolist()
        if len(values) != len(rows):
            raise ValueError(f"{len(rows)} rows for {len(values)} candidates")
        names = FEATURE_NAMES
        if in_place:  # dict.update keeps the same keys in the same order as {**f, **media}
            for row, v in zip(rows, values):
                row[2].update(zip(names, v))
            return rows
        return [(u, i, {**f, **dict(zip(names, v))}) for (u, i, f), v in zip(rows, values)]

    def annotate(self, interactions: Sequence[Interaction]) -> list[Interaction]:
        """Interactions with the media features of their (user, item, ts) merged into ``features``.

        Consecutive interactions of one user at one time (a logged request's candidates) are
        looked up together, as one request would be.
        """
        out: list[Interaction] = []
        lo = 0
        while lo < len(interactions):
            first, hi = interactions[lo], lo + 1
            while hi < len(interactions) and (interactions[hi].user_id, interactions[hi].ts) == (first.user_id,
                                                                                                 first.ts):
                hi += 1
            values = self.memory.features_for_items(first.user_id, [it.item_id for it in interactions[lo:hi]],
                                                    first.ts).tolist()
            out.extend(msgspec.structs.replace(it, features={**it.features, **dict(zip(FEATURE_NAMES, v))})
                       for it, v in zip(interactions[lo:hi], values))
            lo = hi
        return out

    def describe(self, user_id: str) -> dict:
        """See :meth:`reloop.state.media.memory.MediaMemory.describe`."""
        return self.memory.describe(user_id)

    def snapshot(self) -> dict[str, np.ndarray]:
        """The memory's snapshot plus this core's counter (named numpy arrays, no objects)."""
        return {**self.memory.snapshot(), "core_events_seen": np.array(self.events_seen)}

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> MediaCore:
        """Rebuild from :meth:`snapshot` output."""
        memory = MediaMemory.restore(snap)
        core = cls(memory.config, memory)
        core.events_seen = int(snap.get("core_events_seen", 0))
        return core


def annotate_log(core: MediaCore, events: Sequence[Event]) -> list[Interaction]:
    """The log's interactions, in log order, with their media features merged into ``features``.

    Media events are applied in log order and each interaction sees exactly the media events
    before it in the log (event-time order for a ``LoadedLog``), so the result does not depend
    on any batching. Media events after the last interaction are applied too.
    """
    out: list[Interaction] = []
    media: list[MediaEvent] = []
    run: list[Interaction] = []
    for ev in events:
        if isinstance(ev, MediaEvent):
            if run:
                out.extend(core.annotate(run))
                run = []
            media.append(ev)
        elif isinstance(ev, Interaction):
            if media:
                core.on_batch(media)
                media = []
            run.append(ev)
    out.extend(core.annotate(run))
    core.on_batch(media)
    return out
