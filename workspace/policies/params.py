"""Policy parameters as data for controls (sliders, choices): read from a family's constructor, with ranges that
mean something per family, and the spec string a set of values names. The notebooks' explorer and sweep widgets
and any other front end build their controls from this."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

from servers.settings import PROJECT_ROOT

from . import registry
from .protocol import Policy


@dataclass(frozen=True)
class Param:
    """One constructor parameter of a policy family, as a control: a float or int slider, a choice, or a policy."""

    name: str
    kind: str  # "float" | "int" | "choice" | "policy"
    default: object
    min: float = 0.0
    max: float = 1.0
    step: float = 0.01
    options: tuple[str, ...] = ()
    required: bool = False  # the constructor has no default: the spec always names it


SPANS = ("sentence", "punct", "newline", "words:3", "words:8", "tokens:4", "tokens:16", "agree:2", "line", "block",
         "block:2", "body")  # fmt: skip
# A threshold means something different per family (a probability, nats, a margin): slider range and a start.
TAU = {
    "top1": (0.0, 1.0, 0.01, 0.3),
    "margin": (0.0, 1.0, 0.01, 0.1),
    "entropy": (0.0, 4.0, 0.05, 1.5),
    "surprisal": (0.0, 8.0, 0.1, 2.0),
    "cascade": (0.0, 1.0, 0.01, 0.7),
    "probe": (0.0, 1.0, 0.01, 0.5),
}
# Other parameters, the same in every family: (kind, min, max, step, start when the constructor has no default).
KNOWN = {
    "rate": ("float", 0.0, 1.0, 0.01, 0.1),
    "k": ("int", 0, 16, 1, 2),
    "n": ("int", 1, 32, 1, 8),
    "m": ("int", 1, 16, 1, 2),
    "quiet": ("int", 0, 64, 1, 0),
    "warm": ("int", 0, 64, 1, 16),
    "seed": ("int", 0, 99, 1, 0),
    "max_span": ("int", 1, 512, 1, 64),  # structural spans (block, body) want room
}
DEFAULT_INNER = "margin(tau=0.1)"


def param_specs(family: str | type[Policy]) -> list[Param]:
    """The controls for a policy family, read from its constructor's signature (a registry name or a class)."""
    cls = registry.family(family) if isinstance(family, str) else family
    name = family if isinstance(family, str) else cls.__name__.lower()
    if cls.__init__ is object.__init__:
        return []
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is p.empty
        default = None if required else p.default
        if p.name == "inner":
            out.append(Param("inner", "policy", DEFAULT_INNER, required=True))
        elif p.name == "path":  # a probe's weights: the files committed in probes/
            files = tuple(f"probes/{f.name}" for f in sorted((PROJECT_ROOT / "probes").glob("*.json")))
            out.append(Param("path", "choice", files[0] if files else "probes/probe.json",
                             options=files or ("probes/probe.json",), required=True))  # fmt: skip
        elif p.name == "span":
            out.append(Param("span", "choice", default if isinstance(default, str) else "sentence", options=SPANS))
        elif p.name == "tau" and name in TAU:
            lo, hi, step, start = TAU[name]
            out.append(Param("tau", "float", start if required else default, lo, hi, step, required=required))
        elif p.name in KNOWN:
            kind, lo, hi, step, start = KNOWN[p.name]
            out.append(Param(p.name, kind, start if required else default, lo, hi, step, required=required))
        elif isinstance(default, bool | str):
            out.append(Param(p.name, "choice", str(default), options=(str(default),)))
        elif isinstance(default, int):
            out.append(Param(p.name, "int", default, 0, max(10, 4 * default), 1))
        else:  # a float, or a parameter we know nothing about: a unit-interval slider
            start = 0.5 if default is None else float(default)
            out.append(Param(p.name, "float", start, 0.0, max(1.0, 4 * start), 0.01, required=required))
    return out


def _literal(v: object) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{round(v, 6):g}"  # slider steps are binary fractions: 0.30000000000000004 → 0.3
    return str(v)


def spec_string(family: str, values: dict[str, object], params: Sequence[Param] | None = None) -> str:
    """The policy spec for a family and control values: required parameters always, others when they differ
    from the constructor's default (`margin(tau=0.1)`, `hysteresis(margin(tau=0.1), k=3)`)."""
    params = param_specs(family) if params is None else params
    args = []
    for p in params:
        v = values.get(p.name, p.default)
        if p.kind == "policy":
            args.append(str(v).strip() or DEFAULT_INNER)
        elif p.name == "path":  # a file name: quoted, so the spec parser reads it as a string
            args.append(f"path={str(v)!r}")
        elif p.required or _literal(v) != _literal(p.default):
            args.append(f"{p.name}={_literal(v)}")
    return f"{family}({', '.join(args)})" if args else family
