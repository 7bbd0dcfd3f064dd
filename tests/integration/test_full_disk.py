"""A full disk, for real: a small tmpfs (mounted as root, as CI runs) filled up, then freed.

Each write point ends in one line naming the file and "no space left", keeps what was there before whole, leaves
no temporary or partial file, and the same command or call succeeds once the space is back.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from helpers import one_line_error, python_m, run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, atomic_write_json


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs at ``tmp_path/disk``; ``fill(free)`` leaves about ``free`` bytes, ``free_all()`` undoes it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    filler = mount / "filler"

    class Disk:
        path = mount

        @staticmethod
        def fill(free: int) -> None:
            stats = os.statvfs(mount)
            available = stats.f_bavail * stats.f_frsize
            with open(filler, "ab") as handle:
                handle.write(b"\0" * max(0, available - free))

        @staticmethod
        def free_all() -> None:
            filler.unlink(missing_ok=True)

    try:
        yield Disk
    finally:
        subprocess.run(["umount", "-l", str(mount)])


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
    command = python_m(
        "instructgpt.stages.sft",
        "recipes/tiny/sft.yaml",
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
    )
    small_disk.fill(2 * 1024 * 1024)  # the 8 MB weights do not fit
    line = one_line_error(run_cli(command))
    assert "no space left on the device" in line or "the disk is probably full" in line
    assert not (out / RUN_MARKER).exists()  # nothing broken is marked finished
    small_disk.free_all()
    result = run_cli(command)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / RUN_MARKER).read_text())["stage"] == "sft"
