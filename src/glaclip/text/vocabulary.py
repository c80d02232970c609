"""Class lists: the syntax of class names and synonyms, class files, and the check that every
class can win a pixel.

A class is one line of query names (synonyms) separated by ``;``: ``"person; man; woman"``.
On the command line and the demo's page, commas separate classes (``parse_classes_arg``); a
class file holds one class per line (``read_class_file``).
"""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_NAME_CHARS",
    "QueryKeys",
    "check_vocabulary",
    "expand_queries",
    "parse_class_lines",
    "parse_classes_arg",
    "read_class_file",
    "shown",
]

# The text encoder reads 77 tokens of a prompt (a few hundred characters of words at most): a
# longer name is refused before any work, instead of being tokenised 80 times and then cut.
MAX_NAME_CHARS = 1000
_SHOWN_CHARS = 60  # characters of a name quoted in a message


def shown(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``repr(text)`` for a message, its first ``limit`` characters when it is longer (with its
    length), so that no message or log line repeats a huge input."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def parse_class_lines(lines: Iterable[str], source: str = "class list") -> list[list[str]]:
    """Class lines to synonym lists: one class per entry, query names separated by ``;``.

    ``["sky", "person; man"]`` -> ``[["sky"], ["person", "man"]]``.

    Raises:
        ValueError: the list is empty, an entry is empty or blank (named by its position,
            counting from 0), or an entry has an empty query name (``"person; ; man"``).
        TypeError: an entry is not a string.
    """
    if lines is None or isinstance(lines, (str, bytes)) or not isinstance(lines, Iterable):
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
                f"{source}, entry {index} (counting from 0) is empty ({shown(line)}): every "
                "class needs a name; remove the entry"
            )
        names = [part.strip() for part in line.split(";")]
        if any(not n for n in names):
            raise ValueError(
                f"{source}, entry {index} ({shown(line.strip())}) has an empty synonym: "
                "separate synonyms with '; ' and do not leave one blank"
            )
        for name in names:
            _check_length(name, f"{source}, entry {index}")
            _check_printable(name, f"{source}, entry {index}")
        classes.append(names)
    if not classes:
        raise ValueError(f"{source} is empty: give at least one class name")
    return classes


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines splits


def _check_length(name: str, where: str) -> None:
    """ValueError if a query name is far longer than the text encoder reads."""
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(
            f"{where}: the class name {shown(name)} is far longer than the text encoder "
            "reads (77 tokens of a prompt, a few hundred characters at most; names of up to "
            f"{MAX_NAME_CHARS:,} characters are accepted): name the class in a few words"
        )


def _check_printable(name: str, where: str) -> None:
    """ValueError if a query name holds a line break, another control character (a tab is
    a space to the tokenizer) or a lone surrogate (bytes that were not UTF-8, decoded with
    ``surrogateescape``, as Python does for command-line arguments and file names)."""
    bad = [c for c in name if c != "\t" and unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")]
    if not bad:
        return
    if unicodedata.category(bad[0]) == "Cs":
        code = ord(bad[0])
        byte = f" (the byte 0x{code - 0xDC00:02x})" if 0xDC80 <= code <= 0xDCFF else ""
        raise ValueError(
            f"{where}: the class name {shown(name)} is not valid text: it holds the lone "
            f"surrogate {bad[0]!r}{byte}, the mark of bytes that are not UTF-8; give the "
            "classes as UTF-8 text"
        )
    what = "a line break" if bad[0] in _LINE_BREAKS else f"the control character {bad[0]!r}"
    raise ValueError(
        f"{where}: the class name {shown(name)} holds {what}: write each name on one line, "
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
            f"{source} is empty ({shown(text)}): name at least one class, commas between "
            "classes, e.g. 'sky, tree, person; man'"
        )
    for line in lines:
        if not line:
            raise ValueError(
                f"{source} {shown(text)} has an empty class between commas: remove the extra comma"
            )
    parse_class_lines(lines, source=source)
    return lines


def read_class_file(path: str | os.PathLike, blank_lines: bool = True) -> list[str]:
    """The class lines of a UTF-8 class file (a class a line, its query names separated by
    ``;``): stripped, a leading byte-order mark removed, comment lines (``#``) skipped.

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
                f"{p}, line {number} ({shown(line)}) has an empty synonym: separate query names "
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
                    f"{source}: class {j} ({shown('; '.join(classes[j]))}) can never win, "
                    f"because class {i} ({shown('; '.join(classes[i]))}) comes first and has "
                    f"all its query names {note}: remove the duplicate or make the names differ"
                )
        for key in wanted:
            holders.setdefault(key, []).append(j)
    return classes


def expand_queries(classes: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Flatten synonym lists: ``(query names, class index of each query)``."""
    names = [name for syns in classes for name in syns]
    owner = [i for i, syns in enumerate(classes) for _ in syns]
    return names, owner


@dataclass(frozen=True)
class Vocabulary:
    """Class lines parsed and checked once (``check_vocabulary``), for every image of a run.

    Attributes:
        lines: the class lines as given (synonyms separated by ``;``).
        classes: each class as its query names.
        names: every query name, class by class; ``owner``: the class of each.
        tokenized: whether the check saw the names as the text encoder does (``keys``): a
            Segmenter then takes the vocabulary without checking it again.
    """

    lines: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    names: tuple[str, ...]
    owner: tuple[int, ...]
    tokenized: bool

    @classmethod
    def of(
        cls, class_lines: Sequence[str], source: str = "class list", keys: QueryKeys | None = None
    ) -> Vocabulary:
        """Parse and check ``class_lines`` (``check_vocabulary``; ``keys``: as the text encoder
        sees the names, where at hand).

        Raises:
            ValueError, TypeError: as ``check_vocabulary``.
        """
        classes = check_vocabulary(class_lines, source, keys)
        names, owner = expand_queries(classes)
        return cls(
            tuple(class_lines),
            tuple(tuple(c) for c in classes),
            tuple(names),
            tuple(owner),
            keys is not None,
        )

    @classmethod
    def parse(cls, class_lines: Sequence[str], source: str = "class list") -> Vocabulary:
        """``class_lines`` parsed only (``parse_class_lines``), as given: the evaluation's
        vocabularies are the benchmarks', whatever their names."""
        classes = parse_class_lines(class_lines, source)
        names, owner = expand_queries(classes)
        lines = tuple(class_lines)
        return cls(lines, tuple(tuple(c) for c in classes), tuple(names), tuple(owner), False)

    def class_names(self) -> list[list[str]]:
        """The classes as lists of query names."""
        return [list(c) for c in self.classes]
