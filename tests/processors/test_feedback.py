"""FeedbackCore and PendingStore: joins, windows, orphans, duplicates."""

from __future__ import annotations

from reloop.processors.feedback import FeedbackCore
from reloop.processors.metrics import OnlineMetrics
from reloop.processors.pending import Pending, PendingStore
from reloop.streams.events import Interaction


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


# ---- one event time per resolved prediction (issue 13) --------------------------------------
def test_every_record_of_a_request_carries_the_prediction_time_and_its_label_time() -> None:
    """Positives (click at 104.5) and negatives (window end 110) of request r1 (ts 100) share
    one clock, the prediction's; each label's own time is ``label_ts``."""
    fc = core()
    fc.on_scored([pending("r1", "a"), pending("r1", "b"), pending("r1", "c")])
    fc.on_batch([click("r1", "b", ts=104.5)])
    recs = {r.item_id: r for r in fc.advance(110.0)}
    assert {k: (r.ts, r.label, r.label_ts) for k, r in recs.items()} == {
        "a": (100.0, 0, 110.0), "b": (100.0, 1, 104.5), "c": (100.0, 0, 110.0)}
    assert all(r.schema_version == 2 for r in recs.values())
    assert [pt["ts"] for pt in fc.metrics.series] == [100.0]  # a window of 2: stamped with the prediction time


def test_an_orphan_click_joined_later_keeps_both_clocks() -> None:
    fc = core()
    fc.on_batch([click("r9", "a", ts=100.5)])
    [rec] = fc.on_scored([pending("r9", "a", ts=100.0)])
    assert (rec.ts, rec.label_ts, rec.label) == (100.0, 100.5, 1)


def test_emitted_records_trail_the_newest_by_less_than_a_window() -> None:
    """Within one task, a record emitted when windows close lags the newest record emitted
    before it (an early-resolved request's) by less than one window: the reorder buffer's
    ``reorder_lateness_s`` >= ``attribution_window_s`` orders every record by its own time."""
    fc = core(window=10.0)
    fc.on_scored([pending("r1", "a", ts=100.0), pending("r1", "b", ts=100.0)])  # resolves at its window end
    fc.on_scored([pending("r2", "a", ts=108.0)])  # one candidate: resolves at its click
    out = fc.on_batch([click("r2", "a", ts=109.0)]) + fc.advance(110.0)
    assert [(r.error_id, r.ts) for r in out] == [("2:r2:a", 108.0), ("2:r1:a", 100.0), ("2:r1:b", 100.0)]
    newest = max(r.ts for r in out)
    assert all(0.0 <= newest - r.ts < 10.0 for r in out)


def test_version_1_error_records_still_decode_with_their_single_clock() -> None:
    from reloop.streams.codec import decode_event, encode
    from reloop.streams.events import ErrorRecord

    v2 = ErrorRecord(error_id="r1:a", user_id="u", item_id="a", ts=100.0, label_ts=104.5, label=1, base_pred=0.3,
                     comp_pred=0.3, model_version="v1")
    raw = encode(v2).replace(b'"schema_version":2', b'"schema_version":1').replace(b',"label_ts":104.5', b"")
    assert b"label_ts" not in raw and b'"schema_version":1' in raw
    old = decode_event(raw, ErrorRecord)
    assert (old.schema_version, old.ts, old.label_ts) == (1, 100.0, None)
