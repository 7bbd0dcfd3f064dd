"""Human labeling: people rank a prompt's responses in the browser, and their rankings train the reward model.

- :mod:`.store`: the items, who ranks what, and the append-only files the rankings go to (:class:`LabelStore`,
  which owns every decision and documents the rules);
- :mod:`.app`: the Gradio app, a thin view over the store (imported on its own: Gradio is an optional extra).

This file only re-exports :mod:`.store`.
"""

from instructgpt.labeling.store import (
    FLAGS,
    ITEMS_FILE,
    MAX_LABELER_ID,
    QUALITY_SCALE,
    RANKINGS_FILE,
    SKIPS_FILE,
    Item,
    LabelingError,
    LabelStore,
    check_labeler_id,
    check_metadata,
    check_tiers,
    items_from_rankings,
    load_items,
    save_items,
    tiers_to_scores,
)

__all__ = [
    "FLAGS",
    "ITEMS_FILE",
    "MAX_LABELER_ID",
    "QUALITY_SCALE",
    "RANKINGS_FILE",
    "SKIPS_FILE",
    "Item",
    "LabelingError",
    "LabelStore",
    "check_labeler_id",
    "check_metadata",
    "check_tiers",
    "items_from_rankings",
    "load_items",
    "save_items",
    "tiers_to_scores",
]
