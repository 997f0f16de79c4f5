"""Check the built HTML book for defects a reader would see, offline, that the build itself lets through.

Usage::

    python scripts/check_site.py [HTML_FOLDER]      # default: _build/html

Every ``.html`` page under the folder is checked for:

- a raw Markdown table: pipe-table text (a ``|---|---|`` delimiter row, or a line of ``|``-separated cells)
  in the rendered text, outside ``<pre>`` and ``<code>``; a ``text/markdown`` output rendered without table
  support shows up this way;
- a remote script or stylesheet (``<script src="https://...">``, ``<link rel="stylesheet" href="https://...">``)
  or a math CDN named in an inline script: offline, the page would lose its formulas or its layout. Other
  URLs in inline scripts are not loaded with the page: sphinx-thebe's ``THEBE_JS_URL`` is fetched only
  when a reader presses a "live code" button, which this book does not show (``launch_buttons: thebe``
  is off);
- a Python traceback in the page: the text ``Traceback (most recent call last)`` or myst-nb's traceback
  output, left by a cell that raised;
- noise a reader should not meet: the replacement character U+FFFD (a character cut in two), a warning
  (``SomethingWarning``), a package's "pip install" notice or a "Loading weights" progress bar in a cell's
  output, and a cell that calls ``show_markdown`` but shows nothing (a computed table that was built and never displayed);
- an unresolved citation: ``{cite}`key``` whose key ``book/references.bib`` lacks, which sphinxcontrib-bibtex
  renders as an empty ``[]`` and lets through with a warning.

The site as a whole must also have its References page (``book/bibliography.html``, from ``book/bibliography.md``)
with a link to the work in every entry, and among them the works the book rests on (``REQUIRED_REFERENCES``).

It prints one line per finding, naming the page and the offending snippet, and exits with status 1 if there
is any (status 2 when the folder holds no pages), 0 otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bs4 import BeautifulSoup

REMOTE = re.compile(r"^(https?:)?//", re.IGNORECASE)
MATH_CDN = re.compile(r"(?:https?:)?//[^\s\"'<>]*(?:mathjax|katex)[^\s\"'<>]*", re.IGNORECASE)
TRACEBACK_TEXT = "Traceback (most recent call last)"
TRACEBACK_CLASSES = ("traceback", "highlight-ipythontb")  # myst-nb's classes for an error output
UNRENDERED_ELEMENTS = ("pre", "code", "script", "style")
REPLACEMENT = "\ufffd"
WARNING = re.compile(r"\b[A-Z]\w*Warning\b")  # UserWarning, FutureWarning, DeprecationWarning…
LOADING_BAR = "Loading weights"
INSTALL_HINT = "pip install"  # a package telling the reader to install something: a notice, not the book's output
CITATION_CLASS = "bibtex-citation"  # sphinxcontrib-bibtex's span around an in-text citation
REFERENCES_PAGE = "book/bibliography.html"
# The works the References page must list, each by the link its entry must carry.
REQUIRED_REFERENCES = {
    "the ADAQ-LoRA paper": "http://ijlaitse.com/index.php/site/article/view/58",
    "LoRA": "https://arxiv.org/abs/2106.09685",
    "QLoRA": "https://arxiv.org/abs/2305.14314",
    "AdaLoRA": "https://arxiv.org/abs/2303.10512",
    "LoftQ": "https://arxiv.org/abs/2310.08659",
    "PEFT": "https://github.com/huggingface/peft",
}
LINK_RELS_THAT_LOAD = {"stylesheet", "preload", "modulepreload"}
# Elements that start a new line in the rendered page, so that their texts do not run into each other.
BLOCK_ELEMENTS = ("p", "div", "li", "td", "th", "tr", "dt", "dd", "blockquote", "section", "br",
                  "h1", "h2", "h3", "h4", "h5", "h6", "table", "caption", "figure", "figcaption")


def shorten(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_pipe_table_line(line: str) -> bool:
    """A delimiter row (``|---|:--:|``) or a row of two or more cells between pipes (``| a | b |``)."""
    line = line.strip()
    if "|" in line and "---" in line and re.fullmatch(r"[\s|:-]+", line):
        return True
    return line.startswith("|") and line.endswith("|") and line.count("|") >= 3


def rendered_lines(soup: BeautifulSoup) -> list[str]:
    """The page's visible prose, line by line: without code, preformatted text (outputs), scripts and styles.

    Code may hold a Markdown table legitimately (a listing of one); prose may not.
    """
    for tag in soup.find_all(UNRENDERED_ELEMENTS):
        tag.decompose()
    for tag in soup.find_all(BLOCK_ELEMENTS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    return soup.get_text().splitlines()


def raw_tables(soup: BeautifulSoup) -> list[str]:
    """One finding per run of pipe-table lines (a raw table), quoting its first line."""
    findings = []
    run: list[str] = []
    for line in rendered_lines(soup) + [""]:
        if is_pipe_table_line(line):
            run.append(line)
        elif run:
            findings.append(f"raw Markdown table text ({len(run)} line(s)): {shorten(run[0])!r}")
            run = []
    return findings


def remote_assets(soup: BeautifulSoup) -> list[str]:
    """Scripts and stylesheets loaded from the network, and math CDNs named in inline scripts."""
    findings = []
    for script in soup.find_all("script"):
        src = script.get("src")
        if src and REMOTE.match(src):
            findings.append(f"remote script: <script src={src!r}>")
        elif not src:
            findings += [f"math CDN in an inline script: {url!r}" for url in MATH_CDN.findall(script.get_text())]
    for link in soup.find_all("link"):
        rels = {rel.lower() for rel in link.get("rel", [])}
        href = link.get("href", "")
        if rels & LINK_RELS_THAT_LOAD and REMOTE.match(href):
            findings.append(f"remote stylesheet or preload: <link rel={' '.join(sorted(rels))!r} href={href!r}>")
    return findings


def tracebacks(soup: BeautifulSoup) -> list[str]:
    """myst-nb's error outputs, or else (a traceback printed to a stream) the traceback text itself."""
    findings = [f"traceback output: {shorten(tag.get_text())!r}" for tag in soup.find_all(class_=TRACEBACK_CLASSES)]
    text = soup.get_text()
    if not findings and TRACEBACK_TEXT in text:
        findings.append(f"traceback text: {shorten(text[text.index(TRACEBACK_TEXT):])!r}")
    return findings


def noise(soup: BeautifulSoup) -> list[str]:
    """Replacement characters anywhere, warnings and loading bars in outputs, show_markdown cells without output."""
    findings = []
    text = soup.get_text()
    if REPLACEMENT in text:
        at = text.index(REPLACEMENT)
        findings.append(f"{text.count(REPLACEMENT)} replacement character(s) U+FFFD, the first in "
                        f"{shorten(text[max(0, at - 40):at + 20])!r}")
    for output in soup.find_all(class_="cell_output"):
        said = output.get_text()
        findings += [f"a warning in a cell's output: {shorten(said[match.start():])!r}" for match in WARNING.finditer(said)][:1]
        if LOADING_BAR in said:
            findings.append(f"a progress bar in a cell's output: {shorten(said[said.index(LOADING_BAR):])!r}")
        if INSTALL_HINT in said:
            findings.append(f"a package's install notice in a cell's output: {shorten(said[:said.index(INSTALL_HINT) + 20])!r}")
    for cell in soup.find_all(class_="cell"):
        source = cell.find(class_="cell_input")
        if source is not None and "show_markdown(" in source.get_text() and cell.find(class_="cell_output") is None:
            findings.append(f"a show_markdown cell shows nothing: {shorten(source.get_text())!r}")
    return findings


def unresolved_citations(soup: BeautifulSoup) -> list[str]:
    """Citations without a link to their entry: the key was not found in the .bib file."""
    return [f"an unresolved citation: {shorten(tag.parent.get_text())!r}"
            for tag in soup.find_all(class_=CITATION_CLASS) if tag.find("a") is None]


def check_page(html: str) -> list[str]:
    """Every defect found in one page, each as a line that quotes the offending snippet."""
    soup = BeautifulSoup(html, "html.parser")
    findings = remote_assets(soup) + tracebacks(soup) + noise(soup) + unresolved_citations(soup)
    return findings + raw_tables(soup)  # raw_tables takes the tree apart


def references_page(folder: Path) -> list[str]:
    """The References page: there, titled so, every entry with a link to its work, the required works among them."""
    page = folder / REFERENCES_PAGE
    if not page.is_file():
        return [f"{REFERENCES_PAGE}: missing (book/bibliography.md, listed in _toc.yml, renders the References page)"]
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    title = soup.find("h1")
    findings = [] if title is not None and title.get_text().startswith("References") else ["no title 'References'"]
    entries = soup.find_all(class_="citation")
    links = set()
    for entry in entries:
        hrefs = [a.get("href", "") for a in entry.find_all("a") if REMOTE.match(a.get("href", ""))]
        links.update(hrefs)
        if not hrefs:
            findings.append(f"an entry without a link to the work: {shorten(entry.get_text())!r}")
    findings += [f"{work} is not listed with its link {url}" for work, url in REQUIRED_REFERENCES.items() if url not in links]
    return [f"{REFERENCES_PAGE}: {finding}" for finding in findings]


def check_site(folder: Path, pages: list[Path]) -> list[str]:
    """``page: finding`` for every defect of every page, the page named relative to ``folder``."""
    report = []
    for page in pages:
        name = page.relative_to(folder).as_posix()
        report += [f"{name}: {finding}" for finding in check_page(page.read_text(encoding="utf-8"))]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=Path("_build/html"), help="the built HTML (default: _build/html)")
    folder = parser.parse_args(argv).folder
    pages = sorted(folder.rglob("*.html"))
    if not pages:
        print(f"error: {folder} holds no .html pages; build the book first (make book) or name the HTML folder", file=sys.stderr)
        return 2
    report = check_site(folder, pages) + references_page(folder)
    for line in report:
        print(line)
    if report:
        print(f"check_site: {len(report)} problem(s) in {len(pages)} page(s) of {folder}", file=sys.stderr)
        return 1
    print(f"check_site: {len(pages)} page(s) in {folder}: no raw Markdown tables, remote scripts or stylesheets, tracebacks or noise, and a References page with links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
