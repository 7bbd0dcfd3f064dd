"""Reward models: check, load, and score ``(prompt, response)`` pairs, normalized by the stored shift.

Every consumer of a reward model (PPO, the reward-model labeler, evaluation, the RM stage's own normalization) goes
through these functions, so they all read the same text (:func:`reward_texts`) at the same token, and all subtract
the same shift. The RM stage (:mod:`instructgpt.stages.rm`) stores that shift after training: InstructGPT
"normalize[s] the reward model using a bias so that the labeler demonstrations achieve a mean score of 0 before
doing RL" (Ouyang et al. 2022, section 3.5). It lives in ``config.reward_shift`` and ``reward_normalization.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from instructgpt.data.formats import Prompt
from instructgpt.data.padding import pad_sequences
from instructgpt.infra.errors import InstructGPTError
from instructgpt.losses.reward import unflatten_rewards
from instructgpt.metrics.ranking import ranking_agreement, summarize_agreement
from instructgpt.modeling.config import check_model_path, load_pretrained, model_context_length
from instructgpt.modeling.ensemble import RewardEnsemble, is_ensemble, member_paths, read_manifest, resolve_aggregation
from instructgpt.modeling.loading import model_init_kwargs
from instructgpt.modeling.tokenizers import load_tokenizer

NORMALIZATION_FILE = "reward_normalization.json"


class RewardModelError(InstructGPTError):
    """A path that should hold a reward model but does not (a causal LM without a score head, an adapter, ...)."""


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def end_at_eos(text: str, eos_token: str | None) -> str:
    """Cut what a chat template writes after the answer's closing EOS (ChatML: a newline after ``<|im_end|>``).

    A sequence-classification model reads its score at the last token, so the reward must be read at the EOS:
    that is the last token of a response the policy samples (PPO scores ``prompt + sampled tokens up to EOS``).
    """
    if eos_token:
        cut = text.rfind(eos_token)
        if cut != -1 and not text[cut + len(eos_token) :].strip():
            return text[: cut + len(eos_token)]
    return text


def reward_texts(tokenizer: Any, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[str]:
    """What the reward model reads: the chat template applied to the prompt and the response as the assistant turn,
    ending at the answer's EOS (:func:`end_at_eos`).

    For a template built from a ``prompt_template`` this is ``format_prompt(prompt) + response + EOS``, exactly the
    text SFT trained on and the text the policy produces, so the reward model scores what PPO samples.
    """
    return [
        end_at_eos(
            tokenizer.apply_chat_template(_messages(p) + [{"role": "assistant", "content": r}], tokenize=False),
            tokenizer.eos_token,
        )
        for p, r in zip(prompts, responses)
    ]


def reward_input_ids(tokenizer: Any, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[list[int]]:
    """Token ids of :func:`reward_texts` (``add_special_tokens=False``: the template wrote any BOS itself)."""
    return tokenizer(reward_texts(tokenizer, prompts, responses), add_special_tokens=False)["input_ids"]


def check_reward_model(path: str, key: str = "reward_model_path", source: str = "recipe") -> Any:
    """Fail early, naming the key, unless ``path`` holds a sequence-classification model with one output.

    The usual mistake is pointing at the SFT model (a causal LM): it has no score head, and loading it as a reward
    model would silently attach a random one. An ensemble (:mod:`instructgpt.modeling.ensemble`) is checked member
    by member; its first member's config is returned.
    """
    from transformers import AutoConfig

    check_model_path(path, key, source)
    if is_ensemble(path):
        read_manifest(path, key, source)
        return [check_reward_model(member, key, source) for member in member_paths(path, key, source)][0]
    folder = Path(path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
        raise RewardModelError(
            f"{source}: `{key}`: {path} holds a LoRA adapter, not a model; instructgpt-rm saves merged reward models, "
            "so point to its output_dir (or merge the adapter into its base first)"
        )
    try:
        config = load_pretrained(AutoConfig, path, key=key, source=source)
    except (OSError, ValueError) as err:
        raise RewardModelError(f"{source}: `{key}`: cannot read a model config from {path}: {err}") from None
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        kind = architectures[0] if architectures else config.model_type
        raise RewardModelError(
            f"{source}: `{key}`: {path} holds a {kind} (a causal language model without a score head), not a reward "
            "model; train one with `instructgpt-rm RECIPE.yaml` and use its output_dir"
        )
    if getattr(config, "num_labels", 1) != 1:
        raise RewardModelError(f"{source}: `{key}`: {path} has {config.num_labels} outputs; a reward model has 1")
    return config


def load_reward_model(
    path: str,
    *,
    device: str | torch.device | None = None,
    dtype: Any = None,
    key: str = "reward_model_path",
    source: str = "recipe",
    aggregation: str | None = None,
    std_coef: float | None = None,
) -> tuple[Any, Any, float]:
    """Load a reward model for scoring: ``(model in eval mode, tokenizer, shift)``.

    ``shift`` is the normalization stored by the RM stage (0 for a model trained elsewhere);
    :func:`score_responses` subtracts it by itself, so callers only need it for display.

    An ensemble's folder loads as one :class:`~instructgpt.modeling.ensemble.RewardEnsemble` whose scores are the
    ``aggregation`` (with ``std_coef``) of its members' normalized rewards; unset, the ensemble's own default. A
    single reward model ignores both (one member: every aggregation is its reward).
    """
    from transformers import AutoModelForSequenceClassification

    check_reward_model(path, key, source)
    kwargs = {} if dtype is None else {"dtype": dtype}
    if is_ensemble(path):
        members = [
            load_pretrained(AutoModelForSequenceClassification, member, key=key, source=source, **kwargs)
            for member in member_paths(path, key, source)
        ]
        model = RewardEnsemble(members, *resolve_aggregation(path, aggregation, std_coef, key, source))
    else:
        model = load_pretrained(AutoModelForSequenceClassification, path, key=key, source=source, **kwargs)
    tokenizer = load_tokenizer(path, key=key, source=source)
    if model.config.pad_token_id is None:  # needed to find each sequence's last token
        model.config.pad_token_id = tokenizer.pad_token_id
    for member in getattr(model, "members", ()):
        if member.config.pad_token_id is None:
            member.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer, reward_shift(model)


def reward_shift(model: Any) -> float:
    """The normalization bias stored in the model's config (0.0 when there is none)."""
    module = getattr(model, "module", model)
    return float(getattr(module.config, "reward_shift", 0.0) or 0.0)


@torch.inference_mode()
def _forward_in_batches(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], responses: Sequence[str], batch_size: int, read: Any
) -> list[Any]:
    """``read(output)`` (one row per sequence) for each (prompt, response), in input order.

    Texts are built exactly as in training (:func:`reward_texts`); one longer than the model's context keeps its
    end, where the reward is read. Sequences are batched by length to waste little padding.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return []
    module = getattr(model, "module", model)
    context = model_context_length(module.config)
    ids = reward_input_ids(tokenizer, prompts, responses)
    if context is not None:
        ids = [x[-context:] for x in ids]
    pad_id = module.config.pad_token_id if module.config.pad_token_id is not None else tokenizer.pad_token_id
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    out: list[Any] = [None] * len(ids)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = pad_sequences([ids[i] for i in chunk], pad_id, side="right")
            output = module(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
            for i, value in zip(chunk, read(output).float().tolist()):
                out[i] = value
    finally:
        if was_training:
            module.train()
    return out


def score_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    *,
    batch_size: int = 32,
    shift: float | None = None,
) -> list[float]:
    """Normalized rewards :math:`r(x, y) - b` of each (prompt, response), in input order.

    ``b`` is the model's stored shift unless ``shift`` is given (``shift=0.0`` gives raw rewards; an ensemble's
    members always subtract their own, before the aggregation). Texts and batches as :func:`_forward_in_batches`.
    """
    bias = reward_shift(model) if shift is None else shift
    raw = _forward_in_batches(model, tokenizer, prompts, responses, batch_size, lambda out: out.logits.squeeze(-1))
    return [value - bias for value in raw]


def score_members(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], responses: Sequence[str], *, batch_size: int = 32
) -> list[list[float]]:
    """Each member's normalized reward of each (prompt, response), ``[response][member]``; a single reward model
    is one member. The spread of a row is the members' disagreement (:func:`~instructgpt.modeling.ensemble.
    disagreement`)."""
    module = getattr(model, "module", model)
    if hasattr(module, "members"):
        return _forward_in_batches(model, tokenizer, prompts, responses, batch_size, lambda out: out.member_rewards)
    return [[s] for s in score_responses(model, tokenizer, prompts, responses, batch_size=batch_size)]


def evaluate_rankings(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, batch_size: int = 32
) -> dict[str, float]:
    """Pairwise accuracy and Kendall's tau of a reward model on rankings ``{"prompt", "responses" best first}``."""
    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [text for r in rows for text in r["responses"]]
    flat = torch.tensor(score_responses(model, tokenizer, prompts, responses, batch_size=batch_size, shift=0.0))
    return rankings_agreement(flat, rows)


def rankings_agreement(flat: torch.Tensor, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Pairwise accuracy and Kendall's tau of rewards ``flat`` (every response of every ranking, in order) against
    the rankings ``rows`` (best first)."""
    num_responses = torch.tensor([len(r["responses"]) for r in rows])
    return summarize_agreement(ranking_agreement(unflatten_rewards(flat, num_responses), num_responses))


def load_sequence_classifier(
    model_path: str, model_args: Any, trust_remote_code: bool, quantize: bool = True, source: str = "recipe"
) -> Any:
    """The SFT model (or any checkpoint) with a new scalar head; the expected "new weights" warnings are silenced.

    ``quantize=False`` loads in full precision even when the recipe asks for 4/8-bit weights (a model trained in
    full, such as PPO's value function).
    """
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    kwargs = model_init_kwargs(model_args, trust_remote_code=trust_remote_code, quantize=quantize, source=source)
    with suppress_seqcls_warning():
        return load_pretrained(
            AutoModelForSequenceClassification,
            model_path,
            key="model_name_or_path",
            source=source,
            num_labels=1,
            **kwargs,
        )


def completion_text(completion: str | Sequence[dict[str, str]]) -> str:
    """A TRL completion as the response text: a string as it is, chat messages (``[{"role": "assistant", ...}]``,
    what TRL's GRPO/RLOO trainers hand a reward function for conversational prompts) as their contents joined."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


class RewardModelReward:
    """The frozen reward model of the RM stage as a TRL reward function: ``reward(prompts, completions, **kw)``.

    It returns the normalized reward :math:`r_\\theta(x, y) - b` of :func:`score_responses` (the shift ``b`` stored by
    the RM stage, so demonstrations score 0), reading each ``(prompt, response)`` exactly as the reward model was
    trained and as PPO scores it: the reward model's own chat template, ending at the answer's EOS
    (:func:`reward_texts`). TRL decodes the sampled tokens without special tokens and passes the text; the template
    writes the closing EOS back.

    ``missing_eos_penalty`` (PPO's key, same meaning): subtracted from the reward of a response that never produced
    an EOS token (it hit the length limit), read from the ``completion_ids`` TRL passes; without them (a call from
    outside a trainer) no penalty applies.

    An ensemble's folder is scored by its ``aggregation`` of the members (:func:`load_reward_model`).

    The model stays on whatever device it was put on (:meth:`to`); TRL does not move custom reward functions.
    """

    def __init__(
        self,
        path: str,
        *,
        missing_eos_penalty: float | None = None,
        eos_token_ids: Sequence[int] | None = None,
        batch_size: int = 32,
        dtype: Any = None,
        key: str = "reward_model_path",
        source: str = "recipe",
        aggregation: str | None = None,
        std_coef: float | None = None,
    ):
        if missing_eos_penalty is not None and missing_eos_penalty < 0:
            raise InstructGPTError(f"{source}: `missing_eos_penalty` must be >= 0, got {missing_eos_penalty}")
        self.path = path
        self.model, self.tokenizer, self.shift = load_reward_model(
            path, dtype=dtype, key=key, source=source, aggregation=aggregation, std_coef=std_coef
        )
        self.missing_eos_penalty = missing_eos_penalty or 0.0
        self.eos_token_ids = set(eos_token_ids or [])
        self.batch_size = batch_size
        self.__name__ = "reward_model"  # TRL names its logged metrics after the function: rewards/reward_model/mean

    def to(self, device: str | torch.device) -> RewardModelReward:
        self.model.to(device)
        return self

    def ended(self, completion_ids: Sequence[Sequence[int]]) -> list[bool]:
        """Whether each sampled response ends with an EOS token (TRL cuts the ids after the first one)."""
        return [bool(ids) and ids[-1] in self.eos_token_ids for ids in completion_ids]

    def __call__(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str | Sequence[dict[str, str]]],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        responses = [completion_text(c) for c in completions]
        scores = score_responses(self.model, self.tokenizer, prompts, responses, batch_size=self.batch_size)
        if self.missing_eos_penalty and completion_ids is not None and self.eos_token_ids:
            scores = [
                s if done else s - self.missing_eos_penalty for s, done in zip(scores, self.ended(completion_ids))
            ]
        return scores
