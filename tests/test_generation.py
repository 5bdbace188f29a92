"""KV-cached generation (CharGPT), grouped-query attention and the MHA -> GQA conversion."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import minilib as ml
from minilib.attention import KVCache, MultiHeadAttention, pool_kv_heads
from minilib.models import Attention, Block, CharGPT

V = 17


def _gpt(attn=MultiHeadAttention, block_size=12, seed=0, **kw):
    torch.manual_seed(seed)
    return CharGPT(V, block_size=block_size, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                   attn=attn, **kw).eval()


# ---------------------------------------------------------------------------------------
# Cached forward and generation
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_cached_forward_matches_full_forward(placement):
    gpt = _gpt(placement=placement)
    idx = torch.randint(V, (3, 12))
    full = gpt(idx)
    caches = gpt.make_caches(3)
    with torch.no_grad():
        parts = [gpt(idx[:, :5], caches)]                 # prefill 5 tokens
        for t in range(5, 12):                            # then one at a time
            parts.append(gpt(idx[:, t:t + 1], caches))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert caches[0].length == 12


def test_block_without_cache_unchanged():
    torch.manual_seed(0)
    blk = Block(32, 4, attn=Attention, causal=True).eval()
    x = torch.randn(2, 7, 32)
    ref = x + blk.attn(blk.norm1(x))
    ref = ref + blk.mlp(blk.norm2(ref))
    torch.testing.assert_close(blk(x), ref)


def test_block_with_cache_matches_full():
    torch.manual_seed(0)
    blk = Block(32, 4, attn=MultiHeadAttention, causal=True).eval()
    x = torch.randn(2, 6, 32)
    cache = blk.attn.make_cache(2, 6)
    with torch.no_grad():
        y = torch.cat([blk(x[:, :4], kv_cache=cache), blk(x[:, 4:5], kv_cache=cache),
                       blk(x[:, 5:], kv_cache=cache)], dim=1)
    torch.testing.assert_close(y, blk(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("new_tokens", [5, 30])     # 30 > block_size: the cache refills
def test_generate_cached_equals_uncached(kv_heads, new_tokens):
    gpt = _gpt(attn=functools.partial(MultiHeadAttention, kv_heads=kv_heads))
    prompt = torch.randint(V, (2, 4))
    greedy = [gpt.generate(prompt, new_tokens, top_k=1, kv_cache=c) for c in (False, True)]
    assert torch.equal(greedy[0], greedy[1])
    sampled = []
    for c in (False, True):
        torch.manual_seed(123)
        sampled.append(gpt.generate(prompt, new_tokens, temperature=1.5, kv_cache=c))
    assert torch.equal(sampled[0], sampled[1])
    assert sampled[0].shape == (2, 4 + new_tokens)
    assert torch.equal(sampled[0][:, :4], prompt)


def test_generate_long_prompt_and_small_keep():
    gpt = _gpt()
    prompt = torch.randint(V, (1, 20))                      # longer than block_size = 12
    a = gpt.generate(prompt, 6, top_k=1)
    b = gpt.generate(prompt, 6, top_k=1, kv_cache=True)
    assert torch.equal(a, b)
    c = gpt.generate(prompt, 25, top_k=1, kv_cache=True, keep=6)
    assert c.shape == (1, 45) and torch.equal(c[:, :21], a[:, :21])


def test_generate_restores_training_mode():
    gpt = _gpt().train()
    gpt.generate(torch.zeros(1, 1, dtype=torch.long), 3, kv_cache=True)
    assert gpt.training


def test_attention_weights_load_into_multihead():
    old = _gpt(attn=Attention)
    new = _gpt(attn=MultiHeadAttention, seed=1)
    new.load_state_dict(old.state_dict())
    idx = torch.randint(V, (2, 12))
    torch.testing.assert_close(new(idx), old(idx), atol=1e-5, rtol=1e-5)
    torch.manual_seed(5)
    a = old.generate(idx[:, :3], 20)
    torch.manual_seed(5)
    b = new.generate(idx[:, :3], 20, kv_cache=True)
    assert torch.equal(a, b)


def test_generation_errors():
    plain = _gpt(attn=Attention)
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        plain.generate(torch.zeros(1, 2, dtype=torch.long), 3, kv_cache=True)
    gpt = _gpt()
    with pytest.raises(ValueError, match="keep"):
        gpt.generate(torch.zeros(1, 2, dtype=torch.long), 3, kv_cache=True, keep=0)
    with pytest.raises(ValueError, match="keep"):
        gpt.generate(torch.zeros(1, 2, dtype=torch.long), 3, kv_cache=True, keep=13)
    caches = gpt.make_caches(1)
    with torch.no_grad():
        gpt(torch.zeros(1, 10, dtype=torch.long), caches)
        with pytest.raises(ValueError, match="block_size"):
            gpt(torch.zeros(1, 3, dtype=torch.long), caches)
        with pytest.raises(ValueError, match="caches"):
            gpt(torch.zeros(1, 1, dtype=torch.long), caches[:1])
    with pytest.raises(ValueError, match="block_size"):
        gpt(torch.zeros(1, 13, dtype=torch.long))


# ---------------------------------------------------------------------------------------
# Grouped-query attention and the conversion
# ---------------------------------------------------------------------------------------

def _reference_gqa(attn: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Repeat each key/value head for its query heads, then PyTorch's attention."""
    B, T, C = x.shape
    H, Hkv, d = attn.heads, attn.kv_heads, attn.head_dim
    q, k, v = attn.qkv(x).split([H * d, Hkv * d, Hkv * d], dim=-1)
    q = q.view(B, T, H, d).transpose(1, 2)
    k, v = (t.view(B, T, Hkv, d).transpose(1, 2).repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=attn.causal)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_gqa_matches_reference_forward_backward(kv_heads):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, kv_heads=kv_heads, causal=True).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64, requires_grad=True)
    y = attn(x)
    ref = _reference_gqa(attn, x)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, attn.qkv.weight), g)
    rx, rw = torch.autograd.grad(ref, (x, attn.qkv.weight), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_gqa_with_all_heads_is_mha():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, causal=True)
    gqa = MultiHeadAttention(32, 4, kv_heads=4, causal=True)
    gqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(gqa(x), mha(x))
    same = pool_kv_heads(mha, 4)
    torch.testing.assert_close(same(x), mha(x))
    assert same is not mha


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_pool_kv_heads_shapes_and_means(kv_heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, causal=True)
    d = mha.head_dim
    gqa = pool_kv_heads(mha, kv_heads)
    assert gqa.kv_heads == kv_heads and gqa.heads == 4 and gqa.causal
    assert gqa.qkv.weight.shape == ((4 + 2 * kv_heads) * d, 32)
    assert gqa.qkv.bias.shape == ((4 + 2 * kv_heads) * d,)
    w, wg = mha.qkv.weight, gqa.qkv.weight
    torch.testing.assert_close(wg[:4 * d], w[:4 * d])                      # queries copied
    g = 4 // kv_heads
    for part in (0, 1):                                                    # keys, values
        old = w[(4 + 4 * part) * d:(8 + 4 * part) * d].view(kv_heads, g, d, 32).mean(1)
        new = wg[(4 + kv_heads * part) * d:(4 + kv_heads * (part + 1)) * d]
        torch.testing.assert_close(new, old.reshape(kv_heads * d, 32))
    torch.testing.assert_close(gqa.proj.weight, mha.proj.weight)
    assert gqa(torch.randn(1, 5, 32)).shape == (1, 5, 32)
    # and a second pooling step from GQA to MQA
    assert pool_kv_heads(gqa, 1).qkv.weight.shape == ((4 + 2) * d, 32)


def test_pool_kv_heads_exact_when_heads_in_a_group_agree():
    """If the key/value heads of a group are equal, pooling changes nothing."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, causal=True)
    d = mha.head_dim
    with torch.no_grad():
        for start in (4 * d, 8 * d):                    # keys, then values: head 1 := head 0
            mha.qkv.weight[start + d:start + 2 * d] = mha.qkv.weight[start:start + d]
            mha.qkv.bias[start + d:start + 2 * d] = mha.qkv.bias[start:start + d]
            mha.qkv.weight[start + 3 * d:start + 4 * d] = mha.qkv.weight[start + 2 * d:start + 3 * d]
            mha.qkv.bias[start + 3 * d:start + 4 * d] = mha.qkv.bias[start + 2 * d:start + 3 * d]
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(pool_kv_heads(mha, 2)(x), mha(x), atol=1e-6, rtol=1e-5)


def test_pool_kv_heads_errors():
    mha = MultiHeadAttention(32, 4)
    with pytest.raises(ValueError, match="divisor"):
        pool_kv_heads(mha, 3)
    with pytest.raises(ValueError, match="divisor"):
        pool_kv_heads(pool_kv_heads(mha, 2), 4)
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        pool_kv_heads(Attention(32, 4), 2)


def test_kv_cache_bytes_shrink_with_kv_heads():
    for kv in (4, 2, 1):
        attn = MultiHeadAttention(32, 4, kv_heads=kv)
        cache = attn.make_cache(3, 10)
        assert isinstance(cache, KVCache)
        assert cache.nbytes == 2 * 3 * kv * 10 * 8 * 4
    gpt = _gpt(attn=functools.partial(MultiHeadAttention, kv_heads=1))
    assert sum(c.nbytes for c in gpt.make_caches(2)) == 2 * 2 * 2 * 1 * 12 * 8 * 4
    assert ml.attention.pool_kv_heads is pool_kv_heads
