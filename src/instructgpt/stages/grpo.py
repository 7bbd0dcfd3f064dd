"""GRPO, an alternative to PPO for step 3: group-relative advantages, wrapping TRL's ``GRPOTrainer``.

    instructgpt-grpo recipes/tiny/grpo.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/grpo.yaml

Same models and data as PPO and RLOO (Shao et al. 2024, "DeepSeekMath", section 4.1): the policy starts from the SFT
model; the reward is the frozen reward model of the RM stage (one, or an ensemble read through
``reward_aggregation``), normalized by the shift it stored, minus ``missing_eos_penalty`` for a response that never
ended; the prompts are PPO's. For each prompt TRL samples a group of ``num_generations`` = G responses and gives
each the advantage

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)            (``scale_rewards: group``; ``none`` keeps r_i - mean)

at every token of the response, then maximizes PPO's clipped objective with the ratio to the sampling policy, minus
``beta`` times a per-token KL estimate to the reference (the SFT model; with LoRA the adapter-free policy):

    KL_t = pi_ref / pi - log(pi_ref / pi) - 1                (Schulman's k3 estimator, as DeepSeekMath)

Unlike RLOO (TRL's sequence-level KL folded into the reward) the KL is a separate loss term, and unlike PPO there is
no value function: the group is the baseline. TRL's ``beta`` defaults to 0 (no reference model); InstructGPT's step
3 keeps the policy near the SFT model, so the recipes set it.

The prompts, the reward model, the checkpoints (each with ``policy/`` for the reward-KL frontier) and the lifecycle
are shared with RLOO (:mod:`instructgpt.infra.online_stage`); this module names TRL's trainer and its card.
"""

from __future__ import annotations

import sys
from typing import Any

from instructgpt.arguments import OnlineRLArguments
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.online_stage import OnlineMethod, run_online_stage
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args


def method() -> OnlineMethod:
    from trl import GRPOTrainer

    return OnlineMethod(
        name="grpo",
        trainer=GRPOTrainer,
        title="GRPO, group-relative policy optimization in place of InstructGPT step 3's PPO",
        summary="trained with GRPO (Shao et al. 2024)",
        settings=("loss_type", "scale_rewards", "epsilon"),
    )


def run_grpo(script_args: OnlineRLArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Run one GRPO stage as the recipe describes; returns the final metrics."""
    return run_online_stage(method(), script_args, training_args, model_args, recipe)


def arguments() -> tuple[type, ...]:
    """The dataclasses a grpo recipe fills: the script arguments, TRL's ``GRPOConfig`` and ``ModelConfig``."""
    from trl import GRPOConfig, ModelConfig

    return (OnlineRLArguments, GRPOConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "grpo", arguments(), prog="instructgpt-grpo", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_grpo(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("grpo", arguments, run, argv, prog="instructgpt-grpo", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
