"""The reward model's losses: Bradley-Terry on pairs and InstructGPT's loss over all pairs of a K-way ranking.

Every loss here is a plain function of tensors, so it can be checked with a float64 ``torch.autograd.gradcheck``
(see ``tests/unit/test_losses.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
