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
# # 6.3 Cashing it in: sparse FFN kernels, a Deja Vu predictor, and 2:4 weights
#
# A zero is only worth something if the work it multiplies is skipped. When a language
# model decodes one token at a time, every FFN weight is read from memory for a single
# vector: the step is bound by bytes, not FLOPs, so a neuron that is off is a column of
# $W_2$ that need not be read. Deja Vu {cite}`liu2023dejavu` predicts the active neurons
# (and heads) of OPT-175B with small learned predictors and halves its decoding latency
# on GPUs; TEAL {cite}`liu2025teal` reports 1.53x and 1.8x faster single-batch decoding at
# 40% and 50% sparsity, and CHESS {cite}`he2024chess` up to 1.27x end to end on a CPU, each
# with hand-written kernels. Weights can be sparse too: in the 2:4 pattern of NVIDIA's
# sparse tensor cores {cite}`mishra2021accelerating` two of every four consecutive
# weights are zero, which those cores execute at up to twice the dense rate. This
# notebook builds an FFN that skips inactive neurons in plain PyTorch, one that also skips
# part of the up-projection with a Deja Vu-style predictor, times both against the dense
# FFN at batch 1 on the machine in the banner, measures where they break even, and prunes
# and fine-tunes CharGPT to 2:4.
#
# **Learning objectives.** After this notebook you can
# 1. count the bytes a batch-1 FFN reads, dense and sparse, and derive the speed-up a
#    memory-bound kernel could reach at a given sparsity;
# 2. implement an FFN whose down-projection gathers only the active columns of $W_2$ and
#    check it against the dense FFN;
# 3. train a low-rank predictor of the active neurons and use it to skip rows of $W_1$ too;
# 4. time sparse against dense with interleaved runs, and measure (not assume) the
#    sparsity at which a sparse kernel breaks even, as a function of width;
# 5. prune weights to 2:4, fine-tune them, and say where 2:4 runs faster and where it does not.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import contextlib
import copy
from functools import partial

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# %%
relu_mlp = partial(ml.models.FeedForward, act=nn.ReLU)
gelu_gpt, gelu_rec = ml.baselines.char_gpt()
relu_gpt, relu_rec = ml.baselines.char_gpt(variant="relu", mlp=relu_mlp)
cfg = gelu_rec["config"]
corpus = ml.data.shakespeare()
val = ml.trim(list(ml.data.TokenBatches(corpus.val_ids, cfg["block_size"], cfg["batch_size"], steps=cfg["eval_batches"],
                                        device=dev, generator=torch.Generator().manual_seed(1234))))
calib = ml.trim(list(ml.data.TokenBatches(corpus.train_ids, cfg["block_size"], cfg["batch_size"],
                                  steps=ml.pick(smoke=2, cpu=20, gpu=40), device=dev,
                                  generator=torch.Generator().manual_seed(7))))
ref = ml.sparsity.token_losses(gelu_gpt, val)
C, H = cfg["n_embd"], relu_gpt.blocks[0].mlp.fc.out_features
relu_sparsity = ml.sparsity.activation_sparsity(relu_gpt, val)
print(f"CharGPT: {cfg['n_layer']} FFNs of {C} -> {H} -> {C}; ReLU model's exact zeros per FFN: "
      + ", ".join(f"{v:.1%}" for v in relu_sparsity.values()))

# %% [markdown]
# ## 6.3.1 What a batch-1 FFN reads
#
# For one token, the dense FFN multiplies a $C$-vector by $W_1$ ($H \times C$) and an
# $H$-vector by $W_2$ ($C \times H$): $2CH$ multiply-adds and $2CH$ weights read, each used
# once. The arithmetic intensity is one multiply-add per weight loaded, far below what any
# CPU or GPU needs to be compute-bound (chapter 1's roofline), so the time is the bytes.
# With a fraction $s$ of the hidden activations zero:
#
# - **SparseFFN** computes all of $a = \phi(W_1 x + b_1)$, then reads only the $(1-s)H$
#   active columns of $W_2$: $CH + (1-s)CH$ weights, a speed-up of at most
#   $\frac{2}{2 - s}$, which tends to **2x** as $s \to 1$;
# - **Deja Vu** first runs a rank-$r$ predictor ($r(C + H)$ weights) to guess the active set
#   $S$, then reads only those rows of $W_1$ and columns of $W_2$: $r(C+H) + 2|S|C$ weights,
#   at most $\frac{2CH}{r(C+H) + 2(1-s)CH}$.
#
# These bounds ignore everything that is not weight bytes: the index computations, the
# gather, and the fixed cost of every PyTorch operator call, which for matrices this small
# is most of the time. The measurements below show how much of the bound survives.

# %%
r = max(4, C // 8)
bound_rows = []
for s in (0.5, 0.8, 0.9, 0.95, sum(relu_sparsity.values()) / len(relu_sparsity)):
    bound_rows.append({"sparsity": s, "SparseFFN bound": 2 / (2 - s),
                       f"Deja Vu bound (rank {r})": 2 * C * H / (r * (C + H) + 2 * (1 - s) * C * H)})
ml.bench.Table(bound_rows, title=f"Byte-count bounds on the batch-1 FFN speed-up (C = {C}, H = {H})",
               formats={"sparsity": "{:.1%}", "SparseFFN bound": "{:.2f}x", f"Deja Vu bound (rank {r})": "{:.2f}x"})

# %% [markdown]
# ## 6.3.2 Skipping the inactive neurons
#
# The textbook way: compute $a$, then add up $a_i W_2[:, i]$ over the active $i$ only.

# %%
def sparse_ffn_naive(ffn, x):
    """x: (C,) one token -> (C,): b2 + sum over active neurons i of a_i W2[:, i]."""
    a = ffn.act(ffn.fc(x))                               # (H,)
    y = ffn.proj.bias.clone()
    for i in a.nonzero().flatten().tolist():             # only the active neurons
        y += a[i] * ffn.proj.weight[:, i]
    return y


ffn0 = relu_gpt.blocks[0].mlp
inputs = ml.sparsity.ffn_inputs(relu_gpt, val[:1])      # {name: (N, C)}: what each FFN sees
x0 = inputs["blocks.0.mlp"][0]
with torch.no_grad():
    err = (sparse_ffn_naive(ffn0, x0) - ffn0(x0)).abs().max().item()
print(f"naive sparse FFN vs dense, one token: max error < 1e-5: {err < 1e-5}")
assert err < 1e-5

# %% [markdown]
# A Python loop over neurons is slow; the library gathers the active columns at once, as
# rows of $W_2^\top$ (kept contiguous so that the gather reads whole rows), and multiplies
# with one `addmm`. With several tokens it keeps every neuron active for at least one of
# them, which stays exact because each token's inactive entries are zeros:

# %%
ml.show(ml.sparsity.SparseFFN.forward)

# %% tags=["nbval-check-output"]
sparse_gpt = ml.sparsity.replace_ffns(copy.deepcopy(relu_gpt), lambda name, ffn: ml.sparsity.SparseFFN(ffn))
with torch.no_grad():
    errs = [(ml.sparsity.SparseFFN(relu_gpt.get_submodule(n))(x[:9]) - relu_gpt.get_submodule(n)(x[:9])).abs().max().item()
            for n, x in inputs.items()]
    logit_err = (sparse_gpt(val[0][0]) - relu_gpt(val[0][0])).abs().max().item()
print(f"SparseFFN vs dense FFN, every layer, 9 tokens: max error < 1e-5: {max(errs) < 1e-5}; "
      f"whole CharGPT logits: max error < 1e-4: {logit_err < 1e-4}")
assert max(errs) < 1e-5 and logit_err < 1e-4

# %% [markdown]
# ## 6.3.3 Timing at batch 1
#
# Decoding feeds one token at a time, so each FFN sees a `(1, 1, C)` input. We time the
# FFNs of the trained ReLU CharGPT on the inputs they really get (the hidden states of
# validation characters: with causal attention they are the same in a full forward pass
# as in decoding), dense against sparse, with `ml.bench.compare`: interleaved rounds, and
# the speed-up as the median of the per-round ratios with its interquartile range. Each
# timed call runs every FFN of the model on a set of tokens, so the time is the FFN work
# of decoding those tokens. All timings are fp32 on the device in the banner, and on a CPU
# with **one thread**: at these sizes a second thread costs more to wake than it saves
# (PyTorch's `index_select` of 512 rows, measured while writing this notebook on the
# banner's CPU: about 5 µs on one thread, up to 17 times that on two when the other core
# is busy), and one core per request is how a CPU serves many decoding streams.

# %%
n_tok = ml.pick(smoke=4, cpu=32, gpu=32)
rounds = ml.pick(smoke=3, cpu=25, gpu=25)


@contextlib.contextmanager
def timing_threads():
    """One intra-op thread while timing on a CPU (see above); the default again afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1 if dev.type == "cpu" else n)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def decode_inputs(model):
    """{FFN name: (n_tok, 1, 1, C)}: what each FFN of `model` sees for n_tok validation characters."""
    return {n: x[:n_tok].reshape(n_tok, 1, 1, C) for n, x in ml.sparsity.ffn_inputs(model, val[:1]).items()}


def ffn_pass(ffns, tokens):
    """All FFNs of a model, each on its n_tok decode inputs, one token at a time."""
    def run():
        with torch.no_grad():
            for name, f in ffns.items():
                for x in tokens[name]:
                    f(x)
    return run


tokens = decode_inputs(relu_gpt)


dense_ffns = {n: relu_gpt.get_submodule(n) for n in tokens}
sparse_ffns = {n: ml.sparsity.SparseFFN(f) for n, f in dense_ffns.items()}
with timing_threads():
    relu_cmp = ml.bench.compare(ffn_pass(dense_ffns, tokens), ffn_pass(sparse_ffns, tokens), warmup=2, repeat=rounds)
print(f"ReLU CharGPT, FFNs at batch 1: SparseFFN vs dense: {relu_cmp} -> {relu_cmp.verdict}")

# %% [markdown]
# And end to end: one decoding step of the whole model with a KV cache (attention from
# `ml.attention.MultiHeadAttention`, which loads the same weights; chapter 3.2), the cache
# filled to half the context, dense FFNs against SparseFFNs:

# %%
def cached(model):
    """The same weights in a CharGPT whose attention has a KV cache."""
    m = ml.models.CharGPT(corpus.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=C, dropout=0.0, attn=ml.attention.MultiHeadAttention,
                          mlp=relu_mlp).to(dev).eval()
    m.load_state_dict(model.state_dict())
    return m


def decode_step(model):
    caches = model.make_caches(1)
    prompt = val[0][0][:1, : cfg["block_size"] // 2]
    with torch.no_grad():
        model(prompt, caches)                                   # prefill half the context
    nxt = val[0][0][:1, cfg["block_size"] // 2: cfg["block_size"] // 2 + 1]

    def step():
        for c in caches:
            c.length = prompt.shape[1]                          # the same position every call
        with torch.no_grad():
            model(nxt, caches)
    return step


dense_dec = cached(relu_gpt)
sparse_dec = ml.sparsity.replace_ffns(cached(relu_gpt), lambda name, f: ml.sparsity.SparseFFN(f))
with timing_threads():
    step_cmp = ml.bench.compare(decode_step(dense_dec), decode_step(sparse_dec), warmup=3, repeat=rounds)
print(f"one decoding step, SparseFFN model vs dense: {step_cmp} -> {step_cmp.verdict}")

# %% tags=["remove-cell"]
ml.glue("s63_C", C)
ml.glue("s63_H", H)
ml.glue("s63_relu_sparsity", 100 * sum(relu_sparsity.values()) / len(relu_sparsity), ".1f")
ml.glue("s63_ffn_speedup", relu_cmp.speedup, ".2f")
ml.glue("s63_ffn_lo", relu_cmp.lo, ".2f")
ml.glue("s63_ffn_hi", relu_cmp.hi, ".2f")
ml.glue("s63_ffn_verdict", relu_cmp.verdict)
ml.glue("s63_step_speedup", step_cmp.speedup, ".2f")
ml.glue("s63_step_lo", step_cmp.lo, ".2f")
ml.glue("s63_step_hi", step_cmp.hi, ".2f")
ml.glue("s63_step_verdict", step_cmp.verdict)
ml.glue("s63_bound_model", 2 / (2 - sum(relu_sparsity.values()) / len(relu_sparsity)), ".2f")
ml.glue("s63_dense_ffn_us", 1e6 * relu_cmp.baseline.median / (n_tok * len(tokens)), ".1f")
ml.glue("s63_sparse_ffn_us", 1e6 * relu_cmp.candidate.median / (n_tok * len(tokens)), ".1f")

# %% [markdown]
# At batch 1, the SparseFFNs of the ReLU CharGPT ({glue:}`s63_relu_sparsity`% zeros) run at
# {glue:}`s63_ffn_speedup`x the speed of the dense FFNs (interquartile range
# {glue:}`s63_ffn_lo`-{glue:}`s63_ffn_hi`x: {glue:}`s63_ffn_verdict`), against a byte-count
# bound of {glue:}`s63_bound_model`x. One dense FFN call takes {glue:}`s63_dense_ffn_us` µs
# here and a sparse one {glue:}`s63_sparse_ffn_us` µs. A whole decoding step with sparse
# FFNs runs at {glue:}`s63_step_speedup`x ({glue:}`s63_step_lo`-{glue:}`s63_step_hi`x,
# {glue:}`s63_step_verdict`): the FFNs are only part of a step. At $C$ = {glue:}`s63_C`,
# $W_1$ and $W_2$ are small enough to sit in the CPU's caches, and a dense FFN is three
# operator calls (two products and the activation); the sparse one needs six (a
# `nonzero` and two gathers besides the first product, the activation and a smaller second
# product), and at this size the fixed cost of each call weighs as much as the work the
# smaller product saves. Where is the break-even?
#
# ## 6.3.4 Break-even sparsity, measured
#
# The break-even sparsity depends on the width, so we measure it on FFNs with random
# weights at the model's width and wider ones, with *synthetic masks*: the bias $b_1$ is
# set so that exactly a fraction $s$ of the neurons is off for the input used. The same
# sweep times a Deja Vu-style FFN whose predictor has rank $C/8$ and predicts exactly
# that set (its output is forced by its bias; its matrices cost what a trained one's
# would). Each point is an interleaved comparison with the dense FFN, batch 1.

# %%
def synthetic(width, s, seed=0):
    """A ReLU FFN (width -> 4 width) whose hidden activation on x has exactly a fraction s of zeros."""
    g = torch.Generator().manual_seed(seed)
    ffn = ml.models.FeedForward(width, 4 * width, act=nn.ReLU).to(dev).eval()
    x = torch.randn(1, 1, width, generator=g).to(dev)
    on = torch.zeros(4 * width, dtype=torch.bool)
    on[torch.randperm(4 * width, generator=g)[: round((1 - s) * 4 * width)]] = True
    with torch.no_grad():
        z = F.linear(x, ffn.fc.weight).flatten()
        ffn.fc.bias.copy_(-z + torch.where(on.to(dev), 1.0, -1.0))   # pre-activation +1 (on) or -1 (off)
        rank = max(4, width // 8)
        predictor = nn.Sequential(nn.Linear(width, rank, bias=False), nn.Linear(rank, 4 * width)).to(dev)
        predictor[0].weight.zero_()                                   # costs a real product, predicts the bias
        predictor[1].bias.copy_(torch.where(on.to(dev), 1.0, -1.0))
    return ffn, predictor, x


widths = ml.trim(ml.pick(smoke=[C, 64], cpu=[C, 256, 512, 1024, 2048], gpu=[C, 1024, 2048, 4096]))
levels = ml.trim(ml.pick(smoke=[0.0, 0.9], cpu=[0.0, 0.5, 0.8, 0.9, 0.95, 0.98], gpu=[0.0, 0.5, 0.8, 0.9, 0.95, 0.98]))
inner = ml.pick(smoke=2, cpu=16, gpu=16)
grid = []
for width in widths:
    for s in levels:
        ffn, predictor, x = synthetic(width, s)
        kernels = {"SparseFFN": ml.sparsity.SparseFFN(ffn), "Deja Vu": ml.sparsity.PredictedFFN(ffn, predictor)}
        with torch.no_grad():
            for kind, k in kernels.items():
                assert (k(x) - ffn(x)).abs().max() < 1e-4
                with timing_threads():
                    c = ml.bench.compare(lambda: [ffn(x) for _ in range(inner)], lambda: [k(x) for _ in range(inner)],
                                         warmup=2, repeat=ml.pick(smoke=3, cpu=15, gpu=15))
                grid.append({"width C": width, "hidden H": 4 * width, "sparsity": s, "kernel": kind,
                             "speed-up": c.speedup, "lo": c.lo, "hi": c.hi,
                             "dense (µs)": 1e6 * c.baseline.median / inner})
        del ffn, predictor, kernels

# %%
def break_even(rows):
    """Smallest sparsity at which the speed-up reaches 1, interpolated between measured levels."""
    rows = sorted(rows, key=lambda r: r["sparsity"])
    if rows[0]["speed-up"] >= 1:
        return f"<= {rows[0]['sparsity']:.0%}"
    for a, b in zip(rows, rows[1:]):
        if a["speed-up"] < 1 <= b["speed-up"]:
            t = (1 - a["speed-up"]) / (b["speed-up"] - a["speed-up"])
            return f"{a['sparsity'] + t * (b['sparsity'] - a['sparsity']):.0%}"
    return f"> {rows[-1]['sparsity']:.0%} (never)"


fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
even_rows = []
for ax, kind in zip(axes, ("SparseFFN", "Deja Vu")):
    for width in widths:
        rows = [g for g in grid if g["kernel"] == kind and g["width C"] == width]
        ax.errorbar([100 * g["sparsity"] for g in rows], [g["speed-up"] for g in rows],
                    yerr=[[g["speed-up"] - g["lo"] for g in rows], [g["hi"] - g["speed-up"] for g in rows]],
                    marker="o", markersize=3, label=f"C = {width}")
        even_rows.append({"kernel": kind, "width C": width, "dense FFN (µs)": rows[0]["dense (µs)"],
                          "break-even sparsity": break_even(rows),
                          f"speed-up at {levels[-1]:.0%}": rows[-1]["speed-up"]})
    ax.axhline(1, color="grey", linewidth=0.8)
    ax.axhline(1.3, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="activation sparsity (%)", yscale="log", title=f"{kind} vs dense FFN, batch 1")
axes[0].set(ylabel="speed-up (x)")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()
even_table = ml.bench.Table(even_rows, title=f"Break-even sparsity at batch 1 ({dev.type}, fp32)",
                            formats={"dense FFN (µs)": "{:.1f}", f"speed-up at {levels[-1]:.0%}": "{:.2f}x"})
even_table

# %% tags=["remove-cell"]
E = {(r["kernel"], r["width C"]): r for r in even_rows}
ml.glue("s63_even_model", E[("SparseFFN", C)]["break-even sparsity"])
ml.glue("s63_even_wide", E[("SparseFFN", widths[-1])]["break-even sparsity"])
ml.glue("s63_even_dv_wide", E[("Deja Vu", widths[-1])]["break-even sparsity"])
ml.glue("s63_wide", widths[-1])
ml.glue("s63_top_level", 100 * levels[-1], ".0f")
ml.glue("s63_top_wide", E[("SparseFFN", widths[-1])][f"speed-up at {levels[-1]:.0%}"], ".2f")
ml.glue("s63_top_dv_wide", E[("Deja Vu", widths[-1])][f"speed-up at {levels[-1]:.0%}"], ".2f")
ml.glue("s63_top_model", E[("SparseFFN", C)][f"speed-up at {levels[-1]:.0%}"], ".2f")

# %% [markdown]
# At the model's width ($C$ = {glue:}`s63_C`) SparseFFN breaks even at a sparsity of
# {glue:}`s63_even_model` and reaches {glue:}`s63_top_model`x at
# {glue:}`s63_top_level`%; at $C$ = {glue:}`s63_wide` it breaks even at
# {glue:}`s63_even_wide` and reaches {glue:}`s63_top_wide`x. The Deja Vu FFN, which also
# skips rows of $W_1$, breaks even at {glue:}`s63_even_dv_wide` at $C$ =
# {glue:}`s63_wide` and reaches {glue:}`s63_top_dv_wide`x there. Only a predictor can pass
# SparseFFN's 2x ceiling, since only it reads less than half the weights; whether it does
# depends on what its own products and the two gathers cost. The wider the FFN, the more the
# weight bytes dominate the fixed costs, and the more of the byte-count bound a plain-PyTorch
# kernel keeps. That is the regime of the papers: their FFNs are 4,096 to 12,288 wide.
#
# ## 6.3.5 A Deja Vu predictor for the trained model
#
# For the real model the predictor must be learned. Deja Vu trains, for every layer, a
# small two-layer network on the layer's inputs to classify which neurons will be active.
# `ml.sparsity.fit_predictor` starts from the truncated SVD of $W_1$ (so its first guess is
# a rank-$r$ approximation of the pre-activation), trains it with binary cross-entropy on
# FFN inputs from training text, and finally shifts its bias so that it catches a chosen
# fraction (its *recall*) of the truly active neurons of the calibration data. A missed
# active neuron changes the output; a false alarm only costs time.

# %%
ml.show(ml.sparsity.PredictedFFN.forward)

# %%
calib_inputs = ml.sparsity.ffn_inputs(relu_gpt, calib)
pred_rows, predictors = [], {}
for recall in ml.trim([0.99, 0.95]):
    preds = {n: ml.sparsity.fit_predictor(relu_gpt.get_submodule(n), x, rank=r, recall=recall,
                                          steps=ml.trim(ml.pick(smoke=20, cpu=300, gpu=300)))
             for n, x in calib_inputs.items()}
    predictors[recall] = preds
    dv = ml.sparsity.replace_ffns(copy.deepcopy(relu_gpt), lambda n, f: ml.sparsity.PredictedFFN(f, preds[n]))
    with torch.no_grad():                                     # recall and set size on validation inputs
        hits = act = pred = 0
        for n, x in inputs.items():
            f = relu_gpt.get_submodule(n)
            on, guess = f.act(f.fc(x)) > 0, preds[n](x) > 0
            hits, act, pred = hits + (on & guess).sum().item(), act + on.sum().item(), pred + guess.sum().item()
    dv_ffns = {n: ml.sparsity.PredictedFFN(dense_ffns[n], preds[n]) for n in tokens}
    with timing_threads():
        cmp = ml.bench.compare(ffn_pass(dense_ffns, tokens), ffn_pass(dv_ffns, tokens), warmup=2, repeat=rounds)
    losses = ml.sparsity.token_losses(dv, val)
    gap, se = ml.bench.paired_difference(ref, losses)
    pred_rows.append({"recall target": recall, "val recall": hits / act, "neurons computed": pred / (H * sum(len(x) for x in inputs.values())),
                      "val loss": losses.mean().item(), "gap": gap, "se": se, "FFN speed-up": cmp})
ml.bench.Table(pred_rows, title=f"Deja Vu-style predictors (rank {r}) on the ReLU CharGPT, batch-1 FFN timing",
               formats={"recall target": "{:.0%}", "val recall": "{:.1%}", "neurons computed": "{:.1%}",
                        "val loss": "{:.3f}", "gap": "{:+.3f}", "se": "{:.3f}"},
               headers={"gap": "vs GELU (nats)", "se": "± (se)"})

# %% tags=["remove-cell"]
dv0 = pred_rows[0]
ml.glue("s63_rank", r)
ml.glue("s63_dv_recall", 100 * dv0["val recall"], ".1f")
ml.glue("s63_dv_computed", 100 * dv0["neurons computed"], ".1f")
ml.glue("s63_dv_gap", dv0["gap"], "+.3f")
ml.glue("s63_dv_speedup", dv0["FFN speed-up"].speedup, ".2f")
ml.glue("s63_dv_verdict", dv0["FFN speed-up"].verdict)

# %% [markdown]
# With a recall target of 99%, the rank-{glue:}`s63_rank` predictors catch
# {glue:}`s63_dv_recall`% of the active neurons on validation text while computing
# {glue:}`s63_dv_computed`% of the neurons; the model's loss moves to
# {glue:}`s63_dv_gap` nats from GELU's, and its FFNs run at {glue:}`s63_dv_speedup`x the
# dense speed at batch 1 ({glue:}`s63_dv_verdict`). The predictor is a bet: it buys
# skipped rows of $W_1$ with a small, measurable loss in quality, and it only pays where
# the matrices are large (section 6.3.4).
#
# ## 6.3.6 2:4 semi-structured weights
#
# Activation sparsity changes with every token; weight sparsity is fixed once. The 2:4
# pattern keeps the 2 weights of largest magnitude in every group of 4 consecutive
# inputs of a row: exactly half the weights, in a layout that sparse tensor cores
# (NVIDIA Ampere and later) multiply at up to twice the dense rate
# {cite}`mishra2021accelerating`. Mishra et al.'s recipe: train dense, prune to 2:4 by
# magnitude, fine-tune with the mask fixed. The mask, checked against PyTorch's own
# N:M sparsifier (`torch.ao.pruning.WeightNormSparsifier` with blocks of 1 x 4 and 2 zeros
# per block):

# %%
ml.show(ml.sparsity.prune_2_4)

# %% tags=["nbval-check-output"]
from torch.ao.pruning import WeightNormSparsifier

w = gelu_gpt.blocks[0].mlp.fc.weight.detach().clone()
layer = nn.Sequential(nn.Linear(w.shape[1], w.shape[0])).to(dev)
layer[0].weight.data.copy_(w)
sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
sparsifier.prepare(layer, [{"tensor_fqn": "0.weight"}])
sparsifier.step()
mask = ml.sparsity.prune_2_4(w)
same = torch.equal(mask, layer[0].parametrizations.weight[0].mask.bool())
print(f"2:4 mask of the first FFN weight: 2 of every 4 kept: {bool((mask.reshape(-1, 4).sum(1) == 2).all())}; "
      f"equal to torch.ao's WeightNormSparsifier: {same}")
assert same

# %% [markdown]
# We prune every linear layer of the transformer blocks (attention and FFN; the head
# shares its weight with the embedding and stays dense), measure the loss, and fine-tune
# with the masks applied (`torch.nn.utils.prune` keeps `weight = weight_orig * mask`, so
# the gradient never revives a pruned weight) through notebook 6.2's `ml.sparsity.finetune`.
# The fair reference is the dense model fine-tuned for the same steps (the control).

# %%
ft_steps = ml.pick(smoke=20, cpu=300, gpu=250)        # the fine-tune length of notebook 6.2
two4_rows, two4_models = [], {}
for name, base in (("GELU", gelu_gpt), ("ReLU", relu_gpt)):
    pruned = copy.deepcopy(base)
    ml.sparsity.apply_2_4(pruned)
    g0, _ = ml.bench.paired_difference(ref, ml.sparsity.token_losses(pruned, val))
    m, _ = ml.sparsity.finetune(f"{name.lower()}-2of4", base, ft_steps, prepare=ml.sparsity.apply_2_4)
    ctrl, _ = ml.sparsity.finetune(name.lower(), base, ft_steps)      # dense, same steps (6.2's control for GELU)
    losses = ml.sparsity.token_losses(m, val)
    g1, s1 = ml.bench.paired_difference(ref, losses)
    gc, sc = ml.bench.paired_difference(ml.sparsity.token_losses(ctrl, val), losses)
    blocks = [l for n, l in m.named_modules() if isinstance(l, nn.Linear) and n != "head"]
    two4_models[name] = m
    two4_rows.append({"model": f"{name} 2:4", "layers pruned": len(blocks),
                      "weights zero": sum((l.weight == 0).sum().item() for l in blocks) / sum(l.weight.numel() for l in blocks),
                      "gap, pruned": g0, "gap, fine-tuned": g1, "se": s1, "vs dense control": gc, "se control": sc,
                      "val loss": losses.mean().item()})
ml.bench.Table(two4_rows, title=f"2:4 weights in every block linear, {ft_steps} fine-tuning steps with the mask",
               columns=["model", "weights zero", "gap, pruned", "gap, fine-tuned", "vs dense control", "se control"],
               formats={"weights zero": "{:.1%}", "gap, pruned": "{:+.3f}", "gap, fine-tuned": "{:+.3f}",
                        "vs dense control": "{:+.3f}", "se control": "{:.3f}"},
               headers={"gap, pruned": "vs GELU, pruned (nats)", "gap, fine-tuned": "vs GELU, fine-tuned",
                        "vs dense control": "vs dense fine-tuned", "se control": "± (se)"})

# %% [markdown]
# **Speed.** The 2:4 format is a GPU feature: PyTorch's `to_sparse_semi_structured`
# compresses a 2:4 matrix for cuSPARSELt/CUTLASS kernels and exists only on CUDA GPUs with
# sparse tensor cores (compute capability 8.0 or newer), in fp16/bf16 (and int8). On a CPU
# a 2:4 matrix is just a dense matrix with zeros, and multiplies at dense speed. When this
# notebook runs on such a GPU, the next cell times it against the dense product at the
# FFN's shapes; otherwise it says so. (Earlier measurements on an H100 found the
# semi-structured kernels slower than dense bf16 for some small shapes: measure your own.)

# %%
two4_speed = []
if dev.type == "cuda" and torch.cuda.get_device_capability(dev) >= (8, 0):
    from torch.sparse import to_sparse_semi_structured

    for width, tokens_n in [(C, 64), (1024, 1024), (4096, 4096)]:
        W = torch.randn(4 * width, width, device=dev, dtype=torch.bfloat16)
        W = W * ml.sparsity.prune_2_4(W)
        x = torch.randn(tokens_n, width, device=dev, dtype=torch.bfloat16)
        try:
            Ws = to_sparse_semi_structured(W)
            c = ml.bench.compare(lambda: F.linear(x, W), lambda: F.linear(x, Ws), warmup=5, repeat=30)
            two4_speed.append({"weight": f"{4 * width} x {width}", "tokens": tokens_n, "2:4 vs dense bf16": c,
                               "verdict": c.verdict})
        except (RuntimeError, ValueError) as err:
            two4_speed.append({"weight": f"{4 * width} x {width}", "tokens": tokens_n,
                               "verdict": f"not supported: {str(err).splitlines()[0][:80]}"})
    ml.bench.Table(two4_speed, title="torch.sparse.to_sparse_semi_structured vs dense (bf16, this GPU)")
else:
    print(f"No CUDA GPU with sparse tensor cores here ({dev.type}): to_sparse_semi_structured is not available, "
          f"so the 2:4 models carry no latency in this run; their quality is measured above.")

# %% [markdown]
# ## 6.3.7 Quality, sparsity and latency together
#
# Every variant of this chapter that runs on this device, with its quality (the paired
# gap to the dense GELU model), its FFN activation sparsity, and the measured batch-1
# time of its FFNs (the same decode inputs as in section 6.3.3, all layers, per token).
# The thresholded variants use per-layer thresholds calibrated on training text
# (notebook 6.2) and a SparseFFN that skips what the threshold zeroes.

# %%
def ffns_with(model, wrap):
    """The FFNs of `model`, wrapped (or not) for timing."""
    return {n: wrap(n, f) for n, f in ml.sparsity.feed_forwards(model)}


variants = {}     # name -> (model for quality, FFN modules for timing, their decode inputs)
variants["GELU dense (baseline)"] = (gelu_gpt, ffns_with(gelu_gpt, lambda n, f: f), decode_inputs(gelu_gpt))
variants["ReLU dense"] = (relu_gpt, dense_ffns, tokens)
variants["ReLU + SparseFFN (exact)"] = (relu_gpt, sparse_ffns, tokens)
for base_name, base in (("ReLU", relu_gpt), ("GELU", gelu_gpt)):
    for s in ml.trim([0.9, 0.95] if base_name == "ReLU" else [0.5, 0.9]):
        th = ml.sparsity.calibrate_thresholds(base, calib, s)
        thresholded = ml.sparsity.apply_thresholds(copy.deepcopy(base), th)
        variants[f"{base_name} + {s:.0%} threshold + SparseFFN"] = (
            thresholded, ffns_with(base, lambda n, f, t=th: ml.sparsity.SparseFFN(f, float(t[n]))),
            decode_inputs(thresholded))
relufied, _ = ml.sparsity.finetune("relufied", ml.sparsity.relufy(copy.deepcopy(gelu_gpt)), ft_steps)  # 6.2's cache
variants["GELU ReLUfied (6.2) + SparseFFN"] = (relufied, ffns_with(relufied, lambda n, f: ml.sparsity.SparseFFN(f)),
                                               decode_inputs(relufied))
preds = predictors[0.99]
variants["ReLU + Deja Vu predictor (99% recall)"] = (     # timed on the ReLU model's inputs (99% recall: nearly the same)
    ml.sparsity.replace_ffns(copy.deepcopy(relu_gpt), lambda n, f: ml.sparsity.PredictedFFN(f, preds[n])),
    {n: ml.sparsity.PredictedFFN(dense_ffns[n], preds[n]) for n in tokens}, tokens)

final = []
gelu_pass = ffn_pass(variants["GELU dense (baseline)"][1], variants["GELU dense (baseline)"][2])
for name, (model, ffns, toks) in variants.items():
    losses = ml.sparsity.token_losses(model, val)
    gap, se = ml.bench.paired_difference(ref, losses)
    s = ml.sparsity.activation_sparsity(model, val[:5])
    skipped = 1 - pred_rows[0]["neurons computed"] if "Deja Vu" in name else sum(s.values()) / len(s)
    with timing_threads():
        c = ml.bench.compare(gelu_pass, ffn_pass(ffns, toks), warmup=2, repeat=rounds)
    final.append({"variant": name, "val loss": losses.mean().item(), "gap": gap, "se": se, "sparsity": skipped,
                  "FFN µs/token": 1e6 * c.candidate.median / n_tok, "vs GELU dense": c})
for row in two4_rows:
    final.append({"variant": row["model"] + " (fine-tuned)", "val loss": row["val loss"], "gap": row["gap, fine-tuned"],
                  "se": row["se"], "sparsity": None, "FFN µs/token": None, "vs GELU dense": None})
final_table = ml.bench.Table(final, title=f"CharGPT variants: quality, FFN sparsity, batch-1 FFN latency ({dev.type}, fp32)",
                             columns=["variant", "gap", "se", "sparsity", "FFN µs/token", "vs GELU dense"],
                             formats={"gap": "{:+.3f}", "se": "{:.3f}", "sparsity": "{:.1%}", "FFN µs/token": "{:.1f}"},
                             headers={"gap": "loss vs GELU (nats)", "se": "± (se)", "vs GELU dense": "FFN speed-up",
                                      "sparsity": "neurons zero or skipped"})
final_table

# %%
pts = [{"name": r["variant"], "latency": r["FFN µs/token"], "loss": r["val loss"]} for r in final if r["FFN µs/token"]]
front = {p["name"] for p in ml.plot.pareto_front(pts, "latency", "loss", True, False)}
fig = ml.plot.pareto([{**p, "label": p["name"] if p["name"] in front else None} for p in pts], x="latency",
                     y="loss", label="label", y_higher_is_better=False,
                     title=f"CharGPT: validation loss vs batch-1 FFN time per token ({dev.type})")
fig.axes[0].set(xlabel="FFN time per decoded token, all layers (µs)", ylabel="validation loss (nats)")
plt.show()

# %% tags=["remove-cell"]
F_ = {r["variant"]: r for r in final}
relu_row = F_["ReLU + SparseFFN (exact)"]
within = relu_row["gap"] + 2 * relu_row["se"] <= 0.05
fast = relu_row["vs GELU dense"].speedup >= 1.3 and relu_row["vs GELU dense"].lo > 1
ml.glue("s63_goal_gap", relu_row["gap"], "+.3f")
ml.glue("s63_goal_se", relu_row["se"], ".3f")
ml.glue("s63_goal_speed", relu_row["vs GELU dense"].speedup, ".2f")
ml.glue("s63_goal_lo", relu_row["vs GELU dense"].lo, ".2f")
ml.glue("s63_goal_quality", "met" if within else "not met")
ml.glue("s63_goal_fast", "met" if fast else "not met")
ml.glue("s63_front", ", ".join(sorted(front)))
best = max((r for r in final if r["vs GELU dense"] is not None), key=lambda r: r["vs GELU dense"].speedup)
ml.glue("s63_fastest", best["variant"])
ml.glue("s63_fastest_speed", best["vs GELU dense"].speedup, ".2f")
ml.glue("s63_fastest_gap", best["gap"], "+.3f")
ml.glue("s63_two4_gap", two4_rows[-1]["gap, fine-tuned"], "+.3f")
ml.glue("s63_two4_pruned_gap", two4_rows[-1]["gap, pruned"], "+.3f")
ml.glue("s63_two4_steps", ft_steps)
ml.glue("s63_two4_cgap", two4_rows[-1]["vs dense control"], "+.3f")
ml.glue("s63_two4_gelu_cgap", two4_rows[0]["vs dense control"], "+.3f")
rf = F_["GELU ReLUfied (6.2) + SparseFFN"]
ml.glue("s63_relufied_gap", rf["gap"], "+.3f")
ml.glue("s63_relufied_speed", rf["vs GELU dense"].speedup, ".2f")
rd = F_["ReLU dense"]["vs GELU dense"]
ml.glue("s63_relu_dense_speed", rd.speedup, ".2f")
ml.glue("s63_relu_dense_lo", rd.lo, ".2f")
ml.glue("s63_relu_dense_hi", rd.hi, ".2f")
ml.glue("s63_relu_dense_verdict", rd.verdict)
ml.glue("s63_two4_gelu_gap", two4_rows[0]["gap, fine-tuned"], "+.3f")

# %% [markdown]
# **The goal of this chapter**, a ReLU CharGPT within 0.05 nats of the GELU baseline whose
# batch-1 FFN runs at least 1.3x faster than dense: the ReLU model with exact SparseFFNs is
# {glue:}`s63_goal_gap` ± {glue:}`s63_goal_se` nats from GELU (quality goal:
# {glue:}`s63_goal_quality`) and its FFNs run at {glue:}`s63_goal_speed`x the GELU model's
# dense FFNs (lower quartile {glue:}`s63_goal_lo`x; speed goal: {glue:}`s63_goal_fast`),
# on the CPU and at the scale in the banner; against its own dense FFNs it runs at
# {glue:}`s63_ffn_speedup`x (section 6.3.3). Note the second row: the ReLU model's *dense*
# FFNs already run at {glue:}`s63_relu_dense_speed`x the GELU model's
# ({glue:}`s63_relu_dense_lo`-{glue:}`s63_relu_dense_hi`x, {glue:}`s63_relu_dense_verdict`):
# at this width the activation function itself is a visible part of the time (GELU
# evaluates an error function per element, ReLU a comparison), and that part of ReLU's
# speed owes nothing to sparsity. The fastest variant here is
# "{glue:}`s63_fastest`" at {glue:}`s63_fastest_speed`x, {glue:}`s63_fastest_gap` nats from
# GELU. The ReLUfied GELU model of notebook 6.2 with SparseFFNs is {glue:}`s63_relufied_gap`
# nats from the GELU baseline (part of which is its extra training: compare notebook
# 6.2's control) at {glue:}`s63_relufied_speed`x. On the Pareto front: {glue:}`s63_front`. Whether the speed goal is reachable is a
# question of width (section 6.3.4), not of sparsity: the ReLU model has the zeros, and at
# this width a plain-PyTorch kernel cannot turn enough of them into time. The 2:4 ReLU
# model, pruned and fine-tuned for {glue:}`s63_two4_steps` steps, is {glue:}`s63_two4_gap`
# nats from the GELU baseline ({glue:}`s63_two4_pruned_gap` right after pruning) and
# {glue:}`s63_two4_cgap` from the dense ReLU model fine-tuned the same steps; GELU 2:4 is
# {glue:}`s63_two4_gelu_cgap` from its dense control. Neither has a latency on this device.
#
# ## Claimed vs measured
#
# | source | claim | measured here (device and scale in the banner) |
# | --- | --- | --- |
# | {cite}`liu2023dejavu` | contextual sparsity can be predicted accurately by small per-layer predictors; over 2x lower latency for OPT-175B | rank-{glue:}`s63_rank` predictors: {glue:}`s63_dv_recall`% recall computing {glue:}`s63_dv_computed`% of the neurons, {glue:}`s63_dv_gap` nats; FFNs {glue:}`s63_dv_speedup`x at batch 1; synthetic $C$ = {glue:}`s63_wide`: {glue:}`s63_top_dv_wide`x at {glue:}`s63_top_level`% sparsity |
# | {cite}`liu2025teal` | 1.53x / 1.8x faster single-batch decoding at 40% / 50% sparsity (custom GPU kernel) | SparseFFN break-even at {glue:}`s63_even_model` sparsity at $C$ = {glue:}`s63_C`, {glue:}`s63_even_wide` at $C$ = {glue:}`s63_wide` (plain PyTorch) |
# | {cite}`he2024chess` | up to 1.27x end-to-end speed-up on CPU with sparse kernels | a whole decoding step with SparseFFNs: {glue:}`s63_step_speedup`x |
# | {cite}`mishra2021accelerating` | 2:4 sparsity by magnitude pruning and fine-tuning keeps accuracy; sparse tensor cores double the math throughput | 2:4 in every block linear: GELU {glue:}`s63_two4_gelu_cgap`, ReLU {glue:}`s63_two4_cgap` nats from their dense fine-tuned controls ({glue:}`s63_two4_pruned_gap` before the fine-tune); speed: only on a CUDA GPU (cell above) |
#
# ProSparse {cite}`song2025prosparse` and the Sparsing Law {cite}`luo2025sparsing` report
# speed-ups of 4.52x and 4.1x with their own kernels on models billions of parameters
# large; nothing here measures a comparable regime.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1: One bag per token (implement, medium)
#
# `SparseFFN` uses the union of the active neurons of all tokens, which is exact but loses
# the savings as the batch grows. Write `sparse_ffn_bags(ffn, x)` that gives every token its
# own active set with `F.embedding_bag` (indices = the active neurons of all tokens,
# `offsets` = where each token's start, `per_sample_weights` = their activations, over the
# rows of $W_2^\top$), check it against the dense FFN for 8 tokens, and time both kernels
# against dense at batch 1 and batch 8.

# %% tags=["solution", "hide-cell"]
# Solution 1
def sparse_ffn_bags(ffn, x):
    a = ffn.act(ffn.fc(x)).flatten(0, -2)                          # (N, H)
    rows, cols = a.nonzero(as_tuple=True)                          # row-major: each token's neurons together
    counts = (a != 0).sum(1)
    w2t = ffn.proj.weight.t().contiguous()                         # (H, C); cache it in real code
    y = F.embedding_bag(cols, w2t, counts.cumsum(0) - counts, mode="sum", per_sample_weights=a[rows, cols])
    return (y + ffn.proj.bias).reshape(x.shape)


f = dense_ffns[next(iter(dense_ffns))]
x8 = inputs[next(iter(inputs))][:8].reshape(8, 1, C)
with torch.no_grad():
    assert (sparse_ffn_bags(f, x8) - f(x8)).abs().max() < 1e-5
    sol1 = []
    for b in (1, 8):
        xb = x8[:b]
        for kind, fn in (("union (SparseFFN)", ml.sparsity.SparseFFN(f)), ("bags", partial(sparse_ffn_bags, f))):
            with timing_threads():
                c = ml.bench.compare(lambda: f(xb), lambda: fn(xb), warmup=2, repeat=rounds)
            sol1.append({"batch": b, "kernel": kind, "vs dense": c})
ml.bench.Table(sol1, title="Solution 1: per-token bags vs the union, against dense")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The check passes: each token's bag sums exactly its own active columns. The table above
# times both (with the transpose of $W_2$ recomputed inside the call in this sketch, which
# a real kernel would cache). `embedding_bag` reads only the active rows of each token,
# so its work does not grow with the union; its fixed cost per call is higher than that of
# `index_select` and `addmm`, which is why the library uses the union at batch 1.
# :::

# %% [markdown]
# ### Exercise 2: Batch size (measure, easy)
#
# Time `SparseFFN` against the dense FFN of the ReLU CharGPT for batches of 1, 4, 16 and
# 64 tokens (rows of `inputs`), and record the fraction of neurons in the union. Relate
# the result to the union curve of notebook 6.1.

# %% tags=["solution", "hide-cell"]
# Solution 2
name0 = next(iter(inputs))
f = dense_ffns[name0]
sol2 = []
with torch.no_grad():
    for b in (1, 4, 16, 64):
        xb = inputs[name0][:b].reshape(b, 1, C)
        union = (f.act(f.fc(xb)) > 0).flatten(0, -2).any(0).float().mean().item()
        with timing_threads():
            c = ml.bench.compare(lambda: f(xb), lambda: sparse_ffns[name0](xb), warmup=2, repeat=rounds)
        sol2.append({"tokens": xb.shape[0], "neurons in the union": union, "SparseFFN vs dense": c})
ml.bench.Table(sol2, title="Solution 2: SparseFFN vs dense as the batch grows", formats={"neurons in the union": "{:.1%}"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The union of the active sets grows quickly with the number of tokens (the table above;
# notebook 6.1's union curve says the same), so the columns SparseFFN can skip vanish, and
# at a few dozen tokens it is a dense FFN plus the cost of finding that out. Activation
# sparsity is a decoding (batch-1) technique; batched serving needs expert-style routing
# with fixed capacity instead.
# :::

# %% [markdown]
# ### Exercise 3: Why no speed from 2:4 on a CPU? (explain, easy)
#
# The 2:4 ReLU model has half its block weights at zero. Explain why multiplying by it on
# this CPU takes as long as the dense model, and what a kernel would need to be faster.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# A dense GEMM multiplies zeros like any other number: it reads them, multiplies them and
# adds them. To save time a kernel must store only the nonzeros (half the values plus
# 2-bit indices per kept value) and skip the zero products. Sparse tensor cores do this in
# hardware for the 2:4 pattern. A CPU has no such instruction; a software kernel could read
# half the weights in a batch-1 GEMV (memory-bound, so up to about 2x minus the index
# overhead), but PyTorch ships none for the CPU, and for compute-bound GEMMs the
# irregular gathers cost more than the halved arithmetic saves.
# :::

# %% [markdown]
# ## Key takeaways
#
# - At batch 1 an FFN is bound by the bytes of its weights; skipping inactive neurons
#   skips their columns of $W_2$ (SparseFFN, at most 2x), and a predictor also skips their
#   rows of $W_1$ (Deja Vu).
# - Whether that becomes time is a property of width and of the kernel: plain PyTorch pays a
#   fixed cost per operator call, so small FFNs lose and wide ones win. The break-even
#   sparsity has to be measured on the target, as section 6.3.4 does.
# - The savings shrink with the batch, since the union of active neurons grows fast.
# - 2:4 weights keep quality after a short masked fine-tune, and are fast only where a
#   kernel exists: sparse tensor cores on recent NVIDIA GPUs.
#
# ## Chapter summary
#
# Measured in this chapter at the scale and on the hardware in each banner: ReLU FFNs are
# {glue:}`s63_relu_sparsity`% exact zeros in CharGPT (notebook 6.1), GELU models become as
# sparse after ReLUfication or thresholds at the quality costs of notebook 6.2, and at
# batch 1 on this device the ReLU model's sparse FFNs run at {glue:}`s63_goal_speed`x the
# dense GELU FFNs, {glue:}`s63_goal_gap` nats from its quality.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
