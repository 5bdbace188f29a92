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
# # 5.3 Quantization-aware training, number formats, and what quantization really costs
#
# Post-training quantization falls off a cliff at 3 to 4 bits (notebook 5.2). The way
# below the cliff is to let the network *learn* to live with the quantizer: train with the
# quantizer in the forward pass, **quantization-aware training** (QAT)
# {cite}`jacob2018quantization`, recently pushed to 4-bit weights and activations as the
# best accuracy per bit for LLMs, and down to 1 bit, by QuEST {cite}`panferov2025quest`.
# The obstacle is that rounding has zero gradient; the straight-through estimator
# {cite}`bengio2013estimating` is the (surprisingly effective) way around it. The second
# half of this notebook asks what quantization buys in practice: bytes, certainly; time,
# only when a kernel turns the small integers into fewer bytes moved or cheaper
# arithmetic. We time int8 GEMMs and weight-only int8/int4 matmuls against float32 and
# 16-bit floats on the machine named in the banner, and say plainly what is fast there
# and what is not: these results depend on the hardware more than any other in the book.
#
# **Learning objectives.** After this notebook you can
# 1. explain and check the straight-through estimator, and fine-tune a low-bit model with it;
# 2. compare integer and floating-point formats (FP8, FP4) on trained models, with paired
#    tests on the same test samples;
# 3. count a quantized model's bytes, and time int8 and weight-only kernels honestly:
#    interleaved against float32, with the spread, on a named CPU or GPU;
# 4. draw the accuracy-versus-bytes Pareto front of all variants and pick a format.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import copy
import math
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

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
hw = ml.env.hardware()
CHIP = hw["accelerator"] if dev.type == "cuda" else hw["cpu model"]

# %% [markdown]
# ## 5.3.1 The straight-through estimator
#
# Fake quantization $\hat x = s\,(\operatorname{clamp}(\operatorname{round}(x/s) + z) - z)$
# is a staircase: its derivative is zero almost everywhere (and undefined on the steps), so
# backpropagation through it would stop all learning. The **straight-through estimator**
# (STE) pretends, in the backward pass only, that rounding is the identity, and keeps the
# true derivative of the clamp:
#
# $$\frac{\partial L}{\partial x} \approx \frac{\partial L}{\partial \hat x}\cdot
# \mathbb 1\big[q_\min \le \operatorname{round}(x/s) + z \le q_\max\big].$$
#
# Inside the range the gradient passes through unchanged; outside, where the output is
# clipped and would not move anyway, it is zero. This is exactly the backward pass of
# PyTorch's `torch.fake_quantize_*` ops, and of ours:

# %%
ml.show(ml.quant._FakeQuantSTE)

# %%
x = torch.linspace(-2.5, 2.5, 1001, requires_grad=True)
s, z = ml.quant.qparams(-1.5, 1.5, 2)
y = ml.quant.fake_quant(x, 2, scale=s, zero_point=z)
y.sum().backward()
fig, ax = plt.subplots(figsize=(6.4, 3.2))
ax.plot(x.detach(), y.detach(), label="forward: $\\hat x$ (2 bits, range $\\pm 1.5$)")
ax.plot(x.detach(), x.grad, "--", label="backward: STE $\\partial \\hat x / \\partial x$")
ax.set(xlabel="input x (arbitrary units)", ylabel="value / gradient", title="Fake quantization and its straight-through gradient")
ax.legend(fontsize=9)
plt.show()

# %% tags=["nbval-check-output"]
g = torch.Generator().manual_seed(0)
xs = torch.randn(1000, generator=g) * 2
upstream = torch.randn(1000, generator=g)
same = []
for bits, symmetric in [(2, True), (4, False), (8, True)]:
    _, s, z = ml.quant.quantize(xs / 2, bits, symmetric)     # a range that clips about half of xs
    a, b = xs.clone().requires_grad_(), xs.clone().requires_grad_()
    (ml.quant.fake_quant(a, bits, symmetric, scale=s, zero_point=z) * upstream).sum().backward()
    (torch.fake_quantize_per_tensor_affine(b, s, z, *ml.quant.qrange(bits, symmetric)) * upstream).sum().backward()
    inside = (torch.round(xs / s) + z >= ml.quant.qrange(bits, symmetric)[0]) & \
             (torch.round(xs / s) + z <= ml.quant.qrange(bits, symmetric)[1])
    same.append(torch.equal(a.grad, b.grad) and torch.equal(a.grad, upstream * inside))
print(f"STE gradient = upstream gradient inside the range, 0 outside, same as PyTorch: {all(same)} ({len(same)} cases)")

# %% [markdown]
# ## 5.3.2 Quantization-aware training of the MLP
#
# A `QuantLinear` keeps a float `weight` and fake-quantizes it in every forward pass, so
# the same model that we calibrated for PTQ can simply be trained: the optimizer updates
# the float "shadow" weights, and the STE carries the gradient through the quantizers.
# We take chapter 1's Fashion-MNIST MLP, quantize all three layers at two aggressive
# settings, W4A4 (4-bit weights per channel, 4-bit activations per tensor) and W2A4
# (ternary weights), calibrate them with the MSE rule, and fine-tune each for a few
# hundred steps with a small learning rate. (Learned step sizes, as in LSQ
# {cite}`esser2020lsq`, would also train the scales; here they stay fixed at their
# calibrated values; exercise 2 writes LSQ's gradient.) Accuracies are measured on the
# full test set in fp32, each with its binomial standard error, and two models are
# compared on the same test images: with $b$ images only A gets right and $c$ only B,
# B's change is $(c-b)/n$ with paired standard error $\sqrt{b+c-(c-b)^2/n}\,/\,n$, and a
# change is called better or worse only beyond two standard errors.

# %%
mlp, mlp_record = ml.baselines.fashion_mlp()
fm_norm = dict(mean=ml.data.FASHION_MNIST_MEAN, std=ml.data.FASHION_MNIST_STD, device=dev)
fm_test_x, fm_test_y = ml.data.fashion_mnist(train=False)
fm_test_x, fm_test_y = ml.data.subset(fm_test_x, fm_test_y, ml.pick(smoke=1000, cpu=len(fm_test_y), gpu=len(fm_test_y)))
fm_test = ml.trim(list(ml.data.DeviceLoader(fm_test_x, fm_test_y, ml.trim(1000, keep=100), shuffle=False, **fm_norm)), keep=1)
fm_train_x, fm_train_y = ml.data.fashion_mnist(train=True)
fm_calib = ml.trim(list(ml.data.DeviceLoader(*ml.data.subset(fm_train_x, fm_train_y, ml.pick(smoke=256, cpu=2048, gpu=4096), seed=1),
                                             256, shuffle=False, **fm_norm)))


@torch.no_grad()
def correct(model):
    """Whether `model` (eval mode, fp32) classifies each test image correctly: a bool vector."""
    model.eval()
    return torch.cat([model(x).float().argmax(-1) == y for x, y in fm_test]).cpu()


def acc(ok):
    return 100 * ok.float().mean().item()


def acc_se(ok):
    return 100 * ml.bench.accuracy_se(ok.float().mean().item(), len(ok))


def paired(ok_a, ok_b):
    """B against A on the same images: (change in points, paired se, verdict on B)."""
    change, se, _ = ml.bench.paired_accuracy(ok_a, ok_b)
    return change, se, ml.bench.quality_verdict(change, se)


def mlp_ptq(w_bits, a_bits=None, group=None, method="mse"):
    q = ml.quant.quantize_model(mlp, w_bits=w_bits, a_bits=a_bits, group_size=group, a_symmetric=False)
    return ml.quant.calibrate(q, fm_calib, method) if a_bits is not None else q


qat_steps = ml.pick(smoke=20, cpu=300, gpu=300)  # the MLP is the same size at both scales
fm_train = ml.data.DeviceLoader(fm_train_x, fm_train_y, 256, shuffle=True, drop_last=True,
                                generator=torch.Generator(device=dev).manual_seed(0), **fm_norm)
ok_fp32 = correct(mlp)
qat_rows, qat_histories, mlp_points, qat_ok = [], {}, [], {}
for label, w_bits, a_bits in [("W4A4", 4, 4), ("W2A4", 2, 4)]:
    ptq_model = mlp_ptq(w_bits, a_bits)
    ok_ptq = correct(ptq_model)
    qat_model = copy.deepcopy(ptq_model)
    ml.seed_all(0)
    optimizer = torch.optim.AdamW(qat_model.parameters(), lr=1e-4, weight_decay=0.0)
    hist = ml.train.fit(qat_model, fm_train, optimizer=optimizer, steps=qat_steps,
                        schedule=ml.train.warmup_cosine(qat_steps, qat_steps // 10, final=0.1),
                        eval_loader=fm_test, eval_every=max(1, qat_steps // 5), progress=False)
    qat_ok[label] = ok_qat = correct(qat_model)
    qat_histories[f"{label} QAT"] = hist
    change, se, word = paired(ok_ptq, ok_qat)
    qat_rows.append({"config": label, "PTQ": acc(ok_ptq), "QAT": acc(ok_qat), "QAT - PTQ": f"{change:+.2f} ± {se:.2f}",
                     "verdict": word, "QAT train time (s)": hist.last("time"), "bytes": ml.quant.quantized_bytes(qat_model)})
    qat_rows[-1]["_vs_fp32"] = paired(ok_fp32, ok_qat)
    mlp_points += [{"name": f"{label} PTQ", "bytes": ml.quant.quantized_bytes(ptq_model), "accuracy": acc(ok_ptq)},
                   {"name": f"{label} QAT", "bytes": ml.quant.quantized_bytes(qat_model), "accuracy": acc(ok_qat)}]
train_precision = "bf16 autocast" if dev.type == "cuda" else "fp32"
ml.bench.Table(qat_rows, columns=["config", "PTQ", "QAT", "QAT - PTQ", "verdict", "QAT train time (s)", "bytes"],
               title=f"MLP on Fashion-MNIST: PTQ vs {qat_steps} steps of QAT; test accuracy (%) on {len(ok_fp32):,} images "
                     f"(float32: {acc(ok_fp32):.2f} ± {acc_se(ok_fp32):.2f}), change ± paired se; training in "
                     f"{train_precision}, evaluation in {PRECISION}",
               headers={"PTQ": "PTQ (%)", "QAT": "QAT (%)", "QAT - PTQ": "QAT - PTQ (points)"},
               formats={"PTQ": "{:.2f}", "QAT": "{:.2f}", "QAT train time (s)": "{:.1f}", "bytes": ml.bench.fmt_bytes})

# %% tags=["remove-cell"]
qr = {r["config"]: r for r in qat_rows}
ml.glue("mlp_fp32", acc(ok_fp32), ".2f")
ml.glue("mlp_fp32_se", acc_se(ok_fp32), ".2f")
ml.glue("qat_steps", qat_steps)
ml.glue("qat_epochs", qat_steps * fm_train.batch_size / len(fm_train_y), ".1f")
for key in ("W4A4", "W2A4"):
    ml.glue(f"{key}_ptq", qr[key]["PTQ"], ".2f")
    ml.glue(f"{key}_qat", qr[key]["QAT"], ".2f")
    ml.glue(f"{key}_qat_change", qr[key]["QAT - PTQ"])
    ml.glue(f"{key}_qat_verdict", qr[key]["verdict"])
    ml.glue(f"{key}_qat_time", qr[key]["QAT train time (s)"], ".0f")
    change, se, word = qr[key]["_vs_fp32"]
    ml.glue(f"{key}_qat_vs_fp32", f"{change:+.2f} ± {se:.2f}")
    ml.glue(f"{key}_qat_vs_fp32_verdict", word)

# %%
fig = ml.plot.learning_curves(qat_histories, y="val_accuracy", x="step", title="QAT: test accuracy during fine-tuning")
fig.axes[0].set(xlabel="QAT step", ylabel="test accuracy (fraction, fp32)")
plt.show()

# %% [markdown]
# After calibration alone, W4A4 reaches {glue:}`W4A4_ptq`% and W2A4 {glue:}`W2A4_ptq`%
# (float32: {glue:}`mlp_fp32` ± {glue:}`mlp_fp32_se`%). {glue:}`qat_steps` steps of QAT
# ({glue:}`qat_epochs` epochs, {glue:}`W4A4_qat_time` s here) bring them to
# {glue:}`W4A4_qat`% and {glue:}`W2A4_qat`%: a paired change of {glue:}`W4A4_qat_change`
# points ({glue:}`W4A4_qat_verdict`) and {glue:}`W2A4_qat_change` points
# ({glue:}`W2A4_qat_verdict`). Against float32, W4A4 after QAT stands at
# {glue:}`W4A4_qat_vs_fp32` points ({glue:}`W4A4_qat_vs_fp32_verdict`). The network moves
# its float weights so that their *rounded* versions work, something no post-training
# rounding rule can do.
#
# ## 5.3.3 Integer or floating-point formats on trained models
#
# Notebook 5.1 compared the formats on synthetic data. Here they quantize the trained MLP
# and CharGPT: weights only (each linear weight rounded through the format with a
# per-tensor or per-group scale), and weights plus activations (each linear layer's input
# rounded the same way, with a scale computed on the fly, i.e. dynamically). CharGPT is
# evaluated on the validation windows of notebook 5.2 (same seed), so its float32 loss is
# the same number there and here.

# %%
gpt, _ = ml.baselines.char_gpt()
corpus = ml.data.shakespeare()
gpt_test = ml.trim(list(ml.data.TokenBatches(corpus.val_ids, gpt.block_size, ml.trim(32, keep=4),
                                             steps=ml.pick(smoke=4, cpu=25, gpu=20), device=dev,
                                             generator=torch.Generator().manual_seed(1234))), keep=1)


@torch.no_grad()
def window_loss(model):
    """Mean loss (nats/char) of `model` on each validation window, fp32: a float vector."""
    model.eval()
    return torch.cat([F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
                      for x, y in gpt_test]).cpu()


def round_through(model, weight_fn, act_fn=None, skip=("head",)):
    """A copy of `model` whose linear weights (and, with act_fn, inputs) go through a format."""
    m = copy.deepcopy(model)
    for name, layer in m.named_modules():
        if isinstance(layer, nn.Linear) and name not in skip:
            with torch.no_grad():
                layer.weight.copy_(weight_fn(layer.weight))
            if act_fn is not None:
                layer.register_forward_pre_hook(lambda mod, args: (act_fn(args[0]),))
    return m


int_ = lambda bits, **kw: (lambda t: ml.quant.fake_quant(t, bits, **kw))
fp8 = lambda dtype: (lambda t: ml.quant.fp8_round_trip(t, dtype))
fp4 = lambda group=None: (lambda t: ml.quant.fp4_e2m1(t, group_size=group))
formats = [  # name, bits per weight (with 32-bit scales), weight rounding, activation rounding
    ("bfloat16", 16, lambda t: t.bfloat16().float(), None),
    ("int8 per channel", 8, int_(8, axis=0), None),
    ("fp8 E4M3", 8, fp8(torch.float8_e4m3fn), None),
    ("fp8 E5M2", 8, fp8(torch.float8_e5m2), None),
    ("int4 per channel", 4, int_(4, axis=0), None),
    ("fp4 E2M1 per tensor", 4, fp4(), None),
    ("int4 g16", 6, int_(4, group_size=16), None),
    ("fp4 E2M1 g16", 6, fp4(16), None),
    ("W8A8 int8 (dynamic)", 8, int_(8, axis=0), int_(8, symmetric=False)),
    ("W8A8 fp8 E4M3", 8, fp8(torch.float8_e4m3fn), fp8(torch.float8_e4m3fn)),
    ("W4A4 int4 g16", 6, int_(4, group_size=16), int_(4, group_size=16)),
    ("W4A4 fp4 g16", 6, fp4(16), fp4(16)),
]
loss_fp32 = window_loss(gpt)
n_weights = sum(l.weight.numel() for l in mlp.modules() if isinstance(l, nn.Linear))
n_bias = sum(l.bias.numel() for l in mlp.modules() if isinstance(l, nn.Linear))
rows, fmt_ok, fmt_loss = [], {}, {}
for name, bits_w, w_fn, a_fn in formats:
    fmt_ok[name] = ok = correct(round_through(mlp, w_fn, a_fn, skip=()))
    fmt_loss[name] = loss = window_loss(round_through(gpt, w_fn, a_fn))
    gpt_change, gpt_se = ml.bench.paired_difference(loss_fp32, loss)
    rows.append({"format": name, "bits/weight": bits_w, "MLP accuracy %": acc(ok), "MLP vs float32": paired(ok_fp32, ok)[2],
                 "CharGPT val loss": loss.mean().item(), "CharGPT vs float32": ml.bench.quality_verdict(-gpt_change, gpt_se)})
    mlp_points.append({"name": name, "bytes": bits_w * n_weights / 8 + 4 * n_bias, "accuracy": acc(ok)})
fmt_rows = rows
loss_se = loss_fp32.std().item() / math.sqrt(len(loss_fp32))
ml.bench.Table([{"format": "float32", "bits/weight": 32, "MLP accuracy %": acc(ok_fp32), "CharGPT val loss": loss_fp32.mean().item()}] + rows,
               title=f"number formats on trained models (per-tensor scales unless grouped; 32-bit scales; {PRECISION}); "
                     f"verdicts from paired tests on the same test samples; float32: MLP {acc(ok_fp32):.2f} ± "
                     f"{acc_se(ok_fp32):.2f}%, CharGPT {loss_fp32.mean().item():.3f} ± {loss_se:.3f} nats",
               headers={"bits/weight": "bits per weight", "CharGPT val loss": "CharGPT loss (nats)"},
               formats={"MLP accuracy %": "{:.2f}", "CharGPT val loss": "{:.3f}"})

# %% tags=["remove-cell"]
fr = {r["format"]: r for r in fmt_rows}
ml.glue("gpt_fp32", loss_fp32.mean().item(), ".3f")
for name, key in (("W4A4 int4 g16", "w4a4_int"), ("W4A4 fp4 g16", "w4a4_fp"), ("W8A8 fp8 E4M3", "w8a8_fp8"),
                  ("W8A8 int8 (dynamic)", "w8a8_int8"), ("fp4 E2M1 per tensor", "fp4_pt"), ("int4 per channel", "int4_pc")):
    ml.glue(f"{key}_gpt", fr[name]["CharGPT val loss"], ".3f")
    ml.glue(f"{key}_mlp", fr[name]["MLP accuracy %"], ".2f")
eight = [r for r in fmt_rows if r["bits/weight"] == 8]
ml.glue("n_eight", len(eight) * 2)
ml.glue("n_eight_same", sum((r["MLP vs float32"] == "no measurable difference") + (r["CharGPT vs float32"] == "no measurable difference")
                            for r in eight))
for a, b, key in (("W4A4 int4 g16", "W4A4 fp4 g16", "w4a4"), ("int4 per channel", "fp4 E2M1 per tensor", "w4")):
    change, se, word = paired(fmt_ok[a], fmt_ok[b])
    ml.glue(f"{key}_fp_vs_int_mlp", f"{change:+.2f} ± {se:.2f} points ({word})")
    ml.glue(f"{key}_fp_vs_int_mlp_p", ml.bench.mcnemar(fmt_ok[a], fmt_ok[b]), ".2g")
    change, se = ml.bench.paired_difference(fmt_loss[a], fmt_loss[b])
    ml.glue(f"{key}_fp_vs_int_gpt", f"{change:+.3f} ± {se:.3f} nats ({ml.bench.quality_verdict(-change, se)})")

# %% [markdown]
# Of the {glue:}`n_eight` comparisons of an 8-bit format with float32 (four formats, two
# models), {glue:}`n_eight_same` show no measurable difference (W8A8 in FP8 E4M3:
# {glue:}`w8a8_fp8_gpt` nats; int8: {glue:}`w8a8_int8_gpt`; float32: {glue:}`gpt_fp32`).
# With weights *and* activations in 4 bits (groups of 16, as in NVIDIA's NVFP4), CharGPT's
# loss is {glue:}`w4a4_fp_gpt` nats with FP4 and {glue:}`w4a4_int_gpt` with int4, the
# MLP's accuracy {glue:}`w4a4_fp_mlp`% and {glue:}`w4a4_int_mlp`%. Paired on the same
# samples, FP4 against int4 changes the MLP by {glue:}`w4a4_fp_vs_int_mlp` (McNemar
# $p$ = {glue:}`w4a4_fp_vs_int_mlp_p`) and CharGPT by {glue:}`w4a4_fp_vs_int_gpt`. With
# 4-bit weights only, FP4 with a single scale per tensor ({glue:}`fp4_pt_gpt` nats,
# {glue:}`fp4_pt_mlp`%) against int4 with a scale per output channel
# ({glue:}`int4_pc_gpt` nats, {glue:}`int4_pc_mlp`%) is a change of
# {glue:}`w4_fp_vs_int_mlp` for the MLP and {glue:}`w4_fp_vs_int_gpt` for CharGPT: the
# float grid's finer steps near zero do part of the work that finer scales do for an
# integer grid. Our models are small and forgiving; the differences LLM-FP4 reports appear
# at billions of parameters and with 4-bit activations of much heavier tails.
#
# ## 5.3.4 What quantization saves: bytes
#
# The bytes a model needs are the easy part: $b$ bits per quantized weight, plus its
# scales. `ml.quant.quantized_bytes` counts them for the fake-quantized models;
# `ml.quant.WeightOnlyLinear` really stores them (int8 codes, or int4 codes packed two per
# byte), and `ml.bench.model_bytes` of such a model counts the bytes it holds in memory.

# %%
ml.show(ml.quant.pack_int4)

# %%
ml.show(ml.quant.WeightOnlyLinear.dequantized_weight)

# %%
skip_gpt = ("head",)
rows = []
for label, fn in [
    ("float32", lambda m: m),
    ("bfloat16", lambda m: copy.deepcopy(m).to(torch.bfloat16)),
    ("W8 per channel (int8 storage)", lambda m: ml.quant.weight_only_model(m, 8, skip=skip_gpt)),
    ("W4 per channel (packed int4)", lambda m: ml.quant.weight_only_model(m, 4, skip=skip_gpt)),
    ("W4 g32 (packed int4)", lambda m: ml.quant.weight_only_model(m, 4, 32, skip=skip_gpt)),
]:
    rows.append({"CharGPT weights": label, "bytes in memory": ml.bench.model_bytes(fn(gpt))})
base_bytes = rows[0]["bytes in memory"]
for r in rows:
    r["vs float32"] = base_bytes / r["bytes in memory"]
emb = sum(p.numel() * 4 for n, p in gpt.named_parameters() if "emb" in n)
gpt_w4_ratio = rows[4]["vs float32"]
ml.bench.Table(rows, title="CharGPT, measured bytes of the stored model (embeddings stay float32)",
               headers={"vs float32": "smaller than float32 by"},
               formats={"bytes in memory": ml.bench.fmt_bytes, "vs float32": "{:.2f}x"})

# %% tags=["remove-cell"]
ml.glue("gpt_w4_ratio", gpt_w4_ratio, ".1f")
ml.glue("gpt_emb_share", 100 * emb / base_bytes, ".0f")

# %% [markdown]
# 4-bit weights in groups of 32 shrink CharGPT {glue:}`gpt_w4_ratio` times, not 8: its
# token and position embeddings ({glue:}`gpt_emb_share`% of the float32 bytes at this
# scale), norms and biases stay in float32, and each group carries a 32-bit scale. In a
# multi-billion-parameter LLM the linear layers dominate and the ratio approaches the ideal.

# %% [markdown]
# ## 5.3.5 What quantization saves: time
#
# Fewer bytes are faster only if a kernel reads the small integers directly. There are
# two different speed-ups to look for:
#
# - **int8 GEMM** (W8A8): both operands int8, products accumulated in int32. On GPUs with
#   integer tensor cores this doubles peak throughput over fp16/bf16, and CPUs with integer
#   dot-product instructions (x86 AVX-512 VNNI, AVX-VNNI, AMX; Arm's dot-product and i8mm
#   extensions) multiply four int8 pairs where one float32 pair fits. PyTorch exposes it as
#   `torch._int_mm` (cuBLAS on CUDA, a native kernel on the CPU); `ml.quant.int8_matmul`
#   calls it wherever it exists and is exact, with the padding CUDA needs. This matters for
#   **compute-bound** work: large batches, prefill.
# - **weight-only** (W8A16, W4A16): activations stay float; the kernel reads int8 or int4
#   weights and dequantizes them in registers. This matters for **memory-bound** work:
#   batch-1 generation reads every weight once per token (chapter 1's roofline). PyTorch
#   has fused kernels for it (`torch._weight_int8pack_mm`, `torch._weight_int4pack_mm`);
#   our `WeightOnlyLinear(kernel="dequant")` instead materializes the float weight with
#   plain PyTorch ops, which costs *more* traffic than a float weight, and is there to
#   show why fusion is the whole point.
#
# Both depend on the hardware more than anything else in this book: the banner names the
# machine, and the prose below names the instructions it has. First the matrix products
# alone, for a batch-1 (decode-like) and a batched (prefill-like) shape. Every result is
# checked against the float32 product before it is timed (a fast wrong kernel would be
# worthless), and every kernel is timed against float32 with `ml.bench.compare`:
# interleaved rounds (A B, B A, ...), the median of the per-round speed-ups, and their
# interquartile range.

# %%
K = N = ml.pick(smoke=256, cpu=2048, gpu=8192)
M_big = ml.trim(ml.pick(smoke=32, cpu=64, gpu=4096), keep=8)   # a dry run: 8 rows
batch_sizes = [1, M_big]
repeat = ml.pick(smoke=5, cpu=15, gpu=20)
low = torch.bfloat16  # the activation dtype of PyTorch's fused weight-only kernels (their fast path)
gen = torch.Generator().manual_seed(0)
w = (torch.randn(N, K, generator=gen) / K ** 0.5).to(dev)
layer = nn.Linear(K, N, bias=False).to(dev)
with torch.no_grad():
    layer.weight.copy_(w)
w8 = ml.quant.WeightOnlyLinear.from_float(layer, 8)
w4 = ml.quant.WeightOnlyLinear.from_float(layer, 4, group_size=64)
w8_fused, w4_fused = copy.deepcopy(w8), copy.deepcopy(w4)
w_bf16, w_fp16 = w.bfloat16(), w.half()
w8_ok, w8_msg = w8_fused.prepare_fused(low)
w4_ok, w4_msg = w4_fused.prepare_fused(low)
w8_fused.kernel, w4_fused.kernel = "fused", "fused"
w_q8, s_w8, _ = ml.quant.quantize(w, 8, axis=0)                     # (N, K) int8, per output channel
w_q8_t = w_q8.t()                                                   # (K, N) view, column-major, as cuBLAS likes it
int8_backend = ml.quant.int8_matmul_backend(dev)
print(f"device: {CHIP}; vector extensions: {hw['cpu features']}")
print(f"int8 GEMM here: {int8_backend}")
print(f"fused weight-only int8: {w8_msg}; fused weight-only int4: {w4_msg}")


def w8a8_linear(x):
    """Dynamic W8A8: quantize x per row, int8 GEMM with int32 accumulation, rescale."""
    x_q, s_x, _ = ml.quant.quantize(x, 8, axis=0)
    return ml.quant.int8_matmul(x_q, w_q8_t).float() * s_x[:, None] * s_w8[None, :]


def speed_words(c, than="float32"):
    """A Comparison in words: '1.47x faster than float32', '2.10x slower ...' or no measurable difference."""
    return c.words(faster=f"{c.speedup:.2f}x faster than {than}", slower=f"{1 / c.speedup:.2f}x slower than {than}",
                   same=f"as fast as {than} within the noise ({c.speedup:.2f}x, IQR {c.lo:.2f}-{c.hi:.2f})")


rel_err = lambda out, ref: ((out.float() - ref).norm() / ref.norm()).item()
rows, gemm = [], {}
with torch.no_grad():
    for M in batch_sizes:
        x = torch.randn(M, K, generator=gen).to(dev)
        ref = x @ w.T
        x_bf, x_h, x_q8 = x.to(low), x.half(), ml.quant.quantize(x, 8, axis=0)[0]
        int_ref = x_q8.double() @ w_q8.double().T
        variants = [  # name, call, check: relative error bound, or "exact" against the integer product
            ("bfloat16", lambda: x_bf @ w_bf16.T, 2e-2),
            ("float16", lambda: x_h @ w_fp16.T, 2e-2),
            ("int8 x int8 -> int32 (int8_matmul)", lambda: ml.quant.int8_matmul(x_q8, w_q8_t), "exact"),
            ("W8A8 linear (quantize x + int8 GEMM + rescale)", lambda: w8a8_linear(x), 2e-2),
            ("W8 weight-only, dequantize in PyTorch", lambda: w8(x), 2e-2),
            ("W4 g64 weight-only, dequantize in PyTorch", lambda: w4(x), 2e-1),
        ]
        if w8_ok:
            variants.append(("W8 weight-only, fused kernel (bf16)", lambda: w8_fused(x_bf), 2e-2))
        if w4_ok:
            variants.append(("W4 g64 weight-only, fused kernel (bf16)", lambda: w4_fused(x_bf), 2e-1))
        for name, fn, tol in variants:
            out = fn()
            if tol == "exact":
                ok = torch.equal(out.double(), int_ref)
                check = "exact" if ok else "wrong result"
            else:
                ok, check = rel_err(out, ref) <= tol, f"rel. error {rel_err(out, ref):.1e}"
            if not ok:
                rows.append({"M (rows)": M, "kernel": name, "check": check})
                continue
            c = ml.bench.compare(lambda: x @ w.T, fn, warmup=2, repeat=repeat)
            gemm[(M, name)] = c
            rows.append({"M (rows)": M, "kernel": name, "float32": c.baseline, "time": c.candidate,
                         "speed-up vs float32": c, "verdict": c.verdict, "check": check})
ml.bench.Table(rows, title=f"(M x {K}) @ ({K} x {N}) on {CHIP}, {hw['torch threads']} threads; each kernel in "
                           f"{repeat} interleaved rounds against float32 ({PRECISION}); times: median ± half the IQR",
               columns=["M (rows)", "kernel", "float32", "time", "speed-up vs float32", "verdict", "check"],
               headers={"float32": "float32 time", "time": "kernel time", "speed-up vs float32": "speed-up (IQR)"})

# %% tags=["remove-cell"]
keys = {"bfloat16": "bf16", "float16": "fp16", "int8 x int8 -> int32 (int8_matmul)": "int8mm",
        "W8A8 linear (quantize x + int8 GEMM + rescale)": "w8a8", "W8 weight-only, dequantize in PyTorch": "w8d",
        "W4 g64 weight-only, dequantize in PyTorch": "w4d", "W8 weight-only, fused kernel (bf16)": "w8f",
        "W4 g64 weight-only, fused kernel (bf16)": "w4f"}
for M, tag in ((1, "1"), (M_big, "big")):
    for name, key in keys.items():
        c = gemm.get((M, name))
        ml.glue(f"{key}_{tag}_words", speed_words(c) if c else "not available here (no such kernel, or a wrong result)")
        ml.glue(f"{key}_{tag}_speedup", f"{c.speedup:.2f}" if c else "n/a")
ml.glue("gemm_K", K)
ml.glue("M_big", M_big)
ml.glue("chip", CHIP)
ml.glue("int8_backend", int8_backend)
feats = set(hw["cpu features"].split())
ml.glue("cpu_features", hw["cpu features"])
ml.glue("int8_isa", ", ".join(sorted(feats & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})) or "none of them")
ml.glue("bf16_isa", ", ".join(sorted(feats & {"avx512_bf16", "amx_bf16", "bf16"})) or "none of them")
ml.glue("device_kind", "GPU" if dev.type == "cuda" else "CPU")

# %% [markdown]
# The numbers are this run's, on {glue:}`chip` ({glue:}`device_kind`; the int8 GEMM goes
# through {glue:}`int8_backend`). At $M = $ {glue:}`M_big` rows the int8 GEMM ran
# {glue:}`int8mm_big_words`, bfloat16 {glue:}`bf16_big_words`, float16
# {glue:}`fp16_big_words`, and a whole dynamic W8A8 linear layer, quantization of the
# input included, {glue:}`w8a8_big_words`. For one row (a decoding step, which reads the
# whole {glue:}`gemm_K` x {glue:}`gemm_K` weight for a single output row), the int8 GEMM
# ran {glue:}`int8mm_1_words` and bfloat16 {glue:}`bf16_1_words`; weight-only int8
# dequantized in PyTorch ran {glue:}`w8d_1_words` and int4 {glue:}`w4d_1_words`, while
# PyTorch's fused weight-only kernels, which read the codes and dequantize them in
# registers, ran {glue:}`w8f_1_words` (int8) and {glue:}`w4f_1_words` (int4); with
# {glue:}`M_big` rows {glue:}`w8f_big_words` and {glue:}`w4f_big_words`.
#
# **These results are the hardware's.** A CPU runs an 8- or 16-bit GEMM faster than a
# float32 one only where it has instructions for it: integer dot products (x86 AVX-512
# VNNI or AVX-VNNI, AMX on Intel's server CPUs since Sapphire Rapids; Arm's dot-product
# and i8mm extensions) and bf16 dot products (AVX-512 BF16, AMX-BF16; Arm's bf16). Without
# them PyTorch's CPU kernels convert the operands element by element and an 8- or 16-bit
# GEMM has nothing to gain, often a lot to lose; fp16 has no dot-product instruction on
# most x86 CPUs at all. The CPU of this run reports these vector extensions:
# {glue:}`cpu_features` (int8 dot products: {glue:}`int8_isa`; bf16 dot products:
# {glue:}`bf16_isa`). On a GPU with int8 and bf16 tensor cores the same code takes the
# tensor-core paths (the `gpu` scale). What can win on any machine is the memory-bound
# single row, where a fused kernel reads 4 (int8) or 8 (int4) times fewer weight bytes
# than float32 (and a 16-bit matmul half of them). The lesson is the one chapter 1 taught:
# *measure* on the target; a FLOP or a byte saved on paper is not a second saved on your
# machine.
#
# ### End to end
#
# The same question for whole models: CharGPT on a single token (what one decoding step
# costs without a KV cache: every weight is read for one row), on one and on 16 full
# contexts, and the MLP on one image and on 256. The fused kernels run with bfloat16
# activations (their fast path), and so does the rest of the model then. Each variant is
# timed against the float32 model in interleaved rounds; we also report the bytes of the
# weights in memory, and the peak memory the forward pass allocates on top of them.

# %%
def deploy(model, kind, skip=()):
    """The model with its weights stored as `kind`, and the activation dtype it runs in."""
    if kind == "float32":
        return model, torch.float32
    if kind == "bfloat16":
        return copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16
    bits = 8 if kind.startswith("W8") else 4
    group = None if bits == 8 else 64
    if group:  # layers whose fan-in is not a multiple of the group size stay in float
        skip = tuple(skip) + tuple(n for n, l in model.named_modules() if isinstance(l, nn.Linear) and l.in_features % group)
    m = ml.quant.weight_only_model(model, bits, group, skip=skip, kernel="fused" if "fused" in kind else "dequant")
    if "fused" not in kind:
        return m, torch.float32
    for layer in m.modules():
        if isinstance(layer, ml.quant.WeightOnlyLinear) and not layer.prepare_fused(low)[0]:
            return None, None
    return m.to(low), low  # the rest of the model (norms, embeddings) in the same dtype


all_kinds = ["float32", "bfloat16", "W8 dequant", "W8 fused", "W4 g64 dequant", "W4 g64 fused"]
tokens = lambda n, t: torch.randint(0, corpus.vocab_size, (n, t), device=dev)
n_ctx = ml.trim(16, keep=2)
repeat_e2e = ml.pick(smoke=5, cpu=15, gpu=20)
cases = [  # the MLP's first layer has 784 inputs, no multiple of 64: 4-bit rows would keep it in float
    ("CharGPT, 1 token (a decoding step)", gpt, skip_gpt, tokens(1, 1), all_kinds),
    ("CharGPT, 1 x full context", gpt, skip_gpt, tokens(1, gpt.block_size), all_kinds),
    (f"CharGPT, {n_ctx} x full context", gpt, skip_gpt, tokens(n_ctx, gpt.block_size), all_kinds),
    ("MLP, 1 image", mlp, (), torch.randn(1, 1, 28, 28, device=dev), all_kinds[:4]),
    ("MLP, 256 images", mlp, (), torch.randn(256, 1, 28, 28, device=dev), all_kinds[:4]),
]
rows, mem_rows, e2e = [], [], {}
with torch.no_grad():
    for case, model, skip, x, kinds in cases:
        model.eval()
        mem_rows.append({"model / input": case, "weights": "float32", "weight bytes": ml.bench.model_bytes(model),
                         "peak extra memory": ml.bench.peak_memory(model, x, device=dev)})
        for kind in kinds[1:]:
            m, act = deploy(model, kind, skip)
            if m is None:
                rows.append({"model / input": case, "weights": kind, "verdict": "no fused kernel here"})
                continue
            m.eval()
            inp = x.to(act) if x.is_floating_point() else x
            c = ml.bench.compare(lambda: model(x), lambda: m(inp), warmup=2, repeat=repeat_e2e)
            e2e[(case, kind)] = c
            rows.append({"model / input": case, "weights": kind, "float32": c.baseline, "latency": c.candidate,
                         "speed-up vs float32": c, "verdict": c.verdict})
            mem_rows.append({"model / input": case, "weights": kind, "weight bytes": ml.bench.model_bytes(m),
                             "peak extra memory": ml.bench.peak_memory(m, inp, device=dev)})
ml.bench.Table(rows, title=f"end-to-end inference on {CHIP}, {hw['torch threads']} threads ({ml.scale()} scale); each "
                           f"variant in {repeat_e2e} interleaved rounds against float32 ({PRECISION}); latencies: "
                           f"median ± half the IQR",
               headers={"float32": "float32 latency", "speed-up vs float32": "speed-up (IQR)"})

# %%
ml.bench.Table(mem_rows, title="the same models: bytes of the stored weights, and the peak memory a forward pass "
                               "allocates on top of them",
               formats={"weight bytes": ml.bench.fmt_bytes, "peak extra memory": ml.bench.fmt_bytes})

# %% tags=["remove-cell"]
dec, ctx = "CharGPT, 1 token (a decoding step)", f"CharGPT, {n_ctx} x full context"
for case, key in ((dec, "dec"), (ctx, "ctx"), ("MLP, 1 image", "mlp1")):
    for kind, kk in (("bfloat16", "bf16"), ("W8 dequant", "w8d"), ("W8 fused", "w8f"),
                     ("W4 g64 dequant", "w4d"), ("W4 g64 fused", "w4f")):
        c = e2e.get((case, kind))
        ml.glue(f"e2e_{key}_{kk}", speed_words(c) if c else "not measured here")
ml.glue("n_ctx", n_ctx)
mem = {(r["model / input"], r["weights"]): r for r in mem_rows}
ml.glue("e2e_mlp1_w8d_mem", ml.bench.fmt_bytes(mem[("MLP, 1 image", "W8 dequant")]["peak extra memory"]))
ml.glue("e2e_mlp1_fp_mem", ml.bench.fmt_bytes(mem[("MLP, 1 image", "float32")]["peak extra memory"]))
gpt_fp_bytes = ml.bench.model_bytes(gpt)
ml.glue("e2e_gpt_fp_bytes", ml.bench.fmt_bytes(gpt_fp_bytes))
ml.glue("e2e_gpt_w4_bytes", ml.bench.fmt_bytes(mem[(dec, "W4 g64 dequant")]["weight bytes"]))
try:  # the last-level cache of CPU 0, as Linux reports it
    with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
        l3 = int(f.read().strip().rstrip("K")) * 1024
except (OSError, ValueError):
    l3 = None
ml.glue("l3_size", ml.bench.fmt_bytes(l3) if l3 else "unknown")
ml.glue("l3_fits", "unknown" if l3 is None else ("smaller than" if gpt_fp_bytes < l3 else "larger than"))

# %% [markdown]
# For a single decoding step of CharGPT (every weight read for one token), with fused
# weights int8 ran {glue:}`e2e_dec_w8f` and int4 {glue:}`e2e_dec_w4f`; bfloat16 ran
# {glue:}`e2e_dec_bf16`, and dequantizing in PyTorch {glue:}`e2e_dec_w8d` (int8) and
# {glue:}`e2e_dec_w4d` (int4). A decoding step of a model this small is a few dozen
# small operations, each with a fixed cost, and its float32 weights
# ({glue:}`e2e_gpt_fp_bytes`) are {glue:}`l3_fits` this CPU's last-level cache
# ({glue:}`l3_size`; on a GPU the question is its L2), so there is less memory traffic to
# save than in the single large matmul above. For {glue:}`n_ctx` full-context sequences
# (compute-bound) the fused kernels ran {glue:}`e2e_ctx_w8f` (int8) and
# {glue:}`e2e_ctx_w4f` (int4), and bfloat16 {glue:}`e2e_ctx_bf16`. With one image the MLP
# with fused int8 weights ran {glue:}`e2e_mlp1_w8f`. The dequantize-in-PyTorch MLP
# allocates {glue:}`e2e_mlp1_w8d_mem` during a one-image forward pass (float32:
# {glue:}`e2e_mlp1_fp_mem`): it rebuilds each float weight. The memory saving of the
# stored weights is real everywhere ({glue:}`e2e_gpt_w4_bytes` instead of
# {glue:}`e2e_gpt_fp_bytes` for CharGPT in int4); the speed-up depends on the kernels and
# instructions this device has.
#
# ## 5.3.6 Accuracy per byte
#
# Every MLP variant of this notebook (post-training integer quantization at each bit
# width, QAT, and the float formats) as a point: test accuracy against the bytes of the
# stored weights.

# %%
for label, w_bits, a_bits, group in [("W8A8 PTQ", 8, 8, None), ("W8 PTQ", 8, None, None), ("W4 PTQ", 4, None, None),
                                     ("W4 g16 PTQ", 4, None, 16), ("W3 PTQ", 3, None, None), ("W2 PTQ", 2, None, None),
                                     ("W2 g16 PTQ", 2, None, 16)]:
    q = mlp_ptq(w_bits, a_bits, group)
    mlp_points.append({"name": label, "bytes": ml.quant.quantized_bytes(q), "accuracy": acc(correct(q))})
mlp_points.append({"name": "float32", "bytes": ml.bench.model_bytes(mlp), "accuracy": acc(ok_fp32)})
front = ml.plot.pareto_front(mlp_points, x="bytes", y="accuracy")
on_front = {p["name"] for p in front}
points = [{"weights (MB)": p["bytes"] / 1e6, "test accuracy (%)": p["accuracy"],
           "label": p["name"] if p["name"] in on_front else None} for p in mlp_points]
fig = ml.plot.pareto(points, x="weights (MB)", y="test accuracy (%)", label="label", labels="legend", logx=True,
                     title=f"MLP on Fashion-MNIST: accuracy vs weight bytes ({ml.scale()} scale)")
fig.axes[0].xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
fig.axes[0].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
fig.axes[0].xaxis.set_minor_formatter(NullFormatter())
plt.show()
ml.bench.Table(sorted(({"variant": p["name"], "weight bytes": p["bytes"], "accuracy %": p["accuracy"],
                        "on the front": p["name"] in on_front} for p in mlp_points), key=lambda r: r["weight bytes"]),
               title=f"every MLP variant, by size (standard error of one accuracy: ± {acc_se(ok_fp32):.2f} points)",
               formats={"weight bytes": ml.bench.fmt_bytes, "accuracy %": "{:.2f}"})

# %% tags=["remove-cell"]
ml.glue("mlp_front", ", ".join(p["name"] for p in front))
ml.glue("w4a4_qat_on_front", "on" if "W4A4 QAT" in on_front else "not on")
ml.glue("w2a4_qat_on_front", "on" if "W2A4 QAT" in on_front else "not on")

# %% [markdown]
# On the front here: {glue:}`mlp_front`. W4A4 after QAT is {glue:}`w4a4_qat_on_front` the
# front and W2A4 after QAT {glue:}`w2a4_qat_on_front` it. Two points closer than about two
# standard errors in accuracy (the table's title) are not told apart by this test set, so
# the front's order among near-equal points is not a finding; what the plot does show is
# where each bit width falls off, and which variants buy their bytes with accuracy.

# %% [markdown]
# ## 5.3.7 Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`bengio2013estimating`, {cite}`jacob2018quantization` | training through fake quantization with the straight-through estimator recovers the accuracy lost by quantization | W4A4 MLP: PTQ {glue:}`W4A4_ptq`% → QAT {glue:}`W4A4_qat`% after {glue:}`qat_steps` steps ({glue:}`W4A4_qat_change` points, {glue:}`W4A4_qat_verdict`); against float32 {glue:}`W4A4_qat_vs_fp32` points ({glue:}`W4A4_qat_vs_fp32_verdict`) |
# | {cite}`panferov2025quest` | QAT is Pareto-optimal at 4-bit weights and activations (with better quantizers and a "trust" gradient estimator) | plain STE QAT: W4A4 {glue:}`w4a4_qat_on_front` the MLP's accuracy-per-byte front, W2A4 {glue:}`w2a4_qat_on_front` it |
# | {cite}`micikevicius2022fp8` | FP8 post-training quantization keeps the quality of language models | CharGPT W8A8 in FP8 E4M3: {glue:}`w8a8_fp8_gpt` nats, int8 {glue:}`w8a8_int8_gpt`, float32 {glue:}`gpt_fp32` |
# | {cite}`liu2023llmfp4` | W4A4 in FP4 beats integer W4A4 on LLMs | W4A4 (g16), FP4 against int4: MLP {glue:}`w4a4_fp_vs_int_mlp`, CharGPT {glue:}`w4a4_fp_vs_int_gpt` |
# | {cite}`xiao2023smoothquant` | W8A8 gives up to 1.56x speed-up for LLM inference (GPU, FasterTransformer) | dynamic W8A8 linear at M = {glue:}`M_big`, {glue:}`gemm_K` wide, on {glue:}`chip`: {glue:}`w8a8_big_words` |
# | {cite}`frantar2023gptq` | 4-bit weights give about 3.25x faster generation on A100 with custom kernels | fused int4 weight-only matmul, one row, on {glue:}`chip`: {glue:}`w4f_1_words`; a CharGPT decoding step: {glue:}`e2e_dec_w4f` |
#
# **Further reading** (claims this notebook does not measure):
# - BiViT {cite}`he2023bivit`: binary vision transformers with softmax-aware binarization
#   and learnable weight scales (our lowest point is ternary weights).
# - MobileQuant {cite}`tan2024mobilequant`: integer-only W8A8 LLMs on phone NPUs, with
#   lower latency and energy than other on-device schemes.
# - I-Segmenter {cite}`sassoon2025isegmenter`: an integer-only ViT segmenter, smaller and
#   faster with optimized runtimes.
# - Q-VLM {cite}`wang2024qvlm`: post-training quantization of large vision-language models,
#   with memory compression and faster generation.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: a larger step or more steps? (measure, medium)
# Run the W2A4 QAT with a 10x larger learning rate (the one the MLP was trained with), and
# with 4x more steps at the original learning rate. Which helps more? What can go wrong
# with large steps in QAT?

# %% tags=["solution", "hide-cell"]
# Solution 1
ok_base = qat_ok["W2A4"]
for lr, steps in [(1e-3, qat_steps), (1e-4, 4 * qat_steps)]:
    q = mlp_ptq(2, 4)
    ml.seed_all(0)
    opt = torch.optim.AdamW(q.parameters(), lr=lr, weight_decay=0.0)
    ml.train.fit(q, fm_train, optimizer=opt, steps=steps, progress=False,
                 schedule=ml.train.warmup_cosine(steps, steps // 10, final=0.1))
    ok = correct(q)
    change, se, word = paired(ok_base, ok)
    print(f"W2A4 QAT, lr {lr:g}, {steps} steps: {acc(ok):.2f}%; against lr 1e-4 and {qat_steps} steps: "
          f"{change:+.2f} ± {se:.2f} points ({word})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The printout compares both with the QAT run of section 5.3.2 on the same test images.
# With ternary weights the float shadow weights must travel a long way before their
# rounded values change (a whole step $s$ of the grid), so both a larger learning rate and
# more steps move them further; which one gets further in the same number of weight
# updates is what the two lines measure. The risk of large steps is oscillation: a weight
# near a rounding boundary flips between two grid points from one step to the next, so the
# rounded network the loss sees keeps changing. That is why QAT recipes decay the
# learning rate to (near) zero, and at 4 bits and above, where the PTQ model is already
# close, fine-tune at a fraction of the original learning rate.
# :::

# %% [markdown]
# ### Exercise 2: a learnable step size (implement, medium)
# LSQ {cite}`esser2020lsq` also trains the scale $s$. Write a fake-quantize autograd
# function whose backward gives, besides the STE gradient for $x$, the gradient with
# respect to $s$. Derive $\partial\hat x/\partial s$ inside and outside the range, and
# check your gradients against PyTorch's
# `torch._fake_quantize_learnable_per_tensor_affine`.

# %% tags=["solution", "hide-cell"]
# Solution 2
class LSQFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, q_min, q_max):
        q = torch.round(x / s)
        ctx.save_for_backward(x, s, q)
        ctx.q_range = (q_min, q_max)
        return q.clamp(q_min, q_max) * s

    @staticmethod
    def backward(ctx, g):
        x, s, q = ctx.saved_tensors
        inside = (q >= ctx.q_range[0]) & (q <= ctx.q_range[1])
        d_s = torch.where(inside, q - x / s, q.clamp(*ctx.q_range))   # d x_hat / d s
        return g * inside, (g * d_s).sum().reshape(s.shape), None, None


x_l = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 2
up = torch.randn(4096, generator=torch.Generator().manual_seed(1))
a, s_a = x_l.clone().requires_grad_(), torch.tensor([0.3], requires_grad=True)
b, s_b = x_l.clone().requires_grad_(), torch.tensor([0.3], requires_grad=True)
(LSQFakeQuant.apply(a, s_a, -7, 7) * up).sum().backward()
(torch._fake_quantize_learnable_per_tensor_affine(b, s_b, torch.tensor([0.0]), -7, 7, 1.0) * up).sum().backward()
print(f"dL/dx equal: {torch.equal(a.grad, b.grad)}; dL/ds: ours {s_a.grad.item():.4f}, PyTorch {s_b.grad.item():.4f}, "
      f"relative difference < 1e-4: {abs(s_a.grad.item() - s_b.grad.item()) < 1e-4 * abs(s_b.grad.item())}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# With $\hat x = s \cdot \operatorname{clamp}(\operatorname{round}(x/s), q_\min, q_\max)$ and
# the STE for the rounding (its derivative taken as 1),
# $\partial\hat x/\partial s = \operatorname{round}(x/s) - x/s$ inside the range (the
# derivative of $s \cdot \operatorname{round}(x/s)$ is $\operatorname{round}(x/s) + s \cdot
# (-x/s^2)$), and $q_\min$ or $q_\max$ outside, where $\hat x = s\,q_\max$ (or $q_\min$)
# simply grows with $s$. So the scale is pushed up by clipped values and, inside, by the
# sign of each rounding error: the gradient balances clipping against rounding, the
# trade-off of notebook 5.1, learned. LSQ also multiplies this gradient by
# $1/\sqrt{N q_\max}$ ($N$ the number of values the scale serves) to keep the step size's
# updates in proportion with the weights'; PyTorch's op takes that factor as its last
# argument (1.0 above). The printout confirms both gradients.
# :::

# %% [markdown]
# ### Exercise 3: int8 on your machine (measure, easy)
# Time `ml.quant.int8_matmul` against a float32 matmul for $M = K = N = 1024$ on your own
# machine (laptop, Colab GPU) with `ml.bench.compare`. Which is faster? Which of the
# instructions named in section 5.3.5 does your CPU have?

# %% tags=["solution", "hide-cell"]
# Solution 3
n3 = ml.trim(1024, keep=256)
a32, b32 = torch.randn(n3, n3, device=dev), torch.randn(n3, n3, device=dev)
a8, b8 = ml.quant.quantize(a32, 8, axis=0)[0], ml.quant.quantize(b32, 8, axis=1)[0]
with torch.no_grad():
    c3 = ml.bench.compare(lambda: a32 @ b32, lambda: ml.quant.int8_matmul(a8, b8), warmup=2, repeat=ml.pick(smoke=5, cpu=15, gpu=20))
print(f"{n3}^3 on {CHIP}: int8_matmul ({ml.quant.int8_matmul_backend(dev)}) ran {speed_words(c3)} ({PRECISION})")
print(f"CPU vector extensions: {hw['cpu features']}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# The first printed line is the answer for the machine that ran this notebook. On a CUDA
# GPU with int8 tensor cores the int8 product runs at up to about twice the bf16 rate and
# many times the IEEE fp32 rate. On an x86 CPU the answer depends on the instructions in
# the second line: with AVX-512 VNNI, AVX-VNNI or AMX, `torch._int_mm`'s CPU kernel
# multiplies int8 pairs in wide integer dot products; without them it is emulated and can
# be slower than float32. On Linux, `grep -o 'avx512_vnni\|avx_vnni\|amx_int8' /proc/cpuinfo`
# answers the question; on a Mac with Apple silicon, look for the dot-product (`dotprod`)
# and `i8mm` features.
# :::

# %% [markdown]
# ### Exercise 4: dequantize in blocks (implement, medium)
# The dequantize-in-PyTorch kernel rebuilds the whole float weight before the matmul. Write
# `blocked_w4_matmul(x, layer, block)` for a 4-bit `WeightOnlyLinear` with groups: it
# dequantizes `block` input columns at a time (a multiple of the group size) and adds up
# `x[:, cols] @ W[:, cols].T`. Check that it equals `layer(x)` to float rounding, and
# compare its peak memory with `layer(x)`.

# %% tags=["solution", "hide-cell"]
# Solution 4
def blocked_w4_matmul(x, layer, block):
    codes, g = layer.codes(), layer.group_size                      # (out, in) int8, one scale per g inputs
    y = torch.zeros(x.shape[0], layer.out_features, device=x.device, dtype=x.dtype)
    for c0 in range(0, layer.in_features, block):
        q = codes[:, c0:c0 + block].to(x.dtype)                      # (out, block)
        s = layer.scale[:, c0 // g:(c0 + block) // g].to(x.dtype)     # (out, block / g)
        W_blk = (q.unflatten(1, (-1, g)) * s[..., None]).flatten(1)
        y += x[:, c0:c0 + block] @ W_blk.T
    return y


x4 = torch.randn(4, K, device=dev)
with torch.no_grad():
    err4 = rel_err(blocked_w4_matmul(x4, w4, 256), w4(x4).float())
    peaks = {name: ml.bench.peak_memory(fn, x4, device=dev)
             for name, fn in [("dequantize whole weight", w4), ("blocks of 256 columns", lambda t: blocked_w4_matmul(t, w4, 256))]}
print(f"blocked = layer(x): relative error < 1e-5: {err4 < 1e-5}; peak extra memory: "
      + ", ".join(f"{k} {ml.bench.fmt_bytes(v)}" for k, v in peaks.items()) + f" (float32 weight: {ml.bench.fmt_bytes(4 * K * N)})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# Column blocks of a weight contribute independent partial sums, $xW^\top = \sum_b
# x_{:,b}W_{:,b}^\top$, so dequantizing one block at a time gives the same product (up to
# the order of the float additions), and the largest temporary is one block of the weight
# instead of the whole float weight: the printout shows the peak memory fall accordingly.
# It does not make the matmul fast: each block is still written to memory in float and read
# back. A fused kernel goes one step further and dequantizes each small tile in registers,
# right before the multiply-adds, so the float weight never exists in memory at all.
# :::

# %% [markdown]
# ## Key takeaways
#
# - The straight-through estimator passes gradients through the rounding and stops them
#   where values are clipped; with it, {glue:}`qat_steps` steps of QAT changed the W4A4 MLP
#   by {glue:}`W4A4_qat_change` points against PTQ ({glue:}`W4A4_qat_verdict`) and the
#   W2A4 MLP by {glue:}`W2A4_qat_change` ({glue:}`W2A4_qat_verdict`).
# - At 8 bits integer and FP8 formats both stay close to float32 on these models
#   ({glue:}`n_eight_same` of {glue:}`n_eight` comparisons without a measurable
#   difference); at 4 bits the scale granularity matters as much as the choice between
#   integer and FP grids.
# - Bytes are saved everywhere; time only where a kernel and the hardware exploit them:
#   int8 and bf16 dot-product instructions or tensor cores for compute-bound GEMMs, fused
#   dequantization for memory-bound weight-only inference. Name the chip when you quote a
#   speed-up: on {glue:}`chip` a fused int4 single-row matmul ran {glue:}`w4f_1_words`,
#   the int8 GEMM at M = {glue:}`M_big` {glue:}`int8mm_big_words`.

# %% [markdown]
# ## Chapter summary
#
# Measured in this chapter at the scale and on the hardware in each notebook's banner:
# the accuracy and loss at each bit width are in the last table of notebook 5.2, with the
# paired tests that decide which differences are real; W4A4 QAT of the MLP reached
# {glue:}`W4A4_qat`% (float32 {glue:}`mlp_fp32` ± {glue:}`mlp_fp32_se`%); on
# {glue:}`chip` the int8 GEMM ran {glue:}`int8mm_big_words` at M = {glue:}`M_big`, and
# fused weight-only int4 {glue:}`w4f_1_words` for a single row.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
