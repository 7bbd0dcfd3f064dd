"""The stage registry: a recipe's ``stage:`` name -> the module that runs it, imported on first use.

The pipeline and the command line reach the stages through this table; a stage's module is imported only when it
runs, so ``instructgpt --help`` stays fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# a recipe's `stage:` -> the module that runs it
STAGES: dict[str, str] = {
    "pretrain": "instructgpt.stages.pretrain",
    "sft": "instructgpt.stages.sft",
    "collect": "instructgpt.stages.collect",
    "rm": "instructgpt.stages.rm",
    "label": "instructgpt.stages.label",
    "ppo": "instructgpt.stages.ppo.run",
    "dpo": "instructgpt.stages.dpo",
    "rloo": "instructgpt.stages.rloo",
    "grpo": "instructgpt.stages.grpo",
    "eval": "instructgpt.stages.eval",
    "pipeline": "instructgpt.stages.pipeline",
}


def load_stage(name: str) -> ModuleType:
    """The module of stage ``name`` (imported on first use, so ``instructgpt --help`` stays fast)."""
    return importlib.import_module(STAGES[name])
