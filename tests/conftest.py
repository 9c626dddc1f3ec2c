"""Shared fixtures: a real embedded broker, small settings, a small fitted model, a worker."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import pytest

from reloop.ops.broker import EmbeddedBroker
from reloop.ops.settings import Settings
from reloop.testing.worker_process import WorkerProcess as _WorkerProcess

_ids = itertools.count()

#: Model/training settings small enough for tests on 2 cores (seconds, not minutes).
SMALL = {
    "features": {"n_buckets": 1 << 14, "max_tokens": 12},
    "train": {"epochs": 2, "batch_size": 256},
    "worker": {"metrics_window": 200, "attribution_window_s": 30.0},
    "limits": {"max_event_bytes": 200_000},
}


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the whole test session (tests isolate by topic prefix)."""
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small settings with a private data dir (no broker)."""
    return Settings().with_overrides(**{**SMALL, "worker": {**SMALL["worker"], "data_dir": str(tmp_path)}})


@pytest.fixture
def kafka_settings(settings: Settings, broker: EmbeddedBroker) -> Settings:
    """``settings`` pointed at the session broker with a unique topic prefix and group."""
    n = next(_ids)
    return settings.with_overrides(kafka={"broker": broker.url, "topic_prefix": f"t{n}-{os.getpid()}.",
                                          "group_id": f"g{n}-{os.getpid()}"})


class WorkerProcess(_WorkerProcess):
    """A ``reloop worker`` subprocess with the small test settings (``SMALL``) in its env."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        small = {f"RELOOP_{sec.upper()}__{k.upper()}": str(v) for sec, kv in SMALL.items() for k, v in kv.items()}
        super().__init__(settings, log_path, {**small, **(extra_env or {})})


@pytest.fixture(scope="session")
def small_log():
    """A small labelled simulator log (prequential form): 400 requests x 20 candidates."""
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.streams.events import Interaction

    sim = Simulator(SimConfig(seed=3, n_users=300, n_items=200))
    return [e for e in sim.labelled_log(400)]


@pytest.fixture(scope="session")
def small_model(small_log):
    """A small model fitted on the first 200 requests of ``small_log`` (version v1)."""
    from reloop.ops.replay import fit_initial_model
    from reloop.streams.events import Interaction

    s = Settings().with_overrides(**SMALL)
    warm = [e for e in small_log if isinstance(e, Interaction)][:4000]
    return fit_initial_model(warm, s, version="v1")
