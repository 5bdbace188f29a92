"""The book's plots, in one house style: learning curves, Pareto fronts, image grids, rooflines.

Every function draws on ``ax`` if given (else on a new pyplot figure) and returns the
:class:`~matplotlib.figure.Figure`; none calls ``plt.show()``. In a notebook the figure
shows at the end of the cell (or at ``plt.show()``); when the call is the cell's last
line, end it with ``;`` so that the returned figure is not displayed a second time.

The house style (:data:`RC`) is applied inside each function with ``plt.rc_context`` so it
does not leak into the reader's own plots; call :func:`style` to make it global.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

__all__ = [
    "PALETTE", "RC", "style", "house_style",
    "learning_curves", "pareto_front", "pareto", "image_grid", "roofline", "attention_maps",
]

# Okabe-Ito colours: distinguishable with the common kinds of colour blindness and in
# greyscale print (yellow is left out: unreadable on white).
PALETTE: list[str] = [
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#999999",  # grey
]

RC: dict[str, Any] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "figure.constrained_layout.use": True,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=PALETTE),
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "image.cmap": "viridis",
}

# Line styles for the several metrics of one learning-curve plot (colour = run).
_LINESTYLES = ("-", "--", ":", "-.")
# Markers for points told apart by a legend (colour and shape, so greyscale print works).
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def style() -> None:
    """Apply the house style to every later matplotlib figure (global ``rcParams``)."""
    plt.rcParams.update(RC)


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """The house style for the figures made inside the ``with`` block only."""
    with plt.rc_context(RC):
        yield


def _figure_and_axes(ax: Axes | None) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure with one axes (call inside house_style)."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots()
    return fig, ax


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------

def _is_single_history(obj: Any) -> bool:
    """A History (``.column``) or a dict of lists, as opposed to a dict of histories."""
    if hasattr(obj, "column"):
        return True
    return isinstance(obj, Mapping) and any(
        isinstance(v, (list, tuple, np.ndarray)) for v in obj.values()
    )


def _series(history: Any, name: str) -> list[Any] | None:
    """The column ``name`` of a History or a dict of lists; ``None`` if it has none."""
    try:
        if hasattr(history, "column"):
            values = history.column(name)
        else:
            values = history[name]
    except (KeyError, ValueError):
        return None
    return list(values.tolist() if hasattr(values, "tolist") else values)


def learning_curves(
    histories: Mapping[str, Any] | Any,
    *,
    y: str | Sequence[str] = "val_accuracy",
    x: str = "epoch",
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """Plot metric ``y`` against ``x`` for several training runs, one colour per run.

    Args:
        histories: ``{run name: history}``, where a history is an ``ml.train.History``
            (anything with ``.column(name) -> list``) or a dict of lists such as
            ``{"epoch": [1, 2], "val_accuracy": [0.5, 0.7]}``. A single history is
            also accepted.
        y: one metric, or several (``("train_loss", "val_loss")``): solid, dashed, dotted.
        x: the x column; runs without it are plotted against 1, 2, 3, ...
        xlabel, ylabel: axis labels with units (``"test accuracy (fraction)"``); by default
            the column names.

    Entries whose ``y`` is ``None`` or NaN (a metric not measured that epoch) are skipped.
    """
    if _is_single_history(histories):
        histories = {"": histories}
    if not histories:
        raise ValueError("learning_curves needs at least one history; got an empty dict")
    metrics = (y,) if isinstance(y, str) else tuple(y)

    with house_style():
        fig, ax = _figure_and_axes(ax)
        for i, (run, history) in enumerate(histories.items()):
            color = PALETTE[i % len(PALETTE)]
            for j, metric in enumerate(metrics):
                ys = _series(history, metric)
                if ys is None:
                    raise KeyError(
                        f"history {run!r} has no column {metric!r}"
                        + (f"; it has {sorted(history)}" if isinstance(history, Mapping) else "")
                    )
                xs = _series(history, x) or list(range(1, len(ys) + 1))
                pairs = [(a, b) for a, b in zip(xs, ys) if not _is_missing(a) and not _is_missing(b)]
                label = run if len(metrics) == 1 else (f"{run} {metric}".strip())
                ax.plot(
                    [a for a, _ in pairs], [b for _, b in pairs],
                    color=color, linestyle=_LINESTYLES[j % len(_LINESTYLES)],
                    marker="o" if len(pairs) <= 30 else None, markersize=3,
                    label=label or None,
                )
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or " / ".join(metrics))
        if title:
            ax.set_title(title)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.lines):
            ax.legend()
    return fig


# ---------------------------------------------------------------------------
# Pareto fronts: quality vs cost
# ---------------------------------------------------------------------------

def pareto_front(
    points: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    x_lower_is_better: bool = True,
    y_higher_is_better: bool = True,
) -> list[dict[str, Any]]:
    """The non-dominated points, sorted by ``x`` (ascending).

    A point is *dominated* when another point is at least as good on both axes and
    strictly better on one: nobody should pick it. With the defaults (``x`` a cost,
    ``y`` a quality) ``q`` dominates ``p`` when ``q.x <= p.x`` and ``q.y >= p.y``, one of
    them strict. Points missing ``x`` or ``y`` (or NaN) are ignored; equal points are kept.
    """
    sx = 1.0 if x_lower_is_better else -1.0   # after the signs, lower is better on both
    sy = -1.0 if y_higher_is_better else 1.0
    valid = [p for p in points if not _is_missing(p.get(x)) and not _is_missing(p.get(y))]
    costs = [(sx * float(p[x]), sy * float(p[y])) for p in valid]

    def dominated(i: int) -> bool:
        a = costs[i]
        return any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in costs)

    front = [dict(p) for i, p in enumerate(valid) if not dominated(i)]
    return sorted(front, key=lambda p: float(p[x]))


def pareto(
    points: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    label: str = "name",
    x_lower_is_better: bool = True,
    y_higher_is_better: bool = True,
    logx: bool = False,
    ax: Axes | None = None,
    title: str | None = None,
    labels: str = "annotate",
) -> Figure:
    """Scatter ``points`` (dicts) as ``y`` vs ``x``, label each, and draw the Pareto front.

    Typical use: ``x`` a cost (latency, FLOPs, bytes), ``y`` a quality (accuracy). The front
    is drawn as a staircase: for any budget on the x axis, the best quality reachable.
    Points whose ``label`` is None are drawn unnamed. ``labels="annotate"`` writes each
    name beside its point; ``labels="legend"`` gives each named point its own colour and
    marker and names it in a legend, so no text can overlap when points crowd.
    """
    if labels not in ("annotate", "legend"):
        raise ValueError(f"pareto: labels must be 'annotate' or 'legend'; got {labels!r}")
    valid = [p for p in points if not _is_missing(p.get(x)) and not _is_missing(p.get(y))]
    if not valid:
        raise ValueError(f"pareto needs points with numeric {x!r} and {y!r}; got none")
    front = pareto_front(valid, x, y, x_lower_is_better, y_higher_is_better)

    with house_style():
        fig, ax = _figure_and_axes(ax)
        named = sorted((p for p in valid if p.get(label) is not None), key=lambda p: float(p[x])) \
            if labels == "legend" else []  # legend entries in the order of the x axis
        rest = [p for p in valid if all(p is not q for q in named)]
        if rest:
            ax.scatter([p[x] for p in rest], [p[y] for p in rest],
                       color=PALETTE[7] if named else PALETTE[0], zorder=3,
                       label="other points" if named else "all")
        # Sorted by x, the front's best quality holds until the next front point: a step
        # after each point when lower x is better, before it when higher x is better.
        ax.step([p[x] for p in front], [p[y] for p in front],
                where="post" if x_lower_is_better else "pre",
                color=PALETTE[1], linewidth=1.5, zorder=2, label="Pareto front")
        colours = [c for i, c in enumerate(PALETTE) if i not in (1, 7)]  # not the front's, not grey
        for i, p in enumerate(named):
            ax.scatter([p[x]], [p[y]], color=colours[i % len(colours)],
                       marker=_MARKERS[i % len(_MARKERS)], s=40, zorder=4, label=str(p[label]))
        if labels == "annotate":
            for p in valid:
                if p.get(label) is not None:
                    ax.annotate(str(p[label]), (p[x], p[y]), xytext=(4, 4),
                                textcoords="offset points", fontsize=9)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(f"{x} ({'lower' if x_lower_is_better else 'higher'} is better)")
        ax.set_ylabel(f"{y} ({'higher' if y_higher_is_better else 'lower'} is better)")
        if title:
            ax.set_title(title)
        if named:  # beside the axes: a long list of names must not cover the points
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
        else:
            ax.legend()
    return fig


# ---------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------

def _to_numpy(a: Any) -> np.ndarray:
    """A torch tensor (any device, any dtype) or array-like as a NumPy array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if str(a.dtype) in ("torch.bfloat16", "torch.float16"):
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


def image_grid(
    images: Any,
    labels: Sequence[Any] | None = None,
    *,
    ncols: int = 8,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
) -> Figure:
    """Show a batch of images in a grid, with small titles from ``labels``.

    Args:
        images: ``(N, C, H, W)`` with ``C`` in {1, 3}, or ``(N, H, W)``; uint8 in [0, 255]
            or float in [0, 1] (tensor or array).
        labels: ``N`` labels (ints, strings); ints are looked up in ``class_names``.
        mean, std: per-channel statistics the images were normalized with
            (``x = (img - mean) / std``); the grid shows ``x * std + mean``.
    """
    arr = _to_numpy(images)
    if arr.ndim == 3:  # (N, H, W) -> (N, 1, H, W)
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(
            f"image_grid expects images of shape (N, C, H, W) with C in {{1, 3}} or (N, H, W); "
            f"got shape {tuple(arr.shape)} (channels-last images: permute(0, 3, 1, 2) first)"
        )
    n = arr.shape[0]
    if n == 0:
        raise ValueError("image_grid got no images (N = 0)")
    if labels is not None:
        labels = list(_to_numpy(labels).tolist()) if hasattr(labels, "detach") else list(labels)
        if len(labels) != n:
            raise ValueError(f"got {n} images but {len(labels)} labels")

    x = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if mean is not None or std is not None:
        c = x.shape[1]
        m = np.asarray(mean if mean is not None else [0.0] * c, dtype=np.float32).reshape(1, -1, 1, 1)
        s = np.asarray(std if std is not None else [1.0] * c, dtype=np.float32).reshape(1, -1, 1, 1)
        x = x * s + m  # undo x = (img - mean) / std
    x = np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)  # (N, H, W, C) for imshow

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    with house_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.25 * nrows + (0.3 if title else 0)),
                                 squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i >= n:
                continue
            if x.shape[-1] == 1:
                ax.imshow(x[i, :, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(x[i])
            if labels is not None:
                lab = labels[i]
                if class_names is not None and isinstance(lab, (int, np.integer)):
                    lab = class_names[int(lab)]
                ax.set_title(str(lab), fontsize=8, pad=2)
        if title:
            fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------
# Roofline
# ---------------------------------------------------------------------------

def roofline(
    peak_flops_per_s: float,
    peak_bytes_per_s: float,
    points: Sequence[Mapping[str, Any]] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    labels: str = "annotate",
) -> Figure:
    """Draw the roofline ``attainable(I) = min(P, I * beta)`` on log-log axes.

    Args:
        peak_flops_per_s: ``P``, the compute roof (e.g. from ``ml.bench.measure_peaks``).
        peak_bytes_per_s: ``beta``, the memory bandwidth: the slope of the memory roof.
        points: measured kernels ``{"name", "intensity" (FLOP/byte), "flops_per_s"}``.
        labels: ``"annotate"`` writes each name beside its point; ``"legend"`` gives each
            point its own colour and marker and names them in a legend (no text can
            overlap when points crowd, e.g. two elementwise ops at nearly the same intensity).

    The ridge point ``I* = P / beta`` separates memory-bound (left) from compute-bound
    (right) operations.
    """
    P, beta = float(peak_flops_per_s), float(peak_bytes_per_s)
    if P <= 0 or beta <= 0:
        raise ValueError(f"peaks must be > 0; got peak_flops_per_s={P}, peak_bytes_per_s={beta}")
    if labels not in ("annotate", "legend"):
        raise ValueError(f"roofline: labels must be 'annotate' or 'legend'; got {labels!r}")
    points = list(points or [])
    for p in points:
        missing = [k for k in ("intensity", "flops_per_s") if k not in p]
        if missing:
            raise KeyError(f"roofline point {dict(p)} lacks {missing}; give intensity and flops_per_s")
    ridge = P / beta

    intensities = [float(p["intensity"]) for p in points] + [ridge]
    lo, hi = min(intensities) / 4, max(intensities) * 4
    lo, hi = min(lo, ridge / 100), max(hi, ridge * 10)
    grid = np.logspace(math.log10(lo), math.log10(hi), 256)

    with house_style():
        fig, ax = _figure_and_axes(ax)
        ax.loglog(grid, np.minimum(P, grid * beta), color="0.2", linewidth=2, label="roof")
        ax.axvline(ridge, color="0.5", linestyle=":", linewidth=1)
        ax.annotate(f"ridge {ridge:.3g} FLOP/byte", (ridge, P), xytext=(6, -14),
                    textcoords="offset points", fontsize=9, color="0.3")
        if points and labels == "legend":
            for i, p in enumerate(points):
                ax.scatter([p["intensity"]], [p["flops_per_s"]], color=PALETTE[i % len(PALETTE)],
                           marker=_MARKERS[i % len(_MARKERS)], zorder=3, label=str(p.get("name", "")))
            ax.legend(loc="best", fontsize=9)
        elif points:
            ax.scatter([p["intensity"] for p in points], [p["flops_per_s"] for p in points],
                       color=[PALETTE[i % len(PALETTE)] for i in range(len(points))], zorder=3)
            for p in points:
                ax.annotate(str(p.get("name", "")), (p["intensity"], p["flops_per_s"]),
                            xytext=(4, 4), textcoords="offset points", fontsize=9)
        ax.yaxis.set_major_formatter(EngFormatter(unit="FLOP/s"))
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("attainable performance")
        if title:
            ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------

def attention_maps(
    maps: Any,
    images: Any | None = None,
    *,
    grid: Sequence[int] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cmap: str = "magma",
    title: str | None = None,
) -> Figure:
    """Attention weights over a token grid: one row per image, one column per head.

    Args:
        maps: ``(N, heads, H, W)``, or ``(N, heads, H * W)`` with ``grid=(H, W)`` (e.g. the
            class token's attention to the patch tokens, ``P[:, :, 0, 1:]``), or
            ``(heads, H, W)`` for one image. Each panel has its own colour scale
            (attention of different heads differs in range); a panel with negative
            weights (linear attention variants) uses a diverging map centred at 0.
        images: optional ``(N, C, H', W')`` images shown in a first column (as
            :func:`image_grid`: uint8 or float in [0, 1], ``mean``/``std`` undo a
            normalization).
        row_labels, col_labels: titles for rows (left) and head columns (top).
    """
    arr = _to_numpy(maps).astype(np.float32)
    if arr.ndim == 3 and grid is not None and arr.shape[-1] == int(np.prod(grid)):
        arr = arr.reshape(arr.shape[0], arr.shape[1], *grid)
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim == 2 and grid is not None:     # (N, H*W): one head
        arr = arr.reshape(arr.shape[0], 1, *grid)
    if arr.ndim != 4:
        raise ValueError(
            f"attention_maps expects maps of shape (N, heads, H, W), (heads, H, W) or "
            f"(N, heads, H*W) with grid=(H, W); got shape {tuple(_to_numpy(maps).shape)}"
        )
    n, heads = arr.shape[:2]
    if images is not None:
        img = _to_numpy(images)
        if img.ndim == 3:
            img = img[None]
        if img.ndim != 4 or img.shape[0] != n or img.shape[1] not in (1, 3):
            raise ValueError(f"images must be (N, C, H, W) with N = {n} and C in {{1, 3}}; "
                             f"got shape {tuple(img.shape)}")
        x = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        if mean is not None or std is not None:
            c = x.shape[1]
            m = np.asarray(mean if mean is not None else [0.0] * c, np.float32).reshape(1, -1, 1, 1)
            s_ = np.asarray(std if std is not None else [1.0] * c, np.float32).reshape(1, -1, 1, 1)
            x = x * s_ + m
        x = np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)
    for name, labels, want in (("row_labels", row_labels, n), ("col_labels", col_labels, heads)):
        if labels is not None and len(labels) != want:
            raise ValueError(f"{name} has {len(labels)} entries; expected {want}")
    ncols = heads + (images is not None)
    with house_style():
        fig, axes = plt.subplots(n, ncols, figsize=(1.35 * ncols + 0.4, 1.35 * n + (0.35 if title else 0.1)),
                                 squeeze=False)
        for i in range(n):
            col = 0
            if images is not None:
                ax = axes[i, 0]
                ax.imshow(x[i, :, :, 0], cmap="gray") if x.shape[-1] == 1 else ax.imshow(x[i])
                col = 1
            for h in range(heads):
                ax = axes[i, col + h]
                a = arr[i, h]
                if a.min() < 0:
                    lim = float(np.abs(a).max()) or 1.0
                    ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim)
                else:
                    ax.imshow(a, cmap=cmap, vmin=0.0, vmax=float(a.max()) or 1.0)
                if i == 0 and col_labels is not None:
                    ax.set_title(str(col_labels[h]), fontsize=9, pad=2)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
            if row_labels is not None:
                axes[i, 0].set_ylabel(str(row_labels[i]), fontsize=9)
        if title:
            fig.suptitle(title)
    return fig
