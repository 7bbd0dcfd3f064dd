"""Recipes: one YAML file fully describes one stage run, parsed on transformers' ``HfArgumentParser``.

A recipe is a flat YAML mapping, like alignment-handbook's and ``trl sft --config`` files::

    stage: sft                                    # optional: the entry point already names the stage
    model_name_or_path: data/tiny/base-model      # ModelConfig
    dataset_name: data/tiny/sft_train.jsonl       # the stage's script arguments
    learning_rate: 5.0e-4                         # SFTConfig / TrainingArguments
    use_peft: false                               # ModelConfig's LoRA fields

Every key is a field of one of the stage's dataclasses (TRL's names where TRL has the concept), so the recipe
carries every setting and nothing is hidden in code. The command line takes the recipe positionally or as
``--config`` (TRL's and alignment-handbook's form), and ``--key value`` overrides one key.

How parsing works: the recipe's keys and the command-line overrides are merged into one mapping (the command line
wins), written out as ``--key value`` tokens and handed to ``HfArgumentParser``, which converts and checks every
value against its field's type and builds the dataclasses. So a YAML value and a command-line string go through
the same conversion, ``--help`` lists every field with its help and default, and the errors stay ours: one line
that names the file and the key (malformed YAML with its line, an unknown key with the closest valid one, a value
of the wrong type, a dataclass that refuses its settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructgpt import __version__
from instructgpt.infra.aliases import AliasError, apply_aliases
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.tracking import TRAINER_STAGES, TrackerError, check_report_to
from instructgpt.infra.validation import check_number, range_of
from instructgpt.stages import STAGES  # the registry of stage names only; it imports no stage


class RecipeError(InstructGPTError, ValueError):
    """A recipe (or a command-line override) that cannot describe a run. The message names file and key."""


@dataclass
class Recipe:
    """What was read: the file, its stage, and the merged settings (YAML, then command-line overrides)."""

    path: Path | None
    stage: str
    data: dict[str, Any] = field(default_factory=dict)
    origin: str | None = None  # what to name in errors when there is no file (the pipeline's `eval:` mapping)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else self.origin or "<command line>"


@dataclass
class StageArgs:
    """One stage run, parsed: an instance of each of the stage's dataclasses (in order) and the recipe behind them.

    Unpacks like a tuple: ``script_args, training_args, model_args = args``.
    """

    parts: tuple[Any, ...]
    recipe: Recipe

    def __iter__(self):
        return iter(self.parts)

    @property
    def source(self) -> str:
        return self.recipe.source


# --------------------------------------------------------------------------------------------------------------
# Reading the YAML file
# --------------------------------------------------------------------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a dict, with errors that name the file (and the line for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key `{key}` is given twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def recipe_stage(path: str | Path) -> str:
    """The ``stage`` a recipe file declares (used by ``python -m instructgpt RECIPE.yaml`` to dispatch)."""
    data = load_yaml(path)
    stage = data.get("stage")
    if not isinstance(stage, str):
        raise RecipeError(f"{path}: missing key `stage` (one of: {', '.join(STAGES)})")
    return stage


# --------------------------------------------------------------------------------------------------------------
# The command line: RECIPE.yaml | --config RECIPE.yaml, then --key value overrides
# --------------------------------------------------------------------------------------------------------------


def split_argv(
    argv: Sequence[str],
    flags: Callable[[str], bool] = lambda key: True,
    many: Callable[[str], bool] = lambda key: False,
) -> tuple[str | None, dict[str, Any]]:
    """Split ``RECIPE.yaml --key value --flag --key=value`` (or ``--config RECIPE.yaml ...``) into the recipe path
    and raw string overrides.

    ``--key`` with no value is ``true``, and only for keys that ``flags`` accepts (the boolean fields): a value-taking
    key left without one is an error, not the string ``"true"``. A key that ``many`` accepts (a list field) takes
    every value up to the next ``--key``: ``--models base=A sft=B``.
    """
    recipe_path: str | None = None
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif many(key.replace("-", "_")) and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values = []
                while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    values.append(argv[i + 1])
                    i += 1
                value = values[0] if len(values) == 1 else values  # one value may still be `a,b` or `[a, b]`
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            elif flags(key.replace("-", "_")):
                value = "true"  # a bare flag, as argparse's store_true
            else:
                raise RecipeError(f"command-line option `--{key}` needs a value")
            key = key.replace("-", "_")
            if key == "config":
                if recipe_path is not None:
                    raise RecipeError(f"two recipes given: {recipe_path} and {value}; give one")
                recipe_path = value
            else:
                overrides[key] = value
        elif recipe_path is None:
            recipe_path = arg
        else:
            raise RecipeError(f"unexpected argument {arg!r}: give one recipe file, then --key value overrides")
        i += 1
    return recipe_path, overrides


# --------------------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------------------

_NULL = {"null", "~"}


def _mentions(annotation: Any, kind: type) -> bool:
    """Whether ``annotation`` is ``kind`` (``dict``, ``list``) or a union or generic that holds it."""
    if annotation is kind or typing.get_origin(annotation) is kind:
        return True
    return any(_mentions(a, kind) for a in typing.get_args(annotation))


def _is_optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _yaml_value(text: str) -> Any:
    """A value for a field that takes a mapping (or a path or a mapping): read as YAML, so JSON works too."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _describe(convert: Any, choices: Sequence[Any] | None) -> str:
    """What a field expects, in the words of the error message: "a number", "true or false", "one of [...]"."""
    if choices:
        return f"one of {list(choices)}"
    name = getattr(convert, "__name__", "")
    return {"float": "a number", "int": "an integer", "string_to_bool": "true or false"}.get(name, f"a valid {name}")


def _integer(text: str) -> int:
    """``int`` that also takes ``3.0`` and ``1e3`` (YAML writes some integers that way)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


_integer.__name__ = "int"


def set_environment(env: Any, source: str) -> None:
    """TRL's CLI recipes may carry ``env:``, a mapping of environment variables to set before the run (its
    ``TrlParser`` does the same); each is set as a string, and a value already in the environment is replaced."""
    if env is None:
        return
    if not isinstance(env, dict) or not all(isinstance(k, str) and k for k in env):
        raise RecipeError(f"{source}: `env` must be a mapping of environment variable names to values, got {env!r:.80}")
    for name, value in env.items():
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{source}: `env.{name}` must be a single value, got {value!r:.60}")
        os.environ[name] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


class RecipeParser:
    """The argument parser of one stage: ``HfArgumentParser`` over the stage's dataclasses, fed from a recipe.

    ``parse(argv)`` reads ``RECIPE.yaml [--key value ...]``, ``--config RECIPE.yaml``, ``--help`` and ``--version``;
    ``build(data)`` turns an in-memory recipe (the pipeline's) into the same dataclasses through the same checks.
    """

    def __init__(
        self,
        stage: str,
        dataclass_types: Sequence[type],
        *,
        prog: str | None = None,
        description: str | None = None,
        recipe_optional: bool = False,
    ):
        from transformers import HfArgumentParser  # heavy: `instructgpt --help` must not wait for it

        self.stage = stage
        self.recipe_optional = recipe_optional  # `instructgpt eval --models ...` needs no file
        self.dataclass_types = tuple(dataclass_types)
        # each key's field and the dataclass it belongs to (a later dataclass wins, as with conflict_handler="resolve")
        self.fields = {f.name: (f, cls) for cls in self.dataclass_types for f in dataclasses.fields(cls)}
        ranges = {name: spec for name, (f, cls) in self.fields.items() if (spec := range_of(f, cls)) is not None}

        class _Parser(HfArgumentParser):
            @staticmethod
            def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
                if field.name in ranges or "range" in field.metadata:
                    # `range` is ours (infra/validation.py), not an argparse keyword; --help shows it after the help
                    metadata = {k: v for k, v in field.metadata.items() if k != "range"}
                    if field.name in ranges:
                        metadata["help"] = f"{metadata.get('help') or ''} (range: {ranges[field.name]})".lstrip()
                    field = _copy_field(field, field.type, metadata)
                # HfArgumentParser has no type for "a mapping" (or "a path or a mapping"): read such values as YAML
                if _mentions(field.type, dict):
                    field = _retyped(field)
                    HfArgumentParser._parse_dataclass_field(parser, field)
                    parser._actions[-1].type = _yaml_value
                    return
                HfArgumentParser._parse_dataclass_field(parser, field)

            def error(self, message: str) -> typing.NoReturn:
                raise RecipeError(message)

        self.parser = _Parser(
            self.dataclass_types,
            prog=prog or f"instructgpt {stage}",
            description=description,
            conflict_handler="resolve",
            add_help=False,
            exit_on_error=False,
        )
        self.parser.add_argument("-h", "--help", action="help", help="Show every setting, its help and default.")
        self.parser.add_argument(
            "--config", metavar="RECIPE.yaml", help="The recipe (also accepted as the first argument)."
        )
        self.parser.add_argument("--version", action="version", version=_version_text())
        self.actions = {
            a.dest: a for a in self.parser._actions if a.option_strings and a.dest not in ("help", "config", "version")
        }
        hints = {name: hint for t in self.dataclass_types for name, hint in _field_types(t).items()}
        self.optional = {name for name, hint in hints.items() if _is_optional(hint)}
        # fields that take a list or a string (TRL's `lora_target_modules`): argparse sees one string, we split it
        self.listy = {
            name
            for name, hint in hints.items()
            if _mentions(hint, list) and name in self.actions and self.actions[name].nargs not in ("+", "*")
        }
        self.keys = set(self.actions)

    # ---- public -----------------------------------------------------------------------------------------------

    def parse(self, argv: Sequence[str] | None = None) -> StageArgs:
        """Parse a command line: ``RECIPE.yaml [--key value ...]`` or ``--config RECIPE.yaml [...]``."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a in ("-h", "--help") for a in argv):
            self.parser.print_help()
            raise SystemExit(0)
        if "--version" in argv:
            print(_version_text())
            raise SystemExit(0)
        recipe_path, overrides = split_argv(argv, flags=self._is_flag, many=self._is_many)
        if recipe_path is None and not (overrides and self.recipe_optional):
            raise RecipeError(
                f"usage: {self.parser.prog} RECIPE.yaml [--key value ...] (or --config RECIPE.yaml; "
                "--help lists every key)"
            )
        data = load_yaml(recipe_path) if recipe_path is not None else {}
        declared = data.get("stage")
        if declared is not None and declared != self.stage:
            raise RecipeError(
                f"{recipe_path}: this is a `stage: {declared}` recipe, not `{self.stage}`; run it with "
                f"`instructgpt {recipe_path}`"
            )
        data.update(overrides)
        data["stage"] = self.stage  # inferred from the entry point when the file does not say; the run config shows it
        path = Path(recipe_path) if recipe_path is not None else None
        return self.build(data, Recipe(path=path, stage=self.stage, data=data), cli_keys=set(overrides))

    def build(self, data: dict[str, Any], recipe: Recipe | None = None, cli_keys: set[str] = frozenset()) -> StageArgs:  # type: ignore[assignment]
        """Check ``data`` (recipe keys, values typed by YAML or strings from a command line) and build the
        dataclasses."""
        data = {k: v for k, v in data.items() if k != "stage"}
        recipe = recipe or Recipe(path=None, stage=self.stage, data=data)
        source = recipe.source
        set_environment(data.pop("env", None), source)
        try:
            data = apply_aliases(data, self.keys, source)
        except AliasError as err:  # its message names the recipe and the key
            raise RecipeError(str(err)) from None
        unknown = [k for k in data if k not in self.keys]
        if unknown:
            raise RecipeError(f"{source}: " + "; ".join(f"unknown key `{k}`{_suggest(k, self.keys)}" for k in unknown))
        tokens: list[str] = []
        nulls, lists = [], {}
        for key, value in {**self._machine_defaults(data), **data}.items():
            origin = "command-line override" if key in cli_keys else "key"
            if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
                if key not in self.optional:
                    raise RecipeError(f"{source}: {origin} `{key}` cannot be null")
                nulls.append(key)
                continue
            if key in self.listy and (
                isinstance(value, (list, tuple)) or "," in str(value) or str(value).startswith("[")
            ):
                lists[key] = _as_list(value)
                continue
            tokens += self._tokens(key, value, source, origin)
        try:
            namespace, rest = self.parser.parse_known_args(tokens)
        except argparse.ArgumentError as err:
            raise RecipeError(f"{source}: {err}") from None
        except RecipeError as err:
            raise RecipeError(f"{source}: {err}") from None
        if rest:
            raise RecipeError(f"{source}: cannot read {' '.join(rest)}")
        for key in nulls:
            setattr(namespace, key, None)
        for key, items in lists.items():
            setattr(namespace, key, items)
        problems = [
            p for k, v in vars(namespace).items() if k in self.fields and (p := check_number(k, v, *self.fields[k]))
        ]
        if problems:
            raise RecipeError(f"{source}: " + "; ".join(problems))
        if "report_to" in self.fields and self.stage != "pipeline":  # the pipeline hands it to each stage's check
            try:
                check_report_to(namespace.report_to, trainer=self.stage in TRAINER_STAGES)
            except TrackerError as err:
                raise RecipeError(f"{source}: {err}") from None
        parts = []
        for cls in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            kwargs = {k: v for k, v in vars(namespace).items() if k in names}
            try:
                parts.append(cls(**kwargs))
            except InstructGPTError as err:  # ours (a mixture, say): its message names the key
                raise RecipeError(f"{source}: {err}") from None
            except (ValueError, TypeError) as err:
                raise RecipeError(f"{source}: invalid settings for {cls.__name__}: {err}") from None
        return StageArgs(parts=tuple(parts), recipe=recipe)

    # ---- helpers ----------------------------------------------------------------------------------------------

    def _is_many(self, key: str) -> bool:
        action = self.actions.get(key)
        return action is not None and action.nargs in ("+", "*")

    def _is_flag(self, key: str) -> bool:
        action = self.actions.get(key)
        return action is not None and action.nargs == "?" and action.const is True

    def _tokens(self, key: str, value: Any, source: str, origin: str) -> list[str]:
        """``--key`` and its value(s) as strings, after checking the value the way the field's parser will."""
        action = self.actions[key]
        many = action.nargs in ("+", "*")
        if action.type is _yaml_value:
            text = value if isinstance(value, str) else json.dumps(value)
            return [f"--{key}={text}"]
        if many:
            items = _as_list(value)
        else:
            if isinstance(value, (list, dict)):
                items = [json.dumps(value)]
            else:
                items = [value]
        texts = []
        for item in items:
            text = ("true" if item else "false") if isinstance(item, bool) else str(item)
            self._check(key, action, item, text, source, origin)
            texts.append(text)
        # `--key=value`: a value that starts with dashes stays a value
        return [f"--{key}={texts[0]}"] if not many else [f"--{key}", *texts]

    def _check(self, key: str, action: argparse.Action, raw: Any, text: str, source: str, origin: str) -> None:
        """Convert ``text`` as the field's parser will, so that a bad value fails here with a message naming the key."""
        convert = action.type
        if convert is int:
            action.type = convert = _integer
        if isinstance(raw, bool) and convert in (int, _integer, float):
            raise RecipeError(f"{source}: {origin} `{key}` must be {_describe(convert, None)}, got {raw!r} (bool)")
        try:
            value = convert(text) if convert is not None else text
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise RecipeError(
                f"{source}: {origin} `{key}` must be {_describe(convert, action.choices)}, got {raw!r} "
                f"({type(raw).__name__})"
            ) from None
        if action.choices is not None and value not in action.choices:
            raise RecipeError(
                f"{source}: {origin} `{key}` must be {_describe(convert, action.choices)}, got {raw!r} "
                f"({type(raw).__name__})"
            )

    def _machine_defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        """TRL's configs default to ``bf16=True``, which transformers refuses on a machine without a bf16 accelerator.

        A recipe that does not mention ``bf16`` gets it where the hardware has it, so the same recipe runs on a GPU
        (in bf16) and on a CPU test machine (in fp32). A recipe that asks for ``bf16: true`` explicitly still gets
        transformers' error on a CPU.
        """
        from transformers import TrainingArguments

        if "bf16" in data or not any(issubclass(t, TrainingArguments) for t in self.dataclass_types):
            return {}
        import torch

        return {} if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else {"bf16": False}


def _as_list(value: Any) -> list[Any]:
    """A list from YAML (``[a, b]``), a command line (``a,b`` or ``[a, b]``) or a single value."""
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.startswith("[") else [v.strip() for v in value.split(",")]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def required(value: Any, key: str, source: str, what: str = "") -> Any:
    """``value``, or a one-line error naming the key when the recipe left it unset."""
    if value is None or value == "":
        raise RecipeError(f"{source}: `{key}` is required" + (f" ({what})" if what else ""))
    return value


def _copy_field(field: dataclasses.Field, annotation: Any, metadata: Any) -> dataclasses.Field:
    """A copy of a dataclass field with another type or metadata, for the argument parser only."""
    copy = dataclasses.field(default=field.default, default_factory=field.default_factory, metadata=metadata)
    copy.name, copy.type = field.name, annotation
    return copy


def _retyped(field: dataclasses.Field) -> dataclasses.Field:
    """A copy of ``field`` declared as an optional string (its values are read with :func:`_yaml_value`)."""
    return _copy_field(field, str | None, field.metadata)


def _field_types(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an unresolvable forward reference somewhere in a third-party dataclass
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def _suggest(key: str, valid: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=5, cutoff=0.6)
    if not close:
        return ""
    # Among similar spellings prefer the same family of settings: `lora_rank` means `lora_r`, not `local_rank`.
    family = [c for c in close if c.split("_")[0] == key.split("_")[0]]
    return f"; did you mean `{(family or close)[0]}`?"


def _version_text() -> str:
    return f"instructgpt {__version__}"


def parse_stage_args(
    argv: list[str] | None,
    stage: str,
    dataclass_types: Sequence[type],
    *,
    prog: str | None = None,
    description: str | None = None,
) -> tuple[list[Any], Recipe]:
    """Parse ``RECIPE.yaml [--key value ...]`` for one stage into its dataclasses: ``(instances, recipe)``."""
    args = RecipeParser(stage, dataclass_types, prog=prog, description=description).parse(argv)
    return list(args.parts), args.recipe
