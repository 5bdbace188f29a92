"""ml.norm inference tools (notebook 2.3): fixed-scale LayerNorm, PRepBN, folding whole models."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from minilib import models, norm


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine parameters and running statistics in every norm."""
    g = gen(seed)
    with torch.no_grad():
        for m in module.modules():
            for name in ("weight", "bias", "eta"):
                p = getattr(m, name, None)
                if isinstance(p, nn.Parameter) and p.dim() == 1 and not isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding)):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1 if name != "bias" else 0))
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


# ---------------------------------------------------------------------------------------
# FixedLayerNorm
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixed_layer_norm_forward_backward_vs_reference(dtype):
    ln = randomize_(nn.LayerNorm(16, dtype=dtype))
    fixed = norm.FixedLayerNorm.from_layer_norm(ln, inv_std=0.7)
    x = torch.randn(3, 5, 16, generator=gen(1), dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    w, b = ln.weight.detach().clone().requires_grad_(), ln.bias.detach().clone().requires_grad_()
    ya = fixed(xa)
    yb = (xb - xb.mean(-1, keepdim=True)) * 0.7 * w + b
    torch.testing.assert_close(ya, yb)
    dy = torch.randn(ya.shape, generator=gen(2), dtype=dtype)
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(fixed.weight.grad, w.grad)
    torch.testing.assert_close(fixed.bias.grad, b.grad)
    assert not any(n == "inv_std" for n, _ in fixed.named_parameters())


def test_fixed_layer_norm_equals_layer_norm_when_std_is_constant():
    # Every token has the same std: LN's per-token 1/std is that constant.
    ln = randomize_(nn.LayerNorm(8, dtype=torch.float64))
    x = torch.randn(4, 6, 8, generator=gen(3), dtype=torch.float64)
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True) * 2.5 + 1.0
    inv = norm.layer_norm_inv_std(ln, [x], names=[""])[""]
    torch.testing.assert_close(torch.tensor(inv, dtype=torch.float64),
                               1 / torch.sqrt(torch.tensor(2.5 ** 2 + ln.eps, dtype=torch.float64)))
    fixed = norm.FixedLayerNorm.from_layer_norm(ln, inv)
    torch.testing.assert_close(fixed(x), F.layer_norm(x, (8,), ln.weight, ln.bias, ln.eps))


def test_layer_norm_inv_std_and_fix_layer_norms_on_chargpt():
    torch.manual_seed(0)
    gpt = models.CharGPT(20, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    batches = [torch.randint(0, 20, (3, 16), generator=gen(i)) for i in range(2)]
    # reference: hook-free, recompute the final norm's input by hand
    with torch.no_grad():
        h = gpt.blocks(gpt.tok_emb(torch.cat(batches)) + gpt.pos_emb(torch.arange(16)))
        ref = 1 / torch.sqrt(h.var(-1, unbiased=False) + 1e-5).mean().item()
    scales = norm.layer_norm_inv_std(gpt, batches)
    assert set(scales) == {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1",
                           "blocks.1.norm2", "norm"}
    assert scales["norm"] == pytest.approx(ref, rel=1e-6)
    assert gpt.training  # mode restored
    got = norm.fix_layer_norms(gpt, batches, ["blocks.1.norm2", "norm"])
    assert isinstance(gpt.norm, norm.FixedLayerNorm) and isinstance(gpt.blocks[1].norm2, norm.FixedLayerNorm)
    assert isinstance(gpt.blocks[0].norm1, nn.LayerNorm)
    assert gpt.norm.inv_std.item() == pytest.approx(got["norm"])
    gpt(batches[0]).sum().backward()  # still trains
    assert gpt.norm.weight.grad is not None


# ---------------------------------------------------------------------------------------
# PRepBN
# ---------------------------------------------------------------------------------------

def test_prepbn_schedule_and_endpoints_forward_backward():
    torch.manual_seed(0)
    p = norm.PRepBN(8, steps=4, warmup=2).double()
    ln, bn = nn.LayerNorm(8).double(), nn.BatchNorm1d(8).double()
    ln.load_state_dict(p.ln.state_dict())
    x = torch.randn(4, 5, 8, generator=gen(1), dtype=torch.float64)
    lams = []
    for _ in range(8):
        lams.append(p.lam)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        lam = p.lam
        ya = p(xa)
        if lam >= 1:
            yb = ln(xb)
        else:
            rep = bn(xb.transpose(1, 2)).transpose(1, 2) + p.eta.detach() * xb
            yb = rep if lam <= 0 else lam * ln(xb) + (1 - lam) * rep
        torch.testing.assert_close(ya, yb)
        dy = torch.randn(ya.shape, generator=gen(2), dtype=torch.float64)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad)
    assert lams == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    torch.testing.assert_close(p.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(p.bn.running_var, bn.running_var)
    p.eval()
    before = int(p.step)
    p(x)
    assert int(p.step) == before  # eval does not advance the schedule


# ---------------------------------------------------------------------------------------
# Folding
# ---------------------------------------------------------------------------------------

def _prepbn_done(dim):
    p = norm.PRepBN(dim, steps=1)
    p.step.fill_(5)
    return p


@pytest.mark.parametrize("make", [
    lambda d: norm.BatchNormTokens(d),
    lambda d: nn.BatchNorm1d(d),
    lambda d: norm.FixedLayerNorm(d, inv_std=0.3),
    _prepbn_done,
])
def test_fold_norm_into_linear(make):
    n = randomize_(make(12).double()).eval()
    lin = nn.Linear(12, 7).double()
    x = torch.randn(5, 12, generator=gen(4), dtype=torch.float64)
    fused = norm.fold_norm_into_linear(n, lin)
    torch.testing.assert_close(fused(x), lin(n(x)))


def test_fold_refuses_per_input_norms():
    lin = nn.Linear(4, 4)
    for n in [nn.LayerNorm(4), norm.RMSNorm(4), norm.PRepBN(4, steps=10)]:
        with pytest.raises(ValueError):
            norm.fold_norm_into_linear(n.eval(), lin)


@pytest.mark.parametrize("factory", [norm.BatchNormTokens, functools.partial(norm.PRepBN, steps=1)])
def test_fold_transformer_norms_vit(factory):
    torch.manual_seed(0)
    vit = models.ViT(image_size=8, patch_size=4, dim=16, depth=2, heads=2, norm=factory)
    x = torch.randn(6, 3, 8, 8, generator=gen(5))
    vit.train()
    for _ in range(3):       # collect running statistics (and finish the PRepBN schedule)
        vit(x)
    randomize_(vit, seed=1)
    vit.eval()
    folded = norm.fold_transformer_norms(vit)
    left = [m for m in folded.modules() if isinstance(m, (norm.BatchNormTokens, norm.PRepBN))]
    assert left == []
    torch.testing.assert_close(folded(x), vit(x), atol=1e-5, rtol=1e-4)
    assert sum(isinstance(m, (norm.BatchNormTokens, norm.PRepBN)) for m in vit.modules()) > 0


def test_fold_transformer_norms_chargpt_fixed_and_untouched_layer_norm():
    torch.manual_seed(0)
    gpt = models.CharGPT(20, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0).eval()
    idx = torch.randint(0, 20, (3, 8), generator=gen(6))
    norm.fix_layer_norms(gpt, [idx], ["blocks.0.norm1", "blocks.1.norm2", "norm"])
    randomize_(gpt, seed=2)
    folded = norm.fold_transformer_norms(gpt)
    assert isinstance(folded.blocks[0].norm1, nn.Identity)
    assert isinstance(folded.blocks[0].norm2, nn.LayerNorm)   # per-input: kept
    assert isinstance(folded.norm, nn.Identity)
    torch.testing.assert_close(folded(idx), gpt(idx), atol=1e-5, rtol=1e-4)
    assert gpt.head.weight is gpt.tok_emb.weight             # the original is untouched


def test_fold_resnet_batchnorms():
    torch.manual_seed(0)
    net = randomize_(models.ResNet9(width=4)).eval()
    x = torch.randn(2, 3, 16, 16, generator=gen(7))
    folded = norm.fold_resnet_batchnorms(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 8
    torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=1e-4)
