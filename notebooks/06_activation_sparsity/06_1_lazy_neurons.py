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
# # 6.1 Lazy neurons: measuring activation sparsity
#
# The feed-forward network (FFN) of a transformer block holds two thirds of its weights:
# $x \mapsto W_2\,\phi(W_1 x + b_1) + b_2$ with a hidden layer four times wider than the
# model. Li et al. {cite}`li2023lazy` looked at its hidden activations $a = \phi(W_1 x + b_1)$
# in trained transformers with $\phi = \mathrm{ReLU}$ and found them almost empty: on average
# 3.0% of the entries are nonzero for each input in T5-Base and 6.3% in ViT-B/16, sparser in
# larger models, at every depth, on training and test data alike, without anything in the
# training asking for it. They called it the *lazy neuron phenomenon*. A zero activation
# means that the matching column of $W_2$ is multiplied by zero: its weights need not be
# read at all, which is where the speed of chapters 6.2 and 6.3 will come from. Modern
# models mostly use GELU {cite}`hendrycks2016gelu` or SiLU {cite}`elfwing2018silu`
# instead, which are never exactly zero; Mirzadeh et al. {cite}`mirzadeh2024relu` argue that
# this gives up the sparsity for little or no gain in quality. This notebook measures all of
# it on chapter 1's CharGPT and ViT, trained with ReLU and with GELU by the same recipe
# (the SiLU model, LLaMA's activation, comes in notebook 6.2, where it is ReLUfied).
#
# **Learning objectives.** After this notebook you can
# 1. say where exact zeros come from (ReLU and a negative pre-activation) and compute the
#    zero fraction of ReLU, GELU and SiLU for a Gaussian pre-activation;
# 2. measure the fraction of exact and near-zero hidden activations of every FFN of a model
#    with forward hooks, and check it against a hand-written forward pass;
# 3. compare ReLU and GELU models trained by the same recipe: quality and sparsity, per
#    layer, per token and per neuron;
# 4. tell contextual sparsity (few neurons per token, different ones for different tokens)
#    from dead neurons, and explain why only the first one needs a per-token mechanism;
# 5. watch sparsity emerge during training, and compare widths.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

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
# ## 6.1.1 Where exact zeros come from
#
# The three activations of this chapter are
#
# $$\mathrm{ReLU}(x) = \max(x, 0), \qquad \mathrm{GELU}(x) = x\,\Phi(x), \qquad
# \mathrm{SiLU}(x) = x\,\sigma(x) = \frac{x}{1 + e^{-x}},$$
#
# with $\Phi$ the standard normal CDF and $\sigma$ the logistic sigmoid. Only ReLU outputs
# exact zeros, for every $x \le 0$. GELU and SiLU pass small negative values (their minima
# are $-0.17$ and $-0.28$) and tend to zero only as $x \to -\infty$, so for them the useful
# question is how many activations are *near* zero, $|a| \le t$ for a small $t$.
#
# If a neuron's pre-activation $z = w^\top x + b$ is Gaussian, $z \sim \mathcal N(\mu, s^2)$,
# a ReLU neuron is zero with probability
#
# $$P(\mathrm{ReLU}(z) = 0) = P(z \le 0) = \Phi(-\mu / s).$$
#
# At initialization ($\mu = 0$) that is one half. A network whose ReLU activations are 90%
# zero has therefore *moved* its pre-activations: $\Phi(-\mu/s) = 0.9$ means
# $\mu \approx -1.28\,s$. The fraction of near-zeros of GELU and SiLU has no such closed
# form; here it is by sampling, checked against the closed form for ReLU:

# %%
acts = {"ReLU": F.relu, "GELU": F.gelu, "SiLU": F.silu}
z = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
rows = []
for mu in (0.0, -1.0, -2.0):
    row = {"pre-activation": f"z ~ N({mu:g}, 1)", "Phi(-mu)": 0.5 * math.erfc(mu / math.sqrt(2))}
    for name, f in acts.items():
        for t in (0.0, 0.05):
            row[f"{name} |a|<={t:g}"] = (f(z + mu).abs() <= t).double().mean().item()
    rows.append(row)
mc_err = max(abs(r["ReLU |a|<=0"] - r["Phi(-mu)"]) for r in rows)
assert mc_err < 3e-3, mc_err
gauss_table = ml.bench.Table(rows, title="Fraction of (near-)zero activations for a Gaussian pre-activation (10^6 samples)",
                             formats={k: "{:.1%}" for k in rows[0] if k != "pre-activation"})
gauss_table.transpose("pre-activation")

# %%
x = torch.linspace(-4, 3, 701)
fig, ax = plt.subplots(figsize=(6.4, 3.2))
for name, f in acts.items():
    ax.plot(x, f(x), label=name)
ax.axhspan(-0.05, 0.05, color="grey", alpha=0.2, label="|a| <= 0.05")
ax.set(xlabel="pre-activation z", ylabel="activation a", ylim=(-0.5, 3), title="ReLU, GELU and SiLU")
ax.legend()
plt.show()

# %% [markdown]
# At $\mu = 0$ half of the ReLU outputs are exactly zero and GELU and SiLU have far fewer
# near-zeros: their band $|a| \le 0.05$ catches only the pre-activations close to 0 and the
# far negative tail. As $\mu$ moves down, ReLU becomes exactly sparse and GELU's near-zeros
# grow, since its negative lobe is shallow; SiLU's shrink at first, because its lobe is
# deeper (its minimum, $-0.28$, is at $z \approx -1.28$): a SiLU neuron is near zero only
# when its pre-activation is far below $-2$.
#
# ## 6.1.2 Counting lazy neurons
#
# Chapter 1's CharGPT has one `ml.models.FeedForward` per block, `fc -> act -> proj`. To
# count its hidden zeros by hand, walk through the blocks the way `Block.forward` does
# (pre-LN: $x \leftarrow x + \mathrm{attn}(\mathrm{LN}_1 x)$, then the FFN on $\mathrm{LN}_2 x$)
# and look at $a$ on the way:

# %%
gelu_gpt, gelu_rec = ml.baselines.char_gpt()                # chapter 1's CharGPT (GELU)
corpus = ml.data.shakespeare()
cfg = gelu_rec["config"]
val = ml.trim(list(ml.data.TokenBatches(corpus.val_ids, cfg["block_size"], cfg["batch_size"], steps=cfg["eval_batches"],
                                        device=dev, generator=torch.Generator().manual_seed(1234))))  # the baseline's val windows


def sparsity_by_hand(gpt, idx, threshold=0.0):
    """Fraction of |a| <= threshold in each block's FFN, recomputing the forward pass."""
    out = []
    with torch.no_grad():
        x = gpt.tok_emb(idx) + gpt.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        for block in gpt.blocks:
            x = x + block.attn(block.norm1(x))
            a = block.mlp.act(block.mlp.fc(block.norm2(x)))          # (B, T, H): the hidden activations
            out.append((a.abs() <= threshold).float().mean().item())
            x = x + block.mlp.proj(a)
    return out


by_hand = sparsity_by_hand(gelu_gpt.eval(), val[0][0], threshold=0.05)

# %% [markdown]
# The library does the same with a forward hook on each FFN's activation, so it works for
# any model built from `FeedForward`s (the ViT too) and leaves the model as it found it:

# %%
ml.show(ml.sparsity.activation_sparsity)

# %% tags=["nbval-check-output"]
lib = ml.sparsity.activation_sparsity(gelu_gpt, [val[0]], threshold=0.05)
err = max(abs(a - b) for a, b in zip(by_hand, lib.values()))
print(f"every FFN, hooks vs forward pass by hand: max difference < 1e-6: {err < 1e-6}")
assert err < 1e-6 and not any(b.mlp.act._forward_hooks for b in gelu_gpt.blocks)

# %% [markdown]
# ## 6.1.3 ReLU against GELU: one recipe, one part swapped
#
# The ReLU models are chapter 1's baselines with one argument changed,
# `mlp=partial(ml.models.FeedForward, act=nn.ReLU)`: same data, steps, optimizer and seed.
# They are trained once and cached (the `variant` name keys the cache), so notebooks 6.2
# and 6.3 reuse them. The quality comparison is paired: the same validation characters
# for every model, the standard error of the per-character difference, and
# `ml.bench.quality_verdict` for the words (characters are treated as independent, so the
# error bar is a lower bound).

# %%
relu_mlp = partial(ml.models.FeedForward, act=nn.ReLU)
gpts = {"GELU": (gelu_gpt, gelu_rec), "ReLU": ml.baselines.char_gpt(variant="relu", mlp=relu_mlp)}
gelu_vit, gelu_vit_rec = ml.baselines.cifar_vit()
vits = {"GELU": (gelu_vit, gelu_vit_rec), "ReLU": ml.baselines.cifar_vit(variant="relu", mlp=relu_mlp)}
vit_cfg = gelu_vit_rec["config"]
xt, yt = ml.data.cifar10(train=False)
xt, yt = ml.data.subset(xt, yt, vit_cfg["n_test"], seed=0) if vit_cfg["n_test"] < len(yt) else (xt, yt)
vit_test = ml.trim(list(ml.data.DeviceLoader(xt, yt, 500, shuffle=False, mean=ml.data.CIFAR10_MEAN,
                                             std=ml.data.CIFAR10_STD, device=dev)))     # (images, labels) batches
thresholds = (0.0, 0.01, 0.1)

# %%
ref_losses = ml.sparsity.token_losses(gelu_gpt, val)
rows, gpt_layers = [], {}
for act, (model, rec) in gpts.items():
    losses = ml.sparsity.token_losses(model, val)
    gap, se = ml.bench.paired_difference(ref_losses, losses)
    per = {t: ml.sparsity.activation_sparsity(model, val, threshold=t) for t in thresholds}
    gpt_layers[act] = (list(per[0.0].values()), list(per[0.1].values()))
    rows.append({"model": "CharGPT", "FFN act": act, "quality": f"{losses.mean().item():.3f} nats",
                 "vs GELU": "" if act == "GELU" else f"{gap:+.3f} ± {se:.3f}",
                 **{f"|a| <= {t:g}": sum(per[t].values()) / len(per[t]) for t in thresholds}})
vit_layers, vit_correct = {}, {}
for act, (model, rec) in vits.items():
    with torch.no_grad():
        model.eval()
        vit_correct[act] = torch.cat([model(x).argmax(-1) == y for x, y in vit_test]).cpu()
    acc = vit_correct[act].float().mean().item()
    per = {t: ml.sparsity.activation_sparsity(model, vit_test, threshold=t) for t in thresholds}
    vit_layers[act] = (list(per[0.0].values()), list(per[0.1].values()))
    rows.append({"model": "ViT", "FFN act": act,
                 "quality": f"{100 * acc:.1f} ± {100 * ml.bench.accuracy_se(acc, len(vit_correct[act])):.1f} %",
                 "vs GELU": "" if act == "GELU" else f"p = {ml.bench.mcnemar(vit_correct['GELU'], vit_correct[act]):.2f} (McNemar)",
                 **{f"|a| <= {t:g}": sum(per[t].values()) / len(per[t]) for t in thresholds}})
sparsity_table = ml.bench.Table(rows, title="Hidden activations with |a| <= t, mean over the FFNs (validation/test data)",
                                headers={"quality": "val loss / test acc.", "vs GELU": "vs GELU (paired)"},
                                formats={f"|a| <= {t:g}": "{:.1%}" for t in thresholds})
sparsity_table

# %% tags=["remove-cell"]
by = {(r["model"], r["FFN act"]): r for r in rows}
gap_relu, se_relu = ml.bench.paired_difference(ref_losses, ml.sparsity.token_losses(gpts["ReLU"][0], val))
ml.glue("s61_gpt_relu_zero", 100 * by[("CharGPT", "ReLU")]["|a| <= 0"], ".1f")
ml.glue("s61_gpt_relu_nonzero", 100 - 100 * by[("CharGPT", "ReLU")]["|a| <= 0"], ".1f")
ml.glue("s61_vit_relu_zero", 100 * by[("ViT", "ReLU")]["|a| <= 0"], ".1f")
ml.glue("s61_vit_relu_nonzero", 100 - 100 * by[("ViT", "ReLU")]["|a| <= 0"], ".1f")
ml.glue("s61_gpt_gelu_near", 100 * by[("CharGPT", "GELU")]["|a| <= 0.01"], ".1f")
ml.glue("s61_gpt_gelu_near01", 100 * by[("CharGPT", "GELU")]["|a| <= 0.1"], ".1f")
ml.glue("s61_vit_gelu_near01", 100 * by[("ViT", "GELU")]["|a| <= 0.1"], ".1f")
ml.glue("s61_gap_relu", gap_relu, "+.3f")
ml.glue("s61_se_relu", se_relu, ".3f")
ml.glue("s61_relu_verdict", ml.bench.quality_verdict(-gap_relu, se_relu))
ml.glue("s61_gelu_loss", ref_losses.mean().item(), ".3f")
ml.glue("s61_vit_p", ml.bench.mcnemar(vit_correct["GELU"], vit_correct["ReLU"]), ".2f")
ml.glue("s61_vit_acc_gelu", 100 * vit_correct["GELU"].float().mean().item(), ".1f")
ml.glue("s61_vit_acc_relu", 100 * vit_correct["ReLU"].float().mean().item(), ".1f")
ml.glue("s61_within_005", "within" if abs(gap_relu) + 2 * se_relu <= 0.05 else "not clearly within")

# %% [markdown]
# The ReLU CharGPT's hidden activations are {glue:}`s61_gpt_relu_zero`% exactly zero
# ({glue:}`s61_gpt_relu_nonzero`% nonzero), the ReLU ViT's {glue:}`s61_vit_relu_zero`%. The
# GELU model has hardly any exact zeros, and its near-zeros depend on what "near" means:
# {glue:}`s61_gpt_gelu_near`% of its activations are within 0.01 of zero and
# {glue:}`s61_gpt_gelu_near01`% within 0.1. The price
# of ReLU in quality: its validation loss differs from GELU's by {glue:}`s61_gap_relu` ±
# {glue:}`s61_se_relu` nats ({glue:}`s61_relu_verdict`; positive means worse), which is
# {glue:}`s61_within_005` the 0.05 nats this chapter allows itself. For the ViT, ReLU reaches
# {glue:}`s61_vit_acc_relu`% against GELU's {glue:}`s61_vit_acc_gelu`% (McNemar's test on
# the same images: p = {glue:}`s61_vit_p`). These are small models trained for minutes;
# the papers' sparsities come from models trained for days, and the next sections show
# that sparsity keeps growing with training.
#
# **Per layer.** Li et al. find sparsity at all depths. Here, per FFN, exact zeros (solid)
# and activations within 0.1 of zero (dashed):

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for ax, (name, layers) in zip(axes, [("CharGPT", gpt_layers), ("ViT", vit_layers)]):
    for i, (act, (zeros, near)) in enumerate(layers.items()):
        blocks = range(1, len(zeros) + 1)
        ax.plot(blocks, [100 * v for v in zeros], marker="o", color=f"C{i}", label=f"{act}, a = 0")
        ax.plot(blocks, [100 * v for v in near], marker=".", linestyle="--", color=f"C{i}", label=f"{act}, |a| <= 0.1")
    ax.set(xlabel="block", ylabel="activations (%)", ylim=(0, 100), title=name, xticks=list(blocks))
    ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6.1.4 Per token and per neuron: contextual sparsity
#
# A sparsity of 90% on average could mean two very different things. Either each token
# uses a few neurons and different tokens use different ones (*contextual* sparsity, the
# premise of Deja Vu {cite}`liu2023dejavu`), or the same neurons are off for every token
# (*dead* neurons). Dead neurons are easy: delete their rows of $W_1$ and columns of $W_2$
# once, for every input. Contextual sparsity needs a decision per token, which is what
# notebook 6.3 builds. Three measurements tell them apart: the distribution over tokens
# of the fraction of neurons each token activates; the firing rate of each neuron (how
# often it is active); and the union of the active sets as tokens accumulate.

# %%
relu_gpt = gpts["ReLU"][0]
acts_relu = ml.sparsity.hidden_activations(relu_gpt, torch.cat([x for x, _ in val[:4]]))
names = list(acts_relu)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
neuron_rows = []
for l, name in enumerate(names):
    on = (acts_relu[name] > 0).flatten(0, 1).float()           # (tokens, H): active or not
    per_token, rate = on.mean(1), on.mean(0)
    axes[0].hist(100 * per_token.cpu(), bins=40, histtype="step", label=f"block {l + 1}")
    union = torch.cummax(on[torch.randperm(on.shape[0], generator=torch.Generator().manual_seed(0))], 0).values.mean(1)
    axes[1].plot(range(1, len(union) + 1), 100 * union.cpu(), label=f"block {l + 1}")
    neuron_rows.append({"FFN": name, "tokens": on.shape[0], "active per token (median)": per_token.median().item(),
                        "dead (never active)": (rate == 0).float().mean().item(),
                        "rarely active (< 1% of tokens)": (rate < 0.01).float().mean().item(),
                        "always active (> 99%)": (rate > 0.99).float().mean().item(),
                        "union after 64 tokens": union[min(63, len(union) - 1)].item()})
axes[0].set(xlabel="neurons active in a token (%)", ylabel="tokens", title="ReLU CharGPT: per token")
axes[1].set(xscale="log", xlabel="tokens seen", ylabel="union of active neurons (%)", ylim=(0, 100),
            title="Neurons used by at least one token")
axes[0].legend()
fig.tight_layout()
plt.show()
neuron_table = ml.bench.Table(neuron_rows, title="ReLU CharGPT: neurons per token and per neuron",
                              formats={k: "{:.1%}" for k in neuron_rows[0] if k not in ("FFN", "tokens")})
neuron_table

# %% tags=["remove-cell"]
ml.glue("s61_tok_median", 100 * sum(r["active per token (median)"] for r in neuron_rows) / len(neuron_rows), ".1f")
ml.glue("s61_dead", 100 * sum(r["dead (never active)"] for r in neuron_rows) / len(neuron_rows), ".1f")
ml.glue("s61_rare", 100 * sum(r["rarely active (< 1% of tokens)"] for r in neuron_rows) / len(neuron_rows), ".1f")
ml.glue("s61_union64", 100 * sum(r["union after 64 tokens"] for r in neuron_rows) / len(neuron_rows), ".0f")
ml.glue("s61_tokens", neuron_rows[0]["tokens"], ",")

# %% [markdown]
# A typical token activates {glue:}`s61_tok_median`% of the neurons of a layer (median over
# tokens, averaged over layers). Over {glue:}`s61_tokens` tokens, {glue:}`s61_dead`% of the
# neurons never fire and {glue:}`s61_rare`% fire for fewer than 1% of tokens; 64 tokens
# already touch {glue:}`s61_union64`% of the neurons between them. So the zeros are mostly
# contextual: which neurons are off depends on the token. Deleting the dead neurons saves
# little (and whatever it saves, it saves for free); the rest has to be skipped token by
# token, and at batch size $B$ only the neurons off for *all* $B$ tokens can be skipped.
# The right plot is why activation sparsity is a small-batch technique.
#
# **The ViT's tokens.** Its class token (the one the head reads) and the 64 patch tokens
# play different roles. Is one of them lazier?

# %%
relu_vit = vits["ReLU"][0]
images = next(iter(vit_test))[0][:64]
acts_vit = ml.sparsity.hidden_activations(relu_vit, images)
vit_tok_rows = []
for name, a in acts_vit.items():
    on = (a > 0).float()                                     # (B, 1 + patches, H)
    vit_tok_rows.append({"FFN": name, "class token: active": on[:, 0].mean().item(),
                         "patch tokens: active": on[:, 1:].mean().item()})
print("hidden activations per ViT block:", tuple(next(iter(acts_vit.values())).shape[1:]))
ml.bench.Table(vit_tok_rows, title="ReLU ViT: fraction of neurons active, class token vs patch tokens",
               formats={k: "{:.1%}" for k in vit_tok_rows[0] if k != "FFN"})

# %% tags=["remove-cell"]
cls_mean = sum(r["class token: active"] for r in vit_tok_rows) / len(vit_tok_rows)
patch_mean = sum(r["patch tokens: active"] for r in vit_tok_rows) / len(vit_tok_rows)
ml.glue("s61_cls_active", 100 * cls_mean, ".1f")
ml.glue("s61_patch_active", 100 * patch_mean, ".1f")
ml.glue("s61_cls_word", "lazier" if cls_mean < patch_mean - 0.01 else ("busier" if cls_mean > patch_mean + 0.01 else "about as active"))

# %% [markdown]
# Averaged over the blocks, the class token activates {glue:}`s61_cls_active`% of the
# neurons and a patch token {glue:}`s61_patch_active`%: the class token is
# {glue:}`s61_cls_word` than the patches (64 images; one token per image against 64).

# %% [markdown]
# ## 6.1.5 How sparsity emerges during training, and width
#
# Li et al. report that sparsity is not there at initialization (where it is one half, as
# computed above) and emerges during training, and that wider and deeper models end up
# sparser. To watch it we train ReLU CharGPTs of three widths with chapter 1's recipe,
# shortened (the same optimizer, schedule shape, batch and context; fewer steps), and
# measure the exact-zero fraction of every FFN at regular intervals on the same
# validation windows. `ml.train.fit` runs chunk after chunk with one optimizer and one
# schedule, so the chunks are one continuous run.

# %%
base_cfg = ml.baselines.config("char_gpt")
widths = ml.trim(ml.pick(smoke=[16, 32], cpu=[32, 64, 128], gpu=[96, 192, 384]))
track_steps = ml.pick(smoke=20, cpu=240, gpu=400)
track_every = max(1, track_steps // 10)
probe = val[:ml.pick(smoke=2, cpu=5, gpu=10)]


def tracked_run(n_embd):
    """A ReLU CharGPT of width n_embd trained track_steps steps; exact zeros every track_every."""
    ml.seed_all(0)
    gpt = ml.models.CharGPT(corpus.vocab_size, block_size=base_cfg["block_size"], n_layer=base_cfg["n_layer"],
                            n_head=base_cfg["n_head"], n_embd=n_embd, dropout=base_cfg["dropout"],
                            mlp=relu_mlp).to(dev)
    opt = ml.train.adamw(gpt, base_cfg["lr"], base_cfg["weight_decay"], base_cfg["betas"])
    schedule = ml.train.warmup_cosine(track_steps, max(1, track_steps // 20), final=base_cfg["final_lr"])
    train = ml.data.TokenBatches(corpus.train_ids, base_cfg["block_size"], base_cfg["batch_size"],
                                 steps=track_every, device=dev)
    log = [{"step": 0, **ml.sparsity.activation_sparsity(gpt, probe)}]
    for start in ml.trim(range(0, track_steps, track_every)):
        ml.train.fit(gpt, train, optimizer=opt, steps=track_every, schedule=lambda s, s0=start: schedule(s0 + s),
                     grad_clip=base_cfg["grad_clip"], progress=False)
        log.append({"step": start + track_every, **ml.sparsity.activation_sparsity(gpt, probe)})
    return log, ml.train.evaluate(gpt, val)["loss"]


runs = {w: tracked_run(w) for w in widths}

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for w, (log, _) in runs.items():
    layers = [k for k in log[0] if k != "step"]
    axes[0].plot([r["step"] for r in log], [100 * sum(r[k] for k in layers) / len(layers) for r in log],
                 marker=".", label=f"width {w} (hidden {4 * w})")
last = {w: log[-1] for w, (log, _) in runs.items()}
for w, row in last.items():
    layers = [k for k in row if k != "step"]
    axes[1].plot(range(1, len(layers) + 1), [100 * row[k] for k in layers], marker="o", label=f"width {w}")
axes[0].set(xlabel="training step", ylabel="exact zeros, mean over FFNs (%)", title="ReLU CharGPT during training")
axes[1].set(xlabel="block", ylabel="exact zeros (%)", title=f"After {track_steps} steps",
            xticks=range(1, len(layers) + 1))
axes[0].legend()
fig.tight_layout()
plt.show()
width_rows = [{"width (n_embd)": w, "FFN hidden": 4 * w, "val loss": loss,
               "exact zeros at init": sum(v for k, v in log[0].items() if k != "step") / (len(log[0]) - 1),
               f"after {track_steps} steps": sum(v for k, v in log[-1].items() if k != "step") / (len(log[-1]) - 1)}
              for w, (log, loss) in runs.items()]
ml.bench.Table(width_rows, title=f"Short ReLU runs ({track_steps} steps of chapter 1's recipe)",
               formats={"val loss": "{:.3f}", "exact zeros at init": "{:.1%}", f"after {track_steps} steps": "{:.1%}"})

# %% tags=["remove-cell"]
ml.glue("s61_track_steps", track_steps)
ml.glue("s61_init_zero", 100 * width_rows[0]["exact zeros at init"], ".0f")
ml.glue("s61_narrow", widths[0])
ml.glue("s61_wide", widths[-1])
ml.glue("s61_narrow_end", 100 * width_rows[0][f"after {track_steps} steps"], ".1f")
ml.glue("s61_wide_end", 100 * width_rows[-1][f"after {track_steps} steps"], ".1f")
wide_vs = width_rows[-1][f"after {track_steps} steps"] - width_rows[0][f"after {track_steps} steps"]
ml.glue("s61_width_trend", "sparser" if wide_vs > 0.01 else ("less sparse" if wide_vs < -0.01 else "about as sparse"))

# %% [markdown]
# At initialization {glue:}`s61_init_zero`% of the activations are exactly zero, the
# one half of a symmetric pre-activation. Training moves it: after
# {glue:}`s61_track_steps` steps the width-{glue:}`s61_narrow` model is at
# {glue:}`s61_narrow_end`% and the width-{glue:}`s61_wide` model at
# {glue:}`s61_wide_end`%, so here the wider model ends {glue:}`s61_width_trend` than the
# narrow one. Nothing in the loss asks for zeros; the optimizer finds them. (Short single
# runs with one seed: read the trend, not the third digit.)
#
# ## Claimed vs measured
#
# | source | claim | measured here (scale and CPU in the banner) |
# | --- | --- | --- |
# | {cite}`li2023lazy` | ReLU MLP activations of trained transformers are sparse: 3.0% nonzero in T5-Base, 6.3% in ViT-B/16 | ReLU CharGPT {glue:}`s61_gpt_relu_nonzero`% nonzero, ReLU ViT {glue:}`s61_vit_relu_nonzero`% |
# | {cite}`li2023lazy` | sparsity emerges during training (not at init) and larger models are sparser | {glue:}`s61_init_zero`% zeros at init; after {glue:}`s61_track_steps` steps width {glue:}`s61_narrow`: {glue:}`s61_narrow_end`%, width {glue:}`s61_wide`: {glue:}`s61_wide_end`% |
# | {cite}`mirzadeh2024relu` | ReLU has a negligible impact on quality compared with GELU and SiLU | CharGPT: ReLU {glue:}`s61_gap_relu` ± {glue:}`s61_se_relu` nats vs GELU ({glue:}`s61_relu_verdict`); ViT: {glue:}`s61_vit_acc_relu`% vs {glue:}`s61_vit_acc_gelu`% |
# | {cite}`liu2023dejavu` | the sparsity is contextual: a small, input-dependent set of neurons per token | {glue:}`s61_tok_median`% of neurons per token, {glue:}`s61_dead`% never active, 64 tokens touch {glue:}`s61_union64`% |
#
# Our models are orders of magnitude smaller and shorter-trained than T5-Base or ViT-B/16
# (Li et al. train for hundreds of thousands of steps), so the comparison is of the
# phenomenon, not of the numbers. The Sparsing Law {cite}`luo2025sparsing` studies how the
# activation ratio evolves with the amount of training data for ReLU and SiLU models; our
# short runs only show its first steps.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1: Dead or lazy (implement, easy)
#
# Write `dead_neurons(model, batches)` returning, per FFN, the indices of the neurons that
# are never active over `batches`, using `ml.sparsity.hidden_activations`. Then build a
# smaller ReLU CharGPT without them (copy the model, slice `fc` and `proj` of each FFN) and
# check that its logits equal the original's on the same batches.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# ```python
# import copy
#
# def dead_neurons(model, batches):
#     seen = {}
#     for x, _ in batches:
#         for name, a in ml.sparsity.hidden_activations(model, x).items():
#             on = (a != 0).flatten(0, -2).any(0)
#             seen[name] = on if name not in seen else seen[name] | on
#     return {name: (~on).nonzero().squeeze(1) for name, on in seen.items()}
#
# small = copy.deepcopy(relu_gpt)
# for name, dead in dead_neurons(relu_gpt, val).items():
#     ffn = small.get_submodule(name)
#     keep = torch.ones(ffn.fc.out_features, dtype=torch.bool); keep[dead] = False
#     fc, proj = nn.Linear(ffn.fc.in_features, int(keep.sum())), nn.Linear(int(keep.sum()), ffn.proj.out_features)
#     fc.weight.data, fc.bias.data = ffn.fc.weight.data[keep], ffn.fc.bias.data[keep]
#     proj.weight.data, proj.bias.data = ffn.proj.weight.data[:, keep], ffn.proj.bias.data
#     ffn.fc, ffn.proj = fc, proj
# torch.testing.assert_close(small(val[0][0]), relu_gpt(val[0][0]))
# ```
# On the batches used to find them the dead neurons contribute exactly zero, so the
# logits agree there up to float rounding; on other text a neuron silent on thousands of
# tokens may still fire now and then, so check on held-out batches too. The saving is the
# fraction of dead neurons in the table of section 6.1.4: compare it with the exact-zero
# fraction of section 6.1.3, which is what skipping per token can reach.
# :::

# %% [markdown]
# ### Exercise 2: Sparsity on random inputs (measure, medium)
#
# Li et al. report that the sparsity is a property of the trained network, not of the
# data: it also appears on random inputs. Measure the exact-zero fraction of the ReLU
# CharGPT on windows of uniformly random characters and of the ReLU ViT on Gaussian-noise
# images, and compare with the table of section 6.1.3.

# %% tags=["solution", "hide-cell"]
# Solution 2
noise_gpt = [torch.randint(0, corpus.vocab_size, x.shape, device=dev) for x, _ in val[:4]]
noise_vit = [torch.randn(64, 3, 32, 32, device=dev) for _ in range(4)]
s_gpt = ml.sparsity.activation_sparsity(relu_gpt, noise_gpt)
s_vit = ml.sparsity.activation_sparsity(relu_vit, noise_vit)
ml.bench.Table([{"model": "ReLU CharGPT", "real data": by[("CharGPT", "ReLU")]["|a| <= 0"],
                 "random input": sum(s_gpt.values()) / len(s_gpt)},
                {"model": "ReLU ViT", "real data": by[("ViT", "ReLU")]["|a| <= 0"],
                 "random input": sum(s_vit.values()) / len(s_vit)}],
               title="Solution 2: exact zeros on real and random inputs",
               formats={"real data": "{:.1%}", "random input": "{:.1%}"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The table above (computed by the hidden cell) compares both. The zeros do not need
# meaningful inputs: the trained weights and biases put most pre-activations below zero
# whatever the input is, which is the paper's point that sparsity comes from training,
# not from the data. How close the two columns are depends on how far random inputs are
# from the training distribution (random characters still go through the learned
# embeddings and LayerNorms; noise images do not look like any patch the ViT saw).
# :::

# %% [markdown]
# ### Exercise 3: Why one half at initialization? (explain, easy)
#
# At initialization the CharGPT's FFN biases are zero and its weights are Gaussian with
# mean zero. Explain why the exact-zero fraction of a ReLU FFN is then close to 50%, and
# what a trained network must do to its biases or weights to reach 90%.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# With $b = 0$ and $w \sim \mathcal N(0, \sigma^2 I)$ independent of the LayerNorm output
# $x$, the pre-activation $z = w^\top x$ is symmetric around zero, so $P(z \le 0) = 1/2$:
# half the ReLUs are off. To be off with probability 0.9 a neuron's pre-activation must
# sit mostly below zero, $\Phi(-\mu/s) = 0.9$, i.e. its mean about $1.28$ standard
# deviations below zero: a negative bias, or weights aligned *against* the typical input
# direction (LayerNorm outputs are not centred per feature, so $w^\top \mathbb E[x]$ can be
# made negative). Li et al. trace it to the training dynamics; weight decay and the gradient
# of the loss push in the same direction for most neurons most of the time.
# :::

# %% [markdown]
# ## Key takeaways
#
# - ReLU FFNs of trained transformers are mostly zeros, exactly; GELU gives near-zeros
#   whose number depends on the threshold. The quality cost of ReLU at this scale is the
#   paired gap in the table, measured with its spread.
# - Sparsity is learned: one half at initialization, more after training, at every depth.
# - It is contextual: few neurons per token, different ones for different tokens, so the
#   union over a batch grows fast. Skipping inactive neurons is a batch-1 (decoding)
#   technique; dead neurons are a small, free bonus.
# - Measuring needs nothing but a forward hook on the activation: `ml.sparsity.activation_sparsity`.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
