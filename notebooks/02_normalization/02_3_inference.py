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
# # 2.3 Normalization at inference: fold it, fix it, remove it
#
# A normalization layer is cheap in FLOPs but not free at inference: LayerNorm reads every
# activation, reduces it to a mean and a variance, and writes it back, once per token and
# per layer. BatchNorm is different. After training it normalizes with fixed running
# statistics, so it is an affine map per channel, and an affine map next to a convolution
# or a linear layer can be merged into it {cite}`ioffe2015batchnorm,jacob2018quantization`:
# the normalization then costs nothing. This notebook removes the cost of normalization
# three ways. It folds the BatchNorms of chapter 1's ResNet-9 into its convolutions
# (exact). It trains the ViT with a *foldable* norm, a BatchNorm over tokens, as Unified
# Normalization {cite}`yang2022unified` and SLAB {cite}`guo2024slab` do, and folds it away.
# And it fine-tunes the LayerNorms out of the trained CharGPT, replacing each by a fixed
# scale, after Heimersheim {cite}`heimersheim2024layernorm` and Baroni et al.
# {cite}`baroni2025layernorm`. Every variant is then set against chapter 1's baselines in
# quality and cost.
#
# **Learning objectives.** After this notebook you can
# 1. derive the folded weights $W' = W\gamma/\sigma$, $b' = \beta - \mu\gamma/\sigma$ and
#    fold every BatchNorm of a CNN, with outputs equal to rounding error;
# 2. explain why LayerNorm cannot be folded and BatchNorm can, train a transformer with a
#    BatchNorm over tokens (plain and progressive, PRepBN) and fold it into the next linear;
# 3. remove LayerNorm from a trained language model by calibration and fine-tuning, and
#    measure what it costs in loss against a fair control, with its spread;
# 4. compare models fairly: accuracies with their standard errors and paired tests on the
#    same test images, speed-ups as interleaved ratios with their spread.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import copy
import functools
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import minilib as ml

ml.describe()
ml.plot.style()
dev = ml.device()

# Benchmark settings: a single input (latency) and a large batch (throughput).
BIG = ml.trim(ml.pick(smoke=32, cpu=256, gpu=256), keep=16)   # a dry run: 16
REPEAT = ml.pick(smoke=3, cpu=10, gpu=20)


@torch.inference_mode()
def logits_of(model, loader, tta=False):
    """The logits of ``model`` (eval mode, fp32) on every batch of ``loader``, concatenated.
    ``tta=True`` averages each image's logits with those of its mirror image."""
    model.eval()
    out = []
    for x, _ in loader:
        z = model(x).float()
        out.append((z + model(x.flip(-1)).float()) / 2 if tta else z)
    return torch.cat(out)


@torch.inference_mode()
def speedups(baseline, candidates, inputs):
    """``ml.bench.compare(baseline, candidate)`` for each candidate and input: {name: {batch: Comparison}}."""
    return {name: {len(x): ml.bench.compare(lambda: baseline(x), lambda: model(x), warmup=2, repeat=REPEAT)
                   for x in inputs}
            for name, model in candidates.items()}


# %% [markdown]
# Every accuracy below is measured in fp32 (on a GPU: IEEE fp32, TF32 off) on the whole
# test set, with its binomial standard error $\sqrt{p(1-p)/n}$; two models are compared on
# *the same* images, where only the images on which they disagree carry information: with
# $b$ images only A gets right and $c$ only B, the change is $(c-b)/n$ with paired standard
# error $\sqrt{b + c - (c-b)^2/n}/n$, and McNemar's exact test gives the probability of a
# split at least that uneven if both were equally accurate. Speed is measured with
# `ml.bench.compare`: the two models run in interleaved rounds (A B, B A, ...) in inference
# mode, and we report the median of the per-round time ratios with its interquartile range.
#
# ## 2.3.1 Folding BatchNorm into the convolution before it
#
# In eval mode a BatchNorm with running mean $\mu$, running variance $\sigma^2$, gain
# $\gamma$ and shift $\beta$ computes, per channel $o$,
#
# $$\mathrm{BN}(z)_o = \gamma_o \frac{z_o - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}} + \beta_o
#   = s_o z_o + t_o, \qquad s_o = \frac{\gamma_o}{\sqrt{\sigma_o^2+\epsilon}},\quad
#   t_o = \beta_o - \mu_o s_o .$$
#
# When $z = W * x + b$ is a convolution, output channel $o$ is the filter $W_o$ applied to
# $x$, so scaling the output scales the filter:
#
# $$
# \begin{aligned}
# \mathrm{BN}(W * x + b)_o &= (s_o W_o) * x + (s_o b_o + t_o) \\
# \Rightarrow\quad W'_o = W_o\frac{\gamma_o}{\sigma_o},\qquad
# b'_o &= \beta_o - \mu_o\frac{\gamma_o}{\sigma_o} + \frac{\gamma_o}{\sigma_o} b_o,
# \end{aligned}
# $$
#
# writing $\sigma_o$ for $\sqrt{\sigma_o^2+\epsilon}$. ResNet-9's convolutions have no bias
# ($b = 0$), so the folded one gets $b' = \beta - \mu\gamma/\sigma$. This is exact in
# real arithmetic, and it is how every deployment pipeline (and integer-only inference
# {cite}`jacob2018quantization`) treats BatchNorm. From scratch on the first block of
# chapter 1's trained ResNet-9, checked against the block itself and against PyTorch's own
# `torch.nn.utils.fusion.fuse_conv_bn_eval`:

# %%
cnn, cnn_record = ml.baselines.cifar_cnn()
cnn_cfg = ml.baselines.config("cifar_cnn")
cifar_norm = dict(mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD, device=dev)
cifar_test = ml.data.DeviceLoader(*ml.data.subset(*ml.data.cifar10(train=False), ml.trim(cnn_cfg["n_test"], keep=1000)),
                                  1000, shuffle=False, **cifar_norm)
x_test = next(iter(cifar_test))[0]

# %%
conv, bn = cnn.prep[0], cnn.prep[1]                   # Conv3x3 (no bias) -> BatchNorm2d
with torch.no_grad():
    sigma = torch.sqrt(bn.running_var + bn.eps)
    W_fold = conv.weight * (bn.weight / sigma).view(-1, 1, 1, 1)   # W' = W gamma / sigma
    b_fold = bn.bias - bn.running_mean * bn.weight / sigma          # b' = beta - mu gamma / sigma
    ref = bn(conv(x_test))
    ours = F.conv2d(x_test, W_fold, b_fold, padding=1)
    torch_fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)(x_test)
err_ref = (ours - ref).abs().max().item()
err_torch = (ours - torch_fused).abs().max().item()
scale = ref.abs().max().item()
print(f"fp32 ({'IEEE, TF32 off' if dev.type == 'cuda' else dev.type}); outputs up to {scale:.1f}")
print(f"folded conv vs conv+BN:            max abs error {err_ref:.1e}")
print(f"folded conv vs fuse_conv_bn_eval:  max abs error {err_torch:.1e}")

# %% [markdown]
# In fp32 the two computations round differently, by a few units of the last place of the
# outputs. The check therefore bounds the error relative to the largest output: $10^{-4}$
# of it holds in IEEE fp32 on any device and would fail with TF32 convolutions (10-bit
# mantissas, errors around $10^{-3}$ of the output), which minilib turns off.

# %% tags=["nbval-check-output"]
assert err_ref <= 1e-4 * scale and err_torch <= 1e-4 * scale
print("max error <= 1e-4 x max |output|, against conv+BN and fuse_conv_bn_eval: True")

# %% [markdown]
# The library's version does the same in float64 (and handles a conv bias), and a helper,
# `ml.norm.fold_resnet_batchnorms`, walks the network and folds every `Conv2d -> BatchNorm2d`
# pair it finds:

# %%
ml.show(ml.norm.fold_batchnorm)

# %% [markdown]
# Folding the whole trained network, then measuring it: the logits on the test set, the
# test accuracy (with the same flip test-time augmentation as chapter 1), the parameters,
# and the speed of a forward pass for one image and for a batch of {glue:}`n23_big`.

# %%
cnn_folded = ml.norm.fold_resnet_batchnorms(cnn)
cifar_labels = torch.cat([y for _, y in cifar_test])
z_cnn, z_cnn_folded = logits_of(cnn, cifar_test, tta=True), logits_of(cnn_folded, cifar_test, tta=True)
cnn_diff = (z_cnn_folded - z_cnn).abs().max().item()
ok_cnn, ok_cnn_folded = z_cnn.argmax(-1) == cifar_labels, z_cnn_folded.argmax(-1) == cifar_labels
n_cnn = len(cifar_labels)
n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
cnn_inputs = [x_test[:1], x_test[:BIG]]
cnn_speed = speedups(cnn, {"BN folded": cnn_folded}, cnn_inputs)["BN folded"]
cnn_rows = []
for name, model, ok in [("ResNet-9 (conv + BN)", cnn, ok_cnn), ("ResNet-9, BN folded", cnn_folded, ok_cnn_folded)]:
    acc = ok.float().mean().item()
    cnn_rows.append({"model": name, "params": ml.bench.count_params(model),
                     "BN layers": sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
                     "test accuracy (%)": f"{100 * acc:.2f} ± {100 * ml.bench.accuracy_se(acc, n_cnn):.2f}",
                     "speed-up, batch 1": cnn_speed[1] if model is cnn_folded else None,
                     f"speed-up, batch {BIG}": cnn_speed[BIG] if model is cnn_folded else None})
print(f"max |logits folded - logits| over {n_cnn} test images (flip TTA, fp32): {cnn_diff:.1e}; "
      f"images classified differently: {int((ok_cnn != ok_cnn_folded).sum())}")
ml.bench.Table(cnn_rows, title=f"Folding the {n_bn} BatchNorms of ResNet-9 ({dev.type}, fp32 inference; "
                               "speed-up: time(conv + BN) / time(folded), median and IQR)")

# %% tags=["remove-cell"]
ml.glue("n23_cnn_diff", cnn_diff, ".1e")
ml.glue("n23_cnn_acc", 100 * ok_cnn.float().mean().item(), ".2f")
ml.glue("n23_cnn_acc_folded", 100 * ok_cnn_folded.float().mean().item(), ".2f")
ml.glue("n23_cnn_flips", int((ok_cnn != ok_cnn_folded).sum()), "d")
ml.glue("n23_cnn_n", n_cnn, ",")
ml.glue("n23_cnn_nbn", n_bn)
for B_ in (1, BIG):
    c = cnn_speed[B_]
    ml.glue(f"n23_cnn_speed_{'1' if B_ == 1 else 'big'}", c.speedup, ".2f")
    ml.glue(f"n23_cnn_speed_{'1' if B_ == 1 else 'big'}_iqr", f"{c.lo:.2f}-{c.hi:.2f}")
    ml.glue(f"n23_cnn_speed_{'1' if B_ == 1 else 'big'}_verdict", c.verdict)
ml.glue("n23_cnn_params_saved", cnn_rows[0]["params"] - cnn_rows[1]["params"], ",")
ml.glue("n23_big", BIG)
ml.glue("n23_cpu_model", ml.env.hardware()["cpu model"])
ml.glue("n23_device", dev.type)

# %% [markdown]
# All {glue:}`n23_cnn_nbn` BatchNorms are gone, the logits move by at most
# {glue:}`n23_cnn_diff` (float32 rounding: the folded weights are a different rounding of
# the same numbers), and {glue:}`n23_cnn_flips` of the {glue:}`n23_cnn_n` test images change
# their predicted class: the test accuracy is {glue:}`n23_cnn_acc`% before and
# {glue:}`n23_cnn_acc_folded`% after. The folded network has
# {glue:}`n23_cnn_params_saved` fewer parameters (each BN's $\gamma,\beta$ become one bias
# per channel). On the {glue:}`n23_device` of the banner ({glue:}`n23_cpu_model`), the
# folded network is {glue:}`n23_cnn_speed_1_verdict` for one image
# ({glue:}`n23_cnn_speed_1`x, interquartile range {glue:}`n23_cnn_speed_1_iqr`) and
# {glue:}`n23_cnn_speed_big_verdict` for a batch of {glue:}`n23_big`
# ({glue:}`n23_cnn_speed_big`x, {glue:}`n23_cnn_speed_big_iqr`). A BatchNorm is a
# memory-bound pass over the activation between two compute-bound convolutions, so its
# share of the time, and the gain of folding it, depends on how fast the convolutions run
# on that device; the accuracy and the error do not.
#
# ## 2.3.2 A foldable norm for the ViT: BatchNorm over tokens
#
# LayerNorm normalizes each token by its *own* statistics,
# $\mathrm{LN}(x) = \gamma \odot (x - \mu(x))/\sigma(x) + \beta$ with $\mu, \sigma$ over the
# token's $C$ features, so $\sigma(x)$ changes with every input: the layer is not an affine
# map and cannot be merged into anything. A BatchNorm over tokens (`BatchNormTokens`)
# takes per-channel statistics over all $B \times T$ tokens of the batch while training
# and keeps running averages, so at inference it is $s \odot x + t$ again, and in a Pre-LN
# block it sits right before a linear layer (the QKV projection, the MLP's first layer,
# the classifier head). A linear after an affine map is one linear:
#
# $$W(s \odot x + t) + b = (W \operatorname{diag}(s))\,x + (W t + b)
# \quad\Rightarrow\quad W' = W \operatorname{diag}(s),\qquad b' = Wt + b .$$
#
# The scale multiplies the *columns* of $W$ here (the inputs), where in the CNN it
# multiplied the rows (the outputs). The catch is training: BatchNorm in transformers is
# known to train worse than LayerNorm (token statistics vary a lot between batches, and a
# few outlier channels dominate them). Unified Normalization {cite}`yang2022unified`
# smooths the statistics and filters outliers; SLAB {cite}`guo2024slab` starts training
# with LayerNorm and shifts progressively to a re-parameterized BatchNorm,
#
# $$\mathrm{PRepBN}(x) = \lambda\,\mathrm{LN}(x) + (1-\lambda)\,\big(\mathrm{BN}(x) + \eta x\big),$$
#
# with $\lambda$ decaying linearly from 1 to 0 during training and $\eta$ a learned scalar
# (initialised to 1). Once $\lambda = 0$ the layer is $(s + \eta) \odot x + t$, foldable.
# Both are in the library (`ml.norm.BatchNormTokens`, a `_BatchNorm` over the last dim, and
# `ml.norm.PRepBN`):

# %%
ml.show(ml.norm.PRepBN.forward)

# %% [markdown]
# We train chapter 1's ViT recipe (same data, schedule, seed and size; only the norm
# changes) with a plain BatchNorm over tokens and with PRepBN ($\lambda$ reaches 0 after 80%
# of the steps, so the last 20% train the pure BatchNorm network that is deployed). At the
# cpu scale the LayerNorm model is chapter 1's cached baseline. At the gpu scale chapter
# 1's recipe is too long to train twice more inside the book's budget, so all three,
# LayerNorm included, are trained with the same short recipe ({glue:}`n23_vit_epochs`
# epochs): the LayerNorm control is trained exactly like the variants, so the comparison
# stays fair. Training runs in bf16 autocast on a GPU and in fp32 on a CPU; every
# evaluation below runs in fp32. Trained models are cached, so a second run of this
# notebook loads them. (RMSNorm computes statistics of every token too, so it cannot be
# folded either; notebook 2.1 compares its cost with LayerNorm's.)

# %%
vit_cfg = ml.baselines.config("cifar_vit")
SHORT = ml.pick(smoke={}, cpu={}, gpu=dict(epochs=4))     # gpu: one short recipe for all three
vit_epochs = SHORT.get("epochs", vit_cfg["epochs"])
vit_steps = vit_cfg["n_train"] // vit_cfg["batch_size"] * vit_epochs


def vit_variant(variant, norm=None):
    """The ViT of chapter 1's recipe with ``norm`` (None: LayerNorm), or the short gpu recipe."""
    parts = dict(norm=norm) if norm is not None else {}
    if SHORT:                                              # the LayerNorm control is retrained too
        return ml.baselines.cifar_vit(variant=f"{variant}-short", **parts, **SHORT)
    return ml.baselines.cifar_vit(variant=variant, **parts) if parts else ml.baselines.cifar_vit()


vits = {
    "LayerNorm": vit_variant("ln"),
    "BN-tokens": vit_variant("bn-tokens", ml.norm.BatchNormTokens),
    "PRepBN": vit_variant("prepbn", functools.partial(ml.norm.PRepBN, steps=int(0.8 * vit_steps))),
}
vit_test = ml.data.DeviceLoader(*ml.data.subset(*ml.data.cifar10(train=False), ml.trim(vit_cfg["n_test"], keep=1000)),
                                1000, shuffle=False, **cifar_norm)
vit_labels = torch.cat([y for _, y in vit_test])
n_vit = len(vit_labels)
z_vit = {k: logits_of(m, vit_test) for k, (m, r) in vits.items()}
ok_vit = {k: z.argmax(-1) == vit_labels for k, z in z_vit.items()}
acc_vit = {k: ok.float().mean().item() for k, ok in ok_vit.items()}
vit_quality = {}
for k in vits:
    row = {"norm": k, "test accuracy (%)": f"{100 * acc_vit[k]:.2f} ± {100 * ml.bench.accuracy_se(acc_vit[k], n_vit):.2f}"}
    if k != "LayerNorm":
        d, se_d, p = ml.bench.paired_accuracy(ok_vit["LayerNorm"], ok_vit[k])
        row |= {"change vs LN (points)": f"{d:+.2f} ± {se_d:.2f}", "McNemar p": p,
                "verdict": ml.bench.quality_verdict(d, se_d), "_d": d, "_se": se_d}
    row["train time (s)"] = vits[k][1]["metrics"]["train_seconds"]
    vit_quality[k] = row
ml.bench.Table(list(vit_quality.values()),
               columns=["norm", "test accuracy (%)", "change vs LN (points)", "McNemar p", "verdict", "train time (s)"],
               title=f"ViT on CIFAR-10, {vit_epochs} epochs on {vit_cfg['n_train']:,} images; fp32 accuracy on "
                     f"{n_vit:,} test images ± standard error; change vs LayerNorm ± paired standard error",
               formats={"McNemar p": ".3f", "train time (s)": ".0f"})

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.6))
ml.plot.learning_curves({k: ml.train.History.from_dict(r["history"]) for k, (m, r) in vits.items()},
                        y="val_accuracy", ax=ax, title="ViT test accuracy during training")
ax.set(xlabel="epoch", ylabel="test accuracy (fraction)")
plt.show()

# %% tags=["remove-cell"]
ml.glue("n23_vit_epochs", vit_epochs)
ml.glue("n23_vit_steps", vit_steps)
ml.glue("n23_vit_n", n_vit, ",")
ml.glue("n23_vit_se", 100 * ml.bench.accuracy_se(acc_vit["LayerNorm"], n_vit), ".2f")
for k, tag in [("LayerNorm", "ln"), ("BN-tokens", "bn"), ("PRepBN", "prep")]:
    ml.glue(f"n23_vit_{tag}_acc", 100 * acc_vit[k], ".2f")
    if k != "LayerNorm":
        q = vit_quality[k]
        ml.glue(f"n23_vit_{tag}_delta", q["_d"], "+.2f")
        ml.glue(f"n23_vit_{tag}_delta_se", q["_se"], ".2f")
        ml.glue(f"n23_vit_{tag}_p", q["McNemar p"], ".3f")
        ml.glue(f"n23_vit_{tag}_verdict", ml.bench.quality_verdict(q["_d"], q["_se"], better="better than",
                                                                   worse="worse than",
                                                                   same="not measurably different from"))
d_pb, se_pb, p_pb = ml.bench.paired_accuracy(ok_vit["BN-tokens"], ok_vit["PRepBN"])
ml.glue("n23_vit_prep_vs_bn", d_pb, "+.2f")
ml.glue("n23_vit_prep_vs_bn_se", se_pb, ".2f")
ml.glue("n23_vit_prep_vs_bn_verdict", ml.bench.quality_verdict(d_pb, se_pb, better="better than",
                                                               worse="worse than", same="not measurably different from"))

# %% [markdown]
# **What we measured.** On the {glue:}`n23_vit_n` test images (standard error of one
# accuracy: about {glue:}`n23_vit_se` points), the ViT reaches {glue:}`n23_vit_ln_acc`% with
# LayerNorm, {glue:}`n23_vit_bn_acc`% with a plain BatchNorm over tokens and
# {glue:}`n23_vit_prep_acc`% with SLAB's progressive PRepBN. On the same images, plain
# BN-tokens changes the accuracy by {glue:}`n23_vit_bn_delta` ± {glue:}`n23_vit_bn_delta_se`
# points (McNemar p = {glue:}`n23_vit_bn_p`): it is {glue:}`n23_vit_bn_verdict` LayerNorm.
# PRepBN changes it by {glue:}`n23_vit_prep_delta` ± {glue:}`n23_vit_prep_delta_se` points
# (p = {glue:}`n23_vit_prep_p`): {glue:}`n23_vit_prep_verdict` LayerNorm, and
# {glue:}`n23_vit_prep_vs_bn_verdict` plain BN-tokens ({glue:}`n23_vit_prep_vs_bn` ±
# {glue:}`n23_vit_prep_vs_bn_se` points). A verdict is only called where the change is more
# than twice its paired standard error; each model is one training run (one seed), and a
# different seed moves accuracy too (exercise 2).
#
# Now the fold. By hand for the first block's attention input, checked against the
# library's `fold_norm_into_linear`; then for the whole network with
# `fold_transformer_norms`, which folds `norm1` into `attn.qkv`, `norm2` into `mlp.fc` and
# the final norm into the head, and replaces each norm by `nn.Identity`:

# %%
vit_bn = vits["BN-tokens"][0]
blk = vit_bn.blocks[0]
with torch.no_grad():
    s = blk.norm1.weight / torch.sqrt(blk.norm1.running_var + blk.norm1.eps)
    t = blk.norm1.bias - blk.norm1.running_mean * s
    W_qkv = blk.attn.qkv.weight * s[None, :]                 # W' = W diag(s): scale the columns
    b_qkv = blk.attn.qkv.weight @ t + blk.attn.qkv.bias      # b' = W t + b
    h = torch.randn(4, vit_bn.pos_embed.shape[1], blk.norm1.num_features,
                    generator=torch.Generator().manual_seed(0)).to(dev)
    ref = blk.attn.qkv(blk.norm1(h))
    ours = F.linear(h, W_qkv, b_qkv)
    lib = ml.norm.fold_norm_into_linear(blk.norm1, blk.attn.qkv)(h)
fold_scale = ref.abs().max().item()
err_ours, err_lib = (ours - ref).abs().max().item(), (ours - lib).abs().max().item()
print(f"fp32 ({'IEEE, TF32 off' if dev.type == 'cuda' else dev.type}); outputs up to {fold_scale:.1f}")
print(f"hand-folded qkv vs norm1 -> qkv: max abs error {err_ours:.1e}")
print(f"hand-folded vs fold_norm_into_linear: max abs error {err_lib:.1e}")

# %% tags=["nbval-check-output"]
assert err_ours <= 1e-4 * fold_scale and err_lib <= 1e-4 * fold_scale
print("max error <= 1e-4 x max |output|, against norm1 -> qkv and fold_norm_into_linear: True")

# %%
ml.show(ml.norm.fold_norm_into_linear)

# %%
folded_vits = {k: ml.norm.fold_transformer_norms(vits[k][0]) for k in ("BN-tokens", "PRepBN")}
fold_rows = []
for k, folded in folded_vits.items():
    z = logits_of(folded, vit_test)
    ok = z.argmax(-1) == vit_labels
    fold_rows.append({"model": k, "norms left": sum(isinstance(m, (ml.norm.BatchNormTokens, ml.norm.PRepBN))
                                                     for m in folded.modules()),
                      "max |logit diff|": (z - z_vit[k]).abs().max().item(),
                      "images changed": int((ok != ok_vit[k]).sum()),
                      "accuracy (%)": 100 * acc_vit[k], "accuracy folded (%)": 100 * ok.float().mean().item()})
ml.bench.Table(fold_rows, title=f"Folded vs unfolded, {n_vit:,} test images, fp32",
               formats={"max |logit diff|": ".1e", "accuracy (%)": ".2f", "accuracy folded (%)": ".2f"})

# %% [markdown]
# Then the speed: the LayerNorm ViT against the BN-tokens ViT unfolded (the library's
# from-scratch `BatchNormTokens`, a few PyTorch ops) and folded (no normalization code at
# all), and against the folded PRepBN ViT, which has exactly the folded BN-tokens
# architecture (only the weights differ). We also read the peak memory of a batch's forward
# pass (the activations and temporaries the norms create).

# %%
x_big = next(iter(vit_test))[0][:BIG]
vit_speed_models = {"BN-tokens (unfolded)": vits["BN-tokens"][0], "BN-tokens folded": folded_vits["BN-tokens"],
                    "PRepBN folded": folded_vits["PRepBN"]}
vit_ln = vits["LayerNorm"][0]
vit_speed = speedups(vit_ln, vit_speed_models, [x_big[:1], x_big])
with torch.no_grad():
    vit_mem = {k: ml.bench.peak_memory(m, x_big) for k, m in {"LayerNorm": vit_ln, **vit_speed_models}.items()}
ml.bench.Table([{"ViT": "LayerNorm", f"peak memory, batch {BIG}": vit_mem["LayerNorm"]}]
               + [{"ViT": k, "speed-up, batch 1": v[1], f"speed-up, batch {BIG}": v[BIG],
                   f"peak memory, batch {BIG}": vit_mem[k]} for k, v in vit_speed.items()],
               columns=["ViT", "speed-up, batch 1", f"speed-up, batch {BIG}", f"peak memory, batch {BIG}"],
               title=f"ViT inference, {dev.type}, fp32: speed-up = time(LayerNorm ViT) / time(model), median and IQR",
               formats={f"peak memory, batch {BIG}": ml.bench.fmt_bytes})

# %% tags=["remove-cell"]
for k, tag in [("BN-tokens (unfolded)", "bnu"), ("BN-tokens folded", "bnf"), ("PRepBN folded", "prepf")]:
    for B_, name in [(1, "lat"), (BIG, "speed")]:
        c = vit_speed[k][B_]
        ml.glue(f"n23_vit_{tag}_{name}", c.speedup, ".2f")
        ml.glue(f"n23_vit_{tag}_{name}_iqr", f"{c.lo:.2f}-{c.hi:.2f}")
        ml.glue(f"n23_vit_{tag}_{name}_verdict", c.verdict)
ml.glue("n23_vit_fold_diff", max(r["max |logit diff|"] for r in fold_rows), ".1e")
ml.glue("n23_vit_fold_changed", max(r["images changed"] for r in fold_rows), "d")
mem_saved = 100 * (1 - vit_mem["BN-tokens folded"] / vit_mem["LayerNorm"])
ml.glue("n23_vit_bnf_mem", mem_saved, ".0f")

# %% [markdown]
# Folding is exact up to rounding: the logits differ by at most {glue:}`n23_vit_fold_diff`,
# and at most {glue:}`n23_vit_fold_changed` test image(s) change class. Against the
# LayerNorm ViT, the folded BN-tokens ViT is {glue:}`n23_vit_bnf_speed_verdict` for a batch
# of {glue:}`n23_big` ({glue:}`n23_vit_bnf_speed`x, interquartile range
# {glue:}`n23_vit_bnf_speed_iqr`) and {glue:}`n23_vit_bnf_lat_verdict` for one image
# ({glue:}`n23_vit_bnf_lat`x, {glue:}`n23_vit_bnf_lat_iqr`); unfolded it is
# {glue:}`n23_vit_bnu_speed_verdict` at batch {glue:}`n23_big` ({glue:}`n23_vit_bnu_speed`x).
# The folded PRepBN ViT, the same architecture, gives {glue:}`n23_vit_prepf_speed`x
# ({glue:}`n23_vit_prepf_speed_iqr`): two measurements of one thing, a check on the
# spread. Its batch forward pass peaks at {glue:}`n23_vit_bnf_mem`% less memory than the
# LayerNorm ViT's. Two caveats for reading the unfolded row: BN-tokens is the library's
# from-scratch module (a few PyTorch ops), while LayerNorm is PyTorch's fused kernel, so the
# unfolded comparison favours LayerNorm; the folded models run no normalization code at all.
# And a norm is a small part of the time of this small ViT, where the matmuls dominate; the
# papers' GPU speed-ups come from larger models, where every norm is a separate memory-bound
# kernel launch.
#
# ## 2.3.3 Removing LayerNorm from a trained GPT
#
# A language model trained with LayerNorm cannot switch to BatchNorm, but it can learn to
# do without the per-token $\sigma(x)$. The only nonlinear part of
# $\mathrm{LN}(x) = \gamma\odot(x-\mu(x))/\sigma(x)+\beta$ is the division by
# $\sigma(x)$: the centering $x - \mu(x)$ is a linear projection. Heimersheim
# {cite}`heimersheim2024layernorm` replaces $\sigma(x)$ by a constant, the average
# $\bar\sigma$ over calibration data, one LayerNorm at a time, fine-tuning in between so the
# network adapts to the change; Baroni et al. {cite}`baroni2025layernorm` scale this to
# the whole GPT-2 family. The replacement is
#
# $$\mathrm{FixedLN}(x) = \gamma \odot \frac{x - \mu(x)}{\bar\sigma} + \beta ,$$
#
# an affine map, which folds into the following linear like BatchNorm did, now with the
# centering folded in too: $W' = W\operatorname{diag}(\gamma/\bar\sigma)(I - \tfrac1C
# \mathbf 1\mathbf 1^\top)$, which is $W\operatorname{diag}(\gamma/\bar\sigma)$ with each
# row's mean subtracted. The library's `ml.norm.FixedLayerNorm` is this layer; its
# calibration, `ml.norm.layer_norm_inv_std`, hooks every LayerNorm and averages the
# denominator it divides by:

# %%
ml.show(ml.norm.FixedLayerNorm.forward)

# %% [markdown]
# The calibration uses a few batches of training text. In a Pre-LN model the residual
# stream grows with depth, so the later norms divide by more (a smaller $1/\bar\sigma$).
# Replacing all of them at once without any training shows why the fine-tuning is needed:

# %%
gpt, gpt_record = ml.baselines.char_gpt()
gcfg = ml.baselines.config("char_gpt")
corpus = ml.data.shakespeare()
T, B = gcfg["block_size"], gcfg["batch_size"]
# The validation windows of chapter 1 (same seed; at the gpu scale its first 10 batches, to
# keep the many evaluations below short), drawn once: every model is scored on the same text.
gpt_val = list(ml.data.TokenBatches(corpus.val_ids, T, B, steps=gcfg["eval_batches"], device=dev,
                                    generator=torch.Generator().manual_seed(1234)))[:ml.trim(ml.pick(smoke=None, cpu=None, gpu=10))]
calib = [x for x, _ in ml.data.TokenBatches(corpus.train_ids, T, 32, steps=ml.trim(ml.pick(smoke=2, cpu=8, gpu=16)),
                                            device=dev, generator=torch.Generator().manual_seed(7))]
ln_names = [n for n, m in gpt.named_modules() if isinstance(m, nn.LayerNorm)]
inv_std = ml.norm.layer_norm_inv_std(gpt, calib)
gpt_loss = ml.train.evaluate(gpt, gpt_val)["loss"]
zero_shot = copy.deepcopy(gpt)
ml.norm.fix_layer_norms(zero_shot, calib, ln_names)
zero_shot_loss = ml.train.evaluate(zero_shot, gpt_val)["loss"]
print(f"CharGPT val loss (fp32, {len(gpt_val)} batches of {B} windows): {gpt_loss:.4f} "
      f"(chapter 1's record: {gpt_record['metrics']['val_loss']:.4f})")
print(f"all {len(ln_names)} LayerNorms fixed, no fine-tuning: {zero_shot_loss:.4f}")
ml.bench.Table([{"LayerNorm": n, "mean sigma": 1 / v, "1 / mean sigma": v} for n, v in inv_std.items()],
               title="Calibrated scales")

# %% [markdown]
# Now the removal, in three stages: first the LayerNorms before the MLPs (`norm2`), then
# those before attention (`norm1`), then the final one. Each stage recalibrates the scales
# on the model as it is now, replaces the norms, and fine-tunes for the same number of
# steps (`ml.train.fit`: bf16 autocast on a GPU, fp32 on a CPU; evaluation in fp32). The
# **control** is the same model fine-tuned for the same steps on the same batches with the
# same optimizer, LayerNorms kept: the model is not fully converged, so fine-tuning alone
# changes the loss, and the fair cost of removing LayerNorm is the difference between the two.

# %%
stage_steps = ml.pick(smoke=4, cpu=80, gpu=40)
ft_lr = 3e-4                                # about the baseline's lr late in its cosine schedule
n_layer = gcfg["n_layer"]
stages = [("MLP-input LNs", [f"blocks.{i}.norm2" for i in range(n_layer)]),
          ("attention-input LNs", [f"blocks.{i}.norm1" for i in range(n_layer)]),
          ("final LN", ["norm"])]


def finetune(model, steps, seed):
    """Fine-tune ``model`` for ``steps`` steps of AdamW; return the validation loss and the time."""
    batches = ml.data.TokenBatches(corpus.train_ids, T, B, steps=steps, device=dev,
                                   generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=ft_lr, betas=(0.9, 0.99), weight_decay=0.0)
    ml.seed_all(seed)
    hist = ml.train.fit(model, batches, optimizer=optimizer, steps=steps, grad_clip=1.0,
                        eval_loader=gpt_val, progress=False)
    return hist.last("val_loss"), hist.last("time")


ln_free, control = copy.deepcopy(gpt), copy.deepcopy(gpt)
curve = [{"stage": "start", "LN removed": gpt_loss, "control (LN kept)": gpt_loss}]
ft_seconds = 0.0
for i, (stage, names) in enumerate(stages):
    ml.norm.fix_layer_norms(ln_free, calib, names)
    fixed_loss = ml.train.evaluate(ln_free, gpt_val)["loss"]
    loss_free, t_free = finetune(ln_free, stage_steps, seed=100 + i)
    loss_ctrl, t_ctrl = finetune(control, stage_steps, seed=100 + i)
    ft_seconds += t_free
    curve.append({"stage": stage, "just fixed": fixed_loss, "LN removed": loss_free,
                  "control (LN kept)": loss_ctrl})
assert not any(isinstance(m, nn.LayerNorm) for m in ln_free.modules())
ml.bench.Table(curve, title=f"CharGPT val loss (nats/char, fp32), {stage_steps} fine-tuning steps per stage",
               formats={k: ".4f" for k in ("just fixed", "LN removed", "control (LN kept)")})

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.6))
xs = range(len(curve))
ax.plot(xs, [c["control (LN kept)"] for c in curve], "o-", label="control (LN kept)")
ax.plot(xs, [c["LN removed"] for c in curve], "o-", label="LN removed, after fine-tuning")
ax.plot(list(xs)[1:], [c["just fixed"] for c in curve[1:]], "x", label="right after fixing (no fine-tuning)")
ax.set_xticks(list(xs), [c["stage"] for c in curve], rotation=15)
ax.set(ylabel="val loss (nats/char)", title="Removing LayerNorm from CharGPT, stage by stage")
ax.legend()
plt.show()

# %% [markdown]
# **The spread.** The two final losses differ by a few hundredths of a nat at most, so
# before concluding anything we need to know how much that difference would move on other
# validation text. Both models are scored on the same windows, so the right spread is the
# paired one: the per-batch difference of their losses, its mean, and the standard error of
# that mean over the {glue:}`n23_gpt_n_windows` batches. (It covers the choice of evaluation
# text, not the randomness of the fine-tuning itself: the control and the LN-free model saw
# the same batches in the same order.)

# %%
@torch.no_grad()
def window_losses(model, windows):
    """Mean next-character loss of ``model`` (fp32, eval mode) on each batch of ``windows``."""
    model.eval()
    return torch.tensor([F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()).item() for x, y in windows])


gap_mean, gap_se = ml.bench.paired_difference(window_losses(control, gpt_val), window_losses(ln_free, gpt_val))
gap_n = len(gpt_val)
gap_verdict = ml.bench.quality_verdict(gap_mean, gap_se, better="higher than", worse="lower than",
                                       same="not measurably different from")
print(f"LN removed - control: {gap_mean:+.4f} ± {gap_se:.4f} nats/char (mean ± standard error over "
      f"{gap_n} validation batches): the LN-free loss is {gap_verdict} the control's")

# %% tags=["remove-cell"]
ml.glue("n23_T", T)
ml.glue("n23_gpt_loss", gpt_loss, ".4f")
ml.glue("n23_gpt_zero_shot", zero_shot_loss, ".3f")
ml.glue("n23_gpt_free", curve[-1]["LN removed"], ".4f")
ml.glue("n23_gpt_ctrl", curve[-1]["control (LN kept)"], ".4f")
ml.glue("n23_gpt_cost", gap_mean, "+.4f")
ml.glue("n23_gpt_cost_se", gap_se, ".4f")
ml.glue("n23_gpt_cost_verdict", gap_verdict)
ml.glue("n23_gpt_n_windows", gap_n)
ml.glue("n23_gpt_vs_start", curve[-1]["LN removed"] - gpt_loss, "+.4f")
ml.glue("n23_gpt_ctrl_vs_start", curve[-1]["control (LN kept)"] - gpt_loss, "+.4f")
ml.glue("n23_gpt_steps", stage_steps * len(stages))
ml.glue("n23_gpt_stage_steps", stage_steps)
ml.glue("n23_gpt_ft_seconds", ft_seconds, ".0f")

# %% [markdown]
# **What we measured.** Fixing every LayerNorm at once without training raises the
# validation loss from {glue:}`n23_gpt_loss` to {glue:}`n23_gpt_zero_shot` nats per
# character. Removed in three stages with {glue:}`n23_gpt_stage_steps` fine-tuning steps
# each ({glue:}`n23_gpt_steps` in all, {glue:}`n23_gpt_ft_seconds` s here), the LN-free
# model ends at {glue:}`n23_gpt_free`, against {glue:}`n23_gpt_ctrl` for the control
# fine-tuned the same way with its LayerNorms: the difference is {glue:}`n23_gpt_cost` ±
# {glue:}`n23_gpt_cost_se` nats (paired over the validation batches), so the LN-free loss is
# {glue:}`n23_gpt_cost_verdict` the control's. Against the *starting* model the LN-free model
# moved by {glue:}`n23_gpt_vs_start` nats and the control by {glue:}`n23_gpt_ctrl_vs_start`:
# the baseline is not fully converged, so comparing with the starting model alone would
# mix the cost of removing the norms with the gain of training longer.
#
# The LN-free model is a stack of linear maps, attention and GELUs: its fixed norms fold
# into the linears that follow them. We check that the folded model computes the same
# function and time it against the control (which still has its LayerNorms) and against
# the unfolded fixed-LN model, for one sequence of {glue:}`n23_T` characters and for a batch:

# %%
gpt_folded = ml.norm.fold_transformer_norms(ln_free)
idx_big = torch.cat([x for x, _ in gpt_val])[:ml.trim(ml.pick(smoke=16, cpu=64, gpu=64), keep=4)]
with torch.no_grad():
    gpt_fold_diff = max((gpt_folded(x) - ln_free(x)).abs().max().item() for x, _ in gpt_val)
loss_folded = ml.train.evaluate(gpt_folded, gpt_val)["loss"]
gpt_speed = speedups(control, {"fixed LN, unfolded": ln_free, "LN removed, folded": gpt_folded},
                     [idx_big[:1], idx_big])
print(f"folded vs unfolded LN-free model: max |logit diff| {gpt_fold_diff:.1e}, "
      f"val loss {loss_folded:.4f} vs {curve[-1]['LN removed']:.4f} (fp32)")
ml.bench.Table([{"CharGPT": "LayerNorm (control)", "params": ml.bench.count_params(control)}]
               + [{"CharGPT": k, "params": ml.bench.count_params(m), "speed-up, 1 sequence": gpt_speed[k][1],
                   f"speed-up, batch {len(idx_big)}": gpt_speed[k][len(idx_big)]}
                  for k, m in {"fixed LN, unfolded": ln_free, "LN removed, folded": gpt_folded}.items()],
               title=f"CharGPT inference, {dev.type}, fp32: speed-up = time(control) / time(model), median and IQR")

# %% tags=["remove-cell"]
ml.glue("n23_gpt_batch", len(idx_big))
ml.glue("n23_gpt_fold_diff", gpt_fold_diff, ".1e")
for B_, name in [(len(idx_big), "speed"), (1, "speed_1")]:
    c = gpt_speed["LN removed, folded"][B_]
    ml.glue(f"n23_gpt_{name}", c.speedup, ".2f")
    ml.glue(f"n23_gpt_{name}_iqr", f"{c.lo:.2f}-{c.hi:.2f}")
    ml.glue(f"n23_gpt_{name}_verdict", c.verdict)
ml.glue("n23_gpt_extra_params", ml.bench.count_params(gpt_folded) - ml.bench.count_params(control), ",")

# %% [markdown]
# Folding the fixed norms changes the logits by at most {glue:}`n23_gpt_fold_diff`; it
# unties the output head from the token embedding (the folded head has its own weight and
# a bias, {glue:}`n23_gpt_extra_params` more parameters). Against the control, the folded
# model is {glue:}`n23_gpt_speed_verdict` for a batch of {glue:}`n23_gpt_batch` sequences
# ({glue:}`n23_gpt_speed`x, {glue:}`n23_gpt_speed_iqr`) and {glue:}`n23_gpt_speed_1_verdict`
# for a single sequence ({glue:}`n23_gpt_speed_1`x, {glue:}`n23_gpt_speed_1_iqr`). As with
# the ViT the norms are a small share of a small model's time; the point of LN-free models
# in the papers is as much interpretability (no per-token nonlinearity in the residual
# stream) as speed.
#
# ## 2.3.4 Quality versus cost: chapter 2's variants against chapter 1's baselines
#
# Quality as measured above (test accuracy with its standard error; for CharGPT the
# validation loss after the fine-tuning of section 2.3.3, control and LN-free); cost as
# parameters, FLOPs per sample (PyTorch's FLOP counter does not count a norm's FLOPs, so
# folding does not change them) and throughput: each family's reference model timed on its
# own, the others through their measured speed-up against it.

# %%
@torch.inference_mode()
def per_second(model, x):
    """Samples per second of ``model`` on the batch ``x`` (median of REPEAT runs)."""
    return len(x) / ml.bench.time_fn(model, x, warmup=2, repeat=REPEAT).median


base_tp = {"cnn": per_second(cnn, x_test[:BIG]), "vit": per_second(vit_ln, x_big),
           "gpt": per_second(control, idx_big)}
gm = gpt_record["metrics"]
acc_se = lambda ok: f"{100 * ok.float().mean():.2f} ± {100 * ml.bench.accuracy_se(ok.float().mean().item(), len(ok)):.2f}"
results = [
    {"model": "ResNet-9 (ch. 1)", "quality": acc_se(ok_cnn), "params": ml.bench.count_params(cnn),
     "MFLOPs/sample": cnn_record["metrics"]["flops_per_sample"] / 1e6, "samples/s": base_tp["cnn"]},
    {"model": "ResNet-9, BN folded", "quality": acc_se(ok_cnn_folded), "params": ml.bench.count_params(cnn_folded),
     "MFLOPs/sample": ml.bench.count_flops(cnn_folded, x_test[:1]) / 1e6,
     "samples/s": base_tp["cnn"] * cnn_speed[BIG].speedup},
    {"model": "ViT, LayerNorm" + ("" if SHORT else " (ch. 1)"), "quality": acc_se(ok_vit["LayerNorm"]),
     "params": ml.bench.count_params(vit_ln), "MFLOPs/sample": vits["LayerNorm"][1]["metrics"]["flops_per_sample"] / 1e6,
     "samples/s": base_tp["vit"]},
]
for name, key, speed_key in [("ViT, BN-tokens folded", "BN-tokens", "BN-tokens folded"),
                             ("ViT, PRepBN folded", "PRepBN", "PRepBN folded")]:
    results.append({"model": name, "quality": acc_se(ok_vit[key]), "params": ml.bench.count_params(folded_vits[key]),
                    "MFLOPs/sample": vits[key][1]["metrics"]["flops_per_sample"] / 1e6,
                    "samples/s": base_tp["vit"] * vit_speed[speed_key][BIG].speedup})
for name, model, loss, ratio in [("CharGPT (ch. 1) + fine-tune control", control, curve[-1]["control (LN kept)"], 1.0),
                                 ("CharGPT, LN removed, folded", gpt_folded, curve[-1]["LN removed"],
                                  gpt_speed["LN removed, folded"][len(idx_big)].speedup)]:
    results.append({"model": name, "quality": f"{loss:.4f} nats", "params": ml.bench.count_params(model),
                    "MFLOPs/sample": gm["flops_per_sample"] / 1e6, "samples/s": base_tp["gpt"] * ratio})
ml.bench.Table(results, title=f"Chapter 2's inference variants vs chapter 1's baselines ({dev.type}, fp32; quality: "
                              f"test accuracy % ± se, or CharGPT val loss; samples/s at batch {BIG}, CharGPT "
                              f"sequences at batch {len(idx_big)})",
               formats={"MFLOPs/sample": ".1f", "samples/s": ".0f"})

# %%
acc_pts = {"ResNet-9 (ch. 1)": ok_cnn, "ResNet-9, BN folded": ok_cnn_folded,
           results[2]["model"]: ok_vit["LayerNorm"], "ViT, BN-tokens folded": ok_vit["BN-tokens"],
           "ViT, PRepBN folded": ok_vit["PRepBN"]}
fig, ax = plt.subplots(figsize=(7, 4.2))
for i, r in enumerate(results[:5]):
    ok = acc_pts[r["model"]]
    p = ok.float().mean().item()
    ax.errorbar(r["samples/s"], 100 * p, yerr=200 * ml.bench.accuracy_se(p, len(ok)), fmt="o",
                color=ml.plot.PALETTE[i], label=r["model"], capsize=3)
ax.set(xscale="log", xlabel=f"images per second, batch {BIG} ({dev.type}, fp32, log scale)",
       ylabel="test accuracy (%), ± 2 se", title="CIFAR-10 classifiers: quality against measured throughput")
ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))          # plain tick labels: 200, 500, 1,000
ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
ax.xaxis.set_minor_formatter(NullFormatter())
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# Folding is a move to the right at unchanged quality (the error bars of a model and its
# folded self are the same images, the same predictions up to
# {glue:}`n23_vit_fold_changed` image(s)), so an unfolded BatchNorm model is dominated by
# its folded self wherever the speed-up is measurable. Between families, the ResNet-9 and
# the ViTs trade accuracy against images per second in the way the table shows; within the
# ViTs, the foldable norms buy the speed-up of section 2.3.2 at the accuracy change measured
# there. For CharGPT the LN-free model trades the loss change of section 2.3.3 for its
# speed change.

# %% [markdown]
# ## 2.3.5 Claimed vs measured
#
# The papers' claims are for large models on GPUs; ours are measured on the small models
# and the device in the banner (fp32 inference), so they test the mechanism, not the
# headline numbers.
#
# | source | claim | measured here |
# | --- | --- | --- |
# | BatchNorm folding {cite}`ioffe2015batchnorm,jacob2018quantization` | exact: BN in eval mode is an affine map that merges into the preceding conv | ResNet-9: max logit change {glue:}`n23_cnn_diff`, accuracy {glue:}`n23_cnn_acc`% → {glue:}`n23_cnn_acc_folded`%; speed at batch {glue:}`n23_big`: {glue:}`n23_cnn_speed_big`x ({glue:}`n23_cnn_speed_big_verdict`), one image: {glue:}`n23_cnn_speed_1`x ({glue:}`n23_cnn_speed_1_verdict`) |
# | Unified Normalization {cite}`yang2022unified` | replacing LayerNorm by UN gives about 31% faster inference and 18% less GPU memory at comparable accuracy | plain BN-tokens (no UN smoothing or outlier filter): {glue:}`n23_vit_bn_delta` ± {glue:}`n23_vit_bn_delta_se` points vs LN ({glue:}`n23_vit_bn_verdict` LN); folded, {glue:}`n23_vit_bnf_speed`x LN's throughput ({glue:}`n23_vit_bnf_speed_verdict`) and {glue:}`n23_vit_bnf_mem`% less peak memory |
# | SLAB {cite}`guo2024slab` | progressive re-parameterized BN (PRepBN) matches LayerNorm's accuracy with lower latency | PRepBN: {glue:}`n23_vit_prep_acc`% vs LN {glue:}`n23_vit_ln_acc`% ({glue:}`n23_vit_prep_delta` ± {glue:}`n23_vit_prep_delta_se` points: {glue:}`n23_vit_prep_verdict` LN) in {glue:}`n23_vit_steps` steps; folded, one image {glue:}`n23_vit_prepf_lat`x LN's speed ({glue:}`n23_vit_prepf_lat_verdict`) |
# | Heimersheim {cite}`heimersheim2024layernorm` | LayerNorm can be removed from GPT-2 small by fine-tuning, with a small increase in loss | CharGPT: {glue:}`n23_gpt_cost` ± {glue:}`n23_gpt_cost_se` nats vs an equally fine-tuned control after {glue:}`n23_gpt_steps` steps ({glue:}`n23_gpt_cost_verdict` the control's; zero-shot: {glue:}`n23_gpt_zero_shot`) |
# | Baroni et al. {cite}`baroni2025layernorm` | LN removed from all GPT-2 models; for GPT-2 XL cross-entropy rises by only +0.03 | {glue:}`n23_gpt_cost` ± {glue:}`n23_gpt_cost_se` nats on a small character model; LN-free inference {glue:}`n23_gpt_speed`x the control's throughput ({glue:}`n23_gpt_speed_verdict`) |

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: fold forward instead (explain, medium)
# Fold the BatchNorms of the ResNet-9 into the convolutions *after* them instead of before.
# Why does that not work in ResNet-9 (look at what sits between a BN and the next conv)? In
# which architectures does it?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# A BN after a conv can also be folded into the *next* conv only if nothing nonlinear sits
# between them, and the scale then multiplies the next conv's input channels. In ResNet-9
# every BN is followed by a ReLU (and sometimes a max-pool), so only the preceding conv
# qualifies. Pre-activation ResNets ($\mathrm{BN} \to \mathrm{ReLU} \to \mathrm{conv}$)
# have the same problem; a BN right after the input, or a BN followed directly by a linear
# (as in Pre-LN transformers with BN-tokens, section 2.3.2), folds forward. One more caveat
# of folding forward into a padded conv: the shift $t$ would also have to be applied to the
# zero padding, which the folded bias gets wrong at the borders.
# :::

# %% [markdown]
# ### Exercise 2: is the gap larger than the seeds? (measure, hard)
# Retrain the BN-tokens ViT and the LayerNorm ViT with two other seeds
# (`ml.baselines.cifar_vit(variant="bn-tokens-s1", norm=ml.norm.BatchNormTokens, seed=1)`).
# Is the accuracy gap larger than the seed-to-seed spread? How does that spread relate to the
# standard errors of section 2.3.2?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The method, which costs four more trainings (not run here):
# ```python
# accs = {"ln": [acc_vit["LayerNorm"]], "bn-tokens": [acc_vit["BN-tokens"]]}
# for seed in (1, 2):
#     for name, norm in [("ln", None), ("bn-tokens", ml.norm.BatchNormTokens)]:
#         kw = dict(norm=norm) if norm else {}
#         _, r = ml.baselines.cifar_vit(variant=f"{name}-s{seed}", seed=seed, **kw)
#         accs[name].append(r["metrics"]["test_accuracy"])
# (m_ln, s_ln, _), (m_bn, s_bn, _) = (ml.bench.mean_spread(accs[k]) for k in ("ln", "bn-tokens"))
# gap, se_gap = m_bn - m_ln, (s_ln**2 / 3 + s_bn**2 / 3) ** 0.5   # mean gap and its standard error
# ```
# The gap is real when it exceeds about twice its standard error over seeds. The paired
# standard error of section 2.3.2 ({glue:}`n23_vit_bn_delta_se` points here) only covers the
# choice of test images for two *fixed* models; a new seed changes the models themselves
# (initialization, data order), so the seed-to-seed spread of one accuracy is at least the
# binomial standard error ({glue:}`n23_vit_se` points) and usually larger for short runs.
# A gap that passes the paired test on one seed can therefore still vanish across seeds,
# which is why the verdicts above speak of these trained models, not of the norms in general.
# :::

# %% [markdown]
# ### Exercise 3: all at once (measure, medium)
# Remove the LayerNorms of CharGPT all at once, then fine-tune for the same total number of
# steps as the staged removal. Compare its final loss with the staged removal's, with the
# paired spread of section 2.3.3.

# %% tags=["solution", "hide-cell"]
# Solution 3
all_at_once = copy.deepcopy(gpt)
ml.norm.fix_layer_norms(all_at_once, calib, ln_names)
loss_all, _ = finetune(all_at_once, stage_steps * len(stages), seed=100)
m_all, se_all = ml.bench.paired_difference(window_losses(ln_free, gpt_val), window_losses(all_at_once, gpt_val))
print(f"all at once, {stage_steps * len(stages)} steps: {loss_all:.4f}; staged: {curve[-1]['LN removed']:.4f}; "
      f"all at once - staged: {m_all:+.4f} ± {se_all:.4f} nats "
      f"({ml.bench.quality_verdict(m_all, se_all, better='higher', worse='lower', same='no measurable difference')})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# The zero-shot jump of removing everything at once is the {glue:}`n23_gpt_zero_shot` nats
# of section 2.3.3, larger than that of any single stage (every norm's error adds up), and
# the fine-tune has to repair all of it at once; Heimersheim found that removing the norms
# gradually, with training in between, works better for GPT-2, whose residual stream has a
# few tokens with huge norms. The printed line gives this model's answer with its paired
# spread: a difference within about twice the standard error says that on a small character
# model the schedule of the removal does not matter measurably.
# :::

# %% [markdown]
# ### Exercise 4: weight tying (explain, medium)
# Why does the folded LN-free CharGPT have *more* parameters than the original, and how
# would you fold the final norm while keeping the head tied to the token embedding?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# The head of CharGPT *is* the token embedding matrix $E$ (weight tying). Folding the final
# norm gives it the weight $E\operatorname{diag}(s)C$, which is no longer $E$, so the
# embedding and the head become two matrices ($V \times C$ more parameters) and the head
# gets a bias. To keep the tie, leave the final fixed norm as an explicit (cheap)
# elementwise scale-and-shift, or fold only its scale into the residual stream's last
# linear layers instead of into the head.
# :::

# %% [markdown]
# ### Exercise 5: fold a BatchNorm1d into the Linear before it (implement, easy)
# An MLP often has `nn.Linear -> nn.BatchNorm1d`. Write `fold_linear_bn(linear, bn)` that
# returns one `nn.Linear` equal to `bn(linear(x))` in eval mode, and check it against the
# pair on random inputs, after giving the BatchNorm non-trivial running statistics.

# %% tags=["solution", "hide-cell"]
# Solution 5
@torch.no_grad()
def fold_linear_bn(linear, bn):
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)            # per output feature
    fused = nn.Linear(linear.in_features, linear.out_features)
    fused.weight.copy_(linear.weight * s[:, None])                  # scale the rows (outputs)
    fused.bias.copy_(s * (linear.bias - bn.running_mean) + bn.bias)
    return fused


lin, bn1 = nn.Linear(32, 16), nn.BatchNorm1d(16)
for _ in range(20):                                                # training mode: running stats move
    bn1(lin(torch.randn(64, 32) * 3 + 1))
with torch.no_grad():
    bn1.weight.uniform_(0.5, 2), bn1.bias.normal_()
bn1.eval()
xl = torch.randn(8, 32)
with torch.no_grad():
    err5 = (fold_linear_bn(lin, bn1)(xl) - bn1(lin(xl))).abs().max().item()
assert err5 < 1e-5
print(f"Linear + BatchNorm1d folded into one Linear: max |Δ| < 1e-5: {err5 < 1e-5}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# $\mathrm{BN}(Wx + b) = s \odot (Wx + b - \mu) + \beta$ with $s = \gamma/\sqrt{\sigma^2 +
# \epsilon}$, so $W' = \operatorname{diag}(s)\,W$ (each *row*, an output feature, scaled, as
# for the convolution of section 2.3.1) and $b' = s \odot (b - \mu) + \beta$. The check above
# asserts that the folded linear agrees with the pair to float32 rounding.
# :::

# %% [markdown]
# ## Key takeaways
#
# - BatchNorm in eval mode is an affine map: folding it into the preceding convolution is
#   exact (the logits move by rounding error) and removes it from the inference graph; what
#   that buys in time depends on the device and must be measured as a ratio with its spread.
# - LayerNorm and RMSNorm compute statistics of every token, so they cannot be folded. A
#   BatchNorm over tokens can, but trains less reliably in transformers; progressive
#   schedules (SLAB's PRepBN) and smoothed statistics (UN) are the fixes. Whether a variant
#   is better or worse is decided on the same test images with a paired test, not by
#   ranking accuracies inside their standard errors.
# - LayerNorm can be removed from a trained GPT by replacing each $1/\sigma(x)$ with a
#   calibrated constant and fine-tuning; judge the cost against a control fine-tuned the
#   same way, not against the starting model, and state its spread before concluding.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
