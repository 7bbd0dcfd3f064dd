"""Judging: who decides the win rates (``--labeler``), and what its verdicts add up to.

A judge either scores each answer (a labeler: the tiny world's rubric, a gold or project reward model, a file of
rankings) or compares two answers (a pairwise judge: an LLM); :mod:`instructgpt.judges` builds both. From a
labeler's per-prompt scores, or a pairwise judge's verdicts, come ``win_rate[A][B]`` for every pair of models with
their intervals (:mod:`instructgpt.metrics.winrate`), and with the tiny world's rubric the shares correct, on task
and off topic (:mod:`instructgpt.metrics.shares`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from instructgpt.data import DataError
from instructgpt.data.formats import prompt_text
from instructgpt.infra.log import get_logger
from instructgpt.judges import DEFAULT_GOLD_RM, judge_pairs, make_judge, total_counts
from instructgpt.judges.llm import TEMPLATE_VERSION
from instructgpt.metrics.shares import grouped_shares
from instructgpt.metrics.winrate import win_rate_matrix, win_rate_matrix_from_outcomes
from instructgpt.stages.eval.samples import mean_or_none
from instructgpt.stages.eval.settings import EvalArguments, llm_judge_settings
from instructgpt.tinyworld import UnknownPromptError, parse_prompt

logger = get_logger(__name__)


def tiny_world_prompts(prompts: Sequence[Any]) -> bool:
    """Every prompt is an instruction of the tiny world (so its simulated labeler can judge the answers)."""
    try:
        for prompt in prompts:
            parse_prompt(prompt_text(prompt))
    except (UnknownPromptError, DataError):
        return False
    return True


def judge_spec(args: EvalArguments, prompts: Sequence[Any]) -> str | None:
    """The judge ``--labeler`` names, ``auto`` resolved: the simulated labeler on the tiny world's prompts; on
    others, with two or more models to compare, a gold reward model (never the reward model PPO optimized, which
    the policy learned to please); else none."""
    spec = args.labeler
    if spec == "none":
        return None
    if spec != "auto":
        return spec
    if tiny_world_prompts(prompts):
        return "simulated"
    if len(args.models) > 1:
        logger.info(
            f"eval: judge: gold_rm:{DEFAULT_GOLD_RM} (`labeler: auto` on prompts that are not the tiny "
            "world's; set --labeler gold_rm:PATH, llm:MODEL, reward_model:PATH or file:PATH.jsonl to choose)"
        )
        return f"gold_rm:{DEFAULT_GOLD_RM}"
    logger.info("eval: one model and prompts that are not the tiny world's: no judge (set --labeler to score it)")
    return None


def build_labeler(args: EvalArguments, prompts: Sequence[Any], device: Any, source: str) -> Any | None:
    """The judge of the win rates (a labeler that scores, or a pairwise judge), or None."""
    spec = judge_spec(args, prompts)
    if spec is None:
        return None
    llm = vars(llm_judge_settings(args, source)) if spec.startswith("llm:") else None
    if llm is not None:
        llm = {k: v for k, v in llm.items() if k not in ("model", "source")}
    return make_judge(
        spec,
        llm_settings=llm,
        noise=args.labeler_noise,
        seed=args.labeler_seed,
        batch_size=args.batch_size,
        device=device,
        source=source,
    )


def labeler_details(labeler: Any, prompts: Sequence[Any], texts: Sequence[str]) -> dict[str, Any]:
    """Extra per-model numbers a labeler can give: with the simulated labeler, the share of responses that are
    correct, on task and off topic, and per response those flags and the task family (``labeler_outcomes``)."""
    judge = getattr(labeler, "judge", None)
    if judge is None:
        return {}
    verdicts = [judge(p, t) for p, t in zip(prompts, texts)]
    outcomes = [
        {
            "correct": bool(v.correct),
            "on_task": bool(v.on_task),
            "off_topic": bool(v.off_topic),
            "family": v.family or "unknown",
        }
        for v in verdicts
    ]
    return {
        "labeler_correct": mean_or_none([float(o["correct"]) for o in outcomes]),
        "labeler_on_task": mean_or_none([float(o["on_task"]) for o in outcomes]),
        "labeler_off_topic": mean_or_none([float(o["off_topic"]) for o in outcomes]),
        "labeler_outcomes": outcomes,
    }


def task_shares(outcomes: Sequence[dict[str, Any]], groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Shares correct / on task / off topic with 95% intervals, over all prompts, per family and per ``groups``."""
    extra = groups or [None] * len(outcomes)
    return grouped_shares(outcomes, [[o["family"]] + ([g] if g else []) for o, g in zip(outcomes, extra)])


def with_shares(per_model: dict[str, dict[str, Any]], groups: Sequence[str] | None = None) -> dict[str, Any]:
    """``{model: task_shares(...)}`` for the models the labeler judged with outcomes."""
    return {
        name: task_shares(m["labeler_outcomes"], groups) for name, m in per_model.items() if "labeler_outcomes" in m
    }


def win_rates(
    pairwise: Any | None,
    labeler: Any | None,
    prompts: list[Any],
    per_model: dict[str, dict[str, Any]],
    texts: dict[str, list[str]],
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any] | None]:
    """``win_rate[A][B]`` for every pair of models (rate, Wilson and bootstrap intervals, counts), from the labeler's
    per-prompt scores or from a pairwise judge's verdicts; with a pairwise judge also its counts per pair."""
    if len(per_model) < 2:
        return {}, None
    if pairwise is not None:
        outcomes, counts = judge_pairs(pairwise, prompts, texts)
        matrix = win_rate_matrix_from_outcomes(outcomes)
        counts = {"total": total_counts(counts), "pairs": counts}
        logger.info(f"eval: {pairwise.name}: " + ", ".join(f"{k} {v}" for k, v in counts["total"].items()))
    elif labeler is not None:
        matrix, counts = win_rate_matrix({name: m["labeler_scores"] for name, m in per_model.items()}), None
    else:
        return {}, None
    return {a: {b: w.as_dict() for b, w in row.items()} for a, row in matrix.items()}, counts


def judge_description(pairwise: Any | None, labeler: Any | None, reward_model: str | None) -> dict[str, Any] | None:
    """What results.json and the report say about the judge: its name, kind, and whether it is independent of the
    reward model given as --reward_model (a judge that is that model is the proxy judging itself)."""
    judge = pairwise or labeler
    if judge is None:
        return None
    name = judge.name
    kind = "pairwise" if pairwise is not None else "pointwise"
    same = bool(reward_model) and name == f"reward_model:{reward_model}"
    out: dict[str, Any] = {"name": name, "kind": kind, "independent_of_reward_model": not same}
    if pairwise is not None:
        out["template"] = TEMPLATE_VERSION
        out["cache"] = pairwise.settings.cache
    return out
