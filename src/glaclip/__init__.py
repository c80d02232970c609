"""glaclip: training-free open-vocabulary semantic segmentation with GLA-CLIP.

>>> seg = glaclip.Segmenter.from_pretrained()          # CLIP ViT-B/16 + DINO ViT-B/8
>>> result = seg.segment("photo.jpg", ["road", "car", "tree"])
>>> result.labels                                        # H x W class indices

How the code is laid out (each subpackage's docstring says what it holds and what it may
import; the arrows point down, and nothing imports the command line):

* ``config``, ``registry``, ``constants``: the settings, the registry of base methods and the
  shared numbers; they import nothing of glaclip but each other.
* ``images``: reading an image and preparing it for the network.
* ``text``: the vocabulary, CLIP's text tower, the encoder and its cache.
* ``model``: the towers and their loading, windows, the global attention and its kernels, the
  base methods (``model/bases``), post-processing, the ``Segmenter``.
* ``io``: atomic writes, output folders, label PNGs, overlays, the batch of ``segment``.
* ``data``: benchmark layouts, presets and converters (``glaclip prepare``).
* ``evaluation``: metrics, the evaluation loop and its state, reports, Table 1, checks.
* ``demo``: the browser demo; ``cli``: the command line.

The public API is imported on first use: ``import glaclip`` loads neither PyTorch's models
nor Pillow or OpenCV.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> the module that defines it
_PUBLIC = {
    "Segmenter": "glaclip.model.segmenter",
    "ImageFeatures": "glaclip.model.results",
    "Segmentation": "glaclip.model.results",
    "SegmentationOutput": "glaclip.model.results",
    "Settings": "glaclip.config",
    "USER_CACHE": "glaclip.text.encoder",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'glaclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
