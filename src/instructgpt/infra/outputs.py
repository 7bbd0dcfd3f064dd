"""Output directories: never overwrite a trained model silently, resume interrupted runs, finish in a sound order.

The decisions about a stage's output directory: what to do with one that exists (:func:`prepare_output_dir`),
recording that a stage started and finished it (:func:`mark_started`, :func:`mark_complete`), recovering a run
stopped between its final save and its marker, and the steps that end every training stage
(:func:`finish_output`). The files themselves (atomic writes, the marker's name, checkpoints on disk, JSONL logs)
are :mod:`instructgpt.infra.files`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from instructgpt.infra.files import (
    RUN_MARKER,
    RUN_STARTED,
    WEIGHT_FILES,
    OutputDirError,
    atomic_write_json,
    holds_trained_model,
    is_complete,
    last_checkpoint,
    remove_temporary_files,
    started_by,
)
from instructgpt.infra.guards import check_weights, fault_point
from instructgpt.infra.hub import PushTarget, push_output
from instructgpt.infra.log import get_logger
from instructgpt.infra.processes import process_state

logger = get_logger(__name__)

IfOutputExists = Literal["resume", "refuse", "overwrite"]


def recover_final_save(output_dir: str | Path, stage: str, recipe: dict[str, Any], if_exists: str) -> dict | None:
    """Finish a run of ``stage`` that saved its final model but was stopped before writing its marker.

    Each stage saves its model's weights as the last file before the marker, so sound, finite weights in a
    directory the stage started mean the run was complete: it is marked finished (the metrics say it was
    recovered) instead of being refused forever. Returns the marker's metrics, or None when there is nothing to
    recover (weights missing, cut off or not finite: the run then resumes from its last checkpoint).
    """
    output_dir = Path(output_dir)
    if if_exists != "resume" or is_complete(output_dir) or not started_by(output_dir, stage):
        return None
    if not any((output_dir / name).is_file() for name in WEIGHT_FILES):
        return None
    try:
        from transformers import AutoConfig, AutoTokenizer  # heavy: imported only when there is a save to check

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
    if process_state().is_main_process and not (Path(output_dir) / RUN_STARTED).is_file():
        atomic_write_json(
            Path(output_dir) / RUN_STARTED, {"stage": stage, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        )


def mark_complete(
    output_dir: str | Path, stage: str, recipe: dict[str, Any], metrics: dict[str, Any], *, weights: bool = False
) -> None:
    """Write the run marker last, so that its presence means every other file of the run is in place and sound.

    ``weights``: the directory holds a model, whose saved tensors must all be finite first.
    """
    if weights:
        check_weights(output_dir)
    fault_point("before_marker")
    atomic_write_json(
        Path(output_dir) / RUN_MARKER,
        {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "recipe": recipe, "metrics": metrics},
    )


def finish_output(
    output_dir: str | Path,
    stage: str,
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    *,
    what: str,
    is_main_process: bool,
    wait_for_everyone: Callable[[], Any],
    push: PushTarget | None,
    weights: bool = True,
) -> None:
    """The end of every training stage, once its weights are saved (the last file but the marker), in an order that
    keeps a finished output sound. It needs no transformers ``Trainer``: PPO's own loop ends with it too.

    1. the main process marks the run finished (:func:`mark_complete` checks the weights first) and says
       ``<what> saved to <output_dir>``;
    2. every process waits for it (``wait_for_everyone``), so none exits while the marker is being written;
    3. only then does the main process push the output to the Hub (``push``: what
       :func:`~instructgpt.infra.hub.take_push_to_hub` took from the training arguments, so that no Trainer pushed a
       half-written directory; None: no push).

    ``weights``: the directory holds a model's weights, checked finite first (a reward-model ensemble's are in its
    members' folders, each checked by its own run).
    """
    if is_main_process:
        mark_complete(output_dir, stage, recipe, metrics, weights=weights)
        logger.info(f"{what} saved to {output_dir}")
    wait_for_everyone()
    if push is not None and is_main_process:
        push_output(output_dir, push.repo_id, private=push.private, token=push.token)


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
            if model is None or not checkpoint.is_dir() or any((checkpoint / f).is_file() for f in WEIGHT_FILES):
                return
            from safetensors.torch import save_model

            if hasattr(model, "peft_config"):  # an adapter: peft's own save, which every process may call
                model.save_pretrained(checkpoint)
                return
            model.config.save_pretrained(checkpoint)
            save_model(model, str(checkpoint / "model.safetensors"), metadata={"format": "pt"})

    return NodeLocalWeights()
