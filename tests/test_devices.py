"""Every tensor the library creates goes on the device of its inputs (issue 12).

A tensor made without ``device=`` (``torch.zeros(n)``, ``torch.arange(T)``) lands on the
CPU. On a GPU run it then either crashes ("Expected all tensors to be on the same device")
or is copied to the GPU on every call, and a copy from pageable host memory waits for the
GPU: a host-device sync in the hot loop. A CPU-only CI never sees either.

So the models and modules run here with their parameters and inputs on PyTorch's ``meta``
device (shapes and dtypes only, no data: fast at any size), under :class:`DeviceGuard`, a
``TorchDispatchMode`` that sees every aten op, forward and backward, and raises when

* one op receives tensors on two devices (0-dim CPU tensors excepted: CUDA ops accept
  those, as Python numbers), or
* a CPU tensor with at least one dimension is copied to another device (``.to(device)``
  inside a forward pass: a host-to-device copy, and a sync on CUDA, per call).

The meta device alone is not enough: ``meta_tensor + torch.zeros(n)`` raises, but
``meta_tensor @ torch.zeros(n, n)`` and ``meta_tensor[torch.arange(2)]`` do not (checked
below), while on CUDA the first one fails. Meta also refuses ``.item()`` and ``int(t)``,
which makes every forward pass here a check that it reads nothing back from the device.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import minilib as ml

A, N, M, S = ml.attention, ml.norm, ml.models, ml.sr
META = torch.device("meta")
aten = torch.ops.aten
_COPIES = {aten._to_copy.default, aten.copy_.default, aten.copy.default}


class DeviceGuard(TorchDispatchMode):
    """Raise on an op that mixes devices or copies a host tensor to a device (see above)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in _COPIES:
            src = args[1] if func is not aten._to_copy.default else args[0]
            dst = kwargs.get("device") if func is aten._to_copy.default else args[0].device
            if (dst is not None and src.device.type == "cpu" and torch.device(dst).type != "cpu"
                    and src.dim() > 0):
                raise RuntimeError(f"DeviceGuard: {func} copies a host tensor of shape "
                                   f"{tuple(src.shape)} to {dst} (a sync per call on CUDA)")
        else:
            devices = {str(t.device) for t in tensors
                       if not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                shapes = [(str(t.device), tuple(t.shape)) for t in tensors]
                raise RuntimeError(f"DeviceGuard: {func} got tensors on {sorted(devices)}: {shapes}")
        return func(*args, **kwargs)


def meta(*shape, dtype=torch.float32, grad=True) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype, requires_grad=grad and dtype.is_floating_point)


def run_guarded(fn, *inputs, backward: bool = True, warm: bool = False):
    """``fn(*inputs)`` under the guard, and the backward pass of its output's sum.

    ``warm``: call once unguarded first, so caches of device copies (``imresize``'s
    weights) are filled; the guarded call must then copy nothing.
    """
    if warm:
        with torch.no_grad():
            fn(*inputs)
    with DeviceGuard():
        out = fn(*inputs)
        if backward and isinstance(out, torch.Tensor) and out.requires_grad:
            out.float().sum().backward()
    return out


def on_meta(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return module.to(META)


# ---------------------------------------------------------------------------------------
# The guard itself: it catches what a GPU run would trip over
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [
    lambda x: x + torch.zeros(4),                  # meta raises on this one itself
    lambda x: x @ torch.zeros(4, 4),               # ... but not on these
    lambda x: x[torch.arange(2)],
    lambda x: x * torch.ones(4).to(x.device),      # host-to-device copy on every call
])
def test_guard_catches_host_tensors(op):
    x = meta(3, 4)
    with pytest.raises(RuntimeError, match="DeviceGuard|device"):
        with DeviceGuard():
            op(x)


def test_guard_allows_device_tensors_and_host_scalars():
    x = meta(3, 4)
    with DeviceGuard():
        y = x + torch.zeros(4, device=x.device) + torch.tensor(2.0) * 3
        y = y[torch.arange(2, device=x.device)]
        y.sum().backward()
    assert y.device == META


def test_meta_alone_misses_some_host_tensors():
    """Why the guard exists: on meta, a CPU matrix in a matmul passes silently (on CUDA it
    raises). If a later torch makes meta strict, the guard is still right."""
    x = meta(3, 4)
    try:
        x @ torch.zeros(4, 4)
    except RuntimeError:
        pytest.skip("this torch's meta device checks devices in matmul itself")


def _notebook_3_3_window_dense_mask(m, T, grid=(8, 8)):
    """Notebook 3.3's dense reference as it was: its tensors made without ``device=``."""
    n_cls = T - grid[0] * grid[1]
    wh, ww = m.window
    r, c = torch.arange(grid[0]).repeat_interleave(grid[1]), torch.arange(grid[1]).repeat(grid[0])
    bias = torch.zeros(m.heads, T - n_cls, T - n_cls, dtype=m.qkv.weight.dtype)
    dr = (r[:, None] - r[None, :]).clamp(-(wh - 1), wh - 1) + wh - 1
    dc = (c[:, None] - c[None, :]).clamp(-(ww - 1), ww - 1) + ww - 1
    bias = bias + m.rel_bias[dr * (2 * ww - 1) + dc].permute(2, 0, 1)   # CPU + device params
    mask = torch.zeros(m.heads, T, T, dtype=bias.dtype)
    mask[:, n_cls:, n_cls:] = bias
    return mask


def test_guard_catches_the_notebook_3_3_mask_bug():
    """The known bug (issue 12): masks built on the CPU, added to device parameters."""
    m = on_meta(A.WindowAttention(16, 2, window_size=4, grid=(8, 8)))
    with pytest.raises(RuntimeError, match="DeviceGuard|device"):
        run_guarded(_notebook_3_3_window_dense_mask, m, 65)
    mask = run_guarded(A.window_dense_mask, m, 65)      # the library's reference: fine
    assert mask.shape == (2, 65, 65) and mask.device == META


# ---------------------------------------------------------------------------------------
# Models and modules on meta, forward and backward
# ---------------------------------------------------------------------------------------

GRID = (8, 8)
CASES = {
    # ml.models
    "ResNet9": (lambda: M.ResNet9(width=8), (2, 3, 32, 32)),
    "ResNet9 SE": (lambda: M.ResNet9(width=16, channel_attn=A.SqueezeExcite), (2, 3, 32, 32)),
    "ResNet9 ECA": (lambda: M.ResNet9(width=16, channel_attn=A.ECA), (2, 3, 32, 32)),
    "ResNet9 ml.norm.BatchNorm2d": (lambda: M.ResNet9(width=8, norm=N.BatchNorm2d), (2, 3, 32, 32)),
    "ResNet9 GroupNorm": (lambda: M.ResNet9(width=8, norm=N.group_norm_factory(2)), (2, 3, 32, 32)),
    "ViT": (lambda: M.ViT(dim=32, depth=2, heads=2), (2, 3, 32, 32)),
    "ViT peri RMSNorm": (lambda: M.ViT(dim=32, depth=2, heads=2, norm=N.RMSNorm, placement="peri"),
                         (2, 3, 32, 32)),
    "ViT post LayerNorm": (lambda: M.ViT(dim=32, depth=2, heads=2, norm=N.LayerNorm,
                                         placement="post"), (2, 3, 32, 32)),
    "ViT BatchNormTokens": (lambda: M.ViT(dim=32, depth=2, heads=2, norm=N.BatchNormTokens),
                            (2, 3, 32, 32)),
    "ViT PRepBN": (lambda: M.ViT(dim=32, depth=2, heads=2, norm=partial(N.PRepBN, steps=3)),
                   (2, 3, 32, 32)),
    "ViT Swin": (lambda: M.ViT(dim=32, depth=2, heads=2,
                               attn=A.SwinAttention(window_size=4, grid=GRID)), (2, 3, 32, 32)),
    "ViT MHA": (lambda: M.ViT(dim=32, depth=2, heads=2, attn=A.MultiHeadAttention), (2, 3, 32, 32)),
    "MLP": (lambda: M.MLP(hidden=(16,)), (2, 1, 28, 28)),
    "MLP BatchNorm1d": (lambda: M.MLP(hidden=(16,), norm=nn.BatchNorm1d), (2, 1, 28, 28)),
    # ml.attention token mixers (B, T, C), one class token
    "MultiHeadAttention GQA causal": (lambda: A.MultiHeadAttention(16, 4, kv_heads=2, causal=True),
                                      (2, 9, 16)),
    "WindowAttention": (lambda: A.WindowAttention(16, 2, window_size=4, grid=GRID), (2, 65, 16)),
    "WindowAttention shifted causal": (lambda: A.WindowAttention(16, 2, window_size=4, shift=2,
                                                                 grid=GRID, causal=True), (2, 65, 16)),
    "WindowAttention no bias": (lambda: A.WindowAttention(16, 2, window_size=4, shift=2,
                                                          rel_pos_bias=False), (2, 64, 16)),
    "AxialAttention": (lambda: A.AxialAttention(16, 2, grid=GRID, rel_pos_bias=True), (2, 65, 16)),
    "AxialAttention causal": (lambda: A.AxialAttention(16, 2, causal=True), (2, 64, 16)),
    "PoolingMixer": (lambda: A.PoolingMixer(16), (2, 65, 16)),
    "SqueezeExcite": (lambda: A.SqueezeExcite(16), (2, 16, 4, 4)),
    "ECA": (lambda: A.ECA(16), (2, 16, 4, 4)),
    # ml.norm
    "LayerNorm": (lambda: N.LayerNorm(16), (2, 5, 16)),
    "RMSNorm": (lambda: N.RMSNorm(16), (2, 5, 16)),
    "BatchNormTokens": (lambda: N.BatchNormTokens(16), (2, 5, 16)),
    "BatchNorm2d": (lambda: N.BatchNorm2d(4), (2, 4, 3, 3)),
    "GroupNorm": (lambda: N.GroupNorm(2, 4), (2, 4, 3, 3)),
    "FixedLayerNorm": (lambda: N.FixedLayerNorm(16, inv_std=0.5), (2, 5, 16)),
    "PRepBN": (lambda: N.PRepBN(16, steps=2), (2, 5, 16)),
    "PRepBN warm-up": (lambda: N.PRepBN(16, steps=2, warmup=1), (2, 5, 16)),
    # ml.sr networks
    "SRCNN": (lambda: S.SRCNN(), (1, 1, 24, 24)),
    "SRCNN residual": (lambda: S.SRCNN(residual=True), (1, 1, 24, 24)),
    "FSRCNN": (lambda: S.FSRCNN(3), (1, 1, 8, 8)),
    "ESPCN residual": (lambda: S.ESPCN(3, residual=True), (1, 1, 8, 8)),
    "PreUpsample(SRCNN)": (lambda: S.PreUpsample(S.SRCNN(), 3), (1, 1, 8, 8)),
    "WindowSR": (lambda: S.WindowSR(3, dim=12, depth=2, heads=2, window=4), (1, 1, 10, 10)),
}
for fm in ("elu", "relu", "focused"):
    for causal in (False, True):
        CASES[f"LinearAttention {fm}{' causal' if causal else ''}"] = (
            partial(A.LinearAttention, 16, 2, feature_map=fm, causal=causal, chunk_size=4), (2, 17, 16))
CASES["LinearAttention inline"] = (
    partial(A.LinearAttention, 16, 2, feature_map="identity", normalize="inline"), (2, 65, 16))
CASES["LinearAttention local_kernel (SLAB)"] = (
    partial(A.LinearAttention, 16, 2, feature_map="relu", local_kernel=3), (2, 65, 16))


@pytest.mark.parametrize("name", list(CASES))
def test_module_on_meta(name):
    build, shape = CASES[name]
    model = on_meta(build()).train()
    y = run_guarded(model, meta(*shape), warm=name.startswith("PreUpsample"))
    assert y.device == META
    for p in model.parameters():
        assert p.grad is None or p.grad.device == META


@pytest.mark.parametrize("name", ["ResNet9", "ViT", "ViT PRepBN", "WindowAttention", "WindowSR"])
def test_module_on_meta_eval(name):
    build, shape = CASES[name]
    model = on_meta(build()).eval()
    with torch.no_grad():
        assert run_guarded(model, meta(*shape, grad=False), warm=name == "WindowSR").device == META


def test_chargpt_training_and_kv_cached_decoding_on_meta():
    gpt = on_meta(M.CharGPT(10, block_size=16, n_layer=2, n_head=2, n_embd=16,
                            attn=A.MultiHeadAttention))
    idx = torch.zeros(2, 8, dtype=torch.long, device=META)
    assert run_guarded(gpt, idx).shape == (2, 8, 10)
    gpt.eval()
    with torch.no_grad(), DeviceGuard():
        caches = gpt.make_caches(2)
        assert caches[0].k.device == META
        gpt(idx, caches)                           # prefill
        logits = gpt(idx[:, -1:], caches)          # one decoding step
        assert logits.shape == (2, 1, 10) and caches[0].length == 9
        out = gpt.generate(idx, 10, kv_cache=True, top_k=3, keep=4)  # fills and refills
        out = gpt.generate(out, 2, kv_cache=False, temperature=0.8)
    assert out.shape == (2, 20) and out.device == META


def test_chargpt_default_attention_on_meta():
    gpt = on_meta(M.CharGPT(10, block_size=16, n_layer=2, n_head=2, n_embd=16))
    assert run_guarded(gpt, torch.zeros(2, 8, dtype=torch.long, device=META)).device == META


def test_attention_functions_on_meta():
    q, k, v = meta(2, 4, 12, 8), meta(2, 2, 12, 8), meta(2, 2, 12, 8)
    pad = torch.ones(2, 1, 1, 12, dtype=torch.bool, device=META)
    run_guarded(lambda: A.scaled_dot_product(q, k, v, mask=pad, causal=True))
    run_guarded(lambda: A.attention_weights(q, k, causal=True))
    q2, k2, v2 = meta(1, 2, 20, 8), meta(1, 2, 20, 8), meta(1, 2, 20, 8)
    run_guarded(lambda: A.tiled_attention(q2, k2, v2, causal=True, block_size=8))
    run_guarded(lambda: A.linear_attention(q2.relu(), k2.relu(), v2, causal=True, chunk_size=6))
    run_guarded(lambda: A.inline_attention(q2, k2, v2))
    run_guarded(lambda: A.linear_attention_weights(q2.relu(), k2.relu(), causal=True))
    assert A.causal_mask(3, 5, device=META).device == META
    lin = on_meta(A.LinearAttention(16, 2))
    assert run_guarded(lin.weights, meta(2, 65, 16)).shape == (2, 2, 65, 65)


def test_window_masks_on_meta():
    m = on_meta(A.WindowAttention(16, 2, window_size=4, shift=2, grid=GRID, causal=True))
    assert run_guarded(lambda: m.window_mask(GRID, device=META)).device == META
    ax = on_meta(A.AxialAttention(16, 2, grid=GRID, rel_pos_bias=True))
    for step in (ax.row, ax.col):
        assert run_guarded(A.window_dense_mask, step, 65).shape == (2, 65, 65)


def test_pool_kv_heads_and_folding_on_meta():
    mha = on_meta(A.MultiHeadAttention(16, 4))
    with torch.no_grad(), DeviceGuard():
        pooled = A.pool_kv_heads(mha, 2)
    assert pooled.qkv.weight.device == META
    cnn = on_meta(M.ResNet9(width=8)).eval()
    with DeviceGuard():
        folded = N.fold_resnet_batchnorms(cnn)
    run_guarded(folded, meta(2, 3, 32, 32, grad=False), backward=False)
    vit = M.ViT(dim=32, depth=1, heads=2, norm=partial(N.PRepBN, steps=1))
    for mod in vit.modules():
        if isinstance(mod, N.PRepBN):
            mod.step.fill_(5)                        # schedule done: lam = 0, foldable
    vit = on_meta(vit).eval()
    with DeviceGuard():
        folded = N.fold_transformer_norms(vit)
    run_guarded(folded, meta(2, 3, 32, 32, grad=False), backward=False)
    ln = on_meta(nn.LayerNorm(16))
    fixed = N.FixedLayerNorm.from_layer_norm(ln, 0.5)
    assert fixed.weight.device == META and fixed.inv_std.device == META


@pytest.mark.parametrize("scale", [3, 1 / 3, 0.5])
def test_imresize_copies_its_weights_once(scale):
    """``imresize`` keeps its weights on the device: no host-to-device copy per call."""
    img = meta(2, 3, 12, 12)
    out = run_guarded(lambda x: S.imresize(x, scale), img, warm=True)
    assert out.device == META
    run_guarded(S.rgb_to_y, img, warm=True)
    run_guarded(S.rgb_to_ycbcr, img, warm=True)
    run_guarded(S.ycbcr_to_rgb, img, warm=True)


def test_data_batches_on_meta():
    images = torch.empty(10, 3, 8, 8, dtype=torch.uint8, device=META)
    labels = torch.empty(10, dtype=torch.long, device=META)
    with DeviceGuard():
        loader = ml.data.DeviceLoader(images, labels, 4, crop_padding=2, flip=True, cutout=3,
                                      mean=(0.5,) * 3, std=(0.2,) * 3, device=META,
                                      channels_last=True, pad_mode="reflect")
        batches = list(loader)
        tokens = list(ml.data.TokenBatches(torch.empty(100, dtype=torch.long, device=META), 8, 4,
                                           steps=2, device=META))
    assert len(batches) == 3 and batches[0][0].device == META and batches[0][0].dtype == torch.float32
    assert tokens[0][0].shape == (4, 8) and tokens[0][1].device == META


# ---------------------------------------------------------------------------------------
# PRepBN keeps its step count on the host
# ---------------------------------------------------------------------------------------

def test_prepbn_step_stays_on_the_host_and_in_the_state_dict():
    p = N.PRepBN(8, steps=4, warmup=1).to(META)
    assert p.step.device.type == "cpu" and p.eta.device == META
    with DeviceGuard():
        for _ in range(3):
            p(meta(2, 3, 8))
    assert int(p.step) == 3 and p.lam == pytest.approx(0.5)   # readable: no device involved
    state = p.state_dict()
    assert "step" in state and int(state["step"]) == 3
    q = N.PRepBN(8, steps=4, warmup=1).double()
    q.load_state_dict({k: torch.zeros_like(v, device="cpu", dtype=q.state_dict()[k].dtype)
                       for k, v in state.items()})
    assert q.step.dtype == torch.long and q.bn.running_mean.dtype == torch.float64
    q.step.fill_(3)
    assert q.lam == p.lam


def test_prepbn_results_unchanged_on_cpu():
    """Same outputs as before the change: lam from the count, count advanced in training."""
    torch.manual_seed(0)
    p = N.PRepBN(8, steps=2, warmup=1)
    x = torch.randn(4, 5, 8)
    lams = []
    for _ in range(5):
        lams.append(p.lam)
        p(x)
    assert lams == [1.0, 1.0, 0.5, 0.0, 0.0] and int(p.step) == 5
    moved = p.to(torch.float64)
    assert moved is p and p.step.dtype == torch.long and int(p.step) == 5


# ---------------------------------------------------------------------------------------
# window_dense_mask: the dense reference is right (and device-correct, above)
# ---------------------------------------------------------------------------------------

def _dense_attention(m, x, mask):
    B, T, C = x.shape
    q, k, v = m.qkv(x).view(B, T, 3, m.heads, C // m.heads).permute(2, 0, 3, 1, 4)
    y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[None])
    return m.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("T, grid, window, shift", [
    (65, (8, 8), 4, 0), (65, (8, 8), 4, 2), (64, (8, 8), 4, 2), (49, (6, 8), (3, 4), (1, 2)),
])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_window_dense_mask_matches_window_attention(T, grid, window, shift, causal, bias):
    torch.manual_seed(0)
    m = A.WindowAttention(16, 2, window_size=window, shift=shift, grid=grid, causal=causal,
                          rel_pos_bias=bias).double()
    if bias:
        with torch.no_grad():
            m.rel_bias.normal_()                      # a visible bias, not the 0.02 init
    x = torch.randn(2, T, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), _dense_attention(m, x, A.window_dense_mask(m, T)),
                               atol=1e-12, rtol=1e-12)


def test_window_dense_mask_of_axial_steps():
    torch.manual_seed(1)
    m = A.AxialAttention(16, 2, grid=GRID, rel_pos_bias=True).double()
    with torch.no_grad():
        m.row.rel_bias.normal_()
        m.col.rel_bias.normal_()
    x = torch.randn(2, 65, 16, dtype=torch.float64)
    ref = _dense_attention(m.row, x, A.window_dense_mask(m.row, 65))
    ref = _dense_attention(m.col, ref, A.window_dense_mask(m.col, 65))
    torch.testing.assert_close(m(x), ref, atol=1e-12, rtol=1e-12)
