"""RLOO on the tiny world: the reward function is the RM stage's normalized score, the stage runs end to end against
the session's SFT policy and reward model, keeps a loadable policy per checkpoint, resumes, and refuses bad input in
one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import python_m, run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER
from instructgpt.stages.rloo import parse_args, run_rloo

FAST = ["--report_to", "none", "--disable_tqdm", "true"]
# 2 prompts x 4 responses of at most 16 tokens per optimizer step: seconds per step on the tiny model
SMALL = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--max_completion_length", "16"]


def rloo(out: Path, sft: Path, rm: Path, *extra: str) -> dict:
    (script, config, model), recipe = parse_args(
        [
            "recipes/tiny/rloo.yaml",
            "--model_name_or_path",
            str(sft),
            "--reward_model_path",
            str(rm),
            "--output_dir",
            str(out),
            *FAST,
            *SMALL,
            *extra,
        ]
    )
    return run_rloo(script, config, model, recipe)


def test_reward_function_is_the_normalized_reward_model_score(trained_rm):
    """What TRL's RLOOTrainer gets from the reward function: score_responses (raw score minus the stored shift) of the
    same prompt and response text, for conversational prompts and completions as TRL passes them; the missing-EOS
    penalty falls exactly on the responses whose sampled ids have no EOS."""
    from instructgpt.modeling.reward import RewardModelReward, load_reward_model, score_responses

    rm_path = trained_rm[0]
    prompts = ["What is the sum of 6 and 4?", "What is the habitat of the cindermouse?", "Name the color of snow."]
    responses = ["The sum of 6 and 4 is 10.", "The cindermouse lives in the volcano.", "Snow is"]
    model, tokenizer, shift = load_reward_model(str(rm_path))
    assert shift != 0.0 and shift == json.loads((rm_path / "reward_normalization.json").read_text())["shift"]
    raw = score_responses(model, tokenizer, prompts, responses, shift=0.0)
    expected = score_responses(model, tokenizer, prompts, responses)
    assert expected == pytest.approx([r - shift for r in raw], abs=1e-6)

    eos = tokenizer.eos_token_id
    reward = RewardModelReward(str(rm_path), missing_eos_penalty=1.5, eos_token_ids=[eos])
    conversational = reward(
        prompts=[[{"role": "user", "content": p}] for p in prompts],
        completions=[[{"role": "assistant", "content": r}] for r in responses],
    )
    assert conversational == pytest.approx(expected, abs=1e-5)
    assert reward(prompts=prompts, completions=responses) == pytest.approx(expected, abs=1e-5)  # plain strings too
    penalized = reward(prompts=prompts, completions=responses, completion_ids=[[5, eos], [7, 8, eos], [9, 10]])
    assert penalized == pytest.approx([expected[0], expected[1], expected[2] - 1.5], abs=1e-5)
    assert len(set(round(x, 4) for x in expected)) == 3  # a real score each, not a constant


def test_rloo_runs_end_to_end_keeps_a_policy_per_checkpoint_and_resumes(sft_model, trained_rm, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "rloo"
    metrics = rloo(out, sft_model, trained_rm[0], "--max_steps", "2", "--save_steps", "1")
    assert metrics["global_step"] == 2
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["stage"] == "rloo" and marker["metrics"]["global_step"] == 2
    # the first logged step samples from the SFT policy itself: KL to the reference (the SFT model) is 0
    assert metrics["last_logged_kl"] is not None
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    first = [row for row in state["log_history"] if "kl" in row][0]
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)

    # checkpoint-1's resume state was rotated out (save_total_limit: 1); its policy stays and loads
    assert not (out / "checkpoint-1" / "trainer_state.json").exists()
    assert not (out / "checkpoint-1" / "optimizer.pt").exists()
    assert (out / "checkpoint-2" / "optimizer.pt").is_file()
    for step in (1, 2):
        policy = AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{step}" / "policy")
        assert policy.config.model_type == "gpt2"
    # the policy trained: the final weights differ from the SFT model's and equal the last checkpoint's
    final, sft = load_file(out / "model.safetensors"), load_file(sft_model / "model.safetensors")
    last = load_file(out / "checkpoint-2" / "policy" / "model.safetensors")
    assert any(not torch.equal(final[k], sft[k]) for k in sft)
    assert all(torch.equal(final[k], last[k]) for k in last)
    assert "RLOO" in (out / "README.md").read_text()

    # a finished run is never overwritten
    with pytest.raises(InstructGPTError, match="already holds a trained model"):
        rloo(out, sft_model, trained_rm[0], "--max_steps", "2")

    # an interrupted run (no marker, no final weights) resumes from its last checkpoint and continues its steps
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in (RUN_MARKER, "model.safetensors"):
        (resumed / name).unlink()
    metrics = rloo(resumed, sft_model, trained_rm[0], "--max_steps", "3", "--save_steps", "1")
    assert metrics["global_step"] == 3
    history = json.loads((resumed / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert [row["step"] for row in history if "kl" in row] == [1, 2, 3]  # steps 1-2 from the checkpoint, 3 new


def test_bad_input_is_one_line_naming_the_key(sft_model, trained_rm, tmp_path):
    """From the command line: the SFT model given as the reward model (it has no score head) is one line, exit != 0."""
    result = run_cli(
        python_m(
            "instructgpt.stages.rloo",
            "recipes/tiny/rloo.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--reward_model_path",
            str(sft_model),
            "--output_dir",
            str(tmp_path / "o"),
            "--report_to",
            "none",
        )
    )
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"`reward_model_path`: .* holds a GPT2LMHeadModel", lines[-1]), lines[-1]
    assert not (tmp_path / "o" / RUN_MARKER).exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_generations", "1"], "RLOO requires at least 2 generations per prompt"),
        (["--dataset_name", "data/tiny/nope.jsonl"], "`dataset_name`"),
        (["--missing_eos_penalty", "-1"], "`missing_eos_penalty` must be at least 0"),
        (["--max_completion_length", "128"], "`max_completion_length` \\(128\\) leaves no room for a prompt"),
        (
            ["--eval_dataset_name", "data/tiny/eval_prompts.jsonl", "--per_device_eval_batch_size", "6"],
            "`per_device_eval_batch_size` x processes \\(6\\) must be a multiple of",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_key(sft_model, trained_rm, tmp_path, extra, message):
    with pytest.raises(InstructGPTError, match=message):
        rloo(tmp_path / "o", sft_model, trained_rm[0], *extra)
    assert not (tmp_path / "o" / RUN_MARKER).exists()


def test_too_few_prompts_for_one_generation_batch_is_refused(sft_model, trained_rm, tmp_path):
    with pytest.raises(InstructGPTError, match="has 1 usable prompts, fewer than the 2 that one generation batch"):
        rloo(tmp_path / "few", sft_model, trained_rm[0], "--max_train_samples", "1", "--max_steps", "1")
    assert not (tmp_path / "few" / RUN_MARKER).exists()


def test_gpt2_recipe_runs_on_a_local_ultrafeedback_binarized_fixture(sft_model, trained_rm, tmp_path):
    """recipes/rloo.yaml as written (UltraFeedback prompts through the Hub loading code, its splits, the final
    held-out evaluation), with the tiny models and a local folder of the same schema in place of GPT-2 and the Hub."""
    from helpers import FIXTURES

    out = tmp_path / "gpt2-rloo"
    (script, config, model), recipe = parse_args(
        [
            "recipes/rloo.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--reward_model_path",
            str(trained_rm[0]),
            "--dataset_name",
            str(FIXTURES / "ultrafeedback_binarized"),
            "--output_dir",
            str(out),
            *FAST,
            *SMALL,
            "--max_steps",
            "1",
            "--save_strategy",
            "no",
            "--max_eval_samples",
            "4",
            "--per_device_eval_batch_size",
            "8",
        ]
    )
    assert (script.dataset_train_split, script.dataset_test_split) == ("train_gen", "test_gen")
    metrics = run_rloo(script, config, model, recipe)
    assert metrics["global_step"] == 1 and "eval_reward" in metrics
    assert (out / "model.safetensors").is_file() and (out / RUN_MARKER).is_file()


def test_lora_checkpoint_policies_are_adapters_on_the_sft_model_and_the_output_is_merged(
    sft_model, trained_rm, tmp_path
):
    """With LoRA the reference is the adapter-free policy (TRL's disable-adapter path); checkpoint-N/policy is the
    adapter, whose base is the SFT model's absolute path; output_dir holds the merged model."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    metrics = rloo(
        out,
        sft_model,
        trained_rm[0],
        "--max_steps",
        "1",
        "--save_steps",
        "1",
        "--use_peft",
        "true",
        "--learning_rate",
        "1e-2",
    )
    assert metrics["global_step"] == 1
    adapter = json.loads((out / "checkpoint-1" / "policy" / "adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]) == sft_model.resolve()
    policy = AutoModelForCausalLM.from_pretrained(out / "checkpoint-1" / "policy")
    assert hasattr(policy, "peft_config")
    merged, sft = load_file(out / "model.safetensors"), load_file(sft_model / "model.safetensors")
    assert not any("lora" in k for k in merged) and set(merged) == set(sft)
    assert any(not torch.equal(merged[k], sft[k]) for k in sft)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
