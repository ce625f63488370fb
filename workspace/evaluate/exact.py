"""`cdw check --exact`: on the servers in use, do never-defer and always-defer reproduce the models' own answers?

Every utility and recovery assumes identical greedy decoding: never-defer must give the weak model's own answer
and always-defer the strong model's, character for character (ARCHITECTURE.md, the engine's invariants). On a GPU,
bf16 kernels whose reduction order depends on the batch can flip near-ties; vLLM's batch-invariant kernels
(`VLLM_BATCH_INVARIANT=1`, on the `paper` presets) are meant to prevent it. This decodes N canonical prompts both
ways, asks each model for its own answer, and reports how many are equal and where the first difference is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from dataclasses import dataclass

from ..benchmarks import get as get_benchmark
from ..benchmarks import resolve_prompts
from ..client import ClientError
from ..engine import decode_many
from .setup import Setup

CONTEXT = 30  # characters shown either side of the first difference


@dataclass(frozen=True)
class Difference:
    """The first prompt whose decode is not the model's own answer: where they part, or the error."""

    prompt_id: str
    offset: int  # the first differing character (-1: an error, no text to compare)
    decoded: str  # the decode's text around it
    own: str  # the model's own answer around it (or the error)


@dataclass(frozen=True)
class ExactCheck:
    policy: str  # never | always
    role: str  # whose own answers it must equal: weak | strong
    n: int
    equal: int
    first: Difference | None  # None: all equal

    @property
    def ok(self) -> bool:
        return self.equal == self.n


@dataclass(frozen=True)
class ExactReport:
    benchmark: str
    max_tokens: int
    checks: tuple[ExactCheck, ...]
    decoding: dict  # how the servers decoded (`Setup.decoding()`): platform, build, batch invariance per role

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _window(text: str, at: int) -> str:
    return text[max(0, at - CONTEXT) : at + CONTEXT]


async def _own(setup: Setup, role: str, instruction: str, max_tokens: int) -> str:
    client = setup.weak if role == "weak" else setup.strong
    return (await client.chat([{"role": "user", "content": instruction}], max_tokens=max_tokens)).text


async def check_exact(setup: Setup, n: int = 10, benchmark: str | None = None,
                      max_tokens: int | None = None) -> ExactReport:  # fmt: skip
    """Decode the benchmark's first `n` canonical prompts with never and always (its default answer budget, or
    `max_tokens`) and compare each with the weak and strong model's own greedy answer to the same prompt."""
    bench = get_benchmark(benchmark)
    prompts = list(resolve_prompts(bench, n))
    settings = bench.engine_settings()
    if max_tokens is not None:
        settings = dataclasses.replace(settings, max_tokens=max_tokens)
    checks = []
    for policy, role in (("never", "weak"), ("always", "strong")):
        decodes = await decode_many([p.instruction for p in prompts], policy, setup.models, settings, progress=False)
        owns = await asyncio.gather(*(_own(setup, role, p.instruction, settings.max_tokens) for p in prompts),
                                    return_exceptions=True)  # fmt: skip
        for own in owns:
            if isinstance(own, BaseException) and not isinstance(own, ClientError):
                raise own
        equal, first = 0, None
        for p, d, own in zip(prompts, decodes, owns, strict=True):
            if d.error is None and isinstance(own, str) and d.text == own:
                equal += 1
            elif first is None:
                if d.error is not None or not isinstance(own, str):
                    error = d.error or f"{type(own).__name__}: {own}"
                    first = Difference(p.id, -1, d.text if d.error is None else "", str(error))
                else:
                    at = len(os.path.commonprefix([d.text, own]))
                    first = Difference(p.id, at, _window(d.text, at), _window(own, at))
        checks.append(ExactCheck(policy, role, len(prompts), equal, first))
    try:
        decoding = await setup.decoding(judge=False)
    except ClientError:
        decoding = {}
    return ExactReport(bench.name, settings.max_tokens, tuple(checks), decoding)
