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
# # 4.1 Why tokens cost: a ViT block as the token count shrinks
#
# A Vision Transformer turns an image into $N$ patch tokens and runs every block on all of
# them {cite}`dosovitskiy2021vit`. Its cost therefore has two parts that scale differently:
# the projections and the MLP touch each token once, $O(NC^2)$, and attention compares
# every token with every other one, $O(N^2C)$. Halving the patch side multiplies $N$ by
# four, and the ViT paper warns that "models with smaller patch size are computationally
# more expensive". The token reduction methods of this chapter, pruning by attention
# {cite}`rao2021dynamicvit,liang2022evit`, merging {cite}`bolya2023tome` and staged dropping
# {cite}`xing2025pyramiddrop`, all bet on the same fact: many tokens carry little, and each
# one removed early saves work in every later block, quadratically in attention. Whether
# that bet pays depends on how many tokens there are and on where the time really goes,
# which FLOPs alone do not say. This notebook counts and measures both, and trains the
# 256-token ViT that notebooks 4.2 and 4.3 prune.
#
# **Learning objectives.** After this notebook you can
# 1. count the FLOPs of a transformer block, $(8 + 4m)NC^2 + 4N^2C$, check the count
#    against PyTorch's FLOP counter, and say at which $N$ attention dominates;
# 2. predict what keeping a fraction $\rho$ of the tokens saves, $\rho$ in the linear
#    layers and $\rho^2$ in attention;
# 3. measure the time of a block as $N$ shrinks, at batch 1 and at a large batch, and
#    explain why the measured saving falls short of the FLOP saving at small $N$;
# 4. explain why a 64-token CIFAR ViT gains little from token reduction and a 256-token
#    ViT gains a lot, and train that ViT as a cached `ml.baselines` variant.

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

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 4.1.1 The FLOPs of one block
#
# A pre-norm block maps $N$ tokens of width $C$ through attention with a fused $QKV$
# projection and an output projection, then through an MLP of hidden width $mC$. Counting
# a multiply-add as 2 FLOPs:
#
# | part | matrix products | FLOPs |
# | --- | --- | --- |
# | $QKV$ projection | $(N, C) \times (C, 3C)$ | $6NC^2$ |
# | scores $QK^\top$, all heads | $(N, d) \times (d, N)$ per head | $2N^2C$ |
# | weighted sum $PV$ | $(N, N) \times (N, d)$ per head | $2N^2C$ |
# | output projection | $(N, C) \times (C, C)$ | $2NC^2$ |
# | MLP | $(N, C) \times (C, mC)$, $(N, mC) \times (mC, C)$ | $4mNC^2$ |
#
# $$F(N) = \underbrace{(8 + 4m)\,N C^2}_{\text{linear layers}} + \underbrace{4 N^2 C}_{\text{attention}},
# \qquad \frac{F_\text{attn}}{F} = \frac{N}{N + (2 + m)\,C}.$$
#
# Attention takes half the FLOPs at $N = (2 + m)C$. The book's CIFAR ViTs have $C = 64$ and
# $m = 2$ at the cpu scale, so the crossover is at $N = 256$: the patch-4 ViT (65 tokens with
# the class token) spends a fifth of its block FLOPs in attention, the patch-2 ViT (257
# tokens) half. LayerNorm, softmax and GELU add a few elementwise FLOPs per token that
# PyTorch's counter does not charge; we leave them out too, and check the formula against
# `ml.bench.count_flops` on a real block:

# %%
DIM, HEADS, MLP_RATIO = 64, 4, 2.0


def block_flops(N, C=DIM, m=MLP_RATIO):
    """(linear, attention) matmul FLOPs of one pre-norm block on N tokens of width C."""
    return (8 + 4 * m) * N * C**2, 4 * N**2 * C


block = ml.models.Block(DIM, HEADS, mlp_ratio=MLP_RATIO).eval()
checked = {N: ml.bench.count_flops(block, torch.zeros(1, N, DIM)) == sum(block_flops(N))
           for N in (17, 65, 257)}
print("formula == ml.bench.count_flops for N in", list(checked), ":", all(checked.values()))
assert all(checked.values())

# %% [markdown]
# The attention share depends on $N$ and $C$ only. Below it is drawn for the book's ViT and
# for three ImageNet models with $m = 4$ (DeiT-S, ViT-B and ViT-L have $C = 384, 768, 1024$),
# with the token counts where the papers of this chapter report their speed-ups: 197 tokens
# for DeiT-S at 224 px (EViT, DynamicViT), 1,025 for ViT-L at 512 px (ToMe's headline 2x).

# %%
Ns = np.logspace(1, 4, 200)
with ml.plot.house_style():
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for C, m, label in [(64, 2, "book ViT, C = 64, m = 2"), (384, 4, "DeiT-S, C = 384"),
                        (768, 4, "ViT-B, C = 768"), (1024, 4, "ViT-L, C = 1024")]:
        ax.semilogx(Ns, Ns / (Ns + (2 + m) * C), label=label)
    for N, text in [(65, "patch 4\n(65)"), (257, "patch 2\n(257)"), (197, "224 px\n(197)"),
                    (1025, "ViT-L 512 px\n(1,025)")]:
        ax.axvline(N, color="0.6", lw=0.8, ls=":")
        ax.text(N * 1.04, 0.02, text, fontsize=7, color="0.35")
    ax.set(xlabel="tokens N", ylabel="attention share of block FLOPs", ylim=(0, 1),
           title="Attention dominates once N > (2 + m) C")
    ax.legend(fontsize=7, loc="upper left")
    plt.show()

# %% [markdown]
# ## 4.1.2 What keeping a fraction of the tokens saves
#
# Keep $\rho N$ of the $N$ tokens and each later block costs
#
# $$\frac{F(\rho N)}{F(N)} = \rho\,(1 - s) + \rho^2 s, \qquad s = \frac{F_\text{attn}(N)}{F(N)}:$$
#
# the linear layers shrink with $\rho$, attention with $\rho^2$. With $s \approx 0.2$ (the
# patch-4 ViT) keeping half the tokens leaves $0.5 \cdot 0.8 + 0.25 \cdot 0.2 = 45\%$ of the
# work; with $s \approx 0.5$ (patch 2) it leaves $37.5\%$. That is the FLOP side. Time is
# another matter: a CPU or GPU runs a small matrix product far below its peak, and the
# fixed cost of launching each of the block's dozen operations does not shrink with $N$.
# So we measure.
#
# ## 4.1.3 Measured: the time of one block as N shrinks
#
# We time one block (width 64, 4 heads, $m = 2$, as the cpu-scale ViTs) in inference mode
# with `ml.bench.time_fn` (median of repeated runs, after warm-up), for token counts from
# 17 to 513, at batch 1 (one image, latency) and at a large batch (throughput). The
# attention (with its LayerNorm) and the MLP (with its LayerNorm) are also timed on their
# own, to see where the time goes.

# %%
token_counts = [17, 33, 65, 129, 257] + ml.trim(ml.pick(smoke=[], cpu=[513], gpu=[513, 1025]), keep=0)
batches = ml.pick(smoke=[1, 8], cpu=[1, 64], gpu=[1, 256])
repeat = ml.pick(smoke=5, cpu=15, gpu=30)
block = ml.models.Block(DIM, HEADS, mlp_ratio=MLP_RATIO).to(dev).eval()

rows = []
with torch.inference_mode():
    for B in batches:
        for N in token_counts:
            x = torch.randn(B, N, DIM, device=dev)
            t_block = ml.bench.time_fn(block, x, repeat=repeat)
            t_attn = ml.bench.time_fn(lambda: block.attn(block.norm1(x)), repeat=repeat)
            t_mlp = ml.bench.time_fn(lambda: block.mlp(block.norm2(x)), repeat=repeat)
            lin, att = block_flops(N)
            rows.append({"batch": B, "tokens N": N, "time": t_block,
                         "attention share of time (%)": 100 * t_attn.median / (t_attn.median + t_mlp.median),
                         "attention share of FLOPs (%)": 100 * att / (lin + att),
                         "GFLOP/s": B * (lin + att) / t_block.median / 1e9})
block_table = ml.bench.Table(rows, title=f"One ViT block (C = {DIM}, {HEADS} heads, m = {MLP_RATIO:g}), "
                             f"inference, fp32 on {dev.type}",
                             formats={"attention share of time (%)": ".0f",
                                      "attention share of FLOPs (%)": ".0f", "GFLOP/s": ".1f"})
block_table

# %%
def t_of(B, N):
    return next(r["time"].median for r in rows if r["batch"] == B and r["tokens N"] == N)


with ml.plot.house_style():
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, B in zip(axes, batches):
        t = np.array([t_of(B, N) for N in token_counts])
        f = np.array([sum(block_flops(N)) for N in token_counts])
        ax.loglog(token_counts, 1e3 * t, "o-", label="measured")
        ax.loglog(token_counts, 1e3 * t[-1] * f / f[-1], "k--", alpha=0.5,
                  label="proportional to FLOPs")
        ax.set(xlabel="tokens N", ylabel="time per call (ms)", title=f"batch {B}")
        ax.legend(fontsize=8)
    fig.suptitle("A ViT block: time follows FLOPs only when there is enough work")
    plt.show()

# %% [markdown]
# What a halving of the tokens buys, measured: the time at $N$ over the time at about $N/2$
# (the class token stays, so 65 becomes 33 and 257 becomes 129), next to the FLOP ratio.

# %%
half_rows = []
for B in batches:
    for N in token_counts[1:]:
        n_half = token_counts[token_counts.index(N) - 1]
        half_rows.append({"batch": B, "from N": N, "to N": n_half,
                          "FLOP ratio": sum(block_flops(N)) / sum(block_flops(n_half)),
                          "time ratio (measured)": t_of(B, N) / t_of(B, n_half)})
half_table = ml.bench.Table(half_rows, title="Speed-up of one block from halving the tokens",
                            formats={"FLOP ratio": ".2f", "time ratio (measured)": ".2f"})
half_table

# %% tags=["remove-cell"]
B_small, B_large = batches
N4, N2 = 65, 257
ml.glue("t41_half_p4_b1", t_of(B_small, N4) / t_of(B_small, 33), ".2f")
ml.glue("t41_half_p2_b1", t_of(B_small, N2) / t_of(B_small, 129), ".2f")
ml.glue("t41_half_p4_bl", t_of(B_large, N4) / t_of(B_large, 33), ".2f")
ml.glue("t41_half_p2_bl", t_of(B_large, N2) / t_of(B_large, 129), ".2f")
ml.glue("t41_flop_half_p4", sum(block_flops(N4)) / sum(block_flops(33)), ".2f")
ml.glue("t41_flop_half_p2", sum(block_flops(N2)) / sum(block_flops(129)), ".2f")
ml.glue("t41_b_large", B_large)
share = {(r["batch"], r["tokens N"]): r["attention share of time (%)"] for r in rows}
ml.glue("t41_attn_time_p4", share[(B_large, N4)], ".0f")
ml.glue("t41_attn_time_p2", share[(B_large, N2)], ".0f")
ml.glue("t41_attn_flop_p2", 100 * block_flops(N2)[1] / sum(block_flops(N2)), ".0f")
cross = next((N for N in token_counts if share[(B_large, N)] >= 50), None)
ml.glue("t41_cross_time", f"N = {cross:,}" if cross else f"beyond N = {token_counts[-1]:,}")
ml.glue("t41_gflops_max", max(r["GFLOP/s"] for r in rows), ".1f")
ml.glue("t41_gflops_min", min(r["GFLOP/s"] for r in rows), ".2f")

# %% [markdown]
# On this machine, halving 65 tokens to 33 makes the block {glue:}`t41_half_p4_b1`x faster
# at batch 1 and {glue:}`t41_half_p4_bl`x at batch {glue:}`t41_b_large`, where the FLOPs
# promise {glue:}`t41_flop_half_p4`x. Halving 257 to 129 gives {glue:}`t41_half_p2_b1`x and
# {glue:}`t41_half_p2_bl`x (FLOPs: {glue:}`t41_flop_half_p2`x). A small block on a handful
# of tokens is bound by the fixed cost of its operations, not by arithmetic: the achieved
# rate ranges from {glue:}`t41_gflops_min` to {glue:}`t41_gflops_max` GFLOP/s across the
# table, and removing tokens only removes arithmetic. At batch {glue:}`t41_b_large`,
# attention takes {glue:}`t41_attn_time_p4`% of the block's time at 65 tokens and
# {glue:}`t41_attn_time_p2`% at 257 (of the FLOPs: {glue:}`t41_attn_flop_p2`%); it takes
# more than half of the time from {glue:}`t41_cross_time` on. Attention's time share can
# exceed its FLOP share: its small per-head products and the softmax run further below the
# machine's peak than the wide MLP products do.
#
# This is why the chapter prunes a ViT with more tokens. On the patch-4 ViT, halving every
# block's tokens is the best case of any reduction method, the 65 -> 33 rows of the table; on a
# 256-token ViT there is real time to win, and more of it at large batch than at batch 1.
#
# ## 4.1.4 A ViT with 256 tokens
#
# Chapter 1's ViT cuts the $32 \times 32$ image into $4 \times 4$ patches. With $2 \times 2$
# patches the same recipe sees 256 patch tokens of 12 numbers each. We train it through
# `ml.baselines.cifar_vit(variant="p2", patch_size=2, ...)`, the same function as chapter 1's
# ViT, so that it is cached like the baselines: `ml.tokens.vit_p2()` returns it in a second
# from now on, in this chapter and in any later one. Four times the tokens cost about six
# times the compute per image at this width, so at the cpu and gpu scales the variant pins the width and
# depth and shortens the schedule (the table shows what differs from chapter 1's ViT).

# %%
ml.show(ml.tokens.vit_p2)

# %%
vit4, rec4 = ml.baselines.cifar_vit()
vit2, rec2 = ml.tokens.vit_p2()

# %%
def vit_row(name, vit, rec):
    cfg, met = rec["config"], rec["metrics"]
    p, n_test = met["test_accuracy"], cfg["n_test"]
    return {"model": name, "tokens": vit.num_patches + 1,
            "width x depth": f"{cfg['dim']} x {cfg['depth']}",
            "training images": f"{cfg['n_train']:,} x {cfg['epochs']}",
            "MFLOP / image": met["flops_per_sample"] / 1e6,
            "train time (s)": rec["train_seconds"],
            "test accuracy (%)": f"{100 * p:.1f} ± {100 * ml.bench.accuracy_se(p, n_test):.1f}"}


vits_table = ml.bench.Table([vit_row("ViT, patch 4 (ch. 1)", vit4, rec4), vit_row("ViT, patch 2", vit2, rec2)],
                            title="The two CIFAR-10 ViTs (accuracy ± its standard error on the test images)",
                            formats={"MFLOP / image": ".1f", "train time (s)": ".0f"})
vits_table

# %% [markdown]
# And their measured cost per image, compared in one interleaved run with `ml.bench.compare`
# (the ratio is the patch-4 ViT's speed over the patch-2 ViT's):

# %%
x1 = torch.randn(1, 3, 32, 32, device=dev)
xb = torch.randn(ml.trim(ml.pick(smoke=16, cpu=256, gpu=1024), keep=8), 3, 32, 32, device=dev)
with torch.inference_mode():
    cost = {f"batch {len(x)}": ml.bench.compare(lambda: vit2(x), lambda: vit4(x),
                                                repeat=ml.pick(smoke=5, cpu=15, gpu=30))
            for x in (x1, xb)}
cost_table = ml.bench.Table([{"batch": k, "patch 4 vs patch 2 (speed ratio)": v} for k, v in cost.items()],
                            title="How much faster the 65-token ViT runs than the 257-token one")
cost_table

# %% tags=["remove-cell"]
ml.glue("t41_acc_p4", 100 * rec4["metrics"]["test_accuracy"], ".1f")
ml.glue("t41_acc_p2", 100 * rec2["metrics"]["test_accuracy"], ".1f")
ml.glue("t41_flops_p4", rec4["metrics"]["flops_per_sample"] / 1e6, ".1f")
ml.glue("t41_flops_p2", rec2["metrics"]["flops_per_sample"] / 1e6, ".1f")
ml.glue("t41_flop_ratio", rec2["metrics"]["flops_per_sample"] / rec4["metrics"]["flops_per_sample"], ".1f")
ml.glue("t41_train_p2", rec2["train_seconds"], ".0f")
ml.glue("t41_speed_b1", cost["batch 1"].speedup, ".1f")
ml.glue("t41_speed_bl", cost[f"batch {len(xb)}"].speedup, ".1f")
ml.glue("t41_bl", len(xb))
ml.glue("t41_ntest", rec2["config"]["n_test"], ",")

# %% [markdown]
# The patch-2 ViT costs {glue:}`t41_flops_p2` MFLOP per image against
# {glue:}`t41_flops_p4` for patch 4 ({glue:}`t41_flop_ratio`x), and runs
# {glue:}`t41_speed_b1`x slower at batch 1 and {glue:}`t41_speed_bl`x slower at batch
# {glue:}`t41_bl`. It reaches {glue:}`t41_acc_p2`% on {glue:}`t41_ntest` test images
# against {glue:}`t41_acc_p4`% for chapter 1's ViT. The two were not trained on the same
# schedule, so that pair is not a patch-size ablation: it fixes the starting point of the
# next two notebooks, a ViT where half the work is attention and where tokens are cheap to
# lose. Notebook 4.2 builds the methods that remove them; notebook 4.3 measures what they
# buy on this model.
#
# ## 4.1.5 Claimed vs measured
#
# | paper | claim | measured here | conditions |
# | --- | --- | --- | --- |
# | ViT {cite}`dosovitskiy2021vit` | the sequence length grows as the inverse square of the patch size, "thus models with smaller patch size are computationally more expensive" | patch 2 vs patch 4: {glue:}`t41_flop_ratio`x the FLOPs, {glue:}`t41_speed_b1`x (batch 1) and {glue:}`t41_speed_bl`x (batch {glue:}`t41_bl`) the time | the book's CIFAR ViTs; the machine in the banner |
# | Transformer {cite}`vaswani2017attention` | self-attention costs $O(N^2 d)$ per layer against $O(N d^2)$ for the projections | the FLOP formula equals PyTorch's count; attention's share of a block's time at batch {glue:}`t41_b_large` rises from {glue:}`t41_attn_time_p4`% (65 tokens) to {glue:}`t41_attn_time_p2`% (257) | one block, $C = 64$, inference |
#
# The speed-ups the pruning papers report (2x for ViT-L at 1,025 tokens for ToMe, +50% for
# DeiT-S at 197 tokens for EViT) were measured on GPUs at large batch, where the time
# follows the FLOPs closely; notebook 4.3 measures what the methods give on this model.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: attention's share in the papers' models (explain, easy)
# With the formula of section 4.1.1, compute the attention share of the block FLOPs of
# DeiT-S at 224 px ($C = 384$, $m = 4$, 197 tokens) and of ViT-L at 512 px ($C = 1024$,
# 1,025 tokens). If ToMe halves the tokens, what fraction of the block FLOPs is left in each?

# %% tags=["solution", "hide-cell"]
# Solution 1
for name, N, C in [("DeiT-S @ 224", 197, 384), ("ViT-L @ 512", 1025, 1024)]:
    lin, att = block_flops(N, C, 4)
    s = att / (lin + att)
    print(f"{name}: attention share {s:.1%}; half the tokens leave {0.5 * (1 - s) + 0.25 * s:.1%} of the FLOPs")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# DeiT-S at 197 tokens spends about 8% of its block FLOPs in attention, ViT-L at 1,025 about
# 14%, so halving the tokens leaves about 48% and 46% of the work: in FLOPs both are close
# to the linear $\rho = 0.5$, because $C$ is large. The quadratic term matters most when $N$
# is large *relative to* $C$, as in the book's narrow ViT at 257 tokens (half) or in
# high-resolution inputs; the measured speed-ups also depend on how well the hardware runs
# the smaller products (section 4.1.3).
# :::

# %% [markdown]
# ### Exercise 2: count what the counter leaves out (implement, medium)
# PyTorch's FLOP counter charges matrix products only. Write `block_flops_all(N, C, m, heads)`
# that also counts the elementwise work: two LayerNorms (about 8 FLOPs per element), the
# softmax (about 5 per score), the scaling of the scores, GELU (about 8 per hidden
# element) and the two residual additions. Check that it reduces to `block_flops` when you
# set those per-element costs to 0, and report what fraction of the total the elementwise
# work is at $N = 65$ and $N = 257$.

# %% tags=["solution", "hide-cell"]
# Solution 2
def block_flops_all(N, C=DIM, m=MLP_RATIO, heads=HEADS, ln=8, soft=5, scale=1, gelu=8, resid=1):
    """(total, elementwise) FLOPs of one block: matrix products plus per-element work."""
    lin, att = block_flops(N, C, m)
    elementwise = (2 * ln * N * C                      # two LayerNorms
                   + (soft + scale) * heads * N * N    # softmax and 1/sqrt(d) of every score
                   + gelu * N * int(m * C)             # GELU of the hidden layer
                   + 2 * resid * N * C)                # two residual additions
    return lin + att + elementwise, elementwise


assert block_flops_all(65, ln=0, soft=0, scale=0, gelu=0, resid=0)[0] == sum(block_flops(65))
for N in (65, 257):
    total, ew = block_flops_all(N)
    print(f"N = {N}: elementwise work is {ew / total:.1%} of {total / 1e6:.1f} MFLOP")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The elementwise work is a few percent of the block's FLOPs at both sizes, most of it the
# softmax over the $N^2$ scores per head, so it grows with $N$ like attention. It is small
# in FLOPs but not in time: each elementwise operation reads and writes its whole tensor,
# so on a CPU it runs at memory speed (chapter 1's roofline), one reason attention's time
# share in section 4.1.3 exceeds its FLOP share.
# :::

# %% [markdown]
# ### Exercise 3: where time starts to follow the FLOPs (measure, medium)
# Repeat the block timing of section 4.1.3 at batch sizes 1, 4, 16 and 64 for $N = 65$ and
# $N = 257$ and plot the achieved GFLOP/s against batch size. From which batch size does
# halving the tokens give at least 80% of the FLOP ratio? What does that mean for pruning
# a model that serves one image at a time?

# %% tags=["solution", "hide-cell"]
# Solution 3
ex_rows = []
with torch.inference_mode():
    for B in ml.trim(ml.pick(smoke=[1, 4], cpu=[1, 4, 16, 64], gpu=[1, 4, 16, 64, 256])):
        for N, n_half in ((65, 33), (257, 129)):
            t_full = ml.bench.time_fn(block, torch.randn(B, N, DIM, device=dev), repeat=repeat).median
            t_half = ml.bench.time_fn(block, torch.randn(B, n_half, DIM, device=dev), repeat=repeat).median
            flop_ratio = sum(block_flops(N)) / sum(block_flops(n_half))
            ex_rows.append({"batch": B, "N": N, "GFLOP/s": B * sum(block_flops(N)) / t_full / 1e9,
                            "time ratio / FLOP ratio": t_full / t_half / flop_ratio})
ml.bench.Table(ex_rows, title="Halving the tokens: share of the FLOP saving that the time shows",
               formats={"GFLOP/s": ".1f", "time ratio / FLOP ratio": ".2f"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# The table above holds this machine's answer. The achieved rate climbs with the batch, and
# so does the fraction of the FLOP saving that shows up as time: at batch 1 a block of 65
# tokens is so small that removing tokens removes little time, while the 257-token block
# reaches a good fraction of its FLOP ratio at a moderate batch. A server answering one
# image at a time gains less from pruning than the FLOPs promise; batching requests (or a
# larger model) brings the two together.
# :::

# %% [markdown]
# ## Key takeaways
#
# - A transformer block costs $(8 + 4m)NC^2 + 4N^2C$ FLOPs: attention dominates once
#   $N > (2 + m)C$, which for the book's width-64 ViT means the patch-2 model (257 tokens),
#   not the patch-4 one (65).
# - Keeping a fraction $\rho$ of the tokens scales the linear layers by $\rho$ and attention
#   by $\rho^2$; the measured time follows only when there is enough work per call (large
#   batch, many tokens). At batch 1 on 65 tokens, fixed per-operation costs dominate.
# - The patch-2 ViT costs {glue:}`t41_flop_ratio`x the FLOPs of the patch-4 one: plenty of
#   room for token reduction to win time back. It is trained once as the `ml.baselines`
#   variant `"p2"` (`ml.tokens.vit_p2()`) and reused from the cache by notebooks 4.2 and 4.3.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
