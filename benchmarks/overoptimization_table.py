"""The over-optimization table from an evaluation's checkpoint sweeps (benchmarks/overoptimization.sh).

    python benchmarks/overoptimization_table.py runs/overopt/eval/results.json

For each run: the gold (noiseless rubric) score and share correct at the checkpoint where the gold score peaks and at
the last checkpoint, the KL to the SFT model at the peak, and how far the gold score fell from its peak by the end.
"""

from __future__ import annotations

import json
import sys


def rows(results: dict) -> list[list[str]]:
    table = []
    for name, points in results.get("sweeps", {}).items():
        trained = [p for p in points if p.get("step")]  # the SFT reference is step 0
        if not trained:
            continue
        peak = max(trained, key=lambda p: p["labeler_score"])
        end = trained[-1]
        table.append(
            [
                name,
                f"{peak['labeler_score']:.3f} (step {peak['step']})",
                f"{end['labeler_score']:.3f}",
                f"{peak['labeler_score'] - end['labeler_score']:+.3f}",
                f"{peak['kl']:.2f}",
                f"{end['kl']:.2f}",
                f"{100 * (peak.get('labeler_correct') or 0):.1f}%",
                f"{100 * (end.get('labeler_correct') or 0):.1f}%",
                f"{100 * max(p.get('labeler_correct') or 0 for p in trained):.1f}%",
            ]
        )
    return table


def main(path: str) -> None:
    results = json.loads(open(path, encoding="utf-8").read())
    header = [
        "run",
        "gold at peak",
        "gold at end",
        "fall",
        "KL at peak",
        "KL at end",
        "correct at peak",
        "correct at end",
        "best correct",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows(results):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
