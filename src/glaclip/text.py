"""Class lists, prompt templates and query embeddings (SPEC 8), with an on-disk cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F


def openai_templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates, as shipped by open_clip."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def parse_class_lines(lines: Iterable[str], source: str = "class list") -> list[list[str]]:
    """Class-file lines to synonym lists: one class per line, synonyms separated by ``;``.

    Blank lines are skipped. Raises ValueError for an empty list or an empty synonym.
    """
    classes: list[list[str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        names = [part.strip() for part in line.split(";")]
        if any(not n for n in names):
            raise ValueError(
                f"{source}, class {number} ({line.strip()!r}) has an empty synonym: "
                "separate synonyms with '; ' and do not leave one blank"
            )
        classes.append(names)
    if not classes:
        raise ValueError(
            f"{source} is empty: pass --classes 'sky, tree, person; man' or --class-file FILE"
        )
    return classes


def parse_classes_arg(text: str) -> list[str]:
    """``"sky, tree, person; man"`` -> class lines ``["sky", "tree", "person; man"]``.

    Commas separate classes, semicolons separate synonyms of one class.
    """
    lines = [part.strip() for part in text.split(",")]
    if all(not line for line in lines):
        raise ValueError("--classes is empty: pass e.g. --classes 'sky, tree, person; man'")
    for line in lines:
        if not line:
            raise ValueError(
                f"--classes {text!r} has an empty class between commas: remove the extra comma"
            )
    parse_class_lines(lines, source="--classes")
    return lines


def read_class_file(path: str | os.PathLike) -> list[str]:
    """The class lines of a class file: stripped, blank lines skipped.

    Each line is one class; its query names are separated by ``;``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file has no class, or a line has an empty synonym (names file and
            line number).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class file {p} does not exist")
    lines = []
    for number, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if any(not part.strip() for part in line.split(";")):
            raise ValueError(
                f"{p}, line {number} ({line!r}) has an empty synonym: separate query names "
                "with '; ' and leave none blank"
            )
        lines.append(line)
    if not lines:
        raise ValueError(f"class file {p} lists no class: write one class name per line")
    return lines


def expand_queries(classes: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Flatten synonym lists: ``(query names, class index of each query)``."""
    names = [name for syns in classes for name in syns]
    owner = [i for i, syns in enumerate(classes) for _ in syns]
    return names, owner


class TextEncoder:
    """Query embeddings (``Q x E``, L2-normalised) for class names, cached in memory and on disk.

    Each name is put into every template, encoded, each prompt embedding L2-normalised,
    averaged, and L2-normalised again. Embeddings are kept per name in memory; with a
    ``cache_dir`` they are also stored on disk keyed by ``model_id``, the template texts and the
    name, so that a later run with the same classes encodes nothing.
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        tokenizer: Callable,
        model_id: str,
        templates: Sequence[Callable[[str], str]] | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_prompts: int = 400,
    ) -> None:
        self.model = clip_model
        self.tokenizer = tokenizer
        self.templates = list(templates) if templates is not None else openai_templates()
        self.batch_prompts = batch_prompts
        self._memory: dict[str, torch.Tensor] = {}
        probe = "\n".join(t("{}") for t in self.templates)
        digest = hashlib.sha256(f"{model_id}\n{probe}".encode()).hexdigest()[:16]
        self.cache_path = Path(cache_dir) / f"text-{digest}.pt" if cache_dir else None
        self._disk_loaded = False
        self.encoded_count = 0  # names encoded by the network (not from a cache)

    def _load_disk(self) -> None:
        self._disk_loaded = True
        if self.cache_path is None or not self.cache_path.is_file():
            return
        try:
            stored = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged cache is rebuilt, never fatal
            return
        for name, emb in stored.get("embeddings", {}).items():
            self._memory.setdefault(name, emb)

    def _save_disk(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        try:
            torch.save({"embeddings": dict(self._memory)}, tmp)
            os.replace(tmp, self.cache_path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @torch.inference_mode()
    def _encode(self, names: list[str]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        prompts = [t(name) for name in names for t in self.templates]
        feats = []
        for start in range(0, len(prompts), self.batch_prompts):
            tokens = self.tokenizer(prompts[start : start + self.batch_prompts]).to(device)
            emb = self.model.encode_text(tokens).float()
            feats.append(F.normalize(emb, dim=-1).cpu())
        per_prompt = torch.cat(feats).reshape(len(names), len(self.templates), -1)
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
