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
# needs about as many FLOPs as the CNN RCAN but runs three times slower, and HAT
# {cite}`chen2023hat` and DRCT {cite}`hsu2024drct` are larger still. This notebook measures
# what one 1080p output frame costs for each network of notebook 8.2, in FLOPs and in
# milliseconds on the machine at hand, asks which of them are real time, draws the
# quality-versus-speed trade-off, tries ClassSR's idea {cite}`kong2021classsr` of spending
# less on easy regions, and shows the outputs side by side.
#
# **Learning objectives.** After this notebook you can
# 1. measure FLOPs (without running the model) and milliseconds per output frame;
# 2. decide whether a network is real time at 30 or 60 fps on given hardware;
# 3. explain why FLOPs do not predict time (transposed convolutions, attention);
# 4. read a quality-versus-speed Pareto front and route regions by difficulty;
# 5. compare SR outputs visually, and know why PSNR is not the goal of generative SR.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

hardware = ml.describe()
dev = ml.device()
try:  # the CPU's model name, for the tables (Linux); the banner shows the architecture
    with open("/proc/cpuinfo") as f:
        cpu_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
except (OSError, StopIteration):
    cpu_name = hardware["cpu"]

# %% [markdown]
# ## 1. The cost of a frame
#
# `ml.sr.frame_cost` feeds a network the LR frame of a `height x width` output (for 1080p at
# x3: 360x640) and reports two costs. **FLOPs** are counted by running the model on
# PyTorch's `meta` device, where tensors have shapes but no data: the FLOP counter sees
# every convolution and matrix product at full size, at no cost. **Time** is the median of
# repeated calls with `ml.bench.time_fn` (warm-up, CUDA synchronization) under
# `torch.inference_mode`.

# %%
ml.show(ml.sr.frame_cost)

# %% [markdown]
# Cost does not depend on the weights, so we measure every network at x2, x3 and x4 (the
# trained models of notebook 8.2 only exist at the scales trained at this book scale). The
# baseline is PyTorch's bicubic (`ml.sr.bicubic_skip`), what a real pipeline would use; it
# is a native kernel, not a matrix product, so the FLOP counter reports 0 for it. A 1080p
# frame takes seconds on a small CPU, so at the cpu scale each frame is timed once (the
# warm-up effects that `time_fn` guards against are milliseconds); the gpu scale repeats.

# %%
class Bicubic(nn.Module):
    """PyTorch's bicubic upscaling as a module (the baseline of the cost table)."""

    def __init__(self, scale):
        super().__init__()
        self.scale, self.num_channels = scale, 1

    def forward(self, x):
        return ml.sr.bicubic_skip(x, self.scale)


height, width = ml.pick(smoke=(120, 240), cpu=(1080, 1920), gpu=(1080, 1920))
ml.glue("frame", f"{width}x{height}")
devices = [torch.device("cpu")] + ([dev] if dev.type == "cuda" else [])
timing = {"cpu": dict(warmup=ml.pick(smoke=0, cpu=0, gpu=1), repeat=ml.pick(smoke=1, cpu=1, gpu=3)),
          "cuda": dict(warmup=3, repeat=20)}
methods = ["bicubic", *ml.sr.MODEL_NAMES]
costs = {}
for s in (2, 3, 4):
    for name in methods:
        model = Bicubic(s) if name == "bicubic" else ml.sr.build_model(name, s)
        for d in devices:
            costs[name, s, d.type] = ml.sr.frame_cost(model.to(d).eval(), s, height, width, device=d,
                                                      **timing[d.type])
rows = []
for s in (2, 3, 4):
    for name in methods:
        cpu = costs[name, s, "cpu"]
        row = {"scale": f"x{s}", "method": name, "GFLOPs / frame": cpu["flops"] / 1e9,
               "CPU ms / frame": cpu["ms"], "CPU fps": cpu["fps"]}
        if dev.type == "cuda":
            row["GPU ms / frame"] = costs[name, s, "cuda"]["ms"]
            row["GPU fps"] = costs[name, s, "cuda"]["fps"]
        rows.append(row)
ml.bench.Table(rows, title=f"cost of one {width}x{height} Y output frame ({cpu_name}, "
                           f"{hardware['torch threads']} threads; {hardware['accelerator']})",
               formats={"GFLOPs / frame": "{:.1f}", "CPU ms / frame": "{:,.0f}", "CPU fps": "{:.2f}",
                        "GPU ms / frame": "{:.2f}", "GPU fps": "{:,.0f}"})

# %% [markdown]
# ## 2. Real time?
#
# A network is real time at $f$ frames per second when one frame takes at most $1000/f$
# ms, which also means the hardware must sustain FLOPs-per-frame $\times f$ FLOP/s. We
# compare with the matmul peak of this machine (notebook 1.1, `ml.bench.measure_peaks`):
# a network whose requirement exceeds the peak cannot be real time here whatever its
# implementation.

# %%
peak = ml.bench.measure_peaks(torch.device("cpu"))["flops_per_s"]
ml.glue("cpu_peak", peak / 1e9, ".0f")
rows = []
for s in (2, 3, 4):
    for name in ml.sr.MODEL_NAMES:
        c = costs[name, s, "cpu"]
        row = {"scale": f"x{s}", "network": name, "FLOP/s needed at 30 fps": 30 * c["flops"],
               "CPU fps": c["fps"], "real time (30 fps) on CPU": c["fps"] >= 30}
        if dev.type == "cuda":
            g = costs[name, s, "cuda"]
            row["GPU fps"] = g["fps"]
            row["real time (30 / 60 fps) on GPU"] = f"{g['fps'] >= 30} / {g['fps'] >= 60}"
        rows.append(row)
espcn = costs["espcn", 3, "cpu"]
ml.glue("espcn_x3_cpu_fps", espcn["fps"], ".2f")
ml.glue("espcn_x3_cpu_ms", espcn["ms"], ",.0f")
ml.glue("espcn_x3_gflops", espcn["flops"] / 1e9, ".1f")
ml.glue("espcn_x3_need", 30 * espcn["flops"] / 1e9, ".0f")
ml.glue("espcn_realtime_cpu", "yes" if espcn["fps"] >= 30 else "no")
ml.glue("espcn_fps_bound", peak / espcn["flops"], ".1f")
ml.glue("espcn_x3_gpu", f"{costs['espcn', 3, 'cuda']['fps']:,.0f} fps on {hardware['accelerator']}"
        if dev.type == "cuda" else "no GPU in this run")
ml.bench.Table(rows, title=f"real time at {width}x{height}? (CPU matmul peak {peak / 1e9:.0f} GFLOP/s)",
               formats={"FLOP/s needed at 30 fps": ml.bench.fmt_flops, "CPU fps": "{:.2f}",
                        "GPU fps": "{:,.0f}"})

# %% [markdown]
# ESPCN at x3 needs {glue:}`espcn_x3_gflops` GFLOPs per {glue:}`frame` frame, so
# {glue:}`espcn_x3_need` GFLOP/s at 30 fps, against a matmul peak of {glue:}`cpu_peak`
# GFLOP/s on this CPU: even at that peak it could reach at most {glue:}`espcn_fps_bound`
# fps, and it runs at {glue:}`espcn_x3_cpu_fps` fps (real time here:
# {glue:}`espcn_realtime_cpu`). The claim was for a GPU, which sustains TFLOP/s: the
# requirement is the FLOPs per frame times the frame rate, and only hardware that
# *achieves* that rate on these layers is real time. GPU: {glue:}`espcn_x3_gpu`.
#
# ## 3. FLOPs do not predict time
#
# Divide FLOPs by time and you get the FLOP/s each network achieves: how well its
# operations use the machine.

# %%
rows = []
for name in ml.sr.MODEL_NAMES:
    for s in (2, 3, 4):
        c = costs[name, s, "cpu"]
        rows.append({"network": name, "scale": f"x{s}", "achieved GFLOP/s (CPU)": c["flops"] / c["ms"] / 1e6,
                     "% of CPU peak": 100 * c["flops"] / (c["ms"] / 1e3) / peak})
achieved = {(r["network"], r["scale"]): r["achieved GFLOP/s (CPU)"] for r in rows}
ml.glue("espcn_gflops_s", achieved["espcn", "x3"], ".1f")
ml.glue("srcnn_over_espcn_time", costs["srcnn", 3, "cpu"]["ms"] / costs["espcn", 3, "cpu"]["ms"], ".1f")
ml.glue("windowsr_over_espcn_time", costs["windowsr", 3, "cpu"]["ms"] / costs["espcn", 3, "cpu"]["ms"], ".1f")
ml.glue("windowsr_over_espcn_flops", costs["windowsr", 3, "cpu"]["flops"] / costs["espcn", 3, "cpu"]["flops"], ".1f")
ml.glue("fsrcnn_gflops_s", achieved["fsrcnn", "x3"], ".1f")
ml.glue("windowsr_gflops_s", achieved["windowsr", "x3"], ".1f")
ml.bench.Table(rows, formats={"achieved GFLOP/s (CPU)": "{:.1f}", "% of CPU peak": "{:.0f}%"},
               title="achieved FLOP/s per network (CPU)")

# %% [markdown]
# At x3 ESPCN runs at {glue:}`espcn_gflops_s` GFLOP/s, FSRCNN at {glue:}`fsrcnn_gflops_s`
# and WindowSR at {glue:}`windowsr_gflops_s`: WindowSR has {glue:}`windowsr_over_espcn_flops`
# times ESPCN's FLOPs per frame but takes {glue:}`windowsr_over_espcn_time` times its time.
# Two reasons stand out. FSRCNN has the fewest
# FLOPs, but a third of them sit in a transposed convolution with one output channel, an
# operation libraries optimize far less than a plain convolution; the time split of its
# two parts shows it:

# %%
fsrcnn = ml.sr.build_model("fsrcnn", 3).eval()
lr_frame = torch.rand(1, 1, height // 3, width // 3)
with torch.inference_mode():
    features = fsrcnn.body(lr_frame)
    parts = {"body (convs at LR)": (fsrcnn.body, lr_frame), "transposed conv (upsampler)": (fsrcnn.upsample, features)}
    rows = []
    for part, (module, inp) in parts.items():
        t = ml.bench.time_fn(module, inp, warmup=ml.pick(smoke=1, cpu=1, gpu=2), repeat=ml.pick(smoke=1, cpu=2, gpu=5)).median
        f = ml.bench.count_flops(module, inp)
        rows.append({"part": part, "GFLOPs": f / 1e9, "ms": 1e3 * t, "GFLOP/s": f / t / 1e9})
imresize_cost = ml.sr.frame_cost(ml.sr.PreUpsample(nn.Identity(), 3), 3, height, width, warmup=0, repeat=1)
ml.glue("imresize_gflops", imresize_cost["flops"] / 1e9, ".1f")
share_flops = rows[1]["GFLOPs"] / (rows[0]["GFLOPs"] + rows[1]["GFLOPs"])
share_time = rows[1]["ms"] / (rows[0]["ms"] + rows[1]["ms"])
ml.glue("deconv_flops_share", 100 * share_flops, ".0f")
ml.glue("deconv_time_share", 100 * share_time, ".0f")
ml.bench.Table(rows, title="FSRCNN x3 on one frame (CPU)", formats={"GFLOPs": "{:.2f}", "ms": "{:,.0f}", "GFLOP/s": "{:.1f}"})

# %% [markdown]
# The transposed convolution is {glue:}`deconv_flops_share`% of FSRCNN's FLOPs but
# {glue:}`deconv_time_share`% of its time. ESPCN's sub-pixel convolution computes the same
# kind of upsampler as an ordinary convolution plus a free reshuffle (notebook 8.2), which
# is exactly its argument for being faster.
#
# (SRCNN's MATLAB bicubic step is counted too: `ml.sr.imresize` multiplies by dense
# weight matrices, {glue:}`imresize_gflops` GFLOPs per {glue:}`frame` frame at x3, although
# each output pixel only needs 16 weights; a banded implementation would do the same
# work with a few hundred times fewer FLOPs. Exact is not the same as efficient.)
#
# Attention is the second case. Its FLOPs are small matrix products inside $8\times8$
# windows, and around them sit the operations that move memory without counting as FLOPs:
# building the window mask with its relative position bias, the softmax, rolling the grid
# for shifted windows, partitioning and merging windows, layer norms. SwinIR reports the
# same on a GPU: about as many FLOPs as the CNN RCAN (788.6G vs 850.6G) but 0.539 s
# instead of 0.180 s per image {cite}`liang2021swinir`.
#
# ## 4. Quality versus speed
#
# Each trained network of notebook 8.2 is a point: Set5 PSNR against CPU milliseconds per
# frame. The Pareto front holds the networks that no other beats on both.

# %%
s_main = 3
trained = {name: ml.sr.trained_model(name, s_main) for name in ml.sr.MODEL_NAMES}
limit = ml.sr.recipe("espcn", s_main)["eval_limit"]
set5 = ml.sr.eval_images("Set5", limit)
bicubic_set5 = ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s_main), set5, s_main)
points = [{"name": "bicubic", "ms per frame (CPU)": costs["bicubic", s_main, "cpu"]["ms"],
           "Set5 PSNR (dB)": bicubic_set5["psnr"]}]
for name, (model, record) in trained.items():
    points.append({"name": name, "ms per frame (CPU)": costs[name, s_main, "cpu"]["ms"],
                   "Set5 PSNR (dB)": record["metrics"]["Set5"]["psnr"]})
ml.plot.pareto(points, x="ms per frame (CPU)", y="Set5 PSNR (dB)", logx=True,
               title=f"x{s_main}: quality vs CPU time per {width}x{height} frame ({ml.scale()} scale)")
plt.show()
front = ml.plot.pareto_front(points, x="ms per frame (CPU)", y="Set5 PSNR (dB)")
ml.glue("pareto_front", ", ".join(p["name"] for p in front))
print("on the front:", ", ".join(p["name"] for p in front))

# %% [markdown]
# On the front at this scale: {glue:}`pareto_front`. A point off the front is a network
# some other network beats on both quality and speed here. The front depends on the
# hardware (the time axis) and on the training budget (the quality axis): measure it
# where the model will run, after the training it will get.
#
# ## 5. Spending less on easy regions (ClassSR)
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
route_sets = [img for key in ml.sr.recipe("windowsr", s_main)["eval_sets"] for img in ml.sr.eval_images(key, limit)]
tile = 16
fractions = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
mse = {f: 0.0 for f in fractions}
pixels = 0
for img in route_sets:
    hr, lr = ml.sr.make_pair(img, s_main)
    hr_y = ml.sr.rgb_to_y(hr)
    sr_net = ml.sr.quantize(ml.sr.upscale(model, lr[None], s_main)[0].cpu())
    sr_bic = ml.sr.rgb_to_y(ml.sr.quantize(ml.sr.imresize(lr[None], s_main)))[0]
    lr_y = ml.sr.rgb_to_y(lr)[None]
    # difficulty of each LR tile: variance of its pixels (smooth = easy)
    score = F.avg_pool2d(lr_y**2, tile, ceil_mode=True) - F.avg_pool2d(lr_y, tile, ceil_mode=True) ** 2
    order = score.flatten().argsort(descending=True)
    for f in fractions:
        hard = torch.zeros(score.numel(), dtype=torch.bool)
        hard[order[: round(f * score.numel())]] = True
        mask = hard.view(score.shape[-2:]).repeat_interleave(tile * s_main, 0).repeat_interleave(tile * s_main, 1)
        mask = mask[: hr_y.shape[-2], : hr_y.shape[-1]]
        mix = torch.where(mask, sr_net, sr_bic)
        err = ((mix - hr_y) * 255)[..., s_main:-s_main, s_main:-s_main].double()
        mse[f] += err.pow(2).sum().item()
    pixels += err.numel()
route = [{"fraction of tiles to WindowSR": f, "FLOPs (% of WindowSR)": 100 * f,
          "PSNR (dB)": 10 * torch.log10(torch.tensor(255.0**2 * pixels / mse[f])).item()} for f in fractions]
full, half = route[-1]["PSNR (dB)"], next(r for r in route if r["fraction of tiles to WindowSR"] == 0.5)["PSNR (dB)"]
ml.glue("route_half_loss", full - half, ".2f")
ml.glue("route_gain_total", full - route[0]["PSNR (dB)"], ".2f")
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot([r["FLOPs (% of WindowSR)"] for r in route], [r["PSNR (dB)"] for r in route], "o-")
ax.set(xlabel="network FLOPs, % of running WindowSR everywhere", ylabel="PSNR (dB, pooled)",
       title=f"routing LR tiles by variance, x{s_main}")
plt.show()
ml.bench.Table(route, formats={"PSNR (dB)": "{:.2f}", "FLOPs (% of WindowSR)": "{:.0f}%"},
               title="bicubic for smooth tiles, WindowSR for the rest (PSNR over all pixels of the sets)")

# %% [markdown]
# Running WindowSR everywhere gains {glue:}`route_gain_total` dB over bicubic on these
# images (PSNR pooled over all their pixels); sending only the busiest half of the tiles
# to it gives up {glue:}`route_half_loss` dB of that for half the network FLOPs. The smooth
# tiles were not where the network earned its gain. A learned classifier and a fine-tuned
# set of branches (ClassSR) do better than a variance threshold; the principle is the
# same: spend FLOPs where the error is.
#
# ## 6. Looking at the outputs
#
# PSNR averages over pixels; the eye looks at edges and textures. We crop each test image
# where bicubic errs most (the largest local error, found automatically) and show the same
# crop for every method, enlarged without smoothing, with the PSNR of the whole image.

# %%
def worst_crop(hr, bicubic, size):
    """Top-left corner of the size x size window where bicubic's Y error is largest."""
    err = (ml.sr.rgb_to_y(hr) - ml.sr.rgb_to_y(bicubic)).abs()[None]
    local = F.avg_pool2d(err, size, stride=max(1, size // 4))
    i, j = divmod(local.flatten().argmax().item(), local.shape[-1])
    return i * max(1, size // 4), j * max(1, size // 4)


crop_images = [("Set5", 2)] + ml.pick(smoke=[], cpu=[("Set14", 13)], gpu=[("Set14", 13)])  # butterfly, zebra
crop = 48
fig, axes = plt.subplots(len(crop_images), len(methods) + 1, figsize=(2.1 * (len(methods) + 1), 2.4 * len(crop_images)),
                         squeeze=False)
outputs = {}
for row, (key, index) in enumerate(crop_images):
    hr, lr = ml.sr.make_pair(ml.data.sr_images(key)[index], s_main)
    outs = {"HR": hr}
    for name in methods:
        net = None if name == "bicubic" else trained[name][0]
        outs[name] = ml.sr.quantize(ml.sr.upscale(net, lr[None], s_main, color=True)[0].cpu())
    outputs[key, index] = (hr, lr, outs)
    top, left = worst_crop(hr, outs["bicubic"], crop)
    for ax, (name, img) in zip(axes[row], outs.items()):
        ax.imshow(img[:, top:top + crop, left:left + crop].permute(1, 2, 0).numpy(), interpolation="nearest")
        label = name if name == "HR" else f"{name}\n{ml.sr.psnr(img, hr, shave=s_main):.2f} dB"
        ax.set_title(label, fontsize=9)
        ax.axis("off")
fig.suptitle(f"x{s_main}, {crop}x{crop} HR crops where bicubic errs most")
plt.show()

# %% [markdown]
# With `ipywidgets` and a live kernel, a slider wipes between bicubic (left) and a chosen
# network (right) on a whole image; the static figures above show every method in the
# book.

# %% tags=["remove-output"]
try:
    import ipywidgets as widgets
except ImportError:
    widgets = None
    print("ipywidgets is not installed; the static figures above show every method.")
if widgets is not None:
    def wipe(image, method, split):
        hr, lr, outs = outputs[image]
        cut = int(split * hr.shape[-1])
        shown = torch.cat([outs["bicubic"][..., :cut], outs[method][..., cut:]], dim=-1)
        fig, ax = plt.subplots(figsize=(6, 6 * hr.shape[1] / hr.shape[2]))
        ax.imshow(shown.permute(1, 2, 0).numpy())
        ax.axvline(cut, color="white", linewidth=1)
        ax.set_title(f"left: bicubic | right: {method}")
        ax.axis("off")
        plt.show()

    widgets.interact(wipe, image=widgets.Dropdown(options=[(f"{k} #{i}", (k, i)) for k, i in outputs]),
                     method=widgets.Dropdown(options=ml.sr.MODEL_NAMES + ("HR",)),
                     split=widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05));

# %% [markdown]
# ## 7. Beyond PSNR: generative super-resolution
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
#
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | ESPCN {cite}`shi2016espcn` | real-time SR of 1080p video on one K2 GPU | x3 at {glue:}`frame`: {glue:}`espcn_x3_cpu_fps` fps on this CPU (real time: {glue:}`espcn_realtime_cpu`); GPU: {glue:}`espcn_x3_gpu` |
# | FSRCNN {cite}`dong2016fsrcnn` | more than 40x faster than SRCNN, at better quality | CPU time ratio SRCNN 9-1-5 / FSRCNN at x3: {glue:}`srcnn_over_fsrcnn`x (our SRCNN is the cheap 9-1-5, and FSRCNN's transposed convolution is slow on CPU) |
# | SwinIR {cite}`liang2021swinir` | similar FLOPs to RCAN (788.6G vs 850.6G) but 3x the runtime (0.539 s vs 0.180 s) | WindowSR achieves {glue:}`windowsr_gflops_s` GFLOP/s vs ESPCN's {glue:}`espcn_gflops_s` on this CPU |
# | HAT {cite}`chen2023hat`, DRCT {cite}`hsu2024drct` | Set5 x4: HAT 33.04 dB (20.8M parameters), DRCT 33.11 dB (14.1M), HAT-L 33.30, DRCT-L 33.37 | not reproduced (DIV2K/ImageNet training for days); our WindowSR has {glue:}`windowsr_params` parameters |
# | CATANet {cite}`liu2025catanet` | content-aware token groups instead of fixed windows: up to 0.33 dB over SPIN at nearly twice its speed | not reproduced; fixed windows are what section 3 measures |
# | ClassSR {cite}`kong2021classsr` | routing sub-images by difficulty saves up to 50% FLOPs on DIV8K | variance routing, half the network FLOPs: {glue:}`route_half_loss` dB lost of {glue:}`route_gain_total` dB (section 5) |
# | PULSE {cite}`menon2020pulse`, DiT4SR {cite}`duan2025dit4sr` | realistic detail at large scale factors / in real-world SR | not measured: a different goal (perception, not PSNR; section 7) |
#
# ## Measured in this chapter
#
# The closing summary: quality of each trained network (notebook 8.2's protocol) and its
# cost per output frame, with the hardware and the scale that produced them.

# %%
params = {name: ml.bench.count_params(ml.sr.build_model(name, s_main)) for name in ml.sr.MODEL_NAMES}
ml.glue("windowsr_params", f"{params['windowsr']:,}")
ml.glue("srcnn_over_fsrcnn", costs["srcnn", s_main, "cpu"]["ms"] / costs["fsrcnn", s_main, "cpu"]["ms"], ".1f")
eval_sets = ml.sr.recipe("espcn", s_main)["eval_sets"]
rows = []
for name in methods:
    metrics = ({k: ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s_main), ml.sr.eval_images(k, limit), s_main)
                for k in eval_sets} if name == "bicubic" else trained[name][1]["metrics"])
    row = {"method": name, "params": params.get(name, 0)}
    for k in eval_sets:
        row[f"{k} PSNR / SSIM"] = f"{metrics[k]['psnr']:.2f} / {metrics[k]['ssim']:.4f}"
    c = costs[name, s_main, "cpu"]
    row["GFLOPs / frame"] = c["flops"] / 1e9
    row["CPU ms / frame"] = c["ms"]
    if dev.type == "cuda":
        row["GPU ms / frame"] = costs[name, s_main, "cuda"]["ms"]
    row["train s"] = None if name == "bicubic" else trained[name][1]["train_seconds"]
    rows.append(row)
summary_title = (f"x{s_main}, {width}x{height} output frames | scale {ml.scale()} | CPU: {cpu_name}, "
                 f"{hardware['cores']} cores, {hardware['torch threads']} threads | accelerator: "
                 f"{hardware['accelerator']} | torch {hardware['torch']}")
ml.glue("summary_hardware", summary_title)
ml.bench.Table(rows, title=summary_title,
               formats={"GFLOPs / frame": "{:.1f}", "CPU ms / frame": "{:,.0f}", "GPU ms / frame": "{:.2f}",
                        "train s": "{:.0f}"})

# %% [markdown]
# These numbers come from {glue:}`summary_hardware`. Quality numbers at the cpu and smoke
# scales come from minutes of training (notebook 8.2) and sit below the papers'; the
# costs do not depend on training and hold for any weights.
#
# ## Exercises
#
# 1. Predict ESPCN's time for a 4K (3840x2160) output frame at x3 from its 1080p time, then
#    measure it. Is the prediction right, and why (or why not)?
# 2. Replace FSRCNN's transposed convolution by a $3\times3$ convolution to $s^2$ channels
#    and a pixel shuffle (ESPCN's upsampler) and time a 1080p frame on CPU. How much faster
#    is it, and how many FLOPs does it add or save?
# 3. In section 5, replace the variance score by the oracle (the true bicubic error of each
#    tile, which a real system cannot know). How much closer to the full-network PSNR does
#    routing half the tiles get? What does that say about the value of a better classifier?
#
# :::{dropdown} Solution 1
# ```python
# c4k = ml.sr.frame_cost(ml.sr.build_model("espcn", 3), 3, 2160, 3840, warmup=0, repeat=1)
# print(c4k["ms"] / costs["espcn", 3, "cpu"]["ms"])
# ```
# A 4K frame has 4 times the pixels, and every layer of a convolutional network costs in
# proportion to its pixels, so the FLOPs are exactly 4 times as many. The time is close to 4
# times too, slightly more or less depending on caches and on how well 2 threads split the
# larger convolutions.
# :::
#
# :::{dropdown} Solution 2
# ```python
# class FSRCNNShuffle(nn.Module):
#     def __init__(self, s):
#         super().__init__()
#         self.s, self.body = s, ml.sr.FSRCNN(s).body
#         self.tail = nn.Conv2d(56, s * s, 3, padding=1)
#     def forward(self, x):
#         return ml.sr.pixel_shuffle(self.tail(self.body(x)), self.s) + ml.sr.bicubic_skip(x, self.s)
# print(ml.sr.frame_cost(FSRCNNShuffle(3), 3, warmup=0, repeat=1))
# ```
# The $3\times3$ convolution to 9 channels costs $2 \cdot 56 \cdot 9 \cdot 9 = 9{,}072$ FLOPs per
# LR pixel, the same as the $9\times9$ transposed convolution with one output channel
# ($2 \cdot 56 \cdot 81$), but it runs as a plain convolution, several times faster on CPU.
# :::
#
# :::{dropdown} Solution 3
# Compute `score` from `(sr_bic - hr_y)` pooled over each HR tile instead of the LR
# variance. The oracle ranks tiles by the error bicubic actually makes, so the tiles it
# hands to the network are the ones where the network can gain most; the gap between the
# oracle curve and the variance curve is the most a better classifier could recover.
# :::
#
# ## Key takeaways
#
# - Cost per output frame: FLOPs (counted on the `meta` device, free) and measured time;
#   real time at $f$ fps needs FLOPs-per-frame $\times f$ FLOP/s of *achieved* throughput.
# - FLOPs do not predict time: transposed convolutions and attention (masks, softmax,
#   window shuffling) achieve a fraction of the FLOP/s of plain convolutions.
# - Post-upsampling is what makes SR cheap: per x3 frame on this CPU ESPCN is
#   {glue:}`srcnn_over_espcn_time` times faster than SRCNN and {glue:}`windowsr_over_espcn_time`
#   times faster than WindowSR ({glue:}`windowsr_over_espcn_flops` times fewer FLOPs).
#   Where the error is concentrated, routing easy regions to a cheap path (ClassSR) saves
#   more.
# - PSNR rewards the average answer; generative SR (PULSE, DiT4SR) trades PSNR for
#   realism at a much higher cost, and is measured differently.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
