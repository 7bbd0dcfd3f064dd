"""Win rates and 95% intervals on hand-made cases."""

from __future__ import annotations

import math

import pytest

from instructgpt.metrics.winrate import wilson_interval, win_rate_from_scores, win_rate_matrix


def test_wins_ties_and_losses_count_1_half_0():
    result = win_rate_from_scores([3, 2, 1, 5], [1, 2, 4, 0])
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.win_rate == pytest.approx((2 + 0.5) / 4)


def test_matrix_is_complementary():
    scores = {"ppo": [3.0, 2.0, 2.0, 9.0], "sft": [1.0, 2.0, 5.0, 0.0], "base": [0.0, 0.0, 0.0, 0.0]}
    matrix = win_rate_matrix(scores)
    for a in scores:
        for b in scores:
            if a != b:
                assert matrix[a][b].win_rate + matrix[b][a].win_rate == pytest.approx(1.0)
    assert matrix["ppo"]["base"].win_rate == 1.0
    assert matrix["sft"]["base"].win_rate == pytest.approx((3 + 0.5) / 4)


def test_wilson_interval_hand_computed():
    # 8 successes of 10 at z = 1.96: centre (0.8 + 0.19208)/1.38416, half 1.96*sqrt(0.016 + 0.0096040)/1.38416
    low, high = wilson_interval(8, 10, z=1.96)
    centre = (0.8 + 1.96**2 / 20) / (1 + 1.96**2 / 10)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 10 + 1.96**2 / 400) / (1 + 1.96**2 / 10)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_interval_contains_estimate_and_shrinks_with_n():
    small = win_rate_from_scores([1] * 7 + [0] * 3, [0] * 7 + [1] * 3)
    large = win_rate_from_scores([1] * 70 + [0] * 30, [0] * 70 + [1] * 30)
    assert small.win_rate == large.win_rate == pytest.approx(0.7)
    for r in (small, large):
        assert r.ci_low < r.win_rate < r.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low)
    # a clean sweep still has a lower bound below 1
    sweep = win_rate_from_scores([1] * 10, [0] * 10)
    assert sweep.win_rate == 1.0 and sweep.ci_high == pytest.approx(1.0) and 0.6 < sweep.ci_low < 0.8


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        win_rate_from_scores([1, 2], [1])
