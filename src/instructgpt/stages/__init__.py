"""The stages of InstructGPT, one module each: what step N does lives here, and only here.

Every stage has one contract: ``arguments`` (the dataclasses its recipe fills), ``run(args) -> result`` and a thin
``main(argv)`` for the command line. Stages share code only through the library around them (``data``,
``modeling``, ``sampling``, ``losses``, ``judges``, ``labeling``, ``metrics``, ``infra``, ``tinyworld``) and never
import each other; the pipeline reaches the stages it runs through the registry (:mod:`.registry`, re-exported here;
``tests/unit/test_layering.py`` checks both).
"""

from instructgpt.stages.registry import STAGES, load_stage

__all__ = ["STAGES", "load_stage"]
