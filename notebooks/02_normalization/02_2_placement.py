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

# %% tags=["hide-input"]
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
ml.plot.style()
dev = ml.device()

# %% [markdown]
# ## 2.2.1 Four placements, in equations
#
# Write $x_l \in \mathbb{R}^d$ for one token's residual stream entering sub-layer $l$ (a
# block has two sub-layers, attention then MLP), $F_l$ for the branch (attention or MLP),
# and $\mathrm{LN}$ for LayerNorm with gain $\gamma$ and bias $\beta$ (notebook 2.1). The
# placements differ only in where $\mathrm{LN}$ sits:
#
# $$
# \begin{aligned}
# \text{Post-LN:}\quad & x_{l+1} = \mathrm{LN}\big(x_l + F_l(x_l)\big) \\
# \text{Pre-LN:}\quad  & x_{l+1} = x_l + F_l\big(\mathrm{LN}(x_l)\big) \\
# \text{Peri-LN:}\quad & x_{l+1} = x_l + \mathrm{LN}_\text{out}\Big(F_l\big(\mathrm{LN}_\text{in}(x_l)\big)\Big) \\
# \text{Mix-LN:}\quad  & \text{Post-LN for the first } \lfloor \alpha L \rfloor \text{ blocks, then Pre-LN}
# \end{aligned}
# $$
#
# with $\alpha = 0.25$ for Mix-LN, and one final $\mathrm{LN}$ before the head for Pre-LN
# and Peri-LN.
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
# ## 2.2.2 The placements in code, checked against the library
#
# `ml.models.Block` takes `placement="pre" | "post" | "peri"`. Here are the three
# placements from scratch, with LayerNorm written out (mean, variance, gain, bias), run
# on the block's own attention and MLP and compared with the library block. We first
# randomize the norms' gains and biases, so that a norm applied in the wrong place cannot
# go unnoticed. "Matches" means a largest absolute difference below $10^{-5}$ in float32
# (the `assert` in the cell).

# %%
def layer_norm(x, norm):
    """LayerNorm over the last dim with the gain and bias of `norm` (an nn.LayerNorm)."""
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def block_forward(block, x, placement):
    """One transformer block, written from the equations of section 2.2.1."""
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
    assert err < 1e-5, (placement, err)
    rows.append({"placement": placement, "matches ml.models.Block": err < 1e-5,
                 "norms per block": sum(isinstance(m, nn.LayerNorm) for m in block.modules()),
                 "params": ml.bench.count_params(block)})
ml.bench.Table(rows, title="From-scratch placements vs ml.models.Block (d=64, 4 heads, float32 on the CPU)")

# %% [markdown]
# Peri-LN has two more norms per block (256 more parameters here, a rounding error). The
# library block's forward pass, for reference:

# %%
ml.show(ml.models.Block.forward)

# %% [markdown]
# Mix-LN needs no new code: Pre-LN and Post-LN blocks have the same parameters, so we
# build a Pre-LN CharGPT and switch the first $\lfloor \alpha L \rfloor$ blocks to Post-LN
# (at least one, so that a 2-layer model is not plain Pre-LN). The models of this notebook
# are CharGPTs {cite}`karpathy2022nanogpt` on Tiny Shakespeare {cite}`karpathy2015charrnn`,
# narrower than chapter 1's baseline so that a grid of placements and depths fits the
# time budget; the widths, depths and steps of each scale are set here. On a GPU a model
# this small is limited by kernel launches rather than arithmetic, so the gpu scale trains
# wider models on more tokens per step, but not for more steps: the grid and the sweep are
# sized to take seconds there.

# %%
corpus = ml.data.shakespeare()
V = corpus.vocab_size
WIDTH = ml.pick(smoke=32, cpu=64, gpu=256)
HEADS = ml.pick(smoke=2, cpu=4, gpu=4)
T = ml.pick(smoke=16, cpu=32, gpu=128)          # context (characters)
BATCH = ml.pick(smoke=8, cpu=16, gpu=64)
DEPTHS = ml.trim(ml.pick(smoke=(1, 2, 4), cpu=(2, 6, 12), gpu=(2, 6, 12)))
STEPS = ml.pick(smoke=16, cpu=250, gpu=100)
EVAL_BATCHES = ml.pick(smoke=2, cpu=12, gpu=4)
MIX_ALPHA = 0.25
PLACEMENT_NAMES = ("post", "pre", "peri", "mix")
# Training precision: bf16 autocast on a GPU (fp16 with a gradient scaler where bf16 is not
# supported), fp32 on a CPU. Evaluation is always fp32.
AMP = ml.env.amp_dtype(dev) if dev.type == "cuda" else None


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


print("Mix-LN blocks at the largest depth:", [b.placement for b in build_gpt("mix", max(DEPTHS)).blocks])
print(f"training precision: {'fp32' if AMP is None else str(AMP).replace('torch.', '') + ' autocast'} "
      f"on {dev.type}; evaluation: fp32")

# %% [markdown]
# ## 2.2.3 At initialization: stream scale and gradients per layer
#
# One helper does all the measuring of this notebook. Forward hooks record the residual
# stream entering the first block and leaving every block; on those tensors,
# `retain_grad()` keeps the gradient of the loss with respect to the stream; after the
# backward pass we read the gradient norm of every block's parameters. It runs once per
# model (fp32), so it may read its numbers back one by one.

# %%
def block_grad_norms(model):
    """The L2 norm of the gradient of each block's parameters: a (n_layer,) tensor on the device."""
    return torch.stack([torch.stack([p.grad.norm() for p in b.parameters() if p.grad is not None]).norm()
                        for b in model.blocks])


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
        "param_grad": block_grad_norms(model).tolist(),
    }
    model.zero_grad(set_to_none=True)
    return out


# %% [markdown]
# At initialization we can afford a deeper model than we can train, so we probe CharGPTs
# with `INIT_DEPTH` blocks ({glue:}`n22_init_depth` at this scale), one of each placement,
# on one batch, averaged over a few random initializations.

# %%
INIT_DEPTH = ml.pick(smoke=4, cpu=24, gpu=24)
probe_batches = ml.data.TokenBatches(corpus.train_ids, T, BATCH, steps=2, device=dev,
                                     generator=torch.Generator().manual_seed(0))
probe_x, probe_y = probe_batches.sample()
init = {}
for placement in PLACEMENT_NAMES:
    runs = []
    for seed in range(ml.trim(ml.pick(smoke=1, cpu=3, gpu=3), keep=1)):
        torch.manual_seed(seed)
        runs.append(probe(build_gpt(placement, INIT_DEPTH), probe_x, probe_y))
    init[placement] = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for placement, r in init.items():
    axes[0].plot(r["rms"], label=placement)
    axes[1].plot(r["grad_rms"], label=placement)
axes[0].set(title="Stream RMS at init", xlabel="after block (0 = embedding)", ylabel="RMS (log)", yscale="log")
axes[1].set(title="RMS of d loss / d stream at init", xlabel="after block (0 = embedding)",
            ylabel="RMS (log)", yscale="log")
axes[0].legend()
plt.show()

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.6))
for placement, r in init.items():
    ax.plot(np.arange(INIT_DEPTH), r["param_grad"], label=placement)
ax.set(title="Gradient norm of each block's parameters at init", xlabel="block",
       ylabel="L2 norm of the gradient (log)", yscale="log")
ax.legend()
plt.show()


def ratio(values, first=0, last=-1):
    return values[last] / values[first]


rows = [{"placement": p,
         "stream RMS: embedding": r["rms"][0], "stream RMS: last block": r["rms"][-1],
         "grad norm: block 0": r["param_grad"][0], "grad norm: last block": r["param_grad"][-1],
         "grad norm, block 0 / last": ratio(r["param_grad"], -1, 0)}
        for p, r in init.items()]
ml.bench.Table(rows, title=f"CharGPT at initialization, {INIT_DEPTH} blocks, width {WIDTH} (fp32)")

# %% tags=["remove-cell"]
peri_pred = math.sqrt(init["peri"]["rms"][0] ** 2 + 2 * INIT_DEPTH)
post_last_vs_pre = init["post"]["param_grad"][-1] / init["pre"]["param_grad"][-1]
ml.glue("n22_init_depth", INIT_DEPTH, "d")
ml.glue("n22_init_peri_rms_last", init["peri"]["rms"][-1], ".2f")
ml.glue("n22_init_peri_rms_pred", peri_pred, ".2f")
ml.glue("n22_init_peri_vs_pred", ml.bench.verdict(init["peri"]["rms"][-1], init["peri"]["rms"][-1],
                                                  init["peri"]["rms"][-1], reference=peri_pred,
                                                  above="above", below="below", same="equal to"))
ml.glue("n22_init_pre_rms_growth", ratio(init["pre"]["rms"]), ".2f")
ml.glue("n22_init_post_grad_ratio", ratio(init["post"]["param_grad"], -1, 0), ".2g")
ml.glue("n22_init_pre_grad_ratio", ratio(init["pre"]["param_grad"], -1, 0), ".2f")
ml.glue("n22_init_post_last_vs_pre", post_last_vs_pre, ".2g")
ml.glue("n22_init_xiong_holds", "holds" if post_last_vs_pre > 1 else "does not hold")
ml.glue("n22_init_embed_rms", init["pre"]["rms"][0], ".3f")
ml.glue("n22_init_embed_gain", 1 / init["pre"]["rms"][0], ".0f")

# %% [markdown]
# At initialization the placements already differ in kind. Pre-LN's stream grows from the
# embedding's RMS of {glue:}`n22_init_embed_rms` by a factor of {glue:}`n22_init_pre_rms_growth`
# over {glue:}`n22_init_depth` blocks: GPT-2's initialization makes every residual branch
# tiny (the output projections have standard deviation $0.02/\sqrt{2L}$). Post-LN's (and
# Mix-LN's) first norm lifts the stream to RMS 1 and every later norm keeps it there.
# Peri-LN adds a vector of RMS exactly 1 at every sub-layer, so its stream grows steadily:
# {glue:}`n22_init_peri_rms_last` after the last block, {glue:}`n22_init_peri_vs_pred` the
# $\sqrt{\mathrm{RMS}_0^2 + 2L}$ = {glue:}`n22_init_peri_rms_pred` that independent additions
# would give (exercise 2 measures how a branch's normalized output correlates with the
# stream it is added to).
#
# The gradients: in Pre-LN, block 0 gets {glue:}`n22_init_pre_grad_ratio` times the gradient
# of the last block: the identity path at work. In Post-LN, block 0 gets
# {glue:}`n22_init_post_grad_ratio` times the gradient of the last block, for a reason
# specific to this initialization: the embedding enters with RMS {glue:}`n22_init_embed_rms`
# and the first norm divides by it, which multiplies the gradient through it by about
# {glue:}`n22_init_embed_gain`. Above it, the branches are still tiny, so
# $\sigma(x_l + F_l) \approx 1$ and nothing has vanished yet (compare the shapes of the
# stream-gradient curves). Xiong et al. predict that Post-LN's *last* layer gets the larger
# gradient at initialization; here its last block's gradient is
# {glue:}`n22_init_post_last_vs_pre` times Pre-LN's, so the prediction
# {glue:}`n22_init_xiong_holds` at this scale. Their analysis assumes branches initialized
# at the scale of the stream; with GPT-2's small branches a Post-LN block starts close to
# the identity, and Pre-LN's gradients are all scaled up by its final norm, which divides by
# its tiny stream. (A gradient with respect to a normalized quantity scales as one over
# that quantity's RMS, so compare the *shapes* of the curves across placements, not their
# heights.) Training changes this picture, as section 2.2.5 shows.

# %% [markdown]
# ## 2.2.4 Training each placement at growing depth
#
# Now we train. The recipe is chapter 1's (AdamW with betas 0.9/0.99, weight decay 0.1 on
# matrices, linear warm-up then cosine decay to a tenth, gradient clipping at 1), and the
# loop is written out here rather than calling `ml.train.fit`, because we want two things
# `fit` does not do: log the gradient norm of every block (before clipping) during
# training, and *survive* a diverging run. The loop reads nothing back from the device
# between two logged rows: the loss is summed on the device, the block gradient norms stay
# there until the row is written, and a loss that turned NaN or infinite is caught at the
# next logged row, which stops the run and marks it; the notebook goes on. The trained
# models and their logs are cached by `ml.train.train_or_load`, keyed by the configuration,
# so re-running this notebook retrains nothing.

# %%
val_windows = list(ml.data.TokenBatches(corpus.val_ids, T, BATCH, steps=EVAL_BATCHES, device=dev,
                                        generator=torch.Generator().manual_seed(1234)))


def train_loop(model, cfg):
    """Train `model` with cfg's recipe; log losses and per-block gradient norms; stop on NaN."""
    steps = ml.trim(cfg["steps"])                                  # a dry run: 2 steps
    opt = ml.train.adamw(model, cfg["lr"], weight_decay=0.1, betas=(0.9, 0.99))
    schedule = ml.train.warmup_cosine(cfg["steps"], cfg["warmup_steps"], final=0.1)
    scaler = torch.amp.GradScaler("cuda") if AMP == torch.float16 else None
    batches = ml.data.TokenBatches(corpus.train_ids, T, BATCH, steps=steps, device=dev)
    history, pending = ml.train.History(), []                      # pending: (step, grads on the device)
    loss_sum, n, train_s, start = torch.zeros((), device=dev), 0, 0.0, time.perf_counter()
    for step, (x, y) in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = cfg["lr"] * schedule(step)
        with torch.autocast(dev.type, dtype=AMP or torch.float32, enabled=AMP is not None):
            loss = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is not None:
            scaler.unscale_(opt)                                   # true gradients for the norms
        if step % cfg["grad_every"] == 0 or step == steps - 1:
            pending.append((step, block_grad_norms(model)))        # before clipping; no sync
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
        loss_sum += loss.detach()
        n += 1
        if (step + 1) % cfg["eval_every"] == 0 or step + 1 == steps:
            train_loss = loss_sum.item() / n                       # the one read-back of this row
            train_s += time.perf_counter() - start                 # the clock stops for evaluation
            for s, g in pending:
                history.log(step=s, block_grad=g.tolist())
            pending, loss_sum, n = [], torch.zeros((), device=dev), 0
            if not math.isfinite(train_loss):                      # diverged: record when, and stop
                history.log(step=step, diverged=True, time=train_s)
                break
            history.log(step=step, lr=cfg["lr"] * schedule(step), time=train_s,
                        train_loss=train_loss, val_loss=ml.train.evaluate(model, val_windows)["loss"])
            start = time.perf_counter()
    return history


def train_gpt(placement, n_layer, *, lr, warmup, steps=STEPS, seed=0, tag="grid"):
    """The trained CharGPT and its record (cached); record["history"] has the logs."""
    cfg = dict(placement=placement, n_layer=n_layer, n_embd=WIDTH, n_head=HEADS, block_size=T,
               batch_size=BATCH, steps=steps, lr=lr, warmup_steps=warmup,
               eval_every=max(1, steps // 6), eval_batches=EVAL_BATCHES,
               grad_every=max(1, steps // 6), seed=seed, mix_alpha=MIX_ALPHA,
               amp=str(AMP), loop="v2")
    with contextlib.redirect_stdout(io.StringIO()):  # quiet "trained / loaded" lines
        return ml.train.train_or_load(f"n22-{tag}-{placement}-L{n_layer}", cfg,
                                      lambda: build_gpt(placement, n_layer),
                                      lambda model: train_loop(model, cfg), device=dev)


# %% [markdown]
# Two reference losses make a run's loss meaningful. A model that predicts the uniform
# distribution over the 65 characters scores $\ln 65$; one that ignores its input and
# predicts the *frequencies* of the characters (a unigram model) scores their entropy.
# A run whose validation loss stays within 0.1 nats of the unigram level has learned
# nothing about context: we call it **stuck**, and a run whose loss became NaN **diverged**.

# %%
counts = torch.bincount(corpus.train_ids, minlength=V).double()
p_train = counts / counts.sum()
val_counts = torch.bincount(corpus.val_ids, minlength=V).double()
UNIGRAM = -(val_counts * p_train.clamp_min(1e-12).log()).sum().item() / val_counts.sum().item()


def outcome(record):
    """'diverged (by step s)', 'stuck', or 'trains', from a run's record."""
    rows = record["history"]["rows"]
    bad = [r["step"] for r in rows if r.get("diverged")]
    if bad:
        return f"diverged (by step {bad[0] + 1})"
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    if not val or not math.isfinite(val[-1]):
        return "diverged"
    return "stuck" if val[-1] > UNIGRAM - 0.1 else "trains"


def final_val(record):
    rows = record["history"]["rows"]
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return val[-1] if val else float("nan")


print(f"uniform: ln {V} = {math.log(V):.3f} nats; unigram: {UNIGRAM:.3f} nats")

# %% tags=["remove-cell"]
ml.glue("n22_unigram", UNIGRAM, ".2f")
ml.glue("n22_uniform", math.log(V), ".2f")

# %% [markdown]
# The grid: every placement at every depth, same recipe, same data order, same seed. Peak
# learning rate `GRID_LR` with a warm-up over the first tenth of the steps. To know which
# differences between two runs mean something, the Pre-LN model at the middle depth is also
# trained with two more seeds (another initialization and data order): the spread of its
# final loss is the yardstick for every comparison of final losses below.

# %%
GRID_LR = 1e-3
GRID_WARMUP = max(1, STEPS // 10)
grid, t0 = {}, time.perf_counter()
for n_layer in DEPTHS:
    for placement in PLACEMENT_NAMES:
        grid[placement, n_layer] = train_gpt(placement, n_layer, lr=GRID_LR, warmup=GRID_WARMUP)
seed_runs = [grid["pre", DEPTHS[1]][1]] + [train_gpt("pre", DEPTHS[1], lr=GRID_LR, warmup=GRID_WARMUP, seed=s)[1]
                                           for s in ml.pick(smoke=(1,), cpu=(1, 2), gpu=(1, 2))]
grid_seconds = time.perf_counter() - t0
grid_train_seconds = sum(rec["train_seconds"] for _, rec in grid.values())
_, SEED_STD, n_seeds = ml.bench.mean_spread(final_val(r) for r in seed_runs)
LOSS_SE = SEED_STD * math.sqrt(2)                                 # of a difference of two runs


def loss_verdict(a, b):
    """Words for loss a against loss b (single runs), judged against the seed spread."""
    return ml.bench.quality_verdict(b - a, LOSS_SE, better="lower than", worse="higher than",
                                    same="not measurably different from")


print(f"{len(grid)} runs of {STEPS} steps: {grid_train_seconds:.0f} s of training when they were trained "
      f"({grid_seconds:.0f} s in this execution, which loads cached runs)")
print(f"Pre-LN, {DEPTHS[1]} layers, {n_seeds} seeds: final val loss spread (std) {SEED_STD:.3f} nats")

# %%
ncols = 2
nrows = math.ceil(len(DEPTHS) / ncols)
fig, axes = plt.subplots(nrows, ncols, figsize=(10, 3.6 * nrows), sharey=True, squeeze=False)
for ax, n_layer in zip(axes.flat, DEPTHS):
    for i, placement in enumerate(PLACEMENT_NAMES):
        rows = [r for r in grid[placement, n_layer][1]["history"]["rows"] if r.get("val_loss") is not None]
        ax.plot([r["step"] + 1 for r in rows], [r["val_loss"] for r in rows], marker="o", ms=3,
                color=ml.plot.PALETTE[i], label=placement)
        ax.plot([r["step"] + 1 for r in rows], [r["train_loss"] for r in rows], ls="--",
                color=ml.plot.PALETTE[i], alpha=0.6)
    ax.axhline(UNIGRAM, color="0.6", lw=1, ls=":")
    ax.set(title=f"{n_layer} layers", xlabel="step", ylabel="loss (nats/char)")
for ax in list(axes.flat)[len(DEPTHS):]:
    ax.axis("off")
axes[0, 0].legend(title="solid: val, dashed: train", fontsize=9)
plt.show()

# %%
table = []
for placement in PLACEMENT_NAMES:
    row = {"placement": placement}
    for n_layer in DEPTHS:
        rec = grid[placement, n_layer][1]
        row[f"{n_layer} layers: val loss (nats)"] = final_val(rec)
        row[f"{n_layer} layers"] = outcome(rec)
    table.append(row)
ml.bench.Table(table, title=f"Validation loss after {STEPS} steps (lr {GRID_LR:g}, warm-up {GRID_WARMUP} steps, "
                            f"width {WIDTH}; fp32 evaluation); unigram level {UNIGRAM:.2f}; seed spread "
                            f"{SEED_STD:.3f}",
               formats={f"{n} layers: val loss (nats)": ".3f" for n in DEPTHS})

# %% tags=["remove-cell"]
deep, mid, shallow = max(DEPTHS), DEPTHS[1], min(DEPTHS)
val_deep = {p: final_val(grid[p, deep][1]) for p in PLACEMENT_NAMES}
ml.glue("n22_deep", deep, "d")
ml.glue("n22_mid", mid, "d")
ml.glue("n22_shallow", shallow, "d")
ml.glue("n22_steps", STEPS, "d")
ml.glue("n22_width", WIDTH, "d")
ml.glue("n22_seed_std", SEED_STD, ".3f")
ml.glue("n22_n_seeds", n_seeds, "d")
for p in PLACEMENT_NAMES:
    for depth, tag in [(shallow, "shallow"), (mid, "mid"), (deep, "deep")]:
        ml.glue(f"n22_val_{p}_{tag}", final_val(grid[p, depth][1]), ".3f")
        ml.glue(f"n22_out_{p}_{tag}", {"stuck": "is stuck"}.get(o := outcome(grid[p, depth][1]), o))
for depth, tag in [(shallow, "shallow"), (deep, "deep")]:
    vals = {p: final_val(grid[p, depth][1]) for p in PLACEMENT_NAMES}
    best = min(vals, key=vals.get)
    second = sorted(vals, key=vals.get)[1]
    ml.glue(f"n22_best_{tag}", best)
    ml.glue(f"n22_best_{tag}_vs_second", f"{loss_verdict(vals[best], vals[second])} {second}'s")
for p in ("peri", "mix"):
    ml.glue(f"n22_{p}_vs_pre_deep", loss_verdict(val_deep[p], val_deep["pre"]))
ml.glue("n22_grid_lr", GRID_LR, "g")
ml.glue("n22_grid_warmup", GRID_WARMUP, "d")

# %% [markdown]
# With warm-up and a peak learning rate of {glue:}`n22_grid_lr`, the lowest validation loss
# at {glue:}`n22_shallow` layers is {glue:}`n22_best_shallow`'s ({glue:}`n22_best_shallow_vs_second`,
# judged against the seed spread of {glue:}`n22_seed_std` nats), and at {glue:}`n22_deep`
# layers {glue:}`n22_best_deep`'s ({glue:}`n22_best_deep_vs_second`). Post-LN
# {glue:}`n22_out_post_shallow` at {glue:}`n22_shallow` layers, {glue:}`n22_out_post_mid` at
# {glue:}`n22_mid` ({glue:}`n22_val_post_mid`) and {glue:}`n22_out_post_deep` at
# {glue:}`n22_deep` ({glue:}`n22_val_post_deep`; the unigram level is {glue:}`n22_unigram`:
# a stuck model learned the character frequencies and nothing else). At {glue:}`n22_deep`
# layers Peri-LN ({glue:}`n22_val_peri_deep`, {glue:}`n22_out_peri_deep`) is
# {glue:}`n22_peri_vs_pre_deep` Pre-LN ({glue:}`n22_val_pre_deep`), and Mix-LN
# ({glue:}`n22_val_mix_deep`, {glue:}`n22_out_mix_deep`) is {glue:}`n22_mix_vs_pre_deep` it.
# The papers' rankings come from far larger models trained far longer, so read this table
# as what happens *early* in training at small scale, where stability differences show
# first.

# %% [markdown]
# ## 2.2.5 Gradient norms per layer during training
#
# The training loop logged every block's gradient norm (before clipping) at a few steps.
# For the deepest model, one panel per placement: each line is one moment of training,
# the x-axis the block.

# %%
fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
for ax, placement in zip(axes.flat, PLACEMENT_NAMES):
    rows = [r for r in grid[placement, deep][1]["history"]["rows"] if r.get("block_grad") is not None]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(rows)))
    for r, c in zip(rows, colors):
        ax.plot(r["block_grad"], color=c, marker=".", label=f"step {r['step']}")
    if placement == "mix":
        ax.axvspan(-0.5, n_post(deep) - 0.5, color="0.9", label="Post-LN blocks")
    ax.set(title=placement, xlabel="block", yscale="log", ylabel="|grad| of the block's parameters")
handles, labels = axes[1, 1].get_legend_handles_labels()
fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9)
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
        row[f"last / block 0, {n_layer} layers"] = g[-1] / g[0]
    rows.append(row)
ml.bench.Table(rows, title="Gradient norm of the last block over block 0 during training "
                           "(median over the logged steps after step 0)")

# %%
rows = []
for placement in PLACEMENT_NAMES:
    g = grad_profile(grid[placement, deep][1])
    rows.append({"placement": placement, "block 0": g[0], "weakest block": int(np.argmin(g)),
                 "its norm": g.min(), "last block": g[-1]})
grad_table = ml.bench.Table(rows, title=f"{deep} layers: gradient norms of the blocks' parameters during training")
grad_table

# %% tags=["remove-cell"]
gr = {r["placement"]: r for r in grad_table}
last_first = {p: grad_profile(grid[p, deep][1]) for p in PLACEMENT_NAMES}
for p in PLACEMENT_NAMES:
    g = last_first[p]
    ml.glue(f"n22_grad_{p}_last_first", g[-1] / g[0], ".3g")
    ml.glue(f"n22_grad_{p}_block0", g[0], ".2g")
    ml.glue(f"n22_grad_{p}_last", g[-1], ".2g")
    ml.glue(f"n22_grad_{p}_slope", "smaller" if g[-1] < g[0] else "larger")
g_post, g_mid = last_first["post"], grad_profile(grid["post", mid][1])
post_decay = (g_post[-1] / g_post[1]) ** (1 / max(1, deep - 2))
ml.glue("n22_post_mid_weak_ratio", g_mid.min() / g_mid[-1], ".2f")
ml.glue("n22_post_deep_weak_ratio", g_post.min() / g_post[-1], ".1e")
ml.glue("n22_post_decay", post_decay, ".2f")
ml.glue("n22_post_decay_dir", "shrinks" if post_decay > 1 else "grows")   # going down, towards the input
ml.glue("n22_post_weakest", gr["post"]["its norm"], ".2g")
ml.glue("n22_mix_raises", "raised" if last_first["mix"][-1] > last_first["pre"][-1] else "did not raise")

# %% [markdown]
# In the {glue:}`n22_deep`-layer Post-LN model the gradient norm changes by a factor of
# about {glue:}`n22_post_decay` per block from block 1 to the last block (geometric change
# is a straight line on the log scale): going down towards the input it
# {glue:}`n22_post_decay_dir`, to {glue:}`n22_post_weakest` in the weakest block, where the
# weakest block of the {glue:}`n22_mid`-layer Post-LN model gets {glue:}`n22_post_mid_weak_ratio`
# of its last block's gradient (against {glue:}`n22_post_deep_weak_ratio` at
# {glue:}`n22_deep` layers). This model {glue:}`n22_out_post_deep` (section 2.2.4). Where the
# lower blocks, the ones that must learn to use the context, receive almost nothing, the
# model cannot leave the unigram plateau: the mechanism of section 2.2.1 (every norm divides
# by $\sigma(x_l + F_l) > 1$ once the branches grow, and the factors multiply with depth),
# and the instability Liu et al. describe {cite}`liu2020admin`. One run cannot say which
# comes first, the decay or the plateau, since a model that ignores the context also gives
# its lower blocks little to learn; exercise 4 tests the cause.
#
# Pre-LN's deep blocks get {glue:}`n22_grad_pre_slope` gradients than block 0 (last block
# over block 0: {glue:}`n22_grad_pre_last_first`): the slope Mix-LN is about
# {cite}`li2025mixln`. Peri-LN's ratio is {glue:}`n22_grad_peri_last_first`. Mix-LN, whose
# first blocks are Post-LN, {glue:}`n22_mix_raises` the deep blocks' gradients here: its last
# block gets {glue:}`n22_grad_mix_last` against Pre-LN's {glue:}`n22_grad_pre_last`.

# %% [markdown]
# ## 2.2.6 The residual stream after training
#
# The same probe on the trained deep models: the RMS of the stream after each block, and
# the cosine similarity between a token's stream before and after each block. A
# similarity near 1 means the block barely changes the stream: Mix-LN's measure of an
# "ineffective" layer {cite}`li2025mixln`.

# %%
val_x, val_y = val_windows[0]
trained = {p: probe(grid[p, deep][0], val_x, val_y) for p in PLACEMENT_NAMES}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for placement, r in trained.items():
    axes[0].plot(r["rms"], marker=".", label=placement)
    axes[1].plot(r["cos"], marker=".", label=placement)
axes[0].set(title=f"Stream RMS after training ({deep} layers)", xlabel="after block (0 = embedding)",
            ylabel="RMS (log)", yscale="log")
axes[1].set(title="cos(stream before, after) per block", xlabel="block", ylabel="mean cosine", ylim=(None, 1.0))
axes[0].legend()
plt.show()

# %%
rows = [{"placement": p, "RMS: embedding": r["rms"][0], "RMS: last block": r["rms"][-1],
         "max RMS": max(r["rms"]), "cos, deep half (mean)": np.mean(r["cos"][len(r["cos"]) // 2:]),
         "cos, shallow half (mean)": np.mean(r["cos"][:len(r["cos"]) // 2])}
        for p, r in trained.items()]
stream_table = ml.bench.Table(rows, title=f"Residual stream after {STEPS} steps, {deep} layers (fp32)")
stream_table

# %% tags=["remove-cell"]
st = {r["placement"]: r for r in stream_table}
for p in PLACEMENT_NAMES:
    ml.glue(f"n22_rms_{p}_max", st[p]["max RMS"], ".3g")
    ml.glue(f"n22_cos_{p}_deep", st[p]["cos, deep half (mean)"], ".3f")
ml.glue("n22_rms_largest", max(st, key=lambda p: st[p]["max RMS"]))
ml.glue("n22_cos_lowest", min(st, key=lambda p: st[p]["cos, deep half (mean)"]))

# %% [markdown]
# After training, Post-LN's stream is still a LayerNorm output, so its RMS stays near the
# norms' gains (its largest RMS is {glue:}`n22_rms_post_max`), Pre-LN's reaches {glue:}`n22_rms_pre_max` and Peri-LN's
# {glue:}`n22_rms_peri_max`; the largest stream is {glue:}`n22_rms_largest`'s. Each of
# Peri-LN's sub-layers adds a normalized vector scaled by a learned gain, so Peri-LN bounds
# what *one* layer can add, not the total. The cosine similarities measure the "curse of
# depth": in the deep half, a block leaves the stream with a mean cosine of
# {glue:}`n22_cos_pre_deep` (Pre-LN), {glue:}`n22_cos_post_deep` (Post-LN),
# {glue:}`n22_cos_mix_deep` (Mix-LN) and {glue:}`n22_cos_peri_deep` (Peri-LN); the deep
# blocks that change the stream the most are {glue:}`n22_cos_lowest`'s. A normalized branch
# output does not shrink relative to the stream as the stream grows, which is the point of
# normalizing it.

# %% [markdown]
# ## 2.2.7 Where training breaks: learning rate and warm-up
#
# Xiong et al.'s central claim is that Pre-LN can drop the warm-up and take a larger
# learning rate, where Post-LN cannot {cite}`xiong2020layer`. We test it directly: at one
# depth, Post-LN, Pre-LN and Peri-LN each train for a shorter run at a low and a high peak
# learning rate (and, at the cpu scale, one between), with and without warm-up, and every
# run is classified as *trains*, *stuck* or *diverged*.

# %%
SWEEP_DEPTH = ml.pick(smoke=2, cpu=6, gpu=6)
SWEEP_STEPS = ml.pick(smoke=12, cpu=150, gpu=60)
SWEEP_LRS = ml.trim(ml.pick(smoke=(1e-3, 1e-2), cpu=(1e-3, 3e-3, 1e-2), gpu=(1e-3, 1e-2)))
SWEEP_WARMUPS = (0, max(1, SWEEP_STEPS // 10))
SWEEP_PLACEMENTS = ("post", "pre", "peri")
sweep, t0 = {}, time.perf_counter()
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
        row = {"placement": placement, "warm-up (steps)": warmup}
        for lr in SWEEP_LRS:
            rec = sweep[placement, lr, warmup]
            row[f"lr {lr:g}"] = f"{final_val(rec):.3f} ({outcome(rec)})"
        rows.append(row)
ml.bench.Table(rows, title=f"Validation loss (nats) after {SWEEP_STEPS} steps, {SWEEP_DEPTH} layers "
                           f"(unigram level {UNIGRAM:.2f})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
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
    ax.set_xscale("log")
    ax.set_xticks(SWEEP_LRS, [f"{lr:g}" for lr in SWEEP_LRS])
    ax.minorticks_off()
    ax.set(xlabel="peak learning rate", title=f"warm-up {warmup} steps" + (" (none)" if warmup == 0 else ""))
axes[0].set_ylabel(f"val loss after {SWEEP_STEPS} steps (nats)")
axes[0].legend(title="o trains, x stuck, X diverged", fontsize=9)
plt.show()

# %% tags=["remove-cell"]
def n_trains(placement, warmup):
    return sum(outcome(sweep[placement, lr, warmup]) == "trains" for lr in SWEEP_LRS)


for p in SWEEP_PLACEMENTS:
    ml.glue(f"n22_sweep_{p}_ok_nowarm", n_trains(p, 0), "d")
    ml.glue(f"n22_sweep_{p}_ok_warm", n_trains(p, SWEEP_WARMUPS[1]), "d")
    best = min(final_val(sweep[p, lr, w]) for lr in SWEEP_LRS for w in SWEEP_WARMUPS)
    ml.glue(f"n22_sweep_{p}_best", best, ".3f")
    losses = [final_val(r) for (q, _, _), r in sweep.items() if q == p]
    ml.glue(f"n22_sweep_{p}_spread", max(losses) - min(losses), ".2f")
ml.glue("n22_sweep_n_lrs", len(SWEEP_LRS), "d")
ml.glue("n22_sweep_depth", SWEEP_DEPTH, "d")
ml.glue("n22_sweep_steps", SWEEP_STEPS, "d")
ml.glue("n22_sweep_n_diverged", sum(outcome(r).startswith("diverged") for r in sweep.values()), "d")
ml.glue("n22_sweep_n_runs", len(sweep), "d")
lo, hi, wu = SWEEP_LRS[0], SWEEP_LRS[-1], SWEEP_WARMUPS[1]
ml.glue("n22_sweep_lr_lo", lo, "g")
ml.glue("n22_sweep_lr_hi", hi, "g")
ml.glue("n22_sweep_warmup", wu, "d")
for p in SWEEP_PLACEMENTS:
    for lr, tag in [(lo, "lo"), (hi, "hi")]:
        ml.glue(f"n22_sweep_{p}_{tag}_nowarm", final_val(sweep[p, lr, 0]), ".3f")
        ml.glue(f"n22_sweep_{p}_{tag}_warm", final_val(sweep[p, lr, wu]), ".3f")
        ml.glue(f"n22_sweep_{p}_{tag}_warm_verdict",
                loss_verdict(final_val(sweep[p, lr, wu]), final_val(sweep[p, lr, 0])))
spread = {p: max(final_val(r) for (q, _, _), r in sweep.items() if q == p)
          - min(final_val(r) for (q, _, _), r in sweep.items() if q == p) for p in SWEEP_PLACEMENTS}
ml.glue("n22_sweep_most_robust", min(spread, key=spread.get))
best = {p: min(final_val(sweep[p, lr, w]) for lr in SWEEP_LRS for w in SWEEP_WARMUPS) for p in SWEEP_PLACEMENTS}
ml.glue("n22_sweep_peri_vs_pre_best", loss_verdict(best["peri"], best["pre"]))

# %% [markdown]
# {glue:}`n22_sweep_n_diverged` of the {glue:}`n22_sweep_n_runs` runs produced a NaN: AdamW's
# step is bounded by the learning rate whatever the gradient, and the gradient is clipped at
# 1, so a small model rarely overflows: the failure to watch for is the plateau. Without warm-up,
# Pre-LN trains at {glue:}`n22_sweep_pre_ok_nowarm` of {glue:}`n22_sweep_n_lrs` learning rates
# (Xiong et al.'s claim is all of them), Post-LN at {glue:}`n22_sweep_post_ok_nowarm` and
# Peri-LN at {glue:}`n22_sweep_peri_ok_nowarm`; with a {glue:}`n22_sweep_warmup`-step warm-up,
# Pre-LN at {glue:}`n22_sweep_pre_ok_warm`, Post-LN at {glue:}`n22_sweep_post_ok_warm` and
# Peri-LN at {glue:}`n22_sweep_peri_ok_warm`. At the highest rate, {glue:}`n22_sweep_lr_hi`,
# Pre-LN reaches {glue:}`n22_sweep_pre_hi_nowarm` without and {glue:}`n22_sweep_pre_hi_warm`
# with warm-up (with warm-up: {glue:}`n22_sweep_pre_hi_warm_verdict` without, against the
# seed spread); Post-LN reaches {glue:}`n22_sweep_post_hi_nowarm` and
# {glue:}`n22_sweep_post_hi_warm`, and at {glue:}`n22_sweep_lr_lo`
# {glue:}`n22_sweep_post_lo_nowarm` and {glue:}`n22_sweep_post_lo_warm`. The placement whose
# final losses vary least across the sweep is {glue:}`n22_sweep_most_robust` (spans: Pre-LN
# {glue:}`n22_sweep_pre_spread`, Post-LN {glue:}`n22_sweep_post_spread`, Peri-LN
# {glue:}`n22_sweep_peri_spread` nats), which is the sense of Kim et al.'s stability claim;
# Peri-LN's best loss ({glue:}`n22_sweep_peri_best`) is {glue:}`n22_sweep_peri_vs_pre_best`
# Pre-LN's ({glue:}`n22_sweep_pre_best`).

# %% [markdown]
# ## 2.2.8 Massive activations
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
ml.bench.Table(massive["pre"], title=f"Pre-LN, {deep} layers, trained: residual stream per layer",
               columns=["layer", "median", "top-1 / median", "dim", "position", "char", "top-10 in one dim"])

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
    rows.append({"model": name, "worst layer": f"{worst['layer']} of {len(layers)}",
                 "top-1": worst["top-1"], "top-1 / median": worst["top-1 / median"], "dim": worst["dim"],
                 "char": worst["char"], "top-10 in one dim": worst["top-10 in one dim"]})
massive_table = ml.bench.Table(rows, title="Largest activation vs median, worst layer per model")
massive_table

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
for name, layers in massive.items():
    if "init" in name:
        continue
    ax.plot([r["layer"] for r in layers], [r["top-1 / median"] for r in layers], marker=".", label=name)
ax.set(xlabel="block", ylabel="max |x| / median |x|", title="Massive activations in the residual stream (trained models)")
ax.legend(fontsize=9)
plt.show()

# Reference: the same statistic for Gaussian noise of the same size (no outliers at all).
gauss = torch.randn(ma_x.numel() * WIDTH, generator=torch.Generator().manual_seed(0)).abs()
gauss_ratio = (gauss.max() / gauss.median()).item()
print(f"Gaussian noise, {gauss.numel():,} values: max / median = {gauss_ratio:.1f}")

# %% tags=["remove-cell"]
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
ml.glue("n22_max_params_m", max(ml.bench.count_params(base), ml.bench.count_params(grid["pre", deep][0])) / 1e6, ".2f")
CHAR_NAMES = {repr(" "): "space", repr("\n"): "newline"}
ml.glue("n22_ma_base_char", CHAR_NAMES.get(mt["chapter-1 baseline (pre)"]["char"], mt["chapter-1 baseline (pre)"]["char"]))
ml.glue("n22_ma_pre_last_top10", massive["pre"][-1]["top-10 in one dim"], "d")
ml.glue("n22_ma_pre_last_char", CHAR_NAMES.get(massive["pre"][-1]["char"], massive["pre"][-1]["char"]))
ml.glue("n22_gauss_ratio", gauss_ratio, ".1f")
ml.glue("n22_ma_largest_abs", max(PLACEMENT_NAMES, key=lambda p: mt[p]["top-1"]))
ml.glue("n22_ma_largest_ratio", max(PLACEMENT_NAMES, key=lambda p: mt[p]["top-1 / median"]))
ratio_ = mt["chapter-1 baseline (pre)"]["top-1 / median"] / gauss_ratio
ml.glue("n22_ma_base_vs_gauss", f"{ratio_:.1f}")
ml.glue("n22_ma_is_massive", "none" if max(r["top-1 / median"] for r in mt.values()) < 100 else "some")

# %% [markdown]
# How large is large? For Gaussian noise of the same size the largest magnitude is
# {glue:}`n22_gauss_ratio` times the median. The trained {glue:}`n22_deep`-layer models sit at
# Pre-LN {glue:}`n22_ma_pre`, Peri-LN {glue:}`n22_ma_peri`, Mix-LN {glue:}`n22_ma_mix` and
# Post-LN {glue:}`n22_ma_post` (its largest entry, {glue:}`n22_ma_post_top1`, respects the
# LayerNorm bound of $\sqrt{d-1}$ = {glue:}`n22_post_bound` times its largest gain, plus its
# largest bias); the largest ratio is {glue:}`n22_ma_largest_ratio`'s and the largest
# *absolute* value {glue:}`n22_ma_largest_abs`'s, whose whole stream is larger. The
# chapter-1 baseline, {glue:}`n22_base_width` wide and trained on
# {glue:}`n22_base_tokens_ratio` times as many characters, reaches {glue:}`n22_ma_base`
# ({glue:}`n22_ma_base_vs_gauss` times the Gaussian level), and it shows Sun et al.'s
# signature in miniature when its largest values share one hidden dimension: dimension
# {glue:}`n22_ma_base_dim` holds {glue:}`n22_ma_base_top10` of the top 10, with the largest on
# the {glue:}`n22_ma_base_char` character (in a character model the space is the word
# delimiter). In the small Pre-LN model, {glue:}`n22_ma_pre_last_top10` of the top 10 values
# of the last block fall in one dimension (the largest on the
# {glue:}`n22_ma_pre_last_char` character). Ratios of the order of Sun et al.'s massive
# activations (hundreds to $10^4$): {glue:}`n22_ma_is_massive` at this scale. They grow with scale and training
# time (Sun et al. study models with billions of parameters); whether a placement bounds
# them can only be tested on a model that has them, and the hooks above work unchanged on
# any model that does.

# %% [markdown]
# ## 2.2.9 Claimed vs measured
#
# Measured on CharGPTs of width {glue:}`n22_width` with {glue:}`n22_shallow` to
# {glue:}`n22_deep` layers (the device is in the banner), Tiny Shakespeare,
# {glue:}`n22_steps` steps for the depth grid and {glue:}`n22_sweep_steps` for the
# learning-rate sweep, one seed per run (the seed spread of one configuration,
# {glue:}`n22_seed_std` nats, judges the loss comparisons). The papers train models with
# hundreds of millions to billions of parameters; a claim we do not reproduce at this scale
# is not refuted by it.
#
# | paper | claim | measured here |
# | --- | --- | --- |
# | {cite}`xiong2020layer` | Pre-LN trains without warm-up; Post-LN needs warm-up; at initialization Post-LN's last layer has the larger gradient | without warm-up Pre-LN trains at {glue:}`n22_sweep_pre_ok_nowarm` of {glue:}`n22_sweep_n_lrs` learning rates, Post-LN at {glue:}`n22_sweep_post_ok_nowarm` (with warm-up: {glue:}`n22_sweep_post_ok_warm`); at init Post-LN's last-block gradient is {glue:}`n22_init_post_last_vs_pre` times Pre-LN's (the claim {glue:}`n22_init_xiong_holds`); {glue:}`n22_sweep_depth` layers, GPT-2 initialization, AdamW, clipping at 1 |
# | {cite}`liu2020admin` | deep Post-LN fails to train; Post-LN's dependence on its residual branches amplifies updates | Post-LN {glue:}`n22_out_post_shallow` at {glue:}`n22_shallow` layers, {glue:}`n22_out_post_mid` at {glue:}`n22_mid`, {glue:}`n22_out_post_deep` at {glue:}`n22_deep`; during training its gradient changes by {glue:}`n22_post_decay` per block (lr {glue:}`n22_grid_lr`, warm-up {glue:}`n22_grid_warmup` steps) |
# | {cite}`kim2025periln` | Peri-LN is more stable than Pre-LN and Post-LN, reaches a lower loss, and keeps activations bounded | most learning-rate-robust placement: {glue:}`n22_sweep_most_robust` (Peri-LN span {glue:}`n22_sweep_peri_spread` nats, Pre-LN {glue:}`n22_sweep_pre_spread`); loss at {glue:}`n22_deep` layers: {glue:}`n22_val_peri_deep`, {glue:}`n22_peri_vs_pre_deep` Pre-LN's {glue:}`n22_val_pre_deep`; largest stream RMS {glue:}`n22_rms_peri_max`, max / median {glue:}`n22_ma_peri` |
# | {cite}`li2025mixln` | Pre-LN's deep layers get small gradients and are nearly the identity; Mix-LN (Post-LN in the first 25% of layers) fixes both and lowers the loss | Pre-LN's last/first block gradient {glue:}`n22_grad_pre_last_first`, deep-half cosine {glue:}`n22_cos_pre_deep`; Mix-LN {glue:}`n22_mix_raises` the last block's gradient ({glue:}`n22_grad_mix_last` vs Pre-LN's {glue:}`n22_grad_pre_last`), loss {glue:}`n22_val_mix_deep`, {glue:}`n22_mix_vs_pre_deep` Pre-LN's ({glue:}`n22_deep` layers, $\alpha = 0.25$) |
# | {cite}`sun2024massive` | in LLMs a few activations are about $10^4$ times the median, in fixed dimensions, on the first and delimiter tokens | largest max / median {glue:}`n22_ma_base` (chapter-1 baseline) against {glue:}`n22_gauss_ratio` for Gaussian noise; its top 10 hold {glue:}`n22_ma_base_top10` values in one dimension; models of at most {glue:}`n22_max_params_m` M parameters |

# %% [markdown]
# ## Exercises
#
# ### Exercise 1: Mix-LN's $\alpha$ (measure, medium)
# Train the deep Mix-LN model with $\alpha = 0.5$ (half the blocks Post-LN) and compare its
# loss and its gradient profile (last block over block 0) with $\alpha = 0.25$ and with
# Pre-LN. Which way does the profile move?

# %% tags=["solution", "hide-cell"]
# Solution 1
MIX_ALPHA = 0.5                 # read by n_post() and stored in the cache key by train_gpt
mix_half = train_gpt("mix", deep, lr=GRID_LR, warmup=GRID_WARMUP, tag="alpha")[1]
MIX_ALPHA = 0.25
rows1 = []
for name, rec in [("Pre-LN", grid["pre", deep][1]), ("Mix-LN, alpha 0.25", grid["mix", deep][1]),
                  ("Mix-LN, alpha 0.5", mix_half)]:
    g = grad_profile(rec)
    rows1.append({"model": name, "val loss (nats)": final_val(rec), "outcome": outcome(rec),
                  "grad norm, last / block 0": g[-1] / g[0]})
ml.bench.Table(rows1, title=f"{deep} layers, {STEPS} steps; seed spread of a final loss {SEED_STD:.3f} nats",
               formats={"val loss (nats)": ".3f", "grad norm, last / block 0": ".3g"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# More Post-LN blocks move the model towards Post-LN. Each Post-LN block ends with a norm
# that divides by $\sigma(x + F) > 1$ once its branch grows, so with half the blocks
# Post-LN the gradient reaching block 0 crosses more of those norms: the profile tilts
# towards the Post-LN shape (larger last-to-first ratio), and if the Post-LN part becomes
# deep enough, towards Post-LN's failure to leave the plateau. The table gives this run's
# ratio and loss for the three models; compare the loss differences with the seed spread
# before calling one better. Li et al. chose $\alpha = 0.25$ after a sweep on LLaMA models:
# the Post-LN part must stay shallow enough to train.
# :::

# %% [markdown]
# ### Exercise 2: Peri-LN's stream at initialization (explain, medium)
# Show that if each sub-layer added a vector of RMS 1 independent of the stream, the RMS
# after block $k$ would be $\sqrt{\mathrm{RMS}_0^2 + 2k}$. Then measure, with forward hooks on
# a freshly initialized Peri-LN model, the mean cosine between each branch's normalized
# output and the stream it is added to, and use it to explain where the measured curve of
# section 2.2.3 lies.

# %% tags=["solution", "hide-cell"]
# Solution 2
torch.manual_seed(0)
peri = build_gpt("peri", INIT_DEPTH).eval()
seen = {}
hooks = []
for i, blk in enumerate(peri.blocks):
    hooks.append(blk.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__((i, "in"), a[0])))
    hooks.append(blk.norm1_out.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__((i, "u1"), o)))
    hooks.append(blk.norm2_out.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__((i, "u2"), o)))
with torch.no_grad():
    peri(probe_x)
for h in hooks:
    h.remove()
cos = []
for i in range(INIT_DEPTH):
    x_in, u1, u2 = seen[i, "in"], seen[i, "u1"], seen[i, "u2"]
    cos += [F.cosine_similarity(x_in, u1, dim=-1).mean().item(),          # first sub-layer
            F.cosine_similarity(x_in + u1, u2, dim=-1).mean().item()]     # second sub-layer
print(f"mean cosine(stream, normalized branch output) over {len(cos)} sub-layers: {np.mean(cos):+.3f} "
      f"(first block {cos[0]:+.3f}, last block {cos[-1]:+.3f}); measured final RMS "
      f"{init['peri']['rms'][-1]:.2f} vs {peri_pred:.2f} for independent additions")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# With $x_{k+1} = x_k + u_k$, $\mathbb{E}\|x_{k+1}\|^2 = \mathbb{E}\|x_k\|^2 + 2\,\mathbb{E}\langle x_k,
# u_k\rangle + \mathbb{E}\|u_k\|^2$; independence kills the middle term and $\|u_k\|^2 = d$
# for a LayerNorm output with $\gamma = 1$, $\beta = 0$, so each sub-layer adds 1 to the
# mean square and a block adds 2: $\mathrm{RMS}_k^2 = \mathrm{RMS}_0^2 + 2k$. Without
# independence the middle term is $2\,\mathbb{E}\langle x_k, u_k\rangle = 2\sqrt{d}\,
# \mathrm{RMS}_k \sqrt{d} \cos(x_k, u_k)$ per token: a negative mean cosine (a branch that
# partly cancels the stream it reads) makes the stream grow more slowly than the formula,
# a positive one faster. The printed mean cosine gives the sign for this model, and the
# printed RMS pair shows on which side of the formula the measured curve ends.
# :::

# %% [markdown]
# ### Exercise 3: the LayerNorm bound (explain, easy)
# Prove that a vector $z \in \mathbb{R}^d$ with mean 0 and $\frac{1}{d}\sum_i z_i^2 = 1$ has
# $|z_i| \le \sqrt{d-1}$, and find the vector that attains it. What does the bound allow for
# a Post-LN LLM with $d = 4096$, and why does it not bound the *ratio* to the median?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# Fix $z_1 = a$. The other $d - 1$ entries sum to $-a$, so by Cauchy-Schwarz their squares
# sum to at least $a^2/(d-1)$. Then $d = \sum_i z_i^2 \ge a^2 + a^2/(d-1) = a^2 d/(d-1)$,
# so $a^2 \le d - 1$, with equality for $z = (a, -a/(d-1), \dots, -a/(d-1))$. For
# $d = 4096$ a Post-LN stream can hold an entry of about $64\,|\gamma|$, while the other
# entries are then about $1/64$: the largest-to-median ratio is then about 4096, so the norm
# bounds the magnitude but not the ratio. Massive activations in a normalized stream are
# possible, but they must take the energy from all the other dimensions.
# :::

# %% [markdown]
# ### Exercise 4: rescue the deep Post-LN model (measure, hard)
# Train the {glue:}`n22_deep`-layer Post-LN model for {glue:}`n22_steps` steps with a three
# times smaller learning rate, and with a warm-up over half the run. Does either change its
# outcome and its gradient profile? A third fix, a smaller initialization of the output
# projections, needs one line in `build_gpt`: which of the three addresses the cause of
# section 2.2.5, and which only delays it?

# %% tags=["solution", "hide-cell"]
# Solution 4
rows4 = [{"setting": f"grid: lr {GRID_LR:g}, warm-up {GRID_WARMUP}", "rec": grid["post", deep][1]}]
for lr, warmup in [(GRID_LR / 3, GRID_WARMUP), (GRID_LR, STEPS // 2)]:
    rows4.append({"setting": f"lr {lr:.2g}, warm-up {warmup}",
                  "rec": train_gpt("post", deep, lr=lr, warmup=warmup, tag="rescue")[1]})
ml.bench.Table([{"setting": r["setting"], "val loss (nats)": final_val(r["rec"]), "outcome": outcome(r["rec"]),
                 "weakest / last block grad": grad_profile(r["rec"]).min() / grad_profile(r["rec"])[-1]}
                for r in rows4], title=f"Post-LN, {deep} layers, {STEPS} steps (unigram level {UNIGRAM:.2f})",
               formats={"val loss (nats)": ".3f", "weakest / last block grad": ".2g"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# The table gives each setting's outcome at this scale. The reasoning: a smaller learning
# rate keeps the branches small, so every $\sigma(x_l + F_l)$ stays close to 1 and the
# product of the norms' Jacobians decays slowly: it addresses the cause, at the price of
# slower learning, so it helps if the run is long enough. A longer warm-up only postpones the
# growth of the branches: once the peak learning rate is reached the same decay sets in. A
# smaller initialization of the output projections (scale `attn.proj` and `mlp.proj` of
# every block down, the idea behind Admin {cite}`liu2020admin`) keeps $\sigma$ near 1 for
# longer, but the branches still grow with training, so it too delays rather than removes
# the decay, unless it is combined with a rescaling that keeps each branch's contribution
# bounded, which is what Admin does.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Placement is one line of code: Post-LN normalizes the stream ($\mathrm{LN}(x + F(x))$),
#   Pre-LN the branch input ($x + F(\mathrm{LN}(x))$), Peri-LN the branch input and output,
#   Mix-LN uses Post-LN in the first quarter of the blocks. Ours matches `ml.models.Block`.
# - Post-LN's gradient crosses every norm above a layer; when the branches grow, it shrinks
#   geometrically towards the input and the lower blocks stop learning. That failure is a
#   plateau at the unigram loss, not a NaN: detect failure by comparing with a trivial
#   model's loss, not only with `isfinite`.
# - Pre-LN keeps an identity path for the gradient, so it can train without warm-up
#   (here: at {glue:}`n22_sweep_pre_ok_nowarm` of {glue:}`n22_sweep_n_lrs` learning rates),
#   but its stream grows and its deep blocks change it less and less (deep-half cosine
#   {glue:}`n22_cos_pre_deep`).
# - Peri-LN bounds what each branch adds; whether that buys a lower loss, and whether
#   Mix-LN fixes Pre-LN's deep-layer gradients, is decided here only where a difference
#   exceeds the seed spread ({glue:}`n22_seed_std` nats): compare single runs against it,
#   never by rank alone.
# - Massive activations are a property of large, long-trained models. Measure them with
#   forward hooks as the largest magnitude over the median, against the same ratio for
#   Gaussian noise; a LayerNorm output bounds the magnitude ($\sqrt{d-1}\,|\gamma|$), not
#   the ratio.

# %% [markdown]
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
