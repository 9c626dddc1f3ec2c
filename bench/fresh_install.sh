#!/usr/bin/env bash
# A fresh venv with only `pip install .` (optionally with extras): the README's library example
# runs, no generic top-level package (models, ops, state, streams, processors) is installed, and
# the worker and replay modules import without torch unless the `train` extra was asked for.
# Prints the size of the venv's site-packages.
#
#   bash bench/fresh_install.sh            # base install
#   bash bench/fresh_install.sh train      # with the train extra (torch)
#   KEEP=1 VENV=/tmp/v bash bench/fresh_install.sh
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-$(mktemp -d /tmp/reloop-fresh.XXXXXX)/venv}"
# Build from a clean copy: setuptools would leave build/ in the checkout, and a stale
# build/lib could carry removed modules into the wheel.
COPY="$(mktemp -d /tmp/reloop-src.XXXXXX)"
"$PYTHON" -c 'import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "*.egg-info", "reports", ".hypothesis", ".pytest_cache", "__pycache__"))' \
  "$SRC" "$COPY/reloop"
SPEC="$COPY/reloop"
[ -n "$EXTRAS" ] && SPEC="$SPEC[$EXTRAS]"
cleanup() { rm -rf "$COPY"; [ -n "${KEEP:-}" ] || rm -rf "$(dirname "$VENV")"; }
trap cleanup EXIT

t0=$(date +%s)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "$SPEC"
echo "installed $SPEC into $VENV in $(( $(date +%s) - t0 )) s"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "site-packages: $(du -sh "$SITE" | cut -f1)"
[ -d "$SITE/torch" ] && echo "  of which torch: $(du -sh "$SITE/torch" | cut -f1)"

cd "$(mktemp -d)"  # away from the checkout: only the installed package can be imported
unset PYTHONPATH
PY="$VENV/bin/python"

# The README's "Use it as a library" example: the error memory inside the user's own scorer.
"$PY" -c '
import numpy as np
import reloop

rng = np.random.default_rng(0)
W = rng.normal(size=(5, 8))

def my_scorer(x):  # the user model: features (n, 5) -> p (n,), hidden (n, 8)
    return np.full(len(x), 0.1), np.tanh(x @ W)

memory = reloop.ErrorMemory(dim=8, config=reloop.ErrorMemoryConfig(tables=16, bits=6, lam=1.0))
hot = rng.normal(size=(1, 5)) + 0.05 * rng.normal(size=(200, 5))
p, hidden = my_scorer(hot)
codes = memory.codes(hidden)
memory.write(codes, y=np.ones(200), p=p, ts=np.arange(200.0))  # labelled errors
p, hidden = my_scorer(np.vstack([hot[:1], -hot[:1]]))
compensated, evidence = memory.compensate(p, memory.codes(hidden), now=200.0)
print("compensated", compensated.round(2).tolist(), "evidence", evidence.round(1).tolist())
assert compensated.round(2).tolist() == [0.99, 0.1]
assert reloop.__file__.startswith("'"$SITE"'"), reloop.__file__
'

for name in models ops state streams processors testing; do
  if "$PY" -c "import $name" 2>/dev/null; then
    echo "FAIL: 'import $name' found a top-level package"; exit 1
  fi
done
echo "ok: no top-level models, ops, state, streams, processors, testing"

"$PY" -c 'import reloop.ops.worker, reloop.ops.replay, reloop.processors.step; print("ok: worker, replay and step modules import")'
"$VENV/bin/reloop" --help > /dev/null && echo "ok: reloop --help"
if "$PY" -c "import torch" 2>/dev/null; then
  echo "torch: installed"
else
  echo "torch: not installed"
  "$PY" -c '
from reloop.models.fit import fit_model
try:
    fit_model([], None, feature_defaults=None, model_config=None, train_config=None, version="v1")
except ModuleNotFoundError as exc:
    print("ok: training without torch says:", exc)
else:
    raise SystemExit("training without torch did not fail")
'
fi
echo "fresh install check passed"
