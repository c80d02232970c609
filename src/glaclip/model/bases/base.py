"""The seam between a base method and GLA: what a base says, and what the Segmenter does.

A base method owns the last block of CLIP's image tower, the way timm keeps a block whole and
swaps its attention (``x = x + ls_1(attn(ln_1(x)))``). Per window it says:

* ``features``: what it reads of each window (CLIP's last-block queries, keys, values and
  residual stream, a VFM's tokens, ...), as named tensors (``WindowFeatures``);
* ``window_attention``: its own attention inside each window (the base method as its authors
  run it, "KV extension off");
* ``similarity_spaces``: for GLA, the similarity spaces in which the global attention runs
  (token features, initial proxies, an optional additive bias; ``SimilaritySpace``), whose
  outputs are summed as the base sums its attention maps; the values are ``features["v"]``;
* ``finish``: what follows the attention: the output projection alone, or the output
  projection, the residual and the MLP.

The ``Segmenter`` makes the one call into the global attention
(``attention.global_attention``), which alone handles precision, blocking and progress; then
CLIP's ``ln_post`` and projection, the logits and the labels are shared by every base.
A base's own settings are a frozen dataclass (``settings_class``) registered with it: the
flags, the result files, the evaluation presets and the demo read them from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from glaclip.config import Settings
from glaclip.registry import REGISTRY

if TYPE_CHECKING:  # the tensors' side (``ops``) is imported where a base computes
    import torch

    from glaclip.model.bases.ops import SimilaritySpace, WindowFeatures
    from glaclip.model.device import StageTimer
    from glaclip.model.towers import ClipTower, VFMKeyTower
    from glaclip.model.windows import Window


@dataclass(frozen=True)
class Published:
    """A base method's published mIoU (ViT-B/16), for the evaluation table and the README.

    Attributes:
        source: where the numbers come from.
        miou: ``{preset: mIoU %}`` for the benchmarks published one by one (may be empty).
        average: the published average over the eight benchmarks, or None.
    """

    source: str
    miou: dict[str, float]
    average: float | None


class BaseMethod:
    """A base method (see the module docstring). Subclasses set the class attributes and
    implement ``features``, ``window_attention`` and, where GLA can run on them,
    ``similarity_spaces``; ``register_base`` lists them by ``name``."""

    name: ClassVar[str] = ""  # the ``base`` setting that selects it
    title: ClassVar[str] = ""  # its name for people: "ProxyCLIP"
    needs_vfm: ClassVar[bool] = False  # whether it takes a vision foundation model
    settings_class: ClassVar[type | None] = None  # its own settings (a frozen dataclass)
    # GLA's global attention runs in this many similarity spaces (0: per window only)
    attention_spaces: ClassVar[int] = 1
    # windows as the authors' sliding-window inference cuts them: an image side under the
    # crop gives a smaller window, a side that is no multiple of the patch loses its last
    # pixels, the position embedding is resampled by scale factor, and the whole image may
    # go in one pass; False: glaclip's canvas (SPEC 2, every window a full crop)
    native_windows: ClassVar[bool] = False
    # published results by ``kv_extension`` (False: the base per window; True: with GLA)
    published: ClassVar[dict[bool, Published]] = {}

    def __init__(
        self,
        clip: ClipTower,
        vfm: VFMKeyTower | None,
        clip_normalisation: tuple[torch.Tensor, torch.Tensor],
        settings: Settings,
        clip_fp32: ClipTower | None = None,
    ) -> None:
        """
        Args:
            clip: CLIP's image tower for the windows' features (cast to the fast mode's
                precision, if any).
            vfm: the VFM tower, for bases that need one.
            clip_normalisation: ``(mean, std)``, ``1 x 3 x 1 x 1`` on the device: how the crops
                were normalised (a VFM undoes it for its own).
            settings: the Segmenter's settings (``settings.method``: this base's own).
            clip_fp32: CLIP's image tower in float32, for ``finish`` (default ``clip``).
        """
        if self.needs_vfm and vfm is None:
            raise ValueError(
                f"base {self.name!r} takes its keys from a vision foundation model, but none "
                "was given: pass a VFM, or use a base that needs none: "
                + " or ".join(f"base={n!r}" for n, c in REGISTRY.items() if not c.needs_vfm)
            )
        self.clip, self.vfm = clip, vfm
        self.clip_fp32 = clip_fp32 or clip
        self.clip_normalisation = clip_normalisation
        self.settings = settings

    # ------------------------------------------------------------------------ settings
    @classmethod
    def check_settings(cls, settings: Settings) -> None:
        """Raise ValueError for settings this base cannot run (called by ``Settings``)."""
        if settings.gla.kv_extension and cls.attention_spaces == 0:
            raise ValueError(
                f"base={cls.name!r} ({cls.title}) has no attention for GLA to extend across "
                "windows: run it per window with kv_extension=False"
            )
        if settings.window.whole_image and not cls.native_windows:
            native = [n for n, c in REGISTRY.items() if c.native_windows]
            raise ValueError(
                "whole_image=True is for the base methods that run the image as their authors' "
                f"code does ({' or '.join(f'base={n!r}' for n in native)}), not base={cls.name!r}"
            )

    @classmethod
    def protocol(cls, dataset: str) -> dict[str, Any]:
        """The flat settings of this base's own evaluation protocol on a benchmark preset,
        where they differ from the preset's (``evaluation.tasks.preset_settings``)."""
        return {}

    def patch_sizes(self) -> dict[str, int]:
        """The patch size of each backbone this base runs, by a name for messages."""
        sizes = {"the CLIP patch": self.clip.patch_size[0]}
        if self.vfm is not None and self.needs_vfm:
            sizes["the VFM patch"] = self.vfm.patch_size[0]
        return sizes

    def check_crop(self, crop: int) -> None:
        """Raise ValueError unless the window side ``crop`` is a multiple of every patch size
        (the token grids must cover the window exactly). Bases with native windows take any
        crop, as their authors' code does."""
        if self.native_windows:
            return
        sizes = self.patch_sizes()
        bad = {what: p for what, p in sizes.items() if crop % p}
        if bad:
            step = math.lcm(*sizes.values())
            parts = " and ".join(f"{p} ({what})" for what, p in sizes.items())
            raise ValueError(
                f"crop {crop} must be a multiple of {parts}: e.g. {step * max(1, crop // step)}"
                f" or {step * (crop // step + 1)} (the paper's is 224)"
            )

    # ------------------------------------------------------------------------ per window
    def features(
        self, crops: torch.Tensor, settings: Settings, timer: StageTimer
    ) -> WindowFeatures:
        """Features of a batch of windows (``B x 3 x h x w`` CLIP-normalised float32 crops), in
        the backbones' dtype; ``parts["v"]`` always (see ``WindowFeatures``)."""
        raise NotImplementedError

    def window_attention(self, feats: WindowFeatures) -> torch.Tensor:
        """The base method's own attention inside each window: ``L x S x D`` float32 (before
        the output projection), patch tokens only."""
        raise NotImplementedError

    def similarity_spaces(
        self, feats: WindowFeatures, windows: Sequence[Window]
    ) -> list[SimilaritySpace]:
        """The spaces in which GLA's global attention runs (``attention_spaces`` of them)."""
        raise NotImplementedError

    def finish(self, attended: torch.Tensor, feats: WindowFeatures) -> torch.Tensor:
        """What follows the attention: ``L x S x D`` attention output -> the last block's
        output of each patch token. By default the output projection alone (no residual, no
        MLP). It runs in float32 (``clip_fp32``)."""
        return self.clip_fp32.out_proj(attended)

    def window_features(
        self,
        x: torch.Tensor,
        windows: Sequence[Window],
        settings: Settings,
        timer: StageTimer,
        progress: Any = None,
    ) -> WindowFeatures:
        """Run ``features`` over the windows of ``x`` (``1 x 3 x H x W``),
        ``settings.runtime.window_batch`` at a time; float32 results. ``progress("windows",
        done, L)`` after each batch."""
        import torch

        from glaclip.model.bases.ops import WindowFeatures

        batch = settings.runtime.window_batch
        parts = []
        for start in range(0, len(windows), batch):
            crops = torch.cat(
                [x[:, :, w.y1 : w.y2, w.x1 : w.x2] for w in windows[start : start + batch]]
            )
            parts.append(self.features(crops, settings, timer))
            if progress is not None:
                progress("windows", min(len(windows), start + batch), len(windows))
        return WindowFeatures.cat(parts)
