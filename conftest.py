"""Doctests of the package folders under their installed names (pytest ``--doctest-modules``).

pytest would import ``streams/events.py`` as a top-level ``streams.events``, a second copy of
``reloop.streams.events`` (every module, with its numba kernels and torch models, imported
twice, and its classes unequal to the ones the code under test uses). These hooks hand the
doctest collector the module imported as ``reloop.<folder>.<module>`` instead (the name the
wheel installs and the code imports), and set a folder's package up under that name too, so
each module is imported once.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest
from _pytest.doctest import DoctestModule
from _pytest.python import Package

#: repository folders installed as subpackages of ``reloop`` (pyproject.toml), and ``reloop``
PACKAGE_FOLDERS = frozenset({"streams", "state", "processors", "models", "ops", "testing", "reloop"})
ROOT = Path(__file__).resolve().parent


def installed_name(path: Path) -> str | None:
    """``reloop.<folder>.<module>`` of a module file of a package folder, else None."""
    try:
        parts = list(path.resolve().relative_to(ROOT).with_suffix("").parts)
    except ValueError:
        return None
    if not parts or parts[0] not in PACKAGE_FOLDERS:
        return None
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "reloop" else ["reloop", *parts])


class InstalledNameDoctestModule(DoctestModule):
    """A :class:`DoctestModule` that imports its file by its installed name."""

    def _getobj(self) -> ModuleType:
        name = installed_name(self.path)
        assert name is not None
        module = importlib.import_module(name)
        if Path(module.__file__ or "").resolve() != self.path.resolve():
            raise ImportError(f"{name} is {module.__file__}, not {self.path} (another checkout first on the path?)")
        return module


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    collected = yield
    if installed_name(file_path) is None:
        return collected
    return [InstalledNameDoctestModule.from_parent(parent, path=file_path) if type(c) is DoctestModule else c
            for c in collected]


class InstalledNamePackage(Package):
    """A package folder set up by importing it as ``reloop.<folder>`` (the folders define no
    ``setup_module``/``teardown_module``)."""

    def setup(self) -> None:
        name = installed_name(self.path / "__init__.py")
        assert name is not None
        importlib.import_module(name)


@pytest.hookimpl(wrapper=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector):
    collected = yield
    if type(collected) is Package and installed_name(path / "__init__.py") is not None:
        return InstalledNamePackage.from_parent(parent, path=path)
    return collected
