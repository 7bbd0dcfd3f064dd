"""What a PPO run reports: each update's metrics under TRL's names, the held-out evaluation's, and its two logs.

- ``metrics.jsonl`` (:data:`~instructgpt.infra.outputs.PPO_METRICS_FILE`): one line per logged update and per
  held-out evaluation, with its ``step``; the dashboards get the same numbers;
- ``completions.jsonl``: a few sample completions with their scores, every so many updates (the dashboards'
  ``completions`` table).

A resumed run cuts both back to its checkpoint (:func:`truncate_log`), so no update is logged twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from instructgpt.infra.files import atomic_write_text, read_jsonl
from instructgpt.stages.ppo.rollout import Batch

COMPLETIONS_FILE = "completions.jsonl"
NUM_LOGGED_COMPLETIONS = 8


def global_mean(accelerator: Any, value: torch.Tensor) -> float:
    """The mean of a scalar over all processes."""
    return accelerator.gather_for_metrics(value.detach().float().reshape(1)).mean().item()


def update_metrics(
    accelerator: Any,
    batch: Batch,
    scores: torch.Tensor,
    non_score_reward: torch.Tensor,
    kl: torch.Tensor,
    stats: dict[str, torch.Tensor],
    *,
    elapsed: float,
    episodes: int,
    lr: float,
    episode: int,
) -> dict[str, float]:
    """TRL's PPO metrics under TRL's names (with ``loss/ptx_avg`` when PPO-ptx is on), over all processes.

    ``stats`` are the per-micro-batch statistics of the PPO epochs; ``elapsed`` and ``episodes`` (this run's
    episodes so far) give the throughput ``eps``; ``episode`` counts every episode of the run, resumes included.
    """
    mean = lambda value: global_mean(accelerator, value)  # noqa: E731
    mask = batch.mask
    metrics = {
        "eps": episodes / max(elapsed, 1e-9),
        "objective/kl": mean(kl.sum(1).mean()),
        "objective/entropy": mean((-batch.logprobs * mask).sum(1).mean()),
        "objective/non_score_reward": mean(non_score_reward.sum(1).mean()),
        "objective/rlhf_reward": mean(non_score_reward.sum(1).mean() + scores.mean()),
        "objective/scores": mean(scores.mean()),
        "objective/response_length": mean(mask.sum(1).float().mean()),
        "objective/eos_fraction": mean(batch.ended.float().mean()),
        "val/num_eos_tokens": float(accelerator.gather(batch.ended.sum().reshape(1)).sum().item()),
    }
    all_scores = accelerator.gather_for_metrics(scores.float())
    metrics["objective/scores_std"] = all_scores.std().item() if all_scores.numel() > 1 else 0.0
    for key, values in stats.items():
        metrics[key] = accelerator.gather_for_metrics(values).mean().item()
    ratios = accelerator.gather_for_metrics(stats["val/ratio"])
    metrics["val/ratio_var"] = ratios.var().item() if ratios.numel() > 1 else 0.0
    metrics["lr"] = lr
    metrics["episode"] = episode
    return metrics


def held_out_metrics(accelerator: Any, data: dict[str, torch.Tensor] | None, num_prompts: int) -> dict[str, float]:
    """Mean normalised score, KL to the reference, length and EOS rate over the held-out prompts of every
    process; ``data`` is this process's sampled and scored share (None when it has none)."""
    device = accelerator.device
    if data is None:
        local = torch.zeros(4, device=device)
        count = torch.zeros(1, device=device)
    else:
        kl = ((data["logprobs"] - data["ref_logprobs"]) * data["mask"]).sum(1)
        local = torch.stack(
            [data["scores"].sum(), kl.sum(), data["mask"].sum(1).float().sum(), data["ended"].float().sum()]
        )
        count = torch.tensor([float(num_prompts)], device=device)
    totals = accelerator.gather(local.reshape(1, 4)).sum(0)
    n = accelerator.gather(count).sum().clamp(min=1)
    values = (totals / n).tolist()
    return {
        "eval/scores": values[0],
        "eval/kl": values[1],
        "eval/response_length": values[2],
        "eval/eos_fraction": values[3],
        "eval/num_prompts": int(n.item()),
    }


def completion_rows(tokenizer: Any, batch: Batch, scores: torch.Tensor, step: int) -> list[dict[str, Any]]:
    """The first :data:`NUM_LOGGED_COMPLETIONS` prompts of a batch with their responses and scores."""
    rows = []
    for i in range(min(NUM_LOGGED_COMPLETIONS, len(batch.prompts))):
        response = tokenizer.decode(batch.response[i][batch.mask[i]], skip_special_tokens=True)
        prompt = batch.prompts[i] if isinstance(batch.prompts[i], str) else json.dumps(batch.prompts[i])
        rows.append({"step": step, "prompt": prompt, "response": response, "score": round(float(scores[i]), 4)})
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines of a log written after update ``step`` (the checkpoint a run resumes from: they will be
    written again), and a last line an interruption cut off."""
    if not path.exists():
        return
    kept = [row for row in read_jsonl(path) if row.get("step", 0) <= step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
