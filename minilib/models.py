"""Small, readable models whose parts are arguments.

Every later chapter changes *one* part of a model (its normalization, its attention, its
MLP) and measures the difference. So the models here take their parts as factories
instead of hard-coding them, and a chapter swaps a technique in without forking a model::

    vit = ml.models.ViT(norm=ml.norm.RMSNorm)                # chapter 2
    gpt = ml.models.CharGPT(65, attn=MyLinearAttention)      # chapter 3

The factories have fixed signatures, which the chapters' own modules follow:

=================================================  ======================================
factory                                            builds a module mapping
=================================================  ======================================
``norm(dim)``                                      ``(..., dim) -> (..., dim)`` (transformers)
                                                   or ``(B, dim, H, W) -> same`` (the CNN)
``attn(dim, heads, *, causal=False, dropout=0.0)``  ``(B, T, dim) -> (B, T, dim)``
``mlp(dim, hidden_dim, *, dropout=0.0)``            ``(B, T, dim) -> (B, T, dim)``
=================================================  ======================================

Sections, one per model: the transformer parts (:class:`Attention`, :class:`FeedForward`,
:class:`Block`), :class:`ResNet9` (the fast CIFAR-10 CNN), :class:`ViT`,
:class:`CharGPT` (nanoGPT-style character model), :class:`MLP`, and the diffusion
denoisers of chapter 7, :class:`UNet` and :class:`DiT`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Attention", "FeedForward", "Block", "PLACEMENTS",
    "ResNet9", "ConvBlock", "Residual",
    "ViT", "CharGPT", "MLP",
    "timestep_embedding", "ConditionEmbedding", "ResBlock", "SpatialAttention", "UNet",
    "DiTBlock", "DiT",
]

NormFactory = Callable[[int], nn.Module]
AttnFactory = Callable[..., nn.Module]
MlpFactory = Callable[..., nn.Module]


# ---------------------------------------------------------------------------------------
# Transformer parts: attention, feed-forward, block
# ---------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al., 2017) with one fused qkv projection.

    For each head ``h`` with queries, keys and values ``Q_h, K_h, V_h`` of shape ``(T, d)``,
    ``d = dim / heads``:

        head_h = softmax(Q_h K_h^T / sqrt(d) + M) V_h,   y = concat_h(head_h) W_o

    where the mask ``M`` is 0 everywhere, or, when ``causal``, ``-inf`` above the diagonal
    (token t only sees tokens <= t). The scores are computed by
    ``F.scaled_dot_product_attention``, which picks a fused kernel (FlashAttention or the
    memory-efficient one) when it can; chapter 3 builds those from scratch.
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads} "
                             f"(each head gets dim / heads features)")
        self.dim, self.heads, self.causal, self.dropout = dim, heads, causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim)   # Q, K and V of all heads in one matmul
        self.proj = nn.Linear(dim, dim)      # W_o, mixes the heads
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                       # 3 x (B, T, C)
        # (B, T, C) -> (B, heads, T, d): every head attends independently.
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal)
        y = y.transpose(1, 2).reshape(B, T, C)                     # concatenate the heads
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """The transformer's per-token MLP: ``Linear(dim, hidden) -> act -> Linear(hidden, dim)``.

    It holds about two thirds of a transformer's parameters (with ``hidden = 4 dim``);
    chapter 6 measures how sparse its hidden activations are. ``act()`` builds the
    activation (default GELU; chapter 6 trains ``functools.partial(FeedForward,
    act=nn.ReLU)`` as an ``mlp=`` factory); the parameter names do not depend on it.
    """

    def __init__(self, dim: int, hidden_dim: int, *, dropout: float = 0.0,
                 act: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.fc = nn.Linear(dim, hidden_dim)
        self.act = act()
        self.proj = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``."""
        return self.dropout(self.proj(self.act(self.fc(x))))


PLACEMENTS: tuple[str, ...] = ("pre", "post", "peri")


class Block(nn.Module):
    """A transformer block: attention then MLP, each a residual branch with normalization.

    Where the normalization goes is ``placement`` (chapter 2 compares them); with
    ``f`` the attention or the MLP:

    * ``"pre"``  (Pre-LN, GPT-2, ViT):       ``x = x + f(norm(x))``
    * ``"post"`` (Post-LN, original Transformer): ``x = norm(x + f(x))``
    * ``"peri"`` (Peri-LN, Kim et al. 2025):  ``x = x + norm_out(f(norm_in(x)))``

    Pre-LN keeps an un-normalized residual stream (stable to train, but its scale grows
    with depth); Post-LN normalizes the stream itself (needs warm-up, can diverge when
    deep); Peri-LN also normalizes each branch's output before adding it.

    The parts are factories: ``norm(dim)``, ``attn(dim, heads, causal=, dropout=)``,
    ``mlp(dim, hidden_dim, dropout=)``.
    """

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0,
                 norm: NormFactory = nn.LayerNorm, attn: AttnFactory = Attention,
                 mlp: MlpFactory = FeedForward, causal: bool = False, dropout: float = 0.0,
                 placement: str = "pre"):
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
        self.placement = placement
        self.attn = attn(dim, heads, causal=causal, dropout=dropout)
        self.mlp = mlp(dim, int(dim * mlp_ratio), dropout=dropout)
        self.norm1 = norm(dim)  # before attention (pre, peri) or after its residual add (post)
        self.norm2 = norm(dim)  # the same for the MLP
        if placement == "peri":
            self.norm1_out = norm(dim)  # on the attention branch's output
            self.norm2_out = norm(dim)  # on the MLP branch's output

    def forward(self, x: Tensor, kv_cache: Any = None) -> Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``.

        ``kv_cache``: for decoding (chapter 3), passed on as ``attn(h, kv_cache=kv_cache)``;
        then ``x`` holds the new tokens only. The attention must accept it
        (``ml.attention.MultiHeadAttention`` does). Without it the attention is called as
        ``attn(h)``, so any ``attn`` factory works.
        """
        def attn(h: Tensor) -> Tensor:
            return self.attn(h) if kv_cache is None else self.attn(h, kv_cache=kv_cache)

        if self.placement == "pre":
            x = x + attn(self.norm1(x))
            x = x + self.mlp(self.norm2(x))
        elif self.placement == "post":
            x = self.norm1(x + attn(x))
            x = self.norm2(x + self.mlp(x))
        else:  # peri
            x = x + self.norm1_out(attn(self.norm1(x)))
            x = x + self.norm2_out(self.mlp(self.norm2(x)))
        return x


# ---------------------------------------------------------------------------------------
# ResNet-9: the fast CIFAR-10 CNN
# ---------------------------------------------------------------------------------------

class ConvBlock(nn.Sequential):
    """``Conv3x3(c_in, c_out, bias=False) -> norm(c_out) -> act()``, shape-preserving in H, W.

    No conv bias: the normalization that follows subtracts the mean, which cancels it.
    """

    def __init__(self, c_in: int, c_out: int, norm: NormFactory = nn.BatchNorm2d,
                 act: Callable[[], nn.Module] = nn.ReLU):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), act())


class Residual(nn.Module):
    """``x + f(x)`` for a module ``f`` that keeps the shape."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return x + self.f(x)


class ResNet9(nn.Module):
    """The residual CNN of David Page's DAWNBench CIFAR-10 entry.

    From "How to train your ResNet" (David Page, Myrtle.ai, 2018; the ResNet-9 that trains
    to 94% CIFAR-10 test accuracy in 24 epochs), with ``w = width``::

        prep    ConvBlock(in, w)                                        32x32
        layer1  ConvBlock(w, 2w), MaxPool 2, Residual(2 x ConvBlock(2w))   16x16
        layer2  ConvBlock(2w, 4w), MaxPool 2                              8x8
        layer3  ConvBlock(4w, 8w), MaxPool 2, Residual(2 x ConvBlock(8w))   4x4
        head    global max pool, Linear(8w, classes, bias=False), x 0.125

    ``ConvBlock`` is ``Conv3x3 (no bias) -> norm -> act``. The final scaling by 1/8 keeps
    the initial logits small, which Page found to help with the high learning rates of
    his one-cycle schedule. ``norm(channels)`` and ``act()`` are factories (chapter 2 swaps
    the normalization, chapter 6 the activation); ``channel_attn(channels)``, if given, is a
    ``(B, C, H, W) -> same`` module put at the end of both residual branches, before the
    addition, where squeeze-and-excitation puts it (chapter 3: ``ml.attention.SqueezeExcite``,
    ``ml.attention.ECA``). With ``width=64`` the model has 6.57 M
    parameters and costs 0.76 GFLOPs per 32x32 image (``ml.bench.count_flops``).
    The global pool makes it accept any input size that survives three halvings.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3,
                 norm: NormFactory = nn.BatchNorm2d, act: Callable[[], nn.Module] = nn.ReLU,
                 channel_attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        w = width

        def conv(c_in: int, c_out: int) -> ConvBlock:
            return ConvBlock(c_in, c_out, norm, act)

        def branch(c: int) -> nn.Sequential:  # conv, conv[, channel attention]
            parts = [conv(c, c), conv(c, c)] + ([channel_attn(c)] if channel_attn else [])
            return nn.Sequential(*parts)

        self.prep = conv(in_channels, w)
        self.layer1 = nn.Sequential(conv(w, 2 * w), nn.MaxPool2d(2), Residual(branch(2 * w)))
        self.layer2 = nn.Sequential(conv(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(conv(4 * w, 8 * w), nn.MaxPool2d(2), Residual(branch(8 * w)))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes, bias=False)
        self.scale = 0.125

    def features(self, x: Tensor) -> Tensor:
        """``x``: ``(B, in_channels, H, W)`` -> pooled features ``(B, 8 * width)``."""
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.pool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``."""
        return self.fc(self.features(x)) * self.scale


# ---------------------------------------------------------------------------------------
# ViT: the Vision Transformer
# ---------------------------------------------------------------------------------------

def _init_transformer(module: nn.Module, std: float = 0.02) -> None:
    """Linear and embedding weights ~ N(0, std), biases 0 (GPT-2 / ViT initialization)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al., ICLR 2021), sized for 32x32 images.

    1. Cut the image into ``P x P`` patches and embed each linearly; a convolution with
       kernel = stride = ``P`` does exactly that: ``(B, C, H, W) -> (B, dim, H/P, W/P)``,
       flattened to ``N = (H/P)(W/P)`` tokens.
    2. Prepend a learned class token and add a learned position embedding:
       ``z_0 = [x_cls; x_1 E; ...; x_N E] + E_pos``, ``(B, N + 1, dim)``.
    3. ``depth`` transformer :class:`Block` s (norm, attention, MLP are pluggable),
       a final ``norm``, and a linear head on the class token.

    With patch 4 on CIFAR-10 there are 64 patch tokens (+1 class token) of 48 numbers each.
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
                 num_classes: int = 10, dim: int = 192, depth: int = 6, heads: int = 3,
                 mlp_ratio: float = 2.0, norm: NormFactory = nn.LayerNorm,
                 attn: AttnFactory = Attention, mlp: MlpFactory = FeedForward,
                 dropout: float = 0.0, placement: str = "pre"):
        super().__init__()
        if image_size % patch_size != 0:
            divisors = [p for p in range(1, min(image_size, 16) + 1) if image_size % p == 0]
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}: "
                             f"the patches must tile the image; pick a patch size that divides "
                             f"it, e.g. one of {divisors}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[
            Block(dim, heads, mlp_ratio=mlp_ratio, norm=norm, attn=attn, mlp=mlp,
                  dropout=dropout, placement=placement)
            for _ in range(depth)])
        self.norm = norm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_transformer)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: images ``(B, C, H, W)``, ``H = W = image_size`` -> logits ``(B, num_classes)``."""
        if x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"ViT expects images (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}); got {tuple(x.shape)}")
        x = self.patch_embed(x)                      # (B, dim, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)             # (B, N, dim): one token per patch
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, N + 1, dim)
        x = self.blocks(self.dropout(x))
        return self.head(self.norm(x)[:, 0])         # classify from the class token


# ---------------------------------------------------------------------------------------
# CharGPT: a nanoGPT-style character-level language model
# ---------------------------------------------------------------------------------------

class CharGPT(nn.Module):
    """A GPT (Radford et al., 2019) for characters, after Karpathy's nanoGPT.

    Token and position embeddings, ``n_layer`` causal :class:`Block` s, a final norm and
    a linear head whose weight *is* the token embedding (weight tying, Press & Wolf 2017):
    logits for token ``v`` are ``h . e_v``. GPT-2 initialization: weights ~ N(0, 0.02);
    the residual output projections (parameters named ``*proj.weight``) ~
    N(0, 0.02 / sqrt(2 n_layer)), because each of the ``2 n_layer`` residual branches adds
    to the same stream and their variances add up.
    """

    def __init__(self, vocab_size: int, block_size: int = 256, n_layer: int = 6,
                 n_head: int = 6, n_embd: int = 384, dropout: float = 0.2,
                 norm: NormFactory = nn.LayerNorm, attn: AttnFactory = Attention,
                 mlp: MlpFactory = FeedForward, placement: str = "pre"):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[
            Block(n_embd, n_head, mlp_ratio=4.0, norm=norm, attn=attn, mlp=mlp, causal=True,
                  dropout=dropout, placement=placement)
            for _ in range(n_layer)])
        self.norm = norm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying: one (V, C) matrix, used twice
        self.apply(_init_transformer)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: Tensor, kv_caches: Sequence[Any] | None = None) -> Tensor:
        """``idx``: token ids ``(B, T)`` with ``T <= block_size`` -> logits ``(B, T, vocab_size)``.

        Logit ``[b, t]`` predicts token ``t + 1`` from tokens ``0..t``.

        ``kv_caches``: one cache per block (from :meth:`make_caches`) for decoding. Then
        ``idx`` holds only the *new* tokens, which sit at positions ``L .. L + T - 1``
        after the ``L`` tokens already cached (their position embeddings start at ``L``);
        their keys and values are appended to the caches. ``L + T <= block_size``.
        """
        B, T = idx.shape
        start = 0
        if kv_caches is not None:
            if len(kv_caches) != len(self.blocks):
                raise ValueError(f"CharGPT: got {len(kv_caches)} KV caches for "
                                 f"{len(self.blocks)} blocks; use make_caches()")
            start = kv_caches[0].length
        if start + T > self.block_size:
            if kv_caches is None:
                raise ValueError(f"sequence length {T} exceeds block_size={self.block_size}: "
                                 f"the position embedding has {self.block_size} positions; "
                                 f"crop the input to its last {self.block_size} tokens")
            raise ValueError(f"CharGPT: {start} cached + {T} new tokens exceed "
                             f"block_size={self.block_size} (the positions the model knows); "
                             f"reset the caches and refill them with the last tokens")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.dropout(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        if kv_caches is None:
            x = self.blocks(x)
        else:
            for block, cache in zip(self.blocks, kv_caches):
                x = block(x, kv_cache=cache)
        return self.head(self.norm(x))                           # (B, T, V)

    def make_caches(self, batch: int, max_len: int | None = None) -> list[Any]:
        """Empty KV caches, one per block, for ``batch`` sequences of up to ``max_len``
        (default ``block_size``) tokens.

        Needs attention modules with a ``make_cache`` method, i.e.
        ``ml.attention.MultiHeadAttention``. A model built with the default
        :class:`Attention` has the same parameter names, so its weights load into
        ``CharGPT(..., attn=ml.attention.MultiHeadAttention)`` unchanged.
        """
        max_len = self.block_size if max_len is None else max_len
        caches = []
        for i, block in enumerate(self.blocks):
            if not hasattr(block.attn, "make_cache"):
                raise TypeError(
                    f"CharGPT: a KV cache needs attention modules that can use one; block {i} "
                    f"has {type(block.attn).__name__}. Build the model with "
                    f"attn=ml.attention.MultiHeadAttention and load the trained weights into "
                    f"it: new.load_state_dict(old.state_dict()) (the parameter names match)")
            caches.append(block.attn.make_cache(batch, max_len))
        return caches

    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
        """One token per row of the last logits ``(B, V)``: ``(B, 1)``."""
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits.float(), dim=-1)
        return torch.multinomial(probs, num_samples=1)

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, kv_cache: bool = False,
                 keep: int | None = None) -> Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` ``(B, T0)``.

        Returns ``(B, T0 + max_new_tokens)``. Each step divides the last logits by
        ``temperature`` (< 1: more conservative), optionally keeps only the ``top_k`` most
        likely tokens, and samples from the softmax. Runs in eval mode (no dropout) and
        restores the previous mode.

        ``kv_cache=False``: every step feeds the last ``block_size`` tokens and recomputes
        the whole window (quadratic work in the length).

        ``kv_cache=True`` (needs ``ml.attention.MultiHeadAttention``, see
        :meth:`make_caches`): the prompt's last ``block_size`` tokens are fed at once
        (prefill), then one token per step, reusing the cached keys and values. Position
        embeddings are absolute, so a full cache cannot slide: every cached key depends on
        its position. When it is full the caches are refilled from the last ``keep``
        tokens (default ``block_size``: the same window as without a cache, so the
        same tokens, at the cost of one full prefill per step from then on; a smaller
        ``keep`` prefills once every ``block_size - keep + 1`` tokens but conditions on a
        shorter context right after each refill).
        """
        if kv_cache:
            keep = self.block_size if keep is None else keep
            if not isinstance(keep, int) or not 1 <= keep <= self.block_size:
                raise ValueError(f"CharGPT.generate: keep must be an int in "
                                 f"1..block_size={self.block_size}, got {keep!r}")
            caches = self.make_caches(idx.shape[0])  # fails early without MultiHeadAttention
        was_training = self.training
        self.eval()
        try:
            if not kv_cache:
                for _ in range(max_new_tokens):
                    logits = self(idx[:, -self.block_size:])[:, -1, :]      # (B, V)
                    idx = torch.cat([idx, self._sample(logits, temperature, top_k)], dim=1)
                return idx
            logits = self(idx[:, -self.block_size:], caches)[:, -1, :]      # prefill
            for step in range(max_new_tokens):
                idx = torch.cat([idx, self._sample(logits, temperature, top_k)], dim=1)
                if step == max_new_tokens - 1:
                    break
                if caches[0].length < self.block_size:                      # decode 1 token
                    logits = self(idx[:, -1:], caches)[:, -1, :]
                else:                                                       # full: refill
                    for cache in caches:
                        cache.reset()
                    logits = self(idx[:, -keep:], caches)[:, -1, :]
        finally:
            self.train(was_training)
        return idx


# ---------------------------------------------------------------------------------------
# MLP: the simplest image classifier
# ---------------------------------------------------------------------------------------

class MLP(nn.Module):
    """A multilayer perceptron on flattened images.

    ``(Linear -> [norm] -> ReLU -> [dropout]) x len(hidden) -> Linear``.

    ``hidden`` lists the hidden widths; ``norm`` is an optional ``norm(width)`` factory
    (e.g. ``nn.BatchNorm1d``) applied after each hidden Linear. For Fashion-MNIST,
    ``in_features = 1 x 28 x 28 = 784``.
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (512, 512),
                 num_classes: int = 10, dropout: float = 0.0, norm: NormFactory | None = None):
        super().__init__()
        self.in_features = in_features
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if norm is not None:
                layers.append(norm(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: images ``(B, C, H, W)`` (or ``(B, in_features)``) -> logits ``(B, num_classes)``."""
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP(in_features={self.in_features}) got {x.shape[1]} features per "
                             f"sample (input shape {tuple(x.shape)}); set in_features = C * H * W")
        return self.net(x)


# ---------------------------------------------------------------------------------------
# Diffusion backbones: a small U-Net and a small DiT (chapter 7)
#
# Both are denoisers called as model(x_t, t) or model(x_t, t, y): x_t (B, C, H, W), t (B,)
# timesteps (int indices in [0, T), or floats for flow matching), y (B,) class labels or
# None; they return a tensor of the shape of x_t (predicted noise or velocity).
# ---------------------------------------------------------------------------------------

def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of timesteps (Vaswani et al., 2017; used by DDPM and DiT).

        e[b, i] = cos(t_b w_i),   e[b, half + i] = sin(t_b w_i),   w_i = max_period^(-i / half)

    t: (B,) ints or floats -> (B, dim) float32 (dim even).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                  # (B, half)
    return torch.cat([args.cos(), args.sin()], dim=-1)       # (B, dim)


class ConditionEmbedding(nn.Module):
    """The conditioning vector of a denoiser: ``c = MLP(sinusoid(t)) [+ E[y]]``, ``(B, dim)``.

    With ``num_classes = K`` the label table has K + 1 rows: row K is the "no label" token
    of classifier-free guidance (Ho & Salimans, 2022). ``y=None`` means "no label", and in
    training mode each label is replaced by it with probability ``class_dropout``, so one
    network learns both the conditional and the unconditional model.
    """

    def __init__(self, dim: int, num_classes: int | None = None, class_dropout: float = 0.1,
                 freq_dim: int = 64):
        super().__init__()
        self.freq_dim, self.num_classes, self.class_dropout = freq_dim, num_classes, class_dropout
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        if self.label is not None:
            nn.init.normal_(self.label.weight, std=0.02)  # small next to the time embedding, as in DiT

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``t``: ``(B,)``, ``y``: ``(B,)`` labels in ``[0, K]`` or None -> ``(B, dim)``."""
        c = self.mlp(timestep_embedding(t, self.freq_dim))
        if self.label is None:
            if y is not None:
                raise ValueError("this denoiser was built without num_classes: it takes no "
                                 "labels; build it with num_classes=K to condition on y")
            return c
        if y is None:
            y = torch.full(t.shape, self.num_classes, dtype=torch.long, device=t.device)
        if self.training and self.class_dropout > 0:
            drop = torch.rand(y.shape, device=y.device) < self.class_dropout
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return c + self.label(y)


def _groups(channels: int, groups: int = 8) -> int:
    return math.gcd(groups, channels)


class ResBlock(nn.Module):
    """DDPM's residual block: two GroupNorm-SiLU-conv3x3 with the conditioning added between.

        h = conv1(SiLU(GN(x))) + W_c SiLU(c);   y = skip(x) + conv2(SiLU(GN(h)))

    ``conv2`` starts at zero, so every block starts as (a projection of) the identity.
    x: (B, c_in, H, W), c: (B, emb_dim) -> (B, c_out, H, W).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                     # (B, c_out, H, W)
        h = h + self.emb(F.silu(c))[:, :, None, None]             # + the time (and class) vector
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SpatialAttention(nn.Module):
    """Self-attention over the ``H W`` positions of a feature map: ``x + Attention(GN(x))``.

    x: (B, C, H, W) -> (B, C, H, W); the attention is :class:`Attention` on (B, H W, C) tokens.
    """

    def __init__(self, channels: int, heads: int, attn: AttnFactory = Attention):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = attn(channels, heads)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)               # (B, HW, C): one token per pixel
        return x + self.attn(h).transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """A small denoising U-Net (Ronneberger et al., 2015, as adapted by DDPM, Ho et al., 2020).

    ``len(dim_mults)`` levels; level i has width ``dim * dim_mults[i]`` and ``depth``
    :class:`ResBlock` s, and each level below the first halves the resolution (a stride-2
    conv down, nearest upsampling + a conv to the width of the level above on the way up).
    The bottleneck is ResBlock,
    :class:`SpatialAttention` (``heads`` heads), ResBlock; on the way up each level
    concatenates the skip of its level. The timestep (and label) vector, of width
    ``4 dim``, enters every ResBlock. The output conv starts at zero.

    ``model(x, t, y=None)``: x (B, in_channels, H, W), H and W divisible by 2^(levels - 1);
    t (B,); y (B,) labels (needs ``num_classes``) -> (B, in_channels, H, W).
    """

    def __init__(self, in_channels: int = 1, dim: int = 32, depth: int = 1, heads: int = 4,
                 dim_mults: Sequence[int] = (1, 2, 2), num_classes: int | None = None,
                 class_dropout: float = 0.1):
        super().__init__()
        emb, widths = 4 * dim, [dim * m for m in dim_mults]
        self.in_channels, self.levels, self.num_classes = in_channels, len(widths), num_classes
        self.cond = ConditionEmbedding(emb, num_classes, class_dropout, freq_dim=max(64, dim))
        self.stem = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        c = dim
        for i, w in enumerate(widths):
            self.down.append(nn.ModuleList([ResBlock(c if j == 0 else w, w, emb) for j in range(depth)]))
            self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1)
                                   if i < len(widths) - 1 else nn.Identity())
            c = w
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, emb), SpatialAttention(c, heads), ResBlock(c, c, emb)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            w = widths[i]
            self.up.append(nn.ModuleList([ResBlock(c + w if j == 0 else w, w, emb) for j in range(depth)]))
            c = widths[i - 1] if i > 0 else w   # the upsampling conv goes to the next level's width
            self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(w, c, 3, padding=1))
                                 if i > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if x.shape[-1] % 2 ** (self.levels - 1) or x.shape[-2] % 2 ** (self.levels - 1):
            raise ValueError(f"UNet with {self.levels} levels needs H and W divisible by "
                             f"{2 ** (self.levels - 1)}; got {tuple(x.shape)} (pad the images)")
        c = self.cond(t, y)                                       # (B, 4 dim)
        h, skips = self.stem(x), []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, c)
            skips.append(h)                                       # (B, w_i, H / 2^i, W / 2^i)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, c)), c)
        for blocks, up in zip(self.up, self.upsample):
            h = torch.cat([h, skips.pop()], dim=1)                # (B, c + w_i, H / 2^i, W / 2^i)
            for block in blocks:
                h = block(h, c)
            h = up(h)
        return self.out(h)


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie, 2023, fig. 3).

        shift1, scale1, gate1, shift2, scale2, gate2 = W SiLU(c)         (W starts at zero)
        x = x + gate1 * attn(LN(x) (1 + scale1) + shift1)
        x = x + gate2 * mlp(LN(x) (1 + scale2) + shift2)

    The LayerNorms have no parameters of their own: c sets them. With W = 0 every gate is
    0 and the block starts as the identity. x: (B, N, dim), c: (B, dim) -> (B, N, dim).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0,
                 attn: AttnFactory = Attention, mlp: MlpFactory = FeedForward):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = attn(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, int(dim * mlp_ratio))
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)   # 6 x (B, 1, dim) above
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class DiT(nn.Module):
    """A small Diffusion Transformer (Peebles & Xie, 2023): a ViT on patches of x_t.

    Patchify (``P x P`` patches, a conv with kernel = stride = P) to N = (H/P)(W/P) tokens,
    add a learned position embedding, ``depth`` :class:`DiTBlock` s conditioned on
    c = embedding of t (and y), a final adaLN-modulated LayerNorm and a zero-initialized
    linear layer to P P C numbers per token, unpatchified back to the image.

    ``model(x, t, y=None)``: x (B, in_channels, image_size, image_size), t (B,), y (B,)
    -> (B, in_channels, image_size, image_size).
    """

    def __init__(self, image_size: int = 28, patch_size: int = 2, in_channels: int = 1,
                 dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 num_classes: int | None = None, class_dropout: float = 0.1,
                 attn: AttnFactory = Attention, mlp: MlpFactory = FeedForward):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"DiT: image_size={image_size} is not a multiple of "
                             f"patch_size={patch_size}; the patches must tile the image")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.num_classes = num_classes
        n = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, n, dim) * 0.02)
        self.cond = ConditionEmbedding(dim, num_classes, class_dropout, freq_dim=max(64, dim))
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, mlp_ratio, attn, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, patch_size * patch_size * in_channels)
        for layer in (self.ada, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        if (C, H, W) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"DiT expects (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}); got {tuple(x.shape)}")
        P = self.patch_size
        c = self.cond(t, y)                                              # (B, dim)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, dim)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(F.silu(c))[:, None].chunk(2, dim=-1)      # 2 x (B, 1, dim)
        h = self.head(self.norm(h) * (1 + scale) + shift)                # (B, N, P P C)
        h = h.view(B, H // P, W // P, P, P, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, H/P, P, W/P, P)
        return h.reshape(B, C, H, W)
