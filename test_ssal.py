"""End-to-end tests of ssal.py: the command line (CleanRL-style smoke tests in a subprocess, the other runs in this
process), weight loading, round-0 reuse, determinism, kill and resume."""
import contextlib
import io
import json
import math
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch

import runstate
import ssal

HERE = os.path.dirname(os.path.abspath(__file__))
# one label per class (the names below); a probe of 50 images, not the preset's 500, for time
TINY = ["--budget", "10", "--iters", "4", "--batch-size", "4", "--uratio", "1", "--probe", "50"]


def run(args, tmp_path, check=True, process=False):
    """`python ssal.py --out tmp_path *args` in the folder tmp_path -> (returncode, stdout, stderr).
    process=True runs the command a user types, in a new process. By default it runs in this one: the same main
    behind the same runstate.exit_on_errors (one-line errors, exit codes), without paying the imports again (about
    10 s on 2 cores, most of a tiny run); what needs a process of its own (a kill, a signal) uses start() below."""
    if process:
        p = subprocess.run([sys.executable, os.path.join(HERE, "ssal.py"), "--out", str(tmp_path), *args],
                           capture_output=True, text=True, env=dict(os.environ, SSAL_NO_BAR="1"), cwd=tmp_path,
                           timeout=600)
    else:
        out, err, code, cwd = io.StringIO(), io.StringIO(), 0, os.getcwd()
        os.chdir(tmp_path)
        try:
            with mock.patch.dict(os.environ, SSAL_NO_BAR="1"), contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(err):
                runstate.exit_on_errors(lambda: ssal.main(["--out", str(tmp_path), *args]))
        except SystemExit as e:
            code = e.code or 0
        finally:
            os.chdir(cwd)
        p = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def load_result(tmp_path):
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert len(files) == 1, files
    return json.load(open(tmp_path / files[0]))


@pytest.mark.parametrize("extra", [["--ssl", "freematch", "--fa"], ["--ssl", "supervised"]])
def test_smoke_digits_round(tmp_path, extra):
    run([*TINY, "--rounds", "2", *extra], tmp_path, process=True)  # the command a user types
    res = load_result(tmp_path)
    assert 0.0 <= res["final_acc"] <= 1.0
    initial = set(ssal.D.initial_split(ssal.D.load_digits_arrays()[1], 10, 10, 0).tolist())
    seen = set(initial)
    for r, rnd in enumerate(res["rounds"]):
        sel = rnd["selected"]
        assert len(sel) == 10 == len(set(sel))
        assert not seen & set(sel)  # never an index already labeled
        assert rnd["num_labeled"] == 10 * (r + 1) and sum(rnd["selected_hist"]) == 10
        seen |= set(sel)
    assert res["final"]["num_labeled"] == 30
    assert res["config"]["ssl"] == extra[1]


def test_same_seed_same_selection_and_accuracy(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        run([*TINY, "--fa", "--no-reuse"], d)
    ra, rb = load_result(a), load_result(b)
    assert ra["rounds"][0]["selected"] == rb["rounds"][0]["selected"]
    assert ra["final_acc"] == rb["final_acc"] and ra["rounds"][0]["test_acc"] == rb["rounds"][0]["test_acc"]


def test_round0_is_reused_across_selectors(tmp_path):
    p1 = run([*TINY, "--al", "random"], tmp_path)
    assert "reusing" not in p1.stdout
    ck = [f for f in os.listdir(tmp_path / "round0")]
    assert len(ck) == 1
    p2 = run([*TINY, "--al", "random", "--seed", "0", "--name", "second"], tmp_path)
    assert "round 0: reusing" in p2.stdout
    r1 = json.load(open(tmp_path / "digits-b10-freematch-random-r1-s0.json"))
    r2 = json.load(open(tmp_path / "second.json"))
    assert r1["rounds"][0]["test_acc"] == r2["rounds"][0]["test_acc"]  # the same model
    assert r1["rounds"][0]["selected"] == r2["rounds"][0]["selected"]
    # a flag round 0 depends on gives another checkpoint
    run([*TINY, "--lr", "0.002", "--name", "third"], tmp_path)
    assert len(os.listdir(tmp_path / "round0")) == 2


@pytest.mark.parametrize("args, needle", [
    (["--dataset", "cifar100", "--budget", "100", "--data-dir", "nowhere"], "cifar-100-python"),  # TINY has 10
    (["--dataset", "tinyimagenet", "--budget", "200", "--data-dir", "nowhere"], "tiny-imagenet-200"),
    (["--dataset", "fashionmnist", "--data-dir", "nowhere"], "apt-get install dataset-fashion-mnist"),
    (["--weights", "missing.pth"], "--weights file not found"),
    (["--budget", "15"], "multiple of the 10 classes"),
    (["--model", "no_such_net"], "unknown --model"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
    # in this process; test_out_that_is_a_file_fails_before_training checks the same from a process of its own
    p = run([*TINY, *args], tmp_path, check=False)
    assert p.returncode == 2
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_fa_with_supervised_is_rejected(tmp_path):
    p = run(["--ssl", "supervised", "--fa"], tmp_path, check=False)
    assert p.returncode == 2 and "--fa needs unlabeled data" in p.stderr


def test_load_weights_resizes_grid_and_drops_head(tmp_path):
    import timm
    src = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=2,
                            num_classes=7)
    path = tmp_path / "w.pth"
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=24, depth=1, num_heads=2,
                            num_classes=3)
    head_before = dst.head.weight.clone()
    runstate.load_weights(dst, str(path))
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert torch.equal(dst.head.weight, head_before)  # the head is fresh, not the 7-class one
    assert dst.pos_embed.shape == (1, 1 + 8 * 8, 24)
    assert torch.equal(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # class token's embedding kept
    # a 4x4 grid upsampled to 8x8: the mean over the grid is about preserved
    assert torch.allclose(dst.pos_embed[0, 1:].mean(0), src.pos_embed[0, 1:].mean(0), atol=0.05)


def test_cosine_lr_closed_form():
    assert ssal.cosine_lr(0, 100, 10) == pytest.approx(0.1)
    assert ssal.cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert ssal.cosine_lr(10, 100, 10) == pytest.approx(1.0)
    assert ssal.cosine_lr(100, 100, 10) == pytest.approx(math.cos(7 * math.pi / 16))


def test_features_feed_the_head():
    args = ssal.get_args([])
    model = ssal.build_model(args, 10, 32)
    x = torch.randn(3, 3, 32, 32)
    z, logits = ssal.features_and_logits(model.eval(), x)
    assert z.shape == (3, model.num_features)
    assert torch.allclose(logits, model(x), atol=1e-5)  # logits = W g(x) (Eq. 14) is the model's output
    assert torch.allclose(logits, z @ model.head.weight.T + model.head.bias, atol=1e-5)


@pytest.mark.parametrize("al", ssal.al_strategies.NAMES)
def test_every_selector_runs_in_the_pipeline(tmp_path, al):
    run([*TINY, "--fa", "--al", al], tmp_path)
    res = load_result(tmp_path)
    sel = res["rounds"][0]["selected"]
    pool = set(ssal.D.pool_of(1297, ssal.D.initial_split(ssal.D.load_digits_arrays()[1], 10, 10, 0)).tolist())
    assert len(set(sel)) == 10 and set(sel) <= pool
    assert res["config"]["al"] == al and res["config"]["fa"] is True


def train_six(*extra):
    """Round 0 of 6 iterations with FA, in-process: (weights, record, SSL state)."""
    data = ssal.D.Data("digits")
    args = ssal.get_args([*TINY, "--iters", "6", "--fa", *extra])
    torch.manual_seed(args.seed)
    tr, rec = ssal.train(args, data, ssal.D.initial_split(data.y_tr, 10, 10, 0), 0)
    return tr.model.state_dict(), rec, tr.algo.state_dict()


def test_evaluation_does_not_change_training():
    """Evaluating every iteration must leave training exactly as evaluating once at the end: the test pass may
    draw no random number that augmentation, sampling or dropout would otherwise get."""
    (w1, r1, _), (w2, r2, _) = train_six("--eval-every", "1"), train_six("--eval-every", "1000")
    assert [p["iter"] for p in r1["curve"]] == [1, 2, 3, 4, 5, 6] and [p["iter"] for p in r2["curve"]] == [6]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert r1["acc_last"] == r2["acc_last"] == r1["curve"][-1]["acc"]
    assert r1["acc_best"] == max(p["acc"] for p in r1["curve"])


def test_the_probe_does_not_change_training():
    """The probe's fixed views (diagnostics.Probe) draw from their own seeded generators: the same weights, curve
    and FreeMatch state with and without it."""
    (w0, r0, a0), (w1, r1, a1) = train_six("--probe", "0"), train_six("--probe", "80")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert r0["curve"] == r1["curve"] and all(torch.equal(a0[k], a1[k]) for k in a0)
    assert "diag_curve" in r1 and "diag_curve" not in r0


def test_curve_and_log_in_the_results(tmp_path):
    run(["--iters", "40", "--eval-every", "10", "--log-every", "15", "--batch-size", "4", "--uratio", "1", "--fa"],
        tmp_path)
    res = load_result(tmp_path)
    for rec in (res["rounds"][0], res["final"]):
        assert [p["iter"] for p in rec["curve"]] == [10, 20, 30, 40]
        accs = [p["acc"] for p in rec["curve"]]
        assert rec["acc_best"] == max(accs) and rec["acc_last"] == accs[-1] == rec["test_acc"]
        assert all(0 <= a <= 1 and round(a * 500) == a * 500 for a in accs)  # k / 500 test images
    assert res["final_acc"] == res["final"]["acc_last"] and res["final_best_acc"] == res["final"]["acc_best"]
    lines = [json.loads(line) for line in open(tmp_path / (res["config"]["name"] + ".log.jsonl"))]
    assert lines[0]["event"] == "start"
    train = [x for x in lines if "L_l" in x]
    evals = [x for x in lines if "test_acc" in x]
    # every 15 iterations and at the last one, for round 0 and the final training (round 1)
    assert [(x["round"], x["iter"]) for x in train] == [(r, i) for r in (0, 1) for i in (15, 30, 40)]
    assert [x["test_acc"] for x in evals] == [p["acc"] for p in res["rounds"][0]["curve"] + res["final"]["curve"]]
    for x in train:
        assert {"lr", "L_u", "fairness", "L_s", "L_c", "mask", "tau", "tau_min", "sec_per_iter"} <= set(x)
        assert 0 <= x["mask"] <= 1 and x["lr"] > 0
    # lr at iteration 15: the warm-up's (it + 1) / warmup of iteration index 14, times the preset's 5e-4
    assert train[0]["lr"] == pytest.approx(5e-4 * 15 / 25)


def test_layer_decay_reaches_the_optimizer():
    args = ssal.get_args(["--layer-decay", "0.25"])  # not the preset's 0.5: the flag must reach the optimizer
    model = ssal.build_model(args, 10, 32)
    opt, _ = ssal.build_optimizer(args, model)
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before the schedule
    depth = len(model.blocks)  # timm's groups: embeddings 0, blocks 1..depth, final norm + head depth + 1
    assert lr_of[id(model.head.weight)] == pytest.approx(5e-4)
    assert lr_of[id(model.blocks[-1].mlp.fc1.weight)] == pytest.approx(5e-4 * 0.25)
    assert lr_of[id(model.blocks[0].mlp.fc1.weight)] == pytest.approx(5e-4 * 0.25 ** depth)
    assert lr_of[id(model.patch_embed.proj.weight)] == pytest.approx(5e-4 * 0.25 ** (depth + 1))
    # the digits preset fine-tunes with USB's 0.5; --scratch trains every layer at the full lr
    assert ssal.get_args([]).layer_decay == 0.5 and ssal.get_args(["--scratch"]).layer_decay is None


# ----------------------------------------------------------------------------------------------------------------
# long runs: kill and resume, signals, divergence, flag checks, corrupt files

LONG = ["--budget", "10", "--iters", "60", "--eval-every", "10", "--log-every", "15", "--ckpt-every", "5",
        "--batch-size", "4", "--uratio", "1", "--fa", "--al", "noise", "--probe", "50"]
LONG_NAME = "digits-b10-freematch-fa_s1_c0.01_T10-noise-r1-s0"


def start(args, out):
    env = dict(os.environ, SSAL_NO_BAR="1")
    return subprocess.Popen([sys.executable, os.path.join(HERE, "ssal.py"), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out)


def wait_for_log(out, name, pred, proc, timeout=300):
    """Poll the run's training log until a line satisfies pred (the run is then where the test wants it)."""
    import time
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, "the run ended before the point to stop it at"
        try:
            lines = [json.loads(x) for x in open(out / f"{name}.log.jsonl") if x.endswith("\n")]
        except FileNotFoundError:
            lines = []
        if any(pred(x) for x in lines):
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the log")


def comparable(out, name):
    """What an interrupted run must reproduce: the result without wall times, and the log without timings."""
    res = json.load(open(out / f"{name}.json"))
    drop = ("time_train", "time_probe", "time_features", "time_select", "time_total", "reused")  # wall times
    for rec in res["rounds"] + [res["final"]]:
        for k in drop:
            rec.pop(k, None)
    res.pop("time_total")
    res["config"].pop("out")
    log = [{k: v for k, v in x.items() if k != "sec_per_iter"}
           for x in map(json.loads, open(out / f"{name}.log.jsonl")) if "event" not in x]
    return res, log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    run(LONG, out)
    return comparable(out, LONG_NAME)


@pytest.mark.parametrize("where", ["round 0", "selection", "final"])
def test_sigkill_and_rerun_gives_the_uninterrupted_result(tmp_path, uninterrupted, where):
    import random
    import signal
    # a random iteration to stop after (printed on failure); at most 45, so that the log line that triggers the kill
    # is not the one at the last iteration (60), after which a final training ends before the kill lands
    it = random.Random().randrange(6, 46)
    pred = {"round 0": lambda x: x.get("round") == 0 and x.get("iter", 0) >= it,
            # round 0's last log line; the run then checkpoints and spends ~15 s in noise stability's 31 passes
            "selection": lambda x: x.get("round") == 0 and x.get("iter") == 60 and "lr" in x,
            "final": lambda x: x.get("round") == 1 and x.get("iter", 0) >= it}[where]
    p = start(LONG, tmp_path)
    wait_for_log(tmp_path, LONG_NAME, pred, p)
    if where == "selection":
        import time
        time.sleep(2)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert not (tmp_path / f"{LONG_NAME}.json").exists()
    assert (tmp_path / "ckpt" / f"{LONG_NAME}.pt").exists()
    r = run(LONG, tmp_path)
    assert f"resuming {LONG_NAME}: " in r.stdout
    if where == "selection":
        assert "round 0, selection" in r.stdout
    res, log = comparable(tmp_path, LONG_NAME)
    ref_res, ref_log = uninterrupted
    assert res["rounds"][0]["selected"] == ref_res["rounds"][0]["selected"], f"stopped after iteration {it}"
    assert res == ref_res and log == ref_log, f"stopped after iteration {it}"
    assert not (tmp_path / "ckpt").exists()  # deleted once the result is written


def test_sigterm_checkpoints_stops_with_143_and_resumes(tmp_path, uninterrupted):
    import signal
    p = start(LONG, tmp_path)
    wait_for_log(tmp_path, LONG_NAME, lambda x: x.get("round") == 1 and x.get("iter", 0) >= 13, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143
    assert err.strip().startswith("stopped: stopped by signal") and "run the same command to resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    ck = torch.load(tmp_path / "ckpt" / f"{LONG_NAME}.pt", weights_only=False)
    assert ck["rnd"] == 1 and 13 <= ck["train"]["loop"]["n"] < 60  # saved at the signal, not at the last multiple of 5
    r = run(LONG, tmp_path)
    assert "resuming" in r.stdout and "the final training, iteration" in r.stdout
    assert comparable(tmp_path, LONG_NAME) == uninterrupted


def test_divergence_stops_with_3_and_no_result(tmp_path):
    p = run(["--iters", "300", "--ssl", "fixmatch", "--lr", "1000", "--ckpt-every", "2", "--batch-size", "4",
             "--uratio", "1"], tmp_path, check=False)
    assert p.returncode == 3
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "non-finite loss at round 0, iteration" in err and "L_l=" in err
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert (tmp_path / "ckpt").is_dir()  # the last checkpoint stays (written every 2 iterations)


def test_resume_refuses_other_flags_and_no_resume_starts_over(tmp_path):
    ck = tmp_path / "ckpt"
    ck.mkdir()
    name = "digits-b10-freematch-random-r1-s0"
    p = start([*TINY, "--iters", "400", "--ckpt-every", "1"], tmp_path)
    while not (ck / f"{name}.pt").exists():
        assert p.poll() is None
    p.kill()
    p.communicate()
    r = run([*TINY, "--iters", "400", "--lr", "0.002"], tmp_path, check=False)
    assert r.returncode == 2 and "was written with other flags (--lr 0.0005 -> 0.002)" in r.stderr
    r = run([*TINY, "--no-resume"], tmp_path)
    assert "resuming" not in r.stdout


def test_corrupt_checkpoints_are_named_and_rebuilt(tmp_path):
    run(TINY, tmp_path)
    res = load_result(tmp_path)
    (r0,) = list((tmp_path / "round0").iterdir())
    r0.write_bytes(r0.read_bytes()[:1000])  # cut short
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / f"{res['config']['name']}.pt").write_text("not a checkpoint")
    os.remove(tmp_path / f"{res['config']['name']}.json")
    r = run(TINY, tmp_path)
    warnings = [x for x in r.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 2
    assert str(ck / res["config"]["name"]) in warnings[0] and "starting the run over" in warnings[0]
    assert r0.name in warnings[1] and "training round 0 again" in warnings[1]
    again = load_result(tmp_path)
    assert again["final_acc"] == res["final_acc"] and again["rounds"][0]["selected"] == res["rounds"][0]["selected"]
    torch.load(r0, weights_only=False)  # rebuilt: readable again


@pytest.mark.parametrize("args, needle", [
    (["--iters", "0"], "--iters must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--uratio", "-1"], "--uratio must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--queue-len", "0"], "--queue-len must be at least 1"),
    (["--eval-every", "0"], "--eval-every must be at least 1"),
    (["--log-every", "0"], "--log-every must be at least 1"),
    (["--ckpt-every", "0"], "--ckpt-every must be at least 1"),
    (["--warmup", "-5"], "--warmup must be at least 0"),
    (["--lr", "0"], "--lr must be a finite number above 0"),
    (["--lr", "inf"], "--lr must be a finite number above 0"),
    (["--lr", "nan"], "--lr must be a finite number above 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number of at least 0"),
    (["--lambda-s", "nan"], "--lambda-s must be a finite number of at least 0"),
    (["--lambda-c", "-0.1"], "--lambda-c must be a finite number of at least 0"),
    (["--layer-decay", "0"], "--layer-decay must be in (0, 1]"),
    (["--p-cutoff", "1.5"], "--p-cutoff must be in (0, 1]"),
    (["--ema-p", "1"], "--ema-p must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--workers", "-2"], "--workers must be -1"),
    (["--iters", "abc"], "invalid int value"),
    (["--ssl", "mixmatch"], "invalid choice"),
    (["--name", "a/b"], "must be a file name"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device cuda"),
    (["--device", "tpu"], "is not a device name"),
    (["--weights", "README.md"], "is not a PyTorch checkpoint that loads"),
    (["--rounds", "200"], "more than the 1297 training images"),
    (["--ls-samples", "masked"], "is a reading of FA: add --fa"),
    (["--lc-norm", "unit"], "is a reading of FA: add --fa"),
    (["--fa-warmup", "100"], "is a reading of FA: add --fa"),
    (["--fa", "--fa-warmup", "-1"], "--fa-warmup must be at least 0"),
    (["--fa", "--lc-views", "some"], "invalid choice"),
])
def test_every_flag_is_checked_before_work(tmp_path, capsys, args, needle):
    """In-process (the subprocess tests above check the one-line output of the command): a parser-level mistake
    exits with 2 and one line; a file or device mistake raises DataError before any data is loaded."""
    if "README.md" in args:
        args = ["--weights", os.path.join(HERE, "README.md")]
    argv = [*TINY, *args, "--out", str(tmp_path)]
    try:
        ssal.main(argv)
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
    except ssal.D.DataError as e:
        err = f"error: {e}"
    else:
        raise AssertionError(f"{args} was accepted")
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)  # nothing trained, no log, no checkpoint


def test_out_that_is_a_file_fails_before_training(tmp_path):
    """From a process of its own: what the user sees of a mistake is one line on stderr (no warning, no traceback)."""
    f = tmp_path / "afile"
    f.write_text("x")
    p = subprocess.run([sys.executable, os.path.join(HERE, "ssal.py"), *TINY, "--out", str(f)], capture_output=True,
                       text=True, env=dict(os.environ, SSAL_NO_BAR="1"), cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and "--out" in p.stderr and "can not be created" in p.stderr
    assert "round 0" not in p.stdout and len(p.stderr.strip().splitlines()) == 1


def test_weights_sharing_no_tensor_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"model": {"foo.weight": torch.zeros(3, 3), "bar.bias": torch.zeros(3)}}, path)
    p = run([*TINY, "--weights", str(path)], tmp_path, check=False)
    assert p.returncode == 2 and "shares no tensor with --model" in p.stderr
    args = ssal.get_args(["--scratch"])  # random starts: the preset's weights would make both models equal anyway
    model = ssal.build_model(args, 10, 32)
    good = tmp_path / "good.pth"
    torch.save({"state_dict": model.state_dict()}, good)
    other = ssal.build_model(ssal.get_args(["--scratch", "--seed", "1"]), 10, 32)
    assert not torch.equal(other.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    runstate.load_weights(other, str(good))
    assert torch.equal(other.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)


def test_bf16_training_runs_close_to_float32(tmp_path):
    """--amp bf16 on the CPU: the first step's losses within 5% of float32 (bfloat16 keeps 8 bits of mantissa,
    about 0.4% per rounding), and not bit-identical to them (autocast is really on); later steps stay finite."""
    data = ssal.D.Data("digits")
    labeled = ssal.D.initial_split(data.y_tr, 10, 10, 0)
    lines = {}
    for amp in ("none", "bf16"):
        args = ssal.get_args([*TINY, "--iters", "3", "--log-every", "1", "--fa", "--amp", amp])
        log = runstate.RunLog(str(tmp_path / f"{amp}.jsonl"))
        ssal.train(args, data, labeled, 0, log)
        log.close()
        lines[amp] = [json.loads(x) for x in open(tmp_path / f"{amp}.jsonl") if '"L_l"' in x]
    a, b = lines["none"][0], lines["bf16"][0]
    for k in ("L_l", "L_u", "L_s", "L_c", "mask"):
        assert b[k] == pytest.approx(a[k], rel=0.05, abs=0.02), k
    assert any(a[k] != b[k] for k in ("L_l", "L_u", "L_s", "L_c"))
    assert all(math.isfinite(x[k]) for x in lines["bf16"] for k in ("L_l", "L_u", "L_s", "L_c"))


@pytest.mark.parametrize("ssl", ["fixmatch", "freematch"])
def test_weak_view_without_graph_gives_the_single_forward_gradients(ssl):
    """Without FA, forward_losses forwards x_ulb_w without a graph; the loss and every gradient must equal those of
    USB's single forward of [x_lb, x_ulb_w, x_ulb_s] (computed here directly)."""
    data = ssal.D.Data("digits")
    args = ssal.get_args([*TINY, "--ssl", ssl, "--p-cutoff", "0.1"])
    torch.manual_seed(0)
    lb = {"weak": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), "y": torch.arange(4)}
    ulb = {k: torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8) for k in ("weak", "strong")}
    model = ssal.build_model(args, 10, 32)
    algos = [ssal.ssl_algos.build_ssl(ssl, 10, 0.1, 0.9, 0.001) for _ in range(2)]
    loss, terms = ssal.forward_losses(args, model, algos[0], None, None, [lb, ulb], data.normalize)
    model.zero_grad()
    loss.backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters()}
    x = data.normalize(torch.cat([lb["weak"], ulb["weak"], ulb["strong"]]))
    logits = model(x)
    lw, ls = logits[4:].chunk(2)
    ref = torch.nn.functional.cross_entropy(logits[:4], lb["y"]) + algos[1].unlabeled_loss(lw, ls)[0]
    model.zero_grad()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert 0 < terms["mask"] <= 1  # some pseudo-labels pass, so L_u has a gradient
    for n, p in model.named_parameters():
        assert torch.allclose(g1[n], p.grad, atol=1e-6, rtol=1e-4), n


def test_amp_auto_is_float32_even_on_a_bf16_gpu(monkeypatch):
    """--amp auto reproduces USB's protocol (amp: False): float32 wherever it runs, also where bf16 would be
    available; bf16 stays one flag away."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert ssal.get_args(["--device", "cuda"]).amp == "none"
    assert ssal.get_args(["--device", "auto"]).amp == "none"
    assert ssal.get_args(["--device", "cuda", "--amp", "bf16"]).amp == "bf16"



# ----------------------------------------------------------------------------------------------------------------
# FA's readings (fa.READINGS)

def test_readings_name_the_run_only_when_not_the_default_and_key_round_0():
    base = ssal.get_args(["--fa"])
    assert base.name == "digits-b20-freematch-fa_s1_c0.01_T10-random-r1-s0"  # the committed runs' names
    other = ssal.get_args(["--fa", "--ls-samples", "masked", "--lc-norm", "unit", "--lc-views", "all",
                           "--fa-trainings", "query", "--fa-warmup", "100"])
    assert other.name == ("digits-b20-freematch-fa_s1_c0.01_T10_lsmasked_lcunit_lcvall_fatquery_faw100-random-r1-s0")
    # every reading but --fa-trainings changes round 0; query and all share it (round 0 is FA in both)
    r0 = runstate.round0_path(base)
    assert runstate.round0_path(ssal.get_args(["--fa", "--fa-trainings", "query"])) == r0
    for extra in (["--ls-samples", "masked"], ["--lc-norm", "unit"], ["--lc-views", "all"], ["--fa-warmup", "5"]):
        assert runstate.round0_path(ssal.get_args(["--fa", *extra])) != r0, extra


def test_fa_trainings_query_makes_the_final_training_plain_ssl(tmp_path):
    run([*TINY, "--fa", "--fa-trainings", "query", "--log-every", "2"], tmp_path)
    name = "digits-b10-freematch-fa_s1_c0.01_T10_fatquery-random-r1-s0"
    lines = [json.loads(x) for x in open(tmp_path / f"{name}.log.jsonl") if '"L_l"' in x]
    assert lines and all(("L_s" in d and "L_c" in d) == (d["round"] == 0) for d in lines)


def fa_batches(B=4):
    torch.manual_seed(0)
    lb = {k: torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8) for k in ("weak", "strong")}
    lb.update(y=torch.arange(B), idx=torch.arange(B))
    ulb = {k: torch.randint(0, 256, (B, 3, 32, 32), dtype=torch.uint8) for k in ("weak", "strong")}
    return lb, ulb


@pytest.mark.parametrize("views", ["unlabeled", "all"])
def test_lc_views_computes_lc_over_the_pairs_it_names(views):
    data = ssal.D.Data("digits")
    args = ssal.get_args([*TINY, "--fa", "--lc-views", views])
    model = ssal.build_model(args, 10, 32)
    tr = ssal.setup_training(args, data, torch.arange(4).numpy())
    lb, ulb = fa_batches()
    _, terms = ssal.forward_losses(args, model, tr.algo, tr.queues, tr.pos_of, [lb, ulb], data.normalize)
    z, _ = ssal.features_and_logits(model, data.normalize(torch.cat([lb["weak"], lb["strong"], ulb["weak"],
                                                                     ulb["strong"]])))
    z_lb_w, z_lb_s, z_u_w, z_u_s = z.chunk(4)
    zs, zw = (z_u_s, z_u_w) if views == "unlabeled" else (torch.cat([z_u_s, z_lb_s]), torch.cat([z_u_w, z_lb_w]))
    assert terms["L_c"].item() == pytest.approx(ssal.fa.contrastive_loss(zs, zw).item(), rel=1e-4)


def test_fa_warmup_scales_the_fa_terms_linearly(monkeypatch):
    data = ssal.D.Data("digits")
    args = ssal.get_args([*TINY, "--fa", "--fa-warmup", "8", "--ssl", "fixmatch"])
    model = ssal.build_model(args, 10, 32)
    tr = ssal.setup_training(args, data, torch.arange(4).numpy())
    lb, ulb = fa_batches()
    losses = {}
    for scale in (0.0, 0.5, 1.0):
        loss, t = ssal.forward_losses(args, model, tr.algo, tr.queues, tr.pos_of, [lb, ulb], data.normalize, scale)
        losses[scale] = loss.item()
        base = (t["L_l"] + args.lambda_u * t["L_u"]).item()
        assert loss.item() == pytest.approx(base + scale * (args.lambda_s * t["L_s"] + args.lambda_c * t["L_c"]).item(),
                                            rel=1e-5)
    assert losses[0.0] < losses[0.5] < losses[1.0]
    seen = []  # the ramp train_step hands forward_losses: it / N, then 1
    real = ssal.forward_losses
    monkeypatch.setattr(ssal, "forward_losses", lambda *a: (seen.append(a[-1]), real(*a))[1])
    for it in (0, 2, 4, 8, 30):
        ssal.train_step(args, tr, [lb, ulb], data.normalize, it)
    assert seen == [0.0, 0.25, 0.5, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------------
# the validation split

def test_hold_out_is_stratified_the_same_for_every_seed_and_leaves_the_training_set():
    data, other = ssal.D.Data("digits"), ssal.D.Data("digits")
    y_all = data.y_tr.copy()
    val = ssal.D.hold_out(data, 200)
    assert torch.equal(torch.as_tensor(val), torch.as_tensor(ssal.D.hold_out(other, 200)))  # fixed, not per --seed
    assert len(data.y_val) == 200 and len(data.y_tr) == len(y_all) - 200
    counts, full = torch.bincount(torch.as_tensor(data.y_val)), torch.bincount(torch.as_tensor(y_all))
    assert (counts - full.double() * 200 / len(y_all)).abs().max() <= 1  # stratified: every class in proportion
    keep = sorted(set(range(len(y_all))) - set(val.tolist()))
    assert torch.equal(torch.as_tensor(data.y_tr), torch.as_tensor(y_all[keep]))  # the rest, in order
    with pytest.raises(ssal.D.DataError):
        ssal.D.hold_out(ssal.D.Data("digits"), 1297)


def test_val_size_writes_val_curves_and_the_test_accuracy_at_the_best_val_point(tmp_path):
    run([*TINY, "--val-size", "200", "--iters", "6", "--eval-every", "2"], tmp_path)
    res = load_result(tmp_path)
    assert res["config"]["val_size"] == 200 and len(res["val_indices"]) == 200
    assert "-val200-" in res["config"]["name"]
    for rec in res["rounds"] + [res["final"]]:
        val, test = [p["acc"] for p in rec["val_curve"]], [p["acc"] for p in rec["curve"]]
        assert [p["iter"] for p in rec["val_curve"]] == [p["iter"] for p in rec["curve"]] == [2, 4, 6]
        i = max(i for i in range(3) if val[i] == max(val))  # the later of equal validation accuracies
        assert rec["acc_val"] == test[i]
    assert res["final_val_acc"] == res["final"]["acc_val"]
    sel = set(res["rounds"][0]["selected"])
    assert max(sel) < 1297 - 200  # selected from the training images that are left


def test_no_val_size_writes_no_val_curve(tmp_path):
    run(TINY, tmp_path)
    res = load_result(tmp_path)
    assert "final_val_acc" not in res and all("val_curve" not in r for r in res["rounds"] + [res["final"]])


def test_help_states_every_preset_value(capsys):
    """--help as a user reads it: each preset flag's 'Preset: ...' text, parsed back, gives every dataset's value in
    ssal.PRESETS (and SCRATCH_PRESETS after '--scratch:'), so that a new preset cannot leave the help stale."""
    with pytest.raises(SystemExit):
        ssal.get_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone
    flags = {}  # "--iters" -> its help text
    for part in text.split(" --")[1:]:
        name = "--" + part.split()[0]
        flags.setdefault(name, part)

    def parse(groups):  # "digits, fashionmnist 16; cifar100 8" -> {"digits": "16", "fashionmnist": "16", ...}
        out = {}
        for g in groups.split("; "):
            names, value = g.rsplit(" ", 1)
            out.update({n: value for n in names.split(", ")})
        return out

    def same(shown, v):
        return shown == "none" if v is None else (math.isclose(float(shown), v) if isinstance(v, (int, float))
                                                   else shown == v)

    keys = ["budget", "iters", "batch_size", "uratio", "lr", "weight_decay", "layer_decay", "warmup", "ema_p",
            "eval_every", "log_every", "probe", "val_size", "model", "weights"]
    for key in keys:
        h = flags["--" + key.replace("_", "-")]
        body = h.split("Preset: ", 1)[1]
        main, _, scratch = body.partition(" (--scratch: ")
        shown = parse(main.rstrip(". "))
        assert set(shown) == set(ssal.PRESETS), (key, shown)
        for ds, v in shown.items():
            assert same(v, ssal.PRESETS[ds][key]), (key, ds, v)
        want = {ds: sp[key] for ds, sp in ssal.SCRATCH_PRESETS.items() if key in sp}
        got = parse(scratch.split(")")[0].replace(", ", "; ")) if scratch else {}
        assert set(got) == set(want) and all(same(got[ds], want[ds]) for ds in want), (key, got, want)
