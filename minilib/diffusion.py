"""Chapter 7: diffusion from scratch, and making sampling cheap.

========================================  =================================================
section                                   holds
========================================  =================================================
Noise schedules                           :class:`NoiseSchedule` (``linear``, ``cosine``)
The forward process and the loss          :func:`q_sample`, :func:`ddpm_loss`
Sampling: DDPM and DDIM                   :func:`p_sample`, :func:`ddpm_sample`,
                                          :func:`timesteps`, :func:`ddim_step`, :func:`ddim_sample`
Flow matching                             :func:`flow_matching_loss`, :func:`euler_sample`,
                                          :func:`heun_sample`
Classifier-free guidance                  :class:`Guided`
Training and the chapter's models         :func:`train`, :func:`config`, :func:`trained`,
                                          :func:`images`, :func:`generate`, :func:`cached`
Evaluation                                :func:`frechet_distance`, :func:`precision_recall`,
                                          :func:`feature_net`, :func:`features`, :func:`show_samples`
========================================  =================================================

Conventions. Images live in [-1, 1], shape ``(B, C, H, W)``. A diffusion denoiser is called
as ``model(x_t, t)`` (or ``model(x_t, t, y)`` with labels ``y`` ``(B,)``), with ``t`` a
LongTensor ``(B,)`` of indices in ``[0, T)``; index ``t`` is the paper's step ``t + 1``, and
the model returns the predicted noise, of the shape of ``x_t``. Schedules are 1-D float64
tensors and the samplers take their coefficients as Python floats, so a float64 oracle is
exact to rounding. Flow matching runs time the same way as diffusion: ``t = 0`` is data,
``t = 1`` is noise, ``x_t = (1 - t) x_0 + t eps``; its network is called as
``model(x_t, 1000 t)`` (float), so that one time embedding serves both (``FLOW_TIME_SCALE``).

References: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (NeurIPS 2020);
Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (ICML 2021); Song,
Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021); Lipman et al., "Flow
Matching for Generative Modeling" (ICLR 2023); Liu, Gong & Liu, "Flow Straight and Fast"
(ICLR 2023); Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
Models" (NeurIPS 2022; Heun's sampler); Ho & Salimans, "Classifier-Free Diffusion
Guidance" (2022); Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023);
Heusel et al., "GANs Trained by a Two Time-Scale Update Rule" (NeurIPS 2017; FID);
Kynkaanniemi et al., "Improved Precision and Recall Metric" (NeurIPS 2019).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import data as _data
from . import env as _env
from .bench import count_flops
from .models import DiT, ResNet9, UNet
from .train import History, cache_key, evaluate, fit, train_or_load, warmup_cosine

__all__ = [
    "NoiseSchedule", "SCHEDULES", "q_sample", "ddpm_loss",
    "p_sample", "ddpm_sample", "timesteps", "ddim_step", "ddim_sample",
    "FLOW_TIME_SCALE", "flow_matching_loss", "euler_sample", "heun_sample",
    "Guided", "train", "config", "trained", "cached", "images", "SAMPLERS", "nfe", "generate",
    "frechet_distance", "precision_recall", "feature_net", "features", "show_samples",
]

SCHEDULES: tuple[str, ...] = ("linear", "cosine")
FLOW_TIME_SCALE = 1000.0


# ---------------------------------------------------------------------------------------
# Noise schedules
#
#   alphas[t] = 1 - betas[t],   alphas_cumprod[t] = prod_{s <= t} alphas[s]   (abar_t)
#   q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   SNR(t) = abar_t / (1 - abar_t)
# ---------------------------------------------------------------------------------------

def _check_betas(betas: Tensor) -> None:
    if not isinstance(betas, Tensor) or betas.dim() != 1 or len(betas) < 1:
        raise ValueError(f"NoiseSchedule: betas must be a non-empty 1-D tensor; got "
                         f"{tuple(betas.shape) if isinstance(betas, Tensor) else type(betas).__name__}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"NoiseSchedule: every beta must lie in (0, 1); got min "
                         f"{float(betas.min()):.3g}, max {float(betas.max()):.3g}")


class NoiseSchedule:
    """The variances beta_t of DDPM's forward process and the products that follow from them.

        alphas = 1 - betas,   alphas_cumprod[t] = alphas[0] alphas[1] ... alphas[t]

    ``T``, ``betas``, ``alphas``, ``alphas_cumprod``: 1-D float64 tensors of length T (CPU).
    Build one with :meth:`linear` (DDPM), :meth:`cosine` (improved DDPM) or :meth:`from_name`.
    """

    def __init__(self, betas: Tensor, name: str = "custom"):
        _check_betas(betas)
        self.name = name
        self.betas = betas.detach().to("cpu", torch.float64)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.T = len(self.betas)
        self._on: dict[tuple, Tensor] = {}   # alphas_cumprod on other devices and dtypes

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """DDPM's schedule (Ho et al., 2020): betas evenly spaced from 1e-4 to 0.02, T = 1000."""
        _check_T(T, "NoiseSchedule.linear")
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Improved DDPM's schedule (Nichol & Dhariwal, 2021, eq. 17):

            abar(t) = f(t) / f(0),   f(t) = cos^2((t / T + s) / (1 + s) pi / 2),   t = 0 .. T
            beta_t = min(1 - abar(t) / abar(t - 1), max_beta)        (clipped near t = T)
        """
        _check_T(T, "NoiseSchedule.cosine")
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return cls((1 - abar[1:] / abar[:-1]).clamp(max=max_beta), "cosine")

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> "NoiseSchedule":
        """``"linear"`` or ``"cosine"`` with their papers' constants."""
        if name not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        return getattr(cls, name)(T)

    def snr(self) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) of x_t, ``(T,)`` float64."""
        return self.alphas_cumprod / (1 - self.alphas_cumprod)

    def at(self, t: Tensor, like: Tensor) -> Tensor:
        """``alphas_cumprod[t]`` on the device and dtype of ``like``, shaped ``(B, 1, ..., 1)``."""
        key = (like.device, like.dtype)
        if key not in self._on:  # one copy per device: no host-to-device copy per call
            self._on[key] = self.alphas_cumprod.to(like.dtype).to(like.device)
        return self._on[key][t].view(-1, *(1,) * (like.dim() - 1))

    def __repr__(self) -> str:
        return (f"NoiseSchedule.{self.name}(T={self.T}): beta {float(self.betas[0]):.2e}.."
                f"{float(self.betas[-1]):.3g}, alphas_cumprod[-1] = {float(self.alphas_cumprod[-1]):.2e}")


def _check_T(T: Any, who: str) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"{who}: T must be an int >= 1 (the number of noise levels); got {T!r}")


# ---------------------------------------------------------------------------------------
# The forward process and the loss
#
#   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   eps ~ N(0, I)            (DDPM eq. 4)
#   L_simple = E_{t, x_0, eps} |eps - eps_theta(x_t, t)|^2                    (DDPM eq. 14)
# ---------------------------------------------------------------------------------------

def _check_t(t: Any, T: int, who: str) -> None:
    if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32) or t.dim() != 1:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{who}: t must be a LongTensor (B,) of timestep indices; got {got}")
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"{who}: timesteps must lie in [0, T) = [0, {T}); got values from "
                         f"{int(t.min())} to {int(t.max())}")


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) in one step, the closed form of the forward process (DDPM eq. 4).

        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise,    abar_t = alphas_cumprod[t]

    x0, noise: (B, C, H, W); t: LongTensor (B,) in [0, T). Returns x_t, (B, C, H, W). Notebook 7.1.
    """
    _check_t(t, schedule.T, "q_sample")
    a = schedule.at(t, x0)                                   # (B, 1, 1, 1): abar_t
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _call(model: Callable[..., Tensor], x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
    return model(x, t) if y is None else model(x, t, y)


def ddpm_loss(model: Callable[..., Tensor], x0: Tensor, schedule: NoiseSchedule,
              y: Tensor | None = None) -> Tensor:
    """DDPM's simplified loss (Ho et al., 2020, eq. 14): predict the noise that was added.

        t ~ U{0, .., T-1},  eps ~ N(0, I),  loss = mean |eps - model(q_sample(x0, t, eps), t)|^2

    x0: (B, C, H, W) in [-1, 1]; y: (B,) labels for a conditional model. Returns a scalar.
    """
    t = torch.randint(0, schedule.T, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    return F.mse_loss(_call(model, q_sample(x0, t, eps, schedule), t, y), eps)


# ---------------------------------------------------------------------------------------
# Sampling: DDPM's ancestral sampler and DDIM
#
#   DDPM (Algorithm 2):  x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z
#   DDIM (eq. 12):       x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps + sigma z
#                        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
# ---------------------------------------------------------------------------------------

def _check_steps(steps: Any, T: int, who: str) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"{who}: steps must be an int in [1, T = {T}]; got {steps!r}")


def _device_of(model: Any) -> torch.device:
    params = model.parameters() if isinstance(model, nn.Module) else iter(())
    p = next(params, None)
    return p.device if p is not None else torch.device("cpu")


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device,
           dtype: torch.dtype | None) -> Tensor:
    """N(0, I) noise drawn with ``generator`` (on its own device), placed on ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


def _full(x: Tensor, value: float, dtype: torch.dtype = torch.long) -> Tensor:
    return torch.full((x.shape[0],), value, dtype=dtype, device=x.device)


@torch.no_grad()
def p_sample(model: Callable[..., Tensor], x: Tensor, t: int, schedule: NoiseSchedule,
             generator: torch.Generator | None = None) -> Tensor:
    """One step of DDPM's ancestral sampler, x_t -> x_{t-1} (Ho et al., 2020, Algorithm 2).

        x' = (x - b / sqrt(1 - ab) eps) / sqrt(a) + sqrt(var) z,   eps = model(x, t), z ~ N(0, I)
        var = b (1 - ab') / (1 - ab)      the posterior variance beta~_t (0 at t = 0)

    b, a, ab = betas[t], alphas[t], alphas_cumprod[t]; ab' = alphas_cumprod[t - 1], 1 at t = 0.
    x: (B, C, H, W); t: int in [0, T). Returns x_{t-1}, shaped like x. Notebook 7.1.
    """
    b, a, ab = (float(v[t]) for v in (schedule.betas, schedule.alphas, schedule.alphas_cumprod))
    ab_prev = float(schedule.alphas_cumprod[t - 1]) if t > 0 else 1.0
    eps = model(x, _full(x, t))
    mean = (x - b / math.sqrt(1 - ab) * eps) / math.sqrt(a)
    var = b * (1 - ab_prev) / (1 - ab)
    return mean + math.sqrt(var) * _randn(x.shape, generator, x.device, x.dtype) if var > 0 else mean


@torch.no_grad()
def ddpm_sample(model: Callable[..., Tensor], shape: Sequence[int], schedule: NoiseSchedule,
                generator: torch.Generator | None = None, *, device: Any = None,
                dtype: torch.dtype | None = None) -> Tensor:
    """Sample with DDPM's full chain: x_T ~ N(0, I), then T steps of :func:`p_sample` (T NFE).

    ``shape``: (B, C, H, W); ``device`` defaults to the model's, ``dtype`` to float32.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    x = _randn(shape, generator, device, dtype)
    for t in reversed(range(schedule.T)):
        x = p_sample(model, x, t, schedule, generator)
    return x


def timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from T - 1 down ("trailing" spacing): with T = 1000,
    10 steps are 999, 899, ..., 99 and T steps are T - 1, ..., 0 (DDPM's full chain)."""
    _check_steps(steps, T, "timesteps")
    return [(steps - i) * T // steps - 1 for i in range(steps)]


@torch.no_grad()
def ddim_step(model: Callable[..., Tensor], x: Tensor, t: int, t_prev: int, alphas_cumprod: Tensor,
              eta: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """One DDIM update x_t -> x_{t_prev} (Song et al., 2021, eqs. 12 and 16).

        x0  = (x - sqrt(1 - a) eps) / sqrt(a)             a  = alphas_cumprod[t], eps = model(x, t)
        sig = eta sqrt((1 - a') / (1 - a) (1 - a / a'))   a' = alphas_cumprod[t_prev], 1 if t_prev = -1
        x'  = sqrt(a') x0 + sqrt(1 - a' - sig^2) eps + sig z,   z ~ N(0, I)

    x: (B, C, H, W); t > t_prev >= -1. Returns x' with the shape of x. eta = 0 is deterministic;
    eta = 1 with t_prev = t - 1 is DDPM's step (sig^2 = beta~_t). Notebook 7.2.
    """
    a = float(alphas_cumprod[t])
    a_prev = float(alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    eps = model(x, _full(x, t))
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    sig = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sig**2, 0.0)) * eps
    return x + sig * _randn(x.shape, generator, x.device, x.dtype) if sig > 0 else x


@torch.no_grad()
def ddim_sample(model: Callable[..., Tensor], shape: Sequence[int], schedule: NoiseSchedule,
                steps: int, eta: float = 0.0, generator: torch.Generator | None = None, *,
                device: Any = None, dtype: torch.dtype | None = None) -> Tensor:
    """Sample with DDIM over :func:`timesteps` ``(T, steps)``: ``steps`` NFE instead of T.

    ``shape``: (B, C, H, W); eta in [0, 1]; ``device`` defaults to the model's, ``dtype`` to float32.
    """
    _check_steps(steps, schedule.T, "ddim_sample")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddim_sample: eta must lie in [0, 1] (0: DDIM, 1: DDPM's variance); got {eta}")
    device = torch.device(device) if device is not None else _device_of(model)
    x = _randn(shape, generator, device, dtype)
    ts = timesteps(schedule.T, steps)
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        x = ddim_step(model, x, t, t_prev, schedule.alphas_cumprod, eta, generator)
    return x


# ---------------------------------------------------------------------------------------
# Flow matching (straight paths, rectified flow)
#
#   x_t = (1 - t) x_0 + t eps,   t in [0, 1]  (t = 0: data, t = 1: noise)
#   v_target = d x_t / dt = eps - x_0;   sampling integrates dx/dt = v(x, t) from t = 1 to 0
# ---------------------------------------------------------------------------------------

def flow_matching_loss(model: Callable[..., Tensor], x0: Tensor, y: Tensor | None = None) -> Tensor:
    """Conditional flow matching on straight paths (Lipman et al., 2023; Liu et al., 2023).

        t ~ U(0, 1),  eps ~ N(0, I),  x_t = (1 - t) x0 + t eps,  loss = mean |model(x_t, 1000 t) - (eps - x0)|^2

    x0: (B, C, H, W) in [-1, 1]; y: (B,) labels for a conditional model. Returns a scalar.
    """
    t = torch.rand(x0.shape[0], device=x0.device, dtype=x0.dtype)
    eps = torch.randn_like(x0)
    tt = t.view(-1, *(1,) * (x0.dim() - 1))                  # (B, 1, 1, 1)
    x_t = (1 - tt) * x0 + tt * eps
    return F.mse_loss(_call(model, x_t, FLOW_TIME_SCALE * t, y), eps - x0)


def _check_flow_steps(steps: Any, who: str) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{who}: steps must be an int >= 1; got {steps!r}")


def _velocity(model: Callable[..., Tensor], x: Tensor, t: float) -> Tensor:
    return model(x, _full(x, FLOW_TIME_SCALE * t, x.dtype))


@torch.no_grad()
def euler_sample(model: Callable[..., Tensor], shape: Sequence[int], steps: int,
                 generator: torch.Generator | None = None, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) with Euler's method.

        x_{t'} = x_t + (t' - t) v(x_t, t)      on t = 1, 1 - 1/steps, ..., 0: ``steps`` NFE

    ``shape``: (B, C, H, W). Returns x_0. Notebook 7.2.
    """
    _check_flow_steps(steps, "euler_sample")
    device = torch.device(device) if device is not None else _device_of(model)
    x = _randn(shape, generator, device, dtype)
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
    for t, t_next in zip(ts, ts[1:]):
        x = x + (t_next - t) * _velocity(model, x, t)
    return x


@torch.no_grad()
def heun_sample(model: Callable[..., Tensor], shape: Sequence[int], steps: int,
                generator: torch.Generator | None = None, *, device: Any = None,
                dtype: torch.dtype | None = None) -> Tensor:
    """Heun's method (2nd order; Karras et al., 2022, Algorithm 1) on the same grid as Euler.

        x~ = x_t + (t' - t) v(x_t, t);   x_{t'} = x_t + (t' - t) (v(x_t, t) + v(x~, t')) / 2

    The last step (to t' = 0) is a plain Euler step, as in EDM: 2 steps - 1 NFE in all.
    """
    _check_flow_steps(steps, "heun_sample")
    device = torch.device(device) if device is not None else _device_of(model)
    x = _randn(shape, generator, device, dtype)
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
    for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
        v = _velocity(model, x, t)
        x_euler = x + (t_next - t) * v
        x = x_euler if i == steps - 1 else x + (t_next - t) * (v + _velocity(model, x_euler, t_next)) / 2
    return x


# ---------------------------------------------------------------------------------------
# Classifier-free guidance
#
#   eps~(x, t, y) = (1 + w) eps(x, t, y) - w eps(x, t, no label)        (Ho & Salimans eq. 6)
# ---------------------------------------------------------------------------------------

class Guided(nn.Module):
    """A class-conditional denoiser with classifier-free guidance, called as ``guided(x, t)``.

        out = (1 + w) model(x, t, y) - w model(x, t, none)     (Ho & Salimans, 2022, eq. 6)

    w = 0: the conditional model, w = -1: the unconditional one (one evaluation per step each);
    otherwise both terms come from one batched call of 2B images (two evaluations per step).
    ``model`` needs ``num_classes`` (its "no label" index); y: (B,) labels. Works for noise
    and for velocity predictors alike. Notebook 7.3.
    """

    def __init__(self, model: nn.Module, y: Tensor, w: float = 0.0):
        super().__init__()
        if getattr(model, "num_classes", None) is None:
            raise ValueError("Guided: the model has no num_classes: build it with num_classes=K "
                             "and train it with label dropout")
        self.model, self.y, self.w = model, y, float(w)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.w in (0.0, -1.0):                               # one branch only: one evaluation
            return self.model(x, t, self.y if self.w == 0 else None)
        none = torch.full_like(self.y, self.model.num_classes)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.y, none]))
        cond, uncond = both.chunk(2)                            # 2 x (B, C, H, W)
        return uncond + (1 + self.w) * (cond - uncond)


# ---------------------------------------------------------------------------------------
# Training and the chapter's models
# ---------------------------------------------------------------------------------------

def _autocast(device: torch.device, amp: bool | None):
    enabled = device.type == "cuda" if amp is None else bool(amp)
    return torch.autocast(device.type, dtype=_env.amp_dtype(device), enabled=enabled)


def train(model: nn.Module, x0: Tensor, y: Tensor | None, loss_fn: Callable[..., Tensor], *,
          steps: int, batch_size: int, lr: float, warmup: int = 100, ema_decay: float = 0.999,
          flip: bool = False, amp: bool | None = None, log_every: int = 100) -> History:
    """Train a denoiser with AdamW on random batches; at the end ``model`` holds the EMA weights.

        every step: x0_b, y_b = a random batch;  loss_fn(model, x0_b, y_b).backward();  AdamW
        ema <- decay ema + (1 - decay) theta,    decay = min(ema_decay, (1 + step) / (10 + step))

    x0: (N, C, H, W) in [-1, 1] on the model's device; y: (N,) labels or None. Learning rate:
    linear warm-up over ``warmup`` steps, then cosine decay to 0. Gradient norm clipped at 1.
    ``flip``: random left-right flips. ``amp``: autocast in ``ml.env.amp_dtype()`` (default:
    on CUDA only). A dry run (``BOOK_DRYRUN=1``) makes 2 steps. Returns an ``ml.train.History``
    (step, time, lr, train_loss every ``log_every`` steps; time excludes nothing but logging).
    """
    steps = _env.trim(steps)
    device = x0.device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(steps, min(warmup, steps - 1), final=0.0)
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    history, loss_sum, start = History(), torch.zeros((), device=device), time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * schedule(step)
        idx = torch.randint(0, len(x0), (batch_size,), device=device)
        xb, yb = x0[idx], (y[idx] if y is not None else None)
        if flip:
            xb = torch.where(torch.rand(batch_size, 1, 1, 1, device=device) < 0.5, xb.flip(-1), xb)
        with _autocast(device, amp):
            loss = loss_fn(model, xb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        loss_sum += loss.detach().float()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            n = (step % log_every) + 1
            history.log(step=step + 1, time=time.perf_counter() - start, lr=opt.param_groups[0]["lr"],
                        train_loss=loss_sum.item() / n)
            loss_sum.zero_()
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return history


DATASETS: dict[str, dict[str, Any]] = {
    "fashion_mnist": dict(channels=1, size=28, classes=_data.FASHION_MNIST_CLASSES),
    "cifar10": dict(channels=3, size=32, classes=_data.CIFAR10_CLASSES),
}


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def images(dataset: str = "fashion_mnist", train: bool = True, n: int | None = None,
           device: Any = None) -> tuple[Tensor, Tensor]:
    """A dataset as float images in [-1, 1] ``(N, C, H, W)`` and labels ``(N,)`` on ``device``.

    ``n``: a class-balanced subset (``ml.data.subset``, seed 0); default all images.
    """
    _check_dataset(dataset)
    x, y = _data.fashion_mnist(train) if dataset == "fashion_mnist" else _data.cifar10(train)
    if n is not None and n < len(y):
        x, y = _data.subset(x, y, n)
    device = torch.device(device) if device is not None else _env.device()
    return x.to(device).float().div_(127.5).sub_(1), y.to(device)


OBJECTIVES: tuple[str, ...] = ("eps", "flow")
BACKBONES: tuple[str, ...] = ("unet", "dit")


def _build(cfg: dict[str, Any]) -> nn.Module:
    info = DATASETS[cfg["dataset"]]
    common = dict(in_channels=info["channels"], num_classes=10, class_dropout=cfg["class_dropout"])
    if cfg["backbone"] == "unet":
        return UNet(dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"],
                    dim_mults=tuple(cfg["dim_mults"]), **common)
    return DiT(image_size=info["size"], patch_size=cfg["patch_size"], dim=cfg["dim"],
               depth=cfg["depth"], heads=cfg["heads"], **common)


def _flops_per_image(cfg: dict[str, Any]) -> int:
    info = DATASETS[cfg["dataset"]]
    model = _build(cfg).eval()
    x = torch.zeros(1, info["channels"], info["size"], info["size"])
    return count_flops(model, x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


_SHAPE_KEYS = ("dim", "depth", "heads", "dim_mults", "patch_size")


def config(objective: str = "eps", backbone: str = "unet", dataset: str | None = None,
           schedule: str = "linear", **overrides: Any) -> dict[str, Any]:
    """The recipe of one of the chapter's models at the current scale (a JSON-able dict).

    Fashion-MNIST at the smoke and cpu scales, CIFAR-10 at the gpu scale (``dataset``
    overrides). All models are class-conditional with label dropout 0.1, so notebook 7.3
    can guide them. A DiT gets the U-Net's training compute: its step count is the
    U-Net's times the ratio of their FLOPs per image, so ``train_flops`` is the same.
    ``overrides`` set any key; for a DiT the shape keys (dim, depth, heads, patch_size)
    set the DiT and the others the reference U-Net whose compute it matches.
    """
    _check_choice(objective, OBJECTIVES, "objective")
    _check_choice(backbone, BACKBONES, "backbone")
    _check_choice(schedule, SCHEDULES, "noise schedule")
    dataset = dataset or _env.pick(smoke="fashion_mnist", cpu="fashion_mnist", gpu="cifar10")
    _check_dataset(dataset)
    cfg = dict(dataset=dataset, objective=objective, schedule=schedule if objective == "eps" else None,
               backbone="unet", lr=_env.pick(smoke=2e-3, cpu=1e-3, gpu=1e-3), warmup=100,
               ema_decay=_env.pick(smoke=0.9, cpu=0.999, gpu=0.9995), class_dropout=0.1,
               flip=dataset == "cifar10", seed=0) | _env.pick(
        smoke=dict(dim=4, depth=1, heads=2, dim_mults=[1, 2], steps=40, batch_size=32, n_train=2000),
        cpu=dict(dim=16, depth=1, heads=4, dim_mults=[1, 2, 2], steps=1500, batch_size=64, n_train=60_000),
        gpu=dict(dim=48, depth=1, heads=4, dim_mults=[1, 2, 2], steps=1500, batch_size=256, n_train=50_000))
    dit = _env.pick(smoke=dict(dim=16, depth=1, heads=2, patch_size=4),
                    cpu=dict(dim=96, depth=4, heads=4, patch_size=4),
                    gpu=dict(dim=256, depth=6, heads=4, patch_size=4))
    unknown = set(overrides) - set(cfg) - set(dit)
    if unknown:
        raise ValueError(f"config: unknown settings {sorted(unknown)}; known: {sorted(set(cfg) | set(dit))}")
    shape = {k: v for k, v in overrides.items() if k in _SHAPE_KEYS}
    cfg |= {k: v for k, v in overrides.items() if k not in _SHAPE_KEYS or backbone == "unet"}
    cfg["train_flops"] = 3 * _flops_per_image(cfg) * cfg["steps"] * cfg["batch_size"]
    if backbone == "dit":
        cfg = {k: v for k, v in cfg.items() if k != "dim_mults"} | dit | shape | {"backbone": "dit"}
        cfg["steps"] = max(1, round(cfg["train_flops"] / (3 * _flops_per_image(cfg) * cfg["batch_size"])))
    return cfg


def _check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def trained(objective: str = "eps", backbone: str = "unet", *, dataset: str | None = None,
            schedule: str = "linear", retrain: bool = False, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """One of the chapter's models, trained with :func:`train` on :func:`config` or loaded
    from the cache (``ml.train.train_or_load``). Returns ``(model in eval mode, record)``;
    ``record["metrics"]`` has ``params``, ``flops_per_image``, ``train_flops`` and the last loss."""
    cfg = config(objective, backbone, dataset, schedule, **overrides)
    dev = _env.device()

    def run(model: nn.Module) -> History:
        x0, y = images(cfg["dataset"], True, cfg["n_train"], dev)
        if objective == "eps":
            sched = NoiseSchedule.from_name(cfg["schedule"])
            loss_fn = lambda m, x, y: ddpm_loss(m, x, sched, y)  # noqa: E731
        else:
            loss_fn = flow_matching_loss
        return train(model, x0, y, loss_fn, steps=cfg["steps"], batch_size=cfg["batch_size"],
                     lr=cfg["lr"], warmup=cfg["warmup"], ema_decay=cfg["ema_decay"], flip=cfg["flip"])

    def metrics(model: nn.Module, history: History) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in model.parameters()),
                "flops_per_image": _flops_per_image(cfg), "train_flops": cfg["train_flops"],
                "train_loss": history.last("train_loss")}

    name = f"diffusion-{cfg['dataset']}-{objective}-{backbone}"
    return train_or_load(name, cfg, lambda: _build(cfg), run, retrain=retrain, device=dev, metrics=metrics)


def cached(name: str, config: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()`` (a tensor, or a dict of tensors and numbers), saved under the cache folder
    keyed like a trained model (name, scale, hash of ``config``) and loaded from there next
    time, on the CPU. Expensive samples (DDPM's 1000-step chain) are computed once for the
    whole chapter. In a dry run (``BOOK_DRYRUN=1``) nothing is read or written."""
    path = _data.cache_dir() / "samples" / f"{cache_key(name, config)}.pt"
    dry = _env.dry_run()
    if path.exists() and not dry:
        print(f"{name}: loaded from cache {_data.display_path(path)}")
        return torch.load(path, map_location="cpu", weights_only=True)
    out = compute()
    out = ({k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in out.items()}
           if isinstance(out, dict) else out.detach().cpu())
    if not dry:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out, tmp)
        tmp.replace(path)
    return out


SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "ddim-eta1", "euler", "heun")


def nfe(sampler: str, steps: int | None, T: int = 1000) -> int:
    """Network evaluations of one sample (per guidance branch): T, steps, or 2 steps - 1 (Heun)."""
    _check_choice(sampler, SAMPLERS, "sampler")
    return T if sampler == "ddpm" else (2 * steps - 1 if sampler == "heun" else steps)


def generate(model: nn.Module, record: dict[str, Any], sampler: str, steps: int | None = None, *,
             n: int = 256, w: float = 0.0, seed: int = 0, cache: bool = True,
             amp: bool | None = None) -> tuple[Tensor, float]:
    """``n`` samples of a model from :func:`trained`, with labels ``i % 10`` and guidance ``w``.

    ``sampler``: ``"ddpm"`` (T steps), ``"ddim"`` (eta 0), ``"ddim-eta1"`` or, for flow models,
    ``"euler"``, ``"heun"``. Returns ``(samples (n, C, H, W) on the CPU, seconds)``, the seconds
    being the wall time of the sampling. With ``cache`` both are kept by :func:`cached`, keyed
    by the model's config and these arguments: loaded samples come with the time measured when
    they were made. ``amp``: the network under
    autocast in ``ml.env.amp_dtype()`` (default: on CUDA only; the sampler's arithmetic stays fp32).
    A dry run (``BOOK_DRYRUN=1``) makes 8 samples with at most 2 steps (DDPM becomes DDIM).
    """
    cfg = record["config"]
    if _env.dry_run():  # shapes, not quality: 8 samples, at most 2 steps of any sampler
        n, sampler, steps = min(n, 8), ("ddim" if sampler == "ddpm" else sampler), min(steps or 2, 2)
    flow = cfg["objective"] == "flow"
    _check_choice(sampler, SAMPLERS[3:] if flow else SAMPLERS[:3], f"sampler for a {cfg['objective']} model")
    info = DATASETS[cfg["dataset"]]
    dev = _device_of(model)
    shape = (n, info["channels"], info["size"], info["size"])
    seconds = [0.0]

    def run() -> Tensor:
        g = torch.Generator(dev).manual_seed(seed)
        y = torch.arange(n, device=dev) % 10
        net = Guided(model, y, w)
        sched = None if flow else NoiseSchedule.from_name(cfg["schedule"])
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        with _autocast(dev, amp):
            if sampler == "ddpm":
                x = ddpm_sample(net, shape, sched, g)
            elif sampler.startswith("ddim"):
                x = ddim_sample(net, shape, sched, steps, 1.0 if sampler == "ddim-eta1" else 0.0, g)
            else:
                x = (euler_sample if sampler == "euler" else heun_sample)(net, shape, steps, g)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds[0] = time.perf_counter() - start
        return x.float()

    if not cache:
        return run().cpu(), seconds[0]
    key = dict(model=cfg, sampler=sampler, steps=steps, n=n, w=w, seed=seed)
    out = cached(f"samples-{cfg['dataset']}-{cfg['objective']}-{cfg['backbone']}", key,
                 lambda: {"samples": run(), "seconds": seconds[0]})
    return out["samples"], out["seconds"]


# ---------------------------------------------------------------------------------------
# Evaluation: a Frechet distance in a trained classifier's feature space, precision/recall
#
#   d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))                 (Frechet; FID)
# ---------------------------------------------------------------------------------------

def _check_features(a: Any, b: Any, who: str) -> None:
    for name, f in (("feats_a", a), ("feats_b", b)):
        if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] < 2:
            got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"{who}: {name} must be an (N, D) tensor with N >= 2; got {got}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{who}: the feature matrices have different widths, {a.shape[1]} and "
                         f"{b.shape[1]}; compute both with the same feature network")


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (FID's formula).

        d^2 = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))
        Tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i),  lambda = eigenvalues of S_a^(1/2) S_b S_a^(1/2)

    feats_a: (N, D), feats_b: (M, D); means and (N - 1)-normalized covariances, in float64.
    Returns d^2 as a float (FID reports this squared distance). Notebook 7.1.
    """
    _check_features(feats_a, feats_b, "frechet_distance")
    a, b = feats_a.detach().double().cpu(), feats_b.detach().double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    S_a, S_b = torch.cov(a.T).view(a.shape[1], -1), torch.cov(b.T).view(a.shape[1], -1)  # (D, D)
    w, V = torch.linalg.eigh(S_a)
    root_a = V @ torch.diag(w.clamp(min=0).sqrt()) @ V.T                # S_a^(1/2)
    lam = torch.linalg.eigvalsh(root_a @ S_b @ root_a).clamp(min=0)     # symmetric PSD
    return float((mu_a - mu_b).square().sum() + S_a.trace() + S_b.trace() - 2 * lam.sqrt().sum())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-nearest-neighbour balls.

        precision = fraction of fake samples inside some real sample's ball (fidelity)
        recall    = fraction of real samples inside some fake sample's ball (diversity)
        ball(x) = all points within the distance from x to its k-th nearest neighbour in its own set

    real: (N, D), fake: (M, D) features. Returns (precision, recall) in [0, 1].
    """
    _check_features(real, fake, "precision_recall")
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"precision_recall: k must lie in [1, {min(len(real), len(fake)) - 1}]; got {k}")
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()

    def inside(ref: Tensor, query: Tensor) -> float:
        radius = torch.cdist(ref, ref).kthvalue(k + 1, dim=1).values    # (N,): k + 1 skips itself
        return float((torch.cdist(query, ref) <= radius[None]).any(dim=1).double().mean())

    return inside(real, fake), inside(fake, real)


def feature_net(dataset: str | None = None, *, retrain: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier whose features the chapter scores samples in: a narrow ResNet-9 (chapter 1's
    CNN, ``ml.models.ResNet9``) trained on the real training images in [-1, 1], cached.

    Its pooled features are 64-d (Fashion-MNIST, width 8) or 128-d (CIFAR-10, width 16);
    ``record["metrics"]["test_accuracy"]`` says how good a classifier it is.
    """
    dataset = dataset or _env.pick(smoke="fashion_mnist", cpu="fashion_mnist", gpu="cifar10")
    _check_dataset(dataset)
    info = DATASETS[dataset]
    cfg = dict(dataset=dataset, width=8 if dataset == "fashion_mnist" else 16, seed=0,
               epochs=_env.pick(smoke=1, cpu=2, gpu=8), n_train=_env.pick(smoke=2000, cpu=20_000, gpu=50_000),
               batch_size=256, lr=0.2, momentum=0.9, weight_decay=5e-4, flip=dataset == "cifar10")
    dev = _env.device()

    def loaders() -> tuple[Any, Any]:
        load = _data.fashion_mnist if dataset == "fashion_mnist" else _data.cifar10
        x, y = _data.subset(*load(True), cfg["n_train"])
        xt, yt = _data.subset(*load(False), _env.pick(smoke=1000, cpu=10_000, gpu=10_000))
        half = dict(mean=(0.5,) * info["channels"], std=(0.5,) * info["channels"], device=dev)
        return (_data.DeviceLoader(x, y, cfg["batch_size"], shuffle=True, drop_last=True, flip=cfg["flip"], **half),
                _data.DeviceLoader(xt, yt, 1000, shuffle=False, **half))

    def run(model: nn.Module) -> History:
        train_loader, _ = loaders()
        opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"], nesterov=True)
        total = cfg["epochs"] * len(train_loader)
        return fit(model, train_loader, optimizer=opt, epochs=cfg["epochs"], desc="feature net",
                   schedule=warmup_cosine(total, total // 10), label_smoothing=0.1)

    def metrics(model: nn.Module, history: History) -> dict[str, Any]:
        return {"test_accuracy": evaluate(model, loaders()[1])["accuracy"], "features": 8 * cfg["width"]}

    return train_or_load(f"diffusion-features-{dataset}", cfg,
                         lambda: ResNet9(10, cfg["width"], info["channels"]), run, retrain=retrain,
                         device=dev, metrics=metrics)


@torch.no_grad()
def features(net: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Pooled features of images ``x`` (N, C, H, W) in [-1, 1] (clamped to it): (N, D) float64 on the CPU."""
    dev = _device_of(net)
    out = [net.features(x[i:i + batch_size].to(dev).float().clamp(-1, 1)).double().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def show_samples(x: Tensor, nrow: int = 8, ax: Any = None, title: str | None = None) -> Any:
    """Tile images ``x`` (N, C, H, W) in [-1, 1] into one mosaic of ``nrow`` per row (1-pixel
    gaps) and show it on ``ax`` (a new figure by default). Returns the axes."""
    import matplotlib.pyplot as plt
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    N, C, H, W = x.shape
    rows = -(-N // nrow)
    grid = torch.ones(C, rows * (H + 1) + 1, nrow * (W + 1) + 1)
    for i in range(N):
        r, c = divmod(i, nrow)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = x[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(min(6.4, 0.45 * nrow + 0.4), min(6.4, 0.45 * rows + 0.4)))
    ax.imshow(grid[0] if C == 1 else grid.permute(1, 2, 0), cmap="gray" if C == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
