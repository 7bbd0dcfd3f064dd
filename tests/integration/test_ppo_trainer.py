"""Step 3 end to end on the tiny world: the PPO trainer against the session's SFT policy and reward model.

The math of every term is tested in test_ppo_core.py; these tests run the trainer: the held-out RM score rises while
the KL stays bounded, two processes, LoRA (the reference is the adapter-free policy), interrupt-and-resume, and a
broken reward that stops the run while keeping the last good checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import accelerate_launch, run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import PPO_METRICS_FILE as METRICS_FILE
from instructgpt.infra.files import RUN_MARKER, OutputDirError
from instructgpt.infra.guards import TrainingDiverged
from instructgpt.infra.processes import prepare_frozen_model
from instructgpt.losses.ppo import logprobs_from_logits
from instructgpt.stages.ppo.models import (
    PolicyAndValue,
    Sequences,
    fuse_tanh_gelu,
    response_logits,
    response_values,
    score_parts,
    sequence_scores,
)
from instructgpt.stages.ppo.rollout import Samples
from instructgpt.stages.ppo.run import parse_args, run_ppo
from instructgpt.stages.ppo.trainer import PPOTrainer

# The end-to-end margins: after 8 updates of 64 episodes (learning rate 1e-4), the mean normalized RM score of the
# policy's samples on 64 held-out prompts must rise by at least MIN_SCORE_GAIN over the SFT policy's (same prompts,
# same sampling seed), while the mean KL to the SFT policy stays below MAX_KL nats per response.
MIN_SCORE_GAIN = 0.1  # measured on this setup: +0.18
MAX_KL = 8.0
FAST = ["--report_to", "none", "--num_sample_generations", "0", "--disable_tqdm", "true"]


def ppo_args(out: Path, sft: Path, rm: Path, *extra: str):
    return parse_args(
        [
            "recipes/tiny/ppo.yaml",
            "--model_name_or_path",
            str(sft),
            "--reward_model_path",
            str(rm),
            "--output_dir",
            str(out),
            *FAST,
            *extra,
        ]
    )


def ppo(out: Path, sft: Path, rm: Path, *extra: str) -> dict:
    (script, config, model), recipe = ppo_args(out, sft, rm, *extra)
    return run_ppo(script, config, model, recipe)


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ppo_run(sft_model, trained_rm, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ppo") / "policy"
    summary = ppo(
        out, sft_model, trained_rm[0], "--total_episodes", "512", "--learning_rate", "1e-4", "--save_strategy", "no"
    )
    return out, summary


def test_ppo_raises_the_held_out_reward_within_a_kl_bound(ppo_run):
    out, summary = ppo_run
    gain = summary["eval/scores"] - summary["eval/scores_start"]
    assert gain >= MIN_SCORE_GAIN, summary
    assert 0.0 < summary["eval/kl"] < MAX_KL, summary
    assert summary["eval/kl_start"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as the reference
    assert summary["global_step"] == 8 and summary["episode"] == 512
    rows = [r for r in read_metrics(out) if "objective/kl" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    # TRL's metric names, plus the current beta
    for key in (
        "eps",
        "objective/kl",
        "objective/entropy",
        "objective/scores",
        "objective/rlhf_reward",
        "objective/non_score_reward",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "policy/entropy_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "val/ratio",
        "objective/kl_coef",
    ):
        assert key in rows[-1], key
    # the first update samples from the reference itself: the per-response KL estimate starts near 0
    assert abs(rows[0]["objective/kl"]) < 0.5


def test_saved_policy_and_value_model_load_with_the_auto_classes(ppo_run, sft_model):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    out, summary = ppo_run
    policy = AutoModelForCausalLM.from_pretrained(out)
    sft = AutoModelForCausalLM.from_pretrained(sft_model)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(policy(ids).logits, sft(ids).logits)  # trained
    value = AutoModelForSequenceClassification.from_pretrained(out / "value_model")
    assert value(ids).logits.shape == (1, 1)
    assert json.loads((out / RUN_MARKER).read_text())["stage"] == "ppo"


def test_finished_run_is_not_overwritten(ppo_run, sft_model, trained_rm):
    out, _ = ppo_run
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(OutputDirError, match="already holds a trained model; it was not touched"):
        ppo(out, sft_model, trained_rm[0], "--total_episodes", "64")
    assert (out / "model.safetensors").read_bytes() == before


def test_lora_policy_uses_the_adapter_free_model_as_reference(sft_model, trained_rm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    (script, config, model), recipe = ppo_args(
        out,
        sft_model,
        trained_rm[0],
        "--use_peft",
        "true",
        "--total_episodes",
        "128",
        "--save_strategy",
        "no",
        "--learning_rate",
        "1e-3",
        "--eval_num_prompts",
        "16",
    )
    trainer = PPOTrainer(script, config, model, recipe)
    assert trainer.ref_model is None and isinstance(trainer.unwrapped.policy, PeftModel)  # no second copy
    summary = trainer.train()
    assert summary["global_step"] == 2
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(sft_model)(ids).logits)


def test_interrupted_run_resumes_to_the_same_step_and_episode(sft_model, trained_rm, tmp_path, monkeypatch):
    extra = ("--total_episodes", "192", "--save_strategy", "steps", "--save_steps", "1", "--eval_num_prompts", "8")
    reference = ppo(tmp_path / "straight", sft_model, trained_rm[0], *extra)

    out = tmp_path / "interrupted"
    original = PPOTrainer.save_checkpoint

    def save_then_crash(self, last_metrics=None):
        path = original(self, last_metrics)
        if self.progress.global_step == 2:
            raise KeyboardInterrupt  # the machine went away right after checkpoint-2
        return path

    monkeypatch.setattr(PPOTrainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        ppo(out, sft_model, trained_rm[0], *extra)
    monkeypatch.setattr(PPOTrainer, "save_checkpoint", original)
    assert (out / "checkpoint-2" / "state").is_dir() and not (out / RUN_MARKER).exists()

    resumed = ppo(out, sft_model, trained_rm[0], *extra)
    assert (resumed["global_step"], resumed["episode"]) == (reference["global_step"], reference["episode"]) == (3, 192)
    assert [r["step"] for r in read_metrics(out) if "objective/kl" in r] == [1, 2, 3]  # no update logged twice
    # the KL controller, RNG and data position came back: the resumed update saw the same prompts and samples
    straight = [r for r in read_metrics(tmp_path / "straight") if "objective/kl" in r]
    again = [r for r in read_metrics(out) if "objective/kl" in r]
    assert again[2]["objective/scores"] == pytest.approx(straight[2]["objective/scores"], abs=1e-4)


def test_a_non_finite_reward_stops_the_run_and_keeps_the_last_good_checkpoint(
    sft_model, trained_rm, tmp_path, monkeypatch
):
    out = tmp_path / "nan"
    original = PPOTrainer.penalised_scores

    def broken_after_two(self, batch):
        scores = original(self, batch)
        return scores * float("nan") if self.progress.global_step >= 2 else scores

    monkeypatch.setattr(PPOTrainer, "penalised_scores", broken_after_two)
    with pytest.raises(
        TrainingDiverged, match=r"update 3: the reward model returned \d+ non-finite score.*checkpoint-2"
    ):
        ppo(
            out,
            sft_model,
            trained_rm[0],
            "--total_episodes",
            "256",
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--eval_num_prompts",
            "8",
        )
    assert (out / "checkpoint-2" / "policy" / "model.safetensors").is_file()
    assert not (out / "checkpoint-3").exists() and not (out / RUN_MARKER).exists()


@pytest.mark.distributed
def test_two_process_ppo_trains_one_policy(sft_model, trained_rm, tmp_path):
    out = tmp_path / "ddp"
    result = run_cli(
        accelerate_launch(
            "-m",
            "instructgpt",
            "recipes/tiny/ppo.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--reward_model_path",
            str(trained_rm[0]),
            "--output_dir",
            str(out),
            *FAST,
            "--total_episodes",
            "256",
            "--per_device_train_batch_size",
            "8",
            "--save_strategy",
            "no",
            "--eval_num_prompts",
            "16",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    marker = json.loads((out / RUN_MARKER).read_text())
    # two processes x 8 x 4 accumulation = 64 episodes per update, as one process with 16 x 4
    assert marker["metrics"]["num_processes"] == 2
    assert (marker["metrics"]["global_step"], marker["metrics"]["episode"]) == (4, 256)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]


def test_gpt2_recipe_runs_on_a_local_ultrafeedback_binarized_fixture(sft_model, trained_rm, tmp_path):
    """recipes/ppo.yaml as written (UltraFeedback prompts from the Hub loading code, its splits, eval prompts), with
    the tiny models and a local folder of the same schema in place of GPT-2 and the Hub."""
    from helpers import FIXTURES

    out = tmp_path / "gpt2-ppo"
    (script, config, model), recipe = parse_args(
        [
            "recipes/ppo.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--reward_model_path",
            str(trained_rm[0]),
            "--dataset_name",
            str(FIXTURES / "ultrafeedback_binarized"),
            "--eval_dataset_name",
            str(FIXTURES / "ultrafeedback_binarized"),
            "--output_dir",
            str(out),
            *FAST,
            "--total_episodes",
            "32",
            "--gradient_accumulation_steps",
            "2",
            "--response_length",
            "16",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--lora_target_modules",
            "c_attn",
        ]
    )
    assert (script.dataset_train_split, script.dataset_test_split) == ("train_gen", "test_gen")
    summary = run_ppo(script, config, model, recipe)
    assert summary["global_step"] == 1 and summary["eval/num_prompts"] == 16  # the whole test_gen split
    assert (out / "model.safetensors").is_file()


def test_fused_gelu_changes_speed_not_results():
    from transformers import AutoModelForCausalLM

    from helpers import TINY_BASE

    model = AutoModelForCausalLM.from_pretrained(TINY_BASE).double()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = model(ids).logits
    assert fuse_tanh_gelu(model) == model.config.n_layer  # one MLP activation per block
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-10)
    assert fuse_tanh_gelu(model) == 0


def test_rollout_scoring_in_length_groups_equals_one_padded_batch():
    """The reference, value and reward forwards run on trimmed groups of similar length; every real position
    must get exactly what one forward of the whole padded chunk gives (float64: to rounding)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from helpers import TINY_BASE

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(TINY_BASE).double().eval()
    ref = AutoModelForCausalLM.from_pretrained(TINY_BASE).double().eval()
    with torch.no_grad():  # a reference that differs from the policy
        for p in ref.parameters():
            p.add_(0.01 * torch.randn_like(p))
    reward = AutoModelForSequenceClassification.from_pretrained(TINY_BASE, num_labels=1).double().eval()
    value = AutoModelForSequenceClassification.from_pretrained(TINY_BASE, num_labels=1).double().eval()
    pad = 0
    prompt_lengths, response_lengths = [3, 9, 5, 12, 4], [7, 2, 10, 5, 1]
    query = torch.full((5, 12), pad)
    query_mask = torch.zeros((5, 12), dtype=torch.bool)
    response = torch.full((5, 10), pad)
    mask = torch.zeros((5, 10), dtype=torch.bool)
    for row, (lp, lr) in enumerate(zip(prompt_lengths, response_lengths)):
        query[row, 12 - lp :] = torch.randint(5, 1000, (lp,))
        query_mask[row, 12 - lp :] = True
        response[row, :lr] = torch.randint(5, 1000, (lr,))
        mask[row, :lr] = True
    response[0, 6] = pad  # a response that ended with EOS (= pad): scored before it, as in RM training
    samples = Samples(response=response, mask=mask, logprobs=torch.zeros(5, 10), ended=torch.zeros(5, dtype=torch.bool))

    trainer = PPOTrainer.__new__(PPOTrainer)
    trainer.args = SimpleNamespace(per_device_train_batch_size=2, temperature=0.7)
    trainer.accelerator = SimpleNamespace(autocast=nullcontext, unwrap_model=lambda m: m)
    trainer.model, trainer.ref_model = PolicyAndValue(policy, value), ref
    trainer.value_path, trainer.rm_parts = "value", [score_parts(reward, "reward_model_path", "rm")]
    trainer.reward_pad_id, trainer.reward_shifts = pad, [0.25]
    trainer.reward_aggregation, trainer.reward_std_coef = "mean", 1.0
    grouped = trainer._score_chunk(query, query_mask, samples)

    with torch.no_grad():
        seqs = Sequences.build(query, query_mask, response, mask)
        expected_ref = logprobs_from_logits(response_logits(ref, seqs, 0.7, True), response)
        expected_values = response_values(*score_parts(value, "value_model_path", "value"), seqs)
        expected_scores = sequence_scores(*trainer.rm_parts[0], seqs, pad) - 0.25
    zero = torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(
        grouped["ref_logprobs"].double(), torch.where(mask, expected_ref, zero), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        grouped["values"].double(), torch.where(mask, expected_values.double(), zero), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(grouped["scores"].double(), expected_scores.double(), rtol=0, atol=1e-5)
    assert (grouped["ref_logprobs"][mask] != 0).all()
    assert (grouped["disagreement"] == 0).all()  # one reward model: nothing to disagree about

    # an ensemble of two (the second member's head perturbed, its own shift): each aggregation of their scores
    other = AutoModelForSequenceClassification.from_pretrained(TINY_BASE, num_labels=1).double().eval()
    with torch.no_grad():
        other.score.weight.add_(0.05 * torch.randn_like(other.score.weight))
        second = sequence_scores(*score_parts(other, "reward_model_path", "rm"), seqs, pad) + 0.1
    trainer.rm_parts.append(score_parts(other, "reward_model_path", "rm"))
    trainer.reward_shifts.append(-0.1)
    both = torch.stack([expected_scores, second], dim=-1).double()
    for aggregation, expected in (
        ("mean", both.mean(-1)),
        ("min", both.min(-1).values),
        ("mean_minus_std", both.mean(-1) - 0.5 * both.std(-1, unbiased=False)),
    ):
        trainer.reward_aggregation, trainer.reward_std_coef = aggregation, 0.5
        scored = trainer._score_chunk(query, query_mask, samples)
        torch.testing.assert_close(scored["scores"].double(), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(scored["disagreement"].double(), both.std(-1, unbiased=False), rtol=0, atol=1e-5)


def test_too_few_prompts_for_one_rollout_batch_is_refused_naming_the_file(sft_model, trained_rm, tmp_path):
    from helpers import FIXTURES

    prompts = FIXTURES / "ultrafeedback_binarized"
    with pytest.raises(
        InstructGPTError,
        match=r"`dataset_name` \(.*ultrafeedback_binarized\) has 40 prompts, fewer "
        r"than one rollout batch of 64 episodes",
    ):
        ppo(
            tmp_path / "few",
            sft_model,
            trained_rm[0],
            "--dataset_name",
            str(prompts),
            "--dataset_train_split",
            "train_gen",
            "--eval_num_prompts",
            "0",
            "--total_episodes",
            "64",
        )
    assert not (tmp_path / "few" / RUN_MARKER).exists()


@pytest.mark.parametrize("backend", ["fsdp", "deepspeed", "none"])
def test_frozen_models_are_prepared_for_the_accelerator_backend(monkeypatch, backend):
    """Under FSDP and DeepSpeed the reference and reward models go through TRL's helpers (sharded like the policy),
    otherwise they are moved to the process's device. FSDP needs a GPU, so the helpers are replaced at their
    boundary here; the README says which combinations ran where."""
    from types import SimpleNamespace

    import trl.models.utils as trl_utils

    calls = []
    monkeypatch.setattr(trl_utils, "prepare_fsdp", lambda model, acc: calls.append(("fsdp", model)) or "sharded")
    monkeypatch.setattr(
        trl_utils, "prepare_deepspeed", lambda model, acc: calls.append(("deepspeed", model)) or "engine"
    )
    state = SimpleNamespace(
        deepspeed_plugin=object() if backend == "deepspeed" else None,
        fsdp_plugin=object() if backend == "fsdp" else None,
    )
    accelerator = SimpleNamespace(state=state, device=torch.device("cpu"))
    model = torch.nn.Linear(2, 2)
    prepared = prepare_frozen_model(model, accelerator)
    assert prepare_frozen_model(None, accelerator) is None
    if backend == "none":
        assert prepared is model and calls == []
    else:
        assert prepared == {"fsdp": "sharded", "deepspeed": "engine"}[backend] and calls == [(backend, model)]
