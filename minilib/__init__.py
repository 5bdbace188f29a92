"""minilib: the small library grown alongside *Efficient Deep Learning from Scratch*.

Use it as ``import minilib as ml``. Each chapter of the book derives a technique,
checks it against PyTorch, and then adds it here; later chapters use it from here.

=================  ===========================================================
``ml.env``         device, seeds, scales (``BOOK_SCALE``), the banner
``ml.data``        datasets (download, checksum, loaders), device-resident batches
``ml.train``       ``fit``, ``evaluate``, the cache of trained models
``ml.bench``       timing, throughput, peak memory, FLOPs, parameter counts, tables
``ml.plot``        house style, learning curves, Pareto fronts, image grids
``ml.models``      ResNet-9 CNN, ViT, CharGPT, MLP with pluggable parts
``ml.baselines``   chapter 1's trained baselines, reused by every later chapter
``ml.norm``        chapter 2: BatchNorm, LayerNorm, RMSNorm, GroupNorm, folding
``ml.attention``   chapter 3: attention from scratch, tiled, KV cache, window, linear, SE/ECA
``ml.tokens``      chapter 4: token pruning (top-k, EViT fusing), ToMe merging, PrunedViT
``ml.quant``       chapter 5: affine quantization, calibration, GPTQ, LoRC, FP8/FP4
``ml.sparsity``    chapter 6: activation sparsity, ReLUfication, thresholds, sparse FFNs, 2:4
``ml.diffusion``   chapter 7: noise schedules, DDPM/DDIM, flow matching, guidance, Frechet distance
``ml.sr``          chapter 8: MATLAB bicubic, PSNR/SSIM on Y, pixel shuffle, SR networks
=================  ===========================================================
"""

from . import env, data, bench, plot, models, train, baselines  # noqa: F401
from . import norm, attention, quant, sr  # noqa: F401
from . import tokens  # noqa: F401
from . import sparsity  # noqa: F401
from . import diffusion  # noqa: F401
from .display import glue, show
from .env import describe, device, pick, scale, seed_all, trim

__version__ = "0.1.0"
__all__ = [
    "env", "data", "bench", "plot", "models", "train", "baselines",
    "norm", "attention", "tokens", "quant", "sr", "sparsity", "diffusion",
    "show", "glue", "describe", "device", "pick", "scale", "seed_all", "trim",
]
