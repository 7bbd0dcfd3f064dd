"""Evaluation: did RLHF help? Win rates under a labeler, and what each model's responses look like.

    instructgpt eval --models base=data/tiny/base-model sft=runs/tiny/sft ppo=runs/tiny/ppo \\
        --prompts data/tiny/eval_prompts.jsonl --output_dir runs/tiny/eval [--ppo_run runs/tiny/ppo]

Every model answers every prompt once, sampled with the same settings and seed (the shared sampler,
:func:`instructgpt.sampling.generate_responses`). Then:

- **win rates** (InstructGPT's headline metric, section 4.1; AlpacaFarm's with simulated annotators): for each pair
  of models, a judge compares the two answers to each prompt; a win counts 1, a tie 1/2, and ``win_rate[A][B]`` is
  the mean over prompts, with a 95% Wilson interval and a 95% paired bootstrap interval over prompts
  (:mod:`instructgpt.metrics.winrate`). The judge (``--labeler``) is the tiny world's simulated labeler, a gold
  reward model in its own format (``gold_rm:PATH``), an LLM behind an OpenAI-compatible endpoint (``llm:MODEL``,
  pairwise: it compares the two answers, in both orders), a reward model of this project, or a file of rankings
  people wrote (:mod:`instructgpt.judges`). On prompts that are not the tiny world's it defaults to a gold reward
  model, never to the reward model PPO optimized;
- **per model**: mean labeler score, mean normalized RM score (with ``--reward_model``), KL to a reference model
  (the SFT policy by default), response length, distinct-1/2 and the share of responses that end with EOS;
- **what the win rate hides** (with a labeler that can tell, the tiny world's rubric): per model and per task
  family, the share of responses that are correct, on task (an attempt at the asked task) and off topic, each with
  a 95% Wilson interval (:mod:`instructgpt.metrics.shares`);
- with ``--ood_prompts``: the same win rates and shares on out-of-distribution prompts, grouped also by the file's
  ``split`` column (the tiny world ships ``data/tiny/ood_prompts.jsonl``: other casing and punctuation, new words,
  new operands);
- with ``--ppo_run``: the PPO run's reward and KL over training (its ``metrics.jsonl``), and the labeler's score
  and share correct against KL from the reference across its checkpoints, where reward over-optimization shows;
- **best-of-n** as a method: a model given as ``NAME=best_of_N:PATH`` samples N responses per prompt from PATH and
  answers with the one the ``--reward_model`` scores highest (:func:`sample_best_of_n`);
- **the reward–KL frontier**: every model's labeler score against its KL to the reference, with one line per run of
  ``--checkpoint_runs`` (PPO's checkpoints, RLOO's, ...) evaluated checkpoint by checkpoint (``plots/frontier.png``).

Outputs: ``results.json`` (machine-readable; ``win_rate[A][B]`` holds the rate and its interval, ``task_shares``
the shares), ``report.md``, ``completions.jsonl`` (and ``ood_completions.jsonl``), ``plots/*.png``; with
``--report_to`` (trackio, wandb, ...) the same numbers, the plots and a completions table go to the dashboards.

KL(model || reference) is estimated on the model's own samples as :math:`\\sum_t \\log\\pi(y_t|x,y_{<t}) -
\\log\\pi_{ref}(y_t|x,y_{<t})` over the response tokens (and the EOS that ended it), averaged over prompts: the
"k1" estimator PPO's ``objective/kl`` uses, in nats per response. Both models read the logits divided by the
sampling temperature, so at ``temperature: 1`` (the default) it is the KL between the models themselves.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instructgpt.data import load_data
from instructgpt.data.formats import load_prompts
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.files import OutputDirError, atomic_write_json, atomic_write_text, is_complete
from instructgpt.infra.outputs import mark_complete, mark_started, prepare_output_dir
from instructgpt.infra.parser import StageArgs
from instructgpt.infra.processes import default_device, process_state
from instructgpt.infra.tracking import StageTracker, run_identity
from instructgpt.metrics.plots import (
    plot_frontier,
    plot_model_metrics,
    plot_overoptimization,
    plot_training_curves,
    plot_win_rates,
)
from instructgpt.modeling import check_model_path
from instructgpt.stages.eval.evaluator import Answers, Evaluator, resolve_reference
from instructgpt.stages.eval.judging import judge_description, win_rates, with_shares
from instructgpt.stages.eval.report import METRIC_COLUMNS, log_results, print_summary, render_report
from instructgpt.stages.eval.results import (
    COMPLETIONS_FILE,
    OOD_COMPLETIONS_FILE,
    PLOTS_DIR,
    REPORT_FILE,
    RESULTS_FILE,
    check_results,
    completion_rows,
    headline_pairs,
    public_metrics,
)
from instructgpt.stages.eval.settings import EvalArguments, EvalError, best_of_n, parse_models
from instructgpt.stages.eval.sweeps import checkpoint_runs, checkpoint_sweep, ppo_run_name, training_curves


def run_eval(args: EvalArguments, source: str = "instructgpt eval") -> dict[str, Any]:
    """Run the whole evaluation and write its outputs; returns the results dict written to results.json.

    Every input is checked before any model is loaded, the output directory is claimed before any is sampled, and
    the evaluation is marked finished only after every file is written and its numbers are complete.
    """
    args.validate(source)
    started = time.time()
    models, runs = check_inputs(args, source)
    prompts = load_prompts(
        args.prompts, key="--prompts", source=source, split=args.prompts_split, limit=args.max_prompts
    )
    ood_prompts, ood_groups = load_ood_prompts(args, source)
    output_dir = claim_output_dir(args, source)
    evaluator = Evaluator(args, prompts, default_device(), source)
    ref_name, ref_path = load_reference(evaluator, args, models)
    answers, ood_answers = answer_prompts(evaluator, models, ood_prompts, ref_name, ref_path)

    results = describe_run(args, models, prompts, evaluator, ref_name, ref_path)
    judged = judge_answers(evaluator, models, prompts, answers, ref_name)
    if judged["judge_counts"] is not None:
        results["judge"]["counts"] = judged["judge_counts"]
    results.update({k: judged[k] for k in ("win_rate", "metrics", "headline", "task_shares")})
    if ood_prompts:
        results["ood"] = ood_section(args, evaluator, models, ood_prompts, ood_groups, ood_answers, ref_name)

    plot_dir = output_dir / PLOTS_DIR
    ppo, plots = ppo_training(args, plot_dir)
    results.update(ppo)
    results.update(sweep_checkpoints(evaluator, args, models, runs, prompts, answers, ref_name, ref_path))
    plots.update(draw_plots(results, models, ref_name, ref_path, plot_dir))
    results["plots"] = {k: str(Path(v).relative_to(output_dir)) for k, v in plots.items()}

    completions = write_completions(output_dir / COMPLETIONS_FILE, prompts, answers)
    ood_completions = (
        write_completions(output_dir / OOD_COMPLETIONS_FILE, ood_prompts, ood_answers, ood_groups)
        if ood_prompts
        else []
    )
    if evaluator.pairwise is not None:  # HTTP requests this run made (0 when every answer came from the cache)
        results["judge"]["requests"] = evaluator.pairwise.requests
    results["seconds"] = round(time.time() - started, 1)
    atomic_write_json(output_dir / RESULTS_FILE, results)
    atomic_write_text(output_dir / REPORT_FILE, render_report(results, completions, args.num_examples, ood_completions))
    log_to_dashboards(args, results, completions, output_dir)
    check_results(results, args, output_dir)
    mark_complete(output_dir, "eval", dataclasses.asdict(args), {"headline": results["headline"]})
    print_summary(results, output_dir)
    return results


# --------------------------------------------------------------------------------------------------------------
# The steps, in the order run_eval takes them
# --------------------------------------------------------------------------------------------------------------


def check_inputs(args: EvalArguments, source: str) -> tuple[dict[str, str], dict[str, str]]:
    """``(models, runs)``: ``{name: path}`` of the models and ``{name: output_dir}`` of the training runs whose
    checkpoints are swept, each checked before any model is loaded or sampled."""
    models = parse_models(args.models)
    for name, path in models.items():
        check_model_path((best_of_n(path, f"--models {name}", source) or (0, path))[1], f"--models {name}", source)
    runs = checkpoint_runs(args, models)
    for name, run_dir in runs.items():
        if not Path(run_dir).is_dir():
            raise EvalError(f"{source}: --checkpoint_runs {name}: {run_dir} is not a directory")
    return models, runs


def load_ood_prompts(args: EvalArguments, source: str) -> tuple[list[Any], list[str] | None]:
    """The --ood_prompts (none without it) and each one's group (its --ood_group_column, when the file has one)."""
    if not args.ood_prompts:
        return [], None
    prompts = load_prompts(args.ood_prompts, key="--ood_prompts", source=source, limit=args.max_prompts)
    return prompts, load_groups(args.ood_prompts, args.ood_group_column, len(prompts), source)


def load_groups(path: str, column: str, count: int, source: str) -> list[str] | None:
    """The group of each prompt of a local .jsonl file (its ``column``), or None when the file has no such column."""
    dataset = load_data(path, key="--ood_prompts", source=source)
    if column not in dataset.column_names:
        return None
    groups = [str(g) if g is not None else "" for g in dataset[column]][:count]
    return groups if len(groups) == count else None


def claim_output_dir(args: EvalArguments, source: str) -> Path:
    """The output directory, made ready and marked started; a finished evaluation in it is refused under `resume`.

    An unfinished evaluation is simply done again (it keeps no partial state); a failed rerun deletes nothing."""
    output_dir = Path(args.output_dir)
    if is_complete(output_dir) and args.if_output_exists == "resume":
        raise OutputDirError(
            f"{source}: output_dir {output_dir} already holds a finished evaluation; it was not touched. Choose "
            "another output_dir, or set `if_output_exists: overwrite` to move it aside and evaluate again"
        )
    prepare_output_dir(output_dir, args.if_output_exists, source, stage="eval")
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_started(output_dir, "eval")
    return output_dir


def load_reference(evaluator: Evaluator, args: EvalArguments, models: dict[str, str]) -> tuple[str | None, str | None]:
    """``(name, path)`` of the KL reference (see :func:`resolve_reference`), loaded into the evaluator."""
    ref_name, ref_path = resolve_reference(args, models)
    if ref_path is not None:
        evaluator.load_reference(ref_path, key=f"--models {ref_name}" if ref_name in models else "--reference")
    return ref_name, ref_path


def answer_prompts(
    evaluator: Evaluator, models: dict[str, str], ood_prompts: list[Any], ref_name: str | None, ref_path: str | None
) -> tuple[Answers, Answers]:
    """Every model, in turn, answers the prompts and then the out-of-distribution ones (none without them)."""
    answers, ood_answers = Answers(), Answers()
    for name, path in models.items():
        is_reference = name == ref_name and path == ref_path
        answers.add(name, *evaluator.run_model(name, path, is_reference=is_reference))
        if ood_prompts:
            ood_answers.add(name, *evaluator.run_model(name, path, ood_prompts, is_reference=is_reference))
    return answers, ood_answers


def describe_run(
    args: EvalArguments,
    models: dict[str, str],
    prompts: list[Any],
    evaluator: Evaluator,
    ref_name: str | None,
    ref_path: str | None,
) -> dict[str, Any]:
    """What results.json says first: the models, the prompts, how they were sampled, the judge and the reference."""
    return {
        "models": models,
        "prompts": args.prompts,
        "num_prompts": len(prompts),
        "sampling": {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")},
        "labeler": getattr(evaluator.pairwise or evaluator.labeler, "name", None),
        "judge": judge_description(evaluator.pairwise, evaluator.labeler, args.reward_model),
        "reward_model": args.reward_model,
        "reference": {"name": ref_name, "path": ref_path} if ref_path else None,
    }


def judge_answers(
    evaluator: Evaluator,
    models: dict[str, str],
    prompts: list[Any],
    answers: Answers,
    ref_name: str | None,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The numbers of one set of prompts: the win rates (and a pairwise judge's counts), each model's metrics, the
    headline pairs and the shares correct / on task / off topic (per ``groups`` too)."""
    win_rate, counts = win_rates(evaluator.pairwise, evaluator.labeler, prompts, answers.metrics, answers.texts)
    metrics = {name: public_metrics(m) for name, m in answers.metrics.items()}
    return {
        "win_rate": win_rate,
        "judge_counts": counts,
        "metrics": metrics,
        "headline": headline_pairs(list(models), win_rate, metrics, ref_name),
        "task_shares": with_shares(answers.metrics, groups),
    }


def ood_section(
    args: EvalArguments,
    evaluator: Evaluator,
    models: dict[str, str],
    prompts: list[Any],
    groups: list[str] | None,
    answers: Answers,
    ref_name: str | None,
) -> dict[str, Any]:
    """results.json's ``ood``: the same numbers on the out-of-distribution prompts, the shares also per group."""
    judged = judge_answers(evaluator, models, prompts, answers, ref_name, groups)
    return {
        "prompts": args.ood_prompts,
        "num_prompts": len(prompts),
        "win_rate": judged["win_rate"],
        "metrics": judged["metrics"],
        **({"judge_counts": judged["judge_counts"]} if judged["judge_counts"] is not None else {}),
        "headline": judged["headline"],
        "task_shares": judged["task_shares"],
    }


def ppo_training(args: EvalArguments, plot_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """With --ppo_run: results.json's ``ppo_run`` and ``ppo_training`` (the last update's numbers), and the plot of
    its reward and KL over training (``{"training": path}``)."""
    if not args.ppo_run:
        return {}, {}
    found: dict[str, Any] = {"ppo_run": args.ppo_run}
    plots: dict[str, str] = {}
    training = training_curves(args.ppo_run)
    if training:
        plots["training"] = str(
            plot_training_curves(
                training["episode"],
                {"objective/scores": training["scores"], "objective/rlhf_reward": training["rlhf_reward"]},
                training["kl"],
                plot_dir / "ppo_training.png",
            )
        )
        found["ppo_training"] = {k: v[-1] for k, v in training.items() if v}
    return found, plots


def sweep_checkpoints(
    evaluator: Evaluator,
    args: EvalArguments,
    models: dict[str, str],
    runs: dict[str, str],
    prompts: list[Any],
    answers: Answers,
    ref_name: str | None,
    ref_path: str | None,
) -> dict[str, Any]:
    """results.json's ``sweeps`` (every run's checkpoints, one point each) and, with --ppo_run, ``checkpoints``
    (PPO's, the over-optimization check); nothing without a labeler that scores or a reference."""
    if evaluator.labeler is None or ref_path is None:
        return {}
    sweeps = {
        run_name: checkpoint_sweep(evaluator, args, prompts, ref_name, ref_path, answers.metrics, run_dir)
        for run_name, run_dir in runs.items()
    }
    found: dict[str, Any] = {"sweeps": sweeps}
    if args.ppo_run:
        found["checkpoints"] = sweeps.get(ppo_run_name(args, models) or "", [])
    return found


def draw_plots(
    results: dict[str, Any], models: dict[str, str], ref_name: str | None, ref_path: str | None, plot_dir: Path
) -> dict[str, str]:
    """The over-optimization check (two or more PPO checkpoints), the reward–KL frontier, the win rates and the
    per-model metrics, as ``{name: path}``."""
    plots: dict[str, str] = {}
    labeler = results["labeler"] or "labeler"
    ppo_sweep = results.get("checkpoints") or []
    if len(ppo_sweep) >= 2:
        plots["overoptimization"] = str(
            plot_overoptimization(
                ppo_sweep, plot_dir / "overoptimization.png", labeler=labeler, reference=ref_name or "reference"
            )
        )
    # the reference and the models listed after it (the methods trained or sampled from it); a base model listed
    # before it sits hundreds of nats away and would squash every method into one corner
    after_ref = list(models)[list(models).index(ref_name) :] if ref_name in models else list(models)
    frontier = {
        name: {
            "kl": results["metrics"][name].get("kl_to_reference"),
            "labeler_score": results["metrics"][name].get("labeler_score"),
        }
        for name in after_ref
    }
    if (
        ref_path is not None
        and sum(p["kl"] is not None and p["labeler_score"] is not None for p in frontier.values()) >= 2
    ):
        plots["frontier"] = str(
            plot_frontier(
                frontier,
                results.get("sweeps", {}),
                plot_dir / "frontier.png",
                labeler=labeler,
                reference=ref_name or "reference",
            )
        )
    if results["win_rate"]:
        pairs = [(h["model"], h["baseline"], h) for h in results["headline"] if h["win_rate"] is not None]
        plots["win_rates"] = str(plot_win_rates(pairs, plot_dir / "win_rates.png", labeler=results["labeler"] or ""))
    plots["metrics"] = str(plot_model_metrics(results["metrics"], METRIC_COLUMNS[1:], plot_dir / "model_metrics.png"))
    return plots


def write_completions(
    path: Path, prompts: list[Any], answers: Answers, groups: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One JSON line per prompt with every model's response and scores (:func:`completion_rows`); returns the rows."""
    rows = completion_rows(prompts, answers.texts, answers.metrics, groups)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def log_to_dashboards(
    args: EvalArguments, results: dict[str, Any], completions: list[dict[str, Any]], output_dir: Path
) -> None:
    """The numbers, the plots and the completions on every tracker of --report_to (none: nothing)."""
    tracker = StageTracker.start(
        args.report_to,
        project=args.project,
        stage="eval",
        config=dataclasses.asdict(args),
        output_dir=output_dir,
        identity=run_identity(output_dir, "eval", args.run_name, resuming=True),
    )
    log_results(tracker, results, completions, output_dir)
    tracker.finish()


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def arguments() -> tuple[type, ...]:
    """The dataclass an eval recipe (or the command line alone) fills."""
    return (EvalArguments,)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the evaluation from its parsed settings; returns the results written to results.json."""
    (eval_args,) = args.parts
    state = process_state()
    results: dict[str, Any] = {}
    if state.is_main_process:  # under `accelerate launch` one process evaluates and writes; the others wait
        results = run_eval(eval_args, source=args.source if args.recipe.path else "instructgpt eval")
    state.wait_for_everyone()
    return results


def main(argv: list[str] | None = None) -> None:
    stage_main("eval", arguments, run, argv, prog="instructgpt eval", description=__doc__, recipe_optional=True)


if __name__ == "__main__":
    main(sys.argv[1:])
