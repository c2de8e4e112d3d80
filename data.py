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
All of them end in a uint8 tensor [3, H, W]; ToTensor + Normalize are done once per batch by Data.normalize
(the same numbers as torchvision's per-image ToTensor + Normalize). Every random draw comes from torch's global RNG
(see ReflectCrop and UsbRandAugment), in torchvision's order, so a torch seed gives the views torchvision's
RandomCrop / RandomHorizontalFlip / ToTensor / Normalize pipeline gives, bit for bit (test_data.py keeps that pipeline).
"""
import hashlib
import os
import struct

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps


class DataError(Exception):
    """A problem the user can fix (missing folder, budget that does not fit). ssal.py prints it in one line."""


# ----------------------------------------------------------------------------------------------------------------
# loading

def digits_to_rgb(x8, size=32):
    """8x8 grey digit maps [N, 1, 8, 8] in [0, 1] -> upsampled (bilinear) to size x size, uint8 [N, 3, s, s]."""
    x = torch.nn.functional.interpolate(x8, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)


def load_digits_arrays(size=32):
    """scikit-learn's digits: 8x8 grey images with values 0..16, upsampled (bilinear) to size x size RGB uint8.
    A fixed stratified split of 1,297 train / 500 test images that does not move with --seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x8 = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
    x = digits_to_rgb(x8, size).permute(0, 2, 3, 1).numpy()  # [N, s, s, 3]
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


FASHION_FILES = {"x_tr": "train-images-idx3-ubyte", "y_tr": "train-labels-idx1-ubyte",
                 "x_te": "t10k-images-idx3-ubyte", "y_te": "t10k-labels-idx1-ubyte"}


def read_idx(path):
    """An IDX file (the MNIST format; gzipped when it ends in .gz): a big-endian header, magic 0x0000 <type> <ndim>,
    ndim int32 sizes, then the uint8 data. Returns the array with those sizes."""
    import gzip
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    zero, dtype, ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (its header is {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {data.size} bytes of data, its header promises {int(np.prod(dims))} (cut short?)")
    return data.reshape(dims)


def load_fashionmnist_arrays(data_dir, download=False, size=32):
    """Fashion-MNIST: 60,000 training / 10,000 test greyscale 28x28 images of 10 kinds of clothing, from the four IDX
    files (.gz or not) under <data_dir>/FashionMNIST/raw/, torchvision's layout. Each image is padded with 2 black
    pixels a side to size x size (32: the 4x4 grid of 8x8 patches of the digits ViT) rather than resized: the
    background is black, so padding adds no content and keeps every pixel as it is, where a resize would
    interpolate them; grey is repeated into 3 channels. Returns uint8 [N, 32, 32, 3] images and int64 labels."""
    raw = os.path.join(data_dir, "FashionMNIST", "raw")
    found = {k: next((p for p in (os.path.join(raw, n), os.path.join(raw, n + ".gz")) if os.path.isfile(p)), None)
             for k, n in FASHION_FILES.items()}
    if download and None in found.values():
        from torchvision.datasets import FashionMNIST
        try:
            FashionMNIST(data_dir, train=True, download=True)
            FashionMNIST(data_dir, train=False, download=True)
        except (RuntimeError, OSError) as e:
            raise DataError(f"Fashion-MNIST could not be downloaded into {data_dir}: {str(e).splitlines()[0]}") from None
        return load_fashionmnist_arrays(data_dir, False, size)
    missing = [FASHION_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DataError(f"Fashion-MNIST not found: {raw}/ lacks {', '.join(missing)} (.gz or not): pass --download "
                        f"on a machine with internet (torchvision fetches it), or on Debian `apt-get install "
                        f"dataset-fashion-mnist` and copy /usr/share/datasets/fashion-mnist/*.gz into {raw}/")
    out = {k: read_idx(p) for k, p in found.items()}
    for part in ("tr", "te"):
        x, y = out[f"x_{part}"], out[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise DataError(f"Fashion-MNIST's {part} files hold images {list(x.shape)} and labels {list(y.shape)}, "
                            f"not [N, 28, 28] and [N]")
        p = (size - 28) // 2
        out[f"x_{part}"] = np.repeat(np.pad(x, ((0, 0), (p, size - 28 - p), (p, size - 28 - p)))[..., None], 3, -1)
        out[f"y_{part}"] = y.astype(np.int64)
    return out["x_tr"], out["y_tr"], out["x_te"], out["y_te"]


# name -> (num_classes, image size, horizontal flip in the weak view: clothes are mirror-symmetric, digits are not)
DATASETS = {"digits": (10, 32, False), "cifar100": (100, 32, True), "tinyimagenet": (200, 64, True),
            "fashionmnist": (10, 32, True)}
# USB's CIFAR-100 statistics (cv_datasets/cifar.py: mean / std on the 0..255 scale, divided by 255)
CIFAR100_MEAN = tuple(v / 255 for v in (129.3, 124.1, 112.4))
CIFAR100_STD = tuple(v / 255 for v in (68.2, 65.4, 70.4))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalize:
    """ToTensor + Normalize for a whole batch: uint8 images [..., 3, H, W] on any device -> float32
    (x / 255 - mean) / std on that device. The same operations, in the same order and precision (mean and std
    rounded to float32), as torchvision's ToTensor then Normalize per image, so the same numbers bit for bit.
    mean and std are copied to each device once."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._on = {}  # device -> (mean, std) tensors [3, 1, 1] float32

    def __call__(self, x):
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize takes the uint8 images the views give, not {x.dtype} (normalised twice?)")
        if x.device not in self._on:
            stats = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in (self.mean, self.std))
            self._on[x.device] = tuple(t.to(x.device) for t in stats)
        mean, std = self._on[x.device]
        return x.float().div_(255).sub_(mean).div_(std)


class Data:
    """Arrays and views of one dataset: x_tr [N, H, W, 3] uint8, y_tr [N], x_te, y_te; num_classes; views (uint8
    tensors); mean, std (per channel, 0..1 scale) and normalize(x) for the batches of views."""

    def __init__(self, name, data_dir="./data", download=False):
        if name not in DATASETS:
            raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
        self.name = name
        self.num_classes, self.size, flip = DATASETS[name]
        if name == "digits":
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_digits_arrays(self.size)
            mean = tuple([float(self.x_tr.mean() / 255)] * 3)
            std = tuple([float(self.x_tr.std() / 255)] * 3)
        elif name == "fashionmnist":  # grey: one statistic for the three repeated channels, as digits
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_fashionmnist_arrays(data_dir, download, self.size)
            g = self.x_tr[..., 0].astype(np.float32) / 255  # one channel: 60,000 x 32 x 32 (a float64 copy of
            m = float(g.mean(dtype=np.float64))             # all three would take 1.5 GB)
            mean, std = (m,) * 3, (float(np.sqrt((g * g).mean(dtype=np.float64) - m * m)),) * 3
        elif name == "cifar100":
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_cifar100_arrays(data_dir, download)
            mean, std = CIFAR100_MEAN, CIFAR100_STD
        else:
            self.x_tr, self.y_tr, self.x_te, self.y_te = load_tinyimagenet_arrays(data_dir)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.mean, self.std = mean, std
        self._normalize = Normalize(mean, std)
        self.views = make_views(self.size, flip)

    def normalize(self, x):
        """A batch of views, uint8 [B, 3, H, W] on any device -> float32 (x / 255 - mean) / std on that device."""
        return self._normalize(x)


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


class ReflectCrop:
    """torchvision's RandomCrop(size, padding=p, padding_mode="reflect"), then RandomHorizontalFlip() if `flip`, on a
    uint8 array [H, W, C]: the same pixels from the same draws on torch's global RNG, in the same order
    (RandomCrop.get_params: torch.randint(0, H + 2p - size + 1, size=(1,)) for the top row, then the same for the left
    column, neither drawn when the padded image is size x size; then RandomHorizontalFlip's torch.rand(1) < 0.5).

    No padded image is made, per item or per array: reflect-padding then cropping is a gather, crop pixel (r, c) =
    image pixel (R[i + r], C[j + c]) with R = np.pad(arange(H), p, mode="reflect") (the numpy call torchvision's pad
    makes, on the indices), and the flip reverses the columns. Two np.take per item: ~4 us at 32 x 32, ~13 us at
    64 x 64, against ~95 / ~110 us for torchvision's PIL -> np.pad -> PIL round trip (np.pad alone: ~23 / ~30 us).
    Slicing a reflect-padded copy of the whole array would save another ~2 / ~8 us per item (next to ~15 us for a
    weak and ~200 us for a strong view at 32 x 32), but costs memory (CIFAR-100: 240 MB beside the 150 MB of images,
    TinyImageNet: 1.9 GB beside 1.2 GB), once per Views (each sees only the array it is given) unless Data hands a
    padded array to every Views, and in every DataLoader worker if padded lazily there: not worth it."""

    def __init__(self, size, padding, flip):
        self.size, self.padding, self.flip = size, padding, flip
        self._index = {}  # side n -> the indices of the reflect-padded side, n + 2 padding of them

    def _padded(self, n):
        if n not in self._index:
            self._index[n] = np.pad(np.arange(n), self.padding, mode="reflect")
        return self._index[n]

    def params(self, h, w):
        """Draws a crop (and flip) for an h x w image: (rows, cols), the image's rows and columns that make it up."""
        rows, cols, s = self._padded(h), self._padded(w), self.size
        if len(rows) < s or len(cols) < s:
            raise ValueError(f"crop size {s} is larger than the padded image, {len(rows)} x {len(cols)}")
        if len(rows) > s or len(cols) > s:  # as get_params: nothing drawn when the padded image is the crop
            i = torch.randint(0, len(rows) - s + 1, size=(1,)).item()
            j = torch.randint(0, len(cols) - s + 1, size=(1,)).item()
            rows, cols = rows[i:i + s], cols[j:j + s]
        if self.flip and torch.rand(1).item() < 0.5:
            cols = cols[::-1]
        return rows, cols

    def __call__(self, x, channels_first=False):
        """x [H, W, C] -> a new array [size, size, C], or [C, size, size] with channels_first."""
        rows, cols = self.params(*x.shape[:2])
        if channels_first:
            return x.transpose(2, 0, 1).take(rows, 1).take(cols, 2)
        return x.take(rows, 0).take(cols, 1)

    def __repr__(self):
        return f"{type(self).__name__}(size={self.size}, padding={self.padding}, reflect, flip={self.flip})"


class View:
    """One view: an image, a uint8 array [H, W, 3] (what Views passes) or a PIL image, -> a new uint8 tensor
    [3, H', W']: `crop` (a ReflectCrop) if given, then `augment` (PIL image -> PIL image: UsbRandAugment) if given.
    No ToTensor / Normalize here: Data.normalize does them per batch. Only the augmented view goes through PIL."""

    def __init__(self, crop=None, augment=None):
        self.crop, self.augment = crop, augment

    def __call__(self, img):
        x = np.asarray(img)
        if self.augment is None:
            if self.crop is not None:
                return torch.from_numpy(self.crop(x, channels_first=True))
            chw = x.transpose(2, 0, 1)
        else:
            if self.crop is not None:
                x = self.crop(x)
            chw = np.asarray(self.augment(Image.fromarray(x))).transpose(2, 0, 1)
        return torch.from_numpy(chw.copy())  # C order; writable and never the dataset's memory

    def __repr__(self):
        return f"{type(self).__name__}(crop={self.crop}, augment={self.augment})"


def make_views(size, flip):
    """weak / strong / plain transforms, image (uint8 array [size, size, 3] or PIL image) -> uint8 tensor
    [3, size, size], as USB's cifar.py without its ToTensor + Normalize (Data.normalize, per batch). USB starts with
    Resize(size), a no-op here: every loader gives size x size images. The crop and flip draw from torch's global RNG
    as torchvision's RandomCrop and RandomHorizontalFlip do, as UsbRandAugment does."""
    crop = ReflectCrop(size, int(size * 0.125), flip)  # USB: padding int(size (1 - crop_ratio)), crop_ratio 0.875
    return {"weak": View(crop), "strong": View(crop, UsbRandAugment(3)), "plain": View()}


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
    The global RNG is left as it was. Without view_seed the views draw from the global RNG. The views (make_views)
    are uint8 tensors [3, H, W]: normalise the batches with Data.normalize.
    """

    def __init__(self, x, y, indices, views, view_seed=None):
        self.x, self.y, self.indices, self.views = x, y, np.asarray(indices), views
        self.view_seed = None if view_seed is None else tuple(np.atleast_1d(view_seed).tolist())

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, key):
        t, k = key if isinstance(key, tuple) else (None, key)
        i = int(self.indices[k])
        img = self.x[i]  # the transforms take the uint8 array [H, W, 3] (make_views: no PIL round trip)
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



def view_tensor(dataset, workers=0):
    """Every item of a Views dataset under its (one) view, as uint8 [N, 3, H, W] in dataset order."""
    return torch.cat([next(v for k, v in b.items() if k not in ("idx", "y"))
                      for b in loader(dataset, 256, workers=workers)])


def test_images(data, workers=0, split="te"):
    """The test set's (split "val": the validation set's) plain views, uint8 [N, 3, H, W]: computed once per
    training, read at every evaluation."""
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    return view_tensor(Views(x, y, np.arange(len(y)), {"plain": data.views["plain"]}), workers)


VAL_SEED = 20250611  # the validation split's own seed: the same held-out images for every --seed and selector


def hold_out(data, n):
    """--val-size n: n training images, stratified by class and drawn once per dataset (VAL_SEED), become the
    validation set data.x_val / y_val and leave x_tr / y_tr, and with them the initial split, the AL pool and the
    unlabeled stream. The labels of a validation set cost annotation: it is for choosing a method's settings on a
    benchmark, not part of the SSAL budget."""
    from sklearn.model_selection import train_test_split
    if not 0 < n <= len(data.y_tr) - data.num_classes:
        raise DataError(f"--val-size {n} must be between 1 and {len(data.y_tr) - data.num_classes} (the "
                        f"{len(data.y_tr)} training images less one per class)")
    keep, val = train_test_split(np.arange(len(data.y_tr)), test_size=n, stratify=data.y_tr, random_state=VAL_SEED)
    keep, val = np.sort(keep), np.sort(val)
    data.x_val, data.y_val = data.x_tr[val], data.y_tr[val]
    data.x_tr, data.y_tr = data.x_tr[keep], data.y_tr[keep]
    return val


class Batches:
    """Normalised batches (x,) of a uint8 image tensor [N, 3, H, W], on the device, as often as iterated: the pool
    that noise stability passes through 31 times reads views computed once, not once per pass."""

    def __init__(self, x, normalize, device, size=256):
        self.x, self.normalize, self.dev, self.size = x, normalize, torch.device(device), size

    def __iter__(self):
        for i in range(0, len(self.x), self.size):
            yield (self.normalize(self.x[i:i + self.size].to(self.dev, non_blocking=True)),)

    def subset(self, positions):
        """The same batches over the images at `positions` only (noise stability's candidate subset)."""
        return Batches(self.x[torch.as_tensor(positions)], self.normalize, self.dev, self.size)


def training_streams(data, labeled, args, uses_unlabeled, start=0):
    """The SSL training's streams from iteration `start` on: the labeled one (stream 0: the weak view, and the
    strong one with --fa to fill Q_s) over `labeled`, and with `uses_unlabeled` the unlabeled one (stream 1: weak and
    strong views) over the whole training set. Batches args.batch_size and args.batch_size * args.uratio, for
    args.iters iterations. Which images a draw takes, and their views, depend on (args.seed, stream, draw) only,
    so a resumed training picks them up at draw start x batch."""
    B, Bu, V = args.batch_size, args.batch_size * args.uratio, data.views
    lb_views = {"weak": V["weak"], "strong": V["strong"]} if args.fa else {"weak": V["weak"]}
    lb_set = Views(data.x_tr, data.y_tr, labeled, lb_views, view_seed=(args.seed, 0))
    streams = [loader(lb_set, B, num_samples=args.iters * B, seed=mix_seed(args.seed, 0), workers=args.workers,
                      start=start * B)]
    if uses_unlabeled:
        ulb_set = Views(data.x_tr, data.y_tr, np.arange(len(data.y_tr)), {"weak": V["weak"], "strong": V["strong"]},
                        view_seed=(args.seed, 1))
        streams.append(loader(ulb_set, Bu, num_samples=args.iters * Bu, seed=mix_seed(args.seed, 1),
                              workers=args.workers, start=start * Bu))
    return streams
