r"""The math of InstructGPT's PPO step, as pure tensor functions.

InstructGPT (Ouyang et al. 2022, eq. 2) maximises, for prompts :math:`x` and sampled responses :math:`y`,

.. math::
    \mathrm{objective}(\phi) = \mathbb{E}_{(x,y)\sim\pi_\phi^{RL}}\big[r_\theta(x,y)
        - \beta \log\big(\pi_\phi^{RL}(y|x) / \pi^{SFT}(y|x)\big)\big]
        + \gamma\, \mathbb{E}_{x\sim D_{pretrain}}\big[\log \pi_\phi^{RL}(x)\big]

with PPO (Schulman et al. 2017) as the optimiser. Following Ziegler et al. 2019 (and OpenAI's
``lm-human-preferences``), the KL term is spread over the response as a per-token reward and the reward
model's score is paid on the last token; advantages come from GAE (Schulman et al. 2015).
The implementation details follow "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024).

Conventions shared by every function here:

* responses are **right-padded** tensors of shape ``(batch, T)``;
* ``mask`` is ``1`` (or ``True``) on real response tokens, the EOS included, and ``0`` on the padding after it;
* log-probs are per-token :math:`\log\pi(a_t|s_t)` of the sampled tokens;
* padded positions may hold arbitrary values: every function zeroes them *before* computing (with
  ``torch.where``, not a multiplication, so even ``inf`` there cannot turn into ``NaN`` through ``0 * inf``,
  in the forward or the backward pass); outputs are ``0`` at padded positions.

Nothing here touches a model: the PPO stage (``instructgpt.stages.ppo.objective`` and ``.trainer``) feeds these
functions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Literal, NamedTuple

import torch

from instructgpt.losses.sft import IGNORE_INDEX, masked_token_nll

KLEstimator = Literal["k1", "k3"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------------------------
# Masks and masked statistics
# --------------------------------------------------------------------------------------------------------------


def _check_same_shape(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise ValueError(f"`{name}` has shape {tuple(tensor.shape)} but `mask` has shape {tuple(mask.shape)}")


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded positions set to 0 (their gradient is exactly 0, whatever they held)."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def check_right_padded(mask: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every row of the ``(batch, T)`` mask is ones then zeros, with at least one one.

    The per-token reward puts the score on the last real token and GAE bootstraps with :math:`V = 0` after it;
    both need to know where each response ends, which a mask with holes (or an empty row) leaves ambiguous.
    Costs one device synchronisation; call it once per rollout batch, not per minibatch.
    """
    if mask.dim() != 2:
        raise ValueError(f"`mask` must have shape (batch, T), got {tuple(mask.shape)}")
    real = mask.bool()
    empty = ~real.any(dim=1)
    if empty.any():
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"row {row} of `mask` has no real token: every response needs at least one (its EOS)")
    holes = real[:, 1:] & ~real[:, :-1]  # a real token right after a padded one
    if holes.any():
        row, col = (int(i) for i in holes.nonzero()[0])
        raise ValueError(
            f"row {row} of `mask` is not right-padded: position {col + 1} is real but position {col} is padding"
        )


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded ``(batch, T)`` mask, shape ``(batch,)``.

    For a right-padded mask this is ``mask.sum(1) - 1``; the mask is validated with :func:`check_right_padded`.
    """
    check_right_padded(mask)
    return mask.bool().sum(dim=1) - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    r"""Mean of ``x`` over the real positions: :math:`\sum_t m_t x_t / \sum_t m_t`.

    Over all elements when ``dim`` is None, else along ``dim`` (e.g. ``dim=1`` gives one mean per response).
    A mean over no real position is 0, not 0/0 (like ``instructgpt.losses.masked_token_nll``), so an empty
    slice adds nothing to a loss instead of poisoning it with NaN.
    """
    _check_same_shape(mask, x=x)
    real = mask.bool()
    total = _zero_padding(x, real).sum() if dim is None else _zero_padding(x, real).sum(dim=dim)
    count = real.sum() if dim is None else real.sum(dim=dim)
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    r"""Variance of ``x`` over all real positions: :math:`\frac{1}{n - c}\sum_t m_t (x_t - \bar x)^2`, :math:`n=\sum m`.

    ``c = 1`` (Bessel's correction, as TRL's former PPO trainer whitened) when ``unbiased``, else ``c = 0``
    (``tf.nn.moments``, as OpenAI's ``lm-human-preferences`` whitened). Raises ``ValueError`` when fewer than
    ``c + 1`` positions are real, where the variance is undefined. Costs one device synchronisation.
    """
    _check_same_shape(mask, x=x)
    real = mask.bool()
    count = int(real.sum())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(
            f"the {'unbiased ' if unbiased else ''}variance needs at least {needed} real position(s), "
            f"`mask` has {count}"
        )
    centered = _zero_padding(x - masked_mean(x, real), real)
    return centered.square().sum() / (count - 1 if unbiased else count)


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""Normalise ``x`` over its real positions: :math:`(x - \bar x) / \sqrt{\sigma^2 + \epsilon}`.

    Mean and variance (:func:`masked_var`) are taken over every real position of the whole batch.
    With ``shift_mean=False`` the mean is added back, :math:`\bar x + (x - \bar x)/\sqrt{\sigma^2 + \epsilon}`:
    only the scale changes. Both uses come from ``lm-human-preferences`` (N+ implementation details, "advantage
    whitening" and "reward whitening"): PPO whitens advantages with the mean removed, so that about half of the
    actions are pushed up and half down; rewards are whitened (optionally, ``whiten_rewards``) keeping their mean,
    since shifting every reward would change the value of ending a response early or late.
    Padded positions are 0 in the output.
    """
    real = mask.bool()
    mean = masked_mean(x, real)
    var = masked_var(x, real, unbiased=unbiased)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_padding(whitened, real)


# --------------------------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits
# --------------------------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    r"""Per-token log-probabilities of ``tokens`` under ``logits``: :math:`z_{t,a_t} - \log\sum_v e^{z_{t,v}}`.

    ``logits`` has shape ``(..., V)``, ``tokens`` shape ``(...)``; the result has shape ``(...)``.
    Memory-friendly: the gather minus ``logsumexp`` never keeps a full ``(..., V)`` log-softmax alive
    (the vocabulary dimension is by far the largest tensor of an RLHF step). Half-precision logits are processed
    one row of the leading dimension at a time in float32, since ``logsumexp`` in bf16 is too coarse for the PPO
    ratio :math:`e^{\log\pi - \log\pi_{old}}`; the result is then float32.

    The logits must be those the tokens were sampled from: when sampling used a temperature, divide the logits
    by it first (N+ implementation details, "dividing logits by the sampling temperature"), or the log-probs,
    the KL and the ratio all refer to a different policy than the one that acted.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"`tokens` has shape {tuple(tokens.shape)} but `logits` has leading shape {tuple(logits.shape[:-1])}"
        )
    index = tokens.long().unsqueeze(-1)
    if logits.dtype not in _HALF_DTYPES:
        return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_index in zip(logits, index):  # bounds the float32 copy to one row
        row_logits = row_logits.float()
        rows.append(row_logits.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    r"""Entropy of the categorical distribution given by ``logits`` over the last dimension, shape ``(...)``.

    .. math:: H = -\sum_v p_v \log p_v = \log\sum_v e^{z_v} - \sum_v p_v z_v, \qquad p = \mathrm{softmax}(z)

    The right-hand form never takes the log of a probability that underflowed to 0, so it stays finite
    for arbitrarily peaked distributions. Half-precision logits are computed in float32.
    """
    if logits.dtype in _HALF_DTYPES:
        logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


# --------------------------------------------------------------------------------------------------------------
# Rewards and advantages
# --------------------------------------------------------------------------------------------------------------


def kl_per_token(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_estimator: KLEstimator = "k1"
) -> torch.Tensor:
    r"""Per-token estimate of :math:`\mathrm{KL}(\pi_\theta \,\|\, \pi_{ref})` from the sampled tokens; 0 on padding.

    With :math:`\log r = \log\pi_{ref}(a_t|s_t) - \log\pi_\theta(a_t|s_t)` and :math:`a_t \sim \pi_\theta`
    (Schulman, "Approximating KL divergence", 2020):

    * ``"k1"``: :math:`-\log r = \log\pi_\theta - \log\pi_{ref}`, unbiased, can be negative per token.
      This is InstructGPT's penalty (eq. 2) and Ziegler et al.'s.
    * ``"k3"``: :math:`(r - 1) - \log r`, unbiased and never negative (lower variance), computed as
      ``expm1(log r) - log r`` to stay accurate when :math:`r \approx 1`.

    Both are exactly 0 where the policy and the reference agree.
    """
    _check_same_shape(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = _zero_padding(ref_logprobs - logprobs, mask)  # log r, 0 on padding
    if kl_estimator == "k1":
        kl = -log_ratio
    elif kl_estimator == "k3":
        kl = torch.expm1(log_ratio) - log_ratio
    else:
        raise ValueError(f"unknown `kl_estimator` {kl_estimator!r}: expected 'k1' or 'k3'")
    return _zero_padding(kl, mask)


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""InstructGPT's per-token reward: a KL penalty on every response token, the RM score on the last one.

    .. math::
        r_t = -\beta\, \mathrm{kl}_t + [t = t_{last}]\; r_\theta(x, y)

    where :math:`\mathrm{kl}_t` is :func:`kl_per_token` (``"k1"``: :math:`\log\pi_\theta - \log\pi_{ref}`) and
    :math:`t_{last}` is the last real token of the response (found from the right-padded ``mask``, which is
    validated). Summed over the response this is the bracket of InstructGPT's eq. 2; spreading the KL over the
    tokens gives PPO a dense signal (Ziegler et al. 2019, section 2.2; N+ implementation details).

    Args:
        scores: ``(batch,)`` reward-model scores (already normalised, penalised for a missing EOS, etc.).
        logprobs, ref_logprobs: ``(batch, T)`` log-probs of the sampled tokens under the policy that sampled
            them and under the reference (SFT) policy.
        mask: ``(batch, T)`` response mask.
        kl_coef: :math:`\beta`, e.g. ``kl_controller.value``.

    Returns:
        ``(rewards, non_score_reward, kl)``, each ``(batch, T)`` and 0 on padding: the total per-token reward,
        its KL part :math:`-\beta\,\mathrm{kl}_t`, and the per-token KL estimate itself. TRL's metrics are
        ``objective/kl = kl.sum(1).mean()`` and ``objective/non_score_reward = non_score_reward.sum(1).mean()``.
    """
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(
            f"`scores` must have shape ({logprobs.shape[0]},), one per response; got {tuple(scores.shape)}"
        )
    kl = kl_per_token(logprobs, ref_logprobs, mask, kl_estimator)
    non_score_reward = -kl_coef * kl
    last = last_token_index(mask)
    # scatter (not an in-place add) keeps the score differentiable, which the gradient check relies on
    score_reward = torch.zeros_like(non_score_reward).scatter(1, last.unsqueeze(1), scores.to(kl.dtype).unsqueeze(1))
    return non_score_reward + score_reward, non_score_reward, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalized advantage estimation (Schulman et al. 2015, eq. 16) over right-padded responses.

    .. math::
        \delta_t = r_t + \gamma V_{t+1} - V_t, \qquad
        A_t = \delta_t + \gamma\lambda A_{t+1}, \qquad
        R_t = A_t + V_t

    computed backward in time, vectorised over the batch, with :math:`V_{t+1} = 0` and :math:`A_{t+1} = 0` past
    the last real token: the episode ends there (a terminal state, so nothing is bootstrapped after it), whatever
    the padding holds. ``gamma = lam = 1`` (InstructGPT's and ``lm-human-preferences``' default is
    ``gamma = 1, lam = 0.95``) makes :math:`R_t` the plain sum of future rewards.

    Returns ``(advantages, returns)``, each ``(batch, T)`` and 0 on padding. Treat them as constants
    (compute under ``torch.no_grad()`` or detach): they are targets, not part of the computation graph.
    """
    _check_same_shape(mask, rewards=rewards, values=values)
    check_right_padded(mask)
    real = mask.bool()
    rewards = _zero_padding(rewards, real)
    values = _zero_padding(values, real)
    length = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = [next_advantage] * length
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # the mask cuts the recursion at the end of each response: padding gets A = 0 and passes on nothing
        next_advantage = torch.where(real[:, t], delta + gamma * lam * next_advantage, 0.0)
        advantages[t] = next_advantage
        next_value = values[:, t]
    advantages_t = torch.stack(advantages, dim=1)
    return advantages_t, _zero_padding(advantages_t + values, real)


# --------------------------------------------------------------------------------------------------------------
# Loss terms
# --------------------------------------------------------------------------------------------------------------


class PolicyLossStats(NamedTuple):
    """Detached scalars logged with the policy loss (TRL's ``policy/clipfrac_avg``, ``policy/approxkl_avg``,
    ``val/ratio``)."""

    clipfrac: torch.Tensor
    """Share of real tokens where the clipped term is the active one (its gradient is 0)."""
    approxkl: torch.Tensor
    r""":math:`\tfrac12\,\mathrm{mean}(\log\pi_\theta - \log\pi_{old})^2`, a k2 estimate of KL(old ‖ new)."""
    ratio: torch.Tensor
    r"""Mean probability ratio :math:`\pi_\theta/\pi_{old}` (1 at the first minibatch of each batch)."""


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, PolicyLossStats]:
    r"""PPO's clipped surrogate objective as a loss (Schulman et al. 2017, eq. 7), averaged over real tokens.

    .. math::
        \rho_t = e^{\log\pi_\theta(a_t|s_t) - \log\pi_{old}(a_t|s_t)}, \qquad
        L = \mathrm{mean}_t \max\big(-A_t \rho_t,\; -A_t\, \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\big)

    The max of the negated terms is the min of PPO's pessimistic bound: the ratio is clipped only in the
    direction the advantage makes profitable. With :math:`A > 0` the gradient vanishes once
    :math:`\rho > 1+\epsilon` (no more reward for pushing a good action further) but not when
    :math:`\rho < 1-\epsilon` (a good action that became rarer is always pulled back); with :math:`A < 0` the mirror.

    ``advantages`` are constants (detach them); ``old_logprobs`` are those of the rollout policy.
    Returns ``(loss, PolicyLossStats)``.
    """
    _check_same_shape(mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    real = mask.bool()
    log_ratio = _zero_padding(logprobs - old_logprobs, real)  # padding: ratio exactly 1, no overflow
    advantages = _zero_padding(advantages, real)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), real)
    with torch.no_grad():
        stats = PolicyLossStats(
            clipfrac=masked_mean((clipped > unclipped).to(ratio.dtype), real),
            approxkl=0.5 * masked_mean(log_ratio.square(), real),
            ratio=masked_mean(ratio, real),
        )
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Clipped value loss (PPO's reference code ``baselines.ppo2``; N+ implementation details, "value clipping").

    .. math::
        V^{clip}_t = V^{old}_t + \mathrm{clip}(V_t - V^{old}_t, -\epsilon_v, \epsilon_v), \qquad
        L = \tfrac12\, \mathrm{mean}_t \max\big((V_t - R_t)^2, (V^{clip}_t - R_t)^2\big)

    Like the policy's clip, it keeps the new value function from moving far from the one that produced the
    returns in one batch: a step past :math:`\pm\epsilon_v` earns no further decrease of the loss.
    ``returns`` are constants (from :func:`compute_gae`); ``old_values`` those of the rollout.

    Returns ``(loss, clipfrac)``, where ``clipfrac`` (detached, TRL's ``val/clipfrac_avg``) is the share of real
    tokens where the clipped term is the larger one.
    """
    _check_same_shape(mask, values=values, old_values=old_values, returns=returns)
    real = mask.bool()
    values = _zero_padding(values, real)
    old_values = _zero_padding(old_values, real)
    returns = _zero_padding(returns, real)
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), real)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).to(values.dtype), real)
    return loss, clipfrac


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float) -> torch.Tensor:
    r"""Entropy bonus as a loss to add: :math:`-c_H\, \mathrm{mean}_t H_t` (Schulman et al. 2017, eq. 9, :math:`c_2`).

    ``entropy`` is per token, ``(batch, T)``, from :func:`entropy_from_logits`. Minimising it raises the policy's
    entropy, against premature collapse onto a few responses. InstructGPT and ``lm-human-preferences`` train with
    ``coef = 0``; it is here for those who want it.
    """
    return -coef * masked_mean(entropy, mask)


def ptx_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    coef: float,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    r"""PPO-ptx pretraining term as a loss: :math:`\gamma_{ptx}\cdot\mathrm{NLL}` (InstructGPT eq. 2, last term).

    .. math:: L_{ptx} = -\gamma\, \mathbb{E}_{x\sim D_{pretrain}}\big[\log\pi_\phi^{RL}(x)\big]

    with the expectation taken as the mean next-token negative log-likelihood of ``labels`` (positions equal
    to ``ignore_index`` excluded) by :func:`instructgpt.losses.masked_token_nll`, the same loss as SFT.
    Mixing it into the PPO update limits the "alignment tax" on public NLP benchmarks (InstructGPT section 3.5).
    """
    return coef * masked_token_nll(logits, labels, num_items_in_batch=num_items_in_batch, ignore_index=ignore_index)


# --------------------------------------------------------------------------------------------------------------
# KL coefficient controllers
# --------------------------------------------------------------------------------------------------------------


def _finite_kl(current_kl: float | torch.Tensor) -> float:
    kl = float(current_kl)
    if not math.isfinite(kl):
        raise ValueError(f"the KL controller got a non-finite KL ({kl}); the policy has diverged from the reference")
    return kl


class KLController(ABC):
    r"""Holds the KL coefficient :math:`\beta` of the per-token reward.

    ``value`` is the current :math:`\beta`; call ``update(current_kl, n_steps)`` once per rollout batch with the
    batch's mean sequence KL (``kl.sum(1).mean()`` from :func:`per_token_rewards`) and its number of episodes.
    ``state_dict()`` / ``load_state_dict()`` save and restore it with a checkpoint.
    """

    value: float

    @abstractmethod
    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        """Update and return ``value`` after a batch of ``n_steps`` episodes with mean sequence KL ``current_kl``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this controller is."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a missing or unknown key is an error naming it."""
        expected = set(self.state_dict())
        missing, unknown = expected - set(state), set(state) - expected
        if missing or unknown:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}"
            )
        for key in expected:
            setattr(self, key, type(getattr(self, key))(state[key]))


class FixedKLController(KLController):
    r"""A constant :math:`\beta` (InstructGPT's setting: :math:`\beta = 0.02`)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"`kl_coef` must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        _finite_kl(current_kl)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value})"


class AdaptiveKLController(KLController):
    r"""Steers the KL toward a target with a proportional controller (Ziegler et al. 2019, section 2.2).

    .. math::
        e = \mathrm{clip}\Big(\frac{\mathrm{KL}}{\mathrm{KL}_{target}} - 1,\; -0.2,\; 0.2\Big), \qquad
        \beta \leftarrow \beta\,\Big(1 + e\,\frac{n_{steps}}{\mathrm{horizon}}\Big)

    :math:`\beta` rises while the KL is above target and falls while below; the clip bounds each step's change
    to 20% of a full horizon's worth. ``n_steps`` counts episodes (responses) in the batch, across all processes,
    and ``horizon`` is in the same unit (``lm-human-preferences`` used 10000).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"`init_kl_coef` must be >= 0, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"the KL `target` must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"the KL `horizon` must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> float:
        kl = _finite_kl(current_kl)
        if n_steps < 0:
            raise ValueError(f"`n_steps` counts episodes and must be >= 0, got {n_steps}")
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        multiplier = 1.0 + error * n_steps / self.horizon
        if multiplier <= 0:  # only when n_steps > 5 * horizon: beta would change sign
            raise ValueError(f"KL `horizon` ({self.horizon}) is too short for batches of {n_steps} episodes")
        self.value *= multiplier
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"
