"""DPO: the pairwise and Plackett-Luce losses, and the `dpo` stage on the tiny world (pairs and whole rankings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck

from conftest import FIXTURES, python_m, run_cli
from instructgpt.data.rankings import split_by_prompt
from instructgpt.infra.files import RUN_MARKER
from instructgpt.losses import dpo_pairwise_loss, plackett_luce_dpo_loss, ranking_pairs

# --------------------------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------------------------


def _logps(seed: int, *shape: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=gen, dtype=torch.float64) - 20).requires_grad_(True)


def test_dpo_pairwise_loss_gradcheck():
    args = tuple(_logps(seed, 6) for seed in range(4))
    assert gradcheck(lambda *a: dpo_pairwise_loss(*a, beta=0.3), args, eps=1e-6, atol=1e-6)


def test_plackett_luce_loss_gradcheck_with_ragged_k_and_garbage_padding():
    policy, ref = _logps(10, 4, 5), _logps(11, 4, 5)
    k = torch.tensor([5, 3, 2, 4])
    assert gradcheck(lambda p, r: plackett_luce_dpo_loss(p, r, 0.5, k), (policy, ref), eps=1e-6, atol=1e-6)
    # padding may hold anything: neither the value nor the gradient sees it
    loss = plackett_luce_dpo_loss(policy, ref, 0.5, k)
    garbage = policy.detach().clone()
    garbage[1, 3:], garbage[2, 2:] = float("inf"), float("nan")
    garbage.requires_grad_(True)
    poisoned = plackett_luce_dpo_loss(garbage, ref.detach(), 0.5, k)
    torch.testing.assert_close(poisoned, loss.detach(), rtol=1e-14, atol=0)
    poisoned.backward()
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[1, 3:] == 0).all() and (garbage.grad[2, 2:] == 0).all()


def test_plackett_luce_equals_the_pairwise_loss_at_k2():
    policy, ref = _logps(20, 16, 2), _logps(21, 16, 2)
    for beta in (0.01, 0.1, 1.0, 5.0):
        listwise = plackett_luce_dpo_loss(policy, ref, beta)
        pairwise = dpo_pairwise_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
        torch.testing.assert_close(listwise, pairwise, rtol=1e-13, atol=0)
        g_list, = torch.autograd.grad(listwise, policy)
        g_pair, = torch.autograd.grad(pairwise, policy)
        torch.testing.assert_close(g_list, g_pair, rtol=1e-12, atol=1e-15)


def test_plackett_luce_by_hand_at_k3():
    # ranking 1: beta*h = 0.5 * [1, 0, -2] = [0.5, 0, -1]
    #   L1 = -[0.5 - log(e^0.5 + e^0 + e^-1)] - [0 - log(e^0 + e^-1)] - [-1 - (-1)]
    #      = log(e^0.5 + 1 + e^-1) - 0.5 + log(1 + e^-1) = 0.9173922928549512
    # ranking 2 (K = 2, padded): beta*h = [0.3, -0.6]: L2 = log(e^0.3 + e^-0.6) - 0.3 = 0.34115387473208786
    ref = torch.tensor([[-5.0, -7.0, -1.0], [-2.0, -3.0, 123.0]], dtype=torch.float64)
    policy = ref + torch.tensor([[1.0, 0.0, -2.0], [0.6, -1.2, 0.0]], dtype=torch.float64)
    loss = plackett_luce_dpo_loss(policy, ref, 0.5, torch.tensor([3, 2]))
    assert loss.item() == pytest.approx((0.9173922928549512 + 0.34115387473208786) / 2, rel=1e-14)
    # a better-ranked response gaining likelihood lowers the loss; the worst one gaining raises it
    assert plackett_luce_dpo_loss(policy + torch.tensor([[0.1, 0, 0], [0, 0, 0]]), ref, 0.5, torch.tensor([3, 2])) < loss
    assert plackett_luce_dpo_loss(policy + torch.tensor([[0, 0, 0.1], [0, 0, 0]]), ref, 0.5, torch.tensor([3, 2])) > loss


def test_plackett_luce_refuses_a_ranking_of_one():
    with pytest.raises(ValueError, match="2..3 responses"):
        plackett_luce_dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.1, torch.tensor([3, 1]))


def test_ranking_pairs_are_all_ordered_pairs():
    assert ranking_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(ranking_pairs(9)) == math.comb(9, 2)


# --------------------------------------------------------------------------------------------------------------
# The stage, end to end on the tiny world (the session's SFT model and its collected K = 4 rankings)
# --------------------------------------------------------------------------------------------------------------

FAST = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true"]


def dpo(output_dir: Path, policy: Path, rankings: Path | str, *extra: str, recipe: str = "recipes/tiny/dpo.yaml") -> dict:
    from instructgpt.stages.dpo import parse_args, run_dpo

    (script, config, model), parsed = parse_args([
        recipe, "--model_name_or_path", str(policy), "--dataset_name", str(rankings), "--output_dir", str(output_dir),
        *FAST, *extra,
    ])
    return run_dpo(script, config, model, parsed)


def _rankings(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _changed_weights(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    before, after = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return max((before[k].double() - after[k].double()).abs().max().item() for k in before)


def test_dpo_on_pairs_of_the_collected_rankings(sft_model, collected, tmp_path):
    """`ranking_loss: pairs`: every K = 4 ranking becomes its 6 pairs; the reference is the SFT model, so the
    first step's loss is exactly log 2 (policy = reference); training moves the policy and the held-out implicit
    reward orders pairs as the labeler did more often than chance."""
    rankings = collected[0] / "rankings.jsonl"
    out = tmp_path / "dpo"
    metrics = dpo(out, sft_model, rankings, "--max_steps", "6", "--learning_rate", "3e-4",
                  "--eval_fraction", "0.25", "--per_device_train_batch_size", "32")
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["stage"] == "dpo" and marker["metrics"]["ranking_loss"] == "pairs"
    rows = _rankings(rankings)
    held_out = len(rows) - metrics["train_rankings"]
    assert 0 < held_out < len(rows) and metrics["global_step"] == 6
    train_pairs = metrics["train_pairs"]
    assert sum(math.comb(len(r["responses"]), 2) for r in rows) > train_pairs >= 3 * metrics["train_rankings"]
    assert metrics["first_logged_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["last_logged_loss"] < math.log(2)
    assert 0.5 < metrics["eval_rewards/accuracies"] <= 1.0 and metrics["eval_loss"] < math.log(2)
    assert _changed_weights(sft_model, out) > 1e-4
    # the saved policy generates like the SFT model does: chat template beside it, EOS as the stop
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(sft_model).chat_template
    assert AutoModelForCausalLM.from_pretrained(out).generation_config.eos_token_id == tokenizer.eos_token_id
    assert "dpo" in (out / "README.md").read_text()


def test_plackett_luce_dpo_on_whole_rankings(sft_model, collected, tmp_path):
    """`ranking_loss: plackett_luce`: one example per ranking; the first loss is log K! (every order equally likely
    while the policy is the reference), and the held-out implicit reward beats chance on pairs and on Kendall's tau."""
    rankings = collected[0] / "rankings.jsonl"
    out = tmp_path / "dpo-pl"
    metrics = dpo(out, sft_model, rankings, "--ranking_loss", "plackett_luce", "--max_steps", "6",
                  "--learning_rate", "3e-4", "--eval_fraction", "0.25", "--per_device_train_batch_size", "8")
    rows = _rankings(rankings)
    sizes = [len(r["responses"]) for r in rows]
    assert metrics["ranking_loss"] == "plackett_luce" and metrics["global_step"] == 6
    if set(sizes) == {4}:
        assert metrics["first_logged_loss"] == pytest.approx(math.log(24), abs=1e-4)
    assert math.log(min(math.factorial(k) for k in sizes)) - 1e-4 <= metrics["first_logged_loss"]
    assert metrics["last_logged_loss"] < metrics["first_logged_loss"]
    _, held_out = split_by_prompt(rows, 0.25, seed=42)  # the recipe's seed: the same prompts as the stage held out
    assert metrics["eval_num_rankings"] == len(held_out) == len(rows) - metrics["train_rankings"]
    assert metrics["eval_num_comparisons"] == sum(math.comb(len(r["responses"]), 2) for r in held_out)
    assert 0.5 < metrics["eval_pairwise_accuracy"] <= 1.0 and metrics["eval_kendall_tau"] > 0
    assert _changed_weights(sft_model, out) > 1e-4
    assert json.loads((out / RUN_MARKER).read_text())["metrics"]["eval_kendall_tau"] == metrics["eval_kendall_tau"]


def test_gpt2_recipe_runs_on_a_local_ultrafeedback_binarized_fixture(sft_model, tmp_path):
    """recipes/dpo.yaml as written (UltraFeedback's binarized pairs from the Hub loading code, its preference
    splits), with the tiny SFT model and a local folder of the same schema in place of GPT-2 and the Hub."""
    out = tmp_path / "gpt2-dpo"
    metrics = dpo(out, sft_model, FIXTURES / "ultrafeedback_binarized", "--max_steps", "2",
                  "--gradient_accumulation_steps", "1", "--activation_checkpointing", "false",
                  "--eval_strategy", "no", "--report_to", "none", recipe="recipes/dpo.yaml")
    assert metrics["global_step"] == 2 and metrics["train_rankings"] == 40 and metrics["train_pairs"] == 40
    assert metrics["eval_loss"] > 0 and 0 <= metrics["eval_rewards/accuracies"] <= 1  # the whole test_prefs split
    assert (out / "model.safetensors").is_file() and (out / RUN_MARKER).is_file()


# --------------------------------------------------------------------------------------------------------------
# No silent failure: bad data, keys that cannot apply, a finished run, an interrupted one
# --------------------------------------------------------------------------------------------------------------


def test_bad_rankings_name_the_file_and_row(tmp_path):
    from instructgpt.data import DataError

    bad = _write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "What is 2 plus 2?", "responses": ["4.", "5."]},
        {"prompt": "What is 3 plus 3?", "responses": ["6."]},
    ])
    with pytest.raises(DataError, match=r"bad\.jsonl.* row 1: a ranking needs at least 2 responses, got 1"):
        dpo(tmp_path / "out", Path("data/tiny/base-model"), bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("loss_type", "ipo"), ("precompute_ref_log_probs", "true"),
                                        ("ld_alpha", "0.5")])
def test_keys_the_plackett_luce_loss_cannot_honour_are_refused(tmp_path, key, value):
    from instructgpt.infra.errors import InstructGPTError

    with pytest.raises(InstructGPTError, match=rf"`{key}: .*` does not apply with `ranking_loss: plackett_luce`"):
        dpo(tmp_path / "out", Path("data/tiny/base-model"), "data/tiny/rm_prompts.jsonl",
            "--ranking_loss", "plackett_luce", f"--{key}", value)


def test_command_line_errors_are_one_line_and_a_finished_run_is_never_overwritten(tmp_path):
    rows = [{"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", f"{i + 2}.", "No idea."]} for i in range(8)]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    out = tmp_path / "out"
    base = ["instructgpt.stages.dpo", "recipes/tiny/dpo.yaml", "--model_name_or_path", "data/tiny/base-model",
            "--dataset_name", data, "--output_dir", str(out), *FAST]
    done = run_cli(python_m(*base, "--max_steps", "1", "--eval_fraction", "0"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / RUN_MARKER).read_text())["metrics"]["train_pairs"] == 8 * 3
    before = (out / "model.safetensors").read_bytes()
    again = run_cli(python_m(*base, "--max_steps", "1", "--eval_fraction", "0"))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "already holds a trained model; it was not touched" in again.stderr
    assert (out / "model.safetensors").read_bytes() == before
    wrong = run_cli(python_m(*base, "--ranking_loss", "listwise", "--output_dir", str(tmp_path / "other")))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr and "ranking_loss" in wrong.stderr


def test_a_killed_plackett_luce_run_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL after step 3 (checkpoint-2 saved): the same command continues from step 2 and finishes at step 4."""
    from instructgpt.infra.guards import FAULT_ENV

    rows = [{"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", f"{i + 2}.", "No idea."]} for i in range(16)]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    out = tmp_path / "out"
    command = python_m(
        "instructgpt.stages.dpo", "recipes/tiny/dpo.yaml", "--model_name_or_path", "data/tiny/base-model",
        "--dataset_name", data, "--output_dir", str(out), "--ranking_loss", "plackett_luce", "--eval_fraction", "0",
        "--max_steps", "4", "--per_device_train_batch_size", "4", *FAST, "--save_strategy", "steps", "--save_steps", "2",
    )
    killed = run_cli(command, env={FAULT_ENV: "train_step:3"})
    assert killed.returncode == -9 and not (out / RUN_MARKER).exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = run_cli(command)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming the interrupted run" in resumed.stderr + resumed.stdout
    assert json.loads((out / RUN_MARKER).read_text())["metrics"]["global_step"] == 4


def test_with_lora_the_reference_is_the_adapter_free_model_and_the_output_is_merged(tmp_path):
    """No second copy under LoRA: the adapter starts at zero, so policy = reference and the first loss is log K!
    exactly; the saved model is merged (loads without peft) and the adapter is kept beside it."""
    rows = [{"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", f"{i + 2}.", "No idea."]} for i in range(8)]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    out = tmp_path / "lora"
    metrics = dpo(out, Path("data/tiny/base-model"), data, "--ranking_loss", "plackett_luce", "--use_peft", "true",
                  "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "2", "--per_device_train_batch_size", "4",
                  "--eval_fraction", "0", "--learning_rate", "1e-3", "--warmup_steps", "0")
    assert metrics["first_logged_loss"] == pytest.approx(math.log(6), abs=1e-5)
    assert metrics["last_logged_loss"] < math.log(6)
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    assert _changed_weights(Path("data/tiny/base-model"), out) > 0


def test_the_console_script_answers_help():
    import shutil
    import subprocess

    exe = shutil.which("instructgpt-dpo")
    assert exe, "instructgpt-dpo is not installed (pip install -e .)"
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--ranking_loss" in result.stdout and "--beta" in result.stdout


def test_sequences_longer_than_max_length_are_counted(tmp_path, capsys):
    rows = [{"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", " ".join(["very"] * 60) + " long.", "No."]}
            for i in range(4)]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    # per ranking: pairs (0,1), (0,2), (1,2) are 6 sequences, 2 with the long response; whole rankings are 3, 1 long
    for loss, expected in (("pairs", "8 of 24"), ("plackett_luce", "4 of 12")):
        dpo(tmp_path / loss, Path("data/tiny/base-model"), data, "--ranking_loss", loss, "--max_length", "48",
            "--max_steps", "1", "--eval_fraction", "0")
        assert f"{expected} prompt + response sequences are longer than max_length=48" in capsys.readouterr().out
