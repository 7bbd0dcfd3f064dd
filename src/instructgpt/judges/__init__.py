"""Judges of evaluation that are independent of the reward model PPO optimized.

Judging a policy with the reward model it was optimized against is circular: the policy learned to please exactly
that model. Two judges here stand apart from it:

- ``gold_rm:PATH`` (:mod:`instructgpt.judges.gold_rm`): any sequence-classification reward model, from the Hub or a
  directory, reading prompt and response in its own format. It scores each response (a :class:`Labeler`), so it
  also ranks and gives per-model mean scores;
- ``llm:MODEL`` (:mod:`instructgpt.judges.llm`): a chat model behind an OpenAI-compatible endpoint that compares two
  responses at a time, in both orders. It is *pairwise*: win rates come from its verdicts on each pair of models,
  not from scores.

:func:`make_judge` builds either, or any labeler :func:`instructgpt.labelers.make_labeler` knows.
"""

from __future__ import annotations

from typing import Any

from instructgpt.labelers import Labeler

DEFAULT_GOLD_RM = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"


def is_pairwise(judge: Any) -> bool:
    """A judge that compares two responses (``compare``) rather than scoring one (``score``)."""
    return bool(getattr(judge, "pairwise", False))


def make_judge(spec: str, *, llm_settings: dict[str, Any] | None = None, noise: float = 0.0, seed: int = 0,
               batch_size: int = 32, device: Any = None, source: str = "recipe") -> Any:
    """A judge from its recipe value: ``llm:MODEL`` (with ``llm_settings``: base_url, api_key_env, cache, ...) or
    anything :func:`instructgpt.labelers.make_labeler` accepts (``gold_rm:PATH``, ``simulated``, ...)."""
    kind, _, rest = spec.partition(":")
    if kind == "llm":
        from instructgpt.judges.llm import LLMJudge, LLMJudgeSettings

        return LLMJudge(LLMJudgeSettings(model=rest, source=source, **(llm_settings or {})))
    from instructgpt.labelers import make_labeler

    return make_labeler(spec, noise=noise, seed=seed, batch_size=batch_size, device=device, source=source)


__all__ = ["DEFAULT_GOLD_RM", "Labeler", "is_pairwise", "make_judge"]
