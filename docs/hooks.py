"""MkDocs build hook: brings the generated benchmark report into the Performance page.

``BENCHMARKS.md`` and its plot live at the repository root, where
``python -m benchmarks.report`` writes them. The page ``performance.md`` holds the
marker ``<!-- benchmarks -->``; this hook replaces it with the report (its title
dropped, its headings one level down) and adds the plot to the site as
``assets/benchmarks/throughput.png``, so both stay in step with the committed
report without a copy in ``docs/``. Where either file is missing the page says so
instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "BENCHMARKS.md"
PLOT = ROOT / "benchmarks" / "results" / "throughput.png"
PLOT_URI = "assets/benchmarks/throughput.png"
MARKER = "<!-- benchmarks -->"


def on_files(files, config):
    if PLOT.is_file():
        files.append(File.generated(config, PLOT_URI, abs_src_path=str(PLOT)))
    return files


def _report() -> str:
    if not REPORT.is_file():
        return "*No benchmark report in this checkout: run `python -m benchmarks.run` and `python -m benchmarks.report`.*"
    lines = REPORT.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join("#" + line if line.startswith("#") else line for line in lines)

    def image(match: re.Match) -> str:
        if not PLOT.is_file():
            return "*(The throughput plot has not been generated in this checkout.)*"
        return f"![{match[1]}]({PLOT_URI})"

    return re.sub(r"!\[([^\]]*)\]\(benchmarks/results/throughput\.png\)", image, text)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, _report())
    return markdown
