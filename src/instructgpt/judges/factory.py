"""Judges from their recipe values: :func:`make_labeler` for a judge that scores, :func:`make_judge` for any judge.

Two functions, because callers need two things:

- :func:`make_labeler` returns a :class:`~instructgpt.judges.base.Labeler`, a judge that scores and so ranks one
  response at a time: comparison collection (``instructgpt collect``), the reward model's held-out check and
  ``instructgpt agreement`` use it, since they need a ranking of K responses. It refuses ``llm:MODEL``;
- :func:`make_judge` returns that, or a *pairwise* judge (``llm:MODEL``) that only compares two responses:
  ``instructgpt eval`` uses it, since win rates can come from either kind.

The recipe values: ``simulated`` (the tiny world's rubric, :mod:`instructgpt.judges.simulated`),
``reward_model:PATH`` (:mod:`instructgpt.judges.reward_model`), ``gold_rm:PATH`` (:mod:`instructgpt.judges.gold_rm`),
``file:PATH.jsonl`` (:mod:`instructgpt.judges.rankings_file`) and, for :func:`make_judge` only, ``llm:MODEL``
(:mod:`instructgpt.judges.llm`).
"""

from __future__ import annotations

from typing import Any

from instructgpt.judges.base import Labeler, LabelerError
from instructgpt.judges.gold_rm import GoldRewardModelJudge
from instructgpt.judges.llm import LLMJudge, LLMJudgeSettings
from instructgpt.judges.rankings_file import FileLabeler
from instructgpt.judges.reward_model import RewardModelLabeler
from instructgpt.judges.simulated import SimulatedLabeler


def make_labeler(
    spec: str,
    *,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    device: Any = None,
    source: str = "recipe",
) -> Labeler:
    """A labeler from its recipe value: ``simulated``, ``reward_model:PATH`` (a reward model of this project, read
    as it was trained, minus its stored shift), ``gold_rm:PATH`` (any sequence-classification reward model in its
    own format: :mod:`instructgpt.judges.gold_rm`) or ``file:PATH.jsonl``."""
    kind, _, path = spec.partition(":")
    if kind == "simulated" and not path:
        return SimulatedLabeler(noise=noise, seed=seed)
    if kind == "reward_model" and path:
        return RewardModelLabeler(path, batch_size=batch_size, device=device, source=source)
    if kind == "file" and path:
        return FileLabeler(path, source=source)
    if kind == "gold_rm" and path:
        return GoldRewardModelJudge(path, batch_size=batch_size, device=device, source=source)
    if kind == "llm":
        raise LabelerError(
            f"{source}: `labeler`: {spec!r} is a pairwise judge: it compares two responses and cannot "
            "score or rank one; it judges `instructgpt eval`'s win rates only"
        )
    raise LabelerError(
        f"{source}: `labeler`: unknown labeler {spec!r}; use `simulated`, `reward_model:PATH`, `gold_rm:PATH` or "
        "`file:PATH.jsonl`"
    )


def make_judge(
    spec: str,
    *,
    llm_settings: dict[str, Any] | None = None,
    noise: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    device: Any = None,
    source: str = "recipe",
) -> Labeler | LLMJudge:
    """A judge from its recipe value: ``llm:MODEL`` (with ``llm_settings``: base_url, api_key_env, cache, ...) or
    anything :func:`make_labeler` accepts (``gold_rm:PATH``, ``simulated``, ...)."""
    kind, _, rest = spec.partition(":")
    if kind == "llm":
        return LLMJudge(LLMJudgeSettings(model=rest, source=source, **(llm_settings or {})))
    return make_labeler(spec, noise=noise, seed=seed, batch_size=batch_size, device=device, source=source)
