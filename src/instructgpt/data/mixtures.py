"""Dataset mixtures: several datasets read as one, in TRL's form or alignment-handbook's.

A recipe names one dataset with ``dataset_name``, or a mixture in either of the two forms the ecosystem's recipes
use (both are read into one :class:`Mixture`):

TRL's (``trl sft --config``, ``DatasetMixtureConfig``)::

    datasets:
      - path: data/tiny/sft_train.jsonl       # a local file, a Hub id, or a builder (`json`) with `data_files`
        fraction: 0.75                         # optional, for all entries or none
      - path: HuggingFaceH4/no_robots
        split: train
        columns: [messages]
    test_split_size: 0.1                       # optional: hold out this share (or this many rows) as `test`

alignment-handbook's (``dataset_mixture``)::

    dataset_mixture:
      datasets:
        - {id: HuggingFaceH4/ultrachat_200k, config: default, split: train_sft, columns: [messages], weight: 0.5}
      test_split_size: 1000
      seed: 0

What each form means, as its library does it:

- TRL: ``fraction`` is an entry's share of the final mixture. The fractions are normalized to sum to 1 and the
  mixture is as large as it can be without repeating a row: with shares ``w_i`` and sizes ``n_i`` the mixture has
  ``N = min_i n_i / w_i`` rows and keeps the first ``round(w_i * N)`` rows of entry ``i``. Without fractions every
  row of every entry is kept, in order.
- The handbook: ``weight`` is the share of an entry's own rows to keep (at most 1): the entry is shuffled with
  ``seed`` and its first ``int(n_i * weight)`` rows are kept; the concatenation is shuffled again with ``seed``.

Then, in both forms, ``test_split_size`` (a share below 1, or a number of rows) holds out rows at random as the
``test`` part and the rest is ``train``: the stages read them as ``dataset_train_split: train`` and
``dataset_test_split: test``. The held-out draw is seeded (with ``seed``, 0 in TRL's form, where TRL's own draw is
not seeded) so a resumed run holds out the same rows.

Rows are mixed after each entry has been read and checked by the stage's own loader (:func:`mixable`), so entries of
different row formats (``messages`` beside ``prompt``/``completion``) meet in the stage's one format, and a bad row
is named by its entry, its file and its line. The row selection itself is done with ``datasets``' own ``select``,
``shuffle``, ``concatenate_datasets`` and ``train_test_split`` on an index of (entry, row) pairs, so it is the
libraries' selection exactly; ``tests/unit/test_mixtures.py`` checks it against ``trl.get_dataset``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError

TRAIN, TEST = "train", "test"  # the parts of a mixture, as the stages' `dataset_train_split`/`dataset_test_split`


class MixtureError(InstructGPTError, ValueError):
    """A mixture a recipe cannot mean; the message names the key and the entry (counted from 1)."""


@dataclass(frozen=True)
class MixtureMember:
    """One entry of a mixture: where its rows are (``datasets.load_dataset``'s arguments) and how many to take."""

    key: str  # how messages name it: "datasets #2"
    path: str  # a local file, a local dataset folder, a Hub id, or a builder name (`json`) with `data_files`
    name: str | None = None  # the Hub configuration (TRL's `name`, the handbook's `config`)
    split: str = TRAIN
    data_dir: str | None = None
    data_files: str | list[str] | dict[str, str] | None = None
    columns: tuple[str, ...] | None = None
    fraction: float | None = None  # TRL: share of the final mixture
    weight: float | None = None  # the handbook: share of this entry's own rows

    @property
    def where(self) -> str:
        """The local file its rows come from, when there is exactly one (rows are then named by its lines)."""
        if Path(self.path).expanduser().is_file():
            return self.path
        files = [self.data_files] if isinstance(self.data_files, str) else self.data_files
        if isinstance(files, list) and len(files) == 1 and Path(files[0]).expanduser().is_file():
            return files[0]
        return self.path

    def __str__(self) -> str:
        where = self.where
        if where != self.path:
            return f"{self.path} {where}"
        return where if self.split == TRAIN else f"{where}, split {self.split}"


@dataclass(frozen=True)
class Mixture:
    """Several datasets read as one (TRL's ``datasets:`` or the handbook's ``dataset_mixture:``)."""

    key: str  # the recipe key it came from
    members: tuple[MixtureMember, ...]
    style: str  # "trl" (fractions of the mixture) or "handbook" (weights of each entry, shuffled)
    test_split_size: float | int | None = None
    seed: int = 0

    def __str__(self) -> str:
        return f"the mixture of `{self.key}` ({len(self.members)} entries)"

    @property
    def parts(self) -> tuple[str, ...]:
        return (TRAIN, TEST) if self.test_split_size is not None else (TRAIN,)

    def plan(self, sizes: Sequence[int]) -> dict[str, list[tuple[int, int]]]:
        """The rows of each part, as ``(entry, row)`` pairs (both from 0), given each entry's number of rows."""
        import datasets

        index = [
            datasets.Dataset.from_dict({"entry": [entry] * size, "row": list(range(size))})
            for entry, size in enumerate(sizes)
        ]
        if self.style == "trl" and self.members[0].fraction is not None:
            fractions = [m.fraction for m in self.members]
            shares = [f / sum(fractions) for f in fractions]
            empty = [m.key for m, share, size in zip(self.members, shares, sizes) if share > 0 and size == 0]
            if empty:
                raise MixtureError(f"{empty[0]} holds no rows, so no mixture can give it its fraction")
            total = min(size / share for size, share in zip(sizes, shares) if share > 0)
            index = [part.select(range(round(share * total))) for part, share in zip(index, shares)]
        elif self.style == "handbook":
            index = [
                part.shuffle(seed=self.seed).select(range(int(len(part) * member.weight)))
                for part, member in zip(index, self.members)
            ]
        combined = datasets.concatenate_datasets(index)
        if self.style == "handbook":
            combined = combined.shuffle(seed=self.seed)
        parts = {TRAIN: combined}
        if self.test_split_size is not None:
            try:
                split = combined.train_test_split(test_size=self.test_split_size, seed=self.seed)
            except ValueError as err:
                raise MixtureError(
                    f"`test_split_size` {self.test_split_size} cannot split the {len(combined)} rows of {self}: {err}"
                ) from None
            parts = {TRAIN: split[TRAIN], TEST: split[TEST]}
        return {name: list(zip(part["entry"], part["row"])) for name, part in parts.items()}

    def check_part(self, part: str) -> None:
        """Refuse a split the mixture does not have: it has ``train``, and ``test`` with ``test_split_size``."""
        if part not in self.parts:
            raise MixtureError(
                f"{self} has no part {part!r}: its parts are {' and '.join(self.parts)}"
                + ("" if self.test_split_size is not None else " (set `test_split_size` to hold out a `test` part)")
            )

    def mix(self, loaded: Sequence[Any], part: str, limit: int | None = None) -> Any:
        """The rows of ``part`` from each entry's loaded rows (a ``datasets.Dataset`` or a list, the same for all)."""
        self.check_part(part)
        chosen = self.plan([len(rows) for rows in loaded])[part]
        if limit is not None:
            chosen = chosen[:limit]
        if not chosen:
            raise MixtureError(f"{self} holds no rows in its `{part}` part")
        if isinstance(loaded[0], list):
            return [loaded[entry][row] for entry, row in chosen]
        import datasets

        starts = [sum(len(rows) for rows in loaded[:i]) for i in range(len(loaded))]
        try:
            combined = datasets.concatenate_datasets(list(loaded))
        except ValueError as err:
            raise MixtureError(f"{self}: its entries hold rows of different shapes after reading: {err}") from None
        return combined.select([starts[entry] + row for entry, row in chosen])


def mixable(load_one: Callable[..., Any]) -> Callable[..., Any]:
    """Let a loader of one dataset (``load_one(name, *, key, source, config, split, limit, ...)``) take a
    :class:`Mixture` as its ``name``: each entry is read and checked by ``load_one`` itself (so its rows are named by
    the entry's file and line), then the rows are mixed (:meth:`Mixture.mix`) and ``limit`` applies to the mixture."""

    @functools.wraps(load_one)
    def load(name: Any, *, split: str = TRAIN, limit: int | None = None, **kwargs: Any) -> Any:
        if not isinstance(name, Mixture):
            return load_one(name, split=split, limit=limit, **kwargs)
        name.check_part(split)  # before any entry is read
        others = {k: v for k, v in kwargs.items() if k not in ("key", "config")}
        loaded = [
            load_one(member, key=member.key, config=member.name, split=member.split, limit=None, **others)
            for member in name.members
        ]
        return name.mix(loaded, split, limit)

    return load


# --------------------------------------------------------------------------------------------------------------
# Reading the two recipe forms
# --------------------------------------------------------------------------------------------------------------

_TRL_ENTRY = ("path", "name", "data_dir", "data_files", "split", "columns", "fraction")
_HANDBOOK_ENTRY = ("id", "config", "split", "columns", "weight")
_HANDBOOK_MIXTURE = ("datasets", "seed", "test_split_size")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MixtureError(f"{what} must be a number, got {value!r}")
    return value


def _test_size(value: Any, what: str) -> float | int | None:
    """A share below 1, or a whole number of rows (YAML and the command line may write it as ``1000.0``)."""
    if value is None:
        return None
    value = _number(value, what)
    if value >= 1:
        if float(value) != int(value):
            raise MixtureError(f"{what} must be a share below 1 or a whole number of rows, got {value}")
        return int(value)
    if value <= 0:
        raise MixtureError(f"{what} must be above 0, got {value}")
    return float(value)


def _entry(
    raw: Any, key: str, allowed: tuple[str, ...], path_key: str, form: str
) -> tuple[dict[str, Any], tuple[str, ...] | None]:
    """One entry's mapping, checked for unknown keys and its dataset; returns it and its columns."""
    if not isinstance(raw, dict):
        raise MixtureError(f"{key} must be a mapping with `{path_key}` ({form}), got {raw!r:.60}")
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise MixtureError(f"{key}: unknown key `{unknown[0]}` ({form} takes {', '.join(allowed)})")
    if not isinstance(raw.get(path_key), str) or not raw[path_key].strip():
        raise MixtureError(f"{key} needs `{path_key}`: a Hub dataset id or a local file")
    columns = raw.get("columns")
    if columns is not None:
        if isinstance(columns, str):
            columns = [columns]
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise MixtureError(f"{key}: `columns` must be a list of column names, got {columns!r}")
        columns = tuple(columns)
    for text_key in ("split", "name", "config", "data_dir"):
        if raw.get(text_key) is not None and not isinstance(raw[text_key], str):
            raise MixtureError(f"{key}: `{text_key}` must be a string, got {raw[text_key]!r}")
    return raw, columns


def read_trl_mixture(entries: Any, test_split_size: Any = None, key: str = "datasets") -> Mixture:
    """TRL's ``datasets:`` list (and its ``test_split_size``) as a :class:`Mixture`."""
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"`{key}` must be a list of datasets, each a mapping with `path` (TRL's form)")
    members = []
    for number, raw in enumerate(entries, start=1):
        name = f"`{key}` #{number}"
        raw, columns = _entry(raw, name, _TRL_ENTRY, "path", "TRL's form")
        fraction = raw.get("fraction")
        if fraction is not None and _number(fraction, f"{name}: `fraction`") < 0:
            raise MixtureError(f"{name}: `fraction` must be at least 0, got {fraction}")
        members.append(
            MixtureMember(
                key=f"{key} #{number}",
                path=raw["path"],
                name=raw.get("name"),
                split=raw.get("split") or TRAIN,
                data_dir=raw.get("data_dir"),
                data_files=raw.get("data_files"),
                columns=columns,
                fraction=fraction,
            )
        )
    given = [m.fraction is not None for m in members]
    if any(given) and not all(given):
        missing = next(m.key for m in members if m.fraction is None)
        raise MixtureError(f"`{missing}` has no `fraction`: give `fraction` to every entry of `{key}` or to none")
    if all(given) and sum(m.fraction for m in members) <= 0:
        raise MixtureError(f"the fractions of `{key}` add up to 0: give at least one entry a share above 0")
    return Mixture(
        key=key,
        members=tuple(members),
        style="trl",
        test_split_size=_test_size(test_split_size, "`test_split_size`"),
    )


def read_handbook_mixture(value: Any, key: str = "dataset_mixture") -> Mixture:
    """alignment-handbook's ``dataset_mixture:`` mapping as a :class:`Mixture`."""
    if not isinstance(value, dict) or "datasets" not in value:
        raise MixtureError(
            f"`{key}` must be a mapping with `datasets` (a list), and optionally `seed`, `test_split_size`"
        )
    unknown = [k for k in value if k not in _HANDBOOK_MIXTURE]
    if unknown:
        raise MixtureError(f"`{key}`: unknown key `{unknown[0]}` (it takes {', '.join(_HANDBOOK_MIXTURE)})")
    entries = value["datasets"]
    if not isinstance(entries, list) or not entries:
        raise MixtureError(f"`{key}.datasets` must be a list of datasets, each a mapping with `id`")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MixtureError(f"`{key}.seed` must be an integer, got {seed!r}")
    members = []
    for number, raw in enumerate(entries, start=1):
        name = f"`{key}.datasets` #{number}"
        raw, columns = _entry(raw, name, _HANDBOOK_ENTRY, "id", "the handbook's form")
        weight = raw.get("weight", 1.0)
        weight = 1.0 if weight is None else _number(weight, f"{name}: `weight`")
        if not 0 < weight <= 1:
            raise MixtureError(
                f"{name}: `weight` must be above 0 and at most 1 (the share of the dataset's own rows to keep; "
                f"a row is never repeated), got {weight}"
            )
        members.append(
            MixtureMember(
                key=f"{key}.datasets #{number}",
                path=raw["id"],
                name=raw.get("config"),
                split=raw.get("split") or TRAIN,
                columns=columns,
                weight=float(weight),
            )
        )
    return Mixture(
        key=key,
        members=tuple(members),
        style="handbook",
        test_split_size=_test_size(value.get("test_split_size"), f"`{key}.test_split_size`"),
        seed=seed,
    )
