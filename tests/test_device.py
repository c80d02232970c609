from __future__ import annotations

import pytest
import torch

from glaclip.device import resolve_device


def test_cpu_and_default() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x"])
def test_unknown_device(name: str) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_missing_is_clear() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
