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
# # 1.2 Baselines every chapter compares against
#
# "Technique X makes training twice as fast" means nothing without the baseline it was
# measured against. A weak baseline (a badly tuned optimizer, a slow data pipeline, a model
# that wastes half its FLOPs) makes every technique look good. Benchmarks such as
# DAWNBench {cite}`coleman2017dawnbench` and MLPerf {cite}`mattson2020mlperf` therefore
# measure **time to a fixed quality** on a fixed task, with well-tuned reference recipes.
# This notebook trains the four baselines the rest of the book measures against, and
# records for each one its quality, its training time, and its costs: parameters, FLOPs,
# inference throughput and peak memory.
#
# | baseline | task | why it is here |
# | --- | --- | --- |
# | ResNet-9 {cite}`he2016resnet,page2018resnet` | CIFAR-10 {cite}`krizhevsky2009cifar` | a fast, well-studied CNN: normalization, channel attention, quantization and pruning chapters start from it |
# | ViT {cite}`dosovitskiy2021vit` | CIFAR-10 | the transformer for images: attention variants, token pruning, normalization placement |
# | MLP | Fashion-MNIST {cite}`xiao2017fashion` | the simplest network: activation sparsity and quantization are easiest to see in it |
# | CharGPT {cite}`radford2019gpt2,karpathy2022nanogpt` | Tiny Shakespeare {cite}`karpathy2015charrnn` | a small causal language model: KV cache, normalization, quantization of LLM-style layers |
#
# **Learning objectives.** After this notebook you can
# 1. keep a GPU busy by holding the data and the augmentation on the device;
# 2. report a training run the way the book does: quality, time, time-to-accuracy, cost;
# 3. reuse chapter 1's trained models from the cache in later chapters (`ml.baselines`);
# 4. read a quality-versus-cost Pareto plot.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import matplotlib.pyplot as plt
import torch

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 1. Data that never leaves the device
#
# CIFAR-10 is 50,000 training images of $32\times32$ pixels, 150 MB as uint8: it fits in
# the memory of any GPU. The classic PyTorch pipeline (a `Dataset` that decodes and augments
# one image at a time in Python worker processes) cannot keep a fast GPU busy on such small
# images: the GPU waits for Python. Instead, `ml.data.DeviceLoader` moves the whole uint8
# dataset to the device **once**, and each epoch shuffles, normalizes and augments whole
# batches with a handful of tensor operations on the device: a random crop of a padded
# image (one gather with per-image offsets), a horizontal flip (`torch.where` on a random
# mask) and, for the CNN, cutout {cite}`devries2017cutout`.

# %%
train_images, train_labels = ml.data.cifar10(train=True)
test_images, test_labels = ml.data.cifar10(train=False)
print(f"train {tuple(train_images.shape)} {train_images.dtype}, test {tuple(test_images.shape)}")
ml.plot.image_grid(train_images[:16], train_labels[:16], class_names=ml.data.CIFAR10_CLASSES, ncols=8)
plt.show()

# %%
ml.show(ml.data.DeviceLoader)

# %% [markdown]
# How fast is it? We time one epoch of batches with augmentation, against the classic
# approach of augmenting one image at a time in a Python loop (on a subset: it is slow).

# %%
n_naive = ml.pick(smoke=256, cpu=2048, gpu=2048)
loader = ml.data.DeviceLoader(train_images, train_labels, 512, crop_padding=4, flip=True,
                              mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD, device=dev)


def one_epoch(loader):
    for x, y in loader:
        pass
    return x


def naive_epoch(images, labels, mean, std, pad=4):
    """One image at a time, as a per-sample Dataset.__getitem__ would do it."""
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    out = []
    for img in images:
        x = torch.nn.functional.pad(img.float() / 255, (pad,) * 4)
        i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        x = x[:, i:i + 32, j:j + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        out.append(((x - mean) / std).to(dev))
    return torch.stack(out)


t_device = ml.bench.time_fn(one_epoch, loader, warmup=1, repeat=3).median
t_naive = ml.bench.time_fn(naive_epoch, train_images[:n_naive], train_labels[:n_naive],
                           ml.data.CIFAR10_MEAN, ml.data.CIFAR10_STD, warmup=0, repeat=1).median
rate_device = len(train_images) / t_device
rate_naive = n_naive / t_naive
ml.glue("loader_speedup", rate_device / rate_naive, ".1f")
ml.bench.Table([
    {"pipeline": "per-image Python loop", "images/s": rate_naive},
    {"pipeline": "ml.data.DeviceLoader", "images/s": rate_device},
], title=f"augmented CIFAR-10 batches on {dev.type}")

# %% [markdown]
# Here batched on-device augmentation ran at {glue:}`loader_speedup` times the rate of the
# per-image loop. On a CPU both compete for the same cores, so the gap is modest; on a GPU
# the per-image loop stays on the CPU and becomes the bottleneck, while the batched version
# runs as a handful of kernels on the device.
#
# ## 2. How a baseline is trained and cached
#
# Each baseline is one readable recipe in `ml.baselines`: a model from `ml.models`, data
# from `ml.data`, and `ml.train.fit`, which trains with bf16 autocast on a GPU, evaluates
# on the test set after every epoch, and records a history whose clock counts **training
# time only** (evaluation is excluded), so that "time to 94%" means what DAWNBench means by
# it. The recipe picks its sizes with `ml.pick`, so the same function is a seconds-long
# smoke test, a minutes-long laptop run, or the full benchmark on a GPU.
#
# Trained models are expensive, so `ml.train.train_or_load` caches them under the data
# folder, keyed by the recipe's name, the scale and a hash of its configuration. Later
# chapters call `ml.baselines.cifar_cnn()` and get this notebook's model back in a second;
# on a fresh machine the same call retrains it with the same recipe.

# %%
ml.show(ml.train.train_or_load)

# %% [markdown]
# ## 3. ResNet-9 on CIFAR-10
#
# The CNN is the residual network with which David Page brought CIFAR-10 training to 94%
# test accuracy in minutes on one GPU {cite}`page2018resnet`: three stages of $3\times3$
# convolutions with batch normalization and ReLU, two residual blocks, max pooling, and a
# linear classifier whose output is scaled down by 8. The recipe: SGD with Nesterov momentum,
# a one-cycle learning-rate schedule {cite}`smith2019superconvergence`, label smoothing
# {cite}`szegedy2016rethinking`, random crops, flips and cutout, and test-time augmentation
# with horizontal flips. airbench {cite}`jordan2024airbench` pushes the same idea to 94% in a
# few seconds.

# %%
ml.show(ml.baselines.cifar_cnn)

# %%
cnn, cnn_record = ml.baselines.cifar_cnn()
cnn_hist = ml.train.History.from_dict(cnn_record["history"])
ml.bench.Table([cnn_record["config"]], title="ResNet-9 configuration at this scale")

# %%
ml.plot.learning_curves({"ResNet-9": cnn_hist}, y="val_accuracy", x="time",
                        title="ResNet-9 on CIFAR-10: test accuracy vs training time")
plt.show()
cnn_acc = cnn_record["metrics"]["test_accuracy"]
t94 = cnn_hist.time_to("val_accuracy", 0.94)
ml.glue("cnn_acc", 100 * cnn_acc, ".2f")
ml.glue("cnn_time", cnn_record["train_seconds"], ".0f")
ml.glue("cnn_t94", "not reached at this scale" if t94 is None else f"{t94:.1f} s")
print(f"test accuracy {100 * cnn_acc:.2f}% after {cnn_record['train_seconds']:.0f} s of training; "
      f"time to 94%: {'not reached at this scale' if t94 is None else f'{t94:.1f} s'}")

# %% [markdown]
# At this scale ResNet-9 reaches {glue:}`cnn_acc`% test accuracy in {glue:}`cnn_time` s of
# training; time to 94%: {glue:}`cnn_t94`. (The `gpu` scale trains the full-width network
# for 24 epochs on all 50,000 images; the smaller scales shrink the width, the data and the
# epochs, so their accuracy is lower: compare techniques only at the same scale.)
#
# ## 4. A Vision Transformer on CIFAR-10
#
# The ViT {cite}`dosovitskiy2021vit` cuts the image into $4\times4$ patches (64 tokens of
# 48 numbers), embeds each with a linear map, adds a learned position embedding and a
# class token, and runs a stack of pre-norm transformer blocks {cite}`vaswani2017attention`.
# Its attention, normalization and MLP are arguments (`ViT(norm=..., attn=..., mlp=...)`):
# later chapters swap them and measure the difference. Without the convolution's built-in
# locality, a ViT trained from scratch on 50,000 images needs more epochs and stronger
# regularization than a CNN for the same accuracy.

# %%
ml.show(ml.models.Block)

# %%
vit, vit_record = ml.baselines.cifar_vit()
vit_hist = ml.train.History.from_dict(vit_record["history"])
ml.bench.Table([vit_record["config"]], title="ViT configuration at this scale")

# %%
ml.plot.learning_curves({"ResNet-9": cnn_hist, "ViT": vit_hist}, y="val_accuracy", x="time",
                        title="CIFAR-10: test accuracy vs training time")
plt.show()
vit_acc = vit_record["metrics"]["test_accuracy"]
ml.glue("vit_acc", 100 * vit_acc, ".2f")
ml.glue("vit_time", vit_record["train_seconds"], ".0f")
print(f"ViT test accuracy {100 * vit_acc:.2f}% after {vit_record['train_seconds']:.0f} s")

# %% [markdown]
# ## 5. An MLP on Fashion-MNIST
#
# Fashion-MNIST {cite}`xiao2017fashion` has the shape of MNIST (60,000 + 10,000 grayscale
# $28\times28$ images, 10 classes) but is harder: clothes, not digits. A two-hidden-layer
# MLP is the simplest reasonable model: its cost is three matrix multiplications.

# %%
fashion_images, fashion_labels = ml.data.fashion_mnist(train=True)
ml.plot.image_grid(fashion_images[:16], fashion_labels[:16], class_names=ml.data.FASHION_MNIST_CLASSES, ncols=8)
plt.show()
mlp, mlp_record = ml.baselines.fashion_mlp()
mlp_hist = ml.train.History.from_dict(mlp_record["history"])
mlp_acc = mlp_record["metrics"]["test_accuracy"]
ml.glue("mlp_acc", 100 * mlp_acc, ".2f")
ml.plot.learning_curves({"MLP": mlp_hist}, y=("train_loss", "val_loss"), x="epoch",
                        title="MLP on Fashion-MNIST: loss")
plt.show()
print(f"MLP test accuracy {100 * mlp_acc:.2f}% after {mlp_record['train_seconds']:.0f} s")

# %% [markdown]
# ## 6. CharGPT on Tiny Shakespeare
#
# The language model is a character-level GPT in the style of nanoGPT
# {cite}`karpathy2022nanogpt`: 65 characters, a causal transformer, next-character
# cross-entropy. Its validation loss (nats per character) is the quality measure; the
# `gpu`-scale configuration is nanoGPT's `shakespeare_char` (6 layers, 6 heads, 384 wide,
# context 256).

# %%
corpus = ml.data.shakespeare()
print(f"{len(corpus.text):,} characters, vocabulary of {corpus.vocab_size}: {''.join(corpus.vocab)!r}")
gpt, gpt_record = ml.baselines.char_gpt()
gpt_hist = ml.train.History.from_dict(gpt_record["history"])
gpt_loss = gpt_record["metrics"]["val_loss"]
ml.glue("gpt_loss", gpt_loss, ".3f")
ml.plot.learning_curves({"CharGPT": gpt_hist}, y=("train_loss", "val_loss"), x="step",
                        title="CharGPT on Tiny Shakespeare: loss")
plt.show()
print(f"validation loss {gpt_loss:.3f} after {gpt_record['train_seconds']:.0f} s")

# %%
ml.seed_all(0)
prompt = corpus.encode("ROMEO:\n").unsqueeze(0).to(dev)
sample = gpt.generate(prompt, max_new_tokens=ml.pick(smoke=60, cpu=300, gpu=500), temperature=0.8)
print(corpus.decode(sample[0].tolist()))

# %% [markdown]
# ## 7. The baselines side by side
#
# For every baseline: quality, training time, and the costs later chapters try to reduce.
# Inference is measured on one batch in float32 (the default dtype on the device), after
# warm-up, synchronized, median of repeated runs (notebook 1.1). Training times are those of
# the run that trained the cached model, on the machine named in its record
# (`record["hardware"]`); a machine busy with other work inflates them, small models with
# many tiny operations most of all, so measure your own before comparing.

# %%
def inference_costs(model, x):
    """Time, throughput, peak memory and FLOPs per sample of one inference batch."""
    model.eval()
    with torch.no_grad():
        t = ml.bench.time_fn(model, x, warmup=2, repeat=ml.pick(smoke=3, cpu=10, gpu=30))
        return {
            "params": ml.bench.count_params(model),
            "FLOPs/sample": ml.bench.count_flops(model, x) / len(x),
            "samples/s": len(x) / t.median,
            "peak memory": ml.bench.fmt_bytes(ml.bench.peak_memory(model, x)),
        }


bs = ml.pick(smoke=16, cpu=256, gpu=1024)
cifar_x = torch.randn(bs, 3, 32, 32, device=dev)
rows = [
    {"model": "ResNet-9", "task": "CIFAR-10", "quality": f"{100 * cnn_acc:.2f}% acc",
     "train time (s)": cnn_record["train_seconds"], **inference_costs(cnn, cifar_x)},
    {"model": "ViT", "task": "CIFAR-10", "quality": f"{100 * vit_acc:.2f}% acc",
     "train time (s)": vit_record["train_seconds"], **inference_costs(vit, cifar_x)},
    {"model": "MLP", "task": "Fashion-MNIST", "quality": f"{100 * mlp_acc:.2f}% acc",
     "train time (s)": mlp_record["train_seconds"],
     **inference_costs(mlp, torch.randn(bs, 1, 28, 28, device=dev))},
    {"model": "CharGPT", "task": "Tiny Shakespeare", "quality": f"{gpt_loss:.3f} val loss",
     "train time (s)": gpt_record["train_seconds"],
     **inference_costs(gpt, torch.randint(0, corpus.vocab_size, (max(1, bs // 16), gpt.block_size), device=dev))},
]
ml.bench.Table(rows, title=f"chapter 1 baselines ({ml.scale()} scale, {dev.type}); CharGPT: one sample = one sequence",
               formats={"FLOPs/sample": ml.bench.fmt_flops, "samples/s": "{:,.0f}", "train time (s)": "{:.0f}"})

# %% [markdown]
# ## 8. Quality versus cost
#
# Efficiency is a trade-off, and the book's standard picture of it is the **Pareto plot**:
# quality on one axis, cost on the other, and the *front* of points that no other point
# beats on both. Here every evaluated epoch of the two CIFAR-10 models is a point (accuracy
# reached after that much training time): the front tells which model to pick for a given
# training budget.

# %%
points = []
for name, hist in (("ResNet-9", cnn_hist), ("ViT", vit_hist)):
    for t, acc, ep in zip(hist.column("time"), hist.column("val_accuracy"), hist.column("epoch")):
        if acc is not None:
            points.append({"name": f"{name} ep{ep}", "train time (s)": t, "test accuracy": acc})
ml.plot.pareto(points, x="train time (s)", y="test accuracy",
               title="CIFAR-10: accuracy reached vs training time")
plt.show()
front = ml.plot.pareto_front(points, x="train time (s)", y="test accuracy")
print("on the front:", ", ".join(p["name"] for p in front))

# %% [markdown]
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`page2018resnet` | ResNet-9 reaches 94% test accuracy on CIFAR-10 in 24 epochs | {glue:}`cnn_acc`% at this scale; time to 94%: {glue:}`cnn_t94` |
# | {cite}`jordan2024airbench` | 94% on CIFAR-10 in 3.29 s on one A100 (with a more elaborate recipe) | our simpler recipe's time to 94% (gpu scale) is the number to compare |
# | {cite}`dosovitskiy2021vit` | ViTs trained from scratch on small datasets trail CNNs | ViT {glue:}`vit_acc`% vs ResNet-9 {glue:}`cnn_acc`% at the same scale |
# | {cite}`karpathy2022nanogpt` | `shakespeare_char` reaches a validation loss of 1.4697 (about 3 minutes on one A100) | {glue:}`gpt_loss` at this scale |
#
# The numbers on the right come from the scale named in the banner at the top. At the
# `cpu` and `smoke` scales the models are smaller and train for less time, so they do not
# reach the papers' numbers; the `gpu` scale is the one to compare.
#
# ## Exercises
#
# 1. Load the CNN again with `ml.baselines.cifar_cnn()`. How long does it take now, and why?
# 2. Evaluate the CNN with and without test-time flip augmentation
#    (`ml.train.evaluate(..., tta=True)`). How much accuracy does TTA buy, and what does it
#    cost at inference?
# 3. The CharGPT table row counts FLOPs per *sequence*. Convert it to FLOPs per token and
#    compare with the estimate $2N$ per token for a model with $N$ parameters
#    {cite}`kaplan2020scaling`. Where does the difference come from?
#
# :::{dropdown} Solution 1
# About a second: `train_or_load` finds the trained weights in the cache (same name, scale
# and configuration hash) and loads them instead of training. Change any value of the
# configuration and the key changes, so the model is retrained.
# :::
#
# :::{dropdown} Solution 2
# ```python
# test = ml.data.DeviceLoader(test_images, test_labels, 1000, shuffle=False,
#                             mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD, device=dev)
# print(ml.train.evaluate(cnn, test), ml.train.evaluate(cnn, test, tta=True))
# ```
# TTA typically adds a few tenths of a percent for ResNet-9 and exactly doubles the
# inference FLOPs (two forward passes per image).
# :::
#
# :::{dropdown} Solution 3
# Divide by the context length `gpt.block_size`. The $2N$ rule counts one multiply-add per
# parameter per token; the counted FLOPs also include the attention score and value
# matmuls, $2\cdot 2\,T\,C$ per token per layer, which grow with the context $T$, and
# exclude the embedding lookup, which is a gather, not a matmul.
# :::
#
# ## Key takeaways
#
# - A baseline is a recipe plus its measurements: quality, training time, time-to-quality,
#   parameters, FLOPs, throughput and memory, all at a named scale on named hardware.
# - Keep small datasets and their augmentation on the device; the GPU should never wait
#   for Python.
# - Compare techniques on a Pareto plot of quality against cost, at the same scale.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
