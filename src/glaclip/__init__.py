"""glaclip: training-free open-vocabulary semantic segmentation with GLA-CLIP.

>>> seg = glaclip.Segmenter.from_pretrained()          # CLIP ViT-B/16 + DINO ViT-B/8
>>> result = seg.segment("photo.jpg", ["road", "car", "tree"])
>>> result.labels                                        # H x W class indices
"""

__version__ = "0.2.0"

from glaclip.config import Settings  # noqa: E402
from glaclip.segmenter import (  # noqa: E402
    USER_CACHE,
    ImageFeatures,
    Segmentation,
    SegmentationOutput,
    Segmenter,
)

__all__ = [
    "USER_CACHE",
    "ImageFeatures",
    "Segmenter",
    "Segmentation",
    "SegmentationOutput",
    "Settings",
    "__version__",
]
