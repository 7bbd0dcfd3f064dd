"""Dashboards: `report_to` is checked before work, every stage logs to the trackers it names, and a resumed run
continues the same dashboard run (Trackio by name, W&B by id, TensorBoard in the same folder)."""

from __future__ import annotations

import json
import signal
import sys
import uuid
from pathlib import Path

import pytest

from helpers import python_m, run_cli
from instructgpt.infra.files import RUN_MARKER

FAULT_ENV = "INSTRUCTGPT_FAULT"
# A stage resumed after a crash is a new process with its own W&B service, not one that inherits this test
# process's service (which in-process W&B tests start), where the killed run would still hold its id.
OWN_WANDB_SERVICE = {"WANDB_SERVICE": None}


def trackio_runs(project: str) -> dict[str, list[dict]]:
    """Every run of a Trackio project (in this session's TRACKIO_DIR) with its logged rows."""
    from trackio.sqlite_storage import SQLiteStorage

    return {run: SQLiteStorage.get_logs(project, run) for run in SQLiteStorage.get_runs(project)}


def wandb_run_ids(output_dir: Path) -> set[str]:
    """The run ids of the offline W&B run folders (``offline-run-<time>-<id>``) under ``output_dir/wandb``."""
    return {p.name.rsplit("-", 1)[1] for p in (output_dir / "wandb").glob("offline-run-*")}


# ---- report_to is checked when the recipe is parsed --------------------------------------------------------------


def test_report_to_names_are_checked_for_the_stage_path():
    from instructgpt.infra.tracking import TrackerError, check_report_to

    assert check_report_to("none", trainer=False) == []
    assert check_report_to(None, trainer=True) == []
    assert check_report_to("trackio,tensorboard", trainer=False) == ["trackio", "tensorboard"]
    assert check_report_to(["wandb", "trackio", "wandb"], trainer=True) == ["wandb", "trackio"]
    assert {"wandb", "trackio", "tensorboard"} <= set(check_report_to("all", trainer=False))
    with pytest.raises(TrackerError, match="unknown tracker `wandbb`"):
        check_report_to("wandbb", trainer=False)
    # neptune is a Trainer integration only; aim an accelerate tracker only
    with pytest.raises(TrackerError, match="`neptune` is not supported by this stage, which logs through accelerate"):
        check_report_to("neptune", trainer=False)
    with pytest.raises(TrackerError, match="`aim` is not supported by this stage, which logs through transformers"):
        check_report_to("aim", trainer=True)


def test_a_tracker_that_is_not_installed_is_one_line_naming_the_package(tmp_path):
    from instructgpt.infra.tracking import ACCELERATE_TRACKERS, installed

    missing = next(
        n
        for n in ("swanlab", "dvclive", "clearml", "comet_ml", "aim", "mlflow")
        if not installed(n, ACCELERATE_TRACKERS)
    )
    result = run_cli(
        python_m(
            "instructgpt",
            "recipes/tiny/collect.yaml",
            "--output_dir",
            str(tmp_path / "c"),
            "--report_to",
            f"trackio,{missing}",
        )
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "recipes/tiny/collect.yaml" in lines[0] and f"`{missing}` is not installed" in lines[0]
    assert "pip install" in lines[0] and not (tmp_path / "c").exists()


def test_the_pipeline_checks_the_trackers_of_every_stage_before_training(tmp_path):
    result = run_cli(
        python_m("instructgpt", "recipes/tiny/pipeline.yaml", "--output_dir", str(tmp_path / "p"), "--report_to", "aim")
    )  # accelerate has it; the Trainer stages do not
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "`aim` is not supported by this stage" in result.stderr
    assert not list((tmp_path / "p").glob("*/model.safetensors"))


def test_flat_config_for_trackers_that_take_scalars():
    from instructgpt.infra.tracking import flat_config

    flat = flat_config({"a": 1, "b": {"c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a": 1, "b.c": "[1, 2]", "b.d": "None", "e": "x"}


# ---- stages that are not a Trainer: PPO, collect, eval -----------------------------------------------------------


def _ppo(out: Path, sft: Path, rm: Path, project: str, env: dict[str, str] | None = None):
    return run_cli(
        python_m(
            "instructgpt.stages.ppo.run",
            "recipes/tiny/ppo.yaml",
            "--model_name_or_path",
            str(sft),
            "--reward_model_path",
            str(rm),
            "--output_dir",
            str(out),
            "--report_to",
            "trackio,tensorboard,wandb",
            "--project",
            project,
            "--disable_tqdm",
            "true",
            "--total_episodes",
            "48",
            "--per_device_train_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "1",
            "--num_mini_batches",
            "1",
            "--num_ppo_epochs",
            "1",
            "--response_length",
            "10",
            "--save_steps",
            "1",
            "--logging_steps",
            "1",
            "--num_sample_generations",
            "2",
            "--eval_num_prompts",
            "0",
        ),
        env={**OWN_WANDB_SERVICE, **(env or {})},
    )


@pytest.fixture(scope="module")
def ppo_killed_and_resumed(sft_model, trained_rm, tmp_path_factory) -> tuple[Path, str, dict]:
    """A short PPO run on trackio, tensorboard and wandb, killed after update 4 and resumed from checkpoint-3."""
    project = f"test-ppo-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("tracked") / "ppo"
    killed = _ppo(out, sft_model, trained_rm[0], project, env={FAULT_ENV: "ppo_update:4"})
    assert killed.returncode == -signal.SIGKILL
    identity = json.loads((out / "trackers.json").read_text())
    assert json.loads((out / "checkpoint-3" / "trackers.json").read_text()) == identity
    result = _ppo(out, sft_model, trained_rm[0], project)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, project, identity


def test_ppo_logs_to_every_tracker_and_a_resumed_run_continues_the_same_run(ppo_killed_and_resumed):
    out, project, identity = ppo_killed_and_resumed
    assert json.loads((out / "trackers.json").read_text()) == identity  # the same run, not a new one

    runs = trackio_runs(project)
    assert list(runs) == [identity["run_name"]]  # one Trackio run across the kill and the resume
    # 48 episodes / 8 per update = 6 updates on one curve: the first logged before the kill, 4-6 after resuming
    # from checkpoint-3 (a kill can lose the last fraction of a second of points, not the run)
    steps = {row["step"] for row in runs[identity["run_name"]] if "objective/kl" in row}
    assert {1, 4, 5, 6} <= steps <= set(range(1, 7))
    assert wandb_run_ids(out) == {identity["wandb_id"]}  # two W&B sessions, one run id
    # TensorBoard: both sessions write to one folder, and its curve has every update once or more
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert {p.parent.name for p in (out / "runs").glob("*/events.out.tfevents.*")} == {identity["run_name"]}
    events = EventAccumulator(str(out / "runs" / identity["run_name"])).Reload()
    assert sorted({e.step for e in events.Scalars("objective/kl")}) == list(range(1, 7))


def test_collect_and_eval_log_their_results_to_trackio(sft_model, tmp_path):
    project = f"test-collect-{uuid.uuid4().hex[:8]}"
    result = run_cli(
        python_m(
            "instructgpt",
            "recipes/tiny/collect.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--output_dir",
            str(tmp_path / "collect"),
            "--max_prompts",
            "6",
            "--max_new_tokens",
            "8",
            "--report_to",
            "trackio",
            "--project",
            project,
            "--run_name",
            "my-collection",
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = json.loads((tmp_path / "collect" / RUN_MARKER).read_text())
    (row,) = [r for r in trackio_runs(project)["my-collection"] if "num_rankings" in r]
    assert row["num_rankings"] == marker["metrics"]["num_rankings"]

    result = run_cli(
        python_m(
            "instructgpt",
            "eval",
            "--models",
            f"sft={sft_model}",
            "--prompts",
            "data/tiny/eval_prompts.jsonl",
            "--max_prompts",
            "6",
            "--labeler",
            "simulated",
            "--output_dir",
            str(tmp_path / "eval"),
            "--report_to",
            "trackio",
            "--project",
            project,
            "--run_name",
            "my-eval",
            "--max_new_tokens",
            "8",
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    logged = {k: v for r in trackio_runs(project)["my-eval"] for k, v in r.items()}
    name = next(iter(results["metrics"]))
    key, value = next((k, v) for k, v in results["metrics"][name].items() if isinstance(v, float))
    assert logged[f"eval/{name}/{key}"] == pytest.approx(value)


# ---- Trainer stages: the run's identity survives a kill -----------------------------------------------------------


def test_sft_resumed_after_a_kill_continues_its_trackio_and_wandb_run(tmp_path):
    project = f"test-sft-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "sft"
    args = python_m(
        "instructgpt.stages.sft",
        "recipes/tiny/sft.yaml",
        "--output_dir",
        str(out),
        "--report_to",
        "trackio,wandb",
        "--project",
        project,
        "--max_train_samples",
        "80",
        "--per_device_train_batch_size",
        "8",
        "--num_train_epochs",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--logging_steps",
        "1",
    )
    assert run_cli(args, env={FAULT_ENV: "train_step:7", **OWN_WANDB_SERVICE}).returncode == -signal.SIGKILL
    identity = json.loads((out / "trackers.json").read_text())
    assert json.loads((out / "checkpoint-4" / "trackers.json").read_text()) == identity
    result = run_cli(args, env=OWN_WANDB_SERVICE)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = trackio_runs(project)
    assert list(runs) == [identity["run_name"]]
    # 80 samples / 8 = ten steps on one curve: the first logged before the kill, 5-10 after resuming from
    # checkpoint-4 (a kill can lose the last fraction of a second of points, not the run)
    steps = {row.get("train/global_step") for row in runs[identity["run_name"]]} - {None}
    assert {1, 5, 6, 7, 8, 9, 10} <= steps <= set(range(1, 11))
    assert wandb_run_ids(out) == {identity["wandb_id"]}


# ---- the dashboard in a real browser -----------------------------------------------------------------------------


def _no_browser() -> str | None:
    import importlib.util
    import shutil

    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[label]'; scripts/test.sh does)"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        return "no headless browser: install Debian's chromium and chromium-driver (scripts/test.sh does, as root)"
    return None


@pytest.mark.browser
@pytest.mark.skipif(_no_browser() is not None, reason=str(_no_browser()))
def test_the_trackio_dashboard_shows_the_ppo_curves_in_chromium(ppo_killed_and_resumed, tmp_path):
    _, project, _ = ppo_killed_and_resumed
    script = Path(__file__).resolve().parents[2] / "scripts" / "dashboard_screenshot.py"
    shot = tmp_path / "dashboard.png"
    shown = run_cli(
        [
            sys.executable,
            str(script),
            "--project",
            project,
            "--out",
            str(shot),
            "--expect",
            "objective",
            "kl",
            "scores",
            "loss",
            "policy_avg",
        ]
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # a curve the run never logged is not "shown": the check can fail
    missing = run_cli(
        [
            sys.executable,
            str(script),
            "--project",
            project,
            "--out",
            str(tmp_path / "no.png"),
            "--expect",
            "objective",
            "no_such_metric",
            "--timeout",
            "10",
        ]
    )
    assert missing.returncode == 1 and "never showed no_such_metric" in missing.stderr
