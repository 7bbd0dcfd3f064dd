"""The generated reference of the documentation site: every recipe field of every stage, and every command's help.

Everything comes from the code at build time, so the pages cannot drift from ``--help``:

- the stages from the registry (``instructgpt.stages.STAGES``; ``load_stage(name).arguments()`` gives the
  dataclasses a stage's recipe fills), each field's range from ``instructgpt.infra.validation.range_of``;
- the commands from ``[project.scripts]`` in ``pyproject.toml`` and the subcommands of ``instructgpt`` (its stages
  and ``instructgpt.cli.TOOLS``), each with the text its own ``--help`` prints.

Used two ways:

- as an MkDocs hook (``hooks:`` in ``mkdocs.yml``): the pages are added to the build in memory and to the nav under
  "Reference"; nothing is written to ``docs/``;
- as a script, ``python scripts/gen_reference.py --out DIR``, which writes the same Markdown files to ``DIR``
  (to read them without building the site).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import importlib
import io
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "src") not in sys.path:  # a checkout that was not installed with `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))

from instructgpt.cli import TOOLS  # noqa: E402
from instructgpt.infra.aliases import ALIASES, DONE_BY_US  # noqa: E402
from instructgpt.infra.validation import range_of  # noqa: E402
from instructgpt.stages import STAGES, load_stage  # noqa: E402

RECIPES_DIR = "reference/recipes"  # where the per-stage pages go, under docs/
CLI_PAGE = "reference/cli.md"
ALIASES_PAGE = "reference/renamed-keys.md"
API_DIR = "reference/api"  # one page per module: its docstrings


# ---- recipe fields -------------------------------------------------------------------------------------------


def stage_fields(stage: str) -> list[tuple[type, dataclasses.Field]]:
    """Every field a ``stage`` recipe can set, with the dataclass it belongs to, in the parser's order.

    Fields with ``init=False`` are left out: the parser (``HfArgumentParser``) does not offer them either.
    """
    return [(cls, f) for cls in load_stage(stage).arguments() for f in dataclasses.fields(cls) if f.init]


def type_text(annotation: Any) -> str:
    """A field's type as a reader would write it: ``int``, ``str | None``, ``list[str]``, ``SchedulerType | str``."""
    if isinstance(annotation, str):  # a module with `from __future__ import annotations`
        return annotation.replace("typing.", "")
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation).replace("typing.", "")
    for module in (
        "transformers.trainer_utils.",
        "transformers.training_args.",
        "transformers.debug_utils.",
        "transformers.utils.generic.",
        "trl.trainer.",
        "NoneType",
    ):
        text = text.replace(module, "" if module != "NoneType" else "None")
    return text.replace("<class '", "").replace("'>", "")


def default_text(field: dataclasses.Field) -> str:
    """The default a recipe gets when it leaves the field out, as YAML would read it; ``required`` when none."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f"`{json.dumps(value)}`"  # quoted, with \n for a newline, as YAML reads a double-quoted string
    return f"`{value!r}`"


def cell(text: str) -> str:
    """Text that stays inside one cell of a Markdown table: one line, a ``|`` escaped unless in a code span.

    (The table extension leaves a ``|`` inside backticks alone, and would print an escaped one there verbatim.)
    """
    parts = " ".join(str(text).split()).split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def help_text(field: dataclasses.Field) -> str:
    help_ = field.metadata.get("help", "") or ""
    choices = field.metadata.get("choices")
    if choices and "one of" not in help_.lower():
        help_ = f"{help_} Choices: {', '.join(f'`{c}`' for c in choices)}."
    return help_


def commands_for(stage: str) -> list[str]:
    """The commands that run ``stage``: ``instructgpt <stage>``, and any console script whose target is its module."""
    module = STAGES[stage]
    scripts = [name for name, target in console_scripts().items() if target.split(":")[0] == module]
    return [f"instructgpt {stage}", *scripts]


def recipe_page(stage: str) -> str:
    """The reference page of one stage: its module's summary, then one table per dataclass of its recipe."""
    module = load_stage(stage)
    summary = (module.__doc__ or "").strip().split("\n\n")[0]
    fields = stage_fields(stage)
    owners: dict[str, list[str]] = {}
    for cls, f in fields:
        owners.setdefault(f.name, []).append(cls.__name__)
    lines = [
        f"# `{stage}` recipe",
        "",
        "<!-- generated by scripts/gen_reference.py from the stage's dataclasses; do not edit -->",
        "",
        " ".join(summary.split()),
        "",
        "Run it with " + ", ".join(f"`{c}`" for c in commands_for(stage)) + f", or `instructgpt RECIPE.yaml` for a "
        f"recipe with `stage: {stage}`. Every field below is a recipe key and a `--key value` override; "
        f"`{commands_for(stage)[0]} --help` prints the same list.",
        "",
        f"{len(fields)} fields. **Range**: the values the recipe is checked against when it is read "
        "(see [Reference](../index.md#ranges)).",
        "",
    ]
    for cls in module.arguments():
        own = [f for c, f in fields if c is cls]
        lines += [
            f"## {cls.__name__}",
            "",
            f"From `{cls.__module__}`. {len(own)} fields.",
            "",
            "| key | type | default | range | help |",
            "|---|---|---|---|---|",
        ]
        for f in own:
            also = [o for o in owners[f.name] if o != cls.__name__]
            note = f" (also in {', '.join(also)}: one value sets both)" if also else ""
            range_, type_ = range_of(f), f"`{type_text(f.type)}`"
            lines.append(
                f"| `{f.name}` | {cell(type_)} | {cell(default_text(f))} | "
                f"{f'`{range_}`' if range_ else ''} | {cell(help_text(f) + note)} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---- keys the libraries renamed -------------------------------------------------------------------------------


def aliases_page() -> str:
    """The table of old keys (``instructgpt.infra.aliases``): what each is read as, and which release changed it."""
    lines = [
        "# Renamed and removed keys",
        "",
        "<!-- generated by scripts/gen_reference.py from instructgpt.infra.aliases; do not edit -->",
        "",
        "A recipe written for an older transformers or TRL, or for alignment-handbook, may use keys that have since "
        "changed. Each old key below is read as its current form, with one line saying so, in every stage that has "
        "that setting; one whose meaning cannot be given any more is refused with what to write instead. See "
        "[Recipes from TRL and alignment-handbook](../howto/from-trl-or-handbook.md).",
        "",
        "| old key | read as | changed in | note |",
        "|---|---|---|---|",
    ]
    for alias in ALIASES:
        lines.append(f"| `{alias.old}` | `{alias.current}` | {alias.changed_in} | {cell(alias.note)} |")
    lines += [
        "",
        "Keys TRL removed whose meaning instructgpt gives itself, under the same name:",
        "",
        "| key | stage | removed from TRL in | what instructgpt does |",
        "|---|---|---|---|",
    ]
    for alias in DONE_BY_US:
        stage = alias.current.split("(")[-1].rstrip(")")
        lines.append(f"| `{alias.old}` | {stage} | {alias.changed_in} | {cell(alias.note)} |")
    return "\n".join(lines)


# ---- commands ------------------------------------------------------------------------------------------------


def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: command name -> ``module:function``."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def subcommands() -> dict[str, str]:
    """The subcommands of ``instructgpt``: every stage of the registry, then the tools of ``instructgpt.cli``."""
    return {
        **{name: f"{module}:main" for name, module in STAGES.items()},
        **{name: target if ":" in target else f"{target}:main" for name, target in TOOLS.items()},
    }


def call(target: str, argv: list[str]) -> str:
    """What ``module:function(argv)`` prints (stdout) before it returns or exits."""
    module_name, _, func = target.partition(":")
    entry = getattr(importlib.import_module(module_name), func or "main")
    out = io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps help to the terminal; fix the width so the page is stable
    try:
        with contextlib.redirect_stdout(out):
            try:
                entry(argv)
            except SystemExit:
                pass
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue().rstrip()


def help_head(text: str) -> str:
    """A recipe stage's ``--help`` without its usage block and options (both are the recipe page's table)."""
    lines = text.splitlines()
    if lines and lines[0].startswith("usage:"):  # the usage block runs to the first blank line
        lines = lines[next((i for i, line in enumerate(lines) if not line.strip()), len(lines)) :]
    head = []
    for line in lines:
        if line.strip() in ("options:", "optional arguments:"):
            break
        head.append(line)
    return "\n".join(head).strip("\n")


def cli_page() -> str:
    scripts = console_scripts()
    lines = [
        "# Command line",
        "",
        "<!-- generated by scripts/gen_reference.py from the entry points' own --help; do not edit -->",
        "",
        "Every command below prints this text with `--help`. A stage's options are its recipe fields: each is a "
        "`--key value` override on top of the recipe, listed with type, default, range and help on the stage's "
        "recipe page.",
        "",
        "## Console scripts",
        "",
        "Installed by `pip install -e .` (from `[project.scripts]` in `pyproject.toml`).",
        "",
        "| command | runs |",
        "|---|---|",
        *[f"| `{name}` | `{target}` |" for name, target in scripts.items()],
        "",
        "## `instructgpt`",
        "",
        "```text",
        call(scripts["instructgpt"], ["--help"]),
        "```",
        "",
    ]
    for name, target in subcommands().items():
        text = call(target, ["--help"])
        lines += [f"## `instructgpt {name}`", ""]
        if name in STAGES:
            lines += [
                f"`instructgpt {name} RECIPE.yaml [--key value ...]` (or `--config RECIPE.yaml`). Options: every "
                f"field of the [`{name}` recipe](recipes/{name}.md), as `--key value`. Its `--help` begins:",
                "",
                "```text",
                help_head(text),
                "```",
                "",
            ]
        else:
            lines += ["```text", text, "```", ""]
    return "\n".join(lines)


# ---- the pages and the MkDocs hook ---------------------------------------------------------------------------


# ---- the library's docstrings -------------------------------------------------------------------------------


def modules() -> list[str]:
    """Every module of the ``instructgpt`` package, by its dotted name, found in ``src/`` (nothing is imported)."""
    root = REPO / "src"
    names = []
    for path in sorted((root / "instructgpt").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def api_page(module: str) -> str:
    """A module's docstrings, rendered by mkdocstrings (its ``:::`` block)."""
    return f"# `{module}`\n\n<!-- generated by scripts/gen_reference.py; do not edit -->\n\n::: {module}\n"


def reference_pages() -> dict[str, str]:
    """Path under docs/ -> Markdown, for every generated page."""
    pages = {f"{RECIPES_DIR}/{stage}.md": recipe_page(stage) for stage in STAGES}
    pages[CLI_PAGE] = cli_page()
    pages[ALIASES_PAGE] = aliases_page()
    pages.update({f"{API_DIR}/{module}.md": api_page(module) for module in modules()})
    return pages


_PAGES: dict[str, str] = {}


def _pages() -> dict[str, str]:
    if not _PAGES:  # `mkdocs serve` calls the hooks on every rebuild; the code does not change under it
        _PAGES.update(reference_pages())
    return _PAGES


def on_config(config: Any) -> Any:
    """Put every stage's recipe page into the nav's "Reference" section, after its own pages."""
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Reference" in entry:
            section = entry["Reference"]
            if not any(isinstance(e, dict) and "Recipes" in e for e in section):  # `mkdocs serve` may reuse config
                section.append({"Recipes": [{stage: f"{RECIPES_DIR}/{stage}.md"} for stage in STAGES]})
                section.append({"Renamed and removed keys": ALIASES_PAGE})
                section.append({"Library (docstrings)": [{m: f"{API_DIR}/{m}.md"} for m in modules()]})
            break
    return config


def on_files(files: Any, config: Any) -> Any:
    """Add the generated pages to the build (in memory; nothing is written to docs/)."""
    from mkdocs.structure.files import File

    for path, text in _pages().items():
        files.append(File.generated(config, path, content=text))
    return files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the generated reference pages as Markdown files.")
    parser.add_argument("--out", required=True, help="folder to write into (the paths are those under docs/)")
    args = parser.parse_args(argv)
    for path, text in reference_pages().items():
        target = Path(args.out) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text + "\n")
        print(target)


if __name__ == "__main__":
    main()
