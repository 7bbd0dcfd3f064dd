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


# ---------------------------------------------------------------------------------------------------------------
# The paired bootstrap over prompts
# ---------------------------------------------------------------------------------------------------------------

from instructgpt.metrics.winrate import (  # noqa: E402
    outcomes_from_scores,
    paired_bootstrap_interval,
    win_rate_from_outcomes,
    win_rate_matrix_from_outcomes,
)


def test_bootstrap_of_one_win_and_one_loss_spans_everything():
    # two prompts resampled: means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and 97.5% percentiles
    # of 2000 draws are 0 and 1
    assert paired_bootstrap_interval([1.0, 0.0]) == (0.0, 1.0)


def test_bootstrap_counts_ties_exactly_where_wilson_widens():
    # every prompt a tie: every resample's mean is exactly 1/2; Wilson treats the ties as 5 successes of 10
    result = win_rate_from_outcomes([0.5] * 10)
    assert (result.bootstrap_low, result.bootstrap_high) == (0.5, 0.5)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert (result.wins, result.ties, result.losses) == (0, 10, 0)
    sweep = win_rate_from_outcomes([1.0] * 7)
    assert (sweep.bootstrap_low, sweep.bootstrap_high) == (1.0, 1.0)


def test_bootstrap_is_seeded_and_close_to_the_normal_interval_for_many_prompts():
    outcomes = [1.0] * 240 + [0.0] * 160  # p = 0.6, n = 400: normal interval 0.6 -+ 1.96 sqrt(0.24 / 400)
    low, high = paired_bootstrap_interval(outcomes)
    assert (low, high) == paired_bootstrap_interval(outcomes)  # seeded: the same interval every time
    half = 1.96 * math.sqrt(0.6 * 0.4 / 400)
    assert low == pytest.approx(0.6 - half, abs=0.01) and high == pytest.approx(0.6 + half, abs=0.01)
    few = outcomes[230:250]  # the seed drives the draws (50 resamples: too few for the percentiles to settle)
    assert paired_bootstrap_interval(few, seed=0, resamples=50) != paired_bootstrap_interval(few, seed=1, resamples=50)


def test_bootstrap_of_b_over_a_mirrors_a_over_b_and_shows_in_the_dict():
    outcomes = [1.0] * 6 + [0.5] * 2 + [0.0] * 2
    matrix = win_rate_matrix_from_outcomes({("ppo", "sft"): outcomes})
    ab, ba = matrix["ppo"]["sft"], matrix["sft"]["ppo"]
    assert ab.win_rate == pytest.approx(0.7) and ba.win_rate == pytest.approx(0.3)
    assert (ab.wins, ab.ties, ab.losses) == (6, 2, 2) and (ba.wins, ba.ties, ba.losses) == (2, 2, 6)
    assert ab.bootstrap_low == pytest.approx(1 - ba.bootstrap_high) and ab.bootstrap_high == pytest.approx(
        1 - ba.bootstrap_low
    )
    assert ab.bootstrap_low < 0.7 < ab.bootstrap_high
    d = ab.as_dict()
    assert d["bootstrap_low"] == ab.bootstrap_low and d["n"] == 10 and d["ci_low"] == ab.ci_low


def test_outcomes_from_scores_and_bad_outcomes():
    assert outcomes_from_scores([3, 2, 1], [1, 2, 4]) == [1.0, 0.5, 0.0]
    assert outcomes_from_scores([1.0, 1.05], [1.02, 1.0], tie_tolerance=0.03) == [0.5, 1.0]
    with pytest.raises(ValueError, match="got 0.7"):
        win_rate_from_outcomes([1.0, 0.7])
