"""Tests of minilib.sr: color, PSNR/SSIM, MATLAB bicubic resize, pixel shuffle, SR networks.

The last tests run the bicubic baseline on the real Set5 / Set14 (skipped without
BOOK_DATA) and compare with the numbers published in the SR literature.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minilib import sr


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Color
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rgb", [(0, 0, 0), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1),
                                 (0.2, 0.5, 0.7)])
def test_rgb_to_y_pure_colours(rgb):
    r, g, b = rgb
    img = torch.tensor(rgb, dtype=torch.float64)[:, None, None].expand(3, 2, 3)
    y = sr.rgb_to_y(img)
    assert y.shape == (1, 2, 3) and y.dtype == torch.float64
    expected = (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255
    torch.testing.assert_close(y, torch.full((1, 2, 3), expected, dtype=torch.float64))


def test_rgb_to_y_range_batch_and_dtype():
    img = _rand(4, 3, 5, 6, dtype=torch.float32)
    y = sr.rgb_to_y(img)
    assert y.shape == (4, 1, 5, 6) and y.dtype == torch.float32
    assert sr.rgb_to_y(torch.zeros(3, 1, 1)).item() == pytest.approx(16 / 255)
    assert sr.rgb_to_y(torch.ones(3, 1, 1)).item() == pytest.approx(235 / 255)
    torch.testing.assert_close(y, sr.rgb_to_ycbcr(img)[:, :1])


def test_ycbcr_round_trip():
    img = _rand(2, 3, 7, 5)
    ycc = sr.rgb_to_ycbcr(img)
    # neutral grey has no chroma: Cb = Cr = 128 / 255
    grey = sr.rgb_to_ycbcr(torch.full((3, 1, 1), 0.4, dtype=torch.float64))
    torch.testing.assert_close(grey[1:].flatten(), torch.full((2,), 128 / 255, dtype=torch.float64))
    torch.testing.assert_close(sr.ycbcr_to_rgb(ycc), img)


def test_color_bad_inputs():
    with pytest.raises(ValueError, match="3 channels"):
        sr.rgb_to_y(torch.rand(1, 4, 4))
    with pytest.raises(TypeError, match="float"):
        sr.rgb_to_y(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        sr.rgb_to_y(torch.rand(4, 4))
    with pytest.raises(ValueError, match="channels-first"):
        sr.rgb_to_y(torch.rand(4, 4, 3))


# ---------------------------------------------------------------------------------------
# Protocol steps: quantize, modcrop, make_pair
# ---------------------------------------------------------------------------------------

def test_quantize():
    x = torch.tensor([-0.3, 0.0, 0.5 / 255, 1.5 / 255, 100.49 / 255, 1.2], dtype=torch.float64)
    q = sr.quantize(x)
    # clamped to [0, 1]; halves round up as MATLAB's uint8() does (not to even)
    torch.testing.assert_close(q * 255, torch.tensor([0.0, 0, 1, 2, 100, 255], dtype=torch.float64))
    torch.testing.assert_close(sr.quantize(q), q)
    assert sr.quantize(torch.rand(2, 3, dtype=torch.float32)).dtype == torch.float32
    with pytest.raises(TypeError):
        sr.quantize(torch.zeros(3, dtype=torch.uint8))


def test_modcrop():
    img = torch.rand(2, 3, 17, 22)
    assert sr.modcrop(img, 4).shape == (2, 3, 16, 20)
    assert sr.modcrop(img, 1).shape == img.shape
    torch.testing.assert_close(sr.modcrop(img, 3), img[..., :15, :21])
    with pytest.raises(ValueError, match="positive int"):
        sr.modcrop(img, 0)
    with pytest.raises(ValueError, match="positive int"):
        sr.modcrop(img, 2.0)
    with pytest.raises(ValueError, match="smaller than scale"):
        sr.modcrop(torch.rand(3, 2, 9), 3)


def test_make_pair_shapes_levels_and_uint8():
    hr8 = (torch.rand(3, 25, 31) * 255).to(torch.uint8)
    hr, lr = sr.make_pair(hr8, 3)
    assert hr.shape == (3, 24, 30) and lr.shape == (3, 8, 10)
    assert hr.dtype == lr.dtype == torch.float32
    torch.testing.assert_close(hr, hr8[:, :24, :30].float() / 255)
    torch.testing.assert_close(lr, sr.quantize(lr))          # LR is on 8-bit levels


# ---------------------------------------------------------------------------------------
# PSNR and SSIM
# ---------------------------------------------------------------------------------------

def test_psnr_hand_computed():
    a = _rand(3, 20, 24) * 0.9
    b = a + 1 / 255
    # an error of one grey level everywhere: MSE = 1, PSNR = 10 log10(255^2) = 48.13 dB
    assert sr.psnr(a, b, y_channel=False) == pytest.approx(20 * math.log10(255), abs=1e-9)
    assert sr.psnr(a, b, y_channel=False) == pytest.approx(48.1308, abs=1e-4)
    # on Y the same RGB offset shrinks by (65.481 + 128.553 + 24.966) / 255 = 219 / 255
    assert sr.psnr(a, b) == pytest.approx(20 * math.log10(255) + 20 * math.log10(255 / 219))
    assert sr.psnr(a, a) == math.inf


def test_psnr_shave_batch_and_y_inputs():
    a = _rand(2, 3, 16, 16, seed=1)
    b = a.clone()
    b[..., :2, :] = 0.0                       # damage only a 2-pixel border
    b[1, ..., 5:7, 5:7] += 2 / 255            # and image 1's interior
    out = sr.psnr(a, b, shave=2)
    assert isinstance(out, torch.Tensor) and out.shape == (2,) and out.dtype == torch.float64
    assert out[0] == math.inf and math.isfinite(out[1])
    assert math.isfinite(sr.psnr(a, b, shave=1)[0])
    # one image -> a float; 1-channel inputs are taken as Y and mix with RGB
    single = sr.psnr(a[1], b[1], shave=2)
    assert isinstance(single, float) and single == pytest.approx(out[1].item())
    assert sr.psnr(sr.rgb_to_y(a[1]), b[1], shave=2) == pytest.approx(single)
    # PSNR of the mean squared error over the image on [0, 1]: 10 log10(1 / MSE)
    y_a, y_b = sr.rgb_to_y(a[1])[:, 2:-2, 2:-2], sr.rgb_to_y(b[1])[:, 2:-2, 2:-2]
    assert single == pytest.approx(10 * math.log10(1 / (y_a - y_b).pow(2).mean().item()))


def _ssim_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004) written out plainly: (H, W) arrays on 0-255, 11x11 Gaussian 1.5."""
    r = np.arange(11) - 5
    win = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    pa = np.lib.stride_tricks.sliding_window_view(a, (11, 11))   # (H-10, W-10, 11, 11)
    pb = np.lib.stride_tricks.sliding_window_view(b, (11, 11))

    def local(x):                                                  # weighted window mean
        return (x * win).sum(axis=(-2, -1))

    mu_a, mu_b = local(pa), local(pb)
    var_a = local(pa**2) - mu_a**2
    var_b = local(pb**2) - mu_b**2
    cov = local(pa * pb) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    m = num / den
    return float(m.mean())


def test_ssim_identity_and_range():
    a = _rand(3, 30, 33, seed=2)
    assert sr.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert sr.ssim(a, a, shave=4, y_channel=False) == pytest.approx(1.0, abs=1e-12)
    b = _rand(3, 30, 33, seed=3)
    assert -1 < sr.ssim(a, b) < 0.2          # unrelated noise: near zero


@pytest.mark.parametrize("shave", [0, 3])
def test_ssim_against_numpy_wang(shave):
    a = _rand(2, 3, 37, 29, seed=4)
    b = (a + 0.1 * _rand(2, 3, 37, 29, seed=5)).clamp(0, 1)     # correlated pair
    got = sr.ssim(a, b, shave=shave)
    assert got.shape == (2,)
    for i in range(2):
        ya = (16 + 65.481 * a[i, 0] + 128.553 * a[i, 1] + 24.966 * a[i, 2]).numpy()
        yb = (16 + 65.481 * b[i, 0] + 128.553 * b[i, 1] + 24.966 * b[i, 2]).numpy()
        if shave:
            ya, yb = ya[shave:-shave, shave:-shave], yb[shave:-shave, shave:-shave]
        assert got[i].item() == pytest.approx(_ssim_numpy(ya, yb), abs=1e-10)
    # all channels: the mean of the three per-channel SSIMs
    rgb = sr.ssim(a[0], b[0], y_channel=False)
    per_channel = [_ssim_numpy(a[0, c].numpy() * 255, b[0, c].numpy() * 255) for c in range(3)]
    assert rgb == pytest.approx(sum(per_channel) / 3, abs=1e-10)


def test_psnr_ssim_bad_inputs():
    a = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        sr.psnr(a, torch.rand(3, 16, 15))
    with pytest.raises(ValueError, match="both batches"):
        sr.psnr(a, a[None])
    with pytest.raises(ValueError, match="shave"):
        sr.psnr(a, a, shave=8)
    with pytest.raises(ValueError, match="shave"):
        sr.psnr(a, a, shave=-1)
    with pytest.raises(TypeError, match="float"):
        sr.psnr((a * 255).to(torch.uint8), a)
    with pytest.raises(ValueError, match="11x11"):
        sr.ssim(a, a, shave=3)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        sr.ssim(torch.rand(2, 16, 16), torch.rand(2, 16, 16))


# ---------------------------------------------------------------------------------------
# imresize
# ---------------------------------------------------------------------------------------

def _matlab_resize_1d(x: list[float], scale: float, antialias: bool = True) -> list[float]:
    """MATLAB's imresize along one axis, one output pixel at a time, in plain Python."""
    n = len(x)
    out_len = math.ceil(n * scale - 1e-9)

    def cubic(t):
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        if t <= 2:
            return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
        return 0.0

    shrink = scale < 1 and antialias
    h = (lambda t: scale * cubic(scale * t)) if shrink else cubic
    width = 4 / scale if shrink else 4
    mirror = list(range(n)) + list(range(n - 1, -1, -1))       # [1..n, n..1], 0-based
    out = []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = [left + k for k in range(math.ceil(width) + 2)]
        w = [h(u - t) for t in taps]
        out.append(sum(wk * x[mirror[(t - 1) % (2 * n)]] for wk, t in zip(w, taps)) / sum(w))
    return out


@pytest.mark.parametrize("n,scale,antialias", [(12, 0.5, True), (13, 1 / 3, True), (9, 0.25, True),
                                               (5, 2, True), (7, 3, True), (6, 4, True),
                                               (10, 0.5, False), (11, 1.5, True), (3, 0.7, True)])
def test_resize_weights_match_pointwise_matlab(n, scale, antialias):
    x = _rand(n, seed=n).tolist()
    want = torch.tensor(_matlab_resize_1d(x, scale, antialias), dtype=torch.float64)
    wm = sr.resize_weights(n, want.numel(), float(scale), antialias)
    torch.testing.assert_close(wm @ torch.tensor(x, dtype=torch.float64), want)
    torch.testing.assert_close(wm.sum(1), torch.ones(want.numel(), dtype=torch.float64))
    # the 2-D resize is that 1-D resize along H then W
    img = _rand(2, 1, n, n + 1, seed=1)
    ref = sr.resize_weights(n + 1, math.ceil((n + 1) * scale - 1e-9), float(scale), antialias)
    torch.testing.assert_close(sr.imresize(img, scale, antialias=antialias), wm @ img @ ref.T)


def test_imresize_identity_and_constant():
    img = _rand(2, 3, 9, 11)
    torch.testing.assert_close(sr.imresize(img, 1), img, rtol=0, atol=1e-12)
    c = torch.full((3, 10, 14), 0.37, dtype=torch.float64)
    for s in (0.5, 1 / 3, 0.25, 2, 3, 4, 1.7):
        for aa in (True, False):
            out = sr.imresize(c, s, antialias=aa)
            torch.testing.assert_close(out, torch.full_like(out, 0.37))


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2, 3, 4])
def test_imresize_linear_ramp(scale):
    # Cubic convolution reproduces linear functions, and the kernels are symmetric and sum
    # to 1, so away from the borders a ramp v(x) = x is sampled at the mapped coordinate:
    # output pixel i (1-based) sits at u = i / s + 0.5 (1 - 1 / s), i.e. value u - 1.
    n = 48
    ramp = torch.arange(n, dtype=torch.float64).expand(1, 5, n)
    out = sr.imresize(ramp, scale)[0, 0]
    i = torch.arange(1, out.numel() + 1, dtype=torch.float64)
    u = i / scale + 0.5 * (1 - 1 / scale)
    reach = 2 / min(scale, 1) + 1                # kernel half-width in input pixels (+1)
    inside = (u - reach >= 1) & (u + reach <= n)
    assert inside.sum() >= out.numel() // 2
    torch.testing.assert_close(out[inside], u[inside] - 1)
    # near the borders the mirrored image bends the ramp back (MATLAB's symmetric padding)
    assert not torch.allclose(out[~inside], u[~inside] - 1)


@pytest.mark.parametrize("h,w,scale,out", [(10, 14, 0.5, (5, 7)), (7, 9, 0.5, (4, 5)),
                                           (10, 10, 0.3, (3, 3)), (10, 3, 1.5, (15, 5)),
                                           (255, 256, 1 / 3, (85, 86)), (5, 6, 3, (15, 18))])
def test_imresize_output_size_is_ceil(h, w, scale, out):
    assert sr.imresize(torch.rand(1, h, w), scale).shape == (1, *out)
    assert sr.imresize(torch.rand(2, 3, h, w), scale).shape == (2, 3, *out)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2, 3, 4])
def test_imresize_interior_matches_torch_antialiased_bicubic(scale):
    # PyTorch's antialiased bicubic uses the same a = -0.5 kernel and pixel-centre mapping;
    # it renormalizes at the borders where MATLAB mirrors, so compare the interior only.
    img = _rand(2, 3, 36, 48, seed=7)
    ours = sr.imresize(img, scale)
    ref = F.interpolate(img, size=ours.shape[-2:], mode="bicubic", align_corners=False,
                        antialias=True)
    m = math.ceil(3 * max(scale, 1))             # a few output pixels of margin
    torch.testing.assert_close(ours[..., m:-m, m:-m], ref[..., m:-m, m:-m])
    assert not torch.allclose(ours, ref)         # ... and the borders do differ


def test_imresize_dtype_device_and_gradient():
    img32 = torch.rand(1, 2, 8, 6)
    out = sr.imresize(img32, 2)
    assert out.dtype == torch.float32 and out.shape == (1, 2, 16, 12)
    img16 = img32.to(torch.bfloat16)
    assert sr.imresize(img16, 0.5).dtype == torch.bfloat16
    x = _rand(1, 1, 6, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sr.imresize(t, 1 / 2), (x,))
    assert torch.autograd.gradcheck(lambda t: sr.imresize(t, 3), (x,))


def test_imresize_bad_inputs():
    with pytest.raises(ValueError, match="positive number"):
        sr.imresize(torch.rand(1, 4, 4), 0)
    with pytest.raises(ValueError, match="positive number"):
        sr.imresize(torch.rand(1, 4, 4), float("nan"))
    with pytest.raises(TypeError, match="float"):
        sr.imresize(torch.zeros(1, 4, 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        sr.imresize(torch.rand(4, 4), 2)


# ---------------------------------------------------------------------------------------
# pixel_shuffle
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,r", [((2, 4, 3, 5), 2), ((1, 18, 4, 4), 3), ((2, 16, 2, 3), 4),
                                     ((3, 5, 6), 1), ((2, 3, 8, 5, 4), 2), ((9, 2, 2), 3)])
def test_pixel_shuffle_matches_torch_forward_backward(shape, r):
    x = _rand(*shape, seed=r).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    out, ref = sr.pixel_shuffle(x, r), F.pixel_shuffle(x_ref, r)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = _rand(*ref.shape, seed=99)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)


def test_pixel_shuffle_layout_and_errors():
    # out[c, h r + i, w r + j] = in[c r^2 + i r + j, h, w]
    x = torch.arange(8 * 2 * 3).reshape(1, 8, 2, 3)
    out = sr.pixel_shuffle(x, 2)
    assert out[0, 1, 2 * 1 + 1, 2 * 2 + 0].item() == x[0, 1 * 4 + 1 * 2 + 0, 1, 2].item()
    with pytest.raises(ValueError, match="not divisible by r\\^2 = 4"):
        sr.pixel_shuffle(torch.rand(1, 6, 2, 2), 2)
    with pytest.raises(ValueError, match="positive int"):
        sr.pixel_shuffle(torch.rand(1, 4, 2, 2), 0)
    with pytest.raises(ValueError, match=r"\(\*, C\*r\^2, H, W\)"):
        sr.pixel_shuffle(torch.rand(4, 2), 2)


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_srcnn_keeps_size(channels):
    net = sr.SRCNN(num_channels=channels)
    x = torch.rand(2, channels, 17, 12)
    y = net(x)
    assert y.shape == x.shape
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert sr.SRCNN(f2=1)(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)   # the 9-1-5 variant


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_fsrcnn_espcn_upscale_shape(scale, channels):
    x = torch.rand(2, channels, 7, 10)
    for net in (sr.FSRCNN(scale, num_channels=channels), sr.ESPCN(scale, num_channels=channels)):
        y = net(x)
        assert y.shape == (2, channels, 7 * scale, 10 * scale), type(net).__name__
        y.square().mean().backward()
        assert all(p.grad is not None for p in net.parameters())


def test_espcn_is_conv_then_pixel_shuffle_and_fsrcnn_init():
    torch.manual_seed(0)
    net = sr.ESPCN(3)
    x = torch.rand(1, 1, 6, 5)
    torch.testing.assert_close(net(x), F.pixel_shuffle(net.body(x), 3))
    assert net.body[-1].out_channels == 9
    f = sr.FSRCNN(2, d=56, s=12, m=4)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in f.body) == 2 + 4 + 1
    assert f.upsample.kernel_size == (9, 9) and f.upsample.stride == (2, 2)
    assert f.upsample.weight.std().item() == pytest.approx(0.001, rel=0.2)


def test_network_bad_inputs():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*rgb_to_y"):
        sr.ESPCN(2)(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        sr.SRCNN()(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="scale"):
        sr.FSRCNN(0)
    with pytest.raises(ValueError, match="odd"):
        sr.SRCNN(f1=4)


# ---------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------

def test_evaluate_follows_the_protocol():
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(2, 3, 8, 9, generator=g), size=(40, 44), mode="bilinear")
    images = [(smooth[i] * 255).round().to(torch.uint8) for i in range(2)]
    got = sr.evaluate(lambda lr: sr.imresize(lr, 4), images, 4)
    p, s = [], []
    for img in images:
        hr = sr.modcrop(img.float() / 255, 4)
        out = sr.quantize(sr.imresize(sr.quantize(sr.imresize(hr, 0.25)), 4))
        p.append(sr.psnr(out, hr, shave=4))
        s.append(sr.ssim(out, hr, shave=4))
    assert got["psnr"] == pytest.approx(sum(p) / 2) and got["ssim"] == pytest.approx(sum(s) / 2)
    # a Y-only upscaler (1-channel output) is measured against the Y of the HR image
    got_y = sr.evaluate(lambda lr: sr.rgb_to_y(sr.imresize(lr, 4)), images, 4)
    assert got_y["psnr"] == pytest.approx(got["psnr"], abs=0.05)
    with pytest.raises(ValueError, match="expected"):
        sr.evaluate(lambda lr: lr, images, 4)


# ---------------------------------------------------------------------------------------
# Real data: the bicubic baseline every SR paper prints
# ---------------------------------------------------------------------------------------

# (PSNR dB, SSIM) of bicubic on the Y channel, shave = scale, as printed in SRCNN / VDSR /
# EDSR / SwinIR; Set14 SSIMs are not checked (this copy of Set14 reads ~0.1 dB higher).
PUBLISHED = {
    "Set5": {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)},
    "Set14": {2: (30.23, None), 3: (27.54, None), 4: (26.00, None)},
}


def _load_set(book_data: Path, name: str) -> list[torch.Tensor]:
    try:
        from minilib import data
        return data.sr_images(name)
    except (ImportError, AttributeError):         # ml.data not ready: read the PNGs
        from PIL import Image
        paths = sorted((book_data / "sr" / name).glob("*.png"))
        return [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                for p in paths]


@pytest.mark.parametrize("name,psnr_tol,ssim_tol", [("Set5", 0.05, 0.005), ("Set14", 0.2, None)])
def test_bicubic_baseline_matches_published(book_data, name, psnr_tol, ssim_tol):
    images = _load_set(book_data, name)
    assert len(images) == {"Set5": 5, "Set14": 14}[name]
    for scale, (want_psnr, want_ssim) in PUBLISHED[name].items():
        got = sr.evaluate(lambda lr: sr.imresize(lr, scale), images, scale)
        print(f"{name} x{scale}: PSNR {got['psnr']:.3f} dB (published {want_psnr}), "
              f"SSIM {got['ssim']:.4f} (published {want_ssim})")
        assert got["psnr"] == pytest.approx(want_psnr, abs=psnr_tol)
        if ssim_tol is not None:
            assert got["ssim"] == pytest.approx(want_ssim, abs=ssim_tol)
