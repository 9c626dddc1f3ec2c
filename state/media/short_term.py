"""Short-term media memory: the open clip of each modality and its segmentation into clips.

Per user and modality (0 video, 1 audio) the frames (unit segment embeddings) of the *open
clip* are kept raw. New frames are appended in event order; a clip closes, once it has
``min_clip_frames``, on novelty (consecutive cosine ``<= novelty_cos``) and always at
``max_clip_frames`` (:func:`reloop.state.media.kernels.segment_stream`). Closed clips are handed
to the long-term store (:class:`reloop.state.media.store.UserMediaMemory`) in the order their
closing frames arrived. The buffers are canonical (unused positions zero), so the state
does not depend on where a stream is cut into batches.
"""

from __future__ import annotations

import numpy as np

from reloop.state.media.kernels import segment_stream
from reloop.state.media.config import MediaMemoryConfig

__all__ = ["Clip", "ShortTermBuffers"]

#: A closed clip: (position in the batch of the frame that closed it, modality code,
#: ``(m, d) float32`` frames, ``(m,) float64`` event seconds, source ids, item ids or None).
Clip = tuple[int, int, np.ndarray, np.ndarray, list[str], list["str | None"]]


class ShortTermBuffers:
    """The open clips of one user (mixed into :class:`reloop.state.media.store.UserMediaMemory`).

    Arrays (``F = max_clip_frames``): ``open_frames (2, F, d) float32``, ``open_ts (2, F)
    float64`` event seconds, ``open_len (2,) int64``; lists ``open_sources``,
    ``open_items`` per modality (ids of the open frames).
    """

    cfg: MediaMemoryConfig

    def _init_short_term(self) -> None:
        F, d = self.cfg.max_clip_frames, self.cfg.dim
        self.open_frames = np.zeros((2, F, d), np.float32)
        self.open_ts = np.zeros((2, F), np.float64)
        self.open_len = np.zeros(2, np.int64)
        self.open_sources: list[list[str]] = [[], []]
        self.open_items: list[list[str | None]] = [[], []]

    def close_clips(self, modality: np.ndarray, frames: np.ndarray, ts: np.ndarray, sources: list[str],
                    items: list[str | None]) -> list[Clip]:
        """Append one user's frames (event order) to the open clips; return the clips they close.

        Args:
            modality: ``(g,) int`` codes (0 video, 1 audio); frames: ``(g, d) float32`` unit
                rows; ts: ``(g,) float64`` event seconds; sources/items: ``g`` ids.

        Returns:
            The closed clips, in the order of the frames that closed them.
        """
        cfg = self.cfg
        closes: list[Clip] = []
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
        return closes

    def drop_idle_open_clips(self, now: float) -> None:
        """Forget open clips whose last frame is ``expire_after_s`` older than ``now``."""
        for mod in (0, 1):
            n = int(self.open_len[mod])
            if n and now - self.open_ts[mod, n - 1] >= self.cfg.expire_after_s:
                self.open_frames[mod, :n], self.open_ts[mod, :n] = 0.0, 0.0
                self.open_len[mod], self.open_sources[mod], self.open_items[mod] = 0, [], []
