"""Agreement between labelers who ranked the same items: pairwise agreement and Kendall's tau.

InstructGPT measured how often two labelers order a pair of responses the same way (about 73%, Ouyang et al.
2022, section 5.1); that is the ceiling a reward model trained on their labels can reach. Here a ranking is a
mapping ``response text -> score`` (higher is better; equal scores are a tie), so rankings from people, from the
simulated labeler and from a reward model compare the same way.

For two rankings of one item, over the :math:`\\binom{n}{2}` pairs of the responses both ranked:

- **pairwise agreement**: the share of pairs both order the same way, where "the same way" is
  :math:`\\operatorname{sgn}(a_i - a_j) = \\operatorname{sgn}(b_i - b_j)` (a pair both tie agrees; a pair one ties and
  the other orders does not), as :func:`instructgpt.labelers.pairwise_agreement` counts it;
- **Kendall's tau-b**: :math:`(C - D) / \\sqrt{(n_0 - T_a)(n_0 - T_b)}`, with :math:`C` and :math:`D` the concordant
  and discordant pairs, :math:`n_0` all pairs and :math:`T_a`, :math:`T_b` the pairs each ranking ties (tau-b stays
  in [-1, 1] with ties; without ties it equals tau-a). Undefined (skipped) when one ranking ties everything.

Over many items, agreement is pooled over all their pairs (every comparison counts once, as in the paper) and tau is
averaged over the items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping


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

    def add(self, other: "PairCounts") -> None:
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


def compare_rankings(a: Mapping[str, float], b: Mapping[str, float]) -> PairCounts:
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
