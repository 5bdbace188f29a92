"""ml.env: scales, pick, seeds, banner; ml.show and ml.glue."""

from __future__ import annotations

import pytest
import torch

import minilib as ml


@pytest.mark.parametrize("value", ["smoke", "cpu", "gpu", " CPU "])
def test_scale_reads_book_scale(monkeypatch, value):
    monkeypatch.setenv("BOOK_SCALE", value)
    assert ml.scale() == value.strip().lower()


def test_scale_default_follows_cuda(monkeypatch):
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ml.scale() == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ml.scale() == "cpu"


def test_unknown_scale_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError) as err:
        ml.scale()
    msg = str(err.value)
    assert "huge" in msg and "smoke" in msg and "cpu" in msg and "gpu" in msg


def test_pick_follows_scale(monkeypatch):
    for s, expected in [("smoke", 1), ("cpu", 2), ("gpu", 3)]:
        monkeypatch.setenv("BOOK_SCALE", s)
        assert ml.pick(smoke=1, cpu=2, gpu=3) == expected


def test_pick_needs_every_scale(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "cpu")
    with pytest.raises(TypeError):
        ml.pick(smoke=1, cpu=2)  # gpu missing: a notebook must state all three budgets
    monkeypatch.setenv("BOOK_SCALE", "nope")
    with pytest.raises(ValueError):
        ml.pick(smoke=1, cpu=2, gpu=3)


def test_seed_all_makes_runs_repeatable():
    ml.seed_all(123)
    a = torch.randn(5)
    ml.seed_all(123)
    b = torch.randn(5)
    assert torch.equal(a, b)


def test_describe_prints_scale_and_hardware(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    info = ml.describe()
    line = capsys.readouterr().out
    assert "scale: smoke" in line and "torch:" in line
    assert info["scale"] == "smoke" and info["device"] in {"cpu", "cuda", "mps"}


def test_device_is_a_torch_device():
    assert isinstance(ml.device(), torch.device)


def test_show_prints_source_outside_notebooks(capsys):
    ml.show(ml.env.pick)
    assert "def pick" in capsys.readouterr().out


def test_show_rejects_objects_without_source():
    with pytest.raises(TypeError, match="ml.show"):
        ml.show(3)


def test_glue_returns_value_outside_notebooks():
    assert ml.glue("x", 1.5, ".2f") == 1.5
