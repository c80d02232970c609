"""One Segmenter from several threads: right labels, and the shared models and process-wide
switches left as they were."""

from __future__ import annotations

import threading

import numpy as np
import torch

from glaclip import Segmenter
from glaclip.model.device import strict_fp32
from glaclip.model.towers import VFMKeyTower

RGB = np.random.default_rng(5).integers(0, 256, (100, 180, 3), dtype=np.uint8)


def _modes(tower: VFMKeyTower) -> list[bool]:
    return [m.fused_attn for m in tower._attention_modules]


def test_overlapping_attention_modes_leave_the_model_as_it_was(golden_modules) -> None:
    """Two towers over one VFM, in two threads, each asking for the explicit attention while
    the other's call runs: the second waits for the first, and the model keeps its own mode."""
    _, vfm, _ = golden_modules
    first, second = VFMKeyTower(vfm), VFMKeyTower(vfm)
    for m in first._attention_modules:
        m.fused_attn = True
    inside_a, release_a, a_done = threading.Event(), threading.Event(), threading.Event()
    inside_b = threading.Event()
    seen_by_b: list[list[bool]] = []

    def a() -> None:
        with first.attention_mode(False):
            inside_a.set()
            release_a.wait(60)
        a_done.set()

    def b() -> None:
        inside_a.wait(60)
        with second.attention_mode(False):
            inside_b.set()
            a_done.wait(60)  # b's call outlasts a's
            seen_by_b.append(_modes(second))

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    inside_b.wait(2)  # without the lock, b is inside by now, and restores a's mode last
    release_a.set()
    for t in threads:
        t.join(60)
    assert seen_by_b == [[False] * len(seen_by_b[0])]
    assert _modes(first) == [True] * len(_modes(first))


def test_one_segmenter_from_two_threads(golden_modules) -> None:
    seg = Segmenter.from_modules(*golden_modules, text_cache_dir=None)
    classes = ["sky", "tree", "person; man"]
    want = seg.segment(RGB, classes).labels
    before = _modes(seg.vfm_tower)
    start = threading.Barrier(2)
    results: list[np.ndarray] = []

    def work() -> None:
        start.wait()
        for _ in range(2):
            results.append(seg.segment(RGB, classes).labels)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.array_equal(r, want) for r in results)
    assert _modes(seg.vfm_tower) == before


def test_overlapping_strict_fp32_periods_restore_the_switches_once(monkeypatch) -> None:
    """Two threads in ``strict_fp32`` at once: TF32 stays off until the last one leaves, then
    the switches are what they were before (the first to leave must not turn TF32 back on
    under the other, nor the last leave it off)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    cuda = torch.device("cuda")
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = True, True
        inside_a, release_a, a_done = threading.Event(), threading.Event(), threading.Event()
        seen_by_b: list[tuple[bool, bool]] = []

        def a() -> None:
            with strict_fp32(cuda):
                inside_a.set()
                release_a.wait(60)
            a_done.set()

        def b() -> None:
            inside_a.wait(60)
            with strict_fp32(cuda):
                release_a.set()
                a_done.wait(60)  # a has left; b is still inside
                seen_by_b.append((matmul.allow_tf32, cudnn.allow_tf32))

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert seen_by_b == [(False, False)]
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
