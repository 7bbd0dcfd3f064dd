"""What every command-line entry point shares: one-line errors with exit code 2, never a traceback; and the
``main()`` of a stage, which parses its recipe and runs it."""

from __future__ import annotations

import sys
from typing import Any, Callable

from instructgpt.infra.errors import InstructGPTError


def run_cli(fn: Callable[[], None]) -> None:
    """Run an entry point; bad input ends with its one-line message and exit code 2, not a traceback."""
    from instructgpt.infra.processes import join_cpu_processes

    join_cpu_processes()
    try:
        fn()
    except InstructGPTError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def stage_main(
    stage: str,
    arguments: Callable[[], tuple[type, ...]],
    run: Callable[[Any], Any],
    argv: list[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    recipe_optional: bool = False,
) -> None:
    """A stage's whole ``main()``: parse ``RECIPE.yaml``/``--config``/``--help``/``--version`` and overrides into the
    stage's dataclasses, then ``run`` them."""
    from instructgpt.infra.parser import RecipeParser

    def _main() -> None:
        parser = RecipeParser(stage, arguments(), prog=prog, description=description, recipe_optional=recipe_optional)
        run(parser.parse(argv))

    run_cli(_main)
