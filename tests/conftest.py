"""Shared fixtures: the golden fixtures and the tiny golden models as real checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.golden import COMPACT_DIR, build_golden_modules


def pytest_configure(config) -> None:
    """Segmenters built before any test's own folder is set (module and session fixtures)
    cache text embeddings in a folder of the run, never in the user's home.

    One intra-op thread (unless ``OMP_NUM_THREADS`` says otherwise), here and in the
    subprocesses the tests start: the tiny models' products are too small to gain from
    threads, which only add their overhead (measured on 2 cores: a third less CPU time, and
    less wall time too), and the arithmetic is then the same on every machine."""
    import tempfile

    os.environ["GLACLIP_CACHE"] = tempfile.mkdtemp(prefix="glaclip-test-cache-")
    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))


@pytest.fixture(autouse=True)
def private_text_cache(tmp_path_factory, monkeypatch) -> None:
    """Each test's Segmenters cache text embeddings in a folder of their own (the default is
    the user cache folder, ``$GLACLIP_CACHE``): no test sees another's embeddings, and none
    writes into the user's home."""
    monkeypatch.setenv("GLACLIP_CACHE", str(tmp_path_factory.mktemp("user_cache")))


@pytest.fixture(scope="session")
def test_device() -> str:
    """Where the golden cases run: ``$GLACLIP_TEST_DEVICE`` (``cuda``, ``cuda:1``, ``mps``),
    default the CPU. ``benchmarks/gpu_check.py`` runs them on a GPU this way."""
    return os.environ.get("GLACLIP_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The compact golden set shipped in ``tests/golden`` (see ``tests/golden.py``)."""
    return COMPACT_DIR


@pytest.fixture(scope="session")
def golden_models_state(golden_dir: Path) -> dict:
    return torch.load(golden_dir / "models.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_modules(golden_models_state: dict):
    """``(clip_model, vfm_model, tokenizer)`` built exactly as the golden README says."""
    return build_golden_modules(golden_models_state)


def write_tiny_checkpoints(state: dict, root: Path) -> dict[str, str]:
    """Write the tiny golden models as open_clip and timm ``local-dir:`` checkpoints, with the
    writer of ``glaclip tiny-models`` (their architecture is that of ``glaclip.model.tiny``)."""
    from glaclip.model import tiny

    arch = {
        "embed_dim": state["clip_embed_dim"],
        "vision_cfg": state["clip_vision_cfg"],
        "text_cfg": state["clip_text_cfg"],
        "quick_gelu": state["quick_gelu"],
    }
    assert arch == tiny.CLIP_CONFIG and state["vfm_kwargs"] == tiny.VFM_ARGS
    assert state["vfm_timm_name"].split(".")[0] == tiny.VFM_ARCHITECTURE
    models = tiny.write_local_dirs(root, state["clip_state_dict"], state["vfm_state_dict"])
    return {"clip": models.clip, "vfm": models.vfm}


@pytest.fixture(scope="session")
def tiny_checkpoints(golden_models_state: dict, tmp_path_factory) -> dict[str, str]:
    """``{"clip": "local-dir:...", "vfm": "local-dir:..."}`` of the tiny golden models."""
    return write_tiny_checkpoints(golden_models_state, tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_model_args(tiny_checkpoints: dict[str, str], tmp_path_factory) -> list[str]:
    """CLI flags that select the tiny models on the CPU with a private text cache."""
    cache = tmp_path_factory.mktemp("text_cache")
    return [
        "--clip",
        tiny_checkpoints["clip"],
        "--vfm",
        tiny_checkpoints["vfm"],
        "--device",
        "cpu",
        "--text-cache",
        str(cache),
    ]
