"""Tests of the SSL losses and FreeMatch's estimates against hand computations in plain Python."""
import math

import pytest
import torch

import ssl_algos


def softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def ce(row, k):
    return -math.log(softmax(row)[k])


def test_fixmatch_mask_and_loss_by_hand():
    logits_w = torch.tensor([[5.0, 0.0, 0.0],    # p_max = e^5/(e^5+2) = 0.9867 >= 0.95 -> class 0
                             [1.0, 1.2, 0.0],    # p_max ~ 0.45 -> masked out
                             [0.0, 0.0, 4.0]])   # p_max = e^4/(e^4+2) = 0.9647 -> class 2
    logits_s = torch.tensor([[0.5, 0.1, 0.2], [3.0, -1.0, 0.0], [0.0, 1.0, 0.3]])
    loss, mask, _ = ssl_algos.FixMatch(3, p_cutoff=0.95).unlabeled_loss(logits_w, logits_s)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    # averaged over ALL 3 unlabeled samples, not over the 2 masked ones
    expected = (ce([0.5, 0.1, 0.2], 0) + ce([0.0, 1.0, 0.3], 2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_fixmatch_loss_gradient_only_through_strong_view():
    logits_w = torch.tensor([[9.0, 0.0]], requires_grad=True)
    logits_s = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss, _, _ = ssl_algos.FixMatch(2).unlabeled_loss(logits_w, logits_s)
    loss.backward()
    assert logits_w.grad is None and logits_s.grad.abs().sum() > 0


def test_freematch_estimates_after_two_hand_steps():
    C, m = 3, 0.9
    fm = ssl_algos.FreeMatch(C, ema_p=m, ent_loss_ratio=0.0)
    steps = [[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
             [[0.0, 0.0, 3.0], [0.5, 0.0, 0.0], [1.0, 0.0, 2.0]]]
    time_p, p_model, hist = 1 / C, [1 / C] * C, [1 / C] * C
    for logits in steps:
        P = [softmax(r) for r in logits]
        B = len(P)
        time_p = m * time_p + (1 - m) * sum(max(p) for p in P) / B
        p_model = [m * p_model[c] + (1 - m) * sum(p[c] for p in P) / B for c in range(C)]
        counts = [sum(1 for p in P if p.index(max(p)) == c) for c in range(C)]
        hist = [m * hist[c] + (1 - m) * counts[c] / B for c in range(C)]
        lw = torch.tensor(logits)
        _, mask, _ = fm.unlabeled_loss(lw, lw.clone())
        # mask with the thresholds of *this* step (updated before masking)
        tau = [time_p * p_model[c] / max(p_model) for c in range(C)]
        assert mask.tolist() == [1.0 if max(p) >= tau[p.index(max(p))] else 0.0 for p in P]
    assert float(fm.time_p) == pytest.approx(time_p, rel=1e-6)
    assert fm.p_model.tolist() == pytest.approx(p_model, rel=1e-6)
    assert fm.label_hist.tolist() == pytest.approx(hist, rel=1e-6)
    # state_dict round trip
    fm2 = ssl_algos.FreeMatch(C, ema_p=m)
    fm2.load_state_dict(fm.state_dict())
    assert torch.equal(fm2.p_model, fm.p_model) and float(fm2.time_p) == float(fm.time_p)


def test_freematch_initial_threshold_is_one_over_c():
    fm = ssl_algos.FreeMatch(4)
    assert float(fm.time_p) == pytest.approx(0.25) and fm.p_model.tolist() == [0.25] * 4


def test_fairness_loss_hand_example():
    p_model = torch.tensor([0.5, 0.3, 0.2])
    label_hist = torch.tensor([0.6, 0.4, 0.0])  # a zero count: its scaler 1/0 becomes 0
    logits_s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 9.0]])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last sample is masked out
    # by hand
    P = [softmax(r) for r in logits_s.tolist()[:3]]
    counts = [sum(1 for p in P if p.index(max(p)) == c) for c in range(3)]  # [2, 1, 0]
    hist_s = [k / 3 for k in counts]
    pbar = [p_model[c].item() * (1 / label_hist[c].item() if label_hist[c] > 0 else 0.0) for c in range(3)]
    pbar = [v / sum(pbar) for v in pbar]
    mean_p = [sum(p[c] for p in P) / 3 for c in range(3)]
    qbar = [mean_p[c] * (1 / hist_s[c] if hist_s[c] > 0 else 0.0) for c in range(3)]
    qbar = [v / sum(qbar) for v in qbar]
    expected = sum(pbar[c] * math.log(qbar[c] + 1e-12) for c in range(3))
    got = ssl_algos.fairness_loss(logits_s, mask, p_model, label_hist).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got <= 0
    assert ssl_algos.fairness_loss(logits_s, torch.zeros(4), p_model, label_hist).item() == 0.0


def test_freematch_loss_includes_weighted_fairness_term():
    torch.manual_seed(0)
    lw, ls = torch.randn(8, 5) * 3, torch.randn(8, 5)
    a = ssl_algos.FreeMatch(5, ent_loss_ratio=0.0)
    b = ssl_algos.FreeMatch(5, ent_loss_ratio=0.5)
    la, mask, pa = a.unlabeled_loss(lw, ls)
    lb, _, pb = b.unlabeled_loss(lw, ls)
    fair = ssl_algos.fairness_loss(ls, mask, b.p_model, b.label_hist)
    assert lb.item() == pytest.approx(la.item() + 0.5 * fair.item(), rel=1e-6)
    # the logged parts: L_u is the masked CE alone, fairness the unweighted term
    assert pb["L_u"].item() == pytest.approx(la.item(), rel=1e-6) and "fairness" not in pa
    assert pb["fairness"].item() == pytest.approx(fair.item(), rel=1e-6)


def test_build_ssl_rejects_unknown():
    with pytest.raises(ValueError, match="freematch"):
        ssl_algos.build_ssl("mixmatch", 10)
