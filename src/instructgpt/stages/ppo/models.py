"""The four models of InstructGPT's PPO step and the forward passes PPO needs from them.

- **policy** :math:`\\pi_\\phi^{RL}`: initialised from the SFT model, trained;
- **reference** :math:`\\pi^{SFT}`: the SFT model, frozen. With LoRA it is the policy itself with its adapter
  switched off (``PeftModel.disable_adapter``), so the SFT weights are held once;
- **reward model** :math:`r_\\theta`: frozen, its score shifted by the normalisation the RM stage stored
  (:func:`instructgpt.modeling.reward.reward_shift`), so demonstrations score 0 on average;
- **value function** :math:`V`: initialised from the reward model (InstructGPT section 3.5), trained. It is the
  same sequence classifier, read at every response position instead of the last one: the backbone's hidden states
  through its scalar ``score`` head.

Sequences are laid out as ``[query | response]``: the query left-padded to a common width ``Lq``, the response
right-padded to width ``T``. The logits that predict response token ``t`` sit at column ``Lq - 1 + t``, so the
``T + 1`` last columns minus the final one hold all of them; ``logits_to_keep`` asks the model for just those, which
skips the LM head (the largest matrix of a small model) on the prompt.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from instructgpt.infra.errors import InstructGPTError
from instructgpt.modeling import load_tokenizer, lora_config, model_init_kwargs
from instructgpt.modeling.config import load_pretrained
from instructgpt.modeling.ensemble import member_paths
from instructgpt.modeling.loading import load_causal_lm
from instructgpt.modeling.reward import load_sequence_classifier, reward_shift
from instructgpt.modeling.tokenizers import check_embeddings_cover, check_same_tokenizer


class PPOModelError(InstructGPTError):
    """Models that cannot be combined for PPO (no score head, different tokenizers, ...)."""


# --------------------------------------------------------------------------------------------------------------
# Sequence layout
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sequences:
    """``[query | response]`` token ids with their attention mask and position ids (left padding aware)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_width: int

    @classmethod
    def build(
        cls, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor, response_mask: torch.Tensor
    ) -> Sequences:
        """Concatenate; position ids count real tokens only, so a left-padded prompt starts at position 0."""
        input_ids = torch.cat([query, response], dim=1)
        attention_mask = torch.cat([query_mask.long(), response_mask.long()], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        return cls(input_ids, attention_mask, position_ids, response.shape[1])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def trim_padding(
    query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop the query columns that are padding in every row and the response columns past the longest response.

    A micro-batch then costs what its own longest sequence costs, not the longest of the whole rollout batch.
    """
    keep_from = int(query_mask.any(dim=0).long().argmax())
    width = int(response_mask.any(dim=0).sum())
    return query[:, keep_from:], query_mask[:, keep_from:], response[:, :width], response_mask[:, :width]


def length_groups(lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Row indices in groups of at most ``size``, longest sequences first, so each group holds similar lengths.

    Trimmed with :func:`trim_padding`, a group then costs about what its own sequences cost.
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    return list(order.split(max(1, size)))


# --------------------------------------------------------------------------------------------------------------
# Model parts
# --------------------------------------------------------------------------------------------------------------


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(base_of(model).forward).parameters


def score_parts(model: nn.Module, key: str, path: str) -> tuple[nn.Module, nn.Module]:
    """``(backbone, score head)`` of a sequence classifier, to read the head at any position.

    Works for every causal-LM sequence classifier of transformers (GPT-2, Llama, Qwen2, Mistral, GPT-NeoX, ...):
    the backbone sits under ``base_model_prefix`` and the head is a linear layer named ``score``.
    """
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "score", None)
    if backbone is None or not isinstance(head, nn.Module):
        raise PPOModelError(
            f"`{key}`: {path} ({type(model).__name__}) has no `score` head over a `{model.base_model_prefix}` "
            "backbone; PPO reads the reward and value from a causal-LM sequence classifier"
        )
    return backbone, head


def response_logits(policy: nn.Module, seqs: Sequences, temperature: float, keep: bool) -> torch.Tensor:
    """Logits (divided by the sampling temperature) that predict each response token, ``(B, T, V)``."""
    width = seqs.response_width
    kwargs: dict[str, Any] = {"use_cache": False}
    if keep:
        kwargs["logits_to_keep"] = width + 1
    logits = policy(**seqs.model_inputs(), **kwargs).logits[:, -width - 1 : -1]
    return logits / temperature if temperature != 1.0 else logits


def response_values(backbone: nn.Module, head: nn.Module, seqs: Sequences) -> torch.Tensor:
    """Per-token values :math:`V(s_t)`, ``(B, T)``: the head on the hidden state before each response token."""
    hidden = backbone(**seqs.model_inputs(), use_cache=False).last_hidden_state
    width = seqs.response_width
    return head(hidden[:, -width - 1 : -1]).squeeze(-1).float()


def reward_positions(seqs: Sequences, pad_token_id: int | None) -> torch.Tensor:
    """Where a transformers sequence classifier reads its score: the rightmost real token that is not padding.

    This is the position the RM was trained to score at (``...ForSequenceClassification`` takes the rightmost
    token whose id is not ``pad_token_id``), reproduced here for left-padded queries: with a tokenizer whose pad
    token is its EOS token, that is the token before the final EOS, exactly as during RM training.
    """
    real = seqs.attention_mask.bool()
    if pad_token_id is not None:
        real = real & (seqs.input_ids != pad_token_id)
    index = torch.arange(real.shape[1], device=real.device)
    return (index * real.long()).argmax(dim=1)


def sequence_scores(backbone: nn.Module, head: nn.Module, seqs: Sequences, pad_token_id: int | None) -> torch.Tensor:
    """Raw reward-model scores of the sequences, ``(B,)``, read at :func:`reward_positions`."""
    hidden = backbone(**seqs.model_inputs(), use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, reward_positions(seqs, pad_token_id)]).squeeze(-1).float()


def member_rewards(
    parts: list[tuple[nn.Module, nn.Module]], shifts: list[float], seqs: Sequences, pad_token_id: int | None
) -> torch.Tensor:
    """Each reward-model member's normalized score :math:`r_i - b_i` of the sequences, ``(B, N)``; the
    aggregation of an ensemble (:func:`instructgpt.modeling.ensemble.aggregate_rewards`) reads these."""
    return torch.stack(
        [sequence_scores(backbone, head, seqs, pad_token_id) - shift for (backbone, head), shift in zip(parts, shifts)],
        dim=-1,
    )


class PolicyAndValue(nn.Module):
    """Policy and value function as one module, so that one ``accelerator.prepare`` (one DDP / DeepSpeed engine, one
    optimizer) trains both and one forward call computes everything a PPO micro-batch needs, the ptx term included
    (DDP expects one forward per backward)."""

    def __init__(
        self, policy: nn.Module, value_model: nn.Module, value_key: str = "value_model_path", value_path: str = ""
    ):
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        score_parts(value_model, value_key, value_path)  # fail at construction, not in the first update
        self.keep_logits = supports_logits_to_keep(policy)

    @property
    def config(self):  # what accelerate and transformers helpers look for
        return base_of(self.policy).config

    # TRL's `unwrap_model_for_generation` switches gradient checkpointing off while generating
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(base_of(self.policy), "is_gradient_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for model in (base_of(self.policy), self.value_model):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        for model in (base_of(self.policy), self.value_model):
            model.gradient_checkpointing_disable()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        response_width: int,
        temperature: float = 1.0,
        ptx_input_ids: torch.Tensor | None = None,
        ptx_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(response logits / temperature, per-token values, ptx logits or None)`` for ``[query | response]``."""
        seqs = Sequences(input_ids, attention_mask, position_ids, response_width)
        logits = response_logits(self.policy, seqs, temperature, self.keep_logits)
        backbone, head = score_parts(self.value_model, "value_model_path", "")
        values = response_values(backbone, head, seqs)
        ptx_logits = None
        if ptx_input_ids is not None:
            ptx_logits = self.policy(input_ids=ptx_input_ids, attention_mask=ptx_attention_mask, use_cache=False).logits
        return logits, values, ptx_logits


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def disable_dropout(model: nn.Module) -> None:
    """PPO's ratio must compare the same function twice: dropout would make even identical weights disagree
    (N+ implementation details, "disable dropout")."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def fuse_tanh_gelu(model: nn.Module) -> int:
    """Swap transformers' ``NewGELUActivation`` (GPT-2's ``gelu_new``) for PyTorch's fused tanh-approximate GELU.

    Both compute 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); ``NewGELUActivation`` spells it out in eight
    elementwise ops whose intermediates autograd keeps, the fused kernel is one op forward and one backward. The
    results agree to float rounding (≤ 4e-16 in float64), so this is a speed change only; a PPO update on the tiny
    GPT-2 spends about a quarter of its time there. Nothing is saved differently: activations have no weights and
    the config still says ``gelu_new``. Returns how many activations were swapped.
    """
    from transformers.activations import NewGELUActivation

    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped


# --------------------------------------------------------------------------------------------------------------
# Loading the four models
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PPOModels:
    """The models of a PPO run, as :func:`load_models` returns them (before ``accelerator.prepare``)."""

    model: PolicyAndValue
    """The policy and the value function, trained together."""
    ref_model: nn.Module | None
    """The frozen SFT policy; None with LoRA, where the reference is the policy with its adapter disabled."""
    reward_model: nn.Module
    """The frozen reward model, or an ensemble's members as one ``ModuleList`` (prepared together)."""
    reward_shifts: list[float]
    """Each member's shift, subtracted from its raw scores (:func:`instructgpt.modeling.reward.reward_shift`)."""
    reward_pad_id: int | None
    rm_parts: list[tuple[nn.Module, nn.Module]]
    """Each member's backbone and score head (:func:`score_parts`); one for a single reward model."""
    is_peft: bool


def load_models(
    policy_path: str, reward_path: str, value_path: str, tokenizer: Any, model_args: Any, args: Any, source: str
) -> PPOModels:
    """Load the policy (with a LoRA adapter when ``model_args.use_peft``), the reference, the reward model and the
    value model, in that order; dropout off and GPT-2's GELU fused in all of them.

    ``args`` is the run's :class:`~instructgpt.stages.ppo.config.PPOConfig` (remote code, gradient checkpointing).
    The reward and value models must share the policy's tokenizer (:func:`check_same_tokenizer`).
    """
    init = model_init_kwargs(model_args, trust_remote_code=args.trust_remote_code, source=source)
    for key, path in (("reward_model_path", reward_path), ("value_model_path", value_path)):
        check_same_tokenizer(
            tokenizer,
            f"the policy ({policy_path})",
            load_tokenizer(path, key=key, source=source),
            f"`{key}` ({path})",
            source=source,
            why="PPO feeds the policy's token ids to the reward and value models, so train the reward model from "
            "the SFT model (instructgpt-rm does)",
        )

    policy = load_causal_lm(policy_path, key="model_name_or_path", source=source, **init)
    peft_config = lora_config(model_args, "CAUSAL_LM", source=source, trust_remote_code=args.trust_remote_code)
    ref_model = None
    if peft_config is None:
        ref_model = freeze(load_causal_lm(policy_path, key="model_name_or_path", source=source, **init))
    else:
        from peft import get_peft_model

        # the reference is the policy with its adapter disabled: no second copy of the SFT weights
        peft_config.base_model_name_or_path = (
            str(Path(policy_path).resolve()) if Path(policy_path).exists() else policy_path
        )
        if getattr(policy, "is_quantized", False):  # QLoRA: fp32 norms and input grads for the frozen 4/8-bit base
            from peft import prepare_model_for_kbit_training

            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=args.gradient_checkpointing)
        policy = get_peft_model(policy, peft_config)
    # an ensemble's members (instructgpt.modeling.ensemble), each with its own shift; a single RM is one member
    members = [
        freeze(
            load_pretrained(AutoModelForSequenceClassification, path, key="reward_model_path", source=source, **init)
        )
        for path in member_paths(reward_path, "reward_model_path", source)
    ]
    reward_model = members[0] if len(members) == 1 else nn.ModuleList(members)
    shifts = [reward_shift(member) for member in members]
    reward_pad_id = members[0].config.pad_token_id
    if reward_pad_id is None:
        reward_pad_id = tokenizer.pad_token_id
    # the value model is trained in full, so it is never loaded quantized
    value_model = load_sequence_classifier(
        value_path, model_args, args.trust_remote_code, quantize=False, source=source
    )
    for key, path, model in (
        *(("reward_model_path", reward_path, member) for member in members),
        ("value_model_path", value_path, value_model),
    ):
        check_embeddings_cover(model, f"`{key}` ({path})", tokenizer, f"the policy ({policy_path})", source=source)
    for model in (policy, value_model, *members, ref_model):
        if model is not None:
            disable_dropout(model)
            fuse_tanh_gelu(model)
    for model in (policy, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    rm_parts = [score_parts(member, "reward_model_path", reward_path) for member in members]
    both = PolicyAndValue(policy, value_model, "value_model_path", value_path)
    if args.gradient_checkpointing:
        both.gradient_checkpointing_enable(args.gradient_checkpointing_kwargs or {"use_reentrant": False})
    return PPOModels(
        model=both,
        ref_model=ref_model,
        reward_model=reward_model,
        reward_shifts=shifts,
        reward_pad_id=reward_pad_id,
        rm_parts=rm_parts,
        is_peft=peft_config is not None,
    )
