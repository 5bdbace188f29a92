"""ml.bench: timing, synchronization, FLOPs, parameters, bytes, peak memory, tables."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from minilib import bench

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
    ([1.234e-3] * 20, "1.234 ms ± 0.000 ms (median ± IQR/2 of 20 runs)"),
    ([2.0, 2.0, 4.0], "2.000 s ± 0.500 s (median ± IQR/2 of 3 runs)"),
    ([5e-6, 5e-6], "5.000 us ± 0.000 us (median ± IQR/2 of 2 runs)"),
    ([4e-8], "40.000 ns ± 0.000 ns (median ± IQR/2 of 1 runs)"),
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
    assert html.startswith("<table>") and "<caption>Results</caption>" in html
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
    assert cells == ["0.000123", "12,346", "True"]
