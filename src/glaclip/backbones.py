"""CLIP (open_clip) and the vision foundation model (timm): loading and the two feature maps.

Nothing here patches open_clip or timm: ``ClipTower`` runs the CLIP image tower's own
modules up to the last block and reads that block's weights to compute its queries and values
and the output projection (SPEC 4, 7, 12); ``VFMKeyTower`` calls timm's ``forward_features``
(SPEC 3).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from glaclip import hub
from glaclip.checkpoints import CLIP_PREFERRED, VFM_PREFERRED, config_mismatch, weights_in
from glaclip.constants import CLIP_MEAN, CLIP_STD

# OpenAI CLIP's normalisation, defined once in constants (read by imageio too)
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = CLIP_MEAN, CLIP_STD
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_VFM_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")

DEFAULT_CLIP = "ViT-B-16"
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_VFM = "vit_base_patch8_224.dino"


class ModelLoadError(RuntimeError):
    """A backbone could not be built or its weights could not be obtained."""


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a loaded backbone (recorded in result files and the text cache key)."""

    name: str
    pretrained: str | None


# ---------------------------------------------------------------------------------------------
# CLIP image tower


class ClipTower(nn.Module):
    """CLIP ViT image tower read at its last block: queries and values (SPEC 4, 12) and the
    output projection (SPEC 7).

    Wraps an open_clip ``VisionTransformer`` (``model.visual``) without changing it.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer")
        missing = [name for name in needed if not hasattr(visual, name)]
        if missing or not hasattr(visual.transformer, "resblocks"):
            raise ModelLoadError(
                f"the CLIP image tower {type(visual).__name__} is not an open_clip ViT "
                f"(missing {', '.join(missing) or 'transformer.resblocks'}); use a ViT CLIP "
                "such as ViT-B-16, ViT-L-14 or ViT-H-14"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ModelLoadError("CLIP towers with attention pooling (CoCa) are not supported")
        last = visual.transformer.resblocks[-1]
        if not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
            raise ModelLoadError(
                "the last block of the CLIP image tower has no nn.MultiheadAttention; "
                "custom attention blocks are not supported"
            )
        self.visual = visual
        self.last = last
        self.width = visual.conv1.out_channels
        self.heads = last.attn.num_heads
        self.head_dim = self.width // self.heads
        self.patch_size = _pair(visual.conv1.kernel_size)
        self.grid_size = _pair(getattr(visual, "grid_size", None) or self._pos_grid())

    def _pos_grid(self) -> tuple[int, int]:
        side = int(math.isqrt(self.visual.positional_embedding.shape[0] - 1))
        return (side, side)

    def _positional(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.visual.positional_embedding
        if (gh, gw) == tuple(self.grid_size):
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        ph, pw = self.grid_size
        patch_pos = patch_pos.reshape(1, ph, pw, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def last_block_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The last block's normalised input ``ln_1(tokens)``, class token first.

        Args:
            x: ``B x 3 x h x w`` CLIP-normalised crops.

        Returns:
            ``(B x (1 + gh*gw) x D tokens, (gh, gw) patch grid)``.
        """
        v = self.visual
        t = v.conv1(x.to(v.conv1.weight.dtype))
        b, d, gh, gw = t.shape
        t = t.reshape(b, d, gh * gw).permute(0, 2, 1)
        cls = v.class_embedding.to(t.dtype).expand(b, 1, d)
        t = torch.cat([cls, t], dim=1) + self._positional(gh, gw).to(t.dtype)
        t = v.patch_dropout(t)
        t = v.ln_pre(t)
        transformer = v.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            t = t.transpose(0, 1)
        for block in transformer.resblocks[:-1]:
            t = block(t)
        if not batch_first:
            t = t.transpose(0, 1)
        return self.last.ln_1(t), (gh, gw)

    def projection(self, y: torch.Tensor, part: str) -> torch.Tensor:
        """One third of the last block's input projection: ``part`` = ``q``, ``k`` or ``v``.

        Args:
            y: ``... x D`` output of ``last_block_input``.

        Returns:
            ``... x D`` (heads side by side, ``d_h`` numbers each).
        """
        index = "qkv".index(part)
        attn = self.last.attn
        rows = slice(index * self.width, (index + 1) * self.width)
        bias = attn.in_proj_bias[rows] if attn.in_proj_bias is not None else None
        return F.linear(y, attn.in_proj_weight[rows], bias)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """Values of the last block's patch tokens (SPEC 4).

        Args:
            x: ``B x 3 x h x w`` CLIP-normalised crops.

        Returns:
            ``B x D x gh x gw`` value maps (``D = heads * d_h``, heads in channel order).
        """
        y, (gh, gw) = self.last_block_input(x)
        val = self.projection(y[:, 1:], "v")
        return val.permute(0, 2, 1).reshape(val.shape[0], self.width, gh, gw)

    def project(self, o: torch.Tensor) -> torch.Tensor:
        """``... x D`` attention output -> ``... x E`` embeddings: out_proj, ln_post, proj."""
        o = self.last.attn.out_proj(o)
        o = self.visual.ln_post(o)
        proj = self.visual.proj
        return o @ proj if proj is not None else o


# ---------------------------------------------------------------------------------------------
# VFM


class VFMKeyTower(nn.Module):
    """A timm ViT read as keys (SPEC 3): last block tokens after the final norm, patches only."""

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        """Wrap ``model`` without changing it (see ``keys`` for the one attribute a call
        overrides while it runs)."""
        super().__init__()
        if not hasattr(model, "forward_features") or not hasattr(model, "patch_embed"):
            raise ModelLoadError(
                f"the VFM {type(model).__name__} is not a timm ViT with a patch grid "
                "(forward_features and patch_embed are needed)"
            )
        self.model = model
        self._attention_modules = [m for m in model.modules() if hasattr(m, "fused_attn")]
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.patch_size = _pair(model.patch_embed.patch_size)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        # made where the model is; as buffers they move with the tower (``tower.to(device)``)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        for name, value in (("mean", cfg.get("mean", mean)), ("std", cfg.get("std", std))):
            buffer = torch.tensor(value, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self.register_buffer(name, buffer, persistent=False)

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the model's weights (the crops are cast to it)."""
        param = next(self.model.parameters(), None)
        return None if param is None else param.dtype

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """The token grid for an ``h x w`` crop."""
        return h // self.patch_size[0], w // self.patch_size[1]

    @contextlib.contextmanager
    def attention_mode(self, fused: bool) -> Iterator[None]:
        """timm's attention blocks take ``fused_attn`` (SDPA) or the explicit
        ``softmax(q k^T) v``; for the duration of the block, every block takes ``fused``, and
        each one's own value is restored afterwards (also on errors)."""
        saved = [m.fused_attn for m in self._attention_modules]
        try:
            for m in self._attention_modules:
                m.fused_attn = fused
            yield
        finally:
            for m, value in zip(self._attention_modules, saved, strict=True):
                m.fused_attn = value

    def keys(
        self,
        x: torch.Tensor,
        clip_mean: torch.Tensor,
        clip_std: torch.Tensor,
        fused_attention: bool = False,
    ) -> torch.Tensor:
        """Keys of CLIP-normalised crops.

        Args:
            x: ``B x 3 x h x w`` crops normalised with ``clip_mean`` / ``clip_std`` (``1x3x1x1``).
            fused_attention: False computes each attention block as an explicit
                ``softmax(q k^T) v``, the arithmetic of the reference implementation (a fused
                kernel rounds differently and can flip the method's thresholds); True uses
                timm's fused kernel. The model's own setting is restored after the call.

        Returns:
            ``B x gh x gw x C`` patch tokens (not yet L2-normalised), in the weights' dtype.
        """
        x = ((x.float() * clip_std + clip_mean) - self.mean) / self.std
        if self.dtype is not None:
            x = x.to(self.dtype)
        with self.attention_mode(fused_attention):
            tokens = self.model.forward_features(x)
        if tokens.ndim == 4:  # NHWC output of some timm models
            return tokens
        gh, gw = self.grid(x.shape[-2], x.shape[-1])
        patches = tokens[:, self.num_prefix :]
        if patches.shape[1] != gh * gw:
            raise ModelLoadError(
                f"the VFM returned {patches.shape[1]} patch tokens for a {gh}x{gw} grid; "
                "is num_prefix_tokens right for this model?"
            )
        return patches.reshape(x.shape[0], gh, gw, -1)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


# ---------------------------------------------------------------------------------------------
# Loading


def _offline_hint(
    kind: str, name: str, pretrained: str | None, err: Exception | str
) -> ModelLoadError:
    what = f"{name}" + (f" ({pretrained})" if pretrained else "")
    if kind == "clip":
        how = (
            "point --clip-pretrained at a local checkpoint file (.pt/.bin/.safetensors), or use "
            "--clip local-dir:DIR (a folder with open_clip_config.json and "
            "open_clip_model.safetensors)"
        )
    else:
        how = (
            "pass --vfm local-dir:DIR (a folder with timm's config.json and model.safetensors) "
            "or --vfm-checkpoint FILE (a local weight file of that architecture)"
        )
    reason = str(err).strip().rstrip(".")
    return ModelLoadError(
        f"could not obtain the {kind.upper()} weights {what}: {reason}. The weights download "
        f"from the internet on first use and are cached (HF_HOME, ~/.cache); offline, {how}"
    )


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
        ``(model, tokenizer, mean, std)`` with the model in eval mode on ``device``.
    """
    import open_clip

    is_path_name = name.startswith(("hf-hub:", "local-dir:"))
    if is_path_name:
        pretrained = None
    elif name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower()[:6] in m.lower()][:8]
        raise ModelLoadError(
            f"unknown CLIP model {name!r}; open_clip knows e.g. {', '.join(close) or 'ViT-B-16'} "
            "(open_clip.list_models() lists all), or use hf-hub:ORG/REPO or local-dir:DIR"
        )
    if pretrained and not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags and _looks_like_file(pretrained):
            raise ModelLoadError(
                f"CLIP checkpoint file {pretrained} not found: check the path, or pass an "
                f"open_clip tag such as {', '.join(tags[:3]) or 'openai'}"
            )
        if pretrained not in tags:
            raise ModelLoadError(
                f"unknown pretrained tag {pretrained!r} for CLIP {name}; known tags: "
                f"{', '.join(tags) or 'none'}; or pass a local checkpoint file"
            )
        cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
        repo = (cfg.get("hf_hub") or "").strip("/") or None
        reason = hub.check_download(repo, _CLIP_FILES)
        if reason:
            raise _offline_hint("clip", name, pretrained, reason)
    elif name.startswith("hf-hub:"):
        reason = hub.check_download(name.removeprefix("hf-hub:"), ("open_clip_config.json",))
        if reason:
            raise _offline_hint("clip", name, None, reason)
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
        if local or name.startswith("local-dir:"):
            reason = hub.summarise_load_error(str(err)) or _first_line(err)
            raise ModelLoadError(
                f"the weights {local or name} do not fit the CLIP architecture {name}: "
                f"{reason}. Is it a checkpoint of another model? Pass the matching --clip"
            ) from None
        raise _offline_hint("clip", name, pretrained, err) from err
    _check_clip_fits(model, name, pretrained)
    tokenizer = open_clip.get_tokenizer(name)
    mean, std = clip_normalisation(model)
    return model.eval(), tokenizer, mean, std


def clip_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel (R, G, B) in [0, 1] units that images are normalised with
    for this CLIP: its preprocessing config (open_clip's ``visual.preprocess_cfg``, or
    ``image_mean``/``image_std``), else OpenAI CLIP's."""
    visual = getattr(model, "visual", model)
    pp = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(pp.get("mean", getattr(visual, "image_mean", None) or OPENAI_CLIP_MEAN))
    std = tuple(pp.get("std", getattr(visual, "image_std", None) or OPENAI_CLIP_STD))
    return tuple(map(float, mean)), tuple(map(float, std))


def load_tokenizer(name: str = DEFAULT_CLIP) -> Callable | None:
    """The tokenizer of the CLIP ``name`` when it can be had without the network and without
    the weights (an open_clip model name or ``local-dir:``), else None (``hf-hub:`` names,
    unknown names, a folder without a readable config)."""
    import open_clip

    if name.startswith("hf-hub:"):
        return None
    if not name.startswith("local-dir:") and name not in open_clip.list_models():
        return None
    try:
        return open_clip.get_tokenizer(name)
    except Exception:  # noqa: BLE001 - the loader reports a bad model itself, later
        return None


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

    is_path_name = name.startswith(("hf-hub:", "local-dir:"))
    if not is_path_name:
        arch = name.split(".")[0]
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
            raise ModelLoadError(
                f"unknown VFM {name!r}; timm knows e.g. {', '.join(close)} "
                "(timm.list_models() lists all), or use local-dir:DIR"
            )
    kwargs: dict = {"num_classes": 0, "dynamic_img_size": True}
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ModelLoadError(f"VFM checkpoint file {checkpoint} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": os.fspath(checkpoint)}
    elif not name.startswith("local-dir:"):
        if name.startswith("hf-hub:"):
            repo = name.removeprefix("hf-hub:")
        else:
            repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
        reason = hub.check_download(repo, _VFM_FILES)
        if reason:
            raise _offline_hint("vfm", name, None, reason)
    resized: tuple[str, ...] = ()  # resampled on purpose (the 224-pixel window)
    try:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except TypeError:
            kwargs.pop("dynamic_img_size")  # a model family without dynamic sizes
            model = timm.create_model(name, pretrained=True, img_size=224, **kwargs)
            resized = ("pos_embed",)
    except Exception as err:  # download, cache and file errors come in many types
        if checkpoint or name.startswith("local-dir:"):
            reason = hub.summarise_load_error(str(err)) or _first_line(err)
            raise ModelLoadError(
                f"the weights {checkpoint or name} do not fit the VFM architecture "
                f"{name.split('.')[0]}: {reason}. Is it a checkpoint of another model? Pass "
                "the matching --vfm"
            ) from None
        raise _offline_hint("vfm", name, checkpoint, err) from err
    if checkpoint is not None:
        _check_fits(model, checkpoint, f"VFM architecture {name.split('.')[0]}", resized)
    elif name.startswith("local-dir:"):
        weights = weights_in(name.removeprefix("local-dir:"), VFM_PREFERRED)
        _check_fits(model, weights, f"VFM {name} (config.json)", resized)
    return model.to(device).eval()


def _check_clip_fits(model: nn.Module, name: str, pretrained: str | None) -> None:
    """``_check_fits`` for a CLIP from a local folder or a local checkpoint file."""
    if name.startswith("local-dir:"):
        weights = weights_in(name.removeprefix("local-dir:"), CLIP_PREFERRED)
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


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0][:300].rstrip(".!") if text else "") or type(err).__name__


def _looks_like_file(text: str) -> bool:
    """A name that is meant as a file path (a folder part or a checkpoint extension)."""
    return os.sep in text or "/" in text or text.lower().endswith(_CHECKPOINT_SUFFIXES)
