"""Feature re-alignment (FA), Sec. 3.5 of the paper.

Two extra losses on the unlabeled batch, added to any strong/weak SSL algorithm:

  L_s  similarity loss (Eqs. 11-12): pull the weak-view feature of each unlabeled sample towards the weak-view
       feature of the labeled sample whose *strong* views are most similar to its strong view.
  L_c  contrastive loss (Eqs. 17-18): the invariance term of Barlow Twins [52] between the strong and the weak
       view, which bounds the strong/weak feature gap (Eq. 19) and so the margin-error gap (Eqs. 13-16).

Features are g(x), the backbone's pre-logits features, i.e. the input of the linear head W (Eq. 14).

    L = L_l + lambda_u * L_u + lambda_s * L_s + lambda_c * L_c

The two losses are pure functions (tensors in, scalar out) that can be copied out alone; the queues Q_w, Q_s
that L_s reads are the only state and live in `FeatureQueues`.
"""
import torch
import torch.nn.functional as F


class FeatureQueues:
    """Q_w [N_l, d]: latest weak-view feature of each labeled sample.
    Q_s [N_l, T, d]: last T strong-view features of each labeled sample, a ring per sample (oldest dropped first).
    filled [N_l, T]: which Q_s slots hold a feature; an empty slot is never chosen as nearest.

    Rows are *positions* in the labeled set (0..N_l-1), not dataset indices; the caller maps one to the other.
    """

    def __init__(self, num_labeled, queue_len, dim, device="cpu"):
        self.T = queue_len
        self.q_w = torch.zeros(num_labeled, dim, device=device)  # [N_l, d]
        self.q_s = torch.zeros(num_labeled, queue_len, dim, device=device)  # [N_l, T, d]
        self.filled = torch.zeros(num_labeled, queue_len, dtype=torch.bool, device=device)  # [N_l, T]
        self.ptr = torch.zeros(num_labeled, dtype=torch.long)  # [N_l] next slot to write; on the CPU (no GPU syncs)

    @torch.no_grad()
    def update(self, lb_pos, z_w, z_s):
        """Write detached features of a labeled batch. lb_pos [B] positions, z_w / z_s [B, d].
        A position that appears twice in the batch keeps the weak feature of its last occurrence and pushes
        every strong feature, in batch order. The ring bookkeeping runs on the CPU (B is the small labeled
        batch); the features are written with one indexed copy per queue, so the device is not synchronised."""
        z_w, z_s = z_w.detach().to(self.q_w), z_s.detach().to(self.q_s)
        last_w, last_s = {}, {}  # row -> b, (row, slot) -> b: the last write of the batch wins, as in a loop
        for b, i in enumerate(lb_pos.tolist()):
            t = int(self.ptr[i])
            last_w[i], last_s[(i, t)] = b, b
            self.ptr[i] = (t + 1) % self.T
        dev = self.q_w.device
        rows, bw = (torch.tensor(v, device=dev) for v in zip(*last_w.items()))
        self.q_w[rows] = z_w[bw]
        (rows_s, slots), bs = zip(*last_s.keys()), list(last_s.values())
        rows_s, slots, bs = (torch.tensor(v, device=dev) for v in (rows_s, slots, bs))
        self.q_s[rows_s, slots] = z_s[bs]
        self.filled[rows_s, slots] = True

    def state_dict(self):
        return {"q_w": self.q_w.clone(), "q_s": self.q_s.clone(), "filled": self.filled.clone(), "ptr": self.ptr.clone()}

    def load_state_dict(self, state):
        for k in ("q_w", "q_s", "filled", "ptr"):
            getattr(self, k).copy_(state[k])
        self.T = self.q_s.shape[1]


@torch.no_grad()
def nearest_labeled(z_s, q_s, filled=None):
    """Eq. 11: i*_j = argmax_{i, t} cos(z_s[j], q_s[i, t]), the labeled sample (row of q_s) with the view most
    similar to z_s[j]. z_s [B, d]; q_s [N_l, T, d]; filled [N_l, T] bool or None (all): an unfilled slot is never
    chosen. Returns i* [B], without a graph (the choice is a constant of L_s)."""
    N_l, T, d = q_s.shape
    s = F.normalize(z_s, dim=-1) @ F.normalize(q_s.reshape(N_l * T, d), dim=-1).T  # [B, N_l*T]
    if filled is not None:
        s = s.masked_fill(~filled.reshape(1, N_l * T), float("-inf"))
    return s.argmax(dim=1) // T  # [B] row of the most similar (i, t)


def similarity_loss(z_u_w, z_u_s, q_w, q_s, filled=None, mask=None):
    """L_s, Eqs. 11-12. z_u_w, z_u_s [B_u, d]; q_w [N_l, d]; q_s [N_l, T, d]; filled [N_l, T] bool or None (all);
    mask [B_u] (bool or 0/1) or None.

    i*_j = argmax_{i, t} sim(z_u_s[j], q_s[i, t])                      # Eq. 11
    L_s  = mean_j ( 1 - sim(z_u_w[j], q_w[i*_j]) )                     # Eq. 12
    sim is the cosine similarity. The gradient flows through z_u_w only: the choice of i* (strong view) and the
    queues are constants. mask None (--ls-samples all, Eq. 12 as written): every unlabeled sample of the batch
    counts, confident or not. With a mask (--ls-samples masked: Fig. 1 adds L_s "when calculating the loss L_u",
    whose samples are masked): the mean over the samples that pass it. Returns 0 (with a graph) when no slot is
    filled yet, or no sample passes the mask.
    """
    N_l, T, d = q_s.shape
    z_u_w, z_u_s = z_u_w.float(), z_u_s.float()  # cosine similarities in float32, also under autocast (--amp)
    if filled is None:
        filled = torch.ones(N_l, T, dtype=torch.bool, device=q_s.device)
    if not bool(filled.any()):
        return z_u_w.sum() * 0.0
    i_star = nearest_labeled(z_u_s, q_s, filled)  # [B_u] Eq. 11
    sim = F.cosine_similarity(z_u_w, q_w[i_star].detach(), dim=-1)  # [B_u]
    if mask is None:
        return (1.0 - sim).mean()  # Eq. 12, averaged over the batch
    m = mask.float()  # [B_u]
    return ((1.0 - sim) * m).sum() / m.sum().clamp(min=1.0)  # over the masked samples; 0 when none passes


def contrastive_loss(z_s, z_w, eps=1e-5, norm="batch"):
    """L_c, Eqs. 17-18, as the invariance term of Barlow Twins [52]. z_s, z_w [B, d] (strong / weak view of the
    same samples, B >= 2).

    norm "batch" (--lc-norm batch, Barlow Twins' diagonal): each feature dimension is standardised over the batch
    (zero mean, unit variance), which is what makes g_i(x_s)^T g_i(x_w) a correlation; then
        c_i = mean_b zs_hat[b, i] * zw_hat[b, i]                        # the expectation in Eq. 18
        L_c = sum_i (1 - c_i)^2                                          # Eq. 18
    With this normalisation Eq. 19 holds exactly: mean_b ||zs_hat[b] - zw_hat[b]||^2 = 2 * sum_i (1 - c_i)
    <= 2 * sqrt(d * L_c) (Cauchy-Schwarz). The variance is the biased (1/B) one so that mean_b zs_hat^2 = 1.

    norm "unit" (--lc-norm unit: Sec. 3.5's features "normalized to a modulus of 1"): each sample's feature is
    scaled to unit L2 norm, then the same c_i and L_c. Since sum_i c_i = mean_b cos(z_s[b], z_w[b]),
        L_c = d - 2 mean_b cos(z_s[b], z_w[b]) + sum_i c_i^2,   0 <= sum_i c_i^2 <= 1 (Cauchy-Schwarz):
    up to a term of at most 1, d minus twice the mean cosine. Its gradient is about twice that of a mean (1 - cos),
    L_s's form, so lambda_c = 0.5 puts it on L_s's scale (lambda_c = 0.01, the batch reading's 1/d, makes it ~50x
    weaker than L_s).
    """
    z_s, z_w = z_s.float(), z_w.float()  # the normalisation in float32, also under autocast (--amp)
    if norm == "unit":
        zs, zw = F.normalize(z_s, dim=-1), F.normalize(z_w, dim=-1)  # [B, d], each row of norm 1
    else:
        zs = (z_s - z_s.mean(0)) / torch.sqrt(z_s.var(0, unbiased=False) + eps)  # [B, d]
        zw = (z_w - z_w.mean(0)) / torch.sqrt(z_w.var(0, unbiased=False) + eps)  # [B, d]
    c = (zs * zw).mean(0)  # [d]
    return ((1.0 - c) ** 2).sum()


# FA's readings where the paper is silent (ssal.py's flags): flag -> (the default reading, the run-name tag
# prefix). A run name and a report cell carry a reading's tag only when it is not the default, so the runs made
# before these flags keep their names and cells.
READINGS = {"ls_samples": ("all", "ls"), "lc_norm": ("batch", "lc"), "lc_views": ("unlabeled", "lcv"),
            "fa_trainings": ("all", "fat"), "fa_warmup": (0, "faw")}


def variant(cfg):
    """The FA variant of a run's config (a dict of its flags): 'fa_s<lambda_s>_c<lambda_c>_T<T>', then
    '_<tag><value>' for each non-default reading, e.g. 'fa_s1_c0.01_T10_lsmasked_faw100'; 'none' without FA."""
    if not cfg.get("fa"):
        return "none"
    v = f"fa_s{cfg['lambda_s']:g}_c{cfg['lambda_c']:g}_T{cfg['queue_len']}"
    return v + "".join(f"_{tag}{cfg[k]}" for k, (default, tag) in READINGS.items() if cfg.get(k, default) != default)
