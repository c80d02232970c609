from __future__ import annotations

import pytest
import torch

from glaclip.text import (
    TextEncoder,
    expand_queries,
    openai_templates,
    parse_class_lines,
    parse_classes_arg,
    read_class_file,
)


def test_parse_classes_arg_commas_and_synonyms() -> None:
    lines = parse_classes_arg("sky, tree ,person; man")
    assert lines == ["sky", "tree", "person; man"]
    assert parse_class_lines(lines) == [["sky"], ["tree"], ["person", "man"]]


@pytest.mark.parametrize("text", ["", "  ", ",", "sky,,tree", "sky, "])
def test_parse_classes_arg_rejects_empty(text: str) -> None:
    with pytest.raises(ValueError, match="--classes"):
        parse_classes_arg(text)


def test_empty_synonym_named() -> None:
    with pytest.raises(ValueError, match="empty synonym"):
        parse_class_lines(["sky", "person; ; man"])
    with pytest.raises(ValueError, match="empty"):
        parse_class_lines([])


def test_expand_queries_owner() -> None:
    names, owner = expand_queries([["a"], ["b", "c", "d"], ["e"]])
    assert names == ["a", "b", "c", "d", "e"]
    assert owner == [0, 1, 1, 1, 2]


def test_class_file(tmp_path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("sky\n\nperson; man\n", encoding="utf-8")
    assert read_class_file(f) == ["sky", "person; man"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_class_file(tmp_path / "nope.txt")


def test_templates_are_openais_80() -> None:
    t = openai_templates()
    assert len(t) == 80 and t[0]("cat") == "a bad photo of a cat."


def test_text_cache_reused_and_on_disk(golden_modules, tmp_path) -> None:
    clip, _, tok = golden_modules
    enc = TextEncoder(clip, tok, "tiny|none", cache_dir=tmp_path)
    first = enc.encode(["cat", "dog", "cat"])
    assert enc.encoded_count == 2
    assert torch.equal(first[0], first[2])
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-6)
    enc.encode(["dog"])
    assert enc.encoded_count == 2  # memory cache

    again = TextEncoder(clip, tok, "tiny|none", cache_dir=tmp_path)
    second = again.encode(["dog", "cat"])
    assert again.encoded_count == 0  # disk cache
    assert torch.equal(second, first[[1, 0]])
    assert not list(tmp_path.glob("*.tmp"))

    other = TextEncoder(clip, tok, "another-model", cache_dir=tmp_path)
    other.encode(["cat"])
    assert other.encoded_count == 1  # keyed by the model identity


def test_text_cache_damaged_file_is_rebuilt(golden_modules, tmp_path) -> None:
    clip, _, tok = golden_modules
    enc = TextEncoder(clip, tok, "m", cache_dir=tmp_path)
    enc.encode(["cat"])
    enc.cache_path.write_bytes(b"not a torch file")
    again = TextEncoder(clip, tok, "m", cache_dir=tmp_path)
    again.encode(["cat"])
    assert again.encoded_count == 1
