"""Shared fixtures: paths into the offline tiny world, and a helper to run a stage in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = REPO / "data" / "tiny"
TINY_BASE = TINY_DATA / "base-model"
FIXTURES = REPO / "tests" / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Recipes name paths relative to the repository root, as the README runs them."""
    monkeypatch.chdir(REPO)


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command in a subprocess from the repo root (for entry points, exit codes and `accelerate launch`)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def python_m(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def accelerate_launch(*args: str, num_processes: int = 2) -> list[str]:
    """Two gloo processes on a CPU machine: the DDP code path without GPUs."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        *args,
    ]
