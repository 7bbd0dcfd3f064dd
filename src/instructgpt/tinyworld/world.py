"""The tiny world: a made-up bestiary, a word list, small-number arithmetic, and the instructions about them.

Everything here is fixed (no randomness): the facts the base model learns during pretraining, the instruction
phrasings of each task family, and the parser that turns a raw instruction back into a :class:`Task` with its
right answer. The simulated labeler (:mod:`instructgpt.judges.simulated`) judges responses against this module, so the
world is the single source of truth; ``data/tiny/facts.jsonl`` is an export of :data:`CREATURES`.

Task families (``Task.family``) and kinds (``Task.kind``):

- ``arithmetic``: ``add`` (x plus y) and ``sub`` (x minus y), operands from :data:`MIN_OPERAND` to
  :data:`MAX_OPERAND` for addition and their sums for subtraction, so every answer is between 1 and 12;
- ``fact``: ``color``, ``habitat``, ``food``, ``size`` of a creature;
- ``string``: ``reverse``, ``upper``, ``first``, ``last`` (letter) of a word;
- ``describe``: describe a creature (judged by how many of its four attributes the description states).

An instruction is an optional *prefix* (``"Question: "``) followed by a *core*: a template with its slots filled
(``"What color is the glimmerfox?"``). Held-out evaluation prompts are held out by core.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from instructgpt.infra.errors import InstructGPTError


class UnknownPromptError(InstructGPTError, ValueError):
    """A prompt that is not an instruction of the tiny world, so no right answer can be derived for it."""


# ---------------------------------------------------------------------------------------------------------------
# The facts
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Creature:
    name: str
    color: str
    habitat: str
    food: str
    size: str

    def attribute(self, kind: str) -> str:
        return getattr(self, kind)


ATTRIBUTES = ("color", "habitat", "food", "size")

# Each attribute has its own vocabulary; the vocabularies are disjoint, so one word names one kind of fact.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "color": (
        "red",
        "blue",
        "green",
        "yellow",
        "purple",
        "orange",
        "silver",
        "black",
        "white",
        "brown",
        "pink",
        "gray",
    ),
    "habitat": ("forest", "river", "desert", "mountains", "swamp", "caves", "meadow", "beach", "jungle", "lake"),
    "food": ("berries", "fish", "seeds", "insects", "mushrooms", "leaves", "honey", "snails", "worms", "nuts"),
    "size": ("tiny", "small", "large", "huge"),
}

# Twenty-four made-up creatures. Values were drawn once at random (each value shared by several creatures, so the
# facts must be memorised per creature) and written down here; they never change.
CREATURES: tuple[Creature, ...] = (
    Creature("glimmerfox", "blue", "jungle", "leaves", "tiny"),
    Creature("mossbat", "black", "swamp", "leaves", "tiny"),
    Creature("quillhog", "white", "beach", "seeds", "tiny"),
    Creature("zephyrmole", "yellow", "caves", "seeds", "small"),
    Creature("dapplewing", "pink", "river", "insects", "small"),
    Creature("thornbeak", "white", "forest", "worms", "huge"),
    Creature("bramblecat", "red", "swamp", "insects", "huge"),
    Creature("frostnewt", "gray", "forest", "honey", "tiny"),
    Creature("emberowl", "purple", "jungle", "honey", "huge"),
    Creature("pebblecrab", "black", "mountains", "fish", "large"),
    Creature("wispdeer", "blue", "lake", "nuts", "small"),
    Creature("mirelynx", "green", "mountains", "fish", "small"),
    Creature("duskhare", "red", "caves", "berries", "tiny"),
    Creature("tidelark", "brown", "river", "mushrooms", "large"),
    Creature("sunbadger", "pink", "desert", "nuts", "large"),
    Creature("vinesnake", "yellow", "desert", "snails", "large"),
    Creature("cloudmoth", "orange", "beach", "berries", "large"),
    Creature("rustbeetle", "silver", "meadow", "fish", "small"),
    Creature("fernotter", "silver", "mountains", "seeds", "huge"),
    Creature("hollowtoad", "purple", "river", "snails", "tiny"),
    Creature("cindermouse", "brown", "desert", "insects", "huge"),
    Creature("reedgoose", "gray", "meadow", "worms", "small"),
    Creature("brightgecko", "orange", "forest", "berries", "huge"),
    Creature("hazelyak", "green", "lake", "mushrooms", "large"),
)
CREATURE_BY_NAME: dict[str, Creature] = {c.name: c for c in CREATURES}

# Short everyday words for the string tasks: none is a creature or an attribute word, none is a palindrome.
WORDS: tuple[str, ...] = (
    "lamp",
    "tree",
    "book",
    "rain",
    "ship",
    "cake",
    "door",
    "moon",
    "bell",
    "coat",
    "drum",
    "fork",
    "kite",
    "milk",
    "nest",
    "ring",
    "rope",
    "sand",
    "tent",
    "yarn",
)

MIN_OPERAND = 1
MAX_OPERAND = 6


def attribute_of_word(word: str) -> str | None:
    """Which attribute a vocabulary word names (``"blue"`` -> ``"color"``), or None."""
    return _WORD_TO_ATTRIBUTE.get(word.lower())


_WORD_TO_ATTRIBUTE = {value: kind for kind, values in VOCABULARY.items() for value in values}


# ---------------------------------------------------------------------------------------------------------------
# Instructions: templates per task kind, prefixes, and the answers
# ---------------------------------------------------------------------------------------------------------------

FAMILIES = ("arithmetic", "fact", "string", "describe")
KINDS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("add", "sub"),
    "fact": ATTRIBUTES,
    "string": ("reverse", "upper", "first", "last"),
    "describe": ("describe",),
}
FAMILY_OF_KIND = {kind: family for family, kinds in KINDS.items() for kind in kinds}

# Slots: {x} {y} integers, {n} a creature name, {w} a word.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "What is {x} plus {y}?",
        "Add {x} and {y}.",
        "What is the sum of {x} and {y}?",
        "Compute {x} + {y}.",
        "Calculate {x} plus {y}.",
        "How much is {x} plus {y}?",
    ),
    "sub": (
        "What is {x} minus {y}?",
        "Subtract {y} from {x}.",
        "What is the difference between {x} and {y}?",
        "Compute {x} - {y}.",
        "Calculate {x} minus {y}.",
        "How much is {x} minus {y}?",
        "Take {y} away from {x}.",
    ),
    "color": (
        "What color is the {n}?",
        "What is the color of the {n}?",
        "Tell me the color of the {n}.",
        "Which color does the {n} have?",
        "Name the color of the {n}.",
    ),
    "habitat": (
        "Where does the {n} live?",
        "What is the habitat of the {n}?",
        "Tell me where the {n} lives.",
        "In what place does the {n} live?",
        "Name the home of the {n}.",
    ),
    "food": (
        "What does the {n} eat?",
        "What is the food of the {n}?",
        "Tell me what the {n} eats.",
        "What food does the {n} like?",
        "Name the food of the {n}.",
    ),
    "size": (
        "How big is the {n}?",
        "What size is the {n}?",
        "Tell me the size of the {n}.",
        "Is the {n} big or small?",
        "Name the size of the {n}.",
    ),
    "reverse": (
        "Reverse the word {w}.",
        "Spell {w} backwards.",
        "What is {w} spelled backwards?",
        "Write the word {w} in reverse.",
        "What is the reverse of {w}?",
    ),
    "upper": (
        "Write {w} in capital letters.",
        "Convert {w} to uppercase.",
        "What is {w} in uppercase?",
        "Make the word {w} uppercase.",
        "Spell {w} in capital letters.",
    ),
    "first": (
        "What is the first letter of {w}?",
        "Which letter does {w} start with?",
        "Tell me the first letter of the word {w}.",
        "Give the first letter of {w}.",
        "What letter does {w} begin with?",
    ),
    "last": (
        "What is the last letter of {w}?",
        "Which letter does {w} end with?",
        "Tell me the last letter of the word {w}.",
        "Give the last letter of {w}.",
        "What is the final letter of {w}?",
    ),
    "describe": (
        "Describe the {n}.",
        "Tell me about the {n}.",
        "Write a short description of the {n}.",
        "What do you know about the {n}?",
        "Give a description of the {n}.",
        "Describe the {n} in one sentence.",
        "What is the {n} like?",
        "Write one sentence about the {n}.",
        "Can you describe the {n}?",
        "Give me a short description of the {n}.",
    ),
}

# Optional openings in front of a core instruction; "" (none) is the most common.
PREFIXES: tuple[str, ...] = ("", "Question: ", "Please answer: ", "Quick question: ")


@dataclass(frozen=True)
class Task:
    """One parsed instruction: what is asked about what, and the right answer.

    ``answer`` is the canonical answer token (``"12"``, ``"blue"``, ``"pmal"``, ``"LAMP"``, ``"l"``); for a
    description it is empty (a description is judged by the attributes it states). ``core`` is the instruction
    without its prefix, the unit by which evaluation prompts are held out.
    """

    family: str
    kind: str
    core: str
    creature: str | None = None
    word: str | None = None
    operands: tuple[int, int] | None = None
    answer: str = ""
    prefix: str = ""
    template: int = field(default=0, compare=False)

    @property
    def prompt(self) -> str:
        return self.prefix + self.core


def compute_answer(
    kind: str, *, x: int | None = None, y: int | None = None, creature: str | None = None, word: str | None = None
) -> str:
    """The right answer of a task kind, as the single token the labeler looks for."""
    if kind == "add":
        return str(x + y)
    if kind == "sub":
        return str(x - y)
    if kind in ATTRIBUTES:
        return CREATURE_BY_NAME[creature].attribute(kind)
    if kind == "reverse":
        return word[::-1]
    if kind == "upper":
        return word.upper()
    if kind == "first":
        return word[0]
    if kind == "last":
        return word[-1]
    if kind == "describe":
        return ""
    raise ValueError(f"unknown task kind {kind!r}")


def make_task(
    kind: str,
    template: int,
    *,
    x: int | None = None,
    y: int | None = None,
    creature: str | None = None,
    word: str | None = None,
    prefix: str = "",
) -> Task:
    """Fill template number ``template`` of ``kind`` and attach the right answer."""
    core = TEMPLATES[kind][template].format(x=x, y=y, n=creature, w=word)
    return Task(
        family=FAMILY_OF_KIND[kind],
        kind=kind,
        core=core,
        creature=creature,
        word=word,
        operands=(x, y) if x is not None else None,
        answer=compute_answer(kind, x=x, y=y, creature=creature, word=word),
        prefix=prefix,
        template=template,
    )


def arithmetic_operands(kind: str) -> Iterator[tuple[int, int]]:
    """Every operand pair of the world: x + y with 1 <= x, y <= 6, and its inverse (x + y) - y = x."""
    for x in range(MIN_OPERAND, MAX_OPERAND + 1):
        for y in range(MIN_OPERAND, MAX_OPERAND + 1):
            yield (x, y) if kind == "add" else (x + y, y)


def all_cores(kind: str) -> Iterator[Task]:
    """Every core instruction (no prefix) of one task kind, in a fixed order."""
    for template in range(len(TEMPLATES[kind])):
        if kind in ("add", "sub"):
            for x, y in arithmetic_operands(kind):
                yield make_task(kind, template, x=x, y=y)
        elif kind in ATTRIBUTES or kind == "describe":
            for creature in CREATURES:
                yield make_task(kind, template, creature=creature.name)
        else:
            for word in WORDS:
                yield make_task(kind, template, word=word)


# ---------------------------------------------------------------------------------------------------------------
# Parsing raw prompts back into tasks
# ---------------------------------------------------------------------------------------------------------------

_SLOT_PATTERNS = {"x": r"(?P<x>\d+)", "y": r"(?P<y>\d+)", "n": r"(?P<n>[a-z]+)", "w": r"(?P<w>[a-z]+)"}


def _template_regex(template: str) -> re.Pattern[str]:
    """``"Add {x} and {y}."`` -> a case-insensitive regex with named slots; the final punctuation is optional."""
    body = template.rstrip(".?!")
    pattern = ""
    for piece in re.split(r"(\{[a-z]\})", body):
        if re.fullmatch(r"\{[a-z]\}", piece):
            pattern += _SLOT_PATTERNS[piece[1]]
        else:
            pattern += r"\s+".join(re.escape(part) for part in piece.split(" "))
    return re.compile(r"^" + pattern + r"\s*[.?!]?$", re.IGNORECASE)


@lru_cache(maxsize=1)
def _compiled_templates() -> list[tuple[str, int, re.Pattern[str]]]:
    return [(kind, i, _template_regex(t)) for kind, templates in TEMPLATES.items() for i, t in enumerate(templates)]


def split_prefix(prompt: str) -> tuple[str, str]:
    """``"Question: What is 2 plus 3?"`` -> ``("Question: ", "What is 2 plus 3?")`` (case-insensitive prefix)."""
    for prefix in PREFIXES:
        if prefix and prompt.lower().startswith(prefix.lower()):
            return prompt[: len(prefix)], prompt[len(prefix) :].strip()
    return "", prompt


def parse_prompt(prompt: str) -> Task:
    """Recognise a raw instruction (no prompt template around it) and return its :class:`Task`.

    Whitespace and letter case are forgiven, the final punctuation is optional, and a known prefix is skipped.
    Arithmetic accepts any non-negative integers and string tasks any single word, since their answers can be
    computed; fact and description tasks need a creature of the world. Anything else raises
    :class:`UnknownPromptError` naming the prompt.
    """
    if not isinstance(prompt, str):
        raise UnknownPromptError(f"expected the prompt as a string, got {type(prompt).__name__}")
    text = " ".join(prompt.split())
    prefix, core = split_prefix(text)
    for kind, template, regex in _compiled_templates():
        match = regex.match(core)
        if match is None:
            continue
        slots = match.groupdict()
        if "n" in slots:
            name = slots["n"].lower()
            if name not in CREATURE_BY_NAME:
                raise UnknownPromptError(
                    f"prompt {prompt!r} asks about {slots['n']!r}, which is not a creature of "
                    f"the tiny world (see data/tiny/facts.jsonl)"
                )
            task = make_task(kind, template, creature=name, prefix=prefix)
        elif "w" in slots:
            task = make_task(kind, template, word=slots["w"].lower(), prefix=prefix)
        else:
            x, y = int(slots["x"]), int(slots["y"])
            task = make_task(kind, template, x=x, y=y, prefix=prefix)
        return task
    raise UnknownPromptError(
        f"prompt {prompt!r} is not an instruction of the tiny world (arithmetic, creature facts, word spelling or "
        "a creature description in one of the phrasings of instructgpt.tinyworld.TEMPLATES)"
    )


# ---------------------------------------------------------------------------------------------------------------
# Reference answers (the labeler's most-preferred style) and fact sentences
# ---------------------------------------------------------------------------------------------------------------

_ATTRIBUTE_SENTENCES = {
    "color": "The {n} is {v}.",
    "habitat": "The {n} lives in the {v}.",
    "food": "The {n} eats {v}.",
    "size": "The {n} is {v}.",
}


def fact_sentence(creature: str, kind: str) -> str:
    """One plain sentence stating one attribute: ``"The glimmerfox lives in the beach."``."""
    value = CREATURE_BY_NAME[creature].attribute(kind)
    return _ATTRIBUTE_SENTENCES[kind].format(n=creature, v=value)


def full_description(creature: str) -> str:
    """All four attributes in one sentence: the most-preferred description."""
    c = CREATURE_BY_NAME[creature]
    return f"The {c.name} is a {c.size} {c.color} creature that lives in the {c.habitat} and eats {c.food}."


def answer_sentence(task: Task) -> str:
    """The right answer as one short sentence, in the most-preferred style."""
    if task.kind == "add":
        x, y = task.operands
        return f"{x} plus {y} is {task.answer}."
    if task.kind == "sub":
        x, y = task.operands
        return f"{x} minus {y} is {task.answer}."
    if task.family == "fact":
        return fact_sentence(task.creature, task.kind)
    if task.kind == "reverse":
        return f"The word {task.word} backwards is {task.answer}."
    if task.kind == "upper":
        return f"The word {task.word} in capital letters is {task.answer}."
    if task.kind == "first":
        return f"The first letter of {task.word} is {task.answer}."
    if task.kind == "last":
        return f"The last letter of {task.word} is {task.answer}."
    return full_description(task.creature)


def short_answer(task: Task) -> str:
    """The bare answer (``"12."``, ``"Blue."``), the other most-preferred form; descriptions have none."""
    if task.family == "describe":
        return full_description(task.creature)
    answer = task.answer
    if task.family == "fact":
        answer = answer.capitalize()
    return f"{answer}."
