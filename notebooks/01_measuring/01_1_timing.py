# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1.1 Timing done right: seconds, FLOPs, bytes and the roofline
#
# Every chapter of this book ends with a claim of the form "technique X is N times faster
# at the same accuracy". Such a claim is only as good as the measurement behind it, and
# measuring the speed of deep learning code is surprisingly easy to get wrong: GPUs run
# asynchronously, the first call of an operation pays one-off costs, timings are noisy,
# and the number of threads changes everything on a CPU. {cite}`hoefler2015benchmarking`
# list twelve ways performance results mislead their readers; most of them apply here.
# This notebook builds the measuring tools the rest of the book uses, and the mental model
# that explains the numbers they produce: an operation costs **FLOPs** and **bytes moved**,
# and the **roofline** {cite}`williams2009roofline` tells which of the two limits it.
#
# **Learning objectives.** After this notebook you can
# 1. time a PyTorch function correctly on CPU and GPU (warm-up, synchronization, median and spread);
# 2. compare two implementations in one interleaved run and say "faster" only when the spread allows it;
# 3. count the FLOPs and bytes moved of a linear layer, a convolution and an elementwise op;
# 4. measure your machine's peak FLOP/s and memory bandwidth and draw its roofline;
# 5. decide from arithmetic intensity whether an operation is compute- or memory-bound.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import glob
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import minilib as ml

ml.describe()
dev = ml.device()
# The chip whose numbers these are, and the precision of every fp32 number below.
chip = torch.cuda.get_device_name(dev) if dev.type == "cuda" else ml.env.cpu_model()
fp32 = "fp32 (IEEE, TF32 off)" if dev.type == "cuda" else "fp32"

# %% [markdown]
# ## 1.1.1 A naive timer, and the first call
#
# The obvious way to time a function is to read a clock before and after one call:
#
# ```python
# t0 = time.perf_counter(); f(x); t1 = time.perf_counter()
# ```
#
# `time.perf_counter` is the right clock (monotonic, highest resolution), but a single call
# timed this way is wrong in three ways: the first call is not like the others, a GPU has
# not finished when the call returns, and one number hides the noise.
#
# The first time PyTorch runs an operation it may allocate memory from the operating
# system, pick and cache a kernel (oneDNN on CPU, cuDNN/cuBLAS heuristics on GPU), start a
# thread pool, or compile code (`torch.compile`). None of that happens again. Let's time
# the first 15 calls of a small convolutional network one by one.

# %%
ml.seed_all(0)
width = ml.pick(smoke=8, cpu=16, gpu=64)
net = ml.models.ResNet9(width=width).to(dev).eval()
x = torch.randn(ml.pick(smoke=8, cpu=32, gpu=256), 3, 32, 32, device=dev)

with torch.no_grad():
    first_calls = ml.bench.time_fn(net, x, warmup=0, repeat=15)
per_call_ms = [t * 1e3 for t in first_calls.times]
warm = ml.bench.Timing(first_calls.times[5:] or first_calls.times[-1:])  # (a dry run times 2 calls)

with ml.plot.house_style():
    fig, ax = plt.subplots(figsize=(6.4, 3))
    ax.plot(range(1, len(per_call_ms) + 1), per_call_ms, "o-")
    ax.set(xlabel="call number", ylabel="time per call (ms)", yscale="log",
           title=f"The first calls pay one-off costs ({dev.type}, {fp32})")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))   # 1, 2, 5, 10, 20, ...
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    plt.show()
print(f"first call: {per_call_ms[0]:.2f} ms; calls 6-15: {ml.bench.fmt_time(warm.median)} "
      f"(quartiles {ml.bench.fmt_time(warm.q25)} to {ml.bench.fmt_time(warm.q75)})")

# %% tags=["remove-cell"]
# The first call against the warm calls' median, with the warm calls' quartiles as spread.
first = first_calls.times[0]
ml.glue("warmup_ratio", first / warm.median, ".1f")
ml.glue("warmup_word", ml.bench.verdict(first / warm.median, first / warm.q75, first / warm.q25,
                                        reference=1.0, above="slower than", below="faster than",
                                        same="no different from"))

# %% [markdown]
# Here the first call took {glue:}`warmup_ratio` times the median of calls 6 to 15: counting
# the spread of the warm calls (their quartiles), it was {glue:}`warmup_word` a warm call.
# The fix is to run the function a few times **before** starting the clock (warm-up) and to
# report only the later calls.
#
# ## 1.1.2 The GPU runs asynchronously
#
# On a GPU, a PyTorch call such as `a @ b` does not compute anything on the Python thread:
# it *enqueues* a kernel on a CUDA stream and returns immediately. Python keeps running
# while the GPU works. A clock read right after the call measures only the **launch**,
# a few microseconds, whatever the size of the work. To time the work itself we must wait
# for the GPU to finish: `torch.cuda.synchronize()` before starting the clock (so earlier
# work is not counted) and after the call (so this work is).
#
# `ml.bench.time_fn` does exactly this, and it records how busy the machine was while it
# timed (other processes' CPU use), warning when a number should not be trusted. This is
# the function every measurement in the book goes through:

# %%
ml.show(ml.bench.time_fn)

# %% [markdown]
# Let's time a matrix multiplication with and without synchronization. On a CPU both are
# the same, because CPU operations in PyTorch run synchronously; on a GPU the
# unsynchronized number is the launch time and is meaningless as a measure of the work.

# %%
n = ml.pick(smoke=256, cpu=1024, gpu=8192)
a = torch.randn(n, n, device=dev)
b = torch.randn(n, n, device=dev)
synced = ml.bench.time_fn(torch.mm, a, b, warmup=3, repeat=10)
unsynced = ml.bench.time_fn(torch.mm, a, b, warmup=3, repeat=10, sync=False)
if dev.type == "cuda":
    torch.cuda.synchronize()  # let the queued unsynchronized work finish
ml.bench.Table([{"timing": "synchronized (correct)", "time per call": synced},
                {"timing": "not synchronized", "time per call": unsynced}],
               title=f"{n}x{n} matmul on {dev.type}, {fp32}: median ± half the IQR of 10 calls")

# %% tags=["remove-cell"]
# Ratio of the medians; its spread from the quartiles of both timings.
ratio = synced.median / unsynced.median
ml.glue("sync_words", ml.bench.verdict(
    ratio, synced.q25 / unsynced.q75, synced.q75 / unsynced.q25, reference=1.0,
    above=(f"{ratio:.1f} times shorter than the synchronized one: it timed the launch, not the work"
           if dev.type == "cuda" else
           f"{ratio:.2f} times shorter than the synchronized one, a gap between two runs of the same "
           "synchronous work (a CPU has nothing to synchronize): how far apart two timings of one "
           "thing can land"),
    below="longer than the synchronized one, which only noise can explain",
    same="the same as the synchronized one within their spread, as it should be where operations run synchronously"))
ml.glue("sync_device", dev.type)

# %% [markdown]
# On this machine ({glue:}`sync_device`) the unsynchronized timing is {glue:}`sync_words`.
#
# ## 1.1.3 One number hides the noise
#
# Run the same function many times and the times differ: other processes, interrupts,
# frequency scaling, cache state and the memory allocator all add noise, and the noise is
# one-sided (nothing makes a call *faster* than the hardware allows) with a long tail. The
# **mean** is pulled up by the tail; the **minimum** is an optimistic best case; the
# **median** is a robust typical value. We report the median and, as spread, half the
# interquartile range, as {cite}`hoefler2015benchmarking` recommend for skewed data.

# %%
small = torch.randn(ml.pick(smoke=64, cpu=256, gpu=1024), 256, device=dev)
w = torch.randn(256, 256, device=dev)
noise = ml.bench.time_fn(torch.mm, small, w, warmup=10, repeat=ml.pick(smoke=100, cpu=400, gpu=400))
us = [t * 1e6 for t in noise.times]

with ml.plot.house_style():
    fig, ax = plt.subplots(figsize=(6.4, 3))
    ax.hist(us, bins=50, color="0.6")
    for value, name, style in [(noise.median * 1e6, "median", "-"), (noise.mean * 1e6, "mean", "--"),
                               (noise.min * 1e6, "min", ":")]:
        ax.axvline(value, color="C0", linestyle=style, label=f"{name} {value:.1f} µs")
    ax.set(xlabel="time per call (µs)", ylabel="calls", title=f"{len(us)} timings of one small matmul")
    ax.legend()
    plt.show()
print(noise)

# What one slow call does: add a single call 10 times as slow as the median.
with_outlier = ml.bench.Timing(noise.times + [10 * noise.median])
mean_shift = 100 * (with_outlier.mean / noise.mean - 1)
median_shift = 100 * (with_outlier.median / noise.median - 1)
print(f"one extra call at 10x the median moves the mean by {mean_shift:+.1f}% "
      f"and the median by {median_shift:+.1f}%")

# %% tags=["remove-cell"]
mvm = round(100 * noise.mean_vs_median, 1)
word = ml.bench.verdict(mvm, mvm, mvm, reference=0, above="above", below="below", same="equal to")
ml.glue("mean_vs_median", f"{abs(mvm):.1f}% {word}" if word != "equal to" else "equal to")
ml.glue("mean_vs_median_why", {
    "above": "The slow tail pulls the mean up; the median, the middle of the sorted times, does not follow it.",
    "below": "Here the outliers were fast calls, so the mean sits below the median; either way the median is "
             "the robust summary.",
    "equal to": "These times have no tail to speak of, yet a single slow call would move the mean and not the median.",
}[word])
ml.glue("outlier_mean_shift", mean_shift, "+.1f")
ml.glue("outlier_median_shift", median_shift, "+.1f")
ml.glue("noise_n", len(noise.times))

# %% [markdown]
# In this run the mean is {glue:}`mean_vs_median` the median. {glue:}`mean_vs_median_why`
# Adding one call 10 times as slow as the median to the {glue:}`noise_n` timings moves the
# mean by {glue:}`outlier_mean_shift`% and the median by {glue:}`outlier_median_shift`%.
#
# The spread decides what a comparison may conclude. `ml.bench.compare(baseline, candidate)`
# times the two **interleaved**, A B, B A, A B, ..., so that a slow drift of the machine (a
# background job, the clock boosting down as the chip warms) hits both alike, and takes the
# ratio $t_\text{baseline} / t_\text{candidate}$ of every round: the candidate's speed-up. It
# reports the median ratio with its interquartile range, and its verdict is "faster" only if
# the whole range is above 1, "slower" only if it is below, and "no measurable difference"
# otherwise. The prose of this book quotes those verdicts; it never types them.

# %%
ml.show(ml.bench.compare)

# %% [markdown]
# The simplest test of a comparison is to compare a function with itself (an "A/A test"):

# %%
aa = ml.bench.compare(lambda: torch.mm(small, w), lambda: torch.mm(small, w), repeat=ml.pick(smoke=20, cpu=50, gpu=50))
print(f"A/A speed-up: {aa}; verdict: {aa.verdict}")

# %% tags=["remove-cell"]
ml.glue("aa_verdict", aa.verdict)

# %% [markdown]
# Verdict of the A/A test: {glue:}`aa_verdict`. Were it "faster" or "slower", the machine
# would be too noisy for any comparison at that scale of difference.
#
# ## 1.1.4 CPU threads
#
# On a CPU, PyTorch splits large operations across a pool of threads
# (`torch.get_num_threads()`, by default one per physical core). We compare one thread
# against more, interleaved, on a large matmul and on two additions: one of 4,096 numbers
# and one of 65,536. Each timed call runs the operation several times, so that setting the
# thread count costs nothing measurable. Always report the number of threads with a CPU
# timing (the banner above does).

# %%
threads_before = torch.get_num_threads()
cores = os.cpu_count() or 1
n_big = ml.pick(smoke=256, cpu=1024, gpu=1024)
big, tiny, mid = torch.randn(n_big, n_big), torch.randn(64, 64), torch.randn(2**16)
thread_ops = [(f"matmul {n_big}x{n_big}", lambda: torch.mm(big, big), 2),
              ("add, 4,096 numbers", lambda: torch.add(tiny, tiny), 200),
              ("add, 65,536 numbers", lambda: torch.add(mid, mid), 50)]


def with_threads(k, fn, inner):
    """One timed call: set k threads, run fn inner times."""
    def run():
        torch.set_num_threads(k)
        for _ in range(inner):
            fn()
    return run


def per_call(timing, inner):
    return ml.bench.Timing([t / inner for t in timing.times], timing.load)


thread_rows, thread_cmp = [], {}
for name, fn, inner in thread_ops:
    for k in ml.trim(sorted({2, cores} - {1})):
        c = ml.bench.compare(with_threads(1, fn, inner), with_threads(k, fn, inner),
                             repeat=ml.pick(smoke=5, cpu=15, gpu=15))
        thread_cmp[name, k] = c
        thread_rows.append({"operation": name, "threads": k, "1 thread": per_call(c.baseline, inner),
                            "k threads": per_call(c.candidate, inner), "speed-up": c})
torch.set_num_threads(threads_before)
ml.bench.Table(thread_rows, headers={"threads": "k threads", "1 thread": "time per call, 1 thread",
                                     "k threads": "time per call, k threads",
                                     "speed-up": "speed-up of k threads (IQR)"},
               title="CPU tensors: 1 thread against k threads, interleaved")

# %% tags=["remove-cell"]
def speed_phrase(c):
    return c.words(faster=f"{c.speedup:.2f}x faster", slower=f"{1 / c.speedup:.2f}x slower",
                   same=f"at the same speed within the noise ({c.speedup:.2f}x, IQR {c.lo:.2f}-{c.hi:.2f})")


k_max = max((k for _, k in thread_cmp), default=1)
ml.glue("thr_k", k_max)
for key, (name, _, _) in zip(("thr_mm", "thr_tiny", "thr_mid"), thread_ops):
    c = thread_cmp.get((name, k_max))
    ml.glue(key, speed_phrase(c) if c is not None else "not measured (one core)")

# %% [markdown]
# With {glue:}`thr_k` threads against one, the matmul ran {glue:}`thr_mm`; the addition
# of 4,096 numbers ran {glue:}`thr_tiny`; the addition of 65,536 numbers ran
# {glue:}`thr_mid`. Whatever the thread setting, PyTorch runs an elementwise operation on
# fewer than 32,768 elements (its "grain size") on one thread, so the small addition
# cannot gain; above that size it wakes the other threads and waits for them, which costs
# microseconds, as much as the work itself for a small operation. A large matmul has work
# enough for every core.
#
# ## 1.1.5 What an operation costs: FLOPs and bytes
#
# Two numbers describe the work of an operation independently of the machine.
#
# **FLOPs**, floating-point operations. A multiply-add counts as 2. A linear layer
# $Y = XW^\top$ with $X \in \R^{B\times n}$ and $W \in \R^{m\times n}$ computes $Bm$ dot
# products of length $n$:
#
# $$\text{FLOPs}_\text{linear} = 2\,B\,n\,m .$$
#
# A $k\times k$ convolution from $C_\text{in}$ to $C_\text{out}$ channels producing an
# $H\times W$ output does one such dot product of length $C_\text{in}k^2$ per output value:
#
# $$\text{FLOPs}_\text{conv} = 2\,B\,C_\text{out}\,H\,W\,C_\text{in}\,k^2 .$$
#
# **Bytes moved** between main memory and the chip: at least every input read once and
# every output written once. For $Y = XW^\top$ in float32 (4 bytes) that is
# $4(Bn + nm + Bm)$ bytes; for an elementwise $z = x + y$ on $N$ numbers it is $12N$ bytes
# for only $N$ FLOPs.
#
# `ml.bench.count_flops` counts FLOPs by running the model under PyTorch's
# `FlopCounterMode`, which adds up the formula above for every matmul, convolution and
# attention call. Let's check it against the formulas.

# %% tags=["nbval-check-output"]
B, n_in, n_out, c_in, c_out, k, hw = 32, 512, 256, 16, 32, 3, 28
linear = nn.Linear(n_in, n_out)
conv = nn.Conv2d(c_in, c_out, k, padding=1)
checks = [
    ("linear", ml.bench.count_flops(linear, torch.randn(B, n_in)), 2 * B * n_in * n_out),
    ("conv 3x3", ml.bench.count_flops(conv, torch.randn(B, c_in, hw, hw)), 2 * B * c_out * hw * hw * c_in * k * k),
]
for name, counted, formula in checks:
    assert counted == formula
    print(f"{name:9s} counted {counted:>12,d}  formula {formula:>12,d}  equal: {counted == formula}")

# %% [markdown]
# (Bias additions and activations are not counted: they are a negligible share of the FLOPs
# but, as we will see, not of the time.)
#
# The ratio of the two is the **arithmetic intensity**, FLOPs per byte:
#
# $$I = \frac{\text{FLOPs}}{\text{bytes moved}}, \qquad I_\text{add} = \tfrac{1}{12},
# \qquad I_{\text{matmul } n\times n} = \frac{2n^3}{3\cdot 4n^2} = \frac{n}{6}.$$
#
# An elementwise add does one FLOP per 12 bytes however large it is; a square matmul does
# more work per byte the larger it gets. That difference decides how fast each can run.
#
# ## 1.1.6 The roofline of this machine
#
# A chip has a peak compute rate $P$ (FLOP/s) and a peak memory bandwidth $\beta$
# (bytes/s). An operation with intensity $I$ needs at least $\text{FLOPs}/P$ seconds to
# compute and $\text{bytes}/\beta$ seconds to move its data, so its attainable rate is
#
# $$\text{FLOP/s} \le \min(P,\; I \cdot \beta).$$
#
# Plotted on log-log axes this is a slanted "memory roof" meeting a flat "compute roof" at
# the **ridge point** $I^* = P/\beta$ {cite}`williams2009roofline`. Operations left of the
# ridge are memory-bound: a faster ALU would not help them, moving fewer bytes would.
#
# We measure $P$ with a large matmul. The bandwidth depends on where the data lives (a
# working set that fits in a cache is served faster than one in main memory) and on the
# kernel: the mix of reads and writes matters to the memory system, and on a CPU a store
# may first read the cache line it writes ("write-allocate"), traffic that no byte count
# of ours includes. So, as the STREAM benchmark does {cite}`mccalpin1995stream`, we time
# three streaming kernels that move **the same bytes at the same working-set size**, well
# beyond the last-level cache: a copy, an add $x + y$ and a multiply-add $xy + z$
# (`torch.addcmul`), each writing into a preallocated output so that we time the traffic
# and not the allocator. The add and the multiply-add are timed in alternation with the
# copy (`ml.bench.compare`), and the memory roof $\beta$ is the best of the three.

# %%
ml.show(ml.bench.measure_peaks)


# %%
def last_level_cache():
    """Bytes of the largest cache: the GPU's L2, or the CPU's last level (None if unknown)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).L2_cache_size
    sizes = []
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        text = open(os.path.join(d, "size")).read().strip()
        sizes.append(int(text[:-1]) * {"K": 2**10, "M": 2**20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes) if sizes else None


N = ml.pick(smoke=2**20, cpu=2**24, gpu=2**26)   # numbers in each operand of the add
ws = 12 * N                                       # bytes each streaming kernel moves
peaks = ml.bench.measure_peaks(dev, copy_numel=ws // 8)
P = peaks["flops_per_s"]
llc = last_level_cache()

src = torch.randn(ws // 8, device=dev)            # copy: read 4 + write 4 bytes per number
dst = torch.empty_like(src)
copy = lambda: dst.copy_(src)  # noqa: E731
u, v, out = (torch.randn(N, device=dev) for _ in range(3))   # add: read 8 + write 4
add_cmp = ml.bench.compare(copy, lambda: torch.add(u, v, out=out), repeat=ml.pick(smoke=5, cpu=15, gpu=30))
del u, v, out
m = 3 * N // 4                                    # multiply-add: read 12 + write 4, the same ws bytes
s3, u3, v3, out3 = (torch.randn(m, device=dev) for _ in range(4))
triad_cmp = ml.bench.compare(copy, lambda: torch.addcmul(s3, u3, v3, out=out3),
                             repeat=ml.pick(smoke=5, cpu=15, gpu=30))
del s3, u3, v3, out3, src, dst

# Bandwidth of each kernel, in units of the copy's (interleaved ratios), and the roof: the best.
copy_bw = ws / ml.bench.Timing(add_cmp.baseline.times + triad_cmp.baseline.times).median
best = max(1.0, add_cmp.speedup, triad_cmp.speedup)
beta = best * copy_bw
ridge = P / beta
stream = {"copy": (1.0, 1.0, 1.0), "add x+y": (add_cmp.speedup, add_cmp.lo, add_cmp.hi),
          "x*y+z": (triad_cmp.speedup, triad_cmp.lo, triad_cmp.hi)}
roof_kernel = max(stream, key=lambda k: stream[k][0])
ml.bench.Table([{"peak compute (GFLOP/s)": P / 1e9, "memory roof (GB/s)": beta / 1e9,
                 "ridge point (FLOP/byte)": ridge, "matmul size": f"{peaks['size']}x{peaks['size']}",
                 "streaming working set": ml.bench.fmt_bytes(ws),
                 "largest cache": ml.bench.fmt_bytes(llc) if llc else "unknown"}],
               title=f"measured peaks of {chip} ({fp32}); memory roof: the {roof_kernel}",
               formats={"peak compute (GFLOP/s)": ".1f", "memory roof (GB/s)": ".1f",
                        "ridge point (FLOP/byte)": ".1f"}, load=[add_cmp, triad_cmp])

# %% [markdown]
# Now we place operations on the roofline: the two elementwise kernels at the bandwidth
# each reached, and matmuls of growing size and a convolution, each timed on its own
# (median and quartiles) and set against $\min(P, I\beta)$.

# %%
def pct(fraction):
    """A fraction as a percentage with at least two significant digits: 97%, 3.1%, 0.47%."""
    return f"{100 * fraction:.0f}%" if fraction >= 0.1 else f"{100 * fraction:.2g}%"


def timed_point(name, fn, args, flops, nbytes):
    """An op timed on its own, against min(P, I beta)."""
    t = ml.bench.time_fn(fn, *args, repeat=ml.pick(smoke=5, cpu=10, gpu=20))
    intensity = flops / nbytes
    roof = min(P, intensity * beta)
    return {"name": name, "working set": nbytes, "intensity": intensity, "flops_per_s": flops / t.median,
            "frac": flops / t.median / roof, "lo": flops / t.q75 / roof, "hi": flops / t.q25 / roof}


points = []
for name, flops in (("add x+y", N), ("x*y+z", 2 * m)):   # fraction of the roof: bandwidth / best
    frac, lo, hi = (r / best for r in stream[name])
    intensity = flops / ws
    points.append({"name": name, "working set": ws, "intensity": intensity,
                   "flops_per_s": frac * intensity * beta, "frac": frac, "lo": lo, "hi": hi})
for size in ml.trim(ml.pick(smoke=[32, 128, 256], cpu=[32, 128, 512, 1024], gpu=[64, 256, 1024, 4096, 8192])):
    p, q = torch.randn(size, size, device=dev), torch.randn(size, size, device=dev)
    points.append(timed_point(f"matmul {size}", torch.mm, (p, q), 2 * size**3, 12 * size**2))
conv_x = torch.randn(ml.pick(smoke=8, cpu=32, gpu=256), 64, 32, 32, device=dev)
conv_l = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(dev)
with torch.no_grad():
    conv_flops = ml.bench.count_flops(conv_l, conv_x)
    conv_bytes = 4 * (2 * conv_x.numel() + conv_l.weight.numel())
    points.append(timed_point("conv 3x3, 64 channels", conv_l, (conv_x,), conv_flops, conv_bytes))
for p in points:
    p["verdict"] = ml.bench.verdict(p["frac"], min(p["lo"], p["frac"]), max(p["hi"], p["frac"]),
                                    reference=1.0, above="above", below="below", same="at")

ml.plot.roofline(P, beta, points, labels="legend", title=f"Roofline of {chip} ({fp32})")
plt.show()
ml.bench.Table([{"operation": p["name"], "working set": ml.bench.fmt_bytes(p["working set"]),
                 "intensity (FLOP/byte)": p["intensity"], "achieved (GFLOP/s)": p["flops_per_s"] / 1e9,
                 "% of its roof (IQR)": f"{pct(p['frac'])} ({pct(p['lo'])}-{pct(p['hi'])})"} for p in points],
               title=f"Operations on the roofline ({dev.type}, {fp32})",
               formats={"intensity (FLOP/byte)": ".3g", "achieved (GFLOP/s)": ".3g"})

# %% tags=["remove-cell"]
ml.glue("peak_gflops", P / 1e9, ".1f")
ml.glue("peak_bw", beta / 1e9, ".1f")
ml.glue("ridge", ridge, ".1f")
ml.glue("roof_ws", ml.bench.fmt_bytes(ws))
ml.glue("chip", chip)
ml.glue("roof_kernel", roof_kernel)
others = [k for k in stream if k != roof_kernel]
rel = {k: tuple(r / best for r in stream[k]) for k in others}   # (median, lo, hi) as fractions of the roof
ml.glue("stream_others", " and ".join(f"the {k} {pct(r[0])} (IQR {pct(r[1])}-{pct(r[2])})" for k, r in rel.items()))
slower = [k for k, r in rel.items() if r[2] < 1.0]
ml.glue("stream_why", "the same bytes, moved in a different mix of reads and writes, took measurably different "
        "times" if slower else "here the three are within the noise of one another")
comp = points[2:]
above_comp = [p for p in comp if p["verdict"] == "above"]
why_comp = [] if above_comp else ["No matmul and not the convolution sits above the roof."]
for p in above_comp:
    if p["intensity"] < ridge and llc and p["working set"] < llc:
        why_comp.append(f"{p['name']} sits above the memory roof, but its {ml.bench.fmt_bytes(p['working set'])} "
                        f"fit in the {ml.bench.fmt_bytes(llc)} last-level cache: repeated calls read them from "
                        "cache, not from memory, so the memory roof does not bound it.")
    elif p["intensity"] >= ridge and p["name"].startswith("matmul"):
        why_comp.append(f"{p['name']} sits above the compute roof: that roof is the best of a few "
                        f"{peaks['size']}x{peaks['size']} matmuls, not the chip's limit, and this size ran "
                        f"faster ({p['flops_per_s'] / 1e9:.3g} GFLOP/s): read the peak as at least that.")
    elif p["intensity"] >= ridge:
        why_comp.append(f"{p['name']} sits above the compute roof; a convolution library may use an algorithm "
                        "with fewer multiplications than the direct formula counts (Winograd), which these "
                        "numbers cannot confirm.")
    else:
        why_comp.append(f"{p['name']} sits above the memory roof although it does not fit in cache; these "
                        "numbers do not explain it.")
ml.glue("comp_why", " ".join(why_comp))
under_roof = sum(p["verdict"] != "above" for p in comp)
ml.glue("under_roof", f"{under_roof} of {len(comp)}")

# %% [markdown]
# Read the plot from left to right. The elementwise operations sit far left of the ridge
# point ({glue:}`ridge` FLOP/byte here): they are memory-bound, and their FLOP/s is tiny
# compared to the peak of {glue:}`peak_gflops` GFLOP/s even when they run at full
# bandwidth. Of the three streaming kernels on {glue:}`roof_ws`, the {glue:}`roof_kernel`
# was the fastest and sets the memory roof; against it, {glue:}`stream_others`:
# {glue:}`stream_why`. Matmuls move right as they
# grow and climb towards the compute roof. {glue:}`comp_why` In all, {glue:}`under_roof`
# matmuls and convolutions lie at or under the roof (the elementwise kernels are under it
# by construction: the best of them defines it).
#
# The roofline models one level of memory; each cache level adds a higher roof of its
# own. It is the single most useful picture in efficient deep learning: it tells you
# whether to reduce FLOPs (quantized matmuls, pruning, sparsity) or bytes (fusion, lower
# precision, recomputation) {cite}`ivanov2021data`. Every later chapter comes back to it.
#
# The compute roof also depends on the number format. The same matmul in bfloat16
# (chapter 5) runs on different instructions, which this chip may or may not have:

# %%
def native_bf16():
    """Whether this chip has bf16 matrix instructions (and which)."""
    if dev.type == "cuda":
        return "yes (tensor cores)" if torch.cuda.get_device_capability(dev) >= (8, 0) else "no"
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    found = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return f"yes ({', '.join(found)})" if found else "no"


nb = ml.pick(smoke=256, cpu=1024, gpu=8192)
a32, b32 = torch.randn(nb, nb, device=dev), torch.randn(nb, nb, device=dev)
a16, b16 = a32.bfloat16(), b32.bfloat16()
bf16_cmp = ml.bench.compare(lambda: torch.mm(a32, b32), lambda: torch.mm(a16, b16),
                            repeat=ml.pick(smoke=3, cpu=10, gpu=20))
bf16_native = native_bf16()
ml.bench.Table([{"chip": chip, "native bf16 matmul": bf16_native,
                 "fp32 matmul": bf16_cmp.baseline, "bf16 matmul": bf16_cmp.candidate,
                 "bf16 speed-up (IQR)": bf16_cmp}],
               title=f"{nb}x{nb} matmul, {fp32} against bfloat16, interleaved")

# %% tags=["remove-cell"]
ml.glue("bf16_words", bf16_cmp.words(faster=f"{bf16_cmp.speedup:.1f}x faster than",
                                     slower=f"{1 / bf16_cmp.speedup:.1f}x slower than",
                                     same="no faster or slower than"))
ml.glue("bf16_native", bf16_native)

# %% [markdown]
# On {glue:}`chip` (native bf16 matrix instructions: {glue:}`bf16_native`), the bfloat16
# matmul ran {glue:}`bf16_words` the fp32 one. This result depends on the hardware: CPUs
# with bf16 dot-product instructions (AVX-512 BF16 on recent AMD and Intel server CPUs, AMX
# on Intel's since Sapphire Rapids) run bf16 matmuls natively, CPUs without them convert to
# fp32 and lose time doing so, and GPUs with tensor cores run bf16 many times faster than
# IEEE fp32. A roof is a property of the chip *and* of the number format.
#
# ## 1.1.7 Measuring a whole model
#
# The same tools measure a model. Besides time we report what it costs in memory and
# arithmetic, and the **model FLOPs utilization** (MFU), the fraction of the measured peak
# that the model's FLOPs achieve {cite}`chowdhery2023palm`. Peak activation memory comes
# from `ml.bench.peak_memory` (the CUDA allocator's counters, or the profiler's allocation
# log on a CPU).

# %%
batch = ml.pick(smoke=16, cpu=128, gpu=1024)
x = torch.randn(batch, 3, 32, 32, device=dev)
with torch.no_grad():
    t = ml.bench.time_fn(net, x, warmup=3, repeat=ml.pick(smoke=5, cpu=10, gpu=30))
    flops = ml.bench.count_flops(net, x)
    peak = ml.bench.peak_memory(net, x)
mfu = flops / t.median / P
ml.bench.Table([{
    "model": f"ResNet-9 (width {width})",
    "parameters": ml.bench.count_params(net),
    "weights": ml.bench.fmt_bytes(ml.bench.model_bytes(net)),
    "FLOP/image": ml.bench.fmt_flops(flops / batch),
    "batch time": t,
    "images/s": f"{batch / t.median:,.0f}",
    "peak activations": ml.bench.fmt_bytes(peak),
    "MFU (% of the matmul peak)": f"{100 * mfu:.0f}%",
}]).transpose("model")

# %% tags=["remove-cell"]
ml.glue("mfu", 100 * mfu, ".0f")
ml.glue("mfu_batch", batch)

# %% [markdown]
# In inference at batch {glue:}`mfu_batch`, in fp32, the model runs at {glue:}`mfu`% of the
# matmul peak. The gap is made of everything the FLOP count ignores: memory-bound
# normalization, activations and pooling between the convolutions, and convolutions too
# small to fill the machine. Closing that gap without losing accuracy is what the rest of
# the book is about.
#
# ## 1.1.8 Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`williams2009roofline` | attainable FLOP/s is bounded by $\min(P, I\beta)$ | {glue:}`under_roof` matmuls and convolutions at or under the roof, its bandwidth the best of three streaming kernels at one working-set size (section 1.1.6) |
# | {cite}`hoefler2015benchmarking` | timings are skewed; report medians and spread, not a single run or only the mean | the mean was {glue:}`mean_vs_median` the median; one call at 10x the median moved the mean {glue:}`outlier_mean_shift`% and the median {glue:}`outlier_median_shift`% (section 1.1.3) |
# | (folklore) | the first call is slower | the first call took {glue:}`warmup_ratio` times a warm call: {glue:}`warmup_word` it (section 1.1.1) |

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: a single call against a median (measure, easy)
# Time `torch.mm` on two $2048\times2048$ matrices with `warmup=0, repeat=1`, ten times in
# a row, then take the `ml.bench.time_fn` median with its defaults three times. How much do
# the ten single calls vary, and how much the three medians?

# %% tags=["solution", "hide-cell"]
# Solution 1
n1 = ml.pick(smoke=256, cpu=2048, gpu=2048)
a1, b1 = torch.randn(n1, n1, device=dev), torch.randn(n1, n1, device=dev)
singles = [ml.bench.time_fn(torch.mm, a1, b1, warmup=0, repeat=1).median for _ in range(ml.trim(10))]
medians = [ml.bench.time_fn(torch.mm, a1, b1).median for _ in range(ml.trim(3))]
spread_single, spread_median = max(singles) / min(singles), max(medians) / min(medians)
print("single calls (ms):", ", ".join(f"{1e3 * s:.2f}" for s in singles), f"-> max/min {spread_single:.2f}")
print("time_fn medians (ms):", ", ".join(f"{1e3 * s:.2f}" for s in medians), f"-> max/min {spread_median:.2f}")
print("the medians vary", "less" if spread_median < spread_single else "no less", "than the single calls")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The cell prints both spreads as the ratio of the largest to the smallest value. A single
# call carries all the noise of section 1.1.3 (and, for the first one at a new size, the
# one-off costs of section 1.1.1); a median of 20 warmed calls averages the noise away and
# ignores the tail, so three medians agree far more closely than ten single calls. On a
# busy machine both spreads grow, and `time_fn` warns.
# :::

# %% [markdown]
# ### Exercise 2: the batch size that crosses the ridge (explain, medium)
# Compute the arithmetic intensity of a linear layer with a $B\times n$ input and an
# $n\times n$ weight as a function of $B$. For which batch size does it cross this
# machine's ridge point at $n = 4096$? What does that say about inference at batch size 1?

# %% tags=["solution", "hide-cell"]
# Solution 2
n2 = 4096
intensity = lambda B: 2 * B * n2**2 / (4 * (2 * B * n2 + n2**2))  # noqa: E731
B_star = 2 * ridge * n2 / (n2 - 4 * ridge) if n2 > 4 * ridge else None
print(f"ridge {ridge:.1f} FLOP/byte; I(B=1) = {intensity(1):.2f} FLOP/byte; "
      + (f"I(B) = ridge at B = {B_star:.1f}" if B_star else f"never: I(B) < n/4 = {n2 / 4:.0f} for every B"))

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# FLOPs $2Bn^2$; bytes $4(Bn + n^2 + Bn)$ (input, weight, output), so
# $I(B) = \frac{2Bn^2}{4(2Bn + n^2)} = \frac{Bn}{2(2B + n)}$. For $B \ll n$ this is about
# $B/2$, and it never exceeds $n/4$. Setting $I(B) = I^*$ gives
# $B^* = \frac{2I^*n}{n - 4I^*}$, printed above for this machine's ridge. At $B = 1$ the
# intensity is about $0.5$ FLOP/byte, far left of any ridge point: batch-1 inference
# (token-by-token generation, chapter 3) is memory-bound, its speed set by the bytes of the
# weights, which is why weight-only quantization (chapter 5) speeds it up.
# :::

# %% [markdown]
# ### Exercise 3: GELU on the roofline (measure, medium)
# Time `F.gelu` on as many numbers as the copy of section 1.1.6 (write into a preallocated
# output with `torch._C._nn.gelu(x, out=y)`), interleaved with that copy, which moves the
# same bytes. What fraction of the memory roof does it reach? Would a cheaper GELU formula make it faster? Check with
# `approximate="tanh"`.

# %% tags=["solution", "hide-cell"]
# Solution 3
src = torch.randn(ws // 8, device=dev)
dst, y = torch.empty_like(src), torch.empty_like(src)  # gelu reads 4 and writes 4 bytes: as the copy
copy = lambda: dst.copy_(src)  # noqa: E731
gelu = lambda: torch._C._nn.gelu(src, out=y)  # noqa: E731
gelu_tanh = lambda: torch._C._nn.gelu(src, approximate="tanh", out=y)  # noqa: E731
rep = ml.pick(smoke=5, cpu=15, gpu=30)
for name, fn in (("exact GELU", gelu), ("tanh GELU", gelu_tanh)):
    c = ml.bench.compare(copy, fn, repeat=rep)
    print(f"{name}: {100 * c.speedup:.0f}% of the copy's bandwidth (IQR {100 * c.lo:.0f}-{100 * c.hi:.0f}%), "
          f"{100 * c.speedup / best:.0f}% of the memory roof")
c = ml.bench.compare(gelu, gelu_tanh, repeat=rep)
print(f"tanh GELU against exact GELU: {c.speedup:.2f}x (IQR {c.lo:.2f}-{c.hi:.2f}): {c.verdict}")
del src, dst, y

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# GELU reads and writes one number per element, the same bytes as the copy, but does
# about 10-20 FLOPs per element (an erf or a tanh), so its intensity is 1-3 FLOP/byte:
# still left of the ridge on most machines. If the printed fraction of the roof is close
# to 100%, GELU is memory-bound here: a cheaper formula cannot make it faster, and fusing
# GELU into the matmul before it, so that its input never goes back to memory, is what
# would help. If the fraction is well below 100% (few cores against a fast memory), GELU
# is limited by its arithmetic on this machine, and a formula that is cheaper *here* would
# help. Whether the tanh formula is cheaper depends on how PyTorch vectorizes each on this
# chip: the last line measures it, and its verdict is the answer for this machine.
# :::

# %% [markdown]
# ### Exercise 4: FLOPs of a grouped convolution (implement, easy)
# Write `conv_flops(B, c_in, c_out, H, W, k, groups)` for a convolution whose channels are
# split into `groups` groups (each output channel sees $C_\text{in}/g$ input channels; a
# depthwise convolution has $g = C_\text{in}$), and check it against `ml.bench.count_flops`
# for $g = 1, 4, 16$. How does the arithmetic intensity change from $g = 1$ to depthwise?

# %% tags=["solution", "hide-cell"]
# Solution 4
def conv_flops(B, c_in, c_out, H, W, k, groups=1):
    return 2 * B * c_out * H * W * (c_in // groups) * k * k


x4 = torch.randn(8, 16, 28, 28)
for g in (1, 4, 16):
    conv4 = nn.Conv2d(16, 16, 3, padding=1, groups=g, bias=False)
    flops4 = conv_flops(8, 16, 16, 28, 28, 3, g)
    assert ml.bench.count_flops(conv4, x4) == flops4
    bytes4 = 4 * (2 * x4.numel() + conv4.weight.numel())
    print(f"groups {g:2d}: {flops4:>10,d} FLOPs (equal to count_flops), intensity {flops4 / bytes4:.2f} FLOP/byte")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# $\text{FLOPs} = 2\,B\,C_\text{out}\,H\,W\,(C_\text{in}/g)\,k^2$: $g$ times fewer than the
# dense convolution, while the activations it reads and writes stay the same size (only the
# small weight shrinks). So the intensity falls almost $g$-fold (the printed values): a
# depthwise convolution lands left of the ridge of most machines, memory-bound, where its
# time is set by its bytes, not its FLOPs. That is why depthwise-separable networks run
# slower than their FLOP count promises.
# :::

# %% [markdown]
# ### Exercise 5: an interleaved comparison from scratch (implement, medium)
# Write `ab_ratios(f, g, rounds)` that times `f` and `g` alternately (f g, g f, ...) and
# returns the median and quartiles of $t_f / t_g$. Check it against `ml.bench.compare` on
# two known cases: a function against itself (expect "no measurable difference") and a
# function against itself called twice (expect a ratio near 0.5).

# %% tags=["solution", "hide-cell"]
# Solution 5
def ab_ratios(f, g, rounds=30):
    ratios = []
    for i in range(rounds):
        t = [0.0, 0.0]
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (f, g)[j]()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t[j] = time.perf_counter() - start
        ratios.append(t[0] / t[1])
    return np.quantile(ratios, [0.5, 0.25, 0.75])


f5 = lambda: torch.mm(small, w)  # noqa: E731
twice = lambda: (f5(), f5())  # noqa: E731
for name, g5 in (("f against f", f5), ("f against f twice", twice)):
    mine = ab_ratios(f5, g5, rounds=ml.trim(30))
    ref = ml.bench.compare(f5, g5, repeat=ml.trim(30))
    print(f"{name}: mine {mine[0]:.2f} (IQR {mine[1]:.2f}-{mine[2]:.2f}) "
          f"{ml.bench.verdict(*mine, reference=1.0)}; ml.bench.compare {ref}: {ref.verdict}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# Each round times both functions back to back and alternates the order, so the two see
# the same machine state; the quartiles of the per-round ratios are the spread. For `f`
# against itself the ratio's interquartile range covers 1, so both implementations say
# "no measurable difference"; for `f` against `f` called twice the ratio sits near 0.5 and
# the verdict is "slower". The two implementations are separate runs of the same
# procedure, so their medians differ by about their spread, not more. An A/A test that
# says "faster" or "slower" means the machine is too noisy to resolve differences of that
# size.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Warm up, synchronize the GPU, repeat, and report the median with its spread; always
#   say which hardware, scale, precision and thread count produced the number.
# - Compare two implementations interleaved, as a ratio with its spread, and call one
#   "faster" only when the whole spread says so.
# - FLOPs count work; bytes moved count traffic. Their ratio, arithmetic intensity,
#   decides whether an operation is compute- or memory-bound.
# - The roofline of your own machine, measured at the working-set size of the operations
#   it explains, accounts for most performance surprises: elementwise operations are
#   memory-bound everywhere; large matmuls are compute-bound; the compute roof depends on
#   the number format and on the chip's instructions for it.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
