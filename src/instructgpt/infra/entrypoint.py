"""What every command-line entry point shares: one-line errors with exit code 2, never a traceback; and the
``main()`` of a stage, which parses its recipe and runs it."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.library_errors import explain
from instructgpt.infra.parser import RecipeParser
from instructgpt.infra.processes import join_cpu_processes


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that ``finally`` blocks and temporary-file cleanups run."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _end_progress_bars() -> None:
    """Close the progress bars still drawn, so that the error starts a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run_cli(fn: Callable[[], None]) -> None:
    """Run an entry point; bad input ends with its one-line message and exit code 2, not a traceback.

    A foreseeable failure of a library (:func:`instructgpt.infra.library_errors.explain`) ends the same way; an
    unforeseen one keeps its traceback. Ctrl-C (SIGINT) and SIGTERM end with one line that says how to resume, and
    exit codes 130 and 143 (128 + the signal, as a shell reports them). They are raised as exceptions where the
    program is, so every atomic write in progress removes its temporary file on the way out.
    """
    join_cpu_processes()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
        # Python installs its Ctrl-C handler only when SIGINT is not ignored at start; a parent that ignores it (a
        # shell's background job, a test runner) would otherwise leave SIGINT without effect on a training run
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        fn()
    except InstructGPTError as err:
        _end_progress_bars()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a foreseeable library failure no wrapped call caught (the disk filling up mid-write)
        text = explain(err)
        if text is None:
            raise  # unforeseen: a bug, with its traceback
        _end_progress_bars()
        print(f"error: {text}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Terminated) as err:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(err, Terminated) else ("interrupted (Ctrl-C)", 130)
        print(
            f"{what}: finished outputs and saved checkpoints are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        sys.exit(code)


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

    def _main() -> None:
        parser = RecipeParser(stage, arguments(), prog=prog, description=description, recipe_optional=recipe_optional)
        run(parser.parse(argv))

    run_cli(_main)
