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

``methods: [ppo, dpo, rloo, best_of_8]`` compares alternatives to step 3 on the same data (AlpacaFarm's table,
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
import dataclasses
import gc
import json
import os
import re
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, atomic_write_json, atomic_write_text, is_complete
from instructgpt.infra.hub import add_card_section
from instructgpt.infra.log import get_logger
from instructgpt.infra.outputs import mark_complete
from instructgpt.infra.parser import Recipe, RecipeError, RecipeParser, StageArgs, load_yaml, split_argv
from instructgpt.infra.processes import process_state
from instructgpt.infra.tracking import GROUP_ENV
from instructgpt.infra.validation import range_problems
from instructgpt.stages import load_stage

logger = get_logger(__name__)

STATE_FILE = "pipeline.json"
TRAINING_STAGES = ("pretrain", "sft", "collect", "rm", "ppo", "dpo", "rloo")
TRAINED_METHODS = ("ppo", "dpo", "rloo")  # methods that are a training stage with a recipe key of the same name
BEST_OF = re.compile(r"best_of_(\d+)")
StageSpec = str | dict[str, Any] | None


class PipelineError(InstructGPTError):
    """A pipeline recipe that cannot be run, or a stage that failed or is stale."""


def _spec_field(help_text: str, default: str | None = None) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass
class PipelineArguments:
    """The pipeline recipe: where its outputs go, which stage recipes to run, and how many rounds."""

    output_dir: str = field(
        default="runs/tiny/pipeline",
        metadata={
            "help": "Root of the run: each stage writes <output_dir>/<stage>, later rounds <output_dir>/round<r>/."
        },
    )
    pretrain: StageSpec = _spec_field(
        "Stage recipe of the base model (tiny world only): a path, or a mapping (embedded recipe; `recipe: PATH` "
        "inside starts from a file). Null: no pretraining, SFT starts from its recipe's model_name_or_path."
    )
    sft: StageSpec = _spec_field("Stage recipe of SFT (required): a path or a mapping, as for `pretrain`.")
    collect: StageSpec = _spec_field(
        "Stage recipe of comparison collection. Null: the reward model trains on its recipe's own dataset."
    )
    rm: StageSpec = _spec_field("Stage recipe of the reward model (required with `ppo`).")
    ppo: StageSpec = _spec_field("Stage recipe of PPO. Null: stop after the reward model.")
    dpo: StageSpec = _spec_field(
        "Stage recipe of DPO (a method in `methods`): trained from the SFT model on the collected rankings."
    )
    rloo: StageSpec = _spec_field(
        "Stage recipe of RLOO (a method in `methods`): trained from the SFT model against the reward model."
    )
    methods: list[str] | None = field(
        default=None,
        metadata={
            "help": "The alternatives to compare, each from the same SFT model, reward model and rankings: "
            "`ppo`, `dpo`, `rloo` (each needs its stage recipe key) and `best_of_N` (N samples from the SFT "
            "policy, the reward model's favourite kept; no training). Default: the methods whose recipes are "
            "given."
        },
    )
    eval: dict[str, Any] | None = field(
        default_factory=dict,
        metadata={
            "help": "Settings of the evaluation (keys of `instructgpt eval`: prompts, max_new_tokens, "
            "temperature, labeler, ...); the pipeline fills in models, output_dir, reward_model, reference "
            "and ppo_run. Null: no evaluation."
        },
    )
    rounds: int = field(
        default=1,
        metadata={
            "range": ">= 1",
            "help": "Rounds of collect -> RM -> PPO. Round r > 1 collects from round r-1's PPO policy, "
            "retrains the RM on all comparisons so far and runs PPO again from the SFT policy.",
        },
    )
    base_name: str = field(default="base", metadata={"help": "Name of the base model in the evaluation."})
    report_to: str | None = field(
        default=None,
        metadata={
            "help": "Set `report_to` of every stage and of the evaluation: `trackio`, `wandb`, `tensorboard`, "
            "`mlflow`, ..., several separated by commas, or `none`."
        },
    )
    project: str | None = field(
        default=None, metadata={"help": "Dashboard project (W&B, Trackio, ...) of every stage (default: each its own)."}
    )
    run_name: str | None = field(
        default=None, metadata={"help": "Name of the pipeline (the dashboards' group prefix)."}
    )
    wandb_group: str | None = field(
        default=None,
        metadata={
            "help": "Group of every stage's run on W&B and Trackio. Default: `<run_name>-<start time>`, kept "
            "across resumes."
        },
    )

    def __post_init__(self) -> None:
        if problems := range_problems(self):  # built directly, not parsed from a recipe
            raise ValueError("; ".join(problems))
        if self.sft is None:
            raise ValueError("`sft` is required (the path of an SFT recipe, or an embedded one)")
        if self.ppo is not None and self.rm is None:
            raise ValueError("`ppo` needs `rm` (the reward model it optimizes against)")
        if self.rounds > 1 and (self.collect is None or self.ppo is None):
            raise ValueError(
                "`rounds` > 1 needs `collect`, `rm` and `ppo` (each round collects from the last PPO policy)"
            )
        given = [m for m in TRAINED_METHODS if getattr(self, m) is not None]
        if self.methods is None:
            self.methods = given
        for method in self.methods:
            if method in TRAINED_METHODS:
                if getattr(self, method) is None:
                    raise ValueError(f"`methods` lists {method} but `{method}` (its stage recipe) is not set")
            elif BEST_OF.fullmatch(method) is None or int(method[len("best_of_") :]) < 1:
                raise ValueError(f"`methods`: unknown method {method!r}; expected ppo, dpo, rloo or best_of_N (N >= 1)")
            if method != "dpo" and self.rm is None:
                raise ValueError(f"`methods`: {method} needs `rm` (the reward model it optimizes or picks with)")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"`methods` names a method twice: {self.methods}")
        self.skipped_methods = [m for m in given if m not in self.methods]  # said in the plan, not silently dropped
        if self.rounds > 1 and set(self.methods) != {"ppo"}:
            raise ValueError("`rounds` > 1 runs InstructGPT's PPO loop only; compare `methods` with `rounds: 1`")


@dataclass
class Stage:
    """One step of the plan: which stage module runs, from which recipe, with which overrides, writing where."""

    label: str  # "sft", "rm (round 2)"
    stage: str  # key of instructgpt.stages.STAGES
    recipe: Path  # the stage recipe file the stage parses
    overrides: dict[str, Any]  # --key value on top of it (the pipeline's wiring last)
    output_dir: Path
    inputs: list[Path] = field(default_factory=list)  # output dirs of the stages it reads
    merge_rankings: list[Path] = field(default_factory=list)  # rounds > 1: every round's rankings, merged first
    cli_keys: set[str] = field(default_factory=set)  # overrides that came from the command line, as strings
    args: StageArgs | None = None  # the parsed settings, built (and so validated) before any stage runs

    def argv(self) -> list[str]:
        return [str(self.recipe)] + [f"--{k}={cli_value(v)}" for k, v in self.overrides.items()]

    def settings(self) -> dict[str, Any]:
        """The stage's effective recipe keys (file, then overrides), e.g. to read its model path."""
        return {**load_yaml(self.recipe), **self.overrides}

    def build(self) -> StageArgs:
        """Parse the stage's settings into its dataclasses, exactly as its own command line would."""
        settings = self.settings()
        declared = settings.pop("stage", self.stage)
        if declared != self.stage:
            raise PipelineError(f"{self.recipe}: a `stage: {declared}` recipe is given as the `{self.stage}` stage")
        parser = RecipeParser(self.stage, load_stage(self.stage).arguments())
        recipe = Recipe(path=self.recipe, stage=self.stage, data={"stage": self.stage, **settings})
        self.args = parser.build(settings, recipe, cli_keys=self.cli_keys)
        return self.args


def cli_value(value: Any) -> str:
    """A recipe value as the stage's command-line parser reads it back (``--key=value``: any text is safe)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # flow-style YAML, which the recipe parser loads for list and dict keys
    return str(value)


# --------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------


class Planner:
    """Turns the pipeline recipe into the ordered list of stages with their wiring."""

    def __init__(self, args: PipelineArguments, recipe: Recipe, stage_overrides: dict[str, dict[str, str]]):
        self.args, self.source = args, recipe.source
        self.root = Path(args.output_dir)
        self.stage_overrides = stage_overrides

    def resolve(self, name: str, spec: StageSpec, label: str) -> tuple[Path, dict[str, Any]]:
        """The stage recipe file and the overrides a spec gives (an embedded recipe is written to a file)."""
        if isinstance(spec, str):
            path = Path(spec)
            if not path.is_file():
                raise PipelineError(f"{self.source}: `{name}`: stage recipe {spec} not found")
            return path, {}
        if isinstance(spec, dict):
            spec = dict(spec)
            base = spec.pop("recipe", None)
            if base is not None:
                if not Path(base).is_file():
                    raise PipelineError(f"{self.source}: `{name}.recipe`: stage recipe {base} not found")
                return Path(base), spec
            import yaml

            path = self.root / "recipes" / f"{label.replace(' ', '-').replace('(', '').replace(')', '')}.yaml"
            atomic_write_text(path, yaml.safe_dump({"stage": name, **spec}, sort_keys=False))
            return path, {}
        raise PipelineError(f"{self.source}: `{name}` must be a recipe path or a mapping, got {type(spec).__name__}")

    def stage(self, name: str, label: str, output_dir: Path, wiring: dict[str, Any], inputs: list[Path]) -> Stage:
        recipe_path, overrides = self.resolve(name, getattr(self.args, name), label)
        user = {**overrides, **self.stage_overrides.get(name, {})}
        clash = sorted(set(user) & (set(wiring) | {"if_output_exists"}))
        if clash:
            raise PipelineError(
                f"{self.source}: `{name}`: {', '.join(f'`{k}`' for k in clash)} is set by the pipeline (it wires the "
                "stages together); change the pipeline's output_dir or the stage recipe instead"
            )
        common: dict[str, Any] = {"if_output_exists": "resume"}
        if self.args.report_to is not None:
            common["report_to"] = self.args.report_to
        if self.args.project is not None:
            common["project"] = self.args.project
        return Stage(
            label,
            name,
            recipe_path,
            {**user, **common, **wiring},
            output_dir,
            inputs,
            cli_keys=set(self.stage_overrides.get(name, {})),
        )

    def plan(self) -> tuple[list[Stage], dict[str, Any] | None]:
        """The training stages in order, and the evaluation's settings (None without one); see
        :meth:`eval_settings`."""
        args, root = self.args, self.root
        stages: list[Stage] = []
        pretrain_dir = root / "pretrain"
        sft_wiring: dict[str, Any] = {"output_dir": str(root / "sft")}
        if args.pretrain is not None:
            stages.append(self.stage("pretrain", "pretrain", pretrain_dir, {"output_dir": str(pretrain_dir)}, []))
            sft_wiring["model_name_or_path"] = str(pretrain_dir)
        sft = self.stage("sft", "sft", root / "sft", sft_wiring, [pretrain_dir] if args.pretrain is not None else [])
        stages.append(sft)
        sft_dir = sft.output_dir

        policies: list[tuple[str, Path]] = []  # PPO policies by round, for the evaluation
        rm_dir: Path | None = None
        rankings: list[Path] = []
        for r in range(1, args.rounds + 1):
            where = root if r == 1 else root / f"round{r}"
            suffix = "" if r == 1 else f" (round {r})"
            rm_wiring: dict[str, Any] = {}
            rm_inputs = [sft_dir]
            if args.collect is not None:
                policy = sft_dir if r == 1 else policies[-1][1]
                collect_dir = where / "collect"
                stages.append(
                    self.stage(
                        "collect",
                        "collect" + suffix,
                        collect_dir,
                        {"model_name_or_path": str(policy), "output_dir": str(collect_dir)},
                        [policy],
                    )
                )
                rankings.append(collect_dir / "rankings.jsonl")
                rm_inputs.append(collect_dir)
                rm_wiring["dataset_name"] = str(rankings[0] if r == 1 else where / "rm_data" / "rankings.jsonl")
            if args.rm is not None:
                rm_dir = where / "rm"
                stage = self.stage(
                    "rm",
                    "rm" + suffix,
                    rm_dir,
                    {"model_name_or_path": str(sft_dir), "output_dir": str(rm_dir), **rm_wiring},
                    rm_inputs,
                )
                if r > 1 and args.collect is not None:
                    stage.merge_rankings = list(rankings)
                stages.append(stage)
            if args.ppo is not None and "ppo" in args.methods:
                ppo_dir = where / "ppo"
                stages.append(
                    self.stage(
                        "ppo",
                        "ppo" + suffix,
                        ppo_dir,
                        {
                            "model_name_or_path": str(sft_dir),
                            "reward_model_path": str(rm_dir),
                            "output_dir": str(ppo_dir),
                        },
                        [sft_dir, rm_dir],
                    )
                )
                policies.append(("ppo" if args.rounds == 1 else f"ppo_r{r}", ppo_dir))
        if args.rounds > 1:
            self._name_later_rounds(stages)
        for method in args.skipped_methods:
            logger.info(f"{self.source}: `{method}` has a recipe but is not in `methods` {args.methods}: not run")
        for method in args.methods:
            if method == "dpo":
                dpo_dir = root / "dpo"
                wiring = {"model_name_or_path": str(sft_dir), "output_dir": str(dpo_dir)}
                inputs = [sft_dir]
                if rankings:  # the same comparisons the reward model learned from
                    wiring["dataset_name"] = str(rankings[0])
                    inputs.append(rankings[0].parent)
                stages.append(self.stage("dpo", "dpo", dpo_dir, wiring, inputs))
                policies.append(("dpo", dpo_dir))
            elif method == "rloo":
                rloo_dir = root / "rloo"
                stages.append(
                    self.stage(
                        "rloo",
                        "rloo",
                        rloo_dir,
                        {
                            "model_name_or_path": str(sft_dir),
                            "reward_model_path": str(rm_dir),
                            "output_dir": str(rloo_dir),
                        },
                        [sft_dir, rm_dir],
                    )
                )
                policies.append(("rloo", rloo_dir))
        policies.sort(key=lambda p: args.methods.index(p[0]) if p[0] in args.methods else -1)
        return stages, self.eval_settings(stages, sft, policies, rm_dir)

    def _name_later_rounds(self, stages: list[Stage]) -> None:
        """W&B run names of later rounds get a ``-round<r>`` suffix, so the group shows every round apart."""
        for stage in stages:
            if "(round " in stage.label and "run_name" not in stage.overrides:
                name = stage.settings().get("run_name")
                if name:
                    stage.overrides["run_name"] = f"{name}-round{stage.label.split('round ')[1].rstrip(')')}"

    def eval_settings(
        self, stages: list[Stage], sft: Stage, policies: list[tuple[str, Path]], rm_dir: Path | None
    ) -> dict[str, Any] | None:
        if self.args.eval is None:
            return None
        settings = {**self.args.eval, **self.stage_overrides.get("eval", {})}
        wired = {"models", "output_dir", "reward_model", "ppo_run", "checkpoint_runs"}
        clash = sorted(set(settings) & wired)
        if clash:
            raise PipelineError(f"{self.source}: `eval`: {', '.join(f'`{k}`' for k in clash)} is set by the pipeline")
        sft_settings = sft.settings()
        base = str(self.root / "pretrain") if self.args.pretrain is not None else sft_settings.get("model_name_or_path")
        models = [f"{self.args.base_name}={base}", f"sft={sft.output_dir}"] + [f"{n}={p}" for n, p in policies]
        models += [f"{m}={m}:{sft.output_dir}" for m in self.args.methods if BEST_OF.fullmatch(m)]
        settings.update(models=models, output_dir=str(self.root / "eval"))
        if rm_dir is not None:
            settings["reward_model"] = str(rm_dir)
        ppo_runs = [p for n, p in policies if n.startswith("ppo")]
        if ppo_runs:
            settings["ppo_run"] = str(ppo_runs[-1])
        rloo_runs = [f"{n}={p}" for n, p in policies if n == "rloo"]
        if rloo_runs:
            settings["checkpoint_runs"] = rloo_runs
        if "prompt_template" not in settings and sft_settings.get("prompt_template"):
            settings["prompt_template"] = sft_settings["prompt_template"]  # the base model reads prompts as SFT did
        if self.args.report_to is not None and "report_to" not in settings:
            settings["report_to"] = self.args.report_to
        if self.args.project is not None and "project" not in settings:
            settings["project"] = self.args.project
        if "run_name" not in settings and self.args.run_name:
            settings["run_name"] = f"{self.args.run_name}-eval"
        return settings


# --------------------------------------------------------------------------------------------------------------
# Running stages
# --------------------------------------------------------------------------------------------------------------


class Stopwatch:
    """Wall-clock and CPU seconds of a stage. CPU time (this process, all threads) tells how long a stage would take
    on a quiet machine when the wall clock was inflated by other jobs sharing the cores."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def read(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self.wall, 1), "cpu_seconds": round(self._cpu() - self.cpu, 1)}


def marker_time(output_dir: Path) -> float | None:
    marker = Path(output_dir) / RUN_MARKER
    return marker.stat().st_mtime if marker.is_file() else None


def stale_inputs(stage: Stage) -> list[Path]:
    """Inputs that finished after this (finished) stage: it was built from an older version of them."""
    done = marker_time(stage.output_dir)
    if done is None:
        return []
    return [p for p in stage.inputs if (marker_time(p) or 0.0) > done]


def status_of(output_dir: Path) -> str:
    if is_complete(output_dir):
        return "done"
    if output_dir.is_dir() and any(output_dir.iterdir()):
        return "interrupted"
    return "to do"


def reset_accelerate_state() -> None:
    """Let the next stage build its own ``Accelerator``.

    accelerate keeps the mixed-precision and gradient-accumulation settings of the first ``Accelerator`` in
    process-wide singletons (``AcceleratorState``, ``GradientState``); the next stage in the same process could
    otherwise inherit them or be refused for asking different ones. ``PartialState`` (process group, device) stays:
    it is the same for every stage, and tearing down a process group under ``accelerate launch`` would break it.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def close_wandb_run() -> None:
    """A stage that failed may leave its W&B or Trackio run open; close it so the next one starts cleanly."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)
    trackio = sys.modules.get("trackio")
    if trackio is not None and trackio.context_vars.current_run.get() is not None:
        trackio.finish()


def run_stage(stage: Stage) -> None:
    """Run one stage in this process from its parsed settings; its error names the stage."""
    try:
        load_stage(stage.stage).run(stage.args)
    except PipelineError:
        raise
    except InstructGPTError as err:
        raise PipelineError(
            f"stage `{stage.label}` failed: {err}. After fixing it, rerun the same command: finished stages are skipped"
        ) from None


def merge_rankings(parts: list[Path], target: Path) -> None:
    """Every round's comparisons in one file for the reward model (InstructGPT retrains on all data collected)."""
    text = "".join(p.read_text(encoding="utf-8") for p in parts)
    atomic_write_text(target, text)


class Console:
    """Banners, tables and messages with rich (main process only)."""

    def __init__(self) -> None:
        from rich.console import Console as RichConsole

        self.main = process_state().is_main_process
        self.rich = RichConsole(highlight=False)

    def banner(self, index: int, total: int, stage: Stage | str, status: str) -> None:
        if not self.main:
            return
        label = stage.label if isinstance(stage, Stage) else stage
        self.rich.rule(f"[bold cyan]Stage {index}/{total}: {label}[/] [dim]({status})[/]")

    def print(self, message: str) -> None:
        if self.main:
            self.rich.print(message)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        if not self.main:
            return
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        self.rich.print(table)


def load_state(root: Path) -> dict[str, Any]:
    path = root / STATE_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            pass
    return {}


def run_pipeline(
    args: PipelineArguments, recipe: Recipe, stage_overrides: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """Run (or resume) every stage of the plan, then the evaluation; returns the pipeline's summary."""

    console = Console()
    root = Path(args.output_dir)
    stages, eval_settings = Planner(args, recipe, stage_overrides or {}).plan()
    # every stage's recipe and overrides are checked before the first stage trains
    for stage in stages:
        try:
            stage.build()
        except PipelineError:
            raise
        except InstructGPTError as err:
            raise PipelineError(f"stage `{stage.label}`: {err}") from None
    eval_args = None
    if eval_settings is not None:
        eval_args = build_eval_args(eval_settings, recipe.source, set((stage_overrides or {}).get("eval", {})))

    saved = load_state(root)
    # this pipeline's own group first (kept across resumes), then one the user exported, else a new one
    group = args.wandb_group or saved.get("wandb_group") or os.environ.get(GROUP_ENV)
    if group is None:
        group = f"{args.run_name or root.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    timings: dict[str, Any] = dict(saved.get("stages", {}))
    summary: dict[str, Any] = {
        "recipe": recipe.source,
        "output_dir": str(root),
        "wandb_group": group,
        "stages": timings,
    }
    with environment(GROUP_ENV, group):
        run_plan(stages, eval_args, recipe, summary, console)
    return summary


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
    root, group, timings = Path(summary["output_dir"]), summary["wandb_group"], summary["stages"]

    def save() -> None:
        if state.is_main_process:
            atomic_write_json(root / STATE_FILE, summary)

    total = len(stages) + (eval_args is not None)
    console.table(
        f"Pipeline {recipe.source} -> {root} (W&B group {group})",
        ["#", "stage", "recipe", "output", "status"],
        [[str(i + 1), s.label, str(s.recipe), str(s.output_dir), status_of(s.output_dir)] for i, s in enumerate(stages)]
        + (
            [[str(total), "eval", "-", eval_args.output_dir, status_of(Path(eval_args.output_dir))]]
            if eval_args
            else []
        ),
    )
    pipeline_start = time.time()
    for index, stage in enumerate(stages, start=1):
        status = status_of(stage.output_dir)
        if status == "done":
            stale = stale_inputs(stage)
            if stale:
                raise PipelineError(
                    f"{stage.output_dir} ({stage.label}) finished before its input {stale[0]} was trained again, so it "
                    f"was built from the old one; move {stage.output_dir} (and the stages after it) aside and rerun"
                )
            console.banner(index, total, stage, "finished earlier: skipped")
            continue
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
            raise PipelineError(
                f"stage `{stage.label}` returned without finishing: no {RUN_MARKER} in {stage.output_dir}"
            )
        timings[stage.label] = {"output_dir": str(stage.output_dir), **clock.read(), "resumed": status == "interrupted"}
        seconds = timings[stage.label]["seconds"]
        save()
        console.print(f"[green]{stage.label} finished in {seconds:.0f} s[/] -> {stage.output_dir}")

    if eval_args is not None:
        results = run_pipeline_eval(eval_args, stages, console, total, timings, save)
        summary["headline"] = results.get("headline", []) if results else []
        summary["shares"] = {  # what the win rate hides, over all held-out prompts (per family: results.json)
            name: {key: cell["share"] for key, cell in groups["all"].items()}
            for name, groups in (results or {}).get("task_shares", {}).items()
        }
    summary["seconds_this_run"] = round(time.time() - pipeline_start, 1)
    save()
    if state.is_main_process:
        mark_complete(root, "pipeline", recipe.data, {"headline": summary.get("headline", []), "stages": timings})
    print_final_summary(console, stages, eval_args, summary)


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
                f"Held-out prompts: `{results['prompts']}` ({results['num_prompts']}); judge: {results.get('labeler')}.",
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


def print_final_summary(console: Console, stages: list[Stage], eval_args: Any, summary: dict[str, Any]) -> None:
    rows = []
    for stage in stages:
        t = summary["stages"].get(stage.label, {})
        rows.append(
            [
                stage.label,
                str(stage.output_dir),
                f"{t['seconds']:.0f}" if "seconds" in t else "-",
                f"{t['cpu_seconds']:.0f}" if "cpu_seconds" in t else "-",
            ]
        )
    if eval_args is not None:
        t = summary["stages"].get("eval", {})
        rows.append(
            [
                "eval",
                eval_args.output_dir,
                f"{t['seconds']:.0f}" if "seconds" in t else "-",
                f"{t['cpu_seconds']:.0f}" if "cpu_seconds" in t else "-",
            ]
        )
    console.table(
        "Where everything is (seconds: the last run of each stage)", ["stage", "output", "seconds", "CPU s"], rows
    )
    headline = summary.get("headline", [])
    for h in [h for h in headline if h.get("reference") in (h["model"], h["baseline"])] or headline:
        kl = h.get("kl_to_reference")
        kl_text = (
            f"; KL({h['model']}||{h['reference']}) = {kl:.2f} nats" if kl is not None and h.get("reference") else ""
        )
        console.print(
            f"[bold]{h['model']} vs {h['baseline']}[/]: win rate {100 * h['win_rate']:.1f}% "
            f"[{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}]{kl_text}"
        )
    for name, shares in summary.get("shares", {}).items():
        console.print(
            f"[bold]{name}[/]: correct {100 * shares['correct']:.1f}%, on task {100 * shares['on_task']:.1f}%, "
            f"off topic {100 * shares['off_topic']:.1f}%"
        )
    if eval_args is not None:
        out = Path(eval_args.output_dir)
        console.print(f"Report: {out / 'report.md'}  Results: {out / 'results.json'}  Plots: {out / 'plots'}/")


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
