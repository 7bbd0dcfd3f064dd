"""`use_vllm: true` without vLLM, as a process: `instructgpt collect` says so in one line naming the extra, exit
code 2, no traceback, nothing written. vLLM is hidden (``sys.modules['vllm'] = None``) so the test means the same
inside scripts/test-vllm.sh's environment; the in-process checks are in tests/unit/test_vllm_missing.py.
"""

from __future__ import annotations

import sys

from helpers import TINY_BASE, run_cli

EXTRA = "pip install -e '.[vllm]'"
HIDE_VLLM = "import sys; sys.modules['vllm'] = None; from instructgpt.cli import main; main(sys.argv[1:])"


def test_collect_with_use_vllm_and_no_vllm_is_one_line_naming_the_extra(tmp_path):
    out = tmp_path / "rankings"
    result = run_cli(
        [
            sys.executable,
            "-c",
            HIDE_VLLM,
            "collect",
            "recipes/tiny/collect.yaml",
            "--model_name_or_path",
            str(TINY_BASE),
            "--output_dir",
            str(out),
            "--use_vllm",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert EXTRA in lines[0] and "use_vllm" in lines[0] and "recipes/tiny/collect.yaml" in lines[0]
    assert not out.exists()  # refused before the output directory was made
