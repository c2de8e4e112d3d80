"""Tests of the datasets, the split and the views."""
import numpy as np
import pytest
import torch

import data as D


@pytest.fixture(scope="module")
def digits():
    return D.Data("digits")


def test_digits_arrays_and_fixed_split(digits):
    assert digits.x_tr.shape == (1297, 32, 32, 3) and digits.x_tr.dtype == np.uint8
    assert digits.x_te.shape == (500, 32, 32, 3)
    assert digits.num_classes == 10
    # stratified: each class's share of the 500 test images is its share of all 1,797 images (+- rounding)
    from sklearn.datasets import load_digits
    share = np.bincount(load_digits().target) * 500 / 1797
    assert np.abs(np.bincount(digits.y_te) - share).max() < 1.5
    # the split does not depend on anything seeded: a second load gives the same arrays
    x_tr, y_tr, x_te, y_te = D.load_digits_arrays()
    assert np.array_equal(x_tr, digits.x_tr) and np.array_equal(y_te, digits.y_te)
    # grey images repeated over RGB, full range used
    assert np.array_equal(digits.x_tr[..., 0], digits.x_tr[..., 2]) and digits.x_tr.max() == 255


@pytest.mark.parametrize("budget", [10, 30])
def test_initial_split_per_class_and_pool(digits, budget):
    lab = D.initial_split(digits.y_tr, budget, 10, seed=3)
    assert len(lab) == budget == len(np.unique(lab))
    assert np.bincount(digits.y_tr[lab], minlength=10).tolist() == [budget // 10] * 10
    pool = D.pool_of(len(digits.y_tr), lab)
    assert len(pool) + len(lab) == len(digits.y_tr)
    assert not np.intersect1d(pool, lab).size
    # seeded
    assert np.array_equal(lab, D.initial_split(digits.y_tr, budget, 10, seed=3))
    assert not np.array_equal(lab, D.initial_split(digits.y_tr, budget, 10, seed=4))


@pytest.mark.parametrize("budget", [0, 15, 100000])
def test_budget_that_does_not_fit_is_a_clear_error(digits, budget):
    with pytest.raises(D.DataError, match="--budget"):
        D.initial_split(digits.y_tr, budget, 10, seed=0)


def test_views_shapes_and_fixed_view_seed(digits):
    ds = D.Views(digits.x_tr, digits.y_tr, [5, 9], digits.views, view_seed=7)
    a, b = ds[1], ds[1]
    assert a["idx"] == 9 and a["y"] == int(digits.y_tr[9])
    for v in ("weak", "strong", "plain"):
        assert a[v].shape == (3, 32, 32) and a[v].dtype == torch.uint8 and a[v].is_contiguous()
        assert torch.equal(a[v], b[v])  # same view on every pass
    # without a view seed the random views differ between passes (weak: crop offsets, strong: RandAugment)
    free = D.Views(digits.x_tr, digits.y_tr, [9], digits.views)
    draws = [free[0]["strong"] for _ in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    # the plain view is the image itself, channels first; normalised per batch with the training set's statistics
    assert torch.equal(a["plain"], torch.from_numpy(digits.x_tr[9]).permute(2, 0, 1))
    img = torch.tensor(digits.x_tr[9], dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = float(digits.x_tr.mean() / 255), float(digits.x_tr.std() / 255)
    assert digits.mean == (mean,) * 3 and digits.std == (std,) * 3
    assert torch.allclose(digits.normalize(a["plain"][None])[0], (img - mean) / std, atol=1e-5)


def test_digits_weak_view_never_flips(digits):
    # an asymmetric image: the weak view must be a shifted copy, never a mirror image
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, 8:24, 4:8] = 255  # a bar near the left edge
    ds = D.Views(x, np.zeros(1, np.int64), [0], {"weak": digits.views["weak"]})
    for _ in range(30):
        w = ds[0]["weak"][0]
        cols = (w > w.min() + 1e-3).any(0).nonzero().flatten()
        assert cols.float().mean() < 16  # the bar stays on the left half


# ----------------------------------------------------------------------------------------------------------------
# USB's views: RandAugment ops and ranges, Cutout, seeding, the weak crop

# USB's augment_list() (semilearn's randaugment.py), typed here independently of data.py
USB_RANGES = {"AutoContrast": (0, 1), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
              "Equalize": (0, 1), "Identity": (0, 1), "Posterize": (4, 8), "Rotate": (-30, 30),
              "Sharpness": (0.05, 0.95), "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0, 256),
              "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3)}
FILL = (125, 123, 114)


def _rgb(size=32, seed=0):
    from PIL import Image
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _raw_views(size, flip=True):
    """The views: uint8 tensors [3, H, W] (normalised per batch, by Data.normalize)."""
    return D.make_views(size, flip)


def _u8(t):
    assert t.dtype == torch.uint8
    return t.permute(1, 2, 0).numpy()


def test_usb_op_table_and_magnitude_ranges():
    assert {k: tuple(r) for k, (_, r) in D.USB_OPS.items()} == USB_RANGES
    torch.manual_seed(0)
    for name, (lo, hi) in USB_RANGES.items():
        v = np.array([D.sample_magnitude(name) for _ in range(3000)])
        span = hi - lo
        assert v.min() >= lo and v.max() < hi, name
        assert v.min() - lo < 0.01 * span and hi - v.max() < 0.01 * span, name  # both ends approached
        assert abs(v.mean() - (lo + hi) / 2) < 0.03 * span, name  # spread over the range (uniform)
        assert abs(np.mean(v < lo + span / 4) - 0.25) < 0.04, name
    # Posterize keeps int(v) bits: 4, 5, 6 or 7, about equally often
    bits = np.array([int(D.sample_magnitude("Posterize")) for _ in range(2000)])
    assert np.abs(np.bincount(bits, minlength=8)[4:] / 2000 - 0.25).max() < 0.05 and set(bits) == {4, 5, 6, 7}


def test_usb_ops_match_independent_computations():
    from PIL import ImageEnhance, ImageOps
    img = _rgb(32, seed=1)
    x = np.asarray(img).astype(np.int64)
    op = {k: f for k, (f, _) in D.USB_OPS.items()}
    out = lambda name, v: np.asarray(op[name](img, v)).astype(np.int64)
    for t in (0.0, 100.5, 200.0, 255.9):  # pixels >= t are inverted
        assert np.array_equal(out("Solarize", t), np.where(x < t, x, 255 - x))
        assert np.array_equal(out("Solarize", t), np.asarray(ImageOps.solarize(img, t)))
    for v, b in ((4.0, 4), (6.9, 6), (7.99, 7)):  # int(v) bits kept
        assert np.array_equal(out("Posterize", v), x & (256 - 2 ** (8 - b)))
    assert np.array_equal(out("Rotate", 90), np.rot90(x))  # counter-clockwise about the centre
    for a in (-30.0, 17.3):
        assert np.array_equal(out("Rotate", a), np.asarray(img.rotate(a)))
    assert (out("Rotate", 30)[0, 0] == 0).all()  # black fill in the corners
    ys, xs = np.mgrid[0:32, 0:32]
    for v in (-0.3, 0.13, 0.25):  # nearest neighbour on pixel centres, black outside
        xi = np.floor(xs + 0.5 + v * (ys + 0.5)).astype(int)
        ref = np.where(((xi >= 0) & (xi < 32))[..., None], x[ys, np.clip(xi, 0, 31)], 0)
        assert np.array_equal(out("ShearX", v), ref)
        yi = np.floor(ys + 0.5 + v * (xs + 0.5)).astype(int)
        ref = np.where(((yi >= 0) & (yi < 32))[..., None], x[np.clip(yi, 0, 31), xs], 0)
        assert np.array_equal(out("ShearY", v), ref)
    tx = out("TranslateX", 0.25)  # 0.25 x 32 = 8 pixels: the content moves left
    assert np.array_equal(tx[:, :24], x[:, 8:]) and (tx[:, 24:] == 0).all()
    ty = out("TranslateY", -0.25)  # the content moves down
    assert np.array_equal(ty[8:], x[:24]) and (ty[:8] == 0).all()
    assert np.abs(out("Brightness", 0.5) - x * 0.5).max() <= 1  # a blend with black
    grey = (x * np.array([299, 587, 114])).sum(-1, keepdims=True) / 1000  # ITU-R 601-2 luma, as PIL's "L"
    assert np.abs(out("Color", 0.0) - grey).max() <= 1  # factor 0: the grey image
    for name, ref in (("AutoContrast", ImageOps.autocontrast(img)), ("Equalize", ImageOps.equalize(img)),
                      ("Contrast", ImageEnhance.Contrast(img).enhance(0.3)),
                      ("Sharpness", ImageEnhance.Sharpness(img).enhance(0.3)), ("Identity", img)):
        assert np.array_equal(out(name, 0.3), np.asarray(ref)), name


def test_rand_augment_draws_3_ops_with_replacement_then_cutout(monkeypatch):
    calls = []
    for name, (f, rng) in list(D.USB_OPS.items()):
        monkeypatch.setitem(D.USB_OPS, name, (lambda img, v, name=name: calls.append((name, v)) or img, rng))
    ra = D.UsbRandAugment(3)
    monkeypatch.setattr(ra, "cutout", lambda img: calls.append(("Cutout", None)) or img)
    torch.manual_seed(0)
    img, per_call = _rgb(8), []
    for _ in range(700):
        calls.clear()
        ra(img)
        assert len(calls) == 4 and calls[-1][0] == "Cutout"  # 3 ops, then Cutout
        per_call.append([n for n, _ in calls[:3]])
        for n, v in calls[:3]:
            lo, hi = USB_RANGES[n]
            assert lo <= v < hi, (n, v)
    counts = {n: sum(c.count(n) for c in per_call) for n in USB_RANGES}
    assert all(100 < c < 200 for c in counts.values()), counts  # uniform over 14: 150 each
    # with replacement: the same op twice in one call, P = 1 - (13 * 12) / 14^2 ~ 0.2
    assert 0.12 < np.mean([len(set(c)) < 3 for c in per_call]) < 0.28


def test_cutout_box_follows_usb_cutoutabs():
    from PIL import Image, ImageDraw
    assert D.cutout_box(32, 32, 8.0, 16.0, 16.0) == (12, 12, 21, 21)  # corner 12, far side 20 included
    assert D.cutout_box(32, 32, 10.0, 1.0, 31.0) == (0, 26, 11, 32)  # left edge: full side; bottom edge: cut
    assert D.cutout_box(32, 32, 7.5, 10.3, 4.0) == (6, 0, 14, 8)  # int(6.55) .. int(13.55)
    # the same pixels as USB's drawing: ImageDraw.rectangle((x0, y0, x1, y1)) with x0 = int(max(0, cx - v/2)),
    # x1 = min(w, x0 + v)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        w = 40
        v, cx, cy = (torch.rand(3, generator=g) * torch.tensor([0.5 * w, w, w])).tolist()
        x0, y0 = int(max(0, cx - v / 2)), int(max(0, cy - v / 2))
        usb = Image.new("RGB", (w, w))
        ImageDraw.Draw(usb).rectangle((x0, y0, min(w, x0 + v), min(w, y0 + v)), FILL)
        ours = Image.new("RGB", (w, w))
        ours.paste(FILL, D.cutout_box(w, w, v, cx, cy))
        assert np.array_equal(np.asarray(usb), np.asarray(ours)), (v, cx, cy)


def test_cutout_side_distribution_fill_and_border():
    from PIL import Image
    w = 128
    blank = Image.new("RGB", (w, w))
    cut = D.UsbCutout()
    torch.manual_seed(0)
    sides, lefts, left_cut, right_cut = [], [], 0, 0
    for _ in range(1500):
        a = np.asarray(cut(blank))
        m = a.any(-1)
        assert m.any()
        assert (a[m] == FILL).all()  # exactly USB's grey, nothing else touched
        rows, cols = m.any(1).nonzero()[0], m.any(0).nonzero()[0]
        assert m.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)  # a box
        wd, ht = len(cols), len(rows)
        sides.append(max(wd, ht))  # the full side unless cut on two sides (right and bottom: ~2% of draws)
        lefts.append(cols[0])
        if cols[0] == 0 and rows[-1] < w - 1:
            left_cut += 1
            assert wd == ht  # USB shifts a square cut by the left edge: it keeps its side
        if cols[-1] == w - 1 and rows[-1] < w - 1 and rows[0] > 0:
            right_cut += wd < ht  # cut by the right edge: shortened
    sides = np.array(sides)
    # side = int(U[0, 0.5) w) + 1 pixels (USB's rectangle includes its far side)
    assert sides.max() <= 0.5 * w + 1 and sides.max() > 0.48 * w and sides.min() <= 0.02 * w + 1
    assert abs(sides.mean() - 0.25 * w) < 0.02 * w
    assert abs(np.mean(sides <= 0.25 * w) - 0.5) < 0.05
    assert left_cut > 40 and right_cut > 40
    assert min(lefts) == 0 and max(lefts) > 0.9 * w  # the centre goes all over the image


def test_strong_view_is_weak_crop_then_ops_then_grey_cutout_before_normalise(monkeypatch):
    from PIL import Image
    raw = _raw_views(32)
    # a black image stays black under every op (up to Solarize at exactly 0): only Cutout's grey shows, unnormalised
    black = Image.new("RGB", (32, 32))
    torch.manual_seed(0)
    for _ in range(50):
        a = _u8(raw["strong"](black))
        m = a.any(-1)
        assert (a[m] == FILL).all() and m.any()
    normed = D.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(D.make_views(32, True)["strong"](black)[None])
    vals = {round(float(v), 4) for v in normed.flatten()}
    assert vals <= {-2.0} | {round((c / 255 - 0.5) / 0.25, 4) for c in FILL} and len(vals) > 1
    # ops replaced by Identity: the strong view is the weak view (same crop and flip draws) plus the grey square
    for name, (_, rng) in list(D.USB_OPS.items()):
        monkeypatch.setitem(D.USB_OPS, name, (lambda img, v: img, rng))
    img = _rgb(32, seed=2)
    for s in range(20):
        torch.manual_seed(s)
        weak = _u8(raw["weak"](img))
        torch.manual_seed(s)
        strong = _u8(raw["strong"](img))
        diff = (weak != strong).any(-1)
        assert (strong[diff] == FILL).all() and diff.sum() < 32 * 32 / 2


def test_strong_view_fixed_by_torch_seed_only():
    import random
    strong = D.make_views(32, True)["strong"]
    img = _rgb(32, seed=3)
    out = []
    for s, other in ((5, 1), (5, 2), (6, 1)):
        torch.manual_seed(s)
        random.seed(other)  # Python's and numpy's RNGs play no part
        np.random.seed(other)
        out.append(strong(img))
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
    torch.manual_seed(0)
    draws = [strong(img) for _ in range(10)]
    assert len({d.numpy().tobytes() for d in draws}) == 10


def test_views_view_seed_gives_same_strong_view_every_pass():
    x = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    views = D.make_views(32, True)
    ds = D.Views(x, np.zeros(3, np.int64), [0, 1, 2], views, view_seed=11)
    a = [ds[k] for k in range(3)]
    torch.manual_seed(123)  # the global RNG does not matter with a view seed, nor does it move
    state = torch.get_rng_state()
    b = [ds[k] for k in range(3)]
    assert torch.equal(state, torch.get_rng_state())
    for u, v in zip(a, b):
        assert torch.equal(u["strong"], v["strong"]) and torch.equal(u["weak"], v["weak"])
    other = D.Views(x, np.zeros(3, np.int64), [0, 1, 2], views, view_seed=12)
    assert any(not torch.equal(other[k]["strong"], a[k]["strong"]) for k in range(3))


@pytest.mark.parametrize("size", [32, 64])
def test_weak_view_is_a_reflect_padded_crop_with_flip(size):
    from numpy.lib.stride_tricks import sliding_window_view
    p = int(size * 0.125)  # 4 at 32, 8 at 64
    img = _rgb(size, seed=5)
    x = np.asarray(img)
    padded = np.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect")  # mirror without repeating the edge
    win = sliding_window_view(padded, (size, size, 3))[:, :, 0]  # [2p+1, 2p+1, size, size, 3]
    weak = _raw_views(size, flip=True)["weak"]
    torch.manual_seed(0)
    dys, dxs, flips = [], [], []
    for _ in range(120):
        w = _u8(weak(img))
        hits = [(dy, dx, f) for f, ww in ((False, w), (True, w[:, ::-1]))
                for dy, dx in zip(*np.nonzero((win[:, :, 0, 0] == ww[0, 0]).all(-1)))  # candidates: corner pixel
                if np.array_equal(win[dy, dx], ww)]
        assert len(hits) == 1  # exactly one shift (and flip) explains the view
        dy, dx, f = hits[0]
        dys.append(dy), dxs.append(dx), flips.append(f)
    # shifts of up to p pixels either way, both extremes reached; flips about half the time
    assert min(dys) == min(dxs) == 0 and max(dys) == max(dxs) == 2 * p
    assert 0.3 < np.mean(flips) < 0.7


# ----------------------------------------------------------------------------------------------------------------
# the views are uint8 tensors, normalised per batch: the same numbers as the torchvision pipeline they replace

def _old_views(size, flip, mean, std):
    """The views as data.py built them before (USB's cifar.py): torchvision's RandomCrop with reflect padding
    (+ RandomHorizontalFlip), USB's RandAugment for strong, ToTensor + Normalize per image. PIL image -> float."""
    from torchvision import transforms as T
    weak = [T.RandomCrop(size, padding=int(size * 0.125), padding_mode="reflect")]
    if flip:
        weak.append(T.RandomHorizontalFlip())
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    return {"weak": T.Compose(weak + to_tensor), "strong": T.Compose(weak + [D.UsbRandAugment(3)] + to_tensor),
            "plain": T.Compose(to_tensor)}


def _view_case(digits, case):
    """(images [6, s, s, 3], views, normalize, size, flip, mean, std) for a dataset-like case."""
    if case == "digits":  # the real Data: its views (no flip) and its normalize
        return digits.x_tr[:6], digits.views, digits.normalize, 32, False, digits.mean, digits.std
    if case in ("cifar100", "tinyimagenet"):  # random RGB images of the dataset's size, its flip and statistics
        _, size, flip = D.DATASETS[case]
        mean, std = (D.CIFAR100_MEAN, D.CIFAR100_STD) if case == "cifar100" else (D.IMAGENET_MEAN, D.IMAGENET_STD)
    else:  # small sizes: padding int(0.125 x 12) = 1, and int(0.125 x 7) = 0 (torchvision draws no crop then)
        size, flip, mean, std = int(case.split("-")[1]), True, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    x = np.random.default_rng(size).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    return x, D.make_views(size, flip), D.Normalize(mean, std), size, flip, mean, std


@pytest.mark.parametrize("case", ["digits", "cifar100", "tinyimagenet", "small-12", "small-7"])
def test_views_are_the_torchvision_pipeline_bit_for_bit(digits, case):
    """Under the same torch seed, normalize(new view) is the old pipeline's tensor, and both draw as many numbers."""
    from PIL import Image
    x, views, normalize, size, flip, mean, std = _view_case(digits, case)
    old = _old_views(size, flip, mean, std)
    for s in range(30):
        img = x[s % len(x)]
        for name in ("weak", "strong", "plain"):
            torch.manual_seed(s)
            new = views[name](img)  # the uint8 array, as Views passes it
            after = torch.get_rng_state()
            torch.manual_seed(s)
            ref = old[name](Image.fromarray(img))
            assert new.dtype == torch.uint8 and new.shape == (3, size, size) and new.is_contiguous()
            got = normalize(new[None])[0]
            assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-6, rtol=0), (case, name, s)
            assert torch.equal(after, torch.get_rng_state()), (case, name, s)  # the same draws, no more, no fewer
            if name == "plain":
                assert torch.equal(new, torch.from_numpy(img).permute(2, 0, 1))
        torch.manual_seed(s)  # a PIL image in gives the same view as the array
        from_pil = views["strong"](Image.fromarray(img))
        torch.manual_seed(s)
        assert torch.equal(from_pil, views["strong"](img))
    # through Views with a view seed, as the training stream draws them: weak then strong from (view_seed, 1, t)
    ds = D.Views(x, np.zeros(len(x), np.int64), np.arange(len(x)), {"weak": views["weak"], "strong": views["strong"]},
                 view_seed=(3, 1))
    g = torch.default_generator
    for t in range(12):
        k = (5 * t) % len(x)
        item = ds[(t, k)]
        state = g.get_state()
        g.manual_seed(D.mix_seed(3, 1, 1, t))
        img = Image.fromarray(x[k])
        ref_weak, ref_strong = old["weak"](img), old["strong"](img)
        g.set_state(state)
        assert torch.allclose(normalize(item["weak"][None])[0], ref_weak, atol=1e-6, rtol=0), (case, t)
        assert torch.allclose(normalize(item["strong"][None])[0], ref_strong, atol=1e-6, rtol=0), (case, t)


def test_view_statistics_match_the_torchvision_pipeline(digits):
    """Over 2,000 weak and strong views of 4 images, the normalised pixels' per-channel mean and second moment
    agree with the old pipeline's within 4 standard errors (independent draws: the new views through Views with a
    view seed, the old ones from the global RNG; this holds whatever the draw order). The standard error comes from
    the spread of the per-view values, about 0.02 here. Strong views without RandAugment are 17 of them away, with
    RandAugment(1) 10, without Cutout 7, with swapped channels 7; with RandAugment(2) or (4) 3 to 4 (the edge)."""
    from PIL import Image
    ys, xs = np.mgrid[0:32, 0:32]
    grad = np.stack([xs * 8, 255 - ys * 4, np.full_like(xs, 60)], -1).astype(np.uint8)  # unlike channels
    imgs = np.stack([digits.x_tr[0], digits.x_tr[1], grad,
                     np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)])
    mean, std = D.CIFAR100_MEAN, D.CIFAR100_STD
    views, normalize, old = D.make_views(32, True), D.Normalize(mean, std), _old_views(32, True, mean, std)
    n = 2000
    ds = D.Views(imgs, np.zeros(4, np.int64), np.arange(4), {"weak": views["weak"], "strong": views["strong"]},
                 view_seed=5)
    items = [ds[(t, t % 4)] for t in range(n)]
    torch.manual_seed(6)
    for name in ("weak", "strong"):
        new = normalize(torch.stack([it[name] for it in items]))
        ref = torch.stack([old[name](Image.fromarray(imgs[t % 4])) for t in range(n)])
        for moment in (1, 2):
            a, b = new.pow(moment).mean((2, 3)), ref.pow(moment).mean((2, 3))  # per view and channel [n, 3]
            se = ((a.var(0) + b.var(0)) / n).sqrt()
            z = (a.mean(0) - b.mean(0)).abs() / se
            assert (z < 4).all(), (name, moment, a.mean(0), b.mean(0), se)
        std_new, std_ref = new.transpose(0, 1).reshape(3, -1).std(1), ref.transpose(0, 1).reshape(3, -1).std(1)
        assert (std_new - std_ref).abs().max() < 0.05, (name, std_new, std_ref)


@pytest.mark.parametrize("size", [32, 64])
def test_views_and_batches_are_uint8(size):
    x = np.random.default_rng(1).integers(0, 256, (10, size, size, 3), dtype=np.uint8)
    views = D.make_views(size, True)
    ds = D.Views(x, np.arange(10), np.arange(10), views, view_seed=2)
    for key in (3, (17, 3)):
        item = ds[key]
        for name in ("weak", "strong", "plain"):
            v = item[name]
            assert v.dtype == torch.uint8 and v.shape == (3, size, size) and v.is_contiguous(), (key, name)
            v[0, 0, 0] ^= 1  # a copy, never the dataset's memory
    assert np.array_equal(x, np.random.default_rng(1).integers(0, 256, (10, size, size, 3), dtype=np.uint8))
    b = next(iter(D.loader(ds, 4, num_samples=8, seed=0)))
    for name in ("weak", "strong", "plain"):
        assert b[name].dtype == torch.uint8 and b[name].shape == (4, 3, size, size)


def test_normalize_by_hand(digits):
    x = torch.tensor([[[[0, 255], [51, 102]], [[255, 0], [0, 0]], [[128, 64], [32, 16]]]], dtype=torch.uint8)
    norm = D.Normalize((0.5, 0.2, 0.0), (0.5, 0.1, 2.0))
    want = torch.tensor([[[[-1.0, 1.0], [-0.6, -0.2]],  # (v / 255 - 0.5) / 0.5
                          [[8.0, -2.0], [-2.0, -2.0]],  # (v / 255 - 0.2) / 0.1
                          [[128 / 510, 64 / 510], [32 / 510, 16 / 510]]]])  # v / 255 / 2
    out = norm(x)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    assert torch.allclose(out, want, atol=1e-6, rtol=0)
    assert x.dtype == torch.uint8 and x[0, 0, 0, 1] == 255  # the input is left alone
    two = norm(torch.cat([x, x.flip(-1)]))  # a batch: each image on its own
    assert torch.equal(two[0], out[0]) and torch.equal(two[1], out[0].flip(-1))
    assert norm(x.to("meta")).device.type == "meta"  # on the input's device
    with pytest.raises(TypeError, match="uint8"):
        norm(out)  # already normalised
    # Data keeps its statistics and normalises with them
    m, s = digits.mean[0], digits.std[0]
    assert torch.allclose(digits.normalize(x), (x.float() / 255 - m) / s, atol=1e-6, rtol=0)


def test_missing_datasets_are_clear_errors(tmp_path):
    with pytest.raises(D.DataError, match="cifar-100-python.*--download"):
        D.Data("cifar100", str(tmp_path))
    with pytest.raises(D.DataError, match="tiny-imagenet-200/wnids.txt"):
        D.Data("tinyimagenet", str(tmp_path))
    with pytest.raises(D.DataError, match="unknown dataset"):
        D.Data("mnist", str(tmp_path))


def make_tiny_imagenet(tmp_path):
    """A miniature tiny-imagenet-200 in the standard layout: 2 classes x 3 train images, 2 val images."""
    from PIL import Image
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((64, 64, 3), 40 * c + k, np.uint8)).save(d / f"{w}_{k}.JPEG", quality=100)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k, w in enumerate(["n02", "n01"]):
        Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tinyimagenet_folder_layout(tmp_path):
    """A miniature tiny-imagenet-200 in the standard layout loads with the right labels (and is cached)."""
    root = make_tiny_imagenet(tmp_path)
    ds = D.Data("tinyimagenet", str(tmp_path))
    assert ds.x_tr.shape == (6, 64, 64, 3) and ds.y_tr.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.y_te.tolist() == [1, 0]
    assert abs(int(ds.x_tr[4, 0, 0, 0]) - 41) <= 2  # class 1, image 1 (JPEG may shift a value by 1)
    assert (root / "arrays.npz").is_file()
    again = D.Data("tinyimagenet", str(tmp_path))  # from the cache
    assert np.array_equal(again.x_tr, ds.x_tr)


def _bad_caches():
    """name -> a function that spoils tiny-imagenet-200/arrays.npz (given its path and the good arrays)."""
    def truncate(path, good):
        b = path.read_bytes()
        path.write_bytes(b[:len(b) // 2])

    def garbage(path, good):
        path.write_text("this is not a zip file\n" * 20)

    def missing_key(path, good):
        np.savez(path, x_tr=good[0], y_tr=good[1], x_te=good[2])

    def wrong_dtype(path, good):
        np.savez(path, x_tr=good[0].astype(np.float32), y_tr=good[1], x_te=good[2], y_te=good[3])

    def wrong_shape(path, good):
        np.savez(path, x_tr=good[0][:, :32], y_tr=good[1], x_te=good[2], y_te=good[3])

    def length_mismatch(path, good):
        np.savez(path, x_tr=good[0], y_tr=good[1][:-1], x_te=good[2], y_te=good[3])

    def labels_int32(path, good):
        np.savez(path, x_tr=good[0], y_tr=good[1], x_te=good[2], y_te=good[3].astype(np.int32))

    return dict(truncate=truncate, garbage=garbage, missing_key=missing_key, wrong_dtype=wrong_dtype,
                wrong_shape=wrong_shape, length_mismatch=length_mismatch, labels_int32=labels_int32)


def test_tinyimagenet_corrupt_cache_is_rebuilt(tmp_path, capsys):
    """A cache that cannot be read, or holds the wrong arrays, is rebuilt from the JPEGs with one warning line."""
    root = make_tiny_imagenet(tmp_path)
    cache = root / "arrays.npz"
    good = D.load_tinyimagenet_arrays(str(tmp_path))
    assert cache.is_file() and len(good) == 4
    assert capsys.readouterr().err.count("warning") == 0
    for name, spoil in _bad_caches().items():
        spoil(cache, good)
        again = D.load_tinyimagenet_arrays(str(tmp_path))
        warn = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
        assert len(warn) == 1, (name, warn)
        assert str(cache) in warn[0] and "unreadable" in warn[0] and "decoding the JPEGs again" in warn[0], name
        for a, b in zip(again, good):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        # the cache is valid again: the next load reads it, silently, and gives the same arrays
        with np.load(cache) as z:
            assert sorted(z.files) == ["x_te", "x_tr", "y_te", "y_tr"]
        third = D.load_tinyimagenet_arrays(str(tmp_path))
        assert "warning" not in capsys.readouterr().err, name
        assert all(np.array_equal(a, b) for a, b in zip(third, good)), name
    assert not [f for f in root.iterdir() if f.name.startswith("arrays.npz.tmp")]  # no temporary file left behind


def test_tinyimagenet_valid_cache_is_used_as_is(tmp_path, capsys):
    """A valid cache is read, not rebuilt: the loader returns what it holds even when the JPEGs have changed."""
    root = make_tiny_imagenet(tmp_path)
    good = D.load_tinyimagenet_arrays(str(tmp_path))
    marked = good[0].copy()
    marked[0, 0, 0, 0] = 123
    np.savez(root / "arrays.npz", x_tr=marked, y_tr=good[1], x_te=good[2], y_te=good[3])
    again = D.load_tinyimagenet_arrays(str(tmp_path))
    assert again[0][0, 0, 0, 0] == 123 and "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# the training stream: random access (resume) and views that depend on the draw only

def test_stream_is_permutations_and_resumes_anywhere():
    n, total = 7, 30
    full = list(D.Stream(n, total, seed=5))
    assert [t for t, _ in full] == list(range(total))
    ks = [k for _, k in full]
    for e in range(total // n):  # every whole pass is a permutation of the items
        assert sorted(ks[e * n:(e + 1) * n]) == list(range(n))
    assert len(set(ks[28:])) == 2  # the cut last pass draws without repetition
    for j in (0, 1, 6, 7, 13, 29):
        assert list(D.Stream(n, total, seed=5, start=j)) == full[j:]
        assert len(D.Stream(n, total, seed=5, start=j)) == total - j
    assert [k for _, k in D.Stream(n, total, seed=6)] != ks
    assert ks[:n] != ks[n:2 * n]  # a fresh permutation each pass


def test_training_views_depend_on_the_draw_not_on_workers_or_start(digits):
    x, y = digits.x_tr, digits.y_tr
    views = D.make_views(32, False)
    ds = D.Views(x, y, np.arange(40), {"weak": views["weak"], "strong": views["strong"]}, view_seed=(0, 1))
    assert torch.equal(ds[(3, 5)]["strong"], ds[(3, 5)]["strong"])  # the same draw: the same view
    assert not torch.equal(ds[(3, 5)]["strong"], ds[(4, 5)]["strong"])  # another draw of the same image: another
    before = torch.get_rng_state()
    a = [b for b in D.loader(ds, 8, num_samples=48, seed=1)]
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is not touched
    b = [b for b in D.loader(ds, 8, num_samples=48, seed=1, workers=2)]
    c = [b for b in D.loader(ds, 8, num_samples=48, seed=1, start=16)]  # resumed after 2 batches
    for u, v in zip(a, b):
        assert torch.equal(u["idx"], v["idx"]) and torch.equal(u["strong"], v["strong"])
    for u, v in zip(a[2:], c):
        assert torch.equal(u["idx"], v["idx"]) and torch.equal(u["weak"], v["weak"])


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files the tests write themselves (the real data is not on CI machines)

def write_idx(path, arr):
    """An IDX file of unsigned bytes, as the MNIST / Fashion-MNIST files are (gzipped when path ends in .gz)."""
    import gzip
    import struct
    arr = np.asarray(arr, np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(raw)


def small_fashion(root, n_tr=40, n_te=20, gz=True):
    rng = np.random.default_rng(0)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {"x_tr": rng.integers(0, 256, (n_tr, 28, 28)), "y_tr": np.arange(n_tr) % 10,
              "x_te": rng.integers(0, 256, (n_te, 28, 28)), "y_te": np.arange(n_te) % 10}
    for k, name in D.FASHION_FILES.items():
        write_idx(raw / (name + (".gz" if gz and k != "y_te" else "")), arrays[k])  # .gz and plain files mixed
    return arrays


def test_fashionmnist_reads_idx_files_and_pads_28_to_32(tmp_path):
    arrays = small_fashion(tmp_path)
    x_tr, y_tr, x_te, y_te = D.load_fashionmnist_arrays(str(tmp_path))
    assert x_tr.shape == (40, 32, 32, 3) and x_te.shape == (20, 32, 32, 3) and x_tr.dtype == np.uint8
    assert (x_tr[:, 2:30, 2:30, 0] == arrays["x_tr"]).all()  # every pixel as it was, 2 pixels in
    assert (x_tr[:, :2] == 0).all() and (x_tr[:, 30:] == 0).all() and (x_tr[:, :, :2] == 0).all()  # black border
    assert (x_tr[..., 0] == x_tr[..., 2]).all()  # grey in three channels
    assert y_tr.dtype == np.int64 and (y_tr == arrays["y_tr"]).all() and (y_te == arrays["y_te"]).all()
    data = D.Data("fashionmnist", str(tmp_path))
    g = x_tr[..., 0] / 255
    assert data.mean[0] == pytest.approx(g.mean(), rel=1e-5) and data.std[0] == pytest.approx(g.std(), rel=1e-4)
    assert data.num_classes == 10 and data.size == 32


def test_fashionmnist_missing_or_broken_files_are_one_clear_error(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.load_fashionmnist_arrays(str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "FashionMNIST/raw" in msg and "--download" in msg and "apt-get install dataset-fashion-mnist" in msg
    small_fashion(tmp_path, gz=False)
    bad = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + bytes(12) + b"xx")  # header says 0 x 0 x 0 images, 2 bytes follow
    with pytest.raises(D.DataError, match="cut short"):
        D.load_fashionmnist_arrays(str(tmp_path))
    bad.write_bytes(b"\x01\x02\x08\x03")
    with pytest.raises(D.DataError, match="not an IDX file"):
        D.load_fashionmnist_arrays(str(tmp_path))


def test_fashionmnist_weak_view_flips():
    """Clothes are mirror-symmetric: the weak view flips them (digits: never)."""
    assert D.DATASETS["fashionmnist"][2] is True and D.DATASETS["digits"][2] is False
