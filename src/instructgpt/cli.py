"""The ``instructgpt`` command: run any recipe (dispatching on its ``stage``), or a tool.

    instructgpt RECIPE.yaml [--key value ...]        # same as python -m instructgpt / accelerate launch -m instructgpt
    instructgpt pipeline recipes/tiny/pipeline.yaml  # every stage in order
    instructgpt collect recipes/tiny/collect.yaml    # sample K responses per prompt and have a labeler rank them
    instructgpt eval --models sft=runs/sft ppo=runs/ppo --prompts data/tiny/eval_prompts.jsonl --output_dir DIR
    instructgpt generate MODEL --prompt "..."
    instructgpt chat MODEL
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from instructgpt.errors import InstructGPTError

# stage name (a recipe's `stage:`) -> module whose main(argv) runs it
STAGES = {
    "pretrain": "instructgpt.pretrain",
    "sft": "instructgpt.sft",
    "collect": "instructgpt.collect",
    "rm": "instructgpt.reward",
    "ppo": "instructgpt.ppo.trainer",
    "pipeline": "instructgpt.pipeline",
}
# subcommands that are not recipe stages
TOOLS = {
    "eval": "instructgpt.evaluate",
    "generate": "instructgpt.generate",
    "chat": "instructgpt.generate:chat_main",
}


def run_cli(fn: Callable[[], None]) -> None:
    """Run an entry point; bad input ends with its one-line message and exit code 2, not a traceback."""
    from instructgpt.processes import join_cpu_processes

    join_cpu_processes()
    try:
        fn()
    except InstructGPTError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _call(target: str, argv: list[str]) -> None:
    module_name, _, func = target.partition(":")
    getattr(importlib.import_module(module_name), func or "main")(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    command = argv[0]
    if command in TOOLS:
        _call(TOOLS[command], argv[1:])
    elif command in STAGES:  # `instructgpt collect RECIPE.yaml`: the subcommand names the stage
        _call(STAGES[command], argv[1:])
    else:
        from instructgpt.recipe import recipe_stage

        def _dispatch() -> None:
            stage = recipe_stage(command)
            if stage not in STAGES:
                raise InstructGPTError(f"{command}: unknown stage {stage!r}; expected one of {sorted(STAGES)}")
            _call(STAGES[stage], argv)

        run_cli(_dispatch)


if __name__ == "__main__":
    main()
