"""Chapter 5: quantization from scratch, from uniform affine grids to GPTQ and FP4.

Quantization stores a float tensor ``x`` as small integers ``q`` on a uniform grid and
two parameters, a *scale* ``s`` and a *zero point* ``z``:

    q     = clamp(round(x / s) + z, q_min, q_max)
    x_hat = (q - z) s

Everything in this module is a variation on those two lines:

=============================  =============================================================
what                           functions / classes
=============================  =============================================================
the grid                       :func:`qrange`, :func:`qparams`, :func:`quantize`,
                               :func:`dequantize`, :func:`sqnr` (its error in dB)
simulated quantization         :func:`fake_quant` (straight-through gradient, as
                               ``torch.fake_quantize_per_tensor_affine`` /
                               ``torch.fake_quantize_per_channel_affine``)
post-training quantization     :func:`choose_range` (minmax / percentile / mse),
                               :func:`calibrate`, :class:`QuantLinear`, :class:`QuantConv2d`,
                               :func:`quantize_model`
integer kernels                :func:`int8_matmul` (``torch._int_mm`` where it works)
outliers and weight-only       :func:`smooth_quant_scales` (SmoothQuant), :func:`gptq_quantize`
                               (GPTQ), :func:`lorc` (ZeroQuant-V2 low-rank compensation)
floating-point formats         :func:`fp8_round_trip`, :func:`fp4_e2m1`, :func:`fp4_e2m1_round`
whole models                   :func:`input_stats` (per-channel absmax, GPTQ Hessians),
                               :func:`gptq_model`, :func:`smooth_quant_fold`,
                               :func:`smooth_quant_model`, :class:`LoRCLinear`,
                               :func:`lorc_model`
real storage                   :func:`pack_int4`, :func:`unpack_int4`,
                               :class:`WeightOnlyLinear`, :func:`weight_only_model`,
                               :func:`quantized_bytes`
=============================  =============================================================

Conventions (the same everywhere in the module):

* **Granularity.** ``axis=None``: one (scale, zero point) for the whole tensor, returned as
  0-dim tensors. ``axis=k``: one per slice along dim ``k`` ("per-channel"), shape ``(C,)``
  with ``C = x.shape[k]``, exactly the layout ``torch.fake_quantize_per_channel_affine``
  takes. ``group_size=g``: one per ``g`` contiguous elements of the *last* dim
  ("per-group"), shape ``x.shape[:-1] + (K // g,)``; the last dim must be divisible by ``g``.
  Per-group is per-channel on ``x.reshape(-1, g)`` with ``axis=0``.
* **Grids.** Symmetric: ``z = 0`` and ``q`` in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (the
  *restricted* range: ``-128`` is never used for int8, so the grid is symmetric about zero,
  ``-q`` is always representable, and ``s = max|x| / (2^(b-1) - 1)`` as in LLM.int8's absmax
  quantization). Asymmetric: ``q`` in ``[0, 2^b - 1]``, ``s = (max - min) / (2^b - 1)``,
  ``z = round(-min / s)`` clamped to the grid. As PyTorch's observers do, the range is
  first widened to contain 0 (so 0, e.g. zero padding or a ReLU output, is exact), and the
  scale is at least ``float32`` epsilon (a constant tensor gives a finite scale).
* **Types.** Scales are float32 and zero points int32 (what PyTorch's fake-quantize ops
  take). Integer codes ``q`` are int8 for symmetric grids of up to 8 bits, uint8 for
  asymmetric grids of up to 8 bits, and int32 for 9 to 16 bits. Codes of fewer than 8 bits
  are stored one per byte (not packed).
* **Numerics match PyTorch.** ``round`` is round-half-to-even (``torch.round``, C's
  ``nearbyint``) and ``x / s`` is computed as ``x * (1 / s)`` with ``1 / s`` in float32, the
  way ``torch.fake_quantize_*`` kernels do, so :func:`fake_quant` is bitwise equal to them on
  float32, float16 and bfloat16 inputs given the same scale and zero point (float16 and
  bfloat16 are computed in float32 and cast back). On float64 inputs the per-tensor
  PyTorch kernel dequantizes in float32; ours stays in float64 (differences ~1e-8).

References:
    Jacob et al., "Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference", CVPR 2018 (affine quantization, fake-quant training).
    Bengio, Leonard & Courville, 2013 (the straight-through estimator).
    Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale",
    NeurIPS 2022 (absmax / vector-wise int8, outlier features).
    Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
    Language Models", ICML 2023.
    Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
    Transformers", ICLR 2023.
    Yao et al., "ZeroQuant-V2: Exploring Post-training Quantization in LLMs from
    Comprehensive Study to Low Rank Compensation", 2023.
    Liu et al., "LLM-FP4: 4-Bit Floating-Point Quantized Transformers", EMNLP 2023.
    Micikevicius et al., "FP8 Formats for Deep Learning", 2022; OCP Microscaling (MX)
    Formats Specification v1.0, 2023 (the E2M1 element format).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "qrange", "qparams", "quantize", "dequantize", "fake_quant", "sqnr",
    "choose_range", "calibrate",
    "QuantLinear", "QuantConv2d", "quantize_model",
    "smooth_quant_scales", "int8_matmul", "int8_matmul_backend", "gptq_quantize", "lorc",
    "fp8_round_trip", "fp4_e2m1", "fp4_e2m1_round", "FP4_E2M1_VALUES",
    "input_stats", "gptq_model", "smooth_quant_fold", "smooth_quant_model",
    "LoRCLinear", "lorc_model", "pack_int4", "unpack_int4", "WeightOnlyLinear",
    "weight_only_model", "quantized_bytes",
]

# The smallest scale we allow: PyTorch's observers clamp the scale to float32 epsilon, so
# a constant (e.g. all-zero) tensor gets a finite scale instead of a division by zero.
EPS: float = torch.finfo(torch.float32).eps

CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")


# ---------------------------------------------------------------------------------------
# Argument checks and layout helpers (per-tensor / per-channel / per-group)
# ---------------------------------------------------------------------------------------

def _check_bits(bits: Any, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(
            f"{name} must be an integer between 2 and 16, got {bits!r}; "
            f"e.g. {name}=8 for int8 or {name}=4 for int4"
        )
    return bits


def _check_float(x: Any, who: str, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} needs a torch.Tensor for {name}, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"{who} needs a floating-point {name}, got dtype {x.dtype}; "
            f"convert it first, e.g. {name}.float()"
        )
    if x.numel() == 0:
        raise ValueError(f"{who} got an empty tensor {name} (shape {tuple(x.shape)})")


def _check_layout(x: torch.Tensor, axis: int | None, group_size: int | None, who: str) -> int | None:
    """Validate the granularity arguments and return ``axis`` as a non-negative int (or None)."""
    if axis is not None and group_size is not None:
        raise ValueError(
            f"{who}: give either axis= (per-channel) or group_size= (per-group along the last "
            f"dim), not both; groups of a 2-D weight are already per output row"
        )
    if axis is not None:
        if isinstance(axis, bool) or not isinstance(axis, int) or not -x.ndim <= axis < max(x.ndim, 1):
            raise ValueError(
                f"{who}: axis={axis!r} is not a dimension of a tensor of shape {tuple(x.shape)}"
            )
        if x.ndim == 0:
            raise ValueError(f"{who}: a 0-dim tensor has no axis to quantize along; use axis=None")
        return axis % x.ndim
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"{who}: group_size must be a positive integer, got {group_size!r}")
        if x.ndim == 0 or x.shape[-1] % group_size != 0:
            last = x.shape[-1] if x.ndim else None
            raise ValueError(
                f"{who}: the last dim ({last}) of a tensor of shape {tuple(x.shape)} is not "
                f"divisible by group_size={group_size}; pick a divisor of {last}"
            )
    return None


def _view(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """Per-group: ``(..., K)`` -> ``(..., K // g, g)`` so each group is one row of the last dim."""
    if group_size is None:
        return x
    return x.unflatten(-1, (x.shape[-1] // group_size, group_size))


def _unview(x: torch.Tensor, group_size: int | None) -> torch.Tensor:
    return x if group_size is None else x.flatten(-2)


def _param_shape(x: torch.Tensor, axis: int | None, group_size: int | None) -> tuple[int, ...]:
    """Shape of the scale and zero point for this granularity (see the module docstring)."""
    if group_size is not None:
        return tuple(x.shape[:-1]) + (x.shape[-1] // group_size,)
    if axis is not None:
        return (x.shape[axis],)
    return ()


def _broadcast(p: torch.Tensor, ndim: int, axis: int | None, group_size: int | None) -> torch.Tensor:
    """Reshape a scale / zero point so it broadcasts against ``_view(x)`` (``ndim`` = x.ndim)."""
    if group_size is not None:
        return p.unsqueeze(-1)  # (..., K//g) -> (..., K//g, 1) against (..., K//g, g)
    if axis is not None:
        shape = [1] * ndim
        shape[axis] = -1
        return p.reshape(shape)  # (C,) -> (1, .., C, .., 1)
    return p


def _minmax(x: torch.Tensor, axis: int | None, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """min and max of ``x`` per quantization block, each of shape ``_param_shape``."""
    if group_size is not None:
        xv = _view(x, group_size)
        return xv.amin(dim=-1), xv.amax(dim=-1)
    if axis is not None:
        dims = tuple(d for d in range(x.ndim) if d != axis)
        if not dims:  # a 1-D tensor per "channel" is its own range (amin(dim=()) reduces ALL)
            return x, x
        return x.amin(dim=dims), x.amax(dim=dims)
    return x.amin(), x.amax()


def _opmath(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 are computed in float32, as PyTorch's kernels do; float64 stays."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _code_dtype(bits: int, symmetric: bool) -> torch.dtype:
    if bits <= 8:
        return torch.int8 if symmetric else torch.uint8
    return torch.int32


def _round_clamp(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q = clamp(round(x / s) + z, qmin, qmax)`` (as floats) and the in-range mask.

    ``x / s`` is computed as ``x * (1 / s)`` with ``1 / s`` in float32, and ``z`` is added
    *after* rounding: this is what PyTorch's fake-quantize kernels do, so ties (``x / s``
    exactly halfway) round the same way (half to even). The mask marks the elements that
    were *not* clipped; the straight-through estimator passes gradients only there.
    """
    inv_scale = (1.0 / scale.float()).to(x.dtype)
    q = torch.round(x * inv_scale) + zero_point.to(x.dtype)
    mask = (q >= qmin) & (q <= qmax)
    return q.clamp(qmin, qmax), mask


def _check_params(
    scale: Any, zero_point: Any, x: torch.Tensor, axis: int | None, group_size: int | None, who: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate user-given quantization parameters; return (float32 scale, int32 zero point)."""
    want = _param_shape(x, axis, group_size)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if zero_point is None:
        zero_point = torch.zeros(want, dtype=torch.int32, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    if torch.is_floating_point(zero_point):
        if not torch.equal(zero_point, zero_point.round()):
            raise ValueError(f"{who}: zero_point must hold integers, got {zero_point}")
    zero_point = zero_point.to(torch.int32)
    for name, p in (("scale", scale), ("zero_point", zero_point)):
        if tuple(p.shape) != want:
            if p.numel() == 1 and want == ():
                continue
            layout = (f"group_size={group_size}" if group_size is not None
                      else f"axis={axis}" if axis is not None else "axis=None (per-tensor)")
            raise ValueError(
                f"{who}: {name} has shape {tuple(p.shape)} but {layout} on a tensor of shape "
                f"{tuple(x.shape)} needs shape {want}; compute it with quantize() or qparams() "
                f"using the same axis/group_size"
            )
    if want == ():
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    if not bool((scale > 0).all()):
        raise ValueError(f"{who}: every scale must be > 0, got min {scale.min().item()}")
    return scale, zero_point


# ---------------------------------------------------------------------------------------
# The grid: qrange, qparams, quantize, dequantize
# ---------------------------------------------------------------------------------------

def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """The integer grid ``(q_min, q_max)`` of a ``bits``-bit quantizer.

    Symmetric: ``(-(2^(b-1) - 1), 2^(b-1) - 1)``, e.g. ``(-127, 127)`` for 8 bits (the
    restricted range; pass these as ``quant_min, quant_max`` to PyTorch's fake-quantize
    ops to get the same grid). Asymmetric: ``(0, 2^b - 1)``, e.g. ``(0, 255)``.
    """
    _check_bits(bits)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2 ** bits - 1


def qparams(
    lo: torch.Tensor | float, hi: torch.Tensor | float, bits: int, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map the range ``[lo, hi]`` onto the ``bits``-bit grid.

    The range is widened to contain 0 (``lo <= 0 <= hi``), as PyTorch's observers do, so 0
    is exactly representable. Then

    * symmetric: ``s = max(-lo, hi) / q_max`` and ``z = 0``;
    * asymmetric: ``s = (hi - lo) / (q_max - q_min)`` and ``z = q_min - round(lo / s)``,
      clamped to ``[q_min, q_max]``;

    with ``s >= EPS`` (float32 epsilon) so a constant tensor still gets a finite scale.

    Args:
        lo, hi: range ends, scalars or tensors of any (equal) shape.
        bits: 2 to 16.
        symmetric: grid type, see :func:`qrange`.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of the shape of ``lo``.
    """
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32, device=lo.device)
    if lo.shape != hi.shape:
        raise ValueError(f"qparams: lo and hi must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError("qparams: some lo > hi; pass the range as (min, max)")
    lo = lo.clamp(max=0.0)  # include 0 in the range
    hi = hi.clamp(min=0.0)
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp(min=EPS)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=EPS)
        # z is the integer that real 0 maps to: q(lo) = q_min  =>  z = q_min - lo / s
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def quantize(
    x: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    *,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform affine quantization: ``q = clamp(round(x / s) + z, q_min, q_max)``.

    With ``scale=None`` the parameters come from the min and max of each block (per tensor,
    per channel along ``axis``, or per group of ``group_size`` along the last dim), via
    :func:`qparams`; pass ``scale`` (and ``zero_point``, default 0) to use given ones.
    For every ``x`` inside the range, ``|x - dequantize(q)| <= s / 2``.

    Args:
        x: float tensor of any shape, e.g. a weight ``(out, in)``.
        bits: 2 to 16.
        symmetric: see :func:`qrange`.
        axis: per-channel along this dim (``0`` for a weight's output channels).
        group_size: per-group along the last dim (e.g. 128 for int4 weights of an LLM).

    Returns:
        ``(q, scale, zero_point)``: integer codes of the shape of ``x`` (int8 / uint8 /
        int32, see the module docstring), float32 scale and int32 zero point of shape
        ``()`` per-tensor, ``(x.shape[axis],)`` per-channel, ``x.shape[:-1] + (K // g,)``
        per-group.
    """
    _check_float(x, "quantize")
    axis = _check_layout(x, axis, group_size, "quantize")
    qmin, qmax = qrange(bits, symmetric)
    xc = _opmath(x.detach())
    if scale is None:
        if zero_point is not None:
            raise ValueError("quantize: zero_point was given without scale; give both or neither")
        scale, zero_point = qparams(*_minmax(xc, axis, group_size), bits, symmetric)
    else:
        scale, zero_point = _check_params(scale, zero_point, x, axis, group_size, "quantize")
    q, _ = _round_clamp(
        _view(xc, group_size),
        _broadcast(scale, x.ndim, axis, group_size),
        _broadcast(zero_point, x.ndim, axis, group_size),
        qmin, qmax,
    )
    return _unview(q, group_size).to(_code_dtype(bits, symmetric)), scale, zero_point


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``x_hat = (q - z) * s``: integer codes back to floats.

    Args:
        q: integer codes from :func:`quantize`, any shape.
        scale, zero_point: as returned by :func:`quantize` (same ``axis`` / ``group_size``).
        dtype: float dtype of the result (float32 by default; the arithmetic is exact in
            float32 for codes below 2^24).

    Returns:
        float tensor of the shape of ``q``.
    """
    if not isinstance(q, torch.Tensor) or torch.is_floating_point(q) or q.dtype == torch.bool:
        raise TypeError(
            f"dequantize needs integer codes q (int8/uint8/int32), got "
            f"{q.dtype if isinstance(q, torch.Tensor) else type(q).__name__}; use quantize() first"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dequantize: dtype must be a float dtype, got {dtype}")
    axis = _check_layout(q, axis, group_size, "dequantize")
    scale, zero_point = _check_params(scale, zero_point, q, axis, group_size, "dequantize")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    qv = _view(q.to(compute), group_size)
    s = _broadcast(scale, q.ndim, axis, group_size).to(compute)
    z = _broadcast(zero_point, q.ndim, axis, group_size).to(compute)
    return _unview((qv - z) * s, group_size).to(dtype)


def sqnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in decibels: ``10 log10(sum x^2 / sum (x - x_hat)^2)``.

    The standard figure of merit of a quantizer: each extra bit of a uniform grid halves
    the step ``s`` and so quarters the noise power ``s^2 / 12``, adding ``20 log10 2 = 6.02``
    dB. ``inf`` when ``x_hat == x``.

    Args:
        x: the original tensor, any shape.
        x_hat: its quantized (dequantized) version, same shape.
    """
    _check_float(x, "sqnr")
    _check_float(x_hat, "sqnr", "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"sqnr: x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    x64, e64 = x.detach().double(), (x.detach().double() - x_hat.detach().double())
    noise = e64.square().sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(x64.square().sum().item() / noise)


# ---------------------------------------------------------------------------------------
# Fake quantization with the straight-through estimator
# ---------------------------------------------------------------------------------------

class _FakeQuantSTE(torch.autograd.Function):
    """Forward: quantize then dequantize. Backward: the straight-through estimator.

    ``round`` has zero gradient almost everywhere, which would stop training. The STE
    (Bengio et al. 2013) pretends that quantize-dequantize is the identity, except where
    ``x`` was clipped, where the true gradient of ``clamp`` is 0::

        dL/dx = dL/dx_hat * 1[q_min <= round(x / s) + z <= q_max]

    exactly what ``torch.fake_quantize_per_*_affine`` does. Scale and zero point are
    constants here (no gradient), as in those ops.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, group_size):  # type: ignore[override]
        xv = _view(_opmath(x), group_size)
        q, mask = _round_clamp(xv, scale, zero_point, qmin, qmax)
        x_hat = (q - zero_point.to(q.dtype)) * scale.to(q.dtype)
        ctx.save_for_backward(_unview(mask, group_size))
        return _unview(x_hat, group_size).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad_out * mask, None, None, None, None, None


def fake_quant(
    x: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    *,
    scale: torch.Tensor | None = None,
    zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """Simulated quantization ``x_hat = dequantize(quantize(x))`` with a straight-through gradient.

    The result is a float tensor of the dtype and shape of ``x`` whose values lie on the
    quantization grid; the gradient is the identity inside the clipping range and zero
    outside (see :class:`_FakeQuantSTE`). With ``scale=None`` the parameters are the
    min/max ones of :func:`quantize`, computed from the current ``x`` without gradient;
    otherwise the given ``scale`` / ``zero_point`` are used (e.g. calibrated activation
    ranges). Given the same parameters and ``qrange(bits, symmetric)`` as quant_min /
    quant_max this equals ``torch.fake_quantize_per_tensor_affine`` (``axis=None``) and
    ``torch.fake_quantize_per_channel_affine`` (``axis=k``), forward and backward.

    Args:
        x: float tensor of any shape.
        bits, symmetric, axis, group_size: as in :func:`quantize`.
        scale, zero_point: optional fixed parameters, shapes as returned by :func:`quantize`.

    Returns:
        tensor of the shape and dtype of ``x``.
    """
    _check_float(x, "fake_quant")
    axis = _check_layout(x, axis, group_size, "fake_quant")
    qmin, qmax = qrange(bits, symmetric)
    if scale is None:
        if zero_point is not None:
            raise ValueError("fake_quant: zero_point was given without scale; give both or neither")
        with torch.no_grad():
            scale, zero_point = qparams(*_minmax(_opmath(x.detach()), axis, group_size), bits, symmetric)
    else:
        scale, zero_point = _check_params(scale, zero_point, x, axis, group_size, "fake_quant")
    return _FakeQuantSTE.apply(
        x,
        _broadcast(scale, x.ndim, axis, group_size),
        _broadcast(zero_point, x.ndim, axis, group_size),
        qmin, qmax, group_size,
    )


# ---------------------------------------------------------------------------------------
# Choosing a range: minmax, percentile, MSE
# ---------------------------------------------------------------------------------------

def _percentile(v: torch.Tensor, p: float) -> torch.Tensor:
    """Nearest-rank percentile of a flat tensor: the ceil(p/100 * n)-th smallest value.

    ``torch.kthvalue`` instead of ``torch.quantile``, which refuses inputs above 2^24 elements.
    """
    n = v.numel()
    k = min(n, max(1, math.ceil(p / 100.0 * n)))
    return torch.kthvalue(v, k).values


def choose_range(
    x: torch.Tensor,
    bits: int,
    method: str = "minmax",
    symmetric: bool = True,
    *,
    percentile: float = 99.99,
    n_grid: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range ``(lo, hi)`` of a per-tensor quantizer for the values ``x``.

    * ``"minmax"``: the full range ``(min x, max x)``; never clips, but one outlier
      stretches the grid for everyone.
    * ``"percentile"``: clip the tails: ``hi`` = the ``percentile``-th percentile of ``|x|``
      (symmetric) or of ``x`` with ``lo`` = the ``(100 - percentile)``-th (asymmetric).
    * ``"mse"``: shrink the minmax range by ratios ``r = k / n_grid`` (``k = 1..n_grid``)
      and keep the one minimizing the quantization error
      ``mean((fake_quant(x; r * lo, r * hi) - x)^2)``: the trade-off between rounding error
      (smaller with a tighter grid) and clipping error (larger).

    Args:
        x: float tensor of sample values, any shape (flattened).
        bits, symmetric: the quantizer that will use the range.
        method: "minmax", "percentile" or "mse".
        percentile: for "percentile", in (0, 100].
        n_grid: for "mse", the number of candidate ratios.

    Returns:
        ``(lo, hi)`` as float32 0-dim tensors (``lo = -hi`` when symmetric); pass them to
        :func:`qparams`.
    """
    _check_float(x, "choose_range")
    _check_bits(bits)
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"choose_range: method must be one of {CALIBRATION_METHODS}, got {method!r}")
    v = x.detach().flatten().float()
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"choose_range: percentile must be in (0, 100], got {percentile}; e.g. 99.99")
        if symmetric:
            hi = _percentile(v.abs(), percentile)
            return -hi, hi
        return _percentile(v, 100.0 - percentile), _percentile(v, percentile)

    lo, hi = v.min(), v.max()
    if symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    if method == "minmax":
        return lo, hi

    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"choose_range: n_grid must be a positive integer, got {n_grid!r}")
    qmin, qmax = qrange(bits, symmetric)
    ratios = (torch.arange(1, n_grid + 1, dtype=torch.float64) / n_grid).float().to(v.device)
    errs = []
    # Several candidate ratios at once, as rows of a (chunk, N) matrix of at most 2^22 values:
    # a few large tensor ops instead of n_grid small ones (each op has a fixed overhead).
    for r in ratios.split(max(1, 2 ** 22 // v.numel())):
        s, z = qparams(r * lo, r * hi, bits, symmetric)
        s, z = s[:, None], z[:, None].to(v.dtype)
        # (x_hat - x)^2 of the fake-quantized values, computed in place (this loop is hot)
        d = torch.round(v * (1.0 / s)).add_(z).clamp_(qmin, qmax).sub_(z).mul_(s).sub_(v)
        errs.append(d.square_().mean(dim=1))
    best_r = (int(torch.cat(errs).argmin()) + 1) / n_grid  # first (smallest) r on ties
    return best_r * lo, best_r * hi


# ---------------------------------------------------------------------------------------
# Quantized layers
# ---------------------------------------------------------------------------------------

class _QuantLayer(nn.Module):
    """What QuantLinear and QuantConv2d share: weight and activation fake quantization.

    Weights: a float ``weight`` parameter, fake-quantized in every forward pass. By default
    its (scale, zero point) are the min/max ones of the *current* weight (round to nearest),
    per output channel (``w_axis=0``), per tensor (``w_axis=None``), or per group of
    ``group_size`` along the flattened fan-in ``in_features`` (``in/groups * kh * kw`` for a
    conv). Gradients flow to ``weight`` through the STE, so the same layer does
    quantization-aware training. :meth:`set_quantized_weight` instead fixes the grid
    (e.g. GPTQ's codes and scales); the scale then lives in the buffers ``w_scale`` /
    ``w_zero_point``.

    Activations (``a_bits`` set): the input is fake-quantized per tensor with the range set
    by :func:`calibrate` (buffers ``a_scale`` / ``a_zero_point``). A forward pass before
    calibration raises an error rather than silently running in float.
    """

    # Names of the optional buffers (None until set); see _load_from_state_dict.
    _optional_buffers = ("w_scale", "w_zero_point", "a_scale", "a_zero_point")

    def _init_quant(
        self,
        w_bits: int,
        a_bits: int | None,
        w_axis: int | None,
        group_size: int | None,
        symmetric: bool,
        a_symmetric: bool | None,
    ) -> None:
        self.w_bits = _check_bits(w_bits, "w_bits")
        self.a_bits = None if a_bits is None else _check_bits(a_bits, "a_bits")
        if w_axis not in (None, 0):
            raise ValueError(f"w_axis must be 0 (per output channel) or None (per tensor), got {w_axis!r}")
        fan_in = self.weight[0].numel()
        if group_size is not None and (
            isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
            or fan_in % group_size != 0
        ):
            raise ValueError(
                f"group_size={group_size!r} must be a positive divisor of the layer's fan-in "
                f"{fan_in} (groups run along the flattened input dimension)"
            )
        self.w_axis = w_axis
        self.group_size = group_size
        self.symmetric = bool(symmetric)
        self.a_symmetric = self.symmetric if a_symmetric is None else bool(a_symmetric)
        for name in self._optional_buffers:
            self.register_buffer(name, None)
        self.calibrating = False  # set by calibrate(): observe inputs, do not quantize them

    # The weight is quantized as a 2-D matrix (out, fan_in): per row, or per group of a row.
    def _w_layout(self) -> tuple[int | None, int | None]:
        if self.group_size is not None:
            return None, self.group_size
        return self.w_axis, None

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight used in forward, same shape as ``weight`` (STE gradient)."""
        axis, group = self._w_layout()
        w_hat = fake_quant(
            self.weight.flatten(1), self.w_bits, self.symmetric, axis, group,
            scale=self.w_scale, zero_point=self.w_zero_point,
        )
        return w_hat.view_as(self.weight)

    @torch.no_grad()
    def int_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weight as stored after quantization: ``(q, scale, zero_point)`` of the
        ``(out, fan_in)`` matrix, laid out as :func:`quantize` returns them (what an int8
        kernel or a checkpoint would keep: ``w_bits`` per weight plus the scales)."""
        axis, group = self._w_layout()
        return quantize(
            self.weight.flatten(1), self.w_bits, self.symmetric, axis, group,
            scale=self.w_scale, zero_point=self.w_zero_point,
        )

    @torch.no_grad()
    def set_quantized_weight(
        self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
    ) -> None:
        """Fix the weight to given codes and grid, e.g. from :func:`gptq_quantize`.

        ``q`` has shape ``(out, fan_in)`` (or the weight's shape), and ``scale`` /
        ``zero_point`` the layout of this layer (``(out,)`` per channel, ``()`` per tensor,
        ``(out, fan_in // group_size)`` per group). ``weight`` becomes ``dequantize(q)``
        and the grid is kept in ``w_scale`` / ``w_zero_point``, so forward reproduces these
        values exactly (re-quantizing a grid point gives the same grid point).
        """
        axis, group = self._w_layout()
        w2 = self.weight.flatten(1)
        if q.ndim == 0 or q.shape[0] != w2.shape[0] or q.numel() != w2.numel():
            raise ValueError(
                f"set_quantized_weight: q has shape {tuple(q.shape)}, expected {tuple(w2.shape)} "
                f"(or {tuple(self.weight.shape)})"
            )
        q2 = q.reshape(w2.shape)
        qmin, qmax = qrange(self.w_bits, self.symmetric)
        if q2.numel() and (int(q2.min()) < qmin or int(q2.max()) > qmax):
            raise ValueError(
                f"set_quantized_weight: codes outside the {self.w_bits}-bit "
                f"{'symmetric' if self.symmetric else 'asymmetric'} grid [{qmin}, {qmax}]"
            )
        w_hat = dequantize(q2, scale, zero_point, axis, group)
        self.weight.copy_(w_hat.view_as(self.weight).to(self.weight.dtype))
        scale, zero_point = _check_params(scale, zero_point, w2, axis, group, "set_quantized_weight")
        self.w_scale, self.w_zero_point = scale.clone(), zero_point.clone()

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits is None or self.calibrating:
            return x
        if self.a_scale is None:
            raise RuntimeError(
                f"{type(self).__name__}(a_bits={self.a_bits}) has no activation range yet: "
                f"run ml.quant.calibrate(model, batches) first, or build it with a_bits=None "
                f"for weight-only quantization"
            )
        return fake_quant(x, self.a_bits, self.a_symmetric, scale=self.a_scale, zero_point=self.a_zero_point)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # Optional buffers are None until set; a state_dict that has them (a calibrated or
        # GPTQ-quantized layer) creates them, so it loads into a fresh layer.
        for name in self._optional_buffers:
            key = prefix + name
            if key in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _quant_repr(self) -> str:
        gran = (f"group_size={self.group_size}" if self.group_size is not None
                else "per-channel" if self.w_axis == 0 else "per-tensor")
        a = f"a_bits={self.a_bits}" + ("" if self.a_scale is not None or self.a_bits is None else " (uncalibrated)")
        fixed = ", fixed grid" if self.w_scale is not None else ""
        return f"w_bits={self.w_bits} {gran}{fixed}, {a}, symmetric={self.symmetric}"


class QuantLinear(_QuantLayer):
    """``nn.Linear`` with simulated (fake) quantization of its weight and, optionally, input.

    ``y = fake_quant(x; a) @ fake_quant(W; w)^T + b`` with ``x: (*, in_features)`` and
    ``W: (out_features, in_features)``; the bias stays in float (it is added to the int32
    accumulator at a scale ``s_x * s_w`` in integer kernels). See :class:`_QuantLayer` for
    the weight and activation quantizers. Build it with :meth:`from_float`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        w_bits: int = 8,
        a_bits: int | None = None,
        w_axis: int | None = 0,
        group_size: int | None = None,
        symmetric: bool = True,
        a_symmetric: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        ref = nn.Linear(in_features, out_features, bias, device=device, dtype=dtype)  # same init
        self.in_features, self.out_features = in_features, out_features
        self.weight, self.bias = ref.weight, ref.bias
        self._init_quant(w_bits, a_bits, w_axis, group_size, symmetric, a_symmetric)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        w_bits: int = 8,
        a_bits: int | None = None,
        w_axis: int | None = 0,
        group_size: int | None = None,
        symmetric: bool = True,
        a_symmetric: bool | None = None,
    ) -> "QuantLinear":
        """A QuantLinear with a copy of ``linear``'s weight and bias.

        Args:
            linear: the float layer.
            w_bits: weight bits (8: int8, 4: int4, ...).
            a_bits: input (activation) bits, or None for weight-only quantization.
            w_axis: 0 for one scale per output channel, None for one per tensor.
            group_size: one scale per ``group_size`` input features of each output row
                (overrides ``w_axis``).
            symmetric: grid of the weights (and of the activations unless ``a_symmetric``).
            a_symmetric: grid of the activations (asymmetric suits post-ReLU inputs).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantLinear.from_float needs an nn.Linear, got {type(linear).__name__}")
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            w_bits=w_bits, a_bits=a_bits, w_axis=w_axis, group_size=group_size,
            symmetric=symmetric, a_symmetric=a_symmetric,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._quant_repr()}")


class QuantConv2d(_QuantLayer):
    """``nn.Conv2d`` with simulated quantization of its weight and, optionally, input.

    ``y = conv2d(fake_quant(x; a), fake_quant(W; w)) + b`` with ``x: (B, C_in, H, W)`` and
    ``W: (C_out, C_in / groups, kh, kw)``. Weight scales are per output channel (or per
    tensor, or per group of the flattened ``C_in / groups * kh * kw`` fan-in). Only
    ``padding_mode="zeros"`` is supported. Build it with :meth:`from_float`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        w_bits: int = 8,
        a_bits: int | None = None,
        w_axis: int | None = 0,
        group_size: int | None = None,
        symmetric: bool = True,
        a_symmetric: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                        groups, bias, device=device, dtype=dtype)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = ref.kernel_size, ref.stride, ref.padding
        self.dilation, self.groups = ref.dilation, ref.groups
        self.weight, self.bias = ref.weight, ref.bias
        self._init_quant(w_bits, a_bits, w_axis, group_size, symmetric, a_symmetric)

    @classmethod
    def from_float(
        cls,
        conv: nn.Conv2d,
        w_bits: int = 8,
        a_bits: int | None = None,
        w_axis: int | None = 0,
        group_size: int | None = None,
        symmetric: bool = True,
        a_symmetric: bool | None = None,
    ) -> "QuantConv2d":
        """A QuantConv2d with a copy of ``conv``'s weight, bias and geometry.

        Arguments as in :meth:`QuantLinear.from_float`.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"QuantConv2d.from_float needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(
                f"QuantConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}; "
                f"skip this layer in quantize_model(skip=...)"
            )
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None,
            w_bits=w_bits, a_bits=a_bits, w_axis=w_axis, group_size=group_size,
            symmetric=symmetric, a_symmetric=a_symmetric,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._quant_input(x), self.quantized_weight(), self.bias,
                        self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._quant_repr()}")


def _is_skipped(name: str, skip: Sequence[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def quantize_model(
    model: nn.Module,
    w_bits: int = 8,
    a_bits: int | None = None,
    group_size: int | None = None,
    skip: Sequence[str] = (),
    *,
    w_axis: int | None = 0,
    symmetric: bool = True,
    a_symmetric: bool | None = None,
) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` / ``nn.Conv2d`` replaced by its Quant version.

    The original model is left untouched. Layers named in ``skip`` (names as in
    ``model.named_modules()``; a container's name skips everything inside it) stay in
    float: the first conv and the classifier head are the usual ones, since they are
    small and sensitive. The ``out_proj`` of an ``nn.MultiheadAttention`` is left alone too
    (that module reads its weight directly instead of calling it).

    With ``a_bits`` set, run :func:`calibrate` on the copy before using it.

    Args:
        model: the float model.
        w_bits, a_bits, group_size, w_axis, symmetric, a_symmetric: see
            :meth:`QuantLinear.from_float`.
        skip: names of modules to keep in float, e.g. ``("stem.0", "head")``.

    Returns:
        the quantized copy.
    """
    if isinstance(skip, str):
        skip = (skip,)
    names = dict(model.named_modules())
    unknown = [s for s in skip if s not in names]
    if unknown:
        layers = [n for n, m in names.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
        raise ValueError(f"quantize_model: skip names {unknown} are not modules of the model; "
                         f"its Linear/Conv2d layers are {layers}")
    cfg = dict(w_bits=w_bits, a_bits=a_bits, w_axis=w_axis, group_size=group_size,
               symmetric=symmetric, a_symmetric=a_symmetric)

    def convert(name: str, module: nn.Module) -> nn.Module:
        if group_size is not None and module.weight[0].numel() % group_size != 0:
            raise ValueError(
                f"quantize_model: layer {name or '<model>'!r} has fan-in {module.weight[0].numel()}, "
                f"not divisible by group_size={group_size}; keep it in float with "
                f"skip=({name!r},) or pick a divisor"
            )
        cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
        return cls.from_float(module, **cfg)

    model_q = copy.deepcopy(model)
    if isinstance(model_q, (nn.Linear, nn.Conv2d)) and not isinstance(model_q, _QuantLayer):
        return model_q if "" in skip else convert("", model_q)
    for name, module in list(model_q.named_modules()):
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or _is_skipped(name, skip):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model_q.get_submodule(parent_name)
        if isinstance(parent, nn.MultiheadAttention):
            continue
        setattr(parent, child, convert(name, module))
    return model_q


# ---------------------------------------------------------------------------------------
# Calibration: collect activation ranges with forward hooks
# ---------------------------------------------------------------------------------------

class _InputSampler:
    """A forward pre-hook that keeps a bounded random sample of a layer's input values.

    Keeping every activation of every batch would not fit in memory; a uniform random
    sample of ``k`` values per batch (plus that batch's exact min and max, so "minmax"
    is exact) is enough to estimate a 99.99th percentile or an MSE-optimal clip.
    """

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.seed = k, seed
        self.samples: list[torch.Tensor] = []
        self.generator: torch.Generator | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().flatten().float()
        if x.numel() > self.k:
            if self.generator is None or self.generator.device != x.device:
                self.generator = torch.Generator(device=x.device).manual_seed(self.seed)
            idx = torch.randint(x.numel(), (self.k,), generator=self.generator, device=x.device)
            x = torch.cat([x[idx], x.amin()[None], x.amax()[None]])
        self.samples.append(x)


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    method: str = "minmax",
    *,
    percentile: float = 99.99,
    n_grid: int = 100,
    samples_per_batch: int = 2 ** 16,
    max_batches: int | None = None,
) -> nn.Module:
    """Post-training calibration: set the activation ranges of every Quant layer with ``a_bits``.

    Runs ``model`` on ``batches`` in eval mode under ``torch.no_grad()`` with activation
    quantization switched off (weights stay quantized, so the ranges are those the
    deployed layers see), records the input of each :class:`QuantLinear` /
    :class:`QuantConv2d` with a forward pre-hook, then sets the layer's ``a_scale`` /
    ``a_zero_point`` from :func:`choose_range` on those values. "minmax" uses the exact
    min/max over all batches; "percentile" and "mse" use a random sample of
    ``samples_per_batch`` values per batch and layer. The hooks are removed and the
    model's train/eval mode restored afterwards.

    Args:
        model: a model from :func:`quantize_model` (or any model holding Quant layers).
        batches: an iterable of input tensors, or of ``(inputs, targets)`` pairs; inputs
            are moved to the model's device.
        method: "minmax", "percentile" or "mse" (see :func:`choose_range`).
        percentile, n_grid: passed to :func:`choose_range`.
        samples_per_batch: values kept per batch and layer for "percentile" / "mse".
        max_batches: stop after this many batches.

    Returns:
        ``model`` itself (calibrated in place).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate: method must be one of {CALIBRATION_METHODS}, got {method!r}")
    layers = [m for m in model.modules() if isinstance(m, _QuantLayer) and m.a_bits is not None]
    if not layers:
        raise ValueError(
            "calibrate: the model has no QuantLinear/QuantConv2d with a_bits set; build it with "
            "quantize_model(model, a_bits=8) first"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    samplers = [_InputSampler(samples_per_batch, seed=i) for i in range(len(layers))]
    handles = [m.register_forward_pre_hook(s) for m, s in zip(layers, samplers)]
    was_training = model.training
    n_batches = 0
    try:
        model.eval()
        for m in layers:
            m.calibrating = True
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and n_batches >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device) if device is not None else x)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        for m in layers:
            m.calibrating = False
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("calibrate: batches was empty; give at least one batch of inputs")
    for m, s in zip(layers, samplers):
        if not s.samples:
            raise RuntimeError(
                f"calibrate: a {type(m).__name__} never ran during calibration, so it has no "
                f"range; check that the batches reach it, or skip it in quantize_model"
            )
        lo, hi = choose_range(torch.cat(s.samples), m.a_bits, method, m.a_symmetric,
                              percentile=percentile, n_grid=n_grid)
        m.a_scale, m.a_zero_point = qparams(lo, hi, m.a_bits, m.a_symmetric)
    return model


# ---------------------------------------------------------------------------------------
# Outliers: SmoothQuant scales
# ---------------------------------------------------------------------------------------

def _check_smooth_quant(act_absmax: torch.Tensor, weight: Any, alpha: float) -> None:
    if isinstance(weight, (list, tuple)):
        raise ValueError("smooth_quant_scales: weight is an empty list")
    _check_float(weight, "smooth_quant_scales", "weight")
    _check_float(act_absmax, "smooth_quant_scales", "act_absmax")
    if weight.ndim != 2:
        raise ValueError(f"smooth_quant_scales: weight must be (out, in), got shape {tuple(weight.shape)}")
    if act_absmax.shape != (weight.shape[1],):
        raise ValueError(
            f"smooth_quant_scales: act_absmax has shape {tuple(act_absmax.shape)}, expected "
            f"({weight.shape[1]},) = one value per input channel of the weight"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth_quant_scales: alpha must be in [0, 1], got {alpha}")


def smooth_quant_scales(
    act_absmax: torch.Tensor,
    weight: torch.Tensor | Sequence[torch.Tensor],
    alpha: float = 0.5,
) -> torch.Tensor:
    """SmoothQuant's per-input-channel smoothing factors (Xiao et al., ICML 2023).

    Activations of LLMs have a few channels with huge values (LLM.int8's "outlier
    features"), which ruin per-tensor activation quantization, while weights are easy.
    SmoothQuant migrates the difficulty: for ``Y = X W^T`` with ``X: (N, in)`` and
    ``W: (out, in)``,

        Y   = (X diag(s)^-1) (W diag(s))^T
        s_j = max|X_:,j|^alpha / max|W_:,j|^(1 - alpha)

    which is exact in float; ``alpha`` sets how much of the range moves from activations to
    weights (0.5 balances them). ``X / s`` is usually folded into the previous LayerNorm.

    Args:
        act_absmax: ``(in,)`` per-channel max |x| of the layer's inputs (from calibration).
        weight: ``(out, in)`` weight, or several sharing the same input (e.g. q, k, v
            projections), concatenated along ``out``.
        alpha: migration strength in [0, 1].

    Returns:
        ``s``: ``(in,)``; use ``x / s`` and ``weight * s``. Clamped to >= 1e-5 like the
        reference implementation.
    """
    if isinstance(weight, (list, tuple)):  # q, k, v projections sharing one input
        weight = torch.cat([w.detach() for w in weight], dim=0) if weight else weight
    _check_smooth_quant(act_absmax, weight, alpha)
    w_absmax = weight.detach().abs().amax(dim=0).clamp(min=1e-5)  # max over outputs: (in,)
    a = act_absmax.detach().abs().to(w_absmax.dtype)
    return (a.pow(alpha) / w_absmax.pow(1.0 - alpha)).clamp(min=1e-5)


# ---------------------------------------------------------------------------------------
# Integer GEMM
# ---------------------------------------------------------------------------------------

# The largest |a b| of two int8 codes is (-128)(-128) = 2^14, so a sum of K products stays
# within int32 (at most 2^31 - 1) for K <= (2^31 - 1) / 2^14, i.e. K <= 2^17 - 1: at
# K = 2^17 the all -128 product is 2^31, which wraps to -2^31.
_INT_MM_MAX_K = 2 ** 17 - 1

# Shapes torch._int_mm accepts, per device type: (at least this many rows M, K and N
# multiples of this). cuBLAS wants M > 16 and K, N multiples of 8; the CPU kernel takes
# any shape. Other devices get the CUDA constraints. The inputs are zero-padded to them.
_INT_MM_SHAPES: dict[str, tuple[int, int]] = {"cpu": (1, 1)}
_INT_MM_WORKS: dict[str, bool] = {}  # device -> does torch._int_mm give exact results there


def _int_mm_padded(a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
    """``torch._int_mm(a_q, b_q)`` after zero-padding to the device's shape constraints."""
    (M, K), N = a_q.shape, b_q.shape[1]
    min_rows, align = _INT_MM_SHAPES.get(a_q.device.type, (17, 8))
    Mp, Kp, Np = max(M, min_rows), -(-K // align) * align, -(-N // align) * align
    a_p = F.pad(a_q, (0, Kp - K, 0, Mp - M)) if (Mp, Kp) != (M, K) else a_q
    b_p = F.pad(b_q, (0, Np - N, 0, Kp - K)) if (Kp, Np) != (K, N) else b_q
    if a_q.device.type != "cpu" and b_p.stride(0) != 1:  # cuBLASLt's int8 path: B column-major
        b_p = b_p.t().contiguous().t()
    out = torch._int_mm(a_p, b_p)
    return out if (Mp, Np) == (M, N) else out[:M, :N]


def _int_mm_works(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` exists on ``device`` and is exact there (checked once).

    The check multiplies a small matrix pair that needs padding and holds the extreme
    codes, and compares with the int64 product; any error means "use the fallback".
    """
    key = str(device)
    if key not in _INT_MM_WORKS:
        ok = hasattr(torch, "_int_mm") and device.type != "meta"
        if ok:
            try:
                g = torch.Generator().manual_seed(0)
                a = torch.randint(-128, 128, (3, 20), generator=g, dtype=torch.int8)
                b = torch.randint(-128, 128, (20, 5), generator=g, dtype=torch.int8)
                a[0], b[:, 0] = -128, -128
                got = _int_mm_padded(a.to(device), b.to(device)).cpu()
                ok = got.dtype == torch.int32 and torch.equal(got.long(), a.long() @ b.long())
            except (RuntimeError, NotImplementedError, TypeError, ValueError):
                ok = False
        _INT_MM_WORKS[key] = ok
    return _INT_MM_WORKS[key]


def int8_matmul_backend(device: torch.device | str = "cpu") -> str:
    """Which path :func:`int8_matmul` takes on ``device``: ``torch._int_mm`` or the fallback."""
    device = torch.device(device)
    if _int_mm_works(device):
        lib = {"cuda": "cuBLAS", "cpu": "CPU"}.get(device.type, device.type)
        return f"torch._int_mm ({lib} int8 GEMM, int32 accumulate)"
    return "int32 matmul fallback (exact, not faster than float)"


def _check_int8_matmul(a_q: torch.Tensor, b_q: torch.Tensor) -> None:
    for name, t in (("a_q", a_q), ("b_q", b_q)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int8:
            raise TypeError(
                f"int8_matmul: {name} must be an int8 tensor, got "
                f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}; quantize it "
                f"with quantize(x, 8, symmetric=True)"
            )
        if t.ndim != 2:
            raise ValueError(f"int8_matmul: {name} must be 2-D, got shape {tuple(t.shape)}")
    (M, K), (K2, N) = a_q.shape, b_q.shape
    if K != K2:
        raise ValueError(f"int8_matmul: inner sizes differ: a_q is {(M, K)}, b_q is {(K2, N)}")
    if a_q.device != b_q.device:
        raise ValueError(f"int8_matmul: a_q is on {a_q.device} but b_q on {b_q.device}")
    if K > _INT_MM_MAX_K:
        raise ValueError(f"int8_matmul: K={K} > 2^17 - 1 = {_INT_MM_MAX_K} could overflow the "
                         f"int32 accumulator; split K and add the int32 partial products in int64")


def int8_matmul(a_q: torch.Tensor, b_q: torch.Tensor) -> torch.Tensor:
    """Exact integer matrix product ``C = A B`` of int8 matrices, accumulated in int32.

    The core of W8A8 inference (LLM.int8, Dettmers et al. 2022; SmoothQuant):

        A = round(X / s_x) per row,   B = round(W^T / s_w) per column
        X W^T ~= diag(s_x) (A B) diag(s_w)

    so the int32 product is rescaled once at the end. This calls ``torch._int_mm`` (an
    int8 GEMM: cuBLAS on CUDA, a native kernel on CPU) wherever it exists and passes an
    exactness check, zero-padding to its shape constraints (CUDA: M > 16, K and N
    multiples of 8); elsewhere an exact int32 matmul, no faster than float
    (:func:`int8_matmul_backend` says which). A column-major ``B`` is fastest.

    a_q: ``(M, K)`` int8; b_q: ``(K, N)`` int8 (for a weight ``(N, K)``, pass ``w_q.t()``).
    Returns ``(M, N)`` int32, exact for ``K <= 2^17 - 1``.
    """
    _check_int8_matmul(a_q, b_q)
    if _int_mm_works(a_q.device):
        return _int_mm_padded(a_q, b_q)
    a32, b32 = a_q.to("cpu", torch.int32), b_q.to("cpu", torch.int32)
    return (a32 @ b32).to(a_q.device)


# ---------------------------------------------------------------------------------------
# Weight-only quantization: GPTQ and low-rank compensation
# ---------------------------------------------------------------------------------------

def _check_gptq(weight: torch.Tensor, hessian: torch.Tensor, group_size: int | None,
                block_size: int, damp: float) -> None:
    _check_float(weight, "gptq_quantize", "weight")
    _check_float(hessian, "gptq_quantize", "hessian")
    if weight.ndim != 2:
        raise ValueError(f"gptq_quantize: weight must be (out, in), got shape {tuple(weight.shape)}")
    n_in = weight.shape[1]
    if hessian.shape != (n_in, n_in):
        raise ValueError(
            f"gptq_quantize: hessian has shape {tuple(hessian.shape)}, expected ({n_in}, {n_in}) "
            f"= 2/N X^T X of the layer inputs X (N, {n_in})"
        )
    _check_layout(weight, None, group_size, "gptq_quantize")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"gptq_quantize: block_size must be a positive integer, got {block_size!r}")
    if damp < 0:
        raise ValueError(f"gptq_quantize: damp must be >= 0, got {damp}")


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    symmetric: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al., ICLR 2023): quantize a weight column by column, compensating errors.

    Round-to-nearest (RTN) quantizes every weight independently. GPTQ minimizes the layer's
    output error ``||X W^T - X Q^T||^2 = tr((W - Q) H (W - Q)^T)`` with ``H = X^T X``
    (times 2/N): it quantizes input column ``j`` of ``W``, then spreads that column's error
    over the columns not yet quantized, the Optimal Brain Surgeon update

        delta W_:,j: = -(w_:,j - q_:,j) / U_jj * U_j,j:

    where ``U`` is the upper Cholesky factor of ``H^{-1}`` (its rows are the inverse
    Hessians of the remaining columns, computed once). Updates are applied lazily in
    blocks of ``block_size`` columns so most of the work is one matrix product per block.

    Scales: per output row from the whole (original) row when ``group_size`` is None
    (the same grid as ``quantize(weight, bits, axis=0)``); otherwise per group of
    ``group_size`` columns, computed from the *updated* weights when the group's first
    column is reached (``block_size`` is rounded to a multiple of ``group_size``). No
    activation reordering ("act-order").

    Args:
        weight: ``(out, in)`` weight of a linear layer.
        hessian: ``(in, in)`` ``2/N X^T X`` of the layer's calibration inputs ``X: (N, in)``.
        bits, symmetric: the grid, see :func:`qrange`.
        group_size: per-group scales along ``in`` (must divide ``in``), or None per row.
        block_size: columns per lazy-update block.
        damp: ``H += damp * mean(diag H) * I`` for numerical stability.

    Returns:
        ``(q, scale, zero_point)`` in the layout of :func:`quantize` with ``axis=0``
        (``group_size=None``) or ``group_size=g``: ``dequantize(q, scale, zero_point,
        axis=0 | group_size=g)`` is the quantized weight.
    """
    _check_gptq(weight, hessian, group_size, block_size, damp)
    n_out, n_in = weight.shape
    qmin, qmax = qrange(bits, symmetric)

    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(dtype).clone()
    H = hessian.detach().to(W.device, dtype).clone()
    dead = torch.diag(H) == 0  # inputs that are always 0: any weight is fine, use 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(damp * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H)
    if info.item() == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if info.item() != 0:
        raise ValueError(
            f"gptq_quantize: the damped Hessian is not positive definite (damp={damp}); "
            f"increase damp, e.g. damp=0.1, or use more calibration samples"
        )

    if group_size is None:
        scale, zero_point = qparams(W.amin(dim=1), W.amax(dim=1), bits, symmetric)  # (out,)
    else:
        block_size = max(1, block_size // group_size) * group_size  # groups never straddle blocks
        scales, zero_points = [], []
    Q = torch.empty(n_out, n_in, dtype=torch.int32, device=W.device)

    for b0 in range(0, n_in, block_size):
        b1 = min(b0 + block_size, n_in)
        W1 = W[:, b0:b1].clone()            # this block, updated eagerly column by column
        U1 = U[b0:b1, b0:b1]
        Err = torch.zeros_like(W1)          # scaled errors, applied to later blocks at once
        for i in range(b1 - b0):
            if group_size is not None and (b0 + i) % group_size == 0:
                g = W1[:, i:i + group_size]
                scale, zero_point = qparams(g.amin(dim=1), g.amax(dim=1), bits, symmetric)
                scales.append(scale)
                zero_points.append(zero_point)
            w = W1[:, i]
            q, _ = _round_clamp(w, scale, zero_point, qmin, qmax)
            Q[:, b0 + i] = q.to(torch.int32)
            w_hat = (q - zero_point.to(dtype)) * scale.to(dtype)
            err = (w - w_hat) / U1[i, i]
            # OBS update of the remaining columns of this block (column i becomes w_hat)
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err[:, i] = err
        # Lazy batch update: all of this block's errors reach the later columns in one GEMM
        W[:, b1:] -= Err @ U[b0:b1, b1:]

    if group_size is not None:
        scale, zero_point = torch.stack(scales, dim=1), torch.stack(zero_points, dim=1)
    return Q.to(_code_dtype(bits, symmetric)), scale, zero_point


def lorc(weight: torch.Tensor, weight_q: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-rank compensation (LoRC, ZeroQuant-V2, Yao et al. 2023).

    The quantization error ``E = W - W_q`` is approximated by its best rank-``r`` factors
    (truncated SVD, Eckart-Young): ``E = U S V^T ~= (U_r S_r^{1/2}) (S_r^{1/2} V_r^T)``, and
    the layer computes ``x (W_q + U_r V_r)^T``: a few extra parameters (``r (out + in)``)
    recover part of the accuracy lost to low-bit weights. ZeroQuant-V2 also quantizes the
    factors to 8 bits; they are returned in float here.

    Args:
        weight: ``(out, in)`` float weight.
        weight_q: ``(out, in)`` its quantized (dequantized, float) version.
        rank: ``r``, from 0 to ``min(out, in)`` (full rank: exact).

    Returns:
        ``(U_r, V_r)`` of shapes ``(out, r)`` and ``(r, in)`` with ``W ~= weight_q + U_r @ V_r``.
    """
    _check_float(weight, "lorc", "weight")
    _check_float(weight_q, "lorc", "weight_q")
    if weight.ndim != 2 or weight.shape != weight_q.shape:
        raise ValueError(
            f"lorc: weight and weight_q must be 2-D of the same shape, got {tuple(weight.shape)} "
            f"and {tuple(weight_q.shape)}; dequantize the codes first"
        )
    full = min(weight.shape)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= full:
        raise ValueError(f"lorc: rank must be an integer in [0, {full}], got {rank!r}")
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    E = weight.detach().to(dtype) - weight_q.detach().to(dtype)
    U, S, Vh = torch.linalg.svd(E, full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]


# ---------------------------------------------------------------------------------------
# Floating-point formats: FP8 and FP4 (E2M1)
# ---------------------------------------------------------------------------------------

def fp8_round_trip(
    x: torch.Tensor,
    dtype: torch.dtype | None = None,
    scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Round ``x`` through an FP8 format with a per-tensor scale: ``fp8(x / s) * s``.

    FP8 (Micikevicius et al. 2022) comes as E4M3 (``torch.float8_e4m3fn``: 3 mantissa bits,
    max 448, no infinities) for weights and activations, and E5M2 (``float8_e5m2``: more
    range, max 57344) for gradients. A float grid is not uniform: the relative error is
    about the same (``2^-4`` for E4M3) for every value, large or small, which suits the
    heavy-tailed tensors of LLMs (LLM-FP4, Liu et al. 2023, pushes this to 4 bits). The
    scale ``s = max|x| / max_fp8`` uses the whole range; values are clamped to
    ``+-max_fp8`` before the cast.

    Args:
        x: float tensor, any shape.
        dtype: an FP8 dtype of torch (default ``torch.float8_e4m3fn``; needs torch >= 2.1).
        scale: a given scale instead of ``max|x| / max_fp8`` (e.g. 1.0).

    Returns:
        tensor of the shape and dtype of ``x`` (no gradient through the cast).
    """
    fp8 = [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]
    if not fp8:
        raise RuntimeError(f"fp8_round_trip needs torch >= 2.1 (float8 dtypes); this is torch {torch.__version__}")
    dtype = torch.float8_e4m3fn if dtype is None else dtype
    if dtype not in fp8:
        raise ValueError(f"fp8_round_trip: dtype must be one of {fp8}, got {dtype}")
    _check_float(x, "fp8_round_trip")
    fmax = torch.finfo(dtype).max
    xc = _opmath(x)
    if scale is None:
        scale = (xc.detach().abs().amax() / fmax).clamp(min=torch.finfo(torch.float32).tiny)
    scale = torch.as_tensor(scale, dtype=xc.dtype, device=x.device)
    if not bool((scale > 0).all()):
        raise ValueError("fp8_round_trip: scale must be > 0")
    y = (xc / scale).clamp(-fmax, fmax).to(dtype).to(xc.dtype) * scale
    return y.to(x.dtype)


# The 8 magnitudes of FP4 E2M1 (1 sign, 2 exponent, 1 mantissa bit, exponent bias 1):
# subnormal 0, 0.5; normal 1, 1.5, 2, 3, 4, 6. With the sign: 16 codes (+0 and -0), 15 values.
FP4_E2M1_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fp4_e2m1_round(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest FP4 E2M1 value, ties to even, saturating at +-6 (no scaling).

    Ties go to the code with mantissa bit 0 (an even index in :data:`FP4_E2M1_VALUES`), as
    IEEE round-to-nearest-even and NVIDIA's ``cvt.rn.satfinite.e2m1`` do: 0.25 -> 0,
    0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.

    Args:
        v: float tensor, any shape.

    Returns:
        float tensor of the shape and dtype of ``v``, every entry one of the 15 E2M1 values.
    """
    _check_float(v, "fp4_e2m1_round", "v")
    vc = _opmath(v)
    grid = torch.tensor(FP4_E2M1_VALUES, dtype=vc.dtype, device=v.device)
    mids = (grid[1:] + grid[:-1]) / 2  # decision boundaries between neighbours
    a = vc.abs().clamp(max=grid[-1].item())
    down = torch.bucketize(a, mids, right=False)  # on a tie: the lower code
    up = torch.bucketize(a, mids, right=True)     # on a tie: the upper code
    idx = torch.where(down % 2 == 0, down, up)    # differ only on ties: take the even code
    return (torch.sign(vc) * grid[idx]).to(v.dtype)


def fp4_e2m1(x: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Simulated FP4 (E2M1) quantization with a per-tensor or per-group scale.

    ``x_hat = s * e2m1(x / s)`` with ``s = max|x| / 6`` per tensor, or per group of
    ``group_size`` along the last dim (MXFP4 uses groups of 32 with power-of-two scales,
    NVFP4 groups of 16 with FP8 scales; the scale here is float32). See LLM-FP4
    (Liu et al., EMNLP 2023) for FP4 quantization of transformers.

    Args:
        x: float tensor, any shape (last dim divisible by ``group_size``).
        group_size: per-group scales, or None for one scale.

    Returns:
        tensor of the shape and dtype of ``x``; ``x_hat / s`` only holds E2M1 values.
    """
    _check_float(x, "fp4_e2m1")
    _check_layout(x, None, group_size, "fp4_e2m1")
    xv = _view(_opmath(x.detach()), group_size)
    amax = xv.abs().amax() if group_size is None else xv.abs().amax(dim=-1, keepdim=True)
    scale = (amax / FP4_E2M1_VALUES[-1]).clamp(min=torch.finfo(torch.float32).tiny)
    return _unview(fp4_e2m1_round(xv / scale) * scale, group_size).to(x.dtype)


# ---------------------------------------------------------------------------------------
# Whole models: layer-input statistics, GPTQ, SmoothQuant folding, LoRC
# ---------------------------------------------------------------------------------------

_LINEAR_LIKE = (nn.Linear, QuantLinear)
_CONV_LIKE = (nn.Conv2d, QuantConv2d)


class _StatsHook:
    """A forward pre-hook that accumulates statistics of a layer's input.

    * ``absmax``: ``max |x|`` per input channel (the last dim of a linear layer's input,
      dim 1 of a convolution's), over every row seen so far;
    * ``xtx``: with ``hessian=True``, ``sum_n x_n x_n^T`` over the rows ``x_n`` the layer
      multiplies by its weight: the tokens of a linear layer, the unfolded
      ``C_in * kh * kw`` patches of a convolution (the rows of ``F.unfold``, in the order
      of ``weight.flatten(1)``).
    """

    def __init__(self, module: nn.Module, hessian: bool) -> None:
        self.module, self.hessian = module, hessian
        self.absmax: torch.Tensor | None = None
        self.xtx: torch.Tensor | None = None
        self.n = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        if isinstance(self.module, _CONV_LIKE):
            amax = x.abs().amax(dim=(0, 2, 3))
            rows = None
            if self.hessian:
                m = self.module
                # (B, C_in*kh*kw, L) -> (B*L, fan_in): one row per output position
                rows = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2).flatten(0, 1)
            n = x.numel() // x.shape[1] if rows is None else rows.shape[0]
        else:
            rows = x.reshape(-1, x.shape[-1])
            amax = rows.abs().amax(dim=0)
            n = rows.shape[0]
        amax = amax.float()
        self.absmax = amax if self.absmax is None else torch.maximum(self.absmax, amax)
        self.n += n
        if self.hessian:
            r = rows.float()
            xtx = (r.T @ r).double()
            self.xtx = xtx if self.xtx is None else self.xtx + xtx


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the layer it watches has run."""


def _forward_batches(model: nn.Module, batches: Iterable[Any], max_batches: int | None) -> int:
    """Run ``model`` over ``batches`` (tensors or ``(x, y)`` pairs) in eval mode, no grad.

    A hook may raise :class:`_StopForward` to skip the rest of a forward pass (the layers
    after the one it observes): the pass counts as done.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    was_training = model.training
    n = 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                try:
                    model(x.to(device) if device is not None else x)
                except _StopForward:
                    pass
                n += 1
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("the batches were empty; give at least one batch of inputs")
    return n


def input_stats(
    model: nn.Module,
    batches: Iterable[Any],
    names: Sequence[str] | None = None,
    *,
    hessian: bool = False,
    max_batches: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Statistics of the inputs of a model's linear and conv layers, collected with hooks.

    Runs ``model`` on ``batches`` (eval mode, no gradients) with a forward pre-hook on each
    layer, and returns per layer name:

    * ``"absmax"``: ``(C_in,)`` float32, ``max |x|`` of each input channel (feature). This
      is what LLM.int8 and SmoothQuant look at: a few channels with huge values are the
      "outlier features" that break per-tensor activation quantization.
    * ``"n"``: the number of input rows seen (tokens, or conv output positions).
    * ``"hessian"`` (with ``hessian=True``): ``(fan_in, fan_in)`` float32
      ``H = 2/N sum_n x_n x_n^T``, GPTQ's Hessian of the layer's squared output error
      (for a conv, ``x_n`` are the unfolded patches; ``groups=1`` and integer padding only).

    Args:
        model: any module; its ``nn.Linear`` / ``nn.Conv2d`` / :class:`QuantLinear` /
            :class:`QuantConv2d` layers are hooked (the pre-hook sees the input *before*
            any activation fake quantization).
        batches: tensors or ``(inputs, targets)`` pairs; inputs are moved to the model's device.
        names: layers to hook (names as in ``model.named_modules()``); default: all of the
            above that run during the forward pass.
        hessian: also accumulate ``H``.
        max_batches: stop after this many batches.

    Returns:
        ``{name: {"absmax": ..., "n": ..., ["hessian": ...]}}`` in the order of ``names``
        (default: module order).
    """
    modules = dict(model.named_modules())
    if names is None:
        chosen = [n for n, m in modules.items() if isinstance(m, _LINEAR_LIKE + _CONV_LIKE)]
    else:
        if isinstance(names, str):
            names = (names,)
        bad = [n for n in names if not isinstance(modules.get(n), _LINEAR_LIKE + _CONV_LIKE)]
        if bad:
            layers = [n for n, m in modules.items() if isinstance(m, _LINEAR_LIKE + _CONV_LIKE)]
            raise ValueError(f"input_stats: {bad} are not linear/conv layers of the model; its layers are {layers}")
        chosen = list(names)
    if hessian:
        for n in chosen:
            m = modules[n]
            if isinstance(m, _CONV_LIKE) and (m.groups != 1 or isinstance(m.padding, str)):
                raise ValueError(
                    f"input_stats: the Hessian of conv {n!r} needs groups=1 and integer padding "
                    f"(got groups={m.groups}, padding={m.padding!r}); leave it out of names"
                )
    hooks = {n: _StatsHook(modules[n], hessian) for n in chosen}
    handles = [modules[n].register_forward_pre_hook(h) for n, h in hooks.items()]
    try:
        _forward_batches(model, batches, max_batches)
    finally:
        for h in handles:
            h.remove()
    out: dict[str, dict[str, Any]] = {}
    for n, h in hooks.items():
        if h.absmax is None:
            if names is not None:
                raise RuntimeError(f"input_stats: layer {n!r} never ran during the forward pass")
            continue  # e.g. the out_proj of nn.MultiheadAttention, which is never called
        stats: dict[str, Any] = {"absmax": h.absmax, "n": h.n}
        if hessian:
            stats["hessian"] = (2.0 / h.n * h.xtx).float()
        out[n] = stats
    return out


def gptq_model(
    model: nn.Module,
    batches: Iterable[Any],
    w_bits: int,
    group_size: int | None = None,
    skip: Sequence[str] = (),
    *,
    symmetric: bool = True,
    block_size: int = 128,
    damp: float = 0.01,
    max_batches: int | None = None,
) -> nn.Module:
    """Weight-only GPTQ of a whole model: a :func:`quantize_model` copy whose weights are
    chosen by :func:`gptq_quantize`, one layer at a time.

    As in the GPTQ paper, layers are processed *sequentially* in module order, and the
    Hessian ``H = 2/N X^T X`` of each layer is computed from its inputs in the partly
    quantized model (the earlier layers already hold their GPTQ weights), so each layer
    also corrects the errors that reach it from before. Each of these forward passes stops
    as soon as the layer has seen its input (a layer called several times per pass, e.g.
    a shared one, contributes its first call only). Convolutions (``groups=1``) are
    handled through their unfolded inputs; grouped convolutions keep round-to-nearest.

    Args:
        model: the float model (left untouched).
        batches: calibration inputs (tensors or ``(x, y)`` pairs); iterated once per layer.
        w_bits, group_size, skip, symmetric: as in :func:`quantize_model` (per output
            channel when ``group_size`` is None).
        block_size, damp: see :func:`gptq_quantize`.
        max_batches: calibration batches used per layer.

    Returns:
        the quantized copy (weight-only; its layers hold a fixed grid, see
        :meth:`QuantLinear.set_quantized_weight`).
    """
    batches = list(batches)
    model_q = quantize_model(model, w_bits=w_bits, group_size=group_size, skip=skip, symmetric=symmetric)
    layers = [(n, m) for n, m in model_q.named_modules() if isinstance(m, _QuantLayer)]
    for name, layer in layers:
        if isinstance(layer, QuantConv2d) and (layer.groups != 1 or isinstance(layer.padding, str)):
            continue
        hook = _StatsHook(layer, hessian=True)

        def observe_then_stop(module: nn.Module, args: tuple[Any, ...], hook: _StatsHook = hook) -> None:
            hook(module, args)
            raise _StopForward  # the rest of the model does not change this layer's input

        handle = layer.register_forward_pre_hook(observe_then_stop)
        try:
            _forward_batches(model_q, batches, max_batches)
        finally:
            handle.remove()
        if hook.xtx is None:
            raise RuntimeError(f"gptq_model: layer {name!r} never ran during the forward pass")
        hessian = (2.0 / hook.n * hook.xtx).float()
        q, s, z = gptq_quantize(layer.weight.flatten(1), hessian, w_bits, group_size=group_size,
                                block_size=block_size, damp=damp, symmetric=symmetric)
        layer.set_quantized_weight(q, s, z)
    return model_q


@torch.no_grad()
def smooth_quant_fold(
    norm: nn.Module,
    linears: Sequence[nn.Linear],
    act_absmax: torch.Tensor,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Fold SmoothQuant's migration into a normalization and the linear layers it feeds, in place.

    For ``y = W norm(x)`` with ``norm(x) = gamma * xhat + beta``, dividing ``gamma`` and
    ``beta`` by ``s`` and multiplying the columns of ``W`` by ``s`` leaves ``y`` unchanged
    (in exact arithmetic) while the activations ``norm(x) / s`` lose their outlier channels
    (:func:`smooth_quant_scales`): the smoothing costs nothing at inference.

    Args:
        norm: a normalization with a ``(C,)`` ``weight`` (and optionally ``bias``), e.g.
            ``nn.LayerNorm(C)``.
        linears: the layers whose input is ``norm``'s output (e.g. the fused qkv
            projection), each with ``in_features = C``.
        act_absmax: ``(C,)`` max |norm(x)| per channel, from :func:`input_stats`.
        alpha: migration strength, see :func:`smooth_quant_scales`.

    Returns:
        ``s``: ``(C,)`` the smoothing factors that were applied.
    """
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1:
        raise ValueError(
            f"smooth_quant_fold: {type(norm).__name__} has no (C,) weight to fold the smoothing "
            f"into; it needs an affine normalization such as nn.LayerNorm(C)"
        )
    if not linears:
        raise ValueError("smooth_quant_fold: give at least one linear layer fed by the norm")
    for lin in linears:
        if not isinstance(lin, nn.Linear) or lin.in_features != weight.numel():
            raise ValueError(
                f"smooth_quant_fold: every layer must be an nn.Linear with in_features="
                f"{weight.numel()} (the norm's size), got {lin!r}"
            )
    s = smooth_quant_scales(act_absmax.to(weight.device), [lin.weight for lin in linears], alpha)
    s = s.to(weight.dtype)
    weight.div_(s)
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s)
    for lin in linears:
        lin.weight.mul_(s)  # (out, in) * (in,): column j times s_j
    return s


def smooth_quant_model(
    model: nn.Module,
    batches: Iterable[Any],
    alpha: float = 0.5,
    *,
    max_batches: int | None = None,
) -> nn.Module:
    """A copy of a pre-norm transformer with SmoothQuant folded into every block.

    For each pre-norm :class:`ml.models.Block` the input of the attention's ``qkv``
    projection (fed by ``norm1``) and of the MLP's ``fc`` layer (fed by ``norm2``) are
    smoothed with :func:`smooth_quant_fold`, using per-channel maxima measured on
    ``batches``. These are the two layers SmoothQuant smooths in OPT/BLOOM; the other
    linear layers (attention output, second MLP layer) have no normalization in front of
    them to fold into. The copy computes the same function as ``model`` up to rounding;
    quantize it afterwards (:func:`quantize_model`, :func:`calibrate`).

    Args:
        model: a float model built from ``ml.models.Block`` (ViT, CharGPT); left untouched.
        batches: calibration inputs (tensors or ``(x, y)`` pairs).
        alpha: migration strength in [0, 1] (0.5 in the paper for most models).
        max_batches: stop after this many batches.
    """
    from .models import Block

    model_s = copy.deepcopy(model)
    pairs: list[tuple[nn.Module, str]] = []
    for name, m in model_s.named_modules():
        if not isinstance(m, Block):
            continue
        qkv, fc = getattr(m.attn, "qkv", None), getattr(m.mlp, "fc", None)
        if m.placement != "pre" or not isinstance(qkv, nn.Linear) or not isinstance(fc, nn.Linear):
            raise ValueError(
                f"smooth_quant_model: block {name!r} is not a pre-norm block with attn.qkv and "
                f"mlp.fc linear layers (placement={m.placement!r}); SmoothQuant folds into the "
                f"norm in front of a layer, which only pre-norm blocks have"
            )
        prefix = f"{name}." if name else ""
        pairs += [(m.norm1, prefix + "attn.qkv"), (m.norm2, prefix + "mlp.fc")]
    if not pairs:
        raise ValueError("smooth_quant_model: the model has no ml.models.Block to smooth")
    stats = input_stats(model_s, batches, [n for _, n in pairs], max_batches=max_batches)
    for norm, name in pairs:
        smooth_quant_fold(norm, [model_s.get_submodule(name)], stats[name]["absmax"], alpha)
    return model_s


class LoRCLinear(nn.Module):
    """A quantized linear layer plus a low-rank correction (ZeroQuant-V2's LoRC).

    ``y = base(x) + (x V^T) U^T`` where ``base`` computes ``x W_q^T + b`` and ``U V``
    (``(out, r) @ (r, in)``) approximates the quantization error ``W - W_q`` (:func:`lorc`).
    As in ZeroQuant-V2 the factors are themselves stored in 8 bits (``factor_bits``; they
    hold the fake-quantized values). Build it with :meth:`from_quant` or :func:`lorc_model`.
    """

    def __init__(self, base: nn.Module, U: torch.Tensor, V: torch.Tensor, factor_bits: int | None = 8) -> None:
        super().__init__()
        if U.ndim != 2 or V.ndim != 2 or U.shape[1] != V.shape[0]:
            raise ValueError(f"LoRCLinear: U (out, r) and V (r, in) do not fit: {tuple(U.shape)}, {tuple(V.shape)}")
        self.base = base
        self.U = nn.Parameter(U.detach().clone())
        self.V = nn.Parameter(V.detach().clone())
        self.factor_bits = factor_bits

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @classmethod
    def from_quant(
        cls, base: QuantLinear, weight: torch.Tensor, rank: int, factor_bits: int | None = 8
    ) -> "LoRCLinear":
        """Compensate ``base`` (a :class:`QuantLinear`) for the error against the float ``weight``.

        ``U, V = lorc(weight, base's quantized weight, rank)``, then each factor is
        fake-quantized to ``factor_bits`` per row (None: keep float).
        """
        if not isinstance(base, QuantLinear):
            raise TypeError(f"LoRCLinear.from_quant needs a QuantLinear, got {type(base).__name__}")
        with torch.no_grad():
            U, V = lorc(weight.detach().to(base.weight.dtype), base.quantized_weight().detach(), rank)
            if factor_bits is not None and rank > 0:
                U, V = fake_quant(U, factor_bits, axis=0), fake_quant(V, factor_bits, axis=0)
        return cls(base, U.to(base.weight.dtype), V.to(base.weight.dtype), factor_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(*, in)`` -> ``(*, out)``."""
        y = self.base(x)
        if self.rank == 0:
            return y
        return y + F.linear(F.linear(x, self.V), self.U)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, factor_bits={self.factor_bits}"


def lorc_model(
    model_q: nn.Module, model_fp: nn.Module, rank: int, factor_bits: int | None = 8
) -> nn.Module:
    """A copy of the quantized ``model_q`` with every :class:`QuantLinear` wrapped in a
    :class:`LoRCLinear` of rank ``min(rank, out, in)``, fitted to the float weight of the
    layer of the same name in ``model_fp`` (the model ``model_q`` was quantized from).
    Convolutions are left as they are."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"lorc_model: rank must be a non-negative integer, got {rank!r}")
    fp_modules = dict(model_fp.named_modules())
    model_l = copy.deepcopy(model_q)
    for name, m in list(model_l.named_modules()):
        if not isinstance(m, QuantLinear):
            continue
        ref = fp_modules.get(name)
        if ref is None or getattr(ref, "weight", None) is None or ref.weight.shape != m.weight.shape:
            raise ValueError(f"lorc_model: model_fp has no layer {name!r} with a weight of shape "
                             f"{tuple(m.weight.shape)}; pass the model model_q was quantized from")
        r = min(rank, *m.weight.shape)
        wrapped = LoRCLinear.from_quant(m, ref.weight, r, factor_bits)
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(model_l.get_submodule(parent_name), child, wrapped)
        else:
            model_l = wrapped
    return model_l


# ---------------------------------------------------------------------------------------
# Real storage: int4 packing, weight-only linear layers, model bytes
# ---------------------------------------------------------------------------------------

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit codes two per byte: ``(..., K)`` int8 in ``[-8, 7]`` -> ``(..., K/2)`` uint8.

    Element ``2i`` goes to the low nibble and ``2i + 1`` to the high nibble of byte ``i``,
    each stored with an offset of 8 (``q + 8`` in ``0..15``). ``K`` must be even.
    """
    if not isinstance(q, torch.Tensor) or q.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"pack_int4 needs signed integer codes, got {getattr(q, 'dtype', type(q).__name__)}")
    if q.ndim == 0 or q.shape[-1] % 2 != 0:
        raise ValueError(f"pack_int4: the last dim must be even (two codes per byte), got shape {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError(f"pack_int4: codes must lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(..., K/2)`` uint8 -> ``(..., K)`` int8 in ``[-8, 7]``."""
    if not isinstance(p, torch.Tensor) or p.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 needs uint8 bytes from pack_int4, got {getattr(p, 'dtype', type(p).__name__)}")
    lo = (p & 0x0F).to(torch.int8) - 8
    hi = (p >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).flatten(-2)


class WeightOnlyLinear(nn.Module):
    """A linear layer that *stores* its weight as int8 or packed int4 codes plus scales.

    Weight-only quantization (W8A16, W4A16): activations stay in floating point, and the
    weight ``W ~= q * s`` (symmetric; one scale per output row, or per group of
    ``group_size`` inputs) is kept in ``bits`` bits per weight: int8 codes, or int4 codes
    packed two per byte (:func:`pack_int4`). It saves memory, and on memory-bound
    workloads (batch-1 generation) it can save time, *if* the kernel reads the small codes
    and dequantizes them in registers.

    ``kernel="dequant"`` (default) is plain PyTorch: ``W = q * s`` is materialized in the
    input's dtype, then ``F.linear``. That writes and reads a full-precision weight on every
    call, so it is never faster than the float layer: it shows the storage, not the speed.
    ``kernel="fused"`` calls PyTorch's fused weight-only kernels (private ops, see
    :meth:`prepare_fused`): ``torch._weight_int8pack_mm`` for 8 bits per channel, and
    ``torch._weight_int4pack_mm`` (CUDA, bfloat16) / ``torch._weight_int4pack_mm_for_cpu``
    for 4 bits per group.

    Buffers: ``qweight`` ``(out, in)`` int8 (8 bits) or ``(out, in/2)`` uint8 (4 bits);
    ``scale`` ``(out,)`` or ``(out, in/group_size)`` float32; ``bias`` ``(out,)`` or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 8,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"WeightOnlyLinear stores 8-bit or 4-bit weights, got bits={bits!r}")
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1
                                       or in_features % group_size != 0):
            raise ValueError(f"WeightOnlyLinear: group_size={group_size!r} must divide in_features={in_features}")
        if bits == 4 and in_features % 2 != 0:
            raise ValueError(f"WeightOnlyLinear: 4-bit packing needs an even in_features, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.kernel = "dequant"
        cols = in_features if bits == 8 else in_features // 2
        self.register_buffer("qweight", torch.zeros(out_features, cols, device=device,
                                                    dtype=torch.int8 if bits == 8 else torch.uint8))
        n_scales = (out_features,) if group_size is None else (out_features, in_features // group_size)
        self.register_buffer("scale", torch.ones(n_scales, device=device, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, device=device, dtype=dtype) if bias else None)
        self._fused: dict[str, Any] | None = None

    @classmethod
    def from_float(
        cls, linear: nn.Module, bits: int = 8, group_size: int | None = None
    ) -> "WeightOnlyLinear":
        """Quantize an ``nn.Linear`` (round to nearest, symmetric), or store the grid of a
        :class:`QuantLinear` (e.g. after :func:`gptq_model`; its ``w_bits`` must be ``bits``,
        symmetric, per channel or per group)."""
        if isinstance(linear, QuantLinear):
            if linear.w_bits != bits or not linear.symmetric or (linear.group_size is None and linear.w_axis != 0):
                raise ValueError(
                    f"WeightOnlyLinear.from_float: the QuantLinear holds w_bits={linear.w_bits}, "
                    f"symmetric={linear.symmetric}, w_axis={linear.w_axis}; it needs w_bits={bits}, "
                    f"symmetric, per-channel or per-group weights"
                )
            group_size = linear.group_size
            q, s, _ = linear.int_weight()
        elif isinstance(linear, nn.Linear):
            q, s, _ = quantize(linear.weight.detach(), bits, True, axis=None if group_size else 0,
                               group_size=group_size)
        else:
            raise TypeError(f"WeightOnlyLinear.from_float needs an nn.Linear or QuantLinear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits=bits,
                    group_size=group_size, device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.qweight.copy_(q if bits == 8 else pack_int4(q))
            layer.scale.copy_(s)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def codes(self) -> torch.Tensor:
        """The integer codes ``(out, in)`` int8."""
        return self.qweight if self.bits == 8 else unpack_int4(self.qweight)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W = q * s``: ``(out, in)`` in ``dtype`` (float32 gives exactly :func:`dequantize`)."""
        q = self.codes().to(dtype)
        s = self.scale.to(dtype)
        if self.group_size is None:
            return q * s[:, None]
        return (q.unflatten(-1, (-1, self.group_size)) * s[..., None]).flatten(-2)

    # -- fused kernels ---------------------------------------------------------------------
    def prepare_fused(self, dtype: torch.dtype | None = None) -> tuple[bool, str]:
        """Try PyTorch's fused weight-only kernel for this layer; return ``(ok, message)``.

        Packs the codes into the kernel's layout once, runs it on a random input and checks
        the result against the ``"dequant"`` path (a fast wrong kernel is worthless). On
        success ``kernel="fused"`` may be used. ``dtype`` is the activation dtype the kernel
        will see (default: bfloat16 on CUDA, float32 elsewhere).
        """
        dev = self.qweight.device
        dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        try:
            if self.bits == 8 and self.group_size is None:
                if not hasattr(torch, "_weight_int8pack_mm"):
                    return False, "torch._weight_int8pack_mm is not in this PyTorch"
                fused = {"op": "int8", "scale": self.scale.to(dtype)}
            elif self.bits == 4 and self.group_size is not None:
                if self.group_size not in (32, 64, 128, 256):
                    return False, f"int4 kernels take group sizes 32-256, not {self.group_size}"
                q = self.codes().to(torch.int32) + 8                       # (out, in) in 0..15
                s = self.scale.t().to(dtype)                               # (in/g, out)
                sz = torch.stack([s, torch.zeros_like(s)], dim=-1).contiguous()  # w = (q-8)s + 0
                if dev.type == "cuda":
                    if not hasattr(torch, "_convert_weight_to_int4pack"):
                        return False, "torch._convert_weight_to_int4pack is not in this PyTorch"
                    packed = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8)
                    w = torch._convert_weight_to_int4pack(packed, 8)
                    fused = {"op": "int4_cuda", "w": w, "sz": sz}
                else:
                    if not hasattr(torch, "_convert_weight_to_int4pack_for_cpu"):
                        return False, "torch._convert_weight_to_int4pack_for_cpu is not in this PyTorch"
                    w = torch._convert_weight_to_int4pack_for_cpu(q, 1)
                    fused = {"op": "int4_cpu", "w": w, "sz": sz}
            else:
                return False, f"no fused kernel for {self.bits}-bit weights with group_size={self.group_size}"
            self._fused = fused
            g = torch.Generator(device=dev).manual_seed(0)  # leave the global RNG alone
            x = torch.randn(5, self.in_features, device=dev, generator=g).to(dtype)
            got = self._fused_matmul(x).float()
            want = (x.float() @ self.dequantized_weight(torch.float32).t())
            tol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-3
            err = ((got - want).norm() / want.norm().clamp(min=1e-12)).item()
            if not err <= tol:
                self._fused = None
                return False, f"the fused kernel disagrees with the reference (relative error {err:.2g})"
        except (RuntimeError, NotImplementedError, TypeError) as e:  # missing kernel for this device/dtype
            self._fused = None
            return False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return True, f"{fused['op']} fused kernel on {dev.type}"

    def _fused_matmul(self, x2: torch.Tensor) -> torch.Tensor:
        f = self._fused
        assert f is not None
        if f["op"] == "int8":
            return torch._weight_int8pack_mm(x2, self.qweight, f["scale"].to(x2.dtype))
        if f["op"] == "int4_cuda":
            return torch._weight_int4pack_mm(x2, f["w"], self.group_size, f["sz"].to(x2.dtype))
        return torch._weight_int4pack_mm_for_cpu(x2, f["w"], self.group_size, f["sz"].to(x2.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(*, in)`` -> ``(*, out)`` in ``x``'s dtype."""
        if self.kernel == "fused":
            if self._fused is None:
                ok, msg = self.prepare_fused(x.dtype)
                if not ok:
                    raise RuntimeError(f"WeightOnlyLinear: no fused kernel here ({msg}); use kernel='dequant'")
            y = self._fused_matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}, {g}, kernel={self.kernel!r}")


def weight_only_model(
    model: nn.Module,
    bits: int = 8,
    group_size: int | None = None,
    skip: Sequence[str] = (),
    kernel: str = "dequant",
) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (or :class:`QuantLinear`, keeping its
    grid) replaced by a :class:`WeightOnlyLinear` that really stores ``bits``-bit weights.

    Layers in ``skip`` (and the ``out_proj`` of ``nn.MultiheadAttention``) stay as they are;
    convolutions are not converted. ``kernel`` is set on every new layer ("dequant" or
    "fused"; see :class:`WeightOnlyLinear`).
    """
    if kernel not in ("dequant", "fused"):
        raise ValueError(f"weight_only_model: kernel must be 'dequant' or 'fused', got {kernel!r}")
    if isinstance(skip, str):
        skip = (skip,)
    names = dict(model.named_modules())
    unknown = [s for s in skip if s not in names]
    if unknown:
        raise ValueError(f"weight_only_model: skip names {unknown} are not modules of the model")
    model_w = copy.deepcopy(model)
    for name, m in list(model_w.named_modules()):
        if not isinstance(m, _LINEAR_LIKE) or _is_skipped(name, skip) or not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model_w.get_submodule(parent_name)
        if isinstance(parent, nn.MultiheadAttention):
            continue
        layer = WeightOnlyLinear.from_float(m, bits, group_size)
        layer.kernel = kernel
        setattr(parent, child, layer)
    return model_w


def quantized_bytes(model: nn.Module, scale_bits: int = 32) -> int:
    """Bytes a model needs once its quantized weights are stored as integers.

    * :class:`QuantLinear` / :class:`QuantConv2d`: ``w_bits`` per weight (packed), plus one
      ``scale_bits`` scale per row or group and, for asymmetric grids, one ``w_bits`` zero
      point per scale; the bias and activation ranges at their own size.
    * :class:`LoRCLinear`: its base layer as above plus ``factor_bits`` per factor entry
      and one scale per factor row (float factors at their own size); rank 0 costs
      exactly what its base layer costs.
    * :class:`WeightOnlyLinear`: the bytes its buffers really hold.
    * Everything else (embeddings, norms, float layers): ``numel * element_size``.

    Shared tensors (tied embeddings) count once. Compare with ``ml.bench.model_bytes``,
    which counts the float tensors a fake-quantized model actually holds.
    """
    special: dict[int, float] = {}  # id(tensor) -> bits
    for m in model.modules():
        if isinstance(m, _QuantLayer):
            axis, group = m._w_layout()
            w2 = m.weight.flatten(1)
            n_scales = math.prod(_param_shape(w2, axis, group))
            bits = m.w_bits * m.weight.numel() + scale_bits * n_scales
            if not m.symmetric:
                bits += m.w_bits * n_scales
            special[id(m.weight)] = bits
            for t in (m.w_scale, m.w_zero_point):
                if t is not None:
                    special[id(t)] = 0  # counted with the weight
        elif isinstance(m, LoRCLinear) and m.factor_bits is not None:
            for f in (m.U, m.V):  # one scale per factor row; rank 0: no factors, no scales
                special[id(f)] = (m.factor_bits * f.numel() + scale_bits * f.shape[0]) if f.numel() else 0
    tensors = list(model.parameters()) + list(model.buffers())
    bits = sum(special.get(id(t), 8 * t.numel() * t.element_size()) for t in tensors)
    return int(math.ceil(bits / 8))
