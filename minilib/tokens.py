"""Chapter 4: token pruning and merging, fewer tokens for (nearly) the same answer.

A ViT block costs ``24 N C^2`` FLOPs in its projections and MLP (with ``mlp_ratio = 4``;
``16 N C^2`` with ratio 2) and ``4 N^2 C`` in attention, for ``N`` tokens of width ``C``:
every token removed early saves work in every later block. This module removes tokens
from a *trained* ViT, between a block's attention and its MLP, as EViT and ToMe do.

Sections (each opens with its equations):

1. Scores: :func:`cls_attention`, the class token's attention row, from the block's own
   queries and keys (``F.scaled_dot_product_attention`` returns no weights).
2. Pruning: :func:`topk_by_attention` (keep the ``keep`` most attended patch tokens),
   :func:`fuse_pruned` (EViT: plus one token fusing the pruned ones), :func:`uniform_grid`
   (FEATHER's uniformly sampled tokens, kept whatever their score).
3. Merging: :func:`bipartite_merge` (ToMe's bipartite soft matching, size-weighted
   averages, proportional attention afterwards).
4. :class:`PrunedViT`: a trained ``ml.models.ViT`` run with a *schedule* of reductions,
   and :func:`keep_schedule` for staged pruning (EViT, PyramidDrop, FEATHER).

Conventions: token tensors are ``(B, 1 + N, C)`` with the class token first and ``N``
patch tokens; an ``index`` holds positions ``0 .. N - 1`` of patch tokens (class token
excluded), ascending, so kept tokens stay in image order; ``size`` ``(B, T, 1)`` counts
the original tokens each token stands for. A keep or r outside what the tokens allow
raises a ``ValueError`` (ToMe clamps ``r`` silently; a page that sweeps it must not
measure a clamped value). Notebooks 4.1 (cost), 4.2 (methods), 4.3 (results).

References: Liang et al., EViT, ICLR 2022; Bolya et al., ToMe, ICLR 2023; Rao et al.,
DynamicViT, NeurIPS 2021; Xing et al., PyramidDrop, CVPR 2025; Endo et al., FEATHER,
ICCV 2025.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["METHODS", "cls_attention", "topk_by_attention", "fuse_pruned", "uniform_grid",
           "bipartite_merge", "keep_schedule", "PrunedViT", "vit_p2", "CHAPTER_METHODS",
           "chapter_stages", "chapter_schedule", "chapter_points", "finetuned", "cifar_loader",
           "correct", "finetune"]

METHODS: tuple[str, ...] = ("topk", "fuse", "feather", "merge")


def _is_count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


# ---------------------------------------------------------------------------------------
# 1. Scores: what the class token looks at
#
#     a_i = mean_h softmax_j(q_0 . k_j / sqrt(d) + log s_j)[i],   i = 1 .. N
#
# q_0 is the class token's query; the log-size term is ToMe's proportional attention
# (0 when every token stands for one patch). EViT calls the tokens with large a_i
# "attentive".
# ---------------------------------------------------------------------------------------

def _check_qk(q: Tensor, k: Tensor, size: Tensor | None) -> None:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"cls_attention: q and k must both be (B, heads, T, d); got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if size is not None and tuple(size.shape) != (q.shape[0], q.shape[2], 1):
        raise ValueError(f"cls_attention: size must be (B, T, 1) = ({q.shape[0]}, {q.shape[2]}, 1); "
                         f"got {tuple(size.shape)}")


def cls_attention(q: Tensor, k: Tensor, size: Tensor | None = None) -> Tensor:
    """The class token's attention to the patch tokens, averaged over heads (EViT's score).

        a = mean_h softmax(q_0 K^T / sqrt(d) + log size)[1:]

    q, k: (B, heads, 1 + N, d), the block's own queries and keys; size: (B, 1 + N, 1) or
    None. Returns a (B, N); each row sums to 1 minus the class token's weight on itself.
    Costs one (1 x T) score row per head: the full T x T matrix is never formed.
    """
    _check_qk(q, k, size)
    s = q[:, :, :1] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])   # (B, H, 1, T): row 0 of the scores
    if size is not None:
        s = s + size.log().view(size.shape[0], 1, 1, -1)            # proportional attention
    return s.softmax(dim=-1)[:, :, 0, 1:].mean(dim=1)               # (B, N): drop the class token's column


# ---------------------------------------------------------------------------------------
# 2. Pruning by attention: keep the attentive tokens (and fuse the rest)
#
#     I = top-k_i a_i                                      (the kept patch positions)
#     x' = [x_0; x_i for i in I]                           topk_by_attention
#     x' = [x_0; x_i for i in I; sum_{j not in I} a_j x_j / sum_{j not in I} a_j]   fuse_pruned
# ---------------------------------------------------------------------------------------

def _check_keep(x: Tensor, cls_attn: Tensor, keep: int, who: str) -> None:
    if x.dim() != 3 or x.shape[1] < 1:
        raise ValueError(f"{who}: x must be tokens (B, 1 + N, C) with the class token first; "
                         f"got {tuple(x.shape)}")
    B, N = x.shape[0], x.shape[1] - 1
    if tuple(cls_attn.shape) != (B, N):
        raise ValueError(f"{who}: cls_attn must be (B, N) = ({B}, {N}), one score per patch token "
                         f"(class token excluded); got {tuple(cls_attn.shape)}")
    if not _is_count(keep) or not 0 <= keep <= N:
        raise ValueError(f"{who}: keep={keep!r} is not a number of patch tokens in [0, N = {N}]")


def topk_by_attention(x: Tensor, cls_attn: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """Keep the class token and the ``keep`` patch tokens it attends to most (EViT, DynamicViT).

        index = top-keep positions of cls_attn, in ascending order;  x' = [x_0; x_(1 + index)]

    x: (B, 1 + N, C), cls_attn: (B, N). Returns x' (B, 1 + keep, C) and index (B, keep).
    keep = N returns the tokens unchanged (index = 0 .. N - 1).
    """
    _check_keep(x, cls_attn, keep, "topk_by_attention")
    index = cls_attn.topk(keep, dim=1).indices.sort(dim=1).values           # (B, keep): attentive tokens
    kept = x[:, 1:].gather(1, index[..., None].expand(-1, -1, x.shape[-1]))  # (B, keep, C)
    return torch.cat([x[:, :1], kept], dim=1), index


def fuse_pruned(x: Tensor, cls_attn: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """EViT's token fusion: :func:`topk_by_attention` plus one token for everything pruned.

        x_fused = sum_{j pruned} a_j x_j / sum_{j pruned} a_j     (appended last)

    x: (B, 1 + N, C), cls_attn: (B, N). Returns (B, 2 + keep, C) and index (B, keep); with
    keep = N nothing is pruned, nothing is fused: (B, 1 + N, C). EViT's code sums
    a_j x_j without dividing by sum a_j; the average keeps the fused token on the scale of
    the others.
    """
    x_kept, index = topk_by_attention(x, cls_attn, keep)
    if keep == cls_attn.shape[1]:
        return x_kept, index
    w = cls_attn.scatter(1, index, 0.0)                               # (B, N): a_j of the pruned only
    total = w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)  # (B, 1)
    fused = (w / total)[:, None, :] @ x[:, 1:]                              # (B, 1, C): the weighted average
    return torch.cat([x_kept, fused], dim=1), index


def uniform_grid(grid: Sequence[int], stride: int, device: torch.device | str | None = None) -> Tensor:
    """Positions of every ``stride``-th row and column of an ``(H, W)`` patch grid (FEATHER).

        index = {r W + c : r = 0, s, 2s, ...;  c = 0, s, 2s, ...}      -> (ceil(H/s) ceil(W/s),)

    FEATHER keeps these tokens whatever their score, so pruning cannot empty a region.
    """
    H, W = grid
    if not (_is_count(stride) and stride >= 1):
        raise ValueError(f"uniform_grid: stride must be an int >= 1; got {stride!r}")
    rows, cols = torch.arange(0, H, stride, device=device), torch.arange(0, W, stride, device=device)
    return (rows[:, None] * W + cols[None, :]).flatten()


# ---------------------------------------------------------------------------------------
# 3. Merging: ToMe's bipartite soft matching
#
#     A = tokens 0, 2, 4, ... (the class token is A's first),  B = tokens 1, 3, 5, ...
#     s_ij = cos(m_i, m_j)  for i in A, j in B;   each i picks j*(i) = argmax_j s_ij
#     the r tokens i with the largest s_ij* merge into j*:  x_j <- sum size_t x_t / sum size_t
#     afterwards, attention adds log(size_j) to the logits (proportional attention)
# ---------------------------------------------------------------------------------------

def _check_merge(x: Tensor, r: int, metric: Tensor | None, size: Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"bipartite_merge: x must be tokens (B, T, C); got {tuple(x.shape)}")
    B, T = x.shape[:2]
    if not _is_count(r) or not 0 <= r <= (T - 1) // 2:
        raise ValueError(f"bipartite_merge: r={r!r} is outside [0, (T - 1) // 2 = {(T - 1) // 2}] "
                         f"for T = {T} tokens: each token of the even half merges at most once and "
                         f"the class token never; spread the merging over more blocks")
    if metric is not None and (metric.dim() != 3 or tuple(metric.shape[:2]) != (B, T)):
        raise ValueError(f"bipartite_merge: metric must be (B, T, C') = ({B}, {T}, C'); "
                         f"got {tuple(metric.shape)}")
    if size is not None and tuple(size.shape) != (B, T, 1):
        raise ValueError(f"bipartite_merge: size must be (B, T, 1) = ({B}, {T}, 1); got {tuple(size.shape)}")


def bipartite_merge(x: Tensor, r: int, metric: Tensor | None = None,
                    size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Merge away ``r`` tokens by bipartite soft matching (ToMe); the class token never merges.

        sim = cos(m_A, m_B);  the r best-matched A tokens join their partner in B
        x' = merge(size * x) / merge(size),   size' = merge(size)     (merge: sum into partner)

    x: (B, T, C); metric: (B, T, C') that decides the matching (default x; ToMe uses the
    keys averaged over heads), not differentiated; size: (B, T, 1), default ones.
    Returns x' (B, T - r, C), the unmerged A tokens in order (class token first) then
    B, and size' (B, T - r, 1). r = 0 returns x and size unchanged.
    """
    _check_merge(x, r, metric, size)
    size = torch.ones_like(x[..., :1]) if size is None else size
    if r == 0:
        return x, size
    m = (x if metric is None else metric).detach()
    m = m / m.norm(dim=-1, keepdim=True)
    sim = m[:, ::2] @ m[:, 1::2].transpose(1, 2)         # (B, |A|, |B|): cosine similarity s_ij
    sim[:, 0] = -math.inf                                  # the class token (first of A) never merges
    best, dst = sim.max(dim=-1)                            # (B, |A|): best s_ij and partner j* of each i
    order = best.argsort(dim=-1, descending=True)          # (B, |A|): most similar first
    src, unm = order[:, :r], order[:, r:].sort(dim=-1).values   # (B, r) merged, (B, |A| - r) kept, in order
    dst = dst.gather(1, src)                               # (B, r): the partner in B of each merged token

    def merge(t: Tensor) -> Tensor:                        # (B, T, c) -> (B, T - r, c): sum into partners
        a, b, c = t[:, ::2], t[:, 1::2], t.shape[-1]
        b = b.scatter_add(1, dst[..., None].expand(-1, -1, c), a.gather(1, src[..., None].expand(-1, -1, c)))
        return torch.cat([a.gather(1, unm[..., None].expand(-1, -1, c)), b], dim=1)

    size_new = merge(size)
    return merge(x * size) / size_new, size_new


# ---------------------------------------------------------------------------------------
# 4. PrunedViT: a trained ViT with a schedule of reductions
#
#     block b:  x = x + Attn(LN1(x));   x = reduce_b(x);   x = x + MLP(LN2(x))
# ---------------------------------------------------------------------------------------

def keep_schedule(method: str, num_patches: int, blocks: Sequence[int],
                  keep_rate: float) -> dict[int, tuple[str, int]]:
    """Staged pruning: at each of ``blocks`` keep ``ceil(keep_rate * n)`` of the n patch tokens.

        EViT: ("fuse", 0.7 at blocks 3, 6, 9 of 12);  PyramidDrop: ("topk", 0.5 at each stage end)

    A fused token joins the candidates of the next stage (as in EViT). Returns
    {block: (method, keep)} for :class:`PrunedViT`.
    """
    if not 0.0 <= keep_rate <= 1.0:
        raise ValueError(f"keep_schedule: keep_rate={keep_rate} is a fraction in [0, 1]")
    n, schedule = num_patches, {}
    for b in blocks:
        keep = math.ceil(keep_rate * n - 1e-9)   # ceil, robust to 0.7 * 10 = 7.000000000000001
        schedule[b] = (method, keep)
        n = keep + (method == "fuse" and keep < n)
    return schedule


def _check_schedule(vit: nn.Module, schedule: Mapping[int, tuple[str, int]], grid: tuple[int, int],
                    stride: int) -> dict[int, tuple[str, int]]:
    """The schedule as a dict, after checking every block's method and count against the tokens."""
    depth, n = len(vit.blocks), vit.num_patches
    if getattr(vit.blocks[0], "placement", "pre") != "pre" or not hasattr(vit.blocks[0].attn, "qkv"):
        raise ValueError("PrunedViT needs a pre-norm ml.models.ViT with ml.models.Attention blocks "
                         "(it computes the class token's attention from their qkv weights)")
    out: dict[int, tuple[str, int]] = {}
    for b in sorted(schedule):
        entry = schedule[b]
        entry = tuple(entry) if isinstance(entry, list) else entry
        if not (_is_count(b) and 0 <= b < depth):
            raise ValueError(f"PrunedViT: block {b!r} is not a block index in [0, {depth})")
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and entry[0] in METHODS):
            raise ValueError(f"PrunedViT: block {b}: {entry!r} is not (method, count) with method "
                             f"one of {', '.join(METHODS)}")
        method, k = entry
        if method == "feather" and out:
            raise ValueError(f"PrunedViT: block {b}: 'feather' samples the full patch grid, so it "
                             f"must be the first reduction; use 'topk' for the later stages")
        low = len(uniform_grid(grid, stride)) if method == "feather" else 0
        high = n // 2 if method == "merge" else n
        if not (_is_count(k) and low <= k <= high):
            what = "r" if method == "merge" else "keep"
            why = f" (the stride-{stride} grid alone has {low} tokens)" if low else ""
            raise ValueError(f"PrunedViT: block {b}: {what}={k!r} is outside [{low}, {high}] for the "
                             f"{n} patch tokens that reach it{why}")
        out[b] = (method, k)
        n = n - k if method == "merge" else k + (method == "fuse" and k < n)
    methods = {m for m, _ in out.values()}
    if "merge" in methods and methods != {"merge"}:
        raise ValueError(f"PrunedViT: a schedule either merges or prunes; got methods {sorted(methods)}")
    return out


class PrunedViT(nn.Module):
    """A trained ``ml.models.ViT`` run with fewer tokens: a reduction between attention and MLP.

        "topk" k:    keep the k patch tokens the class token attends to most (pruning)
        "fuse" k:    the same, plus one token averaging the pruned ones (EViT)
        "feather" k: keep a stride-`stride` grid, then the most attended tokens, k in all (FEATHER)
        "merge" r:   merge r tokens by bipartite matching of the keys (ToMe), then
                     proportional attention (logits + log size) in every later block

    ``schedule``: {block index: (method, k or r)}. The ViT's modules are shared, not copied:
    fine-tuning a PrunedViT trains the wrapped ViT. With an empty schedule, or keep-all, the
    logits equal the ViT's exactly. ``trace = True`` records in ``sources`` which original
    tokens each remaining token stands for, after each reduction (notebook 4.3 draws them).
    """

    def __init__(self, vit: nn.Module, schedule: Mapping[int, tuple[str, int]] | None = None, *,
                 stride: int = 4, prop_attn: bool = True):
        super().__init__()
        side = vit.image_size // vit.patch_size
        self.grid = (side, side)                                   # the patch grid (H / P, W / P)
        self.schedule = _check_schedule(vit, schedule or {}, self.grid, stride)
        self.vit, self.stride, self.prop_attn = vit, stride, prop_attn
        self.trace, self.sources = False, []

    def forward(self, images: Tensor) -> Tensor:
        """``images`` (B, C, H, W) -> logits (B, classes)."""
        vit = self.vit
        x = vit.patch_embed(images).flatten(2).transpose(1, 2)      # (B, N, C): as ViT.forward
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos_embed
        x, size = vit.dropout(x), None
        src = (torch.eye(x.shape[1], device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
               if self.trace else None)                               # (B, T, 1 + N): token t stands for t
        self.sources = []
        for b, blk in enumerate(vit.blocks):
            if b in self.schedule or size is not None:
                x, size, src = self._block(b, blk, x, size, src)
            else:
                x = blk(x)                                           # untouched block: the ViT's own forward
        return vit.head(vit.norm(x)[:, 0])

    def _attend(self, attn: nn.Module, h: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``attn(h)`` as ml.models.Attention computes it, with proportional attention; also q, k."""
        B, T, C = h.shape
        q, k, v = attn.qkv(h).split(C, dim=2)
        q, k, v = (t.view(B, T, attn.heads, C // attn.heads).transpose(1, 2) for t in (q, k, v))
        bias = None if size is None or not self.prop_attn else size.log().view(B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=attn.dropout if self.training else 0.0)
        return attn.resid_dropout(attn.proj(y.transpose(1, 2).reshape(B, T, C))), q, k

    def _block(self, b: int, blk: nn.Module, x: Tensor, size: Tensor | None,
               src: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        y, q, k = self._attend(blk.attn, blk.norm1(x), size)
        x = x + y
        method, n = self.schedule.get(b, (None, 0))
        C = x.shape[-1]
        t = x if src is None else torch.cat([x, src], dim=-1)       # sources ride along as channels
        if method == "merge" and n > 0:
            t, size = bipartite_merge(t, n, metric=k.mean(dim=1), size=size)   # ToMe: mean key of heads
        elif method in ("topk", "fuse", "feather"):
            a = cls_attention(q, k, size if self.prop_attn else None)
            if method == "feather":
                a = a.index_fill(1, uniform_grid(self.grid, self.stride, a.device), math.inf)
            t, _ = (fuse_pruned if method == "fuse" else topk_by_attention)(t, a, n)
        x, src = (t, None) if src is None else (t[..., :C], t[..., C:])
        if src is not None and method is not None:
            self.sources.append((b, src > 0))
        return x + blk.mlp(blk.norm2(x)), size, src


# ---------------------------------------------------------------------------------------
# 5. Drivers for the notebooks: CIFAR-10 loaders, per-image correctness, a cached fine-tune
# ---------------------------------------------------------------------------------------

def vit_p2(*, retrain: bool = False) -> tuple[nn.Module, dict]:
    """The chapter's higher-token ViT: chapter 1's ViT recipe with 2x2 patches (256 tokens).

    Trained through ``ml.baselines.cifar_vit(variant="p2", patch_size=2, ...)``, so it is
    cached like the baselines and later chapters can reuse it. Four times the tokens cost
    about six times the compute per image (width 64), so the cpu and gpu scales pin the width
    and depth and shorten the schedule to fit their budgets (notebook 4.1 lists the settings).
    """
    from . import baselines
    from .env import pick
    sizes = pick(smoke=dict(),
                 cpu=dict(dim=64, depth=4, heads=4, n_train=25_000, epochs=2, batch_size=128),
                 gpu=dict(dim=192, depth=6, heads=3, epochs=8, batch_size=512))
    if "eval_epochs" in baselines.config("cifar_vit") and "epochs" in sizes:
        sizes["eval_epochs"] = sizes["epochs"]            # evaluate once, at the end
    return baselines.cifar_vit(variant="p2", patch_size=2, retrain=retrain, **sizes)


CHAPTER_METHODS: tuple[str, ...] = ("top-k", "PyramidDrop", "EViT", "ToMe", "FEATHER")
FEATHER_STRIDE = 3   # every third row and column of the 16 x 16 grid: 36 tokens always kept


def chapter_stages(depth: int) -> list[int]:
    """The blocks where staged methods prune: about 1/4, 1/2 and 3/4 of the depth (EViT's
    blocks 3, 6, 9 of 12; blocks 1, 2, 3 of the cpu-scale ViT's 4), never block 0."""
    return sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3)} & set(range(1, depth)))


def chapter_schedule(method: str, amount: float, num_patches: int, depth: int) -> dict[int, tuple[str, int]]:
    """The schedules notebooks 4.2 and 4.3 compare, for a ViT of ``depth`` blocks.

        "top-k"        keep a fraction `amount` of the patch tokens once, at block 1 (one stage)
        "PyramidDrop"  keep `amount` of the remaining tokens at each of chapter_stages(depth)
        "EViT"         the same stages, fusing the pruned tokens into one
        "ToMe"         merge r = `amount` tokens in every block
        "FEATHER"      first stage: the stride-3 grid plus the most attended, `amount` in all;
                       second stage: keep `amount` of those by attention alone
        "none"         nothing (the unpruned ViT)
    """
    if method == "none":
        return {}
    if method == "ToMe":
        return {b: ("merge", int(amount)) for b in range(depth)}
    stages = chapter_stages(depth)
    kinds = {"top-k": ("topk", [1]), "PyramidDrop": ("topk", stages),
             "EViT": ("fuse", stages), "FEATHER": ("topk", stages[:2])}
    if method not in kinds:
        raise ValueError(f"chapter_schedule: method {method!r} is not one of "
                         f"{', '.join(CHAPTER_METHODS + ('none',))}")
    kind, blocks = kinds[method]
    schedule = keep_schedule(kind, num_patches, blocks, amount)
    if method == "FEATHER":
        schedule[blocks[0]] = ("feather", schedule[blocks[0]][1])
    return schedule


def chapter_points(num_patches: int, depth: int) -> dict[str, list]:
    """Three settings of each method's knob, mildest first; notebooks 4.2 and 4.3 fine-tune
    the middle one. ToMe's r goes up to the largest r valid in every block, N / (depth + 1)."""
    r_max = num_patches // (depth + 1)
    return {"top-k": [0.5, 0.35, 0.25], "PyramidDrop": [0.65, 0.5, 0.4], "EViT": [0.65, 0.5, 0.4],
            "ToMe": sorted({r_max // 2, 7 * r_max // 8, r_max})}


def finetuned(method: str, amount: float) -> tuple[nn.Module, dict]:
    """The chapter's patch-2 ViT (:func:`vit_p2`) fine-tuned with ``chapter_schedule(method, amount)``
    in place, for a quarter of its training images (cached; ``method="none"``: the control,
    the unpruned ViT fine-tuned the same way)."""
    from . import train as _train
    from .env import pick, trim
    vit, rec = vit_p2()
    schedule = chapter_schedule(method, amount, vit.num_patches, len(vit.blocks))
    slug = f"{method}-{amount}".replace(" ", "").lower()
    return finetune(vit, schedule, name=f"p2-ft-{slug}",
                    base=_train.cache_key(rec["name"], rec["config"]),
                    steps=pick(smoke=4, cpu=100, gpu=200), lr=pick(smoke=1e-4, cpu=2e-4, gpu=2e-4),
                    batch_size=trim(pick(smoke=32, cpu=128, gpu=512), keep=8),   # dry run: 8
                    n_train=rec["config"]["n_train"], stride=FEATHER_STRIDE)


def cifar_loader(train: bool, n: int, batch_size: int, *, flip: bool = False,
                 device: torch.device | str | None = None):
    """A ``ml.data.DeviceLoader`` over ``n`` CIFAR-10 images (a class-balanced subset), normalized
    as the baselines normalize them; training loaders shuffle, drop the last batch and flip."""
    from . import data
    x, y = data.cifar10(train=train)
    if n < len(y):
        x, y = data.subset(x, y, n, seed=0)
    return data.DeviceLoader(x, y, batch_size, shuffle=train, drop_last=train, flip=flip and train,
                             mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD, device=device)


def correct(model: nn.Module, loader) -> Tensor:
    """Per-image correctness ``argmax(model(x)) == y`` over ``loader``, in fp32 eval mode:
    a bool tensor (n,) on the CPU, for accuracies and paired tests (``ml.bench.mcnemar``)."""
    from itertools import islice

    from .env import trim
    was_training, out = model.training, []
    model.eval()
    try:
        with torch.inference_mode():
            for x, y in islice(loader, trim(len(loader))):        # a dry run stops after 2 batches
                out.append((model(x).argmax(-1) == y).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def finetune(vit: nn.Module, schedule: Mapping[int, tuple[str, int]], *, name: str, base: str,
             steps: int, lr: float, batch_size: int, n_train: int, weight_decay: float = 0.05,
             label_smoothing: float = 0.1, seed: int = 0, stride: int = 4) -> tuple[nn.Module, dict]:
    """A copy of ``vit`` fine-tuned for ``steps`` AdamW steps with ``schedule`` in place.

    Cached by ``ml.train.train_or_load`` under ``name``, keyed by ``base`` (the cache key of
    the ViT it starts from), the schedule and the settings. Learning rate: 10% linear
    warm-up, cosine decay to 0; random flips. Returns ``(PrunedViT in eval mode, record)``;
    the original ``vit`` is left untouched.
    """
    import copy

    from . import train as _train
    cfg = dict(base=base, schedule={str(b): list(e) for b, e in sorted(schedule.items())},
               stride=stride, steps=steps, lr=lr, batch_size=batch_size, n_train=n_train,
               weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed)
    dev = next(vit.parameters()).device

    def build() -> nn.Module:
        return PrunedViT(copy.deepcopy(vit), schedule, stride=stride)

    def run(model: nn.Module) -> _train.History:
        loader = cifar_loader(True, n_train, batch_size, flip=True, device=dev)
        optimizer = _train.adamw(model, lr, weight_decay)
        return _train.fit(model, loader, optimizer=optimizer, steps=steps,
                          schedule=_train.warmup_cosine(steps, max(1, steps // 10), final=0.0),
                          label_smoothing=label_smoothing, desc=f"fine-tune {name}")

    return _train.train_or_load(name, cfg, build, run, device=dev)
