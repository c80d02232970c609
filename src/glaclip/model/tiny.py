"""Tiny random-weight models: try glaclip, or test code that uses it, without downloading.

In the spirit of the tiny random checkpoints that model hubs keep for tests: a CLIP (open_clip's
``CLIP``: a 3-block, 64-wide ViT/16 image tower and a 2-block, 32-wide text tower with
open_clip's tokenizer) and a VFM (timm's ``vit_base_patch8_224`` at 64 wide and 2 blocks deep),
8 MB on disk together, made from a seed and written as the ``local-dir:`` folders that
``--clip`` and ``--vfm`` (``clip=`` and ``vfm=`` of ``Segmenter.from_pretrained``) read.
They run every code path at the paper's patch sizes in a second or two per image on a CPU,
and their labels mean nothing: the weights are random.

``glaclip tiny-models DIR`` writes them; from Python, ``write_tiny_models(DIR)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from glaclip.constants import CLIP_MEAN, CLIP_STD

__all__ = [
    "CLIP_CONFIG",
    "VFM_ARCHITECTURE",
    "VFM_ARGS",
    "TinyModels",
    "build_tiny_models",
    "write_local_dirs",
    "write_tiny_models",
]

# every architecture number of the tiny models (open_clip's model_cfg, timm's model_args)
CLIP_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 3, "width": 64, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    "quick_gelu": True,
}
VFM_ARCHITECTURE = "vit_base_patch8_224"
VFM_ARGS: dict = {"embed_dim": 64, "depth": 2, "num_heads": 4}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
VFM_FILES = ("config.json", "model.safetensors")


@dataclass(frozen=True)
class TinyModels:
    """Where ``write_tiny_models`` wrote the models, as the names ``--clip`` and ``--vfm`` take.

    Attributes:
        clip: ``local-dir:<root>/clip`` (open_clip's config and weights).
        vfm: ``local-dir:<root>/vfm`` (timm's config and weights).
    """

    clip: str
    vfm: str

    def flags(self) -> list[str]:
        """``["--clip", clip, "--vfm", vfm]``: the command-line flags that select them."""
        return ["--clip", self.clip, "--vfm", self.vfm]


def build_tiny_models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(clip_model, vfm_model)`` with random weights drawn from ``seed`` (eval mode, CPU,
    float32). The global random state is left as it was."""
    import open_clip
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = open_clip.model.CLIP(
            embed_dim=CLIP_CONFIG["embed_dim"],
            vision_cfg=CLIP_CONFIG["vision_cfg"],
            text_cfg=CLIP_CONFIG["text_cfg"],
            quick_gelu=CLIP_CONFIG["quick_gelu"],
        )
        vfm = timm.create_model(VFM_ARCHITECTURE, pretrained=False, num_classes=0, **VFM_ARGS)
    return clip.eval(), vfm.eval()


def write_local_dirs(
    root: str | os.PathLike,
    clip_state: Mapping[str, torch.Tensor],
    vfm_state: Mapping[str, torch.Tensor],
    overwrite: bool = False,
) -> TinyModels:
    """Write weights of the tiny architectures (``CLIP_CONFIG``, ``VFM_ARGS``) as the folders
    ``root/clip`` (``open_clip_config.json``, ``open_clip_model.safetensors``) and ``root/vfm``
    (timm's ``config.json``, ``model.safetensors``).

    Raises:
        FileExistsError: one of those files exists already and ``overwrite`` is False.
    """
    from safetensors.torch import save_file

    root = Path(root)
    clip_dir, vfm_dir = root / "clip", root / "vfm"
    targets = [clip_dir / f for f in CLIP_FILES] + [vfm_dir / f for f in VFM_FILES]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists already: choose an empty folder for the tiny models, or "
            "pass overwrite=True to replace them"
        )
    for folder in (clip_dir, vfm_dir):
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} is a file: choose another folder for the tiny models")
        folder.mkdir(parents=True, exist_ok=True)
    clip_cfg = {
        "model_cfg": CLIP_CONFIG,
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }
    (clip_dir / CLIP_FILES[0]).write_text(json.dumps(clip_cfg, indent=2) + "\n")
    save_file(_plain(clip_state), str(clip_dir / CLIP_FILES[1]))
    vfm_cfg = {
        "architecture": VFM_ARCHITECTURE,
        "num_classes": 0,
        "model_args": VFM_ARGS,
        "pretrained_cfg": {"mean": list(_IMAGENET_MEAN), "std": list(_IMAGENET_STD)},
    }
    (vfm_dir / VFM_FILES[0]).write_text(json.dumps(vfm_cfg, indent=2) + "\n")
    save_file(_plain(vfm_state), str(vfm_dir / VFM_FILES[1]))
    return TinyModels(f"local-dir:{clip_dir}", f"local-dir:{vfm_dir}")


def write_tiny_models(
    root: str | os.PathLike, seed: int = 0, overwrite: bool = False
) -> TinyModels:
    """Make the tiny random models from ``seed`` (``build_tiny_models``) and write them under
    ``root`` (``write_local_dirs``): the same seed gives the same weights with the same
    versions of PyTorch, open_clip and timm.

    >>> tiny = write_tiny_models("tiny")
    >>> seg = glaclip.Segmenter.from_pretrained(clip=tiny.clip, vfm=tiny.vfm)
    """
    clip, vfm = build_tiny_models(seed)
    return write_local_dirs(root, clip.state_dict(), vfm.state_dict(), overwrite)


def _plain(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors that share no memory (what safetensors stores)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}
