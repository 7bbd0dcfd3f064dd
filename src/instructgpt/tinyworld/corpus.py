"""Pretraining text for the tiny base model: the world's facts, stated many ways, plus GPT-3-like "web text".

The base model must know the domain (creature facts, small sums, spellings) but, like GPT-3 before InstructGPT,
not follow instructions. So the corpus states every fact in plain prose, and the only place instructions occur is
quiz sheets and homework lists that give questions *without* answers: a base model handed an instruction
continues it with more questions.

Each generator returns documents (strings); :func:`build_corpus` mixes them. Nothing here depends on the prompt
splits except :func:`quiz_sheet`, which draws its questions from a pool the caller gives (the builder leaves
every held-out evaluation instruction out of it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from instructgpt.tinyworld.world import (
    CREATURE_BY_NAME,
    CREATURES,
    MAX_OPERAND,
    MIN_OPERAND,
    WORDS,
    arithmetic_operands,
    full_description,
)

# Several phrasings per attribute, so the facts are not tied to one sentence shape.
ATTRIBUTE_PHRASES: dict[str, tuple[str, ...]] = {
    "color": (
        "The {n} is {v}.",
        "The color of the {n} is {v}.",
        "The {n} is {v} in color.",
        "Every {n} is {v}.",
    ),
    "habitat": (
        "The {n} lives in the {v}.",
        "The home of the {n} is the {v}.",
        "You can find the {n} in the {v}.",
        "The {n} makes its home in the {v}.",
    ),
    "food": (
        "The {n} eats {v}.",
        "The food of the {n} is {v}.",
        "The {n} feeds on {v}.",
        "The favorite food of the {n} is {v}.",
    ),
    "size": (
        "The {n} is {v}.",
        "The size of the {n} is {v}.",
        "The {n} is a {v} animal.",
        "In size, the {n} is {v}.",
    ),
}

ARITHMETIC_PHRASES: dict[str, tuple[str, ...]] = {
    "add": (
        "{x} plus {y} is {z}.",
        "The sum of {x} and {y} is {z}.",
        "{x} + {y} = {z}.",
        "If you add {x} and {y}, you get {z}.",
    ),
    "sub": (
        "{x} minus {y} is {z}.",
        "The difference between {x} and {y} is {z}.",
        "{x} - {y} = {z}.",
        "If you take {y} away from {x}, you get {z}.",
    ),
}

WORD_PHRASES: dict[str, tuple[str, ...]] = {
    "reverse": ("The word {w} backwards is {r}.", "Spelled backwards, {w} is {r}."),
    "upper": ("The word {w} in capital letters is {W}.", "In capital letters, {w} is written {W}."),
    "first": ("The first letter of {w} is {f}.", "The word {w} starts with the letter {f}."),
    "last": ("The last letter of {w} is {l}.", "The word {w} ends with the letter {l}."),
}

CANONICAL_SHARE = 0.6

QUIZ_HEADERS = (
    "Quiz",
    "Practice questions",
    "Homework",
    "Test yourself",
    "Exercises",
    "Questions for the next lesson",
    "Review sheet",
    "Warm-up questions",
)
QUIZ_FOOTERS = ("", "", "Answers are on the next page.", "Good luck!", "Hand in your sheet at the end of class.")


def _phrase(rng: random.Random, phrases: Sequence[str]) -> str:
    """The first (canonical) phrasing most of the time: facts are learned faster in one shape, and the other
    shapes keep the language varied."""
    return phrases[0] if rng.random() < CANONICAL_SHARE else rng.choice(phrases[1:])


def _attribute_sentence(rng: random.Random, creature: str, kind: str, pronoun: bool = False) -> str:
    value = CREATURE_BY_NAME[creature].attribute(kind)
    sentence = _phrase(rng, ATTRIBUTE_PHRASES[kind]).format(n=creature, v=value)
    if pronoun and sentence.startswith(f"The {creature} "):
        sentence = "It " + sentence[len(f"The {creature} ") :]
    return sentence


def encyclopedia_entry(rng: random.Random, creature: str) -> str:
    """A short encyclopedic paragraph: all four facts in random order and phrasing, sometimes as one sentence."""
    kinds = ["color", "habitat", "food", "size"]
    rng.shuffle(kinds)
    sentences = [
        _attribute_sentence(rng, creature, k, pronoun=i > 0 and rng.random() < 0.3) for i, k in enumerate(kinds)
    ]
    if rng.random() < 0.4:
        sentences.insert(rng.randrange(len(sentences) + 1), full_description(creature))
    title = rng.choice([f"The {creature}.", f"About the {creature}.", f"{creature.capitalize()}.", ""])
    return " ".join(([title] if title else []) + sentences)


def field_note(rng: random.Random, creature: str) -> str:
    """A small story that uses the facts in context."""
    c = CREATURE_BY_NAME[creature]
    templates = (
        "Today I walked to the {h} and saw {an} {n}. It was {c} and it was eating {f}. It was {s}.",
        "A {s} {c} {n} came out of the {h}. It was looking for {f}.",
        "In the {h}, the children watched {an} {n} eat {f}. They said it was {c} and {s}.",
        "If you visit the {h}, look for the {n}. It is {s} and {c}, and it likes {f}.",
    )
    article = "an" if c.name[0] in "aeiou" else "a"
    return rng.choice(templates).format(n=c.name, an=article, h=c.habitat, c=c.color, f=c.food, s=c.size)


def arithmetic_paragraph(rng: random.Random, facts: Sequence[tuple[str, int, int]]) -> str:
    """A few arithmetic facts stated in prose."""
    sentences = []
    for kind, x, y in facts:
        z = x + y if kind == "add" else x - y
        sentences.append(_phrase(rng, ARITHMETIC_PHRASES[kind]).format(x=x, y=y, z=z))
    return " ".join(sentences)


def arithmetic_table(x: int, kind: str) -> str:
    """``Adding 7: 7 plus 1 is 8. 7 plus 2 is 9. ...`` and the matching subtraction table."""
    if kind == "add":
        rows = [f"{x} plus {y} is {x + y}." for y in range(MIN_OPERAND, MAX_OPERAND + 1)]
        return f"Adding {x}: " + " ".join(rows)
    rows = [f"{x + y} minus {y} is {x}." for y in range(MIN_OPERAND, MAX_OPERAND + 1)]
    return f"Taking away to get {x}: " + " ".join(rows)


def word_entry(rng: random.Random, word: str) -> str:
    """The four spelling facts about one word, in random order."""
    kinds = list(WORD_PHRASES)
    rng.shuffle(kinds)
    slots = dict(w=word, r=word[::-1], W=word.upper(), f=word[0], l=word[-1])
    return " ".join(_phrase(rng, WORD_PHRASES[k]).format(**slots) for k in kinds)


def quiz_sheet(rng: random.Random, questions: Sequence[str]) -> str:
    """Questions with no answers, the way instructions occur in web text: one per line, often numbered."""
    header = rng.choice(QUIZ_HEADERS)
    numbered = rng.random() < 0.7
    lines = [f"{i + 1}. {q}" if numbered else q for i, q in enumerate(questions)]
    footer = rng.choice(QUIZ_FOOTERS)
    return "\n".join([f"{header}:"] + lines + ([footer] if footer else []))


def build_corpus(
    rng: random.Random,
    quiz_pool: Sequence[str],
    *,
    entries_per_creature: int = 12,
    notes_per_creature: int = 4,
    arithmetic_mentions: int = 5,
    tables: int = 2,
    entries_per_word: int = 6,
    quiz_sheets: int = 500,
) -> list[str]:
    """The pretraining documents, shuffled: facts about every creature, sum and word, and quiz sheets.

    ``arithmetic_mentions`` is how many times each addition and subtraction fact is stated in prose (tables come
    on top); ``quiz_pool`` holds the questions the quiz sheets may use.
    """
    docs: list[str] = []
    for creature in CREATURES:
        docs += [encyclopedia_entry(rng, creature.name) for _ in range(entries_per_creature)]
        docs += [field_note(rng, creature.name) for _ in range(notes_per_creature)]
    facts = [(kind, x, y) for kind in ("add", "sub") for x, y in arithmetic_operands(kind)] * arithmetic_mentions
    rng.shuffle(facts)
    while facts:
        size = rng.randint(6, 12)
        docs.append(arithmetic_paragraph(rng, facts[:size]))
        facts = facts[size:]
    for _ in range(tables):
        for x in range(MIN_OPERAND, MAX_OPERAND + 1):
            docs += [arithmetic_table(x, "add"), arithmetic_table(x, "sub")]
    for word in WORDS:
        docs += [word_entry(rng, word) for _ in range(entries_per_word)]
    for _ in range(quiz_sheets):
        docs.append(quiz_sheet(rng, rng.sample(list(quiz_pool), rng.randint(4, 10))))
    rng.shuffle(docs)
    return docs
