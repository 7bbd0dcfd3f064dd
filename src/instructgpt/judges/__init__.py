"""Who judges: the labeler interface, the factory, every judge and the agreement between them.

InstructGPT's labelers ranked K responses per prompt for the reward model, and judged the policies at the end
(Ouyang et al. 2022, sections 3.4 and 4). Here a judge is either a :class:`Labeler` (``base.py``: it scores one
response, so it also ranks K of them) or *pairwise* (it compares two responses, for evaluation's win rates only):

- ``simulated`` (``simulated.py``): the tiny world's rubric (:mod:`instructgpt.tinyworld.rubric`) with optional
  noise, the "human" of the offline world;
- ``reward_model:PATH`` (``reward_model.py``): a reward model this project trained;
- ``file:PATH.jsonl`` (``rankings_file.py``): rankings people wrote;
- ``gold_rm:PATH`` (``gold_rm.py``): any sequence-classification reward model in its own format, independent of the
  reward model PPO optimized (judging a policy with the model it learned to please is circular);
- ``llm:MODEL`` (``llm.py``, pairwise): a chat model behind an OpenAI-compatible endpoint that compares two
  responses at a time, in both orders; ``pairwise.py`` runs a pairwise judge over every pair of models.

``factory.py`` builds them from a recipe value (:func:`make_labeler` for a labeler, :func:`make_judge` for any
judge), and ``agreement.py`` measures how often two labelers order a pair of responses the same way. The human
labeling tool that collects people's rankings is :mod:`instructgpt.labeling`.
"""

from instructgpt.judges.agreement import (
    PairCounts,
    agreement_between,
    agreement_report,
    compare_rankings,
    pairwise_agreement,
    read_rankings,
)
from instructgpt.judges.base import Labeler, LabelerError, Ranking, is_pairwise
from instructgpt.judges.factory import make_judge, make_labeler
from instructgpt.judges.gold_rm import DEFAULT_GOLD_RM, GoldRewardModelJudge
from instructgpt.judges.llm import LLMJudge, LLMJudgeError, LLMJudgeSettings
from instructgpt.judges.pairwise import judge_pairs, total_counts
from instructgpt.judges.rankings_file import FileLabeler
from instructgpt.judges.reward_model import RewardModelLabeler
from instructgpt.judges.simulated import HUMAN_AGREEMENT_NOISE, SimulatedLabeler

__all__ = [
    "DEFAULT_GOLD_RM",
    "HUMAN_AGREEMENT_NOISE",
    "FileLabeler",
    "GoldRewardModelJudge",
    "LLMJudge",
    "LLMJudgeError",
    "LLMJudgeSettings",
    "Labeler",
    "LabelerError",
    "PairCounts",
    "Ranking",
    "RewardModelLabeler",
    "SimulatedLabeler",
    "agreement_between",
    "agreement_report",
    "compare_rankings",
    "is_pairwise",
    "judge_pairs",
    "make_judge",
    "make_labeler",
    "pairwise_agreement",
    "read_rankings",
    "total_counts",
]
