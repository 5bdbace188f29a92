"""ml.show lists the core of a function: summary docstring, equations, no argument checks."""

from __future__ import annotations

import minilib as ml
from minilib.display import core, source


def _example(x, k: int = 2):
    """Top-k of x along the last dimension.

        y = x[topk(x, k)]

    Args:
        x: (B, N) scores.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > x.shape[-1]:
        raise ValueError("k too large")
    _check_something(x)
    return x.topk(k).values


def _check_something(x):
    pass


def test_core_keeps_summary_and_equations_and_drops_checks():
    text = core(source(_example))
    assert "Top-k of x" in text and "y = x[topk(x, k)]" in text
    assert "Args:" not in text and "raise" not in text and "_check_something" not in text
    assert text.count("argument checks") == 1  # consecutive checks fold into one marker
    assert "return x.topk(k).values" in text
    compile(text, "<core>", "exec")  # still valid Python


def test_core_of_a_library_function_is_shorter_and_valid():
    full = source(ml.bench.time_fn)
    short = core(full)
    assert len(short.splitlines()) < len(full.splitlines())
    compile(short, "<core>", "exec")


def test_glue_returns_none_outside_a_notebook():
    assert ml.glue("x", 3.0, ".1f") is None


def test_show_prints_the_core_in_plain_python(capsys):
    ml.show(_example)
    out = capsys.readouterr().out
    assert "argument checks" in out and "raise ValueError" not in out
    ml.show(_example, full=True)
    assert "raise ValueError" in capsys.readouterr().out
