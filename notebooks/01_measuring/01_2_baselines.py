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
# records for each one its quality with its spread, its training time, and its costs:
# parameters, FLOPs, inference throughput and peak memory.
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
# 2. report a training run the way the book does: quality with its spread, time,
#    time-to-accuracy, cost;
# 3. tell a real quality difference from noise (standard error, seeds, McNemar's test);
# 4. reuse chapter 1's trained models from the cache in later chapters (`ml.baselines`);
# 5. read a quality-versus-cost Pareto plot.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import itertools
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()
fp32 = "fp32 (IEEE, TF32 off)" if dev.type == "cuda" else "fp32"

# %% [markdown]
# ## 1.2.1 Data that never leaves the device
#
# CIFAR-10 is 50,000 training images of $32\times32$ pixels, 150 MB as uint8: it fits in
# the memory of any GPU. The classic PyTorch pipeline (a `Dataset` that decodes and augments
# one image at a time in Python worker processes) cannot keep a fast GPU busy on such small
# images: the GPU waits for Python. Instead, `ml.data.DeviceLoader` moves the whole uint8
# dataset to the device **once**; each epoch it permutes the indices on the device and
# gathers each batch with one indexing operation. Its core is the per-batch preparation:
# a random crop of a padded image (one gather with per-image offsets,
# `ml.data.random_crop`), a horizontal flip (`torch.where` on a random mask) and, for the
# CNN, cutout {cite}`devries2017cutout`, all on whole batches.

# %%
train_images, train_labels = ml.data.cifar10(train=True)
test_images, test_labels = ml.data.cifar10(train=False)
print(f"train {tuple(train_images.shape)} {train_images.dtype}, test {tuple(test_images.shape)}")
ml.plot.image_grid(train_images[:16], train_labels[:16], class_names=ml.data.CIFAR10_CLASSES, ncols=8)
plt.show()

# %%
ml.show(ml.data.DeviceLoader._prepare)

# %% [markdown]
# How fast is it? We compare it with the classic approach, augmenting one image at a time
# in a Python loop as a per-sample `Dataset.__getitem__` would, on the same images, in
# alternating rounds (`ml.bench.compare`, notebook 1.1).

# %%
n_cmp = ml.pick(smoke=256, cpu=4096, gpu=4096)
loader = ml.data.DeviceLoader(train_images[:n_cmp], train_labels[:n_cmp], 512, crop_padding=4, flip=True,
                              mean=ml.data.CIFAR10_MEAN, std=ml.data.CIFAR10_STD, device=dev)
mean_ = torch.tensor(ml.data.CIFAR10_MEAN).view(3, 1, 1)
std_ = torch.tensor(ml.data.CIFAR10_STD).view(3, 1, 1)


def device_epoch():
    for x, y in loader:
        pass


def naive_epoch(pad=4):
    """One image at a time: pad, random crop, random flip, normalize, copy to the device."""
    out = []
    for img in train_images[:n_cmp]:
        x = F.pad(img.float() / 255, (pad,) * 4)
        i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        x = x[:, i:i + 32, j:j + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        out.append(((x - mean_) / std_).to(dev))
    return torch.stack(out)


loader_cmp = ml.bench.compare(naive_epoch, device_epoch, warmup=1, repeat=ml.pick(smoke=3, cpu=10, gpu=10))
ml.bench.Table([
    {"pipeline": "per-image Python loop", f"time for {n_cmp:,} images": loader_cmp.baseline,
     "images/s": n_cmp / loader_cmp.baseline.median},
    {"pipeline": "ml.data.DeviceLoader", f"time for {n_cmp:,} images": loader_cmp.candidate,
     "images/s": n_cmp / loader_cmp.candidate.median, "speed-up (IQR)": loader_cmp},
], title=f"augmented CIFAR-10 batches on {dev.type}, interleaved", formats={"images/s": "{:,.0f}"})

# %% tags=["remove-cell"]
c = loader_cmp
ml.glue("loader_words", c.words(faster=f"{c.speedup:.1f}x faster than", slower=f"{1 / c.speedup:.1f}x slower than",
                                same="no faster than"))
ml.glue("loader_iqr", f"{c.lo:.1f}-{c.hi:.1f}x")
ml.glue("loader_why", {
    "faster": "It does the same arithmetic in a few operations on whole batches instead of a dozen small "
              "operations per image, each of which pays for the Python interpreter and PyTorch's dispatch "
              "(microseconds each, more than the arithmetic on one small image).",
    "slower": "On this machine the per-image operations are cheap enough, and the batched gathers costly "
              "enough, that batching loses: a reminder to measure rather than assume.",
    "no measurable difference": "On this machine the per-operation overheads that batching saves are too small "
                                "to show against the arithmetic both versions share.",
}[c.verdict])

# %% [markdown]
# Here the batched on-device pipeline was {glue:}`loader_words` the per-image loop (IQR of
# the per-round ratio: {glue:}`loader_iqr`). {glue:}`loader_why` On a GPU the gap widens:
# the per-image loop stays on the CPU and copies every image to the device on its own,
# while the batched version runs as a handful of kernels on the device.
#
# ## 1.2.2 How a baseline is trained and cached
#
# Each baseline is one readable recipe in `ml.baselines`: a model from `ml.models`, data
# from `ml.data`, and `ml.train.fit`, which trains under autocast on a GPU (bf16, or fp16
# with a gradient scaler where bf16 is not supported; fp32 on a CPU), evaluates on the test
# set in fp32 after every epoch, and records a history whose
# clock counts **training time only** (evaluation is excluded), so that "time to 94%" means
# what DAWNBench means by it. The recipe picks its sizes with `ml.pick`, so the same
# function is a seconds-long smoke test, a minutes-long laptop run, or the full benchmark
# on a GPU. Trained models are cached under the data folder by `ml.train.train_or_load`,
# keyed by the recipe's name, the scale and a hash of its configuration: later chapters
# call `ml.baselines.cifar_cnn()` and get this notebook's model back in a second, and on a
# fresh machine the same call retrains it with the same recipe.
#
# The four recipes at this scale (`ml.baselines.config(name)` lists every setting):

# %%
cfgs = {name: ml.baselines.config(name) for name in ml.baselines.NAMES}


def epochs_of(cfg):
    return f"{cfg.get('n_train', 0):,} images x {cfg.get('epochs')} epochs"


def recipe(model, cfg, **rows):
    return {"model": model, **rows,
            "batch size": cfg.get("batch_size"), "peak learning rate": cfg.get("lr"),
            "weight decay": cfg.get("weight_decay"), "label smoothing": cfg.get("label_smoothing", 0.0)}


cnn_c, vit_c, mlp_c, gpt_c = (cfgs[k] for k in ("cifar_cnn", "cifar_vit", "fashion_mlp", "char_gpt"))
recipes = ml.bench.Table([
    recipe("ResNet-9", cnn_c, size=f"width {cnn_c.get('width')}", training=epochs_of(cnn_c),
           **{"test images": cnn_c.get("n_test"),
              "optimizer": f"SGD, Nesterov momentum {cnn_c.get('momentum')}",
              "schedule": "one-cycle", "augmentation": f"crop (pad {cnn_c.get('crop_padding')}), flip, "
                                                     f"cutout {cnn_c.get('cutout')}, flip TTA"}),
    recipe("ViT", vit_c, size=f"{vit_c.get('depth')} x {vit_c.get('dim')}, {vit_c.get('heads')} heads, "
                              f"patch {vit_c.get('patch_size')}", training=epochs_of(vit_c),
           **{"test images": vit_c.get("n_test"), "optimizer": "AdamW", "schedule": "warm-up, cosine",
              "augmentation": (f"crop (pad {vit_c['crop_padding']}), flip" if vit_c.get("crop_padding") else "flip")}),
    recipe("MLP", mlp_c, size="hidden " + " - ".join(str(h) for h in mlp_c.get("hidden", [])),
           training=epochs_of(mlp_c),
           **{"test images": mlp_c.get("n_test"), "optimizer": "AdamW", "schedule": "warm-up, cosine",
              "augmentation": f"none (dropout {mlp_c.get('dropout')})"}),
    recipe("CharGPT", gpt_c, size=f"{gpt_c.get('n_layer')} x {gpt_c.get('n_embd')}, {gpt_c.get('n_head')} heads, "
                                  f"context {gpt_c.get('block_size')}",
           training=f"{gpt_c.get('steps', 0):,} steps x {gpt_c.get('batch_size')} windows",
           **{"test images": f"{gpt_c.get('eval_batches')} x {gpt_c.get('batch_size')} windows (validation)",
              "optimizer": "AdamW", "schedule": "warm-up, cosine", "augmentation": f"dropout {gpt_c.get('dropout')}"}),
], title=f"the four recipes at the {ml.scale()} scale",
   formats={"peak learning rate": "{:g}", "weight decay": "{:g}", "label smoothing": "{:g}"})
recipes.transpose("model")

# %% [markdown]
# ## 1.2.3 ResNet-9 on CIFAR-10
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
cnn, cnn_record = ml.baselines.cifar_cnn()
cnn_hist = ml.train.History.from_dict(cnn_record["history"])
fig = ml.plot.learning_curves({"ResNet-9": cnn_hist}, y="val_accuracy", x="time",
                              title="ResNet-9 on CIFAR-10: test accuracy vs training time")
fig.axes[0].set(xlabel="training time (s)", ylabel="test accuracy (fraction)")
plt.show()

cnn_acc, cnn_n = cnn_record["metrics"]["test_accuracy"], cnn_record["config"]["n_test"]
cnn_se = ml.bench.accuracy_se(cnn_acc, cnn_n)
t94 = cnn_record["metrics"].get("time_to_94")
t94_text = f"{t94:.1f} s" if t94 is not None else "not reached at this scale"
print(f"test accuracy {100 * cnn_acc:.2f}% ± {100 * cnn_se:.2f} (standard error on {cnn_n:,} test images) "
      f"after {cnn_record['train_seconds']:.0f} s of training; time to 94%: {t94_text}")

# %% tags=["remove-cell"]
ml.glue("cnn_acc", 100 * cnn_acc, ".2f")
ml.glue("cnn_se", 100 * cnn_se, ".2f")
ml.glue("cnn_n", cnn_n, ",")
ml.glue("cnn_time", cnn_record["train_seconds"], ".0f")
ml.glue("cnn_t94", t94_text)
ml.glue("scale", ml.scale())

# %% [markdown]
# At the {glue:}`scale` scale ResNet-9 reaches {glue:}`cnn_acc`% test accuracy in
# {glue:}`cnn_time` s of training; time to 94%: {glue:}`cnn_t94`. The **standard error** of
# an accuracy $p$ measured on $n$ test images, $\sqrt{p(1-p)/n}$ (`ml.bench.accuracy_se`),
# is {glue:}`cnn_se` points on these {glue:}`cnn_n` images: that is how much the number
# would move on another test set of the same size. The smaller scales shrink the network,
# the data and the epochs, so their accuracy is lower: compare techniques only at the same
# scale.
#
# The test set is not the only source of noise: training again with another seed (another
# initialization, another order of batches, other augmentations) gives another model. We
# train the same recipe once more with seed 1 (cached as the variant `seed1`) and compare
# the two on the same test images. For two models on the same images, **McNemar's test**
# {cite}`mcnemar1947note` (`ml.bench.mcnemar`) looks only at the images on which they
# disagree: if both were equally accurate, each would win about half of those.

# %%
cnn_seed1, cnn_seed1_record = ml.baselines.cifar_cnn(variant="seed1", seed=1)


def test_loader(images, labels, n, mean, std):
    """The recipe's test images: all of them, or the same class-balanced subset ml.baselines takes."""
    if n < len(labels):
        images, labels = ml.data.subset(images, labels, n, seed=0)
    return ml.data.DeviceLoader(images, labels, 1000, shuffle=False, mean=mean, std=std, device=dev)


def correct(model, loader, tta=False):
    """Per-image correctness (bool, on the CPU) in fp32, optionally with flip test-time augmentation."""
    hits = []
    with torch.no_grad():
        for x, y in itertools.islice(loader, ml.trim(len(loader))):
            logits = model(x)
            if tta:
                logits = logits + model(x.flip(-1))
            hits.append(logits.argmax(-1) == y)
    return torch.cat(hits).cpu()


cifar_test = test_loader(test_images, test_labels, cnn_n, ml.data.CIFAR10_MEAN, ml.data.CIFAR10_STD)
hits0, hits1 = correct(cnn, cifar_test, tta=True), correct(cnn_seed1, cifar_test, tta=True)
acc0, acc1 = hits0.float().mean().item(), hits1.float().mean().item()
seed_mean, seed_std, _ = ml.bench.mean_spread([acc0, acc1])
seed_p = ml.bench.mcnemar(hits0, hits1)
ml.bench.Table([{"run": "seed 0", "test accuracy (%)": 100 * acc0,
                 "standard error (points)": 100 * ml.bench.accuracy_se(acc0, len(hits0))},
                {"run": "seed 1", "test accuracy (%)": 100 * acc1,
                 "standard error (points)": 100 * ml.bench.accuracy_se(acc1, len(hits1))},
                {"run": "difference", "test accuracy (%)": 100 * (acc1 - acc0),
                 "McNemar p-value": seed_p}],
               title=f"ResNet-9, two seeds, on the same {len(hits0):,} test images (flip TTA, {fp32})",
               formats={"test accuracy (%)": ".2f", "standard error (points)": ".2f", "McNemar p-value": ".3f"})

# %% tags=["remove-cell"]
ml.glue("seed_diff", 100 * abs(acc1 - acc0), ".2f")
ml.glue("seed_std", 100 * seed_std, ".2f")
ml.glue("seed_p", seed_p, ".2f")
ml.glue("seed_words", "a real difference between the two models (p < 0.05)" if seed_p < 0.05
        else "no measurable difference between the two models (p >= 0.05)")

# %% [markdown]
# The two seeds differ by {glue:}`seed_diff` points (a standard deviation over the two runs
# of {glue:}`seed_std` points); McNemar's p-value of {glue:}`seed_p` says
# {glue:}`seed_words`. So a technique that changes ResNet-9's accuracy by less than the
# run-to-run spread and the standard error has not been shown to change it at all.
#
# ## 1.2.4 A Vision Transformer on CIFAR-10
#
# The ViT {cite}`dosovitskiy2021vit` cuts the image into $4\times4$ patches (64 tokens of
# 48 numbers), embeds each with a linear map, adds a learned position embedding and a
# class token, and runs a stack of pre-norm transformer blocks {cite}`vaswani2017attention`
# (`ml.models.Block`: $x + \text{attn}(\text{norm}(x))$, then $x + \text{mlp}(\text{norm}(x))$).
# Its attention, normalization and MLP are arguments (`ViT(norm=..., attn=..., mlp=...)`):
# later chapters swap them and measure the difference. Here is the forward pass, and the
# attention it uses:

# %%
ml.show(ml.models.ViT.forward)
ml.show(ml.models.Attention.forward)

# %% [markdown]
# Without the convolution's built-in locality, a ViT trained from scratch on 50,000 images
# needs more epochs and stronger regularization than a CNN for the same accuracy.

# %%
vit, vit_record = ml.baselines.cifar_vit()
vit_acc, vit_n = vit_record["metrics"]["test_accuracy"], vit_record["config"]["n_test"]
vit_se = ml.bench.accuracy_se(vit_acc, vit_n)
vit_hits = correct(vit, test_loader(test_images, test_labels, vit_n, ml.data.CIFAR10_MEAN, ml.data.CIFAR10_STD))
vit_p = ml.bench.mcnemar(hits0, vit_hits) if len(vit_hits) == len(hits0) else float("nan")
per_op = ml.bench.flop_breakdown(vit.eval(), torch.zeros(1, 3, 32, 32, device=dev))
attn_share = sum(v for k, v in per_op.items() if "attention" in k) / sum(per_op.values())
print(f"ViT test accuracy {100 * vit_acc:.2f}% ± {100 * vit_se:.2f} on {vit_n:,} test images after "
      f"{vit_record['train_seconds']:.0f} s; {100 * attn_share:.1f}% of its FLOPs are attention (QK^T and PV)")

# %% tags=["remove-cell"]
ml.glue("vit_acc", 100 * vit_acc, ".2f")
ml.glue("vit_se", 100 * vit_se, ".2f")
ml.glue("vit_time", vit_record["train_seconds"], ".0f")
ml.glue("vit_attn_share", 100 * attn_share, ".1f")
# Two models on the same images: McNemar decides, the sign says which way.
ml.glue("vit_vs_cnn", "not measurably different from" if not vit_p < 0.05
        else ("above" if vit_acc > cnn_acc else "below"))
ml.glue("vit_p", "below 0.001" if vit_p < 0.001 else f"{vit_p:.3f}")

# %% [markdown]
# The ViT reaches {glue:}`vit_acc`% ± {glue:}`vit_se` in {glue:}`vit_time` s, which is
# {glue:}`vit_vs_cnn` ResNet-9's {glue:}`cnn_acc`% (McNemar p-value on the same test images:
# {glue:}`vit_p`). {glue:}`vit_attn_share`% of its FLOPs are the attention products
# $QK^\top$ and $PV$, which `ml.bench.count_flops` counts on every device (a causal model is
# charged for the full $T \times T$ score matrix).
#
# ## 1.2.5 An MLP on Fashion-MNIST
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
mlp_acc, mlp_n = mlp_record["metrics"]["test_accuracy"], mlp_record["config"]["n_test"]
mlp_se = ml.bench.accuracy_se(mlp_acc, mlp_n)
fig = ml.plot.learning_curves({"MLP": mlp_hist}, y=("train_loss", "val_loss"), x="epoch",
                              title="MLP on Fashion-MNIST: loss")
fig.axes[0].set(xlabel="epoch", ylabel="cross-entropy (nats)")
plt.show()
print(f"MLP test accuracy {100 * mlp_acc:.2f}% ± {100 * mlp_se:.2f} on {mlp_n:,} test images "
      f"after {mlp_record['train_seconds']:.0f} s")

# %% tags=["remove-cell"]
ml.glue("mlp_acc", 100 * mlp_acc, ".2f")
ml.glue("mlp_se", 100 * mlp_se, ".2f")

# %% [markdown]
# The MLP reaches {glue:}`mlp_acc`% ± {glue:}`mlp_se`.
#
# ## 1.2.6 CharGPT on Tiny Shakespeare
#
# The language model is a character-level GPT in the style of nanoGPT
# {cite}`karpathy2022nanogpt`: 65 characters, a causal transformer, next-character
# cross-entropy. Its validation loss (nats per character, on fixed windows of the last 10%
# of the text) is the quality measure; the `gpu`-scale configuration is nanoGPT's
# `shakespeare_char` (6 layers, 6 heads, 384 wide, context 256). Its spread is the
# standard error of the mean over the validation batches.

# %%
corpus = ml.data.shakespeare()
print(f"{len(corpus.text):,} characters, vocabulary of {corpus.vocab_size}: {''.join(corpus.vocab)!r}")
gpt, gpt_record = ml.baselines.char_gpt()
gpt_hist = ml.train.History.from_dict(gpt_record["history"])
gpt_loss, g = gpt_record["metrics"]["val_loss"], gpt_record["config"]
val = ml.data.TokenBatches(corpus.val_ids, g["block_size"], g["batch_size"], steps=ml.trim(g["eval_batches"]),
                           device=dev, generator=torch.Generator().manual_seed(1234))  # the recipe's windows
with torch.no_grad():
    batch_losses = torch.stack([F.cross_entropy(gpt(x).flatten(0, 1), y.flatten()) for x, y in val]).tolist()
_, loss_std, n_batches = ml.bench.mean_spread(batch_losses)
gpt_se = loss_std / math.sqrt(n_batches)
fig = ml.plot.learning_curves({"CharGPT": gpt_hist}, y=("train_loss", "val_loss"), x="step",
                              title="CharGPT on Tiny Shakespeare: loss")
fig.axes[0].set(xlabel="optimizer step", ylabel="cross-entropy (nats per character)")
plt.show()
print(f"validation loss {gpt_loss:.3f} ± {gpt_se:.3f} (standard error over {n_batches} batches) "
      f"after {gpt_record['train_seconds']:.0f} s")

# %% tags=["remove-cell"]
ml.glue("gpt_loss", gpt_loss, ".3f")
ml.glue("gpt_se", gpt_se, ".3f")

# %% [markdown]
# The validation loss is {glue:}`gpt_loss` ± {glue:}`gpt_se` nats per character. A sample,
# at temperature 0.8:

# %%
ml.seed_all(0)
prompt = corpus.encode("ROMEO:\n").unsqueeze(0).to(dev)
sample = gpt.generate(prompt, max_new_tokens=ml.pick(smoke=60, cpu=300, gpu=500), temperature=0.8)
print(corpus.decode(sample[0].tolist()))

# %% [markdown]
# ## 1.2.7 The baselines side by side
#
# First the quality and the training run. The training times are those of the run that
# trained the cached models, on the machine named in their record (`record["hardware"]`),
# with the machine load that record sampled when training finished: a machine busy with
# other work inflates them, small models with many tiny operations most of all.

# %%
def trained_on(record):
    load = record.get("hardware", {}).get("load", "not recorded")
    return load.split(" (")[0] if load.startswith("idle") else load


train_rows = [
    {"model": "ResNet-9", "task": "CIFAR-10", "quality": f"{100 * cnn_acc:.2f} ± {100 * cnn_se:.2f}% accuracy",
     "training (s)": cnn_record["train_seconds"], "time to 94% (s)": t94 if t94 is not None else "not reached",
     "machine during training": trained_on(cnn_record)},
    {"model": "ViT", "task": "CIFAR-10", "quality": f"{100 * vit_acc:.2f} ± {100 * vit_se:.2f}% accuracy",
     "training (s)": vit_record["train_seconds"], "machine during training": trained_on(vit_record)},
    {"model": "MLP", "task": "Fashion-MNIST", "quality": f"{100 * mlp_acc:.2f} ± {100 * mlp_se:.2f}% accuracy",
     "training (s)": mlp_record["train_seconds"], "machine during training": trained_on(mlp_record)},
    {"model": "CharGPT", "task": "Tiny Shakespeare", "quality": f"{gpt_loss:.3f} ± {gpt_se:.3f} validation loss",
     "training (s)": gpt_record["train_seconds"], "machine during training": trained_on(gpt_record)},
]
hw = cnn_record.get("hardware", {})
where = hw.get("accelerator", "none") if hw.get("accelerator", "none") != "none" else hw.get("cpu model", "a CPU")
ml.bench.Table(train_rows, title=f"chapter 1 baselines: quality ± standard error and training "
                                 f"({ml.scale()} scale, trained on {where})",
               formats={"training (s)": "{:.1f}",
                        "time to 94% (s)": lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else v})

# %% [markdown]
# Then what each model costs at inference: one batch in fp32 (IEEE on a GPU), after
# warm-up, synchronized, median of repeated runs (notebook 1.1). FLOPs count the matrix
# products, convolutions and attention of one forward pass; for CharGPT one sample is one
# sequence of `block_size` characters.

# %%
def inference_row(name, model, x, unit):
    model.eval()
    with torch.no_grad():
        t = ml.bench.time_fn(model, x, warmup=2, repeat=ml.pick(smoke=3, cpu=10, gpu=30))
        return {"model": name, "parameters": ml.bench.count_params(model),
                "FLOP per sample": ml.bench.count_flops(model, x) / len(x),
                "batch": f"{len(x):,} {unit}", "time per batch": t, "samples/s": len(x) / t.median,
                "peak memory": ml.bench.fmt_bytes(ml.bench.peak_memory(model, x))}


bs = ml.pick(smoke=16, cpu=256, gpu=1024)
cifar_x = torch.randn(bs, 3, 32, 32, device=dev)
gpt_x = torch.randint(0, corpus.vocab_size, (max(1, bs // 16), gpt.block_size), device=dev)
cost_rows = [inference_row("ResNet-9", cnn, cifar_x, "images"), inference_row("ViT", vit, cifar_x, "images"),
             inference_row("MLP", mlp, torch.randn(bs, 1, 28, 28, device=dev), "images"),
             inference_row("CharGPT", gpt, gpt_x, "sequences")]
ml.bench.Table(cost_rows, title=f"inference cost on {dev.type}, {fp32}",
               formats={"FLOP per sample": ml.bench.fmt_flops, "samples/s": "{:,.0f}"})

# %% [markdown]
# ## 1.2.8 Quality versus cost
#
# Efficiency is a trade-off, and the book's standard picture of it is the **Pareto plot**:
# quality on one axis, cost on the other, and the *front* of points that no other point
# beats on both. Here every evaluation of the two CIFAR-10 models is a point (the accuracy
# reached after that much training time), and the front tells which model to pick for a
# given training budget. An intermediate point of a run is only a lower bound on what a run
# planned for that length would reach: its learning rate had not been annealed yet.

# %%
points = []
for name, hist in (("ResNet-9", cnn_hist), ("ViT", ml.train.History.from_dict(vit_record["history"]))):
    for t, acc in zip(hist.column("time"), hist.column("val_accuracy")):
        if acc is not None:
            points.append({"name": name, "time": t, "accuracy": 100 * acc})
front = ml.plot.pareto_front(points, x="time", y="accuracy")
with ml.plot.house_style():
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(("ResNet-9", "ViT")):
        mine = [p for p in points if p["name"] == name]
        ax.plot([p["time"] for p in mine], [p["accuracy"] for p in mine], "o-", color=ml.plot.PALETTE[i],
                markersize=3, label=name)
    t_end = max(p["time"] for p in points)  # the front holds its best accuracy to the right edge
    ax.step([p["time"] for p in front] + [t_end], [p["accuracy"] for p in front] + [front[-1]["accuracy"]],
            where="post", color="0.3",
            linestyle="--", linewidth=1, label="Pareto front")
    ax.set(xlabel="training time (s)", ylabel="test accuracy (%)",
           title="CIFAR-10: accuracy reached vs training time")
    ax.legend()
    plt.show()
front_models = sorted({p["name"] for p in front})
print("models on the front:", ", ".join(front_models))

# %% tags=["remove-cell"]
ml.glue("front_models", " and ".join(front_models))

# %% [markdown]
# On the front: {glue:}`front_models`. A model that is on the front only at small budgets is
# the one to pick when training time is scarce; the one that ends highest is the one to
# pick when accuracy matters most.
#
# ## 1.2.9 Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`page2018resnet`, {cite}`jordan2024airbench` | ResNet-9 reaches 94% test accuracy on CIFAR-10 in 24 epochs; airbench94, a more elaborate recipe, in 3.29 s on one A100 | time to 94%: {glue:}`cnn_t94` ({glue:}`scale` scale; the gpu scale measures it, the smaller scales stop below 94%) |
# | {cite}`dosovitskiy2021vit` | ViTs trained from scratch on small datasets trail CNNs | ViT {glue:}`vit_acc`% is {glue:}`vit_vs_cnn` ResNet-9's {glue:}`cnn_acc`% ({glue:}`scale` scale, McNemar p {glue:}`vit_p`) |
# | {cite}`karpathy2022nanogpt` | `shakespeare_char` reaches a validation loss of 1.4697 | {glue:}`gpt_loss` ± {glue:}`gpt_se` ({glue:}`scale` scale; nanoGPT's configuration is the gpu scale's) |
#
# **Further reading.** DAWNBench {cite}`coleman2017dawnbench` and MLPerf
# {cite}`mattson2020mlperf` define time-to-accuracy benchmarks and their rules.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: the cache (explain, easy)
# Load the CNN again with `ml.baselines.cifar_cnn()`. How long does it take now, and why?
# What makes it train again?

# %% tags=["solution", "hide-cell"]
# Solution 1
start = time.perf_counter()
ml.baselines.cifar_cnn()
print(f"second call: {time.perf_counter() - start:.2f} s")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The printed time is the time to load the weights: `train_or_load` finds the file of the
# same name, scale and configuration hash in the cache and loads it instead of training.
# Changing any value of the configuration (an override, a `variant`, another scale) changes
# the key, so the model is retrained; `retrain=True` forces it.
# :::

# %% [markdown]
# ### Exercise 2: the batched crop, one image at a time (implement, easy)
# Write `crop_loop(x, padding, offsets)` that pads each image of a batch and slices its
# $32\times32$ crop at `offsets[b] = (row, col)` in a Python loop, and check that it equals
# `ml.data.random_crop(x, padding, offsets=offsets)` exactly.

# %% tags=["solution", "hide-cell"]
# Solution 2
def crop_loop(x, padding, offsets):
    H, W = x.shape[-2:]
    out = []
    for img, (i, j) in zip(x, offsets.tolist()):
        padded = F.pad(img, (padding,) * 4)
        out.append(padded[:, i:i + H, j:j + W])
    return torch.stack(out)


xb = train_images[:64].float() / 255
offsets = torch.randint(0, 9, (64, 2))
assert torch.equal(crop_loop(xb, 4, offsets), ml.data.random_crop(xb, 4, offsets=offsets))
print("crop_loop equals ml.data.random_crop on 64 images: True")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# Padding by 4 and taking a $32\times32$ window at offset $(i, j)$, $0 \le i, j \le 8$, is
# the same as the library's single gather with row indices $i + 0..31$ and column indices
# $j + 0..31$ per image; the assert checks it bit for bit. The loop runs a handful of
# operations per image, the gather a handful per batch: section 1.2.1 measured what that
# difference costs.
# :::

# %% [markdown]
# ### Exercise 3: what test-time augmentation buys (measure, medium)
# With `correct(model, loader, tta=...)` from section 1.2.3, evaluate ResNet-9 with and
# without flip TTA on the same test images. Is the difference larger than the noise
# (McNemar)? What does TTA cost at inference?

# %% tags=["solution", "hide-cell"]
# Solution 3
plain = correct(cnn, cifar_test, tta=False)
p_tta = ml.bench.mcnemar(hits0, plain)
print(f"without TTA {100 * plain.float().mean():.2f}%, with TTA {100 * hits0.float().mean():.2f}% "
      f"on {len(plain):,} images; McNemar p = {p_tta:.3g}")
x3 = cifar_x[:ml.pick(smoke=16, cpu=256, gpu=1024)]
with torch.no_grad():
    tta_cost = ml.bench.compare(lambda: cnn(x3), lambda: (cnn(x3), cnn(x3.flip(-1))),
                                repeat=ml.pick(smoke=3, cpu=10, gpu=20))
print(f"inference with TTA against without: {tta_cost} ({tta_cost.verdict})")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# TTA averages the logits of each image and of its mirror image, so it runs two forward
# passes: twice the FLOPs; the comparison prints what that costs in time here (a speed
# ratio below 1). Whether the accuracy it adds is real is what McNemar's p-value says:
# below 0.05, the images TTA fixes outnumber those it breaks by more than chance explains;
# above, the difference printed is within the noise. Either way the gain has to be weighed
# against the doubled inference cost.
# :::

# %% [markdown]
# ### Exercise 4: FLOPs per token (explain, medium)
# The inference table counts CharGPT's FLOPs per *sequence*. Convert them to FLOPs per token
# and compare with the estimate $2N$ per token for a model with $N$ parameters
# {cite}`kaplan2020scaling`. Where does the difference come from?

# %% tags=["solution", "hide-cell"]
# Solution 4
T, C, L, V = gpt.block_size, g["n_embd"], g["n_layer"], corpus.vocab_size
per_op = ml.bench.flop_breakdown(gpt.eval(), torch.zeros(1, T, dtype=torch.long, device=dev))
counted = sum(per_op.values()) / T
attention = sum(v for k, v in per_op.items() if "attention" in k) / T
n_params = ml.bench.count_params(gpt)
print(f"counted {counted / 1e6:.3f} MFLOP per token; 2N = {2 * n_params / 1e6:.3f} MFLOP (N = {n_params:,})")
print(f"  matrix products 24 L C^2 + 2 C V = {(24 * L * C**2 + 2 * C * V) / 1e6:.3f} MFLOP, "
      f"attention 4 L T C = {4 * L * T * C / 1e6:.3f} MFLOP (counted: {attention / 1e6:.3f})")
print(f"  parameters without FLOPs: position embedding T C = {T * C:,}, norms and biases "
      f"{n_params - 12 * L * C**2 - V * C - T * C:,}")
assert abs(counted - (24 * L * C**2 + 2 * C * V + 4 * L * T * C)) <= 1e-6 * counted
print("  the terms add up to the counted FLOPs: True")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# Divide by the context length `block_size` $= T$. Per token, each of the $L$ layers does
# $24C^2$ FLOPs in its linear layers ($6C^2$ for $QKV$, $2C^2$ for the output projection,
# $16C^2$ for the MLP) and $4TC$ in attention ($2TC$ for the scores $QK^\top$, $2TC$ for
# $PV$, charged for the full $T \times T$ matrix although the causal mask uses half of it);
# the output layer adds $2CV$. The rule $2N$ counts one multiply-add per parameter: it gets
# the linear layers and the output layer right (the token embedding is tied to the output
# layer, so its $VC$ parameters do work once), but it misses attention, which has no
# parameters and grows with $T$, and it charges the position embedding ($TC$ parameters,
# looked up, not multiplied) and the norms as if they did matmuls. The printed terms add up
# to the counted FLOPs.
# :::

# %% [markdown]
# ### Exercise 5: time to accuracy (implement, easy)
# Write `time_to(rows, metric, threshold)` that returns the training time of the first
# history row whose `metric` reaches `threshold` (or `None`), and check it against
# `History.time_to` on ResNet-9's history for a few thresholds.

# %% tags=["solution", "hide-cell"]
# Solution 5
def time_to(rows, metric, threshold):
    return next((r["time"] for r in rows if r.get(metric) is not None and r[metric] >= threshold), None)


for threshold in (0.3, 0.5, 0.7, 0.9, 0.94):
    assert time_to(cnn_hist.rows, "val_accuracy", threshold) == cnn_hist.time_to("val_accuracy", threshold)
print("time_to equals History.time_to at 30%, 50%, 70%, 90% and 94%: True")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# The history logs one row per evaluation, with the training seconds so far in `time`
# (evaluation excluded), so the time to an accuracy is the `time` of the first row at or
# above it, and `None` if no row gets there. It is only as fine as the evaluations: with
# one per epoch, the true crossing lies somewhere within the epoch before the row returned.
# :::

# %% [markdown]
# ## Key takeaways
#
# - A baseline is a recipe plus its measurements: quality with its spread, training time,
#   time-to-quality, parameters, FLOPs, throughput and memory, all at a named scale on
#   named hardware, with the machine's load.
# - A quality difference counts only outside its noise: the test set's standard error,
#   the run-to-run spread of seeds, and McNemar's test for two models on the same images.
# - Keep small datasets and their augmentation on the device; the GPU should never wait
#   for Python.
# - Compare techniques on a Pareto plot of quality against cost, at the same scale.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
