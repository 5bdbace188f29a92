"""Tests of the chapter 3.3 token mixers: Swin factory, linear-attention fixes, attention maps.

Each technique is checked forward and backward against an explicit reference: the dense
(T, T) attention matrix built by hand, and a depthwise convolution written as loops.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from minilib import attention as A  # noqa: E402
from minilib import models, plot  # noqa: E402

TOL = dict(atol=1e-10, rtol=1e-10)


def rand(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_(grad)


def assert_same(mine, ref, inputs):
    """Outputs and gradients w.r.t. ``inputs`` agree, for one random upstream gradient."""
    torch.testing.assert_close(mine, ref, **TOL)
    g = torch.randn_like(ref)
    ga = torch.autograd.grad(mine, inputs, g, retain_graph=True)
    gb = torch.autograd.grad(ref, inputs, g, retain_graph=True)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------------------------------
# SwinAttention: alternating shifts
# ---------------------------------------------------------------------------------------

def test_swin_factory_alternates_shifts_and_builds_window_attention():
    f = A.SwinAttention(window_size=4, grid=(8, 8))
    vit = models.ViT(dim=32, depth=4, heads=2, attn=f)
    assert [b.attn.shift for b in vit.blocks] == [(0, 0), (2, 2), (0, 0), (2, 2)]
    assert all(isinstance(b.attn, A.WindowAttention) and b.attn.window == (4, 4)
               for b in vit.blocks)
    vit2 = models.ViT(dim=32, depth=4, heads=2, attn=f)    # even depth: same layout again
    assert [b.attn.shift for b in vit2.blocks] == [(0, 0), (2, 2), (0, 0), (2, 2)]
    f.calls = 1
    f.reset()
    assert f(16, 2).shift == (0, 0)
    r = A.SwinAttention(window_size=(2, 4))
    r(16, 2)
    assert r(16, 2, dropout=0.1).shift == (1, 2)
    with pytest.raises(ValueError, match="shift"):
        A.SwinAttention(4, shift=2)
    out = vit(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


# ---------------------------------------------------------------------------------------
# Linear attention: implied matrix, InLine, focused features
# ---------------------------------------------------------------------------------------

def _divide_weights(fq, fk, causal, eps=1e-6):
    a = fq @ fk.transpose(-2, -1)
    if causal:
        a = a.tril()
    return a / (a.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_weights_are_the_implied_matrix(causal):
    torch.manual_seed(0)
    q, k, v = rand(2, 3, 9, 4), rand(2, 3, 9, 4), rand(2, 3, 9, 5)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    w = A.linear_attention_weights(fq, fk, causal=causal)
    assert w.shape == (2, 3, 9, 9)
    assert_same(w, _divide_weights(fq, fk, causal), (q, k))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 9, dtype=torch.float64), atol=1e-5, rtol=0)
    assert_same(w @ v, A.linear_attention(fq, fk, v, causal=causal, chunk_size=4), (q, k, v))


def _inline_reference(q, k, v, scale):
    """InLine's weights written out one entry at a time, then w @ v."""
    B, H, N, _ = q.shape
    w = torch.empty(B, H, N, N, dtype=q.dtype)
    for i in range(N):
        for j in range(N):
            kbar = k.mean(dim=2)
            w[:, :, i, j] = 1 / N + scale * ((q[:, :, i] * k[:, :, j]).sum(-1)
                                             - (q[:, :, i] * kbar).sum(-1)) / N
    return w, w @ v


@pytest.mark.parametrize("scale", [None, 0.7])
def test_inline_attention_matches_explicit_weights(scale):
    torch.manual_seed(1)
    q, k, v = rand(2, 2, 7, 4), rand(2, 2, 7, 4), rand(2, 2, 7, 3)
    s = 1 / math.sqrt(4) if scale is None else scale
    w_ref, out_ref = _inline_reference(q, k, v, s)
    assert_same(A.inline_attention(q, k, v, scale=scale), out_ref, (q, k, v))
    assert_same(A.linear_attention_weights(q, k, normalize="inline", scale=scale), w_ref, (q, k))
    torch.testing.assert_close(w_ref.sum(-1), torch.ones(2, 2, 7, dtype=torch.float64))


def test_inline_is_injective_where_division_is_not():
    torch.manual_seed(2)
    q, k = torch.rand(1, 1, 6, 4, dtype=torch.float64), torch.rand(1, 1, 6, 4, dtype=torch.float64)
    div1 = A.linear_attention_weights(q, k)
    div2 = A.linear_attention_weights(2 * q, k)
    torch.testing.assert_close(div1, div2, atol=1e-6, rtol=0)   # q and 2q: same rows
    inl1 = A.linear_attention_weights(q, k, normalize="inline")
    inl2 = A.linear_attention_weights(2 * q, k, normalize="inline")
    assert (inl1 - inl2).abs().max() > 1e-3


def test_focused_feature_map_by_hand():
    torch.manual_seed(3)
    x = rand(2, 5, 8)
    out = A.focused_feature_map(x, power=3.0)
    r = F.relu(x) + 1e-6                                 # eps: an all-negative row is not 0 / 0
    ref = r ** 3 / (r ** 3).norm(dim=-1, keepdim=True) * r.norm(dim=-1, keepdim=True)
    assert_same(out, ref, (x,))
    assert (out >= 0).all()
    torch.testing.assert_close(out.norm(dim=-1), r.norm(dim=-1))
    # Sharper: the largest coordinate gets a larger share of the vector than under relu.
    assert ((out.amax(-1) / out.sum(-1)) >= (r.amax(-1) / r.sum(-1)) - 1e-12).all()


# ---------------------------------------------------------------------------------------
# LinearAttention with the fixes: against a reference with the dense matrix and loops
# ---------------------------------------------------------------------------------------

def _dwconv_loops(v, weight, bias, grid, n_cls):
    """Depthwise k x k convolution (zero padding) on the grid part of (B, T, C) tokens."""
    B, T, C = v.shape
    Hg, Wg = grid
    k = weight.shape[-1]
    g = v[:, n_cls:].reshape(B, Hg, Wg, C)
    out = torch.zeros_like(g)
    for y in range(Hg):
        for x in range(Wg):
            acc = bias.expand(B, C).clone()
            for dy in range(k):
                for dx in range(k):
                    yy, xx = y + dy - k // 2, x + dx - k // 2
                    if 0 <= yy < Hg and 0 <= xx < Wg:
                        acc = acc + g[:, yy, xx] * weight[:, 0, dy, dx]
            out[:, y, x] = acc
    return out.reshape(B, Hg * Wg, C)


def _module_reference(m: A.LinearAttention, x, grid, n_cls):
    B, T, C = x.shape
    h, d = m.heads, m.head_dim
    q, k, v = m.qkv(x).view(B, T, 3, h, d).permute(2, 0, 3, 1, 4)
    fq, fk = m.phi(q), m.phi(k)
    if m.normalize == "inline":
        w, _ = _inline_reference(fq, fk, v, 1 / math.sqrt(d))
    else:
        w = _divide_weights(fq, fk, m.causal)
    y = (w @ v).transpose(1, 2).reshape(B, T, C)
    if m.local is not None:
        vt = v.transpose(1, 2).reshape(B, T, C)
        conv = _dwconv_loops(vt, m.local.weight, m.local.bias, grid, n_cls)
        y = torch.cat([y[:, :n_cls], y[:, n_cls:] + conv], dim=1)
    return m.proj(y), w


CASES = [
    # feature map, normalize, local kernel, grid, n_cls, pass grid
    ("elu", "divide", None, (3, 3), 1, False),
    ("relu", "divide", 3, (3, 4), 1, True),              # SLAB's simplified linear attention
    ("focused", "divide", 3, (3, 3), 0, False),
    ("identity", "inline", 3, (4, 4), 1, False),         # InLine
    ("identity", "inline", None, (2, 3), 0, True),
    ("elu", "divide", 5, (3, 3), 2, True),               # kernel larger than the grid
]


@pytest.mark.parametrize("fmap,normalize,kernel,grid,n_cls,pass_grid", CASES)
def test_linear_attention_module_with_fixes(fmap, normalize, kernel, grid, n_cls, pass_grid):
    torch.manual_seed(4)
    C, h = 8, 2
    m = A.LinearAttention(C, h, feature_map=fmap, normalize=normalize, local_kernel=kernel,
                          grid=grid if pass_grid else None,
                          cls_tokens=n_cls if pass_grid else None).double()
    x = rand(2, n_cls + grid[0] * grid[1], C)
    ref, w = _module_reference(m, x, grid, n_cls)
    out = m(x)
    assert out.shape == x.shape
    params = [x, m.qkv.weight, m.proj.bias] + ([m.local.weight, m.local.bias] if kernel else [])
    assert_same(out, ref, tuple(params))
    torch.testing.assert_close(m.weights(x), w, **TOL)


def test_linear_attention_fix_errors_and_repr():
    with pytest.raises(ValueError, match="identity"):
        A.LinearAttention(8, 2, feature_map="identity")
    with pytest.raises(ValueError, match="causal"):
        A.LinearAttention(8, 2, normalize="inline", feature_map="identity", causal=True)
    with pytest.raises(ValueError, match="causal"):
        A.LinearAttention(8, 2, local_kernel=3, causal=True)
    with pytest.raises(ValueError, match="odd"):
        A.LinearAttention(8, 2, local_kernel=4)
    with pytest.raises(ValueError, match="normalize"):
        A.LinearAttention(8, 2, normalize="softmax")
    with pytest.raises(ValueError, match="normalize"):
        A.linear_attention_weights(torch.rand(1, 1, 3, 2), torch.rand(1, 1, 3, 2), normalize="x")
    with pytest.raises(ValueError, match="square grid"):
        A.LinearAttention(8, 2, local_kernel=3)(torch.randn(1, 7, 8))
    m = A.LinearAttention(8, 2, feature_map="relu", local_kernel=3)
    assert "local_kernel=3" in repr(m) and sum(p.numel() for p in m.local.parameters()) == 8 * 10
    # causal linear attention without the fixes still works and stays causal
    mc = A.LinearAttention(8, 2, causal=True, chunk_size=2)
    x = torch.randn(1, 6, 8, requires_grad=True)
    mc(x)[0, 2].sum().backward()
    assert torch.all(x.grad[0, 3:] == 0)


@pytest.mark.parametrize("attn", [
    A.SwinAttention(window_size=4),
    lambda d, h, **kw: A.LinearAttention(d, h, feature_map="relu", local_kernel=3, **kw),
    lambda d, h, **kw: A.LinearAttention(d, h, feature_map="identity", normalize="inline",
                                         local_kernel=3, **kw),
])
def test_plug_into_vit(attn):
    vit = models.ViT(dim=32, depth=2, heads=2, attn=attn)
    x = torch.randn(2, 3, 32, 32)
    y = vit(x)
    y.sum().backward()
    assert y.shape == (2, 10)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in vit.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------
# ml.plot.attention_maps
# ---------------------------------------------------------------------------------------

def test_attention_maps_figure_layout():
    maps = torch.rand(3, 4, 8, 8)
    fig = plot.attention_maps(maps, torch.rand(3, 3, 32, 32), col_labels=list("abcd"),
                              row_labels=["x", "y", "z"], title="t")
    assert len(fig.axes) == 3 * 5
    plt.close(fig)
    fig = plot.attention_maps(torch.rand(2, 4, 64), grid=(8, 8))      # flat token axis
    assert len(fig.axes) == 2 * 4
    plt.close(fig)
    fig = plot.attention_maps(torch.randn(4, 8, 8))                    # one image, signed
    assert len(fig.axes) == 4
    plt.close(fig)
    fig = plot.attention_maps(torch.rand(2, 64), grid=(8, 8))          # one head
    assert len(fig.axes) == 2
    plt.close(fig)


def test_attention_maps_errors():
    with pytest.raises(ValueError, match="maps of shape"):
        plot.attention_maps(torch.rand(2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="images must be"):
        plot.attention_maps(torch.rand(2, 4, 8, 8), torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="col_labels"):
        plot.attention_maps(torch.rand(2, 4, 8, 8), col_labels=["a"])
