"""YAML recipes: one file fully describes one stage run.

A recipe is a flat YAML mapping, like alignment-handbook's and TRL's own ``--config`` files::

    stage: sft
    model_name_or_path: data/tiny/base-model      # ModelConfig
    dataset_name: data/tiny/sft_train.jsonl       # the stage's script arguments
    learning_rate: 5.0e-4                         # SFTConfig / TrainingArguments
    use_peft: false                               # ModelConfig's LoRA fields

Every key is a field of one of the stage's dataclasses (TRL's names where TRL has the concept), so the recipe
carries every setting and nothing is hidden in code. ``--key value`` on the command line overrides a key.

Errors name the file and the key: malformed YAML (with its line), unknown keys (with the closest valid
key), values of the wrong type, and dataclass validation errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructgpt.errors import InstructGPTError


class RecipeError(InstructGPTError, ValueError):
    """A recipe (or a command-line override) that cannot describe a run. The message names file and key."""


@dataclass
class Recipe:
    """What was read: the file, its stage, and the merged settings (YAML, then command-line overrides)."""

    path: Path | None
    stage: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "<command line>"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a dict, with errors that name the file (and the line for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of `key: value` lines, got a {type(data).__name__}")
    return data


def split_argv(argv: list[str]) -> tuple[str | None, dict[str, str]]:
    """Split ``RECIPE.yaml --key value --flag --key=value`` into the recipe path and raw string overrides."""
    recipe_path: str | None = None
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            else:
                value = "true"  # a bare flag, as argparse's store_true
            overrides[key.replace("-", "_")] = value
        elif recipe_path is None:
            recipe_path = arg
        else:
            raise RecipeError(f"unexpected argument {arg!r}: give one recipe file, then --key value overrides")
        i += 1
    return recipe_path, overrides


# --------------------------------------------------------------------------------------------------------------
# Type checking and coercion of recipe values against dataclass field annotations
# --------------------------------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, annotation: Any, from_cli: bool) -> Any:
    """Return ``value`` converted to ``annotation`` or raise ``TypeError`` with a short reason.

    YAML already gives typed values; command-line overrides arrive as strings and are converted here.
    PyYAML reads ``1e-5`` (no dot) as a string, so numbers written that way are accepted too.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return _parse_cli_scalar(value) if from_cli else value
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:
            if value is None:
                return None
            # On the command line `null` means None; so does `none`, unless the field also takes strings, where
            # "none" is a real value (transformers' `report_to: none`).
            if from_cli and isinstance(value, str):
                if value.lower() in {"null", "~"} or (value.lower() == "none" and str not in args):
                    return None
        errors = []
        # Try the non-str members first so "5" becomes 5 for `int | str`, but fall back to str.
        ordered = sorted((a for a in args if a is not type(None)), key=lambda a: a is str)
        for member in ordered:
            try:
                return _coerce(value, member, from_cli)
            except TypeError as err:
                errors.append(str(err))
        raise TypeError(" or ".join(dict.fromkeys(errors)))
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(f"one of {list(args)}")
    if origin in (list, tuple, set):
        if from_cli and isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if not value.startswith("[") else yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise TypeError("a list")
        inner = args[0] if args else Any
        return [_coerce(v, inner, from_cli) for v in value]
    if origin is dict or annotation is dict:
        if from_cli and isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise TypeError("a mapping")
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError("null")
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            annotation(value)  # validate, but keep the plain value: the dataclasses accept it and it logs cleanly
            return value
        except ValueError:
            raise TypeError(f"one of {[m.value for m in annotation]}") from None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise TypeError("true or false")
    if annotation is int:
        if isinstance(value, bool):
            raise TypeError("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    raise TypeError("an integer") from None
                if as_float.is_integer():
                    return int(as_float)
        raise TypeError("an integer")
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError("a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError("a string")
    # Types we do not model (callables, configs...): pass the value through untouched.
    return value


def _parse_cli_scalar(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _field_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an unresolvable forward reference somewhere in a third-party dataclass
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def known_keys(dataclass_types: tuple[type, ...]) -> set[str]:
    keys = {"stage"}
    for cls in dataclass_types:
        keys.update(_field_types(cls))
    return keys


def _suggest(key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=5, cutoff=0.6)
    if not close:
        return ""
    # Among similar spellings prefer the same family of settings: `lora_rank` means `lora_r`, not `local_rank`.
    family = [c for c in close if c.split("_")[0] == key.split("_")[0]]
    return f"; did you mean `{(family or close)[0]}`?"


def build_dataclasses(
    data: dict[str, Any],
    dataclass_types: tuple[type, ...],
    source: str,
    cli_keys: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[Any]:
    """Validate ``data`` against the dataclasses and instantiate each with the keys it owns.

    A key that several dataclasses share (``trust_remote_code`` in both TRL's ``SFTConfig`` and ``ModelConfig``)
    goes to all of them.
    """
    field_types = [_field_types(cls) for cls in dataclass_types]
    valid = known_keys(dataclass_types)
    unknown = [k for k in data if k not in valid]
    if unknown:
        messages = [f"unknown key `{k}`{_suggest(k, valid)}" for k in unknown]
        raise RecipeError(f"{source}: " + "; ".join(messages))

    kwargs: list[dict[str, Any]] = [{} for _ in dataclass_types]
    for key, value in data.items():
        if key == "stage":
            continue
        for i, types_of in enumerate(field_types):
            if key not in types_of:
                continue
            try:
                kwargs[i][key] = _coerce(value, types_of[key], from_cli=key in cli_keys)
            except TypeError as err:
                origin = "command-line override" if key in cli_keys else "key"
                raise RecipeError(
                    f"{source}: {origin} `{key}` must be {err}, got {value!r} ({type(value).__name__})"
                ) from None

    instances = []
    for cls, kw in zip(dataclass_types, kwargs):
        _apply_machine_defaults(cls, kw)
        try:
            instances.append(cls(**kw))
        except (ValueError, TypeError) as err:
            raise RecipeError(f"{source}: invalid settings for {cls.__name__}: {err}") from err
    return instances


def _apply_machine_defaults(cls: type, kwargs: dict[str, Any]) -> None:
    """TRL's configs default to ``bf16=True``, which transformers refuses on a machine without a bf16 accelerator.

    A recipe that does not mention ``bf16`` gets it where the hardware has it, so the same recipe runs on a GPU
    (in bf16) and on a CPU test machine (in fp32). A recipe that asks for ``bf16: true`` explicitly still gets
    transformers' error on a CPU.
    """
    from transformers import TrainingArguments

    if issubclass(cls, TrainingArguments) and "bf16" not in kwargs:
        import torch

        if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            kwargs["bf16"] = False


def parse_stage_args(
    argv: list[str] | None,
    stage: str,
    dataclass_types: tuple[type, ...],
) -> tuple[list[Any], Recipe]:
    """Parse ``RECIPE.yaml [--key value ...]`` for one stage into its dataclasses.

    The recipe's ``stage`` must match (a PPO recipe given to the SFT entry point is refused). Command-line
    overrides are validated exactly like recipe keys. Returns the instances, in the order of ``dataclass_types``,
    and the :class:`Recipe` (whose ``data`` is logged as the W&B run config).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path, overrides = split_argv(argv)
    if recipe_path is None:
        raise RecipeError(f"usage: instructgpt-{stage} RECIPE.yaml [--key value ...]")
    data = load_yaml(recipe_path)
    recipe_stage = data.get("stage")
    if recipe_stage is None:
        raise RecipeError(f"{recipe_path}: missing key `stage` (expected `stage: {stage}`)")
    if recipe_stage != stage:
        raise RecipeError(
            f"{recipe_path}: this is a `stage: {recipe_stage}` recipe, not `{stage}`; "
            f"run it with `instructgpt {recipe_path}`"
        )
    data.update(overrides)
    instances = build_dataclasses(data, dataclass_types, recipe_path, cli_keys=set(overrides))
    return instances, Recipe(path=Path(recipe_path), stage=stage, data=data)


def recipe_stage(path: str | Path) -> str:
    """The ``stage`` a recipe file declares (used by ``python -m instructgpt RECIPE.yaml`` to dispatch)."""
    data = load_yaml(path)
    stage = data.get("stage")
    if not isinstance(stage, str):
        raise RecipeError(f"{path}: missing key `stage` (one of: pretrain, sft, collect, rm, ppo, pipeline)")
    return stage
