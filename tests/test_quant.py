"""Tests of minilib.quant (chapter 5) against PyTorch's fake-quantize ops and exact references."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib import quant as Q


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def heavy_tailed(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Gaussian values with a few large outliers, like real activations."""
    g = gen(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    mask = torch.rand(shape, generator=g) < 0.01
    return torch.where(mask, x * 20, x)


# ---------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------

def test_qrange():
    assert Q.qrange(8) == (-127, 127)
    assert Q.qrange(8, symmetric=False) == (0, 255)
    assert Q.qrange(4) == (-7, 7)
    assert Q.qrange(2, False) == (0, 3)
    assert Q.qrange(16) == (-32767, 32767)
    for bad in (1, 17, 8.0, True, "8"):
        with pytest.raises(ValueError, match="bits"):
            Q.qrange(bad)


def test_qparams_formulas_and_zero_in_range():
    s, z = Q.qparams(-1.0, 3.0, 8, symmetric=True)
    assert s.dtype == torch.float32 and z.dtype == torch.int32
    assert torch.allclose(s, torch.tensor(3.0 / 127)) and z.item() == 0
    s, z = Q.qparams(-1.0, 3.0, 8, symmetric=False)
    assert torch.allclose(s, torch.tensor(4.0 / 255)) and z.item() == round(1.0 / (4.0 / 255))
    # A positive-only range is widened to include 0 (PyTorch observers): z = 0
    s, z = Q.qparams(2.0, 3.0, 8, symmetric=False)
    assert torch.allclose(s, torch.tensor(3.0 / 255)) and z.item() == 0
    s, z = Q.qparams(-3.0, -2.0, 8, symmetric=False)
    assert z.item() == 255
    # constant zero range: finite scale (eps), as PyTorch
    s, z = Q.qparams(0.0, 0.0, 8, symmetric=False)
    assert s.item() == pytest.approx(torch.finfo(torch.float32).eps) and z.item() == 0
    with pytest.raises(ValueError, match="lo > hi"):
        Q.qparams(1.0, -1.0, 8)


def test_qparams_match_pytorch_minmax_observer_asymmetric():
    """Our asymmetric params are PyTorch's MinMaxObserver ones for quint8 (0..255)."""
    x = heavy_tailed((64, 32), 0) + 0.3
    obs = torch.ao.quantization.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    obs(x)
    s_ref, z_ref = obs.calculate_qparams()
    _, s, z = Q.quantize(x, 8, symmetric=False)
    assert torch.allclose(s, s_ref.reshape(()), rtol=1e-6)
    assert z.item() == z_ref.item()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8, 12])
def test_quantize_dtypes_shapes_and_range(symmetric, bits):
    x = heavy_tailed((6, 10, 8), 1)
    qmin, qmax = Q.qrange(bits, symmetric)
    want_dtype = (torch.int8 if symmetric else torch.uint8) if bits <= 8 else torch.int32
    for axis, group, pshape in [(None, None, ()), (1, None, (10,)), (-1, None, (8,)), (None, 4, (6, 10, 2))]:
        q, s, z = Q.quantize(x, bits, symmetric, axis=axis, group_size=group)
        assert q.dtype == want_dtype and q.shape == x.shape
        assert s.shape == pshape and z.shape == pshape
        assert s.dtype == torch.float32 and z.dtype == torch.int32
        assert int(q.min()) >= qmin and int(q.max()) <= qmax
        if symmetric:
            assert (z == 0).all()
        # the extremes of each block land on the ends of the grid (minmax uses the full range)
        assert int(q.max()) == qmax or int(q.min()) == qmin
        xh = Q.dequantize(q, s, z, axis=axis, group_size=group)
        assert xh.dtype == torch.float32 and xh.shape == x.shape


@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_bound_property(symmetric):
    """|x - deq(q(x))| <= s/2 for random tensors, bits 2..8 and every granularity."""
    for trial, bits in itertools.product(range(6), range(2, 9)):
        g = gen(100 * trial + bits)
        shape = (int(torch.randint(1, 6, (), generator=g)), 4 * int(torch.randint(1, 5, (), generator=g)))
        kind = trial % 3
        x = torch.randn(shape, generator=g) * float(torch.rand((), generator=g) * 10 + 0.01)
        if kind == 1:
            x = x.abs() + float(torch.rand((), generator=g))      # positive only (post-ReLU)
        elif kind == 2:
            x = x - x.abs().max() * 2                             # negative only
        for axis, group in [(None, None), (0, None), (1, None), (None, 4), (None, 2)]:
            q, s, z = Q.quantize(x, bits, symmetric, axis=axis, group_size=group)
            xh = Q.dequantize(q, s, z, axis=axis, group_size=group)
            if group is not None:
                half = s.repeat_interleave(group, dim=-1) / 2
            elif axis is not None:
                half = (s / 2).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
            else:
                half = s / 2
            err = (x - xh).abs()
            assert bool((err <= half * (1 + 1e-5) + 1e-7).all()), (bits, axis, group, (err - half).max())


def test_constant_and_zero_tensors():
    for symmetric in (True, False):
        z0 = torch.zeros(3, 4)
        q, s, z = Q.quantize(z0, 8, symmetric)
        assert torch.isfinite(s).all() and s > 0
        assert torch.equal(Q.dequantize(q, s, z), z0)
        assert torch.equal(Q.fake_quant(z0, 8, symmetric), z0)
        c = torch.full((3, 4), -2.5)
        xh = Q.fake_quant(c, 4, symmetric, axis=0)
        assert torch.allclose(xh, c)
        q, s, z = Q.quantize(c, 8, symmetric, group_size=2)
        assert torch.allclose(Q.dequantize(q, s, z, group_size=2), c)


def test_zero_is_exact_with_asymmetric_grid():
    x = torch.cat([torch.zeros(5), torch.rand(50) * 3 - 0.7])
    assert (Q.fake_quant(x, 3, symmetric=False)[:5] == 0).all()


def test_quantize_with_given_params_and_dequantize_float64():
    x = heavy_tailed((5, 12), 2)
    q, s, z = Q.quantize(x, 6, False, axis=0)
    q2, _, _ = Q.quantize(x, 6, False, axis=0, scale=s, zero_point=z)
    assert torch.equal(q, q2)
    xh64 = Q.dequantize(q, s, z, axis=0, dtype=torch.float64)
    assert xh64.dtype == torch.float64
    assert torch.allclose(xh64.float(), Q.dequantize(q, s, z, axis=0))


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 6)
    with pytest.raises(TypeError, match="floating-point"):
        Q.quantize(torch.ones(3, dtype=torch.int64), 8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        Q.quantize([1.0, 2.0], 8)
    with pytest.raises(ValueError, match="empty"):
        Q.quantize(torch.empty(0), 8)
    with pytest.raises(ValueError, match="divisible by group_size=4"):
        Q.quantize(x, 8, group_size=4)
    with pytest.raises(ValueError, match="not both"):
        Q.quantize(x, 8, axis=0, group_size=2)
    with pytest.raises(ValueError, match="axis=2"):
        Q.quantize(x, 8, axis=2)
    with pytest.raises(ValueError, match="bits"):
        Q.quantize(x, 1)
    with pytest.raises(ValueError, match="needs shape"):
        Q.fake_quant(x, 8, axis=0, scale=torch.ones(6))
    with pytest.raises(ValueError, match="scale must be > 0"):
        Q.fake_quant(x, 8, scale=torch.tensor(0.0))
    with pytest.raises(ValueError, match="without scale"):
        Q.fake_quant(x, 8, zero_point=torch.tensor(0))
    with pytest.raises(TypeError, match="integer codes"):
        Q.dequantize(x, torch.tensor(1.0), torch.tensor(0))


# ---------------------------------------------------------------------------------------
# fake_quant vs PyTorch, forward and backward
# ---------------------------------------------------------------------------------------

def _grid_probe(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x widened past the range (to test clipping) plus exact ties (k + 1/2) * s."""
    ties = (torch.arange(-20, 20, dtype=x.dtype) + 0.5) * float(s.max())
    return torch.cat([x.flatten() * 1.5, ties])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_per_tensor_matches_pytorch(dtype, symmetric, bits):
    x0 = heavy_tailed((300,), bits)
    _, s, z = Q.quantize(x0, bits, symmetric)
    qmin, qmax = Q.qrange(bits, symmetric)
    x = _grid_probe(x0, s).to(dtype)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours = Q.fake_quant(a, bits, symmetric, scale=s, zero_point=z)
    ref = torch.fake_quantize_per_tensor_affine(b, s, z, qmin, qmax)
    assert ours.dtype == dtype and ours.shape == x.shape
    assert torch.equal(ours, ref)  # bitwise: same arithmetic as the PyTorch kernel
    w = torch.randn(x.shape, generator=gen(0)).to(dtype)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.equal(a.grad, b.grad)
    assert (a.grad == 0).any() and (a.grad != 0).any()  # some clipped, some passed through


def test_fake_quant_per_tensor_float64_close_to_pytorch():
    x = heavy_tailed((500,), 3, dtype=torch.float64)
    _, s, z = Q.quantize(x, 8, False)
    ours = Q.fake_quant(x * 1.3, 8, False, scale=s, zero_point=z)
    ref = torch.fake_quantize_per_tensor_affine(x * 1.3, s, z, 0, 255)
    assert ours.dtype == torch.float64
    # PyTorch dequantizes per-tensor float64 in float32; we stay in float64
    assert torch.allclose(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_fake_quant_per_channel_matches_pytorch(dtype, symmetric, axis):
    bits = 4
    x = heavy_tailed((6, 5, 7), 10 + (axis % 3))
    _, s, z = Q.quantize(x, bits, symmetric, axis=axis)
    qmin, qmax = Q.qrange(bits, symmetric)
    x = (x * 1.25).to(dtype)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours = Q.fake_quant(a, bits, symmetric, axis=axis, scale=s, zero_point=z)
    ref = torch.fake_quantize_per_channel_affine(b, s, z, axis % 3, qmin, qmax)
    assert ours.dtype == dtype
    assert torch.equal(ours, ref)
    g = torch.randn(x.shape, generator=gen(1)).to(dtype)
    (ours * g).sum().backward()
    (ref * g).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_fake_quant_default_params_equal_quantize_dequantize_and_per_channel_reference():
    x = heavy_tailed((8, 16), 4)
    for symmetric, axis, group in itertools.product((True, False), (None, 0, 1), (None,)):
        q, s, z = Q.quantize(x, 5, symmetric, axis=axis, group_size=group)
        assert torch.equal(Q.fake_quant(x, 5, symmetric, axis=axis), Q.dequantize(q, s, z, axis=axis))
    q, s, z = Q.quantize(x, 5, True, axis=0)
    ref = torch.fake_quantize_per_channel_affine(x, s, z, 0, -15, 15)
    assert torch.equal(Q.fake_quant(x, 5, True, axis=0), ref)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_group_equals_reshape_to_per_channel(symmetric):
    x = heavy_tailed((3, 4, 24), 5)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    grouped = Q.fake_quant(a, 4, symmetric, group_size=8)
    per_channel = Q.fake_quant(b.reshape(-1, 8), 4, symmetric, axis=0).reshape(x.shape)
    assert torch.equal(grouped, per_channel)
    qg, sg, zg = Q.quantize(x, 4, symmetric, group_size=8)
    qc, sc, zc = Q.quantize(x.reshape(-1, 8), 4, symmetric, axis=0)
    assert torch.equal(qg.reshape(-1, 8), qc) and torch.equal(sg.flatten(), sc) and torch.equal(zg.flatten(), zc)
    # ... and also the PyTorch per-channel op on the reshaped tensor
    ref = torch.fake_quantize_per_channel_affine(x.reshape(-1, 8), sc, zc, 0, *Q.qrange(4, symmetric))
    assert torch.equal(grouped, ref.reshape(x.shape))
    grouped.sum().backward()
    per_channel.sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_fake_quant_gradient_is_identity_without_clipping():
    x = torch.randn(50, generator=gen(6), requires_grad=True)
    y = Q.fake_quant(x, 8)  # min/max params: nothing is clipped
    y.backward(torch.arange(50.0))
    assert torch.equal(x.grad, torch.arange(50.0))


# ---------------------------------------------------------------------------------------
# Ranges and calibration
# ---------------------------------------------------------------------------------------

def test_choose_range_methods():
    x = heavy_tailed((20000,), 7)
    lo, hi = Q.choose_range(x, 8, "minmax", symmetric=False)
    assert lo == x.min() and hi == x.max()
    lo, hi = Q.choose_range(x, 8, "minmax", symmetric=True)
    assert hi == x.abs().max() and lo == -hi
    lo, hi = Q.choose_range(x, 8, "percentile", symmetric=True, percentile=100.0)
    assert hi == x.abs().max()
    lo, hi = Q.choose_range(x, 8, "percentile", symmetric=True, percentile=99.0)
    assert hi < x.abs().max() and lo == -hi
    assert (x.abs() <= hi).float().mean() >= 0.99
    lo, hi = Q.choose_range(x, 8, "percentile", symmetric=False, percentile=99.0)
    assert x.min() < lo < hi < x.max()

    def mse(lo, hi, bits):
        s, z = Q.qparams(lo, hi, bits, True)
        return (Q.fake_quant(x, bits, True, scale=s, zero_point=z) - x).square().mean()

    for bits in (3, 4, 8):
        lo_m, hi_m = Q.choose_range(x, bits, "mse")
        lo_0, hi_0 = Q.choose_range(x, bits, "minmax")
        assert mse(lo_m, hi_m, bits) <= mse(lo_0, hi_0, bits)
    # on a Gaussian (max ~4 sigma) the MSE-optimal 4-bit grid clips well inside the range
    gauss = torch.randn(20000, generator=gen(8))
    assert Q.choose_range(gauss, 4, "mse")[1] < gauss.abs().max() * 0.8
    with pytest.raises(ValueError, match="method"):
        Q.choose_range(x, 8, "kl")
    with pytest.raises(ValueError, match="percentile"):
        Q.choose_range(x, 8, "percentile", percentile=0)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))


def test_calibrate_minmax_sets_exact_ranges_and_cleans_up():
    torch.manual_seed(0)
    net = _Net()
    qnet = Q.quantize_model(net, w_bits=8, a_bits=8, a_symmetric=False)
    batches = [torch.randn(4, 3, 8, 8, generator=gen(i)) for i in range(3)]
    # reference inputs of the head, computed with the quantized weights (the deployed model)
    with torch.no_grad():
        qnet.eval()
        for m in qnet.modules():
            if isinstance(m, (Q.QuantLinear, Q.QuantConv2d)):
                m.calibrating = True
        feats = torch.cat([qnet.body(qnet.stem(b)).mean(dim=(2, 3)) for b in batches])
        for m in qnet.modules():
            if isinstance(m, (Q.QuantLinear, Q.QuantConv2d)):
                m.calibrating = False
    qnet.train()
    with pytest.raises(RuntimeError, match="calibrate"):
        qnet(batches[0])
    out = Q.calibrate(qnet, [(b, torch.zeros(4)) for b in batches], "minmax")
    assert out is qnet and qnet.training  # mode restored
    s, z = Q.qparams(feats.min(), feats.max(), 8, symmetric=False)
    assert torch.equal(qnet.head.a_scale, s) and torch.equal(qnet.head.a_zero_point, z)
    for m in (qnet.stem, qnet.body[1], qnet.head):
        assert not m._forward_pre_hooks and not m.calibrating
    s_stem, _ = Q.qparams(torch.cat(batches).min(), torch.cat(batches).max(), 8, symmetric=False)
    assert torch.equal(qnet.stem.a_scale, s_stem)
    # forward now quantizes the inputs: the head equals a manual computation
    qnet.eval()
    with torch.no_grad():
        f = qnet.body(qnet.stem(batches[0])).mean(dim=(2, 3))
        f_hat = torch.fake_quantize_per_tensor_affine(f, qnet.head.a_scale, qnet.head.a_zero_point, 0, 255)
        w_hat = Q.fake_quant(qnet.head.weight, 8, True, axis=0)
        assert torch.allclose(qnet(batches[0]), F.linear(f_hat, w_hat, qnet.head.bias), atol=1e-6)


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_calibrate_other_methods_clip_tighter(method):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    batches = [heavy_tailed((64, 32), i) for i in range(4)]
    q_mm = Q.calibrate(Q.quantize_model(net, a_bits=4), batches, "minmax")
    q_other = Q.calibrate(Q.quantize_model(net, a_bits=4), batches, method, percentile=99.0,
                          samples_per_batch=500, max_batches=3)
    assert q_other[0].a_scale < q_mm[0].a_scale
    assert q_other[0].a_scale > 0 and q_other[2].a_scale > 0


def test_calibrate_errors():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="a_bits"):
        Q.calibrate(Q.quantize_model(net), [torch.randn(2, 4)])
    qnet = Q.quantize_model(net, a_bits=8)
    with pytest.raises(ValueError, match="empty"):
        Q.calibrate(qnet, [])
    with pytest.raises(ValueError, match="method"):
        Q.calibrate(qnet, [torch.randn(2, 4)], "entropy")


# ---------------------------------------------------------------------------------------
# Quantized layers and models
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("w_axis,group_size", [(0, None), (None, None), (0, 8)])
def test_quant_linear_matches_reference_forward_and_backward(w_axis, group_size):
    torch.manual_seed(2)
    lin = nn.Linear(16, 6)
    ql = Q.QuantLinear.from_float(lin, w_bits=4, w_axis=w_axis, group_size=group_size)
    assert ql.weight is not lin.weight and torch.equal(ql.weight, lin.weight)
    x = torch.randn(5, 3, 16, generator=gen(3))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w_ref = lin.weight.detach().clone().requires_grad_()
    if group_size is not None:
        q, s, z = Q.quantize(w_ref.detach(), 4, group_size=group_size)
        w_hat = torch.fake_quantize_per_channel_affine(
            w_ref.reshape(-1, group_size), s.flatten(), z.flatten(), 0, -7, 7).reshape(6, 16)
    elif w_axis == 0:
        q, s, z = Q.quantize(w_ref.detach(), 4, axis=0)
        w_hat = torch.fake_quantize_per_channel_affine(w_ref, s, z, 0, -7, 7)
    else:
        q, s, z = Q.quantize(w_ref.detach(), 4)
        w_hat = torch.fake_quantize_per_tensor_affine(w_ref, s, z, -7, 7)
    y = ql(x1)
    y_ref = F.linear(x2, w_hat, lin.bias)
    assert y.shape == (5, 3, 6)
    assert torch.allclose(y, y_ref, atol=1e-6)
    gy = torch.randn(y.shape, generator=gen(4))
    y.backward(gy)
    y_ref.backward(gy)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(ql.weight.grad, w_ref.grad, atol=1e-5)  # STE into the float weight
    assert ql.bias.grad is not None
    qi, si, zi = ql.int_weight()
    assert torch.equal(qi, q) and qi.dtype == torch.int8


def test_quant_conv2d_matches_reference():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)
    qc = Q.QuantConv2d.from_float(conv, w_bits=8, a_bits=None)
    x = torch.randn(2, 4, 9, 9, generator=gen(5), requires_grad=True)
    _, s, z = Q.quantize(conv.weight.detach(), 8, axis=0)
    w_hat = torch.fake_quantize_per_channel_affine(conv.weight, s, z, 0, -127, 127)
    y = qc(x)
    y_ref = F.conv2d(x, w_hat, None, 2, 1, 1, 2)
    assert y.shape == conv(x).shape and torch.allclose(y, y_ref, atol=1e-6)
    gx = torch.autograd.grad(y.sum(), x)[0]
    gx_ref = torch.autograd.grad(y_ref.sum(), x)[0]
    assert torch.allclose(gx, gx_ref, atol=1e-6)
    # groups along the flattened fan-in (2 * 3 * 3 = 18)
    qg = Q.QuantConv2d.from_float(conv, w_bits=4, group_size=9)
    w_g = Q.fake_quant(conv.weight.detach().flatten(1), 4, group_size=9).view_as(conv.weight)
    assert torch.allclose(qg(x), F.conv2d(x, w_g, None, 2, 1, 1, 2), atol=1e-6)
    with pytest.raises(ValueError, match="divisor"):
        Q.QuantConv2d.from_float(conv, group_size=4)
    with pytest.raises(ValueError, match="padding_mode"):
        Q.QuantConv2d.from_float(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))


def test_quant_layer_errors():
    with pytest.raises(TypeError, match="nn.Linear"):
        Q.QuantLinear.from_float(nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="nn.Conv2d"):
        Q.QuantConv2d.from_float(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="w_axis"):
        Q.QuantLinear.from_float(nn.Linear(4, 4), w_axis=1)
    with pytest.raises(ValueError, match="w_bits"):
        Q.QuantLinear.from_float(nn.Linear(4, 4), w_bits=1)


def test_quantize_model_replaces_copies_and_skips():
    torch.manual_seed(4)
    net = _Net()
    x = torch.randn(2, 3, 8, 8, generator=gen(6))
    q8 = Q.quantize_model(net, w_bits=8, skip=("stem",))
    assert type(net.stem) is nn.Conv2d and type(net.head) is nn.Linear  # original untouched
    assert type(q8.stem) is nn.Conv2d
    assert isinstance(q8.body[1], Q.QuantConv2d) and isinstance(q8.head, Q.QuantLinear)
    with torch.no_grad():
        y, y8 = net(x), q8(x)
        y4 = Q.quantize_model(net, w_bits=4)(x)
    rel8 = ((y8 - y).norm() / y.norm()).item()
    rel4 = ((y4 - y).norm() / y.norm()).item()
    assert 0 < rel8 < 0.02 and rel8 < rel4 < 0.5
    with pytest.raises(ValueError, match="not modules"):
        Q.quantize_model(net, skip=("nope",))
    with pytest.raises(ValueError, match="body.1"):
        Q.quantize_model(net, group_size=8, skip=("stem",))  # body.1: fan-in 4 * 3 * 3 = 36
    assert isinstance(Q.quantize_model(nn.Linear(4, 4)), Q.QuantLinear)


def test_quantize_model_leaves_multihead_attention_out_proj():
    mha = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    qm = Q.quantize_model(mha)
    assert type(qm[0].out_proj) is type(mha[0].out_proj)
    x = torch.randn(2, 3, 8)
    assert torch.allclose(qm[0](x, x, x)[0], mha[0](x, x, x)[0])


def test_set_quantized_weight_and_state_dict_round_trip():
    torch.manual_seed(5)
    lin = nn.Linear(16, 4)
    ql = Q.QuantLinear.from_float(lin, w_bits=3, group_size=8, a_bits=8)
    Q.calibrate(ql, [torch.randn(10, 16)])
    H = torch.eye(16) * 2
    q, s, z = Q.gptq_quantize(lin.weight, H, 3, group_size=8)
    ql.set_quantized_weight(q, s, z)
    w_hat = Q.dequantize(q, s, z, group_size=8)
    assert torch.equal(ql.quantized_weight(), w_hat)  # the fixed grid is reproduced exactly
    qi, si, zi = ql.int_weight()
    assert torch.equal(qi, q) and torch.equal(si, s)
    fresh = Q.QuantLinear(16, 4, w_bits=3, group_size=8, a_bits=8)
    fresh.load_state_dict(ql.state_dict())
    x = torch.randn(3, 16)
    assert torch.equal(fresh(x), ql(x))
    with pytest.raises(ValueError, match="grid"):
        ql.set_quantized_weight(torch.full((4, 16), 5, dtype=torch.int8), s, z)
    with pytest.raises(ValueError, match="expected"):
        ql.set_quantized_weight(q[:, :8], s, z)


# ---------------------------------------------------------------------------------------
# Outliers, integer GEMM, GPTQ, LoRC
# ---------------------------------------------------------------------------------------

def test_smooth_quant_scales_are_exact_in_float_and_balance_ranges():
    g = gen(8)
    X = torch.randn(64, 16, generator=g, dtype=torch.float64)
    X[:, 3] *= 50  # an outlier channel
    W = torch.randn(8, 16, generator=g, dtype=torch.float64)
    a_max = X.abs().amax(dim=0)
    s = Q.smooth_quant_scales(a_max, W, alpha=0.5)
    assert s.shape == (16,) and s.dtype == torch.float64
    ref = a_max.sqrt() / W.abs().amax(dim=0).sqrt()
    assert torch.allclose(s, ref)
    # X diag(s)^-1 @ (W diag(s))^T == X W^T
    assert torch.allclose((X / s) @ (W * s).T, X @ W.T, atol=1e-10)
    # alpha = 0.5: per-channel activation and weight maxima become equal
    assert torch.allclose((X / s).abs().amax(0), (W * s).abs().amax(0))
    # the outlier channel no longer dominates the activations
    ratio = lambda t: (t.abs().amax(0).max() / t.abs().amax(0).median()).item()
    assert ratio(X / s) < ratio(X)
    s_qkv = Q.smooth_quant_scales(a_max, [W[:4], W[4:]])
    assert torch.allclose(s_qkv, s)
    with pytest.raises(ValueError, match="one value per input channel"):
        Q.smooth_quant_scales(a_max[:8], W)
    with pytest.raises(ValueError, match="alpha"):
        Q.smooth_quant_scales(a_max, W, alpha=1.5)


def test_int8_matmul_is_exact():
    g = gen(9)
    for M, K, N in [(3, 5, 7), (17, 64, 8), (1, 1, 1), (33, 130, 9)]:
        a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8)
        a[0] = -128  # extremes
        b[:, 0] = -128
        c = Q.int8_matmul(a, b)
        assert c.dtype == torch.int32 and c.shape == (M, N)
        assert torch.equal(c.long(), a.long() @ b.long())
        assert torch.equal(Q.int8_matmul(a, b.t().contiguous().t()), c)  # column-major B
    with pytest.raises(TypeError, match="int8"):
        Q.int8_matmul(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="inner sizes"):
        Q.int8_matmul(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2, 2, dtype=torch.int8))


def test_int8_matmul_overflow_bound_is_2_pow_17_minus_1():
    """(-128)(-128) = 2^14 per term: K = 2^17 - 1 terms fit int32, K = 2^17 would give 2^31."""
    K = 2 ** 17 - 1
    a = torch.full((2, K), -128, dtype=torch.int8)
    b = torch.full((K, 3), -128, dtype=torch.int8)
    c = Q.int8_matmul(a, b)
    assert c.dtype == torch.int32 and bool((c == 2 ** 31 - 2 ** 14).all())  # exact, no wrap
    assert bool((c.long() == a[:, :1].long() @ b[:1].long() * K).all())
    big = torch.zeros(1, 2 ** 17, dtype=torch.int8)
    with pytest.raises(ValueError, match="2\\^17 - 1"):
        Q.int8_matmul(big, big.t())


@pytest.mark.skipif(not hasattr(torch, "_int_mm"), reason="this torch has no torch._int_mm")
def test_int8_matmul_takes_int_mm_on_cpu_and_is_exact(monkeypatch):
    """torch._int_mm runs on the CPU too (2x float32 at M = 1 on an idle Xeon): use it."""
    assert Q._int_mm_works(torch.device("cpu"))
    assert "torch._int_mm" in Q.int8_matmul_backend("cpu")
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or real(a, b))
    g = gen(11)
    for M, K, N in [(1, 2048, 64), (3, 5, 7), (17, 64, 8), (33, 130, 9)]:
        a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
        w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
        want = a.int() @ w.t().int()                             # the int32 reference
        for b in (w.t(), w.t().contiguous()):                    # column- and row-major B
            assert torch.equal(Q.int8_matmul(a, b), want)
    assert len(calls) == 8 and calls[0] == (1, 2048)             # the fast path, unpadded on CPU


@pytest.mark.skipif(not hasattr(torch, "_int_mm"), reason="this torch has no torch._int_mm")
def test_int8_matmul_pads_to_shape_constraints(monkeypatch):
    """With CUDA's constraints (M > 16, K and N multiples of 8) the padded product is exact."""
    monkeypatch.setitem(Q._INT_MM_SHAPES, "cpu", (17, 8))
    assert Q._int_mm_works(torch.device("cpu"))                  # probed (padded) before the spy
    seen = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: seen.append((a.shape, b.shape)) or real(a, b))
    g = gen(12)
    a = torch.randint(-128, 128, (3, 13), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (13, 5), generator=g, dtype=torch.int8)
    c = Q.int8_matmul(a, b)
    assert seen == [((17, 16), (16, 8))] and c.shape == (3, 5)
    assert torch.equal(c, a.int() @ b.int())


def test_int8_matmul_falls_back_where_int_mm_fails(monkeypatch):
    def broken(a, b):
        raise RuntimeError("_int_mm: not implemented for this device")
    monkeypatch.setattr(torch, "_int_mm", broken, raising=False)
    monkeypatch.setattr(Q, "_INT_MM_WORKS", {})                  # probe again
    assert "fallback" in Q.int8_matmul_backend("cpu")
    g = gen(13)
    a = torch.randint(-128, 128, (4, 9), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (9, 6), generator=g, dtype=torch.int8)
    assert torch.equal(Q.int8_matmul(a, b), a.int() @ b.int())
    # a kernel that runs but is wrong is not used either
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.int() @ b.int()) + 1)
    monkeypatch.setattr(Q, "_INT_MM_WORKS", {})
    assert not Q._int_mm_works(torch.device("cpu"))
    assert torch.equal(Q.int8_matmul(a, b), a.int() @ b.int())


def test_int8_linear_vector_wise_composition():
    """LLM.int8-style: per-row activations x per-output-channel weights, rescaled int32 GEMM."""
    g = gen(10)
    x = torch.randn(20, 32, generator=g)
    w = torch.randn(12, 32, generator=g)
    xq, sx, _ = Q.quantize(x, 8, axis=0)
    wq, sw, _ = Q.quantize(w, 8, axis=0)
    y = Q.int8_matmul(xq, wq.t()).float() * sx[:, None] * sw[None, :]
    y_sim = Q.fake_quant(x, 8, axis=0) @ Q.fake_quant(w, 8, axis=0).T
    assert torch.allclose(y, y_sim, atol=1e-4)
    assert ((y - x @ w.T).norm() / (x @ w.T).norm()) < 0.02


def _gptq_problem(seed: int, n_in=64, n_out=24, n=256, dtype=torch.float32):
    g = gen(seed)
    mix = torch.randn(n_in, n_in, generator=g, dtype=dtype)
    X = torch.randn(n, n_in, generator=g, dtype=dtype) @ mix  # correlated inputs
    W = torch.randn(n_out, n_in, generator=g, dtype=dtype)
    return X, W, 2 * X.T @ X / n


@pytest.mark.parametrize("bits,group_size", [(3, None), (4, None), (4, 16)])
def test_gptq_beats_round_to_nearest(bits, group_size):
    for seed in range(3):
        X, W, H = _gptq_problem(seed)
        q, s, z = Q.gptq_quantize(W, H, bits, group_size=group_size, block_size=32)
        axis = 0 if group_size is None else None
        assert q.shape == W.shape and q.dtype == torch.int8
        assert int(q.abs().max()) <= Q.qrange(bits)[1]
        W_gptq = Q.dequantize(q, s, z, axis=axis, group_size=group_size)
        W_rtn = Q.fake_quant(W, bits, axis=axis, group_size=group_size)
        err_gptq = (X @ W.T - X @ W_gptq.T).norm()
        err_rtn = (X @ W.T - X @ W_rtn.T).norm()
        assert err_gptq <= err_rtn, (seed, err_gptq, err_rtn)
        if group_size is None:  # same grid as RTN per output channel
            assert torch.equal(s, Q.quantize(W, bits, axis=0)[1])


def test_gptq_properties():
    X, W, H = _gptq_problem(0, dtype=torch.float64)
    # lazy block updates are only a reordering of the same arithmetic
    q1 = Q.gptq_quantize(W, H, 4, block_size=8)[0]
    q2 = Q.gptq_quantize(W, H, 4, block_size=64)[0]
    assert (q1 != q2).float().mean() < 0.01
    # a diagonal Hessian (uncorrelated inputs) has nothing to compensate: GPTQ == RTN
    qd, sd, zd = Q.gptq_quantize(W, torch.diag(torch.rand(64, dtype=torch.float64) + 0.5), 4, damp=0.0)
    qr, sr, zr = Q.quantize(W, 4, axis=0)
    assert torch.equal(qd, qr)
    # asymmetric grid and dead inputs
    H0 = H.clone()
    H0[5, :] = 0
    H0[:, 5] = 0
    qa, sa, za = Q.gptq_quantize(W, H0, 4, symmetric=False, group_size=16)
    assert qa.dtype == torch.uint8 and sa.shape == (24, 4) and za.shape == (24, 4)
    assert Q.dequantize(qa, sa, za, group_size=16)[:, 5].abs().max() <= sa[:, 0].max() / 2 + 1e-6
    with pytest.raises(ValueError, match="hessian"):
        Q.gptq_quantize(W, H[:10, :10], 4)
    with pytest.raises(ValueError, match="divisible"):
        Q.gptq_quantize(W, H, 4, group_size=10)
    with pytest.raises(ValueError, match="positive definite"):
        Q.gptq_quantize(W, -torch.eye(64, dtype=torch.float64), 4, damp=0.0)


def test_lorc_error_decreases_with_rank_and_vanishes_at_full_rank():
    g = gen(11)
    W = torch.randn(12, 20, generator=g, dtype=torch.float64)
    W_q = Q.fake_quant(W, 3, axis=0)
    errs = []
    for r in range(0, 13):
        U, V = Q.lorc(W, W_q, r)
        assert U.shape == (12, r) and V.shape == (r, 20)
        errs.append((W - (W_q + U @ V)).norm().item())
    assert errs[0] == pytest.approx((W - W_q).norm().item())
    assert all(b < a for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-10
    with pytest.raises(ValueError, match="rank"):
        Q.lorc(W, W_q, 13)
    with pytest.raises(ValueError, match="same shape"):
        Q.lorc(W, W_q[:, :5], 1)


# ---------------------------------------------------------------------------------------
# FP8 and FP4
# ---------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="needs torch float8 dtypes")
@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_round_trip(name):
    dtype = getattr(torch, name)
    x = heavy_tailed((1000,), 12) * 0.01
    y = Q.fp8_round_trip(x, dtype)
    s = x.abs().max() / torch.finfo(dtype).max
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, (x / s).to(dtype).to(torch.float32) * s)
    # every output is (representable fp8 value) * s
    all_fp8 = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    all_fp8 = all_fp8[torch.isfinite(all_fp8)]
    assert torch.isin(y / s, all_fp8).all()
    # scaling uses the whole range: the max maps to the format max
    assert (y.abs().max() - x.abs().max()).abs() <= 1e-6 * x.abs().max()
    # relative error of a float format: at most 2^-(mantissa bits + 1) for normal values
    mant = 3 if name == "float8_e4m3fn" else 2
    big = x.abs() > x.abs().max() / 2 ** 5
    assert ((y - x).abs()[big] / x.abs()[big]).max() <= 2.0 ** -(mant + 1) + 1e-6
    # with scale 1 and values in range it is exactly the dtype cast
    x1 = torch.randn(100, generator=gen(13)) * 10
    assert torch.equal(Q.fp8_round_trip(x1, dtype, scale=1.0), x1.to(dtype).float())
    assert torch.equal(Q.fp8_round_trip(torch.zeros(4), dtype), torch.zeros(4))


def test_fp4_e2m1_round_values_ties_and_saturation():
    grid = torch.tensor(Q.FP4_E2M1_VALUES)
    assert len(set(Q.FP4_E2M1_VALUES) | {-v for v in Q.FP4_E2M1_VALUES}) == 15  # 16 codes, +-0
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 100.0, -0.3, -5.1, 0.0, 2.9])
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.5, -6.0, 0.0, 3.0])
    assert torch.equal(Q.fp4_e2m1_round(v), want)
    # grid points are fixed points; random values go to a nearest grid point
    full = torch.cat([grid, -grid])
    assert torch.equal(Q.fp4_e2m1_round(full), full)
    r = torch.randn(5000, generator=gen(14)) * 3
    out = Q.fp4_e2m1_round(r)
    assert torch.isin(out, full).all()
    dist = (r.clamp(-6, 6)[:, None] - full[None, :]).abs().min(dim=1).values
    assert torch.allclose((out - r.clamp(-6, 6)).abs(), dist)


@pytest.mark.parametrize("group_size", [None, 16])
def test_fp4_e2m1_only_representable_values(group_size):
    x = heavy_tailed((8, 64), 15)
    y = Q.fp4_e2m1(x, group_size=group_size)
    assert y.shape == x.shape and y.dtype == x.dtype
    xv = x if group_size is None else x.reshape(8, 4, 16)
    amax = xv.abs().amax() if group_size is None else xv.abs().amax(-1, keepdim=True)
    s = amax / 6
    v = (y if group_size is None else y.reshape(8, 4, 16)) / s
    full = torch.tensor(Q.FP4_E2M1_VALUES)
    full = torch.cat([full, -full])
    assert ((v.flatten()[:, None] - full[None]).abs().min(dim=1).values < 1e-5).all()
    assert torch.allclose((v.abs().amax(-1) if group_size else v.abs().max()), torch.tensor(6.0))
    y16 = Q.fp4_e2m1(x.half(), group_size=group_size)
    assert y16.dtype == torch.float16
    with pytest.raises(ValueError, match="divisible"):
        Q.fp4_e2m1(x, group_size=10)


# ---------------------------------------------------------------------------------------
# Whole models: input statistics, GPTQ, SmoothQuant folding, LoRC
# ---------------------------------------------------------------------------------------

class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, dilation=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_input_stats_absmax_and_hessians_linear_and_conv():
    torch.manual_seed(0)
    net = _ConvNet()
    batches = [torch.randn(2, 3, 6, 6, generator=gen(i)) for i in range(3)]
    st = Q.input_stats(net, [(b, None) for b in batches], hessian=True)
    assert list(st) == ["conv1", "conv2", "head"]
    x = torch.cat(batches)
    with torch.no_grad():
        h1 = F.relu(net.conv1(x))
        feats = F.relu(net.conv2(h1)).mean(dim=(2, 3))
    assert torch.allclose(st["conv1"]["absmax"], x.abs().amax(dim=(0, 2, 3)))
    assert torch.allclose(st["head"]["absmax"], feats.abs().amax(dim=0))
    assert st["head"]["n"] == 6
    assert torch.allclose(st["head"]["hessian"], 2 * feats.T @ feats / 6, atol=1e-5)
    # the conv Hessian gives the conv's output error: N/2 tr(E H E^T) = ||conv(x, W) - conv(x, W')||^2
    H = st["conv2"]["hessian"].double()
    assert H.shape == (72, 72) and st["conv2"]["n"] == 6 * 3 * 3
    E = torch.randn(8, 72, generator=gen(5), dtype=torch.float64) * 0.1
    lhs = st["conv2"]["n"] / 2 * torch.trace(E @ H @ E.T)
    rhs = F.conv2d(h1.double(), E.view(8, 8, 3, 3), None, 2, 1).square().sum()
    assert torch.allclose(lhs, rhs, rtol=1e-4)
    # only the named layers, errors
    assert list(Q.input_stats(net, batches, ["head"])) == ["head"]
    with pytest.raises(ValueError, match="not linear/conv"):
        Q.input_stats(net, batches, ["nope"])
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups=1"):
        Q.input_stats(grouped, [torch.randn(1, 4, 5, 5)], hessian=True)
    with pytest.raises(ValueError, match="empty"):
        Q.input_stats(net, [])


def test_input_stats_skips_unused_layers_and_restores_mode():
    mha = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    mha.train()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m, self.lin = mha, nn.Linear(8, 8)

        def forward(self, x):
            return self.lin(self.m[0](x, x, x)[0])

    w = Wrap().train()
    st = Q.input_stats(w, [torch.randn(2, 3, 8)])
    assert list(st) == ["lin"] and w.training and not w.lin._forward_pre_hooks


def _correlated_mlp_problem(seed: int):
    g = gen(seed)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    mix = torch.randn(32, 32, generator=g)
    batches = [torch.randn(64, 32, generator=g) @ mix for _ in range(4)]
    return net, batches


@pytest.mark.parametrize("bits,group_size", [(3, None), (4, 16)])
def test_gptq_model_beats_round_to_nearest(bits, group_size):
    for seed in range(2):
        net, batches = _correlated_mlp_problem(seed)
        x = torch.cat(batches)
        with torch.no_grad():
            y = net(x)
            rtn = Q.quantize_model(net, w_bits=bits, group_size=group_size)
            gq = Q.gptq_model(net, batches, bits, group_size=group_size)
            err_rtn = (rtn(x) - y).norm()
            err_gptq = (gq(x) - y).norm()
        assert err_gptq < err_rtn, (seed, err_gptq, err_rtn)
        assert all(m.w_scale is not None for m in gq.modules() if isinstance(m, Q.QuantLinear))
        assert type(net[0]) is nn.Linear  # the float model is untouched


def test_gptq_model_convs_and_skip():
    torch.manual_seed(1)
    net = _ConvNet()
    batches = [torch.randn(4, 3, 6, 6, generator=gen(i)) for i in range(2)]
    gq = Q.gptq_model(net, batches, 4, skip=("head",))
    assert isinstance(gq.conv1, Q.QuantConv2d) and gq.conv1.w_scale is not None
    assert type(gq.head) is nn.Linear
    with torch.no_grad():
        y = gq(batches[0])
    assert torch.isfinite(y).all()


def test_smooth_quant_fold_is_exact_and_removes_outliers():
    torch.manual_seed(2)
    norm, lin = nn.LayerNorm(16), nn.Linear(16, 8)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16) + 0.5)
        norm.weight[3] = 40.0  # an outlier channel, as LayerNorm gains create in LLMs
        norm.bias.copy_(torch.randn(16) * 0.1)
    x = torch.randn(64, 16, generator=gen(3))
    with torch.no_grad():
        y = lin(norm(x))
        a_max = norm(x).abs().amax(dim=0)
        s = Q.smooth_quant_fold(norm, [lin], a_max, alpha=0.5)
        y2 = lin(norm(x))
        a2 = norm(x).abs().amax(dim=0)
    assert s.shape == (16,)
    assert torch.allclose(y, y2, atol=1e-5)
    ratio = lambda a: (a.max() / a.median()).item()
    assert ratio(a2) < ratio(a_max) / 3
    with pytest.raises(ValueError, match="no \\(C,\\) weight"):
        Q.smooth_quant_fold(nn.LayerNorm(16, elementwise_affine=False), [lin], a_max)
    with pytest.raises(ValueError, match="in_features=16"):
        Q.smooth_quant_fold(norm, [nn.Linear(8, 4)], a_max)


def test_smooth_quant_model_on_minilib_transformers():
    from minilib import models

    torch.manual_seed(3)
    gpt = models.CharGPT(20, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0).eval()
    idx = [torch.randint(0, 20, (3, 8), generator=gen(i)) for i in range(2)]
    smoothed = Q.smooth_quant_model(gpt, idx)
    with torch.no_grad():
        assert torch.allclose(smoothed(idx[0]), gpt(idx[0]), atol=1e-4)
    assert not torch.equal(smoothed.blocks[0].norm1.weight, gpt.blocks[0].norm1.weight)
    assert torch.equal(smoothed.blocks[0].attn.proj.weight, gpt.blocks[0].attn.proj.weight)
    vit = models.ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2).eval()
    imgs = [torch.randn(2, 3, 8, 8)]
    with torch.no_grad():
        assert torch.allclose(Q.smooth_quant_model(vit, imgs)(imgs[0]), vit(imgs[0]), atol=1e-4)
    with pytest.raises(ValueError, match="no ml.models.Block"):
        Q.smooth_quant_model(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)])
    post = models.ViT(image_size=8, patch_size=4, dim=16, depth=1, heads=2, placement="post")
    with pytest.raises(ValueError, match="pre-norm"):
        Q.smooth_quant_model(post, imgs)


def test_lorc_linear_and_model():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 6))
    q = Q.quantize_model(net, w_bits=3)
    x = torch.randn(50, 24, generator=gen(7))
    with torch.no_grad():
        y = net(x)
        errs = [(Q.lorc_model(q, net, r)(x) - y).norm().item() for r in (0, 2, 4, 8)]
        full = Q.lorc_model(q, net, 100, factor_bits=None)  # rank clipped to each layer's size
        assert torch.allclose(full(x), y, atol=1e-4)
    assert errs[0] == pytest.approx((q(x) - y).norm().item())
    assert errs[-1] < errs[0] / 2 and errs[2] < errs[0]
    l2 = Q.lorc_model(q, net, 4)
    assert isinstance(l2[0], Q.LoRCLinear) and l2[0].rank == 4 and l2[2].rank == 4
    # 8-bit factors: each row of U and V lies on its own int8 grid
    U = l2[0].U.detach()
    assert torch.equal(Q.fake_quant(U, 8, axis=0), U)
    with pytest.raises(ValueError, match="rank"):
        Q.lorc_model(q, net, -1)
    with pytest.raises(ValueError, match="model_fp"):
        Q.lorc_model(q, nn.Sequential(nn.Linear(3, 3)), 2)


# ---------------------------------------------------------------------------------------
# Real storage
# ---------------------------------------------------------------------------------------

def test_pack_unpack_int4_round_trip():
    q = torch.randint(-8, 8, (5, 12), generator=gen(8), dtype=torch.int8)
    p = Q.pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (5, 6)
    assert torch.equal(Q.unpack_int4(p), q)
    assert int(p[0, 0]) == (int(q[0, 0]) + 8) | ((int(q[0, 1]) + 8) << 4)
    with pytest.raises(ValueError, match="even"):
        Q.pack_int4(q[:, :5])
    with pytest.raises(ValueError, match="\\[-8, 7\\]"):
        Q.pack_int4(torch.full((2, 2), 9, dtype=torch.int8))
    with pytest.raises(TypeError, match="uint8"):
        Q.unpack_int4(q)


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, None), (4, 16), (8, 32)])
def test_weight_only_linear_equals_fake_quant_layer(bits, group_size):
    torch.manual_seed(5)
    lin = nn.Linear(64, 24)
    wo = Q.WeightOnlyLinear.from_float(lin, bits, group_size)
    ref = Q.QuantLinear.from_float(lin, w_bits=bits, group_size=group_size)
    x = torch.randn(3, 7, 64, generator=gen(9))
    with torch.no_grad():
        assert torch.allclose(wo(x), ref(x), atol=1e-6)
        assert torch.equal(wo.dequantized_weight(), ref.quantized_weight())
    assert wo.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert wo.qweight.shape == (24, 64 if bits == 8 else 32)
    fresh = Q.WeightOnlyLinear(64, 24, bits=bits, group_size=group_size)
    fresh.load_state_dict(wo.state_dict())
    assert torch.equal(fresh(x), wo(x))
    with torch.no_grad():
        assert wo(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_weight_only_linear_from_gptq_grid_and_model():
    net, batches = _correlated_mlp_problem(0)
    gq = Q.gptq_model(net, batches, 4, group_size=16)
    wo = Q.weight_only_model(gq, bits=4)
    assert isinstance(wo[0], Q.WeightOnlyLinear) and wo[0].group_size == 16
    x = batches[0]
    with torch.no_grad():
        assert torch.allclose(wo(x), gq(x), atol=1e-5)
    with pytest.raises(ValueError, match="w_bits=8"):
        Q.WeightOnlyLinear.from_float(gq[0], bits=8)
    wo8 = Q.weight_only_model(net, bits=8, skip=("2",))
    assert isinstance(wo8[0], Q.WeightOnlyLinear) and type(wo8[2]) is nn.Linear
    with pytest.raises(ValueError, match="kernel"):
        Q.weight_only_model(net, kernel="triton")
    with pytest.raises(ValueError, match="bits"):
        Q.WeightOnlyLinear(8, 8, bits=3)


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, 32)])
def test_weight_only_fused_kernel_matches_when_available(bits, group_size):
    torch.manual_seed(6)
    lin = nn.Linear(64, 32)
    wo = Q.WeightOnlyLinear.from_float(lin, bits, group_size)
    ok, msg = wo.prepare_fused()
    assert isinstance(msg, str) and msg
    if not ok:
        pytest.skip(f"no fused kernel in this PyTorch build: {msg}")
    x = torch.randn(4, 64, generator=gen(10))
    with torch.no_grad():
        ref = wo(x)
        wo.kernel = "fused"
        got = wo(x)
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-3)
    odd = Q.WeightOnlyLinear.from_float(lin, 4, 16)
    assert odd.prepare_fused()[0] is False  # group size 16 has no int4 kernel


def test_quantized_bytes():
    lin = nn.Linear(64, 32)
    assert Q.quantized_bytes(lin) == ml_bytes(lin) == 4 * (64 * 32 + 32)
    w4 = Q.QuantLinear.from_float(lin, w_bits=4)
    assert Q.quantized_bytes(w4) == 64 * 32 // 2 + 32 * 4 + 32 * 4
    g4 = Q.QuantLinear.from_float(lin, w_bits=4, group_size=16)
    assert Q.quantized_bytes(g4) == 64 * 32 // 2 + (32 * 4) * 4 + 32 * 4
    assert Q.quantized_bytes(g4, scale_bits=16) == 64 * 32 // 2 + (32 * 4) * 2 + 32 * 4
    a4 = Q.QuantLinear.from_float(lin, w_bits=4, symmetric=False)
    assert Q.quantized_bytes(a4) == 64 * 32 // 2 + 32 * 4 + 32 // 2 + 32 * 4
    # LoRC rank 2 with 8-bit factors: 2 * (32 + 64) bytes + one scale per factor row
    lr = Q.LoRCLinear.from_quant(w4, lin.weight, 2)
    assert Q.quantized_bytes(lr) == Q.quantized_bytes(w4) + 2 * (32 + 64) + 4 * (32 + 2)
    # rank 0 (no correction): exactly the plain quantized layer, no factor scales
    # (it was charged scale_bits x out_features more: 0.100 MB vs 0.107 MB in 5.2)
    lr0 = Q.LoRCLinear.from_quant(w4, lin.weight, 0)
    assert lr0.rank == 0 and Q.quantized_bytes(lr0) == Q.quantized_bytes(w4)
    assert Q.quantized_bytes(Q.LoRCLinear.from_quant(w4, lin.weight, 0, factor_bits=None)) \
        == Q.quantized_bytes(w4)
    # WeightOnlyLinear: its real buffers
    wo = Q.WeightOnlyLinear.from_float(lin, 4, 16)
    assert Q.quantized_bytes(wo) == ml_bytes(wo) == 32 * 32 + 32 * 4 * 4 + 32 * 4
    # a fixed (GPTQ) grid is not counted twice; tied weights count once
    w4.set_quantized_weight(*w4.int_weight())
    assert Q.quantized_bytes(w4) == 64 * 32 // 2 + 32 * 4 + 32 * 4
    from minilib import models
    gpt = models.CharGPT(10, block_size=4, n_layer=1, n_head=1, n_embd=8)
    assert Q.quantized_bytes(gpt) == ml_bytes(gpt)


def ml_bytes(model):
    from minilib import bench
    return bench.model_bytes(model)


def test_sqnr():
    x = torch.randn(10000, generator=gen(20), dtype=torch.float64)
    assert Q.sqnr(x, x) == float("inf")
    assert Q.sqnr(x, x * 0.9) == pytest.approx(20.0, abs=1e-9)  # noise = 0.01 x^2
    # each bit adds about 6 dB to a uniform quantizer
    gain = Q.sqnr(x, Q.fake_quant(x, 8)) - Q.sqnr(x, Q.fake_quant(x, 7))
    assert 5.0 < gain < 7.0
    with pytest.raises(ValueError, match="same shape"):
        Q.sqnr(x, x[:5])


def test_choose_range_mse_equals_a_plain_grid_search():
    """The chunked search gives the ratio a one-candidate-at-a-time loop finds."""
    x = heavy_tailed((3000,), 21)
    for bits, symmetric in ((3, True), (4, False), (8, True)):
        lo0, hi0 = Q.choose_range(x, bits, "minmax", symmetric)
        errs = []
        for k in range(1, 51):
            s, z = Q.qparams(k / 50 * lo0, k / 50 * hi0, bits, symmetric)
            errs.append((Q.fake_quant(x, bits, symmetric, scale=s, zero_point=z) - x).square().mean())
        best = (int(torch.stack(errs).argmin()) + 1) / 50
        lo, hi = Q.choose_range(x, bits, "mse", symmetric, n_grid=50)
        assert torch.allclose(hi, best * hi0) and torch.allclose(lo, best * lo0)


def test_gptq_model_equals_a_plain_sequential_loop():
    """Early-stopped forward passes give the same Hessians as full ones (input_stats)."""
    net, batches = _correlated_mlp_problem(1)
    gq = Q.gptq_model(net, batches, 3, max_batches=3)
    ref = Q.quantize_model(net, w_bits=3)
    for name in ("0", "2"):
        H = Q.input_stats(ref, batches, [name], hessian=True, max_batches=3)[name]["hessian"]
        layer = ref.get_submodule(name)
        layer.set_quantized_weight(*Q.gptq_quantize(layer.weight, H, 3))
    for name in ("0", "2"):
        assert torch.allclose(gq.get_submodule(name).weight, ref.get_submodule(name).weight, atol=1e-6)
        assert torch.equal(gq.get_submodule(name).w_scale, ref.get_submodule(name).w_scale)
