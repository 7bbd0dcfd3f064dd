"""Numbers a recipe may hold: every numeric setting is finite and in its range, checked when the recipe is parsed.

A range is written once, where the number is declared:

- a field of one of our own dataclasses (anything defined in the ``instructgpt`` package) declares it in its
  ``metadata["range"]``; it is never guessed from the field's name (``tests/unit/test_recipe.py`` checks that every
  numeric field of every stage declares one);
- a field of TRL's, transformers' or peft's dataclasses cannot carry our metadata, so its range comes from the
  first rule in :data:`RULES` whose pattern matches its name.

The parser refuses a value outside its range, NaN or infinite, before any work starts, with a message naming the
key; ``--help`` prints each field's range; :func:`range_problems` lets a dataclass check the same ranges when it
is built directly, without a recipe.

A range is written ``"[lo, hi]"`` (an interval; a round bracket leaves that end out: ``"(0, 1]"``,
``"[0, 0.5)"``), ``">= x"`` or ``"> x"``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import Field
from typing import Any

# Ranges of the foreign (TRL / transformers / peft) fields the recipes use, by (pattern on the field name, range);
# the first match wins. Never consulted for a field of ours. Unset (None) values are not checked.
RULES: list[tuple[str, str]] = [
    # probabilities and fractions
    (r"dropout$|^(top_p|adam_beta1|adam_beta2|label_smoothing_factor)$", "[0, 1]"),
    # TRL's RLOO samples at this temperature: it divides the logits
    (r"^temperature$", "> 0"),
    # sizes and counts that must be at least one
    (r"batch_size$|^(gradient_accumulation_steps|lora_r|lora_alpha|max_length|save_total_limit)$", ">= 1"),
    # rates, coefficients, limits and counts that may be zero
    (
        r"_coef$|coefficient$|^(learning_rate|weight_decay|max_grad_norm|adam_epsilon|num_train_epochs|warmup_steps|"
        r"eval_delay|neftune_noise_alpha|top_k|dataloader_num_workers|logging_steps|save_steps|eval_steps)$",
        ">= 0",
    ),
]
_COMPILED = [(re.compile(pattern), spec) for pattern, spec in RULES]
_PACKAGE = __name__.split(".")[0]


def declared_in(cls: type, name: str) -> type:
    """The class that declares field ``name`` of dataclass ``cls``: the first in its MRO that annotates it.

    ``PPOConfig`` subclasses transformers' ``TrainingArguments``: its own fields (and those it redeclares) are ours,
    the ones it inherits are transformers'.
    """
    for klass in cls.__mro__:
        if name in inspect.get_annotations(klass):
            return klass
    return cls


def is_ours(cls: type) -> bool:
    """Whether ``cls`` is defined in this package (its fields declare their own ranges)."""
    return cls.__module__.split(".")[0] == _PACKAGE


def range_of(field: Field, owner: type | None = None) -> str | None:
    """The range ``field``'s values must lie in: its own ``metadata["range"]``; for a field that ``owner`` (the
    dataclass it belongs to) inherits from TRL, transformers or peft, the first rule of :data:`RULES` that
    matches its name; else None (no range)."""
    if "range" in field.metadata:
        return field.metadata["range"]
    if owner is not None and is_ours(declared_in(owner, field.name)):
        return None
    return next((spec for pattern, spec in _COMPILED if pattern.search(field.name)), None)


def in_range(value: float, spec: str) -> bool:
    """Whether ``value`` lies in ``spec`` (``"[lo, hi]"``, ``"(lo, hi]"``, ``"[lo, hi)"``, ``">= x"`` or ``"> x"``)."""
    spec = spec.strip()
    if spec[0] in "[(":
        low, high = (float(x) for x in spec[1:-1].split(","))
        above = value >= low if spec[0] == "[" else value > low
        below = value <= high if spec[-1] == "]" else value < high
        return above and below
    op, bound = spec.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def check_number(key: str, value: Any, field: Field, owner: type | None = None) -> str | None:
    """Why ``value`` cannot be the value of ``field`` of dataclass ``owner`` (named ``key`` in the recipe), or None
    when it can."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"`{key}` must be a finite number, got {value}"
    spec = range_of(field, owner)
    if spec is not None and not in_range(value, spec):
        return f"`{key}` must be {words(spec)}, got {value}"
    return None


def range_problems(instance: Any) -> list[str]:
    """What is out of range in a dataclass ``instance``, field by field, in the parser's words.

    For a dataclass's ``__post_init__``, so that one built directly (not from a recipe) is held to the same ranges.
    """
    cls = type(instance)
    return [
        problem for f in dataclasses.fields(cls) if (problem := check_number(f.name, getattr(instance, f.name), f, cls))
    ]


def words(spec: str) -> str:
    """A range in words: ``"[0, 1]"`` -> "between 0 and 1", ``"(0, 1]"`` -> "greater than 0 and at most 1"."""
    spec = spec.strip()
    if spec[0] in "[(":
        low, high = (x.strip() for x in spec[1:-1].split(","))
        if spec[0] == "[" and spec[-1] == "]":
            return f"between {low} and {high}"
        above = f"at least {low}" if spec[0] == "[" else f"greater than {low}"
        below = f"at most {high}" if spec[-1] == "]" else f"less than {high}"
        return f"{above} and {below}"
    op, bound = spec.split()
    return f"{'at least' if op == '>=' else 'greater than'} {bound}"
