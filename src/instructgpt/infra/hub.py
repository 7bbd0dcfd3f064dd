"""The Hugging Face Hub: a model card in every output directory, and ``push_to_hub`` of finished outputs only.

A card is the ``README.md`` the Hub shows: YAML metadata (base model, datasets, library, tags) and a text that
says what the stage did and what it measured. TRL's :func:`trl.trainer.utils.generate_model_card` writes the
common part (how to load the model, the training procedure, the citations); each stage adds its own section.

``push_to_hub: true`` uploads the output directory once the stage has finished it: after every file (weights,
normalization, value model, card) and the run marker are written. The Trainer's own push, which runs inside
``save_model`` before the stage's last files exist, is switched off (:func:`take_push_to_hub`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, atomic_write_text
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)

CARD_FILE = "README.md"
INSTRUCTGPT_CITATION = """\
@inproceedings{ouyang2022training,
    title        = {{Training language models to follow instructions with human feedback}},
    author       = {Long Ouyang and Jeff Wu and Xu Jiang and others},
    year         = 2022,
    booktitle    = {Advances in Neural Information Processing Systems 35 (NeurIPS 2022)},
}"""
# folders and files a finished output holds that the Hub copy does not need
NOT_PUSHED = ["checkpoint-*", "checkpoint-*/**", "wandb/**", "runs/**", "mlruns/**", ".*", "*.tmp"]


class HubError(InstructGPTError):
    """A push to the Hub that failed (no login, no network, no permission); the local output stays finished."""


def hub_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` when it names a Hub repository (``gpt2``, ``org/name``), None for a local path."""
    if not name_or_path or Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~")):
        return None
    return name_or_path if name_or_path.count("/") <= 1 else None


def _markdown_table(rows: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| | |", "|---|---|"] + [f"| {key} | {cell(value)} |" for key, value in rows.items() if value is not None]
    return "\n".join(lines)


def _card_sections(
    datasets: Sequence[str | None], data_label: str, settings: dict[str, Any] | None, results: dict[str, Any] | None
) -> list[str]:
    """The lines every card ends with: the local data (no Hub page to link), the settings and the results."""
    lines: list[str] = []
    local = [d for d in datasets if d and not hub_id(d)]
    if local:
        lines += [f"{data_label}: " + ", ".join(f"`{d}`" for d in local) + ".", ""]
    if settings:
        lines += ["### Settings", "", _markdown_table(settings), ""]
    if results:
        lines += ["### Results", "", _markdown_table(results), ""]
    return lines


def write_model_card(
    output_dir: str | Path,
    *,
    stage: str,
    title: str,
    base_model: str | None,
    datasets: Sequence[str | None] = (),
    hub_model_id: str | None = None,
    summary: str = "",
    settings: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
) -> Path:
    """Write ``README.md`` (atomically) into ``output_dir``: TRL's card with this stage's section added."""
    from trl.trainer.utils import generate_model_card

    output_dir = Path(output_dir)
    dataset_ids = [d for d in (hub_id(d) for d in datasets) if d]
    card = generate_model_card(
        base_model=hub_id(base_model),
        model_name=output_dir.name,
        hub_model_id=hub_model_id or output_dir.name,
        dataset_name=dataset_ids[0] if dataset_ids else None,
        tags=["instructgpt", "rlhf", stage],
        wandb_url=None,
        trackio_url=None,
        trainer_name=f"instructgpt {stage}",
        trainer_citation=INSTRUCTGPT_CITATION,
        paper_title="Training language models to follow instructions with human feedback",
        paper_id="2203.02155",
    )
    if dataset_ids:
        card.data.datasets = dataset_ids
    if base_model and not hub_id(base_model):  # TRL's text links the base model on the Hub; a local one has no page
        card.text = card.text.replace("[None](https://huggingface.co/None)", f"`{base_model}`")
    section = [f"## {title}", "", summary.strip(), ""]
    section += [f"Base model: `{base_model}`." if base_model else "", ""]
    section += _card_sections(datasets, "Local data", settings, results)
    text = str(card).rstrip() + "\n\n" + "\n".join(line for line in section) + "\n"
    path = output_dir / CARD_FILE
    atomic_write_text(path, text)
    return path


def write_dataset_card(
    output_dir: str | Path,
    *,
    stage: str,
    title: str,
    source_model: str | None,
    datasets: Sequence[str | None] = (),
    summary: str = "",
    settings: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
) -> Path:
    """Write a dataset card ``README.md`` (atomically) into ``output_dir``, for stages whose output is data (the
    rankings of ``collect``): huggingface_hub's ``DatasetCard`` metadata, then what the stage did and measured."""
    from huggingface_hub import DatasetCard, DatasetCardData

    output_dir = Path(output_dir)
    data = DatasetCardData(
        tags=["instructgpt", "rlhf", stage, "preference"],
        task_categories=["text-generation"],
        source_datasets=[d for d in (hub_id(d) for d in datasets) if d] or None,
    )
    lines = [f"# {output_dir.name}", "", f"## {title}", "", summary.strip(), ""]
    if source_model:
        lines += [f"Responses sampled from `{source_model}`.", ""]
    lines += _card_sections(datasets, "Prompts", settings, results)
    lines += ["### Citation", "", "```bibtex", INSTRUCTGPT_CITATION, "```", ""]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = output_dir / CARD_FILE
    atomic_write_text(path, str(card).rstrip() + "\n")
    return path


def add_card_section(output_dir: str | Path, title: str, body: str) -> None:
    """Append (or replace) a ``## title`` section of an existing card, e.g. the pipeline's evaluation results."""
    path = Path(output_dir) / CARD_FILE
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    header = f"\n## {title}\n"
    if header in text:
        text = text[: text.index(header)]
    atomic_write_text(path, text.rstrip() + "\n" + header + "\n" + body.strip() + "\n")


@dataclass(frozen=True)
class PushTarget:
    """Where a finished output is pushed: the recipe's ``hub_model_id``, ``hub_private_repo`` and ``hub_token``."""

    repo_id: str | None
    private: bool | None = None
    token: str | None = None


def take_push_to_hub(training_args: Any) -> PushTarget | None:
    """The recipe's ``push_to_hub``, switched off in ``training_args`` so that no Trainer pushes mid-save; where the
    stage pushes its output once it is finished, or None when the recipe does not push."""
    if not getattr(training_args, "push_to_hub", False):
        return None
    training_args.push_to_hub = False
    return PushTarget(training_args.hub_model_id, private=training_args.hub_private_repo, token=training_args.hub_token)


def push_output(
    output_dir: str | Path,
    repo_id: str | None,
    *,
    private: bool | None = None,
    token: str | None = None,
    repo_type: str = "model",
) -> str:
    """Upload a finished ``output_dir`` to the Hub repository ``repo_id`` (default: the directory's name) in one
    commit; checkpoints, W&B files and hidden files stay local. ``repo_type`` is ``dataset`` for data a stage
    produced (``collect``'s rankings). Returns the repository id."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    if not (output_dir / RUN_MARKER).is_file():
        raise HubError(f"{output_dir}: not finished, so not pushed")
    repo_id = repo_id or output_dir.name
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
        api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(output_dir),
            ignore_patterns=NOT_PUSHED,
            commit_message=f"instructgpt: {json.loads((output_dir / RUN_MARKER).read_text())['stage']} output",
        )
    except Exception as err:  # network, login, permissions: the local run is finished either way
        raise HubError(f"{output_dir} is finished but could not be pushed to {repo_id}: {err}") from None
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    logger.info(f"pushed {output_dir} to https://huggingface.co/{prefix}{repo_id}")
    return repo_id
