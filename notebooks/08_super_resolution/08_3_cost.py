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
# # 8.3 What a frame costs: FLOPs, milliseconds and real time
#
# Super-resolution is often wanted for video: upscaling a stream to a 1920x1080 display at
# 30 or 60 frames per second leaves 33 or 17 ms per frame. ESPCN's title promised exactly
# that, "real-time SR of 1080p videos on a single K2 GPU" {cite}`shi2016espcn`, and FSRCNN
# {cite}`dong2016fsrcnn` real-time speed on a generic CPU for small settings. The attention
# networks that lead the benchmarks today cost far more: SwinIR {cite}`liang2021swinir`
# needs about as many FLOPs as the CNN RCAN but runs three times slower. This notebook
# measures what one 1080p output frame costs for each network of notebook 8.2, in FLOPs and
# in milliseconds on the machine at hand, asks which of them are real time, draws the
# quality-versus-speed trade-off, tries ClassSR's idea {cite}`kong2021classsr` of spending
# less on easy regions, and shows the outputs side by side.
#
# **Learning objectives.** After this notebook you can
# 1. measure FLOPs (without running the model) and milliseconds per output frame;
# 2. decide whether a network is real time at 30 or 60 fps on given hardware;
# 3. explain why FLOPs do not predict time (transposed convolutions, attention), with
#    interleaved A/B timings;
# 4. read a quality-versus-speed Pareto front and route regions by difficulty;
# 5. compare SR outputs visually, and know why PSNR is not the goal of generative SR.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter, NullFormatter

import minilib as ml

ml.describe()
ml.plot.style()
hardware = ml.env.hardware()
dev = ml.device()
cpu_name = hardware["cpu model"]
fp32 = hardware["precision"].split(";")[0]          # "fp32: IEEE (TF32 off ...)"

# %% [markdown]
# ## 8.3.1 The cost of a frame
#
# `ml.sr.frame_cost` feeds a network the LR frame of a `height x width` output (for 1080p at
# x3: 360x640) and reports two costs. **FLOPs** are counted by running the model on
# PyTorch's `meta` device, where tensors have shapes but no data: the FLOP counter sees
# every convolution and matrix product at full size, at no cost. **Time** is the median of
# repeated calls with `ml.bench.time_fn` (warm-up, CUDA synchronization, the machine's
# load) under `torch.inference_mode`.

# %%
ml.show(ml.sr.frame_cost)

# %% [markdown]
# Cost does not depend on the weights, so we measure untrained networks at x2, x3 and x4.
# The baseline is PyTorch's bicubic (`ml.sr.bicubic_skip`), what a real pipeline would use;
# it is a native kernel, not a matrix product, so the FLOP counter reports 0 for it. A
# 1080p frame takes seconds on a small CPU, so there each frame is timed once (the warm-up
# effects that `time_fn` guards against are milliseconds), and at the gpu scale the CPU
# times only x3; on a GPU every frame is timed 20 times after 3 warm-up calls. The
# interleaved comparisons of section 8.3.3 give the spreads of the ratios that matter.

# %%
class Bicubic(nn.Module):
    """PyTorch's bicubic upscaling as a module (the baseline of the cost table)."""

    def __init__(self, scale):
        super().__init__()
        self.scale, self.num_channels = scale, 1

    def forward(self, x):
        return ml.sr.bicubic_skip(x, self.scale)


def build(name, s):
    return Bicubic(s) if name == "bicubic" else ml.sr.build_model(name, s).eval()


height, width = ml.pick(smoke=(120, 240), cpu=(1080, 1920), gpu=(1080, 1920))
methods = ["bicubic", *ml.sr.MODEL_NAMES]
scales_on = {"cpu": ml.trim(ml.pick(smoke=[2, 3, 4], cpu=[2, 3, 4], gpu=[3]), keep=1)}
timing = {"cpu": dict(warmup=0, repeat=1), "cuda": dict(warmup=3, repeat=20)}
if dev.type == "cuda":
    scales_on["cuda"] = [2, 3, 4]
costs = {}
for d, scales in scales_on.items():
    for s in scales:
        for name in methods:
            costs[name, s, d] = ml.sr.frame_cost(build(name, s).to(d), s, height, width, device=d, **timing[d])
rows = []
for s in (2, 3, 4):
    for name in methods:
        cpu, gpu = costs.get((name, s, "cpu")), costs.get((name, s, "cuda"))
        if cpu is None and gpu is None:
            continue
        any_cost = cpu or gpu
        rows.append({"scale": f"x{s}", "method": name, "gflops": any_cost["flops"] / 1e9,
                     "cpu ms": cpu["ms"] if cpu else None, "cpu fps": cpu["fps"] if cpu else None,
                     "gpu": gpu["timing"] if gpu else None, "gpu fps": gpu["fps"] if gpu else None})
ml.bench.Table(rows, title=f"one {width}x{height} Y output frame; CPU: {cpu_name}, {hardware['torch threads']} threads"
                           + (f"; GPU: {hardware['accelerator']}" if dev.type == "cuda" else "") + f"; {fp32}",
               headers={"gflops": "GFLOPs / frame", "cpu ms": "CPU ms / frame", "cpu fps": "CPU fps",
                        "gpu": "GPU time / frame", "gpu fps": "GPU fps"},
               formats={"gflops": "{:.1f}", "cpu ms": "{:,.0f}", "cpu fps": "{:.2f}", "gpu fps": "{:,.0f}"},
               load=[c["timing"] for c in costs.values()])

# %% tags=["remove-cell"]
ml.glue("frame", f"{width}x{height}")
ml.glue("cpu_name", cpu_name)
ml.glue("cpu_threads", hardware["torch threads"])

# %% [markdown]
# ## 8.3.2 Real time?
#
# A network is real time at $f$ frames per second when one frame takes at most $1000/f$
# ms, which also means the hardware must sustain FLOPs-per-frame $\times f$ FLOP/s. We
# compare with the matmul peak of this machine, measured here with the method of notebook
# 1.1 (`ml.bench.measure_peaks`: the best of five $1536\times1536$ float32 matmuls on the
# CPU, with the same thread count as every timing of this notebook; $8192\times8192$ on a
# GPU, IEEE fp32). Notebook 1.1's stored figure comes from its own run and agrees with this
# one only when the machine, its thread count and its load were the same: this notebook
# compares only with what it measured itself. A network whose requirement exceeds the peak
# cannot be real time here whatever its implementation.

# %%
peak = {"cpu": ml.bench.measure_peaks(torch.device("cpu"))["flops_per_s"]}
if dev.type == "cuda":
    peak["cuda"] = ml.bench.measure_peaks(dev)["flops_per_s"]
rows = []
for s in (2, 3, 4):
    for name in ml.sr.MODEL_NAMES:
        cpu, gpu = costs.get((name, s, "cpu")), costs.get((name, s, "cuda"))
        if cpu is None and gpu is None:
            continue
        row = {"scale": f"x{s}", "network": name, "need": 30 * (cpu or gpu)["flops"]}
        if cpu:
            row |= {"cpu fps": cpu["fps"], "cpu rt": cpu["fps"] >= 30}
        if gpu:
            row |= {"gpu fps": gpu["fps"], "gpu rt": f"{'yes' if gpu['fps'] >= 30 else 'no'} / "
                                                      f"{'yes' if gpu['fps'] >= 60 else 'no'}"}
        rows.append(row)
ml.bench.Table(rows, title=f"real time at {width}x{height}? (CPU matmul peak {peak['cpu'] / 1e9:.0f} GFLOP/s"
                           + (f", GPU {peak['cuda'] / 1e12:.1f} TFLOP/s" if "cuda" in peak else "") + f"; {fp32})",
               headers={"need": "FLOP/s needed at 30 fps", "cpu fps": "CPU fps", "cpu rt": "real time on CPU (30 fps)",
                        "gpu fps": "GPU fps", "gpu rt": "real time on GPU (30 / 60 fps)"},
               formats={"need": ml.bench.fmt_flops, "cpu fps": "{:.2f}", "gpu fps": "{:,.0f}"})

# %% tags=["remove-cell"]
espcn = costs["espcn", 3, "cpu"]
ml.glue("cpu_peak", peak["cpu"] / 1e9, ".0f")
ml.glue("espcn_x3_cpu_fps", espcn["fps"], ".2f")
ml.glue("espcn_x3_gflops", espcn["flops"] / 1e9, ".1f")
ml.glue("espcn_x3_need", 30 * espcn["flops"] / 1e9, ".0f")
ml.glue("espcn_realtime_cpu", "yes" if espcn["fps"] >= 30 else "no")
ml.glue("espcn_fps_bound", peak["cpu"] / espcn["flops"], ".1f")
ml.glue("espcn_x3_gpu", f"{costs['espcn', 3, 'cuda']['fps']:,.0f} fps on {hardware['accelerator']} ({fp32}), "
        f"real time at 60 fps: {'yes' if costs['espcn', 3, 'cuda']['fps'] >= 60 else 'no'}"
        if dev.type == "cuda" else "no GPU in this run")

# %% [markdown]
# ESPCN at x3 needs {glue:}`espcn_x3_gflops` GFLOPs per {glue:}`frame` frame, so
# {glue:}`espcn_x3_need` GFLOP/s at 30 fps, against a matmul peak of {glue:}`cpu_peak`
# GFLOP/s on this CPU: even at that peak it could reach at most {glue:}`espcn_fps_bound`
# fps, and it runs at {glue:}`espcn_x3_cpu_fps` fps (real time here:
# {glue:}`espcn_realtime_cpu`). The claim was for a GPU, which sustains TFLOP/s: the
# requirement is the FLOPs per frame times the frame rate, and only hardware that
# *achieves* that rate on these layers is real time. GPU: {glue:}`espcn_x3_gpu`.
#
# ## 8.3.3 FLOPs do not predict time
#
# Divide FLOPs by time and you get the FLOP/s each network achieves: how well its
# operations use the machine.

# %%
rows = []
for name in ml.sr.MODEL_NAMES:
    for s in (2, 3, 4):
        row = {"network": name, "scale": f"x{s}"}
        for d in peak:
            c = costs.get((name, s, d))
            if c:
                row[f"{d} achieved"] = c["flops"] / (c["ms"] / 1e3)
                row[f"{d} %"] = 100 * row[f"{d} achieved"] / peak[d]
        if len(row) > 2:
            rows.append(row)
ml.bench.Table(rows, title=f"achieved FLOP/s per network ({fp32})",
               headers={"cpu achieved": "CPU achieved (GFLOP/s)", "cpu %": "% of CPU peak",
                        "cuda achieved": "GPU achieved (TFLOP/s)", "cuda %": "% of GPU peak"},
               formats={"cpu achieved": lambda v: f"{v / 1e9:.1f}", "cpu %": "{:.0f}%",
                        "cuda achieved": lambda v: f"{v / 1e12:.2f}", "cuda %": "{:.0f}%"})

# %% [markdown]
# Ratios of times need a spread, so we measure the ones the argument rests on as
# interleaved A/B comparisons (`ml.bench.compare`: A B, B A, ... on one x3 frame, the median
# ratio and its interquartile range), on the device of this run:

# %%
s = 3
lr_frame = torch.rand(1, 1, height // s, width // s, device=dev)
nets = {name: build(name, s).to(dev) for name in ml.sr.MODEL_NAMES}


def runner(module, x):
    def run():
        with torch.inference_mode():
            module(x)
    return run


ab = dict(warmup=ml.pick(smoke=0, cpu=0, gpu=3), repeat=ml.pick(smoke=2, cpu=3, gpu=20))
pairs = {"A = SRCNN, B = ESPCN": ("srcnn", "espcn"), "A = SRCNN, B = FSRCNN": ("srcnn", "fsrcnn"),
         "A = WindowSR, B = ESPCN": ("windowsr", "espcn")}
speed = {label: ml.bench.compare(runner(nets[a], lr_frame), runner(nets[b], lr_frame), **ab)
         for label, (a, b) in pairs.items()}
fsrcnn = nets["fsrcnn"]
with torch.inference_mode():
    features = fsrcnn.body(lr_frame)
deconv_vs_body = ml.bench.compare(runner(fsrcnn.body, lr_frame), runner(fsrcnn.upsample, features), **ab)
flops = {part: ml.bench.count_flops(m, x) for part, (m, x) in
         {"body": (fsrcnn.body, lr_frame), "deconv": (fsrcnn.upsample, features)}.items()}
rows = [{"comparison": label, "ratio": c,
         "flops": costs[pairs[label][0], s, dev.type]["flops"] / costs[pairs[label][1], s, dev.type]["flops"],
         "verdict": c.verdict} for label, c in speed.items()]
rows.append({"comparison": "A = FSRCNN's body (convs on LR), B = its transposed conv",
             "ratio": deconv_vs_body, "flops": flops["body"] / flops["deconv"], "verdict": deconv_vs_body.verdict})
ml.bench.Table(rows, title=f"interleaved A/B on one x{s} {width}x{height} frame ({dev.type}, {fp32})",
               headers={"ratio": "time A / time B (IQR): speed-up of B", "flops": "FLOPs A / FLOPs B",
                        "verdict": "B is"},
               formats={"flops": "{:.2f}"})

# %% tags=["remove-cell"]
def ratio_text(c):
    return f"{c.speedup:.1f}x (IQR {c.lo:.1f}-{c.hi:.1f}x)"


ml.glue("ab_device", f"{dev.type} ({hardware['accelerator']})" if dev.type == "cuda" else f"the CPU ({cpu_name})")
def per_flop_words(time_ratio, flop_ratio, who):
    """`who` is time_ratio / flop_ratio times slower (or faster) per FLOP than the other."""
    r = time_ratio / flop_ratio
    return f"{r:.1f} times slower per FLOP" if r >= 1 else f"{1 / r:.1f} times faster per FLOP"


ml.glue("espcn_vs_srcnn", ratio_text(speed["A = SRCNN, B = ESPCN"]))
ml.glue("espcn_vs_srcnn_verdict", speed["A = SRCNN, B = ESPCN"].verdict)
ml.glue("fsrcnn_vs_srcnn", ratio_text(speed["A = SRCNN, B = FSRCNN"]))
ml.glue("fsrcnn_vs_srcnn_verdict", speed["A = SRCNN, B = FSRCNN"].verdict)
ml.glue("espcn_vs_windowsr", ratio_text(speed["A = WindowSR, B = ESPCN"]))
ml.glue("espcn_vs_windowsr_verdict", speed["A = WindowSR, B = ESPCN"].verdict)
flop_w_e = costs["windowsr", s, dev.type]["flops"] / costs["espcn", s, dev.type]["flops"]
ml.glue("windowsr_over_espcn_flops", flop_w_e, ".1f")
ml.glue("windowsr_per_flop", per_flop_words(speed["A = WindowSR, B = ESPCN"].speedup, flop_w_e, "WindowSR"))
ml.glue("deconv_flops_share", 100 * flops["deconv"] / (flops["body"] + flops["deconv"]), ".0f")
ml.glue("deconv_vs_body", f"{1 / deconv_vs_body.speedup:.2f}x (IQR {1 / deconv_vs_body.hi:.2f}-{1 / deconv_vs_body.lo:.2f}x)")
ml.glue("deconv_flop_ratio", flops["deconv"] / flops["body"], ".2f")
ml.glue("deconv_words", deconv_vs_body.words(faster="shorter than", slower="longer than", same="about as long as"))
ml.glue("deconv_per_flop", per_flop_words(1 / deconv_vs_body.speedup, flops["deconv"] / flops["body"], "deconv"))
achieved = {name: costs[name, s, dev.type]["flops"] / (costs[name, s, dev.type]["ms"] / 1e3) / 1e9
            for name in ml.sr.MODEL_NAMES}
ml.glue("espcn_gflops_s", achieved["espcn"], ".1f")
ml.glue("fsrcnn_gflops_s", achieved["fsrcnn"], ".1f")
ml.glue("windowsr_gflops_s", achieved["windowsr"], ".1f")
imresize_cost = ml.sr.frame_cost(ml.sr.PreUpsample(nn.Identity(), s), s, height, width, warmup=0, repeat=1)
banded_flops = 2 * 4 * (height * (width // s)) + 2 * 4 * (height * width)     # 4 taps per output, two passes
ml.glue("imresize_gflops", imresize_cost["flops"] / 1e9, ".1f")
ml.glue("imresize_vs_banded", imresize_cost["flops"] / banded_flops, ".0f")

# %% [markdown]
# On {glue:}`ab_device`, against SRCNN, ESPCN's speed-up on a x3 frame is
# {glue:}`espcn_vs_srcnn` ({glue:}`espcn_vs_srcnn_verdict`) and FSRCNN's
# {glue:}`fsrcnn_vs_srcnn` ({glue:}`fsrcnn_vs_srcnn_verdict`), although FSRCNN has the fewest
# FLOPs of the four networks. WindowSR has {glue:}`windowsr_over_espcn_flops` times ESPCN's
# FLOPs per frame, and ESPCN's speed-up over it is {glue:}`espcn_vs_windowsr`: WindowSR is
# {glue:}`windowsr_per_flop`. In achieved throughput: ESPCN {glue:}`espcn_gflops_s` GFLOP/s,
# FSRCNN {glue:}`fsrcnn_gflops_s`, WindowSR {glue:}`windowsr_gflops_s`. Two kinds of
# operation explain most of the spread.
#
# FSRCNN's transposed convolution has one output channel and is a scatter, an operation
# libraries optimize less than a plain convolution: it holds {glue:}`deconv_flops_share`% of
# FSRCNN's FLOPs ({glue:}`deconv_flop_ratio` times the FLOPs of the body) and takes
# {glue:}`deconv_vs_body` the body's time, i.e. {glue:}`deconv_words` the body: it is
# {glue:}`deconv_per_flop` than the body's convolutions. ESPCN's sub-pixel convolution
# computes the same kind of upsampler as an ordinary convolution plus a free reshuffle
# (notebook 8.2, Exercise 3), which is exactly its argument for being faster.
#
# (SRCNN's MATLAB bicubic step is counted too: `ml.sr.imresize` multiplies by dense weight
# matrices, {glue:}`imresize_gflops` GFLOPs per {glue:}`frame` frame at x3, although each
# output pixel only needs 4 weights per axis; a banded implementation does the same work
# with {glue:}`imresize_vs_banded` times fewer FLOPs, Exercise 4. Exact is not the same as
# efficient.)
#
# Attention is the second case. Its FLOPs are small matrix products inside $8\times8$
# windows, and around them sit the operations that move memory without counting as FLOPs:
# building the window mask with its relative position bias, the softmax, rolling the grid
# for shifted windows, partitioning and merging windows, layer norms. SwinIR reports the
# same on a GPU: about as many FLOPs as the CNN RCAN (788.6G vs 850.6G) but 0.539 s
# instead of 0.180 s per image {cite}`liang2021swinir`.
#
# ## 8.3.4 Quality versus speed
#
# Each trained network of notebook 8.2 is a point: PSNR on the largest evaluation set
# against milliseconds per x3 frame on the device of this run. The Pareto front holds the
# networks that no other beats on both.

# %%
trained = {name: ml.sr.trained_model(name, s, progress=False) for name in ml.sr.MODEL_NAMES}
config = ml.sr.recipe("espcn", s)
limit, eval_sets = config["eval_limit"], config["eval_sets"]
big = eval_sets[-1]
bicubic_metrics = {k: ml.sr.evaluate(lambda lr: ml.sr.imresize(lr.to(dev), s), ml.sr.eval_images(k, limit), s)
                   for k in eval_sets}                          # bicubic on the device: float32 either way
metrics = {"bicubic": bicubic_metrics, **{name: record["metrics"] for name, (_, record) in trained.items()}}
x_label = f"ms per {width}x{height} frame, x{s} ({'GPU' if dev.type == 'cuda' else 'CPU'}, log scale)"
points = [{"name": name, x_label: costs[name, s, dev.type]["ms"], f"{big} PSNR (dB)": metrics[name][big]["psnr"]}
          for name in methods]
fig = ml.plot.pareto(points, x=x_label, y=f"{big} PSNR (dB)", logx=True,
                     title=f"x{s}: quality vs time per frame ({ml.scale()} scale)")
ax = fig.axes[0]
ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))   # plain numbers, not 10^k
ax.xaxis.set_minor_formatter(NullFormatter())
plt.show()
front = ml.plot.pareto_front(points, x=x_label, y=f"{big} PSNR (dB)")
print("on the front:", ", ".join(p["name"] for p in front))

# %% tags=["remove-cell"]
ml.glue("pareto_front", ", ".join(p["name"] for p in front))
ml.glue("big_set", big)

# %% [markdown]
# On the front at this scale: {glue:}`pareto_front`. A point off the front is a network
# some other network beats on both quality and speed here. The front depends on the
# hardware (the time axis) and on the training budget (the quality axis): measure it
# where the model will run, after the training it will get. (Differences in PSNR between
# the networks carry the spreads of notebook 8.2's paired comparisons.)
#
# ## 8.3.5 Spending less on easy regions (ClassSR)
#
# ClassSR {cite}`kong2021classsr` observes that most of a large image is smooth and easy:
# it cuts the LR image into sub-images, classifies each by restoration difficulty with a
# small network, and sends easy ones to a cheap SR branch and hard ones to the expensive
# network, saving "up to 50%" of the FLOPs on DIV8K at the same quality. We try the idea
# with two branches, bicubic (almost free) and WindowSR, and the simplest difficulty
# score: the local variance of the LR image on $16\times16$ tiles. Sweeping the fraction of
# tiles sent to WindowSR traces PSNR against FLOPs. (We composite tiles from whole-image
# outputs, so tile borders are free of the seams a real tiled pipeline must handle.)

# %%
model = trained["windowsr"][0]
route_images = [img for k in eval_sets for img in ml.sr.eval_images(k, limit)]
tile = 16
fractions = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
sse = {f: 0.0 for f in fractions}                       # squared error summed over all pixels
per_image = {f: [] for f in fractions}                  # PSNR of each image
kept = []                                               # the outputs on 8-bit levels, for Exercise 3
pixels = 0
for img in ml.trim(route_images):
    hr_y, lr_y = (t.to(dev) for t in ml.sr.make_pair(img, s))   # Y, y-first protocol, on the device
    sr_net = ml.sr.quantize(ml.sr.upscale(model, lr_y[None], s)[0])
    sr_bic = ml.sr.quantize(ml.sr.imresize(lr_y[None], s))[0]
    lr_y = lr_y[None]
    # difficulty of each LR tile: variance of its pixels (smooth = easy)
    score = F.avg_pool2d(lr_y**2, tile, ceil_mode=True) - F.avg_pool2d(lr_y, tile, ceil_mode=True) ** 2
    order = score.flatten().argsort(descending=True)
    for f in fractions:
        hard = torch.zeros(score.numel(), dtype=torch.bool, device=dev)
        hard[order[: round(f * score.numel())]] = True
        mask = hard.view(score.shape[-2:]).repeat_interleave(tile * s, 0).repeat_interleave(tile * s, 1)
        mix = torch.where(mask[: hr_y.shape[-2], : hr_y.shape[-1]], sr_net, sr_bic)
        err = ((mix - hr_y) * 255)[..., s:-s, s:-s].double()
        image_sse = err.pow(2).sum().item()
        sse[f] += image_sse
        per_image[f].append(10 * math.log10(255.0**2 * err.numel() / image_sse))
    pixels += err.numel()
    kept.append(tuple((t * 255).round().to(torch.uint8).cpu() for t in (hr_y, sr_net, sr_bic)))
route = [{"fraction": f, "flops": 100 * f, "psnr": 10 * math.log10(255.0**2 * pixels / sse[f])} for f in fractions]
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot([r["flops"] for r in route], [r["psnr"] for r in route], "o-")
ax.set(xlabel="network FLOPs (% of WindowSR everywhere)", ylabel="PSNR (dB, pooled over pixels)",
       title=f"routing LR tiles by variance, x{s}")
plt.show()
ml.bench.Table(route, headers={"fraction": "fraction of tiles to WindowSR", "flops": "FLOPs (% of WindowSR)",
                               "psnr": "PSNR (dB, pooled)"},
               formats={"psnr": "{:.2f}", "flops": "{:.0f}%", "fraction": "{:.2f}"},
               title=f"bicubic for smooth tiles, WindowSR for the rest ({len(kept)} images of {', '.join(eval_sets)})")

# %% tags=["remove-cell"]
half_loss, half_loss_se = ml.bench.paired_difference(per_image[0.5], per_image[1.0])
gain_total = route[-1]["psnr"] - route[0]["psnr"]
ml.glue("route_gain_total", gain_total, ".2f")
ml.glue("route_half_loss", route[-1]["psnr"] - route[3]["psnr"], ".2f")
ml.glue("route_half_share", f"keeps {100 * (route[3]['psnr'] - route[0]['psnr']) / gain_total:.0f}% of the network's "
        "gain over bicubic" if gain_total > 0 else "cannot be judged: at this scale the network does not beat bicubic")
ml.glue("route_half_paired", f"{half_loss:.2f} ± {half_loss_se:.2f} dB per image")
ml.glue("route_half_verdict", ml.bench.quality_verdict(half_loss, half_loss_se, better="a measurable loss",
                                                       worse="a measurable gain", same="no measurable loss"))

# %% [markdown]
# Running WindowSR everywhere gains {glue:}`route_gain_total` dB over bicubic on these
# images (PSNR pooled over all their pixels); sending only the busiest half of the tiles
# to it gives up {glue:}`route_half_loss` dB of that (paired over images:
# {glue:}`route_half_paired`, {glue:}`route_half_verdict`) for half the network FLOPs: the
# half split {glue:}`route_half_share`. A learned classifier and a fine-tuned set of
# branches (ClassSR) do better than a variance threshold (Exercise 3 measures how much
# better a perfect one could do); the principle is the same: spend FLOPs where the error
# is.
#
# ## 8.3.6 Looking at the outputs
#
# PSNR averages over pixels; the eye looks at edges and textures. We crop each test image
# where bicubic errs most (the largest local error, found automatically) and show the same
# crop for every method, enlarged without smoothing, in colour: for this the pairs are made
# on RGB (`protocol="rgb-first"`, an 8-bit LR image as a video frame would be), each network
# upscales Y and bicubic the chroma (`ml.sr.upscale(..., color=True)`). The PSNR under each
# crop is that of the whole image, on Y.

# %%
def worst_crop(hr, bicubic, size):
    """Top-left corner of the size x size window where bicubic's Y error is largest."""
    err = (ml.sr.rgb_to_y(hr) - ml.sr.rgb_to_y(bicubic)).abs()[None]
    local = F.avg_pool2d(err, size, stride=max(1, size // 4))
    i, j = divmod(local.flatten().argmax().item(), local.shape[-1])
    return i * max(1, size // 4), j * max(1, size // 4)


crop_images = [("Set5", 2)] + ml.pick(smoke=[], cpu=[("Set14", 13)], gpu=[("Set14", 13)])  # butterfly, zebra
crop = 48
outputs = {}
for key, index in crop_images:
    hr, lr = ml.sr.make_pair(ml.sr.eval_images(key)[index], s, protocol="rgb-first")
    outs = {"HR": hr}
    for name in methods:
        net = None if name == "bicubic" else trained[name][0]
        outs[name] = ml.sr.quantize(ml.sr.upscale(net, lr[None], s, color=True)[0].cpu())
    outputs[key, index] = outs
    top, left = worst_crop(hr, outs["bicubic"], crop)
    fig, axes = plt.subplots(3, 2, figsize=(4.6, 7.2), layout="constrained")
    for ax, (name, img) in zip(axes.flat, outs.items()):
        ax.imshow(img[:, top:top + crop, left:left + crop].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(name if name == "HR" else f"{name}: {ml.sr.psnr(img, hr, shave=s):.2f} dB", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{key} #{index}, x{s}: {crop}x{crop} HR crop where bicubic errs most", fontsize=10)
    plt.show()

# %% [markdown]
# A wipe between bicubic (left) and WindowSR (right) on a whole image shows the same
# difference at the scale a viewer sees it:

# %%
key, index = crop_images[-1]
outs = outputs[key, index]
cut = outs["HR"].shape[-1] // 2
wipe = torch.cat([outs["bicubic"][..., :cut], outs["windowsr"][..., cut:]], dim=-1)
fig, ax = plt.subplots(figsize=(6, 6 * wipe.shape[1] / wipe.shape[2]))
ax.imshow(wipe.permute(1, 2, 0).numpy())
ax.axvline(cut, color="white", linewidth=1)
ax.set_title(f"{key} #{index}, x{s}. left: bicubic | right: WindowSR", fontsize=10)
ax.axis("off")
plt.show()

# %% tags=["remove-cell"]
# In a live Jupyter session, set LIVE = True and run this cell: a slider moves the wipe and a
# menu picks the method (needs ipywidgets). The static book shows the figure above instead,
# and batch runs skip the widget (widget messages can stall a headless notebook client).
LIVE = False
if LIVE:
    import ipywidgets as widgets

    def wipe_at(image, method, split):
        outs = outputs[image]
        c = int(split * outs["HR"].shape[-1])
        shown = torch.cat([outs["bicubic"][..., :c], outs[method][..., c:]], dim=-1)
        fig, ax = plt.subplots(figsize=(6, 6 * shown.shape[1] / shown.shape[2]))
        ax.imshow(shown.permute(1, 2, 0).numpy())
        ax.axvline(c, color="white", linewidth=1)
        ax.set_title(f"left: bicubic | right: {method}")
        ax.axis("off")
        plt.show()

    widgets.interact(wipe_at, image=widgets.Dropdown(options=[(f"{k} #{i}", (k, i)) for k, i in outputs]),
                     method=widgets.Dropdown(options=ml.sr.MODEL_NAMES + ("HR",)),
                     split=widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05))

# %% [markdown]
# ## 8.3.7 Beyond PSNR: generative super-resolution
#
# Every network in this chapter minimizes a pixel loss, and so predicts the *average* of
# the HR images compatible with the LR input: blurry where the input is ambiguous. Blau
# and Michaeli {cite}`blau2018perception` proved that distortion (PSNR) and perceptual
# quality cannot both be optimal: beyond a point, looking more natural costs PSNR. PULSE
# {cite}`menon2020pulse` went to the other extreme: it searches the latent space of a face
# GAN for a sharp image that *downscales* to the input, "at resolutions and scale factors
# previously unseen", with invented detail. DiT4SR {cite}`duan2025dit4sr` tames a large
# diffusion transformer for real-world SR, feeding the LR latent into its attention; it
# is evaluated with perceptual, no-reference metrics (LPIPS, MUSIQ, MANIQA), not with the
# PSNR protocol of notebook 8.1, and costs a many-step diffusion sampler per image, orders
# of magnitude more than any network here. Chapter 7 builds diffusion models from scratch;
# the cost question there is the number of sampling steps.

# %% [markdown]
# ## 8.3.8 Measured in this chapter
#
# The closing summary: quality of each trained network (notebook 8.2's protocol, x3) and its
# cost per x3 output frame.

# %%
rows = []
for name in methods:
    row = {"method": name}
    for k in eval_sets:
        row[k] = f"{metrics[name][k]['psnr']:.2f} / {metrics[name][k]['ssim']:.4f}"
    row["gflops"] = costs[name, s, "cpu"]["flops"] / 1e9
    row["cpu ms"] = costs[name, s, "cpu"]["ms"]
    if (name, s, "cuda") in costs:
        row["gpu"] = costs[name, s, "cuda"]["timing"]
    rows.append(row)
ml.bench.Table(rows, title=f"x{s}, {width}x{height} output frames ({ml.scale()} scale)",
               headers={**{k: f"{k} PSNR (dB) / SSIM" for k in eval_sets}, "gflops": "GFLOPs / frame",
                        "cpu ms": "CPU ms / frame", "gpu": "GPU time / frame"},
               formats={"gflops": "{:.1f}", "cpu ms": "{:,.0f}"})

# %% tags=["remove-cell"]
ml.glue("summary_hardware", f"the {ml.scale()} scale; CPU {cpu_name} with {hardware['cores']} cores and "
        f"{hardware['torch threads']} threads; accelerator: {hardware['accelerator']}; torch {hardware['torch']}; "
        f"{hardware['precision']}")

# %% [markdown]
# These numbers come from {glue:}`summary_hardware`. Quality numbers at the cpu and smoke
# scales come from minutes of training (notebook 8.2) and sit below the papers'; the
# costs do not depend on training and hold for any weights.
#
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | ESPCN {cite}`shi2016espcn` | real-time SR of 1080p video on one K2 GPU | x3 at {glue:}`frame`: {glue:}`espcn_x3_cpu_fps` fps on this CPU (real time: {glue:}`espcn_realtime_cpu`); GPU: {glue:}`espcn_x3_gpu` |
# | FSRCNN {cite}`dong2016fsrcnn` | more than 40x faster than SRCNN, at better quality | speed-up of FSRCNN over SRCNN 9-1-5 at x3 on {glue:}`ab_device`: {glue:}`fsrcnn_vs_srcnn` ({glue:}`fsrcnn_vs_srcnn_verdict`; our SRCNN is the cheap 9-1-5) |
# | SwinIR {cite}`liang2021swinir` | about RCAN's FLOPs (788.6G vs 850.6G) but 3x its runtime (0.539 s vs 0.180 s) | WindowSR has {glue:}`windowsr_over_espcn_flops`x ESPCN's FLOPs; ESPCN's speed-up over it: {glue:}`espcn_vs_windowsr`; WindowSR is {glue:}`windowsr_per_flop` |
# | ClassSR {cite}`kong2021classsr` | routing sub-images by difficulty saves up to 50% FLOPs on DIV8K | variance routing, half the network FLOPs: {glue:}`route_half_loss` dB lost of {glue:}`route_gain_total` dB (section 8.3.5) |
#
# **Further reading** (claims this notebook does not measure):
# - HAT {cite}`chen2023hat` and DRCT {cite}`hsu2024drct`, on Set5 x4: HAT 33.04 dB (20.8M
#   parameters), DRCT 33.11 dB (14.1M), HAT-L 33.30, DRCT-L 33.37, after training on
#   DIV2K/ImageNet for days; our WindowSR has {glue:}`windowsr_params` parameters.
# - CATANet {cite}`liu2025catanet`: content-aware token groups instead of fixed windows, up
#   to 0.33 dB over SPIN at nearly twice its speed.
# - PULSE {cite}`menon2020pulse` and DiT4SR {cite}`duan2025dit4sr`: realistic detail at large
#   scale factors and in real-world SR, measured by perceptual metrics (section 8.3.7).

# %% tags=["remove-cell"]
ml.glue("windowsr_params", f"{ml.bench.count_params(ml.sr.build_model('windowsr', s)):,}")

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: a 4K frame (measure, easy)
# Predict ESPCN's time for a frame with twice the height and width (4K for 1080p) at x3
# from its 1080p time, then measure it. Is the prediction right, and why (or why not)?

# %% tags=["solution", "hide-cell"]
# Solution 1
espcn_net = nets["espcn"]
lr_4k = torch.rand(1, 1, 2 * height // s, 2 * width // s, device=dev)
size_ab = ml.bench.compare(runner(espcn_net, lr_4k), runner(espcn_net, lr_frame), **ab)
flops_4k = ml.bench.count_flops(espcn_net, lr_4k) / ml.bench.count_flops(espcn_net, lr_frame)
print(f"ESPCN x{s} on {dev.type}: 4x the pixels, {flops_4k:.2f}x the FLOPs, time ratio {size_ab}")

# %% tags=["solution", "remove-cell"]
# Solution 1: the numbers its text quotes
ml.glue("ex1_ratio", f"{size_ab.speedup:.2f}x (IQR {size_ab.lo:.2f}-{size_ab.hi:.2f}x)")
ml.glue("ex1_flops", flops_4k, ".2f")
ml.glue("ex1_reading", ml.bench.verdict(
    size_ab.speedup, size_ab.lo, size_ab.hi, reference=flops_4k,
    above="above the prediction: per pixel the large frame ran slower, as when its activations no longer "
          "fit in a cache",
    below="below the prediction: the small frame did not keep the machine busy (fixed costs per call, "
          "idle threads or GPU cores), so it cost more per pixel",
    same="the prediction holds within the spread: time is proportional to pixels here"))

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# Every layer of a convolutional network costs in proportion to its pixels, so the frame
# with twice the height and width has exactly {glue:}`ex1_flops` times the FLOPs, and the
# prediction is 4 times the time. Measured (interleaved): {glue:}`ex1_ratio`, which is
# {glue:}`ex1_reading`.
# :::

# %% [markdown]
# ### Exercise 2: FSRCNN with a sub-pixel upsampler (implement, medium)
# Replace FSRCNN's transposed convolution by a $3\times3$ convolution to $s^2$ channels and
# a pixel shuffle (ESPCN's upsampler), check the output shape, and compare its speed with
# FSRCNN's on a frame with `ml.bench.compare`. How many FLOPs does it add or save?

# %% tags=["solution", "hide-cell"]
# Solution 2
class FSRCNNShuffle(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s, self.body = s, ml.sr.FSRCNN(s).body
        self.tail = nn.Conv2d(56, s * s, 3, padding=1)

    def forward(self, x):
        return ml.sr.pixel_shuffle(self.tail(self.body(x)), self.s) + ml.sr.bicubic_skip(x, self.s)


shuffle = FSRCNNShuffle(s).to(dev).eval()
assert shuffle(lr_frame).shape == (1, 1, height, width)
shuffle_ab = ml.bench.compare(runner(nets["fsrcnn"], lr_frame), runner(shuffle, lr_frame), **ab)
tail_flops = ml.bench.count_flops(shuffle.tail, features)
print(f"upsampler FLOPs: transposed conv {ml.bench.fmt_flops(flops['deconv'])}, 3x3 conv {ml.bench.fmt_flops(tail_flops)}")
print(f"speed-up of the sub-pixel FSRCNN on {dev.type}: {shuffle_ab} -> {shuffle_ab.verdict}")

# %% tags=["solution", "remove-cell"]
# Solution 2: the numbers its text quotes
ml.glue("ex2_speed", f"{shuffle_ab.speedup:.2f}x (IQR {shuffle_ab.lo:.2f}-{shuffle_ab.hi:.2f}x: {shuffle_ab.verdict})")
ml.glue("ex2_flops", tail_flops / flops["deconv"], ".2f")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The $3\times3$ convolution to 9 channels costs $2 \cdot 56 \cdot 9 \cdot 9 = 9{,}072$ FLOPs per
# LR pixel, the same as the $9\times9$ transposed convolution with one output channel
# ($2 \cdot 56 \cdot 81$): the counter gives a ratio of {glue:}`ex2_flops`. It is the same
# amount of arithmetic, run as a plain convolution; the whole FSRCNN with it is
# {glue:}`ex2_speed` against FSRCNN with the transposed convolution. (Notebook 8.2's
# Exercise 3 shows that the two upsamplers can compute exactly the same function.)
# :::

# %% [markdown]
# ### Exercise 3: an oracle router (measure, medium)
# In section 8.3.5, replace the variance score by the oracle: the true error of bicubic on
# each tile, which a real system cannot know. How much closer to the full-network PSNR does
# routing half the tiles get? What does that say about the value of a better classifier?

# %% tags=["solution", "hide-cell"]
# Solution 3
def routed_sse(score_of, fraction=0.5):
    """Squared error over all kept images when the `fraction` highest-scoring HR tiles get WindowSR."""
    total = 0.0
    for hr_u8, net_u8, bic_u8 in kept:
        hr_y, sr_net, sr_bic = (t.to(dev).double() for t in (hr_u8, net_u8, bic_u8))     # 0-255 levels
        score_map = F.avg_pool2d(score_of(hr_y, sr_net, sr_bic)[None], tile * s, ceil_mode=True,
                                 divisor_override=1)                        # sum over each HR tile
        hard = torch.zeros(score_map.numel(), dtype=torch.bool, device=dev)
        hard[score_map.flatten().argsort(descending=True)[: round(fraction * score_map.numel())]] = True
        mask = hard.view(score_map.shape[-2:]).repeat_interleave(tile * s, 0).repeat_interleave(tile * s, 1)
        mix = torch.where(mask[: hr_y.shape[-2], : hr_y.shape[-1]], sr_net, sr_bic)
        total += ((mix - hr_y)[..., s:-s, s:-s] ** 2).sum().item()
    return total


oracle = {"bicubic error": lambda hr, net, bic: (bic - hr) ** 2,
          "network gain": lambda hr, net, bic: (bic - hr) ** 2 - (net - hr) ** 2}
oracle_psnr = {k: 10 * math.log10(255.0**2 * pixels / routed_sse(f)) for k, f in oracle.items()}
print(f"half the tiles to WindowSR: variance score {route[3]['psnr']:.2f} dB, oracle bicubic error "
      f"{oracle_psnr['bicubic error']:.2f} dB, oracle network gain {oracle_psnr['network gain']:.2f} dB; "
      f"all tiles {route[-1]['psnr']:.2f} dB, none {route[0]['psnr']:.2f} dB")

# %% tags=["solution", "remove-cell"]
# Solution 3: the numbers its text quotes
def share(psnr):
    """The fraction of the full network's gain over bicubic that a route keeps, as text."""
    total = route[-1]["psnr"] - route[0]["psnr"]
    return f"{100 * (psnr - route[0]['psnr']) / total:.0f}%" if total > 0 else "(undefined: no gain at this scale)"


ml.glue("ex3_oracle", oracle_psnr["bicubic error"], ".2f")
ml.glue("ex3_share", share(oracle_psnr["bicubic error"]))
ml.glue("ex3_gain_share", share(oracle_psnr["network gain"]))
ml.glue("ex3_var_share", share(route[3]["psnr"]))

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# With half the tiles routed by the oracle of bicubic's error, PSNR is {glue:}`ex3_oracle` dB:
# it keeps {glue:}`ex3_share` of the full network's gain over bicubic, against
# {glue:}`ex3_var_share` for the variance score. The oracle ranks tiles by the error bicubic
# actually makes, so it hands the network the tiles where bicubic is worst. Ranking by what
# the network *gains* on each tile (the second oracle: the squared error it removes, summed
# over the tile) is the best any router can do with this split, up to the shaved border
# that the score counts and the PSNR does not: it keeps {glue:}`ex3_gain_share`. The distance between the
# variance score and that bound is what a better difficulty classifier could recover; the
# distance from the bound to 100% is the price of running the network on half the tiles.
# :::

# %% [markdown]
# ### Exercise 4: a banded bicubic (implement, medium)
# `ml.sr.imresize` multiplies by dense weight matrices although an upscale needs only 4
# weights per output pixel and axis. Write `imresize_banded(x, s)` for an integer upscale
# that gathers the 4 taps of each output pixel from `ml.sr.resize_weights`, check it
# against `ml.sr.imresize`, and compare their speed on an LR frame.

# %% tags=["solution", "hide-cell"]
# Solution 4
def taps_of(n, s):
    """The 4 (index, weight) taps per output pixel of a MATLAB bicubic upscale by s: (n s, 4) each."""
    w = ml.sr.resize_weights(n, n * s, float(s))
    idx = w.abs().topk(4, dim=1).indices
    return idx, w.gather(1, idx).float()


def imresize_banded(x, s):
    """MATLAB bicubic upscale of (B, C, h, w) by an integer s: 4 taps per output pixel and axis."""
    (ih, wh), (iw, ww) = taps_of(x.shape[-2], s), taps_of(x.shape[-1], s)
    ih, wh, iw, ww = ih.to(x.device), wh.to(x.device), iw.to(x.device), ww.to(x.device)
    rows = (x[..., ih, :] * wh[..., None]).sum(-2)                  # (B, C, h s, w)
    return (rows[..., iw] * ww).sum(-1)                             # (B, C, h s, w s)


assert all(int((ml.sr.resize_weights(n, n * s, float(s)) != 0).sum(1).max()) <= 4 for n in (7, 64))
err = (imresize_banded(lr_frame, s) - ml.sr.imresize(lr_frame, s)).abs().max().item()
assert err < 1e-5
band_ab = ml.bench.compare(lambda: ml.sr.imresize(lr_frame, s), lambda: imresize_banded(lr_frame, s), **ab)
print(f"banded == dense imresize, max error < 1e-5: True; speed-up of the banded one on {dev.type}: "
      f"{band_ab} -> {band_ab.verdict}")

# %% tags=["solution", "remove-cell"]
# Solution 4: the numbers its text quotes
ml.glue("ex4_speed", f"{band_ab.speedup:.2f}x (IQR {band_ab.lo:.2f}-{band_ab.hi:.2f}x: {band_ab.verdict})")
ml.glue("ex4_why", {"slower": "a gather with a broadcast multiply moves far more memory per FLOP than a BLAS "
                              "matmul, so here the FLOPs saved are not time saved",
                    "faster": "the FLOPs saved are also time saved here",
                    "no measurable difference": "the FLOPs saved do not show up as time: memory traffic, not "
                                                "arithmetic, sets the pace of both"}[band_ab.verdict])

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# For an upscale the kernel has support 4 (no widening), so each row of the weight matrix
# has at most 4 non-zeros, folded together where the mirror makes two taps land on one
# pixel (the first assert). Gathering them and taking a weighted sum is the same linear map,
# so the outputs agree to float32 rounding. The banded version does 8 FLOPs per output pixel
# and axis pass instead of $2h$ or $2w$: {glue:}`imresize_vs_banded` times fewer for a x3
# frame. In time its speed-up over the dense matmuls is {glue:}`ex4_speed`: {glue:}`ex4_why`.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Cost per output frame: FLOPs (counted on the `meta` device, free) and measured time;
#   real time at $f$ fps needs FLOPs-per-frame $\times f$ FLOP/s of *achieved* throughput.
# - FLOPs do not predict time: transposed convolutions and attention (masks, softmax,
#   window shuffling) achieve a fraction of the FLOP/s of plain convolutions. Compare
#   speeds as interleaved ratios with their spread, on the hardware that will run them.
# - Post-upsampling is what makes SR cheap: on {glue:}`ab_device` ESPCN's speed-up on a x3
#   frame is {glue:}`espcn_vs_srcnn` over SRCNN and {glue:}`espcn_vs_windowsr` over
#   WindowSR. Where the error is concentrated, routing easy regions to a cheap path
#   (ClassSR) saves more.
# - PSNR rewards the average answer; generative SR (PULSE, DiT4SR) trades PSNR for
#   realism at a much higher cost, and is measured differently.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
