"""Comparison collection, the data step of InstructGPT's step 2: sample K responses per prompt, have them ranked.

    instructgpt collect recipes/tiny/collect.yaml [--key value ...]
    accelerate launch -m instructgpt recipes/tiny/collect.yaml      # prompts split across processes

InstructGPT's labelers ranked K = 4 to 9 outputs that the current models sampled for the same prompt (Ouyang et al.
2022, section 3.4); later rounds sample from the RL policy. Here ``model_name_or_path`` is that policy (the SFT
model first, a PPO policy later) and ``labeler`` is who ranks: the tiny world's simulated labeler, a trained reward
model, or rankings people wrote (see :func:`instructgpt.judges.make_labeler`).

Output: ``<output_dir>/rankings.jsonl``, one ranking per prompt, which the reward-model stage reads as it is::

    {"prompt_index": 3, "prompt": "...", "responses": ["best", "...", "worst"], "scores": [..], "labeler": "...", ...}

- Resumable: every process appends each finished prompt to its own ``rankings.part-<rank>.jsonl`` and flushes;
  a rerun skips the prompts already there (a line cut off by a crash is dropped and redone). When every prompt is
  done, the parts are merged into ``rankings.jsonl`` and the run marker is written last.
- Deduplicated: identical samples (up to whitespace) and empty ones are discarded and resampled, up to
  ``max_sampling_rounds`` rounds; a prompt that still has fewer than 2 distinct responses is skipped and counted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from instructgpt import sampling
from instructgpt.arguments import DatasetMixtureArguments
from instructgpt.data.formats import load_prompts
from instructgpt.infra.cards import write_dataset_card
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import (
    OutputDirError,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    is_complete,
    open_appended_jsonl,
    read_appended_jsonl,
)
from instructgpt.infra.guards import UnsoundOutput, fault_point
from instructgpt.infra.hub import push_output
from instructgpt.infra.log import get_logger
from instructgpt.infra.outputs import mark_complete, mark_started, prepare_output_dir
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args
from instructgpt.infra.processes import process_state
from instructgpt.infra.tracking import StageTracker, run_identity
from instructgpt.infra.validation import range_problems
from instructgpt.judges import RewardModelLabeler, make_labeler
from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE, check_model_path, load_tokenizer, warn_other_tokenizer
from instructgpt.modeling.loading import load_causal_lm
from instructgpt.sampling_vllm import VLLMSampler, require_vllm

logger = get_logger(__name__)

RANKINGS_FILE = "rankings.jsonl"
SETTINGS_FILE = "collect_settings.json"
PART_GLOB = "rankings.part-*.jsonl"


@dataclass
class CollectArguments(DatasetMixtureArguments):
    """Everything a collection run needs: the policy, the prompts, how to sample, who ranks, where to write."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "The policy to sample from: the SFT model, or later the current PPO policy."}
    )
    dtype: str | None = field(default=None, metadata={"help": "Policy weights dtype (`bfloat16`, `float16`, `auto`)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts: a .jsonl file or Hub id with a `prompt` column (a string or chat messages)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name, if any."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to read."})
    max_prompts: int | None = field(default=None, metadata={"range": ">= 1", "help": "Use only the first N prompts."})
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Prompt format for a policy whose tokenizer has no chat template (SFT models save one)."},
    )
    num_responses: int = field(
        default=4,
        metadata={
            "range": ">= 2",
            "help": "K: responses sampled and ranked per prompt (InstructGPT: 4 to 9; a ranking compares at least 2).",
        },
    )
    max_new_tokens: int = field(default=64, metadata={"range": ">= 1", "help": "Longest response, in tokens."})
    temperature: float = field(
        default=1.0, metadata={"range": ">= 0", "help": "Sampling temperature (0: greedy, which gives duplicates)."}
    )
    top_k: int = field(default=0, metadata={"range": ">= 0", "help": "Sample among the k most likely tokens (0: all)."})
    top_p: float = field(
        default=1.0, metadata={"range": "[0, 1]", "help": "Nucleus sampling mass (1.0: no truncation)."}
    )
    batch_size: int = field(default=64, metadata={"range": ">= 1", "help": "Sequences per generation batch."})
    max_sampling_rounds: int = field(
        default=3,
        metadata={
            "range": ">= 1",
            "help": "Rounds of sampling to replace duplicate or empty samples before settling for fewer than K.",
        },
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Sample with vLLM (the `[vllm]` extra: pip install -e '.[vllm]') instead of transformers' "
            "generate: same settings, per-request seeds, the tokens vLLM drew are the ones ranked."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.9,
        metadata={
            "range": "(0, 1]",
            "help": "With use_vllm: the share of GPU memory vLLM takes for weights and KV cache (no effect on "
            "CPU, where VLLM_CPU_KVCACHE_SPACE in GiB sizes the cache; 1 GiB unless set).",
        },
    )
    labeler: str = field(
        default="simulated",
        metadata={
            "help": "Who ranks: `simulated` (the tiny world's rubric), `reward_model:PATH` (a trained reward "
            "model ranks by score), or `file:PATH.jsonl` (rankings people wrote)."
        },
    )
    labeler_noise: float = field(
        default=0.0,
        metadata={"range": ">= 0", "help": "Simulated labeler only: noise on its scores (0: deterministic)."},
    )
    labeler_seed: int = field(default=0, metadata={"help": "Simulated labeler only: seed of its noise."})
    labeler_batch_size: int = field(
        default=32, metadata={"range": ">= 1", "help": "Reward-model labeler: sequences per forward pass."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where rankings.jsonl and the run marker go."})
    if_output_exists: Literal["resume", "refuse", "overwrite"] = field(
        default="resume",
        metadata={
            "help": "`resume` an interrupted collection (a finished one is refused), `refuse` any non-empty "
            "directory, or `overwrite` (the old directory is moved aside, never deleted)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sampling."})
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Push the finished rankings (with their dataset card) to the Hub as a dataset repository."},
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "The Hub dataset repository to push to (default: output_dir's name)."}
    )
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repository as private."})
    report_to: str = field(
        default="none",
        metadata={
            "help": "Where to log the collection's statistics: `trackio`, `wandb`, `tensorboard`, `mlflow`, "
            "any tracker of accelerate's, several separated by commas, `all` or `none`."
        },
    )
    project: str = field(default="instructgpt", metadata={"help": "The dashboard project (W&B, Trackio, ...)."})
    run_name: str | None = field(default=None, metadata={"help": "The run's name on the dashboards."})

    def __post_init__(self) -> None:
        if problems := range_problems(self):  # built directly, not parsed from a recipe
            raise ValueError("; ".join(problems))
        super().__post_init__()


# --------------------------------------------------------------------------------------------------------------
# Prompts and deduplication
# --------------------------------------------------------------------------------------------------------------


def dedup_key(text: str) -> str:
    """Samples that differ only in whitespace are the same response to a labeler."""
    return " ".join(text.split())


def add_distinct(pool: list[str], samples: list[str], limit: int) -> int:
    """Append to ``pool`` the samples that are non-empty and new, up to ``limit``; return how many were discarded."""
    seen = {dedup_key(t) for t in pool}
    discarded = 0
    for text in samples:
        key = dedup_key(text)
        if not key or key in seen or len(pool) >= limit:
            discarded += 1
            continue
        seen.add(key)
        pool.append(text)
    return discarded


# --------------------------------------------------------------------------------------------------------------
# Resumable output: one append-only part file per process
# --------------------------------------------------------------------------------------------------------------


def read_part(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a part file and the byte length of its intact prefix; a row an interruption cut off is dropped (its
    prompt is collected again)."""
    return read_appended_jsonl(path)


def done_rows(output_dir: Path, prompts: list[Any], source: str) -> dict[int, dict[str, Any]]:
    """Prompts already collected (by index), checked against the prompts of this run."""
    done: dict[int, dict[str, Any]] = {}
    for part in sorted(output_dir.glob(PART_GLOB)):
        rows, _ = read_part(part)
        for row in rows:
            index = row.get("prompt_index")
            if not isinstance(index, int) or index >= len(prompts) or row.get("prompt") != prompts[index]:
                raise OutputDirError(
                    f"{source}: {part} holds rankings for other prompts (prompt_index {index}); this output_dir was "
                    "collected from a different prompt set: choose another output_dir or `if_output_exists: overwrite`"
                )
            done[index] = row
    return done


def open_part(output_dir: Path, rank: int) -> Path:
    """This process's part file, ready to be appended to (a partial last line cut off)."""
    path = output_dir / f"rankings.part-{rank}.jsonl"
    open_appended_jsonl(path)
    return path


def merge_parts(output_dir: Path, num_prompts: int) -> list[dict[str, Any]]:
    """All collected rows in prompt order, one per prompt, written atomically to rankings.jsonl (skipped prompts
    left out). A prompt collected twice (a process that redid it after an interruption) keeps its first row; a
    prompt missing from every part means the collection is not complete, and nothing is written."""
    by_index: dict[int, dict[str, Any]] = {}
    for part in sorted(output_dir.glob(PART_GLOB)):
        for row in read_part(part)[0]:
            by_index.setdefault(row["prompt_index"], row)
    missing = sorted(set(range(num_prompts)) - set(by_index))
    if missing:
        raise UnsoundOutput(
            f"{output_dir}: {len(missing)} of {num_prompts} prompts have no row (first: prompt {missing[0]}); the "
            "collection is not complete: rerun the same command to collect them"
        )
    rows = [by_index[i] for i in sorted(by_index)]
    rankings = [r for r in rows if not r.get("skipped")]
    if not rankings:
        raise UnsoundOutput(
            f"{output_dir}: not one ranking: every prompt got fewer than 2 distinct, non-empty responses; sample "
            "more varied responses (temperature > 0, a larger max_new_tokens, more max_sampling_rounds)"
        )
    atomic_write_text(output_dir / RANKINGS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rankings))
    return rows


# the settings that decide what a collection holds; a resumed collection must keep every one of them
DEFINING_SETTINGS = (
    "model_name_or_path",
    "dataset_name",
    "datasets",
    "test_split_size",
    "dataset_mixture",
    "dataset_config",
    "dataset_train_split",
    "max_prompts",
    "prompt_template",
    "num_responses",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "max_sampling_rounds",
    "seed",
    "labeler",
    "labeler_noise",
    "labeler_seed",
    "use_vllm",
)


def collection_settings(args: CollectArguments) -> dict[str, Any]:
    return {key: getattr(args, key) for key in DEFINING_SETTINGS}


def check_settings(output_dir: Path, settings: dict[str, Any], source: str) -> None:
    """Record the settings of a new collection; refuse to resume one made with other settings, naming them.

    Appending rankings sampled with another K, model or labeler to an interrupted collection would mix two
    datasets in one file, silently.
    """

    state = process_state()
    path = output_dir / SETTINGS_FILE
    if state.is_main_process and not path.exists():
        atomic_write_json(path, settings)
    state.wait_for_everyone()
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differ = [k for k in DEFINING_SETTINGS if k in recorded and recorded[k] != json.loads(json.dumps(settings[k]))]
    if differ:
        changes = "; ".join(f"`{k}` was {recorded[k]!r}, now {settings[k]!r}" for k in differ)
        raise OutputDirError(
            f"{source}: output_dir {output_dir} holds an interrupted collection made with other settings ({changes}); "
            "resume it with the same settings, or choose another output_dir (or `if_output_exists: overwrite`)"
        )


def collection_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts for the log, W&B and the run marker."""
    rankings = [r for r in rows if not r.get("skipped")]
    sampled = sum(r.get("num_samples", 0) for r in rows)
    discarded = sum(r.get("num_discarded", 0) for r in rows)
    sizes = [len(r["responses"]) for r in rankings]
    metrics: dict[str, Any] = {
        "num_prompts": len(rows),
        "num_rankings": len(rankings),
        "num_skipped_prompts": len(rows) - len(rankings),
        "num_samples": sampled,
        "num_discarded_samples": discarded,
        "discarded_fraction": discarded / sampled if sampled else 0.0,
        "mean_responses_per_ranking": sum(sizes) / len(sizes) if sizes else 0.0,
    }
    best = [r["scores"][0] for r in rankings if r.get("scores")]
    worst = [r["scores"][-1] for r in rankings if r.get("scores")]
    if best:
        metrics["mean_best_score"] = sum(best) / len(best)
        metrics["mean_worst_score"] = sum(worst) / len(worst)
    return metrics


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


def prepare_collect_dir(output_dir: Path, if_exists: str, source: str) -> None:
    """Like the training stages: a finished collection is never redone silently; an interrupted one resumes."""

    if is_complete(output_dir) and if_exists == "resume":
        raise OutputDirError(
            f"{source}: output_dir {output_dir} already holds a finished collection; it was not touched. Choose "
            "another output_dir, or set `if_output_exists: overwrite` to move it aside and collect again"
        )
    prepare_output_dir(
        output_dir, if_exists, source, stage="collect"
    )  # refuse / overwrite (moves aside) / nothing to do
    state = process_state()
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()


def chunks_of(num_prompts: int, args: CollectArguments) -> list[list[int]]:
    """The prompts in fixed chunks of ``batch_size // K``, the unit that is sampled together with one seed.

    The chunks (and each chunk's seeds) depend only on the prompt set and the recipe, never on which prompts are
    left to do, so a collection interrupted and resumed, or split over several processes, samples every prompt
    exactly as one uninterrupted process would.
    """
    size = max(1, args.batch_size // args.num_responses)
    return [list(range(start, min(start + size, num_prompts))) for start in range(0, num_prompts, size)]


def collect_prompts(
    model: Any,
    tokenizer: Any,
    labeler: Any,
    prompts: list[Any],
    todo: list[int],
    args: CollectArguments,
    part: Path,
    policy_name: str,
    show_progress: bool,
    generate_responses: Any = None,
) -> None:
    """Sample, deduplicate, rank and append one row per prompt of ``todo`` (flushed as soon as it is written).

    ``generate_responses`` is the sampler (:func:`instructgpt.sampling.generate_responses`, or a vLLM sampler's
    method of the same signature, which ignores ``model``)."""
    from tqdm.auto import tqdm

    if generate_responses is None:
        generate_responses = sampling.generate_responses
    k = args.num_responses
    bar = tqdm(total=len(todo), desc="Collecting comparisons", unit="prompt", disable=not show_progress)
    pending = set(todo)
    for chunk in chunks_of(len(prompts), args):
        missing = [i for i in chunk if i in pending]
        if not missing:
            continue
        pools: dict[int, list[str]] = {i: [] for i in chunk}
        sampled = {i: 0 for i in chunk}
        discarded = {i: 0 for i in chunk}
        for round_index in range(args.max_sampling_rounds):
            request = [i for i in chunk for _ in range(k - len(pools[i]))]
            if not request:
                break
            samples = generate_responses(
                model,
                tokenizer,
                [prompts[i] for i in request],
                num_samples=1,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=args.seed + 1000 * chunk[0] + round_index,
                batch_size=args.batch_size,
            )
            by_prompt: dict[int, list[str]] = {i: [] for i in chunk}
            for i, (text,) in zip(request, samples):
                by_prompt[i].append(text)
            for i, texts in by_prompt.items():
                sampled[i] += len(texts)
                discarded[i] += add_distinct(pools[i], texts, k)
        for i in missing:  # the chunk is sampled whole, as in an uninterrupted run; only its missing rows are written
            row: dict[str, Any] = {"prompt_index": i, "prompt": prompts[i]}
            responses = pools[i]
            if len(responses) < 2:
                row.update(skipped="fewer than 2 distinct non-empty responses", responses=responses)
            else:
                ranking = labeler.rank(prompts[i], responses)
                row.update(
                    responses=[responses[j] for j in ranking.order],
                    scores=[float(ranking.scores[j]) for j in ranking.order],
                    labeler=labeler.name,
                )
            row.update(policy=policy_name, num_samples=sampled[i], num_discarded=discarded[i])
            append_jsonl(part, [row])
            fault_point("collect_row")
        bar.update(len(missing))
    bar.close()


def _vllm_call(sampler: Any) -> Any:
    """The vLLM sampler behind the HF sampler's signature ``(model, tokenizer, prompts, **settings)``."""
    return lambda _model, _tokenizer, prompts, **settings: sampler.generate_responses(prompts, **settings)


def run_collect(args: CollectArguments, recipe: Recipe) -> dict[str, Any]:
    """Collect rankings as the recipe describes; returns the collection's metrics."""

    source = recipe.source
    model_path = check_model_path(args.model_name_or_path, "model_name_or_path", source)
    if not args.dataset:
        raise InstructGPTError(f"{source}: `dataset_name` is required (prompts: a .jsonl file or a Hub id)")
    if not args.output_dir:
        raise InstructGPTError(f"{source}: `output_dir` is required")
    if args.use_vllm:  # before anything is loaded or written
        require_vllm(source)
    state = process_state()
    prompts = load_prompts(
        args.dataset,
        key="dataset_name",
        source=source,
        config=args.dataset_config,
        split=args.dataset_train_split,
        limit=args.max_prompts,
    )
    device = state.device
    labeler = make_labeler(
        args.labeler,
        noise=args.labeler_noise,
        seed=args.labeler_seed,
        batch_size=args.labeler_batch_size,
        device=device,
        source=source,
    )
    output_dir = Path(args.output_dir)
    prepare_collect_dir(output_dir, args.if_output_exists, source)
    check_settings(output_dir, collection_settings(args), source)

    done = done_rows(output_dir, prompts, source)
    # every process has read the parts before any of them appends: all split the same remaining prompts
    state.wait_for_everyone()
    mine = [c for n, c in enumerate(chunks_of(len(prompts), args)) if n % state.num_processes == state.process_index]
    todo = [i for chunk in mine for i in chunk if i not in done]
    if done:
        logger.info(f"resuming: {len(done)} of {len(prompts)} prompts already collected in {output_dir}")

    tokenizer = load_tokenizer(
        model_path, trust_remote_code=args.trust_remote_code, prompt_template=args.prompt_template
    )
    if isinstance(labeler, RewardModelLabeler):  # it re-encodes the text it scores, so any tokenizer works; say so
        warn_other_tokenizer(tokenizer, f"the policy ({model_path})", labeler.tokenizer, labeler.name)
    sampler = None
    if args.use_vllm:  # the engine holds the policy: no transformers copy of it
        sampler = VLLMSampler(
            model_path,
            tokenizer,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            seed=args.seed,
            source=source,
            distributed=state.num_processes > 1,
        )
        model = None
    else:
        kwargs: dict[str, Any] = {"trust_remote_code": args.trust_remote_code}
        if args.dtype is not None:
            kwargs["dtype"] = args.dtype
        model = load_causal_lm(model_path, key="model_name_or_path", source=source, **kwargs).to(device).eval()

    mark_started(output_dir, "collect")
    tracker = StageTracker.start(
        args.report_to,
        project=args.project,
        stage="collect",
        config=recipe.data,
        output_dir=output_dir,
        identity=run_identity(output_dir, "collect", args.run_name, resuming=bool(done)),
    )
    collect_prompts(
        model,
        tokenizer,
        labeler,
        prompts,
        todo,
        args,
        open_part(output_dir, state.process_index),
        model_path,
        state.is_main_process,
        generate_responses=None if sampler is None else _vllm_call(sampler),
    )
    state.wait_for_everyone()  # every process has written its part before the merge

    metrics: dict[str, Any] = {}
    if state.is_main_process:
        rows = merge_parts(output_dir, len(prompts))
        metrics = collection_metrics(rows)
        metrics.update(labeler=labeler.name, num_processes=state.num_processes)
        for part in output_dir.glob(PART_GLOB):
            part.unlink()  # merged into rankings.jsonl
        tracker.log(metrics, step=0)
        tracker.summary(metrics)
        write_dataset_card(
            output_dir,
            stage="collect",
            title="Comparisons (InstructGPT step 2's data)",
            source_model=model_path,
            datasets=args.dataset_names,
            summary=f"K-way rankings: for each prompt, up to K={args.num_responses} distinct responses sampled from "
            f"the policy, ranked best first by `{labeler.name}`. `rankings.jsonl` holds one row per prompt in the "
            "format instructgpt's reward-model stage reads (`prompt`, `responses`, best first).",
            settings={
                "K": args.num_responses,
                "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature,
                "top_p": args.top_p,
                "seed": args.seed,
                "labeler": labeler.name,
            },
            results={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        )
        mark_complete(output_dir, "collect", recipe.data, metrics)
        logger.info(
            f"{metrics['num_rankings']} rankings ({metrics['mean_responses_per_ranking']:.2f} responses "
            f"each, ranked by {labeler.name}) written to {output_dir / RANKINGS_FILE}; "
            f"{metrics['num_discarded_samples']} of {metrics['num_samples']} samples discarded as duplicates or empty, "
            f"{metrics['num_skipped_prompts']} prompts skipped with fewer than 2 distinct responses"
        )
    state.wait_for_everyone()
    if args.push_to_hub and state.is_main_process:
        push_output(output_dir, args.hub_dataset_id, private=args.hub_private_repo, repo_type="dataset")
    tracker.finish()
    return metrics


def arguments() -> tuple[type, ...]:
    """The dataclasses a collect recipe fills."""
    return (CollectArguments,)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "collect", arguments(), prog="instructgpt collect", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_collect(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("collect", arguments, run, argv, prog="instructgpt collect", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
