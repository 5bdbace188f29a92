"""ml.models: shapes, input checks, attention against a manual computation, pluggable parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from minilib import models


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- forward shapes ----------------------------------------------------------

def test_resnet9_shape():
    net = models.ResNet9(num_classes=7, width=4)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    gray = models.ResNet9(width=4, in_channels=1)
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet9_structure_follows_page():
    net = models.ResNet9(width=4)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 8, 8, 16, 32, 32, 32]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 8
    assert net.fc.bias is None and net.scale == 0.125
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), net.fc(net.features(x)) * 0.125)


def test_vit_shape():
    vit = models.ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2)
    assert vit.num_patches == 16
    assert vit.pos_embed.shape == (1, 17, 16)
    assert vit(torch.randn(3, 3, 16, 16)).shape == (3, 5)


def test_chargpt_shape():
    gpt = models.CharGPT(11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    assert gpt(torch.randint(0, 11, (2, 8))).shape == (2, 8, 11)
    assert gpt(torch.randint(0, 11, (2, 3))).shape == (2, 3, 11)


def test_mlp_shape_and_norm():
    mlp = models.MLP(in_features=28 * 28, hidden=(32, 16), num_classes=10, dropout=0.1,
                     norm=nn.BatchNorm1d)
    assert mlp(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp.modules()) == 2
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]


# --- input checks -------------------------------------------------------------

def test_chargpt_rejects_long_input():
    gpt = models.CharGPT(11, block_size=8, n_layer=1, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match="block_size=8"):
        gpt(torch.zeros(1, 9, dtype=torch.long))


def test_vit_rejects_bad_patch_size():
    with pytest.raises(ValueError, match="patch_size=5"):
        models.ViT(image_size=32, patch_size=5)


def test_vit_rejects_wrong_image_size():
    vit = models.ViT(image_size=16, patch_size=4, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="expects images"):
        vit(torch.randn(1, 3, 32, 32))


def test_mlp_rejects_wrong_features():
    with pytest.raises(ValueError, match="in_features"):
        models.MLP(in_features=784)(torch.randn(2, 3, 32, 32))


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        models.Attention(10, 3)


def test_block_rejects_unknown_placement():
    with pytest.raises(ValueError, match="placement"):
        models.Block(16, 2, placement="sandwich")


# --- attention against the textbook formula -----------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_manual(causal):
    B, T, C, H = 2, 5, 12, 3
    attn = models.Attention(C, H, causal=causal).double().eval()
    x = torch.randn(B, T, C, dtype=torch.float64)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=-1)
    d = C // H
    heads = lambda t: t.view(B, T, H, d).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)                     # (B, H, T, T)
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)               # j > i is the future
        scores = scores.masked_fill(mask, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    expected = y @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected)


def test_causal_attention_ignores_the_future():
    attn = models.Attention(8, 2, causal=True).eval()
    x = torch.randn(1, 6, 8)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 8)
    torch.testing.assert_close(attn(x)[:, :4], attn(x2)[:, :4])


# --- blocks and pluggable parts ------------------------------------------------

def test_block_placements_run_and_differ():
    x = torch.randn(2, 5, 16)
    outs = {}
    for placement in models.PLACEMENTS:
        torch.manual_seed(1)  # the same attention and MLP weights for every placement
        block = models.Block(16, 2, placement=placement).eval()
        # non-trivial norm parameters so that the norms do something different
        for m in block.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.normal_(m.weight, 1.0, 0.3)
        outs[placement] = block(x)
        assert outs[placement].shape == x.shape
    assert hasattr(models.Block(16, 2, placement="peri"), "norm1_out")
    assert not torch.allclose(outs["pre"], outs["post"])
    assert not torch.allclose(outs["pre"], outs["peri"])
    assert not torch.allclose(outs["post"], outs["peri"])


class CountingNorm(nn.Module):
    """An identity 'norm' that counts its calls: proves a factory was used."""

    calls = 0

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        CountingNorm.calls += 1
        return x


def test_norm_is_pluggable():
    CountingNorm.calls = 0
    vit = models.ViT(image_size=8, patch_size=4, dim=8, depth=2, heads=2, norm=CountingNorm)
    assert not any(isinstance(m, nn.LayerNorm) for m in vit.modules())
    vit(torch.randn(1, 3, 8, 8))
    assert CountingNorm.calls == 2 * 2 + 1  # two per block, one final

    made = []
    gpt = models.CharGPT(5, block_size=4, n_layer=1, n_head=1, n_embd=8,
                         norm=lambda d: made.append(d) or nn.Identity())
    assert made == [8, 8, 8] and not any(isinstance(m, nn.LayerNorm) for m in gpt.modules())

    cnn = models.ResNet9(width=2, norm=lambda c: nn.GroupNorm(1, c), act=nn.GELU)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    assert any(isinstance(m, nn.GELU) for m in cnn.modules())
    assert cnn(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_attn_and_mlp_are_pluggable():
    seen = []

    class MeanMixer(nn.Module):
        """Replaces attention by a (causal) running mean over tokens."""

        def __init__(self, dim, heads, *, causal=False, dropout=0.0):
            super().__init__()
            seen.append(("attn", dim, heads, causal))

        def forward(self, x):
            return x.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)

    def small_mlp(dim, hidden_dim, *, dropout=0.0):
        seen.append(("mlp", dim, hidden_dim))
        return nn.Linear(dim, dim)

    gpt = models.CharGPT(7, block_size=6, n_layer=2, n_head=2, n_embd=8, attn=MeanMixer,
                         mlp=small_mlp, dropout=0.0)
    assert gpt(torch.randint(0, 7, (2, 6))).shape == (2, 6, 7)
    assert seen.count(("attn", 8, 2, True)) == 2 and seen.count(("mlp", 8, 32)) == 2
    assert not any(isinstance(m, models.Attention) for m in gpt.modules())


# --- CharGPT specifics ---------------------------------------------------------

def test_chargpt_generate_length_and_mode():
    gpt = models.CharGPT(9, block_size=4, n_layer=1, n_head=2, n_embd=8)
    gpt.train()
    prompt = torch.randint(0, 9, (2, 3))
    out = gpt.generate(prompt, max_new_tokens=6, temperature=0.8, top_k=3)
    assert out.shape == (2, 9) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prompt) and out.max() < 9
    assert gpt.training  # mode restored


def test_chargpt_top1_is_greedy():
    gpt = models.CharGPT(9, block_size=8, n_layer=1, n_head=2, n_embd=8).eval()
    prompt = torch.randint(0, 9, (1, 2))
    out = gpt.generate(prompt, max_new_tokens=1, top_k=1)
    assert out[0, -1] == gpt(prompt)[0, -1].argmax()


def test_chargpt_weight_tying_and_init():
    gpt = models.CharGPT(50, block_size=8, n_layer=4, n_head=2, n_embd=64)
    assert gpt.head.weight is gpt.tok_emb.weight
    # one (V, C) matrix counted once: the head adds no parameters of its own
    all_names = dict(gpt.named_parameters(remove_duplicate=False))
    assert "head.weight" in all_names and len(list(gpt.parameters())) == len(all_names) - 1
    # GPT-2 init: residual projections have std 0.02 / sqrt(2 * n_layer)
    proj = gpt.blocks[0].mlp.proj.weight
    assert abs(proj.std().item() - 0.02 / math.sqrt(8)) < 0.002
    assert abs(gpt.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
