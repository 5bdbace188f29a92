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
# # 7.3 Conditioning and backbones: classifier-free guidance, U-Net against DiT
#
# Two ideas shape today's image generators beyond the sampler. **Classifier-free guidance**
# {cite}`ho2022cfg` trains one network both with and without the condition and, at sampling
# time, extrapolates from the unconditional prediction towards the conditional one: the
# samples follow their label (or prompt) more faithfully and become less diverse, a knob
# every text-to-image system exposes. **The backbone** moved from U-Nets to transformers:
# Peebles and Xie's DiT {cite}`peebles2023dit` runs a plain ViT on patches of the noisy image,
# conditioned through adaptive LayerNorm with zero initialization (adaLN-Zero), and its
# quality improved steadily with compute; PixArt-α {cite}`chen2024pixartalpha`, Lumina-T2X
# {cite}`gao2024lumina` and Stable Diffusion 3 {cite}`esser2024sd3` build on it, while DiCo
# {cite}`ai2025dico` argues that a well-designed convolutional network is the cheaper
# backbone at equal quality. This notebook measures both ideas on the chapter's flow-matching
# models: a guidance-scale sweep, and a U-Net against a DiT trained with the same FLOPs.
#
# **Learning objectives.** After this notebook you can
# 1. write classifier-free guidance as a wrapper around a conditional denoiser and check its
#    limits ($w = 0$: conditional, $w = -1$: unconditional);
# 2. measure the fidelity/diversity trade-off of the guidance scale with precision, recall,
#    the Fréchet distance and a classifier's agreement with the requested labels;
# 3. build a DiT block with adaLN-Zero and show that it starts as the identity;
# 4. compare two backbones at matched training compute: quality, throughput and memory.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import matplotlib.pyplot as plt
import torch

import minilib as ml

D = ml.diffusion
ml.describe()
dev = ml.device()
dataset = ml.pick(smoke="fashion_mnist", cpu="fashion_mnist", gpu="cifar10")
n_eval = ml.pick(smoke=16, cpu=200, gpu=1000)     # samples per quality measurement (as in 7.1)
steps = ml.pick(smoke=3, cpu=10, gpu=10)           # Heun steps: 2 steps - 1 NFE per branch
classes = D.DATASETS[dataset]["classes"]

# %% [markdown]
# ## 7.3.1 Classifier-free guidance
#
# A conditional model estimates $\nabla_x \log p(x_t \mid y)$ (the noise or velocity
# prediction is a rescaled version of it). Bayes' rule splits it,
# $\nabla \log p(x_t \mid y) = \nabla \log p(x_t) + \nabla \log p(y \mid x_t)$, and the second
# term is what a classifier would add. Ho and Salimans get it without a classifier, as the
# difference of the conditional and unconditional predictions of one network that was
# trained with the label dropped 10% of the time (our models were), and scale it up
# (their eq. 6):
#
# $$\tilde\epsilon(x_t, y) = (1 + w)\,\epsilon_\theta(x_t, y) - w\,\epsilon_\theta(x_t, \varnothing).$$
#
# $w = 0$ is the conditional model, $w = -1$ the unconditional one, $w > 0$ samples from a
# sharpened $p(x \mid y)\,p(y \mid x)^w$ (approximately). For any other $w$ both predictions
# come from one batched call of $2B$ images, so guided sampling costs twice the evaluations.
# The same formula applies to a velocity predictor.

# %%
ml.show(D.Guided.forward)

# %%
flow_model, flow_record = D.trained("flow", dataset=dataset)   # cached by 7.2 (its name has the scale)
x_test, y_test = D.images(dataset, train=False, device="cpu")

# %% tags=["nbval-check-output"]
xb, yb = x_test[:8].to(dev), y_test[:8].to(dev)
tb = torch.full((8,), 500.0, device=dev)
with torch.no_grad():
    cond, uncond = flow_model(xb, tb, yb), flow_model(xb, tb, None)
    errs = [(D.Guided(flow_model, yb, 0.0)(xb, tb) - cond).abs().max().item(),
            (D.Guided(flow_model, yb, -1.0)(xb, tb) - uncond).abs().max().item(),
            (D.Guided(flow_model, yb, 3.0)(xb, tb) - (4 * cond - 3 * uncond)).abs().max().item()]
assert max(errs) < 1e-4
print("w = 0 is the conditional model, w = -1 the unconditional one, w = 3 is 4 cond - 3 uncond (< 1e-4):",
      max(errs) < 1e-4)

# %% [markdown]
# The sweep: {glue:}`d73_n_eval` samples per scale (labels $0..9$ in turn), Heun with
# {glue:}`d73_steps` steps, the same starting noise for every scale. Besides the Fréchet
# distance, precision and recall of notebook 7.1 we ask the feature network, which is a
# classifier, whether each sample shows the class it was asked for:

# %%
fnet, _ = D.feature_net(dataset)
ref = D.features(fnet, x_test[:n_eval])
labels = torch.arange(n_eval) % 10
floors = [D.frechet_distance(ref, D.features(fnet, x_test[n_eval * (k + 1):n_eval * (k + 2)]))
          for k in range(ml.pick(smoke=2, cpu=5, gpu=5))]
floor, floor_sd = sum(floors) / len(floors), torch.tensor(floors).std().item()


def compared(a, b):
    """Words for Frechet distance a against b (lower is better), as in notebook 7.2."""
    return ml.bench.quality_verdict(b - a, 2 ** 0.5 * floor_sd, better="better than",
                                    worse="worse than", same="indistinguishable from")



def score(samples):
    f = D.features(fnet, samples)
    p, r = D.precision_recall(ref, f)
    with torch.no_grad():
        agree = (fnet(samples.to(dev).clamp(-1, 1)).argmax(1).cpu() == labels[:len(samples)]).float().mean().item()
    return {"Fréchet distance": D.frechet_distance(ref, f), "precision": p, "recall": r, "label agreement": agree}


guide_rows, guide_grids = [], {}
for w in ml.trim([-1.0, 0.0, 0.5, 1.0, 2.0, 4.0]):
    x, seconds = D.generate(flow_model, flow_record, "heun", steps, n=n_eval, w=w)
    guide_rows.append({"guidance w": w, "NFE": D.nfe("heun", steps) * (1 if w in (0, -1) else 2), **score(x),
                       "ms per image": 1e3 * seconds / n_eval})
    guide_grids[w] = x[:30]
ml.bench.Table(guide_rows, title=f"classifier-free guidance, flow U-Net, Heun {steps} steps, {n_eval} samples",
               formats={"precision": ".2f", "recall": ".2f", "label agreement": ".1%"})

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
ws = [r["guidance w"] for r in guide_rows]
axes[0].plot(ws, [r["Fréchet distance"] for r in guide_rows], "o-")
axes[0].set(xlabel="guidance scale w", ylabel="Fréchet distance (ours)")
for key, marker in (("precision", "o"), ("recall", "s"), ("label agreement", "^")):
    axes[1].plot(ws, [r[key] for r in guide_rows], marker=marker, label=key)
axes[1].set(xlabel="guidance scale w", ylabel="fraction")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% tags=["remove-cell"]
by_w = {r["guidance w"]: r for r in guide_rows}
best_w = min(guide_rows, key=lambda r: r["Fréchet distance"])["guidance w"]
ml.glue("d73_n_eval", n_eval)
ml.glue("d73_steps", steps)
ml.glue("d73_best_w", best_w, "g")
for w in (-1.0, 0.0, 1.0, 4.0):
    key = str(w).replace(".", "p").replace("-", "m")
    ml.glue(f"d73_fd_w{key}", by_w[w]["Fréchet distance"], ".3g")
    ml.glue(f"d73_p_w{key}", by_w[w]["precision"], ".2f")
    ml.glue(f"d73_r_w{key}", by_w[w]["recall"], ".2f")
    ml.glue(f"d73_agree_w{key}", 100 * by_w[w]["label agreement"], ".0f")

# %% [markdown]
# The unconditional model ($w = -1$) scores {glue:}`d73_fd_wm1p0` and its samples match
# the requested label only by chance ({glue:}`d73_agree_wm1p0`%: it never saw it). The
# conditional model ($w = 0$) scores {glue:}`d73_fd_w0p0` with {glue:}`d73_agree_w0p0`%
# agreement. Guidance raises agreement and precision (at $w = 4$:
# {glue:}`d73_agree_w4p0`% and {glue:}`d73_p_w4p0`) and lowers recall
# ({glue:}`d73_r_w0p0` at $w = 0$, {glue:}`d73_r_w4p0` at $w = 4$): the samples become more
# typical of their class and less varied. The Fréchet distance, which needs both, is best
# at $w =$ {glue:}`d73_best_w` here. The same noise at four scales:

# %%
show_w = [w for w in (-1.0, 0.0, 1.0, 4.0) if w in guide_grids]
fig, axes = plt.subplots(2, 2, figsize=(9, 3.6))
for ax, w in zip(axes.flat, show_w):
    D.show_samples(guide_grids[w][:30], nrow=10, ax=ax, title=f"w = {w:g}")
for ax in list(axes.flat)[len(show_w):]:
    ax.set_axis_off()
plt.tight_layout()
plt.show()
print("columns:", ", ".join(classes))

# %% [markdown]
# ## 7.3.2 A Diffusion Transformer with adaLN-Zero
#
# DiT cuts the noisy image into $P\times P$ patches, embeds each linearly (a convolution with
# kernel and stride $P$) and adds a position embedding: $N = (H/P)(W/P)$ tokens. Transformer
# blocks follow, as in chapter 3's ViT, except for how the condition enters. Each block
# regresses six vectors from the conditioning vector $c$ (timestep plus label), scales and
# shifts the LayerNorm outputs with them, and gates each residual branch:
#
# $$x \leftarrow x + g_1 \odot \mathrm{Attn}\bigl(\mathrm{LN}(x)\,(1 + s_1) + b_1\bigr), \qquad
# x \leftarrow x + g_2 \odot \mathrm{MLP}\bigl(\mathrm{LN}(x)\,(1 + s_2) + b_2\bigr),$$
#
# with $(b_1, s_1, g_1, b_2, s_2, g_2) = W\,\mathrm{SiLU}(c)$. The regression $W$ starts at
# zero (the "Zero"): every gate is 0, every block is the identity at initialization, which
# Peebles and Xie found clearly better than cross-attention or in-context conditioning. A
# final adaLN-modulated LayerNorm and a zero-initialized linear layer turn each token into
# its $P \cdot P \cdot C$ output pixels. Our block is built from `ml.models.Attention` and
# `FeedForward`, the parts of chapter 1's ViT:

# %%
ml.show(ml.models.DiTBlock.forward)

# %% tags=["nbval-check-output"]
torch.manual_seed(0)
block = ml.models.DiTBlock(32, 4)
h, c = torch.randn(2, 10, 32), torch.randn(2, 32)
dit0 = ml.models.DiT(28, 4, 1, dim=32, depth=2, heads=4, num_classes=10)
out0 = dit0(torch.randn(2, 1, 28, 28), torch.tensor([3, 700]), torch.tensor([1, 2]))
assert torch.equal(block(h, c), h) and bool((out0 == 0).all())
print("adaLN-Zero: a fresh block is the identity, a fresh DiT predicts 0:", torch.equal(block(h, c), h), bool((out0 == 0).all()))

# %% [markdown]
# ## 7.3.3 U-Net against DiT at matched training compute
#
# A fair comparison fixes the training compute, not the steps: `ml.diffusion.config("flow",
# "dit")` gives the DiT the U-Net's training FLOPs (3 times the forward FLOPs per image,
# times images seen) by scaling its number of steps by the ratio of FLOPs per image. Same
# data, batch size, optimizer, schedule and EMA; flow matching for both.

# %%
dit_model, dit_record = D.trained("flow", "dit", dataset=dataset)
backbones = {"U-Net": (flow_model, flow_record), "DiT": (dit_model, dit_record)}
shape1 = (1, *x_test.shape[1:])
spec = []
for name, (m, r) in backbones.items():
    cfg = r["config"]
    spec.append({"backbone": name, "parameters": r["metrics"]["params"],
                 "FLOPs per image": r["metrics"]["flops_per_image"], "training steps": cfg["steps"],
                 "training FLOPs": cfg["train_flops"], "training time (s)": r["train_seconds"]})
ml.bench.Table(spec, title="the two backbones", formats={"FLOPs per image": ml.bench.fmt_flops,
                                                         "training FLOPs": ml.bench.fmt_flops})

# %% [markdown]
# Quality with the same sampler (Heun, {glue:}`d73_steps` steps, no guidance), throughput of
# one network evaluation on a batch, and the peak memory of one training step (forward and
# backward, on {glue:}`d73_device`). The throughput ratio comes from interleaved timing
# (`ml.bench.compare`):

# %%
bs = ml.pick(smoke=16, cpu=128, gpu=512)
xb = torch.randn(bs, *x_test.shape[1:], device=dev)
tb, yb = torch.full((bs,), 500.0, device=dev), torch.arange(bs, device=dev) % 10
calls = {}
for name, (m, r) in backbones.items():
    calls[name] = (lambda m=m: m(xb, tb, yb))


def train_step(m):
    m.train()
    loss = D.flow_matching_loss(m, xb, yb)
    loss.backward()
    m.zero_grad(set_to_none=True)
    m.eval()


with torch.no_grad():
    cmp = ml.bench.compare(calls["DiT"], calls["U-Net"], warmup=2, repeat=ml.pick(smoke=3, cpu=10, gpu=30))
rows = []
for name, (m, r) in backbones.items():
    x, seconds = D.generate(m, r, "heun", steps, n=n_eval)
    with torch.no_grad():
        t_fwd = ml.bench.time_fn(calls[name], warmup=2, repeat=ml.pick(smoke=3, cpu=10, gpu=30))
    rows.append({"backbone": name, **score(x), "images/s (one NFE)": bs / t_fwd.median,
                 "training-step memory": ml.bench.peak_memory(train_step, m)})
ml.bench.Table(rows, title=f"matched training compute: quality ({n_eval} samples, Heun {steps} steps) and cost "
                           f"(batch {bs}); U-Net vs DiT forward speed: {cmp}",
               formats={"precision": ".2f", "recall": ".2f", "label agreement": ".1%",
                        "training-step memory": ml.bench.fmt_bytes})

# %% tags=["remove-cell"]
bb = {r["backbone"]: r for r in rows}
ml.glue("d73_device", dev.type)
ml.glue("d73_fd_unet", bb["U-Net"]["Fréchet distance"], ".3g")
ml.glue("d73_fd_dit", bb["DiT"]["Fréchet distance"], ".3g")
ml.glue("d73_speed", cmp.speedup, ".2f")
ml.glue("d73_speed_words", cmp.words("faster than", "slower than", "about as fast as"))
ml.glue("d73_mem_ratio", bb["DiT"]["training-step memory"] / bb["U-Net"]["training-step memory"], ".2f")
ml.glue("d73_dit_steps", dit_record["config"]["steps"])
ml.glue("d73_unet_steps", flow_record["config"]["steps"])
ml.glue("d73_patch", dit_record["config"]["patch_size"])
ml.glue("d73_dit_tokens", (D.DATASETS[dataset]["size"] // dit_record["config"]["patch_size"]) ** 2)
ml.glue("d73_dit_vs_unet", compared(bb["DiT"]["Fréchet distance"], bb["U-Net"]["Fréchet distance"]))
ml.glue("d73_floor", floor, ".3g")
ml.glue("d73_floor_sd", floor_sd, ".3g")

# %% [markdown]
# With patches of {glue:}`d73_patch` pixels the DiT sees {glue:}`d73_dit_tokens` tokens and
# trains for {glue:}`d73_dit_steps` steps against the U-Net's {glue:}`d73_unet_steps`, for
# the same FLOPs. It scores {glue:}`d73_fd_dit` against the U-Net's {glue:}`d73_fd_unet`:
# {glue:}`d73_dit_vs_unet` it (real-vs-real floor {glue:}`d73_floor` ±
# {glue:}`d73_floor_sd`; one seed each). DiT's own paper trains for hundreds of thousands of
# steps on ImageNet latents, where its quality improves steadily with compute; at a budget
# of minutes, a convolution's built-in locality can be worth more than a transformer's
# flexibility, and a DiT with $4\times4$ patches has little resolution to work with
# (exercise 3 halves the patch). Per evaluation the U-Net is {glue:}`d73_speed_words` the DiT
# ({glue:}`d73_speed`x in interleaved runs; FLOPs alone do not decide it: convolutions on
# small maps and attention over a few dozen tokens reach different fractions of the
# machine's peak), and a DiT training step needs {glue:}`d73_mem_ratio` times the U-Net's
# memory. Both numbers depend on the hardware: on a GPU large matrix products favour the
# transformer.
#
# ## Claimed vs measured
#
# | source | claim | measured here |
# | --- | --- | --- |
# | {cite}`ho2022cfg` | guidance trades diversity for fidelity: sample quality per image rises with $w$ while diversity falls, and FID is best at a small $w$ | precision {glue:}`d73_p_w0p0` → {glue:}`d73_p_w4p0` and recall {glue:}`d73_r_w0p0` → {glue:}`d73_r_w4p0` from $w = 0$ to 4; best Fréchet distance at $w =$ {glue:}`d73_best_w` |
# | {cite}`ho2022cfg` | one network, trained with the label dropped, gives both models | $w = -1$ (unconditional) {glue:}`d73_fd_wm1p0`, label agreement {glue:}`d73_agree_wm1p0`%; $w = 0$ {glue:}`d73_fd_w0p0`, {glue:}`d73_agree_w0p0`% |
# | {cite}`peebles2023dit` | DiTs with adaLN-Zero are strong diffusion backbones; quality follows compute (Gflops), not architecture details | at equal training FLOPs: DiT {glue:}`d73_fd_dit` vs U-Net {glue:}`d73_fd_unet` (DiT {glue:}`d73_dit_vs_unet` the U-Net) |
# | {cite}`ai2025dico` | a convolutional backbone is faster than a DiT at similar quality (2.7x over DiT-XL/2 at 256 px) | U-Net {glue:}`d73_speed_words` the DiT per evaluation ({glue:}`d73_speed`x), on {glue:}`d73_device` |
#
# Further reading, not measured here: PixArt-α {cite}`chen2024pixartalpha` trains a DiT
# text-to-image model in about 10% of Stable Diffusion 1.5's GPU time by decomposing the
# training and using dense captions, and PixArt-Σ {cite}`chen2024pixartsigma` compresses keys
# and values to reach 4K; Lumina-T2X {cite}`gao2024lumina` scales flow-matching DiTs to many
# modalities; HiDiffusion {cite}`zhang2024hidiffusion` makes a pretrained U-Net generate above
# its training resolution faster, with windowed attention; Skip-Tuning {cite}`ma2024skiptuning`
# rescales a U-Net's skip connections at sampling time to improve few-step samples;
# LaTtE-Flow {cite}`shen2025latteflow` runs only a subset of transformer layers at each
# timestep; STARFlow {cite}`gu2025starflow` is a normalizing flow rather than a diffusion
# model; ADDP {cite}`tian2024addp` learns one representation for recognition and generation.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1: Guidance with two calls (implement, easy)
#
# Write `guided_two_calls(model, y, w)` that evaluates the conditional and unconditional
# predictions in two separate calls instead of one batch of $2B$. Check that it matches
# `ml.diffusion.Guided` and time both on a batch of 64 with `ml.bench.compare`. When is the
# batched version faster, and when could it not be?

# %% tags=["solution", "hide-cell"]
# Solution 1
def guided_two_calls(model, y, w):
    none = torch.full_like(y, model.num_classes)
    return lambda x, t: (1 + w) * model(x, t, y) - w * model(x, t, none)


y64 = torch.arange(64, device=dev) % 10
x64, t64 = torch.randn(64, *x_test.shape[1:], device=dev), torch.full((64,), 300.0, device=dev)
two, one = guided_two_calls(flow_model, y64, 2.0), D.Guided(flow_model, y64, 2.0)
with torch.no_grad():
    print("same predictions:", torch.allclose(two(x64, t64), one(x64, t64), atol=1e-4))
    print("batched vs two calls:", ml.bench.compare(lambda: two(x64, t64), lambda: one(x64, t64),
                                                    repeat=ml.pick(smoke=3, cpu=10, gpu=30)))

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# Both compute the same numbers (up to rounding). One batch of $2B$ pays the per-call costs
# (Python, dispatch, kernel launches) once instead of twice and gives the matrix products
# larger shapes, so it is faster when the batch is small or the machine is underused; when a
# batch of $B$ already saturates the device, the two take the same time, and a batch of $2B$
# may not fit in memory at all (then two calls, or guidance on half the steps, are the
# options).
# :::

# %% [markdown]
# ### Exercise 2: Guidance and few steps (measure, medium)
#
# Repeat the sweep with Heun at 3 steps (5 NFE per branch). Does the best $w$ change? Does
# guidance make few-step sampling better or worse?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# ```python
# for w in (0.0, 1.0, 2.0):
#     x, _ = D.generate(flow_model, flow_record, "heun", 3, n=n_eval, w=w)
#     print(w, score(x))
# ```
# Guidance pushes samples towards the modes of each class, which are also where a coarse
# integrator's errors matter least, so a moderate $w$ often hides some of the few-step
# blur (higher precision, lower recall); large $w$ with big steps overshoots (saturated,
# high-contrast images). Compare the distances at equal NFE, counting two evaluations per
# guided step.
# :::

# %% [markdown]
# ### Exercise 3: A smaller patch (implement, hard)
#
# Peebles and Xie found that smaller patches (more tokens, more FLOPs per image at the same
# parameter count) improve quality the most. Train a DiT with half the patch size at the
# same training FLOPs (`D.trained("flow", "dit", dataset=dataset, patch_size=...)`; the
# config adjusts the steps) and compare.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# ```python
# small, small_rec = D.trained("flow", "dit", dataset=dataset, patch_size=dit_record["config"]["patch_size"] // 2)
# print(small_rec["config"]["steps"], small_rec["metrics"]["flops_per_image"])
# x, _ = D.generate(small, small_rec, "heun", steps, n=n_eval)
# print(score(x))
# ```
# Halving $P$ quadruples the tokens, so the FLOPs per image grow about fourfold (more for
# attention, which is quadratic in $N$), and at matched training compute the model takes
# about four times fewer steps. DiT's result (quality follows Gflops) is about models trained
# to convergence on ImageNet; at a budget of minutes, fewer steps can cost more than the finer
# patches gain, which is the kind of trade-off only a measurement settles.
# :::

# %% [markdown]
# ### Exercise 4: Why zero? (explain, easy)
#
# What would go wrong at the start of training if the adaLN regression $W$ were initialized
# randomly instead of at zero, in a deep DiT? Relate it to chapter 2's discussion of the
# residual stream.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# With random $W$, every block adds a random branch, scaled by random gates, to the residual
# stream: its variance grows with depth (chapter 2, Pre-LN), and the output of the network at
# initialization is a large random function of the input, far from the "predict the mean"
# that the loss wants first. With $W = 0$ each block is the identity, the network starts as
# patch embedding plus a zero head, and the gradient of the first steps opens the gates
# gradually, deepest layers last. The same idea appears as zero-initialized residual
# branches in ResNets (Fixup, SkipInit) and as the zero output layers of our U-Net.
# :::

# %% [markdown]
# ## Key takeaways
#
# - Classifier-free guidance is three lines around a conditional network trained with label
#   dropout; it doubles the evaluations per step and moves along a fidelity/diversity curve,
#   which precision and recall show better than one distance.
# - DiT is a ViT on noisy patches whose LayerNorms are set by the condition (adaLN), with
#   zero-initialized gates so that every block starts as the identity.
# - Compare backbones at equal training compute, and measure cost on the machine: FLOPs per
#   image do not give throughput or memory.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
