"""DPO: the `dpo` stage on the tiny world (pairs and whole rankings). Its losses are tested in
tests/unit/test_dpo_losses.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import FIXTURES, python_m, run_cli
from instructgpt.data.rankings import split_by_prompt
from instructgpt.infra.files import RUN_MARKER

# --------------------------------------------------------------------------------------------------------------
# The stage, end to end on the tiny world (the session's SFT model and its collected K = 4 rankings)
# --------------------------------------------------------------------------------------------------------------

FAST = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true"]


def dpo(
    output_dir: Path, policy: Path, rankings: Path | str, *extra: str, recipe: str = "recipes/tiny/dpo.yaml"
) -> dict:
    from instructgpt.stages.dpo import parse_args, run_dpo

    (script, config, model), parsed = parse_args(
        [
            recipe,
            "--model_name_or_path",
            str(policy),
            "--dataset_name",
            str(rankings),
            "--output_dir",
            str(output_dir),
            *FAST,
            *extra,
        ]
    )
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
    metrics = dpo(
        out,
        sft_model,
        rankings,
        "--max_steps",
        "6",
        "--learning_rate",
        "3e-4",
        "--eval_fraction",
        "0.25",
        "--per_device_train_batch_size",
        "32",
    )
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
    metrics = dpo(
        out,
        sft_model,
        rankings,
        "--ranking_loss",
        "plackett_luce",
        "--max_steps",
        "6",
        "--learning_rate",
        "3e-4",
        "--eval_fraction",
        "0.25",
        "--per_device_train_batch_size",
        "8",
    )
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
    metrics = dpo(
        out,
        sft_model,
        FIXTURES / "ultrafeedback_binarized",
        "--max_steps",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--activation_checkpointing",
        "false",
        "--eval_strategy",
        "no",
        "--report_to",
        "none",
        recipe="recipes/dpo.yaml",
    )
    assert metrics["global_step"] == 2 and metrics["train_rankings"] == 40 and metrics["train_pairs"] == 40
    assert metrics["eval_loss"] > 0 and 0 <= metrics["eval_rewards/accuracies"] <= 1  # the whole test_prefs split
    assert (out / "model.safetensors").is_file() and (out / RUN_MARKER).is_file()


# --------------------------------------------------------------------------------------------------------------
# No silent failure: bad data, keys that cannot apply, a finished run, an interrupted one
# --------------------------------------------------------------------------------------------------------------


def test_bad_rankings_name_the_file_and_row(tmp_path):
    from instructgpt.data import DataError

    bad = _write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "What is 2 plus 2?", "responses": ["4.", "5."]},
            {"prompt": "What is 3 plus 3?", "responses": ["6."]},
        ],
    )
    with pytest.raises(DataError, match=r"bad\.jsonl.* line 2: a ranking needs at least 2 responses, got 1"):
        dpo(tmp_path / "out", Path("data/tiny/base-model"), bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key, value", [("loss_type", "ipo"), ("precompute_ref_log_probs", "true"), ("ld_alpha", "0.5")]
)
def test_keys_the_plackett_luce_loss_cannot_honour_are_refused(tmp_path, key, value):
    from instructgpt.infra.errors import InstructGPTError

    with pytest.raises(InstructGPTError, match=rf"`{key}: .*` does not apply with `ranking_loss: plackett_luce`"):
        dpo(
            tmp_path / "out",
            Path("data/tiny/base-model"),
            "data/tiny/rm_prompts.jsonl",
            "--ranking_loss",
            "plackett_luce",
            f"--{key}",
            value,
        )


def test_command_line_errors_are_one_line_and_a_finished_run_is_never_overwritten(tmp_path):
    rows = [{"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", f"{i + 2}.", "No idea."]} for i in range(8)]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    out = tmp_path / "out"
    base = [
        "instructgpt.stages.dpo",
        "recipes/tiny/dpo.yaml",
        "--model_name_or_path",
        "data/tiny/base-model",
        "--dataset_name",
        data,
        "--output_dir",
        str(out),
        *FAST,
    ]
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
        "instructgpt.stages.dpo",
        "recipes/tiny/dpo.yaml",
        "--model_name_or_path",
        "data/tiny/base-model",
        "--dataset_name",
        data,
        "--output_dir",
        str(out),
        "--ranking_loss",
        "plackett_luce",
        "--eval_fraction",
        "0",
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "4",
        *FAST,
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
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
    metrics = dpo(
        out,
        Path("data/tiny/base-model"),
        data,
        "--ranking_loss",
        "plackett_luce",
        "--use_peft",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--eval_fraction",
        "0",
        "--learning_rate",
        "1e-3",
        "--warmup_steps",
        "0",
    )
    assert metrics["first_logged_loss"] == pytest.approx(math.log(6), abs=1e-5)
    assert metrics["last_logged_loss"] < math.log(6)
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    assert _changed_weights(Path("data/tiny/base-model"), out) > 0


def test_the_console_script_answers_help():
    import shutil

    exe = shutil.which("instructgpt-dpo")
    assert exe, "instructgpt-dpo is not installed (pip install -e .)"
    result = run_cli([exe, "--help"], timeout=120)
    assert result.returncode == 0 and "--ranking_loss" in result.stdout and "--beta" in result.stdout


def test_sequences_longer_than_max_length_are_counted(tmp_path, capsys):
    rows = [
        {"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", " ".join(["very"] * 60) + " long.", "No."]}
        for i in range(4)
    ]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    # per ranking: pairs (0,1), (0,2), (1,2) are 6 sequences, 2 with the long response; whole rankings are 3, 1 long
    for loss, expected in (("pairs", "8 of 24"), ("plackett_luce", "4 of 12")):
        dpo(
            tmp_path / loss,
            Path("data/tiny/base-model"),
            data,
            "--ranking_loss",
            loss,
            "--max_length",
            "48",
            "--max_steps",
            "1",
            "--eval_fraction",
            "0",
        )
        assert f"{expected} prompt + response sequences are longer than max_length=48" in capsys.readouterr().out
