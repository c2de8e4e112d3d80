import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import al_strategies as al


# ----------------------------------------------------------------------------- helpers

def tiny_ctx(seed=0, n_pool=60, n_lb=8, C=4):
    torch.manual_seed(123)
    g = torch.Generator().manual_seed(123)
    backbone = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    head = nn.Linear(8, C)
    model = nn.Sequential(backbone, head)
    x_pool, x_lb = torch.randn(n_pool, 6, generator=g), torch.randn(n_lb, 6, generator=g)
    with torch.no_grad():
        feats_pool, feats_lb = backbone(x_pool), backbone(x_lb)
    return dict(feats_lb=feats_lb, labels_lb=torch.arange(n_lb) % C, feats_pool=feats_pool,
                head=head, model=model, pool_loader=[(x_pool[i:i + 16],) for i in range(0, n_pool, 16)],
                num_classes=C, seed=seed)


def check_valid(idx, budget, n):
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64
    assert len(idx) == budget and len(set(idx.tolist())) == budget
    assert idx.min() >= 0 and idx.max() < n


def brute_kcenter(X, centres, budget):
    """Sener & Savarese Alg. 1 with a full distance matrix (float64)."""
    X = np.asarray(X, np.float64)
    allp = np.concatenate([np.asarray(centres, np.float64).reshape(-1, X.shape[1]), X])
    D = np.sqrt(((allp[:, None] - allp[None]) ** 2).sum(-1))   # full (M+N) x (M+N)
    M = len(allp) - len(X)
    active = list(range(M))
    out = []
    for _ in range(budget):
        mind = D[M:, active].min(1) if active else np.full(len(X), np.inf)
        mind[out] = -1
        u = int(np.argmax(mind))
        out.append(u)
        active.append(M + u)
    return out


# ----------------------------------------------------------------------------- dispatcher

@pytest.mark.parametrize("name", al.NAMES)
def test_select_valid_and_deterministic(name):
    ctx = tiny_ctx(seed=3)
    a = al.select(name, 7, ctx)
    check_valid(a, 7, 60)
    b = al.select(name, 7, tiny_ctx(seed=3))
    assert np.array_equal(a, b)


def test_names_and_unknown():
    assert al.NAMES == ("random", "coreset", "alphamix", "activeft", "noise")
    with pytest.raises(ValueError, match="coreset"):
        al.select("badge", 3, tiny_ctx())


def test_random_seed_and_budget():
    check_valid(al.random_select(100, 100, 0), 100, 100)
    assert not np.array_equal(al.random_select(1000, 10, 0), al.random_select(1000, 10, 1))
    with pytest.raises(ValueError):
        al.random_select(5, 6, 0)


# ----------------------------------------------------------------------------- CoreSet

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_coreset_matches_brute_force(dtype):
    g = torch.Generator().manual_seed(0)
    pool, lb = torch.randn(80, 5, generator=g), torch.randn(4, 5, generator=g)
    got = al.coreset(lb.to(dtype), pool.to(dtype), 20)
    assert got.tolist() == brute_kcenter(pool, lb, 20)
    # first pick: the pool point farthest from its nearest labeled point
    assert got[0] == torch.cdist(pool, lb).min(1).values.argmax().item()


def test_kcenter_origin_start_and_duplicates():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    got = al.kcenter_greedy(X, 10, torch.zeros(1, 3, dtype=torch.float64))
    assert got.tolist() == brute_kcenter(X, np.zeros((1, 3)), 10)
    assert got[0] == X.norm(dim=1).argmax().item()
    # duplicated points: all distances hit 0 but picks stay unique
    Xd = torch.cat([X[:5], X[:5], X[:5]])
    check_valid(al.coreset(X[:2], Xd, 15), 15, 15)


# ----------------------------------------------------------------------------- AlphaMix

def two_class_2d():
    # head: logits (x, -x) -> class 0 iff x > 0; anchors (2, 0) for class 0, (-2, 0) for class 1.
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    feats_lb = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    labels_lb = torch.tensor([0, 1])
    pool = torch.tensor([[0.1, 0.0], [-0.2, 0.1], [1.0, 0.0], [-3.0, 0.0], [10.0, 0.0], [-10.0, 0.0]])
    return feats_lb, labels_lb, pool, head


@pytest.mark.parametrize("wrap", [False, True])   # True: generic (non-Linear) head code path
def test_alphamix_hand_built_candidates(wrap):
    # Hand computation: the CE gradient points along -sign(x) e_1, so the closed-form mix moves z by
    # eps * ||a - z|| towards the boundary, eps = cap / sqrt(2); z flips iff eps * max_a ||a - z|| > |x|.
    #   cap 0.2 (eps .141): (0.1,0): .141*2.1=.30 > .1 yes; (-.2,.1): .141*2.20=.31 > .2 yes;
    #                       (1,0): .141*3=.42 < 1 no; (-3,0): .141*5=.71 < 3 no; (+-10,0): never.
    #   cap 0.6 (eps .424): (1,0): 1.27 > 1 yes.     cap 1.0 (eps .707): (-3,0): 3.54 > 3 yes.
    #   (+-10, 0) would need eps > 10/12, i.e. cap > 1.18: never.
    feats_lb, labels_lb, pool, head = two_class_2d()
    h = nn.Sequential(head) if wrap else head
    c1 = al.alphamix_candidates(feats_lb, labels_lb, pool, h, budget=1)   # 2 > 1: stop at cap 0.2
    assert torch.nonzero(c1).flatten().tolist() == [0, 1]
    c2 = al.alphamix_candidates(feats_lb, labels_lb, pool, h, budget=2)   # 2 is not > 2: grow to 0.6
    assert torch.nonzero(c2).flatten().tolist() == [0, 1, 2]
    c5 = al.alphamix_candidates(feats_lb, labels_lb, pool, h, budget=5)   # grows to cap 1.0
    assert torch.nonzero(c5).flatten().tolist() == [0, 1, 2, 3]
    sel = al.alphamix(feats_lb, labels_lb, pool, h, budget=5, seed=0)
    check_valid(sel, 5, 6)
    assert set(sel[:4].tolist()) == {0, 1, 2, 3} and sel[4] in (4, 5)
    # budget 1 out of candidates {0, 1}: KMeans with one centre keeps a candidate
    assert al.alphamix(feats_lb, labels_lb, pool, h, budget=1)[0] in (0, 1)


def test_class_anchors_by_hand():
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [4.0, 0.0]])
    y = torch.tensor([0, 0, 2, 2])
    # class 0: mean of rows 0, 1; class 1: no label -> mean of all rows; class 2: rows 2, 3
    expect = torch.tensor([[2.0, 1.0], [2.0, 1.5], [2.0, 2.0]])
    assert torch.allclose(al.class_anchors(f, y, 3), expect)


def test_alphamix_kmeans_keeps_member_nearest_each_centre():
    # six candidates (all |x| small) in two directions on the unit circle, budget 2: KMeans splits
    # them into the up and down groups; the member nearest each centre has the middle angle:
    # up angles .02/.05/.09 (mean .053 -> (.05, 1)), down angles .01/.04/.08 (mean .043 -> (-.04, -1))
    feats_lb, labels_lb, _, head = two_class_2d()
    pool = torch.tensor([[0.02, 1.0], [-0.01, -1.0], [0.09, 1.0], [-0.04, -1.0], [0.05, 1.0],
                         [-0.08, -1.0], [5.0, 0.0]])
    assert torch.nonzero(al.alphamix_candidates(feats_lb, labels_lb, pool, head, 2)).flatten().tolist() \
        == [0, 1, 2, 3, 4, 5]
    assert sorted(al.alphamix(feats_lb, labels_lb, pool, head, budget=2).tolist()) == [3, 4]


def test_alphamix_shortfall_unique_and_empty_candidates():
    feats_lb, labels_lb, pool, head = two_class_2d()
    check_valid(al.alphamix(feats_lb, labels_lb, pool, head, budget=6), 6, 6)
    far = torch.tensor([[10.0 + i, 0.0] for i in range(20)])       # no candidate at all
    assert not al.alphamix_candidates(feats_lb, labels_lb, far, head, 19).any()
    check_valid(al.alphamix(feats_lb, labels_lb, far, head, budget=19), 19, 20)


def test_alphamix_linear_path_matches_authors_formula():
    # brute force of the authors' closed form, written out for every anchor and cap
    g = torch.Generator().manual_seed(0)
    N, d, C = 300, 16, 5
    mu = 2 * torch.randn(C, d, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    z = mu[y] + torch.randn(N, d, generator=g)
    head = nn.Linear(d, C)
    with torch.no_grad():
        head.weight.copy_(torch.randn(C, d, generator=g) * 0.3)
        head.bias.zero_()
    lb = torch.nonzero(y != 0).flatten()[:10]                      # class 0 has no label
    A = torch.stack([z[lb][y[lb] == c].mean(0) if (y[lb] == c).any() else z[lb].mean(0) for c in range(C)])
    zz = z.clone().requires_grad_(True)
    logits = head(zz)
    pred = logits.argmax(1)
    grad = torch.autograd.grad(F.cross_entropy(logits, pred), zz)[0]
    sizes = []
    for budget in (5, 200, 299):   # stops at different caps: 163, 264, 300 candidates
        cand, cap = torch.zeros(N, dtype=torch.bool), 0.0
        while cap < 1.0 - 1e-9:
            cap += 0.2
            eps = cap / math.sqrt(d)
            for a in A:
                alpha = (eps * (a - z).norm(dim=1) / grad.norm(dim=1))[:, None] * grad / (a - z + 1e-8)
                with torch.no_grad():
                    cand |= head((1 - alpha) * z + alpha * a).argmax(1) != pred
            if cand.sum() > budget:
                break
        got = al.alphamix_candidates(z[lb], y[lb], z, head, budget)
        assert torch.equal(got, cand)
        sizes.append(int(cand.sum()))
    assert len(set(sizes)) == 3


# ----------------------------------------------------------------------------- ActiveFT

def test_activeft_loss_decreases_and_matches_formula():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 16, generator=g).repeat_interleave(50, 0) + 0.3 * torch.randn(400, 16, generator=g)
    idx, losses = al.activeft(f, 8, iters=200, lr=1e-2, seed=5, return_loss=True)
    check_valid(idx, 8, 400)
    assert len(losses) == 200 and losses[-1] < losses[0] - 0.1
    # loss at the initial centres, written out with explicit exp and sums (S_k includes j = k)
    tau = 0.07
    fn = F.normalize(f, dim=1).double()
    c = fn[torch.randperm(400, generator=torch.Generator().manual_seed(5))[:8]]
    sim = fn @ c.T
    k = sim.argmax(1)
    expect = 0.0
    for i in range(400):
        s = math.exp(sim[i, k[i]] / tau)
        S = sum(math.exp(c[j] @ c[k[i]] / tau) for j in range(8))
        expect += -math.log(s / (s + S)) / 400
    assert losses[0] == pytest.approx(expect, rel=1e-4)


def test_match_centres_unique_when_centres_coincide():
    f = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    c = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # by hand: cosine order to (1,0) is 0, 1, 3, 2; the 4th centre's best (2) is still free
    assert al.match_centres(c, f).tolist() == [0, 1, 3, 2]
    same = torch.ones(30, 4)                                     # every feature (and centre) equal
    check_valid(al.activeft(same, 10, iters=5), 10, 30)


# ----------------------------------------------------------------------------- Noise stability

def noisy_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))


def test_noise_first_pick_is_largest_deviation():
    model, x = noisy_net(), torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    loader = [(x[i:i + 8], torch.zeros(8)) for i in range(0, 40, 8)]
    S, scale, seed = 4, 0.05, 7
    # independent computation: fresh noisy copies drawn with the documented generator contract
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        devs = []
        for _ in range(S):
            m = copy.deepcopy(model)
            for mod in m.modules():
                if isinstance(getattr(mod, "weight", None), torch.Tensor):
                    xi = torch.randn(mod.weight.shape, generator=gen)
                    mod.weight += xi * scale * mod.weight.norm() / xi.norm()
            devs.append((F.softmax(m(x), 1) - p) / p.norm(dim=1, keepdim=True))
        D = torch.cat(devs, 1)                                   # [40, S*3]
    got = al.noise_deviations(model, loader, S, scale, seed)
    assert torch.allclose(got, D, atol=1e-6)
    idx = al.noise_stability(model, loader, 10, num_sampling=S, noise_scale=scale, seed=seed)
    check_valid(idx, 10, 40)
    assert idx[0] == D.norm(dim=1).argmax().item()
    assert idx.tolist() == brute_kcenter(D, np.zeros((1, D.shape[1])), 10)


def test_noise_restores_weights_and_mode():
    model = noisy_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = [(torch.randn(10, 5),) for _ in range(3)]
    check_valid(al.noise_stability(model, loader, 5, num_sampling=3, noise_scale=0.1), 5, 30)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    class Boom(nn.Module):   # fails in the 3rd forward pass, i.e. while weights are perturbed
        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
            return self.net(x)

    with pytest.raises(RuntimeError, match="boom"):
        al.noise_stability(Boom(model), loader[:1], 5, num_sampling=3, noise_scale=0.1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_noise_zero_scale_still_valid():
    model, loader = noisy_net(), [(torch.randn(10, 5),) for _ in range(2)]
    idx = al.noise_stability(model, loader, 6, noise_scale=0.0)
    check_valid(idx, 6, 20)
    # no noise, no signal: a seeded uniform draw, as in the authors' code
    assert np.array_equal(idx, np.random.default_rng(0).choice(20, 6, replace=False))


class ListBatches(list):
    """A pool loader of (x,) batches that can be cut to a subset of positions, as data.Batches."""

    def subset(self, positions):
        x = torch.cat([b[0] for b in self])[torch.as_tensor(positions)]
        return ListBatches([(x[i:i + 8],) for i in range(0, len(x), 8)])


def test_noise_on_a_subset_selects_among_a_seeded_random_subset_of_the_pool():
    model, x = noisy_net(), torch.randn(60, 5, generator=torch.Generator().manual_seed(2))
    loader = ListBatches([(x[i:i + 8],) for i in range(0, 60, 8)])
    ctx = dict(feats_pool=torch.zeros(60, 1), model=model, pool_loader=loader, seed=3, noise_subset=25)
    got = al.select("noise", 6, ctx)
    check_valid(got, 6, 60)
    idx = np.sort(np.random.default_rng(3).choice(60, 25, replace=False))  # the subset, drawn independently
    assert set(got.tolist()) <= set(idx.tolist())
    sub = al.noise_stability(model, ListBatches([(x[idx][i:i + 8],) for i in range(0, 25, 8)]), 6, seed=3)
    assert got.tolist() == idx[np.asarray(sub)].tolist()  # positions within the subset mapped back to the pool
    # a pool no larger than the subset, or noise_subset 0: the whole pool, as before
    whole = al.noise_stability(model, loader, 6, seed=3)
    assert al.select("noise", 6, {**ctx, "noise_subset": 60}).tolist() == np.asarray(whole).tolist()
    assert al.select("noise", 6, {**ctx, "noise_subset": 0}).tolist() == np.asarray(whole).tolist()


def test_data_batches_subset_keeps_the_order_of_the_positions():
    import data as Dm
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    b = Dm.Batches(x, lambda t: t.float(), "cpu", size=3).subset([7, 2, 5])
    assert torch.cat([t for (t,) in b])[:, 0, 0, 0].tolist() == [7.0, 2.0, 5.0]
