"""ml.bench: timing, synchronization, FLOPs, parameters, bytes, peak memory, tables."""

from __future__ import annotations

import math
import os
import statistics
import re
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilib import bench, env, models

# This machine may be shared: timings here are allowed to be taken while it is busy.
pytestmark = pytest.mark.filterwarnings("ignore::minilib.bench.BusyMachineWarning")

MiB = 2**20


# --- FLOPs -------------------------------------------------------------------

@pytest.mark.parametrize("B,n_in,n_out", [(1, 3, 5), (32, 512, 256), (7, 64, 1)])
def test_count_flops_linear_is_2_b_in_out(B, n_in, n_out):
    assert bench.count_flops(nn.Linear(n_in, n_out), torch.randn(B, n_in)) == 2 * B * n_in * n_out


def test_count_flops_linear_without_bias():
    assert bench.count_flops(nn.Linear(10, 20, bias=False), torch.randn(4, 10)) == 2 * 4 * 10 * 20


@pytest.mark.parametrize("M,K,N", [(3, 5, 7), (64, 128, 32)])
def test_count_flops_matmul_function(M, K, N):
    a, b = torch.randn(M, K), torch.randn(K, N)
    assert bench.count_flops(torch.matmul, a, b) == 2 * M * K * N
    assert bench.count_flops(lambda p, q: p @ q, a, b) == 2 * M * K * N


def test_count_flops_passes_kwargs_and_runs_without_grad():
    seen = {}

    def fn(x, *, scale):
        seen["grad"] = torch.is_grad_enabled()
        return (x @ x.T) * scale

    assert bench.count_flops(fn, torch.randn(4, 6), scale=2.0) == 2 * 4 * 6 * 4
    assert seen["grad"] is False


def test_count_flops_rejects_non_callable():
    with pytest.raises(TypeError, match="callable"):
        bench.count_flops(42, torch.randn(2))


def test_flop_breakdown_per_operator():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(2, 8)
    per_op = bench.flop_breakdown(model, x)
    assert per_op == {"aten.addmm": 2 * 2 * 8 * 16 + 2 * 2 * 16 * 4}
    assert sum(per_op.values()) == bench.count_flops(model, x)
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    mixed = bench.flop_breakdown(lambda a, b: (a @ b, torch.bmm(a.expand(2, 3, 4), b.expand(2, 4, 5))), a, b)
    assert mixed == {"aten.bmm": 240, "aten.mm": 120}
    assert list(mixed) == ["aten.bmm", "aten.mm"]  # largest first


# --- parameters and bytes ----------------------------------------------------

def test_count_params_and_model_bytes():
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20), nn.Linear(20, 3, bias=False))
    n_params = (10 * 20 + 20) + (20 + 20) + 20 * 3
    assert bench.count_params(model) == n_params
    model[0].weight.requires_grad_(False)
    assert bench.count_params(model, trainable_only=True) == n_params - 10 * 20
    # buffers: running_mean (20), running_var (20) float32, num_batches_tracked (int64)
    assert bench.model_bytes(model) == 4 * n_params + 4 * 40 + 8
    assert bench.model_bytes(model.half()) == 2 * n_params + 2 * 40 + 8


def test_count_params_counts_shared_weights_once():
    a = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(a, a)
    assert bench.count_params(model) == 16


# --- time_fn -----------------------------------------------------------------

def test_time_fn_returns_repeat_positive_times_and_calls_warmup_plus_repeat():
    calls = []
    timing = bench.time_fn(lambda x, y=0: calls.append((x, y)), 1, y=2, warmup=4, repeat=7, sync=False)
    assert isinstance(timing, bench.Timing)
    assert len(timing.times) == 7
    assert all(t > 0 for t in timing.times)
    assert calls == [(1, 2)] * 11


def test_time_fn_no_warmup():
    calls = []
    bench.time_fn(lambda: calls.append(1), warmup=0, repeat=3)
    assert len(calls) == 3


def _record_clock_and_sync(monkeypatch, events):
    """Record every synchronize and every clock read, in order."""
    counter = iter(range(1, 10_000))
    real_perf_counter = time.perf_counter

    def fake_clock():
        events.append("clock")
        return float(next(counter))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))
    monkeypatch.setattr(time, "perf_counter", fake_clock)
    return real_perf_counter


def test_time_fn_synchronizes_cuda_around_the_clock(monkeypatch):
    events = []
    _record_clock_and_sync(monkeypatch, events)
    repeat = 5
    timing = bench.time_fn(lambda: events.append("fn"), warmup=2, repeat=repeat)  # sync=None -> CUDA
    # Warm-up, one sync so the warm-up's kernels are not billed, then per timed call:
    # start clock, call, sync (wait for its kernels), stop clock.
    assert events == ["fn", "fn", "sync"] + ["clock", "fn", "sync", "clock"] * repeat
    assert events.count("sync") >= repeat + 1
    assert timing.times == [1.0] * repeat  # each run: the clock advanced by one tick


def test_time_fn_sync_false_never_synchronizes(monkeypatch):
    events = []
    _record_clock_and_sync(monkeypatch, events)
    bench.time_fn(lambda: events.append("fn"), warmup=2, repeat=4, sync=False)
    assert "sync" not in events
    assert events.count("fn") == 6


def test_time_fn_without_cuda_does_not_synchronize(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: synced.append(1))
    bench.time_fn(lambda: None, warmup=1, repeat=3)
    assert synced == []


@pytest.mark.parametrize("kwargs,word", [({"warmup": -1}, "warmup"), ({"repeat": 0}, "repeat"),
                                         ({"repeat": -3}, "repeat")])
def test_time_fn_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        bench.time_fn(lambda: None, **kwargs)


def test_throughput_is_items_over_median(monkeypatch):
    monkeypatch.setattr(bench, "time_fn", lambda fn, *a, **k: bench.Timing([0.5, 0.25, 2.0]))
    assert bench.throughput(lambda: None, items=100) == pytest.approx(100 / 0.5)
    with pytest.raises(ValueError, match="items"):
        bench.throughput(lambda: None, items=0)


def test_throughput_forwards_timing_arguments():
    calls = []
    value = bench.throughput(lambda x: calls.append(x), 3, items=10, warmup=1, repeat=4, sync=False)
    assert value > 0 and calls == [3] * 5


# --- Timing ------------------------------------------------------------------

def test_timing_statistics():
    t = bench.Timing([4.0, 1.0, 3.0, 2.0, 100.0])
    assert t.median == 3.0
    assert t.mean == pytest.approx(22.0)
    assert t.min == 1.0 and t.max == 100.0
    assert t.q25 == 2.0 and t.q75 == 4.0 and t.iqr == 2.0
    assert t.std == pytest.approx(torch.tensor(t.times).std().item())
    assert t.ms == 3000.0
    assert bench.Timing([0.5]).std == 0.0
    with pytest.raises(ValueError):
        bench.Timing([])


@pytest.mark.parametrize("times,text", [
    ([1.234e-3] * 20, "1.234 ms ± 0.000 ms (median ± half the IQR of 20 runs)"),
    ([2.0, 2.0, 4.0], "2.000 s ± 0.500 s (median ± half the IQR of 3 runs)"),
    ([5e-6, 5e-6], "5.000 us ± 0.000 us (median ± half the IQR of 2 runs)"),
    ([4e-8], "40.000 ns ± 0.000 ns (median ± half the IQR of 1 runs)"),
])
def test_timing_str_picks_units(times, text):
    assert str(bench.Timing(times)) == text


# --- peak memory -------------------------------------------------------------

def test_peak_memory_cpu_two_tensors_then_free():
    n = 4 * MiB // 4  # float32 elements in 4 MiB

    def fn():
        a = torch.ones(n)
        b = torch.ones(n)
        del a, b  # both freed: only the peak remembers them

    peak = bench.peak_memory(fn, device="cpu")
    assert abs(peak - 8 * MiB) <= MiB // 2


def test_peak_memory_cpu_sequential_allocations_do_not_add_up():
    n = 4 * MiB // 4

    def fn(k):
        for _ in range(k):
            x = torch.ones(n)  # the previous x is freed when the name is rebound
            del x

    assert abs(bench.peak_memory(fn, 3, device="cpu") - 4 * MiB) <= MiB // 2


def test_peak_memory_cpu_counts_only_new_memory():
    big = torch.ones(16 * MiB // 4)  # allocated before: not counted
    peak = bench.peak_memory(lambda t: t[: MiB // 4].clone(), big, device="cpu")
    assert abs(peak - MiB) <= MiB // 4


def test_peak_memory_rejects_other_devices():
    with pytest.raises(ValueError, match="cuda"):
        bench.peak_memory(lambda: None, device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda():
    n = 4 * MiB // 4

    def fn():
        a = torch.ones(n, device="cuda")
        b = torch.ones(n, device="cuda")
        del a, b

    assert abs(bench.peak_memory(fn, device="cuda") - 8 * MiB) <= MiB // 2


# --- peaks and intensity -----------------------------------------------------

def test_measure_peaks_small_sizes():
    peaks = bench.measure_peaks("cpu", size=128, copy_numel=2**16)
    assert peaks["flops_per_s"] > 0 and peaks["bytes_per_s"] > 0
    assert peaks["device"] == "cpu" and peaks["dtype"] == "float32"
    assert peaks["size"] == 128 and peaks["copy_numel"] == 2**16


def test_arithmetic_intensity():
    n = 1024
    assert bench.arithmetic_intensity(2 * n**3, 12 * n**2) == pytest.approx(n / 6)
    with pytest.raises(ValueError):
        bench.arithmetic_intensity(1.0, 0)


# --- formatting and tables ---------------------------------------------------

@pytest.mark.parametrize("fn,value,text", [
    (bench.fmt_bytes, 1.5 * MiB, "1.5 MiB"),
    (bench.fmt_bytes, 512, "512 B"),
    (bench.fmt_bytes, 2048, "2 KiB"),
    (bench.fmt_bytes, 3 * 2**30, "3 GiB"),
    (bench.fmt_flops, 3.2e9, "3.2 GFLOP"),
    (bench.fmt_flops, 999, "999 FLOP"),
    (bench.fmt_flops, 1.25e12, "1.25 TFLOP"),
    (bench.fmt_time, 1.23e-3, "1.23 ms"),
    (bench.fmt_time, 2.5, "2.5 s"),
    (bench.fmt_time, 4.56e-6, "4.56 us"),
    (bench.fmt_time, 7e-9, "7 ns"),
])
def test_fmt_helpers(fn, value, text):
    assert fn(value) == text


def _table():
    return bench.Table(
        [{"model": "cnn", "acc": 0.93123, "params": 1234567},
         {"model": "vit<b>", "acc": torch.tensor(0.88), "params": 2_100_000, "bytes": 3 * MiB}],
        title="Results",
        formats={"bytes": bench.fmt_bytes},
    )


def test_table_html_contains_values():
    html = _table()._repr_html_()
    assert html.startswith('<table class="ml-table"') and ">Results</caption>" in html
    for text in ("model", "acc", "params", "cnn", "0.931", "1,234,567", "2,100,000", "3 MiB",
                 "0.880", "vit&lt;b&gt;"):
        assert text in html


def test_table_text_and_markdown():
    table = _table()
    text = str(table)
    assert text == repr(table)
    lines = text.splitlines()
    assert lines[0] == "Results"
    assert lines[1].split() == ["model", "acc", "params", "bytes"]
    assert "1,234,567" in text and "3 MiB" in text
    narrow = str(bench.Table([{"n": 5, "s": "a"}, {"n": 12345, "s": "bcd"}])).splitlines()
    assert narrow[2].index("5") == narrow[3].index("12,345") + len("12,345") - 1  # numbers: right
    assert narrow[2].index("a") == narrow[3].index("bcd")  # text: left
    md = table.to_markdown()
    assert "| model | acc | params | bytes |" in md
    assert "|:---|---:|---:|---:|" in md
    assert "| cnn | 0.931 | 1,234,567 |  |" in md


def test_table_add_sort_column_and_formats():
    table = bench.Table([{"a": 3, "b": "x"}], formats={"a": "{:.1f} ms", "c": ".0%"})
    table.add({"a": 1, "b": "y"}).add({"b": "z", "c": 0.25})
    assert table.columns == ["a", "b", "c"]
    assert table.column("a") == [3, 1, None]
    assert table.sort("a").column("b") == ["y", "x", "z"]  # missing values last
    assert table.sort("a", reverse=True).column("a") == [3, 1, None]
    assert "3.0 ms" in str(table) and "25%" in str(table)
    assert len(table) == 3
    with pytest.raises(KeyError, match="nope"):
        table.column("nope")
    with pytest.raises(TypeError):
        table.add(["not", "a", "dict"])


def test_table_explicit_columns_and_number_formats():
    table = bench.Table([{"x": 0.000123456, "y": 12345.678, "z": True, "w": "skip"}], columns=["x", "y", "z"])
    cells = str(table).splitlines()[-1].split()
    assert cells == ["1.23e-04", "12,346", "yes"]


def test_table_html_pads_every_cell_and_aligns_numbers():
    table = bench.Table([{"threads": 1, "time": "61 ms", "ok": False, "acc": 66.75}, {"threads": 2, "acc": 47.55}])
    html = table._repr_html_()
    cells = re.findall(r"<(th|td)( [^>]*)?>", html)
    assert len(cells) == 4 + 2 * 4
    for _, attrs in cells:  # no two cells without separation: every one is padded
        assert "padding:0.3em 0.8em" in attrs
    assert 'class="ml-table"' in html and "tabular-nums" in html
    numeric_tds = re.findall(r'<td style="([^"]*)">(1|2|66.8|47.5)</td>', html)
    assert len(numeric_tds) == 4 and all("text-align:right" in st for st, _ in numeric_tds)
    assert re.search(r'<td style="[^"]*text-align:left[^"]*">61 ms</td>', html)
    assert ">no</td>" in html  # booleans read yes/no


@pytest.mark.parametrize("value,text", [
    (0.0, "0"), (0.001, "0.00100"), (0.0123456, "0.0123"), (12.345, "12.3"), (999_999.4, "999,999"),
    (12_345.678, "12,346"), (0.000999, "9.99e-04"), (2.5e6, "2.50e+06"), (-3.14159, "-3.14"),
    (float("nan"), "nan"), (True, "yes"), (False, "no"), (1_234_567, "1,234,567"), (np.float32(0.5), "0.500"),
])
def test_table_default_number_format(value, text):
    assert bench.Table([{"x": value}]).format_cell("x", bench._plain(value)) == text


def test_table_headers_rename_for_display_only():
    table = bench.Table([{"val_accuracy": 91.234, "n_train": 50000}],
                        headers={"val_accuracy": "accuracy (%)", "n_train": "training images"},
                        formats={"val_accuracy": ".1f"})
    assert str(table).splitlines()[0].split("  ")[0] == "accuracy (%)"
    assert "91.2" in str(table) and "50,000" in str(table)
    assert "<th" in table._repr_html_() and ">training images</th>" in table._repr_html_()
    assert "| accuracy (%) | training images |" in table.to_markdown()
    assert table.column("val_accuracy") == [91.234] and table.columns == ["val_accuracy", "n_train"]


def test_table_transpose_turns_rows_into_columns():
    configs = [{"model": "ResNet-9", "lr": 0.4, "epochs": 10, "label smoothing": True},
               {"model": "ViT", "lr": 0.001, "epochs": 30}]
    table = bench.Table(configs, title="Recipes", headers={"lr": "learning rate"}, formats={"lr": "{:g}"})
    wide = table.transpose("model")
    assert wide.columns == ["model", "ResNet-9", "ViT"] and wide.title == "Recipes"
    assert wide.column("model") == ["learning rate", "epochs", "label smoothing"]
    lines = str(wide).splitlines()
    assert lines[1].split() == ["model", "ResNet-9", "ViT"]
    assert lines[3].split() == ["learning", "rate", "0.4", "0.001"]  # formats of the source column
    assert lines[5].split() == ["label", "smoothing", "yes"]  # missing cell stays empty
    assert "text-align:right" in wide._repr_html_()  # numbers stay right-aligned
    with pytest.raises(ValueError, match="distinct"):
        bench.Table([{"k": "a", "v": 1}, {"k": "a", "v": 2}]).transpose("k")
    with pytest.raises(KeyError):
        table.transpose("nope")


def test_table_hints_when_too_wide(capsys):
    table = bench.Table([{f"c{i}": i for i in range(9)}], title="wide")
    str(table)
    table._repr_html_()
    out = capsys.readouterr().out
    assert out.count("has 9 columns") == 1 and "transpose" in out  # once per table
    str(bench.Table([{f"c{i}": i for i in range(7)}]))
    assert capsys.readouterr().out == ""


IDLE = bench.Load(other_cores=0.02, own_cores=1.0, loadavg=1.1, cores=2, seconds=0.5)
BUSY = bench.Load(other_cores=1.3, own_cores=0.7, loadavg=2.9, cores=2, seconds=0.5)


def test_table_states_the_machine_load_of_its_timings():
    plain = bench.Table([{"a": 1}])
    assert plain.footer() is None and "Machine load" not in plain._repr_html_()
    fast, slow = bench.Timing([1.0e-3, 1.1e-3, 1.2e-3], IDLE), bench.Timing([2.5e-3] * 3, IDLE)
    table = bench.Table([{"impl": "a", "time": fast}, {"impl": "b", "time": slow}])
    assert table.footer() == "Machine load: idle during all 2 timings (other processes: at most 0.02 of 2 cores)"
    assert "1.10 ± 0.05 ms" in str(table) and str(table).endswith(table.footer())
    assert "<tfoot>" in table._repr_html_() and table.footer() in table._repr_html_()
    assert table.sort("time", reverse=True).column("impl") == ["b", "a"]
    busy = bench.Table([{"t": fast}, {"t": bench.Timing([1.0], BUSY)}])
    assert busy.footer() == "Machine load: BUSY during 1 of 2 timings (other processes: up to 1.30 of 2 cores)"
    given = bench.Table([{"ms": 1.0}], load=IDLE)
    assert given.footer() == "Machine load: idle (other processes: 0.02 of 2 cores)"
    assert bench.Table([{"t": bench.Timing([1.0])}]).footer() == "Machine load: not recorded"
    cmp = bench.Comparison(bench.Timing([2.0, 2.0], BUSY), bench.Timing([1.0, 1.0], BUSY), BUSY)
    assert "2.00x (2.00-2.00)" in str(bench.Table([{"speed-up": cmp}], load=[cmp]))
    assert bench.Table([{"a": fast}]).transpose("a").footer().startswith("Machine load: idle")
    with pytest.raises(TypeError, match="Load"):
        bench.Table([], load=3.0)


# --- machine load ------------------------------------------------------------

def _fake_window(monkeypatch, busy_seconds, own_seconds, cores=2, wall=1.0):
    """A load window of ``wall`` seconds in which the machine was busy ``busy_seconds``
    and this process ``own_seconds`` (faked: the past start sample says so)."""
    monkeypatch.setattr(bench, "_read_proc_stat", lambda: (1000.0 + busy_seconds, cores))
    start = (time.monotonic() - wall, 1000.0, cores, time.process_time() - own_seconds)
    return bench._load_since(start, min_seconds=0.0)


def test_load_arithmetic_other_is_busy_minus_own(monkeypatch):
    idle = _fake_window(monkeypatch, busy_seconds=0.52, own_seconds=0.5)
    assert idle.other_cores == pytest.approx(0.02, abs=0.01) and idle.own_cores == pytest.approx(0.5, abs=0.01)
    assert idle.cores == 2 and not idle.busy
    assert str(idle) == f"idle (other processes: {idle.other_cores:.2f} of 2 cores)" and idle.brief == "idle"
    busy = _fake_window(monkeypatch, busy_seconds=1.8, own_seconds=0.5)
    assert busy.other_cores == pytest.approx(1.3, abs=0.01) and busy.busy
    assert str(busy) == "BUSY (other processes: 1.30 of 2 cores)"
    assert busy.brief == "BUSY, other processes 1.30 of 2 cores"
    # threshold: a quarter of a core
    assert not bench.Load(bench.BUSY_CORES, 0, 0, 2).busy and bench.Load(bench.BUSY_CORES + 0.01, 0, 0, 2).busy
    # tick-based accounting can read a little below our own time: never negative
    assert _fake_window(monkeypatch, busy_seconds=0.45, own_seconds=0.5).other_cores == 0.0


def test_load_without_proc_stat_falls_back_to_load_average(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    monkeypatch.setattr(bench, "_read_proc_stat", lambda: (None, 8))
    light = bench._load_since(bench._load_sample(), min_seconds=0.0)
    assert light.other_cores is None and light.loadavg == 3.0 and light.cores == 8 and not light.busy
    assert str(light) == "idle (load average 3.00 on 8 cores; no /proc/stat)"
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 2.0, 1.0))
    assert bench._load_since(bench._load_sample(), min_seconds=0.0).busy
    monkeypatch.delattr(os, "getloadavg")
    unknown = bench._load_since(bench._load_sample(), min_seconds=0.0)
    assert not unknown.busy and str(unknown) == "load unknown" and unknown.brief == "load unknown"


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat (Linux)")


@needs_proc
def test_machine_load_sees_a_busy_loop_in_another_process():
    quiet = bench.machine_load(0.3)
    assert quiet.other_cores >= 0 and quiet.own_cores < 0.3  # we slept
    assert quiet.seconds >= 0.3 and quiet.cores == len(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        loaded = bench.machine_load(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert loaded.other_cores > 0.5 and loaded.busy


@needs_proc
def test_read_proc_stat_counts_this_process():
    before, cores = bench._read_proc_stat()
    end = time.process_time() + 0.1
    while time.process_time() < end:
        pass
    after, _ = bench._read_proc_stat()
    assert cores >= 1 and after - before >= 0.05  # our 0.1 s of CPU, in 10 ms ticks


def test_time_fn_records_the_load_and_warns_when_busy(monkeypatch, capsys):
    timing = bench.time_fn(lambda: None, warmup=0, repeat=3)
    assert isinstance(timing.load, bench.Load) and timing.load.seconds >= bench.MIN_LOAD_WINDOW
    monkeypatch.setattr(bench, "_load_since", lambda start: BUSY)
    with pytest.warns(bench.BusyMachineWarning, match="busy during this timing"):
        timing = bench.time_fn(lambda: None, warmup=0, repeat=3)
    assert timing.load is BUSY
    assert "WARNING: machine busy during this timing: other processes used 1.30 of 2 cores" in capsys.readouterr().out
    assert str(timing).endswith("of 3 runs; BUSY, other processes 1.30 of 2 cores)")
    monkeypatch.setattr(bench, "_load_since", lambda start: IDLE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timing = bench.time_fn(lambda: None, warmup=0, repeat=3)
    assert capsys.readouterr().out == "" and str(timing).endswith("of 3 runs; idle)")


def test_timing_keeps_its_old_constructor_and_new_statistics():
    t = bench.Timing([1.0, 1.0, 1.0, 1.0, 10.0])
    assert t.load is None and t.half_iqr == t.iqr / 2 == 0.0
    assert t.mean_vs_median == pytest.approx(1.8)  # mean 2.8 vs median 1
    x = t.mean_vs_median
    assert bench.verdict(x, x, x, reference=0, above="above", below="below", same="equal to") == "above"
    assert bench.Timing([1.0, 2.0, 3.0, 4.0]).half_iqr == pytest.approx(0.75)
    assert bench.Timing([1.0, 2.0, 3.0], IDLE) == bench.Timing([1.0, 2.0, 3.0], IDLE)


@pytest.mark.parametrize("via_env", [True, False])
def test_dry_run_times_at_most_one_warmup_and_two_repeats(monkeypatch, via_env):
    if via_env:
        monkeypatch.setattr(env, "dry_run", lambda: True, raising=False)
    else:
        monkeypatch.setattr(bench, "_dry_run", lambda: True)
    calls = []
    timing = bench.time_fn(lambda: calls.append(1), warmup=5, repeat=20)
    assert len(calls) == 3 and len(timing.times) == 2 and timing.load is None
    calls.clear()
    comparison = bench.compare(lambda: calls.append("a"), lambda: calls.append("b"), warmup=5, repeat=20)
    assert calls == ["a", "b", "a", "b", "b", "a"] and len(comparison.ratios) == 2


# --- compare and verdicts ----------------------------------------------------

def test_compare_interleaves_and_alternates_who_goes_first():
    calls = []
    comparison = bench.compare(lambda x: calls.append(("A", x)), lambda x: calls.append(("B", x)), 7,
                               warmup=1, repeat=4, sync=False)
    assert [c for c, _ in calls] == ["A", "B"] + ["A", "B", "B", "A"] * 2 and {x for _, x in calls} == {7}
    assert len(comparison.baseline.times) == len(comparison.candidate.times) == 4
    assert comparison.load is comparison.baseline.load is comparison.candidate.load


def test_compare_synchronizes_cuda_around_each_call(monkeypatch):
    events = []
    _record_clock_and_sync(monkeypatch, events)
    bench.compare(lambda: events.append("A"), lambda: events.append("B"), warmup=1, repeat=2)
    timed = lambda f: ["clock", f, "sync", "clock"]  # noqa: E731
    assert events == ["A", "B", "sync"] + timed("A") + timed("B") + timed("B") + timed("A")


def test_comparison_statistics_and_words():
    c = bench.Comparison(bench.Timing([2.0, 4.0, 3.0, 2.0]), bench.Timing([1.0, 2.0, 1.0, 1.0]), IDLE)
    assert c.ratios == [2.0, 2.0, 3.0, 2.0] and c.speedup == 2.0 and c.lo == 2.0 and c.hi == 2.25
    assert c.verdict == "faster" and c.words(faster="quicker") == "quicker"
    assert str(c) == "2.00x (IQR 2.00-2.25x, 4 interleaved rounds; idle)"
    slower = bench.Comparison(bench.Timing([1.0, 1.0]), bench.Timing([2.0, 2.0]))
    assert slower.verdict == "slower" and slower.words(slower="behind") == "behind"
    assert str(slower) == "0.50x (IQR 0.50-0.50x, 2 interleaved rounds)"
    mixed = bench.Comparison(bench.Timing([1.0, 2.0, 1.0, 2.0]), bench.Timing([2.0, 1.0, 2.0, 1.0]))
    assert mixed.lo < 1 < mixed.hi and mixed.verdict == "no measurable difference"
    assert mixed.words(same="within noise") == "within noise"
    with pytest.raises(ValueError, match="round"):
        bench.Comparison(bench.Timing([1.0]), bench.Timing([1.0, 2.0]))


def _sleeper(seconds):
    return lambda: time.sleep(seconds)


def _first_passing(measure, passes, tries=3):
    """A shared machine can stall a whole run: retry a wall-clock check a few times."""
    results = [measure()]
    while not passes(results[-1]) and len(results) < tries:
        results.append(measure())
    return results


def test_compare_on_sleeps_finds_twice_as_fast_and_no_difference():
    twice = _first_passing(lambda: bench.compare(_sleeper(0.004), _sleeper(0.002), warmup=1, repeat=15),
                           lambda c: 1.4 < c.speedup < 2.6 and c.verdict == "faster")
    assert 1.4 < twice[-1].speedup < 2.6 and twice[-1].verdict == "faster", [str(c) for c in twice]
    same = _first_passing(lambda: bench.compare(_sleeper(0.003), _sleeper(0.003), warmup=1, repeat=15),
                          lambda c: c.lo <= 1.0 <= c.hi or abs(c.speedup - 1.0) < 0.05)
    c = same[-1]
    assert c.lo <= 1.0 <= c.hi or abs(c.speedup - 1.0) < 0.05, [str(c) for c in same]


@pytest.mark.parametrize("value,lo,hi,word", [
    (1.5, 1.2, 1.8, "faster"), (0.8, 0.7, 0.9, "slower"), (1.1, 0.95, 1.2, "no measurable difference"),
    (1.0, 1.0, 1.0, "no measurable difference"),  # touching the reference decides nothing
    (1.2, 1.0, 1.3, "no measurable difference"), (0.9, 0.8, 1.0, "no measurable difference"),
    (1.0001, 1.0001, 1.0002, "faster"),
])
def test_verdict_edges(value, lo, hi, word):
    assert bench.verdict(value, lo, hi) == word


def test_verdict_reference_words_and_bad_input():
    assert bench.verdict(0.02, 0.01, 0.03, reference=0, above="above", below="below", same="equal") == "above"
    assert bench.verdict(-0.02, -0.03, -0.01, reference=0, above="above", below="below") == "below"
    with pytest.raises(ValueError, match="lo <= value <= hi"):
        bench.verdict(1.0, 1.2, 1.5)
    with pytest.raises(ValueError, match="lo <= value <= hi"):
        bench.verdict(1.0, 0.9, 0.95)
    with pytest.raises(ValueError, match="NaN"):
        bench.verdict(float("nan"), 0.0, 1.0)


# --- quality and its spread --------------------------------------------------

def test_accuracy_se():
    assert bench.accuracy_se(0.9, 10_000) == pytest.approx(0.003)
    assert bench.accuracy_se(0.687, 2000) == pytest.approx((0.687 * 0.313 / 2000) ** 0.5)
    assert bench.accuracy_se(1.0, 50) == 0.0
    with pytest.raises(ValueError, match="percentage"):
        bench.accuracy_se(68.7, 10_000)
    with pytest.raises(ValueError, match="n"):
        bench.accuracy_se(0.5, 0)


def test_mcnemar_matches_the_hand_computed_binomial_tail():
    # 3 samples only A gets right, 10 only B, 20 both, 7 neither:
    # p = 2 * (C(13,0) + C(13,1) + C(13,2) + C(13,3)) / 2^13 = 2 * 378 / 8192
    a = [True] * 3 + [False] * 10 + [True] * 20 + [False] * 7
    b = [False] * 3 + [True] * 10 + [True] * 20 + [False] * 7
    expected = 2 * 378 / 8192
    assert bench.mcnemar(a, b) == pytest.approx(expected, rel=1e-12)
    assert bench.mcnemar(torch.tensor(b), torch.tensor(a)) == pytest.approx(expected, rel=1e-12)  # symmetric
    assert bench.mcnemar(np.array(a, dtype=int), np.array(b, dtype=np.int64)) == pytest.approx(expected)
    assert bench.mcnemar(a, a) == 1.0  # no discordant pairs
    assert bench.mcnemar([True, False], [False, True]) == 1.0  # capped at 1
    big = torch.zeros(10_000, dtype=torch.bool)
    assert bench.mcnemar(big, torch.arange(10_000) < 600) < 1e-100  # 600 to 0: decisive, no overflow
    with pytest.raises(ValueError, match="same samples"):
        bench.mcnemar([True], [True, False])
    with pytest.raises(ValueError, match="booleans"):
        bench.mcnemar([0, 2], [1, 1])


def test_quality_verdict():
    assert bench.quality_verdict(0.02, 0.005) == "better"
    assert bench.quality_verdict(-0.02, 0.005, worse="lower") == "lower"
    assert bench.quality_verdict(0.01, 0.005) == "no measurable difference"  # diff - 2 se touches 0
    assert bench.quality_verdict(0.01, 0.005, k=1.0) == "better"
    assert bench.quality_verdict(0.0, 0.0) == "no measurable difference"
    with pytest.raises(ValueError, match="se"):
        bench.quality_verdict(0.1, -1.0)


def test_mean_spread():
    assert bench.mean_spread([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert bench.mean_spread([torch.tensor(0.5)]) == (0.5, 0.0, 1)
    mean, std, n = bench.mean_spread(np.array([67.9, 68.7, 68.3]))
    assert n == 3 and mean == pytest.approx(68.3) and std == pytest.approx(0.4)
    with pytest.raises(ValueError):
        bench.mean_spread([])


# --- FLOPs of attention on every device --------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_count_flops_sdpa_on_cpu_is_4_b_h_tq_tk_d(causal):
    B, H, Tq, Tk, D = 2, 3, 5, 7, 8
    q, k, v = torch.randn(B, H, Tq, D), torch.randn(B, H, Tk, D), torch.randn(B, H, Tk, D)
    if causal:
        q = torch.randn(B, H, Tk, D)
        Tq = Tk
    flops = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    assert flops == 4 * B * H * Tq * Tk * D  # causal attention is charged in full, as torch does


def test_attention_formulas_leave_torch_registry_alone_and_match_its_convention():
    from torch.utils import flop_counter as fc

    before = dict(fc.flop_registry)
    extra = bench._attention_formulas()
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in extra
    assert dict(fc.flop_registry) == before and not set(extra) & set(before)
    q, k, v = (torch.Size(s) for s in [(2, 4, 9, 16), (2, 4, 11, 16), (2, 4, 11, 8)])
    assert bench._sdpa_flops(q, k, v) == fc.sdpa_flop_count(q, k, v)
    g = torch.Size((2, 4, 9, 8))
    assert bench._sdpa_backward_flops(g, q, k, v) == fc.sdpa_backward_flop_count(g, q, k, v)
    # backward through the CPU kernel is counted too (a training step's FLOPs)
    qt, kt, vt = (torch.randn(2, 4, 9, 16, requires_grad=True) for _ in range(3))
    counter = fc.FlopCounterMode(display=False, custom_mapping=extra)
    with counter:
        F.scaled_dot_product_attention(qt, kt, vt).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert counts == {"aten._scaled_dot_product_flash_attention_for_cpu": 4 * 2 * 4 * 9 * 9 * 16,
                      "aten._scaled_dot_product_flash_attention_for_cpu_backward": 10 * 2 * 4 * 9 * 9 * 16}


def _explicit_matmul_flops(model, *inputs):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):  # attention as two bmm's: QK^T and PV
        return bench.count_flops(model, *inputs)


def test_count_flops_vit_counts_attention_like_the_explicit_matmuls():
    vit, x = models.ViT().eval(), torch.randn(1, 3, 32, 32)
    flops = bench.count_flops(vit, x)
    assert flops == _explicit_matmul_flops(vit, x)
    T, C = vit.num_patches + 1, 192
    per_op = bench.flop_breakdown(vit, x)
    assert sum(n for op, n in per_op.items() if "attention" in op) == 6 * 4 * T * T * C  # depth 6


def test_count_flops_char_gpt_charges_causal_attention_in_full():
    gpt = models.CharGPT(65, block_size=32, n_layer=2, n_head=4, n_embd=64).eval()
    idx = torch.randint(0, 65, (3, 32))
    assert bench.count_flops(gpt, idx) == _explicit_matmul_flops(gpt, idx)
    per_op = bench.flop_breakdown(gpt, idx)
    attention = sum(n for op, n in per_op.items() if "attention" in op)
    assert attention == 2 * 4 * 3 * 32 * 32 * 64  # n_layer * 4 B T^2 C: the full T x T scores


def test_paired_accuracy_matches_the_hand_computed_counts():
    # 3 only A, 10 only B, 20 both, 7 neither (n = 40): change = 100 * 7 / 40 points,
    # se = 100 * sqrt(13 - 49 / 40) / 40, p = McNemar's
    a = [True] * 3 + [False] * 10 + [True] * 20 + [False] * 7
    b = [False] * 3 + [True] * 10 + [True] * 20 + [False] * 7
    change, se, p = bench.paired_accuracy(torch.tensor(a), torch.tensor(b))
    assert change == pytest.approx(17.5)
    assert se == pytest.approx(100 * math.sqrt(13 - 49 / 40) / 40)
    assert p == bench.mcnemar(a, b)
    back = bench.paired_accuracy(b, a)
    assert back[0] == pytest.approx(-17.5) and back[1] == pytest.approx(se)  # antisymmetric
    assert bench.paired_accuracy(a, a)[:2] == (0.0, 0.0)
    # the paired se is the std of the per-sample differences (0, +1, -1 in points / 100) over sqrt(n)
    d = [int(y) - int(x) for x, y in zip(a, b)]
    mean, std, n = bench.mean_spread(d)
    assert se == pytest.approx(100 * std * math.sqrt((n - 1) / n) / math.sqrt(n))
    with pytest.raises(ValueError, match="same"):
        bench.paired_accuracy([True], [True, False])


def test_paired_difference_is_mean_and_se_of_candidate_minus_reference():
    reference, candidate = [30.0, 31.0, 29.0, 33.0], [30.5, 31.0, 30.0, 33.5]
    mean, se = bench.paired_difference(reference, candidate)
    d = [0.5, 0.0, 1.0, 0.5]
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(statistics.stdev(d) / 2)
    assert bench.paired_difference(torch.tensor(reference), torch.tensor(candidate)) == pytest.approx((mean, se))
    losses = torch.rand(1000, dtype=torch.float64)
    gap, se = bench.paired_difference(losses, losses + 0.5)  # a constant shift: no spread
    assert gap == pytest.approx(0.5) and se == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same N"):
        bench.paired_difference([1.0, 2.0], [1.0])
