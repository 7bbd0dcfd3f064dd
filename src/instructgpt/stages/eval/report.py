"""The report: ``report.md``, the same numbers on the dashboards, and a summary on the console.

``render_report`` turns ``results.json``'s dict (and the completions) into markdown: the judge, the win rates with
their 95% Wilson and paired bootstrap intervals, the judge's verdicts, every method against the reference, the
per-model metrics, the shares correct / on task / off topic, the out-of-distribution prompts, the PPO run's
training and over-optimization check, the reward–KL frontier, the plots and example completions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from instructgpt.infra.log import get_logger
from instructgpt.stages.eval.results import PLOTS_DIR, REPORT_FILE, RESULTS_FILE

logger = get_logger(__name__)


# (metric key, title) in the order the report's table shows them
METRIC_COLUMNS: list[tuple[str, str]] = [
    ("path", "path"),
    ("labeler_score", "labeler score"),
    ("labeler_correct", "correct"),
    ("labeler_on_task", "on task"),
    ("labeler_off_topic", "off topic"),
    ("rm_score", "RM score (normalized)"),
    ("rm_disagreement", "RM members' disagreement (std)"),
    ("kl_to_reference", "KL to reference (nats)"),
    ("response_tokens", "length (tokens)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("eos_fraction", "ends with EOS"),
]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def _pct(w: dict[str, Any]) -> str:
    if w["win_rate"] is None:
        return "– (no verdict)"
    return f"{100 * w['win_rate']:.1f}% [{100 * w['ci_low']:.1f}, {100 * w['ci_high']:.1f}]"


def _boot(w: dict[str, Any]) -> str:
    if w.get("bootstrap_low") is None:
        return "–"
    return f"[{100 * w['bootstrap_low']:.1f}, {100 * w['bootstrap_high']:.1f}]"


def _prompt_str(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "*(empty)*"


def _share(cell: dict[str, Any]) -> str:
    return f"{100 * cell['share']:.1f}% [{100 * cell['ci_low']:.1f}, {100 * cell['ci_high']:.1f}]"


def shares_table(shares: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: per model and group, the shares correct / on task / off topic with their 95% intervals."""
    lines = [
        "| model | prompts | n | correct [95% CI] | on task [95% CI] | off topic [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, groups in shares.items():
        for group, cells in groups.items():
            lines.append(
                f"| {name} | {group} | {cells['correct']['n']} | {_share(cells['correct'])} | "
                f"{_share(cells['on_task'])} | {_share(cells['off_topic'])} |"
            )
    return lines


def win_rate_table(headline: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | baseline | win rate [95% Wilson] | 95% bootstrap | wins / ties / losses | KL to reference (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for h in headline:
        lines.append(
            f"| {h['model']} | {h['baseline']} | {_pct(h)} | {_boot(h)} | {h['wins']} / {h['ties']} / "
            f"{h['losses']} | {_fmt(h['kl_to_reference'], 2)} |"
        )
    return lines


def judge_line(results: dict[str, Any]) -> str:
    """Which judge decided the win rates, and how."""
    judge = results.get("judge")
    if not judge:
        return "Judge: **none** (no win rates)."
    how = (
        "pairwise: it compared the two answers to each prompt in both orders; disagreeing verdicts count as a tie"
        if judge["kind"] == "pairwise"
        else "it scored each answer; the higher score wins"
    )
    line = f"Judge: **{judge['name']}** ({how})."
    if not judge.get("independent_of_reward_model", True):
        line += (
            " This judge is the reward model given as --reward_model: if PPO optimized it, the win rates "
            "measure the proxy, not quality."
        )
    return line


def judge_counts_table(counts: dict[str, Any]) -> list[str]:
    """Markdown rows: per pair of models, what the pairwise judge's verdicts were."""
    lines = [
        "| pair | prompts | judged | consistent | inconsistent (tie) | identical answers (tie) | unparseable "
        "(left out) | failed (left out) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, c in counts["pairs"].items():
        lines.append(
            f"| {pair} | {c['comparisons']} | {c['judged']} | {c['consistent']} | {c['inconsistent']} | "
            f"{c['identical']} | {c['unparseable']} | {c['failed']} |"
        )
    examples = [e for c in counts["pairs"].values() for e in c.get("unparseable_examples", [])][:3]
    if examples:
        lines += ["", "Unparseable answers, e.g.: " + "; ".join(f"`{_cell(e)[:80]}`" for e in examples)]
    return lines


def methods_table(results: dict[str, Any]) -> list[str]:
    """Every method against the reference (the SFT policy) in one table: win rate, judge and RM scores, KL, length
    and diversity; the README's comparison of PPO, DPO, RLOO and best-of-n."""
    ref = (results.get("reference") or {}).get("name")
    win_rate = results.get("win_rate") or {}
    names = [n for n in results["models"] if n != ref and ref in win_rate.get(n, {})]
    if not names:
        return []
    lines = [
        f"## Methods side by side (against {ref})",
        "",
        f"Win rate over **{ref}** under the {results.get('labeler') or 'labeler'} judge (ties count half) with its "
        "95% Wilson and paired bootstrap intervals; mean judge score (pointwise judges); mean normalized RM score "
        "(the proxy the RL methods optimized); "
        f"KL to {ref} (best-of-n: the closed form log n - (n-1)/n); response length; distinct-1/2.",
        "",
        f"| method | win rate over {ref} [95% Wilson] | 95% bootstrap | judge score | RM score | KL (nats) | "
        "length (tokens) | distinct-1 | distinct-2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [ref, *names]:
        m = results["metrics"][name]
        rate, boot = ("–", "–") if name == ref else (_pct(win_rate[name][ref]), _boot(win_rate[name][ref]))
        lines.append(
            f"| {name} | {rate} | {boot} | {_fmt(m.get('labeler_score'))} | {_fmt(m.get('rm_score'))} | "
            f"{_fmt(m.get('kl_to_reference'), 2)} | {_fmt(m.get('response_tokens'), 1)} | "
            f"{_fmt(m.get('distinct_1'))} | {_fmt(m.get('distinct_2'))} |"
        )
    return lines + [""]


def frontier_section(results: dict[str, Any]) -> list[str]:
    """The checkpoints of every evaluated run other than PPO's (whose table is the over-optimization check)."""
    sweeps = {
        k: v
        for k, v in (results.get("sweeps") or {}).items()
        if v is not results.get("checkpoints") and v != results.get("checkpoints")
    }
    if not sweeps:
        return []
    lines = [
        "## Reward–KL frontier: checkpoints",
        "",
        "| run | checkpoint | KL (nats) | judge score | share correct | RM score |",
        "|---|---|---|---|---|---|",
    ]
    for run, points in sweeps.items():
        for p in points:
            lines.append(
                f"| {run} | {p['label']} | {_fmt(p['kl'], 2)} | {_fmt(p['labeler_score'])} | "
                f"{_fmt(p.get('labeler_correct'))} | {_fmt(p.get('rm_score'))} |"
            )
    return lines + [""]


def examples(rows: list[dict[str, Any]], names: list[str]) -> list[str]:
    lines = []
    for row in rows:
        group = f" ({row['group']})" if row.get("group") else ""
        lines += [
            f"**Prompt{group}:** {_cell(_prompt_str(row['prompt']))}",
            "",
            "| model | response | labeler score | correct | on task |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            flags = [
                ("yes" if row[f"{name}_{k}"] else "no") if f"{name}_{k}" in row else "–" for k in ("correct", "on_task")
            ]
            lines.append(
                f"| {name} | {_cell(row[name])} | {_fmt(row.get(f'{name}_labeler_score'), 2)} | "
                f"{flags[0]} | {flags[1]} |"
            )
        lines.append("")
    return lines


def render_report(
    results: dict[str, Any],
    completions: list[dict[str, Any]],
    num_examples: int,
    ood_completions: list[dict[str, Any]] | None = None,
) -> str:
    names = list(results["models"])
    s = results["sampling"]
    lines = [
        "# Evaluation report",
        "",
        f"{results['num_prompts']} prompts from `{results['prompts']}`; one response per model, sampled with "
        f"temperature {s['temperature']}, top-k {s['top_k']}, top-p {s['top_p']}, at most {s['max_new_tokens']} "
        f"new tokens, seed {s['seed']}.",
        judge_line(results),
        f"Reward model: `{results['reward_model'] or 'none'}`. "
        f"KL reference: **{(results['reference'] or {}).get('name') or 'none'}**.",
        "",
    ]
    if results["headline"]:
        lines += [
            "## Win rates",
            "",
            "Win rate of the model over the baseline under the judge (ties count half), with its 95% Wilson "
            "interval (ties as half a success: approximate) and its 95% paired bootstrap interval (prompts "
            "resampled 2000 times, seed 0: ties counted exactly), and the model's KL to the reference.",
            "",
        ] + win_rate_table(results["headline"])
        lines += [
            "",
            "Full matrix (row over column):",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for a in names:
            cells = [
                "–"
                if a == b or results["win_rate"][a][b]["win_rate"] is None
                else f"{100 * results['win_rate'][a][b]['win_rate']:.1f}%"
                for b in names
            ]
            lines.append(f"| **{a}** | " + " | ".join(cells) + " |")
        lines.append("")
    if (results.get("judge") or {}).get("counts"):
        lines += [
            "### The judge's verdicts",
            "",
            "Each pair of answers was judged twice, with the positions swapped. Unparseable answers and failed "
            "requests are left out of the win rate (its n counts judged prompts only).",
            "",
        ]
        lines += judge_counts_table(results["judge"]["counts"]) + [""]
    lines += methods_table(results)
    # a column no model has (the disagreement of a single reward model) is left out
    columns = [(k, t) for k, t in METRIC_COLUMNS[1:] if any(k in results["metrics"][n] for n in names)]
    lines += [
        "## Per-model metrics",
        "",
        "| model | " + " | ".join(t for _, t in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name in names:
        m = results["metrics"][name]
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in columns) + " |")
    lines.append("")
    if results.get("task_shares"):
        lines += (
            [
                "## What the win rate hides: correct, on task, off topic",
                "",
                "Share of responses that are correct, that attempt the asked task (right or wrong), and that stray "
                "off topic (a sentence about another creature or another question), per task family, with 95% "
                "Wilson intervals.",
                "",
            ]
            + shares_table(results["task_shares"])
            + [""]
        )
    ood = results.get("ood")
    if ood:
        lines += [
            "## Out of distribution",
            "",
            f"{ood['num_prompts']} prompts from `{ood['prompts']}`, sampled as above.",
            "",
        ]
        if ood["headline"]:
            lines += win_rate_table(ood["headline"]) + [""]
        if ood.get("judge_counts"):
            lines += judge_counts_table(ood["judge_counts"]) + [""]
        if ood.get("task_shares"):
            lines += shares_table(ood["task_shares"]) + [""]
        if ood_completions and num_examples > 0:
            first_of_group: dict[str, list[dict[str, Any]]] = {}
            for row in ood_completions:
                taken = first_of_group.setdefault(row.get("group", ""), [])
                if len(taken) < num_examples:
                    taken.append(row)
            lines += ["### Examples", ""] + examples(
                [r for rows in first_of_group.values() for r in rows][: 3 * num_examples], names
            )
    if results.get("ppo_training"):
        t = results["ppo_training"]
        lines += [
            "## PPO training",
            "",
            f"Run `{results['ppo_run']}`: last update's score {_fmt(t.get('scores'))}, "
            f"KL {_fmt(t.get('kl'))} nats, episode {t.get('episode')}.",
            "",
        ]
    if results.get("checkpoints"):
        lines += [
            "## Over-optimization check",
            "",
            "Labeler score (the gold judge) and RM score (the proxy PPO optimized) against KL from the "
            "reference, across PPO checkpoints. A labeler score that falls while the RM score rises is reward "
            "over-optimization, as is a share correct that falls.",
            "",
            "| checkpoint | KL (nats) | labeler score | share correct | share on task | RM score |",
            "|---|---|---|---|---|---|",
        ]
        for p in results["checkpoints"]:
            lines.append(
                f"| {p['label']} | {_fmt(p['kl'], 2)} | {_fmt(p['labeler_score'])} | "
                f"{_fmt(p.get('labeler_correct'))} | {_fmt(p.get('labeler_on_task'))} | {_fmt(p.get('rm_score'))} |"
            )
        lines.append("")
    lines += frontier_section(results)
    if results.get("plots"):
        lines += ["## Plots", ""] + [f"![{k}]({v})" for k, v in results["plots"].items()] + [""]
    if completions and num_examples > 0:
        lines += ["## Example completions", ""] + examples(completions[:num_examples], names)
    return "\n".join(lines)


def log_results(tracker: Any, results: dict[str, Any], completions: list[dict[str, Any]], output_dir: Path) -> None:
    """The same numbers as results.json, the plots as images, and a table of completions, on every dashboard."""
    summary: dict[str, Any] = {}
    for name, m in results["metrics"].items():
        summary.update({f"eval/{name}/{k}": v for k, v in m.items() if isinstance(v, (int, float))})
    for prefix, part in (("", results), ("ood/", results.get("ood") or {})):
        for h in part.get("headline", []):
            key = f"{prefix}win_rate/{h['model']}_vs_{h['baseline']}"
            if h["win_rate"] is not None:
                summary.update(
                    {
                        key: h["win_rate"],
                        f"{key}_ci_low": h["ci_low"],
                        f"{key}_ci_high": h["ci_high"],
                        f"{key}_bootstrap_low": h["bootstrap_low"],
                        f"{key}_bootstrap_high": h["bootstrap_high"],
                    }
                )
        for name, groups in part.get("task_shares", {}).items():
            summary.update(
                {
                    f"{prefix}shares/{name}/{group}/{key}": cell["share"]
                    for group, cells in groups.items()
                    for key, cell in cells.items()
                }
            )
    tracker.log(summary, step=0)
    tracker.summary(summary)
    tracker.log_images({f"plots/{k}": output_dir / v for k, v in results.get("plots", {}).items()}, step=0)
    names = list(results["models"])
    columns = ["prompt"] + [c for n in names for c in (n, f"{n}_labeler_score") if c in completions[0] or c == n]
    tracker.log_table(
        "completions",
        [{c: _prompt_str(r["prompt"]) if c == "prompt" else r.get(c) for c in columns} for r in completions],
        step=0,
    )


def print_summary(results: dict[str, Any], output_dir: Path) -> None:
    """The judge, the headline win rates and the shares, on the console."""
    logger.info(judge_line(results))
    for h in results["headline"]:
        kl = h["kl_to_reference"]
        kl_text = f", KL({h['model']}||{h['reference']}) = {kl:.2f} nats" if kl is not None and h["reference"] else ""
        logger.info(f"{h['model']} vs {h['baseline']}: win rate {_pct(h)}{kl_text}")
    for name, groups in results.get("task_shares", {}).items():
        cells = groups["all"]
        logger.info(
            f"{name}: correct {_share(cells['correct'])}, on task {_share(cells['on_task'])}, "
            f"off topic {_share(cells['off_topic'])}"
        )
    logger.info(
        f"evaluation written to {output_dir / RESULTS_FILE}, {output_dir / REPORT_FILE} and {output_dir / PLOTS_DIR}/"
    )
