"""The browser demo (``glaclip demo``): a Gradio page over one loaded Segmenter.

* ``glaclip.demo.logic``: a request without Gradio (check the inputs, segment, write the files
  ``glaclip segment`` writes), the method menu from the registry of base methods, and the
  ``FeatureStore`` that keeps the last image's features for new classes on the same photo.
* ``glaclip.demo.views``: what the page shows of a request, without Gradio.
* ``glaclip.demo.turns``: requests take turns on the one Segmenter, cancelled ones included,
  and a cancelled request stops at its next step.
* ``glaclip.demo.app``: the page (``build_app``) and its server (``serve``); needs the ``demo``
  extra (``pip install "glaclip[demo]"``), and is imported only when one of them is asked for,
  so that the rest imports without Gradio.
"""

from __future__ import annotations

from typing import Any

from glaclip.demo.logic import (
    DATASET_NAMES,
    DEFAULT_MAX_CLASSES,
    DEFAULT_MAX_MEGAPIXELS,
    DEFAULT_MAX_NAME_LENGTH,
    EXAMPLES,
    EXAMPLES_DIR,
    TEXT_CHUNK,
    DemoInputError,
    DemoRun,
    DemoServerError,
    FeatureStore,
    available_methods,
    benchmark_names,
    check_class_limits,
    check_demo_limits,
    check_image,
    default_method,
    embed_classes,
    feature_key,
    file_digest,
    keep_user_names_out,
    method_settings,
    methods,
    not_an_image_message,
    parse_page_classes,
    preset_choices,
    preset_text,
    read_upload,
    request_segmenter,
    run_request,
    safe_stem,
    segment_upload,
    shown_name,
    too_large_message,
)
from glaclip.demo.turns import RequestCancelled, RequestGate, Stopper
from glaclip.demo.views import (
    ANNOTATION_SIDE,
    KEEP_REQUESTS,
    RequestFolders,
    annotation_view,
    hex_colour,
    model_label,
    shares_table,
    summary_line,
    timings_line,
    upload_path,
)

_PAGE = ("build_app", "launch_options", "serve")  # in glaclip.demo.app, which imports Gradio

__all__ = [
    "ANNOTATION_SIDE",
    "DATASET_NAMES",
    "DEFAULT_MAX_CLASSES",
    "DEFAULT_MAX_MEGAPIXELS",
    "DEFAULT_MAX_NAME_LENGTH",
    "EXAMPLES",
    "EXAMPLES_DIR",
    "KEEP_REQUESTS",
    "TEXT_CHUNK",
    "DemoInputError",
    "DemoRun",
    "DemoServerError",
    "FeatureStore",
    "RequestCancelled",
    "RequestFolders",
    "RequestGate",
    "Stopper",
    "annotation_view",
    "available_methods",
    "benchmark_names",
    "build_app",
    "check_class_limits",
    "check_demo_limits",
    "check_image",
    "default_method",
    "embed_classes",
    "feature_key",
    "file_digest",
    "keep_user_names_out",
    "hex_colour",
    "launch_options",
    "method_settings",
    "methods",
    "model_label",
    "not_an_image_message",
    "parse_page_classes",
    "preset_choices",
    "preset_text",
    "read_upload",
    "request_segmenter",
    "run_request",
    "safe_stem",
    "segment_upload",
    "serve",
    "shares_table",
    "shown_name",
    "summary_line",
    "timings_line",
    "too_large_message",
    "upload_path",
]


def __getattr__(name: str) -> Any:
    """``build_app`` and ``serve`` (Gradio is imported with them), and ``METHODS``: the method
    menu as the registry gives it now (``methods()``)."""
    if name in _PAGE:
        from glaclip.demo import app

        return getattr(app, name)
    if name == "METHODS":
        return methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
