"""Judges independent of the optimized reward model (issue 13): the gold reward model in its own format.

The gold reward model here is a tiny LlamaForSequenceClassification built from a config, with the tiny world's
tokenizer extended by ChatML (instructgpt.tinyworld.architectures): another architecture, tokenizer and chat
template than the GPT-2 reward models the RM stage trains. The LLM judge's tests are in test_llm_judge.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import TINY_BASE
from instructgpt.judges import DEFAULT_GOLD_RM, LabelerError, make_labeler
from instructgpt.metrics.winrate import win_rate_from_scores
from instructgpt.stages import eval as evaluate
from instructgpt.stages.eval.judging import judge_spec
from instructgpt.stages.eval.settings import EvalArguments
from instructgpt.tinyworld.architectures import IM_END, IM_START, TinyArchitecture, build_tiny_model, chat_tokenizer

PROMPTS = [
    "Describe the rustbeetle.",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}],
]
RESPONSES = ["The rustbeetle is large and red, and it lives under old bridges.", "5"]


@pytest.fixture(scope="module")
def gold_rm(tmp_path_factory) -> Path:
    """A random 1-layer LlamaForSequenceClassification (one output) with the ChatML tokenizer, saved to disk."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = chat_tokenizer(TINY_BASE, 128)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    out = tmp_path_factory.mktemp("gold") / "llama-rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def direct_scores(path: Path, ids: list[list[int]], **extra) -> list[float]:
    """The model called on each input alone: no batching, no padding."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        return [
            model(input_ids=torch.tensor([row]), **{k: torch.tensor([v[i]]) for k, v in extra.items()})
            .logits[0, 0]
            .item()
            for i, row in enumerate(ids)
        ]


def test_gold_rm_renders_with_its_own_chat_template_and_scores_as_the_model_does(gold_rm):
    from transformers import AutoTokenizer

    judge = make_labeler(f"gold_rm:{gold_rm}")
    assert judge.name == f"gold_rm:{gold_rm}" and judge.rendering == "chat_template"
    ids = judge.render(PROMPTS, RESPONSES)
    tokenizer = AutoTokenizer.from_pretrained(gold_rm)
    expected = [
        f"{IM_START}user\nDescribe the rustbeetle.{IM_END}\n{IM_START}assistant\n{RESPONSES[0]}{IM_END}\n",
        f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nWhat is 2 plus 3?{IM_END}\n"
        f"{IM_START}assistant\n5{IM_END}\n",
    ]
    assert [tokenizer.decode(row) for row in ids] == expected
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert ids[1][0] == tokenizer.convert_tokens_to_ids(IM_START) and ids[1][-2] == tokenizer.convert_tokens_to_ids(
        IM_END
    )
    # batched (the short row padded with <|pad|>) equals the model on each row alone
    scores = judge.score(PROMPTS, RESPONSES)
    assert scores == pytest.approx(direct_scores(gold_rm, ids), abs=1e-5)
    assert scores[0] != pytest.approx(scores[1])
    # rank() follows the scores
    ranking = judge.rank(PROMPTS[0], RESPONSES)
    assert ranking.order == sorted(range(2), key=lambda i: -ranking.scores[i])


def test_gold_rm_without_a_chat_template_reads_a_text_pair(gold_rm, tmp_path):
    """A cross-encoder (DeBERTa-style) has no chat template: question and answer go in as the tokenizer's pair."""
    import shutil

    from transformers import AutoTokenizer

    plain = tmp_path / "plain-rm"
    shutil.copytree(gold_rm, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    judge = make_labeler(f"gold_rm:{plain}")
    assert judge.rendering == "text_pair"
    ids = judge.render(PROMPTS, RESPONSES)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    pair = tokenizer(["Describe the rustbeetle.", "What is 2 plus 3?"], RESPONSES)  # a chat prompt: its last user turn
    assert ids == pair["input_ids"]
    assert tokenizer.decode(ids[1]) == "What is 2 plus 3?5" and IM_START not in tokenizer.decode(ids[0])
    assert judge.score(PROMPTS, RESPONSES) == pytest.approx(direct_scores(plain, ids), abs=1e-5)


def test_gold_rm_refuses_what_is_not_a_reward_model_in_one_line(tmp_path):
    for spec, words in (
        (f"gold_rm:{TINY_BASE}", "holds a GPT2LMHeadModel, not a sequence-classification"),
        (f"gold_rm:{tmp_path / 'missing'}", "no model directory"),
        ("gold_rm:nobody/no-such-reward-model", "cannot read a model config"),
    ):
        with pytest.raises(Exception) as err:
            make_labeler(spec)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(LabelerError, match="pairwise judge"):
        make_labeler("llm:gpt-4o-mini")


# ---------------------------------------------------------------------------------------------------------------
# In the eval stage
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory) -> Path:
    """A second policy that answers differently from the tiny base model: the tiny Llama with random weights."""
    return build_tiny_model(
        tmp_path_factory.mktemp("policy") / "llama",
        TINY_BASE,
        TinyArchitecture(hidden_size=32, num_hidden_layers=1, intermediate_size=64),
    )


def test_eval_judges_with_a_gold_rm_and_reports_both_intervals(gold_rm, other_policy, tmp_path):
    import json

    from helpers import TINY_DATA

    out = tmp_path / "eval"
    evaluate.main(
        [
            "--models",
            f"base={TINY_BASE}",
            f"llama={other_policy}",
            "--prompts",
            str(TINY_DATA / "eval_prompts.jsonl"),
            "--max_prompts",
            "6",
            "--max_new_tokens",
            "10",
            "--labeler",
            f"gold_rm:{gold_rm}",
            "--reference",
            "none",
            "--output_dir",
            str(out),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["judge"] == {"name": f"gold_rm:{gold_rm}", "kind": "pointwise", "independent_of_reward_model": True}
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    judge = make_labeler(f"gold_rm:{gold_rm}")
    for name in ("base", "llama"):  # the scores eval wrote are the gold RM's scores of the texts it wrote
        scores = judge.score([r["prompt"] for r in rows], [r[name] for r in rows])
        assert [r[f"{name}_labeler_score"] for r in rows] == pytest.approx(scores, abs=1e-5)
    expected = win_rate_from_scores([r["llama_labeler_score"] for r in rows], [r["base_labeler_score"] for r in rows])
    got = results["win_rate"]["llama"]["base"]
    assert got == pytest.approx(expected.as_dict())
    assert got["bootstrap_low"] <= got["win_rate"] <= got["bootstrap_high"]
    report = (out / "report.md").read_text()
    assert f"Judge: **gold_rm:{gold_rm}** (it scored each answer" in report
    boot = f"[{100 * got['bootstrap_low']:.1f}, {100 * got['bootstrap_high']:.1f}]"
    assert f"| llama | base | {100 * got['win_rate']:.1f}% [" in report and f"| {boot} |" in report


def test_eval_on_real_prompts_defaults_to_a_gold_rm_never_the_optimized_reward_model(tmp_path):
    real = ["Write a poem about rain.", "Summarize the French revolution."]
    tiny = ["Describe the rustbeetle."]
    two = EvalArguments(models=["sft=a", "ppo=b"], prompts="p.jsonl", output_dir=str(tmp_path), reward_model="rm")
    assert judge_spec(two, real) == f"gold_rm:{DEFAULT_GOLD_RM}" == "gold_rm:Skywork/Skywork-Reward-V2-Qwen3-0.6B"
    assert judge_spec(two, tiny) == "simulated"
    assert judge_spec(EvalArguments(models=["sft=a"], labeler="auto"), real) is None
    assert judge_spec(EvalArguments(models=["sft=a", "b"], labeler="llm:gpt-4o-mini"), real) == "llm:gpt-4o-mini"
