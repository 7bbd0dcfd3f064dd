"""Losses shared by the stages, one module per objective, each a plain function of tensors.

Every loss can be checked with a float64 ``torch.autograd.gradcheck`` (see ``tests/unit/test_losses.py``):

- :mod:`.sft`: the masked next-token cross-entropy of SFT (and PPO-ptx's pretraining term);
- :mod:`.reward`: the reward model's pairwise and K-way ranking losses;
- :mod:`.dpo`: DPO on pairs and on whole rankings;
- :mod:`.ppo`: PPO's rewards, advantages, clipped losses and KL controllers (imported on its own, not here).

This file only re-exports the first three.
"""

from instructgpt.losses.dpo import dpo_pairwise_loss, plackett_luce_dpo_loss, ranking_pairs
from instructgpt.losses.reward import kway_ranking_loss, pairwise_ranking_loss, unflatten_rewards
from instructgpt.losses.sft import IGNORE_INDEX, masked_token_nll

__all__ = [
    "IGNORE_INDEX",
    "dpo_pairwise_loss",
    "kway_ranking_loss",
    "masked_token_nll",
    "pairwise_ranking_loss",
    "plackett_luce_dpo_loss",
    "ranking_pairs",
    "unflatten_rewards",
]
