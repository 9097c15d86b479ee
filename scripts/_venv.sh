# Sourced by demo.sh and test.sh: create or reuse .venv and install the project into it.
# The install is skipped when setup.cfg and requirements.txt have not changed since the last one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
STAMP=.venv/.mrcnn-install-stamp
WANT="$(cat setup.cfg requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)-${MRCNN_EXTRAS:-}"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing mrcnn and its dependencies into .venv (first run takes a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet -e ".${MRCNN_EXTRAS:-}"
  echo "$WANT" > "$STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
