"""Recipe fields every training stage shares, beside TRL's own configs (``SFTConfig``, ``RewardConfig``,
``ModelConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE


@dataclass
class ScriptArguments:
    """Where the data comes from, how prompts are formatted, and what to do with an existing output directory.

    The dataset fields mirror TRL's ``ScriptArguments`` (``dataset_name``, ``dataset_config``, ``dataset_train_split``,
    ``dataset_test_split``), and ``dataset_name`` also accepts a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id (e.g. HuggingFaceH4/no_robots) or a local .jsonl/.json/.csv/.parquet file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name, if any."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (Hub datasets)."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split of `dataset_name` to evaluate on, if any (Hub datasets)."}
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A separate evaluation dataset (Hub id or local file); overrides the test split."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"range": ">= 1", "help": "Use only the first N training examples (quick runs, debugging)."},
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"range": ">= 1", "help": "Use only the first N evaluation examples."}
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={
            "help": "Prompt format for a base model whose tokenizer has no chat template (GPT-2): must contain "
            "`{prompt}`. It is turned into a chat template and saved with the model, so later stages reuse it."
        },
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "A Jinja chat template that replaces the tokenizer's own (rarely needed)."}
    )
    pad_token: str | None = field(
        default=None,
        metadata={"help": "Padding token; default: the tokenizer's own, else its EOS token (GPT-2 has none)."},
    )
    if_output_exists: Literal["resume", "refuse", "overwrite"] = field(
        default="resume",
        metadata={
            "help": "When output_dir is not empty: `resume` an interrupted run from its last checkpoint (a finished "
            "run is refused), `refuse` outright, or `overwrite` (the old directory is moved aside, never deleted)."
        },
    )
