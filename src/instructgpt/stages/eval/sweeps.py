"""Training runs: PPO's curves over training, and the checkpoints of every run, evaluated one by one.

Each checkpoint's labeler score, RM score and KL to the reference is one point; along PPO's checkpoints they show
reward over-optimization (the labeler's score falls while the RM's rises), and along every run's they draw the
reward–KL frontier. A checkpoint is ``checkpoint-N/policy`` of PPO or ``checkpoint-N`` itself of a Trainer stage.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from instructgpt.infra.files import PPO_METRICS_FILE, read_jsonl
from instructgpt.stages.eval.evaluator import Evaluator
from instructgpt.stages.eval.settings import EvalArguments, parse_models


def read_metrics_log(ppo_run: str | Path) -> list[dict[str, Any]]:
    """The PPO trainer's ``metrics.jsonl`` (one JSON object per logged update); [] when it has none."""
    path = Path(ppo_run) / PPO_METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


def policy_checkpoints(run: str | Path, limit: int) -> list[tuple[int, Path]]:
    """``(step, policy directory)`` of a training run's checkpoints, at most ``limit`` evenly spaced ones, the last
    included: ``checkpoint-N/policy`` of PPO, ``checkpoint-N`` itself of a Trainer stage (RLOO, DPO)."""
    found = []
    for child in Path(run).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if not match:
            continue
        for policy in (child / "policy", child):
            if (policy / "config.json").is_file() or (policy / "adapter_config.json").is_file():
                found.append((int(match.group(1)), policy))
                break
    found.sort()
    if len(found) <= limit:
        return found
    picks = sorted({round(i * (len(found) - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [len(found) - 1]
    return [found[i] for i in picks]


def training_curves(ppo_run: str | Path) -> dict[str, list[Any]]:
    """Episode, score, RLHF reward and KL of every logged PPO update (rows without them, like evals, skipped)."""
    rows = [r for r in read_metrics_log(ppo_run) if "objective/scores" in r and "objective/kl" in r]
    if not rows:
        return {}
    return {
        "step": [r.get("step") for r in rows],
        "episode": [r.get("episode", r.get("step")) for r in rows],
        "scores": [r.get("objective/scores") for r in rows],
        "rlhf_reward": [r.get("objective/rlhf_reward") for r in rows],
        "kl": [r.get("objective/kl") for r in rows],
    }


def ppo_run_name(args: EvalArguments, models: dict[str, str]) -> str | None:
    """The name the --ppo_run goes by: the --models name of its final policy, else ``ppo``."""
    if not args.ppo_run:
        return None
    same = [n for n, p in models.items() if Path(p).resolve() == Path(args.ppo_run).resolve()]
    return same[0] if same else "ppo"


def checkpoint_runs(args: EvalArguments, models: dict[str, str]) -> dict[str, str]:
    """``{name: output_dir}`` of every run whose checkpoints are evaluated: --ppo_run, then --checkpoint_runs."""
    runs = parse_models(args.checkpoint_runs, "--checkpoint_runs")
    name = ppo_run_name(args, models)
    if name is not None and name not in runs:
        runs = {name: args.ppo_run, **runs}
    return runs


def checkpoint_sweep(
    evaluator: Evaluator,
    args: EvalArguments,
    prompts: list[Any],
    ref_name: str,
    ref_path: str,
    per_model: dict[str, dict[str, Any]],
    run_dir: str,
) -> list[dict[str, Any]]:
    """Labeler score, RM score and KL to the reference of the reference and each checkpoint of one run."""
    subset = prompts[: args.checkpoint_prompts] if args.checkpoint_prompts else prompts
    points = []
    if ref_name in per_model and len(subset) == len(prompts):
        m = per_model[ref_name]
    else:
        _, m = evaluator.run_model(ref_name, ref_path, subset, is_reference=True)
    points.append({"label": ref_name, "step": 0, "kl": 0.0, **sweep_numbers(m)})
    for step, policy in policy_checkpoints(run_dir, args.max_checkpoints):
        _, m = evaluator.run_model(f"checkpoint-{step}", str(policy), subset)
        if m.get("kl_to_reference") is None:
            continue
        points.append(
            {"label": f"step {step}", "step": step, "path": str(policy), "kl": m["kl_to_reference"], **sweep_numbers(m)}
        )
    return points


def sweep_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's point: labeler score, share correct and on task (when the labeler tells), RM score."""
    return {k: metrics.get(k) for k in ("labeler_score", "labeler_correct", "labeler_on_task", "rm_score")}
