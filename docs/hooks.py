"""MkDocs build hooks: the generated benchmark report in the Performance page, and the
maths rendered to MathML at build time.

``BENCHMARKS.md`` and its plot live at the repository root, where
``python -m benchmarks.report`` writes them. The page ``performance.md`` holds the
marker ``<!-- benchmarks -->``; this hook replaces it with the report (its title
dropped, its headings one level down) and adds its plots (``throughput.png``,
``order-sweep.png``) to the site under ``assets/benchmarks/``, so both stay in step
with the committed report without a copy in ``docs/``. Where a file is missing the
page says so instead.

pymdownx.arithmatex (generic mode) leaves each formula as TeX in an element of class
``arithmatex``; ``on_page_content`` replaces the TeX with MathML from latex2mathml,
which browsers display natively, so the site needs no script and no network to show
its maths.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from latex2mathml.converter import convert as tex_to_mathml
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ("throughput.png", "order-sweep.png")
PLOT_DIR = "assets/benchmarks"
MARKER = "<!-- benchmarks -->"


def on_files(files, config):
    for name in PLOTS:
        if (RESULTS / name).is_file():
            files.append(
                File.generated(config, f"{PLOT_DIR}/{name}", abs_src_path=str(RESULTS / name))
            )
    return files


def _report() -> str:
    if not REPORT.is_file():
        return "*No benchmark report in this checkout: run `python -m benchmarks.run` and `python -m benchmarks.report`.*"
    lines = REPORT.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join("#" + line if line.startswith("#") else line for line in lines)

    def image(match: re.Match) -> str:
        name = match[2]
        if name not in PLOTS or not (RESULTS / name).is_file():
            return f"*(The plot {name} has not been generated in this checkout.)*"
        return f"![{match[1]}]({PLOT_DIR}/{name})"

    return re.sub(r"!\[([^\]]*)\]\(benchmarks/results/([\w.-]+\.png)\)", image, text)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _report())
    return markdown


# What arithmatex writes in generic mode: \( ... \) in a span, \[ ... \] in a div,
# the TeX HTML-escaped.
_FORMULA = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])</(?P=tag)>',
    re.DOTALL,
)


# A minus or plus sign after an opening bracket, a relation or another operator is a
# sign, not a binary operator: TeX spaces it so, but latex2mathml leaves the browser to
# infer it, which spaces y[-1-k] as y[ - 1 - k].
_SIGN = re.compile(r"(<mo\b[^>]*>([^<]*)</mo>)<mo>(&#x02212;|&#x0002B;)</mo>")
_CLOSING = set(")]}|\u27e9")
# latex2mathml writes \overline{...} as a U+2015 accent over its base, which browsers
# (lacking a stretchy variant of it in most math fonts) draw as a short dash over the
# middle; a top border on the base spans it whatever the font (stylesheets/mathml.css).
_OVERLINE_TAGS = re.compile(r'<mover\b[^>]*>|</mover>|<mo accent="true">&#x02015;</mo>')


def _overlines_as_borders(mathml: str) -> str:
    edits = []
    stack = []
    for tag in _OVERLINE_TAGS.finditer(mathml):
        if tag[0].startswith("<mover"):
            stack.append([tag, None])
        elif tag[0] == "</mover>":
            start, accent = stack.pop()
            if accent is not None:
                edits += [(start, '<mrow class="overline">'), (accent, ""), (tag, "</mrow>")]
        else:
            stack[-1][1] = tag
    for tag, text in sorted(edits, key=lambda edit: edit[0].start(), reverse=True):
        mathml = mathml[: tag.start()] + text + mathml[tag.end() :]
    return mathml


def _sign(match: re.Match) -> str:
    if html.unescape(match[2]) in _CLOSING:
        return match[0]
    return f'{match[1]}<mo form="prefix">{match[3]}</mo>'


def _mathml(match: re.Match) -> str:
    block = match["block"] is not None
    tex = html.unescape(match["block"] if block else match["inline"]).strip()
    mathml = tex_to_mathml(tex, display="block" if block else "inline")
    mathml = _SIGN.sub(_sign, _overlines_as_borders(mathml))
    return f'<{match["tag"]} class="arithmatex">{mathml}</{match["tag"]}>'


def on_page_content(html_text, page, config, files):
    html_text = _FORMULA.sub(_mathml, html_text)
    # A formula left as TeX would show as TeX: fail the build instead.
    left = re.search(r'class="arithmatex">(?!<math)(.{0,60})', html_text, re.DOTALL)
    if left:
        raise ValueError(f"{page.file.src_uri}: a formula not in the form arithmatex writes: {left[1]!r}")
    return html_text
