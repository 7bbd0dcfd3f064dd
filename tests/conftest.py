"""Fixtures and hooks shared by every tier: the environment of an offline run, the repository root as the working
directory, and the session's tiny SFT model, rankings and reward model. Helpers (paths, commands, processes) live
in tests/helpers.py."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from helpers import NUM_PROMPTS, REPO, LabelApp, collect, rm, running, stop_all, stop_started_since
from instructgpt.stages.sft import parse_args as sft_args
from instructgpt.stages.sft import run_sft

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Trackio (the tiny recipes' dashboard) keeps its database here, not in the user's ~/.cache/huggingface/trackio
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="instructgpt-trackio-"))


def _stop_children_and_die(signum, frame) -> None:
    """SIGTERM (a CI timeout, `kill`): stop every process the tests started, then end as SIGTERM would have."""
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pytest_configure(config) -> None:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_children_and_die)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test body's processes end with it, passed or failed (fixtures stop their own in their teardown)."""
    before = running()
    try:
        return (yield)
    finally:
        stop_started_since(before)


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Recipes name paths relative to the repository root, as the README runs them."""
    monkeypatch.chdir(REPO)


# ---------------------------------------------------------------------------------------------------------------
# Steps 1 and 2 once per test session: a short SFT run, K = 4 rankings of its samples, a reward model on them.
# The collection, reward-model and PPO tests all start from these.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory) -> Path:
    """A tiny SFT model (60 steps, a few seconds): the policy that collection samples from."""
    out = tmp_path_factory.mktemp("sft") / "model"
    (script, training, model), recipe = sft_args(
        [
            "recipes/tiny/sft.yaml",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--max_steps",
            "60",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--logging_steps",
            "20",
        ]
    )
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


@pytest.fixture(scope="session")
def tiny_rm(sft_model, tmp_path_factory) -> Path:
    """A reward model of 4 steps on 24 prompts: enough for PPO runs that test faults, not what they learn."""
    root = tmp_path_factory.mktemp("tiny-rm")
    collect(root / "collect", sft_model, "--max_prompts", "24", "--max_new_tokens", "12")
    rm(root / "rm", root / "collect" / "rankings.jsonl", sft_model, "--max_steps", "4")
    return root / "rm"


@pytest.fixture
def label_app():
    """Start ``LabelApp(...)``s; each is stopped (with what it started) when the test ends, passed or failed."""
    apps: list[LabelApp] = []

    def start_app(*args, **kwargs) -> LabelApp:
        app = LabelApp(*args, **kwargs)
        apps.append(app)
        return app.start()

    yield start_app
    for app in apps:
        app.stop_if_running()
