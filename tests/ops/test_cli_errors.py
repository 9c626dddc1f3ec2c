"""Every CLI error path is one line on stderr and a non-zero exit, never a traceback.

Each subprocess that loads settings imports torch (``ops/settings.py`` -> ``models/ctr.py``),
~3 s of CPU, so the table keeps one row per kind of failure; the messages of every rejected
setting are checked in-process by ``tests/ops/test_settings_validation.py``.

Table-driven: each row (the paths issue 16 lists, plus one per kind of failure) runs the real ``reloop`` entry point (``python -m reloop.ops.cli``) as a
subprocess (no broker: the broker paths point at a closed loopback port), then checks the exit
code, that stderr is a single line naming the problem, and that no "Traceback" appears.
Ctrl-C is sent as a real SIGINT once the process shows it is running; a broken pipe is a real
pipe closed by the reader.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reloop.ops.broker import free_port

REPO = Path(__file__).resolve().parents[2]
CLOSED = f"kafka://127.0.0.1:{free_port()}"  # nothing listens there


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELOOP_")}
    return {**base, "PYTHONPATH": str(REPO), "RELOOP_KAFKA__CONNECT_GIVE_UP_S": "0", **extra}


def reloop(args: list[str], extra_env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reloop.ops.cli", *args], capture_output=True, text=True,
                          env=env(**(extra_env or {})), timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.toml").write_text("[worker]\nweb_port = 1\n\n[error_memory]\nlam = -2\n")
    (d / "unlabelled.jsonl").write_text('{"type": "request", "nonsense": 1}\n' * 3)
    (d / "clicks.jsonl").write_text("".join(  # clicks without their impressions: one label only
        f'{{"type": "interaction", "user_id": "u{i}", "item_id": "i{i}", "ts": {1.7e9 + i}, "label": 1}}\n'
        for i in range(50)))
    return d


# (id, argv, extra env, expected exit code, text the one line must contain)
CASES = [
    ("dlq-bogus-topic", ["dlq", "replay", "--topic", "bogus", "--broker", CLOSED], {}, 2, "invalid choice: 'bogus'"),
    ("log-level-bogus", ["--log-level", "bogus", "topics", "list"], {}, 2, "--log-level"),
    ("worker-http-broker", ["worker", "--broker", "http://127.0.0.1:1"], {}, 2, "kafka://host:port"),
    ("worker-unreachable", ["worker", "--broker", CLOSED], {}, 1, "unreachable"),
    ("dlq-unreachable", ["dlq", "show", "--broker", CLOSED], {}, 1, "reloop dlq:"),
    ("env-web-port", ["worker"], {"RELOOP_WORKER__WEB_PORT": "99999"}, 2, "RELOOP_WORKER__WEB_PORT=99999"),
    ("config-file-line", ["schemas", "--config", "{d}/bad.toml"], {}, 2, "bad.toml:5 [error_memory] lam"),
    ("models-show-unregistered", ["models", "show", "v9", "--data-dir", "{d}"], {}, 1, "v9 is not registered"),
    ("memory-rejects-broker", ["memory", "show", "u1", "--broker", CLOSED], {}, 2, "unrecognized arguments"),
    ("train-from-unlabelled-log", ["train", "--from-log", "{d}/unlabelled.jsonl", "--data-dir", "{d}"], {}, 2,
     "labelled interaction"),
    ("replay-clicks-only-log", ["replay", "{d}/clicks.jsonl", "--format", "jsonl"], {}, 2,
     "replay needs labelled interactions of both kinds"),
    ("no-command", [], {}, 2, "COMMAND"),
]


@pytest.mark.parametrize("argv,extra,code,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_path_is_one_line(workdir, argv, extra, code, needle):
    r = reloop([a.replace("{d}", str(workdir)) for a in argv], extra)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]


def test_options_before_or_after_the_command(workdir):
    from reloop.ops.cli import build_parser

    for argv in (["--config", "c.toml", "--log-level", "info", "schemas"],
                 ["schemas", "--config", "c.toml", "--log-level", "info"]):
        args = build_parser().parse_args(argv)
        assert (args.config, args.log_level) == ("c.toml", "INFO"), argv
    assert build_parser().parse_args(["schemas"]).log_level == "WARNING"


def test_run_starts_the_trainer_unless_told_not_to(workdir):
    from reloop.ops.cli import build_parser

    assert build_parser().parse_args(["run"]).trainer is True
    assert build_parser().parse_args(["run", "--no-trainer"]).trainer is False


def test_version_and_fast_help_import_no_torch():
    r = reloop(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("reloop ")
    probe = subprocess.run([sys.executable, "-c", "import sys, reloop.ops.cli; reloop.ops.cli.build_parser().format_help(); "
                            "print(sorted(m for m in ('torch', 'numba', 'faust', 'onnxruntime') if m in sys.modules))"],
                           capture_output=True, text=True, env=env(), cwd=REPO, check=True)
    assert probe.stdout.strip() == "[]"


def test_help_has_no_rst_markup_and_every_option_has_help():
    from reloop.ops.cli import build_parser

    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        text = p.format_help()
        assert "``" not in text and ":mod:" not in text, p.prog
        for action in p._actions:  # noqa: SLF001 - argparse keeps no public list
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
            elif action.option_strings:
                assert action.help, f"{p.prog} {action.option_strings} has no help"


def test_source_topics_match_the_catalog():
    from reloop.ops.cli import SOURCE_TOPICS
    from reloop.streams.topics import TOPICS

    assert set(SOURCE_TOPICS) == set(TOPICS) - {"dlq"}


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen; stderr so far: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("argv,extra,needle", [
    (["--log-level", "INFO", "worker", "--broker", CLOSED], {"RELOOP_KAFKA__CONNECT_GIVE_UP_S": "600"},
     "broker_unreachable"),
    (["replay", "{log}", "--log-level", "INFO"], {}, '"level"'),
], ids=["worker-waiting-for-broker", "replay"])
def test_ctrl_c_exits_130_with_one_line(workdir, argv, extra, needle):
    from reloop.ops.simulator import SimConfig, Simulator, write_jsonl

    log = workdir / "labelled.jsonl"  # what `reloop simulate --labelled --requests 400` writes
    if not log.exists():
        write_jsonl(Simulator(SimConfig(seed=0)).labelled_log(400), log)
    proc = subprocess.Popen([sys.executable, "-m", "reloop.ops.cli", *[a.replace("{log}", str(log)) for a in argv]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra), cwd=REPO)
    try:
        _wait_for_line(proc, needle, 120.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Unclosed" not in err, err
    assert err.strip().splitlines()[-1].endswith("interrupted"), err
    assert sum("interrupted" in ln for ln in err.splitlines()) == 1


def test_broken_pipe_is_quiet():
    proc = subprocess.Popen([sys.executable, "-m", "reloop.ops.cli", "topics", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env(), cwd=REPO)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, like `| head -1`
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode in (0, 141)
