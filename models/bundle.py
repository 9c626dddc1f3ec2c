"""A model version on disk: an immutable directory written atomically.

Layout of ``<dir>/``:

- ``model.onnx``: the served graph (see :mod:`reloop.models.export`);
- ``model.pt``: the torch ``state_dict`` (tensors only) for warm-started retraining; optional;
- ``meta.json``: :class:`BundleMeta` -- version, feature spec, model config, metrics, sha256
  and size of each file, creation time, parent version, training window bounds.

Writing goes to a temporary sibling directory, every file is fsync'ed, then the directory is
renamed into place (``os.rename`` is atomic within one filesystem), so readers see either no
bundle or a complete one. Loading verifies size and sha256 of every file it reads and raises
:class:`CorruptModelError` otherwise. Nothing here unpickles: ``meta.json`` is JSON decoded
into typed structs and ``model.pt`` is read with ``torch.load(weights_only=True)``.

This module does not import torch at import time (scoring workers only need
:func:`load_scorer`); the torch-only helpers import it lazily.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from reloop.models.features import FeatureSpec
from reloop.models.scorer import OnnxScorer

if TYPE_CHECKING:
    from reloop.models.ctr import CTRModel

__all__ = [
    "BundleMeta",
    "ModelBundle",
    "CorruptModelError",
    "save_bundle",
    "load_bundle",
    "load_scorer",
    "ONNX_FILE",
    "STATE_FILE",
    "META_FILE",
    "BUNDLE_FORMAT",
]

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
STATE_FILE = "model.pt"
META_FILE = "meta.json"
#: Version of the on-disk layout written by this code.
BUNDLE_FORMAT = 1


class CorruptModelError(RuntimeError):
    """A bundle is missing a file, has a truncated/altered file, or unreadable metadata."""


class BundleMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Contents of ``meta.json``.

    Attributes:
        version: model version label (unique per bundle).
        feature_spec: the spec the model's inputs are encoded with.
        model_config: :class:`~reloop.models.ctr.ModelConfig` as a JSON object (kept untyped here so
            reading metadata does not import torch). Its ``cross`` key names the architecture
            (``"full"`` or ``"lowrank"``); bundles written before that key existed have none and
            hold full-rank models (:func:`reloop.models.ctr.config_from_meta`).
        metrics: training/holdout metrics (``nan`` is stored as ``null``).
        onnx_sha256, onnx_size: hex digest and byte size of ``model.onnx``.
        state_sha256, state_size: the same for ``model.pt`` (``None`` if not saved).
        created_ts: unix seconds when the bundle was written.
        parent_version: version this one was warm-started from, if any.
        window_start, window_end: event-time bounds (unix seconds) of the training window.
        format: on-disk layout version.
    """

    version: str
    feature_spec: FeatureSpec
    model_config: dict[str, Any]
    metrics: dict[str, Any]
    onnx_sha256: str
    onnx_size: int
    state_sha256: str | None = None
    state_size: int | None = None
    created_ts: float = 0.0
    parent_version: str | None = None
    window_start: float | None = None
    window_end: float | None = None
    format: int = BUNDLE_FORMAT


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_verified(path: Path, size: int | None, sha256: str | None) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptModelError(f"{path}: file is missing") from None
    except OSError as exc:
        raise CorruptModelError(f"{path}: cannot read ({exc})") from None
    if size is not None and len(data) != size:
        raise CorruptModelError(f"{path}: {len(data)} bytes, expected {size} (truncated or altered)")
    if sha256 is not None and _sha256(data) != sha256:
        raise CorruptModelError(f"{path}: sha256 {_sha256(data)} does not match meta.json {sha256}")
    return data


@dataclass(frozen=True)
class ModelBundle:
    """A bundle directory and its metadata (files are read and verified on demand)."""

    path: Path
    meta: BundleMeta

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    def read_onnx(self) -> bytes:
        """``model.onnx`` bytes, verified against ``meta.json``; raises :class:`CorruptModelError`."""
        return _read_verified(self.onnx_path, self.meta.onnx_size, self.meta.onnx_sha256)

    def load_scorer(self, *, intra_op_num_threads: int = 1) -> OnnxScorer:
        """An :class:`OnnxScorer` for this version; raises :class:`CorruptModelError`."""
        data = self.read_onnx()
        try:
            return OnnxScorer(data, version=self.meta.version, spec=self.meta.feature_spec,
                              intra_op_num_threads=intra_op_num_threads)
        except Exception as exc:  # onnxruntime raises several unrelated exception types
            raise CorruptModelError(f"{self.onnx_path}: checksum ok but model refused: {exc}") from exc

    def load_state_dict(self) -> dict[str, Any]:
        """The torch ``state_dict`` from ``model.pt`` (tensors only, ``weights_only=True``)."""
        import torch

        if self.meta.state_sha256 is None:
            raise CorruptModelError(f"{self.path}: bundle has no {STATE_FILE} (saved without a model)")
        data = _read_verified(self.path / STATE_FILE, self.meta.state_size, self.meta.state_sha256)
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptModelError(f"{self.path / STATE_FILE}: cannot load state_dict: {exc}") from exc

    def load_torch_model(self) -> CTRModel:
        """Rebuild the :class:`~reloop.models.ctr.CTRModel` (eval mode) to warm-start a retrain."""
        from reloop.models.ctr import CTRModel, config_from_meta

        try:
            config = config_from_meta(self.meta.model_config)  # no "cross" key: a full-rank model
        except msgspec.ValidationError as exc:
            raise CorruptModelError(f"{self.path / META_FILE}: bad model_config: {exc}") from exc
        model = CTRModel(self.meta.feature_spec, config)
        try:
            model.load_state_dict(self.load_state_dict())
        except RuntimeError as exc:
            raise CorruptModelError(f"{self.path / STATE_FILE}: does not fit the model: {exc}") from exc
        return model.eval()


def save_bundle(
    directory: str | os.PathLike[str],
    onnx_bytes: bytes,
    spec: FeatureSpec,
    *,
    version: str,
    model: CTRModel | None = None,
    model_config: Any = None,
    metrics: dict[str, Any] | None = None,
    parent_version: str | None = None,
    window_start: float | None = None,
    window_end: float | None = None,
    created_ts: float | None = None,
) -> ModelBundle:
    """Write a bundle atomically and return it.

    Args:
        directory: target directory; must not exist (versions are immutable).
        onnx_bytes: output of :func:`reloop.models.export.export_onnx`.
        spec: feature spec of the model.
        version: version label.
        model: the torch model; its ``state_dict`` is saved as ``model.pt`` and its config is
            recorded. Without it the bundle can serve but not warm-start a retrain.
        model_config: a :class:`~reloop.models.ctr.ModelConfig` (defaults to ``model.config``).
        metrics: JSON-serialisable metrics (e.g. from :func:`reloop.models.train.train_model`).
        parent_version, window_start, window_end: lineage and training window (unix seconds).
        created_ts: unix seconds; defaults to now.

    Raises:
        FileExistsError: if ``directory`` already exists.
    """
    target = Path(directory).absolute()
    if target.exists():
        raise FileExistsError(f"bundle {target} already exists")
    if model is not None and model.spec != spec:
        raise ValueError(f"model spec {model.spec} != bundle spec {spec}")
    if model_config is None and model is not None:
        model_config = model.config
    config_obj: dict[str, Any] = msgspec.to_builtins(model_config) if model_config is not None else {}

    state_bytes: bytes | None = None
    if model is not None:
        import torch

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buffer)
        state_bytes = buffer.getvalue()

    meta = BundleMeta(
        version=version,
        feature_spec=spec,
        model_config=config_obj,
        metrics=msgspec.to_builtins(metrics or {}),
        onnx_sha256=_sha256(onnx_bytes),
        onnx_size=len(onnx_bytes),
        state_sha256=_sha256(state_bytes) if state_bytes is not None else None,
        state_size=len(state_bytes) if state_bytes is not None else None,
        created_ts=time.time() if created_ts is None else float(created_ts),
        parent_version=parent_version,
        window_start=window_start,
        window_end=window_end,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_file(tmp / ONNX_FILE, onnx_bytes)
        if state_bytes is not None:
            _write_file(tmp / STATE_FILE, state_bytes)
        _write_file(tmp / META_FILE, msgspec.json.format(msgspec.json.encode(meta), indent=2))
        _fsync_dir(tmp)
        if target.exists():  # lost a race with another writer of the same version
            raise FileExistsError(f"bundle {target} already exists")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    logger.info("saved model bundle %s at %s (%d bytes onnx)", version, target, len(onnx_bytes))
    return ModelBundle(path=target, meta=meta)


def load_bundle(directory: str | os.PathLike[str]) -> ModelBundle:
    """Read and validate ``meta.json``; raises :class:`CorruptModelError` if missing or invalid."""
    path = Path(directory).absolute()
    raw = _read_verified(path / META_FILE, None, None)
    try:
        meta = msgspec.json.decode(raw, type=BundleMeta)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptModelError(f"{path / META_FILE}: invalid metadata: {exc}") from None
    if meta.format > BUNDLE_FORMAT:
        raise CorruptModelError(f"{path}: bundle format {meta.format} is newer than supported {BUNDLE_FORMAT}")
    return ModelBundle(path=path, meta=meta)


def load_scorer(directory: str | os.PathLike[str], *, intra_op_num_threads: int = 1) -> OnnxScorer:
    """Load, verify (size + sha256) and open the bundle's ONNX model; raises :class:`CorruptModelError`."""
    return load_bundle(directory).load_scorer(intra_op_num_threads=intra_op_num_threads)
