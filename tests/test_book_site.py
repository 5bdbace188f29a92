"""The built book as a reader meets it: readable offline, one author-year citation style.

One strict build per session (the `built_book` fixture) serves every check of the HTML.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BIB = ROOT / "book" / "references.bib"

# Hosts whose scripts, styles or fonts a page would need at reading time. None may appear
# in a built page: offline, a page that loads MathJax from a CDN shows raw TeX.
CDN_HOSTS = ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "ajax.googleapis.com",
             "fonts.googleapis.com", "fonts.gstatic.com", "polyfill.io")
# A reference that the browser loads on its own (not a link the reader clicks).
RESOURCE = re.compile(
    r"<(?:script|img|iframe|source|embed)\b[^>]*\bsrc=[\"']((?:https?:)?//[^\"']+)"
    r"|<link\b[^>]*\bhref=[\"']((?:https?:)?//[^\"']+)",
    re.I,
)
LABEL = re.compile(
    r'<div class="citation" id="([^"]+)"[^>]*>\s*<span class="label">'
    r'<span class="fn-bracket">\[</span>(.*?)<span class="fn-bracket">\]</span>',
    re.S,
)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> Path:
    """`jupyter-book build . --all -W -n --keep-going` into a temporary folder, once."""
    exe = BIN / "jupyter-book"
    if not exe.exists():
        exe = shutil.which("jupyter-book")
    assert exe, "jupyter-book is not installed: run `make setup`"
    out = tmp_path_factory.mktemp("book_site")
    proc = subprocess.run(
        [str(exe), "build", str(ROOT), "--all", "-W", "-n", "--keep-going", "--path-output", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    # Whether the build is warning-free is tests/test_book.py's job; with --keep-going every
    # page is written even when a warning elsewhere makes the exit status non-zero, and the
    # checks here are about the pages themselves.
    log = proc.stdout + proc.stderr
    html_dir = out / "_build" / "html"
    assert (html_dir / "index.html").exists(), f"the book build wrote no pages:\n{log[-6000:]}"
    return html_dir


def _pages(html_dir: Path) -> list[Path]:
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts)
    assert len(pages) > 10, f"only {len(pages)} pages were built"
    return pages


# --------------------------------------------------------------------------------------
# Offline reading
# --------------------------------------------------------------------------------------

@pytest.mark.book
def test_no_page_loads_math_or_scripts_from_a_cdn(built_book: Path):
    bad = []
    for page in _pages(built_book):
        text = page.read_text(errors="replace")
        rel = page.relative_to(built_book)
        for m in re.finditer(r"https?://[^\"'\s<>]*mathjax[^\"'\s<>]*", text, re.I):
            bad.append(f"{rel}: MathJax from {m.group(0)}")
        for host in CDN_HOSTS:
            if host in text:
                bad.append(f"{rel}: references {host}")
        for m in RESOURCE.finditer(text):
            bad.append(f"{rel}: loads {m.group(1) or m.group(2)} from the network")
    assert not bad, "pages that break offline reading:\n" + "\n".join(bad[:30])


@pytest.mark.book
def test_mathjax_is_served_from_the_book(built_book: Path):
    mathjax = built_book / "_static" / "mathjax"
    bundle = mathjax / "tex-chtml.js"
    assert bundle.exists() and bundle.stat().st_size > 500_000, f"the local MathJax bundle {bundle} is missing"
    fonts = list((mathjax / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 10, "MathJax's CHTML fonts were not copied"
    assert (mathjax / "input" / "tex" / "extensions").is_dir(), "lazy-loaded TeX extensions missing"
    math_pages = 0
    for page in _pages(built_book):
        text = page.read_text(errors="replace")
        srcs = re.findall(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*)\"", text, re.I)
        if not srcs:
            continue
        math_pages += 1
        for src in srcs:
            target = (page.parent / src.split("?")[0]).resolve()
            assert target.exists(), f"{page.name} loads MathJax from {src}, which is not in the build"
        # The macros of _config.yml (mathjax3_config) reach the page.
        assert re.search(r'window\.MathJax = \{.*"macros": \{"R": "\\\\mathbb\{R\}"', text), (
            f"{page.name}: the MathJax configuration lost the macros of _config.yml"
        )
    assert math_pages >= 10, f"only {math_pages} pages load MathJax"


@pytest.mark.book
def test_notation_page_has_math_for_mathjax(built_book: Path):
    text = (built_book / "book" / "notation.html").read_text()
    assert text.count('class="math') >= 10, "notation.html: its math is not marked up for MathJax"


# --------------------------------------------------------------------------------------
# Bibliography: one author-year style, every entry linked
# --------------------------------------------------------------------------------------

def test_every_bib_entry_has_a_doi_or_url():
    from pybtex.database import parse_file

    db = parse_file(str(BIB))
    missing = [k for k, e in db.entries.items() if not ({"doi", "url"} & {f.lower() for f in e.fields})]
    assert not missing, f"references.bib entries without a doi or url field: {missing}"
    for key, entry in db.entries.items():
        url = entry.fields.get("url", "")
        assert not url or re.match(r"https?://\S+$", url), f"{key}: url {url!r} is not an address"
        doi = entry.fields.get("doi", "")
        assert not doi or re.match(r"10\.\d{4,9}/\S+$", doi), f"{key}: doi {doi!r} is not a bare DOI"


def test_bib_titles_have_no_raw_tex_math():
    """Titles are rendered as text in HTML: `$...$` would be printed literally."""
    bad = re.findall(r"^\s*title\s*=.*\$.*$", BIB.read_text(), re.M)
    assert not bad, f"titles with TeX math (write O(n²) etc. as text): {bad}"


def _load_ext():
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import edl_book
    finally:
        sys.path.pop(0)
    return edl_book


def test_author_year_labels_disambiguate_in_sorted_order():
    from pybtex.database import parse_string

    ext = _load_ext()
    db = parse_string(
        r"""
        @article{b, author = {Dong, Chao and Loy, Chen Change and Tang, Xiaoou}, title = {Second}, year = {2016}}
        @article{a, author = {Dong, Chao and Loy, Chen Change and He, Kaiming}, title = {First}, year = {2016}}
        @article{c, author = {L{\'e}onard, Nicholas}, title = {T}, year = {2013}}
        @article{d, author = {van der Maaten, Laurens and Hinton, Geoffrey}, title = {T}, year = {2008}}
        @misc{e, title = {No Author}, year = {2011}}
        """,
        "bibtex",
    )
    style = ext.AuthorYearStyle()
    entries = list(style.sort(db.entries.values()))
    labels = dict(zip((e.key for e in entries), style.format_labels(entries)))
    assert labels["a"] == "Dong et al., 2016a" and labels["b"] == "Dong et al., 2016b"
    assert labels["c"] == "Léonard, 2013"
    assert labels["d"] == "van der Maaten and Hinton, 2008"
    assert labels["e"] == "No Author, 2011"


@pytest.mark.book
def test_bibliography_page_uses_author_year_labels(built_book: Path):
    text = (built_book / "book" / "bibliography.html").read_text()
    labels = [html.unescape(re.sub(r"<[^>]+>", "", lab)) for _, lab in LABEL.findall(text)]
    assert len(labels) > 20, "no bibliography labels found"
    alpha = [lab for lab in labels if re.fullmatch(r"[A-Za-z+]{2,}\d{2}[a-z]?", lab)]
    assert not alpha, f"alpha-style labels such as [DFE+22] in the bibliography: {alpha[:5]}"
    odd = [lab for lab in labels if not re.fullmatch(r".+, (\d{4}|n\.d\.)[a-z]?", lab)]
    assert not odd, f"labels not of the form 'Author et al., 2017': {odd[:5]}"
    assert len(set(labels)) == len(labels), "two entries share one label"
    main = text[text.find("<main"):]
    assert "$" not in re.sub(r"<[^>]+>", "", main), "raw TeX ($...$) printed in the bibliography"


@pytest.mark.book
def test_citations_in_the_text_read_as_the_bibliography_labels(built_book: Path):
    """A reader finds `[Dong et al., 2016a]` in the list under exactly that label."""
    bib_html = (built_book / "book" / "bibliography.html").read_text()
    label_of = {cid: html.unescape(re.sub(r"<[^>]+>", "", lab)) for cid, lab in LABEL.findall(bib_html)}
    cite = re.compile(r'<a class="reference internal" href="[^"]*bibliography\.html#([^"]+)"[^>]*>(.*?)</a>', re.S)
    checked, wrong = 0, []
    for page in _pages(built_book):
        for cid, inner in cite.findall(page.read_text(errors="replace")):
            if cid not in label_of:
                continue
            shown = html.unescape(re.sub(r"<[^>]+>", "", inner)).strip()
            checked += 1
            if shown != label_of[cid]:
                wrong.append(f"{page.name}: '{shown}' links to '{label_of[cid]}'")
    assert checked > 50, f"only {checked} citations found"
    assert not wrong, "citations that do not read as their bibliography label:\n" + "\n".join(wrong[:20])


# --------------------------------------------------------------------------------------
# The PDF: HTML-only notebook outputs become tables and listings (LaTeX builder only)
# --------------------------------------------------------------------------------------

def test_html_table_output_becomes_a_table_for_latex():
    from docutils import nodes

    ext = _load_ext()
    html_text = (
        "<table><caption>peak memory</caption>"
        "<thead><tr><th>T</th><th>naive (MiB)</th></tr></thead>"
        "<tbody><tr><td>1024</td><td>4.00</td></tr><tr><td>2048</td><td>16.0</td></tr></tbody></table>"
    )
    out = ext.html_output_to_nodes(html_text)
    assert out[0].astext() == "peak memory"
    table = out[1]
    assert isinstance(table, nodes.table)
    rows = [[e.astext() for e in r.findall(nodes.entry)] for r in table.findall(nodes.row)]
    assert rows == [["T", "naive (MiB)"], ["1024", "4.00"], ["2048", "16.0"]]
    assert len(list(table.findall(nodes.thead))) == 1


def test_html_listing_output_becomes_a_code_block_for_latex():
    from docutils import nodes

    ext = _load_ext()
    html_text = (
        "<div><code>minilib.env.pick</code></div><div class='highlight'><pre><span>def</span> "
        "pick(a):\n    <span>return</span> a &lt; 1\n</pre></div>"
        "<details><summary>Full listing</summary><pre>def pick(a):\n    check(a)\n</pre></details>"
    )
    title, code = ext.html_output_to_nodes(html_text)
    assert title.astext() == "minilib.env.pick"
    assert isinstance(code, nodes.literal_block) and code["language"] == "python"
    assert code.astext() == "def pick(a):\n    return a < 1"
    assert ext.html_output_to_nodes("<p>just text</p>") == []


def test_solution_outputs_stay_on_paper():
    """The PDF has no toggles: a hide-cell solution keeps its output (only its code is hidden)."""
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    ext = _load_ext()
    doc = new_document("test", get_default_settings(Parser))
    solution = nodes.container(classes=["cell", "tag_solution", "tag_hide-cell"])
    other = nodes.container(classes=["cell", "tag_hide-cell"])
    doc += [solution, other]
    ext.SolutionOutputsOnPaper(doc).run()
    assert solution["classes"] == ["cell", "tag_solution", "tag_hide-input"]
    assert other["classes"] == ["cell", "tag_hide-cell"]  # only solutions are unfolded
