"""Model cards in every output, and push_to_hub of finished outputs only, tested at the upload boundary.

No Hub stand-in server exists to start here, so the two calls that upload (``HfApi.upload_folder`` and
``upload_file``) are replaced by recorders that list the folder as it is at that moment, less what the push leaves
out, and keep the file sent: the test sees exactly what would have been pushed. Each card's quick start is run as
written, in a fresh Python, on the output it describes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub.utils import filter_repo_objects

from helpers import TINY_DATA, run_cli
from instructgpt.infra.files import RUN_MARKER
from instructgpt.modeling.reward import load_reward_model, score_responses


@pytest.fixture
def hub(monkeypatch):
    """Record every repository creation and folder upload instead of sending them."""
    from huggingface_hub import HfApi

    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"create": repo_id, "repo_type": kwargs.get("repo_type")})

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, repo_type=None, **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        sent = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        calls.append({"repo_id": repo_id, "files": sent, "ignore": ignore_patterns, "repo_type": repo_type})

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, repo_type=None, **kwargs):
        calls.append({"repo_id": repo_id, "file": path_in_repo, "content": path_or_fileobj.decode("utf-8")})

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "upload_file", upload_file)
    return calls


def pushed(hub: list[dict]) -> tuple[dict, str]:
    """The one folder upload and the card that went with it: a model's card sent apart, loading its Hub id."""
    (upload,) = [c for c in hub if "files" in c]
    (card,) = [c for c in hub if c.get("file") == "README.md"]
    assert card["repo_id"] == upload["repo_id"] and "README.md" not in upload["files"]
    return upload, card["content"]


def quick_start(card: str) -> str:
    """The card's quick start: its first Python block."""
    (code,) = re.findall(r"## Quick start\n\n```python\n(.*?)```", card, flags=re.S)
    return code


def run_quick_start(output_dir: Path) -> str:
    """Run the card's quick start as written, in a fresh Python; its output."""
    code = quick_start((output_dir / "README.md").read_text())
    assert f'"{output_dir}"' in code  # before a push it loads the directory itself
    result = run_cli([sys.executable, "-c", code], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_usable_card(output_dir: Path, card: str | None = None) -> None:
    """What every model card holds: what the model is first, nothing of TRL's template, and no field it cannot fill;
    ``card`` (the Hub copy) loads the Hub id instead of the directory."""
    text = (output_dir / "README.md").read_text()
    meta, body = card_metadata(output_dir)
    assert "license" not in meta and "licence" not in text and "time machine" not in text
    assert body.lstrip().startswith(f"# {output_dir.name}\n") and "## How it was made" in body
    assert body.index("## Quick start") < body.index("## Framework versions") < body.index("## Citation")
    if card is not None:
        repo = re.search(r'model="([^"]+)"|from_pretrained\("([^"]+)"\)', quick_start(card))
        assert str(output_dir) not in card and repo and (repo[1] or repo[2]) in card


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
    assert "supervised fine-tuning, InstructGPT step 1" in body and "data/tiny/base-model" in body
    assert "TRL's `SFTTrainer`" in body and meta["pipeline_tag"] == "text-generation"
    upload, card = pushed(hub)  # one upload: the Trainer did not push on its own, mid-save
    assert upload["repo_id"] == "someone/tiny-sft"
    assert {RUN_MARKER, "model.safetensors", "tokenizer.json"} <= set(upload["files"])
    assert "checkpoint-*" in upload["ignore"] and not any(f.startswith("checkpoint-") for f in upload["files"])
    assert_usable_card(out, card)
    assert 'model="someone/tiny-sft"' in card
    # the quick start asks the first training prompt, formatted by the saved chat template, and gets an answer
    first = json.loads((TINY_DATA / "sft_train.jsonl").read_text().splitlines()[0])
    assert json.dumps(first["prompt"]) in quick_start(card)
    assert run_quick_start(out).strip()


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
    assert "held-out pairwise accuracy" in body and meta["pipeline_tag"] == "text-classification"
    upload, card = pushed(hub)
    assert {RUN_MARKER, "reward_normalization.json", "model.safetensors"} <= set(upload["files"])
    assert_usable_card(out, card)
    # the quick start's score is the one every stage reads: the same text, the same token, the same shift
    first = json.loads((collected[0] / "rankings.jsonl").read_text().splitlines()[0])
    model, tokenizer, _ = load_reward_model(str(out))
    (expected,) = score_responses(model, tokenizer, [first["prompt"]], [first["responses"][0]])
    assert float(run_quick_start(out)) == pytest.approx(float(expected), abs=1e-4)


def test_no_push_without_push_to_hub_and_no_push_of_an_unfinished_output(tmp_path, hub):
    from instructgpt.infra.hub import HubError, push_output

    (tmp_path / "model.safetensors").write_text("half a run")
    with pytest.raises(HubError, match="not finished, so not pushed"):
        push_output(tmp_path, "someone/x")
    assert hub == []


def test_a_card_section_is_added_once_and_replaced(tmp_path):
    from instructgpt.infra.cards import add_card_section, write_model_card

    write_model_card(
        tmp_path,
        stage="ppo",
        title="PPO",
        trainer="instructgpt's own PPO",
        kind="policy",
        base_model="gpt2",
        datasets=["HuggingFaceH4/no_robots", "data/tiny/ptx.jsonl"],
        example=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
        summary="A policy.",
        settings={"kl_coef": 0.05},
        results={"KL": 1.5},
    )
    meta, body = card_metadata(tmp_path)
    assert meta["base_model"] == "gpt2" and meta["datasets"] == ["HuggingFaceH4/no_robots"]
    assert "| kl_coef | 0.05 |" in body and "| KL | 1.5 |" in body
    assert "[gpt2](https://huggingface.co/gpt2)" in body and "`data/tiny/ptx.jsonl`" in body
    assert '{"role": "system", "content": "Be brief."}' in quick_start(body)
    assert_usable_card(tmp_path)
    add_card_section(tmp_path, "Evaluation", "win rate 60%")
    add_card_section(tmp_path, "Evaluation", "win rate 70%")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "win rate 70%" in text and "60%" not in text
    # added sections go before the versions and the citation, which stay last
    assert text.index("## Quick start") < text.index("## Evaluation") < text.index("## Framework versions")
    assert text.rstrip().endswith("```")


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
    assert "instructgpt's own PPO" in body and "TRL" not in body.split("## Framework versions")[0]
    upload, card = pushed(hub)
    assert {RUN_MARKER, "model.safetensors", "value_model/model.safetensors"} <= set(upload["files"])
    assert_usable_card(out, card)
    run_quick_start(out)


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
    assert "pretraining" in body and "| layers | 4 |" in body and "trained from scratch" in body
    upload, card = pushed(hub)
    assert upload["repo_id"] == "someone/tiny-base" and upload["repo_type"] in (None, "model")
    assert {"model.safetensors", "tokenizer.json", RUN_MARKER} <= set(upload["files"])
    assert_usable_card(out, card)
    assert run_quick_start(out).startswith(re.search(r'generator\(("[^"]*")', quick_start(card))[1].strip('"'))


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
    upload, card = pushed(hub)
    assert upload["repo_type"] == "dataset" and upload["repo_id"] == "someone/tiny-rankings"
    assert {"rankings.jsonl", RUN_MARKER} <= set(upload["files"]) and card == (out / "README.md").read_text()
