"""Benchmark: this project's PPO trainer against TRL 1.12's ``trl.experimental.ppo.PPOTrainer``.

    python benchmarks/bench_ppo.py                       # tiny world: runs/tiny/sft + runs/tiny/rm, kl_coef 0.05
    python benchmarks/bench_ppo.py --sft DIR --rm DIR --episodes 1536 --threads 1
    python benchmarks/bench_ppo.py --sft DIR --rm DIR --kl_coefs 0.05 0.2 --save_every 256 \
        --plot docs/images/ppo_kl_frontier.png
    python benchmarks/bench_ppo.py --size gpt2 --threads 1   # 124M GPT-2-shaped models, speed and where time goes

TRL removed its PPO trainer in 1.13, so TRL 1.12 (the last release that has it) is installed into its own virtual
environment, ``benchmarks/.venv-trl112`` (torch 2.13.0 CPU first, so pip pulls no CUDA wheels; transformers 5.16.0,
released the same day as TRL 1.12). Both trainers then run one after the other, each in a fresh subprocess, on the
same SFT policy, reward model, prompts (tokenized once, identically), batch shapes, response length and PPO
hyper-parameters (``SETTINGS`` below, the tiny recipe's; ``GPT2_SETTINGS`` for ``--size gpt2``). Reported per trainer:

- **episodes/s**: episodes / wall time of ``train()`` (model loading and saving excluded, as TRL's own ``eps``
  metric);
- **peak memory**: the worker process's peak resident set size (``ru_maxrss``);
- **where the time goes**: the same wall-clock timers wrapped around both trainers' functions (:class:`Timers`):
  generation (our KV-cache sampler; TRL's ``batch_generation``), the reference, value and reward-model forwards of
  the rollout, and the rest of ``train()`` (the PPO epochs, advantages and bookkeeping), with the policy+value
  forward of the update shown on its own;
- **RM-score gain** (tiny world): mean normalised reward-model score of the trained policy minus the SFT policy's on
  the held-out prompts, both sampled and scored by the same code (``instructgpt.sampling`` /
  ``instructgpt.modeling.reward.score_responses``) with the same seed; the KL to the SFT policy of those samples,
  the share of them that ended with EOS and their mean length alongside.

``--kl_coefs`` runs both trainers at each ``kl_coef`` (``--trl_kl_coefs`` for other values on TRL's side).
``--save_every N`` (default 256; 0: off) also saves each run's policy every N episodes (untimed) and evaluates it,
so that every run traces a curve of RM-score gain against KL to SFT, from the SFT policy at (0, 0) to its final
policy (``--plot``). The matched-KL comparison then reads our gain at the KL of every TRL policy off our run with
the same ``kl_coef`` (linear interpolation between the two of our policies around that KL; no claim outside our
curve's range), and names our closest policy in KL, flagged when within 10% of TRL's. Both trainers start from the
same policy, so their curves overlap in KL from 0 up to the smaller of their final KLs, whatever ``kl_coef`` does.

``--size gpt2`` builds GPT-2 small-shaped policy and reward model (124.4M parameters each, random weights under a
fixed seed, the tiny world's tokenizer with the embedding padded to 50257 rows; ``benchmarks/gpt2_world.py``) and
prompts of 16 to 256 tokens, and trains with 128-token responses (``recipes/ppo.yaml``'s). Random weights give no
reward to gain, so the mode reports speed, memory and the time split only.

Differences that are settings, not speed levers, are aligned: no gradient checkpointing (TRL's default is on), no
sample-generation tables, no checkpoints, no W&B, and no gradient clipping in ours (TRL's PPO loop never clips).

TRL's pad = EOS (TRL 1.12's ``ppo_trainer.py``, read in the venv): the tiny world's tokenizer, like GPT-2's, has no
pad token, so the pad token is EOS, and TRL finds a response's end as "the token before the first pad token"
(``sequence_length = first_true_indices(response == pad_token_id) - 1``). The EOS that ends a response is therefore
treated as padding: its log-probability is replaced by ``INVALID_LOGPROB`` in the old, new and reference log-probs,
so it is out of the policy loss and out of the KL penalty, and its advantage is zeroed. (TRL's ``forward`` also
masks every EOS-valued token out of attention.) The decision to stop gets no direct gradient. Measured
(``--kl_coefs 0.05 0.2 --save_every 256``, 1536 episodes, tiny world), it costs TRL nothing there: every held-out
sample of every TRL policy ends with EOS, its responses shorten from the SFT policy's 19.2 tokens to about 8 as ours
do, and the two trainers' gain-KL curves coincide. At the same ``kl_coef`` our policy moves along that curve in
fewer episodes (after 512 episodes: 0.93-0.96 nats against TRL's 0.64-0.70), which is why single runs compared
gains at different KLs. With a pad token distinct from EOS (``--trl_pad_token``), TRL counts the EOS as a response
token, but its reward model then reads the score at the EOS itself rather than at the token before it, where our
RM (trained with pad = EOS) learned to score, so that run is no clean control.
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
GPT2_DIR = REPO / "benchmarks" / "models" / "gpt2-124m"

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

# --size gpt2: recipes/ppo.yaml's response length and learning rate, rollout batches of 8 episodes (2 x 4 gradient
# accumulation, 2 minibatches) and one PPO epoch, so that a CPU gets through an update in minutes
GPT2_SETTINGS = {
    **SETTINGS,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "num_mini_batches": 2,
    "num_ppo_epochs": 1,
    "response_length": 128,
    "learning_rate": 3.0e-6,
    "local_rollout_forward_batch_size": 8,
}

# the parts of a PPO update both trainers are timed in (see Timers)
PHASES = ("generation", "reference", "value", "reward", "update")


# ------------------------------------------------------------------------------------------------------------------
# Workers (each runs in its own process; the TRL one in the TRL 1.12 virtualenv, so it imports no instructgpt code)
# ------------------------------------------------------------------------------------------------------------------


class Timers:
    """Wall time spent inside wrapped functions, by phase: the same instrument for both trainers.

    ``wrap(owner, name, phase)`` replaces ``owner.name`` (a module function or a class method) by a timed call;
    ``phase`` is a name or a function of the call's arguments returning one (None: not timed). On a GPU the device
    is synchronised around each call, so kernels are charged to the phase that launched them.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner, name: str, phase) -> None:
        import functools

        import torch

        original = getattr(owner, name)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            key = phase(*args, **kwargs) if callable(phase) else phase
            if key is None:
                return original(*args, **kwargs)
            sync()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync()
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def _finish(result: dict, path: str) -> None:
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(path).write_text(json.dumps(result, indent=2))


def _phases(timers: Timers, seconds: float) -> dict[str, float]:
    """Seconds per phase; ``update`` is the rest of ``train()`` (PPO epochs, advantages, bookkeeping)."""
    out = {k: timers.seconds.get(k, 0.0) for k in PHASES[:-1]}
    out["update"] = seconds - sum(out.values())
    out["update_forward"] = timers.seconds.get("update_forward", 0.0)
    return out


def worker_ours(cfg: dict) -> None:
    import torch

    from instructgpt.stages.ppo import models, rollout
    from instructgpt.stages.ppo.run import parse_args
    from instructgpt.stages.ppo.trainer import PPOTrainer

    timers = Timers()
    no_grad_only = lambda phase: lambda *a, **k: None if torch.is_grad_enabled() else phase  # noqa: E731
    timers.wrap(rollout, "sample_responses", "generation")
    timers.wrap(PPOTrainer, "_reference_logprobs", "reference")
    timers.wrap(models, "response_values", no_grad_only("value"))  # also called by the update's forward
    timers.wrap(models, "sequence_scores", "reward")
    timers.wrap(models.PolicyAndValue, "forward", "update_forward")
    timers.wrap(PPOTrainer, "ppo_update", "ppo_update")
    timers.wrap(PPOTrainer, "save_final", "save")  # writing the final model is not training time (TRL's isn't timed)
    saved: dict[int, str] = {}
    if cfg.get("save_every"):
        check_update = PPOTrainer.check_update

        def check_update_and_save(self, metrics):  # called right after an update, the episode count advanced
            check_update(self, metrics)
            episode = self.progress.episode
            if episode % cfg["save_every"] == 0 and episode < cfg["episodes"]:
                start = time.perf_counter()
                directory = Path(cfg["output_dir"]) / f"episode-{episode}"
                self.save_policy(directory, merged=True)
                saved[episode] = str(directory)
                timers.seconds["save"] = timers.seconds.get("save", 0.0) + time.perf_counter() - start

        PPOTrainer.check_update = check_update_and_save

    overrides = {
        "model_name_or_path": cfg["sft"],
        "reward_model_path": cfg["rm"],
        "output_dir": cfg["output_dir"],
        "dataset_name": cfg["prompts_file"],
        "eval_dataset_name": "null",
        "total_episodes": cfg["episodes"],
        "if_output_exists": "overwrite",
        "save_strategy": "no",
        "num_sample_generations": 0,
        "report_to": "[]",
        "max_grad_norm": 0,
        "gradient_checkpointing": "false",
        "disable_tqdm": "true",
        **cfg["settings"],
    }
    argv = [str(REPO / "recipes" / "tiny" / "ppo.yaml")]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    (script_args, args, model_args), recipe = parse_args(argv)
    trainer = PPOTrainer(script_args, args, model_args, recipe)
    start = time.perf_counter()
    summary = trainer.train()
    elapsed = time.perf_counter() - start - timers.seconds.get("save", 0.0)
    _finish(
        {
            "trainer": "instructgpt",
            "seconds": elapsed,
            "episodes": summary["episode"],
            "updates": summary["global_step"],
            "last_scores": summary.get("objective/scores"),
            "last_kl": summary.get("objective/kl"),
            "eos_fraction": summary.get("objective/eos_fraction"),
            "policy_dir": cfg["output_dir"],
            "checkpoints": saved,
            "phases": {**_phases(timers, elapsed), "ppo_update": timers.seconds.get("ppo_update", 0.0)},
        },
        cfg["result"],
    )


def worker_trl(cfg: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    tokenizer = AutoTokenizer.from_pretrained(cfg["sft"], padding_side="left")
    if cfg.get("trl_pad_token"):  # a pad token distinct from EOS (see "Why TRL's policy ends closer to SFT")
        tokenizer.pad_token = cfg["trl_pad_token"]
    elif tokenizer.pad_token is None:  # as instructgpt.modeling.load_tokenizer
        tokenizer.pad_token = tokenizer.eos_token
    prompt_ids = [json.loads(line)["input_ids"] for line in open(cfg["prompt_ids_file"], encoding="utf-8")]
    train_dataset = Dataset.from_dict({"input_ids": prompt_ids})
    eval_dataset = Dataset.from_dict({"input_ids": prompt_ids[:8]})
    args = PPOConfig(
        output_dir=cfg["output_dir"],
        total_episodes=cfg["episodes"],
        stop_token="eos",
        whiten_rewards=False,
        num_sample_generations=0,
        gradient_checkpointing=False,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        **cfg["settings"],
    )
    policy = AutoModelForCausalLM.from_pretrained(cfg["sft"])
    ref_policy = AutoModelForCausalLM.from_pretrained(cfg["sft"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(cfg["rm"], num_labels=1)
    for model in (policy, ref_policy, reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
    )
    # TRL's train loop calls these module functions: generation, then per chunk the reference forward (no grad;
    # with grad, `forward` is the update's policy+value forward), the value and the reward model (`get_reward`)
    timers = Timers()
    timers.wrap(trl_ppo, "batch_generation", "generation")
    timers.wrap(trl_ppo, "forward", lambda *a, **k: "update_forward" if torch.is_grad_enabled() else "reference")
    timers.wrap(trl_ppo, "get_reward", lambda model, *a, **k: "reward" if model is reward_model else "value")
    saved: dict[int, str] = {}
    if cfg.get("save_every"):
        from transformers import TrainerCallback

        class SavePolicy(TrainerCallback):
            """The policy at every ``save_every`` episodes (TRL calls on_step_end after each update)."""

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.episode % cfg["save_every"] == 0 and state.episode < cfg["episodes"]:
                    start = time.perf_counter()
                    directory = Path(cfg["output_dir"]) / f"episode-{state.episode}"
                    model.policy.save_pretrained(directory)
                    tokenizer.save_pretrained(directory)
                    saved[state.episode] = str(directory)
                    timers.seconds["save"] = timers.seconds.get("save", 0.0) + time.perf_counter() - start

        trainer.add_callback(SavePolicy())
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start - timers.seconds.get("save", 0.0)
    if cfg.get("save", True):
        trainer.save_model(cfg["output_dir"])
        tokenizer.save_pretrained(cfg["output_dir"])
    logs = [entry for entry in trainer.state.log_history if "objective/scores" in entry]
    _finish(
        {
            "trainer": "trl-1.12",
            "seconds": elapsed,
            "episodes": trainer.state.episode,
            "updates": trainer.state.global_step,
            "last_scores": logs[-1]["objective/scores"] if logs else None,
            "last_kl": logs[-1]["objective/kl"] if logs else None,
            "policy_dir": cfg["output_dir"],
            "checkpoints": saved,
            "phases": _phases(timers, elapsed),
        },
        cfg["result"],
    )


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

    from instructgpt.data.formats import load_prompts
    from instructgpt.modeling import load_tokenizer, model_context_length
    from instructgpt.sampling import encode_prompts

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
    worker = name.split("@")[0]
    proc = subprocess.run(
        [python, __file__, "--worker", worker, "--worker_config", str(cfg_path)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"[bench] the {name} worker failed (exit code {proc.returncode})")
    result = json.loads(Path(cfg["result"]).read_text())
    print(
        f"[bench]   {name}: {result['episodes']} episodes in {result['seconds']:.1f}s "
        f"(process {time.time() - start:.0f}s with loading)",
        flush=True,
    )
    return result


def evaluate_policies(
    paths: dict[str, str], rm: str, eval_prompts: str, response_length: int, num_samples: int, seed: int
) -> dict[str, dict[str, float]]:
    """Mean normalised RM score, KL to the SFT policy and share of responses that ended with EOS, per policy.

    Every policy samples ``num_samples`` responses to each held-out prompt with the same seed (``generate_samples``);
    the KL is the mean over samples of log pi(y|x) - log pi_SFT(y|x), summed over the sampled tokens, the EOS
    included.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from instructgpt.data.formats import load_prompts
    from instructgpt.modeling import load_tokenizer
    from instructgpt.modeling.reward import load_reward_model, score_responses
    from instructgpt.sampling import generate_samples

    prompts = load_prompts(eval_prompts, key="--eval_prompts", source="bench_ppo")
    reward_model, rm_tokenizer, _ = load_reward_model(rm)
    sft = AutoModelForCausalLM.from_pretrained(paths["sft"]).eval()
    results = {}
    for name, path in paths.items():
        tokenizer = load_tokenizer(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        samples = generate_samples(
            model,
            tokenizer,
            prompts,
            num_samples=num_samples,
            max_new_tokens=response_length,
            temperature=1.0,
            seed=seed,
            batch_size=64,
        )
        flat_prompts = [p for p, row in zip(prompts, samples) for _ in row]
        flat = [s for row in samples for s in row]
        scores = score_responses(reward_model, rm_tokenizer, flat_prompts, [s.text for s in flat], batch_size=64)
        kls = []
        with torch.no_grad():
            for sample in flat:
                prefix = sample.prompt_ids
                ids = torch.tensor([prefix + sample.scored_ids])
                targets = ids[:, len(prefix) :]

                def logp(m, ids=ids, prefix=prefix, targets=targets):
                    logits = m(input_ids=ids).logits[:, len(prefix) - 1 : -1].float()
                    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).sum().item()

                kls.append(logp(model) - logp(sft))
        results[name] = {
            "score": sum(scores) / len(scores),
            "kl": sum(kls) / len(kls),
            "length": sum(len(s.token_ids) for s in flat) / len(flat),
            "eos_share": sum(s.finished for s in flat) / len(flat),
        }
        print(
            f"[bench]   eval {name}: score {results[name]['score']:+.4f}, KL {results[name]['kl']:.3f}, "
            f"ended with EOS {results[name]['eos_share']:.0%}",
            flush=True,
        )
    return results


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of y at x on a curve given as (x, y) points (None outside their x range)."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[0][1] if len(points) == 1 and points[0][0] == x else None


def trajectory(run: dict) -> list[tuple[float, float]]:
    """(KL, gain) along one run: the SFT policy (0, 0), each saved policy, then the final one, in episode order."""
    return [(0.0, 0.0)] + [(p["kl"], p["gain"]) for p in run.get("trajectory", [])] + [(run["kl"], run["gain"])]


def matched_kl(report: dict) -> list[dict]:
    """Our gain at the KL of every TRL policy (saved along a run, or final), read off our run at the same kl_coef.

    Each of our runs is a curve from the SFT policy at (0, 0) through its saved policies; our gain at TRL's KL is the
    linear interpolation between the two of our policies that bracket it (None outside our curve's KL range). The
    closest of our policies in KL is reported too, with whether its KL is within 10% of TRL's.
    """
    ours = {r["kl_coef"]: r for r in report["runs"].values() if r["trainer_key"] == "ours"}
    rows = []
    for name, r in report["runs"].items():
        if r["trainer_key"] != "trl":
            continue
        mine = ours.get(r["kl_coef"]) or next(iter(ours.values()))
        curve = trajectory(mine)
        points = [(p["episodes"], p["kl"], p["gain"]) for p in r.get("trajectory", [])] + [
            (r["episodes"], r["kl"], r["gain"])
        ]
        for episodes, kl, gain in points:
            closest_kl, closest_gain = min(curve[1:], key=lambda point: abs(point[0] - kl))
            rows.append(
                {
                    "trl": name,
                    "ours": f"ours@{mine['kl_coef']:g}",
                    "episodes": episodes,
                    "kl": kl,
                    "trl_gain": gain,
                    "ours_gain": interpolate(curve, kl),
                    "closest_kl": closest_kl,
                    "closest_gain": closest_gain,
                    "within_10pct": abs(closest_kl - kl) <= 0.1 * kl,
                }
            )
    return rows


def plot_frontier(report: dict, path: Path) -> None:
    """RM-score gain against KL to SFT: one line per run, from the SFT policy through its saved policies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = ["-", "--", ":", "-."]
    for trainer, label, marker, color in (
        ("ours", "instructgpt", "o", "tab:blue"),
        ("trl", "TRL 1.12 PPOTrainer", "s", "tab:orange"),
    ):
        runs = sorted((r for r in report["runs"].values() if r["trainer_key"] == trainer), key=lambda r: r["kl_coef"])
        for i, r in enumerate(runs):
            curve = trajectory(r)
            ax.plot(
                [p[0] for p in curve],
                [p[1] for p in curve],
                marker=marker,
                markersize=3,
                color=color,
                linestyle=styles[i % len(styles)],
                label=f"{label}, β={r['kl_coef']:g}",
            )
            ax.plot([r["kl"]], [r["gain"]], marker=marker, markersize=8, color=color)  # the final policy
    ax.set_xlabel("KL to the SFT policy (nats per response, held-out prompts)")
    ax.set_ylabel("RM-score gain over SFT")
    ax.set_title(f"PPO reward vs KL, tiny world, {report['episodes']} episodes per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_phases(report: dict) -> None:
    """Where each trainer's time goes, as seconds per update and shares of train()."""
    print("\n| trainer | " + " | ".join(PHASES) + " | total s/update |")
    print("|---|" + "---|" * (len(PHASES) + 1))
    for name, r in report["runs"].items():
        phases, updates = r["phases"], max(1, r["updates"])
        cells = [f"{phases[p] / updates:.1f} ({phases[p] / r['seconds']:.0%})" for p in PHASES]
        print(f"| {name} | " + " | ".join(cells) + f" | {r['seconds'] / updates:.1f} |")
    for name, r in report["runs"].items():
        extra = f", of which ppo_update() {r['phases']['ppo_update']:.1f}s" if "ppo_update" in r["phases"] else ""
        print(f"[bench]   {name}: policy+value forward in the update {r['phases']['update_forward']:.1f}s{extra}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--size",
        choices=["tiny", "gpt2"],
        default="tiny",
        help="tiny: the tiny world's SFT and RM (--sft/--rm); gpt2: 124M GPT-2-shaped models built "
        "locally (benchmarks/gpt2_world.py), timing only",
    )
    parser.add_argument("--sft", default="runs/tiny/sft", help="SFT policy (output_dir of instructgpt-sft)")
    parser.add_argument("--rm", default="runs/tiny/rm", help="reward model (output_dir of instructgpt-rm)")
    parser.add_argument("--prompts", default="data/tiny/ppo_prompts.jsonl")
    parser.add_argument("--eval_prompts", default="data/tiny/eval_prompts.jsonl")
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="total_episodes of each run (default: 1536 tiny, 16 gpt2: two updates)",
    )
    parser.add_argument(
        "--kl_coefs",
        type=float,
        nargs="+",
        default=None,
        help="run both trainers at each of these kl_coef values and plot RM-score gain against KL",
    )
    parser.add_argument(
        "--trl_kl_coefs", type=float, nargs="+", default=None, help="TRL's kl_coef values, if not --kl_coefs"
    )
    parser.add_argument(
        "--trl_pad_token",
        default=None,
        help="give TRL's tokenizer this pad token instead of EOS (e.g. '#', unused in the tiny world)",
    )
    parser.add_argument(
        "--save_every",
        type=int,
        default=256,
        help="also save every run's policy each this many episodes and evaluate it, so that each run "
        "traces a gain-KL curve from the SFT policy (tiny world; the saving is not timed; 0: only "
        "the final policies)",
    )
    parser.add_argument("--plot", default=None, help="PNG of the reward-KL frontier (default: WORK_DIR/frontier.png)")
    parser.add_argument("--eval_samples", type=int, default=2, help="samples per held-out prompt for the gain")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both workers (default: torch's)")
    parser.add_argument("--work_dir", default=None, help="default: benchmarks/results/ppo (ppo-gpt2 with --size gpt2)")
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
    gpt2 = opts.size == "gpt2"
    settings = GPT2_SETTINGS if gpt2 else SETTINGS
    episodes = opts.episodes or (16 if gpt2 else 1536)
    work = Path(opts.work_dir or f"benchmarks/results/{'ppo-gpt2' if gpt2 else 'ppo'}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    trl_python = ensure_trl_venv() if opts.only != "ours" else None
    if gpt2:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from gpt2_world import build_models, write_prompts

        sft, rm = build_models(GPT2_DIR)
        prompts = write_prompts(GPT2_DIR / "prompts.jsonl", max(64, episodes))
        opts.sft, opts.rm, opts.prompts = str(sft), str(rm), str(prompts)
    prompt_ids_file = work / "prompt_ids.jsonl"
    tokenize_prompts(opts.sft, opts.prompts, prompt_ids_file, settings["response_length"])
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    if opts.threads:
        env["OMP_NUM_THREADS"] = str(opts.threads)
    common = {
        "sft": str(Path(opts.sft).resolve()),
        "rm": str(Path(opts.rm).resolve()),
        "episodes": episodes,
        "threads": opts.threads,
        "prompts_file": str(Path(opts.prompts).resolve()),
        "prompt_ids_file": str(prompt_ids_file),
        "save": not gpt2,
        "trl_pad_token": opts.trl_pad_token,
        "save_every": None if gpt2 else (opts.save_every or None),
    }
    sweep = {
        "ours": opts.kl_coefs or [settings["kl_coef"]],
        "trl": opts.trl_kl_coefs or opts.kl_coefs or [settings["kl_coef"]],
    }
    single = len(sweep["ours"]) == 1 and len(sweep["trl"]) == 1
    results = {}
    for trainer, python in (("ours", sys.executable), ("trl", str(trl_python) if trl_python else None)):
        if opts.only and trainer != opts.only:
            continue
        for kl_coef in sweep[trainer]:
            name = trainer if single else f"{trainer}@{kl_coef:g}"
            tag = name.replace("@", "-kl")
            cfg = {
                **common,
                "settings": {**settings, "kl_coef": kl_coef},
                "output_dir": str(work / f"policy-{tag}"),
                "result": str(work / f"result-{tag}.json"),
            }
            results[name] = {**run_worker(python, name, cfg, env), "trainer_key": trainer, "kl_coef": kl_coef}

    evals = {}
    if not gpt2:  # random GPT-2 weights: nothing to gain, the mode measures speed
        paths = {"sft": common["sft"], **{name: r["policy_dir"] for name, r in results.items()}}
        paths.update(
            {
                f"{name}#{episode}": path
                for name, r in results.items()
                for episode, path in sorted(r.get("checkpoints", {}).items(), key=lambda kv: int(kv[0]))
            }
        )
        evals = evaluate_policies(
            paths, common["rm"], opts.eval_prompts, settings["response_length"], opts.eval_samples, seed=1234
        )
    report = {
        "size": opts.size,
        "settings": settings,
        "episodes": episodes,
        "threads": opts.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "eval": evals,
        "runs": {},
    }
    print("\n| trainer | kl_coef | episodes/s | peak RSS (MB) | RM-score gain | KL to SFT | ended with EOS | length |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        eps = r["episodes"] / r["seconds"]
        entry = {**r, "episodes_per_second": eps}
        if evals:
            entry.update(
                gain=evals[name]["score"] - evals["sft"]["score"],
                kl=evals[name]["kl"],
                eos_share=evals[name]["eos_share"],
                length=evals[name]["length"],
            )
            entry["trajectory"] = [
                {
                    "episodes": int(episode),
                    "kl": evals[f"{name}#{episode}"]["kl"],
                    "gain": evals[f"{name}#{episode}"]["score"] - evals["sft"]["score"],
                }
                for episode in sorted(r.get("checkpoints", {}), key=int)
            ]
        report["runs"][name] = entry
        label = "instructgpt (this project)" if r["trainer_key"] == "ours" else "TRL 1.12 PPOTrainer"
        quality = (
            f"{entry['gain']:+.4f} | {entry['kl']:.3f} | {entry['eos_share']:.0%} | {entry['length']:.1f}"
            if evals
            else "n/a | n/a | n/a | n/a"
        )
        print(f"| {label} | {r['kl_coef']:g} | {eps:.3f} | {r['peak_rss_mb']:.0f} | {quality} |")
    if evals:
        print(f"| SFT policy | | | | 0 | 0 | {evals['sft']['eos_share']:.0%} | {evals['sft']['length']:.1f} |")
    ours = [r for r in report["runs"].values() if r["trainer_key"] == "ours"]
    trl = [r for r in report["runs"].values() if r["trainer_key"] == "trl"]
    if ours and trl:
        speed = (sum(r["episodes"] for r in ours) / sum(r["seconds"] for r in ours)) / (
            sum(r["episodes"] for r in trl) / sum(r["seconds"] for r in trl)
        )
        memory = max(r["peak_rss_mb"] for r in ours) / max(r["peak_rss_mb"] for r in trl)
        report["ratios"] = {"episodes_per_second": speed, "peak_rss": memory}
        print(f"\nspeed ratio (ours / TRL 1.12): {speed:.2f}x episodes/s; peak memory ratio {memory:.2f}")
        if evals:
            matched = matched_kl(report)
            report["ratios"]["matched_kl"] = matched
            print(
                "\n| TRL policy | episodes | KL to SFT | TRL gain | ours at that KL (interpolated) | difference "
                "| our closest policy: KL, gain |"
            )
            print("|---|---|---|---|---|---|---|")
            for m in matched:
                at = "outside our KL range" if m["ours_gain"] is None else f"{m['ours_gain']:+.4f}"
                diff = "" if m["ours_gain"] is None else f"{m['ours_gain'] - m['trl_gain']:+.4f}"
                close = f"{m['closest_kl']:.3f}{' (within 10%)' if m['within_10pct'] else ''}, {m['closest_gain']:+.4f}"
                print(
                    f"| {m['trl']} | {m['episodes']} | {m['kl']:.3f} | {m['trl_gain']:+.4f} | {at} | {diff} | {close} |"
                )
            compared = [m for m in matched if m["ours_gain"] is not None]
            if compared:
                ahead = sum(m["ours_gain"] >= m["trl_gain"] for m in compared)
                mean = sum(m["ours_gain"] - m["trl_gain"] for m in compared) / len(compared)
                print(
                    f"[bench] matched KL: ours at or above TRL at {ahead} of {len(compared)} TRL policies "
                    f"(mean difference {mean:+.4f})"
                )
    if all("phases" in r for r in report["runs"].values()):
        print_phases(report)
    if evals and (not single or opts.save_every):
        plot = Path(opts.plot) if opts.plot else work / "frontier.png"
        plot_frontier(report, plot)
        print(f"[bench] plot: {plot}")
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(f"[bench] report: {work / 'report.json'}")


if __name__ == "__main__":
    main()
