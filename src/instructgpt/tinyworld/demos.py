"""Demonstrations as real labelers write them: always correct, but of mixed style and quality.

InstructGPT's SFT data came from many labelers with their own habits, so a model fine-tuned on it learns a mix of
styles; the reward model and PPO can then move it towards the style the labelers prefer when they *compare*
outputs. The tiny world reproduces this: every demonstration answers correctly, but only about a third is in the
simulated labeler's most-preferred style (a direct one-sentence answer). The rest:

- ``verbose``: a friendly opener and closer around the answer ("Sure! ... I hope this helps!");
- ``repetitive``: the answer sentence said two or three times;
- ``off_topic``: the answer plus an unrelated (true) fact about another creature;
- ``incomplete``: descriptions that state only one or two of the four attributes; for the other families, the
  verbose and off-topic habits together.

Most non-preferred demonstrations open with "Sure!" (as many real demonstrations do), so that even the single
most likely start of an SFT response is not the preferred style, and greedy decoding does not hide the mix.
"""

from __future__ import annotations

import random

from instructgpt.tinyworld.world import (
    ATTRIBUTES,
    CREATURE_BY_NAME,
    CREATURES,
    VOCABULARY,
    Task,
    answer_sentence,
    fact_sentence,
    full_description,
    short_answer,
)

STYLES = ("concise", "verbose", "repetitive", "off_topic", "incomplete")
STYLE_WEIGHTS = {"concise": 0.33, "verbose": 0.24, "repetitive": 0.15, "off_topic": 0.14, "incomplete": 0.14}

OPENERS = ("Sure!", "Of course!", "Happy to help!", "Certainly!")
OPENER_WEIGHTS = (0.80, 0.07, 0.04, 0.04)  # the remaining 5%: no opener
CLOSERS = (
    "I hope this helps!",
    "Let me know if you have any other questions.",
    "Have a nice day!",
    "Thanks for asking!",
)
ASIDES = ("By the way, ", "Fun fact: ", "Also, ", "")


def pick_style(rng: random.Random) -> str:
    return rng.choices(STYLES, weights=[STYLE_WEIGHTS[s] for s in STYLES])[0]


def _opener(rng: random.Random) -> list[str]:
    if rng.random() < sum(OPENER_WEIGHTS):
        return [rng.choices(OPENERS, weights=OPENER_WEIGHTS)[0]]
    return []


def concise(task: Task, rng: random.Random) -> str:
    """The labeler's most-preferred style: the answer in one short sentence, or just the answer."""
    if task.family == "describe":
        c = CREATURE_BY_NAME[task.creature]
        return rng.choice(
            [
                full_description(task.creature),
                f"The {c.name} is {c.size} and {c.color}, lives in the {c.habitat} and eats {c.food}.",
            ]
        )
    return answer_sentence(task) if rng.random() < 0.7 else short_answer(task)


def off_topic_fact(task: Task, rng: random.Random) -> str:
    """A true fact about some other creature: correct, but not what was asked."""
    other = rng.choice([c.name for c in CREATURES if c.name != task.creature])
    sentence = fact_sentence(other, rng.choice(ATTRIBUTES))
    aside = rng.choice(ASIDES)
    return aside + (sentence[0].lower() + sentence[1:] if aside else sentence)


def incomplete_description(task: Task, rng: random.Random) -> str:
    """One or two of the creature's four attributes."""
    c = CREATURE_BY_NAME[task.creature]
    kinds = rng.sample(ATTRIBUTES, rng.choice([1, 2]))
    parts = {
        "color": f"is {c.color}",
        "size": f"is {c.size}",
        "habitat": f"lives in the {c.habitat}",
        "food": f"eats {c.food}",
    }
    return f"The {c.name} " + " and ".join(parts[k] for k in kinds) + "."


def demonstrate(task: Task, style: str, rng: random.Random) -> str:
    """A correct response to ``task`` in ``style`` (one of :data:`STYLES`)."""
    answer = concise(task, rng) if style != "concise" else None
    if style == "concise":
        return concise(task, rng)
    if style == "verbose":
        sentences = _opener(rng) or ["Sure!"]
        sentences += [answer, rng.choice(CLOSERS)]
    elif style == "repetitive":
        sentence = answer_sentence(task)
        sentences = _opener(rng) + [sentence] * rng.choice([2, 2, 3])
    elif style == "off_topic":
        sentences = _opener(rng) + [answer, off_topic_fact(task, rng)]
    elif style == "incomplete":
        if task.family == "describe":
            sentences = _opener(rng) + [incomplete_description(task, rng)]
        else:
            sentences = (_opener(rng) or ["Sure!"]) + [answer, off_topic_fact(task, rng), rng.choice(CLOSERS)]
    else:
        raise ValueError(f"unknown demonstration style {style!r}; expected one of {STYLES}")
    return " ".join(sentences)


def wrong_response(task: Task, rng: random.Random) -> str:
    """A fluent response with a wrong answer (for tests and for calibrating the labeler's noise)."""
    if task.family == "arithmetic":
        x, y = task.operands
        wrong = int(task.answer) + rng.choice([-2, -1, 1, 2])
        op = "plus" if task.kind == "add" else "minus"
        return rng.choice([f"{x} {op} {y} is {wrong}.", f"{wrong}."])
    if task.family in ("fact", "describe"):
        c = CREATURE_BY_NAME[task.creature]
        kind = task.kind if task.family == "fact" else rng.choice(ATTRIBUTES)
        wrong_value = rng.choice([v for v in VOCABULARY[kind] if v != c.attribute(kind)])
        if task.family == "fact":
            return fact_sentence(task.creature, kind).replace(c.attribute(kind), wrong_value)
        return full_description(task.creature).replace(f" {c.attribute(kind)}", f" {wrong_value}", 1)
    w = task.word
    if task.kind == "reverse":
        return f"The word {w} backwards is {w}."
    if task.kind == "upper":
        return f"The word {w} in capital letters is {w.capitalize()}."
    letters = [ch for ch in "bcdfghklmnprstw" if ch != task.answer]
    which = "first" if task.kind == "first" else "last"
    return f"The {which} letter of {w} is {rng.choice(letters)}."


def response_pool(task: Task, k: int, rng: random.Random, wrong_rate: float = 0.25) -> list[str]:
    """K distinct responses to one task, as a policy trained on the demonstrations might sample them: mostly
    correct in mixed styles, sometimes wrong."""
    pool: list[str] = []
    for _ in range(20 * k):
        if len(pool) == k:
            break
        text = wrong_response(task, rng) if rng.random() < wrong_rate else demonstrate(task, pick_style(rng), rng)
        if text not in pool:
            pool.append(text)
    return pool
