"""Settings of ``instructgpt eval`` (the ``eval:`` mapping of a pipeline recipe) and how its entries read.

Every number's range sits on its field (``metadata["range"]``, checked when a recipe or the command line is parsed,
:mod:`instructgpt.infra.validation`); :meth:`EvalArguments.validate` holds the rules a single range cannot say.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from instructgpt.arguments import RewardAggregationArguments
from instructgpt.infra.errors import InstructGPTError
from instructgpt.judges.llm import LLMJudgeSettings, default_cache_path
from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE
from instructgpt.sampling_vllm import require_vllm


class EvalError(InstructGPTError):
    """Evaluation settings that cannot work (a bad --models entry, an unknown reference, ...)."""


@dataclass
class EvalArguments(RewardAggregationArguments):
    """Settings of ``instructgpt eval`` (also the ``eval:`` mapping of a pipeline recipe)."""

    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Models to compare, as NAME=PATH (any causal LM directory or Hub id), in the order the "
            "report lists them, e.g. base=data/tiny/base-model sft=runs/tiny/sft ppo=runs/tiny/ppo."
        },
    )
    prompts: str | None = field(
        default=None, metadata={"help": "Prompts: a .jsonl file (or Hub id) with a `prompt` or `messages` column."}
    )
    prompts_split: str = field(
        default="train", metadata={"help": "Split of a Hub --prompts dataset (a local file has one)."}
    )
    ood_prompts: str | None = field(
        default=None,
        metadata={
            "help": "Out-of-distribution prompts (.jsonl with a `prompt` column, optionally a "
            "--ood_group_column): "
            "every model answers them too, and the report gives their win rates and shares per group."
        },
    )
    ood_group_column: str = field(
        default="split", metadata={"help": "Column of --ood_prompts that names each prompt's group (when present)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where results.json, report.md and plots/ go."})
    max_prompts: int | None = field(default=None, metadata={"range": ">= 1", "help": "Use only the first N prompts."})
    labeler: str = field(
        default="auto",
        metadata={
            "help": "Who judges the win rates: `simulated` (the tiny world's rubric), `gold_rm:PATH` (any "
            "sequence-classification reward model, Hub id or directory, in its own chat template), `llm:MODEL` "
            "(a pairwise LLM judge at --llm_judge_base_url), `reward_model:PATH` (a reward model of this "
            "project), `file:PATH.jsonl` (rankings people wrote), `none`, or `auto`: simulated when every "
            "prompt is a tiny-world instruction, else (with two or more models) the gold reward model "
            "Skywork/Skywork-Reward-V2-Qwen3-0.6B, never the reward model PPO optimized."
        },
    )
    llm_judge_base_url: str | None = field(
        default=None,
        metadata={
            "help": "`labeler: llm:MODEL`: the OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
            "http://127.0.0.1:8000/v1 (a local `transformers serve` or vLLM)."
        },
    )
    llm_judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "`llm:` judge: the NAME of the environment variable that holds the API key (never the key "
            "itself; unset: no key sent)."
        },
    )
    llm_judge_cache: str | None = field(
        default=None,
        metadata={
            "help": "`llm:` judge: JSONL file of its answers, shared by every run (default: "
            "$XDG_CACHE_HOME/instructgpt/llm_judge_cache.jsonl, ~/.cache/... without it). A rerun, or another "
            "evaluation with the same answers, makes no request for an answer it holds."
        },
    )
    llm_judge_max_retries: int = field(
        default=5,
        metadata={
            "range": ">= 0",
            "help": "`llm:` judge: retries of a request after a connection error, timeout or "
            "HTTP 408/429/5xx, with exponential backoff (1, 2, 4, ... s, at most 30 s).",
        },
    )
    llm_judge_timeout: float = field(
        default=60.0, metadata={"range": "> 0", "help": "`llm:` judge: seconds per request."}
    )
    llm_judge_on_failure: Literal["error", "skip"] = field(
        default="error",
        metadata={
            "help": "`llm:` judge: when a request still fails after the retries, `error` stops the evaluation "
            "(rerun it: answers so far are cached) and `skip` leaves that comparison out, counted as failed."
        },
    )
    llm_judge_concurrency: int = field(
        default=4, metadata={"range": ">= 1", "help": "`llm:` judge: requests in flight at once."}
    )
    labeler_noise: float = field(
        default=0.0, metadata={"range": ">= 0", "help": "Simulated labeler: noise on its scores (0: exact)."}
    )
    labeler_seed: int = field(default=0, metadata={"help": "Simulated labeler: seed of its noise."})
    reward_model: str | None = field(
        default=None, metadata={"help": "A reward model (instructgpt-rm output_dir) for the mean normalized RM score."}
    )
    reference: str | None = field(
        default=None,
        metadata={
            "help": "Model to measure KL against: a NAME from --models or a PATH. Default: the model named "
            "`sft` when there is one. `none`: no KL."
        },
    )
    max_new_tokens: int = field(default=64, metadata={"range": ">= 1", "help": "Longest response, in tokens."})
    temperature: float = field(
        default=1.0,
        metadata={
            "range": ">= 0",
            "help": "Sampling temperature (1.0: the models' own distributions, as PPO samples).",
        },
    )
    top_k: int = field(default=0, metadata={"range": ">= 0", "help": "Sample among the k most likely tokens (0: all)."})
    top_p: float = field(
        default=1.0, metadata={"range": "[0, 1]", "help": "Nucleus sampling mass (1.0: no truncation)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling (the same for every model)."})
    batch_size: int = field(default=64, metadata={"range": ">= 1", "help": "Sequences per generation / scoring batch."})
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Sample with vLLM (the `[vllm]` extra: pip install -e '.[vllm]'), one engine per model in "
            "turn; the KL and the judges score the tokens vLLM drew. A LoRA adapter directory is merged first."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.5,
        metadata={
            "help": "With --use_vllm: the share of GPU memory vLLM takes (weights + KV cache); the models "
            "being scored share the rest. No effect on CPU (VLLM_CPU_KVCACHE_SPACE, GiB, sizes the cache).",
            "range": "(0, 1]",
        },
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Prompt format for a model whose tokenizer has no chat template (a base model)."},
    )
    ppo_run: str | None = field(
        default=None,
        metadata={
            "help": "A PPO output_dir: plot its reward and KL over training (metrics.jsonl) and evaluate its "
            "checkpoints (checkpoint-*/policy) for the over-optimization plot and the frontier."
        },
    )
    checkpoint_runs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More training runs whose checkpoints to evaluate for the reward-KL frontier, as "
            "NAME=OUTPUT_DIR (checkpoint-N/ of a Trainer stage such as rloo, or checkpoint-N/policy of PPO)."
        },
    )
    max_checkpoints: int = field(
        default=6,
        metadata={
            "range": ">= 1",
            "help": "Evaluate at most this many PPO checkpoints, evenly spaced (the last included).",
        },
    )
    checkpoint_prompts: int | None = field(
        default=None, metadata={"range": ">= 1", "help": "Prompts per checkpoint evaluation (default: all of them)."}
    )
    num_examples: int = field(
        default=3, metadata={"range": ">= 0", "help": "Prompts whose completions report.md shows."}
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "Where to log the results, plots and completions: `trackio`, `wandb`, `tensorboard`, "
            "`mlflow`, any tracker of accelerate's, several separated by commas, `all` or `none`."
        },
    )
    if_output_exists: Literal["resume", "refuse", "overwrite"] = field(
        default="resume",
        metadata={
            "help": "When output_dir holds an evaluation: `resume` redoes an unfinished one and refuses a "
            "finished one, `refuse` refuses any non-empty directory, `overwrite` moves the old one aside."
        },
    )
    project: str = field(default="instructgpt", metadata={"help": "The dashboard project (W&B, Trackio, ...)."})
    run_name: str | None = field(default=None, metadata={"help": "The run's name on the dashboards."})

    def validate(self, source: str = "instructgpt eval") -> None:
        """The rules no single field's range says: what must be given and what goes together."""
        if not self.models:
            raise EvalError(f"{source}: give at least one model with --models NAME=PATH")
        if not self.prompts:
            raise EvalError(f"{source}: --prompts is required (a .jsonl file with a `prompt` column)")
        if not self.output_dir:
            raise EvalError(f"{source}: --output_dir is required")
        for name, path in parse_models(self.models).items():
            if best_of_n(path, f"--models {name}", source) is not None and not self.reward_model:
                raise EvalError(f"{source}: --models {name}: best-of-n picks with a reward model; give --reward_model")
        if self.labeler.startswith("llm:"):  # fail before any model is sampled
            llm_judge_settings(self, source).validate()
        if self.use_vllm:
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


def llm_judge_settings(args: EvalArguments, source: str) -> LLMJudgeSettings:
    """The ``llm:MODEL`` judge's settings from the ``llm_judge_*`` fields."""
    return LLMJudgeSettings(
        model=args.labeler.partition(":")[2],
        base_url=args.llm_judge_base_url or "",
        api_key_env=args.llm_judge_api_key_env,
        cache=args.llm_judge_cache or str(default_cache_path()),
        max_retries=args.llm_judge_max_retries,
        timeout=args.llm_judge_timeout,
        on_failure=args.llm_judge_on_failure,
        concurrency=args.llm_judge_concurrency,
        source=source,
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
