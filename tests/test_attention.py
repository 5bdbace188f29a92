"""Tests of minilib.attention against PyTorch references, forward and backward."""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from minilib import attention as A

F64 = dict(dtype=torch.float64)
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5)}


def rand(*shape, dtype=torch.float64, grad=True):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g, allow_unused=True, retain_graph=True)


def assert_same(mine, ref, inputs, tol):
    """Outputs and grads w.r.t. ``inputs`` agree, for one random upstream gradient."""
    torch.testing.assert_close(mine, ref, **tol)
    g = torch.randn_like(ref)
    for a, b in zip(grads(mine, inputs, g), grads(ref, inputs, g)):
        torch.testing.assert_close(a, b, **tol)


# ---------------------------------------------------------------------------------------
# scaled_dot_product
# ---------------------------------------------------------------------------------------

def _masks(B, H, Tq, Tk, dtype):
    pad = torch.ones(B, 1, 1, Tk, dtype=torch.bool)
    pad[0, ..., -3:] = False                             # key padding in batch 0
    add = torch.randn(B, H, Tq, Tk, dtype=dtype)
    add[..., 0] = float("-inf")                          # additive -inf mask
    return {"none": None, "padding": pad, "shared2d": torch.rand(Tq, Tk) > 0.3, "additive": add}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "shared2d", "additive"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdp_matches_torch(dtype, mask_kind, causal):
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 11, 8
    q, k, v = (rand(B, H, T, D, dtype=dtype) for _ in range(3))
    mask = _masks(B, H, T, T, dtype)[mask_kind]
    if causal and mask is not None:
        # PyTorch takes only one of the two: give it the combined boolean/additive mask.
        tri = torch.ones(T, T, dtype=torch.bool).tril()
        ref_mask = mask & tri if mask.dtype == torch.bool else mask.masked_fill(~tri, float("-inf"))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask)
    else:
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    out = A.scaled_dot_product(q, k, v, mask=mask, causal=causal)
    assert out.shape == (B, H, T, D) and out.dtype == dtype
    assert_same(out, ref, (q, k, v), TOL[dtype])


@pytest.mark.parametrize("mask_kind", ["none", "padding", "additive"])
def test_sdp_cross_attention_scale_and_value_dim(mask_kind):
    torch.manual_seed(1)
    B, H, Tq, Tk, D, Dv = 2, 2, 5, 9, 8, 6
    q, k, v = rand(B, H, Tq, D), rand(B, H, Tk, D), rand(B, H, Tk, Dv)
    mask = _masks(B, H, Tq, Tk, torch.float64)[mask_kind]
    out = A.scaled_dot_product(q, k, v, mask=mask, scale=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    assert out.shape == (B, H, Tq, Dv)
    assert_same(out, ref, (q, k, v), TOL[torch.float64])


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_sdp_grouped_query(kv_heads):
    torch.manual_seed(2)
    B, H, T, D = 2, 4, 7, 8
    q, k, v = rand(B, H, T, D), rand(B, kv_heads, T, D), rand(B, kv_heads, T, D)
    mask = torch.rand(B, H, T, T) > 0.4                  # per-head mask: checks the head mapping
    mask[..., 0] = True
    out = A.scaled_dot_product(q, k, v, mask=mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert_same(out, ref, (q, k, v), TOL[torch.float64])
    out = A.scaled_dot_product(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert_same(out, ref, (q, k, v), TOL[torch.float64])


def test_causal_alignment():
    torch.manual_seed(3)
    # Tq == Tk: the usual lower triangle, PyTorch's is_causal.
    assert torch.equal(A.causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    # Tq < Tk: bottom-right (the queries are the last Tq positions), as causal_lower_right.
    assert torch.equal(A.causal_mask(2, 5), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool())
    q, k, v = rand(1, 2, 3, 4), rand(1, 2, 6, 4), rand(1, 2, 6, 4)
    out = A.scaled_dot_product(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=A.causal_mask(3, 6))
    assert_same(out, ref, (q, k, v), TOL[torch.float64])
    ref2 = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(3, 6))
    torch.testing.assert_close(out, ref2, **TOL[torch.float64])
    # Tq > Tk: the first Tq - Tk queries see nothing and get 0.
    q = rand(1, 2, 5, 4)
    out = A.scaled_dot_product(q, k[:, :, :3], v[:, :, :3], causal=True)
    assert torch.all(out[:, :, :2] == 0) and torch.all(out[:, :, 2:] != 0)


def test_fully_masked_rows_are_zero_like_torch():
    torch.manual_seed(4)
    q, k, v = rand(2, 2, 4, 8), rand(2, 2, 4, 8), rand(2, 2, 4, 8)
    mask = torch.ones(2, 2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = False                                # one query sees no key
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = A.scaled_dot_product(q, k, v, mask=mask)
    assert torch.all(ref[0, 1, 2] == 0)                  # what PyTorch returns
    assert_same(out, ref, (q, k, v), TOL[torch.float64])
    out = A.scaled_dot_product(q, k, v, mask=mask)
    g = grads(out, (q,), torch.ones_like(out))[0]
    assert torch.isfinite(g).all() and torch.all(g[0, 1, 2] == 0)
    # The same with an additive -inf mask.
    add = torch.zeros(4, 4, dtype=torch.float64).masked_fill(~mask[0, 1], float("-inf"))
    out = A.scaled_dot_product(q, k, v, mask=add)
    assert torch.isfinite(out).all() and torch.all(out[:, :, 2] == 0)


def test_attention_weights():
    torch.manual_seed(5)
    q, k = rand(2, 2, 5, 4, grad=False), rand(2, 2, 7, 4, grad=False)
    p = A.attention_weights(q, k, causal=True)
    s = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~A.causal_mask(5, 7), -math.inf)
    ref = torch.softmax(s, -1)
    torch.testing.assert_close(p, ref, **TOL[torch.float64])
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 2, 5, **F64))


def test_sdp_dropout_rescales():
    torch.manual_seed(6)
    q, k = torch.randn(4, 2, 64, 8), torch.randn(4, 2, 256, 8)
    v = torch.ones(4, 2, 256, 1)                         # output = sum of kept weights / (1-p)
    out = A.scaled_dot_product(q, k, v, dropout_p=0.5)
    assert out.std() > 0.05                              # weights were dropped
    assert abs(out.mean().item() - 1.0) < 0.05           # and the rest rescaled
    torch.testing.assert_close(A.scaled_dot_product(q, k, v), torch.ones(4, 2, 64, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdp_half_precision(dtype):
    torch.manual_seed(7)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = A.scaled_dot_product(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_sdp_errors():
    q = torch.randn(2, 4, 5, 8)
    with pytest.raises(ValueError, match="4-D"):
        A.scaled_dot_product(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="dtype"):
        A.scaled_dot_product(q, q.double(), q)
    with pytest.raises(TypeError, match="floating"):
        A.scaled_dot_product(q.long(), q.long(), q.long())
    with pytest.raises(ValueError, match="head dim"):
        A.scaled_dot_product(q, q[..., :4], q)
    with pytest.raises(ValueError, match="multiple"):
        A.scaled_dot_product(q, q[:, :3], q[:, :3])
    with pytest.raises(ValueError, match="broadcast"):
        A.scaled_dot_product(q, q, q, mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        A.scaled_dot_product(q, q, q, mask=torch.ones(5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="dropout_p"):
        A.scaled_dot_product(q, q, q, dropout_p=1.0)


# ---------------------------------------------------------------------------------------
# tiled_attention (FlashAttention in PyTorch)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,block", [(37, 8), (16, 16), (5, 64), (50, 7)])
def test_tiled_matches_torch(dtype, causal, T, block):
    torch.manual_seed(10)
    q, k, v = (rand(2, 3, T, 8, dtype=dtype) for _ in range(3))
    out = A.tiled_attention(q, k, v, causal=causal, block_size=block)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    assert out.shape == ref.shape and out.dtype == dtype
    assert_same(out, ref, (q, k, v), TOL[dtype])


@pytest.mark.parametrize("Tq,Tk", [(5, 23), (1, 23), (23, 9)])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_cross_and_kv_cache_shapes(Tq, Tk, causal):
    torch.manual_seed(11)
    q, k, v = rand(2, 2, Tq, 8), rand(2, 2, Tk, 8), rand(2, 2, Tk, 5)
    out = A.tiled_attention(q, k, v, causal=causal, block_size=4, scale=0.5)
    mask = A.causal_mask(Tq, Tk) if causal else None      # bottom-right; Tq > Tk: empty rows
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)
    assert_same(out, ref, (q, k, v), TOL[torch.float64])
    torch.testing.assert_close(out, A.scaled_dot_product(q, k, v, causal=causal, scale=0.5),
                               **TOL[torch.float64])


class _Record(TorchDispatchMode):
    """Records the largest tensor any op produces, and how many matmuls run."""

    def __init__(self):
        super().__init__()
        self.largest, self.ops = 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops[func.overloadpacket.__name__] += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_tiled_never_forms_the_score_matrix():
    torch.manual_seed(12)
    T, D, block = 128, 8, 16
    q, k, v = (rand(1, 1, T, D, dtype=torch.float32) for _ in range(3))
    with _Record() as rec:
        out = A.tiled_attention(q, k, v, causal=True, block_size=block)
        out.sum().backward()
    assert rec.largest <= max(T * D, block * block) < T * T      # forward and backward
    with _Record() as full:
        A.scaled_dot_product(q, k, v)
    assert full.largest >= T * T                                 # the naive one does


def test_tiled_causal_skips_future_blocks():
    q = torch.randn(1, 1, 64, 8)
    counts = []
    for causal in (False, True):
        with _Record() as rec:
            A.tiled_attention(q, q, q, causal=causal, block_size=16)
        counts.append(rec.ops["bmm"] + rec.ops["mm"] + rec.ops["matmul"])
    n = 64 // 16
    assert counts == [2 * n * n, 2 * n * (n + 1) // 2]           # QK^T and PV per visited block


def test_tiled_half_and_errors():
    q = torch.randn(1, 2, 20, 8)
    out = A.tiled_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), causal=True, block_size=8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, q, q, is_causal=True),
                               atol=3e-2, rtol=3e-2)
    with pytest.raises(ValueError, match="same number of heads"):
        A.tiled_attention(q, q[:, :1], q[:, :1])
    with pytest.raises(ValueError, match="block_size"):
        A.tiled_attention(q, q, q, block_size=0)


# ---------------------------------------------------------------------------------------
# MultiHeadAttention, grouped-query heads, KV cache
# ---------------------------------------------------------------------------------------

def _torch_mha(m: A.MultiHeadAttention, rep: int = 1) -> nn.MultiheadAttention:
    """``nn.MultiheadAttention`` with ``m``'s weights; k/v heads repeated ``rep`` times (GQA)."""
    C, d = m.dim, m.head_dim
    ref = nn.MultiheadAttention(C, m.heads, batch_first=True, **F64)
    wq, wk, wv = m.qkv.weight.detach().split([C, C // rep, C // rep])
    bq, bk, bv = m.qkv.bias.detach().split([C, C // rep, C // rep])

    def expand(w):                                        # (Hkv * d, ...) -> (H * d, ...)
        return w.view(-1, d, *w.shape[1:]).repeat_interleave(rep, 0).reshape(C, *w.shape[1:])

    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([wq, expand(wk), expand(wv)]))
        ref.in_proj_bias.copy_(torch.cat([bq, expand(bk), expand(bv)]))
        ref.out_proj.weight.copy_(m.proj.weight)
        ref.out_proj.bias.copy_(m.proj.bias)
    return ref


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_mha_matches_torch(causal, kv_heads):
    torch.manual_seed(20)
    B, T, C, H = 2, 9, 16, 4
    m = A.MultiHeadAttention(C, H, causal=causal, kv_heads=kv_heads).double()
    rep = H // (kv_heads or H)
    ref = _torch_mha(m, rep)
    x = rand(B, T, C)
    out = m(x)
    tri = torch.ones(T, T, dtype=torch.bool).tril()
    r = ref(x, x, x, attn_mask=~tri if causal else None, need_weights=False)[0]
    g = torch.randn_like(r)
    torch.testing.assert_close(out, r, **TOL[torch.float64])
    gm = grads(out, (x, m.qkv.weight, m.qkv.bias, m.proj.weight), g)
    gr = grads(r, (x, ref.in_proj_weight, ref.in_proj_bias, ref.out_proj.weight), g)
    torch.testing.assert_close(gm[0], gr[0], **TOL[torch.float64])
    torch.testing.assert_close(gm[3], gr[3], **TOL[torch.float64])

    def fold(w):    # sum the grads of the repeated k/v heads back onto the shared head
        q, k, v = w.split([C, C, C])
        k, v = (t.view(-1, rep, m.head_dim, *t.shape[1:]).sum(1).reshape(C // rep, *t.shape[1:])
                for t in (k, v))
        return torch.cat([q, k, v])

    torch.testing.assert_close(gm[1], fold(gr[1]), **TOL[torch.float64])
    torch.testing.assert_close(gm[2], fold(gr[2]), **TOL[torch.float64])


def test_mha_padding_mask_matches_torch():
    torch.manual_seed(21)
    B, T, C, H = 3, 7, 16, 2
    m = A.MultiHeadAttention(C, H).double()
    ref = _torch_mha(m)
    x = rand(B, T, C)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, 5:] = keep[2, 3:] = False
    out = m(x, mask=keep[:, None, None, :])
    r = ref(x, x, x, key_padding_mask=~keep, need_weights=False)[0]
    assert_same(out, r, (x,), TOL[torch.float64])


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_kv_cache_decoding_equals_full_forward(kv_heads):
    torch.manual_seed(22)
    B, T, C, H = 2, 12, 32, 4
    m = A.MultiHeadAttention(C, H, causal=True, kv_heads=kv_heads).eval()
    x = torch.randn(B, T, C)
    with torch.no_grad():
        full = m(x)
        cache = m.make_cache(B, max_len=T)
        steps = [m(x[:, t:t + 1], kv_cache=cache) for t in range(T)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        assert cache.length == T and cache.keys.shape == (B, kv_heads, T, C // H)
        cache.reset()                                    # prompt of 5 at once, then one by one
        prompt = m(x[:, :5], kv_cache=cache)
        rest = [m(x[:, t:t + 1], kv_cache=cache) for t in range(5, T)]
        torch.testing.assert_close(torch.cat([prompt] + rest, 1), full, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="max_len"):
            m(x[:, :1], kv_cache=cache)


def test_kv_cache_api_and_errors():
    cache = A.KVCache(2, 8, 2, 4, dtype=torch.float64)
    k, v = torch.randn(2, 2, 3, 4, **F64), torch.randn(2, 2, 3, 4, **F64)
    keys, values = cache.append(k, v)
    assert torch.equal(keys, k) and torch.equal(values, v) and cache.length == 3
    cache.append(k[:, :, :1], v[:, :, :1])
    assert torch.equal(cache.keys[:, :, 3], k[:, :, 0]) and cache.values.shape == (2, 2, 4, 4)
    cache.reset()
    assert cache.length == 0 and cache.keys.shape == (2, 2, 0, 4)
    with pytest.raises(ValueError, match="expected"):
        cache.append(torch.randn(2, 3, 1, 4, **F64), torch.randn(2, 3, 1, 4, **F64))
    with pytest.raises(ValueError, match="positive"):
        A.KVCache(2, 0, 2, 4)


def test_mha_dropout_and_errors():
    m = A.MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    assert not torch.equal(m.train()(x), m(x))           # random in training
    assert torch.equal(m.eval()(x), m(x))                # deterministic in eval
    with pytest.raises(ValueError, match="divisible"):
        A.MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="kv_heads"):
        A.MultiHeadAttention(16, 4, kv_heads=3)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        m(torch.randn(2, 5, 8))


# ---------------------------------------------------------------------------------------
# Window (Swin) and axial attention: references built on the full (T, T) attention
# ---------------------------------------------------------------------------------------

def _swin_keep(grid, window, shift):
    """Swin's rule on the whole grid: same shifted window and same region label.

    Region labels are assigned in rolled coordinates by the slices Swin uses,
    (0, -w), (-w, -s), (-s, None), per axis (Liu et al., 2021, the official code).
    """
    (Hg, Wg), (wh, ww), (sh, sw) = grid, window, shift
    r = torch.arange(Hg).repeat_interleave(Wg)
    c = torch.arange(Wg).repeat(Hg)
    rr, rc = (r - sh) % Hg, (c - sw) % Wg                 # positions after torch.roll(-s)

    def region(x, n, w, s):
        return torch.where(x < n - w, 0, torch.where(x < n - s, 1, 2))

    win = (rr // wh) * (Wg // ww) + rc // ww
    label = region(rr, Hg, wh, sh) * 3 + region(rc, Wg, ww, sw)
    keep = (win[:, None] == win[None, :]) & (label[:, None] == label[None, :])
    return keep, r, c


def _window_reference(m: A.WindowAttention, x, grid, window, n_cls):
    """Full attention over all T tokens with the Swin mask and bias, via F.sdpa."""
    B, T, C = x.shape
    h, d = m.heads, m.head_dim
    keep, r, c = _swin_keep(grid, window, m.shift)
    mask = torch.full((h, T, T), float("-inf"), dtype=x.dtype)
    grid_mask = torch.zeros(h, T - n_cls, T - n_cls, dtype=x.dtype)
    if m.rel_bias is not None:
        wh, ww = window
        dr = (r[:, None] - r[None, :] + wh - 1).clamp(0, 2 * wh - 2)
        dc = (c[:, None] - c[None, :] + ww - 1).clamp(0, 2 * ww - 2)
        grid_mask = grid_mask + m.rel_bias[dr * (2 * ww - 1) + dc].permute(2, 0, 1)
    mask[:, n_cls:, n_cls:] = grid_mask.masked_fill(~keep, float("-inf"))
    mask[:, :n_cls, :] = 0                                # class tokens attend globally
    if m.causal:
        mask = mask.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    q, k, v = m.qkv(x).view(B, T, 3, h, d).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None])
    return m.proj(y.transpose(1, 2).reshape(B, T, C))


WINDOW_CASES = [
    # grid, window, shift, n_cls, causal, pass grid to the constructor
    ((8, 8), 4, 0, 0, False, True),                       # block-diagonal
    ((8, 8), 4, 2, 0, False, True),                       # Swin shifted windows
    ((8, 8), 4, 2, 1, False, False),                      # ViT class token, inferred grid
    ((4, 8), (2, 4), (1, 2), 0, False, True),             # rectangular
    ((6, 6), 3, 1, 2, True, True),                        # causal, two class tokens
    ((4, 4), 4, 0, 0, False, False),                      # one window = full attention
]


@pytest.mark.parametrize("grid,window,shift,n_cls,causal,pass_grid", WINDOW_CASES)
def test_window_attention_matches_masked_full_attention(grid, window, shift, n_cls, causal,
                                                        pass_grid):
    torch.manual_seed(30)
    C, h = 16, 2
    m = A.WindowAttention(C, h, window_size=window, shift=shift, grid=grid if pass_grid else None,
                          cls_tokens=n_cls if pass_grid else None, causal=causal).double()
    with torch.no_grad():
        m.rel_bias.normal_()                             # make the bias matter
    x = rand(2, n_cls + grid[0] * grid[1], C)
    out = m(x)
    ref = _window_reference(m, x, grid, A._pair(window, "", ""), n_cls)
    assert out.shape == x.shape
    params = (x, m.qkv.weight, m.qkv.bias, m.proj.weight, m.rel_bias)
    assert_same(out, ref, params, TOL[torch.float64])


def test_window_attention_float32_and_partition_roundtrip():
    torch.manual_seed(31)
    m = A.WindowAttention(16, 4, window_size=4, shift=2, grid=(8, 8))
    x = rand(2, 64, 16, dtype=torch.float32)
    ref = _window_reference(m, x, (8, 8), (4, 4), 0)
    assert_same(m(x), ref, (x, m.rel_bias), TOL[torch.float32])
    g = torch.randn(2, 8, 12, 3)
    w = A.window_partition(g, (4, 3))
    assert w.shape == (2, 8, 12, 3) and torch.equal(w[0, 1], g[0, :4, 3:6].reshape(12, 3))
    assert torch.equal(A.window_merge(w, (4, 3), (8, 12)), g)


@pytest.mark.parametrize("n_cls,causal,pass_grid",
                         [(0, False, True), (1, False, False), (0, True, True)])
def test_axial_attention_is_row_then_column(n_cls, causal, pass_grid):
    torch.manual_seed(32)
    grid, C = (4, 6), 16
    m = A.AxialAttention(C, 2, grid=grid if pass_grid else None, cls_tokens=n_cls,
                         causal=causal, rel_pos_bias=pass_grid).double()
    if pass_grid:
        with torch.no_grad():
            m.row.rel_bias.normal_()
            m.col.rel_bias.normal_()
    if not pass_grid:                                    # inferred grid must be square
        grid = (5, 5)
    x = rand(2, n_cls + grid[0] * grid[1], C)
    ref = _window_reference(m.row, x, grid, (1, grid[1]), n_cls)
    ref = _window_reference(m.col, ref, grid, (grid[0], 1), n_cls)
    assert_same(m(x), ref, (x, m.row.qkv.weight, m.col.proj.weight), TOL[torch.float64])


def test_window_errors():
    with pytest.raises(ValueError, match="shift"):
        A.WindowAttention(16, 2, window_size=4, shift=4)
    with pytest.raises(ValueError, match="divisible"):
        A.WindowAttention(15, 2)
    with pytest.raises(ValueError, match="must divide the grid"):
        A.WindowAttention(16, 2, window_size=3, grid=(8, 8))(torch.randn(1, 64, 16))
    with pytest.raises(ValueError, match="cannot infer"):
        A.WindowAttention(16, 2)(torch.randn(1, 60, 16))
    with pytest.raises(ValueError, match="do not match grid"):
        A.WindowAttention(16, 2, grid=(4, 4))(torch.randn(1, 12, 16))
    with pytest.raises(ValueError, match="rel_pos_bias"):
        A.AxialAttention(16, 2, rel_pos_bias=True)


# ---------------------------------------------------------------------------------------
# Linear attention
# ---------------------------------------------------------------------------------------

def _quadratic_linear_attention(fq, fk, v, causal, eps=1e-6):
    a = fq @ fk.transpose(-2, -1)                        # (B, H, T, T): phi(Q) phi(K)^T
    if causal:
        a = a.tril()
    return (a @ v) / (a.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [4, 64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_attention_matches_quadratic_form(causal, chunk, dtype):
    torch.manual_seed(40)
    q, k, v = (rand(2, 3, 13, 8, dtype=dtype) for _ in range(3))
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    out = A.linear_attention(fq, fk, v, causal=causal, chunk_size=chunk)
    assert_same(out, _quadratic_linear_attention(fq, fk, v, causal), (q, k, v), TOL[dtype])


@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_module(feature_map, causal):
    torch.manual_seed(41)
    B, T, C, h = 2, 10, 16, 2
    m = A.LinearAttention(C, h, causal=causal, feature_map=feature_map, chunk_size=3).double()
    x = rand(B, T, C)
    q, k, v = m.qkv(x).view(B, T, 3, h, C // h).permute(2, 0, 3, 1, 4)
    phi = (lambda t: F.elu(t) + 1) if feature_map == "elu" else F.relu
    y = _quadratic_linear_attention(phi(q), phi(k), v, causal)
    ref = m.proj(y.transpose(1, 2).reshape(B, T, C))
    assert_same(m(x), ref, (x, m.qkv.weight, m.proj.bias), TOL[torch.float64])
    with pytest.raises(ValueError, match="feature_map"):
        A.LinearAttention(C, h, feature_map="softmax")


# ---------------------------------------------------------------------------------------
# PoolFormer mixer
# ---------------------------------------------------------------------------------------

def test_pooling_mixer_by_hand():
    torch.manual_seed(50)
    Hg, Wg, C = 3, 4, 5
    x = rand(2, 1 + Hg * Wg, C)
    out = A.PoolingMixer(C, 2, grid=(Hg, Wg))(x)
    g = x[:, 1:].view(2, Hg, Wg, C)
    ref = torch.empty_like(g)
    for i in range(Hg):
        for j in range(Wg):                              # mean over the in-grid 3 x 3 neighbours
            ref[:, i, j] = g[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean((1, 2)) - g[:, i, j]
    ref = torch.cat([g.mean((1, 2))[:, None] - x[:, :1], ref.view(2, Hg * Wg, C)], 1)
    assert_same(out, ref, (x,), TOL[torch.float64])
    with pytest.raises(ValueError, match="causal"):
        A.PoolingMixer(C, 2, causal=True)


# ---------------------------------------------------------------------------------------
# Channel attention
# ---------------------------------------------------------------------------------------

def test_squeeze_excite_by_hand():
    torch.manual_seed(60)
    m = A.SqueezeExcite(32, reduction=8).double()
    assert m.fc1.out_features == 4
    x = rand(2, 32, 5, 6)
    s = x.mean((2, 3))
    s = torch.sigmoid(F.relu(s @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias)
    ref = x * s[:, :, None, None]
    assert_same(m(x), ref, (x, m.fc1.weight, m.fc2.bias), TOL[torch.float64])
    assert A.SqueezeExcite(8, reduction=16).fc1.out_features == 1
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(torch.randn(2, 16, 5, 6, **F64))


@pytest.mark.parametrize("channels,k", [(16, 3), (64, 3), (128, 5), (256, 5), (512, 5),
                                        (1024, 5), (2048, 7)])
def test_eca_kernel_size(channels, k):
    assert A.eca_kernel_size(channels) == k == A.ECA(channels).kernel_size


def test_eca_by_hand():
    torch.manual_seed(61)
    C = 128
    m = A.ECA(C).double()
    x = rand(2, C, 4, 3)
    w = m.conv.weight.view(-1)                           # k = 5 taps
    k = w.numel()
    s = F.pad(x.mean((2, 3)), (k // 2, k // 2))          # zero padding at both ends
    gate = torch.stack([(s[:, c:c + k] * w).sum(-1) for c in range(C)], 1)
    ref = x * torch.sigmoid(gate)[:, :, None, None]
    assert_same(m(x), ref, (x, m.conv.weight), TOL[torch.float64])
    assert sum(p.numel() for p in m.parameters()) == 5
    with pytest.raises(ValueError, match="odd"):
        A.ECA(C, kernel_size=4)


# ---------------------------------------------------------------------------------------
# Plug-compatibility with ml.models: attn(dim, heads, *, causal=False, dropout=0.0)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", [
    A.MultiHeadAttention, partial(A.MultiHeadAttention, kv_heads=1),
    partial(A.WindowAttention, window_size=4, grid=(8, 8)),
    partial(A.WindowAttention, window_size=4, shift=2), A.AxialAttention,
    A.LinearAttention, A.PoolingMixer,
])
@pytest.mark.parametrize("T", [64, 65])                  # with and without a class token
def test_plug_compatible(attn, T):
    m = attn(32, 4, causal=False, dropout=0.1)
    x = torch.randn(2, T, 32, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
