"""Prompt templates and query embeddings (SPEC 8), with an on-disk cache keyed by a fingerprint
of the text tower and its tokenizer (``text_fingerprint``).

Class lists (their syntax, class files, the vocabulary check) are read by
``glaclip.text.vocabulary``, and prompts are encoded over their own tokens by
``glaclip.text.tower``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from glaclip.text.cache import DEFAULT_MAX_NAMES, BoundedCache, EmbeddingFile
from glaclip.text.tower import encode_text_truncated, pool_positions, text_truncation_is_exact
from glaclip.text.vocabulary import (
    shown,
)

__all__ = [
    "EncoderView",
    "TextEncoder",
    "openai_templates",
    "prompt_keys",
    "text_fingerprint",
    "text_tensors",
]

# What a cache file holds and how it was computed; a change of either starts new files.
_CACHE_FORMAT = "glaclip-text-v3: mean of L2-normalised prompt embeddings, L2-normalised"
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
                f"the class name {shown(name)} is longer than the text encoder reads: its prompts "
                f"fill the context of {rows.shape[-1]} tokens ({count} of {len(templates)}), so "
                "the words at its end are cut off; shorten it",
                RuntimeWarning,
                stacklevel=3,
            )
    return {
        name: hashlib.sha256(rows[i].to(torch.int64).contiguous().numpy().tobytes()).digest()
        for i, name in enumerate(names)
    }


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


# --------------------------------------------------------------------------------- fingerprint
def text_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
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
    for name, tensor in text_tensors(model):
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
    context. Embeddings are kept per name in memory, the ``max_names`` most recently used;
    with a ``cache_dir`` they are also stored on disk keyed by ``text_fingerprint`` of the
    model and tokenizer (taken when the disk cache is first needed) and the template texts, so
    that a later run with the same classes encodes nothing. The disk cache is an append-only
    file (``cache.EmbeddingFile``): a call appends the names it encoded, in one write, and
    the file keeps at most ``max_names``. ``persist`` chooses the names written there (None:
    all; the demo writes only the benchmark vocabularies' unless its operator asks). A cache
    folder that cannot be written gives one warning and no disk cache. One encoder may be
    called from several threads (a lock serialises the calls).
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
        max_names: int = DEFAULT_MAX_NAMES,
        persist: Callable[[str], bool] | None = None,
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
            max_names: names kept in memory (the most recently used) and in the disk cache.
            persist: which names the disk cache receives (None: every name).
        """
        self.model = clip_model
        self.tokenizer = tokenizer
        self.templates = list(templates) if templates is not None else openai_templates()
        self.batch_prompts = batch_prompts
        self.truncate = truncate
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._cache_path: Path | None = None
        self.max_names = max_names
        self.persist = persist
        self._memory = BoundedCache(max_names)
        self._disk: EmbeddingFile | None = None
        self._disk_loaded = False
        self._disk_failed = False
        self._keys = BoundedCache(max_names)
        self._lock = threading.RLock()
        self.encoded_count = 0  # names encoded by the network (not from a cache)

    def query_keys(self, names: Sequence[str]) -> list[bytes]:
        """What the text tower receives for each name (``prompt_keys``), computed once per
        name: the ``keys`` of ``check_vocabulary``."""
        with self._lock:
            found = {n: self._keys.get(n) for n in dict.fromkeys(names)}
            missing = [n for n, key in found.items() if key is None]
            new = prompt_keys(self.tokenizer, self.templates, missing)
            self._keys.update(new)
            found.update(new)
            return [found[n] for n in names]

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
            self._cache_path = self.cache_dir / f"text-{digest}.emb"
        return self._cache_path

    def _load_disk(self) -> None:
        self._disk_loaded = True
        path = self.cache_path
        if path is None:
            return
        self._disk = EmbeddingFile(path, self.max_names)
        try:
            embeddings = self._disk.load()
        except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt, never fatal
            return
        for name, emb in embeddings.items():
            if name not in self._memory:
                self._memory.put(name, emb)

    def _save_disk(self, new: dict[str, torch.Tensor]) -> None:
        if self._disk is None or self._disk_failed:
            return
        if self.persist is not None:
            new = {n: e for n, e in new.items() if self.persist(n)}
        try:
            self._disk.append(new)
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
            length = int(pool_positions(self.model, tokens).max()) + 1  # on the CPU
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
            order = torch.argsort(pool_positions(self.model, tokens), stable=True)
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
        with self._lock:
            if not self._disk_loaded:
                self._load_disk()
            found = {n: self._memory.get(n) for n in dict.fromkeys(names)}
            missing = [n for n, emb in found.items() if emb is None]
            if missing:
                new = self._encode(missing)
                self._memory.update(new)
                self._save_disk(new)
                found.update(new)
            return torch.stack([found[n] for n in names])


# ------------------------------------------------------------------------- the cache folder
class _UserCache:
    """The user cache folder (``default_cache_dir``), as a ``text_cache_dir`` value."""

    def __repr__(self) -> str:
        return "USER_CACHE"


USER_CACHE: Any = _UserCache()
CacheDir = str | os.PathLike | None | _UserCache


def default_cache_dir() -> str:
    """The user cache folder: ``$GLACLIP_CACHE`` or ``$XDG_CACHE_HOME/glaclip``."""
    if os.environ.get("GLACLIP_CACHE"):
        return os.environ["GLACLIP_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "glaclip")
