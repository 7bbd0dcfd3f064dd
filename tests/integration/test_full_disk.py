"""A full disk, for real: a small tmpfs (mounted as root, as CI runs) filled up, then freed.

Each write point ends in one line naming the file and "no space left", keeps what was there before whole, leaves
no temporary or partial file, and the same command or call succeeds once the space is back. A run's disk fills up
at an exact moment through its fault points (``INSTRUCTGPT_FAULT=<point>[:<n>]`` with
``INSTRUCTGPT_FAULT_FILL=<file>``: :func:`instructgpt.infra.guards.fault_point` fills the tmpfs there and the run
goes on to its next write). The points, per stage:

- every Trainer stage (pretrain, sft, rm, dpo, rloo share :class:`~instructgpt.infra.trainer_stage.TrainerStage`;
  SFT runs it here): a checkpoint, the final save, the run marker;
- PPO (its own loop): the metrics log appended each update, a checkpoint, the final save;
- collection: the rows appended to its part file;
- labeling: the rankings file (in-process: the store);
- every atomic write (markers, eval results, cards): :func:`~instructgpt.infra.files.atomic_write_text`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import one_line_error, python_m, quick_ppo, quick_sft, run_cli, temporary_files, tmpfs
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, atomic_write_json, is_complete, last_checkpoint, read_jsonl
from instructgpt.infra.guards import FAULT_ENV, FILL_ENV

NO_SPACE = "no space left on the device"


class Disk:
    """A tmpfs at ``path``: ``fill(free)`` leaves about ``free`` bytes, ``fill_at(point)`` is the environment that
    fills it at a run's fault point, ``free_all()`` undoes either."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self, free: int) -> None:
        stats = os.statvfs(self.path)
        with open(self.filler, "ab") as handle:
            handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - free))

    def fill_at(self, point: str) -> dict[str, str]:
        return {FAULT_ENV: point, FILL_ENV: str(self.filler)}

    def free_all(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 MiB tmpfs (room for a tiny PPO run's four checkpoints with their optimizer states), unmounted after."""
    with tmpfs(tmp_path / "disk", "size=512m") as mount:
        yield Disk(mount)


def test_an_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(small_disk):
    path = small_disk.path / "out" / RUN_MARKER
    atomic_write_json(path, {"stage": "sft", "metrics": {"loss": 1.0}})
    small_disk.fill(0)
    with pytest.raises(InstructGPTError, match=rf"{path}: no space left on the device"):
        atomic_write_json(path, {"stage": "sft", "metrics": {"loss": 0.5, "pad": "x" * 100_000}})
    assert json.loads(path.read_text())["metrics"] == {"loss": 1.0}
    assert not list(path.parent.glob(".*.tmp"))
    small_disk.free_all()
    atomic_write_json(path, {"stage": "sft", "metrics": {"loss": 0.5}})
    assert json.loads(path.read_text())["metrics"] == {"loss": 0.5}


def test_a_ranking_that_does_not_fit_is_not_saved_and_leaves_no_partial_line(small_disk):
    from instructgpt.labeling.store import RANKINGS_FILE, Item, LabelStore

    items = [Item(index=i, prompt=f"p{i} " + "x" * 4000, responses=["a" * 4000, "b" * 4000]) for i in range(3)]
    store = LabelStore(small_disk.path / "label", items)
    assert store.current("ann") == 0
    store.submit("ann", [[0], [1]])
    before = (small_disk.path / "label" / RANKINGS_FILE).read_bytes()
    assert store.current("ann") == 1
    small_disk.fill(4096)  # room for less than the row: the write runs out part of the way through
    with pytest.raises(InstructGPTError, match=rf"{RANKINGS_FILE}: no space left on the device"):
        store.submit("ann", [[1], [0]])
    assert (small_disk.path / "label" / RANKINGS_FILE).read_bytes() == before  # cut back: no partial line
    assert store.current("ann") == 1  # the item stays on the labeler's screen
    small_disk.free_all()
    store.submit("ann", [[1], [0]])
    rows = [json.loads(line) for line in (small_disk.path / "label" / RANKINGS_FILE).read_text().splitlines()]
    assert [r["item"] for r in rows] == [0, 1]


def test_sft_on_a_full_disk_ends_in_one_line_and_finishes_when_space_is_back(small_disk):
    out = small_disk.path / "sft"
    command = quick_sft(out, "--max_steps", "2", "--save_strategy", "no")
    small_disk.fill(2 * 1024 * 1024)  # the 8 MB weights do not fit
    line = one_line_error(run_cli(command))
    assert "no space left on the device" in line or "the disk is probably full" in line
    assert not (out / RUN_MARKER).exists()  # nothing broken is marked finished
    small_disk.free_all()
    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / RUN_MARKER).read_text())["stage"] == "sft"


def test_a_trainer_checkpoint_and_the_marker_on_a_full_disk_end_in_one_line_and_resume(small_disk):
    """The lifecycle every Trainer stage shares: the disk fills up as checkpoint-2 is saved, then as the marker is
    written; each time one line, nothing half-done taken for whole, and the same command finishes after."""
    out = small_disk.path / "sft"
    command = quick_sft(out, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1")

    line = one_line_error(run_cli(command, env=small_disk.fill_at("train_step:2")))  # full as checkpoint-2 is saved
    assert line.startswith(f"error: sft training into {out} (with its checkpoints): ") and NO_SPACE in line, line
    assert last_checkpoint(out).name == "checkpoint-1" and not is_complete(out)
    small_disk.free_all()

    line = one_line_error(run_cli(command, env=small_disk.fill_at("before_marker")))  # full as the marker is written
    assert line.startswith(f"error: {out / RUN_MARKER}: {NO_SPACE}"), line
    assert not is_complete(out) and not temporary_files(out)
    small_disk.free_all()

    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "verified and marked finished" in result.stdout  # the final save was whole: not trained again
    assert last_checkpoint(out).name == "checkpoint-3"


def test_ppo_on_a_full_disk_at_its_log_a_checkpoint_and_the_final_save_resumes_to_the_same_end(
    small_disk, sft_model, tiny_rm
):
    out = small_disk.path / "ppo"
    command = quick_ppo(out, sft_model, tiny_rm)
    metrics = out / "metrics.jsonl"

    # the first metrics line does not fit (a new file needs a page; a line appended to a file whose last page has
    # room would fit, as on any disk: the ranking test above cuts back a line that
    # runs out part of the way through, in the same append_jsonl)
    line = one_line_error(run_cli(command, env=small_disk.fill_at("ppo_update:1")))
    assert line.startswith(f"error: {metrics}: {NO_SPACE}"), line
    assert metrics.read_bytes() == b"" and last_checkpoint(out) is None
    small_disk.free_all()

    # checkpoint-2 does not fit: checkpoint-1 stays the last, and no temporary folder is left
    line = one_line_error(run_cli(command, env=small_disk.fill_at("mid_checkpoint:2")))
    assert line.startswith(f"error: PPO checkpoint {out / 'checkpoint-2'}: ") and NO_SPACE in line, line
    assert last_checkpoint(out).name == "checkpoint-1" and not temporary_files(out)
    assert not list(out.glob(".checkpoint-*"))
    small_disk.free_all()

    # the final policy does not fit
    line = one_line_error(run_cli(command, env=small_disk.fill_at("final_save")))
    assert line.startswith(f"error: ppo saving its final policy to {out}: ") and NO_SPACE in line, line
    assert not is_complete(out)
    small_disk.free_all()

    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-2000:]
    marker = json.loads((out / RUN_MARKER).read_text())["metrics"]
    assert (marker["global_step"], marker["episode"]) == (4, 64)
    assert [row["step"] for row in read_jsonl(metrics) if "objective/kl" in row] == [1, 2, 3, 4]  # each once
    assert not temporary_files(out)


def test_collection_on_a_full_disk_keeps_whole_rows_and_finishes(small_disk, sft_model):
    out = small_disk.path / "collect"
    command = python_m(
        "instructgpt",
        "recipes/tiny/collect.yaml",
        "--output_dir",
        str(out),
        "--model_name_or_path",
        str(sft_model),
        "--report_to",
        "none",
        "--max_prompts",
        "12",
        "--max_new_tokens",
        "12",
        "--batch_size",
        "4",
    )
    part = out / "rankings.part-0.jsonl"
    # full after row 3: the first row after it that needs a new page of the file does not fit (those before fit in
    # the room left on its last page, as on any disk)
    line = one_line_error(run_cli(command, env=small_disk.fill_at("collect_row:3")))
    assert line.startswith(f"error: {part}: {NO_SPACE}"), line
    kept = [row["prompt_index"] for row in read_jsonl(part)]
    assert kept == list(range(len(kept))) and 3 <= len(kept) < 12 and part.read_bytes().endswith(b"\n")
    small_disk.free_all()
    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming: {len(kept)} of 12 prompts" in result.stdout
    assert is_complete(out) and not part.exists()  # merged into rankings.jsonl
    indices = [row["prompt_index"] for row in read_jsonl(out / "rankings.jsonl")]
    assert indices == sorted(set(indices)) and len(indices) >= 10


def test_an_output_dir_on_a_read_only_disk_is_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        line = one_line_error(run_cli(quick_sft(mount / "sft", "--max_steps", "1")))
    assert "the file system is read-only" in line and str(mount / "sft") in line, line
