"""The plain-Faust baseline of ``bench/throughput.py``: one ``stream.take`` agent per topic.

    python bench/faust_take.py --topics NAME=requests,NAME=interactions --broker URL \
        --expect N --out RESULT.json --group G

A minimal ``faust.App`` (memory store, no web server, 6 s session/rebalance timeouts as the
worker's) with, per topic, ``async for values in stream.take(5000, within=0.5)`` and a
msgspec decode + validation of every value (``decode_event`` with the deployment limits, as
the worker does). When ``--expect`` values are decoded it writes ``{"events_per_s",
"events_per_cpu_s"}`` to ``--out``, timed from the arrival of the first value (a stream
processor notes it) to the last decode; the parent then stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from reloop.streams.codec import decode_event  # noqa: E402
from reloop.streams.events import Interaction, RecommendationRequest  # noqa: E402
from reloop.streams.validation import Limits  # noqa: E402

def _rate(n_total: int, n_first: int, seconds: float) -> float:
    return (n_total - n_first) / seconds if seconds > 0 else float("nan")


KINDS: dict[str, type] = {"requests": RecommendationRequest, "interactions": Interaction}
TAKE = 5000  # stream.take batch size (the worker's fetch_max_records)


def main(args: argparse.Namespace) -> None:
    """Run the Faust app until stopped (see the module doc)."""
    import faust
    from faust.worker import Worker

    from tests.conftest import SMALL

    limits = Limits(**{**msgspec.structs.asdict(Limits()), **SMALL["limits"]})
    app = faust.App(f"{args.group}-app", broker=args.broker, store="memory://", web_enabled=False,
                    broker_session_timeout=6.0, broker_rebalance_timeout=6.0,
                    consumer_auto_offset_reset="earliest", topic_allow_declare=False,
                    topic_disable_leader=True, datadir=args.out + ".faust")
    state: dict[str, Any] = {"n": 0, "t_first": None, "c_first": 0.0}

    def mark_first(value: Any) -> Any:
        """Stream processor: the arrival time of the first value (the clock starts there)."""
        if state["t_first"] is None:
            state["t_first"], state["c_first"] = time.perf_counter(), time.process_time()
        return value

    def add_agent(name: str, kind: type) -> None:
        topic = app.topic(name, value_serializer="raw", key_serializer="raw")

        async def agent(stream: Any) -> None:
            stream.add_processor(mark_first)
            async for values in stream.take(TAKE, within=0.5):
                for v in values:
                    decode_event(v, kind, limits)
                state["n"] += len(values)
                if state["n"] >= args.expect and not os.path.exists(args.out):
                    res = {"events_per_s": _rate(state["n"], 1, time.perf_counter() - state["t_first"]),
                           "events_per_cpu_s": _rate(state["n"], 1, time.process_time() - state["c_first"])}
                    Path(args.out).write_text(json.dumps(res))

        agent.__name__ = agent.__qualname__ = f"take_{name.replace('.', '_').replace('-', '_')}"
        app.agent(topic, name=agent.__name__)(agent)

    for spec in args.topics.split(","):
        name, logical = spec.split("=")
        add_agent(name, KINDS[logical])
    Worker(app, loglevel="WARNING", quiet=True, override_logging=False).execute_from_commandline()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", required=True, help="comma-separated NAME=requests|interactions")
    ap.add_argument("--broker", required=True)
    ap.add_argument("--expect", type=int, required=True, help="values to decode before reporting")
    ap.add_argument("--out", required=True, help="result JSON file")
    ap.add_argument("--group", required=True, help="Faust app id (consumer group)")
    main(ap.parse_args())
