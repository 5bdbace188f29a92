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
# # 7.1 DDPM from scratch: noise, a denoiser, and a thousand steps back
#
# A diffusion model learns to undo noise. Ho, Jain and Abbeel's DDPM {cite}`ho2020ddpm`
# destroys an image in $T = 1000$ small Gaussian steps, trains one network to predict the
# noise that was added at any step, and generates by running the chain backwards from
# pure noise: a thousand network evaluations for one image. That recipe reached a
# state-of-the-art FID of 3.17 on unconditional CIFAR-10, and it is the ancestor of every
# image generator since; improved DDPM {cite}`nichol2021improved` replaced its noise schedule,
# among other changes. It is
# also the reason this chapter exists: a sample costs $T$ sequential forward passes, and the
# rest of the chapter takes that cost apart (notebook 7.2: fewer steps; 7.3: guidance and
# backbones). Here we build the method from its equations, train it on Fashion-MNIST
# {cite}`xiao2017fashion` (CIFAR-10 {cite}`krizhevsky2009cifar` at the gpu scale), sample
# from it, and build the yardstick the chapter measures with: a Fréchet distance in the
# feature space of a classifier we train ourselves.
#
# **Learning objectives.** After this notebook you can
# 1. derive the closed form $q(x_t \mid x_0)$ of the forward process and check it against
#    the step-by-step chain;
# 2. compare the linear and cosine noise schedules by their signal-to-noise ratio;
# 3. write DDPM's noise-prediction loss and its ancestral sampler, and check both with the
#    exact denoiser of a one-point distribution;
# 4. train a small class-conditional U-Net and sample from it, and say what a sample costs;
# 5. compute a Fréchet distance, precision and recall in a trained classifier's feature
#    space, with the real-versus-real floor, and explain why it is not Inception FID.

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
import torch.nn.functional as F

import minilib as ml

D = ml.diffusion
ml.describe()
dev = ml.device()
dataset = ml.pick(smoke="fashion_mnist", cpu="fashion_mnist", gpu="cifar10")
n_eval = ml.pick(smoke=16, cpu=200, gpu=1000)     # samples per quality measurement
classes = D.DATASETS[dataset]["classes"]

# %% [markdown]
# ## 7.1.1 The forward process and its closed form
#
# DDPM's forward process adds a little Gaussian noise at each of $T$ steps, scaling the
# image down so that its variance stays bounded:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1 - \beta_t}\, x_{t-1},\ \beta_t I\right),
# \qquad t = 1, \dots, T,$$
#
# with small variances $\beta_t$ (the *noise schedule*). A sum of independent Gaussians is
# Gaussian, so any $x_t$ can be reached from $x_0$ in one step. With $\alpha_t = 1 - \beta_t$
# and $\bar\alpha_t = \prod_{s \le t} \alpha_s$ (`alphas_cumprod`):
#
# $$q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\right),
# \qquad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon,\ \ \epsilon \sim \mathcal N(0, I).$$
#
# (Induction: if $x_{t-1} = \sqrt{\bar\alpha_{t-1}} x_0 + \sqrt{1 - \bar\alpha_{t-1}}\,\epsilon'$,
# then $x_t = \sqrt{\alpha_t \bar\alpha_{t-1}} x_0 + \sqrt{\alpha_t (1 - \bar\alpha_{t-1}) + \beta_t}\,\epsilon''$
# and $\alpha_t(1 - \bar\alpha_{t-1}) + 1 - \alpha_t = 1 - \bar\alpha_t$.) Training never
# runs the chain: it jumps straight to a random $t$. Images live in $[-1, 1]$, and in code
# the index `t = 0 .. T-1` is the paper's step $t + 1$. Here is the chain, step by step, and
# a check of its mean and variance against the closed form:

# %%
def forward_naive(x0, t, betas):
    """Run the forward chain for steps 0..t: x <- sqrt(1 - beta_s) x + sqrt(beta_s) z."""
    x = x0
    for s in range(t + 1):
        x = (1 - betas[s]).sqrt() * x + betas[s].sqrt() * torch.randn_like(x)
    return x


schedule = D.NoiseSchedule.linear()
x_train, y_train = D.images(dataset, train=True, n=ml.pick(smoke=2000, cpu=10_000, gpu=10_000), device="cpu")
torch.manual_seed(0)
copies = x_train[:1].double().expand(ml.pick(smoke=500, cpu=4000, gpu=4000), -1, -1, -1)   # one image, many times
t = 299
a = schedule.alphas_cumprod[t]
resid = forward_naive(copies, t, schedule.betas) - a.sqrt() * copies   # should be sqrt(1 - abar) eps
mean_err, var_err = resid.mean().abs().item(), (resid.var() - (1 - a)).abs().item()
print(f"t = {t}: mean of x_t - sqrt(abar) x0 = {resid.mean().item():+.4f}, variance {resid.var().item():.4f}, 1 - abar = {1 - a.item():.4f}")

# %% tags=["nbval-check-output"]
assert mean_err < 0.01 and var_err < 0.01
print("step-by-step chain matches q(x_t | x_0) in mean and variance (within 0.01):", mean_err < 0.01 and var_err < 0.01)

# %% [markdown]
# The library's `q_sample` is the closed form, one line:

# %%
ml.show(D.q_sample)

# %% [markdown]
# ## 7.1.2 Two schedules: linear and cosine
#
# DDPM's $\beta_t$ rise linearly from $10^{-4}$ to $0.02$. Nichol and Dhariwal
# {cite}`nichol2021improved` noticed that this destroys the image too early: for the last
# part of the chain $x_t$ is almost pure noise, so those steps teach the network little.
# They defined $\bar\alpha_t$ directly instead, as a cosine that falls slowly at both ends,
#
# $$\bar\alpha_t = \frac{f(t)}{f(0)}, \qquad f(t) = \cos^2\!\left(\frac{t/T + s}{1 + s}\cdot\frac{\pi}{2}\right), \qquad s = 0.008,$$
#
# with $\beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}$ clipped at 0.999. The natural axis to
# compare them on is the signal-to-noise ratio of $x_t$,
# $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$:

# %%
ml.show(D.NoiseSchedule.cosine)

# %%
cosine = D.NoiseSchedule.cosine()
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for s, style in ((schedule, "-"), (cosine, "--")):
    axes[0].plot(s.alphas_cumprod, style, label=s.name)
    axes[1].plot(s.snr().log(), style, label=s.name)
axes[0].set(xlabel="timestep t", ylabel=r"$\bar\alpha_t$ (signal variance)")
axes[1].set(xlabel="timestep t", ylabel="log SNR(t)")
axes[0].legend()
plt.tight_layout()
plt.show()
nearly_noise = {s.name: (s.alphas_cumprod < 0.01).double().mean().item() for s in (schedule, cosine)}
print({k: f"{v:.0%} of the steps have abar_t < 0.01" for k, v in nearly_noise.items()})

# %% tags=["remove-cell"]
ml.glue("d71_lin_noise_frac", 100 * nearly_noise["linear"], ".0f")
ml.glue("d71_cos_noise_frac", 100 * nearly_noise["cosine"], ".0f")
ml.glue("d71_lin_sqrt_abar_T", math.sqrt(schedule.alphas_cumprod[-1]), ".4f")

# %% [markdown]
# With the linear schedule {glue:}`d71_lin_noise_frac`% of the steps have
# $\bar\alpha_t < 0.01$ (less than 1% of the variance is signal), against
# {glue:}`d71_cos_noise_frac`% for the cosine one, whose log SNR falls almost linearly in
# the middle. The same image under both schedules, at the same timesteps, shows it:

# %%
ts = [0, 100, 250, 400, 550, 700, 850, 999]
img = x_train[:1].repeat(len(ts), 1, 1, 1)
noise = torch.randn(1, *img.shape[1:], generator=torch.Generator().manual_seed(1)).expand_as(img)
rows = [D.q_sample(img, torch.tensor(ts), noise, s) for s in (schedule, cosine)]
fig, ax = plt.subplots(figsize=(8, 2.6))
D.show_samples(torch.cat(rows), nrow=len(ts), ax=ax)
ax.set_title(f"x_t at t = {', '.join(map(str, ts))}: linear (top), cosine (bottom)", fontsize=10)
plt.show()

# %% [markdown]
# Neither schedule quite reaches pure noise: $\sqrt{\bar\alpha_T}$ is
# {glue:}`d71_lin_sqrt_abar_T` for the linear one, so a trace of the image survives at
# $t = T$, while sampling starts from exact $\mathcal N(0, I)$. It is a small mismatch at
# $T = 1000$; it matters for schedules with fewer steps. The chapter's models use DDPM's
# linear schedule (the cosine one is exercise 4).
#
# ## 7.1.3 The denoiser and the loss
#
# The reverse process needs $q(x_{t-1} \mid x_t)$, which depends on the whole data
# distribution. DDPM models it as a Gaussian whose mean is computed from a prediction of
# the noise, $\epsilon_\theta(x_t, t)$, and shows that the variational bound then reduces,
# up to weights that they drop, to a plain regression on the noise (their eq. 14):
#
# $$L_\text{simple} = \mathbb E_{t, x_0, \epsilon}\,\bigl\|\epsilon - \epsilon_\theta\bigl(\sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon,\ t\bigr)\bigr\|^2 .$$

# %%
ml.show(D.ddpm_loss)

# %% [markdown]
# The network is a small U-Net {cite}`ronneberger2015unet` as DDPM adapted it: residual
# blocks with GroupNorm {cite}`wu2018groupnorm` at two or three resolutions, self-attention at
# the lowest one, skip connections from each level down to the same level up, and a vector
# $c$ that tells every block the timestep: a sinusoidal embedding of $t$ through a small MLP.
# Our models also get the class label, added to $c$, and forget it for 10% of the training
# images (the label is replaced by a "no label" token): that costs nothing here and lets
# notebook 7.3 use the same networks for classifier-free guidance. Sampling with labels drawn
# uniformly and no guidance, as this notebook and 7.2 do, samples the data distribution
# $p(x) = \sum_y p(y)\,p(x \mid y)$. The output layer starts at zero, so an untrained network
# predicts $\epsilon_\theta = 0$ and its loss is $\mathbb E\|\epsilon\|^2 = 1$ per pixel:

# %%
ml.show(ml.models.UNet.forward)

# %%
cfg = D.config("eps", dataset=dataset)
fresh = D._build(cfg)
torch.manual_seed(0)
xb = x_train[:256]
loss0 = D.ddpm_loss(fresh, xb, schedule, y_train[:256]).item()
info = ml.bench.Table([{"model": "U-Net", "parameters": ml.bench.count_params(fresh),
                        "FLOPs per image": ml.bench.count_flops(fresh.eval(), xb[:1], torch.zeros(1, dtype=torch.long),
                                                                torch.zeros(1, dtype=torch.long)),
                        "loss at initialization": loss0}],
                      formats={"FLOPs per image": ml.bench.fmt_flops})
info

# %% tags=["nbval-check-output"]
assert abs(loss0 - 1) < 0.05
print("an untrained (zero-output) U-Net has loss E|eps|^2 = 1 (within 0.05):", abs(loss0 - 1) < 0.05)

# %% [markdown]
# ## 7.1.4 Training
#
# `ml.diffusion.trained("eps")` trains this U-Net with $L_\text{simple}$: AdamW
# {cite}`loshchilov2019adamw` on random batches of the training set, a short warm-up and a
# cosine decay of the learning rate, gradient clipping, and an exponential moving average
# (EMA) of the weights, which DDPM also samples from (decay 0.9999 there; ours is shorter, as
# our runs are). The EMA weights are what is cached and loaded, so notebooks 7.2 and 7.3 get
# the same model back in a second. Its recipe at this scale:

# %%
model, record = D.trained("eps", dataset=dataset)
print({k: record["config"][k] for k in ("dim", "dim_mults", "depth", "steps", "batch_size", "lr", "ema_decay")})
hist = ml.train.History.from_dict(record["history"])
plt.figure(figsize=(5, 3))
plt.plot(hist.column("step"), hist.column("train_loss"), "o-")
plt.xlabel("optimizer step")
plt.ylabel(r"$L_\mathrm{simple}$ (mean over the logged steps)")
plt.yscale("log")
plt.show()
images_seen = record["config"]["steps"] * record["config"]["batch_size"]
print(f"trained for {record['train_seconds']:.0f} s on {record['hardware']['device']}: "
      f"{images_seen:,} images ({images_seen / record['config']['n_train']:.1f} epochs), "
      f"{ml.bench.fmt_flops(record['metrics']['train_flops'])} of training")

# %% tags=["remove-cell"]
ml.glue("d71_train_s", record["train_seconds"], ".0f")
ml.glue("d71_epochs", images_seen / record["config"]["n_train"], ".1f")
ml.glue("d71_final_loss", record["metrics"]["train_loss"], ".3f")

# %% [markdown]
# The loss falls quickly from 1 and then slowly, to {glue:}`d71_final_loss` in
# {glue:}`d71_train_s` s ({glue:}`d71_epochs` epochs). It cannot reach zero: at large $t$
# the noise is almost all of $x_t$ and easy to predict, at small $t$ it is a faint
# perturbation of an image the network cannot know exactly (exercise 2 measures the loss
# per timestep).
#
# ## 7.1.5 The ancestral sampler
#
# Given $x_0$, the step back is a Gaussian with a closed form (DDPM eqs. 6-7):
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal N\bigl(\tilde\mu_t, \tilde\beta_t I\bigr), \qquad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\,x_0 + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\,x_t,
# \qquad \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\,\beta_t .$$
#
# The sampler plugs in the network's estimate $\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon_\theta)/\sqrt{\bar\alpha_t}$;
# the two terms then simplify to $\tilde\mu_t = (x_t - \beta_t \epsilon_\theta / \sqrt{1 - \bar\alpha_t})/\sqrt{\alpha_t}$,
# DDPM's Algorithm 2. We write the step in the first form and check that the library's,
# written in the second, is the same function:

# %%
def p_sample_naive(model, x, t, s, z):
    """x_t -> x_{t-1}: the posterior q(x_{t-1} | x_t, x0_hat), mean in the x0 form."""
    b, a, ab = s.betas[t], s.alphas[t], s.alphas_cumprod[t]
    ab_prev = s.alphas_cumprod[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    eps = model(x, torch.full((len(x),), t))
    x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
    mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x
    return mean + ((1 - ab_prev) / (1 - ab) * b).sqrt() * z


ml.show(D.p_sample)

# %%
torch.manual_seed(0)
x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
w = torch.randn(1, dtype=torch.float64)
toy = lambda x, t: torch.tanh(w * x) * (1 + t.view(-1, 1, 1, 1) / 1000)   # any function of (x, t)
worst = 0.0
for t in (999, 500, 10, 0):
    z = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(t))
    ours = D.p_sample(toy, x, t, schedule, torch.Generator().manual_seed(t))
    worst = max(worst, (ours - p_sample_naive(toy, x, t, schedule, z if t > 0 else 0 * z)).abs().max().item())

# %% tags=["nbval-check-output"]
assert worst < 1e-12
print("eps form == x0 form of the posterior step, float64 (max error < 1e-12):", worst < 1e-12)

# %% [markdown]
# A test no trained network can fail for us: if the data is a single image $x^\star$, the
# exact noise predictor is known, $\epsilon^\star(x_t, t) = (x_t - \sqrt{\bar\alpha_t}\,x^\star)/\sqrt{1 - \bar\alpha_t}$,
# and the sampler must return $x^\star$ from any starting noise, through all 1,000 steps:

# %% tags=["nbval-check-output"]
x_star = x_train[:2].double()
ab = schedule.alphas_cumprod
oracle = lambda x_t, t: (x_t - ab[t].sqrt().view(-1, 1, 1, 1) * x_star) / (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
err = (D.ddpm_sample(oracle, x_star.shape, schedule, torch.Generator().manual_seed(0), dtype=torch.float64) - x_star).abs().max().item()
assert err < 1e-10
print("ancestral sampler with the exact denoiser returns the data point (error < 1e-10):", err < 1e-10)

# %% [markdown]
# Now the trained network. `ml.diffusion.generate` draws labels $0, 1, \dots, 9, 0, \dots$
# (so each class gets a tenth of the samples), runs the sampler, times it and caches the
# samples: notebook 7.2 reuses these, which took the longest to make. Here are the first
# 80, one class per column:

# %%
samples, ddpm_seconds = D.generate(model, record, "ddpm", n=n_eval)
D.show_samples(samples[:80], nrow=10, title=f"DDPM, {schedule.T} steps: one class per column")
plt.show()
print("columns:", ", ".join(classes))

# %% [markdown]
# The chain does its work late. Following a few samples through the steps shows
# $x_t$ and, more telling, the network's current guess $\hat x_0$ of the final image:

# %%
n_traj = ml.pick(smoke=2, cpu=8, gpu=8)
x = torch.randn(n_traj, *samples.shape[1:], generator=torch.Generator().manual_seed(1)).to(dev)
net = D.Guided(model, torch.arange(n_traj, device=dev) % 10, 0.0)
shown, guesses = [], []
snapshots = (999, 800, 600, 400, 200, 50, 0)
for t in ml.trim(list(reversed(range(schedule.T)))):
    if t in snapshots:
        with torch.no_grad():
            eps = net(x, torch.full((n_traj,), t, device=dev))
        guesses.append(((x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()).cpu())
        shown.append(x.cpu())
    x = D.p_sample(net, x, t, schedule)
fig, axes = plt.subplots(1, 2, figsize=(9, 5))
D.show_samples(torch.stack(shown, 1).flatten(0, 1), nrow=len(snapshots), ax=axes[0], title="x_t")
D.show_samples(torch.stack(guesses, 1).flatten(0, 1), nrow=len(snapshots), ax=axes[1], title=r"guess of x_0")
fig.suptitle(f"t = {', '.join(map(str, snapshots))} (left to right)")
plt.show()

# %% [markdown]
# For most of the chain the guess is a blurred class average; the outline of a garment
# settles in the middle, and its details in the last few hundred steps. Every one of the
# 1,000 steps is a full forward pass of the U-Net, one after the other:

# %%
cost = ml.bench.Table([{
    "sampler": f"DDPM ({schedule.T} steps)", "NFE per sample": schedule.T,
    "samples": n_eval, "time (s)": ddpm_seconds,
    "time per sample (ms)": 1e3 * ddpm_seconds / n_eval,
    "time per NFE per image (ms)": 1e3 * ddpm_seconds / n_eval / schedule.T}],
    title=f"sampling cost on {dev.type}, one batch of {n_eval} (measured when the samples were made)")
cost

# %% tags=["remove-cell"]
ml.glue("d71_ddpm_ms", 1e3 * ddpm_seconds / n_eval, ".0f")
ml.glue("d71_nfe_ms", 1e3 * ddpm_seconds / n_eval / schedule.T, ".2f")

# %% [markdown]
# One sample costs {glue:}`d71_ddpm_ms` ms here: a thousand forward passes of
# {glue:}`d71_nfe_ms` ms each (per image, in a batch of {glue:}`d71_n_eval`). The samples
# and their time are cached together, so a re-run shows the time measured when they were
# made. Notebook 7.2 brings that cost down.
#
# ## 7.1.6 Scoring samples: a Fréchet distance in our own feature space
#
# Looking at grids does not compare samplers. The standard number is FID {cite}`heusel2017fid`:
# embed real and generated images with a network, fit a Gaussian to each set of features, and
# report the Fréchet (2-Wasserstein) distance between the Gaussians
# {cite}`dowson1982frechet`,
#
# $$d^2 = \|\mu_r - \mu_g\|^2 + \operatorname{Tr}\!\left(\Sigma_r + \Sigma_g - 2\,(\Sigma_r \Sigma_g)^{1/2}\right).$$
#
# FID uses the pool features (2048 numbers) of an Inception-v3 trained on ImageNet, on
# 50,000 samples resized to $299\times299$. **Our numbers are not FID and cannot be compared
# with any published FID.** Our feature network is a narrow ResNet-9 (chapter 1's CNN,
# 64 pooled features) trained on Fashion-MNIST itself; Inception has never seen grayscale
# $28\times28$ clothes, and its features depend on ImageNet's classes
# {cite}`kynkaanniemi2023role`. The value also depends on the number of samples (the
# estimate is biased, {cite}`chong2020unbiased`) and on resizing details
# {cite}`parmar2022aliased`. What transfers is the method: compare models and samplers with
# one feature network, one sample count, one reference set, and report the real-versus-real
# distance as the floor.
#
# The trace of the matrix square root needs no `sqrtm`: $\Sigma_r^{1/2}\Sigma_g\Sigma_r^{1/2}$
# is symmetric, positive semi-definite and similar to $\Sigma_r\Sigma_g$, so
# $\operatorname{Tr}(\Sigma_r\Sigma_g)^{1/2}$ is the sum of the square roots of its eigenvalues.

# %%
ml.show(D.frechet_distance)

# %% [markdown]
# Checked against the closed form for two Gaussians. With diagonal covariances the
# distance is $\|\mu_1 - \mu_2\|^2 + \sum_i (\sqrt{a_i} - \sqrt{b_i})^2$; we build feature
# sets whose sample mean and covariance are exactly what we ask for (whiten, then colour):

# %%
def exact_gaussian(n, mu, cov, seed):
    z = torch.randn(n, len(mu), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T      # sample covariance = I
    return z @ torch.linalg.cholesky(cov).T + mu


mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
v1, v2 = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 1.0], dtype=torch.float64)
fd = D.frechet_distance(exact_gaussian(300, mu1, torch.diag(v1), 0), exact_gaussian(200, mu2, torch.diag(v2), 1))
closed = ((mu1 - mu2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum()).item()
self_fd = D.frechet_distance(x_train[:500].flatten(1)[:, ::13], x_train[:500].flatten(1)[:, ::13])

# %% tags=["nbval-check-output"]
assert abs(fd - closed) < 1e-9 and abs(self_fd) < 1e-8
print(f"closed form of two Gaussians matches (error < 1e-9): {abs(fd - closed) < 1e-9}; "
      f"a set against itself gives 0 (< 1e-8): {abs(self_fd) < 1e-8}")

# %% [markdown]
# A single distance mixes two failures: samples that look wrong (fidelity) and samples that
# all look alike (diversity). Kynkäänniemi et al.'s improved precision and recall
# {cite}`kynkaanniemi2019precision` separate them with nearest-neighbour balls around each
# feature vector: **precision** is the fraction of generated samples that fall inside the
# real data's balls, **recall** the fraction of real samples inside the generated ones'.

# %%
ml.show(D.precision_recall)

# %% [markdown]
# The feature network is trained once and cached, like the models:

# %%
fnet, frecord = D.feature_net(dataset)
print(f"feature network: ResNet-9, width {frecord['config']['width']}, {frecord['metrics']['features']} features, "
      f"test accuracy {100 * frecord['metrics']['test_accuracy']:.1f}%")

# %% tags=["remove-cell"]
ml.glue("d71_fnet_acc", 100 * frecord["metrics"]["test_accuracy"], ".1f")
ml.glue("d71_fnet_dim", frecord["metrics"]["features"])

# %% [markdown]
# It classifies {glue:}`d71_fnet_acc`% of the test images correctly from its
# {glue:}`d71_fnet_dim` pooled features: the features separate the classes, which is what
# the distance needs. What do the numbers mean? We score sets whose quality we know: held-out real images
# (the floor: two finite samples of the same distribution are never at distance 0), real
# images with added noise or blur (Heusel et al. showed FID rising steadily with such
# disturbances), a set of only two classes (perfect images, no diversity), and our DDPM
# samples. Every set has {glue:}`d71_n_eval` images and is compared with the same
# {glue:}`d71_n_eval` test images.

# %%
x_test, y_test = D.images(dataset, train=False, device="cpu")
ref = D.features(fnet, x_test[:n_eval])
n_floor = ml.pick(smoke=2, cpu=5, gpu=5)
floors = [D.frechet_distance(ref, D.features(fnet, x_test[n_eval * (k + 1):n_eval * (k + 2)])) for k in range(n_floor)]
other = x_test[n_eval:2 * n_eval]
g = torch.Generator().manual_seed(0)
blur = lambda x: F.interpolate(F.avg_pool2d(x, 2), size=x.shape[-2:], mode="bilinear", align_corners=False)
two = x_test[(y_test == 1) | (y_test == 7)][n_eval:2 * n_eval]
sets = {"real (other test images)": other,
        "real + noise, sigma 0.1": other + 0.1 * torch.randn(other.shape, generator=g),
        "real + noise, sigma 0.3": other + 0.3 * torch.randn(other.shape, generator=g),
        "real, blurred (2x down and up)": blur(other),
        f"real, two classes only ({classes[1]}, {classes[7]})": two,
        f"DDPM samples ({schedule.T} steps)": samples}
rows = []
for name, xs in sets.items():
    f = D.features(fnet, xs)
    p, r = D.precision_recall(ref, f)
    rows.append({"image set": name, "Fréchet distance": D.frechet_distance(ref, f), "precision": p, "recall": r})
scores = ml.bench.Table(rows, title=f"scored against {n_eval} test images, in the feature space of our classifier "
                                     f"(real-vs-real floor over {n_floor} disjoint sets: "
                                     f"{sum(floors) / n_floor:.3g} ± {torch.tensor(floors).std().item():.3g})",
                        formats={"precision": ".2f", "recall": ".2f"})
scores

# %% tags=["remove-cell"]
by = {r["image set"]: r for r in rows}
ml.glue("d71_n_eval", n_eval)
ml.glue("d71_floor", sum(floors) / n_floor, ".3g")
ml.glue("d71_floor_sd", torch.tensor(floors).std().item(), ".3g")
ml.glue("d71_fd_noise01", by["real + noise, sigma 0.1"]["Fréchet distance"], ".3g")
ml.glue("d71_fd_noise03", by["real + noise, sigma 0.3"]["Fréchet distance"], ".3g")
ml.glue("d71_fd_ddpm", rows[-1]["Fréchet distance"], ".3g")
ml.glue("d71_p_ddpm", rows[-1]["precision"], ".2f")
ml.glue("d71_r_ddpm", rows[-1]["recall"], ".2f")
ml.glue("d71_p_two", rows[-2]["precision"], ".2f")
ml.glue("d71_r_two", rows[-2]["recall"], ".2f")
ml.glue("d71_noise_monotone", "rises" if by["real + noise, sigma 0.3"]["Fréchet distance"] > by["real + noise, sigma 0.1"]["Fréchet distance"] > by["real (other test images)"]["Fréchet distance"] else "does not rise")

# %% [markdown]
# The distance of real images to real images is {glue:}`d71_floor` ±
# {glue:}`d71_floor_sd`: no sample set of this size can score lower, and differences of
# that order mean nothing. Noise of $\sigma = 0.1$ and $0.3$ gives
# {glue:}`d71_fd_noise01` and {glue:}`d71_fd_noise03`: the distance {glue:}`d71_noise_monotone`
# with the disturbance, as it should. The two-class set shows what precision and recall add:
# its images are real, so precision is high ({glue:}`d71_p_two`), but it covers a fifth of
# the classes, so recall is low ({glue:}`d71_r_two`). Our DDPM samples score
# {glue:}`d71_fd_ddpm`, with precision {glue:}`d71_p_ddpm` and recall {glue:}`d71_r_ddpm`.
# The estimate's bias depends on the sample count, so the floor must be measured at the
# count the models are scored at:

# %%
ns = [n for n in sorted({64, 128, n_eval, 512, 1024, 2048}) if 2 * n <= len(x_test)][:ml.pick(smoke=2, cpu=5, gpu=6)]
feats = D.features(fnet, x_test[:2 * ns[-1]])
floor_rows = [{"images per set": n, "real-vs-real Fréchet distance": D.frechet_distance(feats[:n], feats[n:2 * n])}
              for n in ns]
ml.bench.Table(floor_rows, title="the floor shrinks with the number of samples (two disjoint sets of test images)")

# %% tags=["remove-cell"]
ml.glue("d71_floor_small", floor_rows[0]["real-vs-real Fréchet distance"], ".3g")
ml.glue("d71_floor_large", floor_rows[-1]["real-vs-real Fréchet distance"], ".3g")
ml.glue("d71_n_small", ns[0])
ml.glue("d71_n_large", ns[-1])

# %% [markdown]
# From {glue:}`d71_floor_small` at {glue:}`d71_n_small` images to
# {glue:}`d71_floor_large` at {glue:}`d71_n_large`: the same distribution "gets better"
# with more samples. A Fréchet distance is only comparable at a fixed sample count.
#
# ## Claimed vs measured
#
# | source | claim | measured here (scale and hardware in the banner) |
# | --- | --- | --- |
# | {cite}`ho2020ddpm` | one sample takes $T = 1000$ sequential network evaluations | {glue:}`d71_ddpm_ms` ms per sample with our U-Net (batch of {glue:}`d71_n_eval`) |
# | {cite}`nichol2021improved` | with the linear schedule the end of the forward process is nearly pure noise; the cosine schedule spreads the destruction over the chain | $\bar\alpha_t < 0.01$ for {glue:}`d71_lin_noise_frac`% of the linear schedule's steps, {glue:}`d71_cos_noise_frac`% of the cosine's |
# | {cite}`heusel2017fid` | the Fréchet distance rises consistently with the strength of a disturbance (noise, blur) | noise $\sigma = 0$, 0.1, 0.3: {glue:}`d71_floor`, {glue:}`d71_fd_noise01`, {glue:}`d71_fd_noise03` |
# | {cite}`kynkaanniemi2019precision` | precision and recall separate fidelity from diversity | two real classes only: precision {glue:}`d71_p_two`, recall {glue:}`d71_r_two` |
# | {cite}`chong2020unbiased` | FID is biased, and the bias depends on the number of samples | real-vs-real {glue:}`d71_floor_small` at {glue:}`d71_n_small` images, {glue:}`d71_floor_large` at {glue:}`d71_n_large` |
#
# DDPM's CIFAR-10 FID of 3.17 (and improved DDPM's numbers) are Inception FIDs on 50,000
# samples of a 35.7M-parameter network trained for 800,000 steps; nothing here is
# comparable to them, so they stay in this sentence.
#
# ## Exercises

# %% [markdown]
# ### Exercise 1: The other variance (implement, easy)
#
# DDPM reports that $\sigma_t^2 = \beta_t$ and $\sigma_t^2 = \tilde\beta_t$ give similar
# samples. Write `p_sample_beta` with $\sigma_t^2 = \beta_t$ (the same mean), run the
# 1,000-step chain with the one-point oracle of section 7.1.5, and explain why it still
# returns the point. What does the choice of variance change, then?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 1
# ```python
# def p_sample_beta(model, x, t, s, g=None):
#     b, a, ab = (float(v[t]) for v in (s.betas, s.alphas, s.alphas_cumprod))
#     eps = model(x, torch.full((len(x),), t))
#     mean = (x - b / math.sqrt(1 - ab) * eps) / math.sqrt(a)
#     return mean + math.sqrt(b) * torch.randn(x.shape, generator=g, dtype=x.dtype) if t > 0 else mean
#
# x = torch.randn(x_star.shape, dtype=torch.float64)
# for t in reversed(range(1000)):
#     x = p_sample_beta(oracle, x, t, schedule)
# print((x - x_star).abs().max())     # ~1e-13: the point again
# ```
# The last step ($t = 0$ in code, the paper's $t = 1$) adds no noise, and there
# $\bar\alpha_{t-1} = 1$, so its mean is exactly $\hat x_0 = (x_1 - \sqrt{1 - \bar\alpha_1}\,\epsilon)/\sqrt{\bar\alpha_1}$.
# The exact denoiser recovers $x^\star$ from *any* $x_1$, so whatever noise the earlier
# steps added is removed in one go. The variance matters only for an imperfect network:
# it decides how far the chain wanders from the data while the network's errors
# accumulate. DDPM's own analysis: $\sigma_t^2 = \beta_t$ is optimal when the data is
# $\mathcal N(0, I)$ and $\tilde\beta_t$ when it is a single point; real data lies in between,
# which is why both work.
# :::

# %% [markdown]
# ### Exercise 2: Which noise levels are hard? (measure, easy)
#
# Compute the trained model's loss $L_\text{simple}$ on test images separately for
# timesteps in ten bins of 100, and plot it against $t$. Where is the noise easy to
# predict, where hard, and why?

# %% tags=["solution", "hide-cell"]
# Solution 2
xe, ye = x_test[:ml.pick(smoke=64, cpu=512, gpu=1024)].to(dev), y_test[:ml.pick(smoke=64, cpu=512, gpu=1024)].to(dev)
per_bin = []
with torch.no_grad():
    for lo in range(0, schedule.T, 100):
        torch.manual_seed(lo)
        t = torch.randint(lo, lo + 100, (len(xe),), device=dev)
        eps = torch.randn_like(xe)
        per_bin.append(F.mse_loss(model(D.q_sample(xe, t, eps, schedule), t, ye), eps).item())
plt.figure(figsize=(5, 3))
plt.plot([lo + 50 for lo in range(0, schedule.T, 100)], per_bin, "o-")
plt.yscale("log")
plt.xlabel("timestep t (bin centre)")
plt.ylabel("test loss")
plt.title("Solution 2: loss per noise level")
plt.show()

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 2
# The loss is largest at small $t$ and falls by orders of magnitude towards $t = T$. At
# large $t$, $x_t$ is almost all noise, so $\epsilon \approx x_t$ and predicting it is easy;
# at small $t$ the noise is a faint perturbation of the image, and telling it apart requires
# knowing the image's fine detail. The unweighted loss therefore spends most of its gradient
# on the low-noise end, which is DDPM's argument for $L_\text{simple}$ over the
# variational bound's weights: the bound puts even more weight there.
# :::

# %% [markdown]
# ### Exercise 3: Why $\hat x_0$ is noisy at the start (explain, medium)
#
# At $t = T$ the sampler computes $\hat x_0 = (x_T - \sqrt{1 - \bar\alpha_T}\,\epsilon_\theta)/\sqrt{\bar\alpha_T}$.
# By how much does an error $\delta$ in $\epsilon_\theta$ move $\hat x_0$, for the linear
# and for the cosine schedule? Why is the guess of $x_0$ in section 7.1.5 a blurred average
# early in the chain?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 3
# $\delta\hat x_0 = -\sqrt{(1 - \bar\alpha_T)/\bar\alpha_T}\,\delta \approx -\delta / \sqrt{\bar\alpha_T}$:
# a factor $1/${glue:}`d71_lin_sqrt_abar_T` $\approx 157$ for the linear schedule and about
# 20,000 for the cosine one. The network minimizes the squared error, so its best guess of
# $\epsilon$ is the posterior mean, and its implied $\hat x_0$ is the posterior mean of $x_0$
# given $x_t$: at high noise, where $x_t$ says almost nothing about the image, that mean is
# an average over all images of the class, a blur. DDPM's step does not use $\hat x_0$
# alone: it moves $x_t$ only a small step towards it (the weight of $\hat x_0$ in
# $\tilde\mu_t$ is $\sqrt{\bar\alpha_{t-1}}\beta_t/(1 - \bar\alpha_t)$, tiny at large $t$),
# which is why the amplified error does no harm there. Samplers that take big steps
# (notebook 7.2) lean on $\hat x_0$ much more.
# :::

# %% [markdown]
# ### Exercise 4: The cosine schedule (implement, hard)
#
# Train the same U-Net with the cosine schedule
# (`D.trained("eps", dataset=dataset, schedule="cosine")`, cached like the others), sample
# it with DDPM, and compare its Fréchet distance, precision and recall with the linear
# model's in the table above. Is the difference outside the real-vs-real spread?

# %% [markdown] tags=["solution"]
# :::{dropdown} Solution 4
# ```python
# cos_model, cos_record = D.trained("eps", dataset=dataset, schedule="cosine")
# cos_samples, _ = D.generate(cos_model, cos_record, "ddpm", n=n_eval)
# f = D.features(fnet, cos_samples)
# print(D.frechet_distance(ref, f), D.precision_recall(ref, f))
# ```
# It costs one more training run and one more 1,000-step chain. Nichol and Dhariwal found
# the linear schedule sub-optimal precisely at low resolutions ($64\times64$ and
# $32\times32$), where the image is destroyed earliest in the chain, and the cosine schedule
# better in log-likelihood and FID; $28\times28$ is such a resolution. But their models
# trained for hundreds of thousands of steps: judge our difference against the floor's
# spread of {glue:}`d71_floor_sd`, not by eye, and with one seed per schedule.
# :::

# %% [markdown]
# ## Key takeaways
#
# - The forward process has a closed form, $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon$:
#   training jumps to a random noise level and regresses the noise, one forward and backward
#   pass per image, like any supervised model.
# - The schedule decides how the $T$ steps are spent; its log SNR is the axis to compare
#   schedules on. The linear schedule spends many steps on almost pure noise.
# - Sampling is the expensive part: DDPM's ancestral sampler needs $T = 1000$ sequential
#   network evaluations per image; most of the image appears in the last few hundred.
# - Exact oracles (the one-point data distribution) and closed forms (two Gaussians) test
#   samplers and metrics without a trained model.
# - A Fréchet distance is a relative measurement: one feature network, one sample count, one
#   reference set, and the real-vs-real floor with its spread. Ours is not Inception FID.
#
# ## References
#
# The papers cited in this notebook are listed, with links, in the book's
# {doc}`bibliography <../../book/bibliography>`.
