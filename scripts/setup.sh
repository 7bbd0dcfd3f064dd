#!/usr/bin/env bash
# Create .venv and install the project. torch comes first, pinned, so that pip takes the CPU build this machine
# serves locally instead of pulling several GB of CUDA wheels; on a GPU machine set TORCH_SPEC (e.g. "torch").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e ".[test]"
