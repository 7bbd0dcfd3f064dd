"""Shared fixtures: paths into the offline tiny world, and a helper to run a stage in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
# Trackio (the tiny recipes' dashboard) keeps its database here, not in the user's ~/.cache/huggingface/trackio
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="instructgpt-trackio-"))


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Recipes name paths relative to the repository root, as the README runs them."""
    monkeypatch.chdir(REPO)


def run_cli(args: list[str], env: dict[str, str | None] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command in a subprocess from the repo root (for entry points, exit codes and `accelerate launch`)."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None unsets a variable
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


# ---------------------------------------------------------------------------------------------------------------
# Steps 1 and 2 once per test session: a short SFT run, K = 4 rankings of its samples, a reward model on them.
# The collection, reward-model and PPO tests all start from these.
# ---------------------------------------------------------------------------------------------------------------

NUM_PROMPTS = 160  # prompts collected for the shared rankings (the recipe collects all 500)
FAST_RM = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "5"]


def collect(output_dir: Path, policy: Path, *extra: str) -> dict:
    from instructgpt.stages.collect import parse_args, run_collect

    (args,), recipe = parse_args([
        "recipes/tiny/collect.yaml", "--model_name_or_path", str(policy), "--output_dir", str(output_dir),
        "--report_to", "none", *extra,
    ])
    return run_collect(args, recipe)


def rm(output_dir: Path, rankings: Path, policy: Path, *extra: str) -> dict:
    from instructgpt.stages.rm import parse_args, run_rm

    (script, training, model), recipe = parse_args([
        "recipes/tiny/rm.yaml", "--model_name_or_path", str(policy), "--output_dir", str(output_dir),
        "--dataset_name", str(rankings), *FAST_RM, *extra,
    ])
    return run_rm(script, training, model, recipe)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory) -> Path:
    """A tiny SFT model (60 steps, a few seconds): the policy that collection samples from."""
    from instructgpt.stages.sft import parse_args, run_sft

    out = tmp_path_factory.mktemp("sft") / "model"
    (script, training, model), recipe = parse_args([
        "recipes/tiny/sft.yaml", "--output_dir", str(out), "--report_to", "none", "--max_steps", "60",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "20",
    ])
    run_sft(script, training, model, recipe)
    return out


@pytest.fixture(scope="session")
def collected(sft_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("collect") / "rankings"
    metrics = collect(out, sft_model, "--max_prompts", str(NUM_PROMPTS))
    return out, metrics


@pytest.fixture(scope="session")
def trained_rm(collected, sft_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rm") / "model"
    # 40 held-out prompts (240 comparisons): the held-out accuracy's standard error is about 3 points, small enough
    # for the margin in test_collect.py to test the reward model rather than which prompts were held out
    metrics = rm(out, collected[0] / "rankings.jsonl", sft_model, "--eval_fraction", "0.25")
    return out, metrics


