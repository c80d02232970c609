"""Weight files against the configurations they are loaded into.

timm and open_clip resample a checkpoint's patch or position embedding to the shape a
configuration asks for, without a word; ``config_mismatch`` compares the shapes of a weight
file with those of the model built from its configuration, so that a disagreement is refused
instead (``loading.load_clip`` / ``load_vfm`` for local folders and checkpoint files).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

# the weight file a local folder is read from, in the loaders' order of preference
CLIP_PREFERRED = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
VFM_PREFERRED = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
_WRAPPERS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.")


def weights_in(folder: str, preferred: tuple[str, ...]) -> str | None:
    """The weight file the loaders read from ``folder`` (None if there is none)."""
    if not os.path.isdir(folder):
        return None
    for name in preferred:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    for ext in (".safetensors", ".pth", ".bin"):
        found = sorted(f for f in os.listdir(folder) if f.endswith(ext))
        if found:
            return os.path.join(folder, found[0])
    return None


def checkpoint_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the tensors in a weight file, read without loading them where the
    format allows (safetensors); empty for a file that is not a plain state dict (TorchScript
    archives, numpy weights)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an old (non-zip) file, or no state dict at all
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            return {}
    while isinstance(obj, dict) and len(obj) <= 4 and any(k in obj for k in _WRAPPERS):
        obj = next(obj[k] for k in _WRAPPERS if k in obj)
    if not isinstance(obj, dict):
        return {}
    shapes = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            shapes[key] = tuple(value.shape)
    return shapes


def config_mismatch(
    model: nn.Module,
    weights: str | os.PathLike | None,
    what: str,
    skip: tuple[str, ...] = (),
) -> str | None:
    """Why a model's configuration disagrees with its weight file, or None when it does not.

    The loaders resample some weights to the configured shape without a word (timm the patch
    embedding and the position embedding, open_clip the position embedding), so that a config
    naming patch 16 for patch-8 weights would run with a different model. Every tensor of the
    weight file that the model has under the same name must have the model's shape.

    Args:
        model: the model as built from the configuration (weights loaded).
        weights: the weight file it was loaded from (None: nothing to compare).
        what: the model and its config, for the message.
        skip: tensor names resized on purpose.

    Returns:
        A message naming the first tensor that differs, with both shapes.
    """
    if weights is None:
        return None
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = checkpoint_shapes(weights)
    differ = [
        (k, own[k], shape)
        for k, shape in stored.items()
        if k in own and own[k] != shape and k not in skip
    ]
    if not differ:
        return None
    key, configured, found = differ[0]
    hint = ""
    if len(configured) == 4 and key.endswith(("patch_embed.proj.weight", "conv1.weight")):
        hint = f" (patch size {configured[-1]} in the config, {found[-1]} in the weights)"
    more = f", and {len(differ) - 1} more tensor(s)" if len(differ) > 1 else ""
    return (
        f"the {what} does not fit its weights {weights}: {key} is {list(configured)} in the "
        f"configured model but {list(found)} in the weights{hint}{more}. glaclip does not "
        "resample weights to another shape: make the config match the weights"
    )


def misfit_summary(model: nn.Module, weights: str | os.PathLike) -> str | None:
    """How a weight file fails to fit ``model``'s architecture: the count of its tensors of
    another shape, of the model's tensors it lacks and of its tensors the model does not
    have, three names of each; None when the names and shapes all fit, or when the file
    cannot be read as a state dict (TorchScript archives)."""
    stored = checkpoint_shapes(weights)
    if not stored:
        return None
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    groups = (
        ([k for k in stored if k in own and own[k] != stored[k]], "of another shape"),
        ([k for k in own if k not in stored], "missing"),
        ([k for k in stored if k not in own], "unexpected"),
    )
    parts = []
    for names, what in groups:
        if names:
            examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} weights {what} (e.g. {examples})")
    return "; ".join(parts) or None
