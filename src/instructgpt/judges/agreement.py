"""Agreement between labelers who ranked the same items: pairwise agreement and Kendall's tau.

InstructGPT measured how often two labelers order a pair of responses the same way (about 73%, Ouyang et al.
2022, section 5.1); that is the ceiling a reward model trained on their labels can reach. Here a ranking is a
mapping ``response -> score`` (higher is better; equal scores are a tie), so rankings from people, from the
simulated labeler and from a reward model compare the same way.

For two rankings of one item, over the :math:`\\binom{n}{2}` pairs of the responses both ranked:

- **pairwise agreement**: the share of pairs both order the same way, where "the same way" is
  :math:`\\operatorname{sgn}(a_i - a_j) = \\operatorname{sgn}(b_i - b_j)` (a pair both tie agrees; a pair one ties and
  the other orders does not);
- **Kendall's tau-b**: :math:`(C - D) / \\sqrt{(n_0 - T_a)(n_0 - T_b)}`, with :math:`C` and :math:`D` the concordant
  and discordant pairs, :math:`n_0` all pairs and :math:`T_a`, :math:`T_b` the pairs each ranking ties (tau-b stays
  in [-1, 1] with ties; without ties it equals tau-a). Undefined (skipped) when one ranking ties everything.

Over many items, agreement is pooled over all their pairs (every comparison counts once, as in the paper) and tau is
averaged over the items.

Two sources of rankings use these counts: two :class:`~instructgpt.judges.base.Labeler` objects scoring the same
pools of responses (:func:`pairwise_agreement`), and a rankings file from several labelers, such as
``instructgpt label``'s output (:func:`read_rankings`, then :func:`agreement_report`, which the
``instructgpt agreement`` tool prints).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from instructgpt.data import DataError, jsonl_rows
from instructgpt.data.formats import prompt_text
from instructgpt.judges.base import Labeler

Rankings = dict[str, dict[Any, dict[str, float]]]  # labeler -> item -> response text -> score


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass
class PairCounts:
    """The pairs of two rankings of one item (or of many, summed), sorted by what the two rankings did with them."""

    pairs: int = 0
    agree: int = 0
    concordant: int = 0
    discordant: int = 0
    tied_a: int = 0
    tied_b: int = 0
    taus: list[float] = field(default_factory=list)  # one Kendall's tau-b per item where it is defined

    def add(self, other: PairCounts) -> None:
        self.pairs += other.pairs
        self.agree += other.agree
        self.concordant += other.concordant
        self.discordant += other.discordant
        self.tied_a += other.tied_a
        self.tied_b += other.tied_b
        self.taus.extend(other.taus)

    @property
    def agreement(self) -> float:
        return self.agree / self.pairs if self.pairs else math.nan

    @property
    def kendall_tau(self) -> float:
        return sum(self.taus) / len(self.taus) if self.taus else math.nan


def compare_rankings(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> PairCounts:
    """Count agreement and Kendall's tau-b of two rankings of one item over the responses both scored."""
    common = [text for text in a if text in b]
    counts = PairCounts()
    for x, y in combinations(common, 2):
        sa, sb = _sign(a[x] - a[y]), _sign(b[x] - b[y])
        counts.pairs += 1
        counts.agree += sa == sb
        counts.concordant += sa * sb > 0
        counts.discordant += sa * sb < 0
        counts.tied_a += sa == 0
        counts.tied_b += sb == 0
    denominator = math.sqrt((counts.pairs - counts.tied_a) * (counts.pairs - counts.tied_b))
    if denominator > 0:
        counts.taus.append((counts.concordant - counts.discordant) / denominator)
    return counts


def agreement_between(
    first: Mapping[str, Mapping[str, float]], second: Mapping[str, Mapping[str, float]]
) -> tuple[PairCounts, int]:
    """Two labelers' rankings (``item -> ranking``) compared on the items both ranked; returns the counts and how
    many items overlap."""
    overlap = [item for item in first if item in second]
    total = PairCounts()
    for item in overlap:
        total.add(compare_rankings(first[item], second[item]))
    return total, len(overlap)


def pairwise_agreement(a: Labeler, b: Labeler, pools: Sequence[tuple[Any, Sequence[str]]]) -> float:
    """Share of response pairs that labelers ``a`` and ``b`` order the same way.

    Each pool is one prompt with its K responses; every one of its C(K, 2) pairs counts once (pairs that either
    labeler scores as an exact tie count as disagreements only if the other does not tie them too).
    """
    total = PairCounts()
    for prompt, responses in pools:
        sa = a.score([prompt] * len(responses), list(responses))
        sb = b.score([prompt] * len(responses), list(responses))
        total.add(compare_rankings(dict(enumerate(sa)), dict(enumerate(sb))))  # keyed by position: equal texts count
    if total.pairs == 0:
        raise ValueError("no response pairs to compare")
    return total.agreement


# ---------------------------------------------------------------------------------------------------------------
# Several labelers' rankings in one file
# ---------------------------------------------------------------------------------------------------------------


def read_rankings(path: str) -> tuple[Rankings, dict[Any, Any]]:
    """Every labeler's ranking of every item, and each item's prompt; errors name the file and line.

    Rows are rankings (``responses`` best first, optionally ``scores``) whose ``labeler_id`` or ``labeler`` says
    who ranked them; an item is the row's ``item``, else its prompt's text. A labeler's first ranking of an item
    counts.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: rankings file not found")
    by_labeler: Rankings = {}
    prompts: dict[Any, Any] = {}
    for number, row in jsonl_rows(file):
        where = f"{path}: line {number}"
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise DataError(f"{where}: needs `responses`, a list of at least 2 strings, best first")
        labeler = row.get("labeler_id", row.get("labeler"))
        if not isinstance(labeler, str) or not labeler:
            raise DataError(f"{where}: no `labeler_id` or `labeler` says who ranked it")
        scores = row.get("scores")
        if scores is None:
            scores = [float(len(responses) - 1 - place) for place in range(len(responses))]
        elif (
            not isinstance(scores, list)
            or len(scores) != len(responses)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores)
        ):
            raise DataError(f"{where}: `scores` must be one finite number per response")
        item = row.get("item", prompt_text(row.get("prompt", "")).strip())
        prompts.setdefault(item, row.get("prompt"))
        ranking = {text.strip(): float(score) for text, score in zip(responses, scores)}
        by_labeler.setdefault(labeler, {}).setdefault(item, ranking)  # a labeler's first ranking of an item counts
    if not by_labeler:
        raise DataError(f"{path}: no rankings")
    return by_labeler, prompts


def _row(first: str, second: str, counts: PairCounts, items: int) -> dict[str, Any]:
    return {
        "labeler_a": first,
        "labeler_b": second,
        "items": items,
        "comparisons": counts.pairs,
        "agreement": counts.agreement,
        "kendall_tau": counts.kendall_tau,
    }


def agreement_report(by_labeler: Rankings, prompts: dict[Any, Any], reference: Labeler | None = None) -> dict[str, Any]:
    """Pairwise agreement and tau for every two labelers, pooled over all pairs, and against ``reference``, which
    scores every response the labelers ranked."""
    report: dict[str, Any] = {"labelers": {name: len(items) for name, items in sorted(by_labeler.items())}, "pairs": []}
    pooled = PairCounts()
    pooled_items = 0
    for first, second in combinations(sorted(by_labeler), 2):
        counts, items = agreement_between(by_labeler[first], by_labeler[second])
        if items:
            report["pairs"].append(_row(first, second, counts, items))
            pooled.add(counts)
            pooled_items += items
    report["overall"] = _row("*", "*", pooled, pooled_items)
    if reference is not None:
        reference_rankings: dict[Any, dict[str, float]] = {}
        for item, prompt in prompts.items():
            texts = sorted({t for items in by_labeler.values() if item in items for t in items[item]})
            scores = reference.score([prompt] * len(texts), texts)
            reference_rankings[item] = dict(zip(texts, (float(s) for s in scores)))
        report["reference"] = reference.name
        report["vs_reference"] = []
        for name in sorted(by_labeler):
            counts, items = agreement_between(by_labeler[name], reference_rankings)
            report["vs_reference"].append(_row(name, reference.name, counts, items))
    return report
