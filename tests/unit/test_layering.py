"""The layout is the architecture: stages never import each other, and the library never imports a stage.

Every ``import`` statement in the package is read from the source (top-level and inside functions alike), so a
lazy import inside a function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import instructgpt

PACKAGE = Path(instructgpt.__file__).parent
STAGES = "instructgpt.stages"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def stage_of(module: str) -> str | None:
    """``instructgpt.stages.ppo.trainer`` -> ``ppo``; None for the library (and for the stages package itself)."""
    if not module.startswith(STAGES + "."):
        return None
    name = module[len(STAGES) + 1 :].split(".")[0]
    folder = PACKAGE / "stages"
    if name == "registry":  # the package's index of its stages (STAGES, load_stage), not a stage
        return None
    # `from instructgpt.stages import load_stage` names a function of the package, not a stage
    return name if (folder / f"{name}.py").is_file() or (folder / name).is_dir() else None


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_the_walker_sees_lazy_and_relative_imports():
    fake = PACKAGE / "stages" / "ppo" / "data.py"
    names = imported_modules(fake)
    assert "instructgpt.data" in names  # the PPO data module reads prompts through the shared loader
    assert stage_of("instructgpt.stages.ppo.trainer") == "ppo" and stage_of("instructgpt.stages.sft") == "sft"
    assert stage_of("instructgpt.stages") is None and stage_of("instructgpt.modeling.reward") is None
    assert stage_of("instructgpt.stages.load_stage") is None and stage_of("instructgpt.stages.registry") is None


def test_no_stage_imports_another_stage():
    offences = []
    for name, path in all_modules().items():
        own = stage_of(name)
        if own is None:
            continue
        for target in imported_modules(path):
            other = stage_of(target)
            if other is not None and other != own:
                offences.append(f"{name} imports {target}")
    assert not offences, "stages must share code through the library, not import each other:\n" + "\n".join(offences)


def test_the_library_never_imports_a_stage():
    offences = []
    for name, path in all_modules().items():
        if name.startswith(STAGES) or name in ("instructgpt.cli", "instructgpt.__main__"):
            continue
        offences += [f"{name} imports {t}" for t in imported_modules(path) if stage_of(t) is not None]
    assert not offences, "the library layer must not depend on a stage:\n" + "\n".join(offences)


def test_every_stage_module_has_the_one_contract():
    """Each stage names its arguments, runs from them with ``run(args)`` and has a thin ``main()``."""
    from instructgpt.stages import STAGES as registry
    from instructgpt.stages import load_stage

    assert {"pretrain", "sft", "collect", "rm", "ppo", "eval", "pipeline"} <= set(registry)
    for name in registry:
        stage = load_stage(name)
        assert callable(stage.run) and callable(stage.main), name
        types = stage.arguments()
        assert types and all(dataclasses.is_dataclass(t) for t in types), name
