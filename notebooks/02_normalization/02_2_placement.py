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
# # 2.2 Where the norm goes: Post-LN, Pre-LN, Peri-LN
#
# A transformer block has two residual branches (attention, MLP) and a LayerNorm for
# each. The original Transformer put the norm *after* the residual addition (Post-LN)
# {cite}`vaswani2017attention`; GPT-2 moved it to the *input* of each branch (Pre-LN)
# {cite}`radford2019gpt2`, and almost every large model since has followed. The move is
# one line of code, yet it decides whether a deep model trains at all: Post-LN needs a
# learning-rate warm-up and still fails at depth {cite}`xiong2020layer,liu2020admin`,
# while Pre-LN trains without warm-up but lets the residual stream grow without bound,
# so that its deep layers contribute less and less {cite}`li2025mixln` and a few hidden
# dimensions carry activations thousands of times larger than the rest
# {cite}`sun2024massive`. Two recent answers put the norm in yet other places: Peri-LN
# normalizes the input *and* the output of every branch {cite}`kim2025periln`, Mix-LN uses
# Post-LN in the first layers and Pre-LN after them {cite}`li2025mixln`. Placement costs
# next to nothing at inference (Peri-LN adds two norms per block), so it is an
# efficiency question in the sense that matters most: how much compute is wasted
# on a run that diverges, on a learning rate that has to be small, or on deep layers that
# barely learn.
#
# **Learning objectives.** After this notebook you can
# 1. write the four placements as equations and as code, and check yours against
#    `ml.models.Block`;
# 2. predict how the scale of the residual stream and the gradient of each layer behave
#    with depth under each placement, and measure both with forward and backward hooks;
# 3. run a learning-rate / warm-up sweep that detects failed runs (NaN, or stuck at the
#    loss of a model that ignores its input) instead of crashing on them;
# 4. find the *massive activations* of a trained model (which layer, dimension and token
#    carry them) and explain why some placements bound them and others do not.

# %%
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import contextlib
import io
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

ml.describe()
dev = ml.device()

# %% [markdown]
# ## 1. Four placements, in equations
#
# Write $x_l \in \mathbb{R}^d$ for one token's residual stream entering sub-layer $l$ (a
# block has two sub-layers, attention then MLP), $F_l$ for the branch (attention or MLP),
# and $\mathrm{LN}$ for LayerNorm with gain $\gamma$ and bias $\beta$ (notebook 2.1). The
# placements differ only in where $\mathrm{LN}$ sits:
#
# $$
# \begin{aligned}
# \text{Post-LN:}\quad & x_{l+1} = \mathrm{LN}\big(x_l + F_l(x_l)\big) \\
# \text{Pre-LN:}\quad  & x_{l+1} = x_l + F_l\big(\mathrm{LN}(x_l)\big)
#     \qquad (\text{and one final } \mathrm{LN} \text{ before the head}) \\
# \text{Peri-LN:}\quad & x_{l+1} = x_l + \mathrm{LN}_\text{out}\Big(F_l\big(\mathrm{LN}_\text{in}(x_l)\big)\Big) \\
# \text{Mix-LN:}\quad  & \text{Post-LN for the first } \lfloor \alpha L \rfloor \text{ blocks, Pre-LN for the rest } (\alpha = 0.25).
# \end{aligned}
# $$
#
# **The scale of the stream.** In Post-LN every block ends with a norm, so the stream has
# RMS $\approx |\gamma|$ at every depth. In Pre-LN nothing normalizes the stream itself;
# if the branch outputs are roughly uncorrelated with the stream,
#
# $$\mathbb{E}\,\|x_{L}\|^2 \approx \|x_0\|^2 + \sum_{l<L} \mathbb{E}\,\|F_l(\mathrm{LN}(x_l))\|^2,$$
#
# which grows with depth and with training (the weights inside $F_l$ grow, and nothing
# bounds the branch outputs). The relative change a sub-layer makes,
# $\|F_l\| / \|x_l\|$, shrinks as $l$ grows: deep Pre-LN layers become close to the
# identity, the "curse of depth" that motivates Mix-LN {cite}`li2025mixln`. Peri-LN adds
# normalized vectors, each of RMS $\approx |\gamma_\text{out}|$, so
# $\mathrm{RMS}(x_L)^2 \lesssim \mathrm{RMS}(x_0)^2 + \sum_l \gamma_{\text{out},l}^2$: the
# stream still grows (like $\sqrt{L}$ at initialization, where $\gamma = 1$) but only as
# far as the learned gains let it {cite}`kim2025periln`.
#
# **The gradient.** In Pre-LN (and Peri-LN),
# $\partial x_{l+1} / \partial x_l = I + \partial F_l / \partial x_l$: the identity path
# carries the loss gradient to every layer undiminished. In Post-LN the gradient must pass
# through the Jacobian of every norm above it,
#
# $$\frac{\partial\, \mathrm{LN}(z)}{\partial z} = \frac{1}{\sigma(z)}\,\mathrm{diag}(\gamma)
# \Big(I - \tfrac{1}{d}\mathbf{1}\mathbf{1}^\top - \tfrac{1}{d}\hat z \hat z^\top\Big),
# \qquad z = x_l + F_l(x_l),$$
#
# and $\sigma(z) \approx \sqrt{1 + \mathrm{Var}\,F_l}$ exceeds 1 as soon as a branch adds
# anything: the gradient reaching the lower layers shrinks geometrically with the number
# of norms above them. Xiong et al. {cite}`xiong2020layer` make this quantitative with a
# mean-field argument: at initialization the gradient of the *last* layer's weights is
# $O(d\sqrt{\ln d})$ for Post-LN, independent of depth, but $O(d\sqrt{\ln d / L})$ for
# Pre-LN. Large gradients on the top layers and small ones at the bottom are why Post-LN
# needs a small learning rate and a warm-up; Liu et al. {cite}`liu2020admin` add that
# Post-LN's strong dependence on its residual branches amplifies every update, so a
# learning rate that is fine for a shallow model throws a deep one off. Everything below
# measures these predictions on CharGPT.

# %% [markdown]
# ## 2. The placements in code, checked against the library
#
# `ml.models.Block` takes `placement="pre" | "post" | "peri"`. Here are the three
# placements from scratch, with LayerNorm written out (mean, variance, gain, bias), run
# on the block's own attention and MLP and compared with the library block. We first
# randomize the norms' gains and biases, so that a norm applied in the wrong place cannot
# go unnoticed.

# %%
def layer_norm(x, norm):
    """LayerNorm over the last dim with the gain and bias of `norm` (an nn.LayerNorm)."""
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def block_forward(block, x, placement):
    """One transformer block, written from the equations of section 1."""
    attn, mlp = block.attn, block.mlp
    if placement == "post":
        x = layer_norm(x + attn(x), block.norm1)
        return layer_norm(x + mlp(x), block.norm2)
    if placement == "pre":
        x = x + attn(layer_norm(x, block.norm1))
        return x + mlp(layer_norm(x, block.norm2))
    if placement == "peri":
        x = x + layer_norm(attn(layer_norm(x, block.norm1)), block.norm1_out)
        return x + layer_norm(mlp(layer_norm(x, block.norm2)), block.norm2_out)
    raise ValueError(placement)


# %% tags=["nbval-check-output"]
torch.manual_seed(0)
x = torch.randn(4, 16, 64)
rows = []
for placement in ml.models.PLACEMENTS:
    block = ml.models.Block(64, 4, causal=True, placement=placement).eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        err = (block_forward(block, x, placement) - block(x)).abs().max().item()
        assert torch.allclose(block_forward(block, x, placement), block(x), atol=1e-5)
    rows.append({"placement": placement, "max |ours - Block|": f"{err:.0e}" if err else "0",
                 "norms per block": sum(isinstance(m, nn.LayerNorm) for m in block.modules()),
                 "params": ml.bench.count_params(block)})
ml.bench.Table(rows, title="from-scratch placements vs ml.models.Block (d=64, 4 heads)")

# %% [markdown]
# Peri-LN has two more norms per block (256 more parameters here, a rounding error). The
# library's block, for reference:

# %%
ml.show(ml.models.Block)

# %% [markdown]
# Mix-LN needs no new code: Pre-LN and Post-LN blocks have the same parameters, so we
# build a Pre-LN CharGPT and switch the first $\lfloor \alpha L \rfloor$ blocks to Post-LN
# (at least one, so that a 2-layer model is not plain Pre-LN). The models of this notebook
# are CharGPTs {cite}`karpathy2022nanogpt` on Tiny Shakespeare {cite}`karpathy2015charrnn`,
# narrower than chapter 1's baseline so that a grid of placements and depths fits the
# time budget; the widths, depths and steps of each scale are set here.

# %%
corpus = ml.data.shakespeare()
V = corpus.vocab_size
WIDTH = ml.pick(smoke=32, cpu=64, gpu=256)
HEADS = ml.pick(smoke=2, cpu=4, gpu=4)
T = ml.pick(smoke=16, cpu=32, gpu=128)          # context (characters)
BATCH = ml.pick(smoke=8, cpu=16, gpu=64)
DEPTHS = ml.pick(smoke=(1, 2, 4), cpu=(2, 6, 12), gpu=(2, 6, 12, 24))
STEPS = ml.pick(smoke=16, cpu=250, gpu=2000)
MIX_ALPHA = 0.25
PLACEMENT_NAMES = ("post", "pre", "peri", "mix")


def n_post(n_layer):
    """Mix-LN: the number of leading Post-LN blocks."""
    return max(1, int(MIX_ALPHA * n_layer))


def build_gpt(placement, n_layer, width=WIDTH):
    """A CharGPT with `placement` in post / pre / peri / mix (Mix-LN)."""
    model = ml.models.CharGPT(V, block_size=T, n_layer=n_layer, n_head=HEADS, n_embd=width,
                              dropout=0.0, placement="pre" if placement == "mix" else placement)
    if placement == "mix":
        for block in model.blocks[:n_post(n_layer)]:
            block.placement = "post"
    return model.to(dev)


print([b.placement for b in build_gpt("mix", max(DEPTHS)).blocks])

# %% [markdown]
# ## 3. At initialization: stream scale and gradients per layer
#
# One helper does all the measuring of this notebook. Forward hooks record the residual
# stream entering the first block and leaving every block; on those tensors,
# `retain_grad()` keeps the gradient of the loss with respect to the stream; after the
# backward pass we read the gradient norm of every block's parameters.

# %%
def probe(model, x, y):
    """One forward + backward pass of `model` on a batch, measured layer by layer.

    Returns a dict of lists, index 0 = the stream entering block 0 (after the embedding):
      rms:        RMS of the residual stream after each block
      grad_rms:   RMS of d loss / d stream there
      cos:        (one per block) mean cosine similarity of each token's stream before and after
      param_grad: (one per block) L2 norm of the gradient of the block's parameters
    The model's gradients are cleared afterwards.
    """
    acts = []

    def keep(t):
        t.retain_grad()
        acts.append(t)

    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, args: keep(args[0]))]
    hooks += [b.register_forward_hook(lambda m, args, out: keep(out)) for b in model.blocks]
    was_training = model.training
    model.eval()
    try:
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        model.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {
        "loss": loss.item(),
        "rms": [a.detach().pow(2).mean().sqrt().item() for a in acts],
        "grad_rms": [a.grad.pow(2).mean().sqrt().item() for a in acts],
        "cos": [F.cosine_similarity(a.detach(), b.detach(), dim=-1).mean().item()
                for a, b in zip(acts[:-1], acts[1:])],
        "param_grad": block_grad_norms(model),
    }
    model.zero_grad(set_to_none=True)
    return out


def block_grad_norms(model):
    """The L2 norm of the gradient of each block's parameters (one number per block)."""
    return [torch.sqrt(sum(p.grad.pow(2).sum() for p in b.parameters() if p.grad is not None)).item()
            for b in model.blocks]


# %% [markdown]
# At initialization we can afford a deeper model than we can train, so we probe CharGPTs
# with `INIT_DEPTH` blocks ({glue:}`n22_init_depth` at this scale), one of each placement,
# on one batch, averaged over a few random initializations.

# %%
INIT_DEPTH = ml.pick(smoke=4, cpu=24, gpu=48)
probe_batches = ml.data.TokenBatches(corpus.train_ids, T, BATCH, steps=2, device=dev,
                                     generator=torch.Generator().manual_seed(0))
probe_x, probe_y = probe_batches.sample()
init = {}
for placement in PLACEMENT_NAMES:
    runs = []
    for seed in range(ml.pick(smoke=1, cpu=3, gpu=3)):
        torch.manual_seed(seed)
        runs.append(probe(build_gpt(placement, INIT_DEPTH), probe_x, probe_y))
    init[placement] = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for placement, r in init.items():
    axes[0].plot(r["rms"], label=placement)
    axes[1].plot(r["grad_rms"], label=placement)
    axes[2].plot(np.arange(INIT_DEPTH), r["param_grad"], label=placement)
axes[0].set(title="stream RMS at init", xlabel="after block (0 = embedding)", yscale="log")
axes[1].set(title="RMS of d loss / d stream at init", xlabel="after block (0 = embedding)", yscale="log")
axes[2].set(title="gradient norm of each block's parameters", xlabel="block", yscale="log")
axes[0].legend()
plt.tight_layout()
plt.show()

# %%
def ratio(values, first=0, last=-1):
    return values[last] / values[first]


rows = [{"placement": p,
         "stream RMS: embedding": r["rms"][0], "stream RMS: last block": r["rms"][-1],
         "param grad: block 0": r["param_grad"][0], "param grad: last block": r["param_grad"][-1],
         "param grad first / last": ratio(r["param_grad"], -1, 0)}
        for p, r in init.items()]
ml.bench.Table(rows, title=f"CharGPT at initialization, {INIT_DEPTH} blocks, width {WIDTH}")

# %%
ml.glue("n22_init_depth", INIT_DEPTH, "d")
ml.glue("n22_init_peri_rms_last", init["peri"]["rms"][-1], ".2f")
ml.glue("n22_init_peri_rms_pred", math.sqrt(init["peri"]["rms"][0] ** 2 + 2 * INIT_DEPTH), ".2f")
ml.glue("n22_init_pre_rms_growth", ratio(init["pre"]["rms"]), ".2f")
ml.glue("n22_init_post_grad_ratio", ratio(init["post"]["param_grad"], -1, 0), ".2g")
ml.glue("n22_init_pre_grad_ratio", ratio(init["pre"]["param_grad"], -1, 0), ".2f")
ml.glue("n22_init_post_last_vs_pre", init["post"]["param_grad"][-1] / init["pre"]["param_grad"][-1], ".2g")
ml.glue("n22_init_embed_rms", init["pre"]["rms"][0], ".3f")
ml.glue("n22_init_embed_gain", 1 / init["pre"]["rms"][0], ".0f");

# %% [markdown]
# At initialization the placements already differ in kind. Pre-LN's stream barely grows:
# from the embedding's RMS of {glue:}`n22_init_embed_rms` by a factor of only
# {glue:}`n22_init_pre_rms_growth` over {glue:}`n22_init_depth` blocks, because GPT-2's
# initialization makes every residual branch tiny (the output projections have standard
# deviation $0.02/\sqrt{2L}$). Post-LN's (and Mix-LN's) first norm lifts the stream to RMS 1
# and every later norm keeps it there. Peri-LN adds a vector of RMS exactly 1 at every
# sub-layer, so its stream grows steadily: {glue:}`n22_init_peri_rms_last` after the last
# block, below the $\sqrt{\mathrm{RMS}_0^2 + 2L}$ = {glue:}`n22_init_peri_rms_pred` that
# independent additions would give (a branch's normalized output is computed from the
# stream and partly cancels it).
#
# The gradients: in Pre-LN every block gets about the same gradient (block 0 over the last
# block: {glue:}`n22_init_pre_grad_ratio`), the identity path at work. In Post-LN, block 0
# gets {glue:}`n22_init_post_grad_ratio` times the gradient of the last block, for a reason
# specific to this initialization: the embedding enters with RMS {glue:}`n22_init_embed_rms`
# and the first norm divides by it, which multiplies the gradient through it by about
# {glue:}`n22_init_embed_gain`. Above it, the
# branches are still tiny, so $\sigma(x_l + F_l) \approx 1$ and nothing has vanished yet
# (the stream gradient, middle panel, is flat). Xiong et al.'s init-time prediction that
# Post-LN's *last* layer gets the larger gradient does not hold here: its last
# block's gradient is {glue:}`n22_init_post_last_vs_pre` times Pre-LN's. Their analysis
# assumes branches initialized at the scale of the stream; with GPT-2's small branches a
# Post-LN block starts close to the identity, and Pre-LN's gradients are all scaled up by
# its final norm, which divides by its tiny stream. (A gradient with respect to a
# normalized quantity scales as one over that quantity's RMS, so compare the *shapes* of
# the curves across placements, not their heights.) Training changes this picture, as
# section 5 shows.

# %% [markdown]
# ## 4. Training each placement at growing depth
#
# Now we train. The recipe is chapter 1's (AdamW with betas 0.9/0.99, weight decay 0.1 on
# matrices, linear warm-up then cosine decay to a tenth, gradient clipping at 1), and the
# loop is written out here rather than calling `ml.train.fit`, because we want two things
# `fit` does not do: log the gradient norm of every block (before clipping) during
# training, and *survive* a diverging run. A loss that turns NaN or infinite stops the run
# and marks it; the notebook goes on. The trained models and their logs are cached by
# `ml.train.train_or_load`, keyed by the configuration, so re-running this notebook
# retrains nothing.

# %%
EVAL_BATCHES = ml.pick(smoke=2, cpu=12, gpu=50)
val_windows = list(ml.data.TokenBatches(corpus.val_ids, T, BATCH, steps=EVAL_BATCHES, device=dev,
                                        generator=torch.Generator().manual_seed(1234)))


def train_loop(model, cfg):
    """Train `model` with cfg's recipe; log losses and per-block gradient norms; stop on NaN."""
    steps = cfg["steps"]
    opt = ml.train.adamw(model, cfg["lr"], weight_decay=0.1, betas=(0.9, 0.99))
    schedule = ml.train.warmup_cosine(steps, cfg["warmup_steps"], final=0.1)
    batches = ml.data.TokenBatches(corpus.train_ids, T, BATCH, steps=steps, device=dev)
    history = ml.train.History()
    loss_sum, n, start = 0.0, 0, time.perf_counter()
    for step, (x, y) in enumerate(batches):
        lr = cfg["lr"] * schedule(step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        if not torch.isfinite(loss):  # diverged: record where, and stop
            history.log(step=step, diverged=True, time=time.perf_counter() - start)
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        row = {}
        if step % cfg["grad_every"] == 0 or step == steps - 1:
            row["block_grad"] = block_grad_norms(model)  # before clipping
        row["grad_norm"] = nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        opt.step()
        loss_sum, n = loss_sum + loss.item(), n + 1
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == steps:
            row |= {"train_loss": loss_sum / n,
                    "val_loss": ml.train.evaluate(model, val_windows)["loss"]}
            loss_sum, n = 0.0, 0
        if len(row) > 1 or step < 10:
            history.log(step=step, lr=lr, time=time.perf_counter() - start, **row)
    return history


def train_gpt(placement, n_layer, *, lr, warmup, steps=STEPS, tag="grid"):
    """The trained CharGPT and its record (cached); record["history"] has the logs."""
    cfg = dict(placement=placement, n_layer=n_layer, n_embd=WIDTH, n_head=HEADS, block_size=T,
               batch_size=BATCH, steps=steps, lr=lr, warmup_steps=warmup,
               eval_every=max(1, steps // 6), eval_batches=EVAL_BATCHES,
               grad_every=max(1, steps // 6), seed=0, mix_alpha=MIX_ALPHA)
    with contextlib.redirect_stdout(io.StringIO()):  # quiet "trained / loaded" lines
        return ml.train.train_or_load(f"n22-{tag}-{placement}-L{n_layer}", cfg,
                                      lambda: build_gpt(placement, n_layer),
                                      lambda model: train_loop(model, cfg), device=dev)


# %% [markdown]
# Two reference losses make a run's loss meaningful. A model that predicts the uniform
# distribution over the 65 characters scores $\ln 65$; one that ignores its input and
# predicts the *frequencies* of the characters (a unigram model) scores their entropy.
# A run whose validation loss stays at the unigram level has learned nothing about
# context: we call it **stuck**, and a run whose loss became NaN **diverged**.

# %%
counts = torch.bincount(corpus.train_ids, minlength=V).double()
p_train = counts / counts.sum()
val_counts = torch.bincount(corpus.val_ids, minlength=V).double()
UNIGRAM = -(val_counts * p_train.clamp_min(1e-12).log()).sum().item() / val_counts.sum().item()
ml.glue("n22_unigram", UNIGRAM, ".2f")
ml.glue("n22_uniform", math.log(V), ".2f")


def outcome(record):
    """'diverged at step s', 'stuck', or 'trains', from a run's record."""
    rows = record["history"]["rows"]
    bad = [r["step"] for r in rows if r.get("diverged")]
    if bad:
        return f"diverged (step {bad[0]})"
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    if not val or not math.isfinite(val[-1]):
        return "diverged"
    return "stuck" if val[-1] > UNIGRAM - 0.1 else "trains"


def final_val(record):
    rows = record["history"]["rows"]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return val[-1] if val else float("nan")


print(f"uniform: ln {V} = {math.log(V):.3f} nats; unigram: {UNIGRAM:.3f} nats")

# %% [markdown]
# The grid: every placement at every depth, same recipe, same data order, same seed.
# Peak learning rate `GRID_LR` with a warm-up over the first tenth of the steps.

# %%
GRID_LR = 1e-3
GRID_WARMUP = max(1, STEPS // 10)
grid, t0 = {}, time.perf_counter()
for n_layer in DEPTHS:
    for placement in PLACEMENT_NAMES:
        grid[placement, n_layer] = train_gpt(placement, n_layer, lr=GRID_LR, warmup=GRID_WARMUP)
grid_seconds = time.perf_counter() - t0
grid_train_seconds = sum(rec["train_seconds"] for _, rec in grid.values())
print(f"{len(grid)} runs of {STEPS} steps: {grid_train_seconds:.0f} s of training when they were trained "
      f"({grid_seconds:.0f} s in this execution, which loads cached runs)")

# %%
fig, axes = plt.subplots(1, len(DEPTHS), figsize=(4.6 * len(DEPTHS), 3.6), sharey=True)
for ax, n_layer in zip(axes, DEPTHS):
    for i, placement in enumerate(PLACEMENT_NAMES):
        rows = [r for r in grid[placement, n_layer][1]["history"]["rows"] if r.get("val_loss") is not None]
        ax.plot([r["step"] + 1 for r in rows], [r["val_loss"] for r in rows], marker="o", ms=3,
                color=ml.plot.PALETTE[i], label=placement)
        ax.plot([r["step"] + 1 for r in rows], [r["train_loss"] for r in rows], ls="--",
                color=ml.plot.PALETTE[i], alpha=0.6)
    ax.axhline(UNIGRAM, color="0.6", lw=1, ls=":")
    ax.set(title=f"{n_layer} layers", xlabel="step")
axes[0].set_ylabel("loss (solid: val, dashed: train)")
axes[0].legend()
plt.tight_layout()
plt.show()

# %%
table = []
for placement in PLACEMENT_NAMES:
    row = {"placement": placement}
    for n_layer in DEPTHS:
        rec = grid[placement, n_layer][1]
        row[f"val loss, L={n_layer}"] = final_val(rec)
        row[f"L={n_layer}"] = outcome(rec)
    table.append(row)
ml.bench.Table(table, title=f"validation loss after {STEPS} steps (lr {GRID_LR:g}, warm-up {GRID_WARMUP} steps, "
                            f"width {WIDTH}); unigram level {UNIGRAM:.2f}",
               formats={f"val loss, L={n}": ".3f" for n in DEPTHS})

# %%
deep = max(DEPTHS)
val_deep = {p: final_val(grid[p, deep][1]) for p in PLACEMENT_NAMES}
ml.glue("n22_deep", deep, "d")
ml.glue("n22_steps", STEPS, "d")
for p in PLACEMENT_NAMES:
    ml.glue(f"n22_val_{p}_deep", val_deep[p], ".3f")
    ml.glue(f"n22_val_{p}_shallow", final_val(grid[p, min(DEPTHS)][1]), ".3f")
ml.glue("n22_best_deep", min(val_deep, key=val_deep.get))
ml.glue("n22_grid_lr", GRID_LR, "g")
ml.glue("n22_shallow", min(DEPTHS), "d")
ml.glue("n22_grid_warmup", GRID_WARMUP, "d")
ml.glue("n22_val_post_mid", final_val(grid["post", DEPTHS[1]][1]), ".3f");

# %% [markdown]
# With warm-up and a peak learning rate of {glue:}`n22_grid_lr`, Pre-LN reaches the lowest
# validation loss at every depth ({glue:}`n22_val_pre_shallow` at {glue:}`n22_shallow`
# layers, {glue:}`n22_val_pre_deep` at {glue:}`n22_deep`). Post-LN trains at
# {glue:}`n22_shallow` and {glue:}`n22_mid` layers (at {glue:}`n22_mid`:
# {glue:}`n22_val_post_mid`), but at {glue:}`n22_deep` layers its validation loss stays at
# {glue:}`n22_val_post_deep`, the unigram level ({glue:}`n22_unigram`), for all
# {glue:}`n22_steps` steps: it learned the character frequencies and nothing else. Peri-LN
# ({glue:}`n22_val_peri_deep` at {glue:}`n22_deep` layers) and Mix-LN
# ({glue:}`n22_val_mix_deep`) train at every depth but end behind Pre-LN. Depth buys little
# in these short runs of narrow models: the papers' rankings come from far larger models
# trained far longer, so read this table as what happens *early*
# in training at small scale, where stability differences show first.

# %% [markdown]
# ## 5. Gradient norms per layer during training
#
# The training loop logged every block's gradient norm (before clipping) at a few steps.
# For the deepest model, one panel per placement: each line is one moment of training,
# the x-axis the block.

# %%
fig, axes = plt.subplots(1, len(PLACEMENT_NAMES), figsize=(16, 3.6), sharey=True)
for ax, placement in zip(axes, PLACEMENT_NAMES):
    rows = [r for r in grid[placement, deep][1]["history"]["rows"] if r.get("block_grad") is not None]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(rows)))
    for r, c in zip(rows, colors):
        ax.plot(r["block_grad"], color=c, marker=".", label=f"step {r['step']}")
    if placement == "mix":
        ax.axvspan(-0.5, n_post(deep) - 0.5, color="0.9", label="Post-LN blocks")
    ax.set(title=placement, xlabel="block", yscale="log")
axes[0].set_ylabel("|grad| of the block's parameters")
fig.legend(*axes[-1].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
plt.tight_layout()
plt.show()

# %%
def grad_profile(record):
    """Per-block gradient norms, the median over the logged steps after step 0."""
    rows = [r["block_grad"] for r in record["history"]["rows"] if r.get("block_grad") is not None]
    return np.median(rows[1:] if len(rows) > 1 else rows, axis=0)


rows = []
for placement in PLACEMENT_NAMES:
    row = {"placement": placement}
    for n_layer in DEPTHS:
        g = grad_profile(grid[placement, n_layer][1])
        row[f"last / block 0, L={n_layer}"] = g[-1] / g[0]
    g = grad_profile(grid[placement, deep][1])
    row |= {f"L={deep}: block 0": g[0], "weakest block": int(np.argmin(g)), "its norm": g.min(),
            "last block": g[-1]}
    rows.append(row)
grad_table = ml.bench.Table(rows, title="gradient norm of the blocks' parameters during training "
                                        "(median over the logged steps after step 0)")
grad_table

# %%
gr = {r["placement"]: r for r in grad_table}
for p in PLACEMENT_NAMES:
    ml.glue(f"n22_grad_{p}_last_first", gr[p][f"last / block 0, L={deep}"], ".3g")
    ml.glue(f"n22_grad_{p}_block0", gr[p][f"L={deep}: block 0"], ".2g")
    ml.glue(f"n22_grad_{p}_last", gr[p]["last block"], ".2g")
ml.glue("n22_mid", DEPTHS[1], "d")
g_post = grad_profile(grid["post", deep][1])
g_mid = grad_profile(grid["post", DEPTHS[1]][1])
ml.glue("n22_post_mid_weak_ratio", g_mid.min() / g_mid[-1], ".2f")
ml.glue("n22_post_deep_weak_ratio", g_post.min() / g_post[-1], ".1e")
ml.glue("n22_post_decay", (g_post[-1] / g_post[1]) ** (1 / max(1, deep - 2)), ".2f")
ml.glue("n22_post_weakest", gr["post"]["its norm"], ".2g");

# %% [markdown]
# This figure explains the table. In the {glue:}`n22_deep`-layer Post-LN model the gradient
# falls geometrically from the last block towards the input, by a factor of about
# {glue:}`n22_post_decay` per block (a straight line on the log scale), down to
# {glue:}`n22_post_weakest` in the weakest block. The lower blocks, the ones that must learn
# to use the context, receive almost nothing, and the model never leaves the unigram
# plateau. The {glue:}`n22_mid`-layer Post-LN model, which trains, has no such decay: above
# block 0 its profile is flat (its weakest block gets {glue:}`n22_post_mid_weak_ratio` of
# the last block's gradient, against {glue:}`n22_post_deep_weak_ratio` at
# {glue:}`n22_deep` layers). The decay is not there at initialization either (section 3);
# in the deep model it is already there at the first logged step after step 0. This is
# the mechanism of section 1 (every norm divides by $\sigma(x_l + F_l) > 1$ once the
# branches grow, and the factors multiply with depth) and the instability Liu et al.
# describe {cite}`liu2020admin`. One run cannot say which comes first, the decay or the
# plateau, since a model that ignores the context also gives its lower blocks little to
# learn; exercise 4 tests the cause.
#
# Pre-LN shows the opposite slope, the one Mix-LN is about {cite}`li2025mixln`: the *deep*
# blocks get the small gradients (last block over block 0: {glue:}`n22_grad_pre_last_first`).
# Peri-LN's slope is similar ({glue:}`n22_grad_peri_last_first`). Mix-LN, whose first blocks
# are Post-LN, did not raise the deep blocks' gradients in our runs: its last block gets
# {glue:}`n22_grad_mix_last` against Pre-LN's {glue:}`n22_grad_pre_last`.

# %% [markdown]
# ## 6. The residual stream after training
#
# The same probe on the trained deep models: the RMS of the stream after each block, and
# the cosine similarity between a token's stream before and after each block. A
# similarity near 1 means the block barely changes the stream: Mix-LN's measure of an
# "ineffective" layer {cite}`li2025mixln`.

# %%
val_x, val_y = val_windows[0]
trained = {p: probe(grid[p, deep][0], val_x, val_y) for p in PLACEMENT_NAMES}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for placement, r in trained.items():
    axes[0].plot(r["rms"], marker=".", label=placement)
    axes[1].plot(r["cos"], marker=".", label=placement)
axes[0].set(title=f"stream RMS after training ({deep} layers)", xlabel="after block (0 = embedding)",
            yscale="log")
axes[1].set(title="cos(stream before, after) per block", xlabel="block", ylim=(None, 1.0))
axes[0].legend()
plt.tight_layout()
plt.show()

# %%
rows = [{"placement": p, "RMS: embedding": r["rms"][0], "RMS: last block": r["rms"][-1],
         "max RMS": max(r["rms"]), "cos, deep half (mean)": np.mean(r["cos"][len(r["cos"]) // 2:]),
         "cos, shallow half (mean)": np.mean(r["cos"][:len(r["cos"]) // 2])}
        for p, r in trained.items()]
stream_table = ml.bench.Table(rows, title=f"residual stream after {STEPS} steps, {deep} layers")
stream_table

# %%
st = {r["placement"]: r for r in stream_table}
for p in PLACEMENT_NAMES:
    ml.glue(f"n22_rms_{p}_max", st[p]["max RMS"], ".3g")
    ml.glue(f"n22_cos_{p}_deep", st[p]["cos, deep half (mean)"], ".3f");

# %% [markdown]
# After training, Post-LN's stream is still pinned at RMS 1, Pre-LN's has grown to
# {glue:}`n22_rms_pre_max`, and Peri-LN's is by far the largest ({glue:}`n22_rms_peri_max`):
# each of its sub-layers adds a normalized vector scaled by a learned gain, so Peri-LN bounds
# what *one* layer can add, not the total. The cosine similarities show the "curse of
# depth": in the deep half of the Pre-LN, Post-LN and Mix-LN models a block leaves the
# stream almost unchanged (mean cosine {glue:}`n22_cos_pre_deep`, {glue:}`n22_cos_post_deep`
# and {glue:}`n22_cos_mix_deep`). Peri-LN's deep blocks change it the most
# ({glue:}`n22_cos_peri_deep`): a normalized branch output does not shrink relative to the
# stream as the stream grows, which is the point of normalizing it.

# %% [markdown]
# ## 7. Where training breaks: learning rate and warm-up
#
# Xiong et al.'s central claim is that Pre-LN can drop the warm-up and take a larger
# learning rate, where Post-LN cannot {cite}`xiong2020layer`. We test it directly: at one
# depth, Post-LN, Pre-LN and Peri-LN each train for a shorter run at several peak learning
# rates, with and without warm-up, and every run is classified as *trains*, *stuck* (validation loss
# within 0.1 of the unigram level) or *diverged* (NaN).

# %%
SWEEP_DEPTH = ml.pick(smoke=2, cpu=6, gpu=12)
SWEEP_STEPS = ml.pick(smoke=12, cpu=150, gpu=1000)
SWEEP_LRS = ml.pick(smoke=(1e-3, 1e-2), cpu=(1e-3, 3e-3, 1e-2), gpu=(3e-4, 1e-3, 3e-3, 1e-2))
SWEEP_WARMUPS = (0, max(1, SWEEP_STEPS // 10))
sweep, t0 = {}, time.perf_counter()
SWEEP_PLACEMENTS = ("post", "pre", "peri")
for placement in SWEEP_PLACEMENTS:
    for lr in SWEEP_LRS:
        for warmup in SWEEP_WARMUPS:
            sweep[placement, lr, warmup] = train_gpt(placement, SWEEP_DEPTH, lr=lr, warmup=warmup,
                                                     steps=SWEEP_STEPS, tag="sweep")[1]
sweep_seconds = time.perf_counter() - t0
sweep_train_seconds = sum(rec["train_seconds"] for rec in sweep.values())
print(f"{len(sweep)} runs of {SWEEP_STEPS} steps: {sweep_train_seconds:.0f} s of training when they were "
      f"trained ({sweep_seconds:.0f} s in this execution)")

# %%
rows = []
for placement in SWEEP_PLACEMENTS:
    for warmup in SWEEP_WARMUPS:
        row = {"placement": placement, "warm-up": warmup}
        for lr in SWEEP_LRS:
            rec = sweep[placement, lr, warmup]
            row[f"lr {lr:g}"] = f"{final_val(rec):.3f} ({outcome(rec)})"
        rows.append(row)
ml.bench.Table(rows, title=f"validation loss after {SWEEP_STEPS} steps, {SWEEP_DEPTH} layers "
                           f"(unigram level {UNIGRAM:.2f})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
markers = {"trains": "o", "stuck": "x"}
for ax, warmup in zip(axes, SWEEP_WARMUPS):
    for i, placement in enumerate(SWEEP_PLACEMENTS):
        vals = [final_val(sweep[placement, lr, warmup]) for lr in SWEEP_LRS]
        shown = [v if math.isfinite(v) else np.nan for v in vals]
        ax.plot(SWEEP_LRS, shown, color=ml.plot.PALETTE[i], label=placement)
        for lr, v in zip(SWEEP_LRS, vals):
            kind = outcome(sweep[placement, lr, warmup])
            if kind.startswith("diverged"):
                ax.plot(lr, UNIGRAM + 0.3, marker="X", ms=10, color=ml.plot.PALETTE[i])
            else:
                ax.plot(lr, v, marker=markers[kind], ms=7, color=ml.plot.PALETTE[i])
    ax.axhline(UNIGRAM, color="0.6", lw=1, ls=":")
    ax.set(xscale="log", xlabel="peak learning rate",
           title=f"warm-up {warmup} steps" + (" (none)" if warmup == 0 else ""))
axes[0].set_ylabel(f"val loss after {SWEEP_STEPS} steps")
axes[0].legend()
plt.tight_layout()
plt.show()

# %%
def n_trains(placement, warmup):
    return sum(outcome(sweep[placement, lr, warmup]) == "trains" for lr in SWEEP_LRS)


for p in SWEEP_PLACEMENTS:
    ml.glue(f"n22_sweep_{p}_ok_nowarm", n_trains(p, 0), "d")
    ml.glue(f"n22_sweep_{p}_ok_warm", n_trains(p, SWEEP_WARMUPS[1]), "d")
    best = min(final_val(sweep[p, lr, w]) for lr in SWEEP_LRS for w in SWEEP_WARMUPS)
    ml.glue(f"n22_sweep_{p}_best", best, ".3f")
ml.glue("n22_sweep_n_lrs", len(SWEEP_LRS), "d")
ml.glue("n22_sweep_depth", SWEEP_DEPTH, "d")
ml.glue("n22_sweep_steps", SWEEP_STEPS, "d")
ml.glue("n22_sweep_pre_warm_gain",
        np.mean([final_val(sweep["pre", lr, 0]) - final_val(sweep["pre", lr, SWEEP_WARMUPS[1]])
                 for lr in SWEEP_LRS]), ".3f")
n_diverged = sum(outcome(r).startswith("diverged") for r in sweep.values())
ml.glue("n22_sweep_n_diverged", n_diverged, "d")
ml.glue("n22_sweep_n_runs", len(sweep), "d")
lo, hi, wu = SWEEP_LRS[0], SWEEP_LRS[-1], SWEEP_WARMUPS[1]
ml.glue("n22_sweep_lr_lo", lo, "g")
ml.glue("n22_sweep_lr_hi", hi, "g")
ml.glue("n22_sweep_warmup", wu, "d")
ml.glue("n22_sweep_pre_hi_nowarm", final_val(sweep["pre", hi, 0]), ".3f")
ml.glue("n22_sweep_pre_hi_warm", final_val(sweep["pre", hi, wu]), ".3f")
ml.glue("n22_sweep_post_lo_nowarm", final_val(sweep["post", lo, 0]), ".3f")
ml.glue("n22_sweep_post_lo_warm", final_val(sweep["post", lo, wu]), ".3f")
ml.glue("n22_sweep_peri_spread", max(final_val(r) for (p, _, _), r in sweep.items() if p == "peri")
        - min(final_val(r) for (p, _, _), r in sweep.items() if p == "peri"), ".2f")
ml.glue("n22_sweep_pre_spread", max(final_val(r) for (p, _, _), r in sweep.items() if p == "pre")
        - min(final_val(r) for (p, _, _), r in sweep.items() if p == "pre"), ".2f");

# %% [markdown]
# No run produced a NaN ({glue:}`n22_sweep_n_diverged` of {glue:}`n22_sweep_n_runs`): AdamW's
# step is bounded by the learning rate whatever the gradient, and the gradient is clipped at
# 1, so a small model does not overflow. Its failure mode is the plateau. Pre-LN trains at
# all {glue:}`n22_sweep_n_lrs` learning rates without warm-up, as Xiong et al. claim, but
# warm-up still pays at the highest rate ({glue:}`n22_sweep_pre_hi_nowarm` without,
# {glue:}`n22_sweep_pre_hi_warm` with a {glue:}`n22_sweep_warmup`-step warm-up, at
# {glue:}`n22_sweep_lr_hi`). Post-LN leaves the plateau in {glue:}`n22_sweep_post_ok_nowarm`
# of {glue:}`n22_sweep_n_lrs` settings without warm-up and {glue:}`n22_sweep_post_ok_warm`
# with it: at {glue:}`n22_sweep_lr_lo` without warm-up it reaches
# {glue:}`n22_sweep_post_lo_nowarm`, with warm-up it is still at {glue:}`n22_sweep_post_lo_warm`
# after {glue:}`n22_sweep_steps` steps. Warm-up did not make a larger learning rate safe for
# Post-LN here; the plateau looks like a delay that grows with the learning rate and the depth (the
# grid's {glue:}`n22_mid`-layer Post-LN model, with warm-up and {glue:}`n22_steps` steps, did escape it).
# Peri-LN trains in every setting and is the least sensitive to the learning rate (its
# losses span {glue:}`n22_sweep_peri_spread` nats across the sweep, Pre-LN's
# {glue:}`n22_sweep_pre_spread`), which is Kim et al.'s stability claim; but its best loss
# ({glue:}`n22_sweep_peri_best`) is behind Pre-LN's ({glue:}`n22_sweep_pre_best`).

# %% [markdown]
# ## 8. Massive activations
#
# Sun et al. {cite}`sun2024massive` found that in LLMs a handful of residual-stream
# activations are enormous, around $10^4$ times the median magnitude, always in the same
# few hidden dimensions, on the first token and on delimiter tokens, and that they act
# like fixed biases the attention relies on. They matter for efficiency because they are
# the outliers that break low-bit quantization (chapter 5). Where the norm goes bounds
# them or not:
#
# - **Post-LN**: the stream is a LayerNorm output. A centered vector with RMS 1 has every
#   entry at most $\sqrt{d-1}$ in magnitude (all the energy in one coordinate), so
#   $\max_i |x_i| \le \sqrt{d-1}\,\max_i|\gamma_i| + \max_i|\beta_i|$.
# - **Peri-LN**: the stream is the embedding plus $2L$ normalized branch outputs, each
#   bounded the same way, so its largest entry grows at most linearly with depth.
# - **Pre-LN** (and Mix-LN's Pre-LN part): nothing bounds it.
#
# We record the stream after every block on a batch of validation text and report, per
# layer, the largest magnitude over its median, and where the largest one sits.

# %%
@torch.no_grad()
def massive_activations(model, x, k=10):
    """Per block: top-k |activation| of the residual stream vs its median, and where they are."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, args, out: outs.append(out)) for b in model.blocks]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for layer, a in enumerate(outs):
        mag = a.abs()
        top, idx = mag.flatten().topk(k)
        b, t, c = np.unravel_index(idx.cpu().numpy(), mag.shape)
        dims, counts = np.unique(c, return_counts=True)
        rows.append({"layer": layer, "median": mag.median().item(), "top-1": top[0].item(),
                     "top-1 / median": (top[0] / mag.median()).item(),
                     "dim": int(c[0]), "position": int(t[0]), "char": repr(corpus.decode([x[int(b[0]), int(t[0])].item()])),
                     f"top-{k} in one dim": int(counts.max())})
    return rows


ma_x = torch.cat([xb for xb, _ in val_windows])[:ml.pick(smoke=8, cpu=64, gpu=64)]
massive = {p: massive_activations(grid[p, deep][0], ma_x) for p in PLACEMENT_NAMES}
ml.bench.Table(massive["pre"], title=f"Pre-LN, {deep} layers, trained: residual stream per layer")

# %% [markdown]
# The same for chapter 1's cached CharGPT baseline (Pre-LN, wider, trained longer and on
# longer windows), and the largest ratio over layers for every model:

# %%
base, base_record = ml.baselines.char_gpt()
base_cfg = base_record["config"]
base_x = torch.cat([xb for xb, _ in ml.data.TokenBatches(
    corpus.val_ids, base_cfg["block_size"], 16, steps=4, device=dev,
    generator=torch.Generator().manual_seed(1234))])
massive["chapter-1 baseline (pre)"] = massive_activations(base, base_x)
init_models = {p: build_gpt(p, deep) for p in ("pre", "peri")}
for p, m in init_models.items():
    massive[f"{p}, at init"] = massive_activations(m, ma_x)

rows = []
for name, layers in massive.items():
    worst = max(layers, key=lambda r: r["top-1 / median"])
    rows.append({"model": name, "layers": len(layers), "worst layer": worst["layer"],
                 "top-1": worst["top-1"], "median": worst["median"],
                 "top-1 / median": worst["top-1 / median"], "dim": worst["dim"],
                 "position": worst["position"], "char": worst["char"],
                 "top-10 in one dim": worst["top-10 in one dim"]})
massive_table = ml.bench.Table(rows, title="largest activation vs median, worst layer per model")
massive_table

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, layers in massive.items():
    if "init" in name:
        continue
    ax.plot([r["layer"] for r in layers], [r["top-1 / median"] for r in layers], marker=".", label=name)
ax.set(yscale="log", xlabel="block", ylabel="max |x| / median |x|",
       title="massive activations in the residual stream (trained models)")
ax.legend(fontsize=8)
plt.show()

# %%
mt = {r["model"]: r for r in massive_table}
for p in PLACEMENT_NAMES:
    ml.glue(f"n22_ma_{p}", mt[p]["top-1 / median"], ".1f")
    ml.glue(f"n22_ma_{p}_top1", mt[p]["top-1"], ".3g")
ml.glue("n22_ma_base", mt["chapter-1 baseline (pre)"]["top-1 / median"], ".1f")
ml.glue("n22_ma_base_dim", mt["chapter-1 baseline (pre)"]["dim"], "d")
ml.glue("n22_base_width", base_cfg["n_embd"], "d")
ml.glue("n22_base_tokens_ratio", base_cfg["steps"] * base_cfg["batch_size"] * base_cfg["block_size"]
        / (STEPS * BATCH * T), ".1f")
ml.glue("n22_ma_base_top10", mt["chapter-1 baseline (pre)"]["top-10 in one dim"], "d")
ml.glue("n22_ma_pre_init", mt["pre, at init"]["top-1 / median"], ".0f")
ml.glue("n22_post_bound", math.sqrt(WIDTH - 1), ".1f")
ml.glue("n22_width", WIDTH, "d")
ml.glue("n22_max_params_m", max(ml.bench.count_params(base), ml.bench.count_params(grid["pre", deep][0])) / 1e6, ".2f")
CHAR_NAMES = {repr(" "): "space", repr("\n"): "newline"}
ml.glue("n22_ma_base_char", CHAR_NAMES.get(mt["chapter-1 baseline (pre)"]["char"], mt["chapter-1 baseline (pre)"]["char"]))
ml.glue("n22_ma_pre_last_top10", massive["pre"][-1]["top-10 in one dim"], "d")
ml.glue("n22_ma_pre_last_char", CHAR_NAMES.get(massive["pre"][-1]["char"], massive["pre"][-1]["char"]))
ml.glue("n22_ma_peri_rms", st["peri"]["max RMS"], ".3g")
# Reference: the same statistic for Gaussian noise of the same size (no outliers at all).
gauss = torch.randn(ma_x.numel() * WIDTH, generator=torch.Generator().manual_seed(0)).abs()
ml.glue("n22_gauss_ratio", (gauss.max() / gauss.median()).item(), ".1f")
print(f"Gaussian noise, {gauss.numel():,} values: max / median = {(gauss.max() / gauss.median()).item():.1f}")

# %% [markdown]
# Nothing in these small models is massive. For Gaussian noise of the same size the largest
# magnitude is {glue:}`n22_gauss_ratio` times the median, and the trained
# {glue:}`n22_deep`-layer models sit at that level (Pre-LN {glue:}`n22_ma_pre`, Peri-LN
# {glue:}`n22_ma_peri`, Mix-LN {glue:}`n22_ma_mix`), Post-LN below it ({glue:}`n22_ma_post`:
# its largest entry, {glue:}`n22_ma_post_top1`, respects the LayerNorm bound of
# $\sqrt{d-1}$ = {glue:}`n22_post_bound` times its largest gain, plus its largest bias). Peri-LN has the largest
# *absolute* values ({glue:}`n22_ma_peri_top1`), because its whole stream is larger, but not
# the largest ratio. The chapter-1 baseline, {glue:}`n22_base_width` wide and trained on
# {glue:}`n22_base_tokens_ratio` times as many characters, is the
# only model clearly above the Gaussian level ({glue:}`n22_ma_base`), and it shows Sun et
# al.'s signature in miniature: its largest values sit in one hidden dimension (dimension
# {glue:}`n22_ma_base_dim` holds {glue:}`n22_ma_base_top10` of the top 10), on the
# {glue:}`n22_ma_base_char` character (in a character model the space is the word
# delimiter). Even in the small Pre-LN model, the top 10 values of the last block fall in
# one dimension ({glue:}`n22_ma_pre_last_top10` of 10, on the
# {glue:}`n22_ma_pre_last_char` character). Massive
# activations grow with scale and training time (Sun et al. study models with billions of
# parameters); whether a placement bounds them can only be tested on a model that has them,
# and the hooks above work unchanged on any model that does.

# %% [markdown]
# ## Claimed vs measured
#
# Measured on CharGPTs of width {glue:}`n22_width` with {glue:}`n22_shallow` to
# {glue:}`n22_deep` layers (the stored outputs come from the CPU, see the banner), Tiny Shakespeare, {glue:}`n22_steps` steps for the depth grid and
# {glue:}`n22_sweep_steps` for the learning-rate sweep, one seed. The papers train models
# with hundreds of millions to billions of parameters; a claim we do not reproduce at this
# scale is not refuted by it.
#
# | paper | claim | measured here | conditions |
# | --- | --- | --- | --- |
# | {cite}`xiong2020layer` | Pre-LN trains without warm-up; Post-LN needs warm-up; at initialization Post-LN's last layer has the larger gradient | Pre-LN trains at all {glue:}`n22_sweep_n_lrs` learning rates without warm-up (warm-up still helps at {glue:}`n22_sweep_lr_hi`: {glue:}`n22_sweep_pre_hi_nowarm` vs {glue:}`n22_sweep_pre_hi_warm`); Post-LN trains in {glue:}`n22_sweep_post_ok_nowarm` setting(s) without and {glue:}`n22_sweep_post_ok_warm` with warm-up; at init Post-LN's last-block gradient is {glue:}`n22_init_post_last_vs_pre` times Pre-LN's (not larger) | {glue:}`n22_sweep_depth` layers, GPT-2 initialization (small branches), AdamW, clipping at 1 |
# | {cite}`liu2020admin` | deep Post-LN fails to train; Post-LN's dependence on its residual branches amplifies updates | Post-LN trains at {glue:}`n22_shallow` and {glue:}`n22_mid` layers, stays at the unigram loss at {glue:}`n22_deep`; its gradient decays by about {glue:}`n22_post_decay` per block towards the input during training | lr {glue:}`n22_grid_lr`, warm-up {glue:}`n22_grid_warmup` steps |
# | {cite}`kim2025periln` | Peri-LN is more stable than Pre-LN and Post-LN, reaches a lower loss, and keeps activations bounded | more stable: yes (trains in every setting, loss spread {glue:}`n22_sweep_peri_spread` vs Pre-LN's {glue:}`n22_sweep_pre_spread` nats); lower loss: no ({glue:}`n22_val_peri_deep` vs Pre-LN's {glue:}`n22_val_pre_deep` at {glue:}`n22_deep` layers); bounded: the largest stream (RMS {glue:}`n22_rms_peri_max`), but no outliers (max / median {glue:}`n22_ma_peri`) | same recipe as Pre-LN, no tuning for Peri-LN |
# | {cite}`li2025mixln` | Pre-LN's deep layers get small gradients and are nearly the identity; Mix-LN (Post-LN in the first 25% of layers) fixes both and lowers the loss | symptom confirmed: Pre-LN's last/first block gradient {glue:}`n22_grad_pre_last_first`, deep-half cosine {glue:}`n22_cos_pre_deep`; fix not reproduced: Mix-LN's last block gets {glue:}`n22_grad_mix_last` (Pre-LN {glue:}`n22_grad_pre_last`), loss {glue:}`n22_val_mix_deep` (Pre-LN {glue:}`n22_val_pre_deep`) | {glue:}`n22_deep` layers, $\alpha = 0.25$ |
# | {cite}`sun2024massive` | in LLMs a few activations are about $10^4$ times the median, in fixed dimensions, on the first and delimiter tokens | none at this scale: largest max / median {glue:}`n22_ma_base` (chapter-1 baseline) against {glue:}`n22_gauss_ratio` for Gaussian noise; but concentrated in one dimension, on the {glue:}`n22_ma_base_char` character | models of at most {glue:}`n22_max_params_m` M parameters |

# %% [markdown]
# ## Exercises
#
# 1. **Mix-LN's $\alpha$.** Train the deep Mix-LN model with $\alpha = 0.5$ (half the blocks
#    Post-LN) and compare its loss and its gradient profile with $\alpha = 0.25$ and with
#    Pre-LN. Which way does the profile move?
# 2. **Peri-LN's stream at initialization.** Show that if each sub-layer added a vector of
#    RMS 1 independent of the stream, the RMS after block $k$ would be
#    $\sqrt{\mathrm{RMS}_0^2 + 2k}$. Plot this against `init["peri"]["rms"]` and measure the
#    correlation between a branch's normalized output and the stream it is added to.
# 3. **The LayerNorm bound.** Prove that a vector $z \in \mathbb{R}^d$ with mean 0 and
#    $\frac{1}{d}\sum_i z_i^2 = 1$ has $|z_i| \le \sqrt{d-1}$, and find the vector that
#    attains it. What does the bound allow for a Post-LN LLM with $d = 4096$, and why does it
#    not bound the *ratio* to the median?
# 4. **Rescue Post-LN.** Find a setting in which the {glue:}`n22_deep`-layer Post-LN model
#    leaves the unigram plateau within {glue:}`n22_steps` steps: a smaller learning rate, a
#    longer warm-up, or a smaller initialization of the output projections. Which of the
#    three fixes the vanishing gradient of section 5, and which only delays it?
#
# :::{dropdown} Solution 1
# ```python
# MIX_ALPHA = 0.5   # read by n_post() and stored in the cache key by train_gpt
# model, rec = train_gpt("mix", deep, lr=GRID_LR, warmup=GRID_WARMUP, tag="alpha")
# print(final_val(rec), grad_profile(rec))
# MIX_ALPHA = 0.25
# ```
# More Post-LN blocks move the model towards Post-LN: expect the lower blocks to inherit
# the geometric gradient decay of section 5, now over more blocks, and check whether the
# loss follows. Li et al. chose $\alpha = 0.25$ after a sweep on LLaMA
# models: the Post-LN part must stay shallow enough to train.
# :::
#
# :::{dropdown} Solution 2
# With $x_{k+1} = x_k + u_k$, $\mathbb{E}\|x_{k+1}\|^2 = \mathbb{E}\|x_k\|^2 + 2\,\mathbb{E}\langle x_k,
# u_k\rangle + \mathbb{E}\|u_k\|^2$; independence kills the middle term and $\|u_k\|^2 = d$
# for a LayerNorm output with $\gamma = 1$, $\beta = 0$, so each sub-layer adds 1 to the
# mean square and a block adds 2.
# ```python
# k = np.arange(INIT_DEPTH + 1)
# plt.plot(init["peri"]["rms"], label="measured")
# plt.plot(np.sqrt(init["peri"]["rms"][0] ** 2 + 2 * k), label="independent additions")
# ```
# The measured curve lies below: the cosine between $u_k$ and $x_k$ is negative on
# average (hook the `norm1_out`, `norm2_out` outputs and the block inputs to measure it).
# :::
#
# :::{dropdown} Solution 3
# Fix $z_1 = a$. The other $d - 1$ entries sum to $-a$, so by Cauchy-Schwarz their squares
# sum to at least $a^2/(d-1)$. Then $d = \sum_i z_i^2 \ge a^2 + a^2/(d-1) = a^2 d/(d-1)$,
# so $a^2 \le d - 1$, with equality for $z = (a, -a/(d-1), \dots, -a/(d-1))$. For
# $d = 4096$ a Post-LN stream can hold an entry of about $64\,|\gamma|$, while the other
# entries are then about $1/64$: the largest-to-median ratio is then about 4096, so the norm
# bounds the magnitude but not the ratio. Massive activations in a normalized stream are
# possible, but they must take the energy from all the other dimensions.
# :::
#
# :::{dropdown} Solution 4
# ```python
# for lr, warmup in [(3e-4, GRID_WARMUP), (GRID_LR, STEPS // 2)]:
#     _, rec = train_gpt("post", deep, lr=lr, warmup=warmup, tag="rescue")
#     print(lr, warmup, final_val(rec), outcome(rec))
# ```
# A smaller learning rate keeps the branches small, so every $\sigma(x_l + F_l)$ stays
# close to 1 and the product of the norms' Jacobians decays slowly: it addresses the cause.
# A longer warm-up only postpones the growth of the branches. Scaling the branches down
# further at initialization (the idea behind Admin {cite}`liu2020admin`) keeps $\sigma$
# near 1 for longer, but the branches still grow with training. Run the cell: which
# setting leaves the plateau at this depth, and how does its gradient profile compare with
# section 5's?
# :::
#
# ## Key takeaways
#
# - Placement is one line of code: Post-LN normalizes the stream ($\mathrm{LN}(x + F(x))$),
#   Pre-LN the branch input ($x + F(\mathrm{LN}(x))$), Peri-LN the branch input and output,
#   Mix-LN uses Post-LN in the first quarter of the blocks. Ours matches `ml.models.Block`.
# - Post-LN's gradient crosses every norm above a layer. In our deepest Post-LN model it
#   shrank by a constant factor per block towards the input, the lower blocks stopped
#   learning and the model stayed on the unigram plateau, while the shallower ones trained.
#   That failure is not a NaN: detect failure by comparing with a trivial model's
#   loss, not only with `isfinite`.
# - Pre-LN keeps an identity path for the gradient and trains at every learning rate we
#   tried, with or without warm-up, but its stream grows, and its deep blocks get the
#   smallest gradients and barely change the stream.
# - Peri-LN was the most learning-rate-robust placement here, with the most active deep
#   blocks, but it did not beat Pre-LN's loss at this scale; Mix-LN did not fix Pre-LN's
#   deep-layer gradients here.
# - Massive activations are a property of large, long-trained models. Measure them with
#   forward hooks as the largest magnitude over the median, against the same ratio for
#   Gaussian noise; a LayerNorm output bounds the magnitude ($\sqrt{d-1}\,|\gamma|$), not
#   the ratio.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
