"""A Griffe extension for the documentation site: the reStructuredText in our docstrings, as Markdown.

The docstrings use a few reST constructs that Markdown would print verbatim or mangle (``*`` in a formula becomes
italics). Before mkdocstrings renders a docstring, this rewrites:

- a ``.. math::`` block into a fenced text block (the site renders no LaTeX: it makes no request outside itself);
- the roles ``:math:`x```, ``:func:`x```, ``:class:`x```, ``:meth:`x```, ``:mod:`x``` and ``:data:`x``` into
  the code span ```x``` (a leading ``~`` dropped).

Loaded by ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``). The code is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:math|func|class|meth|mod|data|attr|obj|exc):`~?([^`]+)`")


def math_blocks(text: str) -> str:
    """Every ``.. math::`` directive (and its indented body) as a fenced ``text`` block at the same indentation."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not stripped.startswith(".. math::"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        body = [stripped[len(".. math::") :].strip()] if stripped[len(".. math::") :].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        depth = min((len(b) - len(b.lstrip()) for b in body if b.strip() and b[:1].isspace()), default=0)
        out += [f"{indent}```text", *[f"{indent}{b[depth:] if b[:1].isspace() else b}" for b in body], f"{indent}```"]
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def markdown(text: str) -> str:
    return ROLE.sub(lambda m: f"`{m.group(1)}`", math_blocks(text))


class RstDocstrings(Extension):
    """Rewrite every loaded object's docstring (see the module docstring)."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
