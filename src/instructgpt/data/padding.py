"""Padding: ragged token-id lists into one rectangular batch, on the side each use needs.

- **left** for generation: every prompt then ends in the same column, so a decoder-only model appends new tokens
  to all rows at once (sampling, PPO rollouts);
- **right** for scoring and training: a sequence starts at position 0 and the reward is read at its last real
  token (reward models, log-probabilities of responses, the PPO-ptx text).

Built on ``torch.nn.utils.rnn.pad_sequence``; every stage pads through these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

Side = Literal["left", "right"]


def pad_sequences(
    rows: Sequence[Sequence[int]], pad_token_id: int, side: Side = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``(len(rows), longest)``, padded with ``pad_token_id`` on ``side``."""
    ids = [torch.as_tensor(list(row), dtype=torch.long) for row in rows]
    masks = [torch.ones(len(row), dtype=torch.long) for row in ids]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_token_id, padding_side=side)
    attention_mask = pad_sequence(masks, batch_first=True, padding_value=0, padding_side=side)
    return input_ids, attention_mask


def pad_columns(tensors: Sequence[torch.Tensor], value: float | int | bool, side: Side = "right") -> torch.Tensor:
    """Concatenate ``(b_i, w_i)`` chunks along the batch after padding each to the widest ``w`` with ``value``."""
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        missing = width - t.shape[1]
        if missing:
            t = F.pad(t, (missing, 0) if side == "left" else (0, missing), value=value)
        padded.append(t)
    return torch.cat(padded, dim=0)
