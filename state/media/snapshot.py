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

import hashlib
import json
import zlib
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from reloop.state.media.kernels import ALWAYS_SLOTS
from reloop.state.media.config import FREE, SNAPSHOT_FORMAT, MediaMemoryConfig
from reloop.state.media.store import ROW_LISTS, UserMediaMemory, id_rows

if TYPE_CHECKING:
    from reloop.state.media.memory import MediaMemory

__all__ = ["pack_ids", "restore_memory", "snapshot_memory", "unpack_ids", "user_digest", "user_from_bytes",
           "user_to_bytes"]


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
                setattr(mem, name, id_rows(lists[name][u]) if name in ROW_LISTS else lists[name][u])
            for name in UserMediaMemory.SCALARS:
                setattr(mem, name, type(getattr(mem, name))(snap[name][u]))
            memory.users[user_id] = mem
    except (KeyError, IndexError, json.JSONDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed media-memory snapshot: {exc!r}") from exc
    return memory


# ---- one user's state as bytes (the changelog's media records) -----------------------------

class _UserState(msgspec.Struct, array_like=True):
    arrays: list[tuple[str, str, list[int], bytes]]  # name, dtype, shape, raw bytes (C order)
    lists: list[list[list[str | None]]]  # UserMediaMemory.LISTS, in order
    scalars: list[float | int]  # UserMediaMemory.SCALARS, in order (inf allowed)


_user_enc = msgspec.msgpack.Encoder()
_user_dec = msgspec.msgpack.Decoder(_UserState)


#: what a retrieval changes in a user's memory (usage counts, last use); the rest is the write path
TOUCHED = ("usage", "used_ts")


def _user_raw(mem: UserMediaMemory, touches: bool = True) -> bytes:
    arrays = [(name, (a := np.ascontiguousarray(getattr(mem, name))).dtype.str, list(a.shape), a.tobytes())
              for name in UserMediaMemory.ARRAYS if touches or name not in TOUCHED]
    return _user_enc.encode(_UserState(arrays, [getattr(mem, name) for name in UserMediaMemory.LISTS],
                                       [getattr(mem, name) for name in UserMediaMemory.SCALARS]))


def user_to_bytes(mem: UserMediaMemory, level: int = 1) -> bytes:
    """One user's whole media state (short-term buffers, long-term rows, counters) as
    zlib-compressed msgpack (unused rows are zeros, so a young memory compresses to ~1-2 KB of
    its ~17 KB of arrays at the default sizes). Inverse: :func:`user_from_bytes`."""
    return zlib.compress(_user_raw(mem), level)


def user_from_bytes(raw: bytes, cfg: MediaMemoryConfig) -> UserMediaMemory:
    """The :class:`UserMediaMemory` written by :func:`user_to_bytes` (ValueError if it does not
    fit ``cfg``: a name, dtype or shape that differs)."""
    try:
        st = _user_dec.decode(zlib.decompress(raw))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"malformed media user record: {exc!r}") from exc
    mem = UserMediaMemory(cfg)
    if [a[0] for a in st.arrays] != list(UserMediaMemory.ARRAYS) or len(st.lists) != len(UserMediaMemory.LISTS) \
            or len(st.scalars) != len(UserMediaMemory.SCALARS):
        raise ValueError("media user record does not match UserMediaMemory")
    for name, dtype, shape, buf in st.arrays:
        current = getattr(mem, name)
        arr = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
        if arr.shape != current.shape or arr.dtype != current.dtype:
            raise ValueError(f"{name}: {arr.dtype}{arr.shape}, want {current.dtype}{current.shape}")
        setattr(mem, name, arr.copy())
    for name, value in zip(UserMediaMemory.LISTS, st.lists):
        rows = [list(ids) for ids in value]
        setattr(mem, name, id_rows(rows) if name in ROW_LISTS else rows)
    for name, value in zip(UserMediaMemory.SCALARS, st.scalars):
        setattr(mem, name, type(getattr(mem, name))(value))
    return mem


def user_digest(mem: UserMediaMemory | None, touches: bool = True) -> str:
    """blake2b (16 bytes, hex) of one user's whole state ("" for no memory): equal digests,
    equal state (arrays bit for bit, id lists, counters). ``touches=False`` leaves out what
    retrievals change (:data:`TOUCHED`): which requests a worker scores after which media events
    depends on how it cut its polls into batches (media first within a batch, see
    :mod:`reloop.processors.media`), so two workers agree on the write path, not on usage."""
    return "" if mem is None else hashlib.blake2b(_user_raw(mem, touches), digest_size=16).hexdigest()
