"""Dashboards: every tracker accelerate and transformers know, in every stage, one run per training even across resumes.

Two paths lead to the same dashboards:

- **Trainer stages** (pretrain, SFT, RM) hand ``report_to`` to transformers' ``Trainer``, whose integrations log
  the training curves (``WandbCallback``, ``TrackioCallback``, ``TensorBoardCallback``, ...).
- **The other stages** (PPO, collect, eval) log through accelerate's trackers (:class:`StageTracker`), which cover
  wandb, trackio, tensorboard, mlflow, comet_ml, aim, clearml, dvclive and swanlab.

``report_to`` is checked before any work: a name neither library knows, a name the stage's path does not support,
or a tracker whose package is not installed is a one-line error, never the silent drop that both libraries do
by themselves (they log a warning and carry on without the dashboard).

**One run per training.** The run's identity (its name, the W&B run id, the MLflow run id) is chosen when the
output directory starts and written to ``trackers.json`` in it and in every checkpoint. A resumed stage reads it
back and continues the same run: W&B with ``id`` and ``resume="allow"``, Trackio by run name with
``resume="allow"``, MLflow by ``run_id``, TensorBoard by writing to the same log directory.

**Trackio is the offline default** (the tiny recipes use it): local-first, no account, the curves open in a
browser with ``trackio show --project <project>``. W&B without a login logs offline instead of prompting.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import time
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import atomic_write_json
from instructgpt.infra.log import get_logger
from instructgpt.infra.processes import process_state

logger = get_logger(__name__)

# stages that log through transformers' Trainer; every other stage logs through accelerate's trackers
TRAINER_STAGES = ("pretrain", "sft", "rm", "dpo", "rloo", "grpo")
GROUP_ENV = "WANDB_RUN_GROUP"  # the pipeline sets it so that one group ties a run's stages together
IDENTITY_FILE = "trackers.json"

# trackers accelerate's GeneralTracker classes cover (accelerate.tracking.LOGGER_TYPE_TO_CLASS), with the module
# each one imports; the non-Trainer stages log through these
ACCELERATE_TRACKERS = {
    "wandb": "wandb",
    "trackio": "trackio",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}
# transformers' Trainer integrations (transformers.integrations.INTEGRATION_TO_CALLBACK) and their modules
TRAINER_TRACKERS = {
    "wandb": "wandb",
    "trackio": "trackio",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "azure_ml": "azureml",
    "neptune": "neptune",
    "codecarbon": "codecarbon",
    "dagshub": "dagshub",
    "flyte": "flytekit",
    "kubeflow": "kubeflow",
}
# pip packages whose import name differs
PIP_NAME = {
    "comet_ml": "comet-ml",
    "azureml": "azureml-core",
    "aim": "aim",
    "flytekit": "flytekitplugins-deck-standard",
}
# tensorboard logs through torch's SummaryWriter, which needs the `tensorboard` package (or tensorboardX)
_TENSORBOARD_MODULES = ("tensorboard", "tensorboardX")


class TrackerError(InstructGPTError, ValueError):
    """``report_to`` names a tracker that cannot log this stage (unknown, unsupported here, or not installed)."""


def tracker_names(report_to: Any) -> list[str]:
    """``report_to`` as a list of names: None, ``"none"`` and ``[]`` are no tracker; ``"a,b"`` is two."""
    if report_to is None:
        return []
    items = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    return [] if names in (["none"], []) else [n for n in names if n != "none"]


def installed(name: str, table: dict[str, str]) -> bool:
    modules = _TENSORBOARD_MODULES if name == "tensorboard" else (table[name],)
    return any(importlib.util.find_spec(m) is not None for m in modules)


def check_report_to(report_to: Any, *, trainer: bool, where: str = "report_to") -> list[str]:
    """The trackers ``report_to`` asks for, checked; raise :class:`TrackerError` naming the problem otherwise.

    ``trainer`` says which path logs the stage: transformers' Trainer integrations (True) or accelerate's trackers
    (False). ``all`` means every supported tracker that is installed, as in both libraries.
    """
    table = TRAINER_TRACKERS if trainer else ACCELERATE_TRACKERS
    path = "transformers' Trainer" if trainer else "accelerate's trackers"
    names = tracker_names(report_to)
    if "all" in names:
        return [n for n in table if installed(n, table)]
    for name in names:
        if name not in table:
            known = sorted(set(ACCELERATE_TRACKERS) | set(TRAINER_TRACKERS))
            if name in known:
                raise TrackerError(
                    f"{where}: `{name}` is not supported by this stage, which logs through {path}; "
                    f"choose from {', '.join(table)}"
                )
            raise TrackerError(f"{where}: unknown tracker `{name}`; choose from {', '.join(known)} (or none, all)")
        if not installed(name, table):
            module = table[name]
            raise TrackerError(
                f"{where}: `{name}` is not installed; install it with "
                f"`pip install {PIP_NAME.get(module, module)}`, or choose another tracker"
            )
    return list(dict.fromkeys(names))


# ---- the run's identity ------------------------------------------------------------------------------------------


def run_identity(
    output_dir: str | Path,
    stage: str,
    run_name: str | None,
    resume_from: str | Path | None = None,
    resuming: bool = False,
) -> dict[str, Any]:
    """Who this run is on the dashboards: stored ids when it resumes, a fresh name (``<stage>-<time>``) otherwise.

    A resumed stage reads ``trackers.json`` from the checkpoint it resumes from (else from the output directory);
    ``resuming`` covers stages that resume from partial files rather than checkpoints (collect, eval).
    """
    for folder in (resume_from, output_dir if (resume_from or resuming) else None):
        if folder is not None and (Path(folder) / IDENTITY_FILE).is_file():
            try:
                identity = json.loads((Path(folder) / IDENTITY_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue  # an unreadable file costs the curve's continuity, not the run
            if isinstance(identity, dict) and identity.get("run_name"):
                identity["resumed"] = True
                return identity
    return {"run_name": run_name or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}", "resumed": False}


def save_identity(folder: str | Path, identity: dict[str, Any]) -> None:
    """Write ``trackers.json`` (atomically) into ``folder``: the output directory or a checkpoint."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(folder) / IDENTITY_FILE, {k: v for k, v in identity.items() if k != "resumed"})


def identity_callback(identity: dict[str, Any]) -> Any:
    """A Trainer callback that stores the run's identity in each checkpoint it saves (main process only)."""
    from transformers import TrainerCallback

    class StoreRunIdentity(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if checkpoint.is_dir():
                    save_identity(checkpoint, identity)

    return StoreRunIdentity()


# ---- W&B ---------------------------------------------------------------------------------------------------------


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc (where ``wandb login`` stores it); no network call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def _prepare_wandb(project: str) -> None:
    """Offline instead of a login prompt when nobody is logged in; quiet; the recipe's project."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ.get("WANDB_MODE") is None and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
        logger.info("W&B: no login found, logging offline (run `wandb login` to log online)")
    os.environ.setdefault("WANDB_PROJECT", project)


def _while_wandb_id_in_use(start: Any, wait_s: float = 90.0) -> Any:
    """Call ``start`` (which opens a W&B run with a stored id), retrying while W&B says the id is in use.

    A run resumed right after a crash finds the dead process's ``wandb-core`` service still holding the run id for
    a few seconds, until it notices that its parent is gone; waiting for it is what resuming the same run takes.
    """
    deadline = time.time() + wait_s
    while True:
        try:
            return start()
        except Exception as err:  # wandb's ServerResponseError; its module path changes between releases
            if "in use" not in str(err) or time.time() > deadline:
                raise
            logger.info("W&B: the interrupted run's service still holds its id; waiting for it to exit")
            time.sleep(3)


def _wandb_id(identity: dict[str, Any]) -> str:
    if not identity.get("wandb_id"):
        import secrets

        identity["wandb_id"] = secrets.token_hex(4)  # W&B ids are short lowercase alphanumerics
    return identity["wandb_id"]


def start_wandb(
    report_to: Any,
    project: str,
    identity: dict[str, Any],
    stage: str,
    config: dict[str, Any],
    output_dir: str | Path,
) -> Any | None:
    """For the Trainer stages: start (on the main process only) the W&B run that transformers' ``WandbCallback``
    then reuses, so that its config is the recipe exactly as written. None when W&B is not asked for.

    The run id comes from ``identity``: a resumed stage continues its run. Without a login the run goes offline
    and its files stay under ``<output_dir>/wandb``.
    """
    if "wandb" not in check_report_to(report_to, trainer=True):
        return None
    if not process_state().is_main_process:
        return None
    import wandb

    _prepare_wandb(project)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    return _while_wandb_id_in_use(
        lambda: wandb.init(
            project=project,
            name=identity["run_name"],
            id=_wandb_id(identity),
            resume="allow",
            group=os.environ.get(GROUP_ENV),
            job_type=stage,
            config=config,
            dir=str(output_dir),
        )
    )


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


def trainer_tracking(
    training_args: Any, stage: str, config: dict[str, Any], resume_from: str | Path | None
) -> tuple[Any | None, list[Any]]:
    """For the Trainer stages: the run's identity applied to ``training_args`` (so that Trackio's callback, which
    resumes by run name, continues the run), the W&B run started, and the callback that stores the identity in
    each checkpoint. Returns the W&B run (or None) and the callbacks to give the Trainer."""
    names = check_report_to(training_args.report_to, trainer=True)
    if not names:
        return None, []
    output_dir = training_args.output_dir
    identity = run_identity(output_dir, stage, training_args.run_name, resume_from)
    training_args.run_name = identity["run_name"]
    run = start_wandb(names, training_args.project, identity, stage, config, output_dir)
    if process_state().is_main_process:
        save_identity(output_dir, identity)
        resumed = " (resumed)" if identity.get("resumed") else ""
        logger.info(f"logging {stage} to {', '.join(names)} as run `{identity['run_name']}`{resumed}")
    return run, [identity_callback(identity)]


# ---- accelerate's trackers, for the stages that are not a Trainer ------------------------------------------------


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``a.b: value`` with scalar values: what TensorBoard's hparams and MLflow's params take."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value if value is not None else "None"
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def _make_tracker(name: str, project: str, identity: dict[str, Any], stage: str, output_dir: Path) -> Any:
    """One accelerate tracker, pointed at this run (resumed runs at their stored ids)."""
    from accelerate import tracking

    run_name, group = identity["run_name"], os.environ.get(GROUP_ENV)
    if name == "wandb":
        _prepare_wandb(project)
        return tracking.WandBTracker(
            project,
            name=run_name,
            id=_wandb_id(identity),
            resume="allow",
            group=group,
            job_type=stage,
            dir=str(output_dir),
        )
    if name == "trackio":
        return tracking.TrackioTracker(
            project, name=run_name, group=group, resume="allow" if identity.get("resumed") else "never"
        )
    if name == "tensorboard":
        return tracking.TensorBoardTracker(run_name, output_dir / "runs")  # the same folder when resumed
    if name == "mlflow":
        return tracking.MLflowTracker(
            experiment_name=project,
            logging_dir=str(output_dir / "mlruns"),
            run_id=identity.get("mlflow_run_id"),
            run_name=run_name,
        )
    if name == "aim":
        return tracking.AimTracker(run_name, logging_dir=str(output_dir))
    if name == "dvclive":
        return tracking.DVCLiveTracker(run_name, dir=str(output_dir / "dvclive"))
    if name == "swanlab":
        return tracking.SwanLabTracker(project, experiment_name=run_name)
    if name == "clearml":
        return tracking.ClearMLTracker(project, task_name=run_name)
    return tracking.LOGGER_TYPE_TO_CLASS[name](project)  # comet_ml: the project, the run named by the tracker


class StageTracker:
    """One stage's run on every dashboard ``report_to`` names, through accelerate's trackers (main process only).

    ``log`` takes numbers; ``log_table`` takes rows of completions (W&B and Trackio tables; the same rows are on
    disk as JSONL either way); ``summary`` records final values; ``finish`` closes every run.
    """

    def __init__(self, trackers: list[Any], identity: dict[str, Any]):
        self.trackers = trackers
        self.identity = identity

    @classmethod
    def start(
        cls,
        report_to: Any,
        *,
        project: str,
        stage: str,
        config: dict[str, Any],
        output_dir: str | Path,
        identity: dict[str, Any],
    ) -> StageTracker:
        """Start the runs on the main process (other processes get an empty tracker) and store their identity."""
        names = check_report_to(report_to, trainer=False)
        if not names or not process_state().is_main_process:
            return cls([], identity)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        trackers = []
        for name in names:
            tracker = _make_tracker(name, project, identity, stage, output_dir)
            _while_wandb_id_in_use(tracker.start) if name == "wandb" else tracker.start()
            tracker.store_init_configuration(config if name in ("wandb", "trackio") else flat_config(config))
            if name == "mlflow":
                identity["mlflow_run_id"] = tracker.active_run.info.run_id
            trackers.append(tracker)
        save_identity(output_dir, identity)
        resumed = " (resumed)" if identity.get("resumed") else ""
        logger.info(f"logging {stage} to {', '.join(names)} as run `{identity['run_name']}`{resumed}")
        return cls(trackers, identity)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def log_table(self, key: str, rows: list[dict[str, Any]], step: int | None = None) -> None:
        """Rows of text (completions) as a table where the dashboard has one (W&B, Trackio)."""
        if not rows:
            return
        columns = list(rows[0])
        data = [[row.get(c) for c in columns] for row in rows]
        for tracker in self.trackers:
            if tracker.name == "wandb":
                import wandb

                tracker.log({key: wandb.Table(columns=columns, data=data)}, step=step)
            elif tracker.name == "trackio":
                import trackio

                tracker.log({key: trackio.Table(columns=columns, data=data)}, step=step)

    def log_images(self, images: dict[str, str | Path], step: int | None = None) -> None:
        """Saved plots (PNG paths) on the dashboards that show images (W&B, Trackio, TensorBoard)."""
        if not images:
            return
        for tracker in self.trackers:
            if tracker.name == "wandb":
                import wandb

                tracker.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)
            elif tracker.name == "trackio":
                import trackio

                tracker.log({k: trackio.Image(str(v)) for k, v in images.items()}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            if tracker.name == "wandb":
                tracker.tracker.summary.update(numbers)

    def save_identity(self, folder: str | Path) -> None:
        """Store the run's identity in a checkpoint, so that resuming from it continues this run, and write out
        what TensorBoard buffers, so that the curve up to the checkpoint survives a crash after it. (Trackio and
        W&B send their points every fraction of a second; a kill can lose the last of them, not the run.)"""
        if self.trackers:
            save_identity(folder, self.identity)
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.flush()

    def finish(self) -> None:
        for tracker in self.trackers:
            if tracker.name == "wandb":
                finish_wandb(tracker.tracker)
            else:
                tracker.finish()
        if any(t.name == "trackio" for t in self.trackers):
            project = next(t.run_name for t in self.trackers if t.name == "trackio")
            logger.info(f"Trackio dashboard: trackio show --project {project}")
        self.trackers = []
