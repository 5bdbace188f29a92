#!/usr/bin/env python3
"""Write the student edition of every notebook: the same notebooks without their solutions.

    python tools/student_edition.py            # writes _student/notebooks/<chapter>/<name>.ipynb
    python tools/student_edition.py --out DIR

A solution is any cell tagged ``solution`` (Markdown dropdowns and code cells alike; see the
conventions in README.md). The student copies keep every other cell, with outputs cleared so
students run them themselves; each notebook gets a note at the top saying it is the student
edition. Exercises stay. Run it from anywhere; it reads the notebooks listed in ``_toc.yml``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from run_book import toc_notebooks  # noqa: E402

NOTE = ("**Student edition.** The solutions of the exercises are removed from this copy; "
        "the full notebook is in the book.")


def student_copy(nb):
    """``nb`` (an nbformat notebook) without cells tagged ``solution``; returns (copy, removed)."""
    import copy

    out = copy.deepcopy(nb)
    kept, removed = [], 0
    for cell in out.cells:
        if "solution" in cell.get("metadata", {}).get("tags", []):
            removed += 1
            continue
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        kept.append(cell)
    out.cells = kept
    import nbformat
    out.cells.insert(1 if kept and kept[0].cell_type == "markdown" else 0,
                     nbformat.v4.new_markdown_cell(NOTE))
    out.metadata.get("jupytext", {}).pop("formats", None)  # not paired with the book's .py
    return out, removed


def main(argv: list[str] | None = None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_student"), help="output folder (default _student/)")
    args = ap.parse_args(argv)
    out_root = Path(args.out)
    total = 0
    for py in toc_notebooks():
        ipynb = py.with_suffix(".ipynb")
        nb = nbformat.read(ipynb, as_version=4)
        copy_, removed = student_copy(nb)
        dest = out_root / ipynb.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(copy_, dest)
        total += removed
        print(f"{dest.relative_to(out_root)}: {removed} solution cell(s) removed")
    print(f"student edition in {out_root} ({total} solution cells removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
