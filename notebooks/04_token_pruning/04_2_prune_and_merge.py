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
# # 4.2 Pruning and merging tokens from scratch
#
# Which tokens can a ViT do without? DynamicViT {cite}`rao2021dynamicvit` trains a small
# predictor to score them and drops the low scorers in stages. EViT {cite}`liang2022evit`
# notices that the class token already scores them: its attention row says how much each
# patch contributes to the class token's update, so the "inattentive" patches can go, and
# EViT fuses them into one token instead of throwing them away. ToMe {cite}`bolya2023tome`
# does not drop anything: it *merges* similar tokens by a fast bipartite matching, so that
# a background of forty identical sky patches becomes one token that counts forty times.
# PyramidDrop {cite}`xing2025pyramiddrop`, written for vision-language models, keeps every
# token in the first layers and drops a fixed fraction at the end of each stage, a pyramid
# of shrinking sequences. This notebook writes each method from its definition, checks it
# against a naive loop or an invariant, plugs it into the trained 256-token ViT of
# notebook 4.1 without copying a weight, and measures the accuracy it costs, off the shelf
# and after a short fine-tune with the reduction in place.
#
# **Learning objectives.** After this notebook you can
# 1. compute the class token's attention row from a block's own query and key weights
#    (PyTorch's fused attention returns no weights), and prune the patch tokens by it;
# 2. write EViT's fusion of the pruned tokens and ToMe's bipartite soft matching with
#    size-weighted merging and proportional attention, and check them against naive loops
#    and conservation laws;
# 3. run a trained ViT with a schedule of reductions (`ml.tokens.PrunedViT`), and check that
#    an empty schedule reproduces its logits exactly;
# 4. measure the accuracy each method costs at equal FLOPs, off the shelf and after a
#    fine-tune, against a control that is fine-tuned without pruning.

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
import torch.nn.functional as F

import minilib as ml

T = ml.tokens
ml.describe()
dev = ml.device()

# %% [markdown]
# ## 4.2.1 What the class token looks at
#
# In block $\ell$, head $h$ computes $P_h = \operatorname{softmax}(Q_h K_h^\top / \sqrt d)$,
# and the class token's new value is $\sum_j (P_h)_{0j} v_j$. The weight it puts on patch
# $i$, averaged over the heads, is EViT's score of that patch:
#
# $$a_i = \frac{1}{H} \sum_h (P_h)_{0i}, \qquad i = 1, \dots, N.$$
#
# The ViT computes attention with `F.scaled_dot_product_attention`, which never forms $P$
# (chapter 3.1) and returns only the output. So we recompute the one row we need from the
# block's own projection weights: $q_0$, the class token's query, against all keys, $H$
# rows of $T$ scores instead of $H$ matrices of $T^2$. The naive way forms the whole matrix:

# %%
vit, rec = T.vit_p2()
blk = vit.blocks[1]
test = T.cifar_loader(False, 10_000, 1000, device=dev)
images, labels = next(iter(test))
x_in = images[:8]


def block_input(vit, images, b):
    """The tokens entering block b of the ViT, (B, 1 + N, C)."""
    x = vit.patch_embed(images).flatten(2).transpose(1, 2)
    x = torch.cat([vit.cls_token.expand(len(x), -1, -1), x], dim=1) + vit.pos_embed
    for block in vit.blocks[:b]:
        x = block(x)
    return x


def qk(attn, h):
    """Queries and keys (B, heads, T, d) from the attention module's fused qkv weights."""
    B, T_, C = h.shape
    q, k, _ = attn.qkv(h).split(C, dim=2)
    return (t.view(B, T_, attn.heads, C // attn.heads).transpose(1, 2) for t in (q, k))


with torch.no_grad():
    h = blk.norm1(block_input(vit, x_in, 1))
    q, k = qk(blk.attn, h)
    P = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)   # (B, H, T, T)
    a_naive = P[:, :, 0, 1:].mean(dim=1)                                           # (B, N)
    a = T.cls_attention(q, k)
err = (a - a_naive).abs().max().item()
print(f"cls_attention vs the materialized softmax row: max |difference| < 1e-6: {err < 1e-6}")
assert err < 1e-6

# %% tags=["nbval-check-output"]
print("scores per image:", tuple(a.shape), "| rows sum to at most 1:", bool((a.sum(1) <= 1 + 1e-6).all()))

# %%
ml.show(T.cls_attention)

# %% [markdown]
# The class token's attention of every block, for a few test images (each panel on its own
# colour scale). Block 0 sees only the patch embeddings plus their positions. How peaked a
# row is decides how much top-k can drop: below the maps, the share of the attention that
# the most attended quarter of the patches receives, per block, over the test batch.

# %%
n_show = 4
with torch.no_grad():
    maps = []
    for b in range(len(vit.blocks)):
        h = vit.blocks[b].norm1(block_input(vit, images[:n_show], b))
        maps.append(T.cls_attention(*qk(vit.blocks[b].attn, h)))
side = vit.image_size // vit.patch_size
names = ml.data.CIFAR10_CLASSES
ml.plot.attention_maps(torch.stack(maps, 1).cpu(), images[:n_show].cpu(), grid=(side, side),
                       mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD,
                       row_labels=[names[int(y)] for y in labels[:n_show]],
                       col_labels=[f"block {b}" for b in range(len(vit.blocks))],
                       title="Patch-2 ViT: the class token's attention (mean over heads)")
plt.show()

with torch.no_grad():
    top_share = []
    for b in range(len(vit.blocks)):
        h = vit.blocks[b].norm1(block_input(vit, images[:256], b))
        a_b = T.cls_attention(*qk(vit.blocks[b].attn, h))
        top = a_b.topk(a_b.shape[1] // 4, dim=1).values.sum(1) / a_b.sum(1)
        top_share.append(100 * top.mean().item())
print("attention held by the top quarter of the patches, per block (%):",
      " | ".join(f"block {b}: {v:.0f}" for b, v in enumerate(top_share)))

# %% [markdown]
# ## 4.2.2 Top-k pruning by attention
#
# Keep the class token and the $k$ patch tokens with the largest $a_i$; drop the rest:
#
# $$I = \operatorname{top-}k_i\; a_i, \qquad x' = [\,x_0;\; x_i \text{ for } i \in I\,].$$
#
# EViT and DynamicViT prune between a block's attention and its MLP, so the MLP of that
# block already runs on the kept tokens. Written with a loop over images:

# %%
def topk_naive(x, a, keep):
    """Per image: sort the scores, keep the best `keep` positions (in image order)."""
    out, index = [], []
    for xb, ab in zip(x, a):
        best = sorted(sorted(range(len(ab)), key=lambda i: -ab[i].item())[:keep])
        out.append(torch.cat([xb[:1], xb[1:][best]]))
        index.append(best)
    return torch.stack(out), torch.tensor(index)


ml.show(T.topk_by_attention)

# %%
with torch.no_grad():
    x_tok = block_input(vit, x_in, 1)
for keep in (1, 64, 200):
    mine, ref = T.topk_by_attention(x_tok, a, keep), topk_naive(x_tok, a, keep)
    assert torch.equal(mine[0], ref[0]) and torch.equal(mine[1].cpu(), ref[1])
kept, index = T.topk_by_attention(x_tok, a, a.shape[1])
assert torch.equal(kept, x_tok)
print("top-k == naive loop for keep in (1, 64, 200); keep = N is the identity")

# %% [markdown]
# ## 4.2.3 EViT: fuse what you prune
#
# Dropping a token loses whatever it carried. EViT {cite}`liang2022evit` keeps a summary:
# the pruned ("inattentive") tokens are averaged with their attention weights into one
# extra token, appended after the kept ones,
#
# $$x_\text{fused} = \frac{\sum_{j \notin I} a_j\, x_j}{\sum_{j \notin I} a_j}.$$
#
# (EViT's code sums $a_j x_j$ without the division; averaging keeps the fused token on the
# scale of the others, and a fine-tune absorbs either choice.) At the next pruning stage
# the fused token is a candidate like any other.

# %%
ml.show(T.fuse_pruned)

# %%
fused, index = T.fuse_pruned(x_tok, a, 64)
for b in range(len(x_tok)):
    pruned = sorted(set(range(a.shape[1])) - set(index[b].tolist()))
    w = a[b, pruned]
    expected = (w[:, None] * x_tok[b, 1:][pruned]).sum(0) / w.sum()
    torch.testing.assert_close(fused[b, -1], expected)
assert torch.equal(fused[:, :-1], T.topk_by_attention(x_tok, a, 64)[0])
print("fused token == attention-weighted mean of the pruned tokens; shape", tuple(fused.shape))

# %% [markdown]
# ## 4.2.4 ToMe: bipartite soft matching
#
# ToMe {cite}`bolya2023tome` removes $r$ tokens per block by merging, not dropping. Finding
# the best pairs among all $T$ tokens would take a $T \times T$ similarity and an iterative
# matching; ToMe splits the tokens alternately into two sets, $\mathcal A$ (even positions,
# the class token first) and $\mathcal B$ (odd), and lets each token of $\mathcal A$ pick its
# most similar partner in $\mathcal B$, by the cosine similarity of the *keys* averaged over
# heads (what attention itself compares):
#
# $$s_{ij} = \frac{m_i \cdot m_j}{\lVert m_i \rVert \lVert m_j \rVert}, \quad
# j^*(i) = \arg\max_{j \in \mathcal B} s_{ij}, \qquad
# \text{merge the } r \text{ tokens } i \text{ with the largest } s_{ij^*(i)} \text{ into } j^*(i).$$
#
# A merged token is the size-weighted mean of what it absorbed, and it remembers its size
# $s_j$, the number of patches it stands for. Later blocks add $\log s_j$ to the attention
# logits, *proportional attention*, so a token standing for $s$ identical patches weighs
# exactly as much as those $s$ patches would. The class token never merges. The textbook
# version for one image, with loops (every token of size 1):

# %%
def merge_naive(x, r, metric):
    """ToMe on one image: x (T, C), metric (T, C') -> (T - r, C) and the sizes."""
    m = F.normalize(metric, dim=-1)
    A, B = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    best = {i: max(B, key=lambda j: (m[i] @ m[j]).item()) for i in A[1:]}   # class token: no
    merged = sorted(best, key=lambda i: -(m[i] @ m[best[i]]).item())[:r]
    groups = [[j] + [i for i in merged if best[i] == j] for j in B]
    rows = [x[i] for i in A if i not in merged] + [x[g].mean(0) for g in groups]
    return torch.stack(rows), [len(g) for g in groups]


ml.show(T.bipartite_merge)

# %% [markdown]
# The check: the library equals the loop on the trained ViT's tokens and keys, and merging
# only moves mass, $\sum_t s'_t x'_t = \sum_t s_t x_t$ and $\sum_t s'_t = \sum_t s_t$:

# %%
with torch.no_grad():
    metric = k.mean(dim=1)                                     # (B, T, d): keys averaged over heads
    merged, size = T.bipartite_merge(x_tok, 32, metric=metric)
for b in range(len(x_tok)):
    ref, sizes = merge_naive(x_tok[b], 32, metric[b])
    torch.testing.assert_close(merged[b], ref)
    assert size[b, :, 0].tolist() == [1.0] * (len(merged[b]) - len(sizes)) + [float(s) for s in sizes]
torch.testing.assert_close((size * merged).sum(1), x_tok.sum(1), rtol=1e-5, atol=1e-4)
assert torch.equal(size.sum(1), torch.full((len(x_tok), 1), float(x_tok.shape[1]), device=dev))
assert torch.equal(T.bipartite_merge(x_tok, 0)[0], x_tok)
print("bipartite_merge == naive loop; mass and size conserved; r = 0 is the identity")

# %% [markdown]
# Proportional attention is exact for duplicates, which gives an oracle: attention over
# keys and values where one token appears three times equals attention over the keys with
# that token once and $\log 3$ added to its logit.

# %%
torch.manual_seed(0)
qd, kd, vd = (torch.randn(1, 2, 6, 8, dtype=torch.float64) for _ in range(3))
dup = [0, 1, 2, 2, 2, 3, 4, 5]                                 # token 2 three times
out_dup = F.scaled_dot_product_attention(qd, kd[:, :, dup], vd[:, :, dup])
log_size = torch.tensor([1.0, 1, 3, 1, 1, 1], dtype=torch.float64).log()
out_prop = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=log_size.view(1, 1, 1, 6))
err = (out_dup - out_prop).abs().max().item()
print(f"duplicated tokens == one token with log(3) added: max |difference| < 1e-12: {err < 1e-12}")
assert err < 1e-12

# %% [markdown]
# ## 4.2.5 A trained ViT with a schedule of reductions
#
# `ml.tokens.PrunedViT(vit, schedule)` runs a trained `ml.models.ViT` block by block and
# applies, between a block's attention and its MLP, what the schedule says for that block:
# `("topk", k)`, `("fuse", k)`, `("feather", k)` (notebook 4.3) or `("merge", r)`. It holds
# the ViT's modules, not copies, so fine-tuning it trains the ViT. Blocks with nothing to do
# run the ViT's own `forward`; a block that prunes recomputes its attention from its own
# `qkv` and `proj` weights, to get the queries and keys the scores need:

# %%
ml.show(T.PrunedViT._block)

# %% [markdown]
# The check that matters for every measurement later: with an empty schedule, or one that
# keeps every token, the wrapped model's logits are *bitwise* the ViT's.

# %% tags=["nbval-check-output"]
N, depth = vit.num_patches, len(vit.blocks)
keep_all = {b: ("topk" if b % 2 else "fuse", N) for b in range(1, depth)}
with torch.no_grad():
    ref = vit(images[:16])
    same = {name: torch.equal(T.PrunedViT(vit, s)(images[:16]), ref)
            for name, s in [("empty", {}), ("keep all", keep_all), ("r = 0", {0: ("merge", 0)})]}
print("PrunedViT logits == ViT logits (bitwise):", same)
assert all(same.values())

# %% [markdown]
# The methods differ in *where* they cut and *how*. This chapter compares four schedules on
# the {glue:}`t42_depth`-block ViT (`ml.tokens.chapter_schedule`), each with one knob:
#
# | method | where | how | knob |
# | --- | --- | --- | --- |
# | top-k (one stage) | after block 1's attention | keep the most attended | keep rate $\rho$ |
# | PyramidDrop {cite}`xing2025pyramiddrop` | at the end of each stage: blocks {glue:}`t42_stages` (about 1/4, 1/2, 3/4 of the depth) | keep the most attended | keep rate $\lambda$ per stage |
# | EViT {cite}`liang2022evit` | the same stages | keep the most attended, fuse the rest | $\lambda$ per stage |
# | ToMe {cite}`bolya2023tome` | every block | merge the most similar | $r$ per block |
#
# Block 0 is never pruned: its class token has seen nothing but positions yet. Two pairs
# isolate one design choice each: top-k against PyramidDrop (one cut or several), PyramidDrop
# against EViT (drop or fuse).

# %%
ml.show(T.chapter_schedule)

# %%
operating_points = T.chapter_points(N, depth)                 # three settings of each knob
x1 = torch.zeros(1, 3, 32, 32, device=dev)
flops_full = ml.bench.count_flops(vit, x1)


def tokens_per_block(model, images):
    """Tokens entering each block's MLP, for one image."""
    model.trace = True
    with torch.no_grad():
        model(images)
    model.trace = False
    counts, n = [], vit.num_patches + 1
    after = {b: src.shape[1] for b, src in model.sources}
    for b in range(depth):
        n = after.get(b, n)
        counts.append(n)
    return counts


sched_rows = []
for method, amounts in operating_points.items():
    for amount in amounts:
        model = T.PrunedViT(vit, T.chapter_schedule(method, amount, N, depth))
        sched_rows.append({"method": method, "knob": amount,
                           "tokens per block (MLP)": " / ".join(map(str, tokens_per_block(model, x1))),
                           "FLOPs (% of unpruned)": 100 * ml.bench.count_flops(model, x1) / flops_full})
ml.bench.Table(sched_rows, title=f"Schedules on the patch-2 ViT ({N + 1} tokens, "
               f"{flops_full / 1e6:.0f} MFLOP per image unpruned)",
               formats={"FLOPs (% of unpruned)": ".0f"})

# %% [markdown]
# ## 4.2.6 Off the shelf: what each method costs in accuracy
#
# No training yet: the reductions run on the trained ViT as it is. We evaluate every
# schedule on the same {glue:}`t42_n_eval` test images and keep each image's result, so
# that each method can be compared with the unpruned ViT *pairwise* (McNemar's test,
# `ml.bench.mcnemar`): on the same images, most of the sampling noise cancels.

# %%
n_eval = ml.trim(ml.pick(smoke=500, cpu=3000, gpu=10_000), keep=20)   # a dry run: 20 images
eval_loader = T.cifar_loader(False, n_eval, 500, device=dev)
correct_full = T.correct(vit, eval_loader)
acc_full = correct_full.float().mean().item()
off_rows = []
for row in sched_rows:
    model = T.PrunedViT(vit, T.chapter_schedule(row["method"], row["knob"], N, depth))
    c = T.correct(model, eval_loader)
    off_rows.append(row | {"accuracy (%)": 100 * c.float().mean().item(),
                           "change (points)": 100 * (c.float().mean().item() - acc_full),
                           "McNemar p": ml.bench.mcnemar(correct_full, c)})
se = 100 * ml.bench.accuracy_se(acc_full, n_eval)
off_table = ml.bench.Table(
    [{k: r[k] for k in ("method", "knob", "FLOPs (% of unpruned)", "accuracy (%)", "change (points)", "McNemar p")}
     for r in off_rows],
    title=f"Off the shelf, {n_eval:,} test images (unpruned: {100 * acc_full:.1f}% ± {se:.1f})",
    formats={"FLOPs (% of unpruned)": ".0f", "accuracy (%)": ".1f", "change (points)": "+.1f",
             "McNemar p": ".3f"})
off_table

# %%
with ml.plot.house_style():
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, method in enumerate(operating_points):
        pts = [r for r in off_rows if r["method"] == method]
        ax.plot([r["FLOPs (% of unpruned)"] for r in pts], [r["accuracy (%)"] for r in pts], "o-",
                color=ml.plot.PALETTE[i], label=method)
    ax.errorbar([100], [100 * acc_full], yerr=[2 * se], fmt="k*", markersize=10, label="unpruned (± 2 se)")
    ax.set(xlabel="FLOPs per image (% of the unpruned ViT)", ylabel="test accuracy (%)",
           title="Off the shelf: accuracy against FLOPs")
    ax.legend(fontsize=8)
    plt.show()

# %% tags=["remove-cell"]
ml.glue("t42_depth", depth)
ml.glue("t42_top_first", top_share[0], ".0f")
ml.glue("t42_top_last", top_share[-1], ".0f")
ml.glue("t42_top_max", max(top_share), ".0f")
ml.glue("t42_top_argmax", max(range(depth), key=lambda b: top_share[b]))
ml.glue("t42_stages", ", ".join(map(str, T.chapter_stages(depth))))
ml.glue("t42_n_eval", n_eval, ",")
ml.glue("t42_acc_full", 100 * acc_full, ".1f")
ml.glue("t42_se", se, ".1f")
by = {(r["method"], r["knob"]): r for r in off_rows}
mid = {m: by[(m, a[len(a) // 2])] for m, a in operating_points.items()}
for m, key in [("top-k", "topk"), ("PyramidDrop", "pd"), ("EViT", "evit"), ("ToMe", "tome")]:
    ml.glue(f"t42_off_{key}", mid[m]["change (points)"], "+.1f")
    ml.glue(f"t42_off_{key}_flops", mid[m]["FLOPs (% of unpruned)"], ".0f")
best_off = max(off_rows, key=lambda r: r["accuracy (%)"] - 0.05 * r["FLOPs (% of unpruned)"])
fuse_gain = [by[("EViT", a)]["accuracy (%)"] - by[("PyramidDrop", a)]["accuracy (%)"]
             for a in operating_points["EViT"]]
ml.glue("t42_fuse_gain_min", min(fuse_gain), "+.1f")
ml.glue("t42_fuse_gain_max", max(fuse_gain), "+.1f")

# %% [markdown]
# Off the shelf, at the middle setting of each knob, top-k pruning at
# {glue:}`t42_off_topk_flops`% of the FLOPs changes the accuracy by
# {glue:}`t42_off_topk` points, PyramidDrop's stages by {glue:}`t42_off_pd` (at
# {glue:}`t42_off_pd_flops`%), EViT by {glue:}`t42_off_evit` (at
# {glue:}`t42_off_evit_flops`%) and ToMe by {glue:}`t42_off_tome` (at
# {glue:}`t42_off_tome_flops`%), against an unpruned accuracy of {glue:}`t42_acc_full`%
# (standard error {glue:}`t42_se` points on {glue:}`t42_n_eval` images; the McNemar
# column says whether a change is larger than chance on these images). Fusing the pruned
# tokens changes EViT's accuracy relative to plain staged dropping by
# {glue:}`t42_fuse_gain_min` to {glue:}`t42_fuse_gain_max` points across the three keep
# rates. (A uniform score would give the top quarter of the patches 25% of the attention;
# here it holds {glue:}`t42_top_first`% in block 0, {glue:}`t42_top_last`% in the last
# block and most, {glue:}`t42_top_max`%, in block {glue:}`t42_top_argmax`.) A model that never saw pruning during training has never had to classify from a
# subset of its tokens; the next step lets it learn to.
#
# ## 4.2.7 Fine-tuning with the reduction in place
#
# EViT and DynamicViT train with their pruning; ToMe and PyramidDrop report both
# off-the-shelf and trained results. We fine-tune a copy of the ViT with each schedule in
# place (`ml.tokens.finetuned(method, knob)`: AdamW, warm-up and cosine decay, a quarter as
# many images as the ViT was trained on; cached like the baselines). Fine-tuning also
# trains the ViT a little longer, which by itself may help a short-trained model; so the
# fair reference is a **control**: the unpruned ViT fine-tuned exactly the same way
# (`finetuned("none", 0)`). The gradients flow through the kept tokens and, for EViT,
# through the fused one (the attention weights are part of the graph); ToMe's matching is
# not differentiated, its merged tokens are.

# %%
ft_points = {m: amounts[len(amounts) // 2] for m, amounts in operating_points.items()}   # the middle setting
control, control_rec = T.finetuned("none", 0)
correct_control = T.correct(control, eval_loader)
ft_rows = [{"method": "none (control)", "knob": "", "FLOPs (% of unpruned)": 100.0,
            "off the shelf (%)": 100 * acc_full,
            "fine-tuned (%)": 100 * correct_control.float().mean().item(),
            "vs control (points)": 0.0, "fine-tune time (s)": control_rec["train_seconds"]}]
ft_correct = {"none": correct_control}
for method, amount in ft_points.items():
    model, record = T.finetuned(method, amount)
    c = T.correct(model, eval_loader)
    ft_correct[method] = c
    r = by[(method, amount)]
    ft_rows.append({"method": method, "knob": amount, "FLOPs (% of unpruned)": r["FLOPs (% of unpruned)"],
                    "off the shelf (%)": r["accuracy (%)"], "fine-tuned (%)": 100 * c.float().mean().item(),
                    "vs control (points)": 100 * (c.float().mean().item() - correct_control.float().mean().item()),
                    "fine-tune time (s)": record["train_seconds"]})
ft_table = ml.bench.Table(ft_rows, title=f"Fine-tuned with the reduction in place ({n_eval:,} test images)",
                          formats={"FLOPs (% of unpruned)": ".0f", "off the shelf (%)": ".1f",
                                   "fine-tuned (%)": ".1f", "vs control (points)": "+.1f",
                                   "fine-tune time (s)": ".0f"})
ft_table

# %% tags=["remove-cell"]
acc_control = correct_control.float().mean().item()
ml.glue("t42_acc_control", 100 * acc_control, ".1f")
ml.glue("t42_control_gain", 100 * (acc_control - acc_full), "+.1f")
ft_by = {r["method"]: r for r in ft_rows}
for m, key in [("top-k", "topk"), ("PyramidDrop", "pd"), ("EViT", "evit"), ("ToMe", "tome")]:
    ml.glue(f"t42_ft_{key}", ft_by[m]["vs control (points)"], "+.1f")
    ml.glue(f"t42_ft_{key}_p", ml.bench.mcnemar(correct_control, ft_correct[m]), ".2f")
    ml.glue(f"t42_ft_{key}_time", 100 * (1 - ft_by[m]["fine-tune time (s)"] / control_rec["train_seconds"]), ".0f")
ml.glue("t42_pd_lambda", ft_points["PyramidDrop"])

# %% [markdown]
# Fine-tuning alone moves the unpruned ViT by {glue:}`t42_control_gain` points (to
# {glue:}`t42_acc_control`%), which is why every pruned model is compared with that
# control rather than with the off-the-shelf ViT. Against the control, the fine-tuned
# top-k model is {glue:}`t42_ft_topk` points away (McNemar p = {glue:}`t42_ft_topk_p`),
# PyramidDrop {glue:}`t42_ft_pd` (p = {glue:}`t42_ft_pd_p`), EViT {glue:}`t42_ft_evit`
# (p = {glue:}`t42_ft_evit_p`) and ToMe {glue:}`t42_ft_tome` (p = {glue:}`t42_ft_tome_p`).
# Training with fewer tokens is also cheaper: the PyramidDrop fine-tune took
# {glue:}`t42_ft_pd_time`% less time than the control's, EViT's {glue:}`t42_ft_evit_time`%,
# ToMe's {glue:}`t42_ft_tome_time`% (training times on a shared machine; the banner gives
# the load). Notebook 4.3 turns these models into the chapter's result: accuracy on the
# full test set against measured throughput.
#
# ## 4.2.8 Claimed vs measured
#
# | paper | claim | measured here | conditions |
# | --- | --- | --- | --- |
# | ToMe {cite}`bolya2023tome` | merging is more accurate than pruning at the same speed, off the shelf | off the shelf, middle setting: ToMe {glue:}`t42_off_tome` points at {glue:}`t42_off_tome_flops`% FLOPs, top-k {glue:}`t42_off_topk` at {glue:}`t42_off_topk_flops`% (the table and plot give every setting) | CIFAR-10 ViT, 257 tokens, {glue:}`t42_n_eval` test images |
# | EViT {cite}`liang2022evit` | fusing the inattentive tokens beats dropping them | EViT minus staged dropping, same schedule, off the shelf: {glue:}`t42_fuse_gain_min` to {glue:}`t42_fuse_gain_max` points | three keep rates |
# | PyramidDrop {cite}`xing2025pyramiddrop` | staged dropping cuts training time (40% on LLaVA-NeXT) | fine-tuning with $\lambda =$ {glue:}`t42_pd_lambda` per stage took {glue:}`t42_ft_pd_time`% less time than the unpruned control | {glue:}`t42_depth` blocks, CPU, one run |
# | DynamicViT / EViT {cite}`rao2021dynamicvit,liang2022evit` | a fine-tune with the pruning in place recovers most of the accuracy | fine-tuned top-k {glue:}`t42_ft_topk`, EViT {glue:}`t42_ft_evit` points from the fine-tuned control | a quarter of the training images |

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: is attention a better score than chance? (implement, easy)
# Write `random_keep(x, keep, generator)` that keeps the class token and `keep` patch tokens
# drawn at random (in image order), and run the top-k schedule of section 4.2.5 with it in
# place of the attention scores (hint: pass random scores to `ml.tokens.topk_by_attention`).
# Compare its off-the-shelf accuracy at keep rate 0.5 with attention top-k.

# %% tags=["solution", "hide-cell"]
# Solution 1
def random_keep(x, keep, generator):
    scores = torch.rand(x.shape[0], x.shape[1] - 1, generator=generator).to(x.device)
    return T.topk_by_attention(x, scores, keep)


class RandomPrunedViT(T.PrunedViT):
    """PrunedViT whose top-k scores are random numbers instead of attention."""

    def _block(self, b, blk, x, size, src):
        if b not in self.schedule:
            return super()._block(b, blk, x, size, src)
        x = x + blk.attn(blk.norm1(x))
        x, _ = random_keep(x, self.schedule[b][1], self.generator)
        return x + blk.mlp(blk.norm2(x)), size, src


rand_model = RandomPrunedViT(vit, T.chapter_schedule("top-k", 0.5, N, depth))
rand_model.generator = torch.Generator().manual_seed(0)
acc_rand = T.correct(rand_model, eval_loader).float().mean().item()
print(f"keep 50% at random: {100 * acc_rand:.1f}%, by attention: {by[('top-k', 0.5)]['accuracy (%)']:.1f}%, "
      f"unpruned: {100 * acc_full:.1f}%")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The printed line holds this run's numbers. Random pruning is the baseline any score must
# beat: if attention top-k is far above it, the class token's attention does carry the
# information of which patches matter; if the two are close, the model's representation is
# redundant enough that *which* half survives matters less than *how many*.
# :::

# %% [markdown]
# ### Exercise 2: why merge the keys and not the tokens? (explain, medium)
# ToMe matches tokens by the cosine similarity of their keys averaged over heads, not of the
# tokens $x$ themselves. Run `bipartite_merge` on the block-1 tokens of section 4.2.4 with
# `metric=None` (the tokens) and with the keys, for $r = 32$, and count how many merged pairs
# the two choices share. Why do the keys make sense for what happens next in the block?

# %% tags=["solution", "hide-cell"]
# Solution 2
def merged_sets(x, r, metric):
    _, size = T.bipartite_merge(x, r, metric=metric)
    return [set((s[:, 0] > 1).nonzero().flatten().tolist()) for s in size]


by_keys, by_tokens = merged_sets(x_tok, 32, metric), merged_sets(x_tok, 32, None)
shared = sum(len(a & b) for a, b in zip(by_keys, by_tokens)) / sum(len(a) for a in by_keys)
print(f"destination tokens that grew under both metrics: {100 * shared:.0f}%")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The two choices agree on part of the destinations (printed above) and differ on the rest.
# Attention compares keys: two tokens with similar keys receive similar attention weights
# from every query, so merging them, with proportional attention, changes the attention
# output least. The token $x$ also carries what the MLP and the residual stream need, much of
# which attention never looks at. ToMe's ablation found keys the best of the choices they
# tried.
# :::

# %% [markdown]
# ### Exercise 3: proportional attention off (measure, medium)
# `PrunedViT(vit, schedule, prop_attn=False)` merges without adding $\log s$ to the logits.
# Measure the off-the-shelf accuracy of the ToMe schedule at its largest $r$ with and without
# proportional attention. Which one do you expect to matter more as $r$ grows, and why?

# %% tags=["solution", "hide-cell"]
# Solution 3
r_max = operating_points["ToMe"][-1]
tome = T.chapter_schedule("ToMe", r_max, N, depth)
for prop in (True, False):
    c = T.correct(T.PrunedViT(vit, tome, prop_attn=prop), eval_loader)
    print(f"ToMe r = {r_max}, proportional attention {prop}: {100 * c.float().mean().item():.1f}%")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# Without the $\log s$ term, a token that stands for many patches gets the weight of one,
# so merging shifts attention toward the tokens that were *not* merged, and the shift grows
# with the sizes, i.e. with $r$ and with depth. The printed pair gives this model's answer.
# ToMe recommends proportional attention for off-the-shelf use; a model trained with
# merging in place can learn to do without it.
# :::

# %% [markdown]
# ## Key takeaways
#
# - The class token's attention row is the cheapest useful score of a patch: recomputed from
#   the block's own $q_0$ and $K$, it costs $H \times T$ dot products, not the $T^2$ matrix
#   that fused attention never forms.
# - Pruning keeps the most attended tokens, EViT fuses the rest into one, ToMe merges the most
#   similar pairs and corrects attention by $\log s$; each is a few lines, checked here
#   against a loop (top-k, fusion, merging) and a conservation law (merging moves mass only).
# - A wrapper that shares the trained weights and reproduces the logits bitwise with an
#   empty schedule makes every later comparison a comparison of the reduction alone.
# - Compare a fine-tuned pruned model with an *equally fine-tuned* unpruned one: here the
#   fine-tune alone moved the unpruned ViT by {glue:}`t42_control_gain` points.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
