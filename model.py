"""The model: a timm ViT with a fresh linear head W, and its features g(x) (pre-logits) and logits W g(x) (Eq. 14).

    model = build_model(args, num_classes, img_size)     # same seed -> same initial weights; --weights loaded
    z, logits = features_and_logits(model, x)            # g(x) [B, d], W g(x) [B, C]
"""
import timm
import torch

import data as D
import runstate

# Architectures we name ourselves -> (timm name, kwargs). Any other --model is passed to timm as it is.
ARCHS = {
    # A small ViT that keeps the digits demo to minutes on 2 CPU cores (16 tokens of 8x8 pixels, d = 96). It pools
    # the average token instead of a class token: trained from scratch, a class-token ViT predicts one class for
    # every input at initialisation, and FreeMatch's initial threshold 1/C then turns that class into every
    # pseudo-label (collapse). Average pooling gives input-dependent predictions from the first step.
    "vit_tiny_digits": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=96, depth=4, num_heads=3,
                                                     global_pool="avg", class_token=False)),
    # ViT-S with patch 2 at 32x32, the USB benchmark's CIFAR-100 backbone (vit_small_patch2_32, d = 384).
    "vit_small_patch2_32": ("vit_small_patch16_224", dict(img_size=32, patch_size=2, drop_path_rate=0.2)),
    # The same family for TinyImageNet: patch 4 at 64x64 keeps the 16x16 token grid of patch 2 at 32x32.
    "vit_small_patch4_64": ("vit_small_patch16_224", dict(img_size=64, patch_size=4, drop_path_rate=0.2)),
}


def build_model(args, num_classes, img_size):
    """A timm model with a fresh head for num_classes; same seed -> same initial weights."""
    torch.manual_seed(args.seed)
    name, kw = ARCHS.get(args.model, (args.model, {}))
    if args.model not in ARCHS:
        kw = dict(img_size=img_size)
    try:
        try:
            model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes, **kw)
        except TypeError:  # an architecture without img_size (a CNN): its default input handling
            model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise D.DataError(f"unknown --model {args.model!r} (see timm.list_models() or {', '.join(ARCHS)})") from None
        raise
    except OSError as e:  # no network and no cache for --pretrained
        raise D.DataError(f"timm could not fetch pretrained weights for {name} ({str(e).splitlines()[0][:120]}); "
                          f"run once with internet to fill the cache, or pass --weights FILE") from None
    if args.weights:
        runstate.load_weights(model, runstate.weights_file(args.weights))
    return model


def features_and_logits(model, x):
    """g(x) [B, d] (pre-logits features, the input of the linear head W) and W g(x) [B, C] (Eq. 14)."""
    z = model.forward_head(model.forward_features(x), pre_logits=True)
    return z, model.get_classifier()(z)
