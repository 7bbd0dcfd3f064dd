"""What keeps a broken run from being saved as a good one: non-finite gradients stop training before the optimizer
step, and an output is marked finished only when its weights are finite.

A NaN reaches the weights through one optimizer step; after that every save writes NaN. So the check sits before the
step: the run stops with a message that names the last good checkpoint, which is left as it was.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import last_checkpoint
from instructgpt.infra.library_errors import DISK_FULL_ERRNOS


class TrainingDiverged(InstructGPTError):
    """A non-finite loss, gradient, reward or KL (or a KL past ``max_kl``): the run stops, checkpoints stay."""


class UnsoundOutput(InstructGPTError):
    """An output that must not be marked finished (non-finite weights, no rankings, incomplete results)."""


def nonfinite_gradients(parameters: Iterable[torch.nn.Parameter]) -> list[int]:
    """Indices of the parameters whose gradient holds a NaN or an infinity (this process's shard of them).

    The common case costs one fused norm over all gradients (``torch.nn.utils.get_total_norm``, foreach kernels)
    and one scalar check; only a non-finite total looks at the gradients one by one.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params or torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in params])):
        return []
    return [i for i, p in enumerate(params) if not torch.isfinite(p.grad).all()]


def last_good_checkpoint(output_dir: str | Path) -> str:
    checkpoint = last_checkpoint(output_dir)
    return (
        f"The last good checkpoint is {checkpoint}, left as it was." if checkpoint else "No checkpoint was saved yet."
    )


def finite_gradients_callback(output_dir: str | Path) -> Any:
    """A ``transformers.TrainerCallback`` that stops a ``Trainer`` before an optimizer step on non-finite gradients."""
    from transformers import TrainerCallback

    class FiniteGradients(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            fault_point("train_step")

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if model is None:
                return
            bad = nonfinite_gradients(model.parameters())
            if bad:
                raise TrainingDiverged(
                    f"optimizer step {state.global_step + 1}: {len(bad)} parameter gradient(s) hold NaN or inf (a "
                    f"non-finite loss); stopping before the step. {last_good_checkpoint(output_dir)}"
                )

    return FiniteGradients()


def nonfinite_weights(directory: str | Path) -> list[str]:
    """Names of the tensors in ``directory``'s safetensors files that hold a NaN or an infinity."""
    from safetensors import safe_open

    bad = []
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(name)
    return bad


def check_weights(directory: str | Path) -> None:
    """Refuse to finish a run whose saved weights are not all finite."""
    bad = nonfinite_weights(directory)
    if bad:
        raise UnsoundOutput(
            f"{directory}: {len(bad)} saved tensor(s) hold NaN or inf (first: {bad[0]}); the run is not marked finished"
        )


# --------------------------------------------------------------------------------------------------------------
# Fault injection: real kills and real full disks at exact points, for the fault tests
# --------------------------------------------------------------------------------------------------------------

FAULT_ENV = "INSTRUCTGPT_FAULT"
FILL_ENV = "INSTRUCTGPT_FAULT_FILL"
MEMORY_ENV = "INSTRUCTGPT_FAULT_MEMORY"
_hits: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """With ``INSTRUCTGPT_FAULT=<name>`` (or ``<name>:<n>``, the n-th time it is reached) the process kills itself
    with SIGKILL right here: no cleanup, no ``finally``, as a power cut or the OOM killer would. With
    ``INSTRUCTGPT_FAULT_FILL=<file>`` as well, it fills the disk instead (:func:`fill_disk`) and goes on, so the next
    write fails as on a disk that filled up at that moment; with ``INSTRUCTGPT_FAULT_MEMORY=<MiB>``, it leaves the
    process that much more memory (:func:`limit_memory`) and goes on. Without the variable this does nothing.
    ``tests/integration/test_faults.py`` and ``test_full_disk.py`` use it to stop real runs at the points where a
    crash or a full disk hurts most."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] += 1
    if _hits[name] != int(count or 1):
        return
    if os.environ.get(FILL_ENV):
        fill_disk(os.environ[FILL_ENV])
    elif os.environ.get(MEMORY_ENV):
        limit_memory(int(os.environ[MEMORY_ENV]))
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def fill_disk(path: str) -> None:
    """Append zeros to ``path`` until its file system has no space left (a small tmpfs, in the tests)."""
    with open(path, "ab", buffering=0) as handle:
        for size in (1 << 20, 4096):  # whole MiBs, then the last pages
            try:
                while handle.write(b"\0" * size):
                    pass
            except OSError as err:
                if err.errno not in DISK_FULL_ERRNOS:
                    raise


def limit_memory(extra_mib: int) -> None:
    """Cap this process's address space (``RLIMIT_AS``, Linux) at what it maps now plus ``extra_mib`` MiB, so that its
    next large allocation fails as on a machine out of memory: a real refusal by the kernel, caught where Python sees
    it (torch's ``DefaultCPUAllocator: can't allocate memory``, or a ``MemoryError``)."""
    import resource

    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (extra_mib << 20), resource.RLIM_INFINITY))
