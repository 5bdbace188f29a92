"""Chapter 3: attention variants from scratch, and what each one costs.

Attention mixes tokens: every output is a weighted average of value vectors, with weights
from how well the query matches each key. The variants below differ in *which* tokens a
query may look at and in *how* the weights are computed, and that decides their cost:

========================  ======================================  ===========================
variant                   a query looks at                        time / extra memory
========================  ======================================  ===========================
``scaled_dot_product``    every key (or a masked subset)          O(T^2 D) / O(T^2)
``tiled_attention``       the same, block by block (FlashAttn)    O(T^2 D) / O(T)
``MultiHeadAttention``    the same; ``kv_heads`` < ``heads`` and  KV cache: O(T) per new
                          ``KVCache`` make decoding cheap          token instead of O(T^2)
``WindowAttention``       its w x w window (Swin), shifted        O(T w^2 D) / O(T w^2)
``AxialAttention``        its row, then its column                O(T (H + W) D)
``LinearAttention``       every key, through a kernel feature     O(T D^2) / O(D^2) state
                          map: phi(q) (phi(K)^T V)
``PoolingMixer``          its 3 x 3 neighbourhood, averaged       O(T D), no parameters
``SqueezeExcite``, ``ECA``  channels of a CNN feature map          O(C H W)
========================  ======================================  ===========================

References: Vaswani et al., "Attention Is All You Need" (NeurIPS 2017); Milakov &
Gimelshein, "Online normalizer calculation for softmax" (2018); Dao et al.,
"FlashAttention" (NeurIPS 2022) and Dao, "FlashAttention-2" (2023); Shazeer, "Fast
Transformer Decoding: One Write-Head is All You Need" (MQA, 2019); Ainslie et al., "GQA"
(EMNLP 2023); Liu et al., "Swin Transformer" (ICCV 2021); Ho et al., "Axial Attention in
Multidimensional Transformers" (2019); Katharopoulos et al., "Transformers are RNNs"
(ICML 2020); Yu et al., "MetaFormer Is Actually What You Need for Vision" (PoolFormer,
CVPR 2022); Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018); Wang et al.,
"ECA-Net" (CVPR 2020).

Conventions: attention functions take ``(B, H, T, D)`` tensors (batch, heads, tokens,
head dim), like ``F.scaled_dot_product_attention``. Token-mixing modules take ``(B, T, C)``
and return ``(B, T, C)``; they all accept ``(dim, heads, *, causal=False, dropout=0.0)``,
so they plug into ``ml.models`` as ``attn=``; extra arguments go through
``functools.partial``, e.g. ``attn=partial(WindowAttention, window_size=4, grid=(8, 8))``.

Masks: a boolean mask keeps ``True`` entries (as ``attn_mask`` of
``F.scaled_dot_product_attention``); a float mask is added to the scores. A query whose
keys are all masked gets a zero output and zero gradients, as PyTorch (>= 2.5) returns.

Grid modules (window, axial, pooling) read tokens as an ``H x W`` grid in raster order;
leading class tokens (ViT's ``[CLS]``) are allowed: see :class:`WindowAttention`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    # functions on (B, H, T, D) tensors
    "causal_mask", "attention_weights", "scaled_dot_product", "tiled_attention",
    "linear_attention", "window_partition", "window_merge", "inline_attention",
    "linear_attention_weights", "focused_feature_map", "SwinAttention", "window_dense_mask",
    # token mixers (B, T, C) -> (B, T, C)
    "MultiHeadAttention", "KVCache", "pool_kv_heads", "WindowAttention", "AxialAttention",
    "LinearAttention", "PoolingMixer",
    # channel attention for CNNs (B, C, H, W) -> (B, C, H, W)
    "SqueezeExcite", "ECA", "eca_kernel_size",
]


# ---------------------------------------------------------------------------------------
# Input checks shared by every function
# ---------------------------------------------------------------------------------------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 scores and softmax sums are computed in float32.

    exp() of scores and sums over thousands of keys lose digits (bfloat16 has 8 bits of
    mantissa) or overflow (float16 stops at 65504); PyTorch's kernels accumulate in
    float32 and so do we.
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, who: str, gqa: bool = True) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{who}: {name} must be 4-D (B, H, T, D), got shape {list(t.shape)}; "
                f"split heads first, e.g. x.view(B, T, H, D).transpose(1, 2)"
            )
        if not torch.is_floating_point(t):
            raise TypeError(f"{who}: {name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{who}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"{who}: q, k, v must have the same batch size, got "
            f"{q.shape[0]}, {k.shape[0]}, {v.shape[0]}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"{who}: q and k must have the same head dim D to form q @ k^T, got "
            f"{q.shape[-1]} and {k.shape[-1]}"
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"{who}: k and v must have the same heads and length (B, H, Tk, *), got "
            f"{list(k.shape)} and {list(v.shape)}"
        )
    if gqa:
        if q.shape[1] % k.shape[1]:
            raise ValueError(
                f"{who}: q has {q.shape[1]} heads and k/v {k.shape[1]}; grouped-query "
                f"attention needs q heads to be a multiple of k/v heads"
            )
    elif q.shape[1] != k.shape[1]:
        raise ValueError(
            f"{who}: q, k, v must have the same number of heads, got {q.shape[1]} and "
            f"{k.shape[1]}; repeat k/v heads first (k.repeat_interleave(G, dim=1))"
        )


# ---------------------------------------------------------------------------------------
# Scaled dot-product attention  (Vaswani et al., 2017)
#
#   S = Q K^T * scale + M             scale = 1/sqrt(D); M = 0 (keep) or -inf (drop)
#   P = softmax(S) row by row         P_ij = exp(S_ij - m_i) / sum_j exp(S_ij - m_i)
#   O = P V                           m_i = max_j S_ij keeps exp() from overflowing
# ---------------------------------------------------------------------------------------

def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(t_q, t_k)`` mask, ``True`` where query ``i`` may see key ``j``.

    Aligned at the bottom right: the queries are the *last* ``t_q`` positions of a
    sequence of ``t_k`` keys, so query ``i`` sits at position ``i + t_k - t_q`` and sees
    keys ``j <= i + t_k - t_q``. That is what decoding with a KV cache needs (the new
    token is the last one and sees the whole cache). For ``t_q == t_k`` it is the usual
    lower-triangular mask, the same as ``is_causal=True`` of
    ``F.scaled_dot_product_attention``; for ``t_q != t_k`` PyTorch's ``is_causal`` aligns
    top-left instead (``torch.nn.attention.bias.causal_lower_right`` is the bottom-right
    one). With ``t_q > t_k`` the first ``t_q - t_k`` queries see no key at all (zero output).
    """
    i = torch.arange(t_q, device=device)[:, None]
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i + (t_k - t_q)


def _mask_to_5d(mask: Tensor, shape4: tuple[int, int, int, int], groups: int, who: str) -> Tensor:
    """Check a mask broadcastable to ``(B, H, Tq, Tk)``; view it as ``(B, Hkv, G, Tq, Tk)``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{who}: mask must be a tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise TypeError(
            f"{who}: mask must be boolean (True = keep) or floating point (added to the "
            f"scores), got {mask.dtype}; convert it with mask.bool() or mask.float()"
        )
    if mask.dim() > 4:
        raise ValueError(f"{who}: mask has {mask.dim()} dims; at most 4 (B, H, Tq, Tk)")
    try:
        ok = torch.broadcast_shapes(mask.shape, shape4) == torch.Size(shape4)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{who}: mask of shape {list(mask.shape)} does not broadcast to (B, H, Tq, Tk) = "
            f"{list(shape4)}; a key-padding mask is (B, 1, 1, Tk), a shared mask (Tq, Tk)"
        )
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    b, h, tq, tk = m.shape
    if h == 1:
        return m.unsqueeze(2)                            # (b, 1, 1, tq, tk)
    return m.reshape(b, h // groups, groups, tq, tk)     # head h = hk * G + g


def _scores(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, scale: float | None,
            who: str) -> Tensor:
    """Masked scores ``S = Q K^T * scale + M`` in the grouped layout ``(B, Hkv, G, Tq, Tk)``.

    Grouped-query attention (``k`` has ``Hkv`` heads, ``q`` has ``H = G * Hkv``) shares
    one key head among ``G`` query heads. Reshaping ``q`` to ``(B, Hkv, G * Tq, D)`` turns
    that into one plain batched matmul with ``k``: no copy of ``k`` per query head.
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    acc = _acc_dtype(q.dtype)
    qg = q.to(acc).reshape(B, Hkv, G * Tq, D)
    s = (qg @ k.to(acc).transpose(-2, -1) * scale).view(B, Hkv, G, Tq, Tk)
    if mask is not None:
        m = _mask_to_5d(mask, (B, H, Tq, Tk), G, who)
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.to(acc)
    if causal:
        s = s.masked_fill(~causal_mask(Tq, Tk, q.device), float("-inf"))
    return s


def _safe_softmax(s: Tensor) -> Tensor:
    """Softmax over the last dim that gives 0 (not NaN) on rows where every score is -inf.

    ``softmax`` subtracts the row max ``m`` before ``exp``; a fully masked row has
    ``m = -inf`` and ``-inf - (-inf) = NaN``. Using ``m = 0`` there gives ``exp(-inf) = 0``
    everywhere, a zero denominator, and we divide by 1 instead: output 0, gradient 0.
    """
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    den = e.sum(dim=-1, keepdim=True)
    return e / torch.where(den == 0, torch.ones_like(den), den)


def attention_weights(q: Tensor, k: Tensor, mask: Tensor | None = None, causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """The attention matrix ``P = softmax(Q K^T * scale + M)``, e.g. to plot or prune with.

    Args:
        q: ``(B, H, Tq, D)``; k: ``(B, Hkv, Tk, D)`` with ``H`` a multiple of ``Hkv``.
        mask, causal, scale: as in :func:`scaled_dot_product`.

    Returns:
        ``(B, H, Tq, Tk)``; each row sums to 1 (0 for a fully masked row).
    """
    _check_qkv(q, k, k, "attention_weights")
    p = _safe_softmax(_scores(q, k, mask, causal, scale, "attention_weights"))
    return p.reshape(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).to(q.dtype)


def scaled_dot_product(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                       causal: bool = False, scale: float | None = None,
                       dropout_p: float = 0.0) -> Tensor:
    """``softmax(Q K^T / sqrt(D) + M) V``: the same result as ``F.scaled_dot_product_attention``.

    Args:
        q: ``(B, H, Tq, D)`` queries.
        k: ``(B, Hkv, Tk, D)`` keys; ``Hkv`` may divide ``H`` (grouped-query attention:
            query head ``h`` uses key head ``h // (H // Hkv)``, as ``enable_gqa=True``).
        v: ``(B, Hkv, Tk, Dv)`` values.
        mask: broadcastable to ``(B, H, Tq, Tk)``: boolean (``True`` = keep) or float
            (added to the scores, ``-inf`` = drop).
        causal: hide future keys, aligned bottom-right (see :func:`causal_mask`): for
            ``Tq == Tk`` it is PyTorch's ``is_causal``; for ``Tq < Tk`` the queries are the
            last ``Tq`` positions (KV-cache decoding). May be combined with ``mask``
            (both apply), which ``F.scaled_dot_product_attention`` does not allow.
        scale: multiplies ``Q K^T``; default ``1 / sqrt(D)``.
        dropout_p: drop attention weights with this probability and rescale the rest by
            ``1 / (1 - p)``. Applied whenever > 0, as in PyTorch: pass
            ``dropout_p if self.training else 0.0``.

    Returns:
        ``(B, H, Tq, Dv)`` in the dtype of ``q``. A query with every key masked gets 0.
    """
    who = "scaled_dot_product"
    _check_qkv(q, k, v, who)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{who}: dropout_p must be in [0, 1), got {dropout_p}")
    B, H, Tq, _ = q.shape
    Hkv, Tk, Dv = v.shape[1], v.shape[2], v.shape[3]
    p = _safe_softmax(_scores(q, k, mask, causal, scale, who))     # (B, Hkv, G, Tq, Tk)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    # O = P V: the G query heads of a group read the same value head.
    o = p.to(v.dtype).reshape(B, Hkv, (H // Hkv) * Tq, Tk) @ v
    return o.reshape(B, H, Tq, Dv)


# ---------------------------------------------------------------------------------------
# Tiled attention: FlashAttention in plain PyTorch  (Dao et al., 2022; Dao, 2023)
#
# Online softmax (Milakov & Gimelshein, 2018): walk over key blocks j keeping, per query,
#   m   = running max of the scores seen so far
#   l   = running sum of exp(s - m)                       (the softmax denominator)
#   acc = running sum of exp(s - m) v                     (the unnormalized output)
# When a new block raises the max to m', everything so far was scaled by exp(-m) and must
# be rescaled by alpha = exp(m - m'):
#   l' = alpha l + sum_j exp(s_j - m'),   acc' = alpha acc + sum_j exp(s_j - m') v_j
# and at the end O = acc / l. Only (block x block) scores exist at any time: O(T) memory.
# The backward recomputes the scores block by block from the saved log-sum-exp
# L = m + log(l), so training needs O(T) memory too (no (T, T) matrix is ever stored).
# ---------------------------------------------------------------------------------------

def _key_blocks(qs: int, qe: int, t_k: int, offset: int, block: int, causal: bool,
                device: torch.device):
    """Key blocks ``(ks, ke, keep)`` that query rows ``[qs, qe)`` must visit.

    With causal masking (bottom-right, query ``i`` sees keys ``j <= i + offset``), blocks
    entirely in the future are skipped: about half the work. Only the blocks on the
    diagonal need a mask (``keep``); the others are fully visible (``keep`` is None).
    """
    k_end = min(t_k, qe + offset) if causal else t_k
    for ks in range(0, max(k_end, 0), block):
        ke = min(ks + block, t_k)
        keep = None
        if causal and ke - 1 > qs + offset:             # some key is after some query
            i = torch.arange(qs, qe, device=device)[:, None]
            j = torch.arange(ks, ke, device=device)[None, :]
            keep = j <= i + offset
        yield ks, ke, keep


def _flash_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                   block: int) -> tuple[Tensor, Tensor]:
    """Forward pass: output ``(B, H, Tq, Dv)`` and log-sum-exp ``L`` ``(B, H, Tq)``."""
    B, H, Tq, _ = q.shape
    Tk, Dv = k.shape[2], v.shape[3]
    acc_t = _acc_dtype(q.dtype)
    offset = Tk - Tq
    out = torch.empty(B, H, Tq, Dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, Tq, dtype=acc_t, device=q.device)
    neg_inf = float("-inf")
    for qs in range(0, Tq, block):                      # outer loop: query blocks (FA-2)
        qe = min(qs + block, Tq)
        qi = q[:, :, qs:qe].to(acc_t) * scale           # fold the scale into Q once
        m = torch.full((B, H, qe - qs), neg_inf, dtype=acc_t, device=q.device)
        l = torch.zeros(B, H, qe - qs, dtype=acc_t, device=q.device)
        acc = torch.zeros(B, H, qe - qs, Dv, dtype=acc_t, device=q.device)
        for ks, ke, keep in _key_blocks(qs, qe, Tk, offset, block, causal, q.device):
            s = qi @ k[:, :, ks:ke].to(acc_t).transpose(-2, -1)     # (B, H, bq, bk)
            if keep is not None:
                s = s.masked_fill(~keep, neg_inf)
            m_new = torch.maximum(m, s.amax(dim=-1))
            # A row that has seen only masked keys keeps m = -inf; subtract 0 there so
            # exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN.
            m_safe = torch.where(m_new == neg_inf, torch.zeros_like(m_new), m_new)
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m - m_safe)               # rescales the old sums: exp(m - m')
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v[:, :, ks:ke].to(acc_t)
            m = m_new
        empty = l == 0                                  # no visible key: output 0
        out[:, :, qs:qe] = (acc / torch.where(empty, 1.0, l)[..., None]).to(q.dtype)
        # L = m + log(l); +inf on empty rows makes the backward's exp(s - L) exactly 0.
        lse[:, :, qs:qe] = torch.where(empty, float("inf"), m + torch.log(l))
    return out, lse


def _flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    scale: float, causal: bool, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """Backward pass, recomputing ``P`` block by block.

    With ``S = scale Q K^T``, ``P = softmax(S)``, ``O = P V``:
        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   delta_i = sum_d dO_id O_id
        dQ = scale dS K,   dK = scale dS^T Q
    where ``delta_i = sum_j P_ij dP_ij`` is computed from ``O`` and ``dO`` without ``P``.
    """
    Tq, Tk = q.shape[2], k.shape[2]
    acc_t = _acc_dtype(q.dtype)
    offset = Tk - Tq
    delta = (do.to(acc_t) * out.to(acc_t)).sum(dim=-1)             # (B, H, Tq)
    dq = torch.zeros_like(q, dtype=acc_t)
    dk = torch.zeros_like(k, dtype=acc_t)
    dv = torch.zeros_like(v, dtype=acc_t)
    for qs in range(0, Tq, block):
        qe = min(qs + block, Tq)
        qi = q[:, :, qs:qe].to(acc_t) * scale
        doi = do[:, :, qs:qe].to(acc_t)
        li, di = lse[:, :, qs:qe, None], delta[:, :, qs:qe, None]
        for ks, ke, keep in _key_blocks(qs, qe, Tk, offset, block, causal, q.device):
            kj, vj = k[:, :, ks:ke].to(acc_t), v[:, :, ks:ke].to(acc_t)
            s = qi @ kj.transpose(-2, -1)
            if keep is not None:
                s = s.masked_fill(~keep, float("-inf"))
            p = torch.exp(s - li)                       # the exact softmax, recomputed
            dv[:, :, ks:ke] += p.transpose(-2, -1) @ doi
            ds = p * (doi @ vj.transpose(-2, -1) - di)
            dq[:, :, qs:qe] += (ds @ kj) * scale
            dk[:, :, ks:ke] += ds.transpose(-2, -1) @ qi    # qi already carries the scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _TiledAttention(torch.autograd.Function):
    """Autograd wrapper: save ``q, k, v, O, L`` (all O(T)), recompute the rest."""

    @staticmethod
    def forward(ctx, q, k, v, scale, causal, block):
        out, lse = _flash_forward(q, k, v, scale, causal, block)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal, ctx.block = scale, causal, block
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _flash_backward(do, q, k, v, out, lse, ctx.scale, ctx.causal, ctx.block)
        return dq, dk, dv, None, None, None


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                    block_size: int = 64, scale: float | None = None) -> Tensor:
    """Exact attention in O(T) memory: the FlashAttention algorithm, block by block.

    Same result as ``F.scaled_dot_product_attention(q, k, v, is_causal=causal)`` forward
    and backward, but the ``(Tq, Tk)`` score matrix is never formed: queries and keys are
    processed in ``block_size`` blocks with an online softmax, and the backward pass
    recomputes the scores from the saved log-sum-exp (a custom autograd function; it
    does not support double backward). Plain PyTorch, so it saves memory, not time: the
    speed of FlashAttention comes from keeping the blocks in on-chip SRAM, which needs a
    fused kernel.

    Args:
        q: ``(B, H, Tq, D)``; k: ``(B, H, Tk, D)``; v: ``(B, H, Tk, Dv)`` (same heads).
        causal: as in :func:`scaled_dot_product` (bottom-right aligned); key blocks that
            lie entirely in the future are skipped.
        block_size: rows and columns per block; any ``T`` works (the last block is short).
        scale: default ``1 / sqrt(D)``.

    Returns:
        ``(B, H, Tq, Dv)``.
    """
    who = "tiled_attention"
    _check_qkv(q, k, v, who, gqa=False)
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"{who}: block_size must be a positive int, got {block_size!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _TiledAttention.apply(q, k, v, scale, bool(causal), block_size)


# ---------------------------------------------------------------------------------------
# Multi-head attention with grouped-query heads and a KV cache
# (Vaswani et al., 2017; Shazeer, 2019; Ainslie et al., 2023)
# ---------------------------------------------------------------------------------------

class KVCache:
    """Keys and values of the tokens decoded so far, for one attention layer.

    Autoregressive decoding feeds one new token at a time; without a cache every step
    recomputes keys and values of the whole prefix: O(T^2) projections for T tokens.
    The cache keeps them in preallocated ``(B, Hkv, max_len, D)`` buffers, so each step
    projects only the new token. Its size, ``2 * B * Hkv * max_len * D`` numbers per
    layer, is why grouped-query attention (fewer ``Hkv``) matters for decoding.

    Meant for inference (``torch.no_grad()`` / ``torch.inference_mode()``): ``append``
    writes into the buffers in place.

    Args:
        batch, max_len, kv_heads, head_dim: buffer shape ``(batch, kv_heads, max_len, head_dim)``.
        device, dtype: of the buffers (match the model's).
    """

    def __init__(self, batch: int, max_len: int, kv_heads: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        for name, n in (("batch", batch), ("max_len", max_len), ("kv_heads", kv_heads),
                        ("head_dim", head_dim)):
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"KVCache: {name} must be a positive int, got {n!r}")
        shape = (batch, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    @property
    def keys(self) -> Tensor:
        """``(B, Hkv, length, D)`` view of the cached keys."""
        return self.k[:, :, : self.length]

    @property
    def values(self) -> Tensor:
        """``(B, Hkv, length, D)`` view of the cached values."""
        return self.v[:, :, : self.length]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` of shape ``(B, Hkv, T_new, D)``; return all keys and values so far."""
        expected = (self.k.shape[0], self.k.shape[1], self.k.shape[3])
        for name, t in (("k", k), ("v", v)):
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != expected:
                raise ValueError(
                    f"KVCache.append: {name} has shape {list(t.shape)}, expected "
                    f"(B, Hkv, T_new, D) = ({expected[0]}, {expected[1]}, T_new, {expected[2]})"
                )
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"KVCache.append: k has {k.shape[2]} tokens but v has {v.shape[2]}")
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"KVCache.append: {end} tokens would exceed max_len={self.max_len}; "
                f"make a larger cache or reset() it"
            )
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.keys, self.values

    def reset(self) -> None:
        """Forget every token (the buffers are kept and overwritten)."""
        self.length = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the two preallocated buffers: ``2 * B * Hkv * max_len * D * itemsize``."""
        return self.k.nelement() * self.k.element_size() + self.v.nelement() * self.v.element_size()

    def __repr__(self) -> str:
        B, Hkv, L, D = self.k.shape
        return (f"KVCache(batch={B}, kv_heads={Hkv}, head_dim={D}, "
                f"length={self.length}/{L}, dtype={self.k.dtype})")


def _check_tokens(x: Tensor, dim: int, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who} expects tokens (B, T, C) with C = dim = {dim}, got {shape}")


def _check_heads(dim: int, heads: int, who: str) -> int:
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise ValueError(f"{who}: dim={dim} must be divisible by heads={heads!r}")
    return dim // heads


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention, with grouped-query heads and a KV cache.

    ``x -> qkv -> split into heads -> scaled_dot_product -> merge heads -> proj``.
    With ``kv_heads < heads`` groups of ``heads // kv_heads`` query heads share one key
    and value head (GQA; ``kv_heads=1`` is multi-query attention): fewer parameters and,
    above all, a ``heads / kv_heads`` times smaller KV cache.

    Args:
        dim: model width ``C``; ``heads`` must divide it.
        causal: each token sees only itself and the past.
        dropout: on the attention weights and on the output (as nanoGPT).
        kv_heads: key/value heads, a divisor of ``heads``; default ``heads``.
        qkv_bias: bias in the ``qkv`` projection.

    Parameters: ``qkv`` (``Linear(dim, (heads + 2 kv_heads) * head_dim)``, rows ordered
    ``[q; k; v]``, heads contiguous: with ``kv_heads == heads`` its weights load into
    ``nn.MultiheadAttention``'s ``in_proj_weight``) and ``proj`` (``Linear(dim, dim)``).
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0,
                 kv_heads: int | None = None, qkv_bias: bool = True):
        super().__init__()
        who = "MultiHeadAttention"
        self.head_dim = _check_heads(dim, heads, who)
        kv_heads = heads if kv_heads is None else kv_heads
        if not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
            raise ValueError(
                f"{who}: kv_heads={kv_heads!r} must be a positive divisor of heads={heads}"
            )
        self.dim, self.heads, self.kv_heads = dim, heads, kv_heads
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(dropout)

    def make_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`KVCache` for this layer, on its device and in its dtype."""
        w = self.qkv.weight
        return KVCache(batch, max_len, self.kv_heads, self.head_dim, device=w.device, dtype=w.dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None,
                kv_cache: KVCache | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``.

        Args:
            mask: optional, broadcastable to ``(B, heads, T, Tk)`` (e.g. key padding
                ``(B, 1, 1, Tk)``), as in :func:`scaled_dot_product`.
            kv_cache: when given, ``x`` holds the *new* tokens only; their keys and values
                are appended to the cache and the queries attend to every cached token
                (causal masking is bottom-right aligned, so a prompt can be fed at once
                and then one token at a time).
        """
        _check_tokens(x, self.dim, "MultiHeadAttention")
        B, T, C = x.shape
        d, H, Hkv = self.head_dim, self.heads, self.kv_heads
        q, k, v = self.qkv(x).split([H * d, Hkv * d, Hkv * d], dim=-1)
        q = q.view(B, T, H, d).transpose(1, 2)          # (B, H, T, d)
        k = k.view(B, T, Hkv, d).transpose(1, 2)        # (B, Hkv, T, d)
        v = v.view(B, T, Hkv, d).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                # (B, Hkv, T_past + T, d)
        y = scaled_dot_product(q, k, v, mask=mask, causal=self.causal,
                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)          # merge heads
        return self.out_drop(self.proj(y))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, kv_heads={self.kv_heads}, "
                f"causal={self.causal}, dropout={self.dropout}")


@torch.no_grad()
def pool_kv_heads(attn: MultiHeadAttention, kv_heads: int) -> MultiHeadAttention:
    """A copy of ``attn`` with ``kv_heads`` key/value heads, each the mean of a group.

    The GQA paper's conversion of a trained multi-head checkpoint (Ainslie et al., 2023):
    new key head ``j`` gets the mean of the projection weights and biases of old key heads
    ``j G' .. (j + 1) G' - 1``, ``G' = attn.kv_heads // kv_heads`` (likewise values);
    queries and the output projection are copied. The query heads that used those old
    key heads are exactly the ones that share the new head (query head ``h`` reads key
    head ``h // (heads // kv_heads)``). ``kv_heads=1`` gives multi-query attention. The
    converted model is worse until it is trained a little more ("uptraining").
    """
    if not isinstance(attn, MultiHeadAttention):
        raise TypeError(f"pool_kv_heads needs a MultiHeadAttention, got {type(attn).__name__}")
    if not isinstance(kv_heads, int) or kv_heads < 1 or attn.kv_heads % kv_heads:
        raise ValueError(f"pool_kv_heads: kv_heads={kv_heads!r} must be a positive divisor of "
                         f"the current kv_heads={attn.kv_heads}")
    w = attn.qkv.weight
    with torch.device(w.device):                # built where attn lives: nothing to copy over
        new = MultiHeadAttention(attn.dim, attn.heads, causal=attn.causal, dropout=attn.dropout,
                                 kv_heads=kv_heads, qkv_bias=attn.qkv.bias is not None)
    new = new.to(dtype=w.dtype)
    d, H, Hkv = attn.head_dim, attn.heads, attn.kv_heads
    g = Hkv // kv_heads

    def pool(t: Tensor) -> Tensor:              # (H + 2 Hkv) d rows -> (H + 2 kv_heads) d
        q, k, v = t.split([H * d, Hkv * d, Hkv * d], dim=0)
        k, v = (x.reshape(kv_heads, g, d, *x.shape[1:]).mean(dim=1).reshape(kv_heads * d, *x.shape[1:])
                for x in (k, v))
        return torch.cat([q, k, v], dim=0)

    new.qkv.weight.copy_(pool(w))
    if attn.qkv.bias is not None:
        new.qkv.bias.copy_(pool(attn.qkv.bias))
    new.proj.load_state_dict(attn.proj.state_dict())
    new.train(attn.training)
    return new


# ---------------------------------------------------------------------------------------
# Token grids: (B, T, C) tokens in raster order, with optional leading class tokens
# ---------------------------------------------------------------------------------------

def _pair(x: int | Sequence[int], name: str, who: str) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(i, int) for i in x):
        return (int(x[0]), int(x[1]))
    raise ValueError(f"{who}: {name} must be an int or a pair (h, w) of ints, got {x!r}")


def _grid_layout(T: int, grid: tuple[int, int] | None, cls_tokens: int | None,
                 who: str) -> tuple[int, int, int]:
    """``(H, W, n_cls)`` for ``T`` tokens: ``n_cls`` class tokens then an ``H x W`` grid.

    ``grid`` given: ``n_cls = T - H W`` (checked against ``cls_tokens`` if that is given).
    ``grid`` None: a square grid; with ``cls_tokens`` None, ``T`` must be a square (no
    class token) or a square plus one (one class token, as in ViT).
    """
    if grid is not None:
        Hg, Wg = grid
        n_cls = T - Hg * Wg
        if n_cls < 0 or (cls_tokens is not None and n_cls != cls_tokens):
            raise ValueError(
                f"{who}: {T} tokens do not match grid={grid} "
                f"({Hg * Wg} tokens) plus cls_tokens={cls_tokens}"
            )
        return Hg, Wg, n_cls
    candidates = [cls_tokens] if cls_tokens is not None else [0, 1]
    for n_cls in candidates:
        side = math.isqrt(max(T - n_cls, 0))
        if side > 0 and side * side == T - n_cls:
            return side, side, n_cls
    raise ValueError(
        f"{who}: cannot infer a square grid from {T} tokens (cls_tokens={cls_tokens}); "
        f"pass grid=(H, W) to the constructor"
    )


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """``(B, H, W, C) -> (B, nW, wh * ww, C)``: non-overlapping windows, raster order inside."""
    B, Hg, Wg, C = x.shape
    wh, ww = window
    x = x.view(B, Hg // wh, wh, Wg // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (Hg // wh) * (Wg // ww), wh * ww, C)


def window_merge(x: Tensor, window: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, wh * ww, C) -> (B, H, W, C)``."""
    B, _, _, C = x.shape
    (wh, ww), (Hg, Wg) = window, grid
    x = x.view(B, Hg // wh, Wg // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, Hg, Wg, C)


def _cls_attention(q_cls: Tensor, k: Tensor, v: Tensor, causal: bool, dropout_p: float) -> Tensor:
    """Class tokens (the first ``n_cls`` tokens) attend to every token: ``(B, h, n_cls, d)``."""
    n_cls, T = q_cls.shape[2], k.shape[2]
    mask = None
    if causal:      # class token i sits at position i: top-left alignment, keys j <= i
        i = torch.arange(n_cls, device=k.device)[:, None]
        mask = torch.arange(T, device=k.device)[None, :] <= i
    return scaled_dot_product(q_cls, k, v, mask=mask, dropout_p=dropout_p)


# ---------------------------------------------------------------------------------------
# Window attention with shifted windows  (Liu et al., Swin Transformer, 2021)
#
#   tokens on an H x W grid -> w x w windows -> attention inside each window:
#   O(T w^2) instead of O(T^2). Softmax(Q K^T / sqrt(d) + B) V with B = a learned bias
#   per head for each relative offset (dy, dx) in [-(w-1), w-1]^2: a (2w-1)^2 x heads table.
#   Shifted windows (every other block) roll the grid by -s so windows straddle the old
#   borders; the wrapped-around pieces are masked apart, so in original coordinates the
#   windows are the grid cut at rows s, s+w, s+2w, ... (smaller windows at the borders).
# ---------------------------------------------------------------------------------------

def _relative_index(window: tuple[int, int]) -> Tensor:
    """``(N, N)`` index into the ``(2wh-1)(2ww-1)`` bias table, ``N = wh * ww``."""
    wh, ww = window
    r = torch.arange(wh).repeat_interleave(ww)          # row of each window slot
    c = torch.arange(ww).repeat(wh)                     # column of each window slot
    dr = r[:, None] - r[None, :] + wh - 1               # in [0, 2wh-2]
    dc = c[:, None] - c[None, :] + ww - 1
    return dr * (2 * ww - 1) + dc


class WindowAttention(nn.Module):
    """Swin window attention on a token grid, with shifted windows and relative position bias.

    Tokens ``(B, T, C)`` are read as ``n_cls`` class tokens followed by an ``H x W`` grid
    in raster order. Each grid token attends only to the tokens of its window
    (``window_size`` ``w x w``); with ``shift = s`` the windows are moved by ``s`` tokens
    (``torch.roll`` plus Swin's mask for the wrapped regions). Alternate ``shift=0`` and
    ``shift=w // 2`` in consecutive blocks so information crosses window borders.

    Class tokens: each class token attends *globally* (to all ``T`` tokens, no position
    bias): it can still summarize the image, at O(T) cost per class token. Grid tokens do
    not attend to class tokens, so the grid part is exactly Swin.

    ``causal=True`` restricts every token further to tokens at or before it in raster
    order (class tokens come first).

    Args:
        dim, heads: model width and heads (``heads`` divides ``dim``).
        window_size: ``w`` or ``(wh, ww)``; must divide the grid.
        shift: ``s`` or ``(sh, sw)``, with ``0 <= s < w``.
        grid: ``(H, W)``; default: inferred as a square from the token count.
        cls_tokens: number of leading class tokens; default: inferred (see ``grid``: with
            ``grid`` given, ``T - H W``; else 0 if ``T`` is a square, 1 if ``T - 1`` is).
        causal, dropout: as :class:`MultiHeadAttention`.
        rel_pos_bias: learn the relative position bias table (Swin); a window axis may be
            ``None`` ("the whole grid axis", used by :class:`AxialAttention`) only without it.
    """

    def __init__(self, dim: int, heads: int, *, window_size: int | Sequence[int | None] = 4,
                 shift: int | Sequence[int] = 0, grid: int | Sequence[int] | None = None,
                 cls_tokens: int | None = None, causal: bool = False, dropout: float = 0.0,
                 qkv_bias: bool = True, rel_pos_bias: bool = True):
        super().__init__()
        who = "WindowAttention"
        self.head_dim = _check_heads(dim, heads, who)
        if isinstance(window_size, int):
            window_size = (window_size, window_size)
        if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
                or not all(w is None or (isinstance(w, int) and w >= 1) for w in window_size)):
            raise ValueError(
                f"{who}: window_size must be a positive int or a pair, got {window_size!r}"
            )
        self.window = tuple(window_size)
        self.shift = _pair(shift, "shift", who)
        self.grid = None if grid is None else _pair(grid, "grid", who)
        for w, s in zip(self.window, self.shift):
            if w is None and s:
                raise ValueError(
                    f"{who}: cannot shift along an axis whose window is the whole axis"
                )
            if w is not None and not 0 <= s < w:
                raise ValueError(f"{who}: shift must satisfy 0 <= shift < window_size, got "
                                 f"shift={self.shift}, window_size={self.window}")
        if cls_tokens is not None and (not isinstance(cls_tokens, int) or cls_tokens < 0):
            raise ValueError(
                f"{who}: cls_tokens must be a non-negative int or None, got {cls_tokens!r}"
            )
        self.dim, self.heads, self.cls_tokens = dim, heads, cls_tokens
        self.causal, self.dropout = causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(dropout)
        if rel_pos_bias:
            if None in self.window:
                raise ValueError(
                    f"{who}: rel_pos_bias needs a fixed window size, got {self.window}; "
                    f"pass integers (e.g. the grid size) or rel_pos_bias=False"
                )
            wh, ww = self.window
            self.rel_bias = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), heads))
            nn.init.trunc_normal_(self.rel_bias, std=0.02)
            self.register_buffer("rel_index", _relative_index(self.window), persistent=False)
        else:
            self.register_parameter("rel_bias", None)

    def _layout(self, T: int) -> tuple[tuple[int, int], tuple[int, int], int]:
        """``(window, grid, n_cls)`` for ``T`` tokens."""
        Hg, Wg, n_cls = _grid_layout(T, self.grid, self.cls_tokens, "WindowAttention")
        return self._resolve_window((Hg, Wg)), (Hg, Wg), n_cls

    def _resolve_window(self, grid: tuple[int, int]) -> tuple[int, int]:
        wh, ww = (w if w is not None else g for w, g in zip(self.window, grid))
        if grid[0] % wh or grid[1] % ww:
            raise ValueError(
                f"WindowAttention: window {(wh, ww)} must divide the grid {tuple(grid)}; pick "
                f"a window size that divides it (Swin pads the grid instead)"
            )
        return wh, ww

    def window_mask(self, grid: tuple[int, int], *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
        """Additive ``(nW, heads, N, N)`` mask of the windows: bias, ``-inf`` where cut apart.

        The shift mask: after rolling the grid by ``-s``, window slots hold original grid
        positions ``idx``; two slots may attend iff their original positions fall in the
        same cell of the grid cut at rows ``s, s + wh, s + 2 wh, ...`` (columns alike),
        which is exactly Swin's mask for the wrapped regions (0 when ``s = 0``). With
        ``causal``, also ``-inf`` where the key comes after the query in raster order.
        """
        Hg, Wg = grid
        window = self._resolve_window((Hg, Wg))
        wh, ww = window
        sh, sw = self.shift
        idx = torch.arange(Hg * Wg, device=device).view(1, Hg, Wg, 1)
        idx = torch.roll(idx, shifts=(-sh, -sw), dims=(1, 2))
        idx = window_partition(idx, window)[0, :, :, 0]          # (nW, N) original positions
        r, c = idx // Wg, idx % Wg
        gr = torch.where(r < sh, 0, (r - sh) // wh + 1)          # cell of the shifted cut
        gc = torch.where(c < sw, 0, (c - sw) // ww + 1)
        keep = (gr[:, :, None] == gr[:, None, :]) & (gc[:, :, None] == gc[:, None, :])
        if self.causal:                                          # raster order, original grid
            keep = keep & (idx[:, None, :] <= idx[:, :, None])
        mask = torch.zeros(keep.shape, device=device, dtype=dtype).masked_fill(~keep, float("-inf"))
        mask = mask[:, None]                                     # (nW, 1, N, N)
        if self.rel_bias is not None:
            N = wh * ww
            bias = self.rel_bias[self.rel_index.reshape(-1)].view(N, N, self.heads)
            mask = mask + bias.permute(2, 0, 1).to(dtype)[None]  # (nW, heads, N, N)
        else:
            mask = mask.expand(-1, self.heads, -1, -1)
        return mask

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) -> (B, T, C)`` with ``T = cls_tokens + H * W``."""
        _check_tokens(x, self.dim, "WindowAttention")
        B, T, C = x.shape
        window, (Hg, Wg), n_cls = self._layout(T)
        h, d, (sh, sw) = self.heads, self.head_dim, self.shift
        p_drop = self.dropout if self.training else 0.0
        qkv = self.qkv(x)                                        # (B, T, 3C)
        # 1. Grid tokens: roll, cut into windows; windows and heads share one batch-like
        #    axis (B, nW * heads, N, d) so the (nW, heads, N, N) mask broadcasts over B.
        g = qkv[:, n_cls:].reshape(B, Hg, Wg, 3 * C)
        if sh or sw:
            g = torch.roll(g, shifts=(-sh, -sw), dims=(1, 2))
        g = window_partition(g, window)                          # (B, nW, N, 3C)
        nW, N = g.shape[1], g.shape[2]
        q, k, v = g.view(B, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5).reshape(3, B, nW * h, N, d)
        mask = self.window_mask((Hg, Wg), device=x.device, dtype=_acc_dtype(x.dtype))
        y = scaled_dot_product(q, k, v, mask=mask.reshape(1, nW * h, N, N), dropout_p=p_drop)
        y = y.view(B, nW, h, N, d).transpose(2, 3).reshape(B, nW, N, C)
        y = window_merge(y, window, (Hg, Wg))                    # (B, H, W, C)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(1, 2))
        y = y.reshape(B, Hg * Wg, C)
        # 2. Class tokens attend globally.
        if n_cls:
            q, k, v = qkv.view(B, T, 3, h, d).permute(2, 0, 3, 1, 4)
            yc = _cls_attention(q[:, :, :n_cls], k, v, self.causal, p_drop)
            y = torch.cat([yc.transpose(1, 2).reshape(B, n_cls, C), y], dim=1)
        return self.out_drop(self.proj(y))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, window_size={self.window}, "
                f"shift={self.shift}, grid={self.grid}, causal={self.causal}")


class SwinAttention:
    """A factory of :class:`WindowAttention` layers with Swin's alternating shifts.

    Swin alternates regular windows (``shift=0``) and shifted windows (``shift=w // 2``)
    in consecutive blocks. Models build one attention layer per block by calling their
    ``attn`` factory in block order, so this factory hands out ``shift=0`` on its 1st,
    3rd, 5th ... call and ``shift=w // 2`` on the others::

        vit = ml.models.ViT(depth=4, attn=SwinAttention(window_size=4, grid=(8, 8)))

    The count restarts at 0 when :meth:`reset` is called; a model of even depth built
    twice gets the same layout each time.

    Args:
        window_size: ``w`` (or ``(wh, ww)``); the shift is ``w // 2`` per axis.
        **kwargs: passed on to :class:`WindowAttention` (``grid``, ``rel_pos_bias`` ...).
    """

    def __init__(self, window_size: int | Sequence[int] = 4, **kwargs):
        if "shift" in kwargs:
            raise ValueError("SwinAttention chooses the shift itself (0, then w // 2); "
                             "use WindowAttention for a fixed shift")
        self.window_size, self.kwargs, self.calls = window_size, kwargs, 0

    def reset(self) -> None:
        """Start again with an unshifted layer."""
        self.calls = 0

    def __call__(self, dim: int, heads: int, **kwargs) -> WindowAttention:
        wh, ww = _pair(self.window_size, "window_size", "SwinAttention")
        shift = (0, 0) if self.calls % 2 == 0 else (wh // 2, ww // 2)
        self.calls += 1
        return WindowAttention(dim, heads, window_size=(wh, ww), shift=shift,
                               **(self.kwargs | kwargs))

    def __repr__(self) -> str:
        return f"SwinAttention(window_size={self.window_size}, {self.kwargs})"


def window_dense_mask(m: WindowAttention, T: int) -> Tensor:
    """The ``(heads, T, T)`` additive mask of window attention ``m`` as one dense matrix.

    The reference for :class:`WindowAttention` (and each step of :class:`AxialAttention`):
    full attention over all ``T`` tokens with ``m``'s projections and this mask equals
    ``m(x)``. Built independently of :meth:`WindowAttention.window_mask`, with the
    official Swin rule: grid token ``i`` sees grid token ``j`` iff, after
    ``torch.roll(-shift)``, both sit in the same window *and* the same region (each axis
    cut into ``[0, n - w)``, ``[n - w, n - s)``, ``[n - s, n)``, so wrapped-around tokens
    stay apart); then

        M_ij = B[r_i - r_j, c_i - c_j]  (relative bias)  if i sees j,  -inf otherwise

    Grid tokens do not see class tokens; class-token rows are 0 (global). With
    ``m.causal`` also ``-inf`` where key ``j`` comes after query ``i`` (raster order,
    class tokens first). On the device and in the dtype of ``m``'s parameters. Notebook 3.3.
    """
    w = m.qkv.weight
    dev, dtype = w.device, w.dtype
    Hg, Wg, n_cls = _grid_layout(T, m.grid, m.cls_tokens, "window_dense_mask")
    (wh, ww), (sh, sw) = m._resolve_window((Hg, Wg)), m.shift
    r = torch.arange(Hg, device=dev).repeat_interleave(Wg)  # (H W,): row of each grid token
    c = torch.arange(Wg, device=dev).repeat(Hg)             # and its column
    rr, rc = (r - sh) % Hg, (c - sw) % Wg                    # where the roll moves it
    win = (rr // wh) * (Wg // ww) + rc // ww                 # its window after the roll

    def region(x: Tensor, n: int, w_: int, s_: int) -> Tensor:
        return torch.where(x < n - w_, 0, torch.where(x < n - s_, 1, 2))

    label = region(rr, Hg, wh, sh) * 3 + region(rc, Wg, ww, sw)
    keep = (win[:, None] == win[None, :]) & (label[:, None] == label[None, :])  # (H W, H W)
    bias = torch.zeros(m.heads, Hg * Wg, Hg * Wg, dtype=dtype, device=dev)
    if m.rel_bias is not None:                     # cut-apart pairs may be far apart: clamp
        dr = (r[:, None] - r[None, :]).clamp(-(wh - 1), wh - 1) + wh - 1
        dc = (c[:, None] - c[None, :]).clamp(-(ww - 1), ww - 1) + ww - 1
        bias = bias + m.rel_bias[dr * (2 * ww - 1) + dc].permute(2, 0, 1).to(dtype)
    mask = torch.zeros(m.heads, T, T, dtype=dtype, device=dev)
    mask[:, n_cls:, :n_cls] = float("-inf")       # grid tokens do not see class tokens
    mask[:, n_cls:, n_cls:] = bias.masked_fill(~keep, float("-inf"))
    if m.causal:                                  # raster order, class tokens first
        idx = torch.arange(T, device=dev)
        mask = mask.masked_fill(idx[None, :] > idx[:, None], float("-inf"))
    return mask


class AxialAttention(nn.Module):
    """Axial attention: attention along each row, then along each column (Ho et al., 2019).

    Each grid token first mixes with its row (``W`` tokens), then with its column
    (``H`` tokens): after both steps every token has seen the whole grid, at cost
    O(T (H + W)) instead of O(T^2). Each step is a :class:`WindowAttention` whose window
    is a full row, ``(1, W)``, or a full column, ``(H, 1)``, with its own projections;
    class tokens attend globally in each step (see :class:`WindowAttention`).

    Args:
        dim, heads, causal, dropout: as :class:`MultiHeadAttention`. With ``causal``
            each step is causal in raster order, so no token sees a later one.
        grid, cls_tokens: as :class:`WindowAttention`.
        rel_pos_bias: learn a relative position bias along each axis; needs ``grid``.
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0,
                 grid: int | Sequence[int] | None = None, cls_tokens: int | None = None,
                 qkv_bias: bool = True, rel_pos_bias: bool = False):
        super().__init__()
        if rel_pos_bias and grid is None:
            raise ValueError("AxialAttention: rel_pos_bias=True needs grid=(H, W)")
        Hg, Wg = _pair(grid, "grid", "AxialAttention") if grid is not None else (None, None)
        common = dict(grid=grid, cls_tokens=cls_tokens, causal=causal, dropout=dropout,
                      qkv_bias=qkv_bias, rel_pos_bias=rel_pos_bias)
        self.row = WindowAttention(dim, heads, window_size=(1, Wg), **common)
        self.col = WindowAttention(dim, heads, window_size=(Hg, 1), **common)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        return self.col(self.row(x))


# ---------------------------------------------------------------------------------------
# Linear attention  (Katharopoulos et al., "Transformers are RNNs", 2020)
#
#   softmax(q k^T) is replaced by a kernel phi(q) . phi(k) with phi >= 0 (phi = elu + 1):
#   o_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j)
#       = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j))
#   The bracket is a D x Dv state shared by all queries: O(T D Dv) instead of O(T^2 D).
#   Causal: the sums run over j <= i, a running state, i.e. an RNN.
# ---------------------------------------------------------------------------------------

def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, eps: float = 1e-6,
                     chunk_size: int = 64) -> Tensor:
    """``(phi(Q) phi(K)^T masked, row-normalized) V`` without forming the ``(T, T)`` matrix.

    Args:
        q, k: ``(B, H, T, D)`` *feature-mapped* queries and keys (non-negative, e.g.
            ``F.elu(x) + 1``); v: ``(B, H, T, Dv)``.
        causal: only keys ``j <= i``. Computed chunk by chunk: inside a chunk of
            ``chunk_size`` tokens the masked product is formed directly (chunk^2), across
            chunks a running state ``S = sum phi(k) v^T`` (``D x Dv``) and ``z = sum phi(k)``
            carries the past: memory O(T D + chunk^2 + D Dv) per head, no ``(T, D, Dv)``
            cumulative sum.
        eps: added to the normalizer ``phi(q_i) . sum_j phi(k_j)``.

    Returns:
        ``(B, H, T, Dv)``.
    """
    _check_qkv(q, k, v, "linear_attention", gqa=False)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"linear_attention: q and k must have the same length, got "
                         f"{q.shape[2]} and {k.shape[2]}")
    acc_t = _acc_dtype(q.dtype)
    q, k, v_in = q.to(acc_t), k.to(acc_t), v
    v = v.to(acc_t)
    if not causal:
        kv = k.transpose(-2, -1) @ v                         # (B, H, D, Dv): sum_j phi(k_j) v_j^T
        z = k.sum(dim=-2)                                    # (B, H, D):     sum_j phi(k_j)
        num = q @ kv
        den = q @ z[..., None]                               # (B, H, T, 1)
        return (num / (den + eps)).to(v_in.dtype)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"linear_attention: chunk_size must be a positive int, got {chunk_size!r}")
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1])                    # state of the chunks before
    z = q.new_zeros(B, H, D, 1)
    outs = []
    for cs in range(0, T, chunk_size):
        ce = cs + chunk_size
        qc, kc, vc = q[:, :, cs:ce], k[:, :, cs:ce], v[:, :, cs:ce]
        a = (qc @ kc.transpose(-2, -1)).tril()               # within the chunk: j <= i
        num = qc @ S + a @ vc
        den = qc @ z + a.sum(dim=-1, keepdim=True)
        outs.append(num / (den + eps))
        S = S + kc.transpose(-2, -1) @ vc                    # then fold the chunk into the state
        z = z + kc.sum(dim=-2)[..., None]
    return torch.cat(outs, dim=2).to(v_in.dtype)


def inline_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """InLine attention (Han et al., "Bridging the Divide", NeurIPS 2024): injective linear attention.

    Plain linear attention divides by ``phi(q_i) . sum_j phi(k_j)``, so ``q`` and ``2 q``
    give the same weights: the map from queries to attention rows is not injective.
    InLine normalizes by *subtraction* instead, with ``s = scale`` (default ``1/sqrt(D)``)::

        w_ij = 1/N + s (q_i . k_j - q_i . kbar) / N,      kbar = mean_j k_j

    Every row still sums to 1, but the weights change with the length of ``q_i`` (and
    may be negative, so ``q, k`` need no non-negative feature map). In O(N) form::

        o_i = (s/N) q_i^T (K^T V) + (1 - s q_i . kbar) vbar,   vbar = mean_j v_j

    Args:
        q, k: ``(B, H, N, D)`` (feature-mapped or raw); v: ``(B, H, N, Dv)``.
        scale: ``s``; default ``1 / sqrt(D)``.

    Returns:
        ``(B, H, N, Dv)``. Non-causal only.
    """
    _check_qkv(q, k, v, "inline_attention", gqa=False)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"inline_attention: q and k must have the same length, got "
                         f"{q.shape[2]} and {k.shape[2]}")
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    acc_t = _acc_dtype(q.dtype)
    q, k, v_in = q.to(acc_t), k.to(acc_t), v
    v = v.to(acc_t)
    n = k.shape[2]
    kv = k.transpose(-2, -1) @ v                             # (B, H, D, Dv)
    kbar, vbar = k.mean(dim=2, keepdim=True), v.mean(dim=2, keepdim=True)
    out = (q @ kv) * (s / n) + (1.0 - s * (q @ kbar.transpose(-2, -1))) * vbar
    return out.to(v_in.dtype)


def linear_attention_weights(q: Tensor, k: Tensor, causal: bool = False, eps: float = 1e-6,
                             normalize: str = "divide", scale: float | None = None) -> Tensor:
    """The ``(B, H, T, T)`` attention matrix that linear attention applies implicitly.

    ``normalize="divide"``: ``A_ij = phi(q_i) . phi(k_j) / (sum_j' phi(q_i) . phi(k_j') + eps)``
    (pass feature-mapped ``q, k``), so that ``A @ v`` equals :func:`linear_attention`.
    ``normalize="inline"``: the weights of :func:`inline_attention`. For analysis (rank,
    entropy, plots) of short sequences only: it costs the O(T^2) the method avoids.
    """
    _check_qkv(q, k, k, "linear_attention_weights", gqa=False)
    acc_t = _acc_dtype(q.dtype)
    qa, ka = q.to(acc_t), k.to(acc_t)
    if normalize == "inline":
        if causal:
            raise ValueError("linear_attention_weights: normalize='inline' is non-causal only")
        s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        n = k.shape[2]
        a = qa @ ka.transpose(-2, -1)
        w = 1.0 / n + s * (a - a.mean(dim=-1, keepdim=True)) / n
        return w.to(q.dtype)
    if normalize != "divide":
        raise ValueError(f"linear_attention_weights: normalize must be 'divide' or 'inline', "
                         f"got {normalize!r}")
    a = qa @ ka.transpose(-2, -1)
    if causal:
        a = a.tril()
    return (a / (a.sum(dim=-1, keepdim=True) + eps)).to(q.dtype)


def focused_feature_map(x: Tensor, power: float = 3.0, eps: float = 1e-6) -> Tensor:
    """The "focused" feature map of FLatten Transformer (Han et al., ICCV 2023).

    ``f(x) = ||r|| * r^p / ||r^p||`` with ``r = relu(x)``: the same norm as ``relu(x)`` but
    a direction pushed towards its largest coordinates, so that ``f(q) . f(k)`` is larger
    for similar pairs and smaller for dissimilar ones: sharper ("focused") attention rows,
    which plain ``elu + 1`` features cannot produce.
    """
    r = F.relu(x) + eps
    rp = r ** power
    return rp * (r.norm(dim=-1, keepdim=True) / rp.norm(dim=-1, keepdim=True))


_FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {
    "elu": lambda x: F.elu(x) + 1.0,                         # Katharopoulos et al.: > 0
    "relu": F.relu,                                          # >= 0 (eps guards 0 / 0); SLAB
    "focused": focused_feature_map,                          # FLatten: relu, sharpened
    "identity": lambda x: x,                                 # InLine only (may be negative)
}


class LinearAttention(nn.Module):
    """Multi-head linear attention with feature map ``phi`` (Katharopoulos et al., 2020).

    Projections as :class:`MultiHeadAttention` (``qkv``, ``proj``), then
    :func:`linear_attention` on ``phi(q), phi(k), v``. No attention matrix exists, so
    ``dropout`` applies to the output only.

    Two fixes of plain linear attention are options (see chapter 3.3):

    * ``normalize="inline"``: InLine attention (Han et al., "Bridging the Divide", 2024),
      :func:`inline_attention`: subtraction instead of division makes the attention rows
      an injective function of the query; use it with ``feature_map="identity"``.
    * ``local_kernel=k``: a depthwise ``k x k`` convolution of ``V`` on the token grid,
      added to the output before ``proj``: ``y = LinAttn(q, k, v) + DWConv(v)``. The
      implied attention matrix has rank at most the head dim; the convolution adds a
      full-rank local term and the locality linear attention lacks (FLatten, InLine; SLAB's
      "simplified linear attention" is ``feature_map="relu", local_kernel=3``; Guo et al.,
      ICML 2024). Class tokens get no convolution term. InLine predicts its 3 x 3 kernel
      from the input; here it is a plain learned kernel, as in SLAB.

    Args:
        dim, heads, causal, dropout: as :class:`MultiHeadAttention`.
        feature_map: ``"elu"`` (``elu(x) + 1``, the paper's), ``"relu"``, ``"focused"``
            (:func:`focused_feature_map`), ``"identity"`` (only with ``"inline"``), or a
            callable returning features of the same shape.
        eps, chunk_size: as :func:`linear_attention`.
        normalize: ``"divide"`` (the paper's) or ``"inline"`` (non-causal only).
        local_kernel: odd kernel size of the depthwise convolution on ``V``, or ``None``.
        grid, cls_tokens: the token layout for ``local_kernel``, as :class:`WindowAttention`.
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0,
                 feature_map: str | Callable[[Tensor], Tensor] = "elu", eps: float = 1e-6,
                 chunk_size: int = 64, qkv_bias: bool = True, normalize: str = "divide",
                 local_kernel: int | None = None, grid: int | Sequence[int] | None = None,
                 cls_tokens: int | None = None):
        super().__init__()
        who = "LinearAttention"
        self.head_dim = _check_heads(dim, heads, who)
        if callable(feature_map):
            self.phi = feature_map
        elif feature_map in _FEATURE_MAPS:
            self.phi = _FEATURE_MAPS[feature_map]
        else:
            raise ValueError(f"{who}: feature_map must be one of "
                             f"{sorted(_FEATURE_MAPS)} or a callable, got {feature_map!r}")
        if normalize not in ("divide", "inline"):
            raise ValueError(f"{who}: normalize must be 'divide' or 'inline', got {normalize!r}")
        if normalize == "inline" and causal:
            raise ValueError(f"{who}: normalize='inline' subtracts the mean over all keys, "
                             f"so it has no causal version here; use normalize='divide'")
        if feature_map == "identity" and normalize == "divide":
            raise ValueError(f"{who}: feature_map='identity' can make the normalizer "
                             f"phi(q) . sum phi(k) zero or negative; use it with "
                             f"normalize='inline', or pick 'elu', 'relu', 'focused'")
        if local_kernel is not None:
            if not isinstance(local_kernel, int) or local_kernel < 1 or local_kernel % 2 == 0:
                raise ValueError(f"{who}: local_kernel must be a positive odd int or None, "
                                 f"got {local_kernel!r}")
            if causal:
                raise ValueError(f"{who}: the local convolution looks in every direction, so "
                                 f"local_kernel needs causal=False")
        self.feature_map = feature_map if isinstance(feature_map, str) else "custom"
        self.dim, self.heads, self.causal = dim, heads, causal
        self.eps, self.chunk_size, self.normalize = eps, chunk_size, normalize
        self.grid = None if grid is None else _pair(grid, "grid", who)
        self.cls_tokens = cls_tokens
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(dropout)
        self.local_kernel = local_kernel
        self.local = (None if local_kernel is None else
                      nn.Conv2d(dim, dim, local_kernel, padding=local_kernel // 2, groups=dim))

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``phi(q), phi(k), v``, each ``(B, heads, T, head_dim)``."""
        _check_tokens(x, self.dim, "LinearAttention")
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.phi(q), self.phi(k), v

    def weights(self, x: Tensor) -> Tensor:
        """The implied ``(B, heads, T, T)`` attention matrix of the global part (no conv).

        For analysis of short sequences: see :func:`linear_attention_weights`.
        """
        fq, fk, _ = self._qkv(x)
        return linear_attention_weights(fq, fk, causal=self.causal, eps=self.eps,
                                        normalize=self.normalize)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        fq, fk, v = self._qkv(x)
        B, T, C = x.shape
        if self.normalize == "inline":
            y = inline_attention(fq, fk, v)
        else:
            y = linear_attention(fq, fk, v, causal=self.causal, eps=self.eps,
                                 chunk_size=self.chunk_size)
        y = y.transpose(1, 2).reshape(B, T, C)
        if self.local is not None:
            Hg, Wg, n_cls = _grid_layout(T, self.grid, self.cls_tokens, "LinearAttention")
            vg = v.transpose(1, 2).reshape(B, T, C)[:, n_cls:]          # heads merged
            conv = self.local(vg.transpose(1, 2).reshape(B, C, Hg, Wg)).flatten(2).transpose(1, 2)
            y = torch.cat([y[:, :n_cls], y[:, n_cls:] + conv], dim=1)
        return self.out_drop(self.proj(y))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, causal={self.causal}, "
                f"feature_map={self.feature_map!r}, normalize={self.normalize!r}, "
                f"local_kernel={self.local_kernel}")


# ---------------------------------------------------------------------------------------
# PoolFormer's token mixer  (Yu et al., "MetaFormer Is Actually What You Need", 2022)
#
#   mixer(x) = AvgPool_{k x k}(x) - x        on the token grid; no parameters at all.
#   (- x because the block adds x back: x + mixer(x) = AvgPool(x).)
# ---------------------------------------------------------------------------------------

class PoolingMixer(nn.Module):
    """Average pooling as a token mixer: ``AvgPool(x) - x`` on the grid, no parameters.

    Pooling counts only tokens inside the grid at the borders (``count_include_pad=False``,
    as PoolFormer). Class tokens get the mean of all grid tokens minus themselves (so the
    residual block turns them into a global average pool). ``heads`` is accepted for
    plug-compatibility and ignored; pooling looks both ways, so ``causal=True`` is refused.

    Args:
        dim: token width (checked). pool_size: odd pooling window.
        grid, cls_tokens: as :class:`WindowAttention`.
    """

    def __init__(self, dim: int, heads: int | None = None, *, causal: bool = False,
                 dropout: float = 0.0, pool_size: int = 3,
                 grid: int | Sequence[int] | None = None, cls_tokens: int | None = None):
        super().__init__()
        if causal:
            raise ValueError("PoolingMixer: pooling mixes a 2-D neighbourhood in every "
                             "direction, so it has no causal version; use causal=False")
        if not isinstance(pool_size, int) or pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(
                f"PoolingMixer: pool_size must be a positive odd int, got {pool_size!r}"
            )
        self.dim, self.pool_size, self.cls_tokens = dim, pool_size, cls_tokens
        self.grid = None if grid is None else _pair(grid, "grid", "PoolingMixer")
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2,
                                 count_include_pad=False)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) -> (B, T, C)``."""
        _check_tokens(x, self.dim, "PoolingMixer")
        B, T, C = x.shape
        Hg, Wg, n_cls = _grid_layout(T, self.grid, self.cls_tokens, "PoolingMixer")
        g = x[:, n_cls:].transpose(1, 2).reshape(B, C, Hg, Wg)
        y = (self.pool(g) - g).flatten(2).transpose(1, 2)
        if n_cls:
            cls = x[:, :n_cls]
            y = torch.cat([x[:, n_cls:].mean(dim=1, keepdim=True) - cls, y], dim=1)
        return self.out_drop(y)


# ---------------------------------------------------------------------------------------
# Channel attention for CNNs: reweight the C channels of a (B, C, H, W) feature map
#
#   SE  (Hu et al., 2018):  s = sigmoid(W2 relu(W1 mean_hw(x)))      W1: C -> C/r, W2: C/r -> C
#   ECA (Wang et al., 2020): s = sigmoid(conv1d_k(mean_hw(x)))       k neighbouring channels,
#                            k = |(log2 C + b) / gamma| rounded up to odd, no reduction
#   y = x * s[:, :, None, None]
# ---------------------------------------------------------------------------------------

def _check_feature_map(x: Tensor, channels: int, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{who} expects a (B, C, H, W) feature map with C = {channels}, got {shape}"
        )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al., 2018): ``(B, C, H, W)`` -> same.

    Squeeze: global average pool to ``(B, C)``. Excite: a bottleneck MLP
    ``C -> max(1, C // reduction) -> C`` with ReLU then sigmoid gives one gate per channel.
    About ``2 C^2 / reduction`` parameters per block.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if not all(isinstance(n, int) and n >= 1 for n in (channels, reduction)):
            raise ValueError(f"SqueezeExcite: channels and reduction must be positive ints, "
                             f"got {channels!r}, {reduction!r}")
        self.channels = channels
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels, "SqueezeExcite")
        s = x.mean(dim=(2, 3))                               # squeeze: (B, C)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))     # excite: a gate in (0, 1) per channel
        return x * s[:, :, None, None]


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size: ``t = int(|(log2 C + b) / gamma|)``, made odd (``t + 1``)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient channel attention (Wang et al., 2020): ``(B, C, H, W)`` -> same.

    Like :class:`SqueezeExcite` without the bottleneck: each channel's gate is a 1-D
    convolution over the ``k`` neighbouring pooled channels (zero-padded at the ends),
    ``k`` = :func:`eca_kernel_size` ``(C, gamma, b)`` unless ``kernel_size`` is given.
    Only ``k`` parameters.
    """

    def __init__(self, channels: int, gamma: float = 2, b: float = 1,
                 kernel_size: int | None = None):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ECA: channels must be a positive int, got {channels!r}")
        k = eca_kernel_size(channels, gamma, b) if kernel_size is None else kernel_size
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(f"ECA: kernel_size must be a positive odd int, got {k!r}")
        self.channels, self.kernel_size = channels, k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, self.channels, "ECA")
        s = x.mean(dim=(2, 3))[:, None, :]                   # (B, 1, C): channels as a sequence
        s = torch.sigmoid(self.conv(s))[:, 0]                # (B, C)
        return x * s[:, :, None, None]
