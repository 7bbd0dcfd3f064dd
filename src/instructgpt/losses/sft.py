"""The supervised fine-tuning loss: masked next-token cross-entropy over the response tokens.

A plain function of tensors, so it can be checked with a float64 ``torch.autograd.gradcheck`` (see
``tests/unit/test_losses.py``). PPO-ptx reuses it for its pretraining term (:mod:`instructgpt.losses.ppo`).
"""

from __future__ import annotations

import torch

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
