"""Speed and memory of the selectors in al_strategies.py on synthetic data (CPU).

    python bench.py                         # N = 10k, 50k, 100k; d = 384; budget 100
    python bench.py --sizes 50000 --dim 768 --budget 200

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
import time

import numpy as np
import torch

import al_strategies as al


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    bench_features(args)
    if not args.skip_noise:
        bench_noise(args)


if __name__ == "__main__":
    main()
