"""What the tests share besides fixtures: paths into the offline tiny world, commands, the in-process collect and
RM steps, and processes that are always stopped.

Importable as ``helpers`` from every tier (``pythonpath = ["tests"]`` in pyproject.toml); conftest.py keeps only
fixtures and hooks.

Every process a test starts goes through :func:`start`: it runs in a session of its own (its own process group), so
that :func:`stop` ends it together with whatever it started (``accelerate launch`` workers, vLLM engines, a W&B
service), and it is remembered until stopped, so that a failing test, an interrupted run (Ctrl-C, SIGTERM from a
CI timeout) or the end of the pytest process stops it too (:func:`stop_all`, registered with ``atexit`` and called
by conftest.py's SIGTERM handler). Where Linux allows, a child also gets SIGTERM when the pytest process dies
outright (SIGKILL), the one case no code of ours can run in.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from instructgpt.stages.collect import parse_args as collect_args
from instructgpt.stages.collect import run_collect
from instructgpt.stages.rm import parse_args as rm_args
from instructgpt.stages.rm import run_rm

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = REPO / "data" / "tiny"
TINY_BASE = TINY_DATA / "base-model"
FIXTURES = REPO / "tests" / "fixtures"

# ---------------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------------

_RUNNING: set[subprocess.Popen] = set()
_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: atexit and the SIGTERM handler still stop it
        pass


def start(args: list[str], *, preexec_fn=None, **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in a process group of its own, remembered until :func:`stop` ends the group."""
    # the parent-death signal fires when the starting *thread* ends, so only a child of the main thread gets it
    on_parent_death = threading.current_thread() is threading.main_thread() and sys.platform == "linux"

    def before_exec() -> None:
        if on_parent_death:
            _parent_death_signal()
        if preexec_fn is not None:
            preexec_fn()

    process = subprocess.Popen(args, start_new_session=True, preexec_fn=before_exec, **popen_kwargs)
    _RUNNING.add(process)
    return process


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send ``sig`` to the process's whole group, SIGKILL what is left after ``timeout`` s; its exit status."""
    _signal_group(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    _end_group(process, grace=timeout)
    return process.returncode


def _end_group(process: subprocess.Popen, grace: float) -> None:
    """After the leader exited: give what it left in its group ``grace`` s to finish by itself (a W&B service
    flushing a killed run's records), then SIGTERM, then SIGKILL. Forgets the process."""
    deadline = time.monotonic() + grace
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(process.pid):
            break
        _signal_group(process.pid, sig)
        deadline = time.monotonic() + 5
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    _RUNNING.discard(process)


def running() -> set[subprocess.Popen]:
    """The processes started by :func:`start` and not yet stopped."""
    return set(_RUNNING)


def stop_started_since(before: set[subprocess.Popen]) -> None:
    """Stop (SIGKILL, with their groups) the processes started since ``running()`` returned ``before``: what a test
    body started and did not stop, whether it failed or passed (conftest.py calls it after every test)."""
    for process in running() - before:
        stop(process, signal.SIGKILL)


def stop_all() -> None:
    """SIGKILL every process group started by :func:`start` and not yet stopped (the end of the pytest process)."""
    for process in list(_RUNNING):
        _signal_group(process.pid, signal.SIGKILL)
        _RUNNING.discard(process)


atexit.register(stop_all)


LEFTOVER_GRACE = 300  # seconds a finished command's leftovers (a W&B service flushing) get to end by themselves


def run_cli(
    args: list[str], env: dict[str, str | None] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a command in a subprocess from the repo root (for entry points, exit codes and `accelerate launch`).

    As ``subprocess.run``, except that a timeout, an interrupt or a failure kills the command's whole process
    group, and what the command left running after it exited (a W&B service still writing the run's records, which
    tests then read) is waited for until it ends by itself; only one still running after ``LEFTOVER_GRACE`` s, far
    longer than a flush takes even on a loaded machine, is stopped."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None unsets a variable
    process = start(args, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
        finished = True
    finally:
        if finished:
            _end_group(process, grace=LEFTOVER_GRACE)
        else:
            stop(process, signal.SIGKILL)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The failing command's message: one line, exit code 2, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def python_m(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def accelerate_launch(*args: str, num_processes: int = 2) -> list[str]:
    """Two gloo processes on a CPU machine: the DDP code path without GPUs."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        *args,
    ]


def wait_for(condition, timeout: float, what: str, poll: float = 0.2):
    """Poll ``condition()`` until it returns something true, and return that; AssertionError naming ``what`` after
    ``timeout`` s. A busy machine changes how long a state takes to appear, never whether it does."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# The labeling app as a server (the browser and load tests)
# ---------------------------------------------------------------------------------------------------------------

APP_DEADLINE = 120  # seconds the app may take to answer after a start: generous, a busy machine only slows it


class LabelApp:
    """``instructgpt label`` in a subprocess on 127.0.0.1, in a process group of its own (:func:`start`); the
    ``label_app`` fixture (conftest.py) stops it when the test ends, passed or failed."""

    def __init__(self, items: Path, output_dir: Path, *extra: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.args = [
            sys.executable,
            "-m",
            "instructgpt",
            "label",
            "recipes/tiny/label.yaml",
            "--rankings_file",
            str(items),
            "--output_dir",
            str(output_dir),
            "--server_port",
            str(self.port),
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.log = output_dir.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> LabelApp:
        with self.log.open("a") as log:
            self.process = start(self.args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._answers, APP_DEADLINE, f"the app on {self.url}", poll=0.3)
        except AssertionError as error:
            raise AssertionError(f"{error}: {self.log.read_text()[-2000:]}") from None
        return self

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"the app exited: {self.log.read_text()[-2000:]}"
        try:
            urllib.request.urlopen(self.url, timeout=2)
        except urllib.error.HTTPError:
            pass  # it answers (an error status is for the caller to check)
        except OSError:
            return False
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the app's process group; its exit status."""
        assert self.process is not None
        return stop(self.process, sig)

    def stop_if_running(self) -> None:
        if self.process is not None and self.process.returncode is None:
            stop(self.process, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------------
# Steps 1 and 2 in-process, as conftest.py's session fixtures and several tests run them
# ---------------------------------------------------------------------------------------------------------------

NUM_PROMPTS = 160  # prompts collected for the shared rankings (the recipe collects all 500)
FAST_RM = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "5"]


def collect(output_dir: Path, policy: Path, *extra: str) -> dict:
    (args,), recipe = collect_args(
        [
            "recipes/tiny/collect.yaml",
            "--model_name_or_path",
            str(policy),
            "--output_dir",
            str(output_dir),
            "--report_to",
            "none",
            *extra,
        ]
    )
    return run_collect(args, recipe)


def rm(output_dir: Path, rankings: Path, policy: Path, *extra: str) -> dict:
    (script, training, model), recipe = rm_args(
        [
            "recipes/tiny/rm.yaml",
            "--model_name_or_path",
            str(policy),
            "--output_dir",
            str(output_dir),
            "--dataset_name",
            str(rankings),
            *FAST_RM,
            *extra,
        ]
    )
    return run_rm(script, training, model, recipe)


def quick_sft(out: Path, *extra: str) -> list[str]:
    """An SFT command on the tiny recipe with no dashboard and no evaluation; ``extra`` sets the steps and saves."""
    return python_m(
        "instructgpt.stages.sft",
        "recipes/tiny/sft.yaml",
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--eval_strategy",
        "no",
        *extra,
    )


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (created) with ``options`` (``size=24m``, ``ro``) while inside; the test is skipped
    where it cannot be mounted (not root, or a container that forbids it). CI runs as root."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode != 0:
        import pytest

        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def quick_ppo(out: Path, sft: Path, rm: Path) -> list[str]:
    """A PPO command of 4 updates (64 episodes, 16 per update) with a checkpoint after each, for the fault tests."""
    return python_m(
        "instructgpt.stages.ppo.run",
        "recipes/tiny/ppo.yaml",
        "--model_name_or_path",
        str(sft),
        "--reward_model_path",
        str(rm),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--total_episodes",
        "64",
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "2",
        "--num_ppo_epochs",
        "1",
        "--response_length",
        "12",
        "--save_steps",
        "1",
        "--num_sample_generations",
        "4",
        "--eval_num_prompts",
        "0",
    )


def temporary_files(directory: Path) -> list[Path]:
    """What an atomic write or checkpoint left half-done in ``directory`` (``.<name>.tmp``), at any depth."""
    return list(directory.rglob(".*.tmp"))
