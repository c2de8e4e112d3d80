"""Tables and figures of the paper from ssal.py result files, and training curves from ssal.py training logs.

    python report.py --runs results/runs --out results          # Table 1, Table 2 (Markdown), Fig. 2 (PNG)
    python report.py --runs results/runs --out results --metric last         # the same with the last accuracy
    python report.py --runs results/runs --out results/val --metric val   # test accuracy at the best val point
    python report.py --runs results/fa-readings/sweep --out results/fa-readings --readings   # the pick, on validation
    python report.py --runs results/fa-readings/test --out results/fa-readings/test/val --metric val \
        --pick results/fa-readings/pick.txt                   # the pick against no FA on fresh seeds
    python report.py --runs results/fashionmnist/runs --out results/fashionmnist --regime   # + the criteria
    python report.py --runs results/runs --out results --fig3 A.features.npz B.features.npz
    python report.py --runs results/runs --out results --curves NAME [RUN.json] [RUN.log.jsonl] ...

Each cell is mean +- sample std (ddof = 1) over the seeds found (n shown when it is not 3), with the paper's
number beside it where the paper has that cell. A cell with no result file is shown as "missing", never filled in;
a row without any is left out, unless the paper has numbers for it (a grid of one SSL algorithm, as the short
schedule of docs/fashionmnist.md, shows its own rows only).

--metric best (default): the best test accuracy of the final training over its periodic evaluations
(final_best_acc), USB's protocol and the one the paper's numbers follow; it is selected on the test set, so it is
optimistic. --metric last: the accuracy at the end of training (final_acc), what a user without a test set gets.
--metric val: the test accuracy at the evaluation with the best validation accuracy (final_val_acc; runs made with
--val-size only), what a user with a small labeled validation set can honestly report.
Result files written before periodic evaluation have no final_best_acc: under --metric best their last accuracy is
used and every cell (Avg, claim, Fig. 2 point) built on one is marked with a dagger, explained under its table.

--curves RUN ...: one PNG per run, <out>/curves_<name>.png, with the loss parts, the mask ratio (and thresholds),
the learning rate and the test accuracy against iterations, one line per training (query round r, "final" for the
final training). RUN is a training log <name>.log.jsonl, a result <name>.json (its sibling log is read) or a run
name looked up in --runs. With --curves, report.py draws the curves only: the tables read every result file and
rewrite tables.md, which a look at one run's training should not do. A missing log is a one-line error (exit 2).
"""
import argparse
import glob
import json
import math
import os
from collections import defaultdict

import numpy as np

import fa
from diagnostics import effective_number
from figures import HEAD, SELECTORS, curves, fig2, fig3, seeds_label


# The paper's Table 1 (accuracy %, mean of 3 trials): rows Supervised, FixMatch, +FA, FreeMatch, +FA;
# columns Random, CoreSet, AlpMix, ActFT, Noise (None: no cell in the paper).
PAPER_T1 = {
    ("cifar100", 100): [[38.22, 37.94, 39.35, 37.37, 36.43], [43.83, 42.73, 46.84, 49.61, 41.92],
                        [None, 43.12, 47.02, 51.58, 44.21], [52.71, 56.43, 51.43, 53.65, 52.28],
                        [None, 59.57, 62.51, 64.39, 57.25]],
    ("cifar100", 200): [[53.21, 52.62, 57.75, 63.82, 53.23], [63.70, 63.73, 66.29, 68.34, 61.10],
                        [None, 65.12, 70.58, 68.64, 62.91], [71.96, 72.55, 73.70, 74.64, 70.97],
                        [None, 76.68, 77.23, 76.15, 74.62]],
    ("tinyimagenet", 200): [[28.33, 27.24, 28.47, 29.29, 29.17], [39.08, 37.99, 38.51, 39.46, 38.24],
                            [None, 39.51, 40.82, 39.97, 40.04], [38.03, 39.06, 38.36, 39.56, 38.02],
                            [None, 40.45, 40.44, 40.64, 41.41]],
    ("tinyimagenet", 400): [[42.56, 41.96, 42.51, 43.01, 43.03], [50.76, 50.97, 51.34, 51.47, 50.80],
                            [None, 51.48, 52.54, 51.71, 51.72], [51.55, 51.34, 52.07, 52.13, 52.70],
                            [None, 51.92, 52.98, 53.07, 53.22]],
}
# Table 2 (FreeMatch, CIFAR-100 #100): rows FreeMatch, + L_s, + L_s + L_c; columns CoreSet, AlpMix, ActFT, Noise.
PAPER_T2 = [[56.43, 51.43, 53.65, 52.28], [58.72, 61.02, 63.28, 56.81], [59.57, 62.51, 64.39, 57.25]]


METRICS = {  # the accuracy of a run: --metric
    "best": "the maximum over the periodic test evaluations of the final training, USB's protocol, which the paper's "
            "numbers follow; it is selected on the test set, so it is optimistic",
    "last": "the accuracy at the end of the final training, what a user without a test set gets",
    "val": "the test accuracy of the final training at its evaluation with the best validation accuracy (the later "
           "of ties; runs made with --val-size only), what a user with a small labeled validation set can honestly "
           "report",
}
ROUND_KEY = {"best": "acc_best", "last": "acc_last", "val": "acc_val"}  # a training record's accuracy per metric
RESULT_KEY = {"best": "final_best_acc", "last": "final_acc", "val": "final_val_acc"}  # the same in a result file
MARK = "†"
NOTE = f"{MARK} some runs of this cell have no curve (written before periodic evaluation): last accuracy used."
COLLAPSED = "‡"
COLLAPSED_NOTE = (f"{COLLAPSED} a run of this cell holds a collapsed training (its last evaluation predicts one class "
                  f"for at least 90% of the test images): see 'Collapsed trainings'.")


def one_round_results(folder):
    """(result, key) for every ssal.py result file of the paper's protocol (one query round) in folder (or in each
    folder of a list, in turn), in name order; key = (dataset, budget, ssl, variant, al), variant = 'none' or
    'fa_s<lambda_s>_c<lambda_c>_T<T>'. Every reader of result files goes through here."""
    folders = [folder] if isinstance(folder, (str, os.PathLike)) else folder
    for f in [f for d in folders for f in sorted(glob.glob(os.path.join(d, "*.json")))]:
        r = json.load(open(f))
        c = r.get("config", {})
        if "final_acc" not in r or c.get("rounds") != 1:
            continue
        variant = fa.variant(c)  # 'none', or the FA weights, T and every non-default reading
        yield r, (c["dataset"], c["budget"], c["ssl"], variant, c["al"])


def load_runs(folder, by_seed=False, metric="best"):
    """Returns (cells, fell_back). cells: {(dataset, budget, ssl, variant, al): [final accuracy % per seed, in seed
    order]}; variant = 'none' or 'fa_s<lambda_s>_c<lambda_c>_T<T>'. With by_seed, each value is {seed: accuracy %}
    instead (for paired comparisons: runs with the same seed share the initial labeled set). metric 'best' reads
    final_best_acc, 'last' final_acc, 'val' final_val_acc (a run without a validation set is left out); fell_back is the set of keys of cells where some run has no final_best_acc
    under 'best' (an old file: its final_acc is used), always empty under 'last'. The same keys index both forms of
    cells, so the set passes unchanged through seed_lists. Only the paper's protocol of one query round is read."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    cells, fell_back = defaultdict(dict), set()
    for r, key in one_round_results(folder):
        c = r["config"]
        acc = r.get(RESULT_KEY[metric])
        if acc is None and metric == "val":  # no validation set: no val accuracy to report
            continue
        if acc is None:  # written before periodic evaluation: only the last accuracy exists
            acc = r["final_acc"]
            fell_back.add(key)
        cells[key][c["seed"]] = 100 * acc
    return (dict(cells) if by_seed else seed_lists(cells)), fell_back


def seed_lists(seeded):
    """{key: {seed: acc}} -> {key: [acc in seed order]}."""
    return {k: [v[s] for s in sorted(v)] for k, v in seeded.items()}


def fmt(v, paper=None, marked=False, collapsed=False):
    """mean ± sample std (n=...) of the values v, the dagger if marked, the double dagger if a run collapsed, then
    [the paper's value]."""
    if not v:
        s = "missing"
    else:
        # std: the sample standard deviation over seeds (ddof = 1); none for a single seed
        s = f"{np.mean(v):.2f}" + (f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else "")
        s += "" if len(v) == 3 else f" (n={len(v)})"
        s += f" {MARK}" if marked else ""
        s += f" {COLLAPSED}" if collapsed else ""
    return s if paper is None else f"{s} [{paper:.2f}]"


def with_note(md):
    """A Markdown table, with the daggers' explanations under it when one of its cells is marked."""
    return md + (f"\n\n{NOTE}" if MARK in md else "") + (f"\n\n{COLLAPSED_NOTE}" if COLLAPSED in md else "")


def avg(cells, keys):
    """Mean over the four non-random selectors of their seed means; None if any is missing."""
    vals = [np.mean(cells[k]) for k in keys if cells.get(k)]
    return float(np.mean(vals)) if len(vals) == len(keys) else None


def table1(cells, settings, fa_variant, marked=frozenset(), collapsed=frozenset()):
    """Table 1 as Markdown; cells whose key is in marked get the dagger (an Avg when one of its cells does), those
    in collapsed the double dagger."""
    lines = ["| Setting | Method | " + " | ".join(HEAD) + " | Avg |", "|---" * (len(HEAD) + 3) + "|"]
    for ds, b in settings:
        paper = PAPER_T1.get((ds, b))
        sup = [(ds, b, "supervised", "none", al) for al in SELECTORS]
        sup_avg = avg(cells, sup[1:])
        rows = [("Supervised", sup, 0)]
        for k, ssl in ((1, "fixmatch"), (3, "freematch")):
            rows += [("FixMatch" if k == 1 else "FreeMatch", [(ds, b, ssl, "none", al) for al in SELECTORS], k),
                     ("+ FA", [(ds, b, ssl, fa_variant, al) for al in SELECTORS], k + 1)]
            if k == 1:
                rows.append(("Supervised", sup, 0))
        for name, keys, pk in rows:
            if not paper and not any(cells.get(k) for k in keys):
                continue  # a row no run of the grid fills (the short schedule has FreeMatch's rows only)
            out = []
            for j, key in enumerate(keys):
                if name == "+ FA" and j == 0:  # the paper has no Random + FA cell: its dash stays beside ours
                    out.append(fmt(cells[key], None, key in marked, key in collapsed) + (" [-]" if paper else "")
                               if cells.get(key) else "-")
                    continue
                out.append(fmt(cells.get(key), paper[pk][j] if paper else None, key in marked, key in collapsed))
            a = avg(cells, keys[1:])
            gain = "(-)" if name == "Supervised" else ("" if a is None or sup_avg is None else f"({a - sup_avg:+.2f})")
            pa = np.mean(paper[pk][1:]) if paper else None
            a_s = "missing" if a is None else f"{a:.2f} {gain}" + (f" {MARK}" if marked & set(keys[1:]) else "")
            lines.append(f"| {ds} #{b} | {name} | " + " | ".join(out) + f" | {a_s}" +
                         (f" [{pa:.2f}]" if pa is not None else "") + " |")
    return "\n".join(lines)


def table2(cells, setting, fa_variant, ls_variant, marked=frozenset(), collapsed=frozenset()):
    ds, b = setting
    paper = PAPER_T2 if setting == ("cifar100", 100) else None
    lines = ["| Method | " + " | ".join(HEAD[1:]) + " |", "|---" * (len(HEAD)) + "|"]
    for i, (name, var) in enumerate((("FreeMatch", "none"), ("+ L_s", ls_variant), ("+ L_s + L_c", fa_variant))):
        row = [fmt(cells.get((ds, b, "freematch", var, al)), paper[i][j] if paper else None,
                   (ds, b, "freematch", var, al) in marked, (ds, b, "freematch", var, al) in collapsed)
               for j, al in enumerate(SELECTORS[1:])]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def round0_changes(folder, metric="best"):
    """(result, cell, round-0 accuracy %, final accuracy %, change = final - round 0 in points) for every one-round
    result in folder that records both trainings under `metric` (see one_round_results for cell)."""
    key = ROUND_KEY[metric]
    for r, cell in one_round_results(folder):
        r0 = (r.get("rounds") or [{}])[0]
        if key in r0 and key in r.get("final", {}):
            # rounded: 0.874 - 0.884 is -1.0000000000000009 in floats, which is not "more than 1 point" below
            yield r, cell, 100 * r0[key], 100 * r["final"][key], round(100 * (r["final"][key] - r0[key]), 9)


def round0_drops(folder, metric="best", tol=1.0):
    """Does the final training (round-0 labels + the selection) end above round 0? Per row (dataset, budget, ssl,
    variant), over every selector and seed: runs, runs whose final accuracy is more than `tol` points below their own
    round 0 (the same metric for both trainings), the largest such drop, and the largest seed std of the row's
    cells. Returns {row: (n, n_below, worst_drop, max_std)}; runs without a round-0 record are skipped."""
    diffs, accs = defaultdict(list), defaultdict(list)
    for _, cell, _, a1, d in round0_changes(folder, metric):
        diffs[cell[:4]].append(d)
        accs[cell].append(a1)
    out = {}
    for row, d in diffs.items():
        below = [x for x in d if x < -tol]
        stds = [np.std(v, ddof=1) for k, v in accs.items() if k[:4] == row and len(v) > 1]
        out[row] = (len(d), len(below), min(below) if below else None, max(stds) if stds else None)
    return out


def round0_table(drops):
    lines = ["| Setting | SSL | FA | runs | final more than 1 point below round 0 | largest drop | largest cell std |",
             "|---|---|---|---|---|---|---|"]
    for (ds, b, ssl, var), (n, k, worst, sd) in sorted(drops.items()):
        lines.append(f"| {ds} #{b} | {ssl} | {'-' if var == 'none' else var} | {n} | {k} | "
                     f"{'-' if worst is None else f'{worst:.1f}'} | {'-' if sd is None else f'{sd:.2f}'} |")
    return "\n".join(lines)


def crowding(folder, metric="best", tol=1.0, top=None):
    """Do runs end below their round 0 when the selection crowds into few classes? For every run whose round-0
    record has the selection's class histogram (`selected_hist`), its crowding k = the most selected images of one
    class (capped at `top`: 'top or more'; None: half the setting's budget, at least 2) and its change = final -
    round-0 accuracy (points, `metric`). Returns (by_k, drops): by_k {(dataset, budget, (k, "" or " or more")): (runs,
    runs more than tol below round 0, mean change)}; drops, one per such run
    in name order: (name, round 0 %, final %, selected_hist, (c, n0, n1)) where c is the class whose count among
    the test predictions fell most from round 0 (n0) to the final training (n1), or None without prediction counts."""
    changes, drops = defaultdict(list), []
    for r, cell, a0, a1, d in round0_changes(folder, metric):
        r0 = r["rounds"][0]
        if "selected_hist" not in r0:
            continue
        cap = top or max(2, cell[1] // 2)
        k = max(r0["selected_hist"])
        changes[cell[:2] + ((k, "") if k < cap else (cap, " or more"),)].append(d)
        if d < -tol:
            h0, h1 = r0.get("test_pred_hist"), r["final"].get("test_pred_hist")
            lost = None
            if h0 and h1:
                c = int(np.argmin(np.subtract(h1, h0)))
                lost = (c, h0[c], h1[c])
            drops.append((r["config"].get("name", "?"), a0, a1, r0["selected_hist"], lost))
    by_k = {k: (len(v), sum(x < -tol for x in v), float(np.mean(v))) for k, v in sorted(changes.items())}
    return by_k, drops


def crowding_table(by_k, drops):
    lines = ["| Setting | most selected images of one class | runs | final more than 1 point below round 0 | "
             "mean change |", "|---|---|---|---|---|"]
    lines += [f"| {ds} #{b} | {k}{more} | {n} | {d} | {m:+.2f} |" for (ds, b, (k, more)), (n, d, m) in by_k.items()]
    lines += ["", "| run | round 0 -> final | selected per class | class predicted less (test predictions) |",
              "|---|---|---|---|"]
    for name, a0, a1, h, lost in drops:
        less = "-" if lost is None else f"{lost[0]}: {lost[1]} -> {lost[2]}"
        lines.append(f"| {name} | {a0:.1f} -> {a1:.1f} | {' '.join(map(str, h))} | {less} |")
    return "\n".join(lines)


def collapsed_runs(folder):
    """{cell key: [(seed, [names of its collapsed trainings]), ...]} for the runs holding a collapsed training."""
    out = defaultdict(list)
    for r, key in one_round_results(folder):
        names = [f"round {t['round']}" for t in r.get("rounds", []) if t.get("collapsed")]
        names += ["final"] if r.get("final", {}).get("collapsed") else []
        if names:
            out[key].append((r["config"]["seed"], names))
    return dict(out)


DIAG_KEYS = ("pl_acc", "pl_acc_masked", "mask", "anchor_purity", "anchor_purity_weak", "L_sw", "L_sw_unit",
             "margin_gap", "knn_purity", "anchors_eff", "pred_eff")  # diagnostics.py's measures, as diag_curve has them
# and one every result file has, probe or not: the effective number of classes the final training predicts on the
# test set at its last evaluation, from its test_pred_hist ("end" only)
TEST_PRED_EFF = "test_pred_eff"


def diag_pairs(folder, fa_variant):
    """The final training's diagnostics at its first evaluation and at its end, FA (fa_variant) against no FA,
    paired by setting, SSL algorithm, selector and seed: {(dataset, budget, ssl): {"first" | "end": {measure:
    (FA values, no-FA values)}}}, equal-length lists over the pairs where both runs have the measure; "end" also has
    TEST_PRED_EFF, which a run without the probe has too."""
    runs = {}
    for r, key in one_round_results(folder):
        fin = r.get("final", {})
        if fin.get("diag_curve") or fin.get("test_pred_hist"):
            end = {TEST_PRED_EFF: effective_number(fin["test_pred_hist"])} if fin.get("test_pred_hist") else {}
            runs[(key, r["config"]["seed"])] = (fin.get("diag_curve") or [{}], end)
    out = defaultdict(lambda: {w: defaultdict(lambda: ([], [])) for w in ("first", "end")})
    for (key, seed), (curve, end) in sorted(runs.items(), key=str):
        base = runs.get(((*key[:3], "none", key[4]), seed))
        if key[3] != fa_variant or base is None:
            continue
        for when, a, b in (("first", curve[0], base[0][0]), ("end", {**curve[-1], **end}, {**base[0][-1], **base[1]})):
            for m in (*DIAG_KEYS, TEST_PRED_EFF):
                if a.get(m) is not None and b.get(m) is not None:
                    out[key[:3]][when][m][0].append(a[m])
                    out[key[:3]][when][m][1].append(b[m])
    return {k: {w: dict(v) for w, v in parts.items()} for k, parts in out.items()}


def diag_table(parts):
    """One row per measure: FA / no FA means over the pairs, with how many pairs FA is higher in and the two-sided
    sign-test p (min of the two one-sided tests, doubled), at the first evaluation and at the end. A measure no pair
    has (one added after the runs) is left out."""
    lines = ["| measure | first evaluation: FA / no FA (FA higher, p) | end: FA / no FA (FA higher, p) |", "|---|---|---|"]
    for m in (*DIAG_KEYS, TEST_PRED_EFF):
        if not any(parts[when].get(m, ([], []))[0] for when in ("first", "end")):
            continue
        cells = []
        for when in ("first", "end"):
            a, b = parts[when].get(m, ([], []))
            d = np.subtract(a, b)
            cells.append(f"{np.mean(a):.3f} / {np.mean(b):.3f} ({(d > 0).sum()}/{len(d)}, p = {sign_test2(d):.2f})"
                         if len(d) else "-")
        lines.append(f"| {m} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def against(new, old, metric="best"):
    """The same runs in two results folders (two presets, say), paired by seed. Per row (dataset, budget, ssl,
    variant): round 0 (one training per seed: the row's selectors share it, and a seed has the same initial labels
    in both folders) and the final training (one per selector and seed). Returns {row: {"round 0": (new, old),
    "final": (new, old)}}, each a pair of equal-length lists of accuracies % over the common runs."""
    key = ROUND_KEY[metric]

    def read(folder):
        r0, fin = {}, {}
        for r, cell in one_round_results(folder):
            seed = r["config"]["seed"]
            if r.get("rounds") and key in r["rounds"][0]:
                r0[(cell[:4], seed)] = 100 * r["rounds"][0][key]
            if key in r.get("final", {}):
                fin[(cell, seed)] = 100 * r["final"][key]
        return r0, fin
    (r0_n, fin_n), (r0_o, fin_o) = read(new), read(old)
    out = defaultdict(lambda: {"round 0": ([], []), "final": ([], [])})
    for part, a, b in (("round 0", r0_n, r0_o), ("final", fin_n, fin_o)):
        for k in sorted(set(a) & set(b), key=str):
            row = k[0] if part == "round 0" else k[0][:4]
            out[row][part][0].append(a[k])
            out[row][part][1].append(b[k])
    return dict(out)


def against_table(pairs):
    lines = ["| Setting | SSL | FA | round 0: this / other (pairs better) | final: this / other (pairs better) |",
             "|---|---|---|---|---|"]
    for (ds, b, ssl, var), parts in sorted(pairs.items()):
        cells = []
        for a, o in (parts["round 0"], parts["final"]):
            d = np.subtract(a, o)
            cells.append(f"{np.mean(a):.2f} / {np.mean(o):.2f} ({(d > 0).sum()}/{len(d)}, p = {sign_test(d):.2f})"
                         if len(d) else "-")
        lines.append(f"| {ds} #{b} | {ssl} | {'-' if var == 'none' else var} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# FA's readings: chosen on the validation split, tested once on fresh seeds (docs/fa-readings.md)

def fa_flags(cfg):
    """The ssal.py flags that make a run's FA variant (fa.variant's inverse): '' without FA, else '--fa --lambda-s
    .. --lambda-c .. --queue-len ..' and each reading that is not the default."""
    if not cfg.get("fa"):
        return ""
    f = f"--fa --lambda-s {cfg['lambda_s']:g} --lambda-c {cfg['lambda_c']:g} --queue-len {cfg['queue_len']}"
    return f + "".join(f" --{k.replace('_', '-')} {cfg[k]}" for k, (default, _) in fa.READINGS.items()
                       if cfg.get(k, default) != default)


def val_runs(folder):
    """{ssl: {variant: {(dataset, budget, al, seed): best validation accuracy % of the final training}}} and
    {variant: its flags} over the runs with a validation curve. The validation accuracy alone: no test number
    enters the choice."""
    acc, flags = defaultdict(lambda: defaultdict(dict)), {}
    for r, (ds, b, ssl, var, al) in one_round_results(folder):
        vc = r.get("final", {}).get("val_curve")
        if vc:
            acc[ssl][var][(ds, b, al, r["config"]["seed"])] = 100 * max(v["acc"] for v in vc)
            flags[var] = fa_flags(r["config"])
    return {k: dict(v) for k, v in acc.items()}, flags


def readings_pick(acc, n_runs):
    """Per SSL algorithm: the FA variant with the highest mean validation accuracy over the sweep's runs, or None
    until every variant (no FA included) has the same n_runs runs: a pick is made on the complete sweep only (a
    sweep cut short can hold the same few runs of every variant)."""
    picks = {}
    for ssl, by_var in acc.items():
        runs = set().union(*(set(v) for v in by_var.values()))
        complete = len(runs) == n_runs and all(set(v) == runs for v in by_var.values())
        fa_vars = [v for v in by_var if v != "none"]
        picks[ssl] = (max(fa_vars, key=lambda v: np.mean(list(by_var[v].values())))
                      if complete and fa_vars and "none" in by_var else None)
    return picks


def readings_table(acc, flags, picks, n_runs):
    """Per SSL algorithm, one row per FA variant (best mean first): mean +- sample std of the final training's best
    validation accuracy, and the paired difference against no FA and against today's FA (same setting, selector and
    seed), with the pairs better and a two-sided sign test."""
    lines = []
    for ssl, by_var in sorted(acc.items()):
        today = fa.variant(dict(fa=True, lambda_s=1.0, lambda_c=0.01, queue_len=10))  # the default FA
        lines += ["", f"### {ssl}", "", "| FA | flags | runs | validation accuracy | against no FA (pairs better, p) "
                  "| against today's FA (pairs better, p) |", "|---|---|---|---|---|---|"]
        order = sorted(by_var, key=lambda v: -np.mean(list(by_var[v].values())))
        for var in order:
            v = by_var[var]
            cells = []
            for base in ("none", today):
                common = sorted(set(v) & set(by_var.get(base, {})))
                if base is None or base == var or not common:
                    cells.append("-")
                    continue
                cells.append(paired([v[k] - by_var[base][k] for k in common]))
            name = ("**" + var + "** (pick)") if picks.get(ssl) == var else var
            lines.append(f"| {name} | `{flags[var] or '-'}` | {len(v)} | {fmt(list(v.values()))} | " +
                         " | ".join(cells) + " |")
        if picks.get(ssl) is None:
            lines += ["", f"No pick yet: the sweep is incomplete (every variant needs the same {n_runs} runs)."]
    return "\n".join(lines)


def readings(folders, out, n_runs):
    """report.py --readings N: readings.md (and pick.txt once the sweep's N runs per variant are all there) in out."""
    acc, flags = val_runs(folders)
    picks = readings_pick(acc, n_runs)
    md = ["# FA's readings on the validation split", "", "The final training's best validation accuracy (%), mean ± "
          "sample std over the sweep's runs (settings, selectors, seeds); differences paired by setting, selector and "
          "seed; p: two-sided sign test. The pick per SSL algorithm: the FA variant with the highest mean, made on "
          f"the complete sweep only ({n_runs} runs per variant). No test accuracy is read here.",
          readings_table(acc, flags, picks, n_runs)]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "readings.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    if picks and all(picks.values()):
        with open(os.path.join(out, "pick.txt"), "w") as f:
            f.write("# FA's reading per SSL algorithm, chosen on validation by report.py --readings\n")
            f.writelines(f"{ssl} {flags[v]}\n" for ssl, v in sorted(picks.items()))
        print(f"wrote {os.path.join(out, 'pick.txt')}")


def pick_test(seeded, picks):
    """The pick against no FA on fresh seeds: {(dataset, budget, ssl): (per selector {al: (pick %, no FA %) lists
    paired by seed}, all pairs' differences)} from {key: {seed: acc}}."""
    out = defaultdict(dict)
    for ds, b, ssl, var, al in sorted({k for k in seeded if k[3] == picks.get(k[2])}):
        pick, base = seeded[(ds, b, ssl, var, al)], seeded.get((ds, b, ssl, "none", al), {})
        common = sorted(set(pick) & set(base))
        if common:
            out[(ds, b, ssl)][al] = ([pick[s] for s in common], [base[s] for s in common])
    return {k: (per, np.concatenate([np.subtract(*x) for x in per.values()])) for k, per in out.items()}


def pick_test_table(tests, picks):
    lines = ["| Setting | SSL | pick | " + " | ".join(HEAD[1:]) + " | all pairs: mean difference (pick better, p) |",
             "|---" * (len(HEAD) + 3) + "|"]
    for (ds, b, ssl), (per, d) in sorted(tests.items()):
        cols = [f"{np.mean(per[al][0]):.2f} / {np.mean(per[al][1]):.2f}" if al in per else "missing"
                for al in SELECTORS[1:]]
        lines.append(f"| {ds} #{b} | {ssl} | {picks[ssl]} | " + " | ".join(cols) + f" | {paired(d)} |")
    for ssl in sorted({k[2] for k in tests}):  # the primary outcome: every pair of the SSL algorithm, all settings
        ds_b = [k for k in sorted(tests) if k[2] == ssl]
        if len(ds_b) > 1:
            d = np.concatenate([tests[k][1] for k in ds_b])
            dashes = " | ".join(["-"] * len(SELECTORS[1:]))  # no per-selector cell in the pooled row
            lines.append(f"| **all {len(ds_b)} settings** | {ssl} | {picks[ssl]} | {dashes} | **{paired(d)}** |")
    return "\n".join(lines)


def read_picks(path):
    """pick.txt, '<ssl> <ssl.py FA flags>' per line ('#' starts a comment) -> {ssl: the variant those flags make}."""
    import ssal  # ssal.py's own parser reads the flags, so a pick means what it means to ssal.py
    picks = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            ssl, *flags = line.split()
            picks[ssl] = fa.variant(vars(ssal.get_args(["--ssl", ssl, *flags])))
    return picks


def sign_test(d):
    """One-sided sign test of paired differences d: P(at least as many positive signs | no effect), ties dropped."""
    d = np.asarray(d)
    n, k = int((d != 0).sum()), int((d > 0).sum())
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n if n else 1.0


def sign_test2(d):
    """Two-sided sign test of paired differences d: the smaller one-sided p, doubled (at most 1), ties dropped."""
    return min(1.0, 2 * min(sign_test(d), sign_test(-np.asarray(d))))


def paired(d):
    """'mean difference (pairs better/pairs, p = two-sided sign test)' of paired differences d."""
    d = np.asarray(d)
    return f"{d.mean():+.2f} ({(d > 0).sum()}/{len(d)}, p = {sign_test2(d):.2f})"


def check(seeded, pairs, every=True):
    """Does cell a beat cell b for each (a, b) in pairs? Compared on the seeds both cells have (runs with the same
    seed share the initial labeled set). every=True: each pair's mean gap must be > 0; every=False: the mean over
    pairs must (an Avg). Returns (verdict, evidence): 'holds' / 'does not hold' / 'missing', and the
    columns won, the paired per-seed differences and their sign-test p-value."""
    common = [sorted(set(seeded.get(a, {})) & set(seeded.get(b, {}))) for a, b in pairs]
    if not all(common):
        return "missing", "some cells have no runs with a common seed"
    d = [[seeded[a][s] - seeded[b][s] for s in ss] for (a, b), ss in zip(pairs, common)]  # per pair, per seed
    gaps = [np.mean(x) for x in d]
    d = sum(d, [])
    ok = all(g > 0 for g in gaps) if every else np.mean(gaps) > 0
    ev = (f"{sum(g > 0 for g in gaps)}/{len(gaps)} columns, mean gap {np.mean(gaps):+.2f}; paired runs: "
          f"{sum(x > 0 for x in d)}/{len(d)} better, sign-test p = {sign_test(d):.2f}")
    return ("holds" if ok else "does not hold"), ev


def claims(seeded, settings, fa_v, ls_v, lambda_s=1.0, lambda_c=0.01, marked=frozenset()):
    """The paper's claims (Sec. 4.2-4.4) checked on the runs found ({key: {seed: acc}}): a Markdown table. A verdict
    resting on a cell in marked gets the dagger."""
    lines = ["| Claim | Setting | Here | Evidence |", "|---|---|---|---|"]
    for ds, b in settings:
        def row(claim, pairs, every=True):
            pairs = [((ds, b, *x), (ds, b, *y)) for x, y in pairs]
            v, e = check(seeded, pairs, every)
            v += f" {MARK}" if marked & {k for p in pairs for k in p} else ""
            lines.append(f"| {claim} | {ds} #{b} | {v} | {e} |")

        for ssl in ("fixmatch", "freematch"):
            if not any(key[:3] == (ds, b, ssl) for key in seeded):
                continue
            S = "FixMatch" if ssl == "fixmatch" else "FreeMatch"
            row(f"{S} beats Supervised in every column",
                [((ssl, "none", al), ("supervised", "none", al)) for al in SELECTORS])
            fa_pairs = [((ssl, fa_v, al), (ssl, "none", al)) for al in SELECTORS[1:]]
            row(f"{S} + FA beats {S} for every AL selector (Sec. 4.2: 'in all cases')", fa_pairs)
            row(f"{S} + FA improves the Avg", fa_pairs, every=False)
            row(f"{S}: every AL selector beats Random (the paper finds it need not)",
                [((ssl, "none", al), (ssl, "none", "random")) for al in SELECTORS[1:]])
            row(f"{S} + FA: every AL selector beats {S} with Random",
                [((ssl, fa_v, al), (ssl, "none", "random")) for al in SELECTORS[1:]])
            if (ds, b, ssl, fa_v, "random") in seeded:  # not in the paper: what FA does without an AL selector
                row(f"{S} + FA with Random beats {S} with Random (FA through the trained model alone)",
                    [((ssl, fa_v, "random"), (ssl, "none", "random"))])
        if any(key[:4] == (ds, b, "freematch", ls_v) for key in seeded):
            row("Table 2: + L_s beats FreeMatch in every column",
                [(("freematch", ls_v, al), ("freematch", "none", al)) for al in SELECTORS[1:]])
            row("Table 2: + L_s + L_c beats + L_s on Avg",
                [(("freematch", fa_v, al), ("freematch", ls_v, al)) for al in SELECTORS[1:]], every=False)
        t = lambda T: f"fa_s{lambda_s:g}_c{lambda_c:g}_T{T}"  # noqa: E731
        if any(key[:4] == (ds, b, "freematch", t(1)) for key in seeded):
            row("Fig. 2: T = 10 beats T = 1 on Avg",
                [(("freematch", t(10), al), ("freematch", t(1), al)) for al in SELECTORS[1:]], every=False)
    return "\n".join(lines)


# The regime criteria of a second regime (docs/fashionmnist.md): is the setting neither saturated nor too noisy to
# test the paper's claims? Read off Table 1's cells, before any claim.
REGIME = dict(lo=55.0, hi=85.0, wins=4, max_std=5.0, seeds=5)


def largest_std(stds):
    """{cell key: (seed std, seeds)} -> the largest std as table text, that std, and the fewest seeds of any cell."""
    worst = max(stds, key=lambda key: stds[key][0])
    text = f"largest {stds[worst][0]:.2f} ({worst[2]}, {worst[3]}, {worst[4]}; {len(stds)} cells)"
    return text, stds[worst][0], min(n for _, n in stds.values())


def regime(seeded, settings, lo=REGIME["lo"], hi=REGIME["hi"], wins=REGIME["wins"], max_std=REGIME["max_std"],
           seeds=REGIME["seeds"]):
    """Per setting, three criteria on the runs found ({key: {seed: acc}}): FreeMatch with Random between lo and hi %
    (cell mean); FreeMatch above Supervised, both with Random, in at least `wins` of `seeds` same-seed pairs; every
    FixMatch / FreeMatch cell with Random (FA or not) with a seed std of at most max_std. The criteria read the
    Random cells only, as the issue defines them; a fourth row, not a criterion, gives the largest seed std of any
    FixMatch / FreeMatch cell (a selector's cell also varies with which classes its selection covers). A Markdown
    table: criterion, setting, the value measured, and the verdict: met / not met once the cells it reads have
    `seeds` seeds, "pending (k of `seeds` seeds)" before (a grid still running), "missing" without the runs."""
    lines = ["| Criterion | Setting | Measured | Met |", "|---|---|---|---|"]

    def verdict(ok, n):
        return ("met" if ok else "**not met**") if n >= seeds else f"pending ({n} of {seeds} seeds)"

    for ds, b in settings:
        fm = seeded.get((ds, b, "freematch", "none", "random"), {})
        m = np.mean(list(fm.values())) if fm else None
        cell = f"{fmt(list(fm.values()))} | {verdict(lo <= m <= hi, len(fm))}" if fm else "- | missing"
        lines.append(f"| FreeMatch with Random between {lo:g}% and {hi:g}% | {ds} #{b} | {cell} |")
        sup = seeded.get((ds, b, "supervised", "none", "random"), {})
        common = sorted(set(fm) & set(sup))
        d = [fm[s] - sup[s] for s in common]  # same seed: the same labeled images
        k = sum(x > 0 for x in d)
        gap = f" (mean gap {np.mean(d):+.2f})" if d else ""
        lines.append(f"| FreeMatch above Supervised (Random) in at least {wins} of {seeds} seeds | {ds} #{b} | " +
                     (f"{k} of {len(d)} seeds{gap} | {verdict(k >= wins, len(d))} |" if d else "- | missing |"))
        stds = {key: (np.std(list(v.values()), ddof=1), len(v)) for key, v in seeded.items()
                if key[:2] == (ds, b) and key[2] in ("fixmatch", "freematch") and len(v) > 1}
        rnd = {key: v for key, v in stds.items() if key[4] == "random"}
        row = f"| every FixMatch / FreeMatch cell's seed std at most {max_std:g} (Random) | {ds} #{b} | "
        if rnd:
            text, sd, n = largest_std(rnd)
            lines.append(row + f"{text} | {verdict(sd <= max_std, n)} |")
        else:
            lines.append(row + "- | missing |")
        row = f"| (not a criterion) the largest seed std of any FixMatch / FreeMatch cell | {ds} #{b} | "
        lines.append(row + (f"{largest_std(stds)[0]} | - |" if stds else "- | missing |"))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Tables 1-2 and Figs. 2-3 from ssal.py result files; with --curves, "
                                            "training curves from ssal.py training logs.")
    p.add_argument("--runs", nargs="+", default=["results/runs"],
                   help="folder(s) of ssal.py result .json files (and their logs), read as one set of runs: e.g. "
                        "results/runs results/lambda_s tabulates another lambda_s against the same baselines")
    p.add_argument("--out", default="results", help="where tables.md and the figures (or the curves) go")
    p.add_argument("--settings", help="dataset:budget list for Table 1, e.g. 'digits:10 digits:20' "
                                      "(default: every setting found)")
    p.add_argument("--lambda-s", type=float, default=1.0, help="FA weight of the runs to tabulate")
    p.add_argument("--lambda-c", type=float, default=0.01, help="FA weight of the runs to tabulate")
    p.add_argument("--queue-len", type=int, default=10, help="T of the runs to tabulate")
    p.add_argument("--fa-variant", help="the FA runs to tabulate by their full variant, readings included (fa.variant, "
                                        "e.g. fa_s0.3_c0.01_T10_lsmasked); default: from --lambda-s, --lambda-c, "
                                        "--queue-len with the default readings")
    p.add_argument("--fig3", nargs=2, metavar=("WITH_LS", "WITHOUT_LS"), help="two .features.npz files")
    p.add_argument("--metric", choices=sorted(METRICS), default="best",
                   help="accuracy of a run: best = max over the periodic test evaluations of the final training "
                        "(USB's protocol; selected on the test set, so optimistic), last = at the end of training, "
                        "val = at the best validation accuracy (--val-size runs only) (default: best; a result file "
                        "without a curve falls back to last, marked with a dagger)")
    p.add_argument("--against", metavar="FOLDER",
                   help="also compare with the same runs (same cells and seeds) in another results folder, e.g. "
                        "one made with another preset: round 0 and final accuracy, paired by seed")
    p.add_argument("--readings", type=int, nargs="?", const=20, metavar="N",
                   help="FA's readings sweep (run_experiment.sh readings): <out>/readings.md, every FA variant's "
                        "final-training validation accuracy against no FA and today's FA, and, once every variant has "
                        "its N runs per SSL algorithm (default 20: the digits sweep's 2 budgets x 2 selectors x 5 "
                        "seeds), the pick per SSL algorithm (best mean validation accuracy) as <out>/pick.txt; no "
                        "test accuracy is read")
    p.add_argument("--regime", action="store_true",
                   help="add the regime criteria (docs/fashionmnist.md) per setting: FreeMatch with Random between "
                        f"{REGIME['lo']:g}%% and {REGIME['hi']:g}%%, above Supervised (Random) in at least "
                        f"{REGIME['wins']} of {REGIME['seeds']} seeds, a seed std of at most {REGIME['max_std']:g} in "
                        f"every FixMatch / FreeMatch cell with Random (on --metric); 'pending' until the cells have "
                        f"their {REGIME['seeds']} seeds; beside them, the largest seed std of any cell")
    p.add_argument("--pick", metavar="FILE",
                   help="pick.txt: add the picked readings against no FA (run_experiment.sh readings-test), per "
                        "selector, paired by seed, with a two-sided sign test over every pair")
    p.add_argument("--curves", nargs="+", metavar="RUN",
                   help="draw the training curves only (no tables): <out>/curves_<name>.png per RUN, a "
                        "<name>.log.jsonl file, a result <name>.json (its sibling log is read) or a run name in --runs")
    args = p.parse_args(argv)
    if args.curves:
        return curves(args.curves, args.runs, args.out)
    if args.readings:
        return readings(args.runs, args.out, args.readings)
    seeded, marked = load_runs(args.runs, by_seed=True, metric=args.metric)
    cells = seed_lists(seeded)
    collapsed = collapsed_runs(args.runs)
    os.makedirs(args.out, exist_ok=True)
    found = sorted({k[:2] for k in cells})
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split()] if args.settings else found
    fa_v = args.fa_variant or f"fa_s{args.lambda_s:g}_c{args.lambda_c:g}_T{args.queue_len}"
    ls_v = f"fa_s{args.lambda_s:g}_c0_T{args.queue_len}"
    other = "last" if args.metric != "last" else "best"
    md = ["# Results", "", f"Metric: **{args.metric}** accuracy = {METRICS[args.metric]}. The other choice, "
          f"`--metric {other}`, is {METRICS[other]}.", "",
          "Accuracy (%) after one query round, mean ± sample std over seeds; [paper's value]. "
          "Avg: mean of the four non-random selectors, (gain over Supervised). "
          f"FA: {fa_v} (fa_s<lambda_s>_c<lambda_c>_T<T>, then each reading that is not the default).", "",
          "## Table 1", "",
          with_note(table1(cells, settings, fa_v, marked, set(collapsed)))]
    if args.regime:
        md += ["", "## The regime criteria", "", "Is the setting neither saturated nor too noisy to test the paper's "
               f"claims? Read off Table 1's cells ({args.metric} accuracy; docs/fashionmnist.md).", "",
               regime(seeded, settings)]
    for s in settings:
        if any(k[:3] == (*s, "freematch") and k[3] == ls_v for k in cells):
            md += ["", f"## Table 2 ({s[0]} #{s[1]}, FreeMatch)", "", with_note(table2(cells, s, fa_v, ls_v, marked, set(collapsed)))]
        f2 = fig2(seeded, s, os.path.join(args.out, f"fig2_{s[0]}_{s[1]}.png"), args.lambda_s, args.lambda_c)
        if f2:
            pts, seeds = f2
            acc = {(al, T): a for al, v in pts.items() for T, a in v}
            fa_T = f"fa_s{args.lambda_s:g}_c{args.lambda_c:g}_T"  # + T: fig2's cells

            def point(al, T):
                m = f" {MARK}" if (*s, "freematch", f"{fa_T}{T}", al) in marked else ""
                return f"{acc[(al, T)]:.2f}{m}" if (al, T) in acc else "missing"
            rows = ["| T | " + " | ".join(HEAD[1:]) + " |", "|---" * len(HEAD) + "|"]
            rows += [f"| {T} | " + " | ".join(point(al, T) for al in SELECTORS[1:]) + " |"
                     for T in sorted({T for _, T in acc})]
            md += ["", f"## Fig. 2 ({s[0]} #{s[1]}, FreeMatch + FA): fig2_{s[0]}_{s[1]}.png, {seeds_label(seeds)}",
                   "", with_note("\n".join(rows))]
    md += ["", "## The paper's claims on these runs", "", "Here: whether the cell means agree with the claim. "
           "Evidence: how many columns agree; the paired differences of single runs (same seed = same initial "
           "labeled set) and a one-sided sign test on them (p: the chance of at least that many wins if the two rows "
           "were equal). 'holds' with a large p is agreement that seed noise alone could produce.", "",
           with_note(claims(seeded, settings, fa_v, ls_v, args.lambda_s, args.lambda_c, marked))]
    if collapsed:
        md += ["", "## Collapsed trainings", "", "Runs holding a training whose last evaluation predicts one class for "
               "at least 90% of the test images (ssal.py names them in a warning line):", ""]
        md += [f"* {ds} #{b}, {ssl}, {var}, {al}: " + "; ".join(f"seed {sd} ({', '.join(n)})" for sd, n in runs)
               for (ds, b, ssl, var, al), runs in sorted(collapsed.items())]
    for (ds, b, ssl), parts in sorted(diag_pairs(args.runs, fa_v).items()):
        md += ["", f"## Diagnostics of the final training: {ds} #{b}, {ssl}, FA against no FA", "",
               "diagnostics.py's measures on the probe set (docs/diagnostics.md), at the final training's first "
               "evaluation and at its end, and test_pred_eff, the effective number of classes it predicts on the "
               "test set at its end; means over the runs paired by selector and seed (the FA run and its no-FA "
               "twin), how many pairs FA is higher in, and a two-sided sign test.", "", diag_table(parts)]
    drops = round0_drops(args.runs, args.metric)
    if drops:
        md += ["", "## Final training against round 0", "", "Each run trains twice from the same start: round 0 on the "
               "initial labels, the final training on those plus the selected ones. More labels should not end lower; "
               f"counted here ({args.metric} accuracy of both trainings), with the largest seed std of the row's cells.",
               "", round0_table(drops)]
        by_k, dropped = crowding(args.runs, args.metric)
        if by_k:
            md += ["", "### Crowded selections", "", "The runs grouped by how many of the selected images share "
                   "one class (the selection's largest class count; a balanced selection of one per class is 1; a "
                   "setting's last group holds the selections with half its budget or more in one class), and each "
                   "run more than 1 point below its round 0, with the class whose share of the test predictions fell "
                   "most.", "", crowding_table(by_k, dropped)]
    if args.against:
        md += ["", f"## Against {args.against}", "", f"The runs found in both folders, paired by seed ({args.metric} "
               "accuracy, mean over the pairs; a seed has the same initial labels in both; p: one-sided sign test "
               "that this folder is better).", "", against_table(against(args.runs, args.against, args.metric))]
    if args.pick:
        picks = read_picks(args.pick)
        md += ["", f"## The pick against no FA ({args.pick})", "", f"Each SSL algorithm's reading as chosen on the "
               f"validation split, against no FA on the runs found ({args.metric} accuracy): per selector the "
               "means, pick / no FA, over the seeds both have; then every pair's difference (same setting, selector "
               "and seed), how many the pick wins, and a two-sided sign test; the bold row pools an SSL algorithm's "
               "pairs over every setting (docs/fa-readings.md's primary outcome).", "",
               pick_test_table(pick_test(seeded, picks), picks)]
    if args.fig3:
        fig3(*args.fig3, os.path.join(args.out, "fig3.png"))
        md += ["", "Fig. 3: fig3.png"]
    path = os.path.join(args.out, "tables.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
