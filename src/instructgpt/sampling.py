"""Batched sampling from a policy: the one place that turns prompts into responses.

Comparison collection (InstructGPT step 2 samples K responses per prompt from the current policy), evaluation and
the ``instructgpt generate`` tool all call :func:`generate_responses` (texts) or :func:`generate_samples` (texts,
token ids and whether each response reached EOS), so every stage formats prompts, pads, samples and cuts
responses the same way:

- prompts are rendered with :func:`instructgpt.modeling.format_prompt` (the chat template the SFT model saved);
- a batch is **left**-padded, so every row's last prompt token sits at the same position and generated tokens
  follow it directly (a decoder-only model continues from the right end of its input);
- ``model.generate`` keeps the KV cache (``use_cache=True``): each new token costs one position, not a full pass;
- a response ends at the first EOS token, which is not part of the returned text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from instructgpt.data.formats import Prompt
from instructgpt.data.padding import pad_sequences
from instructgpt.modeling import format_prompt, model_context_length


def _unwrap(model: Any) -> Any:
    """The module that has ``generate``: DistributedDataParallel keeps the model in ``.module``."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt], max_prompt_tokens: int | None) -> list[list[int]]:
    """Token ids of each formatted prompt; a prompt longer than ``max_prompt_tokens`` keeps its end.

    The end holds the part the response depends on most (the question and the ``### Response:`` cue), so a prompt
    that would not leave room for ``max_new_tokens`` in the context loses tokens from its start.
    ``add_special_tokens=False``: the chat template already wrote any BOS token it wants.
    """
    texts = [format_prompt(tokenizer, p) for p in prompts]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None:
        ids = [row[-max_prompt_tokens:] for row in ids]
    return ids


def cut_at_eos(token_ids: Sequence[int], eos_token_ids: set[int]) -> tuple[list[int], int | None]:
    """The generated tokens before the first EOS (finished rows are filled with padding after it), and that EOS
    token (None when the response never ended)."""
    out = []
    for token in token_ids:
        if token in eos_token_ids:
            return out, token
        out.append(token)
    return out, None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, (list, tuple)):
        ids.update(configured)
    return {i for i in ids if i is not None}


@dataclass
class Sample:
    """One sampled response: its text, its token ids (up to, not including, the EOS) and whether it reached EOS.

    ``finished`` is False for a response cut off by ``max_new_tokens``; ``eos_token_id`` is the stop token that
    ended it (a model may have several, e.g. ``<|im_end|>`` and ``<|endoftext|>``), None when it did not end.
    """

    text: str
    token_ids: list[int]
    finished: bool
    eos_token_id: int | None = None
    prompt_ids: list[int] | None = None  # the formatted prompt the model continued (after any truncation)

    @property
    def scored_ids(self) -> list[int]:
        """The tokens the model chose, the ending EOS included: what a log-probability or a KL sums over."""
        return self.token_ids + ([self.eos_token_id] if self.eos_token_id is not None else [])


@torch.inference_mode()
def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[Sample]]:
    """Sample ``num_samples`` responses for each prompt; returns ``samples[prompt_index][sample_index]``.

    ``temperature: 0`` decodes greedily; otherwise tokens are sampled from the softmax at that temperature,
    optionally restricted to the ``top_k`` most likely tokens (0: no limit) or the smallest set with probability
    ``top_p`` (1.0: no limit). ``batch_size`` counts sequences (prompt copies), not prompts. ``seed`` seeds torch's
    generator before sampling, so the same call gives the same responses.

    Sequences are grouped by prompt length before batching, which keeps left padding (and wasted compute) small;
    the result comes back in the order of ``prompts``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not prompts:
        return []
    module = _unwrap(model)
    context = model_context_length(module.config)
    max_prompt_tokens = None if context is None else max(1, context - max_new_tokens)
    encoded = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(module, tokenizer)

    # one job per (prompt, sample); longest prompts first so each batch holds similar lengths
    jobs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    jobs.sort(key=lambda job: -len(encoded[job[0]]))
    results: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]

    sampling: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        sampling.update(temperature=temperature, top_k=top_k, top_p=top_p)
    if seed is not None:
        torch.manual_seed(seed)

    was_training = module.training
    module.eval()
    device = _device(module)
    batches = range(0, len(jobs), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="Generating", unit="batch")
    try:
        for start in batches:
            batch = jobs[start : start + batch_size]
            input_ids, attention_mask = pad_sequences([encoded[p] for p, _ in batch], pad_id, side="left")
            output = module.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=sorted(eos_ids),
                use_cache=True,
                **sampling,
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            for (p, s), tokens in zip(batch, new_tokens):
                kept, eos = cut_at_eos(tokens, eos_ids)
                text = tokenizer.decode(kept, skip_special_tokens=True).strip()
                results[p][s] = Sample(
                    text=text, token_ids=kept, finished=eos is not None, eos_token_id=eos, prompt_ids=encoded[p]
                )
    finally:
        if was_training:
            module.train()
    return results  # type: ignore[return-value]


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[str]]:
    """The texts of :func:`generate_samples`: ``responses[prompt_index][sample_index]`` (same arguments)."""
    samples = generate_samples(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    return [[sample.text for sample in row] for row in samples]
