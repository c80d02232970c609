"""`glaclip demo`: the request logic, the shared writer, and the real page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glaclip import Segmenter
from glaclip.cli.main import main
from glaclip.cli.parser import build_parser
from glaclip.data.presets import PRESETS, preset_classes
from glaclip.demo import app, inputs, logic, views
from glaclip.demo import store as kept_features
from glaclip.io import batch
from glaclip.io.batch import segment_files, write_outputs
from glaclip.text.vocabulary import parse_classes_arg
from tests.waiting import free_port, wait_until

CHELSEA = logic.EXAMPLES_DIR / "chelsea.jpg"


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((16, 16, 1), np.uint8))[:h, :w])


@pytest.fixture
def segmenter(golden_modules) -> Segmenter:
    clip, vfm, tok = golden_modules  # a 224-pixel short side: two windows for these photos
    return Segmenter.from_modules(clip, vfm, tok, background_index=255, short_side=224)


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "in" / "my photo.png"
    path.parent.mkdir()
    Image.fromarray(_rgb(200, 260, 3)).save(path)
    return path


MODELS = {"clip": "tiny-clip", "vfm": "tiny-vfm"}


# ------------------------------------------------------------------------------ request logic
def test_method_settings() -> None:
    assert logic.method_settings("GLA-CLIP") == {"base": "proxyclip", "kv_extension": True}
    assert logic.method_settings("ProxyCLIP per window") == {
        "base": "proxyclip",
        "kv_extension": False,
    }
    assert logic.method_settings("GLA-CLIP on ClearCLIP (no VFM)") == {
        "base": "clearclip",
        "kv_extension": True,
    }
    with pytest.raises(inputs.DemoInputError, match="GLA-CLIP, ProxyCLIP per window"):
        logic.method_settings("SAM")


def test_default_method_follows_the_flags(golden_modules) -> None:
    clip, vfm, tok = golden_modules
    assert logic.default_method(Segmenter.from_modules(clip, vfm, tok)) == "GLA-CLIP"
    baseline = Segmenter.from_modules(clip, vfm, tok, kv_extension=False)
    assert logic.default_method(baseline) == "ProxyCLIP per window"
    clip_only = Segmenter.from_modules(clip, None, tok, base="clearclip", kv_extension=False)
    assert logic.available_methods(clip_only) == [
        "GLA-CLIP on ClearCLIP (no VFM)",
        "ClearCLIP per window (no VFM)",
        "GLA-CLIP on SCLIP (no VFM)",
        "SCLIP per window (no VFM)",
        "GLA-CLIP on NACLIP (no VFM)",
        "NACLIP per window (no VFM)",
        "MaskCLIP per window (no VFM)",  # no attention to extend: per window only
    ]
    assert logic.default_method(clip_only) == "ClearCLIP per window (no VFM)"
    assert len(logic.available_methods(baseline)) == 9


def test_request_writes_what_segment_files_writes(segmenter, photo, tmp_path) -> None:
    lines = ["sky", "tree; bush", "person"]
    out_demo, out_cli = tmp_path / "demo", tmp_path / "cli"
    out_demo.mkdir()
    run = logic.run_request(
        segmenter, MODELS, photo, "sky, tree; bush, person", "ProxyCLIP per window", 0.4, out_demo
    )
    baseline = segmenter.with_settings(kv_extension=False, prob_threshold=0.4)
    segment_files(baseline, [photo], lines, out_cli, models=MODELS, progress=False)
    cli_files = [p.name for p in out_cli.iterdir() if p.name != ".glaclip-outputs"]
    assert sorted(p.name for p in out_demo.iterdir()) == sorted(cli_files)
    assert run.files.labels.read_bytes() == (out_cli / "my photo.png").read_bytes()
    got = json.loads(run.files.record.read_text())
    want = json.loads((out_cli / "my photo.json").read_text())
    assert got["image"] == "my photo.png" and want["image"] == str(photo)
    for key in ("classes", "settings", "models", "image_size", "resized_size", "unlabelled_share"):
        assert got[key] == want[key], key
    assert got["settings"]["kv_extension"] is False and got["settings"]["prob_threshold"] == 0.4
    labels = np.asarray(Image.open(run.files.labels))
    assert 255 in labels and (labels < 3).any()  # the threshold is applied, not everything


@pytest.mark.parametrize(
    "method",
    ["GLA-CLIP on SCLIP (no VFM)", "GLA-CLIP on NACLIP (no VFM)", "MaskCLIP per window (no VFM)"],
)
def test_a_request_on_a_new_base_writes_what_segment_files_writes(
    method, segmenter, photo, tmp_path
) -> None:
    """The page's methods of the new bases are the same computation as ``glaclip segment``
    with their settings: the same label PNG, the base in the record."""
    out_demo, out_cli = tmp_path / "demo", tmp_path / "cli"
    out_demo.mkdir()
    run = logic.run_request(segmenter, MODELS, photo, "sky, tree; bush", method, 0.0, out_demo)
    chosen = segmenter.with_settings(**logic.method_settings(method))
    segment_files(chosen, [photo], ["sky", "tree; bush"], out_cli, models=MODELS, progress=False)
    assert run.files.labels.read_bytes() == (out_cli / "my photo.png").read_bytes()
    record = json.loads(run.files.record.read_text())
    assert record["settings"]["base"] == logic.method_settings(method)["base"]


def test_second_request_embeds_no_class_again(segmenter, photo, tmp_path) -> None:
    def request(text: str, method: str, k: int) -> logic.DemoRun:
        out = tmp_path / str(k)
        out.mkdir()
        return logic.run_request(segmenter, MODELS, photo, text, method, 0.0, out)

    assert segmenter.text.encoded_count == 0
    first = request("sky, tree; bush", "GLA-CLIP", 1)
    assert segmenter.text.encoded_count == 3 and first.embedded == 3
    second = request("sky, tree; bush", "ProxyCLIP per window", 2)
    assert segmenter.text.encoded_count == 3 and second.embedded == 0
    third = request("bush, road", "GLA-CLIP", 3)
    assert segmenter.text.encoded_count == 4 and third.embedded == 1


def test_progress_is_reported(segmenter, photo, tmp_path) -> None:
    seen: list[tuple[float, str]] = []
    logic.run_request(
        segmenter,
        MODELS,
        photo,
        "a, b",
        "GLA-CLIP",
        0.0,
        tmp_path,
        progress=lambda f, m: seen.append((f, m)),
    )
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and all(0.0 <= f <= 1.0 for f in fractions)
    assert any("Embedding" in m for _, m in seen) and any("Segmenting" in m for _, m in seen)


@pytest.mark.parametrize(
    ("image", "classes", "threshold", "message"),
    [
        (None, "sky", 0.0, "No image: upload"),
        ("photo", "", 0.0, "No classes: type the classes"),
        ("photo", "   ", 0.0, "No classes"),
        ("photo", "sky, , tree", 0.0, "empty class between commas"),
        ("photo", "sky; ", 0.0, "empty synonym"),
        ("photo", "cat, dog, cat", 0.0, "can never win, because class 0"),
        ("photo", "sky", 1.5, "probability threshold must be a number in [0, 1], got 1.5"),
        ("photo", "sky", "x", "probability threshold must be a number in [0, 1], got nan"),
        ("text", "sky", 0.0, "notes.jpg is not an image that can be read"),
        (
            "photo",
            "sky",
            0.0,
            "my photo.png is 260 x 200 pixels; this demo accepts images of up to",
        ),
    ],
)
def test_bad_requests_are_refused_with_a_message(
    segmenter, photo, tmp_path, image, classes, threshold, message
) -> None:
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("this is not a picture")
    path = {"photo": photo, "text": text_file, None: None}[image]
    limit = 50_000 if "megapixels" in message or "accepts" in message else 10**8
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        inputs.DemoInputError, match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        logic.run_request(segmenter, MODELS, path, classes, "GLA-CLIP", threshold, out, limit)
    assert list(out.iterdir()) == []


def test_decompression_bomb_is_refused(segmenter, photo, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 200 x 260 is over twice that
    with pytest.raises(inputs.DemoInputError, match="too large to open safely"):
        logic.run_request(segmenter, MODELS, photo, "sky", "GLA-CLIP", 0.0, tmp_path)


def test_write_outputs_writes_the_record_last(segmenter, photo, tmp_path, monkeypatch) -> None:
    rgb = np.asarray(Image.open(photo))
    result = segmenter.segment(rgb, ["sky", "tree"])
    out = tmp_path / "out"
    out.mkdir()
    present_at_json: list[str] = []
    real_write = batch.atomic_write_bytes

    def spy(path: Path, data: bytes) -> Path:
        if path.suffix == ".json":
            present_at_json.extend(sorted(p.name for p in out.iterdir()))
        return real_write(path, data)

    monkeypatch.setattr(batch, "atomic_write_bytes", spy)
    files = write_outputs(result, rgb, out, "x", photo, segmenter.settings, MODELS)
    assert present_at_json == ["x.png", "x_overlay.jpg"]
    assert (files.labels, files.overlay, files.record) == (
        out / "x.png",
        out / "x_overlay.jpg",
        out / "x.json",
    )
    assert sorted(p.name for p in out.iterdir()) == ["x.json", "x.png", "x_overlay.jpg"]


# ------------------------------------------------------------------------------ kept features
@pytest.fixture
def own_segmenter(golden_modules) -> Segmenter:
    """A segmenter over copies of the tiny models, whose image towers a test may break."""
    import copy

    clip, vfm = (copy.deepcopy(m) for m in golden_modules[:2])
    return Segmenter.from_modules(clip, vfm, golden_modules[2], background_index=255)


def _break_image_towers(segmenter: Segmenter) -> None:
    """NaN weights in CLIP's image tower and the VFM: a pass through them would show."""
    with torch.no_grad():
        for p in [*segmenter.clip_model.visual.parameters(), *segmenter.vfm_tower.parameters()]:
            p.fill_(float("nan"))


def test_new_classes_on_the_same_image_reuse_its_features(own_segmenter, photo, tmp_path) -> None:
    """The second request on the same photo runs neither the backbones nor the attention (the
    towers are broken by then), and gives the labels and the label PNG of a request that
    computed everything afresh."""
    store = kept_features.FeatureStore()

    def request(text: str, threshold: float, k: int, kept: kept_features.FeatureStore | None):
        out = tmp_path / str(k)
        out.mkdir()
        return logic.run_request(
            own_segmenter, MODELS, photo, text, "GLA-CLIP", threshold, out, store=kept
        )

    fresh = request("road, person; man, sky", 0.3, 3, None)
    first = request("sky, tree; bush", 0.0, 1, store)
    assert not first.features_reused and first.features_kept == store.nbytes > 0
    every = {"vfm", "clip", "attention", "project", "text", "stitch", "labels"}
    assert every <= set(first.result.timings) and every <= set(fresh.result.timings)
    _break_image_towers(own_segmenter)
    copy = tmp_path / "same photo, other name.png"
    copy.write_bytes(photo.read_bytes())
    second = logic.run_request(
        own_segmenter, MODELS, copy, "road, person; man, sky", "GLA-CLIP", 0.3, tmp_path / "1",
        store=store,
    )  # fmt: skip
    assert second.features_reused
    assert set(second.result.timings) == {"text", "stitch", "labels"}
    assert "Image features reused: the backbones and the attention did not run" in (
        views.timings_line(second)
    )
    assert f"{store.nbytes / 1e6:.1f} MB kept in memory" in views.timings_line(second)
    np.testing.assert_array_equal(second.result.labels, fresh.result.labels)
    assert second.files.labels.read_bytes() == fresh.files.labels.read_bytes()
    assert (second.result.labels == 255).any() and (second.result.labels < 4).any()


def test_the_store_keeps_one_image_per_method_and_drops_it_for_another(
    own_segmenter, photo, tmp_path
) -> None:
    store = kept_features.FeatureStore()
    other = tmp_path / "other.png"
    Image.fromarray(_rgb(120, 90, 7)).save(other)

    def request(image: Path, method: str, k: int) -> logic.DemoRun:
        out = tmp_path / f"r{k}"
        out.mkdir()
        return logic.run_request(
            own_segmenter, MODELS, image, "a, b", method, 0.0, out, store=store
        )

    gla = request(photo, "GLA-CLIP", 1)
    per_window = request(photo, "ProxyCLIP per window", 2)  # other settings: computed, kept
    assert not per_window.features_reused
    assert store.nbytes == per_window.features_kept == 2 * gla.features_kept
    _break_image_towers(own_segmenter)  # from here, only kept features give finite labels
    again = [request(photo, "ProxyCLIP per window", 3), request(photo, "GLA-CLIP", 4)]
    assert all(r.features_reused for r in again)
    np.testing.assert_array_equal(again[0].result.labels, per_window.result.labels)
    np.testing.assert_array_equal(again[1].result.labels, gla.result.labels)
    changed = request(other, "GLA-CLIP", 5)  # another image: the photo's features are dropped
    assert not changed.features_reused and store.nbytes == changed.features_kept
    assert "Image features computed and kept" in views.timings_line(changed)


def test_the_request_logic_imports_without_gradio() -> None:
    """``glaclip.demo`` and its request logic, views and turns import with Gradio unimportable;
    only the page (``glaclip.demo.app``: ``build_app``, ``serve``) needs it."""
    code = (
        "import sys\n"
        "sys.modules['gradio'] = None  # makes `import gradio` fail\n"
        "import glaclip.demo.logic, glaclip.demo.turns, glaclip.demo.views\n"
        "assert 'GLA-CLIP' in glaclip.demo.logic.methods()\n"
        "try:\n"
        "    import glaclip.demo.app\n"
        "except ImportError:\n"
        "    print('page needs gradio')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "page needs gradio"


# ------------------------------------------------------------------------------ page pieces
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_text_parses_back_to_the_preset(name) -> None:
    assert parse_classes_arg(inputs.preset_text(name)) == preset_classes(name)


def test_preset_menu_names_every_benchmark() -> None:
    labels = dict((value, label) for label, value in inputs.preset_choices())
    assert set(labels) == set(PRESETS)
    assert labels["cityscapes"] == "Cityscapes (19)"
    assert labels["ade20k"] == "ADE20K (150)"
    assert labels["coco_stuff164k"] == "COCO-Stuff (171)"


def test_annotation_view_masks_and_colours() -> None:
    labels = np.array([[0, 0, 2, 255], [2, 2, 2, 255]], dtype=np.int32)
    rgb = np.zeros((2, 4, 3), np.uint8)
    (base, masks), colours = views.annotation_view(rgb, labels, ["sky", "tree", "road"])
    assert base.shape == (2, 4, 3)
    assert [name for _, name in masks] == ["road", "sky"]  # present only, largest first
    assert np.array_equal(masks[0][0], (labels == 2).astype(np.float32))
    assert np.array_equal(masks[1][0], (labels == 0).astype(np.float32))
    # the label PNG's and the overlay's: VOC's palette from its entry 1 on (no class is black)
    assert colours == {"road": "#808000", "sky": "#800000"}  # VOC 3 (128, 128, 0), 1 (128, 0, 0)


def test_annotation_view_is_reduced_for_display() -> None:
    labels = np.zeros((300, 4000), np.int32)
    labels[:, 1000:] = 1
    (base, masks), _ = views.annotation_view(np.zeros((300, 4000, 3), np.uint8), labels, ["a", "b"])
    assert base.shape == (77, 1024, 3)
    (mask_b, name_b), (mask_a, name_a) = masks
    assert (name_b, name_a) == ("b", "a") and mask_b.shape == (77, 1024)
    assert mask_b[:, :256].sum() == 0 and mask_b[:, 256:].all()  # column 1000 of 4000
    assert np.array_equal(mask_a, 1.0 - mask_b)


def test_shares_table_escapes_and_sorts(segmenter, photo) -> None:
    result = segmenter.with_settings(prob_threshold=0.99).segment(photo, ["a|b", "<b>c</b>"])
    table = views.shares_table(result)
    assert "a\\|b" in table and "&lt;b&gt;c&lt;/b&gt;" in table and "<b>" not in table
    assert "*unlabelled*" in table


def test_safe_stem() -> None:
    assert inputs.safe_stem("my photo.jpg") == "my photo"
    assert inputs.safe_stem("../../etc/passwd") == "passwd"
    assert inputs.safe_stem("a<b>:c?.png") == "a_b_c"
    assert inputs.safe_stem("....png") == "image"


def test_upload_path_reads_gradio_file_data() -> None:
    assert views.upload_path(None) == (None, None)
    assert views.upload_path({"path": "/tmp/x/abc.jpg", "orig_name": "cat.jpg"}) == (
        "/tmp/x/abc.jpg",
        "cat.jpg",
    )
    assert views.upload_path({"path": "/tmp/x/abc.jpg"}) == ("/tmp/x/abc.jpg", "abc.jpg")


# ------------------------------------------------------------------------------ command line
def _option_strings(parser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for action in sub._actions for s in action.option_strings}


def test_demo_has_every_model_and_method_flag_of_segment() -> None:
    parser = build_parser()
    segment_only = {"--classes", "--class-file", "--out", "--no-overlay", "--no-progress"}
    segment_only.add("--overwrite")
    missing = _option_strings(parser, "segment") - segment_only - _option_strings(parser, "demo")
    assert missing == set()
    args = parser.parse_args(["demo"])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.share is False


def _page(app) -> tuple[str, list[str]]:
    """The page's heading text and the method choices it offers."""
    components = app.get_config_file()["components"]
    heading = next(c["props"]["value"] for c in components if c.get("type") == "markdown")
    radio = next(c for c in components if c["props"].get("elem_id") == "glaclip-method")
    return heading, [label for label, _ in radio["props"]["choices"]]


@pytest.mark.parametrize("base", ["proxyclip", "clearclip"])
def test_demo_command_builds_the_page_for_every_base(base, tiny_model_args, monkeypatch) -> None:
    """``glaclip demo --base B`` loads the models and builds its page (served elsewhere): with
    ``--base clearclip`` and no ``--vfm`` it offers the ClearCLIP methods and says there is no
    VFM; with the default base, every method and the VFM's name."""
    built = {}

    def build_instead_of_serving(segmenter, models, **kwargs):
        built["page"] = _page(app.build_app(segmenter, models, kwargs["max_megapixels"]))

    monkeypatch.setattr(app, "serve", build_instead_of_serving)
    args = list(tiny_model_args)
    if base == "clearclip":  # the CLIP-only demo: no VFM named at all
        index = args.index("--vfm")
        del args[index : index + 2]
    assert main(["demo", "--base", base, *args]) == 0
    heading, methods = built["page"]
    clear = ["GLA-CLIP on ClearCLIP (no VFM)", "ClearCLIP per window (no VFM)"]
    clear += ["GLA-CLIP on SCLIP (no VFM)", "SCLIP per window (no VFM)"]
    clear += ["GLA-CLIP on NACLIP (no VFM)", "NACLIP per window (no VFM)"]
    clear += ["MaskCLIP per window (no VFM)"]
    if base == "clearclip":
        assert "no VFM" in heading
        assert methods == clear
    else:
        assert "VFM `local-dir:vfm`" in heading
        assert methods == ["GLA-CLIP", "ProxyCLIP per window", *clear]


def test_demo_without_gradio_says_how_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    code = main(["demo", "--clip", "local-dir:/nonexistent", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert 'the demo needs Gradio: pip install "gradio>=6.0"' in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port=-1"], "--port must be a TCP port from 1 to 65535, got -1"),
        (["--port", "99999"], "--port must be a TCP port from 1 to 65535, got 99999"),
        (["--max-megapixels", "inf"], "--max-megapixels must be a finite number above 0, got inf"),
        (["--max-megapixels", "nan"], "--max-megapixels must be a finite number above 0, got nan"),
        (["--max-megapixels", "0"], "--max-megapixels must be a finite number above 0, got 0"),
    ],
)
def test_demo_server_flags_are_checked_before_any_model_loads(
    flags: list[str], message: str, monkeypatch, capsys
) -> None:
    import glaclip.cli.options as cli

    monkeypatch.setattr(cli, "build_segmenter", lambda *a: pytest.fail("a model was loaded"))
    assert main(["demo", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_busy_port_is_reported_before_any_model_loads(monkeypatch, capsys) -> None:
    import glaclip.cli.options as cli

    monkeypatch.setattr(cli, "build_segmenter", lambda *a: pytest.fail("a model was loaded"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port} is in use on 127.0.0.1" in err and "choose another --port" in err


def test_serve_says_where_in_its_own_words(segmenter, monkeypatch, capfd) -> None:
    """The address once the page listens, and none of Gradio's lines about ``launch()``."""
    import gradio as gr

    from glaclip.demo import app as page

    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: self.close())  # no waiting
    port = free_port()
    said = []
    page.serve(segmenter, MODELS, port=port, announce=lambda *urls: said.append(urls))
    assert said == [(f"http://127.0.0.1:{port}/", None)]
    out = capfd.readouterr()
    assert "share=True" not in out.out + out.err and "launch()" not in out.out + out.err


def test_build_app_refuses_a_size_limit_that_is_no_number(segmenter) -> None:
    with pytest.raises(ValueError, match="max_megapixels must be a finite number above 0"):
        app.build_app(segmenter, {}, max_megapixels=float("inf"))


# ------------------------------------------------------------------------------ the browser
def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        driver = None
    if chromium and driver:
        return chromium, driver
    reason = (
        "the browser test needs Chromium, its driver and selenium: on Debian/Ubuntu "
        '`apt-get install chromium chromium-driver`, and `pip install -e ".[dev]"`'
    )
    if os.environ.get("GLACLIP_REQUIRE_BROWSER"):
        pytest.fail(reason + " (GLACLIP_REQUIRE_BROWSER is set)")
    pytest.skip(reason)


@pytest.fixture
def server(tiny_model_args, tmp_path):
    """The real `glaclip demo` on a free loopback port, with the tiny models."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed at teardown
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glaclip", "demo", "--port", str(port), *tiny_model_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"glaclip demo exited with {proc.returncode}:\n"
                    + (tmp_path / "server.log").read_text()
                )
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("glaclip demo did not answer within 240 s")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1700",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _wait(condition, timeout: float, what: str):
    """``wait_until`` at the browser's pace (each poll asks the page)."""
    return wait_until(condition, what, timeout, interval=0.2)


def _toasts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-text]")]


def test_ctrl_c_closes_the_demo_with_a_page_open(server, tmp_path) -> None:
    """Ctrl+C with a page open (its heartbeat stream held) ends the page's stream, stops the
    server and exits 0, printing nothing of Gradio's (its own Ctrl+C path printed a line and
    kept the open pages' heartbeats alive while the server waited for them)."""
    url, proc = server
    stream = urllib.request.urlopen(url + "gradio_api/heartbeat/glaclip-test", timeout=30)
    assert stream.readline().startswith(b"data:")  # the page's heartbeat is alive
    ended = threading.Event()

    def read_to_the_end() -> None:
        try:
            while stream.readline():
                pass
        except OSError:
            pass
        ended.set()

    threading.Thread(target=read_to_the_end, daemon=True).start()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert ended.wait(5)  # the server closed the page's stream
    log = (tmp_path / "server.log").read_text()
    assert "Keyboard interruption" not in log and "Traceback" not in log, log


def test_page_in_headless_chromium(browser, server, tiny_model_args, tmp_path) -> None:
    """Bad inputs get messages; then a run whose label PNG equals `glaclip segment`'s."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, proc = server
    d = browser
    d.get(url)
    _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#glaclip-run"), 60, "the page")
    upload = d.find_element(By.CSS_SELECTOR, "#glaclip-image input[type=file]")
    box = d.find_element(By.CSS_SELECTOR, "#glaclip-classes textarea")
    button = d.find_element(By.CSS_SELECTOR, "#glaclip-run")

    # bad input 1: no image
    box.send_keys("cat, floor; carpet, wall")
    button.click()
    _wait(lambda: any("No image" in t for t in _toasts(d)), 60, "the no-image message")

    # bad input 2: a file that is not an image
    broken = tmp_path / "broken.jpg"
    broken.write_text("this is not a picture")
    upload.send_keys(str(broken))
    time.sleep(1)
    button.click()
    _wait(
        lambda: any("broken.jpg is not an image" in t for t in _toasts(d)),
        60,
        "the not-an-image message",
    )
    d.save_screenshot(str(tmp_path / "demo_error.png"))
    assert proc.poll() is None

    # a real run: ProxyCLIP per window at threshold 0.45
    for close in d.find_elements(By.CSS_SELECTOR, "[data-testid=toast-close]"):
        close.click()
    d.find_element(By.CSS_SELECTOR, "#glaclip-image button[aria-label='Remove Image']").click()
    upload = _wait(
        lambda: d.find_elements(By.CSS_SELECTOR, "#glaclip-image input[type=file]"), 10, "upload"
    )[0]
    upload.send_keys(str(CHELSEA))
    d.find_element(
        By.XPATH, "//*[@id='glaclip-method']//label[contains(., 'ProxyCLIP per window')]"
    ).click()
    number = d.find_element(By.CSS_SELECTOR, "#glaclip-threshold input[type=number]")
    number.send_keys(Keys.CONTROL, "a")
    number.send_keys("0.45", Keys.TAB)
    time.sleep(0.5)
    button.click()
    link = _wait(
        lambda: d.find_elements(By.CSS_SELECTOR, "#glaclip-files a[download='chelsea.png']"),
        180,
        "the download links",
    )[0]
    # the image may still be loading when its links appear: wait until it has a width
    width = _wait(
        lambda: d.execute_script(
            "const i = document.querySelector('#glaclip-overlay img');"
            "return i && i.complete ? i.naturalWidth : 0;"
        ),
        30,
        "the overlay image to load",
    )
    assert width > 451  # with legend
    legend = d.find_element(By.CSS_SELECTOR, "#glaclip-annotated").text
    assert any(name in legend for name in ("cat", "floor", "wall"))
    assert (
        "ProxyCLIP per window, probability threshold 0.45"
        in d.find_element(By.CSS_SELECTOR, "#glaclip-shares").text
    )
    assert "Seconds per stage" in d.find_element(By.CSS_SELECTOR, "#glaclip-timings").text
    time.sleep(1)  # let the images settle before the screenshot
    d.save_screenshot(str(tmp_path / "demo.png"))
    if os.environ.get("GLACLIP_DEMO_SCREENSHOT"):
        d.save_screenshot(os.environ["GLACLIP_DEMO_SCREENSHOT"])

    link.click()
    png = d.downloads / "chelsea.png"
    _wait(png.is_file, 30, "the downloaded label PNG")
    record_url = d.find_element(
        By.CSS_SELECTOR, "#glaclip-files a[download='chelsea.json']"
    ).get_attribute("href")
    with urllib.request.urlopen(record_url, timeout=10) as r:
        record = json.loads(r.read())

    out = tmp_path / "cli"
    args = ["segment", str(CHELSEA), "--classes", "cat, floor; carpet, wall", "--out", str(out)]
    assert main(args + ["--no-kv-extension", "--prob-threshold", "0.45"] + tiny_model_args) == 0
    assert png.read_bytes() == (out / "chelsea.png").read_bytes()
    labels = np.asarray(Image.open(png))
    assert 255 in labels and (labels < 3).any()
    want = json.loads((out / "chelsea.json").read_text())
    assert record["settings"] == want["settings"] and record["classes"] == want["classes"]
    assert record["settings"]["kv_extension"] is False
    assert record["models"] == want["models"] and record["image"] == "chelsea.jpg"

    # the same photo, other classes: the page answers from the photo's kept features
    timings = d.find_element(By.CSS_SELECTOR, "#glaclip-timings")
    assert "Image features computed and kept" in timings.text
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("cat, sofa; couch")
    button.click()
    _wait(lambda: "Image features reused" in timings.text, 120, "the features reused")
    assert "sofa" in d.find_element(By.CSS_SELECTOR, "#glaclip-shares").text
    assert proc.poll() is None
