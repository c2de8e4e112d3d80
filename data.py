"""Datasets, the labeled/unlabeled split, and the weak / strong views of Sec. 3.1.

    digits        scikit-learn's handwritten digits (ships inside the package: the CPU demo), 10 classes
    cifar100      torchvision's CIFAR-100 under --data-dir (downloaded only with --download), 100 classes
    tinyimagenet  the standard tiny-imagenet-200 folder under --data-dir, 200 classes, 64x64

Every loader returns uint8 images [N, H, W, 3] and int64 labels, in memory. Views, as USB builds them (semilearn's
datasets/cv_datasets/cifar.py and datasets/augmentation/randaugment.py):
    weak   alpha(x): random crop with padding int(0.125 size), reflect (+ horizontal flip, except on digits, which are
                     not mirror-symmetric)
    strong A(x):    weak + USB's RandAugment(3, 5) (3 of 14 PIL ops, with replacement, each with a magnitude drawn
                     from its own range) + Cutout (a square of side U[0, 0.5) x width, grey (125, 123, 114))
    plain          no augmentation (the test set)
All of them end in ToTensor + Normalize. Every random draw comes from torch's global RNG (see UsbRandAugment).
"""
import hashlib
import os
import struct

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
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
    cached as tiny-imagenet-200/arrays.npz (about 1.3 GB) so that later runs start in seconds. A cache that cannot
    be read, or whose arrays are not x uint8 [N, 64, 64, 3] with y int64 [N], is rebuilt (with a warning)."""
    root = os.path.join(data_dir, "tiny-imagenet-200")
    if not os.path.isfile(os.path.join(root, "wnids.txt")):
        raise DataError(f"TinyImageNet not found: expected {root}/wnids.txt (download tiny-imagenet-200.zip from "
                        f"the CS231n site, http://cs231n.stanford.edu/tiny-imagenet-200.zip, and unzip it into --data-dir)")
    cache = os.path.join(root, "arrays.npz")
    if os.path.isfile(cache):
        try:
            with np.load(cache) as z:
                arrays = tuple(z[k] for k in ("x_tr", "y_tr", "x_te", "y_te"))
            for part, x, y in (("train", *arrays[:2]), ("test", *arrays[2:])):
                if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (64, 64, 3):
                    raise ValueError(f"{part} images are {x.dtype} {list(x.shape)}, not uint8 [N, 64, 64, 3]")
                if y.dtype != np.int64 or y.shape != (len(x),):
                    raise ValueError(f"{part} labels are {y.dtype} {list(y.shape)}, not int64 [{len(x)}]")
            return arrays
        except Exception as e:  # truncated or foreign file, missing key, wrong arrays: decode the JPEGs again
            import sys
            why = " ".join(str(e).split()).strip("'\"").split(". ")[0] or "no detail"
            why = f"{type(e).__name__}: {why[:100]}"
            print(f"warning: {cache} is unreadable ({why}); decoding the JPEGs again", file=sys.stderr)
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
# USB's CIFAR-100 statistics (cv_datasets/cifar.py: mean / std on the 0..255 scale, divided by 255)
CIFAR100_MEAN = tuple(v / 255 for v in (129.3, 124.1, 112.4))
CIFAR100_STD = tuple(v / 255 for v in (68.2, 65.4, 70.4))
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


# ----------------------------------------------------------------------------------------------------------------
# the views

def _affine(img, coeffs):
    """PIL's affine warp with its defaults, as USB calls it: nearest neighbour, black outside the image.
    coeffs (a, b, c, d, e, f) map an output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f)."""
    return img.transform(img.size, Image.AFFINE, coeffs)


# USB's RandAugment ops: name -> (op(img, v), (low, high) of v). Ops, ranges and formulas follow augment_list() and
# the functions of the same names in semilearn/datasets/augmentation/randaugment.py. The magnitude v is drawn
# uniformly in [low, high) for every op, also for those that ignore it (AutoContrast, Equalize, Identity).
USB_OPS = {
    "AutoContrast": (lambda img, v: ImageOps.autocontrast(img), (0, 1)),
    "Brightness": (lambda img, v: ImageEnhance.Brightness(img).enhance(v), (0.05, 0.95)),
    "Color": (lambda img, v: ImageEnhance.Color(img).enhance(v), (0.05, 0.95)),
    "Contrast": (lambda img, v: ImageEnhance.Contrast(img).enhance(v), (0.05, 0.95)),
    "Equalize": (lambda img, v: ImageOps.equalize(img), (0, 1)),
    "Identity": (lambda img, v: img, (0, 1)),
    "Posterize": (lambda img, v: ImageOps.posterize(img, int(v)), (4, 8)),  # bits int(v): 4..7
    "Rotate": (lambda img, v: img.rotate(v), (-30, 30)),  # degrees, counter-clockwise, about the centre
    "Sharpness": (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), (0.05, 0.95)),
    "ShearX": (lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), (-0.3, 0.3)),
    "ShearY": (lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), (-0.3, 0.3)),
    "Solarize": (lambda img, v: ImageOps.solarize(img, v), (0, 256)),  # invert the pixels >= v
    "TranslateX": (lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)), (-0.3, 0.3)),  # v x width
    "TranslateY": (lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])), (-0.3, 0.3)),  # v x height
}
CUTOUT_FILL = (125, 123, 114)  # USB's CutoutAbs colour (on the 0..255 scale, before Normalize)


def _uniform(low, high):
    """One draw from U[low, high) on torch's global RNG."""
    return low + (high - low) * torch.rand(()).item()


def sample_magnitude(name):
    """A magnitude for op `name`, uniform in its range (USB: min_val + (max_val - min_val) * random.random())."""
    return _uniform(*USB_OPS[name][1])


def cutout_box(w, h, v, cx, cy):
    """The pixels Cutout paints, as a box (left, top, right, bottom), right / bottom excluded, for side v and the
    centre (cx, cy), all in pixels. As USB's CutoutAbs: the corner is int(max(0, c - v / 2)), the far side is
    min(size, corner + v), so a square cut by the left / top edge keeps its side and one cut by the right / bottom
    edge is shortened; USB paints with PIL's ImageDraw.rectangle, which includes the far side's pixel (Pillow
    truncates its float coordinates), so the painted side is int(v) + 1 pixels before the clipping."""
    x0, y0 = int(max(0.0, cx - v / 2)), int(max(0.0, cy - v / 2))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    return x0, y0, min(w, int(x1) + 1), min(h, int(y1) + 1)


class UsbCutout:
    """USB's Cutout as RandAugment applies it (randaugment.py, RandAugment.__call__, Cutout and CutoutAbs): a square
    of side v = U[0, 0.5) x width, centre uniform over the image, painted grey (125, 123, 114). v = 0 paints nothing."""

    def __init__(self, max_fraction=0.5, fill=CUTOUT_FILL):
        self.max_fraction, self.fill = max_fraction, fill

    def __call__(self, img):
        v = _uniform(0, self.max_fraction) * img.size[0]
        if v <= 0:
            return img
        w, h = img.size
        cx, cy = _uniform(0, w), _uniform(0, h)
        img = img.copy()
        img.paste(self.fill, cutout_box(w, h, v, cx, cy))
        return img


class UsbRandAugment:
    """USB's RandAugment(n, m) (randaugment.py, class RandAugment): n ops drawn with replacement from USB_OPS, each
    applied with a magnitude drawn uniformly from its own range (m, a fixed magnitude in FixMatch, is unused in
    USB and so absent here), then Cutout. PIL image in, PIL image out.

    Deviation from USB: USB draws the ops and magnitudes with Python's `random` and the Cutout centre with
    numpy.random. Here every draw (ops, magnitudes, Cutout side and centre) comes from torch's global RNG, the one
    that Views(view_seed=...) forks and seeds per item and that DataLoader seeds per worker, so that a fixed torch
    seed gives a fixed view. The draws keep USB's order: the n ops, each op's magnitude, Cutout's side, x, y.
    """

    def __init__(self, n=3):
        self.n = n
        self.names = tuple(USB_OPS)  # names, not the functions: the transform pickles for spawned DataLoader workers
        self.cutout = UsbCutout()

    def __call__(self, img):
        for k in torch.randint(len(self.names), (self.n,)).tolist():
            op, _ = USB_OPS[self.names[k]]
            img = op(img, sample_magnitude(self.names[k]))
        return self.cutout(img)

    def __repr__(self):
        return f"{type(self).__name__}(n={self.n}, ops={len(self.names)}, cutout=0.5)"


def make_views(size, flip, mean, std):
    """weak / strong / plain transforms, PIL image -> normalised float tensor [3, size, size], as USB's cifar.py.
    USB starts with Resize(size), a no-op here: every loader gives size x size images. The crop and flip draw from
    torch's global RNG (torchvision), as UsbRandAugment does."""
    weak = [T.RandomCrop(size, padding=int(size * 0.125), padding_mode="reflect")]  # USB: int(size (1 - crop_ratio))
    if flip:
        weak.append(T.RandomHorizontalFlip())
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    return {
        "weak": T.Compose(weak + to_tensor),
        "strong": T.Compose(weak + [UsbRandAugment(3)] + to_tensor),
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

def mix_seed(*ints):
    """A 63-bit seed from a tuple of ints (blake2b): different tuples give unrelated seeds."""
    digest = hashlib.blake2b(struct.pack(f"<{len(ints)}q", *ints), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Views(torch.utils.data.Dataset):
    """Items of a subset of an image array, each a dict {'idx': dataset index, 'y': label, <view>: tensor ...}.

    `idx` lets queues and selections refer to the sample. An item is asked for by its position k in `indices`, or,
    from a `Stream`, as (t, k) with t the draw's position in the training stream. With `view_seed` (an int or a
    tuple of ints) set, the random views are drawn from torch's RNG seeded by
        (view_seed, 0, i)  for item k = dataset index i: a fixed view per image, the same on every pass (the
                           features that selection reads, so that e.g. noise stability compares like with like);
        (view_seed, 1, t)  for the draw (t, k): a fresh view per draw that depends on nothing but the seed and t,
                           so it is the same with any number of workers, and after a resume at any iteration.
    The global RNG is left as it was. Without view_seed the views draw from the global RNG.
    """

    def __init__(self, x, y, indices, views, view_seed=None):
        self.x, self.y, self.indices, self.views = x, y, np.asarray(indices), views
        self.view_seed = None if view_seed is None else tuple(np.atleast_1d(view_seed).tolist())

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        t, k = key if isinstance(key, tuple) else (None, key)
        i = int(self.indices[k])
        img = Image.fromarray(self.x[i])
        out = {"idx": i, "y": int(self.y[i])}
        if self.view_seed is None:
            for name, tf in self.views.items():
                out[name] = tf(img)
        else:
            g = torch.default_generator  # the CPU generator the transforms draw from (torch.manual_seed: 100x slower)
            state = g.get_state()
            g.manual_seed(mix_seed(*self.view_seed, 0, i) if t is None else mix_seed(*self.view_seed, 1, t))
            try:
                for name, tf in self.views.items():
                    out[name] = tf(img)
            finally:
                g.set_state(state)
        return out


class Stream(torch.utils.data.Sampler):
    """A training stream: `num_samples` draws from n items, through one permutation after another, permutation e
    drawn from a generator seeded by (seed, e). Yields (t, k): the draw's position t and the item k. Any position can
    be reached without drawing the ones before it, so `start` resumes a stream mid-way (start = iteration x batch)."""

    def __init__(self, n, num_samples, seed, start=0):
        self.n, self.num_samples, self.seed, self.start = n, num_samples, seed, start

    def perm(self, e):
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, e))).tolist()

    def __iter__(self):
        e, p = None, None
        for t in range(self.start, self.num_samples):
            if t // self.n != e:
                e = t // self.n
                p = self.perm(e)
            yield t, p[t % self.n]

    def __len__(self):
        return self.num_samples - self.start


def loader(dataset, batch_size, num_samples=None, seed=0, workers=0, start=0):
    """A DataLoader in dataset order; with num_samples, over the `Stream` of num_samples draws seeded by `seed`
    from draw `start` on (a training stream cut to the training length; batches of consecutive draws)."""
    sampler = Stream(len(dataset), num_samples, seed, start) if num_samples is not None else None
    # The loader's own generator (the workers' base seed) is never torch's global one: a DataLoader without one
    # draws a number from the global RNG each time it is iterated, which would shift whatever else reads that RNG.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       generator=torch.Generator().manual_seed(seed), num_workers=workers,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available())

