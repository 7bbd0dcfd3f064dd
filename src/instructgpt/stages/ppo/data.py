"""PPO's data: prompts to sample episodes from, in a resumable order, and the PPO-ptx text.

Prompts are tokenized once, up front, with the chat template the SFT model saved
(:func:`instructgpt.sampling.encode_prompts`), so the policy sees exactly the format SFT trained on.
"""

from __future__ import annotations

from typing import Any

import torch

from instructgpt.data import DataError, find_empty, load_data, require_columns, require_rows







class PromptOrder:
    """Which prompts each update samples, a pure function of ``(seed, update index)``: resuming needs no state.

    Every epoch is a fresh permutation of the prompts (``torch.Generator`` seeded with ``seed + epoch``, identical
    on every process); update ``u`` takes the ``u``-th slice of ``batch_size`` prompts, and process ``r`` the
    ``r``-th ``local_batch_size`` of it. Like TRL's dataloader (``drop_last=True``), the remainder of an epoch that
    does not fill a whole batch is skipped, so every update has the same shape.
    """

    def __init__(self, num_prompts: int, batch_size: int, local_batch_size: int, process_index: int, seed: int):
        if num_prompts < batch_size:
            raise ValueError(
                f"{num_prompts} prompts cannot fill one rollout batch of {batch_size} episodes "
                "(per_device_train_batch_size * gradient_accumulation_steps * processes); use more prompts or "
                "a smaller batch"
            )
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.local_batch_size = local_batch_size
        self.process_index = process_index
        self.seed = seed
        self.batches_per_epoch = num_prompts // batch_size
        self._cache: tuple[int, list[int]] | None = None

    def _permutation(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = (epoch, torch.randperm(self.num_prompts, generator=generator).tolist())
        return self._cache[1]

    def indices(self, update: int) -> list[int]:
        """Prompt indices of this process for update ``update`` (0-based)."""
        epoch, batch = divmod(update, self.batches_per_epoch)
        start = batch * self.batch_size + self.process_index * self.local_batch_size
        return self._permutation(epoch)[start:start + self.local_batch_size]


# --------------------------------------------------------------------------------------------------------------
# PPO-ptx: language-modelling text mixed into the updates
# --------------------------------------------------------------------------------------------------------------


def ptx_texts(dataset: Any, tokenizer: Any, *, name: str, source: str) -> list[str]:
    """Texts for the ptx term: a ``text`` column, or demonstrations rendered whole with the chat template."""
    fmt = require_columns(
        dataset, [("text",), ("messages",), ("prompt", "completion")], name=name, source=source
    )
    if fmt == ("text",):
        texts = list(dataset["text"])
    else:
        from instructgpt.data.formats import to_prompt_completion

        texts = []
        for row in dataset:
            pair = to_prompt_completion(row)
            texts.append(tokenizer.apply_chat_template(pair["prompt"] + pair["completion"], tokenize=False))
    empty = find_empty(texts)
    if empty is not None:
        raise DataError(f"{source}: {name} row {empty}: empty text")
    return texts


def load_ptx(
    name: str,
    tokenizer: Any,
    *,
    source: str,
    config: str | None,
    split: str,
    limit: int | None,
    max_length: int,
) -> list[list[int]]:
    """Token ids of the ptx dataset, each truncated to ``max_length`` (EOS appended to plain text that fits)."""
    dataset = load_data(name, key="ptx_dataset_name", source=source, config=config, split=split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    label = f"`ptx_dataset_name` ({name})"
    require_rows(dataset, name=label, source=source)
    texts = ptx_texts(dataset, tokenizer, name=label, source=source)
    is_plain = "text" in dataset.column_names
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if is_plain and tokenizer.eos_token_id is not None:
        ids = [row + [tokenizer.eos_token_id] for row in ids]
    ids = [row[:max_length] for row in ids if len(row) >= 2]  # one token predicts nothing
    if not ids:
        raise DataError(f"{source}: {label}: every text is shorter than 2 tokens")
    return ids


class PtxStream:
    """An endless, resumable stream of ptx sequences for one process: shuffled passes, position in ``state_dict``."""

    def __init__(self, sequences: list[list[int]], seed: int, process_index: int):
        self.sequences = sequences
        self.seed = seed + 7919 * process_index  # each process reads its own order
        self.position = 0
        self._cache: tuple[int, list[int]] | None = None

    def _order(self, epoch: int) -> list[int]:
        if self._cache is None or self._cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._cache = (epoch, torch.randperm(len(self.sequences), generator=generator).tolist())
        return self._cache[1]

    def next_batch(self, size: int) -> list[list[int]]:
        out = []
        for _ in range(size):
            epoch, offset = divmod(self.position, len(self.sequences))
            out.append(self.sequences[self._order(epoch)[offset]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])




def ptx_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels for :func:`instructgpt.losses.ppo.ptx_loss`: the ids, with padding ignored."""
    from instructgpt.losses import IGNORE_INDEX

    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
