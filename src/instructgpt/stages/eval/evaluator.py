"""The evaluator: one model at a time is loaded, answers the prompts, and is scored; the KL reference stays loaded.

A model is named ``NAME=PATH`` (any causal LM directory or Hub id) or ``NAME=best_of_N:PATH`` (best-of-n on that
policy, :func:`~instructgpt.stages.eval.samples.sample_best_of_n`). Its numbers: the response statistics of
:class:`~instructgpt.stages.eval.samples.Samples`, its KL to the reference, and the judges' scores.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from instructgpt.infra.log import get_logger
from instructgpt.judges import is_pairwise
from instructgpt.modeling import load_policy, warn_other_tokenizer
from instructgpt.modeling.ensemble import aggregate_rewards, disagreement
from instructgpt.modeling.reward import load_reward_model, score_members, score_responses
from instructgpt.stages.eval.judging import build_labeler, labeler_details
from instructgpt.stages.eval.samples import (
    Samples,
    kl_to_reference,
    mean_or_none,
    same_vocabulary,
    sample_best_of_n,
    sample_model,
)
from instructgpt.stages.eval.settings import EvalArguments, best_of_n

logger = get_logger(__name__)


@dataclass
class Answers:
    """Every model's answers to one set of prompts: its numbers (with the per-response lists: scores, outcomes) and
    its responses, by model name in the order the models were given."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, samples: Samples, metrics: dict[str, Any]) -> None:
        self.metrics[name], self.texts[name] = metrics, samples.texts


class Evaluator:
    """Loads one model at a time (the reference stays loaded), samples, and scores with the judges."""

    def __init__(self, args: EvalArguments, prompts: list[Any], device: Any, source: str):
        self.args, self.prompts, self.device, self.source = args, prompts, device, source
        judge = build_labeler(args, prompts, device, source)
        # a labeler scores each response (per-model scores, win rates from them); a pairwise judge compares two
        self.pairwise = judge if is_pairwise(judge) else None
        self.labeler = None if self.pairwise is not None else judge
        self.reward = None
        if args.reward_model:
            self.reward = load_reward_model(
                args.reward_model,
                device=device,
                key="--reward_model",
                source=source,
                aggregation=args.reward_aggregation,
                std_coef=args.reward_std_coef,
            )
        self.ref_model = self.ref_tokenizer = self.ref_path = None

    def load_reference(self, path: str, key: str = "--reference") -> None:
        self.ref_path = path
        self.ref_model, self.ref_tokenizer = load_policy(
            path, key=key, source=self.source, prompt_template=self.args.prompt_template, device=self.device
        )

    def run_model(
        self, name: str, path: str, prompts: list[Any] | None = None, is_reference: bool = False
    ) -> tuple[Samples, dict[str, Any]]:
        """Sample from one model and compute its numbers; returns the samples and a metrics dict."""
        prompts = self.prompts if prompts is None else prompts
        args = self.args
        logger.info(f"eval: {name} ({path}) on {len(prompts)} prompts")
        best_of = best_of_n(path, f"--models {name}", self.source)
        policy_path = best_of[1] if best_of else path
        if (is_reference or policy_path == self.ref_path) and self.ref_model is not None:
            model, tokenizer = self.ref_model, self.ref_tokenizer
        else:
            model, tokenizer = load_policy(
                policy_path,
                key=f"--models {name}",
                source=self.source,
                prompt_template=args.prompt_template,
                device=self.device,
            )
        if self.reward is not None:  # it re-encodes the text it scores, so any tokenizer works; say so
            warn_other_tokenizer(
                tokenizer, f"{name} ({policy_path})", self.reward[1], f"--reward_model ({args.reward_model})"
            )
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
            out["labeler_score"] = mean_or_none(scores)
            out.update(labeler_details(self.labeler, prompts, texts))
        if self.reward is not None:
            model, tokenizer, _ = self.reward
            if hasattr(model, "members"):  # an ensemble: its members score once; the aggregate and their spread
                members = torch.tensor(
                    score_members(model, tokenizer, list(prompts), list(texts), batch_size=self.args.batch_size)
                ).reshape(len(texts), -1)
                rm = aggregate_rewards(members, model.aggregation, model.std_coef).tolist()
                out["rm_disagreement"] = disagreement(members).mean().item() if texts else None
            else:
                rm = score_responses(model, tokenizer, list(prompts), list(texts), batch_size=self.args.batch_size)
            out["rm_scores"] = rm
            out["rm_score"] = mean_or_none(rm)
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
