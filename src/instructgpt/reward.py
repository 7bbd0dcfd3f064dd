"""Step 2 of InstructGPT: the reward model, wrapping TRL's ``RewardTrainer`` and extending it to K-way rankings.

    instructgpt-rm recipes/tiny/rm.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/rm.yaml

The model is the SFT model with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``): the reward
of a response is the head's output on the last token of ``prompt + response``.

Data, one ranking per row (every format becomes "a prompt and its responses, best first"):

- rankings: ``prompt`` and ``responses`` (best first), optionally ``scores`` (then the order is by score);
  this is what ``instructgpt collect`` writes;
- pairs, TRL's format: ``prompt``/``chosen``/``rejected`` (a K = 2 ranking), optionally ``score_chosen``/``score_rejected``;
- UltraFeedback's: ``instruction`` and ``completions`` (each with ``response`` and a rating, ``score_key``).

Training (Ouyang et al. 2022, section 3.5): for each prompt, every response is forwarded once and all
:math:`\\binom{K}{2}` comparisons of the prompt form one batch element of :func:`instructgpt.losses.kway_ranking_loss`
- K forward passes instead of the :math:`2\\binom{K}{2}` a pairwise trainer needs, and no shuffling of correlated
pairs as independent examples (the paper's reason: it overfits).

After training, the reward is shifted so that the labelers' demonstrations score 0 on average (section 3.5: "we
normalize the reward model using a bias so that the labeler demonstrations achieve a mean score of 0 before doing
RL"). The shift is stored with the model (``config.reward_shift`` and ``reward_normalization.json``), and
:func:`score_responses` subtracts it, so PPO, collection and evaluation all see normalized rewards.
"""

from __future__ import annotations

import math
import random
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from instructgpt.config import ScriptArguments
from instructgpt.data import DataError, find_empty, load_data, require_columns, require_rows
from instructgpt.errors import InstructGPTError
from instructgpt.losses import kway_ranking_loss
from instructgpt.modeling import (
    check_model_path,
    load_tokenizer,
    lora_config,
    model_context_length,
    model_init_kwargs,
)
from instructgpt.outputs import atomic_write_json, mark_complete, prepare_output_dir
from instructgpt.recipe import Recipe, parse_stage_args
from instructgpt.tracking import finish_wandb, start_wandb

NORMALIZATION_FILE = "reward_normalization.json"
Prompt = str | list[dict[str, str]]


class RewardModelError(InstructGPTError):
    """A path that should hold a reward model but does not (a causal LM without a score head, an adapter, ...)."""


@dataclass
class RMScriptArguments(ScriptArguments):
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Without `eval_dataset_name` or `dataset_test_split`, hold out this fraction of the prompts "
            "(all rankings of a prompt go to the same side) to measure held-out pairwise accuracy and Kendall's tau."
        },
    )
    score_key: str = field(
        default="fine-grained_score",
        metadata={
            "help": "UltraFeedback-style data (`instruction` + `completions`): the completion field that rates it. "
            "`fine-grained_score` is the mean of the four aspect ratings; `overall_score` is the critique's score."
        },
    )
    demonstrations_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Labeler demonstrations (prompt/completion or messages, as for SFT) whose mean reward becomes "
            "0 after training (InstructGPT normalizes the RM so demonstrations score 0 on average). Unset: no shift."
        },
    )
    demonstrations_config: str | None = field(default=None, metadata={"help": "Hub configuration of the demonstrations."})
    demonstrations_split: str = field(default="train", metadata={"help": "Split of the demonstrations (Hub datasets)."})
    max_demonstrations: int | None = field(
        default=2000, metadata={"help": "Use at most this many demonstrations to estimate the shift."}
    )
    scoring_batch_size: int = field(
        default=32, metadata={"help": "Sequences per forward pass when scoring demonstrations after training."}
    )


def _main_print(message: str) -> None:
    from instructgpt.processes import process_state

    if process_state().is_main_process:
        print(f"[instructgpt] {message}")


# --------------------------------------------------------------------------------------------------------------
# Data: every format becomes rankings {"prompt", "responses" best first}
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RankingStats:
    """What cleaning the rankings did, for the log line that says how many were dropped and why."""

    ties: int = 0  # responses dropped because a better-ranked one had the same score or the same text
    unrated: int = 0  # UltraFeedback completions without a usable rating or with an empty response
    too_few: int = 0  # rankings left with fewer than 2 responses
    too_long: int = 0  # responses longer than max_length tokens

    def describe(self) -> str:
        parts = []
        if self.unrated:
            parts.append(f"{self.unrated} completions without a rating or response")
        if self.ties:
            parts.append(f"{self.ties} responses tied (same score or same text) with a better-ranked one, "
                         "since the ranking loss needs a strict order")
        if self.too_long:
            parts.append(f"{self.too_long} responses longer than max_length")
        if self.too_few:
            parts.append(f"{self.too_few} rankings left with fewer than 2 responses")
        return "dropped " + "; ".join(parts) if parts else "nothing dropped"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def strict_order(responses: list[str], scores: list[float] | None, stats: RankingStats) -> list[str]:
    """Responses best first with ties removed: sort by score (stable) when given, then keep the first of each tie.

    A tie is a response whose score equals a better-ranked one's, or whose text repeats one: no pairwise loss term
    can prefer either, so the later one is dropped (and counted) rather than trained on an arbitrary order.
    """
    order = list(range(len(responses)))
    if scores is not None:
        order.sort(key=lambda j: -scores[j])
    kept: list[str] = []
    seen_texts: set[str] = set()
    last_score: float | None = None
    for j in order:
        text = responses[j]
        tied = text in seen_texts or (scores is not None and last_score is not None and scores[j] == last_score)
        if tied:
            stats.ties += 1
            continue
        kept.append(text)
        seen_texts.add(text)
        last_score = scores[j] if scores is not None else None
    return kept


def _response_text(value: Any) -> Any:
    """A response given as a string, or (TRL's conversational format) as a list holding the assistant message."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1].get("content")
    return value


def rankings_from_dataset(dataset: Any, *, name: str, source: str, score_key: str = "fine-grained_score") -> tuple[list[dict[str, Any]], RankingStats]:
    """Turn any supported preference dataset into rankings, validating each row; errors name the row.

    Bad input fails loudly (a ranking with fewer than 2 responses, an empty response, scores that do not match the
    responses); what the loss cannot use is dropped and counted (ties). UltraFeedback rows are third-party data, so
    unrated completions are dropped and counted instead of failing the run.
    """
    fmt = require_columns(
        dataset,
        [("prompt", "responses"), ("prompt", "chosen", "rejected"), ("instruction", "completions")],
        name=name,
        source=source,
    )
    require_rows(dataset, name=name, source=source)
    stats = RankingStats()
    rows: list[dict[str, Any]] = []
    columns = set(dataset.column_names)
    for index, row in enumerate(dataset):
        where = f"{source}: {name} row {index}"
        prompt = row["instruction"] if fmt[0] == "instruction" else row["prompt"]
        if find_empty([prompt]) is not None:
            raise DataError(f"{where}: empty prompt")
        if fmt == ("prompt", "responses"):
            responses = row["responses"]
            if not isinstance(responses, list) or len(responses) < 2:
                count = len(responses) if isinstance(responses, list) else 0
                raise DataError(f"{where}: a ranking needs at least 2 responses, got {count}")
            responses = [_response_text(r) for r in responses]
            empty = find_empty(responses)
            if empty is not None:
                raise DataError(f"{where}: response {empty} is empty")
            scores = row.get("scores") if "scores" in columns else None
            if scores is not None:
                if not isinstance(scores, list) or len(scores) != len(responses):
                    got = len(scores) if isinstance(scores, list) else type(scores).__name__
                    raise DataError(f"{where}: `scores` has {got} values for {len(responses)} responses")
                bad = next((j for j, s in enumerate(scores) if not _is_number(s)), None)
                if bad is not None:
                    raise DataError(f"{where}: score {bad} is {scores[bad]!r}, not a number")
        elif fmt == ("prompt", "chosen", "rejected"):
            responses = [_response_text(row["chosen"]), _response_text(row["rejected"])]
            for column, text in zip(("chosen", "rejected"), responses):
                if find_empty([text]) is not None:
                    raise DataError(f"{where}: empty `{column}`")
            scores = None
            if {"score_chosen", "score_rejected"} <= columns:
                scores = [row["score_chosen"], row["score_rejected"]]
                if not all(_is_number(s) for s in scores):
                    raise DataError(f"{where}: `score_chosen`/`score_rejected` must be numbers, got {scores}")
                if scores[1] > scores[0]:
                    raise DataError(f"{where}: `score_rejected` ({scores[1]}) is above `score_chosen` ({scores[0]})")
        else:  # UltraFeedback: rated completions in no particular order
            responses, scores = [], []
            for completion in row["completions"] or []:
                text, score = completion.get("response"), completion.get(score_key)
                if find_empty([text]) is not None or not _is_number(score):
                    stats.unrated += 1
                    continue
                responses.append(text)
                scores.append(float(score))
        kept = strict_order(responses, scores, stats)
        if len(kept) < 2:
            stats.too_few += 1
            continue
        rows.append({"prompt": prompt, "responses": kept})
    if not rows:
        raise DataError(f"{source}: {name}: no usable ranking left ({stats.describe()})")
    return rows, stats


def load_rankings(
    name: str, *, key: str, source: str, config: str | None, split: str, limit: int | None, score_key: str
) -> list[dict[str, Any]]:
    """Load one split of a preference dataset as rankings and say what was dropped."""
    dataset = load_data(name, key=key, source=source, config=config, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    rows, stats = rankings_from_dataset(dataset, name=f"`{key}` ({name})", source=source, score_key=score_key)
    sizes = Counter(len(r["responses"]) for r in rows)
    comparisons = sum(math.comb(len(r["responses"]), 2) for r in rows)
    k_range = f"K = {min(sizes)}" + (f"..{max(sizes)}" if max(sizes) != min(sizes) else "")
    _main_print(f"{name}: {len(rows)} rankings ({k_range}, {comparisons} comparisons); {stats.describe()}")
    return rows


def split_by_prompt(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the distinct prompts: a prompt's rankings never straddle train and eval."""
    prompts = sorted({repr(r["prompt"]) for r in rows})
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: max(1, round(fraction * len(prompts)))])
    train = [r for r in rows if repr(r["prompt"]) not in held_out]
    evaluation = [r for r in rows if repr(r["prompt"]) in held_out]
    return train, evaluation


# --------------------------------------------------------------------------------------------------------------
# Tokenization and batching: K responses per ranking, each forwarded once
# --------------------------------------------------------------------------------------------------------------


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def end_at_eos(text: str, eos_token: str | None) -> str:
    """Cut what a chat template writes after the answer's closing EOS (ChatML: a newline after ``<|im_end|>``).

    A sequence-classification model reads its score at the last token, so the reward must be read at the EOS:
    that is the last token of a response the policy samples (PPO scores ``prompt + sampled tokens up to EOS``).
    """
    if eos_token:
        cut = text.rfind(eos_token)
        if cut != -1 and not text[cut + len(eos_token):].strip():
            return text[: cut + len(eos_token)]
    return text


def reward_texts(tokenizer: Any, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[str]:
    """What the reward model reads: the chat template applied to the prompt and the response as the assistant turn,
    ending at the answer's EOS (:func:`end_at_eos`).

    For a template built from a ``prompt_template`` this is ``format_prompt(prompt) + response + EOS``, exactly the
    text SFT trained on and the text the policy produces, so the reward model scores what PPO samples.
    """
    return [
        end_at_eos(
            tokenizer.apply_chat_template(_messages(p) + [{"role": "assistant", "content": r}], tokenize=False),
            tokenizer.eos_token,
        )
        for p, r in zip(prompts, responses)
    ]


def reward_input_ids(tokenizer: Any, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
    """Token ids of :func:`reward_texts` (``add_special_tokens=False``: the template wrote any BOS itself)."""
    return tokenizer(reward_texts(tokenizer, prompts, responses), add_special_tokens=False)["input_ids"]


def tokenize_rankings(rows: list[dict[str, Any]], tokenizer: Any, max_length: int | None, name: str) -> Any:
    """A ``datasets.Dataset`` with one row per ranking: ``response_ids`` holds its K token-id lists, best first.

    Responses longer than ``max_length`` tokens are dropped (as TRL's RewardTrainer filters long pairs); a ranking
    left with fewer than 2 responses goes too, and the run says how many.
    """
    import datasets

    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [text for r in rows for text in r["responses"]]
    flat = reward_input_ids(tokenizer, prompts, responses)
    stats = RankingStats()
    out, start = [], 0
    for r in rows:
        ids = flat[start:start + len(r["responses"])]
        start += len(r["responses"])
        if max_length is not None:
            kept = [x for x in ids if len(x) <= max_length]
            stats.too_long += len(ids) - len(kept)
            ids = kept
        if len(ids) < 2:
            stats.too_few += 1
            continue
        out.append({"response_ids": ids})
    if stats.too_long:
        _main_print(f"{name}: {stats.describe()} (max_length={max_length})")
    if not out:
        raise DataError(f"{name}: every ranking lost its responses to max_length={max_length}; nothing left")
    return datasets.Dataset.from_list(out)


@dataclass
class RankingCollator:
    """Flatten a batch of rankings into one padded batch of sequences.

    P rankings with :math:`K_1..K_P` responses give ``input_ids`` of shape :math:`(\\sum_p K_p, T)`, ranking by
    ranking and best first inside each, right-padded; ``num_responses`` (shape ``(P,)``) says where each ranking's
    responses are. ``num_responses`` comes first because transformers' ``Trainer`` reads the batch size (the
    number of rankings) from the first tensor.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [seq for example in examples for seq in example["response_ids"]]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[i, : len(seq)] = 1
        num_responses = torch.tensor([len(example["response_ids"]) for example in examples], dtype=torch.long)
        return {"num_responses": num_responses, "input_ids": input_ids, "attention_mask": attention_mask}


def unflatten_rewards(flat: torch.Tensor, num_responses: torch.Tensor) -> torch.Tensor:
    """Rewards of the flattened batch as a ``(P, K_max)`` matrix, row p holding ranking p best first (0-padded).

    ``masked_scatter`` fills the valid cells row by row, in the collator's order, and passes gradients to ``flat``.
    """
    k_max = int(num_responses.max())
    valid = torch.arange(k_max, device=flat.device).unsqueeze(0) < num_responses.unsqueeze(1)
    return torch.zeros(valid.shape, dtype=flat.dtype, device=flat.device).masked_scatter(valid, flat)


def ranking_agreement(rewards: torch.Tensor, num_responses: torch.Tensor) -> torch.Tensor:
    """Per ranking: ``[concordant pairs, pairs, Kendall's tau]`` of the rewards against the labeler's order.

    Row p of ``rewards`` is best first, so pair :math:`i < j` is concordant when :math:`r_i > r_j` and discordant
    when :math:`r_i < r_j`; a tie in reward is neither. Kendall's tau (tau-a, the labeler's order being strict) is
    :math:`(C - D) / \\binom{K}{2}`; pairwise accuracy over a dataset is :math:`\\sum C / \\sum \\binom{K}{2}`.
    """
    k_max = rewards.shape[1]
    idx = torch.arange(k_max, device=rewards.device)
    valid = idx.unsqueeze(0) < num_responses.unsqueeze(1)
    pairs = (idx.unsqueeze(1) < idx.unsqueeze(0)).unsqueeze(0) & valid.unsqueeze(2) & valid.unsqueeze(1)
    diffs = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    concordant = ((diffs > 0) & pairs).sum(dim=(1, 2)).to(rewards.dtype)
    discordant = ((diffs < 0) & pairs).sum(dim=(1, 2)).to(rewards.dtype)
    total = pairs.sum(dim=(1, 2)).to(rewards.dtype)
    tau = (concordant - discordant) / total.clamp(min=1)
    return torch.stack([concordant, total, tau], dim=1)


def summarize_agreement(stats: torch.Tensor) -> dict[str, float]:
    """Dataset-level metrics from the stacked per-ranking rows of :func:`ranking_agreement`."""
    stats = stats.double()
    return {
        "pairwise_accuracy": (stats[:, 0].sum() / stats[:, 1].sum().clamp(min=1)).item(),
        "kendall_tau": stats[:, 2].mean().item(),
        "num_rankings": int(stats.shape[0]),
        "num_comparisons": int(stats[:, 1].sum().item()),
    }


def build_trainer_class():
    """TRL's ``RewardTrainer`` with K-way ranking batches and InstructGPT's loss.

    TRL builds the model (scalar head, LoRA, pad token, dropout off), the optimizer and the logging; we replace the
    data (rankings, tokenized by :func:`tokenize_rankings`), the collator, the loss and the evaluation metrics.
    Defined lazily so importing this module does not import TRL.
    """
    from trl import RewardTrainer

    class KWayRewardTrainer(RewardTrainer):
        _ranking_stats: list[torch.Tensor]

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "response_ids" not in dataset.column_names:
                raise DataError(f"{dataset_name} dataset: expected tokenized rankings (`response_ids`), see tokenize_rankings")
            return dataset

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["response_ids"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """One forward pass over every response of every ranking, then the K-way loss per ranking."""
            mode = "train" if self.model.training else "eval"
            num_responses = inputs["num_responses"]
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            rewards = unflatten_rewards(outputs.logits.squeeze(-1), num_responses)
            loss = kway_ranking_loss(rewards, num_responses)
            if self.args.center_rewards_coefficient is not None:
                # Eisenstein et al. 2023 (as TRL): a small penalty on the squared rewards keeps them centred
                valid = torch.arange(rewards.shape[1], device=rewards.device) < num_responses.unsqueeze(1)
                loss = loss + self.args.center_rewards_coefficient * rewards[valid].pow(2).mean()

            with torch.no_grad():
                stats = ranking_agreement(rewards.detach().float(), num_responses)
                if mode == "train":
                    tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                    self._total_train_tokens += tokens // self._tp_size
                    self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
                    totals = self.accelerator.gather(stats[:, :2].sum(0, keepdim=True)).sum(0)
                    self._metrics[mode]["accuracy"].append((totals[0] / totals[1].clamp(min=1)).item())
                    self._metrics[mode]["kendall_tau"].append(self.accelerator.gather(stats[:, 2]).mean().item())
                    flat = self.accelerator.gather(outputs.logits.detach().float())
                    self._metrics[mode]["mean_reward"].append(flat.mean().item())
                    self._metrics[mode]["min_reward"].append(flat.min().item())
                    self._metrics[mode]["max_reward"].append(flat.max().item())
                else:
                    # gather_for_metrics drops the copies an uneven last batch gets under several processes
                    self._ranking_stats.append(self.accelerator.gather_for_metrics(stats).cpu())
            return (loss, outputs) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
            """The usual loop, plus held-out pairwise accuracy and Kendall's tau over every ranking it saw."""
            self._ranking_stats = []
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
            if self._ranking_stats:
                summary = summarize_agreement(torch.cat(self._ranking_stats))
                output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in summary.items()})
            return output

    return KWayRewardTrainer


# --------------------------------------------------------------------------------------------------------------
# Loading and scoring: what every consumer of a reward model calls
# --------------------------------------------------------------------------------------------------------------


def check_reward_model(path: str, key: str = "reward_model_path", source: str = "recipe") -> Any:
    """Fail early, naming the key, unless ``path`` holds a sequence-classification model with one output.

    The usual mistake is pointing at the SFT model (a causal LM): it has no score head, and loading it as a reward
    model would silently attach a random one.
    """
    from transformers import AutoConfig

    check_model_path(path, key, source)
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
        raise RewardModelError(
            f"{source}: `{key}`: {path} holds a LoRA adapter, not a model; instructgpt-rm saves merged reward models, "
            "so point to its output_dir (or merge the adapter into its base first)"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise RewardModelError(f"{source}: `{key}`: cannot read a model config from {path}: {err}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        kind = architectures[0] if architectures else config.model_type
        raise RewardModelError(
            f"{source}: `{key}`: {path} holds a {kind} (a causal language model without a score head), not a reward "
            "model; train one with `instructgpt-rm RECIPE.yaml` and use its output_dir"
        )
    if getattr(config, "num_labels", 1) != 1:
        raise RewardModelError(f"{source}: `{key}`: {path} has {config.num_labels} outputs; a reward model has 1")
    return config


def load_reward_model(
    path: str,
    *,
    device: str | torch.device | None = None,
    dtype: Any = None,
    key: str = "reward_model_path",
    source: str = "recipe",
) -> tuple[Any, Any, float]:
    """Load a reward model for scoring: ``(model in eval mode, tokenizer, shift)``.

    ``shift`` is the normalization stored by the RM stage (0 for a model trained elsewhere);
    :func:`score_responses` subtracts it by itself, so callers only need it for display.
    """
    from transformers import AutoModelForSequenceClassification

    check_reward_model(path, key, source)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    tokenizer = load_tokenizer(path)
    if model.config.pad_token_id is None:  # needed to find each sequence's last token
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, reward_shift(model)


def reward_shift(model: Any) -> float:
    """The normalization bias stored in the model's config (0.0 when there is none)."""
    module = getattr(model, "module", model)
    return float(getattr(module.config, "reward_shift", 0.0) or 0.0)


@torch.inference_mode()
def score_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    batch_size: int = 32,
    shift: float | None = None,
) -> list[float]:
    """Normalized rewards :math:`r(x, y) - b` of each (prompt, response), in input order.

    ``b`` is the model's stored shift unless ``shift`` is given (``shift=0.0`` gives raw rewards). Texts are built
    exactly as in training (:func:`reward_texts`); one longer than the model's context keeps its end, where the
    reward is read. Sequences are batched by length to waste little padding.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return []
    module = getattr(model, "module", model)
    bias = reward_shift(module) if shift is None else shift
    context = model_context_length(module.config)
    ids = reward_input_ids(tokenizer, prompts, responses)
    if context is not None:
        ids = [x[-context:] for x in ids]
    pad_id = module.config.pad_token_id if module.config.pad_token_id is not None else tokenizer.pad_token_id
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    collate = RankingCollator(pad_token_id=pad_id)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    scores = [0.0] * len(ids)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([{"response_ids": [ids[i] for i in chunk]}])
            logits = module(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
            ).logits
            for i, value in zip(chunk, logits.squeeze(-1).float().tolist()):
                scores[i] = value - bias
    finally:
        if was_training:
            module.train()
    return scores


def evaluate_rankings(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batch_size: int = 32) -> dict[str, float]:
    """Pairwise accuracy and Kendall's tau of a reward model on rankings ``{"prompt", "responses" best first}``."""
    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [text for r in rows for text in r["responses"]]
    flat = torch.tensor(score_responses(model, tokenizer, prompts, responses, batch_size=batch_size, shift=0.0))
    num_responses = torch.tensor([len(r["responses"]) for r in rows])
    return summarize_agreement(ranking_agreement(unflatten_rewards(flat, num_responses), num_responses))


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


def load_demonstration_pairs(script_args: RMScriptArguments, source: str) -> tuple[list[Prompt], list[str]]:
    """Prompts and responses of the demonstrations whose mean reward defines the shift (SFT's formats and checks)."""
    from instructgpt.sft import load_demonstrations

    settings = types.SimpleNamespace(dataset_config=script_args.demonstrations_config)
    dataset = load_demonstrations(
        script_args.demonstrations_dataset, settings, script_args.demonstrations_split, "demonstrations_dataset",
        source, script_args.max_demonstrations,
    )
    prompts = [example["prompt"] for example in dataset]
    responses = [example["completion"][-1]["content"] for example in dataset]
    return prompts, responses


def demonstration_shift(model: Any, tokenizer: Any, prompts: list[Prompt], responses: list[str], batch_size: int) -> dict[str, float]:
    """Mean and spread of the raw rewards of the demonstrations; the mean becomes the stored shift."""
    raw = torch.tensor(score_responses(model, tokenizer, prompts, responses, batch_size=batch_size, shift=0.0), dtype=torch.float64)
    return {
        "shift": raw.mean().item(),
        "std": raw.std().item() if len(raw) > 1 else 0.0,
        "num_demonstrations": len(raw),
    }


def _load_splits(script_args: RMScriptArguments, training_args: Any, source: str) -> tuple[list[dict], list[dict] | None]:
    common = {"config": script_args.dataset_config, "source": source, "score_key": script_args.score_key}
    train_rows = load_rankings(
        script_args.dataset_name, key="dataset_name", split=script_args.dataset_train_split,
        limit=script_args.max_train_samples, **common,
    )
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        name = script_args.eval_dataset_name or script_args.dataset_name
        key = "eval_dataset_name" if script_args.eval_dataset_name else "dataset_test_split"
        eval_rows = load_rankings(
            name, key=key, split=script_args.dataset_test_split or "test", limit=script_args.max_eval_samples, **common
        )
        return train_rows, eval_rows
    if script_args.eval_fraction > 0:
        if not 0 < script_args.eval_fraction < 1:
            raise InstructGPTError(f"{source}: `eval_fraction` must be between 0 and 1, got {script_args.eval_fraction}")
        train_rows, eval_rows = split_by_prompt(train_rows, script_args.eval_fraction, training_args.seed)
        if not train_rows:
            raise DataError(f"{source}: `eval_fraction` {script_args.eval_fraction} leaves no prompt to train on")
        if script_args.max_eval_samples is not None:
            eval_rows = eval_rows[: script_args.max_eval_samples]
        _main_print(f"held out {len(eval_rows)} rankings ({script_args.eval_fraction:.0%} of the prompts) for evaluation")
        return train_rows, eval_rows
    return train_rows, None


def load_sequence_classifier(
    model_path: str, model_args: Any, trust_remote_code: bool, quantize: bool = True, source: str = "recipe"
) -> Any:
    """The SFT model (or any checkpoint) with a new scalar head; the expected "new weights" warnings are silenced.

    ``quantize=False`` loads in full precision even when the recipe asks for 4/8-bit weights (a model trained in
    full, such as PPO's value function).
    """
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    kwargs = model_init_kwargs(model_args, trust_remote_code=trust_remote_code, quantize=quantize, source=source)
    with suppress_seqcls_warning():
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, **kwargs)


def run_rm(script_args: RMScriptArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Train, evaluate, normalize and save one reward model as the recipe describes; returns the final metrics."""
    from transformers import AutoConfig, set_seed

    source = recipe.source
    model_path = check_model_path(model_args.model_name_or_path, "model_name_or_path", source)
    if not script_args.dataset_name:
        raise InstructGPTError(f"{source}: `dataset_name` is required (rankings or pairs: a .jsonl file or a Hub id)")
    if not training_args.output_dir:
        raise InstructGPTError(f"{source}: `output_dir` is required")
    if getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False):
        raise InstructGPTError(
            f"{source}: `load_in_4bit`/`load_in_8bit` is not supported for the reward model (its merged weights "
            "would stay quantized, which PPO and evaluation cannot load); use LoRA in bf16 (use_peft: true) instead"
        )
    resume_from = prepare_output_dir(training_args.output_dir, script_args.if_output_exists, source)

    train_rows, eval_rows = _load_splits(script_args, training_args, source)
    demo_prompts: list[Prompt] = []
    demo_responses: list[str] = []
    if script_args.demonstrations_dataset:
        demo_prompts, demo_responses = load_demonstration_pairs(script_args, source)

    tokenizer = load_tokenizer(
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        chat_template=script_args.chat_template,
        prompt_template=script_args.prompt_template,
        pad_token=script_args.pad_token,
    )
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    context = model_context_length(config)
    if context is not None and (training_args.max_length is None or training_args.max_length > context):
        _main_print(f"max_length={training_args.max_length} exceeds the model's context; using {context}")
        training_args.max_length = context
    train_dataset = tokenize_rankings(train_rows, tokenizer, training_args.max_length, f"{source}: train rankings")
    eval_dataset = None
    if eval_rows:
        eval_dataset = tokenize_rankings(eval_rows, tokenizer, training_args.max_length, f"{source}: eval rankings")

    set_seed(training_args.seed)  # the new score head is random: seed it
    model = load_sequence_classifier(model_path, model_args, training_args.trust_remote_code, source=source)
    model.config.pad_token_id = tokenizer.pad_token_id

    run = start_wandb(
        training_args.report_to, training_args.project, training_args.run_name, "rm", recipe.data,
        training_args.output_dir,
    )
    trainer = build_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=RankingCollator(pad_token_id=tokenizer.pad_token_id),
        peft_config=lora_config(
            model_args, "SEQ_CLS", source=source, trust_remote_code=training_args.trust_remote_code
        ),
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    accelerator = trainer.accelerator
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["num_processes"] = accelerator.num_processes
    metrics["global_step"] = trainer.state.global_step
    metrics["train_rankings"] = len(train_dataset)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        metrics["first_logged_loss"], metrics["last_logged_loss"] = losses[0], losses[-1]
    _main_print(f"process {accelerator.process_index}/{accelerator.num_processes}: {trainer.state.global_step} optimizer steps")

    if eval_dataset is not None:
        held_out = trainer.evaluate()
        metrics.update(held_out)
        _main_print(
            f"held-out pairwise accuracy {held_out['eval_pairwise_accuracy']:.3f}, Kendall's tau "
            f"{held_out['eval_kendall_tau']:.3f} ({held_out['eval_num_rankings']} rankings, "
            f"{held_out['eval_num_comparisons']} comparisons)"
        )

    # LoRA: merge the adapter so that the saved reward model loads with AutoModelForSequenceClassification as it is
    final_model = accelerator.unwrap_model(trainer.model)
    if hasattr(final_model, "merge_and_unload"):
        final_model = final_model.merge_and_unload()
    normalization = {"shift": 0.0, "std": None, "num_demonstrations": 0}
    if demo_prompts:
        normalization = demonstration_shift(
            final_model, tokenizer, demo_prompts, demo_responses, script_args.scoring_batch_size
        )
        _main_print(
            f"reward shift {normalization['shift']:+.4f}: the mean raw reward of {normalization['num_demonstrations']} "
            f"demonstrations ({script_args.demonstrations_dataset}); stored with the model so they average 0"
        )
    final_model.config.reward_shift = normalization["shift"]
    metrics["reward_shift"] = normalization["shift"]

    if final_model is accelerator.unwrap_model(trainer.model):
        trainer.save_model(training_args.output_dir)  # handles sharded (FSDP/ZeRO) weights
    elif trainer.is_world_process_zero():
        final_model.save_pretrained(training_args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        atomic_write_json(
            Path(training_args.output_dir) / NORMALIZATION_FILE,
            {**normalization, "dataset": script_args.demonstrations_dataset,
             "note": "score_responses() returns raw reward - shift, so the demonstrations average 0"},
        )
        if run is not None:
            run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        mark_complete(training_args.output_dir, "rm", recipe.data, metrics)
        print(f"[instructgpt] reward model saved to {training_args.output_dir}")
    accelerator.wait_for_everyone()
    finish_wandb(run)
    return metrics


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, RewardConfig

    return parse_stage_args(argv, "rm", (RMScriptArguments, RewardConfig, ModelConfig))


def main(argv: list[str] | None = None) -> None:
    from instructgpt.cli import run_cli

    def _run() -> None:
        (script_args, training_args, model_args), recipe = parse_args(argv)
        run_rm(script_args, training_args, model_args, recipe)

    run_cli(_run)


if __name__ == "__main__":
    main(sys.argv[1:])
