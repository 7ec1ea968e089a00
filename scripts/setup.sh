#!/usr/bin/env bash
# Set up napari-cuts on a fresh Debian/Ubuntu machine (or any machine with Python >= 3.10).
#   bash scripts/setup.sh          the package, napari and a Qt binding (PyQt6)
#   bash scripts/setup.sh --test   the same plus the test tools and Xvfb
# torch is installed first and pinned (2.13.0, CPU wheel here): a bare "torch"
# requirement on a machine without torch would pull a multi-GB CUDA build. With a GPU,
# install your CUDA build of torch first; pip then keeps it (pyproject asks torch>=2.1).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="qt"
[ "${1:-}" = "--test" ] && extra="test"

# System libraries napari's Qt/GL stack needs on a bare system, and Xvfb for the
# headless viewer tests. Skipped where apt-get is missing or we are not root.
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends \
      libfontconfig1 libgl1 libglib2.0-0 libegl1 libxkbcommon0 libdbus-1-3 \
      xvfb xauth libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 \
      libxcb-shape0 libxcb-xkb1 libxcb-image0 libxcb-render-util0 >/dev/null
  else
    echo "setup: not root and no sudo: skipping the system libraries (see README)" >&2
  fi
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
"$PY" -m pip install -q --disable-pip-version-check -e ".[$extra]"
echo "setup: napari-cuts installed ($("$PY" -c 'import napari_cuts; print(napari_cuts.__version__)'), extra: $extra)"
