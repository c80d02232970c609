"""Requests take turns on the demo's one Segmenter, and a cancelled request stops.

Gradio's queue runs one request at a time, but cancelling a request (the page's stop, a closed
tab, the API's ``cancel``) only abandons the coroutine that awaits it: the thread that runs the
request goes on, and the queue starts the next one beside it. Here every request takes its
turn through a ``RequestGate``, which only the request's own thread gives back when it ends,
cancelled or not; and a cancelled request is told through its ``threading.Event``, which the
request checks at each step it reports (``Stopper``), so it stops within one step (one window
batch or block of the attention, eight class names) instead of running to its end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class RequestCancelled(Exception):
    """The request was cancelled by its client; raised at its next step."""


class Stopper:
    """``check()`` raises ``RequestCancelled`` once ``event`` is set (None: never)."""

    def __init__(self, event: threading.Event | None = None) -> None:
        self.event = event

    def check(self) -> None:
        """Raise ``RequestCancelled`` if the request was cancelled."""
        if self.event is not None and self.event.is_set():
            raise RequestCancelled("the request was cancelled")


class RequestGate:
    """One request at a time, held by the thread that runs it until that thread ends.

    ``waiting`` and ``running`` count the requests waiting for their turn and running (at
    most 1): what the page, and the tests, can see of the queue.
    """

    def __init__(self) -> None:
        self._turn = threading.Lock()
        self._count = threading.Lock()
        self.waiting = 0
        self.running = 0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this request's turn, then hold it for the duration of the block."""
        with self._count:
            self.waiting += 1
        try:
            self._turn.acquire()
        finally:
            with self._count:
                self.waiting -= 1
        try:
            with self._count:
                self.running += 1
            yield
        finally:
            with self._count:
                self.running -= 1
            self._turn.release()
