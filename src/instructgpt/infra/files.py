"""Files a run writes and reads back: atomic writes, run markers, checkpoints on disk, append-only JSONL logs.

These are the leaf helpers every other module builds on, so this module imports nothing of the project but the
other leaves (the error type, the translation of library errors and the logger). What to *do* with an output
directory (resume it, refuse it, mark it finished) is :mod:`instructgpt.infra.outputs`.

A stage that finishes writes ``instructgpt_run.json`` (stage, recipe, final metrics) into its output directory
as its last act, atomically. Its presence is what "this stage is done" means; a directory with ``checkpoint-*``
folders but no marker is an interrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.library_errors import translating
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)

RUN_MARKER = "instructgpt_run.json"
RUN_STARTED = ".instructgpt_started.json"  # which stage started the run in this directory (see started_by)
PPO_METRICS_FILE = "metrics.jsonl"  # one JSON object per logged PPO update; evaluation plots it
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "model.safetensors.index.json")


class OutputDirError(InstructGPTError):
    """The output directory holds something this run must not destroy."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers see the old or the new file, never half."""
    path = Path(path)
    with translating(str(path)):  # a full disk or a path that cannot be written: one line naming the file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def is_complete(output_dir: str | Path) -> bool:
    """True when a stage finished in ``output_dir`` (its run marker exists)."""
    return (Path(output_dir) / RUN_MARKER).is_file()


def read_marker(output_dir: str | Path) -> dict[str, Any]:
    """The run marker of a finished ``output_dir``: its stage, finish time, recipe and metrics."""
    return json.loads((Path(output_dir) / RUN_MARKER).read_text(encoding="utf-8"))


def holds_trained_model(output_dir: str | Path) -> bool:
    """A finished run of ours, or any saved model (weights at the top level), from whatever tool."""
    output_dir = Path(output_dir)
    return is_complete(output_dir) or any((output_dir / name).is_file() for name in WEIGHT_FILES)


def is_complete_checkpoint(checkpoint: Path) -> bool:
    """transformers' ``Trainer`` and the PPO trainer both write ``trainer_state.json`` as a checkpoint's last file: a
    checkpoint without a readable one was cut off while it was being written."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step (as transformers' Trainer names them); newer
    ones that an interruption left half-written are skipped, with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = []
    for child in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and child.is_dir():
            steps.append((int(match.group(1)), child))
    for _, checkpoint in sorted(steps, reverse=True):
        if is_complete_checkpoint(checkpoint):
            return checkpoint
        logger.warning(f"{checkpoint} is incomplete (cut off while being written): skipped")
    return None


def started_by(output_dir: str | Path, stage: str | None) -> bool:
    """Whether ``output_dir`` holds an unfinished run that this project's ``stage`` started (not a foreign model)."""
    try:
        started = json.loads((Path(output_dir) / RUN_STARTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stage is not None and started.get("stage") == stage


def remove_temporary_files(output_dir: Path) -> None:
    """What an interrupted atomic write leaves: ``.<name>.<random>.tmp`` files and ``.checkpoint-<step>.tmp``
    folders."""
    for leftover in output_dir.glob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------------
# Append-only JSONL logs (collection parts, PPO metrics and completions)
# --------------------------------------------------------------------------------------------------------------


def read_appended_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file the project appends to, and the byte length of its intact prefix.

    Every row is written as one line ending in a newline, so a last line without one was cut off by an
    interruption: it is dropped, with a warning. A broken line anywhere else means the file was edited, which is an
    error naming the line.
    """
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    rows = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise OutputDirError(
                f"{path}: line {number} is not valid JSON; the file was edited, not interrupted"
            ) from None
    if tail.strip():
        logger.warning(f"{path}: dropping its last line, cut off by an interruption")
    return rows, len(data) - len(tail)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an appended JSONL file (see :func:`read_appended_jsonl`)."""
    return read_appended_jsonl(path)[0]


def open_appended_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an appended JSONL file about to be appended to again (a resumed run), after cutting off a last
    line an interruption left partial, so that the next row starts on a line of its own; [] when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    rows, good = read_appended_jsonl(path)
    if good < path.stat().st_size:
        with translating(str(path)), path.open("r+b") as handle:
            handle.truncate(good)
    return rows


def append_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` as whole lines, flushed to disk before this returns.

    A write that fails (the disk full) is cut back to where the file ended, so no partial line stays behind for the
    next row to be glued to, and it ends in one line naming the file
    (:func:`~instructgpt.infra.library_errors.translating`).
    """
    data = memoryview("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))
    # unbuffered: a buffered file would flush its unwritten rest (and fail again) before it could be cut back
    with translating(str(path)), open(path, "ab", buffering=0) as handle:
        end = handle.seek(0, os.SEEK_END)
        try:
            while data:  # a write may take only part of it (a disk filling up); the next one then fails
                data = data[handle.write(data) :]
            os.fsync(handle.fileno())
        except OSError:
            os.ftruncate(handle.fileno(), end)
            raise
