"""The start-up warm-up (:func:`reloop.processors.warmup.warm_up`) compiles every kernel
signature the worker's scoring, replica and schema cache call afterwards, so none is compiled
(or loaded from numba's disk cache) inside a batch while the worker consumes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


_PROBE = textwrap.dedent("""
    import json, sys
    from numba.core.registry import CPUDispatcher
    import numpy as np
    from reloop.ops.settings import Settings
    from reloop.processors.warmup import warm_up
    from reloop.state.error_memory import kernels as em, memory as emm
    from reloop.state.schemas import kernels as sk, ring_kernels as rk, stat_kernels as stk
    from reloop.state.media import kernels as mk, retrieval as mr
    mods = (em, emm, sk, rk, stk, mk, mr)

    def sigs():
        return {f"{m.__name__}.{k}": [str(s) for s in v.signatures] for m in mods for k, v in vars(m).items()
                if isinstance(v, CPUDispatcher) and v.__module__ == m.__name__}

    s = Settings().with_overrides(features={"n_buckets": 1 << 14, "max_tokens": 12})
    warm_up(s.media, s.schemas, 64, s.error_memory)
    before = sigs()
    # what the worker runs: scoring reads the sketch, the replica writes memory batches and
    # feeds the schema cache (tests/processors/_worker_kernels.py)
    sys.path.insert(0, sys.argv[1])
    from _worker_kernels import run
    run(s)
    after = sigs()
    print(json.dumps({k: [x for x in v if x not in before.get(k, [])] for k, v in after.items()}))
""")


def test_warm_up_compiles_what_the_worker_calls_later():
    """In a fresh process (the kernels' signatures are per process): after :func:`warm_up`,
    scoring, memory batches and the schema cache compile nothing new."""
    from pathlib import Path

    here = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", _PROBE, here], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    new = json.loads(out.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in new.items() if v} == {}
