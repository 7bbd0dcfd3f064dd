"""PPO's objective on a scored rollout batch: the advantages, and the loss of one micro-batch of the update.

:func:`advantages` turns the rollout's scores and log-probs into per-token rewards, GAE advantages and returns
(step 2 of an update); :func:`micro_batch_loss` is the loss one micro-batch of the PPO epochs backpropagates (step
3): one forward of policy and value (and of the ptx text with PPO-ptx), the clipped surrogate, ``vf_coef`` x the
clipped value loss, the entropy bonus and the ptx term. The terms themselves are the pure tensor functions of
:mod:`instructgpt.losses.ppo`; the optimizer steps around the loss are :meth:`PPOTrainer.ppo_update
<instructgpt.stages.ppo.trainer.PPOTrainer.ppo_update>`.
"""

from __future__ import annotations

import torch
from torch import nn

from instructgpt.data.padding import pad_sequences
from instructgpt.losses import ppo as core
from instructgpt.stages.ppo.config import PPOConfig
from instructgpt.stages.ppo.data import ptx_labels
from instructgpt.stages.ppo.models import Sequences, trim_padding
from instructgpt.stages.ppo.rollout import Batch


def advantages(batch: Batch, scores: torch.Tensor, kl_coef: float, args: PPOConfig):
    """Per-token rewards, GAE advantages (whitened over the batch) and returns; with the KL and its penalty."""
    rewards, non_score_reward, kl = core.per_token_rewards(
        scores, batch.logprobs, batch.ref_logprobs, batch.mask, kl_coef, args.kl_estimator
    )
    if args.whiten_rewards:
        rewards = core.masked_whiten(rewards, batch.mask, shift_mean=False)
    advantages, returns = core.compute_gae(rewards, batch.values, batch.mask, args.gamma, args.lam)
    advantages = core.masked_whiten(advantages, batch.mask)
    return advantages, returns, non_score_reward, kl


def micro_batch_loss(
    model: nn.Module,
    args: PPOConfig,
    batch: Batch,
    idx: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    weight: float,
    ptx_ids: list[list[int]] | None,
    pad_token_id: int,
) -> tuple[torch.Tensor, dict]:
    """Loss of the rows ``idx`` of ``batch``, with its statistics; ``weight`` rescales its token-mean terms (see
    :meth:`~instructgpt.stages.ppo.trainer.PPOTrainer.ppo_update`). ``model`` is the prepared
    :class:`~instructgpt.stages.ppo.models.PolicyAndValue`; ``ptx_ids`` the ptx texts of this micro-batch, if any."""
    query, query_mask, response, mask = trim_padding(
        batch.query[idx], batch.query_mask[idx], batch.response[idx], batch.mask[idx]
    )
    width = response.shape[1]
    seqs = Sequences.build(query, query_mask, response, mask)
    ptx_inputs: dict[str, torch.Tensor] = {}
    if ptx_ids is not None:
        ids, attention = pad_sequences(ptx_ids, pad_token_id)
        ptx_inputs = {"ptx_input_ids": ids.to(query.device), "ptx_attention_mask": attention.to(query.device)}
    logits, values, ptx_logits = model(
        **seqs.model_inputs(), response_width=width, temperature=args.temperature, **ptx_inputs
    )
    logprobs = core.logprobs_from_logits(logits, response)
    pg_loss, pg_stats = core.policy_loss(
        logprobs, batch.logprobs[idx, :width], advantages[idx, :width], mask, args.cliprange
    )
    vf_loss, vf_clipfrac = core.value_loss(
        values, batch.values[idx, :width], returns[idx, :width], mask, args.cliprange_value
    )
    loss = pg_loss + args.vf_coef * vf_loss
    if args.entropy_coef > 0:
        entropy = core.entropy_from_logits(logits)
        loss = loss + core.entropy_bonus(entropy, mask, args.entropy_coef)
    loss = loss * weight
    if args.entropy_coef <= 0:
        with torch.no_grad():
            entropy = core.entropy_from_logits(logits)
    stats = {
        "policy/approxkl_avg": pg_stats.approxkl,
        "policy/clipfrac_avg": pg_stats.clipfrac,
        "loss/policy_avg": pg_loss.detach(),
        "loss/value_avg": vf_loss.detach(),
        "val/clipfrac_avg": vf_clipfrac,
        "policy/entropy_avg": core.masked_mean(entropy.detach(), mask),
        "val/ratio": pg_stats.ratio,
    }
    if ptx_logits is not None:
        labels = ptx_labels(ptx_inputs["ptx_input_ids"], ptx_inputs["ptx_attention_mask"])
        ptx = core.ptx_loss(ptx_logits, labels, args.ptx_coef)
        loss = loss + ptx
        stats["loss/ptx_avg"] = ptx.detach() / args.ptx_coef  # the NLL itself, comparable across coefficients
    return loss, stats
