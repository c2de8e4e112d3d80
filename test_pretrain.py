"""pretrain.py: the NT-Xent loss, the digits look of the renderings, the 1-NN measure, the weights it writes, and
how ssal.py starts from them (preset) or not (--scratch)."""
import json
import math
import os

import numpy as np
import pytest
import torch

import data as D
import pretrain as P
import runstate
import ssal

HERE = os.path.dirname(os.path.abspath(__file__))


def test_nt_xent_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2, temp = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), 0.3
    z = [v / v.norm() for v in torch.cat([z1, z2])]
    total = 0.0
    for i in range(10):
        j = (i + 5) % 10  # the other view of the same image
        num = math.exp(float(z[i] @ z[j]) / temp)
        den = sum(math.exp(float(z[i] @ z[k]) / temp) for k in range(10) if k != i)
        total += -math.log(num / den)
    assert P.nt_xent(z1, z2, temp).item() == pytest.approx(total / 10, rel=1e-5)


def test_to_digits_is_the_optdigits_preprocessing():
    """A 32x32 bitmap whose 4x4 blocks hold v on-pixels must become exactly data.load_digits_arrays' image of the
    8x8 digit with values v (the UCI optdigits counts)."""
    from sklearn.datasets import load_digits
    x_tr, _, _, _ = D.load_digits_arrays()
    imgs = load_digits().images[:40].astype(int)  # [40, 8, 8], 0..16
    bitmap = torch.zeros(40, 1, 32, 32)
    for n in range(40):
        for r in range(8):
            for c in range(8):
                block = torch.zeros(16)
                block[:imgs[n, r, c]] = 1  # v pixels on, anywhere in the block
                bitmap[n, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = block[torch.randperm(16)].view(4, 4)
    from sklearn.model_selection import train_test_split  # where the first 40 images sit in the training split
    y = load_digits().target
    tr, _ = train_test_split(np.arange(len(y)), test_size=500, stratify=y, random_state=0)
    pos = {i: k for k, i in enumerate(np.sort(tr))}
    for n in range(40):
        if n in pos:
            expect = torch.from_numpy(x_tr[pos[n]]).permute(2, 0, 1)  # [3, 32, 32]
            assert torch.equal(P.to_digits(bitmap[n:n + 1])[0], expect)


def test_warp_without_deformation_is_the_identity():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 32, 32, generator=g)
    y = P.warp(x, g, rot=0, shear=0, scale=(1, 1), squeeze=(1, 1), shift=0, elastic=0, thick=0)
    assert torch.allclose(y, x, atol=1e-5)
    y = P.warp(x, g, rot=0, shear=0, scale=(1, 1), squeeze=(1, 1), shift=0, elastic=0, thick=2.0)  # all dilated
    assert torch.allclose(y, torch.nn.functional.max_pool2d(x, 3, 1, 1), atol=1e-5)


def test_charset_has_no_digit():
    chars = P.charset()
    assert len(chars) > 300 and not any(ch.isdigit() for ch in chars)
    assert set("ABCxyz") <= set(chars)


def brute_one_nn(model, data, x_q, y_q, seeds):
    """1-NN accuracies (%) by a loop over query images and cosine similarities written out."""
    with torch.no_grad():
        model.eval()
        f = lambda x: ssal.features_and_logits(model, data.normalize(torch.from_numpy(x).permute(0, 3, 1, 2)))[0]
        f_q = f(x_q).numpy()
        accs = []
        for seed in seeds:
            lab = D.initial_split(data.y_tr, data.num_classes, data.num_classes, seed)
            f_l = f(data.x_tr[lab]).numpy()
            hits = 0
            for i in range(len(f_q)):
                cos = [f_q[i] @ f_l[k] / np.linalg.norm(f_q[i]) / np.linalg.norm(f_l[k]) for k in range(len(lab))]
                hits += data.y_tr[lab][int(np.argmax(cos))] == y_q[i]
            accs.append(100 * hits / len(f_q))
    return accs


def test_one_nn_against_a_brute_force_search():
    data = D.Data("digits")
    model = ssal.build_model(ssal.get_args(["--scratch"]), 10, data.size)
    mu, sd, accs = P.one_nn(model, data, seeds=(0, 3))
    assert accs == pytest.approx(brute_one_nn(model, data, data.x_te, data.y_te, (0, 3)))
    assert mu == pytest.approx(np.mean(accs)) and sd == pytest.approx(np.std(accs, ddof=1))


def test_one_nn_on_validation_queries_never_reads_the_test_set(tmp_path, monkeypatch):
    """queries="val": the held-out images of ssal.py's --val-size split are the queries, the labeled images come
    from the rest (as ssal.py draws them), the caller's data is left whole, and the test images are not used
    (scrambling them changes nothing)."""
    from test_data import small_fashion
    small_fashion(tmp_path, n_tr=60, n_te=20)
    monkeypatch.setattr(P, "VAL_SIZE", 20)
    data = D.Data("fashionmnist", str(tmp_path))
    n_tr = len(data.y_tr)
    model = ssal.build_model(ssal.get_args(["--dataset", "fashionmnist", "--scratch"]), 10, data.size)
    _, _, accs = P.one_nn(model, data, seeds=(0, 1), queries="val")
    assert len(data.y_tr) == n_tr and not hasattr(data, "x_val")
    held = D.Data("fashionmnist", str(tmp_path))
    D.hold_out(held, 20)
    assert accs == pytest.approx(brute_one_nn(model, held, held.x_val, held.y_val, (0, 1)))
    data.x_te, data.y_te = data.x_te[::-1].copy(), (data.y_te + 1) % 10
    assert P.one_nn(model, data, seeds=(0, 1), queries="val")[2] == accs


def test_pretrain_writes_weights_that_ssal_loads(tmp_path, capsys):
    out = tmp_path / "w.pt"
    P.main(["--chars-iters", "2", "--simclr-iters", "2", "--batch", "16", "--device", "cpu", "--out", str(out)])
    assert "1-NN test accuracy" in capsys.readouterr().out and (tmp_path / "w.json").is_file()
    state = torch.load(out)
    assert not any(k.startswith("head") for k in state)
    model = ssal.build_model(ssal.get_args(["--weights", str(out)]), 10, 32)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


def test_fashion_view_without_crop_or_brightness_is_the_image_or_its_mirror():
    x = torch.rand(64, 1, 32, 32)
    v = P.fashion_view(x, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1), ink=(1, 1))
    want = (x * 255).round().to(torch.uint8)
    same = (v[:, 0] == want[:, 0]).flatten(1).all(1)
    mirror = (v[:, 0] == want[:, 0].flip(-1)).flatten(1).all(1)
    assert (same | mirror).all() and same.any() and mirror.any() and (v[:, 0] == v[:, 2]).all()


def test_fashion_view_crops_a_region_and_scales_it_up():
    """A quarter-area square crop (half the side) magnifies 2x: on a horizontal ramp of slope 1/31 per pixel the view
    is a ramp of slope 1/62 (negative when mirrored), constant along columns, and inside the image (no padding);
    on a constant image the view is that constant."""
    ramp = (torch.arange(32.0) / 31).expand(16, 1, 32, 32)
    v = P.fashion_view(ramp, torch.Generator().manual_seed(1), scale=(0.25, 0.25), ratio=(1, 1), ink=(1, 1))
    v = v[:, 0].float() / 255  # [16, 32, 32]
    slope = (v[:, :, 27] - v[:, :, 4]).mean(1) / 23  # per view, away from the edges
    assert torch.allclose(slope.abs(), torch.full((16,), 1 / 62), atol=1e-3)
    assert (slope > 0).any() and (slope < 0).any()  # both orientations occur
    assert (v.std(1) < 0.003).all()  # every column constant (rounding only)
    c = P.fashion_view(torch.full((4, 1, 32, 32), 0.6), torch.Generator().manual_seed(2), ink=(1, 1))
    assert (c == round(0.6 * 255)).all()


def test_pretrain_fashionmnist_on_small_idx_files(tmp_path, capsys):
    from test_data import small_fashion
    small_fashion(tmp_path, n_tr=40, n_te=20)
    out = tmp_path / "f.pt"
    P.main(["--dataset", "fashionmnist", "--data-dir", str(tmp_path), "--simclr-iters", "2", "--batch", "8",
            "--device", "cpu", "--out", str(out)])
    meta = json.load(open(tmp_path / "f.json"))
    assert meta["recipe"]["dataset"] == "fashionmnist" and len(meta["one_nn"][2]) == 5 and "one_nn_before" in meta
    model = ssal.build_model(ssal.get_args(["--dataset", "fashionmnist", "--weights", str(out)]), 10, 32)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in torch.load(out).items())
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        P.main(["--dataset", "fashionmnist", "--data-dir", str(tmp_path / "no")])
    assert e.value.code == 2 and "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_digits_preset_starts_from_the_committed_weights():
    args = ssal.get_args([])
    assert args.weights == ssal.DIGITS_WEIGHTS and os.path.isfile(os.path.join(HERE, args.weights))
    state = torch.load(os.path.join(HERE, args.weights))
    pre = ssal.build_model(args, 10, 32).state_dict()
    scratch_args = ssal.get_args(["--scratch"])
    scratch = ssal.build_model(scratch_args, 10, 32).state_dict()
    assert all(torch.equal(pre[k], v) for k, v in state.items())
    assert not torch.equal(scratch["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert torch.equal(pre["head.weight"], scratch["head.weight"])  # the same seeded fresh head either way
    assert scratch_args.weights is None and "-scratch-" in scratch_args.name and "-scratch-" not in args.name
    # two labels per class fine-tuned, one from scratch (the regime, and the names, of results/scratch/)
    assert (args.budget, scratch_args.budget) == (20, 10) and "-b20-" in args.name and "-b10-" in scratch_args.name
    assert ssal.get_args(["--dataset", "cifar100"]).weights is None


def test_scratch_conflicts_and_round0_key_follows_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ssal.get_args(["--scratch", "--weights", "x.pt"])
    assert e.value.code == 2 and "--scratch" in capsys.readouterr().err
    w = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1)}, w)
    args = ssal.get_args(["--weights", str(w), "--out", str(tmp_path)])
    k1 = runstate.round0_path(args)
    torch.save({"a": torch.ones(1)}, w)  # regenerated weights: the cached round 0 must not be reused
    assert runstate.round0_path(args) != k1


def test_fashionmnist_preset_starts_from_its_committed_weights():
    """The preset fine-tunes the committed SimCLR start (its .json: the recipe and the 1-NN measures); --scratch
    is the random start under its own run name."""
    args = ssal.get_args(["--dataset", "fashionmnist"])
    assert args.weights == ssal.FASHION_WEIGHTS and (args.lr, args.layer_decay, args.val_size) == (5e-4, 0.5, 1000)
    state = torch.load(os.path.join(HERE, args.weights))
    model = ssal.build_model(args, 10, 32).state_dict()
    assert all(torch.equal(model[k], v) for k, v in state.items())
    meta = json.load(open(os.path.join(HERE, os.path.splitext(args.weights)[0] + ".json")))
    assert meta["recipe"]["dataset"] == "fashionmnist" and meta["one_nn"][0] > meta["one_nn_before"][0]
    assert meta["one_nn_val"][0] > meta["one_nn_val_before"][0]
    scratch = ssal.get_args(["--dataset", "fashionmnist", "--scratch"])
    assert scratch.weights is None and (scratch.lr, scratch.layer_decay) == (1e-3, None)
    assert "-scratch-" in scratch.name and "-scratch-" not in args.name
