"""What the win rate hides: shares correct / on task / off topic with Wilson intervals, on real judged responses."""

from __future__ import annotations

import math

import pytest

from instructgpt.judges import SimulatedLabeler
from instructgpt.metrics.ranking import pairwise_accuracy
from instructgpt.metrics.shares import grouped_shares, share_of
from instructgpt.stages.eval.judging import task_shares


def test_share_of_gives_the_wilson_interval():
    share = share_of([True] * 7 + [False] * 3)
    assert (share.count, share.n, share.share) == (7, 10, 0.7)
    # Wilson (1927) for 7/10 at z = 1.96: [0.3968, 0.8922]
    assert share.ci_low == pytest.approx(0.39676, abs=1e-4) and share.ci_high == pytest.approx(0.89224, abs=1e-4)
    every = share_of([True] * 20)
    assert every.share == 1.0 and every.ci_high == 1.0 and every.ci_low == pytest.approx(0.83887, abs=1e-4)
    empty = share_of([])
    assert math.isnan(empty.share) and (empty.ci_low, empty.ci_high, empty.n) == (0.0, 1.0, 0)


def test_grouped_shares_count_each_response_in_all_and_its_groups():
    outcomes = [
        {"correct": c, "on_task": t, "off_topic": o}
        for c, t, o in [(True, True, False), (False, True, True), (False, False, True), (True, True, False)]
    ]
    shares = grouped_shares(outcomes, [["arithmetic"], ["arithmetic", "casing"], ["fact", "casing"], ["fact"]])
    assert list(shares) == ["all", "arithmetic", "casing", "fact"]
    assert shares["all"]["correct"]["count"] == 2 and shares["all"]["correct"]["n"] == 4
    assert shares["arithmetic"]["on_task"]["share"] == 1.0
    assert shares["casing"]["correct"]["count"] == 0 and shares["casing"]["off_topic"]["share"] == 1.0
    assert shares["fact"]["on_task"]["share"] == 0.5
    with pytest.raises(ValueError, match="2 outcomes but 1 group"):
        grouped_shares(outcomes[:2], [["x"]])


def test_task_shares_on_judged_responses():
    """The tiny world's rubric tells each response's outcome; the shares count them per family and split."""
    labeler = SimulatedLabeler()
    rows = [
        ("What is the sum of 7 and 4?", "11.", "new_operands"),  # correct
        ("What is the sum of 7 and 4?", "Sure! 7. Thanks for asking!", "new_operands"),  # on task, wrong
        ("What is the sum of 7 and 4?", "The thornbeak is huge and eats worms.", "new_operands"),  # off topic
        ("WHAT COLOR IS THE GLIMMERFOX", "The glimmerfox is blue. The mossbat is black.", "casing"),  # correct, off
        ("spell cup backwards!", "puc", "new_words"),  # correct
        ("spell cup backwards!", "The word cup backwards is cup.", "new_words"),  # no attempt: off
    ]
    from instructgpt.stages.eval.judging import labeler_details

    details = labeler_details(labeler, [r[0] for r in rows], [r[1] for r in rows])
    assert details["labeler_correct"] == pytest.approx(3 / 6)
    assert details["labeler_on_task"] == pytest.approx(4 / 6)
    assert details["labeler_off_topic"] == pytest.approx(3 / 6)
    shares = task_shares(details["labeler_outcomes"], [r[2] for r in rows])
    assert set(shares) == {"all", "arithmetic", "new_operands", "fact", "casing", "string", "new_words"}
    ops = shares["new_operands"]
    assert (ops["correct"]["count"], ops["on_task"]["count"], ops["off_topic"]["count"], ops["correct"]["n"]) == (
        1,
        2,
        1,
        3,
    )
    assert shares["casing"]["correct"]["share"] == 1.0 and shares["casing"]["off_topic"]["share"] == 1.0
    assert shares["new_words"]["on_task"]["count"] == 1 and shares["new_words"]["off_topic"]["count"] == 1
    assert shares["all"]["on_task"]["ci_low"] < 4 / 6 < shares["all"]["on_task"]["ci_high"]


def test_pairwise_accuracy_skips_ties_of_the_target_only():
    predicted = [[3.0, 2.0, 1.0], [0.0, 0.0]]
    target = [[1.0, 2.0, 0.0], [1.0, 0.0]]
    # prompt 1: (0,1) disagrees, (0,2) and (1,2) agree; prompt 2: a predicted tie does not agree
    assert pairwise_accuracy(predicted, target) == (2, 4)
    assert pairwise_accuracy([[1.0, 2.0]], [[5.0, 5.0]]) == (0, 0)
