"""The offline tiny world: a made-up domain whose instructions a program can judge.

See :mod:`instructgpt.tinyworld.world` for the facts and the task families, :mod:`.demos` for the demonstration
styles, :mod:`.corpus` for the pretraining text, and ``python -m instructgpt.tinyworld.build_data`` for the data
files under ``data/tiny/`` (documented in ``data/README.md``).
"""

from instructgpt.tinyworld.world import (
    ATTRIBUTES,
    CREATURE_BY_NAME,
    CREATURES,
    FAMILIES,
    KINDS,
    PREFIXES,
    TEMPLATES,
    VOCABULARY,
    WORDS,
    Creature,
    Task,
    UnknownPromptError,
    all_cores,
    answer_sentence,
    full_description,
    make_task,
    parse_prompt,
)

__all__ = [
    "ATTRIBUTES",
    "CREATURE_BY_NAME",
    "CREATURES",
    "FAMILIES",
    "KINDS",
    "PREFIXES",
    "TEMPLATES",
    "VOCABULARY",
    "WORDS",
    "Creature",
    "Task",
    "UnknownPromptError",
    "all_cores",
    "answer_sentence",
    "full_description",
    "make_task",
    "parse_prompt",
]
