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
# # 5.1 Uniform affine quantization: the grid, its error, and the number formats
#
# A trained network stores every weight as a 32-bit float, and moves every activation as
# one. Most of those bits carry noise: the network works as well with 8 of them, often with
# 4. Storing a tensor in 8 bits instead of 32 cuts its memory and the bytes moved to read
# it by four, and an 8-bit integer multiply-add costs a fraction of the energy and chip
# area of a float one {cite}`jacob2018quantization`. Chapter 1's roofline said which of
# the two matters: for memory-bound work (batch-1 generation, small layers) fewer bytes
# *is* speed. Every quantization method in the literature, from integer-only CNNs to 4-bit
# LLMs {cite}`nagel2021white,gholami2021survey`, is built on the same two lines of
# arithmetic: round to a uniform grid, and scale back. This notebook derives them, measures
# their error, and compares the integer grids with the floating-point formats (FP8, FP4)
# that newer hardware offers.
#
# **Learning objectives.** After this notebook you can
# 1. derive the scale and zero point of a symmetric and an asymmetric $b$-bit grid, and
#    check your quantizer bit for bit against PyTorch's `torch.fake_quantize_*` ops;
# 2. predict the signal-to-noise ratio of a grid from its step, bit by bit;
# 3. explain why per-channel and per-group scales beat one scale per tensor, and what
#    they cost in bits per weight;
# 4. split quantization error into rounding and clipping error, and find the clipping
#    range that minimizes their sum;
# 5. read the value grids of FP8 (E4M3, E5M2) and FP4 (E2M1) and predict when a float
#    grid beats an integer grid of the same width.

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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import minilib as ml

ml.describe()
ml.plot.style()


def plain_log_ticks(axis):
    """Log-axis ticks at 1, 2, 5 x 10^k written as plain numbers (0.5, 1, 2, 5, 10, 20)."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


# %% [markdown]
# Everything in this notebook runs in float32 on the CPU: the tensors are small, and the
# quantities measured (codes, errors, signal-to-noise ratios) do not depend on the device.
#
# ## 5.1.1 The grid: scale and zero point
#
# A $b$-bit integer takes $2^b$ values. Uniform quantization maps a real interval onto them
# with an affine map: a **scale** $s > 0$ (the real distance between two neighbouring grid
# points) and a **zero point** $z$ (the integer that real $0$ maps to):
#
# $$q = \operatorname{clamp}\big(\operatorname{round}(x / s) + z,\; q_\min,\; q_\max\big),
# \qquad \hat x = (q - z)\,s .$$
#
# The integer tensor $q$ plus the two numbers $(s, z)$ is what gets stored; $\hat x$ is what
# the network computes with. Two choices of grid are common:
#
# - **Symmetric** ($z = 0$): $q \in [-(2^{b-1}-1),\, 2^{b-1}-1]$ and
#   $s = \max|x| / (2^{b-1}-1)$. Zero is exact, $-q$ is always representable, and a
#   product of two symmetric values needs no zero-point correction, which is why weights
#   are nearly always quantized this way. We leave out $-2^{b-1}$, as LLM.int8's absmax
#   quantization does {cite}`dettmers2022llmint8`: the grid stays symmetric about zero and
#   has $2^b - 1$ levels, not $2^b$ (the *restricted* range; section 5.1.2 measures what
#   that costs).
# - **Asymmetric** (affine): $q \in [0, 2^b - 1]$, $s = (\max x - \min x)/(2^b - 1)$,
#   $z = \operatorname{round}(-\min x / s)$. It spends the whole grid on $[\min x, \max x]$,
#   which matters for one-sided data such as the output of a ReLU
#   {cite}`jacob2018quantization`.
#
# In both cases the range is first widened to contain $0$, so that zero (padding, ReLU
# zeros) is represented exactly. Here is the whole thing, from scratch, on a tensor:

# %%
def quantize_naive(x, bits, symmetric=True):
    """Textbook per-tensor quantization: integer codes q, scale s and zero point z."""
    if symmetric:
        q_max = 2 ** (bits - 1) - 1
        q_min = -q_max
        s = x.abs().max().item() / q_max
        z = 0
    else:
        q_min, q_max = 0, 2 ** bits - 1
        lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)  # the range must contain 0
        s = (hi - lo) / (q_max - q_min)
        z = round(q_min - lo / s)                                   # q(lo) = q_min
    q = torch.clamp(torch.round(x / s) + z, q_min, q_max)
    return q, s, z


x = torch.tensor([-1.2, -0.5, 0.0, 0.3, 0.9, 2.4])
grids = {}
for symmetric in (True, False):
    q, s, z = quantize_naive(x, 4, symmetric)
    grids["symmetric" if symmetric else "asymmetric"] = (q, (q - z) * s, s, z)
rows = [{"x": v, **{f"{g} {what}": (int(q[i]) if what == "q" else x_hat[i].item())
                    for g, (q, x_hat, _, _) in grids.items() for what in ("q", "x_hat")}}
        for i, v in enumerate(x.tolist())]
(_, _, s_sym, _), (_, _, s_asym, z_asym) = grids.values()
ml.bench.Table(rows, title=f"4-bit quantization of six numbers (symmetric: s = {s_sym:.3f}, z = 0; "
                           f"asymmetric: s = {s_asym:.3f}, z = {z_asym})",
               headers={"symmetric x_hat": "symmetric x̂", "asymmetric x_hat": "asymmetric x̂"},
               formats={"x": "{:g}", "symmetric x_hat": "{:.3f}", "asymmetric x_hat": "{:.3f}"})

# %% [markdown]
# The symmetric grid has to reach $2.4$ on the positive side, so it wastes its negative
# half below $-1.2$; the asymmetric grid covers exactly $[-1.2, 2.4]$ with all 16 levels,
# and its step is smaller. Drawn as a function, quantize-then-dequantize is a staircase
# that is flat outside the range: inside it the error is **rounding** (at most $s/2$),
# outside it is **clipping** (unbounded).

# %%
xs = torch.linspace(-1.8, 2.8, 2001)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
for ax, symmetric in zip(axes, (True, False)):
    s, z = ml.quant.qparams(-1.0, 2.0, 3, symmetric)
    ax.plot(xs, xs, color="0.75", label="identity")
    ax.plot(xs, ml.quant.fake_quant(xs, 3, symmetric, scale=s, zero_point=z), label="$\\hat x$ (3 bits)")
    ax.axvspan(-1.0, 2.0, color="C0", alpha=0.06, label="range [-1, 2]")
    ax.set(title=f"{'symmetric' if symmetric else 'asymmetric'}: s={s.item():.3f}, z={z.item()}",
           xlabel="input x (arbitrary units)")
axes[0].set_ylabel("dequantized value $\\hat x$")
axes[0].legend(loc="upper left", fontsize=9)
plt.show()

# %% [markdown]
# ### Checked against PyTorch
#
# PyTorch's quantization-aware training uses `torch.fake_quantize_per_tensor_affine` and
# `torch.fake_quantize_per_channel_affine`: exactly $\hat x$ above, given $s$, $z$,
# $q_\min$ and $q_\max$. Our library version, `ml.quant.fake_quant`, computes the
# parameters with `ml.quant.qparams` and rounds the same way (round half to even, and
# $x \cdot (1/s)$ in float32 rather than $x / s$, as PyTorch's kernels do), so the two must
# agree **bit for bit**, including at exact ties $x = (k + \tfrac12) s$ where sloppier
# implementations round differently. The gradient is the straight-through estimator
# (notebook 5.3): 1 inside the range, 0 where clipped.

# %%
ml.show(ml.quant.qparams)

# %%
ml.show(ml.quant.fake_quant)

# %% tags=["nbval-check-output"]
g = torch.Generator().manual_seed(0)
probe = torch.randn(4096, generator=g) * torch.where(torch.rand(4096, generator=g) < 0.01, 20.0, 1.0)
n_checks = n_equal = 0
for bits in (2, 4, 8):
    for symmetric in (True, False):
        _, s, z = ml.quant.quantize(probe, bits, symmetric)
        q_min, q_max = ml.quant.qrange(bits, symmetric)
        x = torch.cat([probe * 1.3, (torch.arange(-40, 40) + 0.5) * s])  # beyond the range + exact ties
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = ml.quant.fake_quant(a, bits, symmetric, scale=s, zero_point=z)
        ref = torch.fake_quantize_per_tensor_affine(b, s, z, q_min, q_max)
        ours.sum().backward()
        ref.sum().backward()
        n_checks += 1
        n_equal += bool(torch.equal(ours, ref) and torch.equal(a.grad, b.grad))
naive_agrees = torch.allclose(quantize_naive(probe, 8, False)[0],
                              ml.quant.quantize(probe, 8, False)[0].float())
print(f"per-tensor fake quantization equal to PyTorch (forward and gradient): {n_equal} of {n_checks}")
print(f"our from-scratch quantize_naive gives the library's codes: {naive_agrees}")

# %% [markdown]
# ## 5.1.2 Symmetric or asymmetric, and what one bit is worth
#
# The standard figure of merit of a quantizer is its **signal-to-quantization-noise ratio**
#
# $$\mathrm{SQNR} = 10\log_{10}\frac{\sum x^2}{\sum (x - \hat x)^2}\ \text{dB}$$
#
# (`ml.quant.sqnr`). Inside the range the rounding error is close to uniform on
# $[-s/2, s/2]$, whose variance is $s^2/12$ {cite}`bennett1948spectra`. A symmetric grid on
# one-sided data uses only half its levels, which costs about one bit. Let us measure that
# on zero-mean data and on ReLU outputs.

# %%
n = ml.pick(smoke=20_000, cpu=200_000, gpu=1_000_000)
ml.seed_all(0)
gauss = torch.randn(n)
signals = {"Gaussian (zero mean)": gauss, "ReLU(Gaussian) (one-sided)": gauss.relu()}
rows = []
for name, sig in signals.items():
    for bits in (8, 4):
        row = {"data": name, "bits": bits}
        for symmetric in (True, False):
            row["symmetric" if symmetric else "asymmetric"] = ml.quant.sqnr(sig, ml.quant.fake_quant(sig, bits, symmetric))
        row["asym - sym"] = row["asymmetric"] - row["symmetric"]
        rows.append(row)
relu_gain = rows[2]["asym - sym"]
gauss_gain = rows[0]["asym - sym"]
ml.bench.Table(rows, title="SQNR (dB) of per-tensor min/max quantization",
               headers={"symmetric": "symmetric (dB)", "asymmetric": "asymmetric (dB)", "asym - sym": "gain of asymmetric (dB)"},
               formats={"symmetric": "{:.1f}", "asymmetric": "{:.1f}", "asym - sym": "{:+.1f}"})

# %% tags=["remove-cell"]
ml.glue("relu_asym_gain", relu_gain, ".1f")
ml.glue("gauss_asym_gain", gauss_gain, "+.1f")

# %% [markdown]
# On the ReLU outputs the asymmetric grid gains {glue:}`relu_asym_gain` dB at 8 bits,
# about the 6 dB of one bit; on zero-mean data the difference is {glue:}`gauss_asym_gain`
# dB. That is why activations after a ReLU are usually quantized asymmetrically, and
# weights (zero-mean) symmetrically.
#
# **What one bit buys, exactly.** With min/max ranges nothing is clipped, so the noise is
# the rounding noise $s_b^2/12$ alone, with $s_b = M/(2^{b-1}-1)$ and $M = \max|x|$ the same
# for every $b$ (the data do not change). The signal power $\sigma^2$ does not change
# either, so
#
# $$\begin{aligned}
# \mathrm{SQNR}_b &= 10\log_{10}\frac{12\,\sigma^2\,(2^{b-1}-1)^2}{M^2},\\
# \mathrm{SQNR}_{b+1} - \mathrm{SQNR}_{b} &= 20\log_{10}\frac{2^{b}-1}{2^{b-1}-1}.
# \end{aligned}$$
#
# The textbook's 6.02 dB per bit assumes that the step halves exactly with each bit, as it
# does when a range is cut into $2^b$ equal cells. Our grid puts its outermost levels on
# $\pm M$ and, restricted, has $2^b - 1$ levels, so its step shrinks by the ratio
# $(2^b-1)/(2^{b-1}-1)$ per bit, which is more than 2: $15/7$ from 4 to 5 bits, $127/63$
# from 7 to 8. Each bit is worth a little more than 6.02 dB, and the gain tends to 6.02 dB
# as $b$ grows. From 4 to 8 bits the prediction is
# $\tfrac14 \cdot 20\log_{10}(127/7) = 6.29$ dB per bit. The measurement:

# %%
db_per_bit_theory = lambda b: 20 * math.log10((2 ** b - 1) / (2 ** (b - 1) - 1))  # from b to b + 1 bits
sqnr_by_bits = {b: ml.quant.sqnr(gauss, ml.quant.fake_quant(gauss, b)) for b in range(2, 9)}
steps = [{"bits": f"{b} → {b + 1}", "measured (dB)": sqnr_by_bits[b + 1] - sqnr_by_bits[b],
          "predicted (dB)": db_per_bit_theory(b)} for b in range(2, 8)]
for r in steps:
    r["difference (dB)"] = r["measured (dB)"] - r["predicted (dB)"]
db_per_bit = (sqnr_by_bits[8] - sqnr_by_bits[4]) / 4
db_per_bit_pred = 20 * math.log10(127 / 7) / 4
worst_step = max(abs(r["difference (dB)"]) for r in steps[1:])  # from 3 bits on
ml.bench.Table(steps, title="SQNR gained per extra bit on Gaussian data, symmetric min/max grid; "
                            "predicted: 20 log10((2^b - 1) / (2^(b-1) - 1))",
               formats={"measured (dB)": "{:.2f}", "predicted (dB)": "{:.2f}", "difference (dB)": "{:+.2f}"})

# %% tags=["remove-cell"]
ml.glue("db_per_bit", db_per_bit, ".2f")
ml.glue("db_per_bit_pred", db_per_bit_pred, ".2f")
ml.glue("db_per_bit_diff", abs(db_per_bit - db_per_bit_pred), ".3f")
ml.glue("db_step_worst", worst_step, ".2f")
ml.glue("db_step_2to3", steps[0]["measured (dB)"], ".1f")
ml.glue("db_step_2to3_pred", steps[0]["predicted (dB)"], ".1f")

# %% [markdown]
# From 4 to 8 bits the symmetric quantizer gains {glue:}`db_per_bit` dB per bit on the
# Gaussian, against the predicted {glue:}`db_per_bit_pred` for this grid (difference
# {glue:}`db_per_bit_diff` dB per bit): the measurement agrees with the theory of the
# restricted grid, and the 6.02 dB of the textbook is its limit for many bits. Step by
# step, from 3 bits on, measurement and prediction differ by at most {glue:}`db_step_worst`
# dB. The only step that misses is 2 to 3 bits ({glue:}`db_step_2to3` dB measured,
# {glue:}`db_step_2to3_pred` predicted): with three levels $\{-s, 0, s\}$ the error is no
# longer uniform on $[-s/2, s/2]$, since most of a Gaussian falls into the bin around zero.
#
# ## 5.1.3 Granularity: per tensor, per channel, per group
#
# One scale for a whole weight matrix is set by its single largest entry. If the rows
# (output channels) have very different ranges, the small rows get only a few grid levels.
# The fix is more scales {cite}`krishnamoorthi2018quantizing`:
#
# - **per-channel**: one $(s, z)$ per output channel (row of $W$): a $C_\text{out}$-vector
#   of scales, free at inference, since the scale of output channel $j$ multiplies the
#   whole $j$-th output: $y_j = s_j \sum_k q_{jk} x_k$;
# - **per-group**: one scale per $g$ consecutive weights of a row (e.g. $g = 32$ to $128$
#   for 4-bit LLM weights): finer, at the cost of $16$ or $32$ bits of scale per $g$
#   weights, and of kernels that rescale inside the dot product.
#
# Per-group is per-channel on the weight reshaped to $(-1, g)$: the library implements it
# that way, and again we check both against `torch.fake_quantize_per_channel_affine`.

# %% tags=["nbval-check-output"]
w = torch.randn(24, 64, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3, 24)[:, None]
n_checks = n_equal = 0
for bits, symmetric in [(8, True), (4, True), (4, False), (3, True)]:
    q_min, q_max = ml.quant.qrange(bits, symmetric)
    _, s, z = ml.quant.quantize(w, bits, symmetric, axis=0)                      # per output channel
    n_equal += torch.equal(ml.quant.fake_quant(w, bits, symmetric, axis=0),
                           torch.fake_quantize_per_channel_affine(w, s, z, 0, q_min, q_max))
    _, sg, zg = ml.quant.quantize(w, bits, symmetric, group_size=16)            # per group of 16
    ref_g = torch.fake_quantize_per_channel_affine(w.reshape(-1, 16), sg.flatten(), zg.flatten(), 0, q_min, q_max)
    n_equal += torch.equal(ml.quant.fake_quant(w, bits, symmetric, group_size=16), ref_g.reshape(w.shape))
    n_checks += 2
print(f"per-channel and per-group fake quantization equal to PyTorch: {n_equal} of {n_checks}")

# %% [markdown]
# How much do the extra scales buy on real weights? We take the trained CNN and CharGPT of
# chapter 1. In the CNN every convolution is followed by a BatchNorm, which rescales each
# channel anyway, so nothing but weight decay ties the ranges of the channels together:

# %%
cnn, _ = ml.baselines.cifar_cnn()
gpt, _ = ml.baselines.char_gpt()
cnn_weights = {n: m.weight.detach().float().cpu().flatten(1) for n, m in cnn.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
gpt_weights = {n: m.weight.detach().float().cpu() for n, m in gpt.named_modules()
               if isinstance(m, nn.Linear) and n != "head"}  # the head is the (tied) embedding
spread = lambda w: (w.abs().amax(dim=1).max() / w.abs().amax(dim=1).min()).item()
widest = max(cnn_weights, key=lambda n: spread(cnn_weights[n]))  # the layer with the widest spread
row_max = cnn_weights[widest].abs().amax(dim=1).sort(descending=True).values
fig, ax = plt.subplots(figsize=(6.4, 3))
ax.bar(range(len(row_max)), row_max, color="C0")
ax.axhline(row_max.max(), color="C3", linestyle="--", label="per-tensor range")
ax.set(xlabel="output channel (sorted by range)", ylabel="max |w| of the channel",
       title=f"CNN layer {widest}: range of each output channel")
ax.legend()
plt.show()
conv_range_ratio = (row_max.max() / row_max.min()).item()

# %% tags=["remove-cell"]
ml.glue("conv_range_ratio", conv_range_ratio, ".1f")


# %%
def mean_sqnr(weights, bits, **layout):
    """Mean SQNR (dB) over a dict of weight matrices, quantized with the given layout."""
    return sum(ml.quant.sqnr(w, ml.quant.fake_quant(w, bits, **layout)) for w in weights.values()) / len(weights)


rows = []
for model, weights, layouts in [
    ("ResNet-9 (convs)", cnn_weights, [("per-tensor", {}), ("per-channel", {"axis": 0})]),
    ("CharGPT (linears)", gpt_weights, [("per-tensor", {}), ("per-channel", {"axis": 0}),
                                        ("per-group g=32", {"group_size": 32}),
                                        ("per-group g=8", {"group_size": 8})]),
]:
    for label, layout in layouts:
        g_size = layout.get("group_size")
        rows.append({"model": model, "granularity": label,
                     **{f"SQNR {b} bits": mean_sqnr(weights, b, **layout) for b in (8, 4, 3)},
                     "bits/weight at 4 bits": 4 + (32 / g_size if g_size else 0)})
gran = {(r["model"].split()[0], r["granularity"]): r["SQNR 4 bits"] for r in rows}
ml.bench.Table(rows, title="weight SQNR (dB, mean over layers) by granularity; 32-bit scales",
               headers={f"SQNR {b} bits": f"{b} bits (dB)" for b in (8, 4, 3)} | {"bits/weight at 4 bits": "bits per weight at 4 bits"},
               formats={f"SQNR {b} bits": "{:.1f}" for b in (8, 4, 3)} | {"bits/weight at 4 bits": "{:.2f}"})

# %% tags=["remove-cell"]
ml.glue("cnn_perchannel_gain", gran[("ResNet-9", "per-channel")] - gran[("ResNet-9", "per-tensor")], ".1f")
ml.glue("gpt_perchannel_gain", gran[("CharGPT", "per-channel")] - gran[("CharGPT", "per-tensor")], ".1f")
ml.glue("gpt_group32_gain", gran[("CharGPT", "per-group g=32")] - gran[("CharGPT", "per-channel")], ".1f")

# %% [markdown]
# In the CNN layer with the widest spread (plotted), the widest output channel spans
# {glue:}`conv_range_ratio` times the range of the narrowest. At 4 bits, per-channel scales
# gain {glue:}`cnn_perchannel_gain` dB over one scale per tensor for the CNN and
# {glue:}`gpt_perchannel_gain` dB for CharGPT; groups of 32 add another
# {glue:}`gpt_group32_gain` dB for one extra bit per weight (a 32-bit scale per 32 weights;
# real 4-bit checkpoints store 16-bit scales, half that).
#
# ## 5.1.4 Rounding error vs clipping error
#
# Nothing forces the grid to cover the whole range. Clip at $\pm c$ instead of $\pm\max|x|$
# and two errors trade off: the **rounding** error of the values inside, about
# $P(|x|\le c)\,s^2/12$ with $s = c / (2^{b-1}-1)$, shrinks as $c$ shrinks; the
# **clipping** error of the values outside, $E\big[(|x| - c)^2;\ |x| > c\big]$, grows.
# A few huge values make min/max clipping expensive: they stretch the grid for everyone.
# `ml.quant.choose_range` implements three ways to pick $c$ from data: the min/max, a
# percentile of $|x|$, and the $c$ that minimizes the measured mean squared error (a grid
# search over $c$), the calibration methods of notebook 5.2.

# %%
ml.show(ml.quant.choose_range)

# %%
ml.seed_all(0)
heavy = torch.distributions.StudentT(3.0).sample((n,)) / math.sqrt(3.0)  # unit variance, heavy tails
dists = {"Gaussian": gauss, "Student-t, 3 dof": heavy}
bits = 4
q_max = ml.quant.qrange(bits)[1]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
summary = []
for ax, (name, v) in zip(axes, dists.items()):
    amax = v.abs().max().item()
    clips = torch.logspace(math.log10(0.5), math.log10(amax), ml.pick(smoke=40, cpu=120, gpu=120))
    rounding, clipping, theory = [], [], []
    for c in clips.tolist():
        s = torch.tensor(c / q_max)
        err = (ml.quant.fake_quant(v, bits, scale=s) - v).square()
        inside = v.abs() <= c
        rounding.append(err[inside].sum().item() / v.numel())
        clipping.append(err[~inside].sum().item() / v.numel())
        theory.append(inside.float().mean().item() * s.item() ** 2 / 12)
    total = [r + c for r, c in zip(rounding, clipping)]
    ax.plot(clips, total, label="total", color="k")
    ax.plot(clips, rounding, label="rounding", color="C0")
    ax.plot(clips, theory, "--", label="$P(|x|\\leq c)\\,s^2/12$", color="C0", alpha=0.6)
    ax.plot(clips, clipping, label="clipping", color="C3")
    ranges = {m: ml.quant.choose_range(v, bits, m)[1].item() for m in ml.quant.CALIBRATION_METHODS}
    for (m, c), style in zip(ranges.items(), (":", "-.", "--")):
        ax.axvline(c, color="0.4", linestyle=style, label=f"c: {m}")
    ax.set(xscale="log", yscale="log", xlabel="clipping range c (standard deviations)", title=f"{name}, {bits} bits")
    plain_log_ticks(ax.xaxis)
    ax.set_ylim(1e-5, 1)
    for m, c in ranges.items():
        s, z = ml.quant.qparams(-c, c, bits)
        summary.append({"data": name, "method": m, "c / std": c,
                        "SQNR (dB)": ml.quant.sqnr(v, ml.quant.fake_quant(v, bits, scale=s, zero_point=z)),
                        "clipped": (v.abs() > c).float().mean().item()})
axes[0].set_ylabel("mean squared error (variance units)")
fig.legend(*axes[1].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=9)
plt.show()
by = {(r["data"], r["method"]): r for r in summary}
ml.bench.Table(summary, title=f"{bits}-bit symmetric clipping ranges chosen three ways",
               headers={"c / std": "c (standard deviations)", "clipped": "values clipped"},
               formats={"c / std": "{:.2f}", "SQNR (dB)": "{:.1f}", "clipped": "{:.4%}"})

# %% tags=["remove-cell"]
ml.glue("t_mse_gain", by[("Student-t, 3 dof", "mse")]["SQNR (dB)"] - by[("Student-t, 3 dof", "minmax")]["SQNR (dB)"], ".1f")
ml.glue("g_mse_gain", by[("Gaussian", "mse")]["SQNR (dB)"] - by[("Gaussian", "minmax")]["SQNR (dB)"], ".1f")
ml.glue("t_mse_clip", by[("Student-t, 3 dof", "mse")]["c / std"], ".2f")
ml.glue("t_max", heavy.abs().max().item(), ".0f")

# %% [markdown]
# The measured rounding error follows $P(|x|\le c)\,s^2/12$ closely as long as the step
# is small compared with the spread of the data; where the step grows beyond about a
# standard deviation (the right end of the Student-t panel), most values fall into the
# bin around zero, the error is no longer uniform over a bin, and the formula
# overestimates it, as in the 2-bit row of section 5.1.2. The total error has a clear
# minimum well inside the data's range. On the heavy-tailed data the largest
# value is {glue:}`t_max` standard deviations out; the MSE-optimal 4-bit grid clips at
# {glue:}`t_mse_clip` and gains {glue:}`t_mse_gain` dB over min/max (on the Gaussian:
# {glue:}`g_mse_gain` dB). At 8 bits the steps are 16 times finer and the balance moves
# (exercise 1). The percentile rule is a cheap approximation whose quality depends on
# picking the percentile for the bit width.
#
# ## 5.1.5 Floating-point formats: FP8 and FP4
#
# An integer grid is uniform: its absolute error is the same everywhere, so small values
# get a large *relative* error. A floating-point grid is a sign, an exponent $e$ and a
# mantissa $m$: $x = \pm 2^{e - \text{bias}} (1 + m / 2^M)$. Within each power of two (a
# *binade*) it is uniform with $2^M$ steps, so its relative error is roughly constant,
# $\le 2^{-(M+1)}$: a logarithmic grid. Hopper and Blackwell GPUs multiply two 8-bit float
# formats {cite}`micikevicius2022fp8`, which PyTorch exposes as dtypes:
#
# - **E4M3** (`torch.float8_e4m3fn`): 4 exponent bits, 3 mantissa bits, max 448, no
#   infinities; for weights and activations;
# - **E5M2** (`torch.float8_e5m2`): more range (max 57344), less precision; for gradients;
#
# and Blackwell adds **FP4 E2M1** (1 sign, 2 exponent, 1 mantissa bit: the 8 magnitudes
# $0, 0.5, 1, 1.5, 2, 3, 4, 6$), always with a shared scale per small block of values
# {cite}`rouhani2023microscaling`. Every FP8 value can be listed by reading the 256 bit
# patterns as FP8:

# %%
def fp8_values(dtype):
    """All finite values of an FP8 dtype, by reinterpreting the 256 bit patterns."""
    v = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    return v[torch.isfinite(v)].unique()


value_grids = {
    "int8 (symmetric)": torch.arange(-127, 128).float(),
    "fp8 E4M3": fp8_values(torch.float8_e4m3fn),
    "fp8 E5M2": fp8_values(torch.float8_e5m2),
    "int4 (symmetric)": torch.arange(-7, 8).float(),
    "fp4 E2M1": torch.tensor(ml.quant.FP4_E2M1_VALUES + tuple(-v for v in ml.quant.FP4_E2M1_VALUES[1:])).unique(),
}
rows = []
for name, v in value_grids.items():
    pos = v[v > 0]
    rows.append({"format": name, "distinct values": v.numel(), "max": pos.max().item(),
                 "smallest > 0": pos.min().item(), "max / smallest": (pos.max() / pos.min()).item()})
ratios = {r["format"]: r["max / smallest"] for r in rows}
ml.bench.Table(rows, title="value grids of 8- and 4-bit formats",
               headers={"smallest > 0": "smallest positive", "max / smallest": "max / smallest positive"},
               formats={"max": "{:g}", "smallest > 0": "{:.3g}", "max / smallest": "{:,.0f}"})

# %% tags=["remove-cell"]
ml.glue("e4m3_max", torch.finfo(torch.float8_e4m3fn).max, "g")
ml.glue("e5m2_max", torch.finfo(torch.float8_e5m2).max, "g")
ml.glue("e5m2_dyn_range", ratios["fp8 E5M2"], ".1e")
ml.glue("e4m3_dyn_range", ratios["fp8 E4M3"], ".1e")

# %%
fig, axes = plt.subplots(2, 1, figsize=(9, 3.8))
for ax, names in zip(axes, (["int8 (symmetric)", "fp8 E4M3", "fp8 E5M2"], ["int4 (symmetric)", "fp4 E2M1"])):
    for i, name in enumerate(names):
        pos = value_grids[name][value_grids[name] > 0]
        ax.eventplot((pos / pos.max()).numpy(), lineoffsets=i, linelengths=0.7, colors=f"C{i}", linewidths=0.6)
    ax.set(xscale="log", xlim=(1e-6 if "int8" in names[0] else 5e-2, 1.3), yticks=range(len(names)), yticklabels=names)
    ax.grid(False)
plain_log_ticks(axes[1].xaxis)
axes[0].xaxis.set_minor_formatter(NullFormatter())
axes[1].set_xlabel("positive grid values, divided by the format's maximum (log scale)")
fig.suptitle("Integer grids are uniform, float grids logarithmic")
plt.show()

# %% [markdown]
# Relative to its maximum, E5M2 reaches values {glue:}`e5m2_dyn_range` times smaller and
# E4M3 {glue:}`e4m3_dyn_range` times smaller, while int8 stops at 1/127 and rounds
# everything below half of that to zero. Below we scale each tensor so that its largest
# magnitude lands on the format's maximum (`ml.quant.fp8_round_trip`, `ml.quant.fp4_e2m1`)
# and compare the errors, first as a function of the magnitude, then as SQNR on zero-mean
# Gaussian and on heavy-tailed data.

# %%
ml.show(ml.quant.fp8_round_trip)

# %%
mags = torch.logspace(-4, 0, 400)
probe = torch.cat([mags, torch.tensor([1.0])])                   # scale: max |x| = 1
fig, ax = plt.subplots(figsize=(6.4, 3.4))
for name, fn in [("int8", lambda t: ml.quant.fake_quant(t, 8)),
                 ("fp8 E4M3", lambda t: ml.quant.fp8_round_trip(t, torch.float8_e4m3fn)),
                 ("fp8 E5M2", lambda t: ml.quant.fp8_round_trip(t, torch.float8_e5m2))]:
    rel = ((fn(probe) - probe).abs() / probe)[:-1]
    ax.plot(mags, rel.clamp(min=1e-4), label=name)
ax.set(xscale="log", yscale="log", xlabel="|x| / max|x|", ylabel="relative error |x̂ - x| / |x|",
       title="Uniform absolute error (int) vs uniform relative error (float)")
ax.legend()
plt.show()

# %%
rows = []
formats = [
    ("int8, per tensor", 8, lambda t: ml.quant.fake_quant(t, 8)),
    ("fp8 E4M3, per tensor", 8, lambda t: ml.quant.fp8_round_trip(t, torch.float8_e4m3fn)),
    ("fp8 E5M2, per tensor", 8, lambda t: ml.quant.fp8_round_trip(t, torch.float8_e5m2)),
    ("int4, per tensor", 4, lambda t: ml.quant.fake_quant(t, 4)),
    ("fp4 E2M1, per tensor", 4, lambda t: ml.quant.fp4_e2m1(t)),
    ("int4, groups of 32", 5, lambda t: ml.quant.fake_quant(t, 4, group_size=32)),
    ("fp4 E2M1, groups of 32", 5, lambda t: ml.quant.fp4_e2m1(t, group_size=32)),
]
for name, bits_per, fn in formats:
    rows.append({"format": name, "bits/value": bits_per,
                 **{data: ml.quant.sqnr(v, fn(v)) for data, v in dists.items()}})
sq = {r["format"]: r for r in rows}
ml.bench.Table(rows, title="SQNR (dB) of each format; group scales counted as 32 bits per 32 values",
               headers={"bits/value": "bits per value"} | {d: f"{d} (dB)" for d in dists},
               formats={d: "{:.1f}" for d in dists})

# %% tags=["remove-cell"]
ml.glue("int8_vs_e4m3_gauss", sq["int8, per tensor"]["Gaussian"] - sq["fp8 E4M3, per tensor"]["Gaussian"], ".1f")
ml.glue("e4m3_vs_int8_t", sq["fp8 E4M3, per tensor"]["Student-t, 3 dof"] - sq["int8, per tensor"]["Student-t, 3 dof"], ".1f")
ml.glue("fp4_vs_int4_t", sq["fp4 E2M1, per tensor"]["Student-t, 3 dof"] - sq["int4, per tensor"]["Student-t, 3 dof"], ".1f")
ml.glue("fp4_vs_int4_gauss", sq["fp4 E2M1, per tensor"]["Gaussian"] - sq["int4, per tensor"]["Gaussian"], ".1f")
fp4g_diff = sq["fp4 E2M1, groups of 32"]["Gaussian"] - sq["int4, groups of 32"]["Gaussian"]
ml.glue("fp4g_vs_int4g_gauss", fp4g_diff, ".1f")
ml.glue("fp4g_vs_int4g_winner", "int4" if fp4g_diff < 0 else "FP4")
ml.glue("int8_e4m3_gauss_winner", "int8" if sq["int8, per tensor"]["Gaussian"] > sq["fp8 E4M3, per tensor"]["Gaussian"] else "E4M3")
ml.glue("e4m3_int8_t_winner", "E4M3" if sq["fp8 E4M3, per tensor"]["Student-t, 3 dof"] > sq["int8, per tensor"]["Student-t, 3 dof"] else "int8")

# %% [markdown]
# At 8 bits, on the Gaussian, {glue:}`int8_e4m3_gauss_winner` wins: int8 minus E4M3 is
# {glue:}`int8_vs_e4m3_gauss` dB (a uniform grid suits compact data). On the heavy-tailed
# data {glue:}`e4m3_int8_t_winner` wins: E4M3 minus int8 is {glue:}`e4m3_vs_int8_t` dB. At
# 4 bits per tensor, FP4 minus int4 is {glue:}`fp4_vs_int4_t` dB on the heavy tails and
# {glue:}`fp4_vs_int4_gauss` dB on the Gaussian: the integer grid is so coarse that FP4's
# finer steps near zero pay off. In groups of 32 every block is small enough to be nearly
# Gaussian and its maximum is no outlier, and the difference on the Gaussian becomes
# {glue:}`fp4g_vs_int4g_gauss` dB ({glue:}`fp4g_vs_int4g_winner` ahead). This is the
# argument of LLM-FP4 {cite}`liu2023llmfp4`: transformer activations are long-tailed, and
# an FP grid (with a well-chosen exponent/mantissa split and clipping range) serves them
# better than an integer grid of the same width.

# %% [markdown]
# ## 5.1.6 Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`bennett1948spectra` | uniform rounding noise has power $s^2/12$, so halving the step adds $20\log_{10}2 = 6.02$ dB | {glue:}`db_per_bit` dB per bit from 4 to 8 bits on Gaussian data, against {glue:}`db_per_bit_pred` predicted by $s^2/12$ for the restricted grid of $2^b - 1$ levels (whose step shrinks by more than half per bit); the $s^2/12$ curve matches the measured rounding error in section 5.1.4 |
# | {cite}`jacob2018quantization` | asymmetric (affine) quantization with an exact zero suits one-sided activations | asymmetric beats symmetric by {glue:}`relu_asym_gain` dB on ReLU outputs (8 bits) |
# | {cite}`krishnamoorthi2018quantizing` | per-channel weight scales are much better than per-tensor, especially at low bit widths | +{glue:}`cnn_perchannel_gain` dB (CNN) and +{glue:}`gpt_perchannel_gain` dB (CharGPT) at 4 bits |
# | {cite}`micikevicius2022fp8` | E4M3 (max 448) for weights and activations, E5M2 (max 57344) for gradients: range vs precision | max values {glue:}`e4m3_max` and {glue:}`e5m2_max` read from the torch dtypes; E5M2's relative error is twice E4M3's (plot) |
# | {cite}`liu2023llmfp4` | FP quantization handles long-tailed and bell-shaped distributions better than INT at low bit widths | FP4 minus INT4 per tensor: {glue:}`fp4_vs_int4_t` dB on heavy tails, {glue:}`fp4_vs_int4_gauss` dB on a Gaussian; in groups of 32 on the Gaussian: {glue:}`fp4g_vs_int4g_gauss` dB |

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: clipping at 8 bits (measure, easy)
# Redo the clipping analysis of section 5.1.4 at 8 bits. Where is the MSE-optimal $c$ now,
# and how much does it gain over min/max, on the Gaussian and on the Student-t data? Why?

# %% tags=["solution", "hide-cell"]
# Solution 1
for name, v in dists.items():
    out = []
    for b in (4, 8):
        lo, hi = ml.quant.choose_range(v, b, "mse")
        s, z = ml.quant.qparams(lo, hi, b)
        gain = ml.quant.sqnr(v, ml.quant.fake_quant(v, b, scale=s, zero_point=z)) - ml.quant.sqnr(v, ml.quant.fake_quant(v, b))
        out.append(f"{b} bits: c = {hi.item():.2f} std ({100 * hi.item() / v.abs().max().item():.0f}% of max|x|), "
                   f"+{gain:.1f} dB over min/max")
    print(f"{name}: " + "; ".join(out))

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The printed lines give both bit widths. At 8 bits the step is 16 times smaller than at
# 4 bits, so the rounding error inside the range is 256 times smaller, while the clipping
# error of a given $c$ is the same: the balance moves towards less clipping, the optimal
# $c$ moves out towards the maximum, and the gain over min/max shrinks. Clipping matters
# most at low bit widths and on heavy tails, where one far value stretches a coarse grid.
# :::

# %% [markdown]
# ### Exercise 2: asymmetric weights (measure, easy)
# Quantize `gpt_weights` per channel with an *asymmetric* grid at 4 and 3 bits. How much
# does it gain over the symmetric one, compared with one more bit? What does the
# asymmetric grid cost in a matrix multiplication $\sum_k (q_{jk} - z_j)\,x_k$?

# %% tags=["solution", "hide-cell"]
# Solution 2
for b in (4, 3):
    sym, asym = mean_sqnr(gpt_weights, b, axis=0), mean_sqnr(gpt_weights, b, symmetric=False, axis=0)
    one_more_bit = mean_sqnr(gpt_weights, b + 1, axis=0) - sym
    print(f"{b} bits per channel: symmetric {sym:.2f} dB, asymmetric {asym:.2f} dB "
          f"(gain {asym - sym:+.2f} dB; one more symmetric bit: {one_more_bit:+.2f} dB)")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The printed gain is what the asymmetric grid buys on these weights, next to what one more
# bit buys. Trained weights are nearly zero-mean and nearly symmetric per row, so an
# asymmetric grid can only gain from the difference between $-\min$ and $\max$ of each
# row, plus its one extra level ($2^b$ instead of $2^b - 1$). In a matmul the zero point
# adds a term $-z_j \sum_k x_k$ per output $j$: one extra reduction over the input per
# token, cheap for weights but one more correction for every asymmetric operand, which is
# why weights are kept symmetric.
# :::

# %% [markdown]
# ### Exercise 3: a 4-bit grid of your own (implement, medium)
# FP4 E2M1 has 15 distinct values, int4 (symmetric) 15 too. Write a quantizer that rounds
# every value to the nearest of 15 levels of your choice, and choose levels that beat both
# (per tensor, min/max scaling) on the Student-t data. Try two designs: levels at equally
# spaced quantiles of the data, and the levels that minimize the mean squared error.

# %% tags=["solution", "hide-cell"]
# Solution 3
def round_to_levels(v, levels):
    """Each value of v rounded to the nearest of the (sorted) levels."""
    levels = levels.sort().values
    return levels[torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)]


def lloyd_max(v, levels, iters=ml.pick(smoke=10, cpu=50, gpu=50)):
    """Lloyd's algorithm: cells at midpoints between levels, each level the mean of its cell."""
    for _ in range(iters):
        levels = levels.sort().values
        cell = torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)
        counts = torch.bincount(cell, minlength=len(levels))
        sums = torch.zeros(len(levels), dtype=v.dtype).index_add_(0, cell, v)
        levels = torch.where(counts > 0, sums / counts.clamp(min=1), levels)
    return levels.sort().values


s4, z4 = ml.quant.qparams(*ml.quant.choose_range(heavy, 4, "mse"), 4)
uniform_levels = torch.arange(-7, 8) * s4                                           # int4 with MSE clipping
quantile_levels = torch.quantile(heavy[:100_000], (torch.arange(15) + 0.5) / 15)  # equal probability
lm_levels = lloyd_max(heavy, uniform_levels)                                        # never worse than its start
results = {"int4, min/max": ml.quant.fake_quant(heavy, 4),
           "fp4 E2M1, min/max": ml.quant.fp4_e2m1(heavy),
           "int4, MSE-optimal clipping": round_to_levels(heavy, uniform_levels),
           "15 levels at equal-probability quantiles": round_to_levels(heavy, quantile_levels),
           "15 Lloyd-Max levels": round_to_levels(heavy, lm_levels)}
db = {k: ml.quant.sqnr(heavy, v) for k, v in results.items()}
for label, value in db.items():
    beats = [other for other in db if other != label and value > db[other]]
    print(f"{label}: SQNR {value:.1f} dB; better than: {', '.join(beats) or 'none'}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# Two classical non-uniform designs, with the SQNRs printed above:
#
# - **Levels at equally spaced quantiles** of the data give every level the same
#   probability (an *equal-probability* quantizer, the companding idea: uniform
#   quantization of $F(x)$, the data's own cumulative distribution). It is easy to build
#   and puts the levels where the data are, which the min/max grids fail to do on heavy
#   tails (the printout says which grids it beats here). It does not minimize the error:
#   the outer cells of a heavy-tailed distribution are wide, and their values lie far from
#   their level.
# - **Lloyd-Max** levels {cite}`lloyd1982least,max1960quantizing` minimize the mean squared
#   error. They satisfy two conditions at once: each decision boundary lies midway between
#   two neighbouring levels (nearest-neighbour rounding), and each level is the mean of the
#   values in its cell (the centroid condition). Lloyd's algorithm alternates the two, which
#   is k-means in one dimension; no step increases the error, so started from the
#   MSE-clipped int4 grid (a uniform grid is one particular choice of 15 levels) it ends at
#   least as good as that grid, and here better than every other design.
#
# The price of a non-uniform grid is a lookup table instead of integer arithmetic: the
# codes index 15 stored levels. NF4 (QLoRA {cite}`dettmers2023qlora`) is such a grid, built
# from the quantiles of a Gaussian for Gaussian-like weights.
# :::

# %% [markdown]
# ### Exercise 4: per-group quantization from scratch (implement, easy)
# Write `fake_quant_groups(w, bits, g)`: symmetric fake quantization with one scale per
# group of $g$ consecutive weights of each row, using only `reshape`, `amax`, `round` and
# `clamp`. Check it bit for bit against `ml.quant.fake_quant(w, bits, group_size=g)`.

# %% tags=["solution", "hide-cell"]
# Solution 4
def fake_quant_groups(w, bits, g):
    q_max = 2 ** (bits - 1) - 1
    wg = w.reshape(-1, g)                                                 # one row per group
    s = (wg.abs().amax(dim=1, keepdim=True) / q_max).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.clamp(torch.round(wg * (1.0 / s)), -q_max, q_max)           # x * (1/s), as PyTorch does
    return (q * s).reshape(w.shape)


w_test = gpt_weights[next(iter(gpt_weights))]
same = all(torch.equal(fake_quant_groups(w_test, b, g), ml.quant.fake_quant(w_test, b, group_size=g))
           for b in (2, 3, 4, 8) for g in (8, 32))
print(f"fake_quant_groups equals ml.quant.fake_quant(group_size=g) bit for bit: {same}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# Per-group is per-channel on the weight reshaped to one row per group: the scale is the
# group's $\max|w|/(2^{b-1}-1)$, and the rest is section 5.1.1. Two details make it bitwise
# equal to the library (and to PyTorch's kernels): multiply by the float32 reciprocal
# $1/s$ instead of dividing by $s$ (they differ in the last bit for some values, which
# changes the rounding at ties), and keep the scale above float32's epsilon, so that an
# all-zero group does not divide by zero.
# :::

# %% [markdown]
# ### Exercise 5: decode FP8 by hand (implement, medium)
# Write a function that turns an 8-bit pattern into the value it encodes in E4M3 (sign
# bit, 4 exponent bits with bias 7, 3 mantissa bits; exponent field 0 is subnormal,
# $2^{-6}\cdot m/8$; the pattern with all exponent and mantissa bits set is NaN, and
# there are no infinities). Check it against `torch.float8_e4m3fn` on all 256 patterns.

# %% tags=["solution", "hide-cell"]
# Solution 5
def e4m3_decode(bits):
    sign = -1.0 if bits >> 7 else 1.0
    e, m = (bits >> 3) & 0b1111, bits & 0b111
    if e == 0b1111 and m == 0b111:
        return math.nan
    if e == 0:                                          # subnormal: no implicit leading 1
        return sign * 2.0 ** (1 - 7) * (m / 8)
    return sign * 2.0 ** (e - 7) * (1 + m / 8)


ours = torch.tensor([e4m3_decode(b) for b in range(256)])
theirs = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
print(f"hand decoder equals torch.float8_e4m3fn on all 256 patterns (NaN where it is NaN): "
      f"{torch.equal(ours.isnan(), theirs.isnan()) and torch.equal(ours[~ours.isnan()], theirs[~theirs.isnan()])}; "
      f"max = {ours.nan_to_num(0).max().item():g}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# A normal E4M3 value is $(-1)^S\,2^{E-7}\,(1 + M/8)$; the largest exponent field $E = 15$
# is still a normal binade (the "fn" in `float8_e4m3fn`: finite, with a single NaN
# pattern per sign instead of a whole exponent of infinities and NaNs), so the largest
# value is $2^8 \cdot 1.75 = 448$, and the smallest subnormal is $2^{-6}/8 = 2^{-9}$. Giving
# up infinities buys one more binade of range, which is why E4M3 reaches 448 where an
# IEEE-style 4-bit exponent would stop at 240.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Uniform quantization is $q = \operatorname{clamp}(\operatorname{round}(x/s) + z)$ and
#   $\hat x = (q - z)s$; symmetric grids ($z=0$) for weights, asymmetric for one-sided
#   activations. Our implementation is bit-exact with PyTorch's fake-quantize ops.
# - The rounding noise $s^2/12$ predicts the SQNR of a grid from its step: each bit is
#   worth $20\log_{10}\frac{2^b-1}{2^{b-1}-1}$ dB on the restricted symmetric grid, a little
#   more than 6.02 dB and tending to it; finer granularity (per channel, per group) buys
#   several dB more for a small storage cost.
# - Error = rounding + clipping; the best clipping range sits well inside the data's range at
#   low bit widths, especially for heavy-tailed data.
# - Float formats trade uniform precision for range: better on long-tailed data, worse on
#   compact data; small-group scaling narrows the gap.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
