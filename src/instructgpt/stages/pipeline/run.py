"""The whole InstructGPT recipe in one command: every stage in order, then the evaluation.

    instructgpt pipeline recipes/tiny/pipeline.yaml [--key value ...] [--<stage>.<key> value ...]
    instructgpt recipes/tiny/pipeline.yaml

Stages (Ouyang et al. 2022, figure 2), each run from its own stage recipe, which the pipeline recipe names (a path)
or embeds (a mapping; ``recipe: PATH`` inside it starts from a file and the other keys override it):

0. ``pretrain`` (tiny world only): a base model from scratch;
1. ``sft``: supervised fine-tuning on demonstrations;
2. ``collect``: K samples per prompt from the current policy, ranked by a labeler; then ``rm``, the reward model;
3. ``ppo``: PPO against the reward model, KL-penalized towards the SFT policy;
4. ``eval``: the base, SFT and PPO models on held-out prompts (:mod:`instructgpt.stages.eval`).

``methods: [ppo, dpo, rloo, grpo, best_of_8]`` compares alternatives to step 3 on the same data (AlpacaFarm's table,
Dubois et al. 2023): every method starts from the same SFT model; DPO trains on the same rankings the reward model
did, RLOO and best-of-n use that reward model; the evaluation puts them all, with the SFT and base models, in one
win-rate matrix and on one reward–KL frontier (PPO's and RLOO's checkpoints included).

``rounds: N`` repeats InstructGPT's loop: rounds 2..N collect comparisons from the previous round's PPO policy,
retrain the reward model (from the SFT model, on the comparisons of every round so far) and run PPO again from
the SFT policy against it, so KL(PPO || SFT) stays comparable across rounds.

The pipeline only wires paths: each stage writes ``<output_dir>/<stage>`` (later rounds ``<output_dir>/round<r>/...``)
and reads its inputs from the stages before it, through ``--key value`` overrides on its own recipe, so every
stage keeps its recipe's settings. ``--sft.num_train_epochs 1`` on the command line overrides one key of one stage.

Stages run in this process, one after the other. A stage whose output is complete (its run marker exists) is
skipped; one that was interrupted resumes from its checkpoints (every stage gets ``if_output_exists: resume``).
A finished stage whose input was retrained after it is refused rather than silently mixed with the new input.
All W&B runs of a pipeline share one group (``WANDB_RUN_GROUP``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, atomic_write_json, is_complete
from instructgpt.infra.outputs import mark_complete
from instructgpt.infra.parser import Recipe, RecipeError, RecipeParser, StageArgs, split_argv
from instructgpt.infra.processes import process_state
from instructgpt.infra.tracking import GROUP_ENV
from instructgpt.stages.pipeline.console import Console, print_final_summary, print_plan
from instructgpt.stages.pipeline.evaluation import build_eval_args, record_eval_results, run_pipeline_eval
from instructgpt.stages.pipeline.plan import Planner
from instructgpt.stages.pipeline.settings import TRAINING_STAGES, PipelineArguments, PipelineError, Stage
from instructgpt.stages.pipeline.steps import (
    Stopwatch,
    close_wandb_run,
    merge_rankings,
    reset_accelerate_state,
    run_stage,
    stale_inputs,
    status_of,
)

STATE_FILE = "pipeline.json"


def run_pipeline(
    args: PipelineArguments, recipe: Recipe, stage_overrides: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """Run (or resume) every stage of the plan, then the evaluation; returns the pipeline's summary."""

    console = Console()
    root = Path(args.output_dir)
    stages, eval_settings = Planner(args, recipe, stage_overrides or {}).plan()
    build_stages(stages)
    eval_args = None
    if eval_settings is not None:
        eval_args = build_eval_args(eval_settings, recipe.source, set((stage_overrides or {}).get("eval", {})))
    summary = start_summary(args, recipe, root)
    with environment(GROUP_ENV, summary["wandb_group"]):
        run_plan(stages, eval_args, recipe, summary, console)
    return summary


def build_stages(stages: list[Stage]) -> None:
    """Every stage's recipe and overrides are checked before the first stage trains."""
    for stage in stages:
        try:
            stage.build()
        except PipelineError:
            raise
        except InstructGPTError as err:
            raise PipelineError(f"stage `{stage.label}`: {err}") from None


def load_state(root: Path) -> dict[str, Any]:
    """The summary an earlier run of this pipeline saved (empty without one, or when it cannot be read)."""
    path = root / STATE_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            pass
    return {}


def start_summary(args: PipelineArguments, recipe: Recipe, root: Path) -> dict[str, Any]:
    """The pipeline's summary, carrying over the W&B group and the stage timings of an earlier run."""
    saved = load_state(root)
    # this pipeline's own group first (kept across resumes), then one the user exported, else a new one
    group = args.wandb_group or saved.get("wandb_group") or os.environ.get(GROUP_ENV)
    if group is None:
        group = f"{args.run_name or root.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    timings: dict[str, Any] = dict(saved.get("stages", {}))
    return {
        "recipe": recipe.source,
        "output_dir": str(root),
        "wandb_group": group,
        "stages": timings,
    }


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the stages of this pipeline only (tests and notebooks run several)."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def run_plan(stages: list[Stage], eval_args: Any, recipe: Recipe, summary: dict[str, Any], console: Console) -> None:
    """Skip, resume or run each stage in order, then the evaluation; ``summary`` collects timings and results."""

    state = process_state()
    root, timings = Path(summary["output_dir"]), summary["stages"]

    def save() -> None:
        if state.is_main_process:
            atomic_write_json(root / STATE_FILE, summary)

    total = len(stages) + (eval_args is not None)
    print_plan(console, recipe, summary, stages, eval_args)
    pipeline_start = time.time()
    for index, stage in enumerate(stages, start=1):
        skip_or_run(stage, index, total, console, timings, save)
    if eval_args is not None:
        record_eval_results(summary, run_pipeline_eval(eval_args, stages, console, total, timings, save))
    summary["seconds_this_run"] = round(time.time() - pipeline_start, 1)
    save()
    if state.is_main_process:
        mark_complete(root, "pipeline", recipe.data, {"headline": summary.get("headline", []), "stages": timings})
    print_final_summary(console, stages, eval_args, summary)


def skip_or_run(
    stage: Stage, index: int, total: int, console: Console, timings: dict[str, Any], save: Callable[[], None]
) -> None:
    """A finished stage is skipped (refused if an input was retrained since), an interrupted one resumed, a new one
    run; its timing goes into ``timings``."""
    state = process_state()
    status = status_of(stage.output_dir)
    if status == "done":
        stale = stale_inputs(stage)
        if stale:
            raise PipelineError(
                f"{stage.output_dir} ({stage.label}) finished before its input {stale[0]} was trained again, so it "
                f"was built from the old one; move {stage.output_dir} (and the stages after it) aside and rerun"
            )
        console.banner(index, total, stage, "finished earlier: skipped")
        return
    console.banner(index, total, stage, "resuming the interrupted run" if status == "interrupted" else "running")
    console.print(f"[dim]instructgpt {stage.stage} {' '.join(stage.argv())}[/]")
    for part in stage.merge_rankings:
        if not part.is_file():
            raise PipelineError(f"{stage.label}: missing {part}; its collection did not finish")
    if stage.merge_rankings and state.is_main_process:
        merge_rankings(stage.merge_rankings, Path(stage.overrides["dataset_name"]))
    state.wait_for_everyone()
    clock = Stopwatch()
    try:
        run_stage(stage)
    finally:
        close_wandb_run()
        reset_accelerate_state()
    if not is_complete(stage.output_dir):
        raise PipelineError(f"stage `{stage.label}` returned without finishing: no {RUN_MARKER} in {stage.output_dir}")
    timings[stage.label] = {"output_dir": str(stage.output_dir), **clock.read(), "resumed": status == "interrupted"}
    seconds = timings[stage.label]["seconds"]
    save()
    console.print(f"[green]{stage.label} finished in {seconds:.0f} s[/] -> {stage.output_dir}")


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

OVERRIDABLE = TRAINING_STAGES + ("eval",)


def split_stage_overrides(argv: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Pull ``--<stage>.<key> value`` out of the command line; the rest is the pipeline recipe's own."""
    recipe_path, overrides = split_argv(argv)
    own: list[str] = [recipe_path] if recipe_path else []
    per_stage: dict[str, dict[str, str]] = {}
    for key, value in overrides.items():
        stage, dot, stage_key = key.partition(".")
        if not dot:
            own.append(f"--{key}={value}")
            continue
        if stage not in OVERRIDABLE or not stage_key:
            raise RecipeError(
                f"command-line override `--{key}`: expected --<stage>.<key> with a stage among {', '.join(OVERRIDABLE)}"
            )
        per_stage.setdefault(stage, {})[stage_key] = value
    return own, per_stage


def arguments() -> tuple[type, ...]:
    """The dataclass a pipeline recipe fills."""
    return (PipelineArguments,)


def parse(argv: list[str] | None = None) -> StageArgs:
    """``PIPELINE.yaml [--key value ...] [--<stage>.<key> value ...]``; the per-stage overrides ride in the recipe."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = RecipeParser("pipeline", arguments(), prog="instructgpt pipeline", description=__doc__)
    if any(a in ("-h", "--help", "--version") for a in argv):
        return parser.parse(argv)  # prints and exits
    own, per_stage = split_stage_overrides(argv)
    args = parser.parse(own)
    if per_stage:
        args.recipe.data["stage_overrides"] = per_stage
    return args


def parse_args(argv: list[str] | None = None) -> tuple[PipelineArguments, Recipe, dict[str, dict[str, str]]]:
    args = parse(argv)
    return args.parts[0], args.recipe, args.recipe.data.get("stage_overrides", {})


def run(args: StageArgs) -> dict[str, Any]:
    """Run (or resume) the whole pipeline from its parsed recipe; returns its summary."""
    (pipeline_args,) = args.parts
    return run_pipeline(pipeline_args, args.recipe, args.recipe.data.get("stage_overrides", {}))


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: run(parse(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
