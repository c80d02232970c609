"""``benchmarks/gpu_check.py`` in its CPU form (``--device cpu --quick``), so that the GPU check
cannot rot between the rare runs on a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_form_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert list(record["steps"]) == ["golden", "segment", "bench", "torchrun"]
    assert all(step["ok"] for step in record["steps"].values()), record
    log = (out / "gpu_check.log").read_text()
    assert log.count("PASSED tests/test_golden.py::test_golden_case[") == 12  # compact set
    assert log.count("PASSED tests/test_base_golden.py::test_base_case[") == 7  # SCLIP, NACLIP
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
