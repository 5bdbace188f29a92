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
#    quantization, and judge what SmoothQuant's migration buys where they sit;
# 4. run GPTQ on a whole model and low-rank compensation, and compare them with
#    round-to-nearest at the same storage, deciding each comparison by a paired test on
#    the same test samples rather than by the ranking of two numbers.

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
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

import minilib as ml

ml.describe()
ml.plot.style()
dev = ml.device()
PRECISION = "fp32" + (" (IEEE, TF32 off)" if dev.type == "cuda" else "") + f" on {dev.type}"

# %% [markdown]
# ## 5.2.1 The models, the test data and the calibration data
#
# We load the three trained baselines of chapter 1 (from the cache). Calibration uses a
# few hundred **training** images or text windows (the test data stays unseen), and
# quality is measured on the same test data for every variant: top-1 accuracy on the
# CIFAR-10 test set (without test-time augmentation) for the image models, and the loss
# in nats per character on fixed random windows of the validation text for CharGPT.
# Every quantized model is simulated (fake-quantized) and evaluated in fp32, so what we
# measure is the number format, not a kernel. Following common practice the first layer
# and the classifier stay in float (they are small and the most sensitive), and so do
# CharGPT's embeddings (its output head *is* the token embedding).

# %%
cnn, _ = ml.baselines.cifar_cnn()
vit, _ = ml.baselines.cifar_vit()
gpt, _ = ml.baselines.char_gpt()

# A dry run keeps the gpu-scale models but cuts every data set to a batch or two of a few samples.
norm = dict(mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD, device=dev)
n_test = ml.pick(smoke=500, cpu=10_000, gpu=10_000)
test_x, test_y = ml.data.subset(*ml.data.cifar10(train=False), n_test, seed=0)
calib_x, calib_y = ml.data.subset(*ml.data.cifar10(train=True), ml.pick(smoke=128, cpu=512, gpu=1024), seed=1)
image_test = ml.trim(list(ml.data.DeviceLoader(test_x, test_y, ml.trim(1000, keep=50), shuffle=False, **norm)), keep=1)
image_calib = ml.trim(list(ml.data.DeviceLoader(calib_x, calib_y, ml.trim(128, keep=16), shuffle=False, **norm)))

corpus = ml.data.shakespeare()
T = gpt.block_size
windows = ml.trim(32, keep=4)
text_test = ml.trim(list(ml.data.TokenBatches(corpus.val_ids, T, windows, steps=ml.pick(smoke=4, cpu=25, gpu=20),
                                              device=dev, generator=torch.Generator().manual_seed(1234))), keep=1)
text_calib = ml.trim(list(ml.data.TokenBatches(corpus.train_ids, T, windows, steps=ml.pick(smoke=1, cpu=8, gpu=8),
                                               device=dev, generator=torch.Generator().manual_seed(0))))

MODELS = {  # name: (float model, test batches, calibration batches, layers kept in float)
    "ResNet-9": (cnn, image_test, image_calib, ("prep", "fc")),
    "ViT": (vit, image_test, image_calib, ("patch_embed", "head")),
    "CharGPT": (gpt, text_test, text_calib, ("head",)),
}


@torch.no_grad()
def per_sample(name, model):
    """Quality of `model` per test sample, in fp32: correct or not per image (bool), or
    the mean loss per text window (nats/char) for CharGPT."""
    model.eval()
    out = []
    for x, y in MODELS[name][1]:
        logits = model(x).float()
        if name == "CharGPT":
            out.append(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1))
        else:
            out.append(logits.argmax(-1) == y)
    return torch.cat(out).cpu()  # one transfer per evaluation


def quality(name, per):
    """Accuracy in % (image models) or mean loss in nats/char (CharGPT) of per-sample results."""
    return per.float().mean().item() * (1 if name == "CharGPT" else 100)


def spread(name, per):
    """Standard error of quality(name, per): binomial for an accuracy, over windows for a loss."""
    if name == "CharGPT":
        return per.std().item() / math.sqrt(len(per))
    return 100 * ml.bench.accuracy_se(per.float().mean().item(), len(per))


def paired(name, per_a, per_b):
    """B against A on the same test samples: (B - A in the model's unit, its paired standard
    error, the verdict on B). Images: accuracy points, se from the images only one model gets
    right; CharGPT: loss in nats, se of the per-window differences (lower loss is better)."""
    if name == "CharGPT":
        change, se = ml.bench.paired_difference(per_a, per_b)
        return change, se, ml.bench.quality_verdict(-change, se)
    change, se, _ = ml.bench.paired_accuracy(per_a, per_b)
    return change, se, ml.bench.quality_verdict(change, se)


UNIT = {"ResNet-9": ("points", ".2f"), "ViT": ("points", ".2f"), "CharGPT": ("nats", ".3f")}
fmt_q = lambda name, v: format(v, UNIT[name][1])
fmt_change = lambda name, c, se: f"{c:+{UNIT[name][1]}} ± {se:{UNIT[name][1]}} {UNIT[name][0]}"


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


fp32 = {name: per_sample(name, m[0]) for name, m in MODELS.items()}
ml.bench.Table([{"model": n, "quality": f"{fmt_q(n, quality(n, per))} ± {fmt_q(n, spread(n, per))} "
                                        + ("% accuracy" if n != "CharGPT" else "nats (val loss)"),
                 "test samples": f"{len(per):,} " + ("images" if n != "CharGPT" else f"windows of {T} characters"),
                 "params": ml.bench.count_params(MODELS[n][0]),
                 "float32 bytes": ml.bench.fmt_bytes(ml.bench.model_bytes(MODELS[n][0]))}
                for n, per in fp32.items()], title=f"float32 references ({ml.scale()} scale; quality ± standard error; {PRECISION})")

# %% [markdown]
# The standard errors say how far an accuracy or a loss would move on another test set of
# the same size. Two models evaluated on *the same* samples are compared more sharply: only
# the samples on which they differ carry information. For the image models, with $b$ test
# images only A gets right and $c$ only B, B's change is $(c - b)/n$ with paired standard
# error $\sqrt{b + c - (c-b)^2/n}\,/\,n$ (McNemar's test asks the same question exactly);
# for CharGPT the change is the mean of the per-window loss differences, with their
# standard error. A change is called better or worse only when it is more than two
# standard errors from zero (`ml.bench.quality_verdict`); otherwise there is no measurable
# difference, and the text says so.
#
# ## 5.2.2 W8A8 and calibration
#
# To run a layer in integer arithmetic both its inputs and its weights must be integers:
# **W8A8**. Weights are known in advance, so their scales come from the weights themselves
# (per output channel, notebook 5.1). Activations are only known at run time; *static*
# quantization fixes their per-tensor range in advance from calibration data, so the
# deployed model needs no range computation. `ml.quant.quantize_model` swaps every
# `nn.Linear` and `nn.Conv2d` for a `QuantLinear` / `QuantConv2d` that fake-quantizes its
# weight and input:

# %%
ml.show(ml.quant.QuantLinear.forward)

# %% [markdown]
# `ml.quant.calibrate` runs the model on the calibration batches with a forward hook on
# every quantized layer, keeps a random sample of each layer's inputs, and sets the
# layer's activation range with one of notebook 5.1's three rules (`choose_range`:
# min/max, the 99.99th percentile, or the MSE-optimal clip).

# %%
results = {}  # (model, variant) -> per-sample results, reused by later sections
rows = []
for a_bits in (8, 4):
    for method in ml.pick(smoke=("minmax", "mse"), cpu=ml.quant.CALIBRATION_METHODS, gpu=ml.quant.CALIBRATION_METHODS):
        row = {"activations": f"A{a_bits} per tensor", "calibration": method}
        for name in MODELS:
            results[(name, f"W8A{a_bits} {method}")] = per = per_sample(name, ptq(name, 8, a_bits, method=method))
            row[name] = quality(name, per)
        rows.append(row)
calib_rows = rows
ml.bench.Table([{"activations": "float32", "calibration": "-", **{n: quality(n, p) for n, p in fp32.items()}}] + rows,
               title=f"W8 weights (per channel) with static activations ({PRECISION})",
               headers={"ResNet-9": "ResNet-9 acc. (%)", "ViT": "ViT acc. (%)", "CharGPT": "CharGPT loss (nats)"},
               formats={"ResNet-9": "{:.2f}", "ViT": "{:.2f}", "CharGPT": "{:.3f}"})

# %% tags=["remove-cell"]
for name, key in (("ResNet-9", "cnn"), ("ViT", "vit"), ("CharGPT", "gpt")):
    change, se, word = paired(name, fp32[name], results[(name, "W8A8 minmax")])
    ml.glue(f"{key}_w8a8_change", fmt_change(name, change, se))
    ml.glue(f"{key}_w8a8_verdict", word)
    ml.glue(f"{key}_a4_minmax", fmt_q(name, quality(name, results[(name, "W8A4 minmax")])))
    ml.glue(f"{key}_a4_mse", fmt_q(name, quality(name, results[(name, "W8A4 mse")])))
    ml.glue(f"{key}_fp32", fmt_q(name, quality(name, fp32[name])))
    ml.glue(f"{key}_se", fmt_q(name, spread(name, fp32[name])))
    change, se, word = paired(name, results[(name, "W8A4 minmax")], results[(name, "W8A4 mse")])
    ml.glue(f"{key}_a4_mse_change", fmt_change(name, change, se))
    ml.glue(f"{key}_a4_mse_verdict", word)
if ("CharGPT", "W8A4 percentile") in results:
    ml.glue("gpt_a4_percentile", fmt_q("CharGPT", quality("CharGPT", results[("CharGPT", "W8A4 percentile")])))
else:
    ml.glue("gpt_a4_percentile", "n/a (not run at this scale)")
ml.glue("n_test", f"{len(fp32['ResNet-9']):,}")

# %% [markdown]
# At 8 bits with min/max ranges, W8A8 changes the accuracy of ResNet-9 by
# {glue:}`cnn_w8a8_change` ({glue:}`cnn_w8a8_verdict` against float32, on
# {glue:}`n_test` test images) and of the ViT by {glue:}`vit_w8a8_change`
# ({glue:}`vit_w8a8_verdict`), and CharGPT's loss by {glue:}`gpt_w8a8_change`
# ({glue:}`gpt_w8a8_verdict`). With 4-bit activations, ResNet-9 reaches
# {glue:}`cnn_a4_minmax`% with min/max ranges and {glue:}`cnn_a4_mse`% with the MSE rule
# (float32: {glue:}`cnn_fp32`%), the ViT {glue:}`vit_a4_minmax`% and {glue:}`vit_a4_mse`%
# (float32: {glue:}`vit_fp32`%), and CharGPT goes from {glue:}`gpt_fp32` to
# {glue:}`gpt_a4_minmax` nats with min/max ranges, {glue:}`gpt_a4_percentile` with the
# 99.99th percentile and {glue:}`gpt_a4_mse` with the MSE rule. The MSE rule against
# min/max at A4, paired on the same samples: ResNet-9 {glue:}`cnn_a4_mse_change`
# ({glue:}`cnn_a4_mse_verdict`), ViT {glue:}`vit_a4_mse_change`
# ({glue:}`vit_a4_mse_verdict`), CharGPT {glue:}`gpt_a4_mse_change`
# ({glue:}`gpt_a4_mse_verdict`). As in notebook 5.1, the clipping range matters when the
# grid is coarse; and minimizing each layer's input error is not the same as minimizing
# the model's loss, so no rule wins by construction.
#
# ## 5.2.3 Weight-only quantization and the cliff
#
# For memory-bound inference (generating one token at a time) the cost is reading the
# weights, and activations can stay in 16-bit floats: **weight-only** quantization, W8A16
# or W4A16. Here weights go down from 8 to 2 bits, per output channel or per group of $g$
# input weights. (Our symmetric grids use $2^b - 1$ levels: 2 bits means the three values
# $\{-s, 0, s\}$.)

# %%
weight_configs = [(8, None), (4, None), (4, 32), (3, None), (3, 32), (2, None), (2, 32)]
rows = []
for bits, target in weight_configs:
    label = f"W{bits} " + ("per channel" if target is None else f"g<={target}")
    row = {"weights": label}
    for name, (model, *_) in MODELS.items():
        g = None if target is None else group_size(name, target)
        q = ptq(name, bits, group=g)
        results[(name, label)] = per = per_sample(name, q)
        row[name] = quality(name, per)
        row[f"{name} g"] = g or "-"
        row[f"{name} MB"] = ml.quant.quantized_bytes(q) / 1e6
    rows.append(row)
w_rows = rows
wq = {r["weights"]: r for r in rows}
ml.bench.Table([{"weights": "float32", **{n: quality(n, p) for n, p in fp32.items()}}] + rows,
               columns=["weights", "ResNet-9", "ResNet-9 g", "ViT", "ViT g", "CharGPT", "CharGPT g"],
               title=f"weight-only PTQ, round to nearest; g: each model's group size ({PRECISION})",
               headers={"ResNet-9": "ResNet-9 acc. (%)", "ViT": "ViT acc. (%)", "CharGPT": "CharGPT loss (nats)"},
               formats={"ResNet-9": "{:.2f}", "ViT": "{:.2f}", "CharGPT": "{:.3f}"})

# %% tags=["remove-cell"]
for name, key in (("ResNet-9", "cnn"), ("ViT", "vit"), ("CharGPT", "gpt")):
    for label, tag in (("W4 per channel", "w4"), ("W3 per channel", "w3"), ("W2 per channel", "w2"),
                       ("W3 g<=32", "w3g"), ("W2 g<=32", "w2g")):
        ml.glue(f"{key}_{tag}", fmt_q(name, wq[label][name]))
    change, se, word = paired(name, fp32[name], results[(name, "W4 per channel")])
    ml.glue(f"{key}_w4_change", fmt_change(name, change, se))
    ml.glue(f"{key}_w4_verdict", word)
    change, se, word = paired(name, results[(name, "W3 per channel")], results[(name, "W3 g<=32")])
    ml.glue(f"{key}_w3g_change", fmt_change(name, change, se))
    ml.glue(f"{key}_w3g_verdict", word)

# %% [markdown]
# Weight-only quantization to 4 bits per channel changes ResNet-9 by
# {glue:}`cnn_w4_change` ({glue:}`cnn_w4_verdict` against float32), the ViT by
# {glue:}`vit_w4_change` ({glue:}`vit_w4_verdict`) and CharGPT by {glue:}`gpt_w4_change`
# ({glue:}`gpt_w4_verdict`). Then comes the cliff: at 3 bits per channel
# {glue:}`cnn_w3`% / {glue:}`vit_w3`% / {glue:}`gpt_w3` nats, at 2 bits {glue:}`cnn_w2`% /
# {glue:}`vit_w2`% / {glue:}`gpt_w2` nats (10% is chance on CIFAR-10; a uniform guess over
# 65 characters has a loss of $\ln 65 = 4.17$ nats). Groups soften the cliff: with groups
# of at most 32 (the `g` columns give each model's group size), 3 bits give
# {glue:}`cnn_w3g`% / {glue:}`vit_w3g`% / {glue:}`gpt_w3g` nats, against 3 bits per
# channel a change of {glue:}`cnn_w3g_change` ({glue:}`cnn_w3g_verdict`),
# {glue:}`vit_w3g_change` ({glue:}`vit_w3g_verdict`) and {glue:}`gpt_w3g_change`
# ({glue:}`gpt_w3g_verdict`); 2 bits in groups give {glue:}`cnn_w2g`% / {glue:}`vit_w2g`%
# / {glue:}`gpt_w2g` nats.
#
# ## 5.2.4 Outliers in transformer activations
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
                               headers={"median channel max": "median of channel max |x|"},
                               formats={"max |x|": "{:.2f}", "median channel max": "{:.2f}", "outlier ratio": "{:.1f}"})
worst = max(rows, key=lambda r: r["outlier ratio"])
ln_fed = [r for r in rows if r["layer"].endswith(("attn.qkv", "mlp.fc"))]
outlier_table

# %% tags=["remove-cell"]
ml.glue("worst_layer", f"{worst['model']} {worst['layer']}")
ml.glue("worst_ratio", worst["outlier ratio"], ".1f")
ml.glue("ln_fed_ratio", max(r["outlier ratio"] for r in ln_fed), ".1f")
ml.glue("n_top_after_gelu", sum(r["layer"].endswith("mlp.proj") for r in outlier_table.rows))
ml.glue("n_top", len(outlier_table.rows))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for ax, name in zip(axes, ("ViT", "CharGPT")):
    layer = max(stats[name], key=lambda n: (stats[name][n]["absmax"].max() / stats[name][n]["absmax"].median()).item())
    a = stats[name][layer]["absmax"].cpu()
    ax.bar(range(a.numel()), a, width=1.0, color="C0")
    ax.axhline(a.median(), color="C3", linestyle="--", label="median channel")
    ax.set(title=f"{name} {layer}", xlabel="input channel", ylabel="max |x| over calibration data")
    ax.legend()
plt.show()

# %% [markdown]
# The worst layer, {glue:}`worst_layer`, has a channel {glue:}`worst_ratio` times larger
# than the median channel, and {glue:}`n_top_after_gelu` of the {glue:}`n_top` worst
# inputs are those of the second MLP layer (`mlp.proj`), after the GELU. The inputs that
# LayerNorm feeds (`attn.qkv`, `mlp.fc`), where LLM.int8 and SmoothQuant find the
# outliers of large models, have a largest ratio of {glue:}`ln_fed_ratio`. Now take the
# worst layer and quantize its input $X$ ($N$ tokens by $C$ channels) and its weight $W$,
# and measure the error of the output $XW^\top$ for four ways to pick the activation
# scales:
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
layer_rows = rows
ml.bench.Table(rows, title=f"{name} {layer_name}: relative output error of X W^T (W8 per channel)",
               formats={c: "{:.2%}" for c in rows[0] if c != "activation bits"})

# %% tags=["remove-cell"]
ml.glue("layer_err_tensor_a8", layer_rows[0]["per tensor"], ".2%")
ml.glue("layer_err_smooth_a8", layer_rows[0]["SmoothQuant + per tensor"], ".2%")
ml.glue("layer_err_tensor_a4", layer_rows[2]["per tensor"], ".1%")
ml.glue("layer_err_smooth_a4", layer_rows[2]["SmoothQuant + per tensor"], ".1%")
ml.glue("layer_err_channel_a4", layer_rows[2]["per channel (no int GEMM)"], ".1%")
ml.glue("layer_err_token_a4", layer_rows[2]["per token"], ".1%")
ml.glue("layer_smooth_factor_a4", layer_rows[2]["per tensor"] / layer_rows[2]["SmoothQuant + per tensor"], ".1f")

# %% [markdown]
# On this layer per-tensor A8 gives a relative output error of {glue:}`layer_err_tensor_a8`
# and SmoothQuant {glue:}`layer_err_smooth_a8`; at 4 bits {glue:}`layer_err_tensor_a4`
# against {glue:}`layer_err_smooth_a4`, {glue:}`layer_smooth_factor_a4` times less (per
# channel, the unattainable ideal: {glue:}`layer_err_channel_a4`). Migration moves part of
# the benefit of per-channel scales into a form an integer GEMM can run. Dynamic per-token
# scales, which an int8 GEMM can also apply, reach {glue:}`layer_err_token_a4` at 4 bits on
# this layer: compare it with the per-channel column to see whether its inputs vary more
# from token to token or from channel to channel.
#
# On a whole model, `ml.quant.smooth_quant_model` folds the factors into each block's
# LayerNorms, those in front of `qkv` and `fc` (divide the norm's gain and bias by $s$),
# and into those layers' weights (multiply their columns by $s$), so smoothing costs
# nothing at inference. It leaves `mlp.proj` alone: between the GELU and that layer no
# normalization can absorb $1/s$, and smoothing it would cost an extra multiplication at
# run time.

# %%
rows = []
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    smoothed = ml.quant.smooth_quant_model(model, calib, alpha=0.5)
    per_s = per_sample(name, smoothed)
    change, se, word = paired(name, fp32[name], per_s)
    rows.append({"model": name, "weights / activations": "float32 (smoothed: same function)",
                 "per tensor": quality(name, fp32[name]), "SmoothQuant": quality(name, per_s),
                 "change": fmt_change(name, change, se), "verdict": word})
    for a_bits in (8, 6, 4):
        key = (name, f"W8A{a_bits} minmax")
        if key not in results:  # A6 is new here; A8 and A4 were measured in section 5.2.2
            results[key] = per_sample(name, ptq(name, 8, a_bits))
        q = ml.quant.quantize_model(smoothed, w_bits=8, a_bits=a_bits, skip=skip, a_symmetric=False)
        results[(name, f"W8A{a_bits} smooth")] = per = per_sample(name, ml.quant.calibrate(q, calib, samples_per_batch=SAMPLES))
        change, se, word = paired(name, results[key], per)
        rows.append({"model": name, "weights / activations": f"W8A{a_bits}", "per tensor": quality(name, results[key]),
                     "SmoothQuant": quality(name, per), "change": fmt_change(name, change, se), "verdict": word})
smooth_rows = rows
ml.bench.Table(rows, title=f"static per-tensor activations (min/max), without and with SmoothQuant (alpha=0.5); "
                           f"change: SmoothQuant - per tensor ± paired se ({PRECISION})",
               headers={"per tensor": "per tensor (acc. % / nats)", "SmoothQuant": "SmoothQuant (acc. % / nats)"},
               formats={"per tensor": "{:.3f}", "SmoothQuant": "{:.3f}"})

# %% tags=["remove-cell"]
sm = {(r["model"], r["weights / activations"][:5]): r for r in smooth_rows}
for name, key in (("ViT", "vit"), ("CharGPT", "gpt")):
    for a in (8, 6, 4):
        r = sm[(name, f"W8A{a}")]
        ml.glue(f"{key}_a{a}_tensor", fmt_q(name, r["per tensor"]))
        ml.glue(f"{key}_a{a}_smooth", fmt_q(name, r["SmoothQuant"]))
        ml.glue(f"{key}_a{a}_smooth_verdict", r["verdict"])
    fp_row = next(r for r in smooth_rows if r["model"] == name and r["weights / activations"].startswith("float32"))
    ml.glue(f"{key}_smooth_fp_change", fp_row["change"])
    ml.glue(f"{key}_smooth_fp_verdict", fp_row["verdict"])
quantized = [r for r in smooth_rows if r["weights / activations"].startswith("W8")]
count = lambda word: sum(r["verdict"] == word for r in quantized)
ml.glue("smooth_cases", len(quantized))
ml.glue("smooth_better", count("better"))
ml.glue("smooth_worse", count("worse"))
ml.glue("smooth_same", count("no measurable difference"))

# %% [markdown]
# Folded into the LayerNorms, smoothing leaves the float models as they were: the smoothed
# ViT changes by {glue:}`vit_smooth_fp_change` ({glue:}`vit_smooth_fp_verdict`), CharGPT by
# {glue:}`gpt_smooth_fp_change` ({glue:}`gpt_smooth_fp_verdict`). Quantized, SmoothQuant
# against per-tensor activations is better in {glue:}`smooth_better` of the
# {glue:}`smooth_cases` cases, worse in {glue:}`smooth_worse` and not measurably different
# in {glue:}`smooth_same`. At W8A8 the ViT scores {glue:}`vit_a8_tensor`% per tensor and
# {glue:}`vit_a8_smooth`% smoothed ({glue:}`vit_a8_smooth_verdict`), CharGPT
# {glue:}`gpt_a8_tensor` and {glue:}`gpt_a8_smooth` nats
# ({glue:}`gpt_a8_smooth_verdict`); at W8A4 the ViT {glue:}`vit_a4_tensor`% and
# {glue:}`vit_a4_smooth`% ({glue:}`vit_a4_smooth_verdict`), CharGPT
# {glue:}`gpt_a4_tensor` and {glue:}`gpt_a4_smooth` nats ({glue:}`gpt_a4_smooth_verdict`).
# The outlier table says where that comes from: SmoothQuant can only reach the
# LayerNorm-fed inputs, whose largest outlier ratio is {glue:}`ln_fed_ratio`, while the
# worst outliers ({glue:}`worst_ratio` times the median channel) sit after the GELU, where
# migration would cut the 4-bit output error {glue:}`layer_smooth_factor_a4` times (the
# layer experiment above) but cannot be folded away. So smoothing is free at inference,
# and what it buys depends on where a model's outliers are. Our models are four to five
# orders of magnitude smaller than the 6.7B parameters at which LLM.int8 saw outliers
# emerge in front of the attention and MLP inputs.
#
# ## 5.2.5 GPTQ: rounding that corrects its own errors
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
# step is a rank-one update:

# %%
ml.show(ml.quant.gptq_quantize)

# %% [markdown]
# `ml.quant.gptq_model` applies it to a whole model, layer by layer in forward order: it
# computes each layer's $H$ from that layer's inputs in the *partly quantized* model
# (`ml.quant.input_stats(..., hessian=True)`), so later layers also correct what earlier
# ones got wrong. The result is an ordinary fake-quantized model whose weights lie on the
# same grid (same bits, same per-row or per-group scales) as round-to-nearest: the same
# bytes, different codes.

# %%
GPTQ_BATCHES = ml.pick(smoke=1, cpu=4, gpu=4)  # calibration batches per layer
gptq_configs = ml.pick(smoke=[(3, None), (2, 32)], cpu=[(3, None), (3, 32), (2, 32)], gpu=[(3, None), (2, 32)])
rows, gptq_models = [], {}
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    for bits, target in gptq_configs:
        g = None if target is None else group_size(name, target)
        label = f"W{bits} " + ("per channel" if target is None else f"g<={target}")
        gq = ml.quant.gptq_model(model, calib, bits, group_size=g, skip=skip, max_batches=GPTQ_BATCHES)
        gptq_models[(name, bits, target)] = gq
        results[(name, f"GPTQ {label}")] = per = per_sample(name, gq)
        rtn = results[(name, label)]  # the same grid, round to nearest (section 5.2.3)
        change, se, word = paired(name, rtn, per)
        if name != "CharGPT":
            word += f" (McNemar p = {ml.bench.mcnemar(rtn, per):.2g})"
        rows.append({"model": name, "weights": f"W{bits} " + ("per channel" if g is None else f"g{g}"), "label": label,
                     "RTN": quality(name, rtn), "GPTQ": quality(name, per),
                     "GPTQ - RTN": fmt_change(name, change, se), "verdict": word,
                     "MB": ml.quant.quantized_bytes(gq) / 1e6})
gptq_rows = rows
ml.bench.Table(rows, columns=["model", "weights", "RTN", "GPTQ", "GPTQ - RTN", "verdict", "MB"],
               title=f"weight-only: round to nearest vs GPTQ, same grid and bytes; change ± paired se ({PRECISION})",
               headers={"RTN": "RTN (acc. % / nats)", "GPTQ": "GPTQ (acc. % / nats)", "MB": "weights (MB)"},
               formats={"RTN": "{:.3f}", "GPTQ": "{:.3f}", "MB": "{:.3f}"})

# %% tags=["remove-cell"]
gp = {(r["model"], r["label"]): r for r in gptq_rows}
for name, key in (("ViT", "vit"), ("CharGPT", "gpt")):
    r3, r2 = gp[(name, "W3 per channel")], gp[(name, "W2 g<=32")]
    for tag, r in (("w3", r3), ("w2g", r2)):
        ml.glue(f"{key}_{tag}_rtn", fmt_q(name, r["RTN"]))
        ml.glue(f"{key}_{tag}_gptq", fmt_q(name, r["GPTQ"]))
        ml.glue(f"{key}_{tag}_gptq_change", r["GPTQ - RTN"])
        ml.glue(f"{key}_{tag}_gptq_verdict", r["verdict"])
    ml.glue(f"{key}_w2g_label", r2["weights"])

# %% [markdown]
# With the same 3-bit per-channel grid and the same bytes, GPTQ against round-to-nearest
# changes the ViT from {glue:}`vit_w3_rtn`% to {glue:}`vit_w3_gptq`%
# ({glue:}`vit_w3_gptq_change`: {glue:}`vit_w3_gptq_verdict`) and CharGPT's loss from
# {glue:}`gpt_w3_rtn` to {glue:}`gpt_w3_gptq` nats ({glue:}`gpt_w3_gptq_change`:
# {glue:}`gpt_w3_gptq_verdict`). At 2 bits in groups ({glue:}`vit_w2g_label` for the
# ViT, {glue:}`gpt_w2g_label` for CharGPT): the ViT from {glue:}`vit_w2g_rtn`% to
# {glue:}`vit_w2g_gptq`% ({glue:}`vit_w2g_gptq_verdict`), CharGPT from
# {glue:}`gpt_w2g_rtn` to {glue:}`gpt_w2g_gptq` nats ({glue:}`gpt_w2g_gptq_verdict`).
# GPTQ costs one forward pass per layer over the calibration data and a Cholesky
# factorization per layer: seconds here.
#
# ## 5.2.6 LoRC: a low-rank correction of the quantization error
#
# Whatever rounding we use, the error $E = W - \hat W$ remains. ZeroQuant-V2
# {cite}`yao2023zeroquantv2` stores a small correction next to the quantized weight: the
# best rank-$r$ approximation of $E$ from its singular value decomposition,
# $E \approx U_r V_r$ with $U_r = U_{:, :r}\Sigma_r^{1/2}$ and $V_r = \Sigma_r^{1/2}V^\top_{:r}$,
# itself kept in 8 bits. The layer computes $x\hat W^\top + (xV_r^\top)U_r^\top$: two thin
# matmuls, $r(C_\text{in} + C_\text{out})$ extra bytes. `ml.quant.lorc` computes the
# factors, `ml.quant.LoRCLinear` adds them to a quantized layer, and `ml.quant.lorc_model`
# wraps every quantized linear layer of a model.

# %%
ml.show(ml.quant.lorc)

# %%
ml.show(ml.quant.LoRCLinear.forward)

# %%
ranks = ml.trim(ml.pick(smoke=[0, 4], cpu=[0, 8, 32], gpu=[0, 8, 32]))
rows = []
for name in ("ViT", "CharGPT"):
    model, _, calib, skip = MODELS[name]
    for base_label, base, key in (("RTN W3", ptq(name, 3), (name, "W3 per channel")),
                                  ("GPTQ W3", gptq_models[(name, 3, None)], (name, "GPTQ W3 per channel"))):
        for r in ranks:
            q = ml.quant.lorc_model(base, model, r)
            per = results[key] if r == 0 else per_sample(name, q)  # rank 0 is the base model itself
            change, se, word = paired(name, results[key], per)
            rows.append({"model": name, "base": base_label, "rank": r, "quality": quality(name, per),
                         "change vs rank 0": "" if r == 0 else fmt_change(name, change, se),
                         "verdict": "" if r == 0 else word, "MB": ml.quant.quantized_bytes(q) / 1e6})
lorc_rows = rows
ml.bench.Table(rows, title=f"LoRC rank sweep on 3-bit per-channel weights (8-bit factors); change ± paired se ({PRECISION})",
               headers={"quality": "acc. (%) / loss (nats)", "MB": "weights (MB)"},
               formats={"quality": "{:.3f}", "MB": "{:.3f}"})

# %% tags=["remove-cell"]
lo = {(r["model"], r["base"], r["rank"]): r for r in lorc_rows}
r_mid = ranks[len(ranks) // 2]
ml.glue("lorc_rank", r_mid)
ml.glue("lorc_max_rank", ranks[-1])
for name, key in (("ViT", "vit"), ("CharGPT", "gpt")):
    for base, tag in (("RTN W3", "rtn"), ("GPTQ W3", "gptq")):
        ml.glue(f"{key}_lorc_{tag}0", fmt_q(name, lo[(name, base, 0)]["quality"]))
        ml.glue(f"{key}_lorc_{tag}", fmt_q(name, lo[(name, base, r_mid)]["quality"]))
        ml.glue(f"{key}_lorc_{tag}_change", lo[(name, base, r_mid)]["change vs rank 0"])
        ml.glue(f"{key}_lorc_{tag}_verdict", lo[(name, base, r_mid)]["verdict"])
        ml.glue(f"{key}_lorc_{tag}_max", fmt_q(name, lo[(name, base, ranks[-1])]["quality"]))
        ml.glue(f"{key}_lorc_{tag}_max_verdict", lo[(name, base, ranks[-1])]["verdict"])
    ml.glue(f"{key}_lorc_extra", 100 * (lo[(name, "RTN W3", r_mid)]["MB"] / lo[(name, "RTN W3", 0)]["MB"] - 1), ".1f")
    ml.glue(f"{key}_lorc_mb0", lo[(name, "RTN W3", 0)]["MB"], ".3f")
    ml.glue(f"{key}_w3_mb", wq["W3 per channel"][f"{name} MB"], ".3f")

# %% [markdown]
# A rank-{glue:}`lorc_rank` correction on top of 3-bit RTN weights moves CharGPT from
# {glue:}`gpt_lorc_rtn0` to {glue:}`gpt_lorc_rtn` nats ({glue:}`gpt_lorc_rtn_change`:
# {glue:}`gpt_lorc_rtn_verdict`) for {glue:}`gpt_lorc_extra`% more bytes (rank
# {glue:}`lorc_max_rank`: {glue:}`gpt_lorc_rtn_max` nats, {glue:}`gpt_lorc_rtn_max_verdict`;
# float32: {glue:}`gpt_fp32`). On top of GPTQ's 3-bit weights ({glue:}`gpt_lorc_gptq0`) it
# gives {glue:}`gpt_lorc_gptq` ({glue:}`gpt_lorc_gptq_change`:
# {glue:}`gpt_lorc_gptq_verdict`). For the ViT, rank {glue:}`lorc_rank` on RTN moves
# {glue:}`vit_lorc_rtn0`% to {glue:}`vit_lorc_rtn`% ({glue:}`vit_lorc_rtn_verdict`) for
# {glue:}`vit_lorc_extra`% more bytes, and on GPTQ {glue:}`vit_lorc_gptq0`% to
# {glue:}`vit_lorc_gptq`% ({glue:}`vit_lorc_gptq_verdict`). (Rank 0 costs exactly the
# bytes of its base: CharGPT's 3-bit model is {glue:}`gpt_lorc_mb0` MB here and
# {glue:}`gpt_w3_mb` MB in the table of section 5.2.3.) Note what each method minimizes.
# LoRC fits the *weight* error in the Frobenius norm, blind to the inputs; GPTQ minimizes
# the error of the layer's *output* on real inputs, and leaves a weight error that is large
# only in directions the inputs rarely use, where a low-rank fit of the weights then
# spends its rank for little gain. (Our layers are narrow, 64 to 512 channels, so a rank
# that is a few percent of a 4096-wide LLM layer is a large fraction of ours: the byte
# overhead is the number to compare.)
#
# ## 5.2.7 Quality at each bit width, and quality per byte
#
# Every CharGPT variant of this notebook in one picture: the validation loss against the
# bytes its weights take when stored as integers (`ml.quant.quantized_bytes`: $b$ bits per
# weight plus a 32-bit scale per row or group, 8-bit LoRC factors with their scales, and
# float tensors at their size).

# %%
points = [{"name": "fp32", "weights (MB)": ml.quant.quantized_bytes(gpt) / 1e6, "val loss (nats)": quality("CharGPT", fp32["CharGPT"])}]
for r in w_rows:
    points.append({"name": f"RTN {r['weights'].replace(' per channel', '').replace('g<=', 'g')}",
                   "weights (MB)": r["CharGPT MB"], "val loss (nats)": r["CharGPT"]})
for r in gptq_rows:
    if r["model"] == "CharGPT":
        points.append({"name": f"GPTQ {r['weights'].replace(' per channel', '')}",
                       "weights (MB)": r["MB"], "val loss (nats)": r["GPTQ"]})
for r in lorc_rows:
    if r["model"] == "CharGPT" and r["rank"] > 0:
        points.append({"name": f"{r['base']} + rank {r['rank']}", "weights (MB)": r["MB"], "val loss (nats)": r["quality"]})
front = ml.plot.pareto_front(points, x="weights (MB)", y="val loss (nats)", y_higher_is_better=False)
on_front = {p["name"] for p in front}
fig = ml.plot.pareto([{**p, "label": p["name"] if p["name"] in on_front else None} for p in points],
                     x="weights (MB)", y="val loss (nats)", label="label", labels="legend", y_higher_is_better=False,
                     logx=True, title=f"CharGPT: validation loss vs weight bytes ({ml.scale()} scale)")
fig.axes[0].xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))            # plain ticks: 0.02, 0.05, 0.1
fig.axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
fig.axes[0].xaxis.set_minor_formatter(NullFormatter())
plt.show()
print("on the front (legend, smallest first):", ", ".join(p["name"] for p in front))

# %% tags=["remove-cell"]
ml.glue("pareto_front", ", ".join(p["name"] for p in front))

# %% [markdown]
# On the Pareto front: {glue:}`pareto_front`. The summary of the measured quality at each
# bit width (round to nearest, per channel unless a group is named; W8A8 with min/max and
# MSE calibration):

# %%
summary = [{"config": "float32", **{n: quality(n, p) for n, p in fp32.items()}}]
for method in ("minmax", "mse"):
    summary.append({"config": f"W8A8 ({method})", **{n: quality(n, results[(n, f"W8A8 {method}")]) for n in MODELS}})
for r in w_rows:
    summary.append({"config": r["weights"].replace(" ", "A16 ", 1), **{n: r[n] for n in MODELS}})
for r in gptq_rows:
    if r["label"] in ("W3 per channel", "W2 g<=32"):
        config = r["label"].replace(" ", "A16 ", 1) + ", GPTQ"
        row = next((s for s in summary if s["config"] == config), None)
        if row is None:
            row = {"config": config}
            summary.append(row)
        row[r["model"]] = r["GPTQ"]
se_note = ", ".join(f"{n} ± {fmt_q(n, spread(n, p))}" for n, p in fp32.items())
ml.bench.Table(summary, title=f"quality at each bit width ({ml.scale()} scale, {PRECISION}); standard error of one "
                              f"number: {se_note} (paired differences are known more precisely)",
               headers={"ResNet-9": "ResNet-9 acc. (%)", "ViT": "ViT acc. (%)", "CharGPT": "CharGPT loss (nats)"},
               formats={"ResNet-9": "{:.2f}", "ViT": "{:.2f}", "CharGPT": "{:.3f}"})

# %% [markdown]
# ## 5.2.8 Claimed vs measured
#
# The claims are the papers', on models with billions of parameters; ours are measured on
# chapter 1's small models at the scale in the banner, so they test the mechanism, not the
# numbers. Each change is against the matching baseline on the same test samples, ± its
# paired standard error.
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`dettmers2022llmint8` | transformers develop large-magnitude outlier features in a few fixed dimensions; from about 6.7B parameters on they break regular int8 quantization | largest outlier ratio {glue:}`worst_ratio` ({glue:}`worst_layer`), {glue:}`ln_fed_ratio` at most after a LayerNorm; W8A8 per tensor against float32: ViT {glue:}`vit_w8a8_change` ({glue:}`vit_w8a8_verdict`), CharGPT {glue:}`gpt_w8a8_change` ({glue:}`gpt_w8a8_verdict`) |
# | {cite}`xiao2023smoothquant` | migrating the difficulty from activations to weights gives W8A8 with negligible loss where per-tensor W8A8 fails | the smoothed float models are unchanged (ViT {glue:}`vit_smooth_fp_verdict`, CharGPT {glue:}`gpt_smooth_fp_verdict`); quantized, better than per tensor in {glue:}`smooth_better` of {glue:}`smooth_cases` cases (W8A8/A6/A4), worse in {glue:}`smooth_worse`; on the worst (post-GELU, unfoldable) layer, {glue:}`layer_smooth_factor_a4` times less output error at A4 |
# | {cite}`frantar2023gptq` | 3 or 4 bits per weight with negligible degradation where RTN collapses | 3-bit per channel, GPTQ - RTN: ViT {glue:}`vit_w3_gptq_change` ({glue:}`vit_w3_gptq_verdict`), CharGPT {glue:}`gpt_w3_gptq_change` ({glue:}`gpt_w3_gptq_verdict`) |
# | {cite}`yao2023zeroquantv2` | LoRC's low-rank matrices improve quality with a minimal increase in model size | rank {glue:}`lorc_rank` on 3-bit RTN: CharGPT {glue:}`gpt_lorc_rtn_change` ({glue:}`gpt_lorc_rtn_verdict`) for +{glue:}`gpt_lorc_extra`% bytes; ViT {glue:}`vit_lorc_rtn_verdict`; on top of GPTQ: CharGPT {glue:}`gpt_lorc_gptq_verdict`, ViT {glue:}`vit_lorc_gptq_verdict` |
#
# **Further reading** (methods this notebook does not measure):
# - FlexRound {cite}`lee2023flexround` learns the rounding (a grid size shared by the layer
#   and a per-weight division factor, fitted by block-wise reconstruction); GPTQ above is
#   its closed-form relative.
# - MobileQuant {cite}`tan2024mobilequant` optimizes weight-equivalent transformations and
#   activation ranges jointly for integer-only W8A8 and W4A8 LLMs on phone NPUs.
# - DGQ {cite}`ryu2025dgq` quantizes text-to-image diffusion models, whose activation
#   outliers are pixel- and channel-wise, with outlier grouping and prompt-specific log
#   scales.
# - LRP-QViT {cite}`ranjan2024lrpqvit` allocates bits per ViT layer by their relevance and
#   clips post-LayerNorm activations per channel.
# - Q-VLM {cite}`wang2024qvlm` chooses the block boundaries of PTQ for vision-language
#   models by activation entropy.
# - RSQ {cite}`sung2025rsq` weights tokens by importance in GPTQ's Hessian, after a rotation
#   against outliers (our `input_stats` Hessian weights every token equally).
# - I-Segmenter {cite}`sassoon2025isegmenter` is a fully integer-only ViT segmenter; our
#   models are fake-quantized, and notebook 5.3 times the integer kernels.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: which percentile? (measure, easy)
# Calibrate CharGPT at W8A4 with the "percentile" rule at 99.9, 99.99 and 99.999, and with
# "mse". Which rule is best, and is its lead over the others measurable?

# %% tags=["solution", "hide-cell"]
# Solution 1
base = results[("CharGPT", "W8A4 minmax")]
rules = {}
for label, method, kw in ml.trim([("percentile 99.9", "percentile", {"percentile": 99.9}),
                                  ("percentile 99.99", "percentile", {"percentile": 99.99}),
                                  ("percentile 99.999", "percentile", {"percentile": 99.999}),
                                  ("mse", "mse", {})], keep=4):
    q = ml.quant.quantize_model(gpt, w_bits=8, a_bits=4, skip=("head",), a_symmetric=False)
    rules[label] = per_sample("CharGPT", ml.quant.calibrate(q, text_calib, method, samples_per_batch=SAMPLES, **kw))
    change, se, word = paired("CharGPT", base, rules[label])
    print(f"W8A4, {label:17s}: {quality('CharGPT', rules[label]):.3f} nats; against min/max "
          f"{change:+.3f} ± {se:.3f} ({word})")
best, second = sorted(rules, key=lambda k: quality("CharGPT", rules[k]))[:2]
change, se, word = paired("CharGPT", rules[second], rules[best])
print(f"best: {best}; against the runner-up ({second}): {change:+.3f} ± {se:.3f} nats ({word})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The printout ranks the rules and says whether the winner's lead over the runner-up is
# larger than two paired standard errors. Two things decide the ranking. Clipping rare large
# activations shrinks the step for all the others, and a coarse 4-bit grid gains more from
# that than it loses on the few clipped values, so at 4 bits the tighter percentiles and
# the MSE rule beat min/max. And the MSE rule minimizes each layer's *input* error, which
# is not the model's loss: a clipped outlier can cost the loss less (or more) than its
# squared error suggests, so a percentile can beat it on the loss. Per-layer percentiles,
# or a search on the loss itself, would do better still.
# :::

# %% [markdown]
# ### Exercise 2: SmoothQuant's alpha (measure, medium)
# Sweep SmoothQuant's $\alpha \in \{0, 0.25, 0.5, 0.75, 1\}$ for CharGPT at W8A4. Which
# $\alpha$ is best here, and what limits $\alpha$ in a large LLM?

# %% tags=["solution", "hide-cell"]
# Solution 2
base = results[("CharGPT", "W8A4 minmax")]
for alpha in ml.trim([0.0, 0.25, 0.5, 0.75, 1.0]):
    s = ml.quant.smooth_quant_model(gpt, text_calib, alpha=alpha)
    q = ml.quant.calibrate(ml.quant.quantize_model(s, w_bits=8, a_bits=4, skip=("head",), a_symmetric=False),
                           text_calib, samples_per_batch=SAMPLES)
    per = per_sample("CharGPT", q)
    w_sqnr = sum(ml.quant.sqnr(m.weight, ml.quant.fake_quant(m.weight, 8, axis=0))
                 for n, m in s.named_modules() if isinstance(m, nn.Linear) and n.endswith(("qkv", "fc"))) \
        / sum(1 for n, m in s.named_modules() if isinstance(m, nn.Linear) and n.endswith(("qkv", "fc")))
    change, se, word = paired("CharGPT", base, per)
    print(f"alpha = {alpha:.2f}: {quality('CharGPT', per):.3f} nats, against no smoothing {change:+.3f} ± {se:.3f} "
          f"({word}); 8-bit SQNR of the smoothed qkv/fc weights {w_sqnr:.1f} dB")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# At $\alpha = 1$ the scales are $s_c = \max|X_c|$: every activation channel is normalized
# to $[-1, 1]$ and its whole range moves into the weights; at $\alpha = 0$ it is the other
# way round, the weights are normalized and their range moves into the activations. The
# printout gives the loss at each $\alpha$ with its paired change against no smoothing, and
# the price on the weight side: the 8-bit SQNR of the smoothed weights falls as $\alpha$
# grows, because the weights absorb the activations' outliers. In CharGPT the LayerNorm-fed
# inputs that SmoothQuant can reach have small outlier ratios (section 5.2.4), so no
# $\alpha$ has much to migrate. In an LLM the weights have outliers of their own, and
# moving everything into them breaks *their* quantization: SmoothQuant finds the best
# $\alpha$ around 0.5 for most models, and larger for some with stronger activation outliers.
# :::

# %% [markdown]
# ### Exercise 3: GPTQ's calibration data (measure, medium)
# Re-run `gptq_model` for CharGPT at 3 bits per channel with a single calibration batch,
# and with calibration text drawn from the *validation* split. Compare both with the
# model of section 5.2.5. What do you conclude?

# %% tags=["solution", "hide-cell"]
# Solution 3
ref = results[("CharGPT", "GPTQ W3 per channel")]
val_calib = ml.trim(list(ml.data.TokenBatches(corpus.val_ids, T, windows, steps=len(text_calib), device=dev,
                                              generator=torch.Generator().manual_seed(99))))
widest = max(m.in_features for n, m in gpt.named_modules() if isinstance(m, nn.Linear) and n != "head")
print(f"tokens per calibration batch: {windows * T:,}; widest quantized layer: {widest} inputs")
n_ref = min(GPTQ_BATCHES, len(text_calib))
batches_of = lambda k, split: f"{k} {split} batch" + ("es" if k > 1 else "")
for label, batches in [(batches_of(1, "training"), text_calib[:1]),
                       (batches_of(min(n_ref, len(val_calib)), "validation"), val_calib[:n_ref])]:
    gq = ml.quant.gptq_model(gpt, batches, 3, skip=("head",))
    per = per_sample("CharGPT", gq)
    change, se, word = paired("CharGPT", ref, per)
    print(f"GPTQ W3 with {label}: {quality('CharGPT', per):.3f} nats; against {batches_of(n_ref, 'training')} "
          f"(section 5.2.5): {change:+.3f} ± {se:.3f} ({word})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# The printout compares both variants with section 5.2.5's model on the same test windows.
# What GPTQ needs from its data is a good estimate of $H = 2X^\top X$ for every layer: data
# that are *representative* of what the layer will see, and more tokens than the layer has
# inputs, so that $H$ is well conditioned (the first printed line compares one batch with
# the widest layer). With fewer tokens than inputs, $H$ is singular and the dampening
# $\lambda I$ decides the missing directions. Validation text is text of the same kind as
# training text; it is not the test windows themselves (those were drawn with another
# seed), so a gain from it would not be a leak of the test set but a sign that the
# calibration text matters, which the paired test decides.
# :::

# %% [markdown]
# ### Exercise 4: GPTQ from its definition (implement, hard)
# Write GPTQ as the paper first states it: columns in order, an explicit inverse Hessian,
# and after each column the optimal-brain-surgeon update of the remaining columns followed
# by the removal of that column from the inverse,
# $H^{-1} \leftarrow H^{-1} - H^{-1}_{:,j}H^{-1}_{j,:}/[H^{-1}]_{jj}$. Check on a random layer
# (float64) that it gives the codes of `ml.quant.gptq_quantize`, and that both beat
# round-to-nearest on the output error $\operatorname{tr}(\Delta H \Delta^\top)$.

# %% tags=["solution", "hide-cell"]
# Solution 4
def gptq_naive(W, H, bits, damp=0.01):
    W, q_max = W.clone(), 2 ** (bits - 1) - 1
    Hinv = torch.linalg.inv(H + damp * H.diagonal().mean() * torch.eye(len(H), dtype=H.dtype))
    s = (W.abs().amax(dim=1).float() / q_max).double()           # per-row scale, as RTN (float32)
    Q = torch.empty_like(W)
    for j in range(W.shape[1]):
        Q[:, j] = torch.clamp(torch.round(W[:, j] * (1 / s.float()).double()), -q_max, q_max)
        err = (W[:, j] - Q[:, j] * s) / Hinv[j, j]
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]                   # compensate the later columns
        Hinv = Hinv - Hinv[:, j:j + 1] @ Hinv[j:j + 1, :] / Hinv[j, j]    # drop column j from H^-1
    return Q, s


g = torch.Generator().manual_seed(0)
X_r = torch.randn(512, 64, generator=g, dtype=torch.float64) @ torch.randn(64, 64, generator=g, dtype=torch.float64)
W_r = torch.randn(48, 64, generator=g, dtype=torch.float64)
H_r = 2 * X_r.T @ X_r / len(X_r)
Q_naive, s_naive = gptq_naive(W_r, H_r, 3)
Q_lib, s_lib, _ = ml.quant.gptq_quantize(W_r, H_r, 3)
out_err = lambda W_hat: torch.trace((W_r - W_hat) @ H_r @ (W_r - W_hat).T).item()
same = (Q_naive == Q_lib.double()).double().mean().item()
print(f"codes equal to ml.quant.gptq_quantize: {same:.2%}; output error: naive {out_err(Q_naive * s_naive[:, None]):.2f}, "
      f"library {out_err(Q_lib.double() * s_lib.double()[:, None]):.2f}, "
      f"round to nearest {out_err(ml.quant.fake_quant(W_r, 3, axis=0)):.2f}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# The two agree code for code (the printout): the library's Cholesky factor $U$ of $H^{-1}$
# holds, in row $j$, exactly the row of the inverse Hessian of the columns not yet
# quantized, scaled by $\sqrt{[H^{-1}]_{jj}}$, so the update $-e_j U_{j,j:}/U_{jj}$ equals
# $-e_j [H^{-1}]_{j,j:}/[H^{-1}]_{jj}$ of the downdated inverse; the factorization does all
# the downdates at once and is numerically safer. The naive loop costs $O(d^2)$ per
# column for the downdate, $O(d^3)$ in all; GPTQ's lazy blocks turn the column updates into
# matrix products, which is what makes it fast on large layers. Both reach a much smaller
# output error than round-to-nearest on the same grid: the point of compensating.
# :::

# %% [markdown]
# ### Exercise 5: a low-rank fix that sees the inputs (implement, medium)
# LoRC approximates the weight error $E = W - \hat W$ in the Frobenius norm. The layer's
# output error is $\lVert X(E - E_r)^\top\rVert$ instead, i.e. $\operatorname{tr}(D H D^\top)$
# for $D = E - E_r$. Write the rank-$r$ correction that minimizes it: with $H = LL^\top$
# (Cholesky), take the best rank-$r$ approximation of $EL$ and map it back,
# $E_r = (EL)_r L^{-1}$. Compare it with `ml.quant.lorc` on one of CharGPT's 3-bit
# layers, for the output error and the weight error.

# %% tags=["solution", "hide-cell"]
# Solution 5
layer_name = next(n for n, m in gpt.named_modules() if n.endswith("mlp.fc"))
H_l = ml.quant.input_stats(gpt, text_calib, names=[layer_name], hessian=True)[layer_name]["hessian"].double()
H_l += 0.01 * H_l.diagonal().mean() * torch.eye(len(H_l), dtype=H_l.dtype, device=H_l.device)
W_l = gpt.get_submodule(layer_name).weight.detach().double()
E = W_l - ml.quant.fake_quant(W_l, 3, axis=0)
L = torch.linalg.cholesky(H_l)
r = r_mid
U, S, Vh = torch.linalg.svd(E @ L, full_matrices=False)
E_aware = (U[:, :r] * S[:r]) @ Vh[:r] @ torch.linalg.inv(L)            # (E L)_r L^-1
U_r, V_r = ml.quant.lorc(W_l, W_l - E, r)
E_lorc = U_r @ V_r
out = lambda D: torch.trace(D @ H_l @ D.T).item()
print(f"{layer_name}, 3 bits, rank {r}: output error tr(D H D^T): none {out(E):.4g}, LoRC {out(E - E_lorc):.4g}, "
      f"input-aware {out(E - E_aware):.4g}; weight error |D|_F: LoRC {(E - E_lorc).norm():.4g}, "
      f"input-aware {(E - E_aware).norm():.4g}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# Substituting $D' = DL$ turns the output error into a Frobenius norm,
# $\operatorname{tr}(DHD^\top) = \lVert DL\rVert_F^2$, so by Eckart-Young the best rank-$r$
# $E_rL$ is the truncated SVD of $EL$: the input-aware correction is optimal for the output
# error, and LoRC (optimal for $\lVert D\rVert_F$) can only match it, never beat it; the
# printout shows by how much it wins here, and that it pays with a larger weight error,
# since it spends its rank on the directions the inputs use. This is the same move GPTQ
# makes for the rounding itself, and what later methods (activation-aware low-rank
# compensation, SVD-based LLM compression) do for the correction.
# :::

# %% [markdown]
# ## Key takeaways
#
# - W8A8 with per-channel weights and calibrated per-tensor activations changes these
#   models by amounts the paired tests call {glue:}`cnn_w8a8_verdict` (ResNet-9),
#   {glue:}`vit_w8a8_verdict` (ViT) and {glue:}`gpt_w8a8_verdict` (CharGPT); the
#   calibration rule matters little at 8 bits and a lot at 4.
# - Weight-only quantization holds to 4 bits per channel and falls off a cliff below;
#   groups soften it. Smarter rounding and a low-rank correction are meant to buy back
#   quality at the same or slightly more bytes; on CharGPT at 3 bits the paired tests say
#   GPTQ against RTN: {glue:}`gpt_w3_gptq_verdict`, LoRC rank {glue:}`lorc_rank` against
#   none: {glue:}`gpt_lorc_rtn_verdict`. Judge each such gain on the same test samples with
#   its paired spread: a ranking of two numbers inside the noise decides nothing.
# - Activation outliers live in fixed channels; per-token scales do not remove them,
#   per-channel scales would but cannot run in an integer GEMM. SmoothQuant's migration is
#   free at inference where it folds into a LayerNorm, and helps only as much as the
#   outliers it can reach: here better in {glue:}`smooth_better` of {glue:}`smooth_cases`
#   cases, because our worst outliers sit after the GELU, out of its reach.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
