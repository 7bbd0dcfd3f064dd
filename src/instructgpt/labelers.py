"""Labelers: who ranks K responses to a prompt (comparison collection), and who judges evaluation.

InstructGPT's labelers ranked K = 4 to 9 model outputs per prompt (Ouyang et al. 2022, section 3.4) and agreed
with each other on about 73% of comparisons (section 5.1, "inter-annotator agreement"). Here every labeler has
the same small interface:

- ``score(prompts, responses) -> list[float]``: one score per (prompt, response) pair, higher is better;
- ``rank(prompt, responses) -> Ranking``: the K responses to one prompt ordered best first.

Labelers here: a trained reward model (:class:`RewardModelLabeler`) and rankings people wrote (:class:`FileLabeler`).
The tiny world's simulated labeler, a fixed rubric with optional noise, lives with its world in
:mod:`instructgpt.tinyworld.labeler`; :func:`make_labeler` builds any of them from a recipe value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from instructgpt.data.formats import prompt_text
from instructgpt.infra.errors import InstructGPTError

# ---------------------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Ranking:
    """A labeler's ranking of K responses to one prompt.

    ``order``: indices into the ranked ``responses``, best first. ``scores``: one score per response, in the order
    the responses were given (not in ranking order).
    """

    order: list[int]
    scores: list[float]




class Labeler(ABC):
    """Scores responses; ranks K responses to one prompt by those scores (ties keep the given order)."""

    name: str = "labeler"

    @abstractmethod
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response) pair, higher is better."""

    def rank(self, prompt: Any, responses: Sequence[str]) -> Ranking:
        scores = self.score([prompt] * len(responses), list(responses))
        order = sorted(range(len(responses)), key=lambda i: (-scores[i], i))
        return Ranking(order=order, scores=[float(s) for s in scores])


def pairwise_agreement(a: Labeler, b: Labeler, pools: Sequence[tuple[Any, Sequence[str]]]) -> float:
    """Share of response pairs that labelers ``a`` and ``b`` order the same way.

    Each pool is one prompt with its K responses; every one of its C(K, 2) pairs counts once (pairs that either
    labeler scores as an exact tie count as disagreements only if the other does not tie them too).
    """
    agree = total = 0
    for prompt, responses in pools:
        sa = a.score([prompt] * len(responses), list(responses))
        sb = b.score([prompt] * len(responses), list(responses))
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                agree += np.sign(sa[i] - sa[j]) == np.sign(sb[i] - sb[j])
                total += 1
    if total == 0:
        raise ValueError("no response pairs to compare")
    return agree / total


# ---------------------------------------------------------------------------------------------------------------
# A reward model as labeler, and rankings people wrote
# ---------------------------------------------------------------------------------------------------------------


class RewardModelLabeler(Labeler):
    """Any trained reward model as labeler: it ranks by its (normalized) score, so it also gives best-of-n."""

    def __init__(self, path: str, *, batch_size: int = 32, device: Any = None, source: str = "recipe"):
        from instructgpt.modeling.reward import load_reward_model

        self.model, self.tokenizer, self.shift = load_reward_model(path, device=device, key="labeler", source=source)
        self.batch_size = batch_size
        self.name = f"reward_model:{path}"

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        from instructgpt.modeling.reward import score_responses

        return score_responses(self.model, self.tokenizer, list(prompts), list(responses), batch_size=self.batch_size)

    def best_of_n(self, prompts: Sequence[Any], candidates: Sequence[Sequence[str]]) -> list[str]:
        """For each prompt, the candidate the reward model scores highest (best-of-n sampling's choice)."""
        return [list(pool)[self.rank(prompt, pool).order[0]] for prompt, pool in zip(prompts, candidates)]


class FileLabeler(Labeler):
    """Rankings that people wrote, read from a JSONL file in any format the RM stage reads.

    Rows are rankings (``prompt`` plus ``responses`` best first, optionally ``scores``), pairs
    (``prompt``/``chosen``/``rejected``) or rated completions. A response's score is its place from the bottom of
    its prompt's ranking (the best of K scores K - 1): the file orders responses, it does not grade across
    prompts. Asking about a response the file does not rank is an error that names the file and the prompt.
    """

    def __init__(self, path: str, *, source: str = "recipe"):
        from instructgpt.data.rankings import load_rankings

        self.path = path
        rows = load_rankings(
            path, key="labeler", source=source, config=None, split="train", limit=None, score_key="fine-grained_score"
        )
        self.table: dict[tuple[str, str], float] = {}
        for row in rows:
            ranked = row["responses"]
            for place, response in enumerate(ranked):
                self.table.setdefault(self._key(row["prompt"], response), float(len(ranked) - 1 - place))
        self.name = f"file:{path}"

    @staticmethod
    def _key(prompt: Any, response: str) -> tuple[str, str]:
        return prompt_text(prompt).strip(), response.strip()

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        scores = []
        for prompt, response in zip(prompts, responses):
            key = self._key(prompt, response)
            if key not in self.table:
                raise LabelerError(
                    f"{self.path}: no ranking holds the response {response[:60]!r} to the prompt {key[0][:60]!r}"
                )
            scores.append(self.table[key])
        return scores


class LabelerError(InstructGPTError):
    """A labeler was asked for something it cannot judge, or its specification is wrong."""


def make_labeler(
    spec: str,
    *,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    device: Any = None,
    source: str = "recipe",
) -> Labeler:
    """A labeler from its recipe value: ``simulated``, ``reward_model:PATH`` (a reward model of this project, read
    as it was trained, minus its stored shift), ``gold_rm:PATH`` (any sequence-classification reward model in its
    own format: :mod:`instructgpt.judges.gold_rm`) or ``file:PATH.jsonl``."""
    kind, _, path = spec.partition(":")
    if kind == "simulated" and not path:
        from instructgpt.tinyworld.labeler import SimulatedLabeler

        return SimulatedLabeler(noise=noise, seed=seed)
    if kind == "reward_model" and path:
        return RewardModelLabeler(path, batch_size=batch_size, device=device, source=source)
    if kind == "file" and path:
        return FileLabeler(path, source=source)
    if kind == "gold_rm" and path:
        from instructgpt.judges.gold_rm import GoldRewardModelJudge

        return GoldRewardModelJudge(path, batch_size=batch_size, device=device, source=source)
    if kind == "llm":
        raise LabelerError(f"{source}: `labeler`: {spec!r} is a pairwise judge: it compares two responses and cannot "
                           "score or rank one; it judges `instructgpt eval`'s win rates only")
    raise LabelerError(
        f"{source}: `labeler`: unknown labeler {spec!r}; use `simulated`, `reward_model:PATH`, `gold_rm:PATH` or "
        "`file:PATH.jsonl`"
    )
