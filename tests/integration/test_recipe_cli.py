"""Recipes from the command line: the entry points as processes print a bad recipe's error in one line and answer
--help. The parsing itself is tested without processes in tests/unit/test_recipe.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers import python_m, run_cli

MINIMAL = (
    "stage: sft\nmodel_name_or_path: data/tiny/base-model\ndataset_name: data/tiny/sft_train.jsonl\n"
    "output_dir: runs/x\n"
)


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    path = _write(tmp_path, MINIMAL + "learnig_rate: 1.0e-4\n")
    for command in (python_m("instructgpt.stages.sft", path), python_m("instructgpt", path)):
        result = run_cli(command)
        assert result.returncode == 2, result.stderr
        assert "did you mean `learning_rate`?" in result.stderr
        assert "Traceback" not in result.stderr


def test_console_scripts_answer_help(tmp_path):
    """The installed commands themselves (not only their functions) answer --help with exit code 0."""
    for command in (["instructgpt-sft", "--help"], ["instructgpt", "collect", "--help"]):
        exe = shutil.which(command[0])
        assert exe, f"{command[0]} is not installed"
        result = run_cli([exe, *command[1:]], timeout=120)
        assert result.returncode == 0 and "--help" in result.stdout and "Traceback" not in result.stderr
