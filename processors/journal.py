"""The input journal: a write-ahead log of every processed input batch, between snapshots.

Why: a worker's input-side state (pending predictions, orphan clicks, per-partition stream
time, online metrics, the media memory) changes with every batch, and is far too large to
snapshot per batch. So each batch is journaled *before* its outputs are produced: the input
offsets it ends at, the raw bytes of the valid media and interaction events, the pending
predictions scoring created (scores depend on the replica at that moment, so they are kept,
not recomputed), the raw requests (scoring reads the media memory, which counts the
retrieval), the stream times, and the encoded outputs. After a crash the worker restores
the last snapshot, re-applies the journal's entries (deterministic: same inputs, same pending,
same order), re-sends the outputs of the last entry (whose produce may not have completed;
the copies are byte-identical) and resumes consuming after the last journaled offsets.

Format: segments ``journal-{seq:08d}.log`` in one directory; each entry is a frame
``u32 length | u32 crc32 | msgpack payload``. A torn or corrupt frame (a crash during the
write) ends the segment: that batch's outputs were never produced (write-ahead), so it is
simply consumed again. A snapshot names the first segment it does not include; older segments
are deleted once the snapshot is durable.

Durability: frames are written with ``write`` + ``flush`` (in the OS page cache: they survive
a process crash such as SIGKILL); ``fsync=True`` also survives a machine crash, at a cost of
one disk sync per batch.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import msgspec

from reloop.processors.pending import Pending

log = logging.getLogger("reloop.journal")

_HEADER = struct.Struct("<II")


class TaskDelta(msgspec.Struct, array_like=True, gc=False):
    """What one batch did to one user partition (a *task*: partition p of every input topic)."""

    partition: int
    pending: list[Pending]
    interactions: list[bytes]  # raw values of the valid interactions, in partition order
    max_ts: dict[str, float]  # stream time of the partition after the batch (s)
    digests: list[tuple[str, int]] = []  # (request id, content digest) of the requests scored


class JournalEntry(msgspec.Struct, array_like=True, gc=False):
    """One processed input batch."""

    offsets: list[tuple[str, int, int]]  # (topic, partition, next offset) after the batch
    media: list[bytes]  # raw values of the valid media events, in the order applied
    requests: list[bytes]  # raw values of the valid requests, in the order scored
    tasks: list[TaskDelta]  # in the order applied (ascending partition)
    # (topic, key, value) produced by the batch; value None: a changelog tombstone
    outputs: list[tuple[str, bytes | None, bytes | None]]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalEntry)


class InputJournal:
    """Append-only, segmented, checksummed journal of input batches.

    >>> import tempfile
    >>> j = InputJournal(Path(tempfile.mkdtemp()))
    >>> j.append(JournalEntry([("requests", 0, 5)], [], [], [], []))
    >>> first = j.rotate()
    >>> [e.offsets for _, e in j.entries(0)]
    [[('requests', 0, 5)]]
    """

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        existing = self.segments()
        self.seq = (existing[-1] + 1) if existing else 0
        self._file: BinaryIO | None = None

    def _path(self, seq: int) -> Path:
        return self.directory / f"journal-{seq:08d}.log"

    def segments(self) -> list[int]:
        """Sequence numbers of the segments on disk, ascending."""
        return sorted(int(p.stem.split("-")[1]) for p in self.directory.glob("journal-*.log"))

    def append(self, entry: JournalEntry) -> None:
        """Write one entry to the current segment (flushed; fsynced if configured)."""
        if self._file is None:
            self._file = open(self._path(self.seq), "ab")
        payload = _encoder.encode(entry)
        self._file.write(_HEADER.pack(len(payload), zlib.crc32(payload)))
        self._file.write(payload)  # not concatenated: payloads are megabytes
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def rotate(self) -> int:
        """Close the current segment and start the next; returns the new segment's seq.

        A snapshot taken right after ``rotate`` includes every segment before the returned seq.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
        self.seq += 1
        return self.seq

    def delete_before(self, seq: int) -> None:
        """Remove segments older than ``seq`` (they are included in a durable snapshot)."""
        for s in self.segments():
            if s < seq:
                self._path(s).unlink(missing_ok=True)

    def entries(self, from_seq: int) -> Iterator[tuple[int, JournalEntry]]:
        """Entries of segments ``>= from_seq`` in order, as (seq, entry); stops a segment at a
        torn or corrupt frame (and truncates it there, so appends continue after valid data)."""
        for s in self.segments():
            if s < from_seq:
                continue
            path = self._path(s)
            data = path.read_bytes()
            pos = 0
            while pos + _HEADER.size <= len(data):
                n, crc = _HEADER.unpack_from(data, pos)
                payload = data[pos + _HEADER.size: pos + _HEADER.size + n]
                if len(payload) < n or zlib.crc32(payload) != crc:
                    break
                yield s, _decoder.decode(payload)
                pos += _HEADER.size + n
            if pos < len(data):
                log.warning("journal_torn_tail", extra={"segment": str(path), "valid_bytes": pos,
                                                        "dropped_bytes": len(data) - pos})
                with open(path, "r+b") as f:
                    f.truncate(pos)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
