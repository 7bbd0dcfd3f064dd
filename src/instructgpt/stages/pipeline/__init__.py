"""The whole InstructGPT recipe in one command: every stage in order, then the evaluation.

The stage's contract (``arguments``, ``run``, ``main``), the command line and the run of the plan
(``run_pipeline``) are in :mod:`~instructgpt.stages.pipeline.run`, whose docstring tells what the pipeline does;
the rest, one concern a module:

- :mod:`~instructgpt.stages.pipeline.settings`: ``PipelineArguments`` (the pipeline recipe) and ``Stage`` (one step);
- :mod:`~instructgpt.stages.pipeline.plan`: ``Planner``, which stages run, in which order, wired by which overrides;
- :mod:`~instructgpt.stages.pipeline.steps`: one stage's status, stale inputs, running it and the cleanup after it;
- :mod:`~instructgpt.stages.pipeline.evaluation`: the evaluation step, reused when current, and the model cards;
- :mod:`~instructgpt.stages.pipeline.console`: the plan's table, the stage banners and the final summary.
"""

from instructgpt.stages.pipeline.run import STATE_FILE, arguments, main, parse_args, run, run_pipeline
from instructgpt.stages.pipeline.settings import PipelineArguments, PipelineError

__all__ = ["STATE_FILE", "PipelineArguments", "PipelineError", "arguments", "main", "parse_args", "run", "run_pipeline"]
