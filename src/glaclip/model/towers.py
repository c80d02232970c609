"""The two feature maps: CLIP's image tower read at its last block, and a VFM read as keys.

Nothing here patches open_clip or timm: ``ClipTower`` runs the CLIP image tower's own
modules up to the last block and reads that block's weights to compute its queries and values
and the output projection (SPEC 4, 7, 12); ``VFMKeyTower`` calls timm's ``forward_features``
(SPEC 3). Loading the models by name is ``glaclip.model.loading``.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

# one lock per VFM model (weakly held): a call that sets the model's attention mode holds it
# for the whole forward pass, so that threads sharing the model never see another's mode or
# restore a value another call set (``VFMKeyTower.attention_mode``)
_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    with _LOCKS_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelLoadError(RuntimeError):
    """A backbone could not be built or its weights could not be obtained."""


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
        self.patch_size = _pair(visual.conv1.kernel_size)
        self.grid_size = _pair(getattr(visual, "grid_size", None) or self._pos_grid())

    def _pos_grid(self) -> tuple[int, int]:
        side = int(math.isqrt(self.visual.positional_embedding.shape[0] - 1))
        return (side, side)

    def _positional(self, gh: int, gw: int, positional: str = "size") -> torch.Tensor:
        """The position embedding for a ``gh x gw`` grid, class token first.

        ``positional="size"``: the patch embeddings resampled bicubically to ``gh x gw``
        (where the grid differs from the pretrained one). ``"scale_factor"``: as SCLIP's and
        NACLIP's code does it, bicubic by the scale factor ``(g + 0.1) / g0`` per axis (DINO's
        offset; the sampling positions follow the factor, not the sizes), and only where the
        token count differs from the pretrained one.
        """
        pos = self.visual.positional_embedding
        ph, pw = self.grid_size
        if positional == "scale_factor":
            if gh * gw == ph * pw:
                return pos
        elif (gh, gw) == (ph, pw):
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        patch_pos = patch_pos.reshape(1, ph, pw, -1).permute(0, 3, 1, 2)
        if positional == "scale_factor":
            factor = ((gh + 0.1) / ph, (gw + 0.1) / pw)
            patch_pos = F.interpolate(
                patch_pos, scale_factor=factor, mode="bicubic", align_corners=False
            )
        else:
            patch_pos = F.interpolate(patch_pos, size=(gh, gw), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(gh * gw, -1)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def tokens(
        self, x: torch.Tensor, positional: str = "size"
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The last block's input (the residual stream), class token first.

        Args:
            x: ``B x 3 x h x w`` CLIP-normalised crops (a side that is no multiple of the
                patch loses its last pixels in the patch embedding).
            positional: how the position embedding is resampled (``_positional``).

        Returns:
            ``(B x (1 + gh*gw) x D tokens, (gh, gw) patch grid)``.
        """
        v = self.visual
        t = v.conv1(x.to(v.conv1.weight.dtype))
        b, d, gh, gw = t.shape
        t = t.reshape(b, d, gh * gw).permute(0, 2, 1)
        cls = v.class_embedding.to(t.dtype).expand(b, 1, d)
        t = torch.cat([cls, t], dim=1) + self._positional(gh, gw, positional).to(t.dtype)
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
        return t, (gh, gw)

    def last_block_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The last block's normalised input ``ln_1(tokens)``, class token first.

        Args:
            x: ``B x 3 x h x w`` CLIP-normalised crops.

        Returns:
            ``(B x (1 + gh*gw) x D tokens, (gh, gw) patch grid)``.
        """
        t, grid = self.tokens(x)
        return self.last.ln_1(t), grid

    def qkv(self, y: torch.Tensor, part: str) -> torch.Tensor:
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
        val = self.qkv(y[:, 1:], "v")
        return val.permute(0, 2, 1).reshape(val.shape[0], self.width, gh, gw)

    def out_proj(self, o: torch.Tensor) -> torch.Tensor:
        """The last block's attention output projection: ``... x D`` -> ``... x D``."""
        return self.last.attn.out_proj(o)

    def residual_mlp(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The rest of the last block after its attention, as the block computes it:
        ``x = x + ls_1(o)``, then ``x + ls_2(mlp(ln_2(x)))`` (``o``: the projected attention
        output, ``x``: the block's input)."""
        last = self.last
        x = x + getattr(last, "ls_1", nn.Identity())(o)
        return x + getattr(last, "ls_2", nn.Identity())(last.mlp(last.ln_2(x)))

    def head(self, t: torch.Tensor) -> torch.Tensor:
        """``... x D`` last-block output -> ``... x E`` embeddings: ``ln_post``, ``proj``."""
        t = self.visual.ln_post(t)
        proj = self.visual.proj
        return t @ proj if proj is not None else t


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
        each one's own value is restored afterwards (also on errors).

        timm reads the mode from the shared modules, so the block holds the model's lock
        (one per model, whichever towers wrap it): calls from several threads on one model
        run their forward passes one at a time, each with its own mode, and the model is left
        as it was."""
        with _model_lock(self.model):
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


def cast_towers(
    visual: nn.Module, vfm_tower: VFMKeyTower | None, precision: str, device: torch.device
) -> tuple[ClipTower, VFMKeyTower | None]:
    """Copies of CLIP's image tower (``visual``) and of the VFM tower's model cast to
    ``precision`` (``bf16``/``fp16``), leaving the originals (and the text tower) in float32.
    Cast weights, not autocast: on the CPU, autocast turns the attention's input projection
    into a slow batched product. Warns where the device has no native ``precision``."""
    import copy
    import warnings

    from glaclip.model.device import native_precision, precision_dtype

    dtype = precision_dtype(precision)
    if not native_precision(device, precision):
        warnings.warn(
            f"precision {precision} on this {device.type.upper()} has no native {precision} "
            "instructions (AVX-512 BF16/FP16 or AMX on CPUs): it is emulated and several times "
            "slower than fp32 (6-9x measured on an AVX2 CPU); use fp32 here",
            RuntimeWarning,
            stacklevel=4,
        )
    clip = ClipTower(copy.deepcopy(visual).to(dtype))
    vfm = None
    if vfm_tower is not None:
        vfm = VFMKeyTower(copy.deepcopy(vfm_tower.model).to(dtype))
    return clip, vfm
