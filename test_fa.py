"""Tests of the feature re-alignment module against independent computations (loops, closed forms)."""
import math

import pytest
import torch

import fa


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


def test_queue_ring_order_and_weak_overwrite():
    N_l, T, d = 3, 4, 2
    q = fa.FeatureQueues(N_l, T, d)
    # push 6 strong features into row 1 (and one into row 2); row 0 is never written
    for k in range(6):
        q.update(torch.tensor([1]), torch.full((1, d), 10.0 + k), torch.full((1, d), float(k)))
    q.update(torch.tensor([2]), torch.full((1, d), 99.0), torch.full((1, d), 7.0))
    assert q.q_w[1].tolist() == [15.0, 15.0]  # latest weak feature only
    assert q.q_w[2].tolist() == [99.0, 99.0]
    # ring of T = 4 after 6 pushes: slots hold 4, 5, 2, 3 (0 and 1 were dropped first)
    assert q.q_s[1, :, 0].tolist() == [4.0, 5.0, 2.0, 3.0]
    assert set(q.q_s[1, :, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}  # the last T pushed
    assert q.filled.tolist() == [[False] * 4, [True] * 4, [True, False, False, False]]
    # state_dict round trip
    q2 = fa.FeatureQueues(N_l, T, d)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.q_s, q.q_s) and torch.equal(q2.filled, q.filled) and torch.equal(q2.ptr, q.ptr)


def test_queue_unfilled_row_is_never_nearest():
    q = fa.FeatureQueues(2, 3, 2)
    q.update(torch.tensor([1]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.0]]))
    # row 0 is zeros and unfilled; the unlabeled strong feature points away from row 1's only strong feature,
    # yet row 1 must be chosen: its weak feature (0, 1) vs z_u_w (0, 1) gives loss 0
    loss = fa.similarity_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), q.q_w, q.q_s, q.filled)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)


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


@pytest.mark.parametrize("noise", [10.0, 1.0, 0.01])
def test_eq19_bound(noise):
    """Eq. 19: mean_b ||zs_hat - zw_hat||^2 <= 2 sqrt(d L_c), on random and on near-identical views."""
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


def test_contrastive_loss_gradient_reaches_both_views():
    z_s = torch.randn(6, 3, requires_grad=True)
    z_w = torch.randn(6, 3, requires_grad=True)
    fa.contrastive_loss(z_s, z_w).backward()
    assert z_s.grad.abs().sum() > 0 and z_w.grad.abs().sum() > 0
