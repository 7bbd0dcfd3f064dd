"""Reward-model ensembles: N reward models read as one, their scores aggregated conservatively.

A policy optimized against one reward model finds the responses that model over-rates: the reward climbs while the
quality a person would judge stops rising and then falls (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization"). Coste et al. (2023, "Reward Model Ensembles Help Mitigate Overoptimization") train several
reward models and optimize an aggregate that is low wherever they disagree; Eisenstein et al. (2023, "Helping or
Herding?") show the members must differ in more than their heads' seeds for the disagreement to mean much.

On disk an ensemble is a folder holding :data:`ENSEMBLE_FILE` (the members, the diversity they were trained with,
the default aggregation), the tokenizer the members share, and one complete reward model per member under
``members/<i>/``, each with its own shift (``config.reward_shift``: the demonstrations average 0 for every member).
:func:`instructgpt.modeling.reward.load_reward_model` loads such a folder as one model (:class:`RewardEnsemble`), so
every consumer that takes a reward model path takes an ensemble.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from instructgpt.infra.errors import InstructGPTError

ENSEMBLE_FILE = "reward_ensemble.json"
Aggregation = Literal["mean", "min", "mean_minus_std"]
AGGREGATIONS: tuple[str, ...] = ("mean", "min", "mean_minus_std")


class EnsembleError(InstructGPTError):
    """A reward-model ensemble folder that cannot be read as one (its manifest, a member, an aggregation)."""


# --------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------


def aggregate_rewards(rewards: torch.Tensor, aggregation: str = "mean", std_coef: float = 1.0) -> torch.Tensor:
    """One reward per response from the members' normalized rewards ``rewards`` of shape ``(..., N)``.

    With member rewards :math:`r_1 \\dots r_N` of a response (each already minus its member's shift):

    - ``mean``: :math:`\\bar r = \\frac{1}{N}\\sum_i r_i` (Coste et al. 2023, "mean optimization");
    - ``min``: :math:`\\min_i r_i`, the worst case over the members (their "WCO"): a response scores high only if
      every member agrees it is good;
    - ``mean_minus_std``: :math:`\\bar r - \\lambda\\,\\sigma`, with
      :math:`\\sigma = \\sqrt{\\frac{1}{N}\\sum_i (r_i - \\bar r)^2}` (their "UWO", uncertainty-weighted: they
      subtract :math:`\\lambda` times the variance; the standard deviation keeps :math:`\\lambda` in reward units,
      so one value of ``std_coef`` means the same whatever the rewards' scale).

    With one member every aggregation is that member's reward. Gradients flow through all three (the minimum's to
    the smallest member; the standard deviation's wherever the members differ); tested with float64 gradcheck.
    """
    if aggregation not in AGGREGATIONS:
        raise EnsembleError(f"unknown reward aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
    if aggregation == "mean":
        return rewards.mean(dim=-1)
    if aggregation == "min":
        return rewards.min(dim=-1).values
    if rewards.shape[-1] == 1:  # no spread to subtract (and no NaN gradient from sqrt(0))
        return rewards.squeeze(-1)
    return rewards.mean(dim=-1) - std_coef * rewards.std(dim=-1, unbiased=False)


def disagreement(rewards: torch.Tensor) -> torch.Tensor:
    """The members' spread on each response, :math:`\\sigma` of :func:`aggregate_rewards`, ``(...)`` from
    ``(..., N)``: near 0 where the members agree, large where a policy has left the data they were trained on."""
    if rewards.shape[-1] == 1:
        return torch.zeros(rewards.shape[:-1], dtype=rewards.dtype, device=rewards.device)
    return rewards.std(dim=-1, unbiased=False)


# --------------------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsembleManifest:
    """What :data:`ENSEMBLE_FILE` says: the members' folders (relative to the ensemble's), how they were made to
    differ, and the aggregation a consumer uses when its recipe does not choose one."""

    members: tuple[str, ...]
    diversity: tuple[str, ...]
    aggregation: str = "mean"
    std_coef: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "diversity": list(self.diversity),
            "aggregation": self.aggregation,
            "std_coef": self.std_coef,
            "note": "each member is a complete reward model with its own reward_shift; load the folder with "
            "instructgpt.modeling.reward.load_reward_model",
        }


def is_ensemble(path: str | Path) -> bool:
    return (Path(path).expanduser() / ENSEMBLE_FILE).is_file()


def read_manifest(path: str | Path, key: str = "reward_model_path", source: str = "recipe") -> EnsembleManifest:
    """The manifest of the ensemble at ``path``, checked: at least one member, each a folder that exists."""
    file = Path(path).expanduser() / ENSEMBLE_FILE
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EnsembleError(f"{source}: `{key}`: cannot read the ensemble manifest {file}: {err}") from None
    members = data.get("members") if isinstance(data, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise EnsembleError(f"{source}: `{key}`: {file} must list its `members` (folders of reward models)")
    for member in members:
        if not (file.parent / member).is_dir():
            raise EnsembleError(f"{source}: `{key}`: {file} names member {member!r}, which is not a folder there")
    aggregation = data.get("aggregation", "mean")
    if aggregation not in AGGREGATIONS:
        raise EnsembleError(f"{source}: `{key}`: {file}: unknown aggregation {aggregation!r}")
    return EnsembleManifest(
        members=tuple(members),
        diversity=tuple(data.get("diversity") or ()),
        aggregation=aggregation,
        std_coef=float(data.get("std_coef", 1.0)),
    )


def member_paths(path: str | Path, key: str = "reward_model_path", source: str = "recipe") -> list[str]:
    """The folders of an ensemble's members; a single reward model is its own only member."""
    if not is_ensemble(path):
        return [str(path)]
    return [str(Path(path).expanduser() / m) for m in read_manifest(path, key, source).members]


def resolve_aggregation(
    path: str | Path,
    aggregation: str | None,
    std_coef: float | None,
    key: str = "reward_model_path",
    source: str = "recipe",
) -> tuple[str, float]:
    """The aggregation a consumer uses: its recipe's (``reward_aggregation``, ``reward_std_coef``), else the
    ensemble's own default from its manifest; ``mean`` and 1.0 for a single reward model (where all agree)."""
    manifest = read_manifest(path, key, source) if is_ensemble(path) else None
    chosen = aggregation or (manifest.aggregation if manifest else "mean")
    coef = std_coef if std_coef is not None else (manifest.std_coef if manifest else 1.0)
    return chosen, coef


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EnsembleOutput:
    """What :class:`RewardEnsemble` returns: ``logits`` ``(B, 1)`` (the aggregate, shifts already applied, as a
    sequence classifier's) and ``member_rewards`` ``(B, N)`` (each member's normalized reward)."""

    logits: torch.Tensor
    member_rewards: torch.Tensor


class RewardEnsemble(nn.Module):
    """N reward models as one sequence classifier: the forward returns the aggregate of the members' normalized
    rewards as ``logits``, so code that reads a reward model's logits (``score_responses``) reads the ensemble.

    Its ``config`` is the first member's with ``reward_shift`` 0: each member's own shift is subtracted before the
    aggregation (:func:`aggregate_rewards`), so nothing is left to subtract after it.
    """

    def __init__(self, members: list[nn.Module], aggregation: str = "mean", std_coef: float = 1.0):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise EnsembleError(f"unknown reward aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
        self.members = nn.ModuleList(members)
        self.aggregation = aggregation
        self.std_coef = std_coef
        shifts = [float(getattr(m.config, "reward_shift", 0.0) or 0.0) for m in members]
        self.register_buffer("shifts", torch.tensor(shifts), persistent=False)
        config = members[0].config.__class__.from_dict(members[0].config.to_dict())
        config.reward_shift = 0.0
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        raw = torch.cat(
            [m(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits.float() for m in self.members],
            dim=-1,
        )
        rewards = raw - self.shifts.to(raw.device)
        return EnsembleOutput(
            logits=aggregate_rewards(rewards, self.aggregation, self.std_coef).unsqueeze(-1), member_rewards=rewards
        )
