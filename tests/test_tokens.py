"""ml.tokens: pruning by class-token attention, EViT fusing, ToMe merging, PrunedViT.

Torch has no reference for these operations, so the tests check invariants and oracles:
identities (keep-all, r = 0, empty schedule), the true top-k, conservation of the
size-weighted sum under merging, a brute-force matching, attention weights against a
materialized softmax, gradients, and the errors for bad input.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import minilib as ml
from minilib import tokens as T


def _tokens(B=3, N=16, C=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 1 + N, C, generator=g, dtype=dtype)
    a = torch.rand(B, N, generator=g, dtype=dtype).softmax(-1)
    return x, a


def _vit(patch_size=4, dim=32, depth=4, heads=4, seed=0):
    torch.manual_seed(seed)
    vit = ml.models.ViT(patch_size=patch_size, dim=dim, depth=depth, heads=heads).eval()
    with torch.no_grad():                           # untrained ViTs have near-uniform attention
        for p in vit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vit


# --- scores ---------------------------------------------------------------------------

def test_cls_attention_is_row_zero_of_the_softmax():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 9, 4, dtype=torch.float64), torch.randn(2, 3, 9, 4, dtype=torch.float64)
    full = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)       # d = 4: sqrt(d) = 2
    torch.testing.assert_close(T.cls_attention(q, k), full[:, :, 0, 1:].mean(1))
    size = torch.randint(1, 4, (2, 9, 1)).double()
    full = torch.softmax(q @ k.transpose(-2, -1) / 2.0 + size.log().view(2, 1, 1, 9), dim=-1)
    torch.testing.assert_close(T.cls_attention(q, k, size), full[:, :, 0, 1:].mean(1))


def test_cls_attention_bad_shapes():
    q = torch.randn(2, 3, 9, 4)
    with pytest.raises(ValueError, match="q and k"):
        T.cls_attention(q, q[:, :, :5])
    with pytest.raises(ValueError, match="size"):
        T.cls_attention(q, q, torch.ones(2, 8, 1))


# --- pruning --------------------------------------------------------------------------

def test_topk_shapes_and_true_topk():
    x, a = _tokens()
    y, index = T.topk_by_attention(x, a, 5)
    assert y.shape == (3, 6, 8) and index.shape == (3, 5)
    for b in range(3):
        expected = sorted(sorted(range(16), key=lambda i: -a[b, i].item())[:5])
        assert index[b].tolist() == expected                     # the true top-k, in image order
        torch.testing.assert_close(y[b, 1:], x[b, 1 + index[b]])
    assert torch.equal(y[:, 0], x[:, 0])                         # the class token stays first


def test_keep_all_is_the_identity():
    x, a = _tokens()
    y, index = T.topk_by_attention(x, a, 16)
    assert torch.equal(y, x) and torch.equal(index, torch.arange(16).expand(3, -1))
    y, _ = T.fuse_pruned(x, a, 16)
    assert torch.equal(y, x)                                     # nothing pruned: no fused token


def test_keep_zero_keeps_the_class_token_only():
    x, a = _tokens()
    y, index = T.topk_by_attention(x, a, 0)
    assert y.shape == (3, 1, 8) and index.shape == (3, 0)
    y, _ = T.fuse_pruned(x, a, 0)
    torch.testing.assert_close(y[:, 1], (a[..., None] * x[:, 1:]).sum(1) / a.sum(1, keepdim=True))


def test_fuse_is_the_attention_weighted_average_of_the_pruned():
    x, a = _tokens()
    y, index = T.fuse_pruned(x, a, 5)
    assert y.shape == (3, 7, 8)
    for b in range(3):
        pruned = [i for i in range(16) if i not in index[b].tolist()]
        w = a[b, pruned]
        torch.testing.assert_close(y[b, -1], (w[:, None] * x[b, 1 + torch.tensor(pruned)]).sum(0) / w.sum())
    torch.testing.assert_close(y[:, :6], T.topk_by_attention(x, a, 5)[0])


def test_gradients_flow_through_kept_tokens_only():
    x, a = _tokens()
    x.requires_grad_(True)
    y, index = T.topk_by_attention(x, a, 5)
    y.sum().backward()
    grad = x.grad[:, 1:].abs().sum(-1)                            # (B, N)
    kept = torch.zeros(3, 16, dtype=torch.bool).scatter(1, index, True)
    assert bool((grad[kept] == 1 * 8).all()) and bool((grad[~kept] == 0).all())
    assert bool((x.grad[:, 0] == 1).all())
    x.grad = None
    a = a.clone().requires_grad_(True)
    y, _ = T.fuse_pruned(x, a, 5)
    y.sum().backward()
    assert x.grad[:, 1:].abs().sum() > 0 and a.grad.abs().sum() > 0   # the fusion weights learn too


@pytest.mark.parametrize("keep", [-1, 17, 2.5, True])
def test_bad_keep(keep):
    x, a = _tokens()
    for fn in (T.topk_by_attention, T.fuse_pruned):
        with pytest.raises(ValueError, match=r"keep=.*\[0, N = 16\]"):
            fn(x, a, keep)


def test_bad_cls_attn_shape():
    x, a = _tokens()
    with pytest.raises(ValueError, match=r"cls_attn must be \(B, N\) = \(3, 16\)"):
        T.topk_by_attention(x, torch.rand(3, 17), 4)              # class token included by mistake
    with pytest.raises(ValueError, match="tokens"):
        T.topk_by_attention(x[0], a[0], 4)


def test_uniform_grid():
    assert T.uniform_grid((4, 4), 2).tolist() == [0, 2, 8, 10]
    assert len(T.uniform_grid((16, 16), 3)) == 36
    with pytest.raises(ValueError, match="stride"):
        T.uniform_grid((4, 4), 0)


# --- merging --------------------------------------------------------------------------

def test_r0_is_the_identity():
    x, _ = _tokens()
    y, size = T.bipartite_merge(x, 0)
    assert torch.equal(y, x) and torch.equal(size, torch.ones(3, 17, 1, dtype=x.dtype))


@pytest.mark.parametrize("T_", [17, 16])
def test_merge_conserves_mass_and_size(T_):
    x, _ = _tokens(N=T_ - 1)
    size = torch.randint(1, 5, (3, T_, 1)).double()
    for r in (1, 3, (T_ - 1) // 2):
        y, s = T.bipartite_merge(x, r, size=size)
        assert y.shape == (3, T_ - r, 8) and s.shape == (3, T_ - r, 1)
        torch.testing.assert_close((s * y).sum(1), (size * x).sum(1))   # merging moves mass only
        torch.testing.assert_close(s.sum(1), size.sum(1))
        torch.testing.assert_close(y[:, 0], x[:, 0])                    # class token untouched
        assert bool((s[:, 0] == size[:, 0]).all())


def test_merge_matches_brute_force():
    """Against a loop over even tokens: best odd partner by cosine, the r best pairs merge."""
    x, _ = _tokens(B=2, N=10)
    m = torch.randn(2, 11, 5, dtype=torch.float64)
    r = 3
    y, s = T.bipartite_merge(x, r, metric=m)
    for b in range(2):
        A, Bs = list(range(0, 11, 2)), list(range(1, 11, 2))
        cos = lambda i, j: F.cosine_similarity(m[b, i], m[b, j], dim=0).item()   # noqa: E731
        best = {i: max(Bs, key=lambda j: cos(i, j)) for i in A[1:]}           # class token excluded
        merged = sorted(best, key=lambda i: -cos(i, best[i]))[:r]
        groups = {j: [j] + [i for i in merged if best[i] == j] for j in Bs}
        expected = [x[b, i] for i in A if i not in merged] + [x[b, g].mean(0) for g in groups.values()]
        torch.testing.assert_close(y[b], torch.stack(expected))
        assert s[b, :, 0].tolist() == [1.0] * (len(A) - r) + [float(len(g)) for g in groups.values()]


def test_merge_identical_tokens_first():
    """Two equal tokens are the most similar pair: with r = 1 they merge, nothing else does."""
    torch.manual_seed(3)
    x = torch.randn(1, 9, 6, dtype=torch.float64)
    x[0, 4] = x[0, 5]
    y, s = T.bipartite_merge(x, 1)
    assert s[0, :, 0].tolist().count(2.0) == 1 and y.shape[1] == 8
    assert any(torch.allclose(row, x[0, 5]) for row in y[0])


def test_merge_gradients():
    x, _ = _tokens()
    x.requires_grad_(True)
    y, s = T.bipartite_merge(x, 4)
    (s * y).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))              # mass is conserved, so d/dx = 1


@pytest.mark.parametrize("r", [-1, 9, 1.5])
def test_bad_r(r):
    x, _ = _tokens()                                              # T = 17: r in [0, 8]
    with pytest.raises(ValueError, match=r"r=.*\[0, \(T - 1\) // 2 = 8\]"):
        T.bipartite_merge(x, r)


def test_bad_metric_and_size():
    x, _ = _tokens()
    with pytest.raises(ValueError, match="metric"):
        T.bipartite_merge(x, 2, metric=torch.randn(3, 16, 4))
    with pytest.raises(ValueError, match="size"):
        T.bipartite_merge(x, 2, size=torch.ones(3, 17))


# --- schedules and PrunedViT ----------------------------------------------------------

def test_keep_schedule():
    assert T.keep_schedule("fuse", 196, [3, 6, 9], 0.7) == {3: ("fuse", 138), 6: ("fuse", 98), 9: ("fuse", 70)}
    assert T.keep_schedule("topk", 256, [1, 2, 3], 0.5) == {1: ("topk", 128), 2: ("topk", 64), 3: ("topk", 32)}
    with pytest.raises(ValueError, match="keep_rate"):
        T.keep_schedule("topk", 64, [1], 1.5)


def test_empty_schedule_equals_the_vit_exactly():
    vit = _vit()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = vit(images)
        assert torch.equal(T.PrunedViT(vit, {})(images), ref)
        keep_all = {1: ("topk", 64), 2: ("fuse", 64), 3: ("topk", 64)}
        assert torch.equal(T.PrunedViT(vit, keep_all)(images), ref)
        assert torch.equal(T.PrunedViT(vit, {0: ("merge", 0), 2: ("merge", 0)})(images), ref)


def test_pruned_vit_token_counts_and_sources():
    vit = _vit()
    images = torch.randn(2, 3, 32, 32)
    cases = {
        "topk": ({1: ("topk", 40), 2: ("topk", 20)}, [41, 21]),
        "fuse": ({1: ("fuse", 40), 2: ("fuse", 20)}, [42, 22]),
        "merge": ({b: ("merge", 8) for b in range(4)}, [57, 49, 41, 33]),
        "feather": ({1: ("feather", 30), 3: ("topk", 10)}, [31, 11]),
    }
    for name, (schedule, counts) in cases.items():
        model = T.PrunedViT(vit, schedule)
        model.trace = True
        with torch.no_grad():
            logits = model(images)
        assert logits.shape == (2, 10), name
        assert [src.shape[1] for _, src in model.sources] == counts, name
        for _, src in model.sources:
            assert bool(src[:, 0, 0].all()) and not bool(src[:, 1:, 0].any())       # class token alone, first
            if name in ("merge", "fuse"):                                     # merging and fusing lose no token
                assert bool((src.sum(1) == 1).all()), name
            else:                                                             # pruning: each token at most once
                assert bool((src.sum(1) <= 1).all()), name
        if name == "feather":                                                  # the stride-4 grid survives block 1
            _, src = model.sources[0]
            assert bool(src[:, :, 1 + T.uniform_grid((8, 8), 4)].any(1).all())
        model.trace = False
        with torch.no_grad():
            assert torch.equal(model(images), logits)                         # tracing changes nothing


def test_pruned_vit_uses_the_blocks_own_attention():
    """Block 1's kept tokens are the top-k of the class-token row of its softmax attention."""
    vit = _vit()
    images = torch.randn(2, 3, 32, 32)
    model = T.PrunedViT(vit, {1: ("topk", 10)})
    model.trace = True
    with torch.no_grad():
        model(images)
        h = vit.blocks[0](torch.cat([vit.cls_token.expand(2, -1, -1),
                                     vit.patch_embed(images).flatten(2).transpose(1, 2)], 1) + vit.pos_embed)
        attn = vit.blocks[1].attn
        q, k, _ = attn.qkv(vit.blocks[1].norm1(h)).split(32, dim=2)
        q, k = (t.view(2, 65, 4, 8).transpose(1, 2) for t in (q, k))
        P = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)      # materialized (B, H, T, T)
        expected = P[:, :, 0, 1:].mean(1).topk(10).indices.sort(1).values
    kept = model.sources[0][1][:, 1:, 1:].any(1)                               # (B, N) patches kept
    assert torch.equal(kept.nonzero()[:, 1].view(2, 10), expected)


def test_pruned_vit_shares_weights_and_trains():
    vit = _vit()
    model = T.PrunedViT(vit, {1: ("fuse", 20)}).train()
    assert {id(p) for p in model.parameters()} == {id(p) for p in vit.parameters()}
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert vit.blocks[3].mlp.fc.weight.grad.abs().sum() > 0


def test_merge_schedule_gradients_reach_the_vit():
    vit = _vit()
    model = T.PrunedViT(vit, {b: ("merge", 8) for b in range(4)}).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert vit.patch_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("schedule, match", [
    ({1: ("prune", 10)}, "method one of topk, fuse, feather, merge"),
    ({1: ("topk",)}, "not \\(method, count\\)"),
    ({7: ("topk", 10)}, r"block 7 is not a block index in \[0, 4\)"),
    ({1: ("topk", 65)}, r"keep=65 is outside \[0, 64\]"),
    ({1: ("topk", -1)}, r"keep=-1 is outside"),
    ({1: ("topk", 30), 2: ("topk", 31)}, r"block 2: keep=31 is outside \[0, 30\]"),
    ({1: ("fuse", 30), 2: ("fuse", 31)}, None),                                 # the fused token counts
    ({1: ("fuse", 30), 2: ("fuse", 32)}, r"block 2: keep=32 is outside \[0, 31\]"),
    ({0: ("merge", 33)}, r"r=33 is outside \[0, 32\]"),
    ({0: ("merge", 8), 1: ("topk", 10)}, "either merges or prunes"),
    ({1: ("topk", 40), 2: ("feather", 20)}, "must be the first reduction"),
    ({1: ("feather", 3)}, r"keep=3 is outside \[4, 64\].*grid alone has 4"),
])
def test_bad_schedules(schedule, match):
    vit = _vit()
    if match is None:
        T.PrunedViT(vit, schedule)
        return
    with pytest.raises(ValueError, match=match):
        T.PrunedViT(vit, schedule)


def test_pruned_vit_rejects_other_attention():
    vit = ml.models.ViT(dim=32, depth=2, heads=4, placement="post")
    with pytest.raises(ValueError, match="pre-norm"):
        T.PrunedViT(vit, {})


def test_pruning_saves_flops():
    vit = _vit(patch_size=2, dim=32, depth=4)
    x = torch.zeros(1, 3, 32, 32)
    full = ml.bench.count_flops(vit, x)
    pruned = ml.bench.count_flops(T.PrunedViT(vit, T.keep_schedule("topk", 256, [1, 2], 0.5)), x)
    merged = ml.bench.count_flops(T.PrunedViT(vit, {b: ("merge", 48) for b in range(4)}), x)
    assert pruned < 0.6 * full and merged < 0.8 * full


def test_pruned_vit_on_the_meta_device():
    """Every tensor PrunedViT creates follows its inputs' device (meta: shapes only, no data)."""
    vit = ml.models.ViT(patch_size=4, dim=32, depth=4, heads=4).to("meta")
    images = torch.empty(2, 3, 32, 32, device="meta")
    for schedule in ({1: ("topk", 20)}, {1: ("fuse", 20)}, {1: ("feather", 20)},
                     {b: ("merge", 8) for b in range(4)}):
        model = T.PrunedViT(vit, schedule)
        model.trace = True
        out = model(images)
        assert out.device.type == "meta" and out.shape == (2, 10)
        out.sum().backward()
