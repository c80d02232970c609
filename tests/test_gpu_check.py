"""``benchmarks/gpu_check.py`` in its CPU form (``--device cpu --quick``), so that the GPU check
cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

from glaclip.cli.main import main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_form_runs_every_step_on_the_cpu(tmp_path: Path, monkeypatch, capsys) -> None:
    """Every step as the GPU run makes it. To spare five interpreters (each imports torch,
    open_clip and timm: about 6 s of CPU), the script, its ``python -m glaclip`` commands, the
    golden cases' pytest (a second session, with the step's environment, output not captured)
    and the benchmark's parent run in this process with the same arguments; the benchmark's
    measuring children and torchrun run as subprocesses, as they do on a GPU."""
    check = _module()
    real_run = check.run
    bench = str(SCRIPT.parent / "bench_segment.py")

    def run(cmd: list[str], log, env=None, timeout: int = 600) -> int:
        if cmd[1:3] == ["-m", "glaclip"]:
            entry, argv = main, cmd[3:]
        elif cmd[1] == bench:
            entry, argv = runpy.run_path(bench, run_name="bench_segment")["main"], cmd[2:]
        elif cmd[1:3] == ["-m", "pytest"]:
            for key, value in (env or {}).items():
                if os.environ.get(key) != value:
                    monkeypatch.setenv(key, value)
            entry, argv = pytest.main, [*cmd[3:], "-s"]
        else:
            return real_run(cmd, log, env, timeout)
        log("$ " + " ".join(cmd))
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            code = entry(argv)
        for line in text.getvalue().splitlines():
            log("    " + line)
        return code

    monkeypatch.setattr(check, "run", run)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the benchmark adds its folder
    out = tmp_path / "out"
    with torch.random.fork_rng(devices=[]):  # the other tests' random state, as it was
        code = check.main(["--device", "cpu", "--quick", "--out", str(out)])
    assert code == 0, capsys.readouterr().out[-4000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert list(record["steps"]) == ["golden", "segment", "bench", "torchrun"]
    assert all(step["ok"] for step in record["steps"].values()), record
    log = (out / "gpu_check.log").read_text()
    assert log.count("PASSED tests/test_golden.py::test_golden_case[") == 2  # one per base
    assert log.count("PASSED tests/test_base_golden.py::test_base_case[") == 2  # SCLIP, NACLIP
    assert log.count("-m glaclip segment") == 5  # one per base
    assert "gla_default [compact] on cpu: " in log  # the agreement figures, per case
    for base in ("proxyclip", "clearclip", "sclip", "naclip", "maskclip"):
        assert f"{base}: labels equal to the CPU's" in log or f"{base}: segmented on" in log
    bench = json.loads((out / "bench.json").read_text())["results"]
    assert {(r["base"], r["size"], r["impl"]) for r in bench} == {
        (base, "224x336", "blocked") for base in ("proxyclip", "clearclip", "sclip", "naclip")
    }
    assert all(r["block"] > 0 and r["seconds"] > 0 for r in bench)
    assert "voc21: mIoU" in log and "running on cpu" in log


def test_a_failing_step_fails_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    check = _module()
    monkeypatch.setattr(check, "STEPS", {"first": lambda *a: (False, "broken"),
                                         "second": lambda *a: (True, "fine")})  # fmt: skip
    assert check.main(["--device", "cpu", "--steps", "first,second", "--out", str(tmp_path)]) == 1
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["steps"]["first"]["ok"] is False and record["steps"]["second"]["ok"] is True
    assert "first: FAIL  broken" in capsys.readouterr().out
