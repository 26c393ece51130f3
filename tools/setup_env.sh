#!/usr/bin/env bash
# Create or update the project's virtual environment (default .venv) without ever pulling a
# second torch. Called by `make setup`; safe to run again (a no-op run takes seconds).
#
#   1. torch: if the base interpreter ($OVSEG_PYTHON, default python3) already imports torch
#      (say a CUDA build on a GPU machine), the venv is created with --system-site-packages and
#      that torch is used. Otherwise torch==2.13.0 (the CPU wheel on this machine) is installed.
#   2. torchvision: the release that matches the installed torch, with --no-deps.
#   3. detectron2: an importable one is kept; otherwise tools/install_detectron2.py installs
#      the registry's pure-Python v0.6 with the numpy/Pillow fixes.
#   4. requirements.txt (+ constraints.txt, every transitive pin) under a constraint that holds
#      torch and torchvision at their installed versions; then ovseg_d2 itself, editable.
set -euo pipefail

VENV=${1:-.venv}
BASE_PYTHON=${OVSEG_PYTHON:-python3}
TORCH_CPU_VERSION=2.13.0
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"

log() { echo "[setup] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  if "$BASE_PYTHON" -c "import torch" >/dev/null 2>&1; then
    log "base interpreter has torch $("$BASE_PYTHON" -c 'import torch; print(torch.__version__)'); creating $VENV with --system-site-packages to use it"
    "$BASE_PYTHON" -m venv --system-site-packages "$VENV"
  else
    log "creating $VENV"
    "$BASE_PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 1. torch
if "$PY" -c "import torch" >/dev/null 2>&1; then
  log "torch $("$PY" -c 'import torch; print(torch.__version__)') present; leaving it alone"
else
  log "installing torch==$TORCH_CPU_VERSION"
  "${PIP[@]}" install -q "torch==$TORCH_CPU_VERSION"
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")

# 2. torchvision matching torch: 2.M.P -> 0.(M+15).P
TV_VERSION=$("$PY" -c "v='$TORCH_VERSION'.split('.'); print(f'0.{int(v[1]) + 15}.{v[2]}')")
if "$PY" -c "import importlib.metadata as m; m.version('torchvision')" >/dev/null 2>&1; then
  log "torchvision $("$PY" -c "import importlib.metadata as m; print(m.version('torchvision'))") present; leaving it alone"
else
  log "installing torchvision==$TV_VERSION --no-deps (matches torch $TORCH_VERSION)"
  "${PIP[@]}" install -q --no-deps "torchvision==$TV_VERSION"
fi

# 3. detectron2
"$PY" tools/install_detectron2.py

# 4. pinned requirements, with torch and torchvision held where they are
HOLD=$(mktemp)
trap 'rm -f "$HOLD"' EXIT
"$PY" - >"$HOLD" <<'PYEOF'
import importlib.metadata as m
for name in ("torch", "torchvision"):
    print(f"{name}=={m.version(name)}")
PYEOF
log "installing requirements.txt (torch and torchvision held: $(tr '\n' ' ' <"$HOLD"))"
"${PIP[@]}" install -q -r requirements.txt -c constraints.txt -c "$HOLD"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

# Never two torches: fail loudly if anything above replaced the one we started with.
AFTER=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
if [ "$AFTER" != "$TORCH_VERSION" ]; then
  echo "[setup] ERROR: torch changed from $TORCH_VERSION to $AFTER during setup" >&2
  exit 1
fi
log "done: $("$PY" -c 'import ovseg_d2, torch, torchvision, detectron2; print("torch", torch.__version__, "| torchvision", torchvision.__version__, "| detectron2", detectron2.__version__, "| remedies applied:", ovseg_d2._environment.APPLIED)')"
