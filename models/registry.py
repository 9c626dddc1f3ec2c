"""Model registry: one bundle directory per version plus an atomically replaced ``CURRENT``.

Layout under ``root``::

    root/
      CURRENT             # the serving version's name (replaced with os.replace)
      v1/  model.onnx meta.json model.pt
      v2/  ...

Bundles are written by :func:`models.bundle.save_bundle` (temp dir + rename) and verified by
checksum when loaded, so a half-written or corrupted version is never served.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from models.bundle import ModelBundle, load_bundle, save_bundle
from models.fit import FittedModel

_VERSION = re.compile(r"^v(\d+)$")


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
        return self.root / version

    def register(self, fitted: FittedModel, *, parent: str | None = None, make_current: bool = True,
                 window: tuple[float, float] | None = None) -> ModelBundle:
        """Write ``fitted`` as a bundle named ``fitted.version`` and optionally promote it."""
        save_bundle(self.path(fitted.version), fitted.onnx_bytes, fitted.spec, version=fitted.version,
                    model=fitted.model, model_config=fitted.model.config, metrics=fitted.metrics,
                    parent_version=parent, window_start=window[0] if window else None,
                    window_end=window[1] if window else None)
        if make_current:
            self.promote(fitted.version)
        return load_bundle(self.path(fitted.version))

    def promote(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` (atomic replace)."""
        if not (self.path(version) / "meta.json").exists():
            raise FileNotFoundError(f"model version {version!r} is not registered in {self.root}")
        tmp = self.root / "CURRENT.tmp"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / "CURRENT")

    def current(self) -> str | None:
        """The serving version, or None if nothing was promoted yet."""
        p = self.root / "CURRENT"
        return p.read_text().strip() if p.exists() else None

    def load(self, version: str | None = None) -> ModelBundle:
        """The bundle of ``version`` (default: current), checksum-verified on read."""
        v = version or self.current()
        if v is None:
            raise FileNotFoundError(f"no current model in {self.root}; train one first")
        return load_bundle(self.path(v))
