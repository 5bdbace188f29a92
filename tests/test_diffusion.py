"""ml.diffusion and the diffusion backbones: closed forms, oracles and invariants.

Torch has no diffusion reference, so every check is a closed form (the schedules, the
moments of q_sample, the Frechet distance of two Gaussians) or an oracle: with the exact
noise (or velocity) predictor of a one-point data distribution, every sampler must return
that point, to float64 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch

import minilib as ml

D = ml.diffusion
F64 = torch.float64


# --- schedules ----------------------------------------------------------------------

def test_linear_schedule_closed_form():
    s = D.NoiseSchedule.linear()
    assert s.T == 1000 and all(v.dtype == F64 and v.shape == (1000,)
                               for v in (s.betas, s.alphas, s.alphas_cumprod))
    torch.testing.assert_close(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(s.alphas, 1 - s.betas, rtol=0, atol=0)
    for t in (0, 1, 10, 500, 999):
        assert math.isclose(float(s.alphas_cumprod[t]), math.prod(1 - float(b) for b in s.betas[:t + 1]),
                            rel_tol=1e-12)
    assert 4.0e-5 < float(s.alphas_cumprod[-1]) < 4.1e-5  # DDPM's x_T is almost pure noise
    s3 = D.NoiseSchedule.linear(T=3, beta_start=0.1, beta_end=0.3)
    torch.testing.assert_close(s3.alphas_cumprod, torch.tensor([0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7], dtype=F64))


def test_cosine_schedule_formula():
    T, s_ = 1000, 0.008
    s = D.NoiseSchedule.cosine(T, s_)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 100, 500, 900, 990):  # index t is the paper's t + 1
        assert math.isclose(float(s.alphas_cumprod[t]), f(t + 1) / f(0), rel_tol=1e-10)
    assert float(s.betas.max()) == 0.999 and float(s.betas[-1]) == 0.999  # clipped at t = T
    assert bool((s.betas[:-1] < 0.999).all()) and bool((s.betas > 0).all())
    assert bool((s.snr()[1:] < s.snr()[:-1]).all())  # monotone: noise only grows


def test_from_name_and_bad_schedules():
    assert D.NoiseSchedule.from_name("cosine", 50).T == 50
    torch.testing.assert_close(D.NoiseSchedule.from_name("linear").betas, D.NoiseSchedule.linear().betas)
    with pytest.raises(ValueError, match="'sigmoid'.*linear, cosine"):
        D.NoiseSchedule.from_name("sigmoid")
    with pytest.raises(ValueError, match="T must be an int >= 1"):
        D.NoiseSchedule.linear(T=0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        D.NoiseSchedule(torch.tensor([0.1, 1.5], dtype=F64))


# --- the forward process --------------------------------------------------------------

def test_q_sample_moments():
    s = D.NoiseSchedule.linear()
    torch.manual_seed(0)
    n, t_ = 200_000, 300
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=F64)
    t = torch.full((n,), t_, dtype=torch.long)
    xt = D.q_sample(x0, t, torch.randn_like(x0), s)
    a = float(s.alphas_cumprod[t_])
    assert abs(xt.mean().item() - math.sqrt(a) * 0.7) < 5 / math.sqrt(n)
    assert abs(xt.var().item() - (1 - a)) < 5 * math.sqrt(2 / n)
    # per-sample timesteps and the closed form, exactly
    x0 = torch.randn(3, 2, 4, 4, dtype=F64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    xt = D.q_sample(x0, t, noise, s)
    for i in range(3):
        a = s.alphas_cumprod[t[i]]
        torch.testing.assert_close(xt[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i], rtol=0, atol=1e-15)


def test_q_sample_bad_timesteps():
    s = D.NoiseSchedule.linear(T=100)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 100\).*from 0 to 100"):
        D.q_sample(x, torch.tensor([0, 100]), x, s)
    with pytest.raises(ValueError, match="from -1"):
        D.q_sample(x, torch.tensor([-1, 3]), x, s)
    with pytest.raises(ValueError, match="LongTensor"):
        D.q_sample(x, torch.tensor([0.5, 3.0]), x, s)


def test_ddpm_loss_is_zero_for_the_true_noise():
    s = D.NoiseSchedule.linear()
    x0 = torch.randn(8, 1, 4, 4, dtype=F64)
    ab = s.alphas_cumprod

    def oracle(x_t, t):  # the noise that q_sample added, recovered from x_t and x0
        a = ab[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    assert D.ddpm_loss(oracle, x0, s).item() < 1e-20


# --- samplers: the one-point oracle and DDIM(eta = 1) = DDPM ----------------------------

def _point_oracle(x0, ab):
    """The exact noise predictor when the data distribution is the single point x0."""
    def model(x_t, t):
        a = ab[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    return model


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_samplers_return_the_one_point_of_the_data(name):
    s = D.NoiseSchedule.from_name(name)
    x0 = torch.randn(4, 3, 8, 8, dtype=F64)
    oracle = _point_oracle(x0, s.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    # x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar) amplifies rounding by 1 / sqrt(abar_T):
    # 160 for the linear schedule, 20,000 for the cosine one
    tol = 1e-12 if name == "linear" else 1e-10
    assert (D.ddpm_sample(oracle, x0.shape, s, g, dtype=F64) - x0).abs().max() < tol
    for steps in (1, 10, 50):
        for eta in (0.0, 1.0):
            out = D.ddim_sample(oracle, x0.shape, s, steps, eta, g, dtype=F64)
            assert (out - x0).abs().max() < tol, (steps, eta)


def test_ddim_eta1_over_all_steps_is_ddpm():
    s = D.NoiseSchedule.linear(T=200)
    torch.manual_seed(0)
    w = torch.randn(2, 2, dtype=F64) * 0.1

    def model(x, t):  # an arbitrary smooth noise predictor that depends on t
        return torch.einsum("ij,bjhw->bihw", w, x) * (1 + t.view(-1, 1, 1, 1) / 200)

    shape = (3, 2, 4, 4)
    a = D.ddpm_sample(model, shape, s, torch.Generator().manual_seed(1), dtype=F64)
    b = D.ddim_sample(model, shape, s, s.T, 1.0, torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # step by step: DDPM's step is DDIM's eq. 12 with sig^2 = beta~_t = beta_t (1 - abar') / (1 - abar)
    x = torch.randn(shape, dtype=F64)
    for t in (199, 100, 1):
        p = D.p_sample(model, x, t, s, torch.Generator().manual_seed(2))
        d = D.ddim_step(model, x, t, t - 1, s.alphas_cumprod, 1.0, torch.Generator().manual_seed(2))
        torch.testing.assert_close(p, d, rtol=1e-12, atol=1e-12)
        ab, ab_prev, beta = (float(v) for v in (s.alphas_cumprod[t], s.alphas_cumprod[t - 1], s.betas[t]))
        sig2 = beta * (1 - ab_prev) / (1 - ab)
        eps = model(x, torch.full((3,), t))
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        z = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(2))
        expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - sig2) * eps + math.sqrt(sig2) * z
        torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)


def test_nfe_counts():
    s = D.NoiseSchedule.linear(T=100)
    calls = []

    def model(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    shape = (2, 1, 4, 4)
    for fn, expected in ((lambda: D.ddpm_sample(model, shape, s), 100),
                         (lambda: D.ddim_sample(model, shape, s, 7), 7),
                         (lambda: D.euler_sample(model, shape, 7), 7),
                         (lambda: D.heun_sample(model, shape, 7), 13),
                         (lambda: D.heun_sample(model, shape, 1), 1)):
        calls.clear()
        fn()
        assert len(calls) == expected


def test_timesteps_and_bad_steps():
    assert D.timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert D.timesteps(50, 50) == list(range(49, -1, -1))
    assert D.timesteps(1000, 1) == [999]
    s = D.NoiseSchedule.linear(T=50)
    for steps in (0, 51, 2.5):
        with pytest.raises(ValueError, match=r"steps must be an int in \[1, T = 50\]"):
            D.ddim_sample(lambda x, t: x, (1, 1, 2, 2), s, steps)
    with pytest.raises(ValueError, match="eta"):
        D.ddim_sample(lambda x, t: x, (1, 1, 2, 2), s, 5, eta=1.5)
    for fn in (D.euler_sample, D.heun_sample):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            fn(lambda x, t: x, (1, 1, 2, 2), 0)


# --- flow matching -----------------------------------------------------------------------

def test_flow_samplers_return_the_one_point_of_the_data():
    x0 = torch.randn(4, 3, 8, 8, dtype=F64)

    def v(x_t, t):  # straight path x_t = (1 - t) x0 + t eps: v = eps - x0 = (x_t - x0) / t
        tt = (t / D.FLOW_TIME_SCALE).view(-1, 1, 1, 1)
        return (x_t - x0) / tt

    for steps in (1, 3, 20):
        for fn in (D.euler_sample, D.heun_sample):
            assert (fn(v, x0.shape, steps, dtype=F64) - x0).abs().max() < 1e-12


def test_flow_matching_loss_target():
    torch.manual_seed(0)
    x0 = torch.randn(6, 1, 4, 4, dtype=F64)
    seen = {}

    def model(x_t, t):
        seen["x_t"], seen["t"] = x_t, t / D.FLOW_TIME_SCALE
        return torch.zeros_like(x_t)

    torch.manual_seed(1)
    loss = D.flow_matching_loss(model, x0)
    torch.manual_seed(1)
    t = torch.rand(6, dtype=F64)
    eps = torch.randn_like(x0)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["x_t"], (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(loss, (eps - x0).square().mean())


# --- guidance ------------------------------------------------------------------------------

def test_guided_combines_conditional_and_unconditional():
    torch.manual_seed(0)
    model = ml.models.UNet(1, dim=8, depth=1, heads=2, dim_mults=(1, 2), num_classes=3).eval()
    for p in model.parameters():  # make the zero-initialized output depend on the label
        p.data.normal_(0, 0.2)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([1, 50, 300, 999]), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
        torch.testing.assert_close(D.Guided(model, y, 0.0)(x, t), cond)
        torch.testing.assert_close(D.Guided(model, y, -1.0)(x, t), uncond, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(D.Guided(model, y, 2.5)(x, t), 3.5 * cond - 2.5 * uncond, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(cond, uncond)
    with pytest.raises(ValueError, match="num_classes"):
        D.Guided(ml.models.UNet(1, dim=8, dim_mults=(1, 2)), y, 1.0)


# --- evaluation ----------------------------------------------------------------------------

def _exact_gaussian(n, mu, cov, seed):
    """n samples whose sample mean and (n - 1)-covariance are exactly mu and cov."""
    z = torch.randn(n, len(mu), dtype=F64, generator=torch.Generator().manual_seed(seed))
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T).view(len(mu), -1))).T  # cov = I
    return z @ torch.linalg.cholesky(cov).T + mu


def test_frechet_distance_closed_form():
    torch.manual_seed(0)
    d = 5
    A, B = torch.randn(d, d, dtype=F64), torch.randn(d, d, dtype=F64)
    S1, S2 = A @ A.T + 0.1 * torch.eye(d, dtype=F64), B @ B.T + 0.1 * torch.eye(d, dtype=F64)
    mu1, mu2 = torch.randn(d, dtype=F64), torch.randn(d, dtype=F64)
    a, b = _exact_gaussian(400, mu1, S1, 1), _exact_gaussian(300, mu2, S2, 2)
    # Tr (S1 S2)^(1/2) from the eigenvalues of the (non-symmetric) product: another route
    tr = torch.linalg.eigvals(S1 @ S2).real.clamp(min=0).sqrt().sum()
    expected = float((mu1 - mu2).square().sum() + S1.trace() + S2.trace() - 2 * tr)
    assert math.isclose(D.frechet_distance(a, b), expected, rel_tol=1e-9)
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2; diagonal covariances: sum of (sqrt a - sqrt b)^2
    one = D.frechet_distance(_exact_gaussian(50, torch.tensor([1.0], dtype=F64), torch.tensor([[4.0]], dtype=F64), 3),
                             _exact_gaussian(60, torch.tensor([-2.0], dtype=F64), torch.tensor([[9.0]], dtype=F64), 4))
    assert math.isclose(one, 9 + 1, rel_tol=1e-10)
    va, vb = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([9.0, 1.0, 1.0], dtype=F64)
    z3 = torch.zeros(3, dtype=F64)
    diag = D.frechet_distance(_exact_gaussian(80, z3, torch.diag(va), 5), _exact_gaussian(90, z3, torch.diag(vb), 6))
    assert math.isclose(diag, float((va.sqrt() - vb.sqrt()).square().sum()), rel_tol=1e-10)


def test_frechet_distance_of_a_set_with_itself_and_bad_input():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert abs(D.frechet_distance(x, x)) < 1e-9
    assert abs(D.frechet_distance(x, x.flip(0))) < 1e-9  # order does not matter
    with pytest.raises(ValueError, match="different widths, 16 and 8"):
        D.frechet_distance(x, x[:, :8])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        D.frechet_distance(x[:, 0], x)


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 4, generator=g, dtype=F64)
    assert D.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert D.precision_recall(real, real + 100) == (0.0, 0.0)
    # a fake set that covers only half of the real one: full precision, recall about 1/2
    half = real[real[:, 0] > 0]
    p, r = D.precision_recall(real, half)
    assert p == 1.0 and 0.3 < r < 0.7
    with pytest.raises(ValueError, match="k must lie"):
        D.precision_recall(real, half, k=0)


# --- the backbones --------------------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_and_dit_shapes_and_zero_init(num_classes):
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 10, 999])
    y = torch.tensor([1, 2, 3]) if num_classes else None
    for model in (ml.models.UNet(1, dim=16, depth=1, heads=2, num_classes=num_classes),
                  ml.models.DiT(28, 4, 1, dim=32, depth=2, heads=2, num_classes=num_classes)):
        out = model(x, t, y)
        assert out.shape == x.shape and bool((out == 0).all())  # zero-initialized output layers
        (out * torch.randn_like(out)).sum().backward()
        last = model.out[-1] if isinstance(model, ml.models.UNet) else model.head
        assert last.weight.grad.abs().sum() > 0  # the zero layer still learns
    rgb = ml.models.UNet(3, dim=8, depth=2, heads=2, dim_mults=(1, 2, 2))
    assert rgb(torch.randn(2, 3, 32, 32), torch.tensor([1, 2])).shape == (2, 3, 32, 32)
    dit = ml.models.DiT(32, 2, 3, dim=32, depth=1, heads=2)
    assert dit(torch.randn(2, 3, 32, 32), torch.tensor([1.5, 2.0])).shape == (2, 3, 32, 32)


def test_backbones_learn_and_bad_input():
    torch.manual_seed(0)
    unet = ml.models.UNet(1, dim=8, depth=1, heads=2, dim_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        unet(torch.randn(1, 1, 30, 30), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_classes"):
        unet(torch.randn(1, 1, 28, 28), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ml.models.DiT(28, 3)
    dit = ml.models.DiT(28, 4, 1, dim=32, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        dit(torch.randn(1, 1, 32, 32), torch.tensor([0]))
    # the adaLN-Zero block starts as the identity
    block = ml.models.DiTBlock(32, 2)
    h = torch.randn(2, 5, 32)
    torch.testing.assert_close(block(h, torch.randn(2, 32)), h)
    # a few steps of training lower the loss of both backbones on a fixed batch
    s = D.NoiseSchedule.linear()
    x0 = torch.rand(16, 1, 28, 28) * 2 - 1
    for model in (unet, dit):
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        torch.manual_seed(1)
        first = D.ddpm_loss(model, x0, s).item()
        for _ in range(30):
            loss = D.ddpm_loss(model, x0, s)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.manual_seed(1)
        assert D.ddpm_loss(model, x0, s).item() < first


def test_label_dropout_only_in_training():
    emb = ml.models.ConditionEmbedding(16, num_classes=4, class_dropout=1.0)
    t, y = torch.tensor([3, 4]), torch.tensor([0, 1])
    none = emb.eval()(t, None)
    torch.testing.assert_close(emb.train()(t, y), none)       # every label dropped
    assert not torch.allclose(emb.eval()(t, y), none)


# --- training, recipes and the cache ------------------------------------------------------

def test_train_keeps_the_ema_weights(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    torch.manual_seed(0)
    model = ml.models.UNet(1, dim=8, depth=1, heads=2, dim_mults=(1, 2), num_classes=10)
    before = [p.detach().clone() for p in model.parameters()]
    x0, y = torch.rand(64, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (64,))
    h = D.train(model, x0, y, D.flow_matching_loss, steps=20, batch_size=8, lr=1e-3, warmup=5,
                ema_decay=0.9, log_every=10)
    assert [r["step"] for r in h.rows] == [10, 20] and all(r["train_loss"] > 0 for r in h.rows)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_config_matches_training_compute_and_rejects_bad_names(monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    unet, dit = D.config("eps"), D.config("flow", "dit")
    assert unet["train_flops"] == dit["train_flops"] and dit["backbone"] == "dit"
    per_step = 3 * D._flops_per_image(dit) * dit["batch_size"]
    assert abs(dit["steps"] * per_step - dit["train_flops"]) <= per_step / 2
    assert D.config("eps", steps=7)["steps"] == 7
    assert D.config("eps", "dit", dim=32)["dim"] == 32
    with pytest.raises(ValueError, match="unknown objective 'score'"):
        D.config("score")
    with pytest.raises(ValueError, match="unknown backbone"):
        D.config("eps", "mlp")
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        D.config("eps", schedule="quadratic")
    with pytest.raises(ValueError, match=r"unknown settings \['width'\]"):
        D.config("eps", width=3)


def test_cached_computes_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).view(2, 3)

    a = D.cached("toy-samples", {"n": 2}, compute)
    b = D.cached("toy-samples", {"n": 2}, compute)
    assert torch.equal(a, b) and len(calls) == 1
    assert "loaded from cache" in capsys.readouterr().out
    D.cached("toy-samples", {"n": 3}, compute)
    assert len(calls) == 2


# --- devices: every tensor the models and samplers make is on the input's device ------------

@pytest.mark.parametrize("build", [
    lambda: ml.models.UNet(1, dim=8, depth=1, heads=2, dim_mults=(1, 2, 2), num_classes=10),
    lambda: ml.models.DiT(28, 4, 1, dim=16, depth=2, heads=2, num_classes=10),
], ids=["UNet", "DiT"])
def test_backbones_and_losses_on_the_meta_device(build):
    from test_devices import META, meta, on_meta, run_guarded   # the guard of tests/test_devices.py

    model = on_meta(build()).train()                            # label dropout runs too
    x, y = meta(3, 1, 28, 28), torch.zeros(3, dtype=torch.long, device=META)
    t = torch.zeros(3, dtype=torch.long, device=META)
    assert run_guarded(model, x, t, y).shape == x.shape
    assert run_guarded(model, x, t.float(), None).shape == x.shape
    assert run_guarded(lambda: D.flow_matching_loss(model, x, y)).shape == ()
    guided = D.Guided(model.eval(), y, 2.0)
    assert run_guarded(guided, x, t.float(), backward=False).device == META
