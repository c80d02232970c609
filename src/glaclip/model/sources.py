"""Where the backbones' weights come from, checked before any model is built.

``check_sources`` looks at every model a Segmenter will load (the CLIP, and the VFM where the
base method uses one) and reports every problem together: an unknown name or tag, a local file
or ``local-dir:`` folder that is missing or incomplete, weights neither in the hub's cache nor
reachable (``hub.check_download``). Without it an offline run would stop on the CLIP and only a
second run would report the VFM.

Messages name the keywords of ``Segmenter.from_pretrained`` (``clip_pretrained=``,
``vfm="local-dir:DIR"``, ``base="clearclip"``); the command line shows them as its flags.
"""

from __future__ import annotations

import os

from glaclip.model import hub
from glaclip.model.checkpoints import CLIP_PREFERRED, VFM_PREFERRED, weights_in
from glaclip.model.names import HUB, LOCAL_DIR, is_hub, is_local_dir, names_its_weights
from glaclip.model.towers import ModelLoadError

__all__ = [
    "CLIP_CONFIG_FILE",
    "VFM_CONFIG_FILE",
    "check_clip_source",
    "check_local_dir",
    "check_sources",
    "check_vfm_source",
    "offline_hint",
]

CLIP_CONFIG_FILE = "open_clip_config.json"
VFM_CONFIG_FILE = "config.json"
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
VFM_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
CACHED = (
    "The weights download from the Hugging Face hub on first use and are then cached "
    "($HF_HOME/hub, default ~/.cache/huggingface/hub)"
)
_LOCAL = {
    "clip": (
        "point clip_pretrained= at a local checkpoint file (.pt/.bin/.safetensors), or pass "
        f'clip="local-dir:DIR" (a folder with {CLIP_CONFIG_FILE} and {CLIP_PREFERRED[0]})'
    ),
    "vfm": (
        f'pass vfm="local-dir:DIR" (a folder with timm\'s {VFM_CONFIG_FILE} and '
        f"{VFM_PREFERRED[0]}) or vfm_checkpoint= (a local weight file of that architecture)"
    ),
}
NO_VFM = 'pass base="clearclip", which needs no VFM (no DINO download)'


def offline_hint(kind: str, name: str, pretrained: str | None, reason: object) -> ModelLoadError:
    """The error for weights that cannot be obtained: what, why, and the local options.

    Args:
        kind: ``clip`` or ``vfm``.
        name, pretrained: the model as asked for.
        reason: why (a message, or the loader's exception).
    """
    what = name + (f" ({pretrained})" if pretrained else "")
    text = str(reason).strip().rstrip(".")
    extra = f"; or {NO_VFM}" if kind == "vfm" else ""
    return ModelLoadError(
        f"could not obtain the {kind.upper()} weights {what}: {text}. {CACHED}; offline, "
        f"{_LOCAL[kind]}{extra}"
    )


def check_local_dir(kind: str, name: str) -> None:
    """Raise ``ModelLoadError`` unless the ``local-dir:`` folder of ``name`` holds its config
    file and a weight file (``kind``: ``clip`` or ``vfm``)."""
    folder = name.removeprefix(LOCAL_DIR)
    keyword = f'{kind}="{name}"'
    config = CLIP_CONFIG_FILE if kind == "clip" else VFM_CONFIG_FILE
    preferred = CLIP_PREFERRED if kind == "clip" else VFM_PREFERRED
    holds = f"a local-dir: {kind.upper()} folder holds {config} and {preferred[0]}"
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise ModelLoadError(f"the {kind.upper()} folder of {keyword} {what}: {holds}")
    if not os.path.isfile(os.path.join(folder, config)):
        raise ModelLoadError(
            f"the {kind.upper()} folder of {keyword} has no {config} (the file is missing): "
            f"{holds} (`glaclip tiny-models DIR` writes such folders)"
        )
    if weights_in(folder, preferred) is None:
        raise ModelLoadError(
            f"the {kind.upper()} folder of {keyword} has {config} but no weight file: {holds}"
        )


def check_clip_source(name: str, pretrained: str | None) -> None:
    """Raise ``ModelLoadError`` before any download: an unknown model name or tag, a checkpoint
    path or ``local-dir:`` folder that is missing or incomplete, or weights neither cached nor
    reachable (``hub.check_download``)."""
    import open_clip

    if is_local_dir(name):
        return check_local_dir("clip", name)
    if not is_hub(name) and name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower()[:6] in m.lower()][:8]
        raise ModelLoadError(
            f"unknown CLIP model {name!r}; open_clip knows e.g. {', '.join(close) or 'ViT-B-16'} "
            '(open_clip.list_models() lists all), or pass clip="hf-hub:ORG/REPO" or '
            'clip="local-dir:DIR"'
        )
    if is_hub(name):
        reason = hub.check_download(name.removeprefix(HUB), (CLIP_CONFIG_FILE,))
        if reason:
            raise offline_hint("clip", name, None, reason)
        return None
    if pretrained and not os.path.exists(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags and looks_like_file(pretrained):
            raise ModelLoadError(
                f"the CLIP checkpoint file {pretrained} (clip_pretrained=) does not exist: check "
                f"the path, or pass an open_clip tag such as {', '.join(tags[:3]) or 'openai'}"
            )
        if pretrained not in tags:
            raise ModelLoadError(
                f"unknown pretrained tag {pretrained!r} for CLIP {name}; known tags: "
                f"{', '.join(tags) or 'none'}; or pass a local checkpoint file as clip_pretrained="
            )
        cfg = open_clip.get_pretrained_cfg(name, pretrained) or {}
        repo = (cfg.get("hf_hub") or "").strip("/") or None
        reason = hub.check_download(repo, CLIP_HUB_FILES)
        if reason:
            raise offline_hint("clip", name, pretrained, reason)
    return None


def check_vfm_source(name: str, checkpoint: str | None) -> None:
    """``check_clip_source`` for the VFM: a timm name with its tag, ``hf-hub:``,
    ``local-dir:``, or an architecture with a local ``checkpoint`` file."""
    import timm

    if is_local_dir(name):
        return check_local_dir("vfm", name)
    if not is_hub(name):
        arch = name.split(".")[0]
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
            raise ModelLoadError(
                f"unknown VFM {name!r}; timm knows e.g. {', '.join(close)} "
                '(timm.list_models() lists all), or pass vfm="local-dir:DIR"'
            )
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ModelLoadError(
                f"the VFM checkpoint file {checkpoint} (vfm_checkpoint=) does not exist: check "
                "the path"
            )
        return None
    if is_hub(name):
        repo = name.removeprefix(HUB)
    else:
        repo = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    reason = hub.check_download(repo, VFM_HUB_FILES)
    if reason:
        raise offline_hint("vfm", name, None, reason)
    return None


def check_sources(
    clip: str,
    clip_pretrained: str | None,
    vfm: str | None,
    vfm_checkpoint: str | None,
) -> None:
    """Check every model before any is built, and report every problem in one error.

    Args:
        clip, clip_pretrained: the CLIP as ``load_clip`` takes it.
        vfm, vfm_checkpoint: the VFM as ``load_vfm`` takes it; ``vfm`` None: no VFM is used.

    Raises:
        ModelLoadError: one problem as it is; several as one message, one line each.
    """
    if names_its_weights(clip):
        clip_pretrained = None
    problems: list[tuple[str, ModelLoadError]] = []
    try:
        check_clip_source(clip, clip_pretrained)
    except ModelLoadError as err:
        problems.append(("CLIP", err))
    if vfm is not None:
        try:
            check_vfm_source(vfm, vfm_checkpoint)
        except ModelLoadError as err:
            problems.append(("VFM", err))
    if len(problems) == 1:
        raise problems[0][1]
    if problems:
        lines = "\n".join(f"  {kind}: {err}" for kind, err in problems)
        raise ModelLoadError(f"neither model can be loaded:\n{lines}")


def looks_like_file(text: str) -> bool:
    """A name that is meant as a file path (a folder part or a checkpoint extension)."""
    return os.sep in text or "/" in text or text.lower().endswith(_CHECKPOINT_SUFFIXES)
