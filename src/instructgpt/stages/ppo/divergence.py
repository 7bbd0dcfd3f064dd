"""When a PPO run stops itself: a broken reward, a runaway policy, or a non-finite gradient or loss.

Each check raises :class:`~instructgpt.infra.guards.TrainingDiverged` with the update it stopped at and the last good
checkpoint (:func:`~instructgpt.infra.guards.last_good_checkpoint`), which is left as it was:

- :func:`check_rollout`, before an update learns from its rollout: non-finite scores, a non-finite KL, a mean KL
  above ``max_kl``;
- :func:`check_gradients`, before an optimizer step: one step on NaN or inf gradients writes NaN into every weight;
- :func:`check_update`, after an update: a non-finite policy, value or ptx loss, so that the update is not saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from instructgpt.infra.guards import TrainingDiverged, last_good_checkpoint, nonfinite_gradients


def check_rollout(
    accelerator: Any, scores: torch.Tensor, mean_kl: float, max_kl: float | None, update: int, output_dir: Path
) -> None:
    """Stop before update ``update`` learns from a broken reward or a policy that left the reference far behind."""
    bad = (~torch.isfinite(scores)).sum().reshape(1).float()
    bad_total = int(accelerator.gather(bad).sum().item())
    kept = last_good_checkpoint(output_dir)
    if bad_total:
        raise TrainingDiverged(
            f"update {update}: the reward model returned {bad_total} non-finite score(s) (NaN or inf); stopping. {kept}"
        )
    if not math.isfinite(mean_kl):
        raise TrainingDiverged(f"update {update}: the KL to the SFT policy is {mean_kl}; stopping. {kept}")
    if max_kl is not None and mean_kl > max_kl:
        raise TrainingDiverged(
            f"update {update}: the mean KL to the SFT policy is {mean_kl:.2f} nats per response, above "
            f"max_kl={max_kl}: the policy is running away from the reference (lower the learning rate "
            f"or raise kl_coef); stopping. {kept}"
        )


def check_gradients(parameters: Iterable[torch.nn.Parameter], update: int, output_dir: Path) -> None:
    """Stop before an optimizer step of update ``update`` on NaN or inf gradients."""
    bad = nonfinite_gradients(parameters)
    if bad:
        raise TrainingDiverged(
            f"update {update}: {len(bad)} parameter gradient(s) hold NaN or inf (a "
            f"non-finite loss); stopping before the optimizer step. {last_good_checkpoint(output_dir)}"
        )


def check_update(metrics: dict[str, float], update: int, output_dir: Path) -> None:
    """Stop after update ``update`` when its mean policy, value or ptx loss is not finite, without saving it."""
    losses = ("loss/policy_avg", "loss/value_avg", "loss/ptx_avg")
    bad = [k for k in losses if k in metrics and not math.isfinite(metrics[k])]
    if bad:
        raise TrainingDiverged(
            f"update {update}: non-finite {', '.join(bad)}; stopping without saving this "
            f"update. {last_good_checkpoint(output_dir)}"
        )
