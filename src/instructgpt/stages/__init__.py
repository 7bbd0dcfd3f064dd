"""The stages of InstructGPT, one module each: what step N does lives here, and only here.

Every stage has one contract: ``arguments`` (the dataclasses its recipe fills), ``run(args) -> result`` and a thin
``main(argv)`` for the command line. Stages share code only through the library around them (``data``,
``modeling``, ``sampling``, ``losses``, ``labelers``, ``metrics``, ``infra``, ``tinyworld``) and never import each
other; the pipeline reaches the stages it runs through this registry (``tests/test_layering.py`` checks both).
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
    "ppo": "instructgpt.stages.ppo.trainer",
    "dpo": "instructgpt.stages.dpo",
    "rloo": "instructgpt.stages.rloo",
    "eval": "instructgpt.stages.eval",
    "pipeline": "instructgpt.stages.pipeline",
}


def load_stage(name: str) -> ModuleType:
    """The module of stage ``name`` (imported on first use, so ``instructgpt --help`` stays fast)."""
    return importlib.import_module(STAGES[name])
