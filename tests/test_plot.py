"""ml.plot: every function returns a Figure with the expected artists; Pareto fronts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from minilib import plot  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


class FakeHistory:
    """Stands in for ml.train.History: rows of dicts and a .column(name) method."""

    def __init__(self, rows):
        self.rows = rows

    def column(self, name):
        if not any(name in r for r in self.rows):
            raise KeyError(name)
        return [r.get(name) for r in self.rows]


# --- style -------------------------------------------------------------------

def test_house_style_does_not_leak():
    before = dict(plt.rcParams)
    plot.learning_curves({"a": {"epoch": [1, 2], "val_accuracy": [0.1, 0.2]}})
    assert plt.rcParams["axes.spines.top"] == before["axes.spines.top"]
    assert plt.rcParams["figure.dpi"] == before["figure.dpi"]


def test_style_applies_globally():
    with plt.rc_context():
        plot.style()
        assert plt.rcParams["axes.spines.top"] is False
        assert plt.rcParams["figure.dpi"] == plot.RC["figure.dpi"]
        assert plt.rcParams["axes.prop_cycle"].by_key()["color"] == plot.PALETTE


def test_figures_use_house_style():
    fig = plot.learning_curves({"a": {"epoch": [1, 2], "val_accuracy": [0.1, 0.2]}})
    ax = fig.axes[0]
    assert not ax.spines["top"].get_visible() and not ax.spines["right"].get_visible()
    assert fig.dpi == plot.RC["figure.dpi"]


# --- learning curves ---------------------------------------------------------

def test_learning_curves_histories_and_dicts():
    runs = {
        "cnn": FakeHistory([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": None},
                            {"epoch": 3, "val_accuracy": 0.7}]),
        "vit": {"epoch": [1, 2, 3], "val_accuracy": [0.4, float("nan"), 0.6]},
    }
    fig = plot.learning_curves(runs, title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert list(ax.lines[0].get_xdata()) == [1, 3]  # None skipped
    assert list(ax.lines[1].get_ydata()) == [0.4, 0.6]  # NaN skipped
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cnn", "vit"]
    assert ax.get_title() == "t" and ax.get_xlabel() == "epoch"
    labelled = plot.learning_curves(runs, xlabel="epoch (of 3)", ylabel="test accuracy (fraction)").axes[0]
    assert (labelled.get_xlabel(), labelled.get_ylabel()) == ("epoch (of 3)", "test accuracy (fraction)")


def test_learning_curves_several_metrics_solid_and_dashed():
    runs = {name: {"epoch": [1, 2], "train_loss": [2.0, 1.0], "val_loss": [2.5, 1.5]} for name in "ab"}
    fig = plot.learning_curves(runs, y=("train_loss", "val_loss"))
    lines = fig.axes[0].lines
    assert len(lines) == 4
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()


def test_learning_curves_single_history_without_x_column_and_on_given_ax():
    fig, ax = plt.subplots()
    out = plot.learning_curves({"val_accuracy": [0.1, 0.3, 0.2]}, ax=ax)
    assert out is fig
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3]


def test_learning_curves_unknown_metric_is_clear():
    with pytest.raises(KeyError, match="val_acc"):
        plot.learning_curves({"a": {"epoch": [1], "val_accuracy": [0.1]}}, y="val_acc")


# --- Pareto ------------------------------------------------------------------

POINTS = [
    {"name": "A", "ms": 1.0, "acc": 0.70},
    {"name": "B", "ms": 2.0, "acc": 0.80},
    {"name": "C", "ms": 3.0, "acc": 0.75},  # dominated by B (slower and worse)
    {"name": "D", "ms": 4.0, "acc": 0.90},
    {"name": "E", "ms": 4.0, "acc": 0.85},  # dominated by D (same time, worse)
    {"name": "F", "ms": 0.5, "acc": 0.60},
    {"name": "G", "ms": 5.0, "acc": 0.90},  # dominated by D (same accuracy, slower)
    {"name": "H", "ms": None, "acc": 0.99},  # missing: ignored
]


def names(points):
    return [p["name"] for p in points]


def test_pareto_front_cost_vs_quality():
    assert names(plot.pareto_front(POINTS, "ms", "acc")) == ["F", "A", "B", "D"]


def test_pareto_front_other_orientations():
    # both higher-is-better (e.g. throughput vs accuracy): only D and G survive, G by throughput
    assert names(plot.pareto_front(POINTS, "ms", "acc", x_lower_is_better=False)) == ["G"]
    # both lower-is-better (e.g. time vs error): F is fastest and lowest
    assert names(plot.pareto_front(POINTS, "ms", "acc", y_higher_is_better=False)) == ["F"]
    # x higher better, y lower better: maximise ms, minimise acc
    front = plot.pareto_front(POINTS, "ms", "acc", x_lower_is_better=False, y_higher_is_better=False)
    assert names(front) == ["F", "A", "C", "E", "G"]


def test_pareto_front_keeps_ties_and_handles_empty():
    pts = [{"name": "a", "x": 1, "y": 1}, {"name": "b", "x": 1, "y": 1}, {"name": "c", "x": 2, "y": 0}]
    assert names(plot.pareto_front(pts, "x", "y")) == ["a", "b"]
    assert plot.pareto_front([], "x", "y") == []


def test_pareto_front_on_random_points_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = [{"name": i, "x": float(a), "y": float(b)} for i, (a, b) in enumerate(rng.random((40, 2)))]
    front = {p["name"] for p in plot.pareto_front(pts, "x", "y")}
    for p in pts:
        dominated = any(q["x"] <= p["x"] and q["y"] >= p["y"] and (q["x"], q["y"]) != (p["x"], p["y"])
                        for q in pts)
        assert (p["name"] in front) == (not dominated)


def test_pareto_plot_artists():
    fig = plot.pareto(POINTS, x="ms", y="acc", logx=True, title="quality vs cost")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.collections) == 1  # one scatter of all points
    assert len(ax.collections[0].get_offsets()) == 7  # H (missing ms) left out
    assert len(ax.lines) == 1  # the front
    assert list(ax.lines[0].get_xdata()) == [0.5, 1.0, 2.0, 4.0]
    assert ax.lines[0].get_drawstyle() == "steps-post"
    assert sorted(t.get_text() for t in ax.texts) == list("ABCDEFG")
    assert ax.get_xscale() == "log" and ax.get_title() == "quality vs cost"


def test_pareto_legend_labels_cannot_overlap():
    """labels='legend': named points get their own marker and a legend entry, no text on the axes."""
    pts = [dict(p, label=p["name"] if p["name"] in "FAB" else None) for p in POINTS]
    ax = plot.pareto(pts, x="ms", y="acc", label="label", labels="legend").axes[0]
    assert len(ax.texts) == 0
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names[:2] == ["other points", "Pareto front"] and sorted(names[2:]) == ["A", "B", "F"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 7  # every valid point drawn once
    with pytest.raises(ValueError, match="labels"):
        plot.pareto(POINTS, x="ms", y="acc", labels="beside")


def test_pareto_plot_rejects_no_points():
    with pytest.raises(ValueError, match="ms"):
        plot.pareto([{"name": "x"}], x="ms", y="acc")


# --- image grid --------------------------------------------------------------

def test_image_grid_rgb_uint8_with_class_names():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    fig = plot.image_grid(images, torch.arange(10) % 3, ncols=4, class_names=["cat", "dog", "emu"], title="t")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 12  # 3 rows x 4 columns
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10
    assert [ax.get_title() for ax in shown[:4]] == ["cat", "dog", "emu", "cat"]
    data = shown[0].images[0].get_array()
    assert data.shape == (8, 8, 3)
    assert np.allclose(data, images[0].permute(1, 2, 0).numpy() / 255.0)


def test_image_grid_grayscale_and_unnormalize():
    mean, std = [0.5], [0.25]
    raw = torch.rand(3, 1, 5, 5)
    normalized = (raw - 0.5) / 0.25
    fig = plot.image_grid(normalized, ["a", "b", "c"], mean=mean, std=std)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3
    img = shown[1].images[0]
    assert img.get_cmap().name == "gray"
    assert np.allclose(img.get_array(), raw[1, 0].numpy(), atol=1e-6)
    # (N, H, W) works too, as does a NumPy array
    assert len(plot.image_grid(np.random.rand(2, 4, 4)).axes) == 2


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (4, 4), (2, 8, 8, 3)])
def test_image_grid_bad_shapes(shape):
    with pytest.raises(ValueError, match="shape"):
        plot.image_grid(torch.rand(shape))


def test_image_grid_label_count_mismatch():
    with pytest.raises(ValueError, match="labels"):
        plot.image_grid(torch.rand(3, 1, 4, 4), [0, 1])


# --- roofline ----------------------------------------------------------------

def test_roofline_artists_and_shape():
    P, beta = 1e12, 1e11  # ridge at 10 FLOP/byte
    points = [{"name": "add", "intensity": 1 / 12, "flops_per_s": 5e9},
              {"name": "matmul", "intensity": 100.0, "flops_per_s": 8e11}]
    fig = plot.roofline(P, beta, points, title="roof")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    roof, ridge = ax.lines  # the roof and the ridge marker
    xs, ys = roof.get_xdata(), roof.get_ydata()
    assert np.allclose(ys, np.minimum(P, xs * beta))
    assert xs.min() <= 1 / 12 and xs.max() >= 100.0
    assert list(ridge.get_xdata()) == [10.0, 10.0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 2
    texts = [t.get_text() for t in ax.texts]
    assert "add" in texts and "matmul" in texts and any("ridge" in t for t in texts)
    assert ax.get_title() == "roof"


def test_roofline_without_points_and_bad_input():
    fig = plot.roofline(1e9, 1e9)
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[0].collections) == 0
    with pytest.raises(ValueError):
        plot.roofline(0, 1e9)
    with pytest.raises(KeyError, match="intensity"):
        plot.roofline(1e9, 1e9, [{"name": "x", "flops_per_s": 1.0}])


def test_functions_never_show(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda *a, **k: pytest.fail("plt.show() was called"))
    plot.roofline(1e9, 1e9, [{"name": "x", "intensity": 1.0, "flops_per_s": 1e8}])
    plot.pareto(POINTS, x="ms", y="acc")
    plot.image_grid(torch.rand(2, 3, 4, 4))
    plot.learning_curves({"a": {"val_accuracy": [0.1, 0.2]}})


def test_roofline_legend_labels_cannot_overlap():
    points = [{"name": "add", "intensity": 1 / 12, "flops_per_s": 5e9},
              {"name": "x*y+z", "intensity": 1 / 8, "flops_per_s": 7e9},
              {"name": "matmul", "intensity": 100.0, "flops_per_s": 8e11}]
    ax = plot.roofline(1e12, 1e11, points, labels="legend").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["roof", "add", "x*y+z", "matmul"]
    assert not any(t.get_text() in ("add", "x*y+z", "matmul") for t in ax.texts)  # no annotations
    assert len({c.get_paths()[0].vertices.tobytes() for c in ax.collections}) == 3  # three markers
    with pytest.raises(ValueError, match="labels"):
        plot.roofline(1e12, 1e11, points, labels="beside")
