"""ReLoop: a streaming online-learning pipeline for recommender systems, usable as a library.

The repository keeps its top-level folders (``streams/``, ``state/``, ``processors/``,
``models/``, ``ops/``, ``testing/``); an installed wheel holds them as subpackages of this
package (``reloop.streams``, ``reloop.state``, ...). In a source checkout this package also
looks for them one folder up, so ``import reloop.state`` works from a clone without
installing it.

The curated API (River style: one namespace, small verbs) is loaded on first use, so
``import reloop`` itself imports neither numpy, torch, faust nor aiokafka:

* the error memory: :class:`ErrorMemory`, :class:`ErrorMemoryConfig` (``codes`` ->
  ``write`` errors -> ``compensate`` scores; ``snapshot`` / ``restore``), and the contract
  every memory implements, :class:`Snapshottable`;
* the step: :func:`run_step` (one batch of :class:`Admitted` inputs -> a
  :class:`StepResult`, no I/O) over a :class:`ScoringCore`, :class:`FeedbackTasks` (with
  their :class:`OnlineMetrics`) and an optional :class:`MediaCore`; the worker, crash
  recovery and replay all run it;
* settings: :class:`Settings`, :func:`load_settings` (defaults < TOML file < ``RELOOP_*``
  environment);
* replay: :class:`ReplayEngine` over a log read by :func:`read_log`.

Embed the error memory in your own scorer (numpy in, compensated scores out). Here the
user's model under-predicts one region of its hidden space; the memory learns that from
the labelled errors it is given and corrects later scores there, and only there:

>>> import numpy as np
>>> import reloop
>>> rng = np.random.default_rng(0)
>>> W = rng.normal(size=(5, 8))
>>> def my_scorer(x):                                 # features (n, 5) -> p (n,), hidden (n, 8)
...     hidden = np.tanh(x @ W)
...     return np.full(len(x), 0.1), hidden           # a model that says 0.1 everywhere
>>> memory = reloop.ErrorMemory(dim=8, config=reloop.ErrorMemoryConfig(tables=16, bits=6, lam=1.0))
>>> hot = rng.normal(size=(1, 5)) + 0.05 * rng.normal(size=(200, 5))   # a region users love
>>> p, hidden = my_scorer(hot)
>>> codes = memory.codes(hidden)                      # (200, 16) bucket codes
>>> memory.write(codes, y=np.ones(200), p=p, ts=np.arange(200.0))   # labelled errors, event time (s)
200
>>> query = np.vstack([hot[:1], -hot[:1]])            # one row in the region, one far from it
>>> p, hidden = my_scorer(query)
>>> compensated, evidence = memory.compensate(p, memory.codes(hidden), now=200.0)
>>> compensated.round(2).tolist(), bool(evidence[0] > 100), float(evidence[1])
([0.99, 0.1], True, 0.0)
>>> again = reloop.ErrorMemory.restore(memory.snapshot(), config=memory.config)  # plain arrays
>>> bool((again.compensate(p, again.codes(hidden), now=200.0)[0] == compensated).all())
True

Settings (frozen; overrides are validated and name the field they reject):

>>> s = reloop.load_settings(env={"RELOOP_ERROR_MEMORY__LAM": "0.5"})
>>> s.error_memory.lam, s.with_overrides(error_memory={"bits": 12}).error_memory.bits
(0.5, 12)

The step, as the worker runs it: a batch with a request and the click on one of its
candidates, then a later batch whose stream time closes the first request's attribution
window (30 s), which resolves its candidates into error records (a label given explicitly,
as for ``i2``, resolves its candidate at once). The scorer is a small model
fitted here (``reloop.models.fit``, torch) and served with onnxruntime:

>>> from reloop.models.fit import fit_model
>>> from reloop.streams.codec import encode
>>> from reloop.streams.events import Candidate, Interaction, RecommendationRequest
>>> s = reloop.Settings().with_overrides(features={"n_buckets": 1 << 12}, train={"epochs": 1})
>>> rows = [(f"u{i % 7}", f"i{i % 5}", {"genre": f"g{i % 3}"}) for i in range(200)]
>>> labels = np.array([i % 3 == 0 for i in range(200)], dtype=np.float32)
>>> fitted = fit_model(rows, labels, feature_defaults=s.features, model_config=s.model,
...                    train_config=s.train, version="v1")
>>> scoring = reloop.ScoringCore(fitted.scorer)
>>> tasks = reloop.FeedbackTasks(window_s=30.0, limit=10_000, metrics=reloop.OnlineMetrics())
>>> def admitted(topic, event):                     # partition 0; no consumer record
...     return reloop.Admitted(topic, 0, encode(event), event, None)
>>> req = RecommendationRequest(request_id="r1", user_id="u1", ts=100.0, candidates=[
...     Candidate(item_id="i1", features={"genre": "g1"}), Candidate(item_id="i3", features={"genre": "g0"})])
>>> click = Interaction(user_id="u1", item_id="i3", ts=105.0, label=1, request_id="r1")
>>> out = reloop.run_step([admitted("requests", req), admitted("interactions", click)], scoring, tasks, None)
>>> sorted(item.item_id for item in out.recommendations[0].items), out.errors
(['i1', 'i3'], [])
>>> later = RecommendationRequest(request_id="r2", user_id="u1", ts=200.0, candidates=[Candidate(item_id="i2")])
>>> seen = Interaction(user_id="u1", item_id="i2", ts=201.0, label=0, request_id="r2")
>>> out = reloop.run_step([admitted("requests", later), admitted("interactions", seen)], scoring, tasks, None)
>>> sorted((e.item_id, e.label, e.model_version) for e in out.errors)  # r1's two, r2's labelled one
[('i1', 0, 'v1'), ('i2', 0, 'v1'), ('i3', 1, 'v1')]

Replay a log through the same code (``reloop replay LOG`` does this from the command line):
a simulated interaction log written as JSON lines, read back with :func:`read_log`, replayed
with the model fitted above:

>>> import os, tempfile
>>> from reloop.ops.simulator import SimConfig, Simulator, write_jsonl
>>> path = os.path.join(tempfile.mkdtemp(), "log.jsonl")
>>> write_jsonl([e for e in Simulator(SimConfig(seed=3, n_users=50, n_items=40)).labelled_log(40)
...              if isinstance(e, Interaction)], path) > 0
True
>>> log = reloop.read_log(path, "jsonl", s.limits)
>>> result = reloop.ReplayEngine(s).run(log, fitted=fitted)
>>> len(result.compensated) == len(result.labels) > 0, sorted(k for k in result.report if k.startswith("auc_"))
(True, ['auc_base', 'auc_compensated'])
"""

from __future__ import annotations

import importlib
import os as _os
from typing import Any

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_checkout, "streams", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 - a package's own __path__

#: exported name -> the module that defines it (imported on first use: PEP 562)
_EXPORTS: dict[str, str] = {
    "ErrorMemory": "reloop.state.error_memory.memory",
    "ErrorMemoryConfig": "reloop.state.error_memory.memory",
    "Snapshottable": "reloop.state.snapshots",
    "run_step": "reloop.processors.step",
    "Admitted": "reloop.processors.step",
    "StepResult": "reloop.processors.step",
    "ScoringCore": "reloop.processors.scoring",
    "FeedbackTasks": "reloop.processors.tasks",
    "OnlineMetrics": "reloop.processors.metrics",
    "MediaCore": "reloop.processors.media",
    "Settings": "reloop.ops.settings",
    "load_settings": "reloop.ops.settings",
    "ReplayEngine": "reloop.ops.replay",
    "read_log": "reloop.ops.logs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use (keeps ``import reloop`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
