"""Media memory snapshots: named plain numpy arrays (no objects, no pickle), and back.

Layout (format 2): ``format``, ``config`` (the :class:`MediaMemoryConfig` as JSON),
``users`` (ids, str), ``rejected``; each per-user array of
:attr:`UserMediaMemory.ARRAYS` stacked on a leading user axis (order of ``users``); each id
list of :attr:`UserMediaMemory.LISTS` packed as ``<name>_ids`` (flat str) plus
``<name>_lens`` ``(U, rows) int64``; each counter of :attr:`UserMediaMemory.SCALARS` as a
``(U,)`` array; the item table as ``item_ids`` / ``item_vectors`` / ``item_ts`` /
``item_segments`` in LRU order. Everything survives ``np.savez`` /
``np.load(allow_pickle=False)``.

Format 1 (before adaptive slots) had no ``n_slots``, no ``slot_min_cos`` and no item stamps:
it is read as every written row keeping its ``slots_per_clip`` slots, and continues with
``slot_min_cos = 2.0`` (every new row keeps its slots too), i.e. as it was written; its item
vectors get the stamp ``(-inf, "")`` (any later frame of the item replaces them).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from reloop.state.media.kernels import ALWAYS_SLOTS
from reloop.state.media.config import FREE, SNAPSHOT_FORMAT, MediaMemoryConfig
from reloop.state.media.store import UserMediaMemory

if TYPE_CHECKING:
    from reloop.state.media.memory import MediaMemory

__all__ = ["pack_ids", "restore_memory", "snapshot_memory", "unpack_ids"]


def pack_ids(per_user: list[list[list[str | None]]], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack the first ``n_users`` users' id lists (``rows`` lists each) into plain arrays.

    Returns ``ids`` (flat str array, ``None`` stored as ``""``, which no valid id is) and
    ``lens (n_users, rows) int64``.
    """
    users = per_user[:n_users]
    rows = len(per_user[0]) if per_user else 0
    flat = ["" if i is None else i for lists in users for ids in lists for i in ids]
    lens = np.array([[len(ids) for ids in lists] for lists in users], dtype=np.int64).reshape(n_users, rows)
    return np.array(flat, dtype=str), lens


def unpack_ids(ids: np.ndarray, lens: np.ndarray) -> list[list[list[str | None]]]:
    """Inverse of :func:`pack_ids`."""
    flat = [None if i == "" else str(i) for i in ids.tolist()]
    out, pos = [], 0
    for row_lens in np.asarray(lens).tolist():
        lists = []
        for n in row_lens:
            lists.append(flat[pos:pos + n])
            pos += n
        out.append(lists)
    if pos != len(flat):
        raise ValueError(f"packed ids hold {len(flat)} ids, lengths say {pos}")
    return out


def snapshot_memory(memory: MediaMemory) -> dict[str, np.ndarray]:
    """The snapshot of ``memory`` (see the module doc for the layout)."""
    mems = list(memory.users.values())
    stack = mems or [UserMediaMemory(memory.config)]  # keeps shapes and dtypes when empty
    snap = {"format": np.array(SNAPSHOT_FORMAT), "config": np.array(msgspec.json.encode(memory.config).decode()),
            "users": np.array(list(memory.users), dtype=str), "rejected": np.array(memory.rejected),
            **memory.items.snapshot()}
    for name in UserMediaMemory.ARRAYS:
        snap[name] = np.stack([getattr(m, name) for m in stack])[: len(mems)]
    for name in UserMediaMemory.LISTS:
        snap[f"{name}_ids"], snap[f"{name}_lens"] = pack_ids([getattr(m, name) for m in stack], len(mems))
    for name in UserMediaMemory.SCALARS:
        snap[name] = np.array([getattr(m, name) for m in mems], dtype=type(getattr(stack[0], name)))
    return snap


def _config(snap: dict[str, np.ndarray], fmt: int) -> MediaMemoryConfig:
    raw = str(snap["config"][()])
    if fmt == 1:
        fields = json.loads(raw)
        fields.setdefault("slot_min_cos", ALWAYS_SLOTS)
        return msgspec.convert(fields, MediaMemoryConfig)
    return msgspec.json.decode(raw, type=MediaMemoryConfig)


def restore_memory(cls: type[MediaMemory], snap: dict[str, np.ndarray]) -> MediaMemory:
    """Rebuild a ``cls`` memory from :func:`snapshot_memory` output (ValueError if malformed)."""
    try:
        fmt = int(snap["format"])
        if fmt not in (1, SNAPSHOT_FORMAT):
            raise ValueError(f"unsupported media-memory snapshot format {fmt}")
        config = _config(snap, fmt)
        memory = cls(config)
        memory.rejected = int(snap["rejected"])
        memory.items.restore(snap)
        users = [str(u) for u in snap["users"]]
        lists = {name: unpack_ids(snap[f"{name}_ids"], snap[f"{name}_lens"]) for name in UserMediaMemory.LISTS}
        arrays = [name for name in UserMediaMemory.ARRAYS if fmt > 1 or name != "n_slots"]
        for u, user_id in enumerate(users):
            mem = UserMediaMemory(config)
            for name in arrays:
                arr, current = np.asarray(snap[name][u]), getattr(mem, name)
                if arr.shape != current.shape:
                    raise ValueError(f"{name} of {user_id!r} has shape {arr.shape}, want {current.shape}")
                setattr(mem, name, arr.astype(current.dtype, copy=True))
            if fmt == 1:
                mem.n_slots[mem.state != FREE] = config.slots_per_clip
            for name in UserMediaMemory.LISTS:
                setattr(mem, name, lists[name][u])
            for name in UserMediaMemory.SCALARS:
                setattr(mem, name, type(getattr(mem, name))(snap[name][u]))
            memory.users[user_id] = mem
    except (KeyError, IndexError, json.JSONDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed media-memory snapshot: {exc!r}") from exc
    return memory
