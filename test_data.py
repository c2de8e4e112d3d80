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
        assert a[v].shape == (3, 32, 32) and a[v].dtype == torch.float32
        assert torch.equal(a[v], b[v])  # same view on every pass
    # without a view seed the random views differ between passes (weak: crop offsets, strong: RandAugment)
    free = D.Views(digits.x_tr, digits.y_tr, [9], digits.views)
    draws = [free[0]["strong"] for _ in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    # the plain view is the normalised image itself
    img = torch.tensor(digits.x_tr[9], dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = float(digits.x_tr.mean() / 255), float(digits.x_tr.std() / 255)
    assert torch.allclose(a["plain"], (img - mean) / std, atol=1e-5)


def test_digits_weak_view_never_flips(digits):
    # an asymmetric image: the weak view must be a shifted copy, never a mirror image
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, 8:24, 4:8] = 255  # a bar near the left edge
    ds = D.Views(x, np.zeros(1, np.int64), [0], {"weak": digits.views["weak"]})
    for _ in range(30):
        w = ds[0]["weak"][0]
        cols = (w > w.min() + 1e-3).any(0).nonzero().flatten()
        assert cols.float().mean() < 16  # the bar stays on the left half


def test_missing_datasets_are_clear_errors(tmp_path):
    with pytest.raises(D.DataError, match="cifar-100-python.*--download"):
        D.Data("cifar100", str(tmp_path))
    with pytest.raises(D.DataError, match="tiny-imagenet-200/wnids.txt"):
        D.Data("tinyimagenet", str(tmp_path))
    with pytest.raises(D.DataError, match="unknown dataset"):
        D.Data("mnist", str(tmp_path))


def test_tinyimagenet_folder_layout(tmp_path):
    """A miniature tiny-imagenet-200 in the standard layout loads with the right labels (and is cached)."""
    from PIL import Image
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
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
    ds = D.Data("tinyimagenet", str(tmp_path))
    assert ds.x_tr.shape == (6, 64, 64, 3) and ds.y_tr.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.y_te.tolist() == [1, 0]
    assert abs(int(ds.x_tr[4, 0, 0, 0]) - 41) <= 2  # class 1, image 1 (JPEG may shift a value by 1)
    assert (root / "arrays.npz").is_file()
    again = D.Data("tinyimagenet", str(tmp_path))  # from the cache
    assert np.array_equal(again.x_tr, ds.x_tr)
