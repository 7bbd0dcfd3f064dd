"""What the benchmark scripts share: offline settings, the repository root and a quick tiny SFT model.

Imported as ``from common import ...`` (a script's own folder is first on ``sys.path``); importing it sets the
offline environment before transformers or datasets are imported.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def quick_sft(output_dir: Path) -> Path:
    """A tiny-world SFT model in a minute (60 steps of ``recipes/tiny/sft.yaml``) for benchmarks given no policy."""
    from instructgpt.stages.sft import parse_args, run_sft

    (script, training, model), recipe = parse_args(
        [
            str(REPO / "recipes/tiny/sft.yaml"),
            "--output_dir",
            str(output_dir),
            "--report_to",
            "none",
            "--max_steps",
            "60",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--logging_steps",
            "60",
        ]
    )
    run_sft(script, training, model, recipe)
    return output_dir
