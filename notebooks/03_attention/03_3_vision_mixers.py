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
# # 3.3 Token mixers for vision: windows, axes, linear attention and pooling
#
# A Vision Transformer cuts an image into patches and lets every patch attend to every
# other one {cite}`dosovitskiy2021vit`. With $T$ patches that costs $O(T^2)$ time and, unless
# a fused kernel avoids it, $O(T^2)$ memory, and $T$ grows with the *square* of the image
# side: doubling the resolution multiplies the attention cost by sixteen. Dense prediction
# (detection, segmentation, super-resolution) needs high resolution, so vision models
# changed *which tokens a query looks at*: only its local window, shifted from block to
# block (Swin {cite}`liu2021swin`); its row and its column (axial and criss-cross attention
# {cite}`ho2019axial,huang2019ccnet`); every token but through a kernel that lets the sum be
# reordered (linear attention {cite}`katharopoulos2020linear`); or no attention at all,
# just an average of the neighbours (PoolFormer). The last one came with a provocative
# claim: the token mixer matters less than the block around it {cite}`yu2022metaformer`.
# This notebook builds each mixer, checks it against the dense definition, and measures
# what it costs and what it does to accuracy inside the same ViT on CIFAR-10.
#
# **Learning objectives.** After this notebook you can
# 1. write window, shifted-window, axial, linear and pooling mixers as *masked* or
#    *re-associated* versions of full attention, and check an implementation against that
#    dense definition (forward and backward);
# 2. count their cost per image in FLOPs and memory, and find by measurement the sequence
#    length at which linear or window attention beats full softmax attention;
# 3. explain the three failure modes of linear attention (non-injective feature map,
#    low-rank attention matrix, no locality), measure them on a trained ViT, and apply the
#    fixes of InLine {cite}`han2024bridging` and SLAB {cite}`guo2024slab`;
# 4. read attention maps of a trained ViT, and place newer mixers (BiFormer, HiLo, DaViT,
#    CrossFormer, TransNeXt, InceptionNeXt) by what a query sees.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import functools
import itertools
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import minilib as ml

A = ml.attention
ml.describe()
dev = ml.device()

# %% [markdown]
# ## 3.3.1 What a query sees
#
# Every mixer below maps tokens $X \in \mathbb{R}^{T \times C}$ to tokens of the same shape.
# For the attention-based ones, head $h$ computes
#
# $$O = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt d} + B + M\Big) V,
# \qquad M_{ij} = \begin{cases} 0 & \text{query } i \text{ may see key } j\\
# -\infty & \text{otherwise,}\end{cases}$$
#
# with $Q, K, V = XW_q, XW_k, XW_v$ and $B$ an optional position bias. Window and axial
# attention are *exactly* full attention with a sparse mask $M$; they are fast because they
# never compute the masked entries. Linear attention keeps every key but replaces
# $\exp(q \cdot k)$ by a product of features $\phi(q)\cdot\phi(k)$; pooling replaces the
# learned weights by a fixed average. Our ViT has an $8 \times 8$ grid of patch tokens plus
# one class token, $T = 65$. We write the masks from scratch as boolean $(T_g, T_g)$ matrices
# over the grid tokens, in raster order:

# %%
GRID = (8, 8)


def grid_rc(grid):
    """Row and column of each grid token, raster order."""
    H, W = grid
    return torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)


def swin_keep(grid, window, shift):
    """Swin's rule: same window after torch.roll(-shift), and same region label.

    The labels are those of the official code: in rolled coordinates each axis is cut
    into [0, n - w), [n - w, n - s), [n - s, n); tokens that wrapped around get their own
    label, so they never attend to tokens they are not adjacent to in the image.
    """
    (H, W), (wh, ww), (sh, sw) = grid, window, shift
    r, c = grid_rc(grid)
    rr, rc = (r - sh) % H, (c - sw) % W            # where the roll moves each token
    win = (rr // wh) * (W // ww) + rc // ww

    def region(x, n, w, s):
        return torch.where(x < n - w, 0, torch.where(x < n - s, 1, 2))

    label = region(rr, H, wh, sh) * 3 + region(rc, W, ww, sw)
    return (win[:, None] == win[None, :]) & (label[:, None] == label[None, :])


def axial_keep(grid, axis):
    r, c = grid_rc(grid)
    a = r if axis == "row" else c
    return a[:, None] == a[None, :]


def pool_keep(grid, k=3):
    r, c = grid_rc(grid)
    return ((r[:, None] - r[None, :]).abs() <= k // 2) & ((c[:, None] - c[None, :]).abs() <= k // 2)


T_grid = GRID[0] * GRID[1]
keeps = {
    "full / linear": torch.ones(T_grid, T_grid, dtype=torch.bool),
    "window 4x4": swin_keep(GRID, (4, 4), (0, 0)),
    "shifted window": swin_keep(GRID, (4, 4), (2, 2)),
    "axial: row": axial_keep(GRID, "row"),
    "axial: column": axial_keep(GRID, "col"),
    "criss-cross": axial_keep(GRID, "row") | axial_keep(GRID, "col"),
    "pooling 3x3": pool_keep(GRID),
}
queries = [(3, 3), (6, 1)]                          # two query patches (row, column)
maps = torch.stack([torch.stack([keeps[n][r * 8 + c].float().view(GRID) for n in keeps])
                    for r, c in queries])
fig = ml.plot.attention_maps(maps, col_labels=list(keeps), row_labels=[f"query {q}" for q in queries],
                             cmap="Blues", title="Keys a grid query may attend to (8 x 8 patches)")
for i, (r, c) in enumerate(queries):
    for ax in fig.axes[i * len(keeps):(i + 1) * len(keeps)]:
        ax.plot(c, r, marker="*", color="#D55E00", markersize=9)
plt.show()
print("keys per query:", {n: int(k.sum(1).float().mean()) for n, k in keeps.items()})

# %% [markdown]
# The shifted window of query $(6, 1)$ is the interesting one: after the roll, the bottom
# rows of the image share a window with the top rows, and Swin's mask cuts that window into
# pieces so that a query only sees keys that are its neighbours in the image. In the original
# coordinates the shifted windows are just the grid cut at rows and columns $2, 6$ instead of
# $0, 4$, with smaller windows at the borders.
#
# The cost per layer and image for $T$ tokens of width $C$, heads of width $d$, windows of
# $N = w^2$ tokens and a $H_g \times W_g$ grid (a multiply-add counted as 2 FLOPs; the
# projections $QKV$ and output cost $8TC^2$ in every case and are left out):
#
# | mixer | keys per query | scores + weighted sum (FLOPs) | extra memory |
# | --- | --- | --- | --- |
# | full softmax | $T$ | $4T^2C$ | $T^2$ per head (or $O(T)$ fused) |
# | window $w \times w$ (Swin) | $N$ | $4TNC$ | $TN$ per head |
# | axial (row, then column) | $W_g$, then $H_g$ | $4T(H_g + W_g)C$ | $T(H_g + W_g)$ |
# | linear | $T$ (implicitly) | $4TdC$ | $d^2$ per head |
# | pooling $k \times k$ | $k^2$ | $\approx k^2 TC$ additions | none, no parameters |
#
# Swin writes the same comparison in multiply-adds, $\Omega(\text{MSA}) = 4TC^2 + 2T^2C$
# against $\Omega(\text{W-MSA}) = 4TC^2 + 2NTC$ {cite}`liu2021swin`: quadratic against linear
# in the number of tokens for a fixed window. Linear attention trades $T$ for the head width
# $d$, so it only wins once $T > d$; at $T = 65$ and $d = 16$ every option is cheap, and
# section 3.3.7 measures where the lines cross.

# %% [markdown]
# ## 3.3.2 Window attention and shifted windows (Swin)
#
# Swin partitions the grid into $w \times w$ windows and runs attention inside each window
# independently, as a batch of $T/N$ short sequences. Alone that would never let information
# cross a window border, so every second block shifts the windows by $w/2$: implemented as a
# cyclic `torch.roll` of the grid by $-w/2$, regular windows on the rolled grid, and the mask
# above for the pieces that wrapped around {cite}`liu2021swin`. Inside a window, a learned
# **relative position bias** is added to the scores: one scalar per head for each offset
# $(\Delta r, \Delta c) \in [-(w-1), w-1]^2$, a table of $(2w-1)^2$ entries per head,
# $B_{ij} = \hat B[r_i - r_j, c_i - c_j]$.
#
# `ml.attention.WindowAttention` builds the per-window mask (bias plus $-\infty$ for the cut
# pieces) once per call; `SwinAttention` is the factory that hands the ViT's blocks
# alternately `shift=0` and `shift=w // 2`; the class token attends globally (see the
# docstring) so that the ViT's head can still read a summary of the image.

# %%
ml.show(A.WindowAttention.window_mask)

# %%
ml.show(A.SwinAttention)

# %% [markdown]
# **The check.** Window attention must equal full attention over all $T$ tokens with a dense
# mask: $-\infty$ outside the (shifted) window, the relative bias inside, global rows for the
# class token. We build that dense mask from our `swin_keep` and the module's bias table,
# run PyTorch's `F.scaled_dot_product_attention` on it, and compare outputs and gradients in
# float64:

# %%
def window_dense_mask(m, T):
    """The (heads, T, T) additive mask that window attention applies, as a dense matrix."""
    n_cls = T - GRID[0] * GRID[1]
    wh, ww = m.window                                # ints here (grid given)
    dev_ = m.qkv.weight.device                       # built where the module lives
    keep = swin_keep(GRID, (wh, ww), m.shift).to(dev_)
    r, c = (t.to(dev_) for t in grid_rc(GRID))
    bias = torch.zeros(m.heads, T - n_cls, T - n_cls, dtype=m.qkv.weight.dtype, device=dev_)
    if m.rel_bias is not None:                       # masked pairs may be far apart: clamp
        dr = (r[:, None] - r[None, :]).clamp(-(wh - 1), wh - 1) + wh - 1
        dc = (c[:, None] - c[None, :]).clamp(-(ww - 1), ww - 1) + ww - 1
        bias = bias + m.rel_bias[dr * (2 * ww - 1) + dc].permute(2, 0, 1)
    mask = torch.zeros(m.heads, T, T, dtype=bias.dtype, device=dev_)
    mask[:, n_cls:, :n_cls] = float("-inf")          # grid tokens do not see the class token
    mask[:, n_cls:, n_cls:] = bias.masked_fill(~keep, float("-inf"))
    return mask                                       # class-token rows: 0, global


def dense_attention(m, x, mask):
    """Full attention with m's projections and an additive (heads, T, T) mask."""
    B, T, C = x.shape
    q, k, v = m.qkv(x).view(B, T, 3, m.heads, C // m.heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None])
    return m.proj(y.transpose(1, 2).reshape(B, T, C))


def check(name, mine, ref, params):
    """Max abs error of outputs and of gradients w.r.t. params; assert they agree."""
    g = torch.randn_like(ref)
    ga = torch.autograd.grad(mine, params, g, retain_graph=True)
    gb = torch.autograd.grad(ref, params, g, retain_graph=True)
    err_f = (mine - ref).abs().max().item()
    err_b = max((a - b).abs().max().item() for a, b in zip(ga, gb))
    torch.testing.assert_close(mine, ref, atol=1e-10, rtol=1e-10)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    print(f"{name:44s} forward max|err| {err_f:.1e}   backward max|err| {err_b:.1e}")


torch.manual_seed(0)
x = torch.randn(2, 65, 32, dtype=torch.float64, requires_grad=True)
for shift in (0, 2):
    m = A.WindowAttention(32, 4, window_size=4, shift=shift, grid=GRID).double()
    with torch.no_grad():
        m.rel_bias.normal_()                          # a visible bias, not the 0.02 init
    check(f"window 4x4, shift {shift} == masked full attention", m(x),
          dense_attention(m, x, window_dense_mask(m, 65)), (x, m.qkv.weight, m.rel_bias))

# %% [markdown]
# ## 3.3.3 Axial and criss-cross attention
#
# Axial attention {cite}`ho2019axial` attends along one axis at a time: each token first
# mixes with its row ($W_g$ keys), then, in a second attention with its own projections,
# with its column ($H_g$ keys). After both steps information has travelled from every token
# to every other one, at cost $O(T(H_g + W_g))$ instead of $O(T^2)$: for a square grid,
# $O(T^{1.5})$. Criss-cross attention {cite}`huang2019ccnet` lets a query see its row and its
# column *at once* ($H_g + W_g - 1$ keys, the cross in the figure above) and applies the same
# module twice (recurrently) to reach the whole image. CSWin {cite}`dong2022cswin` generalizes
# the cross: half of the heads attend within a horizontal *stripe* of several rows, the other
# half within a vertical stripe, with the stripe width growing with depth.
#
# In `ml.attention`, `AxialAttention` is two `WindowAttention`s whose windows are a whole row,
# $(1, W_g)$, then a whole column, $(H_g, 1)$. So its dense definition is two masked full
# attentions, which we check the same way:

# %%
ml.show(A.AxialAttention)

# %%
torch.manual_seed(1)
m = A.AxialAttention(32, 4, grid=GRID, rel_pos_bias=True).double()
with torch.no_grad():
    m.row.rel_bias.normal_()
    m.col.rel_bias.normal_()
ref = dense_attention(m.row, x, window_dense_mask(m.row, 65))
ref = dense_attention(m.col, ref, window_dense_mask(m.col, 65))
check("axial == row-masked then column-masked full", m(x), ref,
      (x, m.row.qkv.weight, m.col.rel_bias))

# %% [markdown]
# ## 3.3.4 Linear attention, its failure modes, and two fixes
#
# Write softmax attention row by row as a similarity-weighted average,
# $o_i = \sum_j \operatorname{sim}(q_i, k_j)\, v_j \,/\, \sum_j \operatorname{sim}(q_i, k_j)$
# with $\operatorname{sim}(q, k) = \exp(q \cdot k/\sqrt d)$. Katharopoulos et al.
# {cite}`katharopoulos2020linear` replace the similarity by a kernel
# $\operatorname{sim}(q, k) = \phi(q)\cdot\phi(k)$ with a positive feature map,
# $\phi(x) = \operatorname{elu}(x) + 1$. Then matrix products can be re-associated:
#
# $$o_i = \frac{\phi(q_i)^\top \big(\sum_j \phi(k_j) v_j^\top\big)}
#              {\phi(q_i)^\top \big(\sum_j \phi(k_j)\big)},$$
#
# and the bracket, a $d \times d_v$ matrix, is shared by all queries: $O(T d^2)$ time and
# $O(d^2)$ state instead of $O(T^2 d)$. The $(T, T)$ matrix
# $A = \operatorname{diag}(\phi(Q)\phi(K)^\top \mathbf 1)^{-1}\,\phi(Q)\phi(K)^\top$
# still exists *implicitly*; `linear_attention` never forms it, and
# `linear_attention_weights` forms it for analysis. The check: the linear-time result
# equals the explicit normalized product.

# %%
ml.show(A.linear_attention)

# %%
torch.manual_seed(2)
q, k, v = (torch.randn(2, 4, 65, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
phi = lambda t: F.elu(t) + 1                          # noqa: E731
a = phi(q) @ phi(k).transpose(-2, -1)                 # (B, H, T, T), all positive
explicit = (a / (a.sum(-1, keepdim=True) + 1e-6)) @ v      # eps = 1e-6, as the library
check("linear attention == normalized phi(Q)phi(K)^T V", A.linear_attention(phi(q), phi(k), v),
      explicit, (q, k, v))

# %% [markdown]
# Linear attention is exact *for its own kernel*, but that kernel behaves differently from
# softmax's in three ways {cite}`han2024bridging`:
#
# 1. **Not injective.** Division by $\phi(q_i)\cdot\sum_j\phi(k_j)$ cancels any positive
#    scale of $\phi(q_i)$: with ReLU features, $q$ and $2q$ give the *same* attention row,
#    while softmax sharpens as $|q|$ grows. Different queries collapse onto the same output,
#    which Han et al. identify as the main cause of the accuracy gap.
# 2. **Low rank.** $A = D^{-1}\phi(Q)\phi(K)^\top$ has rank at most $d$ (the head width: 16
#    in our ViT), however long the sequence; the softmax matrix is generally full rank.
# 3. **No locality.** Without the exponential, scores cannot concentrate on a few keys: rows
#    are flat, and neighbouring patches get no special weight. Vision relies on local
#    structure (convolutions work for a reason).
#
# Two fixes, each one short option of `LinearAttention`:
#
# - **InLine** (Han et al. {cite}`han2024bridging`) normalizes by *subtraction*:
#   $w_{ij} = \frac1T + \frac{s}{T}\big(q_i\cdot k_j - q_i\cdot\bar k\big)$, $s = 1/\sqrt d$,
#   $\bar k$ the mean key. Rows still sum to 1, the map is injective, and
#   $o_i = \frac sT q_i^\top(K^\top V) + (1 - s\, q_i\cdot\bar k)\,\bar v$ is still linear time.
# - **A local depthwise convolution on $V$**, added to the output:
#   $O = \operatorname{LinAttn}(Q, K, V) + \operatorname{DWConv}_{3\times3}(V)$. It restores
#   locality and, being a full-rank operator on the grid, the rank. SLAB's *simplified linear
#   attention* is exactly this with ReLU features {cite}`guo2024slab`; InLine adds a local
#   term of the same kind (with a kernel predicted from the input); the FLatten Transformer
#   {cite}`han2023flatten` introduced the pattern together with a sharper "focused" feature
#   map, also available here as `feature_map="focused"`.

# %%
ml.show(A.inline_attention)

# %%
ml.show(A.LinearAttention.forward)

# %% tags=["nbval-check-output"]
torch.manual_seed(3)
qr, kr = torch.randn(1, 1, 65, 16, dtype=torch.float64), torch.randn(1, 1, 65, 16, dtype=torch.float64)
rows = []
for name, w1, w2 in [
    ("divide, relu features", A.linear_attention_weights(F.relu(qr), F.relu(kr)),
     A.linear_attention_weights(F.relu(2 * qr), F.relu(kr))),
    ("InLine (subtract)", A.linear_attention_weights(qr, kr, normalize="inline"),
     A.linear_attention_weights(2 * qr, kr, normalize="inline")),
    ("softmax", A.attention_weights(qr, kr), A.attention_weights(2 * qr, kr)),
]:
    rows.append({"normalization": name, "rows of q and 2q differ": bool((w1 - w2).abs().max() > 1e-9),
                 "rank of A (T = 65, d = 16)": int(torch.linalg.matrix_rank(w1[0, 0]))})
ml.bench.Table(rows, title="Injectivity and rank on random q, k")

# %% [markdown]
# The relu-feature rows are identical for $q$ and $2q$; InLine's and softmax's are not. Both
# linear forms have rank at most $16 + 1$ (InLine's constant $\frac1T$ term adds one), the
# softmax matrix has full rank 65. How much of this shows on a *trained* model is measured in
# section 3.3.6, once we have trained ViTs.

# %% [markdown]
# ## 3.3.5 Pooling: the MetaFormer argument
#
# PoolFormer {cite}`yu2022metaformer` keeps the transformer block (norm, token mixer,
# residual, norm, MLP, residual) and makes the mixer as dumb as possible: a $3\times3$
# average pool over the token grid, minus the input (the block adds the input back, so the
# residual branch outputs $\operatorname{AvgPool}(X)$). No parameters, no attention weights,
# a query "sees" its 8 neighbours with equal weight. If such a ViT trains nearly as well as
# one with attention, the block, not the mixer, does most of the work: the paper's claim,
# which it backs with ImageNet results. Our class token gets the mean of all grid tokens.

# %%
ml.show(A.PoolingMixer.forward)

# %%
torch.manual_seed(4)
xp = torch.randn(2, 65, 8, dtype=torch.float64, requires_grad=True)
g = xp[:, 1:].reshape(2, 8, 8, 8)
loops = torch.stack([torch.stack([g[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean((1, 2)) - g[:, i, j]
                                  for j in range(8)], 1) for i in range(8)], 1).reshape(2, 64, 8)
loops = torch.cat([g.mean((1, 2))[:, None] - xp[:, :1], loops], 1)
check("pooling mixer == explicit 3x3 mean of neighbours", A.PoolingMixer(8, grid=GRID)(xp), loops, (xp,))

# %% [markdown]
# ## 3.3.6 The same ViT with each mixer, trained on CIFAR-10
#
# Chapter 1's ViT recipe, unchanged: `ml.baselines.cifar_vit` with only the `attn=` factory
# swapped (same width, depth, heads, MLP, optimizer, schedule, data, seed). At this
# notebook's scale that is a 4-block, 64-wide ViT trained for a few epochs on a subset of
# CIFAR-10 ({glue:}`a33_n_train` training images, {glue:}`a33_n_test` test images), so
# absolute accuracies are low and differences of a point or two are within seed noise; the
# `gpu` scale trains the full benchmark. Each trained model is cached, so running the cell
# again loads it. The mixers:
#
# - **window+shift**: 4x4 windows, shift 2 in every second block, relative position bias;
# - **axial**: row then column attention, each with a relative position bias;
# - **linear (elu+1)**: Katharopoulos et al.'s linear attention;
# - **linear + DWC (SLAB)**: ReLU features plus a 3x3 depthwise convolution of $V$;
# - **pooling**: PoolFormer's $3\times3$ average pool.

# %%
cfg = ml.baselines.config("cifar_vit")
VARIANTS = {
    "window+shift": dict(variant="a33-swin", attn=A.SwinAttention(window_size=4, grid=GRID)),
    "axial": dict(variant="a33-axial",
                  attn=functools.partial(A.AxialAttention, grid=GRID, rel_pos_bias=True)),
    "linear (elu+1)": dict(variant="a33-linear-elu",
                           attn=functools.partial(A.LinearAttention, feature_map="elu")),
    "linear + DWC (SLAB)": dict(variant="a33-linear-slab",
                                attn=functools.partial(A.LinearAttention, feature_map="relu",
                                                       local_kernel=3, grid=GRID)),
    "pooling": dict(variant="a33-pool", attn=functools.partial(A.PoolingMixer, pool_size=3, grid=GRID)),
}
models, records = {}, {}
models["softmax (baseline)"], records["softmax (baseline)"] = ml.baselines.cifar_vit()
for name, kw in VARIANTS.items():
    models[name], records[name] = ml.baselines.cifar_vit(**kw)
cnn, cnn_record = ml.baselines.cifar_cnn()

# %% tags=["remove-cell"]
ml.glue("a33_n_train", cfg["n_train"], ",")
ml.glue("a33_n_test", cfg["n_test"], ",")

# %% [markdown]
# For each model: test accuracy, parameters, FLOPs per image, measured inference throughput
# on a batch of {glue:}`a33_batch` images (median of repeated runs), peak memory of that
# forward pass above the weights, and the training time from the record.
#
# One trap in the FLOPs: `ml.bench.count_flops` (PyTorch's `FlopCounterMode`) counts matrix
# products and convolutions, but on this machine it does not see inside the fused kernel
# that `F.scaled_dot_product_attention` runs on a CPU, so the softmax ViT's recorded FLOPs
# leave out its attention scores. We count that model again with its attention layers
# replaced by `ml.attention.MultiHeadAttention`, which computes the same thing (same weights,
# checked below) with explicit matrix products. Pooling's additions count as 0 either way.

# %%
batch = ml.pick(smoke=64, cpu=256, gpu=256)
xb = torch.randn(batch, 3, 32, 32, device=dev)
reps = ml.pick(smoke=2, cpu=5, gpu=20)


def forward(model):
    with torch.inference_mode():
        return model(xb)


def explicit_softmax_copy(vit):
    """A copy of a ViT whose ml.models.Attention layers are ml.attention.MultiHeadAttention."""
    import copy
    twin = copy.deepcopy(vit)
    for b in getattr(twin, "blocks", []):                    # the CNN has none
        if isinstance(b.attn, ml.models.Attention):
            mha = A.MultiHeadAttention(b.attn.dim, b.attn.heads).to(dev)
            mha.load_state_dict(b.attn.state_dict())   # qkv.*, proj.*: same layout
            b.attn = mha
    return twin.eval()


def flops_per_image(model):
    return ml.bench.count_flops(explicit_softmax_copy(model), torch.zeros(1, 3, 32, 32, device=dev))


vit = models["softmax (baseline)"]
twin = explicit_softmax_copy(vit)
err = (forward(vit) - forward(twin)).abs().max().item()
assert err < 1e-4
print(f"explicit-matmul copy of the softmax ViT: max |logit difference| {err:.1e}")
rec_flops = records["softmax (baseline)"]["metrics"]["flops_per_sample"]
print(f"softmax ViT FLOPs/image: recorded {rec_flops / 1e6:.1f} M, "
      f"counted with explicit attention {flops_per_image(vit) / 1e6:.1f} M")

results = ml.bench.Table(title=f"ViT mixers on CIFAR-10 ({ml.env.scale()} scale; inference batch {batch})",
                         formats={"test acc %": ".1f", "MFLOPs / image": ".1f", "images/s": ",.0f",
                                  "peak memory": ml.bench.fmt_bytes, "train s": ".0f"})
points = []
for name, model in list(models.items()) + [("ResNet-9 (CNN)", cnn)]:
    rec = records.get(name, cnn_record)
    model = model.to(dev).eval()
    ips = ml.bench.throughput(forward, model, items=batch, warmup=1, repeat=reps)
    row = {"mixer": name, "test acc %": 100 * rec["metrics"]["test_accuracy"],
           "params": rec["metrics"]["params"], "MFLOPs / image": flops_per_image(model) / 1e6,
           "images/s": ips, "peak memory": ml.bench.peak_memory(forward, model),
           "train s": rec["train_seconds"]}
    results.add(row)
    points.append(row | {"name": name})
results

# %% tags=["remove-cell"]
ml.glue("a33_batch", batch)

# %%
acc = {r["mixer"]: r["test acc %"] for r in results}
ips = {r["mixer"]: r["images/s"] for r in results}
flops = {r["mixer"]: r["MFLOPs / image"] for r in results}

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
ml.plot.pareto(points, x="MFLOPs / image", y="test acc %", logx=True, ax=axes[0],
               title="accuracy vs compute")
ml.plot.pareto(points, x="images/s", y="test acc %", x_lower_is_better=False, logx=True, ax=axes[1],
               title="accuracy vs measured throughput")
plt.show()

# %% tags=["remove-cell"]
glue_keys = {"softmax (baseline)": "softmax", "window+shift": "window", "axial": "axial",
             "linear (elu+1)": "linear", "linear + DWC (SLAB)": "slab", "pooling": "pool",
             "ResNet-9 (CNN)": "cnn"}
for name, key in glue_keys.items():
    ml.glue(f"a33_acc_{key}", acc[name], ".1f")
    ml.glue(f"a33_ips_{key}", ips[name], ",.0f")
ml.glue("a33_flops_softmax", flops["softmax (baseline)"], ".1f")
ml.glue("a33_flops_linear", flops["linear (elu+1)"], ".1f")
ml.glue("a33_flops_window", flops["window+shift"], ".1f")
ml.glue("a33_flops_pool", flops["pooling"], ".1f")
ml.glue("a33_slab_gain", acc["linear + DWC (SLAB)"] - acc["linear (elu+1)"], "+.1f")
ml.glue("a33_pool_gap", acc["pooling"] - acc["softmax (baseline)"], "+.1f")
ml.glue("a33_train_total_min", sum(r["train_seconds"] for n, r in records.items() if n in VARIANTS) / 60, ".1f")

# %% [markdown]
# At this scale the softmax ViT reaches {glue:}`a33_acc_softmax`%, window+shift
# {glue:}`a33_acc_window`%, axial {glue:}`a33_acc_axial`%, plain linear attention
# {glue:}`a33_acc_linear`%, linear attention with the depthwise convolution
# {glue:}`a33_acc_slab`% ({glue:}`a33_slab_gain` points over plain linear) and pooling
# {glue:}`a33_acc_pool`% ({glue:}`a33_pool_gap` points from softmax, with about half the
# parameters: a pooling block has no $QKV$ and output projections). Chapter 1's CNN,
# {glue:}`a33_acc_cnn`%, is far ahead of every ViT at this data size: with 10k images a
# convolution's locality prior is worth more than any choice of mixer. Read the accuracy
# column with one seed and a short schedule in mind; a gap of a point or two is noise.
#
# The FLOPs column shows how little the mixer weighs at 65 tokens: {glue:}`a33_flops_softmax`
# MFLOPs per image for softmax against {glue:}`a33_flops_linear` for linear and
# {glue:}`a33_flops_window` for window attention, because the projections and the MLP, which
# all of them share, dominate. Axial attention costs more, having two attention layers (and
# two sets of projections) per block; pooling costs {glue:}`a33_flops_pool`, having none.
# Throughput does not follow FLOPs closely: window and axial attention reshape, roll and mask
# many small matrices, which a CPU runs well below its peak, and pooling is fastest of all
# ({glue:}`a33_ips_pool` images/s against {glue:}`a33_ips_softmax` for softmax).
#
# ### Does a trained model show the failure modes?
#
# For every block and head we take the attention matrix on {glue:}`a33_n_probe` test images
# and measure: the **mean row entropy** (nats; a uniform row over 65 tokens has
# $\ln 65 = 4.17$), the **effective rank** $\exp(-\sum_i p_i \ln p_i)$ with
# $p_i = \sigma_i / \sum_j \sigma_j$ the normalized singular values (65 for a matrix with
# flat spectrum, 1 for rank one), and the **mean attention distance** of grid queries
# (the average distance, in patches, from a query to the grid keys it attends to, weighted
# by attention; {glue:}`a33_dist_uniform` for uniform weights on the 8x8 grid). Four matrices: the softmax
# ViT's own; the matrix we would get by feeding the *same* trained $q, k$ through
# $\operatorname{elu}+1$ instead of softmax; and the matrices of the two trained
# linear-attention ViTs (for the DWC model, the global part, without the convolution).

# %%
n_probe = ml.pick(smoke=16, cpu=128, gpu=256)
x_test, y_test = ml.data.cifar10(train=False)
probe = ((x_test[:n_probe].float() / 255 - torch.tensor(ml.data.CIFAR10_MEAN)[:, None, None])
         / torch.tensor(ml.data.CIFAR10_STD)[:, None, None]).to(dev)


def mixer_inputs(model, images):
    """The input of every block's token mixer (after norm1), via forward pre-hooks."""
    seen = []
    hooks = [b.attn.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
             for b in model.blocks]
    with torch.inference_mode():
        model(images)
    for h in hooks:
        h.remove()
    return seen


def softmax_qk(attn, x):
    """q, k of ml.models.Attention (fused qkv, heads contiguous)."""
    B, T, C = x.shape
    q, k, _ = attn.qkv(x).split(C, dim=2)
    return [t.view(B, T, attn.heads, C // attn.heads).transpose(1, 2) for t in (q, k)]


rr, cc = grid_rc(GRID)
dist = ((rr[:, None] - rr[None, :]) ** 2 + (cc[:, None] - cc[None, :]) ** 2).float().sqrt().to(dev)


def stats(P):
    """Row entropy, effective rank, attention distance of (..., T, T) matrices (T = 65)."""
    P = P.double()
    ent = -(P.clamp_min(1e-12) * P.clamp_min(1e-12).log()).sum(-1).mean()
    s = torch.linalg.svdvals(P)
    p = s / s.sum(-1, keepdim=True)
    erank = torch.exp(-(p * p.clamp_min(1e-30).log()).sum(-1)).mean()
    g = P[..., 1:, 1:]
    d = ((g * dist.double()).sum(-1) / g.sum(-1).clamp_min(1e-12)).mean()
    return {"row entropy (nats)": ent.item(), "effective rank": erank.item(),
            "attention distance (patches)": d.item()}


with torch.inference_mode():
    vit = models["softmax (baseline)"]
    qks = [softmax_qk(b.attn, xin) for b, xin in zip(vit.blocks, mixer_inputs(vit, probe))]
    mats = {
        "softmax ViT: softmax(qk)": torch.stack([A.attention_weights(q, k) for q, k in qks]),
        "softmax ViT's q, k through elu+1": torch.stack(
            [A.linear_attention_weights(F.elu(q) + 1, F.elu(k) + 1) for q, k in qks]),
    }
    for name in ("linear (elu+1)", "linear + DWC (SLAB)"):
        mdl = models[name]
        mats[f"trained {name}"] = torch.stack([b.attn.weights(xin) for b, xin in
                                              zip(mdl.blocks, mixer_inputs(mdl, probe))])
    uniform = torch.full((1, 65, 65), 1 / 65, device=dev)
    analysis = ml.bench.Table(title=f"Attention matrices on {n_probe} test images (all blocks and heads)")
    for name, P in mats.items():
        analysis.add({"matrix": name} | stats(P))
    analysis.add({"matrix": "uniform (reference)"} | stats(uniform))
analysis

# %% tags=["remove-cell"]
ml.glue("a33_n_probe", n_probe)

# %%
an = {r["matrix"]: r for r in analysis}

# %% tags=["remove-cell"]
ml.glue("a33_erank_soft", an["softmax ViT: softmax(qk)"]["effective rank"], ".1f")
ml.glue("a33_erank_elu_same", an["softmax ViT's q, k through elu+1"]["effective rank"], ".1f")
ml.glue("a33_erank_lin", an["trained linear (elu+1)"]["effective rank"], ".1f")
ml.glue("a33_erank_slab", an["trained linear + DWC (SLAB)"]["effective rank"], ".1f")
ml.glue("a33_ent_soft", an["softmax ViT: softmax(qk)"]["row entropy (nats)"], ".2f")
ml.glue("a33_ent_elu_same", an["softmax ViT's q, k through elu+1"]["row entropy (nats)"], ".2f")
ml.glue("a33_ent_lin", an["trained linear (elu+1)"]["row entropy (nats)"], ".2f")
ml.glue("a33_ent_slab", an["trained linear + DWC (SLAB)"]["row entropy (nats)"], ".2f")
ml.glue("a33_dist_soft", an["softmax ViT: softmax(qk)"]["attention distance (patches)"], ".2f")
ml.glue("a33_dist_lin", an["trained linear (elu+1)"]["attention distance (patches)"], ".2f")
ml.glue("a33_dist_uniform", an["uniform (reference)"]["attention distance (patches)"], ".2f")

# %% [markdown]
# The softmax ViT's rows have an entropy of {glue:}`a33_ent_soft` nats (uniform: 4.17) and
# an effective rank of {glue:}`a33_erank_soft`. Pushing the *same* trained queries and keys
# through $\operatorname{elu}+1$ instead of $\exp$ gives rows of {glue:}`a33_ent_elu_same`
# nats, almost uniform, and the effective rank falls to {glue:}`a33_erank_elu_same`: the
# kernel cannot express the peaked rows the softmax model learned. The linear ViT, trained
# with that kernel, ends up with {glue:}`a33_ent_lin` nats and effective rank
# {glue:}`a33_erank_lin`: flatter and of lower rank than softmax, the first two failure
# modes, measured. The model with the depthwise convolution has sharper, higher-rank global
# rows ({glue:}`a33_ent_slab` nats, effective rank {glue:}`a33_erank_slab`), closer to
# softmax's, and the best accuracy of the five ViTs.
#
# Locality is the one failure mode this tiny model does not show: the mean attention
# distance is {glue:}`a33_dist_soft` patches for softmax, {glue:}`a33_dist_lin` for linear
# and {glue:}`a33_dist_uniform` for uniform weights. After five epochs on 10k images even the
# softmax ViT has not learned local attention (larger ViTs trained longer do, in their early
# blocks {cite}`dosovitskiy2021vit`); in this regime the locality comes from the convolution,
# which is exactly what the DWC fix adds.
#
# ## 3.3.7 Where do linear and window attention start to pay?
#
# At 65 tokens none of this matters for speed. To see the asymptotics we time one mixer
# layer (projections included, forward, batch 1, width {glue:}`a33_bench_dim`,
# {glue:}`a33_bench_heads` heads of width {glue:}`a33_bench_d`) on square grids of growing
# size, and measure its peak memory. Softmax attention appears twice: PyTorch's fused
# `F.scaled_dot_product_attention` (`ml.models.Attention`, which on a CPU runs a
# FlashAttention-style kernel and never stores the $T\times T$ matrix) and
# `ml.attention.MultiHeadAttention`, which materializes it (up to
# {glue:}`a33_mat_max` tokens, to keep memory in bounds).

# %%
bench_dim, bench_heads = ml.pick(smoke=64, cpu=128, gpu=256), 2
sides = ml.pick(smoke=[8, 16, 24], cpu=[8, 16, 24, 32, 48, 64, 96], gpu=[8, 16, 32, 48, 64, 96, 128])
mat_max = ml.pick(smoke=576, cpu=4096, gpu=16384)
torch.manual_seed(5)
layers = {
    "softmax (fused SDPA)": ml.models.Attention(bench_dim, bench_heads),
    "softmax (materialized)": A.MultiHeadAttention(bench_dim, bench_heads),
    "window 8x8": A.WindowAttention(bench_dim, bench_heads, window_size=8),
    "axial": A.AxialAttention(bench_dim, bench_heads),
    "linear (elu+1)": A.LinearAttention(bench_dim, bench_heads),
    "linear + DWC": A.LinearAttention(bench_dim, bench_heads, feature_map="relu", local_kernel=3),
}
layers = {n: l.to(dev).eval() for n, l in layers.items()}
sweep = []
for side in sides:
    T = side * side
    xs = torch.randn(1, T, bench_dim, device=dev)
    for name, layer in layers.items():
        if name == "softmax (materialized)" and T > mat_max:
            continue
        run = functools.partial(layer, xs)
        with torch.inference_mode():
            t = ml.bench.time_fn(run, warmup=1, repeat=ml.pick(smoke=2, cpu=7, gpu=10))
            mem = ml.bench.peak_memory(run)
        sweep.append({"layer": name, "T": T, "ms": 1e3 * t.median, "ms q25": 1e3 * t.q25,
                      "ms q75": 1e3 * t.q75, "peak MB": mem / 2**20})

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
with ml.plot.house_style():
    for i, name in enumerate(layers):
        rows_ = [r for r in sweep if r["layer"] == name]
        for ax, key in zip(axes, ("ms", "peak MB")):
            ax.loglog([r["T"] for r in rows_], [r[key] for r in rows_], marker="o",
                      color=ml.plot.PALETTE[i], label=name)
    axes[0].set(xlabel="tokens T", ylabel="time per layer (ms)", title="time (forward, batch 1)")
    axes[1].set(xlabel="tokens T", ylabel="peak memory (MB)", title="memory above the input")
    axes[0].legend(fontsize=8)
plt.show()

# %% tags=["remove-cell"]
ml.glue("a33_bench_dim", bench_dim)
ml.glue("a33_bench_heads", bench_heads)
ml.glue("a33_bench_d", bench_dim // bench_heads)
ml.glue("a33_mat_max", mat_max, ",")


# %%
def series(name, key="ms"):
    return {r["T"]: r[key] for r in sweep if r["layer"] == name}


def crossover(fast, slow, key="ms"):
    """The first measured T from which `fast` stays below `slow`, as text. For times,
    "below" means the quartiles apart (fast's 75th percentile under slow's 25th), so a
    crossover is never read off noise; peak memory is deterministic and compared as is."""
    hi = series(fast, key + " q75" if key == "ms" else key)
    lo = series(slow, key + " q25" if key == "ms" else key)
    Ts = sorted(set(hi) & set(lo))
    for i, T in enumerate(Ts):
        if all(hi[t] < lo[t] for t in Ts[i:]):
            return f"T = {T:,}" if i else f"T = {T:,} (already at the smallest size measured)"
    return f"beyond T = {Ts[-1]:,} (not within the measured sizes)"


def slope(name, key="ms"):
    """Exponent p of time ~ T^p: least-squares slope in log-log over the three largest sizes
    (two points alone made p swing by 0.5 between two runs on the same idle machine)."""
    pts = sorted(series(name, key).items())[-3:]
    xs, ys = [math.log(t) for t, _ in pts], [math.log(y) for _, y in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


cross = {"linear": crossover("linear (elu+1)", "softmax (fused SDPA)"),
         "window": crossover("window 8x8", "softmax (fused SDPA)"),
         "linear_mem": crossover("linear (elu+1)", "softmax (materialized)", "peak MB")}
slopes = {key: slope(name) for name, key in [("softmax (fused SDPA)", "soft"), ("window 8x8", "window"),
                                             ("axial", "axial"), ("linear (elu+1)", "linear")]}
T_max = max(series("axial"))
speedup_at_T_max = {key: series("softmax (fused SDPA)")[T_max] / series(name)[T_max]
                    for name, key in [("linear (elu+1)", "linear"), ("window 8x8", "window")]}
T_mat = max(series("softmax (materialized)"))
mem_ratio_axial = series("softmax (materialized)", "peak MB")[T_mat] / series("axial", "peak MB")[T_mat]
# Verdicts from the exponents: a scaling claim reproduces if the measured p is within 0.25 of
# the theory. Where it is not, say why: below sqrt(T) ~ C the 8TC^2 projections dominate.
# Axial is judged on its own below: its claim (1.5) and the projections' exponent (1) are
# only 0.5 apart, so a 0.25 tolerance cannot tell them apart.
theory = {"softmax (fused SDPA)": ("softmax", 2.0), "window 8x8": ("window", 1.0),
          "linear (elu+1)": ("linear", 1.0)}
held = [label for n, (label, p) in theory.items() if abs(slope(n) - p) <= 0.25]
missed = [label for n, (label, p) in theory.items() if abs(slope(n) - p) > 0.25]
p_axial = slope("axial")
axial_verdict = ("reproduces (p at least 1.4)" if p_axial >= 1.4 else
                 "does not reproduce at these sizes (p at most 1.1, the projections' exponent)" if p_axial <= 1.1 else
                 f"is only partly reproduced: p = {p_axial:.2f} lies between the projections' 1 and the claimed 1.5")
ml.bench.Table([r for r in sweep if r["T"] in (sides[0] ** 2, sides[-2] ** 2, sides[-1] ** 2)],
               title="Selected sizes", formats={"ms": ".2f", "peak MB": ".1f"})

# %% tags=["remove-cell"]
for key, text in cross.items():
    ml.glue(f"a33_cross_{key}", text)
for key, exponent in slopes.items():
    ml.glue(f"a33_slope_{key}", exponent, ".2f")
ml.glue("a33_T_max", T_max, ",")
for key, ratio in speedup_at_T_max.items():
    ml.glue(f"a33_speedup_{key}", ratio, ".1f")
ml.glue("a33_T_mat", T_mat, ",")
ml.glue("a33_mem_ratio_axial", mem_ratio_axial, ".1f")
ml.glue("a33_scaling_held", ", ".join(held) if held else "none")
ml.glue("a33_scaling_missed", ", ".join(missed) if missed else "none")
ml.glue("a33_side_max", sides[-1])
ml.glue("a33_axial_verdict", axial_verdict)

# %% [markdown]
# Measured on this machine: linear attention is faster than fused softmax attention
# (interquartile ranges apart) from {glue:}`a33_cross_linear` on, window attention from
# {glue:}`a33_cross_window`; at
# $T =$ {glue:}`a33_T_max` they are {glue:}`a33_speedup_linear`x and
# {glue:}`a33_speedup_window`x faster. Over the three largest sizes (a least-squares fit
# in log-log), time grows as $T^{p}$ with $p =$ {glue:}`a33_slope_soft` for softmax,
# {glue:}`a33_slope_window` for window, {glue:}`a33_slope_axial` for axial and {glue:}`a33_slope_linear` for linear
# attention (theory: 2, 1, 1.5, 1, once the $O(T^2)$ term dominates the $8TC^2$ of the
# projections). In memory the materialized softmax matrix is the outlier: linear attention
# needs less from {glue:}`a33_cross_linear_mem` on, and at $T =$ {glue:}`a33_T_mat` axial
# attention uses {glue:}`a33_mem_ratio_axial`x less peak memory than the materialized softmax
# layer. The fused kernel has removed most of that memory argument for softmax attention
# (chapter 3.1 builds it), which leaves time as linear attention's main case, and only at
# lengths far beyond a $32 \times 32$ CIFAR image.

# %% [markdown]
# ## 3.3.8 Attention maps
#
# Which patches does the trained softmax ViT's class token read? For each head of the last
# block we plot the class token's row of the attention matrix over the $8\times8$ patches,
# for a few test images. `ml.plot.attention_maps` draws them (each panel on its own colour
# scale).

# %%
ml.show(ml.plot.attention_maps)

# %%
n_show = 4
with torch.inference_mode():
    xin = mixer_inputs(vit, probe[:n_show])
    q_, k_ = softmax_qk(vit.blocks[-1].attn, xin[-1])
    P_last = A.attention_weights(q_, k_)                        # (n, heads, 65, 65)
names = ml.data.CIFAR10_CLASSES
ml.plot.attention_maps(P_last[:, :, 0, 1:], x_test[:n_show], grid=GRID,
                       row_labels=[names[int(y)] for y in y_test[:n_show]],
                       col_labels=[f"head {h}" for h in range(P_last.shape[1])],
                       title="Softmax ViT, last block: class-token attention")
plt.show()

# %% [markdown]
# A grid token's attention shows the mixers' different notions of "neighbourhood" best. For
# one image and the query patch $(3, 3)$ we plot, per head, its row of the attention matrix
# in the first block of the softmax ViT and of the linear ViT, and in the first two blocks of
# the window ViT: block 1 uses the regular windows (shift 0: the query sits in the top-left
# window), block 2 the shifted ones (shift 2: rows and columns 2 to 5). For the window model the dense rows
# come from `window_dense_mask` of section 3.3.2 fed to `attention_weights`.

# %%
qi = 1 + 3 * 8 + 3                                                # token index of patch (3, 3)
img = probe[:1]
rows_maps, labels = [], []
with torch.inference_mode():
    q_, k_ = softmax_qk(vit.blocks[0].attn, mixer_inputs(vit, img)[0])
    rows_maps.append(A.attention_weights(q_, k_)[0, :, qi, 1:]); labels.append("softmax")
    lin = models["linear (elu+1)"]
    rows_maps.append(lin.blocks[0].attn.weights(mixer_inputs(lin, img)[0])[0, :, qi, 1:])
    labels.append("linear")
    win = models["window+shift"]
    for bi, xin in enumerate(mixer_inputs(win, img)[:2]):
        m = win.blocks[bi].attn
        B_, T_, C_ = xin.shape
        q_, k_, _ = m.qkv(xin).view(B_, T_, 3, m.heads, C_ // m.heads).permute(2, 0, 3, 1, 4)
        P = A.attention_weights(q_, k_, mask=window_dense_mask(m, T_).to(dev)[None])
        rows_maps.append(P[0, :, qi, 1:]); labels.append(f"window, shift {m.shift[0]}")
fig = ml.plot.attention_maps(torch.stack(rows_maps), grid=GRID, row_labels=labels,
                             col_labels=[f"head {h}" for h in range(len(rows_maps[0]))],
                             title="Attention of query patch (3, 3)")
for ax in fig.axes:
    ax.plot(3, 3, marker="*", color="#56B4E9", markersize=8)
plt.show()

# %% [markdown]
# ## 3.3.9 The wider zoo
#
# The mixers of recent vision backbones are combinations of the ideas above; what changes is
# the set of keys a query sees:
#
# - **BiFormer** {cite}`zhu2023biformer` (bi-level routing attention): the image is split into
#   regions; a region-level affinity picks, for each query region, its top-$k$ most relevant
#   regions, and a query attends to all tokens of those regions: content-dependent sparse
#   windows.
# - **HiLo** {cite}`pan2022hilo` (LITv2): the heads are split; "Hi-Fi" heads attend inside
#   small local windows (high frequencies), "Lo-Fi" heads attend to average-pooled keys and
#   values of the whole image (low frequencies).
# - **DaViT** {cite}`ding2022davit` alternates spatial window attention with *channel*
#   attention, where the tokens are channels: each channel group attends to the other
#   channels, each of which summarizes the whole image, so a query sees global context.
# - **CrossFormer** {cite}`wang2022crossformer` alternates short-distance attention (adjacent
#   tokens in a window) and long-distance attention (tokens sampled at a fixed interval across
#   the image, a dilated window), on embeddings that mix several patch scales.
# - **TransNeXt** {cite}`shi2024transnext` (aggregated attention): each query attends to its
#   sliding-window neighbourhood at full resolution *and* to pooled tokens of the whole
#   image, a foveal view, with learnable query and key tokens added.
# - **InceptionNeXt** {cite}`yu2024inceptionnext` has no attention: a MetaFormer whose mixer
#   splits channels into parallel depthwise branches, a small square kernel, a $1\times k$ and
#   a $k\times1$ band kernel and an identity, so a token sees a square neighbourhood plus a
#   row band and a column band (a convolutional cousin of criss-cross attention).

# %% [markdown]
# ## 3.3.10 Claimed vs measured
#
# | paper | claim | our measurement | conditions |
# | --- | --- | --- | --- |
# | Swin {cite}`liu2021swin` | window attention has linear complexity in image size | time $\propto T^{p}$, $p =$ {glue:}`a33_slope_window` (window) vs {glue:}`a33_slope_soft` (softmax); faster from {glue:}`a33_cross_window` | one layer, forward, batch 1, CPU |
# | Swin {cite}`liu2021swin` | shifted windows keep ViT accuracy at lower cost | {glue:}`a33_acc_window`% vs {glue:}`a33_acc_softmax`% (softmax) | 4-block ViT, CIFAR-10 subset, short schedule |
# | Axial / CCNet {cite}`ho2019axial,huang2019ccnet` | $O(T\sqrt T)$ cost; CCNet: 11x less GPU memory than a non-local block | $p =$ {glue:}`a33_slope_axial`; {glue:}`a33_mem_ratio_axial`x less peak memory than materialized softmax at $T =$ {glue:}`a33_T_mat`; accuracy {glue:}`a33_acc_axial`% | CPU; the fused softmax kernel needs little memory too |
# | Katharopoulos et al. {cite}`katharopoulos2020linear` | linear time and memory in $T$, much faster on long sequences | $p =$ {glue:}`a33_slope_linear`; faster than fused softmax from {glue:}`a33_cross_linear`, {glue:}`a33_speedup_linear`x at $T =$ {glue:}`a33_T_max`; accuracy {glue:}`a33_acc_linear`% | head width {glue:}`a33_bench_d`; CPU |
# | Bridging the Divide {cite}`han2024bridging` | non-injectivity and missing locality explain linear attention's gap; fixing them matches softmax | relu rows of $q$ and $2q$ identical, InLine's not; trained linear rows flatter ({glue:}`a33_ent_lin` vs {glue:}`a33_ent_soft` nats) and of lower effective rank ({glue:}`a33_erank_lin` vs {glue:}`a33_erank_soft`); a local conv lifts accuracy by {glue:}`a33_slab_gain` points | random and trained $q, k$; InLine itself not trained here |
# | SLAB {cite}`guo2024slab` | ReLU linear attention + depthwise conv is accurate and fast | {glue:}`a33_acc_slab`% ({glue:}`a33_slab_gain` over plain linear; softmax {glue:}`a33_acc_softmax`%) | same recipe, one seed |
# | PoolFormer {cite}`yu2022metaformer` | a parameter-free pooling mixer is competitive (ImageNet) | {glue:}`a33_acc_pool`% ({glue:}`a33_pool_gap` points from softmax) | same recipe, one seed |
#
# The scaling claims are about arithmetic, so a CPU can test them once $T$ is large enough.
# Measured, with "reproduces" meaning an exponent within 0.25 of the theory: of softmax,
# window and linear attention, {glue:}`a33_scaling_held` reproduce and
# {glue:}`a33_scaling_missed` do not at the sizes measured. Axial attention's
# $T\sqrt T$ claim {glue:}`a33_axial_verdict`: its attention costs about $8T\sqrt T\,C$ FLOPs
# against $8TC^2$ for the projections, so the $T\sqrt T$ term only dominates once
# $\sqrt T \gg C$, and our largest grid has $\sqrt T =$ {glue:}`a33_side_max` against a width
# $C =$ {glue:}`a33_bench_dim`: the measured exponent is mostly that of the projections.
# Treat these exponents as a rough check: a single-layer sweep at batch 1 on a CPU is
# fragile, and in four runs of this notebook on the same idle machine they moved by several
# tenths from run to run, enough to flip one verdict or another (a stable estimate needs
# repeated sweeps and the spread of the fitted slope over them). The
# accuracy claims were made on ImageNet with
# hundreds of epochs; ours come from {glue:}`a33_n_train` images, a few epochs and one seed,
# where a point or two is noise, so they say which mixers are *usable* in a small ViT, not
# how the ImageNet rankings come out. All stored numbers come from the machine in the banner
# at the top (a CPU); the `gpu` scale reruns everything on the full data.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: Swin-T's window savings (explain, easy)
# Swin-T's first stage has a $56\times56$ grid, $C = 96$, windows of $7\times7$. Using the
# formulas of section 3.3.1, how many times cheaper are the attention scores and weighted sum
# with windows than with global attention? And the whole layer including the projections?

# %% tags=["solution", "hide-cell"]
# Solution 1
T, C, N = 56 * 56, 96, 7 * 7
scores_full, scores_window = 4 * T * T * C, 4 * T * N * C        # section 3.3.1's table
projections = 8 * T * C * C                                      # QKV and output, the same for both
print(f"scores and weighted sum: {scores_full / scores_window:.0f}x cheaper with windows")
print(f"whole layer with projections: {(projections + scores_full) / (projections + scores_window):.1f}x cheaper")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The scores and weighted sum shrink by $4T^2C / 4TNC = T/N = 3136/49 = 64$. With the
# projections the ratio is $(8TC^2 + 4T^2C)/(8TC^2 + 4TNC) = (2C + T)/(2C + N)$, the second
# line of the printout: much less than 64, because once the windows are cheap the $8TC^2$ of
# the projections is the larger part ($2C = 192$ against $N = 49$). That is the price of
# windows: after them, attention is no longer where the FLOPs are.
# :::

# %% [markdown]
# ### Exercise 2: what do the shifts carry? (measure, medium)
# Take the trained window+shift ViT of section 3.3.6 and set every block's shift to 0
# (`block.attn.shift = (0, 0)`). Without retraining, how much test accuracy is lost on the
# test images the notebook's accuracies come from, and is the loss larger than the noise?
# What does that say about how much information crosses window borders? Restore the shifts
# afterwards.

# %% tags=["solution", "hide-cell"]
# Solution 2
x_eval, y_eval = ml.data.cifar10(train=False)
if cfg["n_test"] < len(y_eval):              # the class-balanced subset ml.baselines scores on
    x_eval, y_eval = ml.data.subset(x_eval, y_eval, cfg["n_test"], seed=0)
test_loader = ml.data.DeviceLoader(x_eval, y_eval, 1000, shuffle=False, device=dev,
                                   mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD)


def correct(model):
    """Per-image correctness on the test images (fp32, eval mode), on the CPU."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model(xb_).argmax(-1) == yb_ for xb_, yb_ in
                          itertools.islice(test_loader, ml.trim(len(test_loader)))]).cpu()


win = models["window+shift"]
trained_shifts = [b.attn.shift for b in win.blocks]
hits_shift = correct(win)
for b in win.blocks:
    b.attn.shift = (0, 0)
hits_no_shift = correct(win)
logits_no_shift = forward(win)
win.blocks[-1].attn.shift = trained_shifts[-1]   # the last block alone shifted again
last_only_gap = (forward(win) - logits_no_shift).abs().max().item()
for b, s in zip(win.blocks, trained_shifts):     # restore the trained model
    b.attn.shift = s
n_eval = len(hits_shift)
change, se, p_shift = ml.bench.paired_accuracy(hits_shift, hits_no_shift)   # points; negative = a loss
word = ml.bench.quality_verdict(change, se, better="higher", worse="lower")
print(f"window+shift ViT on {n_eval:,} test images (fp32): shifts as trained "
      f"{100 * hits_shift.float().mean():.1f}%, every shift 0 {100 * hits_no_shift.float().mean():.1f}%")
print(f"change {change:+.1f} ± {se:.1f} points (paired), McNemar p = {p_shift:.3g}: "
      f"without shifts the accuracy is {word}")
print(f"shifted blocks: {sum(s != (0, 0) for s in trained_shifts)} of {len(win.blocks)}; "
      f"the last block's shift leaves the logits unchanged (max |Δ| < 1e-6): {last_only_gap < 1e-6}")
print("shifts restored:", [b.attn.shift for b in win.blocks] == trained_shifts)

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The printout gives both accuracies on the same test images, the change with its paired
# standard error, McNemar's test and the verdict. With every shift 0 the $8\times8$ grid is
# cut into four fixed $4\times4$ windows in every block: a grid token never mixes with a
# token of another window, and the only path across window borders is the class token, which
# attends globally in every block. The last block's shift cannot matter at all (second
# printed line): the head reads only the class token, whose attention in that block uses keys
# and values computed before any window is formed, so only the shifted blocks before the last
# one are really switched off (none in a 2-block model). A verdict "lower" says that the
# trained model relies on them to pass information across window borders; a change within
# the noise says that the class token's global view carries most of what the classifier
# reads. Either way the layers were trained with the shifts, so the change measures what the
# trained model depends on, not what a model trained without shifts could reach.
# :::

# %% [markdown]
# ### Exercise 3: ReLU features cannot sharpen (implement, medium)
# Check, with an `assert`, that for positive scales $c$,
# `linear_attention_weights(F.relu(c * q), F.relu(k))` equals the same call with `q` (up to
# `eps`), and measure whether it does for $\phi = \operatorname{elu} + 1$. Is
# $\operatorname{elu} + 1$ then injective? Why is it still a poor substitute for softmax?

# %% tags=["solution", "hide-cell"]
# Solution 3
g3 = torch.Generator().manual_seed(3)
q3, k3 = (torch.randn(1, 1, 65, 16, dtype=torch.float64, generator=g3) for _ in range(2))
elu1 = lambda t: F.elu(t) + 1                                     # noqa: E731


def rows_at_scale(phi, c):
    return A.linear_attention_weights(phi(c * q3), phi(k3))


for c in (0.5, 2.0, 10.0):
    relu_gap = (rows_at_scale(F.relu, c) - rows_at_scale(F.relu, 1.0)).abs().max().item()
    elu_gap = (rows_at_scale(elu1, c) - rows_at_scale(elu1, 1.0)).abs().max().item()
    assert relu_gap < 1e-6
    print(f"c = {c:4}: relu rows equal to those of c = 1 (max error < 1e-6): {relu_gap < 1e-6}; "
          f"elu+1 rows differ by more than 1e-3: {elu_gap > 1e-3}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# ReLU is positively homogeneous, $\operatorname{relu}(cq) = c\,\operatorname{relu}(q)$ for
# $c > 0$, so numerator and denominator of
# $w_{ij} = \phi(q_i)\cdot\phi(k_j) / (\phi(q_i)\cdot\sum_l \phi(k_l) + \epsilon)$ both scale by
# $c$ and the row is unchanged up to the $\epsilon$ term: the assert holds at every scale.
# $\operatorname{elu} + 1$ is not homogeneous, so its rows do change with $c$ (the printout),
# and in this narrow sense it is injective. It is still a poor substitute:
# $\operatorname{elu}(x) + 1$ grows linearly for $x > 0$ where $\exp$ grows exponentially,
# so a larger $|q|$ does not make a row concentrate on the best-matching key the way $\exp$
# does (section 3.3.6 measured how flat the trained rows are), and the matrix keeps rank at
# most $d$. Injectivity is necessary, not sufficient.
# :::

# %% [markdown]
# ### Exercise 4: the window size (measure, medium)
# Time one window-attention layer of section 3.3.7's width and heads with windows of
# $4\times4$, $8\times8$ and $16\times16$ on a few grid sizes, next to the fused softmax
# layer. How does the time move with the window, and where does each window size beat fused
# softmax attention? Explain with the cost formula $4TNC$.

# %% tags=["solution", "hide-cell"]
# Solution 4
window_sides = (4, 8, 16)
grid_sides = ml.pick(smoke=[16, 32], cpu=[16, 32, 64], gpu=[32, 64, 128])    # multiples of 16
torch.manual_seed(6)
mixers = {"fused softmax": ml.models.Attention(bench_dim, bench_heads)} | {
    f"window {w}x{w}": A.WindowAttention(bench_dim, bench_heads, window_size=w) for w in window_sides}
mixers = {name: layer.to(dev).eval() for name, layer in mixers.items()}
rows4 = []
for side in ml.trim(grid_sides):
    x4 = torch.randn(1, side * side, bench_dim, device=dev)
    with torch.inference_mode():
        rows4.append({"tokens T": side * side} | {
            name: ml.bench.time_fn(layer, x4, warmup=1, repeat=ml.pick(smoke=2, cpu=7, gpu=10))
            for name, layer in mixers.items()})
for w in window_sides:
    name = f"window {w}x{w}"
    beats = [f"{r['tokens T']:,}" for r in rows4 if r[name].q75 < r["fused softmax"].q25]   # IQRs apart
    print(f"{name}: N = {w * w} keys per query, attention / projection FLOPs = N / 2C = "
          f"{w * w / (2 * bench_dim):.2f}; faster than fused softmax at T = {', '.join(beats) or 'none measured'}")
ml.bench.Table(rows4, title=f"One mixer layer, forward, batch 1, width {bench_dim}: time per call "
               f"(median ± half IQR)")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# The scores and weighted sum cost $4TNC$ with $N = w^2$: at a given $T$, a $4\times4$ window
# does 4x less of that work than $8\times8$, and $16\times16$ 4x more. The layer also pays
# the projections, $8TC^2$, whatever the window, so the whole layer changes by much less than
# 4x when the printed ratio $N/2C$ is small: only the larger windows make attention a
# sizeable part of the layer. Every window size grows linearly in $T$ while fused softmax
# grows as $T^2$ ($4T^2C$): a window layer does less attention work than full attention as
# soon as $T > N$, so by the FLOP count the crossover moves to larger $T$ as the window
# grows; the printed lines say where each size beats fused softmax on this machine, with
# the spreads apart. Where the measured times depart from the FLOP count, look at kernel
# efficiency: small windows mean many tiny matrix products plus the roll, partition and
# mask bookkeeping, which a CPU runs far below its peak, while the fused softmax kernel
# runs a few large ones.
# :::

# %% [markdown]
# ### Exercise 5: window attention by reshaping (implement, medium)
# Write `window_attention(q, k, v, grid, w)` for queries, keys and values $(B, h, T, d)$ on an
# $H \times W$ grid (raster order, no class token): cut the grid into $w \times w$ windows
# with `reshape` and `transpose` only, run `F.scaled_dot_product_attention` on the windows as
# a batch, and put the tokens back in raster order. Check it against full attention with the
# mask `swin_keep(GRID, (w, w), (0, 0))` of section 3.3.1, for $w = 2$ and $w = 4$.

# %% tags=["solution", "hide-cell"]
# Solution 5
def window_attention(q, k, v, grid, w):
    B, h, T, d = q.shape
    H, W = grid

    def to_windows(t):                                     # (B, h, T, d) -> (B, h, nW, w*w, d)
        t = t.reshape(B, h, H // w, w, W // w, w, d).transpose(3, 4)   # (B, h, H/w, W/w, w, w, d)
        return t.reshape(B, h, (H // w) * (W // w), w * w, d)

    y = F.scaled_dot_product_attention(to_windows(q), to_windows(k), to_windows(v))
    return y.reshape(B, h, H // w, W // w, w, w, d).transpose(3, 4).reshape(B, h, T, d)


g5 = torch.Generator().manual_seed(5)
q5, k5, v5 = (torch.randn(2, 4, GRID[0] * GRID[1], 16, dtype=torch.float64, generator=g5) for _ in range(3))
for w in (2, 4):
    dense = F.scaled_dot_product_attention(q5, k5, v5, attn_mask=swin_keep(GRID, (w, w), (0, 0)))
    err = (window_attention(q5, k5, v5, GRID, w) - dense).abs().max().item()
    assert err < 1e-12
    print(f"window {w}x{w} by reshaping == full attention with swin_keep's mask: max error < 1e-12: {err < 1e-12}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# Token $(r, c)$ sits at index $rW + c$, and with $r = w R + i$, $c = w C' + j$ the index
# reads $((R\,w + i)\,(W/w) + C')\,w + j$: reshaping $T$ into $(H/w, w, W/w, w)$ gives the axes
# $(R, i, C', j)$, and swapping $i$ and $C'$ puts the $w \times w$ tokens of window
# $(R, C')$ next to each other. Attention then runs on $(H/w)(W/w)$ short sequences of
# $N = w^2$ tokens in one batched call, $O(TN)$ work instead of $O(T^2)$; the inverse
# reshape restores raster order. The check holds to float64 rounding: the reshaped batch
# *is* full attention with the block-diagonal mask. `WindowAttention` does the same with
# `window_partition` on a $(B, H, W, C)$ view, plus the roll, the cut-piece mask and the
# relative bias for shifted windows.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Window, shifted-window and axial attention are full attention with a sparse mask; they
#   are checked against that dense definition, and they are fast only because the masked
#   entries are never computed.
# - Linear attention re-associates $(\phi(Q)\phi(K)^\top)V$ as $\phi(Q)(\phi(K)^\top V)$:
#   $O(Td^2)$ instead of $O(T^2d)$. It pays only when $T \gg d$ (here from
#   {glue:}`a33_cross_linear`), and its implicit attention matrix is low-rank, flat and
#   non-local; a depthwise convolution (SLAB, InLine) puts locality back.
# - In a small ViT on 65 tokens the mixer changes accuracy by several points and FLOPs
#   little; a parameter-free pooling mixer still trains to a usable model
#   ({glue:}`a33_acc_pool`% against {glue:}`a33_acc_softmax`%), MetaFormer's point, though at
#   this scale it is not on par.
# - Measure the crossover on your own hardware and lengths: fused softmax kernels moved it,
#   and kernel efficiency (many small windows, reshapes) decides throughput at small $T$.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
