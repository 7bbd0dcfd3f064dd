"""Saving what a stage trained as a plain model directory, LoRA or not: the one place adapters are merged.

Every stage's output loads with ``from_pretrained`` as it is, whatever trained it: a LoRA adapter is folded into
its base weights (peft's ``merge_and_unload``) before saving, so the next stage never needs peft to read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_lora(model: Any) -> bool:
    """A peft model whose adapter can be merged into its base."""
    return hasattr(model, "merge_and_unload")


def merge_adapter(model: Any) -> Any:
    """The model with its LoRA adapter folded into the base weights; any other model as it is."""
    return model.merge_and_unload() if is_lora(model) else model


def save_trained_model(trainer: Any, output_dir: str | Path, *, model: Any = None, keep_adapter: bool = False) -> None:
    """Save a ``Trainer``'s model to ``output_dir`` as a plain model directory.

    - Without LoRA, ``trainer.save_model`` writes it (it gathers sharded FSDP / ZeRO-3 weights).
    - With LoRA, the merged model goes to ``output_dir`` (``model`` when the caller merged it already, e.g. to
      score with it first), and with ``keep_adapter`` the adapter alone to ``output_dir/adapter`` for
      ``PeftModel.from_pretrained``.
    """
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if not is_lora(trained):
        trainer.save_model(str(output_dir))
        return
    if keep_adapter:
        trainer.save_model(str(Path(output_dir) / "adapter"))
    if trainer.is_world_process_zero():
        (model if model is not None else merge_adapter(trained)).save_pretrained(str(output_dir))
