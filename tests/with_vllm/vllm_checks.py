"""The vLLM measurements behind tests/with_vllm/test_vllm.py, in one process with one engine (vLLM takes ~50 s to
start on CPU and spawns workers, so it runs here under ``if __name__ == "__main__":``, never inside pytest's process).

    python tests/with_vllm/vllm_checks.py MODEL_DIR OUT.json

Writes, for the tests to assert on:

- ``greedy``: HF's and vLLM's greedy token ids for the same prompts;
- ``seeded``: vLLM's samples for one seed twice, for another seed, and for the first half of the prompts alone;
- ``push``: the largest |log-prob| gap between vLLM and the trainer's model on teacher-forced sequences, before and
  after pushing changed weights (a full model, then a LoRA policy merged), and whether the push left the LoRA
  policy's own weights untouched.
"""

from __future__ import annotations

import json
import sys
import time


def prompts_from(path: str, count: int) -> list:
    from instructgpt.data.formats import load_prompts

    return load_prompts(path, key="prompts", source=path, limit=count)


def vllm_token_logprobs(llm, sequences: list[list[int]]) -> list[list[float]]:
    """vLLM's log-prob of every token after the first of each sequence (teacher forcing via prompt_logprobs)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
    result = []
    for seq, out in zip(sequences, outputs):
        steps = out.prompt_logprobs[1:]  # the first token has no prediction
        result.append([float(step[token].logprob) for step, token in zip(steps, seq[1:])])
    return result


def hf_token_logprobs(model, sequences: list[list[int]]) -> list[list[float]]:
    import torch

    result = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq])
            logits = model(input_ids=ids, use_cache=False).logits.float()
            logprobs = torch.log_softmax(logits[0, :-1], dim=-1).gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)
            result.append(logprobs.tolist())
    return result


def max_gap(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def main(model_dir: str, out_path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from instructgpt.modeling import load_tokenizer, model_context_length
    from instructgpt.sampling import generate_samples as hf_generate
    from instructgpt.sampling_vllm import VLLMSampler, hf_weights, push_policy

    torch.manual_seed(0)
    report: dict = {}
    tokenizer = load_tokenizer(model_dir)
    prompts = prompts_from("data/tiny/eval_prompts.jsonl", 24)
    started = time.time()
    sampler = VLLMSampler(model_dir, tokenizer, seed=0)
    report["engine_start_s"] = time.time() - started

    # greedy: token for token
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    hf = hf_generate(hf_model, tokenizer, prompts, max_new_tokens=40, temperature=0.0, batch_size=8)
    vl = sampler.generate_samples(prompts, max_new_tokens=40, temperature=0.0)
    report["greedy"] = {
        "hf": [[r[0].token_ids, r[0].eos_token_id, r[0].prompt_ids] for r in hf],
        "vllm": [[r[0].token_ids, r[0].eos_token_id, r[0].prompt_ids] for r in vl],
        "hf_text": [r[0].text for r in hf],
        "vllm_text": [r[0].text for r in vl],
    }

    # seeded sampling: the same seed gives the same collection, whatever else is in the batch
    def ids(rows):
        return [[s.token_ids for s in row] for row in rows]

    settings = dict(num_samples=4, max_new_tokens=40, temperature=1.0)
    report["seeded"] = {
        "a": ids(sampler.generate_samples(prompts, seed=7, **settings)),
        "b": ids(sampler.generate_samples(prompts, seed=7, **settings)),
        "other_seed": ids(sampler.generate_samples(prompts, seed=8, **settings)),
        "first_half": ids(sampler.generate_samples(prompts[:12], seed=7, **settings)),
    }

    # weight push: change the trainer's weights, push, compare log-probs on teacher-forced sequences
    llm = sampler.llm
    context = model_context_length(hf_model.config)
    sequences = [row[2] + row[0] for row in report["greedy"]["hf"]][:8]
    sequences = [s[:context] for s in sequences]
    push: dict = {"start": max_gap(vllm_token_logprobs(llm, sequences), hf_token_logprobs(hf_model, sequences))}
    optimizer = torch.optim.SGD(hf_model.parameters(), lr=0.05)
    for seq in sequences:  # a few training steps, as an update would take
        batch = torch.tensor([seq])
        hf_model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = hf_token_logprobs(hf_model, sequences)
    push["before_push"] = max_gap(vllm_token_logprobs(llm, sequences), trained)
    push["tensors"] = push_policy(llm, hf_model)
    push["after_push"] = max_gap(vllm_token_logprobs(llm, sequences), trained)

    # LoRA: a policy with a non-zero adapter, pushed merged
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        hf_model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,
            init_lora_weights=False,
        ),
    )
    lora.eval()
    base_before = {k: v.clone() for k, v in lora.named_parameters() if "lora_" not in k}
    lora_logprobs = hf_token_logprobs(lora, sequences)
    push["lora_before_push"] = max_gap(vllm_token_logprobs(llm, sequences), lora_logprobs)
    push["lora_tensors"] = push_policy(llm, lora)
    push["lora_after_push"] = max_gap(vllm_token_logprobs(llm, sequences), lora_logprobs)
    push["lora_base_unchanged"] = all(
        torch.equal(base_before[k], v) for k, v in lora.named_parameters() if k in base_before
    )
    plain = AutoModelForCausalLM.from_pretrained(model_dir)
    push["lora_names_match"] = sorted(n for n, _ in hf_weights(lora)) == sorted(n for n, _ in plain.named_parameters())
    report["push"] = push
    sampler.close()
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(report, handle)
    print(json.dumps({k: v for k, v in report.items() if k in ("engine_start_s", "push")}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
