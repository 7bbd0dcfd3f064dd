r"""Direct Preference Optimization (Rafailov et al. 2023) on pairs and on whole rankings, as pure tensor functions.

DPO solves InstructGPT's KL-regularised objective :math:`\max_\pi \mathbb{E}[r(x,y)] - \beta\,
\mathrm{KL}(\pi\,\|\,\pi_{ref})` in closed form: its optimum is :math:`\pi^*(y|x) \propto \pi_{ref}(y|x)\,
e^{r(x,y)/\beta}`, so every policy defines an *implicit reward*

.. math::
    \hat r(x, y) = \beta\, h(x, y) + \beta \log Z(x), \qquad h(x, y) = \log\pi(y|x) - \log\pi_{ref}(y|x)

where :math:`\log\pi(y|x)` is the **summed** log-probability of the response tokens given the prompt, and
:math:`Z(x)` depends on the prompt only. Put into a preference model whose probabilities depend on reward
*differences* between responses to the same prompt, :math:`Z(x)` cancels, and fitting the preference model by
maximum likelihood trains the policy directly, with no reward model and no sampling:

* Bradley–Terry on a pair (:func:`dpo_pairwise_loss`, the paper's eq. 7);
* Plackett–Luce on a ranking of K responses (:func:`plackett_luce_dpo_loss`, the paper's appendix A.3).

At K = 2 the two are the same function (``tests/unit/test_dpo_losses.py`` checks it). Both are written for log-probs
that the caller has already summed over each response's tokens (TRL's ``DPOTrainer`` computes them the same way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_pairwise_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    r"""DPO's loss on preference pairs :math:`y_w \succ y_l` (Rafailov et al. 2023, eq. 7), averaged over pairs:

    .. math::
        \mathcal{L} = -\frac{1}{N}\sum_{n} \log\sigma\Big(\beta\big[(\log\pi(y_w) - \log\pi_{ref}(y_w))
            - (\log\pi(y_l) - \log\pi_{ref}(y_l))\big]\Big)

    Every argument has shape ``(N,)`` and holds summed sequence log-probs. This is the Bradley–Terry likelihood of
    the pair under the implicit reward :math:`\beta h`; it is what TRL's ``DPOTrainer`` minimises with
    ``loss_type: sigmoid`` (its default), and what ``ranking_loss: pairs`` trains on every :math:`\binom{K}{2}`
    pair of a ranking. ``logsigmoid`` keeps it finite for large margins.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)).mean()


def plackett_luce_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    beta: float,
    num_responses: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""DPO's loss on full rankings under the Plackett–Luce model (Rafailov et al. 2023, appendix A.3).

    ``policy_logps`` and ``ref_logps`` have shape ``(P, K_max)``: row :math:`p` holds the summed log-probs of
    ranking :math:`p`'s responses **best first**; ``num_responses`` (shape ``(P,)``, default all :math:`K_{max}`)
    says how many of its cells are real (:math:`K_p \ge 2`, the rest is padding and may hold anything, even
    ``inf``). With :math:`h_k = \log\pi(y_k) - \log\pi_{ref}(y_k)` for the response ranked :math:`k`-th,
    Plackett–Luce explains a ranking as choosing the best response, then the best of the rest, and so on:

    .. math::
        \mathcal{L}_p = -\log \prod_{k=1}^{K_p} \frac{\exp(\beta h_k)}{\sum_{j=k}^{K_p} \exp(\beta h_j)}
            = -\sum_{k=1}^{K_p} \Big[\beta h_k - \log\sum_{j \ge k} \exp(\beta h_j)\Big],
        \qquad \mathcal{L} = \frac{1}{P}\sum_p \mathcal{L}_p

    (the :math:`k = K_p` factor is 1; it is kept for the formula's sake and contributes exactly 0). At
    :math:`K = 2` this is :math:`-\log\sigma(\beta(h_1 - h_2))`, the pairwise loss of :func:`dpo_pairwise_loss`.
    Unlike the pairwise loss summed over all :math:`\binom{K}{2}` pairs, it is the likelihood of the ranking
    itself: a ranking's :math:`K - 1` choices, not its pairs, are the independent observations.

    Implementation: the suffix log-sum-exps come from a ``(P, K, K)`` matrix whose entry :math:`(k, j)` is
    :math:`\beta h_j` where :math:`j \ge k` and both are real responses, and the dtype's lowest finite value
    elsewhere (not ``-inf``, whose gradient through ``logsumexp`` is ``NaN`` on an all-masked row). K is small
    (4-9 responses in InstructGPT), so the quadratic matrix costs nothing next to the forward passes.
    """
    if policy_logps.shape != ref_logps.shape or policy_logps.dim() != 2:
        raise ValueError(
            f"`policy_logps` {tuple(policy_logps.shape)} and `ref_logps` {tuple(ref_logps.shape)} must both be (P, K)"
        )
    num_rankings, k_max = policy_logps.shape
    if num_responses is None:
        num_responses = torch.full((num_rankings,), k_max, dtype=torch.long, device=policy_logps.device)
    if bool((num_responses < 2).any()) or bool((num_responses > k_max).any()):
        raise ValueError(f"every ranking needs 2..{k_max} responses, got num_responses={num_responses.tolist()}")

    idx = torch.arange(k_max, device=policy_logps.device)
    valid = idx.unsqueeze(0) < num_responses.unsqueeze(1)  # (P, K)
    logratios = torch.where(
        valid, policy_logps - ref_logps, torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
    )
    scores = beta * logratios  # (P, K): beta * h_k, 0 on padding
    # suffix[p, k, j]: response j competes for position k of ranking p (j at or below k, both real)
    suffix = (idx.unsqueeze(0) >= idx.unsqueeze(1)).unsqueeze(0) & valid.unsqueeze(1) & valid.unsqueeze(2)
    lowest = torch.finfo(scores.dtype).min
    competing = scores.unsqueeze(1).expand(num_rankings, k_max, k_max).masked_fill(~suffix, lowest)
    log_normalizer = torch.logsumexp(competing, dim=-1)  # (P, K): log sum_{j >= k} exp(beta h_j)
    log_choice = torch.where(valid, scores - log_normalizer, torch.zeros_like(scores))
    return -log_choice.sum(dim=1).mean()


def ranking_pairs(num_responses: int) -> list[tuple[int, int]]:
    """All :math:`\\binom{K}{2}` pairs ``(better, worse)`` of positions of a ranking given best first."""
    return [(i, j) for i in range(num_responses) for j in range(i + 1, num_responses)]
