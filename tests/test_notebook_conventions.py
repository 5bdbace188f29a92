"""The conventions of README.md's "Contributing" section that a test can see, per notebook.

Checked on the stored ``.ipynb`` of every notebook in ``_toc.yml``: what nbval compares is
identical on every CPU, glue is hidden, no stray outputs, solutions are separate tagged
cells (so the student edition can drop them), exercises carry a kind and a level,
tables keep their columns apart, sections are numbered inside the notebook, outputs name
no machine's absolute paths.
"""

from __future__ import annotations

import ast
import html
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from run_book import toc_notebooks  # noqa: E402

NOTEBOOKS = [p.with_suffix(".ipynb") for p in toc_notebooks()]

# Notebooks written before these conventions, converted one by one; the set only shrinks.
LEGACY: set[str] = set()
CURRENT = [nb for nb in NOTEBOOKS if nb.stem not in LEGACY]

FLOAT = re.compile(r"(?<![\d.\w])(\d(\.\d+)?e[-+]?\d+|\d+\.\d{3,})")
BOUND_BEFORE = re.compile(r"(<=?|within|below|under|tol(erance)?=?|atol=?|rtol=?)\s*$")
LITERAL = re.compile(r"""^\s*(-?[\d.,_e+-]+|'[^']*'|"[^"]*"|True|False|None|[\[{(].*[\]})])\s*$""", re.S)
EXERCISE = re.compile(r"^###\s+Exercise\s+(\d+)\s*:.*\((implement|measure|explain)\s*,\s*(easy|medium|hard)\)\s*$", re.M)
ABSPATH = re.compile(r"(?<![\w.])/(work|tmp|root|home|Users|content)/[\w.-]+/")


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _text(output: dict) -> str:
    if "text" in output:
        t = output["text"]
        return "".join(t) if isinstance(t, list) else t
    data = output.get("data", {})
    t = data.get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


def _html(output: dict) -> str:
    h = output.get("data", {}).get("text/html", "")
    return "".join(h) if isinstance(h, list) else h


def _html_text(output: dict) -> str:
    """The visible text of an output's HTML (a Table's cells), tags dropped and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", _html(output)))


ids = dict(ids=lambda p: p.stem)


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_checked_cells_print_no_raw_floats(nb: Path):
    """nbval compares these outputs on every CPU: a raw float differs between Intel and AMD."""
    for i, cell in enumerate(_cells(nb)):
        if "nbval-check-output" not in _tags(cell):
            continue
        for out in cell.get("outputs", []):
            # nbval compares text/plain, but a Table's HTML is what a reader sees: check both
            for text in (_text(out), _html_text(out)):
                for m in FLOAT.finditer(text):
                    before = text[max(0, m.start() - 12):m.start()]
                    assert BOUND_BEFORE.search(before), (
                        f"{nb.name} cell {i} is tagged nbval-check-output but prints the float "
                        f"{m.group(0)!r} ({text.strip()[:120]!r}): print a bound ('max error < 1e-5'), "
                        f"a boolean or a shape instead")


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_outputs_name_no_absolute_paths(nb: Path):
    for i, cell in enumerate(_cells(nb)):
        for out in cell.get("outputs", []):
            m = ABSPATH.search(_text(out))
            assert not m, f"{nb.name} cell {i} prints the machine path {m.group(0)!r}: print paths relative to the data folder"


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_glue_cells_are_removed(nb: Path):
    for i, cell in enumerate(_cells(nb)):
        if cell["cell_type"] == "code" and "ml.glue(" in _src(cell):
            assert "remove-cell" in _tags(cell), (
                f"{nb.name} cell {i} calls ml.glue but is not tagged remove-cell: put the glue "
                f"calls in a cell of their own tagged remove-cell")


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_no_stray_execute_results(nb: Path):
    """A bare value as a cell's last line (``256``, ``'x3'``, a dict) is a debug leftover."""
    for i, cell in enumerate(_cells(nb)):
        for out in cell.get("outputs", []):
            if out.get("output_type") != "execute_result":
                continue
            data = out.get("data", {})
            if set(data) - {"text/plain"}:
                continue  # rich output (a Table's HTML, a figure): meant to be shown
            text = _text(out)
            assert not LITERAL.match(text), (
                f"{nb.name} cell {i} ends in a bare value that is shown as {text.strip()[:80]!r}: "
                f"end the line with ';', print it, or drop it")


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_colab_cell_is_hidden(nb: Path):
    first = next(c for c in _cells(nb) if c["cell_type"] == "code")
    assert "hide-input" in _tags(first), f"{nb.name}: tag the Colab install cell hide-input"


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_solutions_are_tagged_cells_of_their_own(nb: Path):
    cells = _cells(nb)
    exercises: list[int] = []
    solved: set[int] = set()
    for i, cell in enumerate(cells):
        src, tags = _src(cell), _tags(cell)
        if cell["cell_type"] == "markdown":
            if "{dropdown} Solution" in src:
                assert "solution" in tags, f"{nb.name} cell {i} holds a solution dropdown but is not tagged solution"
                assert re.match(r"^:{3,}\{dropdown\} Solution \d+", src.strip()), (
                    f"{nb.name} cell {i}: a solution cell holds only its dropdown "
                    f"(starting ':::{{dropdown}} Solution k'); put other text in its own cell")
            exercises += [int(k) for k, _, _ in EXERCISE.findall(src)]
            if "### Exercise" in src:
                assert EXERCISE.search(src), (
                    f"{nb.name} cell {i}: an exercise heading reads '### Exercise k: title (kind, level)' "
                    f"with kind implement|measure|explain and level easy|medium|hard")
                assert len(re.findall(r"^### Exercise", src, re.M)) == 1, (
                    f"{nb.name} cell {i}: one exercise per cell")
        if "solution" in tags:
            if cell["cell_type"] == "code":
                # hide-cell folds the output too: the printed answer stays behind the toggle
                assert "hide-cell" in tags or "remove-cell" in tags, (
                    f"{nb.name} cell {i}: a code solution is also tagged hide-cell (or remove-cell for glue)")
            m = re.search(r"Solution (\d+)", src)
            assert m, f"{nb.name} cell {i} is tagged solution but does not say which ('Solution k')"
            solved.add(int(m.group(1)))
    assert exercises, f"{nb.name} has no exercises ('### Exercise k: title (kind, level)')"
    missing = sorted(set(exercises) - solved)
    assert not missing, f"{nb.name}: exercises {missing} have no solution cell"


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_sections_are_numbered_inside_the_notebook(nb: Path):
    chapter, section = re.match(r"(\d+)_(\d+)_", nb.name).groups()
    prefix = f"{int(chapter)}.{int(section)}"
    for i, cell in enumerate(_cells(nb)):
        if cell["cell_type"] != "markdown":
            continue
        for heading in re.findall(r"^#{2,3} (\d[\d.]*)", _src(cell), re.M):
            assert heading.startswith(prefix + "."), (
                f"{nb.name} cell {i}: section number {heading} must start with {prefix}. "
                f"(numbered inside notebook {prefix}, or not numbered)")


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_stored_tables_keep_columns_apart(nb: Path):
    """An HTML table without cell padding fuses adjacent columns ("1 | 61 ms" reads "161 ms")."""
    for i, cell in enumerate(_cells(nb)):
        for out in cell.get("outputs", []):
            table = _html(out)
            if "<table" in table:
                assert "padding" in table, f"{nb.name} cell {i}: a stored table has no cell padding (use ml.bench.Table)"


def _names(src: str) -> tuple[set[str], set[str]]:
    """(names a cell binds, names it reads) at any depth; empty for cells that are not Python."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return set(), set()
    bound, read = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound, read


@pytest.mark.parametrize("nb", CURRENT, **ids)
def test_the_student_edition_still_runs(nb: Path):
    """No cell outside the solutions reads a name that only a solution defines: the student
    edition drops the solutions, and such a cell would fail there with a NameError."""
    code = [c for c in _cells(nb) if c["cell_type"] == "code"]
    outside = set().union(*(_names(_src(c))[0] for c in code if "solution" not in _tags(c)))
    only_in_solutions = set().union(*(_names(_src(c))[0] for c in code if "solution" in _tags(c))) - outside
    for i, cell in enumerate(_cells(nb)):
        if cell["cell_type"] != "code" or "solution" in _tags(cell):
            continue
        used = _names(_src(cell))[1] & only_in_solutions
        assert not used, (f"{nb.name} cell {i} reads {sorted(used)}, defined only in solution cells: "
                          f"the student edition (no solutions) would fail there; define them outside")


def test_student_edition_drops_every_solution(tmp_path: Path):
    import student_edition

    assert student_edition.main(["--out", str(tmp_path)]) == 0
    for nb in CURRENT:
        copy_ = json.loads((tmp_path / nb.relative_to(ROOT)).read_text())
        assert not any("solution" in _tags(c) for c in copy_["cells"]), nb.name
        assert not any("{dropdown} Solution" in _src(c) for c in copy_["cells"]), nb.name
        assert any(EXERCISE.search(_src(c)) for c in copy_["cells"]), f"{nb.name}: the exercises must stay"
