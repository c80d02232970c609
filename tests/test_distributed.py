"""Work splitting, and `glaclip eval` / `glaclip segment` under torchrun with two gloo processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glaclip.cli.main import main
from glaclip.io.outputs import read_manifest
from glaclip.model.distributed import DistInfo, all_reduce_sum, dist_info_from_env, shard
from tests.waiting import free_port

from .test_evaluate import make_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
METRIC_KEYS = ("mIoU", "mAcc", "aAcc", "BER", "per_class", "ber_pairs", "num_images")


@pytest.mark.parametrize("n", [0, 1, 5, 7])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_covers_every_item_once(n: int, world: int) -> None:
    items = list(range(n))
    parts = [shard(items, DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert sorted(x for p in parts for x in p) == items  # no duplicate, none missing
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1  # no padding


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = dist_info_from_env()
    assert (info.rank, info.world_size, info.enabled, info.is_main) == (0, 1, False, True)
    t = torch.tensor([3, 4])
    assert all_reduce_sum(t, info) is t
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    info = dist_info_from_env()
    assert (info.rank, info.world_size, info.is_main) == (1, 3, False)


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process: this checkout's glaclip, the CPU, one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["PYTHONFAULTHANDLER"] = "1"  # a worker that aborts shows where
    return env


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node N -m glaclip ARGS`` on the CPU."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    cmd += [f"--master-port={free_port()}", "-m", "glaclip", *args]
    return subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=300)


def one_thread(argv: list[str]) -> int:
    """``main(argv)`` with one intra-op thread: the same arithmetic as the torchrun workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """Three VOC images (an odd count: 2 + 1 per rank) and a 4-class vocabulary."""
    base = tmp_path_factory.mktemp("dist")
    root = base / "VOC2012"
    made = make_dataset(root, "voc", [0, 1, 2, 3], count=3)
    class_file = base / "classes.txt"
    class_file.write_text("background; sky; wall\ncat\ndog\nperson; man\n")
    return root, class_file, made


def test_eval_two_processes_equals_one(
    small_voc: tuple[Path, Path, dict], tiny_model_args: list[str], tmp_path: Path
) -> None:
    """Two processes resume a single-process run that stopped after one image (one torchrun
    for both: each costs three interpreters), with the numbers of a single-process run."""
    root, class_file, made = small_voc
    common = ["eval", "--dataset", "voc21", "--data-root", str(root)]
    common += ["--class-file", str(class_file), "--short-side", "224", "--no-progress"]
    assert one_thread(common + ["--out", str(tmp_path / "one")] + tiny_model_args) == 0
    single = json.loads((tmp_path / "one" / "results.json").read_text())

    out, pred = tmp_path / "two", tmp_path / "pred"
    argv = common + ["--out", str(out), "--save-predictions", str(pred)] + tiny_model_args
    assert one_thread(argv + ["--limit", "1"]) == 0
    proc = torchrun(argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = json.loads((out / "results.json").read_text())
    for key in METRIC_KEYS:
        assert double[key] == single[key], key
    assert double["world_size"] == 2
    assert double["resumed_images"] == 1
    assert double["processed_per_rank"] == [1, 1]  # the two others, once each
    written = sorted(p.name for p in pred.iterdir() if p.name != ".glaclip-outputs")
    assert written == sorted(f"{i}.png" for i in made)
    assert read_manifest(pred) == set(written)  # every process recorded its files
    state = sorted(p.name for p in (out / "eval_state").iterdir())
    assert "rank1.jsonl" in state and "rank0.jsonl" in state
    assert proc.stderr.count("wrote " + str(out / "results.json")) == 1  # rank 0 alone


def test_eval_all_two_processes_equals_one(tiny_model_args: list[str], tmp_path: Path) -> None:
    """Every rank runs the same sequence, through a benchmark that fails on one rank only."""
    root = tmp_path / "data"
    make_dataset(root / "VOCdevkit/VOC2012", "voc", [0, 1, 15, 20], count=3)
    make_dataset(root / "VOCdevkit/VOC2010", "context", [0, 1, 59], count=3)
    bad = root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000001.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(bad)  # image 2 of 3: rank 1's
    common = ["eval", "--dataset", "all", "--data-root", str(root), "--short-side", "224"]
    common += ["--no-progress"] + tiny_model_args
    assert one_thread(common + ["--out", str(tmp_path / "one")]) == 1
    single = json.loads((tmp_path / "one" / "table1.json").read_text())

    proc = torchrun(common + ["--out", str(tmp_path / "two")])
    assert proc.returncode != 0, proc.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "table1.json").read_text())
    ran = ["voc21", "voc20"]  # Context60 fails before VOC20 runs, Context59 after
    assert [r["dataset"] for r in single["benchmarks"]] == ran
    assert [r["dataset"] for r in double["benchmarks"]] == ran
    for one, two in zip(single["benchmarks"], double["benchmarks"], strict=True):
        for key in ("mIoU", "aAcc", "BER", "num_images"):
            assert two[key] == one[key], key
    assert double["average"] == single["average"]
    assert [f["dataset"] for f in double["failed"]] == ["context60", "context59"]
    for failure in double["failed"]:  # rank 1's message, in rank 0's table
        assert failure["error"].startswith("rank 1: label ") and str(bad) in failure["error"]
    assert proc.stderr.count(str(bad)) == 2  # printed by rank 0, once per benchmark
    assert proc.stderr.count("Table 1: average mIoU") == 1  # rank 0 alone
    voc20 = json.loads((tmp_path / "two" / "voc20" / "results.json").read_text())
    assert voc20["processed_per_rank"] == [2, 1]


def test_segment_two_processes_write_each_image_once(
    small_voc: tuple[Path, Path, dict], tiny_model_args: list[str], tmp_path: Path
) -> None:
    root, class_file, made = small_voc
    out = tmp_path / "seg"
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a picture")
    proc = torchrun(
        ["segment", str(root / "JPEGImages"), str(broken), "--class-file", str(class_file)]
        + ["--out", str(out), "--no-overlay", "--short-side", "224"]
        + tiny_model_args
    )
    assert proc.returncode != 0  # a file failed
    # one summary for the run, from rank 0: 3 images done, the broken one reported once
    assert re.findall(r"segmented (\d+) image\(s\) into .*; (\d+) failed", proc.stderr) == [
        ("3", "1")
    ]
    assert proc.stderr.count("skipped:") == 1 and "broken.jpg" in proc.stderr
    expected = sorted(f"{i}{ext}" for i in made for ext in (".png", ".json"))
    assert sorted(p.name for p in out.iterdir() if p.name != ".glaclip-outputs") == expected
    assert read_manifest(out) == set(expected)  # both ranks recorded their files


LEAVE_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
import torch.distributed as dist
from glaclip.model.distributed import process_group

out, mode = Path(sys.argv[1]), sys.argv[2]
record = {}
try:
    with process_group("cpu") as (info, _):
        t = torch.ones(1)
        dist.all_reduce(t)  # the last collective
        if info.rank == 1:
            time.sleep(1.5)  # work after it: writing outputs, say
            record["done"] = time.time()
            if mode == "fail":
                raise RuntimeError("rank 1 failed after its collectives")
finally:
    record["left"] = time.time()
    (out / f"{dist.get_rank() if dist.is_initialized() else sys.argv[3]}.json").write_text(
        json.dumps(record)
    )
"""


def _two_gloo_processes(tmp_path: Path, mode: str) -> tuple[list[subprocess.Popen], Path]:
    """Two processes that join one gloo group the way torchrun's workers do (``env://``)."""
    out = tmp_path / mode
    out.mkdir()
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_SCRIPT)
    env = worker_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out), mode, str(rank)],
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    return procs, out


def test_ranks_leave_the_process_group_together(tmp_path: Path) -> None:
    """After a clean run no rank closes its connections while another is still at work (a
    peer that reads from a closed gloo connection can abort); after one rank's error
    the others are not held: rank 0 leaves as soon as the failed rank has left."""
    runs = {mode: _two_gloo_processes(tmp_path, mode) for mode in ("clean", "fail")}
    for mode, (procs, out) in runs.items():
        codes = [p.wait(timeout=120) for p in procs]
        errors = [p.stderr.read() for p in procs]
        assert codes == ([0, 0] if mode == "clean" else [0, 1]), errors
        first, second = (json.loads((out / f"{r}.json").read_text()) for r in (0, 1))
        assert first["left"] >= second["done"], mode  # rank 0 waited for rank 1
        assert first["left"] - second["done"] < 60, mode  # and no longer
        if mode == "fail":
            assert "rank 1 failed after its collectives" in errors[1]
