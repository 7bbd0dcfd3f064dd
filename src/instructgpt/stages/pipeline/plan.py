"""The plan: which stages run, in which order, from which recipes, with which overrides wiring them together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructgpt.infra.files import atomic_write_text
from instructgpt.infra.log import get_logger
from instructgpt.infra.parser import Recipe
from instructgpt.stages.pipeline.settings import (
    BEST_OF,
    ONLINE_METHODS,
    PipelineArguments,
    PipelineError,
    Stage,
    StageSpec,
)

logger = get_logger(__name__)


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
            elif method in ONLINE_METHODS:  # RLOO, GRPO: the SFT policy against the reward model, as PPO
                online_dir = root / method
                stages.append(
                    self.stage(
                        method,
                        method,
                        online_dir,
                        {
                            "model_name_or_path": str(sft_dir),
                            "reward_model_path": str(rm_dir),
                            "output_dir": str(online_dir),
                        },
                        [sft_dir, rm_dir],
                    )
                )
                policies.append((method, online_dir))
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
        online_runs = [f"{n}={p}" for n, p in policies if n in ONLINE_METHODS]  # their checkpoints' policies
        if online_runs:
            settings["checkpoint_runs"] = online_runs
        if "prompt_template" not in settings and sft_settings.get("prompt_template"):
            settings["prompt_template"] = sft_settings["prompt_template"]  # the base model reads prompts as SFT did
        if self.args.report_to is not None and "report_to" not in settings:
            settings["report_to"] = self.args.report_to
        if self.args.project is not None and "project" not in settings:
            settings["project"] = self.args.project
        if "run_name" not in settings and self.args.run_name:
            settings["run_name"] = f"{self.args.run_name}-eval"
        return settings
