"""PPO's checkpoints: ``checkpoint-<step>/`` folders written atomically, rotated, and resumed from.

A checkpoint holds everything an interrupted run needs to continue as if it had not stopped:

- ``state/``: accelerate's state (the policy and value weights, the optimizer, every process's RNG states);
- ``trainer_state.json``: the trainer's own state as JSON, never a pickle (progress, KL controller, learning-rate
  schedule, position in the ptx data; see :func:`resume_state`), with the metrics of its update;
- ``policy/``: the policy as a model directory that ``AutoModelForCausalLM`` loads, for evaluations over training.

``save_total_limit`` removes old resume states; ``save_policy_checkpoints`` keeps their ``policy/`` folders.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import atomic_write_json
from instructgpt.infra.guards import fault_point
from instructgpt.infra.library_errors import translating
from instructgpt.infra.tracking import StageTracker
from instructgpt.modeling.lora import merge_adapter

TRAINER_STATE = "trainer_state.json"


@dataclass
class Progress:
    """Where the run is: updates done and episodes sampled (all processes). Saved in every checkpoint."""

    global_step: int = 0
    episode: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step, "episode": self.episode}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step, self.episode = int(state["global_step"]), int(state["episode"])


def resume_state(progress: Progress, kl_controller: Any, scheduler: Any, ptx: Any) -> dict[str, Any]:
    """A run's own resume state, as JSON (no pickle): progress, KL controller, schedule, ptx position."""
    return {
        **progress.state_dict(),
        "kl_controller": kl_controller.state_dict(),
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "ptx": ptx.state_dict() if ptx else None,
    }


def restore_resume_state(
    state: dict[str, Any],
    checkpoint: Path,
    source: str,
    *,
    progress: Progress,
    kl_controller: Any,
    scheduler: Any,
    optimizer: Any,
    ptx: Any,
) -> None:
    """Load what :func:`resume_state` wrote back into the run's parts, or a one-line error naming the file."""
    try:
        progress.load_state_dict(state)
        kl_controller.load_state_dict(state["kl_controller"])
        scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
        if ptx is not None:
            ptx.load_state_dict(state["ptx"])
    except (KeyError, TypeError, ValueError) as err:
        raise InstructGPTError(
            f"{source}: {checkpoint / TRAINER_STATE} does not hold this run's resume state ({err}); it was "
            "written by another version or another recipe: resume from an earlier checkpoint or start over"
        ) from None


def save_policy(
    accelerator: Any, model: nn.Module, tokenizer: Any, directory: Path, *, is_peft: bool, merged: bool
) -> None:
    """Save the policy of ``model`` (the prepared policy-and-value module) as a standard model directory, with the
    tokenizer, that ``from_pretrained`` loads.

    Without LoRA: the full model. With LoRA: ``merged`` folds the adapter into the weights (the final model);
    otherwise the adapter alone, whose config points at the SFT model so that ``AutoModelForCausalLM`` loads
    base + adapter (checkpoints stay small).
    """
    state = accelerator.get_state_dict(model)  # gathers sharded (ZeRO-3 / FSDP) weights on the main process
    if accelerator.is_main_process:
        policy = accelerator.unwrap_model(model).policy
        tokenizer.save_pretrained(directory)
        if is_peft and merged:
            policy, weights = merge_adapter(policy), {}
        else:
            weights = {"state_dict": {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}}
        generation_config = getattr(policy, "generation_config", None)
        if generation_config is not None and not (is_peft and not merged):
            generation_config.pad_token_id = tokenizer.pad_token_id
            generation_config.eos_token_id = tokenizer.eos_token_id
        # the weights (with the generation config) last: a directory with sound weights has every other file
        policy.save_pretrained(directory, safe_serialization=True, **weights)
    accelerator.wait_for_everyone()


def write_checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    *,
    trainer_state: Callable[[], dict[str, Any]],
    save_policy: Callable[[Path], None],
    tracker: StageTracker,
    save_on_each_node: bool,
    save_total_limit: int | None,
    keep_policies: bool,
) -> Path:
    """Write ``checkpoint-<step>/`` (``state/``, ``trainer_state.json`` from ``trainer_state()``, and ``policy/``
    through ``save_policy``), then rotate. Written under a temporary name and renamed, so a crash mid-save leaves the
    previous checkpoint as the last one, and an interrupted save leaves no temporary folder behind.

    Where nodes do not share a filesystem (``save_on_each_node: true``, as in transformers' Trainer), the first
    process of every node writes the folder on its own disk, with that node's RNG states and the full weights;
    otherwise only the main process writes it, and the other processes add their RNG states to it."""
    writer = accelerator.is_local_main_process if save_on_each_node else accelerator.is_main_process
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    with translating(f"PPO checkpoint {final}"):  # a full disk mid-save: one line naming the checkpoint
        try:
            if writer:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(tmp / "state"))
            fault_point("mid_checkpoint")
            save_policy(tmp / "policy")
            if writer:
                atomic_write_json(tmp / TRAINER_STATE, trainer_state())
                tracker.save_identity(tmp)  # resuming from this checkpoint continues the same dashboard run
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                rotate_checkpoints(output_dir, save_total_limit, keep_policies)
        except BaseException:
            if writer:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: Path, limit: int | None, keep_policies: bool) -> None:
    """Honour ``save_total_limit`` for resume states; policies stay with ``save_policy_checkpoints``."""
    if not limit:
        return
    checkpoints = sorted(
        (int(p.name.split("-")[1]), p)
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit()
    )
    with_state = [(s, p) for s, p in checkpoints if (p / "state").exists()]
    for _, path in with_state[:-limit]:
        if keep_policies:
            shutil.rmtree(path / "state")
        else:
            shutil.rmtree(path)


def load_checkpoint(accelerator: Any, checkpoint: Path, source: str) -> dict[str, Any]:
    """Restore accelerate's state from ``checkpoint`` and return the trainer state it holds."""
    state = checkpoint / "state"
    if not state.is_dir():
        raise InstructGPTError(f"{source}: cannot resume from {checkpoint}: it has no `state` folder")
    # tensors only: no pickled Python objects are unpickled from a checkpoint (the README says which files are
    # trusted); the trainer's own state comes from trainer_state.json
    accelerator.load_state(str(state), load_kwargs={"weights_only": True})
    return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
