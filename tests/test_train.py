"""ml.train: History, evaluate (with TTA), fit, schedules, and the cache of trained models."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from minilib import train


# --- helpers ------------------------------------------------------------------

def separable(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 2-D, far apart: a linear model separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + (y[:, None] * 2 - 1) * 2.0
    return x, y


def batches(x, y, bs):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


class Const(nn.Module):
    """Returns fixed logits for every input, whatever it is."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(x.shape[0], *self.logits.shape)


# --- History ------------------------------------------------------------------

def test_history_columns_best_last_time_to():
    h = train.History()
    h.log(step=1, time=1.0, val_accuracy=0.5, val_loss=2.0)
    h.log(step=2, time=2.0, train_loss=1.0)  # no evaluation this row
    h.log(step=3, time=3.5, val_accuracy=0.95, val_loss=1.0)
    h.log(step=4, time=5.0, val_accuracy=0.93, val_loss=0.5)
    assert len(h) == 4
    assert h.column("val_accuracy") == [0.5, None, 0.95, 0.93]
    assert h.last("val_accuracy") == 0.93 and h.last("train_loss") == 1.0
    assert h.last("nothing") is None
    assert h.best("val_accuracy") == 0.95 and h.best("val_loss", mode="min") == 0.5
    assert h.time_to("val_accuracy", 0.94) == 3.5
    assert h.time_to("val_accuracy", 0.99) is None
    assert h.time_to("val_loss", 1.0, mode="min") == 3.5
    with pytest.raises(KeyError, match="columns"):
        h.column("nothing")
    with pytest.raises(ValueError, match="mode"):
        h.best("val_loss", mode="lowest")
    again = train.History.from_dict(h.to_dict())
    assert again.rows == h.rows and again.rows is not h.rows


# --- evaluate -----------------------------------------------------------------

def test_evaluate_hand_made_case():
    # logits favour class 0 for every sample: accuracy = share of label 0
    model = Const([2.0, 0.0, -1.0])
    y = torch.tensor([0, 0, 1, 2, 0])
    loader = batches(torch.zeros(5, 4), y, 2)
    result = train.evaluate(model, loader)
    assert result["accuracy"] == pytest.approx(3 / 5)
    logp = torch.log_softmax(torch.tensor([2.0, 0.0, -1.0]), 0)
    assert result["loss"] == pytest.approx(-logp[y].mean().item(), rel=1e-5)


def test_evaluate_sequences_flatten():
    model = Const([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])  # (T=3, V=2): predicts 0, 1, 0
    y = torch.tensor([[0, 1, 1], [1, 0, 0]])             # 3 of 6 targets right
    assert train.evaluate(model, [(torch.zeros(2, 3), y)])["accuracy"] == pytest.approx(0.5)


def test_evaluate_restores_mode_and_tta_averages_flips():
    class LeftPixel(nn.Module):
        """Logits from the leftmost column only: flipping the image changes them."""

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            left = x[:, 0, 0, 0] * self.w
            return torch.stack([left, -left], dim=1)

    model = LeftPixel().train()
    x = torch.zeros(2, 1, 1, 4)
    x[0, 0, 0, 0] = 1.0     # sample 0: f(x) = [1, -1]; f(flip x) = [0, 0]  -> class 0 either way
    x[1, 0, 0, -1] = -3.0   # sample 1: f(x) = [0, 0] (tie: class 0); f(flip x) = [-3, 3]
    y = torch.tensor([0, 1])
    plain = train.evaluate(model, [(x, y)])
    tta = train.evaluate(model, [(x, y)], tta=True)
    assert model.training  # mode restored
    assert plain["accuracy"] == 0.5 and tta["accuracy"] == 1.0
    logits = (model(x) + model(x.flip(-1))) / 2  # [[0.5, -0.5], [-1.5, 1.5]]
    expected = nn.functional.cross_entropy(logits, y).item()
    assert tta["loss"] == pytest.approx(expected, rel=1e-5)


# --- fit ----------------------------------------------------------------------

def test_fit_learns_separable_problem():
    torch.manual_seed(0)
    x, y = separable()
    loader = batches(x, y, 32)
    model = nn.Linear(2, 2)
    before = train.evaluate(model, loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    h = train.fit(model, loader, optimizer=opt, epochs=3, eval_loader=loader, progress=False)
    assert [r["epoch"] for r in h.rows] == [1, 2, 3]
    assert [r["step"] for r in h.rows] == [8, 16, 24]
    for key in ("time", "lr", "train_loss", "val_loss", "val_accuracy"):
        assert all(r[key] is not None for r in h.rows), key
    assert h.column("time") == sorted(h.column("time"))
    assert h.last("val_loss") < before["loss"] / 2
    assert h.last("val_accuracy") > 0.95
    assert h.rows[-1]["train_loss"] < h.rows[0]["train_loss"] + 1e-9


def test_fit_steps_schedule_and_eval_every():
    x, y = separable(64)
    loader = batches(x, y, 16)  # 4 batches per epoch, reused when it runs out
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    seen = []

    def schedule(step):
        seen.append(step)
        return 1.0 / (step + 1)

    h = train.fit(model, loader, optimizer=opt, steps=10, schedule=schedule, eval_every=3,
                  progress=False)
    assert seen == list(range(10))
    assert [r["step"] for r in h.rows] == [3, 6, 9, 10]
    assert "epoch" not in h.rows[-1]  # step-based: no epochs
    assert h.rows[-1]["lr"] == pytest.approx(1.0 / 10)
    assert opt.param_groups[0]["initial_lr"] == 1.0
    assert "val_loss" not in h.rows[0]


def test_fit_sequences_and_label_smoothing():
    """(B, T, V) logits with (B, T) targets use the flattened cross-entropy."""
    torch.manual_seed(0)
    emb = nn.Embedding(5, 5)
    x = torch.randint(0, 5, (8, 6))
    y = (x + 1) % 5  # predict the next id
    loader = [(x, y)]
    opt = torch.optim.Adam(emb.parameters(), lr=0.1)
    h = train.fit(emb, loader, optimizer=opt, steps=60, eval_loader=loader,
                  label_smoothing=0.1, progress=False)
    assert h.last("val_accuracy") == 1.0


def test_fit_argument_errors():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = batches(*separable(8), 4)
    with pytest.raises(ValueError, match="exactly one"):
        train.fit(model, loader, optimizer=opt, progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        train.fit(model, loader, optimizer=opt, epochs=1, steps=1, progress=False)
    with pytest.raises(ValueError, match="label_smoothing"):
        train.fit(model, loader, optimizer=opt, epochs=1, label_smoothing=0.1,
                  loss_fn=nn.functional.cross_entropy, progress=False)


def test_fit_custom_loss_and_grad_clip():
    x, y = separable(32)
    model = nn.Linear(2, 2)
    calls = []

    def loss_fn(logits, target):
        calls.append(logits.shape)
        return nn.functional.cross_entropy(logits, target)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train.fit(model, batches(x, y, 16), optimizer=opt, epochs=1, loss_fn=loss_fn,
              grad_clip=0.5, progress=False)
    assert calls == [(16, 2), (16, 2)]


# --- schedules ----------------------------------------------------------------

def test_one_cycle_values():
    s = train.one_cycle(100, warmup=0.25)
    assert s(0) == 0.0
    assert s(25) == pytest.approx(1.0)
    assert s(12) == pytest.approx(12 / 25)
    assert s(50) == pytest.approx(50 / 75)
    assert s(100) == 0.0
    assert all(0 <= s(i) <= 1 for i in range(101))


def test_warmup_cosine_values():
    s = train.warmup_cosine(110, 10, final=0.1)
    assert s(0) == pytest.approx(0.1)
    assert s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert s(110) == pytest.approx(0.1)
    assert s(500) == pytest.approx(0.1)
    values = [s(i) for i in range(10, 111)]
    assert values == sorted(values, reverse=True)
    with pytest.raises(ValueError):
        train.warmup_cosine(10, 10)


# --- the cache of trained models ----------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    return tmp_path


def _job(counter):
    x, y = separable(64)
    loader = batches(x, y, 16)

    def build():
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2))

    def fit_it(model):
        counter.append(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return train.fit(model, loader, optimizer=opt, epochs=2, eval_loader=loader,
                         progress=False)

    return build, fit_it


def test_train_or_load_saves_then_loads(cache, capsys):
    runs = []
    build, fit_it = _job(runs)
    cfg = {"lr": 0.1, "hidden": [8], "seed": 0}
    m1, r1 = train.train_or_load("toy", cfg, build, fit_it, device="cpu")
    out = capsys.readouterr().out
    path = train.cache_path("toy", cfg)
    assert path.parent == cache / "models" and path.name.startswith("toy-smoke-")
    assert path.exists() and "trained in" in out and f"models/{path.name}" in out
    assert str(cache) not in out  # never an absolute path of this machine
    assert runs == [1] and not m1.training

    m2, r2 = train.train_or_load("toy", cfg, build, fit_it, device="cpu")
    out = capsys.readouterr().out
    assert f"loaded from cache models/{path.name} (in $BOOK_CACHE)" in out
    assert str(cache) not in out
    assert runs == [1]  # not retrained
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r2 == r1
    assert r1["config"] == cfg and r1["scale"] == "smoke"
    assert set(r1) >= {"config", "scale", "hardware", "history", "metrics", "train_seconds",
                       "torch"}
    assert train.History.from_dict(r1["history"]).last("val_accuracy") == \
        r1["metrics"]["val_accuracy"]
    assert r1["train_seconds"] == r1["history"]["rows"][-1]["time"]


def test_train_or_load_retrain_and_metrics(cache):
    runs = []
    build, fit_it = _job(runs)
    cfg = {"seed": 1}
    train.train_or_load("toy", cfg, build, fit_it, device="cpu")
    _, record = train.train_or_load("toy", cfg, build, fit_it, retrain=True, device="cpu",
                                    metrics=lambda m, h: {"n_rows": len(h)})
    assert runs == [1, 1]
    assert record["metrics"] == {"n_rows": 2}
    _, loaded = train.train_or_load("toy", cfg, build, fit_it, device="cpu")
    assert loaded["metrics"] == {"n_rows": 2} and runs == [1, 1]


def test_train_or_load_seeds_for_reproducibility(cache):
    runs = []
    build, fit_it = _job(runs)
    m1, _ = train.train_or_load("toy", {"seed": 3}, build, fit_it, device="cpu")
    m2, _ = train.train_or_load("toy", {"seed": 3}, build, fit_it, retrain=True, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(),
                                                 m2.state_dict().values()))


def test_cache_key_depends_on_config_and_scale(cache, monkeypatch):
    k = train.cache_key("cnn", {"a": 1, "b": [1, 2]})
    assert k.startswith("cnn-smoke-") and len(k.split("-")[-1]) == 12
    assert train.cache_key("cnn", {"b": [1, 2], "a": 1}) == k  # key order is irrelevant
    assert train.cache_key("cnn", {"a": 2, "b": [1, 2]}) != k
    assert train.cache_key("vit", {"a": 1, "b": [1, 2]}) != k
    monkeypatch.setenv("BOOK_SCALE", "cpu")
    assert train.cache_key("cnn", {"a": 1, "b": [1, 2]}).startswith("cnn-cpu-")
    with pytest.raises(TypeError, match="JSON"):
        train.cache_key("cnn", {"a": object()})
    with pytest.raises(TypeError, match="JSON"):
        train.cache_key("cnn", {"a": math.nan})


def test_fit_progress_bar_respects_tqdm_disable(monkeypatch, capsys):
    """`make execute` sets TQDM_DISABLE=1 so stored notebooks hold no progress lines."""
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    train.fit(model, batches, optimizer=opt, epochs=1, progress=True, desc="quiet-run")
    assert "quiet-run" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    train.fit(model, batches, optimizer=opt, epochs=1, progress=True, desc="loud-run")
    assert "loud-run" in capsys.readouterr().err


def test_adamw_decays_matrices_only():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[1].bias.requires_grad_(False)
    opt = train.adamw(model, lr=0.1, weight_decay=0.05, betas=(0.9, 0.99))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [(3, 4)]
    assert {id(p) for p in plain["params"]} == {id(model[0].bias), id(model[1].weight)}
    assert decayed["betas"] == (0.9, 0.99) and decayed["lr"] == 0.1


# --- paths: stored notebooks never print this machine's absolute paths ---------

def test_train_or_load_prints_paths_relative_to_the_data_folder(tmp_path, monkeypatch, capsys):
    """Issue 11: "loaded from cache /<somewhere>/data/cache/..." in stored notebooks."""
    data = tmp_path / "somewhere" / "data"
    monkeypatch.setenv("BOOK_DATA", str(data))
    monkeypatch.delenv("BOOK_CACHE", raising=False)
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    build, fit_it = _job([])
    train.train_or_load("toy", {"seed": 0}, build, fit_it, device="cpu")
    train.train_or_load("toy", {"seed": 0}, build, fit_it, device="cpu")
    out = capsys.readouterr().out
    name = train.cache_path("toy", {"seed": 0}).name
    assert train.cache_path("toy", {"seed": 0}).parent == data / "cache" / "models"
    assert f"saved to models/{name} (in the data folder)" in out
    assert f"loaded from cache models/{name} (in the data folder)" in out
    assert str(tmp_path) not in out and "/somewhere" not in out


# --- precision: fp32 evaluation by default, explicit autocast -------------------

class DtypeProbe(nn.Module):
    """A linear classifier that records the dtype its input arrives in and its output has."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x):
        y = self.fc(x)
        self.seen.append((x.dtype, y.dtype, torch.is_autocast_enabled(x.device.type)))
        return y


def test_evaluate_runs_in_fp32_by_default_and_bf16_when_asked():
    x, y = separable(32)
    model = DtypeProbe()
    fp32 = train.evaluate(model, batches(x, y, 16))
    assert model.seen == [(torch.float32, torch.float32, False)] * 2
    model.seen.clear()
    bf16 = train.evaluate(model, batches(x, y, 16), amp=True)   # CPU autocast: bf16
    assert model.seen == [(torch.float32, torch.bfloat16, True)] * 2
    model.seen.clear()
    train.evaluate(model, batches(x, y, 16), amp=torch.bfloat16)
    assert model.seen[0][1] == torch.bfloat16
    assert bf16["accuracy"] == pytest.approx(fp32["accuracy"], abs=0.1)
    with pytest.raises(TypeError, match="amp"):
        train.evaluate(model, batches(x, y, 16), amp="bf16")


def test_fit_trains_fp32_on_cpu_and_evaluates_fp32_by_default():
    x, y = separable(64)
    model = DtypeProbe()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    train.fit(model, batches(x, y, 16), optimizer=opt, epochs=1, eval_loader=batches(x, y, 32),
              progress=False)
    assert model.seen == [(torch.float32, torch.float32, False)] * (4 + 2)


def test_fit_amp_true_trains_under_bf16_autocast_and_still_evaluates_fp32():
    torch.manual_seed(0)
    x, y = separable(128)
    model = DtypeProbe()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    h = train.fit(model, batches(x, y, 16), optimizer=opt, epochs=3, amp=True,
                  eval_loader=batches(x, y, 64), progress=False)
    steps, evals = model.seen[:8], model.seen[8:10]
    assert steps == [(torch.float32, torch.bfloat16, True)] * 8
    assert evals == [(torch.float32, torch.float32, False)] * 2
    assert model.fc.weight.dtype == torch.float32 and h.last("val_accuracy") > 0.95
    model.seen.clear()
    train.fit(model, batches(x, y, 16), optimizer=opt, steps=1, amp=True, eval_amp=True,
              eval_loader=batches(x, y, 64), progress=False)
    assert model.seen[-1] == (torch.float32, torch.bfloat16, True)  # eval_amp=True: bf16 too


def test_fit_fp16_uses_a_gradient_scaler(monkeypatch):
    """fp16 (a T4 without bf16) needs loss scaling; bf16 and fp32 do not."""
    made = []
    real = torch.amp.GradScaler

    def spy(*args, **kwargs):
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.amp, "GradScaler", spy)
    torch.manual_seed(0)
    x, y = separable(128)
    model = DtypeProbe()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    h = train.fit(model, batches(x, y, 16), optimizer=opt, epochs=3, amp=torch.float16,
                  grad_clip=10.0, eval_loader=batches(x, y, 64), progress=False)
    assert made == [("cpu",)]
    assert model.seen[0][1] == torch.float16 and h.last("val_accuracy") > 0.95
    train.fit(model, batches(x, y, 16), optimizer=opt, steps=2, amp=True, progress=False)
    assert len(made) == 1  # bf16: no scaler


# --- no host-device syncs in the hot loop ------------------------------------------

class SyncCounter(TorchFunctionMode):
    """Counts the calls that read a tensor back to Python (each a sync on a GPU)."""

    SYNCS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_fit_reads_nothing_back_per_step():
    """Schedule, grad clipping, label smoothing, loss accumulation: no sync per step; the
    loss sum is read once per logged row."""
    x, y = separable(64)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with SyncCounter() as counter:
        h = train.fit(model, batches(x, y, 16), optimizer=opt, steps=20, eval_every=8,
                      schedule=train.one_cycle(20), grad_clip=1.0, label_smoothing=0.1,
                      progress=False)
    assert [r["step"] for r in h.rows] == [8, 16, 20]
    assert counter.calls == ["item"] * 3  # one per row: train_loss


def test_fit_warms_up_the_device_before_the_clock(monkeypatch):
    order = []
    monkeypatch.setattr(train, "_warm_up", lambda device, dtype=None: order.append("warm-up"))
    real_perf = train.time.perf_counter
    monkeypatch.setattr(train.time, "perf_counter", lambda: order.append("clock") or real_perf())

    class Probe(nn.Linear):
        def forward(self, x):
            order.append("step")
            return super().forward(x)

    model = Probe(2, 2)
    train.fit(model, batches(*separable(16), 8), optimizer=torch.optim.SGD(model.parameters(), 0.1),
              steps=1, progress=False)
    assert order[:3] == ["warm-up", "clock", "step"]
    monkeypatch.undo()
    assert train._warm_up(torch.device("cpu"), torch.bfloat16) is None  # a no-op off CUDA


# --- dry run -------------------------------------------------------------------------

class CountingLoader:
    """A list of batches that counts how many it handed out."""

    def __init__(self, items):
        self.items, self.taken = items, 0

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        for item in self.items:
            self.taken += 1
            yield item


def test_dry_run_fit_stops_after_two_steps_and_evaluates_two_batches(monkeypatch):
    monkeypatch.setenv("BOOK_DRYRUN", "1")
    x, y = separable(256)
    train_loader, eval_loader = CountingLoader(batches(x, y, 16)), CountingLoader(batches(x, y, 16))
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = train.fit(model, train_loader, optimizer=opt, epochs=5, eval_loader=eval_loader,
                  progress=False)
    assert train_loader.taken == 2 and eval_loader.taken == 2
    assert [r["step"] for r in h.rows] == [2] and h.rows[0]["epoch"] == pytest.approx(2 / 16)
    direct = CountingLoader(batches(x, y, 16))
    train.evaluate(model, direct)
    assert direct.taken == 2
    monkeypatch.setenv("BOOK_DRYRUN", "0")
    h = train.fit(model, CountingLoader(batches(x, y, 64)), optimizer=opt, steps=5, progress=False)
    assert h.rows[-1]["step"] == 5


def test_dry_run_train_or_load_never_touches_the_cache(cache, monkeypatch, capsys):
    monkeypatch.setenv("BOOK_DRYRUN", "1")
    runs = []
    build, fit_it = _job(runs)
    m1, r1 = train.train_or_load("toy", {"seed": 0}, build, fit_it, device="cpu")
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "throwaway" in out and "not saved to the cache" in out
    assert not any(cache.rglob("*.pt"))                      # nothing written to the cache
    assert r1["history"]["rows"][-1]["step"] == 2
    m2, _ = train.train_or_load("toy", {"seed": 0}, build, fit_it, device="cpu")
    assert runs == [1] and "DRY RUN" in capsys.readouterr().out  # the throwaway, reused
    assert not any(cache.rglob("*.pt"))
    # a real model in the cache is not read in a dry run either
    monkeypatch.setenv("BOOK_DRYRUN", "0")
    train.train_or_load("toy", {"seed": 5}, build, fit_it, device="cpu")
    assert len(list(cache.rglob("*.pt"))) == 1 and runs == [1, 1]
    monkeypatch.setenv("BOOK_DRYRUN", "1")
    train.train_or_load("toy", {"seed": 5}, build, fit_it, device="cpu")
    assert runs == [1, 1, 1] and os.path.isdir(train._dry_run_dir())
