"""Make the golden fixtures of the SCLIP and NACLIP bases and of PAMR in ``tests/golden_bases/``.

It runs the authors' own code, unmodified, on the tiny random CLIP of ``tests/base_golden.py``:
SCLIP's ``clip_segmentor.CLIPForSegmentation`` and NACLIP's ``naclip.NACLIP``, each loading the
tiny model through its own ``clip.load`` from a checkpoint file, and their ``pamr.PAMR``. mmseg
and mmengine are not needed: the few names the two files import from them are stubbed here, and
``predict`` is fed the already normalised image (the data preprocessor is bypassed) with a data
sample that holds the original size. Everything runs on the CPU in float32.

What the fixtures hold is read off the authors' code as it runs (``Snapshot``: a local variable
at a given line, by ``sys.settrace``), not recomputed: the stitched logits before the final
resize, the class probabilities after the softmax and the maximum over synonyms, the labels,
the text features.

Usage (the two repositories exported to folders, e.g. with ``git archive``)::

    python tests/make_base_golden.py --sclip PATH/TO/SCLIP --naclip PATH/TO/NACLIP
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.base_golden import (  # noqa: E402
    BASE_CASES,
    BASES_DIR,
    CASE_SPECS,
    MODEL_SEED,
    PAMR_CASES,
    PAMR_SPECS,
    SUBGRID_START,
    SUBGRID_STEP,
    remake_image,
    remake_pamr_inputs,
    state_sha256,
    tensor_sha256,
    tiny_state_dict,
)


# ----------------------------------------------------------------------------- the stubs
def install_stubs() -> None:
    """Stand-ins for the names the authors' segmentors import from mmseg, mmengine and
    pkg_resources (only what their ``__init__`` and ``predict`` use)."""

    def module(name: str, **attrs) -> types.ModuleType:
        m = sys.modules.get(name) or types.ModuleType(name)
        for key, value in attrs.items():
            setattr(m, key, value)
        sys.modules[name] = m
        return m

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__()
            self.data_preprocessor = data_preprocessor

    class SegDataPreProcessor:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    class PixelData:
        def __init__(self, **kwargs):
            for key, value in kwargs.items():
                setattr(self, key, value)

    import packaging.version

    module("pkg_resources", packaging=packaging)
    module("mmseg")
    module("mmseg.models")
    module("mmseg.models.segmentors", BaseSegmentor=BaseSegmentor)
    module("mmseg.models.data_preprocessor", SegDataPreProcessor=SegDataPreProcessor)
    module("mmseg.registry", MODELS=Registry())
    module("mmengine")
    module("mmengine.structures", PixelData=PixelData)


class DataSample:
    """mmseg's ``SegDataSample`` as the segmentors use it: ``metainfo`` and ``set_data``."""

    def __init__(self, ori_shape: tuple[int, int], img_path: str) -> None:
        self.metainfo = {"ori_shape": tuple(ori_shape), "img_path": img_path}

    def set_data(self, data: dict) -> None:
        for key, value in data.items():
            setattr(self, key, value)


_OWN = ("clip", "pamr", "prompts", "clip_segmentor", "naclip")


def load_repo(path: Path, segmentor_module: str) -> dict[str, types.ModuleType]:
    """Import one repository's modules (``clip``, ``pamr``, ``prompts.imagenet_template`` and
    its segmentor). Both repositories name their modules alike, so the previous one's are
    dropped from ``sys.modules`` first; the returned modules keep working."""
    for name in list(sys.modules):
        if name.split(".")[0] in _OWN:
            del sys.modules[name]
    sys.path.insert(0, str(path))
    try:
        mods = {
            "clip": importlib.import_module("clip"),
            "pamr": importlib.import_module("pamr"),
            "templates": importlib.import_module("prompts.imagenet_template"),
            "segmentor": importlib.import_module(segmentor_module),
        }
    finally:
        sys.path.remove(str(path))
    for name, mod in mods.items():
        file = Path(mod.__file__).resolve()
        if path.resolve() not in file.parents:
            raise RuntimeError(f"{name} was imported from {file}, not from {path}")
    return mods


# ----------------------------------------------------------------------------- snapshots
class Snapshot:
    """Copies of local variables of a function, taken when a given line is about to run.

    ``Snapshot({(function, "source line"): "variable", ...})`` as a context manager; each
    source line (stripped) must occur exactly once in its function. ``values[variable]`` is a
    list of clones, one per time the line ran.
    """

    def __init__(self, points: dict[tuple[object, str], str]) -> None:
        self.where: dict[tuple[types.CodeType, int], str] = {}
        for (func, text), name in points.items():
            lines, first = inspect.getsourcelines(func)
            hits = [first + i for i, line in enumerate(lines) if line.strip() == text]
            if len(hits) != 1:
                raise RuntimeError(f"{text!r} occurs {len(hits)} times in {func.__qualname__}")
            self.where[(func.__code__, hits[0])] = name
        self.codes = {code for code, _ in self.where}
        self.values: dict[str, list[torch.Tensor]] = {name: [] for name in self.where.values()}

    def _local(self, frame, event, arg):
        if event == "line":
            name = self.where.get((frame.f_code, frame.f_lineno))
            if name is not None:
                self.values[name].append(frame.f_locals[name].detach().clone())
        return self._local

    def _global(self, frame, event, arg):
        return self._local if frame.f_code in self.codes else None

    def __enter__(self) -> Snapshot:
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._previous)

    def one(self, name: str) -> torch.Tensor:
        values = self.values[name]
        if len(values) != 1:
            raise RuntimeError(f"{name} was seen {len(values)} times")
        return values[0]


# ----------------------------------------------------------------------------- running
def class_file(lines: list[str], folder: Path) -> Path:
    """The class lines in the authors' syntax (synonyms separated by ``, ``)."""
    path = folder / "classes.txt"
    path.write_text("\n".join(line.replace("; ", ", ") for line in lines))
    return path


def reference_segmentor(kind: str, mods, checkpoint: Path, names: Path, settings: dict):
    """The authors' segmentor for a case's glaclip settings (their keyword arguments)."""
    common = {
        "clip_path": str(checkpoint),
        "name_path": str(names),
        "device": "cpu",
        "pamr_steps": settings["pamr_steps"],
        "pamr_stride": tuple(settings["pamr_dilations"]),
        "prob_thd": settings["prob_threshold"],
        "logit_scale": settings["logit_scale"],
        "slide_stride": settings["stride"],
        "slide_crop": 0 if settings["whole_image"] else settings["crop"],
    }
    if kind == "sclip":
        area = settings["area_threshold"]
        cls = mods["segmentor"].CLIPForSegmentation
        return cls(**common, area_thd=area if area > 0 else None), common
    cls = mods["segmentor"].NACLIP
    extra = {
        "arch": settings["naclip_arch"],
        "attn_strategy": "naclip",
        "gaussian_std": settings["gaussian_std"],
    }
    return cls(**common, **extra), {**common, **extra}


def snapshot_points(kind: str, mods) -> dict[tuple[object, str], str]:
    """Where the stitched logits and the class probabilities are read (see the docstring)."""
    if kind == "sclip":
        cls = mods["segmentor"].CLIPForSegmentation
        return {
            (cls.forward_slide, "img_size = img_metas[0]['ori_shape'][:2]"): "preds",
            (cls.postprocess_result, "if self.area_thd is not None:"): "seg_logits",
        }
    cls = mods["segmentor"].NACLIP
    return {
        (cls.predict, "img_size = batch_img_metas[0]['ori_shape']"): "seg_logits",
        (cls.postprocess_result, "seg_pred = seg_probs.argmax(0, keepdim=True)"): "seg_probs",
    }


def run_case(case: str, mods: dict, checkpoint: Path, work: Path) -> dict:
    """One case through the authors' segmentor: the compact fixture."""
    spec = CASE_SPECS[case]
    settings, params = dict(spec["settings"]), dict(spec["params"])
    kind = settings["base"]
    names = class_file(spec["class_lines"], work)
    model, kwargs = reference_segmentor(kind, mods, checkpoint, names, settings)
    model.eval()
    image = remake_image(params)
    out_h, out_w = params["output_size"]
    sample = DataSample((out_h, out_w), f"images/{case}.png")
    with torch.no_grad(), Snapshot(snapshot_points(kind, mods)) as snap:
        model.predict(image, [sample])
    logits_name, probs_name = snapshot_points(kind, mods).values()
    logits = snap.one(logits_name)[0]
    probs = snap.one(probs_name)
    if probs.shape[0] != len(spec["class_lines"]):
        raise RuntimeError(f"{case}: {probs.shape[0]} probability maps")
    pred = sample.pred_sem_seg.data[0]
    if logits.shape[-2:] != image.shape[-2:] or pred.shape != (out_h, out_w):
        raise RuntimeError(f"{case}: logits {tuple(logits.shape)}, labels {tuple(pred.shape)}")
    exercised = what_it_exercises(probs, pred, settings)
    print(f"{case}: {exercised}")
    s, t = SUBGRID_START, SUBGRID_STEP
    g = {
        "class_lines": list(spec["class_lines"]),
        "settings": settings,
        "params": {
            **params,
            "image_sha256": tensor_sha256(image),
            "reference": kwargs_for_record(kind, kwargs),
            **exercised,
        },
        "text_features": model.query_features.float().contiguous(),
        "logits": logits[:, s::t, s::t].float().contiguous(),
        "pred": pred.to(torch.uint8).contiguous(),
        "subgrid": {"start": s, "step": t},
    }
    if settings["pamr_steps"] > 0 or (out_h, out_w) != image.shape[-2:]:
        g["probs"] = probs[:, s::t, s::t].float().contiguous()
    return g


def what_it_exercises(probs: torch.Tensor, pred: torch.Tensor, settings: dict) -> dict:
    """Which post-processing steps changed labels: the classes the area threshold dropped
    (those that won pixels), and the pixels the probability threshold set to 0."""
    winner = probs.argmax(0)
    counts = torch.bincount(winner.flatten(), minlength=probs.shape[0])
    dropped = []
    if settings["area_threshold"] > 0:
        keep = counts[1:] > settings["area_threshold"] * counts[1:].sum()
        dropped = [c + 1 for c in range(len(keep)) if not keep[c] and counts[c + 1] > 0]
        probs = probs.clone()
        probs[1:] *= keep.to(probs.dtype)[:, None, None]
    best, winner = probs.max(0)
    zeroed = int(((best < settings["prob_threshold"]) & (winner != 0)).sum())
    if not torch.equal(torch.where(best < settings["prob_threshold"], 0, winner), pred.long()):
        raise RuntimeError("the labels are not the thresholded argmax of the probabilities")
    return {"area_dropped_classes": dropped, "prob_threshold_zeroed_pixels": zeroed}


def kwargs_for_record(kind: str, kwargs: dict) -> dict:
    """The authors' constructor arguments, without the temporary paths."""
    cls = "clip_segmentor.CLIPForSegmentation" if kind == "sclip" else "naclip.NACLIP"
    rest = {k: v for k, v in kwargs.items() if k not in ("clip_path", "name_path", "device")}
    return {"class": cls, **rest}


def run_pamr(case: str, pamr_module) -> dict:
    """One PAMR unit case through the authors' ``PAMR`` module."""
    spec = PAMR_SPECS[case]
    image, logits = remake_pamr_inputs(spec)
    module = pamr_module.PAMR(spec["steps"], dilations=list(spec["dilations"]))
    with torch.no_grad():
        out = module(image, logits)
    return {
        "params": dict(spec),
        "inputs_sha256": tensor_sha256(image, logits),
        "refined": out.float().contiguous(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sclip", type=Path, required=True, help="SCLIP's repository (a folder)")
    parser.add_argument("--naclip", type=Path, required=True, help="NACLIP's repository")
    parser.add_argument("--out", type=Path, default=BASES_DIR, help="default tests/golden_bases")
    parser.add_argument("--cases", nargs="*", default=None, help="only these cases")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    install_stubs()
    state = tiny_state_dict(MODEL_SEED)
    sha = state_sha256(state)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = args.cases or BASE_CASES + PAMR_CASES
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = work / "tiny_clip.pt"
        torch.save(dict(state), checkpoint)
        repos = {"sclip": (args.sclip, "clip_segmentor"), "naclip": (args.naclip, "naclip")}
        pamr_outputs: dict[str, dict[str, torch.Tensor]] = {}
        for kind, (path, segmentor) in repos.items():
            mods = load_repo(path, segmentor)
            for case in BASE_CASES:
                if case in wanted and CASE_SPECS[case]["settings"]["base"] == kind:
                    g = run_case(case, mods, checkpoint, work)
                    g["params"]["model_sha256"] = sha
                    torch.save(g, args.out / f"{case}.pt")
                    print(case, "written")
            for case in PAMR_CASES:
                if case in wanted:
                    pamr_outputs.setdefault(case, {})[kind] = run_pamr(case, mods["pamr"])
        for case, outs in pamr_outputs.items():
            same = torch.equal(outs["sclip"]["refined"], outs["naclip"]["refined"])
            diff = (outs["sclip"]["refined"] - outs["naclip"]["refined"]).abs().max().item()
            print(f"{case}: SCLIP's and NACLIP's pamr.py agree: {same} (max diff {diff:.1e})")
            torch.save(outs["naclip"], args.out / f"{case}.pt")
    total = sum(p.stat().st_size for p in args.out.glob("*.pt"))
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
