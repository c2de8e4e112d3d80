"""Active-learning selectors of Table 1: Random, CoreSet, AlphaMix, ActiveFT, Noise stability.

Every selector is a pure function that returns `budget` unique positions in the pool
array as an np.int64 array. Tensors are processed on the device they live on.

    idx = select("coreset", budget, ctx)   # ctx: see `select` at the bottom

References
  CoreSet   Sener & Savarese, "Active Learning for CNNs: A Core-Set Approach", ICLR 2018
  AlphaMix  Parvaneh et al., "Active Learning by Feature Mixing", CVPR 2022
  ActiveFT  Xie et al., "Active Finetuning: Exploiting Annotation Budget ...", CVPR 2023
  Noise     Li et al., "Deep Active Learning with Noise Stability", AAAI 2024
"""
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from tqdm import tqdm

_TTY = sys.stderr.isatty()


def _check_budget(budget, n):
    if not 0 <= budget <= n:
        raise ValueError(f"budget must be in [0, {n}], got {budget}")


def _rows(n, chunk):
    for i in range(0, n, chunk):
        yield slice(i, min(i + chunk, n))


# -----------------------------------------------------------------------------
# Random

def random_select(num_pool, budget, seed):
    _check_budget(budget, num_pool)
    return np.random.default_rng(seed).choice(num_pool, budget, replace=False).astype(np.int64)


# -----------------------------------------------------------------------------
# k-center greedy (Sener & Savarese 2018, Alg. 1), shared by CoreSet and Noise stability

def kcenter_greedy(x, budget, centres):
    """x [N, D] points, centres [M, D] initial centres (M may be 0). Returns `budget` indices.

    Each step takes u = argmax_i min_c ||x_i - c||^2 and adds x_u as a centre. Squared
    distances use ||x||^2 - 2 x.c + ||c||^2, so one step is one mat-vec over x (reads x once)
    and memory stays O(N*D): no N x N matrix is ever built.
    """
    N = x.shape[0]
    _check_budget(budget, N)
    x2 = torch.linalg.vector_norm(x, dim=1) ** 2                 # [N], no [N, D] temporary
    d = torch.full((N,), math.inf, dtype=x.dtype, device=x.device)  # running min sq. distance
    step = max(1, (1 << 22) // max(1, N))                        # centres per block: [N, cc] <= 4M
    for j in range(0, centres.shape[0], step):
        c = centres[j:j + step].to(x.device, x.dtype)            # [cc, D]
        dc = (x @ c.T).mul_(-2).add_(x2[:, None]).add_((c * c).sum(1))  # ||x - c||^2, [N, cc]
        torch.minimum(d, dc.min(1).values, out=d)
    picks = []
    for _ in range(budget):
        u = int(torch.argmax(d))
        picks.append(u)
        du = torch.addmv(x2, x, x[u], alpha=-2).add_(x2[u])     # ||x - x_u||^2, [N]
        torch.minimum(d, du, out=d)
        d[u] = -math.inf  # never picked again, even when rounding or duplicates leave ties at 0
    return np.asarray(picks, dtype=np.int64)


# -----------------------------------------------------------------------------
# CoreSet: labeled features are the initial centres

def coreset(feats_lb, feats_pool, budget):
    x = feats_pool                                               # [N, d]
    c = feats_lb.to(x.device, x.dtype).reshape(-1, x.shape[1])   # [N_l, d]
    # With no labeled centre every distance is inf and the first pick is pool index 0.
    return kcenter_greedy(x, budget, c)


# -----------------------------------------------------------------------------
# AlphaMix (Parvaneh et al. 2022), closed-form alpha

def _argmax(head, z, chunk):
    return torch.cat([head(z[r]).argmax(1) for r in _rows(z.shape[0], chunk)])


def class_anchors(feats_lb, labels_lb, C):
    """[C, d] anchors: mean labeled feature per class; a class without labels gets the mean of all."""
    zl, yl = feats_lb, labels_lb.to(feats_lb.device).long()     # [N_l, d], [N_l]
    M = max(C, int(yl.max()) + 1)                                # tolerate labels >= C
    cnt = torch.bincount(yl, minlength=M)[:C].to(zl.dtype)      # [C]
    A = torch.zeros(M, zl.shape[1], dtype=zl.dtype, device=zl.device).index_add_(0, yl, zl)[:C]
    return torch.where(cnt[:, None] > 0, A / cnt.clamp(min=1)[:, None], zl.mean(0))


def _unit(g):
    """g / ||g|| per row, robust to tiny gradients of saturated softmaxes: ||g||^2 can underflow
    in float32 (the authors' code then divides by 0); a zero gradient gives 0 (never a candidate)."""
    m = g.abs().amax(1, keepdim=True)                            # [B, 1]
    g = g / torch.where(m > 0, m, torch.ones_like(m))            # max |g_j| = 1 (or a 0 row)
    return g / g.norm(dim=1, keepdim=True).clamp(min=1.0)


def _flip_any_anchor(head, z, g, p, A, eps):
    """[B] bool: does head(z_mix) != p for some anchor? The authors' formula, one pass per anchor."""
    gs = _unit(g)                                                # g / ||g||, [B, d]
    hit = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    for a in A:
        dz = a - z                                               # a - z, [B, d]
        # alpha = eps * ||a - z|| / ||g|| * g / (a - z + 1e-8)   (AlphaMix, closed form)
        # not clamped to [0, cap]: the authors clamp only their sampled / learned alpha
        alpha = (eps * dz.norm(dim=1, keepdim=True)) * gs / (dz + 1e-8)
        z_mix = (1 - alpha) * z + alpha * a                      # [B, d]
        hit |= head(z_mix).argmax(1) != p
    return hit


def _flip_time_linear(head, z, g, p):
    """[B] t*: for a linear head h, argmax h(z + t g/||g||) = p exactly for 0 <= t <= t*.

    The closed form gives alpha * (a - z) = eps ||a - z|| g / ||g||, up to the 1e-8 guard (it
    changes coordinate j of the step by a relative 1e-8 / |a_j - z_j|, i.e. nothing unless a_j
    and z_j nearly coincide). So h(z_mix) = h(z) + t v with t = eps ||a - z||, v = W g / ||g||,
    and class k overtakes p at t = (h_p - h_k) / (v_k - v_p) if v_k > v_p. A sample is thus a
    candidate iff eps * max_a ||a - z|| > t*: no head pass per anchor and cap.
    """
    h = head(z)                                                  # [B, C]
    v = _unit(g) @ head.weight.T                                 # [B, C]
    hp, vp = h.gather(1, p[:, None]), v.gather(1, p[:, None])   # [B, 1]
    dv = v - vp
    t = torch.where(dv > 0, (hp - h) / dv.clamp(min=1e-30), torch.full_like(h, math.inf))
    return t.min(1).values                                       # [B], inf: never flips


def alphamix_candidates(feats_lb, labels_lb, feats_pool, head, budget, alpha_cap=0.2,
                        num_classes=None, chunk=4096):
    """[N] bool: pool samples whose prediction changes when mixed towards some class anchor."""
    z_all = feats_pool                                           # [N, d]
    N, d = z_all.shape
    if len(feats_lb) == 0:
        raise ValueError("alphamix needs at least one labeled feature for its anchors")
    dev = z_all.device
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            C = num_classes or head(z_all[:1]).shape[1]
            A = class_anchors(feats_lb.to(dev, z_all.dtype), labels_lb, C)  # [C, d]
            pred = _argmax(head, z_all, chunk)                   # [N]
        # g = d CE(head(z), pred) / dz per sample. The authors average the loss over the
        # pool; only g / ||g|| enters alpha, so a sum gives the same alpha.
        g_all = torch.empty_like(z_all)                          # [N, d]
        with torch.enable_grad():
            for r in _rows(N, chunk):
                z = z_all[r].detach().requires_grad_(True)
                loss = F.cross_entropy(head(z), pred[r], reduction="sum")
                g_all[r] = torch.autograd.grad(loss, z)[0]

        linear = isinstance(head, torch.nn.Linear)
        with torch.no_grad():
            if linear:  # O(N*C*d) once instead of C head passes per cap (see _flip_time_linear)
                tstar = torch.cat([_flip_time_linear(head, z_all[r], g_all[r], pred[r])
                                   for r in _rows(N, chunk)])    # [N]
                a2 = (A * A).sum(1)                              # [C]
                rmax = torch.cat([(a2 - 2 * z_all[r] @ A.T).amax(1) + (z_all[r] ** 2).sum(1)
                                  for r in _rows(N, chunk)]).clamp(min=0).sqrt()  # max_a ||a - z||, [N]
            cand = torch.zeros(N, dtype=torch.bool, device=dev)
            steps = max(1, math.ceil(1.0 / alpha_cap - 1e-9))
            for step in range(1, steps + 1):
                # grow the cap by alpha_cap per round and keep the union; the authors can end above
                # 1 when 1/alpha_cap is not an integer, we stop at 1
                cap = min(step * alpha_cap, 1.0)
                eps = cap / math.sqrt(d)                         # eps = cap / sqrt(d)
                if linear:
                    cand |= eps * rmax > tstar
                else:
                    for r in _rows(N, chunk):
                        cand[r] |= _flip_any_anchor(head, z_all[r], g_all[r], pred[r], A, eps)
                # the authors stop once the candidates outnumber the budget (strictly)
                if int(cand.sum()) > budget:
                    break
    finally:
        head.train(was_training)
    return cand


def alphamix(feats_lb, labels_lb, feats_pool, head, budget, alpha_cap=0.2, seed=0,
             num_classes=None, chunk=4096):
    N = feats_pool.shape[0]
    _check_budget(budget, N)
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    cand = alphamix_candidates(feats_lb, labels_lb, feats_pool, head, budget, alpha_cap,
                               num_classes, chunk)               # [N] bool
    ci = torch.nonzero(cand).flatten().cpu().numpy()            # candidate pool indices
    if len(ci) <= budget:
        picked = ci  # KMeans with one cluster per candidate returns every candidate
    else:
        # KMeans on L2-normalised candidate features; keep the member nearest each centre.
        # n_init=1 (today's sklearn default for k-means++); the authors' sklearn 0.23 ran 10 inits,
        # 10x the cost for a marginally lower inertia.
        f = F.normalize(feats_pool[cand].float(), dim=1).cpu().numpy()  # [M, d]
        km = KMeans(n_clusters=budget, n_init=1, random_state=seed).fit(f)
        lab = km.predict(f)
        dist = ((f - km.cluster_centers_[lab]) ** 2).sum(1)
        o = np.lexsort((dist, lab))                              # by cluster, then distance
        first = o[np.r_[True, lab[o][1:] != lab[o][:-1]]]        # nearest member per non-empty cluster
        picked = ci[first]
    picked = picked.astype(np.int64)
    short = budget - len(picked)
    if short > 0:
        # shortfall: unique random pool samples (the authors draw with replacement)
        rest = np.setdiff1d(np.arange(N), picked)
        fill = np.random.default_rng(seed).choice(rest, short, replace=False)
        picked = np.concatenate([picked, fill.astype(np.int64)])
    return picked


# -----------------------------------------------------------------------------
# ActiveFT (Xie et al. 2023): parametric model of the selected set, optimised with Adam

def activeft(feats_pool, budget, iters=300, lr=1e-3, temperature=0.07, balance=1.0, seed=0,
             max_batch=100_000, return_loss=False, chunk=256):
    f_all = F.normalize(feats_pool.float(), dim=1)               # [N, d]
    N = f_all.shape[0]
    _check_budget(budget, N)
    if budget == 0:
        out = np.zeros(0, dtype=np.int64)
        return (out, []) if return_loss else out
    dev, tau = f_all.device, temperature
    gen = torch.Generator().manual_seed(seed)
    init = torch.randperm(N, generator=gen)[:budget].to(dev)
    c = torch.nn.Parameter(f_all[init].clone())                  # [K, d] centres, random pool features
    opt = torch.optim.Adam([c], lr=lr)
    log_b = math.log(balance) if balance > 0 else -math.inf
    losses = []
    for _ in tqdm(range(iters), desc="activeft", disable=not _TTY, leave=False):
        # pools above max_batch: a random subset per iteration (their ImageNet script)
        f = f_all if N <= max_batch else f_all[torch.randperm(N, generator=gen)[:max_batch].to(dev)]
        cn = F.normalize(c, dim=1)                               # centres re-normalised each step
        # s = f . c_k* / tau with k* the nearest (most similar) centre   (ActiveFT eq. 6)
        s, k = (f @ cn.T / tau).max(1)                           # [n], [n]
        # S_k = sum_j exp(sg(c_j) . c_k / tau), j = k included, one side detached (as their code)
        logS = torch.logsumexp(cn.detach() @ cn.T / tau, dim=0)  # [K]
        # loss = -mean(s - log(exp(s) + balance * S_k*)), in log-space for stability
        loss = -(s - torch.logaddexp(s, log_b + logS[k])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out = match_centres(c.detach(), f_all, chunk)
    return (out, losses) if return_loss else out


@torch.no_grad()
def match_centres(c, f, chunk=256):
    """Centres c [K, d] in index order each take their most cosine-similar row of f [N, d]
    not taken yet, so the K indices are unique even when centres coincide."""
    cn, fn = F.normalize(c, dim=1), F.normalize(f, dim=1)
    taken = []
    for r in _rows(cn.shape[0], chunk):
        sim = cn[r] @ fn.T                                       # [b, N]
        for row in sim:
            if taken:
                row[torch.as_tensor(taken, device=f.device)] = -math.inf
            taken.append(int(row.argmax()))
    return np.asarray(taken, dtype=np.int64)


# -----------------------------------------------------------------------------
# Noise stability (Li et al. 2024)

def _weights(model):
    """Every distinct `weight` tensor of the model's modules, in module order."""
    ws, seen = [], set()
    for m in model.modules():
        w = getattr(m, "weight", None)
        # a weight shared by several modules is perturbed once (the authors' `apply` would
        # perturb it once per module that holds it)
        if isinstance(w, torch.Tensor) and id(w) not in seen:
            seen.add(id(w))
            ws.append(w)
    return ws


@torch.no_grad()
def _softmax_outputs(model, loader, dev):
    return torch.cat([F.softmax(model(b[0].to(dev)).float(), dim=1) for b in loader])  # [N, C]


@torch.no_grad()
def noise_deviations(model, pool_loader, num_sampling=30, noise_scale=1e-3, seed=0):
    """[N, num_sampling*C] deviations of the softmax under weight noise, copies concatenated.

    Copy s draws, for every weight w in module order, xi = torch.randn(w.shape) from one CPU
    generator seeded with `seed`, rescaled so that ||xi||_F = noise_scale * ||w||_F. Weights are
    perturbed in place and restored bitwise (also on error). Memory: the result holds
    N * num_sampling * C float32 values, e.g. 50k x 30 x 100 -> 600 MB (kept in float32:
    float16 would halve it but rounds at a relative 5e-4, enough to reorder close k-center picks).
    """
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ws = _weights(model)
    clean = [w.detach().clone() for w in ws]                     # one spare copy of the weights
    try:
        p = _softmax_outputs(model, pool_loader, dev)            # [N, C] clean softmax
        N, C = p.shape
        pn = p.norm(dim=1, keepdim=True)                         # [N, 1]
        D = torch.empty(N, num_sampling * C, device=dev)         # [N, S*C]
        gen = torch.Generator().manual_seed(seed)
        for s in tqdm(range(num_sampling), desc="noise", disable=not _TTY, leave=False):
            for w in ws:
                xi = torch.randn(w.shape, generator=gen)         # Gaussian noise, drawn on CPU
                xi = xi.to(w.device, w.dtype)
                w.add_(xi * (noise_scale * w.norm() / xi.norm()))  # ||xi||_F = scale * ||w||_F
            # deviation = (softmax(noisy) - softmax(clean)) / ||softmax(clean)||
            D[:, s * C:(s + 1) * C] = (_softmax_outputs(model, pool_loader, dev) - p) / pn
            for w, w0 in zip(ws, clean):
                w.copy_(w0)
    finally:
        for w, w0 in zip(ws, clean):
            w.copy_(w0)
        model.train(was_training)
    return D


def noise_stability(model, pool_loader, budget, num_sampling=30, noise_scale=1e-3, seed=0):
    if noise_scale < 1e-8:
        # as the authors: without noise there is no signal, so the choice is random
        N = sum(len(b[0]) for b in pool_loader)
        return random_select(N, budget, seed)
    D = noise_deviations(model, pool_loader, num_sampling, noise_scale, seed)  # [N, S*C]
    # k-center greedy with the origin as the only initial centre: first pick = largest ||deviation||
    return kcenter_greedy(D, budget, torch.zeros(1, D.shape[1], device=D.device))


def noise_on_subset(c, budget):
    """Noise stability as its authors run it on CIFAR-100 (SUBSET = 25000 in their config): the candidates are a
    random subset of c["noise_subset"] pool images, drawn with the round's seed, when the pool is larger (0 or None:
    the whole pool). c["pool_loader"] must offer subset(positions). Returns pool positions."""
    N, k = len(c["feats_pool"]), c.get("noise_subset") or 0
    if not k or N <= k:
        return noise_stability(c["model"], c["pool_loader"], budget, seed=c["seed"])
    idx = np.sort(np.random.default_rng(c["seed"]).choice(N, k, replace=False))  # [k] pool positions
    return idx[np.asarray(noise_stability(c["model"], c["pool_loader"].subset(idx), budget, seed=c["seed"]))]


# -----------------------------------------------------------------------------
# Dispatcher. ctx keys: feats_lb [N_l, d], labels_lb [N_l], feats_pool [N_p, d], head,
# model, pool_loader, num_classes, seed, noise_subset. Adding a selector = one function + one entry here.

SELECTORS = {
    "random": lambda b, c: random_select(len(c["feats_pool"]), b, c["seed"]),
    "coreset": lambda b, c: coreset(c["feats_lb"], c["feats_pool"], b),
    "alphamix": lambda b, c: alphamix(c["feats_lb"], c["labels_lb"], c["feats_pool"], c["head"], b,
                                      seed=c["seed"], num_classes=c.get("num_classes")),
    "activeft": lambda b, c: activeft(c["feats_pool"], b, seed=c["seed"]),
    "noise": lambda b, c: noise_on_subset(c, b),
}
NAMES = tuple(SELECTORS)


def select(name, budget, ctx):
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose one of {', '.join(NAMES)}")
    return np.asarray(SELECTORS[name](budget, ctx), dtype=np.int64)
