"""scripts/check_site.py fails, naming the page and the snippet, on raw Markdown tables, remote scripts or
stylesheets, tracebacks, noise (U+FFFD, warnings, loading bars, a computed table not shown) and unresolved citations,
and on a References page that is missing, has an entry without a link or lacks a required work; a clean site passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

PAGE = """<!DOCTYPE html>
<html><head>
<link rel="stylesheet" href="_static/styles/theme.css">
<link rel="canonical" href="https://example.org/book/page.html">
<script src="_static/mathjax/tex-chtml.js"></script>
{head}
</head><body><main>
<h1>A chapter</h1>
<p>Prose with one pipe | in it, and <span class="math notranslate nohighlight">\\(|x| + |y|\\)</span>.</p>
<table><thead><tr><th><p>Method</p></th><th><p>Rouge-1</p></th></tr></thead>
<tbody><tr><td><p>lora</p></td><td><p>0.41</p></td></tr></tbody></table>
<div class="highlight"><pre>| a markdown | table in a listing |
|---|---|</pre></div>
<p><code>| a | b |</code></p>
<p>A <a href="https://example.org">link</a>.</p>
<div class="cell_output docutils container"><div class="output stderr highlight-myst-ansi notranslate">
<pre>calibration: 100%|##########| 8/8</pre></div></div>
{body}
</main></body></html>
"""

RAW_TABLE = "<p>| Method | Source | Rouge-1 |\n|---|---|---|\n| lora | ours | 0.41 |</p>"
STREAM_TRACEBACK = (
    '<div class="output stderr"><pre>Traceback (most recent call last):\n'
    '  File "run.py", line 3, in &lt;module&gt;\nValueError: no data</pre></div>'
)
ERROR_OUTPUT = (
    '<div class="output traceback highlight-ipythontb notranslate"><pre>'
    "ValueError                                Traceback (most recent call last)\n"
    "Cell In[3], line 11</pre></div>"
)

WARNING_OUTPUT = ('<div class="cell_output docutils container"><div class="output stderr"><pre>/x.py:3: '
                  "FutureWarning: `torch_dtype` is deprecated</pre></div></div>")
LOADING_OUTPUT = ('<div class="cell_output docutils container"><div class="output stderr"><pre>'
                  "Loading weights: 100%| 272/272</pre></div></div>")
UNRESOLVED_CITATION = ('<p>NF4, as in QLoRA <span class="bibtex-citation" id="id2">[]</span>.</p>')
SILENT_CELL = ('<div class="cell docutils container"><div class="cell_input docutils container"><pre>lines = []\n'
               'show_markdown("\\n".join(lines))\nglue_values(x=1)</pre></div></div>')


def references_page(check_site, entries: list[str] | None = None, title: str = "References") -> str:
    """A References page as sphinxcontrib-bibtex renders it: one entry per link given (default: the required works)."""
    links = list(check_site.REQUIRED_REFERENCES.values()) if entries is None else entries
    body = "".join(f'<div class="citation" id="id{n}" role="doc-biblioentry"><span class="label">[W{n}]</span> <p>A work. '
                   + (f'URL: <a class="reference external" href="{url}">{url}</a>.' if url else "") + "</p></div>"
                   for n, url in enumerate(links))
    return (f'<!DOCTYPE html>\n<html><head></head><body><main><section id="references">'
            f'<h1>{title}<a class="headerlink" href="#references">#</a></h1>{body}</section></main></body></html>')


@pytest.fixture(scope="module")
def check_site():
    return load_script("check_site")


def write_site(folder: Path, bad_head: str = "", bad_body: str = "", references: str | None = None) -> Path:
    """A clean index.html, a book/chapter.html that carries the defect given, if any, and the References page
    (clean unless given; "" leaves it out)."""
    (folder / "book").mkdir(parents=True)
    (folder / "index.html").write_text(PAGE.format(head="", body=""), encoding="utf-8")
    (folder / "book" / "chapter.html").write_text(PAGE.format(head=bad_head, body=bad_body), encoding="utf-8")
    references = references_page(load_script("check_site")) if references is None else references
    if references:
        (folder / "book" / "bibliography.html").write_text(references, encoding="utf-8")
    return folder


def run(check_site, folder: Path, capsys) -> tuple[int, list[str], str]:
    status = check_site.main([str(folder)])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def test_a_clean_site_passes(check_site, tmp_path: Path, capsys):
    status, out, err = run(check_site, write_site(tmp_path), capsys)
    assert (status, err) == (0, "")
    assert out == [
        f"check_site: 3 page(s) in {tmp_path}: no raw Markdown tables, remote scripts or stylesheets, tracebacks or noise, "
        "and a References page with links"
    ]


@pytest.mark.parametrize(
    ("head", "body", "finding"),
    [
        ("", RAW_TABLE, "raw Markdown table text (3 line(s)): '| Method | Source | Rouge-1 |'"),
        ("", "<p>Only the delimiter row survived:</p><p>| --- |</p>", "raw Markdown table text (1 line(s)): '| --- |'"),
        (
            '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>',
            "",
            "remote script: <script src='https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js'>",
        ),
        (
            '<script>var s = document.createElement("script"); s.src = "//cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js";</script>',
            "",
            "math CDN in an inline script: '//cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js'",
        ),
        (
            '<link rel="stylesheet" href="https://fonts.example.org/font.css">',
            "",
            "remote stylesheet or preload: <link rel='stylesheet' href='https://fonts.example.org/font.css'>",
        ),
        ("", ERROR_OUTPUT, "traceback output: 'ValueError Traceback (most recent call last) Cell In[3], line 11'"),
        (
            "",
            STREAM_TRACEBACK,
            "traceback text: 'Traceback (most recent call last): File \"run.py\", line 3, in <module> ValueError: no data'",
        ),
        ("", "<p>答：全程一共有14\ufffd</p>", "1 replacement character(s) U+FFFD, the first in 'ibration: 100%|##########| 8/8 答：全程一共有14\ufffd'"),
        ("", WARNING_OUTPUT, "a warning in a cell's output: 'FutureWarning: `torch_dtype` is deprecated'"),
        ("", LOADING_OUTPUT, "a progress bar in a cell's output: 'Loading weights: 100%| 272/272'"),
        ("", '<div class="cell_output"><pre>Failed to load X. Please make sure you already `pip install kernels`</pre></div>',
         "a package's install notice in a cell's output: 'Failed to load X. Please make sure you already `pip install kernels`'"),
        ("", SILENT_CELL, "a show_markdown cell shows nothing: 'lines = [] show_markdown(\"\\\\n\".join(lines)) glue_values(x=1)'"),
        ("", UNRESOLVED_CITATION, "an unresolved citation: 'NF4, as in QLoRA [].'"),
    ],
    ids=["raw-table", "delimiter-row", "remote-mathjax", "inline-math-cdn", "remote-stylesheet", "error-output", "stream-traceback",
         "replacement-character", "warning", "loading-bar", "install-notice", "silent-show-markdown", "unresolved-citation"],
)
def test_each_defect_fails_naming_the_page_and_the_snippet(check_site, tmp_path: Path, capsys, head, body, finding):
    status, out, err = run(check_site, write_site(tmp_path, head, body), capsys)
    assert status == 1
    assert out == [f"book/chapter.html: {finding}"]
    assert err == f"check_site: 1 problem(s) in 3 page(s) of {tmp_path}\n"


def test_a_missing_or_incomplete_references_page_fails(check_site, tmp_path: Path, capsys):
    page = "book/bibliography.html"
    status, out, _ = run(check_site, write_site(tmp_path / "missing", references=""), capsys)
    assert (status, out) == (1, [f"{page}: missing (book/bibliography.md, listed in _toc.yml, renders the References page)"])

    required = list(check_site.REQUIRED_REFERENCES.items())
    entries = [url for _, url in required[1:]] + [""]  # the first work left out, and an entry without a link
    status, out, _ = run(check_site, write_site(tmp_path / "incomplete", references=references_page(check_site, entries,
                                                                                                     title="Bibliography")), capsys)
    assert status == 1
    assert out == [f"{page}: no title 'References'", f"{page}: an entry without a link to the work: '[W{len(entries) - 1}] A work.'",
                   f"{page}: {required[0][0]} is not listed with its link {required[0][1]}"]


def test_a_folder_without_pages_is_an_error_that_says_what_to_do(check_site, tmp_path: Path, capsys):
    status, out, err = run(check_site, tmp_path, capsys)
    assert (status, out) == (2, [])
    assert err == f"error: {tmp_path} holds no .html pages; build the book first (make book) or name the HTML folder\n"
