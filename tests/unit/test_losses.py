"""The losses the project computes: float64 gradient checks and their defining properties."""

from __future__ import annotations

import itertools

import torch
from torch.autograd import gradcheck

from instructgpt.losses.reward import kway_ranking_loss, pairwise_ranking_loss
from instructgpt.losses.sft import IGNORE_INDEX, masked_token_nll


def _sft_batch(seed: int = 0, batch: int = 3, length: int = 7, vocab: int = 11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    # prompt of varying length (masked), then response, then right padding (masked)
    labels[0, :3] = IGNORE_INDEX
    labels[1, :2] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX
    labels[2, :4] = IGNORE_INDEX
    return logits, labels


def test_masked_token_nll_gradcheck():
    logits, labels = _sft_batch()
    logits.requires_grad_(True)
    assert gradcheck(lambda z: masked_token_nll(z, labels), (logits,), eps=1e-6, atol=1e-5)


def test_masked_token_nll_matches_mean_cross_entropy_over_response_tokens():
    logits, labels = _sft_batch(seed=1)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(masked_token_nll(logits, labels), expected)
    # a caller-supplied token count (gradient accumulation / several processes) only changes the denominator
    count = int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(masked_token_nll(logits, labels, num_items_in_batch=2 * count), expected / 2)


def test_prompt_tokens_get_no_gradient():
    logits, labels = _sft_batch(seed=2)
    logits.requires_grad_(True)
    masked_token_nll(logits, labels).backward()
    # position t predicts token t+1: it gets gradient exactly when token t+1 is a supervised response token
    supervised_next = torch.zeros(labels.shape, dtype=torch.bool)
    supervised_next[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    grad_norm = logits.grad.abs().sum(-1)
    assert torch.all(grad_norm[~supervised_next] == 0)
    assert torch.all(grad_norm[supervised_next] > 0)


def test_masked_token_nll_without_supervised_tokens_is_zero_not_nan():
    logits, labels = _sft_batch()
    labels[:] = IGNORE_INDEX
    assert masked_token_nll(logits, labels).item() == 0.0


def test_pairwise_loss_gradcheck():
    gen = torch.Generator().manual_seed(3)
    chosen = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert gradcheck(pairwise_ranking_loss, (chosen, rejected), eps=1e-6, atol=1e-5)


def test_kway_loss_gradcheck_with_ragged_k():
    gen = torch.Generator().manual_seed(4)
    rewards = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([6, 4, 2, 5])
    assert gradcheck(lambda r: kway_ranking_loss(r, k), (rewards,), eps=1e-6, atol=1e-5)


def test_kway_loss_equals_pairwise_for_k2():
    gen = torch.Generator().manual_seed(5)
    rewards = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        kway_ranking_loss(rewards), pairwise_ranking_loss(rewards[:, 0], rewards[:, 1]), rtol=0, atol=0
    )


def test_kway_loss_is_mean_over_all_pairs_per_prompt():
    gen = torch.Generator().manual_seed(6)
    rewards = torch.randn(3, 9, generator=gen, dtype=torch.float64)
    k = torch.tensor([9, 4, 7])
    per_prompt = []
    for p in range(3):
        terms = [
            -torch.nn.functional.logsigmoid(rewards[p, i] - rewards[p, j])
            for i, j in itertools.combinations(range(int(k[p])), 2)
        ]
        per_prompt.append(torch.stack(terms).mean())
    torch.testing.assert_close(kway_ranking_loss(rewards, k), torch.stack(per_prompt).mean())
    # padding columns carry no weight, whatever they hold
    scrambled = rewards.clone()
    scrambled[1, 4:] = 1e6
    torch.testing.assert_close(kway_ranking_loss(scrambled, k), kway_ranking_loss(rewards, k))
