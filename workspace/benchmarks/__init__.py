"""Benchmarks: what an evaluation runs on and how it is scored (the `Benchmark` protocol in `base.py`, one module
per benchmark, each registered with `@register`), and prompt sets (`prompts.py`, resolved by `resolve_prompts`)."""

from .base import (
    DEFAULT,
    JUDGED,
    STATUSES,
    TESTED,
    Benchmark,
    Canonical,
    Conditions,
    JudgedBenchmark,
    Outcome,
    TestedBenchmark,
    get,
    names,
    register,
    resolve_prompts,
)  # fmt: skip
from .prompts import DataError, Log, Prompt, PromptSet, load_prompts
from .provenance import ScoredShare, Traced

# The benchmarks this code has, registered in this order (pages list them so).
from . import alpaca_eval, humaneval  # isort: skip  # noqa: E402, F401

__all__ = [
    "DEFAULT", "JUDGED", "STATUSES", "TESTED", "Benchmark", "Canonical", "Conditions", "DataError", "JudgedBenchmark",
    "Log", "Outcome", "Prompt", "PromptSet", "TestedBenchmark", "get", "load_prompts", "names", "register",
    "resolve_prompts", "ScoredShare", "Traced",
]  # fmt: skip
