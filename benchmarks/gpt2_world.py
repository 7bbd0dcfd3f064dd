"""A GPT-2-small-shaped PPO world built locally: policy, reward model and prompts, no Hub.

    python benchmarks/gpt2_world.py benchmarks/models/gpt2-124m      # what bench_ppo.py --size gpt2 does first

- **Models**: GPT-2 small's shape (12 layers, 768 dims, 12 heads, 1024 positions, vocabulary 50257; 124.4M parameters
  with the tied embedding), weights drawn by transformers' GPT-2 initialiser under a fixed seed. The SFT policy is a
  ``GPT2LMHeadModel``; the reward model is a ``GPT2ForSequenceClassification`` (one output) with the policy's
  transformer and a seeded score head, the way the RM stage starts from the SFT model. The value model of both
  trainers starts from the reward model. Dropout is 0 (both trainers switch it off anyway).
- **Tokenizer**: the tiny world's (``data/tiny/base-model``: its word-level vocabulary of 1051 tokens, chat
  template and EOS), with the model's embedding padded to GPT-2's 50257 rows. The ids the tokenizer produces are
  < 1051; the models sample from all 50257, as GPT-2 would. Neither trainer decodes sampled text in the benchmark
  (no sample tables), so ids past the tokenizer's vocabulary never need a string.
- **Prompts**: ``recipes/ppo.yaml`` samples 128-token responses to UltraFeedback prompts of at most 1024 - 128 = 896
  tokens. Offline, the benchmark uses tiny-world instructions concatenated to token lengths drawn log-uniformly
  from ``[min_prompt, max_prompt]`` (default 16 to 256, mean about 85 tokens: short enough for a CPU), seeded, so
  prompt lengths vary within a batch as real prompts do.

Random weights put almost no probability on EOS (about 1/50257 per token), so nearly every response runs the full
128 tokens in both trainers; this is the case where dropping finished rows and trimming response padding save
nothing.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = REPO / "data" / "tiny" / "base-model"
TINY_PROMPTS = REPO / "data" / "tiny" / "ppo_prompts.jsonl"
VOCAB_SIZE = 50257
GPT2_SMALL_PARAMS = 124_439_808  # GPT2LMHeadModel.from_pretrained("gpt2").num_parameters()


def gpt2_small_config(eos_token_id: int, pad_token_id: int | None = None, num_labels: int = 2):
    """GPT-2 small's shape with the given special-token ids and no dropout (``num_labels``: for a classifier)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        num_labels=num_labels,
    )


def build_models(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """``out/sft`` (causal LM) and ``out/rm`` (sequence classifier), built once; returns both paths."""
    import torch
    from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

    sft, rm = out / "sft", out / "rm"
    if (sft / "model.safetensors").is_file() and (rm / "model.safetensors").is_file():
        return sft, rm
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    tokenizer.model_max_length = 1024
    config = gpt2_small_config(tokenizer.eos_token_id)
    torch.manual_seed(seed)
    policy = GPT2LMHeadModel(config)
    reward = GPT2ForSequenceClassification(
        gpt2_small_config(tokenizer.eos_token_id, tokenizer.eos_token_id, num_labels=1)
    )
    reward.transformer.load_state_dict(policy.transformer.state_dict())
    for model, path in ((policy, sft), (reward, rm)):
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    return sft, rm


def write_prompts(path: Path, count: int, min_tokens: int = 16, max_tokens: int = 256, seed: int = 0) -> Path:
    """``count`` prompts of tiny-world instructions joined to log-uniform token lengths in [min, max]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    pool = [json.loads(line)["prompt"] for line in TINY_PROMPTS.read_text(encoding="utf-8").splitlines() if line]
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        target = round(math.exp(rng.uniform(math.log(min_tokens), math.log(max_tokens))))
        words: list[str] = []
        while True:
            words.extend(rng.choice(pool).split())
            if len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) >= target:
                break
        # trim word by word to the target (a word is one or a few tokens)
        while len(words) > 1 and len(tokenizer(" ".join(words[:-1]), add_special_tokens=False)["input_ids"]) >= target:
            words.pop()
        rows.append({"prompt": " ".join(words)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "benchmarks" / "models" / "gpt2-124m")
    print(build_models(target))
    print(write_prompts(target / "prompts.jsonl", 64))
