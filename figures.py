"""The figures of report.py: Fig. 2 (accuracy against the queue length T), Fig. 3 (t-SNE of the pool's features,
with and without L_s), and a run's training curves from its ssal.py training log (`report.py --curves`): the loss
parts, the mask ratio and thresholds, the learning rate, the test accuracy and, where the run had a probe, the
diagnostics of diagnostics.py, against iterations, one line per training."""
import json
import math
import os
import sys

import numpy as np

SELECTORS = ("random", "coreset", "alphamix", "activeft", "noise")
HEAD = ("Random", "CoreSet", "AlpMix", "ActFT", "Noise")


def seeds_label(seeds):
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def fig2(seeded, setting, path, lambda_s=1.0, lambda_c=0.01):
    """Accuracy vs queue length T, one line per selector (FreeMatch + FA), from {key: {seed: acc}}. Every point
    averages the same seeds (those common to all the figure's cells), so that T is the only thing that varies.
    Returns {selector: [(T, accuracy %)]} and the seeds, or None when fewer than two values of T were run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ds, b = setting
    prefix = f"fa_s{lambda_s:g}_c{lambda_c:g}_T"
    cells = {(int(k[3][len(prefix):]), k[4]): v for k, v in seeded.items()
             if k[:3] == (ds, b, "freematch") and k[3].startswith(prefix) and k[3][len(prefix):].isdigit()
             and k[4] != "random" and v}  # the default readings only: a tagged variant ('..._T10_fatquery') is no T
    Ts = sorted({T for T, _ in cells})
    seeds = sorted(set.intersection(*(set(v) for v in cells.values()))) if cells else []
    if len(Ts) < 2 or not seeds:  # one value of T is no curve
        return None
    pts = {al: [(T, float(np.mean([cells[(T, al)][s] for s in seeds]))) for T in Ts if (T, al) in cells]
           for al in SELECTORS[1:]}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for al, name in zip(SELECTORS[1:], HEAD[1:]):
        if pts[al]:
            ax.plot(*zip(*pts[al]), marker="o", label=name)
    ax.set(xlabel="T (strong views per labeled sample in Q_s)", ylabel="accuracy (%)",
           title=f"{ds} #{b}, FreeMatch + FA ({seeds_label(seeds)})", xticks=Ts)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pts, seeds


def fig3(with_ls, without_ls, path, num_classes=30, highlight=5, seed=0):
    """t-SNE of unlabeled-pool features of the first `num_classes` classes, `highlight` of them in colour,
    with (left) and without (right) L_s."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    rng = np.random.default_rng(seed)
    for ax, f, title in zip(axes, (with_ls, without_ls), ("(a) with L_s", "(b) without L_s")):
        z = np.load(f)
        keep = z["labels"] < num_classes
        x, y = z["feats"][keep], z["labels"][keep]
        e = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(x) - 1)).fit_transform(x)
        hi = rng.choice(np.unique(y), min(highlight, len(np.unique(y))), replace=False) if title[1] == "a" else hi
        grey = ~np.isin(y, hi)
        ax.scatter(e[grey, 0], e[grey, 1], s=3, c="lightgrey")
        for c in hi:
            ax.scatter(e[y == c, 0], e[y == c, 1], s=5, label=f"class {c}")
        ax.set(title=title, xticks=[], yticks=[])
    axes[0].legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


LOG_SUFFIX = ".log.jsonl"
LOSSES = ("L_l", "L_u", "fairness", "L_s", "L_c")
# panels of diagnostics.py's measures (a run with --probe): panel -> (solid line, dashed line, title)
DIAG_PANELS = {"diag_pl": ("pl_acc", "pl_acc_masked", "probe: pseudo-label acc. (dashed: masked)"),
               "diag_anchor": ("anchor_purity", "anchor_purity_weak", "probe: Eq. 11 anchor purity (dashed: weak)"),
               "diag_knn": ("knn_purity", None, "probe: 1-NN purity of the weak features"),
               "diag_sw": ("L_sw_unit", None, "probe: L_sw on unit features (Eq. 13)"),
               "diag_gap": ("margin_gap", None, "probe: margin gap, wrong pseudo-labels (Eq. 15)"),
               "diag_eff": ("anchors_eff", "pred_eff", "probe: effective Eq. 11 anchors\n(dashed: classes predicted)")}


def read_log(path):
    """Parse an ssal.py training log. Returns (rounds, trainings): rounds = the run's number of query rounds R from
    its last start line (None without one; training R is then the final training), trainings = {r: {"train":
    [training line dict, ...], "eval": [(iter, test accuracy), ...], "probe": [(iter, the diagnostics dict), ...]}}
    in file order, one entry per training r (probe: the evaluations of a run with --probe).
    Start lines (they have "event") are skipped; so is a line cut short (a log read while it is written). When a
    later launch trains a round again (after a start line), its lines replace the earlier launch's for that round."""
    rounds, trainings, seen = None, {}, set()  # seen: rounds met since the last start line
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(d, dict):
                continue
            if "event" in d:
                if d["event"] == "start":
                    rounds, seen = d.get("rounds", rounds), set()
                continue
            if "round" not in d or "iter" not in d:
                continue
            r = d["round"]
            if r not in seen:  # first line of this training in this launch: a relaunch starts it afresh
                trainings[r], seen = {"train": [], "eval": [], "probe": []}, seen | {r}
            if "test_acc" in d:
                trainings[r]["eval"].append((d["iter"], d["test_acc"]))
                if isinstance(d.get("probe"), dict):
                    trainings[r]["probe"].append((d["iter"], d["probe"]))
            else:
                trainings[r]["train"].append(d)
    return rounds, dict(sorted(trainings.items()))


def best_point(evals):
    """(iter, accuracy) of the best evaluation (the first of equal ones), None when there is none."""
    return max(evals, key=lambda e: e[1]) if evals else None


def training_label(r, rounds):
    return "final" if rounds is not None and r == rounds else f"round {r}"


def curve_panels(trainings):
    """The panels of plot_curves for read_log's trainings, in order: each loss part found, the mask ratio, the lr,
    the test accuracy, and each diagnostics panel whose measure the log's probe lines hold."""
    keys = {k for t in trainings.values() for d in t["train"] for k in d}
    panels = [k for k in LOSSES if k in keys] + [k for k in ("mask", "lr") if k in keys]
    panels += ["test_acc"] if any(t["eval"] for t in trainings.values()) else []
    probed = {k for t in trainings.values() for _, d in t["probe"] for k in d}
    return panels + [p for p, (solid, _, _) in DIAG_PANELS.items() if solid in probed]


def plot_curves(log, path, rounds=None):
    """One PNG of the training log `log`: a panel per loss part found (log y-axis when all its values are positive;
    fairness, <= 0, stays linear), one for the mask ratio with the thresholds tau / tau_min, one for the learning
    rate, one for the test accuracy (best point of each training starred) and, for a run with --probe, the
    diagnostics (DIAG_PANELS), all against iterations, one line per training. rounds: R when the log has no start
    line (else the log's). Returns read_log's (rounds, trainings)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    R, trainings = read_log(log)
    R = rounds if R is None else R
    keys = {k for t in trainings.values() for d in t["train"] for k in d}
    panels = curve_panels(trainings)
    ncol = min(3, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, panels):
        for i, (r, t) in enumerate(trainings.items()):
            c, label = colors[i % len(colors)], training_label(r, R)
            if key in DIAG_PANELS:  # diagnostics.py's measures: solid, and dashed their counterpart
                for k, ls in zip(DIAG_PANELS[key][:2], ("-", "--")):
                    pts = [(it, d[k]) for it, d in t["probe"] if d.get(k) is not None]
                    if k and pts:
                        ax.plot(*zip(*pts), color=c, ls=ls, label=f"{label} {k}")
                continue
            if key == "test_acc":
                if t["eval"]:
                    it, acc = zip(*t["eval"])
                    bi, ba = best_point(t["eval"])
                    ax.plot(it, [100 * a for a in acc], marker=".", color=c, label=f"{label}: best {100 * ba:.2f} "
                            f"@ {bi}, last {100 * acc[-1]:.2f}")
                    ax.plot([bi], [100 * ba], marker="*", ms=12, color=c, ls="none")
                continue
            pts = [(d["iter"], d[key]) for d in t["train"] if d.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), color=c, label=label)
            if key == "mask":
                for th, ls in (("tau", "--"), ("tau_min", ":")):
                    pts = [(d["iter"], d[th]) for d in t["train"] if d.get(th) is not None]
                    if pts:
                        ax.plot(*zip(*pts), color=c, ls=ls, label=f"{label} {th}")
        vals = [d[key] for t in trainings.values() for d in t["train"] if d.get(key) is not None]
        if key in LOSSES and vals and min(vals) > 0:
            ax.set_yscale("log")
        title = {"mask": "mask ratio and thresholds" if {"tau", "tau_min"} & keys else "mask ratio",
                 "lr": "learning rate", "test_acc": "test accuracy (%)",
                 **{p: v[2] for p, v in DIAG_PANELS.items()}}.get(key, key)
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(os.path.basename(log)[:-len(LOG_SUFFIX)] if log.endswith(LOG_SUFFIX) else os.path.basename(log))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # leave the suptitle its own band
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return R, trainings


def resolve_log(run, runs_dirs):
    """(log path, result .json path) of RUN: a .log.jsonl file, a result .json or a run name in the first of
    runs_dirs (the --runs folders) that has its log (none has it: the first folder's path, for the error)."""
    if run.endswith(LOG_SUFFIX):
        base = run[:-len(LOG_SUFFIX)]
    elif run.endswith(".json"):
        base = run[:-len(".json")]
    else:
        bases = [os.path.join(d, run) for d in runs_dirs]
        base = next((b for b in bases if os.path.isfile(b + LOG_SUFFIX)), bases[0])
    return base + LOG_SUFFIX, base + ".json"


def curves(runs, runs_dirs, out):
    """--curves: one PNG per run in out; returns the paths written. A missing log: one line on stderr, exit 2."""
    found = [resolve_log(r, runs_dirs) for r in runs]
    missing = [log for log, _ in found if not os.path.isfile(log)]
    if missing:
        print(f"report.py: no training log {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    os.makedirs(out, exist_ok=True)
    written = []
    for log, res in found:
        rounds = None
        if os.path.isfile(res):  # R from the result's config, for a log without a start line
            try:
                rounds = json.load(open(res)).get("config", {}).get("rounds")
            except (OSError, ValueError):
                pass
        path = os.path.join(out, f"curves_{os.path.basename(log)[:-len(LOG_SUFFIX)]}.png")
        plot_curves(log, path, rounds)
        print(path)
        written.append(path)
    return written
