"""Step 2, the reward-model stage: data formats, K-way batches, metrics, normalization, LoRA, bad input.

The end-to-end collect + RM run on the tiny world (and its two-process twin) lives in tests/integration/test_collect.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, TINY_BASE, TINY_DATA
from instructgpt.data import DataError
from instructgpt.data.rankings import rankings_from_dataset
from instructgpt.infra.files import RUN_MARKER, OutputDirError
from instructgpt.losses import kway_ranking_loss, unflatten_rewards
from instructgpt.metrics.ranking import ranking_agreement, summarize_agreement
from instructgpt.modeling import ModelLoadError
from instructgpt.modeling.reward import (
    NORMALIZATION_FILE,
    RewardModelError,
    check_reward_model,
    evaluate_rankings,
    load_reward_model,
    score_responses,
)
from instructgpt.stages.rm import RankingCollator, parse_args, run_rm, tokenize_rankings
from wandb_records import read_run

FAST = ["--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1"]


def _dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)


def _rankings(rows: list[dict], **kwargs):
    return rankings_from_dataset(_dataset(rows), name="`dataset_name` (test)", source="rm.yaml", **kwargs)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Data formats
# ----------------------------------------------------------------------------------------------------------------


def test_rankings_pairs_and_scores_become_best_first_rankings():
    rows, stats = _rankings(
        [
            {"prompt": "p1", "responses": ["a", "b", "c"], "scores": None},
            {"prompt": "p2", "responses": ["low", "high", "mid"], "scores": [0.1, 2.0, 1.0]},
        ]
    )
    assert rows == [
        {"prompt": "p1", "responses": ["a", "b", "c"]},
        {"prompt": "p2", "responses": ["high", "mid", "low"]},
    ]
    assert stats.ties == 0
    pairs, _ = _rankings(
        [
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            },
        ]
    )
    assert pairs == [{"prompt": [{"role": "user", "content": "q"}], "responses": ["good", "bad"]}]


def test_ultrafeedback_rows_rank_completions_by_rating_and_drop_unrated_and_ties():
    from instructgpt.data import load_data

    dataset = load_data(str(FIXTURES / "ultrafeedback"), split="train")
    rows, stats = rankings_from_dataset(dataset, name="uf", source="rm.yaml", score_key="fine-grained_score")
    by_prompt = {r["prompt"]: r["responses"] for r in rows}
    # the fixture's ratings: 5, 3, 4.5, 1.75 -> best first
    assert by_prompt["What is 12 times 3?"] == [
        "12 times 3 is 36.",
        "Multiplication is repeated addition. 12 + 12 + 12 is 36, so the answer is 36, which is 12 times 3.",
        "12 times 3 is 38.",
        "I like numbers.",
    ]
    # "Is the sun a star?": one completion rated N/A everywhere (dropped), two tied at 5.0 (the second dropped)
    assert by_prompt["Is the sun a star?"] == ["Yes, the sun is a star.", "No, the sun is a planet."]
    assert stats.unrated == 1 and stats.ties >= 2 and stats.too_few == 0
    overall, _ = rankings_from_dataset(dataset, name="uf", source="rm.yaml", score_key="overall_score")
    assert {r["prompt"]: r["responses"] for r in overall}["What is 12 times 3?"][0] == "12 times 3 is 36."


def test_ties_are_dropped_and_counted_in_the_log(tmp_path, capsys):
    from instructgpt.data.rankings import load_rankings

    path = _write_jsonl(
        tmp_path / "ties.jsonl",
        [
            {"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [3.0, 2.0, 2.0, 1.0]},
            {"prompt": "q", "responses": ["x", "y"], "scores": [1.0, 1.0]},
            {"prompt": "r", "responses": ["same", "same", "other"], "scores": [3.0, 2.0, 1.0]},
        ],
    )
    rows = load_rankings(
        path,
        key="dataset_name",
        source="rm.yaml",
        config=None,
        split="train",
        limit=None,
        score_key="fine-grained_score",
    )
    assert rows == [{"prompt": "p", "responses": ["a", "b", "d"]}, {"prompt": "r", "responses": ["same", "other"]}]
    out = capsys.readouterr().out
    assert "2 rankings (K = 2..3, 4 comparisons)" in out
    assert "dropped 3 responses tied (same score or same text)" in out and "1 rankings left with fewer than 2" in out


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "responses": ["only one"]}, r"row 1: a ranking needs at least 2 responses, got 1"),
        ({"prompt": "p", "responses": ["fine", "  "]}, r"row 1: response 2 is empty"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}, r"row 1: `scores` has 1 values for 2 responses"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1.0, None]}, r"row 1: score 2 is None, not a number"),
        ({"prompt": "", "responses": ["a", "b"]}, r"row 1: empty prompt"),
    ],
)
def test_bad_rankings_are_refused_naming_the_row(row, message):
    with pytest.raises(DataError, match=message):
        _rankings([row])


def test_bad_pairs_and_columns_are_refused():
    with pytest.raises(DataError, match=r"row 2: empty `rejected`"):
        _rankings([{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": ""}])
    with pytest.raises(
        DataError, match=r"needs columns prompt/responses or prompt/chosen/rejected or instruction/completions"
    ):
        _rankings([{"question": "p", "answer": "a"}])
    with pytest.raises(DataError, match=r"`score_rejected` \(2.0\) is above `score_chosen` \(1.0\)"):
        _rankings([{"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 1.0, "score_rejected": 2.0}])


# ----------------------------------------------------------------------------------------------------------------
# Batches, loss and metrics
# ----------------------------------------------------------------------------------------------------------------


def test_ranking_agreement_counts_pairs_and_kendall_tau():
    # ranking 0 (K=3): rewards 3 > 1 < 2 -> pairs (0,1) ok, (0,2) ok, (1,2) wrong -> C=2, D=1, tau=1/3
    # ranking 1 (K=2): tie in reward -> neither concordant nor discordant, tau=0
    rewards = torch.tensor([[3.0, 1.0, 2.0], [5.0, 5.0, 0.0]])
    stats = ranking_agreement(rewards, torch.tensor([3, 2]))
    torch.testing.assert_close(stats, torch.tensor([[2.0, 3.0, 1 / 3], [0.0, 1.0, 0.0]]))
    summary = summarize_agreement(stats)
    assert summary["pairwise_accuracy"] == pytest.approx(2 / 4)
    assert summary["kendall_tau"] == pytest.approx(1 / 6)
    assert summary["num_rankings"] == 2 and summary["num_comparisons"] == 4


def test_unflatten_keeps_ranking_order_and_gradients():
    flat = torch.arange(1.0, 10.0, requires_grad=True)
    rewards = unflatten_rewards(flat, torch.tensor([4, 3, 2]))
    assert rewards.tolist() == [[1, 2, 3, 4], [5, 6, 7, 0], [8, 9, 0, 0]]
    rewards.sum().backward()
    assert flat.grad.tolist() == [1.0] * 9


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """The tiny base model with a fresh scalar head, saved as a reward model with a known shift."""
    from transformers import AutoModelForSequenceClassification

    from instructgpt.modeling import load_tokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(TINY_BASE, num_labels=1)
    tokenizer = load_tokenizer(str(TINY_BASE))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.reward_shift = 0.25
    out = tmp_path_factory.mktemp("rm") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_kway_batch_forwards_each_response_once_and_matches_the_loss(tiny_rm, tmp_path):
    """Three rankings with K = 4, 3, 2: one forward call over 9 sequences (not 2 * (6 + 3 + 1) = 20 as pairs)."""
    from trl import RewardConfig

    from instructgpt.stages.rm import build_trainer_class

    model, tokenizer, _ = load_reward_model(str(tiny_rm))
    rows = [
        {"prompt": "What is 2 plus 3?", "responses": ["5.", "It is 5.", "6.", "Seven."]},
        {"prompt": "What color is the sky?", "responses": ["Blue.", "The sky is blue.", "Green."]},
        {"prompt": "Say hi.", "responses": ["Hi.", "Bye."]},
    ]
    dataset = tokenize_rankings(rows, tokenizer, max_length=64, name="test")
    collator = RankingCollator(pad_token_id=tokenizer.pad_token_id)
    batch = collator([dataset[i] for i in range(3)])
    assert list(batch) == ["num_responses", "input_ids", "attention_mask"]
    assert batch["num_responses"].tolist() == [4, 3, 2] and batch["input_ids"].shape[0] == 9

    args = RewardConfig(output_dir=str(tmp_path), report_to="none", bf16=False, activation_checkpointing=False)
    trainer = build_trainer_class()(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, data_collator=collator
    )
    sequences_seen: list[int] = []
    handle = trainer.model.register_forward_pre_hook(
        lambda module, args, kwargs: sequences_seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, {k: v.to(trainer.model.device) for k, v in batch.items()})
    handle.remove()
    assert sequences_seen == [9]

    # the same loss from rewards computed one response at a time
    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [t for r in rows for t in r["responses"]]
    flat = torch.tensor(score_responses(model, tokenizer, prompts, responses, batch_size=1, shift=0.0))
    expected = kway_ranking_loss(unflatten_rewards(flat, torch.tensor([4, 3, 2])), torch.tensor([4, 3, 2]))
    torch.testing.assert_close(loss.detach().cpu(), expected, atol=1e-5, rtol=1e-5)


def test_score_responses_subtracts_the_stored_shift_and_keeps_order(tiny_rm):
    model, tokenizer, shift = load_reward_model(str(tiny_rm))
    assert shift == 0.25
    prompts = ["What is 1 plus 1?", "Name a color.", "What is 1 plus 1?"]
    responses = ["2.", "Blue, a calm and very long answer about colors.", "Three."]
    raw = score_responses(model, tokenizer, prompts, responses, shift=0.0, batch_size=2)
    normalized = score_responses(model, tokenizer, prompts, responses, batch_size=2)
    single = [score_responses(model, tokenizer, [p], [r], shift=0.0)[0] for p, r in zip(prompts, responses)]
    assert normalized == pytest.approx([r - 0.25 for r in raw], abs=1e-6)
    assert raw == pytest.approx(single, abs=1e-5)  # batching and padding change nothing
    metrics = evaluate_rankings(model, tokenizer, [{"prompt": "q", "responses": responses}])
    assert metrics["num_comparisons"] == 3 and 0.0 <= metrics["pairwise_accuracy"] <= 1.0


def test_a_causal_lm_is_not_a_reward_model(tmp_path, tiny_rm):
    with pytest.raises(
        RewardModelError,
        match=r"`reward_model_path`: .* holds a GPT2LMHeadModel \(a causal language model without a score head\)",
    ):
        load_reward_model(str(TINY_BASE))
    with pytest.raises(ModelLoadError, match="`reward_model_path`: no model directory"):
        check_reward_model(str(tmp_path / "missing"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(RewardModelError, match="holds a LoRA adapter, not a model"):
        check_reward_model(str(adapter))
    check_reward_model(str(tiny_rm))  # a real one passes


# ----------------------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------------------


def rm(output_dir: Path, *extra: str, recipe: str = "recipes/tiny/rm.yaml") -> dict:
    """Run the stage in-process; the tiny base model stands in for the SFT model the recipes name."""
    (script, training, model), recipe_obj = parse_args(
        [recipe, "--output_dir", str(output_dir), "--model_name_or_path", str(TINY_BASE), *FAST, *extra]
    )
    return run_rm(script, training, model, recipe_obj)


def _demo_mean(model_dir: Path, demonstrations: list[dict]) -> float:
    model, tokenizer, _ = load_reward_model(str(model_dir))
    scores = score_responses(
        model, tokenizer, [d["prompt"] for d in demonstrations], [d["completion"] for d in demonstrations]
    )
    return sum(scores) / len(scores)


def test_gpt2_recipe_runs_on_a_local_ultrafeedback_fixture(tmp_path, capsys, monkeypatch):
    """recipes/rm.yaml as written (UltraFeedback's schema, a held-out fraction, no_robots demonstrations from the
    Hub loading code, W&B), with the tiny model and local folders of the same schemas in place of GPT-2 and the Hub."""
    monkeypatch.setenv("HOME", str(tmp_path))  # nobody logged in: W&B goes offline by itself
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "gpt2-rm"
    metrics = rm(
        out,
        "--dataset_name",
        str(FIXTURES / "ultrafeedback"),
        "--demonstrations_dataset",
        str(FIXTURES / "no_robots"),
        "--max_steps",
        "3",
        "--gradient_accumulation_steps",
        "1",
        "--activation_checkpointing",
        "false",
        "--eval_fraction",
        "0.25",
        "--report_to",
        "wandb",
        recipe="recipes/rm.yaml",
    )
    printed = capsys.readouterr().out
    assert "held out 2 rankings (25% of the prompts)" in printed and "held-out pairwise accuracy" in printed
    assert metrics["global_step"] == 3 and metrics["eval_num_rankings"] == 2
    assert 0.0 <= metrics["eval_pairwise_accuracy"] <= 1.0 and -1.0 <= metrics["eval_kendall_tau"] <= 1.0
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["stage"] == "rm" and marker["metrics"]["reward_shift"] == metrics["reward_shift"]
    assert "eval_pairwise_accuracy" in marker["metrics"] and "eval_kendall_tau" in marker["metrics"]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    summary = read_run(run_file)["summary"]
    assert summary["eval/pairwise_accuracy"] == pytest.approx(metrics["eval_pairwise_accuracy"])
    assert summary["eval/kendall_tau"] == pytest.approx(metrics["eval_kendall_tau"])
    assert summary["reward_shift"] == pytest.approx(metrics["reward_shift"])

    # loads as it is, and the demonstrations (no_robots test split, as the recipe says) average 0 after the shift
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.reward_shift == pytest.approx(metrics["reward_shift"])
    assert json.loads((out / NORMALIZATION_FILE).read_text())["num_demonstrations"] == 10
    demos = [json.loads(line) for line in (FIXTURES / "no_robots" / "test.jsonl").read_text().splitlines()]
    pairs = [{"prompt": d["messages"][:-1], "completion": d["messages"][-1]["content"]} for d in demos]
    assert abs(_demo_mean(out, pairs)) < 1e-4


def test_lora_reward_model_is_saved_merged(tmp_path):
    out = tmp_path / "lora-rm"
    rows = [{"prompt": f"What is {i} plus 1?", "responses": [f"{i + 1}.", f"{i + 2}.", "No idea."]} for i in range(12)]
    data = _write_jsonl(tmp_path / "rankings.jsonl", rows)
    rm(
        out,
        "--dataset_name",
        data,
        "--max_steps",
        "4",
        "--use_peft",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--eval_fraction",
        "0",
        "--demonstrations_dataset",
        str(TINY_DATA / "sft_eval.jsonl"),
        "--max_demonstrations",
        "16",
    )
    assert not (out / "adapter_config.json").exists()
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    demos = [json.loads(line) for line in (TINY_DATA / "sft_eval.jsonl").read_text().splitlines()[:16]]
    assert abs(_demo_mean(out, demos)) < 1e-4


def test_finished_reward_model_is_not_overwritten_and_bad_data_touches_nothing(tmp_path):
    rows = [{"prompt": f"Say {i}.", "responses": [f"{i}.", "No."]} for i in range(8)]
    data = _write_jsonl(tmp_path / "r.jsonl", rows)
    out = tmp_path / "rm"
    rm(out, "--dataset_name", data, "--max_steps", "1", "--eval_fraction", "0", "--demonstrations_dataset", "null")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(OutputDirError, match="already holds a trained model"):
        rm(out, "--dataset_name", data, "--max_steps", "1")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert json.loads((out / RUN_MARKER).read_text())["metrics"]["reward_shift"] == 0.0  # no demonstrations: no shift

    bad = _write_jsonl(
        tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "q", "responses": ["a"]}]
    )
    with pytest.raises(DataError, match=r"bad\.jsonl\) line 2: a ranking needs at least 2 responses, got 1"):
        rm(tmp_path / "new", "--dataset_name", bad)
    assert not (tmp_path / "new").exists()
