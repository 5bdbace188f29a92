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
#    measure what it costs in loss against a fair control;
# 4. read a quality-versus-cost table and Pareto front of all variants, and say which
#    speed-ups are real on the hardware you have.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import copy
import functools
import statistics

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# Benchmark settings: a single input (latency) and a large batch (throughput).
BIG = ml.pick(smoke=32, cpu=256, gpu=256)
REPEAT = ml.pick(smoke=2, cpu=7, gpu=20)


@torch.no_grad()
def seconds(models, x, rounds=3):
    """Median seconds of one forward pass ``model(x)`` of each of ``models`` (a dict).

    Eval mode, no autograd. The models take turns (``rounds`` rounds of ``REPEAT`` timed
    runs each), so a slow phase of a shared machine hits all of them alike.
    """
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name] += ml.bench.time_fn(model.eval(), x, warmup=1, repeat=REPEAT).times
    return {name: statistics.median(t) for name, t in times.items()}


# %% [markdown]
# ## 1. Folding BatchNorm into the convolution before it
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
# $$\mathrm{BN}(W * x + b)_o = (s_o W_o) * x + (s_o b_o + t_o)
# \quad\Rightarrow\quad W'_o = W_o\frac{\gamma_o}{\sigma_o},\qquad
# b'_o = \beta_o - \mu_o\frac{\gamma_o}{\sigma_o} + \frac{\gamma_o}{\sigma_o} b_o,$$
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
cifar_test = ml.data.DeviceLoader(*ml.data.subset(*ml.data.cifar10(train=False), cnn_cfg["n_test"]),
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
print(f"folded conv vs conv+BN:            max abs error {err_ref:.1e} (outputs up to {ref.abs().max():.1f})")
print(f"folded conv vs fuse_conv_bn_eval:  max abs error {err_torch:.1e}")

# %% tags=["nbval-check-output"]
assert torch.allclose(ours, ref, atol=1e-4) and torch.allclose(ours, torch_fused, atol=1e-5)
print("allclose: True")

# %% [markdown]
# The library's version does the same in float64 (and handles a conv bias), and a helper
# walks the network and folds every `Conv2d -> BatchNorm2d` pair it finds:

# %%
ml.show(ml.norm.fold_batchnorm)
ml.show(ml.norm.fold_resnet_batchnorms)

# %% [markdown]
# Folding the whole trained network, then measuring it: the logits on the test set, the
# test accuracy (with the same flip test-time augmentation as chapter 1), the parameters,
# and the time of a forward pass for one image and for a batch.

# %%
cnn_folded = ml.norm.fold_resnet_batchnorms(cnn)
with torch.no_grad():
    cnn_diff = max((cnn_folded(x) - cnn(x)).abs().max().item() for x, _ in cifar_test)
acc_cnn = ml.train.evaluate(cnn, cifar_test, tta=True)["accuracy"]
acc_cnn_folded = ml.train.evaluate(cnn_folded, cifar_test, tta=True)["accuracy"]
n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())

cnn_models = {"ResNet-9 (conv + BN)": cnn, "ResNet-9, BN folded": cnn_folded}
t1, tb = seconds(cnn_models, x_test[:1]), seconds(cnn_models, x_test[:BIG])
cnn_rows = [{"model": name, "params": ml.bench.count_params(model),
             "BN layers": sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()),
             "latency, 1 image (ms)": 1e3 * t1[name], f"images/s, batch {BIG}": BIG / tb[name]}
            for name, model in cnn_models.items()]
cnn_rows[0]["test acc. %"], cnn_rows[1]["test acc. %"] = 100 * acc_cnn, 100 * acc_cnn_folded
print(f"max |logits folded - logits| over {cnn_cfg['n_test']} test images: {cnn_diff:.1e}")
ml.bench.Table(cnn_rows, title=f"Folding the {n_bn} BatchNorms of ResNet-9 (batch {BIG})",
               formats={"test acc. %": ".2f", "latency, 1 image (ms)": ".3f", f"images/s, batch {BIG}": ".0f"})

# %%
cnn_speed_1 = cnn_rows[0]["latency, 1 image (ms)"] / cnn_rows[1]["latency, 1 image (ms)"]
cnn_speed_big = cnn_rows[1][f"images/s, batch {BIG}"] / cnn_rows[0][f"images/s, batch {BIG}"]
ml.glue("n23_cnn_diff", cnn_diff, ".1e")
ml.glue("n23_cnn_acc", 100 * acc_cnn, ".2f")
ml.glue("n23_cnn_acc_folded", 100 * acc_cnn_folded, ".2f")
ml.glue("n23_cnn_nbn", n_bn)
ml.glue("n23_cnn_speed_1", cnn_speed_1, ".2f")
ml.glue("n23_cnn_speed_big", cnn_speed_big, ".2f")
ml.glue("n23_cnn_params_saved", cnn_rows[0]["params"] - cnn_rows[1]["params"], ",")
ml.glue("n23_big", BIG)

# %% [markdown]
# All {glue:}`n23_cnn_nbn` BatchNorms are gone, the logits move by at most
# {glue:}`n23_cnn_diff` (float32 rounding: the folded weights are a different rounding of
# the same numbers), and the test accuracy is {glue:}`n23_cnn_acc`% before and
# {glue:}`n23_cnn_acc_folded`% after. The folded network has
# {glue:}`n23_cnn_params_saved` fewer parameters (each BN's $\gamma,\beta$ become one bias
# per channel). On the machine in the banner the folded network runs
# {glue:}`n23_cnn_speed_1`x as fast for one image and {glue:}`n23_cnn_speed_big`x for a
# batch of {glue:}`n23_big`: a BatchNorm is a memory-bound pass over the activation
# that sits between two compute-bound convolutions, and its share of the time depends on
# how fast the convolutions are on that device. Timings on a shared CPU move by a few
# percent from run to run; the accuracy and the error do not.
#
# ## 2. A foldable norm for the ViT: BatchNorm over tokens
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
# Both are in the library:

# %%
ml.show(ml.norm.BatchNormTokens.forward)
ml.show(ml.norm.PRepBN)

# %% [markdown]
# We train chapter 1's ViT recipe (same data, schedule, seed and size; only the norm
# changes) with RMSNorm, with BatchNorm over tokens, and with PRepBN ($\lambda$ reaches 0
# after 80% of the steps, so the last 20% train the pure BatchNorm network that is
# deployed). Trained models are cached, so a second run of this notebook loads them.

# %%
vit_cfg = ml.baselines.config("cifar_vit")
vit_steps = vit_cfg["n_train"] // vit_cfg["batch_size"] * vit_cfg["epochs"]
vits = {
    "LayerNorm (ch. 1)": ml.baselines.cifar_vit(),
    "RMSNorm": ml.baselines.cifar_vit(variant="rms", norm=ml.norm.RMSNorm),
    "BN-tokens": ml.baselines.cifar_vit(variant="bn-tokens", norm=ml.norm.BatchNormTokens),
    "PRepBN": ml.baselines.cifar_vit(
        variant="prepbn", norm=functools.partial(ml.norm.PRepBN, steps=int(0.8 * vit_steps))),
}
vit_test = ml.data.DeviceLoader(*ml.data.subset(*ml.data.cifar10(train=False), vit_cfg["n_test"]),
                                1000, shuffle=False, **cifar_norm)
ml.bench.Table([{"norm": k, "test acc. %": 100 * r["metrics"]["test_accuracy"],
                 "params": r["metrics"]["params"], "train s": r["metrics"]["train_seconds"]}
                for k, (m, r) in vits.items()],
               title=f"ViT on CIFAR-10, chapter 1's recipe ({vit_cfg['epochs']} epochs, "
                     f"{vit_cfg['n_train']} images)", formats={"test acc. %": ".2f", "train s": ".0f"})

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.4))
ml.plot.learning_curves({k: ml.train.History.from_dict(r["history"]) for k, (m, r) in vits.items()},
                        y="val_accuracy", ax=ax, title="ViT test accuracy during training")
plt.show()

# %% [markdown]
# Now the fold. By hand for the first block's attention input, checked against the
# library's `fold_norm_into_linear`, and then for the whole network with
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
    h = torch.randn(4, 65, blk.norm1.num_features, generator=torch.Generator().manual_seed(0))
    ref = blk.attn.qkv(blk.norm1(h))
    ours = F.linear(h, W_qkv, b_qkv)
    lib = ml.norm.fold_norm_into_linear(blk.norm1, blk.attn.qkv)(h)
print(f"hand-folded qkv vs norm1 -> qkv: max abs error {(ours - ref).abs().max():.1e}")
print(f"hand-folded vs fold_norm_into_linear: max abs error {(ours - lib).abs().max():.1e}")

# %% tags=["nbval-check-output"]
assert torch.allclose(ours, ref, atol=1e-4) and torch.allclose(ours, lib, atol=1e-5)
print("allclose: True")

# %%
ml.show(ml.norm.fold_norm_into_linear)
ml.show(ml.norm.fold_transformer_norms)

# %%
folded_vits = {k: ml.norm.fold_transformer_norms(vits[k][0]) for k in ("BN-tokens", "PRepBN")}
fold_checks = {}
for k, folded in folded_vits.items():
    model = vits[k][0]
    with torch.no_grad():
        diff = max((folded(x) - model(x)).abs().max().item() for x, _ in vit_test)
    left = sum(isinstance(m, (ml.norm.BatchNormTokens, ml.norm.PRepBN)) for m in folded.modules())
    fold_checks[k] = {"norms left": left, "max |logit diff|": diff,
                      "acc. %": 100 * ml.train.evaluate(model, vit_test)["accuracy"],
                      "acc. % folded": 100 * ml.train.evaluate(folded, vit_test)["accuracy"]}
ml.bench.Table([{"model": k} | v for k, v in fold_checks.items()], title="Folded == unfolded",
               formats={"max |logit diff|": ".1e", "acc. %": ".2f", "acc. % folded": ".2f"})

# %% [markdown]
# Then the speed, at the same model size and weights layout: the four ViTs differ only in
# their norms (LayerNorm, RMSNorm, BatchNorm over tokens as a module, and none at all
# once folded). We time one image and a batch, and also read the peak memory of a batch's
# forward pass (the activations and temporaries the norms create).

# %%
x_big = next(iter(vit_test))[0][:BIG]
vit_speed_models = {
    "LayerNorm": vits["LayerNorm (ch. 1)"][0],
    "RMSNorm": vits["RMSNorm"][0],
    "BN-tokens (unfolded)": vits["BN-tokens"][0],
    "BN-tokens folded": folded_vits["BN-tokens"],
    "PRepBN folded": folded_vits["PRepBN"],
}
t1, tb = seconds(vit_speed_models, x_big[:1]), seconds(vit_speed_models, x_big)
vit_speed = {}
for name, model in vit_speed_models.items():
    with torch.no_grad():
        peak = ml.bench.peak_memory(model, x_big)
    vit_speed[name] = {"latency, 1 image (ms)": 1e3 * t1[name], f"images/s, batch {BIG}": BIG / tb[name],
                       f"peak memory, batch {BIG}": peak}
base = vit_speed["LayerNorm"]
ml.bench.Table([{"ViT norm": k} | v | {"speed vs LN": v[f"images/s, batch {BIG}"] / base[f"images/s, batch {BIG}"]}
                for k, v in vit_speed.items()],
               title="ViT inference on this machine",
               formats={"latency, 1 image (ms)": ".3f", f"images/s, batch {BIG}": ".0f",
                        f"peak memory, batch {BIG}": ml.bench.fmt_bytes, "speed vs LN": ".2f"})

# %%
acc = {k: 100 * r["metrics"]["test_accuracy"] for k, (m, r) in vits.items()}
ml.glue("n23_vit_ln_acc", acc["LayerNorm (ch. 1)"], ".2f")
ml.glue("n23_vit_rms_acc", acc["RMSNorm"], ".2f")
ml.glue("n23_vit_bn_acc", acc["BN-tokens"], ".2f")
ml.glue("n23_vit_prep_acc", acc["PRepBN"], ".2f")
ml.glue("n23_vit_bn_delta", acc["BN-tokens"] - acc["LayerNorm (ch. 1)"], "+.2f")
ml.glue("n23_vit_prep_delta", acc["PRepBN"] - acc["LayerNorm (ch. 1)"], "+.2f")
ml.glue("n23_vit_fold_diff", max(v["max |logit diff|"] for v in fold_checks.values()), ".1e")
big_key = f"images/s, batch {BIG}"
ml.glue("n23_vit_bnf_speed", vit_speed["BN-tokens folded"][big_key] / base[big_key], ".2f")
ml.glue("n23_vit_bnu_speed", vit_speed["BN-tokens (unfolded)"][big_key] / base[big_key], ".2f")
ml.glue("n23_vit_rms_speed", vit_speed["RMSNorm"][big_key] / base[big_key], ".2f")
ml.glue("n23_vit_bnf_lat", base["latency, 1 image (ms)"] / vit_speed["BN-tokens folded"]["latency, 1 image (ms)"], ".2f")
mem_key = f"peak memory, batch {BIG}"
ml.glue("n23_vit_bnf_mem", 100 * (1 - vit_speed["BN-tokens folded"][mem_key] / base[mem_key]), ".0f")
ml.glue("n23_vit_steps", vit_steps)

# %% [markdown]
# **What we measured.** With the same recipe, the ViT reaches {glue:}`n23_vit_ln_acc`%
# with LayerNorm, {glue:}`n23_vit_rms_acc`% with RMSNorm, {glue:}`n23_vit_bn_acc`% with a
# plain BatchNorm over tokens ({glue:}`n23_vit_bn_delta` points against LayerNorm) and
# {glue:}`n23_vit_prep_acc`% with SLAB's progressive PRepBN ({glue:}`n23_vit_prep_delta`
# points). Read these differences against the noise of a short run on a 2,000-image test
# set (a different seed moves accuracy too; exercise 2 measures by how much), and
# against the known weakness of plain BatchNorm in transformers, which UN and SLAB add
# machinery to fix. Folding is exact up to rounding (logits differ by at most
# {glue:}`n23_vit_fold_diff`, accuracy is unchanged). The folded ViT processes a batch of
# {glue:}`n23_big` images {glue:}`n23_vit_bnf_speed`x as fast as the LayerNorm one
# (unfolded BatchNorm: {glue:}`n23_vit_bnu_speed`x; RMSNorm: {glue:}`n23_vit_rms_speed`x),
# one image {glue:}`n23_vit_bnf_lat`x as fast, and its batch forward pass peaks at
# {glue:}`n23_vit_bnf_mem`% less memory. The two folded ViTs have exactly the same
# architecture (only their weights differ), so the gap between their rows in the table
# shows how much timings on this shared 2-core machine move from run to run: speed
# differences smaller than that gap are noise. Two caveats for reading the unfolded rows:
# RMSNorm and BN-tokens here are the library's from-scratch modules (a few PyTorch ops
# each), while LayerNorm is PyTorch's fused kernel, so the unfolded comparison favours
# LayerNorm; the folded models run no normalization code at all. And a norm is a small
# part of the time of this small ViT on a CPU, where the matmuls dominate; the papers'
# GPU speed-ups come from larger models, where every norm is a separate memory-bound
# kernel launch.
#
# ## 3. Removing LayerNorm from a trained GPT
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
# row's mean subtracted.

# %%
ml.show(ml.norm.FixedLayerNorm)
ml.show(ml.norm.layer_norm_inv_std)

# %% [markdown]
# The calibration: the average $\sigma$ (with LN's $\epsilon$) of each LayerNorm's input
# over a few batches of training text. In a Pre-LN model the residual stream grows with
# depth, so the later norms divide by more (a smaller $1/\bar\sigma$). Replacing all of
# them at once without any training shows why the fine-tuning is needed:

# %%
gpt, gpt_record = ml.baselines.char_gpt()
gcfg = ml.baselines.config("char_gpt")
corpus = ml.data.shakespeare()
T, B = gcfg["block_size"], gcfg["batch_size"]
# The validation windows of chapter 1 (same seed), so the baseline's loss is reproduced.
gpt_val = list(ml.data.TokenBatches(corpus.val_ids, T, B, steps=gcfg["eval_batches"], device=dev,
                                    generator=torch.Generator().manual_seed(1234)))
calib = [x for x, _ in ml.data.TokenBatches(corpus.train_ids, T, 32, steps=ml.pick(smoke=2, cpu=8, gpu=16),
                                            device=dev, generator=torch.Generator().manual_seed(7))]
ln_names = [n for n, m in gpt.named_modules() if isinstance(m, nn.LayerNorm)]
inv_std = ml.norm.layer_norm_inv_std(gpt, calib)
gpt_loss = ml.train.evaluate(gpt, gpt_val)["loss"]
zero_shot = copy.deepcopy(gpt)
ml.norm.fix_layer_norms(zero_shot, calib, ln_names)
zero_shot_loss = ml.train.evaluate(zero_shot, gpt_val)["loss"]
print(f"CharGPT val loss: {gpt_loss:.4f} (chapter 1's record: {gpt_record['metrics']['val_loss']:.4f})")
print(f"all {len(ln_names)} LayerNorms fixed, no fine-tuning: {zero_shot_loss:.4f}")
ml.bench.Table([{"LayerNorm": n, "mean sigma": 1 / v, "1 / mean sigma": v} for n, v in inv_std.items()],
               title="Calibrated scales")

# %% [markdown]
# Now the removal, in three stages: first the LayerNorms before the MLPs (`norm2`), then
# those before attention (`norm1`), then the final one. Each stage
# recalibrates the scales on the model as it is now, replaces the norms, and fine-tunes
# for the same number of steps. The **control** is the same model fine-tuned for the same
# steps on the same batches with the same optimizer, LayerNorms kept: the model is not
# fully converged, so fine-tuning alone changes the loss, and the fair cost of removing
# LayerNorm is the difference between the two.

# %%
stage_steps = ml.pick(smoke=4, cpu=80, gpu=400)
ft_lr = 3e-4                                # about the baseline's lr late in its cosine schedule
n_layer = gcfg["n_layer"]
stages = [("MLP-input LNs", [f"blocks.{i}.norm2" for i in range(n_layer)]),
          ("attention-input LNs", [f"blocks.{i}.norm1" for i in range(n_layer)]),
          ("final LN", ["norm"])]


def finetune(model, steps, seed):
    """Fine-tune ``model`` for ``steps`` steps of AdamW; return the validation loss."""
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
ml.bench.Table(curve, title=f"CharGPT val loss, {stage_steps} fine-tuning steps per stage",
               formats={k: ".4f" for k in ("just fixed", "LN removed", "control (LN kept)")})

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.2))
xs = range(len(curve))
ax.plot(xs, [c["control (LN kept)"] for c in curve], "o-", label="control (LN kept)")
ax.plot(xs, [c["LN removed"] for c in curve], "o-", label="LN removed, after fine-tuning")
ax.plot(list(xs)[1:], [c["just fixed"] for c in curve[1:]], "x", label="right after fixing (no fine-tuning)")
ax.set_xticks(list(xs), [c["stage"] for c in curve], rotation=15)
ax.set(ylabel="val loss (nats/char)", title="Removing LayerNorm from CharGPT, stage by stage")
ax.legend()
plt.show()

# %% [markdown]
# The LN-free model is a stack of linear maps, attention and GELUs: its fixed norms fold
# into the linears that follow them. We check that the folded model computes the same
# function and time it against the control (which still has its LayerNorms), for one
# sequence of {glue:}`n23_T` characters and for a batch:

# %%
gpt_folded = ml.norm.fold_transformer_norms(ln_free)
idx_big = torch.cat([x for x, _ in gpt_val])[:ml.pick(smoke=16, cpu=64, gpu=256)]
with torch.no_grad():
    gpt_fold_diff = max((gpt_folded(x) - ln_free(x)).abs().max().item() for x, _ in gpt_val)
loss_folded = ml.train.evaluate(gpt_folded, gpt_val)["loss"]
gpt_models = {"LayerNorm (control)": control, "fixed LN, unfolded": ln_free,
              "LN removed, folded": gpt_folded}
t1, tb = seconds(gpt_models, idx_big[:1]), seconds(gpt_models, idx_big)
gpt_speed = {name: {"val loss": ml.train.evaluate(model, gpt_val)["loss"],
                    "params": ml.bench.count_params(model),
                    "latency, 1 sequence (ms)": 1e3 * t1[name],
                    f"sequences/s, batch {len(idx_big)}": len(idx_big) / tb[name]}
             for name, model in gpt_models.items()}
print(f"folded vs unfolded LN-free model: max |logit diff| {gpt_fold_diff:.1e}, "
      f"val loss {loss_folded:.4f} vs {curve[-1]['LN removed']:.4f}")
ml.bench.Table([{"CharGPT": k} | v for k, v in gpt_speed.items()], title="CharGPT inference on this machine",
               formats={"val loss": ".4f", "latency, 1 sequence (ms)": ".3f",
                        f"sequences/s, batch {len(idx_big)}": ".0f"})

# %%
seq_key = f"sequences/s, batch {len(idx_big)}"
ml.glue("n23_T", T)
ml.glue("n23_gpt_batch", len(idx_big))
ml.glue("n23_gpt_loss", gpt_loss, ".4f")
ml.glue("n23_gpt_zero_shot", zero_shot_loss, ".3f")
ml.glue("n23_gpt_free", curve[-1]["LN removed"], ".4f")
ml.glue("n23_gpt_ctrl", curve[-1]["control (LN kept)"], ".4f")
ml.glue("n23_gpt_cost", curve[-1]["LN removed"] - curve[-1]["control (LN kept)"], "+.4f")
ml.glue("n23_gpt_vs_start", curve[-1]["LN removed"] - gpt_loss, "+.4f")
ml.glue("n23_gpt_steps", stage_steps * len(stages))
ml.glue("n23_gpt_stage_steps", stage_steps)
ml.glue("n23_gpt_ft_seconds", ft_seconds, ".0f")
ml.glue("n23_gpt_fold_diff", gpt_fold_diff, ".1e")
ml.glue("n23_gpt_speed", gpt_speed["LN removed, folded"][seq_key] / gpt_speed["LayerNorm (control)"][seq_key], ".2f")
ml.glue("n23_gpt_speed_1", gpt_speed["LayerNorm (control)"]["latency, 1 sequence (ms)"]
        / gpt_speed["LN removed, folded"]["latency, 1 sequence (ms)"], ".2f")
ml.glue("n23_gpt_extra_params", gpt_speed["LN removed, folded"]["params"] - gpt_speed["LayerNorm (control)"]["params"], ",")

# %% [markdown]
# **What we measured.** Fixing every LayerNorm at once without training raises the
# validation loss from {glue:}`n23_gpt_loss` to {glue:}`n23_gpt_zero_shot` nats per
# character. Removed in three stages with {glue:}`n23_gpt_stage_steps` fine-tuning steps
# each ({glue:}`n23_gpt_steps` in all, {glue:}`n23_gpt_ft_seconds` s here), the LN-free
# model ends at {glue:}`n23_gpt_free`, against {glue:}`n23_gpt_ctrl` for the control
# fine-tuned the same way with its LayerNorms: removing LayerNorm costs
# {glue:}`n23_gpt_cost` nats at this scale. Against the *starting* model the change is
# {glue:}`n23_gpt_vs_start` nats, which would understate the cost: the baseline is not
# fully converged, and the control shows what the same fine-tuning does with the norms
# kept. Folding the fixed norms changes the logits by
# at most {glue:}`n23_gpt_fold_diff`; it unties the output head from the token embedding
# (the folded head has its own weight and a bias, {glue:}`n23_gpt_extra_params` more
# parameters). The folded model runs a batch {glue:}`n23_gpt_speed`x and a single
# sequence {glue:}`n23_gpt_speed_1`x as fast as the control here. As with the ViT the
# norms are a small share of a small model's time on a CPU; the point of LN-free models
# in the papers is as much interpretability (no per-token nonlinearity in the residual
# stream) as speed.
#
# ## 4. Quality versus cost: chapter 2's variants against chapter 1's baselines
#
# Quality from the training records and the measurements above; cost as parameters,
# FLOPs per sample (from `record["metrics"]`, a norm's FLOPs are not counted by PyTorch's
# FLOP counter, so folding does not change them), training time, and the throughput we
# measured on this machine (images at batch {glue:}`n23_big`, CharGPT sequences at batch
# {glue:}`n23_gpt_batch`).

# %%
flops_vit = vits["LayerNorm (ch. 1)"][1]["metrics"]["flops_per_sample"]
results = [
    {"model": "ResNet-9 (ch. 1)", "task": "CIFAR-10", "quality": 100 * acc_cnn,
     "params": cnn_record["metrics"]["params"], "MFLOPs/sample": cnn_record["metrics"]["flops_per_sample"] / 1e6,
     "train s": cnn_record["metrics"]["train_seconds"], "samples/s": cnn_rows[0][big_key]},
    {"model": "ResNet-9, BN folded", "task": "CIFAR-10", "quality": 100 * acc_cnn_folded,
     "params": cnn_rows[1]["params"], "MFLOPs/sample": ml.bench.count_flops(cnn_folded, x_test[:1]) / 1e6,
     "train s": cnn_record["metrics"]["train_seconds"], "samples/s": cnn_rows[1][big_key]},
]
for name, key, speed_key in [("ViT, LayerNorm (ch. 1)", "LayerNorm (ch. 1)", "LayerNorm"),
                             ("ViT, RMSNorm", "RMSNorm", "RMSNorm"),
                             ("ViT, BN-tokens folded", "BN-tokens", "BN-tokens folded"),
                             ("ViT, PRepBN folded", "PRepBN", "PRepBN folded")]:
    m = vits[key][1]["metrics"]
    results.append({"model": name, "task": "CIFAR-10", "quality": 100 * m["test_accuracy"],
                    "params": ml.bench.count_params(vit_speed_models[speed_key]),
                    "MFLOPs/sample": m["flops_per_sample"] / 1e6, "train s": m["train_seconds"],
                    "samples/s": vit_speed[speed_key][big_key]})
gm = gpt_record["metrics"]
for name, key, loss in [("CharGPT (ch. 1) + fine-tune control", "LayerNorm (control)", curve[-1]["control (LN kept)"]),
                        ("CharGPT, LN removed, folded", "LN removed, folded", curve[-1]["LN removed"])]:
    results.append({"model": name, "task": "Shakespeare (val loss)", "quality": loss,
                    "params": gpt_speed[key]["params"], "MFLOPs/sample": gm["flops_per_sample"] / 1e6,
                    "train s": gm["train_seconds"] + (ft_seconds if "removed" in name else 0.0),
                    "samples/s": gpt_speed[key][seq_key]})
ml.bench.Table(results, title="Chapter 2's inference variants vs chapter 1's baselines "
                              "(quality: test accuracy %, or val loss in nats for CharGPT)",
               formats={"quality": ".3f", "MFLOPs/sample": ".1f", "train s": ".0f", "samples/s": ".0f"})

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
ml.plot.pareto([{"name": r["model"].replace(" (ch. 1)", "*"), "images/s": r["samples/s"], "test accuracy %": r["quality"]}
                for r in results if r["task"] == "CIFAR-10"],
               x="images/s", y="test accuracy %", x_lower_is_better=False, logx=True, ax=axes[0],
               title=f"CIFAR-10 classifiers (batch {BIG}; * = chapter 1)")
ml.plot.pareto([{"name": r["model"].split(" (")[0].replace("CharGPT, ", ""), "sequences/s": r["samples/s"],
                 "val loss": r["quality"]} for r in results if r["task"] != "CIFAR-10"],
               x="sequences/s", y="val loss", x_lower_is_better=False, y_higher_is_better=False,
               ax=axes[1], title="CharGPT")
plt.tight_layout()
plt.show()

# %% [markdown]
# On CIFAR-10 at this scale the ResNet-9 is far more accurate than every ViT (chapter 1
# explains why a small ViT trained briefly from scratch trails a CNN), while the ViTs,
# with fewer FLOPs per image, process more images per second: neither family dominates
# the other. Folding is a move to the right at unchanged quality, so an unfolded
# BatchNorm model is always dominated by its folded self (up to timing noise). Among the
# ViTs, the folded ones change throughput by what section 2 measured, within that
# section's timing noise, and whether they also keep LayerNorm's
# accuracy depends on how the BatchNorm was trained (plain or progressive). For CharGPT
# the LN-free model trades the loss increase of section 3 for its speed change.
#
# ## Claimed vs measured
#
# The papers' claims are for large models on GPUs; ours are measured on the small models
# and the machine in the banner (CPU, float32), so they test the mechanism, not the
# headline numbers.
#
# | source | claim | measured here |
# | --- | --- | --- |
# | BatchNorm folding {cite}`ioffe2015batchnorm,jacob2018quantization` | exact: BN in eval mode is an affine map that merges into the preceding conv | ResNet-9: max logit change {glue:}`n23_cnn_diff`, accuracy {glue:}`n23_cnn_acc`% → {glue:}`n23_cnn_acc_folded`%; {glue:}`n23_cnn_speed_big`x throughput at batch {glue:}`n23_big`, {glue:}`n23_cnn_speed_1`x for one image |
# | Unified Normalization {cite}`yang2022unified` | replacing LayerNorm by UN gives about 31% faster inference and 18% less GPU memory at comparable accuracy | plain BN-tokens (no UN smoothing or outlier filter): {glue:}`n23_vit_bn_delta` accuracy points vs LN; folded, {glue:}`n23_vit_bnf_speed`x LN's throughput and {glue:}`n23_vit_bnf_mem`% less peak memory on this CPU |
# | SLAB {cite}`guo2024slab` | progressive re-parameterized BN (PRepBN) matches LayerNorm's accuracy with lower latency | PRepBN: {glue:}`n23_vit_prep_acc`% vs LN {glue:}`n23_vit_ln_acc`% ({glue:}`n23_vit_prep_delta` points) in {glue:}`n23_vit_steps` steps; folded it runs like BN-tokens folded |
# | Heimersheim {cite}`heimersheim2024layernorm` | LayerNorm can be removed from GPT-2 small by fine-tuning, with a small increase in loss | CharGPT: {glue:}`n23_gpt_cost` nats vs an equally fine-tuned control after {glue:}`n23_gpt_steps` steps (zero-shot: {glue:}`n23_gpt_zero_shot`) |
# | Baroni et al. {cite}`baroni2025layernorm` | LN removed from all GPT-2 models; for GPT-2 XL cross-entropy rises by only +0.03 | {glue:}`n23_gpt_cost` nats on a small character model; LN-free inference {glue:}`n23_gpt_speed`x the control's throughput here |
#
# ## Exercises
#
# 1. Fold the BatchNorms of the ResNet-9 into the convolutions *after* them instead of
#    before. Why does that not work in ResNet-9 (look at what sits between a BN and the
#    next conv)? In which architectures does it?
# 2. Retrain the BN-tokens ViT and the LayerNorm ViT with two other seeds
#    (`ml.baselines.cifar_vit(variant="bn-tokens-s1", norm=..., seed=1)`). Is the accuracy
#    gap larger than the seed-to-seed spread?
# 3. Remove the LayerNorms of CharGPT all at once, then fine-tune for the same total
#    number of steps. Compare with the staged removal above.
# 4. Why does the folded LN-free CharGPT have *more* parameters than the original, and how
#    would you fold the final norm while keeping the head tied to the token embedding?
#
# :::{dropdown} Solution 1
# A BN after a conv can also be folded into the *next* conv only if nothing nonlinear sits
# between them, and the scale then multiplies the next conv's input channels. In ResNet-9
# every BN is followed by a ReLU (and sometimes a max-pool), so only the preceding conv
# qualifies. Pre-activation ResNets ($\mathrm{BN} \to \mathrm{ReLU} \to \mathrm{conv}$)
# have the same problem; a BN right after the input, or a BN followed directly by a linear
# (as in Pre-LN transformers with BN-tokens, section 2), folds forward. One more caveat of
# folding forward into a padded conv: the shift $t$ would also have to be applied to the
# zero padding, which the folded bias gets wrong at the borders.
# :::
#
# :::{dropdown} Solution 2
# ```python
# for seed in (1, 2):
#     for name, norm in [("ln", None), ("bn-tokens", ml.norm.BatchNormTokens)]:
#         kw = dict(norm=norm) if norm else {}
#         _, r = ml.baselines.cifar_vit(variant=f"{name}-s{seed}", seed=seed, **kw)
#         print(name, seed, r["metrics"]["test_accuracy"])
# ```
# At the `cpu` scale (a few epochs on a subset, 2,000 test images) two seeds of the same
# model differ by a noticeable fraction of the gaps in the table; compare the gap with that
# spread before calling one norm better. The known failure of BN in transformers shows more
# clearly in longer runs and larger models, where batch statistics drift.
# :::
#
# :::{dropdown} Solution 3
# ```python
# all_at_once = copy.deepcopy(gpt)
# ml.norm.fix_layer_norms(all_at_once, calib, ln_names)
# print(finetune(all_at_once, stage_steps * len(stages), seed=100))
# ```
# The zero-shot jump is larger (every norm's error adds up at once), and the fine-tune has
# to repair all of it; Heimersheim found that removing the norms gradually, with training
# in between, works better for GPT-2, whose residual stream has a few tokens with huge
# norms. On a small character model the difference can be small: measure it.
# :::
#
# :::{dropdown} Solution 4
# The head of CharGPT *is* the token embedding matrix $E$ (weight tying). Folding the final
# norm gives it the weight $E\operatorname{diag}(s)C$, which is no longer $E$, so the
# embedding and the head become two matrices ($V \times C$ more parameters) and the head
# gets a bias. To keep the tie, leave the final fixed norm as an explicit (cheap)
# elementwise scale-and-shift, or fold only its scale into the residual stream's last
# linear layers instead of into the head.
# :::
#
# ## Key takeaways
#
# - BatchNorm in eval mode is an affine map: folding it into the preceding convolution is
#   exact and removes its cost entirely; there is no reason to deploy a CNN with BN layers.
# - LayerNorm and RMSNorm compute statistics of every token, so they cannot be folded. A
#   BatchNorm over tokens can, but trains less reliably in transformers; progressive
#   schedules (SLAB's PRepBN) and smoothed statistics (UN) are the fixes.
# - LayerNorm can be removed from a trained GPT by replacing each $1/\sigma(x)$ with a
#   calibrated constant and fine-tuning; judge the cost against a control fine-tuned the
#   same way, not against the starting model.
# - How much a removed norm saves depends on the hardware and the model size: measure it,
#   median of repeats, on the device you deploy to.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
