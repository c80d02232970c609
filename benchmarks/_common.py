"""Shared pieces of the benchmark scripts: real-size backbones with random weights, a test image.

Real pretrained weights cannot be downloaded on the benchmark machines, so the backbones have
the paper's architectures (CLIP ViT-B/16 with quick GELU, DINO ViT-B/8) and seeded random
weights: the FLOPs and memory are those of the real models; the mask densities are not (see
BENCHMARKS.md).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from glaclip.constants import CLIP_MEAN, CLIP_STD


def build_models(seed: int = 0, with_vfm: bool = True):
    """``(clip, vfm, tokenizer)``: ViT-B-16 (quick GELU) and DINO ViT-B/8, random weights
    (``vfm`` is None when ``with_vfm`` is false)."""
    import open_clip
    import timm

    torch.manual_seed(seed)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    vfm = None
    if with_vfm:
        vfm = timm.create_model(
            "vit_base_patch8_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True
        ).eval()
    return clip, vfm, open_clip.get_tokenizer("ViT-B-16")


def build_tiny_models(with_vfm: bool = True):
    """``(clip, vfm, tokenizer)``: the tests' tiny random models (``tests/golden/models.pt``:
    width 64, a few blocks), for quick runs of the benchmarks' code paths, not for figures."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from tests.golden import COMPACT_DIR, build_golden_modules

    clip, vfm, tok = build_golden_modules(torch.load(COMPACT_DIR / "models.pt", weights_only=True))
    return clip, (vfm if with_vfm else None), tok


def synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A deterministic ``1 x 3 x H x W`` CLIP-normalised image with regions, edges and texture.

    A vertical colour gradient ("sky"), a few dozen filled ellipses and rectangles of random
    colours, and mild noise: enough structure that token similarities are not those of noise.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (yy / max(1, height - 1))[..., None]
    img = top * (1 - t) + bottom * t
    for _ in range(40):
        colour = rng.uniform(0, 255, 3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.03, 0.25) * height, rng.uniform(0.03, 0.25) * width
        if rng.uniform() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        else:
            inside = (abs(yy - cy) < ry) & (abs(xx - cx) < rx)
        stripes = 1 + 0.15 * np.sin(xx * rng.uniform(0.05, 0.5) + yy * rng.uniform(0.05, 0.5))
        img = np.where(inside[..., None], colour * stripes[..., None], img)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def class_lines(name: str) -> list[str]:
    """The lines of a packaged class file (``cityscapes``, ``voc21``, ``coco_stuff164k``...)."""
    from glaclip.text.vocabulary import read_class_file

    here = os.path.dirname(os.path.abspath(__file__))
    return read_class_file(
        os.path.join(here, "..", "src", "glaclip", "data", "classes", f"{name}.txt")
    )


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
