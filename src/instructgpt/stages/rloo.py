"""RLOO, an alternative to PPO for step 3: REINFORCE with a leave-one-out baseline, wrapping TRL's ``RLOOTrainer``.

    instructgpt-rloo recipes/tiny/rloo.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/rloo.yaml

Same models and data as PPO (Ahmadian et al. 2024, "Back to Basics"): the policy starts from the SFT model; the reward
is the frozen reward model of the RM stage, normalized by the shift it stored (:class:`instructgpt.modeling.reward.
RewardModelReward`, the scores of ``score_responses``), minus ``missing_eos_penalty`` for a response that never
ended; the prompts are PPO's. For each prompt TRL samples ``num_generations`` = k responses and, per response,

    R_i = r(x, y_i) - beta * sum_t [log pi(y_i,t | .) - log pi_SFT(y_i,t | .)]      (TRL's sequence-level k1 KL)
    A_i = R_i - 1/(k-1) * sum_{j != i} R_j                                          (the leave-one-out baseline)

and maximizes ``A_i * log pi(y_i | x)`` with PPO's clipped ratio when ``num_iterations`` > 1. There is no value
function: the other k-1 samples of the same prompt are the baseline. The reference is the SFT model itself; with LoRA
it is the adapter-free policy (no second copy).

The prompts, the reward model (a single one or an ensemble, through ``reward_aggregation``), the checkpoints (each
with ``policy/`` for the reward-KL frontier) and the lifecycle are shared with GRPO
(:mod:`instructgpt.infra.online_stage`); this module names TRL's trainer and its card.
"""

from __future__ import annotations

import sys
from typing import Any

from instructgpt.arguments import OnlineRLArguments
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.online_stage import OnlineMethod, run_online_stage
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args


def method() -> OnlineMethod:
    from trl import RLOOTrainer

    return OnlineMethod(
        name="rloo",
        trainer=RLOOTrainer,
        title="RLOO, REINFORCE leave-one-out in place of InstructGPT step 3's PPO",
        summary="trained with RLOO (Ahmadian et al. 2024)",
    )


def run_rloo(script_args: OnlineRLArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Run one RLOO stage as the recipe describes; returns the final metrics."""
    return run_online_stage(method(), script_args, training_args, model_args, recipe)


def arguments() -> tuple[type, ...]:
    """The dataclasses an rloo recipe fills: the script arguments, TRL's ``RLOOConfig`` and ``ModelConfig``."""
    from trl import ModelConfig, RLOOConfig

    return (OnlineRLArguments, RLOOConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "rloo", arguments(), prog="instructgpt-rloo", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_rloo(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("rloo", arguments, run, argv, prog="instructgpt-rloo", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
