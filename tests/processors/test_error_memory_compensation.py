"""ErrorMemoryCompensation.apply_errors: carried codes, re-keying, bad codes, batching."""

from __future__ import annotations

import numpy as np
import pytest

from reloop.processors.error_memory import ErrorMemoryCompensation
from reloop.state.error_memory.memory import ErrorMemory, ErrorMemoryConfig
from reloop.streams.events import ErrorRecord

CFG = ErrorMemoryConfig(tables=8, bits=6, half_life_s=86400.0)


def compensation(scorer, rekey_window: int = 100) -> ErrorMemoryCompensation:
    return ErrorMemoryCompensation(ErrorMemory(scorer.hidden_dim, CFG), scorer, rekey_window=rekey_window)


def records(comp: ErrorMemoryCompensation, n: int, seed: int = 0) -> list[ErrorRecord]:
    """n records scored by ``comp``'s model, carrying the codes serving would have computed."""
    rng = np.random.default_rng(seed)
    rows = [(f"u{rng.integers(9)}", f"i{rng.integers(20)}", {"genre": f"g{rng.integers(3)}"}) for _ in range(n)]
    p, hidden = comp.scorer.score(*comp.encoder.encode(rows))
    codes = comp.memory.codes(hidden).tolist()
    return [ErrorRecord(error_id=f"r{j}:{item}", user_id=user, item_id=item, ts=1000.0 + j,
                        label=int(rng.integers(2)), base_pred=float(p[j]), comp_pred=float(p[j]),
                        model_version=comp.model_version, codes=codes[j], features=feats)
            for j, (user, item, feats) in enumerate(rows)]


def state(comp: ErrorMemoryCompensation) -> np.ndarray:
    return np.stack([comp.memory.counts, comp.memory.sum_y, comp.memory.sum_p])


def test_carried_codes_are_written_as_is(small_model) -> None:
    comp = compensation(small_model.scorer)
    recs = records(comp, 50)
    assert comp.apply_errors(recs) == 50 and comp.rekeyed == 0
    direct = ErrorMemory(small_model.scorer.hidden_dim, CFG)
    direct.write(np.array([r.codes for r in recs], np.int32), np.array([r.label for r in recs], float),
                 np.array([r.base_pred for r in recs]), np.array([r.ts for r in recs]))
    np.testing.assert_array_equal(state(comp), np.stack([direct.counts, direct.sum_y, direct.sum_p]))


def test_batching_does_not_change_the_state(small_model) -> None:
    one, many = compensation(small_model.scorer), compensation(small_model.scorer)
    recs = records(one, 60, seed=1)
    one.apply_errors(recs)
    for lo in range(0, 60, 7):
        many.apply_errors(recs[lo:lo + 7])
    np.testing.assert_array_equal(state(one), state(many))


@pytest.mark.parametrize("bad", [[-1], [1 << 6], [1 << 40], [1 << 70]])
def test_out_of_range_codes_are_rekeyed_not_fatal(small_model, bad: list[int]) -> None:
    good = compensation(small_model.scorer)
    recs = records(good, 20, seed=2)
    good.apply_errors(recs)
    comp = compensation(small_model.scorer)
    broken = [r if j % 5 else ErrorRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__},
                                             "codes": bad + list(r.codes[1:])})
              for j, r in enumerate(recs)]
    assert comp.apply_errors(broken) == 20
    assert comp.rekeyed == 4  # records 0, 5, 10, 15: re-scored, so their codes are the right ones
    np.testing.assert_allclose(state(comp), state(good), rtol=1e-12)


def test_wrong_version_or_code_count_is_rekeyed(small_model) -> None:
    comp = compensation(small_model.scorer)
    recs = records(comp, 10, seed=3)
    other = [ErrorRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "model_version": "v0"}) for r in recs[:3]]
    short = [ErrorRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "codes": list(r.codes[:2])})
             for r in recs[3:5]]
    assert comp.apply_errors(other + short + recs[5:]) == 10
    assert comp.rekeyed == 5
    assert compensation(small_model.scorer, rekey_window=0).apply_errors(other) == 0  # the paper's reset
