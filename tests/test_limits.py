"""What is refused before any work, and what a refusal says: the demo's limits (class count,
name length, set by the operator), over-long and undecodable class names everywhere, and
messages that never repeat a huge input or show a server path."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glaclip import Segmenter
from glaclip.atomic import WriteError
from glaclip.cli.main import main
from glaclip.data.presets import PRESETS
from glaclip.demo import inputs, logic, turns, views
from glaclip.text.encoder import TextEncoder, prompt_keys
from glaclip.text.vocabulary import MAX_NAME_CHARS, parse_class_lines

MODELS = {"clip": "tiny-clip", "vfm": "tiny-vfm"}
MEGABYTE_NAME = "word " * 200_000  # a megabyte of words in one class name


@pytest.fixture
def segmenter(golden_modules) -> Segmenter:
    return Segmenter.from_modules(*golden_modules, background_index=255, text_cache_dir=None)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def no_text_work(monkeypatch) -> None:
    """Any tokenising or embedding of class names fails the test."""

    def refuse(*_args, **_kwargs):
        pytest.fail("class names were tokenised or embedded before the refusal")

    monkeypatch.setattr(TextEncoder, "query_keys", refuse)
    monkeypatch.setattr(TextEncoder, "encode", refuse)


# ------------------------------------------------------------------------------ the demo
@pytest.mark.parametrize(
    ("text", "limits", "message"),
    [
        (", ".join(f"c{i}" for i in range(201)), {}, "201 class names .* at most 200"),
        ("cat; " + "; ".join(f"s{i}" for i in range(12)), {"max_classes": 10}, "13 class names"),
        ("cat, " + "x" * 101, {}, "101 characters long; this demo takes names of up to 100"),
        ("cat, " + "x" * 31, {"max_name_length": 30}, "--max-name-length N"),
        (MEGABYTE_NAME, {}, "the class text is 1,000,000 characters long"),
    ],
)
def test_the_demo_refuses_what_it_cannot_serve_before_any_work(
    segmenter, photo, tmp_path, text, limits, message, no_text_work
) -> None:
    with pytest.raises(inputs.DemoInputError, match=message) as info:
        logic.run_request(
            segmenter, MODELS, photo, text, "GLA-CLIP", 0.0, tmp_path, **limits
        )  # fmt: skip
    assert len(str(info.value)) < 600  # the reason, not the input
    assert "because" in str(info.value) or "class text" in str(info.value)


def test_the_demo_takes_what_is_within_its_limits(segmenter, photo, tmp_path) -> None:
    text = ", ".join(f"thing {i}" for i in range(12))
    run = logic.run_request(
        segmenter, MODELS, photo, text, "GLA-CLIP", 0.0, tmp_path, max_classes=12
    )
    assert len(run.result.class_names) == 12


def test_every_benchmark_vocabulary_fits_the_default_limits() -> None:
    for name in PRESETS:
        inputs.check_class_limits(inputs.preset_text(name), 200, 100)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-classes", "0"], "--max-classes must be from 1 to 65535, got 0"),
        (["--max-name-length", "5000"], "--max-name-length must be from 1 to 1000"),
    ],
)
def test_the_demo_limits_are_checked_before_any_model_loads(flags, message, monkeypatch, capsys):
    import glaclip.cli.options as cli

    monkeypatch.setattr(cli, "build_segmenter", lambda *a: pytest.fail("a model was loaded"))
    assert main(["demo", *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_demo_flags_reach_the_page(tiny_model_args, monkeypatch) -> None:
    import glaclip.demo.app as app

    seen = {}
    monkeypatch.setattr(app, "serve", lambda *a, **kw: seen.update(kw))
    flags = ["--max-classes", "7", "--max-name-length", "20"]
    assert main(["demo", *flags, *tiny_model_args]) == 0
    assert seen["max_classes"] == 7 and seen["max_name_length"] == 20


def test_an_over_long_upload_name_gets_short_output_names(segmenter, photo, tmp_path) -> None:
    name = "holiday " * 40 + ".png"  # 325 bytes: more than a file name may hold
    run = logic.run_request(segmenter, MODELS, photo, "sky", "GLA-CLIP", 0.0, tmp_path, name=name)
    for path in (run.files.labels, run.files.record, run.files.overlay):
        assert path.is_file() and len(os.fsencode(path.name)) < 255
    assert len(inputs.safe_stem("東京" * 200 + ".jpg").encode()) <= 2 * inputs.MAX_STEM_CHARS


def test_a_failed_write_names_no_server_path(segmenter, photo, tmp_path, monkeypatch) -> None:
    def full(*_args, **_kwargs):
        raise WriteError(errno.ENOSPC, f"cannot write {tmp_path}/photo.png: No space left")

    monkeypatch.setattr(logic, "write_outputs", full)
    with pytest.raises(logic.DemoServerError) as info:
        logic.run_request(segmenter, MODELS, photo, "sky", "GLA-CLIP", 0.0, tmp_path)
    assert str(tmp_path) not in str(info.value) and "No space left on device" in str(info.value)


@pytest.mark.parametrize(
    ("payload", "method", "message"),
    [
        (12, "GLA-CLIP", "Image: expected an uploaded file, got a int"),
        ({"url": "x"}, "GLA-CLIP", "Image: expected an uploaded file, got no path"),
        ("photo", ["GLA-CLIP"], "unknown method"),
    ],
)
def test_malformed_api_values_are_refused_with_a_sentence(
    segmenter, photo, tmp_path, payload, method, message
) -> None:
    with pytest.raises(inputs.DemoInputError, match=message):
        path, name = views.upload_path(str(photo) if payload == "photo" else payload)
        logic.run_request(segmenter, MODELS, path, "sky", method, 0.0, tmp_path, name=name)


def test_request_folders_are_unguessable_and_private() -> None:
    folders = views.RequestFolders(keep=2)
    try:
        made = [folders.new() for _ in range(4)]
        names = [f.name for f in made]
        assert len(set(names)) == 4 and all(len(n) == 32 and int(n, 16) >= 0 for n in names)
        assert all((f.stat().st_mode & 0o077) == 0 for f in made[-2:])
        assert sorted(p.name for p in folders.root.iterdir()) == sorted(names[-2:])
    finally:
        folders.cleanup()


def test_a_cancelled_request_stops_at_its_next_step(segmenter, photo, tmp_path) -> None:
    import threading

    stop = threading.Event()
    steps = []

    def progress(fraction, message):
        steps.append(message)
        if len(steps) == 2:
            stop.set()  # the client cancels while the request runs

    with pytest.raises(turns.RequestCancelled):
        logic.run_request(
            segmenter, MODELS, photo, "sky, tree", "GLA-CLIP", 0.0, tmp_path,
            progress=progress, stop=stop,
        )  # fmt: skip
    assert len(steps) == 2 and list(tmp_path.glob("*.json")) == []


# ------------------------------------------------------------------------------ every caller
def test_a_name_far_beyond_the_text_context_is_refused_before_any_work(
    segmenter, no_text_work
) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(999,999 characters\) is far longer than") as info:
        segmenter.segment(rgb, ["sky", MEGABYTE_NAME])
    assert len(str(info.value)) < 600
    parse_class_lines(["x" * MAX_NAME_CHARS])  # the longest accepted


def test_a_long_name_warning_quotes_only_its_start(golden_modules) -> None:
    _, _, tokenizer = golden_modules
    name = "very " * 180  # 900 characters: accepted, but past the 77 tokens
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        prompt_keys(tokenizer, [lambda c: f"a photo of a {c}."], [name])
    assert seen and all(len(str(w.message)) < 600 for w in seen)


def test_a_lone_surrogate_is_refused_naming_the_byte() -> None:
    with pytest.raises(ValueError, match=r"lone surrogate '\\udce9' \(the byte 0xe9\)"):
        parse_class_lines(["cat", "caf\udce9"])


def test_segment_refuses_classes_that_are_no_list(segmenter) -> None:
    with pytest.raises(TypeError, match="must be a list of class names"):
        segmenter.segment(np.zeros((32, 32, 3), np.uint8), 5)


def test_undecodable_classes_are_refused_before_any_model_loads(
    photo, tmp_path, tiny_model_args, monkeypatch, capsys
) -> None:
    import glaclip.cli.options as cli

    monkeypatch.setattr(cli, "build_segmenter", lambda *a: pytest.fail("a model was loaded"))
    classes = os.fsdecode(b"cat, caf\xe9")  # as Python decodes a Latin-1 argument
    code = main(["segment", str(photo), "--classes", classes, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "0xe9" in err and "Traceback" not in err
    err.encode("utf-8")  # printable as it was printed


def test_an_image_name_that_is_no_utf8_is_segmented_and_recorded(tmp_path, tiny_model_args):
    folder = tmp_path / "in"
    folder.mkdir()
    try:
        photo = Path(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(photo)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    out = tmp_path / "out"
    args = ["segment", str(folder), "--classes", "sky, tree", "--out", str(out), *tiny_model_args]
    assert main(args) == 0
    record = next(out.glob("*.json")).read_bytes().decode("utf-8")
    assert '"image": ' in record and "caf\\\\xe9.png" in record
    assert main(args) == 0  # the outputs are known as glaclip's own: replaced, not refused
