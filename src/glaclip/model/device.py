"""Device and precision, resolved in one place."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps``, or None for the best available.

    Raises ValueError for an unknown or unavailable device, saying what is available.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f'device {device!r} asked for, but CUDA is not available: use device="cpu"'
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA devices exist"
        )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f'device {device!r} asked for, but MPS is not available: use device="cpu"')
    # meta: PyTorch's shape-only device, on which the tests check where tensors are made
    if dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ValueError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev


def describe_device(device: torch.device) -> str:
    """A line naming the device for users and reports: ``cuda:0 (NVIDIA H200, 139.7 GiB)``,
    ``cpu (Intel(R) Xeon(R) ..., 2 threads, AVX512)``, ``mps``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        parts = [cpu_name(), f"{threads} thread" + ("s" if threads != 1 else "")]
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
        return f"cpu ({', '.join(p for p in parts + [capability] if p)})"
    return str(device)


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), or an empty string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` -> the torch dtype of the backbones' weights."""
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}") from None


def native_precision(device: torch.device, precision: str) -> bool:
    """Whether ``device`` computes ``precision`` (bf16/fp16) natively, so that casting the
    backbones to it is faster than fp32. CPUs need AVX-512 BF16 / AVX-512 FP16 or AMX (read
    from oneDNN); without them the low-precision products are emulated and slower."""
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True
    try:
        check = (
            torch.ops.mkldnn._is_mkldnn_bf16_supported
            if precision == "bf16"
            else torch.ops.mkldnn._is_mkldnn_fp16_supported
        )
        return bool(check())
    except (AttributeError, RuntimeError):
        return False


def half_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of two half-precision matrices, as float32.

    Accumulated in float32 where the backend offers it: CUDA returns the float32 sums
    (``out_dtype``); the CPU's kernels (oneDNN) accumulate in float32 but return the half
    precision, which is cast back here (one rounding of each result).
    """
    if a.device.type == "cuda":
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # an older PyTorch
            pass
    return torch.mm(a, b).float()


def host_decisions(device: torch.device) -> bool:
    """Whether the blocked attention may read values back to the host to choose its path
    (free on the CPU; a stall of the whole device per read elsewhere)."""
    return device.type == "cpu"


@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """On CUDA, true float32 products and convolutions (no TF32) for the duration.

    cuDNN uses TF32 for float32 convolutions by default, which rounds the patch embeddings
    differently and can flip the method's thresholds. PyTorch offers these switches only as
    process-wide flags (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``): they are set for the duration of the block and
    restored exactly afterwards, also on errors. Calls that overlap (nested, or from several
    threads) share one period: the first to enter saves the switches, the last to leave
    restores them. Other threads using CUDA during that time see them too. Off CUDA nothing is
    touched.
    """
    if device.type != "cuda":
        yield
        return
    with _TF32["lock"]:
        if _TF32["users"] == 0:
            matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
            _TF32["saved"] = (matmul.allow_tf32, cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        _TF32["users"] += 1
    try:
        yield
    finally:
        with _TF32["lock"]:
            _TF32["users"] -= 1
            if _TF32["users"] == 0:
                matmul, cudnn = _TF32["saved"]
                torch.backends.cuda.matmul.allow_tf32 = matmul
                torch.backends.cudnn.allow_tf32 = cudnn


# the calls inside ``strict_fp32`` now, and the switches they found
_TF32: dict = {"lock": threading.Lock(), "users": 0, "saved": (True, True)}


class StageTimer:
    """Wall-clock seconds per named stage, accumulated; synchronises CUDA at stage borders."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def free_memory(device: torch.device) -> int:
    """Bytes free for work on ``device``: the free device memory on CUDA, the available system
    memory otherwise (Linux ``MemAvailable``; elsewhere the available pages, or 4 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (with its index: ``cuda:1``), or the CPU."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
