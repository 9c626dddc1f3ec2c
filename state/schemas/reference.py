"""Plain-Python specification of the Space-Saving kernel (:mod:`reloop.state.schemas.kernels`).

Tests check that the numba kernel agrees with it bit for bit.
"""

from __future__ import annotations

import numpy as np

from reloop.state.schemas.kernels import (F_OWN, F_SUM_P, F_SUM_P2, F_SUM_R, F_SUM_R2, N_GLOBAL, N_STATS, OWN, PRIORITY, SUM_P,
                                   SUM_R, SUM_R2, SUM_Y, pair_key)

__all__ = ["space_saving_update_ref"]


def space_saving_update_ref(pids: np.ndarray, pairable: np.ndarray, w: np.ndarray, wf: np.ndarray, r: np.ndarray,
                            y: np.ndarray, p: np.ndarray, ts: np.ndarray, keys: np.ndarray,
                            stats: np.ndarray, times: np.ndarray, meta: np.ndarray,
                            glob: np.ndarray) -> None:
    """Specification of :func:`reloop.state.schemas.kernels.space_saving_update`: a dict of slots and
    ``np.argmin`` eviction. Same arguments minus the heap and index; same results bit for bit.
    """
    capacity = keys.shape[0]
    slot_of = {int(k): s for s, k in enumerate(keys[: int(meta[0])])}

    def touch(key: int, vals: list[float], t: float) -> None:
        s = slot_of.get(key)
        if s is not None:
            for col, v in enumerate(vals):
                stats[s, col] += v
            times[s, 1] = max(times[s, 1], t)
            return
        base = 0.0
        if meta[0] < capacity:
            s = int(meta[0])
            meta[0] += 1
        else:
            s = int(np.argmin(stats[:, PRIORITY]))  # first minimum = smallest slot among ties
            base = float(stats[s, PRIORITY])
            del slot_of[int(keys[s])]
            meta[1] += 1
        slot_of[key] = s
        keys[s] = key
        stats[s] = (base + vals[0], *vals[1:])
        times[s] = (t, t)

    for i in range(pids.shape[0]):
        wi, wfi, ri, yi, pi = float(w[i]), float(wf[i]), float(r[i]), float(y[i]), float(p[i])
        wr, wfr, wfp = wi * ri, wfi * ri, wfi * pi
        vals = [0.0] * N_STATS
        vals[PRIORITY], vals[OWN], vals[SUM_R], vals[SUM_R2], vals[SUM_Y], vals[SUM_P] = (
            wi, wi, wr, wr * ri, wi * yi, wi * pi)
        vals[F_OWN], vals[F_SUM_R], vals[F_SUM_R2], vals[F_SUM_P], vals[F_SUM_P2] = wfi, wfr, wfr * ri, wfp, wfp * pi
        for col in range(N_GLOBAL):
            glob[col] += vals[col + 1]
        row = [(int(a), bool(pairable[j])) for j, a in enumerate(pids[i]) if a > 0]
        for a, _ in row:
            touch(a, vals, float(ts[i]))
        for j, (a, pa) in enumerate(row):
            for b, pb in row[j + 1:]:
                if pa and pb:
                    touch(pair_key(a, b), vals, float(ts[i]))
