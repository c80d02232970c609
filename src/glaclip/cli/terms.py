"""Messages in the command line's own terms.

The library's messages name the keywords of its functions, as a Python user writes them:
``prob_threshold must be at most 1``, ``point clip_pretrained= at a local checkpoint file``,
``pass base="clearclip"``, ``allow_slow=True``. On the command line the same messages must
name flags: ``--prob-threshold``, ``--clip-pretrained``, ``--base clearclip``,
``--allow-slow``. ``to_flags`` rewrites them, with the flags read from the parser itself:

* ``name=value`` (``value`` quoted, a word or a number; or nothing) becomes ``--flag value``;
  ``name=True`` / ``name=False`` of a switch becomes ``--flag`` / ``--no-flag``;
* a keyword with an underscore (``prob_threshold``), which is no English word, becomes its
  flag wherever it stands;
* a one-word keyword (``stride``, ``crop``) becomes its flag only where it opens a message or
  a clause (``stride must be at least 1``), since elsewhere it is a word of the sentence.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

# keywords of the Python API whose flag has another name, or a value of another form
_RENAMED = {"text_cache_dir": "text_cache"}
_ON_OFF = {"fused_attention"}  # True/False -> on/off
_VALUE = r"""(?:"([^"]*)"|'([^']*)'|([\w.:/+-]+))?"""


@dataclass(frozen=True)
class Flag:
    """A keyword's flag, with the flag that turns a switch off where there is one."""

    on: str
    off: str | None = None
    takes_value: bool = True


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, Flag]:
    """``{keyword: Flag}`` for every long option of ``parser`` and of its subcommands, keyed by
    the option's ``dest`` (and by the Python keyword where it differs: ``text_cache_dir``)."""
    flags: dict[str, Flag] = {}
    _collect(parser, flags)
    for keyword, dest in _RENAMED.items():
        if dest in flags:
            flags[keyword] = flags[dest]
    return flags


def _collect(parser: argparse.ArgumentParser, flags: dict[str, Flag]) -> None:
    for action in parser._actions:  # argparse offers no public walk over its actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _collect(sub, flags)
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or action.dest in flags or action.dest == "help":
            continue
        off = next((o for o in longs if o.startswith("--no-")), None)
        on = next((o for o in longs if not o.startswith("--no-")), longs[0])
        flags[action.dest] = Flag(on, off, takes_value=action.nargs != 0)


def to_flags(message: str, flags: dict[str, Flag]) -> str:
    """``message`` with the Python keywords it names replaced by their flags (module doc)."""
    if not flags:
        return message
    names = "|".join(sorted(map(re.escape, flags), key=len, reverse=True))

    def assigned(m: re.Match) -> str:
        name, value = m.group(1), next((g for g in m.groups()[1:] if g is not None), None)
        flag = flags[name]
        if value in ("True", "False"):
            if name in _ON_OFF:
                return f"{flag.on} {'on' if value == 'True' else 'off'}"
            if value == "True":
                return flag.on
            return flag.off or f"no {flag.on}"
        return flag.on if value is None else f"{flag.on} {value}"

    text = re.sub(rf"(?<![\w.-])({names})={_VALUE}", assigned, message)

    def bare(m: re.Match) -> str:
        name = m.group(1)
        return flags[name].on if "_" in name else m.group(0)

    text = re.sub(rf"(?<![\w./-])({names})(?![\w/-]|\.\w)", bare, text)

    def opening(m: re.Match) -> str:
        return m.group(1) + flags[m.group(2)].on + m.group(3)

    return re.sub(rf"(^|; )({names})( must | is )", opening, text)
