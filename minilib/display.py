"""Show library code inside a notebook, so the book is the library's documentation."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

__all__ = ["show", "source", "core", "glue"]

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


_MARK = "...  # argument checks (see the full listing)"


def _is_check(node: ast.stmt) -> bool:
    """An argument check: ``if ...: raise ...`` (no else), or a call of a ``_check*`` helper."""
    if isinstance(node, ast.If) and not node.orelse:
        return all(isinstance(n, ast.Raise) for n in node.body)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
        return name.startswith("_check")
    return False


def core(code: str) -> str:
    """``code`` (a function or class) reduced to what a reader needs to see.

    Docstrings keep their first paragraph; argument checks at the top level of a function
    body (``if ...: raise``, calls of ``_check*`` helpers) become one comment line. The
    full source is still one click away in :func:`show`.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    lines = code.splitlines()
    drop: dict[int, str | None] = {}  # 0-based line -> replacement (None: delete)

    def trim_docstring(body: list[ast.stmt]) -> None:
        """Keep the summary paragraph and indented blocks (equations); drop the rest."""
        if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            return
        a, b = body[0].lineno - 1, body[0].end_lineno - 1
        first = lines[a]
        quote = '"""' if '"""' in first else "'''"
        blank = next((k for k in range(a + 1, b) if not lines[k].strip()), None)
        if blank is None:
            return
        indent = first[: len(first) - len(first.lstrip())]
        keep: list[int] = []
        k = blank + 1
        while k < b:  # paragraphs after the summary: keep those indented deeper (equations)
            end = next((j for j in range(k, b) if not lines[j].strip()), b)
            para = [j for j in range(k, end) if lines[j].strip()]
            if para and all(len(lines[j]) - len(lines[j].lstrip()) > len(indent) for j in para):
                keep += [blank] + para
            k = end + 1
        for k in range(blank, b + 1):
            drop[k] = None
        for k in keep:
            drop[k] = lines[k]
        if not keep and blank == a + 1:  # a one-line summary: close the docstring on it
            drop[a] = first.rstrip() + quote
        else:
            drop[b] = indent + quote

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            trim_docstring(node.body)
            if not isinstance(node, ast.ClassDef):
                checks = [n for n in node.body if _is_check(n)]
                for n in checks:
                    a, b = n.lineno - 1, n.end_lineno - 1
                    indent = lines[a][: len(lines[a]) - len(lines[a].lstrip())]
                    for k in range(a, b + 1):
                        drop[k] = None
                    drop[a] = indent + _MARK
            for child in node.body:
                visit(child)

    for node in tree.body:
        visit(node)
    out: list[str] = []
    for i, line in enumerate(lines):
        line = drop.get(i, line) if i in drop else line
        if line is None:
            continue
        if line.strip() == _MARK and out and out[-1].strip() == _MARK:
            continue  # consecutive checks: one marker
        out.append(line)
    return "\n".join(out) + ("\n" if code.endswith("\n") else "")


def show(obj: Any, full: bool = False) -> None:
    """Display the core of ``obj``'s source, syntax-highlighted, with the full listing folded.

    The core keeps each docstring's first paragraph and folds argument checks into one
    comment (see :func:`core`); below it a collapsed block holds the complete source.
    ``full=True`` shows the complete source directly. Outside a notebook, prints the text.
    Example: ``ml.show(ml.bench.time_fn)`` prints the timing routine the book uses.
    """
    code = source(obj)
    short = code if full else core(code)
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # plain Python: print it
        print(short)
        return
    if get_ipython() is None:
        print(short)
        return
    module = getattr(obj, "__module__", "")
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", ""))
    formatter = HtmlFormatter(noclasses=True, style="friendly", nowrap=False)
    header = f"<div style='font-size:0.85em;color:#555'><code>{module}.{name}</code></div>"
    body = highlight(short, PythonLexer(), formatter)
    if short != code:
        n = code.count("\n") + 1
        body += ("<details><summary style='font-size:0.85em;color:#555;cursor:pointer'>"
                 f"Full listing with docstring and argument checks ({n} lines)</summary>"
                 + highlight(code, PythonLexer(), formatter) + "</details>")
    display(HTML(header + body))


def glue(name: str, value: Any, fmt: str | None = None) -> None:
    """Store ``value`` under ``name`` in the notebook's outputs, for the book's prose.

    The book quotes measured numbers with ``{glue:}`name``` so that no number in the text
    is typed in by hand: it is whatever the last execution of the notebook measured.
    ``fmt`` is a format spec (``".1f"``, ``".2%"``) applied before storing. This writes the
    same record as ``myst_nb.glue`` (a hidden display output), so it works on Colab where
    myst-nb is not installed. Returns ``None``, so a glue call never leaves a stray output
    as the last line of a cell.
    """
    text = format(value, fmt) if fmt else str(value)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    if get_ipython() is not None:
        display(
            {GLUE_PREFIX + "text/plain": text},
            raw=True,
            metadata={"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}},
        )
    return None
