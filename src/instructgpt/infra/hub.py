"""The Hugging Face Hub: ``push_to_hub`` of finished outputs only.

``push_to_hub: true`` uploads the output directory once the stage has finished it: after every file (weights,
normalization, value model, card) and the run marker are written. The Trainer's own push, which runs inside
``save_model`` before the stage's last files exist, is switched off (:func:`take_push_to_hub`). The card goes up
as :func:`~instructgpt.infra.cards.card_for_hub` writes it: its quick start loads the Hub id, not the local path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructgpt.infra.cards import CARD_FILE, card_for_hub
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)

# folders and files a finished output holds that the Hub copy does not need
NOT_PUSHED = ["checkpoint-*", "checkpoint-*/**", "wandb/**", "runs/**", "mlruns/**", ".*", "*.tmp"]


class HubError(InstructGPTError):
    """A push to the Hub that failed (no login, no network, no permission); the local output stays finished."""


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
    message = f"instructgpt: {json.loads((output_dir / RUN_MARKER).read_text())['stage']} output"
    card = card_for_hub(output_dir, repo_id)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
        api.upload_folder(
            repo_id=repo_id,
            repo_type=repo_type,
            folder_path=str(output_dir),
            ignore_patterns=NOT_PUSHED + ([CARD_FILE] if card is not None else []),
            commit_message=message,
        )
        if card is not None:  # the card whose quick start loads the Hub id
            api.upload_file(
                path_or_fileobj=card.encode("utf-8"),
                path_in_repo=CARD_FILE,
                repo_id=repo_id,
                repo_type=repo_type,
                commit_message=f"{message}: card",
            )
    except Exception as err:  # network, login, permissions: the local run is finished either way
        raise HubError(f"{output_dir} is finished but could not be pushed to {repo_id}: {err}") from None
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    logger.info(f"pushed {output_dir} to https://huggingface.co/{prefix}{repo_id}")
    return repo_id
