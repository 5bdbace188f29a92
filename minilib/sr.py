"""Chapter 8: super-resolution, from the bicubic baseline to sub-pixel convolution.

A super-resolution (SR) network maps a low-resolution (LR) image to a high-resolution (HR)
one ``scale`` times larger on each side. Papers compare on a fixed protocol, and a number
is only comparable when every step of the protocol is the same, so this module holds the
protocol as well as the networks:

1. **Degrade**: ``hr = modcrop(hr_y(img), s)``: the luma Y of ITU-R BT.601 on 8-bit
   levels, as MATLAB's ``rgb2ycbcr`` computes it from the uint8 file (a grayscale file is
   its own Y), cropped to sizes divisible by ``s``; then ``lr = imresize(hr, 1/s)``:
   MATLAB's bicubic ``imresize`` with antialiasing, kept in float (:func:`make_pair`).
2. **Upscale**: bicubic (``imresize(lr, s)``, the baseline) or a network, on Y.
3. **Measure**: round the output to 8-bit levels (:func:`quantize`), crop ``s`` pixels off
   each border, then PSNR and SSIM on Y (:func:`psnr`, :func:`ssim`, :func:`evaluate`).

This is the "Y-first" protocol of the SRCNN and VDSR MATLAB scripts. With it the bicubic
baseline reproduces the published rows at their printed precision (PSNR and SSIM; Set5
33.66 / 30.39 / 28.42 dB at x2/x3/x4, see :data:`PUBLISHED_BICUBIC`). The other common
convention, ``protocol="rgb-first"``, degrades the RGB image, rounds the LR image to 8
bits as a saved LR file would be, and takes Y only at the end; it reads bicubic on Set5
0.01-0.02 dB higher (notebook 8.1 measures how each convention moves the number).

Networks (all small and fully convolutional, so any image size works):

=============  ====================================  ========================================
network        input                                  upsampling
=============  ====================================  ========================================
``SRCNN``      bicubic-upscaled image, HR size        none: all convs run at HR resolution
``FSRCNN``     LR image                               transposed conv at the end
``ESPCN``      LR image                               sub-pixel conv: conv to C*r^2 channels,
                                                      then :func:`pixel_shuffle`
=============  ====================================  ========================================

Moving the upsampling from the input (SRCNN) to the output (FSRCNN, ESPCN) is the whole
efficiency story: every conv then runs on ``scale**2`` times fewer pixels.

Part 2 (notebooks 8.2 and 8.3) adds what it takes to train and measure them:

* :class:`WindowSR`: a small SwinIR-style network, shifted window attention
  (``ml.attention.WindowAttention`` in ``ml.models.Block``) on the LR grid, then pixel shuffle;
  :class:`PreUpsample` puts SRCNN behind bicubic so that every network maps LR to HR;
  ``residual=True`` (and :func:`bicubic_skip`) adds global residual learning (VDSR).
* :class:`PatchSampler`: random (LR, HR) Y patches of T91, cut with one gather and
  augmented by the 8 symmetries of the square (:func:`dihedral`), on the device.
* :func:`upscale` (a Y network on RGB images, chroma by bicubic), :func:`frame_cost`
  (FLOPs on the ``meta`` device and milliseconds per output frame, e.g. 1080p).
* :func:`build_model`, :func:`recipe`, :func:`trained_model`: the chapter's four networks
  (:data:`MODEL_NAMES`), one training recipe, trained once and cached.

References: Dong, Loy, He & Tang, "Image Super-Resolution Using Deep Convolutional
Networks" (SRCNN, ECCV 2014 / TPAMI 2016); Dong, Loy & Tang, "Accelerating the
Super-Resolution Convolutional Neural Network" (FSRCNN, ECCV 2016); Shi et al.,
"Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
Convolutional Neural Network" (ESPCN, CVPR 2016); Keys, "Cubic convolution interpolation
for digital image processing" (IEEE TASSP 1981); Wang, Bovik, Sheikh & Simoncelli, "Image
quality assessment: from error visibility to structural similarity" (SSIM, IEEE TIP 2004);
Kim, Lee & Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional Networks"
(VDSR, CVPR 2016); Liang et al., "SwinIR: Image Restoration Using Swin Transformer" (ICCVW
2021); Yang, Wright, Huang & Ma, "Image Super-Resolution via Sparse Representation" (T91,
IEEE TIP 2010).

Conventions: images are float tensors in ``[0, 1]``, ``(C, H, W)`` or ``(B, C, H, W)``,
RGB channel order. The Y channel keeps its channel dim: ``(1, H, W)`` / ``(B, 1, H, W)``,
so it feeds the 1-channel networks directly.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    # color and the evaluation protocol
    "rgb_to_y", "rgb_to_ycbcr", "ycbcr_to_rgb", "quantize", "modcrop", "hr_y",
    "psnr", "ssim", "make_pair", "evaluate", "PROTOCOLS", "EVAL_SETS", "PUBLISHED_BICUBIC",
    # resizing and sub-pixel shuffling
    "imresize", "resize_weights", "pixel_shuffle",
    # networks
    "SRCNN", "FSRCNN", "ESPCN", "PreUpsample", "WindowSR", "bicubic_skip",
    # training, inference, cost
    "dihedral", "PatchSampler", "upscale", "frame_cost",
    "MODEL_NAMES", "build_model", "eval_images", "recipe", "trained_model",
]


# ---------------------------------------------------------------------------------------
# Input checks shared by every function
# ---------------------------------------------------------------------------------------

def _check_image(x: Tensor, who: str, channels: Sequence[int] | None = None) -> None:
    """``x`` must be a float ``(C, H, W)`` or ``(B, C, H, W)`` tensor, C in ``channels``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{who} expects a float image in [0, 1], got dtype {x.dtype}; convert uint8 "
            f"images with img.float() / 255")
    if x.dim() not in (3, 4):
        raise ValueError(
            f"{who} expects an image (C, H, W) or a batch (B, C, H, W), got shape "
            f"{list(x.shape)}; add a channel dim to a (H, W) image with img[None]")
    if channels is not None and x.shape[-3] not in channels:
        want = " or ".join(str(c) for c in channels)
        raise ValueError(
            f"{who} expects {want} channels (dim -3), got shape {list(x.shape)}; images are "
            f"channels-first (C, H, W): use img.permute(2, 0, 1) for an (H, W, C) array")


def _check_scale_int(scale: int, who: str) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"{who}: scale must be a positive int (2, 3, 4, ...), got {scale!r}")
    return scale


# ---------------------------------------------------------------------------------------
# Color: ITU-R BT.601 YCbCr on the "studio" range, as MATLAB's rgb2ycbcr
#
#   Y  = ( 16 +  65.481 R + 128.553 G +  24.966 B) / 255      R, G, B in [0, 1]
#   Cb = (128 -  37.797 R -  74.203 G + 112.000 B) / 255      Y  in [16/255, 235/255]
#   Cr = (128 + 112.000 R -  93.786 G -  18.214 B) / 255      Cb, Cr in [16/255, 240/255]
#
# SR papers measure on Y only: the eye is most sensitive to luma, and the early networks
# (SRCNN, FSRCNN, ESPCN) upscale Y alone and leave Cb, Cr to bicubic.
# ---------------------------------------------------------------------------------------

_YCBCR_MATRIX = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
_YCBCR_OFFSET = (16.0, 128.0, 128.0)


@functools.lru_cache(maxsize=32)
def _constant_on(values: tuple, shape: tuple, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A float64 constant cast to ``dtype`` and copied to ``device`` once, then reused."""
    return torch.tensor(values, dtype=torch.float64).view(shape).to(dtype).to(device)


def _color_transform(x: Tensor, matrix: Tensor, offset: Tensor) -> Tensor:
    """``out[..., i, h, w] = sum_j matrix[i, j] * x[..., j, h, w] + offset[i]``."""
    # One host-to-device copy per (matrix, device, dtype), not one per call.
    matrix = _constant_on(tuple(matrix.flatten().tolist()), tuple(matrix.shape), x.device, x.dtype)
    offset = _constant_on(tuple(offset.flatten().tolist()), tuple(offset.shape), x.device, x.dtype)
    return torch.einsum("ij,...jhw->...ihw", matrix, x) + offset[:, None, None]


def rgb_to_y(img: Tensor) -> Tensor:
    """Luma Y of BT.601 on the 16-235 range, as ``rgb2ycbcr(img)(:, :, 1)`` in MATLAB.

    Args:
        img: float RGB in ``[0, 1]``, ``(3, H, W)`` or ``(B, 3, H, W)``.
    Returns:
        Y in ``[16/255, 235/255]``, ``(1, H, W)`` or ``(B, 1, H, W)`` (the channel dim is
        kept), same dtype. ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``.
    """
    _check_image(img, "rgb_to_y", channels=(3,))
    matrix = torch.tensor(_YCBCR_MATRIX[:1], dtype=torch.float64) / 255
    offset = torch.tensor(_YCBCR_OFFSET[:1], dtype=torch.float64) / 255
    return _color_transform(img, matrix, offset)


def rgb_to_ycbcr(img: Tensor) -> Tensor:
    """RGB ``(3, H, W)`` / ``(B, 3, H, W)`` in ``[0, 1]`` -> YCbCr (BT.601, studio range).

    Channel 0 is :func:`rgb_to_y`; channels 1, 2 are Cb, Cr (equations above), all / 255.
    """
    _check_image(img, "rgb_to_ycbcr", channels=(3,))
    matrix = torch.tensor(_YCBCR_MATRIX, dtype=torch.float64) / 255
    offset = torch.tensor(_YCBCR_OFFSET, dtype=torch.float64) / 255
    return _color_transform(img, matrix, offset)


def ycbcr_to_rgb(img: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr`: ``RGB = M^-1 (YCbCr - offset)``. Not clamped."""
    _check_image(img, "ycbcr_to_rgb", channels=(3,))
    inverse = torch.linalg.inv(torch.tensor(_YCBCR_MATRIX, dtype=torch.float64) / 255)
    offset = torch.tensor(_YCBCR_OFFSET, dtype=torch.float64) / 255
    return _color_transform(img, inverse, -(inverse @ offset))


# ---------------------------------------------------------------------------------------
# Small protocol steps
# ---------------------------------------------------------------------------------------

def quantize(img: Tensor) -> Tensor:
    """Round a float image to the 256 levels of an 8-bit image: ``round(clamp(x) * 255) / 255``.

    Published numbers are measured on images saved as 8-bit files, so the network output
    (and the bicubic LR input) must be clamped and rounded the same way before measuring.
    We round half up (``floor(v + 0.5)``) as MATLAB's ``uint8()`` does for non-negative
    values; ``torch.round`` would round half to even. Any shape, same dtype.
    """
    if not torch.is_floating_point(img):
        raise TypeError(f"quantize expects a float image in [0, 1], got dtype {img.dtype}")
    return torch.floor(img.clamp(0, 1) * 255 + 0.5) / 255


def modcrop(img: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right of ``(..., H, W)`` so that H and W are multiples of ``scale``.

    Then ``hr -> lr -> sr`` gives back exactly the HR size. Returns a view.
    """
    _check_scale_int(scale, "modcrop")
    if img.dim() < 2:
        raise ValueError(f"modcrop expects (..., H, W), got shape {list(img.shape)}")
    h, w = img.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"modcrop: image {h}x{w} is smaller than scale {scale}")
    return img[..., : h - h % scale, : w - w % scale]


def _check_hr(img: Tensor, who: str) -> None:
    if not isinstance(img, Tensor) or img.dim() not in (3, 4) or img.shape[-3] not in (1, 3):
        got = list(img.shape) if isinstance(img, Tensor) else type(img).__name__
        raise ValueError(f"{who} expects an HR image (C, H, W) or (B, C, H, W) with C = 3 (RGB) "
                         f"or 1 (grayscale), got {got}; images are channels-first")
    if img.dtype != torch.uint8 and not torch.is_floating_point(img):
        raise TypeError(f"{who} expects a uint8 image or a float one in [0, 1], got {img.dtype}")


def hr_y(img: Tensor) -> Tensor:
    """The Y an SR benchmark measures: MATLAB's ``rgb2ycbcr`` on the uint8 image, on 8-bit levels.

        Y = floor(16 + 65.481 R + 128.553 G + 24.966 B + 0.5) / 255      R, G, B = uint8 / 255

    A 1-channel image (a grayscale file such as Set14's bridge, read with
    ``ml.data.sr_images(name, keep_gray=True)``) is its own Y, as in the papers' scripts
    (``if size(im, 3) > 1, im = rgb2ycbcr(im)``). ``img``: uint8, or float on 8-bit levels,
    ``(C, H, W)`` / ``(B, C, H, W)``, C = 3 or 1. Returns Y ``(1, H, W)`` / ``(B, 1, H, W)``,
    float32 (float input: its dtype).
    """
    _check_hr(img, "hr_y")
    x = img.to(torch.float64) / 255 if img.dtype == torch.uint8 else img.to(torch.float64)
    y = x if x.shape[-3] == 1 else torch.floor(rgb_to_y(x) * 255 + 0.5) / 255
    return y.to(torch.float32 if img.dtype == torch.uint8 else img.dtype)


# ---------------------------------------------------------------------------------------
# PSNR and SSIM on the Y channel (the "MATLAB" protocol of SRCNN ... SwinIR)
# ---------------------------------------------------------------------------------------

def _prepare(a: Tensor, b: Tensor, shave: int, y_channel: bool, who: str) -> tuple[Tensor, Tensor]:
    """Check, convert to Y, shave borders, scale to [0, 255] in float64: ``(B, C, H', W')``."""
    _check_image(a, who, channels=(1, 3))
    _check_image(b, who, channels=(1, 3))
    if a.dim() != b.dim():
        raise ValueError(f"{who}: both inputs must be single images or both batches, got "
                         f"shapes {list(a.shape)} and {list(b.shape)}")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ValueError(f"{who}: shave must be an int >= 0 (the scale factor), got {shave!r}")
    # A 1-channel input is taken to be Y already (a Y-only network's output, or rgb_to_y).
    if y_channel:
        a = rgb_to_y(a) if a.shape[-3] == 3 else a
        b = rgb_to_y(b) if b.shape[-3] == 3 else b
    if a.shape != b.shape:
        raise ValueError(f"{who}: images must have the same shape, got {list(a.shape)} and "
                         f"{list(b.shape)}; crop the HR image with modcrop(hr, scale)")
    h, w = a.shape[-2:]
    if 2 * shave >= min(h, w):
        raise ValueError(f"{who}: shave={shave} leaves nothing of a {h}x{w} image")
    if shave:
        a = a[..., shave:-shave, shave:-shave]
        b = b[..., shave:-shave, shave:-shave]
    # float64 on the [0, 255] scale, as the reference MATLAB / NumPy code computes.
    a = a.detach().to(torch.float64) * 255
    b = b.detach().to(torch.float64) * 255
    return (a, b) if a.dim() == 4 else (a[None], b[None])


def _per_image(values: Tensor, batched: bool) -> float | Tensor:
    return values if batched else float(values[0])


def psnr(a: Tensor, b: Tensor, shave: int = 0, y_channel: bool = True) -> float | Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(255^2 / MSE)`` on the 0-255 scale.

    Args:
        a, b: float images in ``[0, 1]``, ``(C, H, W)`` or ``(B, C, H, W)``, C = 3 (RGB) or
            1 (taken as Y already). Pass 8-bit-level images (:func:`quantize`) to match
            published numbers.
        shave: pixels cropped from each border before measuring (the scale factor, by
            convention: the border of an upscaled image is not well defined).
        y_channel: measure on Y (:func:`rgb_to_y`); else on all channels.
    Returns:
        a float for one image; a float64 ``(B,)`` tensor (one PSNR per image) for a batch.
        Identical images give ``inf``.
    """
    batched = a.dim() == 4
    x, y = _prepare(a, b, shave, y_channel, "psnr")
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))
    return _per_image(10 * torch.log10(255.0**2 / mse), batched)


@functools.lru_cache(maxsize=8)
def _gaussian_1d(size: int, sigma: float) -> Tensor:
    """1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)``, which is ``outer(g, g)``.

    ``g(x) ~ exp(-x^2 / 2 sigma^2)`` normalized to sum 1, so ``outer(g, g)`` sums to 1 too.
    """
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """'valid' 2-D filtering of ``(..., H, W)`` by the separable window ``outer(g, g)``.

    Like :func:`imresize`, each axis is a matrix: ``(H - k + 1, H)`` with ``g`` on the band
    ``G[i, i:i+k]``, so ``out = G_H @ x @ G_W^T``: two BLAS matmuls, fast even in float64.
    """
    k = g.numel()
    h, w = x.shape[-2:]
    g = g.to(x.device, x.dtype)

    def band(n: int) -> Tensor:                          # (n - k + 1, n)
        rows = torch.arange(n - k + 1, device=x.device)
        m = torch.zeros(n - k + 1, n, dtype=x.dtype, device=x.device)
        cols = rows[:, None] + torch.arange(k, device=x.device)
        return m.scatter_(1, cols, g.expand(n - k + 1, k))

    return band(h) @ x @ band(w).T


def ssim(a: Tensor, b: Tensor, shave: int = 0, y_channel: bool = True) -> float | Tensor:
    """Structural similarity (Wang et al. 2004), the ``ssim_index.m`` / SwinIR convention.

    Local statistics under an 11x11 Gaussian window ``w`` (sigma 1.5), 'valid' filtering
    (no padding), on the 0-255 scale (L = 255):

        mu_a = w * a,   sigma_a^2 = w * a^2 - mu_a^2,   sigma_ab = w * (a b) - mu_a mu_b
        SSIM = (2 mu_a mu_b + C1)(2 sigma_ab + C2)
               / ((mu_a^2 + mu_b^2 + C1)(sigma_a^2 + sigma_b^2 + C2))

    with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``; the score is the mean of the SSIM map
    (over channels too when ``y_channel=False``). Arguments and return as :func:`psnr`.
    """
    batched = a.dim() == 4
    x, y = _prepare(a, b, shave, y_channel, "ssim")
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"ssim needs at least 11x11 pixels after shaving, got "
                         f"{list(x.shape[-2:])}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n = x.shape[0]
    # Every channel is filtered alone; the five local statistics in one batched call.
    stats = _gaussian_filter_valid(torch.stack([x, y, x * x, y * y, x * y]), _gaussian_1d(11, 1.5))
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(0)
    var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return _per_image(ssim_map.reshape(n, -1).mean(dim=1), batched)


# ---------------------------------------------------------------------------------------
# MATLAB-compatible bicubic resize
#
# Keys' cubic convolution kernel with a = -0.5 (support [-2, 2]):
#
#   k(x) = 1.5|x|^3 - 2.5|x|^2 + 1                 |x| <= 1
#        = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2         1 < |x| <= 2
#        = 0                                       otherwise
#
# Output pixel x (1-based) sits at input coordinate  u = x / s + 0.5 (1 - 1/s),  which
# aligns pixel *centres* (corner-aligned grids, PyTorch's align_corners=False). When
# shrinking (s < 1) the kernel is stretched to k_s(x) = s k(s x), width 4 / s, so it
# averages over every input pixel that falls under one output pixel (antialiasing).
# Taps outside the image are mirrored (half-sample symmetric; 1-based: 0 -> 1, -1 -> 2,
# n + 1 -> n, ...).
# Each axis is a linear map, i.e. an (out, in) matrix, and a 2-D resize is two matmuls.
# ---------------------------------------------------------------------------------------

def _cubic(x: Tensor) -> Tensor:
    """Keys (1981) cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=64)
def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> Tensor:
    """The ``(out_len, in_len)`` float64 matrix of a 1-D MATLAB bicubic resize by ``scale``.

    Row ``i`` holds the weights output pixel ``i`` gives to each input pixel; rows sum to 1.
    This is MATLAB's ``contributions()`` with its mirrored indices folded into a dense matrix.
    Cached; do not modify the returned tensor.
    """
    kernel_width = 4.0
    if scale < 1 and antialias:                       # stretch the kernel to low-pass filter
        kernel: Callable[[Tensor], Tensor] = lambda t: scale * _cubic(scale * t)  # noqa: E731
        kernel_width /= scale
    else:
        kernel = _cubic
    x = torch.arange(1, out_len + 1, dtype=torch.float64)        # output pixels, 1-based
    u = x / scale + 0.5 * (1 - 1 / scale)                         # their input coordinates
    left = torch.floor(u - kernel_width / 2)                      # first tap
    taps = math.ceil(kernel_width) + 2                            # enough taps to cover it
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)  # (out, taps), 1-based
    w = kernel(u[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)                            # rows sum to 1
    # Mirror out-of-range taps: MATLAB indexes [1..n, n..1] periodically (0-based below).
    j = torch.remainder(idx.long() - 1, 2 * in_len)
    j = torch.where(j < in_len, j, 2 * in_len - 1 - j)
    return torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, j, w)


def _out_len(n: int, scale: float) -> int:
    """``ceil(n * scale)``, ignoring float noise (e.g. ``255 * (1/3)`` is not above 85)."""
    v = n * scale
    return round(v) if abs(v - round(v)) < 1e-9 else math.ceil(v)


@functools.lru_cache(maxsize=64)
def _resize_weights_on(in_len: int, out_len: int, scale: float, antialias: bool,
                       device: torch.device, dtype: torch.dtype) -> Tensor:
    """:func:`resize_weights` on ``device`` in ``dtype``: copied there once, then reused."""
    return resize_weights(in_len, out_len, scale, antialias).to(device, dtype)


def imresize(img: Tensor, scale: float, *, antialias: bool = True) -> Tensor:
    """Bicubic resize of ``(C, H, W)`` or ``(B, C, H, W)`` by ``scale``, as MATLAB's ``imresize``.

    Output size ``(ceil(H * scale), ceil(W * scale))``; same dtype (computed in float32,
    or float64 for float64 input) and device. Values are not clamped: bicubic overshoots a
    little at edges, so :func:`quantize` before saving or measuring. ``antialias=False``
    keeps the narrow kernel when shrinking (aliasing; MATLAB's ``'Antialiasing', false``).

    This is the resize behind the published bicubic baselines and the LR inputs of SR
    benchmarks. ``F.interpolate(mode="bicubic")`` uses Keys' a = -0.75 and so is sharper:
    as the upscaler of the Set5 baseline it reads 0.2-0.3 dB above the published numbers.
    ``F.interpolate(mode="bicubic", antialias=True)`` uses a = -0.5 too and differs from
    this function only near the border, where the kernel reaches outside the image (it
    renormalizes the weights there instead of mirroring the image).
    """
    _check_image(img, "imresize")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"imresize: scale must be a positive number (2, 0.5, 1/3), "
                         f"got {scale!r}")
    h, w = img.shape[-2:]
    out_h, out_w = _out_len(h, scale), _out_len(w, scale)
    dtype = torch.float64 if img.dtype == torch.float64 else torch.float32
    wh = _resize_weights_on(h, out_h, float(scale), antialias, img.device, dtype)  # (H', H)
    ww = _resize_weights_on(w, out_w, float(scale), antialias, img.device, dtype)  # (W', W)
    x = img.to(dtype)
    x = torch.einsum("oh,...hw->...ow", wh, x)       # resize the rows:    (.., H', W)
    x = torch.einsum("...hw,pw->...hp", x, ww)       # then the columns:   (.., H', W')
    return x.to(img.dtype)


# ---------------------------------------------------------------------------------------
# The benchmark protocol in two functions
# ---------------------------------------------------------------------------------------

def _to_float(img: Tensor) -> Tensor:
    """uint8 (as ``ml.data.sr_images`` returns) -> float in [0, 1]; float passes through."""
    return img.float() / 255 if img.dtype == torch.uint8 else img


PROTOCOLS: tuple[str, ...] = ("y-first", "rgb-first")
EVAL_SETS: tuple[str, ...] = ("Set5", "Set14", "BSD100")

# Bicubic on Y, shave = scale: (PSNR dB, SSIM) as printed. Set5 and Set14: SRCNN (TPAMI
# 2016) and most papers since; BSD100: VDSR (CVPR 2016) and its successors (SRCNN reports
# BSD200 instead). With protocol="y-first" the offline copies read (x2 / x3 / x4):
#   Set5    33.661 / 0.92988   30.392 / 0.86821   28.421 / 0.81037   every digit printed
#   Set14   30.232 / 0.86865   27.541 / 0.77361   26.000 / 0.70186   every digit printed
#   BSD100  29.558 / 0.84310   27.207 / 0.73844   25.961 / 0.66738   PSNR printed; SSIM
#                                                 1e-4 below at x3, x4 (VDSR's SSIM code)
# Set14 used to read ~0.1 dB high: its bridge is an 8-bit grayscale file, which MATLAB
# reads as one channel and the papers' scripts use as its own Y. Made RGB and converted,
# it becomes Y = 16 + 219/255 v, every error shrinks by 219/255, and bridge reads 1.32 dB
# higher (x2: 27.892 instead of 26.575 dB), +0.094 dB on the mean of 14 images.
PUBLISHED_BICUBIC: dict[str, dict[int, tuple[float, float]]] = {
    "Set5": {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)},
    "Set14": {2: (30.23, 0.8687), 3: (27.54, 0.7736), 4: (26.00, 0.7019)},
    "BSD100": {2: (29.56, 0.8431), 3: (27.21, 0.7385), 4: (25.96, 0.6675)},
}


def _check_protocol(protocol: str, who: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"{who}: protocol must be one of {', '.join(map(repr, PROTOCOLS))} "
                         f"(\"y-first\" reproduces the published tables), got {protocol!r}")


def _to_rgb(img: Tensor) -> Tensor:
    """A 1-channel (grayscale) image repeated to 3 channels, as an RGB loader makes it."""
    return img.expand(*img.shape[:-3], 3, *img.shape[-2:]) if img.shape[-3] == 1 else img


def make_pair(hr: Tensor, scale: int, *, protocol: str = "y-first") -> tuple[Tensor, Tensor]:
    """The ``(hr, lr)`` pair of an SR benchmark: modcrop, then MATLAB bicubic down by ``scale``.

        "y-first" (published):  hr = modcrop(hr_y(img), s)           Y on 8-bit levels
                                lr = imresize(hr, 1 / s)             in float
        "rgb-first":            hr = modcrop(img, s)                 RGB
                                lr = quantize(imresize(hr, 1 / s))   on 8-bit levels

    ``hr``: ``(C, H, W)`` or ``(B, C, H, W)``, uint8 (as read from the file) or float in
    ``[0, 1]``; C = 3, or 1 for a grayscale file. Returns floats: HR ``(.., s h, s w)`` and
    LR ``(.., h, w)``, 1 channel ("y-first") or 3 ("rgb-first": a grayscale image is
    repeated to RGB, as before).
    """
    _check_scale_int(scale, "make_pair")
    _check_protocol(protocol, "make_pair")
    if protocol == "y-first":
        hr = modcrop(hr_y(hr), scale)
        return hr, imresize(hr, 1 / scale)
    hr = _to_rgb(modcrop(_to_float(hr), scale))
    return hr, quantize(imresize(hr, 1 / scale))


def _check_evaluate(images: Sequence[Tensor] | str, scale: int, protocol: str,
                    y_channel: bool) -> None:
    _check_scale_int(scale, "evaluate")
    _check_protocol(protocol, "evaluate")
    if len(images) == 0:
        raise ValueError("evaluate needs at least one HR image")
    if protocol == "y-first" and not y_channel:
        raise ValueError("evaluate: the y-first protocol measures Y only; for PSNR/SSIM on "
                         "RGB use protocol='rgb-first', y_channel=False")


def _check_sr_shape(sr: Tensor, hr: Tensor, lr: Tensor) -> None:
    if sr.shape[-2:] != hr.shape[-2:]:
        raise ValueError(f"evaluate: upscale returned {list(sr.shape)} for LR "
                         f"{list(lr[None].shape)}; expected (1, {hr.shape[-3]}, "
                         f"{hr.shape[-2]}, {hr.shape[-1]})")


@torch.no_grad()
def evaluate(upscale: Callable[[Tensor], Tensor], images: Sequence[Tensor] | str, scale: int,
             *, protocol: str = "y-first", y_channel: bool = True,
             per_image: bool = False) -> dict[str, float]:
    """Mean PSNR and SSIM of ``upscale`` over a set of HR images, on an SR benchmark protocol.

        hr, lr = make_pair(img, s, protocol=protocol)     each HR image, as read from its file
        sr = quantize(upscale(lr[None]))                  the output on 8-bit levels
        psnr(sr, hr, shave=s), ssim(sr, hr, shave=s)      on Y; means over the images

    ``protocol="y-first"`` (default; the published tables, :data:`PUBLISHED_BICUBIC`):
    ``upscale`` maps the LR Y ``(1, 1, h, w)``, float, to Y ``(1, 1, s h, s w)``: bicubic is
    ``lambda lr: imresize(lr, s)``, a Y network ``lambda lr: upscale(model, lr, s)``.
    ``"rgb-first"``: it maps the RGB LR ``(1, 3, h, w)`` on 8-bit levels to RGB or Y, and
    ``y_channel=False`` measures on RGB. ``lr`` is on the CPU: move it in ``upscale`` for a
    GPU model, in ``eval()`` mode (gradients are off here). ``images``: a set name
    (``"Set14"``: :func:`eval_images`, which keeps grayscale files as their own Y) or HR
    images uint8 ``(C, H, W)``; ``scale``: 2, 3, 4, ..., also the shave.
    Returns ``{"psnr": dB, "ssim": ...}``, means over the images (as papers report them);
    ``per_image=True`` adds ``"psnr_per_image"`` and ``"ssim_per_image"``, lists in the
    order of ``images`` (for paired comparisons of two methods and their spread).
    """
    _check_evaluate(images, scale, protocol, y_channel)
    images = eval_images(images) if isinstance(images, str) else images
    p, s = [], []
    for img in images:
        hr, lr = make_pair(img, scale, protocol=protocol)
        sr = quantize(upscale(lr[None]))
        hr = hr[None].to(sr.device)
        _check_sr_shape(sr, hr, lr)
        p.append(float(psnr(sr, hr, shave=scale, y_channel=y_channel)[0]))
        s.append(float(ssim(sr, hr, shave=scale, y_channel=y_channel)[0]))
    out = {"psnr": sum(p) / len(p), "ssim": sum(s) / len(s)}
    if per_image:
        out |= {"psnr_per_image": p, "ssim_per_image": s}
    return out


# ---------------------------------------------------------------------------------------
# Sub-pixel convolution: pixel shuffle (Shi et al., CVPR 2016)
#
# A conv produces C r^2 channels at LR resolution; pixel shuffle rearranges them into
# C channels at r times the resolution:
#
#   out[b, c, h r + i, w r + j] = in[b, c r^2 + i r + j, h, w]      0 <= i, j < r
#
# No arithmetic, only a reshape and a permute: upsampling becomes a learned conv at LR
# resolution, r^2 times cheaper than convolving the upscaled image.
# ---------------------------------------------------------------------------------------

def pixel_shuffle(x: Tensor, r: int) -> Tensor:
    """``(*, C r^2, H, W)`` -> ``(*, C, H r, W r)``, the same as ``F.pixel_shuffle(x, r)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"pixel_shuffle expects a torch.Tensor, got {type(x).__name__}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"pixel_shuffle: upscale factor r must be a positive int, got {r!r}")
    if x.dim() < 3:
        raise ValueError(f"pixel_shuffle expects (*, C*r^2, H, W), got shape {list(x.shape)}")
    *lead, c_in, h, w = x.shape
    if c_in % (r * r):
        raise ValueError(
            f"pixel_shuffle: {c_in} channels are not divisible by r^2 = {r * r}; the conv "
            f"before it must output C * r^2 channels (e.g. {r * r} or {3 * r * r})")
    c = c_in // (r * r)
    x = x.reshape(*lead, c, r, r, h, w)                  # channel c*r^2 + i*r + j -> (c, i, j)
    n = len(lead)
    # (.., c, i, j, h, w) -> (.., c, h, i, w, j): row h*r + i, column w*r + j
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*lead, c, h * r, w * r)


# ---------------------------------------------------------------------------------------
# Networks
#
# Global residual learning (VDSR, Kim et al. 2016): out = upscale(x) + net(x). The network
# only has to predict the detail a fixed interpolation misses, a small signal around 0,
# instead of the whole image; it beats bicubic after a few hundred steps instead of many
# thousands. For LR-input networks the fixed upscaler is PyTorch's bicubic (Keys a = -0.75,
# one cheap native kernel per frame); any fixed interpolation works, the network learns
# the rest. SRCNN's input is already the (MATLAB) bicubic image, so its skip is x itself.
# ---------------------------------------------------------------------------------------

def _zero_init(layer: nn.Module) -> None:
    """Zero the weights and bias of a residual branch's last layer: it starts as identity."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def bicubic_skip(x: Tensor, scale: int) -> Tensor:
    """``F.interpolate(x, scale_factor=scale, mode="bicubic")``: the fixed upscaler of a
    residual network, ``(B, C, h, w) -> (B, C, h s, w s)``. Cheap (one native kernel) and
    not MATLAB's :func:`imresize` (it need not be: the network corrects it)."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


class SRCNN(nn.Module):
    """SRCNN (Dong et al., ECCV 2014 / TPAMI 2016): three convs on the bicubic-upscaled image.

    The three layers are read as patch extraction (``f1 x f1``, ``n1`` filters), non-linear
    mapping (``f2 x f2``, ``n2``) and reconstruction (``f3 x f3``), with ReLU between.
    Defaults are the 9-5-5 variant of the TPAMI paper. We pad ("same") so the output has
    the input's size; the paper used 'valid' convs and a smaller target.

    Input and output: ``(B, num_channels, H, W)`` at HR size (upscale with :func:`imresize`
    first). Every conv runs at HR resolution, which is what FSRCNN and ESPCN avoid.

    ``residual=True`` returns ``x + body(x)``: the network predicts only the detail that
    bicubic misses (global residual learning, VDSR, Kim et al. 2016), which trains in far
    fewer steps; the last conv then starts at zero, so the untrained network *is* its
    input. The paper's SRCNN is ``residual=False``.
    """

    def __init__(self, num_channels: int = 1, f1: int = 9, f2: int = 5, f3: int = 5,
                 n1: int = 64, n2: int = 32, residual: bool = False) -> None:
        super().__init__()
        for name, k in (("f1", f1), ("f2", f2), ("f3", f3)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"SRCNN: kernel size {name}={k} must be odd, so padding "
                                 f"k // 2 keeps the image size")
        self.num_channels, self.residual = num_channels, residual
        self.body = nn.Sequential(
            nn.Conv2d(num_channels, n1, f1, padding=f1 // 2), nn.ReLU(inplace=True),
            nn.Conv2d(n1, n2, f2, padding=f2 // 2), nn.ReLU(inplace=True),
            nn.Conv2d(n2, num_channels, f3, padding=f3 // 2),
        )
        if residual:
            _zero_init(self.body[-1])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` bicubic-upscaled -> ``(B, C, H, W)`` restored."""
        _check_net_input(x, self.num_channels, "SRCNN")
        return x + self.body(x) if self.residual else self.body(x)


class FSRCNN(nn.Module):
    """FSRCNN (Dong, Loy & Tang, ECCV 2016): work at LR size, upsample with a deconvolution.

    feature extraction ``5x5 -> d``, shrinking ``1x1 -> s``, ``m`` mapping layers
    ``3x3 s -> s``, expanding ``1x1 -> d`` (each followed by PReLU), then a ``k x k``
    transposed conv with stride ``scale``: ``k = 9`` (the paper's) for odd scales, 10 for
    even ones, padded so that the output grid is the one of :func:`imresize` and
    :func:`pixel_shuffle` (see the comment in ``__init__``).
    Initialisation follows the paper: He-normal convs, deconv weights N(0, 0.001^2) (so a
    residual FSRCNN starts close to its skip already).
    ``residual=True`` adds a bicubic upscaling of the input (see :func:`bicubic_skip`).

    Input ``(B, C, h, w)`` LR -> output ``(B, C, h scale, w scale)``.
    """

    def __init__(self, scale: int, num_channels: int = 1, d: int = 56, s: int = 12,
                 m: int = 4, residual: bool = False) -> None:
        super().__init__()
        _check_scale_int(scale, "FSRCNN")
        self.scale, self.num_channels, self.residual = scale, num_channels, residual
        layers: list[nn.Module] = [nn.Conv2d(num_channels, d, 5, padding=2), nn.PReLU(d),
                                   nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        # The centre of LR pixel i is HR coordinate s i + (s - 1) / 2 (0-based), for
        # imresize, pixel shuffle and bicubic_skip alike. A transposed conv puts tap t of
        # input i at s i + t - p, its centre tap (k - 1) / 2 at s i + (k - 1) / 2 - p, so
        # p = (k - s) / 2: k - s must be even, and then the output is (h - 1) s - 2 p + k = h s
        # with no output_padding. The paper's k = 9, padding 4, output_padding s - 1 puts
        # the centre at s i: (s - 1) / 2 HR pixels up and left (0.5 / 1 / 1.5 at x2 / x3 / x4).
        k = max(9 + (scale + 1) % 2, scale)                             # 9 or 10, k - s even
        self.upsample = nn.ConvTranspose2d(d, num_channels, k, stride=scale,
                                           padding=(k - scale) // 2)
        self._init_weights()

    def _init_weights(self) -> None:
        for mod in self.body:
            if isinstance(mod, nn.Conv2d):
                # He et al. 2015: std = sqrt(2 / fan_out), fan_out = out_channels * k * k
                fan_out = mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
                nn.init.normal_(mod.weight, 0.0, math.sqrt(2 / fan_out))
                nn.init.zeros_(mod.bias)
        nn.init.normal_(self.upsample.weight, 0.0, 0.001)
        nn.init.zeros_(self.upsample.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` LR -> ``(B, C, h scale, w scale)``."""
        _check_net_input(x, self.num_channels, "FSRCNN")
        y = self.upsample(self.body(x))
        return y + bicubic_skip(x, self.scale) if self.residual else y


class ESPCN(nn.Module):
    """ESPCN (Shi et al., CVPR 2016): convs at LR size, then a sub-pixel convolution.

    ``f1 x f1 -> n1``, tanh, ``f2 x f2 -> n2``, tanh, ``f3 x f3 -> C scale^2``, then
    :func:`pixel_shuffle` rearranges the ``scale^2`` channel groups into a ``scale`` times
    larger image. The paper's defaults: 5-3-3 kernels, 64 and 32 filters.
    ``residual=True`` adds a bicubic upscaling of the input (see :func:`bicubic_skip`) and
    starts the last conv at zero (the untrained network is bicubic).

    Input ``(B, C, h, w)`` LR -> output ``(B, C, h scale, w scale)``.
    """

    def __init__(self, scale: int, num_channels: int = 1, n1: int = 64, n2: int = 32,
                 f1: int = 5, f2: int = 3, f3: int = 3, residual: bool = False) -> None:
        super().__init__()
        _check_scale_int(scale, "ESPCN")
        for name, k in (("f1", f1), ("f2", f2), ("f3", f3)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"ESPCN: kernel size {name}={k} must be odd")
        self.scale, self.num_channels, self.residual = scale, num_channels, residual
        self.body = nn.Sequential(
            nn.Conv2d(num_channels, n1, f1, padding=f1 // 2), nn.Tanh(),
            nn.Conv2d(n1, n2, f2, padding=f2 // 2), nn.Tanh(),
            nn.Conv2d(n2, num_channels * scale**2, f3, padding=f3 // 2),
        )
        if residual:
            _zero_init(self.body[-1])

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` LR -> ``(B, C, h scale, w scale)``."""
        _check_net_input(x, self.num_channels, "ESPCN")
        y = pixel_shuffle(self.body(x), self.scale)
        return y + bicubic_skip(x, self.scale) if self.residual else y


def _check_net_input(x: Tensor, channels: int, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{who} expects a batch (B, {channels}, H, W), got shape {list(x.shape)}; add a "
            f"batch dim with x[None], and use rgb_to_y(img) for a 1-channel (Y) network")


# =======================================================================================
# Part 2: training data, a window-attention network, the training recipe and the cost
# of a video frame. (Chapter 8.2 and 8.3.)
# =======================================================================================

# ---------------------------------------------------------------------------------------
# Augmentation: the 8 symmetries of the square (the dihedral group D4)
#
# A patch and its rotations / mirror images are equally likely natural images, and SR is
# equivariant to them: SR(flip(x)) = flip(SR(x)). Three independent bits generate all 8:
#   transpose (swap rows and columns), then flip rows (up-down), then flip columns.
# ("transpose then flip rows" is a 90 degree rotation, so the 4 rotations and 4 mirror
# images are all reached.) The same bits go to the LR and the HR patch of a pair.
# ---------------------------------------------------------------------------------------

def dihedral(x: Tensor, ops: Tensor) -> Tensor:
    """Apply to each image of ``x`` ``(B, C, P, P)`` one of the 8 symmetries of the square.

    ``ops``: bool ``(B, 3)``: per image, transpose, then flip rows (up-down), then flip
    columns (left-right). Vectorized: three ``torch.where`` over the batch, no Python loop.
    The images must be square (a transpose changes the shape of a non-square one).
    """
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral expects square images (B, C, P, P), got shape {list(x.shape)}")
    if ops.shape != (x.shape[0], 3):
        raise ValueError(f"dihedral: ops must be (B, 3) = ({x.shape[0]}, 3) booleans, got "
                         f"{list(ops.shape)}")
    ops = ops.to(device=x.device, dtype=torch.bool)[:, :, None, None, None]   # (B, 3, 1, 1, 1)
    x = torch.where(ops[:, 0], x.transpose(-1, -2), x)
    x = torch.where(ops[:, 1], x.flip(-2), x)
    return torch.where(ops[:, 2], x.flip(-1), x)


def _y_pair(img: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """``(lr_y (h, w), hr_y (s h, s w))`` of one HR image, degraded as :func:`make_pair`."""
    hr, lr = make_pair(img, scale)
    return lr[0], hr[0]


@functools.lru_cache(maxsize=3)
def _y_pairs(set_name: str, scale: int) -> list[tuple[Tensor, Tensor]]:
    return [_y_pair(img, scale) for img in eval_images(set_name)]


class PatchSampler:
    """Random ``(LR, HR)`` patch pairs of the Y channel, cut and augmented on the device.

    The training data of SRCNN, FSRCNN and ESPCN: the 91 images of T91 (Yang et al.,
    2010), degraded exactly as the test images are (:func:`make_pair`: Y on 8-bit levels,
    modcrop, MATLAB bicubic down by ``scale``, LR in float), as SRCNN's
    ``generate_train.m`` does. The *whole* image is downscaled once, so patches carry no
    border effects of the resize.

    All images live on the device in one flat buffer (LR and HR), with each image's
    offset and width. A batch is one gather:

    1. pick a patch uniformly among *all* ``P x P`` LR windows of the set (image ``n`` with
       probability proportional to its number of windows ``(h_n - P + 1)(w_n - P + 1)``,
       as cutting every image into overlapping sub-images does): one ``randint`` over the
       total and a ``searchsorted`` in the cumulative counts;
    2. its top-left ``(i, j)`` in LR pixels; the HR patch starts at ``(s i, s j)``;
    3. flat indices ``offset_n + row * w_n + col`` for the ``(B, P, P)`` and ``(B, sP, sP)``
       grids, one indexing op each;
    4. a random symmetry of the square (:func:`dihedral`), the same for LR and HR.

    ``images``: HR images ``(3, H, W)`` (uint8 or float), or the name of a set of
    ``ml.data.sr_images`` (``"T91"``), whose degraded Y pairs are then computed once per
    scale and cached (the bicubic downscaling of 91 images takes seconds on a CPU).
    Images whose LR is smaller than the patch are left out (``self.skipped`` counts them).

    Iterating yields ``steps_per_epoch`` batches ``(lr, hr)``: float32 ``(B, 1, P, P)``
    and ``(B, 1, sP, sP)`` on ``device``; ``len(sampler)`` is that number, so
    ``ml.train.fit(model, sampler, steps=...)`` trains on fresh random patches forever.
    """

    def __init__(self, images: Sequence[Tensor] | str, scale: int, patch_size: int, batch_size: int,
                 *, steps_per_epoch: int = 1000, augment: bool = True,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> None:
        _check_scale_int(scale, "PatchSampler")
        for name, v in (("patch_size", patch_size), ("batch_size", batch_size),
                        ("steps_per_epoch", steps_per_epoch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"PatchSampler: {name} must be a positive int, got {v!r}")
        if device is None:
            from .env import device as _default_device
            device = _default_device()
        self.device = torch.device(device)
        self.scale, self.patch_size, self.batch_size = scale, patch_size, batch_size
        self.steps_per_epoch, self.augment, self.generator = steps_per_epoch, augment, generator

        pairs = _y_pairs(images, scale) if isinstance(images, str) else \
            [_y_pair(img, scale) for img in images]
        lr_flat, hr_flat, sizes = [], [], []
        for lr_y, hr_y in pairs:                                # (h, w), (s h, s w)
            if min(lr_y.shape) < patch_size:
                continue
            lr_flat.append(lr_y.reshape(-1))
            hr_flat.append(hr_y.reshape(-1))
            sizes.append(lr_y.shape)
        self.skipped = len(pairs) - len(sizes)
        if not sizes:
            raise ValueError(f"PatchSampler: no image is large enough for {patch_size}x"
                             f"{patch_size} LR patches at scale {scale}; use smaller patches")
        dev = self.device
        self.lr = torch.cat(lr_flat).to(dev, torch.float32)     # all LR pixels, flat
        self.hr = torch.cat(hr_flat).to(dev, torch.float32)     # all HR pixels, flat
        h = torch.tensor([hw[0] for hw in sizes], device=dev)
        w = torch.tensor([hw[1] for hw in sizes], device=dev)
        self.lr_width, self.hr_width = w, w * scale
        area = h * w
        self.lr_offset = torch.cumsum(area, 0) - area           # where each image starts
        self.hr_offset = self.lr_offset * scale * scale
        self.cols = w - patch_size + 1                          # valid top-left columns
        count = (h - patch_size + 1) * self.cols                # windows per image
        self.cum_count = torch.cumsum(count, 0)
        self.first = self.cum_count - count                     # id of each image's window 0
        self.num_images, self.num_windows = len(sizes), int(self.cum_count[-1])

    def locate(self, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Window ids ``k`` in ``[0, num_windows)`` -> ``(image n, LR row i, LR column j)``.

        Windows are numbered image by image, raster order inside each: image ``n`` owns ids
        ``first[n] .. first[n] + count[n] - 1``, so ``n`` is found by ``searchsorted``.
        """
        n = torch.searchsorted(self.cum_count, k, right=True)     # its image
        k = k - self.first[n]                                     # id within the image
        return n, k // self.cols[n], k % self.cols[n]             # LR top-left (i, j)

    def sample(self) -> tuple[Tensor, Tensor]:
        """One batch ``(lr (B, 1, P, P), hr (B, 1, sP, sP))``."""
        B, P, s, dev = self.batch_size, self.patch_size, self.scale, self.device
        from .data import _randint     # uniform ints drawn with the generator's device

        n, i, j = self.locate(_randint(self.num_windows, (B,), self.generator, dev))
        ar = torch.arange(P, device=dev)
        idx = (self.lr_offset[n, None, None]
               + (i[:, None, None] + ar[:, None]) * self.lr_width[n, None, None]
               + j[:, None, None] + ar)                                    # (B, P, P)
        arh = torch.arange(P * s, device=dev)
        idx_h = (self.hr_offset[n, None, None]
                 + (s * i[:, None, None] + arh[:, None]) * self.hr_width[n, None, None]
                 + s * j[:, None, None] + arh)                              # (B, sP, sP)
        lr, hr = self.lr[idx][:, None], self.hr[idx_h][:, None]
        if self.augment:
            ops = _randint(2, (B, 3), self.generator, dev).bool()
            lr, hr = dihedral(lr, ops), dihedral(hr, ops)
        return lr, hr

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self):
        for _ in range(self.steps_per_epoch):
            yield self.sample()

    def __repr__(self) -> str:
        return (f"PatchSampler({self.num_images} images ({self.skipped} too small), "
                f"{self.num_windows:,} LR windows of {self.patch_size}x{self.patch_size}, "
                f"scale {self.scale}, batch {self.batch_size}, device {self.device})")


# ---------------------------------------------------------------------------------------
# SRCNN's pipeline as an LR -> HR module, so that every network has the same interface
# ---------------------------------------------------------------------------------------

class PreUpsample(nn.Module):
    """``net(imresize(x, scale))``: bicubic upscaling first, then a same-size network.

    SRCNN (and VDSR) work this way: the network restores a bicubic-upscaled image. Wrapped
    like this, SRCNN takes the LR image as FSRCNN and ESPCN do, and the cost of a frame
    counts the bicubic step too. Input ``(B, C, h, w)`` -> output ``(B, C, h s, w s)``.
    """

    def __init__(self, net: nn.Module, scale: int) -> None:
        super().__init__()
        self.scale = _check_scale_int(scale, "PreUpsample")
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(imresize(x, self.scale))


# ---------------------------------------------------------------------------------------
# A small window-attention SR network (after SwinIR, Liang et al. 2021)
#
#   LR (B, C, h, w) --conv3x3--> features F0 (B, D, H, W)          shallow features
#        --> tokens (B, H W, D) --> depth x [Swin block]            deep features
#            (window attention w x w on the LR grid, shift 0 / w/2 alternating, then MLP)
#        --> LayerNorm --> conv3x3 --> + F0                         long skip
#        --> conv3x3 to C s^2 channels --> pixel_shuffle --> + bicubic(LR)   global residual
#
# Attention costs O(H W w^2 D) on the LR grid: linear in the number of pixels, as a conv.
# ---------------------------------------------------------------------------------------

class WindowSR(nn.Module):
    """A small Swin-style SR network: shifted window attention on the LR grid, then pixel shuffle.

    Args:
        scale: upscaling factor ``s``.
        num_channels: image channels (1 for Y).
        dim, depth, heads, window, mlp_ratio: width, number of transformer blocks
            (alternately unshifted and shifted by ``window // 2``), attention heads, window
            side on the LR grid, MLP hidden width / dim.

    The blocks are ``ml.models.Block`` (pre-LN attention + MLP) with
    ``ml.attention.WindowAttention`` as the attention. The output is added to a bicubic
    upscaling of the input (:func:`bicubic_skip`), like the residual CNNs. An image of
    any size works: it is padded (replicating its border) to a multiple of ``window``,
    and the output cropped.

    Input ``(B, C, h, w)`` LR -> output ``(B, C, h s, w s)``.
    """

    def __init__(self, scale: int, num_channels: int = 1, dim: int = 48, depth: int = 4,
                 heads: int = 3, window: int = 8, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        from functools import partial

        from .attention import WindowAttention
        from .models import Block

        _check_scale_int(scale, "WindowSR")
        if dim % heads:
            raise ValueError(f"WindowSR: dim={dim} must be divisible by heads={heads}")
        self.scale, self.num_channels, self.window = scale, num_channels, window
        self.head = nn.Conv2d(num_channels, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio,
                  attn=partial(WindowAttention, window_size=window,
                               shift=0 if i % 2 == 0 else window // 2))
            for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.body_conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.tail = nn.Conv2d(dim, num_channels * scale**2, 3, padding=1)
        _zero_init(self.tail)             # the untrained network is its bicubic skip

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, h, w)`` LR -> ``(B, C, h s, w s)``."""
        _check_net_input(x, self.num_channels, "WindowSR")
        h, w = x.shape[-2:]
        s, win = self.scale, self.window
        xp = F.pad(x, (0, (-w) % win, 0, (-h) % win), mode="replicate")  # grid divisible by w
        B, _, H, W = xp.shape
        f0 = self.head(xp)                                               # (B, D, H, W)
        t = f0.flatten(2).transpose(1, 2)                                # (B, H W, D) raster
        for block in self.blocks:
            block.attn.grid = (H, W)      # WindowAttention reads the grid of this image
            t = block(t)
        f = self.norm(t).transpose(1, 2).reshape(B, -1, H, W)
        f = f0 + self.body_conv(f)                                       # long skip
        y = pixel_shuffle(self.tail(f), s)[..., : h * s, : w * s]
        return y + bicubic_skip(x, s)                                    # global residual


# ---------------------------------------------------------------------------------------
# Using a Y-channel network on RGB images
# ---------------------------------------------------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def upscale(model: nn.Module | None, lr: Tensor, scale: int, *, color: bool = False) -> Tensor:
    """Super-resolve an RGB LR image with a Y-channel network (or bicubic with ``model=None``).

    As SRCNN does: the network upscales the luma Y only; the chroma Cb, Cr are upscaled by
    bicubic (the eye is far less sensitive to them), then converted back to RGB.

    Args:
        model: LR Y ``(B, 1, h, w)`` -> HR Y ``(B, 1, s h, s w)``, in eval mode; ``None``
            for the bicubic baseline.
        lr: RGB float in ``[0, 1]``, ``(B, 3, h, w)`` or ``(3, h, w)``; or its Y alone
            (1 channel, what :func:`evaluate` passes under the default "y-first" protocol),
            which goes to the network as it is.
        color: return RGB (clamped to [0, 1]) instead of Y (needs an RGB ``lr``).
    Returns:
        Y ``(B, 1, s h, s w)`` (what :func:`evaluate` measures) or RGB ``(B, 3, s h, s w)``,
        on the model's device (on ``lr``'s for bicubic); no batch dim if ``lr`` had none.
    """
    _check_image(lr, "upscale", channels=(3,) if color else (1, 3))
    single = lr.dim() == 3
    lr = lr[None] if single else lr
    is_y = lr.shape[1] == 1
    if model is None:
        out = imresize(lr, scale)
        out = out.clamp(0, 1) if color else (out if is_y else rgb_to_y(out))
    else:
        dev = _model_device(model)
        y = model((lr if is_y else rgb_to_y(lr)).to(dev))
        if color:
            ycc = rgb_to_ycbcr(imresize(lr, scale)).to(dev)
            out = ycbcr_to_rgb(torch.cat([y.to(ycc.dtype), ycc[:, 1:]], dim=1)).clamp(0, 1)
        else:
            out = y
    return out[0] if single else out


# ---------------------------------------------------------------------------------------
# The cost of one video frame
# ---------------------------------------------------------------------------------------

def frame_cost(model: nn.Module, scale: int, height: int = 1080, width: int = 1920, *,
               device: torch.device | str | None = None, warmup: int = 1,
               repeat: int = 3) -> dict:
    """FLOPs and time to produce one ``height x width`` Y output frame from its LR frame.

    The LR input is ``(1, C, height / s, width / s)`` (sizes must divide by ``s``: 1080p
    does for s = 2, 3, 4). FLOPs are counted with ``ml.bench.count_flops`` on a copy of
    the model on the ``meta`` device (shapes only, no arithmetic: instant even for
    1080p); time is the median of ``repeat`` calls of ``ml.bench.time_fn`` (CUDA
    synchronized) on ``device`` (default: the model's) under ``torch.inference_mode``.

    Returns ``{"flops", "ms", "fps", "timing", "device", "lr_size"}``: FLOPs per frame,
    median milliseconds per frame, frames per second ``1000 / ms``, the
    :class:`~minilib.bench.Timing`, the device name, and ``(h, w)`` of the LR frame.
    """
    import copy

    from . import bench

    _check_scale_int(scale, "frame_cost")
    if height % scale or width % scale:
        raise ValueError(f"frame_cost: a {height}x{width} frame is not divisible by scale "
                         f"{scale}; pick a frame size that is (1080p works for 2, 3, 4)")
    channels = getattr(model, "num_channels", None)
    if channels is None:
        channels = getattr(getattr(model, "net", None), "num_channels", 1)
    lr_size = (height // scale, width // scale)
    was_training = model.training
    model.eval()
    try:
        meta = copy.deepcopy(model).to("meta")
        flops = bench.count_flops(meta, torch.empty(1, channels, *lr_size, device="meta"))
        dev = torch.device(device) if device is not None else _model_device(model)
        runner = model if dev == _model_device(model) else copy.deepcopy(model).to(dev)
        x = torch.rand(1, channels, *lr_size, device=dev)
        with torch.inference_mode():
            timing = bench.time_fn(runner, x, warmup=warmup, repeat=repeat)
    finally:
        model.train(was_training)
    return {"flops": flops, "ms": timing.median * 1e3, "fps": 1.0 / timing.median,
            "timing": timing, "device": str(dev), "lr_size": lr_size}


# ---------------------------------------------------------------------------------------
# The chapter's four networks, trained on T91 and cached
# ---------------------------------------------------------------------------------------

MODEL_NAMES: tuple[str, ...] = ("srcnn", "fsrcnn", "espcn", "windowsr")


def build_model(name: str, scale: int, residual: bool = True) -> nn.Module:
    """One of :data:`MODEL_NAMES` as an LR Y ``(B, 1, h, w)`` -> HR Y module.

    ``srcnn``: :class:`SRCNN` 9-1-5 (the ECCV 2014 base model) behind MATLAB bicubic
    (:class:`PreUpsample`); ``fsrcnn``: FSRCNN(56, 12, 4); ``espcn``: ESPCN 5-3-3 (64, 32);
    ``windowsr``: :class:`WindowSR` with its defaults (48 wide, 4 blocks, 8x8 windows).
    All four learn a global residual over bicubic (``residual=True``): the papers'
    layers, trained the way that converges in minutes instead of days. ``residual=False``
    gives the CNNs exactly as published (WindowSR always has its skip).
    """
    _check_scale_int(scale, "build_model")
    builders: dict[str, Callable[[], nn.Module]] = {
        "srcnn": lambda: PreUpsample(SRCNN(f2=1, residual=residual), scale),
        "fsrcnn": lambda: FSRCNN(scale, residual=residual),
        "espcn": lambda: ESPCN(scale, residual=residual),
        "windowsr": lambda: WindowSR(scale),
    }
    if name not in builders:
        raise ValueError(f"unknown SR model {name!r}; use one of {', '.join(MODEL_NAMES)}")
    return builders[name]()


def eval_images(name: str, limit: int | None = None) -> list[Tensor]:
    """The HR images of SR set ``name`` (:data:`EVAL_SETS`, or T91), or its ``limit`` smallest.

    ``ml.data.sr_images(name, keep_gray=True)``: uint8 ``(3, H, W)``, and ``(1, H, W)`` for
    a grayscale file (its own Y, see :func:`hr_y`). The subset keeps smoke-scale runs fast;
    papers and the cpu/gpu scales use whole sets.
    """
    from .data import sr_images

    images = sr_images(name, keep_gray=True)
    if limit is None:
        return images
    return sorted(images, key=lambda img: img.shape[-1] * img.shape[-2])[:limit]


def recipe(name: str, scale: int, residual: bool = True) -> dict:
    """The training configuration of ``name`` at ``scale`` for the current ``ml.scale()``.

    The same for every network (only the network changes): random 16x16 (gpu: 24x24) LR
    patches of T91 with the 8 symmetries, degraded by the "y-first" protocol of
    :func:`make_pair`, L1 loss, Adam with a warm-up + cosine schedule (decaying to 1% of
    the learning rate, so the last steps anneal); evaluated on Set5 (smoke scale) or Set5,
    Set14 and BSD100. gpu: 800 steps of 64 patches (the four networks and the ablation of
    notebook 8.2 in about 8 s on one H100, by estimate: about 6 ms per WindowSR step and
    1 ms per CNN step). These networks are so small that a GPU step should be bound by
    kernel launches, not arithmetic (a WindowSR step dispatches about 1,200 ops, a CNN
    step 140-220), so a larger batch costs about the same time per step while each step
    sees more data: the budget goes into the batch.
    The dict is the cache key of :func:`trained_model`, so changing any value retrains.
    """
    from .env import pick

    if name not in MODEL_NAMES:
        raise ValueError(f"unknown SR model {name!r}; use one of {', '.join(MODEL_NAMES)}")
    return {
        "model": name, "scale": _check_scale_int(scale, "recipe"), "residual": residual,
        "train_set": "T91",
        "patch": pick(smoke=16, cpu=16, gpu=24),
        "batch": pick(smoke=4, cpu=16, gpu=64),
        "steps": pick(smoke=10, cpu=500, gpu=800),
        "lr": 2e-3 if name == "windowsr" else 1e-3,
        "loss": "l1", "protocol": "y-first",       # the degradation of train and test pairs
        "eval_sets": pick(smoke=["Set5"], cpu=list(EVAL_SETS), gpu=list(EVAL_SETS)),
        "eval_limit": pick(smoke=2, cpu=None, gpu=None),
        "seed": 0,
    }


def trained_model(name: str, scale: int, *, residual: bool = True, retrain: bool = False,
                  device: torch.device | str | None = None,
                  progress: bool = True) -> tuple[nn.Module, dict]:
    """``name`` trained by :func:`recipe` on T91 at ``scale``, from the cache if it is there.

    Training: ``ml.train.fit`` on a :class:`PatchSampler` (fresh random patches every
    step), float32 (no autocast: PSNR is measured on 8-bit levels, and bf16 keeps only
    about 8 bits of mantissa). After training the model is evaluated on the recipe's
    ``eval_sets`` with :func:`evaluate` ("y-first": PSNR/SSIM on Y, shave = scale; at the
    smoke scale on the ``eval_limit`` smallest images only, see :func:`eval_images`); the record's
    ``metrics`` hold ``{"Set5": {"psnr", "ssim", "psnr_per_image", "ssim_per_image"}, ...}``
    and ``train_loss``.

    Returns ``(model in eval mode on device, record)``; see ``ml.train.train_or_load``.
    """
    from . import data as _data
    from . import train as _train

    config = recipe(name, scale, residual)

    def loss_fn(pred: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(pred.float(), target) if config["loss"] == "l1" \
            else F.mse_loss(pred.float(), target)

    def train(model: nn.Module) -> "_train.History":
        sampler = PatchSampler(config["train_set"], scale, config["patch"],
                               config["batch"], steps_per_epoch=500,
                               device=_model_device(model))
        opt = torch.optim.Adam(model.parameters(), lr=config["lr"])
        steps = config["steps"]
        return _train.fit(model, sampler, optimizer=opt, steps=steps,
                          schedule=_train.warmup_cosine(steps, max(1, steps // 20), final=0.01),
                          loss_fn=loss_fn, eval_every=max(1, steps // 20), amp=False,
                          progress=progress, desc=f"{name} x{scale}")

    def metrics(model: nn.Module, history: "_train.History") -> dict:
        out: dict = {"train_loss": history.last("train_loss")}
        for set_name in config["eval_sets"]:
            out[set_name] = evaluate(lambda lr: upscale(model, lr, scale),
                                     eval_images(set_name, config["eval_limit"]), scale,
                                     per_image=True)
        return out

    return _train.train_or_load(f"sr-{name}-x{scale}", config,
                                lambda: build_model(name, scale, config["residual"]),
                                train, retrain=retrain, device=device, metrics=metrics)
