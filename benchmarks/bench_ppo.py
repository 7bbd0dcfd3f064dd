"""Benchmark: this project's PPO trainer against TRL 1.12's ``trl.experimental.ppo.PPOTrainer``.

    python benchmarks/bench_ppo.py                       # tiny world: runs/tiny/sft + runs/tiny/rm
    python benchmarks/bench_ppo.py --sft DIR --rm DIR --episodes 1536 --threads 1

TRL removed its PPO trainer in 1.13, so TRL 1.12 (the last release that has it) is installed into its own virtual
environment, ``benchmarks/.venv-trl112`` (torch 2.13.0 CPU first, so pip pulls no CUDA wheels; transformers 5.16.0,
released the same day as TRL 1.12). Both trainers then run one after the other, each in a fresh subprocess, on the
same SFT policy, reward model, prompts (tokenized once, identically), batch shapes, response length and PPO
hyper-parameters (``SETTINGS`` below, the tiny recipe's). Reported per trainer:

- **episodes/s**: episodes / wall time of ``train()`` (model loading excluded, as TRL's own ``eps`` metric);
- **peak memory**: the worker process's peak resident set size (``ru_maxrss``);
- **RM-score gain**: mean normalised reward-model score of the trained policy minus the SFT policy's on the
  held-out prompts, both sampled and scored by the same code (``instructgpt.sampling`` /
  ``instructgpt.modeling.reward.score_responses``) with the same seed; the KL to the SFT policy of those samples alongside.

Differences that are settings, not speed levers, are aligned: no gradient checkpointing (TRL's default is on), no
sample-generation tables, no checkpoints, no W&B, and no gradient clipping in ours (TRL's PPO loop never clips).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRL_VENV = REPO / "benchmarks" / ".venv-trl112"
TRL_PINS = ["trl==1.12.0", "transformers==5.16.0"]

# PPO settings shared by both trainers (recipes/tiny/ppo.yaml's), TRL's names
SETTINGS = {
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 4,
    "num_mini_batches": 2,
    "num_ppo_epochs": 4,
    "response_length": 48,
    "temperature": 1.0,
    "missing_eos_penalty": 1.0,
    "kl_coef": 0.05,
    "kl_estimator": "k1",
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "gamma": 1.0,
    "lam": 0.95,
    "learning_rate": 3.0e-5,
    "lr_scheduler_type": "constant",
    "local_rollout_forward_batch_size": 64,
    "seed": 42,
}


# ------------------------------------------------------------------------------------------------------------------
# Workers (each runs in its own process; the TRL one in the TRL 1.12 virtualenv, so it imports no instructgpt code)
# ------------------------------------------------------------------------------------------------------------------


def _finish(result: dict, path: str) -> None:
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(path).write_text(json.dumps(result, indent=2))


def worker_ours(cfg: dict) -> None:
    from instructgpt.stages.ppo.trainer import PPOTrainer, parse_args

    overrides = {
        "model_name_or_path": cfg["sft"], "reward_model_path": cfg["rm"], "output_dir": cfg["output_dir"],
        "dataset_name": cfg["prompts_file"], "eval_dataset_name": "null", "total_episodes": cfg["episodes"],
        "if_output_exists": "overwrite", "save_strategy": "no", "num_sample_generations": 0, "report_to": "[]",
        "max_grad_norm": 0, "gradient_checkpointing": "false", "disable_tqdm": "true", **SETTINGS,
    }
    argv = [str(REPO / "recipes" / "tiny" / "ppo.yaml")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    (script_args, args, model_args), recipe = parse_args(argv)
    trainer = PPOTrainer(script_args, args, model_args, recipe)
    start = time.perf_counter()
    summary = trainer.train()
    elapsed = time.perf_counter() - start
    _finish({
        "trainer": "instructgpt", "seconds": elapsed, "episodes": summary["episode"],
        "updates": summary["global_step"], "last_scores": summary.get("objective/scores"),
        "last_kl": summary.get("objective/kl"), "policy_dir": cfg["output_dir"],
    }, cfg["result"])


def worker_trl(cfg: dict) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(cfg["sft"], padding_side="left")
    if tokenizer.pad_token is None:  # as instructgpt.modeling.load_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    prompt_ids = [json.loads(line)["input_ids"] for line in open(cfg["prompt_ids_file"], encoding="utf-8")]
    train_dataset = Dataset.from_dict({"input_ids": prompt_ids})
    eval_dataset = Dataset.from_dict({"input_ids": prompt_ids[:8]})
    args = PPOConfig(
        output_dir=cfg["output_dir"], total_episodes=cfg["episodes"], stop_token="eos", whiten_rewards=False,
        num_sample_generations=0, gradient_checkpointing=False, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, **SETTINGS,
    )
    policy = AutoModelForCausalLM.from_pretrained(cfg["sft"])
    ref_policy = AutoModelForCausalLM.from_pretrained(cfg["sft"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1)
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
        value_model=value_model, train_dataset=train_dataset, eval_dataset=eval_dataset,
    )
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    trainer.save_model(cfg["output_dir"])
    tokenizer.save_pretrained(cfg["output_dir"])
    logs = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    _finish({
        "trainer": "trl-1.12", "seconds": elapsed, "episodes": trainer.state.episode,
        "updates": trainer.state.global_step, "last_scores": logs[-1]["objective/scores"] if logs else None,
        "last_kl": logs[-1]["objective/kl"] if logs else None, "policy_dir": cfg["output_dir"],
    }, cfg["result"])


# ------------------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------------------


def ensure_trl_venv() -> Path:
    """Create ``benchmarks/.venv-trl112`` with torch 2.13.0 (CPU) and TRL 1.12 once; return its python."""
    python = TRL_VENV / "bin" / "python"
    check = [str(python), "-c", "import trl, transformers; assert trl.__version__ == '1.12.0', trl.__version__"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"[bench] creating {TRL_VENV} (torch 2.13.0, {' '.join(TRL_PINS)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # first, so nothing below pulls CUDA wheels
    subprocess.run(pip + TRL_PINS, check=True)
    subprocess.run(check, check=True)
    return python


def tokenize_prompts(sft: str, prompts_file: str, out: Path, response_length: int) -> None:
    """Token ids of every prompt, formatted with the SFT model's chat template, shared by both trainers."""
    from transformers import AutoConfig

    from instructgpt.sampling import encode_prompts
    from instructgpt.modeling import load_tokenizer, model_context_length
    from instructgpt.data.formats import load_prompts

    tokenizer = load_tokenizer(sft)
    prompts = load_prompts(prompts_file, key="--prompts", source="bench_ppo")
    context = model_context_length(AutoConfig.from_pretrained(sft))
    ids = encode_prompts(tokenizer, prompts, None if context is None else context - response_length)
    with open(out, "w", encoding="utf-8") as handle:
        for row in ids:
            handle.write(json.dumps({"input_ids": row}) + "\n")


def run_worker(python: str, name: str, cfg: dict, env: dict) -> dict:
    cfg_path = Path(cfg["output_dir"]).parent / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg))
    print(f"[bench] training with {name} ...", flush=True)
    start = time.time()
    proc = subprocess.run([python, __file__, "--worker", name, "--worker_config", str(cfg_path)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"[bench] the {name} worker failed (exit code {proc.returncode})")
    result = json.loads(Path(cfg["result"]).read_text())
    print(f"[bench]   {name}: {result['episodes']} episodes in {result['seconds']:.1f}s "
          f"(process {time.time() - start:.0f}s with loading)", flush=True)
    return result


def evaluate_policies(paths: dict[str, str], rm: str, eval_prompts: str, response_length: int, num_samples: int,
                      seed: int) -> dict[str, dict[str, float]]:
    """Mean normalised RM score and KL to the SFT policy of each policy's samples on the held-out prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from instructgpt.sampling import generate_responses
    from instructgpt.modeling import format_prompt, load_tokenizer
    from instructgpt.data.formats import load_prompts
    from instructgpt.modeling.reward import load_reward_model, score_responses

    prompts = load_prompts(eval_prompts, key="--eval_prompts", source="bench_ppo")
    reward_model, rm_tokenizer, _ = load_reward_model(rm)
    sft = AutoModelForCausalLM.from_pretrained(paths["sft"]).eval()
    results = {}
    for name, path in paths.items():
        tokenizer = load_tokenizer(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        responses = generate_responses(model, tokenizer, prompts, num_samples=num_samples,
                                       max_new_tokens=response_length, temperature=1.0, seed=seed, batch_size=64)
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat = [r for rs in responses for r in rs]
        scores = score_responses(reward_model, rm_tokenizer, flat_prompts, flat, batch_size=64)
        kls = []
        with torch.no_grad():
            for prompt, response in zip(flat_prompts, flat):
                prefix = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
                full = prefix + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = torch.tensor([full])
                targets = ids[:, len(prefix):]

                def logp(m):
                    logits = m(input_ids=ids).logits[:, len(prefix) - 1:-1].float()
                    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).sum().item()

                kls.append(logp(model) - logp(sft))
        results[name] = {"score": sum(scores) / len(scores), "kl": sum(kls) / len(kls),
                         "length": sum(len(r.split()) for r in flat) / len(flat)}
        print(f"[bench]   eval {name}: score {results[name]['score']:+.4f}, KL {results[name]['kl']:.3f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", default="runs/tiny/sft", help="SFT policy (output_dir of instructgpt-sft)")
    parser.add_argument("--rm", default="runs/tiny/rm", help="reward model (output_dir of instructgpt-rm)")
    parser.add_argument("--prompts", default="data/tiny/ppo_prompts.jsonl")
    parser.add_argument("--eval_prompts", default="data/tiny/eval_prompts.jsonl")
    parser.add_argument("--episodes", type=int, default=1536, help="total_episodes of each run")
    parser.add_argument("--eval_samples", type=int, default=2, help="samples per held-out prompt for the gain")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both workers (default: torch's)")
    parser.add_argument("--work_dir", default="benchmarks/results/ppo")
    parser.add_argument("--only", choices=["ours", "trl"], default=None, help="run one trainer (debugging)")
    parser.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--worker_config", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.worker:
        cfg = json.loads(Path(opts.worker_config).read_text())
        import torch

        if cfg.get("threads"):
            torch.set_num_threads(cfg["threads"])
        (worker_ours if opts.worker == "ours" else worker_trl)(cfg)
        return

    os.chdir(REPO)
    work = Path(opts.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    trl_python = ensure_trl_venv() if opts.only != "ours" else None
    prompt_ids_file = work / "prompt_ids.jsonl"
    tokenize_prompts(opts.sft, opts.prompts, prompt_ids_file, SETTINGS["response_length"])
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    common = {"sft": str(Path(opts.sft).resolve()), "rm": str(Path(opts.rm).resolve()), "episodes": opts.episodes,
              "threads": opts.threads, "prompts_file": str(Path(opts.prompts).resolve()),
              "prompt_ids_file": str(prompt_ids_file)}
    results = {}
    for name, python in (("ours", sys.executable), ("trl", str(trl_python) if trl_python else None)):
        if opts.only and name != opts.only:
            continue
        cfg = {**common, "output_dir": str(work / f"policy-{name}"), "result": str(work / f"result-{name}.json")}
        results[name] = run_worker(python, name, cfg, env)

    paths = {"sft": common["sft"], **{name: r["policy_dir"] for name, r in results.items()}}
    evals = evaluate_policies(paths, common["rm"], opts.eval_prompts, SETTINGS["response_length"],
                              opts.eval_samples, seed=1234)
    report = {"settings": SETTINGS, "episodes": opts.episodes, "threads": opts.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "eval": evals, "runs": {}}
    print("\n| trainer | episodes/s | peak RSS (MB) | RM-score gain | KL to SFT |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        eps = r["episodes"] / r["seconds"]
        gain = evals[name]["score"] - evals["sft"]["score"]
        report["runs"][name] = {**r, "episodes_per_second": eps, "gain": gain, "kl": evals[name]["kl"]}
        label = "instructgpt (this project)" if name == "ours" else "TRL 1.12 PPOTrainer"
        print(f"| {label} | {eps:.2f} | {r['peak_rss_mb']:.0f} | {gain:+.4f} | {evals[name]['kl']:.3f} |")
    if {"ours", "trl"} <= set(results):
        ours, trl = report["runs"]["ours"], report["runs"]["trl"]
        report["ratios"] = {
            "episodes_per_second": ours["episodes_per_second"] / trl["episodes_per_second"],
            "peak_rss": ours["peak_rss_mb"] / trl["peak_rss_mb"],
            "gain_difference": ours["gain"] - trl["gain"],
        }
        print(f"\nspeed ratio (ours / TRL 1.12): {report['ratios']['episodes_per_second']:.2f}x episodes/s; "
              f"peak memory ratio {report['ratios']['peak_rss']:.2f}; "
              f"RM-score gain {ours['gain']:+.4f} vs {trl['gain']:+.4f}")
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(f"[bench] report: {work / 'report.json'}")


if __name__ == "__main__":
    main()
