"""Class lists, prompt templates and query embeddings (SPEC 8), with an on-disk cache."""

from __future__ import annotations

import errno
import hashlib
import os
import unicodedata
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from glaclip.imageio import atomic_write

# What a cache file holds and how it was computed; a change of either starts new files.
_CACHE_FORMAT = "glaclip-text-v2: mean of L2-normalised prompt embeddings, L2-normalised"
# Strings whose tokens identify a tokenizer (case, Unicode cleaning, context truncation).
_TOKENIZER_PROBES = (
    "a photo of a cat.",
    "A Photo of a CAT; chest of drawers, trafficlight!",
    "Straße café 東京 naïve – ½",
    " ".join(["word"] * 100),
)


def openai_templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


# ---------------------------------------------------------------------------------- class lists
def parse_class_lines(lines: Iterable[str], source: str = "class list") -> list[list[str]]:
    """Class lines to synonym lists: one class per entry, query names separated by ``;``.

    ``["sky", "person; man"]`` -> ``[["sky"], ["person", "man"]]``.

    Raises:
        ValueError: the list is empty, an entry is empty or blank (named by its position,
            counting from 0), or an entry has an empty query name (``"person; ; man"``).
        TypeError: an entry is not a string.
    """
    if lines is None or isinstance(lines, (str, bytes)):
        raise TypeError(
            f"{source} must be a list of class names (synonyms separated by ';'), got "
            f"{type(lines).__name__}: pass e.g. ['sky', 'person; man']"
        )
    classes: list[list[str]] = []
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(
                f"{source}, entry {index} is a {type(line).__name__}, not a string: give each "
                "class as one string, synonyms separated by ';' (e.g. 'person; man')"
            )
        if not line.strip():
            raise ValueError(
                f"{source}, entry {index} (counting from 0) is empty ({line!r}): every class "
                "needs a name; remove the entry"
            )
        names = [part.strip() for part in line.split(";")]
        if any(not n for n in names):
            raise ValueError(
                f"{source}, entry {index} ({line.strip()!r}) has an empty synonym: "
                "separate synonyms with '; ' and do not leave one blank"
            )
        for name in names:
            _check_printable(name, f"{source}, entry {index}")
        classes.append(names)
    if not classes:
        raise ValueError(f"{source} is empty: give at least one class name")
    return classes


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines splits


def _check_printable(name: str, where: str) -> None:
    """ValueError if a query name holds a line break or another control character (a tab is
    a space to the tokenizer)."""
    bad = [c for c in name if c != "\t" and unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        what = "a line break" if bad[0] in _LINE_BREAKS else f"the control character {bad[0]!r}"
        raise ValueError(
            f"{where}: the class name {name!r} holds {what}: write each name on one line, "
            "with spaces between its words"
        )


def parse_classes_arg(text: str, source: str = "class string") -> list[str]:
    """``"sky, tree, person; man"`` -> class lines ``["sky", "tree", "person; man"]``.

    Commas separate classes, semicolons separate synonyms of one class. ``source`` names the
    text in error messages (the command line passes ``"--classes"``).

    Raises:
        ValueError: no class, or an empty class between commas.
    """
    lines = [part.strip() for part in text.split(",")]
    if all(not line for line in lines):
        raise ValueError(
            f"{source} is empty ({text!r}): name at least one class, commas between "
            "classes, e.g. 'sky, tree, person; man'"
        )
    for line in lines:
        if not line:
            raise ValueError(
                f"{source} {text!r} has an empty class between commas: remove the extra comma"
            )
    parse_class_lines(lines, source=source)
    return lines


def read_class_file(path: str | os.PathLike, blank_lines: bool = True) -> list[str]:
    """The class lines of a UTF-8 class file: stripped, a leading byte-order mark removed,
    comment lines (starting with ``#``) skipped.

    Each line is one class; its query names are separated by ``;``.

    Args:
        blank_lines: skip blank lines; False makes a blank line before a class line an error
            (an evaluation's class file, where line order is label order).

    Raises:
        FileNotFoundError: the file does not exist, is a folder or a broken or looping link.
        ValueError: the file is not UTF-8 text, has no class, a line has an empty synonym, or
            (``blank_lines=False``) a blank line comes before a class (names file and line).
    """
    p = Path(path)
    reason = _not_a_file(p)
    if reason:
        raise FileNotFoundError(f"class file {p} {reason}")
    expected = "expected a UTF-8 text file with one class name per line, synonyms separated by '; '"
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"class file {p} is not UTF-8 text (byte {err.start}: {err.reason}): {expected}"
        ) from None
    if "\x00" in text:
        raise ValueError(f"class file {p} holds NUL bytes (a binary file?): {expected}")
    lines, blank = [], None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            blank = blank or number
            continue
        if line.startswith("#"):
            continue
        if blank is not None and not blank_lines:
            raise ValueError(
                f"{p}, line {blank} is blank: each line is the class of the next label value, "
                "so a blank line would shift the classes after it; remove it (lines starting "
                "with '#' are comments)"
            )
        if any(not part.strip() for part in line.split(";")):
            raise ValueError(
                f"{p}, line {number} ({line!r}) has an empty synonym: separate query names "
                "with '; ' and leave none blank"
            )
        lines.append(line)
    if not lines:
        raise ValueError(f"class file {p} lists no class: write one class name per line")
    return lines


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a readable file, or None."""
    try:
        if path.is_dir():
            return "is a folder, not a file: name the class file inside it"
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (its chain of links leads back to itself)"
    if path.is_file():
        return None
    if path.is_symlink():
        return f"is a broken symbolic link (to {os.readlink(path)}, which does not exist)"
    return "does not exist"


QueryKeys = Callable[[Sequence[str]], Sequence[Hashable]]


def check_vocabulary(
    class_lines: Sequence[str], source: str = "class list", keys: QueryKeys | None = None
) -> list[list[str]]:
    """Parse class lines and refuse a class that can never be a pixel's label.

    A class's probability is the maximum over its query names and the argmax takes the first
    maximum, so class ``j`` can never win exactly when an earlier class's query names include
    all of class ``j``'s (``"cat, cat, dog"``; ``"person; man, man"``), as the text encoder
    sees them: ``keys`` maps query names to what the encoder receives (``TextEncoder.query_keys``
    or ``prompt_keys``: ``"cat"`` and ``"Cat"`` are the same tokens). Without ``keys`` the
    names are compared as written (after stripping).

    Returns:
        The classes as synonym lists (``parse_class_lines``).

    Raises:
        ValueError: as ``parse_class_lines``, or naming both classes of such a pair.
    """
    classes = parse_class_lines(class_lines, source=source)
    names = [n for syns in classes for n in syns]
    key_of = dict(zip(names, keys(names), strict=True)) if keys is not None else {}
    seen = [{key_of.get(n, n) for n in syns} for syns in classes]
    holders: dict[Hashable, list[int]] = {}  # query key -> classes that have it, in order
    for j, wanted in enumerate(seen):
        for i in holders.get(key_of.get(classes[j][0], classes[j][0]), []):
            if wanted.issubset(seen[i]):
                same = set(classes[j]).issubset(classes[i])
                note = (
                    "(positions count from 0)"
                    if same
                    else (
                        "as the text encoder sees them (it does not tell letter case, repeated "
                        "spaces or words past the end of its context apart; positions count from 0)"
                    )
                )
                raise ValueError(
                    f"{source}: class {j} ({'; '.join(classes[j])!r}) can never win, because "
                    f"class {i} ({'; '.join(classes[i])!r}) comes first and has all its query "
                    f"names {note}: remove the duplicate or make the names differ"
                )
        for key in wanted:
            holders.setdefault(key, []).append(j)
    return classes


def prompt_keys(
    tokenizer: Callable, templates: Sequence[Callable[[str], str]], names: Sequence[str]
) -> dict[str, bytes]:
    """What the text encoder receives for each query name: a digest of the tokens of its
    prompts (one per template), as the tokenizer gives them (case, spaces and the context
    length applied). A name whose prompts fill the tokenizer's whole context is cut off there;
    each such name gets a ``RuntimeWarning``.

    Returns:
        ``{name: 32-byte digest}``; two names with equal digests get equal embeddings.
    """
    if not names:
        return {}
    tokens = torch.as_tensor(tokenizer([t(n) for n in names for t in templates]), device="cpu")
    rows = tokens.reshape(len(names), len(templates), -1)
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None) or 0
    full = (rows[..., -1] != pad).sum(dim=1).tolist()
    for name, count in zip(names, full, strict=True):
        if count:
            warnings.warn(
                f"the class name {name!r} is longer than the text encoder reads: its prompts "
                f"fill the context of {rows.shape[-1]} tokens ({count} of {len(templates)}), so "
                "the words at its end are cut off; shorten it",
                RuntimeWarning,
                stacklevel=3,
            )
    return {
        name: hashlib.sha256(rows[i].to(torch.int64).contiguous().numpy().tobytes()).digest()
        for i, name in enumerate(names)
    }


def expand_queries(classes: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Flatten synonym lists: ``(query names, class index of each query)``."""
    names = [name for syns in classes for name in syns]
    owner = [i for i, syns in enumerate(classes) for _ in syns]
    return names, owner


class EncoderView:
    """``prompt_keys`` of a tokenizer with the default templates, as the ``keys`` of
    ``check_vocabulary`` before any model is loaded."""

    def __init__(self, tokenizer: Callable) -> None:
        self.tokenizer = tokenizer
        self.templates = openai_templates()

    def __call__(self, names: Sequence[str]) -> list[bytes]:
        unique = list(dict.fromkeys(names))
        keys = prompt_keys(self.tokenizer, self.templates, unique)
        return [keys[n] for n in names]


# ------------------------------------------------------------------- truncated text encoding
def _pool_positions(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """The token index each prompt's embedding is taken from (``P`` int64), or None when the
    pooling does not take one token chosen from the tokens."""
    pool = getattr(model, "text_pool_type", None)
    if pool == "argmax":  # open_clip: the end-of-text token has the largest id
        return tokens.argmax(dim=-1)
    eos = getattr(model, "text_eos_id", None)
    if pool == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return None


def text_truncation_is_exact(model: torch.nn.Module) -> bool:
    """Whether ``model.encode_text`` gives the same embedding from the tokens up to each
    prompt's pooled (end-of-text) token as from the whole context.

    True for an open_clip ``CLIP`` text tower run by ``CLIP.encode_text`` whose attention
    mask is causal (token ``i`` sees tokens ``0..i``), whose blocks mix tokens only through
    that masked attention, and whose pooling takes one token: ``argmax`` (end-of-text) or
    ``eos``. Decided from the model's modules, mask and pooling, not from its name; any other
    text tower (``CustomTextCLIP``, Hugging Face text towers, bidirectional or ``last``
    pooling) is encoded over the whole context.
    """
    try:
        from open_clip.model import CLIP
        from open_clip.transformer import (
            Attention,
            CustomResidualAttentionBlock,
            ResidualAttentionBlock,
            Transformer,
            text_global_pool,  # noqa: F401  (used by the truncated path)
        )
    except ImportError:
        return False
    if not isinstance(model, CLIP) or getattr(type(model), "encode_text", None) is not (
        CLIP.encode_text
    ):
        return False
    transformer = getattr(model, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not isinstance(transformer, Transformer) or blocks is None or len(blocks) == 0:
        return False
    if type(transformer).forward is not Transformer.forward:
        return False
    attention_of = {ResidualAttentionBlock: torch.nn.MultiheadAttention}
    attention_of[CustomResidualAttentionBlock] = Attention
    for block in blocks:
        if attention_of.get(type(block)) is not type(getattr(block, "attn", None)):
            return False
    modules = (model, transformer, *blocks, *(b.attn for b in blocks))
    if any("forward" in vars(m) for m in modules):  # a forward replaced on the instance
        return False
    if not isinstance(getattr(model, "token_embedding", None), torch.nn.Embedding):
        return False
    if not isinstance(getattr(model, "ln_final", None), torch.nn.Module):
        return False
    pos = getattr(model, "positional_embedding", None)
    mask = getattr(model, "attn_mask", None)
    if not isinstance(pos, torch.Tensor) or pos.ndim != 2:
        return False
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        return False
    n = pos.shape[0]
    if mask.shape != (n, n):
        return False
    causal = torch.full((n, n), float("-inf"), dtype=mask.dtype, device=mask.device).triu_(1)
    if not torch.equal(mask, causal):
        return False
    probe = torch.zeros(1, n, dtype=torch.long, device="cpu")  # tokens live on the CPU
    return _pool_positions(model, probe) is not None


def encode_text_truncated(
    model: torch.nn.Module, tokens: torch.Tensor, length: int | None = None
) -> torch.Tensor:
    """``model.encode_text(tokens)`` over the first ``L`` tokens only (``L``: the last pooled
    position of the batch, plus one), through open_clip's own modules.

    Only for a model where ``text_truncation_is_exact`` holds; there it equals
    ``model.encode_text(tokens)`` up to float rounding (about 2e-7 after L2 normalisation).

    Args:
        tokens: ``P x context`` int64 token ids from the model's tokenizer.
        length: ``L``, where the caller knows it (read from tokens on the CPU, so that no
            value is read back from the device).

    Returns:
        ``P x E`` unnormalised text embeddings in the text tower's dtype.
    """
    from open_clip.transformer import text_global_pool

    if length is None:
        positions = _pool_positions(model, tokens)
        if positions is None:
            raise ValueError("the model's text pooling does not take one token: use encode_text")
        length = int(positions.max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


# --------------------------------------------------------------------------------- fingerprint
def _text_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters and buffers that can take part in encoding text: all of the model's but
    the image tower's (``visual``) and the logit scale and bias."""
    skip = ("visual.", "logit_scale", "logit_bias")
    named = list(model.named_parameters()) + list(model.named_buffers())
    return sorted(((name, t) for name, t in named if not name.startswith(skip)), key=lambda x: x[0])


def text_fingerprint(model: torch.nn.Module, tokenizer: Callable) -> str:
    """A hex digest identifying what ``model`` and ``tokenizer`` make of a prompt.

    Hashes (SHA-256) the bytes, dtype and shape of every parameter and buffer outside the image
    tower, the module structure outside the image tower (layer types, activations, norms),
    the text pooling, and the tokenizer: its class, context length and the tokens it gives a
    few probe strings. Reads every text weight once (about 250 MB for ViT-B/16); GPU tensors
    are copied to the CPU one at a time.
    """
    h = hashlib.sha256()

    def add(text: str) -> None:
        h.update(text.encode("utf-8", "surrogatepass") + b"\0")

    add(f"{type(model).__module__}.{type(model).__qualname__}")
    for name, child in model.named_children():
        if name != "visual":
            add(f"{name}: {child!r}")
    for attr in ("text_pool_type", "text_eos_id", "context_length"):
        add(f"{attr}={getattr(model, attr, None)!r}")
    for name, tensor in _text_tensors(model):
        t = tensor.detach()
        add(f"{name} {t.dtype} {tuple(t.shape)}")
        data = t.to("cpu").contiguous().reshape(-1)
        if data.numel():
            h.update(data.view(torch.uint8).numpy().data)
    add(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}")
    add(f"context_length={getattr(tokenizer, 'context_length', None)!r}")
    tokens = torch.as_tensor(tokenizer(list(_TOKENIZER_PROBES)), device="cpu")
    add(f"probes {tokens.dtype} {tuple(tokens.shape)}")
    h.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


# -------------------------------------------------------------------------------- the encoder
class TextEncoder:
    """Query embeddings (``Q x E``, L2-normalised) for class names, cached in memory and on disk.

    Each name is put into every template, encoded, each prompt embedding L2-normalised,
    averaged, and L2-normalised again. Where ``text_truncation_is_exact(clip_model)``, prompts
    are grouped by token length and each batch runs only up to its longest prompt's
    end-of-text token (same embeddings, several times faster); other text towers run the whole
    context. Embeddings are kept per name in memory; with a ``cache_dir`` they are also stored
    on disk keyed by ``text_fingerprint`` of the model and tokenizer (taken when the disk cache
    is first needed) and the template texts, so that a later run with the same classes encodes
    nothing. A cache folder that cannot be written gives one warning and no disk cache.
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        tokenizer: Callable,
        *,
        templates: Sequence[Callable[[str], str]] | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_prompts: int = 400,
        truncate: bool = True,
    ) -> None:
        """
        Args:
            clip_model: a model with ``encode_text(tokens)`` (open_clip ``CLIP`` or similar).
            tokenizer: prompts (list of str) -> ``P x context`` int64 tokens.
            templates: prompt templates (default: the 80 OpenAI ImageNet templates).
            cache_dir: folder for the disk cache; None disables it.
            batch_prompts: prompts per forward pass.
            truncate: use the truncated context where it is exact (False: always the whole
                context, as ``encode_text`` on the tokenizer's output).
        """
        self.model = clip_model
        self.tokenizer = tokenizer
        self.templates = list(templates) if templates is not None else openai_templates()
        self.batch_prompts = batch_prompts
        self.truncate = truncate
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._cache_path: Path | None = None
        self._memory: dict[str, torch.Tensor] = {}
        self._disk_loaded = False
        self._disk_failed = False
        self._keys: dict[str, bytes] = {}
        self.encoded_count = 0  # names encoded by the network (not from a cache)

    def query_keys(self, names: Sequence[str]) -> list[bytes]:
        """What the text tower receives for each name (``prompt_keys``), computed once per
        name: the ``keys`` of ``check_vocabulary``."""
        missing = [n for n in dict.fromkeys(names) if n not in self._keys]
        self._keys.update(prompt_keys(self.tokenizer, self.templates, missing))
        return [self._keys[n] for n in names]

    @property
    def cache_path(self) -> Path | None:
        """The disk cache file (None without a cache folder); the first access fingerprints
        the model."""
        if self.cache_dir is None:
            return None
        if self._cache_path is None:
            probe = "\n".join(t("{}") for t in self.templates)
            key = f"{_CACHE_FORMAT}\n{text_fingerprint(self.model, self.tokenizer)}\n{probe}"
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
            self._cache_path = self.cache_dir / f"text-{digest}.pt"
        return self._cache_path

    def _load_disk(self) -> None:
        self._disk_loaded = True
        path = self.cache_path
        try:
            if path is None or not path.is_file():
                return
            stored = torch.load(path, map_location="cpu", weights_only=True)
            embeddings = stored.get("embeddings", {})
        except Exception:  # a damaged or unreadable cache is rebuilt, never fatal
            return
        for name, emb in embeddings.items():
            self._memory.setdefault(name, emb)

    def _save_disk(self) -> None:
        path = self.cache_path
        if path is None or self._disk_failed:
            return
        try:
            atomic_write(path, lambda tmp: torch.save({"embeddings": dict(self._memory)}, tmp))
        except OSError as err:
            self._disk_failed = True
            warnings.warn(
                f"text embeddings are not cached on disk: {err}; "
                "set GLACLIP_CACHE (or text_cache_dir) to a writable folder",
                RuntimeWarning,
                stacklevel=3,
            )

    def _forward(self, tokens: torch.Tensor, truncated: bool, device: torch.device) -> torch.Tensor:
        """Embeddings of CPU ``tokens``, computed on ``device``."""
        if truncated:
            length = int(_pool_positions(self.model, tokens).max()) + 1  # on the CPU
            return encode_text_truncated(self.model, tokens.to(device), length)
        return self.model.encode_text(tokens.to(device))

    @torch.inference_mode()
    def _encode(self, names: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        prompts = [t(name) for name in names for t in self.templates]
        tokens = self.tokenizer(prompts)
        truncated = self.truncate and text_truncation_is_exact(self.model)
        if truncated and tokens.shape[1] != self.model.positional_embedding.shape[0]:
            truncated = False  # a tokenizer of another context length: let encode_text decide
        if truncated:  # group prompts of similar length: each batch stops at its longest
            order = torch.argsort(_pool_positions(self.model, tokens), stable=True)
        else:
            order = torch.arange(len(prompts), device="cpu")  # tokens live on the CPU
        feats = []
        for start in range(0, len(prompts), self.batch_prompts):
            batch = tokens[order[start : start + self.batch_prompts]]
            emb = self._forward(batch, truncated, device).float()
            feats.append(F.normalize(emb, dim=-1).cpu())
        sorted_feats = torch.cat(feats)
        per_prompt = torch.empty_like(sorted_feats)
        per_prompt[order] = sorted_feats
        per_prompt = per_prompt.reshape(len(names), len(self.templates), -1)
        mean = F.normalize(per_prompt.mean(dim=1), dim=-1)
        self.encoded_count += len(names)
        return {name: mean[i].clone() for i, name in enumerate(names)}

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """``Q x E`` float32 CPU tensor of L2-normalised embeddings, one row per name."""
        if not self._disk_loaded:
            self._load_disk()
        missing = list(dict.fromkeys(n for n in names if n not in self._memory))
        if missing:
            self._memory.update(self._encode(missing))
            self._save_disk()
        return torch.stack([self._memory[n] for n in names])
