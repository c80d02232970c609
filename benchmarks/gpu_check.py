"""One-shot check of glaclip on a GPU: faithful, working end to end, and how fast.

    python benchmarks/gpu_check.py --device cuda --out gpu-check/   # under 8 minutes on an H200
    python benchmarks/gpu_check.py --device cpu --quick               # the same steps, small

Each step prints its results as it goes, and the run ends with one line per step (PASS/FAIL);
the exit status is 1 if any step failed. With ``--out DIR`` the whole log and a JSON summary
(``gpu_check.log``, ``gpu_check.json``) are written there too. The steps:

1. **golden**: the reference implementation's twelve cases (``tests/test_golden.py``) and
   SCLIP's and NACLIP's (``tests/test_base_golden.py``) run on the device with TF32 off, under
   the CPU's tolerance rule (``GLACLIP_TEST_DEVICE``; ``--quick``: one case per base);
2. **segment**: ``glaclip segment`` on the device for every base method with the tiny models
   of ``glaclip tiny-models`` (``local-dir:`` checkpoints), its label PNG compared with the
   CPU's;
3. **bench**: ``benchmarks/bench_segment.py --device DEVICE`` with the paper's architectures
   (random weights): 336x448, 560x1120, 1024x1024 and 2048x2048, GLA on ProxyCLIP, ClearCLIP,
   SCLIP and NACLIP, fp32/bf16/fp16,
   the blocked attention and, where it fits, the dense oracle; seconds per stage, images per
   second, peak memory and the attention's block size (``--quick``: the tests' tiny models at
   224x336, fp32, blocked);
4. **torchrun**: ``glaclip eval`` of a synthetic three-image VOC benchmark under
   ``torchrun --nproc-per-node 1`` (nccl on CUDA, gloo on the CPU).

It needs the repository (tests/ holds the tiny models) and glaclip importable (installed, or
``PYTHONPATH=src``); it runs glaclip as ``python -m glaclip``, so no console script is needed.
On a machine that reaches no package index, install open_clip_torch and ftfy (and its wcwidth)
from downloaded wheels first (``pip install --no-index --no-deps WHEELS``): they are the only
dependencies missing from a usual CUDA PyTorch image.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FULL_SIZES = "336x448,560x1120,1024x1024,2048x2048"


class Log:
    """Prints and keeps every line (for ``--out``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def run(cmd: list[str], log: Log, env: dict[str, str] | None = None, timeout: int = 600) -> int:
    """Run ``cmd``, streaming its output into the log; its exit status (124 on timeout)."""
    log("$ " + " ".join(cmd))
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or _env(),
        cwd=REPO,
    ) as proc:
        start = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            log("    " + line.rstrip())
            if time.monotonic() - start > timeout:
                proc.kill()
                log(f"    (stopped after {timeout} s)")
                return 124
        return proc.wait()


# ---------------------------------------------------------------------------------------------
# The steps


# the quick form's golden cases: one per base (the test suite runs them all on the CPU)
QUICK_GOLDEN = (
    "(test_golden_case and compact and (gla_default or clearclip_gla-compact)) or "
    "(test_base_case and (sclip_voc21 or naclip_whole))"
)


def step_golden(args: argparse.Namespace, log: Log, work: Path) -> tuple[bool, str]:
    env = dict(_env(), GLACLIP_TEST_DEVICE=args.device)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"]
    which = QUICK_GOLDEN if args.quick else "test_golden_case or test_base_case"
    cmd += [str(REPO / "tests" / "test_golden.py"), str(REPO / "tests" / "test_base_golden.py")]
    cmd += ["-k", which]
    code = run(cmd, log, env)
    return code == 0, f"golden cases on {args.device}: exit {code}"


def _tiny_checkpoints(work: Path) -> dict[str, str]:
    """``glaclip tiny-models``' random models, written once per run."""
    from glaclip.model.tiny import write_tiny_models

    tiny = write_tiny_models(work / "tiny_models", overwrite=True)
    return {"clip": tiny.clip, "vfm": tiny.vfm}


def _photo(path: Path, height: int = 360, width: int = 480) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, size=(height // 24 + 1, width // 24 + 1, 3), dtype=np.uint8)
    rgb = np.kron(blocks, np.ones((24, 24, 1), np.uint8))[:height, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path)
    return path


def step_segment(args: argparse.Namespace, log: Log, work: Path) -> tuple[bool, str]:
    from PIL import Image

    models = _tiny_checkpoints(work)
    photo = _photo(work / "photos" / "street.png")
    summary, ok = [], True
    from glaclip.registry import base_class, registered

    for base in registered():
        labels = {}
        for device in dict.fromkeys([args.device, "cpu"]):
            out = work / f"segment-{base}-{device.replace(':', '')}"
            cmd = [sys.executable, "-m", "glaclip", "segment", str(photo)]
            cmd += ["--classes", "sky, road, car, tree, person; man; woman", "--out", str(out)]
            cmd += ["--base", base, "--clip", models["clip"], "--device", device]
            cmd += ["--text-cache", str(work / "text"), "--no-progress"]
            if base_class(base).needs_vfm:
                cmd += ["--vfm", models["vfm"]]
            if not base_class(base).attention_spaces:  # per window only (MaskCLIP)
                cmd += ["--no-kv-extension"]
            code = run(cmd, log)
            png = out / "street.png"
            if code != 0 or not png.is_file() or not (out / "street.json").is_file():
                ok = False
                summary.append(f"{base} on {device}: exit {code}")
                break
            labels[device] = np.asarray(Image.open(png))
        if len(labels) == 2:
            same = float((labels[args.device] == labels["cpu"]).mean())
            summary.append(f"{base}: labels equal to the CPU's on {100 * same:.3f} % of pixels")
            log(f"  {summary[-1]}")
            ok = ok and same >= 0.999
        elif labels:
            summary.append(f"{base}: segmented on {args.device}")
    return ok, "; ".join(summary)


BENCH_BASES = ("proxyclip", "clearclip", "sclip", "naclip")  # GLA on each


def step_bench(args: argparse.Namespace, log: Log, work: Path) -> tuple[bool, str]:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_segment.py")]
    cmd += ["--device", args.device, "--bases", ",".join(BENCH_BASES), "--one-process"]
    cmd += ["--text-cache", str(work / "bench_text"), "--json", str(work / "bench.json")]
    if args.quick:  # the code paths only: the tests' tiny models
        cmd += ["--sizes", "224x336", "--precisions", "fp32", "--impl", "blocked"]
        cmd += ["--models", "tiny"]
    else:
        cmd += ["--sizes", args.sizes, "--precisions", "fp32,bf16,fp16", "--impl", "blocked,dense"]
        cmd += ["--warmup", "1", "--repeat", "3"]
    code = run(cmd, log, timeout=args.bench_timeout)
    results = []
    if (work / "bench.json").is_file():
        results = json.loads((work / "bench.json").read_text())["results"]
    bases = len(BENCH_BASES)
    expected = bases if args.quick else bases * len(args.sizes.split(",")) * 3
    blocked = [r for r in results if r["impl"] == "blocked"]
    ok = code == 0 and len(blocked) == expected
    return ok, f"{len(results)} configurations measured ({len(blocked)} of {expected} blocked)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _voc(root: Path) -> None:
    """Three VOC images, their palette label maps (classes 0-3 and 255) and the split file."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"2008_00000{i}" for i in range(3)]
    for i, sample in enumerate(ids):
        h, w = 240 + 16 * i, 320
        _photo(root / "JPEGImages" / f"{sample}.jpg", h, w)
        label = rng.integers(0, 4, size=(h // 40 + 1, w // 40 + 1)).astype(np.uint8)
        label = np.kron(label, np.ones((40, 40), np.uint8))[:h, :w]
        label[:4] = 255
        im = Image.fromarray(label, mode="L").convert("P")
        im.save(root / "SegmentationClass" / f"{sample}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")


def step_torchrun(args: argparse.Namespace, log: Log, work: Path) -> tuple[bool, str]:
    models = _tiny_checkpoints(work)
    root = work / "VOC2012"
    _voc(root)
    classes = work / "classes.txt"
    classes.write_text("background; sky; wall\ncat\ndog\nperson; man\n")
    out = work / "eval"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1"]
    cmd += [f"--master-port={_free_port()}", "-m", "glaclip", "eval", "--dataset", "voc21"]
    cmd += ["--data-root", str(root), "--class-file", str(classes), "--out", str(out)]
    cmd += ["--clip", models["clip"], "--vfm", models["vfm"], "--device", args.device]
    cmd += ["--text-cache", str(work / "text"), "--no-progress"]
    code = run(cmd, log)
    results = out / "results.json"
    if code != 0 or not results.is_file():
        return False, f"exit {code}"
    data = json.loads(results.read_text())
    images = data.get("num_images") or data.get("images")
    return True, f"mIoU {data['mIoU']:.2f} on {images} image(s)"


STEPS = {
    "golden": step_golden,
    "segment": step_segment,
    "bench": step_bench,
    "torchrun": step_torchrun,
}


# ---------------------------------------------------------------------------------------------


def describe(device: str) -> str:
    import torch

    from glaclip.model.device import describe_device, resolve_device

    parts = [f"torch {torch.__version__}", describe_device(resolve_device(device))]
    if device.startswith("cuda"):
        parts.append(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="small sizes only (the CPU's form)")
    parser.add_argument("--sizes", default=FULL_SIZES, help=f"bench sizes (default {FULL_SIZES})")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help=f"which steps (default: {','.join(STEPS)})"
    )
    parser.add_argument("--bench-timeout", type=int, default=330, help="seconds for the bench")
    parser.add_argument("--out", help="folder for gpu_check.log and gpu_check.json")
    args = parser.parse_args(argv)
    log = Log()
    log(f"glaclip GPU check: {describe(args.device)}")
    summary: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="glaclip-gpu-check-") as tmp:
        for name in args.steps.split(","):
            if name not in STEPS:
                parser.error(f"unknown step {name!r}: choose from {', '.join(STEPS)}")
            log(f"\n== {name}")
            start = time.monotonic()
            try:
                ok, text = STEPS[name](args, log, Path(tmp))
            except Exception as err:  # one broken step must not hide the others' results
                ok, text = False, f"{type(err).__name__}: {err}"
            seconds = time.monotonic() - start
            summary[name] = {"ok": ok, "summary": text, "seconds": round(seconds, 1)}
            log(f"== {name}: {'PASS' if ok else 'FAIL'} ({seconds:.0f} s): {text}")
        if args.out and Path(tmp, "bench.json").is_file():
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(tmp, "bench.json").replace(Path(args.out) / "bench.json")
    log("\nsummary:")
    for name, entry in summary.items():
        log(f"  {name:>9}: {'PASS' if entry['ok'] else 'FAIL'}  {entry['summary']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.log").write_text("\n".join(log.lines) + "\n")
        record = {"device": describe(args.device), "quick": args.quick, "steps": summary}
        (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
    return 0 if all(entry["ok"] for entry in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
