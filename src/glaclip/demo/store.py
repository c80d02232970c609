"""The image features a demo page keeps (``FeatureStore``): the last photo's, per method, so
that new classes or another threshold on it run only the text and the final product."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from glaclip.config import Settings
from glaclip.model.results import ImageFeatures


def feature_key(settings: Settings) -> Hashable:
    """What makes an image's features (``Segmenter.encode_image``): every setting but the
    post-processing (``Settings.feature_parts``). Requests that differ only in
    post-processing (the threshold) share them."""
    return tuple(settings.feature_parts().items())


class FeatureStore:
    """The class-independent features of the last image a page segmented, one entry per
    ``feature_key`` (so at most one per method of the page): a new vocabulary or threshold on
    the same photo runs only the text and the final product. A new image drops the others.

    Holds ``nbytes`` of memory (``ImageFeatures.nbytes`` summed): 11.4 MB per method with a
    VFM for a 500 x 375 photo (network input 448 x 336), 4.2 MB without. One store serves one
    loaded Segmenter (features of other weights would be refused by it:
    ``ImageFeatures.weights``).
    """

    def __init__(self) -> None:
        self._image: str | None = None
        self._features: dict[Hashable, ImageFeatures] = {}
        self._lock = threading.Lock()

    def get(self, image: str, key: Hashable) -> ImageFeatures | None:
        """The features kept for ``key`` of the image whose digest is ``image``, or None."""
        with self._lock:
            return self._features.get(key) if image == self._image else None

    def put(self, image: str, key: Hashable, features: ImageFeatures) -> None:
        """Keep ``features`` for ``key`` of ``image``; another image's are dropped."""
        with self._lock:
            if image != self._image:
                self._image, self._features = image, {}
            self._features[key] = features

    @property
    def nbytes(self) -> int:
        """Memory held by the kept features, in bytes."""
        with self._lock:
            return sum(f.nbytes for f in self._features.values())
