"""Evaluation: did RLHF help? Win rates under a labeler, and what each model's responses look like.

    instructgpt eval --models base=data/tiny/base-model sft=runs/tiny/sft ppo=runs/tiny/ppo \\
        --prompts data/tiny/eval_prompts.jsonl --output_dir runs/tiny/eval [--ppo_run runs/tiny/ppo]

Every model answers every prompt once, sampled with the same settings and seed (the shared sampler,
:func:`instructgpt.sampling.generate_responses`). Then:

- **win rates** (InstructGPT's headline metric, section 4.1; AlpacaFarm's with simulated annotators): for each pair
  of models, a labeler scores both answers to each prompt; a win counts 1, a tie 1/2, and ``win_rate[A][B]`` is the
  mean over prompts, with a 95% Wilson interval (:mod:`instructgpt.metrics.winrate`). The labeler is the tiny world's
  simulated labeler, a reward model, or a file of rankings people wrote (:func:`instructgpt.labelers.make_labeler`);
- **per model**: mean labeler score, mean normalized RM score (with ``--reward_model``), KL to a reference model
  (the SFT policy by default), response length, distinct-1/2 and the share of responses that end with EOS;
- **what the win rate hides** (with a labeler that can tell, the tiny world's rubric): per model and per task
  family, the share of responses that are correct, on task (an attempt at the asked task) and off topic, each with
  a 95% Wilson interval (:mod:`instructgpt.metrics.shares`);
- with ``--ood_prompts``: the same win rates and shares on out-of-distribution prompts, grouped also by the file's
  ``split`` column (the tiny world ships ``data/tiny/ood_prompts.jsonl``: other casing and punctuation, new words,
  new operands);
- with ``--ppo_run``: the PPO run's reward and KL over training (its ``metrics.jsonl``), and the labeler's score
  and share correct against KL from the reference across its checkpoints, where reward over-optimization shows.

Outputs: ``results.json`` (machine-readable; ``win_rate[A][B]`` holds the rate and its interval, ``task_shares``
the shares), ``report.md``, ``completions.jsonl`` (and ``ood_completions.jsonl``), ``plots/*.png``; with ``--report_to`` (trackio, wandb, ...) the same numbers, the plots and a
completions table go to the dashboards.

KL(model || reference) is estimated on the model's own samples as :math:`\\sum_t \\log\\pi(y_t|x,y_{<t}) -
\\log\\pi_{ref}(y_t|x,y_{<t})` over the response tokens (and the EOS that ended it), averaged over prompts: the
"k1" estimator PPO's ``objective/kl`` uses, in nats per response. Both models read the logits divided by the
sampling temperature, so at ``temperature: 1`` (the default) it is the KL between the models themselves.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from instructgpt.infra.log import get_logger
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.parser import StageArgs
from instructgpt.metrics.text import distinct_n
from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE

logger = get_logger(__name__)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
COMPLETIONS_FILE = "completions.jsonl"
OOD_COMPLETIONS_FILE = "ood_completions.jsonl"
PLOTS_DIR = "plots"


class EvalError(InstructGPTError):
    """Evaluation settings that cannot work (a bad --models entry, an unknown reference, ...)."""


@dataclass
class EvalArguments:
    """Settings of ``instructgpt eval`` (also the ``eval:`` mapping of a pipeline recipe)."""

    models: list[str] = field(
        default_factory=list,
        metadata={"help": "Models to compare, as NAME=PATH (any causal LM directory or Hub id), in the order the "
                  "report lists them, e.g. base=data/tiny/base-model sft=runs/tiny/sft ppo=runs/tiny/ppo."},
    )
    prompts: str | None = field(
        default=None, metadata={"help": "Prompts: a .jsonl file (or Hub id) with a `prompt` or `messages` column."}
    )
    prompts_split: str = field(default="train", metadata={"help": "Split of a Hub --prompts dataset (a local file has one)."})
    ood_prompts: str | None = field(
        default=None,
        metadata={"help": "Out-of-distribution prompts (.jsonl with a `prompt` column, optionally a --ood_group_column): "
                  "every model answers them too, and the report gives their win rates and shares per group."},
    )
    ood_group_column: str = field(
        default="split", metadata={"help": "Column of --ood_prompts that names each prompt's group (when present)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where results.json, report.md and plots/ go."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    labeler: str = field(
        default="auto",
        metadata={"help": "Who judges the win rates: `simulated` (the tiny world's rubric), `reward_model:PATH`, "
                  "`file:PATH.jsonl` (rankings people wrote), `none`, or `auto`: simulated when every prompt is a "
                  "tiny-world instruction, else the --reward_model, else none."},
    )
    labeler_noise: float = field(default=0.0, metadata={"help": "Simulated labeler: noise on its scores (0: exact)."})
    labeler_seed: int = field(default=0, metadata={"help": "Simulated labeler: seed of its noise."})
    reward_model: str | None = field(
        default=None, metadata={"help": "A reward model (instructgpt-rm output_dir) for the mean normalized RM score."}
    )
    reference: str | None = field(
        default=None,
        metadata={"help": "Model to measure KL against: a NAME from --models or a PATH. Default: the model named "
                  "`sft` when there is one. `none`: no KL."},
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Longest response, in tokens."})
    temperature: float = field(
        default=1.0,
        metadata={"range": ">= 0", "help": "Sampling temperature (1.0: the models' own distributions, as PPO samples)."},
    )
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0: all)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0: no truncation)."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (the same for every model)."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per generation / scoring batch."})
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Sample with vLLM (the `[vllm]` extra: pip install -e '.[vllm]'), one engine per model in "
                  "turn; the KL and the judges score the tokens vLLM drew. A LoRA adapter directory is merged first."},
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.5,
        metadata={"help": "With --use_vllm: the share of GPU memory vLLM takes (weights + KV cache); the models "
                  "being scored share the rest. No effect on CPU (VLLM_CPU_KVCACHE_SPACE, GiB, sizes the cache)."},
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Prompt format for a model whose tokenizer has no chat template (a base model)."},
    )
    ppo_run: str | None = field(
        default=None,
        metadata={"help": "A PPO output_dir: plot its reward and KL over training (metrics.jsonl) and evaluate its "
                  "checkpoints (checkpoint-*/policy) for the over-optimization plot."},
    )
    max_checkpoints: int = field(
        default=6, metadata={"help": "Evaluate at most this many PPO checkpoints, evenly spaced (the last included)."}
    )
    checkpoint_prompts: int | None = field(
        default=None, metadata={"help": "Prompts per checkpoint evaluation (default: all of them)."}
    )
    num_examples: int = field(default=3, metadata={"help": "Prompts whose completions report.md shows."})
    report_to: str = field(
        default="none",
        metadata={"help": "Where to log the results, plots and completions: `trackio`, `wandb`, `tensorboard`, "
                  "`mlflow`, any tracker of accelerate's, several separated by commas, `all` or `none`."},
    )
    if_output_exists: Literal["resume", "refuse", "overwrite"] = field(
        default="resume",
        metadata={"help": "When output_dir holds an evaluation: `resume` redoes an unfinished one and refuses a "
                  "finished one, `refuse` refuses any non-empty directory, `overwrite` moves the old one aside."},
    )
    project: str = field(default="instructgpt", metadata={"help": "The dashboard project (W&B, Trackio, ...)."})
    run_name: str | None = field(default=None, metadata={"help": "The run's name on the dashboards."})

    def validate(self, source: str = "instructgpt eval") -> None:
        if not self.models:
            raise EvalError(f"{source}: give at least one model with --models NAME=PATH")
        if not self.prompts:
            raise EvalError(f"{source}: --prompts is required (a .jsonl file with a `prompt` column)")
        if not self.output_dir:
            raise EvalError(f"{source}: --output_dir is required")
        for name in ("max_new_tokens", "batch_size", "max_checkpoints"):
            if getattr(self, name) < 1:
                raise EvalError(f"{source}: --{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise EvalError(f"{source}: --temperature must be >= 0, got {self.temperature}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise EvalError(f"{source}: --vllm_gpu_memory_utilization must be in (0, 1], got "
                            f"{self.vllm_gpu_memory_utilization}")
        if self.use_vllm:
            from instructgpt.sampling_vllm import require_vllm

            require_vllm(source, key="--use_vllm")


def parse_models(entries: Sequence[str], source: str = "--models") -> dict[str, str]:
    """``["sft=runs/sft", "runs/ppo"]`` -> ``{"sft": "runs/sft", "ppo": "runs/ppo"}`` (a bare path is named after
    its folder); names must be unique."""
    models: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep:
            name, path = Path(entry.rstrip("/")).name or entry, entry
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise EvalError(f"{source}: {entry!r} is not NAME=PATH")
        if name in models:
            raise EvalError(f"{source}: the name {name!r} is given twice; names must be unique")
        models[name] = path
    return models


# --------------------------------------------------------------------------------------------------------------
# Response statistics
# --------------------------------------------------------------------------------------------------------------





def _mean(values: Sequence[float | None]) -> float | None:
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
            "response_tokens": _mean([len(r) for r in self.response_ids]),
            "response_words": _mean([len(t.split()) for t in self.texts]),
            "distinct_1": distinct_n(self.texts, 1),
            "distinct_2": distinct_n(self.texts, 2),
            "eos_fraction": _mean([float(f) for f in self.finished]),
            "empty_fraction": _mean([float(not t.strip()) for t in self.texts]),
            "kl_to_reference": _mean(self.kl) if self.kl is not None else None,
        }


def sample_model(model: Any, tokenizer: Any, prompts: Sequence[Any], args: EvalArguments, path: str | None = None,
                 source: str = "instructgpt eval") -> Samples:
    """Sample one response per prompt, keeping the token ids the sampler drew and how each response ended.

    Everything downstream (length, the EOS rate, the KL to the reference) is computed on these ids: the text is
    never tokenized again, which could split it differently than the model did. With ``use_vllm`` an engine over
    ``path`` samples (:func:`vllm_samples`) and is closed before the next model.
    """
    if args.use_vllm:
        rows = vllm_samples(tokenizer, prompts, args, path, source)
    else:
        from instructgpt.sampling import generate_samples

        rows = generate_samples(
            model, tokenizer, prompts, num_samples=1, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, progress=True,
        )
    samples = [row[0] for row in rows]
    return Samples(
        texts=[s.text for s in samples],
        prompt_ids=[list(s.prompt_ids or []) for s in samples],
        response_ids=[s.token_ids for s in samples],
        finished=[s.finished for s in samples],
        scored_ids=[s.scored_ids for s in samples],
    )


def vllm_samples(tokenizer: Any, prompts: Sequence[Any], args: EvalArguments, path: str,
                 source: str) -> list[list[Any]]:
    """One vLLM sample per prompt from the model at ``path`` (same settings and seed for every model).

    vLLM loads a plain model directory; a LoRA adapter directory (a LoRA PPO run's checkpoint policy) is first
    merged into its base with peft and saved to a temporary directory, removed afterwards."""
    import shutil
    import tempfile

    from instructgpt.sampling_vllm import VLLMSampler

    folder = Path(path)
    temporary = None
    if (folder / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        temporary = tempfile.mkdtemp(prefix="instructgpt-vllm-")
        AutoPeftModelForCausalLM.from_pretrained(str(folder)).merge_and_unload().save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        folder = Path(temporary)
    sampler = VLLMSampler(str(folder), tokenizer, gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                          seed=args.seed, source=source)
    try:
        return sampler.generate_samples(list(prompts), num_samples=1, max_new_tokens=args.max_new_tokens,
                                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                        seed=args.seed, progress=True)
    finally:
        sampler.close()
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)


@torch.inference_mode()
def response_logprobs(
    model: Any, prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], temperature: float,
    pad_token_id: int, batch_size: int = 32,
) -> list[float]:
    """:math:`\\sum_t \\log\\pi(y_t | x, y_{<t})` of each response under ``model`` (logits / temperature)."""
    from instructgpt.data.padding import pad_sequences
    from instructgpt.losses.ppo import logprobs_from_logits

    device = next(model.parameters()).device
    scale = temperature if temperature > 0 else 1.0
    order = sorted(range(len(prompt_ids)), key=lambda i: -(len(prompt_ids[i]) + len(response_ids[i])))
    totals = [0.0] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
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


def kl_to_reference(samples: Samples, model: Any, ref_model: Any, pad_token_id: int, temperature: float,
                    batch_size: int) -> list[float]:
    """Per-response k1 estimate of KL(model || reference) on the model's own sampled tokens (the EOS that ended a
    response included, as PPO's ``objective/kl`` counts it)."""
    own = response_logprobs(model, samples.prompt_ids, samples.scored_ids, temperature, pad_token_id, batch_size)
    ref = response_logprobs(ref_model, samples.prompt_ids, samples.scored_ids, temperature, pad_token_id, batch_size)
    return [a - b for a, b in zip(own, ref)]


def same_vocabulary(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


# --------------------------------------------------------------------------------------------------------------
# Judges: the labeler and the reward model
# --------------------------------------------------------------------------------------------------------------


def tiny_world_prompts(prompts: Sequence[Any]) -> bool:
    """Every prompt is an instruction of the tiny world (so its simulated labeler can judge the answers)."""
    from instructgpt.data import DataError
    from instructgpt.data.formats import prompt_text
    from instructgpt.tinyworld import UnknownPromptError, parse_prompt

    try:
        for prompt in prompts:
            parse_prompt(prompt_text(prompt))
    except (UnknownPromptError, DataError):
        return False
    return True


def build_labeler(args: EvalArguments, prompts: Sequence[Any], device: Any, source: str) -> Any | None:
    """The labeler that judges win rates, or None (``none``, or ``auto`` with nothing that can judge)."""
    spec = args.labeler
    if spec == "none":
        return None
    if spec == "auto":
        if tiny_world_prompts(prompts):
            spec = "simulated"
        elif args.reward_model:
            spec = f"reward_model:{args.reward_model}"
        else:
            logger.info("eval: the prompts are not the tiny world's and no --reward_model is given: no win "
                  "rates (set --labeler reward_model:PATH or file:PATH.jsonl)")
            return None
    from instructgpt.labelers import make_labeler

    return make_labeler(spec, noise=args.labeler_noise, seed=args.labeler_seed, batch_size=args.batch_size,
                        device=device, source=source)


def labeler_details(labeler: Any, prompts: Sequence[Any], texts: Sequence[str]) -> dict[str, Any]:
    """Extra per-model numbers a labeler can give: with the simulated labeler, the share of responses that are
    correct, on task and off topic, and per response those flags and the task family (``labeler_outcomes``)."""
    judge = getattr(labeler, "judge", None)
    if judge is None:
        return {}
    verdicts = [judge(p, t) for p, t in zip(prompts, texts)]
    outcomes = [{"correct": bool(v.correct), "on_task": bool(v.on_task), "off_topic": bool(v.off_topic),
                 "family": v.family or "unknown"} for v in verdicts]
    return {
        "labeler_correct": _mean([float(o["correct"]) for o in outcomes]),
        "labeler_on_task": _mean([float(o["on_task"]) for o in outcomes]),
        "labeler_off_topic": _mean([float(o["off_topic"]) for o in outcomes]),
        "labeler_outcomes": outcomes,
    }


def task_shares(outcomes: Sequence[dict[str, Any]], groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Shares correct / on task / off topic with 95% intervals, over all prompts, per family and per ``groups``."""
    from instructgpt.metrics.shares import grouped_shares

    extra = groups or [None] * len(outcomes)
    return grouped_shares(outcomes, [[o["family"]] + ([g] if g else []) for o, g in zip(outcomes, extra)])


def load_groups(path: str, column: str, count: int, source: str) -> list[str] | None:
    """The group of each prompt of a local .jsonl file (its ``column``), or None when the file has no such column."""
    from instructgpt.data import load_data

    dataset = load_data(path, key="--ood_prompts", source=source)
    if column not in dataset.column_names:
        return None
    groups = [str(g) if g is not None else "" for g in dataset[column]][:count]
    return groups if len(groups) == count else None


# --------------------------------------------------------------------------------------------------------------
# PPO training curves and checkpoints
# --------------------------------------------------------------------------------------------------------------


def read_metrics_log(ppo_run: str | Path) -> list[dict[str, Any]]:
    """The PPO trainer's ``metrics.jsonl`` (one JSON object per logged update); [] when it has none."""
    from instructgpt.infra.outputs import PPO_METRICS_FILE as METRICS_FILE

    from instructgpt.infra.outputs import read_jsonl

    path = Path(ppo_run) / METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


def policy_checkpoints(ppo_run: str | Path, limit: int) -> list[tuple[int, Path]]:
    """``(step, checkpoint-N/policy)`` of a PPO run, at most ``limit`` evenly spaced ones, the last included."""
    found = []
    for child in Path(ppo_run).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        policy = child / "policy"
        if match and ((policy / "config.json").is_file() or (policy / "adapter_config.json").is_file()):
            found.append((int(match.group(1)), policy))
    found.sort()
    if len(found) <= limit:
        return found
    picks = sorted({round(i * (len(found) - 1) / (limit - 1)) for i in range(limit)}) if limit > 1 else [len(found) - 1]
    return [found[i] for i in picks]


# --------------------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------------------


class Evaluator:
    """Loads one model at a time (the reference stays loaded), samples, and scores with the judges."""

    def __init__(self, args: EvalArguments, prompts: list[Any], device: Any, source: str):
        self.args, self.prompts, self.device, self.source = args, prompts, device, source
        self.labeler = build_labeler(args, prompts, device, source)
        self.reward = None
        if args.reward_model:
            from instructgpt.modeling.reward import load_reward_model

            self.reward = load_reward_model(args.reward_model, device=device, key="--reward_model", source=source)
        self.ref_model = self.ref_tokenizer = None

    def load_reference(self, path: str, key: str = "--reference") -> None:
        from instructgpt.modeling import load_policy

        self.ref_model, self.ref_tokenizer = load_policy(
            path, key=key, source=self.source, prompt_template=self.args.prompt_template, device=self.device
        )

    def run_model(self, name: str, path: str, prompts: list[Any] | None = None, is_reference: bool = False) -> tuple[Samples, dict[str, Any]]:
        """Sample from one model and compute its numbers; returns the samples and a metrics dict."""
        from instructgpt.modeling import load_policy

        prompts = self.prompts if prompts is None else prompts
        args = self.args
        logger.info(f"eval: {name} ({path}) on {len(prompts)} prompts")
        if is_reference and self.ref_model is not None:
            model, tokenizer = self.ref_model, self.ref_tokenizer
        else:
            model, tokenizer = load_policy(path, key=f"--models {name}", source=self.source,
                                           prompt_template=args.prompt_template, device=self.device)
        samples = sample_model(model, tokenizer, prompts, args, path=path, source=self.source)
        if is_reference:
            samples.kl = [0.0] * len(prompts)
        elif self.ref_model is not None:
            if same_vocabulary(tokenizer, self.ref_tokenizer):
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                samples.kl = kl_to_reference(samples, model, self.ref_model, pad, args.temperature, args.batch_size)
            else:
                logger.info(f"eval: {name} has another tokenizer than the reference: no KL for it")
        metrics = {"path": path, **samples.stats()}
        if model is not self.ref_model:
            del model
            gc.collect()
        metrics.update(self.judge(prompts, samples.texts))
        return samples, metrics

    def judge(self, prompts: list[Any], texts: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.labeler is not None:
            scores = self.labeler.score(list(prompts), list(texts))
            out["labeler_scores"] = scores
            out["labeler_score"] = _mean(scores)
            out.update(labeler_details(self.labeler, prompts, texts))
        if self.reward is not None:
            from instructgpt.modeling.reward import score_responses

            model, tokenizer, _ = self.reward
            rm = score_responses(model, tokenizer, list(prompts), list(texts), batch_size=self.args.batch_size)
            out["rm_scores"] = rm
            out["rm_score"] = _mean(rm)
        return out


def resolve_reference(args: EvalArguments, models: dict[str, str]) -> tuple[str | None, str | None]:
    """``(name, path)`` of the KL reference: a --models name, a path, the model named `sft`, or none."""
    ref = args.reference
    if ref is None:
        return ("sft", models["sft"]) if "sft" in models else (None, None)
    if ref.lower() == "none":
        return None, None
    if ref in models:
        return ref, models[ref]
    return Path(ref.rstrip("/")).name or "reference", ref


def run_eval(args: EvalArguments, source: str = "instructgpt eval") -> dict[str, Any]:
    """Run the whole evaluation and write its outputs; returns the results dict written to results.json."""
    from instructgpt.infra.outputs import (
        OutputDirError,
        atomic_write_json,
        atomic_write_text,
        is_complete,
        mark_complete,
        mark_started,
        prepare_output_dir,
    )
    from instructgpt.data.formats import load_prompts
    from instructgpt.infra.tracking import StageTracker, run_identity
    from instructgpt.metrics.winrate import win_rate_matrix

    args.validate(source)
    started = time.time()
    models = parse_models(args.models)
    from instructgpt.modeling import check_model_path

    for name, path in models.items():  # fail before any model is loaded or sampled
        check_model_path(path, f"--models {name}", source)
    prompts = load_prompts(args.prompts, key="--prompts", source=source, split=args.prompts_split, limit=args.max_prompts)
    ood_prompts: list[Any] = []
    ood_groups: list[str] | None = None
    if args.ood_prompts:
        ood_prompts = load_prompts(args.ood_prompts, key="--ood_prompts", source=source, limit=args.max_prompts)
        ood_groups = load_groups(args.ood_prompts, args.ood_group_column, len(ood_prompts), source)
    output_dir = Path(args.output_dir)
    if is_complete(output_dir) and args.if_output_exists == "resume":
        raise OutputDirError(
            f"{source}: output_dir {output_dir} already holds a finished evaluation; it was not touched. Choose "
            "another output_dir, or set `if_output_exists: overwrite` to move it aside and evaluate again"
        )
    # an unfinished evaluation is simply done again (it keeps no partial state); a failed rerun deletes nothing
    prepare_output_dir(output_dir, args.if_output_exists, source, stage="eval")
    output_dir.mkdir(parents=True, exist_ok=True)
    mark_started(output_dir, "eval")
    from instructgpt.infra.processes import default_device

    device = default_device()
    evaluator = Evaluator(args, prompts, device, source)
    ref_name, ref_path = resolve_reference(args, models)
    if ref_path is not None:
        evaluator.load_reference(ref_path, key=f"--models {ref_name}" if ref_name in models else "--reference")

    per_model: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    ood_per_model: dict[str, dict[str, Any]] = {}
    ood_texts: dict[str, list[str]] = {}
    for name, path in models.items():
        samples, metrics = evaluator.run_model(name, path, is_reference=(name == ref_name and path == ref_path))
        per_model[name], texts[name] = metrics, samples.texts
        if ood_prompts:
            samples, metrics = evaluator.run_model(name, path, ood_prompts, is_reference=(name == ref_name and path == ref_path))
            ood_per_model[name], ood_texts[name] = metrics, samples.texts

    results: dict[str, Any] = {
        "models": models,
        "prompts": args.prompts,
        "num_prompts": len(prompts),
        "sampling": {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_k", "top_p", "seed")},
        "labeler": getattr(evaluator.labeler, "name", None),
        "reward_model": args.reward_model,
        "reference": {"name": ref_name, "path": ref_path} if ref_path else None,
    }
    win_rate: dict[str, dict[str, dict[str, Any]]] = {}
    if evaluator.labeler is not None and len(models) > 1:
        matrix = win_rate_matrix({name: per_model[name]["labeler_scores"] for name in models})
        win_rate = {a: {b: w.as_dict() for b, w in row.items()} for a, row in matrix.items()}
    results["win_rate"] = win_rate
    results["metrics"] = {name: public_metrics(m) for name, m in per_model.items()}
    results["headline"] = headline_pairs(list(models), win_rate, results["metrics"], ref_name)
    results["task_shares"] = with_shares(per_model)
    if ood_prompts:
        ood_win: dict[str, dict[str, dict[str, Any]]] = {}
        if evaluator.labeler is not None and len(models) > 1:
            matrix = win_rate_matrix({name: ood_per_model[name]["labeler_scores"] for name in models})
            ood_win = {a: {b: w.as_dict() for b, w in row.items()} for a, row in matrix.items()}
        ood_metrics = {name: public_metrics(m) for name, m in ood_per_model.items()}
        results["ood"] = {
            "prompts": args.ood_prompts, "num_prompts": len(ood_prompts), "win_rate": ood_win, "metrics": ood_metrics,
            "headline": headline_pairs(list(models), ood_win, ood_metrics, ref_name),
            "task_shares": with_shares(ood_per_model, ood_groups),
        }

    # PPO training curves and the over-optimization sweep over checkpoints
    plots: dict[str, str] = {}
    plot_dir = output_dir / PLOTS_DIR
    if args.ppo_run:
        results["ppo_run"] = args.ppo_run
        training = training_curves(args.ppo_run)
        if training:
            from instructgpt.metrics.plots import plot_training_curves

            plots["training"] = str(plot_training_curves(
                training["episode"], {"objective/scores": training["scores"],
                                      "objective/rlhf_reward": training["rlhf_reward"]},
                training["kl"], plot_dir / "ppo_training.png"))
            results["ppo_training"] = {k: v[-1] for k, v in training.items() if v}
        if evaluator.labeler is not None and ref_path is not None:
            sweep = checkpoint_sweep(evaluator, args, prompts, ref_name, ref_path, per_model, models)
            results["checkpoints"] = sweep
            if len(sweep) >= 2:
                from instructgpt.metrics.plots import plot_overoptimization

                plots["overoptimization"] = str(plot_overoptimization(
                    sweep, plot_dir / "overoptimization.png", labeler=results["labeler"] or "labeler",
                    reference=ref_name or "reference"))

    if win_rate:
        from instructgpt.metrics.plots import plot_win_rates

        pairs = [(h["model"], h["baseline"], h) for h in results["headline"]]
        plots["win_rates"] = str(plot_win_rates(pairs, plot_dir / "win_rates.png", labeler=results["labeler"] or ""))
    from instructgpt.metrics.plots import plot_model_metrics

    plots["metrics"] = str(plot_model_metrics(results["metrics"], METRIC_COLUMNS[1:], plot_dir / "model_metrics.png"))
    results["plots"] = {k: str(Path(v).relative_to(output_dir)) for k, v in plots.items()}

    completions = completion_rows(prompts, texts, per_model)
    atomic_write_text(output_dir / COMPLETIONS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in completions))
    ood_completions: list[dict[str, Any]] = []
    if ood_prompts:
        ood_completions = completion_rows(ood_prompts, ood_texts, ood_per_model, ood_groups)
        atomic_write_text(output_dir / OOD_COMPLETIONS_FILE,
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ood_completions))
    results["seconds"] = round(time.time() - started, 1)
    atomic_write_json(output_dir / RESULTS_FILE, results)
    atomic_write_text(output_dir / REPORT_FILE, render_report(results, completions, args.num_examples, ood_completions))

    tracker = StageTracker.start(args.report_to, project=args.project, stage="eval", config=dataclasses.asdict(args),
                                 output_dir=output_dir,
                                 identity=run_identity(output_dir, "eval", args.run_name, resuming=True))
    log_results(tracker, results, completions, output_dir)
    tracker.finish()
    check_results(results, args, output_dir)
    mark_complete(output_dir, "eval", dataclasses.asdict(args), {"headline": results["headline"]})
    print_summary(results, output_dir)
    return results


def public_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A model's numbers for results.json: without the per-response lists (scores, outcomes)."""
    return {k: v for k, v in metrics.items() if not k.endswith(("_scores", "_outcomes"))}


def with_shares(per_model: dict[str, dict[str, Any]], groups: Sequence[str] | None = None) -> dict[str, Any]:
    """``{model: task_shares(...)}`` for the models the labeler judged with outcomes."""
    return {name: task_shares(m["labeler_outcomes"], groups) for name, m in per_model.items()
            if "labeler_outcomes" in m}


def completion_rows(prompts: Sequence[Any], texts: dict[str, list[str]], per_model: dict[str, dict[str, Any]],
                    groups: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per prompt: every model's response, its labeler and RM scores and, when known, its outcomes."""
    rows = []
    for i, prompt in enumerate(prompts):
        row: dict[str, Any] = {"prompt": prompt}
        if groups:
            row["group"] = groups[i]
        for name, m in per_model.items():
            row[name] = texts[name][i]
            if "labeler_scores" in m:
                row[f"{name}_labeler_score"] = m["labeler_scores"][i]
            if "rm_scores" in m:
                row[f"{name}_rm_score"] = m["rm_scores"][i]
            for key in ("correct", "on_task", "off_topic"):
                if "labeler_outcomes" in m:
                    row[f"{name}_{key}"] = m["labeler_outcomes"][i][key]
        rows.append(row)
    return rows


def check_results(results: dict[str, Any], args: EvalArguments, output_dir: Path) -> None:
    """An evaluation is finished only with numbers for every model, every prompt and, with a judge, every pair."""
    from instructgpt.infra.guards import UnsoundOutput

    names = list(results["models"])
    problems = [f"no metrics for {n}" for n in names if n not in results["metrics"]]
    if results.get("labeler") and len(names) > 1:
        problems += [f"no win rate of {a} over {b}" for a in names for b in names
                     if a != b and b not in results["win_rate"].get(a, {})]
    for name, metrics in results["metrics"].items():
        for key, value in metrics.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{name}'s {key} is {value}")
    if problems:
        raise UnsoundOutput(f"{output_dir}: the evaluation is incomplete ({'; '.join(problems[:3])}); not marked finished")


# (metric key, title) in the order the report's table shows them
METRIC_COLUMNS: list[tuple[str, str]] = [
    ("path", "path"),
    ("labeler_score", "labeler score"),
    ("labeler_correct", "correct"),
    ("labeler_on_task", "on task"),
    ("labeler_off_topic", "off topic"),
    ("rm_score", "RM score (normalized)"),
    ("kl_to_reference", "KL to reference (nats)"),
    ("response_tokens", "length (tokens)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("eos_fraction", "ends with EOS"),
]


def headline_pairs(names: list[str], win_rate: dict, metrics: dict, ref_name: str | None) -> list[dict[str, Any]]:
    """Every later model against every earlier one (``ppo vs sft``, ``sft vs base``, ...), later models first."""
    rows = []
    for i in range(len(names) - 1, 0, -1):
        for j in range(i - 1, -1, -1):
            a, b = names[i], names[j]
            if a in win_rate and b in win_rate[a]:
                row = {"model": a, "baseline": b, **win_rate[a][b]}
                row["kl_to_reference"] = metrics[a].get("kl_to_reference")
                row["reference"] = ref_name
                rows.append(row)
    return rows


def training_curves(ppo_run: str | Path) -> dict[str, list[Any]]:
    """Episode, score, RLHF reward and KL of every logged PPO update (rows without them, like evals, skipped)."""
    rows = [r for r in read_metrics_log(ppo_run) if "objective/scores" in r and "objective/kl" in r]
    if not rows:
        return {}
    return {
        "step": [r.get("step") for r in rows],
        "episode": [r.get("episode", r.get("step")) for r in rows],
        "scores": [r.get("objective/scores") for r in rows],
        "rlhf_reward": [r.get("objective/rlhf_reward") for r in rows],
        "kl": [r.get("objective/kl") for r in rows],
    }


def checkpoint_sweep(evaluator: Evaluator, args: EvalArguments, prompts: list[Any], ref_name: str, ref_path: str,
                     per_model: dict[str, dict[str, Any]], models: dict[str, str]) -> list[dict[str, Any]]:
    """Labeler score, RM score and KL to the reference of the reference and each PPO checkpoint."""
    subset = prompts[: args.checkpoint_prompts] if args.checkpoint_prompts else prompts
    points = []
    if ref_name in per_model and len(subset) == len(prompts):
        m = per_model[ref_name]
    else:
        _, m = evaluator.run_model(ref_name, ref_path, subset, is_reference=True)
    points.append({"label": ref_name, "step": 0, "kl": 0.0, **sweep_numbers(m)})
    for step, policy in policy_checkpoints(args.ppo_run, args.max_checkpoints):
        _, m = evaluator.run_model(f"checkpoint-{step}", str(policy), subset)
        if m.get("kl_to_reference") is None:
            continue
        points.append({"label": f"step {step}", "step": step, "path": str(policy), "kl": m["kl_to_reference"],
                       **sweep_numbers(m)})
    return points


def sweep_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's point: labeler score, share correct and on task (when the labeler tells), RM score."""
    return {k: metrics.get(k) for k in ("labeler_score", "labeler_correct", "labeler_on_task", "rm_score")}


# --------------------------------------------------------------------------------------------------------------
# Report, W&B, console
# --------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _pct(w: dict[str, Any]) -> str:
    return f"{100 * w['win_rate']:.1f}% [{100 * w['ci_low']:.1f}, {100 * w['ci_high']:.1f}]"


def _prompt_str(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "*(empty)*"


def _share(cell: dict[str, Any]) -> str:
    return f"{100 * cell['share']:.1f}% [{100 * cell['ci_low']:.1f}, {100 * cell['ci_high']:.1f}]"


def shares_table(shares: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: per model and group, the shares correct / on task / off topic with their 95% intervals."""
    lines = ["| model | prompts | n | correct [95% CI] | on task [95% CI] | off topic [95% CI] |",
             "|---|---|---|---|---|---|"]
    for name, groups in shares.items():
        for group, cells in groups.items():
            lines.append(f"| {name} | {group} | {cells['correct']['n']} | {_share(cells['correct'])} | "
                         f"{_share(cells['on_task'])} | {_share(cells['off_topic'])} |")
    return lines


def win_rate_table(headline: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | baseline | win rate [95% CI] | wins / ties / losses | KL to reference (nats) |",
             "|---|---|---|---|---|"]
    for h in headline:
        lines.append(f"| {h['model']} | {h['baseline']} | {_pct(h)} | {h['wins']} / {h['ties']} / {h['losses']} "
                     f"| {_fmt(h['kl_to_reference'], 2)} |")
    return lines


def examples(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    lines = []
    for row in rows:
        group = f" ({row['group']})" if row.get("group") else ""
        lines += [f"**Prompt{group}:** {_cell(_prompt_str(row['prompt']))}", "",
                  "| model | response | labeler score | correct | on task |", "|---|---|---|---|---|"]
        for name in names:
            flags = [("yes" if row[f"{name}_{k}"] else "no") if f"{name}_{k}" in row else "–" for k in ("correct", "on_task")]
            lines.append(f"| {name} | {_cell(row[name])} | {_fmt(row.get(f'{name}_labeler_score'), 2)} | "
                         f"{flags[0]} | {flags[1]} |")
        lines.append("")
    return lines


def render_report(results: dict[str, Any], completions: list[dict[str, Any]], num_examples: int,
                  ood_completions: list[dict[str, Any]] | None = None) -> str:
    names = list(results["models"])
    s = results["sampling"]
    lines = [
        "# Evaluation report",
        "",
        f"{results['num_prompts']} prompts from `{results['prompts']}`; one response per model, sampled with "
        f"temperature {s['temperature']}, top-k {s['top_k']}, top-p {s['top_p']}, at most {s['max_new_tokens']} "
        f"new tokens, seed {s['seed']}.",
        f"Labeler: **{results['labeler'] or 'none'}**. Reward model: `{results['reward_model'] or 'none'}`. "
        f"KL reference: **{(results['reference'] or {}).get('name') or 'none'}**.",
        "",
    ]
    if results["headline"]:
        lines += ["## Win rates", "",
                  "Win rate of the model over the baseline under the labeler (ties count half), with its 95% Wilson "
                  "interval, and the model's KL to the reference.", ""] + win_rate_table(results["headline"])
        lines += ["", "Full matrix (row over column):", "", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for a in names:
            cells = ["–" if a == b else f"{100 * results['win_rate'][a][b]['win_rate']:.1f}%" for b in names]
            lines.append(f"| **{a}** | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Per-model metrics", "", "| model | " + " | ".join(t for _, t in METRIC_COLUMNS[1:]) + " |",
              "|---" * len(METRIC_COLUMNS) + "|"]
    for name in names:
        m = results["metrics"][name]
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in METRIC_COLUMNS[1:]) + " |")
    lines.append("")
    if results.get("task_shares"):
        lines += ["## What the win rate hides: correct, on task, off topic", "",
                  "Share of responses that are correct, that attempt the asked task (right or wrong), and that stray "
                  "off topic (a sentence about another creature or another question), per task family, with 95% "
                  "Wilson intervals.", ""] + shares_table(results["task_shares"]) + [""]
    ood = results.get("ood")
    if ood:
        lines += ["## Out of distribution", "", f"{ood['num_prompts']} prompts from `{ood['prompts']}`, sampled as "
                  "above.", ""]
        if ood["headline"]:
            lines += win_rate_table(ood["headline"]) + [""]
        if ood.get("task_shares"):
            lines += shares_table(ood["task_shares"]) + [""]
        if ood_completions and num_examples > 0:
            first_of_group: dict[str, list[dict[str, Any]]] = {}
            for row in ood_completions:
                taken = first_of_group.setdefault(row.get("group", ""), [])
                if len(taken) < num_examples:
                    taken.append(row)
            lines += ["### Examples", ""] + examples([r for rows in first_of_group.values() for r in rows][:3 * num_examples], names)
    if results.get("ppo_training"):
        t = results["ppo_training"]
        lines += ["## PPO training", "", f"Run `{results['ppo_run']}`: last update's score {_fmt(t.get('scores'))}, "
                  f"KL {_fmt(t.get('kl'))} nats, episode {t.get('episode')}.", ""]
    if results.get("checkpoints"):
        lines += ["## Over-optimization check", "",
                  "Labeler score (the gold judge) and RM score (the proxy PPO optimized) against KL from the "
                  "reference, across PPO checkpoints. A labeler score that falls while the RM score rises is reward "
                  "over-optimization, as is a share correct that falls.", "",
                  "| checkpoint | KL (nats) | labeler score | share correct | share on task | RM score |",
                  "|---|---|---|---|---|---|"]
        for p in results["checkpoints"]:
            lines.append(f"| {p['label']} | {_fmt(p['kl'], 2)} | {_fmt(p['labeler_score'])} | "
                         f"{_fmt(p.get('labeler_correct'))} | {_fmt(p.get('labeler_on_task'))} | {_fmt(p.get('rm_score'))} |")
        lines.append("")
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in results["plots"].items()] + [""]
    if completions and num_examples > 0:
        lines += ["## Example completions", ""] + examples(completions[:num_examples], names)
    return "\n".join(lines)


def log_results(tracker: Any, results: dict[str, Any], completions: list[dict[str, Any]], output_dir: Path) -> None:
    """The same numbers as results.json, the plots as images, and a table of completions, on every dashboard."""
    summary: dict[str, Any] = {}
    for name, m in results["metrics"].items():
        summary.update({f"eval/{name}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    for prefix, part in (("", results), ("ood/", results.get("ood") or {})):
        for h in part.get("headline", []):
            key = f"{prefix}win_rate/{h['model']}_vs_{h['baseline']}"
            summary.update({key: h["win_rate"], f"{key}_ci_low": h["ci_low"], f"{key}_ci_high": h["ci_high"]})
        for name, groups in part.get("task_shares", {}).items():
            summary.update({f"{prefix}shares/{name}/{group}/{key}": cell["share"]
                            for group, cells in groups.items() for key, cell in cells.items()})
    tracker.log(summary, step=0)
    tracker.summary(summary)
    tracker.log_images({f"plots/{k}": output_dir / v for k, v in results.get("plots", {}).items()}, step=0)
    names = list(results["models"])
    columns = ["prompt"] + [c for n in names for c in (n, f"{n}_labeler_score") if c in completions[0] or c == n]
    tracker.log_table("completions", [{c: _prompt_str(r["prompt"]) if c == "prompt" else r.get(c) for c in columns}
                                      for r in completions], step=0)


def print_summary(results: dict[str, Any], output_dir: Path) -> None:
    for h in results["headline"]:
        kl = h["kl_to_reference"]
        kl_text = f", KL({h['model']}||{h['reference']}) = {kl:.2f} nats" if kl is not None and h["reference"] else ""
        logger.info(f"{h['model']} vs {h['baseline']}: win rate {_pct(h)}{kl_text}")
    for name, groups in results.get("task_shares", {}).items():
        cells = groups["all"]
        logger.info(f"{name}: correct {_share(cells['correct'])}, on task {_share(cells['on_task'])}, "
                    f"off topic {_share(cells['off_topic'])}")
    logger.info(f"evaluation written to {output_dir / RESULTS_FILE}, {output_dir / REPORT_FILE} and "
          f"{output_dir / PLOTS_DIR}/")


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def arguments() -> tuple[type, ...]:
    """The dataclass an eval recipe (or the command line alone) fills."""
    return (EvalArguments,)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the evaluation from its parsed settings; returns the results written to results.json."""
    from instructgpt.infra.processes import process_state

    (eval_args,) = args.parts
    state = process_state()
    results: dict[str, Any] = {}
    if state.is_main_process:  # under `accelerate launch` one process evaluates and writes; the others wait
        results = run_eval(eval_args, source=args.source if args.recipe.path else "instructgpt eval")
    state.wait_for_everyone()
    return results


def main(argv: list[str] | None = None) -> None:
    stage_main("eval", arguments, run, argv, prog="instructgpt eval", description=__doc__, recipe_optional=True)


if __name__ == "__main__":
    main(sys.argv[1:])
