"""A cheap identity of model weights: which image towers made a set of image features.

``weights_fingerprint`` hashes, for every parameter and buffer of the given modules, its name,
dtype and shape and an even sample of its values (at most ``SAMPLES`` of them, read exactly:
no sum whose rounding could depend on the device or the thread count). Two checkpoints of one
architecture differ in nearly every value, so their samples differ; reading a few thousand
values per tensor costs milliseconds where hashing every weight would take a second (on a GPU,
one read-back of those samples per Segmenter; on the ``meta`` device, shapes only). It
identifies weights; it does not authenticate them (weights changed in place after it was
taken, or made to match on the sample, are not noticed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

SAMPLES = 4096  # values read per tensor


def _sample(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0 or flat.is_meta:  # meta tensors hold no values: shapes only
        return b""
    step = max(1, flat.numel() // SAMPLES)
    values = flat[::step][:SAMPLES].to("cpu", torch.float64)  # every dtype's values, exactly
    return values.contiguous().numpy().tobytes()


def weights_fingerprint(modules: Iterable[tuple[str, torch.nn.Module]], extra: str = "") -> str:
    """A hex digest of ``(name, module)`` pairs' weights (see the module's description) and of
    ``extra`` (settings that act like weights, such as an input normalisation)."""
    h = hashlib.sha256()
    for prefix, module in modules:
        h.update(f"{prefix}: {type(module).__module__}.{type(module).__qualname__}\0".encode())
        named = list(module.named_parameters()) + list(module.named_buffers())
        for name, tensor in sorted(named, key=lambda item: item[0]):
            h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\0".encode())
            h.update(_sample(tensor))
    h.update(extra.encode("utf-8", "surrogatepass"))
    return h.hexdigest()
