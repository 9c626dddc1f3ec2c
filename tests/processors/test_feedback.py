"""FeedbackCore and PendingStore: joins, windows, orphans, duplicates."""

from __future__ import annotations

from processors.feedback import FeedbackCore
from processors.metrics import OnlineMetrics
from processors.pending import Pending, PendingStore
from streams.events import Interaction


def pending(rid: str, iid: str, ts: float = 100.0, p: float = 0.3) -> Pending:
    return Pending(rid, iid, "u1", ts, p, p, "v1", (1, 2), {"g": "x"})


def core(window: float = 10.0) -> FeedbackCore:
    return FeedbackCore(PendingStore(window), OnlineMetrics(window=2))


def click(rid: str, iid: str, ts: float = 101.0, label: int = 1) -> Interaction:
    return Interaction(user_id="u1", item_id=iid, ts=ts, label=label, request_id=rid)


def test_request_resolves_when_window_closes_with_unclicked_as_negatives() -> None:
    fc = core()
    fc.on_scored([pending("r1", "a"), pending("r1", "b"), pending("r1", "c")])
    assert fc.on_batch([click("r1", "b")]) == []  # held until the request resolves
    assert fc.advance(109.9) == []
    recs = fc.advance(110.0)
    assert sorted((r.item_id, r.label) for r in recs) == [("a", 0), ("b", 1), ("c", 0)]
    assert all(r.code_array().tolist() == [1, 2] and r.error_id.startswith("2:r1:") for r in recs)
    assert fc.metrics.count == 3 and fc.metrics.positives == 1


def test_fully_labelled_request_resolves_at_once() -> None:
    fc = core()
    fc.on_scored([pending("r1", "a")])
    recs = fc.on_batch([click("r1", "a", label=0)])
    assert [(r.item_id, r.label) for r in recs] == [("a", 0)]


def test_duplicates_are_ignored_and_redelivered_requests_do_not_double_count() -> None:
    fc = core()
    fc.on_scored([pending("r1", "a")])
    assert len(fc.on_batch([click("r1", "a")])) == 1
    assert fc.on_batch([click("r1", "a")]) == []
    assert fc.on_scored([pending("r1", "a")]) == []  # redelivered request after it resolved
    assert fc.advance(1000.0) == []
    assert fc.duplicates == 1 and fc.metrics.count == 1


def test_orphan_waits_for_its_request_then_joins() -> None:
    fc = core()
    assert fc.on_batch([click("r9", "a", ts=100.5)]) == []
    recs = fc.on_scored([pending("r9", "a")])
    assert [(r.item_id, r.label) for r in recs] == [("a", 1)]


def test_orphan_whose_request_never_comes_counts_as_unattributed() -> None:
    fc = core()
    fc.on_batch([click("r9", "a", ts=100.0)])
    fc.on_scored([pending("r2", "b", ts=200.0)])
    fc.advance(200.0)
    assert fc.unattributed == 1


def test_interaction_without_request_id_is_unattributed() -> None:
    fc = core()
    fc.on_batch([Interaction(user_id="u", item_id="i", ts=1.0, label=1)])
    assert fc.unattributed == 1


def test_click_past_the_window_is_late_whether_or_not_the_window_was_closed() -> None:
    # the same log, with the window closed before and after the late click is read: same labels
    early, lazy = core(), core()
    for fc in (early, lazy):
        fc.on_scored([pending("r1", "a"), pending("r1", "b")])
    closed_first = early.advance(111.0) + early.on_batch([click("r1", "a", ts=110.5)])
    read_first = lazy.on_batch([click("r1", "a", ts=110.5)]) + lazy.advance(111.0)
    assert sorted((r.item_id, r.label) for r in closed_first) == [("a", 0), ("b", 0)]
    assert sorted((r.item_id, r.label) for r in read_first) == [("a", 0), ("b", 0)]
    assert lazy.late == early.late == 1  # named by event time, not by when it was read


def test_late_orphan_is_not_attributed_when_its_request_arrives() -> None:
    fc = core()
    fc.on_batch([click("r1", "a", ts=120.0)])  # read before its request; 20 s after it
    fc.on_scored([pending("r1", "a", ts=100.0)])
    assert fc.late == 1
    assert [(r.item_id, r.label) for r in fc.advance(110.0)] == [("a", 0)]


def test_resolved_requests_are_forgotten_one_window_later() -> None:
    s = PendingStore(window_s=10.0)
    for r in range(50):
        s.add(Pending(f"r{r}", "a", "u", 100.0 + r, 0.1, 0.1, "v1", (), {}))
    list(s.advance(200.0))
    assert len(s._resolved) == 0 and len(s._deadlines) == 0  # bounded: nothing kept  # noqa: SLF001
