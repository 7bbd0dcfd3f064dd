"""The labeling store: the items people rank, who ranks what, and the append-only files their rankings go to.

The browser app (:mod:`instructgpt.labeling.app`, Gradio) is a thin view over :class:`LabelStore`, which owns every
decision, so the rules below hold whatever the front end does:

- **Items.** One prompt and its K responses (a ``collect`` output, or samples drawn when the labeling starts),
  saved once in ``items.jsonl`` so that every restart shows the same responses.
- **Display order.** Each labeler sees an item's responses in a random order, seeded by the labeler, the item and
  the recipe's seed (a reload shows the same order); the order is recorded in the row (``shown_order``).
- **Assignment.** Every item goes to ``labelers_per_prompt`` different labelers (the overlap that agreement is
  measured on). A labeler gets the lowest-numbered item that they have not ranked, skipped or flagged, and that
  does not already have its labelers, counting those who have it on screen now (a skip or a flag counts as one of
  its labelers: a person declined it, and it is not pushed on the next one). Item ids never travel in a
  request: the server knows which item is on whose screen, and a request only says how it was ranked.
- **Saving.** A submitted ranking is one line of ``rankings.jsonl``, in the format the reward-model stage and the
  ``file:`` labeler read (``prompt``, ``responses`` best first, ``scores``), plus who, when and how long. A skip or
  flag is one line of ``skips.jsonl``. Each line is written whole with one ``write`` and flushed to disk before the
  next item is shown, so killing the server or closing the browser loses at most the item on screen, and a line
  an interruption cut off is removed when the labeling restarts (:func:`instructgpt.infra.files.open_appended_jsonl`).
- **Ties.** With ``allow_ties``, responses can share a place. Tied responses get equal ``scores``; the reward model
  needs a strict order, so when it trains it keeps the first of a tie (in ``responses`` order, which for a tie is
  the order shown on screen) and drops the others from that ranking, counted in its log
  (:func:`instructgpt.data.rankings.strict_order`). ``instructgpt agreement`` counts ties as ties.
- **Several labelers on one prompt.** Each labeler's ranking is its own row and its own training ranking; the RM
  stage's held-out split keeps all rankings of a prompt on the same side.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructgpt.data.loading import DataError
from instructgpt.data.rankings import load_rankings
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import append_jsonl, atomic_write_text, open_appended_jsonl, read_appended_jsonl
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)

RANKINGS_FILE = "rankings.jsonl"
SKIPS_FILE = "skips.jsonl"
ITEMS_FILE = "items.jsonl"
# InstructGPT's per-response metadata (Ouyang et al. 2022, appendix B, table 3): a 1-7 quality rating and yes/no flags
QUALITY_SCALE = (1, 7)
FLAGS = ("fails_instruction", "inappropriate", "hallucination")
MAX_LABELER_ID = 64


class LabelingError(InstructGPTError):
    """A labeling request or input the app refuses; the message is shown to the labeler or printed as one line."""


@dataclass
class Item:
    """One prompt and the responses to rank (in the order they were stored, never the order shown)."""

    index: int
    prompt: Any
    responses: list[str]


# --------------------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------------------


def items_from_rankings(path: str, *, key: str, source: str, limit: int | None) -> list[Item]:
    """Items from a file in any format the RM stage reads (a ``collect`` output: prompt and K responses)."""
    rows = load_rankings(
        path, key=key, source=source, config=None, split="train", limit=limit, score_key="fine-grained_score"
    )
    return [Item(i, row["prompt"], list(row["responses"])) for i, row in enumerate(rows)]


def save_items(path: Path, items: list[Item]) -> None:
    atomic_write_text(
        path,
        "".join(
            json.dumps({"item": it.index, "prompt": it.prompt, "responses": it.responses}, ensure_ascii=False) + "\n"
            for it in items
        ),
    )


def load_items(path: Path) -> list[Item]:
    items = []
    for number, row in enumerate(read_appended_jsonl(path)[0], start=1):
        if not isinstance(row.get("responses"), list) or row.get("item") != number - 1:
            raise DataError(f"{path}: line {number} is not item {number - 1} with its responses; the file was edited")
        items.append(Item(row["item"], row["prompt"], row["responses"]))
    if not items:
        raise DataError(f"{path}: no items")
    return items


def check_labeler_id(value: Any) -> str:
    """A labeler id: what a person typed or logged in as, kept as data (it never names a file)."""
    text = " ".join(str(value or "").split())
    if not text:
        raise LabelingError("enter a labeler id (your name or login) to start")
    if len(text) > MAX_LABELER_ID:
        raise LabelingError(f"a labeler id has at most {MAX_LABELER_ID} characters")
    return text


def tiers_to_scores(tiers: list[list[int]]) -> dict[int, float]:
    """Score of each shown position: the number of places below its own (best of T places: T - 1; a tie shares)."""
    return {pos: float(len(tiers) - 1 - place) for place, tier in enumerate(tiers) for pos in tier}


def check_tiers(tiers: Any, num_responses: int, allow_ties: bool) -> list[list[int]]:
    """A ranking of shown positions, best first, as places (lists of positions; a place of two is a tie)."""
    if not isinstance(tiers, list) or not all(isinstance(t, list) and t for t in tiers):
        raise LabelingError("the ranking is malformed")
    flat = [p for tier in tiers for p in tier]
    if not all(isinstance(p, int) and 0 <= p < num_responses for p in flat) or len(set(flat)) != len(flat):
        raise LabelingError("the ranking is malformed")
    if len(flat) < num_responses:
        raise LabelingError(f"rank every response first ({len(flat)} of {num_responses} ranked)")
    if not allow_ties and any(len(t) > 1 for t in tiers):
        raise LabelingError("ties are not allowed in this labeling run")
    if len(tiers) < 2:
        raise LabelingError("a ranking needs at least two places; not everything can be tied")
    return tiers


def check_metadata(metadata: list[dict[str, Any]] | None, num_responses: int) -> list[dict[str, Any]]:
    """Per shown position: ``quality`` (1-7 or None when not rated) and the yes/no flags."""
    out = []
    for pos in range(num_responses):
        given = (metadata[pos] if metadata and pos < len(metadata) else None) or {}
        quality = given.get("quality")
        if quality in ("", None):
            quality = None
        else:
            try:
                quality = int(quality)
            except (TypeError, ValueError):
                raise LabelingError(
                    f"quality must be a whole number from {QUALITY_SCALE[0]} to {QUALITY_SCALE[1]}"
                ) from None
            if not QUALITY_SCALE[0] <= quality <= QUALITY_SCALE[1]:
                raise LabelingError(f"quality must be from {QUALITY_SCALE[0]} to {QUALITY_SCALE[1]}, got {quality}")
        out.append({"quality": quality, **{flag: bool(given.get(flag)) for flag in FLAGS}})
    return out


# --------------------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------------------


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LabelStore:
    """Items, who has them on screen, and the rankings, skips and flags written so far; safe across threads (the
    web server answers several labelers at once)."""

    def __init__(
        self,
        output_dir: str | Path,
        items: list[Item],
        *,
        labelers_per_prompt: int = 1,
        allow_ties: bool = False,
        seed: int = 0,
        on_complete: Callable[[dict[str, Any]], None] | None = None,
    ):
        if labelers_per_prompt < 1:
            raise ValueError(f"labelers_per_prompt must be at least 1, got {labelers_per_prompt}")
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.items = items
        self.labelers_per_prompt = labelers_per_prompt
        self.allow_ties = allow_ties
        self.seed = seed
        self.on_complete = on_complete
        self.max_responses = max(len(it.responses) for it in items)
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[int, float]] = {}  # labeler -> (item on screen, when it was shown)
        self.covered: dict[int, set[str]] = {it.index: set() for it in items}  # item -> labelers done with it
        self.ranked: dict[str, int] = {}  # labeler -> rankings submitted
        logs = (self.output_dir / RANKINGS_FILE, self.output_dir / SKIPS_FILE)
        for row in [row for log in logs for row in open_appended_jsonl(log)]:
            item, labeler = row.get("item"), row.get("labeler_id")
            if item not in self.covered or not isinstance(labeler, str):
                raise DataError(f"{self.output_dir}: a row names item {item!r}, which {ITEMS_FILE} does not hold")
            self.covered[item].add(labeler)
            if "responses" in row:
                self.ranked[labeler] = self.ranked.get(labeler, 0) + 1

    # -- reading ------------------------------------------------------------------------------------------------

    def display_order(self, labeler: str, item: int) -> list[int]:
        """The order labeler ``labeler`` sees item ``item``'s responses in: ``order[shown position]`` = stored index."""
        order = list(range(len(self.items[item].responses)))
        random.Random(f"{self.seed}|{labeler}|{item}").shuffle(order)
        return order

    def progress(self, labeler: str) -> dict[str, int]:
        """Rankings this labeler submitted; labels done and wanted over all items (each item N times)."""
        done = sum(min(len(c), self.labelers_per_prompt) for c in self.covered.values())
        return {"mine": self.ranked.get(labeler, 0), "done": done, "total": len(self.items) * self.labelers_per_prompt}

    def is_complete(self) -> bool:
        return all(len(c) >= self.labelers_per_prompt for c in self.covered.values())

    def current(self, labeler: str) -> int | None:
        """The item on this labeler's screen: the one they had (a reload keeps it), else the next one for them."""
        with self._lock:
            if labeler in self._leases:
                return self._leases[labeler][0]
            busy: dict[int, int] = {}
            for item, _ in self._leases.values():
                busy[item] = busy.get(item, 0) + 1
            for it in self.items:
                taken = self.covered[it.index]
                if labeler in taken or len(taken) + busy.get(it.index, 0) >= self.labelers_per_prompt:
                    continue
                self._leases[labeler] = (it.index, time.monotonic())
                return it.index
            return None

    # -- writing ------------------------------------------------------------------------------------------------

    def _append(self, name: str, row: dict[str, Any]) -> None:
        """One whole line, on disk before the labeler sees the next item
        (:func:`~instructgpt.infra.files.append_jsonl`). A write that fails (the disk full) leaves no partial line;
        the labeler is told in one line, and the item stays on their screen."""
        append_jsonl(self.output_dir / name, [row])

    def _take(self, labeler: str) -> tuple[Item, float]:
        if labeler not in self._leases:
            raise LabelingError("no item is on your screen; reload the page")
        index, shown = self._leases[labeler]
        return self.items[index], shown

    def submit(self, labeler: str, tiers: Any, metadata: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Save this labeler's ranking of the item on their screen; ``tiers`` are shown positions, best first."""
        with self._lock:
            item, shown = self._take(labeler)
            k = len(item.responses)
            tiers = check_tiers(tiers, k, self.allow_ties)
            meta = check_metadata(metadata, k)
            order = self.display_order(labeler, item.index)
            scores = tiers_to_scores(tiers)
            best_first = [pos for tier in tiers for pos in tier]
            row = {
                "item": item.index,
                "prompt": item.prompt,
                "responses": [item.responses[order[pos]] for pos in best_first],
                "scores": [scores[pos] for pos in best_first],
                "labeler": f"human:{labeler}",
                "labeler_id": labeler,
                "timestamp": _utc_now(),
                "seconds": round(time.monotonic() - shown, 2),
                "shown_order": order,
                "metadata": [meta[pos] for pos in best_first],
            }
            self._append(RANKINGS_FILE, row)
            self._finish_item(labeler, item.index)
            self.ranked[labeler] = self.ranked.get(labeler, 0) + 1
        self._maybe_complete()
        return row

    def skip(self, labeler: str, *, flag: bool = False, reason: str = "") -> dict[str, Any]:
        """Skip the item on this labeler's screen, or flag it (for a prompt that should not be labeled at all)."""
        with self._lock:
            item, shown = self._take(labeler)
            row = {
                "item": item.index,
                "prompt": item.prompt,
                "action": "flag" if flag else "skip",
                "reason": str(reason or "")[:500],
                "labeler_id": labeler,
                "timestamp": _utc_now(),
                "seconds": round(time.monotonic() - shown, 2),
            }
            self._append(SKIPS_FILE, row)
            self._finish_item(labeler, item.index)
        self._maybe_complete()
        return row

    def _finish_item(self, labeler: str, item: int) -> None:
        self.covered[item].add(labeler)
        del self._leases[labeler]

    def _maybe_complete(self) -> None:
        if self.on_complete is not None and self.is_complete():
            self.on_complete(self.summary())

    def summary(self) -> dict[str, Any]:
        """Counts for the log and the run marker."""
        skips = open_appended_jsonl(self.output_dir / SKIPS_FILE)
        return {
            "num_items": len(self.items),
            "labelers_per_prompt": self.labelers_per_prompt,
            "num_rankings": sum(self.ranked.values()),
            "num_skipped": sum(r.get("action") == "skip" for r in skips),
            "num_flagged": sum(r.get("action") == "flag" for r in skips),
            "labelers": sorted({lab for c in self.covered.values() for lab in c}),
        }
