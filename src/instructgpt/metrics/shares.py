"""What a win rate hides: the share of responses that are correct, on task, or off topic, per task family.

A win rate says which of two answers a labeler preferred, not why: a policy can win most comparisons by dropping
filler while answering no more questions correctly, or by answering another question the labeler happens to score
well (issue 12). So evaluation also counts, per model and per group of prompts (a task family, an out-of-
distribution split), how many responses have each property, with a 95% Wilson interval on each share
(:func:`instructgpt.metrics.winrate.wilson_interval`):

- ``correct``: the right answer and nothing false;
- ``on_task``: an attempt at the asked task, right or wrong;
- ``off_topic``: at least one sentence that strays from the task (another creature, another question).

The properties come from a labeler that can tell them (the tiny world's rubric, ``judge(prompt, response)``); this
module only counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from instructgpt.metrics.winrate import wilson_interval

OUTCOMES: tuple[str, ...] = ("correct", "on_task", "off_topic")
ALL = "all"


@dataclass(frozen=True)
class Share:
    """``count`` of ``n`` responses have a property: ``share = count / n`` and its 95% Wilson interval."""

    share: float
    ci_low: float
    ci_high: float
    count: int
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"share": self.share, "ci_low": self.ci_low, "ci_high": self.ci_high, "count": self.count, "n": self.n}


def share_of(flags: Sequence[bool]) -> Share:
    """The share of true flags, with its 95% Wilson interval (an empty sequence: share nan, interval [0, 1])."""
    count, n = sum(bool(f) for f in flags), len(flags)
    low, high = wilson_interval(count, n)
    return Share(count / n if n else float("nan"), low, high, count, n)


def grouped_shares(
    outcomes: Sequence[Mapping[str, bool]], groups: Sequence[Sequence[str]], keys: Sequence[str] = OUTCOMES
) -> dict[str, dict[str, dict[str, float | int]]]:
    """``result[group][key]``: the share of responses in ``group`` whose outcome ``key`` is true.

    ``outcomes[i]`` holds response i's flags (``{"correct": True, "on_task": True, "off_topic": False}``) and
    ``groups[i]`` the groups it belongs to (its family, its split); every response also counts in ``"all"``.
    Groups appear in order of first appearance, after ``"all"``.
    """
    if len(outcomes) != len(groups):
        raise ValueError(f"got {len(outcomes)} outcomes but {len(groups)} group lists")
    members: dict[str, list[int]] = {ALL: list(range(len(outcomes)))}
    for index, names in enumerate(groups):
        for name in names:
            if name != ALL:
                members.setdefault(name, []).append(index)
    return {
        group: {key: share_of([outcomes[i][key] for i in indices]).as_dict() for key in keys}
        for group, indices in members.items()
    }
