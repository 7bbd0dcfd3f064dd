"""What the pipeline prints (main process only): the plan, each stage's banner, and where everything ended up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructgpt.infra.parser import Recipe
from instructgpt.infra.processes import process_state
from instructgpt.stages.pipeline.settings import Stage
from instructgpt.stages.pipeline.steps import status_of


class Console:
    """Banners, tables and messages with rich (main process only)."""

    def __init__(self) -> None:
        from rich.console import Console as RichConsole

        self.main = process_state().is_main_process
        self.rich = RichConsole(highlight=False)

    def banner(self, index: int, total: int, stage: Stage | str, status: str) -> None:
        if not self.main:
            return
        label = stage.label if isinstance(stage, Stage) else stage
        self.rich.rule(f"[bold cyan]Stage {index}/{total}: {label}[/] [dim]({status})[/]")

    def print(self, message: str) -> None:
        if self.main:
            self.rich.print(message)

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        if not self.main:
            return
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        self.rich.print(table)


def print_final_summary(console: Console, stages: list[Stage], eval_args: Any, summary: dict[str, Any]) -> None:
    rows = []
    for stage in stages:
        t = summary["stages"].get(stage.label, {})
        rows.append(
            [
                stage.label,
                str(stage.output_dir),
                f"{t['seconds']:.0f}" if "seconds" in t else "-",
                f"{t['cpu_seconds']:.0f}" if "cpu_seconds" in t else "-",
            ]
        )
    if eval_args is not None:
        t = summary["stages"].get("eval", {})
        rows.append(
            [
                "eval",
                eval_args.output_dir,
                f"{t['seconds']:.0f}" if "seconds" in t else "-",
                f"{t['cpu_seconds']:.0f}" if "cpu_seconds" in t else "-",
            ]
        )
    console.table(
        "Where everything is (seconds: the last run of each stage)", ["stage", "output", "seconds", "CPU s"], rows
    )
    headline = summary.get("headline", [])
    for h in [h for h in headline if h.get("reference") in (h["model"], h["baseline"])] or headline:
        kl = h.get("kl_to_reference")
        kl_text = (
            f"; KL({h['model']}||{h['reference']}) = {kl:.2f} nats" if kl is not None and h.get("reference") else ""
        )
        console.print(
            f"[bold]{h['model']} vs {h['baseline']}[/]: win rate {100 * h['win_rate']:.1f}% "
            f"[{100 * h['ci_low']:.1f}, {100 * h['ci_high']:.1f}]{kl_text}"
        )
    for name, shares in summary.get("shares", {}).items():
        console.print(
            f"[bold]{name}[/]: correct {100 * shares['correct']:.1f}%, on task {100 * shares['on_task']:.1f}%, "
            f"off topic {100 * shares['off_topic']:.1f}%"
        )
    if eval_args is not None:
        out = Path(eval_args.output_dir)
        console.print(f"Report: {out / 'report.md'}  Results: {out / 'results.json'}  Plots: {out / 'plots'}/")


def print_plan(console: Console, recipe: Recipe, summary: dict[str, Any], stages: list[Stage], eval_args: Any) -> None:
    """The table of every step before the first runs: its recipe, its output and whether it is done already."""
    total = len(stages) + (eval_args is not None)
    console.table(
        f"Pipeline {recipe.source} -> {summary['output_dir']} (W&B group {summary['wandb_group']})",
        ["#", "stage", "recipe", "output", "status"],
        [[str(i + 1), s.label, str(s.recipe), str(s.output_dir), status_of(s.output_dir)] for i, s in enumerate(stages)]
        + (
            [[str(total), "eval", "-", eval_args.output_dir, status_of(Path(eval_args.output_dir))]]
            if eval_args
            else []
        ),
    )
