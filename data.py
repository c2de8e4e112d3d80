"""Datasets, the labeled/unlabeled split, and the weak / strong views of Sec. 3.1.

    digits        scikit-learn's handwritten digits (ships inside the package: the CPU demo), 10 classes
    cifar100      torchvision's CIFAR-100 under --data-dir (downloaded only with --download), 100 classes
    tinyimagenet  the standard tiny-imagenet-200 folder under --data-dir, 200 classes, 64x64

Every loader returns uint8 images [N, H, W, 3] and int64 labels, in memory. Views:
    weak   alpha(x): random crop with padding (+ horizontal flip, except on digits, which are not mirror-symmetric)
    strong A(x):    weak + RandAugment (3 ops) + Cutout (torchvision's RandomErasing with a square, value 0)
    plain          no augmentation (the test set)
"""
import os

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T


class DataError(Exception):
    """A problem the user can fix (missing folder, budget that does not fit). ssal.py prints it in one line."""


# ----------------------------------------------------------------------------------------------------------------
# loading

def load_digits_arrays(size=32):
    """scikit-learn's digits: 8x8 grey images with values 0..16, upsampled (bilinear) to size x size RGB uint8.
    A fixed stratified split of 1,297 train / 500 test images that does not move with --seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()  # [N, s, s, 3]
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=500, stratify=y, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    return x[tr], y[tr], x[te], y[te]


def load_cifar100_arrays(data_dir, download=False):
    from torchvision.datasets import CIFAR100
    root = os.path.join(data_dir, "cifar-100-python")
    if not download and not os.path.isdir(root):
        raise DataError(f"CIFAR-100 not found: expected the folder {root} (run once with --download on a machine "
                        f"with internet, or copy cifar-100-python/ from one into --data-dir)")
    try:
        tr = CIFAR100(data_dir, train=True, download=download)
        te = CIFAR100(data_dir, train=False, download=download)
    except (RuntimeError, OSError) as e:  # corrupt folder or no network during --download
        raise DataError(f"CIFAR-100 could not be loaded from {data_dir}: {str(e).splitlines()[0]} "
                        f"(delete the folder and run with --download on a machine with internet)") from None
    return tr.data, np.asarray(tr.targets, np.int64), te.data, np.asarray(te.targets, np.int64)


def load_tinyimagenet_arrays(data_dir):
    """The standard layout: tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG,
    val/val_annotations.txt}. The labeled val split (10,000 images) is the test set, as usual. Decoded once and
    cached as tiny-imagenet-200/arrays.npz (about 1.3 GB) so that later runs start in seconds."""
    root = os.path.join(data_dir, "tiny-imagenet-200")
    if not os.path.isfile(os.path.join(root, "wnids.txt")):
        raise DataError(f"TinyImageNet not found: expected {root}/wnids.txt (download tiny-imagenet-200.zip from "
                        f"the CS231n site, http://cs231n.stanford.edu/tiny-imagenet-200.zip, and unzip it into --data-dir)")
    cache = os.path.join(root, "arrays.npz")
    if os.path.isfile(cache):
        z = np.load(cache)
        return z["x_tr"], z["y_tr"], z["x_te"], z["y_te"]
    from tqdm import tqdm
    wnids = [w.strip() for w in open(os.path.join(root, "wnids.txt")) if w.strip()]
    cls = {w: i for i, w in enumerate(wnids)}
    tr_files = []
    for w in wnids:
        d = os.path.join(root, "train", w, "images")
        if not os.path.isdir(d):
            raise DataError(f"TinyImageNet is incomplete: missing folder {d} (unzip tiny-imagenet-200.zip again)")
        tr_files += [(os.path.join(d, f), cls[w]) for f in sorted(os.listdir(d)) if f.endswith(".JPEG")]
    ann = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.isfile(ann):
        raise DataError(f"TinyImageNet is incomplete: missing {ann} (unzip tiny-imagenet-200.zip again)")
    te_files = [(os.path.join(root, "val", "images", p[0]), cls[p[1]])
                for p in (line.split("\t") for line in open(ann)) if len(p) > 1]

    def read(files, desc):
        x = np.empty((len(files), 64, 64, 3), np.uint8)
        for k, (f, _) in enumerate(tqdm(files, desc=desc, mininterval=2)):
            x[k] = np.asarray(Image.open(f).convert("RGB"))
        return x, np.array([c for _, c in files], np.int64)

    x_tr, y_tr = read(tr_files, "decode TinyImageNet train")
    x_te, y_te = read(te_files, "decode TinyImageNet val")
    tmp = cache + ".tmp.npz"
    np.savez(tmp, x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te)
    os.replace(tmp, cache)
    return x_tr, y_tr, x_te, y_te


# name -> (num_classes, image size, horizontal flip in the weak view)
DATASETS = {"digits": (10, 32, False), "cifar100": (100, 32, True), "tinyimagenet": (200, 64, True)}
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Data:
    """Arrays and views of one dataset: x_tr [N, H, W, 3] uint8, y_tr [N], x_te, y_te; num_classes; views."""

    def __init__(self, name, data_dir="./data", download=False):
        if name not in DATASETS:
            raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        self.name = name
        self.num_classes, self.size, flip = DATASETS[name]
        if name == "digits":
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_digits_arrays(self.size)
            mean = tuple([float(self.x_tr.mean() / 255)] * 3)
            std = tuple([float(self.x_tr.std() / 255)] * 3)
        elif name == "cifar100":
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_cifar100_arrays(data_dir, download)
            mean, std = CIFAR100_MEAN, CIFAR100_STD
        else:
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_tinyimagenet_arrays(data_dir)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.views = make_views(self.size, flip, mean, std)


def make_views(size, flip, mean, std):
    """weak / strong / plain transforms, PIL image -> normalised float tensor [3, size, size]."""
    weak = [T.RandomCrop(size, padding=size // 8, padding_mode="reflect")] + ([T.RandomHorizontalFlip()] if flip else [])
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    # Cutout as in FixMatch/USB: one square of side up to half the image, filled with 0 (the mean after Normalize).
    cutout = T.RandomErasing(p=1.0, scale=(0.01, 0.25), ratio=(1.0, 1.0), value=0)
    return {
        "weak": T.Compose(weak + to_tensor),
        "strong": T.Compose(weak + [T.RandAugment(num_ops=3)] + to_tensor + [cutout]),
        "plain": T.Compose(to_tensor),
    }


# ----------------------------------------------------------------------------------------------------------------
# the split

def initial_split(y, budget, num_classes, seed):
    """The initial labeled set: budget / num_classes training images per class, drawn with `seed`.
    Returns sorted dataset indices. A budget that is not a multiple of the classes, or larger than a class, is a
    DataError."""
    if budget <= 0 or budget % num_classes:
        raise DataError(f"--budget {budget} must be a positive multiple of the {num_classes} classes "
                        f"(the initial set takes budget / classes images per class)")
    k = budget // num_classes
    rng = np.random.default_rng(seed)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < k:
            raise DataError(f"--budget {budget} asks for {k} images of class {c}, which has only {len(idx)}")
        out.append(rng.choice(idx, k, replace=False))
    return np.sort(np.concatenate(out))


def pool_of(num_train, labeled):
    """The AL pool: training indices not yet labeled (sorted)."""
    return np.setdiff1d(np.arange(num_train), labeled)


# ----------------------------------------------------------------------------------------------------------------
# torch datasets

class Views(torch.utils.data.Dataset):
    """Items of a subset of an image array, each a dict {'idx': dataset index, 'y': label, <view>: tensor ...}.

    `idx` lets queues and selections refer to the sample. With `view_seed` set, the random views of item i are
    drawn from a generator seeded by (view_seed, i): every pass over the data then sees the same view of each
    sample (used for the features that selection reads, so that e.g. noise stability compares like with like).
    """

    def __init__(self, x, y, indices, views, view_seed=None):
        self.x, self.y, self.indices, self.views, self.view_seed = x, y, np.asarray(indices), views, view_seed

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = int(self.indices[k])
        img = Image.fromarray(self.x[i])
        out = {"idx": i, "y": int(self.y[i])}
        if self.view_seed is None:
            for name, tf in self.views.items():
                out[name] = tf(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.view_seed * 1_000_003 + i)
                for name, tf in self.views.items():
                    out[name] = tf(img)
        return out


def loader(dataset, batch_size, shuffle=False, num_samples=None, seed=0, workers=0, drop_last=False):
    """A DataLoader; with num_samples, a seeded sampler that walks through fresh permutations of the data
    until num_samples items are drawn (an endless stream cut to the training length)."""
    g = torch.Generator().manual_seed(seed)
    sampler = None
    if num_samples is not None:
        sampler = torch.utils.data.RandomSampler(dataset, replacement=False, num_samples=num_samples, generator=g)
        shuffle = False
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                                       generator=g if shuffle else None, num_workers=workers,
                                       drop_last=drop_last, persistent_workers=False,
                                       pin_memory=torch.cuda.is_available())

