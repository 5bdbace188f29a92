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
# 2. explain why an unsynchronized GPU timing is wrong, and why the mean can mislead;
# 3. count the FLOPs and bytes moved of a linear layer, a convolution and an elementwise op;
# 4. measure your machine's peak FLOP/s and memory bandwidth and draw its roofline;
# 5. decide from arithmetic intensity whether an operation is compute- or memory-bound.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import os
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 1. A naive timer, and three ways it lies
#
# The obvious way to time a function is to read a clock before and after one call:
#
# ```python
# t0 = time.perf_counter(); f(x); t1 = time.perf_counter()
# ```
#
# `time.perf_counter` is the right clock (monotonic, highest resolution), but a single call
# timed this way is wrong in three ways.
#
# ### 1.1 The first call is not like the others (warm-up)
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

fig, ax = plt.subplots(figsize=(6.4, 3))
ax.plot(range(1, 16), per_call_ms, "o-")
ax.set(xlabel="call number", ylabel="time (ms)", title="The first calls pay one-off costs",
       yscale="log")
plt.show()
warmup_ratio = per_call_ms[0] / ml.bench.Timing(first_calls.times[5:]).median / 1e3
ml.glue("warmup_ratio", warmup_ratio, ".1f")
print(f"first call: {per_call_ms[0]:.2f} ms, median of calls 6-15: "
      f"{ml.bench.Timing(first_calls.times[5:]).median * 1e3:.2f} ms, ratio {warmup_ratio:.1f}x")

# %% [markdown]
# Here the first call took {glue:}`warmup_ratio` times as long as a typical later one. The fix
# is to run the function a few times **before** starting the clock (warm-up) and to report
# only the later calls.
#
# ### 1.2 The GPU runs asynchronously
#
# On a GPU, a PyTorch call such as `a @ b` does not compute anything on the Python thread:
# it *enqueues* a kernel on a CUDA stream and returns immediately. Python keeps running
# while the GPU works. A clock read right after the call measures only the **launch**,
# a few microseconds, whatever the size of the work. To time the work itself we must wait
# for the GPU to finish: `torch.cuda.synchronize()` before starting the clock (so earlier
# work is not counted) and after the call (so this work is).
#
# `ml.bench.time_fn` does exactly this. Here it is; this is the function every measurement
# in the book goes through:

# %%
ml.show(ml.bench.time_fn)

# %% [markdown]
# Let's compare a synchronized and an unsynchronized timing of a matrix multiplication.
# On a CPU both are the same, because CPU operations in PyTorch run synchronously; on a GPU
# the unsynchronized number is the launch time and is meaningless as a measure of the work.

# %%
n = ml.pick(smoke=256, cpu=1024, gpu=8192)
a = torch.randn(n, n, device=dev)
b = torch.randn(n, n, device=dev)
synced = ml.bench.time_fn(torch.mm, a, b, warmup=3, repeat=10)
unsynced = ml.bench.time_fn(torch.mm, a, b, warmup=3, repeat=10, sync=False)
ml.bench.Table([
    {"timing": "synchronized (correct)", "median": ml.bench.fmt_time(synced.median)},
    {"timing": "not synchronized", "median": ml.bench.fmt_time(unsynced.median)},
], title=f"{n}x{n} matmul on {dev.type}")

# %% [markdown]
# ### 1.3 One number hides the noise
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

fig, ax = plt.subplots(figsize=(6.4, 3))
ax.hist(us, bins=50, color="0.6")
for value, name, style in [(noise.median * 1e6, "median", "-"), (noise.mean * 1e6, "mean", "--"),
                           (noise.min * 1e6, "min", ":")]:
    ax.axvline(value, color="C0", linestyle=style, label=f"{name} {value:.1f} us")
ax.set(xlabel="time per call (us)", ylabel="calls", title=f"{len(us)} timings of one small matmul")
ax.legend()
plt.show()
mean_over_median = noise.mean / noise.median
ml.glue("mean_over_median", (mean_over_median - 1) * 100, ".1f")
print(noise)

# %% [markdown]
# In this run the mean is {glue:}`mean_over_median`% above the median: a single slow call
# moves the mean, not the median. When two methods differ by less than the spread, the
# honest conclusion is "no measurable difference".
#
# ### 1.4 CPU threads
#
# On a CPU, PyTorch splits large operations across a pool of threads
# (`torch.get_num_threads()`, by default one per physical core). A large matmul speeds up
# with more threads; a tiny operation can get *slower*, because waking threads costs more
# than the work. Always report the number of threads with a CPU timing (the banner above does).

# %%
threads_before = torch.get_num_threads()
rows = []
big = torch.randn(ml.pick(smoke=256, cpu=1024, gpu=1024), ml.pick(smoke=256, cpu=1024, gpu=1024))
tiny = torch.randn(64, 64)
for k in sorted({1, 2, os.cpu_count() or 1} & set(range(1, (os.cpu_count() or 1) + 1))):
    torch.set_num_threads(k)
    rows.append({
        "threads": k,
        f"matmul {big.shape[0]}^2": ml.bench.fmt_time(ml.bench.time_fn(torch.mm, big, big, repeat=10).median),
        "add 64x64": ml.bench.fmt_time(ml.bench.time_fn(torch.add, tiny, tiny, repeat=50).median),
    })
torch.set_num_threads(threads_before)
ml.bench.Table(rows, title="CPU time vs number of threads (CPU tensors)")

# %% [markdown]
# ## 2. What an operation costs: FLOPs and bytes
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
# `FlopCounterMode`, which adds up the formula above for every matmul and convolution.
# Let's check it against the formulas.

# %%
B, n_in, n_out, c_in, c_out, k, hw = 32, 512, 256, 16, 32, 3, 28
linear = nn.Linear(n_in, n_out)
conv = nn.Conv2d(c_in, c_out, k, padding=1)
checks = [
    ("linear", ml.bench.count_flops(linear, torch.randn(B, n_in)), 2 * B * n_in * n_out),
    ("conv 3x3", ml.bench.count_flops(conv, torch.randn(B, c_in, hw, hw)), 2 * B * c_out * hw * hw * c_in * k * k),
]
for name, counted, formula in checks:
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
# ## 3. The roofline of this machine
#
# A chip has a peak compute rate $P$ (FLOP/s) and a peak memory bandwidth $\beta$
# (bytes/s). An operation with intensity $I$ needs at least $\text{FLOPs}/P$ seconds to
# compute and $\text{bytes}/\beta$ seconds to move its data, so its attainable rate is
#
# $$\text{FLOP/s} \le \min(P,\; I \cdot \beta).$$
#
# Plotted on log-log axes this is a slanted "memory roof" meeting a flat "compute roof" at
# the **ridge point** $I^* = P/\beta$ {cite}`williams2009roofline`. Operations left of the
# ridge are memory-bound: a faster ALU would not help them, moving fewer bytes would. We
# measure $P$ with a large matmul and $\beta$ with a large copy:

# %%
ml.show(ml.bench.measure_peaks)

# %%
peaks = ml.bench.measure_peaks(dev)
P, beta = peaks["flops_per_s"], peaks["bytes_per_s"]
ridge = P / beta
ml.glue("peak_gflops", P / 1e9, ".1f")
ml.glue("peak_bw", beta / 1e9, ".1f")
ml.glue("ridge", ridge, ".1f")
ml.bench.Table([{"peak compute": f"{P / 1e9:.1f} GFLOP/s", "peak bandwidth": f"{beta / 1e9:.1f} GB/s",
                 "ridge point": f"{ridge:.1f} FLOP/byte"}], title=f"measured peaks ({dev.type}, float32)")

# %% [markdown]
# Now we place operations on the roofline: for each we know its FLOPs and bytes from the
# formulas above, and we measure its time.

# %%
def measure_op(name, fn, args, flops, nbytes, repeat=10):
    """Time fn(*args) and return a roofline point: intensity and achieved FLOP/s."""
    t = ml.bench.time_fn(fn, *args, repeat=repeat).median
    return {"name": name, "intensity": flops / nbytes, "flops_per_s": flops / t,
            "time": ml.bench.fmt_time(t), "% of roof": 100 * (flops / t) / min(P, flops / nbytes * beta)}


N = ml.pick(smoke=2**18, cpu=2**22, gpu=2**26)
u, v, s = (torch.randn(N, device=dev) for _ in range(3))
points = [
    measure_op("add", torch.add, (u, v), N, 12 * N),
    measure_op("x*y+z", torch.addcmul, (s, u, v), 2 * N, 16 * N),
]
for m in ml.pick(smoke=[32, 128, 256], cpu=[32, 128, 512, 1024], gpu=[64, 256, 1024, 4096, 8192]):
    p, q = torch.randn(m, m, device=dev), torch.randn(m, m, device=dev)
    points.append(measure_op(f"matmul {m}", torch.mm, (p, q), 2 * m**3, 12 * m**2))
conv_x = torch.randn(ml.pick(smoke=8, cpu=32, gpu=256), 64, 32, 32, device=dev)
conv_l = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(dev)
with torch.no_grad():
    conv_flops = ml.bench.count_flops(conv_l, conv_x)
    conv_bytes = 4 * (2 * conv_x.numel() + conv_l.weight.numel())
    points.append(measure_op("conv 3x3 64ch", conv_l, (conv_x,), conv_flops, conv_bytes))

ml.plot.roofline(P, beta, points, title=f"Roofline of this machine ({dev.type}, float32)")
plt.show()
under_roof = sum(p["% of roof"] <= 105 for p in points)  # 5% allowance for timing noise
ml.glue("under_roof", f"{under_roof} of {len(points)}")
ml.bench.Table([{k: p[k] for k in ("name", "intensity", "flops_per_s", "time", "% of roof")} for p in points],
               formats={"flops_per_s": lambda f: f"{f / 1e9:.2f} GFLOP/s", "intensity": "{:.2f}",
                        "% of roof": "{:.0f}%"})

# %% [markdown]
# Read the plot from left to right. The elementwise operations sit far left of the ridge
# point ({glue:}`ridge` FLOP/byte here): they are memory-bound, and their FLOP/s is tiny
# compared to the peak of {glue:}`peak_gflops` GFLOP/s even when they run at nearly full
# bandwidth. Matmuls move right as they grow and climb towards the compute roof.
#
# Here {glue:}`under_roof` operations lie under the roof (within 5% for timing noise). A
# point *above* it is not a broken law but a roof drawn too low for that operation: our
# $\beta$ comes from a single copy benchmark, and an operation whose operands fit, wholly or
# partly, in the CPU's caches (server CPUs have tens of megabytes of last-level cache)
# moves fewer bytes from main memory than we counted. The roofline models main-memory
# traffic; each cache level adds a higher roof of its own. This picture is
# the single most useful picture in efficient deep learning: it tells you whether to
# reduce FLOPs (quantized matmuls, pruning, sparsity) or bytes (fusion, lower precision,
# recomputation) {cite}`ivanov2021data`. Every later chapter comes back to it.
#
# ## 4. Measuring a whole model
#
# The same tools measure a model. Besides time we report what it costs in memory and
# arithmetic, and the **model FLOPs utilization** (MFU), the fraction of the measured peak
# that the model's FLOPs achieve {cite}`chowdhery2023palm`.

# %%
ml.show(ml.bench.peak_memory)

# %%
batch = ml.pick(smoke=16, cpu=128, gpu=1024)
x = torch.randn(batch, 3, 32, 32, device=dev)
with torch.no_grad():
    t = ml.bench.time_fn(net, x, warmup=3, repeat=ml.pick(smoke=5, cpu=10, gpu=30))
    flops = ml.bench.count_flops(net, x)
    peak = ml.bench.peak_memory(net, x)
mfu = flops / t.median / P
ml.glue("mfu", 100 * mfu, ".0f")
ml.bench.Table([{
    "model": f"ResNet-9 (width {width})",
    "params": ml.bench.count_params(net),
    "weights": ml.bench.fmt_bytes(ml.bench.model_bytes(net)),
    "FLOPs / image": ml.bench.fmt_flops(flops / batch),
    "batch time": ml.bench.fmt_time(t.median),
    "images/s": ml.bench.throughput(net, x, items=batch, repeat=5),
    "peak activations": ml.bench.fmt_bytes(peak),
    "MFU": f"{100 * mfu:.0f}%",
}], title=f"inference, batch {batch}, {dev.type}, float32")

# %% [markdown]
# The model runs at {glue:}`mfu`% of the matmul peak. The gap is made of everything the
# FLOP count ignores: memory-bound normalization, activations and pooling between the
# convolutions, and convolutions too small to fill the machine. Closing that gap without
# losing accuracy is what the rest of the book is about.
#
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`williams2009roofline` | attainable FLOP/s is bounded by $\min(P, I\beta)$ | {glue:}`under_roof` operations lie under the measured roof (those above it run from cache; see section 3) |
# | {cite}`hoefler2015benchmarking` | timings are skewed; report medians and spread, not a single run or only the mean | the mean was {glue:}`mean_over_median`% above the median in section 1.3 |
# | (folklore) | the first call is slower | the first call was {glue:}`warmup_ratio` times a typical call in section 1.1 |
#
# ## Exercises
#
# 1. Time `torch.mm` on two $2048\times2048$ matrices without warm-up and with
#    `repeat=1`, ten times in a row. How much do the ten results vary? What does
#    `ml.bench.time_fn` with its defaults report?
# 2. Compute the arithmetic intensity of a batched linear layer $B\times n$ by $n\times n$
#    as a function of $B$. For which batch size does it cross this machine's ridge point?
#    What does that say about inference with batch size 1?
# 3. Add `torch.nn.functional.gelu` on $N$ numbers to the roofline. Where does it land?
#    Would a faster GELU formula (fewer FLOPs) make it faster?
#
# :::{dropdown} Solution 1
# Without warm-up the first of the ten is the slowest, and the rest vary by a few percent
# (more on a busy laptop). `time_fn` discards the warm-up calls and reports the median of 20
# runs with half the interquartile range, which varies much less from one call to the next.
# :::
#
# :::{dropdown} Solution 2
# FLOPs $2Bn^2$, bytes $4(Bn + n^2 + Bn)$, so $I = \frac{2Bn^2}{4(2Bn + n^2)}$. For
# $n \gg B$ this is about $B/2$: the intensity grows with the batch size, and at $B=1$ it is
# about $0.5$ FLOP/byte, far left of any ridge point. Batch-1 inference (token-by-token
# generation, chapter 3) is memory-bound: its speed is set by the bytes of the weights,
# which is why weight-only quantization (chapter 5) speeds it up.
# :::
#
# :::{dropdown} Solution 3
# ```python
# g = measure_op("gelu", F.gelu, (u,), 8 * N, 8 * N)  # about 8 FLOPs per element, read + write 4 bytes each
# ```
# GELU has intensity about 1 FLOP/byte and lands on the memory roof next to `add`. Fewer
# FLOPs would not help; fusing it into the preceding matmul (so its input never goes back
# to memory) would.
# :::
#
# ## Key takeaways
#
# - Warm up, synchronize the GPU, repeat, and report the median with its spread; always
#   say which hardware, scale and thread count produced the number.
# - FLOPs count work; bytes moved count traffic. Their ratio, arithmetic intensity,
#   decides whether an operation is compute- or memory-bound.
# - The roofline of your own machine, measured, explains most performance surprises:
#   elementwise operations are memory-bound everywhere; large matmuls are compute-bound.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
