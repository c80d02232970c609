"""`glaclip eval --dataset all`: every benchmark found under one root, and Table 1.

The synthetic root holds VOC2012 (VOC21, VOC20), COCO-Stuff with both label kinds
(COCO-Object, COCO-Stuff) and an ADE20K whose second label map is broken; VOC2010 (Context60,
Context59) and Cityscapes are absent (Cityscapes' short side of 560 makes ~19k tokens per
image: too slow for a CPU test; its preset value is checked by ``benchmark_settings``). Every
row of the table is checked against the independent rescoring of ``test_evaluate.check_run``
(numpy confusion matrix and boundary pairs from the saved predictions), and the paper's column
against SPEC section 11.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip.cli import options as cli
from glaclip.cli.main import main

from .test_evaluate import PATHS, check_run, fast_text, make_dataset  # noqa: F401

# SPEC 11: the paper's Table 1 (ViT-B/16, GLA-CLIP defaults), mIoU %
PAPER = {
    "voc21": 66.3,
    "context60": 36.1,
    "coco_object": 37.7,
    "voc20": 84.2,
    "context59": 39.9,
    "coco_stuff164k": 26.9,
    "cityscapes": 40.8,
    "ade20k": 20.0,
}
# preset -> (folder under the root, layout, reduce_zero_label, short side)
RAN = {
    "voc21": ("VOCdevkit/VOC2012", "voc", False, 336),
    "coco_object": ("coco_stuff164k", "coco_object", False, 336),
    "voc20": ("VOCdevkit/VOC2012", "voc", True, 336),
    "coco_stuff164k": ("coco_stuff164k", "coco_stuff", False, 336),
}
Suite = tuple[Path, dict[str, dict[str, tuple[int, int]]], Path]
Run = tuple[Path, int, str, int, list[str]]  # out folder, exit code, stderr, model loads, argv


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    root = tmp_path_factory.mktemp("benchmarks")
    coco = root / "coco_stuff164k"
    made = {
        "voc": make_dataset(root / "VOCdevkit/VOC2012", "voc", [0, 1, 15, 20], count=2),
        "coco_object": make_dataset(coco, "coco_object", [0, 1, 80], count=1),
        "coco_stuff": make_dataset(coco, "coco_stuff", [0, 100, 170], count=1),
        "ade20k": make_dataset(root / "ADEChallengeData2016", "ade20k", [0, 1, 150], count=2),
    }
    bad = root / "ADEChallengeData2016" / PATHS["ade20k"][1].format(id="2008_000001")
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(bad)  # not the image's size
    return root, made, bad


def count_builds(mp: pytest.MonkeyPatch) -> list[int]:
    """Count the Segmenters the CLI builds (the models are loaded once per command)."""
    calls: list[int] = []
    real = cli.build_segmenter

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    mp.setattr(cli, "build_segmenter", counting)
    return calls


@pytest.fixture(scope="module")
def suite_run(
    suite_root: Suite, tiny_model_args: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """One ``--dataset all`` run: (out folder, exit code, stderr, model loads, argv)."""
    root, _, _ = suite_root
    base = tmp_path_factory.mktemp("suite")
    argv = ["eval", "--dataset", "all", "--data-root", str(root), "--out", str(base / "runs")]
    argv += ["--save-predictions", str(base / "pred"), "--no-progress"] + tiny_model_args
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        calls = count_builds(mp)
        code = main(argv)
    return base, code, err.getvalue(), len(calls), argv


def test_all_runs_the_benchmarks_found_and_writes_table1(suite_root: Suite, suite_run: Run) -> None:
    root, made, bad = suite_root
    base, code, err, loads, _ = suite_run
    assert code == 1, err  # ADE20K failed; the others ran
    assert loads == 1
    # the data check comes first, before the models load: found or not, and what is wrong
    summary = err[: err.index("Estimated time")]
    assert "the data under" in summary and "Context60    not found" in summary
    assert "ADE20K       PROBLEMS: 2 images, 2 labels (official val: 2,000)" in summary
    assert "labels of another size (1): 2008_000001.png (50x60" in summary
    table = json.loads((base / "runs" / "table1.json").read_text())
    rows = table["benchmarks"]
    assert [r["dataset"] for r in rows] == list(RAN)  # the paper's order, present ones
    expected_miou = []
    for row in rows:
        name = row["dataset"]
        folder, layout, reduce, short = RAN[name]
        results = json.loads((base / "runs" / name / "results.json").read_text())
        key = "voc" if layout == "voc" else layout
        expected = check_run(
            results, name, root / folder, made[key], layout, base / "pred" / name, reduce, short
        )
        for metric in ("mIoU", "aAcc", "BER"):
            assert row[metric] == pytest.approx(expected[metric], abs=1e-6), (name, metric)
        assert row["num_images"] == row["dataset_images"] == len(made[key])
        assert row["paper_mIoU"] == PAPER[name] and row["settings_differ"] == {}
        assert row["difference"] == pytest.approx(expected["mIoU"] - PAPER[name], abs=1e-6)
        assert row["results"] == f"{name}/results.json"
        expected_miou.append(expected["mIoU"])
    avg = table["average"]
    assert avg["benchmarks"] == 4
    assert avg["mIoU"] == pytest.approx(sum(expected_miou) / 4, abs=1e-6)
    paper_avg = math.fsum(PAPER[n] for n in RAN) / 4
    assert avg["paper_mIoU"] == pytest.approx(paper_avg)
    assert avg["difference"] == pytest.approx(sum(expected_miou) / 4 - paper_avg, abs=1e-6)
    assert [(m["dataset"], m["title"]) for m in table["not_run"]] == [
        ("context60", "Context60"),
        ("context59", "Context59"),
        ("cityscapes", "Cityscapes"),
    ]
    folders = ["VOCdevkit/VOC2010", "VOCdevkit/VOC2010", "cityscapes"]
    for missing, folder in zip(table["not_run"], folders, strict=True):
        assert missing["reason"] == f"not found under {root}: no folder {root / folder}"
    assert [f["title"] for f in table["failed"]] == ["ADE20K"]
    assert str(bad) in table["failed"][0]["error"] and str(bad) in err
    assert table["complete"] is False and table["limit"] is None
    assert any("4 of 8 benchmarks" in n for n in table["notes"])
    assert any("Not run: Context60" in n for n in table["notes"])
    # the image finished before the broken one is kept for the next run
    state = (base / "runs" / "ade20k" / "eval_state" / "rank0.jsonl").read_text().splitlines()
    assert len(state) == 2 and not (base / "runs" / "ade20k" / "results.json").exists()

    md = (base / "runs" / "table1.md").read_text()
    voc_row = next(line for line in md.splitlines() if line.startswith("| VOC21 |"))
    assert f"{rows[0]['mIoU']:.2f}" in voc_row and "| 66.3 |" in voc_row
    assert f"{rows[0]['difference']:+.2f}" in voc_row
    assert "| average (4 of 8) |" in md and "Context59" in md and "ADE20K" in md
    assert "Table 1: average mIoU" in err and str(base / "runs" / "table1.md") in err


def test_all_resumes_every_benchmark(suite_run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    base, _, _, _, argv = suite_run
    first = json.loads((base / "runs" / "table1.json").read_text())
    assert main(argv) == 1  # ADE20K is still broken
    capsys.readouterr()
    second = json.loads((base / "runs" / "table1.json").read_text())
    assert second["benchmarks"] == first["benchmarks"] and second["average"] == first["average"]
    for name in RAN:
        results = json.loads((base / "runs" / name / "results.json").read_text())
        assert results["processed_images"] == 0
        assert results["resumed_images"] == results["num_images"] > 0


def test_all_ablation_shows_no_paper_column_and_limit_keeps_both(
    suite_root: Suite,
    suite_run: Run,
    tiny_model_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _, _ = suite_root
    out = tmp_path / "ablation"
    argv = ["eval", "--dataset", "all", "--data-root", str(root), "--out", str(out)]
    argv += ["--limit", "1", "--no-kv-extension", "--short-side", "224", "--no-progress"]
    code = main(argv + tiny_model_args)
    err = capsys.readouterr().err
    assert code == 0, err  # ADE20K's first image is fine
    assert not (out / "table1.json").exists()
    table = json.loads((out / "table1_limit1.json").read_text())
    assert [r["dataset"] for r in table["benchmarks"]] == [*RAN, "ade20k"]
    for row in table["benchmarks"]:
        name = row["dataset"]
        assert row["paper_mIoU"] is None and row["difference"] is None
        assert row["settings_differ"] == {
            "kv_extension": {"used": False, "paper": True},
            "short_side": {"used": 224, "paper": 336},
        }
        # --limit 1 of a benchmark with one image is the whole benchmark: results.json
        stem = "results_limit1" if row["dataset_images"] > 1 else "results"
        results = json.loads((out / name / f"{stem}.json").read_text())
        assert results["num_images"] == 1 and row["num_images"] == 1
        assert results["settings"]["prob_threshold"] == (
            0.1 if name in ("voc21", "coco_object") else 0.0
        )
        assert row["results"] == f"{name}/{stem}.json"
    assert table["average"]["paper_mIoU"] is None
    assert (
        "Paper column not applicable to VOC21, COCO-Object, VOC20, COCO-Stuff, ADE20K: the "
        "method settings differ from the paper's: short_side=224 (paper: 336), "
        "kv_extension=False (paper: True)."
    ) in table["notes"]
    assert "--limit 1" in " ".join(table["notes"])
    md = (out / "table1_limit1.md").read_text()
    voc_row = next(line for line in md.splitlines() if line.startswith("| VOC21 |"))
    assert voc_row.endswith("| 1 of 2 | n/a | n/a |")

    # a limited run into the folder of the full run keeps both tables
    base, _, _, _, full_argv = suite_run
    before = (base / "runs" / "table1.json").read_bytes()
    assert main(full_argv + ["--limit", "1"]) == 0
    capsys.readouterr()
    assert (base / "runs" / "table1.json").read_bytes() == before
    limited = json.loads((base / "runs" / "table1_limit1.json").read_text())
    assert all(r["paper_mIoU"] == PAPER[r["dataset"]] for r in limited["benchmarks"])


def test_benchmark_settings_and_paper_differences() -> None:
    from glaclip.config import Settings
    from glaclip.evaluation.table import benchmark_settings
    from glaclip.evaluation.table_report import paper_differences

    assert benchmark_settings("cityscapes", {})["short_side"] == 560
    assert benchmark_settings("voc21", {}) == {
        "short_side": 336,
        "prob_threshold": 0.1,
        "background_index": 0,
    }
    assert benchmark_settings("cityscapes", {"short_side": 448})["short_side"] == 448
    defaults = Settings().to_dict()
    city = {**defaults, "short_side": 560}
    assert paper_differences("cityscapes", city) == {}
    assert paper_differences("voc21", city) == {
        "short_side": {"used": 560, "paper": 336},
        "prob_threshold": {"used": 0.0, "paper": 0.1},
    }
    # how the work is split, and round-off, are not the method
    runtime = {"window_batch": 16, "block_size": 64, "precision": "bf16", "attention_impl": "dense"}
    assert paper_differences("cityscapes", {**city, **runtime}) == {}
    assert paper_differences("cityscapes", {**city, "proxy_threshold": 0.55}) == {
        "proxy_threshold": {"used": 0.55, "paper": 0.6}
    }


def test_all_refuses_before_loading_models(
    suite_root: Suite,
    suite_run: Run,
    tiny_model_args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _, _ = suite_root
    base, _, _, _, argv = suite_run
    calls = count_builds(monkeypatch)
    # another setting into the folder of a finished run: refused, naming the benchmark
    assert main(argv + ["--prob-threshold", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "VOC21" in err and "prob_threshold" in err and "--restart" in err
    # a custom vocabulary belongs to one benchmark
    out = ["--out", str(tmp_path / "o")]
    common = ["eval", "--dataset", "all", "--data-root", str(root)] + out + tiny_model_args
    assert main(common + ["--class-file", str(tmp_path / "c.txt")]) == 2
    assert "--class-file belongs to one benchmark" in capsys.readouterr().err
    assert main(common + ["--no-reduce-zero-label"]) == 2
    assert "--dataset NAME" in capsys.readouterr().err
    assert main(common + ["--limit", "0"]) == 2
    assert "--limit must be a positive" in capsys.readouterr().err
    # a root holding no benchmark
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--dataset", "all", "--data-root", str(empty)] + out) == 2
    err = capsys.readouterr().err
    assert "no benchmark found under" in err and str(empty / "VOCdevkit/VOC2012") in err
    assert calls == []
    assert not (tmp_path / "o").exists()


SCLIP_PAPER = {  # the SCLIP paper, Table 1 (ViT-B/16)
    "voc21": 59.1,
    "context60": 30.4,
    "coco_object": 30.5,
    "voc20": 80.4,
    "context59": 34.2,
    "coco_stuff164k": 22.4,
    "cityscapes": 32.2,
    "ade20k": 16.1,
}


def _results(name: str, **flat) -> dict:
    """A benchmark's results.json as ``eval`` writes it for these flat settings."""
    from glaclip.config import settings_from_kwargs
    from glaclip.evaluation.tasks import preset_settings

    given = {**preset_settings(name, flat.get("base")), **flat}
    settings = settings_from_kwargs(**given).to_dict()
    return {"settings": settings, "mIoU": 50.0, "aAcc": 80.0, "BER": 5.0, "num_images": 2}


def test_the_paper_column_is_the_published_numbers_of_the_method_run() -> None:
    """SCLIP per window under its protocol: SCLIP's own numbers and average; GLA on SCLIP: the
    published average only; another logit scale on VOC21: not SCLIP's protocol; NACLIP with
    GLA: nothing published, said in a note."""
    from glaclip.data.presets import PRESETS
    from glaclip.evaluation.table_report import build_table, table_row

    models = {"clip": "ViT-B-16", "clip_pretrained": "openai", "vfm": None, "vfm_checkpoint": None}

    def table(**flat):
        rows = [
            table_row(PRESETS[n], {**_results(n, **flat), "dataset_images": 2}) for n in PRESETS
        ]
        return build_table(rows, [], {}, None, "data", models, flat)

    per_window = table(base="sclip", kv_extension=False)
    assert [r["paper_mIoU"] for r in per_window["benchmarks"]] == list(SCLIP_PAPER.values())
    assert per_window["average"]["paper_mIoU"] == 38.2
    assert per_window["paper"]["source"].startswith("SCLIP paper")
    gla = table(base="sclip")
    assert all(r["paper_mIoU"] is None and not r["settings_differ"] for r in gla["benchmarks"])
    assert gla["average"]["paper_mIoU"] == 39.8
    assert any("the average over the 8 benchmarks only, 39.8" in n for n in gla["notes"])
    row = table_row(
        PRESETS["voc21"],
        {
            **_results("voc21", base="sclip", kv_extension=False, logit_scale=40.0),
            "dataset_images": 2,
        },
    )
    assert row["paper_mIoU"] is None
    assert row["settings_differ"] == {"logit_scale": {"used": 40.0, "paper": 65.0}}
    naclip = table(base="naclip")
    assert naclip["average"]["paper_mIoU"] is None and naclip["paper"]["source"] is None
    assert any("No published numbers for this method" in n for n in naclip["notes"])
    assert not any("models are not the paper's" in n for n in naclip["notes"])  # no VFM needed
