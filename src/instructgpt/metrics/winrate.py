"""Preference win rates and their confidence intervals (InstructGPT's headline metric, AlpacaFarm's too).

For models A and B answering the same prompts, a labeler compares the two answers to each prompt. A win counts 1,
a tie 1/2, a loss 0, and the win rate of A over B is the mean over prompts (so ``win_rate[A][B] +
win_rate[B][A] == 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class WinRate:
    win_rate: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    bootstrap_low: float = float("nan")
    bootstrap_high: float = float("nan")

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def as_dict(self) -> dict[str, float | int | None]:
        """The numbers for results.json; with no comparison at all (n = 0) the rate is None, not NaN."""
        if self.n == 0:
            return {
                "win_rate": None,
                "ci_low": None,
                "ci_high": None,
                "bootstrap_low": None,
                "bootstrap_high": None,
                "wins": 0,
                "ties": 0,
                "losses": 0,
                "n": 0,
            }
        return {
            "win_rate": self.win_rate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "bootstrap_low": self.bootstrap_low,
            "bootstrap_high": self.bootstrap_high,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "n": self.n,
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


def paired_bootstrap_interval(
    outcomes: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    r"""Percentile bootstrap interval over prompts for the mean of per-prompt outcomes (1 win, 1/2 tie, 0 loss).

    Draw ``resamples`` sets of n prompt indices with replacement (numpy's ``default_rng(seed)``, so the interval is
    reproducible), take the mean outcome of each set, and return its :math:`\alpha/2` and :math:`1 - \alpha/2`
    percentiles (Efron & Tibshirani 1993, ch. 13; linear interpolation between order statistics). Resampling whole
    prompts keeps each prompt's two answers together, which is what makes it paired. With the same seed the draws
    of A over B and of B over A are the same indices, so the two intervals mirror each other around 1/2.
    """
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def win_rate_from_outcomes(outcomes: Sequence[float]) -> WinRate:
    """Win rate of A over B from per-prompt outcomes (1 win, 1/2 tie, 0 loss), with both intervals."""
    wins = sum(1 for o in outcomes if o == 1.0)
    ties = sum(1 for o in outcomes if o == 0.5)
    losses = sum(1 for o in outcomes if o == 0.0)
    if wins + ties + losses != len(outcomes):
        bad = next(o for o in outcomes if o not in (0.0, 0.5, 1.0))
        raise ValueError(f"an outcome must be 1 (win), 0.5 (tie) or 0 (loss), got {bad!r}")
    n = len(outcomes)
    successes = wins + 0.5 * ties
    low, high = wilson_interval(successes, n)
    boot_low, boot_high = paired_bootstrap_interval(outcomes)
    return WinRate(successes / n if n else float("nan"), low, high, wins, ties, losses, boot_low, boot_high)


def outcomes_from_scores(
    scores_a: Sequence[float], scores_b: Sequence[float], tie_tolerance: float = 0.0
) -> list[float]:
    """Per-prompt outcome of A against B from a labeler's scores: 1 if A scores higher, 0 if lower, 1/2 if the two
    are within ``tie_tolerance``."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"score lists differ in length: {len(scores_a)} vs {len(scores_b)}")
    return [0.5 if abs(a - b) <= tie_tolerance else 1.0 if a > b else 0.0 for a, b in zip(scores_a, scores_b)]


def win_rate_from_scores(scores_a: Sequence[float], scores_b: Sequence[float], tie_tolerance: float = 0.0) -> WinRate:
    """Win rate of A over B from a labeler's per-prompt scores of each answer (higher is better).

    Two scores within ``tie_tolerance`` of each other are a tie, as are identical answers scored equally.
    """
    return win_rate_from_outcomes(outcomes_from_scores(scores_a, scores_b, tie_tolerance))


def win_rate_matrix(scores: dict[str, Sequence[float]], tie_tolerance: float = 0.0) -> dict[str, dict[str, WinRate]]:
    """``matrix[A][B]``: win rate of every model against every other, from per-prompt labeler scores."""
    return {a: {b: win_rate_from_scores(scores[a], scores[b], tie_tolerance) for b in scores if b != a} for a in scores}


def win_rate_matrix_from_outcomes(outcomes: dict[tuple[str, str], Sequence[float]]) -> dict[str, dict[str, WinRate]]:
    """``matrix[A][B]`` from a pairwise judge's per-prompt outcomes of A against B, one entry per unordered pair
    (``outcomes[(A, B)]``); B over A is the complement, outcome by outcome."""
    matrix: dict[str, dict[str, WinRate]] = {}
    for (a, b), values in outcomes.items():
        matrix.setdefault(a, {})[b] = win_rate_from_outcomes(values)
        matrix.setdefault(b, {})[a] = win_rate_from_outcomes([1.0 - v for v in values])
    return matrix
