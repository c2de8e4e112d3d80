"""Speed and memory of the selectors in al_strategies.py on synthetic data (CPU), and of a training iteration.

    python bench.py                         # the selectors (= python bench.py select): N = 10k, 50k, 100k; d = 384
    python bench.py --sizes 50000 --dim 768 --budget 200
    python bench.py train                   # s / training iteration: data, forward + backward + step, FA's share
    python bench.py train --settings digits --amp bf16 --iters 20     (python bench.py train --help: the flags)

Features are a Gaussian mixture with `--classes` classes (unit-variance class means, within-class
std `--spread`), one labeled sample per class, and the head is the nearest-class-mean linear
classifier of those labeled samples (about 45% accuracy at the defaults, as after SSL with one
label per class). Each selector runs once on a small problem first (warm-up). Prints Markdown.
"""
import argparse
import ctypes
import gc
import os
import platform
import resource
import sys
import time

import numpy as np
import torch

import al_strategies as al
import data as D
import fa
import ssal


def rss_mb(field):
    """Current (VmRSS) or peak (VmHWM) resident memory in MB, from /proc (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak only, approximate


def _trim():
    """Hand freed heap pages back to the OS (glibc), so RSS counts live memory only."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn):
    """(seconds, peak RSS growth in MB) of fn(). Resets the kernel's peak counter where allowed."""
    gc.collect()
    _trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = rss_mb("VmRSS")
    t = time.perf_counter()
    out = fn()
    sec = time.perf_counter() - t
    return sec, max(0.0, rss_mb("VmHWM") - base), out


def synthetic(n, d, classes, spread=2.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(classes, d, generator=g)                     # [C, d]
    y = torch.randint(0, classes, (n,), generator=g)
    x = mu[y] + spread * torch.randn(n, d, generator=g)           # [N, d]
    lb = torch.stack([torch.nonzero(y == c)[0, 0] for c in range(classes)])  # 1 label / class
    m = x[lb]                                                      # [C, d]
    head = torch.nn.Linear(d, classes)
    with torch.no_grad():                                          # argmin ||z - m_c||^2
        head.weight.copy_(2 * m)
        head.bias.copy_(-(m * m).sum(1))
    with torch.no_grad():
        acc = (head(x).argmax(1) == y).float().mean().item()
    return x, x[lb], y[lb], head, acc


def bench_features(args):
    print(f"\n### Feature-based selectors (d = {args.dim}, budget = {args.budget}, "
          f"{args.classes} classes, ActiveFT {args.iters} iterations)\n")
    x, x_lb, y_lb, head, _ = synthetic(2000, args.dim, args.classes, args.spread)   # warm-up
    al.coreset(x_lb, x, 10), al.alphamix(x_lb, y_lb, x, head, 10), al.activeft(x, 10, iters=5)
    print("| N | features MB | head acc | CoreSet s | AlphaMix s | AlphaMix candidates | ActiveFT s "
          "| peak extra MB CoreSet / AlphaMix / ActiveFT |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        x, x_lb, y_lb, head, acc = synthetic(n, args.dim, args.classes, args.spread)
        t_cs, m_cs, _ = measure(lambda: al.coreset(x_lb, x, args.budget))
        t_am, m_am, _ = measure(lambda: al.alphamix(x_lb, y_lb, x, head, args.budget))
        n_cand = int(al.alphamix_candidates(x_lb, y_lb, x, head, args.budget).sum())
        t_ft, m_ft, _ = measure(lambda: al.activeft(x, args.budget, iters=args.iters))
        print(f"| {n:,} | {x.numel() * 4 / 2**20:.0f} | {acc:.0%} | {t_cs:.2f} | {t_am:.1f} | {n_cand:,} "
              f"| {t_ft:.1f} | {m_cs:.0f} / {m_am:.0f} / {m_ft:.0f} |", flush=True)
        del x


def bench_noise(args):
    import timm
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=96, depth=4, num_heads=3, num_classes=10)
    n, bs, S = args.noise_images, 250, args.noise_sampling
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(min(bs, n - i), 3, 32, 32, generator=g),) for i in range(0, n, bs)]
    sec, mem, _ = measure(lambda: al.noise_stability(model, loader, args.budget, num_sampling=S))
    ips = (S + 1) * n / sec                                       # clean pass + S noisy passes
    print(f"\n### Noise stability (ViT-tiny, 4 blocks, 32x32 inputs, {n:,} images, "
          f"{S} noisy copies, batch {bs})\n")
    print("| images/s | seconds | peak extra MB | projected: 50k pool x 30 copies |")
    print("|---:|---:|---:|---:|")
    print(f"| {ips:,.0f} | {sec:.1f} | {mem:.0f} | {31 * 50_000 / ips / 60:.1f} min |")
    # k-center on the concatenated deviations: [N, num_sampling * C] float32
    N, D = args.kcenter_n, 30 * args.classes
    dev = torch.randn(N, D, generator=g) * 1e-3
    sec, mem, _ = measure(lambda: al.kcenter_greedy(dev, args.budget, torch.zeros(1, D)))
    print(f"\nk-center on the deviations, N = {N:,} x {D:,} ({dev.numel() * 4 / 2**20:.0f} MB, "
          f"30 copies x {args.classes} classes), budget {args.budget}: {sec:.2f} s, "
          f"peak extra {mem:.0f} MB")


# ----------------------------------------------------------------------------------------------------------------
# bench.py train: one training iteration of ssal.py, split into its parts

TRAIN_DOC = """Seconds per training iteration of ssal.py: its own training step (ssal.build_model, build_optimizer,
forward_losses under ssal.autocast, backward, AdamW step) on the real view pipeline (data.Views + data.loader over
the training streams, as ssal.train builds them), each setting without and with FA:
    cifar100  the paper's setting: ViT-S/2 at 32x32 (ARCHS["vit_small_patch2_32"]), FreeMatch, batch 8 labeled
              (+ their 8 strong views with FA) + 8 unlabeled x 2 views (uratio 1), 100 classes, on 2,000 random
              uint8 images of CIFAR's shape with random labels, CIFAR-100's weak / strong views and Normalize
    digits    the CPU demo: the real digits data, vit_tiny_digits, batch 16 + 48 unlabeled x 2 views (uratio 3)
Columns: data = drawing one iteration's batches from the loaders; fwd+bwd+step = the step on batches drawn before;
FA extra = its difference with and without FA (all that --fa changes in ssal.forward_losses: the labeled strong
views, the graph through the weak unlabeled views that L_s and L_c differentiate, the FA losses); FA losses =
queues.update + fa.similarity_loss + fa.contrastive_loss alone (forward); images/s = views forwarded per iteration /
fwd+bwd+step; peak MiB = torch.cuda.max_memory_allocated over the steps (CUDA only). Every ssal flag not set here
takes the dataset's preset. Timings of a few iterations vary by some 10% from run to run. Prints Markdown.

    python bench.py train
    python bench.py train --settings digits --amp bf16 --iters 50
"""


class SyntheticCifar:
    """What ssal.train and ssal.forward_losses read of a data.Data, for CIFAR-100's shape without the dataset:
    n random uint8 images [n, 32, 32, 3] and labels (every class n / 100 times, in random order), CIFAR-100's
    weak / strong / plain views (data.make_views(32, flip=True)) and its Normalize (USB's mean / std)."""

    def __init__(self, n=2000, seed=0):
        rng = np.random.default_rng(seed)
        self.name = "cifar100"
        self.num_classes, self.size, flip = D.DATASETS["cifar100"]
        self.x_tr = rng.integers(0, 256, (n, self.size, self.size, 3), dtype=np.uint8)
        self.y_tr = rng.permutation(np.arange(n) % self.num_classes).astype(np.int64)
        self.x_te, self.y_te = self.x_tr[:0], self.y_tr[:0]  # no test set: the benchmark never evaluates
        self.mean, self.std = D.CIFAR100_MEAN, D.CIFAR100_STD
        self._normalize = D.Normalize(self.mean, self.std)
        self.views = D.make_views(self.size, flip)

    def normalize(self, x):
        return self._normalize(x)


# setting -> (the --dataset whose preset ssal.get_args applies, the data, what the table calls it)
TRAIN_SETTINGS = {
    "cifar100": ("cifar100", lambda: SyntheticCifar(), "cifar100 (synthetic, 2,000 images)"),
    "digits": ("digits", lambda: D.Data("digits"), "digits"),
}
# timed and untimed (warm-up) iterations per row when --iters / --warmup are not given: ViT-S/2 at 32x32 (257
# tokens) takes seconds per iteration on a CPU; elsewhere 50 and 2
DEFAULT_ITERS = {("cpu", "cifar100"): 5, ("cpu", "digits"): 50}
DEFAULT_WARMUP = {("cpu", "cifar100"): 1}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_train_one(args, data, warmup, iters):
    """Times one setting (args: ssal's flags). Returns a dict of seconds per iteration:
        data       drawing one iteration's batches (labeled + unlabeled) from the training streams' loaders
                   (D.loader over D.Views with the streams' view seeds; in this process when --workers is 0)
        step       ssal.forward_losses under ssal.autocast, the finiteness check, backward (through the fp16
                   GradScaler when --amp fp16), AdamW step and lr schedule step, as in ssal.train's loop, on the
                   batches drawn before (their copy to the device included)
        fa_losses  (with --fa) queues.update + fa.similarity_loss + fa.contrastive_loss on the features of one real
                   batch (forward only, as in forward_losses; their backward is in `step`)
    the first `warmup` iterations untimed; views per iteration; the peak of torch.cuda.max_memory_allocated in
    MiB on CUDA over the steps (model, gradients, AdamW state and activations), else None."""
    dev = torch.device(args.device)
    labeled = D.initial_split(data.y_tr, args.budget, data.num_classes, args.seed)
    tr = ssal.setup_training(args, data, labeled)
    model, algo, queues, pos_of = tr.model, tr.algo, tr.queues, tr.pos_of
    streams = D.training_streams(data, labeled, args, algo.uses_unlabeled)
    its, batches, t_data = [iter(s) for s in streams], [], 0.0
    for k in range(warmup + iters):
        t = time.perf_counter()
        batches.append([next(i) for i in its])
        if k >= warmup:
            t_data += time.perf_counter() - t
    del its  # stops the workers, if any

    def step(b):  # ssal.train's step, without the logging / evaluation / checkpoint bookkeeping around it
        if ssal.train_step(args, tr, b, data.normalize)[2] is None:
            raise RuntimeError("non-finite loss")

    model.train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for b in batches[:warmup]:
        step(b)
    _sync(dev)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    _sync(dev)
    out = {"data": t_data / iters, "step": (time.perf_counter() - t) / iters,
           "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
    lb, ulb = batches[-1][0], batches[-1][1] if algo.uses_unlabeled else None
    n_lb = lb["y"].shape[0]
    out["views"] = n_lb * (2 if args.fa else 1) + (2 * ulb["y"].shape[0] if ulb is not None else 0)
    if args.fa:  # the features of the last batch, in forward_losses' order: x_lb, x_lb_s, x_ulb_w, x_ulb_s
        with torch.no_grad(), ssal.autocast(args):
            x = data.normalize(torch.cat([lb["weak"], lb["strong"], ulb["weak"], ulb["strong"]]).to(dev))
            z0, _ = ssal.features_and_logits(model, x)
        reps = max(iters, 20)
        _sync(dev)
        t = time.perf_counter()
        for k in range(reps):
            z = z0.detach().requires_grad_()  # as in the step: the losses build a graph into the features
            with ssal.autocast(args):
                z_u_w, z_u_s = z[2 * n_lb:].chunk(2)
                queues.update(pos_of[batches[k % len(batches)][0]["idx"]], z[:n_lb], z[n_lb:2 * n_lb])
                loss_s = fa.similarity_loss(z_u_w, z_u_s, queues.q_w, queues.q_s, queues.filled)
                loss_c = fa.contrastive_loss(z_u_s, z_u_w)
                args.lambda_s * loss_s + args.lambda_c * loss_c
        _sync(dev)
        out["fa_losses"] = (time.perf_counter() - t) / reps
    return out


def bench_train(opts):
    dev = torch.device(opts.device)
    rows = []
    print("| setting | model | batch (lb + ulb x 2 views) | FA | timed it (+ warm-up) | views / it | data s/it "
          "| fwd+bwd+step s/it | FA extra s/it | FA extra % | FA losses s/it | data + step s/it | images/s (step) "
          "| peak MiB |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in opts.settings:
        dataset, make_data, label = TRAIN_SETTINGS[name]
        data = make_data()
        iters = opts.iters or DEFAULT_ITERS.get((dev.type, name), 50)
        warmup = opts.warmup if opts.warmup is not None else DEFAULT_WARMUP.get((dev.type, name), 2)
        base = None
        for use_fa in (False, True):
            args = ssal.get_args(["--dataset", dataset, "--device", opts.device, "--amp", opts.amp,
                                  "--workers", str(opts.workers)] + (["--fa"] if use_fa else []))
            r = bench_train_one(args, data, warmup, iters)
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if not use_fa:
                base = r
            extra = r["step"] - base["step"] if use_fa else None
            B, Bu = args.batch_size, args.batch_size * args.uratio
            cells = [label, args.model, f"{B} (+{B} strong) + {Bu} x 2" if use_fa else f"{B} + {Bu} x 2",
                     "yes" if use_fa else "no", f"{iters} (+{warmup})", f"{r['views']}", f"{r['data']:.4g}",
                     f"{r['step']:.4g}", f"{extra:+.4g}" if use_fa else "-",
                     f"{100 * extra / base['step']:+.1f}" if use_fa else "-",
                     f"{r['fa_losses']:.4g}" if use_fa else "-", f"{r['data'] + r['step']:.4g}",
                     f"{r['views'] / r['step']:.1f}", f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"]
            print("| " + " | ".join(cells) + " |", flush=True)
            rows.append((name, use_fa, r))
    return rows


def main_train(argv=None):
    p = argparse.ArgumentParser(prog="bench.py train", description=TRAIN_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=list(TRAIN_SETTINGS), default=list(TRAIN_SETTINGS),
                   help="which settings to time, each without and with FA (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "bf16", "fp16"),
                   help="ssal's --amp (default auto: float32 on every device, as ssal.py)")
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations per row (default: 5 on the CPU for cifar100, else 50)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default: 1 on the CPU for cifar100, else 2)")
    p.add_argument("--workers", type=int, default=-1,
                   help="ssal's --workers: data-loading processes (default -1: 0 on the CPU, 4 on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    opts = p.parse_args(argv)
    if opts.iters is not None and opts.iters < 1:
        p.error(f"--iters must be at least 1, not {opts.iters}")
    if opts.warmup is not None and opts.warmup < 0:
        p.error(f"--warmup must be at least 0, not {opts.warmup}")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        dev = torch.device(opts.device)
    except (RuntimeError, ValueError):
        p.error(f"--device {opts.device!r} is not a device name (cpu, cuda, cuda:1, ...)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {opts.device}: no CUDA GPU is visible here (use --device cpu)")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    a = ssal.get_args(["--device", opts.device, "--amp", opts.amp, "--workers", str(opts.workers)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; device {opts.device} ({gpu}); --amp {a.amp}; "
          f"{a.workers} data-loading workers; load average {load}\n")
    bench_train(opts)


def main_select(argv=None):
    p = argparse.ArgumentParser(prog="bench.py [select]", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000],
                   help="pool sizes N to time (default: 10000 50000 100000)")
    p.add_argument("--dim", type=int, default=384, help="feature dimension d (default: 384)")
    p.add_argument("--budget", type=int, default=100, help="samples to select (default: 100)")
    p.add_argument("--classes", type=int, default=100, help="classes / anchors (default: 100)")
    p.add_argument("--iters", type=int, default=300, help="ActiveFT iterations (default: 300)")
    p.add_argument("--spread", type=float, default=2.5,
                   help="within-class std of the synthetic features (default: 2.5)")
    p.add_argument("--noise-images", type=int, default=2000,
                   help="random 3x32x32 images for the noise-stability timing (default: 2000)")
    p.add_argument("--noise-sampling", type=int, default=3,
                   help="noisy copies in the noise-stability timing (default: 3)")
    p.add_argument("--kcenter-n", type=int, default=50_000,
                   help="rows of the synthetic deviation matrix for k-center (default: 50000)")
    p.add_argument("--skip-noise", action="store_true", help="skip the noise-stability part")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    bench_features(args)
    if not args.skip_noise:
        bench_noise(args)


def main(argv=None):
    """`bench.py [select] [flags]`: the selectors (the bare form is the original interface); `bench.py train`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return main_train(argv[1:])
    return main_select(argv[1:] if argv[:1] == ["select"] else argv)


if __name__ == "__main__":
    main()
