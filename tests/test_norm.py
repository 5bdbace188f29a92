"""ml.norm against PyTorch: forward and backward, modules, running stats, state_dicts, folding."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib import norm

DTYPES = [torch.float32, torch.float64]


def tol(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}


def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    """A fresh leaf copy that records its gradient."""
    return None if t is None else t.detach().clone().requires_grad_(True)


def compare_fn(ours, ref, tensors: list, dtype: torch.dtype, gen: torch.Generator) -> None:
    """Run ``ours(*tensors)`` and ``ref(*tensors)``; compare outputs and every input grad."""
    a = [leaf(t) for t in tensors]
    b = [leaf(t) for t in tensors]
    ya, yb = ours(*a), ref(*b)
    assert ya.shape == yb.shape and ya.dtype == yb.dtype == dtype
    torch.testing.assert_close(ya, yb, **tol(dtype))
    dy = torch.randn(yb.shape, generator=gen, dtype=dtype)
    ya.backward(dy)
    yb.backward(dy)
    for ta, tb in zip(a, b):
        if ta is not None:
            torch.testing.assert_close(ta.grad, tb.grad, **tol(dtype))


def compare_modules(ours: nn.Module, ref: nn.Module, x: torch.Tensor, gen: torch.Generator) -> None:
    """Same output and same grads of the input and of every parameter (by name)."""
    xa, xb = leaf(x), leaf(x)
    ya, yb = ours(xa), ref(xb)
    assert ya.shape == yb.shape == x.shape and ya.dtype == yb.dtype
    torch.testing.assert_close(ya, yb, **tol(x.dtype))
    dy = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad, **tol(x.dtype))
    pa, pb = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name].grad, pb[name].grad, **tol(x.dtype), msg=name)


def randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial parameters (ones/zeros would hide a weight or bias bug)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------ LayerNorm

LN_CASES = [((4, 8), (8,)), ((2, 3, 16), (16,)), ((2, 3, 4, 5), (4, 5)), ((7,), (7,))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,nshape", LN_CASES)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("manual", [False, True])
def test_layer_norm_matches_torch(dtype, shape, nshape, affine, manual, gen):
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1
    w = torch.randn(nshape, generator=gen, dtype=dtype) if affine != "none" else None
    b = torch.randn(nshape, generator=gen, dtype=dtype) if affine == "both" else None
    compare_fn(
        lambda x, w, b: norm.layer_norm(x, w, b, 1e-5, normalized_shape=nshape,
                                        manual_backward=manual),
        lambda x, w, b: F.layer_norm(x, nshape, w, b, 1e-5),
        [x, w, b], dtype, gen,
    )


def test_layer_norm_default_shape_is_weight_or_last_dim(gen):
    x = torch.randn(2, 4, 5, generator=gen)
    w = torch.randn(4, 5, generator=gen)
    torch.testing.assert_close(norm.layer_norm(x, w), F.layer_norm(x, (4, 5), w))
    torch.testing.assert_close(norm.layer_norm(x), F.layer_norm(x, (5,)))
    torch.testing.assert_close(norm.layer_norm(x, eps=0.5), F.layer_norm(x, (5,), eps=0.5))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [{}, {"bias": False}, {"elementwise_affine": False},
                                    {"eps": 1e-3}])
def test_layer_norm_module_matches_nn(dtype, kwargs, gen):
    ours = norm.LayerNorm(16, dtype=dtype, **kwargs)
    ref = nn.LayerNorm(16, dtype=dtype, **kwargs)
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())               # same keys, strict
    compare_modules(ours, ref, torch.randn(3, 5, 16, generator=gen, dtype=dtype), gen)
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_layer_norm_module_multi_dim_shape(gen):
    ours, ref = norm.LayerNorm((4, 5)), nn.LayerNorm((4, 5))
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())
    compare_modules(ours, ref, torch.randn(2, 3, 4, 5, generator=gen), gen)


def test_layer_norm_function_gradcheck(gen):
    x = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    f = norm.LayerNormFunction.apply
    assert torch.autograd.gradcheck(lambda x, w, b: f(x, (6,), w, b, 1e-5), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: f(x, (6,), None, None, 1e-5), (x,))
    w2 = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: f(x, (4, 6), w, None, 1e-5), (x, w2))


def test_layer_norm_function_only_requested_grads(gen):
    x = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)
    y = norm.layer_norm(x, w, None, manual_backward=True)
    y.sum().backward()
    ref_w = leaf(w)
    F.layer_norm(x, (8,), ref_w).sum().backward()
    torch.testing.assert_close(w.grad, ref_w.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("manual", [False, True])
def test_layer_norm_half_precision(dtype, manual, gen):
    x = (torch.randn(4, 64, generator=gen) * 10).to(dtype)
    w = torch.randn(64, generator=gen).to(dtype)
    b = torch.randn(64, generator=gen).to(dtype)
    y = norm.layer_norm(x, w, b, manual_backward=manual)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), F.layer_norm(x, (64,), w, b).float(),
                               atol=2e-2, rtol=2e-2)


# ------------------------------------------------------------------------------ RMSNorm

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,nshape", LN_CASES)
@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_matches_torch(dtype, shape, nshape, eps, affine, gen):
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2
    w = torch.randn(nshape, generator=gen, dtype=dtype) if affine else None
    compare_fn(
        lambda x, w: norm.rms_norm(x, w, eps, normalized_shape=nshape),
        lambda x, w: F.rms_norm(x, nshape, w, eps),
        [x, w], dtype, gen,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_default_eps_is_machine_epsilon(dtype, gen):
    # Tiny inputs: mean(x^2) ~ 1e-10, so eps=None (machine epsilon) and eps=1e-6 differ a lot.
    x = torch.randn(4, 16, generator=gen, dtype=dtype) * 1e-5
    ours, ref = norm.rms_norm(x), F.rms_norm(x, (16,))
    torch.testing.assert_close(ours, ref, **tol(dtype))
    assert not torch.allclose(ours, norm.rms_norm(x, eps=1e-6), rtol=1e-2)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(dtype).eps)
    torch.testing.assert_close(ours, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_half_precision_matches_kernel(dtype, gen):
    # Half inputs: PyTorch's kernel computes in float32 with float32's epsilon.
    x = (torch.randn(8, 32, generator=gen) * 1e-4).to(dtype)
    w = torch.randn(32, generator=gen).to(dtype)
    for weight in (None, w):
        y = norm.rms_norm(x, weight)
        assert y.dtype == dtype
        torch.testing.assert_close(y, F.rms_norm(x, (32,), weight), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [{}, {"eps": 1e-6}, {"elementwise_affine": False}])
def test_rms_norm_module_matches_nn(dtype, kwargs, gen):
    ours = norm.RMSNorm(24, dtype=dtype, **kwargs)
    ref = nn.RMSNorm(24, dtype=dtype, **kwargs)
    assert ours.eps == ref.eps
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())
    compare_modules(ours, ref, torch.randn(2, 7, 24, generator=gen, dtype=dtype), gen)
    # small inputs exercise the eps default
    compare_modules(ours, ref, torch.randn(2, 7, 24, generator=gen, dtype=dtype) * 1e-5, gen)


# ------------------------------------------------------------------------------ BatchNorm

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_functional_matches_torch(dtype, shape, training, gen):
    C = shape[1]
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5
    w, b = torch.randn(C, generator=gen, dtype=dtype), torch.randn(C, generator=gen, dtype=dtype)
    rm0 = torch.randn(C, generator=gen, dtype=dtype)
    rv0 = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    rm_a, rv_a, rm_b, rv_b = rm0.clone(), rv0.clone(), rm0.clone(), rv0.clone()
    compare_fn(
        lambda x, w, b: norm.batch_norm(x, rm_a, rv_a, w, b, training, 0.2, 1e-5),
        lambda x, w, b: F.batch_norm(x, rm_b, rv_b, w, b, training, 0.2, 1e-5),
        [x, w, b], dtype, gen,
    )
    torch.testing.assert_close(rm_a, rm_b, **tol(dtype))
    torch.testing.assert_close(rv_a, rv_b, **tol(dtype))


def test_batch_norm_running_var_is_unbiased(gen):
    x = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    norm.batch_norm(x, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(rv, x.transpose(0, 1).reshape(2, -1).var(1, unbiased=True))
    torch.testing.assert_close(rm, x.mean((0, 2, 3)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_train_steps_then_eval(dtype, momentum, affine, gen):
    ours = norm.BatchNorm2d(5, momentum=momentum, affine=affine, dtype=dtype)
    ref = nn.BatchNorm2d(5, momentum=momentum, affine=affine, dtype=dtype)
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())
    for step in range(3):
        x = torch.randn(4, 5, 6, 6, generator=gen, dtype=dtype) * (step + 1) + step
        compare_modules(ours, ref, x, gen)
    for name in ["running_mean", "running_var", "num_batches_tracked"]:
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **tol(dtype),
                                   msg=name)
    assert int(ours.num_batches_tracked) == 3
    ours.eval()
    ref.eval()
    compare_modules(ours, ref, torch.randn(3, 5, 6, 6, generator=gen, dtype=dtype), gen)
    assert int(ours.num_batches_tracked) == 3                  # eval leaves stats alone


def test_batchnorm2d_momentum_none_is_cumulative_average(gen):
    bn = norm.BatchNorm2d(2, momentum=None, dtype=torch.float64)
    means = []
    for _ in range(4):
        x = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) + torch.rand(1, generator=gen)
        bn(x)
        means.append(x.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0))


@pytest.mark.parametrize("kwargs", [{"track_running_stats": False}, {"bias": False},
                                    {"eps": 1e-3, "momentum": 0.5}])
def test_batchnorm2d_options_match_nn(kwargs, gen):
    ours, ref = norm.BatchNorm2d(3, **kwargs), nn.BatchNorm2d(3, **kwargs)
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())
    for mode in ("train", "eval", "train"):
        ours.train(mode == "train")
        ref.train(mode == "train")
        compare_modules(ours, ref, torch.randn(4, 3, 5, 5, generator=gen) * 2 + 1, gen)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, msg=k)


def test_batchnorm2d_state_dict_interchangeable(gen):
    # ours -> nn.BatchNorm2d
    ours = norm.BatchNorm2d(4)
    randomize(ours, gen)
    for _ in range(2):
        ours(torch.randn(3, 4, 5, 5, generator=gen) + 2)
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(ours.state_dict())                       # strict
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.eval()
    ref.eval()
    compare_modules(ours, ref, torch.randn(2, 4, 5, 5, generator=gen), gen)
    assert int(ref.num_batches_tracked) == 2
    # nn.BatchNorm2d -> ours
    ref2 = nn.BatchNorm2d(4)
    randomize(ref2, gen)
    ref2(torch.randn(3, 4, 5, 5, generator=gen) * 3)
    ours2 = norm.BatchNorm2d(4)
    ours2.load_state_dict(ref2.state_dict())
    ours2.eval()
    ref2.eval()
    compare_modules(ours2, ref2, torch.randn(2, 4, 5, 5, generator=gen), gen)
    for k, v in ref2.state_dict().items():
        assert ours2.state_dict()[k].dtype == v.dtype
        torch.testing.assert_close(ours2.state_dict()[k], v, msg=k)


# ------------------------------------------------------------------------------ GroupNorm

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((2, 8, 5, 5), 1), ((2, 8, 5, 5), 4),
                                          ((2, 8, 5, 5), 8), ((3, 6, 7), 3), ((4, 6), 2)])
def test_group_norm_matches_torch(dtype, shape, groups, gen):
    C = shape[1]
    x = torch.randn(shape, generator=gen, dtype=dtype) * 2 - 1
    w, b = torch.randn(C, generator=gen, dtype=dtype), torch.randn(C, generator=gen, dtype=dtype)
    compare_fn(lambda x, w, b: norm.group_norm(x, groups, w, b, 1e-5),
               lambda x, w, b: F.group_norm(x, groups, w, b, 1e-5), [x, w, b], dtype, gen)
    compare_fn(lambda x: norm.group_norm(x, groups), lambda x: F.group_norm(x, groups),
               [x], dtype, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"eps": 1e-3}, {"bias": False}])
def test_group_norm_module_matches_nn(dtype, kwargs, gen):
    ours = norm.GroupNorm(4, 12, dtype=dtype, **kwargs)
    ref = nn.GroupNorm(4, 12, dtype=dtype, **kwargs)
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())
    compare_modules(ours, ref, torch.randn(3, 12, 4, 4, generator=gen, dtype=dtype), gen)


# ------------------------------------------------------------------------------ factories

@pytest.mark.parametrize("factory", [norm.LayerNorm, norm.RMSNorm, norm.BatchNormTokens,
                                     norm.group_norm_factory(4),
                                     functools.partial(norm.GroupNorm, 2)])
def test_token_and_channel_factories(factory, gen):
    m = factory(32)
    if isinstance(m, norm.GroupNorm):
        x = torch.randn(2, 32, 3, 3, generator=gen)
    else:
        x = torch.randn(2, 5, 32, generator=gen)
    assert m(x).shape == x.shape
    assert norm.BatchNorm2d(32)(torch.randn(2, 32, 3, 3, generator=gen)).shape == (2, 32, 3, 3)
    assert norm.group_norm_factory(8)(64).num_groups == 8


# ------------------------------------------------------------------------------ folding

def trained_bn(bn: nn.Module, C: int, gen: torch.Generator, dtype: torch.dtype) -> nn.Module:
    """A batch norm with random affine params and non-trivial running stats, in eval mode."""
    bn = bn.to(dtype)
    randomize(bn, gen)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(C, generator=gen, dtype=dtype))
        bn.running_var.copy_(torch.rand(C, generator=gen, dtype=dtype) * 3 + 0.1)
    return bn.eval()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("cin,cout,groups,k,stride,padding",
                         [(3, 8, 1, 3, 1, 1), (4, 8, 2, 3, 2, 0), (6, 6, 6, 3, 1, 1),
                          (5, 7, 1, 1, 1, 0)])
@pytest.mark.parametrize("bn_cls", [norm.BatchNorm2d, nn.BatchNorm2d])
def test_fold_batchnorm(dtype, conv_bias, cin, cout, groups, k, stride, padding, bn_cls, gen):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups,
                     bias=conv_bias, dtype=dtype)
    randomize(conv, gen)
    bn = trained_bn(bn_cls(cout), cout, gen, dtype)
    fused = norm.fold_batchnorm(conv, bn)
    assert fused is not conv and fused.bias is not None and fused.groups == groups
    assert fused.weight.dtype == dtype
    x = torch.randn(2, cin, 9, 9, generator=gen, dtype=dtype)
    with torch.no_grad():
        expected = bn(conv(x))
        got = fused(x)
    t = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(got, expected, **t)
    assert (conv.bias is None) == (not conv_bias)                 # inputs untouched


def test_fold_batchnorm_errors(gen):
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match="training mode"):
        norm.fold_batchnorm(conv, norm.BatchNorm2d(8))             # still in training mode
    with pytest.raises(ValueError, match="8 output channels"):
        norm.fold_batchnorm(conv, norm.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="running statistics"):
        norm.fold_batchnorm(conv, nn.BatchNorm2d(8, track_running_stats=False).eval())
    with pytest.raises(TypeError, match="nn.Conv2d"):
        norm.fold_batchnorm(nn.Linear(3, 8), norm.BatchNorm2d(8).eval())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_tokens_matches_batchnorm1d(dtype, momentum, gen):
    ours = norm.BatchNormTokens(6, momentum=momentum, dtype=dtype)
    ref = nn.BatchNorm1d(6, momentum=momentum, dtype=dtype)
    randomize(ref, gen)
    ours.load_state_dict(ref.state_dict())

    class Transposed(nn.Module):       # (B, T, C) -> BatchNorm1d on (B, C, T) -> (B, T, C)
        def __init__(self, bn):
            super().__init__()
            self.bn = bn

        def forward(self, x):
            return self.bn(x.transpose(1, 2)).transpose(1, 2)

    wrapped = Transposed(ref)
    for step in range(3):
        x = torch.randn(4, 5, 6, generator=gen, dtype=dtype) * 2 + step
        xa, xb = leaf(x), leaf(x)
        ya, yb = ours(xa), wrapped(xb)
        torch.testing.assert_close(ya, yb, **tol(dtype))
        dy = torch.randn(x.shape, generator=gen, dtype=dtype)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, **tol(dtype))
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **tol(dtype))
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **tol(dtype))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, **tol(dtype), msg=k)
    ours.eval()
    ref.eval()
    x = torch.randn(2, 3, 6, generator=gen, dtype=dtype)
    torch.testing.assert_close(ours(x), wrapped(x), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("linear_bias", [True, False])
@pytest.mark.parametrize("norm_cls", [norm.BatchNormTokens, nn.BatchNorm1d])
def test_fold_norm_into_linear(dtype, linear_bias, norm_cls, gen):
    bn = trained_bn(norm_cls(16), 16, gen, dtype)
    linear = nn.Linear(16, 10, bias=linear_bias, dtype=dtype)
    randomize(linear, gen)
    fused = norm.fold_norm_into_linear(bn, linear)
    assert fused.bias is not None and fused.weight.dtype == dtype
    x = torch.randn(3, 7, 16, generator=gen, dtype=dtype)
    with torch.no_grad():
        normed = bn(x) if norm_cls is norm.BatchNormTokens else bn(x.reshape(-1, 16)).reshape(x.shape)
        expected = linear(normed)
        got = fused(x)
    t = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(got, expected, **t)


def test_fold_norm_into_linear_errors():
    with pytest.raises(ValueError, match="training mode"):
        norm.fold_norm_into_linear(norm.BatchNormTokens(8), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="in_features=6"):
        norm.fold_norm_into_linear(norm.BatchNormTokens(8).eval(), nn.Linear(6, 4))
    with pytest.raises(TypeError, match="nn.Linear"):
        norm.fold_norm_into_linear(norm.BatchNormTokens(8).eval(), nn.Conv2d(8, 4, 1))


# ------------------------------------------------------------------------------ errors

def test_clear_errors(gen):
    with pytest.raises(ValueError, match="not divisible by num_groups=5"):
        norm.GroupNorm(5, 12)
    with pytest.raises(ValueError, match="must divide"):
        norm.group_norm(torch.randn(2, 6, 3), 4)
    with pytest.raises(ValueError, match="expects .* C=12"):
        norm.GroupNorm(4, 12)(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match="4-D input"):
        norm.BatchNorm2d(3)(torch.randn(3))
    with pytest.raises(ValueError, match="4-D input"):
        norm.BatchNorm2d(3)(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="got 4 channels"):
        norm.BatchNorm2d(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="running_mean and running_var"):
        norm.batch_norm(torch.randn(4, 3), None, None, training=False)
    with pytest.raises(ValueError, match="C=4"):
        norm.batch_norm(torch.randn(4, 4), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"last dims \[16\]"):
        norm.LayerNorm(16)(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match=r"last dims \[16\]"):
        norm.RMSNorm(16)(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="bias has shape \\[4\\]"):
        norm.layer_norm(torch.randn(2, 8), torch.ones(8), torch.zeros(4))
    with pytest.raises(ValueError, match="C=6 last"):
        norm.BatchNormTokens(6)(torch.randn(2, 6, 5))
    with pytest.raises(TypeError, match="floating-point"):
        norm.layer_norm(torch.arange(8).reshape(2, 4))
    with pytest.raises(TypeError, match="floating-point"):
        norm.rms_norm(torch.arange(8).reshape(2, 4))


def test_manual_backward_has_no_double_backward(gen):
    x = torch.randn(2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = norm.layer_norm(x, manual_backward=True)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
