"""Reward-model ensembles end to end: the RM stage trains N members into one folder, every consumer loads it as one
reward model and reads it through its aggregation, and an interrupted ensemble resumes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from helpers import python_m, quick_ppo, rm, run_cli, start, stop, wait_for
from instructgpt.infra.files import RUN_MARKER, OutputDirError, is_complete, read_jsonl
from instructgpt.modeling.ensemble import ENSEMBLE_FILE, RewardEnsemble, aggregate_rewards, read_manifest
from instructgpt.modeling.reward import RewardModelReward, load_reward_model, score_members, score_responses

STEPS = ["--max_steps", "4", "--eval_fraction", "0.25"]


@pytest.fixture(scope="module")
def ensemble(collected, sft_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ensemble") / "rm"
    metrics = rm(out, collected[0] / "rankings.jsonl", sft_model, "--ensemble_size", "2", *STEPS)
    return out, metrics


def sample_pairs(collected, count: int = 12) -> tuple[list, list]:
    rows = read_jsonl(collected[0] / "rankings.jsonl")[:count]
    return [r["prompt"] for r in rows], [r["responses"][0] for r in rows]


def test_the_rm_stage_trains_members_that_differ_and_saves_one_folder(ensemble):
    out, metrics = ensemble
    manifest = read_manifest(out)
    assert manifest.members == ("members/0", "members/1")
    assert manifest.diversity == ("seed", "bootstrap") and manifest.aggregation == "mean"
    markers = [json.loads((out / m / RUN_MARKER).read_text()) for m in manifest.members]
    assert [m["recipe"]["seed"] for m in markers] == [42, 43]  # `seed`: each member its own seed
    shifts = metrics["member_reward_shifts"]
    assert len(set(shifts)) == 2  # each member normalized on its own: the demonstrations average 0 for each
    assert json.loads((out / RUN_MARKER).read_text())["metrics"]["ensemble_size"] == 2  # the marker, last
    assert (out / "tokenizer_config.json").is_file() and "ensemble of 2" in (out / "README.md").read_text()
    for aggregation in ("mean", "min", "mean_minus_std"):
        assert 0.0 <= metrics[f"eval_{aggregation}_pairwise_accuracy"] <= 1.0
    assert metrics["eval_member_disagreement"] > 0


def test_every_consumer_reads_the_folder_as_one_reward_model_through_its_aggregation(ensemble, collected):
    out, _ = ensemble
    prompts, responses = sample_pairs(collected)
    singles = []
    for member in read_manifest(out).members:  # each member alone, with its own shift
        model, tokenizer, shift = load_reward_model(str(out / member))
        assert shift != 0.0
        singles.append(score_responses(model, tokenizer, prompts, responses))
    each = torch.tensor(singles).T  # (responses, members)
    for aggregation in ("mean", "min", "mean_minus_std"):
        model, tokenizer, shift = load_reward_model(str(out), aggregation=aggregation, std_coef=0.5)
        assert isinstance(model, RewardEnsemble) and shift == 0.0
        scores = torch.tensor(score_responses(model, tokenizer, prompts, responses))
        torch.testing.assert_close(scores, aggregate_rewards(each, aggregation, 0.5), rtol=0, atol=1e-4)
        # RLOO's and GRPO's reward function (TRL's interface) reads the same
        reward = RewardModelReward(str(out), aggregation=aggregation, std_coef=0.5)
        torch.testing.assert_close(torch.tensor(reward(prompts, responses)), scores, rtol=0, atol=1e-5)
    members = torch.tensor(score_members(model, tokenizer, prompts, responses))
    torch.testing.assert_close(members, each, rtol=0, atol=1e-4)


def test_a_finished_ensemble_is_not_trained_again(ensemble, collected, sft_model):
    out, _ = ensemble
    with pytest.raises(OutputDirError, match="already holds a trained model"):
        rm(out, collected[0] / "rankings.jsonl", sft_model, "--ensemble_size", "2", *STEPS)


def test_an_interrupted_ensemble_resumes_keeping_its_finished_members(collected, sft_model, tmp_path):
    out = tmp_path / "rm"
    command = python_m(
        "instructgpt.stages.rm",
        "recipes/tiny/rm.yaml",
        "--model_name_or_path",
        str(sft_model),
        "--dataset_name",
        str(collected[0] / "rankings.jsonl"),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--ensemble_size",
        "2",
        "--max_steps",
        "20",
        "--save_strategy",
        "steps",
        "--save_steps",
        "5",
        "--logging_steps",
        "5",
    )
    process = start(command)
    try:
        # killed once the first member is finished and the second has a checkpoint
        wait_for(
            lambda: is_complete(out / "members" / "0") and any((out / "members" / "1").glob("checkpoint-*")),
            timeout=600,
            what="the first member finished and the second checkpointed",
        )
    finally:
        stop(process, signal.SIGKILL)
    first = json.loads((out / "members" / "0" / RUN_MARKER).read_text())
    assert not is_complete(out) and not (out / ENSEMBLE_FILE).exists()
    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "ensemble member 0: finished" in output and "resuming the interrupted run" in output
    assert json.loads((out / "members" / "0" / RUN_MARKER).read_text()) == first  # kept, not trained again
    assert is_complete(out) and read_manifest(out).members == ("members/0", "members/1")


def test_ppo_trains_against_an_ensemble_and_logs_its_disagreement(ensemble, sft_model, tmp_path):
    out, _ = ensemble
    command = quick_ppo(tmp_path / "ppo", sft_model, out) + ["--reward_aggregation", "mean_minus_std"]
    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 reward-model members, aggregated by mean_minus_std" in result.stdout + result.stderr
    logged = [row for row in read_jsonl(tmp_path / "ppo" / "metrics.jsonl") if "objective/rm_disagreement" in row]
    assert logged and all(row["objective/rm_disagreement"] > 0 for row in logged)
    # the value function started from the first member (InstructGPT: from the reward model)
    assert is_complete(tmp_path / "ppo")


def test_evaluation_scores_with_the_ensemble_and_reports_its_disagreement(ensemble, collected):
    from types import SimpleNamespace

    from instructgpt.stages.eval.evaluator import Evaluator

    out, _ = ensemble
    prompts, responses = sample_pairs(collected)
    evaluator = Evaluator.__new__(Evaluator)
    evaluator.labeler, evaluator.args = None, SimpleNamespace(batch_size=5)
    evaluator.reward = load_reward_model(str(out), aggregation="min")
    judged = evaluator.judge(prompts, responses)
    model, tokenizer, _ = evaluator.reward
    members = torch.tensor(score_members(model, tokenizer, prompts, responses))
    torch.testing.assert_close(torch.tensor(judged["rm_scores"]), members.min(-1).values, rtol=0, atol=1e-5)
    assert judged["rm_disagreement"] == pytest.approx(members.std(-1, unbiased=False).mean().item(), abs=1e-5)
