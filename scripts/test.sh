#!/usr/bin/env bash
# Creates/reuses .venv, installs mrcnn with its test dependencies, runs the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k roi_align -x
set -euo pipefail
MRCNN_EXTRAS="[test]"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
.venv/bin/python -m ruff check mrcnn samples scripts tests
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
