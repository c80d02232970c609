"""``glaclip tiny-models``: tiny random models that every command runs with, offline."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from glaclip.cli.main import main
from glaclip.model.tiny import build_tiny_models, write_tiny_models


def test_tiny_models_command_writes_what_segment_runs_with(tmp_path: Path, capsys) -> None:
    """The README's "try it" steps: the command prints the flags, and segment runs with them."""
    assert main(["tiny-models", str(tmp_path / "tiny")]) == 0
    captured = capsys.readouterr()
    flags = shlex.split(captured.out)
    clip, vfm = tmp_path / "tiny" / "clip", tmp_path / "tiny" / "vfm"
    assert flags == ["--clip", f"local-dir:{clip}", "--vfm", f"local-dir:{vfm}"]
    assert "labels mean nothing" in captured.err
    assert sorted(p.name for p in clip.iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    assert sorted(p.name for p in vfm.iterdir()) == ["config.json", "model.safetensors"]

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    argv = ["segment", str(photo), "--classes", "cat, sofa, wall", "--out", str(out)]
    assert main(argv + flags + ["--device", "cpu", "--no-text-cache"]) == 0
    record = json.loads((out / "photo.json").read_text())
    assert record["models"]["clip"] == f"local-dir:{clip}"
    assert set(record["seconds"]) == {
        "vfm",
        "clip",
        "attention",
        "project",
        "stitch",
        "text",
        "labels",
    }
    labels = np.asarray(Image.open(out / "photo.png"))
    assert labels.shape == (120, 160) and labels.max() <= 2

    # a second time into the same folder: refused, unless --overwrite
    assert main(["tiny-models", str(tmp_path / "tiny")]) == 2
    err = capsys.readouterr().err
    assert "open_clip_config.json exists already" in err and "pass --overwrite" in err
    assert main(["tiny-models", str(tmp_path / "tiny"), "--overwrite", "--seed", "1"]) == 0


def test_the_seed_makes_the_weights(tmp_path: Path) -> None:
    a = write_tiny_models(tmp_path / "a", seed=3)
    b = write_tiny_models(tmp_path / "b", seed=3)
    c = write_tiny_models(tmp_path / "c", seed=4)

    def weights(models, part: str) -> dict:
        folder = Path(getattr(models, part).removeprefix("local-dir:"))
        return load_file(
            folder / ("open_clip_model.safetensors" if part == "clip" else "model.safetensors")
        )

    for part in ("clip", "vfm"):
        same, other = weights(a, part), weights(c, part)
        assert all(np.array_equal(same[k], v) for k, v in weights(b, part).items())
        assert not all(np.array_equal(same[k], v) for k, v in other.items())
    before = torch.random.get_rng_state()
    clip, _ = build_tiny_models(seed=3)  # the models themselves, as written
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state kept
    assert np.array_equal(
        clip.state_dict()["text_projection"], weights(a, "clip")["text_projection"]
    )
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        write_tiny_models(tmp_path / "a")
