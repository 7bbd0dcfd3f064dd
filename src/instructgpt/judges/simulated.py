"""The simulated labeler (``labeler: simulated``): the tiny world's rubric, with optional noise, as a labeler.

The rubric itself, fixed before any training, lives with its world in :mod:`instructgpt.tinyworld.rubric`; this
module adds what makes it a labeler: the :class:`~instructgpt.judges.base.Labeler` interface and the seeded noise
that lets two simulated labelers disagree as people do.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from instructgpt.judges.base import Labeler
from instructgpt.tinyworld.rubric import Judgement, Rubric


class SimulatedLabeler(Labeler):
    """The tiny world's labeler: a fixed rubric (:class:`instructgpt.tinyworld.rubric.Rubric`, whose docstring
    writes it down), optionally noisy.

    ``on_unknown`` says what the rubric does with a prompt that is not an instruction of the tiny world
    (``"error"``, the default, or ``"neutral"``: see the rubric).

    **Noise**: with ``noise > 0`` every score gets independent Gaussian noise of that standard deviation (in score
    units: 1.0 is one off-instruction sentence), drawn from a ``numpy`` generator seeded with ``seed`` and the
    (prompt, response) text, so two labelers with different seeds disagree now and then, as people do, while one
    labeler judges a given pair the same way every time it sees it.
    :data:`HUMAN_AGREEMENT_NOISE` gives 80% inter-labeler agreement on comparisons of responses sampled from the
    tiny SFT model, near InstructGPT's 73% (measured numbers in data/README.md). With ``noise == 0`` the
    labeler is deterministic.
    """

    def __init__(self, noise: float = 0.0, seed: int = 0, on_unknown: Literal["error", "neutral"] = "error"):
        if noise < 0 or not math.isfinite(noise):
            raise ValueError(f"noise must be a finite number >= 0, got {noise}")
        self.noise = float(noise)
        self.seed = seed
        self.rubric = Rubric(on_unknown)
        self.name = "simulated" if self.noise == 0 else f"simulated(noise={self.noise:g},seed={seed})"

    def _noise(self, prompt: Any, response: str) -> float:
        """This labeler's noise on one (prompt, response): Gaussian, drawn from a generator seeded by the labeler's
        seed and the pair's text, so the same labeler judges a pair the same way whenever it sees it (a collection
        resumed after an interruption ranks exactly as an uninterrupted one)."""
        key = zlib.crc32(json.dumps([prompt, response], ensure_ascii=False).encode("utf-8"))
        return float(np.random.default_rng([self.seed, key]).normal(0.0, self.noise))

    def judge(self, prompt: Any, response: str) -> Judgement:
        """The noiseless rubric's verdict, term by term."""
        return self.rubric.judge(prompt, response)

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        scores = np.array([self.rubric.score(p, r) for p, r in zip(prompts, responses)], dtype=float)
        if self.noise > 0:
            scores = scores + np.array([self._noise(p, r) for p, r in zip(prompts, responses)])
        return scores.tolist()


# Noise level that gives inter-labeler agreement near InstructGPT's 73% on the tiny world's comparisons (80% on the
# tiny SFT model's samples; two SimulatedLabelers with different seeds; measured in data/README.md).
HUMAN_AGREEMENT_NOISE = 1.0
