"""Sampling and KL: each model answers every prompt once (or best of n), and how far it is from the reference.

The token ids the sampler drew are kept, so that the length, the EOS rate and the KL are computed on what the model
sampled, never on its text tokenized again. The KL to the reference is the "k1" estimate PPO's ``objective/kl``
uses, on the model's own samples, in nats per response (:func:`kl_to_reference`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instructgpt.data.padding import pad_sequences
from instructgpt.losses.ppo import logprobs_from_logits
from instructgpt.metrics.text import distinct_n
from instructgpt.modeling.reward import score_responses
from instructgpt.sampling import generate_samples
from instructgpt.sampling_vllm import VLLMSampler
from instructgpt.stages.eval.settings import EvalArguments


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are known (None ones left out); None when none is."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class Samples:
    """One model's answers to the prompts: text, the token ids of prompt and response as sampled, and whether each
    response ended with EOS (``scored_ids``: the response's ids with that EOS, what a log-probability sums over)."""

    texts: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    finished: list[bool]
    scored_ids: list[list[int]]
    kl: list[float] | None = None  # per response, to the reference

    def stats(self) -> dict[str, Any]:
        return {
            "response_tokens": mean_or_none([len(r) for r in self.response_ids]),
            "response_words": mean_or_none([len(t.split()) for t in self.texts]),
            "distinct_1": distinct_n(self.texts, 1),
            "distinct_2": distinct_n(self.texts, 2),
            "eos_fraction": mean_or_none([float(f) for f in self.finished]),
            "empty_fraction": mean_or_none([float(not t.strip()) for t in self.texts]),
            "kl_to_reference": mean_or_none(self.kl) if self.kl is not None else None,
        }


def sample_model(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    args: EvalArguments,
    path: str | None = None,
    source: str = "instructgpt eval",
) -> Samples:
    """Sample one response per prompt, keeping the token ids the sampler drew and how each response ended.

    Everything downstream (length, the EOS rate, the KL to the reference) is computed on these ids: the text is
    never tokenized again, which could split it differently than the model did. With ``use_vllm`` an engine over
    ``path`` samples (:func:`vllm_samples`) and is closed before the next model.
    """
    if args.use_vllm:
        rows = vllm_samples(tokenizer, prompts, args, path, source)
    else:
        rows = generate_samples(
            model,
            tokenizer,
            prompts,
            num_samples=1,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=True,
        )
    samples = [row[0] for row in rows]
    return Samples(
        texts=[s.text for s in samples],
        prompt_ids=[list(s.prompt_ids or []) for s in samples],
        response_ids=[s.token_ids for s in samples],
        finished=[s.finished for s in samples],
        scored_ids=[s.scored_ids for s in samples],
    )


def vllm_samples(
    tokenizer: Any, prompts: Sequence[Any], args: EvalArguments, path: str, source: str
) -> list[list[Any]]:
    """One vLLM sample per prompt from the model at ``path`` (same settings and seed for every model).

    vLLM loads a plain model directory; a LoRA adapter directory (a LoRA PPO run's checkpoint policy) is first
    merged into its base with peft and saved to a temporary directory, removed afterwards."""
    folder = Path(path)
    temporary = None
    if (folder / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        temporary = tempfile.mkdtemp(prefix="instructgpt-vllm-")
        AutoPeftModelForCausalLM.from_pretrained(str(folder)).merge_and_unload().save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        folder = Path(temporary)
    sampler = VLLMSampler(
        str(folder), tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization, seed=args.seed, source=source
    )
    try:
        return sampler.generate_samples(
            list(prompts),
            num_samples=1,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            progress=True,
        )
    finally:
        sampler.close()
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


@torch.inference_mode()
def sample_best_of_n(
    model: Any, tokenizer: Any, prompts: Sequence[Any], args: EvalArguments, n: int, reward: tuple[Any, Any, float]
) -> Samples:
    """Best-of-n (Nakano et al. 2021, section 3.3; Stiennon et al. 2020): sample ``n`` responses per prompt from the
    policy and keep the one the reward model scores highest (the first of equal scores). No training: the method's
    only knob is ``n``, and its only cost is n times the sampling and scoring.

    Its KL to the policy it samples from has a closed form in ``n`` alone, used by Stiennon et al. (2020) and Gao
    et al. (2022) to put best-of-n on the same axis as RL:

    .. math:: KL(\\pi_{best\\,of\\,n} \\| \\pi) = \\log n - (n - 1) / n

    (an upper bound that is tight for distinct responses, Beirami et al. 2024). Samples' ``kl`` holds it per response.
    The n samples are drawn with transformers (`use_vllm` applies to the one-sample models).
    """
    rows = generate_samples(
        model,
        tokenizer,
        prompts,
        num_samples=n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
    )
    rm_model, rm_tokenizer, _ = reward
    scores = score_responses(
        rm_model,
        rm_tokenizer,
        [p for p, row in zip(prompts, rows) for _ in row],
        [s.text for row in rows for s in row],
        batch_size=args.batch_size,
    )
    picks = []
    for i, row in enumerate(rows):
        row_scores = scores[i * n : (i + 1) * n]
        picks.append(row[max(range(n), key=row_scores.__getitem__)])
    return Samples(
        texts=[s.text for s in picks],
        prompt_ids=[list(s.prompt_ids or []) for s in picks],
        response_ids=[s.token_ids for s in picks],
        finished=[s.finished for s in picks],
        scored_ids=[s.scored_ids for s in picks],
        kl=[math.log(n) - (n - 1) / n] * len(picks),
    )


def response_logprobs(
    model: Any,
    prompt_ids: Sequence[list[int]],
    response_ids: Sequence[list[int]],
    temperature: float,
    pad_token_id: int,
    batch_size: int = 32,
) -> list[float]:
    """:math:`\\sum_t \\log\\pi(y_t | x, y_{<t})` of each response under ``model`` (logits / temperature)."""
    device = next(model.parameters()).device
    scale = temperature if temperature > 0 else 1.0
    order = sorted(range(len(prompt_ids)), key=lambda i: -(len(prompt_ids[i]) + len(response_ids[i])))
    totals = [0.0] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention = pad_sequences([prompt_ids[i] + response_ids[i] for i in chunk], pad_token_id)
        # positions holding a response token: past the prompt, before the padding
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        starts = torch.tensor([len(prompt_ids[i]) for i in chunk]).unsqueeze(1)
        target = (positions >= starts) & attention.bool()
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False).logits
        logprobs = logprobs_from_logits(logits[:, :-1].float() / scale, input_ids[:, 1:].to(device))
        sums = (logprobs * target[:, 1:].to(device)).sum(1).tolist()
        for i, value in zip(chunk, sums):
            totals[i] = value
    return totals


def kl_to_reference(
    samples: Samples, model: Any, ref_model: Any, pad_token_id: int, temperature: float, batch_size: int
) -> list[float]:
    """Per-response k1 estimate of KL(model || reference) on the model's own sampled tokens (the EOS that ended a
    response included, as PPO's ``objective/kl`` counts it)."""
    own = response_logprobs(model, samples.prompt_ids, samples.scored_ids, temperature, pad_token_id, batch_size)
    ref = response_logprobs(ref_model, samples.prompt_ids, samples.scored_ids, temperature, pad_token_id, batch_size)
    return [a - b for a, b in zip(own, ref)]


def same_vocabulary(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()
