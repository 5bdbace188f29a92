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
# # 8.1 The evaluation protocol: why super-resolution numbers are hard to compare
#
# Single-image super-resolution (SR) papers rank methods by PSNR on a handful of small test
# sets, Set5 {cite}`bevilacqua2012set5`, Set14 {cite}`zeyde2010set14` and BSD100
# {cite}`martin2001bsd` above all, to two decimals. Since SRCNN {cite}`dong2014srcnn` a gain
# of 0.1 dB is a result, yet the number depends on a chain of conventions that papers rarely
# spell out: how the low-resolution (LR) input was made (which resize function, which
# kernel, with or without antialiasing, in which colour space), whether it was rounded to
# 8 bits, in which colour space PSNR is measured, how many border pixels are ignored, how a
# grayscale file is read. Change one link and the bicubic baseline itself moves by more
# than the gap between two published methods. This notebook builds the protocol of the SR
# literature from scratch, the one behind the bicubic rows every paper prints (Set5: 33.66
# / 30.39 / 28.42 dB at x2 / x3 / x4), measures how much each convention matters, and
# checks digit by digit how well our implementation reproduces the published rows.
#
# **Learning objectives.** After this notebook you can
# 1. produce an SR benchmark pair on the published ("y-first") protocol: the luma Y of the
#    8-bit file, modcrop, MATLAB-compatible bicubic downscaling with antialiasing, the LR
#    image kept in float;
# 2. derive bicubic resizing as a weight matrix: Keys' cubic kernel, the pixel-centre index
#    mapping, the widened kernel that antialiases a downscale;
# 3. compute PSNR and SSIM on the luma channel Y of ITU-R BT.601 with a border shave;
# 4. quantify how much each convention moves a published number;
# 5. reproduce the published bicubic rows of Set5, Set14 and BSD100 at their printed
#    precision, and explain the 0.1 dB that a common way of loading Set14 adds.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import minilib as ml

ml.describe()
ml.plot.style()

# %% [markdown]
# ## 8.1.1 The test images
#
# Set5 holds 5 images and Set14 14, the uncropped copies shipped with the SRCNN code; BSD100
# is the 100 test images of the Berkeley segmentation dataset, 481x321 each. Set5 and Set14
# are tiny by today's standards (the largest Set5 image is 512x512), which is one reason
# their averages are noisy: a method that is good on *butterfly* moves the Set5 mean by a
# fifth of its gain there. `ml.sr.eval_images` returns a set as a list of uint8 `(C, H, W)`
# tensors (the sizes differ, so not a batch). It keeps a grayscale file as one channel, as
# MATLAB's `imread` does: Set14's *bridge* is the only one, and section 8.1.7 shows why that
# matters.

# %%
sets = {key: ml.sr.eval_images(key) for key in ml.sr.EVAL_SETS}
names = {key: sorted(Path(f.path).stem.replace("_GT", "") for f in ml.data.DATASETS[key.lower()].files)
         for key in ("Set5", "Set14")}
for key in ("Set5", "Set14"):
    print(key, ", ".join(f"{n} {img.shape[1]}x{img.shape[2]}" + (" (grayscale)" if img.shape[0] == 1 else "")
                         for n, img in zip(names[key], sets[key])))
bsd_sizes = sorted({f"{img.shape[1]}x{img.shape[2]}" for img in sets["BSD100"]})
print(f"BSD100 {len(sets['BSD100'])} images, sizes {', '.join(bsd_sizes)}")


def center_crop(img, size):
    """The central size x size pixels of a (C, H, W) image, as RGB (grayscale repeated)."""
    top, left = (img.shape[1] - size) // 2, (img.shape[2] - size) // 2
    return img[:, top:top + size, left:left + size].expand(3, -1, -1)


ml.plot.image_grid(torch.stack([center_crop(img, 128) for img in sets["Set5"] + sets["Set14"][:3]]),
                   names["Set5"] + names["Set14"][:3], ncols=4,
                   title="central 128x128 crops of Set5 and of three Set14 images")
plt.show()

# %% [markdown]
# ## 8.1.2 Degradation, step 1: modcrop
#
# An image of height 301 cannot be shrunk by 3 and grown back to 301 pixels. The protocol
# first crops the bottom and right so that both sides divide by the scale $s$
# ("modcrop", from the SRCNN MATLAB code); the LR image is then exactly $s$ times smaller
# and the SR output exactly the size of the cropped high-resolution (HR) image.

# %%
ml.show(ml.sr.modcrop)
baboon = sets["Set14"][0]
for s in (2, 3, 4):
    print(f"x{s}: {tuple(baboon.shape[1:])} -> {tuple(ml.sr.modcrop(baboon, s).shape[1:])}")

# %% [markdown]
# ## 8.1.3 Degradation, step 2: MATLAB's bicubic `imresize`, derived
#
# The LR images of the SR literature are made by MATLAB's `imresize(hr, 1/s, 'bicubic')`.
# Three ingredients define it.
#
# **The kernel.** Cubic convolution {cite}`keys1981cubic` interpolates with a piecewise
# cubic $k$ of support $[-2, 2]$ that is 1 at 0, 0 at the other integers, and has a
# continuous derivative. These conditions leave one free parameter $a$:
#
# $$
# k_a(x) = \begin{cases}
# (a+2)|x|^3 - (a+3)|x|^2 + 1 & |x| \le 1 \\
# a|x|^3 - 5a|x|^2 + 8a|x| - 4a & 1 < |x| \le 2 \\
# 0 & \text{otherwise.}
# \end{cases}
# $$
#
# Keys showed that $a=-\tfrac12$ makes the interpolation third-order accurate; MATLAB uses
# it. PyTorch's `F.interpolate(mode="bicubic")` (like OpenCV) uses $a=-\tfrac34$, a
# sharper kernel with deeper negative lobes.

# %%
def keys(x, a):
    """Keys' cubic convolution kernel with parameter a (the equation above)."""
    x = x.abs()
    near = ((a + 2) * x**3 - (a + 3) * x**2 + 1) * (x <= 1)
    far = (a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a) * ((x > 1) & (x <= 2))
    return near + far


t = torch.linspace(-3, 3, 601, dtype=torch.float64)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3), layout="constrained")
ax1.plot(t, keys(t, -0.5), label="a = -0.5 (MATLAB)")
ax1.plot(t, keys(t, -0.75), "--", label="a = -0.75 (PyTorch, OpenCV)")
ax1.set(title="cubic kernel for upscaling", xlabel="distance (input pixels)", ylabel="weight")
ax1.legend(loc="upper right", fontsize=8)
third = 1 / 3
ax2.plot(t, third * keys(third * t, -0.5), label="s k(s x), s = 1/3")
ax2.plot(t, keys(t, -0.5), ":", label="k(x) without antialiasing")
ax2.set(title="kernel for a 1/3 downscale", xlabel="distance (input pixels)", ylabel="weight")
ax2.legend(loc="upper right", fontsize=8)
plt.show()

# %% [markdown]
# **The index mapping.** Pixels are little squares: output pixel $x$ (1-based) covers
# input interval $[(x-1)/s, x/s]$, whose centre is input coordinate
#
# $$u(x) = \frac{x}{s} + \frac12\left(1 - \frac1s\right).$$
#
# Shrinking by 3, output pixel 1 sits at $u=2$, the centre of input pixels 1, 2, 3; growing
# by 3, output pixels 1, 2, 3 sit at $u = 2/3, 1, 4/3$ around input pixel 1. (PyTorch calls
# this `align_corners=False`.)
#
# **Antialiasing.** When shrinking by $s<1$, sampling the cubic at the new pixel positions
# would skip most input pixels and alias fine detail into false patterns. MATLAB stretches
# the kernel to $s\,k(sx)$, $1/s$ times wider (right plot), so each output pixel averages
# all the input pixels under it: a low-pass filter matched to the new sampling rate.
#
# **Weight matrices.** Output pixel $i$ is $\sum_j k(u_i - j)\, x_j$ over the taps $j$ under the
# kernel, with the weights normalized to sum to 1 and taps beyond the border mirrored back
# inside (MATLAB's symmetric padding). A 1-D resize is therefore a matrix $W$ of shape
# (out, in), and a 2-D resize of an image $X$ is $W_H X W_W^\top$: two matrix products.
# `ml.sr.resize_weights` builds $W$:

# %%
ml.show(ml.sr.resize_weights)

# %%
shrink = ml.sr.resize_weights(24, 8, 1 / 3)
shrink_no_aa = ml.sr.resize_weights(24, 8, 1 / 3, antialias=False)
panels = [("shrink 24 -> 8, antialiased", shrink), ("grow 8 -> 24", ml.sr.resize_weights(8, 24, 3.0))]
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), layout="constrained")
lim = max(w.abs().max().item() for _, w in panels)             # one colour scale for both panels
for ax, (title, w) in zip(axes, panels):
    im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set(title=title, xlabel="input pixel", ylabel="output pixel")
    ax.grid(False)
fig.colorbar(im, ax=axes, shrink=0.85, label="weight")
plt.show()
taps_aa = (shrink != 0).sum(1)
taps_no_aa = (shrink_no_aa.abs() > 1e-12).sum(1)
print("row sums of the antialiased shrink equal 1:", bool(torch.allclose(shrink.sum(1), torch.ones(8, dtype=torch.float64))))
print("input pixels with a non-zero weight, per output pixel: antialiased", taps_aa.tolist(),
      "| without antialiasing", taps_no_aa.tolist())

# %% tags=["remove-cell"]
ml.glue("taps_aa", int(taps_aa.max()))
ml.glue("taps_no_aa", int(taps_no_aa.max()))

# %% [markdown]
# Each row is the stencil of one output pixel (red positive, blue the negative lobes).
# The antialiased shrink spreads every interior output pixel over {glue:}`taps_aa` input
# pixels (the kernel is $4/s = 12$ pixels wide, and its zeros at distances 3 and 6 fall on
# pixel centres); without antialiasing the kernel is so narrow that each output pixel takes
# {glue:}`taps_no_aa` input pixel and two thirds of the image are ignored. The first and
# last rows are bent by the mirrored border. `ml.sr.imresize` applies the two matrices:

# %%
ml.show(ml.sr.imresize)

# %% [markdown]
# How different is PyTorch's resize? With `antialias=True` it uses the same $a=-\frac12$
# kernel and mapping, but renormalizes the weights at the border instead of mirroring;
# without it, the kernel is not widened. We downscale *butterfly* by 3 and compare, in
# 8-bit grey levels, the interior and the 3-pixel border of the LR image.

# %%
butterfly = ml.sr.modcrop(sets["Set5"][2].float() / 255, 3)[None]
ours = ml.sr.imresize(butterfly, 1 / 3)
size = ours.shape[-2:]
variants = {
    "F.interpolate bicubic, antialias=True": F.interpolate(butterfly, size=size, mode="bicubic", antialias=True),
    "F.interpolate bicubic, antialias=False": F.interpolate(butterfly, size=size, mode="bicubic", antialias=False),
    "ml.sr.imresize, antialias=False": ml.sr.imresize(butterfly, 1 / 3, antialias=False),
}
rows = []
for name, other in variants.items():
    diff = (other - ours).abs() * 255
    rows.append({"LR made with": name, "interior": diff[..., 3:-3, 3:-3].max().item(),
                 "border": diff.max().item(), "mean": diff.mean().item()})
ml.bench.Table(rows, title="difference to MATLAB-compatible imresize, butterfly downscaled x3",
               headers={"interior": "max |diff| interior (grey levels)", "border": "max |diff| border (grey levels)",
                        "mean": "mean |diff| (grey levels)"},
               formats={c: "{:.2f}" for c in ("interior", "border", "mean")})

# %% tags=["remove-cell"]
ml.glue("torch_aa_interior", rows[0]["interior"], ".1e")
ml.glue("torch_aa_border", rows[0]["border"], ".1f")
ml.glue("no_aa_max", max(rows[1]["interior"], rows[2]["interior"]), ".0f")

# %% [markdown]
# PyTorch's antialiased resize matches in the interior (largest difference
# {glue:}`torch_aa_interior` grey levels, float rounding) and differs by up to
# {glue:}`torch_aa_border` levels at the border; the non-antialiased resizes differ
# everywhere, by up to {glue:}`no_aa_max` levels on the butterfly's fine texture.
#
# ## 8.1.4 Degradation, step 3: which image is resized, and is it rounded?
#
# The HR image is a file of 8-bit integers. The SRCNN and VDSR MATLAB scripts, which
# produced the bicubic rows every paper copies, take its luma first, as MATLAB's
# `rgb2ycbcr` computes it on a uint8 image: the result is again uint8, so Y is *rounded*
# to 256 levels. A grayscale file is its own Y. `ml.sr.hr_y` is that step:

# %%
ml.show(ml.sr.hr_y)

# %% [markdown]
# Then they modcrop that Y and shrink it with `imresize` in double precision, and the LR
# image is **not** rounded: it goes to the upscaler in float. Only the output is rounded
# to 8 bits before measuring (`ml.sr.quantize`, round half up like MATLAB's `uint8`). We
# call this the **y-first** protocol; it is `ml.sr.make_pair`'s default.
#
# The other convention in circulation, **rgb-first**, is what a pipeline that stores LR
# *files* does (the LR images shipped with DIV2K, or a data loader that writes PNGs): it
# shrinks the RGB image, rounds the LR image to 8 bits as the file stores it, upscales, and
# takes Y only when measuring. `make_pair` keeps it as `protocol="rgb-first"`:

# %%
ml.show(ml.sr.make_pair)

# %% [markdown]
# ## 8.1.5 Measuring: Y of BT.601, border shave, PSNR, SSIM
#
# **The Y channel.** SRCNN and its successors measure only the luma Y, the channel the eye
# is most sensitive to, as MATLAB's `rgb2ycbcr` computes it: ITU-R BT.601
# {cite}`itu2011bt601` on the "studio" range, where black is 16 and white 235:
#
# $$Y = 16 + 65.481\,R + 128.553\,G + 24.966\,B, \qquad R, G, B \in [0, 1].$$
#
# **PSNR** compares an image with its reference through the mean squared error on the
# 0-255 scale, after cropping $s$ pixels from every border (the border of an upscaled image
# depends on how the resize padded it):
#
# $$\mathrm{PSNR} = 10 \log_{10} \frac{255^2}{\mathrm{MSE}}\ \text{dB}.$$
#
# A uniform error of one grey level is $20\log_{10}255 = 48.13$ dB; halving the RMSE adds
# 6.02 dB.
#
# **SSIM** {cite}`wang2004ssim` compares local means $\mu$, variances $\sigma^2$ and the
# covariance $\sigma_{ab}$ under an $11\times11$ Gaussian window ($\sigma = 1.5$), averaged
# over the image:
#
# $$
# \begin{aligned}
# \mathrm{SSIM} &= \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)},\\
# C_1 &= (0.01 \cdot 255)^2, \quad C_2 = (0.03 \cdot 255)^2.
# \end{aligned}
# $$
#
# `ml.sr.psnr` is the formula above on Y (`ml.sr.rgb_to_y`, the equation above) after the
# shave; `ml.sr.ssim` filters the five local statistics with the separable window, as two
# matrix products per image:

# %%
ml.show(ml.sr.ssim)

# %% [markdown]
# A few values we know in advance (the unit tests also compare SSIM with a direct NumPy
# transcription of Wang et al.'s formula):

# %% tags=["nbval-check-output"]
ml.seed_all(0)
a = torch.rand(3, 64, 64, dtype=torch.float64) * 0.9
one_level = a + 1 / 255
db = lambda x: 20 * torch.log10(torch.tensor(x, dtype=torch.float64)).item()  # noqa: E731
checks = {
    "PSNR, one grey level on RGB = 20 log10 255": abs(ml.sr.psnr(a, one_level, y_channel=False) - db(255)) < 1e-9,
    "PSNR on Y: the offset shrinks to 219/255 of a level": abs(ml.sr.psnr(a, one_level) - db(255) - db(255 / 219)) < 1e-9,
    "PSNR of identical images is inf": ml.sr.psnr(a, a) == float("inf"),
    "SSIM of identical images is 1": abs(ml.sr.ssim(a, a) - 1) < 1e-12,
    "SSIM of unrelated noise is about 0": abs(ml.sr.ssim(a, torch.rand(3, 64, 64, dtype=torch.float64))) < 0.1,
}
for name, ok in checks.items():
    print(f"{name}: {ok}")

# %% [markdown]
# `ml.sr.evaluate` runs the whole protocol over a set (a list of images, or a set's name):
# for each HR image, make the pair, upscale, round to 8 bits, measure PSNR and SSIM on Y with
# shave $s$; it returns the means, as papers report them.

# %%
ml.show(ml.sr.evaluate)

# %% [markdown]
# ## 8.1.6 How much each convention moves the number
#
# We take the bicubic baseline on Set5 at x3 (published: 30.39 dB) and change one
# convention at a time. `protocol_psnr` below is the **rgb-first** protocol written out with
# each step swappable (the LR image is an RGB image, so the resize and the rounding can be
# swapped on it); with its defaults it equals `ml.sr.evaluate(..., protocol="rgb-first")`,
# which the cell checks. The first row of the table is the published y-first protocol,
# measured with `ml.sr.evaluate`.

# %%
def protocol_psnr(images, s, *, down=None, up=None, rgb=False, shave=None, round_lr=True,
                  full_range_y=False):
    """Mean PSNR of bicubic over `images` at scale s (rgb-first), one convention swapped at a time."""
    down = down or (lambda x: ml.sr.imresize(x, 1 / s))
    up = up or (lambda x: ml.sr.imresize(x, s))
    shave = s if shave is None else shave
    values = []
    for img in images:
        hr = ml.sr.modcrop(img.float() / 255, s)[None]
        lr = down(hr)
        lr = ml.sr.quantize(lr) if round_lr else lr
        sr_img = ml.sr.quantize(up(lr))
        if full_range_y:   # JPEG/PIL-style full-range luma: Y = 0.299 R + 0.587 G + 0.114 B
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            sr_img, hr = (sr_img * w).sum(1, keepdim=True), (hr * w).sum(1, keepdim=True)
        values.append(float(ml.sr.psnr(sr_img, hr, shave=shave, y_channel=not rgb)[0]))
    return sum(values) / len(values)


s = 3
bicubic = lambda lr, s=s: ml.sr.imresize(lr, s)  # noqa: E731
images = sets["Set5"][: ml.pick(smoke=2, cpu=5, gpu=5)]
reference = protocol_psnr(images, s)
assert abs(reference - ml.sr.evaluate(bicubic, images, s, protocol="rgb-first")["psnr"]) < 1e-9
y_first = ml.sr.evaluate(bicubic, images, s)["psnr"]
def torch_up(x, s=s):
    return F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)


def torch_down(x, s=s):
    return F.interpolate(x, scale_factor=1 / s, mode="bicubic", antialias=True)


variants = {
    "upscale with F.interpolate (a = -0.75)": {"up": torch_up},
    "downscale with F.interpolate(antialias=True)": {"down": torch_down},
    "downscale without antialiasing": {"down": lambda x: ml.sr.imresize(x, 1 / s, antialias=False)},
    "LR kept in float (not rounded to 8 bits)": {"round_lr": False},
    "PSNR on RGB instead of Y": {"rgb": True},
    "no border shave": {"shave": 0},
    "full-range luma (0.299 R + 0.587 G + 0.114 B)": {"full_range_y": True},
}
rows = [{"protocol": "y-first (published): Y of the 8-bit HR, LR in float", "PSNR": y_first,
         "change": y_first - reference},
        {"protocol": "rgb-first: RGB resized, 8-bit LR, Y at the end", "PSNR": reference, "change": 0.0}]
for name, kwargs in variants.items():
    value = protocol_psnr(images, s, **kwargs)
    rows.append({"protocol": f"rgb-first, {name}", "PSNR": value, "change": value - reference})
deltas = {row["protocol"].removeprefix("rgb-first, "): row["change"] for row in rows}
ml.bench.Table(rows, title=f"bicubic x{s} on {len(images)} Set5 images: one convention changed at a time",
               headers={"PSNR": "PSNR (dB)", "change": "change vs rgb-first (dB)"},
               formats={"PSNR": "{:.3f}", "change": "{:+.3f}"})

# %% tags=["remove-cell"]
ml.glue("delta_y_first", deltas["y-first (published): Y of the 8-bit HR, LR in float"], "+.3f")
ml.glue("delta_torch_up", deltas["upscale with F.interpolate (a = -0.75)"], "+.2f")
ml.glue("delta_torch_down", deltas["downscale with F.interpolate(antialias=True)"], "+.3f")
ml.glue("delta_no_aa", deltas["downscale without antialiasing"], "+.2f")
ml.glue("delta_rgb", deltas["PSNR on RGB instead of Y"], "+.2f")
ml.glue("delta_full_range", deltas["full-range luma (0.299 R + 0.587 G + 0.114 B)"], "+.2f")
ml.glue("delta_no_shave", deltas["no border shave"], "+.3f")
ml.glue("delta_float_lr", deltas["LR kept in float (not rounded to 8 bits)"], "+.3f")
changes = {k: v for k, v in deltas.items() if not k.startswith(("rgb-first:", "y-first"))}
largest = max(changes, key=lambda k: abs(changes[k]))
ml.glue("max_abs_delta", abs(changes[largest]), ".2f")
ml.glue("max_delta_name", largest)
ml.glue("max_delta_vs_hat", abs(changes[largest]) / 0.07, ".0f")
small = [k for k, v in changes.items() if abs(v) < 0.05]
ml.glue("small_changes", ", ".join(f"{k} ({changes[k]:+.3f} dB)" for k in small) if small else "none of them")
ml.glue("ex1_larger", "the upscale" if abs(deltas["upscale with F.interpolate (a = -0.75)"])
        > abs(deltas["downscale with F.interpolate(antialias=True)"]) else "the downscale")

# %% [markdown]
# Each line is a choice some published code makes. Upscaling with PyTorch's sharper
# kernel changes the baseline by {glue:}`delta_torch_up` dB, forgetting to antialias the
# downscale by {glue:}`delta_no_aa` dB, measuring on RGB by {glue:}`delta_rgb` dB, and a
# full-range luma (what PIL's `convert("YCbCr")` computes) by {glue:}`delta_full_range` dB: the
# studio-range Y compresses every difference by $219/255$, worth $20\log_{10}(255/219) =
# 1.32$ dB. The two ways of making the LR image, y-first and rgb-first, differ by
# {glue:}`delta_y_first` dB on bicubic; of the single changes to rgb-first, those below
# 0.05 dB here are: {glue:}`small_changes`. The largest change, {glue:}`max_abs_delta` dB ({glue:}`max_delta_name`),
# is {glue:}`max_delta_vs_hat` times the gap that ranks two recent attention networks, HAT and
# DRCT, on Set5 x4 (33.04 vs 33.11 dB, 0.07 dB) {cite}`chen2023hat,hsu2024drct`. **A number is
# comparable only under the same protocol.** The only safe comparison is one you run
# yourself, with one evaluation function for every method, which is what the rest of this
# chapter does.
#
# ## 8.1.7 The bicubic baseline, reproduced
#
# Every SR paper since SRCNN prints the same bicubic rows: Set5 and Set14 from SRCNN
# {cite}`dong2016srcnn`, BSD100 from VDSR {cite}`kim2016vdsr` (`ml.sr.PUBLISHED_BICUBIC`
# holds them as printed). We measure all three sets at x2, x3 and x4 with the y-first
# protocol and compare at the printed precision: two decimals of PSNR, four of SSIM.

# %%
table_sets = ml.pick(smoke=["Set5"], cpu=list(ml.sr.EVAL_SETS), gpu=list(ml.sr.EVAL_SETS))
dev = ml.device()                   # upscale and measure on the GPU where there is one (float32 / float64 alike)
rows, measured = [], {}
for key in table_sets:
    for s in (2, 3, 4):
        got = ml.sr.evaluate(lambda lr: ml.sr.imresize(lr.to(dev), s), key, s)
        pub_psnr, pub_ssim = ml.sr.PUBLISHED_BICUBIC[key][s]
        measured[key, s] = got
        match_psnr, match_ssim = round(got["psnr"], 2) == pub_psnr, round(got["ssim"], 4) == pub_ssim
        rows.append({"set": key, "scale": f"x{s}", "PSNR": got["psnr"], "published PSNR": pub_psnr,
                     "SSIM": got["ssim"], "published SSIM": pub_ssim,
                     "match": f"{'yes' if match_psnr else 'no'} / {'yes' if match_ssim else 'no'}"})
ml.bench.Table(rows, title="bicubic baseline: measured here (y-first) vs published (Y channel, shave = scale)",
               headers={"PSNR": "PSNR (dB)", "published PSNR": "published (dB)", "published SSIM": "published",
                        "match": "same printed digits (PSNR / SSIM)"},
               formats={"PSNR": "{:.3f}", "published PSNR": "{:.2f}", "SSIM": "{:.5f}", "published SSIM": "{:.4f}"})

# %% tags=["remove-cell"]
for (key, s), got in measured.items():
    ml.glue(f"bicubic_{key}_x{s}_psnr", got["psnr"], ".2f")
    ml.glue(f"bicubic_{key}_x{s}_ssim", got["ssim"], ".4f")
for key in ml.sr.EVAL_SETS:       # the claims table names every set: say where one was not measured
    for s in (2, 3, 4):
        if (key, s) not in measured:
            ml.glue(f"bicubic_{key}_x{s}_psnr", f"(not measured at the {ml.scale()} scale)")
            ml.glue(f"bicubic_{key}_x{s}_ssim", "-")
psnr_ok = [r for r in rows if r["match"].startswith("yes")]
ssim_ok = [r for r in rows if r["match"].endswith("yes")]
ml.glue("n_rows", len(rows))
ml.glue("n_psnr_ok", len(psnr_ok))
ml.glue("n_ssim_ok", len(ssim_ok))
misses = [r for r in rows if r["match"].endswith("no")]
psnr_misses = [f"{r['set']} {r['scale']}" for r in rows if r["match"].startswith("no")]
if misses:
    worst = max(abs(r["SSIM"] - r["published SSIM"]) for r in misses)
    miss_sets = sorted({r["set"] for r in misses})
    text = (f". The SSIMs that differ ({', '.join(r['set'] + ' ' + r['scale'] for r in misses)}) are off by at most "
            f"{worst:.5f}")
    if miss_sets == ["BSD100"]:
        text += (": BSD100's published SSIMs come from VDSR's own evaluation code, not from the "
                 "`ssim_index.m` convention that `ml.sr.ssim` follows (and SRCNN's Set5 and Set14 rows use)")
else:
    text = ""
if psnr_misses:
    text += f". The PSNRs that differ: {', '.join(psnr_misses)}"
ml.glue("ssim_misses", text)
ml.glue("sets_measured", ", ".join(table_sets))
set14_rows = [r for r in rows if r["set"] == "Set14"]
ml.glue("set14_now", "Set14 is not measured at this scale" if not set14_rows else
        "Set14 prints the published digits at every scale, PSNR and SSIM (section 8.1.7)"
        if all(r["match"] == "yes / yes" for r in set14_rows) else
        f"Set14 matches the published digits in {sum(r['match'] == 'yes / yes' for r in set14_rows)} of "
        f"{len(set14_rows)} rows (section 8.1.7)")

# %% [markdown]
# On {glue:}`sets_measured`, {glue:}`n_psnr_ok` of {glue:}`n_rows` PSNRs and
# {glue:}`n_ssim_ok` of {glue:}`n_rows` SSIMs print the same digits as the papers{glue:}`ssim_misses`.
# The unit tests (`tests/test_sr.py`) pin these printed digits for every Set5 and Set14 PSNR
# and SSIM and every BSD100 PSNR, so a change to the protocol that moves one of them fails
# the test suite.
#
# ## 8.1.8 Set14's bridge: the 0.1 dB of a grayscale file
#
# A loader that returns every image as RGB (`ml.data.sr_images` does by default, as PIL's
# `convert("RGB")` and most data loaders do) repeats the one channel of Set14's grayscale
# *bridge* three times. The Y of that RGB image is not the file: with $R = G = B = v$,
#
# $$Y = 16 + (65.481 + 128.553 + 24.966)\,v = 16 + 219\,v,$$
#
# so every grey level is squeezed into 16-235, every error shrinks by $219/255$, and the
# PSNR of bridge rises by $20\log_{10}(255/219) = 1.32$ dB; the mean over 14 images by a
# fourteenth of that. The papers' MATLAB scripts read the file as one channel and use it as
# its own Y (`if size(im, 3) > 1, im = rgb2ycbcr(im)`), which is what `ml.sr.eval_images`
# and `ml.sr.hr_y` do. Measured:

# %%
bridge = ml.data.sr_images("Set14", keep_gray=True)[names["Set14"].index("bridge")]
assert bridge.shape[0] == 1
bridge_rgb = bridge.expand(3, -1, -1)               # what an RGB loader returns
rows = []
for s in (2, 3, 4):
    own = ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s), [bridge], s)["psnr"]
    as_rgb = ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s), [bridge_rgb], s)["psnr"]
    rows.append({"scale": f"x{s}", "own": own, "rgb": as_rgb, "gap": as_rgb - own,
                 "set14": (as_rgb - own) / len(names["Set14"])})
ml.bench.Table(rows, title="bicubic on bridge: the file as its own Y vs made RGB and converted",
               headers={"own": "bridge, own Y (dB)", "rgb": "bridge, made RGB (dB)", "gap": "gap (dB)",
                        "set14": "Set14 mean moves by (dB)"},
               formats={"own": "{:.3f}", "rgb": "{:.3f}", "gap": "{:+.3f}", "set14": "{:+.3f}"})

# %% tags=["remove-cell"]
ml.glue("bridge_gap_x2", rows[0]["gap"], ".2f")
ml.glue("bridge_set14_x2", rows[0]["set14"], ".3f")
lo, hi = (f"{v:.3f}" for v in (min(r["set14"] for r in rows), max(r["set14"] for r in rows)))
ml.glue("bridge_set14_range", f"{lo} dB at every scale" if lo == hi else f"{lo} to {hi} dB across the scales")
ml.glue("y_range_db", 20 * math.log10(255 / 219), ".2f")

# %% [markdown]
# Made RGB, bridge reads {glue:}`bridge_gap_x2` dB higher at x2 (the prediction from the
# range alone is {glue:}`y_range_db` dB; the rounding of Y to 8-bit levels makes the
# difference), and the Set14 mean rises by {glue:}`bridge_set14_range`. That is the "Set14 reads 0.1 dB high" that
# the first version of this chapter, which loaded bridge as RGB, attributed to differences
# between copies of Set14: the copy was fine; one file was read with the wrong number of
# channels. With the file read as one channel: {glue:}`set14_now`.

# %% [markdown]
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | SRCNN {cite}`dong2016srcnn`, VDSR {cite}`kim2016vdsr` | bicubic on Set5: 33.66 / 30.39 / 28.42 dB at x2 / x3 / x4 | {glue:}`bicubic_Set5_x2_psnr` / {glue:}`bicubic_Set5_x3_psnr` / {glue:}`bicubic_Set5_x4_psnr` dB |
# | same | bicubic SSIM on Set5: 0.9299 / 0.8682 / 0.8104 | {glue:}`bicubic_Set5_x2_ssim` / {glue:}`bicubic_Set5_x3_ssim` / {glue:}`bicubic_Set5_x4_ssim` |
# | SRCNN {cite}`dong2016srcnn` | bicubic on Set14: 30.23 / 27.54 / 26.00 dB, SSIM 0.8687 / 0.7736 / 0.7019 | {glue:}`bicubic_Set14_x2_psnr` / {glue:}`bicubic_Set14_x3_psnr` / {glue:}`bicubic_Set14_x4_psnr` dB, SSIM {glue:}`bicubic_Set14_x2_ssim` / {glue:}`bicubic_Set14_x3_ssim` / {glue:}`bicubic_Set14_x4_ssim` |
# | VDSR {cite}`kim2016vdsr` | bicubic on BSD100: 29.56 / 27.21 / 25.96 dB, SSIM 0.8431 / 0.7385 / 0.6675 | {glue:}`bicubic_BSD100_x2_psnr` / {glue:}`bicubic_BSD100_x3_psnr` / {glue:}`bicubic_BSD100_x4_psnr` dB, SSIM {glue:}`bicubic_BSD100_x2_ssim` / {glue:}`bicubic_BSD100_x3_ssim` / {glue:}`bicubic_BSD100_x4_ssim` |
# | Keys {cite}`keys1981cubic` | $a=-\frac12$ is the accurate cubic; other $a$ give other images | PyTorch's $a=-\frac34$ moves the x3 baseline by {glue:}`delta_torch_up` dB |

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: PyTorch's resize on both sides (measure, easy)
# Measure the bicubic baseline on Set5 at x3 (rgb-first) with `F.interpolate(...,
# antialias=True)` for the downscale *and* `F.interpolate(mode="bicubic")` for the upscale.
# Which of the two changes matters more?

# %% tags=["solution", "hide-cell"]
# Solution 1
both = protocol_psnr(images, 3, down=torch_down, up=torch_up)
print(f"both resizes from PyTorch: {both:.3f} dB, {both - reference:+.3f} dB against the rgb-first protocol")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The table of section 8.1.6 has the two changes one at a time: the downscale
# ({glue:}`delta_torch_down` dB) and the upscale ({glue:}`delta_torch_up` dB); the cell above
# prints both together, close to their sum. The larger one is {glue:}`ex1_larger`. PyTorch's
# antialiased downscale differs from MATLAB's only at the border (section 8.1.3), which the
# shave mostly removes; its upscale uses the sharper $a=-\frac34$ kernel on every pixel.
# :::

# %% [markdown]
# ### Exercise 2: Y and PSNR by hand (implement, easy)
# Write the luma of a uint8 RGB image as MATLAB's `rgb2ycbcr` computes it (on 0-255 values,
# rounded to integers), check it against `ml.sr.hr_y`, then write the PSNR of one bicubic
# output by hand (`torch.log10`, the shave) and check it against `ml.sr.psnr`.

# %% tags=["solution", "hide-cell"]
# Solution 2
img = sets["Set5"][2]                                            # butterfly, uint8 (3, H, W)
R, G, B = img.double()                                           # 0..255
y_exact = 16 + (65.481 * R + 128.553 * G + 24.966 * B) / 255
y_hand = torch.floor(y_exact + 0.5)                              # uint8 levels, half up
y_lib = (ml.sr.hr_y(img)[0].double() * 255).round()
tie = (y_exact - y_exact.floor() - 0.5).abs() < 1e-9             # exactly half-way between levels
differ = y_lib != y_hand
assert bool((differ <= tie).all()) and bool(((y_lib - y_hand).abs() <= 1).all())
hr = ml.sr.modcrop(y_hand[None] / 255, 3).float()
out = ml.sr.quantize(ml.sr.imresize(ml.sr.imresize(hr, 1 / 3), 3))
mse = ((out.double() * 255 - hr.double() * 255)[..., 3:-3, 3:-3] ** 2).mean()    # 0-255 scale, shaved
by_hand = 10 * torch.log10(255**2 / mse).item()
assert abs(by_hand - ml.sr.psnr(out, hr, shave=3)) < 1e-9
print(f"Y by hand vs hr_y: {int(differ.sum())} of {differ.numel():,} pixels differ, all by one level "
      f"and all at exact ties ({int(tie.sum())} ties)")
print(f"PSNR by hand {by_hand:.4f} dB, equal to ml.sr.psnr within 1e-9 dB: True")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# MATLAB's `rgb2ycbcr` on a uint8 image computes $16 + (65.481 R + 128.553 G + 24.966 B)/255$
# on 0-255 values and stores it as uint8, i.e. rounds half up; the PSNR is then the mean
# squared error on the 0-255 scale inside the shaved border. The hand-written Y equals
# `hr_y` except on the few pixels whose exact value lies half-way between two levels: there
# the order of the float operations decides on which side the sum lands (`hr_y` scales R,
# G, B to $[0, 1]$ first), and the two round to neighbouring levels. The PSNR by hand equals
# `ml.sr.psnr` to $10^{-9}$ dB (float64 arithmetic in a different order).
# :::

# %% [markdown]
# ### Exercise 3: why Y reads higher (explain, medium)
# Why is PSNR on Y higher than PSNR on RGB for the same images? Derive the gap for a
# uniform error of $e$ grey levels on all three channels, and relate it to bridge (section
# 8.1.8).

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# An error of $e$ levels on each of R, G, B changes Y by $e(65.481 + 128.553 + 24.966)/255
# = \tfrac{219}{255}e$ levels, so the MSE on Y is $(219/255)^2$ times the MSE on RGB and the
# PSNR is $20\log_{10}(255/219) = $ {glue:}`y_range_db` dB higher. Real errors are not the
# same on the three channels, but they are strongly correlated, so the RGB row of section
# 8.1.6 ({glue:}`delta_rgb` dB) is of that order. Bridge made RGB is the exact case: its three
# channels are equal, so its errors are too, and it reads {glue:}`bridge_gap_x2` dB higher
# at x2 (the 8-bit rounding of Y moves it a little from the prediction).
# :::

# %% [markdown]
# ### Exercise 4: SSIM with convolutions (implement, medium)
# `ml.sr.ssim` filters with two dense band matrices per image: simple, exact, and
# $O(H^2 W + H W^2)$. Write SSIM with a separable $11\times1$ then $1\times11$ `F.conv2d`
# ("valid": no padding), check it against `ml.sr.ssim` on a bicubic output, and compare
# their speed with `ml.bench.compare`.

# %% tags=["solution", "hide-cell"]
# Solution 4
def ssim_conv(a, b, shave):
    """SSIM of two Y images (1, 1, H, W) in [0, 1], valid 11x11 Gaussian window (sigma 1.5)."""
    a, b = (x[..., shave:-shave, shave:-shave].double() * 255 for x in (a, b))
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5**2))
    g = g / g.sum()

    def blur(x):
        return F.conv2d(F.conv2d(x, g.view(1, 1, 11, 1)), g.view(1, 1, 1, 11))

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2))
            / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean().item()


hr, lr = ml.sr.make_pair(sets["Set14"][1], 3)                     # barbara, 576x720
out = ml.sr.quantize(ml.sr.imresize(lr[None], 3))
err = abs(ssim_conv(out, hr[None], 3) - ml.sr.ssim(out, hr[None], shave=3)[0].item())
assert err < 1e-10
speed = ml.bench.compare(lambda: ml.sr.ssim(out, hr[None], shave=3), lambda: ssim_conv(out, hr[None], 3),
                         warmup=1, repeat=ml.pick(smoke=3, cpu=10, gpu=10))
band_flops = ml.bench.count_flops(lambda: ml.sr.ssim(out, hr[None], shave=3))
conv_flops = ml.bench.count_flops(lambda: ssim_conv(out, hr[None], 3))
print(f"|conv SSIM - ml.sr.ssim| < 1e-10: True; FLOPs counted: band matrices {ml.bench.fmt_flops(band_flops)}, "
      f"convolutions {ml.bench.fmt_flops(conv_flops)}")
print(f"speed of the convolutions against the band matrices (float64, CPU): {speed} -> {speed.verdict}")

# %% tags=["solution", "remove-cell"]
# Solution 4: the numbers its text quotes
ml.glue("ex4_flop_ratio", band_flops / max(conv_flops, 1), ".0f")
why = {"slower": "the band matrices run in a float64 BLAS matmul, a float64 convolution on a CPU in a "
                  "generic, far less optimized kernel, so the FLOPs saved do not turn into time",
       "faster": "here the FLOPs saved do turn into time",
       "no measurable difference": "the FLOPs saved do not turn into a measurable gain in time"}[speed.verdict]
ml.glue("ex4_speed", f"{speed.speedup:.2f}x (IQR {speed.lo:.2f}-{speed.hi:.2f}x: {speed.verdict}); {why}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# A separable window is two 1-D filters, and a 'valid' 2-D filter is a convolution without
# padding, so `F.conv2d` with an $11\times1$ and a $1\times11$ kernel computes the same local
# statistics as the band matrices; the assert shows they agree to float64 rounding. The
# convolution does $2 \cdot 11$ multiply-adds per pixel and statistic, the band matrices
# $H' + W$ (almost all of them with zeros): the FLOP counter charges the band matrices
# {glue:}`ex4_flop_ratio` times more. The speed of the convolutions against the matrices,
# interleaved, is {glue:}`ex4_speed`. FLOPs are not time (notebook 1.1): what counts is how
# well each operation's kernel uses the machine.
# :::

# %% [markdown]
# ### Exercise 5: PyTorch's bicubic as a weight matrix (implement, medium)
# Build the `(out, in)` weight matrix of `F.interpolate(mode="bicubic", align_corners=False)`
# for an upscale by an integer $s$: Keys' kernel with $a=-\frac34$, the index mapping of
# section 8.1.3, and taps beyond the border *clamped* to the edge pixel (PyTorch's rule,
# instead of MATLAB's mirror). Check $W_H X W_W^\top$ against `F.interpolate` on an image.

# %% tags=["solution", "hide-cell"]
# Solution 5
def torch_bicubic_weights(n, s, a=-0.75):
    """(n s, n) weights of F.interpolate(mode='bicubic', align_corners=False), upscale by s."""
    u = (torch.arange(n * s, dtype=torch.float64) + 0.5) / s - 0.5        # 0-based input coordinate
    j = torch.floor(u)[:, None] - 1 + torch.arange(4, dtype=torch.float64)  # 4 taps: (out, 4)
    w = keys(u[:, None] - j, a)
    return torch.zeros(n * s, n, dtype=torch.float64).scatter_add_(1, j.long().clamp(0, n - 1), w)


x = torch.rand(1, 1, 13, 17, dtype=torch.float64)
ours = torch_bicubic_weights(13, 3) @ x @ torch_bicubic_weights(17, 3).T
ref = F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False)
assert (ours - ref).abs().max() < 1e-12
print("W_H X W_W^T equals F.interpolate(mode='bicubic'), max error < 1e-12:", True)

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# Output pixel $x$ (0-based) sits at input coordinate $u = (x + \frac12)/s - \frac12$, the
# 0-based form of the mapping of section 8.1.3; its four taps are $\lfloor u\rfloor - 1,
# \dots, \lfloor u\rfloor + 2$ with weights $k_{-3/4}(u - j)$, which already sum to 1 for an
# upscale. Clamping the tap indices to $[0, n-1]$ and adding the weights of the taps that
# land on the same edge pixel (`scatter_add_`) is PyTorch's border rule; the assert shows the
# two agree everywhere, border included. With $a=-\frac12$ and mirrored taps the same code
# gives `ml.sr.resize_weights(n, n s, s)`.
# :::

# %% [markdown]
# ## Key takeaways
#
# - The published SR protocol ("y-first"): Y of the 8-bit HR file (a grayscale file is its
#   own Y), modcrop, MATLAB bicubic downscale (antialiased, $a=-\frac12$, mirrored
#   borders) kept in float; upscale; round to 8 bits; PSNR/SSIM on BT.601 Y (16-235) with a
#   border shave equal to the scale. With it {glue:}`n_psnr_ok` of {glue:}`n_rows` published
#   bicubic PSNRs and {glue:}`n_ssim_ok` of {glue:}`n_rows` SSIMs on {glue:}`sets_measured`
#   reproduce at their printed digits (section 8.1.7).
# - Bicubic resizing is two matrix products with banded weight matrices; antialiasing is
#   the kernel widened by $1/s$ when shrinking.
# - Each convention (kernel, antialiasing, colour space, range, shave, rounding, how a
#   grayscale file is read) moves the bicubic baseline, some by more than a dB: compare
#   methods only under one evaluation function. Set14's "copy difference" was one
#   grayscale file made RGB: +{glue:}`bridge_set14_x2` dB on the Set14 mean at x2.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
