"""Preference win rates and their confidence intervals (InstructGPT's headline metric, AlpacaFarm's too).

For models A and B answering the same prompts, a labeler compares the two answers to each prompt. A win counts 1,
a tie 1/2, a loss 0, and the win rate of A over B is the mean over prompts (so ``win_rate[A][B] +
win_rate[B][A] == 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict[str, float | int]:
        return {
            "win_rate": self.win_rate, "ci_low": self.ci_low, "ci_high": self.ci_high,
            "wins": self.wins, "ties": self.ties, "losses": self.losses, "n": self.n,
        }


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    r"""Wilson score interval for a proportion :math:`\hat p = s/n` (Wilson, 1927).

    .. math::
        \frac{\hat p + \frac{z^2}{2n} \pm z\sqrt{\frac{\hat p(1-\hat p)}{n} + \frac{z^2}{4n^2}}}{1 + \frac{z^2}{n}}

    Unlike the normal interval it stays inside [0, 1] and does not collapse to a point when every comparison is a
    win, which matters for the small prompt sets of the tiny world. Ties enter as half a success.
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate_from_scores(scores_a: Sequence[float], scores_b: Sequence[float], tie_tolerance: float = 0.0) -> WinRate:
    """Win rate of A over B from a labeler's per-prompt scores of each answer (higher is better).

    Two scores within ``tie_tolerance`` of each other are a tie, as are identical answers scored equally.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"score lists differ in length: {len(scores_a)} vs {len(scores_b)}")
    wins = ties = losses = 0
    for a, b in zip(scores_a, scores_b):
        if abs(a - b) <= tie_tolerance:
            ties += 1
        elif a > b:
            wins += 1
        else:
            losses += 1
    n = wins + ties + losses
    successes = wins + 0.5 * ties
    low, high = wilson_interval(successes, n)
    return WinRate(successes / n if n else float("nan"), low, high, wins, ties, losses)


def win_rate_matrix(scores: dict[str, Sequence[float]], tie_tolerance: float = 0.0) -> dict[str, dict[str, WinRate]]:
    """``matrix[A][B]``: win rate of every model against every other, from per-prompt labeler scores."""
    return {
        a: {b: win_rate_from_scores(scores[a], scores[b], tie_tolerance) for b in scores if b != a}
        for a in scores
    }
