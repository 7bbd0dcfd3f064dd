"""Messages: Python's ``logging``, printed by the main process only (unless a record asks for every rank).

Every module logs through ``get_logger(__name__)``. Under ``accelerate launch`` each process has a ``RANK``; only
rank 0's records are printed, so N processes do not print N copies of each line. A record logged with
``extra={"all_ranks": True}`` is printed by every process (e.g. "process 1/2: 40 optimizer steps"). Set
``INSTRUCTGPT_LOG_LEVEL=WARNING`` to quiet the progress messages.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "instructgpt"


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (a test's capture, a notebook's cell), not the one at import time."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stdout
        pass


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "all_ranks", False) or int(os.environ.get("RANK", "0")) == 0


def _configure() -> None:
    root = logging.getLogger(ROOT)
    if any(isinstance(h, _CurrentStdout) for h in root.handlers):
        return
    handler = _CurrentStdout()
    handler.setFormatter(logging.Formatter("[instructgpt] %(message)s"))
    handler.addFilter(_MainProcessOnly())
    root.addHandler(handler)
    root.setLevel(os.environ.get("INSTRUCTGPT_LOG_LEVEL", "INFO").upper())
    root.propagate = False  # transformers or a user's basicConfig must not print each line twice


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (under ``instructgpt``), with the package's handler in place."""
    _configure()
    if name != ROOT and not name.startswith(ROOT + "."):
        # a stage run as `python -m instructgpt.stages.rm` is named `__main__`: still one of ours, printed as one
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)
