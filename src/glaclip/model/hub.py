"""Where weights come from: the Hugging Face hub cache, a quick network check, and readable
summaries of checkpoints that do not fit their architecture.

Without a network, open_clip and timm ask the hub again and again (huggingface_hub retries each
request with back-off: about a minute and fifty log lines) before they fail. ``check_download``
answers at once: weights already in the cache need no network; otherwise one TCP connection to
the hub (3 s at most) tells whether a download can work.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from urllib.parse import urlparse

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the hub libraries use their cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_cache(repo_id: str, filenames: Sequence[str]) -> bool:
    """Whether one of ``filenames`` of the hub repository ``repo_id`` is in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of open_clip and timm
        return False
    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:  # noqa: BLE001 - a malformed id: let the loader report it
            return True
        if isinstance(found, str):
            return True
    return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub (``HF_ENDPOINT``, default huggingface.co). True when a
    proxy is configured (the connection would go through it, which this does not try)."""
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def check_download(repo_id: str | None, filenames: Sequence[str]) -> str | None:
    """Why the weights of ``repo_id`` cannot be obtained, or None if they can (cached, or the
    hub answers). ``repo_id`` None (weights from another address) is not checked."""
    if not repo_id or in_cache(repo_id, filenames):
        return None
    if offline():
        return f"HF_HUB_OFFLINE is set and {repo_id} is not in the local cache"
    if not hub_reachable():
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
        return f"{host} cannot be reached (no network?) and {repo_id} is not in the local cache"
    return None


_LIST = re.compile(r'"([^"]+)"')


def summarise_load_error(message: str) -> str | None:
    """A short account of PyTorch's "Error(s) in loading state_dict" message (which lists every
    key), or None for another message."""
    if "Error(s) in loading state_dict" not in message:
        return None
    missing: list[str] = []
    unexpected: list[str] = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Missing key(s)"):
            missing += _LIST.findall(line)
        elif line.startswith("Unexpected key(s)"):
            unexpected += _LIST.findall(line)
    mismatched = re.findall(r"size mismatch for ([^:]+):", message)
    parts = []
    for count_of, what in (
        (missing, "missing"),
        (unexpected, "unexpected"),
        (mismatched, "of another shape"),
    ):
        if count_of:
            examples = ", ".join(count_of[:3]) + (", ..." if len(count_of) > 3 else "")
            parts.append(f"{len(count_of)} weights {what} (e.g. {examples})")
    return "; ".join(parts) or "the weights do not fit"
