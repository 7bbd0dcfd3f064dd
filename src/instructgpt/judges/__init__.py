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

from typing import Any, Sequence

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


def judge_pairs(judge: Any, prompts: Sequence[Any], texts: dict[str, Sequence[str]]
                ) -> tuple[dict[tuple[str, str], list[float]], dict[str, dict[str, Any]]]:
    """A pairwise judge's per-prompt outcomes for every pair of models, each unordered pair judged once.

    Returns ``outcomes[(A, B)]``, the outcomes of A over B on the prompts with a verdict (1, 1/2, 0; the order of
    ``texts`` decides which model is A), and ``counts["A vs B"]``: the judge's counts (judged, inconsistent,
    unparseable, failed, ...) with up to three unparseable answers as examples.
    """
    names = list(texts)
    outcomes: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            result = judge.compare(list(prompts), list(texts[a]), list(texts[b]))
            outcomes[(a, b)] = [o for o in result.outcomes if o is not None]
            counts[f"{a} vs {b}"] = {**result.counts, "unparseable_examples": result.unparseable_examples}
    return outcomes, counts


def total_counts(counts: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The judge's counts summed over every pair of models."""
    total: dict[str, int] = {}
    for pair in counts.values():
        for key, value in pair.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


__all__ = ["DEFAULT_GOLD_RM", "Labeler", "is_pairwise", "judge_pairs", "make_judge", "total_counts"]
