"""Hatchling metadata hook: the package description is README.md with its relative links
made absolute.

The README is read in the repository, where ``[BENCHMARKS.md](BENCHMARKS.md)`` resolves;
on a package index page it would not. Each relative link or image is rewritten to the
file on the main branch of the ``Source`` URL in ``[project.urls]``, so both readers
follow the same text. A wheel built from the sdist takes the rewritten description from
the sdist's PKG-INFO and does not run this hook again.
"""

from __future__ import annotations

import re
from pathlib import Path

from hatchling.metadata.plugin.interface import MetadataHookInterface

# [text](target) or ![alt](target), the target without spaces; fenced code blocks and
# code spans are left as they are, links or not.
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.MULTILINE | re.DOTALL)
_ABSOLUTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#|/)", re.IGNORECASE)


def absolute_links(markdown: str, source: str, ref: str = "main") -> str:
    """Rewrite every relative link target in ``markdown`` against the repository ``source``.

    Files become ``{source}/blob/{ref}/path`` (images ``{source}/raw/{ref}/path``, which
    an index page can display), directories (a trailing ``/``) ``{source}/tree/{ref}/path``.
    """
    source = source.rstrip("/")

    def rewrite(match: re.Match) -> str:
        bang, text, target = match.groups()
        if _ABSOLUTE.match(target):
            return match[0]
        kind = "raw" if bang else ("tree" if target.endswith("/") else "blob")
        return f"{bang}[{text}]({source}/{kind}/{ref}/{target.removeprefix('./')})"

    pieces = []
    end = 0
    for code in _CODE.finditer(markdown):
        pieces += [_LINK.sub(rewrite, markdown[end : code.start()]), code[0]]
        end = code.end()
    return "".join(pieces) + _LINK.sub(rewrite, markdown[end:])


class ReadmeHook(MetadataHookInterface):
    PLUGIN_NAME = "custom"

    def update(self, metadata: dict) -> None:
        source = metadata.get("urls", {}).get("Source")
        if not source:
            raise ValueError("[project.urls] needs a Source URL: the README's relative links are made absolute against it")
        readme = (Path(self.root) / "README.md").read_text(encoding="utf-8")
        metadata["readme"] = {"content-type": "text/markdown", "text": absolute_links(readme, source)}
