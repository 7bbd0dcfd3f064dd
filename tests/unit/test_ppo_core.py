"""The PPO math of ``instructgpt.losses.ppo``: gradient checks, Python-loop references, hand-computed cases."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.autograd import gradcheck

from instructgpt.losses import IGNORE_INDEX, masked_token_nll
from instructgpt.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    check_right_padded,
    compute_gae,
    entropy_bonus,
    entropy_from_logits,
    kl_per_token,
    last_token_index,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    ptx_loss,
    value_loss,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lengths_and_mask(gen: torch.Generator, batch: int = 5, length: int = 8) -> tuple[list[int], torch.Tensor]:
    """Right-padded float mask with random lengths in [1, length]; one full row and one single-token row."""
    lengths = torch.randint(1, length + 1, (batch,), generator=gen).tolist()
    lengths[0], lengths[1] = length, 1
    mask = (torch.arange(length).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(F64)
    return lengths, mask


def _scramble_padding(x: torch.Tensor, mask: torch.Tensor, seed: int = 123) -> torch.Tensor:
    """``x`` with every padded position replaced by large arbitrary values."""
    garbage = 1e3 * torch.randn(x.shape, generator=_gen(seed), dtype=x.dtype)
    return torch.where(mask.bool(), x, garbage)


# ------------------------------------------------------------------------------------------------ masked stats


def test_masked_mean_matches_python_reference_and_ignores_padding():
    gen = _gen(0)
    lengths, mask = _lengths_and_mask(gen)
    x = torch.randn(mask.shape, generator=gen, dtype=F64)
    real = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    assert masked_mean(x, mask).item() == pytest.approx(statistics.fmean(real), rel=1e-12)
    per_row = masked_mean(x, mask, dim=1)
    for b, n in enumerate(lengths):
        assert per_row[b].item() == pytest.approx(statistics.fmean(x[b, :n].tolist()), rel=1e-12)
    assert torch.equal(masked_mean(_scramble_padding(x, mask), mask), masked_mean(x, mask))
    assert torch.equal(masked_mean(x.masked_fill(mask == 0, math.inf), mask.bool()), masked_mean(x, mask))


def test_masked_mean_of_nothing_is_zero_and_shapes_are_checked():
    x = torch.randn(2, 3, dtype=F64)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    with pytest.raises(ValueError, match="`x` has shape"):
        masked_mean(x, torch.ones(2, 4))


def test_masked_var_matches_python_reference():
    gen = _gen(1)
    lengths, mask = _lengths_and_mask(gen)
    x = torch.randn(mask.shape, generator=gen, dtype=F64)
    real = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(real), rel=1e-12)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(real), rel=1e-12)
    single = torch.zeros(2, 3)
    single[0, 0] = 1
    with pytest.raises(ValueError, match="at least 2 real"):
        masked_var(x[:2, :3], single)
    assert masked_var(x[:2, :3], single, unbiased=False).item() == 0.0


def _whiten_reference(x: torch.Tensor, lengths: list[int], shift_mean: bool) -> torch.Tensor:
    real = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    mean, var = statistics.fmean(real), statistics.variance(real)
    out = torch.zeros_like(x)
    for b, n in enumerate(lengths):
        for t in range(n):
            value = (x[b, t].item() - mean) / math.sqrt(var + 1e-8)
            out[b, t] = value if shift_mean else value + mean
    return out


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_python_reference(shift_mean):
    gen = _gen(2)
    lengths, mask = _lengths_and_mask(gen, batch=6, length=9)
    x = 3.0 + 2.0 * torch.randn(mask.shape, generator=gen, dtype=F64)
    whitened = masked_whiten(_scramble_padding(x, mask), mask, shift_mean=shift_mean)
    torch.testing.assert_close(whitened, _whiten_reference(x, lengths, shift_mean), rtol=1e-12, atol=1e-12)
    assert torch.all(whitened[mask == 0] == 0)
    # advantage whitening centres and scales; reward whitening keeps the mean
    expected_mean = 0.0 if shift_mean else masked_mean(x, mask).item()
    assert masked_mean(whitened, mask).item() == pytest.approx(expected_mean, abs=1e-9)
    assert masked_var(whitened, mask).item() == pytest.approx(1.0, rel=1e-6)


# ------------------------------------------------------------------------------------------------ GAE


def _gae_reference(rewards, values, lengths, gamma, lam):
    batch, length = rewards.shape
    advantages = torch.zeros(batch, length, dtype=F64)
    returns = torch.zeros(batch, length, dtype=F64)
    for b in range(batch):
        n = lengths[b]
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
            returns[b, t] = running + values[b, t].item()
    return advantages, returns


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_compute_gae_matches_python_loop_reference(gamma, lam):
    gen = _gen(3)
    lengths, mask = _lengths_and_mask(gen, batch=6, length=10)
    rewards = torch.randn(mask.shape, generator=gen, dtype=F64)
    values = torch.randn(mask.shape, generator=gen, dtype=F64)
    scrambled_rewards, scrambled_values = _scramble_padding(rewards, mask), _scramble_padding(values, mask, 7)
    advantages, returns = compute_gae(scrambled_rewards, scrambled_values, mask, gamma, lam)
    ref_advantages, ref_returns = _gae_reference(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(advantages, ref_advantages, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, ref_returns, rtol=1e-12, atol=1e-12)


def test_compute_gae_hand_computed():
    # one response of 2 real tokens then 1 pad: d1 = 1 + 0.9*0 - 0.25 = 0.75, A1 = 0.75;
    # d0 = 0 + 0.9*0.25 - 0.5 = -0.275, A0 = -0.275 + 0.9*0.8*0.75 = 0.265
    rewards = torch.tensor([[0.0, 1.0, 5.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.25, 9.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.265, 0.75, 0.0]], dtype=F64))
    torch.testing.assert_close(returns, torch.tensor([[0.765, 1.0, 0.0]], dtype=F64))


def test_compute_gae_with_gamma_lam_one_returns_reward_to_go():
    gen = _gen(4)
    lengths, mask = _lengths_and_mask(gen)
    rewards = torch.randn(mask.shape, generator=gen, dtype=F64) * mask
    values = torch.randn(mask.shape, generator=gen, dtype=F64)
    _, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(returns, reward_to_go, rtol=1e-12, atol=1e-12)


def test_masks_that_are_not_right_padded_are_rejected():
    with pytest.raises(ValueError, match="row 1 of `mask` is not right-padded: position 2"):
        check_right_padded(torch.tensor([[1, 1, 1], [1, 0, 1]]))
    with pytest.raises(ValueError, match="row 0 of `mask` has no real token"):
        check_right_padded(torch.tensor([[0, 0, 0], [1, 0, 0]]))
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="not right-padded"):
        compute_gae(x, x, torch.tensor([[1, 1, 1], [0, 1, 1]]), 1.0, 0.95)
    assert last_token_index(torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])).tolist() == [2, 0, 1]


# ------------------------------------------------------------------------------------------------ KL reward


def _rollout(seed: int = 5, batch: int = 5, length: int = 8):
    gen = _gen(seed)
    lengths, mask = _lengths_and_mask(gen, batch, length)
    logprobs = -torch.rand(mask.shape, generator=gen, dtype=F64) * 3
    ref_logprobs = -torch.rand(mask.shape, generator=gen, dtype=F64) * 3
    scores = torch.randn(batch, generator=gen, dtype=F64)
    return lengths, mask, logprobs, ref_logprobs, scores


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_reward_is_exactly_zero_when_policy_equals_reference(estimator):
    lengths, mask, logprobs, _, scores = _rollout()
    rewards, non_score, kl = per_token_rewards(scores, logprobs, logprobs.clone(), mask, 0.1, estimator)
    assert torch.all(kl == 0) and torch.all(non_score == 0)
    expected = torch.zeros_like(rewards)
    expected[torch.arange(len(lengths)), torch.tensor(lengths) - 1] = scores
    assert torch.equal(rewards, expected)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_score_lands_only_on_last_real_token(estimator):
    lengths, mask, logprobs, ref_logprobs, scores = _rollout(seed=6)
    rewards, non_score, kl = per_token_rewards(
        scores, _scramble_padding(logprobs, mask), ref_logprobs, mask, kl_coef=0.05, kl_estimator=estimator
    )
    score_part = rewards - non_score
    for b, n in enumerate(lengths):
        assert score_part[b, n - 1].item() == pytest.approx(scores[b].item(), abs=1e-12)
        others = torch.cat([score_part[b, : n - 1], score_part[b, n:]])
        assert torch.all(others.abs() < 1e-15)
    assert torch.all(rewards[mask == 0] == 0) and torch.all(kl[mask == 0] == 0)
    torch.testing.assert_close(non_score, -0.05 * kl, rtol=0, atol=0)


def test_kl_estimators_match_their_formulas():
    lengths, mask, logprobs, ref_logprobs, _ = _rollout(seed=7)
    k1 = kl_per_token(logprobs, ref_logprobs, mask, "k1")
    k3 = kl_per_token(logprobs, ref_logprobs, mask, "k3")
    for b, n in enumerate(lengths):
        for t in range(n):
            log_r = ref_logprobs[b, t].item() - logprobs[b, t].item()
            assert k1[b, t].item() == pytest.approx(-log_r, rel=1e-12)
            assert k3[b, t].item() == pytest.approx(math.exp(log_r) - 1 - log_r, rel=1e-9)
    assert torch.all(k3 >= 0) and torch.any(k1 < 0)  # k3 never negative per token; k1 can be
    with pytest.raises(ValueError, match="unknown `kl_estimator` 'k2'"):
        kl_per_token(logprobs, ref_logprobs, mask, "k2")
    with pytest.raises(ValueError, match="`scores` must have shape"):
        per_token_rewards(torch.zeros(3), logprobs, ref_logprobs, mask, 0.1)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalty_reward_gradcheck(estimator):
    _, mask, logprobs, ref_logprobs, scores = _rollout(seed=8, batch=3, length=5)
    inputs = tuple(t.clone().requires_grad_(True) for t in (scores, logprobs, ref_logprobs))
    assert gradcheck(lambda s, lp, ref: per_token_rewards(s, lp, ref, mask, 0.2, estimator)[0], inputs)


# ------------------------------------------------------------------------------------------------ policy loss

EPS = 0.2


def _surrogate(ratio: float, advantage: float, cliprange: float = EPS) -> tuple[float, float]:
    """Loss and d loss / d logprob for one token with the given ratio and advantage."""
    logprobs = torch.tensor([[math.log(ratio)]], dtype=F64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=F64)
    loss, _ = policy_loss(logprobs, old, torch.tensor([[advantage]], dtype=F64), torch.ones(1, 1), cliprange)
    loss.backward()
    return loss.item(), logprobs.grad.item()


@pytest.mark.parametrize(
    ("ratio", "advantage", "clipped"),
    [
        (1.5, 2.0, True),  # A > 0, ratio above 1 + eps: no reward for pushing further
        (0.5, 2.0, False),  # A > 0, ratio below 1 - eps: pulled back up
        (0.5, -2.0, True),  # A < 0, ratio below 1 - eps: no reward for pushing further down
        (1.5, -2.0, False),  # A < 0, ratio above 1 + eps: pulled back down
        (1.1, 2.0, False),
        (0.9, -2.0, False),
    ],
)
def test_surrogate_clips_only_in_the_profitable_direction(ratio, advantage, clipped):
    loss, grad = _surrogate(ratio, advantage)
    if clipped:
        bound = 1 + EPS if advantage > 0 else 1 - EPS
        assert loss == pytest.approx(-advantage * bound, rel=1e-12)
        assert grad == 0.0
    else:
        assert loss == pytest.approx(-advantage * ratio, rel=1e-12)
        assert grad == pytest.approx(-advantage * ratio, rel=1e-12)  # d(-A e^x)/dx


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_surrogate_clip_switches_exactly_at_the_boundary(advantage):
    edge = 1 + EPS if advantage > 0 else 1 - EPS
    outward = 1.0 if advantage > 0 else -1.0  # the direction the advantage makes profitable
    _, grad_inside = _surrogate(edge - outward * 1e-6, advantage)
    _, grad_outside = _surrogate(edge + outward * 1e-6, advantage)
    assert grad_inside != 0.0 and grad_outside == 0.0
    # the other edge never clips for this sign of the advantage
    other = 1 - EPS if advantage > 0 else 1 + EPS
    _, grad_beyond_other = _surrogate(other - outward * 0.1, advantage)
    assert grad_beyond_other == pytest.approx(-advantage * (other - outward * 0.1), rel=1e-9)


def test_policy_loss_stats():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 7.0]], dtype=F64)  # last position is padding
    advantages = torch.tensor([[1.0, 1.0, -1.0, 3.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    logprobs = ratios.log() - 2.0
    old = torch.full_like(ratios, -2.0)
    loss, stats = policy_loss(logprobs, old, advantages, mask, EPS)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.0) / 3, rel=1e-12)
    assert stats.clipfrac.item() == pytest.approx(1 / 3)  # only the first token is clipped
    assert stats.ratio.item() == pytest.approx((1.5 + 0.5 + 1.0) / 3, rel=1e-12)
    assert stats.approxkl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3, rel=1e-12)
    assert not stats.clipfrac.requires_grad


def _policy_batch(seed: int = 9, batch: int = 4, length: int = 6):
    """Ratios drawn away from 1 +- EPS (inside and outside), advantages away from 0: no kinks for gradcheck."""
    gen = _gen(seed)
    _, mask = _lengths_and_mask(gen, batch, length)
    choices = torch.tensor([0.5, 0.7, 0.9, 1.0, 1.1, 1.4, 2.0], dtype=F64)
    ratios = choices[torch.randint(0, len(choices), mask.shape, generator=gen)]
    old = -torch.rand(mask.shape, generator=gen, dtype=F64) * 3
    signs = torch.randint(0, 2, mask.shape, generator=gen).to(F64) * 2 - 1
    advantages = signs * (0.2 + torch.rand(mask.shape, generator=gen, dtype=F64))
    return mask, old + ratios.log(), old, advantages


def test_policy_loss_gradcheck():
    mask, logprobs, old, advantages = _policy_batch()
    inputs = (logprobs.requires_grad_(True), advantages.requires_grad_(True))
    assert gradcheck(lambda lp, adv: policy_loss(lp, old, adv, mask, EPS)[0], inputs)


def test_policy_loss_gradcheck_through_logprobs_from_logits():
    gen = _gen(10)
    _, mask = _lengths_and_mask(gen, batch=3, length=5)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=F64)
    tokens = torch.randint(0, 7, (3, 5), generator=gen)
    old = logprobs_from_logits(logits, tokens).detach() + 0.05  # ratios near 0.95: inside the clip range
    advantages = torch.randn(3, 5, generator=gen, dtype=F64)
    loss_fn = lambda z: policy_loss(logprobs_from_logits(z, tokens), old, advantages, mask, EPS)[0]  # noqa: E731
    assert gradcheck(loss_fn, (logits.requires_grad_(True),))


def test_policy_loss_ignores_padding_exactly():
    mask, logprobs, old, advantages = _policy_batch(seed=11)
    a = logprobs.clone().requires_grad_(True)
    b = _scramble_padding(logprobs, mask).requires_grad_(True)
    loss_a, stats_a = policy_loss(a, old, advantages, mask, EPS)
    loss_b, stats_b = policy_loss(b, _scramble_padding(old, mask, 5), _scramble_padding(advantages, mask, 6), mask, EPS)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(x, y) for x, y in zip(stats_a, stats_b))
    loss_a.backward()
    loss_b.backward()
    assert torch.equal(a.grad, b.grad)
    ratio = (logprobs - old).exp()
    clipped = ((advantages > 0) & (ratio > 1 + EPS)) | ((advantages < 0) & (ratio < 1 - EPS))
    real = mask == 1
    assert torch.any(real & clipped) and torch.any(real & ~clipped)
    assert torch.all(b.grad[~real | clipped] == 0) and torch.all(b.grad[real & ~clipped] != 0)


# ------------------------------------------------------------------------------------------------ value loss


def test_value_loss_hand_computed():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=F64)
    values = torch.tensor([[0.1, 1.0, -1.0, 50.0]], dtype=F64)  # last is padding
    returns = torch.tensor([[0.0, 0.5, 2.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    v = values.clone().requires_grad_(True)
    loss, clipfrac = value_loss(v, old, returns, mask, cliprange_value=0.2)
    # token 0: inside the clip range, (0.1)^2; token 1: max((0.5)^2, (0.2-0.5)^2) = 0.25 unclipped;
    # token 2: max((-3)^2, (-0.2-2)^2) = 9 unclipped; nothing takes the clipped branch here
    assert loss.item() == pytest.approx(0.5 * (0.01 + 0.25 + 9.0) / 3, rel=1e-12)
    assert clipfrac.item() == 0.0
    # moving past the clip range towards the return earns nothing once the clipped error is the larger
    v2 = torch.tensor([[0.0, 0.4, 0.0, 0.0]], dtype=F64, requires_grad=True)
    loss2, clipfrac2 = value_loss(v2, old, torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=F64), mask, 0.2)
    assert loss2.item() == pytest.approx(0.5 * 0.8**2 / 3, rel=1e-12)
    assert clipfrac2.item() == pytest.approx(1 / 3)
    loss2.backward()
    assert v2.grad[0, 1].item() == 0.0


def test_value_loss_gradcheck_and_padding():
    gen = _gen(12)
    _, mask = _lengths_and_mask(gen, batch=4, length=6)
    old = torch.randn(mask.shape, generator=gen, dtype=F64)
    steps = torch.tensor([-0.5, -0.05, 0.05, 0.5], dtype=F64)  # away from the clip edges at +-0.2
    values = old + steps[torch.randint(0, 4, mask.shape, generator=gen)]
    returns = torch.randn(mask.shape, generator=gen, dtype=F64)
    clipped = old + (values - old).clamp(-0.2, 0.2)
    # no kink: where the clip is active, the two squared errors are not close to equal
    active = (mask == 1) & (clipped != values)
    assert torch.all(((values - returns).abs() - (clipped - returns).abs()).abs()[active] > 1e-3)
    assert gradcheck(lambda v, r: value_loss(v, old, r, mask, 0.2)[0], (values.requires_grad_(True), returns))
    scrambled = value_loss(_scramble_padding(values, mask), _scramble_padding(old, mask, 1), returns, mask, 0.2)
    assert all(torch.equal(x, y) for x, y in zip(scrambled, value_loss(values, old, returns, mask, 0.2)))


# ------------------------------------------------------------------------------------------------ entropy


def test_entropy_from_logits_matches_categorical_and_is_stable():
    logits = torch.randn(3, 4, 9, generator=_gen(13), dtype=F64)
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected, rtol=1e-12, atol=1e-12)
    assert entropy_from_logits(torch.zeros(2, 5)).allclose(torch.full((2,), math.log(5)))
    peaked = torch.tensor([[1e4, 0.0, -1e4], [-1e30, 0.0, 1e30]])
    h = entropy_from_logits(peaked)
    assert torch.all(torch.isfinite(h)) and torch.all(h.abs() < 1e-6)
    assert entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32


def test_entropy_bonus_gradcheck_and_direction():
    gen = _gen(14)
    _, mask = _lengths_and_mask(gen, batch=3, length=4)
    logits = torch.randn(3, 4, 6, generator=gen, dtype=F64, requires_grad=True)
    assert gradcheck(lambda z: entropy_bonus(entropy_from_logits(z), mask, 0.01), (logits,))
    loss = entropy_bonus(entropy_from_logits(logits), mask, 0.01)
    assert loss.item() == pytest.approx(-0.01 * masked_mean(entropy_from_logits(logits), mask).item())
    loss.backward()
    stepped = logits.detach() - 10.0 * logits.grad  # a gradient step on the bonus raises the entropy
    assert masked_mean(entropy_from_logits(stepped), mask) > masked_mean(entropy_from_logits(logits.detach()), mask)
    assert torch.all(logits.grad[mask == 0] == 0)


# ------------------------------------------------------------------------------------------------ log-probs


def test_logprobs_from_logits_matches_log_softmax_gather():
    gen = _gen(15)
    logits = torch.randn(3, 5, 11, generator=gen, dtype=F64) * 5
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), expected, rtol=1e-12, atol=1e-12)
    half = logprobs_from_logits(logits.to(torch.bfloat16), tokens)
    assert half.dtype == torch.float32
    reference = logprobs_from_logits(logits.to(torch.bfloat16).float(), tokens)
    torch.testing.assert_close(half, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="`tokens` has shape"):
        logprobs_from_logits(logits, tokens[:, :4])


# ------------------------------------------------------------------------------------------------ ptx


def test_ptx_loss_is_scaled_masked_token_nll_and_gradchecks():
    gen = _gen(16)
    logits = torch.randn(2, 6, 7, generator=gen, dtype=F64, requires_grad=True)
    labels = torch.randint(0, 7, (2, 6), generator=gen)
    labels[1, 4:] = IGNORE_INDEX
    assert gradcheck(lambda z: ptx_loss(z, labels, coef=0.5), (logits,))
    torch.testing.assert_close(ptx_loss(logits, labels, 0.5), 0.5 * masked_token_nll(logits, labels))
    assert ptx_loss(logits, labels, 0.0).item() == 0.0


# ------------------------------------------------------------------------------------------------ KL controllers


def test_adaptive_kl_controller_moves_beta_toward_target():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, n_steps=512) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10000))  # error clipped at +0.2
    raised = ctl.value
    ctl.update(6.3, n_steps=512)  # error +0.05
    assert ctl.value == pytest.approx(raised * (1 + 0.05 * 512 / 10000)) and ctl.value > raised
    before = ctl.value
    ctl.update(4.8, n_steps=512)  # error -0.2 (not clipped)
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 512 / 10000)) and ctl.value < before
    before = ctl.value
    ctl.update(0.0, n_steps=512)  # error -1 clipped to -0.2
    assert ctl.value == pytest.approx(before * (1 - 0.2 * 512 / 10000))
    before = ctl.value
    ctl.update(torch.tensor(6.0), n_steps=512)  # on target: unchanged
    assert ctl.value == pytest.approx(before)


def test_kl_controllers_state_dict_round_trip():
    ctl = AdaptiveKLController(0.05, target=3.0, horizon=1000)
    for kl in (5.0, 4.0, 1.0):
        ctl.update(kl, n_steps=64)
    resumed = AdaptiveKLController(0.5, target=1.0, horizon=10)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.state_dict() == ctl.state_dict()
    assert resumed.update(2.0, 64) == ctl.update(2.0, 64)
    fixed = FixedKLController(0.02)
    assert fixed.update(100.0, 64) == 0.02 and fixed.value == 0.02
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.02
    with pytest.raises(ValueError, match=r"missing keys \['horizon', 'target'\]"):
        resumed.load_state_dict({"value": 1.0})


def test_kl_controllers_reject_bad_input():
    with pytest.raises(ValueError, match="non-finite KL"):
        AdaptiveKLController(0.1, 6.0, 10000).update(float("nan"), 64)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 10000)
    with pytest.raises(ValueError, match="too short"):
        AdaptiveKLController(0.1, 6.0, 10).update(0.0, 64)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-1.0)
