"""Show library code inside a notebook, so the book is the library's documentation."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

__all__ = ["show", "source", "glue"]

# The mime-type prefix under which myst-nb looks for glued values in stored outputs.
GLUE_PREFIX = "application/papermill.record/"


def source(obj: Any) -> str:
    """The source code of a minilib function, class or method, dedented."""
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError) as err:
        raise TypeError(
            f"ml.show needs a Python function, class or method defined in a file; "
            f"got {type(obj).__name__} ({err})"
        ) from None


def show(obj: Any) -> None:
    """Display the source of ``obj``, syntax-highlighted in a notebook, plain text elsewhere.

    Example: ``ml.show(ml.bench.time_fn)`` prints the timing routine the book uses.
    """
    code = source(obj)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # plain Python: print it
        print(code)
        return
    if get_ipython() is None:
        print(code)
        return
    module = getattr(obj, "__module__", "")
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", ""))
    formatter = HtmlFormatter(noclasses=True, style="friendly", nowrap=False)
    html = highlight(code, PythonLexer(), formatter)
    header = f"<div style='font-size:0.85em;color:#555'><code>{module}.{name}</code></div>"
    display(HTML(header + html))


def glue(name: str, value: Any, fmt: str | None = None) -> Any:
    """Store ``value`` under ``name`` in the notebook's outputs, for the book's prose.

    The book quotes measured numbers with ``{glue:}`name``` so that no number in the text
    is typed in by hand: it is whatever the last execution of the notebook measured.
    ``fmt`` is a format spec (``".1f"``, ``".2%"``) applied before storing. This writes the
    same record as ``myst_nb.glue`` (a hidden display output), so it works on Colab where
    myst-nb is not installed. Returns ``value``.
    """
    text = format(value, fmt) if fmt else str(value)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return value
    if get_ipython() is not None:
        display(
            {GLUE_PREFIX + "text/plain": text},
            raw=True,
            metadata={"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}},
        )
    return value
