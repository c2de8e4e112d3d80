"""SSL algorithms of Table 1: supervised, FixMatch [37], FreeMatch [39].

All of them follow Eq. 2: a pseudo-label from the weak view x_ulb_w, a mask, and a cross-entropy on the strong
view x_ulb_s. Each algorithm exposes

    unlabeled_loss(logits_w, logits_s) -> (loss, mask, parts)   # logits [B_u, C], loss scalar, mask [B_u] float,
                                                                # parts: the loss's terms, detached, for the log
    log() -> dict of scalars to show (thresholds)
    state_dict() / load_state_dict()                         # FreeMatch's EMA estimates, so runs can resume

The labeled loss L_l (Eq. 1) is the same plain cross-entropy for all of them: `labeled_loss`.
"""
import torch
import torch.nn.functional as F


def labeled_loss(logits_lb, y_lb):
    """Eq. 1: L_l = mean_b CE(logits of the weak labeled view x_lb[b], y_lb[b])."""
    return F.cross_entropy(logits_lb, y_lb)


def masked_consistency_loss(logits_s, pseudo_label, mask):
    """Eq. 2: mean over ALL unlabeled samples of the batch of 1[mask] * CE(strong logits, hard pseudo-label)."""
    return (F.cross_entropy(logits_s, pseudo_label, reduction="none") * mask).mean()


class Supervised:
    """Labeled cross-entropy only: no unlabeled loss, the training loop skips the unlabeled batch."""
    uses_unlabeled = False

    def __init__(self, num_classes):
        self.num_classes = num_classes

    def log(self):
        return {}

    def threshold(self, probs):
        """No threshold: supervised training reads no pseudo-label."""
        return None

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class FixMatch:
    """FixMatch [37]: fixed threshold tau = p_cutoff on the max weak-view probability, lambda_u = 1."""
    uses_unlabeled = True

    def __init__(self, num_classes, p_cutoff=0.95):
        self.num_classes, self.p_cutoff = num_classes, p_cutoff

    def unlabeled_loss(self, logits_w, logits_s):
        probs = torch.softmax(logits_w.detach().float(), dim=-1)  # [B_u, C] q(x) in Eq. 2
        pseudo_label = probs.argmax(dim=-1)  # [B_u]
        mask = self.threshold(probs).float()  # 1[max q >= tau]
        loss = masked_consistency_loss(logits_s, pseudo_label, mask)
        return loss, mask, {"L_u": loss.detach()}

    def threshold(self, probs):
        """The mask of Eq. 2 for weak-view probabilities probs [B, C]: max q >= tau, bool [B]."""
        return probs.max(dim=-1).values >= self.p_cutoff

    def log(self):
        return {"tau": self.p_cutoff}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fairness_loss(logits_s, mask, p_model, label_hist):
    """FreeMatch's self-adaptive fairness loss (its Eq. 10; `entropy_loss` in the authors' code).

    On the strong logits of the masked samples only (0 when none):
        p_bar  = SumNorm(p_model / label_hist)                       # detached scaler 1/label_hist
        q_bar  = SumNorm(mean_b softmax(logits_s[b]) / hist_s)       # hist_s: normalised histogram of strong argmax
        loss   = sum_c p_bar_c * log(q_bar_c + 1e-12)                # <= 0 by design; minimised -> -H(p_bar, q_bar)
    As in the authors' code, a class with zero count in hist_s (1/0 = inf) gets scaler 0, and both scalers are
    detached. Returns a scalar.
    """
    m = mask.bool()
    if not bool(m.any()):
        return logits_s.sum() * 0.0
    probs_s = torch.softmax(logits_s[m], dim=-1)  # [B_m, C]
    C = probs_s.shape[1]
    hist_s = torch.bincount(probs_s.argmax(-1), minlength=C).to(probs_s.dtype)
    hist_s = hist_s / hist_s.sum()  # [C]

    def inv(h):  # 1/h with inf -> 0, detached
        r = 1.0 / h.detach()
        return torch.where(torch.isinf(r), torch.zeros_like(r), r)

    p_bar = p_model * inv(label_hist)
    p_bar = p_bar / p_bar.sum()  # [C]
    q_bar = probs_s.mean(0) * inv(hist_s)
    q_bar = q_bar / q_bar.sum()  # [C]
    return (p_bar * torch.log(q_bar + 1e-12)).sum()


class FreeMatch:
    """FreeMatch [39] with self-adaptive thresholds (SAT) and self-adaptive fairness (SAF).

    EMA estimates, all updated from the detached weak softmax of each batch *before* the mask (momentum m = ema_p):
        time_p     <- m * time_p     + (1 - m) * mean_b max_c p[b, c]       # global threshold tau_t
        p_model    <- m * p_model    + (1 - m) * mean_b p[b]                # [C] local class estimates
        label_hist <- m * label_hist + (1 - m) * hist(argmax p) / B_u       # [C]
    mask[b] = max p[b] >= time_p * p_model[argmax p[b]] / max(p_model)      # tau_t(c) = MaxNorm(p_model)_c * tau_t
    loss    = masked CE (as FixMatch) + ent_loss_ratio * fairness_loss

    Initial values follow the FreeMatch paper: tau_0 = 1/C, p_model_0 = label_hist_0 = 1/C. (One published
    version of the authors' code starts them at 1 instead, with the `/ C` commented out; we follow the paper,
    which gives a low threshold early on instead of a threshold of 1 that nothing passes for ~1k steps.)
    """
    uses_unlabeled = True

    def __init__(self, num_classes, ema_p=0.999, ent_loss_ratio=0.001):
        self.num_classes, self.m, self.ent_loss_ratio = num_classes, ema_p, ent_loss_ratio
        self.time_p = torch.tensor(1.0 / num_classes)
        self.p_model = torch.full((num_classes,), 1.0 / num_classes)
        self.label_hist = torch.full((num_classes,), 1.0 / num_classes)

    @torch.no_grad()
    def update(self, probs):
        """One EMA step from the weak-view probabilities probs [B_u, C]."""
        m = self.m
        self.time_p, self.p_model, self.label_hist = (t.to(probs.device) for t in (self.time_p, self.p_model, self.label_hist))
        max_p, idx = probs.max(dim=-1)
        hist = torch.bincount(idx, minlength=self.num_classes).to(probs.dtype)
        self.time_p = m * self.time_p + (1 - m) * max_p.mean()
        self.p_model = m * self.p_model + (1 - m) * probs.mean(0)
        self.label_hist = m * self.label_hist + (1 - m) * hist / hist.sum()

    def unlabeled_loss(self, logits_w, logits_s):
        probs = torch.softmax(logits_w.detach().float(), dim=-1)  # [B_u, C]; float32 EMAs, also under --amp
        self.update(probs)
        pseudo_label = probs.argmax(dim=-1)
        mask = self.threshold(probs).float()
        loss_u = masked_consistency_loss(logits_s, pseudo_label, mask)
        parts = {"L_u": loss_u.detach()}
        if self.ent_loss_ratio > 0:
            # USB adds ent_loss_ratio * fairness outside lambda_u; the same here for the paper's lambda_u = 1
            fair = fairness_loss(logits_s, mask, self.p_model, self.label_hist)
            loss_u = loss_u + self.ent_loss_ratio * fair
            parts["fairness"] = fair.detach()
        return loss_u, mask, parts

    def threshold(self, probs):
        """The mask for weak-view probabilities probs [B, C] under the current estimates (no EMA step): bool [B],
        max p >= tau_t(argmax p) with the self-adaptive class thresholds tau_t(c) = time_p * p_model[c] / max p_model."""
        p_model = self.p_model.to(probs.device)
        tau_c = self.time_p.to(probs.device) * p_model / p_model.max()  # [C]
        max_p, pseudo_label = probs.max(dim=-1)
        return max_p >= tau_c[pseudo_label]

    def log(self):
        tau_c = self.time_p * self.p_model / self.p_model.max()
        return {"tau": float(self.time_p), "tau_min": float(tau_c.min())}

    def state_dict(self):
        return {"time_p": self.time_p.cpu(), "p_model": self.p_model.cpu(), "label_hist": self.label_hist.cpu()}

    def load_state_dict(self, state):
        self.time_p, self.p_model, self.label_hist = (state[k].clone() for k in ("time_p", "p_model", "label_hist"))


def build_ssl(name, num_classes, p_cutoff=0.95, ema_p=0.999, ent_loss_ratio=0.001):
    if name == "supervised":
        return Supervised(num_classes)
    if name == "fixmatch":
        return FixMatch(num_classes, p_cutoff)
    if name == "freematch":
        return FreeMatch(num_classes, ema_p, ent_loss_ratio)
    raise ValueError(f"unknown SSL algorithm {name!r}; choose from supervised, fixmatch, freematch")


SSL_NAMES = ("supervised", "fixmatch", "freematch")
