"""The documentation site says what the code does.

- The generated reference (``scripts/gen_reference.py``) lists every field of every stage of the registry, with the
  field's type, default, range and help, and the command-line reference lists every command.
- Every command in a code block of the getting-started page exists: its entry point resolves, its recipe file is
  there, and its flags parse (through the stage's own recipe parser, or the tool's ``--help``).

The strict build itself (``mkdocs build --strict``, broken links and pages left out of the nav) runs in
``scripts/test.sh``; these tests need no MkDocs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest
import tomllib

from instructgpt.cli import TOOLS
from instructgpt.infra.parser import RecipeParser, load_yaml
from instructgpt.infra.validation import range_of
from instructgpt.stages import STAGES, load_stage

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())  # at any test depth
DOCS = REPO / "docs"
GETTING_STARTED = DOCS / "getting-started.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen():
    return _generator()


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


# ---- the generated reference ---------------------------------------------------------------------------------


def _rows(page: str) -> dict[str, list[str]]:
    """The table rows of a recipe page, by key: ``| `key` | type | default | range | help |`` -> its cells."""
    rows: dict[str, list[str]] = {}
    for line in page.splitlines():
        m = re.match(r"\| `([^`]+)` \| (.*) \|$", line)
        if m:
            rows.setdefault(m.group(1), []).append(m.group(2))
    return rows


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_reference_lists_every_field_of_every_stage(gen, stage):
    page = gen.recipe_page(stage)
    rows = _rows(page)
    fields = [(cls, f) for cls in load_stage(stage).arguments() for f in dataclasses.fields(cls) if f.init]
    assert fields, stage
    missing = [f.name for _, f in fields if f.name not in rows]
    assert not missing, f"{stage}: fields missing from the reference: {missing}"
    for cls in load_stage(stage).arguments():
        assert f"## {cls.__name__}" in page
    for _, f in fields:
        cells = " | ".join(rows[f.name])
        spec = range_of(f)
        if spec is not None:
            assert f"`{spec}`" in cells, f"{stage}.{f.name}: range {spec} not in {cells!r}"
        help_words = " ".join((f.metadata.get("help") or "").split())[:40]
        if help_words and "|" not in help_words and "`" not in help_words:
            assert help_words in cells, f"{stage}.{f.name}: help text not in the reference"
        if f.default is None:
            assert "`null`" in cells


def test_reference_has_a_page_and_a_nav_entry_per_stage(gen):
    pages = gen.reference_pages()
    for stage in STAGES:
        assert f"reference/recipes/{stage}.md" in pages
    config = {"nav": [{"Home": "index.md"}, {"Reference": [{"Command line": "reference/cli.md"}]}]}
    gen.on_config(config)
    gen.on_config(config)  # `mkdocs serve` may call it again: the entries are added once
    recipes = [e["Recipes"] for e in config["nav"][1]["Reference"] if isinstance(e, dict) and "Recipes" in e]
    assert len(recipes) == 1
    assert [next(iter(e.values())) for e in recipes[0]] == [f"reference/recipes/{s}.md" for s in STAGES]
    cli = pages["reference/cli.md"]
    for name in _pyproject()["project"]["scripts"]:
        assert f"`{name}`" in cli
    for name in gen.subcommands():
        assert f"## `instructgpt {name}`" in cli


def test_every_module_has_a_docstrings_page(gen):
    pages = gen.reference_pages()
    sources = [p for p in (REPO / "src" / "instructgpt").rglob("*.py") if p.name != "__main__.py"]
    assert len(gen.modules()) == len(sources)
    for module in gen.modules():
        assert f"::: {module}" in pages[f"reference/api/{module}.md"]
    assert "instructgpt.stages" in gen.modules() and "instructgpt.infra.validation" in gen.modules()


def test_rst_in_docstrings_becomes_markdown():
    pytest.importorskip("griffe")  # the docs extra
    spec = importlib.util.spec_from_file_location("docs_griffe_rst", REPO / "scripts" / "docs_griffe_rst.py")
    rst = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rst)
    text = (
        "A :func:`~instructgpt.losses.ppo.policy_loss` of :math:`x*y`:\n\n.. math::\n\n    a * b\n      + c\n\nafter\n"
    )
    assert rst.markdown(text) == (
        "A `instructgpt.losses.ppo.policy_loss` of `x*y`:\n\n```text\na * b\n  + c\n```\n\nafter"
    )


def test_reference_types_and_defaults_read_as_yaml(gen):
    @dataclasses.dataclass
    class Example:
        name: str | None = None
        flag: bool = True
        template: str = "a\nb"
        sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
        needed: int = dataclasses.field(default=None, metadata={"help": "x | y, `a | b`"})

    f = {x.name: x for x in dataclasses.fields(Example)}
    assert gen.default_text(f["name"]) == "`null`"
    assert gen.default_text(f["flag"]) == "`true`"
    assert gen.default_text(f["template"]) == '`"a\\nb"`'
    assert gen.default_text(f["sizes"]) == "`[1, 2]`"
    assert gen.type_text(int) == "int"
    assert gen.cell("x | y, `a | b`") == "x \\| y, `a | b`"  # a pipe in a code span stays as it is


# ---- the getting-started page --------------------------------------------------------------------------------


def _code_commands(path: Path) -> list[list[str]]:
    """Every simple command in the ``bash`` code blocks of a page, as argv (comments, ``&&`` and ``;`` split off)."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            tokens = shlex.split(line, comments=True)
            command: list[str] = []
            for token in tokens + ["&&"]:
                if token in ("&&", ";", "||"):
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(token)
    return commands


def _without_env(argv: list[str]) -> list[str]:
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv = argv[1:]
    return argv


def _stage_of_script(name: str) -> str | None:
    target = _pyproject()["project"]["scripts"].get(name)
    if target is None:
        return None
    module = target.split(":")[0]
    return next((stage for stage, mod in STAGES.items() if mod == module), None)


def _check_stage_command(stage: str, argv: list[str]) -> None:
    """Parse ``argv`` with the stage's own recipe parser; the pipeline's ``--<stage>.<key>`` against that stage."""
    own, i = [], 0
    while i < len(argv):
        m = re.match(r"^--([a-z_]+)\.([a-z_0-9]+)$", argv[i])
        if stage == "pipeline" and m and m.group(1) in STAGES:
            keys = {f.name for cls in load_stage(m.group(1)).arguments() for f in dataclasses.fields(cls) if f.init}
            assert m.group(2) in keys, f"--{m.group(1)}.{m.group(2)}: no such key in the {m.group(1)} recipe"
            i += 2
            continue
        own.append(argv[i])
        i += 1
    recipe = next((a for a in own if a.endswith((".yaml", ".yml"))), None)
    if recipe is not None:
        assert (REPO / recipe).is_file(), recipe
        own = [str(REPO / a) if a == recipe else a for a in own]
    parser = RecipeParser(stage, load_stage(stage).arguments(), recipe_optional=recipe is None)
    parser.parse(own)


def _check_tool_command(target: str, argv: list[str]) -> None:
    """A tool (``generate``, ``chat``, ...): every ``--flag`` it is given is one its ``--help`` lists."""
    module_name, _, func = target.partition(":")
    entry = getattr(importlib.import_module(module_name), func or "main")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        entry(["--help"])
    for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", out.getvalue()), f"{target}: {flag} is not in its --help"


def _check_instructgpt(argv: list[str]) -> None:
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        _check_stage_command(command, rest)
    elif command in TOOLS:
        _check_tool_command(TOOLS[command], rest)
    elif command.endswith((".yaml", ".yml")):
        stage = load_yaml(REPO / command).get("stage")
        assert stage in STAGES, f"{command}: stage {stage!r}"
        _check_stage_command(stage, argv)
    else:
        raise AssertionError(f"instructgpt {command}: not a stage, a tool or a recipe")


def _check_command(argv: list[str]) -> None:
    argv = _without_env(argv)
    name, rest = argv[0], argv[1:]
    if name == "instructgpt":
        _check_instructgpt(rest)
    elif name.startswith("instructgpt-"):
        stage = _stage_of_script(name)
        assert stage is not None, f"{name}: not a console script of a stage in pyproject.toml"
        _check_stage_command(stage, rest)
    elif name == "bash":
        assert (REPO / rest[0]).is_file(), rest[0]
    elif name in (".", "source"):
        assert rest == [".venv/bin/activate"], rest  # made by scripts/setup.sh
        assert "-m venv .venv" in (REPO / "scripts" / "setup.sh").read_text()
    elif name == "pip":
        extras = _pyproject()["project"]["optional-dependencies"]
        for arg in rest:
            m = re.match(r"^\.\[(.+)\]$", arg)
            if m:
                for extra in m.group(1).split(","):
                    assert extra in extras, f"pip install -e '.[{extra}]': no such extra"
    elif name == "trackio":
        assert importlib.util.find_spec("trackio") is not None and rest[0] == "show"
    else:
        raise AssertionError(f"{' '.join(argv)}: a command this test does not know how to check")


def test_every_getting_started_command_exists():
    commands = _code_commands(GETTING_STARTED)
    assert any(c[:2] == ["instructgpt", "pipeline"] for c in commands)
    for argv in commands:
        _check_command(argv)


def test_a_wrong_command_or_flag_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\ninstructgpt pipeline recipes/tiny/pipeline.yaml --no_such_key 1\n```\n")
    (argv,) = _code_commands(page)
    with pytest.raises(Exception, match="no_such_key"):
        _check_command(argv)
    with pytest.raises(AssertionError, match="no such key"):
        _check_command(["instructgpt", "pipeline", "recipes/tiny/pipeline.yaml", "--ppo.no_such_key", "1"])
    with pytest.raises(AssertionError):
        _check_command(["instructgpt", "no-such-stage"])
    with pytest.raises(AssertionError, match="--no_flag"):
        _check_command(["instructgpt", "generate", "runs/x", "--no_flag", "1"])
