"""The registry of base methods: ``name -> class``, the one list every part reads.

The settings check (``glaclip.config``), the ``--base`` choices and flags, the loading of a
VFM, the cost estimate, the evaluation presets and the demo's methods all look base methods up
here. A base method registers itself with ``register_base`` (``glaclip.model.bases`` holds the
built-in ones, one file each); this module imports nothing of glaclip at import time, so that
both ``config`` and the bases can reach it from below. The built-in bases are imported on the
first lookup.
"""

from __future__ import annotations

import dataclasses
from typing import Any

REGISTRY: dict[str, Any] = {}  # name -> BaseMethod subclass, in registration order


def register_base(cls: Any) -> Any:
    """Class decorator: list a ``BaseMethod`` subclass under ``cls.name``."""
    if not cls.name or not cls.title:
        raise ValueError(f"{cls.__name__} needs a name and a title to be registered")
    REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    import glaclip.model.bases  # noqa: F401  (registers the built-in base methods)


def registered() -> dict[str, Any]:
    """Every registered base method, by name (the built-in ones first)."""
    _load_builtins()
    return REGISTRY


def base_class(name: str) -> Any:
    """The registered base method called ``name``.

    Raises:
        ValueError: no base of that name (the message lists the registered ones).
    """
    bases = registered()
    if name not in bases:
        raise ValueError(f"base must be one of {', '.join(bases)}, got {name!r}")
    return bases[name]


def setting_owner(name: str) -> list[str]:
    """The base methods whose own settings (``settings_class``) include ``name``."""
    return [
        base
        for base, cls in registered().items()
        if cls.settings_class is not None
        and name in {f.name for f in dataclasses.fields(cls.settings_class)}
    ]


def needs_vfm(name: str) -> bool:
    """Whether the base method ``name`` takes a VFM (so one must be loaded)."""
    return bool(base_class(name).needs_vfm)
