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
# # 6.2 Making activations sparser: ReLUfication, thresholds and top-k
#
# Notebook 6.1 found that a ReLU model's FFN activations are mostly exact zeros and a GELU
# model's are not. Most pretrained models use GELU or SiLU, and nobody wants to pretrain
# them again. Two families of methods make an existing model sparse. **ReLUfication**
# {cite}`mirzadeh2024relu` swaps the activation for ReLU and fine-tunes the model back to
# quality; ProSparse {cite}`song2025prosparse` adds an $L_1$ penalty on the activations whose
# weight grows smoothly during the fine-tune and reaches 89% sparsity in LLaMA2-7B with
# quality comparable to the original. **Thresholding** needs no training at all: CATS
# {cite}`lee2024cats` and TEAL {cite}`liu2025teal` zero every activation whose magnitude is
# below a threshold chosen from calibration data, one per layer, and CHESS
# {cite}`he2024chess` one per channel; they report 40-50% sparsity at almost no loss in
# LLMs. Li et al. {cite}`li2023lazy` keep only the $k$ largest activations of each token
# (top-$k$). This notebook applies each of them to chapter 1's CharGPT and draws quality
# against sparsity for all of them on one plot.
#
# **Learning objectives.** After this notebook you can
# 1. ReLUfy a trained GELU or SiLU model, fine-tune it, and follow its loss and sparsity step
#    by step, against a dense model fine-tuned the same way;
# 2. add a progressive $L_1$ penalty on activations (ProSparse) and a shifted ReLU, and say
#    what each buys;
# 3. calibrate per-layer (CATS/TEAL) and per-channel (CHESS) magnitude thresholds for a
#    target sparsity, and keep the top-$k$ activations per token;
# 4. compare every method on one quality-versus-sparsity plot against the dense baseline,
#    with the spread of the comparison.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import copy
import math
from functools import partial

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# The models of notebook 6.1 (loaded from the cache), a third one trained the same way with
# SiLU, the activation of LLaMA-style models (trained here once and cached), the baseline's
# validation windows, and calibration windows drawn from the *training* text, so that no
# threshold is tuned on the data it is measured on:

# %%
relu_mlp = partial(ml.models.FeedForward, act=nn.ReLU)
gelu_gpt, gelu_rec = ml.baselines.char_gpt()
relu_gpt, relu_rec = ml.baselines.char_gpt(variant="relu", mlp=relu_mlp)
silu_gpt, silu_rec = ml.baselines.char_gpt(variant="silu", mlp=partial(ml.models.FeedForward, act=nn.SiLU))
cfg = gelu_rec["config"]
corpus = ml.data.shakespeare()
val = ml.trim(list(ml.data.TokenBatches(corpus.val_ids, cfg["block_size"], cfg["batch_size"], steps=cfg["eval_batches"],
                                        device=dev, generator=torch.Generator().manual_seed(1234))))
calib = ml.trim(list(ml.data.TokenBatches(corpus.train_ids, cfg["block_size"], cfg["batch_size"],
                                  steps=ml.pick(smoke=2, cpu=10, gpu=20), device=dev,
                                  generator=torch.Generator().manual_seed(7))))
ref = ml.sparsity.token_losses(gelu_gpt, val)          # the dense GELU baseline, per character


def measure(model, name, **extra):
    """One point of the quality-vs-sparsity plot: loss, paired gap to GELU, exact-zero fraction."""
    losses = ml.sparsity.token_losses(model, val)
    gap, se = ml.bench.paired_difference(ref, losses)
    s = ml.sparsity.activation_sparsity(model, val)
    return {"method": name, **extra, "sparsity": sum(s.values()) / len(s), "val loss": losses.mean().item(),
            "gap": gap, "se": se}


points = [measure(gelu_gpt, "GELU (dense baseline)"), measure(relu_gpt, "ReLU from scratch (6.1)"),
          measure(silu_gpt, "SiLU from scratch")]
for p, m in zip(points, (gelu_gpt, relu_gpt, silu_gpt)):
    near = ml.sparsity.activation_sparsity(m, val, threshold=0.1)
    p["near zero"] = sum(near.values()) / len(near)
ml.bench.Table(points, title="The starting points: one recipe, three activations",
               columns=["method", "sparsity", "near zero", "val loss", "gap", "se"],
               formats={"sparsity": "{:.1%}", "near zero": "{:.1%}", "val loss": "{:.3f}", "gap": "{:+.3f}",
                        "se": "{:.3f}"},
               headers={"sparsity": "a = 0", "near zero": "|a| <= 0.1", "gap": "vs GELU (nats)", "se": "± (se)"})

# %% [markdown]
# ## 6.2.1 ReLUfication
#
# Swapping GELU for ReLU in a trained model changes every FFN's output: GELU's small
# negative outputs (down to $-0.17$) become zeros, and everything after them shifts. The
# loss jumps; a short fine-tune brings it back {cite}`mirzadeh2024relu`. `ml.sparsity.relufy`
# does the swap in place (the parameters and their names do not change):

# %%
ml.show(ml.sparsity.relufy)

# %%
points.append(measure(ml.sparsity.relufy(copy.deepcopy(gelu_gpt)), "GELU -> ReLU, no fine-tune"))
points.append(measure(ml.sparsity.relufy(copy.deepcopy(silu_gpt)), "SiLU -> ReLU, no fine-tune"))
for p, before in ((points[-2], points[0]), (points[-1], points[2])):
    print(f"{p['method']}: val loss {before['val loss']:.3f} -> {p['val loss']:.3f} nats, "
          f"exact zeros {p['sparsity']:.1%}")

# %% [markdown]
# **Four fine-tunes and two controls.** Each continues from trained weights for a fraction
# of the pre-training steps, with chapter 1's optimizer and a short warm-up and cosine
# decay, and logs loss and sparsity as it goes:
#
# - plain ReLUfication (stage 1 of Mirzadeh et al.), of the GELU and of the SiLU model;
# - ReLU with ProSparse's progressive $L_1$ penalty on the activations (below);
# - a shifted ReLU, $a = \max(z - b, 0)$ with $b > 0$ {cite}`mirzadeh2024relu`, which
#   switches off every neuron whose pre-activation is below $b$;
# - the controls: the GELU and SiLU models themselves, fine-tuned the same way. Chapter 1's
#   models were trained for minutes, so more steps alone may lower their loss; a sparse
#   model's gap is fair only against its control.
#
# ProSparse's penalty, $\mathcal L = \mathcal L_{CE} + \lambda(s)\,\frac{1}{L}\sum_l
# \operatorname{mean}|a_l|$ with $\lambda(s) = \lambda_{\max}\sin^2\!\big(\frac{\pi s}{2S}\big)$,
# grows smoothly from 0 so that the activations are not shocked (ProSparse uses several
# such sine stages). It needs the activations inside the loss: forward hooks on each FFN's
# `act` keep them during the forward pass, and the loss reads them:

# %%
ml.show(ml.sparsity.ProgressiveL1.__call__)

# %% [markdown]
# The fine-tunes run through `ml.sparsity.finetune` (chapter 1's CharGPT recipe on a copy
# of the model; the result is cached, so notebook 6.3 loads it).

# %%
ft_steps = ml.pick(smoke=20, cpu=300, gpu=250)
ft_every = max(1, ft_steps // 6)
l1_max, shift = 0.05, 0.25
relufied = lambda base=gelu_gpt, act=nn.ReLU: ml.sparsity.relufy(copy.deepcopy(base), act)
runs = {   # name: (model, record), control
    "GELU fine-tuned (control)": (ml.sparsity.finetune("gelu", gelu_gpt, ft_steps, log_every=ft_every), "GELU"),
    "ReLUfied": (ml.sparsity.finetune("relufied", relufied(), ft_steps, log_every=ft_every), "GELU"),
    "ReLUfied + progressive L1": (ml.sparsity.finetune("relufied-l1", relufied(), ft_steps, l1=l1_max,
                                                       log_every=ft_every), "GELU"),
    f"shifted ReLU (b = {shift})": (ml.sparsity.finetune(f"shifted-{shift}", relufied(act=partial(ml.sparsity.ShiftedReLU, shift)),
                                                         ft_steps, log_every=ft_every), "GELU"),
    "SiLU fine-tuned (control)": (ml.sparsity.finetune("silu", silu_gpt, ft_steps, log_every=ft_every), "SiLU"),
    "SiLU ReLUfied": (ml.sparsity.finetune("silu-relufied", relufied(silu_gpt), ft_steps, log_every=ft_every), "SiLU"),
}
controls = {c: ml.sparsity.token_losses(runs[f"{c} fine-tuned (control)"][0][0], val) for c in ("GELU", "SiLU")}
for name, ((model, _), c) in runs.items():
    p = measure(model, name, steps=ft_steps)
    p["gap to control"], p["se to control"] = ml.bench.paired_difference(controls[c], ml.sparsity.token_losses(model, val))
    points.append(p)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for name, ((_, record), _) in runs.items():
    log = record["history"]["rows"]
    axes[0].plot([r["step"] for r in log], [r["val_loss"] for r in log], marker=".", label=name)
    axes[1].plot([r["step"] for r in log], [100 * r["sparsity"] for r in log], marker=".", label=name)
for ax in axes:
    ax.set(xlabel="fine-tuning step")
axes[0].axhline(points[0]["val loss"], color="grey", linestyle="--", label="GELU baseline")
axes[0].set(ylabel="val loss (nats)", title="Recovering quality")
axes[1].set(ylabel="exact zeros (%)", ylim=(0, 100), title="Sparsity during the fine-tune")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()
ft_table = ml.bench.Table(points, title=f"ReLUfication: {ft_steps} fine-tuning steps "
                                        f"({100 * ft_steps / cfg['steps']:.0f}% of pre-training)",
                          columns=["method", "sparsity", "val loss", "gap", "gap to control", "se to control"],
                          formats={"sparsity": "{:.1%}", "val loss": "{:.3f}", "gap": "{:+.3f}",
                                   "gap to control": "{:+.3f}", "se to control": "{:.3f}"},
                          headers={"gap": "vs GELU (nats)", "gap to control": "vs control (nats)",
                                   "se to control": "± (se)"})
ft_table

# %% tags=["remove-cell"]
P = {p["method"]: p for p in points}
relu_ft, l1run, shifted = P["ReLUfied"], P["ReLUfied + progressive L1"], P[f"shifted ReLU (b = {shift})"]
ml.glue("s62_ft_steps", ft_steps)
ml.glue("s62_ft_pct", 100 * ft_steps / cfg["steps"], ".0f")
ml.glue("s62_swap_loss", P["GELU -> ReLU, no fine-tune"]["val loss"], ".3f")
ml.glue("s62_silu_swap_loss", P["SiLU -> ReLU, no fine-tune"]["val loss"], ".3f")
ml.glue("s62_silu_loss", P["SiLU from scratch"]["val loss"], ".3f")
ml.glue("s62_silu_near", 100 * P["SiLU from scratch"]["near zero"], ".1f")
ml.glue("s62_gelu_near", 100 * P["GELU (dense baseline)"]["near zero"], ".1f")
ml.glue("s62_silu_vs_gelu", P["SiLU from scratch"]["gap"], "+.3f")
ml.glue("s62_gelu_loss", P["GELU (dense baseline)"]["val loss"], ".3f")
ml.glue("s62_swap_sparsity", 100 * P["GELU -> ReLU, no fine-tune"]["sparsity"], ".1f")
for key, p in (("relufied", relu_ft), ("l1", l1run), ("shifted", shifted), ("scratch", P["ReLU from scratch (6.1)"]),
               ("control", P["GELU fine-tuned (control)"]), ("silu", P["SiLU ReLUfied"])):
    ml.glue(f"s62_{key}_sparsity", 100 * p["sparsity"], ".1f")
    ml.glue(f"s62_{key}_gap", p["gap"], "+.3f")
    ml.glue(f"s62_{key}_se", p["se"], ".3f")
    if "gap to control" in p:
        ml.glue(f"s62_{key}_cgap", p["gap to control"], "+.3f")
        ml.glue(f"s62_{key}_cse", p["se to control"], ".3f")
        ml.glue(f"s62_{key}_verdict", ml.bench.quality_verdict(-p["gap to control"], p["se to control"]))
ml.glue("s62_l1_max", l1_max)
ml.glue("s62_shift", shift)

# %% [markdown]
# The SiLU model trained by the same recipe has a loss {glue:}`s62_silu_vs_gelu` nats from
# GELU's and no exact zeros; {glue:}`s62_silu_near`% of its activations are within 0.1 of
# zero (GELU: {glue:}`s62_gelu_near`%). Right after the swap to ReLU the GELU model's loss is
# {glue:}`s62_swap_loss` nats (before: {glue:}`s62_gelu_loss`), the SiLU model's
# {glue:}`s62_silu_swap_loss` (before: {glue:}`s62_silu_loss`), and
# {glue:}`s62_swap_sparsity`% of the GELU model's activations are now exact zeros: the
# sparsity is already there, since a GELU model's pre-activations are mostly
# negative too (notebook 6.1's near-zeros), but the outputs have moved. After
# {glue:}`s62_ft_steps` steps ({glue:}`s62_ft_pct`% of the pre-training steps) the control,
# the GELU model fine-tuned the same way, is {glue:}`s62_control_gap` nats from where it
# started. Against that control (positive: a higher loss):
#
# - plain ReLUfication: {glue:}`s62_relufied_sparsity`% zeros, {glue:}`s62_relufied_cgap` ±
#   {glue:}`s62_relufied_cse` nats ({glue:}`s62_relufied_verdict`);
# - with the progressive $L_1$ penalty ($\lambda_{\max}$ = {glue:}`s62_l1_max`):
#   {glue:}`s62_l1_sparsity`% zeros, {glue:}`s62_l1_cgap` ± {glue:}`s62_l1_cse`
#   ({glue:}`s62_l1_verdict`);
# - shifted ReLU ($b$ = {glue:}`s62_shift`): {glue:}`s62_shifted_sparsity`% zeros,
#   {glue:}`s62_shifted_cgap` ± {glue:}`s62_shifted_cse` ({glue:}`s62_shifted_verdict`);
# - the SiLU model ReLUfied: {glue:}`s62_silu_sparsity`% zeros, {glue:}`s62_silu_cgap` ±
#   {glue:}`s62_silu_cse` nats from its own fine-tuned control ({glue:}`s62_silu_verdict`);
# - for comparison, the ReLU model trained from scratch (notebook 6.1):
#   {glue:}`s62_scratch_sparsity`% zeros, {glue:}`s62_scratch_gap` ± {glue:}`s62_scratch_se`
#   nats from the GELU baseline it was trained alongside.
#
# ("better" and "worse" are `ml.bench.quality_verdict` of the paired gap at two standard
# errors.)
#
# ## 6.2.2 Training-free thresholds: per layer and per channel
#
# A threshold turns small activations into zeros without any training:
# $a' = a\,\mathbb 1[|a| > t]$, `F.hardshrink` in PyTorch, `ml.sparsity.sparsify` here. The
# question is which $t$. One number for the whole model treats a layer with large
# activations like one with small ones. CATS {cite}`lee2024cats` and TEAL {cite}`liu2025teal`
# choose, for a target sparsity $s$, the threshold of each layer $l$ as the $s$-quantile of
# $|a_l|$ over calibration data; CHESS {cite}`he2024chess` goes one step further and gives
# every channel (neuron) $i$ its own quantile $t_{l,i}$:

# %%
ml.show(ml.sparsity.calibrate_thresholds)

# %% [markdown]
# First a check of the definition against PyTorch, then of the calibration: applied to the
# calibration data itself, the thresholds of the first FFN (whose input the thresholds
# cannot change) must zero at least the target fraction, and barely more.

# %% tags=["nbval-check-output"]
h = torch.randn(1000, generator=torch.Generator().manual_seed(0))
assert torch.equal(ml.sparsity.sparsify(h, 0.3), F.hardshrink(h, 0.3))
checks = []
for per_channel in (False, True):
    th = ml.sparsity.calibrate_thresholds(gelu_gpt, calib, 0.7, per_channel=per_channel)
    first = next(iter(th))
    got = ml.sparsity.activation_sparsity(ml.sparsity.apply_thresholds(copy.deepcopy(gelu_gpt), th), calib)[first]
    checks.append(0.7 <= got < 0.72)
print(f"sparsify == F.hardshrink: True; calibrated sparsity of the first FFN in [0.70, 0.72), "
      f"per layer and per channel: {checks}")
assert all(checks)

# %%
targets = ml.trim([0.5, 0.7, 0.8, 0.9, 0.95])
sweep = []
for base_name, base in (("GELU", gelu_gpt), ("ReLU", relu_gpt)):
    for per_channel, kind in ((False, "per layer (CATS/TEAL)"), (True, "per channel (CHESS)")):
        for s in targets:
            th = ml.sparsity.calibrate_thresholds(base, calib, s, per_channel=per_channel)
            m = ml.sparsity.apply_thresholds(copy.deepcopy(base), th)
            sweep.append(measure(m, f"{base_name}, threshold {kind}", target=s))

# %% [markdown]
# ## 6.2.3 Top-k activations
#
# Keeping the $k$ largest activations of every token fixes the sparsity at exactly
# $1 - k/H$ for every token, where a threshold lets some tokens keep more neurons and
# others fewer. `ml.sparsity.TopK` wraps an activation:

# %%
ml.show(ml.sparsity.TopK.forward)

# %%
H = gelu_gpt.blocks[0].mlp.fc.out_features
for base_name, base in (("GELU", gelu_gpt), ("ReLU", relu_gpt)):
    for s in targets:
        k = max(1, round((1 - s) * H))
        m = copy.deepcopy(base)
        for _, ffn in ml.sparsity.feed_forwards(m):
            ffn.act = ml.sparsity.TopK(ffn.act, k)
        sweep.append(measure(m, f"{base_name}, top-k", target=s, k=k))

# %% [markdown]
# ## 6.2.4 Quality against sparsity
#
# Every method on one plot: the paired loss gap to the dense GELU model against the
# fraction of exact zeros it leaves in the FFNs. The grey band is the $\pm 0.05$ nats this
# chapter allows; the error bars are two standard errors of the paired gap.

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
methods = list(dict.fromkeys(p["method"] for p in sweep))
for name in methods:
    pts = sorted((p for p in sweep if p["method"] == name), key=lambda p: p["sparsity"])
    ax0.errorbar([100 * p["sparsity"] for p in pts], [p["gap"] for p in pts], yerr=[2 * p["se"] for p in pts],
                 marker="o", markersize=3, linestyle="-" if name.startswith("GELU") else "--", label=name)
for p in points[1:]:
    ax1.errorbar(100 * p["sparsity"], p["gap"], yerr=2 * p["se"], marker="*" if "steps" in p else "o",
                 markersize=8, linestyle="none", label=p["method"])
for ax, title in ((ax0, "Training-free: thresholds and top-k"), (ax1, "Trained: from scratch, ReLUfied")):
    ax.axhspan(-0.05, 0.05, color="grey", alpha=0.2)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="exact zeros in the FFNs (%)", xlim=(-3, 100), title=title)
    ax.legend(fontsize=6, loc="upper left")
ax0.set(ylabel="val loss - GELU baseline (nats)")
fig.tight_layout()
plt.show()

# %%
def best_at(level, pool):
    """The method with the lowest loss gap among points with sparsity >= level."""
    ok = [p for p in pool if p["sparsity"] >= level]
    return min(ok, key=lambda p: p["gap"]) if ok else None


tuned = [p for p in points if "steps" in p and "(control)" not in p["method"]]        # the sparse fine-tunes
summary = []
for level in (0.5, 0.8, 0.9):
    for family, pool in (("training-free, GELU model", [p for p in sweep if p["method"].startswith("GELU")]),
                         ("training-free, ReLU model", [p for p in sweep if p["method"].startswith("ReLU")]),
                         ("fine-tuned (6.2.1)", tuned)):
        b = best_at(level, pool)
        summary.append({"at least": f"{level:.0%}", "family": family, "best method": b["method"] if b else "none reaches it",
                        "sparsity": b["sparsity"] if b else None, "gap": b["gap"] if b else None,
                        "se": b["se"] if b else None})
ml.bench.Table(summary, title="Best loss gap at a given sparsity (CharGPT validation)",
               formats={"sparsity": "{:.1%}", "gap": "{:+.3f}", "se": "{:.3f}"},
               headers={"gap": "vs GELU (nats)", "se": "± (se)"})

# %% tags=["remove-cell"]
def glue_point(key, p):
    ml.glue(f"{key}_sparsity", "n/a" if p is None else f"{100 * p['sparsity']:.1f}")
    ml.glue(f"{key}_gap", "n/a" if p is None else f"{p['gap']:+.3f}")
    ml.glue(f"{key}_method", "none" if p is None else p["method"])


S = {(p["method"], p.get("target")): p for p in sweep}
glue_point("s62_gelu_layer50", S.get(("GELU, threshold per layer (CATS/TEAL)", 0.5)))
glue_point("s62_gelu_chan50", S.get(("GELU, threshold per channel (CHESS)", 0.5)))
glue_point("s62_gelu_layer90", S.get(("GELU, threshold per layer (CATS/TEAL)", 0.9)))
glue_point("s62_gelu_chan90", S.get(("GELU, threshold per channel (CHESS)", 0.9)))
glue_point("s62_relu_layer90", S.get(("ReLU, threshold per layer (CATS/TEAL)", 0.9)))
glue_point("s62_gelu_topk90", S.get(("GELU, top-k", 0.9)))
glue_point("s62_relu_topk90", S.get(("ReLU, top-k", 0.9)))
glue_point("s62_best90_free", best_at(0.9, sweep))
glue_point("s62_best90_ft", best_at(0.9, tuned))
glue_point("s62_sparsest_ft", max(tuned, key=lambda p: p["sparsity"]))
chan_better = [S[("GELU, threshold per channel (CHESS)", s)]["gap"] < S[("GELU, threshold per layer (CATS/TEAL)", s)]["gap"]
               for s in targets if ("GELU, threshold per channel (CHESS)", s) in S]
ml.glue("s62_chan_wins", sum(chan_better))
ml.glue("s62_n_targets", len(chan_better))

# %% [markdown]
# Without any training, calibrated thresholds take the GELU model to
# {glue:}`s62_gelu_layer50_sparsity`% zeros at {glue:}`s62_gelu_layer50_gap` nats per layer
# and {glue:}`s62_gelu_chan50_gap` per channel; at a 90% target the gaps are
# {glue:}`s62_gelu_layer90_gap` (per layer) and {glue:}`s62_gelu_chan90_gap` (per channel),
# and per-channel quantiles give the lower loss at {glue:}`s62_chan_wins` of
# {glue:}`s62_n_targets` targets. Top-$k$ at the same 90% costs {glue:}`s62_gelu_topk90_gap`
# on the GELU model and {glue:}`s62_relu_topk90_gap` on the ReLU one. The ReLU model is the
# better starting point for thresholds: most of its activations are zeros already, and with
# a 90% target it stays {glue:}`s62_relu_layer90_gap` nats from GELU. At 90% sparsity or
# more, the best training-free point is "{glue:}`s62_best90_free_method`"
# ({glue:}`s62_best90_free_gap` nats); among the fine-tunes of section 6.2.1 the sparsest
# reaches {glue:}`s62_sparsest_ft_sparsity`% ("{glue:}`s62_sparsest_ft_method`",
# {glue:}`s62_sparsest_ft_gap` nats).
#
# The per-channel rule here is a simplification: it gives every neuron the same sparsity,
# its own quantile, whatever its weights. CHESS derives each channel's threshold from an
# estimate of how much zeroing it changes the output, which a quantile of the activation
# alone does not see; with our rule, per-channel thresholds won at {glue:}`s62_chan_wins` of
# {glue:}`s62_n_targets` targets.
#
# The shape of the plot is the lesson: training-free methods are nearly free at moderate
# sparsity and fall off a cliff beyond it, while a model *trained* to be sparse (from
# scratch, or ReLUfied with a fine-tune) sits at high sparsity with a small gap. Sparsity
# is cheap to find and expensive to force.
#
# ## Claimed vs measured
#
# | source | claim | measured here (CharGPT, scale and CPU in the banner) |
# | --- | --- | --- |
# | {cite}`mirzadeh2024relu` | replacing GELU/SiLU by ReLU and fine-tuning recovers the quality with high sparsity; a shifted ReLU raises the sparsity further | ReLUfied GELU: {glue:}`s62_relufied_sparsity`% zeros, {glue:}`s62_relufied_cgap` nats from its fine-tuned control after {glue:}`s62_ft_steps` steps; ReLUfied SiLU: {glue:}`s62_silu_sparsity`%, {glue:}`s62_silu_cgap`; shifted ReLU: {glue:}`s62_shifted_sparsity`%, {glue:}`s62_shifted_cgap` |
# | {cite}`song2025prosparse` | ReLU + progressive $L_1$ regularization: 89.32% sparsity in LLaMA2-7B at comparable quality | progressive $L_1$: {glue:}`s62_l1_sparsity`% zeros, {glue:}`s62_l1_cgap` ± {glue:}`s62_l1_cse` nats from the control |
# | {cite}`lee2024cats` | training-free thresholds: about 50% activation sparsity within 1-2% of the base model's downstream quality | per-layer thresholds on GELU at a 50% target: {glue:}`s62_gelu_layer50_gap` nats |
# | {cite}`liu2025teal` | 40-50% model-wide sparsity with minimal degradation, training-free | (TEAL also thresholds attention inputs; here only FFNs) 50% target: {glue:}`s62_gelu_layer50_gap` nats |
# | {cite}`he2024chess` | channel-wise thresholds degrade quality less than layer-wise at the same sparsity | per-channel quantiles (a simplified rule, not CHESS's criterion): lower loss at {glue:}`s62_chan_wins` of {glue:}`s62_n_targets` targets |
#
# The papers' models are LLMs with gated FFNs (SwiGLU); thresholds there act on the gate.
# Our CharGPT has a plain FFN, the case of Li et al. and of OPT in Deja Vu. ProSparse's
# numbers come from continued training on billions of tokens, ours from
# {glue:}`s62_ft_steps` steps.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1: A stronger penalty (measure, medium)
#
# ProSparse raises the $L_1$ factor in stages until the sparsity stops growing. Fine-tune the
# ReLUfied GELU model with four times the $\lambda_{\max}$ used above and compare its sparsity
# and its gap to the control with the run of section 6.2.1. Where would you stop?

# %% tags=["solution", "hide-cell"]
# Solution 1
strong, _ = ml.sparsity.finetune("relufied-l1x4", relufied(), ft_steps, l1=4 * l1_max, log_every=ft_every)
p4 = measure(strong, f"ReLUfied + progressive L1 x4 (lambda_max = {4 * l1_max:g})", steps=ft_steps)
p4["gap to control"], p4["se to control"] = ml.bench.paired_difference(controls["GELU"], ml.sparsity.token_losses(strong, val))
ml.bench.Table([l1run, p4], title="Solution 1: the L1 penalty, x1 and x4",
               columns=["method", "sparsity", "gap to control", "se to control"],
               formats={"sparsity": "{:.1%}", "gap to control": "{:+.3f}", "se to control": "{:.3f}"},
               headers={"gap to control": "vs control (nats)", "se to control": "± (se)"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The table above (computed by the hidden cell) puts the two penalties side by side. The
# penalty trades loss for zeros: a larger $\lambda$ pushes more pre-activations below zero
# and costs more cross-entropy. Stop where the extra sparsity no longer pays for its loss:
# notebook 6.3 shows that at batch 1 the speed of a sparse FFN depends on the fraction of
# neurons it still reads, $1 - s$, so going from 90% to 95% halves the work of the
# down-projection, while 50% to 55% changes it by a tenth. Where the loss budget is fixed
# (this chapter allows 0.05 nats), take the largest $\lambda$ that stays within it.
# :::

# %% [markdown]
# ### Exercise 2: A threshold for ReLU, FATReLU (implement, easy)
#
# ProSparse's last step replaces ReLU by FATReLU, $a = z\,\mathbb 1[z > t]$ (a ReLU that
# also zeroes small positive values). Write it as a module in three lines, check that it
# equals `ml.sparsity.Thresholded(nn.ReLU(), t)`, and apply it to the ReLUfied model with
# `t = 0.05`. How much sparsity does it add, at what cost?

# %% tags=["solution", "hide-cell"]
# Solution 2
class FATReLU(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z * (z > self.t)


z_test = torch.randn(4, 7, 64)
assert torch.equal(FATReLU(0.05)(z_test), ml.sparsity.Thresholded(nn.ReLU(), 0.05)(z_test))
fat = ml.sparsity.relufy(copy.deepcopy(runs["ReLUfied"][0][0]), partial(FATReLU, 0.05))
ml.bench.Table([relu_ft, measure(fat, "ReLUfied + FATReLU(0.05)")], title="Solution 2",
               columns=["method", "sparsity", "gap", "se"],
               formats={"sparsity": "{:.1%}", "gap": "{:+.3f}", "se": "{:.3f}"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# For $z > t \ge 0$ both give $z$; for $z \le t$ both give 0 (ReLU first, then the threshold
# on $|a| = a$), so they are equal element for element. The table above shows the extra
# sparsity and the cost on the ReLUfied model: the small positive activations it removes
# carry little of the output, which is why ProSparse can add this step at the end.
# :::

# %% [markdown]
# ### Exercise 3: Why do thresholds fail at high sparsity? (explain, medium)
#
# The training-free curves of section 6.2.4 are flat and then fall off a cliff. Explain the
# cliff in terms of what the threshold removes, and why a fine-tuned ReLU model does not
# have it at the same sparsity.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# A threshold removes the activations of smallest magnitude first. At moderate sparsity
# those are the near-zeros, whose contribution $a_i W_2[:, i]$ to the output is tiny, so the
# output barely moves. Past the point where the model's own near-zeros are used up, the
# threshold starts removing activations that carry signal, and every further percent
# removes larger ones: the error of the FFN output grows faster than linearly and
# compounds through the layers. A model trained with ReLU (or fine-tuned after the swap)
# has *learned* to compute with few active neurons: its exact zeros were zero during
# training, the other layers adapted to them, and nothing is removed at inference.
# :::

# %% [markdown]
# ## Key takeaways
#
# - A trained GELU model is one swap away from ReLU sparsity; the swap breaks it and a short
#   fine-tune repairs it. A progressive $L_1$ penalty or a shifted ReLU buys more zeros for
#   a little more loss.
# - Magnitude thresholds need no training: calibrate them per layer (or per channel) from
#   data for a target sparsity; they are nearly free at moderate sparsity and collapse
#   beyond it. Top-$k$ fixes the sparsity per token instead.
# - Compare methods at equal sparsity, on the same tokens, with the spread of the paired
#   difference: the plot of section 6.2.4.
# - Sparsity is not speed yet: notebook 6.3 measures what a CPU makes of it.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
