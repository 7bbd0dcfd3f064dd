"""Two machines x one process on 127.0.0.1: two `accelerate launch` commands, one per node, as a user runs them.

Each node gets its own output directory, as two machines without a shared filesystem have their own disks at the
same path. With ``save_on_each_node: true`` every node keeps a complete checkpoint on its disk (its own RNG state
included), and only the main node writes the shared files: the final model, the card, the run marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, free_port, start, stop
from instructgpt.infra.files import RUN_MARKER

pytestmark = pytest.mark.distributed


def node_command(rank: int, port: int, *args: str) -> list[str]:
    """The command machine ``rank`` runs (the README shows it): 2 machines, 1 process each, main node 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "2",
        "--machine_rank",
        str(rank),
        "--num_processes",
        "2",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *args,
    ]


def launch_two_nodes(root: Path, *args: str, timeout: int = 600) -> list[Path]:
    """Start both nodes, wait for both; return each node's output directory."""
    port = free_port()
    outputs = [root / f"node{rank}" / "out" for rank in (0, 1)]
    processes = [
        start(
            node_command(rank, port, *args, "--output_dir", str(outputs[rank])),
            cwd=REPO,
            env=os.environ.copy(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:  # each node with the workers it started
            stop(process, signal.SIGKILL)
    for rank, process in enumerate(processes):
        assert process.returncode == 0, f"node {rank}:\n{logs[rank][-3000:]}"
    return outputs


def test_sft_on_two_machines(tmp_path):
    main, other = launch_two_nodes(
        tmp_path,
        "-m",
        "instructgpt.stages.sft",
        "recipes/tiny/sft.yaml",
        "--report_to",
        "none",
        "--max_train_samples",
        "64",
        "--per_device_train_batch_size",
        "8",
        "--num_train_epochs",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--save_on_each_node",
        "true",
        "--logging_steps",
        "1",
    )
    # 64 samples, 8 per process, 2 processes: 4 steps; the last checkpoint (the recipe keeps one) on both disks
    assert (
        [p.name for p in main.glob("checkpoint-*")] == [p.name for p in other.glob("checkpoint-*")] == ["checkpoint-4"]
    )
    for rank, out in enumerate((main, other)):
        checkpoint = out / "checkpoint-4"
        assert (checkpoint / f"rng_state_{rank}.pth").is_file()  # this node's own process state
        assert not (checkpoint / f"rng_state_{1 - rank}.pth").exists()  # the other node's is on the other disk
        assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "model.safetensors").is_file()
    # the shared files are written once, by the main node
    for name in (RUN_MARKER, "model.safetensors", "README.md"):
        assert (main / name).is_file() and not (other / name).exists(), name


def test_ppo_on_two_machines(sft_model, trained_rm, tmp_path):
    main, other = launch_two_nodes(
        tmp_path,
        "-m",
        "instructgpt.stages.ppo.run",
        "recipes/tiny/ppo.yaml",
        "--model_name_or_path",
        str(sft_model),
        "--reward_model_path",
        str(trained_rm[0]),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--total_episodes",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--num_mini_batches",
        "1",
        "--num_ppo_epochs",
        "1",
        "--response_length",
        "10",
        "--save_steps",
        "1",
        "--save_on_each_node",
        "true",
        "--num_sample_generations",
        "0",
        "--eval_num_prompts",
        "0",
    )
    # 32 episodes, 8 per process-update x 2 processes = 16 per update: 2 updates, a checkpoint after each
    for rank, out in enumerate((main, other)):
        assert {p.name for p in out.glob("checkpoint-*")} >= {"checkpoint-1", "checkpoint-2"}
        state = out / "checkpoint-2" / "state"
        assert (state / f"random_states_{rank}.pkl").is_file()
        assert not (state / f"random_states_{1 - rank}.pkl").exists()
        assert (out / "checkpoint-2" / "trainer_state.json").is_file()
        assert not list(out.glob(".checkpoint-*.tmp"))  # every node finished its checkpoint folders
    for name in (RUN_MARKER, "model.safetensors", "README.md"):
        assert (main / name).is_file() and not (other / name).exists(), name
