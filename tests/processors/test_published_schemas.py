"""PublishedSchemas: what a worker that does not distil matches against (the ``schemas`` topic)."""

from __future__ import annotations

from reloop.processors.schemas import PublishedSchemas, SchemaUpdate
from reloop.state.schemas.cache import SchemaCacheConfig


def update(sid: str, sig: list[str], state: str = "active", impact: float = 1.0, ts: float = 1.0) -> SchemaUpdate:
    return SchemaUpdate(schema_id=sid, ts=ts, change="promoted" if state == "active" else "resolved", state=state,
                        signature=sig, direction="over", mean_error=-0.3, calibration_gap=-0.25, observed_rate=0.05,
                        predicted_rate=0.3, support=40.0, z=5.0, impact=impact, first_seen=0.0, last_seen=ts,
                        tracked_since=0.0)


def test_latest_value_per_id_active_only_by_impact() -> None:
    p = PublishedSchemas(SchemaCacheConfig())
    p.apply([update("a", ["genre=comedy"], impact=1.0), update("b", ["device=d1"], impact=5.0)])
    assert [s.schema_id for s in p.schemas()] == ["b", "a"]
    matched, shift = p.cache.matcher.match_rows([{"genre": "comedy"}, {"genre": "drama"}], "v1", None)
    assert matched == [["a"], []] and shift[0] < 0.0 == shift[1]  # over-predicted slice: pushed down
    p.apply([update("a", ["genre=comedy"], state="resolved", ts=2.0)])  # the topic's newest value wins
    assert [s.schema_id for s in p.schemas()] == ["b"]
    assert [s.schema_id for s in p.schemas(include_resolved=True)] == ["b", "a"]
    assert p.cache.matcher.match_rows([{"genre": "comedy"}], "v1", None)[0] == [[]]
    assert p.updates_in == 3 and p.cache.config is p.config
