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
# # 8.2 From SRCNN to window attention: four SR networks, trained and measured
#
# SRCNN {cite}`dong2014srcnn,dong2016srcnn` showed in 2014 that three convolutions,
# trained end to end on 91 images, beat a decade of hand-crafted super-resolution. It
# works on a bicubic-upscaled image, so every convolution runs at the *output* resolution.
# Two years later FSRCNN {cite}`dong2016fsrcnn` and ESPCN {cite}`shi2016espcn` moved the
# upsampling to the *end* of the network, with a transposed convolution and a "sub-pixel
# convolution" respectively, so that all the work happens on the $s^2$ times smaller
# low-resolution grid: that one change made SR fast enough for video. Since SwinIR
# {cite}`liang2021swinir`, the best networks replace most convolutions by shifted window
# attention {cite}`liu2021swin`, and HAT {cite}`chen2023hat` and DRCT {cite}`hsu2024drct`
# push the quality further at a much larger cost. This notebook builds the three classic
# CNNs and a small window-attention network, trains all four on the same data with the
# same recipe, and measures them on Set5 and Set14 with the protocol of notebook 8.1.
#
# **Learning objectives.** After this notebook you can
# 1. derive pixel shuffle, check it against `F.pixel_shuffle`, and show that a sub-pixel
#    convolution is a strided transposed convolution in disguise;
# 2. count why upsampling last is $s^2$ times cheaper than upsampling first;
# 3. build an SR network from chapter 3's window attention;
# 4. train SR networks on random patches cut and augmented on the device;
# 5. compare measured PSNR/SSIM with the papers' numbers and explain the gap.

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

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 1. Where to upsample
#
# A $k\times k$ convolution from $C_\text{in}$ to $C_\text{out}$ channels costs
# $2\,C_\text{in}C_\text{out}k^2$ FLOPs per position it is evaluated at (notebook 1.1).
# SRCNN evaluates all its layers on the $s$ times larger grid of the output; a network
# that works on the LR grid and upsamples at the end evaluates them at $s^2$ times fewer
# positions. For the same layers, upsampling last is $s^2$ = 4, 9, 16 times cheaper at x2,
# x3, x4. That is the whole efficiency story of FSRCNN and ESPCN, and the reason attention
# (whose cost grows with the number of tokens) is affordable at all: SwinIR's tokens are LR
# pixels.
#
# ## 2. Sub-pixel convolution: pixel shuffle derived
#
# ESPCN's last layer is an ordinary convolution on the LR grid with $C r^2$ output
# channels, followed by a rearrangement ("pixel shuffle") into $C$ channels on an $r$ times
# finer grid. Output pixel $(hr + i,\ wr + j)$ of channel $c$, with $0 \le i, j < r$, is
# read from channel $c r^2 + i r + j$ at LR position $(h, w)$:
#
# $$\text{out}[b, c, hr + i, wr + j] = \text{in}[b,\ c r^2 + i r + j,\ h,\ w].$$
#
# Each LR position thus owns an $r\times r$ block of output pixels, and the $r^2$ channels
# are the $r^2$ "sub-pixels" of the block. No arithmetic: split the channel axis into
# $(c, i, j)$, move $i$ next to $h$ and $j$ next to $w$, and merge:

# %%
ml.show(ml.sr.pixel_shuffle)

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
x = torch.randn(2, 3 * 3**2, 5, 7, dtype=torch.float64, requires_grad=True)
ours, ref = ml.sr.pixel_shuffle(x, 3), F.pixel_shuffle(x, 3)
g = torch.randn_like(ref)
(grad_ours,) = torch.autograd.grad(ours, x, g)
(grad_ref,) = torch.autograd.grad(ref, x, g)
print("shape", tuple(ours.shape))
print("forward equal to F.pixel_shuffle:", torch.equal(ours, ref))
print("backward equal:", torch.equal(grad_ours, grad_ref))

# %% [markdown]
# ESPCN's paper argues that this is the same operator as a *transposed convolution* with
# stride $r$, only cheaper to compute. For a transposed convolution with kernel $r$ and
# stride $r$ the equivalence is exact: each LR pixel paints an independent $r\times r$ block,
# which is what a $1\times1$ convolution to $C r^2$ channels followed by a pixel shuffle does.
# We copy the weights across and check:

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
c_in, c_out, r = 8, 2, 3
deconv = nn.ConvTranspose2d(c_in, c_out, kernel_size=r, stride=r, bias=False).double()
conv = nn.Conv2d(c_in, c_out * r * r, kernel_size=1, bias=False).double()
with torch.no_grad():
    # deconv.weight[k, c, i, j] multiplies input channel k into output (c, i, j) of the block
    conv.weight.copy_(deconv.weight.permute(1, 2, 3, 0).reshape(c_out * r * r, c_in, 1, 1))
x = torch.randn(1, c_in, 6, 4, dtype=torch.float64)
print("transposed conv == 1x1 conv + pixel shuffle:",
      torch.allclose(deconv(x), ml.sr.pixel_shuffle(conv(x), r)))

# %% [markdown]
# With larger kernels the sub-pixel convolution covers the same functions with a $k\times
# k$ convolution on the LR grid; the transposed convolution computes the same numbers by
# scattering, which libraries implement less efficiently (notebook 8.3 measures FSRCNN's
# transposed convolution).
#
# ## 3. The four networks
#
# All four take the LR luma Y, `(B, 1, h, w)`, and return the HR luma `(B, 1, sh, sw)`; the
# chroma is upscaled by bicubic, as in SRCNN (`ml.sr.upscale` does both).
#
# **SRCNN** {cite}`dong2014srcnn`: patch extraction ($9\times9$, 64 filters), non-linear
# mapping ($1\times1$, 32), reconstruction ($5\times5$), on the bicubic-upscaled image.
# We use the 9-1-5 base model of the ECCV paper, with "same" padding.

# %%
ml.show(ml.sr.SRCNN)

# %% [markdown]
# **FSRCNN** {cite}`dong2016fsrcnn`: an hourglass on the LR grid: a $5\times5$ feature
# extraction to $d=56$ channels, a $1\times1$ shrinking to $s=12$, $m=4$ cheap $3\times3$
# mapping layers at width 12, a $1\times1$ expansion back to 56, and a $9\times9$ transposed
# convolution with stride $s$ as the upsampler.

# %%
ml.show(ml.sr.FSRCNN)

# %% [markdown]
# **ESPCN** {cite}`shi2016espcn`: $5\times5$ (64) and $3\times3$ (32) convolutions with tanh,
# then a $3\times3$ convolution to $s^2$ channels and the pixel shuffle.

# %%
ml.show(ml.sr.ESPCN)

# %% [markdown]
# **WindowSR**, our small attention network after SwinIR: a $3\times3$ convolution lifts
# each LR pixel to a 48-dimensional token; four transformer blocks (chapter 3's
# `ml.models.Block` with `ml.attention.WindowAttention`) mix tokens inside $8\times8$ windows
# of the LR grid, the windows shifted by 4 in every other block so that information
# crosses window borders; a long skip, and a $3\times3$ convolution to $s^2$ channels with a
# pixel shuffle, as ESPCN. Attention over windows costs $O(HWw^2D)$: linear in the number of
# pixels, like a convolution, but with a weight for every pair of pixels in a window that
# depends on their content.

# %%
ml.show(ml.sr.WindowSR)

# %% [markdown]
# **One deviation from the papers: global residual learning.** All four networks add
# their output to a bicubic upscaling of the input, $\hat y = \text{up}(x) + f(x)$, as
# VDSR {cite}`kim2016vdsr` introduced. The network then only predicts the detail bicubic
# misses, a small signal around zero, instead of the whole image. The papers trained for
# days (SRCNN for $10^8$ updates); with the residual the same layers beat bicubic after a
# few hundred steps, which is what a laptop can afford. The upscaler of the LR-grid
# networks is PyTorch's bicubic, one cheap native kernel (`ml.sr.bicubic_skip`); section 5
# measures what the residual buys with an ablation.

# %%
ml.show(ml.sr.build_model)

# %% [markdown]
# Their sizes and their FLOPs per *output* pixel (counted on a small input; a convolution
# network's FLOPs are proportional to its pixels):

# %%
rows = []
for name in ml.sr.MODEL_NAMES:
    row = {"network": name, "params": ml.bench.count_params(ml.sr.build_model(name, 3))}
    for s in (2, 3, 4):
        model = ml.sr.build_model(name, s).eval()
        lr = torch.rand(1, 1, 24, 24)
        row[f"FLOPs/pixel x{s}"] = ml.bench.count_flops(model, lr) / (24 * s) ** 2
    rows.append(row)
flops_per_pixel = {r["network"]: r for r in rows}
ml.glue("srcnn_vs_espcn_x3", flops_per_pixel["srcnn"]["FLOPs/pixel x3"] / flops_per_pixel["espcn"]["FLOPs/pixel x3"], ".1f")
ml.bench.Table(rows, title="parameters and FLOPs per HR output pixel",
               formats={f"FLOPs/pixel x{s}": ml.bench.fmt_flops for s in (2, 3, 4)})

# %% [markdown]
# SRCNN's cost per output pixel is the same at every scale (it always works at the output
# resolution), while the LR-grid networks get cheaper per output pixel as $s$ grows: at x3
# SRCNN spends {glue:}`srcnn_vs_espcn_x3` times the FLOPs of ESPCN on each pixel, although
# its middle layer is a mere $1\times1$ convolution. (The FLOP counter counts matrix products and convolutions: SRCNN's bicubic
# step is two matrix products and counts; the residual's native bicubic kernel does not.)
#
# ## 4. Training data: T91 patches, cut and augmented on the device
#
# The classic SR networks train on T91 {cite}`yang2010t91`, 91 small natural images (the
# smallest is 78 pixels wide). The training pairs are made exactly like the test pairs:
# the *whole* image is degraded by `ml.sr.make_pair` once, then random aligned patches are
# cut from the LR image and from the HR image under it. `ml.sr.PatchSampler` keeps the 91
# LR and HR luma images in one flat buffer on the device and cuts a whole batch with one
# gather: a random window id among all windows of the set (so every $P\times P$ window is
# equally likely, as when cutting every image into overlapping sub-images), its image by
# `searchsorted`, its top-left corner, and a $(B, P, P)$ grid of flat indices. Then one of
# the 8 symmetries of the square (rotations and mirror images) per patch, the same for LR
# and HR: SR commutes with them, so each patch counts eight times.

# %%
ml.show(ml.sr.PatchSampler.sample)
ml.show(ml.sr.dihedral)

# %%
sampler = ml.sr.PatchSampler("T91", 3, 16, 8, device=dev)
print(sampler)
lr_patches, hr_patches = sampler.sample()
shown = torch.cat([F.interpolate(lr_patches, scale_factor=3, mode="nearest"), hr_patches]).cpu()
ml.plot.image_grid(shown, ["LR"] * 8 + ["HR"] * 8, ncols=8,
                   title="a batch: LR patches (top, shown enlarged) and their HR patches (Y channel)")
plt.show()
t_batch = ml.bench.time_fn(sampler.sample, warmup=2, repeat=20).median
ml.glue("batch_ms", t_batch * 1e3, ".2f")
print(f"one batch of {sampler.batch_size} pairs: {t_batch * 1e3:.2f} ms on {dev.type}")

# %% [markdown]
# A batch costs {glue:}`batch_ms` ms here: the data pipeline is never the bottleneck.
#
# ## 5. Training
#
# One recipe for all four networks: random $16\times16$ LR patches ($24\times24$ at the gpu
# scale) with the 8 symmetries, L1 loss (EDSR {cite}`lim2017edsr` found it trains SR
# networks better than MSE, even for PSNR), Adam {cite}`kingma2015adam` with a short
# warm-up and a cosine decay, float32. `ml.sr.trained_model` trains with `ml.train.fit`,
# evaluates on Set5 and Set14 with `ml.sr.evaluate`, and caches model and results, so
# notebook 8.3 reuses them.

# %%
ml.show(ml.sr.recipe)
ml.show(ml.sr.trained_model)

# %%
scales = ml.pick(smoke=[3], cpu=[3], gpu=[2, 3, 4])
trained = {}
for s in scales:
    for name in ml.sr.MODEL_NAMES:
        trained[name, s] = ml.sr.trained_model(name, s)
config = ml.sr.recipe("espcn", scales[0])
ml.glue("train_steps", config["steps"])
ml.glue("train_batch", config["batch"])
ml.glue("train_patch", config["patch"])
ml.glue("scales_trained", ", ".join(f"x{s}" for s in scales))

# %%
fig, axes = plt.subplots(1, len(scales), figsize=(5 * len(scales), 3.2), squeeze=False)
for ax, s in zip(axes[0], scales):
    histories = {name: ml.train.History.from_dict(trained[name, s][1]["history"]) for name in ml.sr.MODEL_NAMES}
    ml.plot.learning_curves(histories, y="train_loss", x="step", ax=ax,
                            title=f"training L1 loss (mean over {max(1, config['steps'] // 20)} steps), x{s}")
plt.show()

# %% [markdown]
# ### What the global residual buys
#
# The ablation: ESPCN exactly as published (no skip), same recipe, same steps.

# %%
s_ablation = 3 if 3 in scales else scales[0]
plain, plain_record = ml.sr.trained_model("espcn", s_ablation, residual=False)
with_skip = trained["espcn", s_ablation][1]["metrics"]["Set5"]["psnr"]
without_skip = plain_record["metrics"]["Set5"]["psnr"]
ml.glue("skip_gain", with_skip - without_skip, ".2f")
ml.glue("plain_espcn", without_skip, ".2f")
print(f"ESPCN x{s_ablation}, Set5 PSNR: with the bicubic skip {with_skip:.2f} dB, "
      f"as published (no skip) {without_skip:.2f} dB")

# %% [markdown]
# After {glue:}`train_steps` steps the residual ESPCN is {glue:}`skip_gain` dB ahead of the
# published ESPCN on Set5 ({glue:}`plain_espcn` dB). The layers are the same; the skip
# changes how fast they learn, not what they can represent.
#
# ## 6. Results next to the papers
#
# Set5 and Set14, PSNR and SSIM on Y with shave = scale (notebook 8.1), next to the Set5
# PSNR each paper reports for a model trained on the 91 images: SRCNN 9-1-5
# {cite}`dong2014srcnn` (x3), FSRCNN {cite}`dong2016fsrcnn`, ESPCN {cite}`shi2016espcn` (x3).
# WindowSR is ours and has no published number.

# %%
# Published Set5 PSNR (dB) of the 91-image models: SRCNN 9-1-5 (ECCV 2014, x3 only),
# FSRCNN(56, 12, 4) (ECCV 2016), ESPCN (CVPR 2016, x3 only).
PUBLISHED_SET5 = {"srcnn": {3: 32.39}, "fsrcnn": {2: 36.94, 3: 33.06, 4: 30.55}, "espcn": {3: 32.55}}
eval_sets = config["eval_sets"]
rows = []
for s in scales:
    bicubic = {k: ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s), ml.sr.eval_images(k, config["eval_limit"]), s)
               for k in eval_sets}
    entries = [("bicubic", bicubic, None)] + [
        (name, trained[name, s][1]["metrics"], trained[name, s][1]) for name in ml.sr.MODEL_NAMES]
    for name, metrics, record in entries:
        row = {"scale": f"x{s}", "method": name}
        for k in eval_sets:
            row[f"{k} PSNR"] = metrics[k]["psnr"]
            row[f"{k} SSIM"] = metrics[k]["ssim"]
            ml.glue(f"{name}_x{s}_{k}_psnr", metrics[k]["psnr"], ".2f")
            ml.glue(f"{name}_x{s}_{k}_ssim", metrics[k]["ssim"], ".4f")
        row["published Set5 PSNR"] = PUBLISHED_SET5.get(name, {}).get(s)
        row["gain over bicubic (Set5)"] = metrics["Set5"]["psnr"] - bicubic["Set5"]["psnr"]
        ml.glue(f"{name}_x{s}_gain", row["gain over bicubic (Set5)"], ".2f")
        row["train time (s)"] = record["train_seconds"] if record else None
        rows.append(row)
results = ml.bench.Table(rows, title=f"super-resolution on Y, shave = scale ({ml.scale()} scale, trained on {dev.type})",
                         formats={**{c: "{:.2f}" for c in ("Set5 PSNR", "Set14 PSNR", "published Set5 PSNR")},
                                  **{c: "{:.4f}" for c in ("Set5 SSIM", "Set14 SSIM")},
                                  "gain over bicubic (Set5)": "{:+.2f}", "train time (s)": "{:.0f}"})
best = max((r for r in rows if r["method"] != "bicubic"), key=lambda r: r["Set5 PSNR"])
ml.glue("best_method", f"{best['method']} ({best['scale']})")
ml.glue("best_gain", best["gain over bicubic (Set5)"], ".2f")
s_ref = 3 if 3 in scales else scales[0]
gaps = [PUBLISHED_SET5[n][s_ref] - trained[n, s_ref][1]["metrics"]["Set5"]["psnr"] for n in PUBLISHED_SET5]
ml.glue("paper_gap_min", min(gaps), ".2f")
ml.glue("paper_gap_max", max(gaps), ".2f")
results

# %% [markdown]
# At this scale ({glue:}`train_steps` steps of {glue:}`train_batch` patches of
# {glue:}`train_patch` x {glue:}`train_patch` LR pixels, scales {glue:}`scales_trained`) the
# best network is {glue:}`best_method`, {glue:}`best_gain` dB above bicubic on Set5. The
# published Set5 x3 numbers of SRCNN, FSRCNN and ESPCN are {glue:}`paper_gap_min` to
# {glue:}`paper_gap_max` dB above our versions of them: the papers trained for $10^5$ to
# $10^8$ updates, we for the few steps above. The ordering of the networks at a short budget
# says more about how fast each one learns than about what it can reach; the gpu scale
# (10,000 steps of 32 patches per network) is the comparison to trust, and even it is a
# fraction of the papers' training.
#
# ### BSD100
#
# Where BSD100 {cite}`martin2001bsd` can be downloaded we evaluate on it too.

# %%
try:
    bsd100 = ml.data.sr_images("BSD100")
except (ml.data.DatasetNotFoundError, OSError):
    bsd100 = None
    print("BSD100 is not available here (no network and no local copy); skipping it.")
if bsd100 is not None:
    from IPython.display import display

    display(ml.bench.Table(
        [{"scale": f"x{s}", "method": name,
          **ml.sr.evaluate(lambda lr: ml.sr.upscale(trained[name, s][0], lr, s), bsd100, s)}
         for s in scales for name in ml.sr.MODEL_NAMES],
        title="BSD100 (PSNR / SSIM on Y)", formats={"psnr": "{:.2f}", "ssim": "{:.4f}"}))

# %% [markdown]
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | SRCNN {cite}`dong2014srcnn` | 9-1-5 trained on 91 images: 32.39 dB on Set5 x3 | SRCNN 9-1-5 (with the residual): {glue:}`srcnn_x3_Set5_psnr` dB |
# | FSRCNN {cite}`dong2016fsrcnn` | FSRCNN(56, 12, 4) on 91 images: 33.06 dB on Set5 x3 | {glue:}`fsrcnn_x3_Set5_psnr` dB |
# | ESPCN {cite}`shi2016espcn` | 91 images: 32.55 dB on Set5 x3, above SRCNN | ESPCN {glue:}`espcn_x3_Set5_psnr` dB vs SRCNN {glue:}`srcnn_x3_Set5_psnr` dB |
# | VDSR {cite}`kim2016vdsr` | residual learning converges much faster | the skip adds {glue:}`skip_gain` dB to ESPCN at the same number of steps |
# | SwinIR {cite}`liang2021swinir` | window attention beats the best CNNs, "by up to 0.14~0.45 dB", with up to 67% fewer parameters | WindowSR {glue:}`windowsr_x3_Set5_psnr` dB vs the CNNs above, at a short training budget |
#
# The claims are for fully trained models; at the smoke and cpu scales the measured column
# shows how far a short training gets, not what the networks can reach.
#
# ## Exercises
#
# 1. Write `pixel_unshuffle` (the inverse of `pixel_shuffle`, `F.pixel_unshuffle`) and
#    check that it undoes `ml.sr.pixel_shuffle`.
# 2. Train ESPCN with MSE instead of L1 (copy `ml.sr.recipe`'s configuration and call
#    `ml.train.fit` yourself). Which gives the higher PSNR after the same steps?
# 3. WindowSR pads each image to a multiple of its window. How much of the work at 1080p
#    x4 (LR 270x480, window 8) is spent on padding?
# 4. The SRCNN paper reports that 9-5-5 (a $5\times5$ middle layer) beats 9-1-5. How many
#    times more FLOPs per pixel does it cost?
#
# :::{dropdown} Solution 1
# ```python
# def pixel_unshuffle(y, r):
#     *lead, c, H, W = y.shape
#     y = y.reshape(*lead, c, H // r, r, W // r, r)          # (.., c, h, i, w, j)
#     n = len(lead)
#     y = y.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # (.., c, i, j, h, w)
#     return y.reshape(*lead, c * r * r, H // r, W // r)
# x = torch.randn(2, 18, 4, 5)
# assert torch.equal(pixel_unshuffle(ml.sr.pixel_shuffle(x, 3), 3), x)
# assert torch.equal(pixel_unshuffle(x, 1), F.pixel_unshuffle(x, 1))
# ```
# :::
#
# :::{dropdown} Solution 2
# ```python
# cfg = ml.sr.recipe("espcn", 3)
# model = ml.sr.build_model("espcn", 3).to(dev)
# sampler = ml.sr.PatchSampler("T91", 3, cfg["patch"], cfg["batch"], device=dev)
# opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
# ml.train.fit(model, sampler, optimizer=opt, steps=cfg["steps"], loss_fn=F.mse_loss,
#              schedule=ml.train.warmup_cosine(cfg["steps"], cfg["steps"] // 20, final=0.01))
# print(ml.sr.evaluate(lambda lr: ml.sr.upscale(model.eval(), lr, 3), ml.data.sr_images("Set5"), 3))
# ```
# The answer depends on the budget; EDSR's observation is for long training. MSE weights
# large errors more, L1 keeps learning from the many small ones.
# :::
#
# :::{dropdown} Solution 3
# 270 is not a multiple of 8: the grid is padded to 272x480, so $272 \cdot 480 / (270 \cdot
# 480) - 1 = 0.7\%$ of the tokens are padding. At x2 (540 rows, padded to 544) it is 0.7%
# too; at x3 (360 rows) nothing.
# :::
#
# :::{dropdown} Solution 4
# The middle layer goes from $64 \cdot 32 \cdot 1^2$ to $64 \cdot 32 \cdot 5^2$
# multiply-adds per pixel: total $81\cdot64 + 64\cdot32\cdot25 + 32\cdot25 = 57{,}184$ vs
# $81\cdot64 + 64\cdot32 + 32\cdot25 = 8{,}032$, about 7.1 times more.
# :::
#
# ## Key takeaways
#
# - Upsampling last (transposed or sub-pixel convolution) runs every layer on the LR grid:
#   $s^2$ times fewer positions than upsampling first.
# - Pixel shuffle is a reshape and a permute; a sub-pixel convolution is a strided
#   transposed convolution computed as a plain convolution.
# - Window attention on the LR grid costs linear in the pixels; our WindowSR is built from
#   chapter 3's `WindowAttention` and chapter 1's transformer block.
# - Learning a residual over bicubic makes SR networks useful after minutes of training;
#   published numbers come from days of it, so compare at equal training only.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
