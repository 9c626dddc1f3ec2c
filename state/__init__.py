"""The memories, one subpackage each, behind one snapshot/restore contract. Imports only `streams`.

* :mod:`reloop.state.error_memory` -- the ReLoop2 error memory (:class:`ErrorMemory`);
* :mod:`reloop.state.media` -- the per-user media memory (:class:`MediaMemory`);
* :mod:`reloop.state.schemas` -- the error-schema cache (:class:`SchemaCache`);
* :mod:`reloop.state.snapshots` -- the contract (:class:`Snapshottable`: ``snapshot()`` to
  plain arrays, ``restore(arrays, config=None)``) and atomic ``.npz`` files.

The names below are loaded on first use, so ``import reloop.state`` stays cheap.

>>> from reloop.state import ErrorMemory, Snapshottable
>>> ErrorMemory.__module__, Snapshottable.__module__
('reloop.state.error_memory.memory', 'reloop.state.snapshots')
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ErrorMemory": "reloop.state.error_memory", "ErrorMemoryConfig": "reloop.state.error_memory",
    "MediaMemory": "reloop.state.media", "MediaMemoryConfig": "reloop.state.media",
    "SchemaCache": "reloop.state.schemas", "SchemaCacheConfig": "reloop.state.schemas",
    "Snapshottable": "reloop.state.snapshots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
