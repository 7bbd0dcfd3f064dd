"""Datasets: loading them, their column formats, rankings and padding, one module each.

- :mod:`.loading`: a local JSONL/JSON/CSV/Parquet file or a Hub dataset, interchangeably, with the checks every
  stage runs on what it loaded (``DataError``, required columns and rows, empty values);
- :mod:`.formats`: the one rule that turns a row into a prompt (and a demonstration into prompt + completion);
- :mod:`.rankings`: preference data in every supported format as rankings, best first;
- :mod:`.padding`: ragged token-id lists into one batch, padded on the side each use needs.

This file only re-exports :mod:`.loading`.
"""

from instructgpt.data.loading import (
    DataError,
    find_empty,
    jsonl_rows,
    load_data,
    require_columns,
    require_rows,
    row_place,
)

__all__ = ["DataError", "find_empty", "jsonl_rows", "load_data", "require_columns", "require_rows", "row_place"]
