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
# sets, Set5 {cite}`bevilacqua2012set5` and Set14 {cite}`zeyde2010set14` above all, to two
# decimals. Since SRCNN {cite}`dong2014srcnn` a gain of 0.1 dB is a result, yet the number
# depends on a chain of conventions that papers rarely spell out: how the low-resolution
# (LR) input was made (which resize function, which kernel, with or without antialiasing),
# whether it was rounded to 8 bits, in which colour space PSNR is measured, how many border
# pixels are ignored. Change one link and the bicubic baseline itself moves by more than
# the gap between two published methods. This notebook builds the protocol of the SR
# literature from scratch, the one behind the bicubic numbers every paper prints (Set5:
# 33.66 / 30.39 / 28.42 dB at x2 / x3 / x4), measures how much each convention matters,
# and checks that our implementation reproduces the published baseline.
#
# **Learning objectives.** After this notebook you can
# 1. produce an SR benchmark pair: modcrop, MATLAB-compatible bicubic downscaling with
#    antialiasing, rounding to 8 bits;
# 2. derive bicubic resizing as a weight matrix: Keys' cubic kernel, the pixel-centre index
#    mapping, the widened kernel that antialiases a downscale;
# 3. compute PSNR and SSIM on the luma channel Y of ITU-R BT.601 with a border shave;
# 4. quantify how much each convention moves a published number;
# 5. reproduce the published bicubic baseline on Set5 and Set14 to 0.05 dB.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import minilib as ml

ml.describe()

# %% [markdown]
# ## 1. The test images
#
# Set5 holds 5 images and Set14 14, the uncropped copies shipped with the SRCNN code.
# They are tiny by today's standards (the largest Set5 image is 512x512), which is one
# reason their averages are noisy: a method that is good on *butterfly* moves the Set5
# mean by a fifth of its gain there. `ml.data.sr_images` returns each set as a list of
# uint8 `(3, H, W)` tensors (the sizes differ, so not a batch).

# %%
sets = {"Set5": ml.data.sr_images("Set5"), "Set14": ml.data.sr_images("Set14")}
names = {key: sorted(Path(f.path).stem.replace("_GT", "") for f in ml.data.DATASETS[key.lower()].files)
         for key in sets}
for key, images in sets.items():
    print(key, ", ".join(f"{n} {img.shape[1]}x{img.shape[2]}" for n, img in zip(names[key], images)))


def center_crop(img, size):
    """The central size x size pixels of a (C, H, W) image."""
    top, left = (img.shape[1] - size) // 2, (img.shape[2] - size) // 2
    return img[:, top:top + size, left:left + size]


ml.plot.image_grid(torch.stack([center_crop(img, 128) for img in sets["Set5"] + sets["Set14"][:3]]),
                   names["Set5"] + names["Set14"][:3], ncols=8,
                   title="central 128x128 crops of Set5 and of three Set14 images")
plt.show()

# %% [markdown]
# ## 2. Degradation, step 1: modcrop
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
# ## 3. Degradation, step 2: MATLAB's bicubic `imresize`, derived
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
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
ax1.plot(t, keys(t, -0.5), label="a = -0.5 (MATLAB)")
ax1.plot(t, keys(t, -0.75), "--", label="a = -0.75 (PyTorch, OpenCV)")
ax1.set(title="cubic kernel for upscaling", xlabel="distance (input pixels)")
ax1.legend(loc="upper right", fontsize=8)
third = 1 / 3
ax2.plot(t, third * keys(third * t, -0.5), label="s k(s x), s = 1/3")
ax2.plot(t, keys(t, -0.5), ":", label="k(x) without antialiasing")
ax2.set(title="kernel for a 1/3 downscale", xlabel="distance (input pixels)")
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
# `ml.sr.resize_weights` builds $W$; here are three of them.

# %%
ml.show(ml.sr.resize_weights)

# %%
panels = [("shrink 24 -> 8\nantialiased", ml.sr.resize_weights(24, 8, 1 / 3)),
          ("shrink 24 -> 8\nno antialiasing", ml.sr.resize_weights(24, 8, 1 / 3, antialias=False)),
          ("grow 8 -> 24", ml.sr.resize_weights(8, 24, 3.0))]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), layout="constrained")
for ax, (title, w) in zip(axes, panels):
    lim = w.abs().max().item()
    im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set(title=title, xlabel="input pixel", ylabel="output pixel")
    ax.grid(False)
    fig.colorbar(im, ax=ax, shrink=0.85)
plt.show()
print("row sums of the antialiased shrink:", ml.sr.resize_weights(24, 8, 1 / 3).sum(1).tolist())

# %% [markdown]
# Each row is the stencil of one output pixel (red positive, blue the negative lobes).
# The antialiased shrink spreads every output pixel over about 12 input pixels (width
# $4/s$); without antialiasing the kernel is so narrow that each output pixel copies one
# input pixel and two thirds of the image are ignored. The first and last rows are bent by the
# mirrored border. `ml.sr.imresize` applies the two matrices:

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
    rows.append({"LR made with": name, "max |diff| interior": diff[..., 3:-3, 3:-3].max().item(),
                 "max |diff| border": diff.max().item(), "mean |diff|": diff.mean().item()})
ml.glue("torch_aa_interior", rows[0]["max |diff| interior"], ".1e")
ml.glue("torch_aa_border", rows[0]["max |diff| border"], ".1f")
ml.glue("no_aa_max", max(rows[1]["max |diff| interior"], rows[2]["max |diff| interior"]), ".0f")
ml.bench.Table(rows, title="difference to MATLAB-compatible imresize, butterfly downscaled x3 (grey levels)",
               formats={c: "{:.2f}" for c in ("max |diff| interior", "max |diff| border", "mean |diff|")})

# %% [markdown]
# PyTorch's antialiased resize matches in the interior (largest difference
# {glue:}`torch_aa_interior` grey levels, float rounding) and differs by up to
# {glue:}`torch_aa_border` levels at the border; the non-antialiased resizes differ
# everywhere, by up to {glue:}`no_aa_max` levels on the butterfly's fine texture.
#
# **Step 3: rounding.** The LR images of a benchmark are *files*: 8-bit integers. The
# protocol rounds the LR image to the 256 levels (`ml.sr.quantize`, round half up like
# MATLAB's `uint8`), and rounds the SR output the same way before measuring.
# `ml.sr.make_pair` is the whole degradation:

# %%
ml.show(ml.sr.make_pair)

# %% [markdown]
# ## 4. Measuring: Y of BT.601, border shave, PSNR, SSIM
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
# covariance $\sigma_{ab}$ under an $11\times11$ Gaussian window ($\sigma = 1.5$):
#
# $$\mathrm{SSIM} = \frac{(2\mu_a\mu_b + C_1)(2\sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)},
# \quad C_1 = (0.01 \cdot 255)^2,\ C_2 = (0.03 \cdot 255)^2,$$
#
# averaged over the image. Both come from `ml.sr`:

# %%
ml.show(ml.sr.rgb_to_y)
ml.show(ml.sr.psnr)
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
# `ml.sr.evaluate` runs the whole protocol over a set: for each HR image, make the pair,
# upscale, round to 8 bits, measure PSNR and SSIM on Y with shave $s$; it returns the
# means, as papers report them.

# %%
ml.show(ml.sr.evaluate)

# %% [markdown]
# ## 5. How much each convention moves the number
#
# We take the bicubic baseline on Set5 at x3 (published: 30.39 dB) and change one
# convention at a time. `protocol_psnr` below is the protocol written out with each step
# swappable; with its defaults it is exactly `ml.sr.evaluate`.

# %%
def protocol_psnr(images, s, *, down=None, up=None, rgb=False, shave=None, round_lr=True,
                  full_range_y=False):
    """Mean PSNR of bicubic over `images` at scale s, one convention swapped at a time."""
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
images = sets["Set5"][: ml.pick(smoke=2, cpu=5, gpu=5)]
reference = protocol_psnr(images, s)
torch_up = lambda x: F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)  # noqa: E731
torch_down = lambda x: F.interpolate(x, scale_factor=1 / s, mode="bicubic", antialias=True)  # noqa: E731
variants = {
    "the protocol (MATLAB bicubic, 8-bit LR, Y, shave = s)": {},
    "upscale with F.interpolate (a = -0.75)": {"up": torch_up},
    "downscale with F.interpolate(antialias=True)": {"down": torch_down},
    "downscale without antialiasing": {"down": lambda x: ml.sr.imresize(x, 1 / s, antialias=False)},
    "LR kept in float (not rounded to 8 bits)": {"round_lr": False},
    "PSNR on RGB instead of Y": {"rgb": True},
    "no border shave": {"shave": 0},
    "full-range luma (0.299 R + 0.587 G + 0.114 B)": {"full_range_y": True},
}
rows = []
for name, kwargs in variants.items():
    value = protocol_psnr(images, s, **kwargs)
    rows.append({"protocol": name, "PSNR (dB)": value, "change (dB)": value - reference})
deltas = {row["protocol"]: row["change (dB)"] for row in rows}
ml.glue("delta_torch_up", deltas["upscale with F.interpolate (a = -0.75)"], "+.2f")
ml.glue("delta_no_aa", deltas["downscale without antialiasing"], "+.2f")
ml.glue("delta_rgb", deltas["PSNR on RGB instead of Y"], "+.2f")
ml.glue("delta_full_range", deltas["full-range luma (0.299 R + 0.587 G + 0.114 B)"], "+.2f")
ml.glue("delta_no_shave", deltas["no border shave"], "+.2f")
ml.glue("delta_float_lr", deltas["LR kept in float (not rounded to 8 bits)"], "+.2f")
ml.glue("max_abs_delta", max(abs(v) for v in deltas.values()), ".2f")
ml.bench.Table(rows, title=f"bicubic x{s} on {len(images)} Set5 images: one convention changed at a time",
               formats={"PSNR (dB)": "{:.2f}", "change (dB)": "{:+.2f}"})

# %% [markdown]
# Each line is a choice some published code makes. Upscaling with PyTorch's sharper
# kernel changes the baseline by {glue:}`delta_torch_up` dB, forgetting to antialias the
# downscale by {glue:}`delta_no_aa` dB, measuring on RGB by {glue:}`delta_rgb` dB, and a
# full-range luma (what PIL's `convert("YCbCr")` computes) by {glue:}`delta_full_range` dB: the
# studio-range Y compresses every difference by $219/255$, worth $20\log_{10}(255/219) =
# 1.32$ dB. Two conventions barely matter for bicubic: skipping the shave
# ({glue:}`delta_no_shave` dB) and keeping the LR image in float instead of 8 bits
# ({glue:}`delta_float_lr` dB). The largest change
# here, {glue:}`max_abs_delta` dB, dwarfs the gaps that rank recent methods: HAT and DRCT,
# two attention networks, differ by 0.07 dB on Set5 x4 (33.04 vs 33.11 dB)
# {cite}`chen2023hat,hsu2024drct`. **A number is comparable only under the same protocol.** The only safe comparison is one you run yourself, with one evaluation function for
# every method, which is what the rest of this chapter does.
#
# ## 6. The bicubic baseline, reproduced
#
# Every SR paper since SRCNN prints the same bicubic row. With the protocol above we
# reproduce it for Set5 and Set14 at x2, x3 and x4.

# %%
# Published bicubic baselines, Y channel, shave = scale: Set5 PSNR/SSIM and Set14 PSNR as
# printed in SRCNN (TPAMI) and VDSR; Set14 SSIMs vary between papers and are not quoted.
PUBLISHED_BICUBIC = {
    "Set5": {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)},
    "Set14": {2: (30.23, None), 3: (27.54, None), 4: (26.00, None)},
}
table_sets = ml.pick(smoke=["Set5"], cpu=["Set5", "Set14"], gpu=["Set5", "Set14"])
rows, worst_set5 = [], 0.0
for key in table_sets:
    for s in (2, 3, 4):
        got = ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s), sets[key], s)
        pub_psnr, pub_ssim = PUBLISHED_BICUBIC[key][s]
        ml.glue(f"bicubic_{key}_x{s}_psnr", got["psnr"], ".2f")
        ml.glue(f"bicubic_{key}_x{s}_ssim", got["ssim"], ".4f")
        if key == "Set5":
            worst_set5 = max(worst_set5, abs(got["psnr"] - pub_psnr))
        rows.append({"set": key, "scale": f"x{s}", "PSNR": got["psnr"], "published PSNR": pub_psnr,
                     "difference": got["psnr"] - pub_psnr, "SSIM": got["ssim"], "published SSIM": pub_ssim})
ml.glue("worst_set5", worst_set5, ".3f")
set14_diffs = [r["difference"] for r in rows if r["set"] == "Set14"]
ml.glue("set14_offset", f"{sum(set14_diffs) / len(set14_diffs):+.2f} dB on average" if set14_diffs
        else "(not measured at this scale)")
ml.bench.Table(rows, title="bicubic baseline: measured here vs published (Y channel, shave = scale)",
               formats={"PSNR": "{:.2f}", "published PSNR": "{:.2f}", "difference": "{:+.3f}",
                        "SSIM": "{:.4f}", "published SSIM": "{:.4f}"})

# %% [markdown]
# On Set5 every scale lands within {glue:}`worst_set5` dB of the published value (the unit
# test `tests/test_sr.py` asserts 0.05 dB), so our protocol is the literature's. On Set14
# this copy reads {glue:}`set14_offset` away from the published numbers: copies of Set14
# in circulation differ slightly (image versions and crops), one more reason to evaluate
# every method with the same files and the same code.
#
# ### BSD100
#
# The 100 test images of the Berkeley segmentation dataset {cite}`martin2001bsd` are the
# third standard set. `ml.data` downloads them on first use where a network is available;
# offline (as in CI) we say so and go on.

# %%
try:
    bsd100 = ml.data.sr_images("BSD100")
except (ml.data.DatasetNotFoundError, OSError) as err:
    bsd100 = None
    print("BSD100 is not available here (no network and no local copy); skipping it.")
    print(str(err).splitlines()[0])
if bsd100 is not None:
    from IPython.display import display

    rows = [{"scale": f"x{s}", **ml.sr.evaluate(lambda lr: ml.sr.imresize(lr, s), bsd100, s)} for s in (2, 3, 4)]
    display(ml.bench.Table(rows, title="bicubic on BSD100", formats={"psnr": "{:.2f}", "ssim": "{:.4f}"}))

# %% [markdown]
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | SRCNN {cite}`dong2016srcnn`, VDSR {cite}`kim2016vdsr` | bicubic on Set5: 33.66 / 30.39 / 28.42 dB at x2 / x3 / x4 | {glue:}`bicubic_Set5_x2_psnr` / {glue:}`bicubic_Set5_x3_psnr` / {glue:}`bicubic_Set5_x4_psnr` dB |
# | same | bicubic SSIM on Set5: 0.9299 / 0.8682 / 0.8104 | {glue:}`bicubic_Set5_x2_ssim` / {glue:}`bicubic_Set5_x3_ssim` / {glue:}`bicubic_Set5_x4_ssim` |
# | SRCNN {cite}`dong2016srcnn` | bicubic on Set14: 30.23 / 27.54 / 26.00 dB | {glue:}`set14_offset` on this copy (table above) |
# | Keys {cite}`keys1981cubic` | $a=-\frac12$ is the accurate cubic; other $a$ give other images | PyTorch's $a=-\frac34$ moves the x3 baseline by {glue:}`delta_torch_up` dB |
#
# ## Exercises
#
# 1. Measure the bicubic baseline on Set5 at x3 with `F.interpolate(..., antialias=True)`
#    for *both* the downscale and the upscale. Which of the two changes matters more?
# 2. Write the PSNR of one image by hand (`torch.log10`, no `ml.sr.psnr`) from the two
#    uint8 images, including the Y conversion and the shave, and check it against
#    `ml.sr.psnr`.
# 3. Why is PSNR on Y higher than PSNR on RGB for the same images? Derive the gap for a
#    uniform error of $e$ grey levels on all three channels.
#
# :::{dropdown} Solution 1
# ```python
# tdown = lambda x: F.interpolate(x, scale_factor=1/3, mode="bicubic", antialias=True)
# tup = lambda x: F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False)
# print(protocol_psnr(sets["Set5"], 3, down=tdown, up=tup))
# ```
# The downscale differs from MATLAB's only at the border (which the shave mostly removes),
# so almost all of the change comes from the sharper $a=-\frac34$ upscaling kernel.
# :::
#
# :::{dropdown} Solution 2
# ```python
# hr = ml.sr.modcrop(sets["Set5"][0].float() / 255, 3)
# lr = ml.sr.quantize(ml.sr.imresize(hr, 1 / 3))
# out = ml.sr.quantize(ml.sr.imresize(lr, 3))
# y = lambda x: 16 + 65.481 * x[0] + 128.553 * x[1] + 24.966 * x[2]
# mse = ((y(out) - y(hr))[3:-3, 3:-3].double() ** 2).mean()
# print(10 * torch.log10(255**2 / mse).item(), ml.sr.psnr(out, hr, shave=3))
# ```
# :::
#
# :::{dropdown} Solution 3
# An error of $e$ levels on each of R, G, B changes Y by $e(65.481 + 128.553 + 24.966)/255
# = \tfrac{219}{255}e$ levels, so the MSE on Y is $(219/255)^2$ times the MSE on RGB and the
# PSNR is $20\log_{10}(255/219) = 1.32$ dB higher. Real errors are not the same on the three
# channels, but they are strongly correlated, so the gap in the table is of that order.
# :::
#
# ## Key takeaways
#
# - The SR protocol is: modcrop, MATLAB bicubic downscale (antialiased, $a=-\frac12$,
#   mirrored borders), round to 8 bits; upscale; round; PSNR/SSIM on BT.601 Y (16-235)
#   with a border shave equal to the scale.
# - Bicubic resizing is two matrix products with banded weight matrices; antialiasing is
#   the kernel widened by $1/s$ when shrinking.
# - Each convention (kernel, antialiasing, colour space, range, shave) moves the bicubic
#   baseline by 0.1 to over 1 dB: compare methods only under one evaluation function. Ours
#   reproduces the published Set5 baseline to {glue:}`worst_set5` dB.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
