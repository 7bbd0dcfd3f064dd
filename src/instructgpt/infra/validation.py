"""Numbers a recipe may hold: every numeric setting is finite and in its range, checked when the recipe is parsed.

One mechanism for every field of every stage, ours and TRL's and transformers': a field's range comes from its
``metadata["range"]`` when it declares one, else from the first rule in :data:`RULES` whose pattern matches its
name. A value outside its range, NaN or infinite, is refused before any work starts, with a message naming the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import Field
from typing import Any

# (pattern on the field name, allowed range); the first match wins. Unset (None) values are not checked.
RULES: list[tuple[str, str]] = [
    # probabilities and fractions
    (r"dropout|^(top_p|gamma|lam|adam_beta1|adam_beta2|label_smoothing_factor|validation_fraction|eval_fraction)$",
     "[0, 1]"),
    # the sampling temperature of the PPO policy divides the logits (stages that sample greedily at 0 say so)
    (r"^temperature$", "> 0"),
    # sizes and counts that must be at least one
    (r"batch_size$|^(gradient_accumulation_steps|max_new_tokens|response_length|num_responses|rounds|lora_r|"
     r"lora_alpha|num_ppo_epochs|num_mini_batches|max_sampling_rounds|block_size|n_layer|n_embd|n_head|n_positions|"
     r"vocab_size|max_checkpoints|horizon|ptx_max_length|max_length|total_episodes|checkpoint_prompts|"
     r"max_train_samples|max_eval_samples|max_prompts|max_demonstrations|max_documents|max_ptx_samples|"
     r"save_total_limit|min_frequency)$", ">= 1"),
    # rates, coefficients, penalties, limits and counts that may be zero
    (r"_coef$|coefficient$|^(learning_rate|weight_decay|max_grad_norm|adam_epsilon|num_train_epochs|warmup_steps|"
     r"eval_delay|cliprange|cliprange_value|labeler_noise|max_kl|target|missing_eos_penalty|neftune_noise_alpha|"
     r"top_k|num_examples|num_sample_generations|dataloader_num_workers|logging_steps|save_steps|eval_steps|"
     r"eval_num_prompts)$",
     ">= 0"),
]
_COMPILED = [(re.compile(pattern), spec) for pattern, spec in RULES]


def range_of(field: Field) -> str | None:
    """The range a field's values must lie in: its own ``metadata["range"]``, else the first matching rule."""
    if "range" in field.metadata:
        return field.metadata["range"]
    return next((spec for pattern, spec in _COMPILED if pattern.search(field.name)), None)


def in_range(value: float, spec: str) -> bool:
    """``spec`` is ``"[lo, hi]"``, ``">= x"`` or ``"> x"``."""
    spec = spec.strip()
    if spec.startswith("["):
        low, high = (float(x) for x in spec.strip("[]").split(","))
        return low <= value <= high
    op, bound = spec.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def check_number(key: str, value: Any, field: Field) -> str | None:
    """Why ``value`` cannot be the value of ``field`` (named ``key`` in the recipe), or None when it can."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value):
        return f"`{key}` must be a finite number, got {value}"
    spec = range_of(field)
    if spec is not None and not in_range(value, spec):
        return f"`{key}` must be {_words(spec)}, got {value}"
    return None


def _words(spec: str) -> str:
    if spec.startswith("["):
        low, high = spec.strip("[]").split(",")
        return f"between {low.strip()} and {high.strip()}"
    op, bound = spec.split()
    return f"{'at least' if op == '>=' else 'greater than'} {bound}"
