"""steady_gc: the collector's thresholds and the frozen heap are restored after a replay's
steps, also when a step raises; objects made and dropped inside are still collected."""

from __future__ import annotations

import gc
import weakref

import pytest

from reloop.ops.replay_run import STEP_GC_THRESHOLDS, steady_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_restores_thresholds_and_unfreezes_after_an_exception() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(RuntimeError, match="step failed"):
        with steady_gc():
            assert gc.get_threshold() == STEP_GC_THRESHOLDS
            assert gc.get_freeze_count() > frozen
            raise RuntimeError("step failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen == 0


def test_cycles_made_inside_are_still_collected() -> None:
    with steady_gc():
        node = _Node()
        ref = weakref.ref(node)
        del node
        assert ref() is not None  # a cycle: alive until the collector runs
        gc.collect()
        assert ref() is None


def test_cycles_alive_on_entry_are_freed_after_exit() -> None:
    node = _Node()
    ref = weakref.ref(node)
    with steady_gc():
        del node
        gc.collect()  # frozen on entry: not collected while the replay runs
        assert ref() is not None
    gc.collect()
    assert ref() is None
