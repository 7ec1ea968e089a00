#!/usr/bin/env bash
# The test command of the README (CI runs this same file), in the venv that
# scripts/setup.sh made (.venv, or $NAPARI_CUTS_VENV); nothing to activate.
# pytest-xvfb starts a virtual X server for the napari viewer tests; a missing
# Xvfb is an error, not a silent skip. Exit 5 (no test collected) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${NAPARI_CUTS_VENV:-.venv}"
if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; else PY="${PYTHON:-python3}"; fi
unset QT_QPA_PLATFORM   # with Xvfb, offscreen gives blank screenshots
"$PY" -m pytest -p xvfb --xvfb-backend=xvfb -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$rc"
