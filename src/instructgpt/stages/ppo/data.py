"""PPO's data: prompts to sample episodes from, in a resumable order, and the PPO-ptx text.

Prompts are tokenized once, up front, with the chat template the SFT model saved
(:func:`instructgpt.sampling.encode_prompts`), so the policy sees exactly the format SFT trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig

from instructgpt.data import DataError, find_empty, load_data, require_columns, require_rows, row_place
from instructgpt.data.formats import load_prompts, to_prompt_completion
from instructgpt.infra.errors import InstructGPTError
from instructgpt.losses import IGNORE_INDEX
from instructgpt.modeling import load_tokenizer, model_context_length
from instructgpt.modeling.config import load_pretrained
from instructgpt.sampling import encode_prompts


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
        return self._permutation(epoch)[start : start + self.local_batch_size]


# --------------------------------------------------------------------------------------------------------------
# PPO-ptx: language-modelling text mixed into the updates
# --------------------------------------------------------------------------------------------------------------


def ptx_texts(dataset: Any, tokenizer: Any, *, name: str, source: str, path: str = "") -> list[str]:
    """Texts for the ptx term: a ``text`` column, or demonstrations rendered whole with the chat template."""
    fmt = require_columns(dataset, [("text",), ("messages",), ("prompt", "completion")], name=name, source=source)
    if fmt == ("text",):
        texts = list(dataset["text"])
    else:
        texts = []
        for row in dataset:
            pair = to_prompt_completion(row)
            texts.append(tokenizer.apply_chat_template(pair["prompt"] + pair["completion"], tokenize=False))
    empty = find_empty(texts)
    if empty is not None:
        raise DataError(f"{source}: {name} {row_place(path, empty)}: empty text")
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
    texts = ptx_texts(dataset, tokenizer, name=label, source=source, path=name)
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
    return input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


# --------------------------------------------------------------------------------------------------------------
# Everything a run reads before its first update
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PromptData:
    """The policy's tokenizer and what a PPO run samples from, as :func:`load_prompt_data` reads them."""

    tokenizer: Any
    prompts: list[Any]
    prompt_ids: list[list[int]]
    stop_token_ids: list[int]
    """What ends a response: the EOS token (``stop_token: eos``), ``stop_token_id``, or nothing."""
    eval_prompts: list[Any] = field(default_factory=list)
    eval_prompt_ids: list[list[int]] = field(default_factory=list)
    ptx: PtxStream | None = None


def load_prompt_data(
    script_args: Any, args: Any, model_args: Any, policy_path: str, process_index: int, source: str
) -> PromptData:
    """The tokenizer (left padding, the SFT model's chat template), the prompts and held-out prompts tokenized to
    leave ``response_length`` tokens of the model's context, the ptx stream of this process, the stop tokens."""
    sa = script_args
    tokenizer = load_tokenizer(
        policy_path,
        revision=model_args.model_revision,
        trust_remote_code=args.trust_remote_code,
        chat_template=sa.chat_template,
        prompt_template=sa.prompt_template,
        pad_token=sa.pad_token,
        padding_side="left",
    )
    config = load_pretrained(
        AutoConfig, policy_path, key="model_name_or_path", source=source, trust_remote_code=args.trust_remote_code
    )
    context = model_context_length(config)
    if context is not None and args.response_length >= context:
        raise InstructGPTError(
            f"{source}: `response_length` ({args.response_length}) leaves no room for a prompt in the model's "
            f"context of {context} tokens"
        )
    max_prompt = None if context is None else context - args.response_length
    prompts = load_prompts(
        sa.dataset,
        key="dataset_name",
        source=source,
        config=sa.dataset_config,
        split=sa.dataset_train_split,
        limit=sa.max_train_samples,
    )
    data = PromptData(tokenizer, prompts, encode_prompts(tokenizer, prompts, max_prompt), stop_token_ids=[])
    if sa.eval_dataset_name and args.eval_num_prompts > 0:
        limit = min(args.eval_num_prompts, sa.max_eval_samples or args.eval_num_prompts)
        data.eval_prompts = load_prompts(
            sa.eval_dataset_name,
            key="eval_dataset_name",
            source=source,
            config=sa.dataset_config,
            split=sa.dataset_test_split or "test",
            limit=limit,
        )
        data.eval_prompt_ids = encode_prompts(tokenizer, data.eval_prompts, max_prompt)
    if args.ptx_coef > 0:
        sequences = load_ptx(
            sa.ptx_dataset_name,
            tokenizer,
            source=source,
            config=sa.ptx_dataset_config,
            split=sa.ptx_dataset_split,
            limit=sa.max_ptx_samples,
            max_length=min(args.ptx_max_length, context or args.ptx_max_length),
        )
        data.ptx = PtxStream(sequences, args.seed, process_index)
    if args.stop_token == "eos":
        data.stop_token_ids = [tokenizer.eos_token_id]
    elif args.stop_token_id is not None:
        data.stop_token_ids = [args.stop_token_id]
    return data
