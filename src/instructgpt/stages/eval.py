"""Evaluation: did RLHF help? Win rates under a labeler, and what each model's responses look like.

    instructgpt eval --models base=data/tiny/base-model sft=runs/tiny/sft ppo=runs/tiny/ppo \\
        --prompts data/tiny/eval_prompts.jsonl --output_dir runs/tiny/eval [--ppo_run runs/tiny/ppo]

Every model answers every prompt once, sampled with the same settings and seed (the shared sampler,
:func:`instructgpt.sampling.generate_responses`). Then:

- **win rates** (InstructGPT's headline metric, section 4.1; AlpacaFarm's with simulated annotators): for each pair
  of models, a judge compares the two answers to each prompt; a win counts 1, a tie 1/2, and ``win_rate[A][B]`` is
  the mean over prompts, with a 95% Wilson interval and a 95% paired bootstrap interval over prompts
  (:mod:`instructgpt.metrics.winrate`). The judge (``--labeler``) is the tiny world's simulated labeler, a gold
  reward model in its own format (``gold_rm:PATH``), an LLM behind an OpenAI-compatible endpoint (``llm:MODEL``,
  pairwise: it compares the two answers, in both orders), a reward model of this project, or a file of rankings
  people wrote (:mod:`instructgpt.judges`). On prompts that are not the tiny world's it defaults to a gold reward
  model, never to the reward model PPO optimized;
- **per model**: mean labeler score, mean normalized RM score (with ``--reward_model``), KL to a reference model
  (the SFT policy by default), response length, distinct-1/2 and the share of responses that end with EOS;
- **what the win rate hides** (with a labeler that can tell, the tiny world's rubric): per model and per task
  family, the share of responses that are correct, on task (an attempt at the asked task) and off topic, each with
  a 95% Wilson interval (:mod:`instructgpt.metrics.shares`);
- with ``--ood_prompts``: the same win rates and shares on out-of-distribution prompts, grouped also by the file's
  ``split`` column (the tiny world ships ``data/tiny/ood_prompts.jsonl``: other casing and punctuation, new words,
  new operands);
- with ``--ppo_run``: the PPO run's reward and KL over training (its ``metrics.jsonl``), and the labeler's score
  and share correct against KL from the reference across its checkpoints, where reward over-optimization shows;
- **best-of-n** as a method: a model given as ``NAME=best_of_N:PATH`` samples N responses per prompt from PATH and
  answers with the one the ``--reward_model`` scores highest (:func:`sample_best_of_n`);
- **the reward–KL frontier**: every model's labeler score against its KL to the reference, with one line per run of
  ``--checkpoint_runs`` (PPO's checkpoints, RLOO's, ...) evaluated checkpoint by checkpoint (``plots/frontier.png``).

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
        metadata={"help": "Who judges the win rates: `simulated` (the tiny world's rubric), `gold_rm:PATH` (any "
                  "sequence-classification reward model, Hub id or directory, in its own chat template), `llm:MODEL` "
                  "(a pairwise LLM judge at --llm_judge_base_url), `reward_model:PATH` (a reward model of this "
                  "project), `file:PATH.jsonl` (rankings people wrote), `none`, or `auto`: simulated when every "
                  "prompt is a tiny-world instruction, else (with two or more models) the gold reward model "
                  "Skywork/Skywork-Reward-V2-Qwen3-0.6B, never the reward model PPO optimized."},
    )
    llm_judge_base_url: str | None = field(
        default=None,
        metadata={"help": "`labeler: llm:MODEL`: the OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
                  "http://127.0.0.1:8000/v1 (a local `transformers serve` or vLLM)."},
    )
    llm_judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "`llm:` judge: the NAME of the environment variable that holds the API key (never the key "
                  "itself; unset: no key sent)."},
    )
    llm_judge_cache: str | None = field(
        default=None,
        metadata={"help": "`llm:` judge: JSONL file of its answers, shared by every run (default: "
                  "$XDG_CACHE_HOME/instructgpt/llm_judge_cache.jsonl, ~/.cache/... without it). A rerun, or another "
                  "evaluation with the same answers, makes no request for an answer it holds."},
    )
    llm_judge_max_retries: int = field(
        default=5, metadata={"help": "`llm:` judge: retries of a request after a connection error, timeout or "
                             "HTTP 408/429/5xx, with exponential backoff (1, 2, 4, ... s, at most 30 s)."},
    )
    llm_judge_timeout: float = field(default=60.0, metadata={"help": "`llm:` judge: seconds per request."})
    llm_judge_on_failure: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "`llm:` judge: when a request still fails after the retries, `error` stops the evaluation "
                  "(rerun it: answers so far are cached) and `skip` leaves that comparison out, counted as failed."},
    )
    llm_judge_concurrency: int = field(default=4, metadata={"help": "`llm:` judge: requests in flight at once."})
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
                  "checkpoints (checkpoint-*/policy) for the over-optimization plot and the frontier."},
    )
    checkpoint_runs: list[str] = field(
        default_factory=list,
        metadata={"help": "More training runs whose checkpoints to evaluate for the reward-KL frontier, as "
                  "NAME=OUTPUT_DIR (checkpoint-N/ of a Trainer stage such as rloo, or checkpoint-N/policy of PPO)."},
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
        for name, path in parse_models(self.models).items():
            if best_of_n(path, f"--models {name}", source) is not None and not self.reward_model:
                raise EvalError(f"{source}: --models {name}: best-of-n picks with a reward model; give --reward_model")
        if self.labeler.startswith("llm:"):  # fail before any model is sampled
            llm_judge_settings(self, source).validate()
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise EvalError(f"{source}: --vllm_gpu_memory_utilization must be in (0, 1], got "
                            f"{self.vllm_gpu_memory_utilization}")
        if self.use_vllm:
            from instructgpt.sampling_vllm import require_vllm

            require_vllm(source, key="--use_vllm")


BEST_OF_N = re.compile(r"best_of_(\d+):(.+)")


def best_of_n(path: str, key: str = "--models", source: str = "instructgpt eval") -> tuple[int, str] | None:
    """``best_of_8:runs/sft`` -> ``(8, "runs/sft")``: the method best-of-8 on that policy; None for a plain path."""
    match = BEST_OF_N.fullmatch(path)
    if match is None:
        return None
    n = int(match.group(1))
    if n < 1:
        raise EvalError(f"{source}: {key}: best_of_N needs N >= 1, got {path!r}")
    return n, match.group(2)


def llm_judge_settings(args: "EvalArguments", source: str) -> Any:
    """The ``llm:MODEL`` judge's settings from the ``llm_judge_*`` fields."""
    from instructgpt.judges.llm import LLMJudgeSettings, default_cache_path

    return LLMJudgeSettings(
        model=args.labeler.partition(":")[2], base_url=args.llm_judge_base_url or "",
        api_key_env=args.llm_judge_api_key_env, cache=args.llm_judge_cache or str(default_cache_path()),
        max_retries=args.llm_judge_max_retries,
        timeout=args.llm_judge_timeout, on_failure=args.llm_judge_on_failure,
        concurrency=args.llm_judge_concurrency, source=source,
    )


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
def sample_best_of_n(model: Any, tokenizer: Any, prompts: Sequence[Any], args: EvalArguments, n: int,
                     reward: tuple[Any, Any, float]) -> Samples:
    """Best-of-n (Nakano et al. 2021, section 3.3; Stiennon et al. 2020): sample ``n`` responses per prompt from the
    policy and keep the one the reward model scores highest (the first of equal scores). No training: the method's
    only knob is ``n``, and its only cost is n times the sampling and scoring.

    Its KL to the policy it samples from has a closed form in ``n`` alone, used by Stiennon et al. (2020) and Gao
    et al. (2022) to put best-of-n on the same axis as RL:

    .. math:: KL(\\pi_{best\\,of\\,n} \\| \\pi) = \\log n - (n - 1) / n

    (an upper bound that is tight for distinct responses, Beirami et al. 2024). Samples' ``kl`` holds it per response.
    The n samples are drawn with transformers (`use_vllm` applies to the one-sample models).
    """
    from instructgpt.modeling.reward import score_responses
    from instructgpt.sampling import generate_samples

    rows = generate_samples(
        model, tokenizer, prompts, num_samples=n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, progress=True,
    )
    rm_model, rm_tokenizer, _ = reward
    scores = score_responses(rm_model, rm_tokenizer, [p for p, row in zip(prompts, rows) for _ in row],
                             [s.text for row in rows for s in row], batch_size=args.batch_size)
    picks = []
    for i, row in enumerate(rows):
        row_scores = scores[i * n:(i + 1) * n]
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


def judge_spec(args: EvalArguments, prompts: Sequence[Any]) -> str | None:
    """The judge ``--labeler`` names, ``auto`` resolved: the simulated labeler on the tiny world's prompts; on
    others, with two or more models to compare, a gold reward model (never the reward model PPO optimized, which
    the policy learned to please); else none."""
    from instructgpt.judges import DEFAULT_GOLD_RM

    spec = args.labeler
    if spec == "none":
        return None
    if spec != "auto":
        return spec
    if tiny_world_prompts(prompts):
        return "simulated"
    if len(args.models) > 1:
        logger.info(f"eval: judge: gold_rm:{DEFAULT_GOLD_RM} (`labeler: auto` on prompts that are not the tiny "
                    "world's; set --labeler gold_rm:PATH, llm:MODEL, reward_model:PATH or file:PATH.jsonl to choose)")
        return f"gold_rm:{DEFAULT_GOLD_RM}"
    logger.info("eval: one model and prompts that are not the tiny world's: no judge (set --labeler to score it)")
    return None


def build_labeler(args: EvalArguments, prompts: Sequence[Any], device: Any, source: str) -> Any | None:
    """The judge of the win rates (a labeler that scores, or a pairwise judge), or None."""
    spec = judge_spec(args, prompts)
    if spec is None:
        return None
    from instructgpt.judges import make_judge

    llm = vars(llm_judge_settings(args, source)) if spec.startswith("llm:") else None
    if llm is not None:
        llm = {k: v for k, v in llm.items() if k not in ("model", "source")}
    return make_judge(spec, llm_settings=llm, noise=args.labeler_noise, seed=args.labeler_seed,
                      batch_size=args.batch_size, device=device, source=source)


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
    from instructgpt.infra.files import PPO_METRICS_FILE as METRICS_FILE

    from instructgpt.infra.files import read_jsonl

    path = Path(ppo_run) / METRICS_FILE
    return read_jsonl(path) if path.is_file() else []


def policy_checkpoints(run: str | Path, limit: int) -> list[tuple[int, Path]]:
    """``(step, policy directory)`` of a training run's checkpoints, at most ``limit`` evenly spaced ones, the last
    included: ``checkpoint-N/policy`` of PPO, ``checkpoint-N`` itself of a Trainer stage (RLOO, DPO)."""
    found = []
    for child in Path(run).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if not match:
            continue
        for policy in (child / "policy", child):
            if (policy / "config.json").is_file() or (policy / "adapter_config.json").is_file():
                found.append((int(match.group(1)), policy))
                break
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
        from instructgpt.judges import is_pairwise

        self.args, self.prompts, self.device, self.source = args, prompts, device, source
        judge = build_labeler(args, prompts, device, source)
        # a labeler scores each response (per-model scores, win rates from them); a pairwise judge compares two
        self.pairwise = judge if is_pairwise(judge) else None
        self.labeler = None if self.pairwise is not None else judge
        self.reward = None
        if args.reward_model:
            from instructgpt.modeling.reward import load_reward_model

            self.reward = load_reward_model(args.reward_model, device=device, key="--reward_model", source=source)
        self.ref_model = self.ref_tokenizer = self.ref_path = None

    def load_reference(self, path: str, key: str = "--reference") -> None:
        from instructgpt.modeling import load_policy

        self.ref_path = path
        self.ref_model, self.ref_tokenizer = load_policy(
            path, key=key, source=self.source, prompt_template=self.args.prompt_template, device=self.device
        )

    def run_model(self, name: str, path: str, prompts: list[Any] | None = None, is_reference: bool = False) -> tuple[Samples, dict[str, Any]]:
        """Sample from one model and compute its numbers; returns the samples and a metrics dict."""
        from instructgpt.modeling import load_policy

        prompts = self.prompts if prompts is None else prompts
        args = self.args
        logger.info(f"eval: {name} ({path}) on {len(prompts)} prompts")
        best_of = best_of_n(path, f"--models {name}", self.source)
        policy_path = best_of[1] if best_of else path
        if (is_reference or policy_path == self.ref_path) and self.ref_model is not None:
            model, tokenizer = self.ref_model, self.ref_tokenizer
        else:
            model, tokenizer = load_policy(policy_path, key=f"--models {name}", source=self.source,
                                           prompt_template=args.prompt_template, device=self.device)
        if best_of:
            samples = sample_best_of_n(model, tokenizer, prompts, args, best_of[0], self.reward)
            if policy_path != self.ref_path:  # the closed form is the KL to the sampled policy, not to another one
                samples.kl = None
        else:
            samples = sample_model(model, tokenizer, prompts, args, path=policy_path, source=self.source)
        if is_reference:
            samples.kl = [0.0] * len(prompts)
        elif self.ref_model is not None and not best_of:  # best-of-n carries its closed-form KL
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
    from instructgpt.infra.files import OutputDirError, atomic_write_json, atomic_write_text, is_complete
    from instructgpt.infra.outputs import mark_complete, mark_started, prepare_output_dir
    from instructgpt.data.formats import load_prompts
    from instructgpt.infra.tracking import StageTracker, run_identity
    args.validate(source)
    started = time.time()
    models = parse_models(args.models)
    from instructgpt.modeling import check_model_path

    for name, path in models.items():  # fail before any model is loaded or sampled
        check_model_path((best_of_n(path, f"--models {name}", source) or (0, path))[1], f"--models {name}", source)
    runs = checkpoint_runs(args, models)
    for name, run_dir in runs.items():
        if not Path(run_dir).is_dir():
            raise EvalError(f"{source}: --checkpoint_runs {name}: {run_dir} is not a directory")
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
        "labeler": getattr(evaluator.pairwise or evaluator.labeler, "name", None),
        "judge": judge_description(evaluator, args),
        "reward_model": args.reward_model,
        "reference": {"name": ref_name, "path": ref_path} if ref_path else None,
    }
    win_rate, judge_counts = win_rates(evaluator, prompts, per_model, texts)
    if judge_counts is not None:
        results["judge"]["counts"] = judge_counts
    results["win_rate"] = win_rate
    results["metrics"] = {name: public_metrics(m) for name, m in per_model.items()}
    results["headline"] = headline_pairs(list(models), win_rate, results["metrics"], ref_name)
    results["task_shares"] = with_shares(per_model)
    if ood_prompts:
        ood_win, ood_counts = win_rates(evaluator, ood_prompts, ood_per_model, ood_texts)
        ood_metrics = {name: public_metrics(m) for name, m in ood_per_model.items()}
        results["ood"] = {
            "prompts": args.ood_prompts, "num_prompts": len(ood_prompts), "win_rate": ood_win, "metrics": ood_metrics,
            **({"judge_counts": ood_counts} if ood_counts is not None else {}),
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
    sweeps: dict[str, list[dict[str, Any]]] = {}
    if evaluator.labeler is not None and ref_path is not None:
        for run_name, run_dir in runs.items():
            sweeps[run_name] = checkpoint_sweep(evaluator, args, prompts, ref_name, ref_path, per_model, run_dir)
        results["sweeps"] = sweeps
        ppo_sweep = sweeps.get(ppo_run_name(args, models) or "", [])
        if args.ppo_run:
            results["checkpoints"] = ppo_sweep
        if len(ppo_sweep) >= 2:
            from instructgpt.metrics.plots import plot_overoptimization

            plots["overoptimization"] = str(plot_overoptimization(
                ppo_sweep, plot_dir / "overoptimization.png", labeler=results["labeler"] or "labeler",
                reference=ref_name or "reference"))
    # the reference and the models listed after it (the methods trained or sampled from it); a base model listed
    # before it sits hundreds of nats away and would squash every method into one corner
    after_ref = list(models)[list(models).index(ref_name):] if ref_name in models else list(models)
    frontier = {name: {"kl": results["metrics"][name].get("kl_to_reference"),
                       "labeler_score": results["metrics"][name].get("labeler_score")} for name in after_ref}
    if ref_path is not None and sum(p["kl"] is not None and p["labeler_score"] is not None
                                    for p in frontier.values()) >= 2:
        from instructgpt.metrics.plots import plot_frontier

        plots["frontier"] = str(plot_frontier(frontier, sweeps, plot_dir / "frontier.png",
                                              labeler=results["labeler"] or "labeler", reference=ref_name or "reference"))

    if win_rate:
        from instructgpt.metrics.plots import plot_win_rates

        pairs = [(h["model"], h["baseline"], h) for h in results["headline"] if h["win_rate"] is not None]
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
    if evaluator.pairwise is not None:  # HTTP requests this run made (0 when every answer came from the cache)
        results["judge"]["requests"] = evaluator.pairwise.requests
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


def win_rates(evaluator: Evaluator, prompts: list[Any], per_model: dict[str, dict[str, Any]],
              texts: dict[str, list[str]]) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any] | None]:
    """``win_rate[A][B]`` for every pair of models (rate, Wilson and bootstrap intervals, counts), from the labeler's
    per-prompt scores or from a pairwise judge's verdicts; with a pairwise judge also its counts per pair."""
    from instructgpt.metrics.winrate import win_rate_matrix, win_rate_matrix_from_outcomes

    if len(per_model) < 2:
        return {}, None
    if evaluator.pairwise is not None:
        from instructgpt.judges import judge_pairs, total_counts

        outcomes, counts = judge_pairs(evaluator.pairwise, prompts, texts)
        matrix = win_rate_matrix_from_outcomes(outcomes)
        counts = {"total": total_counts(counts), "pairs": counts}
        logger.info(f"eval: {evaluator.pairwise.name}: " + ", ".join(f"{k} {v}" for k, v in counts["total"].items()))
    elif evaluator.labeler is not None:
        matrix, counts = win_rate_matrix({name: m["labeler_scores"] for name, m in per_model.items()}), None
    else:
        return {}, None
    return {a: {b: w.as_dict() for b, w in row.items()} for a, row in matrix.items()}, counts


def judge_description(evaluator: Evaluator, args: EvalArguments) -> dict[str, Any] | None:
    """What results.json and the report say about the judge: its name, kind, and whether it is independent of the
    reward model given as --reward_model (a judge that is that model is the proxy judging itself)."""
    judge = evaluator.pairwise or evaluator.labeler
    if judge is None:
        return None
    name = judge.name
    kind = "pairwise" if evaluator.pairwise is not None else "pointwise"
    same = bool(args.reward_model) and name == f"reward_model:{args.reward_model}"
    out: dict[str, Any] = {"name": name, "kind": kind, "independent_of_reward_model": not same}
    if evaluator.pairwise is not None:
        from instructgpt.judges.llm import TEMPLATE_VERSION

        out["template"] = TEMPLATE_VERSION
        out["cache"] = evaluator.pairwise.settings.cache
    return out


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
    """Every later model against every earlier one, the reference's pairs first: each model after the reference
    over it (``ppo vs sft``, ``dpo vs sft``, ...), the reference over each model before it (``sft vs base``), then the
    other pairs, later models first (``dpo vs ppo``, ...)."""
    pairs = [(names[i], names[j]) for i in range(len(names) - 1, 0, -1) for j in range(i - 1, -1, -1)]
    if ref_name in names:
        r = names.index(ref_name)
        first = [(a, ref_name) for a in names[r + 1:]] + [(ref_name, b) for b in reversed(names[:r])]
        pairs = first + [p for p in pairs if p not in first]
    rows = []
    for a, b in pairs:
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


def ppo_run_name(args: EvalArguments, models: dict[str, str]) -> str | None:
    """The name the --ppo_run goes by: the --models name of its final policy, else ``ppo``."""
    if not args.ppo_run:
        return None
    same = [n for n, p in models.items() if Path(p).resolve() == Path(args.ppo_run).resolve()]
    return same[0] if same else "ppo"


def checkpoint_runs(args: EvalArguments, models: dict[str, str]) -> dict[str, str]:
    """``{name: output_dir}`` of every run whose checkpoints are evaluated: --ppo_run, then --checkpoint_runs."""
    runs = parse_models(args.checkpoint_runs, "--checkpoint_runs")
    name = ppo_run_name(args, models)
    if name is not None and name not in runs:
        runs = {name: args.ppo_run, **runs}
    return runs


def checkpoint_sweep(evaluator: Evaluator, args: EvalArguments, prompts: list[Any], ref_name: str, ref_path: str,
                     per_model: dict[str, dict[str, Any]], run_dir: str) -> list[dict[str, Any]]:
    """Labeler score, RM score and KL to the reference of the reference and each checkpoint of one run."""
    subset = prompts[: args.checkpoint_prompts] if args.checkpoint_prompts else prompts
    points = []
    if ref_name in per_model and len(subset) == len(prompts):
        m = per_model[ref_name]
    else:
        _, m = evaluator.run_model(ref_name, ref_path, subset, is_reference=True)
    points.append({"label": ref_name, "step": 0, "kl": 0.0, **sweep_numbers(m)})
    for step, policy in policy_checkpoints(run_dir, args.max_checkpoints):
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
    if w["win_rate"] is None:
        return "– (no verdict)"
    return f"{100 * w['win_rate']:.1f}% [{100 * w['ci_low']:.1f}, {100 * w['ci_high']:.1f}]"


def _boot(w: dict[str, Any]) -> str:
    if w.get("bootstrap_low") is None:
        return "–"
    return f"[{100 * w['bootstrap_low']:.1f}, {100 * w['bootstrap_high']:.1f}]"


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
    lines = ["| model | baseline | win rate [95% Wilson] | 95% bootstrap | wins / ties / losses | KL to reference (nats) |",
             "|---|---|---|---|---|---|"]
    for h in headline:
        lines.append(f"| {h['model']} | {h['baseline']} | {_pct(h)} | {_boot(h)} | {h['wins']} / {h['ties']} / "
                     f"{h['losses']} | {_fmt(h['kl_to_reference'], 2)} |")
    return lines


def judge_line(results: dict[str, Any]) -> str:
    """Which judge decided the win rates, and how."""
    judge = results.get("judge")
    if not judge:
        return "Judge: **none** (no win rates)."
    how = ("pairwise: it compared the two answers to each prompt in both orders; disagreeing verdicts count as a tie"
           if judge["kind"] == "pairwise" else "it scored each answer; the higher score wins")
    line = f"Judge: **{judge['name']}** ({how})."
    if not judge.get("independent_of_reward_model", True):
        line += (" This judge is the reward model given as --reward_model: if PPO optimized it, the win rates "
                 "measure the proxy, not quality.")
    return line


def judge_counts_table(counts: dict[str, Any]) -> list[str]:
    """Markdown rows: per pair of models, what the pairwise judge's verdicts were."""
    lines = ["| pair | prompts | judged | consistent | inconsistent (tie) | identical answers (tie) | unparseable "
             "(left out) | failed (left out) |", "|---|---|---|---|---|---|---|---|"]
    for pair, c in counts["pairs"].items():
        lines.append(f"| {pair} | {c['comparisons']} | {c['judged']} | {c['consistent']} | {c['inconsistent']} | "
                     f"{c['identical']} | {c['unparseable']} | {c['failed']} |")
    examples = [e for c in counts["pairs"].values() for e in c.get("unparseable_examples", [])][:3]
    if examples:
        lines += ["", "Unparseable answers, e.g.: " + "; ".join(f"`{_cell(e)[:80]}`" for e in examples)]
    return lines


def methods_table(results: dict[str, Any]) -> list[str]:
    """Every method against the reference (the SFT policy) in one table: win rate, judge and RM scores, KL, length
    and diversity; the README's comparison of PPO, DPO, RLOO and best-of-n."""
    ref = (results.get("reference") or {}).get("name")
    win_rate = results.get("win_rate") or {}
    names = [n for n in results["models"] if n != ref and ref in win_rate.get(n, {})]
    if not names:
        return []
    lines = [f"## Methods side by side (against {ref})", "",
             f"Win rate over **{ref}** under the {results.get('labeler') or 'labeler'} judge (ties count half) with its "
             "95% Wilson and paired bootstrap intervals; mean judge score (pointwise judges); mean normalized RM score (the proxy the RL methods optimized); "
             f"KL to {ref} (best-of-n: the closed form log n - (n-1)/n); response length; distinct-1/2.", "",
             f"| method | win rate over {ref} [95% Wilson] | 95% bootstrap | judge score | RM score | KL (nats) | "
             "length (tokens) | distinct-1 | distinct-2 |", "|---|---|---|---|---|---|---|---|---|"]
    for name in [ref, *names]:
        m = results["metrics"][name]
        rate, boot = ("–", "–") if name == ref else (_pct(win_rate[name][ref]), _boot(win_rate[name][ref]))
        lines.append(f"| {name} | {rate} | {boot} | {_fmt(m.get('labeler_score'))} | {_fmt(m.get('rm_score'))} | "
                     f"{_fmt(m.get('kl_to_reference'), 2)} | {_fmt(m.get('response_tokens'), 1)} | "
                     f"{_fmt(m.get('distinct_1'))} | {_fmt(m.get('distinct_2'))} |")
    return lines + [""]


def frontier_section(results: dict[str, Any]) -> list[str]:
    """The checkpoints of every evaluated run other than PPO's (whose table is the over-optimization check)."""
    sweeps = {k: v for k, v in (results.get("sweeps") or {}).items() if v is not results.get("checkpoints")
              and v != results.get("checkpoints")}
    if not sweeps:
        return []
    lines = ["## Reward–KL frontier: checkpoints", "", "| run | checkpoint | KL (nats) | judge score | share correct | "
             "RM score |", "|---|---|---|---|---|---|"]
    for run, points in sweeps.items():
        for p in points:
            lines.append(f"| {run} | {p['label']} | {_fmt(p['kl'], 2)} | {_fmt(p['labeler_score'])} | "
                         f"{_fmt(p.get('labeler_correct'))} | {_fmt(p.get('rm_score'))} |")
    return lines + [""]


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
        judge_line(results),
        f"Reward model: `{results['reward_model'] or 'none'}`. "
        f"KL reference: **{(results['reference'] or {}).get('name') or 'none'}**.",
        "",
    ]
    if results["headline"]:
        lines += ["## Win rates", "",
                  "Win rate of the model over the baseline under the judge (ties count half), with its 95% Wilson "
                  "interval (ties as half a success: approximate) and its 95% paired bootstrap interval (prompts "
                  "resampled 2000 times, seed 0: ties counted exactly), and the model's KL to the reference.",
                  ""] + win_rate_table(results["headline"])
        lines += ["", "Full matrix (row over column):", "", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for a in names:
            cells = ["–" if a == b or results["win_rate"][a][b]["win_rate"] is None
                     else f"{100 * results['win_rate'][a][b]['win_rate']:.1f}%" for b in names]
            lines.append(f"| **{a}** | " + " | ".join(cells) + " |")
        lines.append("")
    if (results.get("judge") or {}).get("counts"):
        lines += ["### The judge's verdicts", "",
                  "Each pair of answers was judged twice, with the positions swapped. Unparseable answers and failed "
                  "requests are left out of the win rate (its n counts judged prompts only).", ""]
        lines += judge_counts_table(results["judge"]["counts"]) + [""]
    lines += methods_table(results)
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
        if ood.get("judge_counts"):
            lines += judge_counts_table(ood["judge_counts"]) + [""]
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
    lines += frontier_section(results)
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
            if h["win_rate"] is not None:
                summary.update({key: h["win_rate"], f"{key}_ci_low": h["ci_low"], f"{key}_ci_high": h["ci_high"],
                                f"{key}_bootstrap_low": h["bootstrap_low"], f"{key}_bootstrap_high": h["bootstrap_high"]})
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
    logger.info(judge_line(results))
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
