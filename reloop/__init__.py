"""ReLoop: a streaming online-learning pipeline for recommender systems.

The repository keeps its top-level folders (``streams/``, ``state/``, ``processors/``,
``models/``, ``ops/``, ``testing/``); an installed wheel holds them as subpackages of this
package (``reloop.streams``, ``reloop.state``, ...). In a source checkout this package also
looks for them one folder up, so ``import reloop.state`` works from a clone without
installing it.
"""

from __future__ import annotations

import os as _os

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_checkout, "streams", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 - a package's own __path__
