"""Output directories: never overwrite a trained model silently, resume interrupted runs, write atomically.

A stage that finishes writes ``instructgpt_run.json`` (stage, recipe, final metrics) into its output directory
as its last act, atomically. Its presence is what "this stage is done" means to the pipeline and to the guard
below; a directory with ``checkpoint-*`` folders but no marker is an interrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from instructgpt.infra.log import get_logger
from instructgpt.infra.errors import InstructGPTError

logger = get_logger(__name__)

RUN_MARKER = "instructgpt_run.json"
PPO_METRICS_FILE = "metrics.jsonl"  # one JSON object per logged PPO update; evaluation plots it
IfOutputExists = Literal["resume", "refuse", "overwrite"]
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "model.safetensors.index.json")


class OutputDirError(InstructGPTError):
    """The output directory holds something this run must not destroy."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers see the old or the new file, never half."""
    path = Path(path)
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


def holds_trained_model(output_dir: str | Path) -> bool:
    """A finished run of ours, or any saved model (weights at the top level), from whatever tool."""
    output_dir = Path(output_dir)
    return is_complete(output_dir) or any((output_dir / name).is_file() for name in _WEIGHT_FILES)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step, as transformers' Trainer names them."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = []
    for child in output_dir.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and child.is_dir() and any(child.iterdir()):
            steps.append((int(match.group(1)), child))
    return max(steps)[1] if steps else None


def prepare_output_dir(output_dir: str | Path, if_exists: IfOutputExists, source: str) -> Path | None:
    """Decide what to do with an existing ``output_dir``; return a checkpoint to resume from, or None.

    - ``resume`` (default): continue an interrupted run from its last checkpoint; refuse a finished one.
    - ``refuse``: refuse any directory that already has files in it.
    - ``overwrite``: move the old directory aside to ``<output_dir>.old-<time>`` (nothing is deleted) and start fresh.

    With several processes, the main process acts first and the others then see the same state.
    """
    from instructgpt.infra.processes import process_state

    output_dir = Path(output_dir)
    state = process_state()
    with state.main_process_first():
        if not output_dir.exists() or not any(output_dir.iterdir()):
            return None
        if if_exists == "overwrite":
            if state.is_main_process:
                backup = output_dir.with_name(f"{output_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                shutil.move(str(output_dir), str(backup))
                logger.info(f"{output_dir} already existed: moved it to {backup} (if_output_exists: overwrite)")
            return None
        if if_exists == "refuse":
            raise OutputDirError(
                f"{source}: output_dir {output_dir} is not empty and the recipe says `if_output_exists: refuse`; "
                "choose another output_dir, or set `if_output_exists: resume` or `overwrite` (the old run is kept "
                "as a backup)"
            )
        if holds_trained_model(output_dir):
            raise OutputDirError(
                f"{source}: output_dir {output_dir} already holds a trained model; it was not touched. Choose another "
                "output_dir, or set `if_output_exists: overwrite` to move the old run aside and train again"
            )
        checkpoint = last_checkpoint(output_dir)
        if checkpoint is not None and state.is_main_process:
            logger.info(f"resuming the interrupted run in {output_dir} from {checkpoint.name}")
        return checkpoint


def mark_complete(output_dir: str | Path, stage: str, recipe: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write the run marker last, so that its presence means every other file of the run is in place."""
    atomic_write_json(
        Path(output_dir) / RUN_MARKER,
        {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "recipe": recipe, "metrics": metrics},
    )
