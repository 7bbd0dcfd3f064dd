"""Judges independent of the optimized reward model (issue 13): the gold reward model in its own format.

The gold reward model here is a tiny LlamaForSequenceClassification built from a config, with the tiny world's
tokenizer extended by ChatML (instructgpt.tinyworld.architectures): another architecture, tokenizer and chat
template than the GPT-2 reward models the RM stage trains. The LLM judge's tests are in test_llm_judge.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_BASE
from instructgpt.labelers import LabelerError, make_labeler
from instructgpt.tinyworld.architectures import IM_END, IM_START, chat_tokenizer

PROMPTS = ["Describe the rustbeetle.", [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "What is 2 plus 3?"}]]
RESPONSES = ["The rustbeetle is large and red, and it lives under old bridges.", "5"]


@pytest.fixture(scope="module")
def gold_rm(tmp_path_factory) -> Path:
    """A random 1-layer LlamaForSequenceClassification (one output) with the ChatML tokenizer, saved to disk."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = chat_tokenizer(TINY_BASE, 128)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    out = tmp_path_factory.mktemp("gold") / "llama-rm"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def direct_scores(path: Path, ids: list[list[int]], **extra) -> list[float]:
    """The model called on each input alone: no batching, no padding."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([row]), **{k: torch.tensor([v[i]]) for k, v in extra.items()}).logits[0, 0].item()
                for i, row in enumerate(ids)]


def test_gold_rm_renders_with_its_own_chat_template_and_scores_as_the_model_does(gold_rm):
    from transformers import AutoTokenizer

    judge = make_labeler(f"gold_rm:{gold_rm}")
    assert judge.name == f"gold_rm:{gold_rm}" and judge.rendering == "chat_template"
    ids = judge.render(PROMPTS, RESPONSES)
    tokenizer = AutoTokenizer.from_pretrained(gold_rm)
    expected = [
        f"{IM_START}user\nDescribe the rustbeetle.{IM_END}\n{IM_START}assistant\n{RESPONSES[0]}{IM_END}\n",
        f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nWhat is 2 plus 3?{IM_END}\n{IM_START}assistant\n5{IM_END}\n",
    ]
    assert [tokenizer.decode(row) for row in ids] == expected
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert ids[1][0] == tokenizer.convert_tokens_to_ids(IM_START) and ids[1][-2] == tokenizer.convert_tokens_to_ids(IM_END)
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
    for spec, words in ((f"gold_rm:{TINY_BASE}", "holds a GPT2LMHeadModel, not a sequence-classification"),
                        (f"gold_rm:{tmp_path / 'missing'}", "no model directory"),
                        ("gold_rm:nobody/no-such-reward-model", "cannot read a model config")):
        with pytest.raises(Exception) as err:
            make_labeler(spec)
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(LabelerError, match="pairwise judge"):
        make_labeler("llm:gpt-4o-mini")
