"""The text-embedding cache: appended to (never rewritten per call), bounded, robust to a torn
write, and, in the demo, kept free of the names users type unless the operator asks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from glaclip import Segmenter
from glaclip.cli.main import main
from glaclip.demo import logic
from glaclip.text.cache import MAGIC, BoundedCache, EmbeddingFile, encode_record
from glaclip.text.encoder import TextEncoder


@pytest.fixture
def encoder_parts(golden_modules):
    clip, _, tok = golden_modules
    return clip, tok


def _names(start: int, count: int) -> list[str]:
    return [f"thing number {i}" for i in range(start, start + count)]


def test_each_call_appends_only_the_names_it_encoded(encoder_parts, tmp_path) -> None:
    enc = TextEncoder(*encoder_parts, cache_dir=tmp_path)
    enc.encode(_names(0, 8))
    path = enc.cache_path
    before, inode = path.read_bytes(), path.stat().st_ino
    new = enc.encode(_names(0, 10))  # two new names
    after = path.read_bytes()
    assert path.stat().st_ino == inode and after.startswith(before)  # appended, not rewritten
    records = b"".join(encode_record(n, new[8 + i]) for i, n in enumerate(_names(8, 2)))
    assert after[len(before) :] == records
    again = TextEncoder(*encoder_parts, cache_dir=tmp_path)
    assert torch.equal(again.encode(_names(0, 10)), new) and again.encoded_count == 0


def test_the_cache_is_bounded_in_memory_and_on_disk(encoder_parts, tmp_path) -> None:
    enc = TextEncoder(*encoder_parts, cache_dir=tmp_path, max_names=8)
    for start in range(0, 30, 5):
        out = enc.encode(_names(start, 5))
        assert out.shape[0] == 5
    assert len(enc._memory) <= 8
    on_disk = EmbeddingFile(enc.cache_path).load()
    assert 0 < len(on_disk) <= 8 and set(on_disk) <= set(_names(0, 30))
    assert _names(29, 1)[0] in on_disk  # the newest are kept
    assert TextEncoder(*encoder_parts, max_names=3).encode(_names(0, 7)).shape[0] == 7


def test_a_torn_or_damaged_record_loses_that_name_only(encoder_parts, tmp_path) -> None:
    enc = TextEncoder(*encoder_parts, cache_dir=tmp_path)
    first = enc.encode(_names(0, 3))
    path = enc.cache_path
    data = path.read_bytes()
    size = len(data) // 3
    damaged = data[:size] + data[size : 2 * size - 7] + b"\x00" * 7 + data[2 * size :]
    path.write_bytes(damaged + data[: size // 2])  # a flipped record, then a torn write
    enc2 = TextEncoder(*encoder_parts, cache_dir=tmp_path)
    got = enc2.encode(_names(0, 3))
    assert enc2.encoded_count == 1 and torch.equal(got, first)
    enc2.encode(_names(3, 1))  # an append after the torn tail is read back
    enc3 = TextEncoder(*encoder_parts, cache_dir=tmp_path)
    enc3.encode(_names(0, 4))
    assert enc3.encoded_count == 0


def test_records_round_trip_any_name() -> None:
    emb = torch.arange(6, dtype=torch.float32)
    names = ["cat", "東京 tower", "a; b", "x" * 1000]
    data = b"".join(encode_record(n, emb * i) for i, n in enumerate(names))
    path_data = MAGIC + b"junk" + data
    from glaclip.text.cache import decode_records

    got = list(decode_records(path_data))
    assert [n for n, _ in got] == names
    assert all(torch.equal(e, emb * i) for i, (_, e) in enumerate(got))


def test_bounded_cache_drops_the_least_recently_used() -> None:
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3


def test_one_encoder_from_several_threads(encoder_parts, tmp_path) -> None:
    enc = TextEncoder(*encoder_parts, cache_dir=tmp_path)
    want = TextEncoder(*encoder_parts).encode(_names(0, 12))
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(3)

    def work(k: int) -> None:
        start.wait()
        results[k] = enc.encode(_names(0, 12))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.allclose(r, want, atol=1e-6) for r in results.values())
    assert enc.encoded_count == 12 and len(EmbeddingFile(enc.cache_path).load()) == 12


# ------------------------------------------------------------------------------ the demo
def test_the_demo_keeps_users_names_out_of_the_disk_cache(golden_modules, tmp_path) -> None:
    seg = Segmenter.from_modules(*golden_modules, text_cache_dir=tmp_path / "cache")
    logic.keep_user_names_out(seg)
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(photo)
    out = tmp_path / "out"
    out.mkdir()
    logic.run_request(seg, {}, photo, "my secret project, cat", "GLA-CLIP", 0.0, out)
    stored = EmbeddingFile(seg.text.cache_path).load()
    assert "cat" in stored and "my secret project" not in stored
    assert "my secret project" in seg.text._memory  # still served from memory


@pytest.mark.parametrize(("flag", "persisted"), [([], False), (["--cache-class-names"], True)])
def test_the_demo_writes_users_names_only_when_its_operator_asks(
    flag, persisted, tiny_model_args, monkeypatch
) -> None:
    import glaclip.demo.app as app

    seen = {}

    def fake_launch(self, **kwargs):  # records, then stands for a page that listens
        seen["persist"] = seen["segmenter"].text.persist
        self.local_url, self.share_url = "http://127.0.0.1:7860/", None

    real_build = app.build_app

    def build(segmenter, *args, **kwargs):
        seen["segmenter"] = segmenter
        return real_build(segmenter, *args, **kwargs)

    monkeypatch.setattr(app, "build_app", build)
    monkeypatch.setattr(app.gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(app.gr.Blocks, "block_thread", lambda self: None)  # no waiting
    assert main(["demo", *flag, *tiny_model_args]) == 0
    persist = seen["persist"]
    assert (persist is None) == persisted
    if persist is not None:
        assert persist("cat") and not persist("my secret project")
