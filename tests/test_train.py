"""ml.train: History, evaluate (with TTA), fit, schedules, and the cache of trained models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

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
    assert path.exists() and "trained in" in out and str(path) in out
    assert runs == [1] and not m1.training

    m2, r2 = train.train_or_load("toy", cfg, build, fit_it, device="cpu")
    assert "loaded from cache" in capsys.readouterr().out
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
