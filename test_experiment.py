"""Tests of the experiment grid (run_experiment.sh) and the report (report.py)."""
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fa
import figures
import report
import ssal

HERE = os.path.dirname(os.path.abspath(__file__))


def run_group(cmd, timeout, **kw):
    """subprocess.run(cmd, capture_output=True, text=True) in a process group of its own, killed whole when the
    timeout passes: a grid's runs are the shell's children, and killing the shell alone (subprocess.run's timeout)
    would leave them training, slowing every later test."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def grid(name, tmp_path, **env):
    e = dict(os.environ, OUT=str(tmp_path / "runs"), SSAL_NO_BAR="1", **env)
    p = run_group(["bash", os.path.join(HERE, "run_experiment.sh"), name], 900, env=e)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_run_group_timeout_kills_the_grandchildren(tmp_path):
    pidfile = tmp_path / "pid"
    with pytest.raises(subprocess.TimeoutExpired):  # the shell's child writes its pid, then outlives the timeout
        run_group(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 2)
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    try:  # gone, or a zombie not yet reaped: either way no longer running
        state = open(f"/proc/{pid}/stat").read().split()[2]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), f"the grandchild survived its group's timeout (state {state})"


@pytest.mark.parametrize("name, env, n", [
    ("table1", {}, 4 * 3 * (5 + 5 + 5 + 5 + 5)),           # 4 settings x 3 seeds x 25 cells (+ FA with Random)
    ("table2", {}, 3 * 3 * 4),                             # 3 variants x 4 selectors x 3 seeds
    ("fig2", {}, 6 * 4 * 3),                               # 6 values of T x 4 selectors x 3 seeds
    ("table1", {"PRESET": "digits"}, 2 * 3 * 25),
    ("table1", {"PRESET": "digits", "SSLS": "fixmatch freematch"}, 2 * 3 * 20),  # the SSL cells only
    ("table1", {"PRESET": "digits", "SEEDS": "0", "SELECTORS": "random coreset"}, 2 * (2 + 2 + 2 + 2 + 2)),
])
def test_dry_run_counts(tmp_path, name, env, n):
    out = grid(name, tmp_path, DRY_RUN="1", **env)
    cmds = [l for l in out.splitlines() if l.startswith("python")]
    assert len(cmds) == n and out.strip().endswith(f"# {name}: {n} runs")
    assert len(set(cmds)) == n  # no run twice
    if name == "table1":  # never FA with supervised training; FA with Random (the cell the paper lacks)
        assert not [c for c in cmds if "--fa" in c and "supervised" in c]
        assert [c for c in cmds if "--fa" in c and "--al random" in c] or "random" not in env.get("SELECTORS", "random")


def test_fashionmnist_preset_grids(tmp_path):
    """PRESET=fashionmnist: Table 1 at #10 and #20 on Fashion-MNIST; the readings grids hold out its preset's 1,000
    validation images."""
    cmds = [l for l in grid("table1", tmp_path, DRY_RUN="1", PRESET="fashionmnist", SSLS="freematch").splitlines()
            if l.startswith("python")]
    assert len(cmds) == 2 * 3 * 10 and all("--dataset fashionmnist" in c for c in cmds)
    assert {c.split("--budget ")[1].split()[0] for c in cmds} == {"10", "20"}
    e = {k: v for k, v in os.environ.items() if k != "OUT"}  # the preset's own readings folder
    p = subprocess.run(["bash", os.path.join(HERE, "run_experiment.sh"), "readings"], capture_output=True, text=True,
                       env=dict(e, DRY_RUN="1", PRESET="fashionmnist", SEEDS="0"), timeout=300)
    cmds = [l for l in p.stdout.splitlines() if l.startswith("python")]
    assert len(cmds) == 2 * 2 * 9 * 2 and all("--val-size 1000" in c for c in cmds)
    assert all("--out results/fashionmnist/readings/sweep " in c for c in cmds)  # not digits' sweep folder


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="the warning needs procps' pgrep")
def test_a_grid_warns_when_other_ssal_runs_share_the_machine(tmp_path):
    """A process whose command line is an ssal.py run (a sleep renamed) makes the grid warn before it starts."""
    fake = subprocess.Popen(["bash", "-c", 'exec -a "python ssal.py --dataset digits" sleep 120'])
    try:
        time.sleep(0.5)
        p = run_group(["bash", os.path.join(HERE, "run_experiment.sh"), "table2"], 300,  # `true ssal.py ...`: no training
                      env=dict(os.environ, OUT=str(tmp_path / "runs"), SEEDS="0", SELECTORS="random", PYTHON="true"))
    finally:
        fake.kill()
        fake.wait()
    assert p.returncode == 0 and "done: python report.py" in p.stdout
    assert "warning:" in p.stderr and "other ssal.py process(es) already run on this machine" in p.stderr


def test_slurm_writes_an_array_script(tmp_path):
    out = grid("table2", tmp_path, SLURM="1", SEEDS="0")
    sb = (tmp_path / "runs" / "table2.sbatch").read_text()
    assert "#SBATCH --array=0-11" in sb and "sbatch" in out
    assert len((tmp_path / "runs" / "table2.commands").read_text().splitlines()) == 12


TINY_GRID = dict(SLURM="1", PRESET="digits", DATASETS="digits:10", SEEDS="0", SELECTORS="random")


def test_slurm_script_requeues_and_forwards_signals(tmp_path):
    grid("table1", tmp_path, **TINY_GRID)
    sb = (tmp_path / "runs" / "table1.sbatch").read_text()
    for line in ["#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@300"]:
        assert line + "\n" in sb
    # sbatch reads #SBATCH lines only up to the first command
    head = sb.split("\ncd ", 1)[0].splitlines()
    assert all(l.startswith("#") for l in head)
    assert [l for l in sb.splitlines() if l.startswith("#SBATCH")] == [l for l in head if l.startswith("#SBATCH")]
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in sb
    p = subprocess.run(["bash", "-n", str(tmp_path / "runs" / "table1.sbatch")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# a stand-in for ssal.py: on TERM it "checkpoints" (0.3 s, so the batch shell must wait for it) and exits 143
STUB = r"""
import pathlib, signal, sys, time
d, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
def on_term(*_):
    (d / "term").write_text("got TERM")
    time.sleep(0.3)
    (d / "ckpt").write_text("written")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
(d / "started").write_text("started")
if mode == "finish":
    sys.exit(0)
time.sleep(30)
(d / "slept").write_text("no signal came")
"""


def run_sbatch_with_stub(tmp_path, mode, signal_to_send):
    """Generates the sbatch script of a tiny grid, swaps task 0's command for STUB, runs the script with a fake
    scontrol on PATH, sends it `signal_to_send` (if any) once the stub runs; returns (exit code, scontrol calls)."""
    import shlex
    import time
    grid("table1", tmp_path, **TINY_GRID)
    runs = tmp_path / "runs"
    d = tmp_path / "stub"
    d.mkdir()
    (d / "stub.py").write_text(STUB)
    (runs / "table1.commands").write_text(" ".join(map(shlex.quote, [sys.executable, str(d / "stub.py"), str(d), mode]))
                                          + "\n")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (bin_ / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    env = dict(os.environ, PATH=f"{bin_}{os.pathsep}{os.environ['PATH']}", SCONTROL_LOG=str(log),
               SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="0")
    p = subprocess.Popen(["bash", str(runs / "table1.sbatch")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        if signal_to_send is not None:
            t0 = time.time()
            while not (d / "started").exists():
                assert time.time() - t0 < 10 and p.poll() is None, "the stub never started"
                time.sleep(0.02)
            p.send_signal(signal_to_send)
        out, _ = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (d / "started").exists(), out
    assert not (d / "slept").exists()
    return p.returncode, (log.read_text().splitlines() if log.exists() else []), d


def test_slurm_script_usr1_checkpoints_and_requeues(tmp_path):
    import signal
    rc, calls, d = run_sbatch_with_stub(tmp_path, "sleep", signal.SIGUSR1)
    assert (d / "term").read_text() == "got TERM"  # TERM forwarded to the run
    assert (d / "ckpt").exists()  # the script waited until the run had finished its checkpoint
    assert calls == ["requeue 77_0"]
    assert rc == 143  # the run's exit code


def test_slurm_script_term_forwards_without_requeue(tmp_path):
    import signal
    rc, calls, d = run_sbatch_with_stub(tmp_path, "sleep", signal.SIGTERM)
    assert (d / "term").read_text() == "got TERM" and (d / "ckpt").exists()
    assert calls == []  # preemption: Slurm's own --requeue puts the task back
    assert rc == 143


def test_slurm_script_normal_end_no_requeue(tmp_path):
    rc, calls, d = run_sbatch_with_stub(tmp_path, "finish", None)
    assert rc == 0 and calls == [] and not (d / "term").exists()


def test_digits_grid_end_to_end_and_report(tmp_path):
    # FreeMatch and its + FA row x two selectors: 4 runs (the dry-run tests above count every other row's commands)
    env = dict(PRESET="digits", DATASETS="digits:10", SEEDS="0", SELECTORS="random coreset", SSLS="freematch",
               ITERS="2", JOBS="2", EXTRA="--batch-size 4 --uratio 1 --probe 50")
    out = grid("table1", tmp_path, **env)
    assert out.count("+ [OMP_NUM_THREADS=") == 4, out  # every run went through a CPU job
    runs = tmp_path / "runs"
    res = [json.load(open(runs / f)) for f in os.listdir(runs) if f.endswith(".json")]
    assert len(res) == 4  # two CPU jobs (JOBS=2), each taking whole settings; + FA with Random too
    # round 0 is trained once per setting (ssl x fa), not once per selector
    assert len(os.listdir(runs / "round0")) == 2
    # resumable: a second pass skips every run
    again = grid("table1", tmp_path, **env)
    assert again.count("skipped") == 4
    report.main(["--runs", str(runs), "--out", str(tmp_path / "rep")])
    lines = (tmp_path / "rep" / "tables.md").read_text().splitlines()
    k = [i for i, l in enumerate(lines) if "| FreeMatch |" in l][0]
    row, fa_row = lines[k].split("|"), lines[k + 1].split("|")  # FreeMatch's row and its "+ FA" row
    assert fa_row[2].strip() == "+ FA"
    # Table 1 holds the two rows that ran: no supervised or FixMatch run, so no row for them (digits has no paper row)
    t1 = [l.split("|")[2].strip() for l in lines[:k + 3] if l.startswith("| digits #10 |")]
    assert t1 == ["FreeMatch", "+ FA"], t1
    ssl = [r for r in res if not r["config"]["fa"] and r["config"]["al"] == "coreset"][0]
    # columns: '', setting, method, Random, CoreSet, AlpMix, ActFT, Noise, Avg
    # CoreSet cell, one seed, --metric best by default (a result without a curve: its last accuracy, marked)
    old = "final_best_acc" not in ssl
    assert row[4].strip() == f"{100 * ssl['final_acc' if old else 'final_best_acc']:.2f} (n=1)" + " †" * old
    assert row[5].strip() == "missing" and row[6].strip() == "missing"  # AlpMix, ActFT never ran
    fa_rand = [r for r in res if r["config"]["fa"] and r["config"]["al"] == "random"]
    assert fa_row[3].strip() == f"{100 * fa_rand[0]['final_best_acc']:.2f} (n=1)"  # Random + FA, the paper's gap
    assert fa_row[8].strip() == "missing"  # Avg incomplete
    # the claims on two selectors: FA's claims need alphamix etc., which never ran
    claim = {l.split("|")[1].strip(): l.split("|")[3].strip() for l in lines if l.startswith("| Free")}
    assert claim["FreeMatch + FA improves the Avg"] == "missing"
    assert claim["FreeMatch + FA with Random beats FreeMatch with Random (FA through the trained model alone)"] in (
        "holds", "does not hold")


def test_report_means_and_gain(tmp_path):
    accs = {("supervised", False): [0.50, 0.52, 0.54], ("freematch", False): [0.70, 0.72, 0.74],
            ("freematch", True): [0.80, 0.80, 0.83]}
    for (ssl, fa), vals in accs.items():
        for al in report.SELECTORS:
            for seed, a in enumerate(vals):
                cfg = dict(dataset="cifar100", budget=100, ssl=ssl, fa=fa, lambda_s=1.0, lambda_c=0.01,
                           queue_len=10, al=al, rounds=1, seed=seed)
                json.dump({"config": cfg, "final_acc": a}, open(tmp_path / f"{ssl}{fa}{al}{seed}.json", "w"))
    cells, fell_back = report.load_runs(str(tmp_path), metric="last")
    assert fell_back == set()
    md = report.table1(cells, [("cifar100", 100)], "fa_s1_c0.01_T10")
    rows = {l.split("|")[2].strip(): l.split("|") for l in md.splitlines()[2:]}
    # sample std of 52, 50, 54: sqrt((0 + 4 + 4) / (3 - 1)) = 2
    assert rows["Supervised"][3].strip() == "52.00 ± 2.00 [38.22]"  # paper's Random / Supervised cell
    assert rows["FreeMatch"][8].strip().startswith("72.00 (+20.00)")
    assert rows["+ FA"][8].strip().startswith(f"{np.mean([80, 80, 83]):.2f} (+{np.mean([80, 80, 83]) - 52:.2f})")


def test_sign_test_hand_worked():
    assert report.sign_test([2.0, 1.0, 3.0]) == 1 / 8  # 3 wins of 3
    assert report.sign_test([1.0, -1.0, 0.0]) == 3 / 4  # the tie is dropped: P(>= 1 win of 2) = 3/4
    assert report.sign_test([-1.0, -2.0]) == 1.0


def test_claims_compare_on_common_seeds():
    fa_v, none = "fa_s1_c0.01_T10", "none"
    key = lambda var, al: ("digits", 10, "freematch", var, al)  # noqa: E731
    seeded = {key(none, al): {0: 50.0, 1: 60.0} for al in report.SELECTORS}
    # FA: +10 and +2 on coreset, -4 and +0 on alphamix, +1 (seed 0 only) on activeft and noise
    seeded[key(fa_v, "coreset")] = {0: 60.0, 1: 62.0}
    seeded[key(fa_v, "alphamix")] = {0: 46.0, 1: 60.0}
    seeded[key(fa_v, "activeft")] = {0: 51.0}
    seeded[key(fa_v, "noise")] = {0: 51.0, 2: 99.0}  # seed 2 has no partner: not compared
    v, e = report.check(seeded, [(key(fa_v, al), key(none, al)) for al in report.SELECTORS[1:]])
    # column gaps on common seeds: +6, -2, +1, +1 -> 3/4 columns, mean +1.5; runs: 10, 2, -4, 0, 1, 1 -> 4 of 6
    assert v == "does not hold" and e.startswith("3/4 columns, mean gap +1.50; paired runs: 4/6 better")
    p = sum(__import__("math").comb(5, i) for i in (4, 5)) / 2 ** 5  # the tie dropped: >= 4 wins of 5
    assert e.endswith(f"p = {p:.2f}")
    v, _ = report.check(seeded, [(key(fa_v, al), key(none, al)) for al in report.SELECTORS[1:]], every=False)
    assert v == "holds"
    md = report.claims(seeded, [("digits", 10)], fa_v, "fa_s1_c0_T10")
    rows = {l.split("|")[1].strip(): l.split("|")[3].strip() for l in md.splitlines()[2:]}
    assert rows["FreeMatch + FA improves the Avg"] == "holds"
    assert rows["FreeMatch beats Supervised in every column"] == "missing"  # no supervised runs
    assert not any(r.startswith("FixMatch") for r in rows) and not any("Table 2" in r for r in rows)


def test_fig2_points_average_common_seeds(tmp_path):
    key = lambda T, al: ("digits", 10, "freematch", f"fa_s1_c0.01_T{T}", al)  # noqa: E731
    seeded = {key(1, "coreset"): {0: 50.0}, key(10, "coreset"): {0: 60.0, 1: 90.0},
              key(10, "noise"): {0: 40.0, 1: 70.0}, ("digits", 10, "freematch", "none", "coreset"): {0: 1.0}}
    pts, seeds = figures.fig2(seeded, ("digits", 10), str(tmp_path / "f.png"))
    assert seeds == [0]  # seed 1 has no T = 1 run: T = 10 must not average it in
    assert pts["coreset"] == [(1, 50.0), (10, 60.0)] and pts["noise"] == [(10, 40.0)] and pts["alphamix"] == []
    assert (tmp_path / "f.png").stat().st_size > 0
    assert figures.fig2({key(10, "coreset"): {0: 60.0}}, ("digits", 10), str(tmp_path / "g.png")) is None
    # a reading's tag after T (a readings folder) is not a value of T: left out, not an error
    tagged = {key("10_fatquery", "coreset"): {0: 1.0}, key("10_faw100", "noise"): {0: 2.0}}
    assert figures.fig2({**seeded, **tagged}, ("digits", 10), str(tmp_path / "h.png")) == (pts, seeds)
    assert figures.fig2({key(10, "coreset"): {0: 60.0}, **tagged}, ("digits", 10), str(tmp_path / "i.png")) is None


def write_result(folder, name, al, seed, best=None, last=None):
    """A hand-written result file of ssal.py (one query round); best=None: an old file with no curve."""
    cfg = dict(dataset="digits", budget=10, ssl="supervised", fa=False, lambda_s=1.0, lambda_c=0.01, queue_len=10,
               al=al, rounds=1, seed=seed)
    r = {"config": cfg, "final_acc": last, "final": {"test_acc": last}}
    if best is not None:
        curve = [{"iter": 2048, "acc": best}, {"iter": 4096, "acc": last}]
        r["final"].update(curve=curve, acc_best=best, acc_last=last)
        r["final_best_acc"] = best
    json.dump(r, open(os.path.join(folder, name + ".json"), "w"))


def test_metric_best_last_and_the_fallback_mark(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    # coreset, alphamix, activeft: best 60, 62, 64 / last 50, 52, 54 over seeds 0-2
    for al in ("coreset", "alphamix", "activeft"):
        for seed, (b, l) in enumerate([(0.60, 0.50), (0.62, 0.52), (0.64, 0.54)]):
            write_result(runs, f"{al}{seed}", al, seed, b, l)
    # noise: seeds 0, 1 with a curve (best 70, last 60); seed 2 an old file with only its last accuracy 66
    write_result(runs, "noise0", "noise", 0, 0.70, 0.60)
    write_result(runs, "noise1", "noise", 1, 0.70, 0.60)
    write_result(runs, "noise2", "noise", 2, None, 0.66)
    noise = ("digits", 10, "supervised", "none", "noise")

    seeded, fell_back = report.load_runs(str(runs), by_seed=True)  # best by default
    assert seeded[noise] == pytest.approx({0: 70.0, 1: 70.0, 2: 66.0}) and fell_back == {noise}
    cells, fell_back = report.load_runs(str(runs), metric="last")
    assert cells[noise] == pytest.approx([60.0, 60.0, 66.0]) and fell_back == set()
    with pytest.raises(ValueError):
        report.load_runs(str(runs), metric="max")

    def table(metric):
        report.main(["--runs", str(runs), "--out", str(tmp_path / metric), "--metric", metric])
        md = (tmp_path / metric / "tables.md").read_text()
        row = [l for l in md.splitlines() if "| Supervised |" in l][0].split("|")
        # columns: '', setting, method, Random, CoreSet, AlpMix, ActFT, Noise, Avg
        return md, [c.strip() for c in row[3:9]]

    md, row = table("best")
    assert "Metric: **best**" in md and "maximum over the periodic test evaluations" in md
    # best: 60, 62, 64 -> 62 ± 2 (sample std sqrt((4 + 0 + 4) / 2)); noise 70, 70, 66 -> 68.67, std: deviations
    # 4/3, 4/3, -8/3 -> sqrt((16 + 16 + 64) / 9 / 2) = sqrt(16 / 3) = 2.31, marked; Avg (62 * 3 + 68.67) / 4 = 63.67
    assert row == ["missing", "62.00 ± 2.00", "62.00 ± 2.00", "62.00 ± 2.00", "68.67 ± 2.31 †", "63.67 (-) †"]
    assert report.NOTE in md and report.NOTE.startswith("† some runs of this cell have no curve")
    md, row = table("last")
    assert "Metric: **last**" in md and "at the end of the final training" in md
    # last: 50, 52, 54 -> 52 ± 2; noise 60, 60, 66 -> 62 ± sqrt((4 + 4 + 16) / 2) = 3.46, no mark; Avg 54.50
    assert row == ["missing", "52.00 ± 2.00", "52.00 ± 2.00", "52.00 ± 2.00", "62.00 ± 3.46", "54.50 (-)"]
    assert "†" not in md


LOG = [  # a hand-written training log of a run with one query round: training 0, then the final training 1
    {"event": "start", "name": "x", "rounds": 1, "iters": 6},
    {"round": 0, "iter": 2, "lr": 0.001, "L_l": 2.0, "L_u": 0.5, "fairness": -0.1, "mask": 0.2, "tau": 0.9,
     "tau_min": 0.8, "sec_per_iter": 0.1},
    {"round": 0, "iter": 2, "test_acc": 0.40},
    {"round": 0, "iter": 4, "lr": 0.0005, "L_l": 1.0, "L_u": 0.4, "fairness": -0.3, "mask": 0.5, "tau": 0.8,
     "tau_min": 0.7, "sec_per_iter": 0.1},
    {"round": 0, "iter": 4, "test_acc": 0.35},
    {"round": 1, "iter": 2, "lr": 0.001, "L_l": 1.5, "L_u": 0.6, "fairness": -0.2, "mask": 0.3, "tau": 0.85,
     "tau_min": 0.75, "sec_per_iter": 0.2},
    {"round": 1, "iter": 2, "test_acc": 0.50},
    {"round": 1, "iter": 4, "test_acc": 0.70},
    {"round": 1, "iter": 6, "lr": 0.0001, "L_l": 0.5, "L_u": 0.2, "fairness": -0.4, "mask": 0.9, "tau": 0.7,
     "tau_min": 0.6, "sec_per_iter": 0.2},
    {"round": 1, "iter": 6, "test_acc": 0.60},
]


def write_log(path, lines, tail=""):
    path.write_text("".join(json.dumps(d) + "\n" for d in lines) + tail)


def test_read_log_groups_by_training_and_finds_the_best(tmp_path):
    log = tmp_path / "x.log.jsonl"
    write_log(log, LOG, tail='{"round": 1, "iter": 8, "te')  # a line cut short (a log being written): skipped
    rounds, tr = figures.read_log(str(log))
    assert rounds == 1 and list(tr) == [0, 1]
    assert [d["iter"] for d in tr[0]["train"]] == [2, 4] and [d["L_l"] for d in tr[0]["train"]] == [2.0, 1.0]
    assert [d["fairness"] for d in tr[1]["train"]] == [-0.2, -0.4] and [d["iter"] for d in tr[1]["train"]] == [2, 6]
    assert tr[0]["eval"] == [(2, 0.40), (4, 0.35)] and tr[1]["eval"] == [(2, 0.50), (4, 0.70), (6, 0.60)]
    assert not any("event" in d or "test_acc" in d for t in tr.values() for d in t["train"])
    assert figures.best_point(tr[0]["eval"]) == (2, 0.40) and figures.best_point(tr[1]["eval"]) == (4, 0.70)
    assert figures.best_point([]) is None
    assert [figures.training_label(r, rounds) for r in tr] == ["round 0", "final"]
    # a second launch training the final round again replaces that round's lines, keeps round 0's
    write_log(log, LOG + [{"event": "start", "name": "x", "rounds": 1}, {"round": 1, "iter": 3, "test_acc": 0.2}])
    rounds, tr = figures.read_log(str(log))
    assert tr[1] == {"train": [], "eval": [(3, 0.2)], "probe": []} and tr[0]["eval"] == [(2, 0.40), (4, 0.35)]


def test_curves_writes_one_png_per_run(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    write_log(runs / "a.log.jsonl", LOG)
    write_log(runs / "b.log.jsonl", [d for d in LOG if "event" not in d])  # no start line: R from b.json
    json.dump({"config": {"rounds": 1}}, open(runs / "b.json", "w"))
    write_log(runs / "c.log.jsonl", [{"round": 0, "iter": 1, "L_l": 1.0}])  # supervised, no evaluation yet
    out = tmp_path / "out"
    # the three ways to name a run: a log file, a result .json (its sibling log) and a run name in --runs
    written = report.main(["--runs", str(runs), "--out", str(out), "--curves", str(runs / "a.log.jsonl"),
                           str(runs / "b.json"), "c"])
    assert written == [str(out / f"curves_{n}.png") for n in "abc"]
    assert all(os.path.getsize(p) > 0 for p in written)
    assert capsys.readouterr().out.split() == written  # each path printed
    assert not (out / "tables.md").exists()  # curves only
    R, tr = figures.plot_curves(str(runs / "b.log.jsonl"), str(tmp_path / "b.png"), rounds=1)
    assert R == 1 and figures.best_point(tr[R]["eval"]) == (4, 0.70)


def test_curves_missing_log_is_one_line_and_exit_2(tmp_path):
    json.dump({"config": {"rounds": 1}}, open(tmp_path / "old.json", "w"))  # a result with no log beside it
    p = subprocess.run([sys.executable, os.path.join(HERE, "report.py"), "--runs", str(tmp_path), "--out",
                        str(tmp_path / "out"), "--curves", str(tmp_path / "old.json")], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and str(tmp_path / "old.log.jsonl") in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_bench_train_smoke():
    """python bench.py train: a Markdown row per FA variant of the setting, with positive timings that add up."""
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "train", "--settings", "digits", "--iters", "2",
           "--warmup", "1", "--device", "cpu", "--threads", "1"]  # 1 thread: 2 threads crawl when the suite runs beside
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    table = [l for l in p.stdout.splitlines() if l.startswith("|")]
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    head = cells(table[0])
    assert set(cells(table[1])) <= {"---", "---:"}
    rows = [dict(zip(head, cells(l), strict=True)) for l in table[2:]]
    assert [(r["setting"], r["FA"]) for r in rows] == [("digits", "no"), ("digits", "yes")]
    for r in rows:
        assert r["model"] == "vit_tiny_digits" and r["timed it (+ warm-up)"] == "2 (+1)" and r["peak MiB"] == "-"
        t = {k: float(r[k]) for k in ("data s/it", "fwd+bwd+step s/it", "data + step s/it", "images/s (step)")}
        assert all(v > 0 for v in t.values()), r
        assert t["data + step s/it"] == pytest.approx(t["data s/it"] + t["fwd+bwd+step s/it"], rel=1e-3)
        assert t["images/s (step)"] == pytest.approx(int(r["views / it"]) / t["fwd+bwd+step s/it"], rel=1e-2)
    no, fa = rows
    assert int(no["views / it"]) == 16 + 2 * 48 and int(fa["views / it"]) == 2 * 16 + 2 * 48  # FA: + x_lb_s
    assert no["FA extra s/it"] == no["FA extra %"] == no["FA losses s/it"] == "-"
    extra = float(fa["FA extra s/it"])  # a difference of two timings: either sign
    assert extra == pytest.approx(float(fa["fwd+bwd+step s/it"]) - float(no["fwd+bwd+step s/it"]), rel=1e-2, abs=1e-3)
    assert float(fa["FA extra %"]) == pytest.approx(100 * extra / float(no["fwd+bwd+step s/it"]), abs=0.2)
    assert float(fa["FA losses s/it"]) > 0


def test_round0_drops_counts_runs_that_end_below_their_round_0(tmp_path):
    def run(name, ssl, al, seed, r0, fin):  # (best, last) of round 0 and of the final training
        cfg = dict(dataset="digits", budget=10, ssl=ssl, fa=False, lambda_s=1.0, lambda_c=0.01, queue_len=10, al=al,
                   rounds=1, seed=seed)
        json.dump({"config": cfg, "final_acc": fin[1], "final_best_acc": fin[0],
                   "rounds": [{"acc_best": r0[0], "acc_last": r0[1]}],
                   "final": {"acc_best": fin[0], "acc_last": fin[1]}}, open(tmp_path / f"{name}.json", "w"))
    run("a", "fixmatch", "coreset", 0, (0.90, 0.88), (0.92, 0.86))  # last: -2.0 (below), best: +2.0
    run("b", "fixmatch", "coreset", 1, (0.90, 0.90), (0.885, 0.895))  # best -1.5 (below), last -0.5 (within 1)
    run("c", "fixmatch", "noise", 0, (0.80, 0.80), (0.70, 0.75))  # both below: -10 best, -5 last
    run("d", "freematch", "noise", 0, (0.80, 0.80), (0.81, 0.81))
    run("e", "supervised", "coreset", 0, (0.884, 0.884), (0.874, 0.874))  # exactly 1 point lower: not "more than"
    row = ("digits", 10, "fixmatch", "none")
    best, last = report.round0_drops(str(tmp_path), "best"), report.round0_drops(str(tmp_path), "last")
    assert best[row][:3] == (3, 2, pytest.approx(-10.0)) and last[row][:3] == (3, 2, pytest.approx(-5.0))
    assert best[row][3] == pytest.approx(np.std([92.0, 88.5], ddof=1))  # coreset's two seeds; noise has one
    assert best[("digits", 10, "freematch", "none")] == (1, 0, None, None)
    assert best[("digits", 10, "supervised", "none")] == last[("digits", 10, "supervised", "none")] == (1, 0, None, None)
    md = report.round0_table(best)
    assert "| digits #10 | fixmatch | - | 3 | 2 | -10.0 |" in md


def test_against_pairs_round0_once_per_seed_and_finals_per_cell(tmp_path):
    def run(folder, al, seed, r0, fin):  # last accuracy of round 0 and of the final training
        folder.mkdir(exist_ok=True)
        cfg = dict(dataset="digits", budget=10, ssl="freematch", fa=False, lambda_s=1.0, lambda_c=0.01, queue_len=10,
                   al=al, rounds=1, seed=seed)
        json.dump({"config": cfg, "final_acc": fin, "rounds": [{"acc_last": r0}], "final": {"acc_last": fin}},
                  open(folder / f"{al}-{seed}.json", "w"))
    new, old = tmp_path / "new", tmp_path / "old"
    for al, f_new, f_old in (("coreset", 0.90, 0.80), ("noise", 0.70, 0.75)):
        run(new, al, 0, 0.85, f_new)  # round 0 is shared by the selectors of a seed
        run(old, al, 0, 0.80, f_old)
    run(new, "coreset", 1, 0.60, 0.65)
    run(old, "coreset", 1, 0.70, 0.60)
    run(new, "coreset", 2, 0.99, 0.99)  # seed 2 only in new: not paired
    row = ("digits", 10, "freematch", "none")
    got = report.against(str(new), str(old), "last")[row]
    assert sorted(zip(*got["round 0"])) == sorted([(85.0, 80.0), (60.0, 70.0)])  # one pair per seed, not per run
    assert sorted(zip(*got["final"])) == sorted([(90.0, 80.0), (70.0, 75.0), (65.0, 60.0)])
    md = report.against_table({row: got})
    # round 0: means 72.5 / 75.0, 1 of 2 better (p = 3/4); final: 75.0 / 71.67, 2 of 3 better (p = 4/8)
    assert "| 72.50 / 75.00 (1/2, p = 0.75) | 75.00 / 71.67 (2/3, p = 0.50) |" in md


def test_crowding_groups_runs_by_the_largest_class_of_the_selection(tmp_path):
    def run(name, seed, sel, r0, fin, pred0=None, pred1=None):  # last accuracy of round 0 and of the final training
        cfg = dict(dataset="digits", budget=4, ssl="freematch", fa=False, lambda_s=1.0, lambda_c=0.01, queue_len=10,
                   al="noise", rounds=1, seed=seed, name=name)
        r0d = {"acc_last": r0, "selected_hist": sel}
        fd = {"acc_last": fin}
        if pred0:
            r0d["test_pred_hist"], fd["test_pred_hist"] = pred0, pred1
        json.dump({"config": cfg, "final_acc": fin, "rounds": [r0d], "final": fd}, open(tmp_path / f"{name}.json", "w"))
    run("a", 0, [1, 1, 1, 1], 0.80, 0.90)  # balanced: k = 1, +10
    run("b", 1, [0, 2, 1, 1], 0.80, 0.78, [10, 10, 10, 10], [12, 9, 14, 5])  # k = 2, -2: class 3 fell most (10 -> 5)
    run("c", 2, [0, 0, 1, 3], 0.70, 0.72)  # k = 3, +2
    run("d", 3, [0, 0, 0, 4], 0.90, 0.85)  # k = 4 -> capped at top = 3, -5, no prediction counts
    json.dump({"config": dict(dataset="digits", budget=4, ssl="freematch", fa=False, lambda_s=1.0, lambda_c=0.01,
                              queue_len=10, al="noise", rounds=1, seed=4, name="old"), "final_acc": 0.5,
               "rounds": [{"acc_last": 0.9}], "final": {"acc_last": 0.5}}, open(tmp_path / "old.json", "w"))  # no hist
    by_k, drops = report.crowding(str(tmp_path), "last", top=3)
    g = ("digits", 4)
    assert set(by_k) == {g + ((1, ""),), g + ((2, ""),), g + ((3, " or more"),)}
    assert by_k[g + ((1, ""),)] == (1, 0, pytest.approx(10.0)) and by_k[g + ((2, ""),)] == (1, 1, pytest.approx(-2.0))
    assert by_k[g + ((3, " or more"),)] == (2, 1, pytest.approx((2.0 - 5.0) / 2))
    # without top, the cap is half the budget (2 here): k = 2, 3 and 4 are "2 or more"
    assert report.crowding(str(tmp_path), "last")[0][g + ((2, " or more"),)] == (3, 2, pytest.approx((-2 + 2 - 5) / 3))
    assert [(n, round(a0, 1), round(a1, 1), lost) for n, a0, a1, _, lost in drops] == \
        [("b", 80.0, 78.0, (3, 10, 5)), ("d", 90.0, 85.0, None)]
    md = report.crowding_table(by_k, drops)
    assert "| digits #4 | 3 or more | 2 | 1 | -1.50 |" in md and "| b | 80.0 -> 78.0 | 0 2 1 1 | 3: 10 -> 5 |" in md


def test_runs_from_several_folders_are_read_as_one_set(tmp_path):
    # seeds 0-1 in one folder, seed 2 in another: --runs a b must tabulate all three (mean 62, sample std 2)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for folder, seed, acc in [(a, 0, 0.60), (a, 1, 0.62), (b, 2, 0.64)]:
        write_result(folder, f"coreset{seed}", "coreset", seed, acc, acc)
    cell = ("digits", 10, "supervised", "none", "coreset")
    assert report.load_runs([str(a), str(b)])[0][cell] == pytest.approx([60.0, 62.0, 64.0])
    assert report.load_runs(str(a))[0][cell] == pytest.approx([60.0, 62.0])
    report.main(["--runs", str(a), str(b), "--out", str(tmp_path / "rep")])
    row = [l for l in (tmp_path / "rep" / "tables.md").read_text().splitlines() if "| Supervised |" in l][0]
    assert row.split("|")[4].strip() == "62.00 ± 2.00"


def test_curves_draw_the_probe_panels_of_a_probed_run(tmp_path):
    diag = {"pl_acc": 0.8, "pl_acc_masked": 0.9, "mask": 0.5, "anchor_purity": 0.4, "anchor_purity_weak": 0.7,
            "L_sw": 3.0, "L_sw_unit": 0.5, "margin_gap": 1.2, "n_wrong": 9, "knn_purity": 0.9, "anchors_eff": 6.5,
            "pred_eff": 3.2}
    lines = [{"event": "start", "rounds": 0}, {"round": 0, "iter": 2, "L_l": 1.0, "lr": 0.1},
             {"round": 0, "iter": 2, "test_acc": 0.5, "probe": diag},
             {"round": 0, "iter": 4, "test_acc": 0.6, "probe": {**diag, "margin_gap": None, "n_wrong": 0}}]
    write_log(tmp_path / "p.log.jsonl", lines)
    R, tr = figures.read_log(str(tmp_path / "p.log.jsonl"))
    assert [it for it, _ in tr[0]["probe"]] == [2, 4] and tr[0]["probe"][0][1] == diag
    assert figures.curve_panels(tr) == ["L_l", "lr", "test_acc", "diag_pl", "diag_anchor", "diag_knn", "diag_sw",
                                        "diag_gap", "diag_eff"]
    old = {k: v for k, v in diag.items() if k not in ("anchors_eff", "pred_eff")}  # a log from before the measure
    write_log(tmp_path / "o.log.jsonl", [{**d, "probe": old} if "probe" in d else d for d in lines])
    assert figures.curve_panels(figures.read_log(str(tmp_path / "o.log.jsonl"))[1])[-1] == "diag_gap"
    figures.plot_curves(str(tmp_path / "p.log.jsonl"), str(tmp_path / "p.png"))
    assert os.path.getsize(tmp_path / "p.png") > 0
    # a log without probe lines gets no probe panel
    write_log(tmp_path / "q.log.jsonl", [{k: v for k, v in d.items() if k != "probe"} for d in lines])
    assert figures.curve_panels(figures.read_log(str(tmp_path / "q.log.jsonl"))[1]) == ["L_l", "lr", "test_acc"]


def write_diag_run(folder, name, fa, al, seed, first, end, collapsed=False, hist=None):
    """A result file whose final training has a diag_curve of two evaluations, `first` and `end` (dicts), and the
    test prediction histogram `hist` of its last evaluation (when given)."""
    cfg = dict(dataset="digits", budget=10, ssl="freematch", fa=fa, lambda_s=1.0, lambda_c=0.01, queue_len=10, al=al,
               rounds=1, seed=seed)
    fin = {"acc_best": 0.9, "acc_last": 0.9, "curve": [{"iter": 50, "acc": 0.9}, {"iter": 500, "acc": 0.9}],
           "diag_curve": [{"iter": 50, **first}, {"iter": 500, **end}], "collapsed": collapsed,
           **({"test_pred_hist": hist} if hist else {})}
    json.dump({"config": cfg, "final_acc": 0.9, "final_best_acc": 0.9, "rounds": [{"round": 0, "collapsed": False}],
               "final": fin}, open(os.path.join(folder, name + ".json"), "w"))


def test_diag_pairs_pair_fa_with_its_no_fa_twin_and_the_table_counts(tmp_path):
    fa = "fa_s1_c0.01_T10"
    # seed 0 / 1, coreset: FA's anchor purity higher at the end in both pairs; at the first evaluation in one
    write_diag_run(tmp_path, "n0", False, "coreset", 0, {"anchor_purity": 0.5}, {"anchor_purity": 0.6})
    write_diag_run(tmp_path, "f0", True, "coreset", 0, {"anchor_purity": 0.4}, {"anchor_purity": 0.8})
    write_diag_run(tmp_path, "n1", False, "coreset", 1, {"anchor_purity": 0.5}, {"anchor_purity": 0.6})
    write_diag_run(tmp_path, "f1", True, "coreset", 1, {"anchor_purity": 0.7}, {"anchor_purity": 0.7})
    write_diag_run(tmp_path, "f2", True, "noise", 0, {"anchor_purity": 0.9}, {"anchor_purity": 0.9})  # no twin
    write_diag_run(tmp_path, "n3", False, "random", 0, {"anchor_purity": 0.1}, {"anchor_purity": 0.1})  # no FA twin
    parts = report.diag_pairs(str(tmp_path), fa)[("digits", 10, "freematch")]
    assert parts["end"]["anchor_purity"] == ([0.8, 0.7], [0.6, 0.6])  # two pairs, in seed order
    assert parts["first"]["anchor_purity"] == ([0.4, 0.7], [0.5, 0.5])
    md = report.diag_table(parts)
    row = next(l for l in md.splitlines() if l.startswith("| anchor_purity |"))
    assert "0.550 / 0.500 (1/2, p = 1.00)" in row and "0.750 / 0.600 (2/2, p = 0.50)" in row
    assert "| knn_purity |" not in md  # a measure no run has (one added after the runs) is left out


def test_test_pred_eff_pairs_the_final_trainings_test_histograms(tmp_path):
    """test_pred_eff, from each final training's test_pred_hist, at the end only: FA predicts 2 classes evenly where
    its twin predicts 4 (seed 0), and 1 against 1 (seed 1, a tie)."""
    fa = "fa_s1_c0.01_T10"
    write_diag_run(tmp_path, "n0", False, "coreset", 0, {}, {}, hist=[5, 5, 5, 5])
    write_diag_run(tmp_path, "f0", True, "coreset", 0, {}, {}, hist=[10, 0, 10, 0])
    write_diag_run(tmp_path, "n1", False, "coreset", 1, {}, {}, hist=[0, 20, 0, 0])
    write_diag_run(tmp_path, "f1", True, "coreset", 1, {}, {}, hist=[20, 0, 0, 0])
    parts = report.diag_pairs(str(tmp_path), fa)[("digits", 10, "freematch")]
    assert parts["end"]["test_pred_eff"] == (pytest.approx([2.0, 1.0]), pytest.approx([4.0, 1.0]))
    assert "test_pred_eff" not in parts["first"]
    row = next(l for l in report.diag_table(parts).splitlines() if l.startswith("| test_pred_eff |"))
    assert row == "| test_pred_eff | - | 1.500 / 2.500 (0/2, p = 1.00) |"


def test_collapsed_runs_are_listed_and_their_cells_marked(tmp_path):
    write_diag_run(tmp_path, "a", False, "coreset", 0, {}, {}, collapsed=True)
    write_diag_run(tmp_path, "b", False, "coreset", 1, {}, {})
    write_diag_run(tmp_path, "c", False, "noise", 0, {}, {})
    col = report.collapsed_runs(str(tmp_path))
    assert col == {("digits", 10, "freematch", "none", "coreset"): [(0, ["final"])]}
    cells = report.seed_lists(report.load_runs(str(tmp_path), by_seed=True)[0])
    md = report.with_note(report.table1(cells, [("digits", 10)], "fa_s1_c0.01_T10", collapsed=set(col)))
    freematch = next(l for l in md.splitlines() if "| FreeMatch |" in l)
    assert freematch.split(" | ")[3].endswith(report.COLLAPSED) and report.COLLAPSED not in freematch.split(" | ")[6]
    assert report.COLLAPSED_NOTE in md
    out = tmp_path / "out"
    report.main(["--runs", str(tmp_path), "--out", str(out)])
    assert "## Collapsed trainings" in (out / "tables.md").read_text() and "seed 0 (final)" in (out / "tables.md").read_text()


def test_metric_val_reads_the_best_validation_point_and_leaves_runs_without_one_out(tmp_path):
    for seed, (val, last) in enumerate([(0.91, 0.90), (0.85, 0.84)]):
        write_result(tmp_path, f"v{seed}", "coreset", seed, best=0.95, last=last)
        r = json.load(open(tmp_path / f"v{seed}.json"))
        r["final_val_acc"] = val
        json.dump(r, open(tmp_path / f"v{seed}.json", "w"))
    write_result(tmp_path, "old", "coreset", 2, best=0.99, last=0.99)  # no validation set
    cells, marked = report.load_runs(str(tmp_path), by_seed=True, metric="val")
    assert cells[("digits", 10, "supervised", "none", "coreset")] == {0: pytest.approx(91.0), 1: pytest.approx(85.0)}
    assert not marked
    out = tmp_path / "out"
    report.main(["--runs", str(tmp_path), "--out", str(out), "--metric", "val"])
    md = (out / "tables.md").read_text()
    assert "Metric: **val**" in md and f"{np.mean([91.0, 85.0]):.2f} ± {np.std([91.0, 85.0], ddof=1):.2f}" in md


@pytest.mark.parametrize("name, env, n", [
    ("readings", {"PRESET": "digits"}, 5 * 2 * 2 * 9 * 2),       # seeds 0-4 x 2 budgets x 2 SSL x 9 variants x 2 selectors
    ("readings", {"PRESET": "digits", "SEEDS": "0", "SELECTORS": "random"}, 2 * 2 * 9),
])
def test_readings_grid_counts_and_every_run_holds_out_validation(tmp_path, name, env, n):
    out = grid(name, tmp_path, DRY_RUN="1", **env)
    cmds = [l for l in out.splitlines() if l.startswith("python")]
    assert len(cmds) == n == len(set(cmds)) and all("--val-size 200" in c for c in cmds)
    assert sum("--fa " not in c for c in cmds) == n // 9  # one variant without FA
    # the same ssal.py names as report.py's variants: each FA flag set gives a distinct variant
    names = {ssal.get_args(c.split()[2:c.split().index("--out")]).name for c in cmds}
    assert len(names) == n


def test_readings_test_grid_reads_the_pick_and_refuses_without_one(tmp_path):
    pick = tmp_path / "pick.txt"
    e = dict(os.environ, OUT=str(tmp_path / "runs"), PRESET="digits", DRY_RUN="1", PICK=str(pick))
    p = subprocess.run(["bash", os.path.join(HERE, "run_experiment.sh"), "readings-test"], capture_output=True,
                       text=True, env=e)
    assert p.returncode == 2 and "no pick file" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    pick.write_text("# comment\nfixmatch --fa --lambda-s 0.3\nfreematch --fa --ls-samples masked\n")
    cmds = [l for l in grid("readings-test", tmp_path, PRESET="digits", DRY_RUN="1", PICK=str(pick)).splitlines()
            if l.startswith("python")]
    assert len(cmds) == 5 * 2 * 2 * 2 * 4  # seeds 5-9 x 2 budgets x 2 SSL x (pick, none) x 4 selectors
    assert {c.split("--seed ")[1].split()[0] for c in cmds} == {"5", "6", "7", "8", "9"}
    assert not [c for c in cmds if "--al random" in c]
    fix_fa = [c for c in cmds if "fixmatch" in c and "--fa" in c]
    assert len(fix_fa) == 40 and all("--lambda-s 0.3" in c and "masked" not in c for c in fix_fa)


def write_val_run(folder, ssl, flags, al, seed, val_curve, test=0.5, budget=10):
    """A hand-written one-round result with a validation curve, its config from ssal.py's own parser."""
    a = vars(ssal.get_args(["--ssl", ssl, "--al", al, "--seed", str(seed), "--budget", str(budget), "--val-size", "200",
                            *flags.split()]))
    r = {"config": a, "final_acc": test, "final_best_acc": test, "final_val_acc": test,
         "final": {"acc_best": test, "acc_last": test, "acc_val": test,
                   "val_curve": [{"iter": 50 * (i + 1), "acc": v} for i, v in enumerate(val_curve)]}}
    json.dump(r, open(os.path.join(folder, a["name"] + ".json"), "w"))


def test_readings_pick_the_best_mean_validation_and_only_on_a_complete_sweep(tmp_path):
    rng = np.random.default_rng(0)
    variants = ["", "--fa", "--fa --ls-samples masked", "--fa --lambda-s 0.3"]
    best = {}  # by hand: each variant's mean over runs of the final training's best validation accuracy
    for v in variants:
        vals = []
        for al in ("coreset", "random"):
            for seed in range(3):
                curve = rng.uniform(0.5, 0.9, size=4).tolist()
                write_val_run(tmp_path, "freematch", v, al, seed, curve, test=rng.uniform())  # test: never read
                vals.append(100 * max(curve))
        best[v] = np.mean(vals)
    acc, flags = report.val_runs(str(tmp_path))
    want = max(variants[1:], key=best.get)
    picks = report.readings_pick(acc, 6)
    assert report.readings_pick(acc, 8) == {"freematch": None}  # the grid has 8 runs a variant: not all there yet
    variant = {v: fa.variant(vars(ssal.get_args(v.split()))) for v in variants}
    assert picks["freematch"] == variant[want]
    for v in variants:
        assert np.mean(list(acc["freematch"][variant[v]].values())) == pytest.approx(best[v])
    # the flags written for the pick make the same variant again (pick.txt round trip)
    out = tmp_path / "out"
    report.main(["--runs", str(tmp_path), "--out", str(out), "--readings", "6"])
    assert report.read_picks(out / "pick.txt") == picks
    md = (out / "readings.md").read_text()
    assert f"**{picks['freematch']}** (pick)" in md and "No pick yet" not in md
    # one run fewer for one variant: no pick
    os.remove(next(tmp_path.glob("*lsmasked-coreset-r1-s0.json")))
    acc, _ = report.val_runs(str(tmp_path))
    assert report.readings_pick(acc, 6) == {"freematch": None}
    report.main(["--runs", str(tmp_path), "--out", str(out / "x"), "--readings", "6"])
    assert not (out / "x" / "pick.txt").exists() and "No pick yet" in (out / "x" / "readings.md").read_text()


def sign_p2(k, n):
    """Two-sided sign test by hand: k of n non-tied pairs positive; twice the smaller binomial tail, at most 1."""
    tail = lambda j: sum(math.comb(n, i) for i in range(j, n + 1)) / 2 ** n  # noqa: E731
    return min(1.0, 2 * min(tail(k), tail(n - k)))


def test_pick_test_pairs_the_pick_with_no_fa_by_seed(tmp_path):
    (tmp_path / "pick.txt").write_text("freematch --fa --fa-warmup 100\n")
    want = []
    for al in ("coreset", "alphamix"):
        for seed in (5, 6, 7):
            a, b = 0.8 + 0.01 * seed, 0.8 + (0.02 if al == "coreset" else -0.01) * (seed - 5)
            write_val_run(tmp_path, "freematch", "--fa --fa-warmup 100", al, seed, [0.5], test=a)
            write_val_run(tmp_path, "freematch", "", al, seed, [0.5], test=b)
            want.append(100 * (a - b))
    write_val_run(tmp_path, "freematch", "--fa", "coreset", 5, [0.5], test=0.99)  # not the pick: left out
    write_val_run(tmp_path, "freematch", "--fa --fa-warmup 100", "activeft", 8, [0.5], test=0.99)  # no twin
    picks = report.read_picks(tmp_path / "pick.txt")
    assert picks == {"freematch": "fa_s1_c0.01_T10_faw100"}
    seeded, _ = report.load_runs(str(tmp_path), by_seed=True, metric="val")
    (per, d), = report.pick_test(seeded, picks).values()
    assert sorted(per) == ["alphamix", "coreset"] and sorted(d) == pytest.approx(sorted(want))
    md = report.pick_test_table(report.pick_test(seeded, picks), picks)
    k = sum(x > 0 for x in want)
    n = sum(x != 0 for x in want)
    p = sign_p2(k, n)
    assert f"{np.mean(want):+.2f} ({k}/{len(want)}, p = {p:.2f})" in md and "all 2 settings" not in md
    # a second setting: its own row, and the bold row pools both settings' pairs
    extra = [0.3, -0.2, 0.5]
    for seed, x in zip((5, 6, 7), extra):
        write_val_run(tmp_path, "freematch", "--fa --fa-warmup 100", "noise", seed, [0.5], test=0.9 + x / 100, budget=20)
        write_val_run(tmp_path, "freematch", "", "noise", seed, [0.5], test=0.9, budget=20)
    seeded, _ = report.load_runs(str(tmp_path), by_seed=True, metric="val")
    md = report.pick_test_table(report.pick_test(seeded, picks), picks)
    both = want + extra
    p = sign_p2(sum(x > 0 for x in both), sum(x != 0 for x in both))
    k = sum(x > 0 for x in both)
    row = next(l for l in md.splitlines() if "all 2 settings" in l)
    assert row.endswith(f"**{np.mean(both):+.2f} ({k}/{len(both)}, p = {p:.2f})** |")


def test_regime_criteria_against_a_hand_count(tmp_path):
    """report.py --regime: each criterion's value and verdict, recomputed here from the hand-written runs."""
    fm = {0: 0.60, 1: 0.58, 2: 0.64, 3: 0.56, 4: 0.62}   # FreeMatch + Random, mean 60: in [55, 85]
    sup = {0: 0.55, 1: 0.60, 2: 0.61, 3: 0.40, 4: 0.60}  # above it in seeds 0, 2, 3, 4; std 8.8, not counted
    fixr = {0: 0.50, 1: 0.53, 2: 0.49, 3: 0.52, 4: 0.51}  # FixMatch + Random: std 1.58, below FreeMatch's 3.16
    fix = {0: 0.40, 1: 0.55, 2: 0.41, 3: 0.43, 4: 0.42}  # FixMatch + CoreSet: the noisiest cell, not a criterion
    for ssl, accs, al in (("freematch", fm, "random"), ("supervised", sup, "random"), ("fixmatch", fixr, "random"),
                          ("fixmatch", fix, "coreset")):
        for seed, a in accs.items():
            write_val_run(tmp_path, ssl, "", al, seed, [0.5], test=a)
    seeded, _ = report.load_runs(str(tmp_path), by_seed=True, metric="best")
    md = report.regime(seeded, [("digits", 10)])
    rows = {r.split(" | ")[0].lstrip("| "): r for r in md.splitlines()[2:]}
    assert len(rows) == 4
    r_mean, r_wins, r_std, r_any = rows.values()
    assert f"{100 * np.mean(list(fm.values())):.2f}" in r_mean and r_mean.endswith("| met |")
    gap = np.mean([100 * (fm[s] - sup[s]) for s in fm])
    assert f"4 of 5 seeds (mean gap {gap:+.2f})" in r_wins and r_wins.endswith("| met |")
    sd_fm = np.std([100 * v for v in fm.values()], ddof=1)  # 3.16: the Random cells' largest, at most 5
    assert f"largest {sd_fm:.2f} (freematch, none, random; 2 cells)" in r_std and r_std.endswith("| met |")
    sd = np.std([100 * v for v in fix.values()], ddof=1)  # 6.14: above 5, but CoreSet's cell is not a criterion
    assert f"largest {sd:.2f} (fixmatch, none, coreset; 3 cells)" in r_any and r_any.endswith("| - |")
    # stricter thresholds flip the three verdicts
    strict = report.regime(seeded, [("digits", 10)], lo=62, wins=5, max_std=3).splitlines()[2:5]
    assert all(r.endswith("| **not met** |") for r in strict)
    # a grid still running: with 6 seeds asked, no verdict yet; a setting without FreeMatch + Random: missing
    pending = report.regime(seeded, [("digits", 10), ("digits", 20)], seeds=6).splitlines()[2:]
    assert [r.split(" | ")[-1] for r in pending] == (["pending (5 of 6 seeds) |"] * 3 + ["- |"] +
                                                     ["missing |"] * 4)
    # through the command line: the section is in tables.md only with --regime
    report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "a")])
    report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "b"), "--regime"])
    assert "regime criteria" not in (tmp_path / "a" / "tables.md").read_text()
    assert md in (tmp_path / "b" / "tables.md").read_text()


@pytest.mark.parametrize("cmd", [["ssal.py"], ["report.py"], ["pretrain.py"], ["bench.py"], ["bench.py", "train"]])
def test_every_entry_script_prints_its_help(cmd, capsys):
    """--help formats every flag's help text (argparse %-expands it: a bare '%' in one crashes --help alone). In
    this process: each script's main(argv), which `python SCRIPT --help` calls."""
    with pytest.raises(SystemExit) as e:
        importlib.import_module(cmd[0][:-3]).main([*cmd[1:], "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage:") and "--help" in out
