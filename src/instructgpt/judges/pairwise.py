"""Running a pairwise judge (one that ``compare``s two responses, as :mod:`instructgpt.judges.llm`'s) over models.

A pairwise judge gives no per-response scores, so evaluation's win rates come from its verdicts on each pair of
models: :func:`judge_pairs` judges every unordered pair once, :func:`total_counts` sums its bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def judge_pairs(
    judge: Any, prompts: Sequence[Any], texts: dict[str, Sequence[str]]
) -> tuple[dict[tuple[str, str], list[float]], dict[str, dict[str, Any]]]:
    """A pairwise judge's per-prompt outcomes for every pair of models, each unordered pair judged once.

    Returns ``outcomes[(A, B)]``, the outcomes of A over B on the prompts with a verdict (1, 1/2, 0; the order of
    ``texts`` decides which model is A), and ``counts["A vs B"]``: the judge's counts (judged, inconsistent,
    unparseable, failed, ...) with up to three unparseable answers as examples.
    """
    names = list(texts)
    outcomes: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            result = judge.compare(list(prompts), list(texts[a]), list(texts[b]))
            outcomes[(a, b)] = [o for o in result.outcomes if o is not None]
            counts[f"{a} vs {b}"] = {**result.counts, "unparseable_examples": result.unparseable_examples}
    return outcomes, counts


def total_counts(counts: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The judge's counts summed over every pair of models."""
    total: dict[str, int] = {}
    for pair in counts.values():
        for key, value in pair.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total
