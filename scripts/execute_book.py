"""Execute the book's notebooks with papermill and assemble the site that Jupyter Book turns into HTML.

The source notebooks in ``book/`` are kept without outputs. This script:

1. reads ``_toc.yml`` and finds every ``.ipynb`` chapter, in the order of the table of contents;
2. executes each one with papermill, passing ``{"profile": PROFILE}`` to its cell tagged ``parameters``,
   with the notebook's own folder as working directory, and writes the executed copy to
   ``_build/executed/<same relative path>``;
3. tidies that copy for reading (``tidy_for_reading``): each progress bar's many refreshes become its final
   line, and papermill's injected-parameters cell is folded away behind a toggle;
4. assembles ``_build/site/``: ``_config.yml``, ``_toc.yml``, the folders that hold the book's pages
   (``book/``, with figures and Markdown pages), and the executed notebooks in place of the sources.

``jupyter-book build _build/site --path-output .`` then writes the HTML to ``_build/html/`` without
executing anything (``execute_notebooks: "off"`` in ``_config.yml``). ``make book`` runs both steps.

Notebooks run in a kernel on the Python that runs this script (the project's virtual environment),
whatever other ``python3`` kernels are registered for the user.

Usage::

    python scripts/execute_book.py [--profile ci|cpu|paper] [--only CHAPTER] [--log-output]

A failing cell stops the run with exit status 1 and a message naming the chapter and the cell.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
import yaml

from adaq_lora.atomic import write_text_atomic

PROFILES = ("ci", "cpu", "paper")
KERNEL_NAME = "python3"
PAGE_SUFFIXES = (".ipynb", ".md", ".rst")
INJECTED_PARAMETERS_TAG = "injected-parameters"  # papermill's tag on the cell it adds
# hide-cell, not remove-cell: the injected cell holds the values in force, and with `make book PROFILE=cpu`
# they differ from the parameters cell's defaults (profile = "ci"), so they stay one click away.
INJECTED_PARAMETERS_DISPLAY_TAG = "hide-cell"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BookError(Exception):
    """A problem with the book's sources or its execution, with a message that says what to do."""


def toc_entries(toc: dict) -> list[str]:
    """Return the ``root`` and every ``file`` entry of a jb-book table of contents, in reading order."""
    if not isinstance(toc, dict) or "root" not in toc:
        raise BookError("_toc.yml has no 'root' entry; a jb-book table of contents starts with 'root: book/index'")
    entries = [str(toc["root"])]

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if "glob" in node:
                raise BookError(f"_toc.yml uses 'glob: {node['glob']}'; list the files one by one so their order is explicit")
            if "file" in node:
                entries.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                if key in node:
                    walk(node[key])

    walk({key: toc[key] for key in ("parts", "chapters", "sections") if key in toc})
    return entries


def resolve_page(root: Path, entry: str) -> Path:
    """Find the file behind a table-of-contents entry (entries may omit the suffix)."""
    path = root / entry
    if path.suffix in PAGE_SUFFIXES and path.is_file():
        return path
    for suffix in PAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    raise BookError(f"_toc.yml lists '{entry}', but no {'/'.join(PAGE_SUFFIXES)} file of that name exists under {root}")


def book_pages(root: Path) -> list[Path]:
    """Every page of the book (absolute paths), in the order of ``_toc.yml``."""
    toc_path = root / "_toc.yml"
    if not toc_path.is_file():
        raise BookError(f"no _toc.yml in {root}; run this script from the repository root or pass --root")
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    return [resolve_page(root, entry) for entry in toc_entries(toc)]


def chapter_name(root: Path, notebook: Path) -> str:
    return notebook.relative_to(root).with_suffix("").as_posix()


def select_chapters(root: Path, notebooks: list[Path], only: str | None) -> list[Path]:
    if only is None:
        return notebooks
    wanted = only.removesuffix(".ipynb").rstrip("/")
    matches = [nb for nb in notebooks if wanted in (chapter_name(root, nb), nb.stem)]
    if not matches:
        known = ", ".join(chapter_name(root, nb) for nb in notebooks) or "(none)"
        raise BookError(f"--only {only}: no notebook chapter of that name in _toc.yml; the chapters are: {known}")
    return matches


def use_this_python_for_kernel(build_dir: Path) -> None:
    """Make the ``python3`` kernel run on ``sys.executable``.

    A kernelspec written under ``build_dir`` goes first on ``JUPYTER_PATH`` for this process and its
    children, so a ``python3`` kernel registered elsewhere (for the user, or by another environment)
    cannot take its place. The notebooks keep ``python3`` in their metadata, which Colab understands.
    """
    spec_root = build_dir / "jupyter"
    spec_dir = spec_root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    # tqdm.auto, imported by transformers and datasets, warns in every kernel without ipywidgets that it
    # falls back to text progress bars; the rendered book would show that advice on the first cell of each
    # chapter. Text bars are what a static page can show, so the warning is silenced in these kernels only.
    warnings = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "env": {"PYTHONWARNINGS": warnings},
        "metadata": {"debugger": True, "supported_encryption": ["curve"]},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(spec_root.resolve())] + ([old] if old else []))

    from jupyter_client.kernelspec import KernelSpecManager

    resolved = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    if resolved.argv[0] != sys.executable:
        raise BookError(
            f"the '{KERNEL_NAME}' kernel resolves to {resolved.argv[0]} ({resolved.resource_dir}), "
            f"not to {sys.executable}; unset JUPYTER_PATH or remove that kernelspec"
        )


def _source_cell_number(source_nb, error) -> int:
    """1-based number, in the source notebook, of the cell that raised (papermill counts its injected cell)."""
    candidates = [i for i, cell in enumerate(source_nb.cells) if cell.source == error.source]
    if candidates:
        return min(candidates, key=lambda i: abs(i - error.cell_index)) + 1
    return error.cell_index + 1


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "(empty cell)"


def apply_carriage_returns(text: str) -> str:
    """Keep, of each line, only the text after its last carriage return, as a notebook front end shows it.

    A progress bar redraws itself by writing ``\\r`` and its new state on the same line; the line's final
    state is what a reader of the rendered page should see. ``\\r\\n`` is a line end, not a redraw.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def _is_stream(output, name: str | None = None) -> bool:
    return output.get("output_type") == "stream" and name in (None, output.get("name"))


def merge_streams(outputs: list) -> list:
    """Join consecutive stream outputs of the same stream and apply carriage returns to the joined text.

    The kernel sends every progress-bar refresh as its own stream message, and the book would show each as
    its own output block. A stream left with nothing but white space (a bar cleared on closing, a bar's last
    line end arriving after another stream's output) is dropped: it would show as an empty block. Other
    outputs, and the order of all outputs, are kept; the input is not changed.
    """
    merged = []
    for output in outputs:
        if not _is_stream(output):
            merged.append(output)
        elif merged and _is_stream(merged[-1], output["name"]):
            merged[-1]["text"] += output["text"]
        else:
            merged.append(nbformat.NotebookNode(output))  # a copy, so that the += above leaves the input alone
    for output in merged:
        if _is_stream(output):
            output["text"] = apply_carriage_returns(output["text"])
    return [output for output in merged if not _is_stream(output) or output["text"].strip()]


def tidy_for_reading(path: Path) -> None:
    """Rewrite an executed notebook for the rendered book: progress bars to their final lines, and the cell
    papermill injected folded behind a toggle, so that the parameters do not show twice on the page.
    """
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = merge_streams(cell.outputs)
        tags = cell.metadata.get("tags", [])
        if INJECTED_PARAMETERS_TAG in tags and INJECTED_PARAMETERS_DISPLAY_TAG not in tags:
            cell.metadata["tags"] = tags + [INJECTED_PARAMETERS_DISPLAY_TAG]
    write_text_atomic(path, nbformat.writes(nb) + "\n")  # nbformat.write ends the file so too


GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")  # {glue:text}`name:.3f` in a Markdown cell


def unglued_names(path: Path) -> list[tuple[int, str]]:
    """(cell number, name) for each value a Markdown cell pastes that no output of the executed notebook glued:
    the built page would silently leave it out (myst-nb only warns)."""
    nb = nbformat.read(path, as_version=4)
    glued = {output.get("metadata", {}).get("scrapbook", {}).get("name")
             for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs}
    return [(number, name) for number, cell in enumerate(nb.cells, 1) if cell.cell_type == "markdown"
            for name in GLUE_ROLE.findall(cell.source) if name not in glued]


def execute_chapter(root: Path, notebook: Path, executed: Path, profile: str, log_output: bool) -> float:
    """Execute one chapter into ``executed``; return its wall time in seconds."""
    import papermill
    import zmq
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    name = chapter_name(root, notebook)
    executed.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {}
    if zmq.has("curve"):
        # Encrypt the connection to the kernel (the kernelspec declares support), as ipykernel advises.
        engine_kwargs["config"] = Config({"KernelManager": {"transport_encryption": "auto"}})
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={"profile": profile},
            kernel_name=KERNEL_NAME,
            language="python",
            cwd=str(notebook.parent),
            progress_bar=False,
            log_output=log_output,
            **engine_kwargs,
        )
    except PapermillExecutionError as error:
        source_nb = nbformat.read(notebook, as_version=4)
        number = _source_cell_number(source_nb, error)
        traceback = [_ANSI.sub("", line) for line in error.traceback]
        detail = "\n".join(traceback[-6:])
        raise BookError(
            f"chapter {name} failed at cell {number} of {notebook.relative_to(root)} "
            f"(it starts: {_first_line(error.source)!r}): {error.ename}: {error.evalue}\n"
            f"{detail}\n"
            f"The partly executed notebook, with the error in place, is {executed}"
        ) from None
    except Exception as error:  # the kernel died, could not start, timed out, ...
        raise BookError(f"chapter {name} failed: {type(error).__name__}: {error}") from None
    seconds = time.perf_counter() - start
    tidy_for_reading(executed)
    if missing := unglued_names(executed):
        raise BookError(f"chapter {name}: Markdown cells paste values that no code cell glued "
                        f"({', '.join(f'cell {number}: {key}' for number, key in missing)}); glue each with "
                        f"adaq_lora.display.glue_values in a cell that runs before it. Executed notebook: {executed}")
    return seconds


def executed_profile(path: Path) -> str | None:
    nb = nbformat.read(path, as_version=4)
    return nb.metadata.get("papermill", {}).get("parameters", {}).get("profile")


def assemble_site(root: Path, build_dir: Path, pages: list[Path], profile: str) -> Path:
    """Write ``build_dir/site``: configuration, page folders, and executed notebooks over their sources."""
    site = build_dir / "site"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, site / name)

    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    extra = [config.get("logo"), config.get("html", {}).get("favicon")] + list(config.get("bibtex_bibfiles") or [])
    for item in filter(None, extra):
        src = root / item
        if not src.is_file():
            raise BookError(f"_config.yml names '{item}', which does not exist")
        (site / item).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, site / item)

    ignore = shutil.ignore_patterns("_build", ".ipynb_checkpoints", "__pycache__")
    folders = sorted({page.parent.relative_to(root) for page in pages}, key=lambda p: len(p.parts))
    copied: list[Path] = []
    for folder in folders:
        if folder == Path("."):
            for page in pages:
                if page.parent == root:
                    shutil.copy2(page, site / page.name)
            continue
        if any(folder.is_relative_to(done) for done in copied):
            continue
        shutil.copytree(root / folder, site / folder, ignore=ignore, dirs_exist_ok=True)  # a bib file may be there
        copied.append(folder)

    for page in pages:
        if page.suffix != ".ipynb":
            continue
        rel = page.relative_to(root)
        executed = build_dir / "executed" / rel
        if not executed.is_file():
            print(f"  note: {rel} has not been executed; the book shows it without outputs", flush=True)
            continue
        if executed.stat().st_mtime < page.stat().st_mtime:
            print(f"  note: {rel} changed since it was executed; the book shows the older outputs", flush=True)
        ran_with = executed_profile(executed)
        if ran_with != profile:
            print(f"  note: {rel} was executed with profile {ran_with!r}, not {profile!r}", flush=True)
        shutil.copy2(executed, site / rel)
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="ci", choices=PROFILES, help="run profile passed to every chapter (default: ci)")
    parser.add_argument("--only", metavar="CHAPTER", help="execute one chapter, e.g. 00_preface or book/00_preface")
    parser.add_argument("--root", type=Path, default=Path("."), help="folder holding _config.yml and _toc.yml (default: .)")
    parser.add_argument("--build-dir", type=Path, default=None, help="output folder (default: ROOT/_build)")
    parser.add_argument("--log-output", action="store_true", help="stream the cells' outputs while they run")
    args = parser.parse_args(argv)

    root = args.root.resolve()
    build_dir = (args.build_dir or root / "_build").resolve()
    try:
        pages = book_pages(root)
        notebooks = [page for page in pages if page.suffix == ".ipynb"]
        chosen = select_chapters(root, notebooks, args.only)
        use_this_python_for_kernel(build_dir)
        if args.log_output:
            import logging

            logging.basicConfig(level=logging.INFO, format="%(message)s")
        print(f"Executing {len(chosen)} chapter(s) with profile '{args.profile}' on {sys.executable}", flush=True)
        total = 0.0
        for notebook in chosen:
            name = chapter_name(root, notebook)
            print(f"- {name} ...", flush=True)
            executed = build_dir / "executed" / notebook.relative_to(root)
            seconds = execute_chapter(root, notebook, executed, args.profile, args.log_output)
            total += seconds
            print(f"  {name}: {seconds:.1f} s", flush=True)
        print(f"Executed {len(chosen)} chapter(s) in {total:.1f} s", flush=True)
        site = assemble_site(root, build_dir, pages, args.profile)
        print(f"Site sources ready in {site}", flush=True)
    except BookError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
