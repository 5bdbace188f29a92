"""The book as a whole: strict build, stored outputs, jupytext pairs, table of contents."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*/*.ipynb"))
BIN = Path(sys.executable).parent


def _config_repository_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", text, re.M)
    assert match, "_config.yml must define repository.url"
    return match.group(1)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/*/"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_outputs_and_no_errors(nb: Path):
    """Execution is off in the book, so a stored traceback would be published: forbid it."""
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert any(c.get("outputs") for c in code), f"{nb.name} has no stored outputs: execute it"
    for c in code:
        for out in c.get("outputs", []):
            assert out.get("output_type") != "error", (
                f"{nb.name} stores an error output ({out.get('ename')}): re-execute it"
            )


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_metadata(nb: Path):
    meta = json.loads(nb.read_text())["metadata"]
    assert meta.get("kernelspec", {}).get("name") == "python3", (
        f"{nb.name}: kernelspec.name must be python3 (the kernel CI registers)"
    )
    assert "ipynb,py:percent" in meta.get("jupytext", {}).get("formats", ""), (
        f"{nb.name} is not paired with a py:percent file (jupytext --set-formats ipynb,py:percent)"
    )
    assert "widgets" not in meta, f"{nb.name} stores widget state: clear it before committing"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupytext_pair_in_sync(nb: Path):
    """The .py (reviewed source) and the .ipynb (stored outputs) hold the same cells."""
    import jupytext

    py = nb.with_suffix(".py")
    assert py.exists(), f"{nb.name} has no paired {py.name}"
    a = jupytext.read(py)
    b = jupytext.read(nb)

    def cells(n):
        return [(c.cell_type, c.source.strip()) for c in n.cells]

    assert cells(a) == cells(b), (
        f"{py.name} and {nb.name} differ: run `jupytext --sync {py.relative_to(ROOT)}` "
        "or re-execute with `make execute`"
    )


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_install_cell_uses_the_configured_repository(nb: Path):
    """The repository URL lives in _config.yml; each notebook's Colab cell must match it."""
    url = _config_repository_url()
    first_code = next(c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
    source = "".join(first_code["source"])
    assert "google.colab" in source and f"git+{url}" in source, (
        f"{nb.name}: the first code cell must install minilib on Colab from git+{url}"
    )


def test_toc_lists_every_notebook():
    toc = (ROOT / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        rel = nb.relative_to(ROOT).with_suffix("").as_posix()
        assert rel in toc, f"{rel} is missing from _toc.yml (the build would skip it silently)"


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    sources = list((ROOT / "book").glob("*.md")) + list((ROOT / "notebooks").glob("*/*.py"))
    sources += list((ROOT / "notebooks").glob("*/*.md"))
    for src in sources:
        for group in re.findall(r"\{cite[:a-z]*\}`([^`]+)`", src.read_text()):
            for key in group.split(","):
                assert key.strip() in keys, f"{src.name} cites {key.strip()!r}, not in references.bib"


@pytest.mark.book
def test_strict_book_build(tmp_path: Path):
    """`jupyter-book build -W -n --keep-going` must finish without a single warning."""
    exe = BIN / "jupyter-book"
    if not exe.exists():
        exe = shutil.which("jupyter-book")
    assert exe, "jupyter-book is not installed: run `make setup`"
    out = tmp_path / "site"
    proc = subprocess.run(
        [str(exe), "build", str(ROOT), "--all", "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"strict book build failed:\n{log[-6000:]}"
    assert "WARNING" not in log, f"the build printed warnings:\n{log[-6000:]}"
    assert (out / "_build" / "html" / "index.html").exists()
