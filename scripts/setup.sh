#!/usr/bin/env bash
# Set up napari-cuts in a virtual environment (.venv, or $NAPARI_CUTS_VENV) on a fresh
# Debian/Ubuntu machine with any Python >= 3.10, the system one included (PEP 668:
# Debian 12 and Ubuntu >= 23.04 refuse `pip install` outside a venv).
#   bash scripts/setup.sh          the package, napari and a Qt binding (PyQt6)
#   bash scripts/setup.sh --test   the same plus the test tools and Xvfb
# Nothing needs activating afterwards: use .venv/bin/napari, .venv/bin/napari-cuts.
# torch is installed first and pinned (2.13.0, CPU wheel here): a bare "torch"
# requirement on a machine without torch would pull a multi-GB CUDA build. With a GPU,
# put your CUDA build of torch into the venv first (.venv/bin/pip install torch ...);
# setup keeps it (pyproject asks torch>=2.1,<3).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="qt"
[ "${1:-}" = "--test" ] && extra="test"
PY="${PYTHON:-python3}"
VENV="${NAPARI_CUTS_VENV:-.venv}"

SUDO=""
can_apt=0
if command -v apt-get >/dev/null 2>&1; then
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then can_apt=1; fi
fi
apt_install() {
  if [ "$can_apt" -eq 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    [ -n "${_apt_updated:-}" ] || { $SUDO apt-get update -qq; _apt_updated=1; }
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    echo "setup: not root and no sudo: cannot apt-get install $* (see README)" >&2
    return 1
  fi
}

# System libraries napari's Qt/GL stack needs on a bare system, and Xvfb for the
# headless viewer tests.
if [ "$can_apt" -eq 1 ]; then
  apt_install libfontconfig1 libgl1 libglib2.0-0 libegl1 libxkbcommon0 libdbus-1-3 \
    xvfb xauth libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 \
    libxcb-shape0 libxcb-xkb1 libxcb-image0 libxcb-render-util0
elif command -v apt-get >/dev/null 2>&1; then
  echo "setup: not root and no sudo: skipping the system libraries (see README)" >&2
fi

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "setup: napari-cuts needs Python >= 3.10; $PY is $("$PY" --version 2>&1)" >&2; exit 1; }

# The virtual environment. Debian splits venv/ensurepip into python3-venv (or
# python3.X-venv): install it where it is missing.
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    ver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install "python${ver}-venv" 2>/dev/null || apt_install python3-venv || {
      echo "setup: '$PY -m venv' fails and python3-venv cannot be installed here" >&2; exit 1; }
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --disable-pip-version-check --upgrade "pip>=23.1" >/dev/null
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
"$VPY" -m pip install -q --disable-pip-version-check -e ".[$extra]"
echo "setup: napari-cuts $("$VPY" -c 'import napari_cuts; print(napari_cuts.__version__)') in $VENV (extra: $extra); use $VENV/bin/napari, $VENV/bin/napari-cuts"
