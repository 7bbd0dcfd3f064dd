"""Evaluation: did RLHF help? (``instructgpt eval``; the stage itself is :mod:`instructgpt.stages.eval.run`)."""

from instructgpt.stages.eval.run import (
    RESULTS_FILE,
    EvalArguments,
    EvalError,
    arguments,
    judge_spec,
    kl_to_reference,
    labeler_details,
    main,
    parse_models,
    policy_checkpoints,
    response_logprobs,
    run,
    run_eval,
    sample_best_of_n,
    sample_model,
    task_shares,
)
