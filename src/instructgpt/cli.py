"""The ``instructgpt`` command: run any recipe (dispatching on its ``stage``), or a stage or tool by name.

instructgpt RECIPE.yaml [--key value ...]        # same as python -m instructgpt / accelerate launch -m instructgpt
instructgpt pipeline recipes/tiny/pipeline.yaml  # every stage in order
instructgpt sft --config recipes/tiny/sft.yaml   # any stage by name; the recipe needs no `stage:` then
instructgpt collect recipes/tiny/collect.yaml    # sample K responses per prompt and have a labeler rank them
instructgpt label recipes/tiny/label.yaml        # people rank them in the browser (pip install -e '.[label]')
instructgpt agreement runs/tiny/label/rankings.jsonl [--labeler simulated]   # how much the labelers agree
instructgpt eval --models sft=runs/sft ppo=runs/ppo --prompts data/tiny/eval_prompts.jsonl --output_dir DIR
instructgpt generate MODEL --prompt "..."
instructgpt chat MODEL
"""

from __future__ import annotations

import importlib
import sys

from instructgpt import __version__
from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.parser import recipe_stage
from instructgpt.stages import STAGES

# subcommands that are not recipe stages
TOOLS = {
    "generate": "instructgpt.stages.generate",
    "chat": "instructgpt.stages.generate:chat_main",
    "agreement": "instructgpt.stages.agreement",
}


def usage() -> str:
    """``instructgpt --help``: the examples above, then every stage of the registry and every tool."""
    return (
        f"{__doc__}\nStages: {', '.join(STAGES)}. Tools: {', '.join(TOOLS)}.\n"
        "`instructgpt <stage or tool> --help` lists its settings, with their help, defaults and ranges; "
        "--version prints the version."
    )


def _call(target: str, argv: list[str]) -> None:
    module_name, _, func = target.partition(":")
    getattr(importlib.import_module(module_name), func or "main")(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"instructgpt {__version__}")
        return
    command = argv[0]
    if command in TOOLS:
        _call(TOOLS[command], argv[1:])
    elif command in STAGES:  # `instructgpt collect RECIPE.yaml`: the subcommand names the stage
        _call(STAGES[command], argv[1:])
    else:

        def _dispatch() -> None:
            stage = recipe_stage(command)
            if stage not in STAGES:
                raise InstructGPTError(f"{command}: unknown stage {stage!r}; expected one of {sorted(STAGES)}")
            _call(STAGES[stage], argv)

        run_cli(_dispatch)


if __name__ == "__main__":
    main()
