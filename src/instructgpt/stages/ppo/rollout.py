"""Sampling episodes: responses with the log-probabilities the sampler drew them with.

The loop is written out (rather than calling ``model.generate``) because PPO needs, for every sampled token,
:math:`\\log\\pi_{old}(a_t|s_t)` under exactly the distribution it optimises, and a small model on a CPU spends much of
``generate``'s time in per-step bookkeeping. Each step:

1. one forward of the newest token against the KV cache (the prompt's keys and values are computed once);
2. :math:`\\log\\pi(\\cdot|s_t) = \\mathrm{log\\_softmax}(z_t / \\tau)`, the temperature-scaled policy that PPO trains;
3. optionally restrict sampling to the top-k / top-p tokens (transformers' own logits warpers);
4. sample, record :math:`\\log\\pi(a_t|s_t)` from step 2, stop rows that produced the stop token.

Reusing these log-probs as PPO's "old" log-probs saves a full forward pass of the policy per batch. It is sound
because they are the same numbers a separate forward would give (same weights, same inputs; incremental decoding
with a KV cache differs from a full forward only by float rounding, ~1e-6 in float32), and because step 2 ignores
the top-k/top-p filter: the log-prob, the KL and the PPO ratio all refer to the untruncated policy
:math:`\\mathrm{softmax}(z/\\tau)` that the training forward computes. (With top-k/top-p the sampler is a truncated
version of that policy, a small off-policy mismatch that PPO's clipping absorbs; the defaults sample from the
policy itself.)

Batches are left-padded (every prompt ends in the same column, so new tokens are appended in one column for all
rows) and position ids count real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from instructgpt.data.padding import pad_columns
from instructgpt.stages.ppo.models import supports_logits_to_keep


@dataclass
class Samples:
    """Right-padded responses of a left-padded batch of queries."""

    response: torch.Tensor
    """``(B, T)`` sampled token ids, ``pad_token_id`` after the stop token."""
    mask: torch.Tensor
    """``(B, T)`` bool, True on real response tokens (the stop token included)."""
    logprobs: torch.Tensor
    """``(B, T)`` float32 :math:`\\log\\pi(a_t|s_t)` at the sampling temperature, 0 on padding."""
    ended: torch.Tensor
    """``(B,)`` bool, True where the response ended with the stop token (not cut at ``max_new_tokens``)."""


@dataclass
class Batch:
    """One process's rollout batch: ``[query | response]`` and everything PPO computes from it, ``(B, ...)``: the
    :class:`Samples` with the prompts they answer and the reference log-probs, old values and scores."""

    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    ended: torch.Tensor
    disagreement: torch.Tensor
    """The reward-model members' spread on each response (0 for a single reward model)."""
    prompts: list[Any]


def join_chunks(chunks: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The fields of :class:`Batch` (but the prompts) from the rollout's chunks, each chunk padded to the widest:
    queries on the left, responses and per-token numbers on the right."""
    out = {
        "query": pad_columns([c["query"] for c in chunks], pad_token_id, side="left"),
        "query_mask": pad_columns([c["query_mask"] for c in chunks], False, side="left"),
        "response": pad_columns([c["response"] for c in chunks], pad_token_id),
        "mask": pad_columns([c["mask"] for c in chunks], False),
    }
    for key in ("logprobs", "ref_logprobs", "values"):
        out[key] = pad_columns([c[key] for c in chunks], 0.0)
    for key in ("scores", "ended", "disagreement"):
        out[key] = torch.cat([c[key] for c in chunks])
    return out


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p filtering with transformers' warpers (filtered tokens get -inf)."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    if top_k > 0:
        logits = TopKLogitsWarper(top_k=top_k)(None, logits)
    if top_p < 1.0:
        logits = TopPLogitsWarper(top_p=top_p)(None, logits)
    return logits


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    prune_fraction: float = 0.75,
) -> Samples:
    """Sample one response per left-padded query with the KV cache; see the module docstring for the log-probs.

    ``generator`` makes sampling reproducible without touching the global RNG (used for evaluation).
    Responses stop at any of ``stop_token_ids`` (empty: run to ``max_new_tokens``); the loop ends as soon as every
    row has stopped, so the batch is only as wide as its longest response.

    Finished rows leave the batch: once no more than ``prune_fraction`` of the rows still being decoded are alive,
    the KV cache and the masks keep only the live ones (``Cache.batch_select_indices``). A decoding step costs about
    in proportion to its rows, and responses vary a lot in length, so this saves most of the work spent on rows
    that already ended. Pruning changes which random numbers a row draws, not the distribution it samples from.
    """
    batch = query.shape[0]
    device = query.device
    stop = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    attention_mask = query_mask.long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}

    response = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    mask = torch.zeros((batch, max_new_tokens), dtype=torch.bool, device=device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # original index of each row still in the decoding batch

    out = model(input_ids=query, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **extra)
    cache = out.past_key_values
    next_position = position_ids[:, -1:] + 1
    live = torch.ones(batch, dtype=torch.bool, device=device)  # rows of the decoding batch still generating
    width = 0
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature != 1.0:
            logits = logits / temperature
        log_policy = torch.log_softmax(logits, dim=-1)
        probs = (
            torch.softmax(_filter_logits(logits, top_k, top_p), dim=-1) if (top_k or top_p < 1) else log_policy.exp()
        )
        token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(live, token, torch.full_like(token, pad_token_id))  # a finished row's draw is discarded
        targets = rows[live]
        response[targets, step] = token[live]
        logprobs[targets, step] = log_policy.gather(1, token.unsqueeze(1)).squeeze(1)[live]
        mask[targets, step] = True
        width = step + 1
        if stop.numel():
            stopped = live & torch.isin(token, stop)
            ended[rows[stopped]] = True
            live = live & ~stopped
        num_live = int(live.sum())
        if num_live == 0 or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, live.long().unsqueeze(1)], dim=1)
        if num_live <= prune_fraction * len(rows) and hasattr(cache, "batch_select_indices"):
            keep = live.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, live, token = rows[keep], live[keep], token[keep]
            attention_mask, next_position = attention_mask[keep], next_position[keep]
        out = model(
            input_ids=token.unsqueeze(1),
            attention_mask=attention_mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        next_position = next_position + 1
    return Samples(response=response[:, :width], mask=mask[:, :width], logprobs=logprobs[:, :width], ended=ended)
