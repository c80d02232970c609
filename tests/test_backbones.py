"""Loading backbones from local checkpoints, model variants, and clear load errors."""

from __future__ import annotations

import re
from collections.abc import Iterator

import open_clip
import pytest
import timm
import torch
from PIL import Image

from glaclip import Segmenter
from glaclip.constants import CLIP_MEAN, CLIP_STD
from glaclip.model.loading import clip_normalisation, load_clip, load_vfm
from glaclip.model.towers import ClipTower, ModelLoadError, VFMKeyTower
from tests.golden import assert_matches_golden, load_case


def test_local_dir_checkpoints_load_the_same_weights(tiny_checkpoints, golden_models_state) -> None:
    clip, tok = load_clip(tiny_checkpoints["clip"])
    for k, v in golden_models_state["clip_state_dict"].items():
        assert torch.equal(clip.state_dict()[k], v), k
    assert clip_normalisation(clip) == (CLIP_MEAN, CLIP_STD)  # its config's, OpenAI's values
    assert tok(["a photo"]).shape[-1] == 77
    vfm = load_vfm(tiny_checkpoints["vfm"])
    for k, v in golden_models_state["vfm_state_dict"].items():
        assert torch.equal(vfm.state_dict()[k], v), k


def test_from_pretrained_matches_from_modules(tiny_checkpoints, golden_modules, golden_dir) -> None:
    g = load_case(golden_dir, "kv_only")
    settings = {"proxy_anchor": False, "dynamic_norm": False, "prob_threshold": 0.1}
    a = Segmenter.from_pretrained(
        clip=tiny_checkpoints["clip"],
        vfm=tiny_checkpoints["vfm"],
        device="cpu",
        text_cache_dir=None,
        **settings,
    )
    out = a.segment_tensor(g["image"], g["class_lines"])
    assert_matches_golden(out.query_logits, out.labels, g)
    assert a.clip_info.pretrained is None and a.clip_info.name.startswith("local-dir:")


def test_vfm_checkpoint_file(tmp_path) -> None:
    from safetensors.torch import save_file

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = load_vfm("vit_tiny_patch16_224", checkpoint=str(path))
    assert torch.equal(model.state_dict()["pos_embed"], ref.state_dict()["pos_embed"])
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vfm("vit_tiny_patch16_224", checkpoint=str(tmp_path / "missing.pth"))


@pytest.fixture(scope="module")
def named_architectures(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """Two small CLIP architectures registered in open_clip by name, as its own ViT-B-16 is:
    the tiny models' (``glaclip.model.tiny.CLIP_CONFIG``) and one of other widths and depths (a
    checkpoint of one does not fit the other). Small: open_clip's smallest ViT weighs 250 MB."""
    import json

    from glaclip.model.tiny import CLIP_CONFIG

    other = json.loads(json.dumps(CLIP_CONFIG))
    other["vision_cfg"].update(width=48, layers=2)
    other["text_cfg"].update(layers=3)
    names = ("glaclip-test-tiny", "glaclip-test-other")
    folder = tmp_path_factory.mktemp("configs")
    for name, cfg in zip(names, (CLIP_CONFIG, other), strict=True):
        (folder / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder / f"{name}.json")
    yield names
    for name in names:  # open_clip offers no way to remove a config: its registry, by hand
        open_clip.factory._MODEL_CONFIGS.pop(name, None)


def test_clip_checkpoint_file(tmp_path, named_architectures) -> None:
    name, _ = named_architectures
    ref = open_clip.create_model(name)
    path = tmp_path / "tiny_clip.pt"
    torch.save(ref.state_dict(), path)
    model, _ = load_clip(name, str(path))
    assert torch.equal(model.visual.proj, ref.visual.proj)


def test_unknown_names_are_clear() -> None:
    with pytest.raises(ModelLoadError, match="unknown CLIP model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", "openai")
    with pytest.raises(ModelLoadError, match="unknown pretrained tag 'nope'"):
        load_clip("ViT-B-16", "nope")
    with pytest.raises(ModelLoadError, match="unknown VFM 'vit_nonsense_patch8'"):
        load_vfm("vit_nonsense_patch8")


def test_offline_every_model_is_reported_at_once(tmp_path, monkeypatch, capsys) -> None:
    """Offline, with neither model cached: from Python, each model's error names the keywords
    that point at local copies; the Segmenter and the command line report both models in one
    error (the command line in flags, with --base clearclip), and leave no empty --out."""
    from glaclip.cli.main import main
    from glaclip.model import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "in_cache", lambda *args: False)
    with pytest.raises(ModelLoadError) as clip_error:
        load_clip("ViT-B-16", "openai")
    message = str(clip_error.value)
    assert "ViT-B-16 (openai): HF_HUB_OFFLINE is set" in message
    assert "clip_pretrained= at a local checkpoint file" in message
    assert 'clip="local-dir:DIR"' in message and " --" not in message
    with pytest.raises(ModelLoadError) as vfm_error:
        load_vfm("vit_base_patch8_224.dino")
    message = str(vfm_error.value)
    assert "vit_base_patch8_224.dino: HF_HUB_OFFLINE is set" in message
    assert 'vfm="local-dir:DIR"' in message and 'base="clearclip"' in message

    with pytest.raises(ModelLoadError) as both:
        Segmenter.from_pretrained(device="cpu")
    assert str(clip_error.value) in str(both.value) and str(vfm_error.value) in str(both.value)

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30)).save(photo)
    out = tmp_path / "new" / "out"
    assert main(["segment", str(photo), "--classes", "a, b", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ViT-B-16 (openai)" in err and "vit_base_patch8_224.dino" in err
    assert "point --clip-pretrained at a local checkpoint file" in err
    assert "--vfm local-dir:DIR" in err and "--base clearclip, which needs no VFM" in err
    assert not (tmp_path / "new").exists()  # the run wrote nothing: no folder is left


def test_local_folders_without_their_files(tmp_path, capsys) -> None:
    """A local-dir: folder without its config says the file is missing (not that the weights
    belong to another model); both models are reported at once."""
    from glaclip.cli.main import main

    empty, missing = tmp_path / "empty", tmp_path / "nowhere"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as info:
        load_vfm(f"local-dir:{empty}")
    assert f'vfm="local-dir:{empty}" has no config.json (the file is missing)' in str(info.value)
    with pytest.raises(ModelLoadError) as info:
        load_clip(f"local-dir:{empty}")
    assert "has no open_clip_config.json (the file is missing)" in str(info.value)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="has config.json but no weight file"):
        load_vfm(f"local-dir:{empty}")

    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30)).save(photo)
    argv = ["segment", str(photo), "--classes", "a", "--out", str(tmp_path / "o")]
    argv += ["--clip", f"local-dir:{missing}", "--vfm", f"local-dir:{empty}", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the CLIP folder of --clip local-dir:{missing} does not exist" in err
    assert f"the VFM folder of --vfm local-dir:{empty} has config.json but no weight" in err
    assert "another model" not in err and not (tmp_path / "o").exists()


def _tiny_clip(patch: int) -> torch.nn.Module:
    return open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={
            "image_size": 224,
            "layers": 2,
            "width": 64,
            "patch_size": patch,
            "head_width": 16,
        },
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        quick_gelu=True,
    ).eval()


@pytest.mark.parametrize(
    ("vfm_name", "grid", "prefix"),
    [
        ("vit_small_patch8_224", 28, 1),  # DINO S/8
        ("vit_base_patch16_224", 14, 1),  # DINO B/16
        ("vit_small_patch14_dinov2", 16, 1),  # DINOv2
        ("vit_small_patch14_reg4_dinov2", 16, 5),  # DINOv2 with registers (dropped)
    ],
)
def test_vfm_variants(vfm_name: str, grid: int, prefix: int) -> None:
    vfm = timm.create_model(
        vfm_name,
        pretrained=False,
        num_classes=0,
        embed_dim=32,
        depth=1,
        num_heads=2,
        dynamic_img_size=True,
    ).eval()
    tower = VFMKeyTower(vfm)
    assert tower.num_prefix == prefix
    keys = tower.keys(
        torch.zeros(2, 3, 224, 224),
        torch.zeros(1, 3, 1, 1),
        torch.ones(1, 3, 1, 1),
    )
    assert keys.shape == (2, grid, grid, 32)
    seg = Segmenter.from_modules(_tiny_clip(16), vfm, open_clip.get_tokenizer("ViT-B-16"))
    out = seg.segment_tensor(torch.randn(1, 3, 224, 336), ["a", "b; c"])
    assert out.query_logits.shape == (3, 224, 336)
    assert out.labels.shape == (224, 336) and int(out.labels.max()) <= 1


def test_clip_patch14_values_resized_to_vfm_grid(golden_modules) -> None:
    """A /14 CLIP (ViT-L-14 structure) gives 16x16 values, resized to the 28x28 keys."""
    _, vfm, tok = golden_modules
    clip = _tiny_clip(14)
    tower = ClipTower(clip.visual)
    assert tower.values(torch.zeros(1, 3, 224, 224)).shape == (1, 64, 16, 16)
    seg = Segmenter.from_modules(clip, vfm, tok)
    out = seg.segment_tensor(torch.randn(1, 3, 224, 224), ["a", "b"])
    assert out.query_logits.shape == (2, 224, 224)


def test_clip_tower_rejects_non_vit() -> None:
    with pytest.raises(ModelLoadError, match="not an open_clip ViT"):
        ClipTower(torch.nn.Linear(2, 2))


def test_checkpoint_path_typo_says_file_not_found(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=r"file .*typo.pt \(clip_pretrained=\) does"):
        load_clip("ViT-B-16", str(tmp_path / "typo.pt"))


def test_checkpoint_of_another_architecture_is_summarised(
    golden_models_state, tmp_path, named_architectures
):
    """A checkpoint that does not fit: counts and three examples, not hundreds of key names."""
    from safetensors.torch import save_file

    path = tmp_path / "tiny_vfm.safetensors"
    save_file({k: v.contiguous() for k, v in golden_models_state["vfm_state_dict"].items()}, path)
    with pytest.raises(ModelLoadError) as info:
        load_vfm("vit_small_patch16_224", str(path))
    message = str(info.value)
    assert "do not fit the VFM architecture vit_small_patch16_224" in message
    assert "of another shape (e.g." in message and "Pass the matching vfm=" in message
    assert len(message) < 600 and message.count("blocks.") <= 6

    clip_path = tmp_path / "tiny_clip.pt"
    torch.save(golden_models_state["clip_state_dict"], clip_path)
    _, other = named_architectures
    with pytest.raises(ModelLoadError) as info:
        load_clip(other, str(clip_path))
    message = str(info.value)
    assert f"do not fit the CLIP architecture {other}" in message
    assert message.count("resblocks.") <= 9  # three examples of each kind of misfit, no more
    # counted against the architecture, as for the VFM (open_clip's own message names one)
    assert re.search(r"\d+ weights of another shape \(e\.g\. [\w.]+, [\w.]+, [\w.]+", message)
    assert re.search(r"\d+ weights missing \(e\.g\. ", message)


def test_no_network_fails_at_once(monkeypatch, tmp_path) -> None:
    """Weights not in the cache and the hub unreachable: a clear error before any download
    (open_clip and timm would retry for about a minute)."""
    import socket

    import open_clip
    import timm

    def unreachable(*args, **kwargs):
        raise OSError("no route")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(open_clip, "create_model", no_download)
    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(ModelLoadError, match="cannot be reached .*local-dir:DIR"):
        load_clip("ViT-B-16", "openai")
    with pytest.raises(ModelLoadError, match="cannot be reached .*vfm_checkpoint="):
        load_vfm("vit_base_patch8_224.dino")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set"):
        load_vfm("vit_base_patch8_224.dino")


# ------------------------------------------------------------------ configs against weights
def _tiny_dirs(state: dict, root) -> dict[str, str]:
    from tests.conftest import write_tiny_checkpoints

    return write_tiny_checkpoints(state, root)


def _edit_config(folder: str, file: str, edit) -> None:
    import json
    from pathlib import Path

    path = Path(folder.removeprefix("local-dir:")) / file
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("patch", [16, 7])
def test_vfm_config_with_another_patch_size_than_its_weights(
    golden_models_state, tmp_path, patch: int
) -> None:
    """timm would resample the patch-8 embedding to the configured patch without a word."""
    dirs = _tiny_dirs(golden_models_state, tmp_path)
    _edit_config(dirs["vfm"], "config.json", lambda c: c["model_args"].update(patch_size=patch))
    with pytest.raises(ModelLoadError) as info:
        load_vfm(dirs["vfm"])
    message = str(info.value)
    assert (
        f"patch_embed.proj.weight is [64, 3, {patch}, {patch}] in the configured model" in message
    )
    assert "but [64, 3, 8, 8] in the weights" in message
    assert f"(patch size {patch} in the config, 8 in the weights)" in message


def test_clip_config_with_another_image_size_than_its_weights(
    golden_models_state, tmp_path
) -> None:
    """open_clip would resample the position embedding of a 224-pixel CLIP to 448 pixels."""
    dirs = _tiny_dirs(golden_models_state, tmp_path)
    _edit_config(
        dirs["clip"],
        "open_clip_config.json",
        lambda c: c["model_cfg"]["vision_cfg"].update(image_size=448),
    )
    with pytest.raises(ModelLoadError) as info:
        load_clip(dirs["clip"])
    message = str(info.value)
    assert "open_clip_config.json) does not fit its weights" in message
    assert "visual.positional_embedding is [785, 64] in the configured model" in message
    assert "but [197, 64] in the weights" in message


def test_vfm_checkpoint_of_another_patch_size(tmp_path) -> None:
    from safetensors.torch import save_file

    patch8 = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=8
    )
    path = tmp_path / "patch8.safetensors"
    save_file({k: v.contiguous() for k, v in patch8.state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError, match="patch size 16 in the config, 8 in the"):
        load_vfm("vit_tiny_patch16_224", checkpoint=str(path))


def test_checkpoint_shapes_of_a_wrapped_state_dict(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module.a.weight": torch.zeros(2, 3)}, "epoch": 4}, path)
    from glaclip.model.checkpoints import checkpoint_shapes

    assert checkpoint_shapes(path) == {"a.weight": (2, 3)}
