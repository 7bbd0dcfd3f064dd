"""The results of an evaluation: the files it writes, what ``results.json`` holds, and when it is complete.

``results.json`` is machine-readable: ``win_rate[A][B]`` holds the rate and its intervals, ``headline`` the pairs
the report leads with, ``metrics`` each model's numbers, ``task_shares`` the shares; ``completions.jsonl`` (and
``ood_completions.jsonl``) hold one row per prompt with every model's response and scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instructgpt.infra.guards import UnsoundOutput
from instructgpt.stages.eval.settings import EvalArguments

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
COMPLETIONS_FILE = "completions.jsonl"
OOD_COMPLETIONS_FILE = "ood_completions.jsonl"
PLOTS_DIR = "plots"


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A model's numbers for results.json: without the per-response lists (scores, outcomes)."""
    return {k: v for k, v in metrics.items() if not k.endswith(("_scores", "_outcomes"))}


def headline_pairs(names: list[str], win_rate: dict, metrics: dict, ref_name: str | None) -> list[dict[str, Any]]:
    """Every later model against every earlier one, the reference's pairs first: each model after the reference
    over it (``ppo vs sft``, ``dpo vs sft``, ...), the reference over each model before it (``sft vs base``), then the
    other pairs, later models first (``dpo vs ppo``, ...)."""
    pairs = [(names[i], names[j]) for i in range(len(names) - 1, 0, -1) for j in range(i - 1, -1, -1)]
    if ref_name in names:
        r = names.index(ref_name)
        first = [(a, ref_name) for a in names[r + 1 :]] + [(ref_name, b) for b in reversed(names[:r])]
        pairs = first + [p for p in pairs if p not in first]
    rows = []
    for a, b in pairs:
        if a in win_rate and b in win_rate[a]:
            row = {"model": a, "baseline": b, **win_rate[a][b]}
            row["kl_to_reference"] = metrics[a].get("kl_to_reference")
            row["reference"] = ref_name
            rows.append(row)
    return rows


def completion_rows(
    prompts: Sequence[Any],
    texts: dict[str, list[str]],
    per_model: dict[str, dict[str, Any]],
    groups: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per prompt: every model's response, its labeler and RM scores and, when known, its outcomes."""
    rows = []
    for i, prompt in enumerate(prompts):
        row: dict[str, Any] = {"prompt": prompt}
        if groups:
            row["group"] = groups[i]
        for name, m in per_model.items():
            row[name] = texts[name][i]
            if "labeler_scores" in m:
                row[f"{name}_labeler_score"] = m["labeler_scores"][i]
            if "rm_scores" in m:
                row[f"{name}_rm_score"] = m["rm_scores"][i]
            for key in ("correct", "on_task", "off_topic"):
                if "labeler_outcomes" in m:
                    row[f"{name}_{key}"] = m["labeler_outcomes"][i][key]
        rows.append(row)
    return rows


def check_results(results: dict[str, Any], args: EvalArguments, output_dir: Path) -> None:
    """An evaluation is finished only with numbers for every model, every prompt and, with a judge, every pair."""
    names = list(results["models"])
    problems = [f"no metrics for {n}" for n in names if n not in results["metrics"]]
    if results.get("labeler") and len(names) > 1:
        problems += [
            f"no win rate of {a} over {b}"
            for a in names
            for b in names
            if a != b and b not in results["win_rate"].get(a, {})
        ]
    for name, metrics in results["metrics"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{name}'s {key} is {value}")
    if problems:
        raise UnsoundOutput(
            f"{output_dir}: the evaluation is incomplete ({'; '.join(problems[:3])}); not marked finished"
        )
