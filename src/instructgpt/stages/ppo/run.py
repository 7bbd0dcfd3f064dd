"""Step 3 of InstructGPT: PPO of the SFT policy against the frozen reward model, under a KL penalty to the SFT policy.

    instructgpt-ppo recipes/tiny/ppo.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m instructgpt recipes/ppo.yaml

Each update (Ouyang et al. 2022, section 3.5; Ziegler et al. 2019; the N+ implementation details of Huang et al.):

1. **rollout** (no gradients): sample a response per prompt from the policy with the KV cache
   (:mod:`instructgpt.stages.ppo.rollout`, which also yields :math:`\\log\\pi_{old}`); one forward each of the reference
   (for the KL), the value function (:math:`V_{old}`) and the reward model (the score, normalised, minus
   ``missing_eos_penalty`` for a response that never ended). With ``use_vllm`` a colocated vLLM engine samples
   instead, holding the weights pushed after the last update, and :math:`\\log\\pi_{old}` comes from one forward of
   the policy (:mod:`instructgpt.stages.ppo.vllm_rollout`, whose ``VLLMRollout.samples`` says why);
2. **advantages**: per-token reward :math:`-\\beta\\,\\mathrm{kl}_t` plus the score on the last token, GAE, whitening
   (:mod:`instructgpt.losses.ppo`);
3. **PPO epochs**: ``num_ppo_epochs`` passes in ``num_mini_batches`` shuffled minibatches; per micro-batch one
   forward of policy and value (and the ptx text), clipped surrogate + ``vf_coef`` x clipped value loss - entropy
   bonus + ptx term; gradient accumulation, clipping, one optimizer step per minibatch;
4. β update (fixed, or the adaptive controller), learning-rate schedule step, logging, checkpoint.

Built on accelerate (DDP, DeepSpeed, FSDP, mixed precision, checkpoint state) with TRL's remaining utilities.
This module is the stage's entry; ``trainer.PPOTrainer`` holds the algorithm; beside it in ``stages/ppo/``:
``config`` (the settings), ``data`` (prompts, ptx), ``models`` (the four models), ``rollout`` and ``vllm_rollout``
(sampling), ``objective`` (advantages, the loss of a micro-batch), ``optimization`` (optimizer, schedule, KL
controller), ``divergence`` (when a run stops itself), ``metrics`` (what is logged), ``checkpointing`` (save,
rotate, resume) and ``output`` (how the output directory starts and ends).
"""

from __future__ import annotations

import sys
from typing import Any

from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.outputs import recover_final_save
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args
from instructgpt.stages.ppo.config import PPOConfig, PPOScriptArguments
from instructgpt.stages.ppo.trainer import PPOTrainer


def run_ppo(script_args: PPOScriptArguments, args: PPOConfig, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Run one PPO stage as the recipe describes; returns the final metrics."""
    if args.output_dir:
        recovered = recover_final_save(args.output_dir, "ppo", recipe.data, script_args.if_output_exists)
        if recovered is not None:
            return recovered
    return PPOTrainer(script_args, args, model_args, recipe).train()


def arguments() -> tuple[type, ...]:
    """The dataclasses a ppo recipe fills: the script arguments, :class:`PPOConfig` and TRL's ``ModelConfig``."""
    from trl import ModelConfig

    return (PPOScriptArguments, PPOConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "ppo", arguments(), prog="instructgpt-ppo", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_ppo(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("ppo", arguments, run, argv, prog="instructgpt-ppo", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
