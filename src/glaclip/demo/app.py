"""The demo's Gradio page over one loaded Segmenter: ``build_app`` and ``serve``.

Needs the ``demo`` extra: ``pip install "glaclip[demo]"``. The page's methods are read from the
registry of base methods when the page is built (``logic.methods``).
"""

from __future__ import annotations

import functools
import html
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the page

import anyio  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from glaclip.demo.inputs import (
    DEFAULT_MAX_CLASSES,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MAX_NAME_LENGTH,
    DemoInputError,
    check_demo_limits,
    preset_choices,
    preset_text,
)
from glaclip.demo.logic import (
    EXAMPLES,
    EXAMPLES_DIR,
    DemoRun,
    DemoServerError,
    available_methods,
    default_method,
    keep_user_names_out,
    run_request,
)
from glaclip.demo.store import FeatureStore
from glaclip.demo.turns import RequestCancelled, RequestGate, Stopper  # noqa: E402
from glaclip.demo.views import (  # noqa: E402
    RequestFolders,
    annotation_view,
    model_label,
    shares_table,
    summary_line,
    timings_line,
    upload_path,
)
from glaclip.model.segmenter import Segmenter  # noqa: E402

__all__ = ["build_app", "launch_options", "serve"]

_log = logging.getLogger(__name__)
_FAILED = (
    "Segmenting failed on the server ({kind}); the error is in the server's log. Try again, or "
    "tell the operator of this demo."
)


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


@dataclass(frozen=True)
class _Limits:
    """What one request may ask (``glaclip demo --max-megapixels``, ``--max-classes``,
    ``--max-name-length``)."""

    pixels: int
    classes: int
    name_length: int


def _segment_handler(
    segmenter: Segmenter,
    models: dict[str, Any],
    limits: _Limits,
    folders: RequestFolders,
    store: FeatureStore,
    gate: RequestGate,
) -> Callable[..., Any]:
    """The Segment action: ``run_request`` in a worker thread holding its turn (``gate``) to the
    end, then what the outputs show. A cancelled request is told (``stop``) and ends at its next
    step; every failure reaches the page as one sentence (no traceback, no server path)."""

    def work(
        image: Any, text: Any, method: Any, threshold: Any, progress: Any, stop: threading.Event
    ) -> tuple[Any, ...]:
        with gate.turn():
            Stopper(stop).check()  # cancelled while it waited for its turn
            image_path, name = upload_path(image)
            run = run_request(
                segmenter, models, image_path, text, method, threshold, folders.new(),
                limits.pixels, name=name, progress=lambda f, message: progress(f, desc=message),
                store=store, max_classes=limits.classes, max_name_length=limits.name_length,
                stop=stop,
            )  # fmt: skip
        return _show(run)

    async def segment(
        image: Any,
        class_text: str,
        method: str,
        threshold: float,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's way to ask for progress
    ) -> tuple[Any, ...]:
        stop = threading.Event()
        job = functools.partial(work, image, class_text, method, threshold, progress, stop)
        try:
            return await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
        except (DemoInputError, DemoServerError) as err:
            raise _page_error(str(err)) from None
        except RequestCancelled:
            raise _page_error("The request was cancelled.") from None
        except Exception as err:  # noqa: BLE001 - a fault of the server: logged, one sentence
            _log.exception("a demo request failed")
            raise _page_error(_FAILED.format(kind=type(err).__name__)) from None
        except BaseException:  # cancelled: the worker stops at its next step, then frees it
            stop.set()
            raise

    return segment


def _show(run: DemoRun) -> tuple[Any, ...]:
    """What the outputs show of a finished request."""
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
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    gate: RequestGate | None = None,
) -> gr.Blocks:
    """The Gradio page over ``segmenter`` (not launched; see ``serve``). The page keeps the
    last image's features (``FeatureStore``): new classes on the same photo reuse them.
    Requests take turns through ``gate`` (a new one by default), cancelled ones included.

    Raises:
        ValueError: a limit that is no finite number above 0 (``check_demo_limits``).
    """
    check_demo_limits(max_megapixels, max_classes, max_name_length)
    folders = folders or RequestFolders()
    limits = _Limits(int(max_megapixels * 1e6), max_classes, max_name_length)
    segment = _segment_handler(
        segmenter, models, limits, folders, FeatureStore(), gate or RequestGate()
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
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH,
    cache_class_names: bool = False,
    announce: Callable[[str, str | None], None] | None = None,
) -> None:
    """Serve the page until interrupted. Binds ``host`` only; ``share`` opens a public link.
    The persistent text cache receives only the benchmark vocabularies' names, unless
    ``cache_class_names`` (``keep_user_names_out``). ``announce(local_url, share_url or
    None)`` is called once the page listens (Gradio's own lines, which speak of ``launch()``,
    are silenced)."""
    if not cache_class_names:
        keep_user_names_out(segmenter)
    folders = RequestFolders()
    app = build_app(segmenter, models, max_megapixels, folders, max_classes, max_name_length)
    previous = _stop_on_signals(app)
    app.queue(default_concurrency_limit=1)  # one model: requests run one at a time
    try:
        app.launch(**launch_options(host, port, share), quiet=True, prevent_thread_lock=True)
        if announce is not None:
            announce(app.local_url, app.share_url)
        app.block_thread()  # until a signal closes the app
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        folders.cleanup()


def launch_options(host: str, port: int, share: bool) -> dict[str, Any]:
    """The keywords of ``Blocks.launch`` for the page.

    Only the bundled examples are served from their own folder; a request's files are copied
    by Gradio into its cache under a name made from their content and reached only through the
    answer that names them, never by a path of the request folders (``RequestFolders``).
    ``show_error`` is off: an error the handler did not turn into one sentence shows no
    message of its own (which could name a server path).
    """
    return {
        "server_name": host,
        "server_port": port,
        "share": share,
        "show_error": False,
        "ssr_mode": False,
        "allowed_paths": [str(EXAMPLES_DIR)],
        "max_file_size": "100mb",
        "theme": gr.themes.Default(),
    }


def _stop_on_signals(app: gr.Blocks) -> dict[int, Any]:
    """Make Ctrl+C and SIGTERM close ``app`` (in the main thread; a SIGINT ignored by the
    parent stays ignored). ``Blocks.close`` ends the heartbeats of open pages before it stops
    the server, so an open page does not hold the shutdown, and prints nothing; a share link's
    tunnel is closed too. A signal before the page listens, or while it closes, raises
    KeyboardInterrupt. Returns the handlers replaced, to be put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(_signum: int, _frame: Any) -> None:
        if not app.is_running:
            raise KeyboardInterrupt
        app.close(verbose=False)
        from gradio import tunneling

        for tunnel in list(getattr(tunneling, "CURRENT_TUNNELS", [])):
            tunnel.kill()

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    return previous
