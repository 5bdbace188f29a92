"""Measuring cost: time, throughput, peak memory, FLOPs, parameters, bytes, and tables.

Every chapter reports quality *and* cost. This module is the one place where cost is
measured, so that "2x faster" means the same thing on every page of the book:

* :func:`time_fn` times a call right: warm-up runs first, CUDA synchronized around the
  clock, many repeats summarised by the median and the spread (:class:`Timing`).
* :func:`throughput` turns a timing into items per second.
* :func:`peak_memory` is the peak tensor memory a call allocates (CUDA or CPU).
* :func:`count_flops` / :func:`flop_breakdown` count floating-point operations with
  ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs).
* :func:`count_params` / :func:`model_bytes` size a model.
* :func:`measure_peaks` and :func:`arithmetic_intensity` feed a roofline plot
  (:func:`minilib.plot.roofline`).
* :class:`Table` shows results as an HTML table in a notebook and as text elsewhere.
"""

from __future__ import annotations

import contextlib
import html
import math
import numbers
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "Timing", "time_fn", "throughput", "peak_memory",
    "count_flops", "flop_breakdown", "count_params", "model_bytes",
    "measure_peaks", "arithmetic_intensity",
    "Table", "fmt_bytes", "fmt_flops", "fmt_time",
]


# ---------------------------------------------------------------------------
# Number formatting
# ---------------------------------------------------------------------------

def _sig(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, without scientific notation when readable.

    ``1234.5 -> "1,234"``, ``12.345 -> "12.3"``, ``0.012345 -> "0.0123"``,
    ``1.2e-7 -> "1.20e-07"``.
    """
    if x == 0 or not math.isfinite(x):
        return str(x) if not math.isfinite(x) else "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= digits - 1:  # no decimals needed: show an integer with separators
        return f"{x:,.0f}"
    if magnitude >= -4:  # 0.0001 .. 99.9: fixed point, enough decimals for `digits`
        return f"{x:.{digits - 1 - magnitude}f}"
    return f"{x:.{digits - 1}e}"


def _strip_zeros(text: str) -> str:
    """``"1.50" -> "1.5"``, ``"2.00" -> "2"`` (used by the fmt_* helpers for prose)."""
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _scaled(x: float, base: float, units: Sequence[str], digits: int) -> str:
    """Pick the largest unit in ``units`` (steps of ``base``) that keeps ``|x| >= 1``."""
    value, unit = float(x), units[0]
    for next_unit in units[1:]:
        if abs(value) < base:
            break
        value, unit = value / base, next_unit
    return f"{_strip_zeros(_sig(value, digits))} {unit}"


def fmt_bytes(n: float, digits: int = 3) -> str:
    """Bytes in binary units: ``fmt_bytes(1.5 * 2**20) == "1.5 MiB"``, ``fmt_bytes(512) == "512 B"``."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), digits)


def fmt_flops(n: float, digits: int = 3) -> str:
    """FLOPs in decimal units: ``fmt_flops(3.2e9) == "3.2 GFLOP"``. Append ``"/s"`` for a rate."""
    return _scaled(n, 1000, ("FLOP", "kFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP", "EFLOP"), digits)


_TIME_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"))


def _time_unit(seconds: float) -> tuple[float, str]:
    """The unit (scale, name) in which ``seconds`` reads as a number >= 1 (ns at the bottom)."""
    for scale_, unit in _TIME_UNITS:
        if abs(seconds) >= scale_:
            return scale_, unit
    return _TIME_UNITS[-1]


def fmt_time(seconds: float, digits: int = 3) -> str:
    """A duration with an automatic unit: ``fmt_time(0.00123) == "1.23 ms"``."""
    scale_, unit = _time_unit(seconds)
    return f"{_strip_zeros(_sig(seconds / scale_, digits))} {unit}"


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

@dataclass
class Timing:
    """The wall-clock times of ``len(times)`` repeated runs of one call, in seconds.

    Report the **median** (robust to the odd slow run caused by another process or a
    garbage collection) with the **interquartile range** as the spread; ``mean``/``std``
    are there for comparison, ``min`` is the best the machine managed.
    """

    times: list[float]

    def __post_init__(self) -> None:
        if len(self.times) == 0:
            raise ValueError("Timing needs at least one time; got an empty list")
        self.times = [float(t) for t in self.times]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single run)."""
        return statistics.stdev(self.times) if len(self.times) > 1 else 0.0

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def q25(self) -> float:
        """First quartile (linear interpolation, as ``numpy.quantile``)."""
        return float(np.quantile(self.times, 0.25))

    @property
    def q75(self) -> float:
        """Third quartile (linear interpolation, as ``numpy.quantile``)."""
        return float(np.quantile(self.times, 0.75))

    @property
    def iqr(self) -> float:
        """Interquartile range ``q75 - q25``: the spread of the middle half of the runs."""
        return self.q75 - self.q25

    @property
    def ms(self) -> float:
        """The median in milliseconds."""
        return self.median * 1e3

    def __str__(self) -> str:
        scale_, unit = _time_unit(self.median)
        return (
            f"{self.median / scale_:.3f} {unit} ± {self.iqr / 2 / scale_:.3f} {unit} "
            f"(median ± IQR/2 of {len(self.times)} runs)"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython: show the summary
        printer.text(str(self))


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    repeat: int = 20,
    sync: bool | None = None,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    Args:
        fn: the function to time; its return value is discarded.
        warmup: untimed calls first (>= 0).
        repeat: timed calls, each timed on its own (>= 1).
        sync: call ``torch.cuda.synchronize()`` around the clock; ``None`` means "if CUDA
            is available".
        *args, **kwargs: passed to ``fn``.

    Returns:
        a :class:`Timing` with one time in seconds per timed call.
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (number of untimed calls); got {warmup}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1 (number of timed calls); got {repeat}")
    if sync is None:
        sync = torch.cuda.is_available()

    # Warm-up: the first calls pay one-off costs that later calls do not (lazy CUDA
    # init, allocator growth, cuDNN autotuning, torch.compile, cold caches).
    for _ in range(warmup):
        fn(*args, **kwargs)

    # CUDA launches kernels *asynchronously*: `fn` returns as soon as its kernels are
    # queued, not when they have run. Without a synchronize we would time the launch,
    # not the work. So: wait for all queued work (warm-up included) before starting the
    # clock, and wait for this call's kernels to finish before stopping it.
    if sync:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args, **kwargs)
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return Timing(times)


def throughput(fn: Callable[..., Any], *args: Any, items: int, **time_kwargs: Any) -> float:
    """Items per second of ``fn(*args)``: ``items / median time``.

    ``items`` is how many items one call processes (a batch of 256 images: ``items=256``).
    ``time_kwargs`` go to :func:`time_fn` (``warmup``, ``repeat``, ``sync``, or keyword
    arguments of ``fn``).
    """
    if items <= 0:
        raise ValueError(f"items must be > 0 (items processed by one call); got {items}")
    return items / time_fn(fn, *args, **time_kwargs).median


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logs) for a moment; Python errors still surface.

    Some torch builds log ``profiler_start``/``profiler_stop`` lines from C++ straight to
    fd 2, which Jupyter would store in the notebook's outputs.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (some embedded consoles)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_memory(fn: Callable[..., Any], args: tuple, kwargs: dict) -> int:
    """Peak CPU tensor bytes allocated while ``fn`` runs, from the profiler's allocator log.

    With ``profile_memory=True`` the profiler records one ``[memory]`` event per CPU
    allocation (``+nbytes``) and per free (``-nbytes``). Sorted by time, their running sum
    is the memory held by tensors created during the call, and its maximum is the peak:

        peak = max_t  sum_{events e with time <= t} nbytes_e      (and at least 0)

    Frees of tensors that existed before the call make the sum negative; that is right:
    we report the peak *above* what was allocated before the call.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr_fd():
        prof.start()
    try:
        out = fn(*args, **kwargs)  # keep the result alive until the profiler stops
    finally:
        with _quiet_stderr_fd():
            prof.stop()
    del out
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return int(peak)


def peak_memory(
    fn: Callable[..., Any], *args: Any, device: torch.device | str | None = None, **kwargs: Any
) -> int:
    """Peak bytes of tensor memory allocated while ``fn(*args, **kwargs)`` runs.

    Counts memory above what was already allocated before the call (the inputs, the
    model's weights), at its highest point during the call: activations, temporaries,
    the output. On CUDA this reads the caching allocator's counters; on CPU it replays
    the profiler's allocation log (see :func:`_cpu_peak_memory`).

    Args:
        device: where ``fn``'s tensors live: ``"cuda"``/``"cuda:1"`` or ``"cpu"``;
            ``None`` means CUDA if available, else CPU. (Apple ``mps`` has no peak
            counter: run the measurement on CPU or CUDA.)

    Returns:
        bytes (an int >= 0).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)  # kernels may still be allocating/freeing
        peak = torch.cuda.max_memory_allocated(device)
        del out
        return max(int(peak - before), 0)
    if device.type == "cpu":
        return _cpu_peak_memory(fn, args, kwargs)
    raise ValueError(
        f"peak_memory measures 'cuda' or 'cpu' memory; got device {str(device)!r}. "
        "Move the model and inputs to the CPU (or a CUDA GPU) to measure their peak memory."
    )


# ---------------------------------------------------------------------------
# FLOPs, parameters, bytes
# ---------------------------------------------------------------------------

def _flop_counter(model_or_fn: Callable[..., Any], inputs: tuple, kwargs: dict):
    """Run one forward call under ``FlopCounterMode`` and return the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    if not callable(model_or_fn):
        raise TypeError(
            f"count_flops needs an nn.Module or a callable; got {type(model_or_fn).__name__}"
        )
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model_or_fn(*inputs, **kwargs)
    return counter


def count_flops(model_or_fn: Callable[..., Any], *inputs: Any, **kwargs: Any) -> int:
    """FLOPs of one forward call ``model_or_fn(*inputs, **kwargs)``, without gradients.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` from the matmul-like operators
    (mm, bmm, addmm, convolutions, attention); elementwise ops count 0. A multiply-add is 2
    FLOPs, so ``nn.Linear(n_in, n_out)`` on a ``(B, n_in)`` input is ``2 * B * n_in * n_out``
    and ``(M, K) @ (K, N)`` is ``2 * M * K * N``.
    """
    return int(_flop_counter(model_or_fn, inputs, kwargs).get_total_flops())


def flop_breakdown(model_or_fn: Callable[..., Any], *inputs: Any, **kwargs: Any) -> dict[str, int]:
    """FLOPs of one forward call per operator, largest first: ``{"aten.mm": 2048, ...}``."""
    counts = _flop_counter(model_or_fn, inputs, kwargs).get_flop_counts().get("Global", {})
    per_op = {str(op): int(n) for op, n in counts.items()}
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once); only those with ``requires_grad`` if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers: ``sum(numel * element_size)``.

    Buffers (BatchNorm running statistics, fixed masks) count: they ship with the model.
    A float32 model is 4 bytes per parameter, bf16 2, int8 1.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------
# Roofline: the machine's peaks and a kernel's arithmetic intensity
# ---------------------------------------------------------------------------

def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOPs per byte moved to or from memory: ``I = flops / bytes_moved``.

    On a roofline a kernel can at best reach ``min(peak_flops, I * peak_bandwidth)``:
    below the ridge ``I* = peak_flops / peak_bandwidth`` it is memory-bound, above it
    compute-bound. E.g. ``(N, N) @ (N, N)`` in float32 does ``2 N^3`` FLOPs on
    ``3 * 4 N^2`` bytes, so ``I = N / 6``.
    """
    if bytes_moved <= 0:
        raise ValueError(f"bytes_moved must be > 0; got {bytes_moved}")
    return float(flops) / float(bytes_moved)


def _mps_synced(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` followed by ``torch.mps.synchronize()`` (Apple GPUs launch asynchronously too)."""
    def synced(*args: Any) -> Any:
        out = fn(*args)
        torch.mps.synchronize()
        return out
    return synced


def measure_peaks(
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    copy_numel: int | None = None,
) -> dict[str, Any]:
    """Measure this device's attainable compute and memory bandwidth, for a roofline.

    * ``flops_per_s``: best of a few ``(size, size) @ (size, size)`` matmuls,
      ``2 * size^3`` FLOPs each. Default ``size``: 1536 on CPU (about 0.1 s on 2 cores),
      8192 on a GPU.
    * ``bytes_per_s``: a copy of ``copy_numel`` elements reads and writes each once, so it
      moves ``2 * copy_numel * element_size`` bytes; divided by the median time.
      Default: 32 Mi elements on CPU, 256 Mi on a GPU (far larger than any cache).

    Returns:
        ``{"flops_per_s", "bytes_per_s", "device", "dtype", "size", "copy_numel"}``.
    """
    from .env import device as default_device

    dev = torch.device(device) if device is not None else default_device()
    on_gpu = dev.type != "cpu"
    size = size or (8192 if on_gpu else 1536)
    copy_numel = copy_numel or (2**28 if on_gpu else 2**25)
    sync = dev.type == "cuda"
    matmul_fn, copy_fn = torch.matmul, torch.Tensor.copy_
    if dev.type == "mps":  # time_fn synchronizes CUDA only: wait for the Apple GPU in the call
        matmul_fn, copy_fn = _mps_synced(matmul_fn), _mps_synced(copy_fn)

    a = torch.randn(size, size, device=dev).to(dtype)
    b = torch.randn(size, size, device=dev).to(dtype)
    # `min` time = best throughput: the peak is what the hardware *can* do.
    matmul = time_fn(matmul_fn, a, b, warmup=1, repeat=5, sync=sync)
    flops_per_s = 2 * size**3 / matmul.min
    del a, b

    src = torch.ones(copy_numel, device=dev, dtype=dtype)
    dst = torch.empty_like(src)
    copy = time_fn(copy_fn, dst, src, warmup=2, repeat=10, sync=sync)
    bytes_per_s = 2 * src.numel() * src.element_size() / copy.median
    del src, dst

    return {
        "flops_per_s": flops_per_s,
        "bytes_per_s": bytes_per_s,
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "size": size,
        "copy_numel": copy_numel,
    }


# ---------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """0-d tensors and NumPy scalars become Python numbers."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Table:
    """A small results table: rows of dicts, shown as HTML in a notebook, text elsewhere.

    >>> t = ml.bench.Table([{"model": "cnn", "acc": 0.9312, "params": 1234567}], title="Ch. 1")
    >>> t.add({"model": "vit", "acc": 0.88, "params": 2_100_000}).sort("acc", reverse=True)

    Numbers are formatted for reading: ints with thousands separators (``1,234,567``),
    floats with 3 significant digits (``0.931``), unless ``formats`` gives a column a
    format spec (``".2%"``), a format string (``"{:.1f} ms"``) or a callable
    (``ml.bench.fmt_bytes``). Missing values show as empty cells.
    """

    def __init__(
        self,
        rows: Iterable[dict[str, Any]] = (),
        columns: Sequence[str] | None = None,
        title: str | None = None,
        formats: dict[str, str | Callable[[Any], str]] | None = None,
    ) -> None:
        self.rows: list[dict[str, Any]] = []
        self._columns = list(columns) if columns is not None else None
        self.title = title
        self.formats = dict(formats or {})
        for row in rows:
            self.add(row)

    # --- data --------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        """The columns shown: the ones given, else every key in order of first appearance."""
        if self._columns is not None:
            return list(self._columns)
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def add(self, row: dict[str, Any]) -> "Table":
        """Append one row (a dict column -> value); returns the table for chaining."""
        if not isinstance(row, dict):
            raise TypeError(f"a Table row is a dict of column -> value; got {type(row).__name__}")
        self.rows.append({k: _plain(v) for k, v in row.items()})
        return self

    def column(self, name: str) -> list[Any]:
        """The values of one column, top to bottom (``None`` where a row lacks it)."""
        if name not in self.columns and not any(name in row for row in self.rows):
            raise KeyError(f"no column {name!r}; the table has {self.columns}")
        return [row.get(name) for row in self.rows]

    def sort(self, column: str, reverse: bool = False) -> "Table":
        """Sort rows in place by ``column`` (missing values last); returns the table."""
        self.column(column)  # clear error on an unknown column
        present = [r for r in self.rows if r.get(column) is not None]
        missing = [r for r in self.rows if r.get(column) is None]
        self.rows = sorted(present, key=lambda r: r[column], reverse=reverse) + missing
        return self

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    # --- formatting --------------------------------------------------------
    def format_cell(self, column: str, value: Any) -> str:
        """The text shown for ``value`` in ``column``."""
        if value is None:
            return ""
        fmt = self.formats.get(column)
        if callable(fmt):
            return str(fmt(value))
        if isinstance(fmt, str):
            return fmt.format(value) if "{" in fmt else format(value, fmt)
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, numbers.Integral):
            return f"{value:,}"
        if isinstance(value, numbers.Real):
            return _sig(float(value))
        return str(value)

    def _cells(self) -> tuple[list[str], list[list[str]], list[bool]]:
        """Header, formatted rows, and per column whether it is numeric (right-aligned)."""
        cols = self.columns
        body = [[self.format_cell(c, row.get(c)) for c in cols] for row in self.rows]
        numeric = [
            any(_is_number(row.get(c)) for row in self.rows)
            and all(row.get(c) is None or _is_number(row.get(c)) for row in self.rows)
            for c in cols
        ]
        return cols, body, numeric

    def __str__(self) -> str:
        cols, body, numeric = self._cells()
        widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                cell.rjust(w) if num else cell.ljust(w)
                for cell, w, num in zip(cells, widths, numeric)
            ).rstrip()

        lines = [self.title] if self.title else []
        lines += [line(cols), "  ".join("-" * w for w in widths)]
        lines += [line(r) for r in body]
        return "\n".join(lines)

    __repr__ = __str__

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table (numeric columns right-aligned)."""
        cols, body, numeric = self._cells()

        def esc(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(esc(c) for c in cols) + " |")
        lines.append("|" + "|".join("---:" if num else ":---" for num in numeric) + "|")
        lines += ["| " + " | ".join(esc(cell) for cell in r) + " |" for r in body]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cols, body, numeric = self._cells()
        align = ["right" if num else "left" for num in numeric]
        out = ["<table>"]
        if self.title:
            out.append(f"<caption>{html.escape(self.title)}</caption>")
        out.append(
            "<thead><tr>"
            + "".join(f'<th style="text-align:{a}">{html.escape(c)}</th>' for c, a in zip(cols, align))
            + "</tr></thead>"
        )
        out.append("<tbody>")
        for r in body:
            out.append(
                "<tr>"
                + "".join(f'<td style="text-align:{a}">{html.escape(cell)}</td>' for cell, a in zip(r, align))
                + "</tr>"
            )
        out.append("</tbody></table>")
        return "\n".join(out)
