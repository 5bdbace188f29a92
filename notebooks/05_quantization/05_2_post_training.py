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
# # 5.2 Post-training quantization: calibration, outliers, GPTQ and LoRC
#
# Post-training quantization (PTQ) takes a trained model and a few hundred unlabelled
# inputs, and returns a quantized model: no training, minutes of compute. It works
# remarkably well at 8 bits, and then stops working. Two things break it. Activations of
# transformers have a few channels with huge values, **outlier features**, that ruin a
# per-tensor 8-bit grid {cite}`dettmers2022llmint8`; and below 4 bits the rounding error of
# weights is too large to ignore. This notebook quantizes chapter 1's three networks
# (ResNet-9 and a ViT on CIFAR-10, CharGPT on Tiny Shakespeare) at every bit width from 8
# to 2, measures where each breaks, and applies the fixes the LLM literature built:
# smoothing activations into the weights (SmoothQuant {cite}`xiao2023smoothquant`),
# error-correcting weight rounding (GPTQ {cite}`frantar2023gptq`) and low-rank error
# compensation (LoRC, ZeroQuant-V2 {cite}`yao2023zeroquantv2`).
#
# **Learning objectives.** After this notebook you can
# 1. quantize a trained model to W8A8 and calibrate its activation ranges three ways
#    (min/max, percentile, MSE);
# 2. read weight-only (W4A16) and per-group results, and find the bit width where a
#    model falls off the cliff;
# 3. measure activation outliers per channel, explain why they break per-tensor activation
#    quantization, and fix them with finer scales or SmoothQuant's migration;
# 4. implement GPTQ on a whole model and low-rank compensation, and compare them with
#    round-to-nearest at the same storage.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 1. The models, the test data and the calibration data
#
# We load the three trained baselines of chapter 1 (from the cache). Calibration uses a
# few hundred **training** images or text windows (the test data stays unseen), and
# quality is measured on a fixed subset of the test set, the same for every variant:
# top-1 accuracy for the image models (without test-time augmentation), validation loss in
# nats per character for CharGPT. Following common practice the first layer and the
# classifier stay in float (they are small and the most sensitive), and so do CharGPT's
# embeddings (its output head *is* the token embedding).

# %%
cnn, _ = ml.baselines.cifar_cnn()
vit, _ = ml.baselines.cifar_vit()
gpt, _ = ml.baselines.char_gpt()

norm = dict(mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD, device=dev)
test_x, test_y = ml.data.subset(*ml.data.cifar10(train=False), ml.pick(smoke=250, cpu=2000, gpu=10_000), seed=0)
calib_x, calib_y = ml.data.subset(*ml.data.cifar10(train=True), ml.pick(smoke=128, cpu=512, gpu=2048), seed=1)
image_test = ml.data.DeviceLoader(test_x, test_y, 1000, shuffle=False, **norm)
image_calib = list(ml.data.DeviceLoader(calib_x, calib_y, 128, shuffle=False, **norm))

corpus = ml.data.shakespeare()
T = gpt.block_size
text_test = list(ml.data.TokenBatches(corpus.val_ids, T, 32, steps=ml.pick(smoke=2, cpu=10, gpu=50), device=dev,
                                      generator=torch.Generator().manual_seed(1234)))
text_calib = list(ml.data.TokenBatches(corpus.train_ids, T, 32, steps=ml.pick(smoke=1, cpu=8, gpu=16), device=dev,
                                       generator=torch.Generator().manual_seed(0)))

MODELS = {  # name: (float model, test batches, calibration batches, layers kept in float)
    "ResNet-9": (cnn, image_test, image_calib, ("prep", "fc")),
    "ViT": (vit, image_test, image_calib, ("patch_embed", "head")),
    "CharGPT": (gpt, text_test, text_calib, ("head",)),
}


def quality(name, model):
    """Test accuracy in % (image models) or validation loss in nats/char (CharGPT)."""
    result = ml.train.evaluate(model, MODELS[name][1])
    return result["loss"] if name == "CharGPT" else 100 * result["accuracy"]


def group_size(name, target):
    """The largest power of two <= target that divides the fan-in of every quantized layer."""
    model, _, _, skip = MODELS[name]
    fan_ins = [m.weight[0].numel() for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
               and not any(n == s or n.startswith(s + ".") for s in skip)]
    g = target
    while any(f % g for f in fan_ins):
        g //= 2
    return g


SAMPLES = ml.pick(smoke=2**12, cpu=2**15, gpu=2**16)  # activation values kept per batch and layer


def ptq(name, w_bits=8, a_bits=None, group=None, method="minmax"):
    """A quantized copy: weights per output channel (or per group), activations per tensor,
    calibrated with `method` on the calibration batches."""
    model, _, calib, skip = MODELS[name]
    q = ml.quant.quantize_model(model, w_bits=w_bits, a_bits=a_bits, group_size=group, skip=skip,
                                a_symmetric=False)
    if a_bits is not None:
        ml.quant.calibrate(q, calib, method, samples_per_batch=SAMPLES)
    return q


fp32 = {name: quality(name, m[0]) for name, m in MODELS.items()}
ml.bench.Table([{"model": n, "quality": f"{q:.2f}% acc" if n != "CharGPT" else f"{q:.3f} val loss",
                 "params": ml.bench.count_params(MODELS[n][0]),
                 "float32 bytes": ml.bench.fmt_bytes(ml.bench.model_bytes(MODELS[n][0]))}
                for n, q in fp32.items()], title=f"float32 references ({ml.scale()} scale)")

# %% [markdown]
# ## 2. W8A8 and calibration
#
# To run a layer in integer arithmetic both its inputs and its weights must be integers:
# **W8A8**. Weights are known in advance, so their scales come from the weights themselves
# (per output channel, section 5.1). Activations are only known at run time; *static*
# quantization fixes their per-tensor range in advance from calibration data, so the
# deployed model needs no range computation. `ml.quant.quantize_model` swaps every
# `nn.Linear` and `nn.Conv2d` for a `QuantLinear` / `QuantConv2d` that fake-quantizes its
# weight and input; `ml.quant.calibrate` runs the model on calibration batches with a
# forward hook on every quantized layer, collects a sample of each layer's inputs, and sets
# the layer's activation range with one of notebook 5.1's three rules.

# %%
ml.show(ml.quant.QuantLinear.forward)

# %%
ml.show(ml.quant.calibrate)

# %%
rows = []
for a_bits in (8, 4):
    for method in ml.pick(smoke=("minmax", "mse"), cpu=ml.quant.CALIBRATION_METHODS, gpu=ml.quant.CALIBRATION_METHODS):
        row = {"activations": f"A{a_bits} per tensor", "calibration": method}
        for name in MODELS:
            row[name] = quality(name, ptq(name, 8, a_bits, method=method))
        rows.append(row)
calib_table = ml.bench.Table(
    [{"activations": "float32", "calibration": "-", **fp32}] + rows,
    title="W8 weights (per channel) with static activations: accuracy % / CharGPT val loss",
    formats={"ResNet-9": "{:.2f}", "ViT": "{:.2f}", "CharGPT": "{:.3f}"})
cal = {(r["activations"][:2], r["calibration"]): r for r in rows}
for name, key in (("ResNet-9", "cnn"), ("ViT", "vit")):
    ml.glue(f"{key}_w8a8_delta", cal[("A8", "minmax")][name] - fp32[name], "+.2f")
    ml.glue(f"{key}_a4_minmax", cal[("A4", "minmax")][name], ".1f")
    ml.glue(f"{key}_a4_mse", cal[("A4", "mse")][name], ".1f")
ml.glue("gpt_w8a8_rise", cal[("A8", "minmax")]["CharGPT"] - fp32["CharGPT"], "+.3f")
for method in ml.quant.CALIBRATION_METHODS:
    if ("A4", method) in cal:
        ml.glue(f"gpt_a4_{method}", cal[("A4", method)]["CharGPT"], ".3f")
ml.glue("gpt_fp32", fp32["CharGPT"], ".3f")
calib_table

# %% [markdown]
# At 8 bits with min/max ranges, W8A8 changes the accuracy of ResNet-9 by
# {glue:}`cnn_w8a8_delta` points and of the ViT by {glue:}`vit_w8a8_delta` (differences of a
# few tenths are within the noise of a 2,000-image test set at the `cpu` scale), and
# CharGPT's loss by {glue:}`gpt_w8a8_rise` nats: W8A8 is free here, whatever the
# calibration rule. With 4-bit activations the image models still hold (ResNet-9
# {glue:}`cnn_a4_minmax`% with min/max, {glue:}`cnn_a4_mse`% with the MSE rule; ViT
# {glue:}`vit_a4_minmax`% and {glue:}`vit_a4_mse`%), but the language model does not:
# CharGPT goes from {glue:}`gpt_fp32` to {glue:}`gpt_a4_minmax` nats with min/max ranges,
# and clipping recovers part of it ({glue:}`gpt_a4_percentile` with the 99.99th
# percentile, {glue:}`gpt_a4_mse` with the MSE rule). As in notebook 5.1, the clipping
# range matters when the grid is coarse; which rule wins depends on the layer, since
# minimizing each layer's input error is not the same as minimizing the loss.
#
# ## 3. Weight-only quantization and the cliff
#
# For memory-bound inference (generating one token at a time) the cost is reading the
# weights, and activations can stay in 16-bit floats: **weight-only** quantization, W8A16
# or W4A16. Here weights go down from 8 to 2 bits, per output channel or per group of $g$
# input weights. (Our symmetric grids use $2^b - 1$ levels: 2 bits means the three values
# $\{-s, 0, s\}$.)

# %%
weight_configs = ml.pick(smoke=[(8, None), (4, None), (3, None), (3, 32), (2, None), (2, 32)],
                         cpu=[(8, None), (4, None), (4, 32), (3, None), (3, 32), (2, None), (2, 32)],
                         gpu=[(8, None), (4, None), (4, 128), (4, 32), (3, None), (3, 32), (2, None), (2, 32)])
rows = []
for bits, target in weight_configs:
    row = {"weights": f"W{bits} " + ("per channel" if target is None else f"g<={target}")}
    for name, (model, *_) in MODELS.items():
        g = None if target is None else group_size(name, target)
        q = ptq(name, bits, group=g)
        row[name] = quality(name, q)
        row[f"{name} g"] = g or "-"
        row[f"{name} MB"] = ml.quant.quantized_bytes(q) / 1e6
    rows.append(row)
w_table = ml.bench.Table([{"weights": "float32", **fp32}] + rows,
                         columns=["weights", "ResNet-9", "ResNet-9 g", "ViT", "ViT g", "CharGPT", "CharGPT g"],
                         title="weight-only PTQ (round to nearest): accuracy % / CharGPT val loss",
                         formats={"ResNet-9": "{:.2f}", "ViT": "{:.2f}", "CharGPT": "{:.3f}"})
wq = {r["weights"]: r for r in rows}
for name, key in (("ResNet-9", "cnn"), ("ViT", "vit"), ("CharGPT", "gpt")):
    for label, tag in (("W4 per channel", "w4"), ("W3 per channel", "w3"), ("W2 per channel", "w2"),
                       ("W3 g<=32", "w3g"), ("W2 g<=32", "w2g")):
        ml.glue(f"{key}_{tag}", wq[label][name], ".3f" if name == "CharGPT" else ".1f")
w_table

# %% [markdown]
# Weight-only quantization to 4 bits per channel keeps ResNet-9 at {glue:}`cnn_w4`% and
# the ViT at {glue:}`vit_w4`% (CharGPT: {glue:}`gpt_w4` nats; float32 in the first row).
# Then comes the cliff: at 3 bits per channel {glue:}`cnn_w3`% / {glue:}`vit_w3`% /
# {glue:}`gpt_w3`, at 2 bits {glue:}`cnn_w2`% / {glue:}`vit_w2`% / {glue:}`gpt_w2` (10% is
# chance on CIFAR-10; a uniform guess over 65 characters has a loss of $\ln 65 = 4.17$).
# Groups soften the cliff: with groups of at most 32 (the `g` columns give each model's
# group size), 3 bits give {glue:}`cnn_w3g`% / {glue:}`vit_w3g`% / {glue:}`gpt_w3g` and
# 2 bits {glue:}`cnn_w2g`% / {glue:}`vit_w2g`% / {glue:}`gpt_w2g`.
#
# ## 4. Outliers in transformer activations
#
# LLM.int8() {cite}`dettmers2022llmint8` found that the hidden states of large transformers
# have a few **feature dimensions** with values far larger than the rest, in the same
# dimensions for almost every token, and that once they appear (around 6.7B
# parameters in their models) per-tensor int8 quantization of activations breaks.
# SmoothQuant {cite}`xiao2023smoothquant` observed the same: activation outliers sit in
# *fixed channels*, while weights are easy to quantize. Do our small transformers have
# them? `ml.quant.input_stats` hooks every linear layer and records, per input channel, the
# largest magnitude it sees on the calibration data.

# %%
ml.show(ml.quant.input_stats)

# %%
rows, stats = [], {}
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    stats[name] = ml.quant.input_stats(model, calib)
    for layer, st in stats[name].items():
        a = st["absmax"]
        rows.append({"model": name, "layer": layer, "channels": a.numel(), "max |x|": a.max().item(),
                     "median channel max": a.median().item(), "outlier ratio": (a.max() / a.median()).item()})
outlier_table = ml.bench.Table(sorted(rows, key=lambda r: -r["outlier ratio"])[:8],
                               title="linear-layer inputs with the largest outlier ratio (max / median of per-channel max |x|)",
                               formats={"max |x|": "{:.2f}", "median channel max": "{:.2f}", "outlier ratio": "{:.1f}"})
worst = max(rows, key=lambda r: r["outlier ratio"])
ml.glue("worst_layer", f"{worst['model']} {worst['layer']}")
ml.glue("worst_ratio", worst["outlier ratio"], ".1f")
ln_fed = [r for r in rows if r["layer"].endswith(("attn.qkv", "mlp.fc"))]
ml.glue("ln_fed_ratio", max(r["outlier ratio"] for r in ln_fed), ".1f")
ml.glue("n_top_after_gelu", sum(r["layer"].endswith("mlp.proj") for r in outlier_table.rows))
ml.glue("n_top", len(outlier_table.rows))
outlier_table

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, name in zip(axes, ("ViT", "CharGPT")):
    layer = max(stats[name], key=lambda n: (stats[name][n]["absmax"].max() / stats[name][n]["absmax"].median()).item())
    a = stats[name][layer]["absmax"].cpu()
    ax.bar(range(a.numel()), a, width=1.0, color="C0")
    ax.axhline(a.median(), color="C3", linestyle="--", label="median channel")
    ax.set(title=f"{name} {layer}: input max |x| per channel", xlabel="input channel", ylabel="max |x|")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The worst layer, {glue:}`worst_layer`, has a channel {glue:}`worst_ratio` times larger
# than the median channel, and {glue:}`n_top_after_gelu` of the {glue:}`n_top` worst
# inputs are those of the second MLP layer (`mlp.proj`), after the GELU. The inputs that
# LayerNorm feeds (`attn.qkv`, `mlp.fc`), where LLM.int8 and SmoothQuant find the
# outliers of large models, are tame in ours: their largest ratio is
# {glue:}`ln_fed_ratio`. Now take the worst layer and quantize its input $X$ ($N$ tokens by
# $C$ channels) and its weight $W$, and measure the error of the output $XW^\top$ for four
# ways to pick the activation scales:
#
# - **per tensor**: one scale for all of $X$ (static W8A8): the outlier channel sets it;
# - **per token** (per row of $X$): LLM.int8's *vector-wise* quantization; still one scale
#   for every channel of a token, and an int8 GEMM can apply it (it scales output rows);
# - **per channel** (per column of $X$): the natural fix, but the scale runs along the sum
#   $\sum_c x_{tc} w_{jc}$, so an integer GEMM cannot apply it;
# - **SmoothQuant**: divide channel $c$ of $X$ by $s_c$ and multiply column $c$ of $W$ by
#   $s_c$, with $s_c = \max|X_c|^\alpha / \max|W_{:,c}|^{1-\alpha}$. The product is
#   unchanged, the activation outliers shrink, the weights absorb them; then per tensor.

# %%
ml.show(ml.quant.smooth_quant_scales)

# %%
name, layer_name = worst["model"], worst["layer"]
model, _, calib, _ = MODELS[name]
layer = model.get_submodule(layer_name)
captured = []
handle = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().reshape(-1, args[0].shape[-1])))
with torch.no_grad():
    for batch in calib[:2]:
        model(batch[0])
handle.remove()
X, W = torch.cat(captured).float(), layer.weight.detach().float()
Y = X @ W.T
W_q = ml.quant.fake_quant(W, 8, axis=0)
s_smooth = ml.quant.smooth_quant_scales(X.abs().amax(dim=0), W, alpha=0.5)


def output_error(X_hat, W_hat):
    return ((X_hat @ W_hat.T - Y).norm() / Y.norm()).item()


rows = []
for a_bits in (8, 6, 4):
    rows.append({
        "activation bits": a_bits,
        "per tensor": output_error(ml.quant.fake_quant(X, a_bits, False), W_q),
        "per token": output_error(ml.quant.fake_quant(X, a_bits, False, axis=0), W_q),
        "per channel (no int GEMM)": output_error(ml.quant.fake_quant(X, a_bits, False, axis=1), W_q),
        "SmoothQuant + per tensor": output_error(ml.quant.fake_quant(X / s_smooth, a_bits, False),
                                                 ml.quant.fake_quant(W * s_smooth, 8, axis=0)),
    })
layer_table = ml.bench.Table(rows, title=f"{name} {layer_name}: relative output error of X W^T (W8 per channel)",
                             formats={c: "{:.2%}" for c in rows[0] if c != "activation bits"})
ml.glue("layer_err_tensor_a8", rows[0]["per tensor"], ".2%")
ml.glue("layer_err_smooth_a8", rows[0]["SmoothQuant + per tensor"], ".2%")
ml.glue("layer_err_tensor_a4", rows[2]["per tensor"], ".1%")
ml.glue("layer_err_smooth_a4", rows[2]["SmoothQuant + per tensor"], ".1%")
ml.glue("layer_err_channel_a4", rows[2]["per channel (no int GEMM)"], ".1%")
ml.glue("layer_err_token_a4", rows[2]["per token"], ".1%")
layer_table

# %% [markdown]
# On this layer per-tensor A8 gives a relative output error of {glue:}`layer_err_tensor_a8`
# and SmoothQuant {glue:}`layer_err_smooth_a8`; at 4 bits {glue:}`layer_err_tensor_a4`
# against {glue:}`layer_err_smooth_a4` (per channel, the unattainable ideal:
# {glue:}`layer_err_channel_a4`). Migration moves part of the benefit of per-channel scales
# into a form an integer GEMM can run. Dynamic per-token scales, which an int8 GEMM can
# also apply, reach {glue:}`layer_err_token_a4` at 4 bits on this layer: compare it with
# the per-channel column to see whether its inputs vary more from token to token or from
# channel to channel. On a whole model the smoothing factors are
# folded into the LayerNorm in front of `qkv` and `fc` (divide its gain and bias by $s$)
# and into those layers' weights (multiply their columns by $s$), so smoothing costs
# nothing at inference:

# %%
ml.show(ml.quant.smooth_quant_fold)

# %%
rows = []
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    smoothed = ml.quant.smooth_quant_model(model, calib, alpha=0.5)
    for a_bits in ml.pick(smoke=(8, 6), cpu=(8, 6, 4), gpu=(8, 6, 4)):
        row = {"model": name, "weights / activations": f"W8A{a_bits}"}
        done = cal.get((f"A{a_bits}", "minmax"))  # measured in section 2 already
        row["per-tensor"] = done[name] if done else quality(name, ptq(name, 8, a_bits))
        q = ml.quant.quantize_model(smoothed, w_bits=8, a_bits=a_bits, skip=skip, a_symmetric=False)
        row["SmoothQuant"] = quality(name, ml.quant.calibrate(q, calib, samples_per_batch=SAMPLES))
        rows.append(row)
    row_fp = {"model": name, "weights / activations": "float32 (smoothed)",
              "per-tensor": fp32[name], "SmoothQuant": quality(name, smoothed)}
    rows.append(row_fp)
smooth_table = ml.bench.Table(rows, title="static per-tensor activations (min/max), with and without SmoothQuant (alpha=0.5)",
                              formats={"per-tensor": "{:.3f}", "SmoothQuant": "{:.3f}"})
sm = {(r["model"], r["weights / activations"]): r for r in rows}
for name, key in (("ViT", "vit"), ("CharGPT", "gpt")):
    for a in (8, 6):
        ml.glue(f"{key}_a{a}_tensor", sm[(name, f"W8A{a}")]["per-tensor"], ".3f" if key == "gpt" else ".2f")
        ml.glue(f"{key}_a{a}_smooth", sm[(name, f"W8A{a}")]["SmoothQuant"], ".3f" if key == "gpt" else ".2f")
smooth_table

# %% [markdown]
# The smoothed float model computes the same function (same quality, up to rounding). With
# W8A8 the ViT scores {glue:}`vit_a8_tensor`% per tensor and {glue:}`vit_a8_smooth`% with
# smoothing, CharGPT {glue:}`gpt_a8_tensor` and {glue:}`gpt_a8_smooth` nats; at W8A6 the
# ViT {glue:}`vit_a6_tensor`% and {glue:}`vit_a6_smooth`%, CharGPT {glue:}`gpt_a6_tensor`
# and {glue:}`gpt_a6_smooth`. If the two columns agree within noise, the outlier table
# says why: the layers SmoothQuant can fold into (those after a LayerNorm) have no
# outliers worth the name in our small models, and the outliers we do have sit after the
# GELU, where no normalization is there to absorb the scales (the layer-level experiment
# above shows what migration would buy there, at the price of an extra multiplication at
# run time). Our models are four to five orders of magnitude smaller than the 6.7B
# parameters at which LLM.int8 saw outliers emerge: 8-bit per-tensor activations simply
# work.
#
# ## 5. GPTQ: rounding that corrects its own errors
#
# Round-to-nearest (RTN) quantizes each weight independently. But what matters is the
# layer's *output* on real inputs, $\lVert XW^\top - X\hat W^\top\rVert^2$, and errors in
# different weights of a row can cancel. Writing $H = 2X^\top X$ (the Hessian of that
# error with respect to one row $w$ of $W$), GPTQ {cite}`frantar2023gptq` quantizes the
# input columns one at a time and, after rounding column $j$, updates all columns not yet
# quantized to compensate, with the optimal-brain-surgeon step
#
# $$\delta w_{j+1:} = -\frac{w_j - \hat w_j}{[H^{-1}]_{jj}}\,[H^{-1}]_{j,\,j+1:} ,$$
#
# using the Cholesky factor of $H^{-1}$ so that all rows of $W$ are done at once and each
# step is a rank-one update. On a whole model we go layer by layer in forward order,
# computing each layer's $H$ from its inputs in the *partly quantized* model, so later
# layers also correct what earlier ones got wrong.

# %%
ml.show(ml.quant.gptq_quantize)

# %%
ml.show(ml.quant.gptq_model)

# %%
gptq_configs = ml.pick(smoke=[(3, None), (2, 32)], cpu=[(3, None), (3, 32), (2, 32)],
                       gpu=[(4, None), (3, None), (3, 32), (2, 32)])
rows, gptq_models = [], {}
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    for bits, target in gptq_configs:
        g = None if target is None else group_size(name, target)
        label = f"W{bits} " + ("per channel" if g is None else f"g{g}")
        gq = ml.quant.gptq_model(model, calib, bits, group_size=g, skip=skip,
                                 max_batches=ml.pick(smoke=1, cpu=4, gpu=16))
        gptq_models[(name, bits, g)] = gq
        rtn = wq.get(f"W{bits} " + ("per channel" if target is None else f"g<={target}"))  # section 3
        rows.append({"model": name, "weights": label,
                     "RTN": rtn[name] if rtn else quality(name, ptq(name, bits, group=g)),
                     "GPTQ": quality(name, gq), "MB": ml.quant.quantized_bytes(gq) / 1e6})
gptq_table = ml.bench.Table(rows, title="weight-only: round to nearest vs GPTQ (same grid, same bytes)",
                            formats={"RTN": "{:.3f}", "GPTQ": "{:.3f}", "MB": "{:.3f}"})
gp = {(r["model"], r["weights"].split()[0], r["weights"].split()[1]): r for r in rows}
for name, key in (("ViT", "vit"), ("CharGPT", "gpt")):
    r3 = gp[(name, "W3", "per")]
    ml.glue(f"{key}_w3_rtn", r3["RTN"], ".3f" if key == "gpt" else ".1f")
    ml.glue(f"{key}_w3_gptq", r3["GPTQ"], ".3f" if key == "gpt" else ".1f")
    r2 = next(r for k, r in gp.items() if k[0] == name and k[1] == "W2")
    ml.glue(f"{key}_w2g_rtn", r2["RTN"], ".3f" if key == "gpt" else ".1f")
    ml.glue(f"{key}_w2g_gptq", r2["GPTQ"], ".3f" if key == "gpt" else ".1f")
gptq_table

# %% [markdown]
# With the same 3-bit per-channel grid and the same bytes, GPTQ lifts the ViT from
# {glue:}`vit_w3_rtn`% (RTN) to {glue:}`vit_w3_gptq`% and brings CharGPT's loss from
# {glue:}`gpt_w3_rtn` to {glue:}`gpt_w3_gptq`; at 2 bits in groups, from
# {glue:}`vit_w2g_rtn`% to {glue:}`vit_w2g_gptq`% and from {glue:}`gpt_w2g_rtn` to
# {glue:}`gpt_w2g_gptq`. It costs one forward pass per layer over the calibration data and
# a Cholesky factorization per layer: seconds here.
#
# ## 6. LoRC: a low-rank correction of the quantization error
#
# Whatever rounding we use, the error $E = W - \hat W$ remains. ZeroQuant-V2
# {cite}`yao2023zeroquantv2` stores a small correction next to the quantized weight: the
# best rank-$r$ approximation of $E$ from its singular value decomposition,
# $E \approx U_r V_r$ with $U_r = U_{:, :r}\Sigma_r^{1/2}$ and $V_r = \Sigma_r^{1/2}V^\top_{:r}$,
# itself kept in 8 bits. The layer computes $x\hat W^\top + (xV_r^\top)U_r^\top$: two thin
# matmuls, $r(C_\text{in} + C_\text{out})$ extra bytes.

# %%
ml.show(ml.quant.LoRCLinear)

# %%
ranks = ml.pick(smoke=[0, 4], cpu=[0, 8, 32], gpu=[0, 8, 16, 32, 64])
rows = []
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    measured = {"RTN W3": wq["W3 per channel"][name], "GPTQ W3": gp[(name, "W3", "per")]["GPTQ"]}  # rank 0
    for base_label, base in (("RTN W3", ptq(name, 3)), ("GPTQ W3", gptq_models[(name, 3, None)])):
        for r in ranks:
            q = ml.quant.lorc_model(base, model, r)
            rows.append({"model": name, "base": base_label, "rank": r,
                         "quality": measured[base_label] if r == 0 else quality(name, q),
                         "MB": ml.quant.quantized_bytes(q) / 1e6})
lorc_table = ml.bench.Table(rows, title="LoRC rank sweep on 3-bit per-channel weights (8-bit factors)",
                            formats={"quality": "{:.3f}", "MB": "{:.3f}"})
lo = {(r["model"], r["base"], r["rank"]): r for r in rows}
r_mid = ranks[len(ranks) // 2]
ml.glue("lorc_rank", r_mid)
for name, key in (("ViT", "vit"), ("CharGPT", "gpt")):
    fmt = ".3f" if key == "gpt" else ".1f"
    ml.glue(f"{key}_lorc0", lo[(name, "RTN W3", 0)]["quality"], fmt)
    ml.glue(f"{key}_lorc", lo[(name, "RTN W3", r_mid)]["quality"], fmt)
    ml.glue(f"{key}_lorc_gptq", lo[(name, "GPTQ W3", r_mid)]["quality"], fmt)
    ml.glue(f"{key}_lorc_extra", 100 * (lo[(name, "RTN W3", r_mid)]["MB"] / lo[(name, "RTN W3", 0)]["MB"] - 1), ".1f")
    ml.glue(f"{key}_lorc_max", lo[(name, "RTN W3", ranks[-1])]["quality"], fmt)
    ml.glue(f"{key}_lorc_gptq0", lo[(name, "GPTQ W3", 0)]["quality"], fmt)
ml.glue("lorc_max_rank", ranks[-1])
lorc_table

# %% [markdown]
# A rank-{glue:}`lorc_rank` correction on top of 3-bit RTN weights moves CharGPT from
# {glue:}`gpt_lorc0` to {glue:}`gpt_lorc` nats for {glue:}`gpt_lorc_extra`% more bytes
# (rank {glue:}`lorc_max_rank`: {glue:}`gpt_lorc_max`; float32: {glue:}`gpt_fp32`). On
# top of GPTQ's 3-bit weights ({glue:}`gpt_lorc_gptq0`) it gives {glue:}`gpt_lorc_gptq`.
# For the ViT the changes ({glue:}`vit_lorc0`% to {glue:}`vit_lorc`%, for
# {glue:}`vit_lorc_extra`% more bytes) are of the size of the test-set noise. Note what each
# method minimizes. LoRC fits the *weight* error in the Frobenius norm, blind to the inputs;
# GPTQ minimizes the error of the layer's *output* on real inputs, and leaves a weight
# error that is large only in directions the inputs rarely use, where a low-rank fit of
# the weights then spends its rank for little gain. (Our layers are narrow, 64 to 512
# channels, so a rank that is a few percent of a 4096-wide LLM layer is a large fraction of
# ours: the byte overhead is the number to compare.)
#
# ## 7. Quality at each bit width, and quality per byte
#
# Every variant of this notebook in one picture: CharGPT's validation loss against the
# bytes its weights take when stored as integers (`ml.quant.quantized_bytes`: `b` bits per
# weight plus a 32-bit scale per row or group, and float tensors at their size).

# %%
ml.show(ml.quant.quantized_bytes)

# %%
points = [{"name": "fp32", "MB": ml.quant.quantized_bytes(gpt) / 1e6, "val loss": fp32["CharGPT"]}]
for r in w_table.rows[1:]:
    points.append({"name": f"RTN {r['weights'].replace('per channel', '').replace('g<=', 'g')}".strip(), "MB": r["CharGPT MB"],
                   "val loss": r["CharGPT"]})
for r in gptq_table.rows:
    if r["model"] == "CharGPT":
        points.append({"name": f"GPTQ {r['weights'].replace('per channel', '')}".strip(), "MB": r["MB"], "val loss": r["GPTQ"]})
for r in lorc_table.rows:
    if r["model"] == "CharGPT" and r["rank"] > 0 and r["rank"] in (ranks[1], ranks[-1]):
        points.append({"name": f"{r['base']}+r{r['rank']}", "MB": r["MB"], "val loss": r["quality"]})
front = ml.plot.pareto_front(points, x="MB", y="val loss", y_higher_is_better=False)
on_front = {p["name"] for p in front}
for p in points:  # label only the front, to keep the plot readable
    p["label"] = p["name"] if p["name"] in on_front else None
ml.plot.pareto(points, x="MB", y="val loss", label="label", y_higher_is_better=False, logx=True,
               title=f"CharGPT: validation loss vs weight bytes ({ml.scale()} scale)")
plt.show()
ml.glue("pareto_front", ", ".join(p["name"] for p in front))
print("on the front:", ", ".join(p["name"] for p in front))

# %% [markdown]
# On the Pareto front: {glue:}`pareto_front`. The summary of the measured quality at each
# bit width (round to nearest, per channel unless a group is named; W8A8 with min/max
# calibration):

# %%
summary = [{"config": "float32", **fp32},
           {"config": "W8A8 (min/max)", **{n: cal[("A8", "minmax")][n] for n in MODELS}},
           {"config": "W8A8 (MSE)", **{n: cal[("A8", "mse")][n] for n in MODELS}}]
for r in w_table.rows[1:]:
    summary.append({"config": r["weights"].replace(" ", "A16 ", 1), **{n: r[n] for n in MODELS}})
for r in gptq_table.rows:
    if r["weights"].startswith(("W3 per", "W2")):
        config = r["weights"].replace(" ", "A16 ", 1) + ", GPTQ"
        row = next((s for s in summary if s["config"] == config), None)
        if row is None:
            row = {"config": config}
            summary.append(row)
        row[r["model"]] = r["GPTQ"]
ml.bench.Table(summary, title=f"quality at each bit width ({ml.scale()} scale): accuracy % (CIFAR-10) / val loss (CharGPT)",
               formats={"ResNet-9": "{:.2f}", "ViT": "{:.2f}", "CharGPT": "{:.3f}"})

# %% [markdown]
# ## Claimed vs measured
#
# The claims are the papers', on models with billions of parameters; ours are measured on
# chapter 1's small models at the scale in the banner, so they test the mechanism, not the
# numbers.
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`dettmers2022llmint8` | transformers develop large-magnitude outlier features in a few fixed dimensions; from about 6.7B parameters on they break regular int8 quantization | largest outlier ratio {glue:}`worst_ratio` ({glue:}`worst_layer`), {glue:}`ln_fed_ratio` at most after a LayerNorm; W8A8 per tensor changes ViT accuracy by {glue:}`vit_w8a8_delta` points and CharGPT's loss by {glue:}`gpt_w8a8_rise` nats: our models are far below the scale where outliers break int8 |
# | {cite}`xiao2023smoothquant` | migrating the difficulty from activations to weights gives W8A8 with negligible loss (up to 1.56x speed-up and 2x memory reduction) | W8A8 ViT per tensor {glue:}`vit_a8_tensor`%, smoothed {glue:}`vit_a8_smooth`% (W8A6: {glue:}`vit_a6_tensor`%, {glue:}`vit_a6_smooth`%): no outliers to migrate after our LayerNorms; on the worst layer, output error at A4 {glue:}`layer_err_tensor_a4` per tensor, {glue:}`layer_err_smooth_a4` smoothed |
# | {cite}`frantar2023gptq` | 3 or 4 bits per weight with negligible degradation where RTN collapses (175B parameters in about four GPU hours) | 3-bit per channel: ViT RTN {glue:}`vit_w3_rtn`% vs GPTQ {glue:}`vit_w3_gptq`%; CharGPT {glue:}`gpt_w3_rtn` vs {glue:}`gpt_w3_gptq` nats |
# | {cite}`yao2023zeroquantv2` | no PTQ method reaches the original quality at INT4 weights; LoRC's low-rank matrices improve quality with a minimal increase in model size | rank {glue:}`lorc_rank` on 3-bit RTN: CharGPT {glue:}`gpt_lorc0` → {glue:}`gpt_lorc` nats (+{glue:}`gpt_lorc_extra`% bytes); ViT {glue:}`vit_lorc0`% → {glue:}`vit_lorc`% (within noise); no gain on top of GPTQ here |
# | {cite}`lee2023flexround` | learning the rounding (a grid size shared by the layer and a per-weight division factor, fitted by block-wise reconstruction) beats rounding to nearest, and quantizes LLMs with negligible loss | not reproduced; GPTQ above is the closed-form relative of learned rounding |
# | {cite}`tan2024mobilequant` | joint optimization of weight-equivalent transformations and activation ranges makes W8A8 (and W4A8) integer-only LLMs near-lossless on phone NPUs, with 20-50% lower latency and energy than current on-device schemes | the same ingredients at small scale: SmoothQuant's equivalent transformation and calibrated static activation ranges |
# | {cite}`ryu2025dgq` | text-to-image diffusion models have activation outliers (pixel- and channel-wise) and distinctive cross-attention scores; grouping outliers and prompt-specific log scales give low-bit quantization without fine-tuning | the per-channel outlier analysis of section 4 is the first step of that method |
# | {cite}`ranjan2024lrpqvit` | allocating bits per layer by their relevance (layer-wise relevance propagation), with clipped channel-wise quantization of post-LayerNorm activations, gives fixed- and mixed-bit PTQ of ViTs that surpasses earlier methods at 4 and 6 bits | not reproduced; our outlier table shows the post-LayerNorm inputs it targets |
# | {cite}`wang2024qvlm` | choosing block boundaries for PTQ of vision-language models by activation entropy (cross-layer dependency) gives about 2.78x memory compression and 1.44x faster generation on 13B LLaVA without loss | not reproduced (no VLM here) |
# | {cite}`sung2025rsq` | weighting tokens by importance (attention) in GPTQ's Hessian, after a rotation against outliers, beats uniform-token layer-wise quantization | our `input_stats` Hessian weights every token equally: the baseline RSQ improves on |
# | {cite}`sassoon2025isegmenter` | a fully integer-only ViT segmenter stays within 5.1% of its float baseline on average, with up to 3.8x smaller models and 1.2x faster inference | our models are fake-quantized, not integer-only: the integer GEMM is timed in notebook 5.3 |
#
# ## Exercises
#
# 1. Calibrate CharGPT at W8A4 with the "percentile" rule at 99.9, 99.99 and 99.999. Which
#    percentile is best, and how does it compare with "mse"?
# 2. Sweep SmoothQuant's $\alpha \in \{0, 0.25, 0.5, 0.75, 1\}$ for CharGPT at W8A4. Which
#    $\alpha$ is best here, and what limits $\alpha$ in a large LLM?
# 3. GPTQ's quality depends on the calibration data. Re-run `gptq_model` for CharGPT at 3
#    bits with a single calibration batch, and with calibration text drawn from the
#    *validation* split. What do you conclude?
#
# :::{dropdown} Solution 1
# ```python
# for p in (99.9, 99.99, 99.999):
#     q = ml.quant.quantize_model(gpt, w_bits=8, a_bits=4, skip=("head",), a_symmetric=False)
#     print(p, quality("CharGPT", ml.quant.calibrate(q, text_calib, "percentile", percentile=p)))
# ```
# In our runs the most aggressive clipping (99.9) did best, better than the MSE rule, and
# 99.999 was nearly as bad as min/max. The MSE rule minimizes each layer's input error,
# which is not the same as the model's loss: clipping rare large activations costs the
# loss less than their squared error suggests. Per-layer percentiles, or a search on the
# loss itself, do better still.
# :::
#
# :::{dropdown} Solution 2
# ```python
# for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
#     s = ml.quant.smooth_quant_model(gpt, text_calib, alpha=alpha)
#     q = ml.quant.quantize_model(s, w_bits=8, a_bits=4, skip=("head",), a_symmetric=False)
#     print(alpha, quality("CharGPT", ml.quant.calibrate(q, text_calib)))
# ```
# At $\alpha = 1$ the scales are $s_c = \max|X_c|$: every activation channel is normalized
# to $[-1, 1]$ and its whole range moves into the weights. In our runs the loss kept
# improving up to $\alpha = 1$: these weights are small and smooth, and their 8-bit
# per-channel grids absorb the extra range easily. In an LLM the weights have outliers of
# their own, and moving everything into them breaks *their* quantization: SmoothQuant
# finds the best $\alpha$ around 0.5 for most models, larger for some.
# :::
#
# :::{dropdown} Solution 3
# In our runs neither mattered: one batch of 32 windows (2,048 tokens, more than the
# widest layer's 512 inputs, so $H$ is well conditioned) gave practically the same loss
# as four, and validation text the same as training text. GPTQ needs *representative*
# data and enough tokens to estimate $H$, not the test data itself; with too few tokens
# (fewer than the layer's inputs) $H$ becomes singular and the dampening takes over.
# :::
#
# ## Key takeaways
#
# - W8A8 with per-channel weights and calibrated per-tensor activations is nearly free on
#   these models; the calibration rule matters little at 8 bits and a lot at 4.
# - Weight-only quantization holds to 4 bits per channel; groups move the cliff down by
#   about a bit; below that, smarter rounding (GPTQ) or a low-rank correction (LoRC) buys
#   back quality at the same or slightly more bytes.
# - Activation outliers live in fixed channels; per-token scales do not remove them,
#   per-channel scales would but cannot run in an integer GEMM, and SmoothQuant's
#   equivalent transformation moves them into the weights for free.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
