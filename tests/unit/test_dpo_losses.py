"""DPO's losses: the pairwise loss and the Plackett-Luce loss over whole rankings (gradchecks, the K = 2 identity,
a hand computation). The `dpo` stage itself is tested in tests/integration/test_dpo.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from instructgpt.losses import dpo_pairwise_loss, plackett_luce_dpo_loss, ranking_pairs


def _logps(seed: int, *shape: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=gen, dtype=torch.float64) - 20).requires_grad_(True)


def test_dpo_pairwise_loss_gradcheck():
    args = tuple(_logps(seed, 6) for seed in range(4))
    assert gradcheck(lambda *a: dpo_pairwise_loss(*a, beta=0.3), args, eps=1e-6, atol=1e-6)


def test_plackett_luce_loss_gradcheck_with_ragged_k_and_garbage_padding():
    policy, ref = _logps(10, 4, 5), _logps(11, 4, 5)
    k = torch.tensor([5, 3, 2, 4])
    assert gradcheck(lambda p, r: plackett_luce_dpo_loss(p, r, 0.5, k), (policy, ref), eps=1e-6, atol=1e-6)
    # padding may hold anything: neither the value nor the gradient sees it
    loss = plackett_luce_dpo_loss(policy, ref, 0.5, k)
    garbage = policy.detach().clone()
    garbage[1, 3:], garbage[2, 2:] = float("inf"), float("nan")
    garbage.requires_grad_(True)
    poisoned = plackett_luce_dpo_loss(garbage, ref.detach(), 0.5, k)
    torch.testing.assert_close(poisoned, loss.detach(), rtol=1e-14, atol=0)
    poisoned.backward()
    assert torch.isfinite(garbage.grad).all() and (garbage.grad[1, 3:] == 0).all() and (garbage.grad[2, 2:] == 0).all()


def test_plackett_luce_equals_the_pairwise_loss_at_k2():
    policy, ref = _logps(20, 16, 2), _logps(21, 16, 2)
    for beta in (0.01, 0.1, 1.0, 5.0):
        listwise = plackett_luce_dpo_loss(policy, ref, beta)
        pairwise = dpo_pairwise_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta)
        torch.testing.assert_close(listwise, pairwise, rtol=1e-13, atol=0)
        (g_list,) = torch.autograd.grad(listwise, policy)
        (g_pair,) = torch.autograd.grad(pairwise, policy)
        torch.testing.assert_close(g_list, g_pair, rtol=1e-12, atol=1e-15)


def test_plackett_luce_by_hand_at_k3():
    # ranking 1: beta*h = 0.5 * [1, 0, -2] = [0.5, 0, -1]
    #   L1 = -[0.5 - log(e^0.5 + e^0 + e^-1)] - [0 - log(e^0 + e^-1)] - [-1 - (-1)]
    #      = log(e^0.5 + 1 + e^-1) - 0.5 + log(1 + e^-1) = 0.9173922928549512
    # ranking 2 (K = 2, padded): beta*h = [0.3, -0.6]: L2 = log(e^0.3 + e^-0.6) - 0.3 = 0.34115387473208786
    ref = torch.tensor([[-5.0, -7.0, -1.0], [-2.0, -3.0, 123.0]], dtype=torch.float64)
    policy = ref + torch.tensor([[1.0, 0.0, -2.0], [0.6, -1.2, 0.0]], dtype=torch.float64)
    loss = plackett_luce_dpo_loss(policy, ref, 0.5, torch.tensor([3, 2]))
    assert loss.item() == pytest.approx((0.9173922928549512 + 0.34115387473208786) / 2, rel=1e-14)
    # a better-ranked response gaining likelihood lowers the loss; the worst one gaining raises it
    assert (
        plackett_luce_dpo_loss(policy + torch.tensor([[0.1, 0, 0], [0, 0, 0]]), ref, 0.5, torch.tensor([3, 2])) < loss
    )
    assert (
        plackett_luce_dpo_loss(policy + torch.tensor([[0, 0, 0.1], [0, 0, 0]]), ref, 0.5, torch.tensor([3, 2])) > loss
    )


def test_plackett_luce_refuses_a_ranking_of_one():
    with pytest.raises(ValueError, match="2..3 responses"):
        plackett_luce_dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.1, torch.tensor([3, 1]))


def test_ranking_pairs_are_all_ordered_pairs():
    assert ranking_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert len(ranking_pairs(9)) == math.comb(9, 2)
