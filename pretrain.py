"""The pretrained start of the digits ViT (what ImageNet pretraining is to the paper's ViT), made without a digits
label and without a test image:

    python pretrain.py          # about 10 minutes on 2 CPU cores -> weights/vit_tiny_digits.pt (+ .json)
    python pretrain.py --dataset fashionmnist --data-dir DIR    # SimCLR only -> weights/vit_tiny_fashionmnist.pt

stage 1, printed characters (supervised, no digit anywhere): letters, punctuation, symbols, Greek, Cyrillic, arrows
    and math operators (never a Unicode digit; shapes that coincide at 8x8 merged: 372 classes) rendered with the
    TrueType fonts matplotlib ships, warped on the fly (rotation, shear, scale, squeeze, shift, elastic jitter,
    thicker / thinner strokes), binarised at 32x32 and counted in 4x4 blocks as the UCI optdigits preprocessing
    counts a digit's pixels. Cross-entropy over the characters: the backbone learns strokes.
stage 2, the digits' own images (self-supervised, no label): SimCLR (Chen et al., 2020) on the 1,297 training
    images of the digits split: two warped views of each image, NT-Xent loss (Eq. 1 of SimCLR) on a projection
    head that is thrown away afterwards.

fashionmnist: SimCLR alone on its 60,000 training images (fashion_view: resized crop, flip, brightness), from a
    random start or --init FILE.

Measure (printed at the end, and the figure the README quotes): 1-nearest-neighbour test accuracy (cosine, on the
pre-logits features) with one labeled image per class, the seeded initial split of ssal.py, seeds 0-4 -- the labels
of those 10 images are read for the measure only. Raw pixels give 69.3 +- 3.9 %, a random start 14.5 +- 1.9 %.
The weights file holds the backbone only (no head); ssal.py's digits preset starts from it, --scratch does not.
Glyph rendering goes through FreeType, so another PIL / FreeType version makes slightly different weights.
"""
import argparse
import copy
import glob
import json
import math
import os
import string
import time
import unicodedata
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data as D
import runstate
import ssal

VAL_SIZE = ssal.PRESETS["fashionmnist"]["val_size"]  # the validation images of one_nn(queries="val")

LETTERS = string.ascii_uppercase + string.ascii_lowercase
SKIP_FONTS = ("STIXSiz", "STIXNonUni", "cmex10", "cmsy10", "LastResort", "Display")  # symbol-only / partial fonts
G = 64  # side of a glyph template


# ----------------------------------------------------------------------------------------------------------------
# images that look like scikit-learn's digits

def to_digits(x):
    """Grey maps [B, 1, 32, 32] in [0, 1] -> what the digits dataset makes of a 32x32 bitmap: the mean of each 4x4
    block in 17 levels (the optdigits count of on-pixels, 0..16), then data.load_digits_arrays' bilinear
    upsampling to 32x32; uint8 [B, 3, 32, 32]."""
    return D.digits_to_rgb(F.avg_pool2d(x.clamp(0, 1), 4).mul(16).round() / 16)  # via [B, 1, 8, 8]


def warp(x, g, rot=15.0, shear=0.3, scale=(0.85, 1.0), squeeze=(0.55, 1.0), shift=0.06, elastic=0.06, thick=0.4):
    """A random handwriting-like deformation of grey maps x [B, 1, H, W] -> [B, 1, 32, 32] (torch generator g):
    rotation +- rot degrees, shear, height scale U(scale), width x U(squeeze), shift +- shift (of the half-width),
    a smooth elastic jitter (4x4 control grid, +- elastic), then 3x3 dilation or erosion for a fraction `thick` of
    the batch (half each: thicker / thinner strokes)."""
    n = len(x)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    th = (u(n) * 2 - 1) * rot * math.pi / 180
    sh = (u(n) * 2 - 1) * shear
    sy = 1 / (scale[0] + u(n) * (scale[1] - scale[0]))  # output -> input coordinates
    sx = sy / (squeeze[0] + u(n) * (squeeze[1] - squeeze[0]))
    c, s = torch.cos(th), torch.sin(th)
    tx, ty = (u(n) * 2 - 1) * shift, (u(n) * 2 - 1) * shift
    A = torch.stack([torch.stack([c * sx, (c * sh - s) * sy, tx], 1),
                     torch.stack([s * sx, (s * sh + c) * sy, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(A, (n, 1, 32, 32), align_corners=False)  # [B, 32, 32, 2]
    jitter = (u(n, 2, 4, 4) * 2 - 1) * elastic
    grid = grid + F.interpolate(jitter, size=(32, 32), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    r = u(n).view(-1, 1, 1, 1)
    x = torch.where(r < thick / 2, F.max_pool2d(x, 3, 1, 1), x)  # dilate
    return torch.where((r >= thick / 2) & (r < thick), -F.max_pool2d(-x, 3, 1, 1), x)  # erode


# ----------------------------------------------------------------------------------------------------------------
# stage 1: printed characters, never a digit

def font_files():
    import matplotlib
    d = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    return sorted(f for f in glob.glob(os.path.join(d, "*.ttf")) if not any(s in os.path.basename(f) for s in SKIP_FONTS))


def glyph(font, ch, stroke=0):
    """ch white on black, cropped to its ink, larger side scaled to G - 4 and centred in G x G (uint8); None if the
    font draws nothing."""
    from PIL import Image, ImageDraw
    img = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(img).text((40, 30), ch, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    a = np.asarray(img)
    ys, xs = np.nonzero(a > 127)
    if len(ys) == 0:
        return None
    a = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    k = (G - 4) / max(a.shape)
    im = Image.fromarray(a).resize((max(1, round(a.shape[1] * k)), max(1, round(a.shape[0] * k))), Image.BILINEAR)
    out = Image.new("L", (G, G), 0)
    out.paste(im, ((G - im.width) // 2, (G - im.height) // 2))
    return np.array(out)


def charset():
    """Letters, then punctuation / symbols / Latin-1 and Latin Extended-A / Greek / Cyrillic / arrows / math
    operators, never a digit (Unicode letters, punctuation and symbols only, and not str.isdigit); a character is
    kept only if its 8x8 DejaVu Sans rendering differs (mean absolute difference > 0.04) from every kept one."""
    from PIL import ImageFont
    cands = list(LETTERS)
    for lo, hi in [(0x21, 0x7F), (0xA1, 0x180), (0x391, 0x3CA), (0x410, 0x450), (0x2190, 0x21A0), (0x2200, 0x2260)]:
        cands += [chr(c) for c in range(lo, hi) if chr(c) not in cands and unicodedata.category(chr(c))[0] in "LPS"
                  and not chr(c).isdigit()]
    font = ImageFont.truetype(next(f for f in font_files() if os.path.basename(f) == "DejaVuSans.ttf"), 48)
    kept, codes = [], []
    for ch in cands:
        a = glyph(font, ch)
        if a is None:
            continue
        c = F.avg_pool2d(torch.from_numpy(a).float()[None, None] / 255, 8).flatten()  # [64]: its 8x8 look
        if codes and (torch.stack(codes) - c).abs().mean(1).min() < 0.04:
            continue
        kept.append(ch)
        codes.append(c)
    return "".join(kept)


def glyph_templates(chars, strokes=(0, 1, 2)):
    """Every character of `chars` in every usable font and stroke width: float [K, 1, G, G] and labels [K]. Fonts
    whose letters are not distinct glyphs are skipped; the TeX cm* fonts give only A-Z a-z (their other code points
    hold other glyphs); a character a font lacks (drawn as its .notdef box) is skipped."""
    from PIL import ImageFont
    xs, ys = [], []
    for f in font_files():
        font = ImageFont.truetype(f, 48)
        letters = {ch: glyph(font, ch) for ch in LETTERS}
        if any(a is None for a in letters.values()) or len({a.tobytes() for a in letters.values()}) < 45:
            continue
        notdef = glyph(font, "\U0010FFFD")
        for k, ch in enumerate(chars):
            if os.path.basename(f).startswith("cm") and ch not in LETTERS:
                continue
            a = letters[ch] if ch in letters else glyph(font, ch)
            if a is None or (notdef is not None and np.array_equal(a, notdef)):
                continue
            for st in strokes:
                xs.append(a if st == 0 else glyph(font, ch, st))
                ys.append(k)
    return torch.from_numpy(np.stack(xs)).float().div(255)[:, None], torch.tensor(ys)


def printed_batch(templates, labels, n, g):
    """n random renderings: uint8 [n, 3, 32, 32] and their character labels; the warped glyph is binarised at a
    random level in [0.35, 0.65] (pen width), as optdigits' bitmaps are binary."""
    idx = torch.randint(len(templates), (n,), generator=g)
    x = warp(templates[idx], g)
    return to_digits((x > 0.35 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)).float()), labels[idx]


# ----------------------------------------------------------------------------------------------------------------
# stage 2: SimCLR on the digits training images

def digit_view(x, g):
    """One SimCLR view of digits images x, float [B, 1, 32, 32] in [0, 1]: a wider warp than stage 1 (rotation
    +- 20 degrees, scale 0.8-1.2, squeeze 0.85-1.15, shift +- 0.15, jitter +- 0.08), ink intensity x U(0.7, 1.3),
    back to the digits' 17 levels. uint8 [B, 3, 32, 32]."""
    x = warp(x, g, rot=20.0, scale=(0.8, 1.2), squeeze=(0.85, 1.15), shift=0.15, elastic=0.08)
    return to_digits(x * (0.7 + 0.6 * torch.rand(len(x), 1, 1, 1, generator=g)))


def fashion_view(x, g, scale=(0.3, 1.0), ratio=(0.75, 1.33), ink=(0.6, 1.4)):
    """One SimCLR view of Fashion-MNIST images x, float [B, 1, 32, 32] in [0, 1] (28x28 padded): SimCLR's own
    augmentations for a grey image, drawn from g: a random resized crop (area U(scale) of the image, aspect ratio
    log-uniform in ratio, anywhere inside it) back to 32x32, a horizontal flip half the time (clothes are
    mirror-symmetric), and a brightness change (x U(ink), clipped). uint8 [B, 3, 32, 32]."""
    n = len(x)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    area = scale[0] + u(n) * (scale[1] - scale[0])
    r = torch.exp(math.log(ratio[0]) + u(n) * (math.log(ratio[1]) - math.log(ratio[0])))
    w, h = (area * r).sqrt().clamp(max=1), (area / r).sqrt().clamp(max=1)  # crop sides, fractions of the image
    cx, cy = (u(n) * 2 - 1) * (1 - w), (u(n) * 2 - 1) * (1 - h)  # crop centres, inside the image
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    zero = torch.zeros(n)
    A = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # [B, 2, 3]
    x = F.grid_sample(x, F.affine_grid(A, (n, 1, 32, 32), align_corners=False), mode="bilinear",
                      padding_mode="border", align_corners=False)  # a crop at the edge: no dark half-pixel
    x = x * (ink[0] + u(n, 1, 1, 1) * (ink[1] - ink[0]))
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)


def nt_xent(z1, z2, temp):
    """SimCLR's NT-Xent loss. z1, z2 [B, k]: projections of two views of the same B images. Each of the 2B
    projections must pick its partner among the 2B - 1 others (cosine similarity / temp), averaged over all 2B."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2B, k]
    B = len(z1)
    sim = (z @ z.T / temp).fill_diagonal_(float("-inf"))  # [2B, 2B], a view is never its own partner
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return F.cross_entropy(sim, partner)


# ----------------------------------------------------------------------------------------------------------------
# the measure, training and the command line

@torch.no_grad()
def one_nn(model, data, seeds=range(5), queries="test"):
    """1-NN accuracy (%) with cosine similarity on pre-logits features, the labeled set being ssal.py's seeded
    initial split with one image per class; mean and sample std over `seeds`, and the per-seed accuracies.
    queries "test": the test images (the figure the README quotes). "val": the 1,000 training images ssal.py holds
    out with --val-size 1000, the labeled images drawn from the rest as ssal.py draws them -- the measure a recipe
    is chosen by, so that no choice reads the test set."""
    was = model.training
    if queries == "val":
        data = copy.copy(data)  # hold_out replaces x_tr / y_tr on the copy only
        D.hold_out(data, VAL_SIZE)
    x_q, y_q = (data.x_val, data.y_val) if queries == "val" else (data.x_te, data.y_te)
    run = SimpleNamespace(device=str(next(model.parameters()).device), amp="none")  # what ssal.run_model reads
    feat = lambda x: F.normalize(ssal.run_model(  # noqa: E731
        model, torch.from_numpy(x).permute(0, 3, 1, 2), data, run)[0], dim=1)
    f_q = feat(x_q)  # [N_q, d]
    accs = []
    for seed in seeds:
        lab = D.initial_split(data.y_tr, data.num_classes, data.num_classes, seed)
        nearest = (f_q @ feat(data.x_tr[lab]).T).argmax(1).cpu().numpy()  # [N_q]
        accs.append(100 * float((data.y_tr[lab][nearest] == y_q).mean()))
    model.train(was)
    return float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, accs


def lr_at(it, iters, lr, warmup):
    """linear warm-up, then cosine to 0"""
    return lr * min(1.0, (it + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * it / iters))


def fit(model, params, iters, a, loss_fn, desc):
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=a.wd)
    model.train()
    bar = tqdm(range(iters), desc=desc, dynamic_ncols=True)
    for it in bar:
        for grp in opt.param_groups:
            grp["lr"] = lr_at(it, iters, a.lr, min(a.warmup, iters))
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description="Make a ViT's pretrained start for ssal.py (see the module docstring).")
    a = p.add_argument
    a("--dataset", default="digits", choices=("digits", "fashionmnist"),
      help="digits: printed characters, then SimCLR on the digits; fashionmnist: SimCLR on its 60,000 training "
           "images (no label, no test image)")
    a("--data-dir", default="./data", help="folder holding FashionMNIST/raw/ (as ssal.py's --data-dir)")
    a("--init", help="a state dict to start from instead of a random initialisation (fashionmnist; e.g. the digits "
                     "start)")
    a("--chars-iters", type=int, default=2000, help="stage 1 iterations (digits: printed characters, supervised)")
    a("--simclr-iters", type=int, default=800, help="SimCLR iterations (fashionmnist: 3,000 gave no more than 800, "
      "docs/fashionmnist.md)")
    a("--batch", type=int, default=256, help="images per iteration (SimCLR: x 2 views)")
    a("--lr", type=float, default=1e-3, help="AdamW learning rate of each stage (warm-up, then cosine to 0)")
    a("--wd", type=float, default=0.05, help="AdamW weight decay")
    a("--warmup", type=int, default=100, help="warm-up iterations of each stage")
    a("--smooth", type=float, default=0.1, help="label smoothing of stage 1's cross-entropy")
    a("--temp", type=float, help="NT-Xent temperature of SimCLR. Default: digits 0.2, fashionmnist 0.5 (chosen on "
      "the validation 1-NN, docs/fashionmnist.md)")
    a("--crop-scale", type=float, default=0.6, help="fashionmnist: the smallest crop area of a SimCLR view (chosen "
      "on the validation 1-NN)")
    a("--seed", type=int, default=0, help="seed of the initial weights, the renderings and the views")
    a("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    a("--out", help="state dict written (+ a .json recipe). Default: weights/vit_tiny_<dataset>.pt")
    args = p.parse_args(argv)
    if args.temp is None:
        args.temp = 0.2 if args.dataset == "digits" else 0.5
    args.out = args.out or os.path.join("weights", f"vit_tiny_{args.dataset}.pt")
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    t0 = time.time()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)  # every rendering and view is drawn on the CPU from g
    try:
        data = D.Data(args.dataset, args.data_dir)  # normalize() uses the training images' mean / std, as ssal.py
    except D.DataError as e:
        p.exit(2, f"error: {e}\n")
    meta = {}
    # the validation 1-NN: Fashion-MNIST's real training set (the tests' small files have no room for it)
    with_val = args.dataset == "fashionmnist" and len(data.y_tr) >= 2 * VAL_SIZE
    if args.dataset == "digits":
        chars = charset()
        templates, labels = glyph_templates(chars)
        print(f"stage 1: {len(chars)} characters, {len(templates)} glyph templates; stage 2: {len(data.y_tr)} "
              f"digits training images (no label); device {dev}")
        model = ssal.build_model(ssal.get_args(["--scratch"]), len(chars), data.size).to(dev)

        def chars_loss():
            x, y = printed_batch(templates, labels, args.batch, g)
            _, logits = ssal.features_and_logits(model, data.normalize(x.to(dev)))
            return F.cross_entropy(logits, y.to(dev), label_smoothing=args.smooth)

        fit(model, model.parameters(), args.chars_iters, args, chars_loss, "stage 1: printed characters")
        meta.update(classes_stage1=len(chars), templates=len(templates), one_nn_after_stage1=one_nn(model, data))
        view = digit_view
    else:
        print(f"SimCLR on {len(data.y_tr)} {args.dataset} training images (no label); device {dev}")
        model = ssal.build_model(ssal.get_args(["--scratch"]), data.num_classes, data.size).to(dev)
        if args.init:
            runstate.load_weights(model, runstate.weights_file(args.init))
        meta.update(one_nn_before=one_nn(model, data))
        if with_val:
            meta.update(one_nn_val_before=one_nn(model, data, queries="val"))
        view = lambda x, g: fashion_view(x, g, scale=(args.crop_scale, 1.0))  # noqa: E731
    d = model.num_features
    proj = nn.Sequential(nn.Linear(d, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128)).to(dev)
    x_tr = torch.from_numpy(data.x_tr[..., 0]).float().div(255)[:, None]  # [N, 1, 32, 32]: both are grey

    def simclr_loss():
        xb = x_tr[torch.randint(len(x_tr), (args.batch,), generator=g)]
        v = data.normalize(torch.cat([view(xb, g), view(xb, g)]).to(dev))  # [2B, 3, 32, 32]
        z = proj(ssal.features_and_logits(model, v)[0])  # [2B, 128]
        return nt_xent(z[:args.batch], z[args.batch:], args.temp)

    fit(model, list(model.parameters()) + list(proj.parameters()), args.simclr_iters, args, simclr_loss,
        f"SimCLR on {args.dataset}")
    final = one_nn(model, data)
    if with_val:
        meta.update(one_nn_val=one_nn(model, data, queries="val"))
    head = {n for n, _ in model.get_classifier().named_parameters(prefix="head")}
    state = {k: v.cpu() for k, v in model.state_dict().items() if k not in head}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    torch.save(state, args.out)
    meta = {"recipe": vars(args), "device": dev, **meta, "seconds": round(time.time() - t0), "one_nn": final,
            "torch": torch.__version__}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    if with_val:
        print(f"1-NN validation accuracy (the {VAL_SIZE} held-out training images; recipes are compared on it): "
              f"{meta['one_nn_val_before'][0]:.1f} -> {meta['one_nn_val'][0]:.1f} +- {meta['one_nn_val'][1]:.1f} %")
    before = meta.get("one_nn_after_stage1", meta.get("one_nn_before"))
    print(f"1-NN test accuracy, 1 label per class (seeds 0-4): {before[0]:.1f} +- {before[1]:.1f} % before SimCLR, "
          f"{final[0]:.1f} +- {final[1]:.1f} % after; wrote {args.out} in {time.time() - t0:.0f} s")
    return final


if __name__ == "__main__":
    main()
