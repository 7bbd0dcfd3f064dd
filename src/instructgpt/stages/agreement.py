"""How much labelers agree: ``instructgpt agreement rankings.jsonl``.

    instructgpt agreement runs/tiny/label/rankings.jsonl
    instructgpt agreement runs/tiny/label/rankings.jsonl --labeler simulated            # each labeler vs the rubric
    instructgpt agreement runs/tiny/label/rankings.jsonl --labeler reward_model:runs/tiny/rm --output_json a.json

Reads rankings from several labelers (``instructgpt label``'s output; any rankings file whose rows carry
``labeler_id`` or ``labeler``) and reports, for every two labelers, on the items both ranked: pairwise agreement
(the share of response pairs they order the same way; InstructGPT's labelers: about 73%) and Kendall's tau
(tau-b, which allows ties); and over all pairs of labelers together. With ``--labeler``, the same for each labeler
against the simulated labeler or a reward model, which scores every response the people ranked. The math is in
:mod:`instructgpt.metrics.agreement`.
"""

from __future__ import annotations

import argparse
import math
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError

Rankings = dict[str, dict[Any, dict[str, float]]]  # labeler -> item -> response text -> score


def read_rankings(path: str) -> tuple[Rankings, dict[Any, Any]]:
    """Every labeler's ranking of every item, and each item's prompt; errors name the file and line."""
    from instructgpt.data import DataError, jsonl_rows
    from instructgpt.data.formats import prompt_text

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: rankings file not found")
    by_labeler: Rankings = {}
    prompts: dict[Any, Any] = {}
    for number, row in jsonl_rows(file):
        where = f"{path}: line {number}"
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise DataError(f"{where}: needs `responses`, a list of at least 2 strings, best first")
        labeler = row.get("labeler_id", row.get("labeler"))
        if not isinstance(labeler, str) or not labeler:
            raise DataError(f"{where}: no `labeler_id` or `labeler` says who ranked it")
        scores = row.get("scores")
        if scores is None:
            scores = [float(len(responses) - 1 - place) for place in range(len(responses))]
        elif not isinstance(scores, list) or len(scores) != len(responses) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores):
            raise DataError(f"{where}: `scores` must be one finite number per response")
        item = row.get("item", prompt_text(row.get("prompt", "")).strip())
        prompts.setdefault(item, row.get("prompt"))
        ranking = {text.strip(): float(score) for text, score in zip(responses, scores)}
        by_labeler.setdefault(labeler, {}).setdefault(item, ranking)  # a labeler's first ranking of an item counts
    if not by_labeler:
        raise DataError(f"{path}: no rankings")
    return by_labeler, prompts


def _row(first: str, second: str, counts: Any, items: int) -> dict[str, Any]:
    return {"labeler_a": first, "labeler_b": second, "items": items, "comparisons": counts.pairs,
            "agreement": counts.agreement, "kendall_tau": counts.kendall_tau}


def measure(by_labeler: Rankings, prompts: dict[Any, Any], reference: Any = None) -> dict[str, Any]:
    """Pairwise agreement and tau for every two labelers, pooled over all pairs, and against ``reference``."""
    from instructgpt.metrics.agreement import PairCounts, agreement_between

    report: dict[str, Any] = {"labelers": {name: len(items) for name, items in sorted(by_labeler.items())},
                              "pairs": []}
    pooled = PairCounts()
    pooled_items = 0
    for first, second in combinations(sorted(by_labeler), 2):
        counts, items = agreement_between(by_labeler[first], by_labeler[second])
        if items:
            report["pairs"].append(_row(first, second, counts, items))
            pooled.add(counts)
            pooled_items += items
    report["overall"] = _row("*", "*", pooled, pooled_items)
    if reference is not None:
        reference_rankings: dict[Any, dict[str, float]] = {}
        for item, prompt in prompts.items():
            texts = sorted({t for items in by_labeler.values() if item in items for t in items[item]})
            scores = reference.score([prompt] * len(texts), texts)
            reference_rankings[item] = dict(zip(texts, (float(s) for s in scores)))
        report["reference"] = reference.name
        report["vs_reference"] = []
        for name in sorted(by_labeler):
            counts, items = agreement_between(by_labeler[name], reference_rankings)
            report["vs_reference"].append(_row(name, reference.name, counts, items))
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    console = Console()
    table = Table(title="Agreement between labelers (items both ranked)")
    for column in ("labeler A", "labeler B", "items", "comparisons", "agreement", "Kendall's tau"):
        table.add_column(column)
    for row in report["pairs"] + [report["overall"]]:
        table.add_row(row["labeler_a"], row["labeler_b"], str(row["items"]), str(row["comparisons"]),
                      fmt(row["agreement"]), fmt(row["kendall_tau"]))
    console.print(table)
    if not report["pairs"]:
        console.print("No two labelers ranked the same item: nothing to compare (set labelers_per_prompt >= 2).")
    if "vs_reference" in report:
        ref = Table(title=f"Each labeler against {report['reference']}")
        for column in ("labeler", "items", "comparisons", "agreement", "Kendall's tau"):
            ref.add_column(column)
        for row in report["vs_reference"]:
            ref.add_row(row["labeler_a"], str(row["items"]), str(row["comparisons"]), fmt(row["agreement"]),
                        fmt(row["kendall_tau"]))
        console.print(ref)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instructgpt agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rankings", help="A rankings.jsonl with several labelers (instructgpt label's output).")
    parser.add_argument("--labeler", default=None,
                        help="Also compare each labeler with `simulated` or `reward_model:PATH`.")
    parser.add_argument("--labeler_noise", type=float, default=0.0, help="Noise of the simulated labeler (default 0).")
    parser.add_argument("--labeler_seed", type=int, default=0, help="Seed of the simulated labeler's noise.")
    parser.add_argument("--output_json", default=None, help="Also write the report to this JSON file.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def _run() -> None:
        from instructgpt.infra.files import atomic_write_json

        by_labeler, prompts = read_rankings(args.rankings)
        reference = None
        if args.labeler:
            from instructgpt.labelers import make_labeler

            if not math.isfinite(args.labeler_noise) or args.labeler_noise < 0:
                raise InstructGPTError(f"--labeler_noise must be a finite number >= 0, got {args.labeler_noise}")
            reference = make_labeler(args.labeler, noise=args.labeler_noise, seed=args.labeler_seed,
                                     source="--labeler")
        report = _nan_to_none(measure(by_labeler, prompts, reference))
        print_report(report)
        if args.output_json:
            atomic_write_json(args.output_json, report)

    run_cli(_run)


if __name__ == "__main__":
    main()
