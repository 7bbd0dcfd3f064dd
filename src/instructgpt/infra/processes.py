"""The one place that creates accelerate's process state, so that CPU-only multi-process runs really are distributed.

`accelerate launch --multi_gpu --num_processes N` on a machine with no accelerator starts N processes with
``WORLD_SIZE`` set, but accelerate only joins them into a gloo process group (``DistributedType.MULTI_CPU``) when its
state is created with ``cpu=True``; created without it, every process believes it is alone and trains its own copy
of the model. transformers' ``TrainingArguments`` rebuilds the state from ``ACCELERATE_USE_CPU`` (which the launcher
sets to false under ``--multi_gpu``), so the entry points also set that variable through ``join_cpu_processes``.
"""

from __future__ import annotations

import os
from typing import Any

# torch and accelerate are imported inside the functions: every entry point imports this module (through
# infra/entrypoint.py), and `instructgpt --help` must not wait seconds for them


def no_accelerator() -> bool:
    """True on a CPU-only machine (no CUDA, XPU, MPS, ... device that torch can use)."""
    import torch

    return not torch.accelerator.is_available()


def join_cpu_processes() -> None:
    """On a CPU-only machine, tell accelerate and transformers to join launched processes with gloo."""
    if no_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def process_state() -> Any:
    """accelerate's ``PartialState`` for this process: rank, world size, device, main-process helpers."""
    from accelerate import PartialState

    join_cpu_processes()
    return PartialState(cpu=no_accelerator())


def default_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_frozen_model(model: Any, accelerator: Any) -> Any:
    """Place a frozen model (the PPO reference policy, the reward model) for the accelerator's backend.

    Frozen models have no optimizer, so ``accelerator.prepare`` is not the tool; TRL's helpers wrap them the way
    the trained model is wrapped, so that they are sharded too instead of copied whole onto every device:

    - DeepSpeed: :func:`trl.models.utils.prepare_deepspeed` (an inference engine; ZeRO-3 shards the weights);
    - FSDP (1 or 2): :func:`trl.models.utils.prepare_fsdp` (the plugin's wrap policy, sharding and mixed precision);
    - DDP, one process or CPU: a plain copy on the process's device (bitsandbytes models keep the placement their
      ``device_map`` gave them: they refuse ``.to``).
    """
    if model is None:
        return None
    state = accelerator.state
    if state.deepspeed_plugin is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    if getattr(state, "fsdp_plugin", None) is not None:
        from trl.models.utils import prepare_fsdp

        return prepare_fsdp(model, accelerator)
    if not getattr(model, "is_quantized", False):
        model.to(accelerator.device)
    return model
