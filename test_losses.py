"""Tests of every loss of the method and of FreeMatch's self-adaptive thresholds, in the paper's order:

  Eq. 1       labeled cross-entropy               ssl_algos.labeled_loss
  Eq. 2       masked consistency loss             ssl_algos.masked_consistency_loss, FixMatch's fixed threshold,
              FreeMatch's EMA thresholds and its fairness loss (FreeMatch's own Eq. 10)
  Eqs. 11-12  FA similarity loss                  fa.similarity_loss
  Eqs. 17-18  FA contrastive loss                 fa.contrastive_loss
  Eq. 19      the strong/weak gap bound by L_c

Every value test compares against an independent computation (hand-worked numbers, plain-Python loops in double
precision, or closed forms), never against the code under test. The state of FeatureQueues and of the SSL objects
(ring order, state_dict, build_ssl) is tested in test_fa.py and test_ssl_algos.py.
"""
import math

import pytest
import torch

import fa
import ssl_algos


def softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def ce(row, k):
    return -math.log(softmax(row)[k])


def argmax(p):
    return p.index(max(p))


# Eq. 1: L_l = 1/N_l sum_i CE(p(y | alpha(x_i)), y_i)

def test_labeled_loss_hand_numbers():
    # row 0: p = (3/5, 1/5, 1/5), CE = ln(5/3); row 1: uniform, CE = ln 3; mean = (ln 5 - ln 3 + ln 3) / 2 = ln(5) / 2
    logits = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert ssl_algos.labeled_loss(logits, torch.tensor([0, 2])).item() == pytest.approx(math.log(5.0) / 2, rel=1e-6)


def test_labeled_loss_matches_loop_of_minus_log_softmax():
    g = torch.Generator().manual_seed(10)
    B, C = 9, 6
    logits = torch.randn(B, C, generator=g) * 3
    y = torch.randint(0, C, (B,), generator=g)
    expected = sum(ce(logits[b].tolist(), int(y[b])) for b in range(B)) / B  # a mean, not a sum
    assert ssl_algos.labeled_loss(logits, y).item() == pytest.approx(expected, rel=1e-6)


# Eq. 2: L_u = 1/N_u sum_j 1[max q_j >= tau] CE(Q_j, argmax q_j)

def test_masked_consistency_loss_matches_loop_over_all_samples():
    g = torch.Generator().manual_seed(11)
    B, C = 7, 4
    logits_s = (torch.randn(B, C, generator=g) * 2).requires_grad_()
    pseudo = torch.tensor([0, 3, 1, 2, 2, 0, 1])
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    rows = logits_s.tolist()
    kept = sum(ce(rows[j], int(pseudo[j])) for j in range(B) if mask[j] > 0)
    loss = ssl_algos.masked_consistency_loss(logits_s, pseudo, mask)
    assert loss.item() == pytest.approx(kept / B, rel=1e-6)  # averaged over ALL 7 samples
    assert loss.item() != pytest.approx(kept / 4, rel=1e-3)  # ... not over the 4 kept ones
    # a masked-out sample neither counts nor receives a gradient, whatever its logits
    loss.backward()
    assert logits_s.grad[mask == 0].abs().sum() == 0 and logits_s.grad[mask == 1].abs().sum() > 0
    wild = logits_s.detach().clone()
    wild[1] = torch.tensor([40.0, -40.0, 0.0, -40.0])  # CE w.r.t. its pseudo-label 3 is ~80
    assert ssl_algos.masked_consistency_loss(wild, pseudo, mask).item() == pytest.approx(kept / B, rel=1e-6)
    assert ssl_algos.masked_consistency_loss(wild, pseudo, torch.zeros(B)).item() == 0.0


def test_fixmatch_mask_and_loss_by_hand():
    logits_w = torch.tensor([[5.0, 0.0, 0.0],    # p_max = e^5/(e^5+2) = 0.9867 >= 0.95 -> class 0
                             [1.0, 1.2, 0.0],    # p_max ~ 0.45 -> masked out
                             [0.0, 0.0, 4.0]])   # p_max = e^4/(e^4+2) = 0.9647 -> class 2
    logits_s = torch.tensor([[0.5, 0.1, 0.2], [3.0, -1.0, 0.0], [0.0, 1.0, 0.3]])
    loss, mask, parts = ssl_algos.FixMatch(3, p_cutoff=0.95).unlabeled_loss(logits_w, logits_s)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    # averaged over ALL 3 unlabeled samples, not over the 2 masked ones
    expected = (ce([0.5, 0.1, 0.2], 0) + ce([0.0, 1.0, 0.3], 2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert set(parts) == {"L_u"} and parts["L_u"].item() == pytest.approx(expected, rel=1e-6)


def test_fixmatch_threshold_is_inclusive():
    # logits (0, 0): max q = 1/2 exactly; 1[max q >= tau] keeps it at tau = 1/2, drops it just above
    lw, ls = torch.zeros(1, 2), torch.zeros(1, 2)  # CE of (0, 0) is ln 2 for either pseudo-label
    loss, mask, _ = ssl_algos.FixMatch(2, p_cutoff=0.5).unlabeled_loss(lw, ls)
    assert mask.tolist() == [1.0] and loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    loss, mask, _ = ssl_algos.FixMatch(2, p_cutoff=0.5001).unlabeled_loss(lw, ls)
    assert mask.tolist() == [0.0] and loss.item() == 0.0


def test_fixmatch_loss_gradient_only_through_strong_view():
    logits_w = torch.tensor([[9.0, 0.0]], requires_grad=True)
    logits_s = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss, _, _ = ssl_algos.FixMatch(2).unlabeled_loss(logits_w, logits_s)
    loss.backward()
    assert logits_w.grad is None and logits_s.grad.abs().sum() > 0


# Eq. 2 with FreeMatch's self-adaptive thresholds: tau_t(c) = time_p * p_model[c] / max(p_model), from EMAs

def hand_fairness(logits_s, mask, p_model, label_hist):
    """FreeMatch's fairness loss in plain Python: SumNorm(p_model / label_hist) . log SumNorm(mean Q / hist(Q)),
    over the masked samples only, 1/0 read as 0."""
    P = [softmax(r) for r, mk in zip(logits_s, mask) if mk > 0]
    if not P:
        return 0.0
    C = len(P[0])
    hist_s = [sum(1 for p in P if argmax(p) == c) / len(P) for c in range(C)]
    pbar = [p_model[c] * (1 / label_hist[c] if label_hist[c] > 0 else 0.0) for c in range(C)]
    pbar = [v / sum(pbar) for v in pbar]
    mean_p = [sum(p[c] for p in P) / len(P) for c in range(C)]
    qbar = [mean_p[c] * (1 / hist_s[c] if hist_s[c] > 0 else 0.0) for c in range(C)]
    qbar = [v / sum(qbar) for v in qbar]
    return sum(pbar[c] * math.log(qbar[c] + 1e-12) for c in range(C))


def hand_freematch_step(state, logits_w, logits_s, m):
    """One FreeMatch step in plain Python: the EMAs first, then the mask with the updated class thresholds,
    the masked CE over all samples and the fairness term. state = (time_p, p_model, label_hist)."""
    time_p, p_model, hist = state
    P = [softmax(r) for r in logits_w]
    B, C = len(P), len(P[0])
    time_p = m * time_p + (1 - m) * sum(max(p) for p in P) / B
    p_model = [m * p_model[c] + (1 - m) * sum(p[c] for p in P) / B for c in range(C)]
    hist = [m * hist[c] + (1 - m) * sum(1 for p in P if argmax(p) == c) / B for c in range(C)]
    tau = [time_p * p_model[c] / max(p_model) for c in range(C)]
    mask = [1.0 if max(p) >= tau[argmax(p)] else 0.0 for p in P]
    L_u = sum(mk * ce(s, argmax(p)) for mk, s, p in zip(mask, logits_s, P)) / B
    return (time_p, p_model, hist), mask, L_u, hand_fairness(logits_s, mask, p_model, hist)


def test_freematch_initial_threshold_is_one_over_c():
    fm = ssl_algos.FreeMatch(4)
    assert float(fm.time_p) == pytest.approx(0.25) and fm.p_model.tolist() == [0.25] * 4
    assert fm.label_hist.tolist() == [0.25] * 4


def test_freematch_estimates_after_two_hand_steps():
    C, m = 3, 0.9
    fm = ssl_algos.FreeMatch(C, ema_p=m, ent_loss_ratio=0.0)
    steps = [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
             [[0.0, 0.0, 3.0], [0.5, 0.0, 0.0], [1.0, 0.0, 2.0]]]
    state = (1 / C, [1 / C] * C, [1 / C] * C)
    for logits in steps:
        # the same logits on both views: the mask uses the thresholds of *this* step (updated before masking)
        state, mask, L_u, _ = hand_freematch_step(state, logits, logits, m)
        lw = torch.tensor(logits)
        loss, got_mask, parts = fm.unlabeled_loss(lw, lw.clone())
        assert got_mask.tolist() == mask
        assert loss.item() == pytest.approx(L_u, rel=1e-5) and set(parts) == {"L_u"}
    time_p, p_model, hist = state
    assert float(fm.time_p) == pytest.approx(time_p, rel=1e-6)
    assert fm.p_model.tolist() == pytest.approx(p_model, rel=1e-6)
    assert fm.label_hist.tolist() == pytest.approx(hist, rel=1e-6)


def test_freematch_class_thresholds_decide_the_mask():
    # ema_p = 1 freezes the EMAs at the values set here, so the thresholds are the hand ones:
    # tau = 0.8 * (0.5, 0.25, 0.25) / 0.5 = (0.8, 0.4, 0.4)
    fm = ssl_algos.FreeMatch(3, ema_p=1.0, ent_loss_ratio=0.0)
    fm.time_p, fm.p_model = torch.tensor(0.8), torch.tensor([0.5, 0.25, 0.25])
    probs = [[0.7, 0.2, 0.1],     # class 0, 0.7 < 0.8        -> out
             [0.3, 0.5, 0.2],     # class 1, 0.5 >= 0.4       -> in (the global 0.8 alone would drop it)
             [0.31, 0.31, 0.38],  # class 2, 0.38 < 0.4       -> out
             [0.9, 0.05, 0.05]]   # class 0, 0.9 >= 0.8       -> in
    logits_w = torch.tensor(probs).log()
    logits_s = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 0.5], [0.2, 0.1, 0.0], [0.3, 0.3, 0.9]])
    loss, mask, _ = fm.unlabeled_loss(logits_w, logits_s)
    assert mask.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert loss.item() == pytest.approx((ce([1.0, 0.0, 0.5], 1) + ce([0.3, 0.3, 0.9], 0)) / 4, rel=1e-6)
    assert fm.log()["tau"] == pytest.approx(0.8) and fm.log()["tau_min"] == pytest.approx(0.4)


# FreeMatch's self-adaptive fairness loss (FreeMatch's Eq. 10), added to Eq. 2's L_u

def test_fairness_loss_hand_example():
    p_model = [0.5, 0.3, 0.2]
    label_hist = [0.6, 0.4, 0.0]  # a zero count: its scaler 1/0 becomes 0
    logits_s = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 9.0]]
    mask = [1.0, 1.0, 1.0, 0.0]  # the last sample is masked out; the strong argmax counts are then [2, 1, 0]
    got = ssl_algos.fairness_loss(torch.tensor(logits_s), torch.tensor(mask), torch.tensor(p_model),
                                  torch.tensor(label_hist)).item()
    assert got == pytest.approx(hand_fairness(logits_s, mask, p_model, label_hist), rel=1e-6)
    assert got <= 0
    assert ssl_algos.fairness_loss(torch.tensor(logits_s), torch.zeros(4), torch.tensor(p_model),
                                   torch.tensor(label_hist)).item() == 0.0


def test_fairness_loss_closed_form_balanced():
    # p_model = label_hist -> p_bar uniform; cyclic strong logits -> mean Q and hist(Q) uniform -> q_bar uniform:
    # loss = sum_c 1/3 * log(1/3) = -ln 3
    logits_s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    p = torch.tensor([0.2, 0.5, 0.3])
    assert ssl_algos.fairness_loss(logits_s, torch.ones(3), p, p).item() == pytest.approx(-math.log(3.0), rel=1e-6)


def test_freematch_loss_includes_weighted_fairness_term():
    g = torch.Generator().manual_seed(0)
    lw, ls = torch.randn(8, 5, generator=g) * 3, torch.randn(8, 5, generator=g)
    m = 0.999
    _, mask, L_u, fair = hand_freematch_step((1 / 5, [1 / 5] * 5, [1 / 5] * 5), lw.tolist(), ls.tolist(), m)
    assert fair < 0
    a = ssl_algos.FreeMatch(5, ema_p=m, ent_loss_ratio=0.0)
    b = ssl_algos.FreeMatch(5, ema_p=m, ent_loss_ratio=0.5)
    la, mask_a, pa = a.unlabeled_loss(lw, ls)
    lb, mask_b, pb = b.unlabeled_loss(lw, ls)
    assert mask_a.tolist() == mask == mask_b.tolist()
    assert la.item() == pytest.approx(L_u, rel=1e-5) and "fairness" not in pa
    assert lb.item() == pytest.approx(L_u + 0.5 * fair, rel=1e-5)
    # the logged parts: L_u is the masked CE alone, fairness the unweighted term
    assert pb["L_u"].item() == pytest.approx(L_u, rel=1e-5)
    assert pb["fairness"].item() == pytest.approx(fair, rel=1e-5)


# Eqs. 11-12: i*_j = argmax_{i,t} sim(z_u_s[j], Q_s[i, t]);  L_s = mean_j (1 - sim(z_u_w[j], Q_w[i*_j]))

def cos(a, b):
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def brute_similarity_loss(z_u_w, z_u_s, q_w, q_s, filled):
    """Eqs. 11-12 by plain loops over every unlabeled sample j and every slot (i, t)."""
    N_l, T, _ = q_s.shape
    total = 0.0
    for j in range(z_u_s.shape[0]):
        best, i_star = -2.0, None
        for i in range(N_l):
            for t in range(T):
                if filled[i, t]:
                    s = cos(z_u_s[j], q_s[i, t])
                    if s > best:
                        best, i_star = s, i
        total += 1.0 - cos(z_u_w[j], q_w[i_star])
    return total / z_u_s.shape[0]


def test_similarity_loss_matches_brute_force_with_unfilled_slots():
    g = torch.Generator().manual_seed(0)
    B_u, N_l, T, d = 7, 5, 4, 6
    z_u_w, z_u_s = torch.randn(B_u, d, generator=g), torch.randn(B_u, d, generator=g)
    q_w, q_s = torch.randn(N_l, d, generator=g), torch.randn(N_l, T, d, generator=g)
    filled = torch.rand(N_l, T, generator=g) > 0.5
    filled[0, 0] = True
    # make the most similar slot of sample 0 an *unfilled* one: it must be skipped
    empty = (~filled).nonzero()[0]
    q_s[empty[0], empty[1]] = z_u_s[0] * 3.0
    got = fa.similarity_loss(z_u_w, z_u_s, q_w, q_s, filled).item()
    assert got == pytest.approx(brute_similarity_loss(z_u_w, z_u_s, q_w, q_s, filled), abs=1e-6)
    # with every slot filled the unfilled-slot trap becomes the nearest: the loss changes
    all_filled = fa.similarity_loss(z_u_w, z_u_s, q_w, q_s, None).item()
    assert all_filled == pytest.approx(brute_similarity_loss(z_u_w, z_u_s, q_w, q_s, torch.ones(N_l, T, dtype=torch.bool)), abs=1e-6)


def test_similarity_loss_gradient_flows_through_weak_view_only():
    g = torch.Generator().manual_seed(1)
    z_u_w = torch.randn(4, 3, generator=g, requires_grad=True)
    z_u_s = torch.randn(4, 3, generator=g, requires_grad=True)
    q_w = torch.randn(2, 3, generator=g, requires_grad=True)
    q_s = torch.randn(2, 2, 3, generator=g, requires_grad=True)
    fa.similarity_loss(z_u_w, z_u_s, q_w, q_s).backward()
    assert z_u_w.grad is not None and z_u_w.grad.abs().sum() > 0
    assert z_u_s.grad is None and q_w.grad is None and q_s.grad is None


def test_similarity_loss_is_zero_before_any_feature_is_queued():
    q = fa.FeatureQueues(3, 2, 4)
    z = torch.randn(5, 4, requires_grad=True)
    loss = fa.similarity_loss(z, torch.randn(5, 4), q.q_w, q.q_s, q.filled)
    assert loss.item() == 0.0 and loss.requires_grad


def test_similarity_loss_identical_weak_feature_gives_zero():
    # one labeled sample whose weak feature points the same way as every unlabeled weak feature: 1 - cos = 0
    q_w = torch.tensor([[2.0, 0.0]])
    q_s = torch.tensor([[[0.0, 1.0]]])
    z_u_w = torch.tensor([[5.0, 0.0], [0.1, 0.0]])
    assert fa.similarity_loss(z_u_w, torch.randn(2, 2), q_w, q_s).item() == pytest.approx(0.0, abs=1e-7)


# Eqs. 17-18: c_i = mean_b zs_hat[b, i] zw_hat[b, i] (batch-standardised features);  L_c = sum_i (1 - c_i)^2

def hand_contrastive(z_s, z_w, eps=1e-5):
    B, d = z_s.shape
    total = 0.0
    for i in range(d):
        a, b = [float(v) for v in z_s[:, i]], [float(v) for v in z_w[:, i]]
        ma, mb = sum(a) / B, sum(b) / B
        va, vb = sum((x - ma) ** 2 for x in a) / B, sum((x - mb) ** 2 for x in b) / B
        c = sum((x - ma) / math.sqrt(va + eps) * (y - mb) / math.sqrt(vb + eps) for x, y in zip(a, b)) / B
        total += (1 - c) ** 2
    return total


def test_contrastive_loss_matches_hand_loop():
    g = torch.Generator().manual_seed(2)
    z_s, z_w = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    assert fa.contrastive_loss(z_s, z_w).item() == pytest.approx(hand_contrastive(z_s, z_w), rel=1e-5)


def test_contrastive_loss_closed_forms():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 8, generator=g) * 3
    # identical views: c_i = var / (var + eps) ~ 1 -> L_c ~ 0;  negated views: c_i ~ -1 -> L_c ~ 4 d
    assert fa.contrastive_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-8)
    assert fa.contrastive_loss(z, -z).item() == pytest.approx(4 * 8, rel=1e-5)
    # invariant to a per-dimension affine change of either view (it standardises over the batch)
    assert fa.contrastive_loss(z, 2 * z + 5).item() == pytest.approx(0.0, abs=1e-8)


def test_contrastive_loss_gradient_reaches_both_views():
    z_s = torch.randn(6, 3, requires_grad=True)
    z_w = torch.randn(6, 3, requires_grad=True)
    fa.contrastive_loss(z_s, z_w).backward()
    assert z_s.grad.abs().sum() > 0 and z_w.grad.abs().sum() > 0


# Eq. 19: mean_b ||zs_hat[b] - zw_hat[b]||^2 <= 2 sqrt(d L_c)

@pytest.mark.parametrize("noise", [10.0, 1.0, 0.01])
def test_eq19_bound(noise):
    """Eq. 19 on random and on near-identical views, the gap computed here from the standardised features."""
    g = torch.Generator().manual_seed(4)
    B, d = 64, 12
    z_w = torch.randn(B, d, generator=g)
    z_s = z_w + noise * torch.randn(B, d, generator=g)
    eps = 1e-5
    zs = (z_s - z_s.mean(0)) / torch.sqrt(z_s.var(0, unbiased=False) + eps)
    zw = (z_w - z_w.mean(0)) / torch.sqrt(z_w.var(0, unbiased=False) + eps)
    gap = ((zs - zw) ** 2).sum(1).mean().item()  # L_{s-w} of Eq. 13 on standardised features
    L_c = fa.contrastive_loss(z_s, z_w).item()
    assert gap <= 2 * math.sqrt(d * L_c) + 1e-6
    assert gap > 0


# FA's readings: --ls-samples masked, --lc-norm unit

def test_similarity_loss_masked_is_the_mean_over_the_masked_samples():
    g = torch.Generator().manual_seed(5)
    B_u, N_l, T, d = 8, 4, 3, 5
    z_u_w, z_u_s = torch.randn(B_u, d, generator=g), torch.randn(B_u, d, generator=g)
    q_w, q_s = torch.randn(N_l, d, generator=g), torch.randn(N_l, T, d, generator=g)
    filled = torch.ones(N_l, T, dtype=torch.bool)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.float)
    keep = mask.bool()
    ref = brute_similarity_loss(z_u_w[keep], z_u_s[keep], q_w, q_s, filled)  # Eq. 12 over the masked samples
    assert fa.similarity_loss(z_u_w, z_u_s, q_w, q_s, filled, mask).item() == pytest.approx(ref, abs=1e-6)
    assert fa.similarity_loss(z_u_w, z_u_s, q_w, q_s, filled, keep).item() == pytest.approx(ref, abs=1e-6)
    # no sample passes: 0, with a graph
    z = z_u_w.clone().requires_grad_()
    none = fa.similarity_loss(z, z_u_s, q_w, q_s, filled, torch.zeros(B_u))
    assert none.item() == 0.0 and none.requires_grad
    # every sample passes: the unmasked loss
    all_ = fa.similarity_loss(z_u_w, z_u_s, q_w, q_s, filled, torch.ones(B_u)).item()
    assert all_ == pytest.approx(fa.similarity_loss(z_u_w, z_u_s, q_w, q_s, filled).item(), abs=1e-7)


def hand_contrastive_unit(z_s, z_w):
    """Eq. 18 on unit-norm features, a loop over dimensions: c_i = mean_b zs[b, i] zw[b, i] / (|zs[b]| |zw[b]|)."""
    B, d = z_s.shape
    ns = [math.sqrt(sum(float(v) ** 2 for v in z_s[b])) for b in range(B)]
    nw = [math.sqrt(sum(float(v) ** 2 for v in z_w[b])) for b in range(B)]
    total = 0.0
    for i in range(d):
        c = sum(float(z_s[b, i]) / ns[b] * float(z_w[b, i]) / nw[b] for b in range(B)) / B
        total += (1 - c) ** 2
    return total


def test_contrastive_loss_unit_matches_a_loop_and_its_closed_form():
    g = torch.Generator().manual_seed(6)
    B, d = 10, 7
    z_s, z_w = torch.randn(B, d, generator=g) * 4, torch.randn(B, d, generator=g)
    L = fa.contrastive_loss(z_s, z_w, norm="unit").item()
    assert L == pytest.approx(hand_contrastive_unit(z_s, z_w), rel=1e-5)
    # L_c = d - 2 mean_b cos(z_s[b], z_w[b]) + sum_i c_i^2, with 0 <= sum_i c_i^2 <= 1
    mean_cos = torch.nn.functional.cosine_similarity(z_s, z_w, dim=-1).mean().item()
    assert d - 2 * mean_cos - 1e-5 <= L <= d - 2 * mean_cos + 1 + 1e-5
    # scale-invariant per sample (not per dimension, as the batch reading is)
    assert fa.contrastive_loss(z_s * torch.rand(B, 1, generator=g) * 9 + 0, z_w, norm="unit").item() == \
        pytest.approx(L, rel=1e-5)
    # identical views: c_i = mean_b zs[b, i]^2, sum_i c_i = 1: L_c = d - 2 + sum_i c_i^2
    c = (torch.nn.functional.normalize(z_w, dim=-1) ** 2).mean(0)
    assert fa.contrastive_loss(z_w, z_w.clone(), norm="unit").item() == pytest.approx((d - 2 + (c ** 2).sum()).item(),
                                                                                         rel=1e-5)


def test_contrastive_loss_unit_gradient_is_about_twice_that_of_mean_one_minus_cos():
    """Why lambda_c = 0.5 puts the unit reading on L_s's scale: its gradient is -2 d(mean cos) + d(sum_i c_i^2)."""
    g = torch.Generator().manual_seed(7)
    B, d = 64, 96
    z_s, z_w = torch.randn(B, d, generator=g, requires_grad=True), torch.randn(B, d, generator=g)
    fa.contrastive_loss(z_s, z_w, norm="unit").backward()
    g_lc = z_s.grad.clone()
    z_s.grad = None
    (1 - torch.nn.functional.cosine_similarity(z_s, z_w, dim=-1)).mean().backward()
    ratio = (g_lc * z_s.grad).sum() / (z_s.grad * z_s.grad).sum()  # projection of L_c's gradient on mean(1 - cos)'s
    assert ratio.item() == pytest.approx(2.0, rel=0.1)
