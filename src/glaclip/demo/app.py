"""The demo's Gradio page over one loaded Segmenter: ``build_app`` and ``serve``.

Needs the ``demo`` extra: ``pip install "glaclip[demo]"``. The page's methods are read from the
registry of base methods when the page is built (``logic.methods``).
"""

from __future__ import annotations

import html
import math
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the page

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from glaclip.demo.logic import (  # noqa: E402
    DEFAULT_MAX_MEGAPIXELS,
    EXAMPLES,
    EXAMPLES_DIR,
    DemoInputError,
    FeatureStore,
    available_methods,
    default_method,
    preset_choices,
    preset_text,
    run_request,
)
from glaclip.demo.views import (  # noqa: E402
    RequestFolders,
    annotation_view,
    model_label,
    shares_table,
    summary_line,
    timings_line,
    upload_path,
)
from glaclip.segmenter import Segmenter  # noqa: E402

__all__ = ["build_app", "serve"]


def _page_error(message: str) -> gr.Error:
    """An error shown on the page until closed (bad input, not a server fault: no traceback)."""
    return gr.Error(html.escape(message), duration=None, print_exception=False)


@dataclass
class _Inputs:
    """The page's input components."""

    image: gr.Image
    classes: gr.Textbox
    preset: gr.Dropdown
    method: gr.Radio
    threshold: gr.Slider
    run: gr.Button


def _segment_handler(
    segmenter: Segmenter,
    models: dict[str, Any],
    max_pixels: int,
    folders: RequestFolders,
    store: FeatureStore,
) -> Callable[..., tuple[Any, ...]]:
    """The page's Segment action: a request (``run_request``) and what the outputs show."""

    def segment(
        image: Any,
        class_text: str,
        method: str,
        threshold: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for progress
    ) -> tuple[Any, ...]:
        image_path, name = upload_path(image)
        try:
            run = run_request(
                segmenter, models, image_path, class_text, method, threshold, folders.new(),
                max_pixels, name=name, progress=lambda f, message: progress(f, desc=message),
                store=store,
            )  # fmt: skip
        except DemoInputError as err:
            raise _page_error(str(err)) from None
        names = [c[0] for c in run.result.class_names]
        if run.threshold > 0 and not np.isin(run.result.labels, np.arange(len(names))).any():
            gr.Warning(
                f"No pixel reached the probability threshold {run.threshold:g}: the whole image "
                "is unlabelled. Lower the threshold."
            )
        value, colours = annotation_view(run.rgb, run.result.labels, names)
        files = [str(run.files.labels), str(run.files.record), str(run.files.overlay)]
        return (
            str(run.files.overlay),
            gr.AnnotatedImage(value=value, color_map=colours),
            summary_line(run) + "\n\n" + shares_table(run.result),
            timings_line(run),
            files,
        )

    return segment


def _heading(segmenter: Segmenter) -> str:
    """The page's title and the models it runs."""
    clip_name = model_label(segmenter.clip_info.name)
    vfm_text = "no VFM (keys from CLIP itself)"
    if segmenter.vfm_info is not None:
        vfm_text = f"VFM `{model_label(segmenter.vfm_info.name)}`"
    return (
        "## glaclip: segment an image into the classes you name\n"
        f"GLA-CLIP, training-free. CLIP `{clip_name}`, {vfm_text}, on `{segmenter.device}`."
    )


def _input_column(segmenter: Segmenter) -> _Inputs:
    """The left column: image, classes, vocabulary menu, method, threshold, Segment, examples."""
    image = gr.Image(
        label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="glaclip-image"
    )
    classes = gr.Textbox(
        label="Classes",
        info="commas between classes, ';' between synonyms of one class",
        placeholder="sky, road, car, tree, person; man; woman",
        lines=2,
        elem_id="glaclip-classes",
    )
    preset = gr.Dropdown(
        choices=preset_choices(),
        value=None,
        label="Vocabulary of a benchmark",
        elem_id="glaclip-preset",
    )
    with gr.Row():
        method = gr.Radio(
            choices=available_methods(segmenter),
            value=default_method(segmenter),
            label="Method",
            elem_id="glaclip-method",
        )
        threshold = gr.Slider(
            0.0, 1.0, value=segmenter.settings.post.prob_threshold, step=0.01,
            label="Probability threshold", info="below it a pixel stays unlabelled",
            elem_id="glaclip-threshold",
        )  # fmt: skip
    run = gr.Button("Segment", variant="primary", elem_id="glaclip-run")
    gr.Examples(
        examples=[[str(EXAMPLES_DIR / f), text] for f, text in EXAMPLES],
        inputs=[image, classes],
        label="Example photographs (public domain)",
    )
    return _Inputs(image, classes, preset, method, threshold, run)


def _output_column() -> list[gr.components.Component]:
    """The right column: overlay, annotated classes, class table, timings, downloads."""
    overlay_view = gr.Image(  # no corner buttons: they would hide the legend
        label="Overlay", type="filepath", interactive=False, buttons=[], elem_id="glaclip-overlay"
    )
    annotated = gr.AnnotatedImage(
        label="Classes: hover over or click a class to highlight its pixels",
        elem_id="glaclip-annotated",
    )
    shares = gr.Markdown(elem_id="glaclip-shares")
    timings = gr.Markdown(elem_id="glaclip-timings")
    files = gr.File(
        label="Downloads: label PNG, JSON and overlay, as glaclip segment writes them",
        file_count="multiple",
        interactive=False,
        elem_id="glaclip-files",
    )
    return [overlay_view, annotated, shares, timings, files]


def build_app(
    segmenter: Segmenter,
    models: dict[str, Any],
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    folders: RequestFolders | None = None,
) -> gr.Blocks:
    """The Gradio page over ``segmenter`` (not launched; see ``serve``). The page keeps the
    last image's features (``FeatureStore``): new classes on the same photo reuse them.

    Raises:
        ValueError: ``max_megapixels`` is not a finite number above 0.
    """
    if not math.isfinite(max_megapixels) or max_megapixels <= 0:
        raise ValueError(f"max_megapixels must be a finite number above 0, got {max_megapixels}")
    folders = folders or RequestFolders()
    segment = _segment_handler(
        segmenter, models, int(max_megapixels * 1e6), folders, FeatureStore()
    )
    # delete_cache: Gradio's copies of uploads and results live an hour (and not past a restart)
    with gr.Blocks(title="glaclip", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(_heading(segmenter))
        with gr.Row():
            with gr.Column(scale=1):
                page = _input_column(segmenter)
            with gr.Column(scale=1):
                outputs = _output_column()
        page.preset.change(preset_text, inputs=page.preset, outputs=page.classes)
        inputs = [page.image, page.classes, page.method, page.threshold]
        # preprocess=False: the upload is read by glaclip's reader (see upload_path)
        page.run.click(segment, inputs=inputs, outputs=outputs, preprocess=False)
        page.classes.submit(segment, inputs=inputs, outputs=outputs, preprocess=False)
    return app


def serve(
    segmenter: Segmenter,
    models: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    announce: Callable[[str, str | None], None] | None = None,
) -> None:
    """Serve the page until interrupted. Binds ``host`` only; ``share`` opens a public link.
    ``announce(local_url, share_url or None)`` is called once the page listens (Gradio's own
    lines, which speak of ``launch()``, are silenced)."""
    folders = RequestFolders()
    app = build_app(segmenter, models, max_megapixels, folders)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops it like Ctrl+C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    app.queue(default_concurrency_limit=1)  # one model: requests run one at a time
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            show_error=True,
            ssr_mode=False,
            allowed_paths=[str(EXAMPLES_DIR), str(folders.root)],
            max_file_size="100mb",
            theme=gr.themes.Default(),
            quiet=True,
            prevent_thread_lock=True,
        )
        if announce is not None:
            announce(app.local_url, app.share_url)
        app.block_thread()  # until interrupted
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        folders.cleanup()


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
