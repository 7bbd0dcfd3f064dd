"""Reward-model training throughput: InstructGPT's grouped K-way batches against TRL's pairwise RewardTrainer.

    python benchmarks/bench_reward.py                       # trains a quick tiny SFT policy first (a few seconds)
    python benchmarks/bench_reward.py --policy runs/tiny/sft --num_prompts 400

One process, one model, the same rankings. For K = 4 and K = 9 it samples K responses per prompt from the policy,
has the simulated labeler rank them, then trains two reward models from the same initial weights for one epoch:

- **grouped** (``instructgpt.stages.rm``): one batch element per prompt, each response forwarded once, the loss over
  all :math:`\\binom{K}{2}` pairs of the prompt (Ouyang et al. 2022, section 3.5) - K sequences per ranking;
- **pairs** (``trl.RewardTrainer``): the same rankings expanded to their :math:`\\binom{K}{2}` (chosen, rejected)
  pairs, shuffled as independent examples - :math:`2\\binom{K}{2} = K(K-1)` sequences per ranking.

Both see the same number of sequences per optimizer step (``--sequences_per_step``), so a step costs about the same;
the grouped run needs :math:`K - 1` times fewer of them. It prints comparisons per second of training for both,
their ratio, and each model's held-out pairwise accuracy on rankings of prompts neither saw.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, quick_sft


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--policy",
        help="SFT model to sample from and to initialise both reward models "
        "(default: train a quick one from recipes/tiny/sft.yaml)",
    )
    parser.add_argument("--prompts", default=str(REPO / "data/tiny/rm_prompts.jsonl"))
    parser.add_argument("--num_prompts", type=int, default=300, help="prompts to sample (train + held out)")
    parser.add_argument("--eval_fraction", type=float, default=0.2)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 9])
    parser.add_argument("--sequences_per_step", type=int, default=36, help="sequences forwarded per optimizer step")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--labeler_noise", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def sample_pools(
    policy: Path, prompts: list[str], k: int, max_new_tokens: int, seed: int
) -> list[tuple[str, list[str]]]:
    """K distinct responses per prompt (up to 4 rounds of resampling); prompts that never reach K are left out."""
    from transformers import AutoModelForCausalLM

    from instructgpt.modeling import load_tokenizer
    from instructgpt.sampling import generate_responses
    from instructgpt.stages.collect import add_distinct

    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    tokenizer = load_tokenizer(str(policy))
    pools: dict[int, list[str]] = {i: [] for i in range(len(prompts))}
    for round_index in range(4):
        request = [i for i in pools for _ in range(k - len(pools[i]))]
        if not request:
            break
        samples = generate_responses(
            model,
            tokenizer,
            [prompts[i] for i in request],
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            seed=seed + round_index,
            batch_size=128,
        )
        for i, (text,) in zip(request, samples):
            add_distinct(pools[i], [text], k)
    return [(prompts[i], pool) for i, pool in pools.items() if len(pool) == k]


def rank(pools: list[tuple[str, list[str]]], k: int, noise: float, seed: int) -> list[dict]:
    """Rankings of the first ``k`` responses of each pool by the simulated labeler, best first."""
    from instructgpt.judges import SimulatedLabeler

    labeler = SimulatedLabeler(noise=noise, seed=seed)
    rows = []
    for prompt, pool in pools:
        ranking = labeler.rank(prompt, pool[:k])
        if len(set(ranking.scores)) == k:  # a strict order, so both trainers see exactly C(K,2) comparisons
            rows.append({"prompt": prompt, "responses": [pool[:k][j] for j in ranking.order]})
    return rows


def as_pairs(dataset) -> datasets.Dataset:  # noqa: F821
    """Every ranking's C(K,2) (chosen, rejected) pairs in TRL's tokenized preference format."""
    import datasets

    rows = []
    for example in dataset:
        ids = example["response_ids"]
        rows += [
            {"chosen_ids": ids[i], "rejected_ids": ids[j]} for i in range(len(ids)) for j in range(i + 1, len(ids))
        ]
    return datasets.Dataset.from_list(rows)


def train(kind: str, policy: Path, tokenizer, dataset, batch_size: int, args, output_dir: Path):
    """One epoch of one trainer from the policy's weights plus a seeded new head; returns (model, seconds)."""
    from transformers import set_seed
    from trl import ModelConfig, RewardConfig, RewardTrainer

    from instructgpt.modeling.reward import load_sequence_classifier
    from instructgpt.stages.rm import RankingCollator, build_trainer_class

    config = RewardConfig(
        output_dir=str(output_dir),
        report_to="none",
        bf16=False,
        activation_checkpointing=False,
        num_train_epochs=1,
        per_device_train_batch_size=batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        seed=args.seed,
        dataloader_num_workers=0,
        max_length=None,
        disable_tqdm=True,
    )
    set_seed(args.seed)
    model = load_sequence_classifier(str(policy), ModelConfig(model_name_or_path=str(policy)), False)
    model.config.pad_token_id = tokenizer.pad_token_id
    if kind == "grouped":
        trainer = build_trainer_class()(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            data_collator=RankingCollator(tokenizer.pad_token_id),
        )
    else:
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return trainer.model, time.perf_counter() - start


def main() -> None:
    args = parse()
    os.chdir(REPO)  # the tiny recipes name their data relative to the repository
    import json

    import torch

    from instructgpt.data.rankings import split_by_prompt
    from instructgpt.modeling import load_tokenizer
    from instructgpt.modeling.reward import evaluate_rankings
    from instructgpt.stages.rm import tokenize_rankings

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="bench_reward-"))
    policy = Path(args.policy) if args.policy else quick_sft(work / "sft")
    tokenizer = load_tokenizer(str(policy))
    prompts = [json.loads(line)["prompt"] for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    random.Random(args.seed).shuffle(prompts)
    prompts = prompts[: args.num_prompts]

    t0 = time.perf_counter()
    pools = sample_pools(policy, prompts, max(args.ks), args.max_new_tokens, args.seed)
    print(
        f"sampled {max(args.ks)} distinct responses for {len(pools)} of {len(prompts)} prompts "
        f"in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    lines = [f"device: {device}; policy: {policy}; {args.sequences_per_step} sequences per optimizer step; one epoch"]
    header = (
        f"{'K':>2} {'trainer':<26} {'rankings':>8} {'comparisons':>11} {'seconds':>8} {'comparisons/s':>13} "
        f"{'held-out acc':>12}"
    )
    lines.append(header)
    for k in args.ks:
        rows = rank(pools, k, args.labeler_noise, args.seed)
        train_rows, eval_rows = split_by_prompt(rows, args.eval_fraction, args.seed)
        grouped = tokenize_rankings(train_rows, tokenizer, None, f"K={k}")
        pairs = as_pairs(grouped)
        comparisons = len(train_rows) * math.comb(k, 2)
        assert len(pairs) == comparisons
        results = {}
        for kind, data, batch in (
            ("grouped", grouped, max(1, args.sequences_per_step // k)),
            ("pairs", pairs, max(1, args.sequences_per_step // 2)),
        ):
            model, seconds = train(kind, policy, tokenizer, data, batch, args, work / f"{kind}-{k}")
            accuracy = evaluate_rankings(model, tokenizer, eval_rows)["pairwise_accuracy"]
            results[kind] = comparisons / seconds
            name = "grouped K-way (ours)" if kind == "grouped" else "pairs (TRL RewardTrainer)"
            lines.append(
                f"{k:>2} {name:<26} {len(train_rows):>8} {comparisons:>11} {seconds:>8.1f} "
                f"{comparisons / seconds:>13.1f} {accuracy:>12.3f}"
            )
            print(lines[-1], flush=True)
        lines.append(
            f"{k:>2} speed-up (grouped / pairs): {results['grouped'] / results['pairs']:.2f}x "
            f"(sequences forwarded per ranking: {k} vs {k * (k - 1)})"
        )
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
