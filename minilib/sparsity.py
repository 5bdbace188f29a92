"""Chapter 6: activation sparsity, from lazy neurons to skipped weights.

Sections (each opens with its equations):

1. Measuring: :func:`feed_forwards`, :func:`activation_sparsity` (the fraction of hidden activations of every
   FeedForward with ``|a| <= threshold``), :func:`hidden_activations`, :func:`ffn_inputs`;
   quality per token for paired comparisons, :func:`token_losses` (compared with ``ml.bench.paired_difference``).
2. Making it sparser: :func:`relufy` (swap the activation), :func:`sparsify` (magnitude
   threshold, ``F.hardshrink``), :class:`Thresholded`, :class:`ShiftedReLU`, :class:`TopK`,
   :func:`calibrate_thresholds` (per layer or per channel, from calibration data) and
   :func:`apply_thresholds`; :class:`ProgressiveL1` (ProSparse's penalty) and the driver
   :func:`finetune` (chapter 1's CharGPT recipe, cached).
3. Cashing it in: :class:`SparseFFN` (the down-projection skips inactive neurons),
   :class:`PredictedFFN` with :func:`fit_predictor` (a Deja Vu-style low-rank predictor
   that also skips rows of the up-projection), :func:`replace_ffns`.
4. 2:4 semi-structured weights: :func:`prune_2_4`, :func:`apply_2_4`.

Conventions. A FeedForward is :class:`ml.models.FeedForward`, ``y = proj(act(fc(x)))``
with ``x: (..., C)`` and hidden activations ``a = act(fc(x)): (..., H)``. The *sparsity*
of ``a`` is the fraction of entries with ``|a| <= threshold`` (exact zeros at threshold
0); the other neurons are *active*. Thresholds are magnitudes, ``>= 0``. Functions that
run a model run it in eval mode under ``torch.no_grad()`` and restore its mode; hooks
never outlive the call. ``batches`` are iterables of model inputs, or of ``(input,
target)`` pairs (the input is used), such as ``ml.data.TokenBatches``.

References: Li et al., ICLR 2023 (the lazy neuron phenomenon); Mirzadeh et al., ICLR 2024
(ReLU strikes back); Song et al., 2024 (ProSparse); Lee et al., 2024 (CATS); Liu et al.,
ICLR 2025 (TEAL); Zhang et al., 2024 (CHESS); Liu et al., ICML 2023 (Deja Vu);
Mishra et al., 2021 (2:4 sparsity). Notebooks 6.1 (measuring), 6.2 (sparser), 6.3 (speed).
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import Tensor

from . import baselines, data, env, train
from .models import FeedForward

__all__ = [
    "feed_forwards", "activation_sparsity", "hidden_activations", "ffn_inputs", "token_losses",
    "relufy", "sparsify", "Thresholded", "ShiftedReLU", "TopK",
    "calibrate_thresholds", "apply_thresholds", "ProgressiveL1", "finetune",
    "SparseFFN", "PredictedFFN", "fit_predictor", "replace_ffns",
    "prune_2_4", "apply_2_4",
]


# ---------------------------------------------------------------------------------------
# Checks and plumbing shared by the sections
# ---------------------------------------------------------------------------------------

def _feed_forwards(model: nn.Module, who: str) -> list[tuple[str, FeedForward]]:
    """``(qualified name, module)`` of every FeedForward in ``model``, or a ValueError."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, FeedForward)]
    if not found:
        raise ValueError(f"{who}: {type(model).__name__} has no ml.models.FeedForward; "
                         f"build the model with the default mlp= or "
                         f"mlp=functools.partial(ml.models.FeedForward, act=...)")
    return found


def feed_forwards(model: nn.Module) -> list[tuple[str, FeedForward]]:
    """``(qualified name, module)`` of every :class:`ml.models.FeedForward` in ``model``.

    Raises a ValueError when there is none.
    """
    return _feed_forwards(model, "feed_forwards")


def _check_threshold(threshold: float | Tensor, who: str) -> None:
    t = torch.as_tensor(threshold, dtype=torch.float64)
    if t.numel() == 0 or bool(torch.isnan(t).any()) or bool((t < 0).any()):
        shown = threshold if t.numel() <= 4 else f"a tensor with min {t.min().item():g}"
        raise ValueError(f"{who}: threshold must be >= 0 (a magnitude: |a| <= threshold counts "
                         f"as zero); got {shown}. Use 0 for exact zeros")


def _check_fraction(value: float, name: str, who: str, closed: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        span = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{who}: {name} is a fraction in {span}; got {value}")


def _input(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@contextlib.contextmanager
def _recording(model: nn.Module, hooks: list[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Eval mode, no grad, the forward ``hooks`` registered; all undone on exit."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


# ---------------------------------------------------------------------------------------
# 1. Measuring: how many hidden activations are (near) zero
#
#     sparsity_l = #{ |a_l[n, i]| <= t } / (N H)      a_l = act(fc(x_l)): (N, H) in FFN l
# ---------------------------------------------------------------------------------------

def activation_sparsity(model: nn.Module, batches: Iterable[Any],
                        threshold: float = 0.0) -> dict[str, float]:
    """The fraction of hidden activations with |a| <= threshold, per FeedForward (Li et al., 2023).

        s_l = #{(n, i) : |a_l[n, i]| <= threshold} / #{(n, i)}     a_l = ffn_l.act(ffn_l.fc(x))

    over every token of every batch. Returns ``{name: s_l}`` keyed as in
    ``model.named_modules()``. A forward hook on each ``ffn.act`` counts; the model's mode
    and weights are unchanged afterwards and no hook is left behind. Notebook 6.1.
    """
    _check_threshold(threshold, "activation_sparsity")
    ffns = _feed_forwards(model, "activation_sparsity")
    small: dict[str, Any] = {name: 0 for name, _ in ffns}
    total = {name: 0 for name, _ in ffns}

    def counter(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, a: Tensor) -> None:   # a: (..., H)
            small[name] = small[name] + (a.abs() <= threshold).sum()   # on the device: no sync
            total[name] += a.numel()
        return hook

    with _recording(model, [(ffn.act, counter(name)) for name, ffn in ffns]):
        for batch in batches:
            model(_input(batch))
    silent = [name for name, n in total.items() if n == 0]
    if silent:
        raise ValueError(f"activation_sparsity: no activations seen in {', '.join(silent)}; "
                         f"`batches` was empty, or the model never called these FFNs' act")
    return {name: float(small[name]) / total[name] for name in small}


def token_losses(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """The cross-entropy of every target over ``batches`` of ``(x, y)``: ``(N,)`` nats, fp32.

    Its mean is the loss ``ml.train.evaluate`` reports. Two models measured on the same
    batches compare token by token with ``ml.bench.paired_difference``. Eval mode, mode restored.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [F.cross_entropy(model(x).float().flatten(0, -2), y.flatten(), reduction="none")
                   for x, y in batches]
    finally:
        model.train(was_training)
    if not out:
        raise ValueError("token_losses: `batches` yielded nothing")
    return torch.cat(out)


def hidden_activations(model: nn.Module, x: Any) -> dict[str, Tensor]:
    """The hidden activations ``a = act(fc(.))`` of every FeedForward on one input ``x``.

    Returns ``{name: a}``, each ``a`` of shape ``(..., H)`` (``(B, T, H)`` for a
    transformer), computed in eval mode; hooks removed and mode restored afterwards.
    """
    ffns = _feed_forwards(model, "hidden_activations")
    out: dict[str, Tensor] = {}

    def keeper(name: str) -> Callable:
        return lambda module, args, a: out.__setitem__(name, a.detach())

    with _recording(model, [(ffn.act, keeper(name)) for name, ffn in ffns]):
        model(_input(x))
    return out


def ffn_inputs(model: nn.Module, batches: Iterable[Any]) -> dict[str, Tensor]:
    """The inputs of every FeedForward over ``batches``, flattened: ``{name: (N, C)}``.

    ``N`` counts every token of every batch. Calibration data for :func:`fit_predictor`.
    """
    ffns = _feed_forwards(model, "ffn_inputs")
    seen: dict[str, list[Tensor]] = {name: [] for name, _ in ffns}

    def keeper(name: str) -> Callable:
        return lambda module, args, y: seen[name].append(args[0].detach().flatten(0, -2))

    with _recording(model, [(ffn, keeper(name)) for name, ffn in ffns]):
        for batch in batches:
            model(_input(batch))
    if not all(seen.values()):
        raise ValueError("ffn_inputs: `batches` yielded nothing")
    return {name: torch.cat(chunks) for name, chunks in seen.items()}


# ---------------------------------------------------------------------------------------
# 2. Making it sparser: swap the activation, threshold it, keep the top k
#
#     ReLUfication:  act -> ReLU (then fine-tune)              Mirzadeh et al., 2023
#     shifted ReLU:  a = max(x - b, 0), b > 0                  Mirzadeh et al., 2023
#     threshold:     a' = a 1[|a| > t_l]  (t_l from data)      CATS, TEAL (per layer), CHESS (per channel)
#     top-k:         a' = a 1[|a_i| among the k largest]       Li et al., 2023
# ---------------------------------------------------------------------------------------

def relufy(model: nn.Module, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Module:
    """Replace the activation of every FeedForward of ``model`` by ``act()``, in place.

    ReLUfication (Mirzadeh et al., 2023): a GELU or SiLU model becomes a ReLU model; it
    needs a short fine-tune to recover. Returns ``model``. Notebook 6.2.
    """
    for _, ffn in _feed_forwards(model, "relufy"):
        ffn.act = act().to(ffn.fc.weight.device)
    return model


def sparsify(x: Tensor, threshold: float | Tensor) -> Tensor:
    """Zero the small activations (magnitude sparsity); equal to F.hardshrink(x, threshold).

        y_i = x_i if |x_i| > threshold else 0        x: any shape -> y: same shape and dtype.

    ``threshold`` may be a tensor that broadcasts against ``x`` (one per channel). Notebook 6.2.
    """
    return x * (x.abs() > threshold)


class Thresholded(nn.Module):
    """``act`` followed by :func:`sparsify`: ``a' = a 1[|a| > t]``, ``a = act(x)`` (CATS, TEAL).

    ``threshold``: a float, or an ``(H,)`` tensor of per-channel thresholds (CHESS); stored
    as a buffer. ``(..., H) -> (..., H)``.
    """

    def __init__(self, act: nn.Module, threshold: float | Tensor):
        super().__init__()
        _check_threshold(threshold, "Thresholded")
        self.act = act
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).clone())

    def forward(self, x: Tensor) -> Tensor:
        return sparsify(self.act(x), self.threshold.to(x.dtype))


class ShiftedReLU(nn.Module):
    """``a = max(x - shift, 0)``: a ReLU whose kink moves right (Mirzadeh et al., 2023).

    A positive ``shift`` zeroes every pre-activation below it, so more neurons are off
    than with ReLU; the model needs a fine-tune to adapt. ``(...) -> (...)``.
    """

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = float(shift)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x - self.shift)

    def extra_repr(self) -> str:
        return f"shift={self.shift}"


class TopK(nn.Module):
    """``act`` keeping only the ``k`` activations of largest magnitude of each token.

        a' = a 1[|a_i| >= |a|_(k)]       |a|_(k): the k-th largest magnitude of the token

    (the top-k transformer of Li et al., 2023, on ``act(x)``; ties at the k-th value keep
    the ``k`` that ``torch.topk`` picks). ``(..., H) -> (..., H)``, sparsity ``1 - k / H``.
    """

    def __init__(self, act: nn.Module, k: int):
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"TopK: k is the number of activations kept per token, an int >= 1; got {k!r}")
        self.act, self.k = act, k

    def forward(self, x: Tensor) -> Tensor:
        a = self.act(x)
        if self.k >= a.shape[-1]:
            return a
        keep = a.abs().topk(self.k, dim=-1).indices                   # (..., k)
        return a * torch.zeros_like(a).scatter_(-1, keep, 1.0)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def calibrate_thresholds(model: nn.Module, batches: Iterable[Any], sparsity: float, *,
                         per_channel: bool = False) -> dict[str, Tensor]:
    """Per-FeedForward thresholds that zero a fraction ``sparsity`` of calibration activations.

        t_l = the ceil(s n)-th smallest |a_l| over the n calibration values of layer l
        (per_channel: one t_{l,i} per neuron i, over that neuron's N values; CHESS)

    so that ``|a| <= t_l`` holds for at least a fraction ``s`` of them: the training-free
    magnitude thresholds of CATS and TEAL. Returns ``{name: t}``, 0-dim or ``(H,)``.
    """
    _check_fraction(sparsity, "sparsity", "calibrate_thresholds")
    ffns = _feed_forwards(model, "calibrate_thresholds")
    seen: dict[str, list[Tensor]] = {name: [] for name, _ in ffns}

    def keeper(name: str) -> Callable:
        return lambda module, args, a: seen[name].append(a.detach().abs().flatten(0, -2).float())

    with _recording(model, [(ffn.act, keeper(name)) for name, ffn in ffns]):
        for batch in batches:
            model(_input(batch))
    if not all(seen.values()):
        raise ValueError("calibrate_thresholds: `batches` yielded nothing")
    out = {}
    for name, chunks in seen.items():
        a = torch.cat(chunks)                                         # (N, H): |a| of layer l
        a = a if per_channel else a.reshape(-1, 1)                    # (n values, channels)
        k = math.ceil(sparsity * a.shape[0])                          # the k-th smallest is t
        t = a.kthvalue(k, dim=0).values if k > 0 else a.new_zeros(a.shape[1])
        out[name] = t if per_channel else t.squeeze(0)
    return out


def apply_thresholds(model: nn.Module, thresholds: dict[str, float | Tensor]) -> nn.Module:
    """Wrap the act of each FeedForward named in ``thresholds`` in :class:`Thresholded`, in place.

    ``thresholds``: ``{name: t}`` as returned by :func:`calibrate_thresholds`. Returns ``model``.
    """
    ffns = dict(_feed_forwards(model, "apply_thresholds"))
    unknown = sorted(set(thresholds) - set(ffns))
    if unknown:
        raise ValueError(f"apply_thresholds: no FeedForward named {', '.join(unknown)}; "
                         f"the model has {', '.join(ffns)}")
    for name, t in thresholds.items():
        ffns[name].act = Thresholded(ffns[name].act, t).to(ffns[name].fc.weight.device)
    return model


class ProgressiveL1:
    """ProSparse's loss: cross-entropy plus an L1 penalty on the FFN activations that grows.

        loss = CE + lambda(s) mean_l mean|a_l|,   lambda(s) = l1 sin^2(pi min(s, S) / (2 S))

    at optimizer step ``s`` of ``S`` (Song et al., 2024, use several such sine stages).
    Forward hooks on every FFN's ``act`` keep the activations of the current forward pass
    (with their graph); call ``remove()`` when done. ``loss_fn(logits, y)`` for ``ml.train.fit``.
    """

    def __init__(self, model: nn.Module, l1: float, total_steps: int):
        self.l1, self.total, self.step, self.acts = float(l1), max(1, total_steps), 0, []
        self.hooks = [model.register_forward_pre_hook(lambda m, args: self.acts.clear())]
        self.hooks += [ffn.act.register_forward_hook(lambda m, args, a: self.acts.append(a.abs().mean()))
                       for _, ffn in _feed_forwards(model, "ProgressiveL1")]

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        lam = self.l1 * math.sin(math.pi * min(self.step, self.total) / (2 * self.total)) ** 2
        self.step += 1
        ce = F.cross_entropy(logits.float().flatten(0, -2), y.flatten())
        return ce + lam * torch.stack(self.acts).mean()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def finetune(name: str, model: nn.Module, steps: int, *, lr_factor: float = 1 / 3, l1: float = 0.0,
             prepare: Callable[[nn.Module], Any] | None = None, log_every: int | None = None,
             retrain: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of a CharGPT with chapter 1's recipe; cached as ``char_gpt-ft-<name>``.

    AdamW with the baseline's betas, weight decay and gradient clipping, peak lr
    ``lr_factor`` times the baseline's, 10% warm-up, cosine decay to a tenth, on random
    training windows; loss :class:`ProgressiveL1` when ``l1 > 0``. ``prepare(copy)`` runs
    first (e.g. :func:`apply_2_4`); ``torch.nn.utils.prune`` masks are made permanent at the
    end. Every ``log_every`` steps the history logs ``val_loss`` (on the first fifth of the
    baseline's validation windows) and ``sparsity`` (mean exact-zero fraction of the FFNs). The cache key holds
    ``name`` and the settings; give different starting models different names. ``model``
    is left unchanged. Returns ``(model, record)`` as ``ml.train.train_or_load``. Notebook 6.2.
    """
    cfg = baselines.config("char_gpt") | {"ft": name, "ft_steps": steps, "lr_factor": lr_factor, "l1": l1}
    dev = next(model.parameters()).device
    corpus = data.shakespeare()
    T, B, every = cfg["block_size"], cfg["batch_size"], max(1, min(log_every or steps, steps))
    val = list(data.TokenBatches(corpus.val_ids, T, B, steps=cfg["eval_batches"], device=dev,
                                 generator=torch.Generator().manual_seed(1234)))

    def log(m: nn.Module, history: train.History, step: int, seconds: float) -> None:
        s = activation_sparsity(m, val[:5])                   # a curve: a fifth of the windows
        history.log(step=step, time=seconds, val_loss=train.evaluate(m, val[: max(1, len(val) // 5)])["loss"],
                    sparsity=sum(s.values()) / len(s))

    def run(m: nn.Module) -> train.History:
        if prepare is not None:
            prepare(m)
        opt = train.adamw(m, lr_factor * cfg["lr"], cfg["weight_decay"], cfg["betas"])
        schedule = train.warmup_cosine(steps, max(1, steps // 10), final=0.1)
        batches = data.TokenBatches(corpus.train_ids, T, B, steps=every, device=dev)
        loss_fn = ProgressiveL1(m, l1, steps) if l1 > 0 else None
        history, seconds = train.History(), 0.0
        log(m, history, 0, seconds)
        for start in env.trim(range(0, steps, every)):                # a dry run: two chunks
            n = min(every, steps - start)
            h = train.fit(m, batches, optimizer=opt, steps=n, grad_clip=cfg["grad_clip"], loss_fn=loss_fn,
                          schedule=lambda i, s0=start: schedule(s0 + i), progress=False)
            seconds += h.last("time") or 0.0
            log(m, history, start + n, seconds)
        if loss_fn is not None:
            loss_fn.remove()
        for module in m.modules():
            if hasattr(module, "weight_orig"):
                torch_prune.remove(module, "weight")
        return history

    return train.train_or_load(f"char_gpt-ft-{name}", cfg, lambda: copy.deepcopy(model).train(), run,
                               retrain=retrain, device=dev)


# ---------------------------------------------------------------------------------------
# 3. Cashing it in: skip the inactive neurons
#
#     dense:     y = W2 a + b2,  a = act(W1 x + b1)            2 C H multiply-adds per token
#     SparseFFN: y = b2 + sum_{i : |a_i| > t} a_i W2[:, i]     C H + C |S|,  S the active neurons
#     Deja Vu:   S = {i : p(x)_i > 0},  p low rank r           r (C + H) + 2 C |S|
# ---------------------------------------------------------------------------------------

def _check_ffn(ffn: nn.Module, who: str) -> None:
    if not isinstance(ffn, FeedForward):
        raise ValueError(f"{who} wraps an ml.models.FeedForward; got {type(ffn).__name__}")
    if ffn.proj.bias is None or ffn.fc.bias is None:
        raise ValueError(f"{who}: the FeedForward's fc and proj need biases (nn.Linear default)")


class _TransposedDown(nn.Module):
    """Holds ``W2^T`` ``(H, C)``, contiguous, refreshed whenever ``proj.weight`` changes."""

    def __init__(self, ffn: FeedForward):
        super().__init__()
        self.ffn = ffn
        self._key: tuple | None = None
        self._w2t: Tensor | None = None

    def w2t(self) -> Tensor:
        """``W2^T``: row ``i`` is the output direction of neuron ``i``, ``(H, C)``."""
        w = self.ffn.proj.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if key != self._key:                  # new weights (fine-tuning, .to()): re-transpose
            self._w2t, self._key = w.detach().t().contiguous(), key
        return self._w2t


class SparseFFN(_TransposedDown):
    """A FeedForward whose down-projection reads only the active neurons' weights.

        a = act(W1 x + b1)                                  (N, H): the full up-projection
        S = {i : |a_n,i| > threshold for some token n}      the active neurons (union over tokens)
        y = b2 + sum_{i in S} a_i W2[:, i]                   (N, C): |S| columns of W2 instead of H

    The columns of ``W2`` are gathered as rows of ``W2^T`` (``index_select``) and multiplied
    with one ``addmm``. Same output as the dense FFN up to float rounding whenever the
    activation zeroes what the threshold skips (exactly the ReLU case at threshold 0);
    with a threshold > 0 it equals the FFN with ``Thresholded(act, threshold)``. At batch 1
    (decoding) ``S`` is the token's own active set; with more tokens it grows (notebook
    6.1's union). Inference only. ``(..., C) -> (..., C)``. Notebook 6.3.
    """

    def __init__(self, ffn: FeedForward, threshold: float = 0.0):
        _check_ffn(ffn, "SparseFFN")
        _check_threshold(threshold, "SparseFFN")
        super().__init__(ffn)
        self.threshold = float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        a = self.ffn.act(self.ffn.fc(x)).flatten(0, -2)               # (N, H)
        if self.threshold > 0:
            a = sparsify(a, self.threshold)                           # |a| <= t counts as zero
        active = a[0] if a.shape[0] == 1 else a.any(0)                # (H,): nonzero for some token
        S = active.nonzero().squeeze(1)                               # (k,): the active neurons
        y = torch.addmm(self.ffn.proj.bias, a.index_select(1, S),    # (N, C) = b2 + sum_{i in S} a_i W2[:, i]
                        self.w2t().index_select(0, S))
        return self.ffn.dropout(y).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class PredictedFFN(_TransposedDown):
    """A FeedForward computing only the neurons a cheap predictor expects active (Deja Vu).

        S = {i : p(x)_i > 0}                   p: (N, C) -> (N, H) logits, rank r << C
        a_S = act(x W1[S]^T + b1[S])            (N, |S|): only the predicted rows of W1
        y = b2 + a_S W2[:, S]^T                 (N, C)

    With ``N > 1`` tokens, ``S`` is the union of their predicted sets (Deja Vu's batched
    case). A neuron that is active but not predicted is lost: the output then differs
    from the dense FFN. Inference only. ``(..., C) -> (..., C)``. Notebook 6.3.
    """

    def __init__(self, ffn: FeedForward, predictor: nn.Module):
        _check_ffn(ffn, "PredictedFFN")
        super().__init__(ffn)
        self.predictor = predictor

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.flatten(0, -2)                                         # (N, C)
        S = (self.predictor(x2) > 0).any(0).nonzero().squeeze(1)      # (k,): predicted active neurons
        W1, b1 = self.ffn.fc.weight.index_select(0, S), self.ffn.fc.bias.index_select(0, S)
        a = self.ffn.act(F.linear(x2, W1, b1))                        # (N, k): only the predicted rows
        y = torch.addmm(self.ffn.proj.bias, a, self.w2t().index_select(0, S))  # (N, C)
        return self.ffn.dropout(y).reshape(x.shape)


def fit_predictor(ffn: FeedForward, x: Tensor, rank: int, *, recall: float = 0.99,
                  threshold: float = 0.0, steps: int = 300, batch_size: int = 1024,
                  lr: float = 3e-3, seed: int = 0) -> nn.Sequential:
    """Train a rank-``rank`` predictor of which neurons of ``ffn`` are active (Deja Vu's MLP).

        p(x) = (x U^T) V^T + c,   U: (r, C), V: (H, r)     starts at the truncated SVD of W1, c = b1
        target_i = 1[|a_i| > threshold];  loss = binary cross-entropy per neuron

    trained with Adam on random minibatches of the FFN inputs ``x`` ``(N, C)``; then the
    bias ``c`` is shifted so that a fraction ``recall`` of the active (token, neuron) pairs
    of ``x`` is predicted. Returns the predictor ``nn.Sequential(Linear(C, r), Linear(r, H))``.
    """
    _check_ffn(ffn, "fit_predictor")
    _check_fraction(recall, "recall", "fit_predictor", closed=True)
    H, C = ffn.fc.weight.shape
    if not isinstance(rank, int) or not 1 <= rank <= min(H, C):
        raise ValueError(f"fit_predictor: rank must be an int in 1..{min(H, C)}; got {rank!r}")
    if x.dim() != 2 or x.shape[1] != C:
        raise ValueError(f"fit_predictor: x must be FFN inputs (N, {C}); got {tuple(x.shape)}")
    with torch.no_grad():
        target = (ffn.act(ffn.fc(x)).abs() > threshold).float()        # (N, H)
        U, s, Vh = torch.linalg.svd(ffn.fc.weight.float(), full_matrices=False)  # W1 = U diag(s) Vh
        p = nn.Sequential(nn.Linear(C, rank, bias=False), nn.Linear(rank, H)).to(x)
        p[0].weight.copy_(Vh[:rank] * s[:rank, None].sqrt())
        p[1].weight.copy_(U[:, :rank] * s[:rank].sqrt())
        p[1].bias.copy_(ffn.fc.bias)
    g = torch.Generator(device=x.device).manual_seed(seed)
    opt = torch.optim.Adam(p.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g, device=x.device)
        loss = F.binary_cross_entropy_with_logits(p(x[idx]), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():                      # shift c: a fraction `recall` of actives gets logit > 0
        logits = p(x)[target.bool()]
        if logits.numel() and recall > 0:
            k = max(1, math.floor((1 - recall) * logits.numel()))
            p[1].bias -= logits.kthvalue(k).values if recall < 1 else logits.min() - 1e-6
    return p.eval()


def replace_ffns(model: nn.Module, wrap: Callable[[str, FeedForward], nn.Module]) -> nn.Module:
    """Replace every FeedForward of ``model`` by ``wrap(name, ffn)``, in place; returns ``model``.

    E.g. ``replace_ffns(model, lambda name, ffn: SparseFFN(ffn))``. The parameters stay
    shared with the wrapped FFN. Use it on a copy (``copy.deepcopy``) to keep the original.
    """
    for name, ffn in _feed_forwards(model, "replace_ffns"):
        if name == "":
            raise ValueError("replace_ffns: the model itself is a FeedForward; wrap it directly")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, wrap(name, ffn))
    return model


# ---------------------------------------------------------------------------------------
# 4. 2:4 semi-structured weights
#
#     in every group of 4 consecutive inputs of a row, keep the 2 weights of largest |w|:
#     half the weights, in a pattern sparse tensor cores run at up to twice the speed
# ---------------------------------------------------------------------------------------

def _check_2_4(weight: Tensor, who: str) -> None:
    if weight.dim() < 1 or weight.shape[-1] % 4 != 0:
        raise ValueError(f"{who}: 2:4 sparsity groups 4 consecutive inputs, so the last dimension "
                         f"must be a multiple of 4; got shape {tuple(weight.shape)}. Skip this "
                         f"layer or pad its inputs")


def prune_2_4(weight: Tensor) -> Tensor:
    """The 2:4 mask of ``weight``: in each group of 4 consecutive inputs keep the 2 largest |w|.

        mask[..., 4g + j] = 1  iff  |w[..., 4g + j]| is among the 2 largest of |w[..., 4g : 4g + 4]|

    (Mishra et al., 2021; ties keep the 2 that ``torch.topk`` picks). ``weight (..., K)``
    with ``K % 4 == 0`` -> bool mask of the same shape, exactly half of it True. Notebook 6.3.
    """
    _check_2_4(weight, "prune_2_4")
    groups = weight.detach().abs().reshape(*weight.shape[:-1], -1, 4)  # (..., K/4, 4)
    keep = groups.topk(2, dim=-1).indices                               # (..., K/4, 2)
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    return mask.scatter_(-1, keep, True).reshape(weight.shape)


def apply_2_4(model: nn.Module, *, skip: tuple[str, ...] = ("head",),
              only: Callable[[str, nn.Linear], bool] | None = None) -> list[str]:
    """Mask every ``nn.Linear`` weight of ``model`` to 2:4 with :func:`prune_2_4`, in place.

    Uses ``torch.nn.utils.prune.custom_from_mask``, so the mask stays applied while the
    model is fine-tuned (``weight = weight_orig * weight_mask``); make it permanent with
    ``torch.nn.utils.prune.remove(layer, "weight")``. Layers named in ``skip`` (CharGPT's
    ``head`` shares its weight with the embedding), those ``only(name, layer)`` rejects and
    those whose input width is not a multiple of 4 are left dense. Returns the names masked.
    """
    done = []
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.Linear) or name.split(".")[-1] in skip:
            continue
        if layer.in_features % 4 or (only is not None and not only(name, layer)):
            continue
        torch_prune.custom_from_mask(layer, "weight", prune_2_4(layer.weight))
        done.append(name)
    if not done:
        raise ValueError("apply_2_4: no nn.Linear to mask (all skipped, or no input width "
                         "is a multiple of 4)")
    return done
