"""What a judge is: the :class:`Labeler` interface (score and rank responses), :class:`Ranking` and the judges' error.

InstructGPT's labelers ranked K = 4 to 9 model outputs per prompt (Ouyang et al. 2022, section 3.4) and agreed
with each other on about 73% of comparisons (section 5.1, "inter-annotator agreement"). Here every labeler has
the same small interface:

- ``score(prompts, responses) -> list[float]``: one score per (prompt, response) pair, higher is better;
- ``rank(prompt, responses) -> Ranking``: the K responses to one prompt ordered best first.

A *pairwise* judge (:class:`instructgpt.judges.llm.LLMJudge`) is the other kind: it compares two responses
(``compare``) and cannot score one, so it judges evaluation's win rates only; :func:`is_pairwise` tells them apart.

This module holds the interface only; the judges themselves are its neighbours in :mod:`instructgpt.judges`, and
:mod:`instructgpt.judges.factory` builds them from a recipe value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from instructgpt.infra.errors import InstructGPTError


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


class LabelerError(InstructGPTError):
    """A labeler was asked for something it cannot judge, or its specification is wrong."""


def is_pairwise(judge: Any) -> bool:
    """A judge that compares two responses (``compare``) rather than scoring one (``score``)."""
    return bool(getattr(judge, "pairwise", False))
