"""Numbers that several modules read, kept where none of them has to import another.

``backbones`` (the models) and ``imageio`` (the images) both need CLIP's normalisation; with it
here, loading a model does not import the image readers (OpenCV, Pillow), nor reading an image
the models.
"""

from __future__ import annotations

__all__ = ["CLIP_MEAN", "CLIP_STD"]

#: OpenAI CLIP's per-channel (R, G, B) mean and standard deviation, in [0, 1] units: the
#: images' normalisation when a model's preprocessing config names none.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
