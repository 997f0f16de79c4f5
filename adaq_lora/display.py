"""Showing the package's own code and numbers inside the book's chapters (all chapters).

The chapters teach the code that runs, not a copy of it: `show_source` prints a function or class from this
package as the chapter's listing, and `show_markdown` lets a chapter state a measured number in prose.
"""
from __future__ import annotations

import inspect


def show_source(obj) -> "IPython.display.Markdown":
    """The source of `obj` as a highlighted listing, headed by the module it lives in."""
    from IPython.display import Markdown

    module = inspect.getmodule(obj).__name__
    return Markdown(f"`{module}.{obj.__qualname__}`\n\n```python\n{inspect.getsource(obj)}```")


def show_markdown(text: str) -> "IPython.display.Markdown":
    """Prose written from measured values (an f-string), rendered as Markdown."""
    from IPython.display import Markdown

    return Markdown(text)
