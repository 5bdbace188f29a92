"""Tests of minilib.sr: color, PSNR/SSIM, MATLAB bicubic resize, pixel shuffle, SR networks.

The real-data tests run the bicubic baseline on Set5, Set14 and BSD100 (skipped without
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
    hr, lr = sr.make_pair(hr8, 3, protocol="rgb-first")
    assert hr.shape == (3, 24, 30) and lr.shape == (3, 8, 10)
    assert hr.dtype == lr.dtype == torch.float32
    torch.testing.assert_close(hr, hr8[:, :24, :30].float() / 255)
    torch.testing.assert_close(lr, sr.quantize(lr))          # LR is on 8-bit levels
    # y-first (the default): Y on 8-bit levels first, then the LR in float, not rounded
    hr_y, lr_y = sr.make_pair(hr8, 3)
    assert hr_y.shape == (1, 24, 30) and lr_y.shape == (1, 8, 10)
    torch.testing.assert_close(hr_y, sr.hr_y(hr8[:, :24, :30]), rtol=0, atol=0)
    torch.testing.assert_close(lr_y, sr.imresize(hr_y, 1 / 3), rtol=0, atol=0)
    assert not torch.equal(lr_y, sr.quantize(lr_y))
    # a grayscale (1-channel) image: its own Y (y-first), repeated to RGB (rgb-first)
    gray = hr8[:1]
    torch.testing.assert_close(sr.make_pair(gray, 3)[0], gray[:, :24, :30].float() / 255)
    assert sr.make_pair(gray, 3, protocol="rgb-first")[0].shape == (3, 24, 30)
    with pytest.raises(ValueError, match="protocol"):
        sr.make_pair(hr8, 3, protocol="matlab")


def test_hr_y_is_matlab_rgb2ycbcr_on_uint8():
    rgb8 = torch.randint(0, 256, (2, 3, 9, 7), generator=torch.Generator().manual_seed(3),
                         dtype=torch.uint8)
    x = rgb8.double().numpy()
    # MATLAB: rgb2ycbcr(uint8) computes in double and rounds half away from zero to uint8
    y = 16 + (65.481 * x[:, 0] + 128.553 * x[:, 1] + 24.966 * x[:, 2]) / 255
    want = torch.from_numpy(np.floor(y + 0.5) / 255)[:, None]          # float64
    got = sr.hr_y(rgb8)
    assert got.shape == (2, 1, 9, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=0, atol=0)
    torch.testing.assert_close(sr.hr_y(rgb8[0].double() / 255), want[0], rtol=0, atol=0)
    gray = rgb8[:, :1]
    torch.testing.assert_close(sr.hr_y(gray), gray.float() / 255, rtol=0, atol=0)   # its own Y
    with pytest.raises(ValueError, match="C = 3"):
        sr.hr_y(torch.zeros(2, 9, 7, dtype=torch.uint8))


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


def test_imresize_caches_weights_per_device_and_dtype():
    """The second call reuses the weight matrices on the device (no copy per call)."""
    img = torch.rand(1, 1, 13, 17)
    first = sr.imresize(img, 1 / 3)
    wh = sr._resize_weights_on(13, 5, 1 / 3, True, img.device, torch.float32)
    again = sr._resize_weights_on(13, 5, 1 / 3, True, img.device, torch.float32)
    assert again is wh and again.data_ptr() == wh.data_ptr()
    hits = sr._resize_weights_on.cache_info().hits
    second = sr.imresize(img, 1 / 3)
    assert sr._resize_weights_on.cache_info().hits == hits + 2      # both axes from the cache
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    want = torch.einsum("oh,...hw,pw->...op", sr.resize_weights(13, 5, 1 / 3),
                        img.double(), sr.resize_weights(17, 6, 1 / 3))
    torch.testing.assert_close(second.double(), want, rtol=0, atol=1e-6)
    w64 = sr._resize_weights_on(13, 5, 1 / 3, True, img.device, torch.float64)
    assert w64.dtype == torch.float64 and w64 is not wh                 # one entry per dtype


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
    assert f.upsample.kernel_size == (10, 10) and f.upsample.stride == (2, 2)
    assert sr.FSRCNN(3).upsample.kernel_size == (9, 9)         # the paper's 9x9 at odd scales
    assert f.upsample.weight.std().item() == pytest.approx(0.001, rel=0.2)


def _centre(y: torch.Tensor) -> tuple[float, float]:
    """Centre of mass (row, column) of a 2-D response, 0-based."""
    w = y.detach().double().abs()
    rows, cols = torch.arange(w.shape[0], dtype=w.dtype), torch.arange(w.shape[1], dtype=w.dtype)
    return float((w.sum(1) * rows).sum() / w.sum()), float((w.sum(0) * cols).sum() / w.sum())


@pytest.mark.parametrize("scale", [2, 3, 4, 5])
def test_fsrcnn_deconvolution_is_on_the_imresize_grid(scale):
    """A delta at LR pixel (i, j) through the deconvolution with a symmetric kernel lands
    at HR (s i + (s - 1) / 2, s j + (s - 1) / 2), where MATLAB bicubic and pixel shuffle
    put the centre of that LR pixel. The paper's padding=4, output_padding=s-1 put it at
    (s i, s j), (s - 1) / 2 HR pixels off."""
    net = sr.FSRCNN(scale, d=2)
    k = net.upsample.kernel_size[0]
    with torch.no_grad():
        net.upsample.weight.zero_()
        net.upsample.bias.zero_()
        tent = 1 + torch.minimum(torch.arange(k), torch.arange(k).flip(0)).double()
        net.upsample.weight[0, 0] = torch.outer(tent, tent)     # symmetric about its centre
    h, w, i, j = 7, 8, 3, 4
    x = torch.zeros(1, 2, h, w)
    x[0, 0, i, j] = 1
    y = net.upsample(x)
    assert y.shape == (1, 1, h * scale, w * scale)
    want = (scale * i + (scale - 1) / 2, scale * j + (scale - 1) / 2)
    assert _centre(y[0, 0]) == pytest.approx(want, abs=1e-9)
    delta = x[:, :1].double()
    assert _centre(sr.imresize(delta, scale)[0, 0]) == pytest.approx(want, abs=1e-9)
    block = sr.pixel_shuffle(delta.repeat(1, scale * scale, 1, 1), scale)   # one s x s block
    assert _centre(block[0, 0]) == pytest.approx(want, abs=1e-9)
    assert _centre(sr.bicubic_skip(delta, scale)[0, 0]) == pytest.approx(want, abs=1e-9)


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

def _smooth_images():
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.rand(2, 3, 8, 9, generator=g), size=(40, 44), mode="bilinear")
    return [(smooth[i] * 255).round().to(torch.uint8) for i in range(2)]


def test_evaluate_follows_the_y_first_protocol():
    images = _smooth_images() + [_smooth_images()[0][:1]]          # and a grayscale image
    seen = []
    got = sr.evaluate(lambda lr: seen.append(lr.shape) or sr.imresize(lr, 4), images, 4)
    assert seen[0] == (1, 1, 10, 11)                               # the network sees LR Y
    p, s = [], []
    for img in images:
        x = img.double() / 255
        if x.shape[0] == 3:                                        # rgb2ycbcr on uint8
            x = torch.floor((16 + 65.481 * x[0] + 128.553 * x[1] + 24.966 * x[2]) + 0.5)[None] / 255
        hr = sr.modcrop(x, 4).float()
        out = sr.quantize(sr.imresize(sr.imresize(hr, 0.25), 4))  # LR in float: no rounding
        p.append(sr.psnr(out, hr, shave=4))
        s.append(sr.ssim(out, hr, shave=4))
    assert got["psnr"] == pytest.approx(sum(p) / 3) and got["ssim"] == pytest.approx(sum(s) / 3)
    assert set(got) == {"psnr", "ssim"}                            # means only, by default
    each = sr.evaluate(lambda lr: sr.imresize(lr, 4), images, 4, per_image=True)
    assert each["psnr_per_image"] == pytest.approx(p) and each["ssim_per_image"] == pytest.approx(s)
    assert each["psnr"] == got["psnr"] and each["ssim"] == got["ssim"]
    # a Y network through upscale(): the same Y goes in
    bicubic_y = sr.PreUpsample(torch.nn.Identity(), 4)
    got_net = sr.evaluate(lambda lr: sr.upscale(bicubic_y, lr, 4), images, 4)
    assert got_net["psnr"] == pytest.approx(got["psnr"], abs=1e-4)
    with pytest.raises(ValueError, match="expected"):
        sr.evaluate(lambda lr: lr, images, 4)
    with pytest.raises(ValueError, match="rgb-first"):
        sr.evaluate(lambda lr: sr.imresize(lr, 4), images, 4, y_channel=False)
    with pytest.raises(ValueError, match="protocol"):
        sr.evaluate(lambda lr: sr.imresize(lr, 4), images, 4, protocol="RGB")


def test_evaluate_rgb_first_protocol_is_kept():
    images = _smooth_images()
    got = sr.evaluate(lambda lr: sr.imresize(lr, 4), images, 4, protocol="rgb-first")
    p, s = [], []
    for img in images:
        hr = sr.modcrop(img.float() / 255, 4)
        out = sr.quantize(sr.imresize(sr.quantize(sr.imresize(hr, 0.25)), 4))
        p.append(sr.psnr(out, hr, shave=4))
        s.append(sr.ssim(out, hr, shave=4))
    assert got["psnr"] == pytest.approx(sum(p) / 2) and got["ssim"] == pytest.approx(sum(s) / 2)
    # a Y-only upscaler (1-channel output) is measured against the Y of the HR image
    got_y = sr.evaluate(lambda lr: sr.rgb_to_y(sr.imresize(lr, 4)), images, 4, protocol="rgb-first")
    assert got_y["psnr"] == pytest.approx(got["psnr"], abs=0.05)
    rgb = sr.evaluate(lambda lr: sr.imresize(lr, 4), images, 4, protocol="rgb-first", y_channel=False)
    assert rgb["psnr"] != pytest.approx(got["psnr"], abs=1e-3)


# ---------------------------------------------------------------------------------------
# Real data: the bicubic baseline every SR paper prints
# ---------------------------------------------------------------------------------------

def _load_set(book_data: Path, name: str) -> list[torch.Tensor]:
    if not (book_data / "sr" / name).is_dir():
        pytest.skip(f"{name} is not in BOOK_DATA={book_data} (expected sr/{name}/*.png)")
    return sr.eval_images(name)


@pytest.mark.parametrize("name", ["Set5", "Set14", "BSD100"])
def test_bicubic_baseline_matches_published(book_data, name):
    """The y-first protocol prints the published rows: every digit on Set5 and Set14; PSNR
    on BSD100, whose published SSIMs (VDSR's) are up to 1.2e-4 above ours."""
    images = _load_set(book_data, name)
    assert len(images) == {"Set5": 5, "Set14": 14, "BSD100": 100}[name]
    for scale, (want_psnr, want_ssim) in sr.PUBLISHED_BICUBIC[name].items():
        got = sr.evaluate(lambda lr: sr.imresize(lr, scale), images, scale)
        print(f"{name} x{scale}: PSNR {got['psnr']:.4f} dB (published {want_psnr}), "
              f"SSIM {got['ssim']:.5f} (published {want_ssim})")
        assert round(got["psnr"], 2) == want_psnr
        if name == "BSD100":
            assert abs(got["ssim"] - want_ssim) < 2e-4
        else:
            assert round(got["ssim"], 4) == want_ssim


def test_set14_bridge_is_its_own_y(book_data):
    """bridge is a grayscale file: Y is the file itself, not rgb2ycbcr of it made RGB (the
    latter shrinks every error by 219/255: +1.32 dB on bridge, +0.094 dB on Set14)."""
    images = _load_set(book_data, "Set14")
    assert [img.shape[0] for img in images].count(1) == 1        # only bridge is grayscale
    bridge = next(img for img in images if img.shape[0] == 1)
    own = sr.evaluate(lambda lr: sr.imresize(lr, 2), [bridge], 2)["psnr"]
    assert sr.evaluate(lambda lr: sr.imresize(lr, 2), "Set14", 2) == \
        sr.evaluate(lambda lr: sr.imresize(lr, 2), images, 2)           # a set by name
    as_rgb = sr.evaluate(lambda lr: sr.imresize(lr, 2), [bridge.expand(3, -1, -1)], 2)["psnr"]
    assert as_rgb - own == pytest.approx(20 * math.log10(255 / 219), abs=0.01)


# ---------------------------------------------------------------------------------------
# Training data: dihedral augmentation and the patch sampler
# ---------------------------------------------------------------------------------------

def _all_symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 images rot90^k(x) and rot90^k(mirror(x)), written independently of dihedral."""
    return [torch.rot90(y, k, dims=(-2, -1)) for y in (x, x.flip(-1)) for k in range(4)]


def test_dihedral_reaches_all_eight_symmetries():
    x = _rand(1, 1, 5, 5, seed=3)
    ops = torch.tensor([[t, r, c] for t in (0, 1) for r in (0, 1) for c in (0, 1)], dtype=torch.bool)
    out = sr.dihedral(x.expand(8, 1, 5, 5), ops)
    want = _all_symmetries(x[0])
    for b in range(8):                        # each output is one of the 8 symmetries ...
        assert sum(torch.equal(out[b], w) for w in want) == 1
    for w in want:                            # ... and all 8 are reached
        assert any(torch.equal(out[b], w) for b in range(8))
    # it commutes with nearest upscaling, so LR and HR patches stay aligned
    up = x.repeat_interleave(3, -1).repeat_interleave(3, -2).expand(8, 1, 15, 15)
    down_then_up = sr.dihedral(x.expand(8, 1, 5, 5), ops).repeat_interleave(3, -1).repeat_interleave(3, -2)
    torch.testing.assert_close(sr.dihedral(up, ops), down_then_up, rtol=0, atol=0)


def test_dihedral_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        sr.dihedral(torch.rand(2, 1, 4, 5), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        sr.dihedral(torch.rand(2, 1, 4, 4), torch.zeros(2, 2, dtype=torch.bool))


def _tiny_images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    sizes = [(25, 31), (19, 22), (9, 30)]     # the last one is too small for 5x5 LR at x3
    return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]


def test_patch_sampler_locate_is_a_bijection_onto_all_windows():
    smp = sr.PatchSampler(_tiny_images(), 3, 5, 4, device="cpu")
    assert smp.skipped == 1 and smp.num_images == 2
    # LR sizes after modcrop: (8, 10) and (6, 7) -> (8-5+1)(10-5+1) + (6-5+1)(7-5+1) windows
    assert smp.num_windows == 4 * 6 + 2 * 3
    n, i, j = smp.locate(torch.arange(smp.num_windows))
    seen = set(zip(n.tolist(), i.tolist(), j.tolist()))
    want = {(0, a, b) for a in range(4) for b in range(6)} | {(1, a, b) for a in range(2) for b in range(3)}
    assert seen == want


def test_patch_sampler_pairs_match_the_protocol():
    images = _tiny_images()
    g = torch.Generator().manual_seed(0)
    smp = sr.PatchSampler(images, 3, 5, 16, augment=False, device="cpu", generator=g,
                          steps_per_epoch=3)
    lr, hr = smp.sample()
    assert lr.shape == (16, 1, 5, 5) and hr.shape == (16, 1, 15, 15)
    assert lr.dtype == hr.dtype == torch.float32
    pairs = []
    for img in images[:2]:
        h, l = sr.make_pair(img, 3)                # the y-first degradation of the test sets
        pairs.append((l[0], h[0]))
    for b in range(16):                       # find the LR window, check the HR one under it
        hits = [(n, a, c) for n, (ly, _) in enumerate(pairs)
                for a in range(ly.shape[0] - 4) for c in range(ly.shape[1] - 4)
                if torch.allclose(ly[a:a + 5, c:c + 5], lr[b, 0])]
        assert hits, "an LR patch is not a window of any LR image"
        n, a, c = hits[0]
        torch.testing.assert_close(hr[b, 0], pairs[n][1][3 * a:3 * a + 15, 3 * c:3 * c + 15])
    assert len(smp) == 3 and len(list(smp)) == 3


def test_patch_sampler_augments_pairs_consistently_and_reproducibly():
    images = _tiny_images()
    a = sr.PatchSampler(images, 2, 4, 32, device="cpu", generator=torch.Generator().manual_seed(5))
    b = sr.PatchSampler(images, 2, 4, 32, device="cpu", generator=torch.Generator().manual_seed(5))
    (lr_a, hr_a), (lr_b, hr_b) = a.sample(), b.sample()
    torch.testing.assert_close(lr_a, lr_b, rtol=0, atol=0)
    torch.testing.assert_close(hr_a, hr_b, rtol=0, atol=0)
    # the HR patch, shrunk by 2x2 averaging, stays close to its LR patch whatever the symmetry
    # (bicubic downscaling is a smooth low-pass, so the two agree much better than chance)
    pooled = F.avg_pool2d(hr_a, 2)
    matched = (pooled - lr_a).abs().mean()
    shuffled = (pooled - lr_a.roll(1, dims=0)).abs().mean()
    assert matched < 0.5 * shuffled


def test_patch_sampler_bad_inputs():
    with pytest.raises(ValueError, match="no image is large enough"):
        sr.PatchSampler(_tiny_images(), 4, 50, 2, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        sr.PatchSampler(_tiny_images(), 2, 4, 0, device="cpu")


# ---------------------------------------------------------------------------------------
# PreUpsample, WindowSR, upscale, frame_cost, the model zoo
# ---------------------------------------------------------------------------------------

def test_preupsample_is_bicubic_then_net():
    torch.manual_seed(0)
    net = sr.SRCNN(f2=1)
    x = torch.rand(2, 1, 7, 9)
    torch.testing.assert_close(sr.PreUpsample(net, 3)(x), net(sr.imresize(x, 3)))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_window_sr_any_size_and_gradients(scale):
    torch.manual_seed(0)
    net = sr.WindowSR(scale, dim=12, depth=2, heads=2, window=4)
    x = torch.rand(2, 1, 6, 9)                # not multiples of the window: padded, cropped
    y = net(x)
    assert y.shape == (2, 1, 6 * scale, 9 * scale)
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    shifts = [blk.attn.shift for blk in net.blocks]
    assert shifts == [(0, 0), (2, 2)]         # unshifted, then shifted by window // 2


def test_residual_networks_start_at_their_skip():
    x = torch.rand(2, 1, 5, 7)
    for net in (sr.WindowSR(3, dim=8, depth=2, heads=2, window=4), sr.ESPCN(3, residual=True)):
        torch.testing.assert_close(net(x), sr.bicubic_skip(x, 3), rtol=0, atol=0)
    torch.testing.assert_close(sr.SRCNN(residual=True)(x), x, rtol=0, atol=0)
    # FSRCNN keeps the paper's N(0, 0.001^2) deconv init: close to its skip, not equal
    assert (sr.FSRCNN(3, residual=True)(x) - sr.bicubic_skip(x, 3)).abs().max() < 0.05
    assert sr.ESPCN(3).body[-1].weight.abs().sum() > 0          # the paper's init otherwise


def test_residual_networks_add_bicubic():
    # with the last layer zeroed, a residual network is its fixed upscaler
    x = torch.rand(2, 1, 5, 7)
    for net in (sr.WindowSR(3, dim=8, depth=2, heads=2, window=4), sr.ESPCN(3, residual=True)):
        last = net.tail if isinstance(net, sr.WindowSR) else net.body[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        torch.testing.assert_close(net(x), sr.bicubic_skip(x, 3), rtol=0, atol=0)
    fsrcnn = sr.FSRCNN(3, residual=True)
    torch.nn.init.zeros_(fsrcnn.upsample.weight)
    torch.nn.init.zeros_(fsrcnn.upsample.bias)
    torch.testing.assert_close(fsrcnn(x), sr.bicubic_skip(x, 3), rtol=0, atol=0)
    srcnn = sr.SRCNN(f2=1, residual=True)
    torch.nn.init.zeros_(srcnn.body[-1].weight)
    torch.nn.init.zeros_(srcnn.body[-1].bias)
    torch.testing.assert_close(srcnn(x), x, rtol=0, atol=0)
    torch.testing.assert_close(sr.bicubic_skip(x, 2),
                               F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))
    # residual=False is the paper's network: the output does not contain the input
    plain = sr.ESPCN(3)
    torch.nn.init.zeros_(plain.body[-1].weight)
    torch.nn.init.zeros_(plain.body[-1].bias)
    assert plain(x).abs().max() == 0


def test_window_sr_pads_to_a_window_multiple():
    # an image that is not a multiple of the window is run as its replicate-padded version
    torch.manual_seed(1)
    net = sr.WindowSR(2, dim=8, depth=2, heads=2, window=4).eval()
    x = torch.rand(1, 1, 6, 7)
    xp = F.pad(x, (0, 1, 0, 2), mode="replicate")                       # 8 x 8
    with torch.no_grad():
        got = net(x) - sr.bicubic_skip(x, 2)
        want = (net(xp) - sr.bicubic_skip(xp, 2))[..., :12, :14]
    assert got.shape == (1, 1, 12, 14)
    torch.testing.assert_close(got, want)


def test_upscale_bicubic_and_color():
    lr = _rand(3, 6, 8, seed=2, dtype=torch.float32)
    rgb = sr.upscale(None, lr, 2, color=True)
    torch.testing.assert_close(rgb, sr.imresize(lr, 2).clamp(0, 1))
    torch.testing.assert_close(sr.upscale(None, lr, 2), sr.rgb_to_y(sr.imresize(lr, 2)))
    # a "network" that is bicubic on Y gives back bicubic RGB: chroma comes from bicubic
    bicubic_y = sr.PreUpsample(torch.nn.Identity(), 2)
    torch.testing.assert_close(sr.upscale(bicubic_y, lr[None], 2, color=True), rgb[None],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(sr.upscale(bicubic_y, lr, 2), sr.rgb_to_y(sr.imresize(lr, 2)),
                               atol=1e-5, rtol=0)
    # a Y input (what evaluate passes under "y-first") goes to the network as it is
    y = sr.rgb_to_y(lr)
    torch.testing.assert_close(sr.upscale(None, y, 2), sr.imresize(y, 2))
    torch.testing.assert_close(sr.upscale(bicubic_y, y[None], 2), sr.imresize(y, 2)[None],
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="3 channels"):
        sr.upscale(None, torch.rand(1, 1, 4, 4), 2, color=True)


def test_frame_cost_counts_flops_without_running_on_meta():
    torch.manual_seed(0)
    net = sr.ESPCN(3).train()
    cost = sr.frame_cost(net, 3, 30, 48, repeat=2)
    assert net.training                       # the mode is restored
    assert cost["flops"] == ml_bench_count(net, torch.rand(1, 1, 10, 16))
    assert cost["lr_size"] == (10, 16) and cost["device"] == "cpu"
    assert cost["ms"] > 0 and cost["fps"] == pytest.approx(1000 / cost["ms"])
    assert len(cost["timing"].times) == 2
    # the formula for ESPCN: 2 * sum(C_in k^2 C_out) per LR pixel
    per_pixel = 2 * (1 * 25 * 64 + 64 * 9 * 32 + 32 * 9 * 9)
    assert cost["flops"] == per_pixel * 10 * 16
    # SRCNN counts its bicubic step too; attention counts its matmuls
    for name in ("srcnn", "windowsr"):
        model = sr.build_model(name, 2)
        assert sr.frame_cost(model, 2, 16, 16, repeat=1)["flops"] == ml_bench_count(model, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="not divisible"):
        sr.frame_cost(net, 3, 1080, 1000)


def ml_bench_count(model, x):
    from minilib import bench
    return bench.count_flops(model, x)


def test_build_model_and_recipe():
    for name in sr.MODEL_NAMES:
        m = sr.build_model(name, 4)
        assert m(torch.rand(1, 1, 8, 8)).shape == (1, 1, 32, 32)
        cfg = sr.recipe(name, 4)
        assert cfg["model"] == name and cfg["scale"] == 4 and cfg["train_set"] == "T91"
    with pytest.raises(ValueError, match="unknown SR model"):
        sr.build_model("edsr", 2)
    with pytest.raises(ValueError, match="unknown SR model"):
        sr.recipe("edsr", 2)


def test_trained_model_trains_evaluates_and_caches(book_data, tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    recipe = sr.recipe
    # the smoke recipe, on a smaller training set to keep this test fast
    monkeypatch.setattr(sr, "recipe", lambda name, scale, residual=True: {
        **recipe(name, scale, residual), "train_set": "Set5", "steps": 10})
    model, record = sr.trained_model("espcn", 2, progress=False)
    assert not model.training
    assert record["config"]["steps"] == 10 and len(record["history"]["rows"]) >= 1
    assert set(record["metrics"]) == {"train_loss", "Set5"}
    set5 = record["metrics"]["Set5"]
    assert len(set5["psnr_per_image"]) == len(set5["ssim_per_image"]) == 2     # smoke: eval_limit
    assert set5["psnr"] == pytest.approx(sum(set5["psnr_per_image"]) / 2)
    assert 20 < set5["psnr"] < 45 and 0 < set5["ssim"] <= 1
    again, record2 = sr.trained_model("espcn", 2, progress=False)      # from the cache
    assert record2["metrics"] == record["metrics"]
    for p, q in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=0, atol=0)


def test_eval_images_smallest_subset(book_data):
    full = sr.eval_images("Set5")
    assert len(full) == 5
    small = sr.eval_images("Set5", 2)
    sizes = sorted(img.shape[-1] * img.shape[-2] for img in full)
    assert [img.shape[-1] * img.shape[-2] for img in small] == sizes[:2]
