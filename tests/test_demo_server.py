"""The demo as a server faces its clients: requests take turns even when one is cancelled, a
request's files are reached only through its answer, and failures are one sentence."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from glaclip import Segmenter
from glaclip.demo import logic, views
from glaclip.demo.turns import RequestGate
from tests.waiting import free_port, wait_until

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

CHELSEA = logic.EXAMPLES_DIR / "chelsea.jpg"


class _Server:
    def __init__(self, segmenter: Segmenter) -> None:
        from glaclip.demo.app import build_app, launch_options

        self.folders = views.RequestFolders()
        self.gate = RequestGate()
        self.app = build_app(segmenter, {"clip": "tiny"}, folders=self.folders, gate=self.gate)
        self.app.queue(default_concurrency_limit=1)
        options = launch_options("127.0.0.1", free_port(), False)
        self.app.launch(prevent_thread_lock=True, quiet=True, **options)
        self.url = f"http://127.0.0.1:{options['server_port']}/"

    def client(self):
        return gradio_client.Client(self.url, download_files=False, verbose=False)

    def close(self) -> None:
        self.app.close()
        self.folders.cleanup()


@pytest.fixture(scope="module")
def server(golden_modules):
    seg = Segmenter.from_modules(*golden_modules, device="cpu", text_cache_dir=None)
    srv = _Server(seg)
    try:
        yield srv
    finally:
        srv.close()


def _submit(client, classes: str = "cat, floor; carpet, wall", image=None):
    image = image if image is not None else gradio_client.handle_file(str(CHELSEA))
    return client.submit(image, classes, "GLA-CLIP", 0.0, api_name="/segment")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def test_a_request_s_files_are_reached_only_through_its_answer(server) -> None:
    result = _submit(server.client()).result(timeout=300)
    files = result[-1]
    record = next(f for f in files if f["orig_name"].endswith(".json"))
    status, body = _get(record["url"])
    assert status == 200 and json.loads(body)["image"] == "chelsea.jpg"
    # the request's own folder on the server is not served, whatever its name
    written = sorted(server.folders.root.rglob("chelsea.json"))
    assert written, "the request wrote no file"
    direct = urllib.parse.urljoin(server.url, f"gradio_api/file={written[-1]}")
    assert _get(direct)[0] == 403
    # and its name tells nothing of another request's: 128 random bits, no sequence
    folder = written[-1].parent.name
    assert len(folder) == 32 and int(folder, 16) >= 0
    assert folder != server.folders.new().name


def test_a_cancelled_request_keeps_its_turn_and_stops(server, monkeypatch) -> None:
    """Cancel a request while it runs, then send another: the second waits for the first to
    end (never two on the one Segmenter), and the first stops at its next step instead of
    running to its end."""
    entered: list[int] = []
    release = threading.Event()
    real = Segmenter.encode_image
    encoded: list[int] = []

    def encode_image(self, image, progress=None):
        entered.append(len(entered))
        if len(entered) == 1:  # the first request holds here until the test lets it go
            release.wait(300)
            if progress is not None:
                progress("windows", 0, 1)  # its next step: a cancelled request stops here
        encoded.append(1)
        return real(self, image, progress)

    monkeypatch.setattr(Segmenter, "encode_image", encode_image)
    client = server.client()
    photo = gradio_client.handle_file(str(logic.EXAMPLES_DIR / "coffee.jpg"))  # not yet kept
    first = _submit(client, "a dog, a sofa", photo)
    wait_until(lambda: entered, "the first request to start")
    first.cancel()
    second = _submit(client, "a cat, a rug", photo)
    try:
        wait_until(lambda: server.gate.waiting or len(entered) > 1, "the second request")
        assert len(entered) == 1, "two requests ran at once on the shared Segmenter"
        assert server.gate.waiting == 1
    finally:
        release.set()
    result = second.result(timeout=300)
    assert len(entered) == 2 and len(encoded) == 1  # the cancelled one stopped before encoding
    assert "a cat" in result[2]


@pytest.mark.parametrize(
    ("image", "classes", "message"),
    [
        (None, ["cat", "dog"], "expected the class names as one text, got a list"),
        (None, 5, "expected the class names as one text, got a int"),
        (None, "word " * 300, "this demo takes names of up to 100 characters"),
        (None, ", ".join(f"c{i}" for i in range(201)), "this demo takes at most 200"),
        (7, "cat", ""),  # refused by Gradio's own check of the payload, before the page's
    ],
)
def test_bad_requests_get_one_sentence(server, image, classes, message) -> None:
    photo = gradio_client.handle_file(str(CHELSEA)) if image is None else image
    job = server.client().submit(photo, classes, "GLA-CLIP", 0.0, api_name="/segment")
    with pytest.raises(Exception) as info:  # noqa: PT011 - the client's own error type
        job.result(timeout=300)
    text = str(info.value)
    assert message in text
    assert "Traceback" not in text and str(server.folders.root) not in text


def test_a_lone_surrogate_through_the_api_gets_one_sentence(server) -> None:
    """JSON may carry ``\\udce9`` (a lone surrogate, no text at all); the page's answer is a
    message, not an encoding error after the names were embedded."""
    httpx = pytest.importorskip("httpx")
    with CHELSEA.open("rb") as f:
        uploaded = httpx.post(
            urllib.parse.urljoin(server.url, "gradio_api/upload"), files={"files": f}
        ).json()
    photo = {"path": uploaded[0], "orig_name": "chelsea.jpg", "meta": {"_type": "gradio.FileData"}}
    body = json.dumps({"data": [photo, "caf\udce9, dog", "GLA-CLIP", 0.0]}).encode("ascii")
    call = urllib.parse.urljoin(server.url, "gradio_api/call/segment")
    request = urllib.request.Request(call, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{call}/{event}", timeout=300) as r:
        stream = r.read().decode("utf-8", "replace")
    assert "event: error" in stream and "lone surrogate" in stream and "0xe9" in stream
    assert "Traceback" not in stream
