"""A trained reward model of this project as labeler (``reward_model:PATH``): it ranks by the model's score.

The model is read as it was trained (its own tokenizer and prompt rendering), minus its stored shift (see
:func:`instructgpt.modeling.reward.load_reward_model`), so it ranks comparisons, judges evaluation and gives
best-of-n.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from instructgpt.judges.base import Labeler
from instructgpt.modeling.reward import load_reward_model, score_responses


class RewardModelLabeler(Labeler):
    """Any trained reward model as labeler: it ranks by its (normalized) score, so it also gives best-of-n."""

    def __init__(self, path: str, *, batch_size: int = 32, device: Any = None, source: str = "recipe"):
        self.model, self.tokenizer, self.shift = load_reward_model(path, device=device, key="labeler", source=source)
        self.batch_size = batch_size
        self.name = f"reward_model:{path}"

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        return score_responses(self.model, self.tokenizer, list(prompts), list(responses), batch_size=self.batch_size)

    def best_of_n(self, prompts: Sequence[Any], candidates: Sequence[Sequence[str]]) -> list[str]:
        """For each prompt, the candidate the reward model scores highest (best-of-n sampling's choice)."""
        return [list(pool)[self.rank(prompt, pool).order[0]] for prompt, pool in zip(prompts, candidates)]
