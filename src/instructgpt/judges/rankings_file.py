"""Rankings that people wrote, as labeler (``file:PATH.jsonl``): a response scores by its place in its ranking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from instructgpt.data.formats import prompt_text
from instructgpt.data.rankings import load_rankings
from instructgpt.judges.base import Labeler, LabelerError


class FileLabeler(Labeler):
    """Rankings that people wrote, read from a JSONL file in any format the RM stage reads.

    Rows are rankings (``prompt`` plus ``responses`` best first, optionally ``scores``), pairs
    (``prompt``/``chosen``/``rejected``) or rated completions. A response's score is its place from the bottom of
    its prompt's ranking (the best of K scores K - 1): the file orders responses, it does not grade across
    prompts. Asking about a response the file does not rank is an error that names the file and the prompt.
    """

    def __init__(self, path: str, *, source: str = "recipe"):
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
