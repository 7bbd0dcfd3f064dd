"""Loading datasets: a local JSONL/JSON/CSV/Parquet file or a Hub dataset, interchangeably.

Column formats are TRL's (https://huggingface.co/docs/trl/dataset_formats): ``prompt``/``completion`` or
``messages`` for SFT, ``prompt``/``chosen``/``rejected`` for preference pairs, ``text`` for language modelling;
plus ours for rankings (``prompt``/``responses`` best first, optional ``scores``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from instructgpt.data.mixtures import MixtureMember
from instructgpt.infra.errors import InstructGPTError

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}  # `datasets`' builders that read files named by `data_files`


class DataError(InstructGPTError):
    """A dataset that cannot feed the stage: missing file, bad row, missing column, empty."""


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for every non-blank line of a JSONL file; a line that is not UTF-8, not JSON or not
    an object is a :class:`DataError` naming the file and the line."""
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {err.object[err.start]:#04x})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {number} must be a JSON object, got {type(row).__name__}")
        yield number, row


def _check_jsonl(path: Path) -> None:
    """Parse every line up front so a broken row is reported by line number, not as a pyarrow trace."""
    for _ in jsonl_rows(path):
        pass


@functools.lru_cache(maxsize=16)
def _jsonl_line_numbers(path: str, modified: float) -> tuple[int, ...]:
    """The line number (from 1) of each row of a JSONL file: blank lines hold no row, so they are skipped."""
    lines = Path(path).read_bytes().decode("utf-8", errors="replace").splitlines()
    return tuple(number for number, line in enumerate(lines, start=1) if line.strip())


def row_place(name_or_path: str | MixtureMember, index: int) -> str:
    """Where row ``index`` (from 0, as a dataset counts) of a dataset a recipe names is, as an editor shows it:
    ``line N`` of a local JSONL or CSV file (CSV rows start after the header line), ``row N`` (from 1) of any
    other file or Hub dataset. Every message about a row says this, so one row gets one number whichever check
    finds it. An entry of a mixture is named by its own file."""
    if isinstance(name_or_path, MixtureMember):
        name_or_path = name_or_path.where
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        numbers = _jsonl_line_numbers(str(path.resolve()), path.stat().st_mtime)
        if index < len(numbers):
            return f"line {numbers[index]}"
    if path.is_file() and path.suffix.lower() == ".csv":
        return f"line {index + 2}"
    return f"row {index + 1}"


def load_data(
    name_or_path: str | MixtureMember,
    *,
    key: str = "dataset_name",
    source: str = "recipe",
    config: str | None = None,
    split: str = "train",
) -> Any:
    """Load one split of a dataset named in a recipe, with errors that name the recipe key and the file.

    A local file is read with the matching ``datasets`` builder and gives its only split whatever ``split`` asks;
    anything else is a Hub id (or a local dataset folder) for ``datasets.load_dataset``. An entry of a mixture
    (:class:`~instructgpt.data.mixtures.MixtureMember`) may also name a builder with ``data_files`` (TRL's
    ``path: json``, ``data_files: rows.jsonl``) and the columns to keep.
    """
    if isinstance(name_or_path, MixtureMember):
        return _load_member(name_or_path, key=key, source=source)
    return _load(name_or_path, key=key, source=source, config=config, split=split)


def _load(
    name_or_path: str,
    *,
    key: str,
    source: str,
    config: str | None,
    split: str,
    data_files: Any = None,
    data_dir: str | None = None,
) -> Any:
    import datasets

    path = Path(name_or_path).expanduser()
    suffix = path.suffix.lower()
    if data_files is None and (suffix in _LOCAL_FORMATS or path.exists()):
        if not path.exists():
            raise DataError(f"{source}: `{key}`: data file {name_or_path} not found")
        if path.is_file():
            return _load_file(path, name_or_path, key=key, source=source)
    for file in _local_files(name_or_path, data_files):
        if not file.is_file():
            raise DataError(f"{source}: `{key}`: data file {file} not found")
        if file.suffix.lower() == ".jsonl":
            _check_jsonl(file)
    try:
        return datasets.load_dataset(name_or_path, config, split=split, data_files=data_files, data_dir=data_dir)
    except ValueError as err:
        if "split" in str(err).lower():
            raise DataError(f"{source}: `{key}`: {name_or_path} has no split {split!r} ({err})") from None
        raise DataError(f"{source}: `{key}`: cannot load {name_or_path}: {err}") from None
    except Exception as err:  # offline, missing repo, ...
        raise DataError(f"{source}: `{key}`: cannot load dataset {name_or_path!r}: {err}") from None


def _load_file(path: Path, name: str, *, key: str, source: str) -> Any:
    """One local JSONL/JSON/CSV/Parquet file, every JSONL line checked first (errors name the line)."""
    import datasets

    if not path.read_bytes().strip():
        raise DataError(f"{source}: `{key}`: {name} is empty: it holds no rows")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        _check_jsonl(path)
    builder = _LOCAL_FORMATS.get(suffix)
    if builder is None:
        raise DataError(f"{source}: `{key}`: {name} is not a .jsonl, .json, .csv or .parquet file")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # pyarrow/datasets errors on inconsistent rows
        reason = str(err).strip() or type(err).__name__
        raise DataError(f"{source}: `{key}`: cannot read {name}: {reason}") from None


def _local_files(builder: str, data_files: Any) -> list[Path]:
    """The files a builder (``json``, ``csv``, ...) is given as ``data_files``, to check before ``datasets`` reads them:
    plain local paths only (a glob or a URL is left to ``datasets``; a Hub dataset's files are paths in its repo)."""
    if builder not in _BUILDERS or data_files is None:
        return []
    values = data_files.values() if isinstance(data_files, dict) else [data_files]
    files = [f for v in values for f in ([v] if isinstance(v, str) else v)]
    return [Path(f).expanduser() for f in files if "*" not in f and "://" not in f]


def _load_member(member: MixtureMember, *, key: str, source: str) -> Any:
    """One entry of a mixture: its dataset, then only its ``columns`` (each must exist)."""
    dataset = _load(
        member.path,
        key=key,
        source=source,
        config=member.name,
        split=member.split,
        data_files=member.data_files,
        data_dir=member.data_dir,
    )
    if member.columns is not None:
        missing = [c for c in member.columns if c not in dataset.column_names]
        if missing:
            raise DataError(
                f"{source}: `{key}` ({member}): no column `{missing[0]}` to select; "
                f"it has {sorted(dataset.column_names)}"
            )
        dataset = dataset.select_columns(list(member.columns))
    return dataset


def require_columns(
    dataset: Any,
    formats: Sequence[Sequence[str]],
    *,
    name: str,
    source: str,
) -> tuple[str, ...]:
    """Check that ``dataset`` has the columns of one of ``formats`` (tried in order) and return that format."""
    columns = set(dataset.column_names)
    for fmt in formats:
        if set(fmt) <= columns:
            return tuple(fmt)
    wanted = " or ".join("/".join(fmt) for fmt in formats)
    raise DataError(f"{source}: {name} needs columns {wanted}; it has {sorted(columns)}")


def require_rows(dataset: Any, *, name: str, source: str) -> None:
    if len(dataset) == 0:
        raise DataError(f"{source}: {name} is empty")


def find_empty(values: Sequence[Any]) -> int | None:
    """Index of the first empty or whitespace-only string (or empty message list), if any."""
    for index, value in enumerate(values):
        if value is None:
            return index
        if isinstance(value, str) and not value.strip():
            return index
        if isinstance(value, list) and not value:
            return index
    return None
