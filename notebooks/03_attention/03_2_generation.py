# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3.2 Generating text fast: the KV cache, multi-query and grouped-query attention
#
# A language model writes one token at a time: it predicts the next token from all the
# previous ones, appends it, and runs again {cite}`radford2019gpt2`. Run naively, every
# step pushes the *whole* prefix through the network again, so generating $T$ tokens costs
# $O(T^2)$ token-forwards. Every production system avoids that with a **KV cache**: the
# keys and values of past tokens never change, so they are stored and each step computes
# only the new token {cite}`pope2023inference`. The cache then becomes the problem: it
# grows with layers, heads, batch and context, and at large batch or long context reading
# it dominates the time of a decoding step. **Multi-query attention** (MQA)
# {cite}`shazeer2019mqa` lets all query heads share one key/value head, and
# **grouped-query attention** (GQA) {cite}`ainslie2023gqa` shares one per group of heads;
# both shrink the cache by the sharing factor, and GQA shows that an existing multi-head
# checkpoint can be converted and "uptrained" with a small fraction of the pre-training
# compute. This notebook builds the cache into chapter 1's CharGPT, checks that it changes
# no token, measures what it buys, then converts the trained model to GQA and MQA.
#
# **Learning objectives.** After this notebook you can
# 1. explain why causal attention makes caching exact, and count the work of decoding with
#    and without a cache;
# 2. derive the size of a KV cache, $2 \cdot L \cdot B \cdot H_{kv} \cdot T \cdot d$
#    numbers, and compute it for a real model;
# 3. implement cached decoding (prefill, then one token at a time, positions offset by the
#    cache length) and say what to do when the cache is full;
# 4. implement grouped-query attention, convert a multi-head checkpoint to GQA/MQA by
#    mean-pooling key/value heads, and uptrain it;
# 5. tell when a smaller cache makes decoding faster and when it does not.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import functools
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 3.2.1 Why decoding without a cache is slow
#
# Chapter 1's CharGPT generates with `CharGPT.generate(..., kv_cache=False)`: at step $t$
# it feeds the last (up to `block_size`) tokens, takes the logits of the **last** position,
# samples a token and appends it. All the other $t-1$ positions are computed and thrown
# away. Worse, they were already computed at step $t-1$, and they came out the same:
#
# **Causality makes the past immutable.** In a causal transformer, the hidden state of
# token $i$ in every layer depends only on tokens $1..i$: the mask hides the future, and
# everything else (norms, MLPs, projections) acts on each token separately. So appending
# token $t$ changes nothing about tokens $1..t-1$, in particular not their keys
# $k_i = W_K h_i$ and values $v_i = W_V h_i$ in any layer. The new token needs exactly
# those, plus its own query:
#
# $$o_t = \sum_{i \le t} \operatorname{softmax}_i\!\Big(\frac{q_t \cdot k_i}{\sqrt d}\Big)\, v_i .$$
#
# Let us check the claim on the trained model before building on it: the logits of the
# first $t-1$ positions must not change when a token is appended.

# %%
base, base_record = ml.baselines.char_gpt()          # chapter 1's trained CharGPT
corpus = ml.data.shakespeare()
cfg = base_record["config"]
base = base.to(dev).eval()
print({k: cfg[k] for k in ("block_size", "n_layer", "n_head", "n_embd")},
      f"val loss {base_record['metrics']['val_loss']:.3f}")

ids = corpus.encode("ROMEO:\nBut soft, what light through yonder window breaks?")[None].to(dev)
ids = ids[:, :cfg["block_size"]]
with torch.no_grad():
    short, longer = base(ids[:, :-1]), base(ids)
err = (longer[:, :-1] - short).abs().max().item()
print(f"max |logits of the first {ids.shape[1] - 1} tokens, with vs without one more token| = {err:.2e}")
assert err < 1e-4

# %% [markdown]
# **The cost.** Per layer, one token costs about $2 \cdot 12 C^2$ FLOPs in the projections
# and the MLP (the $4C$-wide MLP holds $8C^2$ weights, attention $4C^2$) plus $4 t C$ in
# attention over $t$ keys. Without a cache, step $t$ pushes all $t$ tokens through:
# generating $T$ tokens costs $\sum_{t \le T} t \approx T^2/2$ token-forwards, plus
# attention over $t^2/2$ pairs per step, $O(T^3)$ in total. With a cache, step $t$ costs one
# token-forward plus attention over $t$ cached keys: $O(T)$ token-forwards and $O(T^2)$
# attention in total. Once CharGPT has a cache (next section), `ml.bench.count_flops`
# measures both, step by step.

# %% [markdown]
# ## 3.2.2 The KV cache
#
# **What is stored.** For each of the $L$ layers, the keys and the values of every past
# token, for each of the $B$ sequences of the batch and each of the $H_{kv}$ key/value
# heads of head dimension $d$:
#
# $$\text{cache} = 2 \cdot L \cdot B \cdot H_{kv} \cdot T \cdot d \ \text{numbers}
# \quad (\times\ \text{bytes per number}),$$
#
# the $2$ for keys and values. With ordinary multi-head attention $H_{kv} = H$ and
# $H d = C$, so it is $2 L B T C$ numbers: per token, twice the model width per layer.
#
# **The decoding loop.** `ml.attention.KVCache` preallocates the `(B, Hkv, max_len, d)`
# buffers of one layer and `append`s the new keys and values in place;
# `ml.attention.MultiHeadAttention(..., kv_cache=cache)` projects only the new tokens,
# appends their keys and values, and lets their queries attend to everything cached. The
# causal mask is aligned bottom-right, so the same call serves both phases of generation:
#
# 1. **prefill**: the whole prompt at once, $T_0$ queries against $T_0$ keys (a causal
#    square, like training);
# 2. **decode**: one token per step, one query against all $t$ cached keys (no mask
#    needed: the whole past is visible).
#
# Here is one attention layer written out by hand, the cached way, checked against
# PyTorch's full causal attention:

# %%
torch.manual_seed(0)
B, H, T, d = 2, 4, 10, 16
q, k, v = (torch.randn(B, H, T, d) for _ in range(3))
full = F.scaled_dot_product_attention(q, k, v, is_causal=True)    # the reference: all T at once

K_cache, V_cache = k[:, :, :6], v[:, :, :6]                          # prefill 6 tokens
out = [F.scaled_dot_product_attention(q[:, :, :6], K_cache, V_cache, is_causal=True)]
for t in range(6, T):                                                # then one token per step
    K_cache = torch.cat([K_cache, k[:, :, t:t + 1]], dim=2)          # append k_t, v_t
    V_cache = torch.cat([V_cache, v[:, :, t:t + 1]], dim=2)
    s = q[:, :, t:t + 1] @ K_cache.transpose(-2, -1) / math.sqrt(d)   # (B, H, 1, t + 1)
    out.append(torch.softmax(s, dim=-1) @ V_cache)                  # no mask: the past is visible
cached = torch.cat(out, dim=2)
print(f"max abs error, cached vs full causal attention: {(cached - full).abs().max():.2e}")
torch.testing.assert_close(cached, full)

# %% [markdown]
# `torch.cat` copies the whole cache at every step, $O(T^2)$ bytes moved for $T$ tokens.
# The library's `KVCache` writes into a preallocated buffer instead and hands out views:

# %%
ml.show(ml.attention.KVCache)

# %% [markdown]
# **Positions.** CharGPT adds a learned position embedding to each token. A decoded
# token sits at position $L_{\text{cached}}$, not $0$: `CharGPT.forward(idx, kv_caches)`
# numbers the new tokens from the length of the cache. And `Block` passes the cache on
# to its attention (`Block.forward(x, kv_cache=...)`; without a cache it calls the
# attention exactly as before, so every other model and chapter is unaffected).
#
# **When the cache is full.** The position embedding has `block_size` rows, so a sequence
# cannot grow past `block_size` tokens. Without a cache, generation simply crops the window
# to the last `block_size` tokens at every step. A cache cannot slide that way: every
# cached key and value was computed with its token's *absolute* position mixed in (layer 1
# directly, later layers through the residual stream), and after sliding every token sits
# one position earlier, so every cached entry is stale. Three honest options:
#
# - **stop** at `block_size` tokens (what the `max_len` of `KVCache` enforces: `append`
#   raises an error);
# - **refill**: empty the cache and prefill it again from the last `keep` tokens. With
#   `keep = block_size` this computes exactly what the uncached loop computes (the same
#   tokens), but from then on every step is a full prefill: no saving. With a smaller
#   `keep` one prefill buys `block_size - keep` cheap steps, at the price of a shorter
#   context right after each refill (so the tokens differ from the uncached loop's);
# - use **relative** positions (rotary embeddings and the like), where a key's position
#   enters only through its offset to the query, and a cache can slide.
#
# `CharGPT.generate(..., kv_cache=True, keep=...)` implements the refill, with
# `keep = block_size` as the default so that cached and uncached generation agree token for
# token at every length:

# %%
ml.show(ml.models.CharGPT.generate)

# %% [markdown]
# Chapter 1's model was built with the default `ml.models.Attention`, which has no cache.
# `ml.attention.MultiHeadAttention` has the same parameters under the same names
# (`qkv`, `proj`), so the trained weights load unchanged into a CharGPT built with it;
# asking the old model for a cache gives a clear error:

# %%
try:
    base.generate(ids[:, :8], 5, kv_cache=True)
except TypeError as err:
    print(f"TypeError: {err}")

# %%
def chargpt(kv_heads=None, block_size=None, **kw):
    """A CharGPT shaped like chapter 1's, with MultiHeadAttention (kv_heads key/value heads)."""
    attn = functools.partial(ml.attention.MultiHeadAttention, kv_heads=kv_heads)
    return ml.models.CharGPT(corpus.vocab_size, block_size=block_size or cfg["block_size"],
                             n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                             dropout=0.0, attn=attn, **kw).to(dev).eval()


gpt = chargpt()
gpt.load_state_dict(base.state_dict())
with torch.no_grad():
    err = (gpt(ids) - base(ids)).abs().max().item()
print(f"max |logits|, MultiHeadAttention vs chapter 1's Attention: {err:.2e}")
assert err < 1e-4

# %% [markdown]
# ### Same tokens, with and without the cache
#
# Greedy decoding (always the most likely token, `top_k=1`) and sampling with a fixed seed
# must give the same tokens whether or not the cache is used, including past `block_size`,
# where the cached loop refills. The logits agree to float32 rounding, not bit for bit (a
# matrix product over a different number of rows may round differently), so in principle a
# near-tie could flip one sample; the check below is the real test.

# %%
prompt = corpus.encode("ROMEO:\n")[None].to(dev)
n_check = ml.pick(smoke=40, cpu=2 * cfg["block_size"] + 20, gpu=2 * cfg["block_size"] + 20)
checks = []
for name, kw in [("greedy", dict(top_k=1)), ("sampled, T=0.8", dict(temperature=0.8))]:
    outs = {}
    for cache in (False, True):
        torch.manual_seed(42)
        outs[cache] = gpt.generate(prompt, n_check, kv_cache=cache, **kw)
    same = torch.equal(outs[False], outs[True])
    checks.append({"decoding": name, "new tokens": n_check, "block_size": cfg["block_size"],
                   "identical tokens": same})
    assert same, name
ml.bench.Table(checks, title="Cached vs uncached generation, chapter 1's CharGPT")

# %%
torch.manual_seed(0)
sample = gpt.generate(prompt, ml.pick(smoke=60, cpu=300, gpu=500), temperature=0.8,
                      kv_cache=True, keep=cfg["block_size"] // 2)
print(corpus.decode(sample[0]))

# %% [markdown]
# (The sample above used `keep = block_size // 2`: it refills the cache once every
# `block_size // 2` tokens. The text is as good as chapter 1's model makes it.)
#
# ### What the cache saves: FLOPs and time
#
# First the count. For each step $t$ (the token at position $t$ being fed), the FLOPs of the
# uncached forward of $t$ tokens and of the cached forward of one token:

# %%
steps = list(range(1, cfg["block_size"] + 1))
x_full = torch.randint(corpus.vocab_size, (1, cfg["block_size"]), device=dev)
caches = gpt.make_caches(1)
flops_nocache, flops_cache = [], []
for t in steps:
    flops_nocache.append(ml.bench.count_flops(gpt, x_full[:, :t]))
    for c in caches:
        c.length = t - 1                      # t - 1 tokens cached (their values do not matter)
    flops_cache.append(ml.bench.count_flops(gpt, x_full[:, t - 1:t], caches))
total_nc, total_c = sum(flops_nocache), sum(flops_cache)
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(steps, [f / 1e6 for f in flops_nocache], label="without cache: forward of t tokens")
ax.plot(steps, [f / 1e6 for f in flops_cache], label="with cache: forward of 1 token")
ax.set(xlabel="step t (tokens so far)", ylabel="MFLOP per step",
       title=f"CharGPT, FLOPs per decoding step; {total_nc / total_c:.1f}x fewer over "
             f"{cfg['block_size']} tokens")
ax.legend()
plt.show()

# %% tags=["remove-cell"]
ml.glue("a32_flops_ratio", total_nc / total_c, ".1f")
ml.glue("a32_block", cfg["block_size"])

# %% [markdown]
# Over a full window of {glue:}`a32_block` tokens the cache does {glue:}`a32_flops_ratio`
# times fewer FLOPs. The cached curve is not flat: attention over $t$ keys grows with $t$,
# but at this width it is a small part of each step.
#
# Now the clock: tokens per second for generating $n$ new tokens after an 8-character
# prompt, with and without the cache, at batch 1 and a larger batch (the whole batch
# decodes in lockstep: tokens/s counts all sequences). `ml.bench.compare` runs the two in
# alternating rounds and reports the cache's speed-up as the median of the per-round
# ratios with their interquartile range (IQR), so a moment of noise hits both sides.

# %%
lengths = ml.pick(smoke=[4, 8], cpu=[8, 16, 32, cfg["block_size"] - 8],
                  gpu=[16, 64, 128, cfg["block_size"] - 8])
batches = ml.pick(smoke=[1, 4], cpu=[1, 32], gpu=[1, 64])
repeat = ml.pick(smoke=2, cpu=5, gpu=7)
p8 = corpus.encode("ROMEO:\nW")[None].to(dev)


def cache_speedup(model, prompt, n):
    """The KV cache against recomputing the prefix, generating n tokens: a Comparison."""
    return ml.bench.compare(lambda: model.generate(prompt, n, kv_cache=False),
                            lambda: model.generate(prompt, n, kv_cache=True), warmup=1, repeat=repeat)


speed_rows = []
for bs in batches:
    for n in lengths:
        cmp = cache_speedup(gpt, p8.repeat(bs, 1), n)
        speed_rows.append({"batch": bs, "new tokens": n, "no cache tok/s": bs * n / cmp.baseline.median,
                           "cache tok/s": bs * n / cmp.candidate.median, "speed-up (IQR)": cmp})
ml.bench.Table(speed_rows, title=f"CharGPT generation on {dev.type}, {repeat} interleaved rounds",
               formats={"no cache tok/s": "{:,.0f}", "cache tok/s": "{:,.0f}"})

# %%
fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.2))
for ax, bs in zip(axes, batches):
    rows = [r for r in speed_rows if r["batch"] == bs]
    for key, label in (("no cache tok/s", "without cache"), ("cache tok/s", "with KV cache")):
        ax.plot([r["new tokens"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    ax.set(xlabel="new tokens generated", ylabel="tokens / s", title=f"batch {bs}", ylim=(0, None))
    ax.legend()
plt.tight_layout()
plt.show()
last = {bs: [r for r in speed_rows if r["batch"] == bs][-1] for bs in batches}

# %% tags=["remove-cell"]
for key, bs in (("b1", batches[0]), ("bbig", batches[-1])):
    cmp = last[bs]["speed-up (IQR)"]
    ml.glue(f"a32_speedup_{key}", cmp.speedup, ".1f")
    ml.glue(f"a32_speedup_{key}_iqr", f"{cmp.lo:.1f}-{cmp.hi:.1f}x")
    ml.glue(f"a32_speedup_{key}_words", cmp.words(same="no faster or slower, within the noise"))
ml.glue("a32_bbig", batches[-1])
ml.glue("a32_nmax", lengths[-1])
ml.glue("a32_tps_b1_cache", last[batches[0]]["cache tok/s"], ",.0f")
ml.glue("a32_tps_b1_nocache", last[batches[0]]["no cache tok/s"], ",.0f")

# %% [markdown]
# For {glue:}`a32_nmax` new tokens, generation with the cache runs at
# {glue:}`a32_speedup_b1` times the speed without it at batch 1 (IQR
# {glue:}`a32_speedup_b1_iqr`: {glue:}`a32_speedup_b1_words`;
# {glue:}`a32_tps_b1_nocache` → {glue:}`a32_tps_b1_cache` tokens/s) and at
# {glue:}`a32_speedup_bbig` times at batch {glue:}`a32_bbig` (IQR
# {glue:}`a32_speedup_bbig_iqr`: {glue:}`a32_speedup_bbig_words`), far less than the
# {glue:}`a32_flops_ratio`x in FLOPs at batch 1. At batch 1 on a CPU this model is tiny: a
# step runs a few dozen small kernels, each taking microseconds of Python and dispatch
# overhead whatever its size, so a 1-token forward costs not much less than a 50-token one.
# With a larger batch each step has real work to do, and the FLOPs saved start to show as
# time saved.
#
# Chapter 1's model has a window of only {glue:}`a32_block` tokens, so the quadratic cost
# never gets far. The speed of generation does not depend on the values of the weights, so
# a CharGPT of the same shape with random weights and a longer window shows where the two
# curves go:

# %%
long_block = ml.pick(smoke=64, cpu=512, gpu=1024)
long_lengths = ml.pick(smoke=[16, 48], cpu=[64, 128, 256, 448], gpu=[128, 256, 512, 960])
long_gpt = chargpt(block_size=long_block)
long_rows = []
for n in long_lengths:
    cmp = cache_speedup(long_gpt, p8, n)
    long_rows.append({"new tokens": n, "no cache tok/s": n / cmp.baseline.median,
                      "cache tok/s": n / cmp.candidate.median, "speed-up (IQR)": cmp})
fig, ax = plt.subplots(figsize=(6, 3.2))
for key, label in (("no cache tok/s", "without cache"), ("cache tok/s", "with KV cache")):
    ax.plot([r["new tokens"] for r in long_rows], [r[key] for r in long_rows], marker="o", label=label)
ax.set(xlabel="new tokens generated", ylabel="tokens / s", ylim=(0, None),
       title=f"CharGPT shape, block_size {long_block}, batch 1 (random weights)")
ax.legend()
plt.show()
ml.bench.Table(long_rows, title=f"Generation with a {long_block}-token window, batch 1, {dev.type}, "
                          f"{repeat} interleaved rounds", formats={"no cache tok/s": "{:,.0f}", "cache tok/s": "{:,.0f}"})

# %% tags=["remove-cell"]
ml.glue("a32_long_block", long_block)
ml.glue("a32_long_n", long_lengths[-1])
long_cmp = long_rows[-1]["speed-up (IQR)"]
ml.glue("a32_long_speedup", long_cmp.speedup, ".1f")
ml.glue("a32_long_speedup_iqr", f"{long_cmp.lo:.1f}-{long_cmp.hi:.1f}x")
ml.glue("a32_long_speedup_words", long_cmp.words(same="no faster or slower, within the noise"))
# does the gap widen with the length? the speed-up at the longest length against the shortest
first_cmp = long_rows[0]["speed-up (IQR)"]
ml.glue("a32_long_widens", "widens" if long_cmp.lo > first_cmp.hi else
        "narrows" if long_cmp.hi < first_cmp.lo else "does not measurably change")  # IQRs apart or not

# %% [markdown]
# Without a cache each step is a forward over the whole prefix, so its rate should fall as
# the sequence grows; with the cache a step is one token-forward plus attention over a
# cache that is still short, so its rate should stay roughly level. At
# {glue:}`a32_long_n` tokens generation with the cache runs at {glue:}`a32_long_speedup`
# times the speed without it (IQR {glue:}`a32_long_speedup_iqr`:
# {glue:}`a32_long_speedup_words`), and from the shortest length to the longest the gap
# {glue:}`a32_long_widens` (the longest length's IQR against the shortest's).
#
# ## 3.2.3 Multi-query and grouped-query attention
#
# The cache trades compute for memory, and at scale the memory wins the argument. Each
# decoding step must read the model's weights **and the whole cache** to produce one token
# per sequence, and does only a couple of FLOPs per byte read: far left on chapter 1's
# roofline {cite}`williams2009roofline`, memory-bound. Weights are read once per step for
# the whole batch; the cache is per sequence and grows with the context. At a large batch
# or a long context the cache is most of the bytes, and the time.
#
# **MQA** {cite}`shazeer2019mqa` keeps $H$ query heads but only **one** key head and one
# value head, shared by all of them. **GQA** {cite}`ainslie2023gqa` interpolates: $H_{kv}$
# key/value heads, each shared by a group of $G = H / H_{kv}$ query heads ($H_{kv} = H$ is
# multi-head attention, $H_{kv} = 1$ is MQA). Query head $h$ uses key/value head
# $\lfloor h / G \rfloor$:
#
# $$o_h = \operatorname{softmax}\!\Big(\frac{Q_h K_{\lfloor h/G \rfloor}^\top}{\sqrt d} + M\Big)
# V_{\lfloor h/G \rfloor} .$$
#
# The cache shrinks by $H / H_{kv}$, and so does the key/value part of the `qkv` projection
# ($(H + 2H_{kv})\,d \times C$ instead of $3C \times C$). The simplest implementation repeats
# each key/value head $G$ times and runs ordinary attention; PyTorch's
# `F.scaled_dot_product_attention(..., enable_gqa=True)` and our `ml.attention.scaled_dot_product`
# avoid the copy (the library reshapes the queries to `(B, Hkv, G * T, d)`, so each
# key/value head is read once for its whole group; exercise 4 writes it):

# %%
torch.manual_seed(0)
B, H, Hkv, T, d = 2, 8, 2, 12, 16
q = torch.randn(B, H, T, d, dtype=torch.float64, requires_grad=True)
k = torch.randn(B, Hkv, T, d, dtype=torch.float64, requires_grad=True)
v = torch.randn(B, Hkv, T, d, dtype=torch.float64, requires_grad=True)
G = H // Hkv
naive = F.scaled_dot_product_attention(q, k.repeat_interleave(G, dim=1),
                                       v.repeat_interleave(G, dim=1), is_causal=True)
ours = ml.attention.scaled_dot_product(q, k, v, causal=True)
torch_gqa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
g = torch.randn_like(naive)
grads_naive = torch.autograd.grad(naive, (q, k, v), g)
grads_ours = torch.autograd.grad(ours, (q, k, v), g)
print(f"forward, ours vs repeat + SDPA: {(ours - naive).abs().max():.1e}; "
      f"vs enable_gqa: {(ours - torch_gqa).abs().max():.1e}")
print("backward, max abs error (dq, dk, dv):",
      [f"{(a - b).abs().max():.1e}" for a, b in zip(grads_ours, grads_naive)])
torch.testing.assert_close(ours, naive)
for a, b in zip(grads_ours, grads_naive):
    torch.testing.assert_close(a, b)

# %% [markdown]
# `ml.attention.MultiHeadAttention(dim, heads, kv_heads=...)` uses it, with the cache
# holding only the $H_{kv}$ key/value heads.
#
# ### How big is the cache?
#
# For CharGPT the cache is small next to the weights. For an LLM it is not. Take the shape
# of a common 7-billion-parameter model (32 layers, 32 heads of $d = 128$, so $C = 4096$;
# we count its weights with a gated MLP of width 11008 and a 32,000-token vocabulary), in
# 16-bit floats, with an 8,192-token context:

# %%
def kv_cache_bytes(layers, batch, kv_heads, tokens, head_dim, bytes_per_number):
    """2 (keys and values) x layers x batch x kv heads x tokens x head dim, in bytes."""
    return 2 * layers * batch * kv_heads * tokens * head_dim * bytes_per_number


H_gpt = cfg["n_head"]
kv_options = sorted({H_gpt, max(1, H_gpt // 2), 1}, reverse=True)


def variant_name(kv, heads):
    return "MHA" if kv == heads else ("MQA" if kv == 1 else f"GQA-{kv}")


d_gpt = cfg["n_embd"] // H_gpt
gpt_bytes = ml.bench.model_bytes(base)
rows = []
for kv in kv_options:
    cache = chargpt(kv_heads=kv).make_caches(1)
    measured = sum(c.nbytes for c in cache)            # the buffers KVCache really allocates
    formula = kv_cache_bytes(cfg["n_layer"], 1, kv, cfg["block_size"], d_gpt, 4)
    assert measured == formula
    rows.append({"model": f"CharGPT ({cfg['n_layer']} layers, {H_gpt} heads, d={d_gpt}, fp32)",
                 "attention": variant_name(kv, H_gpt), "kv heads": kv,
                 "context": cfg["block_size"], "cache, batch 1": ml.bench.fmt_bytes(formula),
                 "per token": ml.bench.fmt_bytes(formula / cfg["block_size"]),
                 "weights": ml.bench.fmt_bytes(gpt_bytes)})

L_llm, H_llm, d_llm, ctx, mlp_llm, vocab = 32, 32, 128, 8192, 11008, 32000
C_llm = H_llm * d_llm
llm_weights = 2 * (L_llm * (4 * C_llm ** 2 + 3 * C_llm * mlp_llm) + 2 * vocab * C_llm)  # fp16
llm_cache = {}
for kv, name in ((32, "MHA"), (8, "GQA-8"), (1, "MQA")):
    llm_cache[name] = kv_cache_bytes(L_llm, 1, kv, ctx, d_llm, 2)
    rows.append({"model": "7B-class LLM (32 layers, 32 heads, d=128, fp16)", "attention": name,
                 "kv heads": kv, "context": ctx, "cache, batch 1": ml.bench.fmt_bytes(llm_cache[name]),
                 "per token": ml.bench.fmt_bytes(llm_cache[name] / ctx),
                 "weights": ml.bench.fmt_bytes(llm_weights)})
ml.bench.Table(rows, title="KV cache size = 2 x layers x batch x kv heads x context x head dim x bytes")

# %%
batch_llm = 16
step_bytes = {name: llm_weights + batch_llm * c for name, c in llm_cache.items()}
print({name: ml.bench.fmt_bytes(b) for name, b in step_bytes.items()},
      f"bytes read per decoding step at batch {batch_llm}, context {ctx}")

# %% tags=["remove-cell"]
ml.glue("a32_llm_mha", ml.bench.fmt_bytes(llm_cache["MHA"]))
ml.glue("a32_llm_gqa", ml.bench.fmt_bytes(llm_cache["GQA-8"]))
ml.glue("a32_llm_mqa", ml.bench.fmt_bytes(llm_cache["MQA"]))
ml.glue("a32_llm_weights", ml.bench.fmt_bytes(llm_weights))
ml.glue("a32_llm_token", ml.bench.fmt_bytes(llm_cache["MHA"] / ctx))
ml.glue("a32_llm_batch", batch_llm)
ml.glue("a32_llm_cache_share", 100 * batch_llm * llm_cache["MHA"] / step_bytes["MHA"], ".0f")
ml.glue("a32_llm_gqa_gain", step_bytes["MHA"] / step_bytes["GQA-8"], ".1f")
ml.glue("a32_llm_mqa_gain", step_bytes["MHA"] / step_bytes["MQA"], ".1f")
ml.glue("a32_llm_crossover", llm_weights / llm_cache["MHA"], ".1f")

# %% [markdown]
# With multi-head attention the 7B-class model's cache is {glue:}`a32_llm_token` per token:
# {glue:}`a32_llm_mha` for one 8k-token sequence, against {glue:}`a32_llm_weights` of
# weights, so from about {glue:}`a32_llm_crossover` sequences of full context on, the cache
# is larger than the model. GQA with 8 key/value heads cuts it to {glue:}`a32_llm_gqa`, MQA
# to {glue:}`a32_llm_mqa`. At batch {glue:}`a32_llm_batch` and full context, the MHA cache
# is {glue:}`a32_llm_cache_share`% of the bytes a decoding step reads; if the step is
# bound by memory bandwidth, its time is proportional to those bytes, and GQA-8 would make
# it up to {glue:}`a32_llm_gqa_gain` times faster, MQA up to {glue:}`a32_llm_mqa_gain`
# times. The smaller cache also frees memory for a larger batch, which is how serving
# systems turn it into throughput {cite}`pope2023inference`.
#
# ### Converting a trained model: mean-pool, then uptrain
#
# Training a GQA model from scratch is one option. Ainslie et al. {cite}`ainslie2023gqa`
# convert an existing multi-head checkpoint instead: the key (and value) projection of each
# new shared head is the **mean** of the projections of the heads in its group (better, in
# their ablation, than keeping one head of the group or initializing at random), and the
# converted model is then trained a little longer with its original recipe ("uptraining",
# 5% of the pre-training steps in the paper). Queries and the output projection are kept:

# %%
ml.show(ml.attention.pool_kv_heads)

# %%
def convert(kv_heads):
    """Chapter 1's CharGPT with every attention layer mean-pooled to kv_heads key/value heads."""
    model = chargpt()
    model.load_state_dict(base.state_dict())
    for block in model.blocks:
        block.attn = ml.attention.pool_kv_heads(block.attn, kv_heads)
    return model.to(dev)


# The validation windows of chapter 1 (same seed, same count), so losses are comparable.
val = list(ml.data.TokenBatches(corpus.val_ids, cfg["block_size"], cfg["batch_size"],
                                steps=cfg["eval_batches"], device=dev,
                                generator=torch.Generator().manual_seed(1234)))
base_loss = ml.train.evaluate(base, val)["loss"]
print(f"chapter 1's model: val loss {base_loss:.4f} (its record: {base_record['metrics']['val_loss']:.4f})")
converted = {kv: ml.train.evaluate(convert(kv), val)["loss"] for kv in kv_options}
for kv, loss in converted.items():
    print(f"{variant_name(kv, H_gpt):>6} ({kv} kv heads), just converted: val loss {loss:.4f}")

# %% [markdown]
# Pooling throws information away, and the loss says so (MHA, pooled into itself, is the
# original model). Now uptrain: the same recipe as chapter 1 (AdamW with weight decay on
# matrices only, warm-up then cosine decay, gradient clipping, random windows from
# `ml.data.TokenBatches`) at half of its peak learning rate, for a number of steps that is a
# fraction of chapter 1's; the validation loss is logged every 5% of the pre-training steps.
# A fair comparison needs a **control**: chapter 1's model is not fully trained, so the MHA
# model, trained for the same extra steps, improves too. Each run is cached like the
# baselines (`ml.train.train_or_load`).

# %%
up_steps = ml.pick(smoke=4, cpu=cfg["steps"] // 5, gpu=cfg["steps"] // 10)
up_every = max(1, ml.pick(smoke=2, cpu=cfg["steps"] // 20, gpu=cfg["steps"] // 20))


def uptrain(kv_heads):
    up_cfg = {"base": {k: cfg[k] for k in sorted(cfg)}, "kv_heads": kv_heads, "steps": up_steps,
              "eval_every": up_every, "lr": cfg["lr"] / 2, "seed": 0}

    def train(model):
        opt = ml.train.adamw(model, up_cfg["lr"], cfg["weight_decay"], cfg["betas"])
        batches = ml.data.TokenBatches(corpus.train_ids, cfg["block_size"], cfg["batch_size"],
                                       steps=up_steps, device=dev)
        return ml.train.fit(model, batches, optimizer=opt, steps=up_steps,
                            schedule=ml.train.warmup_cosine(up_steps, up_steps // 20,
                                                             final=cfg["final_lr"]),
                            grad_clip=cfg["grad_clip"], eval_loader=val, eval_every=up_every,
                            desc=f"uptrain kv_heads={kv_heads}")

    return ml.train.train_or_load(f"a32-uptrain-kv{kv_heads}", up_cfg,
                                  lambda: convert(kv_heads), train, device=dev)


uptrained = {kv: uptrain(kv) for kv in kv_options}

# %%
histories = {}
for kv, (model, record) in uptrained.items():
    hist = ml.train.History.from_dict(record["history"])
    histories[variant_name(kv, H_gpt)] = {
        "fraction of pre-training steps": [0.0] + [s / cfg["steps"] for s in hist.column("step")],
        "val_loss": [converted[kv]] + hist.column("val_loss")}
ml.plot.learning_curves(histories, y="val_loss", x="fraction of pre-training steps",
                        title="Uptraining after mean-pooling the key/value heads",
                        ylabel="validation loss (nats per character)")
plt.show()

# %%
mha_after = uptrained[H_gpt][1]["metrics"]["val_loss"]
five = max(1, round(0.05 * cfg["steps"] / up_every))        # the eval closest to 5% of pre-training
quality_rows = []
for kv, (model, record) in uptrained.items():
    hist = ml.train.History.from_dict(record["history"])
    losses = hist.column("val_loss")
    quality_rows.append({
        "attention": variant_name(kv, H_gpt), "kv heads": kv,
        "KV cache (batch 1, full window)": ml.bench.fmt_bytes(sum(c.nbytes for c in model.make_caches(1))),
        "params": ml.bench.count_params(model),
        "val loss: ch. 1 model": base_loss,
        "converted": converted[kv],
        f"+{hist.column('step')[min(five, len(losses)) - 1]} steps": losses[min(five, len(losses)) - 1],
        f"+{up_steps} steps": losses[-1],
        "vs MHA control": losses[-1] - mha_after,
    })
ml.bench.Table(quality_rows, title=f"CharGPT: MHA -> GQA/MQA by mean-pooling, then uptraining "
                                   f"({up_steps} steps = {100 * up_steps / cfg['steps']:.0f}% of pre-training)")

# %%
q_by = {r["attention"]: r for r in quality_rows}
gqa_name = variant_name(kv_options[1], H_gpt) if len(kv_options) > 2 else "MQA"
five_key = [k for k in quality_rows[0] if k.startswith("+")][0]
# Is GQA closer to the control than MQA? Paired over the same validation characters:
# MQA's loss minus GQA's, with the standard error of the per-character differences.
per_char = {variant_name(kv, H_gpt): ml.sparsity.token_losses(model, val) for kv, (model, _) in uptrained.items()}
gqa_lead, gqa_lead_se = ml.bench.paired_difference(per_char[gqa_name], per_char["MQA"])
gqa_lead_words = ml.bench.quality_verdict(gqa_lead, gqa_lead_se, better="closer to the control than",
                                          worse="farther from the control than",
                                          same="not measurably closer to the control than")
print(f"MQA loss - {gqa_name} loss on the same {len(per_char['MQA']):,} validation characters: "
      f"{gqa_lead:+.4f} ± {gqa_lead_se:.4f} nats: {gqa_name} ends {gqa_lead_words} MQA")

# %% tags=["remove-cell"]
ml.glue("a32_up_steps", up_steps)
ml.glue("a32_up_pct", 100 * up_steps / cfg["steps"], ".0f")
ml.glue("a32_base_loss", base_loss, ".3f")
ml.glue("a32_mha_after", mha_after, ".3f")
ml.glue("a32_mqa_conv", q_by["MQA"]["converted"], ".3f")
ml.glue("a32_mqa_after", q_by["MQA"][f"+{up_steps} steps"], ".3f")
ml.glue("a32_mqa_gap", q_by["MQA"]["vs MHA control"], ".3f")
ml.glue("a32_gqa_name", gqa_name)
ml.glue("a32_gqa_conv", q_by[gqa_name]["converted"], ".3f")
ml.glue("a32_gqa_after", q_by[gqa_name][f"+{up_steps} steps"], ".3f")
ml.glue("a32_gqa_gap", q_by[gqa_name]["vs MHA control"], ".3f")
ml.glue("a32_gqa_lead", gqa_lead, "+.4f")
ml.glue("a32_gqa_lead_se", gqa_lead_se, ".4f")
ml.glue("a32_gqa_lead_words", gqa_lead_words)
ml.glue("a32_five_steps", five_key.split()[0].lstrip("+"))
ml.glue("a32_mha_five", q_by["MHA"][five_key], ".3f")
ml.glue("a32_mqa_five", q_by["MQA"][five_key], ".3f")
ml.glue("a32_gqa_five", q_by[gqa_name][five_key], ".3f")

# %% [markdown]
# Right after conversion {glue:}`a32_gqa_name` has a validation loss of
# {glue:}`a32_gqa_conv` nats and MQA {glue:}`a32_mqa_conv` (chapter 1's model:
# {glue:}`a32_base_loss`): pooling alone is not enough, the more so the more heads share.
# After {glue:}`a32_up_steps` steps ({glue:}`a32_up_pct`% of the pre-training steps)
# {glue:}`a32_gqa_name` reaches {glue:}`a32_gqa_after` and MQA {glue:}`a32_mqa_after`,
# against {glue:}`a32_mha_after` for the MHA control trained the same steps: a gap of
# {glue:}`a32_gqa_gap` and {glue:}`a32_mqa_gap` nats. The more heads share a key/value
# head, the more it should cost, as in the paper. Compared on the same validation
# characters, {glue:}`a32_gqa_name` ends {glue:}`a32_gqa_lead_words` MQA (MQA minus
# {glue:}`a32_gqa_name`: {glue:}`a32_gqa_lead` ± {glue:}`a32_gqa_lead_se` nats, two standard
# errors deciding). That standard error covers the test characters only, and neighbouring
# characters are not independent, so it is a lower bound; it does not cover the spread
# between training seeds, which single runs cannot measure. Note the first point of each curve, after
# {glue:}`a32_five_steps` steps, 5% of the pre-training steps as in the paper: the
# control is at {glue:}`a32_mha_five`, *above* where it started, because the learning
# rate warms up again from the end of a decayed schedule and disturbs the trained
# weights before the decay brings them back down ({glue:}`a32_gqa_name`:
# {glue:}`a32_gqa_five`, MQA: {glue:}`a32_mqa_five`). With our short run, 5% of it is
# not enough; the paper's 5% is of a far larger pre-training run.
#
# ### Decoding speed of MHA, GQA and MQA
#
# First the uptrained CharGPTs, generating with the cache at batch 1 and at a larger
# batch. A ratio of two separate timings moves with whatever the machine does in between,
# so each variant is timed against MHA in interleaved rounds (`ml.bench.compare`: MHA,
# variant, then variant, MHA, ...), and its speed-up is the median of the per-round
# ratios, with their interquartile range (IQR) as the spread:

# %%
n_dec = lengths[-1]
dec_repeat = ml.pick(smoke=2, cpu=20, gpu=20)   # ratios near 1 need many rounds
mha_model = uptrained[H_gpt][0]
dec_rows, dec_cmp, cache_bytes = [], {}, {}
for bs in batches:
    prompt_bs = p8.repeat(bs, 1)
    mha_generate = functools.partial(mha_model.generate, prompt_bs, n_dec, kv_cache=True)
    cache_bytes[bs] = sum(c.nbytes for c in mha_model.make_caches(bs))
    for kv, (model, record) in uptrained.items():
        if kv == H_gpt:
            continue
        name = variant_name(kv, H_gpt)
        cmp = ml.bench.compare(mha_generate, functools.partial(model.generate, prompt_bs, n_dec, kv_cache=True),
                               warmup=1, repeat=dec_repeat)
        dec_cmp[name, bs] = cmp
        dec_rows.append({
            "batch": bs, "attention": name,
            "KV cache: MHA → variant": f"{ml.bench.fmt_bytes(cache_bytes[bs])} → "
                                       f"{ml.bench.fmt_bytes(sum(c.nbytes for c in model.make_caches(bs)))}",
            "MHA (tokens/s)": bs * n_dec / cmp.baseline.median,
            "variant (tokens/s)": bs * n_dec / cmp.candidate.median,
            "speed-up over MHA (IQR)": cmp})
ml.bench.Table(dec_rows, title=f"Cached generation of {n_dec} tokens, trained CharGPTs, {dev.type}; "
                               f"each variant against MHA in {dec_repeat} interleaved rounds",
               formats={"MHA (tokens/s)": "{:,.0f}", "variant (tokens/s)": "{:,.0f}"})

# %% tags=["remove-cell"]
def speed_words(cmp):
    """'faster than' / 'slower than' / 'no faster or slower, within the noise, than', from the IQR."""
    return cmp.words(faster="faster than", slower="slower than", same="no faster or slower, within the noise, than")


b1, bbig = batches[0], batches[-1]
ml.glue("a32_dec_mha_b1", b1 * n_dec / dec_cmp["MQA", b1].baseline.median, ".0f")
ml.glue("a32_dec_mqa_b1", b1 * n_dec / dec_cmp["MQA", b1].candidate.median, ".0f")
ml.glue("a32_dec_mqa_gain_b1", dec_cmp["MQA", b1].speedup, ".2f")
ml.glue("a32_dec_mqa_iqr_b1", f"{dec_cmp['MQA', b1].lo:.2f}-{dec_cmp['MQA', b1].hi:.2f}")
ml.glue("a32_dec_mqa_words_b1", speed_words(dec_cmp["MQA", b1]))
ml.glue("a32_dec_mqa_gain_bbig", dec_cmp["MQA", bbig].speedup, ".2f")
ml.glue("a32_dec_mqa_iqr_bbig", f"{dec_cmp['MQA', bbig].lo:.2f}-{dec_cmp['MQA', bbig].hi:.2f}")
ml.glue("a32_dec_mqa_words_bbig", speed_words(dec_cmp["MQA", bbig]))
ml.glue("a32_dec_gqa_gain_bbig", dec_cmp[gqa_name, bbig].speedup, ".2f")
ml.glue("a32_dec_gqa_iqr_bbig", f"{dec_cmp[gqa_name, bbig].lo:.2f}-{dec_cmp[gqa_name, bbig].hi:.2f}")
ml.glue("a32_dec_gqa_words_bbig", speed_words(dec_cmp[gqa_name, bbig]))
ml.glue("a32_dec_repeat", dec_repeat)
ml.glue("a32_gpt_cache_b1", ml.bench.fmt_bytes(cache_bytes[b1]))
ml.glue("a32_gpt_cache_bbig", ml.bench.fmt_bytes(cache_bytes[bbig]))
ml.glue("a32_gpt_weights", ml.bench.fmt_bytes(gpt_bytes))
ml.glue("a32_w_over_cache_b1", gpt_bytes / cache_bytes[b1], ".0f")
ml.glue("a32_cache_over_w_bbig", cache_bytes[bbig] / gpt_bytes, ".1f")

# %% [markdown]
# The MHA cache is {glue:}`a32_gpt_cache_b1` at batch 1 and {glue:}`a32_gpt_cache_bbig` at
# batch {glue:}`a32_bbig`, next to {glue:}`a32_gpt_weights` of weights. At batch 1 the
# weights are {glue:}`a32_w_over_cache_b1` times the cache, so a decoding step reads mostly
# weights (and pays per-kernel overheads). There MQA ({glue:}`a32_dec_mqa_b1` tokens/s,
# MHA {glue:}`a32_dec_mha_b1`) generates {glue:}`a32_dec_mqa_words_b1` MHA: the median
# per-round speed-up is {glue:}`a32_dec_mqa_gain_b1` (IQR {glue:}`a32_dec_mqa_iqr_b1`,
# {glue:}`a32_dec_repeat` rounds). At batch {glue:}`a32_bbig` the cache is
# {glue:}`a32_cache_over_w_bbig` times the weights, and MQA generates
# {glue:}`a32_dec_mqa_words_bbig` MHA: {glue:}`a32_dec_mqa_gain_bbig` times its speed (IQR
# {glue:}`a32_dec_mqa_iqr_bbig`); {glue:}`a32_gqa_name` generates
# {glue:}`a32_dec_gqa_words_bbig` MHA: {glue:}`a32_dec_gqa_gain_bbig` times its speed (IQR
# {glue:}`a32_dec_gqa_iqr_bbig`). The larger batch is the regime the claim of MQA and GQA
# is about: the cache is most of the bytes. We can push further into it on this machine by
# making the cache large: a decoding step of a CharGPT-shaped model (random weights) with
# its cache filled to a long context, at several batch sizes, each variant again
# interleaved with MHA. The step reads the weights once and the cache of every sequence:

# %%
ctx_big = ml.pick(smoke=128, cpu=1024, gpu=4096)
step_batches = ml.pick(smoke=[1, 4], cpu=[1, 16, 64], gpu=[1, 32, 128])
step_repeat = ml.pick(smoke=3, cpu=25, gpu=30)
step_models = {kv: chargpt(kv_heads=kv, block_size=ctx_big) for kv in kv_options}


def decode_step(model, bs):
    """One decoding step of `model` for bs sequences against a full ctx_big-token cache; and its bytes."""
    caches = model.make_caches(bs)
    for c in caches:
        c.k.normal_(), c.v.normal_()                 # random keys and values: the time does not depend on them
    x_new = torch.zeros(bs, 1, dtype=torch.long, device=dev)

    def step():
        for c in caches:
            c.length = ctx_big - 1                   # a full cache: attend over ctx_big keys
        with torch.no_grad():
            model(x_new, caches)

    return step, sum(c.nbytes for c in caches)


step_rows, step_cmp, step_mha_cache = [], {}, {}
for bs in step_batches:
    mha_step, step_mha_cache[bs] = decode_step(step_models[H_gpt], bs)
    for kv in kv_options[1:]:
        name = variant_name(kv, H_gpt)
        step, kv_bytes = decode_step(step_models[kv], bs)
        cmp = ml.bench.compare(mha_step, step, warmup=3, repeat=step_repeat)
        step_cmp[name, bs] = cmp
        step_rows.append({"batch": bs, "attention": name,
                          "KV cache: MHA → variant": f"{ml.bench.fmt_bytes(step_mha_cache[bs])} → "
                                                     f"{ml.bench.fmt_bytes(kv_bytes)}",
                          "MHA step": cmp.baseline, "variant step": cmp.candidate,
                          "speed-up over MHA (IQR)": cmp})
        del step
    del mha_step
ml.bench.Table(step_rows, title=f"One decoding step with a full {ctx_big}-token cache, {dev.type} (MHA weights: "
                                f"{ml.bench.fmt_bytes(ml.bench.model_bytes(step_models[H_gpt]))}); "
                                f"{step_repeat} interleaved rounds, times as median ± half the IQR")

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for kv in kv_options[1:]:
    name = variant_name(kv, H_gpt)
    cmps = [step_cmp[name, bs] for bs in step_batches]
    ax.errorbar(step_batches, [c.speedup for c in cmps], marker="o", capsize=3,
                yerr=[[c.speedup - c.lo for c in cmps], [c.hi - c.speedup for c in cmps]],
                label=f"{name} ({kv} kv heads)")
ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="as fast as MHA")
ax.set(xscale="log", xlabel="batch (sequences decoded together)", ylabel="speed-up over MHA (x)",
       title=f"Decoding step with a full {ctx_big}-token cache (bars: IQR)")
ax.legend()
plt.show()
bmax = step_batches[-1]
mqa_big = step_cmp["MQA", bmax]

# %% tags=["remove-cell"]
ml.glue("a32_ctx_big", ctx_big)
ml.glue("a32_step_bmax", bmax)
for key, cmp in (("mqa", mqa_big), ("gqa", step_cmp[gqa_name, bmax]), ("mqa_b1", step_cmp["MQA", step_batches[0]])):
    ml.glue(f"a32_step_{key}_gain", cmp.speedup, ".2f")
    ml.glue(f"a32_step_{key}_iqr", f"{cmp.lo:.2f}-{cmp.hi:.2f}")
    ml.glue(f"a32_step_{key}_words", speed_words(cmp))
    ml.glue(f"a32_step_{key}_verdict", cmp.verdict)
ml.glue("a32_step_cache_mha", ml.bench.fmt_bytes(step_mha_cache[bmax]))
ml.glue("a32_step_cache_ratio", H_gpt)
ml.glue("a32_step_vs_cache", ml.bench.verdict(
    mqa_big.speedup, mqa_big.lo, mqa_big.hi, reference=H_gpt,
    above="more than that", same="about as much: at this size the cache is nearly all the bytes of a step",
    below="less: the weights, the MLP and projections (real work at a large batch) and the per-kernel "
          "overheads do not shrink"))

# %% [markdown]
# With a full {glue:}`a32_ctx_big`-token cache at batch {glue:}`a32_step_bmax` (an MHA
# cache of {glue:}`a32_step_cache_mha`), {glue:}`a32_gqa_name` decodes
# {glue:}`a32_step_gqa_words` MHA, at {glue:}`a32_step_gqa_gain` times its speed (IQR
# {glue:}`a32_step_gqa_iqr`), and MQA {glue:}`a32_step_mqa_words` MHA, at
# {glue:}`a32_step_mqa_gain` times its speed (IQR {glue:}`a32_step_mqa_iqr`); at batch 1
# MQA decodes {glue:}`a32_step_mqa_b1_words` MHA ({glue:}`a32_step_mqa_b1_gain`x, IQR
# {glue:}`a32_step_mqa_b1_iqr`). The cache itself shrinks {glue:}`a32_step_cache_ratio`
# times with MQA, the step {glue:}`a32_step_vs_cache`. The less the cache weighs in the
# bytes of a step, the less its size matters. On a GPU serving an LLM, decoding sits in
# the bandwidth-bound regime at almost any useful batch, which is why nearly every recent
# large model uses GQA or MQA.
#
# ## Claimed vs measured
#
# | source | claim | measured here (CharGPT, {glue:}`a32_block`-token window; device in the banner) |
# | --- | --- | --- |
# | {cite}`pope2023inference` | decoding is memory-bandwidth bound; the KV cache avoids recomputation and its size (not the FLOPs) limits batch and context, which multi-query attention relieves | the cache changes no token (greedy and sampled); {glue:}`a32_flops_ratio`x fewer FLOPs over a full window; generation at {glue:}`a32_speedup_b1`x the uncached speed at batch 1 (IQR {glue:}`a32_speedup_b1_iqr`), {glue:}`a32_speedup_bbig`x at batch {glue:}`a32_bbig` (IQR {glue:}`a32_speedup_bbig_iqr`), {glue:}`a32_long_speedup`x for {glue:}`a32_long_n` tokens with a {glue:}`a32_long_block`-token window (IQR {glue:}`a32_long_speedup_iqr`) |
# | {cite}`shazeer2019mqa` | MQA makes incremental decoding much faster with only minor quality degradation | converted + uptrained MQA: {glue:}`a32_mqa_gap` nats from the MHA control (MQA minus control, single runs); decoding step with a large cache (batch {glue:}`a32_step_bmax`, {glue:}`a32_ctx_big` tokens) at {glue:}`a32_step_mqa_gain`x MHA's speed (IQR {glue:}`a32_step_mqa_iqr`: {glue:}`a32_step_mqa_verdict`), at batch 1 {glue:}`a32_step_mqa_b1_gain`x (IQR {glue:}`a32_step_mqa_b1_iqr`: {glue:}`a32_step_mqa_b1_verdict`) |
# | {cite}`ainslie2023gqa` | uptrained with 5% of the pre-training compute, GQA reaches quality close to MHA at a speed close to MQA; mean-pooling is the best conversion | {glue:}`a32_gqa_name` after {glue:}`a32_up_pct`% of the pre-training steps: {glue:}`a32_gqa_gap` nats from the MHA control (MQA {glue:}`a32_mqa_gap`); decoding step with a large cache at {glue:}`a32_step_gqa_gain`x MHA's speed (IQR {glue:}`a32_step_gqa_iqr`: {glue:}`a32_step_gqa_verdict`), MQA {glue:}`a32_step_mqa_gain`x |
# | (arithmetic) | a 7B-class model with an 8k context needs a KV cache comparable to its weights | MHA {glue:}`a32_llm_mha` per sequence vs {glue:}`a32_llm_weights` of weights; GQA-8 {glue:}`a32_llm_gqa`, MQA {glue:}`a32_llm_mqa` |
#
# The papers measure on TPUs with models of billions of parameters, where decoding is
# bandwidth-bound; at batch 1 our CharGPT on a CPU reads mostly weights and pays per-kernel
# overheads, so the size of its cache can matter only once the batch (or the context) makes
# the cache a large part of the bytes of a step.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: cache or weights? (explain, easy)
# For the 7B-class shape above (fp16 weights and cache), at which batch size does an MHA
# cache of 2,048 tokens per sequence weigh as much as the weights? And with GQA-8? What
# does a decoding step read mostly below and above that batch?

# %% tags=["solution", "hide-cell"]
# Solution 1
ctx_ex1 = 2048
for name, kv in (("MHA", H_llm), ("GQA-8", 8)):
    per_seq = kv_cache_bytes(L_llm, 1, kv, ctx_ex1, d_llm, 2)
    print(f"{name}: cache {ml.bench.fmt_bytes(per_seq)} per {ctx_ex1}-token sequence; the weights "
          f"({ml.bench.fmt_bytes(llm_weights)}) weigh as much as the caches of {llm_weights / per_seq:.1f} sequences")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# One sequence's cache is $2 \cdot L \cdot H_{kv} \cdot T \cdot d$ numbers of 2 bytes, and
# the batch at which the caches weigh as much as the weights is the weights divided by that,
# as printed. Below that batch a decoding step reads mostly weights; above it, mostly cache,
# and the cache's share grows with every sequence added. GQA-8 has $32 / 8 = 4$ times fewer
# key/value heads, so its crossover batch is exactly four times MHA's: the printout's two
# numbers differ by that factor.
# :::

# %% [markdown]
# ### Exercise 2: cheaper refills (measure, medium)
# Generate a few windows' worth of tokens from chapter 1's weights (`gpt`) with
# `keep=block_size` (the default) and with `keep=block_size // 2`, timed against each other
# with `ml.bench.compare`. Which is faster, and why? What does the model lose right after
# each refill? Measure that too: the validation loss of the next character with
# `keep` characters of context against a full window.

# %% tags=["solution", "hide-cell"]
# Solution 2
n_refill = ml.pick(smoke=3 * cfg["block_size"], cpu=300, gpu=600)
keep_half = cfg["block_size"] // 2
refill = ml.bench.compare(functools.partial(gpt.generate, prompt, n_refill, kv_cache=True),   # keep=block_size
                          functools.partial(gpt.generate, prompt, n_refill, kv_cache=True, keep=keep_half),
                          warmup=1, repeat=ml.pick(smoke=2, cpu=5, gpu=10))
print(f"{n_refill} tokens, keep={keep_half} against keep={cfg['block_size']}: speed-up {refill}: {refill.verdict}")

# Position t of a validation window predicts the next character from t + 1 characters of context.
with torch.no_grad():
    pos_loss = torch.cat([F.cross_entropy(gpt(x).transpose(1, 2), y, reduction="none") for x, y in val])  # (windows, T)
short, full = pos_loss[:, keep_half - 1], pos_loss[:, -1]
gap, se = ml.bench.paired_difference(full, short)       # paired by window: mean and standard error of the difference
words = ml.bench.quality_verdict(-gap, se, better="lower", worse="higher", same="not measurably different")
print(f"val loss of the next character with {keep_half} characters of context: {short.mean():.3f} nats, "
      f"with {cfg['block_size']}: {full.mean():.3f}; difference {gap:+.3f} ± {se:.3f}: "
      f"right after a refill the loss is {words}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# With `keep = block_size` the cache is full after the first window, and every later step
# refills it with a prefill of `block_size` tokens: the uncached cost, one full window per
# token. With `keep = block_size // 2` one prefill of half a window buys about half a window
# of one-token steps, so most steps are cheap; the first line of the printout gives the
# speed-up this buys, with its interquartile range over interleaved rounds and the verdict
# it supports. The price is context: right after a refill the model predicts from only
# `keep` characters instead of a full window. The second line measures what that costs in
# validation loss, and whether the difference is outside its standard error. Only the
# tokens right after a refill pay it in full: the context grows back towards a full window
# until the next refill.
# :::

# %% [markdown]
# ### Exercise 3: from scratch instead of uptraining (measure, hard)
# Train an MQA CharGPT with chapter 1's full recipe,
# `ml.baselines.char_gpt(variant="mqa", attn=functools.partial(ml.attention.MultiHeadAttention, kv_heads=1))`
# (one training run, cached afterwards), and compare its validation loss with the
# mean-pooled, uptrained MQA and with chapter 1's MHA model, on the same validation
# characters and with the spread of each difference. What does each route cost?

# %% tags=["solution", "hide-cell"]
# Solution 3
mqa_scratch, mqa_record = ml.baselines.char_gpt(
    variant="mqa", attn=functools.partial(ml.attention.MultiHeadAttention, kv_heads=1))
mqa_scratch = mqa_scratch.to(dev)
ref_losses = ml.sparsity.token_losses(base, val)             # chapter 1's MHA, per validation character
losses3 = {}
rows3 = []
for name, model, steps in [("MQA from scratch", mqa_scratch, cfg["steps"]),
                           ("MQA, pooled + uptrained", uptrained[1][0], cfg["steps"] + up_steps),
                           ("MHA control, uptrained", uptrained[H_gpt][0], cfg["steps"] + up_steps)]:
    losses3[name] = ml.sparsity.token_losses(model, val)
    gap, se = ml.bench.paired_difference(ref_losses, losses3[name])
    rows3.append({"model": name, "training steps": steps, "val loss (nats)": losses3[name].mean().item(),
                  "vs chapter 1's MHA (nats)": f"{gap:+.3f} ± {se:.3f}",
                  "loss is": ml.bench.quality_verdict(-gap, se, better="lower", worse="higher",
                                                      same="not measurably different")})
gap, se = ml.bench.paired_difference(losses3["MQA, pooled + uptrained"], losses3["MQA from scratch"])
print(f"MQA from scratch: {cfg['steps']} steps, {mqa_record['train_seconds']:.0f} s of training; "
      f"uptraining: {up_steps} steps on top of the MHA model")
print(f"MQA from scratch against pooled + uptrained: {gap:+.3f} ± {se:.3f} nats, "
      f"{ml.bench.quality_verdict(-gap, se, better='lower', worse='higher', same='not measurably different')}")
ml.bench.Table(rows3, title=f"CharGPT validation loss against chapter 1's MHA ({base_loss:.3f} nats), "
                            f"same characters; ± one standard error of the per-character difference",
               formats={"val loss (nats)": "{:.3f}"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# Every model is evaluated on the same validation characters as chapter 1's, so each
# difference is paired: the spread is the standard error of the per-character difference,
# and "loss is" says whether the difference is outside two of them. That spread covers the
# choice of validation characters only, and is a lower bound even for that (neighbouring
# characters are not independent); the spread between training runs with different seeds
# is not in it, and a second seed (`seed=1` with its own `variant` name) would measure it.
# The costs differ in kind: from scratch, MQA needs a whole pre-training run (the printout
# gives its steps and seconds), while uptraining adds a fraction of one to a model that
# already exists. The two uptrained models also saw more steps than chapter 1's, which is
# why the MHA control is in the table: the uptrained MQA is fairly judged against it, the
# MQA from scratch against chapter 1's model. The paper's argument is about cost: when the
# pre-training run cost millions, a few percent of it buys an MQA or GQA model, and the
# second line of the printout says whether, here, the cheap route ended as low as the
# expensive one.
# :::

# %% [markdown]
# ### Exercise 4: grouped-query attention without a copy (implement, medium)
# Write causal grouped-query attention `gqa_attention(q, k, v)` that reshapes the queries
# of each group to `(B, Hkv, G * T, d)`, as `ml.attention.scaled_dot_product` does, and
# check it against `repeat_interleave` + `F.scaled_dot_product_attention`. Then count, from
# the tensors' sizes, the bytes of keys and values each version reads and writes. What
# would the copy do to the bytes of a GQA-8 decoding step of the 7B-class model?

# %% tags=["solution", "hide-cell"]
# Solution 4
def gqa_attention(q, k, v):
    """Causal GQA without a copy: q (B, H, T, d), k and v (B, Hkv, T, d) -> (B, H, T, d)."""
    B, H, T, d = q.shape
    Hkv = k.shape[1]
    qg = q.reshape(B, Hkv, (H // Hkv) * T, d)                 # a group's query heads stacked as G*T rows
    s = qg @ k.transpose(-2, -1) / math.sqrt(d)               # (B, Hkv, G*T, T): each key head read once
    pos = torch.arange(qg.shape[2], device=q.device) % T      # row r holds query position r mod T
    s = s.masked_fill(torch.arange(T, device=q.device) > pos[:, None], float("-inf"))
    return (torch.softmax(s, dim=-1) @ v).reshape(B, H, T, d)  # each value head read once


torch.manual_seed(0)
q4 = torch.randn(2, 8, 64, 32, dtype=torch.float64)           # (B, H, T, d)
k4, v4 = (torch.randn(2, 2, 64, 32, dtype=torch.float64) for _ in range(2))   # Hkv = 2: G = 4
G4 = q4.shape[1] // k4.shape[1]
k_rep, v_rep = k4.repeat_interleave(G4, dim=1), v4.repeat_interleave(G4, dim=1)
err = (gqa_attention(q4, k4, v4) - F.scaled_dot_product_attention(q4, k_rep, v_rep, is_causal=True)).abs().max().item()
assert err < 1e-12
print(f"reshape trick vs repeat_interleave + SDPA (float64): max |Δ| < 1e-12: {err < 1e-12}")

kv_read, copies = k4.nbytes + v4.nbytes, k_rep.nbytes + v_rep.nbytes
print(f"reshape trick: reads K and V once: {ml.bench.fmt_bytes(kv_read)}")
print(f"repeat_interleave: reads them ({ml.bench.fmt_bytes(kv_read)}), writes {G4} copies "
      f"({ml.bench.fmt_bytes(copies)}), attention reads the copies ({ml.bench.fmt_bytes(copies)}): {(kv_read + 2 * copies) / kv_read:.0f}x the bytes")
G_llm = H_llm // 8
print(f"7B-class GQA-8 decoding step, one {ctx}-token sequence: {ml.bench.fmt_bytes(llm_cache['GQA-8'])} of cache "
      f"read with the reshape, {ml.bench.fmt_bytes((1 + 2 * G_llm) * llm_cache['GQA-8'])} moved with the copy; "
      f"MHA's cache: {ml.bench.fmt_bytes(llm_cache['MHA'])}")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# After the reshape, the $G$ query heads of a group are $G T$ rows of one matrix, and the
# product `(G * T, d) @ (d, T)` reads the group's key matrix once for all of them (the
# values likewise). Row $r$ holds the query at position $r \bmod T$, so the causal mask is
# built from that position, not from $r$. `repeat_interleave` instead reads every key/value
# head, writes $G$ copies to memory and lets attention read the copies: $1 + 2G$ times the
# bytes, as printed. That is more than MHA's own cache ($G$ times GQA's): the copy undoes
# all that GQA saves in a decoding step, and then some, as the last line shows for the
# 7B-class model. Fused kernels (FlashAttention's GQA support, PyTorch's
# `enable_gqa=True`) index the shared head instead of copying it.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Causal attention never changes the past, so the keys and values of past tokens can be
#   cached: decoding then costs one token-forward per token instead of the whole prefix,
#   and gives exactly the same tokens.
# - The cache holds $2 L B H_{kv} T d$ numbers; for an LLM it rivals the weights at modest
#   batch and context, and reading it dominates memory-bound decoding.
# - Learned absolute positions stop a cache from sliding: stop at the window, or refill it.
# - MQA and GQA shrink the cache by $H / H_{kv}$; a multi-head checkpoint converts by
#   mean-pooling its key/value heads and recovers most of its quality with a short
#   uptraining. GQA keeps more quality than MQA.
# - A smaller cache can only be faster where the cache is a large part of the bytes moved:
#   at batch 1 on a CPU with a tiny model, the weights and per-kernel overheads dominate a
#   step. Time such a comparison interleaved (`ml.bench.compare`) and quote its spread.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
