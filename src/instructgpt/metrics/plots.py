"""The evaluation's figures, drawn with matplotlib's Agg backend (files only, no display needed).

- :func:`plot_win_rates`: one bar per model pair with its 95% Wilson interval, and the 50% line of a coin flip;
- :func:`plot_training_curves`: the PPO run's reward and KL to the SFT policy over training;
- :func:`plot_overoptimization`: the share correct, the labeler's score (and the reward model's) against KL from the
  SFT policy
  across PPO checkpoints. Gao et al. (2022) show the "gold" score rising, then falling while the proxy reward keeps
  rising as KL grows: a curve that turns down here is reward over-optimization;
- :func:`plot_model_metrics`: the per-model metrics side by side (labeler score, RM score, KL, length, ...);
- :func:`plot_frontier`: the reward–KL frontier: the labeler's score against KL from the SFT policy, one point per
  method (PPO, DPO, RLOO, best-of-n, ...) and one line per run whose checkpoints were evaluated.

Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: render to files on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

DPI = 120


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_win_rates(pairs: Sequence[tuple[str, str, Mapping[str, float]]], path: str | Path, labeler: str = "") -> Path:
    """Horizontal bars: the win rate of A over B for each ``(A, B, win_rate_dict)``, with its 95% interval.

    ``win_rate_dict`` is :meth:`instructgpt.metrics.winrate.WinRate.as_dict` (``win_rate``, ``ci_low``, ``ci_high``).
    """
    fig, ax = plt.subplots(figsize=(6.4, 0.6 * max(len(pairs), 1) + 1.4))
    labels = [f"{a} vs {b}" for a, b, _ in pairs]
    rates = [100 * w["win_rate"] for _, _, w in pairs]
    low = [100 * (w["win_rate"] - w["ci_low"]) for _, _, w in pairs]
    high = [100 * (w["ci_high"] - w["win_rate"]) for _, _, w in pairs]
    positions = list(range(len(pairs)))[::-1]  # first pair on top
    ax.barh(positions, rates, xerr=[low, high], color="#4C72B0", capsize=4, height=0.6)
    for y, rate in zip(positions, rates):
        ax.text(min(rate + 2, 92), y, f"{rate:.0f}%", va="center", fontsize=9)
    ax.axvline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(positions, labels)
    ax.set_xlim(0, 100)
    ax.set_xlabel("win rate of the first model, % (ties count half; bars: 95% Wilson interval)")
    ax.set_title("Preference win rates" + (f" under the {labeler} labeler" if labeler else ""))
    return _save(fig, path)


def plot_training_curves(
    steps: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    kl: Sequence[float | None],
    path: str | Path,
    x_label: str = "episode",
) -> Path:
    """Two panels over PPO training: reward-like series (``objective/scores``, ``objective/rlhf_reward``) and KL."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True)
    for name, values in series.items():
        xs = [x for x, v in zip(steps, values) if v is not None]
        top.plot(xs, [v for v in values if v is not None], label=name, linewidth=1.5)
    top.set_ylabel("reward (normalized RM score)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    top.set_title("PPO training")
    xs = [x for x, v in zip(steps, kl) if v is not None]
    bottom.plot(xs, [v for v in kl if v is not None], color="#C44E52", linewidth=1.5)
    bottom.set_ylabel("KL(policy || SFT), nats per response")
    bottom.set_xlabel(x_label)
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_overoptimization(
    points: Sequence[Mapping[str, Any]], path: str | Path, labeler: str = "labeler", reference: str = "SFT"
) -> Path:
    """Across PPO checkpoints, against KL from the reference (SFT): the share of correct answers (and on-task ones)
    when the labeler tells them, and the labeler score with the RM score (right axis, when present).

    ``points``: one per checkpoint, with ``kl``, ``labeler_score``, optionally ``labeler_correct``,
    ``labeler_on_task``, ``rm_score`` and a ``label`` (``sft``, ``step 40``, ...), in training order. The share
    correct comes first: a labeler score can rise while fewer questions are answered (issue 12), a share correct
    cannot.
    """
    points = sorted(points, key=lambda p: p["kl"])
    kl = [p["kl"] for p in points]
    x_label = f"KL(policy || {reference}) on held-out prompts, nats per response"
    has_shares = all(p.get("labeler_correct") is not None for p in points)
    fig, axes = plt.subplots(1, 2 if has_shares else 1, figsize=(12.0 if has_shares else 6.4, 4.4), squeeze=False)
    if has_shares:
        shares = axes[0][0]
        shares.plot(kl, [100 * p["labeler_correct"] for p in points], "o-", color="#55A868", label="correct")
        if all(p.get("labeler_on_task") is not None for p in points):
            shares.plot(kl, [100 * p["labeler_on_task"] for p in points], "^--", color="#8172B2", label="on task")
        for p in points:
            shares.annotate(
                str(p.get("label", "")),
                (p["kl"], 100 * p["labeler_correct"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        shares.set_xlabel(x_label)
        shares.set_ylabel(f"share of responses ({labeler}), %")
        shares.grid(alpha=0.3)
        shares.legend(fontsize=8, loc="lower right")
        shares.set_title("Share correct across PPO checkpoints")
    ax = axes[0][-1]
    ax.plot(kl, [p["labeler_score"] for p in points], "o-", color="#4C72B0", label=f"{labeler} score (gold)")
    for p in points:
        ax.annotate(
            str(p.get("label", "")),
            (p["kl"], p["labeler_score"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"mean {labeler} score", color="#4C72B0")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if all(p.get("rm_score") is not None for p in points):
        twin = ax.twinx()
        twin.plot(kl, [p["rm_score"] for p in points], "s--", color="#DD8452", label="reward model score (proxy)")
        twin.set_ylabel("mean normalized RM score", color="#DD8452")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    ax.set_title("Reward over-optimization check across PPO checkpoints")
    return _save(fig, path)


def plot_model_metrics(
    metrics: Mapping[str, Mapping[str, Any]], keys: Sequence[tuple[str, str]], path: str | Path
) -> Path:
    """One small bar chart per metric (``keys``: ``(metric key, axis title)``), the models side by side."""
    keys = [(k, title) for k, title in keys if any(m.get(k) is not None for m in metrics.values())]
    names = list(metrics)
    columns = min(max(len(keys), 1), 4)
    rows = max(1, -(-len(keys) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.4, 2.9 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, keys):
        values = [metrics[n].get(key) for n in names]
        ax.bar(
            range(len(names)),
            [v if v is not None else 0.0 for v in values],
            color=[colors[i % len(colors)] for i in range(len(names))],
        )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_frontier(
    points: Mapping[str, Mapping[str, Any]],
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    labeler: str = "labeler",
    reference: str = "sft",
) -> Path:
    """The reward–KL frontier: the labeler's (gold) score against KL(policy || reference), nats per response.

    ``points``: ``{method: {"kl": ..., "labeler_score": ...}}``, one marker per evaluated model (methods without a
    KL, such as another tokenizer's model, are left out). ``curves``: ``{run: [{"kl", "labeler_score", "label"},
    ...]}``, the checkpoints of a run in training order, drawn as a line. A method up and to the left of another
    buys more of the judge's score for less KL: the comparison Gao et al. (2022) and AlpacaFarm (Dubois et al.
    2023) draw between PPO, best-of-n and the others.
    """
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {name: colors[i % len(colors)] for i, name in enumerate(dict.fromkeys([*points, *curves]))}
    for name, run in curves.items():
        run = [p for p in run if p.get("kl") is not None and p.get("labeler_score") is not None]
        if len(run) >= 2:
            ax.plot(
                [p["kl"] for p in run],
                [p["labeler_score"] for p in run],
                "-",
                marker=".",
                alpha=0.6,
                color=color_of[name],
                label=f"{name} checkpoints",
            )
    for name, p in points.items():
        if p.get("kl") is None or p.get("labeler_score") is None:
            continue
        ax.scatter([p["kl"]], [p["labeler_score"]], s=60, color=color_of[name], edgecolor="black", zorder=3, label=name)
        ax.annotate(name, (p["kl"], p["labeler_score"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"KL(policy || {reference}) on held-out prompts, nats per response")
    ax.set_ylabel(f"mean {labeler} score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Reward–KL frontier of each method")
    return _save(fig, path)
