"""ml.sparsity (chapter 6) against PyTorch references, oracles and invariants."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import minilib as ml

S, M = ml.sparsity, ml.models


def ffn(dim=16, hidden=64, act=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    return M.FeedForward(dim, hidden, act=act).eval()


def tiny_gpt(act=nn.ReLU, seed=0, layers=2):
    torch.manual_seed(seed)
    return M.CharGPT(11, block_size=8, n_layer=layers, n_head=2, n_embd=16, dropout=0.0,
                     mlp=partial(M.FeedForward, act=act)).eval()


# --------------------------------------------------------------------------- FeedForward(act=)

def test_feedforward_act_keeps_parameter_names():
    assert list(M.FeedForward(8, 32).state_dict()) == list(M.FeedForward(8, 32, act=nn.ReLU).state_dict())
    assert isinstance(M.FeedForward(8, 32).act, nn.GELU)
    assert isinstance(M.FeedForward(8, 32, act=nn.SiLU).act, nn.SiLU)


# --------------------------------------------------------------------------- measuring

class Known(nn.Module):
    """One FeedForward whose hidden activations are known: fc = identity, bias -1, ReLU."""

    def __init__(self):
        super().__init__()
        self.mlp = M.FeedForward(4, 4, act=nn.ReLU)
        with torch.no_grad():
            self.mlp.fc.weight.copy_(torch.eye(4))
            self.mlp.fc.bias.fill_(-1.0)

    def forward(self, x):
        return self.mlp(x)


def test_activation_sparsity_on_known_activations():
    model = Known().train()
    # a = relu(x - 1): for x = [0, 0.5, 1.5, 3] -> [0, 0, 0.5, 2]; 2 of 4 zero, 3 of 4 <= 0.5
    x = torch.tensor([[0.0, 0.5, 1.5, 3.0]])
    before = copy.deepcopy(model.state_dict())
    assert S.activation_sparsity(model, [x]) == {"mlp": 0.5}
    assert S.activation_sparsity(model, [x, x * 0], threshold=0.5) == {"mlp": (3 + 4) / 8}
    assert S.activation_sparsity(model, [(x, None)]) == {"mlp": 0.5}   # (input, target) pairs
    assert model.training, "the mode must be restored"
    assert not model.mlp.act._forward_hooks, "no hook may be left behind"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_activation_sparsity_matches_a_manual_count_in_chargpt():
    model = tiny_gpt(act=nn.GELU)
    idx = torch.randint(0, 11, (3, 8))
    got = S.activation_sparsity(model, [idx], threshold=0.05)
    acts = S.hidden_activations(model, idx)
    assert set(got) == {f"blocks.{i}.mlp" for i in range(2)} == set(acts)
    for i, block in enumerate(model.blocks):   # recompute block by block, without hooks
        h = model.tok_emb(idx) + model.pos_emb(torch.arange(8)) if i == 0 else h
        x = h + block.attn(block.norm1(h))
        a = block.mlp.act(block.mlp.fc(block.norm2(x)))
        h = x + block.mlp.proj(a)
        assert acts[f"blocks.{i}.mlp"].shape == (3, 8, 64)
        torch.testing.assert_close(acts[f"blocks.{i}.mlp"], a.detach())
        assert got[f"blocks.{i}.mlp"] == pytest.approx((a.abs() <= 0.05).float().mean().item())


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        S.activation_sparsity(Known(), [torch.zeros(1, 4)], threshold=-0.1)
    with pytest.raises(ValueError, match="no ml.models.FeedForward"):
        S.activation_sparsity(nn.Sequential(nn.Linear(4, 4)), [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="no ml.models.FeedForward"):
        S.relufy(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="multiple of 4"):
        S.prune_2_4(torch.randn(3, 6))
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        S.SparseFFN(ffn(), threshold=-1.0)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        S.Thresholded(nn.ReLU(), torch.tensor([0.1, -0.2]))
    with pytest.raises(ValueError, match="no activations seen"):
        S.activation_sparsity(Known(), [])
    with pytest.raises(ValueError, match="sparsity is a fraction"):
        S.calibrate_thresholds(Known(), [torch.zeros(1, 4)], 1.0)
    with pytest.raises(ValueError, match="k is the number"):
        S.TopK(nn.ReLU(), 0)


# --------------------------------------------------------------------------- making it sparser

def test_relufy_swaps_every_activation_and_nothing_else():
    model = tiny_gpt(act=nn.GELU)
    names = list(model.state_dict())
    assert S.relufy(model) is model
    assert all(isinstance(b.mlp.act, nn.ReLU) for b in model.blocks)
    assert list(model.state_dict()) == names
    S.relufy(model, partial(S.ShiftedReLU, 0.5))
    assert all(b.mlp.act.shift == 0.5 for b in model.blocks)


def test_sparsify_is_hardshrink():
    x = torch.randn(5, 7, dtype=torch.float64)
    for t in (0.0, 0.3, 1.0):
        assert torch.equal(S.sparsify(x, t), F.hardshrink(x, t))
    t = torch.rand(7, dtype=torch.float64)
    assert torch.equal(S.sparsify(x, t), torch.where(x.abs() > t, x, torch.zeros_like(x)))


def test_shifted_relu_and_topk():
    x = torch.randn(4, 6, 32)
    assert torch.equal(S.ShiftedReLU(0.25)(x), F.relu(x - 0.25))
    y = S.TopK(nn.GELU(), 5)(x)
    assert ((y != 0).sum(-1) == 5).all()
    a = F.gelu(x)
    kth = a.abs().topk(5, dim=-1).values[..., -1:]
    assert torch.equal(y != 0, a.abs() >= kth)
    torch.testing.assert_close(y[y != 0], a[y != 0])
    assert torch.equal(S.TopK(nn.ReLU(), 64)(x), F.relu(x))


@pytest.mark.parametrize("per_channel", [False, True])
def test_calibrated_thresholds_reach_the_target_sparsity(per_channel):
    model = tiny_gpt(act=nn.GELU)
    batches = [torch.randint(0, 11, (4, 8)) for _ in range(3)]
    th = S.calibrate_thresholds(model, batches, 0.7, per_channel=per_channel)
    assert set(th) == {"blocks.0.mlp", "blocks.1.mlp"}
    assert all(t.shape == ((64,) if per_channel else ()) for t in th.values())
    # layer 0 sees the same inputs after thresholding: its sparsity is at least the target
    s = S.activation_sparsity(model, batches, threshold=0.0)
    thresholded = S.apply_thresholds(copy.deepcopy(model), th)
    got = S.activation_sparsity(thresholded, batches)
    assert got["blocks.0.mlp"] >= 0.7 > s["blocks.0.mlp"]
    assert got["blocks.0.mlp"] < 0.7 + 0.02
    assert S.calibrate_thresholds(model, batches, 0.0)["blocks.0.mlp"] == 0


# --------------------------------------------------------------------------- sparse FFNs

@pytest.mark.parametrize("shape", [(1, 1, 16), (3, 5, 16), (7, 16)])
def test_sparse_ffn_equals_the_dense_relu_ffn(shape):
    f = ffn()
    x = torch.randn(*shape)
    with torch.no_grad():
        dense, sparse = f(x), S.SparseFFN(f)(x)
    assert sparse.shape == dense.shape
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)


def test_sparse_ffn_with_threshold_equals_the_thresholded_ffn():
    f = ffn(act=nn.GELU)
    x = torch.randn(4, 9, 16)
    g = copy.deepcopy(f)
    g.act = S.Thresholded(g.act, 0.1)
    with torch.no_grad():
        torch.testing.assert_close(S.SparseFFN(f, 0.1)(x), g(x), rtol=1e-5, atol=1e-6)
        assert (S.SparseFFN(f, 0.1)(x) - f(x)).abs().max() > 1e-4   # GELU: an approximation


def test_sparse_ffn_follows_weight_updates_and_all_inactive_tokens():
    f = ffn()
    sp = S.SparseFFN(f)
    x = torch.randn(2, 16)
    with torch.no_grad():
        sp(x)
        f.proj.weight.mul_(2.0)                  # in place: the cached transpose must refresh
        torch.testing.assert_close(sp(x), f(x), rtol=1e-5, atol=1e-6)
        f.fc.bias.fill_(-1e3)                    # nothing active: the output is the bias
        torch.testing.assert_close(sp(x), f.proj.bias.expand(2, 16))


def test_predicted_ffn_with_a_perfect_predictor_is_exact():
    f = ffn()
    x = torch.randn(3, 4, 16)
    oracle = lambda z: f.fc(z)                    # logit > 0 exactly where the ReLU is active
    with torch.no_grad():
        torch.testing.assert_close(S.PredictedFFN(f, oracle)(x), f(x), rtol=1e-5, atol=1e-6)


def test_fit_predictor_reaches_its_recall():
    f = ffn(dim=16, hidden=64)
    x = torch.randn(2000, 16)
    p = S.fit_predictor(f, x, rank=4, recall=0.95, steps=50)
    with torch.no_grad():
        active = f.act(f.fc(x)) > 0
        predicted = p(x) > 0
    recall = (active & predicted).sum() / active.sum()
    assert 0.94 <= recall.item() <= 0.97
    with pytest.raises(ValueError, match="rank"):
        S.fit_predictor(f, x, rank=0)


def test_replace_ffns_wraps_every_feed_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 11, (2, 8))
    with torch.no_grad():
        dense = model(idx)
        sparse = S.replace_ffns(copy.deepcopy(model), lambda name, f: S.SparseFFN(f))
        assert all(isinstance(b.mlp, S.SparseFFN) for b in sparse.blocks)
        torch.testing.assert_close(sparse(idx), dense, rtol=1e-5, atol=1e-5)
        # the inner FeedForward is still found: measuring works on the wrapped model
        assert set(S.activation_sparsity(sparse, [idx])) == {"blocks.0.mlp.ffn", "blocks.1.mlp.ffn"}


# --------------------------------------------------------------------------- 2:4

def test_prune_2_4_keeps_exactly_the_2_largest_of_every_4():
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    mask = S.prune_2_4(w)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    groups, kept = w.abs().reshape(8, 8, 4), mask.reshape(8, 8, 4)
    assert (kept.sum(-1) == 2).all()
    smallest_kept = torch.where(kept, groups, torch.inf).min(-1).values
    largest_dropped = torch.where(~kept, groups, -torch.inf).max(-1).values
    assert (smallest_kept >= largest_dropped).all()
    assert S.prune_2_4(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_prune_2_4_matches_torch_ao_weight_norm_sparsifier():
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(1)
    layer = nn.Sequential(nn.Linear(32, 16))
    w = layer[0].weight.detach().clone()
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(layer, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    assert torch.equal(S.prune_2_4(w), layer[0].parametrizations.weight[0].mask.bool())


def test_apply_2_4_masks_linears_and_survives_fine_tuning():
    model = tiny_gpt()
    names = S.apply_2_4(model)
    assert "head" not in names and "blocks.0.mlp.fc" in names and "blocks.1.attn.qkv" in names
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx = torch.randint(0, 11, (2, 8))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    opt.step()
    w = model.get_submodule("blocks.0.mlp.fc").weight
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()


def test_token_losses_average_to_the_evaluated_loss_and_gaps_pair_up():
    model = tiny_gpt(act=nn.GELU)
    batches = [(torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))) for _ in range(3)]
    losses = S.token_losses(model, batches)
    assert losses.shape == (48,)
    assert losses.mean().item() == pytest.approx(ml.train.evaluate(model, batches)["loss"], rel=1e-5)
    gap, se = ml.bench.paired_difference(losses, losses + 0.5)
    assert gap == pytest.approx(0.5) and se == pytest.approx(0.0, abs=1e-6)


def test_progressive_l1_adds_a_growing_penalty():
    model = tiny_gpt().train()
    idx = torch.randint(0, 11, (2, 8))
    loss_fn = S.ProgressiveL1(model, l1=1.0, total_steps=4)
    values = []
    for _ in range(5):
        logits = model(idx)
        values.append((loss_fn(logits, idx) - F.cross_entropy(logits.flatten(0, 1), idx.flatten())).item())
    assert values[0] == 0 and values[1] < values[2] < values[4] and values[4] > 0
    loss_fn.remove()
    assert not model._forward_pre_hooks and not model.blocks[0].mlp.act._forward_hooks


def test_finetune_trains_a_copy_caches_it_and_bakes_the_2_4_masks(book_data, tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_SCALE", "smoke")
    monkeypatch.setenv("BOOK_CACHE", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    corpus = ml.data.shakespeare()
    cfg = ml.baselines.config("char_gpt")
    torch.manual_seed(0)
    model = M.CharGPT(corpus.vocab_size, block_size=cfg["block_size"], n_layer=1, n_head=2, n_embd=16,
                      dropout=0.0, mlp=partial(M.FeedForward, act=nn.ReLU))
    before = copy.deepcopy(model.state_dict())
    tuned, record = S.finetune("test-24", model, 4, l1=0.1, prepare=S.apply_2_4, log_every=2)
    assert [r["step"] for r in record["history"]["rows"]] == [0, 2, 4]
    assert all(0 <= r["sparsity"] <= 1 and r["val_loss"] > 0 for r in record["history"]["rows"])
    assert set(tuned.state_dict()) == set(before)                      # masks baked in, names unchanged
    w = tuned.blocks[0].mlp.fc.weight
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # the original is untouched
    again, _ = S.finetune("test-24", model, 4, l1=0.1, prepare=S.apply_2_4, log_every=2)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in tuned.state_dict().items())
