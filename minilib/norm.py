"""Chapter 2: normalization layers from scratch, and folding them away at inference.

Every layer here normalizes a tensor to zero mean and unit variance over some axes, then
applies a learned per-feature affine map. They differ only in *which* axes give the
statistics, and that choice decides what they cost at inference:

==================  ===========================  =========================================
layer               statistics over              at inference
==================  ===========================  =========================================
``BatchNorm2d``     (N, H, W) per channel        fixed running stats: an affine map, folds
                                                 into the previous conv (``fold_batchnorm``)
``BatchNormTokens`` (B, T) per channel           fixed running stats: folds into the next
                                                 ``nn.Linear`` (``fold_norm_into_linear``)
``LayerNorm``       the last dims, per token     computed on every input
``RMSNorm``         the last dims, no centering  computed on every input (cheaper)
``GroupNorm``       (C/G, H, W) per group        computed on every input
==================  ===========================  =========================================

References: BatchNorm (Ioffe & Szegedy, ICML 2015), LayerNorm (Ba, Kiros & Hinton, 2016),
RMSNorm (Zhang & Sennrich, NeurIPS 2019), GroupNorm (Wu & He, ECCV 2018), Unified
Normalization (Yang et al., ACM MM 2022) and SLAB (Guo et al., ICML 2024) for foldable
normalization in transformers.

All modules take the feature (channel) count as their first positional argument, so they
plug into ``ml.models`` as ``norm=``: ``norm=ml.norm.RMSNorm``. ``GroupNorm`` needs its
group count first (its PyTorch signature), so pass ``norm=ml.norm.group_norm_factory(8)``,
which is ``functools.partial(GroupNorm, 8)``.

Numerics follow PyTorch: the same defaults, biased variance for normalizing, float16 and
bfloat16 inputs computed in float32 and cast back, the same parameter and buffer names
(state_dicts load into ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.BatchNorm2d``,
``nn.GroupNorm`` and back).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

__all__ = [
    "layer_norm", "rms_norm", "batch_norm", "group_norm",
    "LayerNormFunction",
    "LayerNorm", "RMSNorm", "BatchNorm2d", "GroupNorm", "BatchNormTokens",
    "group_norm_factory",
    "bn_scale_shift", "fold_batchnorm", "fold_norm_into_linear",
    "FixedLayerNorm", "layer_norm_inv_std", "fix_layer_norms", "PRepBN",
    "norm_affine", "fold_transformer_norms",
    "fold_resnet_batchnorms",
]

ShapeLike = int | Sequence[int] | torch.Size


# ---------------------------------------------------------------------------------------
# Small helpers shared by all layers
# ---------------------------------------------------------------------------------------

def _as_shape(normalized_shape: ShapeLike) -> tuple[int, ...]:
    """``8`` -> ``(8,)``; ``(4, 5)`` -> ``(4, 5)``, as ``nn.LayerNorm`` accepts."""
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(int(d) for d in normalized_shape)


def _check_float(x: torch.Tensor, who: str) -> None:
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{who} needs a floating-point tensor, got dtype {x.dtype}; "
            f"convert it first, e.g. x.float()"
        )


def _opmath(x: torch.Tensor) -> torch.Tensor:
    """Statistics of float16/bfloat16 tensors are computed in float32, as PyTorch does.

    A sum of a few thousand squares overflows float16 (max 65504) and loses digits in
    bfloat16 (8 bits of mantissa); PyTorch's kernels accumulate in float32 ("opmath")
    and cast the result back, so we do the same.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_last_dims(x: torch.Tensor, shape: tuple[int, ...], who: str) -> None:
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(
            f"{who} normalizes over the last dims {list(shape)}, but the input has shape "
            f"{list(x.shape)}; pass normalized_shape equal to the input's trailing dims "
            f"(e.g. the feature count C of a (B, T, C) tensor)"
        )


def _check_param(p: torch.Tensor | None, shape: tuple[int, ...], name: str, who: str) -> None:
    if p is not None and tuple(p.shape) != shape:
        raise ValueError(
            f"{who}: {name} has shape {list(p.shape)} but must have the normalized shape "
            f"{list(shape)}"
        )


# ---------------------------------------------------------------------------------------
# LayerNorm  (Ba, Kiros & Hinton, 2016)
#
#   mu = mean(x),  sigma^2 = mean((x - mu)^2)      over the last dims, per token
#   y  = (x - mu) / sqrt(sigma^2 + eps) * weight + bias
# ---------------------------------------------------------------------------------------

def _affine_parameters(module: nn.Module, shape: tuple[int, ...], affine: bool, bias: bool,
                       factory: dict) -> None:
    """Register PyTorch's ``weight`` (ones) and ``bias`` (zeros) of ``shape`` on ``module``.

    A parameter that is switched off is registered as ``None``, as PyTorch does, so the
    state_dicts of the modules here and of PyTorch's load into each other.
    """
    weight = nn.Parameter(torch.ones(shape, **factory)) if affine else None
    module.register_parameter("weight", weight)
    module.register_parameter(
        "bias", nn.Parameter(torch.zeros(shape, **factory)) if affine and bias else None)


def _reset_affine(module: nn.Module) -> None:
    """``weight`` back to ones and ``bias`` back to zeros (where they exist)."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    normalized_shape: ShapeLike | None = None,
    manual_backward: bool = False,
) -> torch.Tensor:
    """Layer normalization over the last dims of ``x``, like ``F.layer_norm``.

    Args:
        x: ``(*, *normalized_shape)``, e.g. ``(B, T, C)``.
        weight, bias: ``normalized_shape`` or ``None`` (no scale / no shift).
        eps: added to the variance before the square root.
        normalized_shape: the trailing dims to normalize over. Default: ``weight.shape``
            (or ``bias.shape``) when given, else the last dim ``(C,)``.
        manual_backward: use :class:`LayerNormFunction` (hand-written backward) instead of
            letting autograd differentiate the forward. Same values, same gradients.
    Returns:
        ``y``, the same shape and dtype as ``x``.

    Note the argument order ``(x, weight, bias, eps)``: the normalized shape is usually
    implied, so it is keyword-only (``F.layer_norm`` takes it second).
    """
    _check_float(x, "layer_norm")
    if normalized_shape is None:
        p = weight if weight is not None else bias
        normalized_shape = tuple(p.shape) if p is not None else (x.shape[-1],)
    shape = _as_shape(normalized_shape)
    _check_last_dims(x, shape, "layer_norm")
    _check_param(weight, shape, "weight", "layer_norm")
    _check_param(bias, shape, "bias", "layer_norm")
    if manual_backward:
        return LayerNormFunction.apply(x, shape, weight, bias, eps)

    dims = tuple(range(-len(shape), 0))
    xf = _opmath(x)
    mu = xf.mean(dims, keepdim=True)
    # Biased variance (divide by n, not n - 1): it describes *this* token's features,
    # it is not an estimate of a population's.
    var = (xf - mu).pow(2).mean(dims, keepdim=True)
    y = (xf - mu) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm with a hand-written backward pass.

    Use it as ``LayerNormFunction.apply(x, normalized_shape, weight, bias, eps)`` or through
    ``layer_norm(x, weight, bias, eps, manual_backward=True)``.

    Forward, per token over its n normalized features:
    ``xhat = (x - mu) * rstd`` with ``rstd = 1 / sqrt(var + eps)``, ``y = xhat * w + b``.

    Backward: with ``g = dy * w`` (the gradient reaching ``xhat``),

        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))

    The two subtracted terms are the gradient flowing back through ``mu`` and through
    ``var``: moving every input by the same amount changes nothing (so the mean of ``g`` is
    removed), and scaling every input around ``mu`` changes nothing either (so the part of
    ``g`` along ``xhat`` is removed). The parameter gradients sum over all tokens:
    ``dw = sum(dy * xhat)``, ``db = sum(dy)``.

    It saves ``xhat`` and ``rstd``: one activation-sized tensor, as autograd would (in
    float32 for float16/bfloat16 inputs, so twice their bytes).
    Second derivatives are not supported (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):  # type: ignore[override]
        shape = _as_shape(normalized_shape)
        dims = tuple(range(-len(shape), 0))
        xf = _opmath(x)
        mu = xf.mean(dims, keepdim=True)
        var = (xf - mu).pow(2).mean(dims, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        xhat = (xf - mu) * rstd
        y = xhat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.dims = dims
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.x_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):  # type: ignore[override]
        xhat, rstd, weight = ctx.saved_tensors
        dims = ctx.dims
        dyf = _opmath(dy)
        # Leading (token) dims, summed over for the parameter gradients. (Careful:
        # t.sum(()) sums over *every* dim, so a single token is a special case.)
        batch_dims = tuple(range(dy.dim() - len(dims)))

        def sum_tokens(t: torch.Tensor) -> torch.Tensor:
            return t.sum(batch_dims) if batch_dims else t

        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            g = dyf * weight if weight is not None else dyf         # dL/dxhat
            mean_g = g.mean(dims, keepdim=True)                      # through mu
            mean_gx = (g * xhat).mean(dims, keepdim=True)            # through var
            dx = (rstd * (g - mean_g - xhat * mean_gx)).to(ctx.x_dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            dweight = sum_tokens(dyf * xhat).to(weight.dtype)       # sum(dy * xhat)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            dbias = sum_tokens(dyf).to(ctx.bias_dtype)              # sum(dy)
        return dx, None, dweight, dbias, None


class LayerNorm(nn.Module):
    """``nn.LayerNorm`` from scratch: same arguments, parameters and numerics.

    Input ``(*, *normalized_shape)``, e.g. ``(B, T, C)`` with ``LayerNorm(C)``; output the
    same shape. Parameters ``weight`` (ones) and ``bias`` (zeros) of ``normalized_shape``;
    ``elementwise_affine=False`` drops both, ``bias=False`` drops the shift only.
    """

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        _affine_parameters(self, self.normalized_shape, elementwise_affine, bias, factory)

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps,
                          normalized_shape=self.normalized_shape)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# ---------------------------------------------------------------------------------------
# RMSNorm  (Zhang & Sennrich, NeurIPS 2019)
#
#   y = x / sqrt(mean(x^2) + eps) * weight          no centering, no bias
# ---------------------------------------------------------------------------------------

def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    normalized_shape: ShapeLike | None = None,
) -> torch.Tensor:
    """Root-mean-square normalization over the last dims, like ``F.rms_norm``.

    Args:
        x: ``(*, *normalized_shape)``, e.g. ``(B, T, C)``.
        weight: ``normalized_shape`` or ``None``.
        eps: added to the mean square. ``None`` (the PyTorch default) means the machine
            epsilon of the dtype the statistics are computed in:
            ``torch.finfo(torch.float32).eps`` (1.2e-7) for float16/bfloat16/float32
            inputs, ``torch.finfo(torch.float64).eps`` (2.2e-16) for float64. (PyTorch's
            docs say ``torch.finfo(x.dtype).eps``; its kernels use the epsilon of the
            float32 "opmath" type for half inputs, and we match the kernels.)
        normalized_shape: trailing dims; default ``weight.shape`` or the last dim.
    Returns:
        ``y``, same shape and dtype as ``x``.
    """
    _check_float(x, "rms_norm")
    if normalized_shape is None:
        normalized_shape = tuple(weight.shape) if weight is not None else (x.shape[-1],)
    shape = _as_shape(normalized_shape)
    _check_last_dims(x, shape, "rms_norm")
    _check_param(weight, shape, "weight", "rms_norm")

    dims = tuple(range(-len(shape), 0))
    xf = _opmath(x)
    if eps is None:
        eps = torch.finfo(xf.dtype).eps
    # One reduction (mean of squares) instead of LayerNorm's two (mean, then variance),
    # and no subtraction: that is all RMSNorm saves, and all it gives up is re-centering.
    y = xf * torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    """``nn.RMSNorm`` from scratch: same arguments (``eps=None`` default), ``weight`` only.

    Input ``(*, *normalized_shape)``; output the same shape and dtype.
    """

    def __init__(
        self,
        normalized_shape: ShapeLike,
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(
                torch.ones(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, normalized_shape=self.normalized_shape)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# ---------------------------------------------------------------------------------------
# BatchNorm  (Ioffe & Szegedy, ICML 2015)
#
#   training:  mu, sigma^2 over every axis but the channel (biased variance)
#              y = (x - mu) / sqrt(sigma^2 + eps) * weight + bias
#              running_mean <- (1 - m) running_mean + m mu
#              running_var  <- (1 - m) running_var  + m sigma^2 * n / (n - 1)   (unbiased)
#   eval:      the same formula with the running statistics: a fixed affine map
# ---------------------------------------------------------------------------------------

def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Batch normalization over every dim but dim 1, like ``F.batch_norm``.

    Args:
        x: ``(N, C, *)``, e.g. ``(N, C, H, W)`` or ``(N, C)``.
        running_mean, running_var: ``(C,)`` buffers or ``None``. With ``training=True``
            they are updated in place (if given); with ``training=False`` they are used.
        weight, bias: ``(C,)`` or ``None``.
        training: normalize with this batch's statistics (and update the running ones).
        momentum: weight of the new batch in the running averages.
        eps: added to the variance.
    Returns:
        ``y``, same shape and dtype as ``x``.
    """
    _check_float(x, "batch_norm")
    if x.dim() < 2:
        raise ValueError(
            f"batch_norm expects an input of shape (N, C, *), got shape {list(x.shape)}; "
            f"add a batch dim with x[None] or use a (N, C) tensor"
        )
    C = x.shape[1]
    for name, t in [("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)]:
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(
                f"batch_norm: {name} has shape {list(t.shape)} but the input has C={C} "
                f"channels (dim 1 of shape {list(x.shape)}); build the layer with "
                f"num_features={C} or feed {t.shape[0] if t.dim() == 1 else '?'} channels"
            )
    dims = (0, *range(2, x.dim()))                 # every dim but the channel dim
    bshape = (1, C) + (1,) * (x.dim() - 2)         # (C,) -> broadcastable over x
    xf = _opmath(x)

    if training:
        n = x.numel() // C                         # values per channel in this batch
        if n <= 1:
            raise ValueError(
                f"batch_norm in training mode needs more than 1 value per channel to "
                f"compute a variance, got input shape {list(x.shape)}; use a batch of "
                f"2 or more, or call .eval() to use the running statistics"
            )
        mean = xf.mean(dims)
        var = (xf - mean.view(bshape)).pow(2).mean(dims)        # biased: normalizes
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(momentum * mean.to(running_mean.dtype))
        if running_var is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1))                   # unbiased: estimates
                running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
    else:
        if running_mean is None or running_var is None:
            raise ValueError(
                "batch_norm with training=False normalizes with running_mean and "
                "running_var, but they are None; pass them, or use training=True"
            )
        mean, var = running_mean, running_var

    y = (xf - mean.view(bshape)) * torch.rsqrt(var.view(bshape) + eps)
    if weight is not None:
        y = y * weight.view(bshape)
    if bias is not None:
        y = y + bias.view(bshape)
    return y.to(x.dtype)


class _BatchNorm(nn.Module):
    """Shared state and training logic of ``BatchNorm2d`` and ``BatchNormTokens``.

    Parameter and buffer names are PyTorch's (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``) so state_dicts are interchangeable.
    """

    _version = 2  # nn.BatchNorm's state_dict version (it has num_batches_tracked)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        _affine_parameters(self, (self.num_features,), affine, bias, factory)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        _reset_affine(self)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, C, *)``. PyTorch's ``_BatchNorm.forward``, step by step."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                # Cumulative moving average: after k batches the running stats are the
                # plain mean of the k batch statistics (weight 1/k for the newest).
                factor = 1.0 / float(self.num_batches_tracked)
        # Batch statistics while training, and also in eval if no running stats exist.
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight, self.bias, use_batch_stats, factor, self.eps,
        )

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """``nn.BatchNorm2d`` from scratch: input ``(N, C, H, W)``, statistics per channel.

    Same constructor, parameters, buffers and numerics as PyTorch: training normalizes with
    the batch's biased variance and updates ``running_var`` with the unbiased one;
    ``momentum=None`` gives a cumulative moving average over ``num_batches_tracked``
    batches; eval mode uses the running statistics, so the layer is then a per-channel
    affine map that :func:`fold_batchnorm` merges into the preceding convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"BatchNorm2d expects a 4-D input (N, C, H, W), got a {x.dim()}-D input of "
                f"shape {list(x.shape)}; for (N, C) or (N, C, L) use nn.BatchNorm1d, for "
                f"(B, T, C) tokens use BatchNormTokens"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2d({self.num_features}) got {x.shape[1]} channels (input shape "
                f"{list(x.shape)}); channels are dim 1, build it with num_features="
                f"{x.shape[1]}"
            )
        return self._normalize(x)


# ---------------------------------------------------------------------------------------
# GroupNorm  (Wu & He, ECCV 2018)
#
#   split C channels into G groups; mu, sigma^2 over (C/G, *) per sample and group
#   y = (x - mu) / sqrt(sigma^2 + eps) * weight_c + bias_c      (affine per channel)
# ---------------------------------------------------------------------------------------

def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Group normalization, like ``F.group_norm``.

    Args:
        x: ``(N, C, *)``, e.g. ``(N, C, H, W)``.
        num_groups: G, must divide C. G=1 is LayerNorm over (C, H, W); G=C is InstanceNorm.
        weight, bias: ``(C,)`` or ``None``.
    Returns:
        ``y``, same shape and dtype as ``x``.
    """
    _check_float(x, "group_norm")
    if x.dim() < 2:
        raise ValueError(f"group_norm expects (N, C, *), got shape {list(x.shape)}")
    N, C = x.shape[:2]
    if num_groups < 1 or C % num_groups != 0:
        raise ValueError(
            f"group_norm: num_groups={num_groups} must divide the channel count C={C}; "
            f"pick a divisor of {C}"
        )
    for name, t in [("weight", weight), ("bias", bias)]:
        if t is not None and tuple(t.shape) != (C,):
            raise ValueError(
                f"group_norm: {name} has shape {list(t.shape)} but the input has C={C} "
                f"channels (shape {list(x.shape)})"
            )
    xf = _opmath(x)
    g = xf.reshape(N, num_groups, -1)             # (N, G, C/G * H * W)
    mu = g.mean(-1, keepdim=True)
    var = (g - mu).pow(2).mean(-1, keepdim=True)   # biased, like every norm here
    y = ((g - mu) * torch.rsqrt(var + eps)).reshape(x.shape)
    bshape = (1, C) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(bshape)
    if bias is not None:
        y = y + bias.view(bshape)
    return y.to(x.dtype)


class GroupNorm(nn.Module):
    """``nn.GroupNorm`` from scratch: ``GroupNorm(num_groups, num_channels)``.

    Input ``(N, C, *)``. Independent of the batch size (no running statistics), which is
    why it replaces BatchNorm for small batches (detection, diffusion U-Nets).

    As a ``norm=`` factory the group count must be bound first:
    ``norm=group_norm_factory(8)`` (same as ``functools.partial(GroupNorm, 8)``).
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} is not divisible by "
                f"num_groups={num_groups}; pick num_groups among the divisors of "
                f"{num_channels}"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        _affine_parameters(self, (num_channels,), affine, bias, factory)

    def reset_parameters(self) -> None:
        _reset_affine(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm({self.num_groups}, {self.num_channels}) expects (N, C, *) with "
                f"C={self.num_channels}, got shape {list(x.shape)}"
            )
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


def group_norm_factory(num_groups: int) -> Callable[[int], GroupNorm]:
    """A ``norm(channels)`` factory for ``ml.models``: ``norm=group_norm_factory(8)``.

    ``group_norm_factory(8)(64)`` is ``GroupNorm(8, 64)``; it is just
    ``functools.partial(GroupNorm, num_groups)``.
    """
    return functools.partial(GroupNorm, num_groups)


# ---------------------------------------------------------------------------------------
# Folding a normalization into a neighbouring linear layer
#
# In eval mode a BatchNorm is  y = s * x + t  per channel, with
#   s = weight / sqrt(running_var + eps),   t = bias - running_mean * s
# so it costs nothing once merged into the conv before it or the linear after it.
# ---------------------------------------------------------------------------------------

def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(s, t)`` with ``bn(x) == s * x + t`` in eval mode, in float64.

    ``bn``: any batch norm with running statistics in eval mode (``nn.BatchNorm1d/2d``,
    :class:`BatchNorm2d`, :class:`BatchNormTokens`). Returns two ``(C,)`` tensors.
    """
    if bn.training:
        raise ValueError(
            f"cannot fold {type(bn).__name__} in training mode: it normalizes with batch "
            f"statistics there, not a fixed affine map; call .eval() on it first"
        )
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        raise ValueError(
            f"cannot fold {type(bn).__name__} without running statistics "
            f"(track_running_stats=False normalizes with batch statistics even in eval)"
        )
    mean = bn.running_mean.double()
    var = bn.running_var.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    s = weight / torch.sqrt(var + bn.eps)       # gamma / sqrt(var + eps)
    t = bias - mean * s                          # beta - mean * gamma / sqrt(var + eps)
    return s, t


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new ``nn.Conv2d`` equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``conv`` then ``bn`` is ``s * (W * x + b) + t``, so per output channel o:

        W'_o = W_o * s_o          b'_o = (b_o - mean_o) * gamma_o / sqrt(var_o + eps) + beta_o
                                       = s_o * b_o + t_o

    Grouped and depthwise convs fold the same way (the scale is per output channel).
    The new conv always has a bias; ``conv`` and ``bn`` are left untouched. The folding is
    done in float64 and cast back to ``conv``'s dtype.

    Args:
        conv: ``nn.Conv2d`` with C_out output channels.
        bn: ``nn.BatchNorm2d`` or :class:`BatchNorm2d` with ``num_features == C_out``, in
            eval mode with running statistics.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fold_batchnorm folds into an nn.Conv2d, got {type(conv).__name__}")
    s, t = bn_scale_shift(bn)
    if s.shape[0] != conv.out_channels:
        raise ValueError(
            f"cannot fold: the conv has {conv.out_channels} output channels but the "
            f"batch norm has {s.shape[0]} features; the norm must follow this conv"
        )
    W = conv.weight
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode, device=W.device, dtype=W.dtype,
    )
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    fused.weight.copy_((W.double() * s.view(-1, 1, 1, 1)).to(W.dtype))  # W' = W * s
    fused.bias.copy_((s * b + t).to(W.dtype))                            # b' = s b + t
    fused.train(conv.training)
    return fused


class BatchNormTokens(_BatchNorm):
    """BatchNorm for transformer tokens: ``(B, T, C)`` normalized over all B*T tokens.

    A *foldable* normalization for transformers. LayerNorm computes statistics of every
    token at inference, which costs memory traffic and a reduction per layer. A batch norm
    over tokens uses running statistics at inference, so it becomes the fixed per-channel
    affine map ``s * x + t``, which :func:`fold_norm_into_linear` merges into the next
    ``nn.Linear`` (the QKV projection or the first MLP layer): zero cost.

    Plain BatchNorm makes transformer training unstable; the papers that make it work
    add machinery on top of this core: Unified Normalization (Yang et al., ACM MM 2022,
    "Unified Normalization for Accelerating and Stabilizing Transformers") smooths the
    statistics and filters outliers; SLAB (Guo et al., ICML 2024, "SLAB: Efficient
    Transformers with Simplified Linear Attention and Progressive Re-parameterized Batch
    Normalization") uses RepBN, ``BN(x) + eta * x``, and moves from LayerNorm to it
    progressively during training. Both fold into the neighbouring linear at inference,
    which is the part implemented here.

    Input ``(*, C)`` (usually ``(B, T, C)``); statistics per channel over all other dims.
    Same buffers and numerics as ``nn.BatchNorm1d`` applied to ``x.transpose(1, 2)``.
    Works as ``norm=ml.norm.BatchNormTokens`` in ``ml.models``.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, eps, momentum, affine, track_running_stats, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"BatchNormTokens({self.num_features}) expects (B, T, C) (or any (*, C)) "
                f"with C={self.num_features} last, got shape {list(x.shape)}"
            )
        # (B, T, C) -> (B*T, C): every token is one sample of each channel's statistics.
        return self._normalize(x.reshape(-1, self.num_features)).reshape(x.shape)


# ---------------------------------------------------------------------------------------
# Normalization at inference: fixed-statistics norms, progressive BN, folding a whole
# transformer's norms (notebook 2.3)
#
#   FixedLayerNorm:  y = (x - mean(x)) * c * weight + bias      c fixed (no per-token std)
#   PRepBN:          y = lam * LN(x) + (1 - lam) * (BN(x) + eta * x),  lam: 1 -> 0
# ---------------------------------------------------------------------------------------

class FixedLayerNorm(nn.Module):
    """A LayerNorm whose per-token ``1/std`` is replaced by one fixed number: a linear map.

    ``y = (x - mean(x)) * inv_std * weight + bias`` over the last dim. The centering is a
    linear map (a projection), the scale a constant, so the whole layer is affine and
    folds into the next ``nn.Linear`` (:func:`fold_norm_into_linear`). This is how
    LayerNorm is removed from a trained GPT by fine-tuning (Heimersheim 2024; Baroni et
    al. 2025): replace each LN by its average behaviour, measured on calibration data
    (:meth:`from_layer_norm`), and let a short fine-tune absorb the difference.

    ``inv_std`` is a buffer (not trained); ``weight`` and ``bias`` are the LN's parameters.
    Input ``(*, C)``, output the same shape and dtype.
    """

    def __init__(self, dim: int, inv_std: float = 1.0, center: bool = True,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.dim, self.center = dim, center
        self.weight = nn.Parameter(torch.ones(dim, **factory))
        self.bias = nn.Parameter(torch.zeros(dim, **factory))
        self.register_buffer("inv_std", torch.tensor(float(inv_std), **factory))

    @classmethod
    @torch.no_grad()
    def from_layer_norm(cls, ln: nn.Module, inv_std: float) -> "FixedLayerNorm":
        """The fixed version of ``ln`` (an ``nn.LayerNorm`` or :class:`LayerNorm` over one
        dim): same gain and bias, ``1/std`` frozen to ``inv_std``."""
        shape = tuple(ln.normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"FixedLayerNorm replaces a LayerNorm over one dim; got "
                             f"normalized_shape={list(shape)}")
        ref = ln.weight if ln.weight is not None else ln.bias
        fixed = cls(shape[0], inv_std, device=ref.device if ref is not None else None,
                    dtype=ref.dtype if ref is not None else None)
        if ln.weight is not None:
            fixed.weight.copy_(ln.weight)
        if ln.bias is not None:
            fixed.bias.copy_(ln.bias)
        return fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"FixedLayerNorm({self.dim}) got {x.shape[-1]} features in the "
                             f"last dim (input shape {list(x.shape)})")
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        return x * (self.inv_std * self.weight) + self.bias

    def extra_repr(self) -> str:
        return f"{self.dim}, inv_std={self.inv_std.item():.4g}, center={self.center}"


@torch.no_grad()
def layer_norm_inv_std(model: nn.Module, batches, names: Sequence[str] | None = None,
                       ) -> dict[str, float]:
    """The fixed scale of each LayerNorm in ``model``: ``1 / mean(std)`` on ``batches``.

    Runs ``model(x)`` (eval mode, restored afterwards) on every ``x`` of ``batches``
    (tensors, or ``(x, y)`` pairs) with forward hooks on the LayerNorms named in ``names``
    (default: every ``nn.LayerNorm`` / :class:`LayerNorm`); for each it averages, over all
    tokens seen, the token's ``sqrt(var + eps)`` (the denominator LN divides by), and
    returns ``{name: 1 / that average}``, the number :class:`FixedLayerNorm` multiplies by.
    """
    modules = dict(model.named_modules())
    if names is None:
        names = [n for n, m in modules.items() if isinstance(m, (nn.LayerNorm, LayerNorm))]
    sums = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    hooks = []
    for n in names:
        if n not in modules:
            raise KeyError(f"no module named {n!r} in the model")
        eps = modules[n].eps

        def hook(mod, inputs, output, n=n, eps=eps):
            x = _opmath(inputs[0])
            std = torch.sqrt(x.var(-1, unbiased=False) + eps)
            sums[n] += std.double().sum().item()
            counts[n] += std.numel()
        hooks.append(modules[n].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for b in batches:
            model(b[0] if isinstance(b, (tuple, list)) else b)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if any(c == 0 for c in counts.values()):
        raise ValueError("some LayerNorms saw no input: is `batches` empty?")
    return {n: counts[n] / sums[n] for n in names}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def fix_layer_norms(model: nn.Module, batches, names: Sequence[str]) -> dict[str, float]:
    """Replace the LayerNorms ``names`` of ``model`` (in place) by :class:`FixedLayerNorm`.

    Each scale is calibrated by :func:`layer_norm_inv_std` on ``batches`` with the model as
    it is now (earlier replacements included). Returns ``{name: inv_std}``.
    """
    scales = layer_norm_inv_std(model, batches, names)
    for n in names:
        _set_module(model, n, FixedLayerNorm.from_layer_norm(model.get_submodule(n), scales[n]))
    return scales


class PRepBN(nn.Module):
    """Progressive re-parameterized BatchNorm (SLAB, Guo et al., ICML 2024).

    ``y = lam * LN(x) + (1 - lam) * RepBN(x)``, with ``RepBN(x) = BN(x) + eta * x``
    (:class:`BatchNormTokens` plus a learned scalar ``eta``, initialised to 1) and ``lam``
    going linearly from 1 to 0 over ``steps`` training forward passes (after ``warmup``
    passes of pure LayerNorm). Training starts as a LayerNorm transformer, which trains
    well, and ends as a BatchNorm one, which folds away at inference
    (:func:`fold_norm_into_linear`).

    Each forward pass in training mode counts one step (the layer is called once per
    optimizer step in ``ml.models``); the count is a buffer, so it survives a state_dict.
    The buffer stays on the CPU when the layer moves to a GPU: ``lam`` reads it on every
    forward pass, and reading a GPU tensor from Python would wait for the GPU each time
    (a host-device sync per layer and step). In eval mode the layer uses the current
    ``lam`` (SLAB's code uses the BN branch only; the two agree once ``lam`` reached 0,
    which is when it is meant to be deployed).
    Input ``(*, C)``. As a ``norm=`` factory: ``functools.partial(PRepBN, steps=N)``.
    """

    def __init__(self, dim: int, steps: int = 1000, warmup: int = 0, eps: float = 1e-5,
                 momentum: float | None = 0.1) -> None:
        super().__init__()
        if steps < 1 or warmup < 0:
            raise ValueError(f"PRepBN needs steps >= 1 and warmup >= 0; got {steps}, {warmup}")
        self.steps, self.warmup = steps, warmup
        self.ln = nn.LayerNorm(dim, eps=eps)
        self.bn = BatchNormTokens(dim, eps=eps, momentum=momentum)
        self.eta = nn.Parameter(torch.ones(1))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # on the host, always

    def _apply(self, fn, *args, **kwargs):
        """``.to()``, ``.cuda()``, ``.double()`` ... move and cast everything but ``step``."""
        step = self.step
        super()._apply(fn, *args, **kwargs)
        self._buffers["step"] = step           # a host counter: no device sync to read it
        return self

    @property
    def lam(self) -> float:
        """The LayerNorm's share now: 1 during warm-up, then linear down to 0."""
        s = int(self.step) - self.warmup
        return 1.0 if s <= 0 else max(0.0, 1.0 - s / self.steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam
        if self.training:
            self.step.add_(1)
        if lam >= 1.0 and self.training:
            return self.ln(x)         # warm-up: the BN branch (and its statistics) waits
        rep = self.bn(x) + self.eta * x
        return rep if lam <= 0.0 else lam * self.ln(x) + (1 - lam) * rep

    def extra_repr(self) -> str:
        return f"steps={self.steps}, warmup={self.warmup}, lam={self.lam:.3g}"


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(s, t, center)`` in float64 with ``norm(x) == s * (x - center * mean(x)) + t``.

    For every norm that is a fixed affine map at inference: an eval-mode batch norm
    (:class:`BatchNormTokens`, ``nn.BatchNorm1d``; ``center=False``), a
    :class:`FixedLayerNorm` (``center=True``), and a :class:`PRepBN` whose LayerNorm share
    has reached 0 (its ``BN(x) + eta x``). Raises ``ValueError`` for anything that
    computes statistics of each input (LayerNorm, RMSNorm, PRepBN with ``lam > 0``).
    """
    if isinstance(norm, FixedLayerNorm):
        s = norm.inv_std.double() * norm.weight.double()
        return s, norm.bias.double(), norm.center
    if isinstance(norm, PRepBN):
        if norm.lam > 0:
            raise ValueError(f"cannot fold a PRepBN whose LayerNorm share is still "
                             f"lam={norm.lam:.3g} > 0: it has not finished its schedule")
        s, t = bn_scale_shift(norm.bn)
        return s + norm.eta.double(), t, False
    if hasattr(norm, "running_mean"):
        s, t = bn_scale_shift(norm)
        return s, t, False
    raise ValueError(f"{type(norm).__name__} computes statistics of every input; it is "
                     f"not a fixed affine map and cannot be folded")


@torch.no_grad()
def fold_norm_into_linear(norm: nn.Module, linear: nn.Linear) -> nn.Linear:
    """A new ``nn.Linear`` equal to ``linear(norm(x))``, for a norm that is a fixed affine map.

    The norm comes *before* the linear. With ``norm(x) = S C x + t`` (:func:`norm_affine`:
    ``S = diag(s)``, ``C`` the centering ``I - 11^T/n`` of a :class:`FixedLayerNorm`, or
    ``I`` for an eval-mode batch norm):

        W (S C x + t) + b = (W S C) x + (W t + b):     W' = W S C,   b' = W t + b

    ``W S`` scales the input columns of ``W``; ``W S C`` then removes each row's mean (``C``
    is symmetric).

    Args:
        norm: an eval-mode batch norm over the linear's inputs (:class:`BatchNormTokens`,
            ``nn.BatchNorm1d``), a :class:`FixedLayerNorm`, or a finished :class:`PRepBN`;
            C = ``linear.in_features``.
        linear: ``nn.Linear(C, out)``; a new linear with a bias is returned, the inputs
            are left untouched. Folding is done in float64, cast back to the linear's dtype.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"fold_norm_into_linear folds into an nn.Linear, got "
                        f"{type(linear).__name__}")
    s, t, center = norm_affine(norm)
    if s.shape[0] != linear.in_features:
        raise ValueError(
            f"cannot fold: the norm has {s.shape[0]} features but the linear has "
            f"in_features={linear.in_features}; the norm must feed this linear"
        )
    W = linear.weight
    Ws = W.double() * s[None, :]                          # W S (per input column)
    if center:
        Ws = Ws - Ws.mean(1, keepdim=True)                # W S C
    b = linear.bias.double() if linear.bias is not None else torch.zeros(
        linear.out_features, dtype=torch.float64, device=W.device)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True,
                      device=W.device, dtype=W.dtype)
    fused.weight.copy_(Ws.to(W.dtype))
    fused.bias.copy_((W.double() @ t + b).to(W.dtype))   # b' = W t + b
    fused.train(linear.training)
    return fused


@torch.no_grad()
def fold_transformer_norms(model: nn.Module) -> nn.Module:
    """A copy of a Pre-LN ``ml.models.ViT`` or ``CharGPT`` with every foldable norm folded.

    In each pre-norm block ``norm1`` feeds ``attn.qkv`` and ``norm2`` feeds ``mlp.fc``;
    the final ``norm`` feeds ``head``. Each of them that :func:`norm_affine` accepts is
    merged into its linear (:func:`fold_norm_into_linear`) and replaced by
    ``nn.Identity``. (A CharGPT's head is tied to the token embedding; folding gives it its
    own weight and a bias.) The model is left untouched; the copy is in eval mode.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    pairs = []
    for block in getattr(folded, "blocks", []):
        if getattr(block, "placement", "pre") != "pre":
            raise ValueError(f"fold_transformer_norms needs Pre-LN blocks (the norm feeds a "
                             f"linear); got placement={block.placement!r}")
        pairs += [(block, "norm1", block.attn, "qkv"), (block, "norm2", block.mlp, "fc")]
    pairs.append((folded, "norm", folded, "head"))
    for owner, norm_name, lin_owner, lin_name in pairs:
        norm, lin = getattr(owner, norm_name), getattr(lin_owner, lin_name, None)
        if not isinstance(lin, nn.Linear):
            raise TypeError(f"{norm_name} must feed an nn.Linear {lin_name!r}; got "
                            f"{type(lin).__name__}")
        try:
            norm_affine(norm)
        except ValueError:
            continue                                 # a per-input norm stays as it is
        setattr(lin_owner, lin_name, fold_norm_into_linear(norm, lin))
        setattr(owner, norm_name, nn.Identity())
    return folded


@torch.no_grad()
def fold_resnet_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of a CNN with every ``Conv2d`` followed by a batch norm folded into it.

    Walks every ``nn.Sequential`` (``ml.models.ResNet9``'s ``ConvBlock`` is one): each
    ``Conv2d`` directly followed by an eval-mode ``nn.BatchNorm2d`` / :class:`BatchNorm2d`
    becomes :func:`fold_batchnorm`'s conv, and the norm an ``nn.Identity``. The model is
    left untouched; the copy is in eval mode.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    for seq in [m for m in folded.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, (nn.BatchNorm2d, BatchNorm2d)):
                seq._modules[a] = fold_batchnorm(conv, bn)
                seq._modules[b] = nn.Identity()
    return folded
