"""Every tensor on its inputs' device, with no GPU: the public API on PyTorch's ``meta`` device,
and a scan of ``src/`` for tensor factories that name no device.

A meta tensor, like a CUDA one, refuses to meet a CPU tensor in an operation ("Tensor on device
cpu is not on the expected device meta!") and cannot be read back to the host (``bool()``,
``.item()``, ``.cpu()``): a run on meta fails at the first misplaced tensor and at the first
value the code would read back, which on a GPU would stall the device.
"""

from __future__ import annotations

import ast
import copy
import warnings
from pathlib import Path

import pytest
import torch

from glaclip import Segmenter
from glaclip.registry import base_class, needs_vfm
from glaclip.text.encoder import TextEncoder

META = torch.device("meta")
CLASSES = ["sky", "tree; bush", "road", "car"]  # five query names, four classes


def _meta_segmenter(golden_modules, base: str, **settings) -> Segmenter:
    """Models moved to meta first; the Segmenter takes their device."""
    clip, vfm, tokenizer = golden_modules
    vfm = copy.deepcopy(vfm).to(META) if needs_vfm(base) else None
    return Segmenter.from_modules(
        copy.deepcopy(clip).to(META), vfm, tokenizer, base=base, **settings
    )


@pytest.mark.parametrize("base", ["proxyclip", "clearclip", "sclip", "naclip"])
def test_public_api_on_meta_runs_every_window_and_the_attention(base, golden_modules) -> None:
    """``segment_tensor`` on meta: the windows, both backbones and the global attention run
    to the end; the run then stops in the text tower, whose embeddings are read back to the
    CPU (where they are cached) by design, with meta's "no kernel" error, not a device
    mismatch."""
    seg = _meta_segmenter(golden_modules, base)
    assert seg.device == META and seg.base.clip_normalisation[0].device == META
    if seg.vfm_tower is not None:
        assert seg.vfm_tower.mean.device == META and seg.vfm_tower.std.device == META
    seen: list[tuple[str, int, int]] = []
    x = torch.zeros(1, 3, 224, 336, device=META)
    with pytest.raises(NotImplementedError, match="(?i)meta") as err:
        seg.segment_tensor(x, CLASSES, progress=lambda *step: seen.append(step))
    assert Path(err.traceback[-1].path).name in ("encoder.py", "_ops.py")
    assert any(p.path.match("text/encoder.py") for p in err.traceback)
    n_windows = 2  # 224 x 336: two windows side by side
    assert ("windows", n_windows, n_windows) in seen
    tokens = n_windows * (28 * 28 if needs_vfm(base) else 14 * 14)
    tokens *= base_class(base).attention_spaces  # a pass per similarity space
    assert ("attention", tokens, tokens) in seen


SETTINGS = [
    {},
    {"kv_extension": False},
    {"attention_impl": "dense"},
    {"proxy_iters": 0, "prob_threshold": 0.0},
    {"token_norm": False, "dynamic_norm": False},
    {"proxy_anchor": False},
    {"block_size": 100},
    {"precision": "bf16"},
    {"pamr_steps": 2, "pamr_dilations": (1, 2), "area_threshold": 0.2},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "default")
@pytest.mark.parametrize("base", ["proxyclip", "clearclip", "sclip", "naclip"])
def test_every_stage_after_the_text_runs_on_meta(base, settings, golden_modules) -> None:
    """With the text tower on the CPU (its embeddings are cached there and moved to the
    device), the whole of ``segment_tensor`` runs on meta: stitching, the band-wise resize to
    another output size, labels with a probability threshold, and the class scores; for a
    panorama (enlarged, then padded to the window) as well."""
    seg = _meta_segmenter(golden_modules, base, **{"prob_threshold": 0.2, **settings})
    clip, _, tokenizer = golden_modules
    seg.text = TextEncoder(clip, tokenizer)  # the CPU model: embeddings computed there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 emulated on this CPU
        for size, out_size in [((224, 336), (300, 451)), ((100, 600), (100, 600))]:
            x = torch.zeros(1, 3, *size, device=META)
            out = seg.segment_tensor(x, CLASSES, output_size=out_size, return_scores=True)
            assert out.query_logits.device == META and out.query_logits.shape == (5, *size)
            assert out.labels.device == META and out.labels.shape == out_size
            assert out.labels.dtype == torch.int32
            assert out.scores is not None and out.scores.shape == (4, *out_size)


def test_from_modules_takes_a_device_and_keeps_its_index(golden_modules, monkeypatch) -> None:
    """``device=`` moves the models (buffers included); without it the models' device is kept
    whole, index included (``cuda:1`` stays ``cuda:1``)."""
    from glaclip.model import device as device_module
    from glaclip.model import segmenter

    clip, vfm, tokenizer = golden_modules
    clip, vfm = copy.deepcopy(clip), copy.deepcopy(vfm)
    seg = Segmenter.from_modules(clip, vfm, tokenizer, device="meta")
    assert {p.device for p in seg.clip_model.parameters()} == {META}
    assert {p.device for p in vfm.parameters()} == {META}
    assert {b.device for b in seg.vfm_tower.buffers()} == {META}  # the tower's mean and std

    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module.torch.cuda, "device_count", lambda: 2)
    assert device_module.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    seen = []
    monkeypatch.setattr(segmenter, "module_device", lambda m: torch.device("cuda", 1))
    monkeypatch.setattr(segmenter, "resolve_device", lambda d: seen.append(d) or META)
    Segmenter.from_modules(copy.deepcopy(golden_modules[0]), None, tokenizer, base="clearclip")
    assert seen == [torch.device("cuda", 1)]


# ---------------------------------------------------------------------------------------------
# Tensor factories name their device

SRC = Path(__file__).resolve().parents[1] / "src" / "glaclip"
FACTORIES = {"tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "linspace",
             "eye", "randn", "rand", "randint"}  # fmt: skip
# Modules that work on the CPU by design: images read from files, numpy metrics.
CPU_BY_DESIGN = {"images/prepare.py", "evaluation/metrics.py", "io/viz.py"}


def factories_without_device(source: str) -> list[tuple[int, str]]:
    """``(line, name)`` of every ``torch.<factory>(...)`` call without a ``device=`` keyword."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        func = node.func
        if not (isinstance(func.value, ast.Name) and func.value.id == "torch"):
            continue
        if func.attr in FACTORIES and not any(k.arg == "device" for k in node.keywords):
            found.append((node.lineno, f"torch.{func.attr}"))
    return found


def test_the_factory_scan_finds_what_it_should() -> None:
    source = (
        "import torch\n"
        "a = torch.zeros(3)\n"
        "b = torch.arange(4, device=x.device)\n"
        "c = torch.tensor([1.0], dtype=torch.float32)\n"
        "d = x.new_zeros(3)\n"
        "e = torch.full((2,), 1.0, device='cpu')\n"
    )
    assert factories_without_device(source) == [(2, "torch.zeros"), (4, "torch.tensor")]


def test_every_tensor_factory_in_src_names_its_device() -> None:
    """A tensor made without ``device=`` lands on the CPU whatever the inputs' device: on a GPU
    the next operation with a device tensor fails. Places that are on the CPU by design say
    ``device="cpu"``; the modules in ``CPU_BY_DESIGN`` are exempt."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).as_posix() in CPU_BY_DESIGN:
            continue
        for line, name in factories_without_device(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(SRC)}:{line}: {name}")
    assert offenders == [], "tensor factories without device=:\n" + "\n".join(offenders)
