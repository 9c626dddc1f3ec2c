"""`reloop run` on the embedded broker starts from a clean data directory every time."""

from __future__ import annotations

import doctest
from pathlib import Path

import ops.main_job as main_job
from ops.main_job import RUN_STATE, set_aside_previous_run


def test_docstring_examples() -> None:
    result = doctest.testmod(main_job)
    assert result.attempted >= 1 and result.failed == 0


def test_a_second_run_sets_the_first_runs_state_aside_and_keeps_one_generation(tmp_path: Path) -> None:
    for name in RUN_STATE:
        target = tmp_path / name
        if "." in name:
            target.write_text("run 1")
        else:
            (target / "v1").mkdir(parents=True)
    (tmp_path / "reports.json").write_text("kept in place")
    kept = set_aside_previous_run(tmp_path)
    assert kept == tmp_path / "previous-run"
    assert all(not (tmp_path / name).exists() for name in RUN_STATE)
    assert (kept / "models" / "v1").is_dir() and (kept / "worker.log").read_text() == "run 1"
    assert (tmp_path / "reports.json").read_text() == "kept in place"
    (tmp_path / "worker.log").write_text("run 2")  # the second run's state
    set_aside_previous_run(tmp_path)
    assert (kept / "worker.log").read_text() == "run 2" and not (kept / "models").exists()
