"""Weights & Biases: the recipe as the run config, offline by itself when nobody is logged in, never a prompt.

transformers' ``WandbCallback`` logs the training metrics; it reuses the run started here (it only calls
``wandb.init`` when no run is active), so the run's config is the recipe exactly as the user wrote it, plus the
resolved TrainingArguments the callback adds.
"""

from __future__ import annotations

from instructgpt.infra.log import get_logger

import netrc
import os
from pathlib import Path
from typing import Any

logger = get_logger(__name__)

GROUP_ENV = "WANDB_RUN_GROUP"  # the pipeline sets it so that one W&B group ties a run's stages together


def wants_wandb(report_to: Any) -> bool:
    if report_to is None:
        return False
    if isinstance(report_to, str):
        return report_to in ("wandb", "all")
    return "wandb" in report_to or "all" in report_to


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc (where ``wandb login`` stores it); no network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def start_wandb(
    report_to: Any,
    project: str,
    run_name: str | None,
    stage: str,
    config: dict[str, Any],
    output_dir: str | Path,
) -> Any | None:
    """Start (on the main process only) the W&B run for one stage, or return None when W&B is not asked for.

    Without a login the run goes offline instead of prompting, and the files stay under ``<output_dir>/wandb``.
    """
    if not wants_wandb(report_to):
        return None
    from instructgpt.infra.processes import process_state

    if not process_state().is_main_process:
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ.get("WANDB_MODE") is None and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
        logger.info("W&B: no login found, logging offline (run `wandb login` to log online)")
    os.environ.setdefault("WANDB_PROJECT", project)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        name=run_name,
        group=os.environ.get(GROUP_ENV),
        job_type=stage,
        config=config,
        dir=str(output_dir),
    )
    return run


def finish_wandb(run: Any | None) -> None:
    """Close the run and say where it is; offline runs get the exact ``wandb sync`` command."""
    if run is None:
        return
    import wandb

    offline = run.settings.mode == "offline" or os.environ.get("WANDB_MODE") == "offline"
    run_dir = Path(run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run folder
    wandb.finish()
    if offline:
        logger.info(f"W&B run saved offline in {run_dir}; upload it with: wandb sync {run_dir}")
    else:
        logger.info(f"W&B run: {run.url}")
