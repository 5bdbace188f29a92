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
# # 2.1 Normalization layers from scratch, and what they cost
#
# Almost every layer of a modern network is followed or preceded by a normalization: a
# BatchNorm after each convolution of a ResNet {cite}`ioffe2015batchnorm`, a LayerNorm
# {cite}`ba2016layernorm` or RMSNorm {cite}`zhang2019rmsnorm` before each attention and MLP
# block of a transformer, a GroupNorm {cite}`wu2018groupnorm` in a diffusion U-Net. They
# make deep networks trainable at high learning rates, and they all do the same thing:
# subtract a mean, divide by a standard deviation, apply a learned per-feature scale and
# shift. They differ in *which numbers the statistics are taken over*, and that one choice
# decides whether the layer depends on the batch, whether it can be folded away at
# inference, and how much memory traffic it costs. A normalization does almost no
# arithmetic per element, so on every machine it is limited by how fast it can read and
# write its tensor, not by how fast it can compute. That is why RMSNorm, which skips the
# mean, was proposed as a *faster* LayerNorm {cite}`zhang2019rmsnorm`, and why
# Pre-RMSNorm {cite}`jiang2023prermsnorm` shows when the swap changes nothing but the speed.
#
# **Learning objectives.** After this notebook you can
# 1. write BatchNorm (training statistics, running statistics with PyTorch's momentum
#    semantics, eval mode), LayerNorm, RMSNorm and GroupNorm in a few lines each, and check
#    them forward *and* backward against PyTorch;
# 2. derive LayerNorm's backward pass by hand and verify it with `gradcheck`;
# 3. show that LayerNorm is RMSNorm of a centered input, and when a transformer can
#    therefore swap one for the other exactly;
# 4. count the bytes a normalization moves, explain why it is memory-bound, and measure
#    what fusing its passes into one kernel buys.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.lines import Line2D
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import minilib as ml

ml.describe()
ml.plot.style()
dev = ml.device()

# %% [markdown]
# ## 2.1.1 One formula, four choices of axes
#
# Every layer in this notebook computes, for each element $x_i$ of its input,
#
# $$
# \begin{aligned}
# \hat x_i &= \frac{x_i - \mu_{S(i)}}{\sqrt{\sigma^2_{S(i)} + \epsilon}}, \qquad
# y_i = \gamma_c\, \hat x_i + \beta_c, \\
# \mu_S &= \frac{1}{|S|}\sum_{k \in S} x_k, \qquad
# \sigma^2_S = \frac{1}{|S|}\sum_{k\in S}(x_k - \mu_S)^2,
# \end{aligned}
# $$
#
# where $S(i)$ is the set of elements whose statistics normalize $x_i$, and $\gamma_c,
# \beta_c$ are learned per channel (feature) $c$. For an image batch of shape
# $(B, C, H, W)$ the four layers choose {cite}`wu2018groupnorm`:
#
# - **BatchNorm**: $S$ = all $(b, h, w)$ of the same channel: statistics per channel,
#   across the batch. At inference it uses running averages instead.
# - **LayerNorm**: $S$ = all $(c, h, w)$ of the same sample. In a transformer, whose
#   activations are $(B, T, C)$, it is taken per token over the $C$ features.
# - **RMSNorm**: LayerNorm's axes, but no mean: $\hat x_i = x_i / \sqrt{\tfrac1{|S|}\sum_S x_k^2 + \epsilon}$,
#   and only a scale $\gamma$.
# - **GroupNorm**: $S$ = the $(c, h, w)$ of one sample whose channel is in the same group of
#   $C/G$ channels. $G = 1$ is LayerNorm, $G = C$ is InstanceNorm.
#
# The figure shades the elements of one set $S$ in a $(B, C, H{\cdot}W)$ block, as in
# Wu and He's figure:

# %%
def draw_axes_figure(B=4, C=6, HW=5, groups=2):
    """Shade the elements that share one set of statistics, for each normalization."""
    sets = {
        "BatchNorm (per channel)": lambda b, c: c == 1,
        "LayerNorm / RMSNorm (per sample)": lambda b, c: b == 1,
        f"GroupNorm, G={groups} (sample, group)": lambda b, c: b == 1 and c < C // groups,
        "InstanceNorm = GroupNorm, G=C": lambda b, c: b == 1 and c == 1,
    }
    fig = plt.figure(figsize=(7.5, 6.2))
    for k, (title, inside) in enumerate(sets.items()):
        ax = fig.add_subplot(2, 2, k + 1, projection="3d")
        filled = np.ones((B, HW, C), dtype=bool)          # voxel axes: x=B, y=H*W, z=C
        colors = np.empty(filled.shape, dtype=object)
        for b in range(B):
            for c in range(C):
                colors[b, :, c] = "#0072B2" if inside(b, c) else "#EEEEEE"
        ax.voxels(filled, facecolors=colors, edgecolor="0.5", linewidth=0.3)
        ax.set(xticks=[], yticks=[], zticks=[])
        ax.set_xlabel("B", labelpad=-12), ax.set_ylabel("H·W", labelpad=-12), ax.set_zlabel("C", labelpad=-12)
        ax.set_title(title, fontsize=10)
        ax.view_init(elev=20, azim=-60)
    plt.show()


draw_axes_figure()

# %%
ml.bench.Table([
    {"layer": "BatchNorm", "statistics over": "(B, H, W), per channel", "learned": "γ, β (C each)",
     "depends on the batch": "yes (training)", "at inference": "running stats: a fixed affine map, foldable"},
    {"layer": "LayerNorm", "statistics over": "(C, H, W) per sample; C per token", "learned": "γ, β",
     "depends on the batch": "no", "at inference": "computed on every input"},
    {"layer": "RMSNorm", "statistics over": "same as LayerNorm, no mean", "learned": "γ",
     "depends on the batch": "no", "at inference": "computed on every input, one reduction"},
    {"layer": "GroupNorm", "statistics over": "(C/G, H, W) per sample and group", "learned": "γ, β (C each)",
     "depends on the batch": "no", "at inference": "computed on every input"},
], title="Which axes each normalization reduces over")

# %% [markdown]
# ## 2.1.2 Checking a from-scratch layer against PyTorch
#
# A normalization is easy to get *almost* right: a biased instead of an unbiased variance,
# an $\epsilon$ inside instead of outside the square root, a running average updated with
# the wrong weight. Each gives outputs that look fine and differ from PyTorch by a little.
# So every layer below is checked against PyTorch's own function on random inputs with a
# non-zero mean: the output, and the gradients with respect to the input and the
# parameters, for the same random upstream gradient $\partial L / \partial y$. The checks
# run in float32 on the CPU, so they print the same bounds on every machine.

# %%
def check(name, ours, ref, *tensors, atol=1e-5, rtol=1e-4):
    """Run ours(*tensors) and ref(*tensors) on separate copies, backprop the same dy, compare.

    Returns a table row with the max abs difference of y and of every gradient; asserts
    that they all agree to the tolerance.
    """
    copies = [[t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors] for _ in range(2)]
    outs = [fn(*ts) for fn, ts in zip((ours, ref), copies)]
    dy = torch.randn_like(outs[1])
    grads = [torch.autograd.grad(y, ts, dy) for y, ts in zip(outs, copies)]
    row = {"check": name, "max |Δy|": (outs[0] - outs[1]).abs().max().item()}
    for label, g0, g1 in zip(["dx", "dγ", "dβ"], *grads):
        row[f"max |Δ{label}|"] = (g0 - g1).abs().max().item()
    ok = torch.allclose(outs[0], outs[1], atol=atol, rtol=rtol) and all(
        torch.allclose(g0, g1, atol=atol, rtol=rtol) for g0, g1 in zip(*grads))
    assert ok, f"{name}: from-scratch and PyTorch disagree: {row}"
    return row


checks = []                                        # every check of this notebook, as table rows
DIFF_FORMATS = {k: "{:.1e}" for k in ("max |Δy|", "max |Δdx|", "max |Δdγ|", "max |Δdβ|")}
ml.seed_all(0)

# %% [markdown]
# ## 2.1.3 BatchNorm
#
# **Training.** For a batch $(B, C, H, W)$, channel $c$ gets
# $\mu_c = \frac{1}{M}\sum_{b,h,w} x_{bchw}$ and the *biased* variance
# $\sigma^2_c = \frac1M \sum_{b,h,w}(x_{bchw}-\mu_c)^2$ over its $M = BHW$ values
# {cite}`ioffe2015batchnorm`, and $y = \gamma_c \hat x + \beta_c$. The gradient flows
# through $\mu_c$ and $\sigma_c^2$, so every sample's gradient depends on the rest of the batch.
#
# **Running statistics.** Inference cannot depend on the batch, so training also keeps
# exponential moving averages. PyTorch's `momentum` $m$ (default 0.1) is the weight of the
# *new* batch, and the variance it averages is the *unbiased* one, $\frac{M}{M-1}\sigma^2_c$,
# since it estimates the population's variance rather than normalizing this batch:
#
# $$
# \begin{aligned}
# \mathrm{running\_mean} &\leftarrow (1 - m)\,\mathrm{running\_mean} + m\,\mu_c, \\
# \mathrm{running\_var} &\leftarrow (1 - m)\,\mathrm{running\_var} + m\,\tfrac{M}{M-1}\,\sigma^2_c .
# \end{aligned}
# $$
#
# (Keras and TensorFlow call $1-m$ the momentum: their 0.99 is PyTorch's 0.01.) With
# `momentum=None` PyTorch keeps a plain cumulative average instead: after $k$ batches the
# weight of the newest is $1/k$.
#
# **Eval.** $\hat x = (x - \mathrm{running\_mean}_c)/\sqrt{\mathrm{running\_var}_c + \epsilon}$: a
# fixed per-channel affine map $s_c x + t_c$, which `ml.norm.fold_batchnorm` merges into the
# convolution before it, so that it costs nothing at inference (notebook 2.3).

# %%
def batch_norm_naive(x, running_mean, running_var, weight, bias, training, momentum=0.1, eps=1e-5):
    """BatchNorm of a (B, C, H, W) batch, updating the running statistics in place."""
    if training:
        mean = x.mean((0, 2, 3))                                  # per channel
        var = x.var((0, 2, 3), unbiased=False)                    # biased: normalizes
        M = x.numel() // x.shape[1]                               # values per channel
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean)
            running_var.mul_(1 - momentum).add_(momentum * var * M / (M - 1))   # unbiased
    else:
        mean, var = running_mean, running_var
    c = lambda t: t[None, :, None, None]                          # (C,) -> (1, C, 1, 1)
    return (x - c(mean)) / torch.sqrt(c(var) + eps) * c(weight) + c(bias)


C = 8
x = torch.randn(16, C, 6, 6) * 3 + 1.5
gamma, beta = torch.randn(C), torch.randn(C)
for training in (True, False):
    stats_ours = [torch.randn(C), torch.rand(C) + 0.5]             # running mean, running var
    stats_ref = [t.clone() for t in stats_ours]
    checks.append(check(
        f"BatchNorm ({'train' if training else 'eval'}) vs F.batch_norm",
        lambda x, w, b: batch_norm_naive(x, *stats_ours, w, b, training),
        lambda x, w, b: F.batch_norm(x, *stats_ref, w, b, training=training, momentum=0.1, eps=1e-5),
        x, gamma, beta))
    stats_err = max((o - r).abs().max().item() for o, r in zip(stats_ours, stats_ref))
    assert stats_err < 1e-6, stats_err                             # the running stats, updated alike
    print(f"{'train' if training else 'eval'}: running mean and variance afterwards equal PyTorch's, "
          f"max |Δ| = {stats_err:.1e}")
ml.bench.Table(checks, formats=DIFF_FORMATS)

# %% [markdown]
# The library's `ml.norm.batch_norm` is the same computation with argument checks,
# float16/bfloat16 statistics in float32, and any number of spatial dims; `ml.norm.BatchNorm2d`
# wraps it in a module with PyTorch's buffers (`running_mean`, `running_var`,
# `num_batches_tracked`), including `momentum=None`:

# %%
ml.show(ml.norm.batch_norm)

# %%
def compare_bn_modules(momentum, steps=5):
    """Train nn.BatchNorm2d and ml.norm.BatchNorm2d side by side, then compare them in eval."""
    ref, ours = nn.BatchNorm2d(C, momentum=momentum), ml.norm.BatchNorm2d(C, momentum=momentum)
    with torch.no_grad():
        ref.weight.normal_(), ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    err = 0.0
    for _ in range(steps):                                         # train mode: batch statistics
        xb = torch.randn(8, C, 5, 5) * 2 + torch.randn(1, C, 1, 1)
        err = max(err, (ours(xb) - ref(xb)).abs().max().item())
    ref.eval(), ours.eval()
    xb = torch.randn(8, C, 5, 5)
    err = max(err, (ours(xb) - ref(xb)).abs().max().item())         # eval: running statistics
    buf = max((ours.get_buffer(k).float() - ref.get_buffer(k).float()).abs().max().item()
              for k in ("running_mean", "running_var", "num_batches_tracked"))
    return err, buf


for momentum in (0.1, None):
    err, buf = compare_bn_modules(momentum)
    print(f"momentum={momentum}: 5 train steps + eval, max |Δy| = {err:.1e}, max |Δ buffers| = {buf:.1e}")
    assert err < 1e-5 and buf < 1e-6
    checks.append({"check": f"ml.norm.BatchNorm2d(momentum={momentum}) vs nn.BatchNorm2d, train+eval",
                   "max |Δy|": err})

# %% [markdown]
# ## 2.1.4 LayerNorm, and its backward pass by hand
#
# LayerNorm normalizes each token $x \in \mathbb{R}^n$ (the last dim) on its own
# {cite}`ba2016layernorm`: $\mu = \frac1n\sum_j x_j$, $\sigma^2 = \frac1n\sum_j (x_j - \mu)^2$,
# $r = 1/\sqrt{\sigma^2 + \epsilon}$, $\hat x = (x - \mu)\,r$, $y = \gamma \odot \hat x + \beta$.
# No running statistics, no dependence on the batch: training and inference compute the same thing.

# %%
def layer_norm_naive(x, weight, bias, eps=1e-5):
    """LayerNorm over the last dim, exactly as the equations read."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)                  # biased
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


n = 48
x = torch.randn(4, 10, n) * 2 + 0.5
gamma, beta = torch.randn(n), torch.randn(n)
checks.append(check("LayerNorm vs F.layer_norm", layer_norm_naive,
                    lambda x, w, b: F.layer_norm(x, (n,), w, b, eps=1e-5), x, gamma, beta))
ml.bench.Table(checks[-1:], formats=DIFF_FORMATS)

# %% [markdown]
# Autograd differentiates `layer_norm_naive` through every intermediate (the mean, the
# centered copy, its square, the variance, ...) and keeps them all for the backward pass.
# PyTorch's own kernel instead uses a closed form, which we now derive. Write
# $g = \partial L/\partial \hat x = \gamma \odot \partial L/\partial y$. Each $\hat x_i$ depends
# on every $x_j$ of its token through $\mu$ and $r$:
#
# $$\frac{\partial \mu}{\partial x_j} = \frac1n, \qquad
# \frac{\partial \sigma^2}{\partial x_j} = \frac2n (x_j - \mu), \qquad
# \frac{\partial r}{\partial x_j} = -\tfrac12 r^3 \frac{\partial \sigma^2}{\partial x_j} = -\frac{r^2}{n}\,\hat x_j ,$$
#
# $$
# \begin{aligned}
# \frac{\partial \hat x_i}{\partial x_j} &= r\Big(\delta_{ij} - \frac1n\Big) + (x_i - \mu)\frac{\partial r}{\partial x_j} \\
# &= \frac{r}{n}\big(n\,\delta_{ij} - 1 - \hat x_i \hat x_j\big).
# \end{aligned}
# $$
#
# Summing $g_i\,\partial \hat x_i/\partial x_j$ over $i$:
#
# $$
# \begin{aligned}
# &\boxed{\;\frac{\partial L}{\partial x} = r\,\Big(g - \operatorname{mean}(g) - \hat x \odot \operatorname{mean}(g \odot \hat x)\Big)\;} \\[4pt]
# &\frac{\partial L}{\partial \gamma} = \sum_{\text{tokens}} \frac{\partial L}{\partial y}\odot \hat x, \qquad
# \frac{\partial L}{\partial \beta} = \sum_{\text{tokens}} \frac{\partial L}{\partial y}.
# \end{aligned}
# $$
#
# The two subtracted terms remove from $g$ its component along $\mathbf 1$ (shifting all
# inputs changes nothing after centering) and along $\hat x$ (scaling the centered input
# changes nothing after dividing by its standard deviation). The backward needs only
# $\hat x$ and $r$ from the forward pass. `ml.norm.LayerNormFunction` implements exactly
# this as a `torch.autograd.Function`; its backward:

# %%
ml.show(ml.norm.LayerNormFunction.backward)

# %% [markdown]
# `torch.autograd.gradcheck` compares a backward pass with finite differences of the
# forward, which needs float64 to be meaningful. It checks the gradients with respect to
# $x$, $\gamma$ and $\beta$:

# %% tags=["nbval-check-output"]
xd = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
wd = torch.randn(16, dtype=torch.float64, requires_grad=True)
bd = torch.randn(16, dtype=torch.float64, requires_grad=True)
ok = torch.autograd.gradcheck(lambda x, w, b: ml.norm.LayerNormFunction.apply(x, (16,), w, b, 1e-5),
                              (xd, wd, bd))
print("gradcheck of the hand-written LayerNorm backward (float64):", ok)

# %%
checks.append(check("ml.norm.LayerNormFunction (hand-written backward) vs F.layer_norm",
                    lambda x, w, b: ml.norm.layer_norm(x, w, b, manual_backward=True),
                    lambda x, w, b: F.layer_norm(x, (n,), w, b), x, gamma, beta))
ml.bench.Table(checks[-1:], formats=DIFF_FORMATS)

# %% [markdown]
# ## 2.1.5 RMSNorm, and when it *is* LayerNorm
#
# RMSNorm {cite}`zhang2019rmsnorm` drops the centering: with
# $\operatorname{rms}(x) = \sqrt{\frac1n\sum_j x_j^2 + \epsilon}$,
#
# $$y = \gamma \odot \frac{x}{\operatorname{rms}(x)} .$$
#
# Its authors argue that LayerNorm's success comes from the re-*scaling* invariance, not
# the re-centering, and that dropping the mean saves one reduction and a subtraction per
# element. PyTorch has it as `F.rms_norm` and `nn.RMSNorm` (whose default $\epsilon$ is the
# machine epsilon of the dtype; we pass one explicitly).

# %%
def rms_norm_naive(x, weight, eps=1e-6):
    """RMSNorm over the last dim: no mean, no bias."""
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * weight


checks.append(check("RMSNorm vs F.rms_norm", rms_norm_naive,
                    lambda x, w: F.rms_norm(x, (n,), w, eps=1e-6), x, gamma))
ref_rms = nn.RMSNorm(n, eps=1e-6)
with torch.no_grad():
    ref_rms.weight.copy_(gamma)
checks.append(check("RMSNorm vs nn.RMSNorm", lambda x: rms_norm_naive(x, gamma), ref_rms, x))
ml.show(ml.norm.rms_norm)

# %% [markdown]
# **LayerNorm is RMSNorm of a centered vector.** The variance of $x$ *is* the mean square of
# $x - \mu$, so with the same $\epsilon$ and the same gain,
#
# $$\operatorname{LN}(x) = \operatorname{RMSNorm}(x - \mu) + \beta$$
#
# exactly. Jiang et al. {cite}`jiang2023prermsnorm` turn this into a speedup for Pre-LN
# transformers. There, the residual stream $x_{l+1} = x_l + W^{\text{out}}_l f_l(\operatorname{LN}(x_l))$
# is only ever read through a LayerNorm (the final one included), which discards its mean:
# the mean of the stream is dead weight. So one can recenter, once, the embedding and every
# output projection $W^{\text{out}}_l$ (each of its columns gets mean 0 over the output
# features) without changing the model's function. Then the stream is zero-mean at every
# layer, and every LN can be replaced by RMSNorm with the same $\gamma$, $\beta$: nothing
# changes but the cost. A numerical check, on a toy residual stream:

# %%
d, T = 256, 64
w_ln, b_ln = torch.randn(d), torch.randn(d)
ln_vs_rms = (F.layer_norm(x := torch.randn(T, d) * 2 + 0.7, (d,), w_ln, b_ln)
             - (F.rms_norm(x - x.mean(-1, keepdim=True), (d,), w_ln, eps=1e-5) + b_ln)).abs().max().item()
print(f"max |LN(x) - (RMSNorm(x - mean x) + b)| = {ln_vs_rms:.1e}")

# A toy Pre-LN residual stream: zero-mean embedding, output projections recentered.
center_rows = lambda W: W - W.mean(0, keepdim=True)                # every column: mean 0 over outputs
h = torch.randn(T, d)
h = h - h.mean(-1, keepdim=True)                                   # zero-mean embedding
worst_mean = worst_diff = 0.0
for layer in range(6):
    W_in, W_out = torch.randn(4 * d, d) / d**0.5, center_rows(torch.randn(d, 4 * d) / (4 * d)**0.5)
    u = F.layer_norm(h, (d,), w_ln, b_ln)
    worst_diff = max(worst_diff, (u - (F.rms_norm(h, (d,), w_ln, eps=1e-5) + b_ln)).abs().max().item())
    h = h + F.gelu(u @ W_in.T) @ W_out.T                            # the residual update
    worst_mean = max(worst_mean, h.mean(-1).abs().max().item())
print(f"6 layers: max |mean of the stream| = {worst_mean:.1e}, max |LN - RMSNorm| = {worst_diff:.1e}")
assert ln_vs_rms < 1e-4 and worst_diff < 1e-4

# %% tags=["remove-cell"]
ml.glue("n21_ln_rms_diff", worst_diff, ".1e")

# %% [markdown]
# Over six layers the stream's mean stays at rounding level, and LayerNorm and RMSNorm agree
# to {glue:}`n21_ln_rms_diff`: float32 rounding. The paper goes one step further,
# **CRMSNorm**: a zero-mean vector of $d$ numbers carries only $d-1$ degrees of freedom, so
# the stream can be stored compressed as its first $d-1$ entries $z$; the last one is
# $-\sum z$ and $\operatorname{rms} = \sqrt{(\sum z_j^2 + (\sum z_j)^2)/d}$. Exercise 4 checks it.
#
# ## 2.1.6 GroupNorm, and a searched norm-activation
#
# GroupNorm {cite}`wu2018groupnorm` splits the $C$ channels of each sample into $G$ groups
# and normalizes each group over its $(C/G, H, W)$ values; $\gamma, \beta$ stay per channel.
# It never looks across the batch, so it works the same with a batch of 1 (detection,
# segmentation, diffusion U-Nets), where BatchNorm's statistics become noise.

# %%
def group_norm_naive(x, G, weight, bias, eps=1e-5):
    """GroupNorm of a (B, C, *) tensor: statistics per sample and group of C/G channels."""
    B, C = x.shape[:2]
    g = x.reshape(B, G, -1)                                        # (B, G, C/G * H * W)
    mu, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    xhat = ((g - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    c = (1, C) + (1,) * (x.dim() - 2)
    return xhat * weight.reshape(c) + bias.reshape(c)


C = 12
x = torch.randn(4, C, 5, 5) * 2 + 1
gamma, beta = torch.randn(C), torch.randn(C)
for G in (1, 3, C):
    checks.append(check(f"GroupNorm G={G} vs F.group_norm", lambda x, w, b: group_norm_naive(x, G, w, b),
                        lambda x, w, b: F.group_norm(x, G, w, b, eps=1e-5), x, gamma, beta))
# The two ends of the family: G=1 is LayerNorm over (C, H, W), G=C is InstanceNorm.
ones, zeros = torch.ones(C), torch.zeros(C)
err_ln = (group_norm_naive(x, 1, ones, zeros) - F.layer_norm(x, x.shape[1:])).abs().max().item()
err_in = (group_norm_naive(x, C, ones, zeros) - F.instance_norm(x)).abs().max().item()
assert err_ln < 1e-5 and err_in < 1e-5
print(f"GroupNorm G=1 vs LayerNorm over (C,H,W): {err_ln:.1e};  G=C vs InstanceNorm: {err_in:.1e}")
ml.show(ml.norm.group_norm)

# %% [markdown]
# **EvoNorm.** Liu et al. {cite}`liu2020evonorm` did not design a normalization: they
# *searched* for one, over computation graphs built from primitive ops, jointly with the
# activation that follows it. One of the layers they found, EvoNorm-S0, is batch-independent
# and replaces GroupNorm + ReLU. With $\operatorname{std}_G(x)$ the standard deviation of
# $x$ over its group (as in GroupNorm, no mean subtracted from the numerator),
#
# $$y = \frac{x \odot \operatorname{sigmoid}(v \odot x)}{\operatorname{std}_G(x)}\,\gamma + \beta,$$
#
# with a learned per-channel $v$. It does not subtract any mean, and with $v = 1$ its
# numerator is SiLU: a norm and an activation in one layer, and one memory pass fewer than
# two separate layers once fused. In a few lines:

# %%
def evonorm_s0(x, G, v, weight, bias, eps=1e-5):
    """EvoNorm-S0 (Liu et al., 2020): x * sigmoid(v x) / group_std(x) * weight + bias."""
    B, C = x.shape[:2]
    c = (1, C) + (1,) * (x.dim() - 2)
    std = x.reshape(B, G, -1).var(-1, unbiased=False, keepdim=True).add(eps).sqrt()
    num = (x * torch.sigmoid(v.reshape(c) * x)).reshape(B, G, -1)
    return (num / std).reshape(x.shape) * weight.reshape(c) + bias.reshape(c)


y = evonorm_s0(x, 3, torch.ones(C), torch.ones(C), torch.zeros(C))
group_std = x.reshape(4, 3, -1).var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
ref = (F.silu(x).reshape(4, 3, -1) / group_std).reshape(x.shape)
y_alone = evonorm_s0(x[:1], 3, torch.ones(C), torch.ones(C), torch.zeros(C))
assert (y - ref).abs().max() < 1e-5 and (y[:1] - y_alone).abs().max() < 1e-5
print(f"v=1: EvoNorm-S0 = SiLU(x) / group_std(x), max |Δ| = {(y - ref).abs().max().item():.1e}")
print(f"batch-independent: sample 0 alone vs in its batch, max |Δ| = {(y[:1] - y_alone).abs().max().item():.1e}")

# %% [markdown]
# Every from-scratch layer against PyTorch, forward and backward:

# %%
ml.bench.Table(checks, title="From scratch vs PyTorch (float32; empty: no such parameter)", formats=DIFF_FORMATS)

# %% tags=["nbval-check-output"]
print(f"{len(checks)} checks against PyTorch, all within tolerance (each one asserts it)")

# %% [markdown]
# ## 2.1.7 What a normalization costs
#
# ### Counting FLOPs and bytes
#
# Per element, LayerNorm adds into the mean, subtracts the mean, squares, adds into the
# variance, multiplies by $r$, by $\gamma$ and adds $\beta$: about **7 FLOPs**. RMSNorm
# squares, adds, multiplies by $r$ and by $\gamma$: about **4**. The per-token work (one
# square root and a division) is negligible for $n$ in the hundreds. The least a forward
# pass can move is reading $x$ and writing $y$, $2 \times 4$ bytes per float32 element (the
# parameters are a vector, read once). So the arithmetic intensity is
# $I \approx 7/8 \approx 0.9$ FLOP/byte for LayerNorm and $0.5$ for RMSNorm: far left of the
# ridge point of any CPU or GPU (chapter 1 measured this machine's). Normalization is
# **memory-bound**, and its time is set by how many times it walks through memory.
#
# An eager, op-by-op implementation walks through memory once per PyTorch operation: each
# op reads its full-size inputs from memory and writes its full-size output back. We can
# count those bytes exactly, by intercepting every operation that PyTorch dispatches
# (`TorchDispatchMode`) and adding up the sizes of its tensor inputs and outputs:

# %%
class ByteCounter(TorchDispatchMode):
    """Count the tensor bytes every dispatched op reads and writes (views move nothing)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            size = lambda obj: sum(t.numel() * t.element_size() for t in tree_leaves(obj)
                                   if isinstance(t, torch.Tensor))
            self.ops.append((func.overloadpacket.__name__, size((args, kwargs)), size(out)))
        return out


def passes(fn, x, *params, backward=False):
    """Bytes moved by fn, in units of one full pass over x, op by op (reads and writes)."""
    x, dy = x.detach().requires_grad_(backward), torch.ones_like(x)
    params = [p.detach().requires_grad_(backward) for p in params]
    with ByteCounter() as counter:
        y = fn(x, *params)
        if backward:
            y.backward(dy)
    full = x.numel() * x.element_size()
    return counter.ops, sum(r + w for _, r, w in counter.ops) / full


x_demo, w_demo, b_demo = (torch.randn(512, 1024, device=dev), torch.ones(1024, device=dev),
                          torch.zeros(1024, device=dev))
ops, naive_passes = passes(layer_norm_naive, x_demo, w_demo, b_demo)
ml.bench.Table([{"op": name, "reads (passes)": r / x_demo.nbytes, "writes (passes)": w / x_demo.nbytes}
                for name, r, w in ops], title="layer_norm_naive, op by op (1 pass = the bytes of x)",
               formats={"reads (passes)": "{:.2f}", "writes (passes)": "{:.2f}"})

# %%
rows = []
for label, fn, params in [
    ("LayerNorm, naive eager", layer_norm_naive, (w_demo, b_demo)),
    ("LayerNorm, F.layer_norm", lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), (w_demo, b_demo)),
    ("RMSNorm, naive eager", rms_norm_naive, (w_demo,)),
    ("RMSNorm, F.rms_norm", lambda x, w: F.rms_norm(x, x.shape[-1:], w, eps=1e-6), (w_demo,)),
]:
    ops_f, p_f = passes(fn, x_demo, *params)
    ops_b, p_fb = passes(fn, x_demo, *params, backward=True)
    rows.append({"implementation": label, "ops (forward)": len(ops_f), "passes (forward)": p_f,
                 "passes (forward+backward)": p_fb})
pass_table = ml.bench.Table(rows, title=f"Memory passes counted op by op on {dev.type}; "
                                        "the minimum is 2 forward, 5 forward+backward",
                            formats={"passes (forward)": "{:.1f}", "passes (forward+backward)": "{:.1f}"})
pass_table

# %% tags=["remove-cell"]
ml.glue("n21_naive_ln_passes", rows[0]["passes (forward)"], ".0f")
ml.glue("n21_naive_rms_passes", rows[2]["passes (forward)"], ".0f")
ml.glue("n21_naive_ln_passes_fb", rows[0]["passes (forward+backward)"], ".0f")
ml.glue("n21_rms_kernel_ops", rows[3]["ops (forward)"], "d")
ml.glue("n21_rms_kernel_passes", rows[3]["passes (forward)"], ".0f")
ml.glue("n21_torch", torch.__version__)
ml.glue("n21_device", dev.type)

# %% [markdown]
# Written as the equations read, LayerNorm makes {glue:}`n21_naive_ln_passes` passes over
# memory in the forward direction (RMSNorm {glue:}`n21_naive_rms_passes`), and
# {glue:}`n21_naive_ln_passes_fb` with its autograd backward, where 2 and 5 would do.
# `F.layer_norm` is a single dispatched op, which reads $x$ and writes $y$ (plus the
# per-token mean and $r$ it saves for the backward). `F.rms_norm`, on the build and device
# that produced these outputs (torch {glue:}`n21_torch`, {glue:}`n21_device`), dispatches
# {glue:}`n21_rms_kernel_ops` op(s) for {glue:}`n21_rms_kernel_passes` passes: whether it is
# one fused kernel depends on the PyTorch version and the device (the measurements below
# come back to this). Inside, a *fused* kernel walks each token's row twice or three times
# (statistics first, then the output), but a row of a few thousand floats stays in the
# L1/L2 cache between those walks, so main memory sees about one read and one write.
# `torch.compile` generates such a fused kernel from our naive function automatically.
#
# ### Measured: naive eager vs compiled vs PyTorch's kernels
#
# We time the forward pass, and forward + backward, of six implementations over hidden
# sizes $n$ at a fixed number of tokens, in float32 (on a GPU: IEEE fp32, TF32 is off, and
# no matmul is involved anyway), and convert each median time into an **effective
# bandwidth**: the minimal bytes (forward: read $x$, write $y$, read the parameters;
# backward: read $x$ and $\partial L/\partial y$, write $\partial L/\partial x$ and the
# parameter gradients) divided by the time. A kernel that moves exactly those bytes at the
# machine's copy bandwidth would reach it; one that makes extra passes, or pays fixed
# overheads on small tensors, falls below. First the machine's peaks, as in chapter 1:

# %%
peaks = ml.bench.measure_peaks(dev, copy_numel=ml.pick(smoke=2**22, cpu=2**25, gpu=None))
P, beta = peaks["flops_per_s"], peaks["bytes_per_s"]
print(f"peak {P / 1e9:.1f} GFLOP/s (fp32 matmul, IEEE), copy bandwidth {beta / 1e9:.1f} GB/s, "
      f"ridge {P / beta:.1f} FLOP/byte ({dev.type})")

# %% tags=["remove-cell"]
ml.glue("n21_peak_bw", beta / 1e9, ".1f")
ml.glue("n21_ridge", P / beta, ".0f")

# %% [markdown]
# The sweep. On a CPU `torch.compile` builds one kernel per hidden size (static shapes, the
# fastest code, a few seconds each); at the smoke and gpu scales it builds a single
# shape-generic kernel instead, because compiling one Triton kernel per size, forward and
# backward, would take longer than the whole sweep.

# %%
def compile_works():
    """Try torch.compile once on a tiny function; False (and a message) if it fails here."""
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(4, device=dev))
        return True
    except Exception as err:                                       # no C++ compiler, no Triton, ...
        print(f"torch.compile failed on this machine ({type(err).__name__}: {str(err)[:200]}); "
              f"the compiled rows are left out")
        return False


tokens = ml.pick(smoke=256, cpu=2048, gpu=16384)
hiddens = ml.trim(ml.pick(smoke=[64, 256, 1024], cpu=[64, 128, 256, 512, 1024, 2048, 4096, 8192],
                          gpu=[128, 512, 2048, 8192]))
repeat = ml.pick(smoke=3, cpu=10, gpu=20)
dynamic = ml.pick(smoke=True, cpu=False, gpu=True)
kernels = {"LayerNorm": lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b),
           "RMSNorm": lambda x, w: F.rms_norm(x, x.shape[-1:], w, eps=1e-6)}
naive = {"LayerNorm": layer_norm_naive, "RMSNorm": rms_norm_naive}
n_params = {"LayerNorm": 2, "RMSNorm": 1}
implementations = ["naive eager"] + (["torch.compile"] if compile_works() else []) + ["PyTorch kernel"]


def forward(fn, x, params, dy):
    with torch.no_grad():
        return fn(x, *params)


def forward_backward(fn, x, params, dy):
    return torch.autograd.grad(fn(x, *params), (x, *params), dy)


results, reference = [], {}
compiled = {}
for h in hiddens:
    if "torch.compile" in implementations and (not dynamic or not compiled):
        torch._dynamo.reset()                                      # forget the kernels of the last size
        compiled = {norm: torch.compile(fn, dynamic=dynamic) for norm, fn in naive.items()}
    x = torch.randn(tokens, h, device=dev) * 2 + 0.5
    dy, xg, elem = torch.randn_like(x), x.detach().requires_grad_(), x.element_size()
    # Reference: the cheapest op that returns a new tensor (read x once, write y once).
    reference[h] = 2 * x.nbytes / ml.bench.time_fn(torch.mul, x, 2.0, warmup=2, repeat=repeat).median / 1e9
    for norm in naive:
        fns = {"naive eager": naive[norm], "torch.compile": compiled.get(norm), "PyTorch kernel": kernels[norm]}
        params = [torch.randn(h, device=dev, requires_grad=True) for _ in range(n_params[norm])]
        for impl in implementations:
            for mode, step, nbytes in [
                ("forward", forward, elem * (2 * x.numel() + n_params[norm] * h)),
                ("forward+backward", forward_backward, elem * (5 * x.numel() + 3 * n_params[norm] * h)),
            ]:
                t = ml.bench.time_fn(step, fns[impl], xg, params, dy, warmup=2, repeat=repeat)
                results.append({"norm": norm, "implementation": impl, "mode": mode, "hidden": h,
                                "time (ms)": t.median * 1e3, "timing": t, "GB/s": nbytes / t.median / 1e9})
    del x, dy, xg
impls = [(norm, impl) for norm in naive for impl in implementations]
print(f"{len(results)} timings, {tokens} tokens, hidden sizes {hiddens[0]}..{hiddens[-1]}, float32 on {dev.type}")

# %%
fig, axes = plt.subplots(2, 2, figsize=(9.5, 7.5), sharex=True)
styles = {"naive eager": ("C1", "o"), "torch.compile": ("C2", "s"), "PyTorch kernel": ("C0", "^")}
for row, mode in enumerate(("forward", "forward+backward")):
    for (norm, impl) in impls:
        pts = [r for r in results if r["norm"] == norm and r["implementation"] == impl and r["mode"] == mode]
        color, marker = styles[impl]
        kw = dict(color=color, marker=marker, linestyle="-" if norm == "LayerNorm" else "--",
                  label=f"{norm}, {impl}", markersize=4)
        axes[row, 0].plot([r["hidden"] for r in pts], [r["time (ms)"] for r in pts], **kw)
        axes[row, 1].plot([r["hidden"] for r in pts], [r["GB/s"] for r in pts], **kw)
    axes[row, 0].set(yscale="log", ylabel="median time (ms)", title=f"{mode}: time")
    axes[row, 1].axhline(beta / 1e9, color="0.3", linestyle=":", label="copy bandwidth (chapter 1)")
    if mode == "forward":
        axes[row, 1].plot(hiddens, [reference[h] for h in hiddens], color="k", linewidth=2.5, alpha=0.35,
                          label="reference: y = x * 2 (new y)")
    axes[row, 1].set(ylabel="effective bandwidth (GB/s)", title=f"{mode}: minimal bytes / time")
for ax in axes.flat:
    ax.set_xscale("log", base=2)
    ax.set_xticks(hiddens, [str(h) for h in hiddens], fontsize=8)
    ax.minorticks_off()
axes[1, 0].set_xlabel(f"hidden size n ({tokens} tokens)")
axes[1, 1].set_xlabel(f"hidden size n ({tokens} tokens)")
handles, labels = axes[0, 1].get_legend_handles_labels()
fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9)
plt.show()

# %%
big = hiddens[-1]
at = {(r["norm"], r["implementation"], r["mode"]): r for r in results if r["hidden"] == big}
rows = []
for (norm, impl) in impls:
    f, fb = at[(norm, impl, "forward")], at[(norm, impl, "forward+backward")]
    rows.append({"norm": norm, "implementation": impl, "forward": f["timing"], "forward (GB/s)": f["GB/s"],
                 "forward+backward": fb["timing"], "fwd+bwd (GB/s)": fb["GB/s"]})
rows.append({"norm": "reference", "implementation": "y = x * 2",
             "forward (GB/s)": reference[big]})
ml.bench.Table(rows, title=f"Hidden size {big}, {tokens} tokens, float32, {dev.type}: median ± half the IQR",
               formats={"forward (GB/s)": "{:.1f}", "fwd+bwd (GB/s)": "{:.1f}"})

# %% [markdown]
# ### Interleaved comparisons at the largest size
#
# The sweep timed each implementation on its own, one after the other; on a shared machine
# a slow phase can hit one of them and not the other. The claims below are therefore each
# measured as a ratio in one run with `ml.bench.compare`: A and B alternate (A B, B A, ...),
# and the table gives the median of the per-round ratios time(A) / time(B) with their
# interquartile range. The verdict says whether B is faster, slower, or not measurably
# different (the range covers 1).

# %%
LN, RMS, FWD, FB = "LayerNorm", "RMSNorm", "forward", "forward+backward"
x = torch.randn(tokens, big, device=dev) * 2 + 0.5
dy, xg = torch.randn_like(x), x.detach().requires_grad_()
big_params = {norm: [torch.randn(big, device=dev, requires_grad=True) for _ in range(n_params[norm])]
              for norm in naive}
impl_fns = {(norm, impl): {"naive eager": naive[norm], "torch.compile": compiled.get(norm),
                           "PyTorch kernel": kernels[norm]}[impl] for norm, impl in impls}


def call(norm, impl, mode):
    """A closure running one implementation once at the largest size."""
    fn, params, step = impl_fns[norm, impl], big_params[norm], forward if mode == FWD else forward_backward
    return lambda: step(fn, xg, params, dy)


PAIRS = [  # (key, A, B): the ratio is time(A) / time(B)
    ("naive_vs_kernel_ln", (LN, "naive eager", FWD), (LN, "PyTorch kernel", FWD)),
    ("naive_vs_kernel_ln_fb", (LN, "naive eager", FB), (LN, "PyTorch kernel", FB)),
    ("compile_vs_naive_ln", (LN, "naive eager", FWD), (LN, "torch.compile", FWD)),
    ("compile_vs_naive_ln_fb", (LN, "naive eager", FB), (LN, "torch.compile", FB)),
    ("compile_vs_kernel_ln", (LN, "torch.compile", FWD), (LN, "PyTorch kernel", FWD)),
    ("rms_ln_naive", (LN, "naive eager", FWD), (RMS, "naive eager", FWD)),
    ("rms_ln_compiled", (LN, "torch.compile", FWD), (RMS, "torch.compile", FWD)),
    ("rms_ln_compiled_fb", (LN, "torch.compile", FB), (RMS, "torch.compile", FB)),
    ("rms_ln_kernel", (LN, "PyTorch kernel", FWD), (RMS, "PyTorch kernel", FWD)),
    ("rms_ln_kernel_fb", (LN, "PyTorch kernel", FB), (RMS, "PyTorch kernel", FB)),
]
cmp = {}
for key, a, b in PAIRS:
    if a[:2] in impl_fns and b[:2] in impl_fns:                   # no compiled rows if compile failed
        cmp[key] = ml.bench.compare(call(*a), call(*b), warmup=1, repeat=ml.pick(smoke=3, cpu=8, gpu=20))
# The cost of a fresh output: y = 2x into a new tensor (as every call above) vs into an existing one.
out_buf = torch.empty_like(x)
fresh = ml.bench.compare(lambda: torch.mul(x, 2.0), lambda: torch.mul(x, 2.0, out=out_buf),
                         warmup=1, repeat=ml.pick(smoke=3, cpu=8, gpu=20))
short = {"naive eager": "naive", "torch.compile": "compiled", "PyTorch kernel": "kernel"}
ml.bench.Table([{"A": f"{a[0]}, {short[a[1]]}", "B": f"{b[0]}, {short[b[1]]}", "mode": a[2],
                 "time(A) / time(B)": cmp[key], "B is": cmp[key].words(same="not measurably different")}
                for key, a, b in PAIRS if key in cmp]
               + [{"A": "y = 2x, new y", "B": "y = 2x, into existing y", "mode": FWD, "time(A) / time(B)": fresh,
                   "B is": fresh.words(same="not measurably different")}],
               title=f"Interleaved A/B at hidden size {big}, {tokens} tokens, float32, {dev.type} "
                     "(median ratio, IQR)")

# %% tags=["remove-cell"]
ml.glue("n21_big", big, "d")
ml.glue("n21_tokens", tokens, "d")
ml.glue("n21_big_mib", tokens * big * 4 / 2**20, ".0f")
ml.glue("n21_cpu_model", ml.env.hardware()["cpu model"])
for key, _, _ in PAIRS:
    c = cmp.get(key)
    ml.glue(f"n21_{key}", f"{c.speedup:.2f}" if c else "n/a")
    ml.glue(f"n21_{key}_iqr", f"{c.lo:.2f}-{c.hi:.2f}" if c else "n/a")
    ml.glue(f"n21_{key}_verdict", c.words(same="not measurably different") if c
            else "not measured (torch.compile failed here)")
ml.glue("n21_fresh", fresh.speedup, ".2f")
ml.glue("n21_fresh_iqr", f"{fresh.lo:.2f}-{fresh.hi:.2f}")
ml.glue("n21_fresh_verdict", fresh.words(same="not measurably different"))
ml.glue("n21_kernel_ln_gbs", at[(LN, "PyTorch kernel", FWD)]["GB/s"], ".1f")
ml.glue("n21_ref_gbs", reference[big], ".1f")
ml.glue("n21_kernel_vs_ref", 100 * at[(LN, "PyTorch kernel", FWD)]["GB/s"] / reference[big], ".0f")
best = max((r for r in results if r["mode"] == FWD), key=lambda r: r["GB/s"])
best_ref = max(reference.values())
ml.glue("n21_best_gbs", best["GB/s"], ".1f")
ml.glue("n21_best_where", f"{best['norm']}, {best['implementation']}, n={best['hidden']}")
ml.glue("n21_best_ref_gbs", best_ref, ".1f")
ml.glue("n21_best_ref_where", max(reference, key=reference.get), "d")
ml.glue("n21_ref_vs_copy", ml.bench.verdict(best_ref, best_ref, best_ref, reference=beta / 1e9,
                                            above="above", below="below", same="equal to"))
ml.glue("n21_best_vs_ref", ml.bench.verdict(best["GB/s"], best["GB/s"], best["GB/s"], reference=best_ref,
                                            above="above", below="below", same="equal to"))

# %% [markdown]
# **Fusion is the big win.** At $n$ = {glue:}`n21_big` ({glue:}`n21_tokens` tokens, a
# {glue:}`n21_big_mib` MiB activation), the naive eager LayerNorm takes
# {glue:}`n21_naive_vs_kernel_ln` times as long as `F.layer_norm` in the forward pass
# (interquartile range {glue:}`n21_naive_vs_kernel_ln_iqr`; the kernel is
# {glue:}`n21_naive_vs_kernel_ln_verdict`) and {glue:}`n21_naive_vs_kernel_ln_fb` times as
# long forward + backward ({glue:}`n21_naive_vs_kernel_ln_fb_iqr`). Their memory passes are
# in the ratio {glue:}`n21_naive_ln_passes` : 2, and the time ratio follows it, give or take
# what the caches absorb. `torch.compile` of the *same* naive function runs
# {glue:}`n21_compile_vs_naive_ln` times as fast as the eager version
# ({glue:}`n21_compile_vs_naive_ln_iqr`, forward: the compiled version is
# {glue:}`n21_compile_vs_naive_ln_verdict`; forward + backward {glue:}`n21_compile_vs_naive_ln_fb`,
# {glue:}`n21_compile_vs_naive_ln_fb_verdict`): where it is faster, the compiler found the
# fusion by itself. Against PyTorch's
# hand-written kernel the compiled function takes {glue:}`n21_compile_vs_kernel_ln` times
# its time ({glue:}`n21_compile_vs_kernel_ln_iqr`; the kernel is
# {glue:}`n21_compile_vs_kernel_ln_verdict`). At small $n$ the tensor fits in the caches,
# where the reference $y = 2x$ (grey) reaches {glue:}`n21_best_ref_gbs` GB/s (at $n$ =
# {glue:}`n21_best_ref_where`), {glue:}`n21_ref_vs_copy` the copy bandwidth of the main
# memory. The best forward normalization reaches {glue:}`n21_best_gbs` GB/s
# ({glue:}`n21_best_where`), {glue:}`n21_best_vs_ref` the reference: on small tensors the
# fixed per-call costs (dispatch, allocation, the compiled function's guards, kernel
# launches on a GPU) and the per-token reductions weigh as much as the bytes.
#
# **The cost of a new tensor.** Every call here returns a *new* tensor. On a CPU a large
# new tensor may come straight from the operating system, which must map and zero each page
# before the kernel can write it: one more pass, plus a page fault every 4 KiB. The copy
# bandwidth of chapter 1 writes into an existing tensor and does not pay it. The last row
# of the table measures it at the largest size: $y = 2x$ into a new tensor takes
# {glue:}`n21_fresh` times as long as into an existing one ({glue:}`n21_fresh_iqr`; writing
# into an existing tensor is {glue:}`n21_fresh_verdict`). (On a GPU PyTorch's caching
# allocator reuses freed memory, so a fresh output costs no extra pass there.) Against the
# reference $y = 2x$ with a new output, PyTorch's LayerNorm kernel reaches
# {glue:}`n21_kernel_vs_ref`% of its bandwidth at the largest size.
#
# **RMSNorm vs LayerNorm: it depends on the implementation.** Written naively, RMSNorm makes
# {glue:}`n21_naive_rms_passes` passes to LayerNorm's {glue:}`n21_naive_ln_passes` and runs
# {glue:}`n21_rms_ln_naive` times as fast ({glue:}`n21_rms_ln_naive_iqr`; RMSNorm is
# {glue:}`n21_rms_ln_naive_verdict`). Compiled, both become one fused loop that reads $x$
# and writes $y$; RMSNorm only skips a few FLOPs per element of a memory-bound kernel, and
# runs {glue:}`n21_rms_ln_compiled` times as fast as LayerNorm
# ({glue:}`n21_rms_ln_compiled_iqr`, {glue:}`n21_rms_ln_compiled_verdict`;
# {glue:}`n21_rms_ln_compiled_fb` forward + backward, {glue:}`n21_rms_ln_compiled_fb_verdict`).
# PyTorch's own functions: `F.rms_norm` runs {glue:}`n21_rms_ln_kernel` times as fast as
# `F.layer_norm` ({glue:}`n21_rms_ln_kernel_iqr`, {glue:}`n21_rms_ln_kernel_verdict`;
# forward + backward {glue:}`n21_rms_ln_kernel_fb`, {glue:}`n21_rms_ln_kernel_fb_verdict`),
# with the {glue:}`n21_rms_kernel_ops` op(s) counted above. These ratios depend on the
# hardware and the PyTorch build: the stored outputs were measured on
# {glue:}`n21_cpu_model` (see the banner for the device). The rule behind them does not:
# the number of passes over memory decides, not the formula, so an unfused RMSNorm can lose
# to a fused LayerNorm.
#
# ### On the roofline
#
# Chapter 1's roofline puts the same numbers in one picture. For each implementation at
# $n$ = {glue:}`n21_big` we plot the FLOP/s it achieved (7 or 4 FLOPs per element over its
# median time) against its arithmetic intensity, counting for the eager versions the bytes
# they really move (the passes counted above, PyTorch's functions included) and for the
# compiled one the minimal two passes:

# %%
flops_per_elem = {"LayerNorm": 7, "RMSNorm": 4}
counted = {(r["implementation"].split(", ")[0], "naive eager" if "naive" in r["implementation"] else "PyTorch kernel"):
           r["passes (forward)"] for r in pass_table.rows}
counted |= {(norm, "torch.compile"): 2 for norm in flops_per_elem}  # one fused loop: read x, write y
points = []
for (norm, impl) in impls:
    r = at[(norm, impl, "forward")]
    points.append({"name": "", "label": f"{'LN' if norm == LN else 'RMS'} {short[impl]}",
                   "intensity": flops_per_elem[norm] / (4 * counted[(norm, impl)]),
                   "flops_per_s": flops_per_elem[norm] * tokens * big / (r["time (ms)"] / 1e3)})
fig, ax = plt.subplots(figsize=(7, 4.4))
ml.plot.roofline(P, beta, points, ax=ax, title=f"Normalization forward on the roofline ({dev.type}, float32, n={big})")
ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=ml.plot.PALETTE[i % len(ml.plot.PALETTE)],
                          label=p["label"]) for i, p in enumerate(points)], fontsize=9, loc="upper left")
plt.show()

# %% tags=["remove-cell"]
ml.glue("n21_max_intensity", max(p["intensity"] for p in points), ".2f")
ml.glue("n21_roof_frac", 100 * max(p["flops_per_s"] / min(P, p["intensity"] * beta) for p in points), ".0f")
ml.glue("n21_ref_roof_frac", 100 * reference[big] / (beta / 1e9), ".0f")

# %% [markdown]
# All the points sit at an intensity of at most {glue:}`n21_max_intensity` FLOP/byte, far
# left of the ridge point ({glue:}`n21_ridge` FLOP/byte here): under the slanted memory
# roof, where the only way up is to move fewer bytes, which is exactly what fusion does (it
# moves a point to the right). A faster ALU, or skipping a few FLOPs per element, would not
# lift them. The closest point reaches {glue:}`n21_roof_frac`% of its roof; the reference
# $y = 2x$, which returns a new tensor too, reaches {glue:}`n21_ref_roof_frac`% of the copy
# bandwidth at this size. The roof is measured with a copy into an existing tensor, which
# pays nothing for fresh memory (the last comparison above measures what that costs).
#
# On a GPU the picture is the same with larger numbers: the PyTorch kernels and the
# compiled (Triton) kernel read and write once at close to the HBM bandwidth, while the
# eager version pays its passes *and* one kernel launch per op. The cell below runs the
# sweep's largest size on CUDA with bfloat16 tensors (half the bytes, so half the time for a
# memory-bound kernel) when a GPU is present:

# %%
if torch.cuda.is_available():
    xb = torch.randn(tokens, big, device="cuda", dtype=torch.bfloat16)
    wb, bb = torch.ones(big, device="cuda", dtype=torch.bfloat16), torch.zeros(big, device="cuda", dtype=torch.bfloat16)
    for name, fn, args in [("F.layer_norm, bf16 tensors", lambda x, w, b: F.layer_norm(x, (big,), w, b), (xb, wb, bb)),
                           ("F.rms_norm, bf16 tensors", lambda x, w: F.rms_norm(x, (big,), w), (xb, wb))]:
        t = ml.bench.time_fn(fn, *args, repeat=repeat)
        print(f"{name}: {t}, {2 * xb.numel() * 2 / t.median / 1e9:.0f} GB/s effective")
else:
    print("no CUDA GPU here: the bfloat16 GPU timing is skipped")

# %% [markdown]
# ## 2.1.8 Claimed vs measured
#
# | source | claim | measured here (float32, one layer in isolation, the device in the banner) |
# | --- | --- | --- |
# | {cite}`zhang2019rmsnorm` | RMSNorm matches LayerNorm's quality and cuts the running time by 7% to 64% on their models (whole-model training, their implementations) | one layer, forward, $n$ = {glue:}`n21_big`: RMSNorm runs {glue:}`n21_rms_ln_naive`x as fast as LayerNorm written naively ({glue:}`n21_rms_ln_naive_verdict`), {glue:}`n21_rms_ln_compiled`x compiled ({glue:}`n21_rms_ln_compiled_verdict`), {glue:}`n21_rms_ln_kernel`x with PyTorch's functions ({glue:}`n21_rms_ln_kernel_verdict`). The saving comes from fewer memory passes in op-by-op code; between fused kernels only a few FLOPs per element differ |
# | {cite}`jiang2023prermsnorm` | with a zero-mean residual stream, Pre-LN and Pre-RMSNorm transformers are equivalent | LN and RMSNorm agree to {glue:}`n21_ln_rms_diff` over 6 layers of a recentered toy stream |
# | {cite}`ba2016layernorm` | per-sample statistics: the same computation in training and at test time, independent of the batch | `layer_norm_naive` equals `F.layer_norm` forward and backward; the hand-derived backward passes `gradcheck` in float64 |
# | {cite}`ioffe2015batchnorm` | batch statistics while training, population statistics (moving averages) at inference | our running mean and unbiased running variance equal `nn.BatchNorm2d`'s over 5 steps, for momentum 0.1 and `None`; eval outputs match |
# | {cite}`wu2018groupnorm` | GroupNorm is batch-independent and spans LayerNorm ($G=1$) to InstanceNorm ($G=C$) | `group_norm_naive` equals `F.group_norm` for $G \in \{1, 3, C\}$, and equals `F.layer_norm` / `F.instance_norm` at the two ends, to float32 rounding |
#
# **Further reading.** Jiang et al. {cite}`jiang2023prermsnorm` also report that replacing
# LayerNorm by RMSNorm saves 1% to 10% of a whole transformer's training and inference time;
# this notebook times single layers, not whole models (notebook 2.3 times whole models with
# and without their norms).

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: RMSNorm's backward pass (implement, medium)
# Derive $\partial L/\partial x$ for $y = \gamma \odot x\,r$ with
# $r = (\frac1n\sum_j x_j^2 + \epsilon)^{-1/2}$, in the form used for LayerNorm, write it as
# a function `rms_norm_backward(x, w, dy, eps)`, and check it against autograd in float64.

# %% tags=["solution", "hide-cell"]
# Solution 1
def rms_norm_backward(x, w, dy, eps):
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    xhat, g = x * r, dy * w                                        # g = dL/dxhat
    return r * (g - xhat * (g * xhat).mean(-1, keepdim=True))


xs = torch.randn(4, 32, dtype=torch.float64, requires_grad=True)
ws, dys = torch.randn(32, dtype=torch.float64), torch.randn(4, 32, dtype=torch.float64)
(auto,) = torch.autograd.grad(F.rms_norm(xs, (32,), ws, eps=1e-6), xs, dys)
err = (rms_norm_backward(xs.detach(), ws, dys, 1e-6) - auto).abs().max().item()
assert err < 1e-12
print(f"hand-written RMSNorm backward vs autograd (float64): max |Δ| < 1e-12: {err < 1e-12}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# With $\hat x = x r$ and $g = \gamma \odot \partial L/\partial y$: $\partial r/\partial x_j =
# -\frac{r^3}{n} x_j$, so $\partial \hat x_i / \partial x_j = r\,\delta_{ij} - \frac{r}{n}\hat x_i \hat x_j$ and
#
# $$\frac{\partial L}{\partial x} = r\,\big(g - \hat x \odot \operatorname{mean}(g \odot \hat x)\big),$$
#
# LayerNorm's formula without the $\operatorname{mean}(g)$ term (no centering, nothing to
# project out along $\mathbf 1$). The code above implements it and agrees with autograd to
# float64 rounding.
# :::

# %% [markdown]
# ### Exercise 2: the momentum puzzle (explain, easy)
# A fresh `nn.BatchNorm2d` (running mean 0, running variance 1, momentum 0.1) is trained
# for 10 steps on batches whose every channel has exactly mean 2 and biased variance 4,
# with $M = 16$ values per channel. What are `running_mean` and `running_var` afterwards?
# What does eval mode then output for an input equal to 2? What would `momentum=None` give?

# %% tags=["solution", "hide-cell"]
# Solution 2
for momentum in (0.1, None):
    bn = nn.BatchNorm2d(1, momentum=momentum)
    for _ in range(10):
        xb = torch.randn(16)
        xb = (xb - xb.mean()) / xb.std(unbiased=False) * 2 + 2      # mean 2, biased var 4
        bn(xb.reshape(16, 1, 1, 1))
    out = bn.eval()(torch.full((1, 1, 1, 1), 2.0)).item()
    print(f"momentum={momentum}: running_mean {bn.running_mean.item():.2f}, "
          f"running_var {bn.running_var.item():.2f}, eval output for x = 2: {out:.2f}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# Each step does `running = 0.9 * running + 0.1 * batch`, so after $k$ steps from $r_0$ with a
# constant batch value $b$: $r_k = 0.9^k r_0 + (1 - 0.9^k) b$, with $0.9^{10} = 0.349$.
# `running_mean` $= 0.651 \times 2 = 1.30$, not 2. `running_var` averages the *unbiased*
# variance $4 \times 16/15 = 4.27$: $0.349 \times 1 + 0.651 \times 4.27 = 3.13$. In eval, an
# input of 2 (the training mean) becomes $(2 - 1.30)/\sqrt{3.13 + 10^{-5}} = 0.39$, not 0:
# running statistics need many more steps than 10 (about $3/m = 30$ to get within 5%),
# which is why a model evaluated after a few steps, or whose statistics drift, misbehaves in
# eval mode. With `momentum=None` the running values are the plain average of the batches
# seen: exactly 2 and 4.27 after any number of steps, and the eval output for 2 is 0. The
# code above prints the same numbers.
# :::

# %% [markdown]
# ### Exercise 3: predict the bytes (explain, medium)
# A Pre-LN transformer block at inference holds a $(B, T, C)$ = $(8, 1024, 4096)$ bfloat16
# activation. How many bytes does one fused LayerNorm move, how long does it take at 3 TB/s,
# and how long does the naive eager version take, with the pass count measured above
# (assume the same count in bfloat16)? What does one RMSNorm save over one fused LayerNorm?

# %% tags=["solution", "hide-cell"]
# Solution 3
elements = 8 * 1024 * 4096
fused_bytes = 2 * elements * 2                                     # read x, write y; 2 bytes each
naive_passes_ln = pass_table.rows[0]["passes (forward)"]
print(f"fused LayerNorm: {fused_bytes / 1e6:.0f} MB, {fused_bytes / 3e12 * 1e6:.0f} µs at 3 TB/s; "
      f"naive eager ({naive_passes_ln:.0f} passes): {naive_passes_ln / 2 * fused_bytes / 3e12 * 1e6:.0f} µs "
      f"plus one kernel launch per op")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# $8 \times 1024 \times 4096 = 33.6$ M elements of 2 bytes: 67 MB read and 67 MB written,
# 134 MB per fused LayerNorm, about 45 µs at 3 TB/s (the parameters, 16 KB, are noise).
# The naive version moves {glue:}`n21_naive_ln_passes` passes instead of 2, so its time
# scales by that ratio (the code prints it), before adding the launch overhead of each of
# its ops. A fused RMSNorm moves the same two passes as a fused LayerNorm: at the memory
# roof it saves *nothing* but the $\beta$ vector and a few FLOPs per element, so two fused
# kernels that both run at the memory roof take the same time.
# :::

# %% [markdown]
# ### Exercise 4: CRMSNorm (implement, medium)
# For a zero-mean $x \in \mathbb{R}^d$ keep only $z = x_{1:d-1}$. Write
# `rms_from_compressed(z)` that computes $\operatorname{rms}(x)$ from $z$ alone, and check
# it against the RMS of the full vector.

# %% tags=["solution", "hide-cell"]
# Solution 4
def rms_from_compressed(z):
    d = z.shape[-1] + 1                                            # the dropped entry is -sum(z)
    return torch.sqrt((z.pow(2).sum(-1) + z.sum(-1).pow(2)) / d)


xz = torch.randn(16, 512, dtype=torch.float64)
xz = xz - xz.mean(-1, keepdim=True)
err = (rms_from_compressed(xz[:, :-1]) - xz.pow(2).mean(-1).sqrt()).abs().max().item()
assert err < 1e-12
print(f"RMS from the first d-1 entries vs the full vector (float64): max |Δ| < 1e-12: {err < 1e-12}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# The missing entry is $x_d = -\sum_j z_j$, so $\sum_j x_j^2 = \sum_j z_j^2 + (\sum_j z_j)^2$
# and $\operatorname{rms}(x) = \sqrt{(\sum_j z_j^2 + (\sum_j z_j)^2)/d}$. The saving is one
# entry in $d$, small for any realistic $d$; what matters is that it is exact
# {cite}`jiang2023prermsnorm`.
# :::

# %% [markdown]
# ### Exercise 5: a one-pass variance, and why kernels avoid it (implement, hard)
# A kernel that reads each row once can accumulate $\sum x$ and $\sum x^2$ together and use
# $\sigma^2 = \overline{x^2} - \bar x^2$. Write `layer_norm_one_pass` that does so, check it
# against `F.layer_norm` on inputs with mean 0, and then measure its largest error on inputs
# $x + c$ with offsets $c = 10^2, 10^3, 10^4$ in float32, next to `layer_norm_naive` (two
# passes: mean first, then the variance of $x - \mu$). Explain the difference.

# %% tags=["solution", "hide-cell"]
# Solution 5
def layer_norm_one_pass(x, weight, bias, eps=1e-5):
    mean, mean_sq = x.mean(-1, keepdim=True), x.pow(2).mean(-1, keepdim=True)
    var = (mean_sq - mean.pow(2)).clamp_min(0)                     # E[x^2] - E[x]^2
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


xo, wo, bo = torch.randn(64, 1024), torch.ones(1024), torch.zeros(1024)
rows5 = []
for offset in (0.0, 1e2, 1e3, 1e4):
    ref = F.layer_norm((xo + offset).double(), (1024,), wo.double(), bo.double())   # float64 reference
    rows5.append({"offset c": offset,
                  "one pass, max error": (layer_norm_one_pass(xo + offset, wo, bo) - ref).abs().max().item(),
                  "two passes, max error": (layer_norm_naive(xo + offset, wo, bo) - ref).abs().max().item()})
assert rows5[0]["one pass, max error"] < 1e-4
ml.bench.Table(rows5, title="LayerNorm of x + c in float32 against float64",
               formats={"offset c": "{:g}", "one pass, max error": "{:.1e}", "two passes, max error": "{:.1e}"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# For mean-zero inputs both agree with `F.layer_norm` to float32 rounding. With an offset
# $c$, $\overline{x^2}$ and $\bar x^2$ are both about $c^2$, and their difference, the
# variance (about 1 here), is what is left after cancelling two numbers that each carry a
# rounding error of order $2^{-24} c^2$ (more once summed over a row): the one-pass error
# grows like $c^2$, about a hundredfold per tenfold offset in the table, until the variance
# is lost entirely (it can even come out negative, hence the clamp, and then the output is
# divided by $\sqrt{\epsilon}$). The two-pass error grows only like $c$: it subtracts the
# mean *before* squaring, so it never forms the large numbers, and what is left is the
# rounding of the mean itself. Real one-pass kernels use Welford's update (a running mean
# and a running sum of squared deviations), which is as stable as two passes and still reads
# the row once.
# :::

# %% [markdown]
# ## Key takeaways
#
# - BatchNorm, LayerNorm, RMSNorm and GroupNorm are one formula with different reduction
#   axes; each is a few lines from scratch, and checking them forward *and* backward against
#   PyTorch catches the classic slips (biased vs unbiased variance, momentum convention).
# - BatchNorm's running variance is an unbiased, exponentially averaged estimate with the
#   *new* batch weighted by `momentum`; in eval mode the layer is a fixed affine map.
# - LayerNorm's backward is $r(g - \operatorname{mean}(g) - \hat x \operatorname{mean}(g\hat x))$:
#   it needs only $\hat x$ and $r$.
# - $\operatorname{LN}(x) = \operatorname{RMSNorm}(x - \mu) + \beta$: keep the residual
#   stream zero-mean and LayerNorm *is* RMSNorm.
# - Normalization does ~4-7 FLOPs per element: memory-bound everywhere. Its time follows its
#   number of passes over memory; fusing them into one kernel is the big win, dropping the
#   mean (RMSNorm) a small one.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
