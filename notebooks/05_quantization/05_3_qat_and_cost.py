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
# 16-bit floats on the machine named in the banner, and say plainly what is fast here and
# what is not.
#
# **Learning objectives.** After this notebook you can
# 1. explain and check the straight-through estimator, and fine-tune a low-bit model with it;
# 2. compare integer and floating-point formats (FP8, FP4) on trained models;
# 3. count a quantized model's bytes, and time int8 and weight-only kernels honestly;
# 4. draw the accuracy-versus-bytes Pareto front of all variants and pick a format.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import copy

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 1. The straight-through estimator
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
fig, ax = plt.subplots(figsize=(6.4, 3))
ax.plot(x.detach(), y.detach(), label="forward: $\\hat x$ (2 bits, range $\\pm 1.5$)")
ax.plot(x.detach(), x.grad, "--", label="backward: STE $\\partial \\hat x / \\partial x$")
ax.set(xlabel="x", title="Fake quantization and its straight-through gradient")
ax.legend()
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
# ## 2. Quantization-aware training of the MLP
#
# A `QuantLinear` keeps a float `weight` and fake-quantizes it in every forward pass, so
# the same model that we calibrated for PTQ can simply be trained: the optimizer updates
# the float "shadow" weights, and the STE carries the gradient through the quantizers.
# We take chapter 1's Fashion-MNIST MLP (784-1024-1024-10 at the `cpu` scale), quantize all
# three layers at two aggressive settings, W4A4 (4-bit weights per channel, 4-bit
# activations per tensor) and W2A4 (ternary weights), calibrate them with the MSE rule,
# and fine-tune each for a few hundred steps with a small learning rate. (Learned step
# sizes, as in LSQ {cite}`esser2020lsq`, would also train the scales; here they stay
# fixed at their calibrated values.)

# %%
mlp, mlp_record = ml.baselines.fashion_mlp()
fm_norm = dict(mean=ml.data.FASHION_MNIST_MEAN, std=ml.data.FASHION_MNIST_STD, device=dev)
fm_test = ml.data.DeviceLoader(*ml.data.subset(*ml.data.fashion_mnist(train=False), ml.pick(smoke=500, cpu=5000, gpu=10_000)),
                               1000, shuffle=False, **fm_norm)
fm_train_x, fm_train_y = ml.data.fashion_mnist(train=True)
fm_calib = list(ml.data.DeviceLoader(*ml.data.subset(fm_train_x, fm_train_y, ml.pick(smoke=256, cpu=2048, gpu=4096), seed=1),
                                     256, shuffle=False, **fm_norm))


def accuracy(model):
    return 100 * ml.train.evaluate(model, fm_test)["accuracy"]


def mlp_ptq(w_bits, a_bits=None, group=None, method="mse"):
    q = ml.quant.quantize_model(mlp, w_bits=w_bits, a_bits=a_bits, group_size=group, a_symmetric=False)
    return ml.quant.calibrate(q, fm_calib, method) if a_bits is not None else q


qat_steps = ml.pick(smoke=20, cpu=300, gpu=1000)
fm_train = ml.data.DeviceLoader(fm_train_x, fm_train_y, 256, shuffle=True, drop_last=True,
                                generator=torch.Generator(device=dev).manual_seed(0), **fm_norm)
fp32_acc = accuracy(mlp)
qat_rows, qat_histories, mlp_points = [], {}, []
for label, w_bits, a_bits in [("W4A4", 4, 4), ("W2A4", 2, 4)]:
    ptq_model = mlp_ptq(w_bits, a_bits)
    ptq_acc = accuracy(ptq_model)
    qat_model = copy.deepcopy(ptq_model)
    ml.seed_all(0)
    optimizer = torch.optim.AdamW(qat_model.parameters(), lr=1e-4, weight_decay=0.0)
    hist = ml.train.fit(qat_model, fm_train, optimizer=optimizer, steps=qat_steps,
                        schedule=ml.train.warmup_cosine(qat_steps, qat_steps // 10, final=0.1),
                        eval_loader=fm_test, eval_every=max(1, qat_steps // 5), progress=False)
    qat_acc = accuracy(qat_model)
    qat_histories[f"{label} QAT"] = hist
    qat_rows.append({"config": label, "float32": fp32_acc, "PTQ": ptq_acc, "QAT": qat_acc,
                     "QAT train time (s)": hist.last("time"), "bytes": ml.quant.quantized_bytes(qat_model)})
    mlp_points += [{"name": f"{label} PTQ", "bytes": ml.quant.quantized_bytes(ptq_model), "accuracy": ptq_acc},
                   {"name": f"{label} QAT", "bytes": ml.quant.quantized_bytes(qat_model), "accuracy": qat_acc}]
qat_table = ml.bench.Table(qat_rows, title=f"MLP on Fashion-MNIST: PTQ vs {qat_steps} steps of QAT (test accuracy %)",
                           formats={"float32": "{:.2f}", "PTQ": "{:.2f}", "QAT": "{:.2f}", "QAT train time (s)": "{:.1f}",
                                    "bytes": ml.bench.fmt_bytes})
qr = {r["config"]: r for r in qat_rows}
ml.glue("mlp_fp32", fp32_acc, ".2f")
ml.glue("qat_steps", qat_steps)
ml.glue("qat_epochs", qat_steps * fm_train.batch_size / len(fm_train_y), ".1f")
for key in ("W4A4", "W2A4"):
    ml.glue(f"{key}_ptq", qr[key]["PTQ"], ".2f")
    ml.glue(f"{key}_qat", qr[key]["QAT"], ".2f")
    ml.glue(f"{key}_qat_time", qr[key]["QAT train time (s)"], ".0f")
qat_table

# %%
ml.plot.learning_curves(qat_histories, y="val_accuracy", x="step",
                        title="QAT: test accuracy during fine-tuning")
plt.show()

# %% [markdown]
# After calibration alone, W4A4 reaches {glue:}`W4A4_ptq`% and W2A4
# {glue:}`W2A4_ptq`% (float32: {glue:}`mlp_fp32`%). {glue:}`qat_steps` steps of QAT
# ({glue:}`qat_epochs` epochs, {glue:}`W4A4_qat_time` s here) bring them to
# {glue:}`W4A4_qat`% and {glue:}`W2A4_qat`%. The network moves its float weights so that their *rounded*
# versions work, something no post-training rounding rule can do.
#
# ## 3. Integer or floating-point formats on trained models
#
# Notebook 5.1 compared the formats on synthetic data. Here they quantize the trained MLP
# and CharGPT: weights only (each linear weight rounded through the format with a
# per-tensor or per-group scale), and weights plus activations (each linear layer's input
# rounded the same way, with a scale computed on the fly, i.e. dynamically).

# %%
gpt, _ = ml.baselines.char_gpt()
corpus = ml.data.shakespeare()
gpt_test = list(ml.data.TokenBatches(corpus.val_ids, gpt.block_size, 32, steps=ml.pick(smoke=2, cpu=10, gpu=50),
                                     device=dev, generator=torch.Generator().manual_seed(1234)))


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
rows = []
for name, bits_w, w_fn, a_fn in formats:
    m = round_through(mlp, w_fn, a_fn, skip=())
    g = round_through(gpt, w_fn, a_fn)
    rows.append({"format": name, "bits/weight": bits_w, "MLP accuracy %": accuracy(m),
                 "CharGPT val loss": ml.train.evaluate(g, gpt_test)["loss"]})
    n_weights = sum(l.weight.numel() for l in mlp.modules() if isinstance(l, nn.Linear))
    mlp_points.append({"name": name, "bytes": bits_w * n_weights / 8 + 4 * sum(
        l.bias.numel() for l in mlp.modules() if isinstance(l, nn.Linear)), "accuracy": rows[-1]["MLP accuracy %"]})
gpt_fp32 = ml.train.evaluate(gpt, gpt_test)["loss"]
fmt_table = ml.bench.Table([{"format": "float32", "bits/weight": 32, "MLP accuracy %": fp32_acc, "CharGPT val loss": gpt_fp32}] + rows,
                           title="number formats on trained models (per-tensor scales unless grouped; 32-bit scales)",
                           formats={"MLP accuracy %": "{:.2f}", "CharGPT val loss": "{:.3f}"})
fr = {r["format"]: r for r in rows}
ml.glue("gpt_fp32", gpt_fp32, ".3f")
for name, key in (("W4A4 int4 g16", "w4a4_int"), ("W4A4 fp4 g16", "w4a4_fp"), ("W8A8 fp8 E4M3", "w8a8_fp8"),
                  ("W8A8 int8 (dynamic)", "w8a8_int8"), ("fp4 E2M1 per tensor", "fp4_pt"), ("int4 per channel", "int4_pc")):
    ml.glue(f"{key}_gpt", fr[name]["CharGPT val loss"], ".3f")
    ml.glue(f"{key}_mlp", fr[name]["MLP accuracy %"], ".2f")
fmt_table

# %% [markdown]
# Eight-bit formats, integer or float, are within noise of float32 on both models (W8A8 in
# FP8 E4M3: {glue:}`w8a8_fp8_gpt` nats; int8: {glue:}`w8a8_int8_gpt`; float32:
# {glue:}`gpt_fp32`). With weights *and* activations in 4 bits (groups of 16, as in
# NVIDIA's NVFP4), CharGPT's loss is {glue:}`w4a4_fp_gpt` nats with FP4 and
# {glue:}`w4a4_int_gpt` with int4, and the MLP's accuracy {glue:}`w4a4_fp_mlp`% and
# {glue:}`w4a4_int_mlp`%. With 4-bit weights only, compare FP4 with a single scale per
# tensor ({glue:}`fp4_pt_gpt` nats, {glue:}`fp4_pt_mlp`%) and int4 with a scale per output
# channel ({glue:}`int4_pc_gpt` nats, {glue:}`int4_pc_mlp`%): the float grid's finer steps
# near zero do part of the work that finer scales do for an integer grid. Our models are
# small and forgiving; the differences LLM-FP4 reports appear at billions of parameters
# and with 4-bit activations of much heavier tails.
#
# ## 4. What quantization saves: bytes
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
base = rows[0]["bytes in memory"]
for r in rows:
    r["vs float32"] = base / r["bytes in memory"]
bytes_table = ml.bench.Table(rows, title="CharGPT, measured bytes of the stored model (embeddings stay float32)",
                             formats={"bytes in memory": ml.bench.fmt_bytes, "vs float32": "{:.2f}x"})
ml.glue("gpt_w4_ratio", rows[4]["vs float32"], ".1f")
emb = sum(p.numel() * 4 for n, p in gpt.named_parameters() if "emb" in n)
ml.glue("gpt_emb_share", 100 * emb / base, ".0f")
bytes_table

# %% [markdown]
# 4-bit weights in groups of 32 shrink CharGPT {glue:}`gpt_w4_ratio` times, not 8: its
# token and position embeddings ({glue:}`gpt_emb_share`% of the float32 bytes at this
# scale), norms and biases stay in float32, and each group carries a 32-bit scale. In a
# multi-billion-parameter LLM the linear layers dominate and the ratio approaches the ideal.
#
# ## 5. What quantization saves: time
#
# Fewer bytes are faster only if a kernel reads the small integers directly. There are
# two different speed-ups to look for:
#
# - **int8 GEMM** (W8A8): both operands int8, products accumulated in int32. On GPUs with
#   integer tensor cores this doubles peak throughput over fp16/bf16; PyTorch exposes it as
#   `torch._int_mm` (cuBLAS). `ml.quant.int8_matmul` wraps it (with the padding it needs)
#   and falls back to an exact int32 matmul elsewhere. This matters for **compute-bound**
#   work: large batches, prefill.
# - **weight-only** (W8A16, W4A16): activations stay float; the kernel reads int8 or int4
#   weights and dequantizes them in registers. This matters for **memory-bound** work:
#   batch-1 generation reads every weight once per token (chapter 1's roofline). PyTorch
#   has fused kernels for it (`torch._weight_int8pack_mm`, `torch._weight_int4pack_mm`);
#   our `WeightOnlyLinear(kernel="dequant")` instead materializes the float weight with
#   plain PyTorch ops, which costs *more* traffic than a float weight, and is there to
#   show why fusion is the whole point.
#
# First the matrix products alone, for a batch-1 (decode-like) and a batched
# (prefill-like) shape. Every result is checked against the float32 product before it is
# timed: a fast wrong kernel would be worthless.

# %%
K = N = ml.pick(smoke=256, cpu=2048, gpu=8192)
batch_sizes = ml.pick(smoke=[1, 32], cpu=[1, 64], gpu=[1, 16, 4096])
repeat = ml.pick(smoke=3, cpu=5, gpu=50)
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
print(f"int8 GEMM here: {ml.quant.int8_matmul_backend(dev)}")
print(f"fused weight-only int8: {w8_msg}; fused weight-only int4: {w4_msg}")


def w8a8_linear(x):
    """Dynamic W8A8: quantize x per row, int8 GEMM with int32 accumulation, rescale."""
    x_q, s_x, _ = ml.quant.quantize(x, 8, axis=0)
    return ml.quant.int8_matmul(x_q, w_q8_t).float() * s_x[:, None] * s_w8[None, :]


def time_variant(fn, x, reference, tol):
    """Median time of fn(x) after checking its result against the float32 reference."""
    with torch.no_grad():
        out = fn(x).float()
        err = ((out - reference).norm() / reference.norm()).item()
        if not err <= tol:
            return None, f"wrong result (relative error {err:.2g})"
        return ml.bench.time_fn(fn, x, warmup=2, repeat=repeat).median, f"{err:.1e}"


rows = []
for M in batch_sizes:
    x = torch.randn(M, K, generator=gen).to(dev)
    ref = x @ w.T
    variants = [
        ("float32", lambda t: t @ w.T, x, 1e-5),
        ("bfloat16", lambda t: t @ w_bf16.T, x.bfloat16(), 2e-2),
        ("float16", lambda t: t @ w_fp16.T, x.half(), 2e-2),
        ("int8 x int8 -> int32 (int8_matmul)", lambda t: ml.quant.int8_matmul(t, w_q8_t), None, None),
        ("W8A8 linear (quantize x + int8 GEMM + rescale)", w8a8_linear, x, 2e-2),
        ("W8 weight-only, dequantize in PyTorch", w8, x, 2e-2),
        ("W4 g64 weight-only, dequantize in PyTorch", w4, x, 2e-1),
    ]
    if dev.type == "cpu":
        variants.insert(4, ("int8 x int8 -> int32 (torch._int_mm)", lambda t: torch._int_mm(t, w_q8_t), None, None))
    if w8_ok:
        variants.append(("W8 weight-only, fused kernel (bf16)", w8_fused, x.to(low), 2e-2))
    if w4_ok:
        variants.append(("W4 g64 weight-only, fused kernel (bf16)", w4_fused, x.to(low), 2e-1))
    x_q8 = ml.quant.quantize(x, 8, axis=0)[0]
    int_ref = (x_q8.double() @ w_q8.double().T)
    for name, fn, inp, tol in variants:
        if inp is None:  # integer GEMMs: compare with the exact integer product
            with torch.no_grad():
                exact = torch.equal(fn(x_q8).double(), int_ref)
            t = ml.bench.time_fn(fn, x_q8, warmup=2, repeat=repeat).median if exact else None
            check = "exact" if exact else "wrong result"
        else:
            t, check = time_variant(fn, inp, ref, tol)
        rows.append({"M (rows)": M, "kernel": name, "time": t, "check": check})
    base = next(r["time"] for r in rows if r["M (rows)"] == M and r["kernel"] == "float32")
    for r in rows:
        if r["M (rows)"] == M and r["time"] is not None:
            r["speed-up vs float32"] = base / r["time"]
gemm_table = ml.bench.Table(rows, title=f"(M x {K}) @ ({K} x {N}) on {dev.type}; median of {repeat} runs",
                            formats={"time": lambda t: ml.bench.fmt_time(t) if t else "n/a",
                                     "speed-up vs float32": "{:.2f}x"})
speed = {(r["M (rows)"], r["kernel"]): r.get("speed-up vs float32") for r in rows}
M_small, M_big = batch_sizes[0], batch_sizes[-1]
fmt_speed = lambda v: "n/a" if v is None else f"{v:.2f}"
ml.glue("gemm_K", K)
ml.glue("M_big", M_big)
ml.glue("int8_gemm_speedup", fmt_speed(speed.get((M_big, "int8 x int8 -> int32 (int8_matmul)"))))
ml.glue("int_mm_speedup", fmt_speed(speed.get((M_big, "int8 x int8 -> int32 (torch._int_mm)"))))
ml.glue("bf16_speedup", fmt_speed(speed.get((M_big, "bfloat16"))))
ml.glue("w8a8_speedup", fmt_speed(speed.get((M_big, "W8A8 linear (quantize x + int8 GEMM + rescale)"))))
ml.glue("w8_deq_speedup_1", fmt_speed(speed.get((M_small, "W8 weight-only, dequantize in PyTorch"))))
ml.glue("w8_fused_speedup_1", fmt_speed(speed.get((M_small, "W8 weight-only, fused kernel (bf16)"))))
ml.glue("w8_fused_speedup_big", fmt_speed(speed.get((M_big, "W8 weight-only, fused kernel (bf16)"))))
ml.glue("w4_fused_speedup_big", fmt_speed(speed.get((M_big, "W4 g64 weight-only, fused kernel (bf16)"))))
ml.glue("w4_fused_speedup_1", fmt_speed(speed.get((M_small, "W4 g64 weight-only, fused kernel (bf16)"))))
ml.glue("w4_deq_speedup_1", fmt_speed(speed.get((M_small, "W4 g64 weight-only, dequantize in PyTorch"))))
gemm_table

# %% [markdown]
# Read the table for the hardware in the banner; the numbers are this run's. At
# $M = $ {glue:}`M_big` rows the int8 GEMM runs at {glue:}`int8_gemm_speedup` times the
# speed of float32 (`torch._int_mm` itself, where we call it directly on a CPU:
# {glue:}`int_mm_speedup`x), bfloat16 at {glue:}`bf16_speedup`x, and a whole dynamic W8A8
# linear layer, quantization of the input included, at {glue:}`w8a8_speedup`x. For one row
# (a decoding step, which reads the whole {glue:}`gemm_K` x {glue:}`gemm_K` weight for a
# single output row), weight-only int8 dequantized in PyTorch runs at
# {glue:}`w8_deq_speedup_1`x and int4 at {glue:}`w4_deq_speedup_1`x, while PyTorch's fused
# weight-only kernels, which read the codes and dequantize them in registers, give
# {glue:}`w8_fused_speedup_1`x (int8) and {glue:}`w4_fused_speedup_1`x (int4); with
# {glue:}`M_big` rows they give {glue:}`w8_fused_speedup_big`x and
# {glue:}`w4_fused_speedup_big`x.
#
# On a CPU without integer dot-product instructions (AVX-512 VNNI or AMX on x86, the dot
# product extensions on Arm) and without native bf16/fp16 arithmetic, the 8- and 16-bit
# GEMMs have nothing to gain and are emulated or converted element by element: where the
# table shows them slower than float32, often by a large factor, that is a property of the
# hardware and of PyTorch's CPU kernels, not of quantization. On a GPU, or on a CPU with
# VNNI/AMX, the same code takes the fast path (run this notebook at the `gpu` scale to see
# it). What can win even here is the memory-bound single row, where a fused kernel reads
# 4 (int8) or 8 (int4) times fewer weight bytes than float32 (and a 16-bit matmul half
# of them). The lesson is the one
# chapter 1 taught: *measure* on the target; a FLOP or a byte saved on paper is not a
# second saved on your machine.
#
# ### End to end
#
# The same question for whole models: CharGPT on a single token (what one decoding step
# costs without a KV cache: every weight is read for one row), on one and on 16 full
# contexts, and the MLP on one image and on 256. The fused kernels run with bfloat16
# activations (their fast path), and so does the rest of the model then. We report the
# median latency, the bytes of the weights in memory, and the peak memory the forward pass
# allocates on top of them.

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
    act = low
    for layer in m.modules():
        if isinstance(layer, ml.quant.WeightOnlyLinear) and not layer.prepare_fused(act)[0]:
            return None, None
    return m.to(act), act  # the rest of the model (norms, embeddings) in the same dtype


all_kinds = ["float32", "bfloat16", "W8 dequant", "W8 fused", "W4 g64 dequant", "W4 g64 fused"]
tokens = lambda n, t: torch.randint(0, corpus.vocab_size, (n, t), device=dev)
cases = [  # the MLP's first layer has 784 inputs, no multiple of 64: 4-bit rows would keep it in float
    ("CharGPT, 1 token (a decoding step)", gpt, skip_gpt, tokens(1, 1), all_kinds),
    ("CharGPT, 1 x full context", gpt, skip_gpt, tokens(1, gpt.block_size), all_kinds),
    ("CharGPT, 16 x full context", gpt, skip_gpt, tokens(16, gpt.block_size), all_kinds),
    ("MLP, 1 image", mlp, (), torch.randn(1, 1, 28, 28, device=dev), all_kinds[:4]),
    ("MLP, 256 images", mlp, (), torch.randn(256, 1, 28, 28, device=dev), all_kinds[:4]),
]
rows = []
for case, model, skip, x, kinds in cases:
    base = None
    for kind in kinds:
        m, act = deploy(model, kind, skip)
        if m is None:
            rows.append({"model / input": case, "weights": kind, "latency": None})
            continue
        m.eval()
        inp = x.to(act) if x.is_floating_point() else x
        with torch.no_grad():
            t = ml.bench.time_fn(m, inp, warmup=2, repeat=ml.pick(smoke=3, cpu=10, gpu=50)).median
            peak = ml.bench.peak_memory(m, inp, device=dev)
        base = base or t
        rows.append({"model / input": case, "weights": kind, "latency": t, "speed-up": base / t,
                     "weight bytes": ml.bench.model_bytes(m), "peak extra memory": peak})
e2e_table = ml.bench.Table(rows, title=f"end-to-end inference on {dev.type} ({ml.scale()} scale)",
                           formats={"latency": lambda t: ml.bench.fmt_time(t) if t else "n/a", "speed-up": "{:.2f}x",
                                    "weight bytes": ml.bench.fmt_bytes, "peak extra memory": ml.bench.fmt_bytes})
ee = {(r["model / input"], r["weights"]): r for r in rows}
fmt_e2e = lambda r: "n/a" if r.get("latency") is None else f"{r['speed-up']:.2f}"
dec, ctx = "CharGPT, 1 token (a decoding step)", "CharGPT, 16 x full context"
for case, key in ((dec, "dec"), (ctx, "ctx"), ("MLP, 1 image", "mlp1")):
    for kind, kk in (("bfloat16", "bf16"), ("W8 dequant", "w8d"), ("W8 fused", "w8f"),
                     ("W4 g64 dequant", "w4d"), ("W4 g64 fused", "w4f")):
        if (case, kind) in ee:
            ml.glue(f"e2e_{key}_{kk}", fmt_e2e(ee[(case, kind)]))
ml.glue("e2e_mlp1_w8d_mem", ml.bench.fmt_bytes(ee[("MLP, 1 image", "W8 dequant")].get("peak extra memory") or 0))
ml.glue("e2e_mlp1_fp_mem", ml.bench.fmt_bytes(ee[("MLP, 1 image", "float32")].get("peak extra memory") or 0))
ml.glue("e2e_gpt_w4_bytes", ml.bench.fmt_bytes(ee[(dec, "W4 g64 dequant")]["weight bytes"]))
ml.glue("e2e_gpt_fp_bytes", ml.bench.fmt_bytes(ee[(dec, "float32")]["weight bytes"]))
e2e_table

# %% [markdown]
# For a single decoding step of CharGPT (every weight read for one token) fused int8
# weights run at {glue:}`e2e_dec_w8f`x the speed of float32 here, fused int4 at
# {glue:}`e2e_dec_w4f`x, bfloat16 at {glue:}`e2e_dec_bf16`x, and dequantizing in PyTorch at
# {glue:}`e2e_dec_w8d`x (int8) and {glue:}`e2e_dec_w4d`x (int4). At this scale CharGPT's
# float32 weights ({glue:}`e2e_gpt_fp_bytes`) fit in the CPU's caches and a decoding step
# is dominated by the fixed cost of launching a few dozen small operations, so there is
# little memory traffic to save; the single large matmul above is the memory-bound case.
# For 16 full-context sequences (compute-bound) the fused kernels give
# {glue:}`e2e_ctx_w8f`x and {glue:}`e2e_ctx_w4f`x. With one image the MLP with fused int8
# weights runs at {glue:}`e2e_mlp1_w8f`x. The dequantize-in-PyTorch MLP allocates
# {glue:}`e2e_mlp1_w8d_mem` during a one-image forward pass (float32:
# {glue:}`e2e_mlp1_fp_mem`): it rebuilds each float weight. The memory saving of the stored
# weights is real everywhere ({glue:}`e2e_gpt_w4_bytes` instead of {glue:}`e2e_gpt_fp_bytes`
# for CharGPT in int4); the speed-up depends on the kernels this device has.
#
# ## 6. Accuracy per byte
#
# Every MLP variant of this notebook (post-training integer quantization at each bit
# width, QAT, and the float formats) as a point: test accuracy against the bytes of the
# stored weights.

# %%
for label, w_bits, a_bits, group in [("W8A8 PTQ", 8, 8, None), ("W8 PTQ", 8, None, None), ("W4 PTQ", 4, None, None),
                                     ("W4 g16 PTQ", 4, None, 16), ("W3 PTQ", 3, None, None), ("W2 PTQ", 2, None, None),
                                     ("W2 g16 PTQ", 2, None, 16)]:
    q = mlp_ptq(w_bits, a_bits, group)
    mlp_points.append({"name": label, "bytes": ml.quant.quantized_bytes(q), "accuracy": accuracy(q)})
mlp_points.append({"name": "float32", "bytes": ml.bench.model_bytes(mlp), "accuracy": fp32_acc})
front = ml.plot.pareto_front(mlp_points, x="bytes", y="accuracy")
on_front = {p["name"] for p in front}
points = [{**p, "MB": p["bytes"] / 1e6, "label": p["name"] if p["name"] in on_front else None} for p in mlp_points]
ml.plot.pareto(points, x="MB", y="accuracy", label="label", logx=True,
               title=f"MLP on Fashion-MNIST: test accuracy vs weight bytes ({ml.scale()} scale)")
plt.show()
ml.glue("mlp_front", ", ".join(p["name"] for p in front))
ml.bench.Table(sorted(({"variant": p["name"], "weight bytes": p["bytes"], "accuracy %": p["accuracy"],
                        "on the front": p["name"] in on_front} for p in mlp_points), key=lambda r: r["weight bytes"]),
               title="every MLP variant, by size", formats={"weight bytes": ml.bench.fmt_bytes, "accuracy %": "{:.2f}"})

# %% [markdown]
# On the front here: {glue:}`mlp_front`. Quantization-aware training is what makes the
# smallest models usable; among post-training variants, 8 and 4 bits per channel cost
# almost nothing, and below that every bit saved costs accuracy.
#
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`bengio2013estimating`, {cite}`jacob2018quantization` | training through fake quantization with the straight-through estimator recovers the accuracy lost by quantization | W4A4 MLP: PTQ {glue:}`W4A4_ptq`% → QAT {glue:}`W4A4_qat`% (float32 {glue:}`mlp_fp32`%) after {glue:}`qat_steps` steps |
# | {cite}`panferov2025quest` | with better quantizers (Hadamard normalization, MSE-optimal fitting) and a "trust" gradient estimator, QAT is Pareto-optimal at 4-bit weights and activations and stable down to 1 bit | plain STE QAT: W2A4 {glue:}`W2A4_ptq`% → {glue:}`W2A4_qat`%; the Pareto plot above |
# | {cite}`he2023bivit` | binary ViTs need softmax-aware binarization and learnable weight scales; BiViT reaches 75.6% top-1 on ImageNet with Swin-S and beats prior binary methods by 19.8% on TinyImageNet | our lowest point is ternary weights (W2), recovered by QAT to {glue:}`W2A4_qat`% on the MLP |
# | {cite}`micikevicius2022fp8` | FP8 training matches 16-bit result quality; the paper also examines FP8 post-training quantization of language models that resisted int8 | CharGPT W8A8: FP8 {glue:}`w8a8_fp8_gpt`, int8 {glue:}`w8a8_int8_gpt`, float32 {glue:}`gpt_fp32` nats: both fine at this scale |
# | {cite}`liu2023llmfp4` | W4A4 in FP4 for LLaMA-13B scores 63.1 on zero-shot reasoning, 5.8 below full precision and 12.7 above the previous state of the art | CharGPT W4A4 (g16): FP4 {glue:}`w4a4_fp_gpt` vs int4 {glue:}`w4a4_int_gpt` nats |
# | {cite}`xiao2023smoothquant` | W8A8 gives up to 1.56x speed-up and 2x memory reduction for LLMs (GPU, FasterTransformer) | int8 GEMM at M={glue:}`M_big`: {glue:}`int8_gemm_speedup`x; whole W8A8 layer {glue:}`w8a8_speedup`x ({glue:}`gemm_K`-wide, device in the banner) |
# | {cite}`frantar2023gptq` | 4-bit weights give about 3.25x end-to-end speed-up of generation on A100 (4.5x on A6000) with custom kernels | fused int4 weight-only matmul, one row: {glue:}`w4_fused_speedup_1`x; a CharGPT decoding step with fused int4 weights: {glue:}`e2e_dec_w4f`x |
# | {cite}`tan2024mobilequant` | integer-only W8A8 on a phone NPU cuts latency and energy by 20-50% vs current on-device schemes | our CPU has no int8 dot-product unit: int8 is slower than float32 here (table above) |
# | {cite}`sassoon2025isegmenter` | an integer-only ViT segmenter is up to 3.8x smaller and up to 1.2x faster with optimized runtimes | CharGPT W4 g32: {glue:}`gpt_w4_ratio`x smaller; speed as in the tables above |
# | {cite}`wang2024qvlm` | about 2.78x memory compression and 1.44x faster generation for 13B LLaVA | CharGPT bytes: {glue:}`gpt_w4_ratio`x at 4 bits |
#
# ## Exercises
#
# 1. Run the W2A4 QAT with a 10x larger learning rate (the one the MLP was trained with),
#    and with 4x more steps. Which helps more? What can go wrong with large steps in QAT?
# 2. Make the activation ranges learnable (LSQ {cite}`esser2020lsq`): store
#    `a_scale` as an `nn.Parameter` and give `fake_quant` a gradient with respect to the
#    scale. What is $\partial \hat x / \partial s$ inside and outside the range?
# 3. Time `torch._int_mm` against a float32 matmul for $M = K = N = 4096$ on your own
#    machine (laptop, Colab GPU). Which is faster? Look up whether your CPU has VNNI or AMX.
#
# :::{dropdown} Solution 1
# ```python
# for lr, steps in [(1e-3, 300), (1e-4, 1200)]:
#     q = mlp_ptq(2, 4)
#     opt = torch.optim.AdamW(q.parameters(), lr=lr, weight_decay=0.0)
#     ml.train.fit(q, fm_train, optimizer=opt, steps=steps,
#                  schedule=ml.train.warmup_cosine(steps, steps // 10, final=0.1))
#     print(lr, steps, accuracy(q))
# ```
# In our runs both helped about equally, and both beat the 300 steps at 1e-4 above: with
# ternary weights the float shadow weights must travel far before their rounded values
# change, and larger or more steps get them there. The risk of large steps is
# oscillation: a weight near a rounding boundary flips between two grid points from one
# step to the next, so the rounded network the loss sees keeps changing. That is why QAT
# recipes decay the learning rate to (near) zero, and at 4 bits and above, where the
# PTQ model is already close, fine-tune at a fraction of the original learning rate.
# :::
#
# :::{dropdown} Solution 2
# With $\hat x = s \cdot \operatorname{clamp}(\operatorname{round}(x/s), q_\min, q_\max)$ and
# the STE for the rounding, $\partial\hat x/\partial s = \operatorname{round}(x/s) - x/s$
# inside the range and $q_\min$ or $q_\max$ outside. LSQ also scales this gradient by
# $1/\sqrt{N q_\max}$ to keep the step size's updates in proportion with the weights'.
# :::
#
# :::{dropdown} Solution 3
# ```python
# a = torch.randint(-128, 128, (4096, 4096), dtype=torch.int8)
# print(ml.bench.time_fn(torch._int_mm, a, a), ml.bench.time_fn(torch.mm, a.float(), a.float()))
# ```
# On a CUDA GPU with int8 tensor cores the int8 product is up to about twice as fast as
# fp16. On an x86 CPU the answer depends on VNNI/AMX (`grep -o 'avx512_vnni\|amx' /proc/cpuinfo`):
# without them int8 is slower than float32.
# :::
#
# ## Key takeaways
#
# - The straight-through estimator passes gradients through the rounding and stops them
#   where values are clipped; with it, a few hundred steps of QAT recover most of what
#   post-training quantization loses at 4 and 2 bits.
# - At 8 bits integer and FP8 formats are both nearly lossless; at 4 bits the scale
#   granularity matters as much as the choice between integer and FP grids.
# - Bytes are saved everywhere; time only where a kernel exploits them: int8 tensor cores
#   for compute-bound GEMMs, fused dequantization for memory-bound weight-only inference.
#   Measure on the target hardware.
#
# ## Chapter summary
#
# Measured in this chapter at the scale and on the hardware in each notebook's banner:
# the accuracy and loss at each bit width are in the last table of notebook 5.2; W4A4 QAT
# of the MLP reached {glue:}`W4A4_qat`% (float32 {glue:}`mlp_fp32`%); on this device the
# int8 GEMM ran at {glue:}`int8_gemm_speedup`x float32 speed at M={glue:}`M_big`, and
# fused weight-only int4 at {glue:}`w4_fused_speedup_1`x for a single row.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
