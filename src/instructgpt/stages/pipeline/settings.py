"""The pipeline recipe's settings (``PipelineArguments``) and one step of its plan (``Stage``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.parser import Recipe, RecipeParser, StageArgs, load_yaml
from instructgpt.infra.validation import range_problems
from instructgpt.stages import load_stage

TRAINING_STAGES = ("pretrain", "sft", "collect", "rm", "ppo", "dpo", "rloo", "grpo")
TRAINED_METHODS = ("ppo", "dpo", "rloo", "grpo")  # methods that are a training stage with a recipe key of that name
ONLINE_METHODS = ("rloo", "grpo")  # the SFT policy against the reward model on TRL's trainers (infra/online_stage)
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
    grpo: StageSpec = _spec_field(
        "Stage recipe of GRPO (a method in `methods`): trained from the SFT model against the reward model."
    )
    methods: list[str] | None = field(
        default=None,
        metadata={
            "help": "The alternatives to compare, each from the same SFT model, reward model and rankings: "
            "`ppo`, `dpo`, `rloo`, `grpo` (each needs its stage recipe key) and `best_of_N` (N samples from the SFT "
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
                raise ValueError(
                    f"`methods`: unknown method {method!r}; expected ppo, dpo, rloo, grpo or best_of_N (N >= 1)"
                )
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
