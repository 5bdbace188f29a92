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
# # 7.2 Fewer steps: DDIM, flow matching, and quality against network evaluations
#
# Notebook 7.1's sampler needs 1,000 network evaluations (NFE) per image. Song, Meng and
# Ermon's DDIM {cite}`song2021ddim` showed that the *same trained network* defines a whole
# family of samplers, one of them deterministic, that can skip most of the steps: on
# CIFAR-10 it reaches an FID of 4.67 with 50 steps, against 4.04 with all 1,000 (and 3.17
# for DDPM's own chain). Flow matching
# {cite}`lipman2023flow` and rectified flow {cite}`liu2023rectified` change the training
# instead: the network learns the velocity of a straight path from noise to data, and
# generation integrates an ordinary differential equation whose trajectories are nearly
# straight, so that a few Euler steps go a long way; Karras et al. {cite}`karras2022edm`
# showed that Heun's second-order method gets more out of each evaluation. Flow matching
# is what recent image generators train with (Lumina-T2X {cite}`gao2024lumina`, Stable
# Diffusion 3 {cite}`esser2024sd3`). This notebook implements all three, trains a flow
# model with the same network and budget as 7.1's, and puts every sampler on one plot:
# quality against NFE, with measured time.
#
# **Learning objectives.** After this notebook you can
# 1. derive DDIM's update from the DDPM model's noise prediction, check that $\eta = 1$
#    over all steps is DDPM, and pick its timesteps;
# 2. derive the flow-matching loss for straight paths and sample it with Euler and Heun;
# 3. measure quality (Fréchet distance, precision, recall) against NFE and wall time for
#    DDPM, DDIM and flow matching, on one model size and one budget;
# 4. say which of the papers' speed claims hold at this scale.

# %% tags=["hide-input"]
# Setup. On Colab, install minilib from the book's repository (elsewhere `make` did it).
import subprocess
import sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "minilib @ git+https://github.com/efficient-dl-from-scratch/book"], check=True)

import math

import matplotlib.pyplot as plt
import torch

import minilib as ml

D = ml.diffusion
ml.describe()
dev = ml.device()
dataset = ml.pick(smoke="fashion_mnist", cpu="fashion_mnist", gpu="cifar10")
n_eval = ml.pick(smoke=16, cpu=200, gpu=1000)     # samples per quality measurement (as in 7.1)

# %% [markdown]
# ## 7.2.1 DDIM: the same network, a different sampler
#
# DDPM's loss only involves the marginals $q(x_t \mid x_0)$, never the chain that links
# them. Song et al. build a family of non-Markovian processes with the same marginals, so
# the same $\epsilon_\theta$ serves all of them, and a reverse step from $t$ to any earlier
# $t'$ (their eq. 12):
#
# $$x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1 - \bar\alpha_{t'} - \sigma^2}\;\epsilon_\theta(x_t, t) + \sigma z,
# \qquad \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}}.$$
#
# Read it as: guess the clean image, then re-noise it to level $t'$, reusing the predicted
# noise as the direction. The free variance is $\sigma = \eta\,\sqrt{(1 - \bar\alpha_{t'})/(1 - \bar\alpha_t)}\,\sqrt{1 - \bar\alpha_t/\bar\alpha_{t'}}$ (eq. 16):
# $\eta = 1$ with $t' = t - 1$ is DDPM's posterior variance $\tilde\beta_t$, $\eta = 0$ is a
# deterministic map from noise to image. With $\eta = 0$ the update is an Euler step of an
# ODE (the probability-flow ODE of the diffusion), which is why it tolerates big steps.

# %%
ml.show(D.ddim_step)

# %% [markdown]
# Two checks. With $\eta = 1$ and every one of the $T$ steps, DDIM must be DDPM, draw for
# draw (same generator); and with the exact denoiser of a one-point distribution, any number
# of steps must return the point:

# %% tags=["nbval-check-output"]
schedule = D.NoiseSchedule.linear()
torch.manual_seed(0)
w = torch.randn(1, dtype=torch.float64)
toy = lambda x, t: torch.tanh(w * x) * (1 + t.view(-1, 1, 1, 1) / 1000)   # any noise predictor
shape = (2, 1, 8, 8)
a = D.ddpm_sample(toy, shape, schedule, torch.Generator().manual_seed(1), dtype=torch.float64)
b = D.ddim_sample(toy, shape, schedule, schedule.T, 1.0, torch.Generator().manual_seed(1), dtype=torch.float64)
x_star = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
ab = schedule.alphas_cumprod
oracle = lambda x_t, t: (x_t - ab[t].sqrt().view(-1, 1, 1, 1) * x_star) / (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
oracle_err = max((D.ddim_sample(oracle, shape, schedule, s, e, dtype=torch.float64) - x_star).abs().max().item()
                 for s in (1, 10, 50) for e in (0.0, 1.0))
assert (a - b).abs().max() < 1e-10 and oracle_err < 1e-12
print("DDIM(eta=1, all T steps) == DDPM, draw for draw (< 1e-10):", (a - b).abs().max().item() < 1e-10)
print("DDIM with 1, 10, 50 steps returns the one data point (< 1e-12):", oracle_err < 1e-12)

# %% [markdown]
# Which $S$ of the $T$ timesteps? DDIM's code takes $0, T/S, 2T/S, \dots$, so that its first
# step starts from $t = T - T/S$, a noise level that pure noise does not have. Lin et al.
# {cite}`lin2024common` recommend "trailing" timesteps that start at $T - 1$:
# $T - 1, T - 1 - T/S, \dots, T/S - 1$, and then a last step to $t' = -1$ ($\bar\alpha = 1$, the clean image).
# `ml.diffusion.timesteps` does that (exercise 1 compares the two):

# %%
print({s: D.timesteps(schedule.T, s)[:4] + ["..."] + D.timesteps(schedule.T, s)[-2:] for s in (10, 50)})

# %% [markdown]
# ## 7.2.2 DDIM on the trained model
#
# We load notebook 7.1's model and its cached 1,000-step samples, and the feature network
# and reference set of section 7.1.6: the same {glue:}`d72_n_eval` samples per
# measurement, scored against the same {glue:}`d72_n_eval` test images.

# %%
eps_model, eps_record = D.trained("eps", dataset=dataset)
fnet, _ = D.feature_net(dataset)
x_test, _ = D.images(dataset, train=False, device="cpu")
ref = D.features(fnet, x_test[:n_eval])
floors = [D.frechet_distance(ref, D.features(fnet, x_test[n_eval * (k + 1):n_eval * (k + 2)]))
          for k in range(ml.pick(smoke=2, cpu=5, gpu=5))]
floor, floor_sd = sum(floors) / len(floors), torch.tensor(floors).std().item()


def score(samples):
    f = D.features(fnet, samples)
    p, r = D.precision_recall(ref, f)
    return {"Fréchet distance": D.frechet_distance(ref, f), "precision": p, "recall": r}


rows, grids = [], {}


def measure(model, record, sampler, steps=None):
    """Sample (or load), score, and record one row of the quality-versus-NFE table."""
    x, seconds = D.generate(model, record, sampler, steps, n=n_eval)
    label = {"ddpm": "DDPM", "ddim": "DDIM (eta 0)", "ddim-eta1": "DDIM (eta 1)",
             "euler": "flow, Euler", "heun": "flow, Heun"}[sampler]
    rows.append({"sampler": label, "steps": steps or schedule.T, "NFE": D.nfe(sampler, steps, schedule.T),
                 **score(x), "ms per image": 1e3 * seconds / n_eval})
    grids[(label, steps or schedule.T)] = (x[:20], rows[-1]["NFE"])
    return rows[-1]


measure(eps_model, eps_record, "ddpm")
for steps in ml.trim([10, 20, 50, 100]):
    measure(eps_model, eps_record, "ddim", steps)
for steps in ml.trim([10, 50]):
    measure(eps_model, eps_record, "ddim-eta1", steps)
ml.bench.Table(rows, title=f"DDPM and DDIM, {n_eval} samples each (real-vs-real floor {floor:.3g} ± {floor_sd:.3g})",
               formats={"precision": ".2f", "recall": ".2f"})

# %% tags=["remove-cell"]
def compared(a, b):
    """Words for Frechet distance a against b (lower is better), with the spread of a
    difference: sqrt(2) times the standard deviation of the real-vs-real floor."""
    return ml.bench.quality_verdict(b - a, math.sqrt(2) * floor_sd, better="better than",
                                    worse="worse than", same="indistinguishable from")


by_key = {(r["sampler"], r["steps"]): r for r in rows}
fd_of = lambda label, steps: by_key[(label, steps)]["Fréchet distance"]   # noqa: E731
ml.glue("d72_ddim50_vs_ddpm", compared(fd_of("DDIM (eta 0)", 50), fd_of("DDPM", schedule.T)))
ml.glue("d72_eta1_50_vs_ddpm", compared(fd_of("DDIM (eta 1)", 50), fd_of("DDPM", schedule.T)))
ml.glue("d72_eta0_vs_eta1_10", compared(fd_of("DDIM (eta 0)", 10), fd_of("DDIM (eta 1)", 10)))

# %% [markdown]
# The DDPM row comes from notebook 7.1's cache, with the time 7.1 measured when it made the
# samples (same batch size); timing a 1,000-step chain again would cost more than the rest of
# this notebook. Every other row is sampled and timed here.
#
# At 50 steps, deterministic DDIM ($\eta = 0$) is {glue:}`d72_ddim50_vs_ddpm` DDPM's
# 1,000-step chain here, while DDIM with DDPM's variance ($\eta = 1$) and the same 50 steps
# is {glue:}`d72_eta1_50_vs_ddpm` it: twenty times fewer evaluations. (Differences are
# judged against the sampling spread of the distance itself: $\sqrt 2$ times the standard
# deviation of the real-vs-real floor over disjoint sets.) The DDIM paper found $\eta = 0$
# the better choice with few steps; its models were trained for hundreds of thousands of
# steps, ours for minutes, and a deterministic sampler is only as good as the network it
# integrates.
# One way to see whether the sampler stays on the data's path is to follow the spread of
# $x_t$ along the trajectory and compare it with the forward process, where
# $\operatorname{std}(x_t)^2 = \bar\alpha_t \operatorname{Var}(x_0) + 1 - \bar\alpha_t$:

# %%
x_real = x_test[:n_eval].double()
n_diag = ml.pick(smoke=8, cpu=64, gpu=256)
net = D.Guided(eps_model, torch.arange(n_diag, device=dev) % 10)
ts50 = D.timesteps(schedule.T, 50)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
drift = {}
for eta, style in ((0.0, "-"), (1.0, "--")):
    x = torch.randn(n_diag, *x_test.shape[1:], generator=torch.Generator().manual_seed(3)).to(dev)
    spread = []
    for t, t_prev in zip(ts50, ts50[1:] + [-1]):
        x = D.ddim_step(net, x, t, t_prev, schedule.alphas_cumprod, eta)
        spread.append(x.std().item())
    drift[eta] = spread
    ax.plot(ts50[1:] + [0], spread, style, label=f"DDIM, eta = {eta:g}")
forward = [(ab * x_real.var() + 1 - ab).sqrt().item() for ab in schedule.alphas_cumprod[ts50[1:] + [0]]]
ax.plot(ts50[1:] + [0], forward, ":", color="k", label="forward process")
ax.invert_xaxis()
ax.set(xlabel="timestep t (sampling runs left to right)", ylabel="std of x_t")
ax.legend(fontsize=8)
plt.show()

# %% tags=["remove-cell"]
ml.glue("d72_final_std_eta0", drift[0.0][-1], ".2f")
ml.glue("d72_final_std_eta1", drift[1.0][-1], ".2f")
ml.glue("d72_real_std", x_real.std().item(), ".2f")

# %% [markdown]
# The images the samplers end on have a spread of {glue:}`d72_final_std_eta0`
# ($\eta = 0$) and {glue:}`d72_final_std_eta1` ($\eta = 1$), against
# {glue:}`d72_real_std` for real images. Where a curve leaves the forward process's, the
# trajectory has left the region the network was trained on, and a deterministic sampler
# has nothing to bring it back: the network's errors in $\epsilon$ at high noise are multiplied by
# $1/\sqrt{\bar\alpha_t}$ in $\hat x_0$ (up to 157 at $t = T$), and DDIM reuses both. With
# $\eta > 0$ every step replaces part of $x_t$ by fresh noise, which forgets earlier errors;
# Karras et al. {cite}`karras2022edm` describe this error-correcting effect of stochastic
# sampling, and their preconditioning, like the velocity target below, removes the
# $1/\sqrt{\bar\alpha_t}$ amplification. Practical DDIM implementations also clip $\hat x_0$
# to the data range (exercise 1).
#
# ## 7.2.3 Flow matching: learn the velocity of a straight path
#
# Pick the simplest path from an image $x_0$ to noise $\epsilon$: the straight line
# $x_t = (1 - t)\,x_0 + t\,\epsilon$, $t \in [0, 1]$ (we run time as in diffusion: $t = 0$ is
# data). Along it the velocity is constant, $\mathrm d x_t/\mathrm dt = \epsilon - x_0$. The
# network cannot know which $x_0$ and $\epsilon$ produced a given $x_t$, so it regresses the
# velocity on $x_t$,
#
# $$L_\text{FM} = \mathbb E_{t \sim U(0,1),\,x_0,\,\epsilon}\,\bigl\|v_\theta(x_t, t) - (\epsilon - x_0)\bigr\|^2,$$
#
# and learns the average, $v^\star(x, t) = \mathbb E[\epsilon - x_0 \mid x_t = x]$. Lipman et al.
# and Liu et al. prove that the ODE $\mathrm dx/\mathrm dt = v^\star(x, t)$, integrated from
# $x_1 \sim \mathcal N(0, I)$ down to $t = 0$, produces samples of the data distribution.
# The individual paths are straight, but the averaged field is not quite, which is why
# one step is not enough (exercise 5); reflow {cite}`liu2023rectified` straightens it
# further by retraining on the model's own noise-image pairs. Our network sees $1000\,t$, so
# the same U-Net and time embedding serve both objectives.

# %%
ml.show(D.flow_matching_loss)

# %% [markdown]
# Sampling is numerical integration on a grid $1 = t_0 > t_1 > \dots > t_S = 0$. Euler's
# method costs one evaluation per step; Heun's method {cite}`karras2022edm` corrects the Euler
# step with the velocity at its end point, two evaluations per step (the last step, to
# $t = 0$, is plain Euler, as in EDM: $2S - 1$ NFE in all):

# %%
ml.show(D.euler_sample)
ml.show(D.heun_sample)

# %% [markdown]
# The one-point check again: if the data is the single image $x^\star$, the exact velocity is
# $(x_t - x^\star)/t$, every trajectory is a straight line, and both integrators are exact
# with any number of steps:

# %% tags=["nbval-check-output"]
v_star = lambda x, t: (x - x_star) / (t / D.FLOW_TIME_SCALE).view(-1, 1, 1, 1)
flow_err = max((f(v_star, shape, s, dtype=torch.float64) - x_star).abs().max().item()
               for f in (D.euler_sample, D.heun_sample) for s in (1, 2, 10))
assert flow_err < 1e-12
print("Euler and Heun with 1, 2, 10 steps return the one data point (< 1e-12):", flow_err < 1e-12)

# %% [markdown]
# The flow model is the same class-conditional U-Net as 7.1's, trained with the same
# recipe, steps and batch size: the same training FLOPs, only the target differs.

# %%
flow_model, flow_record = D.trained("flow", dataset=dataset)
same = all(flow_record["config"][k] == eps_record["config"][k]
           for k in ("dim", "dim_mults", "depth", "steps", "batch_size", "lr", "train_flops"))
print(f"flow model trained in {flow_record['train_seconds']:.0f} s; same network and budget as the eps model: {same}")

# %% [markdown]
# ## 7.2.4 Quality against NFE
#
# Now every sampler, scored the same way. The flow model is sampled with Euler at 5 to 50
# steps and with Heun at 3 to 25 steps (5 to 49 NFE):

# %%
for steps in ml.trim([5, 10, 20, 50]):
    measure(flow_model, flow_record, "euler", steps)
for steps in ml.trim([3, 5, 10, 25]):
    measure(flow_model, flow_record, "heun", steps)
table = ml.bench.Table(rows, title=f"quality against NFE, {n_eval} samples each, on {dev.type} "
                                   f"(real-vs-real floor {floor:.3g} ± {floor_sd:.3g})",
                       formats={"precision": ".2f", "recall": ".2f"})
table

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for label, marker in (("DDPM", "*"), ("DDIM (eta 0)", "o"), ("DDIM (eta 1)", "x"),
                      ("flow, Euler", "s"), ("flow, Heun", "^")):
    pts = [r for r in rows if r["sampler"] == label]
    if not pts:
        continue
    axes[0].plot([r["NFE"] for r in pts], [r["Fréchet distance"] for r in pts], marker=marker, label=label)
    axes[1].plot([r["NFE"] for r in pts], [r["ms per image"] for r in pts], marker=marker, label=label)
axes[0].axhspan(floor - floor_sd, floor + floor_sd, color="0.85", label="real vs real")
for ax in axes:
    ax.set_xscale("log")
axes[0].set(xlabel="network evaluations per sample (NFE)", ylabel="Fréchet distance (ours, not FID)", yscale="log")
axes[1].set(xlabel="network evaluations per sample (NFE)", ylabel="sampling time per image (ms)", yscale="log")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% tags=["remove-cell"]
def row(label, steps):
    return next(r for r in rows if r["sampler"] == label and r["steps"] == steps)


def fd(label, steps):
    return row(label, steps)["Fréchet distance"]


ml.glue("d72_n_eval", n_eval)
ml.glue("d72_floor", floor, ".3g")
ml.glue("d72_floor_sd", floor_sd, ".3g")
ml.glue("d72_fd_ddpm", fd("DDPM", schedule.T), ".3g")
for s in (10, 20, 50, 100):
    ml.glue(f"d72_fd_ddim{s}", fd("DDIM (eta 0)", s), ".3g")
for s in (10, 50):
    ml.glue(f"d72_fd_ddim{s}_eta1", fd("DDIM (eta 1)", s), ".3g")
for s in (5, 10, 20, 50):
    ml.glue(f"d72_fd_euler{s}", fd("flow, Euler", s), ".3g")
for s in (3, 5, 10, 25):
    ml.glue(f"d72_fd_heun{s}", fd("flow, Heun", s), ".3g")
ml.glue("d72_ms_ddim50", row("DDIM (eta 0)", 50)["ms per image"], ".1f")
ml.glue("d72_ms_ddim10", row("DDIM (eta 0)", 10)["ms per image"], ".1f")
ms_per_nfe = [r["ms per image"] / r["NFE"] for r in rows]
ml.glue("d72_ms_per_nfe_lo", min(ms_per_nfe), ".2f")
ml.glue("d72_ms_per_nfe_hi", max(ms_per_nfe), ".2f")
ml.glue("d72_heun_vs_euler", compared(fd("flow, Heun", 5), fd("flow, Euler", 10)))
ml.glue("d72_flow_vs_ddim", compared(fd("flow, Euler", 10), fd("DDIM (eta 0)", 10)))
ml.glue("d72_flow_vs_ddim_eta1", compared(fd("flow, Euler", 10), fd("DDIM (eta 1)", 10)))
ml.glue("d72_flow_vs_ddpm", compared(fd("flow, Euler", 10), fd("DDPM", schedule.T)))
ml.glue("d72_heun5_vs_ddpm", compared(fd("flow, Heun", 3), fd("DDPM", schedule.T)))
ml.glue("d72_euler50_vs_10", compared(fd("flow, Euler", 50), fd("flow, Euler", 10)))

# %% [markdown]
# Read the left panel from right to left. DDPM's chain scores {glue:}`d72_fd_ddpm` with
# 1,000 evaluations. Deterministic DDIM scores {glue:}`d72_fd_ddim100`,
# {glue:}`d72_fd_ddim50`, {glue:}`d72_fd_ddim20` and {glue:}`d72_fd_ddim10` at 100, 50, 20
# and 10 steps; with $\eta = 1$ the same network gives {glue:}`d72_fd_ddim50_eta1` at 50
# steps and {glue:}`d72_fd_ddim10_eta1` at 10 ($\eta = 0$ is {glue:}`d72_eta0_vs_eta1_10`
# $\eta = 1$ at 10 steps). The flow model, the same network trained for the same number of
# steps, scores {glue:}`d72_fd_euler10` with 10 Euler steps: {glue:}`d72_flow_vs_ddpm` DDPM's
# 1,000 steps and {glue:}`d72_flow_vs_ddim_eta1` DDIM with $\eta = 1$ at 10. Heun with 3 steps
# (5 NFE) scores {glue:}`d72_fd_heun3`, {glue:}`d72_heun5_vs_ddpm` DDPM; at 9 NFE Heun is
# {glue:}`d72_heun_vs_euler` Euler at 10, and Euler at 50 steps is
# {glue:}`d72_euler50_vs_10` Euler at 10; where more steps do not help, the error left is
# the network's, not the integrator's. The right panel is the cost: time is proportional to
# NFE, between {glue:}`d72_ms_per_nfe_lo` and {glue:}`d72_ms_per_nfe_hi` ms per evaluation
# per image here (a batch of {glue:}`d72_n_eval`, on the machine in the banner), whatever the
# sampler: its own arithmetic is free next to the network. The real-vs-real floor
# ({glue:}`d72_floor` ± {glue:}`d72_floor_sd`, grey band) is what a perfect model would score
# with this many samples. One seed per model.
#
# The samples themselves, the first 20 (two of each class) of each set:

# %%
picks = [("DDPM", schedule.T), ("DDIM (eta 0)", 50), ("DDIM (eta 0)", 10), ("DDIM (eta 1)", 10),
         ("flow, Euler", 10), ("flow, Heun", 5)]
picks = [p for p in picks if p in grids]
fig, axes = plt.subplots(math.ceil(len(picks) / 2), 2, figsize=(9, 1.7 * math.ceil(len(picks) / 2)))
for ax, key in zip(axes.flat, picks):
    x, n_fe = grids[key]
    D.show_samples(x, nrow=10, ax=ax, title=f"{key[0]}, {key[1]} steps ({n_fe} NFE)")
for ax in list(axes.flat)[len(picks):]:
    ax.set_axis_off()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Claimed vs measured
#
# | source | claim (CIFAR-10, Inception FID) | measured here (our Fréchet distance, {glue:}`d72_n_eval` samples) |
# | --- | --- | --- |
# | {cite}`song2021ddim` | DDIM with $\eta = 0$ loses little with 20x fewer steps: FID 4.67 at 50 steps, 4.04 at 1,000 | DDIM ($\eta = 0$) at 50 steps: {glue:}`d72_fd_ddim50`, {glue:}`d72_ddim50_vs_ddpm` DDPM's 1,000 steps ({glue:}`d72_fd_ddpm`); with $\eta = 1$: {glue:}`d72_fd_ddim50_eta1`, {glue:}`d72_eta1_50_vs_ddpm` DDPM |
# | {cite}`song2021ddim` | with few steps $\eta = 0$ is far better than DDPM's variance: 13.36 vs 41.07 at 10 steps | {glue:}`d72_fd_ddim10` vs {glue:}`d72_fd_ddim10_eta1` at 10 steps: $\eta = 0$ is {glue:}`d72_eta0_vs_eta1_10` $\eta = 1$ (not reproduced with our short training, see section 7.2.2) |
# | {cite}`song2021ddim` | 10x to 50x faster sampling in wall-clock time | time is proportional to NFE ({glue:}`d72_ms_per_nfe_lo`-{glue:}`d72_ms_per_nfe_hi` ms per NFE per image): 50 and 10 steps cost {glue:}`d72_ms_ddim50` and {glue:}`d72_ms_ddim10` ms per image, 20x and 100x fewer evaluations than DDPM |
# | {cite}`lipman2023flow` | flow matching with straight (optimal-transport) paths samples well with fewer NFE than diffusion paths | flow + Euler at 10 NFE: {glue:}`d72_fd_euler10`, {glue:}`d72_flow_vs_ddpm` DDPM at 1,000 NFE and {glue:}`d72_flow_vs_ddim_eta1` DDIM at 10 |
# | {cite}`karras2022edm` | Heun's second-order step reaches a given quality with fewer NFE than Euler | Heun at 9 NFE {glue:}`d72_fd_heun5` vs Euler at 10 NFE {glue:}`d72_fd_euler10`: {glue:}`d72_heun_vs_euler` |
#
# The papers' absolute numbers are Inception FIDs of large CIFAR-10 models on 50,000
# samples; ours are distances in a Fashion-MNIST classifier's features on a few hundred
# samples of a small model trained for minutes, so only the direction and rough size of
# each effect can be compared. Liu et al.'s one-step generation needs reflow (retraining
# on the model's own couplings) or distillation, which this notebook does not do.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1: Clip the guess (implement, medium)
#
# DDPM's official code and most libraries (diffusers' `clip_sample`) clip $\hat x_0$ to the
# data range $[-1, 1]$ at every step, and recompute the noise that the clipped guess
# implies, $\epsilon' = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0)/\sqrt{1 - \bar\alpha_t}$. Write
# `ddim_step_clipped` ($\eta = 0$), sample the eps model with it at 10 and 50 steps from
# the same starting noise as `ml.diffusion.generate`, and compare with the unclipped rows.
# Why can the clipped update not blow up?

# %% tags=["solution", "hide-cell"]
# Solution 1
def ddim_step_clipped(model, x, t, t_prev, alphas_cumprod):
    a = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    eps = model(x, torch.full((len(x),), t, device=x.device))
    x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)              # the noise this x0 implies
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


clipped = []
for steps in ml.trim([10, 50]):
    net = D.Guided(eps_model, torch.arange(n_eval, device=dev) % 10)
    x = torch.randn(n_eval, *x_test.shape[1:], generator=torch.Generator(dev).manual_seed(0), device=dev)
    ts = D.timesteps(schedule.T, steps)
    with torch.no_grad():
        for t, t_prev in zip(ts, ts[1:] + [-1]):
            x = ddim_step_clipped(net, x, t, t_prev, schedule.alphas_cumprod)
    clipped.append({"sampler": "DDIM (eta 0), x0 clipped", "steps": steps, **score(x.cpu())})
    clipped.append({k: v for k, v in row("DDIM (eta 0)", steps).items() if k != "ms per image"})
ml.bench.Table(clipped, title="Solution 1: DDIM with and without clipping the guess of x_0",
               formats={"precision": ".2f", "recall": ".2f"})

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# The table above compares both from the same noise. Substituting $\epsilon'$, the update
# becomes $x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{(1 - \bar\alpha_{t'})/(1 - \bar\alpha_t)}\,(x_t - \sqrt{\bar\alpha_t}\,\hat x_0)$:
# the coefficient of $x_t$ is below 1 and $\hat x_0$ is bounded, so $x_t$ stays bounded
# whatever the network says. Clipping is a correction for an imperfect network (an exact
# one never predicts $\hat x_0$ outside the data's range at the end); it changes the ODE,
# so it is a different sampler, with the same cost per step.
# :::

# %% [markdown]
# ### Exercise 2: Leading or trailing timesteps (implement, medium)
#
# Write `timesteps_leading(T, steps)` returning DDIM's original $\lfloor iT/S\rfloor$,
# $i = S-1, \dots, 0$, and a `ddim_sample` variant that uses it (copy the loop of
# `ml.diffusion.ddim_sample`). Compare the Fréchet distance of both at 10 steps. Which
# noise level does the leading variant start from, and why does that matter most with few
# steps?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# ```python
# def timesteps_leading(T, steps):
#     return [i * (T // steps) for i in reversed(range(steps))]      # 900, 800, ..., 0 for S = 10
#
# def ddim_sample_leading(model, shape, schedule, steps, generator=None, device=None):
#     x = torch.randn(shape, generator=generator).to(device)
#     ts = timesteps_leading(schedule.T, steps)
#     for t, t_prev in zip(ts, ts[1:] + [-1]):
#         x = D.ddim_step(model, x, t, t_prev, schedule.alphas_cumprod)
#     return x
#
# y = torch.arange(n_eval, device=dev) % 10
# lead = ddim_sample_leading(D.Guided(eps_model, y), (n_eval, *x_test.shape[1:]), schedule, 10,
#                            torch.Generator().manual_seed(0), dev)
# print(score(lead.cpu()), row("DDIM (eta 0)", 10))
# ```
# With $S = 10$ the leading grid's first step treats pure noise as if it were $x_{900}$,
# where $\sqrt{\bar\alpha_{900}} \approx 0.02$ of the signal should already be present; the
# network, trained on the true $x_{900}$, is shown an input from the wrong distribution.
# The error is one step out of ten, so it shows at few steps (lower contrast, a worse
# distance) and vanishes as $S \to T$.
# :::

# %% [markdown]
# ### Exercise 3: DDIM inverts (implement, hard)
#
# With $\eta = 0$ DDIM is a deterministic map, and running its update with $t' > t$ maps an
# image to noise (the ODE backwards). Encode 16 test images to $x_T$ with 50 inverse steps,
# decode them with 50 DDIM steps, and measure the reconstruction error. Song et al. report
# low errors that shrink with more steps; does that hold here?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# ```python
# x0, y0 = D.images(dataset, train=False, n=None, device=dev)
# x0, y0 = x0[:16], y0[:16]
# net = D.Guided(eps_model, y0)                                      # the images' true labels
# ts = D.timesteps(schedule.T, 50)[::-1]                             # 19, 39, ..., 999 upwards
# x = x0
# for t_prev, t in zip([-1] + ts[:-1], ts):                          # x_{t_prev} -> x_t (t > t_prev)
#     a_prev = 1.0 if t_prev < 0 else float(schedule.alphas_cumprod[t_prev])
#     eps = net(x, torch.full((16,), max(t_prev, 0), device=dev))
#     x0_hat = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
#     a = float(schedule.alphas_cumprod[t])
#     x = math.sqrt(a) * x0_hat + math.sqrt(1 - a) * eps
# back = x
# for t, t_prev in zip(ts[::-1], ts[::-1][1:] + [-1]):
#     back = D.ddim_step(net, back, t, t_prev, schedule.alphas_cumprod)
# print((back - x0).pow(2).mean().item())
# ```
# The error is small next to the images' variance and falls with more steps, because both
# directions are discretizations of the same ODE; it is not zero because the inverse step
# evaluates $\epsilon_\theta$ at the start of each interval, not the end (a first-order
# approximation). This is what makes DDIM usable for image editing.
# :::

# %% [markdown]
# ### Exercise 4: Batch size and latency (measure, medium)
#
# The table's times are per image in a batch of {glue:}`d72_n_eval`. Time one network
# evaluation of the flow U-Net for batches of 1, 16 and 256 images and compute the time per
# image. What does a user waiting for *one* image with 10 Euler steps wait, and why is it
# more than 10 times the table's per-NFE cost?

# %% tags=["solution", "hide-cell"]
# Solution 4
lat = []
for bs in ml.trim([1, 16, 256]):
    xb = torch.randn(bs, *x_test.shape[1:], device=dev)
    tb, yb = torch.full((bs,), 500.0, device=dev), torch.arange(bs, device=dev) % 10
    with torch.no_grad():
        t_ = ml.bench.time_fn(flow_model, xb, tb, yb, warmup=2, repeat=ml.pick(smoke=3, cpu=10, gpu=20))
    lat.append({"batch": bs, "time per call (ms)": 1e3 * t_.median, "time per image (ms)": 1e3 * t_.median / bs})
ml.bench.Table(lat, title="Solution 4: one evaluation of the flow U-Net")

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# One image waits 10 times the batch-1 time per call, which is many times the per-image
# cost in a large batch: a single small image does not fill the machine's vector units or
# cores (or a GPU's streaming multiprocessors), and per-call overheads (Python, dispatch,
# kernel launches) are paid once per call whatever the batch. Few-step samplers reduce
# latency exactly in proportion to NFE; batching reduces cost per image but not latency.
# :::

# %% [markdown]
# ### Exercise 5: One Euler step (explain, medium)
#
# Sample the flow model with a single Euler step and look at the images. Show that one
# step from $x_1 = \epsilon$ returns $\mathbb E[x_0 \mid x_1]$, and explain what you see.

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 5
# One Euler step from $t = 1$ to $0$ gives $x_0 = x_1 - v_\theta(x_1, 1)$. The exact field is
# $v^\star(x, 1) = \mathbb E[\epsilon - x_0 \mid x_1 = x] = x - \mathbb E[x_0 \mid x_1 = x]$,
# because at $t = 1$ the point is the noise itself. So the step returns
# $\mathbb E[x_0 \mid x_1]$: since pure noise says nothing about the image, that is the mean
# image of the class (with our labels), a grey blur. Many paths cross at every $x_t$ and the
# learned field is their average, which bends the trajectories; only near $t = 0$ do they
# separate into distinct garments. Rectified flow's reflow trains on pairs
# $(x_1, \hat x_0)$ produced by the model itself, whose paths do not cross, so that the
# average becomes straight and one step suffices.
# ```python
# one, _ = D.generate(flow_model, flow_record, "euler", 1, n=20, cache=False)
# D.show_samples(one, nrow=10)
# ```
# :::

# %% [markdown]
# ## Key takeaways
#
# - DDIM reuses the DDPM network: re-noise the current guess $\hat x_0$ to an earlier level.
#   It lets the chain skip steps; with $\eta = 0$ it becomes a deterministic ODE solver, which
#   needs an accurate network: with our minutes of training the deterministic trajectories
#   drift, while the stochastic variant with 50 steps keeps DDPM's quality.
# - Flow matching regresses the velocity of straight noise-to-data paths. With the same
#   network and training budget it reached DDPM's quality in 5 to 10 evaluations here, and its
#   target has no $1/\sqrt{\bar\alpha_t}$ amplification of errors at high noise.
# - The cost of sampling is NFE times the cost of one network evaluation: time is
#   proportional to NFE for every sampler here, so NFE is the axis to compare samplers on,
#   at one batch size and on one machine.
# - Quality against NFE is a curve, not a number: compare samplers at equal NFE, against the
#   real-vs-real floor of the same sample count and its spread.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
