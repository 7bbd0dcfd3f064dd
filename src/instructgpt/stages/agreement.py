"""How much labelers agree: ``instructgpt agreement rankings.jsonl``.

    instructgpt agreement runs/tiny/label/rankings.jsonl
    instructgpt agreement runs/tiny/label/rankings.jsonl --labeler simulated            # each labeler vs the rubric
    instructgpt agreement runs/tiny/label/rankings.jsonl --labeler reward_model:runs/tiny/rm --output_json a.json

Reads rankings from several labelers (``instructgpt label``'s output; any rankings file whose rows carry
``labeler_id`` or ``labeler``) and reports, for every two labelers, on the items both ranked: pairwise agreement
(the share of response pairs they order the same way; InstructGPT's labelers: about 73%) and Kendall's tau
(tau-b, which allows ties); and over all pairs of labelers together. With ``--labeler``, the same for each labeler
against the simulated labeler or a reward model, which scores every response the people ranked. The math is in
:mod:`instructgpt.judges.agreement`.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import atomic_write_json
from instructgpt.judges import agreement_report, make_labeler, read_rankings


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
        table.add_row(
            row["labeler_a"],
            row["labeler_b"],
            str(row["items"]),
            str(row["comparisons"]),
            fmt(row["agreement"]),
            fmt(row["kendall_tau"]),
        )
    console.print(table)
    if not report["pairs"]:
        console.print("No two labelers ranked the same item: nothing to compare (set labelers_per_prompt >= 2).")
    if "vs_reference" in report:
        ref = Table(title=f"Each labeler against {report['reference']}")
        for column in ("labeler", "items", "comparisons", "agreement", "Kendall's tau"):
            ref.add_column(column)
        for row in report["vs_reference"]:
            ref.add_row(
                row["labeler_a"],
                str(row["items"]),
                str(row["comparisons"]),
                fmt(row["agreement"]),
                fmt(row["kendall_tau"]),
            )
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
    parser = argparse.ArgumentParser(
        prog="instructgpt agreement", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rankings", help="A rankings.jsonl with several labelers (instructgpt label's output).")
    parser.add_argument(
        "--labeler", default=None, help="Also compare each labeler with `simulated` or `reward_model:PATH`."
    )
    parser.add_argument("--labeler_noise", type=float, default=0.0, help="Noise of the simulated labeler (default 0).")
    parser.add_argument("--labeler_seed", type=int, default=0, help="Seed of the simulated labeler's noise.")
    parser.add_argument("--output_json", default=None, help="Also write the report to this JSON file.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def _run() -> None:
        by_labeler, prompts = read_rankings(args.rankings)
        reference = None
        if args.labeler:
            if not math.isfinite(args.labeler_noise) or args.labeler_noise < 0:
                raise InstructGPTError(f"--labeler_noise must be a finite number >= 0, got {args.labeler_noise}")
            reference = make_labeler(args.labeler, noise=args.labeler_noise, seed=args.labeler_seed, source="--labeler")
        report = _nan_to_none(agreement_report(by_labeler, prompts, reference))
        print_report(report)
        if args.output_json:
            atomic_write_json(args.output_json, report)

    run_cli(_run)


if __name__ == "__main__":
    main()
