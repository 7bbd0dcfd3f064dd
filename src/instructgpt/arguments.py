"""Recipe fields every training stage shares, beside TRL's own configs (``SFTConfig``, ``RewardConfig``,
``ModelConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from instructgpt.data.mixtures import TEST, TRAIN, Mixture, MixtureError, read_handbook_mixture, read_trl_mixture
from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE


@dataclass
class DatasetMixtureArguments:
    """A mixture of datasets in place of ``dataset_name``: TRL's ``datasets:`` or alignment-handbook's
    ``dataset_mixture:`` (:mod:`instructgpt.data.mixtures`). Every stage that reads a dataset has these keys;
    ``dataset`` is what its loaders read: the mixture, or ``dataset_name``."""

    datasets: list[dict[str, Any]] | None = field(
        default=None,
        metadata={
            "help": "TRL's dataset mixture, in place of `dataset_name`: a list of datasets, each a mapping with "
            "`path` (a local file, a Hub id, or a builder such as `json` with `data_files`) and optionally `name`, "
            "`data_dir`, `data_files`, `split`, `columns` and `fraction` (a share of the mixture, for every entry "
            "or none; normalized; no row repeated)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "TRL's streaming of a mixture. Not supported: every stage checks all rows and counts them before "
            "it starts (datasets are memory-mapped from disk, so a large one does not fill memory); `true` is refused."
        },
    )
    test_split_size: float | None = field(
        default=None,
        metadata={
            "range": "> 0",
            "help": "With `datasets`: hold out this share (below 1) or this many rows of the mixture as its `test` "
            "part (read with `dataset_test_split: test`, set for you), drawn at random with seed 0.",
        },
    )
    dataset_mixture: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "alignment-handbook's dataset mixture, in place of `dataset_name`: `datasets` (each with `id` and "
            "optionally `config`, `split`, `columns`, `weight`: the share of that dataset's rows to keep, at most 1), "
            "`seed` (of the shuffles) and `test_split_size`."
        },
    )

    def __post_init__(self) -> None:
        self.mixture: Mixture | None = None
        if self.streaming:
            raise MixtureError(
                "`streaming: true` is not supported: every stage checks all rows and counts them before it starts "
                "(datasets are memory-mapped from disk, so a large one does not fill memory); remove it"
            )
        if self.datasets is not None and self.dataset_mixture is not None:
            raise MixtureError(
                "`datasets` (TRL's form) and `dataset_mixture` (the handbook's) both name the data; keep one"
            )
        if self.datasets is not None:
            self.mixture = read_trl_mixture(self.datasets, self.test_split_size)
        elif self.dataset_mixture is not None:
            if self.test_split_size is not None:
                raise MixtureError("`test_split_size` goes inside `dataset_mixture` in the handbook's form")
            self.mixture = read_handbook_mixture(self.dataset_mixture)
        elif self.test_split_size is not None:
            raise MixtureError(
                "`test_split_size` splits a mixture: it needs `datasets` (use `dataset_test_split` for a split of "
                "`dataset_name`)"
            )
        if self.mixture is None:
            return
        # A mixture names its datasets, configurations and splits per entry; the single-dataset keys cannot apply.
        if getattr(self, "dataset_name", None) is not None:
            raise MixtureError(f"`dataset_name` and `{self.mixture.key}` both name the data; keep one")
        if getattr(self, "dataset_config", None) is not None:
            raise MixtureError(
                f"`dataset_config` does not apply to `{self.mixture.key}`: each entry names its own configuration"
            )
        if getattr(self, "dataset_train_split", TRAIN) != TRAIN:
            raise MixtureError(
                f"`dataset_train_split` does not apply to `{self.mixture.key}`: each entry names its own `split`, "
                "and the mixture's parts are `train` and (with `test_split_size`) `test`"
            )
        if hasattr(self, "dataset_test_split"):
            if self.dataset_test_split is None and self.mixture.test_split_size is not None:
                self.dataset_test_split = TEST
            elif self.dataset_test_split is not None:
                self.mixture.check_part(self.dataset_test_split)

    @property
    def dataset(self) -> Mixture | str | None:
        """What the stage's loaders read: the mixture when the recipe gives one, else ``dataset_name``."""
        return self.mixture if self.mixture is not None else getattr(self, "dataset_name", None)

    @property
    def dataset_names(self) -> list[str]:
        """Every dataset the stage reads (for its model card): the mixture's entries, or ``dataset_name``."""
        if self.mixture is not None:
            return list(dict.fromkeys(member.path for member in self.mixture.members))
        return [self.dataset_name] if getattr(self, "dataset_name", None) else []


@dataclass
class RewardAggregationArguments:
    """How a consumer of a reward model reads an ensemble (:mod:`instructgpt.modeling.ensemble`): every stage that
    scores with a reward model has these keys; a single reward model ignores them."""

    reward_aggregation: Literal["mean", "min", "mean_minus_std"] | None = field(
        default=None,
        metadata={
            "help": "For a reward-model ensemble: the score is the `mean` of its members' normalized rewards, their "
            "`min` (the worst case) or `mean_minus_std` (the mean minus `reward_std_coef` times their standard "
            "deviation), as in Coste et al. 2023. Unset: the ensemble's own default (its manifest)."
        },
    )
    reward_std_coef: float | None = field(
        default=None,
        metadata={
            "range": ">= 0",
            "help": "lambda of `mean_minus_std`, in reward units. Unset: the ensemble's own default.",
        },
    )


@dataclass
class ScriptArguments(DatasetMixtureArguments):
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


@dataclass
class OnlineRLArguments(ScriptArguments, RewardAggregationArguments):
    """Models and data of an online RL run on TRL's trainers (RLOO, GRPO). ``dataset_name`` holds the prompts (a
    ``prompt`` or ``messages`` column)."""

    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "The reward model (output_dir of `instructgpt-rm`): a sequence classifier with one output, or an "
            "ensemble of them (read with `reward_aggregation`). It is frozen, and its scores are normalized by the "
            "shift the RM stage stored with it."
        },
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "range": ">= 0",
            "help": "Subtracted from the reward of a response that reaches `max_completion_length` without an EOS "
            "token (>= 0; PPO's key), which teaches the policy to finish its answers. Null: no penalty.",
        },
    )
    reward_batch_size: int = field(
        default=32, metadata={"range": ">= 1", "help": "Sequences per forward pass of the reward model."}
    )
    save_policy_checkpoints: bool = field(
        default=True,
        metadata={
            "help": "Keep the policy of every checkpoint (checkpoint-N/policy, loadable with AutoModelForCausalLM) "
            "even after `save_total_limit` removes the older resume states, for reward-vs-KL plots over training."
        },
    )
