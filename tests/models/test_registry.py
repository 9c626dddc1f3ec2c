"""The model registry: versions, lineage, checksums, promotion, rollback, the trainer lock, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reloop.models.bundle import CorruptModelError
from reloop.models.ctr import CTRModel
from reloop.models.fit import FittedModel
from reloop.models.registry import ModelRegistry, RegistryLock, RegistryLocked
from reloop.models.scorer import OnnxScorer
from reloop.ops.models_cli import run as cli_main
from reloop.streams.codec import decode_event, encode
from reloop.streams.events import ModelAnnouncement


@pytest.fixture
def make_fitted(trained, onnx_bytes):
    model, metrics = trained

    def make(version: str) -> FittedModel:
        scorer = OnnxScorer(onnx_bytes, version=version, spec=model.spec)
        return FittedModel(version, model.spec, model, onnx_bytes, scorer,
                           {**metrics, "train_rows": 100, "trigger": "samples", "check_serving_auc": float("nan")})

    return make


@pytest.fixture
def reg3(tmp_path, make_fitted) -> ModelRegistry:
    """v1 <- v2 <- v3 (current), with windows."""
    reg = ModelRegistry(tmp_path / "models")
    reg.register(make_fitted("v1"), window=(100.0, 200.0))
    reg.register(make_fitted("v2"), parent="v1", window=(150.0, 250.0))
    reg.register(make_fitted("v3"), parent="v2", window=(200.0, 300.0))
    return reg


def test_versions_carry_lineage_window_and_checksum(reg3, onnx_bytes):
    assert reg3.versions() == ["v1", "v2", "v3"] and reg3.current() == "v3"
    assert reg3.next_version() == "v4"
    infos = {i.version: i for i in reg3.list_versions(verify=True)}
    assert [i.current for i in infos.values()] == [False, False, True]
    v2 = infos["v2"]
    assert v2.status == "ok" and v2.parent_version == "v1"
    assert (v2.window_start, v2.window_end) == (150.0, 250.0)
    assert v2.onnx_sha256 == hashlib.sha256(onnx_bytes).hexdigest() == hashlib.sha256(
        (reg3.path("v2") / "model.onnx").read_bytes()).hexdigest()
    assert v2.created_ts and v2.created_ts > 1.6e9
    assert v2.metrics["trigger"] == "samples"
    assert not list(reg3.root.glob(".*tmp*")), "no temp dirs left behind"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_corrupt_version_is_refused_with_a_clear_error(reg3, damage):
    onnx = reg3.path("v3") / "model.onnx"
    data = onnx.read_bytes()
    if damage == "truncate":
        onnx.write_bytes(data[: len(data) // 2])
        expect = "truncated"
    elif damage == "flip":
        onnx.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
        expect = "sha256"
    elif damage == "delete":
        onnx.unlink()
        expect = "missing"
    else:
        (reg3.path("v3") / "meta.json").write_text("{not json")
        expect = "invalid metadata"
    with pytest.raises(CorruptModelError, match=expect):
        reg3.load("v3").load_scorer()  # the worker's load path
    info = reg3.info("v3", verify=True)
    assert info.status == "corrupt" and expect in (info.error or "")
    reg3.promote("v2")
    with pytest.raises(CorruptModelError):
        reg3.promote("v3")
    assert reg3.current() == "v2", "a corrupt version never becomes current"
    assert reg3.load("v2").load_scorer().version == "v2"


def test_rollback_goes_to_parent_then_skips_corrupt_versions(reg3, make_fitted):
    assert reg3.rollback_target() == "v2"
    assert reg3.rollback() == "v2" and reg3.current() == "v2"
    (reg3.path("v1") / "model.pt").write_bytes(b"x")  # the parent is corrupt
    with pytest.raises(FileNotFoundError, match="no loadable version older than v2"):
        reg3.rollback()
    assert reg3.current() == "v2"
    reg3.register(make_fitted("v4"), parent="v9")  # parent unknown: newest older loadable
    assert reg3.rollback_target() == "v3"


def test_bad_names_and_bad_current(reg3):
    with pytest.raises(ValueError):
        reg3.load("../v1")
    (reg3.root / "CURRENT").write_text("garbage\n")
    assert reg3.current() is None
    with pytest.raises(FileNotFoundError):
        reg3.promote("v7")


def test_announcement_names_version_path_and_checksum(reg3):
    ann = reg3.announcement("v2")
    assert ann.version == "v2" and Path(ann.path) == reg3.path("v2").absolute()
    assert ann.sha256 == reg3.info("v2").onnx_sha256
    assert "holdout_auc" in ann.metrics and "trigger" not in ann.metrics and "warm_start" not in ann.metrics
    assert "check_serving_auc" not in ann.metrics  # NaN would make the event invalid on the wire
    assert decode_event(encode(ann), ModelAnnouncement) == ann


def test_trainer_lock_is_exclusive_and_released_when_the_holder_dies(tmp_path):
    root = tmp_path / "models"
    with RegistryLock(root):
        with pytest.raises(RegistryLocked) as info:
            RegistryLock(root).acquire()
        assert info.value.pid == os.getpid()
    RegistryLock(root).acquire().release()  # released on exit
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from reloop.models.registry import RegistryLock; "
         f"RegistryLock({str(root)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with pytest.raises(RegistryLocked) as info:
            RegistryLock(root).acquire()
        assert info.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    RegistryLock(root).acquire().release()  # the kernel released the dead holder's lock


def test_models_cli_list_show_promote_rollback(reg3, tmp_path, capsys):
    data_dir = str(tmp_path)
    assert cli_main(["models", "list", "--data-dir", data_dir]) == 0
    out = capsys.readouterr().out
    assert "* v3" in out and "  v1" in out and "samples" in out
    assert cli_main(["models", "list", "--json", "--data-dir", data_dir]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["version"], i["current"], i["parent_version"]) for i in listed] == [
        ("v1", False, None), ("v2", False, "v1"), ("v3", True, "v2")]
    assert cli_main(["models", "rollback", "--no-announce", "--data-dir", data_dir]) == 0
    assert "rolled back from v3 to v2" in capsys.readouterr().out and reg3.current() == "v2"
    assert cli_main(["models", "promote", "v3", "--data-dir", data_dir]) == 0
    assert "NOT announced" in capsys.readouterr().err and reg3.current() == "v3"
    (reg3.path("v1") / "model.onnx").write_bytes(b"junk")
    assert cli_main(["models", "show", "v1", "--data-dir", data_dir]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "corrupt" and "model.onnx" in shown["error"]
    assert cli_main(["models", "promote", "v1", "--no-announce", "--data-dir", data_dir]) == 2
    assert "v1" in capsys.readouterr().err and reg3.current() == "v3"


def test_warm_start_model_round_trips(reg3, trained):
    model, _ = trained
    loaded = reg3.load("v2").load_torch_model()
    assert isinstance(loaded, CTRModel) and loaded.spec == model.spec
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert (a == b).all(), k
