"""Losses shared by the stages.

Every loss here is a plain function of tensors, so it can be checked with a float64
``torch.autograd.gradcheck`` (see ``tests/test_losses.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label value that marks a position as "no loss here" (the convention of transformers and TRL)."""


def masked_token_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""Masked next-token cross-entropy: the SFT loss and the PPO-ptx log-likelihood term.

    With logits :math:`z \in \mathbb{R}^{B \times T \times V}` and labels :math:`y \in \mathbb{Z}^{B \times T}`,
    position :math:`t` predicts token :math:`t+1` (the usual causal shift):

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_{b} \sum_{t < T-1} m_{b,t+1} \log \mathrm{softmax}(z_{b,t})_{y_{b,t+1}},
        \qquad m_{b,t} = [y_{b,t} \neq \text{ignore}]

    where :math:`N = \sum m` (the number of supervised tokens in this batch), or ``num_items_in_batch`` when the
    caller counts tokens over a whole gradient-accumulation step or over several processes (as transformers'
    ``Trainer`` does), so that every supervised token weighs the same however the batch is split.

    In SFT the labels hold ``ignore`` on prompt and padding tokens: InstructGPT fine-tunes on the labelers'
    demonstrations, so only the response tokens are learned; the prompt is context.
    A batch with no supervised token gives a finite 0 instead of 0/0.
    """
    shift_logits = logits[:, :-1, :]
    shift_labels = labels[:, 1:]
    mask = shift_labels != ignore_index
    # Cross-entropy needs a valid class index everywhere; masked positions are zeroed below anyway.
    safe_labels = shift_labels.masked_fill(~mask, 0)
    if shift_logits.dtype in (torch.float16, torch.bfloat16):
        shift_logits = shift_logits.float()  # log-softmax over a large vocabulary loses too much in half precision
    token_logprobs = torch.log_softmax(shift_logits, dim=-1)
    nll = -token_logprobs.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    nll = nll * mask
    denominator = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, device=nll.device)
    return nll.sum() / denominator.clamp(min=1)


def pairwise_ranking_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    r"""Bradley-Terry loss for preference pairs: :math:`-\mathrm{mean}\,\log\sigma(r_w - r_l)`.

    This is what TRL's ``RewardTrainer`` optimises (without margins) and the K = 2 case of
    :func:`kway_ranking_loss`. ``logsigmoid`` keeps it stable for large reward gaps.
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def kway_ranking_loss(rewards: torch.Tensor, num_responses: torch.Tensor | None = None) -> torch.Tensor:
    r"""InstructGPT's reward-model loss over all :math:`\binom{K}{2}` pairs of each ranking (Ouyang et al. 2022, eq. 1).

    ``rewards`` has shape ``(P, K)``: row :math:`p` holds the rewards of prompt :math:`p`'s K responses **ordered
    best first** (column 0 is the labeler's favourite). For every pair :math:`i < j`, response :math:`i` is preferred:

    .. math::
        \mathcal{L}_p = -\frac{1}{\binom{K_p}{2}} \sum_{i < j < K_p} \log\sigma(r_{p,i} - r_{p,j}),
        \qquad \mathcal{L} = \frac{1}{P}\sum_p \mathcal{L}_p

    The per-prompt average is the paper's :math:`1/\binom{K}{2}` normalisation: each prompt is one batch element,
    whatever its K, which the paper found to avoid the overfitting caused by shuffling correlated pairs as
    independent examples. Rankings may have different K: ``num_responses[p] = K_p`` and columns ``>= K_p`` are
    padding whose values are ignored.
    """
    num_prompts, k_max = rewards.shape
    if num_responses is None:
        num_responses = torch.full((num_prompts,), k_max, device=rewards.device)
    idx = torch.arange(k_max, device=rewards.device)
    # pair_mask[p, i, j] = 1 when i is ranked above j and both are real responses of prompt p.
    upper = idx.unsqueeze(1) < idx.unsqueeze(0)
    valid = idx.unsqueeze(0) < num_responses.unsqueeze(1)
    pair_mask = upper.unsqueeze(0) & valid.unsqueeze(2) & valid.unsqueeze(1)
    diffs = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # diffs[p, i, j] = r_i - r_j
    log_probs = F.logsigmoid(diffs).masked_fill(~pair_mask, 0.0)
    pairs_per_prompt = pair_mask.sum(dim=(1, 2)).clamp(min=1)
    per_prompt = -log_probs.sum(dim=(1, 2)) / pairs_per_prompt
    return per_prompt.mean()


def unflatten_rewards(flat: torch.Tensor, num_responses: torch.Tensor) -> torch.Tensor:
    """Rewards of the flattened batch as a ``(P, K_max)`` matrix, row p holding ranking p best first (0-padded).

    ``masked_scatter`` fills the valid cells row by row, in the collator's order, and passes gradients to ``flat``.
    """
    k_max = int(num_responses.max())
    valid = torch.arange(k_max, device=flat.device).unsqueeze(0) < num_responses.unsqueeze(1)
    return torch.zeros(valid.shape, dtype=flat.dtype, device=flat.device).masked_scatter(valid, flat)


# DPO on pairs and on whole rankings (its own module, like PPO's math; imported here so `losses` exports it)
from instructgpt.losses.dpo import dpo_pairwise_loss, plackett_luce_dpo_loss, ranking_pairs  # noqa: E402

