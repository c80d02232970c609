"""CLIP (open_clip) and the vision foundation model (timm): loading them by name or from local
files, with clear errors offline or for weights of another architecture.

The feature maps read from the loaded models are ``glaclip.model.towers``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import torch
import torch.nn as nn

from glaclip.constants import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_CLIP,
    DEFAULT_CLIP_PRETRAINED,
    DEFAULT_VFM,
)
from glaclip.model import hub
from glaclip.model.checkpoints import (
    CLIP_PREFERRED,
    VFM_PREFERRED,
    config_mismatch,
    misfit_summary,
    weights_in,
)
from glaclip.model.names import LOCAL_DIR, is_hub, is_local_dir, names_its_weights
from glaclip.model.sources import (
    CLIP_CONFIG_FILE,
    check_clip_source,
    check_vfm_source,
    offline_hint,
)
from glaclip.model.towers import (
    ModelLoadError,
)

# ---------------------------------------------------------------------------------------------
# Loading


def load_clip(
    name: str = DEFAULT_CLIP,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
):
    """Build an open_clip model and its tokenizer.

    Args:
        name: an open_clip model name (``ViT-B-16``), ``hf-hub:ORG/REPO`` or ``local-dir:DIR``.
        pretrained: an open_clip tag (``openai``, ``laion2b_s32b_b79k``, ...), a local
            checkpoint file, or None (required None for ``hf-hub:``/``local-dir:`` names).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode on ``device`` (its images'
        normalisation: ``clip_normalisation(model)``).
    """
    import open_clip

    is_path_name = names_its_weights(name)
    if is_path_name:
        pretrained = None
    check_clip_source(name, pretrained)
    quick_gelu = pretrained == "openai" or "quickgelu" in name.lower()
    try:
        model = open_clip.create_model(
            name,
            pretrained=pretrained,
            device=device,
            force_quick_gelu=quick_gelu and not is_path_name,
            cache_dir=cache_dir,
        )
    except ModelLoadError:
        raise
    except Exception as err:  # download, cache and file errors come in many types
        local = pretrained if pretrained and os.path.exists(pretrained) else None
        if local or is_local_dir(name):
            weights = local or weights_in(name.removeprefix(LOCAL_DIR), CLIP_PREFERRED)
            summary = _clip_misfit(open_clip, name, weights, quick_gelu and not is_path_name)
            raise _misfit("CLIP", local or name, name, "clip", err, summary) from None
        raise offline_hint("clip", name, pretrained, err) from err
    _check_clip_fits(model, name, pretrained)
    return model.eval(), _tokenizer(name)


def clip_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel (R, G, B) in [0, 1] units that images are normalised with
    for this CLIP: its preprocessing config (open_clip's ``visual.preprocess_cfg``, or
    ``image_mean``/``image_std``), else OpenAI CLIP's."""
    visual = getattr(model, "visual", model)
    pp = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(pp.get("mean", getattr(visual, "image_mean", None) or CLIP_MEAN))
    std = tuple(pp.get("std", getattr(visual, "image_std", None) or CLIP_STD))
    return tuple(map(float, mean)), tuple(map(float, std))


def load_tokenizer(name: str = DEFAULT_CLIP) -> Callable | None:
    """The tokenizer of the CLIP ``name`` when it can be had without the network and without
    the weights (an open_clip model name or ``local-dir:``), else None (``hf-hub:`` names,
    unknown names, a folder without a readable config)."""
    import open_clip

    if is_hub(name):
        return None
    if not is_local_dir(name) and name not in open_clip.list_models():
        return None
    try:
        return _tokenizer(name)
    except Exception:  # noqa: BLE001 - the loader reports a bad model itself, later
        return None


def _tokenizer(name: str) -> Callable:
    """``open_clip.get_tokenizer(name)``, made once per name (and per version of a local
    folder's config) in a process: reading its vocabulary takes a tenth of a second, and the
    command line asks for it twice (the class check, the model)."""
    stamp: tuple[int, ...] = ()
    if is_local_dir(name):
        config = os.path.join(name.removeprefix(LOCAL_DIR), CLIP_CONFIG_FILE)
        info = os.stat(config)
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
    return _cached_tokenizer(name, stamp)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(name: str, stamp: tuple[int, ...]) -> Callable:
    import open_clip

    return open_clip.get_tokenizer(name)


def load_vfm(
    name: str = DEFAULT_VFM,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build a timm ViT with pretrained weights for 224-pixel windows.

    Args:
        name: a timm model name with tag (``vit_base_patch8_224.dino``,
            ``vit_base_patch14_reg4_dinov2.lvd142m``) or ``local-dir:DIR`` / ``hf-hub:...``.
        checkpoint: a local weight file for the architecture ``name`` (instead of the hub).
    """
    import timm

    check_vfm_source(name, checkpoint)
    kwargs: dict = {"num_classes": 0, "dynamic_img_size": True}
    if checkpoint is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": os.fspath(checkpoint)}
    resized: tuple[str, ...] = ()  # resampled on purpose (the 224-pixel window)
    try:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except TypeError:
            kwargs.pop("dynamic_img_size")  # a model family without dynamic sizes
            model = timm.create_model(name, pretrained=True, img_size=224, **kwargs)
            resized = ("pos_embed",)
    except Exception as err:  # download, cache and file errors come in many types
        if checkpoint or is_local_dir(name):
            raise _misfit("VFM", checkpoint or name, name.split(".")[0], "vfm", err) from None
        raise offline_hint("vfm", name, checkpoint, err) from err
    if checkpoint is not None:
        _check_fits(model, checkpoint, f"VFM architecture {name.split('.')[0]}", resized)
    elif is_local_dir(name):
        weights = weights_in(name.removeprefix(LOCAL_DIR), VFM_PREFERRED)
        _check_fits(model, weights, f"VFM {name} (config.json)", resized)
    return model.to(device).eval()


def _check_clip_fits(model: nn.Module, name: str, pretrained: str | None) -> None:
    """``_check_fits`` for a CLIP from a local folder or a local checkpoint file."""
    if is_local_dir(name):
        weights = weights_in(name.removeprefix(LOCAL_DIR), CLIP_PREFERRED)
        _check_fits(model, weights, f"CLIP {name} (open_clip_config.json)")
    elif pretrained and os.path.isfile(pretrained):
        _check_fits(model, pretrained, f"CLIP architecture {name}")


def _check_fits(
    model: nn.Module, weights: str | None, what: str, skip: tuple[str, ...] = ()
) -> None:
    """ModelLoadError when ``model``'s configuration disagrees with its weight file
    (``checkpoints.config_mismatch``)."""
    problem = config_mismatch(model, weights, what, skip)
    if problem:
        raise ModelLoadError(problem)


def _misfit(
    kind: str, weights: str, arch: str, keyword: str, err: Exception, summary: str | None = None
) -> ModelLoadError:
    """The error for local weights that do not fit the architecture they were loaded into:
    ``summary`` (``checkpoints.misfit_summary``), else PyTorch's own account in short."""
    reason = summary or hub.summarise_load_error(str(err)) or _first_line(err)
    return ModelLoadError(
        f"the weights {weights} do not fit the {kind} architecture {arch}: {reason}. Is it a "
        f"checkpoint of another model? Pass the matching {keyword}="
    )


def _clip_misfit(open_clip, name: str, weights: str | None, quick_gelu: bool) -> str | None:
    """``misfit_summary`` of CLIP weights against the architecture ``name`` (built without
    weights), or None where that cannot be told."""
    if weights is None:
        return None
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns that the model is random: it is meant to
    try:
        model = open_clip.create_model(
            name, pretrained=None, load_weights=False, force_quick_gelu=quick_gelu
        )
        return misfit_summary(model, weights)
    except Exception:  # noqa: BLE001 - the loader's own message is the fallback
        return None
    finally:
        logging.disable(previous)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0][:300].rstrip(".!") if text else "") or type(err).__name__
