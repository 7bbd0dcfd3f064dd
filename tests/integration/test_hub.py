"""Model cards in every output, and push_to_hub of finished outputs only, tested at the upload boundary.

No Hub stand-in server exists to start here, so the one call that uploads (``HfApi.upload_folder``) is replaced by a
recorder that lists the folder as it is at that moment: the test sees exactly what would have been pushed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import TINY_DATA
from instructgpt.infra.files import RUN_MARKER


@pytest.fixture
def hub(monkeypatch):
    """Record every repository creation and folder upload instead of sending them."""
    from huggingface_hub import HfApi

    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"create": repo_id, "repo_type": kwargs.get("repo_type")})

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, repo_type=None, **kwargs):
        folder = Path(folder_path)
        calls.append(
            {
                "repo_id": repo_id,
                "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                "ignore": ignore_patterns,
                "repo_type": repo_type,
            }
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def card_metadata(output_dir: Path) -> tuple[dict, str]:
    text = (output_dir / "README.md").read_text()
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_sft_card_and_push_after_every_file(tmp_path, hub):
    from instructgpt.stages.sft import parse_args, run_sft

    out = tmp_path / "sft"
    (script, training, model), recipe = parse_args(
        [
            "recipes/tiny/sft.yaml",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--max_steps",
            "3",
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
            "--eval_strategy",
            "no",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "someone/tiny-sft",
        ]
    )
    run_sft(script, training, model, recipe)
    meta, body = card_metadata(out)
    assert {"instructgpt", "sft", "rlhf"} <= set(meta["tags"]) and meta["library_name"] == "transformers"
    assert "Supervised fine-tuning (InstructGPT step 1)" in body and "data/tiny/base-model" in body
    uploads = [c for c in hub if "files" in c]
    assert len(uploads) == 1, hub  # the Trainer did not push on its own, mid-save
    files = uploads[0]["files"]
    assert uploads[0]["repo_id"] == "someone/tiny-sft"
    assert {RUN_MARKER, "README.md", "model.safetensors", "tokenizer.json"} <= set(files)
    assert "checkpoint-*" in uploads[0]["ignore"]


def test_reward_model_card_has_its_shift_and_push_comes_after_the_normalization(collected, sft_model, tmp_path, hub):
    from helpers import rm

    out = tmp_path / "rm"
    metrics = rm(
        out,
        collected[0] / "rankings.jsonl",
        sft_model,
        "--max_steps",
        "2",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "someone/tiny-rm",
        "--demonstrations_dataset",
        str(TINY_DATA / "sft_eval.jsonl"),
    )
    meta, body = card_metadata(out)
    assert "rm" in meta["tags"] and "reward shift" in body and f"{metrics['reward_shift']:.4g}" in body
    assert "held-out pairwise accuracy" in body
    (upload,) = [c for c in hub if "files" in c]
    assert {RUN_MARKER, "README.md", "reward_normalization.json", "model.safetensors"} <= set(upload["files"])


def test_no_push_without_push_to_hub_and_no_push_of_an_unfinished_output(tmp_path, hub):
    from instructgpt.infra.hub import HubError, push_output

    (tmp_path / "model.safetensors").write_text("half a run")
    with pytest.raises(HubError, match="not finished, so not pushed"):
        push_output(tmp_path, "someone/x")
    assert hub == []


def test_a_card_section_is_added_once_and_replaced(tmp_path):
    from instructgpt.infra.hub import add_card_section, write_model_card

    write_model_card(
        tmp_path,
        stage="ppo",
        title="PPO policy",
        base_model="gpt2",
        datasets=["HuggingFaceH4/no_robots"],
        summary="A policy.",
        settings={"kl_coef": 0.05},
        results={"KL": 1.5},
    )
    meta, body = card_metadata(tmp_path)
    assert meta["base_model"] == "gpt2" and meta["datasets"] == ["HuggingFaceH4/no_robots"]
    assert "| kl_coef | 0.05 |" in body and "| KL | 1.5 |" in body
    add_card_section(tmp_path, "Evaluation", "win rate 60%")
    add_card_section(tmp_path, "Evaluation", "win rate 70%")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "win rate 70%" in text and "60%" not in text


def test_ppo_card_says_where_the_value_model_is_and_push_comes_last(collected, sft_model, tmp_path, hub):
    from helpers import rm
    from instructgpt.stages.ppo.run import parse_args, run_ppo

    rm(tmp_path / "rm", collected[0] / "rankings.jsonl", sft_model, "--max_steps", "2")
    out = tmp_path / "ppo"
    (script, config, model), recipe = parse_args(
        [
            "recipes/tiny/ppo.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--reward_model_path",
            str(tmp_path / "rm"),
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--total_episodes",
            "16",
            "--per_device_train_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "2",
            "--num_ppo_epochs",
            "1",
            "--response_length",
            "8",
            "--eval_num_prompts",
            "0",
            "--num_sample_generations",
            "0",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "someone/tiny-ppo",
        ]
    )
    summary = run_ppo(script, config, model, recipe)
    meta, body = card_metadata(out)
    assert "ppo" in meta["tags"] and "value_model/" in body and "| kl_coef |" in body
    assert f"{summary['objective/kl']:.4g}" in body
    (upload,) = [c for c in hub if "files" in c]
    assert {RUN_MARKER, "README.md", "model.safetensors", "value_model/model.safetensors"} <= set(upload["files"])


def test_pretrain_card_and_push(tmp_path, hub):
    from instructgpt.stages.pretrain import parse_args, run_pretrain

    out = tmp_path / "base"
    (args, training), recipe = parse_args(
        [
            "recipes/tiny/pretrain.yaml",
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--probe_tiny_world",
            "false",
            "--max_documents",
            "200",
            "--push_to_hub",
            "true",
            "--hub_model_id",
            "someone/tiny-base",
        ]
    )
    run_pretrain(args, training, recipe)
    meta, body = card_metadata(out)
    assert {"instructgpt", "pretrain"} <= set(meta["tags"])
    assert "Pretraining" in body and "| layers | 4 |" in body
    (upload,) = [c for c in hub if "files" in c]
    assert upload["repo_id"] == "someone/tiny-base" and upload["repo_type"] in (None, "model")
    assert {"README.md", "model.safetensors", "tokenizer.json", RUN_MARKER} <= set(upload["files"])


def test_collect_writes_a_dataset_card_and_pushes_a_dataset_repo(sft_model, tmp_path, hub):
    from helpers import collect

    out = tmp_path / "rankings"
    metrics = collect(
        out,
        sft_model,
        "--max_prompts",
        "6",
        "--max_new_tokens",
        "8",
        "--push_to_hub",
        "true",
        "--hub_dataset_id",
        "someone/tiny-rankings",
    )
    meta, body = card_metadata(out)
    assert {"instructgpt", "collect", "preference"} <= set(meta["tags"])
    assert f"| num_rankings | {metrics['num_rankings']} |" in body and str(sft_model) in body
    (upload,) = [c for c in hub if "files" in c]
    assert upload["repo_type"] == "dataset" and upload["repo_id"] == "someone/tiny-rankings"
    assert {"README.md", "rankings.jsonl", RUN_MARKER} <= set(upload["files"])
