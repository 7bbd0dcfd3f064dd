"""What a ``Trainer`` run reports at its end, the same way for every stage built on one (pretrain, SFT, RM)."""

from __future__ import annotations

from typing import Any

from instructgpt.infra.log import get_logger

logger = get_logger(__name__)


def trainer_metrics(trainer: Any, result: Any) -> dict[str, Any]:
    """``Trainer.train``'s metrics plus the process count, the optimizer steps and the first and last logged loss.

    Each process says how many optimizer steps it took, which shows at a glance that ``accelerate launch`` joined
    the processes into one run (every process reports the same steps and ``process i/N``).
    """
    metrics: dict[str, Any] = dict(result.metrics)
    accelerator = trainer.accelerator
    metrics["num_processes"] = accelerator.num_processes
    metrics["global_step"] = trainer.state.global_step
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        metrics["first_logged_loss"], metrics["last_logged_loss"] = losses[0], losses[-1]
    logger.info(
        f"process {accelerator.process_index}/{accelerator.num_processes}: {trainer.state.global_step} optimizer steps",
        extra={"all_ranks": True},
    )
    return metrics
