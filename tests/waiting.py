"""Helpers of the tests that run servers: a free loopback port, and waiting for a condition."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 120.0, interval: float = 0.05
) -> Any:
    """Poll ``condition`` every ``interval`` seconds until it returns something true, and
    return that; fail naming ``what`` after ``timeout`` seconds (a long bound: only a hung
    test reaches it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
