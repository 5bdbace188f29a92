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
# # 3.1 Scaled dot-product attention, and attention in O(T) memory
#
# Attention is how a transformer mixes information between tokens: every token asks a
# question (a query), every token offers an answer (a key and a value), and each output is
# an average of the values, weighted by how well the query matches each key
# {cite}`vaswani2017attention`. It is also the one part of a transformer whose cost grows
# with the *square* of the sequence length $T$: the $T \times T$ matrix of query-key
# scores. Written the textbook way, that matrix is stored in memory, and it, not the
# arithmetic, is what stops long contexts from fitting on a GPU. The fix changed the field:
# the softmax can be computed in one pass over the keys with a running maximum and a
# running sum {cite}`milakov2018online`, so attention can walk over the keys block by block
# and never hold the whole matrix {cite}`rabe2021selfattention`. FlashAttention
# {cite}`dao2022flashattention,dao2024flashattention2` turned this into a fused GPU kernel
# that is both exact and faster, and every modern framework ships it. This notebook builds
# both versions from scratch, checks them against PyTorch, and measures what the
# $T \times T$ matrix costs and what removing it saves.
#
# **Learning objectives.** After this notebook you can
# 1. write scaled dot-product attention with causal and padding masks and several heads,
#    and check it forward and backward against `F.scaled_dot_product_attention`;
# 2. explain the $1/\sqrt{d}$ scale from the variance of $q \cdot k$ and the saturation of
#    the softmax;
# 3. count attention's FLOPs ($4T^2d$ per head) and the memory of its score matrix, and
#    confirm both by measurement;
# 4. derive the online softmax, and from it the tiled forward and backward passes of
#    FlashAttention;
# 5. measure memory that grows as $T^2$ against memory that grows as $T$, and say why the
#    speed of FlashAttention needs a fused GPU kernel that plain PyTorch cannot express.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from IPython.display import display

import minilib as ml

ml.describe()
dev = ml.device()
MiB = 2**20

# %% [markdown]
# ## 3.1.1 Scaled dot-product attention
#
# Stack the queries of $T_q$ tokens as the rows of $Q \in \mathbb{R}^{T_q \times d}$, the keys
# and values of $T_k$ tokens as $K \in \mathbb{R}^{T_k \times d}$ and
# $V \in \mathbb{R}^{T_k \times d_v}$. Scaled dot-product attention is
#
# $$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\Big(\frac{Q K^\top}{\sqrt d} + M\Big)\, V,$$
#
# with the softmax taken along each row: $S = QK^\top/\sqrt d + M$ holds one score per
# (query, key) pair, $P_{ij} = e^{S_{ij}} / \sum_{j'} e^{S_{ij'}}$ turns each row into
# weights that sum to 1, and output row $i$ is $\sum_j P_{ij} v_j$, a weighted average of
# the values. The mask $M$ is $0$ where query $i$ may look at key $j$ and $-\infty$ where it
# may not, so that $e^{-\infty} = 0$ removes the key. PyTorch (and `ml.attention`) use
# tensors of shape `(B, H, T, D)`: batch, heads, tokens, head dimension. The whole
# definition is four lines:

# %%
def attention(q, k, v, mask=None):
    """softmax(Q K^T / sqrt(d) + M) V, the textbook way. mask: boolean, True = may look."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])     # (B, H, Tq, Tk) scores
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))              # hidden keys: e^-inf = 0
    p = torch.softmax(s, dim=-1)                              # each row sums to 1
    return p @ v                                              # (B, H, Tq, Dv)


def max_err(a, b):
    return (a - b).abs().max().item()


def compare(ours, ref, *inputs):
    """Max |difference| of the outputs and of the input gradients (same upstream gradient)."""
    xs = [t.detach().clone().requires_grad_() for t in inputs]
    ys = [t.detach().clone().requires_grad_() for t in inputs]
    a, b = ours(*xs), ref(*ys)
    g = torch.randn_like(a)
    ga, gb = torch.autograd.grad(a, xs, g), torch.autograd.grad(b, ys, g)
    return max_err(a, b), max(max_err(x, y) for x, y in zip(ga, gb))


ml.seed_all(0)
q, k, v = (torch.randn(2, 3, 7, 16, dtype=torch.float64) for _ in range(3))
fwd_err, grad_err = compare(attention, F.scaled_dot_product_attention, q, k, v)
print(f"from scratch vs F.scaled_dot_product_attention (float64): forward {fwd_err:.1e}, gradients {grad_err:.1e}")
assert fwd_err < 1e-12 and grad_err < 1e-12, (fwd_err, grad_err)   # float64: eps = 2.2e-16

# %% [markdown]
# Autograd differentiates our four lines for free, and forward and backward agree with
# PyTorch to rounding error in float64.
#
# ### 3.1.1.1 Why divide by $\sqrt d$?
#
# Suppose the entries of a query $q$ and a key $k$ are independent, with mean 0 and
# variance 1 (roughly what a LayerNorm followed by a freshly initialized projection
# gives). Then $q \cdot k = \sum_{i=1}^d q_i k_i$ is a sum of $d$ independent terms of mean
# 0 and variance $E[q_i^2]\,E[k_i^2] = 1$, so
#
# $$\operatorname{Var}(q \cdot k) = d, \qquad \operatorname{std}(q \cdot k) = \sqrt d .$$
#
# The scores spread out as the head grows, and a softmax of widely spread scores is nearly
# one-hot: the largest score takes almost all the weight. A one-hot softmax is also a flat
# one: its Jacobian $\partial p/\partial s = \operatorname{diag}(p) - pp^\top$ tends to zero,
# so almost no gradient reaches the queries and keys. This is the argument of
# {cite}`vaswani2017attention` for the scale $1/\sqrt d$: it brings the scores back to unit
# variance whatever $d$ is. We measure the variance, the largest softmax weight of each
# row, and the size of the Jacobian,
# $\lVert J\rVert_F^2 = \sum_i p_i^2 - 2\sum_i p_i^3 + (\sum_i p_i^2)^2$, for 128 keys:

# %%
n_rows, n_keys = ml.pick(smoke=200, cpu=2000, gpu=2000), 128
dims = [4, 16, 64, 256, 1024]
ml.seed_all(1)
rows = []
for d in dims:
    qs, ks = torch.randn(n_rows, 1, d), torch.randn(n_rows, n_keys, d)
    scores = (qs @ ks.transpose(-2, -1)).squeeze(1)            # (n_rows, n_keys) unscaled q.k
    row = {"d": d, "Var(q.k)": scores.var().item(), "Var(q.k) / d": scores.var().item() / d}
    for label, factor in (("unscaled", 1.0), ("1/sqrt(d)", 1 / math.sqrt(d))):
        p = torch.softmax(scores * factor, dim=-1)
        p2, p3 = p.square().sum(-1), p.pow(3).sum(-1)
        row[f"max weight, {label}"] = p.amax(-1).mean().item()
        row[f"|J|_F, {label}"] = (p2 - 2 * p3 + p2.square()).clamp(min=0).sqrt().mean().item()
    rows.append(row)
scale_table = ml.bench.Table(rows, title=f"softmax over {n_keys} keys, mean over {n_rows} random queries",
                             formats={"Var(q.k)": "{:.1f}", "Var(q.k) / d": "{:.3f}"})
scale_table

# %% tags=["remove-cell"]
ml.glue("a31_var_over_d", rows[-1]["Var(q.k) / d"], ".2f")
ml.glue("a31_dmax", dims[-1])
ml.glue("a31_maxw_unscaled", rows[-1]["max weight, unscaled"], ".2f")
ml.glue("a31_maxw_scaled", rows[-1]["max weight, 1/sqrt(d)"], ".3f")
ml.glue("a31_jac_ratio", rows[-1]["|J|_F, 1/sqrt(d)"] / rows[-1]["|J|_F, unscaled"], ".1f")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].loglog(dims, [r["Var(q.k)"] for r in rows], "o-", label="measured Var(q.k)")
axes[0].loglog(dims, dims, "k--", alpha=0.5, label="d (theory)")
axes[0].set(xlabel="head dimension d", ylabel="variance of the score", title="Unscaled scores spread as d")
axes[0].legend()
for label, color in (("unscaled", "C3"), ("1/sqrt(d)", "C0")):
    axes[1].semilogx(dims, [r[f"max weight, {label}"] for r in rows], "o-", color=color, label=f"max weight, {label}")
    axes[1].semilogx(dims, [r[f"|J|_F, {label}"] for r in rows], "s--", color=color, alpha=0.6,
                     label=f"softmax Jacobian norm, {label}")
axes[1].set(xlabel="head dimension d", ylim=(0, 1.05), title=f"Softmax over {n_keys} keys")
axes[1].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# The measured variance follows $d$ (at $d =$ {glue:}`a31_dmax`, $\operatorname{Var}/d =$
# {glue:}`a31_var_over_d`). Unscaled, the largest weight of a row averages
# {glue:}`a31_maxw_unscaled` at $d=$ {glue:}`a31_dmax`: the softmax has nearly become an
# argmax. Scaled, it stays at {glue:}`a31_maxw_scaled`, the same at every $d$, and the
# Jacobian is {glue:}`a31_jac_ratio` times larger than unscaled, so gradients keep flowing.
# (At small $d$ the unscaled scores are not yet spread enough to saturate, and their
# Jacobian is even larger than the scaled one: what the scale buys is the same softmax at
# every $d$, so a wider head does not change how sharp attention starts out.)
#
# ### 3.1.1.2 Masks: causal, padding, and rows with nothing to see
#
# Two masks cover most uses, and they combine with a logical *and*:
#
# - **causal**: in a language model token $i$ may only look at tokens $j \le i$ (it must not
#   see the future it is trained to predict), a lower-triangular $T \times T$ mask
#   (`ml.attention.causal_mask`);
# - **key padding**: a batch holds sequences of different lengths, padded to a common $T$;
#   the padding tokens must not be looked at. One boolean per (sequence, key), shaped
#   `(B, 1, 1, T)` so that it broadcasts over heads and queries.
#
# A boolean mask keeps the `True` entries, as `attn_mask` of
# `F.scaled_dot_product_attention` does. One case needs care: a query whose keys are **all**
# masked (here, an empty sequence in the batch). Its scores are all $-\infty$; the softmax
# subtracts the row maximum $-\infty$ and computes $-\infty - (-\infty) = $ NaN, and one NaN
# in the batch poisons the loss and every gradient. PyTorch's fused kernels return 0 for
# such rows; our textbook `attention` does not:

# %%
B, H, T, d = 3, 2, 6, 8
lengths = torch.tensor([6, 4, 0])                            # the third sequence is empty
keep_keys = torch.arange(T)[None, :] < lengths[:, None]      # (B, T): True = real token
pad_mask = keep_keys[:, None, None, :]                       # (B, 1, 1, T)
causal = ml.attention.causal_mask(T, T)                      # (T, T), lower triangular
ml.seed_all(2)
q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
outs = {"textbook attention()": attention(q, k, v, pad_mask),
        "F.scaled_dot_product_attention": F.scaled_dot_product_attention(q, k, v, attn_mask=pad_mask),
        "ml.attention.scaled_dot_product": ml.attention.scaled_dot_product(q, k, v, mask=pad_mask)}
ml.bench.Table([{"implementation": name, "NaN in the output": bool(o.isnan().any()),
                 "output of the empty sequence": str(o[2].abs().max().item())} for name, o in outs.items()],
               title="padding mask with an empty sequence in the batch")

# %% [markdown]
# The library replaces the row maximum $-\infty$ by 0 on such rows, so every $e^{s - m}$ is
# exactly 0, and divides by 1 instead of by the zero sum: output 0 and gradient 0.

# %%
ml.show(ml.attention._safe_softmax)

# %%
w = ml.attention.attention_weights(q[:, :1], k[:, :1], mask=pad_mask & causal)   # head 0
fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.4))          # two panels per row
panels = [("causal mask", causal), ("padding mask, sequence 2 (length 4)", pad_mask[1, 0].expand(T, T)),
          ("attention weights, both masks", w[1, 0]), ("weights, empty sequence 3", w[2, 0])]
for ax, (title, img) in zip(axes.flat, panels):
    ax.imshow(img.float(), cmap="viridis", vmin=0, vmax=1)
    ax.set(title=title, xlabel="key j", ylabel="query i", xticks=range(T), yticks=range(T))
    ax.title.set_fontsize(8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Now the library's version, `ml.attention.scaled_dot_product`. It computes the same four
# lines, with three additions: float16/bfloat16 inputs get their scores and sums in float32,
# key heads may be shared by several query heads (grouped-query attention, notebook 3.2),
# and fully masked rows give 0.

# %%
ml.show(ml.attention.scaled_dot_product)

# %%
ml.seed_all(3)
B, H, T, d = 3, 4, 33, 16
q, k, v = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(3))
keep_keys = torch.arange(T)[None, :] < torch.tensor([33, 20, 0])[:, None]
pad = keep_keys[:, None, None, :]
bias = torch.randn(H, T, T, dtype=torch.float64)             # a float mask is added to the scores
sdp, ref = ml.attention.scaled_dot_product, F.scaled_dot_product_attention
cases = [
    ("no mask", lambda a, b, c: sdp(a, b, c), lambda a, b, c: ref(a, b, c)),
    ("causal", lambda a, b, c: sdp(a, b, c, causal=True), lambda a, b, c: ref(a, b, c, is_causal=True)),
    ("key padding, one empty sequence", lambda a, b, c: sdp(a, b, c, mask=pad),
     lambda a, b, c: ref(a, b, c, attn_mask=pad)),
    ("padding and causal", lambda a, b, c: sdp(a, b, c, mask=pad, causal=True),
     lambda a, b, c: ref(a, b, c, attn_mask=pad & ml.attention.causal_mask(T, T))),
    ("float mask (additive bias)", lambda a, b, c: sdp(a, b, c, mask=bias), lambda a, b, c: ref(a, b, c, attn_mask=bias)),
]
rows = []
for name, ours, theirs in cases:
    fe, ge = compare(ours, theirs, q, k, v)
    rows.append({"case": name, "forward max |err|": fe, "gradient max |err|": ge})
worst = max(max(r["forward max |err|"], r["gradient max |err|"]) for r in rows)
assert worst < 1e-10, rows
ml.bench.Table(rows, title="ml.attention.scaled_dot_product vs F.scaled_dot_product_attention (float64)",
               formats={"forward max |err|": "{:.1e}", "gradient max |err|": "{:.1e}"})

# %% tags=["remove-cell"]
ml.glue("a31_sdp_worst", worst, ".1e")


# %% [markdown]
# In every case, forward and backward, the library matches PyTorch to within
# {glue:}`a31_sdp_worst` in float64, including the empty sequence (zero output, zero gradients).
#
# ### 3.1.1.3 Several heads
#
# One attention is one way of weighting the tokens. **Multi-head attention** runs $H$ of
# them side by side on slices of width $d = C/H$ of the model width $C$
# {cite}`vaswani2017attention`: one projection makes $Q, K, V$ of width $C$, **split
# heads** reshapes $(B, T, C) \to (B, T, H, d) \to (B, H, T, d)$, attention runs on every
# head at once (the head is just another batch dimension), **merge heads** undoes the
# reshape, and an output projection mixes the heads. Splitting costs nothing: it is a view
# of the same memory.

# %%
def split_heads(x, heads):
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)      # (B, H, T, d)


def merge_heads(y):
    B, H, T, d = y.shape
    return y.transpose(1, 2).reshape(B, T, H * d)              # (B, T, C)


def multi_head_attention(x, w_qkv, b_qkv, w_out, b_out, heads, mask=None):
    q, k, v = (x @ w_qkv.T + b_qkv).chunk(3, dim=-1)          # each (B, T, C)
    y = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), mask)
    return merge_heads(y) @ w_out.T + b_out


ml.seed_all(4)
B, T, C, H = 2, 10, 32, 4
torch_mha = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64)
lib_mha = ml.attention.MultiHeadAttention(C, H, causal=True).double()
with torch.no_grad():                                          # same weights in all three
    lib_mha.qkv.weight.copy_(torch_mha.in_proj_weight)
    lib_mha.qkv.bias.copy_(torch_mha.in_proj_bias)
    lib_mha.proj.weight.copy_(torch_mha.out_proj.weight)
    lib_mha.proj.bias.copy_(torch_mha.out_proj.bias)
x = torch.randn(B, T, C, dtype=torch.float64)
tri = ml.attention.causal_mask(T, T)
params = (torch_mha.in_proj_weight, torch_mha.in_proj_bias, torch_mha.out_proj.weight, torch_mha.out_proj.bias)
ours = lambda x_: multi_head_attention(x_, *params, H, mask=tri)
theirs = lambda x_: torch_mha(x_, x_, x_, attn_mask=~tri, need_weights=False)[0]   # nn.MHA: True = hidden
fe, ge = compare(ours, theirs, x)
fe_lib, ge_lib = compare(lib_mha, theirs, x)
print(f"from-scratch multi-head vs nn.MultiheadAttention: forward {fe:.1e}, input gradient {ge:.1e}")
print(f"ml.attention.MultiHeadAttention vs nn.MultiheadAttention: forward {fe_lib:.1e}, input gradient {ge_lib:.1e}")
assert max(fe, ge, fe_lib, ge_lib) < 1e-10, (fe, ge, fe_lib, ge_lib)

# %%
ml.show(ml.attention.MultiHeadAttention.forward)

# %% [markdown]
# ### 3.1.1.4 What attention costs as $T$ grows
#
# **FLOPs.** Per head and sequence, $S = QK^\top$ multiplies $(T \times d)$ by
# $(d \times T)$: $T^2$ dot products of length $d$, $2T^2d$ FLOPs (a multiply-add is 2).
# $PV$ is another $(T \times T)(T \times d)$ product, $2T^2 d$. So
#
# $$\text{FLOPs}_\text{attention} = 4\,B\,H\,T^2 d = 4 B T^2 C,$$
#
# plus $O(T^2)$ exponentials and divisions for the softmax, which FLOP counters ignore. The
# projections around it cost $2TC\cdot 3C + 2TC\cdot C = 8TC^2$ per sequence, so the
# $T^2$ part wins once $4T^2C > 8TC^2$, that is for $T > 2C$. We count both with
# `ml.bench.count_flops` (PyTorch's `FlopCounterMode`) and compare with the formula.

# %%
C_cost, H_cost = 256, 4
d_cost = C_cost // H_cost
Ts_flops = ml.pick(smoke=[128, 256, 512], cpu=[128, 256, 512, 1024, 2048, 4096], gpu=[128, 512, 2048, 8192])
mha_cost = ml.attention.MultiHeadAttention(C_cost, H_cost).to(dev)
rows = []
for T in Ts_flops:
    q, k, v = (torch.randn(1, H_cost, T, d_cost, device=dev) for _ in range(3))
    core = ml.bench.count_flops(ml.attention.scaled_dot_product, q, k, v)
    layer = ml.bench.count_flops(mha_cost, torch.randn(1, T, C_cost, device=dev))
    rows.append({"T": T, "counted QK^T + PV": core, "formula 4 H T^2 d": 4 * H_cost * T**2 * d_cost,
                 "projections 8 T C^2": layer - core, "attention share of the layer": core / layer,
                 "F.sdpa, default kernel": ml.bench.count_flops(F.scaled_dot_product_attention, q, k, v)})
flops_table = ml.bench.Table(rows, title=f"FLOPs of one attention layer, C={C_cost}, H={H_cost}, batch 1",
                             formats={c: ml.bench.fmt_flops for c in ("counted QK^T + PV", "formula 4 H T^2 d",
                                                                       "projections 8 T C^2", "F.sdpa, default kernel")}
                             | {"attention share of the layer": "{:.0%}"})
# FLOP counts are integers: these are exact identities, at every T and on every device.
assert all(r["counted QK^T + PV"] == r["formula 4 H T^2 d"] for r in rows), rows
assert all(r["projections 8 T C^2"] == 8 * r["T"] * C_cost**2 for r in rows), rows
flops_table

# %% tags=["remove-cell"]
ml.glue("a31_crossover_T", 2 * C_cost)
ml.glue("a31_core_share", rows[-1]["attention share of the layer"] * 100, ".0f")
ml.glue("a31_flops_Tmax", Ts_flops[-1])

# %% [markdown]
# The counter agrees with $4HT^2d$ exactly, and the projections with $8TC^2$. At
# $T = 2C =$ {glue:}`a31_crossover_T` the two are equal; at $T =$ {glue:}`a31_flops_Tmax`
# attention is {glue:}`a31_core_share`% of the layer's FLOPs. The last column is a warning
# about FLOP counters: `FlopCounterMode` counts an operator only if it has a formula for it.
# If that column reads 0, the default kernel behind `F.scaled_dot_product_attention` on this
# machine (on CPU, PyTorch's fused "flash" CPU kernel) is one it has no formula for; the
# work is the same. Always check a counter against a formula once.
#
# **Memory.** The score matrix $S$ and the weights $P$ are $B \times H \times T \times T$
# numbers each, $4BHT^2$ bytes in float32, whatever $d$ is: at $T = 4096$ that is 64 MiB
# per head and sequence, for one layer. We measure the peak memory of the forward pass
# with `ml.bench.peak_memory` (on CPU it replays the profiler's allocation log), for our
# textbook `attention` and for the library version, and divide by that formula.

# %%
ml.show(ml.bench.peak_memory)

# %%
B_mem, H_mem, d_mem = 1, 4, 64
Ts_mem = ml.pick(smoke=[128, 256, 512], cpu=[256, 512, 1024, 2048, 4096], gpu=[1024, 2048, 4096, 8192])
rows = []
for T in Ts_mem:
    q, k, v = (torch.randn(B_mem, H_mem, T, d_mem, device=dev) for _ in range(3))
    formula = 4 * B_mem * H_mem * T**2
    textbook = ml.bench.peak_memory(attention, q, k, v)
    library = ml.bench.peak_memory(ml.attention.scaled_dot_product, q, k, v)
    rows.append({"T": T, "formula 4 B H T^2": formula, "textbook attention()": textbook,
                 "textbook / formula": textbook / formula, "ml.attention.scaled_dot_product": library,
                 "library / formula": library / formula})
mem_table = ml.bench.Table(rows, title=f"peak forward memory, B={B_mem}, H={H_mem}, d={d_mem}, float32",
                           formats={c: ml.bench.fmt_bytes for c in ("formula 4 B H T^2", "textbook attention()",
                                                                     "ml.attention.scaled_dot_product")}
                           | {"textbook / formula": "{:.2f}", "library / formula": "{:.2f}"})
mem_table

# %% tags=["remove-cell"]
ml.glue("a31_textbook_ratio", rows[-1]["textbook / formula"], ".2f")
ml.glue("a31_library_ratio", rows[-1]["library / formula"], ".2f")
ml.glue("a31_mem_Tmax", Ts_mem[-1])
ml.glue("a31_mem_lib_Tmax", ml.bench.fmt_bytes(rows[-1]["ml.attention.scaled_dot_product"]))

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.6))
Tm = np.array(Ts_mem)
ax.loglog(Tm, [r["formula 4 B H T^2"] / MiB for r in rows], "k--", label="one T x T matrix: 4 B H T$^2$ bytes")
ax.loglog(Tm, [r["textbook attention()"] / MiB for r in rows], "o-", label="textbook attention(), measured")
ax.loglog(Tm, [r["ml.attention.scaled_dot_product"] / MiB for r in rows], "s-", label="ml.attention.scaled_dot_product, measured")
ax.set(xlabel="sequence length T", ylabel="peak memory (MiB)", title="Forward memory of naive attention")
ax.set_xticks(Ts_mem, [str(t) for t in Ts_mem])
ax.xaxis.set_minor_formatter(plt.NullFormatter())
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Both curves run parallel to the formula: the memory is quadratic in $T$, a fixed number of
# $T \times T$ matrices. The textbook version peaks at {glue:}`a31_textbook_ratio` of them
# (the product $QK^\top$ and its scaled copy, then $S$ and $P$), the library version at
# {glue:}`a31_library_ratio` (its safe softmax holds $S$, $e^{S - m}$ and $P$ at once), which
# is {glue:}`a31_mem_lib_Tmax` for one layer at $T=$ {glue:}`a31_mem_Tmax` with only 4 heads
# and one sequence. Training is worse: the backward pass needs $P$, so autograd keeps it
# for every layer until the backward reaches it (section 3.1.2.3 measures it).
#
# ## 3.1.2 Attention without the $T \times T$ matrix
#
# ### 3.1.2.1 The online softmax
#
# The obstacle to processing keys in pieces is the softmax: its denominator needs every
# score of the row. The usual stable softmax makes three passes over a row
# $s_1, \dots, s_n$: find the maximum $m = \max_j s_j$, sum $\ell = \sum_j e^{s_j - m}$, then
# normalize $p_j = e^{s_j - m}/\ell$ (subtracting $m$ keeps $e^x$ from overflowing; it does
# not change $p$). Milakov and Gimelshein {cite}`milakov2018online` fuse the first two
# passes. Keep a **running maximum** $m_j$ and a **running sum** $\ell_j$ of the first $j$
# scores, with the invariant
#
# $$\ell_j = \sum_{i \le j} e^{s_i - m_j}.$$
#
# When $s_{j+1}$ arrives, $m_{j+1} = \max(m_j, s_{j+1})$. Every term of $\ell_j$ was
# computed relative to the old maximum $m_j$; multiplying by $e^{m_j - m_{j+1}}$ moves them
# to the new one, because $e^{s_i - m_j}\,e^{m_j - m_{j+1}} = e^{s_i - m_{j+1}}$:
#
# $$\ell_{j+1} = \ell_j\, e^{m_j - m_{j+1}} + e^{s_{j+1} - m_{j+1}} .$$
#
# The rescaling factor $\alpha = e^{m_j - m_{j+1}}$ is 1 when the maximum does not change
# and below 1 when it grows, so nothing ever overflows. For attention we go one step
# further and carry the **unnormalized output** along, with the same rescaling:
#
# $$o_{j+1} = o_j\, e^{m_j - m_{j+1}} + e^{s_{j+1} - m_{j+1}}\, v_{j+1},
# \qquad \text{output} = o_n / \ell_n .$$
#
# One pass over the keys, and a state of $d + 2$ numbers per query: $m$, $\ell$ and $o$.
# Here it is for one query row, one key at a time, printing the state as it goes:

# %%
def online_attention_row(q, K, V):
    """Attention of one query over keys K and values V, one key at a time (online softmax)."""
    m, l, o = float("-inf"), 0.0, torch.zeros(V.shape[1], dtype=V.dtype)
    trace = []
    for j in range(K.shape[0]):
        s = (q @ K[j]).item() / math.sqrt(q.shape[0])        # the score of key j
        m_new = max(m, s)
        alpha = math.exp(m - m_new)                           # rescale what used the old max
        l = l * alpha + math.exp(s - m_new)
        o = o * alpha + math.exp(s - m_new) * V[j]
        m = m_new
        trace.append({"key j": j, "score s_j": s, "running max m": m, "alpha": alpha, "running sum l": l})
    return o / l, trace


ml.seed_all(5)
n, d = 12, 8
q1, K1, V1 = torch.randn(d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64) * 2, torch.randn(n, d, dtype=torch.float64)
out_online, trace = online_attention_row(q1, K1, V1)
scores = K1 @ q1 / math.sqrt(d)
out_ref = torch.softmax(scores, dim=0) @ V1
for j, t in enumerate(trace):                                 # check the invariant at every step
    t["sum_{i<=j} exp(s_i - m)"] = torch.exp(scores[: j + 1] - t["running max m"]).sum().item()
online_err = max_err(out_online, out_ref)
print(f"online softmax vs softmax(s) @ V: max |error| {online_err:.1e}")
assert online_err < 1e-12, online_err
ml.bench.Table(trace, title="the state of the online softmax, key by key",
               formats={c: "{:.4f}" for c in trace[0] if c != "key j"})

# %% tags=["remove-cell"]
ml.glue("a31_online_err", online_err, ".1e")


# %% [markdown]
# The last column recomputes $\sum_{i\le j} e^{s_i - m_j}$ from scratch at every step and
# matches the running sum: the invariant holds. Wherever the maximum jumps, $\alpha < 1$
# shrinks the old sum; everywhere else $\alpha = 1$.
#
# Nothing forces us to take one key at a time. A **block** of keys is handled by the same
# update, with the block's maximum and the block's sum: with $S_b$ the scores of a block,
# $m' = \max(m, \max S_b)$, $\alpha = e^{m - m'}$, $\ell' = \alpha \ell + \sum e^{S_b - m'}$,
# $o' = \alpha o + e^{S_b - m'} V_b$. And nothing forces one query at a time either: all
# queries update their own $m, \ell, o$ with one matrix product per block. Only a
# $T_q \times b$ slice of the scores exists at any time:

# %%
def blockwise_attention(q, k, v, block):
    """Exact attention over key blocks: only (Tq, block) scores exist at any time."""
    like = {"dtype": q.dtype, "device": q.device}
    m = torch.full(q.shape[:-1], float("-inf"), **like)          # (..., Tq) running max
    l = torch.zeros(q.shape[:-1], **like)                        # (..., Tq) running sum
    o = torch.zeros(*q.shape[:-1], v.shape[-1], **like)          # (..., Tq, Dv) running output
    for start in range(0, k.shape[-2], block):
        kb, vb = k[..., start:start + block, :], v[..., start:start + block, :]
        s = q @ kb.transpose(-2, -1) / math.sqrt(q.shape[-1])     # (..., Tq, block)
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = alpha * l + p.sum(dim=-1)
        o = alpha[..., None] * o + p @ vb
        m = m_new
    return o / l[..., None]


ml.seed_all(6)
q, k, v = (torch.randn(2, 3, 50, 16, dtype=torch.float64) for _ in range(3))
fe, ge = compare(lambda a, b, c: blockwise_attention(a, b, c, block=16), F.scaled_dot_product_attention, q, k, v)
print(f"blockwise (blocks of 16 keys) vs F.scaled_dot_product_attention: forward {fe:.1e}, gradients {ge:.1e}")
assert fe < 1e-12 and ge < 1e-12, (fe, ge)

# %% [markdown]
# Exact, and autograd still differentiates it. But autograd is the catch: to backpropagate
# through the loop it **saves every block's $p$** (and its exponentials), and all the blocks
# together are the whole $T \times T$ matrix again. We measure the peak memory of the
# forward pass alone (under `torch.no_grad`, as in inference) and of forward plus backward,
# in units of one $T \times T$ float32 matrix:

# %%
T_b, b_b = ml.pick(smoke=512, cpu=2048, gpu=4096), 128
q, k, v = (torch.randn(1, 1, T_b, 64, device=dev, requires_grad=True) for _ in range(3))
upstream = torch.randn(1, 1, T_b, 64, device=dev)


def train_step(fn):
    for t in (q, k, v):
        t.grad = None
    return ml.bench.peak_memory(lambda: fn(q, k, v).backward(upstream))


def inference(fn):
    with torch.no_grad():
        return ml.bench.peak_memory(fn, q, k, v)


rows = []
for name, fn in [("naive ml.attention.scaled_dot_product", ml.attention.scaled_dot_product),
                 (f"blockwise_attention, blocks of {b_b}, autograd", lambda a, b, c: blockwise_attention(a, b, c, b_b)),
                 (f"ml.attention.tiled_attention, tiles of {b_b}", lambda a, b, c: ml.attention.tiled_attention(a, b, c, block_size=b_b))]:
    rows.append({"implementation": name, "forward (no grad)": inference(fn) / (4 * T_b**2),
                 "forward + backward": train_step(fn) / (4 * T_b**2)})
ml.bench.Table(rows, title=f"peak memory in T x T matrices (T = {T_b}, one head, d = 64, float32)",
               formats={"forward (no grad)": "{:.2f}", "forward + backward": "{:.2f}"})

# %% tags=["remove-cell"]
ml.glue("a31_blockwise_fwd", rows[1]["forward (no grad)"], ".2f")
ml.glue("a31_blockwise_fb", rows[1]["forward + backward"], ".1f")
ml.glue("a31_naive_fb_b", rows[0]["forward + backward"], ".1f")
ml.glue("a31_tiled_fb_b", rows[2]["forward + backward"], ".2f")
ml.glue("a31_T_b", T_b)

# %% [markdown]
# For inference the block loop needs {glue:}`a31_blockwise_fwd` of a $T \times T$ matrix at
# $T =$ {glue:}`a31_T_b` (a few $T \times b$ slices). Trained through autograd it needs
# {glue:}`a31_blockwise_fb` matrices: less than the naive version's {glue:}`a31_naive_fb_b`,
# but still quadratic in $T$, because the saved slices add up to the whole matrix. The
# library's `tiled_attention` (last row, section 3.1.2.2) needs {glue:}`a31_tiled_fb_b`. A
# memory-efficient *forward* is not enough for training: the backward pass needs its own
# algorithm.
#
# ### 3.1.2.2 FlashAttention: tiles of queries and keys
#
# FlashAttention {cite}`dao2022flashattention` tiles both sides. The queries are cut into
# blocks of $b$ rows; for each query block an inner loop walks over the key blocks with
# the online softmax, and only a $b \times b$ tile of scores ever exists. FlashAttention-2
# {cite}`dao2024flashattention2` puts the query blocks in the *outer* loop, as here: the
# query blocks are independent of each other, so a GPU runs them in parallel, one per
# thread block, and each keeps its $m, \ell, o$ in registers until it writes its output
# once. With a causal mask, key blocks entirely in the future of a query block are skipped
# outright, and only blocks on the diagonal need a mask. The forward pass also saves, per
# query, the **log-sum-exp** $L_i = m_i + \log \ell_i$: $T$ numbers from which the backward
# pass rebuilds any softmax weight as $P_{ij} = e^{S_{ij} - L_i}$.
#
# Rabe and Staats {cite}`rabe2021selfattention` independently published the same
# observation (attention in $O(1)$ memory per query, $O(\sqrt n)$ in their practical
# implementation, with a memory-efficient gradient). `ml.attention.tiled_attention` is the
# FlashAttention algorithm in plain PyTorch:

# %%
ml.show(ml.attention.tiled_attention)

# %%
ml.show(ml.attention._flash_forward)

# %% [markdown]
# **The backward pass.** With $S = \text{scale}\cdot QK^\top$, $P = \operatorname{softmax}(S)$
# and $O = PV$, the chain rule gives, for an upstream gradient $dO$,
#
# $$\begin{aligned}
# dV &= P^\top dO, & dP &= dO\, V^\top, \\
# dS_{ij} &= P_{ij}\,\big(dP_{ij} - \delta_i\big), & & \\
# dQ &= \text{scale}\cdot dS\,K, & dK &= \text{scale}\cdot dS^\top Q,
# \end{aligned}$$
#
# where $\delta_i = \sum_j P_{ij}\, dP_{ij}$ comes from the softmax's Jacobian
# $\operatorname{diag}(p) - pp^\top$. Two facts make this computable tile by tile. First,
# $P_{ij} = e^{S_{ij} - L_i}$ can be **recomputed** from $Q$, $K$ and the saved $L$, so $P$
# is never stored: FlashAttention does the $QK^\top$ product twice (once forward, once
# backward) to avoid storing $T^2$ numbers. Second, $\delta_i$ needs no $P$ at all:
#
# $$\delta_i = \sum_j P_{ij}\, (dO_i \cdot v_j) = dO_i \cdot \Big(\sum_j P_{ij}\, v_j\Big) = dO_i \cdot O_i .$$
#
# So the backward saves only $Q, K, V, O$ and $L$, all of size $O(T)$, loops over the same
# tiles, and accumulates $dQ$, $dK$, $dV$. It is wrapped in a custom
# `torch.autograd.Function`, so autograd never sees (or saves) the tiles.

# %%
ml.show(ml.attention._flash_backward)

# %%
ml.show(ml.attention._TiledAttention)

# %% [markdown]
# We check it against the naive version and against PyTorch, with lengths that are not a
# multiple of the block size, with and without the causal mask, and with fewer queries than
# keys (the decoding case, where the causal mask is aligned to the last key; PyTorch's
# `is_causal` aligns it to the first, so that case is compared with the naive version).

# %%
ml.seed_all(7)
tiled, sdp = ml.attention.tiled_attention, ml.attention.scaled_dot_product
rows = []
for Tq, Tk, causal, block in [(100, 100, False, 32), (100, 100, True, 32), (64, 64, True, 64),
                              (37, 37, True, 8), (10, 50, True, 16), (50, 50, False, 128)]:
    q = torch.randn(2, 3, Tq, 16, dtype=torch.float64)
    k, v = (torch.randn(2, 3, Tk, 16, dtype=torch.float64) for _ in range(2))
    ours = lambda a, b, c: tiled(a, b, c, causal=causal, block_size=block)
    fe_n, ge_n = compare(ours, lambda a, b, c: sdp(a, b, c, causal=causal), q, k, v)
    row = {"Tq, Tk": f"{Tq}, {Tk}", "causal": causal, "block": block,
           "vs naive: forward": fe_n, "vs naive: gradients": ge_n}
    if Tq == Tk:
        row["vs F.sdpa: forward"], row["vs F.sdpa: gradients"] = compare(
            ours, lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal), q, k, v)
    rows.append(row)
err_cols = [c for c in rows[0] if c.startswith("vs")]
tiled_worst = max(r[c] for r in rows for c in err_cols if c in r)
assert tiled_worst < 1e-10, rows
ml.bench.Table(rows, title="tiled_attention vs naive attention and PyTorch (float64, max |error|)",
               formats={c: "{:.1e}" for c in err_cols})

# %% tags=["remove-cell"]
ml.glue("a31_tiled_worst", tiled_worst, ".1e")

# %% [markdown]
# Outputs and all three gradients agree to within {glue:}`a31_tiled_worst` in float64.
# Skipping the future key blocks under a causal mask saves work too. With $n = T/b$ blocks
# per side, the query block $i$ visits key blocks $0..i$: $n(n+1)/2$ of the $n^2$ tiles, a
# fraction $(n+1)/(2n) \to \tfrac12$. The FLOP counter confirms it:

# %%
T_c, b_c = ml.pick(smoke=512, cpu=1024, gpu=4096), 64
q, k, v = (torch.randn(1, 1, T_c, 64) for _ in range(3))
flops_full = ml.bench.count_flops(tiled, q, k, v, block_size=b_c)
flops_causal = ml.bench.count_flops(tiled, q, k, v, causal=True, block_size=b_c)
n_blocks = T_c // b_c
causal_fraction = flops_causal / flops_full
print(f"T={T_c}, blocks of {b_c}: causal / full FLOPs = {causal_fraction:.4f}, "
      f"formula (n+1)/(2n) = {(n_blocks + 1) / (2 * n_blocks):.4f}")

# %% tags=["remove-cell"]
ml.glue("a31_causal_fraction", causal_fraction, ".3f")
ml.glue("a31_causal_T", T_c)

# %% [markdown]
# ### 3.1.2.3 Memory and time against sequence length
#
# Now the measurement this notebook is about. For each sequence length we measure the peak
# memory of the forward pass alone (inference) and of forward plus backward (training), and
# time both, for three implementations: the naive `ml.attention.scaled_dot_product`, the
# tiled `ml.attention.tiled_attention`, and PyTorch's `F.scaled_dot_product_attention` with
# its default kernel. One sequence and one head, so that the $T \times T$ matrix is
# $4T^2$ bytes.

# %%
Ts = ml.pick(smoke=[128, 256, 512], cpu=[512, 1024, 2048, 4096, 8192], gpu=[1024, 2048, 4096, 8192, 16384])
block = ml.pick(smoke=64, cpu=128, gpu=128)
D = 64
repeat = ml.pick(smoke=1, cpu=5, gpu=10)
methods = {
    "naive": ml.attention.scaled_dot_product,
    "tiled": lambda q, k, v: ml.attention.tiled_attention(q, k, v, block_size=block),
    "F.sdpa": F.scaled_dot_product_attention,
}


def forward_backward(fn, q, k, v, g):
    fn(q, k, v).backward(g)


def clear_grads(*tensors):
    for t in tensors:
        t.grad = None


results = []
for T in Ts:
    q, k, v = (torch.randn(1, 1, T, D, device=dev) for _ in range(3))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    g = torch.randn(1, 1, T, D, device=dev)
    for name, fn in methods.items():
        row = {"T": T, "method": name, "fwd memory": ml.bench.peak_memory(fn, q, k, v)}
        clear_grads(qg, kg, vg)
        row["fwd+bwd memory"] = ml.bench.peak_memory(forward_backward, fn, qg, kg, vg, g)
        row["fwd time"] = ml.bench.time_fn(fn, q, k, v, warmup=1, repeat=repeat).median
        row["fwd+bwd time"] = ml.bench.time_fn(
            lambda: (clear_grads(qg, kg, vg), forward_backward(fn, qg, kg, vg, g)), warmup=1, repeat=repeat).median
        row["one T x T matrix"] = 4 * T**2
        results.append(row)
sweep = ml.bench.Table(results, title=f"one head, d={D}, float32, tiles of {block}; times are medians of {repeat}",
                       formats={"fwd memory": ml.bench.fmt_bytes, "fwd+bwd memory": ml.bench.fmt_bytes,
                                "one T x T matrix": ml.bench.fmt_bytes,
                                "fwd time": ml.bench.fmt_time, "fwd+bwd time": ml.bench.fmt_time})
sweep

# %%
def series(method, column):
    return np.array([r[column] for r in results if r["method"] == method], dtype=float)


Tarr = np.array(Ts, dtype=float)                               # each T doubles the previous one


def raw_slope(column, method, n_last=3):
    """Slope of log(memory) against log(T), straight through the largest n_last lengths."""
    return np.polyfit(np.log(Tarr[-n_last:]), np.log(series(method, column)[-n_last:]), 1)[0]


def slope(column, method, n_last=3):
    """Exponent p of memory = fixed + c T^p, from the growth M(T) - M(T/2): the fixed part cancels."""
    growth = np.maximum(np.diff(series(method, column)), 1.0)
    return np.polyfit(np.log(Tarr[1:][-n_last:]), np.log(growth[-n_last:]), 1)[0]


slopes = {(name, column): slope(column, name) for name in methods for column in ("fwd memory", "fwd+bwd memory")}
last = {name: {c: series(name, c)[-1] for c in ("fwd memory", "fwd+bwd memory", "fwd time", "fwd+bwd time")}
        for name in methods}
fb_ratios = series("tiled", "fwd+bwd time") / series("naive", "fwd+bwd time")   # per T

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, column in zip(axes, ("fwd memory", "fwd+bwd memory")):
    for i, name in enumerate(methods):
        ax.loglog(Tarr, series(name, column) / MiB, "o-", color=f"C{i}",
                  label=f"{name}: slope {slopes[name, column]:.2f}")
    ax.loglog(Tarr, 4 * Tarr**2 / MiB, "k--", alpha=0.4, label="one T x T matrix")
    ax.set(xlabel="sequence length T", ylabel="peak memory (MiB)", title=f"{column}; slope of the growth")
    ax.legend(fontsize=7)
    ax.set_xticks(Ts, [str(t) for t in Ts])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
plt.tight_layout()
plt.show()

fig, ax = plt.subplots(figsize=(6.4, 3.6))
for i, name in enumerate(methods):
    ax.loglog(Tarr, series(name, "fwd+bwd time") * 1e3, "o-", color=f"C{i}", label=name)
ax.set(xlabel="sequence length T", ylabel="time (ms)", title=f"fwd+bwd time on {dev.type}")
ax.set_xticks(Ts, [str(t) for t in Ts])
ax.xaxis.set_minor_formatter(plt.NullFormatter())
ax.legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% tags=["remove-cell"]
ml.glue("a31_Tmax", Ts[-1])
ml.glue("a31_slope_fwd_naive", slopes["naive", "fwd memory"], ".2f")
ml.glue("a31_slope_fb_naive", slopes["naive", "fwd+bwd memory"], ".2f")
ml.glue("a31_slope_fwd_tiled", slopes["tiled", "fwd memory"], ".2f")
ml.glue("a31_slope_fb_tiled", slopes["tiled", "fwd+bwd memory"], ".2f")
ml.glue("a31_slope_fwd_sdpa", slopes["F.sdpa", "fwd memory"], ".2f")
ml.glue("a31_slope_fb_sdpa", slopes["F.sdpa", "fwd+bwd memory"], ".2f")
ml.glue("a31_rawslope_fwd_tiled", raw_slope("fwd memory", "tiled"), ".2f")
ml.glue("a31_rawslope_fwd_sdpa", raw_slope("fwd memory", "F.sdpa"), ".2f")
ml.glue("a31_naive_fb_mem", ml.bench.fmt_bytes(last["naive"]["fwd+bwd memory"]))
ml.glue("a31_tiled_fb_mem", ml.bench.fmt_bytes(last["tiled"]["fwd+bwd memory"]))
ml.glue("a31_save_fwd", last["naive"]["fwd memory"] / last["tiled"]["fwd memory"], ".0f")
ml.glue("a31_save_fb", last["naive"]["fwd+bwd memory"] / last["tiled"]["fwd+bwd memory"], ".0f")
ml.glue("a31_naive_fb_matrices", last["naive"]["fwd+bwd memory"] / (4 * Ts[-1] ** 2), ".1f")
ml.glue("a31_tiled_time_ratio_fwd", last["tiled"]["fwd time"] / last["naive"]["fwd time"], ".2f")
ml.glue("a31_tiled_time_ratio_fb", last["tiled"]["fwd+bwd time"] / last["naive"]["fwd+bwd time"], ".2f")
ml.glue("a31_sdpa_time_ratio_fb", last["F.sdpa"]["fwd+bwd time"] / last["naive"]["fwd+bwd time"], ".2f")
ml.glue("a31_tiled_fb_ratio_min", fb_ratios.min(), ".1f")
ml.glue("a31_tiled_fb_ratio_max", fb_ratios.max(), ".1f")

# %% [markdown]
# The memory plots are the point of this notebook. The memory of the tiled versions is a
# fixed part (a few tiles, whatever $T$ is) plus a part that grows with $T$ (the output, the
# log-sum-exp, the gradients: $O(Td)$). Fitted straight through the largest three lengths,
# the fixed part flattens the curves (slope {glue:}`a31_rawslope_fwd_tiled` for the tiled
# forward, {glue:}`a31_rawslope_fwd_sdpa` for PyTorch's), so the legends give the slope of
# the *growth* $M(T) - M(T/2)$, in which the fixed part cancels and which grows as $T^p$
# when the rest does. The naive version's memory grows with exponent
# {glue:}`a31_slope_fwd_naive` (forward) and {glue:}`a31_slope_fb_naive` (forward and
# backward): quadratic. At $T =$ {glue:}`a31_Tmax`, training one head of one sequence takes
# {glue:}`a31_naive_fb_mem`, about {glue:}`a31_naive_fb_matrices` $T \times T$ matrices
# (scores, exponentials, weights, and their gradients). The tiled version grows with
# exponent {glue:}`a31_slope_fwd_tiled` (forward) and {glue:}`a31_slope_fb_tiled` (forward
# and backward), PyTorch's kernel with {glue:}`a31_slope_fwd_sdpa` and
# {glue:}`a31_slope_fb_sdpa`: linear. At $T =$ {glue:}`a31_Tmax` the tiled version needs
# {glue:}`a31_save_fwd` times less memory than the naive one for inference and
# {glue:}`a31_save_fb` times less for training ({glue:}`a31_tiled_fb_mem`), and the ratio
# keeps growing about in proportion to $T$.
#
# The time plot tells the other half, and it is not flattering here. On this machine (see
# the banner) the tiled version takes {glue:}`a31_tiled_time_ratio_fwd` times the naive
# forward time and {glue:}`a31_tiled_time_ratio_fb` times its forward-plus-backward time at
# $T =$ {glue:}`a31_Tmax` (over all lengths, between {glue:}`a31_tiled_fb_ratio_min` and
# {glue:}`a31_tiled_fb_ratio_max` times the naive training time); PyTorch's fused kernel
# takes {glue:}`a31_sdpa_time_ratio_fb` times the naive training time at
# $T =$ {glue:}`a31_Tmax`. (This machine is shared, so single timings can be noisy: read the
# trend of the plot rather than one point.) Our tiled loop saves memory, not time, for two reasons:
#
# - It is a Python loop over $(T/b)^2$ tiles, each a dozen small PyTorch operations with
#   their dispatch overhead, and the backward recomputes $QK^\top$.
# - More fundamentally, every one of those operations reads its inputs from main memory
#   and writes its result back. The tiles are small, but each is written and read again by
#   the next operation: we removed the *storage* of the $T \times T$ matrix, not the
#   *traffic*.
#
# FlashAttention's speed on a GPU comes from that second point. A GPU has a large, slow
# main memory (HBM, tens of GB at a few TB/s) and a small, fast on-chip memory (SRAM,
# a couple of hundred KB per streaming multiprocessor, an order of magnitude faster).
# Naive attention writes $S$ and $P$ to HBM and reads them back: $\Theta(T^2)$ bytes of
# traffic for a computation that is memory-bound. FlashAttention is **one fused kernel**: a
# thread block loads a tile of $Q$, $K$ and $V$ into SRAM, computes the scores, the
# exponentials, the running statistics and the output update there, and only ever writes
# the final $O$ and $L$ to HBM. Its HBM traffic is $\Theta(T^2 d^2 / M)$ for an SRAM of $M$
# bytes instead of $\Theta(Td + T^2)$ {cite}`dao2022flashattention`. Plain PyTorch cannot say
# "keep this tile in SRAM between these operations": that takes a kernel written in CUDA or
# Triton (or a compiler that generates one). PyTorch ships such kernels behind
# `F.scaled_dot_product_attention`, and on CPU a fused C++ kernel that applies the same
# tiling to the CPU's caches: its memory is linear like ours, without our loop's Python
# overhead (compare the time columns).
#
# ### 3.1.2.4 PyTorch's attention backends
#
# `F.scaled_dot_product_attention` chooses among several implementations ("backends"):
# **FLASH_ATTENTION** (FlashAttention-2 on CUDA, a fused tiled kernel on CPU),
# **EFFICIENT_ATTENTION** (the memory-efficient kernel of xFormers, after
# {cite}`rabe2021selfattention`, CUDA only), **CUDNN_ATTENTION** (NVIDIA's cuDNN, CUDA only)
# and **MATH** (the naive composite of matmuls and softmax, which works everywhere).
# `torch.nn.attention.sdpa_kernel` restricts the choice, so each backend can be timed on
# its own; a backend that cannot run the inputs (wrong device, dtype or shape) raises an
# error, which we catch and report.

# %%
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_backends(backends, q, k, v, repeat):
    """Time forward and forward+backward of F.sdpa restricted to each backend (causal)."""
    rows = []
    g = torch.randn_like(q)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def train_step():
        clear_grads(qg, kg, vg)
        F.scaled_dot_product_attention(qg, kg, vg, is_causal=True).backward(g)

    for name, backend in backends:
        try:
            with sdpa_kernel(backend), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)       # PyTorch explains each refusal
                fwd = ml.bench.time_fn(F.scaled_dot_product_attention, q, k, v, is_causal=True,
                                       warmup=2, repeat=repeat).median
                fb = ml.bench.time_fn(train_step, warmup=1, repeat=repeat).median
                clear_grads(qg, kg, vg)
                mem = ml.bench.peak_memory(train_step, device=q.device)
            rows.append({"backend": name, "fwd time": fwd, "fwd+bwd time": fb, "fwd+bwd memory": mem,
                         "note": ""})
        except RuntimeError as err:                             # this backend cannot run here
            rows.append({"backend": name, "note": "not available: " + str(err).split(".")[0][:80]})
    return rows


formats = {"fwd time": ml.bench.fmt_time, "fwd+bwd time": ml.bench.fmt_time, "fwd+bwd memory": ml.bench.fmt_bytes}

# %% [markdown]
# The comparison that matters for FlashAttention runs on a GPU, in half precision:

# %%
if torch.cuda.is_available():
    shape = (ml.pick(smoke=1, cpu=2, gpu=4), 16, ml.pick(smoke=1024, cpu=2048, gpu=4096), 64)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    gpu_rows = time_backends([("FLASH_ATTENTION", SDPBackend.FLASH_ATTENTION),
                              ("EFFICIENT_ATTENTION", SDPBackend.EFFICIENT_ATTENTION),
                              ("CUDNN_ATTENTION", SDPBackend.CUDNN_ATTENTION),
                              ("MATH", SDPBackend.MATH)], q, k, v, repeat=ml.pick(smoke=3, cpu=10, gpu=20))
    display(ml.bench.Table(gpu_rows, title=f"F.sdpa backends on {torch.cuda.get_device_name()}, "
                           f"(B, H, T, d) = {shape}, bfloat16, causal", formats=formats))
else:
    print("No CUDA GPU in this run (see the banner), so the GPU backend table is skipped.\n"
          "FLASH_ATTENTION, EFFICIENT_ATTENTION and CUDNN_ATTENTION are CUDA kernels: run this\n"
          "notebook on a GPU (e.g. Colab) to time them against MATH. The stored numbers of this\n"
          "page come from the CPU.")

# %% [markdown]
# On CPU, PyTorch offers two of the backends: its fused, tiled C++ kernel (under the name
# FLASH_ATTENTION) and MATH. The others are CUDA kernels and report themselves unavailable:

# %%
T_cpu = ml.pick(smoke=512, cpu=2048, gpu=2048)
q, k, v = (torch.randn(1, 4, T_cpu, 64) for _ in range(3))
cpu_rows = time_backends([("FLASH_ATTENTION (fused CPU kernel)", SDPBackend.FLASH_ATTENTION),
                          ("MATH", SDPBackend.MATH),
                          ("EFFICIENT_ATTENTION", SDPBackend.EFFICIENT_ATTENTION)],
                         q, k, v, repeat=ml.pick(smoke=1, cpu=5, gpu=5))
cpu_by = {r["backend"].split()[0]: r for r in cpu_rows}
ratio = lambda col: cpu_by["MATH"].get(col, math.nan) / cpu_by["FLASH_ATTENTION"].get(col, math.nan)
display(ml.bench.Table(cpu_rows, title=f"F.sdpa backends on the CPU, (B, H, T, d) = (1, 4, {T_cpu}, 64), "
                       f"float32, causal", formats=formats))


def sdpa_train_step(backend, q, k, v):
    """One forward+backward of causal F.sdpa restricted to `backend`, as a callable."""
    g = torch.randn_like(q)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))

    def step():
        clear_grads(qg, kg, vg)
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True).backward(g)
    return step


# the training-time ratio, MATH against the fused kernel in alternating rounds
cpu_cmp = ml.bench.compare(sdpa_train_step(SDPBackend.MATH, q, k, v),
                           sdpa_train_step(SDPBackend.FLASH_ATTENTION, q, k, v),
                           warmup=1, repeat=ml.pick(smoke=2, cpu=7, gpu=7))
print(f"fused CPU kernel against MATH, forward+backward: {cpu_cmp} -> {cpu_cmp.verdict}")

# %% tags=["remove-cell"]
ml.glue("a31_cpu_T", T_cpu)
ml.glue("a31_cpu_fused_speedup_fb", cpu_cmp.speedup, ".1f")
ml.glue("a31_cpu_fused_iqr_fb", f"{cpu_cmp.lo:.1f}-{cpu_cmp.hi:.1f}x")
ml.glue("a31_cpu_fused_words_fb", cpu_cmp.words(faster="faster than", slower="slower than",
                                                same="no faster or slower, within the noise, than"))
ml.glue("a31_cpu_fused_mem_ratio", ratio("fwd+bwd memory"), ".0f")

# %% [markdown]
# On this CPU, at $T =$ {glue:}`a31_cpu_T` with a causal mask, the fused kernel trains at
# {glue:}`a31_cpu_fused_speedup_fb` times MATH's speed (IQR {glue:}`a31_cpu_fused_iqr_fb`
# over alternating rounds: {glue:}`a31_cpu_fused_words_fb` MATH) and uses
# {glue:}`a31_cpu_fused_mem_ratio` times less memory. Whether the GPU kernels reach the
# speedups the papers report cannot be measured on this machine; the GPU cell above does it
# wherever a GPU is present.

# %% [markdown]
# ## Claimed vs measured
#
# | source | claim | measured here | conditions |
# | --- | --- | --- | --- |
# | {cite}`vaswani2017attention` | dot products grow large in magnitude with $d$, pushing the softmax into regions of tiny gradients; scaling by $1/\sqrt d$ counters it | $\operatorname{Var}(q\cdot k)/d =$ {glue:}`a31_var_over_d`; unscaled max weight {glue:}`a31_maxw_unscaled` vs {glue:}`a31_maxw_scaled` scaled, Jacobian {glue:}`a31_jac_ratio` times larger with the scale | random unit-variance $q, k$, $d=$ {glue:}`a31_dmax`, 128 keys |
# | {cite}`milakov2018online` | the softmax normalizer can be computed online, in one pass, exactly (and the paper measures softmax up to 1.3x faster from fewer memory accesses) | exact: max error {glue:}`a31_online_err` for one query row and {glue:}`a31_tiled_worst` for tiled attention, in float64; speed of a fused softmax not measured | CPU, float64 |
# | {cite}`dao2022flashattention` | exact attention with memory linear in sequence length | memory grows as $T^p$ with $p =$ {glue:}`a31_slope_fwd_tiled` (forward) and {glue:}`a31_slope_fb_tiled` (training) for tiled, {glue:}`a31_slope_fb_naive` for naive (slope of the growth, section 3.1.2.3) | CPU, one head, $d=64$, $T\le$ {glue:}`a31_Tmax` |
# | {cite}`dao2022flashattention` | faster than standard attention on GPU (e.g. 3x end-to-end training speedup on GPT-2 at 1K tokens), because HBM traffic drops | **not measurable here**: no GPU. On CPU our unfused tiled loop takes {glue:}`a31_tiled_fb_ratio_min` to {glue:}`a31_tiled_fb_ratio_max` times the naive training time; PyTorch's fused CPU kernel {glue:}`a31_sdpa_time_ratio_fb` times at $T=$ {glue:}`a31_Tmax` | CPU; the GPU cell of section 3.1.2.4 measures it on a GPU |
# | {cite}`rabe2021selfattention` | $O(\sqrt n)$ memory in practice ($O(1)$ per query); at $n=16384$ the attention memory overhead drops 59x for inference and 32x for differentiation | {glue:}`a31_save_fwd`x (inference) and {glue:}`a31_save_fb`x (training) less memory than naive, at $T=$ {glue:}`a31_Tmax` | ours is $O(T)$ (we store the output), at half or less their $n$ |
# | {cite}`dao2024flashattention2` | with a causal mask, skipping the tiles above the diagonal makes attention about 1.7-1.8x faster than without the mask | causal / full FLOPs {glue:}`a31_causal_fraction` at $T=$ {glue:}`a31_causal_T` (tiles of 64): the work is about halved; time not measured | FLOP counter; the speedup needs the CUDA kernel |
#
# **Further reading** (claims this notebook does not measure): FlashAttention-2
# {cite}`dao2024flashattention2` reports about 2x the speed of FlashAttention-1 on GPUs,
# from better parallelism (query blocks in the outer loop, as in our `tiled_attention`)
# and fewer non-matmul FLOPs; that speed lives in the CUDA kernel, which a Python loop on
# a CPU cannot show.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: merging two online-softmax states (implement, medium)
# You have run the online softmax separately over two disjoint sets of keys $A$ and $B$
# and hold their states $(m_A, \ell_A, o_A)$ and $(m_B, \ell_B, o_B)$. Derive the state of
# $A \cup B$, implement `merge`, and check it against `out_ref` by splitting the keys of
# `online_attention_row`'s example (`q1`, `K1`, `V1`) into two parts, at every split
# point. (This is how FlashAttention's "split-K" decoding kernels combine partial results
# from several thread blocks.)

# %% tags=["solution", "hide-cell"]
# Solution 1
def state(q, K, V):
    """(m, l, o) of the online softmax of one query q over keys K (n, d) and values V (n, dv)."""
    s = K @ q / math.sqrt(q.shape[0])                # (n,) scores
    m = s.max()
    p = torch.exp(s - m)
    return m, p.sum(), p @ V                         # running max, sum of e^(s - m), unnormalized output


def merge(a, b):
    """The state of the union of two disjoint key sets, from the state of each."""
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    m = torch.maximum(m_a, m_b)
    c_a, c_b = torch.exp(m_a - m), torch.exp(m_b - m)   # move both states to the common max
    return m, c_a * l_a + c_b * l_b, c_a * o_a + c_b * o_b


merge_err = 0.0
for cut in range(1, K1.shape[0]):                    # every split of the keys into two parts
    m, l, o = merge(state(q1, K1[:cut], V1[:cut]), state(q1, K1[cut:], V1[cut:]))
    merge_err = max(merge_err, max_err(o / l, out_ref))
thirds = [state(q1, K1[i:i + 4], V1[i:i + 4]) for i in (0, 4, 8)]
for m, l, o in (merge(merge(thirds[0], thirds[1]), thirds[2]), merge(thirds[0], merge(thirds[1], thirds[2]))):
    merge_err = max(merge_err, max_err(o / l, out_ref))   # both bracketings of three blocks
assert merge_err < 1e-12, merge_err                  # float64 (eps = 2.2e-16), 12 keys
print(f"merged states vs softmax(s) @ V, every split and both bracketings: max error < 1e-12: {merge_err < 1e-12}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# Move both states to the common maximum $m = \max(m_A, m_B)$, exactly as a single update
# does:
#
# $$\ell = e^{m_A - m}\ell_A + e^{m_B - m}\ell_B, \qquad o = e^{m_A - m} o_A + e^{m_B - m} o_B .$$
#
# One of the two factors is 1 and the other at most 1, so nothing overflows. The code above
# checks every split of the 12 keys and both ways of bracketing three blocks: the merge is
# associative (and commutative), so the key blocks can be reduced in any order or in a
# tree, in parallel, and the online softmax of section 3.1.2.1 is the special case in which
# $B$ holds a single key.
# :::

# %% [markdown]
# ### Exercise 2: the score matrix of a long context (explain, easy)
# A model with 32 heads reads a 32k-token context ($T = 32768$). How much memory does one
# layer's score matrix take for one sequence in float32 and in bfloat16? Compare with the
# 80 GB of an H100. What does FlashAttention store instead, for $d = 128$?

# %% tags=["solution", "hide-cell"]
# Solution 2
H_long, T_long, d_long = 32, 32768, 128
GiB = 2**30
n_scores = H_long * T_long**2                        # one layer, one sequence: H T^2 scores
n_out = T_long * H_long * d_long                     # FlashAttention's output O: (T, H d)
n_lse = H_long * T_long                              # and its log-sum-exp L: one per query and head
h100 = 80e9                                          # bytes
print(f"scores: H T^2 = 2^{n_scores.bit_length() - 1} numbers: {n_scores * 4 / GiB:.0f} GiB in float32, "
      f"{n_scores * 2 / GiB:.0f} GiB in bfloat16; an H100 holds 80 GB = {h100 / GiB:.1f} GiB")
print(f"share of an H100 taken by one layer's scores: float32 {n_scores * 4 / h100:.0%}, "
      f"bfloat16 {n_scores * 2 / h100:.0%}")
print(f"FlashAttention stores O: {n_out * 2 / MiB:.0f} MiB in bfloat16, and L: {n_lse * 4 / MiB:.0f} MiB in float32")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The score matrix holds $H T^2 = 32 \cdot 32768^2 = 2^{35}$ numbers per layer and per
# sequence, 4 bytes each in float32 and 2 in bfloat16; the printout converts them to GiB
# and to a share of an H100's memory. In float32 one layer's scores do not fit; in
# bfloat16 they alone take most of the GPU, before the weights $P$ (the same size again),
# the gradients and the model. FlashAttention stores the output $O$,
# $T \times Hd = 32768 \times 4096$ numbers (needed anyway as the layer's output), and
# the log-sum-exp $L$, $HT$ float32 numbers. Scores outnumber outputs by
# $H T^2 / (T H d) = T/d$, a ratio that grows with the context.
# :::

# %% [markdown]
# ### Exercise 3: causal skipping (explain, medium)
# With tiles of $b$ and $n = T/b$ tiles per side, how many tiles does causal tiled
# attention visit, and what fraction of the full FLOPs is that? Check your formula against
# the fraction measured in section 3.1.2.2 ({glue:}`a31_causal_fraction` at
# $T=$ {glue:}`a31_causal_T`). How many FLOPs does the *naive* causal version save by
# masking?

# %% tags=["solution", "hide-cell"]
# Solution 3
n_tiles = T_c // b_c                                 # tiles per side, as in section 3.1.2.2
print(f"T = {T_c}, b = {b_c}: n = {n_tiles}, (n+1)/(2n) = {(n_tiles + 1) / (2 * n_tiles):.4f}, "
      f"measured causal / full FLOPs = {causal_fraction:.4f}")
assert flops_causal * 2 * n_tiles == flops_full * (n_tiles + 1)   # FLOP counts are integers: exact
qn, kn, vn = (torch.randn(1, 1, T_c, 64) for _ in range(3))
naive_full = ml.bench.count_flops(ml.attention.scaled_dot_product, qn, kn, vn)
naive_causal = ml.bench.count_flops(ml.attention.scaled_dot_product, qn, kn, vn, causal=True)
assert naive_causal == naive_full
print(f"naive attention, causal and full: the same FLOPs: {naive_causal == naive_full}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# Query block $i$ visits key blocks $0, \dots, i$: $\sum_{i=1}^{n} i = n(n+1)/2$ tiles, a
# fraction $(n+1)/(2n)$ of the $n^2$, which tends to $\tfrac12$ as $n$ grows. Every tile
# costs the same two $b \times b \times d$ products, so the FLOP ratio is exactly the tile
# ratio: the printout checks the identity in integers at the $T$ and $b$ of section
# 3.1.2.2. The naive version saves nothing: it computes all $T^2$ scores, then overwrites
# the future half with $-\infty$. The diagonal tiles are half wasted too, which is the
# $1/(2n)$ above $\tfrac12$; FlashAttention's kernels also skip masked tiles, and some
# split the diagonal tiles further.
# :::

# %% [markdown]
# ### Exercise 4: block size (measure, medium)
# Time `ml.attention.tiled_attention` forward at $T = 4096$ (one head, $d = 64$) for block
# sizes 64 to 2048, with `ml.bench.time_fn`, and measure its peak memory with
# `ml.bench.peak_memory`. Tabulate both against the block size and explain the two trends.

# %% tags=["solution", "hide-cell"]
# Solution 4
T_bs = ml.pick(smoke=512, cpu=4096, gpu=4096)
q, k, v = (torch.randn(1, 1, T_bs, 64, device=dev) for _ in range(3))
block_rows = []
for b in ml.trim([b for b in (64, 128, 256, 512, 1024, 2048) if b <= T_bs]):
    t = ml.bench.time_fn(ml.attention.tiled_attention, q, k, v, block_size=b,
                         warmup=1, repeat=ml.pick(smoke=1, cpu=3, gpu=5)).median
    peak = ml.bench.peak_memory(ml.attention.tiled_attention, q, k, v, block_size=b)
    tiles = math.ceil(T_bs / b) ** 2
    block_rows.append({"block size b": b, "tiles (T/b)^2": tiles, "fwd time (ms)": t * 1e3,
                       "time per tile (us)": t / tiles * 1e6, "peak memory (MiB)": peak / MiB,
                       "one b x b tile (MiB)": 4 * b * b / MiB})
fastest, largest = min(block_rows, key=lambda r: r["fwd time (ms)"]), block_rows[-1]
print(f"fastest block size on {dev.type} at T = {T_bs}: b = {fastest['block size b']}; the largest, "
      f"b = {largest['block size b']}, takes {largest['fwd time (ms)'] / fastest['fwd time (ms)']:.1f} times as long")
ml.bench.Table(block_rows, title=f"tiled_attention forward, T = {T_bs}, one head, d = 64, float32, on {dev.type}",
               formats={"fwd time (ms)": "{:.1f}", "time per tile (us)": "{:.0f}",
                        "peak memory (MiB)": "{:.2f}", "one b x b tile (MiB)": "{:.3f}"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# **Memory.** The peak is the output $O$ and the log-sum-exp ($O(Td)$, the same for every
# $b$) plus a few $b \times b$ tiles of scores and weights. For small blocks the fixed part
# dominates and the column barely moves; once the tiles outgrow it the peak follows the
# last column, a few tiles, and grows as $b^2$. At $b = T$ a tile is the whole
# $T \times T$ matrix: the naive version's memory.
#
# **Time.** The arithmetic is the same $4T^2d$ FLOPs at every $b$, but the loop makes
# $(T/b)^2$ iterations, each a dozen small PyTorch operations with a fixed dispatch cost.
# While that fixed cost dominates, the time per tile stays roughly constant, and doubling
# $b$ divides the total by up to 4 (a quarter of the tiles); once a tile holds enough work
# for the fixed cost to fade, the time per tile grows as $b^2$ like the work and the total
# flattens. Beyond that, tiles that no longer fit in the CPU's caches cost memory traffic
# again, which is what the printout's comparison of the largest block with the fastest
# one measures. On a GPU the same trade-off sets $b$, with a hard limit: the tiles of $Q$,
# $K$, $V$ and $S$ must fit in the SRAM of one streaming multiprocessor.
# :::

# %% [markdown]
# ### Exercise 5: the backward from the log-sum-exp (implement, medium)
# For one query $q$ over keys `K1` and values `V1`, write `row_backward(q, K, V, o, L, do)`
# that returns $dq$, $dK$, $dV$ from the forward's output $o$, its log-sum-exp
# $L = m + \log \ell$ and an upstream gradient $dO$, with the formulas of section 3.1.2.2:
# recompute $P$ from $L$, take $\delta = dO \cdot o$, and call no softmax. Check it
# against autograd through the textbook softmax, in float64.

# %% tags=["solution", "hide-cell"]
# Solution 5
def row_backward(q, K, V, o, L, do):
    """dq (d,), dK (n, d), dV (n, dv) of o = softmax(K q / sqrt(d)) V, from the saved o and L."""
    scale = 1 / math.sqrt(q.shape[0])
    p = torch.exp(K @ q * scale - L)                 # (n,) P_j = e^(S_j - L), recomputed
    dv = torch.outer(p, do)                          # (n, dv) dV = P^T dO
    dp = V @ do                                      # (n,) dP_j = dO . v_j
    ds = p * (dp - do @ o)                           # (n,) dS_j = P_j (dP_j - delta), delta = dO . o
    return scale * ds @ K, scale * torch.outer(ds, q), dv


ml.seed_all(8)
qg, Kg, Vg = (t.clone().requires_grad_() for t in (q1, K1, V1))
s_row = Kg @ qg / math.sqrt(qg.shape[0])
o_row = torch.softmax(s_row, dim=0) @ Vg
do_row = torch.randn_like(o_row)
L_row = torch.logsumexp(s_row, dim=0)                # what the forward saves: m + log l
grads_autograd = torch.autograd.grad(o_row, (qg, Kg, Vg), do_row)
grads_ours = row_backward(q1, K1, V1, o_row.detach(), L_row.detach(), do_row)
backward_err = max(max_err(a, b) for a, b in zip(grads_ours, grads_autograd))
assert backward_err < 1e-12, backward_err            # float64 (eps = 2.2e-16), 12 keys
print(f"row_backward vs autograd (float64): dq, dK, dV max error < 1e-12: {backward_err < 1e-12}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# The forward saved only $o$ and $L$; $P_j = e^{S_j - L}$ is one exponential per key, so
# $P$ costs a recomputation of the scores instead of storage. The rest is the chain rule
# of section 3.1.2.2 for a single row: $dV = P^\top dO$ (an outer product), $dP_j =
# dO \cdot v_j$, and $dS_j = P_j (dP_j - \delta)$, where $\delta = \sum_j P_j\, dP_j =
# dO \cdot o$ needs no $P$ at all; then $dq = \text{scale}\sum_j dS_j k_j$ and
# $dk_j = \text{scale}\; dS_j\, q$. `ml.attention._flash_backward` does exactly this, for
# a tile of queries at a time and summed over the key tiles.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Attention is $\operatorname{softmax}(QK^\top/\sqrt d + M)V$; $1/\sqrt d$ keeps the scores
#   at unit variance so the softmax does not saturate. Masks are $-\infty$ entries; rows with
#   no visible key need a safe softmax to give 0 instead of NaN.
# - It costs $4BHT^2d$ FLOPs, and written naively a few $T \times T$ matrices of memory per
#   head and layer, more in training: memory, not arithmetic, is the first wall for long
#   contexts.
# - The online softmax (running max, running sum, rescaling by $e^{m - m'}$) makes attention
#   computable one block of keys at a time; FlashAttention tiles queries and keys, saves the
#   log-sum-exp, and recomputes the weights in the backward pass: exact results in $O(T)$
#   memory, which we measured.
# - Memory-efficient is not fast by itself: our tiled loop took {glue:}`a31_tiled_fb_ratio_min`
#   to {glue:}`a31_tiled_fb_ratio_max` times the naive training time on the machine in the banner.
#   The speed of FlashAttention comes from one fused kernel keeping the tiles in on-chip
#   SRAM; in PyTorch, use `F.scaled_dot_product_attention`, which dispatches to such a kernel.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
