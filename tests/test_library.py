"""ReLoop as a library: the wheel installs one ``reloop`` package (no generic top-level
``models``, ``ops``, ...), ``import reloop`` is light, the curated names resolve, and the
worker and replay modules import without torch (the ``train`` extra).

The fresh-venv check (``pip install .`` then the README example) is bench/fresh_install.sh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("streams", "state", "processors", "models", "ops", "testing")
GENERIC = ("models", "ops", "state", "streams", "processors", "testing")


def _run(code: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with this checkout's ``reloop`` first on the path."""
    env_path = str(ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, cwd=ROOT)


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """File names in a wheel built from a copy of the checkout (so the build leaves no files here)."""
    src = tmp_path_factory.mktemp("src") / "reloop"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "var", "build", "*.egg-info", "reports", ".hypothesis", ".pytest_cache", "__pycache__",
        "tests", "bench", "infra"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("reloop-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_holds_every_module_under_reloop(wheel_names: list[str]) -> None:
    names = set(wheel_names)
    expected = {"reloop/__init__.py"}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            expected.add(f"reloop/{path.relative_to(ROOT).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, missing
    extra = sorted(n for n in names if n.endswith(".py") and n not in expected)
    assert not extra, extra  # nothing but the repository's modules


def test_the_wheel_installs_no_generic_top_level_package(wheel_names: list[str]) -> None:
    tops = {n.split("/")[0] for n in wheel_names}
    assert not tops & set(GENERIC), tops
    assert {t for t in tops if not t.endswith(".dist-info")} == {"reloop"}


def test_import_reloop_is_light_and_the_curated_names_resolve() -> None:
    proc = _run("""
        import sys
        import reloop
        heavy = [m for m in ("numpy", "torch", "faust", "aiokafka", "numba") if m in sys.modules]
        assert not heavy, heavy
        assert set(reloop.__all__) <= set(dir(reloop))
        for name in reloop.__all__:
            obj = getattr(reloop, name)
            assert obj.__doc__, name
        print("torch" in sys.modules, "faust" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ReplayEngine and the step import onnxruntime and numba, never torch or faust
    assert proc.stdout.split() == ["False", "False"]


def test_unknown_names_raise_attribute_error() -> None:
    import reloop

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        reloop.Nope  # noqa: B018


BLOCK_TORCH = """
    import sys
    class _NoTorch:  # as if torch (the train extra) were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, _NoTorch())
"""


def test_the_worker_and_replay_import_without_torch() -> None:
    proc = _run(BLOCK_TORCH + """
    import reloop.ops.worker, reloop.ops.replay, reloop.ops.settings, reloop.ops.cli, reloop.processors.step
    import reloop
    reloop.Settings(), reloop.ReplayEngine, reloop.run_step
    print("torch" in sys.modules)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


def test_training_without_torch_says_how_to_install_it() -> None:
    proc = _run(BLOCK_TORCH + """
    from reloop.models.fit import fit_model
    from reloop.ops.settings import Settings
    s = Settings()
    try:
        fit_model([("u", "i", {})], [1.0], feature_defaults=s.features, model_config=s.model,
                  train_config=s.train, version="v1")
    except ModuleNotFoundError as exc:
        print(exc)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pip install 'reloop[train]'" in proc.stdout


@pytest.mark.broker
async def test_a_worker_without_torch_serves_on_the_broker(kafka_settings, small_model, tmp_path: Path) -> None:
    """``reloop worker`` with torch unimportable (a ``torch`` that raises first on its path)
    serves a model from the registry with onnxruntime and never maps torch's libraries."""
    from reloop.models.registry import ModelRegistry
    from reloop.ops.kafka import create_topics
    from reloop.ops.simulator import SimConfig, Simulator
    from reloop.ops.webclient import wait_ready
    from reloop.streams.codec import decode_event
    from reloop.streams.events import Recommendation, RecommendationRequest
    from tests.conftest import WorkerProcess
    from tests.integration.helpers import consume_until, produce

    s = kafka_settings
    await create_topics(s.kafka)
    ModelRegistry(Path(s.worker.data_dir) / "models").register(small_model)
    no_torch = tmp_path / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch' (the train extra is not installed)\", name='torch')\n")
    path = f"{no_torch.parent}{os.pathsep}{ROOT}"
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": path})
    assert probe.returncode != 0 and "train extra" in probe.stderr  # the blocker works
    w = WorkerProcess(s, tmp_path / "worker.log", {"PYTHONPATH": path})
    try:
        await wait_ready(w.port, 180.0, w.proc)
        sim = Simulator(SimConfig(seed=21, n_users=50, n_items=200))
        requests = [e for e in sim.events(10) if isinstance(e, RecommendationRequest)]
        await produce(s, "requests", requests)
        msgs = await consume_until(s, "recommendations", lambda m: len(m) >= len(requests))
        recs = {r.request_id: r for r in (decode_event(m.value, Recommendation) for m in msgs)}
        maps = Path(f"/proc/{w.proc.pid}/maps").read_text()
    finally:
        code = w.stop()
    assert code == 0, w.log_tail()
    assert set(recs) == {r.request_id for r in requests}
    assert all(r.model_version == "v1" for r in recs.values())
    assert "libtorch" not in maps and "onnxruntime" in maps
