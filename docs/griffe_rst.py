"""A griffe extension that turns the reStructuredText bits of torchlpc's docstrings into Markdown.

The docstrings are Google style, which mkdocstrings renders, but they also use two
pieces of reStructuredText, kept for readers of ``help()`` and for Sphinx users:

* ``.. math::`` directives, whose indented body becomes a ``$$ ... $$`` block for
  pymdownx.arithmatex;
* ``:func:`name``` / ``:mod:`name``` / ``:class:`name``` roles, which become
  optional cross-references: a link where the target is documented, plain code
  where it is not (a private helper, say). A name without dots is looked up in
  the module of the object whose docstring it is in.

It also fences doctest examples (runs of ``>>>`` lines and their output) as
``pycon`` code blocks, which Markdown would otherwise read as nested quotes.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj):`~?([\w.]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != ".. math::":
            out.append(line)
            i += 1
            continue
        margin = " " * _indent(line)
        body, i = [], i + 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(margin)):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        out += ["", f"{margin}$$", *(f"{margin}{b}" for b in body if b), f"{margin}$$", ""]
    return "\n".join(out)


def _doctests(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        margin = " " * _indent(line)
        out.append(f"{margin}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(f"{margin}{lines[i][len(margin) :]}")
            i += 1
        out.append(f"{margin}```")
    return "\n".join(out)


def _roles(text: str, module: str) -> str:
    def link(match: re.Match) -> str:
        name = match[1]
        target = name if "." in name or name == "torchlpc" else f"{module}.{name}"
        return f'<autoref identifier="{target}" optional><code>{name}</code></autoref>'

    return _ROLE.sub(link, text)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is None:
            return
        module = obj.path if obj.is_module else obj.module.path
        obj.docstring.value = _roles(_doctests(_math_blocks(obj.docstring.value)), module)
