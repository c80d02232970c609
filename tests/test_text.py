from __future__ import annotations

import re
import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import glaclip.text.encoder as text_module
from glaclip import Segmenter
from glaclip.cli.main import main
from glaclip.text.encoder import TextEncoder, default_cache_dir, openai_templates, text_fingerprint
from glaclip.text.tower import text_truncation_is_exact
from glaclip.text.vocabulary import (
    check_vocabulary,
    expand_queries,
    parse_class_lines,
    parse_classes_arg,
    read_class_file,
)

# ---------------------------------------------------------------------------- tiny text towers
LONG_NAME = " ".join(["very"] * 40) + " long cat"  # about 45 tokens
OVERLONG_NAME = " ".join(["word"] * 100)  # cut at the context, end-of-text at position 76
NAMES = ["a", "cat", "chest of drawers", LONG_NAME, OVERLONG_NAME]
TEMPLATES = [
    lambda c: f"{c}",
    lambda c: f"a photo of a {c}.",
    lambda c: f"there is a {c} in the scene, next to a small table and a lamp on the floor.",
]


def _tiny_clip(state: dict, seed: int, cls_name: str = "CLIP", **text_cfg) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(seed)
    cls = getattr(open_clip.model, cls_name)
    return cls(
        embed_dim=state["clip_embed_dim"],
        vision_cfg=state["clip_vision_cfg"],
        text_cfg={**state["clip_text_cfg"], **text_cfg},
        quick_gelu=state["quick_gelu"],
    ).eval()


def _reference(model: torch.nn.Module, tok, names: list[str]) -> torch.Tensor:
    """SPEC 8 the slow way: every prompt alone through ``encode_text`` over the whole context."""
    rows = []
    with torch.no_grad():
        for name in names:
            prompts = [F.normalize(model.encode_text(tok([t(name)])), dim=-1)[0] for t in TEMPLATES]
            rows.append(F.normalize(torch.stack(prompts).mean(0), dim=-1))
    return torch.stack(rows)


def _lengths_seen(model: torch.nn.Module) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = model.transformer.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[1])
    )
    return seen, handle


# ------------------------------------------------------------------------------- class lists
def test_parse_classes_arg_commas_and_synonyms() -> None:
    lines = parse_classes_arg("sky, tree ,person; man")
    assert lines == ["sky", "tree", "person; man"]
    assert parse_class_lines(lines) == [["sky"], ["tree"], ["person", "man"]]


@pytest.mark.parametrize("text", ["", "  ", ",", "sky,,tree", "sky, "])
def test_parse_classes_arg_rejects_empty(text: str) -> None:
    with pytest.raises(ValueError, match="--classes"):
        parse_classes_arg(text, source="--classes")
    with pytest.raises(ValueError, match="class string") as err:
        parse_classes_arg(text)
    assert "--" not in str(err.value)  # the library does not talk about command-line flags


def test_empty_synonym_named() -> None:
    with pytest.raises(ValueError, match="empty synonym"):
        parse_class_lines(["sky", "person; ; man"])


def test_empty_class_list_error_names_no_flag() -> None:
    with pytest.raises(ValueError, match="empty") as err:
        parse_class_lines([])
    assert "--" not in str(err.value)


@pytest.mark.parametrize(
    ("lines", "position"), [(["", "sky", "road"], 0), (["sky", "  ", "road"], 1)]
)
def test_empty_class_name_is_an_error_naming_its_position(lines: list[str], position: int) -> None:
    with pytest.raises(ValueError, match=f"entry {position} .*empty"):
        parse_class_lines(lines)


def test_class_entry_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="entry 1 is a list"):
        parse_class_lines(["sky", ["person", "man"]])  # type: ignore[list-item]


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


def test_class_file_byte_order_mark_is_removed(tmp_path) -> None:
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffcat\r\ndog; puppy\r\n".encode())
    assert read_class_file(f) == ["cat", "dog; puppy"]


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", b"cat\ndog\x00\x00\x01\n"]
)
def test_binary_class_file_is_named(tmp_path, data: bytes) -> None:
    f = tmp_path / "labels.bin"
    f.write_bytes(data)
    with pytest.raises(ValueError, match=r"labels\.bin.*expected a UTF-8 text file"):
        read_class_file(f)


# -------------------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize(
    ("lines", "loser", "winner"),
    [
        (["cat", "cat", "dog"], 1, 0),
        (["sky", "person; man", "man"], 2, 1),
        (["a; b", "c", "b; a"], 2, 0),
        (["a; b; c", "x", "c; a"], 2, 0),
    ],
)
def test_a_class_that_can_never_win_is_an_error(lines: list[str], loser: int, winner: int) -> None:
    with pytest.raises(ValueError, match=f"class {loser} .*can never win.*class {winner} "):
        check_vocabulary(lines)


@pytest.mark.parametrize(
    ("lines", "classes"),
    [
        (["man", "person; man"], [["man"], ["person", "man"]]),  # person wins with "person"
        (["cat; cat", "dog"], [["cat", "cat"], ["dog"]]),
        (["a; b", " b ;c"], [["a", "b"], ["b", "c"]]),
        (["cat", "Cat"], [["cat"], ["Cat"]]),  # written differently: no encoder to say more
    ],
)
def test_classes_that_can_win_pass(lines: list[str], classes: list[list[str]]) -> None:
    assert check_vocabulary(lines) == classes


# ------------------------------------------------------------------------- truncated encoding
def test_truncated_encoding_equals_the_whole_context(golden_models_state, golden_modules) -> None:
    _, _, tok = golden_modules
    for model in (
        _tiny_clip(golden_models_state, seed=3),
        _tiny_clip(golden_models_state, seed=4, pool_type="eos", eos_id=49407),
    ):
        assert text_truncation_is_exact(model)
        enc = TextEncoder(model, tok, templates=TEMPLATES, batch_prompts=4)
        seen, handle = _lengths_seen(model)
        try:
            got = enc.encode(NAMES)
        finally:
            handle.remove()
        want = _reference(model, tok, NAMES)
        assert (got - want).abs().max() < 1e-6
        # the fast path ran: grouped by length (non-decreasing), short batches truncated
        assert seen == sorted(seen) and seen[0] < 10 and seen[-1] == 77
        assert sum(n < 77 for n in seen) >= len(seen) - 1


def test_untruncated_option_runs_the_whole_context(golden_models_state, golden_modules) -> None:
    _, _, tok = golden_modules
    model = _tiny_clip(golden_models_state, seed=3)
    enc = TextEncoder(model, tok, templates=TEMPLATES, truncate=False)
    seen, handle = _lengths_seen(model)
    try:
        got = enc.encode(["a", "cat"])
    finally:
        handle.remove()
    assert set(seen) == {77}
    assert (got - _reference(model, tok, ["a", "cat"])).abs().max() < 1e-6


class _OwnEncodeText:
    """Mixed into CLIP: an ``encode_text`` of its own (uses the last position)."""

    def encode_text(self, text, normalize: bool = False):
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))[:, -1]
        return x @ self.text_projection


@pytest.mark.parametrize(
    "variant", ["bidirectional", "last_pool", "custom_text_clip", "own_encode_text", "new_mask"]
)
def test_truncation_falls_back_where_not_exact(
    variant: str, golden_models_state, golden_modules
) -> None:
    import open_clip

    _, _, tok = golden_modules
    state = golden_models_state
    if variant == "bidirectional":
        model = _tiny_clip(state, 5, no_causal_mask=True)
    elif variant == "last_pool":
        model = _tiny_clip(state, 5, pool_type="last")
    elif variant == "custom_text_clip":
        model = _tiny_clip(state, 5, "CustomTextCLIP", no_causal_mask=True)
    elif variant == "own_encode_text":
        cls = type("OwnCLIP", (_OwnEncodeText, open_clip.model.CLIP), {})
        torch.manual_seed(5)
        model = cls(state["clip_embed_dim"], state["clip_vision_cfg"], state["clip_text_cfg"])
        model.eval()
    else:  # a causal mask replaced by one that lets every token see every other
        model = _tiny_clip(state, 5)
        model.attn_mask = torch.zeros_like(model.attn_mask)
    assert not text_truncation_is_exact(model)
    got = TextEncoder(model, tok, templates=TEMPLATES).encode(NAMES[:4])
    assert (got - _reference(model, tok, NAMES[:4])).abs().max() < 1e-6


# ------------------------------------------------------------------------------- disk cache
def test_text_cache_reused_and_on_disk(golden_modules, tmp_path) -> None:
    clip, _, tok = golden_modules
    enc = TextEncoder(clip, tok, cache_dir=tmp_path)
    first = enc.encode(["cat", "dog", "cat"])
    assert enc.encoded_count == 2
    assert torch.equal(first[0], first[2])
    assert torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-6)
    enc.encode(["dog"])
    assert enc.encoded_count == 2  # memory cache

    again = TextEncoder(clip, tok, cache_dir=tmp_path)
    second = again.encode(["dog", "cat"])
    assert again.encoded_count == 0  # disk cache
    assert torch.equal(second, first[[1, 0]])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))

    other_templates = TextEncoder(clip, tok, templates=TEMPLATES, cache_dir=tmp_path)
    other_templates.encode(["cat"])
    assert other_templates.encoded_count == 1  # keyed by the templates


def test_text_cache_damaged_file_is_rebuilt(golden_modules, tmp_path) -> None:
    clip, _, tok = golden_modules
    enc = TextEncoder(clip, tok, cache_dir=tmp_path)
    enc.encode(["cat"])
    enc.cache_path.write_bytes(b"not a torch file")
    again = TextEncoder(clip, tok, cache_dir=tmp_path)
    again.encode(["cat"])
    assert again.encoded_count == 1


def test_two_models_in_one_cache_folder_get_their_own_embeddings(
    golden_models_state, golden_modules, tmp_path
) -> None:
    _, vfm, tok = golden_modules
    state = golden_models_state
    a = Segmenter(_tiny_clip(state, 11), vfm, tok, text_cache_dir=tmp_path)
    b = Segmenter(_tiny_clip(state, 12), vfm, tok, text_cache_dir=tmp_path)
    emb_a = a.text.encode(["cat", "dog"])
    emb_b = b.text.encode(["cat", "dog"])
    assert b.text.encoded_count == 2  # nothing taken from a's embeddings
    own_b = TextEncoder(b.clip_model, tok).encode(["cat", "dog"])  # no cache at all
    assert torch.equal(emb_b, own_b) and not torch.allclose(emb_a, emb_b, atol=1e-3)
    assert len(list(tmp_path.glob("text-*.emb"))) == 2

    a_again = Segmenter(_tiny_clip(state, 11), vfm, tok, text_cache_dir=tmp_path)  # rebuilt
    assert torch.equal(a_again.text.encode(["dog", "cat"]), emb_a[[1, 0]])
    assert a_again.text.encoded_count == 0  # the same weights hit the cache


def test_fingerprint_covers_weights_activation_and_tokenizer(
    golden_models_state, golden_modules
) -> None:
    import open_clip

    _, _, tok = golden_modules
    state = golden_models_state
    base = text_fingerprint(_tiny_clip(state, 7), tok)
    assert text_fingerprint(_tiny_clip(state, 7), tok) == base
    assert text_fingerprint(_tiny_clip(state, 8), tok) != base
    changed = _tiny_clip(state, 7)
    with torch.no_grad():
        changed.transformer.resblocks[-1].mlp.c_proj.bias[0] += 1e-3
    assert text_fingerprint(changed, tok) != base
    gelu = open_clip.model.CLIP(  # the same weights with GELU instead of quick GELU
        state["clip_embed_dim"], state["clip_vision_cfg"], state["clip_text_cfg"], quick_gelu=False
    )
    gelu.load_state_dict(_tiny_clip(state, 7).state_dict())
    assert text_fingerprint(gelu, tok) != base
    short_tok = open_clip.tokenizer.SimpleTokenizer(context_length=64)
    assert text_fingerprint(_tiny_clip(state, 7), short_tok) != base
    image_only = _tiny_clip(state, 7)
    with torch.no_grad():
        image_only.visual.proj.add_(1.0)
        image_only.logit_scale.add_(1.0)
    assert text_fingerprint(image_only, tok) == base  # the image tower does not key the text


def test_fingerprint_is_taken_only_when_the_disk_cache_is_needed(
    golden_modules, tmp_path, monkeypatch
) -> None:
    clip, _, tok = golden_modules
    calls = []
    real = text_module.text_fingerprint
    monkeypatch.setattr(text_module, "text_fingerprint", lambda *a: calls.append(1) or real(*a))
    TextEncoder(clip, tok).encode(["cat"])
    enc = TextEncoder(clip, tok, cache_dir=tmp_path)
    assert calls == []
    enc.encode(["cat"])
    enc.encode(["dog"])
    assert calls == [1]


def test_unwritable_cache_folder_warns_once_and_goes_on(
    golden_modules, tmp_path, monkeypatch
) -> None:
    clip, vfm, tok = golden_modules
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GLACLIP_CACHE", str(blocker / "cache"))
    seg = Segmenter(clip, vfm, tok, text_cache_dir=default_cache_dir())
    with pytest.warns(RuntimeWarning, match="not cached on disk") as record:
        first = seg.text.encode(["cat"])
        seg.text.encode(["dog"])
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert torch.equal(first, TextEncoder(clip, tok).encode(["cat"]))
    rgb = np.zeros((64, 64, 3), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seg.segment(rgb, ["cat", "dog", "bird"]).labels.shape == (64, 64)


def test_templates_are_openais_80() -> None:
    t = openai_templates()
    assert len(t) == 80 and t[0]("cat") == "a bad photo of a cat."


# -------------------------------------------------------------------- through the user API/CLI
@pytest.fixture(scope="module")
def seg(golden_modules) -> Segmenter:
    clip, vfm, tok = golden_modules
    return Segmenter.from_modules(clip, vfm, tok)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (["", "sky", "road"], "entry 0"),
        (["sky", " ", "road"], "entry 1"),
        ([], "empty"),
        ("", "empty"),
        ("cat, cat, dog", "class 1 .*can never win"),
        (["person; man", "man"], "class 1 .*can never win"),
    ],
)
def test_segment_rejects_bad_vocabularies(seg: Segmenter, classes, message: str) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=message) as err:
        seg.segment(rgb, classes)
    assert "--" not in str(err.value)


def test_evaluation_path_keeps_a_vocabulary_as_given(seg: Segmenter) -> None:
    """The reference's COCO-Object list has "bed" both in the background's names and as a
    class; the evaluation path must run it as the paper did."""
    out = seg.segment_tensor(
        torch.zeros(1, 3, 224, 224), ["bed; sky", "bed", "cat"], return_scores=True
    )
    assert out.class_names == [["bed", "sky"], ["bed"], ["cat"]]
    assert out.scores.shape[0] == 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--classes", "cat, dog, cat"], "--classes: class 2 .*can never win"),
        (["--class-file", "FILE"], r"dup\.txt: class 1 \('dog'\) can never win"),
    ],
)
def test_cli_refuses_a_class_that_can_never_win(
    tmp_path, capsys, flags: list[str], message: str
) -> None:
    cf = tmp_path / "dup.txt"
    cf.write_text("cat; dog\ndog\n")
    flags = [str(cf) if f == "FILE" else f for f in flags]
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    # an unknown model name: the vocabulary is refused before any model is looked for
    argv = ["segment", str(image), *flags, "--out", str(tmp_path / "o"), "--clip", "ViT-Nope"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


# ----------------------------------------------------------- names as the text encoder sees them
LONG = " ".join(f"word{i}" for i in range(90))  # far more than 77 tokens


@pytest.mark.parametrize(
    ("lines", "loser", "winner"),
    [
        (["cat", "Cat", "dog"], 1, 0),
        (["big cat", "big  cat"], 1, 0),
        (["dog", "CAT; Dog", "cat"], 2, 1),
        ([LONG + " cat", LONG + " dog"], 1, 0),
    ],
)
def test_classes_the_encoder_cannot_tell_apart_can_never_win(
    lines: list[str], loser: int, winner: int
) -> None:
    from glaclip.text.encoder import EncoderView

    keys = EncoderView(open_clip.get_tokenizer("ViT-B-16"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the long names' warning
        with pytest.raises(
            ValueError, match=f"class {loser} .*can never win.*class {winner} "
        ) as e:
            check_vocabulary(lines, keys=keys)
    assert "as the text encoder sees them (it does not tell letter case" in str(e.value)


def test_names_the_encoder_tells_apart_pass_and_a_long_name_is_reported() -> None:
    from glaclip.text.encoder import EncoderView

    keys = EncoderView(open_clip.get_tokenizer("ViT-B-16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_vocabulary(["cat", "cats", "big cat", "dog; Dog"], keys=keys)
    with pytest.warns(RuntimeWarning, match="longer than the text encoder reads.*77 tokens"):
        check_vocabulary(["cat", LONG], keys=keys)


def test_segment_compares_the_names_the_encoder_receives(seg: Segmenter) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="class 1 .*can never win"):
        seg.segment(rgb, "cat, Cat, dog")


def test_segment_without_classes_says_what_to_pass(seg: Segmenter) -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(TypeError, match=r"classes is None: pass the class names, e\.g\."):
        seg.segment(rgb, None)
    with pytest.raises(TypeError, match="must be a list of class names"):
        seg.segment_tensor(torch.zeros(1, 3, 224, 224), None)


def test_cli_compares_the_names_the_encoder_receives_before_any_model_loads(
    tiny_model_args, tmp_path, capsys, monkeypatch
) -> None:
    from glaclip.model import segmenter as segmenter_module

    monkeypatch.setattr(
        segmenter_module.Segmenter, "from_pretrained", lambda *a, **k: pytest.fail("loaded")
    )
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = ["segment", str(image), "--classes", "cat, big cat, big  Cat", "--out", "o"]
    assert main(argv + tiny_model_args) == 2
    err = capsys.readouterr().err
    assert "--classes: class 2 ('big  Cat') can never win, because class 1 ('big cat')" in err


def test_comment_lines_in_a_class_file_are_skipped(tmp_path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("# my vocabulary\ncat\n   # dogs later\nbird; fowl\n")
    assert read_class_file(f) == ["cat", "bird; fowl"]


def test_blank_lines_where_line_order_is_label_order(tmp_path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("background\ncat\n\ndog\n\n")
    assert read_class_file(f) == ["background", "cat", "dog"]
    with pytest.raises(ValueError, match=r"c\.txt, line 3 is blank: each line is the class"):
        read_class_file(f, blank_lines=False)
    f.write_text("background\ncat\ndog\n\n\n")  # blank lines at the end shift nothing
    assert read_class_file(f, blank_lines=False) == ["background", "cat", "dog"]
