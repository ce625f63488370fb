"""How numbers and 95% intervals are printed: one spelling for the CLI, the notebook, the page and the charts."""

from __future__ import annotations

from typing import Protocol


class Bounds(Protocol):
    """What an interval needs to be printed (workspace.stats.Interval is one; not imported: this is layer 2)."""

    @property
    def low(self) -> float: ...

    @property
    def high(self) -> float: ...


def num(v: float | None, digits: int = 3, missing: str = "n/a") -> str:
    """A point estimate with `digits` decimals, or `missing` when there is none."""
    return missing if v is None else f"{v:.{digits}f}"


def threshold(x: float) -> str:
    """A threshold as it was set: two decimals when it has at most two (0.98, 0.80), else as written (0.975)."""
    return f"{x:.2f}" if abs(100 * x - round(100 * x)) < 1e-9 else f"{x:g}"


def interval(iv: Bounds | None, digits: int = 3, missing: str = "", lead: str = "") -> str:
    """A 95% interval as `[low, high]` (after `lead`, e.g. a space), or `missing` when there is none."""
    return missing if iv is None else f"{lead}[{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def with_interval(v: float | None, iv: Bounds | None, digits: int = 3, missing: str = "n/a") -> str:
    """A point and its interval, `0.512 [0.480, 0.544]`; the point alone without one; `missing` without a point."""
    if v is None:
        return missing
    return num(v, digits) + interval(iv, digits, lead=" ")


def span(iv: Bounds | None, digits: int = 2, missing: str = "") -> str:
    """An interval in few columns, `0.48–0.54` (for narrow tables)."""
    return missing if iv is None else f"{iv.low:.{digits}f}–{iv.high:.{digits}f}"


def pair(iv: Bounds | None) -> list[float] | None:
    """An interval as JSON writes it: `[low, high]`, or null."""
    return None if iv is None else [iv.low, iv.high]
