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
# # 4.3 What token reduction buys: accuracy, throughput and what gets dropped
#
# The token-reduction papers promise speed for almost nothing: ToMe doubles the throughput
# of ViT-L at a 0.2-0.3% accuracy drop without training {cite}`bolya2023tome`, EViT speeds
# DeiT-S up by 50% at -0.3% {cite}`liang2022evit`, DynamicViT prunes 66% of the tokens for
# over 40% more throughput within 0.5% {cite}`rao2021dynamicvit`, PyramidDrop cuts 55% of
# LLaVA-NeXT's inference FLOPs {cite}`xing2025pyramiddrop`. Those are ImageNet models on
# GPUs at large batch. FEATHER {cite}`endo2025feather` adds a warning: a criterion can look
# fine on benchmarks while it systematically throws away one part of the image. This
# notebook puts the methods of notebook 4.2 on one table for the 256-token CIFAR-10 ViT of
# notebook 4.1, with chapter 1's models beside them: accuracy on the full test set with its
# error bars, measured throughput at batch 1 and at a large batch, and FLOPs. Then it looks
# at *which* tokens each method keeps, row by row and column by column.
#
# **Learning objectives.** After this notebook you can
# 1. compare efficiency methods fairly: same test images, paired tests (McNemar) against the
#    right reference, throughput as an interleaved ratio with its spread, at two batch sizes;
# 2. read a Pareto plot of accuracy against throughput and say which method to use at a
#    given budget, and whether a goal ("1.5x faster, at most 1 point lost") is met;
# 3. draw what a method keeps, merges and drops on real images;
# 4. measure a pruning criterion's positional bias (keep rate per image row and column,
#    FEATHER's diagnostic) and what uniform sampling changes.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import minilib as ml

T = ml.tokens
ml.describe()
dev = ml.device()

# %% [markdown]
# ## 4.3.1 The contenders
#
# All from the cache: the patch-2 ViT (notebook 4.1), the four reductions at three settings
# each, off the shelf, and at their middle setting fine-tuned with the reduction in place,
# with the equally fine-tuned unpruned control (notebook 4.2); chapter 1's patch-4 ViT and
# ResNet-9 for scale. Every model is evaluated here on the same {glue:}`t43_n_test` test
# images in fp32, and each image's result is kept for the paired tests.

# %%
vit, rec = T.vit_p2()
vit4, _ = ml.baselines.cifar_vit()
cnn, _ = ml.baselines.cifar_cnn()
N, depth = vit.num_patches, len(vit.blocks)
points = T.chapter_points(N, depth)
n_test = ml.trim(ml.pick(smoke=500, cpu=5000, gpu=10_000), keep=20)   # a dry run: 20 images
test = T.cifar_loader(False, n_test, 500, device=dev)

models = {"ViT patch 2": (vit, None, "ViT patch 2")}         # name -> (model, knob, reference)
for method, amounts in points.items():
    for amount in ml.pick(smoke=amounts[1:2], cpu=amounts, gpu=amounts):
        models[f"{method} {amount}"] = (T.PrunedViT(vit, T.chapter_schedule(method, amount, N, depth)),
                                        amount, "ViT patch 2")
models["ViT patch 2, fine-tuned (control)"] = (T.finetuned("none", 0)[0], None, "ViT patch 2")
for method, amounts in points.items():
    amount = amounts[len(amounts) // 2]
    models[f"{method} {amount}, fine-tuned"] = (T.finetuned(method, amount)[0], amount,
                                                "ViT patch 2, fine-tuned (control)")
models["ViT patch 4 (ch. 1)"] = (vit4, None, None)
models["ResNet-9 (ch. 1)"] = (cnn, None, None)
correct = {name: T.correct(m, test) for name, (m, _, _) in models.items()}
print(f"{len(models)} models evaluated on {n_test:,} test images")

# %% [markdown]
# ## 4.3.2 Accuracy, and whether a change is real
#
# On $n$ test images an accuracy $p$ has a standard error $\sqrt{p(1-p)/n}$, about half a
# point here. Two models evaluated on *the same* images differ less by chance than that
# suggests: only the images on which they disagree carry information. With $b$ images
# only the reference gets right and $c$ only the candidate, the change is $(c - b)/n$, its
# paired standard error $\sqrt{b + c - (c - b)^2/n}\,/\,n$, and McNemar's exact test asks
# whether $b$ and $c$ differ by more than coin flips would.

# %%
x1 = torch.zeros(1, 3, 32, 32, device=dev)
flops = {name: ml.bench.count_flops(m, x1) for name, (m, _, _) in models.items()}
quality = {}
for name, (m, knob, ref) in models.items():
    acc = correct[name].float().mean().item()
    row = {"accuracy (%)": 100 * acc, "se": 100 * ml.bench.accuracy_se(acc, n_test)}
    if ref is not None and ref != name:
        d, se_d, p = ml.bench.paired_accuracy(correct[ref], correct[name])
        row |= {"change (points)": d, "paired se": se_d, "McNemar p": p}
    quality[name] = row

# %% [markdown]
# ## 4.3.3 Throughput, measured as a ratio
#
# Each pruned model is timed against the unpruned patch-2 ViT with `ml.bench.compare`:
# interleaved calls (A B, B A, ...), the ratio of each pair, its median and interquartile
# range, in inference mode and fp32. Batch 1 is the latency of one image; the large batch
# is the throughput of a server. A fine-tuned model runs the same schedule as its
# off-the-shelf twin, so it has the same speed and is not timed again.

# %%
B_large = ml.trim(ml.pick(smoke=16, cpu=128, gpu=1024), keep=8)
inputs = {1: torch.randn(1, 3, 32, 32, device=dev), B_large: torch.randn(B_large, 3, 32, 32, device=dev)}
repeat = {1: ml.pick(smoke=5, cpu=30, gpu=50), B_large: ml.pick(smoke=3, cpu=6, gpu=20)}
speed = {}
with torch.inference_mode():
    for name, (m, _, _) in models.items():
        if name == "ViT patch 2" or "fine-tuned" in name:
            continue
        speed[name] = {B: ml.bench.compare(lambda: vit(x), lambda: m(x), warmup=2, repeat=repeat[B])
                       for B, x in inputs.items()}
    base_time = {B: ml.bench.time_fn(vit, x, warmup=2, repeat=repeat[B]) for B, x in inputs.items()}
for name in models:                                           # fine-tuned = its off-the-shelf twin
    if "fine-tuned" in name:
        twin = name.replace(", fine-tuned", "").replace(" (control)", "")
        speed[name] = speed.get(twin)


def images_per_s(name, B):
    """Measured images per second: the unpruned ViT's own timing, times the measured ratio."""
    ratio = 1.0 if speed.get(name) is None else speed[name][B].speedup
    return ratio * B / base_time[B].median


# %% [markdown]
# ## 4.3.4 One table, one plot

# %%
rows = []
for name, (m, knob, ref) in models.items():
    q, s = quality[name], speed.get(name)
    rows.append({"model": name, "FLOPs (%)": 100 * flops[name] / flops["ViT patch 2"],
                 "accuracy (%)": f"{q['accuracy (%)']:.1f} ± {q['se']:.1f}",
                 "change (points)": (f"{q['change (points)']:+.1f} ± {q['paired se']:.1f}"
                                     if "change (points)" in q else ""),
                 "McNemar p": q.get("McNemar p"),
                 "speed-up, batch 1": s[1] if s else None,
                 f"speed-up, batch {B_large}": s[B_large] if s else None})
result_table = ml.bench.Table(rows, title=f"CIFAR-10, {n_test:,} test images, fp32 inference on {dev.type}; "
                              "changes against the unpruned ViT (fine-tuned: against the fine-tuned control), "
                              "speed-ups against the unpruned patch-2 ViT",
                              formats={"FLOPs (%)": ".0f", "McNemar p": ".3f"})
result_table

# %%
pts = [{"name": name, "images/s": images_per_s(name, B_large) if name in speed or "ViT patch 2" in name
         else None, "accuracy (%)": quality[name]["accuracy (%)"], "MFLOP": flops[name] / 1e6}
       for name in models]
with torch.inference_mode():                                  # chapter 1's models: their own timing
    for p_ in pts:
        if p_["images/s"] is None:
            p_["images/s"] = B_large / ml.bench.time_fn(models[p_["name"]][0], inputs[B_large],
                                                        warmup=2, repeat=repeat[B_large]).median
markers = {"top-k": "o", "PyramidDrop": "s", "EViT": "D", "ToMe": "^"}
with ml.plot.house_style():
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key in zip(axes, ("images/s", "MFLOP")):
        front = ml.plot.pareto_front(pts, key, "accuracy (%)", x_lower_is_better=key == "MFLOP")
        ax.plot([p_[key] for p_ in front], [p_["accuracy (%)"] for p_ in front], color="0.75", lw=3,
                zorder=0, label="Pareto front")
        for i, (method, mk) in enumerate(markers.items()):
            for tuned in (False, True):
                sel = [p_ for p_ in pts if p_["name"].startswith(method) and ("fine-tuned" in p_["name"]) == tuned]
                ax.scatter([p_[key] for p_ in sel], [p_["accuracy (%)"] for p_ in sel], marker=mk,
                           color=ml.plot.PALETTE[i], facecolors=ml.plot.PALETTE[i] if tuned else "none",
                           label=f"{method}{', fine-tuned' if tuned else ''}")
        for name, mk in [("ViT patch 2", "*"), ("ViT patch 2, fine-tuned (control)", "P"),
                         ("ViT patch 4 (ch. 1)", "v"), ("ResNet-9 (ch. 1)", "X")]:
            p_ = next(q for q in pts if q["name"] == name)
            ax.scatter([p_[key]], [p_["accuracy (%)"]], marker=mk, s=80, color="k", label=name)
        ax.set_xscale("log")
        ax.set(ylabel="test accuracy (%)")
    axes[0].set(xlabel=f"images per second, batch {B_large} (log)", title="Accuracy against measured throughput")
    axes[1].set(xlabel="MFLOP per image (log)", title="Accuracy against FLOPs")
    axes[1].legend(fontsize=6, ncol=2, loc="lower right")
    plt.show()

# %% [markdown]
# ## 4.3.5 The goal: at least 1.5x the throughput for at most 1 point
#
# The question a user asks: among the reduced models, which is fastest at a large batch
# while losing at most one point against its reference? The loss is judged with its paired
# standard error: "within 1 point" holds for sure only if the loss plus two standard errors
# stays below 1.

# %%
candidates = []
for name, (m, knob, ref) in models.items():
    q = quality[name]
    if ref is None or name == ref or "control" in name or "change (points)" not in q:
        continue
    loss, se_d = 0.0 - q["change (points)"], q["paired se"]     # 0.0 - x: no "-0.0" in the table
    candidates.append({"model": name, "loss (points)": loss, "loss + 2 se": loss + 2 * se_d,
                       "speed-up": speed[name][B_large].speedup, "speed-up IQR low": speed[name][B_large].lo})
within = [c for c in candidates if c["loss (points)"] <= 1.0]
best = max(within, key=lambda c: c["speed-up"]) if within else max(candidates, key=lambda c: -c["loss (points)"])
goal_table = ml.bench.Table(sorted(candidates, key=lambda c: -c["speed-up"]),
                            title=f"Reduced models by speed-up at batch {B_large}",
                            formats={"loss (points)": "+.1f", "loss + 2 se": "+.1f", "speed-up": ".2f",
                                     "speed-up IQR low": ".2f"})
goal_table

# %% tags=["remove-cell"]
ml.glue("t43_n_test", n_test, ",")
ml.glue("t43_B", B_large)
ml.glue("t43_best", best["model"])
ml.glue("t43_best_speed", best["speed-up"], ".2f")
ml.glue("t43_best_speed_lo", best["speed-up IQR low"], ".2f")
ml.glue("t43_best_loss", best["loss (points)"], "+.1f")
ml.glue("t43_best_loss_hi", best["loss + 2 se"], "+.1f")
ml.glue("t43_best_b1", speed[best["model"]][1].speedup, ".2f")
ml.glue("t43_best_flops", 100 * flops[best["model"]] / flops["ViT patch 2"], ".0f")
met = best["speed-up"] >= 1.5 and best["loss (points)"] <= 1.0
ml.glue("t43_goal", "met" if met else "not met")
ml.glue("t43_goal_strict", "also holds" if met and best["loss + 2 se"] <= 1.0 and best["speed-up IQR low"] >= 1.5
        else "does not hold")
ml.glue("t43_n_within", len(within))
ml.glue("t43_acc_p2", quality["ViT patch 2"]["accuracy (%)"], ".1f")
ml.glue("t43_acc_p4", quality["ViT patch 4 (ch. 1)"]["accuracy (%)"], ".1f")
ml.glue("t43_acc_cnn", quality["ResNet-9 (ch. 1)"]["accuracy (%)"], ".1f")
ml.glue("t43_ips_p2", images_per_s("ViT patch 2", B_large), ",.0f")
ml.glue("t43_ips_p4", images_per_s("ViT patch 4 (ch. 1)", B_large), ",.0f")
ml.glue("t43_ips_cnn", images_per_s("ResNet-9 (ch. 1)", B_large), ",.0f")
ml.glue("t43_ips_best", images_per_s(best["model"], B_large), ",.0f")
cnn_pt = next(p_ for p_ in pts if p_["name"] == "ResNet-9 (ch. 1)")
acc_best = quality[best["model"]]["accuracy (%)"]
ml.glue("t43_cnn_words", ("more" if cnn_pt["accuracy (%)"] > acc_best else "less") + " accurate and "
        + ("faster" if cnn_pt["images/s"] > images_per_s(best["model"], B_large) else "slower"))
off = {m: f"{m} {a[len(a) // 2]}" for m, a in points.items()}
for m, key in [("top-k", "topk"), ("PyramidDrop", "pd"), ("EViT", "evit"), ("ToMe", "tome")]:
    ml.glue(f"t43_{key}_speed", speed[off[m]][B_large].speedup, ".2f")
    ml.glue(f"t43_{key}_speed_b1", speed[off[m]][1].speedup, ".2f")
    ml.glue(f"t43_{key}_change", quality[off[m]]["change (points)"], "+.1f")
    ml.glue(f"t43_{key}_ft_change", quality[off[m] + ", fine-tuned"]["change (points)"], "+.1f")
    ml.glue(f"t43_{key}_flops", 100 - 100 * flops[off[m]] / flops["ViT patch 2"], ".0f")
tome_best = max((n for n in models if n.startswith("ToMe") and "fine" not in n), key=lambda n: speed[n][B_large].speedup)
ml.glue("t43_tome_max", tome_best)
ml.glue("t43_tome_max_speed", speed[tome_best][B_large].speedup, ".2f")
ml.glue("t43_tome_max_change", quality[tome_best]["change (points)"], "+.1f")

# %% [markdown]
# The fastest reduced model within one point of its reference is
# **{glue:}`t43_best`**: {glue:}`t43_best_speed`x the throughput of the unpruned patch-2 ViT
# at batch {glue:}`t43_B` (the lower quartile of the interleaved ratios is
# {glue:}`t43_best_speed_lo`x; {glue:}`t43_best_b1`x at batch 1), at
# {glue:}`t43_best_flops`% of its FLOPs, for an accuracy change of {glue:}`t43_best_loss`
# points (loss plus two paired standard errors: {glue:}`t43_best_loss_hi`). The goal of
# 1.5x at most 1 point lost is **{glue:}`t43_goal`** by the point estimates; the strict
# reading (lower quartile of the speed-up at least 1.5x *and* loss plus two standard errors
# at most 1 point) {glue:}`t43_goal_strict`. {glue:}`t43_n_within` of the reduced models
# stay within one point.
#
# For scale: the unpruned patch-2 ViT classifies {glue:}`t43_ips_p2` images per second at
# batch {glue:}`t43_B` at {glue:}`t43_acc_p2`%; chapter 1's patch-4 ViT
# {glue:}`t43_ips_p4` at {glue:}`t43_acc_p4`%, and ResNet-9 {glue:}`t43_ips_cnn` at
# {glue:}`t43_acc_cnn`% (without its test-time flips): {glue:}`t43_cnn_words` than the best
# reduced ViT. Token reduction moves a ViT along its own accuracy-speed curve; whether a ViT
# is the right model for 32 x 32 images is a separate question.
#
# ## 4.3.6 What gets dropped
#
# `PrunedViT` can trace, for every remaining token, which original patches it stands for
# (`trace = True`, then `sources`). We draw the tokens that survive the last reduction of
# each method on a few test images: for pruning, the dropped patches are greyed out (EViT's
# fused token in red); for ToMe, every group of merged patches is painted with its mean
# colour, as in the ToMe paper.

# %%
n_show = 4
images, labels = next(iter(test))
images, labels = images[:n_show], labels[:n_show]
P = vit.patch_size
side = vit.image_size // P
mean = torch.tensor(ml.data.CIFAR10_MEAN, device=dev).view(1, 3, 1, 1)
std = torch.tensor(ml.data.CIFAR10_STD, device=dev).view(1, 3, 1, 1)
pixels = (images * std + mean).clamp(0, 1)                           # (n, 3, 32, 32) in [0, 1]


def last_sources(model):
    model.trace = True
    with torch.no_grad():
        model(images)
    model.trace = False
    return model.sources[-1][1][:, :, 1:]                            # (n, T, N): token -> patches


def draw(src, fused_last=False):
    """Images with each surviving token's patches shown; dropped patches grey, groups averaged."""
    patches = pixels.unfold(2, P, P).unfold(3, P, P)                 # (n, 3, side, side, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n_show, side * side, -1)   # (n, N, 3 P P)
    out = torch.full_like(patches, 0.85)                             # dropped: light grey
    for b in range(n_show):
        for t in range(src.shape[1]):
            members = src[b, t].nonzero().flatten()
            if len(members) == 0:
                continue
            if fused_last and t == src.shape[1] - 1:
                out[b, members] = 0.5 * patches[b, members] + 0.5 * torch.tensor(
                    [1.0, 0, 0], device=dev).repeat_interleave(P * P)
            elif len(members) == 1:
                out[b, members] = patches[b, members]
            else:                                                    # a merged group: its mean colour
                out[b, members] = patches[b, members].view(len(members), 3, -1).mean((0, 2)).repeat_interleave(P * P)
    out = out.view(n_show, side, side, 3, P, P).permute(0, 3, 1, 4, 2, 5)
    return out.reshape(n_show, 3, side * P, side * P)


shown = {"image": pixels}
for method in ("top-k", "PyramidDrop", "EViT", "ToMe"):
    amount = points[method][len(points[method]) // 2]
    shown[f"{method} {amount}"] = draw(last_sources(T.PrunedViT(vit, T.chapter_schedule(method, amount, N, depth))),
                                       fused_last=method == "EViT")
grid = torch.stack(list(shown.values()), 1).flatten(0, 1)            # row per image, column per method
names = ml.data.CIFAR10_CLASSES
ml.plot.image_grid(grid.cpu(), [f"{k}" if i < len(shown) else "" for i, k in
                                enumerate(list(shown) * n_show)], ncols=len(shown),
                   title="What survives the last reduction (off the shelf, middle setting)")
plt.show()

# %% [markdown]
# ## 4.3.7 Positional bias: which rows and columns survive
#
# FEATHER {cite}`endo2025feather` found that FastV, which prunes a vision-language model's
# image tokens by the attention of the last text token, keeps mostly tokens from the
# *bottom* of the image: with rotary position embeddings, attention decays with distance, and
# the last image rows are the closest to the text. The criterion measured position as much as
# content, and localization benchmarks collapsed. Their fix combines three things: the
# criterion without the rotary term, uniformly sampled tokens (every $s$-th row and column)
# that are always kept, and pruning in two stages. Our ViT has no rotary embedding (learned
# absolute positions are added once at the input), so the first part has no counterpart;
# the other two do (`("feather", k)` in `ml.tokens.PrunedViT`, stride 3: 36 of the 256
# tokens).
#
# FEATHER's diagnostic: the keep rate of each image row and column, averaged over the test
# set, for the tokens that survive. A criterion that follows content in centred CIFAR images
# should favour the centre, symmetric top-bottom and left-right. We compare two-stage top-k
# with FEATHER at the same token budget, and also run both on Gaussian-noise inputs, where
# there is no content and any preference left is the criterion's own positional bias.

# %%
keep = 0.5
two_stage = T.keep_schedule("topk", N, T.chapter_stages(depth)[:2], keep)   # FEATHER's stages, no grid
feather = T.chapter_schedule("FEATHER", keep, N, depth)
bias_models = {"top-k, two stages": T.PrunedViT(vit, two_stage),
               "FEATHER (grid + two stages)": T.PrunedViT(vit, feather, stride=T.FEATHER_STRIDE)}
n_bias = ml.trim(ml.pick(smoke=500, cpu=2000, gpu=10_000), keep=20)
bias_loader = T.cifar_loader(False, n_bias, 500, device=dev)


def keep_map(model, batches, cell=4):
    """Keep rate of each patch (row, column) after the last reduction, (side, side), and the
    mean fraction of `cell` x `cell` regions of patches left without any kept token."""
    total, empty, count = torch.zeros(side * side, device=dev), 0.0, 0
    model.trace = True
    with torch.no_grad():
        for x in batches:
            model(x)
            kept = model.sources[-1][1][:, :, 1:].any(1).float()                  # (B, N)
            total += kept.sum(0)
            per_cell = kept.view(-1, side // cell, cell, side // cell, cell).amax((2, 4))
            empty += (per_cell == 0).float().mean((1, 2)).sum().item()
            count += len(x)
    model.trace = False
    return (total / count).view(side, side).cpu(), empty / count


g = torch.Generator(device="cpu").manual_seed(0)
noise = [torch.randn(min(500, n_bias), 3, 32, 32, generator=g).to(dev) for _ in range(max(1, n_bias // 500))]
maps, empty = {}, {}
for name, m in bias_models.items():
    maps[(name, "test images")], empty[(name, "test images")] = keep_map(m, (x for x, _ in bias_loader))
    maps[(name, "noise")], empty[(name, "noise")] = keep_map(m, noise)

with ml.plot.house_style():
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, ((name, data), mp) in enumerate(maps.items()):
        style = "-" if data == "test images" else ":"
        color = ml.plot.PALETTE[list(bias_models).index(name)]
        axes[0].plot(mp.mean(1).numpy(), style, color=color, marker="o", ms=3, label=f"{name}, {data}")
        axes[1].plot(mp.mean(0).numpy(), style, color=color, marker="o", ms=3, label=f"{name}, {data}")
    axes[0].set(xlabel="image row (0 = top)", ylabel="keep rate", title="Keep rate per row")
    axes[1].set(xlabel="image column (0 = left)", ylabel="keep rate", title="Keep rate per column")
    axes[0].legend(fontsize=6, loc="lower left")
    plt.show()

# %%
def bias_stats(key):
    mp = maps[key]
    rows, cols, h, e = mp.mean(1), mp.mean(0), side // 2, side // 4
    border = torch.cat([mp[:e].flatten(), mp[-e:].flatten(), mp[e:-e, :e].flatten(), mp[e:-e, -e:].flatten()])
    return {"top / bottom half": (rows[:h].mean() / rows[h:].mean()).item(),
            "left / right half": (cols[:h].mean() / cols[h:].mean()).item(),
            "centre / border": (mp[e:-e, e:-e].mean() / border.mean()).item(),
            "empty regions (%)": 100 * empty[key]}


feather_acc, feather_correct = {}, {}
for name, m in bias_models.items():
    feather_correct[name] = c = T.correct(m, test)
    d, se_d, p = ml.bench.paired_accuracy(correct["ViT patch 2"], c)
    feather_acc[name] = (100 * c.float().mean().item(), d, se_d, p)
bias_rows = [{"criterion": name, "inputs": data} | bias_stats((name, data)) for name, data in maps]
bias_table = ml.bench.Table(bias_rows, title=f"Where the kept tokens are (keep {keep:g} twice; "
                            f"{n_bias:,} test images or noise images)",
                            formats={k: ".2f" for k in bias_rows[0] if k not in ("criterion", "inputs")})
bias_table

# %% tags=["remove-cell"]
st = {k: bias_stats(k) for k in maps}
tk, fe = "top-k, two stages", "FEATHER (grid + two stages)"
ml.glue("t43_tb_topk", st[(tk, "test images")]["top / bottom half"], ".2f")
ml.glue("t43_lr_topk", st[(tk, "test images")]["left / right half"], ".2f")
ml.glue("t43_cb_topk", st[(tk, "test images")]["centre / border"], ".2f")
ml.glue("t43_cb_feather", st[(fe, "test images")]["centre / border"], ".2f")
ml.glue("t43_tb_feather", st[(fe, "test images")]["top / bottom half"], ".2f")
ml.glue("t43_empty_topk", st[(tk, "test images")]["empty regions (%)"], ".0f")
ml.glue("t43_empty_feather", st[(fe, "test images")]["empty regions (%)"], ".0f")
ml.glue("t43_tb_noise", st[(tk, "noise")]["top / bottom half"], ".2f")
ml.glue("t43_lr_noise", st[(tk, "noise")]["left / right half"], ".2f")
ml.glue("t43_cb_noise", st[(tk, "noise")]["centre / border"], ".2f")
ml.glue("t43_acc_twostage", feather_acc[tk][1], "+.1f")
ml.glue("t43_acc_feather", feather_acc[fe][1], "+.1f")
ml.glue("t43_acc_feather_se", feather_acc[fe][2], ".1f")
ml.glue("t43_feather_p", ml.bench.mcnemar(feather_correct[tk], feather_correct[fe]), ".2f")
ml.glue("t43_grid_tokens", len(T.uniform_grid((side, side), T.FEATHER_STRIDE)))

# %% [markdown]
# On the test images, two-stage top-k keeps the centre of the image (the middle 8 x 8
# patches) {glue:}`t43_cb_topk` times as often as the 4-patch border around it, with a
# top-to-bottom ratio of {glue:}`t43_tb_topk` and a left-to-right ratio of
# {glue:}`t43_lr_topk`; on average {glue:}`t43_empty_topk`% of an image's 4 x 4-patch
# regions lose every token. On noise, where there is nothing to see, the same criterion
# gives a centre-to-border ratio of {glue:}`t43_cb_noise`, top-to-bottom
# {glue:}`t43_tb_noise` and left-to-right {glue:}`t43_lr_noise`: whatever departs from 1
# there cannot be content, it is the criterion's own positional preference, learned with
# the position embeddings. (CIFAR-10 objects sit in the centre, so on real images a centre
# preference is mostly content; the noise run separates the two, which FEATHER did by
# removing the rotary term.) FEATHER's grid of {glue:}`t43_grid_tokens` always-kept tokens
# (every region holds one after block 1; the second stage may still drop it) leaves
# {glue:}`t43_empty_feather`% of the regions empty and moves the centre-to-border ratio to
# {glue:}`t43_cb_feather`. It changes the accuracy from {glue:}`t43_acc_twostage` to
# {glue:}`t43_acc_feather` points (± {glue:}`t43_acc_feather_se`) against the unpruned ViT
# (McNemar between the two criteria: p = {glue:}`t43_feather_p`). Classification needs the
# object, not the border, so coverage matters less here than in FEATHER's localization
# tasks, where the discarded region can hold the answer.
#
# ## 4.3.8 Claimed vs measured
#
# | paper | claim | measured here | conditions |
# | --- | --- | --- | --- |
# | ToMe {cite}`bolya2023tome` | off the shelf, 2x throughput at 0.2-0.3% accuracy drop (ViT-L @ 512, ViT-H @ 518) | fastest ToMe setting ({glue:}`t43_tome_max`): {glue:}`t43_tome_max_speed`x at {glue:}`t43_tome_max_change` points | 257-token CIFAR ViT, batch {glue:}`t43_B`, CPU |
# | EViT {cite}`liang2022evit` | DeiT-S: +50% inference speed at -0.3% (trained with the fusion) | EViT at the middle setting, fine-tuned: {glue:}`t43_evit_speed`x at {glue:}`t43_evit_ft_change` points against the fine-tuned control | a short fine-tune, not full training |
# | DynamicViT {cite}`rao2021dynamicvit` | pruning 66% of the tokens in stages: 31-37% fewer FLOPs, over 40% more throughput, within 0.5% | staged attention top-k (PyramidDrop schedule, not DynamicViT's learned scorer): {glue:}`t43_pd_flops`% fewer FLOPs, {glue:}`t43_pd_speed`x, {glue:}`t43_pd_ft_change` points fine-tuned | middle setting |
# | PyramidDrop {cite}`xing2025pyramiddrop` | 55% fewer inference FLOPs at comparable performance (LLaVA-NeXT) | {glue:}`t43_pd_flops`% fewer FLOPs at {glue:}`t43_pd_change` points off the shelf, {glue:}`t43_pd_ft_change` fine-tuned | a ViT classifier, not a VLM |
# | FEATHER {cite}`endo2025feather` | attention-based pruning in a VLM keeps mostly the bottom of the image; uniform sampling plus stages restore coverage | top/bottom keep ratio {glue:}`t43_tb_topk` (noise inputs: {glue:}`t43_tb_noise`); with the grid, centre/border {glue:}`t43_cb_topk` to {glue:}`t43_cb_feather`, accuracy {glue:}`t43_acc_twostage` to {glue:}`t43_acc_feather` points | no rotary embeddings here; classification, not localization |
#
# **Further reading.** HiRED {cite}`arif2025hired` spends a fixed token budget across the
# partitions of a high-resolution image by the class token's attention; ZipVL
# {cite}`he2024zipvl` picks the number of kept tokens per layer from the attention
# distribution and compresses the KV cache; ATP-LLaVA {cite}`ye2025atpllava` learns per-layer,
# per-image pruning thresholds; IA-RED² {cite}`pan2021iared2` learns a policy that drops
# patches and doubles as an explanation; LookupViT {cite}`koner2024lookupvit` compresses the
# image into a few tokens that do the heavy computation, with cross-attention to the rest;
# dynamic token pruning for segmentation {cite}`tang2023dtop` lets easy tokens exit early,
# since a dense prediction needs every token's answer. FastV {cite}`chen2024fastv` is the
# vision-language pruning method FEATHER revisits.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: where the speed-up appears (measure, easy)
# Time the unpruned patch-2 ViT against the best model of section 4.3.5 with
# `ml.bench.compare` at batch sizes 1, 8, 32 and {glue:}`t43_B`. From which batch size is the
# speed-up within 10% of the FLOP ratio? Relate the answer to notebook 4.1.

# %% tags=["solution", "hide-cell"]
# Solution 1
best_model = models[best["model"]][0]
ratio = flops["ViT patch 2"] / flops[best["model"]]
ex = []
with torch.inference_mode():
    for Bx in ml.trim(sorted({1, 8, 32, B_large})):
        xx = torch.randn(Bx, 3, 32, 32, device=dev)
        ex.append({"batch": Bx, "speed-up": ml.bench.compare(lambda: vit(xx), lambda: best_model(xx),
                                                             warmup=1, repeat=ml.pick(smoke=3, cpu=6, gpu=20)),
                   "FLOP ratio": ratio})
ml.bench.Table(ex, title=f"{best['model']} against the unpruned ViT", formats={"FLOP ratio": ".2f"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The table holds this machine's answer. The speed-up grows with the batch toward the FLOP
# ratio: at batch 1 a 4-block, width-64 ViT is bound by the fixed cost of its operations
# (and the pruning adds a few: the score row, a top-k, a gather), so the saved arithmetic is
# a small part of the time, exactly the effect section 4.1.3 measured on one block.
# :::

# %% [markdown]
# ### Exercise 2: an adaptive budget (implement, hard)
# ZipVL and ATP-LLaVA choose how many tokens to keep per image. Write
# `keep_by_mass(cls_attn, tau)`: for each image, the smallest $k$ such that the $k$ largest
# scores hold a fraction `tau` of the image's total score. Run block 1 of the patch-2 ViT on
# the test images and report the mean and the spread of $k$ for `tau = 0.9`. Then explain
# why a batch of images with different $k$ is awkward to run, and one way around it.

# %% tags=["solution", "hide-cell"]
# Solution 2
def keep_by_mass(cls_attn, tau):
    s = cls_attn.sort(dim=1, descending=True).values
    mass = s.cumsum(1) / s.sum(1, keepdim=True)
    return (mass < tau).sum(1) + 1                                   # (B,): tokens to keep


ks = []
with torch.no_grad():
    for x, _ in test:
        h = torch.cat([vit.cls_token.expand(len(x), -1, -1), vit.patch_embed(x).flatten(2).transpose(1, 2)], 1)
        h = vit.blocks[0](h + vit.pos_embed)
        blk = vit.blocks[1]
        hq = blk.norm1(h)
        q, k, _ = blk.attn.qkv(hq).split(hq.shape[-1], dim=2)
        q, k = (t.view(len(x), -1, blk.attn.heads, hq.shape[-1] // blk.attn.heads).transpose(1, 2) for t in (q, k))
        ks.append(keep_by_mass(T.cls_attention(q, k), 0.9).cpu())
ks = torch.cat(ks).float()
print(f"tau = 0.9: keep {ks.mean():.0f} of {N} tokens on average (5th-95th percentile "
      f"{ks.quantile(0.05):.0f}-{ks.quantile(0.95):.0f})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The printed line gives the mean and the spread of $k$. Images differ in how concentrated
# the class token's attention is, so a fixed budget is too generous for some and too tight
# for others. But a batch is one tensor: with different $k$ per image, either each image runs
# alone (losing the batch's efficiency, section 4.1.3), or the batch is padded to its largest
# $k$ with an attention mask that hides the padding (saving nothing on the padded tokens), or
# images are bucketed by $k$. ZipVL sidesteps the problem inside attention kernels that take
# variable lengths; at batch 1, the usual setting of a chat model, it does not arise.
# :::

# %% [markdown]
# ### Exercise 3: which reference? (explain, medium)
# In the table, the fine-tuned models are compared with the fine-tuned control, not with the
# original ViT. Give one reason the original ViT would flatter them, and one situation in
# which comparing with the original ViT is the right question.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# The patch-2 ViT was trained on a short schedule, so more training helps it whatever the
# pruning (the control shows by how much): against the original, a fine-tuned pruned model
# gets credit for the extra training. Comparing with the original is the right question when
# the original is what you would otherwise deploy and the fine-tuning budget is part of the
# method's price: then "pruned and fine-tuned" against "as is" is the real choice, but the
# control still tells you that spending the same budget without pruning would have been
# better still, in accuracy.
# :::

# %% [markdown]
# ## Key takeaways
#
# - On the 257-token CIFAR ViT the best reduction found here, {glue:}`t43_best`, gives
#   {glue:}`t43_best_speed`x the throughput at batch {glue:}`t43_B` for
#   {glue:}`t43_best_loss` points: the 1.5x-for-1-point goal is {glue:}`t43_goal` (point
#   estimates). At batch 1 the gain is smaller ({glue:}`t43_best_b1`x): fixed per-operation
#   costs do not shrink with the tokens.
# - Compare on the same images with paired tests, against the right reference (an equally
#   fine-tuned control), and time as an interleaved ratio with its spread; a difference of a
#   few tenths of a point on 10,000 images is noise unless the paired test says otherwise.
# - Look at what is kept. Attention-based criteria favour the centre of CIFAR images, partly
#   for content and partly for position (noise inputs show the positional part); FEATHER's
#   uniform grid spreads the kept tokens by construction.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
