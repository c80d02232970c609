"""Runs that were killed or stopped: a rerun removes the temporary files a killed write left,
SIGTERM ends a run as Ctrl-C does (status 143, lock removed), and a full disk during ``eval``
names the file it could not write."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from glaclip.atomic import remove_stale_temporaries, temporary_name
from glaclip.cli.main import main
from glaclip.evaluation.state import STATE_DIR
from tests.test_evaluate import _small_voc, fast_text

__all__ = ["fast_text"]  # the module-wide fixture: one prompt template
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}


def _killed_while_writing(path: Path) -> Path:
    """Run a process that writes ``path`` atomically and is killed (SIGKILL) in the middle:
    returns the temporary file it left."""
    script = (
        "import sys, time\n"
        "from glaclip.atomic import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.write_bytes(b'half a file')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(600)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    tmp = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert tmp.is_file() and tmp.parent == path.parent
    return tmp


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def test_a_rerun_of_segment_removes_what_a_killed_write_left(tiny_model_args, tmp_path) -> None:
    photo = _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    left = _killed_while_writing(out / "a.png")
    live = temporary_name(out / "b.png")  # a write of this process, still going on
    live.write_bytes(b"")
    args = ["segment", str(photo), "--classes", "sky, tree", "--out", str(out), "--no-progress"]
    assert main(args + tiny_model_args) == 0
    assert not left.exists() and live.exists()
    assert (out / "a.json").is_file()


def test_a_rerun_of_prepare_removes_stale_temporaries_only(tmp_path) -> None:
    src = tmp_path / "annotations" / "val2017"
    src.mkdir(parents=True)
    Image.fromarray(np.array([[0, 181]], np.uint8)).save(src / "1.png")
    left = _killed_while_writing(src / "1_labelTrainIds.png")
    old = src / ".glaclip-0123456789abcdef.tmp"  # of an older glaclip, two hours old
    old.write_bytes(b"")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh_foreign = src / ".glaclip-ffff000001abcdef.tmp"  # another machine's, just now
    fresh_foreign.write_bytes(b"")
    code = main(["prepare", "coco-stuff164k", str(tmp_path / "annotations"), str(tmp_path)])
    assert code == 0
    assert not left.exists() and not old.exists() and fresh_foreign.exists()
    assert remove_stale_temporaries(tmp_path / "nowhere") == 0


def _run_stopped(args: list[str], stage: str) -> subprocess.CompletedProcess:
    """Run ``glaclip ARGS`` in a child process whose ``stage`` function sends the process
    SIGTERM when it starts (as a service manager, or torchrun, would)."""
    module, name = stage.rsplit(".", 1)
    script = (
        "import os, signal, sys, time\n"
        f"import {module} as target\n"
        "def stopped(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "    raise AssertionError('SIGTERM did not stop the run')\n"
        f"target.{name} = stopped\n"
        "from glaclip.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )


def test_sigterm_stops_segment_like_ctrl_c(tiny_model_args, tmp_path) -> None:
    photo = _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    args = ["segment", str(photo), "--classes", "sky", "--out", str(out), *tiny_model_args]
    done = _run_stopped(args, "glaclip.io.batch.segment_files")
    assert done.returncode == 143, done.stderr
    assert "glaclip: terminated" in done.stderr and "Traceback" not in done.stderr
    assert not (out / ".glaclip-lock").exists()


def test_sigterm_stops_eval_like_ctrl_c(tiny_model_args, tmp_path) -> None:
    root = tmp_path / "VOC2012"
    _small_voc(root)
    out = tmp_path / "o"
    args = ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
    done = _run_stopped([*args, *tiny_model_args], "glaclip.evaluation.run.evaluate_image")
    assert done.returncode == 143, done.stderr
    assert not (out / ".glaclip-lock").exists()
    assert main([*args, "--no-progress", *tiny_model_args]) == 0  # nothing left in the way


class _FullOnFlush:
    """A text file on a disk that fills up after its first line: later lines stay in the
    buffer, and every flush (and the close) fails with ENOSPC, as a real full disk does."""

    def __init__(self, real) -> None:
        self._real = real
        self._lines = 0

    def write(self, text: str) -> int:
        self._lines += 1
        return len(text) if self._lines > 1 else self._real.write(text)

    def flush(self) -> None:
        self._real.flush()
        if self._lines > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self._real.close()
        if self._lines > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._real, name)


def test_a_full_disk_under_the_eval_state_names_the_file(
    tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    import builtins

    root = tmp_path / "VOC2012"
    _small_voc(root)
    out = tmp_path / "o"
    state = out / STATE_DIR / "rank0.jsonl"
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return _FullOnFlush(handle) if Path(os.fspath(file)) == state and "a" in mode else handle

    monkeypatch.setattr(builtins, "open", full_open)
    code = main(
        ["eval", "--dataset", "voc21", "--data-root", str(root), "--out", str(out)]
        + ["--no-progress", *tiny_model_args]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"glaclip: error: cannot write {state}: No space left on device" in err
    assert json.loads(state.read_text().splitlines()[0])["glaclip_eval_state"] == 3
