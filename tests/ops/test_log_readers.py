"""Streaming log readers: every format gives the same events in event-time order; bad lines are
counted with their line numbers, never fatal; unsorted input raises or is reordered in a window."""

from __future__ import annotations

import argparse
import io

import pytest

from reloop.ops import log_readers
from reloop.ops.kafka_source import open_source
from reloop.ops.replay_cli import add_source_args
from reloop.ops.log_parquet import write_parquet
from reloop.ops.log_readers import LogStats, Progress, UnsortedLogError, iter_events, write_jsonl_compressed
from reloop.ops.logs import read_jsonl
from reloop.ops.simulator import SimConfig, Simulator
from reloop.streams.codec import encode
from reloop.streams.events import Candidate, Interaction, RecommendationRequest
from reloop.streams.validation import Limits

LIMITS = Limits(max_future_s=0)


@pytest.fixture(scope="module")
def mixed_log() -> list:
    """Live traffic (requests, clicks, media) and labelled interactions, one sorted stream."""
    sim = Simulator(SimConfig(seed=7, n_users=50, n_items=80))
    live = list(sim.events(60))
    labelled = list(Simulator(SimConfig(seed=8, n_users=50, n_items=80)).labelled_log(60))
    return sorted(live + labelled, key=lambda e: e.ts)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_every_format_reads_the_same_events(tmp_path, mixed_log, suffix) -> None:
    path = str(tmp_path / f"log{suffix}")
    (write_parquet if suffix == ".parquet" else write_jsonl_compressed)(mixed_log, path)
    stream = iter_events([path], "auto", LIMITS)
    got = list(stream)
    assert got == mixed_log
    assert {type(e) for e in got} >= {RecommendationRequest, Interaction}
    assert all(type(e) in (RecommendationRequest, Interaction, log_readers.MediaEvent) for e in got)
    st = stream.stats
    assert (st.events, st.invalid, st.lines) == (len(mixed_log), 0, len(mixed_log))
    assert 0 < st.bytes_read == st.bytes_total  # the whole file, for the ETA


def test_matches_the_in_memory_reader_including_extra_fields(tmp_path) -> None:
    lines = [
        '{"type": "interaction", "ts": 1.0, "user_id": "1", "item_id": "8", "label": 1, "age": "24", "score": 3}',
        '{"type": "interaction", "ts": 2.0, "user_id": "1", "item_id": "9", "label": 0, "features": {"a": "x"}}',
        '{"type": "media", "ts": 2.5, "user_id": "1", "modality": "video", "segment_id": "s", "embedding": [0.1]}',
    ]
    p = tmp_path / "log.jsonl"
    p.write_text("\n".join(lines) + "\n")
    lim = Limits(media_dim=1, max_future_s=0)
    got = list(iter_events([str(p)], "jsonl", lim))
    assert got == read_jsonl(p, lim).events
    assert got[0].features == {"age": "24", "score": 3.0} and type(got[0]) is Interaction


def test_bad_lines_are_counted_with_line_numbers_and_never_fatal(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(log_readers, "CHUNK_BYTES", 64)  # lines span chunk boundaries
    good = [Interaction(user_id="u", item_id=f"i{k}", ts=float(k), label=k % 2) for k in range(12)]
    text = [encode(e).decode() for e in good]
    text.insert(2, "not json")                                                   # line 3
    text.insert(5, '{"type": "interaction", "user_id": "u", "ts": 1}')            # line 6: missing fields
    text.insert(7, "x" * 700)                                                    # line 8: over the limit
    text.insert(9, "")                                                           # line 10: blank, skipped
    text.insert(11, encode(RecommendationRequest(request_id="r", user_id="u", ts=3.0, candidates=[
        Candidate(item_id=f"c{k}") for k in range(5)])).decode())                     # line 12: > max_candidates
    text.insert(13, '{"type": "error", "error_id": "e"}')                        # line 14: not replayable
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(text) + "\n")
    stats = LogStats(max_examples=4)
    lim = Limits(max_event_bytes=500, max_candidates=4, max_future_s=0)
    got = list(iter_events([str(p)], "jsonl", lim, stats=stats))
    assert got == good
    assert stats.invalid == 5 and stats.events == 12 and stats.lines == len(text)
    assert [n for _, n, _ in stats.examples] == [3, 6, 8, 12]  # the first max_examples
    assert "longer than the limit of 500" in stats.examples[2][2]
    assert "candidates exceed limit 4" in stats.examples[3][2]


def test_unsorted_file_raises_naming_file_and_line(tmp_path) -> None:
    evs = [Interaction(user_id="u", item_id="i", ts=t, label=1) for t in (1.0, 5.0, 3.0, 6.0)]
    p = str(tmp_path / "unsorted.jsonl.gz")
    write_jsonl_compressed(evs, p)
    with pytest.raises(UnsortedLogError, match=r"unsorted\.jsonl\.gz:3: event time 3\.0 is 2 s before"):
        list(iter_events([p], "jsonl", LIMITS))


def test_reorder_window_puts_late_events_back_in_order(tmp_path) -> None:
    ts = [1.0, 5.0, 3.0, 6.0, 4.5, 9.0, 9.0, 8.5, 12.0]
    evs = [Interaction(user_id="u", item_id=f"i{k}", ts=t, label=1) for k, t in enumerate(ts)]
    p = str(tmp_path / "late.jsonl")
    write_jsonl_compressed(evs, p)
    stream = iter_events([p], "jsonl", LIMITS, reorder_s=2.0)
    got = list(stream)
    assert [e.ts for e in got] == sorted(ts)
    assert [e.item_id for e in got if e.ts == 9.0] == ["i5", "i6"]  # ties keep file order
    assert stream.stats.reordered == 3
    with pytest.raises(UnsortedLogError, match=r"late\.jsonl:5: .* more than the reorder window of 1\.0 s"):
        list(iter_events([p], "jsonl", LIMITS, reorder_s=1.0))


def test_several_files_merge_by_event_time(tmp_path) -> None:
    a = [Interaction(user_id="a", item_id="i", ts=t, label=1) for t in (1.0, 3.0, 5.0)]
    b = [Interaction(user_id="b", item_id="i", ts=t, label=0) for t in (2.0, 3.0, 4.0)]
    pa, pb = str(tmp_path / "a.jsonl.zst"), str(tmp_path / "b.parquet")
    write_jsonl_compressed(a, pa)
    write_parquet(b, pb)
    got = list(iter_events([pa, pb], "auto", LIMITS))
    assert [(e.user_id, e.ts) for e in got] == [("a", 1.0), ("b", 2.0), ("a", 3.0), ("b", 3.0), ("b", 4.0), ("a", 5.0)]


def test_parquet_bad_rows_are_counted(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = str(tmp_path / "flat.parquet")
    pq.write_table(pa.table({"user_id": ["u", "u", None, "u"], "item_id": ["i", "j", "k", "l"],
                             "ts": [1.0, 2.0, 3.0, 4.0], "label": [1, 7, 0, 0], "device": ["ios", None, "web", "web"],
                             "json": [None, None, None, b'{"type": "bogus"}']}), p)
    stream = iter_events([p], "parquet", LIMITS)
    got = list(stream)
    assert [(e.item_id, e.features) for e in got] == [("i", {"device": "ios"})]
    assert [n for _, n, _ in stream.stats.examples] == [2, 3, 4]


def test_progress_line_has_rate_and_eta(tmp_path, mixed_log) -> None:
    out = io.StringIO()
    prog = Progress(stream=out, force=True, every_s=0.0)
    p = str(tmp_path / "log.jsonl.gz")
    write_jsonl_compressed(mixed_log, p)
    list(iter_events([p], "jsonl", LIMITS, progress=prog))
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert f"replay {len(mixed_log):,} events" in last and "ev/s" in last and "100.0%  ETA 0:00" in last
    assert not Progress(stream=io.StringIO()).enabled  # not a terminal: off
    assert not Progress(quiet=True).enabled


def test_open_source_reads_files_from_cli_args(tmp_path, settings, mixed_log) -> None:
    p = str(tmp_path / "log.jsonl")
    write_jsonl_compressed(mixed_log, p)
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--format", default="auto")
    add_source_args(ap)
    args = ap.parse_args([p, p, "--quiet", "--reorder-s", "0"])
    got = list(open_source(args, settings.with_overrides(limits={"max_future_s": 0})))
    assert len(got) == 2 * len(mixed_log) and [e.ts for e in got] == sorted(e.ts for e in got)


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        iter_events([str(tmp_path / "nope.jsonl")], "jsonl", LIMITS)


def test_replay_speed_bench_small(tmp_path) -> None:
    """The short seeded variant of bench/replay_speed.py (readers mode, one child per format)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import replay_speed
    finally:
        sys.path.pop(0)
    out = tmp_path / "speed.json"
    assert replay_speed.main(["--sizes", "3000", "--formats", "jsonl.gz,parquet", "--data-dir", str(tmp_path / "logs"),
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["format"], r["events"], r["invalid"]) for r in rows] == [("jsonl.gz", 3000, 0), ("parquet", 3000, 0)]
    assert all(r["events_per_cpu_s"] > 0 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0 for r in rows)
