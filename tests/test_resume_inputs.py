"""``eval`` resume notices an image or label file that changed since it was evaluated, and
evaluates it again: the result is the one a fresh run gives on the data as it is now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from glaclip.evaluation.state import STATE_DIR
from tests.test_evaluate import PATHS, fast_text, label_map, make_dataset, run

__all__ = ["fast_text"]  # the module-wide fixture: one prompt template
KEYS = ("mIoU", "mAcc", "aAcc", "BER", "per_class", "ber_pairs", "num_images")


def _relabel(path: Path, h: int, w: int) -> None:
    """Write another label map over ``path``, as VOC ships them (palette PNG)."""
    label = Image.fromarray(label_map(h, w, [0, 20], seed=9)).convert("P")
    label.putpalette([(i * 37) % 256 for i in range(768)])
    label.save(path)


@pytest.mark.parametrize("changed", ["label", "image"])
def test_a_changed_file_is_evaluated_again(
    changed: str, tiny_model_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "VOC2012"
    made = make_dataset(root, "voc", [0, 1, 15, 20], count=3)
    ids = list(made)
    base = ["eval", "--dataset", "voc21", "--data-root", str(root), "--no-progress"]
    base += tiny_model_args
    out = ["--out", str(tmp_path / "o")]
    code, err, first = run(base + out, capsys)
    assert code == 0, err

    image_t, label_t = PATHS["voc"]
    if changed == "label":
        _relabel(root / label_t.format(id=ids[1]), *made[ids[1]])
    else:  # another photo under the same name
        source = root / image_t.format(id=ids[2])
        (root / image_t.format(id=ids[1])).write_bytes(source.read_bytes())
        _relabel(root / label_t.format(id=ids[1]), *made[ids[2]])
    code, err, second = run(base + out, capsys)
    assert code == 0, err
    assert "1 image(s)" in err and ids[1] in err and "evaluating them again" in err
    assert second["resumed_images"] == 2 and second["processed_images"] == 1

    code, err, fresh = run(base + ["--out", str(tmp_path / "fresh")], capsys)
    assert code == 0, err
    assert {k: second[k] for k in KEYS} == {k: fresh[k] for k in KEYS}
    assert second["per_class"] != first["per_class"]  # the change moved the result

    code, err, third = run(base + out, capsys)  # the new record counts now
    assert code == 0 and third["resumed_images"] == 3 and "evaluating them again" not in err
    records = [json.loads(x) for x in (tmp_path / "o" / STATE_DIR / "rank0.jsonl").open()]
    assert [r["id"] for r in records[1:]] == [*ids, ids[1]]
    assert all(len(r["inputs"]) == 24 for r in records[1:])
