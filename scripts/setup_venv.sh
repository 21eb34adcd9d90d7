#!/usr/bin/env bash
# Create or refresh .venv with everything d2reg needs (see ../shared/ENVIRONMENT.md).
# Idempotent: a stamp file records the hash of this script and pyproject.toml; a matching stamp skips work.
# Torch, torchvision and detectron2 already importable by the chosen python are kept (user builds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.d2reg-setup-stamp
want=$(cat scripts/setup_venv.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
quiet() { grep -v -E "WARNING: Location 'file://|is ignored|^\s*$" || true; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  # --system-site-packages lets a user's own torch/detectron2 build stay visible.
  "$PY" -m venv --system-site-packages "$VENV"
fi
VPY=$VENV/bin/python
PIP="$VPY -m pip --disable-pip-version-check"
has() { "$VPY" - "$1" <<'PYEOF' >/dev/null 2>&1
import importlib, sys
importlib.import_module(sys.argv[1])
PYEOF
}

$PIP install -q --upgrade pip 2>&1 | quiet
if has torch && has torchvision; then
  echo "[setup] torch/torchvision already importable: keeping $("$VPY" -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1 (local wheels, ~2 min)"
  $PIP install -q torch==2.14.1 torchvision==0.29.1 2>&1 | quiet
fi

echo "[setup] installing runtime dependencies"
# setuptools >= 77 builds pyproject.toml's licence metadata; < 81 keeps pkg_resources for detectron2.model_zoo
# (tests/test_user_env.py checks d2reg without it). build: `python -m build` (README; tests/test_wheel.py).
$PIP install -q "setuptools>=77,<81" wheel build termcolor yacs tabulate cloudpickle tqdm matplotlib \
  "omegaconf>=2.1,<2.4" hydra-core packaging tensorboard Pillow pycocotools fvcore iopath \
  "timm>=1.0.15" safetensors opencv-python-headless scipy shapely \
  pytest ruff transformers 2>&1 | quiet
# the optional extras the tests cover: export (ONNX, onnxruntime) and lora (peft)
$PIP install -q "onnx>=1.18" "onnxruntime>=1.23" "onnxscript>=0.3" "peft>=0.13" 2>&1 | quiet

if has detectron2.modeling; then
  echo "[setup] detectron2 already importable: keeping it"
else
  echo "[setup] installing detectron2 (sal-detectron2==0.7.2 pure-python files, see ENVIRONMENT.md)"
  PURELIB=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  $PIP install -q --no-deps --upgrade --target "$PURELIB" \
    --python-version 3.10 --only-binary=:all: sal-detectron2==0.7.2 2>&1 | quiet
fi

echo "[setup] installing d2reg (editable)"
$PIP install -q --no-deps --no-build-isolation -e . 2>&1 | quiet
"$VPY" -c "import d2reg, detectron2, timm, torch; print('[setup] ok: torch', torch.__version__, 'timm', timm.__version__, 'detectron2', detectron2.__version__)"
echo "$want" > "$STAMP"
