"""The pipeline's evaluation step: its settings checked, reused when current, run, and written into the cards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from instructgpt.infra.cards import add_card_section
from instructgpt.infra.files import RUN_MARKER, is_complete
from instructgpt.infra.parser import Recipe, RecipeParser
from instructgpt.infra.processes import process_state
from instructgpt.stages import load_stage
from instructgpt.stages.pipeline.console import Console
from instructgpt.stages.pipeline.settings import Stage
from instructgpt.stages.pipeline.steps import Stopwatch, close_wandb_run, marker_time


def build_eval_args(settings: dict[str, Any], source: str, cli_keys: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """Validate the ``eval`` mapping like any recipe section (errors name the key); ``cli_keys`` came from
    ``--eval.<key>`` on the command line, as strings to convert."""
    parser = RecipeParser("eval", load_stage("eval").arguments())
    recipe = Recipe(path=None, stage="eval", data=settings, origin=f"{source} (eval)")
    (eval_args,) = parser.build(settings, recipe, cli_keys=set(cli_keys))
    eval_args.validate(f"{source} (eval)")
    return eval_args


def eval_is_current(eval_args: Any, stages: list[Stage]) -> bool:
    """A finished evaluation is reused only with the same settings and no model retrained since."""
    output_dir = Path(eval_args.output_dir)
    done = marker_time(output_dir)
    if done is None:
        return False
    try:
        marker = json.loads((output_dir / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False

    def settings(recipe: dict[str, Any]) -> dict[str, Any]:  # what the evaluation measured, not how it was run
        return {k: v for k, v in recipe.items() if k != "if_output_exists"}

    if settings(marker.get("recipe") or {}) != settings(json.loads(json.dumps(dataclasses.asdict(eval_args)))):
        return False
    return all((marker_time(s.output_dir) or 0.0) <= done for s in stages)


def run_pipeline_eval(
    eval_args: Any, stages: list[Stage], console: Console, total: int, timings: dict[str, Any], save: Any
) -> dict[str, Any] | None:
    """The evaluation stage (main process; the others wait)."""

    evaluation = load_stage("eval")

    state = process_state()
    output_dir = Path(eval_args.output_dir)
    if eval_is_current(eval_args, stages):
        console.banner(total, total, "eval", "finished earlier with the same models and settings: skipped")
        return json.loads((output_dir / evaluation.RESULTS_FILE).read_text(encoding="utf-8"))
    console.banner(total, total, "eval", "running")
    if is_complete(output_dir):  # finished, but with other settings or older models: kept aside, never deleted
        eval_args.if_output_exists = "overwrite"
    results = None
    clock = Stopwatch()
    if state.is_main_process:
        try:
            results = evaluation.run_eval(eval_args, source="pipeline eval")
        finally:
            close_wandb_run()
        timings["eval"] = {"output_dir": str(output_dir), **clock.read(), "resumed": False}
        save()
        if results:
            add_eval_to_cards(results)
    state.wait_for_everyone()
    return results


def add_eval_to_cards(results: dict[str, Any]) -> None:
    """Each evaluated model's card gets the pipeline's evaluation: its win rates and its per-model numbers."""

    metrics_keys = (
        "labeler_score",
        "labeler_correct",
        "labeler_on_task",
        "labeler_off_topic",
        "rm_score",
        "kl_to_reference",
        "response_tokens",
    )
    for name, path in results["models"].items():
        if not is_complete(path):  # only the pipeline's own outputs, never a shipped or downloaded model
            continue
        rows = [
            f"| {h['model']} vs {h['baseline']} | {100 * h['win_rate']:.1f}% "
            f"[{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}] |"
            for h in results.get("headline", [])
            if name in (h["model"], h["baseline"])
        ]
        numbers = {k: results["metrics"].get(name, {}).get(k) for k in metrics_keys}
        body = "\n".join(
            [
                f"Held-out prompts: `{results['prompts']}` ({results['num_prompts']}); "
                f"judge: {results.get('labeler')}.",
                "",
                "| comparison | win rate [95% CI] |",
                "|---|---|",
                *rows,
                "",
                "| metric | value |",
                "|---|---|",
                *[f"| {k} | {v:.4g} |" for k, v in numbers.items() if isinstance(v, (int, float))],
            ]
        )
        add_card_section(path, "Evaluation (instructgpt pipeline)", body)


def record_eval_results(summary: dict[str, Any], results: dict[str, Any] | None) -> None:
    """The evaluation's headline and shares in the pipeline's summary."""
    summary["headline"] = results.get("headline", []) if results else []
    summary["shares"] = {  # what the win rate hides, over all held-out prompts (per family: results.json)
        name: {key: cell["share"] for key, cell in groups["all"].items()}
        for name, groups in (results or {}).get("task_shares", {}).items()
    }
