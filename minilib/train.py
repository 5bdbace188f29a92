"""Training: ``fit``, ``evaluate``, learning-rate schedules, and the cache of trained models.

One training loop serves every chapter::

    history = ml.train.fit(model, train_loader, optimizer=opt, epochs=10,
                           schedule=ml.train.one_cycle(10 * len(train_loader)),
                           eval_loader=test_loader)
    history.time_to("val_accuracy", 0.94)     # training seconds to reach 94%

What it does for efficiency measurements to mean something:

* **Only training time is timed.** ``History``'s ``time`` column is seconds of training
  so far; evaluation pauses the clock. On CUDA the clock is read after
  ``torch.cuda.synchronize()``, since kernels run asynchronously (notebook 1.1), and
  CUDA, cuBLAS and cuDNN are started (a tiny matmul and conv) before the clock starts,
  so the first timed step does not pay for them.
* **No host-device syncs per step**: the loss is summed on the device and read once per
  logged row; the schedule, gradient clipping and (with a fused optimizer) the gradient
  scaler run without reading a value back.
* **Precision is explicit.** Training: autocast on CUDA by default, in
  ``ml.env.amp_dtype()`` (bf16; fp16 with a gradient scaler where bf16 is not supported,
  e.g. a T4). Evaluation: fp32 (IEEE: minilib turns TF32 off) unless asked, so a quality
  number is the number of the format it names. **Optional** ``torch.compile``.
* **Evaluation** on a fixed set every epoch (or every ``eval_every`` steps): DAWNBench's
  "time to 94%" is the training time at the first evaluation reaching 94%.
* **Dry run** (``BOOK_DRYRUN=1``): ``fit`` stops after 2 optimizer steps, evaluation reads
  at most 2 batches, and :func:`train_or_load` trains a throwaway model in a temporary
  folder (the cache is neither read nor written).

Trained models that later chapters reuse are cached by :func:`train_or_load`, keyed by
name, scale and a hash of the configuration.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from . import data as _data
from . import env as _env

__all__ = [
    "History", "evaluate", "fit", "adamw", "one_cycle", "warmup_cosine",
    "cache_key", "cache_path", "train_or_load",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


# ---------------------------------------------------------------------------------------
# History: what happened during training
# ---------------------------------------------------------------------------------------

class History:
    """The log of a training run: a list of rows, each a dict.

    ``fit`` logs one row per evaluation with keys ``step`` (optimizer steps so far),
    ``epoch`` (epochs so far; only when training by epochs), ``time`` (training seconds
    so far, **evaluation excluded**), ``lr``, ``train_loss`` (mean since the previous
    row), and, with an evaluation loader, ``val_loss`` and ``val_accuracy``.
    """

    def __init__(self, rows: Iterable[dict[str, Any]] | None = None):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows or []]

    def log(self, **row: Any) -> None:
        """Append one row: ``history.log(step=100, val_accuracy=0.9)``."""
        self.rows.append(row)

    def column(self, name: str) -> list[Any]:
        """The values of ``name``, one per row (``None`` in rows without it).

        Raises ``KeyError`` if no row has ``name``.
        """
        if not any(name in r for r in self.rows):
            have = sorted({k for r in self.rows for k in r})
            raise KeyError(f"no row of this History has {name!r}; its columns are {have}")
        return [r.get(name) for r in self.rows]

    def last(self, name: str) -> Any:
        """The last value of ``name`` that is not ``None``; ``None`` if there is none."""
        for r in reversed(self.rows):
            if r.get(name) is not None:
                return r[name]
        return None

    def best(self, name: str, mode: str = "max") -> Any:
        """The largest (``mode="max"``) or smallest (``"min"``) value of ``name``, or ``None``."""
        values = [r[name] for r in self.rows if r.get(name) is not None]
        if not values:
            return None
        return _pick_mode(mode)(values)

    def time_to(self, metric: str, threshold: float, mode: str = "max") -> float | None:
        """Training seconds (column ``time``) when ``metric`` first reached ``threshold``.

        ``mode="max"``: first row with ``metric >= threshold`` (accuracy);
        ``mode="min"``: first row with ``metric <= threshold`` (loss). ``None`` if never.
        """
        _pick_mode(mode)
        for r in self.rows:
            value = r.get(metric)
            if value is None:
                continue
            if (value >= threshold) if mode == "max" else (value <= threshold):
                return r.get("time")
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{"rows": [...]}``; :meth:`from_dict` reads it back."""
        return {"rows": [dict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        """The History saved by :meth:`to_dict`."""
        return cls(d["rows"])

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        cols = sorted({k for r in self.rows for k in r})
        return f"History({len(self.rows)} rows, columns {cols})"


def _pick_mode(mode: str) -> Callable:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' (higher is better) or 'min'; got {mode!r}")
    return max if mode == "max" else min


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------

def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


_DRY_RUN_STEPS = 2    # optimizer steps of a dry run (BOOK_DRYRUN=1)
_DRY_RUN_BATCHES = 2  # evaluation batches of a dry run


def _amp_dtype(device: torch.device, amp: bool | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype ``amp`` asks for on ``device``, or ``None`` for no autocast.

    ``None`` / ``False``: off (fp32). ``True``: ``ml.env.amp_dtype(device)`` (bf16, or fp16
    on a GPU without bf16). A dtype (``torch.float16``): that dtype.
    """
    if amp is None or amp is False:
        return None
    if amp is True:
        return _env.amp_dtype(device)
    if isinstance(amp, torch.dtype):
        return amp
    raise TypeError(f"amp must be None, a bool or a torch dtype (torch.bfloat16); got {amp!r}")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` in ``dtype``; no autocast when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def _warm_up(device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Start CUDA before a clock starts: context, cuBLAS and cuDNN handles, a first kernel.

    The first matmul on a CUDA device creates the cuBLAS handle and workspace and the first
    convolution initializes cuDNN: tens to hundreds of milliseconds that are start-up, not
    training. A tiny matmul (also under autocast in ``dtype``) and a tiny conv pay for them
    here, then the device is synchronized. What stays in the first timed step is the
    model's own first launches (lazy loading of its kernels, cuDNN algorithm choice).
    No-op off CUDA.
    """
    if device.type != "cuda":
        return
    torch.cuda.init()
    a = torch.ones(16, 16, device=device)
    a @ a
    if dtype is not None:
        with torch.autocast("cuda", dtype=dtype):
            a @ a
    F.conv2d(torch.ones(1, 1, 8, 8, device=device), torch.ones(1, 1, 3, 3, device=device))
    torch.cuda.synchronize(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0,
                   reduction: str = "mean") -> Tensor:
    """Cross-entropy over the last dim: ``(..., K)`` logits, ``(...)`` targets, flattened."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           label_smoothing=label_smoothing, reduction=reduction)


def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], *,
             loss_fn: LossFn | None = None, tta: bool = False,
             amp: bool | torch.dtype | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader``.

    ``loader`` yields ``(x, y)``: images ``(B, C, H, W)`` with labels ``(B,)`` (logits
    ``(B, K)``), or tokens ``(B, T)`` with targets ``(B, T)`` (logits ``(B, T, V)``, every
    position counts). Accuracy is ``argmax(logits) == y`` over all targets. The loss is
    cross-entropy (or ``loss_fn(logits, y)``, averaged with the number of targets as weight).

    ``tta=True`` (test-time augmentation, images only) averages the logits of each image
    and of its left-right mirror: ``(f(x) + f(flip(x))) / 2``; it costs two forward passes.

    Precision: fp32 on every device by default (``amp=None``; IEEE fp32, TF32 is off), so
    the quality of an fp32 model is measured in fp32. ``amp=True`` evaluates under
    autocast in ``ml.env.amp_dtype()`` (bf16, or fp16 on a GPU without bf16), ``amp=`` a
    dtype in that dtype. A model converted to another format (``model.bfloat16()``, a
    quantized model) is measured in its own format either way.

    Runs in eval mode under ``torch.no_grad()`` and restores the model's training mode
    afterwards. In a dry run (``BOOK_DRYRUN=1``) only the first 2 batches are read.
    Returns ``{"loss": float, "accuracy": float}``.
    """
    device = _device_of(model)
    dtype = _amp_dtype(device, amp)
    if _env.dry_run():
        loader = itertools.islice(loader, _DRY_RUN_BATCHES)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    try:
        with torch.no_grad(), _autocast(device, dtype):
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                if tta:
                    logits = (logits.float() + model(x.flip(-1)).float()) / 2
                logits = logits.float()
                n = y.numel()
                if loss_fn is None:
                    loss_sum += _cross_entropy(logits, y, reduction="sum")
                else:
                    loss_sum += loss_fn(logits, y).double() * n
                correct += (logits.argmax(-1) == y).sum()
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return {"loss": loss_sum.item() / count, "accuracy": correct.item() / count}


# ---------------------------------------------------------------------------------------
# Learning-rate schedules: step -> multiplier of the initial learning rate
# ---------------------------------------------------------------------------------------

def adamw(model: nn.Module, lr: float, weight_decay: float,
          betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW that decays matrices only (weights of linear, conv and embedding layers).

    Biases, norm gains and other vectors are left alone, as in nanoGPT and most ViT
    recipes: decaying a LayerNorm gain towards 0 only fights the normalization. The
    recipes of :mod:`ml.baselines` and the chapters that retrain their models use it.
    Fused (one kernel for all parameters) on CUDA.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def one_cycle(total_steps: int, warmup: float = 0.25) -> Callable[[int], float]:
    """Linear warm-up from 0 to 1 over the first ``warmup`` fraction, then linear decay to 0.

    The triangular "one-cycle" policy (Smith & Topin, 2019) used by Page's ResNet-9 recipe:

        m(s) = s / s_w                       for s <= s_w = warmup * total_steps
        m(s) = (S - s) / (S - s_w)           after, reaching 0 at s = S = total_steps
    """
    if total_steps < 1 or not 0 <= warmup < 1:
        raise ValueError(f"one_cycle needs total_steps >= 1 and 0 <= warmup < 1; "
                         f"got {total_steps}, {warmup}")
    peak = warmup * total_steps

    def schedule(step: int) -> float:
        if step < peak:
            return step / peak
        return max(0.0, (total_steps - step) / (total_steps - peak))

    return schedule


def warmup_cosine(total_steps: int, warmup_steps: int,
                  final: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then cosine decay from 1 to ``final``.

        m(s) = (s + 1) / s_w                                     for s < s_w
        m(s) = final + (1 - final) (1 + cos(pi p)) / 2,  p = (s - s_w) / (S - s_w)

    (nanoGPT's schedule; ``final=0.1`` is its ``min_lr = lr / 10``.)
    """
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_cosine needs 0 <= warmup_steps < total_steps; "
                         f"got warmup_steps={warmup_steps}, total_steps={total_steps}")

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))

    return schedule


# ---------------------------------------------------------------------------------------
# fit: the training loop
# ---------------------------------------------------------------------------------------

def _compile(model: nn.Module) -> nn.Module:
    try:
        return torch.compile(model)
    except Exception as err:  # e.g. no compiler toolchain, unsupported Python
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); training eagerly",
                      stacklevel=3)
        return model


def fit(model: nn.Module, train_loader: Iterable[tuple[Tensor, Tensor]], *,
        optimizer: torch.optim.Optimizer, epochs: int | None = None, steps: int | None = None,
        schedule: Callable[[int], float] | None = None, loss_fn: LossFn | None = None,
        label_smoothing: float = 0.0, eval_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
        eval_every: int | None = None, eval_tta: bool = False,
        amp: bool | torch.dtype | None = None, eval_amp: bool | torch.dtype = False,
        compile: bool = False, grad_clip: float | None = None, progress: bool = True,
        desc: str | None = None) -> History:
    """Train ``model`` with ``optimizer`` on ``train_loader``; return the :class:`History`.

    Args:
        model: on its device already; batches are moved to the device of its parameters.
        train_loader: yields ``(x, y)``; ``len(train_loader)`` is the batches per epoch.
            For step-based training it is iterated again when it runs out.
        epochs / steps: exactly one of them: train for whole epochs or for optimizer steps.
        schedule: ``schedule(step) -> multiplier`` of each parameter group's initial
            learning rate (stored in the group as ``initial_lr``), set before every step
            ``0 .. total - 1`` (see :func:`one_cycle`, :func:`warmup_cosine`).
        loss_fn: ``loss_fn(logits, y) -> scalar``; default cross-entropy over the last dim
            (``(B, K)`` logits and ``(B,)`` labels, or ``(B, T, V)`` and ``(B, T)``)
            with ``label_smoothing``.
        eval_loader: evaluated with :func:`evaluate` (``tta=eval_tta``) every
            ``eval_every`` steps; by default at the end of every epoch, or once at the end
            for step-based training. Without it rows still log the train loss.
        amp: autocast while training: ``None`` (default) means on CUDA only, in
            ``ml.env.amp_dtype()``: bf16, or fp16 with a ``torch.amp.GradScaler`` on a GPU
            without bf16 (a T4); ``True`` on any device (bf16 on the CPU); ``False`` fp32;
            or a dtype.
        eval_amp: evaluate under autocast too (``True`` or a dtype); by default the
            evaluations run in fp32, so ``val_accuracy`` is the fp32 model's accuracy.
        compile: train ``torch.compile(model)`` (falls back to eager with a warning).
        grad_clip: clip the global gradient norm to this value (after unscaling the
            gradients when a gradient scaler is used).
        progress, desc: a ``tqdm`` progress bar and its label. The bar is also off when the
            environment sets ``TQDM_DISABLE=1``: ``make execute`` does, so notebooks stored
            for the book do not fill with progress lines (readers running them see the bar).

    The ``time`` column counts training only: the clock stops during evaluation, and on
    CUDA it is read after ``torch.cuda.synchronize()``; CUDA, cuBLAS and cuDNN are started
    before it starts (:func:`_warm_up`). A step reads nothing back from the device (the
    loss is summed there and read once per row), so the GPU never waits for Python; with
    fp16 and a non-fused optimizer the gradient scaler reads one flag per step (fused
    optimizers, such as :func:`adamw`'s on CUDA, avoid that).

    Dry run (``BOOK_DRYRUN=1``): at most 2 optimizer steps, evaluations of at most 2 batches.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs= or steps= (how long to train)")
    if loss_fn is not None and label_smoothing:
        raise ValueError("label_smoothing applies to the default cross-entropy; "
                         "put it into your loss_fn instead")
    per_epoch = len(train_loader)  # type: ignore[arg-type]
    if per_epoch == 0:
        raise ValueError("train_loader has no batches (is the dataset smaller than a batch "
                         "with drop_last=True?)")
    total = epochs * per_epoch if epochs is not None else steps
    if total < 1:
        raise ValueError(f"nothing to train: epochs={epochs}, steps={steps}")
    if eval_every is None:
        eval_every = per_epoch if epochs is not None else total
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 step; got {eval_every}")
    if _env.dry_run():
        total = min(total, _DRY_RUN_STEPS)

    device = _device_of(model)
    dtype = _amp_dtype(device, device.type == "cuda" if amp is None else amp)
    eval_dtype = _amp_dtype(device, eval_amp)
    # fp16 overflows where bf16 does not: scale the loss, unscale the gradients.
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    if loss_fn is None:
        def loss_fn(logits: Tensor, y: Tensor) -> Tensor:
            return _cross_entropy(logits, y, label_smoothing)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    forward = _compile(model) if compile else model

    history = History()
    model.train()
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    bar = tqdm(total=total, desc=desc, disable=quiet or not progress, mininterval=1.0,
               dynamic_ncols=True)
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    loss_count = 0
    train_seconds = 0.0
    step = 0
    _warm_up(device, dtype)
    _sync(device)
    start = time.perf_counter()
    try:
        while step < total:
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                lr_mult = schedule(step) if schedule is not None else 1.0
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * lr_mult
                with _autocast(device, dtype):
                    try:
                        logits = forward(x)
                    except Exception as err:
                        if forward is model or step > 0:
                            raise
                        # torch.compile fails lazily, on the first call.
                        warnings.warn(f"torch.compile failed ({type(err).__name__}); "
                                      f"training eagerly", stacklevel=2)
                        forward = model
                        logits = forward(x)
                    loss = loss_fn(logits, y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    if grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                else:
                    scaler.scale(loss).backward()
                    if grad_clip is not None:
                        scaler.unscale_(optimizer)  # clip the true gradients
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(optimizer)          # skipped when a gradient is inf/nan
                    scaler.update()
                loss_sum += loss.detach().float()
                loss_count += 1
                step += 1
                bar.update(1)

                if step % eval_every == 0 or step == total:
                    _sync(device)
                    train_seconds += time.perf_counter() - start  # the clock stops here
                    row: dict[str, Any] = {"step": step}
                    if epochs is not None:  # whole epochs as ints, else a fraction
                        whole = step % per_epoch == 0
                        row["epoch"] = step // per_epoch if whole else step / per_epoch
                    row |= {
                        "time": train_seconds,
                        "lr": optimizer.param_groups[0]["lr"],
                        "train_loss": loss_sum.item() / loss_count,
                    }
                    loss_sum.zero_()
                    loss_count = 0
                    if eval_loader is not None:
                        result = evaluate(model, eval_loader, tta=eval_tta, amp=eval_dtype)
                        row["val_loss"], row["val_accuracy"] = result["loss"], result["accuracy"]
                    history.log(**row)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                     if k in ("train_loss", "val_loss", "val_accuracy")})
                    _sync(device)
                    start = time.perf_counter()  # ... and restarts after evaluation
                if step >= total:
                    break
    finally:
        bar.close()
    return history


# ---------------------------------------------------------------------------------------
# The cache of trained models
# ---------------------------------------------------------------------------------------

def _canonical_json(config: dict[str, Any]) -> str:
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"the config must be JSON-able (numbers, strings, bools, None, lists, "
                        f"dicts; no NaN) so that it can be hashed and stored: {err}") from None


def _plain(obj: Any) -> Any:
    """``obj`` as plain JSON types (dict, list, str, float, ...), which ``torch.load`` with
    ``weights_only=True`` accepts (``torch.__version__``, a str subclass, it refuses)."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as err:
        raise TypeError(f"the training record must be JSON-able: {err}") from None


def cache_key(name: str, config: dict[str, Any]) -> str:
    """``<name>-<scale>-<hash12>``: the first 12 hex digits of the sha256 of the config's
    canonical JSON (sorted keys), so any change of a value or of the scale gives a new key."""
    digest = hashlib.sha256(_canonical_json(config).encode()).hexdigest()[:12]
    return f"{name}-{_env.scale()}-{digest}"


def cache_path(name: str, config: dict[str, Any]) -> Path:
    """Where :func:`train_or_load` keeps the model: ``ml.data.cache_dir()/models/<key>.pt``."""
    return _data.cache_dir() / "models" / f"{cache_key(name, config)}.pt"


_DRY_RUN_DIR: Path | None = None


def _dry_run_dir() -> Path:
    """A temporary folder of this process for the throwaway models of a dry run."""
    global _DRY_RUN_DIR
    if _DRY_RUN_DIR is None or not _DRY_RUN_DIR.is_dir():
        _DRY_RUN_DIR = Path(tempfile.mkdtemp(prefix="minilib-dryrun-"))
        atexit.register(shutil.rmtree, _DRY_RUN_DIR, True)
    return _DRY_RUN_DIR


def _default_metrics(model: nn.Module, history: History) -> dict[str, Any]:
    keys = ("train_loss", "val_loss", "val_accuracy")
    return {k: history.last(k) for k in keys if history.last(k) is not None}


def train_or_load(name: str, config: dict[str, Any], build: Callable[[], nn.Module],
                  train: Callable[[nn.Module], History], *, retrain: bool = False,
                  device: torch.device | str | None = None,
                  metrics: Callable[[nn.Module, History], dict[str, Any]] | None = None,
                  ) -> tuple[nn.Module, dict[str, Any]]:
    """The model trained by ``train(build())``, from the cache when it is there.

    The cache file is ``ml.data.cache_dir()/models/<name>-<scale>-<hash12>.pt`` (see
    :func:`cache_key`): changing the scale or any value of ``config`` trains a new model.
    If it exists (and not ``retrain``) the weights are loaded into ``build()``; otherwise
    we seed all generators with ``config.get("seed", 0)``, build the model on ``device``
    (default ``ml.device()``), train it, and save the ``state_dict`` with a record.

    Returns ``(model in eval mode, record)``; the record is a JSON-able dict with
    ``config``, ``scale``, ``hardware`` (``ml.env.hardware()`` of the machine that
    trained it), ``history`` (``History.to_dict()``), ``metrics`` (``metrics(model,
    history)``, default: the last train/val loss and accuracy), ``train_seconds`` (the
    history's training time, evaluation excluded), ``wall_seconds`` (including evaluation)
    and ``torch`` (version).

    What it prints names the file relative to the data folder
    (``loaded from cache models/<key>.pt (in the data folder)``), never an absolute path
    of this machine, so stored notebooks print the same everywhere.

    Dry run (``BOOK_DRYRUN=1``): the real cache is neither read nor written; the model is
    trained (``fit`` stops after 2 steps) and kept in a temporary folder of this process,
    and the message says it is a throwaway model.
    """
    device = torch.device(device) if device is not None else _env.device()
    dry = _env.dry_run()
    if dry:  # a throwaway model, in a temporary folder: the cache is not used
        path = _dry_run_dir() / "models" / f"{cache_key(name, config)}.pt"
    else:
        path = cache_path(name, config)
    shown = _data.display_path(path)
    if path.exists() and not retrain:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = build()
        model.load_state_dict(payload["state_dict"])
        if dry:
            print(f"{name}: DRY RUN: loaded the throwaway model trained earlier in this run")
        else:
            print(f"{name}: loaded from cache {shown}")
        return model.to(device).eval(), payload["record"]

    _env.seed_all(config.get("seed", 0))
    model = build().to(device)
    t0 = time.perf_counter()
    history = train(model)
    wall = time.perf_counter() - t0
    model.eval()
    record = {
        "name": name,
        "config": _plain(config),
        "scale": _env.scale(),
        "hardware": _env.hardware(),
        "history": history.to_dict(),
        "metrics": (metrics or _default_metrics)(model, history),
        "train_seconds": history.last("time") if history.last("time") is not None else wall,
        "wall_seconds": wall,
        "torch": str(torch.__version__),
    }
    record = _plain(record)  # fails now, not at load time, if something is not JSON-able
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": state, "record": record}, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written model behind
    if dry:
        print(f"{name}: DRY RUN: trained a throwaway model in {record['train_seconds']:.1f}s "
              f"(at most {_DRY_RUN_STEPS} steps; not saved to the cache)")
    else:
        print(f"{name}: trained in {record['train_seconds']:.1f}s, saved to {shown}")
    return model.eval(), record
