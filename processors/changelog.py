"""The input side's changelog: the state of each user partition, kept in Kafka so that it
moves with the partition (the way Kafka Streams, Faust and Quix Streams keep their stores).

Topic ``changelog`` is compacted and co-partitioned with ``requests``/``interactions``/``media``:
the task of input partition p writes only changelog partition p. Every key names one piece of
live state, so compaction keeps exactly what a new owner needs:

* ``<p>/req:<request id>``: a pending request (deadline, scored candidates, labels so far,
  content digest); a tombstone once it resolved (none for a request registered and resolved
  within one batch, e.g. a replayed one-candidate request with its label: its ``req`` was
  never written);
* ``<p>/lab:<request id>``: the labels so far of a pending request whose ``req`` record is
  otherwise current (a click changes only them: ~50 bytes instead of the whole request's
  ~4-8 KB); the later of ``req`` and ``lab`` in log order holds the labels; a tombstone with
  the ``req`` one;
* ``<p>/res:<request id>``: a resolved request still remembered (deadline, digest: duplicate and
  late-click detection); a tombstone once forgotten (one window later);
* ``<p>/orph:<pair>``: an orphan click waiting for its request; a tombstone when claimed or
  expired;
* ``<p>/media:<user id>``: the user's whole media memory (:func:`reloop.state.media.snapshot.user_to_bytes`),
  written for the users a batch changed (media events, retrieval touches); a tombstone when the
  user has none;
* ``<p>/meta``: written last in every batch that touched partition p: the partition's stream
  times, watermark and counters, the input offsets (``requests``, ``interactions``, ``media``
  partition p) this state includes, the writer's id and its batch sequence number for p.

The partition is the key's prefix (the records are produced to partition p explicitly).
A batch's records are produced with its other outputs, before its input offsets are committed,
and are journaled with them (write-ahead), so a worker that restarts on its own volume can
re-send them. Records after the last ``meta`` belong to a batch cut off mid-produce: a restore
ignores them and re-writes those keys from the state it restored (:func:`repair_records`).

Pure: no Kafka client here; the shell writes the topic (:mod:`reloop.processors.hot_state`) and
reads it back (:mod:`reloop.processors.hot_restore`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import msgspec

from reloop.processors.feedback import FeedbackCore
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore, _join_pair, _Request, _split_pair
from reloop.processors.tasks import FeedbackTasks
from reloop.state.media.memory import MediaMemory
from reloop.state.media.snapshot import user_from_bytes, user_to_bytes
from reloop.streams.events import Interaction

__all__ = ["Meta", "Restored", "changed_records", "install_media", "key_partition", "media_records", "restore",
           "repair_records", "META"]

Record = tuple[bytes, "bytes | None"]  # (key, value or None for a tombstone)

META = "meta"


class Meta(msgspec.Struct, kw_only=True):
    """The ``meta`` record of a partition (module doc)."""

    writer: str  # id of the worker (data dir) that wrote the batch
    seq: int  # that writer's batch sequence number for the partition
    offsets: dict[str, int]  # logical input topic -> next offset of partition p included
    max_ts: dict[str, float]  # stream times of the partition (event-time s)
    watermark: float
    unattributed: int = 0
    duplicates: int = 0
    late: int = 0


class _Req(msgspec.Struct, array_like=True):
    deadline: float
    items: list[Pending]
    labels: list[tuple[str, int, float]]
    digest: int | None


class _Lab(msgspec.Struct, array_like=True):
    labels: list[tuple[str, int, float]]


class _Res(msgspec.Struct, array_like=True):
    deadline: float
    digest: int | None


_meta_dec = msgspec.msgpack.Decoder(Meta)
_req_dec = msgspec.msgpack.Decoder(_Req)
_res_dec = msgspec.msgpack.Decoder(_Res)
_lab_dec = msgspec.msgpack.Decoder(_Lab)
_orph_dec = msgspec.msgpack.Decoder(Interaction)
_enc = msgspec.msgpack.Encoder()


def _key(partition: int, name: str) -> bytes:
    return f"{partition}/{name}".encode()


def key_partition(key: bytes) -> int:
    """The input partition a changelog key belongs to.

    >>> key_partition(b"3/req:r1")
    3
    """
    return int(key[:key.index(b"/")])


def decode_meta(value: bytes | None) -> Meta | None:
    """The :class:`Meta` in a record value (None if it is not one)."""
    if value is None:
        return None
    try:
        return _meta_dec.decode(value)
    except msgspec.DecodeError:
        return None


def _value(store: PendingStore, kind: str, ident: str | tuple[str, str]) -> bytes | None:
    """The current value of one key of ``store`` (None: tombstone)."""
    if kind == "req":
        req = store._requests.get(ident)  # type: ignore[arg-type]  # noqa: SLF001
        if req is None:
            return None
        return _enc.encode(_Req(req.deadline, list(req.items.values()),
                                [(i, lab, ts) for i, (lab, ts) in req.labels.items()],
                                store._digests.get(ident)))  # type: ignore[arg-type]  # noqa: SLF001
    if kind == "lab":
        req = store._requests.get(ident)  # type: ignore[arg-type]  # noqa: SLF001
        return None if req is None else _enc.encode(_Lab([(i, lab, ts) for i, (lab, ts) in req.labels.items()]))
    if kind == "res":
        deadline = store._resolved.get(ident)  # type: ignore[arg-type]  # noqa: SLF001
        return None if deadline is None else _enc.encode(_Res(deadline, store._digests.get(ident)))  # type: ignore[arg-type]  # noqa: SLF001
    it = store._orphans.get(ident)  # type: ignore[arg-type]  # noqa: SLF001
    return None if it is None else _enc.encode(it)


def _ident(kind: str, ident: str | tuple[str, str]) -> str:
    return f"{kind}:{_join_pair(*ident) if kind == 'orph' else ident}"


def meta_record(tasks: FeedbackTasks, partition: int, offsets: dict[str, int], writer: str) -> Record:
    """The ``meta`` record of ``partition`` now; advances its batch sequence number."""
    core = tasks.task(partition)
    seq = tasks.changelog_seq.get(partition, 0) + 1
    tasks.changelog_seq[partition] = seq
    meta = Meta(writer=writer, seq=seq, offsets=dict(offsets), max_ts=dict(tasks.max_ts.get(partition, {})),
                watermark=core.pending.watermark, unattributed=core.unattributed,
                duplicates=core.duplicates, late=core.late)
    return _key(partition, META), _enc.encode(meta)


def media_records(partition: int, memory: MediaMemory, users: Iterable[str]) -> list[Record]:
    """The ``media:<user>`` records of ``users`` (all of ``partition``) as ``memory`` holds them now."""
    out: list[Record] = []
    for user in sorted(users):
        mem = memory.users.get(user)
        out.append((_key(partition, f"media:{user}"), None if mem is None else user_to_bytes(mem)))
    return out


def changed_records(tasks: FeedbackTasks, partition: int, offsets: dict[str, int], writer: str,
                    media: tuple[MediaMemory, Iterable[str]] | None = None) -> list[Record]:
    """The records of what ``partition``'s task changed since the last call, then its meta.

    Args:
        offsets: logical input topic -> next offset of partition ``partition`` (the batch's end).
        writer: this worker's id.
        media: the media memory and the users of ``partition`` the batch changed in it.
    """
    store = tasks.task(partition).pending
    dirty = store.take_dirty()
    written = tasks.changelog_written.setdefault(partition, {})
    created = dirty.created
    out: list[Record] = []
    for rid in sorted(dirty.requests):
        req = store._requests.get(rid)  # noqa: SLF001
        if req is None:  # resolved or forced out: both keys go
            written.pop(rid, None)
            if rid not in created:  # else registered and resolved within the batch: never written
                out += [(_key(partition, f"req:{rid}"), None), (_key(partition, f"lab:{rid}"), None)]
            continue
        shape = (len(req.items), store._digests.get(rid))  # noqa: SLF001
        kind = "lab" if written.get(rid) == shape else "req"  # only labels changed: the small record
        written[rid] = shape
        out.append((_key(partition, f"{kind}:{rid}"), _value(store, kind, rid)))
    res_key, resolved, digests, encode = f"{partition}/res:", store._resolved, store._digests, _enc.encode  # noqa: SLF001
    for rid in sorted(dirty.resolved):  # as _value(store, "res", rid), inlined: one per resolved request
        deadline = resolved.get(rid)
        out.append(((res_key + rid).encode(), None if deadline is None else encode(_Res(deadline, digests.get(rid)))))
    for ident in sorted(dirty.orphans):
        out.append((_key(partition, _ident("orph", ident)), _value(store, "orph", ident)))
    if media is not None:
        out += media_records(partition, *media)
    out.append(meta_record(tasks, partition, offsets, writer))
    return out


@dataclass
class Restored:
    """A partition rebuilt from its changelog (:func:`restore`)."""

    core: FeedbackCore
    meta: Meta | None
    records: int = 0  # records read
    nbytes: int = 0  # bytes of keys and values read
    tail_keys: list[bytes] = field(default_factory=list)  # keys written after the last meta
    media: dict[str, bytes] = field(default_factory=dict)  # user id -> media record (user_to_bytes)


def restore(partition: int, records: Iterable[Record], window_s: float, limit: int) -> Restored:
    """Rebuild partition ``partition``'s task from its changelog records, in log order
    (later values replace earlier ones, a tombstone removes its key). Records after the last
    ``meta`` are not applied (their batch never finished producing): their keys are listed in
    :attr:`Restored.tail_keys`."""
    live: dict[bytes, bytes] = {}
    at: dict[bytes, int] = {}  # key -> position of its live value in the log (req vs lab)
    tail: dict[bytes, tuple[bytes | None, int]] = {}
    meta: Meta | None = None
    n = nbytes = 0
    meta_key = _key(partition, META)
    for key, value in records:
        n += 1
        nbytes += len(key) + (len(value) if value is not None else 0)
        if key == meta_key:
            for k, (v, i) in tail.items():
                if v is None:
                    live.pop(k, None)
                else:
                    live[k], at[k] = v, i
            tail = {}
            meta = decode_meta(value)
        else:
            tail[key] = (value, n)
    store = PendingStore(window_s, limit)
    deadlines: list[tuple[float, int, str]] = []
    media: dict[str, bytes] = {}
    labs: dict[str, tuple[int, bytes]] = {}
    prefix = len(f"{partition}/")
    for key, value in live.items():
        kind, _, ident = key[prefix:].decode().partition(":")
        if kind == "req":
            r = _req_dec.decode(value)
            store._requests[ident] = _Request(r.deadline, {p.item_id: p for p in r.items},  # noqa: SLF001
                                              {i: (lab, ts) for i, lab, ts in r.labels})
            store._size += len(r.items)  # noqa: SLF001
            if r.digest is not None:
                store._digests[ident] = r.digest  # noqa: SLF001
            deadlines.append((r.deadline, 0, ident))
        elif kind == "res":
            s = _res_dec.decode(value)
            store._resolved[ident] = s.deadline  # noqa: SLF001
            if s.digest is not None:
                store._digests[ident] = s.digest  # noqa: SLF001
            deadlines.append((s.deadline + window_s, 2, ident))
        elif kind == "orph":
            it = _orph_dec.decode(value)
            store._orphans[_split_pair(ident)] = it  # noqa: SLF001
            deadlines.append((it.ts + window_s, 1, ident))
        elif kind == "media":
            media[ident] = value
        elif kind == "lab":
            labs[ident] = (at[key], value)
    for rid, (i, value) in labs.items():  # a lab written after its req holds the labels
        req = store._requests.get(rid)  # noqa: SLF001
        if req is not None and i > at[_key(partition, f"req:{rid}")]:
            req.labels = {item: (lab, ts) for item, lab, ts in _lab_dec.decode(value).labels}
    import heapq

    heapq.heapify(deadlines)
    store._deadlines = deadlines  # noqa: SLF001
    core = FeedbackCore(store, OnlineMetrics())
    if meta is not None:
        store.watermark = meta.watermark
        core.unattributed, core.duplicates, core.late = meta.unattributed, meta.duplicates, meta.late
    return Restored(core, meta, n, nbytes, list(tail), media)


def install_media(memory: MediaMemory, restored: dict[str, bytes], stale: Iterable[str]) -> int:
    """Replace the users ``stale`` (this worker's copies of a restored partition's users) by
    the partition's ``restored`` media records; returns the users installed."""
    for user in stale:
        memory.users.pop(user, None)
    for user, raw in restored.items():
        memory.users[user] = user_from_bytes(raw, memory.config)
    return len(restored)


def repair_records(partition: int, store: PendingStore, keys: Sequence[bytes],
                   memory: MediaMemory | None = None) -> list[Record]:
    """The current values of ``keys`` (from a cut-off batch) in ``store`` (and ``memory``, for
    media keys): written right after a restore (then a meta), so the cut-off batch's records
    never count in a later restore."""
    prefix = len(f"{partition}/")
    out: list[Record] = []
    for key in keys:
        kind, _, ident = key[prefix:].decode().partition(":")
        if kind in ("req", "res", "lab"):
            out.append((key, _value(store, kind, ident)))
        elif kind == "orph":
            out.append((key, _value(store, kind, _split_pair(ident))))
        elif kind == "media":
            mem = memory.users.get(ident) if memory is not None else None
            out.append((key, None if mem is None else user_to_bytes(mem)))
    return out
