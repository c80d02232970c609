"""Model names: how a name says where its weights are, and the identity of a run's models.

open_clip and timm take a model by name (``ViT-B-16``, ``vit_base_patch8_224.dino``), from the
Hugging Face hub (``hf-hub:ORG/REPO``) or from a local folder (``local-dir:DIR``). A name of
the last two kinds names its weights too: it takes no pretrained tag. Torch-free, for the
command line's ``--help`` as for the loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"


def is_hub(name: str) -> bool:
    """Whether ``name`` is a Hugging Face hub repository (``hf-hub:ORG/REPO``)."""
    return name.startswith(HUB)


def is_local_dir(name: str) -> bool:
    """Whether ``name`` is a local model folder (``local-dir:DIR``)."""
    return name.startswith(LOCAL_DIR)


def names_its_weights(name: str) -> bool:
    """Whether ``name`` says where its weights are (a hub repository or a local folder), so
    that it takes no pretrained tag."""
    return is_hub(name) or is_local_dir(name)


@dataclass(frozen=True)
class ModelInfo:
    """A model as named by the user: its name and its weights (a pretrained tag, a checkpoint
    file, or None)."""

    name: str
    pretrained: str | None = None


def model_identity(clip: ModelInfo, vfm: ModelInfo | None) -> dict[str, Any]:
    """The models of a run, for result files: ``{"clip", "clip_pretrained", "vfm",
    "vfm_checkpoint"}``; ``clip_pretrained`` is None for a CLIP name that names its weights,
    the VFM entries are None for a base method that uses no VFM (``vfm`` None)."""
    return {
        "clip": clip.name,
        "clip_pretrained": None if names_its_weights(clip.name) else clip.pretrained,
        "vfm": vfm.name if vfm else None,
        "vfm_checkpoint": vfm.pretrained if vfm else None,
    }
