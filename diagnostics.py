"""Diagnostics: the quantities the paper's argument for FA is made of, measured on a probe set (Sec. 3.5).

The paper says: L_s makes an unlabeled sample's nearest labeled sample under the strong view (Eq. 11) share its
class, so that pulling the weak features together (Eq. 12) clusters the classes; L_c shrinks the strong / weak
feature distance L_{s-w} (Eq. 13), which bounds the gap between the margin errors under the two views (Eqs. 14-16),
so uncertainty measured on the weak view stands in for the strong view. Each is measured here, at every
evaluation, for FA and no-FA runs alike, with the true labels of the probe images (read for measurement only:
they never reach training or selection):

    pl_acc              accuracy of the weak-view pseudo-labels argmax W g(x_w)
    pl_acc_masked, mask the same among the probe images that pass the SSL algorithm's current threshold, and their
                        fraction (FixMatch / FreeMatch)
    anchor_purity       Eq. 11 computed fresh: the fraction whose i* (nearest labeled sample over T strong views,
                        cosine) has the probe image's class -- the quantity L_s relies on
    anchor_purity_weak  the same with one weak view on both sides (a plain cosine 1-NN)
    anchors_eff         the effective number of distinct i* (exp of the entropy of their histogram): N_l when every
                        labeled sample anchors as many probe images, 1 when one anchors all -- which labeled
                        features L_s pulls the pool towards
    pred_eff            the same for the weak-view pseudo-labels: C when the head predicts every class as often,
                        1 when it predicts one
    L_sw, L_sw_unit     Eq. 13: mean ||g(x_s) - g(x_w)||^2, on the raw and on unit-normalised features
    margin_gap, n_wrong Eq. 15: mean |Delta_m(x_w) - Delta_m(x_s)|, Delta_m(x) = (W_yhat - W_y)^T g(x) (Eq. 14;
                        yhat the weak pseudo-label, y the true label), over the probe images whose pseudo-label is
                        wrong (the case the paper analyses), and their count
    knn_purity          leave-one-out cosine 1-NN class agreement of the probe's weak features: how clustered they are

Every measure is a pure function (tensors in, a number out), tested against a brute-force loop; `Probe` holds the
probe's fixed views and measures a model on them.
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import data as D
import fa


def pseudo_label_accuracy(logits_w, y, mask=None):
    """pl_acc: mean 1[argmax logits_w == y]; with a bool mask [N], among the masked rows (None when none pass)."""
    right = logits_w.argmax(1) == y  # [N]
    if mask is None:
        return right.float().mean().item()
    return right[mask].float().mean().item() if bool(mask.any()) else None


def anchors(z_u, z_lb):
    """Eq. 11's nearest labeled sample, i*_j = argmax_{i, t} cos(z_u[j], z_lb[i, t]), by L_s's own code. z_u [N, d];
    z_lb [N_l, T, d] (T views per labeled sample) or [N_l, d] (one view). Returns i* [N]."""
    return fa.nearest_labeled(z_u, z_lb[:, None] if z_lb.dim() == 2 else z_lb)


def anchor_purity(z_u, y_u, z_lb, y_lb, i_star=None):
    """The fraction of rows j whose Eq. 11 anchor i*_j (anchors above; i_star [N] when already computed) has class
    y_u[j]."""
    i_star = anchors(z_u, z_lb) if i_star is None else i_star
    return (y_lb[i_star] == y_u).float().mean().item()


def effective_number(hist):
    """exp(-sum_k p_k log p_k), p the normalised histogram `hist` (counts, any array): the number of values, n, when
    the counts are spread evenly over n of them, 1 when all fall on one."""
    p = np.asarray(hist, dtype=float)
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def strong_weak_distance(z_s, z_w):
    """L_sw, Eq. 13: mean_j ||z_s[j] - z_w[j]||^2 on the raw features, and on unit-normalised ones."""
    raw = (z_s - z_w).pow(2).sum(1).mean().item()
    unit = (F.normalize(z_s, dim=-1) - F.normalize(z_w, dim=-1)).pow(2).sum(1).mean().item()
    return raw, unit


def margin_gap(z_w, z_s, W, y, yhat):
    """Eq. 15 over the probe images whose weak pseudo-label yhat is wrong: the mean of |Delta_m(x_w) - Delta_m(x_s)|
    with Delta_m(x) = (W_yhat - W_y)^T g(x) (Eq. 14; a bias cancels in the difference, so W [C, d] is the head's
    weight alone), and their count. (None, 0) when every pseudo-label is right."""
    wrong = yhat != y  # [N]
    if not bool(wrong.any()):
        return None, 0
    dW = W[yhat[wrong]] - W[y[wrong]]  # [N_wrong, d]
    gap = ((dW * z_w[wrong]).sum(1) - (dW * z_s[wrong]).sum(1)).abs()  # [N_wrong]
    return gap.mean().item(), int(wrong.sum())


def knn_purity(z, y):
    """Leave-one-out 1-NN with cosine similarity: the fraction of rows whose nearest other row has its class."""
    s = F.normalize(z, dim=-1) @ F.normalize(z, dim=-1).T  # [N, N]
    s.fill_diagonal_(float("-inf"))
    return (y[s.argmax(1)] == y).float().mean().item()


def measure(z_w, logits_w, z_s, W, y, z_lb_s, z_lb_w, y_lb, mask=None):
    """Every measure at one evaluation. Probe: weak / strong features z_w, z_s [N, d], weak logits [N, C], true
    labels y [N]; the labeled set: T strong views z_lb_s [N_l, T, d] and one weak view z_lb_w [N_l, d], labels y_lb;
    W [C, d] the head's weight; mask [N] bool, the SSL algorithm's threshold on the weak view (None: supervised)."""
    out = {"pl_acc": pseudo_label_accuracy(logits_w, y)}
    if mask is not None:
        out.update(pl_acc_masked=pseudo_label_accuracy(logits_w, y, mask), mask=mask.float().mean().item())
    i_star = anchors(z_s, z_lb_s)  # [N] Eq. 11 over the T strong views, once for the two measures below
    out["anchor_purity"] = anchor_purity(z_s, y, z_lb_s, y_lb, i_star)
    out["anchor_purity_weak"] = anchor_purity(z_w, y, z_lb_w, y_lb)
    out["anchors_eff"] = effective_number(torch.bincount(i_star).cpu().numpy())
    out["pred_eff"] = effective_number(torch.bincount(logits_w.argmax(1)).cpu().numpy())
    out["L_sw"], out["L_sw_unit"] = strong_weak_distance(z_s, z_w)
    out["margin_gap"], out["n_wrong"] = margin_gap(z_w, z_s, W, y, logits_w.argmax(1))
    out["knn_purity"] = knn_purity(z_w, y)
    return out


class Probe:
    """The probe of one training: --probe N training images, drawn once per dataset and seed, each under one fixed
    weak and one fixed strong view, minus those in the training's labeled set; and every labeled image under T
    fixed strong views (Q_s's T) and one fixed weak view. Views are seeded by (seed, stream, image) like
    selection's, and drawing them leaves every generator of the training as it was: the probe does not change
    training (tested). `seconds` adds up the probe's own cost (from `seconds` on: a resumed training's)."""

    def __init__(self, data, n, seed, labeled, T, workers=0, seconds=0.0):
        t0 = time.time()
        self.data, self.seed, self.workers = data, seed, workers
        rng = np.random.default_rng(D.mix_seed(seed, 3))
        drawn = rng.choice(len(data.y_tr), size=min(n, len(data.y_tr)), replace=False)  # once per dataset and seed
        idx = np.setdiff1d(drawn, labeled)
        self.x_w, self.x_s, self.y = self.views(idx, "weak", 4), self.views(idx, "strong", 5), data.y_tr[idx]
        self.x_lb_w = self.views(labeled, "weak", 6)
        self.x_lb_s = [self.views(labeled, "strong", 7, t) for t in range(T)]
        self.y_lb = data.y_tr[labeled]
        self.seconds = seconds + time.time() - t0

    def views(self, indices, view, *stream):
        """uint8 [len(indices), 3, H, W]: one fixed `view` per image, seeded by (seed, stream, image)."""
        return D.view_tensor(D.Views(self.data.x_tr, self.data.y_tr, indices, {view: self.data.views[view]},
                                     view_seed=(self.seed, *stream)), self.workers)

    def measure(self, run_model, W, threshold):
        """Every measure of a model: run_model(x) -> (features [N, d], logits [N, C]) in eval mode; W [C, d] the
        head's weight; threshold(probs) -> the SSL algorithm's current mask (bool [N]) or None (supervised)."""
        t0 = time.time()
        z_w, logits_w = run_model(self.x_w)
        z_s, _ = run_model(self.x_s)
        z_lb_w, _ = run_model(self.x_lb_w)
        z_lb_s = torch.stack([run_model(x)[0] for x in self.x_lb_s], dim=1)  # [N_l, T, d]
        y, y_lb = (torch.as_tensor(v, device=z_w.device) for v in (self.y, self.y_lb))
        out = measure(z_w, logits_w, z_s, W.detach().float(), y, z_lb_s, z_lb_w, y_lb,
                      threshold(torch.softmax(logits_w, dim=-1)))
        self.seconds += time.time() - t0
        return out


def collapsed(pred_hist, name, share=0.9):
    """A training whose last evaluation predicts one class for at least `share` of the test images has collapsed:
    a warning line names the training (`name`) and the class. Returns whether it did."""
    c = int(np.argmax(pred_hist))
    if pred_hist[c] < share * sum(pred_hist):
        return False
    print(f"warning: {name} collapsed: its last evaluation predicts class {c} for {pred_hist[c]} of the "
          f"{sum(pred_hist)} test images", file=sys.stderr)
    return True
