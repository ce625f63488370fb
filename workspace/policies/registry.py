"""The policy registry: built-in family names → classes, filled by `@register` and loaded lazily.

It sits at the bottom of the policy layers and imports nothing of the project: the family modules import it to
register themselves, and the first lookup imports the modules listed in `BUILTIN_MODULES` (by name, so nothing
here depends on them). Adding a family is a class with `@register("name")` in one of those modules.
"""

from __future__ import annotations

import importlib

# The modules whose import registers the built-in families (loaded on the first lookup).
BUILTIN_MODULES = ("workspace.policies.families", "workspace.policies.probe")

_FAMILIES: dict[str, type] = {}
_loaded = False


def register(name: str):
    """Class decorator: make a policy class a built-in family under `name` (`margin(tau=0.05)`)."""

    def add(cls: type) -> type:
        if _FAMILIES.get(name, cls) is not cls:
            raise ValueError(f"policy family {name!r} is registered twice ({_FAMILIES[name].__qualname__}, "
                             f"{cls.__qualname__})")  # fmt: skip
        _FAMILIES[name] = cls
        return cls

    return add


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def families() -> dict[str, type]:
    """Every built-in family, name → class, in registration order."""
    _load()
    return dict(_FAMILIES)


def family(name: str) -> type | None:
    """The class registered under `name`, or None."""
    _load()
    return _FAMILIES.get(name)


def name_of(cls: type) -> str | None:
    """The family name a class is registered under, or None for a class that is not built in."""
    _load()
    return next((n for n, c in _FAMILIES.items() if c is cls), None)
