#!/usr/bin/env bash
# Set up napari-cuts in a virtual environment (.venv, or $NAPARI_CUTS_VENV) on a fresh
# Debian/Ubuntu machine with any Python >= 3.10, the system one included (PEP 668:
# Debian 12 and Ubuntu >= 23.04 refuse `pip install` outside a venv).
#   bash scripts/setup.sh          the package, napari and a Qt binding (PyQt6)
#   bash scripts/setup.sh --test   the same plus the test tools and Xvfb
# Nothing needs activating afterwards: use .venv/bin/napari, .venv/bin/napari-cuts.
#
# torch is installed before the package, so that pip never picks a build by accident
# (a bare "torch" requirement resolves to the multi-GB CUDA build on Linux):
#   NAPARI_CUTS_TORCH=auto   (default) keep a torch already in the venv; otherwise the
#                            CUDA build where `nvidia-smi` finds a GPU, else the CPU build
#   NAPARI_CUTS_TORCH=cpu    the CPU build from PyTorch's CPU index (falls back to the
#                            default index, with a note, when that index cannot be reached)
#   NAPARI_CUTS_TORCH=cuda   the default index's build (CUDA on Linux x86_64)
#   NAPARI_CUTS_TORCH=keep   install no torch; use the one in the venv (an error if none)
#   NAPARI_CUTS_TORCH_INDEX=URL   the index for cpu/cuda instead (e.g. .../whl/cu126)
# The last lines say which torch build is installed and where it came from.
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

# --- torch: which build, from where -----------------------------------------------
TORCH_VERSION="2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)

has_nvidia_gpu() {   # an NVIDIA driver that sees at least one GPU
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}
index_reachable() {  # one quick request (10 s), so a closed network costs seconds
  "$VPY" - "$1" <<'PYEOF' >/dev/null 2>&1
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
url = sys.argv[1].rstrip("/") + "/torch/"
with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
    sys.exit(0 if r.status < 400 and r.read(512) else 1)
PYEOF
}
torch_build() {      # what the installed torch is, from torch itself
  "$VPY" - <<'PYEOF' 2>/dev/null
import torch
v = torch.version
if getattr(v, "cuda", None):
    build = f"CUDA {v.cuda} build"
elif getattr(v, "hip", None):
    build = f"ROCm {v.hip} build"
elif torch.backends.mps.is_built():
    build = "CPU build with Apple MPS"
else:
    build = "CPU build"
print(f"torch {torch.__version__} ({build})")
PYEOF
}
torch_is_cuda() { "$VPY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; }

install_torch() {    # sets torch_from
  local choice="${NAPARI_CUTS_TORCH:-auto}" have=0
  "$VPY" -c "import torch" >/dev/null 2>&1 && have=1
  case "$choice" in
    auto)
      if [ "$have" -eq 1 ]; then torch_from="the venv (already there, kept)"; return 0; fi
      if has_nvidia_gpu; then choice=cuda; else choice=cpu; fi ;;
    keep)
      if [ "$have" -eq 1 ]; then torch_from="the venv (already there, kept)"; return 0; fi
      echo "setup: NAPARI_CUTS_TORCH=keep but $VENV has no torch: install one first" \
           "($VPY -m pip install torch ...) or unset NAPARI_CUTS_TORCH" >&2
      return 1 ;;
    cpu)
      if [ "$have" -eq 1 ] && ! torch_is_cuda; then torch_from="the venv (already there, kept)"; return 0; fi ;;
    cuda)
      if [ "$have" -eq 1 ] && torch_is_cuda; then torch_from="the venv (already there, kept)"; return 0; fi ;;
    *)
      echo "setup: NAPARI_CUTS_TORCH is '$choice'; use auto, cpu, cuda or keep" >&2
      return 1 ;;
  esac
  if [ "$have" -eq 1 ]; then   # another build than the one asked for: replace it
    echo "setup: replacing $(torch_build) in $VENV (NAPARI_CUTS_TORCH=$choice)"
    "$VPY" -m pip uninstall -q -y torch
  fi
  local index="${NAPARI_CUTS_TORCH_INDEX:-}"
  [ -z "$index" ] && [ "$choice" = cpu ] && index="$CPU_INDEX"
  if [ -n "$index" ]; then
    if index_reachable "$index"; then
      echo "setup: installing torch $TORCH_VERSION ($choice) from $index"
      if "${PIP[@]}" --index-url "$index" "torch==$TORCH_VERSION"; then
        torch_from="$index"; return 0
      fi
      echo "setup: torch $TORCH_VERSION could not be installed from $index" >&2
    else
      echo "setup: $index cannot be reached (10 s)" >&2
    fi
    echo "setup: taking torch $TORCH_VERSION from the default index instead" >&2
  else
    echo "setup: installing torch $TORCH_VERSION ($choice) from the default index"
  fi
  "${PIP[@]}" "torch==$TORCH_VERSION"
  torch_from="the default index"
}
# --- end torch ----------------------------------------------------------------------

torch_from=""
install_torch
if [ "$torch_from" = "the venv (already there, kept)" ] && has_nvidia_gpu && ! torch_is_cuda; then
  echo "setup: this machine has an NVIDIA GPU but the torch in $VENV is not a CUDA build;" \
       "NAPARI_CUTS_TORCH=cuda bash scripts/setup.sh replaces it" >&2
fi
"${PIP[@]}" -e ".[$extra]"
echo "setup: napari-cuts $("$VPY" -c 'import napari_cuts; print(napari_cuts.__version__)') in $VENV (extra: $extra); use $VENV/bin/napari, $VENV/bin/napari-cuts"
echo "setup: $(torch_build) from $torch_from; choose another with NAPARI_CUTS_TORCH=cpu|cuda|keep (README)"
