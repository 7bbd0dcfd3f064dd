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
RUN_STARTED = ".instructgpt_started.json"  # which stage started the run in this directory (see started_by)
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
    """What an interrupted atomic write leaves: ``.<name>.<random>.tmp`` files and ``.checkpoint-<step>.tmp`` folders."""
    for leftover in output_dir.glob(".*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def recover_final_save(output_dir: str | Path, stage: str, recipe: dict[str, Any], if_exists: str) -> dict | None:
    """Finish a run of ``stage`` that saved its final model but was stopped before writing its marker.

    Each stage saves its model's weights as the last file before the marker, so sound, finite weights in a
    directory the stage started mean the run was complete: it is marked finished (the metrics say it was
    recovered) instead of being refused forever. Returns the marker's metrics, or None when there is nothing to
    recover (weights missing, cut off or not finite: the run then resumes from its last checkpoint).
    """
    from instructgpt.infra.guards import check_weights
    from instructgpt.infra.processes import process_state

    output_dir = Path(output_dir)
    if if_exists != "resume" or is_complete(output_dir) or not started_by(output_dir, stage):
        return None
    if not any((output_dir / name).is_file() for name in _WEIGHT_FILES):
        return None
    try:
        from transformers import AutoConfig, AutoTokenizer

        check_weights(output_dir)
        AutoConfig.from_pretrained(output_dir)
        AutoTokenizer.from_pretrained(output_dir)
    except Exception as err:  # a file cut off mid-write (safetensors' own error), NaN weights, no tokenizer
        logger.warning(f"{output_dir}: its final weights are not sound ({err}); resuming from the last checkpoint")
        return None
    metrics = {"recovered_after_interruption": True}
    state = process_state()
    if state.is_main_process:
        mark_complete(output_dir, stage, recipe, metrics)
        logger.info(f"{output_dir}: the final model was saved before an interruption; verified and marked finished")
    state.wait_for_everyone()
    return metrics


def prepare_output_dir(
    output_dir: str | Path, if_exists: IfOutputExists, source: str, stage: str | None = None
) -> Path | None:
    """Decide what to do with an existing ``output_dir``; return a checkpoint to resume from, or None.

    - ``resume`` (default): continue an interrupted run from its last checkpoint; refuse a finished one.
    - ``refuse``: refuse any directory that already has files in it.
    - ``overwrite``: move the old directory aside to ``<output_dir>.old-<time>`` (nothing is deleted) and start fresh.

    With several processes, the main process acts first and the others then see the same state. ``stage`` lets a
    run resume its own interrupted output (see :func:`mark_started`) where a model from another tool is refused.
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
        if is_complete(output_dir) or (holds_trained_model(output_dir) and not started_by(output_dir, stage)):
            raise OutputDirError(
                f"{source}: output_dir {output_dir} already holds a trained model; it was not touched. Choose another "
                "output_dir, or set `if_output_exists: overwrite` to move the old run aside and train again"
            )
        checkpoint = last_checkpoint(output_dir)
        if state.is_main_process:
            remove_temporary_files(output_dir)
            if checkpoint is not None:
                logger.info(f"resuming the interrupted run in {output_dir} from {checkpoint.name}")
        return checkpoint


def mark_started(output_dir: str | Path, stage: str) -> None:
    """Record, as work begins (after every input was read and checked), that ``stage`` writes ``output_dir``: a later
    run can then tell its own interrupted output from a model some other tool saved there (:func:`started_by`)."""
    from instructgpt.infra.processes import process_state

    if process_state().is_main_process and not (Path(output_dir) / RUN_STARTED).is_file():
        atomic_write_json(Path(output_dir) / RUN_STARTED,
                          {"stage": stage, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def mark_complete(
    output_dir: str | Path, stage: str, recipe: dict[str, Any], metrics: dict[str, Any], *, weights: bool = False
) -> None:
    """Write the run marker last, so that its presence means every other file of the run is in place and sound.

    ``weights``: the directory holds a model, whose saved tensors must all be finite first.
    """
    from instructgpt.infra.guards import check_weights, fault_point

    if weights:
        check_weights(output_dir)
    fault_point("before_marker")
    atomic_write_json(
        Path(output_dir) / RUN_MARKER,
        {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "recipe": recipe, "metrics": metrics},
    )


def finish_trainer_output(trainer: Any, training_args: Any, stage: str, recipe: dict[str, Any],
                          metrics: dict[str, Any], run: Any | None, push: bool, what: str) -> None:
    """The end of a Trainer stage, once its weights are saved (the last file but the marker), in an order that
    keeps a finished output sound:

    1. the main process marks the run finished (``mark_complete`` checks the weights first) and copies the numeric
       metrics into the W&B run's summary;
    2. every process waits for it, so none exits while the marker is being written;
    3. only then is the output pushed to the Hub (``push``: the ``push_to_hub`` that ``take_push_to_hub`` took from
       the Trainer, so that the Trainer never pushed a half-written directory);
    4. W&B is closed, with the ``wandb sync`` command for offline runs.
    """
    from instructgpt.infra.hub import push_output
    from instructgpt.infra.tracking import finish_wandb

    output_dir = training_args.output_dir
    if trainer.is_world_process_zero():
        if run is not None:
            run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        mark_complete(output_dir, stage, recipe, metrics, weights=True)
        logger.info(f"{what} saved to {output_dir}")
    trainer.accelerator.wait_for_everyone()
    if push and trainer.is_world_process_zero():
        push_output(output_dir, training_args.hub_model_id, private=training_args.hub_private_repo,
                    token=training_args.hub_token)
    finish_wandb(run)


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
            raise OutputDirError(f"{path}: line {number} is not valid JSON; the file was edited, not interrupted") from None
    if tail.strip():
        logger.warning(f"{path}: dropping its last line, cut off by an interruption")
    return rows, len(data) - len(tail)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an appended JSONL file (see :func:`read_appended_jsonl`)."""
    return read_appended_jsonl(path)[0]


def node_local_checkpoint_callback() -> Any:
    """A Trainer callback that completes checkpoints on nodes without a shared filesystem.

    With ``save_on_each_node: true`` transformers' Trainer writes the optimizer, scheduler, RNG and trainer state on
    every node, but since transformers 5 ``save_pretrained`` writes weights only on global rank 0
    (``PreTrainedModel.should_save_on_this_rank``), so the other nodes' checkpoints have no model and cannot be
    resumed from. The first process of every other node adds the weights and config (safetensors, shared tensors
    such as GPT-2's tied embeddings written once) to its own checkpoint.
    """
    from transformers import TrainerCallback

    class NodeLocalWeights(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if not args.save_on_each_node or not state.is_local_process_zero or state.is_world_process_zero:
                return
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if model is None or not checkpoint.is_dir() or any((checkpoint / f).is_file() for f in _WEIGHT_FILES):
                return
            from safetensors.torch import save_model

            if hasattr(model, "peft_config"):  # an adapter: peft's own save, which every process may call
                model.save_pretrained(checkpoint)
                return
            model.config.save_pretrained(checkpoint)
            save_model(model, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})

    return NodeLocalWeights()
