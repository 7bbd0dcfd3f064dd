"""Preference data as rankings: every supported format becomes ``{"prompt", "responses" best first}``.

- rankings: ``prompt`` and ``responses`` (best first), optionally ``scores`` (then the order is by score); this is
  what ``instructgpt collect`` writes;
- pairs, TRL's format: ``prompt``/``chosen``/``rejected`` (a K = 2 ranking), optionally
  ``score_chosen``/``score_rejected``; or TRL's implicit-prompt pairs, ``chosen``/``rejected`` alone, each a whole
  conversation: both are split by the one rule (:func:`~instructgpt.data.formats.split_conversation`) and must
  start from the same prompt;
- UltraFeedback's: ``instruction`` and ``completions`` (each with ``response`` and a rating, ``score_key``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from instructgpt.data.formats import prompt_problem, split_conversation, turns_problem
from instructgpt.data.loading import DataError, find_empty, load_data, require_columns, require_rows, row_place
from instructgpt.data.mixtures import mixable
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)


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
            parts.append(
                f"{self.ties} responses tied (same score or same text) with a better-ranked one, "
                "since the ranking loss needs a strict order"
            )
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


def implicit_prompt_pair(chosen: Any, rejected: Any, where: str) -> dict[str, Any]:
    """A pair given as two whole conversations (TRL's implicit prompt) as ``prompt``/``chosen``/``rejected``: each
    is split by :func:`~instructgpt.data.formats.split_conversation`, and both must have the same prompt turns."""
    pieces = {}
    for column, conversation in (("chosen", chosen), ("rejected", rejected)):
        if (problem := turns_problem(conversation)) is not None:
            raise DataError(f"{where}: `{column}` {problem} (without a `prompt` column, each is a whole conversation)")
        prompt, response = split_conversation(conversation)
        if response is None:
            raise DataError(f"{where}: `{column}` does not end with an assistant turn, so it holds no response")
        pieces[column] = (prompt, response["content"])
    if pieces["chosen"][0] != pieces["rejected"][0]:
        raise DataError(
            f"{where}: `chosen` and `rejected` answer different prompts (their turns before the last differ)"
        )
    return {"prompt": pieces["chosen"][0], "chosen": pieces["chosen"][1], "rejected": pieces["rejected"][1]}


def rankings_from_dataset(
    dataset: Any, *, name: str, source: str, score_key: str = "fine-grained_score", path: str = ""
) -> tuple[list[dict[str, Any]], RankingStats]:
    """Turn any supported preference dataset into rankings, validating each row; errors name the row.

    Bad input fails loudly (a ranking with fewer than 2 responses, an empty response, scores that do not match the
    responses); what the loss cannot use is dropped and counted (ties). UltraFeedback rows are third-party data, so
    unrated completions are dropped and counted instead of failing the run.
    """
    fmt = require_columns(
        dataset,
        [
            ("prompt", "responses"),
            ("prompt", "chosen", "rejected"),
            ("instruction", "completions"),
            ("chosen", "rejected"),
        ],
        name=name,
        source=source,
    )
    require_rows(dataset, name=name, source=source)
    stats = RankingStats()
    rows: list[dict[str, Any]] = []
    columns = set(dataset.column_names)
    for index, row in enumerate(dataset):
        where = f"{source}: {name} {row_place(path, index)}"
        if fmt == ("chosen", "rejected"):
            row = {**row, **implicit_prompt_pair(row["chosen"], row["rejected"], where)}
        prompt = row["instruction"] if fmt[0] == "instruction" else row["prompt"]
        if find_empty([prompt]) is not None:
            raise DataError(f"{where}: empty prompt")
        if (problem := prompt_problem(prompt)) is not None:
            raise DataError(f"{where}: the prompt {problem}")
        if fmt == ("prompt", "responses"):
            responses = row["responses"]
            if not isinstance(responses, list) or len(responses) < 2:
                count = len(responses) if isinstance(responses, list) else 0
                raise DataError(f"{where}: a ranking needs at least 2 responses, got {count}")
            responses = [_response_text(r) for r in responses]
            bad = next((j for j, r in enumerate(responses) if not isinstance(r, str)), None)
            if bad is not None:
                raise DataError(f"{where}: response {bad + 1} must be a string, got {type(responses[bad]).__name__}")
            empty = find_empty(responses)
            if empty is not None:
                raise DataError(f"{where}: response {empty + 1} is empty")
            scores = row.get("scores") if "scores" in columns else None
            if scores is not None:
                if not isinstance(scores, list) or len(scores) != len(responses):
                    got = len(scores) if isinstance(scores, list) else type(scores).__name__
                    raise DataError(f"{where}: `scores` has {got} values for {len(responses)} responses")
                bad = next((j for j, s in enumerate(scores) if not _is_number(s)), None)
                if bad is not None:
                    raise DataError(f"{where}: score {bad + 1} is {scores[bad]!r}, not a number")
        elif fmt in (("prompt", "chosen", "rejected"), ("chosen", "rejected")):
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


@mixable
def load_rankings(
    name: str, *, key: str, source: str, config: str | None, split: str, limit: int | None, score_key: str
) -> list[dict[str, Any]]:
    """Load one split of a preference dataset as rankings and say what was dropped."""
    dataset = load_data(name, key=key, source=source, config=config, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    rows, stats = rankings_from_dataset(
        dataset, name=f"`{key}` ({name})", source=source, score_key=score_key, path=name
    )
    sizes = Counter(len(r["responses"]) for r in rows)
    comparisons = sum(math.comb(len(r["responses"]), 2) for r in rows)
    k_range = f"K = {min(sizes)}" + (f"..{max(sizes)}" if max(sizes) != min(sizes) else "")
    logger.info(f"{name}: {len(rows)} rankings ({k_range}, {comparisons} comparisons); {stats.describe()}")
    return rows


def split_by_prompt(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of the distinct prompts: a prompt's rankings never straddle train and eval."""
    prompts = sorted({repr(r["prompt"]) for r in rows})
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[: max(1, round(fraction * len(prompts)))])
    train = [r for r in rows if repr(r["prompt"]) not in held_out]
    evaluation = [r for r in rows if repr(r["prompt"]) in held_out]
    return train, evaluation


def hold_out_by_prompt(
    rows: list[dict[str, Any]], fraction: float, seed: int, *, limit: int | None, source: str
) -> tuple[list[dict], list[dict]]:
    """A recipe's ``eval_fraction``: check it, hold out that share of the prompts (:func:`split_by_prompt`), keep at
    most ``limit`` held-out rankings, and say how many were held out."""
    if not 0 < fraction < 1:
        raise InstructGPTError(f"{source}: `eval_fraction` must be between 0 and 1, got {fraction}")
    train_rows, eval_rows = split_by_prompt(rows, fraction, seed)
    if not train_rows:
        raise DataError(f"{source}: `eval_fraction` {fraction} leaves no prompt to train on")
    if limit is not None:
        eval_rows = eval_rows[:limit]
    logger.info(f"held out {len(eval_rows)} rankings ({fraction:.0%} of the prompts) for evaluation")
    return train_rows, eval_rows
