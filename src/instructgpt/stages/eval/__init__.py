"""Evaluation: did RLHF help? Win rates under a judge, and what each model's responses look like.

The stage's contract (``arguments``, ``run``, ``main``) and the whole evaluation (``run_eval``) are in
:mod:`~instructgpt.stages.eval.run`; the rest, one concern a module:

- :mod:`~instructgpt.stages.eval.settings`: ``EvalArguments`` and how its entries read (``NAME=PATH``, best-of-n);
- :mod:`~instructgpt.stages.eval.samples`: sampling each model, best-of-n, and the KL to the reference;
- :mod:`~instructgpt.stages.eval.judging`: the judge of the win rates, its verdicts, win rates and shares;
- :mod:`~instructgpt.stages.eval.evaluator`: one model at a time loaded, sampled and scored;
- :mod:`~instructgpt.stages.eval.sweeps`: PPO's training curves and the checkpoints of training runs;
- :mod:`~instructgpt.stages.eval.results`: the files written, what results.json holds, when it is complete;
- :mod:`~instructgpt.stages.eval.report`: report.md, the dashboards and the console summary.
"""

from instructgpt.stages.eval.results import RESULTS_FILE
from instructgpt.stages.eval.run import arguments, main, run, run_eval
from instructgpt.stages.eval.settings import EvalArguments, EvalError

__all__ = ["RESULTS_FILE", "EvalArguments", "EvalError", "arguments", "main", "run", "run_eval"]
