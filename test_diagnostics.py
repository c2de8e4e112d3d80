"""The diagnostics of diagnostics.py against brute-force loops and hand-worked cases, and the probe in the pipeline."""
import math

import pytest
import torch

import diagnostics as G


def test_pseudo_label_accuracy_hand_worked():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])  # argmax 0, 1, 0, 1
    y = torch.tensor([0, 0, 0, 1])
    assert G.pseudo_label_accuracy(logits, y) == pytest.approx(3 / 4)
    mask = torch.tensor([False, True, True, False])
    assert G.pseudo_label_accuracy(logits, y, mask) == pytest.approx(1 / 2)
    assert G.pseudo_label_accuracy(logits, y, torch.zeros(4, dtype=torch.bool)) is None


def test_anchor_purity_against_a_loop():
    g = torch.Generator().manual_seed(0)
    N, N_l, T, d, C = 30, 7, 4, 5, 3
    z_u, z_lb = torch.randn(N, d, generator=g), torch.randn(N_l, T, d, generator=g)
    y_u, y_lb = torch.randint(0, C, (N,), generator=g), torch.randint(0, C, (N_l,), generator=g)
    hits = 0
    for j in range(N):
        best, best_i = -2.0, None
        for i in range(N_l):
            for t in range(T):
                c = float(torch.dot(z_u[j], z_lb[i, t]) / (z_u[j].norm() * z_lb[i, t].norm()))
                if c > best:
                    best, best_i = c, i
        hits += int(y_lb[best_i] == y_u[j])
    assert G.anchor_purity(z_u, y_u, z_lb, y_lb) == pytest.approx(hits / N)
    # one view per labeled sample: the same as T = 1
    assert G.anchor_purity(z_u, y_u, z_lb[:, 0], y_lb) == G.anchor_purity(z_u, y_u, z_lb[:, :1], y_lb)


def test_anchor_purity_uses_the_strong_views_hand_worked():
    """Two labeled samples; the probe's nearest *view* belongs to sample 1 although sample 0's first view is close."""
    z_lb = torch.tensor([[[1.0, 0.2], [0.0, -1.0]], [[1.0, 0.0], [-1.0, 0.0]]])  # [2, 2, 2]
    z_u = torch.tensor([[1.0, 0.01]])
    assert G.anchor_purity(z_u, torch.tensor([1]), z_lb, torch.tensor([0, 1])) == 1.0
    assert G.anchor_purity(z_u, torch.tensor([0]), z_lb, torch.tensor([0, 1])) == 0.0


def test_effective_number_against_the_entropy_and_hand_worked():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (60,), generator=g)
    counts = [int((labels == k).sum()) for k in range(5)] + [0, 0]  # values never taken add nothing
    h = -sum((c / 60) * math.log(c / 60) for c in counts if c)
    assert G.effective_number(counts) == pytest.approx(math.exp(h))
    assert G.effective_number([0, 0, 3, 0]) == pytest.approx(1.0)  # one value
    assert G.effective_number([2, 2, 2, 2]) == pytest.approx(4.0)  # evenly spread
    assert G.effective_number(torch.tensor([5, 5, 0, 0, 0])) == pytest.approx(2.0)  # two halves: two values


def test_anchors_eff_counts_the_labeled_samples_eq11_picks():
    """Three labeled samples with one view each; the probe's rows point at samples 0, 0, 0, 2: the anchors are
    0 (3 of 4) and 2 (1 of 4), so exp(H) = exp(-(3/4 log 3/4 + 1/4 log 1/4))."""
    z_lb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # [3, 2]
    z_u = torch.tensor([[1.0, 0.1], [2.0, -0.5], [1.0, 0.3], [-1.0, -0.2]])
    assert G.anchors(z_u, z_lb).tolist() == [0, 0, 0, 2]
    out = G.measure(z_u, torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]]), z_u, torch.eye(2), torch.tensor([0, 0, 1, 1]),
                    z_lb[:, None], z_lb, torch.tensor([0, 1, 1]))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert out["anchors_eff"] == pytest.approx(math.exp(h)) and out["pred_eff"] == pytest.approx(math.exp(h))


def test_strong_weak_distance_hand_worked():
    z_s = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    z_w = torch.tensor([[0.0, 4.0], [0.0, 1.0]])
    raw, unit = G.strong_weak_distance(z_s, z_w)
    assert raw == pytest.approx((9 + 16 + 1) / 2)
    assert unit == pytest.approx((2 + 0) / 2)  # orthogonal unit vectors: |a - b|^2 = 2; parallel: 0


def test_margin_gap_against_a_loop():
    g = torch.Generator().manual_seed(1)
    N, d, C = 40, 6, 4
    z_w, z_s, W = torch.randn(N, d, generator=g), torch.randn(N, d, generator=g), torch.randn(C, d, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    yhat = (z_w @ W.T).argmax(1)
    gaps = []
    for j in range(N):
        if yhat[j] != y[j]:
            dm_w = float(W[yhat[j]] @ z_w[j] - W[y[j]] @ z_w[j])  # Eq. 14 under the weak view
            dm_s = float(W[yhat[j]] @ z_s[j] - W[y[j]] @ z_s[j])
            gaps.append(abs(dm_w - dm_s))
    gap, n = G.margin_gap(z_w, z_s, W, y, yhat)
    assert n == len(gaps) > 0 and gap == pytest.approx(sum(gaps) / len(gaps), rel=1e-5)
    assert G.margin_gap(z_w, z_s, W, yhat, yhat) == (None, 0)  # every pseudo-label right


def test_knn_purity_against_a_loop():
    g = torch.Generator().manual_seed(2)
    z, y = torch.randn(25, 4, generator=g), torch.randint(0, 3, (25,), generator=g)
    hits = 0
    for j in range(25):
        sims = [(float(torch.dot(z[j], z[k]) / (z[j].norm() * z[k].norm())), k) for k in range(25) if k != j]
        hits += int(y[max(sims)[1]] == y[j])
    assert G.knn_purity(z, y) == pytest.approx(hits / 25)
    # two tight clusters of one class each: perfectly clustered
    zz = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    assert G.knn_purity(zz, torch.tensor([0, 0, 1, 1])) == 1.0
    assert G.knn_purity(zz, torch.tensor([0, 1, 0, 1])) == 0.0


def test_measure_has_every_key_and_skips_the_mask_for_supervised():
    g = torch.Generator().manual_seed(3)
    N, N_l, T, d, C = 12, 5, 3, 4, 3
    z_w, z_s, W = torch.randn(N, d, generator=g), torch.randn(N, d, generator=g), torch.randn(C, d, generator=g)
    y, y_lb = torch.randint(0, C, (N,), generator=g), torch.randint(0, C, (N_l,), generator=g)
    z_lb_s, z_lb_w = torch.randn(N_l, T, d, generator=g), torch.randn(N_l, d, generator=g)
    logits = z_w @ W.T
    out = G.measure(z_w, logits, z_s, W, y, z_lb_s, z_lb_w, y_lb, mask=logits.softmax(1).max(1).values > 0.5)
    assert set(out) == {"pl_acc", "pl_acc_masked", "mask", "anchor_purity", "anchor_purity_weak", "L_sw",
                        "L_sw_unit", "margin_gap", "n_wrong", "knn_purity", "anchors_eff", "pred_eff"}
    assert all(v is None or math.isfinite(v) for v in out.values())
    sup = G.measure(z_w, logits, z_s, W, y, z_lb_s, z_lb_w, y_lb, mask=None)
    assert "mask" not in sup and "pl_acc_masked" not in sup and sup["pl_acc"] == out["pl_acc"]


# ----------------------------------------------------------------------------------------------------------------
# the probe in the pipeline

import json  # noqa: E402
import os  # noqa: E402

import ssal  # noqa: E402
import test_ssal  # noqa: E402

TINY = ["--budget", "10", "--iters", "4", "--eval-every", "2", "--batch-size", "4", "--uratio", "1", "--probe", "60"]
MEASURES = {"pl_acc", "anchor_purity", "anchor_purity_weak", "L_sw", "L_sw_unit", "margin_gap", "n_wrong",
            "knn_purity", "anchors_eff", "pred_eff"}


def run(args, tmp_path):
    """ssal.py's command line in this process (test_ssal.run) -> (output, result, training log)."""
    p = test_ssal.run(args, tmp_path)
    (name,) = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    return p, json.load(open(tmp_path / name)), [json.loads(x) for x in open(tmp_path / (name[:-5] + ".log.jsonl"))]


@pytest.mark.parametrize("extra, keys", [(["--fa"], MEASURES | {"pl_acc_masked", "mask"}),
                                         (["--ssl", "supervised"], MEASURES)])
def test_every_training_record_has_its_diag_curve(tmp_path, extra, keys):
    _, res, log = run([*TINY, *extra], tmp_path)
    for rec in res["rounds"] + [res["final"]]:
        assert [d["iter"] for d in rec["diag_curve"]] == [p["iter"] for p in rec["curve"]] == [2, 4]
        assert all(set(d) == keys | {"iter"} for d in rec["diag_curve"])
        assert rec["time_probe"] > 0 and rec["collapsed"] in (True, False)
    evals = [d for d in log if "test_acc" in d]
    assert len(evals) == 4 and all(set(d["probe"]) == keys for d in evals)
    assert evals[-1]["probe"] == {k: v for k, v in res["final"]["diag_curve"][-1].items() if k != "iter"}


def test_probe_0_writes_no_measure(tmp_path):
    _, res, log = run([*TINY, "--probe", "0"], tmp_path)
    assert all("diag_curve" not in rec and "time_probe" not in rec for rec in res["rounds"] + [res["final"]])
    assert not any("probe" in d for d in log)


def test_the_probe_leaves_the_labeled_images_out_and_is_fixed_per_seed():
    data = ssal.D.Data("digits")
    labeled = ssal.D.initial_split(data.y_tr, 10, 10, 0)
    a = G.Probe(data, 200, 0, labeled, 2)
    assert len(a.x_w) == len(a.y) == 200 - len(set(a_idx(data, 200, 0)) & set(labeled.tolist()))
    assert torch.equal(a.x_lb_s[0], G.Probe(data, 200, 0, labeled, 2).x_lb_s[0])  # fixed views
    assert not torch.equal(a.x_lb_s[0], a.x_lb_s[1])  # T different strong views
    assert set(a_idx(data, 200, 0)) != set(a_idx(data, 200, 1))  # another seed, another probe


def a_idx(data, n, seed):
    """The probe's drawn images, recomputed as Probe draws them."""
    rng = G.np.random.default_rng(G.D.mix_seed(seed, 3))
    return rng.choice(len(data.y_tr), size=n, replace=False).tolist()


def test_collapsed_is_named_hand_worked(capsys):
    assert G.collapsed([0, 450, 50], "round 0") is True
    assert "round 0 collapsed" in capsys.readouterr().err
    assert G.collapsed([10, 440, 50], "round 0") is False and not capsys.readouterr().err


def test_a_diverging_lr_marks_the_run_collapsed(tmp_path):
    # lr 10 collapses the model to one class within 8 iterations (so does 30); 50 and above can overflow to a
    # non-finite loss first, which ssal.py stops on (exit 3) before any evaluation marks a collapse
    p, res, _ = run([*TINY, "--iters", "8", "--lr", "10", "--probe", "0"], tmp_path)
    assert res["final"]["collapsed"] is True and res["final_acc"] <= 0.2
    assert "the final training collapsed" in p.stderr and "predicts class" in p.stderr
