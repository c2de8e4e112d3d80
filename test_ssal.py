"""End-to-end tests of ssal.py: the command line in a subprocess (CleanRL-style smoke tests), weight loading,
round-0 reuse and determinism."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ssal

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ["--iters", "4", "--batch-size", "4", "--uratio", "1"]


def run(args, tmp_path, check=True):
    env = dict(os.environ, SSAL_NO_BAR="1")
    p = subprocess.run([sys.executable, os.path.join(HERE, "ssal.py"), "--out", str(tmp_path), *args],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def load_result(tmp_path):
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    assert len(files) == 1, files
    return json.load(open(tmp_path / files[0]))


@pytest.mark.parametrize("extra", [["--ssl", "freematch", "--fa"], ["--ssl", "supervised"]])
def test_smoke_digits_round(tmp_path, extra):
    run([*TINY, "--rounds", "2", *extra], tmp_path)
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
    (["--dataset", "cifar100", "--data-dir", "nowhere"], "cifar-100-python"),
    (["--dataset", "tinyimagenet", "--data-dir", "nowhere"], "tiny-imagenet-200"),
    (["--weights", "missing.pth"], "--weights file not found"),
    (["--budget", "15"], "multiple of the 10 classes"),
    (["--model", "no_such_net"], "unknown --model"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, needle):
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
    ssal.load_weights(dst, str(path))
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


def test_evaluation_does_not_change_training():
    """Evaluating every iteration must leave training exactly as evaluating once at the end: the test pass may
    draw no random number that augmentation, sampling or dropout would otherwise get."""
    data = ssal.D.Data("digits")
    labeled = ssal.D.initial_split(data.y_tr, 10, 10, 0)
    out = {}
    for every in (1, 1000):
        args = ssal.get_args([*TINY, "--iters", "6", "--fa", "--eval-every", str(every)])
        torch.manual_seed(args.seed)
        model, _, _, rec = ssal.train(args, data, labeled, 0)
        out[every] = (model.state_dict(), rec)
    (w1, r1), (w2, r2) = out[1], out[1000]
    assert [p["iter"] for p in r1["curve"]] == [1, 2, 3, 4, 5, 6] and [p["iter"] for p in r2["curve"]] == [6]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert r1["acc_last"] == r2["acc_last"] == r1["curve"][-1]["acc"]
    assert r1["acc_best"] == max(p["acc"] for p in r1["curve"])


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
    # lr at iteration 15: the warm-up's (it + 1) / warmup of iteration index 14, times the preset's 1e-3
    assert train[0]["lr"] == pytest.approx(1e-3 * 15 / 75)


def test_layer_decay_reaches_the_optimizer():
    args = ssal.get_args(["--layer-decay", "0.5"])
    model = ssal.build_model(args, 10, 32)
    opt, _ = ssal.build_optimizer(args, model)
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}  # before the schedule
    depth = len(model.blocks)  # timm's groups: embeddings 0, blocks 1..depth, final norm + head depth + 1
    assert lr_of[id(model.head.weight)] == pytest.approx(1e-3)
    assert lr_of[id(model.blocks[-1].mlp.fc1.weight)] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(model.blocks[0].mlp.fc1.weight)] == pytest.approx(1e-3 * 0.5 ** depth)
    assert lr_of[id(model.patch_embed.proj.weight)] == pytest.approx(1e-3 * 0.5 ** (depth + 1))
