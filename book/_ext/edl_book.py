"""Sphinx extension of the book (loaded through `sphinx.local_extensions` in _config.yml).

Three jobs, all about the book as a reader meets it:

1. Offline reading. MathJax 3 is served from the built book (`_static/mathjax/`, copied
   from the pinned `sphinx-mathjax-offline` package) instead of a CDN, so math renders
   from a `file://` copy without network. The sphinx-thebe loader, which points at a CDN
   and is only used by a "live code" button this book does not show, is dropped.
2. A readable PDF: notebook outputs that exist only as HTML (`ml.bench.Table`, `ml.show`)
   become real tables and code listings in the LaTeX build (see `HtmlOutputsForLatex`).
3. One author-year citation style. `{cite}` in the text and the label in the
   bibliography are the same string, e.g. "Vaswani et al., 2017", with "a", "b", ...
   appended when two entries would read the same ("Dong et al., 2016a"). The list is
   sorted by author, year, title.
"""

from __future__ import annotations

import shutil
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from html.parser import HTMLParser
from types import SimpleNamespace

import pybtex.plugin
from docutils import nodes
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting.author_year_title import SortingStyle as AuthorYearTitleSortingStyle
from pybtex.style.template import node
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinxcontrib.bibtex.plugin import register_plugin
from sphinxcontrib.bibtex.style.referencing import PersonStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle
from sphinxcontrib.bibtex.style.referencing.basic_author_year import (
    BasicAuthorYearParentheticalReferenceStyle,
    BasicAuthorYearTextualReferenceStyle,
)
from sphinxcontrib.bibtex.style.template import join, join2, post_text, pre_text, reference

# --------------------------------------------------------------------------------------
# 1. MathJax from the built book
# --------------------------------------------------------------------------------------

MATHJAX_ENTRY = "mathjax/tex-chtml.js"  # relative to _static
# Combined builds we never load (tex-chtml.js is the entry point); skipping them keeps
# the copy at about 7 MB instead of 24 MB. Everything tex-chtml.js may load lazily
# (input/tex/extensions, output/chtml fonts, ui/menu, a11y, sre) is copied.
_SKIP = {
    "tex-mml-chtml.js", "tex-chtml-full.js", "tex-chtml-full-speech.js", "tex-svg.js",
    "tex-svg-full.js", "tex-mml-svg.js", "mml-chtml.js", "mml-svg.js", "node-main.js",
}


def mathjax_source() -> Path:
    """The MathJax 3 tree shipped by the sphinx-mathjax-offline wheel."""
    dist = metadata.distribution("sphinx-mathjax-offline")
    root = Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))
    if not (root / "tex-chtml.js").exists():
        raise FileNotFoundError(
            f"MathJax not found at {root}: install the pinned sphinx-mathjax-offline "
            "(pip install -c constraints.txt -e '.[book]')"
        )
    return root


def _copy_mathjax(app, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    src, dst = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(
        src, dst,
        ignore=lambda d, names: [n for n in names if Path(d) == src and n in _SKIP]
                                + [n for n in names if Path(d) == src / "output" and n.startswith("svg")],
    )


def _set_mathjax_path(app, config) -> None:
    config.mathjax_path = MATHJAX_ENTRY
    config.html_static_path = [*config.html_static_path, str(Path(__file__).parent / "static")]


def _drop_cdn_scripts(app, pagename, templatename, context, doctree) -> None:
    """Remove the sphinx-thebe loader (a CDN address, unused without a thebe button)."""
    scripts = context.get("script_files")
    if not scripts:
        return

    def keep(js) -> bool:
        name = str(js)
        body = getattr(js, "attributes", {}).get("body", "")
        return "sphinx-thebe.js" not in name and "THEBE_JS_URL" not in body

    context["script_files"] = [js for js in scripts if keep(js)]


# --------------------------------------------------------------------------------------
# 1b. The PDF: notebook outputs that exist only as HTML
# --------------------------------------------------------------------------------------
# LaTeX cannot show a text/html output, so myst-nb falls back to its text/plain, which for
# an `ml.bench.Table` is a fixed-width block that wraps on A4 and for an `ml.show` listing
# is "<IPython.core.display.HTML object>". For the LaTeX builder only, this post-transform
# turns such HTML into document nodes (a real table; a code listing) and offers them to
# myst-nb's mime selection (which runs next, at priority 4) under text/markdown, which
# LaTeX prefers to text/plain. The HTML pages are untouched.


class _HtmlOutput(HTMLParser):
    """Collects a table's caption and rows, and the first <pre> block, of an HTML output."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.caption, self.rows, self.pre, self.title = "", [], None, ""
        self._cell = None   # text of the cell being read
        self._where = []    # open elements of interest
        self._pre_depth = 0
        self._pre_text = []

    def handle_starttag(self, tag, attrs):
        if tag in ("caption", "code") and not self._pre_depth:
            self._where.append(tag)
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "pre":
            self._pre_depth += 1
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("caption", "code") and self._where and self._where[-1] == tag:
            self._where.pop()
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append((" ".join("".join(self._cell).split()), tag == "th"))
            self._cell = None
        elif tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
            if not self._pre_depth and self.pre is None:
                self.pre = "".join(self._pre_text).strip("\n")

    def handle_data(self, data):
        if self._pre_depth:
            if self.pre is None:
                self._pre_text.append(data)
        elif self._cell is not None:
            self._cell.append(data)
        elif self._where and self._where[-1] == "caption":
            self.caption += data
        elif self._where and self._where[-1] == "code" and self.pre is None:
            self.title += data


def _table_nodes(caption: str, rows: list) -> list:
    rows = [r for r in rows if r]
    ncols = max(len(r) for r in rows)
    head = [r for r in rows if all(is_th for _, is_th in r)][:1]
    body = [r for r in rows if r not in head]
    table = nodes.table(classes=["colwidths-auto"])
    tgroup = nodes.tgroup(cols=ncols)
    table += tgroup
    tgroup.extend(nodes.colspec(colwidth=1) for _ in range(ncols))

    def row(cells):
        r = nodes.row()
        for text, _ in cells + [("", False)] * (ncols - len(cells)):
            r += nodes.entry("", nodes.paragraph(text=text))
        return r

    if head:
        tgroup += nodes.thead("", *[row(r) for r in head])
    tgroup += nodes.tbody("", *[row(r) for r in body])
    out = [nodes.paragraph("", "", nodes.strong(text=caption.strip()))] if caption.strip() else []
    return out + [table]


def html_output_to_nodes(html_text: str) -> list:
    """Document nodes for an HTML notebook output: a <table> or a <pre> listing; [] if neither."""
    parser = _HtmlOutput()
    parser.feed(html_text)
    if "<table" in html_text and any(parser.rows):
        return _table_nodes(parser.caption, parser.rows)
    if parser.pre:
        code = nodes.literal_block(parser.pre, parser.pre, language="python")
        title = [nodes.paragraph("", "", nodes.literal(text=parser.title.strip()))] if parser.title.strip() else []
        return title + [code]
    return []


class HtmlOutputsForLatex(SphinxPostTransform):
    default_priority = 3  # before myst-nb's SelectMimeType (4)
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        for bundle in list(self.document.findall(nodes.container)):
            if bundle.get("nb_element") != "mime_bundle":
                continue
            by_type = {c.get("mime_type"): c for c in bundle.children}
            if "text/html" not in by_type or {"text/markdown", "text/latex", "image/png",
                                              "image/jpeg", "application/pdf"} & set(by_type):
                continue
            html_text = "".join(n.astext() for n in by_type["text/html"].findall(nodes.raw))
            converted = html_output_to_nodes(html_text)
            if converted:
                bundle += nodes.container("", *converted, mime_type="text/markdown")


class SolutionOutputsOnPaper(SphinxPostTransform):
    """On paper there is no toggle: a solution's code stays hidden, its printed answer shows.

    Solution code cells are tagged ``hide-cell`` (code and output folded in the HTML);
    sphinx-jupyterbook-latex drops such cells from the PDF entirely, which would leave the
    solution's text pointing at a printout that is not there. Before that transform runs
    (priority 400), they are treated as ``hide-input`` for LaTeX.
    """

    default_priority = 390
    builders = ("latex",)

    def run(self, **kwargs) -> None:
        for node in self.document.findall(nodes.container):
            classes = node.get("classes", [])
            if "tag_solution" in classes and "tag_hide-cell" in classes:
                node["classes"] = [("tag_hide-input" if c == "tag_hide-cell" else c) for c in classes]


# --------------------------------------------------------------------------------------
# 2. Author-year labels, the same in the text and in the list
# --------------------------------------------------------------------------------------

# The names part of a label, formatted exactly as sphinxcontrib-bibtex formats in-text
# author-year citations (last names; "A and B" for two; "A et al." for three or more;
# the title when there is no author or editor).
_PERSON = PersonStyle(other=Text(" et al."))
_NAMES = _PERSON.author_or_editor_or_title(full=False)


def author_year_label(entry) -> str:
    names = _NAMES.format_data({"entry": entry, "style": SimpleNamespace(person=_PERSON)})
    return f"{names.render_as('text')}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Vaswani et al., 2017"; equal labels get a, b, c ... in sorted order."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year_label(e) for e in entries]
        total, seen = Counter(labels), Counter()
        for label in labels:
            if total[label] == 1:
                yield label
            else:
                yield label + string.ascii_lowercase[seen[label]]
                seen[label] += 1


class AuthorYearSortingStyle(AuthorYearTitleSortingStyle):
    """Sorted as the labels read (so "Liu et al., 2020a" sits beside "2020b"), then by
    the full author list and the title."""

    def sorting_key(self, entry):
        names = author_year_label(entry).rsplit(", ", 1)[0]
        plain = "".join(c for c in unicodedata.normalize("NFKD", names)
                        if not unicodedata.combining(c)).casefold()
        return (plain, entry.fields.get("year", ""), *super().sorting_key(entry))


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entry format with author-year labels, sorted as the labels read."""

    default_label_style = "edl_author_year"
    default_sorting_style = "edl_author_year"


@node
def label_year(children, data):
    """The year part of the entry's label, with its a/b suffix ("2016a")."""
    assert not children
    return Text(data["formatted_entry"].label.rsplit(", ", 1)[-1])


@node
def label_text(children, data):
    """The entry's label, e.g. "Dong et al., 2016a"."""
    assert not children
    return Text(data["formatted_entry"].label)


@dataclass
class _Parenthetical(BasicAuthorYearParentheticalReferenceStyle):
    def inner(self, role_name: str):
        if "s" in role_name:  # :cite:ps: (all authors): keep the default
            return super().inner(role_name)
        return join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
            pre_text, reference[label_text], post_text
        ]


@dataclass
class _Textual(BasicAuthorYearTextualReferenceStyle):
    def inner(self, role_name: str):
        return join(sep=self.text_reference_sep)[
            self.person.author_or_editor_or_title(full="s" in role_name),
            join[
                self.bracket.left,
                join2(sep1=self.pre_text_sep, sep2=self.post_text_sep)[
                    pre_text, reference[label_year], post_text
                ],
                self.bracket.right,
            ],
        ]


@dataclass
class LabelAuthorYearReferenceStyle(AuthorYearReferenceStyle):
    """sphinxcontrib-bibtex's author_year style, with years taken from the labels.

    `{cite}` renders "[Dong et al., 2016a]" and `{cite:t}` "Dong et al. [2016a]", so
    the text always matches the bibliography's label, suffix included.
    """

    def __post_init__(self):
        super().__post_init__()
        kw = dict(person=self.person, pre_text_sep=self.pre_text_sep,
                  post_text_sep=self.post_text_sep)
        self.styles[0] = _Parenthetical(bracket=self.bracket_parenthetical,
                                        author_year_sep=self.author_year_sep, **kw)
        self.styles[1] = _Textual(bracket=self.bracket_textual,
                                  text_reference_sep=self.text_reference_sep, **kw)
        self.role_style.update(
            (role, style) for style in self.styles[:2] for role in style.role_names()
        )


def _register_bib_plugins() -> None:
    pybtex.plugin.register_plugin("pybtex.style.labels", "edl_author_year", AuthorYearLabelStyle)
    pybtex.plugin.register_plugin("pybtex.style.sorting", "edl_author_year", AuthorYearSortingStyle)
    pybtex.plugin.register_plugin("pybtex.style.formatting", "edl_author_year", AuthorYearStyle)
    register_plugin("sphinxcontrib.bibtex.style.referencing", "edl_author_year",
                    LabelAuthorYearReferenceStyle, force=True)


_register_bib_plugins()  # on import, so the styles also work outside a Sphinx build


def setup(app):
    app.connect("config-inited", _set_mathjax_path)
    app.connect("html-page-context", _drop_cdn_scripts)
    app.connect("build-finished", _copy_mathjax)
    app.add_css_file("edl_book.css")
    app.add_post_transform(HtmlOutputsForLatex)
    app.add_post_transform(SolutionOutputsOnPaper)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


