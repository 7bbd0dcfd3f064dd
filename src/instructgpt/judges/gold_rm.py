"""A gold reward model: any sequence-classification reward model, reading prompt and response in its own format.

Gao et al. (2022, "Scaling laws for reward model overoptimization") measure over-optimization with a gold reward
model that the policy never trained against. Here that is any model with one output whose architecture ends in
``ForSequenceClassification``, from the Hub or a directory (``Skywork/Skywork-Reward-V2-Qwen3-0.6B``,
``OpenAssistant/reward-model-deberta-v3-large-v2``, a reward model of your own), used with its own tokenizer.

How a (prompt, response) becomes the model's input, chosen by its tokenizer:

- **chat template** (the tokenizer has one, as Skywork's): the conversation ``[user: prompt, assistant: response]``
  (a chat prompt's own turns, system turns included, then the assistant turn) rendered with ``apply_chat_template``
  and tokenized without adding special tokens (the template writes its BOS itself), which is what the model cards
  of such reward models do. The score is the model's output as it comes (its head reads the last token): no cut at
  the EOS and no shift, unlike this project's own reward models (``reward_model:PATH``, which read the text they were
  trained on and subtract their stored shift).
- **text pair** (no chat template, as DeBERTa cross-encoders): ``tokenizer(question, answer)`` with the question the
  prompt's text (a chat prompt: its last user turn) and the answer the response; the tokenizer adds its own
  separators (``[CLS] question [SEP] answer [SEP]``). Pairs too long for the model lose tokens from the longer side.

A chat-template input longer than the model's context keeps its end, where a last-token head reads the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from instructgpt.data.formats import Prompt, prompt_text
from instructgpt.judges.base import Labeler, LabelerError
from instructgpt.modeling import check_model_path, model_context_length
from instructgpt.modeling.config import load_pretrained

Rendering = Literal["chat_template", "text_pair"]

# The gold reward model `instructgpt eval` judges with (`labeler: auto`) on prompts that are not the tiny world's.
DEFAULT_GOLD_RM = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _messages(prompt: Prompt, response: str) -> list[dict[str, str]]:
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(t) for t in prompt]
    return turns + [{"role": "assistant", "content": response}]


class GoldRewardModelJudge(Labeler):
    """Scores with any sequence-classification reward model in its own input format (see the module docstring)."""

    def __init__(
        self, path: str, *, batch_size: int = 16, device: Any = None, source: str = "recipe", key: str = "labeler"
    ):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        check_model_path(path, key, source)
        where = f"{source}: `{key}`: gold_rm:{path}"
        try:
            config = load_pretrained(AutoConfig, path, key=key, source=source)
        except (OSError, ValueError) as err:
            raise LabelerError(f"{where}: cannot read a model config ({_one_line(err)})") from None
        architectures = list(getattr(config, "architectures", None) or [])
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            kind = architectures[0] if architectures else config.model_type
            raise LabelerError(f"{where}: holds a {kind}, not a sequence-classification reward model")
        if getattr(config, "num_labels", 1) != 1:
            raise LabelerError(f"{where}: has {config.num_labels} outputs; a reward model has 1")
        try:
            self.tokenizer = load_pretrained(AutoTokenizer, path, key=key, source=source)
            self.model = load_pretrained(AutoModelForSequenceClassification, path, key=key, source=source)
        except (OSError, ValueError) as err:
            raise LabelerError(f"{where}: cannot load the model or its tokenizer ({_one_line(err)})") from None
        if self.tokenizer.pad_token is None:  # batches need padding; the attention mask hides it
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # a last-token head finds each row's end by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self.rendering: Rendering = "chat_template" if self.tokenizer.chat_template else "text_pair"
        self.batch_size = batch_size
        self.path = path
        self.name = f"gold_rm:{path}"
        context = model_context_length(self.model.config)
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_length = min(x for x in (context, limit if limit and limit < 10**8 else None, 10**8) if x)

    def encode(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[dict[str, list[int]]]:
        """The model's input for each (prompt, response): ``input_ids`` (and ``token_type_ids`` for a text pair when
        the tokenizer makes them), see the module docstring."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.rendering == "chat_template":
            texts = [
                self.tokenizer.apply_chat_template(_messages(p, r), tokenize=False) for p, r in zip(prompts, responses)
            ]
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            return [{"input_ids": list(x[-self.max_length :])} for x in ids]
        encoded = self.tokenizer(
            [prompt_text(p) for p in prompts], list(responses), truncation="longest_first", max_length=self.max_length
        )
        keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
        return [{k: list(encoded[k][i]) for k in keys} for i in range(len(prompts))]

    def render(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
        """The token ids the model reads for each (prompt, response)."""
        return [e["input_ids"] for e in self.encode(prompts, responses)]

    @torch.inference_mode()
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """The model's score of each (prompt, response), in input order; batched by length (the tokenizer pads)."""
        rows = self.encode(prompts, responses)
        device = next(self.model.parameters()).device
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
        scores = [0.0] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer.pad([rows[i] for i in chunk], return_tensors="pt")
            logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
            for i, value in zip(chunk, logits.squeeze(-1).float().tolist()):
                scores[i] = value
        return scores
