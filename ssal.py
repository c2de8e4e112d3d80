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
import glob
import hashlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
from types import SimpleNamespace

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

# The digits ViT's pretrained start, made by pretrain.py (printed characters, then SimCLR on the unlabeled digits
# training images) and committed; a relative path is read from this file's folder when the working folder lacks it.
DIGITS_WEIGHTS = os.path.join("weights", "vit_tiny_digits.pt")
HERE = os.path.dirname(os.path.abspath(__file__))

# CIFAR-100 / TinyImageNet follow USB's FreeMatch ViT config for CIFAR-100 (AdamW, lr 5e-4, layer decay 0.5,
# weight decay 5e-4, batch 8, uratio 1, 204,800 iterations with 5,120 warm-up). digits is CPU-sized.
PRESETS = {
    "digits": dict(model="vit_tiny_digits", weights=DIGITS_WEIGHTS, budget=20, iters=500, batch_size=16, uratio=3,
                   lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=25, ema_p=0.9, eval_every=50, log_every=25),
    "cifar100": dict(model="vit_small_patch2_32", weights=None, budget=100, iters=204800, batch_size=8, uratio=1,
                     lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=5120, ema_p=0.999, eval_every=2048,
                     log_every=256),
    "tinyimagenet": dict(model="vit_small_patch4_64", weights=None, budget=200, iters=204800, batch_size=8, uratio=1,
                         lr=5e-4, weight_decay=5e-4, layer_decay=0.5, warmup=5120, ema_p=0.999, eval_every=2048,
                         log_every=256),
}
# --scratch: the digits regime before the pretrained start (a random initialisation needs 3x the iterations)
SCRATCH_PRESETS = {"digits": dict(weights=None, budget=10, iters=1500, lr=1e-3, layer_decay=None, warmup=75,
                                  eval_every=100, log_every=50)}
# USB evaluates every num_eval_iter = 2,048 iterations and logs every num_log_iter = 256; digits evaluates 10 times
# per training and logs 20 times (from scratch: 15 and 30).
# digits fine-tunes the pretrained start as USB fine-tunes its ViT: the same lr (5e-4), warm-up 5% of the
# training (USB: 5,120 of 204,800 is 2.5%), USB's layer decay 0.5 (4 blocks: the patch embedding learns at 1/32 of
# the head's lr; without it, 4 of 25 FreeMatch runs ended 4-7 points below their round 0, README "The digits
# preset"). 500 iterations: the test accuracy of FreeMatch with 10 labels has levelled off by then.
# FreeMatch's EMA momentum ema_p sets how many steps its thresholds average over (1 / (1 - ema_p)): 1,000 of
# USB's 204,800 iterations. At digits' 500-1,500 iterations 0.999 would keep the thresholds near their initial 1/C
# for the whole run (every pseudo-label passes; measured from scratch: FreeMatch below supervised); 0.9 averages
# over 10 steps.
# Budget 20 (two images per class, the paper's #200 on CIFAR-100; #10 is its #100): the pretrained start already
# reaches 90-95% with one image per class, so the demo's second 10 random labels moved it by less than test noise
# (seed 0 tied its round 0). At 20, the demo ended above its round 0 on 19 of 20 fresh seeds (10-29, sign test
# p < 0.001), the test fixed before those runs (README "Results on digits"); Table 1 runs both budgets.


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints the usage and the message)
        print(f"error: {message} (python ssal.py --help lists the flags)", file=sys.stderr)
        sys.exit(2)


def get_args(argv=None):
    p = Parser(description="SSL + AL with feature re-alignment (one or more query rounds).")
    a = p.add_argument
    # data
    a("--dataset", default="digits", choices=list(D.DATASETS), help="digits ships with scikit-learn (the CPU demo)")
    a("--data-dir", default="./data", help="folder holding cifar-100-python/ or tiny-imagenet-200/")
    a("--download", action="store_true", help="let torchvision download CIFAR-100 into --data-dir")
    a("--budget", type=int, help="initial labeled images AND images selected per round (#100 in Table 1); a "
                                 "multiple of the classes. Preset: digits 20 (--scratch 10), cifar100 100, "
                                 "tinyimagenet 200")
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
                        "USB's vit_small_patch2_32_mlp_im_1k_32.pth); the classifier head is dropped. Preset: digits "
                        f"{DIGITS_WEIGHTS} (made by pretrain.py), others none")
    a("--scratch", action="store_true", help="start from a random initialisation with the from-scratch digits preset "
                                           "(budget 10, 1,500 iterations, lr 1e-3, no layer decay): the regime "
                                           "before the pretrained start")
    # optimisation
    a("--iters", type=int, help="training iterations per round. Preset: digits 500 (--scratch 1500), others 204800")
    a("--batch-size", type=int, help="labeled batch B. Preset: digits 16, others 8")
    a("--uratio", type=int, help="unlabeled batch = uratio * B. Preset: digits 3, others 1")
    a("--lr", type=float, help="AdamW learning rate, cosine decay. Preset: 5e-4 (digits --scratch 1e-3)")
    a("--weight-decay", type=float, help="AdamW weight decay. Preset: 5e-4")
    a("--layer-decay", type=float, help="layer-wise lr decay (timm). Preset: 0.5 (digits --scratch: none)")
    a("--warmup", type=int, help="linear warm-up iterations. Preset: digits 25 (--scratch 75), others 5120")
    a("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
      help="mixed precision for the forward pass and the losses (FA's statistics and FreeMatch's EMAs stay float32); "
           "auto: bf16 on a CUDA GPU that supports it, none otherwise (USB trains in float32); fp16 uses a GradScaler")
    # run
    a("--seed", type=int, default=0, help="seed of the initial labeled set, the weights and the data order")
    a("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    a("--workers", type=int, default=-1, help="data-loading processes; -1: 0 on CPU, 4 on GPU")
    a("--eval-every", type=int, help="evaluate the test set every N iterations of a training, and at its last one "
                                     "(USB's protocol; the curve goes into the result file). Preset: digits 50 "
                                     "(--scratch 100), others 2048 as USB")
    a("--log-every", type=int, help="append a line to <out>/<name>.log.jsonl every N iterations. Preset: digits 25 "
                                    "(--scratch 50), others 256 as USB")
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
    check_flags(p, args)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.amp == "auto":
        cuda = args.device.startswith("cuda") and torch.cuda.is_available()
        args.amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "none"
    if args.workers < 0:
        args.workers = 0 if args.device == "cpu" else 4
    if args.name is None:
        fa_tag = f"-fa_s{args.lambda_s:g}_c{args.lambda_c:g}_T{args.queue_len}" if args.fa else ""
        start = "-scratch" if args.scratch and PRESETS[args.dataset]["weights"] else ""
        args.name = f"{args.dataset}{start}-b{args.budget}-{args.ssl}{fa_tag}-{args.al}-r{args.rounds}-s{args.seed}"
    return args


def check_flags(p, args):
    """Every value a flag can take wrongly, as one line (exit 2) before any work starts."""
    def need(ok, msg):
        if not ok:
            p.error(msg)

    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    for k in ("iters", "batch_size", "uratio", "rounds", "queue_len", "budget", "eval_every", "log_every",
              "ckpt_every"):
        need(getattr(args, k) >= 1, f"{flag(k)} must be at least 1, not {getattr(args, k)}")
    need(args.warmup >= 0, f"--warmup must be at least 0, not {args.warmup}")
    need(args.seed >= 0, f"--seed must be at least 0, not {args.seed}")
    need(args.workers >= -1, f"--workers must be -1 (automatic) or at least 0, not {args.workers}")
    need(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number above 0, not {args.lr}")
    for k in ("weight_decay", "lambda_s", "lambda_c", "lambda_u", "ent_loss_ratio"):
        v = getattr(args, k)
        need(math.isfinite(v) and v >= 0, f"{flag(k)} must be a finite number of at least 0, not {v}")
    need(args.layer_decay is None or 0 < args.layer_decay <= 1, f"--layer-decay must be in (0, 1], not {args.layer_decay}")
    need(0 < args.p_cutoff <= 1, f"--p-cutoff must be in (0, 1], not {args.p_cutoff}")
    need(0 <= args.ema_p < 1, f"--ema-p must be in [0, 1), not {args.ema_p}")
    C = D.DATASETS[args.dataset][0]
    need(args.budget % C == 0, f"--budget {args.budget} must be a positive multiple of the {C} classes "
                               f"(the initial set takes budget / classes images per class)")
    need(not (args.fa and args.ssl == "supervised"), "--fa needs unlabeled data: use it with --ssl fixmatch or freematch")
    need(args.name is None or (args.name.strip(". ") and not set(args.name) & {"/", "\\", os.sep}),
         f"--name {args.name!r} must be a file name, without folders")


def check_run(args):
    """What a flag names must exist and work, before any data is loaded: the device, the output folder, the model
    and its weights (built once on the CPU). Raises DataError (one line, exit 2)."""
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise D.DataError(f"--device {args.device!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise D.DataError(f"--device {args.device}: no CUDA GPU is visible here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise D.DataError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise D.DataError(f"--device {args.device}: MPS is not available here (use --device cpu)")
    elif dev.type != "cpu":
        raise D.DataError(f"--device {args.device}: only cpu, cuda and mps devices are supported")
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=args.out):
            pass
    except OSError as e:
        raise D.DataError(f"--out {args.out} can not be created or written to ({e.strerror}); choose another "
                          f"folder") from None
    C, size, _ = D.DATASETS[args.dataset]
    build_model(args, C, size)


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
        load_weights(model, weights_file(args.weights))
    return model


def weights_file(path):
    """--weights as given, or, when it is relative and missing here, the same path in ssal.py's folder (so that the
    digits preset works from any working folder)."""
    alt = os.path.join(HERE, path)
    return alt if not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(alt) else path


def load_weights(model, path):
    """Load a local state dict into `model`: unwrap {'model'|'state_dict': ...}, strip 'module.' / 'backbone.'
    prefixes, drop the classifier head, and let timm adapt a ViT (pos_embed resized to the model's token grid,
    patch embedding resampled to its patch size). Prints missing / unexpected keys in one line."""
    if not os.path.isfile(path):
        raise D.DataError(f"--weights file not found: {path} (for CIFAR-100 get USB's "
                          f"vit_small_patch2_32_mlp_im_1k_32.pth from the Semi-supervised-learning releases)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise D.DataError(f"--weights {path} is not a PyTorch checkpoint that loads ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None
    for key in ("model", "state_dict", "ema_model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise D.DataError(f"--weights {path} holds no state dict (a dict of tensors, or one under 'model' / "
                          f"'state_dict')")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    head = model.get_classifier()
    head_keys = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    state = {k: v for k, v in state.items() if k not in head_keys and not k.startswith("head.")}
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)
        state = {k: v for k, v in state.items() if k not in head_keys}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in wrong}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(state) == len(unexpected):  # a wrong file must not silently train from scratch
        raise D.DataError(f"--weights {path} shares no tensor with --model (of its {len(state) + len(wrong)} "
                          f"tensors, {len(wrong)} have the model's names but other shapes): is it for this model?")
    print(f"loaded {path}: {len(state) - len(unexpected)} tensors; missing {list(missing)}; unexpected "
          f"{list(unexpected)}" + (f"; other shapes, skipped {wrong}" if wrong else ""))
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
    {"event": "resume" | "reused", ...}                       a resumed run; a round 0 taken from round0/
    round r: the training's index, 0 .. R-1 for the query rounds and R (= --rounds) for the final training.
    """

    def __init__(self, path, offset=None):
        """A new log, or with `offset` the log of a resumed run, cut back to where its checkpoint was written (the
        lines of the iterations after it are written again)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if offset is None or not os.path.isfile(path):
            self.f = open(path, "w")
        else:
            self.f = open(path, "r+")
            self.f.truncate(offset)
            self.f.seek(offset)

    def write(self, **rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()

    def tell(self):
        return self.f.tell()

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


def autocast(args):
    """--amp: the forward pass and the losses in bfloat16 / float16 where it is safe (torch.autocast); FA's
    statistics and FreeMatch's EMA estimates are computed in float32 inside fa.py / ssl_algos.py."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    return torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None)


def forward_losses(args, model, algo, queues, pos_of, batches, normalize):
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
    # Without FA the weak unlabeled view only gives pseudo-labels and the mask (detached in Eq. 2), so it is
    # forwarded without a graph: the same values as USB's single forward of every view, with about a third less
    # backward work. With FA, L_s (Eq. 12) and L_c (Eq. 18) differentiate through z_u_w: one forward of every view.
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
            loss_s = fa.similarity_loss(z_u_w, z_u_s, queues.q_w, queues.q_s, queues.filled)  # Eqs. 11-12
            loss_c = fa.contrastive_loss(z_u_s, z_u_w)  # Eq. 18
            loss = loss + args.lambda_s * loss_s + args.lambda_c * loss_c
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


def training_streams(args, data, labeled, uses_unlabeled, start=0):
    """The labeled stream (0), and the unlabeled one (1) over the whole training set, from iteration `start` on:
    which images a draw takes, and their views, depend on (seed, stream, draw) only, so a resumed training picks
    them up at draw start x batch."""
    B, Bu, V = args.batch_size, args.batch_size * args.uratio, data.views
    lb_views = {"weak": V["weak"], "strong": V["strong"]} if args.fa else {"weak": V["weak"]}
    lb_set = D.Views(data.x_tr, data.y_tr, labeled, lb_views, view_seed=(args.seed, 0))
    streams = [D.loader(lb_set, B, num_samples=args.iters * B, seed=D.mix_seed(args.seed, 0), workers=args.workers,
                        start=start * B)]
    if uses_unlabeled:
        ulb_set = D.Views(data.x_tr, data.y_tr, np.arange(len(data.y_tr)), {"weak": V["weak"], "strong": V["strong"]},
                          view_seed=(args.seed, 1))
        streams.append(D.loader(ulb_set, Bu, num_samples=args.iters * Bu, seed=D.mix_seed(args.seed, 1),
                                workers=args.workers, start=start * Bu))
    return streams


def train_step(args, tr, batches, normalize):
    """One iteration on a setup_training() `tr`: forward and losses under autocast, then backward, the AdamW step
    and the schedule's step, unless the loss is not finite (then no step is taken and lr is None). Returns the loss,
    its detached terms and the base lr of the step."""
    with autocast(args):
        loss, terms = forward_losses(args, tr.model, tr.algo, tr.queues, tr.pos_of, batches, normalize)
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
    algorithm and, with --fa, the FA losses. The SSL unlabeled stream is the whole training set. `rnd` is the
    training's index (round r, or --rounds for the final training), used in the log.

    The test set is evaluated every --eval-every iterations and at the last one, as USB does. Evaluation draws
    no random numbers from the training's generators, so it does not change training (tested: the same weights
    with and without it). With a checkpointer `ck`, the whole training state is saved every --ckpt-every
    iterations; `resume` (such a state) continues from it exactly. A non-finite loss, or a SIGTERM / SIGUSR1,
    raises Stop. Returns the model, the SSL algorithm (its state), the FA queues, and a record
    {curve, acc_best, acc_last, test_acc (= acc_last), test_pred_hist (of the last evaluation), train_stats}."""
    dev = torch.device(args.device)
    tr = setup_training(args, data, labeled)
    model, algo, opt, sched, scaler, queues = tr.model, tr.algo, tr.opt, tr.sched, tr.scaler, tr.queues
    # what a checkpoint holds besides the modules: iterations done, the curve, sums of the log window, time spent
    S = dict(n=0, curve=[], hist=None, win={}, n_win=0, mask_sum=torch.zeros((), device=dev), time=0.0)
    if resume:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        scaler.load_state_dict(resume["scaler"])
        algo.load_state_dict(resume["ssl"])
        if queues:
            queues.load_state_dict(resume["queues"])
        S.update(resume["loop"])
        set_rng_states(resume["rng"])
    start = S["n"]
    streams = training_streams(args, data, labeled, algo.uses_unlabeled, start)
    x_te = test_images(data, args)

    def state():  # everything needed to continue exactly from here
        return {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "scaler": scaler.state_dict(), "ssl": algo.state_dict(),
                "queues": queues.state_dict() if queues else None,
                "loop": {**S, "time": S["time"] + time.time() - t_run}, "rng": rng_states()}

    model.train()
    desc = f"{'final' if rnd == args.rounds else f'round {rnd}'} train ({len(labeled)} labels)"
    bar = tqdm(zip(*streams), total=args.iters, initial=start, desc=desc, mininterval=1, dynamic_ncols=True,
               disable=os.environ.get("SSAL_NO_BAR") == "1")
    t_run = t_win = time.time()
    n_timed, t_eval = 0, 0.0  # iterations timed in this window by this process, and evaluation time to leave out
    for it, batches in enumerate(bar, start=start):
        loss, terms, lr = train_step(args, tr, batches, data.normalize)
        if "mask" in terms:
            S["mask_sum"] += terms["mask"]
        if lr is None:  # diverged: no step was taken; the last checkpoint stays
            bar.close()
            kept = f"; the last checkpoint stays in {ck.path}" if ck and os.path.isfile(ck.path) else ""
            raise Stop(f"training diverged: non-finite loss at {training_name(rnd, args)}, iteration {it + 1} ("
                       + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items()) + "): lower --lr and start "
                       f"over with --no-resume{kept}", code=3)
        n = S["n"] = it + 1  # iterations done
        for k, v in terms.items():  # summed as tensors: no device sync per iteration
            S["win"][k] = S["win"].get(k, 0.0) + v
        S["n_win"] += 1
        n_timed += 1
        if n % args.eval_every == 0 or n == args.iters:
            t0 = time.time()
            acc, S["hist"] = test_accuracy(model, x_te, data, args)
            model.train()
            t_eval += time.time() - t0
            S["curve"].append({"iter": n, "acc": acc})
            if log:
                log.write(round=rnd, iter=n, test_acc=acc)
        if n % args.log_every == 0 or n == args.iters:
            rec = {k: float(v) / S["n_win"] for k, v in S["win"].items()}
            sec = (time.time() - t_win - t_eval) / n_timed
            if log:
                log.write(round=rnd, iter=n, lr=lr, **rec, **algo.log(), sec_per_iter=sec)
            bar.set_postfix({**{k: f"{v:.3f}" for k, v in rec.items()}, **{k: f"{v:.3f}" for k, v in algo.log().items()},
                             "acc": f"{S['curve'][-1]['acc']:.3f}" if S["curve"] else "-"}, refresh=False)
            S["win"], S["n_win"], n_timed, t_win, t_eval = {}, 0, 0, time.time(), 0.0
        if ck and n < args.iters and (n % args.ckpt_every == 0 or STOP["signal"]):
            ck.save(rnd, train=state())
            if STOP["signal"]:
                bar.close()
                raise Stop(ck.stopped(rnd, n), code=143)
    bar.close()
    curve = S["curve"]
    stats = {"mask_ratio": float(S["mask_sum"]) / max(1, args.iters) if algo.uses_unlabeled else None, **algo.log()}
    accs = [p["acc"] for p in curve]
    rec = {"curve": curve, "acc_best": max(accs), "acc_last": accs[-1], "test_acc": accs[-1],
           "test_pred_hist": S["hist"], "train_stats": stats, "time_train": S["time"] + time.time() - t_run}
    return model, algo, queues, rec


# ----------------------------------------------------------------------------------------------------------------
# evaluation and features

def view_tensor(dataset, args):
    """Every item of a Views dataset under its (one) view, as uint8 [N, 3, H, W] in dataset order."""
    return torch.cat([next(v for k, v in b.items() if k not in ("idx", "y"))
                      for b in D.loader(dataset, 256, workers=args.workers)])


class Batches:
    """Normalised batches (x,) of a uint8 image tensor [N, 3, H, W], on the device, as often as iterated: the pool
    that noise stability passes through 31 times reads views computed once, not once per pass."""

    def __init__(self, x, normalize, args, size=256):
        self.x, self.normalize, self.dev, self.size = x, normalize, torch.device(args.device), size

    def __iter__(self):
        for i in range(0, len(self.x), self.size):
            yield (self.normalize(self.x[i:i + self.size].to(self.dev, non_blocking=True)),)


@torch.no_grad()
def run_model(model, x, data, args):
    """Features [N, d] and logits [N, C] of uint8 images x [N, 3, H, W], in order, model in eval mode."""
    model.eval()
    zs, ls = [], []
    for (xb,) in Batches(x, data.normalize, args):
        with autocast(args):
            z, lg = features_and_logits(model, xb)
        zs.append(z.float())
        ls.append(lg.float())
    return torch.cat(zs), torch.cat(ls)


def test_images(data, args):
    """The test set's plain views, uint8 [N_te, 3, H, W]: computed once per training, read at every evaluation."""
    return view_tensor(D.Views(data.x_te, data.y_te, np.arange(len(data.y_te)), {"plain": data.views["plain"]}), args)


def test_accuracy(model, x, data, args):
    """Top-1 accuracy on the test images x (test_images), and the histogram of predicted classes (a collapse
    shows there)."""
    _, logits = run_model(model, x, data, args)
    pred = logits.argmax(1).cpu()
    acc = (pred == torch.as_tensor(data.y_te)).sum().item() / len(data.y_te)
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
    x_pool = view_tensor(weak_view_set(data, pool, args, rnd), args)  # uint8 [N_p, 3, H, W], one fixed view each
    feats_lb, _ = run_model(model, view_tensor(weak_view_set(data, labeled, args, rnd), args), data, args)  # [N_l, d]
    feats_pool, _ = run_model(model, x_pool, data, args)  # [N_p, d]
    t1 = time.time()
    ctx = dict(feats_lb=feats_lb, labels_lb=torch.as_tensor(data.y_tr[labeled], device=feats_lb.device),
               feats_pool=feats_pool, head=model.get_classifier(), model=model,
               pool_loader=Batches(x_pool, data.normalize, args), num_classes=data.num_classes, seed=args.seed + rnd)
    with torch.enable_grad():  # AlphaMix differentiates the head
        pos = np.asarray(al_strategies.select(args.al, args.budget, ctx))
    t2 = time.time()
    return pool[pos], t1 - t0, t2 - t1


# ----------------------------------------------------------------------------------------------------------------
# long runs: checkpoints, resume, stops

class Stop(Exception):
    """Ends a run with one line on stderr and an exit code: 3 when the loss diverged, 143 after a SIGTERM or SIGUSR1
    (the run was checkpointed first: the same command resumes it). No result file is written."""

    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code


STOP = {"signal": None}  # set by the signal handler; training checkpoints and stops at the end of its iteration


def rng_states():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(s):
    torch.set_rng_state(s["torch"].cpu())
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])


# flags that do not change a run's result: everything else must match for a checkpoint to be resumed
RUN_CONTROL = ("device", "workers", "out", "name", "reuse", "skip_existing", "resume", "data_dir", "download",
               "log_every", "ckpt_every", "save_features")


def result_flags(args):
    return {k: v for k, v in vars(args).items() if k not in RUN_CONTROL}


def training_name(rnd, args):
    return "the final training" if rnd == args.rounds else f"round {rnd}"


def checkpoint_path(args):
    return os.path.join(args.out, "ckpt", f"{args.name}.pt")


class Checkpointer:
    """<out>/ckpt/<name>.pt, written atomically: the run so far (the result records of the finished rounds, the
    labeled set, the training's index `rnd`, where the log ends) and `train`: the state of the training under way
    (see train()), or {"done": True, model, record, rng} once it has ended and its selection is pending, or None
    when training `rnd` has not started. Deleted once the result file is written."""

    def __init__(self, args, res, labeled, log):
        self.path = checkpoint_path(args)
        self.args, self.res, self.labeled, self.log = args, res, labeled, log

    def save(self, rnd, train=None):
        atomic_save({"flags": result_flags(self.args), "rnd": rnd, "res": self.res, "labeled": self.labeled,
                     "log_offset": self.log.tell(), "train": train}, self.path)

    def stopped(self, rnd, n):
        return (f"stopped by signal {STOP['signal']} at {training_name(rnd, self.args)}, iteration {n}; saved "
                f"{self.path}: run the same command to resume")


def load_checkpoint(path, args):
    """The saved run, or None (none, or unreadable: one warning). Flags that change the result must match."""
    if not os.path.isfile(path):
        return None
    try:
        ck = torch.load(path, map_location=args.device, weights_only=False)
        assert {"flags", "rnd", "res", "labeled", "log_offset", "train"} <= set(ck), "keys missing"
    except Exception as e:  # a cut-short or foreign file
        print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]}); starting the run over",
              file=sys.stderr)
        return None
    now = result_flags(args)
    diff = [k for k in sorted(set(now) | set(ck["flags"])) if now.get(k) != ck["flags"].get(k)]
    if diff:
        d = ", ".join(f"--{k.replace('_', '-')} {ck['flags'].get(k)} -> {now.get(k)}" for k in diff[:4])
        raise D.DataError(f"checkpoint {path} was written with other flags ({d}): rerun with its flags to resume "
                          f"it, or pass --no-resume to start over")
    return ck


def _on_signal(signum, frame):
    STOP["signal"] = signum


# ----------------------------------------------------------------------------------------------------------------
# round-0 reuse and results

ROUND0_FLAGS = ("dataset", "budget", "seed", "ssl", "fa", "lambda_s", "lambda_c", "queue_len", "p_cutoff", "ema_p",
                "ent_loss_ratio", "lambda_u", "model", "pretrained", "weights", "iters", "batch_size", "uratio",
                "lr", "weight_decay", "layer_decay", "warmup", "amp", "eval_every")  # eval_every: the saved curve


def round0_path(args):
    """Round 0 trains on the seeded initial set whatever --al is: key its checkpoint by every flag it reads."""
    key = {k: getattr(args, k) for k in ROUND0_FLAGS}
    if args.weights:  # the file's content, not only its name: a regenerated file must not reuse old rounds
        with open(weights_file(args.weights), "rb") as f:
            key["weights_sha1"] = hashlib.sha1(f.read()).hexdigest()
    if not args.fa:  # FA weights do not matter without --fa
        for k in ("lambda_s", "lambda_c", "queue_len"):
            key.pop(k)
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(args.out, "round0", f"{args.dataset}-b{args.budget}-{args.ssl}{'-fa' if args.fa else ''}"
                                            f"-s{args.seed}-{h}.pt")


def atomic_save(obj, path, as_json=False):
    """Write to a temporary file, then rename: a reader sees the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if as_json:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def train_round(args, data, labeled, rnd, log, ck=None, resume=None):
    """Train for round `rnd`; round 0 is loaded from / saved to its shared checkpoint when --reuse (an unreadable
    one is named in a warning and trained again). Returns the model and the round's record."""
    path = round0_path(args) if rnd == 0 and args.reuse else None
    if path and os.path.isfile(path):
        try:
            cached = torch.load(path, map_location=args.device, weights_only=False)
            model = build_model(args, data.num_classes, data.size).to(args.device)
            model.load_state_dict(cached["model"])
            rec = cached["record"]
        except Exception as e:
            print(f"warning: round-0 checkpoint {path} is unreadable ({type(e).__name__}); training round 0 again",
                  file=sys.stderr)
        else:
            print(f"round 0: reusing {path}")
            log.write(event="reused", round=0, path=path)
            return model, {**rec, "reused": True, "time_train": 0.0}
    model, algo, queues, rec = train(args, data, labeled, rnd, log, ck, resume)
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
    check_run(args)  # device, output folder, model and weights: before any data is loaded
    saved = load_checkpoint(checkpoint_path(args), args) if args.resume else None
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = D.Data(args.dataset, args.data_dir, args.download)
    labeled = D.initial_split(data.y_tr, args.budget, data.num_classes, args.seed)
    if args.budget * (args.rounds + 1) > len(data.y_tr):
        raise D.DataError(f"--budget {args.budget} x (--rounds {args.rounds} + 1) is more than the "
                          f"{len(data.y_tr)} training images")
    print(f"{args.name}: {len(data.y_tr)} train / {len(data.y_te)} test images, {data.num_classes} classes, "
          f"{len(labeled)} initial labels, device {args.device}")
    rnd0, state = 0, None
    if saved:
        res, labeled, rnd0, state = saved["res"], np.asarray(saved["labeled"]), saved["rnd"], saved["train"]
        where = "selection" if state and state.get("done") else f"iteration {state['loop']['n'] if state else 0}"
        print(f"resuming {args.name}: {training_name(rnd0, args)}, {where}")
    else:
        res = {"config": vars(args).copy(), "rounds": []}
    log = RunLog(os.path.join(args.out, f"{args.name}.log.jsonl"), offset=saved["log_offset"] if saved else None)
    log.write(event="resume" if saved else "start", name=args.name, rounds=args.rounds, iters=args.iters,
              eval_every=args.eval_every, log_every=args.log_every, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    ck = Checkpointer(args, res, labeled, log)
    STOP["signal"] = None
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None]
    old = {s: signal.signal(s, _on_signal) for s in sigs}
    try:
        for rnd in range(rnd0, args.rounds + 1):  # the query rounds, then the final training (rnd = --rounds)
            resume = state if rnd == rnd0 else None
            if resume and resume.get("done"):  # trained before the stop: its selection (or the result) is pending
                model = build_model(args, data.num_classes, data.size).to(args.device)
                model.load_state_dict(resume["model"])
                rec = resume["record"]
                set_rng_states(resume["rng"])
            else:
                model, rec = train_round(args, data, labeled, rnd, log, ck, resume)
                ck.save(rnd, train={"done": True, "model": model.state_dict(), "record": rec, "rng": rng_states()})
            if STOP["signal"]:
                raise Stop(ck.stopped(rnd, args.iters), code=143)
            if rnd == args.rounds:
                break
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
            if STOP["signal"]:
                raise Stop(ck.stopped(rnd, args.iters) + " (after the selection)", code=143)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        log.close()
    acc = rec["acc_last"]
    # final_acc: the last evaluation (what a user without a test set gets); final_best_acc: the best of the curve
    # (USB's reported number, selected on the test set)
    res.update(final={"num_labeled": len(labeled), **rec}, final_acc=acc, final_best_acc=rec["acc_best"],
               time_total=sum(r["time_train"] + r["time_features"] + r["time_select"] for r in res["rounds"])
               + rec["time_train"])
    if args.save_features:  # Fig. 3: final-model features of the images still unlabeled, one weak view each
        pool = D.pool_of(len(data.y_tr), labeled)
        z, _ = run_model(model, view_tensor(weak_view_set(data, pool, args, args.rounds), args), data, args)
        np.savez_compressed(os.path.join(args.out, f"{args.name}.features.npz"), feats=z.cpu().numpy(),
                            labels=data.y_tr[pool], idx=pool)
    atomic_save(res, path, as_json=True)
    for f in glob.glob(glob.escape(ck.path) + "*"):  # the checkpoint, and a temporary file a kill left half-written
        os.remove(f)
    if os.path.isdir(os.path.dirname(ck.path)) and not os.listdir(os.path.dirname(ck.path)):
        os.rmdir(os.path.dirname(ck.path))
    print(f"final: {len(labeled)} labels, test accuracy {acc:.4f} ({100 * acc:.2f}%), best {rec['acc_best']:.4f} "
          f"at iteration {max(rec['curve'], key=lambda p: p['acc'])['iter']}; wrote {path}")
    return res


if __name__ == "__main__":
    try:
        main()
    except D.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stop as e:
        print(f"{'error' if e.code == 3 else 'stopped'}: {e}", file=sys.stderr)
        sys.exit(e.code)
