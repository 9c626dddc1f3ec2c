"""The media memory: short-term (recent segments) to long-term (decayed profile) per user;
config, kernels with their numpy reference, retrieval, store and snapshot.

Public names: :class:`MediaMemory` (the entry point; snapshot/restore per
:class:`reloop.state.snapshots.Snapshottable`) with its :class:`MediaMemoryConfig`, the
per-user :class:`UserMediaMemory`, the :class:`ItemContent` table, the serving feature
columns :data:`FEATURE_NAMES`, and the modality / lifecycle codes.

>>> from reloop.state.media import FEATURE_NAMES, MediaMemory, MediaMemoryConfig
>>> MediaMemory(MediaMemoryConfig(dim=8)).features("nobody", [[1.0] + [0.0] * 7], now=0.0).shape
(1, 7)
>>> len(FEATURE_NAMES)
7
"""

from reloop.state.media.memory import (ACTIVATED, ARCHIVED, EXPIRED, FEATURE_NAMES, FREE, MERGED, MODALITIES,
                                       SNAPSHOT_FORMAT, STATES, ItemContent, MediaMemory, MediaMemoryConfig,
                                       UserMediaMemory)

__all__ = ["ACTIVATED", "ARCHIVED", "EXPIRED", "FEATURE_NAMES", "FREE", "ItemContent", "MERGED", "MODALITIES",
           "MediaMemory", "MediaMemoryConfig", "SNAPSHOT_FORMAT", "STATES", "UserMediaMemory"]
