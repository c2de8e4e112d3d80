"""Semi-supervised active learning with feature re-alignment (Fig. 1 of the paper), one query round after another:

    round r = 0 .. R-1:  SSL training on the labeled set L_r (+ FA)  ->  features under the weak view
                         ->  AL selects `budget` pool images  ->  L_{r+1} = L_r + selection
    then:                SSL training on L_R  ->  test accuracy (the number of Table 1)

    python ssal.py                                    # the embedded demo: digits, 10 labels + 10 selected, CPU
    python ssal.py --dataset cifar100 --budget 100 --ssl freematch --al alphamix --fa

Every round trains from the same initial weights (same seed), as in the usual AL protocol, so that the rounds
differ only by their labeled set. Flags left unset take the dataset's preset (PRESETS below).
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import timm
import timm.optim
import torch
from tqdm import tqdm

import al_strategies
import data as D
import fa
import ssl_algos

# ----------------------------------------------------------------------------------------------------------------
# presets: the only place where dataset-dependent defaults live

# Architectures we name ourselves -> (timm name, kwargs). Any other --model is passed to timm as it is.
ARCHS = {
    # A small ViT that keeps the digits demo to minutes on 2 CPU cores (16 tokens of 8x8 pixels, d = 96). It pools
    # the average token instead of a class token: trained from scratch, a class-token ViT predicts one class for
    # every input at initialisation, and FreeMatch's initial threshold 1/C then turns that class into every
    # pseudo-label (collapse). Average pooling gives input-dependent predictions from the first step.
    "vit_tiny_digits": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3,
                                                     global_pool="avg", class_token=False)),
    # ViT-S with patch 2 at 32x32, the USB benchmark's CIFAR-100 backbone (vit_small_patch2_32, d = 384).
    "vit_small_patch2_32": ("vit_small_patch16_224", dict(img_size=32, patch_size=2, drop_path_rate=0.2)),
    # The same family for TinyImageNet: patch 4 at 64x64 keeps the 16x16 token grid of patch 2 at 32x32.
    "vit_small_patch4_64": ("vit_small_patch16_224", dict(img_size=64, patch_size=4, drop_path_rate=0.2)),
}

# CIFAR-100 / TinyImageNet follow USB's FreeMatch ViT config for CIFAR-100 (AdamW, lr 5e-4, layer decay 0.5,
# weight decay 5e-4, batch 8, uratio 1, 204,800 iterations with 5,120 warm-up). digits is CPU-sized.
PRESETS = {
    "digits": dict(model="vit_tiny_digits", budget=10, iters=1500, batch_size=16, uratio=3, lr=1e-3,
                   weight_decay=5e-4, layer_decay=None, warmup=75, ema_p=0.9, eval_every=100, log_every=50),
    "cifar100": dict(model="vit_small_patch2_32", budget=100, iters=204800, batch_size=8, uratio=1, lr=5e-4,
                     weight_decay=5e-4, layer_decay=0.5, warmup=5120, ema_p=0.999, eval_every=2048, log_every=256),
    "tinyimagenet": dict(model="vit_small_patch4_64", budget=200, iters=204800, batch_size=8, uratio=1, lr=5e-4,
                         weight_decay=5e-4, layer_decay=0.5, warmup=5120, ema_p=0.999, eval_every=2048, log_every=256),
}
# USB evaluates every num_eval_iter = 2,048 iterations and logs every num_log_iter = 256; digits evaluates 15 times
# per training and logs 30 times.
# FreeMatch's EMA momentum ema_p sets how many steps its thresholds average over (1 / (1 - ema_p)): 1,000 of
# USB's 204,800 iterations. At digits' 1,500 iterations 0.999 would keep the thresholds near their initial 1/C for
# the whole run (every pseudo-label passes; measured: FreeMatch below supervised); 0.9 averages over 10 steps.


def get_args(argv=None):
    p = argparse.ArgumentParser(description="SSL + AL with feature re-alignment (one or more query rounds).")
    a = p.add_argument
    # data
    a("--dataset", default="digits", choices=list(D.DATASETS), help="digits ships with scikit-learn (the CPU demo)")
    a("--data-dir", default="./data", help="folder holding cifar-100-python/ or tiny-imagenet-200/")
    a("--download", action="store_true", help="let torchvision download CIFAR-100 into --data-dir")
    a("--budget", type=int, help="initial labeled images AND images selected per round (#100 in Table 1); "
                                 "a multiple of the classes. Preset: digits 10, cifar100 100, tinyimagenet 200")
    a("--rounds", type=int, default=1, help="query rounds (the paper runs one)")
    # algorithms
    a("--ssl", default="freematch", choices=ssl_algos.SSL_NAMES, help="training algorithm")
    a("--al", default="random", choices=al_strategies.NAMES, help="selection strategy")
    a("--fa", action="store_true", help="add the feature re-alignment losses lambda_s * L_s + lambda_c * L_c")
    a("--lambda-s", type=float, default=1.0, help="weight of the similarity loss L_s (Eq. 12); 0 turns it off")
    a("--lambda-c", type=float, default=0.01, help="weight of the contrastive loss L_c (Eq. 18); 0 turns it off")
    a("--queue-len", type=int, default=10, help="T, strong views kept per labeled sample in Q_s (Sec. 4.4)")
    a("--p-cutoff", type=float, default=0.95, help="FixMatch's fixed threshold tau")
    a("--ema-p", type=float, help="FreeMatch's EMA momentum for its thresholds. Preset: digits 0.9, others 0.999")
    a("--ent-loss-ratio", type=float, default=0.001, help="FreeMatch's fairness-loss weight")
    a("--lambda-u", type=float, default=1.0, help="weight of the unlabeled consistency loss L_u")
    # model
    a("--model", help=f"a timm model name, or one of {', '.join(ARCHS)}. Preset: digits vit_tiny_digits, "
                      "cifar100 vit_small_patch2_32, tinyimagenet vit_small_patch4_64")
    a("--pretrained", action="store_true", help="start from timm's own pretrained weights (needs internet or "
                                                "the timm/Hugging Face cache)")
    a("--weights", help="a local state dict to start from (timm format, or a {'model': state} checkpoint such as "
                        "USB's vit_small_patch2_32_mlp_im_1k_32.pth); the classifier head is dropped")
    # optimisation
    a("--iters", type=int, help="training iterations per round. Preset: digits 1500, others 204800")
    a("--batch-size", type=int, help="labeled batch B. Preset: digits 16, others 8")
    a("--uratio", type=int, help="unlabeled batch = uratio * B. Preset: digits 3, others 1")
    a("--lr", type=float, help="AdamW learning rate, cosine decay. Preset: digits 1e-3, others 5e-4")
    a("--weight-decay", type=float, help="AdamW weight decay. Preset: 5e-4")
    a("--layer-decay", type=float, help="layer-wise lr decay (timm). Preset: digits none, others 0.5")
    a("--warmup", type=int, help="linear warm-up iterations. Preset: digits 75, others 5120")
    # run
    a("--seed", type=int, default=0, help="seed of the initial labeled set, the weights and the data order")
    a("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    a("--workers", type=int, default=-1, help="data-loading processes; -1: 0 on CPU, 4 on GPU")
    a("--eval-every", type=int, help="evaluate the test set every N iterations of a training, and at its last one "
                                     "(USB's protocol; the curve goes into the result file). Preset: digits 100, "
                                     "others 2048 as USB")
    a("--log-every", type=int, help="append a line to <out>/<name>.log.jsonl every N iterations. Preset: digits 50, "
                                    "others 256 as USB")
    a("--out", default="runs", help="folder for <name>.json results and round0/ checkpoints")
    a("--name", help="run name (default: built from the flags)")
    a("--reuse", action=argparse.BooleanOptionalAction, default=True,
      help="reuse a round-0 model trained with the same flags (it does not depend on --al)")
    a("--skip-existing", action="store_true", help="do nothing if <out>/<name>.json exists (resumable grids)")
    a("--save-features", action="store_true", help="also write <out>/<name>.features.npz: the final model's "
                                                   "features and labels of the unlabeled pool (for the t-SNE of Fig. 3)")
    args = p.parse_args(argv)
    for k, v in PRESETS[args.dataset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.workers < 0:
        args.workers = 0 if args.device == "cpu" else 4
    if args.fa and args.ssl == "supervised":
        p.error("--fa needs unlabeled data: use it with --ssl fixmatch or freematch")
    if args.name is None:
        fa_tag = f"-fa_s{args.lambda_s:g}_c{args.lambda_c:g}_T{args.queue_len}" if args.fa else ""
        args.name = f"{args.dataset}-b{args.budget}-{args.ssl}{fa_tag}-{args.al}-r{args.rounds}-s{args.seed}"
    return args


# ----------------------------------------------------------------------------------------------------------------
# model

def build_model(args, num_classes, img_size):
    """A timm model with a fresh head for num_classes; same seed -> same initial weights."""
    torch.manual_seed(args.seed)
    name, kw = ARCHS.get(args.model, (args.model, {}))
    if args.model not in ARCHS:
        kw = dict(img_size=img_size)
    try:
        try:
            model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes, **kw)
        except TypeError:  # an architecture without img_size (a CNN): its default input handling
            model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise D.DataError(f"unknown --model {args.model!r} (see timm.list_models() or {', '.join(ARCHS)})") from None
        raise
    except OSError as e:  # no network and no cache for --pretrained
        raise D.DataError(f"timm could not fetch pretrained weights for {name} ({str(e).splitlines()[0][:120]}); "
                          f"run once with internet to fill the cache, or pass --weights FILE") from None
    if args.weights:
        load_weights(model, args.weights)
    return model


def load_weights(model, path):
    """Load a local state dict into `model`: unwrap {'model'|'state_dict': ...}, strip 'module.' / 'backbone.'
    prefixes, drop the classifier head, and let timm adapt a ViT (pos_embed resized to the model's token grid,
    patch embedding resampled to its patch size). Prints missing / unexpected keys in one line."""
    if not os.path.isfile(path):
        raise D.DataError(f"--weights file not found: {path} (for CIFAR-100 get USB's "
                          f"vit_small_patch2_32_mlp_im_1k_32.pth from the Semi-supervised-learning releases)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict", "ema_model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    head = model.get_classifier()
    head_keys = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    state = {k: v for k, v in state.items() if k not in head_keys and not k.startswith("head.")}
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(state, strict=False)
    print(f"loaded {path}: {len(state)} tensors; missing {list(missing)}; unexpected {list(unexpected)}")
    return model


def features_and_logits(model, x):
    """g(x) [B, d] (pre-logits features, the input of the linear head W) and W g(x) [B, C] (Eq. 14)."""
    z = model.forward_head(model.forward_features(x), pre_logits=True)
    return z, model.get_classifier()(z)


# ----------------------------------------------------------------------------------------------------------------
# training

def cosine_lr(it, iters, warmup):
    """USB's schedule: linear warm-up, then lr * cos(7 pi k / 16 K) (decays to about 0.2 lr, not to 0)."""
    if it < warmup:
        return (it + 1) / warmup
    k = (it - warmup) / max(1, iters - warmup)
    return max(0.0, math.cos(7 * math.pi * k / 16))


class RunLog:
    """The training log <out>/<name>.log.jsonl: one JSON object a line, flushed at once (`tail -f` works).

    {"event": "start", ...}                                   one per launch: name, rounds, iters, intervals
    {"round": r, "iter": i, "lr": .., "L_l": .., ...}         every --log-every iterations: loss parts and mask
                                                             ratio averaged since the previous line; lr and
                                                             thresholds (tau, tau_min) as they are at iteration i
    {"round": r, "iter": i, "test_acc": a}                    every --eval-every iterations and at the last one
    round r: the training's index, 0 .. R-1 for the query rounds and R (= --rounds) for the final training.
    """

    def __init__(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path, self.f = path, open(path, "w")

    def write(self, **rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


def build_optimizer(args, model):
    """AdamW with timm's layer-wise lr decay and USB's schedule. timm's param groups carry the decay as `lr_scale`,
    which only timm's own schedulers apply; USB sets each group's lr to lr * scale and lets LambdaLR scale that,
    so we do the same (without it --layer-decay would be silently ignored)."""
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=args.lr, weight_decay=args.weight_decay,
                                         layer_decay=args.layer_decay)
    for g in opt.param_groups:
        g["lr"] = args.lr * g.get("lr_scale", 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: cosine_lr(it, args.iters, args.warmup))
    return opt, sched


def train(args, data, labeled, rnd, log=None):
    """Train a fresh model (same initial weights every call) on the labeled indices `labeled` with the SSL
    algorithm and, with --fa, the FA losses. The SSL unlabeled stream is the whole training set. `rnd` is the
    training's index (round r, or --rounds for the final training), used in the log.

    The test set is evaluated every --eval-every iterations and at the last one, as USB does. Evaluation draws
    no random numbers from the training's generators, so it does not change training (tested: the same weights
    with and without it). Returns the model, the SSL algorithm (its state), the FA queues, and a record
    {curve, acc_best, acc_last, test_acc (= acc_last), test_pred_hist (of the last evaluation), train_stats}."""
    dev = torch.device(args.device)
    model = build_model(args, data.num_classes, data.size).to(dev)
    algo = ssl_algos.build_ssl(args.ssl, data.num_classes, args.p_cutoff, args.ema_p, args.ent_loss_ratio)
    opt, sched = build_optimizer(args, model)

    B, Bu = args.batch_size, args.batch_size * args.uratio
    V = data.views
    lb_views = {"weak": V["weak"], "strong": V["strong"]} if args.fa else {"weak": V["weak"]}
    # two streams, labeled (0) and unlabeled (1): which images, and their views, depend on (seed, stream, draw) only
    lb_set = D.Views(data.x_tr, data.y_tr, labeled, lb_views, view_seed=(args.seed, 0))
    streams = [D.loader(lb_set, B, num_samples=args.iters * B, seed=D.mix_seed(args.seed, 0), workers=args.workers)]
    if algo.uses_unlabeled:
        ulb_set = D.Views(data.x_tr, data.y_tr, np.arange(len(data.y_tr)), {"weak": V["weak"], "strong": V["strong"]},
                          view_seed=(args.seed, 1))
        streams.append(D.loader(ulb_set, Bu, num_samples=args.iters * Bu, seed=D.mix_seed(args.seed, 1),
                                workers=args.workers))
    queues, pos_of = None, None
    if args.fa:
        dim = model.num_features
        queues = fa.FeatureQueues(len(labeled), args.queue_len, dim, device=dev)
        pos_of = torch.full((len(data.y_tr),), -1, dtype=torch.long)
        pos_of[torch.as_tensor(labeled)] = torch.arange(len(labeled))  # dataset index -> row of Q_w / Q_s

    model.train()
    desc = f"{'final' if rnd == args.rounds else f'round {rnd}'} train ({len(labeled)} labels)"
    bar = tqdm(zip(*streams), total=args.iters, desc=desc, mininterval=1, dynamic_ncols=True,
               disable=os.environ.get("SSAL_NO_BAR") == "1")
    curve, hist = [], None
    win, n_win, t_win, t_eval = {}, 0, time.time(), 0.0  # sums of the loss parts since the last log line
    mask_sum = torch.zeros((), device=dev)
    for it, batches in enumerate(bar):
        lb = batches[0]
        x_lb, y_lb = lb["weak"].to(dev, non_blocking=True), lb["y"].to(dev, non_blocking=True)
        parts = [x_lb]
        if args.fa:
            parts.append(lb["strong"].to(dev, non_blocking=True))  # x_lb_s: FA's extra forward, fills Q_s
        if algo.uses_unlabeled:
            ulb_b = batches[1]
            parts += [ulb_b["weak"].to(dev, non_blocking=True), ulb_b["strong"].to(dev, non_blocking=True)]
        z, logits = features_and_logits(model, torch.cat(parts))  # one forward for every view
        n_lb = x_lb.shape[0]
        loss_l = ssl_algos.labeled_loss(logits[:n_lb], y_lb)  # L_l, Eq. 1
        loss, terms = loss_l, {"L_l": loss_l.detach()}
        if algo.uses_unlabeled:
            off = 2 * n_lb if args.fa else n_lb
            z_u_w, z_u_s = z[off:].chunk(2)  # [B_u, d] each
            logits_u_w, logits_u_s = logits[off:].chunk(2)
            loss_u, mask, parts_u = algo.unlabeled_loss(logits_u_w, logits_u_s)  # L_u, Eq. 2 (+ fairness)
            loss = loss + args.lambda_u * loss_u
            mask_sum += mask.mean()
            terms.update(parts_u, mask=mask.mean())
            if args.fa:
                queues.update(pos_of[lb["idx"]], z[:n_lb], z[n_lb:2 * n_lb])  # Q_w <- z_lb_w, Q_s <- z_lb_s
                loss_s = fa.similarity_loss(z_u_w, z_u_s, queues.q_w, queues.q_s, queues.filled)  # Eqs. 11-12
                loss_c = fa.contrastive_loss(z_u_s, z_u_w)  # Eq. 18
                loss = loss + args.lambda_s * loss_s + args.lambda_c * loss_c
                terms.update(L_s=loss_s.detach(), L_c=loss_c.detach())
        lr = max(g["lr"] for g in opt.param_groups)  # the base lr of this step (the head's group has scale 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

        n = it + 1  # iterations done
        for k, v in terms.items():  # summed as tensors: no device sync per iteration
            win[k] = win.get(k, 0.0) + v
        n_win += 1
        if n % args.eval_every == 0 or n == args.iters:
            t0 = time.time()
            acc, hist = test_accuracy(model, data, args)
            model.train()
            t_eval += time.time() - t0
            curve.append({"iter": n, "acc": acc})
            if log:
                log.write(round=rnd, iter=n, test_acc=acc)
        if n % args.log_every == 0 or n == args.iters:
            rec = {k: float(v) / n_win for k, v in win.items()}
            sec = (time.time() - t_win - t_eval) / n_win
            if log:
                log.write(round=rnd, iter=n, lr=lr, **rec, **algo.log(), sec_per_iter=sec)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in rec.items()}, **{k: f"{v:.3f}" for k, v in algo.log().items()},
                             "acc": f"{curve[-1]['acc']:.3f}" if curve else "-"}, refresh=False)
            win, n_win, t_win, t_eval = {}, 0, time.time(), 0.0
    bar.close()
    stats = {"mask_ratio": float(mask_sum) / max(1, args.iters) if algo.uses_unlabeled else None, **algo.log()}
    accs = [p["acc"] for p in curve]
    rec = {"curve": curve, "acc_best": max(accs), "acc_last": accs[-1], "test_acc": accs[-1], "test_pred_hist": hist,
           "train_stats": stats}
    return model, algo, queues, rec


# ----------------------------------------------------------------------------------------------------------------
# evaluation and features

@torch.no_grad()
def run_model(model, dataset, args, batch_size=256):
    """Features [N, d] and logits [N, C] of a dataset's first view, in dataset order, model in eval mode."""
    model.eval()
    dev = torch.device(args.device)
    zs, ls = [], []
    for b in D.loader(dataset, batch_size, workers=args.workers):
        x = next(v for k, v in b.items() if k not in ("idx", "y"))
        z, lg = features_and_logits(model, x.to(dev))
        zs.append(z)
        ls.append(lg)
    return torch.cat(zs), torch.cat(ls)


def test_accuracy(model, data, args):
    """Top-1 accuracy on the test set, and the histogram of predicted classes (a collapse shows there)."""
    _, logits = run_model(model, D.Views(data.x_te, data.y_te, np.arange(len(data.y_te)),
                                         {"plain": data.views["plain"]}), args)
    pred = logits.argmax(1).cpu()
    acc = (pred == torch.as_tensor(data.y_te)).sum().item() / len(data.y_te)
    return acc, torch.bincount(pred, minlength=data.num_classes).tolist()


class InputsOnly:
    """Iterates (x,) batches of a Views dataset: the pool loader that noise stability reads."""

    def __init__(self, dataset, args):
        self.dataset, self.args = dataset, args

    def __iter__(self):
        for b in D.loader(self.dataset, 256, workers=self.args.workers):
            yield (b["weak"],)


def weak_view_set(data, indices, args, rnd):
    """Training images `indices` under one weak view each, fixed by (seed, round, image): what selection reads."""
    return D.Views(data.x_tr, data.y_tr, indices, {"weak": data.views["weak"]}, view_seed=(args.seed, 2, rnd))


def select(args, data, model, labeled, rnd):
    """Features of the labeled set and of the pool under one fixed weak view per sample, then the AL strategy.
    Returns the selected dataset indices and the feature / select wall times."""
    pool = D.pool_of(len(data.y_tr), labeled)
    if args.budget > len(pool):
        raise D.DataError(f"--budget {args.budget} is larger than the {len(pool)} images left in the pool")
    t0 = time.time()
    pool_set = weak_view_set(data, pool, args, rnd)
    feats_lb, _ = run_model(model, weak_view_set(data, labeled, args, rnd), args)  # [N_l, d]
    feats_pool, _ = run_model(model, pool_set, args)  # [N_p, d]
    t1 = time.time()
    ctx = dict(feats_lb=feats_lb, labels_lb=torch.as_tensor(data.y_tr[labeled], device=feats_lb.device),
               feats_pool=feats_pool, head=model.get_classifier(), model=model,
               pool_loader=InputsOnly(pool_set, args), num_classes=data.num_classes, seed=args.seed + rnd)
    with torch.enable_grad():  # AlphaMix differentiates the head
        pos = np.asarray(al_strategies.select(args.al, args.budget, ctx))
    t2 = time.time()
    return pool[pos], t1 - t0, t2 - t1


# ----------------------------------------------------------------------------------------------------------------
# round-0 reuse and results

ROUND0_FLAGS = ("dataset", "budget", "seed", "ssl", "fa", "lambda_s", "lambda_c", "queue_len", "p_cutoff", "ema_p",
                "ent_loss_ratio", "lambda_u", "model", "pretrained", "weights", "iters", "batch_size", "uratio",
                "lr", "weight_decay", "layer_decay", "warmup", "eval_every")  # eval_every: the saved curve


def round0_path(args):
    """Round 0 trains on the seeded initial set whatever --al is: key its checkpoint by every flag it reads."""
    key = {k: getattr(args, k) for k in ROUND0_FLAGS}
    if not args.fa:  # FA weights do not matter without --fa
        for k in ("lambda_s", "lambda_c", "queue_len"):
            key.pop(k)
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(args.out, "round0", f"{args.dataset}-b{args.budget}-{args.ssl}{'-fa' if args.fa else ''}"
                                            f"-s{args.seed}-{h}.pt")


def atomic_save(obj, path, as_json=False):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    if as_json:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def train_round(args, data, labeled, rnd, log):
    """Train for round `rnd`; round 0 is loaded from / saved to its checkpoint when --reuse. Returns the model
    and the round's record (curve, accuracies, train stats, reused, time_train)."""
    path = round0_path(args) if rnd == 0 and args.reuse else None
    if path and os.path.isfile(path):
        model = build_model(args, data.num_classes, data.size).to(args.device)
        ck = torch.load(path, map_location=args.device, weights_only=False)
        model.load_state_dict(ck["model"])
        print(f"round 0: reusing {path}")
        log.write(event="reused", round=0, path=path)
        return model, {**ck["record"], "reused": True, "time_train": 0.0}
    t0 = time.time()
    model, algo, queues, rec = train(args, data, labeled, rnd, log)
    rec["time_train"] = time.time() - t0
    if path:
        atomic_save({"model": model.state_dict(), "ssl": algo.state_dict(), "record": rec,
                     "queues": queues.state_dict() if queues else None,
                     "config": {k: getattr(args, k) for k in ROUND0_FLAGS}}, path)
    return model, rec


def main(argv=None):
    args = get_args(argv)
    path = os.path.join(args.out, f"{args.name}.json")
    if args.skip_existing and os.path.isfile(path):
        print(f"{path} exists: skipped")
        return json.load(open(path))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = D.Data(args.dataset, args.data_dir, args.download)
    labeled = D.initial_split(data.y_tr, args.budget, data.num_classes, args.seed)
    print(f"{args.name}: {len(data.y_tr)} train / {len(data.y_te)} test images, {data.num_classes} classes, "
          f"{len(labeled)} initial labels, device {args.device}")
    res = {"config": vars(args).copy(), "rounds": []}
    log = RunLog(os.path.join(args.out, f"{args.name}.log.jsonl"))
    log.write(event="start", name=args.name, rounds=args.rounds, iters=args.iters, eval_every=args.eval_every,
              log_every=args.log_every, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    t_start = time.time()
    for rnd in range(args.rounds):
        model, rec = train_round(args, data, labeled, rnd, log)
        sel, t_feat, t_sel = select(args, data, model, labeled, rnd)
        assert len(np.unique(sel)) == args.budget and not np.isin(sel, labeled).any()
        res["rounds"].append({
            "round": rnd, "num_labeled": len(labeled), **rec,
            "selected": sel.tolist(),
            "selected_hist": np.bincount(data.y_tr[sel], minlength=data.num_classes).tolist(),
            "time_features": t_feat, "time_select": t_sel})
        print(f"round {rnd}: {len(labeled)} labels, test acc {rec['acc_last']:.4f} (best {rec['acc_best']:.4f}); "
              f"{args.al} selected {len(sel)} ({len(np.unique(data.y_tr[sel]))} classes) in {t_feat:.1f}s features "
              f"+ {t_sel:.1f}s select")
        labeled = np.sort(np.concatenate([labeled, sel]))
    t0 = time.time()
    model, _, _, rec = train(args, data, labeled, args.rounds, log)
    log.close()
    rec["time_train"] = time.time() - t0
    acc = rec["acc_last"]
    # final_acc: the last evaluation (what a user without a test set gets); final_best_acc: the best of the curve
    # (USB's reported number, selected on the test set)
    res.update(final={"num_labeled": len(labeled), **rec}, final_acc=acc, final_best_acc=rec["acc_best"],
               time_total=time.time() - t_start)
    if args.save_features:  # Fig. 3: final-model features of the images still unlabeled, one weak view each
        pool = D.pool_of(len(data.y_tr), labeled)
        z, _ = run_model(model, weak_view_set(data, pool, args, args.rounds), args)
        np.savez_compressed(os.path.join(args.out, f"{args.name}.features.npz"), feats=z.cpu().numpy(),
                            labels=data.y_tr[pool], idx=pool)
    atomic_save(res, path, as_json=True)
    print(f"final: {len(labeled)} labels, test accuracy {acc:.4f} ({100 * acc:.2f}%), best {rec['acc_best']:.4f} "
          f"at iteration {max(rec['curve'], key=lambda p: p['acc'])['iter']}; wrote {path}")
    return res


if __name__ == "__main__":
    try:
        main()
    except D.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
