"""One stage of the plan: its status, whether its inputs changed since, running it, and the cleanup after it."""

from __future__ import annotations

import gc
import resource
import sys
import time
from pathlib import Path

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, atomic_write_text, is_complete
from instructgpt.stages import load_stage
from instructgpt.stages.pipeline.settings import PipelineError, Stage


class Stopwatch:
    """Wall-clock and CPU seconds of a stage. CPU time (this process, all threads) tells how long a stage would take
    on a quiet machine when the wall clock was inflated by other jobs sharing the cores."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def read(self) -> dict[str, float]:
        return {"seconds": round(time.perf_counter() - self.wall, 1), "cpu_seconds": round(self._cpu() - self.cpu, 1)}


def marker_time(output_dir: Path) -> float | None:
    marker = Path(output_dir) / RUN_MARKER
    return marker.stat().st_mtime if marker.is_file() else None


def stale_inputs(stage: Stage) -> list[Path]:
    """Inputs that finished after this (finished) stage: it was built from an older version of them."""
    done = marker_time(stage.output_dir)
    if done is None:
        return []
    return [p for p in stage.inputs if (marker_time(p) or 0.0) > done]


def status_of(output_dir: Path) -> str:
    if is_complete(output_dir):
        return "done"
    if output_dir.is_dir() and any(output_dir.iterdir()):
        return "interrupted"
    return "to do"


def reset_accelerate_state() -> None:
    """Let the next stage build its own ``Accelerator``.

    accelerate keeps the mixed-precision and gradient-accumulation settings of the first ``Accelerator`` in
    process-wide singletons (``AcceleratorState``, ``GradientState``); the next stage in the same process could
    otherwise inherit them or be refused for asking different ones. ``PartialState`` (process group, device) stays:
    it is the same for every stage, and tearing down a process group under ``accelerate launch`` would break it.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def close_wandb_run() -> None:
    """A stage that failed may leave its W&B or Trackio run open; close it so the next one starts cleanly."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)
    trackio = sys.modules.get("trackio")
    if trackio is not None and trackio.context_vars.current_run.get() is not None:
        trackio.finish()


def run_stage(stage: Stage) -> None:
    """Run one stage in this process from its parsed settings; its error names the stage."""
    try:
        load_stage(stage.stage).run(stage.args)
    except PipelineError:
        raise
    except InstructGPTError as err:
        raise PipelineError(
            f"stage `{stage.label}` failed: {err}. After fixing it, rerun the same command: finished stages are skipped"
        ) from None


def merge_rankings(parts: list[Path], target: Path) -> None:
    """Every round's comparisons in one file for the reward model (InstructGPT retrains on all data collected)."""
    text = "".join(p.read_text(encoding="utf-8") for p in parts)
    atomic_write_text(target, text)
