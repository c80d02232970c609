"""Numbers and names that several modules read, kept where none of them has to import another.

The models (``model.loading``) and the images (``images.prepare``) both need CLIP's
normalisation; with it here, loading a model does not import the image readers (OpenCV,
Pillow), nor reading an image the models. The default models' names serve the loading and the
command line's ``--help``, which imports no PyTorch.
"""

from __future__ import annotations

__all__ = ["CLIP_MEAN", "CLIP_STD", "DEFAULT_CLIP", "DEFAULT_CLIP_PRETRAINED", "DEFAULT_VFM"]

#: OpenAI CLIP's per-channel (R, G, B) mean and standard deviation, in [0, 1] units: the
#: images' normalisation when a model's preprocessing config names none.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: The paper's models: CLIP ViT-B/16 with OpenAI's weights (open_clip's name and tag) and DINO
#: ViT-B/8 (timm's name with its tag).
DEFAULT_CLIP = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_VFM = "vit_base_patch8_224.dino"
