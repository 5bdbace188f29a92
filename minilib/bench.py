"""Measuring cost: time, throughput, peak memory, FLOPs, parameters, bytes, and tables.

Every chapter reports quality *and* cost. This module is the one place where cost is
measured, so that "2x faster" means the same thing on every page of the book:

* :func:`time_fn` times a call right: warm-up runs first, CUDA synchronized around the
  clock, many repeats summarised by the median and half the IQR (:class:`Timing`), and
  the machine's :class:`Load` meanwhile (:func:`machine_load` samples it on its own);
  a busy machine is warned about.
* :func:`compare` times two implementations in interleaved rounds: a speed-up with its
  spread and a :func:`verdict` ("faster", "slower", "no measurable difference").
* :func:`accuracy_se`, :func:`mcnemar`, :func:`paired_accuracy`, :func:`paired_difference`,
  :func:`quality_verdict`, :func:`mean_spread`:
  the spread of quality numbers, so a conclusion never rests on noise.
* :func:`throughput` turns a timing into items per second.
* :func:`peak_memory` is the peak tensor memory a call allocates (CUDA or CPU).
* :func:`count_flops` / :func:`flop_breakdown` count floating-point operations with
  ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs; attention on every device).
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
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "Load", "BusyMachineWarning", "machine_load", "Timing", "time_fn", "throughput",
    "Comparison", "compare", "verdict",
    "accuracy_se", "mcnemar", "paired_accuracy", "paired_difference", "quality_verdict", "mean_spread", "peak_memory",
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
# Machine load: is anything else competing for the CPU while we measure?
# ---------------------------------------------------------------------------

BUSY_CORES = 0.25
"""Other processes using more than this many cores during a measurement make it "busy"."""

MIN_LOAD_WINDOW = 0.2
"""Seconds: a load sampled over a shorter region is topped up by sleeping (``/proc/stat``
counts in 10 ms ticks, so shorter windows are too coarse)."""


class BusyMachineWarning(RuntimeWarning):
    """A timing was taken while other processes were using the CPU."""


@dataclass(frozen=True)
class Load:
    """How busy the machine was during a measured region of ``seconds`` wall time.

    * ``other_cores``: CPU used by *other* processes, in cores: the machine's busy time
      (``/proc/stat``: user + nice + system + irq + softirq + steal, summed over the CPUs
      this process may run on) minus this process's own CPU time, divided by wall time.
      ``None`` where ``/proc/stat`` is missing (macOS, Windows).
    * ``own_cores``: this process's CPU time (all its threads) / wall time.
    * ``loadavg``: the 1-minute load average (``None`` where the OS has none).
    * ``cores``: the CPUs this process may run on.

    ``busy``: ``other_cores > BUSY_CORES`` (a quarter of a core). Without ``/proc/stat``
    the test is coarse: the load average (which counts this process too, and lags by a
    minute) exceeds ``cores``.
    """

    other_cores: float | None
    own_cores: float | None
    loadavg: float | None
    cores: int
    seconds: float = 0.0

    @property
    def busy(self) -> bool:
        if self.other_cores is not None:
            return self.other_cores > BUSY_CORES
        return self.loadavg is not None and self.loadavg > self.cores

    def _detail(self, bound: str = "", sep: str = ": ") -> str:
        if self.other_cores is not None:
            return f"other processes{sep}{bound}{self.other_cores:.2f} of {self.cores} cores"
        return f"load average {bound}{self.loadavg:.2f} on {self.cores} cores; no /proc/stat"

    @property
    def known(self) -> bool:
        return self.other_cores is not None or self.loadavg is not None

    @property
    def brief(self) -> str:
        """``"idle"``, or ``"BUSY, other processes 1.30 of 2 cores"`` (for one-line summaries)."""
        if not self.known:
            return "load unknown"
        return f"BUSY, {self._detail(sep=' ')}" if self.busy else "idle"

    def __str__(self) -> str:
        if not self.known:
            return "load unknown"
        return f"{'BUSY' if self.busy else 'idle'} ({self._detail()})"


def _read_proc_stat() -> tuple[float | None, int]:
    """(busy CPU seconds since boot on this process's CPUs, number of those CPUs)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = []
    try:
        with open("/proc/stat") as f:
            fields = {p[0]: p[1:] for p in (line.split() for line in f) if p and p[0].startswith("cpu")}
        tick = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None, len(cpus) or os.cpu_count() or 1
    names = [f"cpu{i}" for i in cpus]
    if not names or not all(n in fields for n in names):  # affinity not visible: whole machine
        names, cpus = ["cpu"], range(os.cpu_count() or 1)
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    busy = sum(int(fields[n][i]) for n in names for i in (0, 1, 2, 5, 6, 7) if i < len(fields[n]))
    return busy / tick, len(cpus)


def _load_sample() -> tuple[float, float | None, int, float]:
    busy, cores = _read_proc_stat()
    return time.monotonic(), busy, cores, time.process_time()


def _load_since(start: tuple[float, float | None, int, float], min_seconds: float = MIN_LOAD_WINDOW) -> Load:
    """The load between ``start`` (a :func:`_load_sample`) and now, over at least ``min_seconds``."""
    short = min_seconds - (time.monotonic() - start[0])
    if short > 0:
        time.sleep(short)
    stop = _load_sample()
    wall = max(stop[0] - start[0], 1e-9)
    own = (stop[3] - start[3]) / wall
    other = None
    if start[1] is not None and stop[1] is not None:
        other = max(0.0, (stop[1] - start[1]) / wall - own)
    try:
        loadavg = os.getloadavg()[0]
    except (AttributeError, OSError):
        loadavg = None
    return Load(other_cores=other, own_cores=own, loadavg=loadavg, cores=stop[2], seconds=wall)


def machine_load(seconds: float = 0.5) -> Load:
    """Sample how busy the machine is over ``seconds`` (this process sleeps meanwhile)."""
    return _load_since(_load_sample(), min_seconds=seconds)


def _warn_if_busy(load: Load | None, what: str) -> None:
    """Warn loudly, and print, so that a busy run shows in a stored notebook's output."""
    if load is not None and load.busy:
        message = (f"machine busy during this {what}: {load._detail(sep=' used ')}; "
                   "stop other jobs and rerun before trusting or storing this number")
        print(f"WARNING: {message}", flush=True)
        warnings.warn(message, BusyMachineWarning, stacklevel=3)


def _dry_run() -> bool:
    from . import env

    return bool(getattr(env, "dry_run", lambda: False)())


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------

@dataclass
class Timing:
    """The wall-clock times of ``len(times)`` repeated runs of one call, in seconds.

    Report the **median** (robust to the odd slow run caused by another process or a
    garbage collection) with **half the interquartile range** as the spread; ``mean``/``std``
    are there for comparison, ``min`` is the best the machine managed. ``load`` is the
    machine's :class:`Load` during the timed runs (``None`` if not recorded).
    """

    times: list[float]
    load: Load | None = None

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
    def half_iqr(self) -> float:
        """``iqr / 2``: the ``±`` that :meth:`__str__` prints after the median."""
        return self.iqr / 2

    @property
    def mean_vs_median(self) -> float:
        """``(mean - median) / median``: > 0 when slow outliers pull the mean up."""
        return (self.mean - self.median) / self.median

    @property
    def ms(self) -> float:
        """The median in milliseconds."""
        return self.median * 1e3

    def __str__(self) -> str:
        scale_, unit = _time_unit(self.median)
        load = f"; {self.load.brief}" if self.load is not None else ""
        return (
            f"{self.median / scale_:.3f} {unit} ± {self.half_iqr / scale_:.3f} {unit} "
            f"(median ± half the IQR of {len(self.times)} runs{load})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython: show the summary
        printer.text(str(self))


def _check_timing(warmup: int, repeat: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (number of untimed calls); got {warmup}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1 (number of timed calls); got {repeat}")


def _time_once(fn: Callable[..., Any], args: tuple, kwargs: dict, sync: bool) -> float:
    """One timed call: start the clock, call, wait for the call's CUDA kernels, stop."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


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
        a :class:`Timing` with one time in seconds per timed call and the machine's
        :class:`Load` meanwhile (it warns when the machine was busy). A dry run
        (``BOOK_DRYRUN=1``) makes at most 1 warm-up and 2 timed calls and records no load.
    """
    _check_timing(warmup, repeat)
    dry = _dry_run()
    if dry:
        warmup, repeat = min(warmup, 1), min(repeat, 2)
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
    start = None if dry else _load_sample()
    times = [_time_once(fn, args, kwargs, sync) for _ in range(repeat)]
    load = None if dry else _load_since(start)
    _warn_if_busy(load, "timing")
    return Timing(times, load)


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
# Comparing two implementations, and the words for a result
# ---------------------------------------------------------------------------

def verdict(
    value: float, lo: float, hi: float, reference: float = 1.0,
    above: str = "faster", below: str = "slower", same: str = "no measurable difference",
) -> str:
    """The word for an estimate ``value`` with spread ``[lo, hi]``, against ``reference``.

        above  if lo > reference,   below  if hi < reference,   same  otherwise

    A spread that covers the reference decides nothing. For a single number, pass it three
    times: ``verdict(x, x, x, reference=0, above="above", below="below", same="equal to")``.
    """
    if any(math.isnan(v) for v in (value, lo, hi, reference)):
        raise ValueError(f"verdict: got NaN among value={value}, lo={lo}, hi={hi}, reference={reference}")
    if not lo <= value <= hi:
        raise ValueError(f"verdict: need lo <= value <= hi; got lo={lo}, value={value}, hi={hi}")
    if lo > reference:
        return above
    if hi < reference:
        return below
    return same


@dataclass
class Comparison:
    """``candidate`` against ``baseline``, timed in interleaved rounds (see :func:`compare`).

    ``ratios[i] = baseline.times[i] / candidate.times[i]``: the candidate's speed-up in
    round ``i``; ``speedup`` is their median, ``lo``/``hi`` their 25th/75th percentiles.
    """

    baseline: Timing
    candidate: Timing
    load: Load | None = None

    def __post_init__(self) -> None:
        if len(self.baseline.times) != len(self.candidate.times):
            raise ValueError(f"Comparison needs one baseline and one candidate time per round; got "
                             f"{len(self.baseline.times)} and {len(self.candidate.times)}")

    @property
    def ratios(self) -> list[float]:
        return [a / b if b > 0 else (math.inf if a > 0 else 1.0)
                for a, b in zip(self.baseline.times, self.candidate.times)]

    @property
    def speedup(self) -> float:
        return float(np.quantile(self.ratios, 0.5))

    @property
    def lo(self) -> float:
        return float(np.quantile(self.ratios, 0.25))

    @property
    def hi(self) -> float:
        return float(np.quantile(self.ratios, 0.75))

    def words(self, faster: str = "faster", slower: str = "slower",
              same: str = "no measurable difference") -> str:
        """:func:`verdict` of the speed-up against 1 with your own words."""
        return verdict(self.speedup, self.lo, self.hi, 1.0, faster, slower, same)

    @property
    def verdict(self) -> str:
        """``"faster"`` if lo > 1, ``"slower"`` if hi < 1, else ``"no measurable difference"``."""
        return self.words()

    def __str__(self) -> str:
        load = f"; {self.load.brief}" if self.load is not None else ""
        return (f"{self.speedup:.2f}x (IQR {self.lo:.2f}-{self.hi:.2f}x, "
                f"{len(self.ratios)} interleaved rounds{load})")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def compare(
    baseline: Callable[..., Any],
    candidate: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    repeat: int = 20,
    sync: bool | None = None,
    **kwargs: Any,
) -> Comparison:
    """Time ``candidate`` against ``baseline`` in ``repeat`` interleaved rounds: A B, B A, A B, ...

    Both are called with ``*args, **kwargs`` (usually none: two closures). Each round times
    one call of each, alternating which goes first, so slow drifts of the machine (clock
    boost, a background job) hit both alike; the per-round ratio
    ``t_baseline / t_candidate`` is the candidate's speed-up. Arguments as :func:`time_fn`
    (``warmup`` untimed calls of each; a dry run makes at most 1 and 2 rounds).
    """
    _check_timing(warmup, repeat)
    dry = _dry_run()
    if dry:
        warmup, repeat = min(warmup, 1), min(repeat, 2)
    if sync is None:
        sync = torch.cuda.is_available()
    for _ in range(warmup):
        baseline(*args, **kwargs)
        candidate(*args, **kwargs)
    if sync:
        torch.cuda.synchronize()
    start = None if dry else _load_sample()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeat):
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate who goes first
            times[j].append(_time_once((baseline, candidate)[j], args, kwargs, sync))
    load = None if dry else _load_since(start)
    _warn_if_busy(load, "comparison")
    return Comparison(Timing(times[0], load), Timing(times[1], load), load)


# ---------------------------------------------------------------------------
# Quality numbers and their spread
# ---------------------------------------------------------------------------

def accuracy_se(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` (a fraction) measured on ``n`` samples.

        se = sqrt(p (1 - p) / n)        e.g. p = 0.9 on n = 10,000 images: se = 0.003

    Two accuracies on *the same* images are better compared with :func:`mcnemar`.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"accuracy_se: p is a fraction in [0, 1]; got {p} "
                         "(for a percentage, pass p / 100 and multiply the result by 100)")
    if n < 1:
        raise ValueError(f"accuracy_se: n is the number of samples (>= 1); got {n}")
    return math.sqrt(p * (1.0 - p) / n)


def _as_bool_vector(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x).ravel()
    if x.dtype != bool:
        if not np.isin(x, (0, 1)).all():
            raise ValueError(f"mcnemar: {name} must hold booleans (correct or not per sample); "
                             f"got values {np.unique(x)[:5]}")
        x = x.astype(bool)
    return x


def mcnemar(correct_a: Any, correct_b: Any) -> float:
    """Exact McNemar test: the two-sided p-value that models A and B are equally accurate.

    ``correct_a``, ``correct_b``: booleans per sample (tensors, arrays or lists, same
    samples in the same order). Only discordant pairs count: ``b`` samples A gets right and
    B wrong, ``c`` the reverse. Under equal accuracy ``b ~ Binomial(b + c, 1/2)``, so

        p = min(1, 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c))    (1.0 when b + c = 0)
    """
    a, b = _as_bool_vector(correct_a, "correct_a"), _as_bool_vector(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: correct_a and correct_b must cover the same samples; "
                         f"got {a.size} and {b.size}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    term = tail = 1  # C(n, 0); exact integers, so large n neither overflows nor rounds
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        tail += term
    return min(1.0, 2 * tail / 2**n)


def paired_accuracy(correct_a: Any, correct_b: Any) -> tuple[float, float, float]:
    """Model B against model A on the same samples: ``(change, se, p)``, in points of accuracy.

    ``correct_a``, ``correct_b``: booleans per sample, as for :func:`mcnemar`. With ``b``
    samples only A gets right, ``c`` only B, out of ``n``:

        change = 100 (c - b) / n
        se     = 100 sqrt(b + c - (c - b)^2 / n) / n      (paired: only disagreements vary)
        p      = mcnemar(correct_a, correct_b)

    Pass ``change, se`` to :func:`quality_verdict` for the words. Two accuracies on the same
    images have a far smaller spread than :func:`accuracy_se` of each suggests.
    """
    a, b = _as_bool_vector(correct_a, "correct_a"), _as_bool_vector(correct_b, "correct_b")
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_accuracy: correct_a and correct_b must cover the same (non-empty) "
                         f"samples; got {a.size} and {b.size}")
    n, only_a, only_b = a.size, int((a & ~b).sum()), int((~a & b).sum())
    se = math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    return 100.0 * (only_b - only_a) / n, 100.0 * se, mcnemar(a, b)


def paired_difference(reference: Any, candidate: Any) -> tuple[float, float]:
    """Mean and standard error of the per-sample differences ``candidate - reference``.

        d_i = candidate_i - reference_i,   mean = (1/N) sum d_i,   se = std(d) / sqrt(N)

    ``reference``, ``candidate``: ``(N,)`` values on the same samples in the same order
    (tensors, arrays or lists, any unit): per-token losses, per-image PSNRs. Pairing removes
    the spread that comes from some samples being harder than others. Samples are treated as
    independent; neighbouring tokens are not, so for text ``se`` is a lower bound. Feed
    ``mean, se`` (or ``-mean, se`` for a loss) to :func:`quality_verdict`.
    """
    def vector(x: Any) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().double().numpy()
        return np.asarray(x, dtype=np.float64)

    ref, cand = vector(reference), vector(candidate)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size < 2:
        raise ValueError(f"paired_difference: need two (N,) vectors over the same N >= 2 samples; "
                         f"got shapes {ref.shape} and {cand.shape}")
    d = cand - ref
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def quality_verdict(
    diff: float, se: float, k: float = 2.0,
    better: str = "better", worse: str = "worse", same: str = "no measurable difference",
) -> str:
    """Words for a quality difference ``diff`` (positive = better) with standard error ``se``.

    ``better`` if ``diff - k se > 0``, ``worse`` if ``diff + k se < 0``, else ``same``
    (``k = 2``: about a 95% interval). For a loss, pass ``-diff``.
    """
    if se < 0 or k <= 0:
        raise ValueError(f"quality_verdict: need se >= 0 and k > 0; got se={se}, k={k}")
    return verdict(diff, diff - k * se, diff + k * se, 0.0, better, worse, same)


def mean_spread(values: Iterable[float]) -> tuple[float, float, int]:
    """``(mean, std, n)`` of repeated results (seeds); ``std`` is the sample std (0 if n = 1)."""
    xs = [float(_plain(v)) for v in values]
    if not xs:
        raise ValueError("mean_spread needs at least one value; got none")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)



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

def _attention_shapes(q: Sequence[int], k: Sequence[int], v: Sequence[int]) -> tuple[int, int, int, int, int]:
    """``(batch * heads of q, T_q, T_k, D_qk, D_v)`` from ``(..., T, D)`` shapes."""
    return math.prod(q[:-2]), q[-2], k[-2], q[-1], v[-1]


def _sdpa_flops(q, k, v, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """QK^T and PV: ``2 B H T_q T_k (D_qk + D_v)``, as torch's own SDPA formula."""
    bh, t_q, t_k, d_qk, d_v = _attention_shapes(q, k, v)
    return 2 * bh * t_q * t_k * (d_qk + d_v)


def _sdpa_backward_flops(grad_out, q, k, v, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Recomputed scores plus the four gradient matmuls: ``2 B H T_q T_k (3 D_qk + 2 D_v)``."""
    bh, t_q, t_k, d_qk, d_v = _attention_shapes(q, k, v)
    return 2 * bh * t_q * t_k * (3 * d_qk + 2 * d_v)


def _attention_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for the fused attention kernels torch's FLOP counter has none for (CPU, MPS, ...)."""
    from torch.utils.flop_counter import flop_registry

    wanted = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_flops,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward_flops,
        "_scaled_dot_product_fused_attention_overrideable": _sdpa_flops,
        "_scaled_dot_product_fused_attention_overrideable_backward": _sdpa_backward_flops,
        "_scaled_dot_product_attention_math_for_mps": _sdpa_flops,
    }
    ops = ((getattr(torch.ops.aten, name, None), f) for name, f in wanted.items())
    return {op: f for op, f in ops if op is not None and op not in flop_registry}


def _flop_counter(model_or_fn: Callable[..., Any], inputs: tuple, kwargs: dict):
    """Run one forward call under ``FlopCounterMode`` and return the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    if not callable(model_or_fn):
        raise TypeError(
            f"count_flops needs an nn.Module or a callable; got {type(model_or_fn).__name__}"
        )
    counter = FlopCounterMode(display=False, custom_mapping=_attention_formulas())
    with torch.no_grad(), counter:
        model_or_fn(*inputs, **kwargs)
    return counter


def count_flops(model_or_fn: Callable[..., Any], *inputs: Any, **kwargs: Any) -> int:
    """FLOPs of one forward call ``model_or_fn(*inputs, **kwargs)``, without gradients.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` from the matmul-like operators
    (mm, bmm, addmm, convolutions, attention); elementwise ops count 0. A multiply-add is 2
    FLOPs, so ``nn.Linear(n_in, n_out)`` on a ``(B, n_in)`` input is ``2 * B * n_in * n_out``
    and ``(M, K) @ (K, N)`` is ``2 * M * K * N``.

    Attention counts on every device (minilib adds formulas for the fused CPU and MPS
    kernels torch lacks): ``F.scaled_dot_product_attention`` with ``(B, H, T, D)`` inputs is
    ``4 B H T_q T_k D`` (QK^T and PV, softmax free). Causal attention is charged in full,
    ``T_q T_k`` and not about half of it, as torch's own formulas and the unfused matmuls do.
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


class _Formatted(str):
    """A cell already formatted (by :meth:`Table.transpose`), remembering if it was a number."""

    numeric: bool = False

    def __new__(cls, text: str, numeric: bool) -> "_Formatted":
        self = super().__new__(cls, text)
        self.numeric = numeric
        return self


def _is_numeric_cell(value: Any) -> bool:
    """Right-aligned: numbers, timings, comparisons (and formatted cells that were numbers)."""
    if isinstance(value, _Formatted):
        return value.numeric
    return _is_number(value) or isinstance(value, (Timing, Comparison))


def _fmt_number(x: float) -> str:
    """Default float format: 3 significant digits, fixed point from 1e-3 to 1e6 (with
    thousands separators), scientific outside: ``0.0123``, ``12.3``, ``12,346``, ``1.20e-05``."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if 1e-3 <= abs(x) < 1e6:
        return _sig(x, 3)
    return f"{x:.2e}"


def _fmt_timing(t: Timing) -> str:
    """``"1.23 ± 0.02 ms"``: the median (3 significant digits) ± half the IQR, one unit."""
    scale_, unit = _time_unit(t.median)
    median = _sig(t.median / scale_, 3)
    decimals = len(median.split(".")[1]) if "." in median else 0
    return f"{median} ± {t.half_iqr / scale_:,.{decimals}f} {unit}"


def _loads(items: Any) -> list[Load]:
    """The :class:`Load` records in a Load, Timing, Comparison or an iterable of them."""
    if items is None:
        return []
    if isinstance(items, Load):
        return [items]
    if isinstance(items, (Timing, Comparison)):
        return [items.load] if items.load is not None else []
    if isinstance(items, Iterable) and not isinstance(items, (str, bytes)):
        return [load for item in items for load in _loads(item)]
    raise TypeError(f"Table(load=...) takes a Load, Timing, Comparison or a list of them; "
                    f"got {type(items).__name__}")


def _load_note(loads: list[Load], timed: bool) -> str | None:
    """One line on the machine's load during the table's measurements."""
    if not loads:
        return "Machine load: not recorded" if timed else None
    if len(loads) == 1:
        return f"Machine load: {loads[0]}"
    busy = [load for load in loads if load.busy]
    worst = max(loads, key=lambda l: (l.busy, l.other_cores or 0.0, l.loadavg or 0.0))
    if not worst.known:
        return "Machine load: unknown"
    if busy:
        return f"Machine load: BUSY during {len(busy)} of {len(loads)} timings ({worst._detail('up to ')})"
    return f"Machine load: idle during all {len(loads)} timings ({worst._detail('at most ')})"


_CELL = "padding:0.3em 0.8em"


class Table:
    """A small results table: rows of dicts, shown as HTML in a notebook, text elsewhere.

    >>> t = ml.bench.Table([{"model": "cnn", "acc": 0.9312, "params": 1234567}], title="Ch. 1",
    ...                    headers={"acc": "accuracy"})
    >>> t.add({"model": "vit", "acc": 0.88, "params": 2_100_000}).sort("acc", reverse=True)

    Numbers are formatted for reading: ints with thousands separators (``1,234,567``),
    floats with 3 significant digits (``0.931``, ``12,346``; scientific below 1e-3 and
    from 1e6), booleans as yes/no, a :class:`Timing` as ``1.23 ± 0.02 ms``, a
    :class:`Comparison` as ``1.47x (1.41-1.52)``, unless ``formats`` gives a column a format
    spec (``".2%"``), a format string (``"{:.1f} ms"``) or a callable (``ml.bench.fmt_bytes``).
    Missing values show as empty cells. ``headers`` renames columns for display (keys stay
    the data's names). When a cell holds a Timing or Comparison, or ``load`` is given (a
    :class:`Load`, Timing, Comparison or a list of them), a footer states the machine load.
    More than ``MAX_COLUMNS`` columns rarely fit the page: the table prints a hint to
    :meth:`transpose` or split it.
    """

    MAX_COLUMNS = 7

    def __init__(
        self,
        rows: Iterable[dict[str, Any]] = (),
        columns: Sequence[str] | None = None,
        title: str | None = None,
        formats: dict[str, str | Callable[[Any], str]] | None = None,
        headers: dict[str, str] | None = None,
        load: Any = None,
    ) -> None:
        self.rows: list[dict[str, Any]] = []
        self._columns = list(columns) if columns is not None else None
        self.title = title
        self.formats = dict(formats or {})
        self.headers = dict(headers or {})
        self.load = load
        _loads(load)  # a clear error now rather than at display time
        self._hinted = False
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

        def key(row: dict[str, Any]) -> Any:
            value = row[column]
            return value.median if isinstance(value, Timing) else (
                value.speedup if isinstance(value, Comparison) else value)

        present = [r for r in self.rows if r.get(column) is not None]
        missing = [r for r in self.rows if r.get(column) is None]
        self.rows = sorted(present, key=key, reverse=reverse) + missing
        return self

    def transpose(self, key_column: str) -> "Table":
        """A new table whose columns are this table's rows, headed by their ``key_column``.

        Each other column becomes a row (its header in the first column), formatted as
        here. For configuration tables too wide for the page: 8 settings of 3 models
        become 3 columns of 8 rows.
        """
        self.column(key_column)
        first = self.headers.get(key_column, key_column)
        keys = [self.format_cell(key_column, row.get(key_column)) for row in self.rows]
        if len(set(keys)) < len(keys) or first in keys:
            raise ValueError(f"transpose: the values of {key_column!r} must be distinct and differ "
                             f"from its header, as they become the column headers; got {keys}")
        rows = []
        for c in self.columns:
            if c == key_column:
                continue
            row: dict[str, Any] = {first: self.headers.get(c, c)}
            for key, source in zip(keys, self.rows):
                value = source.get(c)
                if value is not None:
                    row[key] = _Formatted(self.format_cell(c, value), _is_numeric_cell(value))
            rows.append(row)
        return Table(rows, columns=[first] + keys, title=self.title, load=self._all_loads())

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    # --- formatting --------------------------------------------------------
    def format_cell(self, column: str, value: Any) -> str:
        """The text shown for ``value`` in ``column``."""
        if value is None:
            return ""
        if isinstance(value, _Formatted):
            return str(value)
        fmt = self.formats.get(column)
        if callable(fmt):
            return str(fmt(value))
        if isinstance(fmt, str):
            return fmt.format(value) if "{" in fmt else format(value, fmt)
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, numbers.Integral):
            return f"{value:,}"
        if isinstance(value, numbers.Real):
            return _fmt_number(float(value))
        if isinstance(value, Timing):
            return _fmt_timing(value)
        if isinstance(value, Comparison):
            return f"{value.speedup:.2f}x ({value.lo:.2f}-{value.hi:.2f})"
        return str(value)

    def _timed(self) -> bool:
        return any(isinstance(v, (Timing, Comparison)) for row in self.rows for v in row.values())

    def _all_loads(self) -> list[Load]:
        cells = [v for row in self.rows for v in row.values() if isinstance(v, (Timing, Comparison))]
        return _loads(self.load) + _loads(cells)

    def footer(self) -> str | None:
        """The machine-load line shown under the table (``None`` when nothing was timed)."""
        return _load_note(self._all_loads(), self._timed() or self.load is not None)

    def _cells(self) -> tuple[list[str], list[list[str]], list[bool]]:
        """Display headers, formatted rows, and per column whether it is numeric (right-aligned)."""
        cols = self.columns
        if len(cols) > self.MAX_COLUMNS and not self._hinted:
            self._hinted = True
            print(f"Hint: table {self.title or ''!r} has {len(cols)} columns; more than "
                  f"{self.MAX_COLUMNS} rarely fit the page: transpose it "
                  f"(table.transpose({cols[0]!r})) or split it.")
        body = [[self.format_cell(c, row.get(c)) for c in cols] for row in self.rows]
        numeric = [
            any(_is_numeric_cell(row.get(c)) for row in self.rows)
            and all(row.get(c) is None or _is_numeric_cell(row.get(c)) for row in self.rows)
            for c in cols
        ]
        return [self.headers.get(c, c) for c in cols], body, numeric

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
        footer = self.footer()
        return "\n".join(lines + ([footer] if footer else []))

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
        footer = self.footer()
        return "\n".join(lines + (["", footer] if footer else []))

    def _repr_html_(self) -> str:
        # Inline styles: the page's CSS may be absent (a notebook viewer, a PDF). Padding
        # keeps adjacent columns apart; tabular figures line digits up in a column.
        cols, body, numeric = self._cells()
        head = [f"{_CELL};text-align:{'right' if num else 'left'}" for num in numeric]
        style = [s + (";white-space:nowrap" if num else "") for s, num in zip(head, numeric)]
        out = ['<table class="ml-table" style="border-collapse:collapse;'
               'font-variant-numeric:tabular-nums">']
        if self.title:
            out.append(f'<caption style="{_CELL};font-weight:bold">{html.escape(self.title)}</caption>')
        out.append("<thead><tr>" + "".join(
            f'<th style="{s};border-bottom:1px solid currentColor">{html.escape(c)}</th>'
            for c, s in zip(cols, head)) + "</tr></thead>")
        out.append("<tbody>")
        for r in body:
            out.append("<tr>" + "".join(
                f'<td style="{s}">{html.escape(cell)}</td>' for cell, s in zip(r, style)) + "</tr>")
        out.append("</tbody>")
        footer = self.footer()
        if footer:
            out.append(f'<tfoot><tr><td colspan="{len(cols)}" style="{_CELL};text-align:left;'
                       f'font-size:0.85em;opacity:0.75">{html.escape(footer)}</td></tr></tfoot>')
        out.append("</table>")
        return "\n".join(out)
