"""Chapter 1's baselines: four trained models every later chapter measures against.

==================  =========================  =========================================
function            model, data                quality measure (``record["metrics"]``)
==================  =========================  =========================================
:func:`cifar_cnn`   ResNet-9, CIFAR-10         ``test_accuracy`` (flip TTA), ``time_to_94``
:func:`cifar_vit`   ViT, CIFAR-10              ``test_accuracy``
:func:`fashion_mlp` MLP, Fashion-MNIST         ``test_accuracy``
:func:`char_gpt`    CharGPT, Tiny Shakespeare  ``val_loss`` (nats per character)
==================  =========================  =========================================

Each returns ``(model, record)`` through :func:`ml.train.train_or_load`: the first call
trains (and caches), later calls load. ``record["metrics"]`` also has ``params``,
``flops_per_sample`` (one forward pass of one image, or of one ``block_size`` sequence
for CharGPT) and ``train_seconds``; ``record["history"]`` is the learning curve.

Each recipe is one readable function; its sizes come from :func:`config`, which picks
them for the current scale (``smoke``: seconds on a CPU; ``cpu``: about two minutes on
two cores; ``gpu``: the full benchmark). Compare techniques only at the same scale.

Variants: later chapters train the *same recipe* with one part swapped, so that the
difference they measure is the technique and nothing else::

    model, record = ml.baselines.cifar_vit(variant="rmsnorm", norm=ml.norm.RMSNorm)
    model, record = ml.baselines.char_gpt(variant="post-ln", placement="post", n_layer=8)

Parts (``norm=``, ``attn=``, ``mlp=``, ``act=``, ``channel_attn=``) are factories, as in
:mod:`ml.models`; keyword arguments that name a key of :func:`config` (or ``placement``)
override it. A factory cannot be hashed, so a variant with parts needs a ``variant`` name:
it becomes part of the cache name (``cifar_vit-rmsnorm-cpu-<hash>.pt``), and it is up to
the caller to give different parts different names.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn as nn
from torch import Tensor

from . import bench, data
from .env import device as default_device
from .env import pick
from .models import MLP, CharGPT, ResNet9, ViT
from .train import History, adamw, fit, one_cycle, train_or_load, warmup_cosine

__all__ = ["config", "NAMES", "cifar_cnn", "cifar_vit", "fashion_mlp", "char_gpt"]

# Config keys a variant may set that the baselines' own configs leave at the model default.
_EXTRA_KEYS = {"cifar_cnn": (), "cifar_vit": ("placement",), "fashion_mlp": (),
               "char_gpt": ("placement",)}


# ---------------------------------------------------------------------------------------
# Configurations, one per baseline and scale
# ---------------------------------------------------------------------------------------

def _cifar_cnn_config() -> dict[str, Any]:
    cfg = pick(
        smoke=dict(width=8, n_train=1000, n_test=500, epochs=1, batch_size=64),
        # cpu: all 50,000 training images and the full test set (measured: 83.4% in 186 s on
        # 2 busy cores; 10,000 images at batch 128 gave 68.7%): a baseline worth comparing.
        cpu=dict(width=16, n_train=50_000, n_test=10_000, epochs=4, batch_size=64),
        gpu=dict(width=64, n_train=50_000, n_test=10_000, epochs=24, batch_size=512),
    )
    # Page sums the loss over the batch and uses lr 0.4 / 512 per example and weight decay
    # 5e-4 x 512. With PyTorch's mean loss over a batch of B that is lr = 0.4 B / 512 and
    # weight decay = 5e-4 x 512 / B: B = 512 gives his lr 0.4 and weight decay 5e-4.
    B = cfg["batch_size"]
    return cfg | dict(seed=0, lr=0.4 * B / 512, weight_decay=5e-4 * 512 / B, momentum=0.9,
                      nesterov=True, warmup=5 / 24, label_smoothing=0.2, crop_padding=4,
                      flip=True, cutout=8, tta=True)


def _cifar_vit_config() -> dict[str, Any]:
    # cpu: short runs learn faster without random crops and with a smaller batch and a
    # higher peak lr (measured: 47.5% vs 39% for crops, batch 128, lr 1e-3, 5 epochs).
    return pick(
        smoke=dict(dim=32, depth=2, heads=2, n_train=1000, n_test=500, epochs=1,
                   batch_size=128, lr=2e-3, crop_padding=0),
        cpu=dict(dim=64, depth=4, heads=4, n_train=10_000, n_test=2_000, epochs=5,
                 batch_size=64, lr=2e-3, crop_padding=0),
        gpu=dict(dim=256, depth=6, heads=4, n_train=50_000, n_test=10_000, epochs=50,
                 batch_size=512, lr=1e-3, crop_padding=4),
    ) | dict(seed=0, patch_size=4, mlp_ratio=2.0, dropout=0.0, betas=[0.9, 0.999],
             weight_decay=0.05, warmup_fraction=0.1, final_lr=0.01, label_smoothing=0.1,
             flip=True)


def _fashion_mlp_config() -> dict[str, Any]:
    return pick(
        smoke=dict(hidden=[128, 128], n_train=2000, n_test=1000, epochs=1),
        cpu=dict(hidden=[1024, 1024], n_train=60_000, n_test=10_000, epochs=10),
        gpu=dict(hidden=[1024, 1024], n_train=60_000, n_test=10_000, epochs=20),
    ) | dict(seed=0, batch_size=256, dropout=0.2, lr=1e-3, weight_decay=0.01,
             warmup_fraction=0.05, final_lr=0.0)


def _char_gpt_config() -> dict[str, Any]:
    # gpu: nanoGPT's config/train_shakespeare_char.py (its val loss: 1.4697).
    # cpu: nanoGPT's "baby GPT" for laptops (4 layers, 128 wide, context 64, batch 12),
    # trained for 1200 steps at a higher peak lr.
    return pick(
        smoke=dict(block_size=32, n_layer=2, n_head=2, n_embd=32, batch_size=16, steps=60,
                   warmup_steps=10, eval_every=60, eval_batches=4, dropout=0.0, lr=2e-3),
        cpu=dict(block_size=64, n_layer=4, n_head=4, n_embd=128, batch_size=12, steps=1200,
                 warmup_steps=60, eval_every=200, eval_batches=50, dropout=0.0, lr=2e-3),
        gpu=dict(block_size=256, n_layer=6, n_head=6, n_embd=384, batch_size=64, steps=5000,
                 warmup_steps=100, eval_every=250, eval_batches=100, dropout=0.2, lr=1e-3),
    ) | dict(seed=0, betas=[0.9, 0.99], weight_decay=0.1, final_lr=0.1, grad_clip=1.0)


_CONFIGS: dict[str, Callable[[], dict[str, Any]]] = {
    "cifar_cnn": _cifar_cnn_config,
    "cifar_vit": _cifar_vit_config,
    "fashion_mlp": _fashion_mlp_config,
    "char_gpt": _char_gpt_config,
}
NAMES: tuple[str, ...] = tuple(_CONFIGS)


def config(name: str) -> dict[str, Any]:
    """The configuration of baseline ``name`` (one of :data:`NAMES`) at the current scale."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(NAMES)}")
    return _CONFIGS[name]()


def _variant(name: str, variant: str | None, parts: dict[str, Any],
             overrides: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The cache name and configuration of baseline ``name`` with ``parts`` and ``overrides``.

    Raises ``ValueError`` for an unknown override key, for parts without a ``variant`` name
    (the cache could not tell two different parts apart), and for a name that is not a
    plain token (it becomes a file name).
    """
    cfg = config(name)
    known = set(cfg) | set(_EXTRA_KEYS[name])
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {', '.join(unknown)}; the settings are "
                         f"{', '.join(sorted(known))} (parts go in as norm=, attn=, ...)")
    given = sorted(k for k, v in parts.items() if v is not None)
    if given and variant is None:
        raise ValueError(f"{name}: pass variant='<short name>' together with "
                         f"{', '.join(k + '=' for k in given)}: the name keys the cache of "
                         f"trained models (a factory cannot be hashed), e.g. variant='rmsnorm'")
    if variant is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", variant):
        raise ValueError(f"{name}: variant={variant!r} must be a short name of letters, digits "
                         f"and . _ + - (it becomes part of a file name)")
    cfg = cfg | overrides
    if variant is None:
        return name, cfg
    return f"{name}-{variant}", cfg | {"variant": variant}


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------

def _shrink(images: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """A class-balanced subset of ``n`` samples, or everything when ``n`` covers it."""
    return (images, labels) if n >= len(labels) else data.subset(images, labels, n, seed=0)


def _classifier_metrics(example: Tensor) -> Callable[[nn.Module, History], dict[str, Any]]:
    """Test accuracy and loss (the last evaluation), parameters, FLOPs of one sample."""
    def metrics(model: nn.Module, history: History) -> dict[str, Any]:
        dev = next(model.parameters()).device
        return {
            "test_accuracy": history.last("val_accuracy"),
            "test_loss": history.last("val_loss"),
            "params": bench.count_params(model),
            "flops_per_sample": bench.count_flops(model.eval(), example.to(dev)),
            "train_seconds": history.last("time"),
        }
    return metrics


# ---------------------------------------------------------------------------------------
# ResNet-9 on CIFAR-10
# ---------------------------------------------------------------------------------------

def cifar_cnn(*, retrain: bool = False, variant: str | None = None,
              norm: Callable[[int], nn.Module] | None = None,
              act: Callable[[], nn.Module] | None = None,
              channel_attn: Callable[[int], nn.Module] | None = None,
              **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """ResNet-9 on CIFAR-10, after David Page's DAWNBench recipe ("How to train your ResNet").

    SGD with Nesterov momentum, a one-cycle learning rate (linear up for 5 of 24 epochs,
    linear down to 0), weight decay, label smoothing 0.2, random crops (zero padding 4),
    flips and 8x8 cutout; evaluated on the test set after every epoch with flip TTA, so
    ``time_to("val_accuracy", 0.94)`` is DAWNBench's time to 94%.

    ``norm``, ``act``, ``channel_attn`` swap parts of :class:`ml.models.ResNet9` (with a
    ``variant`` name); ``overrides`` change settings of :func:`config` (module docstring).
    """
    name, cfg = _variant("cifar_cnn", variant,
                         dict(norm=norm, act=act, channel_attn=channel_attn), overrides)
    dev = default_device()
    parts = {k: v for k, v in dict(norm=norm, act=act, channel_attn=channel_attn).items()
             if v is not None}

    def build() -> nn.Module:
        return ResNet9(num_classes=10, width=cfg["width"], **parts)

    def train(model: nn.Module) -> History:
        x, y = _shrink(*data.cifar10(train=True), cfg["n_train"])
        xt, yt = _shrink(*data.cifar10(train=False), cfg["n_test"])
        # NHWC convolutions are faster on tensor cores and in oneDNN's CPU kernels
        # (measured on 2 cores: 1.4x per training step at width 16, batch 64).
        nhwc = dev.type in ("cuda", "cpu")
        norm = dict(mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, device=dev,
                    channels_last=nhwc)
        loader = data.DeviceLoader(x, y, cfg["batch_size"], shuffle=True, drop_last=True,
                                   crop_padding=cfg["crop_padding"], flip=cfg["flip"],
                                   cutout=cfg["cutout"], **norm)
        test = data.DeviceLoader(xt, yt, 1000, shuffle=False, **norm)
        if nhwc:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                    nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
        total = cfg["epochs"] * len(loader)
        return fit(model, loader, optimizer=optimizer, epochs=cfg["epochs"],
                   schedule=one_cycle(total, warmup=cfg["warmup"]),
                   label_smoothing=cfg["label_smoothing"], eval_loader=test,
                   eval_every=cfg.get("eval_epochs", 1) * len(loader), eval_tta=cfg["tta"],
                   desc="ResNet-9 / CIFAR-10")

    base_metrics = _classifier_metrics(torch.zeros(1, 3, 32, 32))

    def metrics(model: nn.Module, history: History) -> dict[str, Any]:
        return base_metrics(model, history) | {"time_to_94": history.time_to("val_accuracy", 0.94)}

    return train_or_load(name, cfg, build, train, retrain=retrain, device=dev, metrics=metrics)


# ---------------------------------------------------------------------------------------
# ViT on CIFAR-10
# ---------------------------------------------------------------------------------------

def cifar_vit(*, retrain: bool = False, variant: str | None = None,
              norm: Callable[[int], nn.Module] | None = None,
              attn: Callable[..., nn.Module] | None = None,
              mlp: Callable[..., nn.Module] | None = None,
              **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A Vision Transformer trained from scratch on CIFAR-10.

    Patches of 4x4 (64 tokens + a class token), pre-norm blocks; AdamW (decay on matrices
    only) with linear warm-up and cosine decay, label smoothing 0.1, random crops and
    flips. Evaluated on the test set after every epoch.

    ``norm``, ``attn``, ``mlp`` swap parts of :class:`ml.models.ViT` (with a ``variant``
    name); ``overrides`` change settings of :func:`config` or set ``placement``.
    """
    name, cfg = _variant("cifar_vit", variant, dict(norm=norm, attn=attn, mlp=mlp), overrides)
    dev = default_device()
    parts = {k: v for k, v in dict(norm=norm, attn=attn, mlp=mlp).items() if v is not None}

    def build() -> nn.Module:
        return ViT(image_size=32, patch_size=cfg["patch_size"], num_classes=10, dim=cfg["dim"],
                   depth=cfg["depth"], heads=cfg["heads"], mlp_ratio=cfg["mlp_ratio"],
                   dropout=cfg["dropout"], placement=cfg.get("placement", "pre"), **parts)

    def train(model: nn.Module) -> History:
        x, y = _shrink(*data.cifar10(train=True), cfg["n_train"])
        xt, yt = _shrink(*data.cifar10(train=False), cfg["n_test"])
        norm = dict(mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, device=dev)
        loader = data.DeviceLoader(x, y, cfg["batch_size"], shuffle=True, drop_last=True,
                                   crop_padding=cfg["crop_padding"], flip=cfg["flip"], **norm)
        test = data.DeviceLoader(xt, yt, 1000, shuffle=False, **norm)
        optimizer = adamw(model, cfg["lr"], cfg["weight_decay"], cfg["betas"])
        total = cfg["epochs"] * len(loader)
        return fit(model, loader, optimizer=optimizer, epochs=cfg["epochs"],
                   schedule=warmup_cosine(total, int(cfg["warmup_fraction"] * total),
                                          final=cfg["final_lr"]),
                   label_smoothing=cfg["label_smoothing"], eval_loader=test,
                   eval_every=cfg.get("eval_epochs", 1) * len(loader), desc="ViT / CIFAR-10")

    return train_or_load(name, cfg, build, train, retrain=retrain, device=dev,
                         metrics=_classifier_metrics(torch.zeros(1, 3, 32, 32)))


# ---------------------------------------------------------------------------------------
# MLP on Fashion-MNIST
# ---------------------------------------------------------------------------------------

def fashion_mlp(*, retrain: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A two-hidden-layer MLP (784-1024-1024-10 at the cpu and gpu scales) on Fashion-MNIST.

    Normalized pixels, no augmentation, dropout 0.2, AdamW with warm-up and cosine decay.
    """
    cfg = config("fashion_mlp")
    dev = default_device()

    def build() -> nn.Module:
        return MLP(in_features=28 * 28, hidden=cfg["hidden"], num_classes=10,
                   dropout=cfg["dropout"])

    def train(model: nn.Module) -> History:
        x, y = _shrink(*data.fashion_mnist(train=True), cfg["n_train"])
        xt, yt = _shrink(*data.fashion_mnist(train=False), cfg["n_test"])
        norm = dict(mean=data.FASHION_MNIST_MEAN, std=data.FASHION_MNIST_STD, device=dev)
        loader = data.DeviceLoader(x, y, cfg["batch_size"], shuffle=True, drop_last=True, **norm)
        test = data.DeviceLoader(xt, yt, 2000, shuffle=False, **norm)
        optimizer = adamw(model, cfg["lr"], cfg["weight_decay"], (0.9, 0.999))
        total = cfg["epochs"] * len(loader)
        return fit(model, loader, optimizer=optimizer, epochs=cfg["epochs"],
                   schedule=warmup_cosine(total, int(cfg["warmup_fraction"] * total),
                                          final=cfg["final_lr"]),
                   eval_loader=test, eval_every=cfg.get("eval_epochs", 1) * len(loader),
                   desc="MLP / Fashion-MNIST")

    return train_or_load("fashion_mlp", cfg, build, train, retrain=retrain, device=dev,
                         metrics=_classifier_metrics(torch.zeros(1, 1, 28, 28)))


# ---------------------------------------------------------------------------------------
# CharGPT on Tiny Shakespeare
# ---------------------------------------------------------------------------------------

def char_gpt(*, retrain: bool = False, variant: str | None = None,
             norm: Callable[[int], nn.Module] | None = None,
             attn: Callable[..., nn.Module] | None = None,
             mlp: Callable[..., nn.Module] | None = None,
             **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A character-level GPT on Tiny Shakespeare, after nanoGPT's ``shakespeare_char``.

    Random windows of ``block_size`` characters from the first 90% of the text; AdamW
    (betas 0.9, 0.99; decay on matrices only), warm-up then cosine decay to a tenth of the
    peak, gradient clipping at 1. Validation loss is the mean next-character cross-entropy
    (nats) over ``eval_batches`` batches of random windows of the last 10%, drawn **once**
    with a fixed seed, so every evaluation (and every run) sees the same windows.

    ``norm``, ``attn``, ``mlp`` swap parts of :class:`ml.models.CharGPT` (with a
    ``variant`` name); ``overrides`` change settings of :func:`config` or set ``placement``.
    """
    name, cfg = _variant("char_gpt", variant, dict(norm=norm, attn=attn, mlp=mlp), overrides)
    dev = default_device()
    corpus = data.shakespeare()
    parts = {k: v for k, v in dict(norm=norm, attn=attn, mlp=mlp).items() if v is not None}

    def build() -> nn.Module:
        return CharGPT(corpus.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                       n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"],
                       placement=cfg.get("placement", "pre"), **parts)

    def train(model: nn.Module) -> History:
        T, B = cfg["block_size"], cfg["batch_size"]
        batches = data.TokenBatches(corpus.train_ids, T, B, steps=cfg["steps"], device=dev)
        val_windows = data.TokenBatches(corpus.val_ids, T, B, steps=cfg["eval_batches"],
                                        device=dev, generator=torch.Generator().manual_seed(1234))
        val = list(val_windows)  # fixed: the same windows at every evaluation
        optimizer = adamw(model, cfg["lr"], cfg["weight_decay"], cfg["betas"])
        return fit(model, batches, optimizer=optimizer, steps=cfg["steps"],
                   schedule=warmup_cosine(cfg["steps"], cfg["warmup_steps"], final=cfg["final_lr"]),
                   grad_clip=cfg["grad_clip"], eval_loader=val, eval_every=cfg["eval_every"],
                   desc="CharGPT / Shakespeare")

    def metrics(model: nn.Module, history: History) -> dict[str, Any]:
        d = next(model.parameters()).device
        example = torch.zeros(1, cfg["block_size"], dtype=torch.long, device=d)
        return {
            "val_loss": history.last("val_loss"),
            "val_accuracy": history.last("val_accuracy"),
            "params": bench.count_params(model),
            "flops_per_sample": bench.count_flops(model.eval(), example),
            "train_seconds": history.last("time"),
        }

    return train_or_load(name, cfg, build, train, retrain=retrain, device=dev, metrics=metrics)
