"""GRPO on the tiny world: TRL's GRPOTrainer against the session's reward model (and against an ensemble), end to
end, with a loadable policy per checkpoint, a KL to the SFT model, and a resume. The reward function and the
checkpoint layout are RLOO's (tests/integration/test_rloo.py tests them in detail): both come from
instructgpt.infra.online_stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER
from instructgpt.modeling.ensemble import ENSEMBLE_FILE, EnsembleManifest
from instructgpt.stages.grpo import parse_args, run_grpo

FAST = ["--report_to", "none", "--disable_tqdm", "true"]
SMALL = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--max_completion_length", "16"]


def grpo(out: Path, sft: Path, rm: Path, *extra: str) -> dict:
    (script, config, model), recipe = parse_args(
        [
            "recipes/tiny/grpo.yaml",
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
    return run_grpo(script, config, model, recipe)


def test_grpo_runs_end_to_end_keeps_a_policy_per_checkpoint_and_resumes(sft_model, trained_rm, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "grpo"
    metrics = grpo(out, sft_model, trained_rm[0], "--max_steps", "2", "--save_steps", "1")
    assert metrics["global_step"] == 2
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["stage"] == "grpo" and "GRPO" in (out / "README.md").read_text()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [row for row in state["log_history"] if "kl" in row]
    # beta > 0: a reference model, and the first step samples from the SFT policy itself: KL 0
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert all("rewards/reward_model/mean" in row for row in logged)  # our reward model, under its TRL name
    for step in (1, 2):
        assert AutoModelForCausalLM.from_pretrained(out / f"checkpoint-{step}" / "policy").config.model_type == "gpt2"
    with pytest.raises(InstructGPTError, match="already holds a trained model"):
        grpo(out, sft_model, trained_rm[0], "--max_steps", "2")

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in (RUN_MARKER, "model.safetensors"):
        (resumed / name).unlink()
    metrics = grpo(resumed, sft_model, trained_rm[0], "--max_steps", "3", "--save_steps", "1")
    history = json.loads((resumed / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    assert metrics["global_step"] == 3 and [row["step"] for row in history if "kl" in row] == [1, 2, 3]


def test_grpo_takes_a_reward_model_ensemble(sft_model, trained_rm, tiny_rm, tmp_path):
    """Two different reward models of the session as one ensemble folder, read by their worst case."""
    ensemble = tmp_path / "ensemble"
    for index, member in enumerate((trained_rm[0], tiny_rm)):
        shutil.copytree(member, ensemble / "members" / str(index))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (trained_rm[0] / name).is_file():
            shutil.copy2(trained_rm[0] / name, ensemble / name)
    manifest = EnsembleManifest(members=("members/0", "members/1"), diversity=("seed",))
    (ensemble / ENSEMBLE_FILE).write_text(json.dumps(manifest.to_json()))
    out = tmp_path / "grpo"
    metrics = grpo(out, sft_model, ensemble, "--max_steps", "1", "--reward_aggregation", "min")
    assert metrics["global_step"] == 1 and (out / RUN_MARKER).is_file()
