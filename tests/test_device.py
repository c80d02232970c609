from __future__ import annotations

import pytest
import torch

from glaclip.model.device import resolve_device


def test_cpu_and_default(monkeypatch) -> None:
    """Without a name: CUDA where there is a GPU, else Apple's MPS, else the CPU."""
    assert resolve_device("cpu") == torch.device("cpu")
    mps = torch.backends.mps
    for cuda, apple, expected in [
        (True, True, "cuda"),
        (False, True, "mps"),
        (False, False, "cpu"),
    ]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(mps, "is_available", lambda apple=apple: apple)
        assert resolve_device(None) == torch.device(expected)


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x"])
def test_unknown_device(name: str) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_missing_is_clear() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


def test_strict_fp32_is_scoped() -> None:
    from glaclip.model.device import strict_fp32

    before = torch.backends.cudnn.allow_tf32
    with strict_fp32(torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 == before  # nothing changes off CUDA
    torch.backends.cudnn.allow_tf32 = True
    try:
        with strict_fp32(torch.device("cuda")):
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cudnn.allow_tf32 = before
