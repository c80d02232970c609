"""Base methods: the training-free methods GLA is equipped on, one file each.

* ``proxyclip`` (the paper's default): keys from a VFM (DINO), values from CLIP (SPEC 3-7, 10);
* ``clearclip``: CLIP's own queries as keys, no VFM (SPEC 12);
* ``maskclip``: CLIP's values alone, per window only;
* ``sclip``: SCLIP's correlative self-attention, residual and MLP kept (SPEC 13);
* ``naclip``: NACLIP's key-key attention with a neighbourhood Gaussian (SPEC 14).

``base.py`` is the seam (what a base says; see its docstring), ``ops.py`` the tensors and the
operations the bases share. A further base is one file here: a subclass of ``BaseMethod``
decorated with ``glaclip.registry.register_base``, imported below. Importing the bases imports
no PyTorch (``ops`` is imported where a base computes): the command line reads their names and
settings for its flags and ``--help`` without it. This package may import the towers, the
attention, the settings and the registry; it imports no I/O, evaluation, demo or command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from glaclip.config import Settings
from glaclip.model.bases.base import BaseMethod
from glaclip.registry import REGISTRY, base_class

# The import order is the registration order: the menus and --base list the bases in it.
from glaclip.model.bases import proxyclip  # noqa: F401  # isort: skip
from glaclip.model.bases import clearclip  # noqa: F401  # isort: skip
from glaclip.model.bases import sclip  # noqa: F401  # isort: skip
from glaclip.model.bases import naclip  # noqa: F401  # isort: skip
from glaclip.model.bases import maskclip  # noqa: F401  # isort: skip

if TYPE_CHECKING:
    import torch

    from glaclip.model.towers import ClipTower, VFMKeyTower


def make_base(
    settings: Settings,
    clip: ClipTower,
    vfm: VFMKeyTower | None,
    clip_normalisation: tuple[torch.Tensor, torch.Tensor],
    clip_fp32: ClipTower | None = None,
) -> BaseMethod:
    """The base method of ``settings.gla.base`` over the given towers (see ``BaseMethod``).

    Raises:
        ValueError: an unknown name, or a base that needs a VFM without one.
    """
    return base_class(settings.gla.base)(clip, vfm, clip_normalisation, settings, clip_fp32)


def method_choices(default: str = "proxyclip") -> dict[str, dict[str, Any]]:
    """The methods a person can choose (the demo's menu): for each registered base, GLA on it
    (where it has attention to extend) and the base alone per window, by label -> flat
    settings. ``"GLA-CLIP"`` is GLA on the ``default`` base; a base without a VFM is marked
    "(no VFM)"."""
    choices: dict[str, dict[str, Any]] = {}
    for name, cls in REGISTRY.items():
        mark = "" if cls.needs_vfm else " (no VFM)"
        if cls.attention_spaces:
            gla = "GLA-CLIP" if name == default else f"GLA-CLIP on {cls.title}{mark}"
            choices[gla] = {"base": name, "kv_extension": True}
        choices[f"{cls.title} per window{mark}"] = {"base": name, "kv_extension": False}
    return choices
