"""Inter-labeler agreement of the simulated labeler on a collection's comparisons (data/README.md's table).

    python scripts/labeler_agreement.py runs/tiny/pipeline/collect/rankings.jsonl

Every C(K, 2) pair of each prompt's K responses counts once; two noisy labelers (seeds 1 and 2) per noise level,
and each noisy labeler against the noiseless rubric.
"""

from __future__ import annotations

import json
import sys

from instructgpt.judges import SimulatedLabeler, pairwise_agreement


def main(path: str) -> None:
    with open(path, encoding="utf-8") as handle:
        pools = [(row["prompt"], row["responses"]) for row in map(json.loads, handle)]
    gold = SimulatedLabeler(0.0)
    print("| `labeler_noise` | two noisy labelers agree | noisy labeler agrees with the noiseless rubric |")
    print("|---|---|---|")
    for noise in (0.5, 1.0, 1.5):
        a, b = SimulatedLabeler(noise, seed=1), SimulatedLabeler(noise, seed=2)
        print(
            f"| {noise} | {100 * pairwise_agreement(a, b, pools):.1f}% "
            f"| {100 * pairwise_agreement(a, gold, pools):.1f}% |"
        )


if __name__ == "__main__":
    main(sys.argv[1])
