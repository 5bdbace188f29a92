"""ml.baselines: configurations per scale, variants (swapped parts, overridden settings)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

import minilib as ml
from minilib import baselines


@pytest.fixture
def scale(monkeypatch):
    def set_scale(name: str) -> None:
        monkeypatch.setenv("BOOK_SCALE", name)
    return set_scale


@pytest.mark.parametrize("name, key", [
    # The cache keys of chapter 1's baselines at the cpu scale. Later chapters load these
    # trained models; a change of a recipe's configuration silently retrains them, so it
    # must be deliberate: update the key here when you change a recipe.
    ("cifar_cnn", "cifar_cnn-cpu-9c2047eeb54a"),
    ("cifar_vit", "cifar_vit-cpu-a8aed1103d2e"),
    ("fashion_mlp", "fashion_mlp-cpu-ffd96c67a922"),
    ("char_gpt", "char_gpt-cpu-983d35309ef3"),
])
def test_baseline_cache_keys_are_stable(scale, name, key):
    scale("cpu")
    assert ml.train.cache_key(name, baselines.config(name)) == key


def test_config_unknown_name():
    with pytest.raises(ValueError, match="unknown baseline 'resnet'.*cifar_cnn"):
        baselines.config("resnet")


def test_variant_without_parts_keeps_the_name(scale):
    scale("smoke")
    name, cfg = baselines._variant("cifar_vit", None, {"norm": None}, {"depth": 3})
    assert name == "cifar_vit" and cfg["depth"] == 3 and "variant" not in cfg
    assert cfg == baselines.config("cifar_vit") | {"depth": 3}


def test_variant_with_parts_needs_a_name(scale):
    scale("smoke")
    with pytest.raises(ValueError, match="variant=.*norm="):
        baselines._variant("cifar_vit", None, {"norm": ml.norm.RMSNorm}, {})
    name, cfg = baselines._variant("cifar_vit", "rmsnorm", {"norm": ml.norm.RMSNorm}, {})
    assert name == "cifar_vit-rmsnorm" and cfg["variant"] == "rmsnorm"


def test_variant_unknown_setting_lists_the_known_ones(scale):
    scale("smoke")
    with pytest.raises(ValueError, match="unknown setting.*depht.*depth"):
        baselines._variant("cifar_vit", None, {}, {"depht": 3})
    # placement is a setting of the transformers only
    baselines._variant("char_gpt", None, {}, {"placement": "post"})
    with pytest.raises(ValueError, match="placement"):
        baselines._variant("cifar_cnn", None, {}, {"placement": "post"})


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x/y"])
def test_variant_name_must_be_a_token(scale, bad):
    scale("smoke")
    with pytest.raises(ValueError, match="short name"):
        baselines._variant("cifar_vit", bad, {}, {})


def test_variants_have_their_own_cache_files(scale):
    scale("cpu")
    keys = {ml.train.cache_key(*baselines._variant("cifar_vit", v, {}, {}))
            for v in (None, "a", "b")}
    assert len(keys) == 3


def test_resnet9_channel_attention_plugs_into_both_residual_branches():
    plain = ml.models.ResNet9(width=4)
    se = ml.models.ResNet9(width=4, channel_attn=functools.partial(ml.attention.SqueezeExcite,
                                                                   reduction=2))
    # Without channel attention the parameter names are chapter 1's (cached models load).
    assert all(k in se.state_dict() for k in plain.state_dict())
    extra = sorted(set(se.state_dict()) - set(plain.state_dict()))
    assert extra and all(k.startswith(("layer1.2.f.2.", "layer3.2.f.2.")) for k in extra)
    x = torch.randn(2, 3, 32, 32)
    assert se(x).shape == (2, 10)
    eca = ml.models.ResNet9(width=4, channel_attn=ml.attention.ECA)
    assert isinstance(eca.layer3[2].f[2], ml.attention.ECA)


def test_char_gpt_variant_trains_and_caches(scale, book_data, tmp_path, monkeypatch):
    """A smoke-scale Post-LN variant with RMSNorm: trains, caches under its name, reloads."""
    scale("smoke")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    model, record = baselines.char_gpt(variant="post-rms", norm=ml.norm.RMSNorm,
                                       placement="post", steps=8, warmup_steps=2, eval_every=8,
                                       n_layer=1)
    assert record["config"]["placement"] == "post" and record["config"]["n_layer"] == 1
    assert all(b.placement == "post" for b in model.blocks) and len(model.blocks) == 1
    assert isinstance(model.norm, ml.norm.RMSNorm)
    files = list((tmp_path / "models").glob("char_gpt-post-rms-smoke-*.pt"))
    assert len(files) == 1
    again, record2 = baselines.char_gpt(variant="post-rms", norm=ml.norm.RMSNorm,
                                        placement="post", steps=8, warmup_steps=2,
                                        eval_every=8, n_layer=1)
    assert record2 == record
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p.cpu(), q.cpu())


def test_cifar_vit_variant_builds_with_its_parts(scale, book_data, tmp_path, monkeypatch):
    scale("smoke")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    attn = functools.partial(ml.attention.WindowAttention, window_size=4, grid=(8, 8))
    model, record = baselines.cifar_vit(variant="window4", attn=attn, epochs=1, n_train=256,
                                        n_test=100, depth=1)
    assert isinstance(model.blocks[0].attn, ml.attention.WindowAttention)
    assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0
    assert record["config"]["variant"] == "window4"
    assert isinstance(model.norm, nn.LayerNorm)
