"""Admission: which decoded inputs enter the cores (event-time policy, reused request ids).

Decoding already rejected what is malformed or from a clock too far ahead
(:func:`reloop.streams.validation.check_limits`). What is left depends on the partition's state, so
it is decided here, per partition, before scoring (docs/guarantees.md, "Event time" and
"Bad input"):

* a request whose attribution window had closed before a request already admitted on its
  partition was made (``ts + window <=`` the newest admitted request ``ts`` of the partition)
  is **late**: scoring it would label it all-negative at once and drop its clicks, so it
  becomes a dead letter. The newest request time is a running maximum over the partition's
  own ``requests`` log, so the decision depends on that log alone, never on where batches
  were cut or how the topics interleaved;
* a request id already scored on the partition (pending, or resolved within the last
  window) with the same bytes (:func:`reloop.processors.pending.request_digest`) is a
  **duplicate**: no second recommendation, nothing registered twice;
* the same id with other content is **reused**: a dead letter (its recommendation would share
  an id with another, and consumers drop copies by id).

Pure and synchronous; the worker and replay call it the same way.
"""

from __future__ import annotations

from reloop.processors.pending import request_digest
from reloop.processors.scoring import unique_candidates
from reloop.processors.tasks import FeedbackTasks
from reloop.streams.events import RecommendationRequest

__all__ = ["Admission", "DUPLICATE"]

#: Returned by :meth:`Admission.request` for a byte-for-byte copy of a request already scored.
DUPLICATE = "duplicate"


class Admission:
    """Per-batch admission of requests against the partitions' feedback state.

    >>> from reloop.processors.metrics import OnlineMetrics
    >>> from reloop.streams.events import Candidate
    >>> tasks = FeedbackTasks(window_s=10.0, limit=100, metrics=OnlineMetrics(window=10))
    >>> adm = Admission(tasks)
    >>> r = RecommendationRequest(request_id="r1", user_id="u", ts=5.0, candidates=[Candidate(item_id="a")])
    >>> from reloop.streams.codec import encode
    >>> adm.request(0, r, encode(r))[1], adm.request(0, r, encode(r))[1]
    (None, 'duplicate')
    >>> other = RecommendationRequest(request_id="r1", user_id="v", ts=5.0, candidates=[Candidate(item_id="a")])
    >>> adm.request(0, other, encode(other))[1][:22]
    'request id reused with'
    """

    def __init__(self, tasks: FeedbackTasks) -> None:
        self.tasks = tasks
        self._batch: dict[tuple[int, str], int] = {}
        self._newest: dict[int, float] = {}  # partition -> newest admitted request ts, this batch
        self.duplicates = 0
        self.late = 0
        self.reused = 0

    def begin_batch(self, tasks: FeedbackTasks) -> None:
        """Start a batch (``tasks`` may have been replaced by a recovery)."""
        self.tasks = tasks
        self._batch.clear()
        self._newest.clear()

    def digest(self, partition: int, request_id: str) -> int | None:
        """The content digest of request ``request_id`` admitted on ``partition`` in this batch."""
        return self._batch.get((partition, request_id))

    def request(self, partition: int, r: RecommendationRequest, raw: bytes) -> tuple[RecommendationRequest | None,
                                                                                    str | None]:
        """Admit ``r`` (read from ``partition``, ``raw`` its bytes on the wire).

        Returns:
            ``(request, None)`` to score (duplicate candidates collapsed), ``(None, DUPLICATE)``
            for a copy of a request already scored, ``(None, reason)`` for a dead letter.
        """
        digest = request_digest(raw)
        key = (partition, r.request_id)
        known = self._batch.get(key)
        if known is None:
            known = self.tasks.digest_of(partition, r.request_id)
        if known is not None:  # a copy or a reuse, whenever it arrives
            if known == digest:
                self.duplicates += 1
                return None, DUPLICATE
            self.reused += 1
            return None, f"request id reused with different content: {r.request_id[:80]!r}"
        newest = self._newest.get(partition)
        if newest is None:
            newest = self.tasks.max_ts.get(partition, {}).get("requests")
        window = self.tasks.window_s
        if newest is not None and r.ts + window <= newest:
            self.late += 1
            return None, (f"late request: its attribution window closed at {r.ts + window:.3f}, before "
                          f"the newest request of its partition ({newest:.3f})")
        self._batch[key] = digest
        self._newest[partition] = r.ts if newest is None else max(newest, r.ts)
        return unique_candidates(r), None
