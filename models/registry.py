"""Model registry: one bundle directory per version plus an atomically replaced ``CURRENT``.

Layout under ``root``::

    root/
      CURRENT             # the serving version's name (replaced with os.replace)
      trainer.lock        # held (flock) by the one running trainer; holds its pid
      v1/  model.onnx model.pt meta.json
      v2/  ...

A version directory is written by :func:`reloop.models.bundle.save_bundle` (temp dir, fsync, rename),
so readers see a complete version or none. ``meta.json`` records the ONNX file's sha256 and
size, the metrics (training, holdout and ``check_*`` gate results), the training window's
event-time bounds, the parent version and the creation time. Reading a model verifies size and
sha256 and raises :class:`~reloop.models.bundle.CorruptModelError` for a missing, truncated or altered
file: the worker's load path catches it, logs ``model_refused`` and keeps serving the model it
has. :meth:`ModelRegistry.promote` verifies a version before pointing ``CURRENT`` at it, so a
corrupt version is never made current by the registry.

One writer of new versions at a time: the trainer holds :class:`RegistryLock`. Promotion and
rollback (``reloop models promote|rollback``) only replace ``CURRENT``, which is atomic.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
import math
from typing import TYPE_CHECKING, Any

from reloop.models.bundle import STATE_FILE, CorruptModelError, ModelBundle, _read_verified, load_bundle, save_bundle
from reloop.streams.events import ModelAnnouncement

if TYPE_CHECKING:  # torch stays out of processes that only read the registry (workers, CLI)
    from reloop.models.fit import FittedModel

__all__ = ["ModelRegistry", "VersionInfo", "RegistryLock", "RegistryLocked", "LOCK_FILE"]

log = logging.getLogger("reloop.registry")

_VERSION = re.compile(r"^v(\d+)$")
LOCK_FILE = "trainer.lock"


@dataclass(frozen=True)
class VersionInfo:
    """What ``reloop models list|show`` prints about one version.

    ``status`` is ``ok`` (metadata readable; files verified too when asked), or ``corrupt``
    with the reason in ``error``. Times are unix seconds.
    """

    version: str
    status: str
    current: bool
    error: str | None = None
    created_ts: float | None = None
    parent_version: str | None = None
    window_start: float | None = None
    window_end: float | None = None
    onnx_sha256: str | None = None
    onnx_size: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    """Versions on disk and the ``CURRENT`` pointer."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[str]:
        """Registered versions, oldest first."""
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def next_version(self) -> str:
        """The version name a new model gets (``v1``, ``v2``, ...)."""
        vs = self.versions()
        return f"v{int(vs[-1][1:]) + 1}" if vs else "v1"

    def path(self, version: str) -> Path:
        if not _VERSION.match(version):
            raise ValueError(f"{version!r} is not a model version name (v1, v2, ...)")
        return self.root / version

    def register(self, fitted: FittedModel, *, parent: str | None = None, make_current: bool = True,
                 window: tuple[float, float] | None = None) -> ModelBundle:
        """Write ``fitted`` as a bundle named ``fitted.version`` and optionally promote it.

        Raises:
            FileExistsError: the version exists already (versions are immutable).
        """
        save_bundle(self.path(fitted.version), fitted.onnx_bytes, fitted.spec, version=fitted.version,
                    model=fitted.model, model_config=fitted.model.config, metrics=fitted.metrics,
                    parent_version=parent, window_start=window[0] if window else None,
                    window_end=window[1] if window else None)
        log.info("model_registered", extra={"version": fitted.version, "parent": parent,
                                            "window": list(window) if window else None})
        if make_current:
            self.promote(fitted.version)
        return load_bundle(self.path(fitted.version))

    def verify(self, version: str) -> ModelBundle:
        """Read every file of ``version`` and check sizes and sha256.

        Raises:
            CorruptModelError: a file is missing, truncated, altered or unreadable.
        """
        bundle = load_bundle(self.path(version))
        bundle.read_onnx()
        if bundle.meta.state_sha256 is not None:
            _read_verified(bundle.path / STATE_FILE, bundle.meta.state_size, bundle.meta.state_sha256)
        if bundle.meta.version != version:
            raise CorruptModelError(f"{bundle.path}: meta.json names version {bundle.meta.version!r}")
        return bundle

    def promote(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` after verifying it (atomic replace).

        Raises:
            FileNotFoundError: ``version`` is not registered.
            CorruptModelError: ``version`` fails verification (``CURRENT`` is left unchanged).
        """
        if not (self.path(version) / "meta.json").exists():
            raise FileNotFoundError(f"model version {version!r} is not registered in {self.root}")
        self.verify(version)
        tmp = self.root / f"CURRENT.tmp-{os.getpid()}"
        with open(tmp, "w") as handle:
            handle.write(version + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / "CURRENT")
        log.info("model_promoted", extra={"version": version})

    def current(self) -> str | None:
        """The serving version, or None if nothing was promoted yet (or ``CURRENT`` is unreadable,
        which is logged as ``registry_current_corrupt``)."""
        p = self.root / "CURRENT"
        try:
            text = p.read_text().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.error("registry_current_corrupt", extra={"path": str(p), "reason": str(exc)})
            return None
        if not _VERSION.match(text):
            log.error("registry_current_corrupt", extra={"path": str(p), "reason": f"content {text[:40]!r}"})
            return None
        return text

    def load(self, version: str | None = None) -> ModelBundle:
        """The bundle of ``version`` (default: current); its files are verified when read."""
        v = version or self.current()
        if v is None:
            raise FileNotFoundError(f"no current model in {self.root}; train one first")
        return load_bundle(self.path(v))

    def info(self, version: str, *, verify: bool = False) -> VersionInfo:
        """Metadata of ``version``; ``status="corrupt"`` instead of raising (``verify`` reads files)."""
        is_current = version == self.current()
        try:
            bundle = self.verify(version) if verify else load_bundle(self.path(version))
        except CorruptModelError as exc:
            return VersionInfo(version=version, status="corrupt", current=is_current, error=str(exc))
        m = bundle.meta
        return VersionInfo(version=version, status="ok", current=is_current, created_ts=m.created_ts,
                           parent_version=m.parent_version, window_start=m.window_start,
                           window_end=m.window_end, onnx_sha256=m.onnx_sha256, onnx_size=m.onnx_size,
                           metrics=dict(m.metrics))

    def list_versions(self, *, verify: bool = False) -> list[VersionInfo]:
        """:meth:`info` of every version, oldest first."""
        return [self.info(v, verify=verify) for v in self.versions()]

    def rollback_target(self, version: str | None = None) -> str:
        """The version to serve instead of ``version`` (default: current).

        The parent of ``version`` if it is registered and verifies, else the newest older
        version that verifies.

        Raises:
            FileNotFoundError: there is nothing to roll back to.
        """
        v = version or self.current()
        if v is None:
            raise FileNotFoundError(f"no current model in {self.root}: nothing to roll back")
        candidates: list[str] = []
        try:
            parent = load_bundle(self.path(v)).meta.parent_version
        except CorruptModelError:
            parent = None
        if parent is not None and _VERSION.match(parent):
            candidates.append(parent)
        n = int(v[1:])
        candidates += [o for o in reversed(self.versions()) if int(o[1:]) < n and o not in candidates]
        for cand in candidates:
            try:
                self.verify(cand)
                return cand
            except CorruptModelError as exc:
                log.warning("rollback_candidate_corrupt", extra={"version": cand, "reason": str(exc)})
        raise FileNotFoundError(f"no loadable version older than {v} in {self.root}")

    def rollback(self) -> str:
        """Promote :meth:`rollback_target` and return it."""
        target = self.rollback_target()
        log.info("model_rollback", extra={"from": self.current(), "to": target})
        self.promote(target)
        return target

    def announcement(self, version: str) -> ModelAnnouncement:
        """The ``models``-topic announcement of a registered ``version`` (path, sha256, metrics).

        Only finite numeric metrics are carried (the event's ``metrics`` is ``dict[str, float]``;
        a NaN would be encoded as ``null`` and make the announcement invalid).
        """
        bundle = self.load(version)
        metrics = {k: float(v) for k, v in bundle.meta.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        return ModelAnnouncement(version=version, path=str(bundle.path), sha256=bundle.meta.onnx_sha256,
                                 created_ts=bundle.meta.created_ts, metrics=metrics)


class RegistryLocked(RuntimeError):
    """Another process holds the registry lock (``pid`` is the holder's, if readable)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is held by {'pid ' + str(pid) if pid else 'another process'}: "
                         "only one trainer may run per registry")
        self.pid = pid


class RegistryLock:
    """Exclusive lock on ``<registry>/trainer.lock``: at most one trainer per registry.

    Uses ``fcntl.flock`` (advisory, per open file), so the kernel releases it when the holder
    exits or crashes: no stale lock to clean up. The holder's pid is written into the file for
    diagnostics. Works on local filesystems; on NFS ``flock`` may not be shared between hosts,
    so run the trainer once per cluster (one deployment, replicas: 1).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RegistryLock:
        """Take the lock or raise :class:`RegistryLocked` at once (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RegistryLocked(self.path, self.holder_pid()) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def holder_pid(self) -> int | None:
        """The pid written by the current (or last) holder."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def __enter__(self) -> RegistryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
