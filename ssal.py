"""Semi-supervised active learning with feature re-alignment (Fig. 1 of the paper), one query round after another:

    round r = 0 .. R-1:  SSL training on the labeled set L_r (+ FA)  ->  features under the weak view
                         ->  AL selects `budget` pool images  ->  L_{r+1} = L_r + selection
    then:                SSL training on L_R  ->  test accuracy (the number of Table 1)

    python ssal.py                                    # the embedded demo: digits, 20 labels + 20 selected, CPU
    python ssal.py --dataset cifar100 --budget 100 --ssl freematch --al alphamix --fa

Every round trains from the same initial weights (same seed), as in the usual AL protocol, so that the rounds
differ only by their labeled set. Flags left unset take the dataset's preset (PRESETS below).
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import numpy as np
import timm
import timm.optim
import torch
from tqdm import tqdm

import al_strategies
import data as D
import diagnostics as G
import fa
import runstate
import ssl_algos
from model import ARCHS, build_model, features_and_logits  # noqa: F401 (ssal.build_model for the tests)

# ----------------------------------------------------------------------------------------------------------------
# presets: the only place where dataset-dependent defaults live

# The digits ViT's pretrained start, made by pretrain.py (printed characters, then SimCLR on the unlabeled digits
# training images) and committed; runstate.weights_file finds it from any working folder.
DIGITS_WEIGHTS = os.path.join("weights", "vit_tiny_digits.pt")
FASHION_WEIGHTS = os.path.join("weights", "vit_tiny_fashionmnist.pt")  # SimCLR on its training images (pretrain.py)
HERE = os.path.dirname(os.path.abspath(__file__))

# CIFAR-100 / TinyImageNet follow USB's FreeMatch ViT config for CIFAR-100 (AdamW, lr 5e-4, layer decay 0.5,
# weight decay 5e-4, batch 8, uratio 1, 204,800 iterations with 5,120 warm-up). digits is CPU-sized.
PRESETS = {
    "digits": dict(model="vit_tiny_digits", weights=DIGITS_WEIGHTS, budget=20, iters=500, batch_size=16, uratio=3,
                   lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=25, ema_p=0.9, eval_every=50, log_every=25,
                   probe=500, val_size=0),
    "cifar100": dict(model="vit_small_patch2_32", weights=None, budget=100, iters=204800, batch_size=8, uratio=1,
                     lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=5120, ema_p=0.999, eval_every=2048,
                     log_every=256, probe=2000, val_size=0),
    "tinyimagenet": dict(model="vit_small_patch4_64", weights=None, budget=200, iters=204800, batch_size=8, uratio=1,
                         lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=5120, ema_p=0.999, eval_every=2048,
                         log_every=256, probe=2000, val_size=0),
    # Fashion-MNIST fine-tunes its own SimCLR start as digits does; 28x28 padded to 32x32, so the digits ViT's 4x4
    # grid of 8x8 patches. Iterations chosen on validation; the regime criteria met (docs/fashionmnist.md).
    "fashionmnist": dict(model="vit_tiny_digits", weights=FASHION_WEIGHTS, budget=10, iters=1500, batch_size=16,
                         uratio=3, lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=75, ema_p=0.9, eval_every=100,
                         log_every=50, probe=2000, val_size=1000),
}
# --scratch: a random initialisation instead of the pretrained start (digits: its regime before the start, which
# needs 3x the iterations; fashionmnist: the same schedule, without layer decay)
SCRATCH_PRESETS = {"digits": dict(weights=None, budget=10, iters=1500, lr=1e-3, layer_decay=None, warmup=75,
                                  eval_every=100, log_every=50),
                   "fashionmnist": dict(weights=None, lr=1e-3, layer_decay=None)}
# USB evaluates every num_eval_iter = 2,048 iterations and logs every num_log_iter = 256; digits evaluates 10 times
# per training and logs 20 times (from scratch: 15 and 30).
# digits fine-tunes its start as USB fine-tunes its ViT (lr 5e-4, layer decay 0.5, warm-up 5%); why 500 iterations,
# ema_p 0.9 (not 0.999) and budget 20, with the measurements: docs/digits.md.


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints the usage and the message)
        print(f"error: {message} (python ssal.py --help lists the flags)", file=sys.stderr)
        sys.exit(2)


def preset_help(key):
    """'Preset: digits, fashionmnist 16; cifar100, tinyimagenet 8 (--scratch: ...)': a flag's preset values, read
    from PRESETS and SCRATCH_PRESETS so that --help never goes stale."""
    def show(v):
        if isinstance(v, float) and 0 < abs(v) < 0.01:
            return np.format_float_scientific(v, trim="-", exp_digits=1)  # 5e-4
        return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    groups = {}
    for ds, preset in PRESETS.items():
        groups.setdefault(show(preset[key]), []).append(ds)
    text = "Preset: " + "; ".join(f"{', '.join(dss)} {v}" for v, dss in groups.items())
    scratch = [f"{ds} {show(sp[key])}" for ds, sp in SCRATCH_PRESETS.items() if key in sp]
    return text + (f" (--scratch: {', '.join(scratch)})" if scratch else "")


def get_args(argv=None):
    p = Parser(description="SSL + AL with feature re-alignment (one or more query rounds).")
    a = p.add_argument
    # data
    a("--dataset", default="digits", choices=list(D.DATASETS), help="digits ships with scikit-learn (the CPU demo)")
    a("--data-dir", default="./data", help="folder holding cifar-100-python/, tiny-imagenet-200/ or FashionMNIST/raw/")
    a("--download", action="store_true", help="let torchvision download CIFAR-100 / Fashion-MNIST into --data-dir")
    a("--budget", type=int, help="initial labeled images AND images selected per round (#100 in Table 1); a "
                                 "multiple of the classes. " + preset_help("budget"))
    a("--rounds", type=int, default=1, help="query rounds (the paper runs one)")
    # algorithms
    a("--ssl", default="freematch", choices=ssl_algos.SSL_NAMES, help="training algorithm")
    a("--al", default="random", choices=al_strategies.NAMES, help="selection strategy")
    a("--noise-subset", type=int, default=25000, help="noise stability's candidates: a random subset of N pool "
      "images when the pool is larger, as its authors' CIFAR-100 config (SUBSET = 25000); 0: the whole pool")
    a("--fa", action="store_true", help="add the feature re-alignment losses lambda_s * L_s + lambda_c * L_c")
    a("--lambda-s", type=float, default=1.0, help="weight of the similarity loss L_s (Eq. 12); 0 turns it off")
    a("--lambda-c", type=float, default=0.01, help="weight of the contrastive loss L_c (Eq. 18); 0 turns it off")
    a("--queue-len", type=int, default=10, help="T, strong views kept per labeled sample in Q_s (Sec. 4.4)")
    # FA's readings where the paper is silent (fa.READINGS; the default is the first reading of each)
    a("--ls-samples", default="all", choices=("all", "masked"), help="L_s over every unlabeled sample (Eq. 12 is "
      "per sample), or over those the SSL mask passes (Fig. 1 adds L_s 'when calculating the loss L_u')")
    a("--lc-norm", default="batch", choices=("batch", "unit"), help="L_c's features standardised per dimension over "
      "the batch (Barlow Twins [52]), or each scaled to unit norm ('normalized to a modulus of 1', Sec. 3.5; "
      "then lambda_c 0.5 matches L_s's scale)")
    a("--lc-views", default="unlabeled", choices=("unlabeled", "all"), help="L_c's statistics over the unlabeled "
      "strong / weak pairs, or over those and the labeled pairs (the paper does not say)")
    a("--fa-trainings", default="all", choices=("all", "query"), help="FA in every training, or only in those that "
      "end in a selection (Fig. 1: FA trains the model that selects; 'SSL is reapplied' after it)")
    a("--fa-warmup", type=int, default=0, help="lambda_s and lambda_c ramp linearly from 0 over the first N "
      "iterations of a training (the paper does not say; 0: full weight from the first)")
    a("--p-cutoff", type=float, default=0.95, help="FixMatch's fixed threshold tau")
    a("--ema-p", type=float, help="FreeMatch's EMA momentum for its thresholds. " + preset_help("ema_p"))
    a("--ent-loss-ratio", type=float, default=0.001, help="FreeMatch's fairness-loss weight")
    a("--lambda-u", type=float, default=1.0, help="weight of the unlabeled consistency loss L_u")
    # model
    a("--model", help=f"a timm model name, or one of {', '.join(ARCHS)}. " + preset_help("model"))
    a("--pretrained", action="store_true", help="start from timm's own pretrained weights (needs internet or "
                                                "the timm/Hugging Face cache)")
    a("--weights", help="a local state dict to start from (timm format, or a {'model': state} checkpoint such as "
                        "USB's vit_small_patch2_32_mlp_im_1k_32.pth); the classifier head is dropped; digits' and "
                        "fashionmnist's are made by pretrain.py. " + preset_help("weights"))
    a("--scratch", action="store_true", help="start from a random initialisation with the dataset's from-scratch "
                                           "preset (the --scratch values in the flags below; digits: the regime "
                                           "before its pretrained start)")
    # optimisation
    a("--iters", type=int, help="training iterations per round. " + preset_help("iters"))
    a("--batch-size", type=int, help="labeled batch B. " + preset_help("batch_size"))
    a("--uratio", type=int, help="unlabeled batch = uratio * B. " + preset_help("uratio"))
    a("--lr", type=float, help="AdamW learning rate, cosine decay. " + preset_help("lr"))
    a("--weight-decay", type=float, help="AdamW weight decay. " + preset_help("weight_decay"))
    a("--layer-decay", type=float, help="layer-wise lr decay (timm). " + preset_help("layer_decay"))
    a("--warmup", type=int, help="linear warm-up iterations. " + preset_help("warmup"))
    a("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
      help="mixed precision for the forward pass and the losses (FA's statistics and FreeMatch's EMAs stay float32; "
           "fp16 uses a GradScaler). auto = none: float32 on every device, as USB trains (amp: False). Measured "
           "(bench.py train, s/it): on one H200 bf16 is slower without FA (0.035 against float32's 0.030, paper "
           "setting) and faster with it (0.034 against 0.046); on 2 CPU cores slower (digits 0.066 / 0.106 against "
           "0.052 / 0.075)")
    # run
    a("--seed", type=int, default=0, help="seed of the initial labeled set, the weights and the data order")
    a("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    a("--workers", type=int, default=-1, help="data-loading processes; -1: 0 on CPU, 4 on GPU")
    a("--eval-every", type=int, help="evaluate the test set every N iterations of a training, and at its last one "
                                     "(USB's protocol, 2048; the curve goes into the result file). " +
                                     preset_help("eval_every"))
    a("--log-every", type=int, help="append a line to <out>/<name>.log.jsonl every N iterations (USB: 256). " +
                                    preset_help("log_every"))
    a("--ckpt-every", type=int, help="save <out>/ckpt/<name>.pt, the whole run state, every N iterations (deleted "
                                     "when the result is written). Preset: the evaluation interval")
    a("--resume", action=argparse.BooleanOptionalAction, default=True,
      help="continue from <out>/ckpt/<name>.pt when it exists (the same command resumes a stopped run); "
           "--no-resume starts over")
    a("--out", default="runs", help="folder for <name>.json results, logs, ckpt/ and round0/ checkpoints")
    a("--name", help="run name (default: built from the flags)")
    a("--reuse", action=argparse.BooleanOptionalAction, default=True,
      help="reuse a round-0 model trained with the same flags (it does not depend on --al)")
    a("--skip-existing", action="store_true", help="do nothing if <out>/<name>.json exists (resumable grids)")
    a("--val-size", type=int, help="hold N training images out (stratified, the same for every seed): evaluated "
      "beside the test set (val_curve), for choosing settings; its labels cost annotation. 0: none. " +
      preset_help("val_size"))
    a("--probe", type=int, help="measure the paper's FA quantities (diagnostics.py) at every evaluation on N training "
                                "images, their labels read for the measures only; 0 turns it off. " +
                                preset_help("probe"))
    a("--save-features", action="store_true", help="also write <out>/<name>.features.npz: the final model's "
                                                   "features and labels of the unlabeled pool (for the t-SNE of Fig. 3)")
    args = p.parse_args(argv)
    if args.scratch and (args.weights is not None or args.pretrained):
        p.error("--scratch starts from a random initialisation: drop --weights / --pretrained")
    preset = {**PRESETS[args.dataset], **(SCRATCH_PRESETS.get(args.dataset, {}) if args.scratch else {})}
    if args.pretrained:  # timm's weights replace the preset's
        preset["weights"] = None
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.ckpt_every is None:
        args.ckpt_every = args.eval_every
    runstate.check_flags(args, p.error)  # every value a flag can take wrongly: one line, exit 2
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp == "auto":  # the protocol the runs reproduce: float32 (bf16 / fp16 are one flag away)
        args.amp = "none"
    if args.workers < 0:
        args.workers = 0 if args.device == "cpu" else 4
    if args.name is None:
        fa_tag = f"-{fa.variant(vars(args))}" if args.fa else ""  # a reading's tag only when not the default
        start = "-scratch" if args.scratch and PRESETS[args.dataset]["weights"] else ""
        val = f"-val{args.val_size}" if args.val_size else ""
        args.name = (f"{args.dataset}{start}-b{args.budget}{val}-{args.ssl}{fa_tag}-{args.al}-r{args.rounds}"
                     f"-s{args.seed}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# training

def cosine_lr(it, iters, warmup):
    """USB's schedule: linear warm-up, then lr * cos(7 pi k / 16 K) (decays to about 0.2 lr, not to 0)."""
    if it < warmup:
        return (it + 1) / warmup
    k = (it - warmup) / max(1, iters - warmup)
    return max(0.0, math.cos(7 * math.pi * k / 16))


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


def autocast(args):
    """--amp: the forward pass and the losses in bfloat16 / float16 where it is safe (torch.autocast); FA's
    statistics and FreeMatch's EMA estimates are computed in float32 inside fa.py / ssl_algos.py."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    return torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None)


def forward_losses(args, model, algo, queues, pos_of, batches, normalize, fa_scale=1.0):
    """One training step's forward pass and losses. batches: the labeled batch, then the unlabeled one if the SSL
    algorithm reads it (uint8 views; `normalize` turns them into the model's input on the device). Returns the
    total loss (a scalar with a graph) and its detached terms (the log's parts)."""
    dev = torch.device(args.device)
    lb = batches[0]
    y_lb = lb["y"].to(dev, non_blocking=True)
    n_lb = y_lb.shape[0]
    views = [lb["weak"]]  # x_lb
    if args.fa:
        views.append(lb["strong"])  # x_lb_s: FA's extra forward, fills Q_s
    # Without FA, x_ulb_w only gives pseudo-labels and the mask (detached in Eq. 2): forwarded without a graph, it
    # gives USB's values with a third less backward. FA's L_s and L_c differentiate through z_u_w: one forward.
    weak_apart = algo.uses_unlabeled and not args.fa
    if algo.uses_unlabeled:
        views += [batches[1]["strong"]] if weak_apart else [batches[1]["weak"], batches[1]["strong"]]
    x = normalize(torch.cat(views).to(dev, non_blocking=True))  # [B + (B) + (B_u) + B_u, 3, H, W]
    z, logits = features_and_logits(model, x)  # one forward for every view that needs a gradient
    loss_l = ssl_algos.labeled_loss(logits[:n_lb], y_lb)  # L_l, Eq. 1
    loss, terms = loss_l, {"L_l": loss_l.detach()}
    if algo.uses_unlabeled:
        off = 2 * n_lb if args.fa else n_lb
        if weak_apart:
            with torch.no_grad():
                _, logits_u_w = features_and_logits(model, normalize(batches[1]["weak"].to(dev, non_blocking=True)))
            logits_u_s = logits[off:]
        else:
            z_u_w, z_u_s = z[off:].chunk(2)  # [B_u, d] each
            logits_u_w, logits_u_s = logits[off:].chunk(2)
        loss_u, mask, parts_u = algo.unlabeled_loss(logits_u_w, logits_u_s)  # L_u, Eq. 2 (+ fairness)
        loss = loss + args.lambda_u * loss_u
        terms.update(parts_u, mask=mask.mean())
        if args.fa:
            queues.update(pos_of[lb["idx"]], z[:n_lb], z[n_lb:2 * n_lb])  # Q_w <- z_lb_w, Q_s <- z_lb_s
            ls_mask = mask if args.ls_samples == "masked" else None
            loss_s = fa.similarity_loss(z_u_w, z_u_s, queues.q_w, queues.q_s, queues.filled, ls_mask)  # Eqs. 11-12
            zc_s, zc_w = (z_u_s, z_u_w) if args.lc_views == "unlabeled" else \
                (torch.cat([z_u_s, z[n_lb:2 * n_lb]]), torch.cat([z_u_w, z[:n_lb]]))  # + the labeled pairs
            loss_c = fa.contrastive_loss(zc_s, zc_w, norm=args.lc_norm)  # Eq. 18
            loss = loss + fa_scale * (args.lambda_s * loss_s + args.lambda_c * loss_c)
            terms.update(L_s=loss_s.detach(), L_c=loss_c.detach())
    return loss, terms


def setup_training(args, data, labeled):
    """What a training is made of: a fresh model (the same initial weights for every call with the same seed), the
    SSL algorithm, AdamW and its schedule, the GradScaler (a no-op unless --amp fp16), and with --fa the queues
    Q_w / Q_s and pos_of (dataset index -> row of the queues)."""
    dev = torch.device(args.device)
    model = build_model(args, data.num_classes, data.size).to(dev)
    algo = ssl_algos.build_ssl(args.ssl, data.num_classes, args.p_cutoff, args.ema_p, args.ent_loss_ratio)
    opt, sched = build_optimizer(args, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=args.amp == "fp16")
    queues, pos_of = None, None
    if args.fa:
        queues = fa.FeatureQueues(len(labeled), args.queue_len, model.num_features, device=dev)
        pos_of = torch.full((len(data.y_tr),), -1, dtype=torch.long)
        pos_of[torch.as_tensor(labeled)] = torch.arange(len(labeled))  # dataset index -> row of Q_w / Q_s
    return SimpleNamespace(model=model, algo=algo, opt=opt, sched=sched, scaler=scaler, queues=queues, pos_of=pos_of)


def train_step(args, tr, batches, normalize, it=0):
    """Iteration `it` (0-based) on a setup_training() `tr`: forward and losses under autocast, then backward, the
    AdamW step and the schedule's step, unless the loss is not finite (then no step is taken and lr is None).
    Returns the loss, its detached terms and the base lr of the step."""
    fa_scale = min(1.0, it / args.fa_warmup) if args.fa_warmup else 1.0  # --fa-warmup: lambda_s, lambda_c ramp
    with autocast(args):
        loss, terms = forward_losses(args, tr.model, tr.algo, tr.queues, tr.pos_of, batches, normalize, fa_scale)
    if not torch.isfinite(loss):
        return loss, terms, None
    lr = max(g["lr"] for g in tr.opt.param_groups)  # the base lr of this step (the head's group has scale 1)
    tr.opt.zero_grad(set_to_none=True)
    tr.scaler.scale(loss).backward()  # the scaler is a no-op unless --amp fp16
    tr.scaler.step(tr.opt)
    tr.scaler.update()
    tr.sched.step()
    return loss, terms, lr


def train(args, data, labeled, rnd, log=None, ck=None, resume=None):
    """Train a fresh model (same initial weights every call) on the labeled indices `labeled` with the SSL
    algorithm (+ FA); the unlabeled stream is the whole training set; `rnd` is the training's index in the log.
    The test set is evaluated every --eval-every iterations and at the last one, as USB does (drawing no random
    number training uses: tested). With a checkpointer `ck` the whole state is saved every --ckpt-every
    iterations, and `resume` continues from such a state exactly. A non-finite loss or a signal raises Stop.
    Returns the setup_training() namespace and the record {curve, acc_best, acc_last, test_acc (= acc_last),
    test_pred_hist (of the last evaluation), train_stats, time_train}."""
    if args.fa and args.fa_trainings == "query" and rnd == args.rounds:  # no selection follows: plain SSL
        args = argparse.Namespace(**{**vars(args), "fa": False})
    dev = torch.device(args.device)
    tr = setup_training(args, data, labeled)
    model, algo = tr.model, tr.algo
    # the loop's own state (in a checkpoint besides the modules): iterations done, the curve, the last test
    # prediction histogram, the mask ratio's sum, time spent, and the log window's sums (win, n_win)
    S = dict(n=0, curve=[], val_curve=[], diag_curve=[], hist=None, win={}, n_win=0, mask_sum=torch.zeros((), device=dev),
             time=0.0, time_probe=0.0)
    if resume:
        S.update(runstate.restore_training(tr, resume))
    start = S["n"]
    streams = D.training_streams(data, labeled, args, algo.uses_unlabeled, start)
    x_te = D.test_images(data, args.workers)  # uint8 [N_te, 3, H, W], once per training
    x_val = D.test_images(data, args.workers, "val") if args.val_size else None
    probe = G.Probe(data, args.probe, args.seed, labeled, args.queue_len, args.workers, S["time_probe"]) \
        if args.probe else None
    model.train()
    desc = f"{'final' if rnd == args.rounds else f'round {rnd}'} train ({len(labeled)} labels)"
    bar = tqdm(zip(*streams), total=args.iters, initial=start, desc=desc, mininterval=1, dynamic_ncols=True,
               disable=os.environ.get("SSAL_NO_BAR") == "1")
    t_run = time.time()
    window = runstate.LogWindow(S.pop("win"), S.pop("n_win"))
    for it, batches in enumerate(bar, start=start):
        loss, terms, lr = train_step(args, tr, batches, data.normalize, it)
        if "mask" in terms:
            S["mask_sum"] += terms["mask"]
        if lr is None:  # diverged: no step was taken; the last checkpoint stays
            bar.close()
            raise runstate.diverged(args, rnd, it + 1, terms, ck)
        n = S["n"] = it + 1  # iterations done
        window.add(terms)
        if n % args.eval_every == 0 or n == args.iters:  # USB's periodic evaluation (+ validation and probe)
            t0 = time.time()
            acc, S["hist"] = test_accuracy(model, x_te, data.y_te, data, args)
            S["curve"].append({"iter": n, "acc": acc})
            extra = {}  # the evaluation line's other measures
            if x_val is not None:
                extra["val_acc"] = test_accuracy(model, x_val, data.y_val, data, args)[0]
                S["val_curve"].append({"iter": n, "acc": extra["val_acc"]})
            if probe:  # the paper's FA quantities (diagnostics.py)
                extra["probe"] = probe.measure(lambda x: run_model(model, x, data, args),
                                               model.get_classifier().weight, algo.threshold)
                S["diag_curve"].append({"iter": n, **extra["probe"]})
            model.train()
            window.leave_out(time.time() - t0)  # sec_per_iter counts training only
            if log:
                log.write(round=rnd, iter=n, test_acc=acc, **extra)
        if n % args.log_every == 0 or n == args.iters:
            rec, sec = window.flush()  # the loss parts and mask ratio averaged since the previous line
            if log:
                log.write(round=rnd, iter=n, lr=lr, **rec, **algo.log(), sec_per_iter=sec)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in {**rec, **algo.log()}.items()},
                             "acc": f"{S['curve'][-1]['acc']:.3f}" if S["curve"] else "-"}, refresh=False)
        if ck and n < args.iters and (n % args.ckpt_every == 0 or runstate.STOP["signal"]):
            loop = {**S, **window.state_dict(), "time": S["time"] + time.time() - t_run,
                    "time_probe": probe.seconds if probe else 0.0}
            ck.save(rnd, train=runstate.training_state(tr, loop))
            if runstate.STOP["signal"]:
                bar.close()
                raise runstate.Stop(ck.stopped(rnd, n), code=143)
    bar.close()
    curve = S["curve"]
    stats = {"mask_ratio": float(S["mask_sum"]) / max(1, args.iters) if algo.uses_unlabeled else None, **algo.log()}
    accs = [p["acc"] for p in curve]
    rec = {"curve": curve, "acc_best": max(accs), "acc_last": accs[-1], "test_acc": accs[-1],
           "test_pred_hist": S["hist"], "train_stats": stats, "time_train": S["time"] + time.time() - t_run}
    if x_val is not None:  # acc_val: the test accuracy where the validation accuracy is best (the later of ties)
        best = max(range(len(curve)), key=lambda i: (S["val_curve"][i]["acc"], i))
        rec.update(val_curve=S["val_curve"], acc_val=curve[best]["acc"])
    if probe:
        rec.update(diag_curve=S["diag_curve"], time_probe=probe.seconds)
    rec["collapsed"] = G.collapsed(S["hist"], runstate.training_name(rnd, args))  # one class for >= 90%: warned
    return tr, rec


# ----------------------------------------------------------------------------------------------------------------
# evaluation and features

@torch.no_grad()
def run_model(model, x, data, args):
    """Features [N, d] and logits [N, C] of uint8 images x [N, 3, H, W], in order, model in eval mode."""
    model.eval()
    zs, ls = [], []
    for (xb,) in D.Batches(x, data.normalize, args.device):
        with autocast(args):
            z, lg = features_and_logits(model, xb)
        zs.append(z.float())
        ls.append(lg.float())
    return torch.cat(zs), torch.cat(ls)


def test_accuracy(model, x, y, data, args):
    """Top-1 accuracy on the images x (D.test_images) of labels y, and the histogram of the predicted classes."""
    _, logits = run_model(model, x, data, args)
    pred = logits.argmax(1).cpu()
    acc = (pred == torch.as_tensor(y)).sum().item() / len(y)
    return acc, torch.bincount(pred, minlength=data.num_classes).tolist()


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
    x_pool = D.view_tensor(weak_view_set(data, pool, args, rnd), args.workers)  # uint8 [N_p, 3, H, W], fixed views
    x_lb = D.view_tensor(weak_view_set(data, labeled, args, rnd), args.workers)  # uint8 [N_l, 3, H, W]
    feats_lb, _ = run_model(model, x_lb, data, args)  # [N_l, d]
    feats_pool, _ = run_model(model, x_pool, data, args)  # [N_p, d]
    t1 = time.time()
    ctx = dict(feats_lb=feats_lb, labels_lb=torch.as_tensor(data.y_tr[labeled], device=feats_lb.device),
               feats_pool=feats_pool, head=model.get_classifier(), model=model,
               pool_loader=D.Batches(x_pool, data.normalize, args.device), num_classes=data.num_classes, seed=args.seed + rnd,
               noise_subset=args.noise_subset)
    with torch.enable_grad():  # AlphaMix differentiates the head
        pos = np.asarray(al_strategies.select(args.al, args.budget, ctx))
    t2 = time.time()
    return pool[pos], t1 - t0, t2 - t1


# ----------------------------------------------------------------------------------------------------------------
# Fig. 1's loop

def train_round(args, data, labeled, rnd, log, ck=None, resume=None):
    """SSL training (+ FA) of round `rnd` on the labeled set. Round 0 does not depend on --al: with --reuse it is
    loaded from / saved to <out>/round0/ (an unreadable file is named in a warning and trained again). A `resume`
    state {"done": True, ...} is a training that ended before a stop: its model and record are returned as they
    were. Returns the model and the training's record."""
    if resume and resume.get("done"):
        model = build_model(args, data.num_classes, data.size).to(args.device)
        model.load_state_dict(resume["model"])
        runstate.set_rng_states(resume["rng"])
        return model, resume["record"]
    path = runstate.round0_path(args) if rnd == 0 and args.reuse else None
    if path and os.path.isfile(path):
        model = build_model(args, data.num_classes, data.size).to(args.device)
        rec = runstate.load_round0(path, model)
        if rec is not None:
            print(f"round 0: reusing {path}")
            log.write(event="reused", round=0, path=path)
            return model, {**rec, "reused": True, "time_train": 0.0}
    tr, rec = train(args, data, labeled, rnd, log, ck, resume)
    if path:
        runstate.save_round0(path, tr, rec, args)
    return tr.model, rec


def main(argv=None):
    args = get_args(argv)
    path = os.path.join(args.out, f"{args.name}.json")
    if args.skip_existing and os.path.isfile(path):
        print(f"{path} exists: skipped")
        return json.load(open(path))
    runstate.check_device_and_out(args)  # what a flag names must exist and work before any data is loaded:
    build_model(args, *D.DATASETS[args.dataset][:2])  # the model and its weights, built once on the CPU
    saved = runstate.load_checkpoint(runstate.checkpoint_path(args), args) if args.resume else None
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = D.Data(args.dataset, args.data_dir, args.download)
    val = D.hold_out(data, args.val_size) if args.val_size else None  # out of the pool and the unlabeled stream
    labeled = D.initial_split(data.y_tr, args.budget, data.num_classes, args.seed)  # L_0: budget / C per class
    if args.budget * (args.rounds + 1) > len(data.y_tr):
        raise D.DataError(f"--budget {args.budget} x (--rounds {args.rounds} + 1) is more than the "
                          f"{len(data.y_tr)} training images")
    print(f"{args.name}: {len(data.y_tr)} train / {len(data.y_te)} test images, {data.num_classes} classes, "
          f"{len(labeled)} initial labels, device {args.device}")
    res, labeled, rnd0, state, log = runstate.open_run(args, saved, labeled)  # new, or where a stopped run was
    ck = runstate.Checkpointer(args, res, labeled, log)
    stopped = lambda rnd, after="": runstate.Stop(ck.stopped(rnd, args.iters) + after, code=143)  # noqa: E731
    with runstate.stop_on_signals(), contextlib.closing(log):
        for rnd in range(rnd0, args.rounds + 1):  # the query rounds, then the final training (rnd = --rounds)
            resume = state if rnd == rnd0 else None
            model, rec = train_round(args, data, labeled, rnd, log, ck, resume)  # SSL training (+ FA) on L_r
            if not (resume and resume.get("done")):  # trained now: a stop from here on resumes at the selection
                ck.save(rnd, train={"done": True, "model": model.state_dict(), "record": rec,
                                    "rng": runstate.rng_states()})
            if runstate.STOP["signal"]:
                raise stopped(rnd)
            if rnd == args.rounds:
                break
            # AL selection on the weak-view features: L_{r+1} = L_r + budget pool images
            sel, t_feat, t_sel = select(args, data, model, labeled, rnd)
            assert len(np.unique(sel)) == args.budget and not np.isin(sel, labeled).any()
            res["rounds"].append({
                "round": rnd, "num_labeled": len(labeled), **rec,
                "selected": sel.tolist(),
                "selected_hist": np.bincount(data.y_tr[sel], minlength=data.num_classes).tolist(),
                "time_features": t_feat, "time_select": t_sel})
            print(f"round {rnd}: {len(labeled)} labels, test acc {rec['acc_last']:.4f} (best {rec['acc_best']:.4f});"
                  f" {args.al} selected {len(sel)} ({len(np.unique(data.y_tr[sel]))} classes) in {t_feat:.1f}s "
                  f"features + {t_sel:.1f}s select")
            labeled = ck.labeled = np.sort(np.concatenate([labeled, sel]))
            ck.save(rnd + 1)  # selection done: the next training starts from iteration 0
            if runstate.STOP["signal"]:
                raise stopped(rnd, " (after the selection)")
    # the test accuracy of the final training: final_acc, its last evaluation (what a user without a test set
    # gets); final_best_acc, the best of its curve (USB's reported number, selected on the test set)
    acc = rec["acc_last"]
    if val is not None:  # the test accuracy at the best validation point, and which images were held out
        res.update(final_val_acc=rec["acc_val"], val_indices=val.tolist())
    res.update(final={"num_labeled": len(labeled), **rec}, final_acc=acc, final_best_acc=rec["acc_best"],
               time_total=sum(r["time_train"] + r["time_features"] + r["time_select"] for r in res["rounds"])
               + rec["time_train"])
    if args.save_features:  # Fig. 3: final-model features of the images still unlabeled, one weak view each
        pool = D.pool_of(len(data.y_tr), labeled)
        z, _ = run_model(model, D.view_tensor(weak_view_set(data, pool, args, args.rounds), args.workers), data, args)
        np.savez_compressed(os.path.join(args.out, f"{args.name}.features.npz"), feats=z.cpu().numpy(),
                            labels=data.y_tr[pool], idx=pool)
    runstate.atomic_save(res, path, as_json=True)
    ck.remove()
    print(f"final: {len(labeled)} labels, test accuracy {acc:.4f} ({100 * acc:.2f}%), best {rec['acc_best']:.4f} "
          f"at iteration {max(rec['curve'], key=lambda p: p['acc'])['iter']}; wrote {path}")
    return res


if __name__ == "__main__":
    runstate.exit_on_errors(main)  # a user's mistake: one line, exit 2; a divergence 3; a stop by a signal 143
